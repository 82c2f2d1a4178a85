//! First start: the first admin (with a token shown once and, for `berth up`, written to a 0600
//! file) and the local Docker engine as node `local`; and the token the hub's own model-file
//! watcher (`model_watch_dir`) acts with.

use std::path::Path;

use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::users::{self, Quotas, Role};
use berth_store::{StoreError, leases, secrets};
use serde_json::json;

use crate::state::HubState;

/// What bootstrapping found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// The admin token created now, when there was no user yet.
    pub new_admin_token: Option<String>,
    /// The id of node `local`, when it was asked for.
    pub local_node: Option<i64>,
}

/// The name of the token the hub's model-file watcher acts with.
pub const WATCHER_TOKEN: &str = "model-watch";

/// A fresh token of the first admin for the hub's model-file watcher, named [`WATCHER_TOKEN`]:
/// the ones an earlier run issued are revoked in the same transaction, so one is valid at a
/// time, listed and revocable like any other.
pub async fn watcher_token(state: &HubState) -> Result<String, StoreError> {
    admin_token(state, WATCHER_TOKEN).await
}

/// A fresh token of the first admin for a part of the hub that calls an API (its own, or the
/// leading hub's), named `name`: the earlier ones of that name are revoked in the same
/// transaction, so one is valid at a time, listed and revocable like any other.
pub async fn admin_token(state: &HubState, name: &str) -> Result<String, StoreError> {
    let mut transaction = state.store.begin().await?;
    let admin = users::list_users(&mut transaction)
        .await?
        .into_iter()
        .filter(|user| user.role == Role::Admin)
        .min_by_key(|user| user.id)
        .ok_or_else(|| StoreError::Invalid("the hub has no admin to act as".to_owned()))?;
    for earlier in users::list_tokens(&mut transaction, admin.id).await? {
        if earlier.name == name {
            users::revoke_token(&mut transaction, admin.id, earlier.id).await?;
        }
    }
    let issued = users::issue_token(&mut transaction, admin.id, name, None).await?;
    transaction.commit().await?;
    Ok(issued.token)
}

/// Creates the admin when the hub has no user (writing its token to `token_file` when given), and
/// registers node `local` at `docker_host` when `docker_host` is given and no node has that name.
pub async fn ensure(
    state: &HubState,
    token_file: Option<&Path>,
    docker_host: Option<&str>,
) -> Result<Bootstrap, StoreError> {
    let mut transaction = state.store.begin().await?;
    leases::setup_turn(&mut transaction).await?;
    let mut new_admin_token = None;
    if users::count_users(&mut transaction).await? == 0 {
        let admin =
            users::create_user(&mut transaction, "admin", Role::Admin, &Quotas::default()).await?;
        let issued = users::issue_token(&mut transaction, admin.id, "bootstrap", None).await?;
        if let Some(file) = token_file {
            secrets::write_private(file, &format!("{}\n", issued.token)).map_err(|err| {
                StoreError::Invalid(format!("cannot write {}: {err}", file.display()))
            })?;
        }
        operations::record(
            &mut transaction,
            &NewOperation {
                user_id: None,
                action: "user.create".to_owned(),
                target_kind: "user".to_owned(),
                target_id: admin.id.to_string(),
                node_id: None,
                service_id: None,
                outcome: "ok".to_owned(),
                detail: json!({"name": "admin", "role": "admin", "reason": "first start"}),
            },
        )
        .await?;
        new_admin_token = Some(issued.token);
    }
    let mut local_node = None;
    if let Some(docker_host) = docker_host {
        local_node = Some(
            match nodes::find_by_name(&mut transaction, "local").await? {
                Some(existing) => existing.id,
                None => {
                    let mut record = NodeRecord::new("local", "docker");
                    record.docker_address = docker_host.to_owned();
                    record.use_tls = false;
                    record.public_ip = "127.0.0.1".to_owned();
                    record.private_ip = "127.0.0.1".to_owned();
                    record.origin = "embedded".to_owned();
                    record.remark = "the Docker engine of the machine running berth up".to_owned();
                    let stored = nodes::insert(&mut transaction, &record).await?;
                    operations::record(
                        &mut transaction,
                        &NewOperation {
                            user_id: None,
                            action: "node.create".to_owned(),
                            target_kind: "node".to_owned(),
                            target_id: stored.id.to_string(),
                            node_id: Some(stored.id),
                            service_id: None,
                            outcome: "ok".to_owned(),
                            detail: json!({"name": "local", "docker_address": docker_host}),
                        },
                    )
                    .await?;
                    stored.id
                }
            },
        );
    }
    transaction.commit().await?;
    Ok(Bootstrap {
        new_admin_token,
        local_node,
    })
}

/// What syncing the declared controllers changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerSync {
    /// Nodes added from the file.
    pub created: Vec<String>,
    /// Nodes changed to match the file.
    pub updated: Vec<String>,
    /// Nodes from an earlier file that it no longer declares.
    pub removed: Vec<String>,
    /// Names the file declares that belong to nodes made through the API; those are left alone.
    pub skipped: Vec<String>,
}

/// Makes the node table match the controllers `config` declares (seed 000's
/// `mmanager_controllers`): adds new ones as agent nodes, updates those it added before (a changed
/// URL resets the status to unknown), and removes those an earlier file added that are gone now
/// (unless service containers still run there). One transaction, one operation row per change.
pub async fn sync_controllers(
    state: &HubState,
    config: &crate::config::HubConfig,
) -> Result<ControllerSync, StoreError> {
    let mut report = ControllerSync::default();
    let sealed_key = config
        .mmanager_api_key
        .as_deref()
        .map(|key| state.secrets.seal(key))
        .transpose()?;
    let mut transaction = state.store.begin().await?;
    let record = |action: &str, node: &NodeRecord| NewOperation {
        user_id: None,
        action: action.to_owned(),
        target_kind: "node".to_owned(),
        target_id: node.id.to_string(),
        node_id: Some(node.id),
        service_id: None,
        outcome: "ok".to_owned(),
        detail: json!({"name": node.name, "source": "config", "url": node.agent_url}),
    };
    for declared in config.controllers() {
        let existing = nodes::find_by_name(&mut transaction, &declared.id).await?;
        let mut node = match existing {
            Some(node) if node.origin != "config" => {
                report.skipped.push(declared.id.clone());
                continue;
            }
            Some(node) => node,
            None => NodeRecord::new(&declared.id, "agent"),
        };
        let before = node.clone();
        if node.agent_url != declared.url {
            node.docker_status = "unknown".to_owned();
            node.status_message = "the URL changed; not tested yet".to_owned();
        }
        node.driver = "agent".to_owned();
        node.agent_url = declared.url.clone();
        node.server_type = declared.server_type.clone();
        node.enabled = declared.enabled;
        node.priority = declared.priority;
        node.weight = declared.weight;
        node.origin = "config".to_owned();
        let host = crate::config::url_host(&declared.url);
        node.public_ip = host.clone();
        node.private_ip = host;
        let key_changed = match (&before.agent_key_sealed, &config.mmanager_api_key) {
            (Some(sealed), Some(key)) => {
                state.secrets.open(sealed).ok().as_deref() != Some(key.as_str())
            }
            (None, None) => false,
            _ => true,
        };
        if key_changed {
            node.agent_key_sealed = sealed_key.clone();
        }
        if node.id == 0 {
            let stored = nodes::insert(&mut transaction, &node).await?;
            operations::record(&mut transaction, &record("node.create", &stored)).await?;
            report.created.push(stored.name);
        } else if node != before || key_changed {
            let stored = nodes::update(&mut transaction, &node).await?;
            operations::record(&mut transaction, &record("node.update", &stored)).await?;
            report.updated.push(stored.name);
        }
    }
    let declared: Vec<&str> = config
        .controllers()
        .iter()
        .map(|controller| controller.id.as_str())
        .collect();
    for node in nodes::list(&mut transaction).await? {
        if node.origin == "config" && !declared.contains(&node.name.as_str()) {
            if nodes::container_count(&mut transaction, node.id).await? > 0 {
                tracing::warn!(node = %node.name, "A controller left the config but still runs service containers; it stays.");
                continue;
            }
            nodes::delete(&mut transaction, node.id).await?;
            operations::record(&mut transaction, &record("node.delete", &node)).await?;
            report.removed.push(node.name);
        }
    }
    transaction.commit().await?;
    state.placements_changed();
    Ok(report)
}
