//! What a change of a node does once its intent is committed: a drain. The intent unlists the
//! node (nothing new lands there) and opens the operation in one transaction; the work then
//! moves every replica off the node, one service at a time under that service's claim, leaving
//! pinned services where they are. A drain is safe to repeat — it moves what is still on the
//! node — so a restarted hub carries an unfinished one on.

use std::sync::Arc;

use axum::http::StatusCode;
use berth_http::Problem;
use berth_store::StoreError;
use berth_store::allocations::{self, Allocation};
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::services;
use serde_json::{Value, json};

use crate::ops::{self, Scope, Tracker};
use crate::replicas::{self, Cause, Destination};
use crate::state::HubState;

/// The action of a drain's operation.
pub const DRAIN: &str = "node.drain";

/// Commits the intent of draining node `node_id` by `actor` — the node unlisted and the
/// operation opened, in one transaction — then starts the drain; the operation's id.
pub async fn intend_drain(state: &Arc<HubState>, actor: i64, node_id: i64) -> Result<i64, Problem> {
    let mut transaction = state.store.begin().await?;
    let mut node = nodes::get(&mut transaction, node_id).await?;
    let was_listed = node.listed;
    node.listed = false;
    nodes::update(&mut transaction, &node).await?;
    let here = allocations::on_node(&mut transaction, node_id).await?.len();
    let id = operations::open(
        &mut transaction,
        &NewOperation {
            user_id: Some(actor),
            action: DRAIN.to_owned(),
            target_kind: "node".to_owned(),
            target_id: node_id.to_string(),
            node_id: Some(node_id),
            service_id: None,
            outcome: "running".to_owned(),
            detail: json!({"node": node.name, "was_listed": was_listed, "replicas": here}),
        },
        None,
    )
    .await?;
    transaction.commit().await.map_err(StoreError::from)?;
    state.placements_changed();
    state.operation_changed(id);
    spawn_drain(state, id, node_id, Some(actor));
    Ok(id)
}

/// Starts carrying out drain operation `operation` of node `node_id` (its intent committed).
pub fn spawn_drain(state: &Arc<HubState>, operation: i64, node_id: i64, actor: Option<i64>) {
    ops::spawn(
        Arc::clone(state),
        operation,
        Scope::Several,
        move |state, tracker| async move { drain(&state, &tracker, node_id, actor).await },
    );
}

/// Moves every replica off `node_id` but those of pinned services. Fails, naming each replica
/// that could not move and why, when any could not; what moved stays moved.
async fn drain(
    state: &HubState,
    tracker: &Tracker,
    node_id: i64,
    actor: Option<i64>,
) -> Result<Value, Problem> {
    let (node, here) = {
        let mut connection = state.store.acquire().await?;
        let node = nodes::get(&mut connection, node_id).await?;
        let here = allocations::on_node(&mut connection, node_id).await?;
        (node, here)
    };
    let total = here.len() as u64;
    let (mut moved, mut pinned, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (index, allocation) in here.iter().enumerate() {
        tracker
            .step(
                index as u64,
                total,
                format!(
                    "moving replica {} of service {} off {}",
                    allocation.replica, allocation.service_id, node.name
                ),
            )
            .await;
        match move_off(state, &node, allocation, actor).await {
            Ok(Outcome::Moved(entry)) => moved.push(entry),
            Ok(Outcome::Pinned(entry)) => pinned.push(entry),
            Ok(Outcome::Gone) => {}
            Err(problem) => failed.push(format!(
                "replica {} of service {}: {}",
                allocation.replica,
                allocation.service_id,
                problem.detail()
            )),
        }
    }
    tracker.step(total, total, "drained").await;
    if !failed.is_empty() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "{} of {total} replica(s) could not leave node {}: {}; the node stays unlisted — fix this and drain it again to move what is left",
                failed.len(),
                node.name,
                failed.join("; ")
            ),
        ));
    }
    Ok(json!({"node_id": node.id, "listed": false, "moved": moved, "pinned": pinned}))
}

/// What became of one replica of a drained node.
enum Outcome {
    /// Moved to another node.
    Moved(Value),
    /// Left in place: its service is pinned.
    Pinned(Value),
    /// No longer on the node (moved or deleted meanwhile).
    Gone,
}

/// Moves `allocation`'s replica off `node` under its service's claim, unless its service is
/// pinned or it left the node meanwhile.
async fn move_off(
    state: &HubState,
    node: &NodeRecord,
    allocation: &Allocation,
    actor: Option<i64>,
) -> Result<Outcome, Problem> {
    let _claim = ops::claim_when_free(state, allocation.service_id).await;
    let (service, current) = {
        let mut connection = state.store.acquire().await?;
        let service = match services::get(&mut connection, allocation.service_id).await {
            Ok(service) => service,
            Err(StoreError::NotFound(_)) => return Ok(Outcome::Gone),
            Err(err) => return Err(err.into()),
        };
        let current =
            allocations::for_replica(&mut connection, service.id, allocation.replica).await?;
        (service, current)
    };
    if current.is_none_or(|current| current.node_id != node.id) {
        return Ok(Outcome::Gone);
    }
    let entry =
        json!({"service_id": service.id, "replica": allocation.replica, "name": service.name});
    if service.pinned {
        return Ok(Outcome::Pinned(entry));
    }
    let launched = replicas::move_replica(
        state,
        service.id,
        allocation.replica,
        Destination::Scheduled,
        Cause {
            actor,
            action: "service.drain",
            detail: json!({"from_node": node.name}),
        },
    )
    .await?;
    state.routes.touch(service.id);
    Ok(Outcome::Moved(json!({
        "service_id": service.id,
        "replica": launched.replica,
        "node_id": launched.node_id,
        "generation": launched.generation,
    })))
}
