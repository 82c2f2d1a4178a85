//! Services: seed 000's paths — `POST /api/{username}/{repo}/services`, start, stop, status, logs,
//! delete — plus the list, stats, deployment history and rollback. A service is sized by a
//! product spec or by explicit limits, placed on a node, and runs as one container there.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_core::ByteSize;
use berth_core::schedule::Placement;
use berth_core::spec::Command;
use berth_http::Path;
use berth_http::{Problem, parse_body, parse_query};
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::services::{self, Deployment, ServiceRecord};
use berth_store::users::{self, Role, User};
use berth_store::{StoreError, allocations, catalog};
use serde::Deserialize;
use serde_json::{Value, json};

use super::CurrentUser;
use super::operations::{WaitQuery, accepted};
use crate::create_commit::{self, Committed, CreateIntent};
use crate::gateway::readiness;
use crate::models;
use crate::node_client::NodeClient;
use crate::replicas;
use crate::scheduling;
use crate::service_definition::{ServiceDefinition, container_name};
use crate::service_request::ServiceRequest;
use crate::service_work::{self, Change};
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

fn operation(
    actor: i64,
    action: &str,
    service: &ServiceRecord,
    outcome: &str,
    detail: Value,
) -> NewOperation {
    replicas::service_operation(Some(actor), action, service, outcome, detail)
}

/// The status of a service whose deletion is under way.
pub const DELETING: &str = "deleting";

/// A service as the API shows it.
pub fn view(service: &ServiceRecord) -> Value {
    let mut value = serde_json::to_value(service).unwrap_or_default();
    value["service_name"] = json!(service.name);
    value
}

/// The service `id` if the caller owns it or is an admin; 404 otherwise, so others cannot probe.
pub async fn owned(state: &HubState, user: &User, id: i64) -> Result<ServiceRecord, Problem> {
    let mut connection = state.store.acquire().await?;
    let service = services::get(&mut connection, id).await?;
    if service.owner_id != user.id && user.role != Role::Admin {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no service {id}"),
        ));
    }
    Ok(service)
}

async fn node_of(
    state: &HubState,
    service: &ServiceRecord,
) -> Result<(NodeRecord, Arc<NodeClient>), Problem> {
    let node_id = service.node_id.ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            format!("service {} is not placed on a node", service.id),
        )
    })?;
    let node = {
        let mut connection = state.store.acquire().await?;
        nodes::get(&mut connection, node_id).await?
    };
    let client = state.node_client(&node).await?;
    Ok((node, client))
}

fn container_of(service: &ServiceRecord) -> Result<String, Problem> {
    service.container_id.clone().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            format!("service {} has no container", service.id),
        )
    })
}

fn check_quota(name: &str, limit: Option<i64>, used: i64, adding: i64) -> Result<(), Problem> {
    match limit {
        Some(limit) if used + adding > limit => Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "quota {name}={limit} would be exceeded: {used} in use, this service adds {adding}"
            ),
        )),
        _ => Ok(()),
    }
}

/// The definition `request` makes, by `caller` (an admin may mount a model from anywhere).
async fn definition_from(
    state: &HubState,
    request: &ServiceRequest,
    caller: &User,
) -> Result<(ServiceDefinition, Option<i64>), Problem> {
    let mut connection = state.store.acquire().await?;
    request.check()?;
    let settings = state.settings();
    let model = request
        .model
        .as_ref()
        .map(|model| {
            model.expand(
                &settings.model_runtimes,
                &settings.model_roots,
                caller.role == Role::Admin,
            )
        })
        .transpose()?;
    let image = match (&request.image, request.image_id, &model) {
        (Some(image), _, _) => image.clone(),
        (None, Some(id), _) => {
            catalog::get_image(&mut connection, id)
                .await
                .map_err(|_| Problem::invalid_field("image_id", format!("no image {id}")))?
                .reference
        }
        (None, None, Some(model)) => model.image.clone(),
        (None, None, None) => {
            return Err(Problem::invalid_field("image", "is required (or image_id)"));
        }
    };
    let command = match request.command.as_ref() {
        Some(command) => Some(command.argv()?),
        None => model.as_ref().and_then(|model| model.command.clone()),
    }
    .filter(|argv| !argv.is_empty());
    let mut environment = model
        .as_ref()
        .map(|model| model.environment.clone())
        .unwrap_or_default();
    environment.extend(request.environment.clone());
    let mut serving = request.serving.clone().unwrap_or_default();
    if let (Some(file), Some(model)) = (&request.model, &model) {
        if serving.model_names.is_empty() {
            serving.model_names = vec![file.model_id.clone()];
        }
        if let (None, Some(path)) = (&request.serving, &model.probe_path) {
            serving.probe_path = path.clone();
        }
    }
    let mut definition = ServiceDefinition {
        image,
        command,
        environment,
        port: request.port.or(model.as_ref().map(|model| model.port)),
        cpu_millis: 2000,
        memory_bytes: ByteSize::from_gib(2).bytes_i64(),
        system_disk_bytes: None,
        data_disk_bytes: None,
        gpu_count: 0,
        gpu_share_gb: None,
        constraints: request.constraints.clone(),
        serving,
        model: request.model.clone(),
        model_mount: model.as_ref().map(|model| model.mount.clone()),
        gpu_index: model.as_ref().and_then(|model| model.gpu_index),
        gpu_choice: request.gpu_choice.unwrap_or(
            if model.as_ref().is_some_and(|model| model.most_free) {
                berth_core::schedule::GpuChoice::MostFree
            } else {
                berth_core::schedule::GpuChoice::BestFit
            },
        ),
    };
    let spec_id = match request.spec_id {
        Some(id) => {
            let spec = catalog::get_spec(&mut connection, id)
                .await
                .map_err(|_| Problem::invalid_field("spec_id", format!("no spec {id}")))?;
            definition.cpu_millis = spec.cpu_millis;
            definition.memory_bytes = spec.memory_bytes;
            definition.system_disk_bytes = spec.system_disk_bytes;
            definition.data_disk_bytes = spec.data_disk_bytes;
            if spec.memory_split {
                definition.gpu_share_gb = Some(spec.gpu_memory_gb);
            } else {
                definition.gpu_count = spec.gpu_count;
            }
            Some(id)
        }
        None => {
            if let Some(cores) = request.cpu_limit {
                definition.cpu_millis = (cores * 1000.0).round() as i64;
            }
            if let Some(memory) = request.memory_limit {
                definition.memory_bytes = memory.bytes_i64();
            }
            definition.gpu_count = match (request.gpu_count, request.gpu_required, &model) {
                (Some(count), _, _) => count,
                (None, true, _) => 1,
                (None, false, Some(model)) => {
                    definition.gpu_share_gb = model.gpu_share_gb;
                    model.gpu_count
                }
                (None, false, None) => 0,
            };
            None
        }
    };
    Ok((definition, spec_id))
}

/// Refuses a new service of `owner` with `replicas` replicas of `definition` that would take the
/// owner past a quota.
async fn check_create_quotas(
    connection: &mut berth_store::Conn,
    state: &HubState,
    owner: &User,
    definition: &ServiceDefinition,
    replicas: i64,
) -> Result<(), Problem> {
    let usage = services::usage(connection, owner.id).await?;
    quota_check(state, owner, &usage, definition, replicas)
}

/// Whether one more service of `definition` with `replicas` fits `owner`'s quotas beside what
/// `usage` says the owner's services take.
pub(crate) fn quota_check(
    state: &HubState,
    owner: &User,
    usage: &services::Usage,
    definition: &ServiceDefinition,
    replicas: i64,
) -> Result<(), Problem> {
    let quotas = &owner.quotas;
    check_quota(
        "max_services_per_user",
        Some(
            quotas
                .max_services
                .unwrap_or(state.settings().max_services_per_user),
        ),
        usage.services,
        1,
    )?;
    check_quota(
        "max_cpu_millis",
        quotas.max_cpu_millis,
        usage.cpu_millis,
        definition.cpu_millis * replicas,
    )?;
    check_quota(
        "max_memory_bytes",
        quotas.max_memory_bytes,
        usage.memory_bytes,
        definition.memory_bytes * replicas,
    )?;
    check_quota(
        "max_gpus",
        quotas.max_gpus,
        usage.gpus,
        definition.gpus_needed() * replicas,
    )
}

/// The header a client sends to make a create safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The client's `Idempotency-Key`, checked: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::invalid_field(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// The operation an earlier create with `key` opened, if any: the same service name answers
/// with it, another is a 409.
async fn earlier_create(
    state: &HubState,
    user: &User,
    key: &str,
    name: &str,
) -> Result<Option<i64>, Problem> {
    let mut connection = state.store.acquire().await?;
    let Some(earlier) = operations::find_by_key(&mut connection, user.id, key).await? else {
        return Ok(None);
    };
    earlier_answer(&earlier, key, name).map(Some)
}

/// The operation of the `earlier` create that used `key`, if it created `name` too; a conflict
/// naming it otherwise.
pub(crate) fn earlier_answer(
    earlier: &operations::Operation,
    key: &str,
    name: &str,
) -> Result<i64, Problem> {
    if earlier.action != "service.create" || earlier.detail["name"].as_str() != Some(name) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "Idempotency-Key {key} was used for another request (operation {}); use a new key",
                earlier.id
            ),
        ));
    }
    Ok(earlier.id)
}

/// `POST /api/{username}/{repo}/services?wait=SECONDS`: creates a service. Its replicas are
/// placed at once (no room is a 409 naming what each node lacks), then the service, its first
/// deployment, every replica's allocation and the operation commit together; the containers
/// are created (and with `start: true` started) by the hub after the answer: 202 with the
/// operation. A retry with the same `Idempotency-Key` answers with the first one's operation.
pub async fn create(
    State(state): Shared,
    user: CurrentUser,
    Path((username, repo)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let owner = if username == user.0.name {
        user.0.clone()
    } else {
        user.require_admin().map_err(|_| {
            Problem::new(
                StatusCode::FORBIDDEN,
                format!("you cannot create services for {username}"),
            )
        })?;
        let mut connection = state.store.acquire().await?;
        users::find_by_name(&mut connection, &username)
            .await?
            .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no user {username}")))?
    };
    let query: UpdateQuery = parse_query(raw)?;
    let wait = WaitQuery { wait: query.wait }.checked()?;
    let key = idempotency_key(&headers)?;
    let request: ServiceRequest = parse_body(&body)?;
    berth_core::spec::validate_name("repo", &repo)?;
    if let Some(key) = &key
        && let Some(earlier) = earlier_create(&state, &user.0, key, &request.name).await?
    {
        return accepted(&state, earlier, &wait).await;
    }
    let (definition, spec_id) = definition_from(&state, &request, &user.0).await?;

    let replica_count = request.replicas.unwrap_or(1);
    {
        // A quick refusal before placing; the check that counts is made again, serialized per
        // user, in the transaction that inserts the service.
        let mut connection = state.store.acquire().await?;
        check_create_quotas(&mut connection, &state, &owner, &definition, replica_count).await?;
    }
    if query.dry_run {
        return placement_preview(&state, &definition, replica_count).await;
    }
    let record = ServiceRecord {
        id: 0,
        owner_id: owner.id,
        repo,
        name: request.name.clone(),
        image: definition.image.clone(),
        spec_id,
        cpu_millis: definition.cpu_millis,
        memory_bytes: definition.memory_bytes,
        gpu_count: definition.gpus_needed(),
        definition: serde_json::to_value(&definition).unwrap_or_default(),
        is_public: request.is_public,
        status: "creating".to_owned(),
        node_id: None,
        container_id: None,
        container_name: None,
        version: 1,
        generation: 1,
        pinned: request.pinned,
        replicas: replica_count,
        error: String::new(),
        created_at: 0,
        updated_at: 0,
    };
    // Placed and committed with the creates queued beside it, in one transaction.
    let intent = CreateIntent {
        actor: user.0.id,
        record,
        shape: scheduling::request_for(&definition),
        definition,
        start: request.start,
        key,
    };
    let operation = match create_commit::commit(&state, intent).await? {
        Committed::New { operation, .. } | Committed::Earlier(operation) => operation,
    };
    accepted(&state, operation, &wait).await
}

/// `?dry_run=true` of a create: where each replica would go on the cluster as it stands now
/// (nothing is reserved), or the 409 a create would get, naming per node what is short and by
/// how much.
async fn placement_preview(
    state: &HubState,
    definition: &ServiceDefinition,
    replicas: i64,
) -> Result<Response, Problem> {
    let (nodes, mut cluster) = scheduling::snapshot(state).await?;
    let placed = scheduling::place_all(
        &mut cluster,
        &nodes,
        &scheduling::request_for(definition),
        replicas,
        &state.scheduler_options(),
    )?;
    let placements: Vec<Value> = placed
        .iter()
        .map(|(replica, placement, node)| {
            json!({"replica": replica, "node_id": node.id, "node_name": node.name,
                "gpus": placement.gpus})
        })
        .collect();
    Ok(Json(json!({"dry_run": true, "placements": placements})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: Option<bool>,
}

/// `GET /api/services`: the caller's services; `?all=true` for an admin lists everyone's.
pub async fn list(
    State(state): Shared,
    user: CurrentUser,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, Problem> {
    let query: ListQuery = parse_query(raw)?;
    let everyone = query.all.unwrap_or(false);
    if everyone {
        user.require_admin()?;
    }
    let mut connection = state.store.acquire().await?;
    let found = services::list(&mut connection, (!everyone).then_some(user.0.id)).await?;
    Ok(Json(
        json!({"services": found.iter().map(view).collect::<Vec<_>>(), "total": found.len()}),
    ))
}

/// `GET /api/services/{id}`.
pub async fn get_one(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    Ok(Json(view(&owned(&state, &user.0, id).await?)))
}

/// Commits `service`'s new wanted `status` and the operation of `change` by `actor` (see
/// [`service_work::intend`]); the operation's id.
async fn intend(
    state: &Arc<HubState>,
    actor: i64,
    service: &ServiceRecord,
    status: &str,
    change: Change,
    detail: Value,
) -> Result<i64, Problem> {
    service_work::intend(state, Some(actor), service.id, Some(status), change, detail).await
}

/// `POST /api/services/{id}/start?wait=SECONDS`: the service is wanted running (committed with
/// its operation), then its replicas are started: 202 with the operation.
pub async fn start(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let wait = WaitQuery::parse(raw)?;
    if service.node_id.is_none() {
        // Evicted for capacity: starting it places it again.
        let operation = models::load(&state, &service, Some(user.0.id), "started").await?;
        return accepted(&state, operation, &wait).await;
    }
    let operation = intend(
        &state,
        user.0.id,
        &service,
        "running",
        Change::Start,
        json!({}),
    )
    .await?;
    accepted(&state, operation, &wait).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopRequest {
    #[serde(default)]
    timeout_seconds: Option<u32>,
    #[serde(default)]
    force_stop: bool,
}

impl StopRequest {
    /// The body of a stop or restart (none: the defaults); the grace it asks for.
    fn grace(body: &Bytes) -> Result<u32, Problem> {
        let request: Self = if body.iter().all(u8::is_ascii_whitespace) {
            Self::default()
        } else {
            parse_body(body)?
        };
        Ok(if request.force_stop {
            0
        } else {
            request
                .timeout_seconds
                .unwrap_or(service_work::DEFAULT_GRACE_SECS)
        })
    }
}

/// `POST /api/services/{id}/stop?wait=SECONDS` with `{timeout_seconds: 30}`: the service is
/// wanted stopped (committed with its operation), then its containers are stopped, each call
/// allowed its grace plus a margin: 202 with the operation. The service stays stopped whatever
/// an engine answered; a node that did not confirm has its containers stopped by the reconciler
/// when it answers.
pub async fn stop(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let wait = WaitQuery::parse(raw)?;
    let grace = StopRequest::grace(&body)?;
    with_grace(
        &state,
        &user,
        &service,
        "stopped",
        Change::Stop { grace },
        grace,
        &wait,
    )
    .await
}

/// `POST /api/services/{id}/restart?wait=SECONDS` with `{timeout_seconds: 30}`: the service is
/// wanted running, then each replica is stopped (with the grace) and started in turn, so the
/// others keep serving: 202 with the operation.
pub async fn restart(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let wait = WaitQuery::parse(raw)?;
    let grace = StopRequest::grace(&body)?;
    if service.node_id.is_none() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "service {} is not placed on a node; start it instead",
                service.id
            ),
        ));
    }
    let change = Change::Restart { grace };
    with_grace(&state, &user, &service, "running", change, grace, &wait).await
}

/// Commits a stop's or restart's intent with its grace, and answers with its operation.
async fn with_grace(
    state: &Arc<HubState>,
    user: &CurrentUser,
    service: &ServiceRecord,
    status: &str,
    change: Change,
    grace: u32,
    wait: &WaitQuery,
) -> Result<Response, Problem> {
    let detail = json!({"timeout_seconds": grace});
    let operation = intend(state, user.0.id, service, status, change, detail).await?;
    accepted(state, operation, wait).await
}

/// `GET /api/services/{id}/status`: the stored state, the container's live state and the node.
/// `service_url` is the gateway's address of the service: replicas publish their port only on
/// the address the gateway reaches their node on.
pub async fn status(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let service = owned(&state, &user.0, id).await?;
    // An evicted service is on no node until it is loaded again.
    let placed = match service.node_id {
        Some(node_id) => Some(nodes::get(&mut *state.store.acquire().await?, node_id).await?),
        None => None,
    };
    // From the node's mirror when it follows the node (a container it does not hold is not
    // there); else the node is asked.
    let live = match (&service.container_id, &placed) {
        (Some(container), Some(node)) => match state.mirrored_state(node.id, container) {
            Some(mirrored) => mirrored,
            None => state.container_state(node, container).await.ok(),
        },
        _ => None,
    };
    let port = service.definition["port"].as_u64();
    let host_port = live
        .as_ref()
        .and_then(|live| port.and_then(|port| live.ports.get(&format!("{port}/tcp")).copied()));
    let address = placed.as_ref().map(readiness::node_host);
    let service_url = match (port, gateway_base(&state, &headers)) {
        (Some(_), Some(base)) => {
            // The route table knows the owner's name; the database only before it has the service.
            let owner = match state.routes.get(service.id) {
                Some(routes) => routes.owner.clone(),
                None => replicas::owner_name(&state, &service).await?,
            };
            Some(format!("{base}/s/{owner}/{}/", service.name))
        }
        _ => None,
    };
    Ok(Json(json!({
        "id": service.id,
        "service_name": service.name,
        "status": service.status,
        "container_status": live.as_ref().map(|live| live.status.clone()),
        "is_healthy": live.as_ref().is_some_and(|live| live.status == "running"),
        "container_id": service.container_id,
        "version": service.version,
        "node": placed.as_ref().map(|node| json!({
            "id": node.id, "name": node.name, "address": address, "driver": node.driver,
        })),
        "replicas": replica_views(
            &state,
            &service,
            placed.as_ref(),
            live.as_ref().map(|live| live.status.as_str()),
        )
        .await?,
        "host_port": host_port,
        "service_url": service_url,
        "serving": serving_view(&state, &service),
        "error_message": service.error,
    })))
}

/// Each replica of `service`: its node (id, name, down or not), its container and that
/// container's state (from the node's mirror, else `live_status` for the service's own
/// container, else as last recorded), and whether
/// the gateway counts it ready, with the address it sends requests to.
async fn replica_views(
    state: &HubState,
    service: &ServiceRecord,
    placed: Option<&NodeRecord>,
    live_status: Option<&str>,
) -> Result<Vec<Value>, Problem> {
    let allocations = replicas::allocations_of(state, service.id).await?;
    if allocations.is_empty() {
        return Ok(Vec::new());
    }
    // Replicas all on the service's node (the common case) need no read of the node table.
    let node_names: std::collections::HashMap<i64, String> = match placed {
        Some(node)
            if allocations
                .iter()
                .all(|allocation| allocation.node_id == node.id) =>
        {
            std::collections::HashMap::from([(node.id, node.name.clone())])
        }
        _ => nodes::list(&mut *state.store.acquire().await?)
            .await?
            .into_iter()
            .map(|node| (node.id, node.name))
            .collect(),
    };
    let routes = state.routes.get(service.id);
    Ok(allocations
        .iter()
        .map(|allocation| {
            let endpoint = routes.as_ref().and_then(|routes| {
                routes
                    .endpoints()
                    .iter()
                    .find(|endpoint| endpoint.replica == allocation.replica)
                    .map(|endpoint| (endpoint.address.to_string(), endpoint.is_ready()))
            });
            // The node's mirror when it follows the node; else what the node just said of the
            // service's container; else the state last recorded.
            let asked = (service.container_id.as_deref() == Some(allocation.container_id.as_str()))
                .then_some(live_status)
                .flatten();
            let container_state = state
                .mirrored_state(allocation.node_id, &allocation.container_id)
                .map_or_else(
                    || asked.map_or_else(|| allocation.status.clone(), str::to_owned),
                    |mirrored| mirrored.map_or_else(|| "gone".to_owned(), |live| live.status),
                );
            json!({
                "replica": allocation.replica,
                "node_id": allocation.node_id,
                "node_name": node_names.get(&allocation.node_id),
                "container_id": allocation.container_id,
                "container_status": container_state,
                "generation": allocation.generation,
                "node_down": state.is_down(allocation.node_id),
                "address": endpoint.as_ref().map(|(address, _)| address),
                "ready": endpoint.is_some_and(|(_, ready)| ready),
            })
        })
        .collect())
}

/// The gateway's base URL as a client of this request sees it: its listen address, or the host
/// the request named with the gateway's port when it listens on every address.
pub fn gateway_base(state: &HubState, headers: &HeaderMap) -> Option<String> {
    let listen = *state.gateway_address.get()?;
    let scheme = if state.gateway_over_tls.load(Ordering::Relaxed) {
        "https"
    } else {
        "http"
    };
    if !listen.ip().is_unspecified() {
        return Some(format!("{scheme}://{listen}"));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost");
    let hostname = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    Some(format!("{scheme}://{hostname}:{}", listen.port()))
}

/// The gateway's view of a service with a port: its path, ready replicas and request counters.
fn serving_view(state: &HubState, service: &ServiceRecord) -> Value {
    let Some(routes) = state.routes.get(service.id) else {
        return Value::Null;
    };
    let usage = &routes.usage;
    let millis = |value: u64| (value > 0).then_some(value);
    json!({
        "gateway_path": format!("/s/{}/{}/", routes.owner, routes.name),
        "ready_replicas": routes.ready_count(),
        "requests": usage.requests.load(Ordering::Relaxed),
        "in_flight": usage.in_flight.load(Ordering::Relaxed),
        "cold_starts": usage.cold_starts.load(Ordering::Relaxed),
        "last_used_ms": millis(usage.last_used_ms.load(Ordering::Relaxed)),
        "loaded_at_ms": millis(usage.loaded_at_ms.load(Ordering::Relaxed)),
        "load_duration_ms": millis(usage.load_duration_ms.load(Ordering::Relaxed)),
        "queued": routes.admission.waiting(),
        "model_names": routes.profile().settings.model_names.clone(),
        "tokens": {
            "prompt": usage.prompt_tokens.load(Ordering::Relaxed),
            "completion": usage.completion_tokens.load(Ordering::Relaxed),
        },
        "replicas": routes.endpoints().iter().map(|endpoint| json!({
            "replica": endpoint.replica,
            "address": endpoint.address.to_string(),
            "ready": endpoint.is_ready(),
            "in_flight": endpoint.in_flight.load(Ordering::Relaxed),
            "requests": endpoint.requests.load(Ordering::Relaxed),
        })).collect::<Vec<_>>(),
    })
}

/// `POST /api/services/{id}/load?wait=SECONDS` (seed 004): the service is wanted running
/// (committed with its operation); then its replicas start — after unloading the least recently
/// used idle model services on its nodes when they hold `max_models` — and the operation ends
/// once a replica is ready, or fails when none is within its `start_timeout_seconds`.
pub async fn load(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let wait = WaitQuery::parse(raw)?;
    let operation = models::load(&state, &service, Some(user.0.id), "requested").await?;
    accepted(&state, operation, &wait).await
}

/// `POST /api/services/{id}/unload?wait=SECONDS` (seed 004): the service is wanted unloaded
/// (committed with its operation), then its replicas stop; it keeps its containers and its
/// place, and its next gateway request (or `load`) starts it again.
pub async fn unload(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let wait = WaitQuery::parse(raw)?;
    let operation = models::unload(&state, &service, Some(user.0.id), "requested").await?;
    accepted(&state, operation, &wait).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default = "hundred")]
    tail: u32,
    #[serde(default)]
    follow: bool,
}

impl Default for LogsQuery {
    fn default() -> Self {
        Self {
            tail: hundred(),
            follow: false,
        }
    }
}

fn hundred() -> u32 {
    100
}

/// `GET /api/services/{id}/logs?tail=100&follow=false`: the container's output, from its node.
pub async fn logs(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let query: LogsQuery = parse_query(raw)?;
    if query.tail > 10_000 {
        return Err(Problem::invalid_field("tail", "must be at most 10000"));
    }
    let container = container_of(&service)?;
    let (_, client) = node_of(&state, &service).await?;
    if query.follow {
        let stream = client.follow_logs(&container, query.tail).await?;
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let text = client.logs(&container, query.tail).await?;
    Ok(Json(json!({"service_id": service.id, "logs": text, "tail": query.tail})).into_response())
}

/// `GET /api/services/{id}/stats`: one sample from the node.
pub async fn stats(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let container = container_of(&service)?;
    let (_, client) = node_of(&state, &service).await?;
    Ok(Json(
        json!({"service_id": service.id, "stats": client.stats(&container).await?}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default = "an_hour")]
    minutes: u32,
}

fn an_hour() -> u32 {
    60
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self { minutes: an_hour() }
    }
}

/// The longest history kept and served, in minutes.
const HISTORY_MINUTES: u32 = 24 * 60;

/// `GET /api/services/{id}/stats/history?minutes=60`: the sampled resource use of the last
/// `minutes` (at most 1440), oldest first; recent points are raw samples, older ones averages.
pub async fn stats_history(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let query: HistoryQuery = parse_query(raw)?;
    if query.minutes == 0 || query.minutes > HISTORY_MINUTES {
        return Err(Problem::invalid_field(
            "minutes",
            format!("must be between 1 and {HISTORY_MINUTES}"),
        ));
    }
    let since = berth_store::now_ms() - i64::from(query.minutes) * 60_000;
    let mut connection = state.store.acquire().await?;
    let points = berth_store::stats_history::since(&mut connection, service.id, since).await?;
    Ok(Json(json!({
        "service_id": service.id,
        "minutes": query.minutes,
        "interval_seconds": state.settings().stats_interval.as_secs(),
        "points": points,
    })))
}

/// `DELETE /api/services/{id}?wait=SECONDS`: the service is marked deleting (committed with
/// its operation), then its containers (and data volumes) are removed and the service with
/// them: 202 with the operation.
pub async fn delete(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let wait = WaitQuery::parse(raw)?;
    let operation = intend(
        &state,
        user.0.id,
        &service,
        DELETING,
        Change::Delete,
        json!({"name": service.name}),
    )
    .await?;
    accepted(&state, operation, &wait).await
}

/// `GET /api/services/{id}/deployments`, newest first.
pub async fn deployments(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let mut connection = state.store.acquire().await?;
    let history = services::deployments(&mut connection, service.id).await?;
    Ok(Json(
        json!({"service_id": service.id, "current_version": service.version, "deployments": history}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: i64,
}

/// `POST /api/services/{id}/rollback?wait=SECONDS` with `{version}`: deploys that version's
/// definition as a new version, replacing the containers (started again if it was running):
/// 202 with the operation.
pub async fn rollback(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let wait = WaitQuery::parse(raw)?;
    let request: RollbackRequest = parse_body(&body)?;
    let target = {
        let mut connection = state.store.acquire().await?;
        services::deployments(&mut connection, service.id)
            .await?
            .into_iter()
            .find(|deployment| deployment.version == request.version)
            .ok_or_else(|| {
                Problem::invalid_field(
                    "version",
                    format!("service {id} has no version {}", request.version),
                )
            })?
    };
    let definition: ServiceDefinition =
        serde_json::from_value(target.definition.clone()).map_err(|err| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored version is unreadable: {err}"),
            )
        })?;
    let replica_count = service.replicas;
    let operation = redeploy(
        &state,
        user.0.id,
        service,
        Redeploy {
            definition,
            replicas: replica_count,
            note: format!("rollback to version {}", request.version),
            action: "service.rollback",
            detail: json!({"to_version": request.version}),
        },
    )
    .await?;
    accepted(&state, operation, &wait).await
}

/// A new version of a service to deploy.
struct Redeploy {
    definition: ServiceDefinition,
    replicas: i64,
    note: String,
    action: &'static str,
    detail: Value,
}

/// Deploys `change` as the service's next version. The intent, in one transaction: the new
/// version and its deployment, every replica below the new count placed again (on its node
/// when the version fits there, else elsewhere; new replicas placed fresh) at its next
/// generation, replicas past the count forgotten, and the operation, which lists the old
/// containers to retire. Then the hub retires them and launches the new ones (started if the
/// service was running); the operation's id.
async fn redeploy(
    state: &Arc<HubState>,
    actor: i64,
    mut service: ServiceRecord,
    change: Redeploy,
) -> Result<i64, Problem> {
    let definition = change.definition;
    let was_running = service.status == "running";
    let before = service.clone();
    let request_shape = scheduling::request_for(&definition);
    // Placing and recording is one step among creates and redeploys.
    let mut placing = state.placing.lock().await;
    *placing = None;
    let (all, mut cluster) = scheduling::snapshot(state).await?;
    let current = replicas::allocations_of(state, service.id).await?;
    for allocation in &current {
        cluster.release(
            &scheduling::request_of(allocation),
            &Placement {
                node_id: allocation.node_id,
                gpus: scheduling::assignment_of(allocation),
            },
        );
    }
    let next_generation = current
        .iter()
        .map(|allocation| allocation.generation)
        .max()
        .unwrap_or(0)
        + 1;
    let options = state.scheduler_options();
    let mut placements = Vec::new();
    for replica in 0..change.replicas {
        let previous = current
            .iter()
            .find(|allocation| allocation.replica == replica);
        let (placement, node) = scheduling::place_and_commit(
            &mut cluster,
            &all,
            &request_shape,
            previous.map(|allocation| allocation.node_id),
            &options,
            "",
        )?;
        let generation = previous.map_or(next_generation, |allocation| allocation.generation + 1);
        placements.push((replica, generation, placement, node));
    }
    let value = serde_json::to_value(&definition).unwrap_or_default();
    service.version += 1;
    service.definition = value.clone();
    service.image = definition.image.clone();
    service.cpu_millis = definition.cpu_millis;
    service.memory_bytes = definition.memory_bytes;
    service.gpu_count = definition.gpus_needed();
    service.replicas = change.replicas;
    service.node_id = placements.first().map(|(_, _, _, node)| node.id);
    let retire: Vec<Value> = current
        .iter()
        .filter(|allocation| !allocation.container_id.is_empty())
        .map(|allocation| json!([allocation.node_id, allocation.container_id]))
        .collect();
    let mut detail = change.detail;
    // What serves until the new version is ready, and again if it never is.
    detail["previous"] = json!({"service": before, "allocations": current});
    detail["new_version"] = json!(service.version);
    detail["start"] = json!(was_running);
    detail["retire"] = json!(retire);
    let redeploying = Change::Redeploy;
    let mut transaction = state.store.begin().await?;
    for allocation in current
        .iter()
        .filter(|allocation| allocation.replica >= change.replicas)
    {
        allocations::remove(&mut transaction, service.id, allocation.replica).await?;
    }
    for (replica, generation, placement, _) in &placements {
        let reference = allocations::ReplicaRef {
            service_id: service.id,
            replica: *replica,
            generation: *generation,
        };
        let name = container_name(
            &state.hub_id,
            &service.name,
            service.id,
            *replica,
            service.version,
            *generation,
        );
        let allocation = scheduling::allocation_for(reference, &request_shape, placement, &name);
        allocations::record(&mut transaction, &allocation).await?;
    }
    let deployment = Deployment {
        version: service.version,
        definition: value,
        node_id: service.node_id,
        user_id: Some(actor),
        note: change.note,
        created_at: 0,
    };
    services::add_deployment(&mut transaction, service.id, &deployment).await?;
    service.container_id = None;
    if let Some((replica, generation, _, _)) = placements.first() {
        service.generation = *generation;
        service.container_name = Some(container_name(
            &state.hub_id,
            &service.name,
            service.id,
            *replica,
            service.version,
            *generation,
        ));
    }
    let saved = services::update(&mut transaction, &service).await?;
    let id = operations::open(
        &mut transaction,
        &operation(actor, change.action, &saved, "running", detail),
        None,
    )
    .await?;
    // A running service's previous replicas keep serving until the new ones are ready.
    let handover = state.routes.get(service.id).filter(|_| was_running);
    if let Some(routes) = &handover {
        routes.begin_handover();
    }
    if let Err(err) = transaction.commit().await {
        if let Some(routes) = &handover {
            routes.end_handover();
        }
        return Err(StoreError::from(err).into());
    }
    state.placements_changed();
    drop(placing);
    state.operation_changed(id);
    state.routes.touch(service.id);
    service_work::spawn(state, id, service.id, Some(actor), redeploying);
    Ok(id)
}

/// `POST /api/services/{id}/rollout/{command}` (owner or admin): tells the rollout under way
/// `pause` (hold it before its traffic moves), `resume`, `promote` (move the traffic now) or
/// `abort` (undo it; the previous version serves again). Logged as `service.rollout`; 409 when
/// no rollout is under way.
pub async fn rollout(
    State(state): Shared,
    user: CurrentUser,
    Path((id, command)): Path<(i64, String)>,
) -> Result<Json<Value>, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let flow = crate::rollout::Flow::parse(&command).ok_or_else(|| {
        Problem::invalid_field(
            "command",
            format!("{command:?} is not pause, resume, promote or abort"),
        )
    })?;
    if !state.rollouts.tell(service.id, flow) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "service {} has no rollout under way; a new version (apply, update, rollback) starts one",
                service.name
            ),
        ));
    }
    let transaction = state.store.begin().await?;
    operations::commit_with(
        transaction,
        &operation(
            user.0.id,
            "service.rollout",
            &service,
            "ok",
            json!({"command": command}),
        ),
    )
    .await?;
    Ok(Json(json!({"service_id": id, "command": command})))
}

/// What `PATCH /api/services/{id}` may change; anything left out stays as it is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicePatch {
    #[serde(default)]
    image: Option<String>,
    /// Replaces the whole environment.
    #[serde(default)]
    environment: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    command: Option<Command>,
}

/// `PATCH /api/services/{id}?dry_run=&wait=` with any of `image`, `environment` (the whole
/// map), `replicas`, `command`: the service as declared with those changed, deployed like a
/// `PUT` (`berth service update`, the console's edit form).
pub async fn patch(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let change: ServicePatch = parse_body(&body)?;
    let mut request = ServiceRequest::declared(&service, &replicas::definition_of(&service)?);
    if let Some(image) = change.image {
        request.image = Some(image);
    }
    if let Some(environment) = change.environment {
        request.environment = environment;
    }
    if let Some(replicas) = change.replicas {
        request.replicas = Some(replicas);
    }
    if let Some(command) = change.command {
        request.command = Some(command);
    }
    let body = serde_json::to_vec(&request)
        .map_err(|err| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    update(
        State(state),
        user,
        Path(id),
        RawQuery(raw),
        Bytes::from(body),
    )
    .await
}

/// `PUT /api/services/{id}?wait=SECONDS`: the create body again (same name), deployed as the
/// next version when it differs — `berth apply`. A change of `serving` or `is_public` alone is
/// recorded without touching the containers (an ended operation); anything else replaces them,
/// started again if the service was running, and `replicas` scales (202 with the operation).
/// An identical body, or `?dry_run=true`, changes nothing and answers with the changes.
pub async fn update(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = owned(&state, &user.0, id).await?;
    let query: UpdateQuery = parse_query(raw)?;
    let wait = WaitQuery { wait: query.wait }.checked()?;
    let request: ServiceRequest = parse_body(&body)?;
    if request.name != service.name {
        return Err(Problem::invalid_field(
            "name",
            format!(
                "service {id} is {:?}; a service cannot be renamed",
                service.name
            ),
        ));
    }
    if request.start {
        return Err(Problem::invalid_field(
            "start",
            "applies to create only; use POST /api/services/{id}/start",
        ));
    }
    let (definition, _) = definition_from(&state, &request, &user.0).await?;
    let replica_count = request.replicas.unwrap_or(service.replicas);
    {
        let owner = {
            let mut connection = state.store.acquire().await?;
            users::get_user(&mut connection, service.owner_id).await?
        };
        let mut connection = state.store.acquire().await?;
        let usage = services::usage(&mut connection, owner.id).await?;
        let quotas = &owner.quotas;
        let before = replicas::definition_of(&service)?;
        for (name, limit, used, old, new) in [
            (
                "max_cpu_millis",
                quotas.max_cpu_millis,
                usage.cpu_millis,
                before.cpu_millis * service.replicas,
                definition.cpu_millis * replica_count,
            ),
            (
                "max_memory_bytes",
                quotas.max_memory_bytes,
                usage.memory_bytes,
                before.memory_bytes * service.replicas,
                definition.memory_bytes * replica_count,
            ),
            (
                "max_gpus",
                quotas.max_gpus,
                usage.gpus,
                before.gpus_needed() * service.replicas,
                definition.gpus_needed() * replica_count,
            ),
        ] {
            check_quota(name, limit, used - old, new)?;
        }
    }
    let current = replicas::definition_of(&service)?;
    let same_containers = ServiceDefinition {
        serving: current.serving.clone(),
        ..definition.clone()
    } == current;
    let mut changes = differences(
        &serde_json::to_value(&current).unwrap_or_default(),
        &serde_json::to_value(&definition).unwrap_or_default(),
        "",
    );
    for (field, before, after) in [
        ("replicas", json!(service.replicas), json!(replica_count)),
        (
            "is_public",
            json!(service.is_public),
            json!(request.is_public),
        ),
    ] {
        if before != after {
            changes.push(json!({"field": field, "from": before, "to": after}));
        }
    }
    let replaces = !(same_containers && replica_count == service.replicas);
    let scales_only = definition == current
        && request.is_public == service.is_public
        && replica_count != service.replicas;
    if changes.is_empty() || query.dry_run {
        let mut answer = view(&service);
        answer["changed"] = json!(!changes.is_empty());
        answer["changes"] = json!(changes);
        answer["containers_replaced"] = json!(!changes.is_empty() && replaces && !scales_only);
        answer["scales_only"] = json!(scales_only);
        answer["dry_run"] = json!(query.dry_run);
        return Ok(Json(answer).into_response());
    }
    if scales_only {
        // Only the count changed: the replicas that stay are left alone.
        let operation = crate::scaling::scale(
            &state,
            &service,
            replica_count,
            Some(user.0.id),
            &format!("replicas set to {replica_count}"),
        )
        .await?;
        return accepted(&state, operation, &wait).await;
    }
    if !replaces {
        // Only how it is served changed: a new version, the same containers.
        let _claim = state.claim(service.id).ok_or_else(|| busy(service.id))?;
        let mut changed = service.clone();
        changed.version += 1;
        changed.definition = serde_json::to_value(&definition).unwrap_or_default();
        changed.is_public = request.is_public;
        let mut transaction = state.store.begin().await?;
        let deployment = Deployment {
            version: changed.version,
            definition: changed.definition.clone(),
            node_id: changed.node_id,
            user_id: Some(user.0.id),
            note: "serving settings updated".to_owned(),
            created_at: 0,
        };
        services::add_deployment(&mut transaction, changed.id, &deployment).await?;
        let saved = services::update(&mut transaction, &changed).await?;
        let operation_id = operations::commit_with(
            transaction,
            &operation(
                user.0.id,
                "service.update",
                &saved,
                "ok",
                json!({"new_version": saved.version, "containers_replaced": false,
                    "changes": changes}),
            ),
        )
        .await?;
        state.routes.touch(service.id);
        return accepted(&state, operation_id, &wait).await;
    }
    let mut public = service.clone();
    public.is_public = request.is_public;
    let operation = redeploy(
        &state,
        user.0.id,
        public,
        Redeploy {
            definition,
            replicas: replica_count,
            note: "updated".to_owned(),
            action: "service.update",
            detail: json!({"containers_replaced": true, "replicas": replica_count,
                "changes": changes}),
        },
    )
    .await?;
    accepted(&state, operation, &wait).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    wait: Option<u64>,
}

/// The fields (dotted paths) whose values differ between two JSON documents, with both values.
fn differences(before: &Value, after: &Value, prefix: &str) -> Vec<Value> {
    match (before, after) {
        (Value::Object(old), Value::Object(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|key| {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    differences(
                        old.get(key).unwrap_or(&Value::Null),
                        new.get(key).unwrap_or(&Value::Null),
                        &path,
                    )
                })
                .collect()
        }
        _ if before == after => Vec::new(),
        _ => vec![json!({"field": prefix, "from": before, "to": after})],
    }
}

fn busy(id: i64) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        format!("service {id} is being changed by another request; try again"),
    )
}
