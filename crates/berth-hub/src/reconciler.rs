//! The reconciler: a level-triggered loop that compares the database with what each node runs
//! and converges. Services on a node the failure detector holds down move elsewhere (unless
//! pinned); on every answering node, containers of this hub that no allocation claims at their
//! generation are removed (orphans, and replicas that were moved while their node was away),
//! a container an interrupted launch made is adopted, a missing one is created again, a stopped
//! one of a running service is started and a running one of a stopped service is stopped, with
//! backoff. Every change is an operation row.
//! Besides its rounds, a node is converged as soon as its container events show a change
//! ([`converge_now`], from [`crate::node_watch`]).
//! A service being created or deleted is its operation's (resumed when the hub restarts), not
//! the reconciler's. Running a round again changes nothing more, so a hub killed at any point
//! converges on restart.

use std::collections::HashMap;

use axum::http::StatusCode;
use berth_store::StoreError;
use berth_store::allocations::{self, Allocation, ReplicaRef};
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::services::{self, ServiceRecord};
use serde_json::json;

use crate::node_client::ContainerState;
use crate::replicas::{self, Cause, Destination, LaunchPlan};
use crate::scheduling;
use crate::service_definition::{
    LABEL_GENERATION, LABEL_HUB, LABEL_NODE, LABEL_REPLICA, LABEL_SERVICE,
};
use crate::service_work;
use crate::state::HubState;

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    /// Services moved off down nodes.
    pub moved: usize,
    /// Stale or orphaned containers removed.
    pub removed: usize,
    /// Containers created again, adopted or restarted.
    pub repaired: usize,
}

/// One reconciliation round over every node.
pub async fn round(state: &HubState) -> Result<RoundReport, StoreError> {
    let (all_nodes, placed, all_services) = {
        let mut connection = state.store.acquire().await?;
        (
            nodes::list(&mut connection).await?,
            allocations::list(&mut connection).await?,
            services::list(&mut connection, None).await?,
        )
    };
    let services_by_id: HashMap<i64, &ServiceRecord> = all_services
        .iter()
        .map(|service| (service.id, service))
        .collect();
    let mut report = RoundReport {
        removed: finish_deletes(state, &all_services).await?,
        ..RoundReport::default()
    };
    for allocation in &placed {
        if !state.is_down(allocation.node_id) {
            continue;
        }
        let Some(service) = services_by_id.get(&allocation.service_id) else {
            continue;
        };
        if service.status != "running" || service.pinned || !state.may_retry(service.id) {
            continue;
        }
        let Some(_claim) = state.claim(service.id) else {
            continue;
        };
        let cause = Cause {
            actor: None,
            action: "service.failover",
            detail: json!({"from_node": allocation.node_id, "replica": allocation.replica}),
        };
        let moved = replicas::move_replica(
            state,
            service.id,
            allocation.replica,
            Destination::Scheduled,
            cause,
        )
        .await;
        state.repaired(service.id, moved.is_ok());
        match moved {
            Ok(_) => {
                report.moved += 1;
                state.metrics.failovers.inc();
            }
            Err(problem) => {
                tracing::warn!(service = service.id, error = %problem.detail(), "Failover did not place the service.");
                if problem.status() == StatusCode::CONFLICT {
                    state.metrics.failovers_refused.inc();
                    let transaction = state.store.begin().await?;
                    let detail = json!({"from_node": allocation.node_id, "replica": allocation.replica,
                        "reason": problem.detail()});
                    operations::commit_with(
                        transaction,
                        &replicas::service_operation(
                            None,
                            "service.failover",
                            service,
                            "refused",
                            detail,
                        ),
                    )
                    .await?;
                }
            }
        }
    }
    for node in &all_nodes {
        if node.docker_status != "connected" || state.is_down(node.id) {
            continue;
        }
        match converge_node(state, node).await {
            Ok((removed, repaired)) => {
                report.removed += removed;
                report.repaired += repaired;
            }
            Err(problem) => {
                tracing::warn!(node = %node.name, error = %problem.detail(), "Reconciling the node failed.");
            }
        }
    }
    Ok(report)
}

/// Converges node `node_id` now, if it answers and is not held down (a change on it was
/// seen); `Ok` without doing anything otherwise.
pub async fn converge_now(state: &HubState, node_id: i64) -> Result<(), berth_http::Problem> {
    let node = {
        let mut connection = state.store.acquire().await?;
        match nodes::get(&mut connection, node_id).await {
            Ok(node) => node,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    };
    if node.docker_status != "connected" || state.is_down(node.id) {
        return Ok(());
    }
    let (removed, repaired) = converge_node(state, &node).await?;
    if removed + repaired > 0 {
        tracing::info!(node = %node.name, removed, repaired, "Reconciled the node after its events.");
    }
    Ok(())
}

/// Deletes that no operation carries any more (their operation failed, say, on a node that
/// did not answer) are finished: the user's wanted state is that the service is gone. Returns
/// how many services were removed.
async fn finish_deletes(
    state: &HubState,
    all_services: &[ServiceRecord],
) -> Result<usize, StoreError> {
    let deleting: Vec<&ServiceRecord> = all_services
        .iter()
        .filter(|service| service.status == crate::api::services::DELETING)
        .collect();
    if deleting.is_empty() {
        return Ok(0);
    }
    let carried: Vec<i64> = {
        let mut connection = state.store.acquire().await?;
        operations::unfinished(&mut connection)
            .await?
            .into_iter()
            .filter_map(|operation| operation.service_id)
            .collect()
    };
    let mut finished = 0;
    for service in deleting {
        if carried.contains(&service.id) || !state.may_retry(service.id) {
            continue;
        }
        let Some(_claim) = state.claim(service.id) else {
            continue;
        };
        let removed = service_work::remove_all(state, service).await;
        state.repaired(service.id, removed.is_ok());
        match removed {
            Ok(()) => {
                record(
                    state,
                    replicas::service_operation(
                        None,
                        "service.delete",
                        service,
                        "ok",
                        json!({"name": service.name, "why": "the service was being deleted"}),
                    ),
                )
                .await?;
                finished += 1;
            }
            Err(problem) => {
                tracing::warn!(service = service.id, error = %problem.detail(), "Finishing a delete failed.");
            }
        }
    }
    Ok(finished)
}

/// Whether `service` is being created or deleted: its operation launches or removes its
/// containers (and is resumed after a restart), so the reconciler leaves its replicas alone.
fn in_operation(service: &ServiceRecord) -> bool {
    matches!(
        service.status.as_str(),
        "creating" | crate::api::services::DELETING
    )
}

fn label_i64(container: &ContainerState, label: &str) -> Option<i64> {
    container.labels.get(label)?.parse().ok()
}

/// The replica a container says it is (containers from before replicas are replica 0).
fn replica_of(container: &ContainerState) -> i64 {
    label_i64(container, LABEL_REPLICA).unwrap_or(0)
}

/// Whether `container` is what `allocation` wants on `node`.
fn claimed_by(container: &ContainerState, allocation: Option<&Allocation>, node: i64) -> bool {
    allocation.is_some_and(|allocation| {
        allocation.node_id == node
            && replica_of(container) == allocation.replica
            && label_i64(container, LABEL_GENERATION) == Some(allocation.generation)
            && (allocation.container_id.is_empty() || allocation.container_id == container.id)
    })
}

/// Converges one answering node; returns containers removed and repaired.
async fn converge_node(
    state: &HubState,
    node: &NodeRecord,
) -> Result<(usize, usize), berth_http::Problem> {
    let client = state.node_client(node).await?;
    let ours = format!("{LABEL_HUB}={}", state.hub_id);
    let running: Vec<ContainerState> = client
        .list_labelled(&ours)
        .await?
        .into_iter()
        .filter(|container| label_i64(container, LABEL_NODE) == Some(node.id))
        .collect();
    // Read after listing: a container launched meanwhile has its allocation recorded already.
    // Only what this node holds, and the services of the containers and allocations found.
    let (placed, all_services) = {
        let mut connection = state.store.acquire().await?;
        let placed = allocations::on_node(&mut connection, node.id).await?;
        let mut wanted: Vec<i64> = placed
            .iter()
            .map(|allocation| allocation.service_id)
            .chain(
                running
                    .iter()
                    .filter_map(|container| label_i64(container, LABEL_SERVICE)),
            )
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found = Vec::with_capacity(wanted.len());
        for id in wanted {
            if let Ok(service) = services::get(&mut connection, id).await {
                found.push(service);
            }
        }
        (placed, found)
    };
    let services_by_id: HashMap<i64, &ServiceRecord> = all_services
        .iter()
        .map(|service| (service.id, service))
        .collect();
    let by_replica: HashMap<(i64, i64), &Allocation> = placed
        .iter()
        .map(|allocation| ((allocation.service_id, allocation.replica), allocation))
        .collect();
    let (mut removed, mut repaired) = (0, 0);
    for container in &running {
        let service_id = label_i64(container, LABEL_SERVICE);
        if service_id.is_some_and(|id| state.is_busy(id)) {
            continue;
        }
        let allocation =
            service_id.and_then(|id| by_replica.get(&(id, replica_of(container))).copied());
        if claimed_by(container, allocation, node.id) {
            continue;
        }
        match client.remove(&container.id).await {
            Ok(()) => removed += 1,
            Err(problem) if service_work::is_transient(&problem) => return Err(problem),
            Err(problem) => {
                tracing::warn!(node = %node.name, container = %container.id, error = %problem.detail(), "Removing a stale container failed.");
                continue;
            }
        }
        record(
            state,
            NewOperation {
                user_id: None,
                action: "container.remove_stale".to_owned(),
                target_kind: "container".to_owned(),
                target_id: container.id.clone(),
                node_id: Some(node.id),
                service_id,
                outcome: "ok".to_owned(),
                detail: json!({
                    "name": container.name,
                    "generation": container.labels.get(LABEL_GENERATION),
                    "current_generation": allocation.map(|allocation| allocation.generation),
                }),
            },
        )
        .await?;
    }
    for allocation in placed
        .iter()
        .filter(|allocation| allocation.node_id == node.id)
    {
        let Some(service) = services_by_id.get(&allocation.service_id) else {
            continue;
        };
        if !state.may_retry(service.id) || in_operation(service) {
            continue;
        }
        let found = running
            .iter()
            .find(|container| claimed_by(container, Some(allocation), node.id));
        let Some(remedy) = remedy_for(service, allocation, found) else {
            continue;
        };
        let Some(_claim) = state.claim(service.id) else {
            continue;
        };
        // What was read before the claim may be stale: an operation that held the service
        // meanwhile may have launched, stopped or moved it. Act only on what still holds.
        let Some((service, allocation)) = still_as_seen(state, service, allocation).await? else {
            continue;
        };
        let outcome = repair(state, node, &service, &allocation, remedy).await;
        state.repaired(service.id, outcome.is_ok());
        match outcome {
            Ok(changed) => {
                if changed {
                    state.routes.touch(service.id);
                }
                repaired += usize::from(changed);
            }
            Err(problem) if service_work::is_transient(&problem) => return Err(problem),
            Err(problem) => {
                tracing::warn!(node = %node.name, service = service.id, replica = allocation.replica, error = %problem.detail(), "Repairing a replica failed.");
            }
        }
    }
    Ok((removed, repaired))
}

/// The service and allocation read again under the service's claim, if the service still
/// wants what it wanted and the allocation is still the one seen (same node, generation and
/// container); `None` when either changed, which the next round sees.
async fn still_as_seen(
    state: &HubState,
    seen_service: &ServiceRecord,
    seen: &Allocation,
) -> Result<Option<(ServiceRecord, Allocation)>, StoreError> {
    let mut connection = state.store.acquire().await?;
    let service = match services::get(&mut connection, seen_service.id).await {
        Ok(service) => service,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(err) => return Err(err),
    };
    let Some(allocation) =
        allocations::for_replica(&mut connection, seen.service_id, seen.replica).await?
    else {
        return Ok(None);
    };
    let same = service.status == seen_service.status
        && (
            allocation.node_id,
            allocation.generation,
            &allocation.container_id,
        ) == (seen.node_id, seen.generation, &seen.container_id);
    Ok(same.then_some((service, allocation)))
}

/// What one allocation's container needs to be what its service wants.
enum Remedy<'a> {
    /// An interrupted launch made it: record it (and start it if the service runs).
    Adopt(&'a ContainerState),
    /// The service runs and this container does not.
    Start(&'a ContainerState),
    /// The service is stopped or unloaded and this container runs.
    Stop(&'a ContainerState),
    /// The container is missing: launch it again.
    Recreate,
}

/// The remedy `allocation` needs, given the container `found` for it; `None` when it is as
/// wanted.
fn remedy_for<'a>(
    service: &ServiceRecord,
    allocation: &Allocation,
    found: Option<&'a ContainerState>,
) -> Option<Remedy<'a>> {
    let wants_running = service.status == "running";
    match found {
        Some(container) if allocation.container_id.is_empty() => Some(Remedy::Adopt(container)),
        Some(container) if wants_running && container.status != "running" => {
            Some(Remedy::Start(container))
        }
        Some(container)
            if matches!(service.status.as_str(), "stopped" | crate::models::UNLOADED)
                && container.status == "running" =>
        {
            Some(Remedy::Stop(container))
        }
        Some(_) => None,
        None => Some(Remedy::Recreate),
    }
}

/// Applies `remedy` to one allocation's container; returns whether it changed anything.
async fn repair(
    state: &HubState,
    node: &NodeRecord,
    service: &ServiceRecord,
    allocation: &Allocation,
    remedy: Remedy<'_>,
) -> Result<bool, berth_http::Problem> {
    let wants_running = service.status == "running";
    match remedy {
        Remedy::Adopt(container) => {
            let client = state.node_client(node).await?;
            if wants_running && container.status != "running" {
                client.start(&container.id).await?;
            }
            let status = if wants_running || container.status == "running" {
                "running"
            } else {
                "created"
            };
            let mut transaction = state.store.begin().await?;
            let reference = ReplicaRef {
                service_id: service.id,
                replica: allocation.replica,
                generation: allocation.generation,
            };
            if !allocations::adopt_container(&mut transaction, reference, &container.id, status)
                .await?
            {
                // Its launch recorded a container meanwhile: nothing to adopt.
                return Ok(false);
            }
            if allocation.replica == 0 {
                let mut adopted = services::get(&mut transaction, service.id).await?;
                adopted.container_id = Some(container.id.clone());
                adopted.container_name = Some(container.name.clone());
                services::update(&mut transaction, &adopted).await?;
            }
            operations::commit_with(
                transaction,
                &replicas::service_operation(
                    None,
                    "container.adopt",
                    service,
                    "ok",
                    json!({"container_id": container.id, "replica": allocation.replica, "node": node.name}),
                ),
            )
            .await?;
            Ok(true)
        }
        Remedy::Start(container) => {
            state.node_client(node).await?.start(&container.id).await?;
            record(
                state,
                replicas::service_operation(
                    None,
                    "container.restart",
                    service,
                    "ok",
                    json!({"container_id": container.id, "was": container.status}),
                ),
            )
            .await?;
            Ok(true)
        }
        Remedy::Stop(container) => {
            state
                .node_client(node)
                .await?
                .stop(&container.id, service_work::DEFAULT_GRACE_SECS)
                .await?;
            record(
                state,
                replicas::service_operation(
                    None,
                    "container.stop",
                    service,
                    "ok",
                    json!({"container_id": container.id, "replica": allocation.replica,
                        "why": "the service is stopped"}),
                ),
            )
            .await?;
            Ok(true)
        }
        Remedy::Recreate => {
            let definition = replicas::definition_of(service)?;
            let owner = replicas::owner_name(state, service).await?;
            let placement = berth_core::schedule::Placement {
                node_id: node.id,
                gpus: scheduling::assignment_of(allocation),
            };
            replicas::launch(
                state,
                LaunchPlan {
                    service,
                    replica: allocation.replica,
                    generation: allocation.generation,
                    definition: &definition,
                    owner: &owner,
                    node,
                    placement: &placement,
                    request: &scheduling::request_of(allocation),
                    start: wants_running,
                    tracker: None,
                },
                &Cause {
                    actor: None,
                    action: "container.recreate",
                    detail: json!({"missing": allocation.container_id}),
                },
            )
            .await?;
            Ok(true)
        }
    }
}

async fn record(state: &HubState, operation: NewOperation) -> Result<(), StoreError> {
    let transaction = state.store.begin().await?;
    operations::commit_with(transaction, &operation)
        .await
        .map(|_| ())
}
