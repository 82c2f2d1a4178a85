//! What a change of a service does once its intent is committed, carried out by
//! [`ops::spawn`](crate::ops::spawn): bring the replicas up (a create launches every allocation
//! the create recorded; a start starts them), stop them with their grace, restart them one at a
//! time, or remove them and then the service. Each is safe to repeat — a launch adopts the
//! container an interrupted one made, a start or stop of a container already there changes
//! nothing, a removal of a missing container is done — so [`resume`] carries on after a restart
//! whatever the hub left unfinished.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use berth_core::schedule::Placement;
use berth_http::Problem;
use berth_store::StoreError;
use berth_store::allocations::Allocation;
use berth_store::nodes::NodeRecord;
use berth_store::operations::{self, Operation};
use berth_store::services::{self, ServiceRecord};
use serde_json::{Value, json};

use crate::models;
use crate::node_work;
use crate::ops::{self, Resumption, Scope, Tracker};
use crate::replicas::{self, Cause, Destination, LaunchPlan};
use crate::scheduling;
use crate::service_definition::ServiceDefinition;
use crate::state::HubState;
use berth_gateway::routes::now_millis;

/// The grace period of a stop or restart that does not name one.
pub const DEFAULT_GRACE_SECS: u32 = 30;

/// A change of a service's wanted state, carried out after its intent commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Launch the replicas the create placed, started when `start`; a create that fails keeps
    /// nothing.
    Create {
        /// Start each replica once created.
        start: bool,
    },
    /// Start every replica.
    Start,
    /// Stop every replica with this grace.
    Stop {
        /// Seconds between SIGTERM and SIGKILL.
        grace: u32,
    },
    /// Stop and start each replica in turn.
    Restart {
        /// Seconds between SIGTERM and SIGKILL.
        grace: u32,
    },
    /// Remove every replica's container, then the service.
    Delete,
    /// Retire the containers of the version before (listed in the operation) and launch the
    /// new version's replicas, started when the service runs.
    Redeploy,
    /// Start a model service (placing it again if it was evicted), making room on its nodes,
    /// and wait for a ready replica.
    Load,
    /// Stop every replica of a model service with this grace; its next request loads it.
    Unload {
        /// Seconds between SIGTERM and SIGKILL.
        grace: u32,
    },
    /// Move the replica the operation names to another node at the next generation.
    Migrate,
    /// Launch the replicas added and retire the removed ones once drained
    /// ([`crate::scaling`]).
    Scale,
}

impl Change {
    /// The operation's action.
    pub fn action(self) -> &'static str {
        match self {
            Self::Create { .. } => "service.create",
            Self::Start => "service.start",
            Self::Stop { .. } => "service.stop",
            Self::Restart { .. } => "service.restart",
            Self::Delete => "service.delete",
            Self::Redeploy => "service.update",
            Self::Load => "service.load",
            Self::Unload { .. } => "service.unload",
            Self::Migrate => "container.migrate",
            Self::Scale => "service.scale",
        }
    }

    /// Whether the change leaves the service's wanted state as it is (a move): it neither
    /// overtakes an earlier change nor is overtaken by a later one.
    fn keeps_wanted_state(self) -> bool {
        self == Self::Migrate
    }

    /// The change an operation row records, if it is one of these.
    fn of(operation: &Operation) -> Option<Self> {
        let grace = operation.detail["timeout_seconds"]
            .as_u64()
            .and_then(|grace| u32::try_from(grace).ok())
            .unwrap_or(DEFAULT_GRACE_SECS);
        Some(match operation.action.as_str() {
            "service.create" => Self::Create {
                start: operation.detail["start"].as_bool().unwrap_or(false),
            },
            "service.start" => Self::Start,
            "service.stop" => Self::Stop { grace },
            "service.restart" => Self::Restart { grace },
            "service.delete" => Self::Delete,
            "service.update" | "service.rollback" => Self::Redeploy,
            "service.load" => Self::Load,
            "service.unload" => Self::Unload { grace },
            "container.migrate" => Self::Migrate,
            "service.scale" => Self::Scale,
            _ => return None,
        })
    }
}

/// Commits the intent of `change` of service `service_id` by `actor` — its new wanted `status`
/// (none: it stays) and the operation with `detail`, in one transaction — then starts carrying
/// it out; the operation's id.
pub async fn intend(
    state: &Arc<HubState>,
    actor: Option<i64>,
    service_id: i64,
    status: Option<&str>,
    change: Change,
    detail: Value,
) -> Result<i64, Problem> {
    let mut transaction = state.store.begin().await?;
    let mut wanted = services::get(&mut transaction, service_id).await?;
    if let Some(status) = status {
        wanted.status = status.to_owned();
        wanted.error.clear();
        wanted = services::update(&mut transaction, &wanted).await?;
    }
    let id = operations::open(
        &mut transaction,
        &replicas::service_operation(actor, change.action(), &wanted, "running", detail),
        None,
    )
    .await?;
    transaction.commit().await.map_err(StoreError::from)?;
    if status.is_some()
        && let Some(routes) = state.routes.get(service_id)
    {
        routes.set_wanted(&wanted.status);
        if wanted.status == "running" {
            routes
                .usage
                .loaded_at_ms
                .store(now_millis(), Ordering::Relaxed);
        }
    }
    state.routes.touch(service_id);
    state.operation_changed(id);
    spawn(state, id, service_id, actor, change);
    Ok(id)
}

/// Starts carrying out `change` of `service_id` as operation `operation` (its intent and row
/// committed), by `actor`.
pub fn spawn(
    state: &Arc<HubState>,
    operation: i64,
    service_id: i64,
    actor: Option<i64>,
    change: Change,
) {
    let scope = if change.keeps_wanted_state() {
        Scope::Beside(service_id)
    } else {
        Scope::Service(service_id)
    };
    ops::spawn(
        Arc::clone(state),
        operation,
        scope,
        move |state, tracker| async move {
            carry_out(&state, &tracker, service_id, actor, change).await
        },
    );
}

async fn carry_out(
    state: &Arc<HubState>,
    tracker: &Tracker,
    service_id: i64,
    actor: Option<i64>,
    change: Change,
) -> Result<Value, Problem> {
    let service = {
        let mut connection = state.store.acquire().await?;
        match services::get(&mut connection, service_id).await {
            Ok(service) => service,
            // Deleted meanwhile (by the reconciler finishing an earlier delete): done.
            Err(StoreError::NotFound(_)) if change == Change::Delete => {
                return Ok(json!({"already": "deleted"}));
            }
            Err(err) => return Err(err.into()),
        }
    };
    match change {
        Change::Create { start } => {
            let outcome = bring_up(state, tracker, &service, actor, start).await;
            match outcome {
                Ok(detail) => {
                    let status = if start { "running" } else { "created" };
                    set_status(state, service_id, status).await?;
                    Ok(detail)
                }
                Err(problem) => {
                    discard(state, &service).await?;
                    Err(Problem::new(
                        problem.status(),
                        format!(
                            "{}; the create kept nothing — fix this and create the service again",
                            problem.detail()
                        ),
                    ))
                }
            }
        }
        Change::Start => bring_up(state, tracker, &service, actor, true)
            .await
            .map_err(|problem| {
                Problem::new(
                    problem.status(),
                    format!(
                        "{}; the service stays wanted running and the hub keeps trying (berth service status shows how far it got)",
                        problem.detail()
                    ),
                )
            }),
        Change::Stop { grace } => stop_all(state, tracker, &service, grace, "stopped").await,
        Change::Restart { grace } => restart(state, tracker, &service, grace).await,
        Change::Redeploy => redeploy(state, tracker, &service, actor).await,
        Change::Load => models::bring_in(state, tracker, &service, actor).await,
        Change::Unload { grace } => {
            stop_all(state, tracker, &service, grace, models::UNLOADED).await
        }
        Change::Migrate => migrate(state, tracker, &service, actor).await,
        Change::Scale => {
            let detail = intent_of(state, tracker.id()).await?;
            crate::scaling::carry_out(state, tracker, &service, actor, &detail).await
        }
        Change::Delete => {
            tracker.step(0, 2, "removing the containers").await;
            let mut attempt = 1;
            loop {
                match remove_all(state, &service).await {
                    Err(problem) if is_transient(&problem) && attempt < TRANSIENT_ATTEMPTS => {
                        tokio::time::sleep(TRANSIENT_BACKOFF * attempt).await;
                        attempt += 1;
                    }
                    other => break other?,
                }
            }
            tracker.step(2, 2, "deleted").await;
            Ok(json!({"name": service.name}))
        }
    }
}

/// Stops every replica with `grace` (a stop's or an unload's work). A node that does not confirm
/// leaves the service as wanted all the same (`stays`, in the error): the reconciler stops what
/// still runs when the node answers.
async fn stop_all(
    state: &HubState,
    tracker: &Tracker,
    service: &ServiceRecord,
    grace: u32,
    stays: &str,
) -> Result<Value, Problem> {
    tracker.step(0, 1, "stopping the replicas").await;
    let stopped = replicas::on_every_replica(state, service, |client, container| async move {
        client.stop(&container, grace).await
    })
    .await
    .map_err(|problem| {
        Problem::new(
            problem.status(),
            format!(
                "{}; the service stays {stays} and the hub stops its containers when their nodes answer",
                problem.detail()
            ),
        )
    })?;
    tracker.step(1, 1, stays).await;
    Ok(json!({"replicas": stopped, "timeout_seconds": grace}))
}

/// Removes every replica's container (a node held down keeps an orphan, which the reconciler
/// removes when it answers), then the service and its allocations.
pub async fn remove_all(state: &HubState, service: &ServiceRecord) -> Result<(), Problem> {
    replicas::on_every_replica(state, service, |client, container| async move {
        client.remove(&container).await
    })
    .await?;
    forget(state, service.id).await
}

/// Deletes service `id` with its allocations and tells the creates' snapshot and the gateway.
async fn forget(state: &HubState, id: i64) -> Result<(), Problem> {
    let mut transaction = state.store.begin().await?;
    services::delete(&mut transaction, id).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    state.placements_changed();
    state.routes.touch(id);
    Ok(())
}

fn node_for<'a>(
    all: &'a HashMap<i64, NodeRecord>,
    allocation: &Allocation,
) -> Result<&'a NodeRecord, Problem> {
    all.get(&allocation.node_id).ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            format!(
                "replica {}'s node {} was removed",
                allocation.replica, allocation.node_id
            ),
        )
    })
}

/// Launches every allocation without a container and (with `start`) starts the others; replicas
/// on nodes held down are left to the reconciler.
pub(crate) async fn bring_up(
    state: &HubState,
    tracker: &Tracker,
    service: &ServiceRecord,
    actor: Option<i64>,
    start: bool,
) -> Result<Value, Problem> {
    bring_up_some(state, tracker, service, actor, start, None).await
}

/// [`bring_up`] for the replicas `only` names (every one when `None`).
pub(crate) async fn bring_up_some(
    state: &HubState,
    tracker: &Tracker,
    service: &ServiceRecord,
    actor: Option<i64>,
    start: bool,
    only: Option<&[i64]>,
) -> Result<Value, Problem> {
    let definition = replicas::definition_of(service)?;
    let owner = replicas::owner_name(state, service).await?;
    let mut placed = replicas::allocations_of(state, service.id).await?;
    if let Some(only) = only {
        placed.retain(|allocation| only.contains(&allocation.replica));
    }
    let all_nodes = replicas::nodes_of(state, placed.iter().map(|a| a.node_id)).await?;
    let total = placed.len() as u64;
    let verb = if start { "starting" } else { "creating" };
    tracker
        .step(0, total, format!("{verb} {total} replica(s)"))
        .await;
    let done = AtomicU64::new(0);
    let (definition, owner, all_nodes, done) = (&definition, owner.as_str(), &all_nodes, &done);
    let outcomes = replicas::bounded(placed, |allocation| async move {
        let node = node_for(all_nodes, &allocation)?;
        let mut attempt = 1;
        let warnings = loop {
            let tried = bring_up_replica(
                state,
                tracker,
                Replica {
                    service,
                    definition,
                    owner,
                    node,
                    allocation: &allocation,
                },
                actor,
                start,
                attempt,
            )
            .await;
            match tried {
                Err(problem) if is_transient(&problem) && attempt < TRANSIENT_ATTEMPTS => {
                    tracker
                        .step(
                            done.load(Ordering::Relaxed),
                            total,
                            format!(
                                "replica {} on {}: {} — trying again ({attempt} of {TRANSIENT_ATTEMPTS})",
                                allocation.replica,
                                node.name,
                                problem.detail()
                            ),
                        )
                        .await;
                    tokio::time::sleep(TRANSIENT_BACKOFF * attempt).await;
                    attempt += 1;
                }
                other => break other?,
            }
        };
        let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
        tracker
            .step(
                finished,
                total,
                format!("replica {} on {} ready", allocation.replica, node.name),
            )
            .await;
        Ok::<_, Problem>(warnings)
    })
    .await;
    let mut warnings = Vec::new();
    for outcome in outcomes {
        warnings.extend(outcome?);
    }
    state.routes.touch(service.id);
    Ok(json!({"replicas": total, "warnings": warnings}))
}

/// One replica to bring up.
struct Replica<'a> {
    service: &'a ServiceRecord,
    definition: &'a ServiceDefinition,
    owner: &'a str,
    node: &'a NodeRecord,
    allocation: &'a Allocation,
}

/// Tries of a replica whose node was slow or did not answer, before the change fails.
const TRANSIENT_ATTEMPTS: u32 = 5;
/// The wait after the first slow try; it grows by this much per try.
const TRANSIENT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `problem` may pass by itself: a node slow or out of reach, a database busy.
pub fn is_transient(problem: &Problem) -> bool {
    matches!(
        problem.status(),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Launches the replica when it has no container yet (adopting one an interrupted launch
/// made), else (with `start`) starts it; the engine's warnings. `attempt` counts the tries.
async fn bring_up_replica(
    state: &HubState,
    tracker: &Tracker,
    replica: Replica<'_>,
    actor: Option<i64>,
    start: bool,
    attempt: u32,
) -> Result<Vec<String>, Problem> {
    let Replica {
        service,
        definition,
        owner,
        node,
        allocation,
    } = replica;
    // After a failed try, read again: that try may have launched it.
    let allocation = if attempt > 1 {
        replicas::allocations_of(state, service.id)
            .await?
            .into_iter()
            .find(|current| current.replica == allocation.replica)
            .unwrap_or_else(|| allocation.clone())
    } else {
        allocation.clone()
    };
    if allocation.container_id.is_empty() {
        let launched = replicas::launch(
            state,
            LaunchPlan {
                service,
                replica: allocation.replica,
                generation: allocation.generation,
                definition,
                owner,
                node,
                placement: &Placement {
                    node_id: node.id,
                    gpus: scheduling::assignment_of(&allocation),
                },
                request: &scheduling::request_of(&allocation),
                start,
                tracker: Some(tracker),
            },
            &Cause {
                actor,
                action: "container.create",
                detail: json!({"operation": tracker.id()}),
            },
        )
        .await?;
        return Ok(launched.warnings);
    }
    if start && !state.is_down(node.id) {
        state
            .node_client(node)
            .await?
            .start(&allocation.container_id)
            .await
            .map_err(|problem| {
                Problem::new(
                    problem.status(),
                    format!(
                        "replica {} on node {} did not start: {}",
                        allocation.replica,
                        node.name,
                        problem.detail()
                    ),
                )
            })?;
    }
    Ok(Vec::new())
}

/// How long a redeploy carried on at the hub's start waits for the gateway to list its service.
const ROUTES_AT_START: std::time::Duration = std::time::Duration::from_secs(10);

/// The gateway's routes of `service`; for a redeploy the hub carries on as it starts
/// (`resumed`), of a service with a port, waited for a little while the gateway's table is
/// being read.
async fn routes_of(
    state: &HubState,
    service: &ServiceRecord,
    resumed: bool,
) -> Option<Arc<berth_gateway::routes::ServiceRoutes>> {
    if !resumed || service.definition["port"].is_null() {
        return state.routes.get(service.id);
    }
    let waiting = std::time::Instant::now();
    loop {
        if let Some(routes) = state.routes.get(service.id) {
            return Some(routes);
        }
        if waiting.elapsed() >= ROUTES_AT_START {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Retires the previous version's containers the operation lists (a node that does not answer
/// keeps one, which the reconciler removes as stale when it answers), then launches the new
/// version's replicas, started when the operation says the service ran.
async fn redeploy(
    state: &Arc<HubState>,
    tracker: &Tracker,
    service: &ServiceRecord,
    actor: Option<i64>,
) -> Result<Value, Problem> {
    let operation = {
        let mut connection = state.store.acquire().await?;
        operations::get(&mut connection, tracker.id()).await?
    };
    let detail = operation.detail;
    let start = detail["start"].as_bool().unwrap_or(false);
    // A running service with gateway routes and a recorded previous version rolls out beside
    // it; anything else is replaced in place. One an earlier run left waits for the gateway to
    // list the service first.
    let resumed = operation.at < state.started_at_ms;
    if start
        && detail["previous"].is_object()
        && let Some(routes) = routes_of(state, service, resumed).await
    {
        return crate::rollout::carry_out(state, tracker, service, actor, &detail, &routes).await;
    }
    tracker.step(0, 1, "retiring the previous version").await;
    replicas::retire_all(state, &replicas::to_retire(&detail)).await?;
    let launched = bring_up(state, tracker, service, actor, start)
        .await
        .map_err(|problem| {
            Problem::new(
                problem.status(),
                format!(
                    "{}; version {} stays the wanted one and the hub keeps trying to create its replicas",
                    problem.detail(),
                    service.version
                ),
            )
        })?;
    Ok(json!({"version": service.version, "launched": launched}))
}

/// The detail operation `id` was opened with (what its intent named).
async fn intent_of(state: &HubState, id: i64) -> Result<Value, Problem> {
    let mut connection = state.store.acquire().await?;
    Ok(operations::get(&mut connection, id).await?.detail)
}

/// Moves the replica the operation names (`replica`, `from_generation`, and `to_node` unless
/// the scheduler chooses) to another node. A replica already past `from_generation` was moved
/// before a restart of the hub: that is the outcome.
async fn migrate(
    state: &HubState,
    tracker: &Tracker,
    service: &ServiceRecord,
    actor: Option<i64>,
) -> Result<Value, Problem> {
    let intent = intent_of(state, tracker.id()).await?;
    let replica = intent["replica"].as_i64().unwrap_or_default();
    let from_generation = intent["from_generation"].as_i64().unwrap_or_default();
    let current = replicas::allocations_of(state, service.id)
        .await?
        .into_iter()
        .find(|allocation| allocation.replica == replica);
    if let Some(current) = current.filter(|current| current.generation > from_generation) {
        return Ok(json!({"replica": replica, "node_id": current.node_id,
            "generation": current.generation, "container_id": current.container_id}));
    }
    let destination = intent["to_node"]
        .as_i64()
        .map_or(Destination::Scheduled, Destination::Node);
    tracker
        .step(0, 1, format!("moving replica {replica}"))
        .await;
    let moved = replicas::move_replica(
        state,
        service.id,
        replica,
        destination,
        Cause {
            actor,
            action: "container.create",
            detail: json!({"operation": tracker.id(), "reason": "migrate"}),
        },
    )
    .await?;
    tracker.step(1, 1, "moved").await;
    state.routes.touch(service.id);
    Ok(json!({"replica": moved.replica, "node_id": moved.node_id,
        "generation": moved.generation, "container_id": moved.container_id,
        "note": "the data volume stays on the old node"}))
}

/// Stops and starts each replica in turn, so the others keep serving.
async fn restart(
    state: &HubState,
    tracker: &Tracker,
    service: &ServiceRecord,
    grace: u32,
) -> Result<Value, Problem> {
    let placed = replicas::allocations_of(state, service.id).await?;
    let all_nodes = replicas::nodes_of(state, placed.iter().map(|a| a.node_id)).await?;
    let total = placed.len() as u64;
    let mut restarted = 0;
    for (index, allocation) in placed.iter().enumerate() {
        let node = node_for(&all_nodes, allocation)?;
        tracker
            .step(
                index as u64,
                total,
                format!("restarting replica {} on {}", allocation.replica, node.name),
            )
            .await;
        if allocation.container_id.is_empty() || state.is_down(node.id) {
            continue;
        }
        let client = state.node_client(node).await?;
        client.stop(&allocation.container_id, grace).await?;
        client.start(&allocation.container_id).await?;
        restarted += 1;
    }
    state.routes.touch(service.id);
    tracker.step(total, total, "restarted").await;
    Ok(json!({"replicas": restarted, "timeout_seconds": grace}))
}

/// Sets service `service_id`'s wanted `status` and tells the gateway.
pub async fn set_status(state: &HubState, service_id: i64, status: &str) -> Result<(), Problem> {
    let mut transaction = state.store.begin().await?;
    services::set_status(&mut transaction, service_id, status).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    if let Some(routes) = state.routes.get(service_id) {
        routes.set_wanted(status);
    }
    state.routes.touch(service_id);
    Ok(())
}

/// Removes what a failed create launched and the service with it (its quota comes back).
async fn discard(state: &HubState, service: &ServiceRecord) -> Result<(), Problem> {
    let placed = replicas::allocations_of(state, service.id).await?;
    let all_nodes = replicas::nodes_of(state, placed.iter().map(|a| a.node_id)).await?;
    for allocation in placed
        .iter()
        .filter(|allocation| !allocation.container_id.is_empty())
    {
        if let Some(node) = all_nodes.get(&allocation.node_id) {
            // A node that does not answer keeps an orphan, which the reconciler removes later.
            let _ = replicas::retire(state, node, &allocation.container_id).await;
        }
    }
    forget(state, service.id).await
}

/// Carries on, after a restart, what the hub left unfinished: the changes above again (they are
/// safe to repeat), others ended failed with what to do. Returns how many were resumed.
pub async fn resume(state: &Arc<HubState>) -> Result<usize, StoreError> {
    let actions = [
        Change::Create { start: false },
        Change::Start,
        Change::Stop { grace: 0 },
        Change::Restart { grace: 0 },
        Change::Delete,
        Change::Redeploy,
        Change::Load,
        Change::Unload { grace: 0 },
        Change::Migrate,
    ]
    .map(Change::action)
    .into_iter()
    .chain(["service.rollback", node_work::DRAIN])
    .collect::<Vec<_>>();
    let mut again = Vec::new();
    let mut drains = 0;
    for resumption in ops::unfinished(state, &actions).await? {
        match resumption {
            Resumption::Again(operation) if operation.action == node_work::DRAIN => match operation
                .target_id
                .parse()
            {
                Ok(node) => {
                    tracing::info!(operation = operation.id, node, "Resuming a drain.");
                    node_work::spawn_drain(state, operation.id, node, operation.user_id);
                    drains += 1;
                }
                Err(_) => ops::abandon(state, &operation, "the drained node is unknown").await?,
            },
            Resumption::Again(operation) => match (Change::of(&operation), operation.service_id) {
                (Some(change), Some(service_id)) => {
                    if !change.keeps_wanted_state() {
                        state.note_change(service_id, operation.id);
                    }
                    again.push((operation, service_id, change));
                }
                _ => ops::abandon(state, &operation, "the operation names no service").await?,
            },
            Resumption::Abandon(operation, reason) => {
                ops::abandon(state, &operation, &reason).await?;
            }
        }
    }
    let resumed = again.len() + drains;
    for (operation, service_id, change) in again {
        tracing::info!(operation = operation.id, action = %operation.action, service = service_id, "Resuming an unfinished operation.");
        spawn(state, operation.id, service_id, operation.user_id, change);
    }
    Ok(resumed)
}
