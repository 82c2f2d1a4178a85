//! A service's replicas on nodes. Launching one goes in three steps, each safe to interrupt:
//! record the intent (the replica's allocation at its generation; for replica 0 also the
//! service's node), create the container under a name fixed by hub, service, replica, version
//! and generation (an earlier, interrupted attempt's container is adopted), then record the
//! container id — only if the replica is still at that generation, so a replica that was moved
//! meanwhile never comes back. Launches of many replicas run in parallel, bounded so that the
//! engine is not overrun. Moving a replica launches it elsewhere at the next generation and then
//! retires the old container.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use berth_core::ContainerSpec;
use berth_core::schedule::{Placement, Request};
use berth_http::Problem;
use berth_store::StoreError;
use berth_store::allocations::{self, Allocation, ReplicaRef};
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::services::{self, ServiceRecord};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::gateway::readiness;
use crate::node_client::NodeClient;
use crate::ops::Tracker;
use crate::scheduling;
use crate::service_definition::{
    LABEL_GENERATION, LABEL_HUB, LABEL_REPLICA, LABEL_SERVICE, ServiceDefinition, Target,
};
use crate::state::HubState;

/// Launches, starts, stops or removals at once per request, across all nodes.
pub const PARALLEL_CONTAINER_CALLS: usize = 8;

/// Runs `work` on every item, at most [`PARALLEL_CONTAINER_CALLS`] at a time; results in order.
pub async fn bounded<T, R, F: Future<Output = R>>(
    items: impl IntoIterator<Item = T>,
    work: impl FnMut(T) -> F,
) -> Vec<R> {
    futures_util::stream::iter(items)
        .map(work)
        .buffered(PARALLEL_CONTAINER_CALLS)
        .collect()
        .await
}

/// What to launch where.
pub struct LaunchPlan<'a> {
    /// The service.
    pub service: &'a ServiceRecord,
    /// Which replica, at which generation.
    pub replica: i64,
    /// The generation to launch it at.
    pub generation: i64,
    /// What it runs.
    pub definition: &'a ServiceDefinition,
    /// Its owner's name (a label).
    pub owner: &'a str,
    /// The node.
    pub node: &'a NodeRecord,
    /// The scheduler's placement on it.
    pub placement: &'a Placement,
    /// What it takes there.
    pub request: &'a Request,
    /// Start it, or only create it.
    pub start: bool,
    /// Where an image pull reports its progress, if an operation follows it.
    pub tracker: Option<&'a Tracker>,
}

/// Who launches it and why, for the operation row.
pub struct Cause<'a> {
    /// The user, or `None` for the hub's own loops.
    pub actor: Option<i64>,
    /// The operation's action (`container.create`, `service.failover`, …).
    pub action: &'a str,
    /// Extra detail.
    pub detail: Value,
}

/// A launched replica.
#[derive(Debug, Clone)]
pub struct Launched {
    /// The replica.
    pub replica: i64,
    /// Its node.
    pub node_id: i64,
    /// Its generation.
    pub generation: i64,
    /// Its container.
    pub container_id: String,
    /// The engine's warnings.
    pub warnings: Vec<String>,
}

/// An operation row about `service`.
pub fn service_operation(
    actor: Option<i64>,
    action: &str,
    service: &ServiceRecord,
    outcome: &str,
    detail: Value,
) -> NewOperation {
    NewOperation {
        user_id: actor,
        action: action.to_owned(),
        target_kind: "service".to_owned(),
        target_id: service.id.to_string(),
        node_id: service.node_id,
        service_id: Some(service.id),
        outcome: outcome.to_owned(),
        detail,
    }
}

/// The definition a service stores.
pub fn definition_of(service: &ServiceRecord) -> Result<ServiceDefinition, Problem> {
    serde_json::from_value(service.definition.clone()).map_err(|err| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("service {} has an unreadable definition: {err}", service.id),
        )
    })
}

/// The name of the service's owner (the `berth.owner` label of its containers).
pub async fn owner_name(state: &HubState, service: &ServiceRecord) -> Result<String, StoreError> {
    let mut connection = state.store.acquire().await?;
    Ok(
        berth_store::users::get_user(&mut connection, service.owner_id)
            .await?
            .name,
    )
}

/// Launches `plan`; records `cause` as an operation with the outcome.
pub async fn launch(
    state: &HubState,
    plan: LaunchPlan<'_>,
    cause: &Cause<'_>,
) -> Result<Launched, Problem> {
    let LaunchPlan {
        service,
        replica,
        generation,
        definition,
        owner,
        node,
        placement,
        request,
        start,
        tracker,
    } = plan;
    let publish_on = readiness::node_address(node).await?;
    let spec = definition.container_spec(
        service.id,
        &service.name,
        service.version,
        owner,
        &Target {
            node,
            replica,
            generation,
            hub_id: &state.hub_id,
            gpus: &placement.gpus,
            publish_on: Some(publish_on),
        },
    )?;
    let reference = ReplicaRef {
        service_id: service.id,
        replica,
        generation,
    };
    let allocation = scheduling::allocation_for(reference, request, placement, &spec.name);
    let takes = |allocation: &Allocation| {
        (
            allocation.node_id,
            allocation.generation,
            allocation.cpu_millis,
            allocation.memory_bytes,
            allocation.disk_bytes,
            allocation.gpu_indices.clone(),
            allocation.gpu_memory_bytes,
            allocation.name.clone(),
        )
    };
    let recorded_already = {
        let mut connection = state.store.acquire().await?;
        let before = allocations::for_replica(&mut connection, service.id, replica).await?;
        let primary_named = replica != 0 || {
            let primary = services::get(&mut connection, service.id).await?;
            primary.node_id == Some(node.id)
                && primary.container_name.as_deref() == Some(spec.name.as_str())
                && primary.generation == generation
        };
        // A create's or a redeploy's intent recorded exactly this: nothing to write.
        primary_named
            && before.is_some_and(|before| {
                before.container_id.is_empty() && takes(&before) == takes(&allocation)
            })
    };
    if !recorded_already {
        let mut transaction = state.store.begin().await?;
        let before = allocations::for_replica(&mut transaction, service.id, replica).await?;
        // Anything but the intent's own allocation moves capacity.
        let moved = before.as_ref().map(takes) != Some(takes(&allocation));
        allocations::record(&mut transaction, &allocation).await?;
        if replica == 0 {
            let mut primary = services::get(&mut transaction, service.id).await?;
            primary.node_id = Some(node.id);
            primary.container_id = None;
            primary.container_name = Some(spec.name.clone());
            primary.generation = generation;
            services::update(&mut transaction, &primary).await?;
        }
        transaction.commit().await.map_err(StoreError::from)?;
        if moved {
            state.placements_changed();
        }
    }
    let outcome = create_and_start(state, node, &spec, start, tracker).await;
    let logged = |outcome: &str, detail: Value| NewOperation {
        node_id: Some(node.id),
        ..service_operation(cause.actor, cause.action, service, outcome, detail)
    };
    let mut transaction = state.store.begin().await?;
    let (id, warnings) = match outcome {
        Ok(created) => created,
        Err(problem) => {
            let detail = json!({"node": node.name, "replica": replica, "error": problem.detail(), "cause": cause.detail});
            operations::commit_with(transaction, &logged("failed", detail)).await?;
            return Err(problem);
        }
    };
    let status = if start { "running" } else { "created" };
    if !allocations::set_container(&mut transaction, reference, &id, status).await? {
        drop(transaction);
        if let Ok(client) = state.node_client(node).await {
            let _ = client.remove(&id).await;
        }
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "replica {replica} of service {} was placed elsewhere meanwhile",
                service.id
            ),
        ));
    }
    if replica == 0 {
        services::set_container_id(&mut transaction, service.id, &id).await?;
    }
    let detail = json!({
        "node": node.name,
        "replica": replica,
        "container_id": id,
        "name": spec.name,
        "generation": generation,
        "gpus": placement.gpus,
        "warnings": warnings,
        "cause": cause.detail,
    });
    operations::commit_with(transaction, &logged("ok", detail)).await?;
    Ok(Launched {
        replica,
        node_id: node.id,
        generation,
        container_id: id,
        warnings,
    })
}

/// Creates of a name that was taken and then free again, before the launch fails.
const NAME_ATTEMPTS: u32 = 3;

/// Creates the container (or adopts the one an interrupted attempt made) and starts it.
async fn create_and_start(
    state: &HubState,
    node: &NodeRecord,
    spec: &ContainerSpec,
    start: bool,
    tracker: Option<&Tracker>,
) -> Result<(String, Vec<String>), Problem> {
    let client = state.node_client(node).await?;
    let mut attempt = 1;
    let (id, warnings) = loop {
        let created = match tracker {
            Some(tracker) => client.create(spec, &mut tracker.pull_callback()).await,
            None => client.create(spec, &mut |_| {}).await,
        };
        match created {
            Ok(created) => break created,
            Err(problem) if problem.status() == StatusCode::CONFLICT => {
                match adopt(&client, spec).await {
                    Ok(id) => break (id, Vec::new()),
                    // The name's holder went between the two calls (removed, or a create that
                    // was being undone): the name is free again.
                    Err(gone)
                        if gone.status() == StatusCode::NOT_FOUND && attempt < NAME_ATTEMPTS =>
                    {
                        attempt += 1;
                    }
                    Err(other) => return Err(other),
                }
            }
            Err(problem) => return Err(problem),
        }
    };
    if start {
        client.start(&id).await?;
    }
    Ok((id, warnings))
}

/// The container named like `spec`, if it is this hub's container of the same replica and
/// generation (its labels carry the hub's identity); a conflict otherwise.
async fn adopt(client: &NodeClient, spec: &ContainerSpec) -> Result<String, Problem> {
    let existing = client.state(&spec.name).await?;
    let same = [LABEL_HUB, LABEL_SERVICE, LABEL_REPLICA, LABEL_GENERATION]
        .iter()
        .all(|label| existing.labels.get(*label) == spec.labels.get(*label));
    if !same {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "a container named {} exists and is not this service's",
                spec.name
            ),
        ));
    }
    Ok(existing.id)
}

/// Stops and removes a container that is no longer any replica's; a missing one is fine.
pub async fn retire(
    state: &HubState,
    node: &NodeRecord,
    container_id: &str,
) -> Result<(), Problem> {
    let client = state.node_client(node).await?;
    client.remove(container_id).await
}

/// The containers an operation's intent lists to retire (`retire`: `[node, container, …]`
/// entries), as (node, container).
pub fn to_retire(detail: &Value) -> Vec<(i64, String)> {
    detail["retire"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| Some((entry[0].as_i64()?, entry[1].as_str()?.to_owned())))
        .collect()
}

/// Removes each (node, container) of `leaving` whose node is up. A miss is the reconciler's to
/// clean: no allocation claims the container any more.
pub async fn retire_all(state: &HubState, leaving: &[(i64, String)]) -> Result<(), Problem> {
    let nodes = nodes_of(state, leaving.iter().map(|(node, _)| *node)).await?;
    for (node, container) in leaving {
        if let Some(node) = nodes.get(node).filter(|node| !state.is_down(node.id)) {
            let _ = retire(state, node, container).await;
        }
    }
    Ok(())
}

/// Beyond a service's answer timeout, how long replicas leaving it may take to finish.
const DRAIN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes `leaving` (node, container) of service `service_id` out of the gateway's rotation,
/// lets them finish their requests in flight (at most the answer timeout and a margin), then
/// removes them; whether they drained.
pub async fn drain_and_retire(
    state: &HubState,
    service_id: i64,
    leaving: &[(i64, String)],
) -> Result<bool, Problem> {
    let drained = match state.routes.get(service_id) {
        Some(routes) => {
            let containers: Vec<String> = leaving.iter().map(|(_, id)| id.clone()).collect();
            routes.stop_outgoing(&containers);
            let limit = routes.profile().settings.timeout() + DRAIN_MARGIN;
            routes.drained(&containers, limit).await
        }
        None => true,
    };
    retire_all(state, leaving).await?;
    Ok(drained)
}

/// Where a move goes: a chosen node, or wherever the scheduler puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The scheduler's choice, never the current node.
    Scheduled,
    /// This node.
    Node(i64),
}

/// Moves one replica of a service to another node at the next generation: the replacement is
/// launched (and started if the service runs), then the old container is retired when its node
/// answers; a node that does not is cleaned by the reconciler when it returns. The data volume
/// stays behind on the old node. The caller holds the service's claim and records a refusal
/// (a 409 naming why no node fits) where it belongs.
pub async fn move_replica(
    state: &HubState,
    service_id: i64,
    replica: i64,
    destination: Destination,
    cause: Cause<'_>,
) -> Result<Launched, Problem> {
    let (service, current) = {
        let mut connection = state.store.acquire().await?;
        let service = services::get(&mut connection, service_id).await?;
        let current = allocations::for_replica(&mut connection, service_id, replica)
            .await?
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::CONFLICT,
                    format!("replica {replica} of service {service_id} is not placed"),
                )
            })?;
        (service, current)
    };
    let owner = owner_name(state, &service).await?;
    let definition = definition_of(&service)?;
    let (all, mut cluster) = scheduling::snapshot(state).await?;
    cluster.release(
        &scheduling::request_of(&current),
        &Placement {
            node_id: current.node_id,
            gpus: scheduling::assignment_of(&current),
        },
    );
    let mut request = scheduling::request_for(&definition);
    match destination {
        Destination::Scheduled => {
            request.avoid.insert(current.node_id);
        }
        Destination::Node(node) => request.only_node = Some(node),
    }
    let placement = cluster
        .place(&request, &state.scheduler_options())
        .map_err(|refusal| Problem::new(StatusCode::CONFLICT, refusal.to_string()))?;
    let node = all
        .iter()
        .find(|node| node.id == placement.node_id)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                "the chosen node was removed meanwhile",
            )
        })?;
    let launched = launch(
        state,
        LaunchPlan {
            service: &service,
            replica,
            generation: current.generation + 1,
            definition: &definition,
            owner: &owner,
            node,
            placement: &placement,
            request: &request,
            start: service.status == "running",
            tracker: None,
        },
        &cause,
    )
    .await?;
    if !current.container_id.is_empty()
        && let Some(old_node) = all.iter().find(|node| node.id == current.node_id)
        && !state.is_down(old_node.id)
        && retire(state, old_node, &current.container_id).await.is_ok()
    {
        let transaction = state.store.begin().await?;
        operations::commit_with(
            transaction,
            &NewOperation {
                node_id: Some(old_node.id),
                ..service_operation(
                    None,
                    "container.remove_stale",
                    &service,
                    "ok",
                    json!({"replica": replica, "container_id": current.container_id, "node": old_node.name}),
                )
            },
        )
        .await?;
    }
    Ok(launched)
}

/// The nodes with these ids that exist, by id, read now.
pub async fn nodes_of(
    state: &HubState,
    ids: impl IntoIterator<Item = i64>,
) -> Result<HashMap<i64, NodeRecord>, StoreError> {
    let mut wanted: Vec<i64> = ids.into_iter().collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut connection = state.store.acquire().await?;
    let mut found = HashMap::with_capacity(wanted.len());
    for id in wanted {
        match nodes::get(&mut connection, id).await {
            Ok(node) => {
                found.insert(id, node);
            }
            Err(StoreError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(found)
}

/// The allocations of a service, read now.
pub async fn allocations_of(
    state: &HubState,
    service_id: i64,
) -> Result<Vec<Allocation>, StoreError> {
    let mut connection = state.store.acquire().await?;
    allocations::for_service(&mut connection, service_id).await
}

/// Runs `action` on the container of every replica whose node is not held down, at most
/// [`PARALLEL_CONTAINER_CALLS`] at a time; how many it touched, or the first failure.
/// Replicas on down nodes are left to the reconciler, which converges them when they return.
pub async fn on_every_replica<F, Fut>(
    state: &HubState,
    service: &ServiceRecord,
    action: F,
) -> Result<usize, Problem>
where
    F: Fn(Arc<NodeClient>, String) -> Fut,
    Fut: Future<Output = Result<(), Problem>>,
{
    let placed = allocations_of(state, service.id).await?;
    let all_nodes = nodes_of(state, placed.iter().map(|allocation| allocation.node_id)).await?;
    let jobs: Vec<(String, Option<NodeRecord>)> = placed
        .into_iter()
        .filter(|allocation| {
            !allocation.container_id.is_empty() && !state.is_down(allocation.node_id)
        })
        .map(|allocation| {
            let node = all_nodes.get(&allocation.node_id).cloned();
            (allocation.container_id, node)
        })
        .collect();
    let action = &action;
    let outcomes = bounded(jobs, |(container, node)| async move {
        let node = node.ok_or_else(|| Problem::new(StatusCode::CONFLICT, "its node is gone"))?;
        let client = state.node_client(&node).await?;
        action(client, container).await
    })
    .await;
    let touched = outcomes.len();
    outcomes.into_iter().collect::<Result<Vec<()>, Problem>>()?;
    Ok(touched)
}

/// Writes `service` and its operation row in one transaction; the stored service.
pub async fn save(
    state: &HubState,
    service: &ServiceRecord,
    record: NewOperation,
) -> Result<ServiceRecord, Problem> {
    let mut transaction = state.store.begin().await?;
    let saved = services::update(&mut transaction, service).await?;
    operations::commit_with(transaction, &record).await?;
    Ok(saved)
}
