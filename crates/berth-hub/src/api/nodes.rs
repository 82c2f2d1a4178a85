//! `/api/nodes` (admin): compute nodes with every field of seed 003 and the controller fields of
//! seed 000. Secrets (SSH password, TLS CA/certificate/key, agent API key) are write-only: sealed on
//! the way in, shown only as `*_set`. Creating or updating a node tests its connection.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use berth_http::Path;
use berth_http::{Problem, parse_body, parse_query};
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::{SecretBox, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::CurrentUser;
use crate::monitor;
use crate::node_check::NodeCheck;
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

/// A node as the API shows it: every stored field but the secrets, which are `*_set` flags.
#[derive(Debug, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    record: NodeRecord,
    ssh_password_set: bool,
    ca_cert_set: bool,
    client_cert_set: bool,
    client_key_set: bool,
    agent_api_key_set: bool,
}

impl From<NodeRecord> for NodeView {
    fn from(record: NodeRecord) -> Self {
        Self {
            ssh_password_set: record.ssh_password_sealed.is_some(),
            ca_cert_set: record.ca_cert_sealed.is_some(),
            client_cert_set: record.client_cert_sealed.is_some(),
            client_key_set: record.client_key_sealed.is_some(),
            agent_api_key_set: record.agent_key_sealed.is_some(),
            record,
        }
    }
}

/// The fields a create or update may carry; on update, absent fields keep their value and an empty
/// secret clears it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInput {
    name: Option<String>,
    region: Option<String>,
    cpu: Option<String>,
    memory: Option<String>,
    system_disk: Option<String>,
    data_disk: Option<String>,
    public_ip: Option<String>,
    private_ip: Option<String>,
    ssh_port: Option<i64>,
    ssh_user: Option<String>,
    ssh_password: Option<String>,
    gpu_model: Option<String>,
    gpu_count: Option<i64>,
    gpu_memory_gb: Option<i64>,
    hami_core_dir: Option<String>,
    driver: Option<String>,
    docker_address: Option<String>,
    use_tls: Option<bool>,
    ca_cert: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    agent_url: Option<String>,
    agent_api_key: Option<String>,
    server_type: Option<String>,
    enabled: Option<bool>,
    listed: Option<bool>,
    priority: Option<i64>,
    weight: Option<i64>,
    remark: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
}

fn seal_into(
    secrets: &SecretBox,
    target: &mut Option<String>,
    value: Option<String>,
) -> Result<(), Problem> {
    match value {
        None => {}
        Some(value) if value.trim().is_empty() => *target = None,
        Some(value) => *target = Some(secrets.seal(&value)?),
    }
    Ok(())
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

fn check_pem(field: &str, value: &Option<String>, marker: &str) -> Result<(), Problem> {
    match value {
        Some(text) if !text.trim().is_empty() && !text.contains(marker) => Err(
            Problem::invalid_field(field, format!("is not PEM text (no {marker:?} block)")),
        ),
        _ => Ok(()),
    }
}

impl NodeInput {
    /// Applies the input to `record`, checking every rule; the first failure names its field.
    fn apply(self, record: &mut NodeRecord, secrets: &SecretBox) -> Result<(), Problem> {
        if let Some(name) = &self.name {
            berth_core::spec::validate_name("name", name)?;
        }
        if let Some(driver) = &self.driver
            && !matches!(driver.as_str(), "docker" | "agent")
        {
            return Err(Problem::invalid_field(
                "driver",
                format!("{driver:?} is not docker or agent"),
            ));
        }
        if let Some(address) = &self.docker_address
            && !address.is_empty()
            && !["unix://", "tcp://", "http://", "https://"]
                .iter()
                .any(|scheme| address.starts_with(scheme))
        {
            return Err(Problem::invalid_field(
                "docker_address",
                format!("{address:?} is not unix://PATH or tcp://HOST:PORT"),
            ));
        }
        if let Some(url) = &self.agent_url
            && !url.is_empty()
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Problem::invalid_field(
                "agent_url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        if let Some(kind) = &self.server_type
            && !matches!(kind.as_str(), "gpu" | "cpu" | "edge")
        {
            return Err(Problem::invalid_field(
                "server_type",
                format!("{kind:?} is not gpu, cpu or edge"),
            ));
        }
        if let Some(port) = self.ssh_port
            && !(1..=65535).contains(&port)
        {
            return Err(Problem::invalid_field(
                "ssh_port",
                format!("{port} is not a port from 1 to 65535"),
            ));
        }
        for (field, value) in [
            ("gpu_count", self.gpu_count),
            ("gpu_memory_gb", self.gpu_memory_gb),
            ("priority", self.priority),
            ("weight", self.weight),
        ] {
            if value.is_some_and(|value| value < 0) {
                return Err(Problem::invalid_field(
                    field,
                    format!("{} must not be negative", value.unwrap_or_default()),
                ));
            }
        }
        if let Some(labels) = &self.labels {
            berth_core::schedule::validate_labels("labels", labels)?;
        }
        check_pem("ca_cert", &self.ca_cert, "CERTIFICATE")?;
        check_pem("client_cert", &self.client_cert, "CERTIFICATE")?;
        check_pem("client_key", &self.client_key, "PRIVATE KEY")?;
        set(&mut record.name, self.name);
        set(&mut record.region, self.region);
        set(&mut record.cpu, self.cpu);
        set(&mut record.memory, self.memory);
        set(&mut record.system_disk, self.system_disk);
        set(&mut record.data_disk, self.data_disk);
        set(&mut record.public_ip, self.public_ip);
        set(&mut record.private_ip, self.private_ip);
        set(&mut record.ssh_port, self.ssh_port);
        set(&mut record.ssh_user, self.ssh_user);
        set(&mut record.gpu_model, self.gpu_model);
        set(&mut record.gpu_count, self.gpu_count);
        set(&mut record.gpu_memory_gb, self.gpu_memory_gb);
        set(&mut record.hami_core_dir, self.hami_core_dir);
        set(&mut record.driver, self.driver);
        set(&mut record.docker_address, self.docker_address);
        set(&mut record.use_tls, self.use_tls);
        set(&mut record.agent_url, self.agent_url);
        set(&mut record.server_type, self.server_type);
        set(&mut record.enabled, self.enabled);
        set(&mut record.listed, self.listed);
        set(&mut record.priority, self.priority);
        set(&mut record.weight, self.weight);
        set(&mut record.remark, self.remark);
        set(&mut record.labels, self.labels);
        seal_into(secrets, &mut record.ssh_password_sealed, self.ssh_password)?;
        seal_into(secrets, &mut record.ca_cert_sealed, self.ca_cert)?;
        seal_into(secrets, &mut record.client_cert_sealed, self.client_cert)?;
        seal_into(secrets, &mut record.client_key_sealed, self.client_key)?;
        seal_into(secrets, &mut record.agent_key_sealed, self.agent_api_key)?;
        Ok(())
    }
}

fn node_operation(actor: i64, action: &str, node: &NodeRecord, detail: Value) -> NewOperation {
    NewOperation {
        user_id: Some(actor),
        action: action.to_owned(),
        target_kind: "node".to_owned(),
        target_id: node.id.to_string(),
        node_id: Some(node.id),
        service_id: None,
        outcome: "ok".to_owned(),
        detail,
    }
}

/// The node after a connection test, as the API shows it.
async fn tested(
    state: &HubState,
    node: &NodeRecord,
    actor: i64,
) -> Result<(NodeView, NodeCheck), Problem> {
    let check = monitor::check_and_record(state, node, Some(actor)).await?;
    let mut connection = state.store.acquire().await?;
    Ok((
        NodeView::from(nodes::get(&mut connection, node.id).await?),
        check,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFilter {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    driver: Option<String>,
}

/// `GET /api/nodes?status=&driver=`.
pub async fn list(
    State(state): Shared,
    user: CurrentUser,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<NodeView>>, Problem> {
    user.require_admin()?;
    let filter: NodeFilter = parse_query(raw)?;
    for (field, value, allowed) in [
        (
            "status",
            &filter.status,
            &["connected", "failed", "unknown"][..],
        ),
        ("driver", &filter.driver, &["docker", "agent"][..]),
    ] {
        if let Some(value) = value
            && !allowed.contains(&value.as_str())
        {
            return Err(Problem::invalid_field(
                field,
                format!("{value:?} is not one of {}", allowed.join(", ")),
            ));
        }
    }
    let mut connection = state.store.acquire().await?;
    let all = nodes::list(&mut connection).await?;
    Ok(Json(
        all.into_iter()
            .filter(|node| {
                filter
                    .status
                    .as_ref()
                    .is_none_or(|status| &node.docker_status == status)
            })
            .filter(|node| {
                filter
                    .driver
                    .as_ref()
                    .is_none_or(|driver| &node.driver == driver)
            })
            .map(NodeView::from)
            .collect(),
    ))
}

/// `GET /api/nodes/{id}`.
pub async fn get_one(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<NodeView>, Problem> {
    user.require_admin()?;
    let mut connection = state.store.acquire().await?;
    Ok(Json(NodeView::from(nodes::get(&mut connection, id).await?)))
}

/// `POST /api/nodes`: name, public and private IP are required (seed 003); the connection is tested.
pub async fn create(
    State(state): Shared,
    user: CurrentUser,
    body: Bytes,
) -> Result<(StatusCode, Json<NodeView>), Problem> {
    user.require_admin()?;
    let input: NodeInput = parse_body(&body)?;
    for (field, value) in [
        ("name", &input.name),
        ("public_ip", &input.public_ip),
        ("private_ip", &input.private_ip),
    ] {
        if value.as_deref().is_none_or(|value| value.trim().is_empty()) {
            return Err(Problem::invalid_field(field, "is required"));
        }
    }
    let mut record = NodeRecord::new("", "docker");
    input.apply(&mut record, &state.secrets)?;
    let mut transaction = state.store.begin().await?;
    let stored = nodes::insert(&mut transaction, &record).await?;
    let detail = json!({"name": stored.name, "driver": stored.driver});
    operations::commit_with(
        transaction,
        &node_operation(user.0.id, "node.create", &stored, detail),
    )
    .await?;
    state.placements_changed();
    let (view, _) = tested(&state, &stored, user.0.id).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `PUT /api/nodes/{id}`: changes the fields given and tests the connection again.
pub async fn update(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Json<NodeView>, Problem> {
    user.require_admin()?;
    let input: NodeInput = parse_body(&body)?;
    let mut transaction = state.store.begin().await?;
    let mut record = nodes::get(&mut transaction, id).await?;
    let changed: Vec<String> = serde_json::from_slice::<serde_json::Map<String, Value>>(&body)
        .map(|fields| fields.keys().cloned().collect())
        .unwrap_or_default();
    input.apply(&mut record, &state.secrets)?;
    let stored = nodes::update(&mut transaction, &record).await?;
    operations::commit_with(
        transaction,
        &node_operation(
            user.0.id,
            "node.update",
            &stored,
            json!({"fields": changed}),
        ),
    )
    .await?;
    state.placements_changed();
    Ok(Json(tested(&state, &stored, user.0.id).await?.0))
}

/// `DELETE /api/nodes/{id}`: refused with 409 while service containers run there.
pub async fn delete(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, Problem> {
    user.require_admin()?;
    let mut transaction = state.store.begin().await?;
    let record = nodes::get(&mut transaction, id).await?;
    nodes::delete(&mut transaction, id).await?;
    operations::commit_with(
        transaction,
        &node_operation(
            user.0.id,
            "node.delete",
            &record,
            json!({"name": record.name}),
        ),
    )
    .await?;
    state.placements_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/nodes/{id}/test`: tests the connection now.
pub async fn test(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let record = {
        let mut connection = state.store.acquire().await?;
        nodes::get(&mut connection, id).await?
    };
    let (view, check) = tested(&state, &record, user.0.id).await?;
    Ok(Json(
        json!({"status": check.report.status, "message": check.report.message, "observed": check.observed, "node": view}),
    ))
}

/// Sets `enabled` on a node and records it.
pub(crate) async fn set_enabled(
    state: &HubState,
    actor: i64,
    id: i64,
    enabled: bool,
) -> Result<NodeView, StoreError> {
    let mut transaction = state.store.begin().await?;
    let mut record = nodes::get(&mut transaction, id).await?;
    record.enabled = enabled;
    let stored = nodes::update(&mut transaction, &record).await?;
    let action = if enabled {
        "node.enable"
    } else {
        "node.disable"
    };
    operations::commit_with(
        transaction,
        &node_operation(actor, action, &stored, json!({})),
    )
    .await?;
    state.placements_changed();
    Ok(NodeView::from(stored))
}
