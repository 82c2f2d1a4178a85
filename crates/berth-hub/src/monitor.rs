//! The node monitor: tests every node's connection concurrently at a fixed interval, stores the
//! status and the hardware learned, feeds the failure detector, records status changes and
//! down/up transitions in the operation log, logs only the failures, and after every round runs
//! the reconciler.
//!
//! A failed check, or a node's event stream breaking ([`crate::node_watch`]), makes the node a
//! suspect: it is probed every [`CONFIRM_INTERVAL`] until it passes again or is declared down —
//! which takes `failure_threshold` failures in a row lasting `failure_window`, so a blip shorter
//! than the window moves nothing — and a node declared down is failed over at once, not at the
//! next round. A down node is up again after its checks pass for `recovery_window`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_core::ConnectionStatus;
use berth_store::StoreError;
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use berth_store::services;
use futures_util::future::join_all;
use serde_json::json;

use crate::node_check::{self, NodeCheck};
use crate::reconciler;
use crate::simulation::SIMULATED_DRIVER;
use crate::state::HubState;

/// Tests `node`, stores the outcome, and records an operation: always when `actor` asked for the
/// test (`Some(user)`), otherwise only when the status changed.
pub async fn check_and_record(
    state: &HubState,
    node: &NodeRecord,
    actor: Option<i64>,
) -> Result<NodeCheck, StoreError> {
    let check = if node.driver == SIMULATED_DRIVER {
        NodeCheck {
            report: state.fleet.check(node.id),
            observed: None,
        }
    } else {
        node_check::check(node, &state.secrets, &state.http).await
    };
    let status = check.report.status.as_str();
    let changed = status != node.docker_status;
    let transition =
        state.record_check(node.id, check.report.status == ConnectionStatus::Connected);
    let mut transaction = state.store.begin().await?;
    nodes::set_status(
        &mut transaction,
        node.id,
        status,
        &check.report.message,
        check.observed.as_ref(),
    )
    .await?;
    if actor.is_some() || changed {
        let action = if actor.is_some() {
            "node.test"
        } else {
            "node.status_changed"
        };
        operations::record(
            &mut transaction,
            &NewOperation {
                user_id: actor,
                action: action.to_owned(),
                target_kind: "node".to_owned(),
                target_id: node.id.to_string(),
                node_id: Some(node.id),
                service_id: None,
                outcome: status.to_owned(),
                detail: json!({"from": node.docker_status, "to": status, "message": check.report.message}),
            },
        )
        .await?;
    }
    if let Some(up) = transition {
        record_transition(&mut transaction, state, node, up, &check.report.message).await?;
    }
    transaction.commit().await?;
    if changed || transition.is_some() {
        state.placements_changed();
    }
    if check.report.status == ConnectionStatus::Failed {
        tracing::error!(node = %node.name, message = %check.report.message, "Node connection failed.");
    }
    Ok(check)
}

/// Records a node going down (with each pinned service that stays on it) or coming back.
async fn record_transition(
    transaction: &mut berth_store::Tx<'_>,
    state: &HubState,
    node: &NodeRecord,
    up: bool,
    message: &str,
) -> Result<(), StoreError> {
    let action = if up { "node.up" } else { "node.down" };
    operations::record(
        transaction,
        &NewOperation {
            user_id: None,
            action: action.to_owned(),
            target_kind: "node".to_owned(),
            target_id: node.id.to_string(),
            node_id: Some(node.id),
            service_id: None,
            outcome: "ok".to_owned(),
            detail: json!({
                "failure_threshold": state.settings().failure_threshold,
                "message": message,
            }),
        },
    )
    .await?;
    if up {
        tracing::info!(node = %node.name, "Node is back.");
        return Ok(());
    }
    tracing::error!(node = %node.name, "Node is down; its services move elsewhere.");
    for service in services::list(transaction, None).await? {
        if service.node_id == Some(node.id) && service.pinned && service.status == "running" {
            operations::record(
                transaction,
                &crate::replicas::service_operation(
                    None,
                    "service.failover",
                    &service,
                    "pinned",
                    json!({"node": node.name, "message": "pinned to its node; not moved"}),
                ),
            )
            .await?;
        }
    }
    Ok(())
}

/// Between two probes of a suspect node.
pub const CONFIRM_INTERVAL: Duration = Duration::from_millis(500);

/// Probes node `node_id` every [`CONFIRM_INTERVAL`] until it passes (and, if it was down, is up
/// again) or is declared down — then fails its services over at once. One probe loop per node.
pub fn suspect(state: &Arc<HubState>, node_id: i64) {
    if !state.start_confirming(node_id) {
        return;
    }
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let outcome = confirm(&state, node_id).await;
        state.stop_confirming(node_id);
        match outcome {
            Ok(true) => {
                if let Err(err) = reconciler::round(&state).await {
                    tracing::error!(error = %err, "Reconciler round after a node went down failed.");
                }
            }
            Ok(false) => {}
            Err(err) => {
                tracing::error!(node = node_id, error = %err, "Confirming a node's failure failed.")
            }
        }
    });
}

/// The probes of [`suspect`], the first at once; whether they declared the node down.
async fn confirm(state: &HubState, node_id: i64) -> Result<bool, StoreError> {
    loop {
        let node = {
            let mut connection = state.store.acquire().await?;
            match nodes::get(&mut connection, node_id).await {
                Ok(node) => node,
                Err(StoreError::NotFound(_)) => return Ok(false),
                Err(err) => return Err(err),
            }
        };
        let was_down = state.is_down(node_id);
        check_and_record(state, &node, None).await?;
        let down = state.is_down(node_id);
        if down || !state.is_failing(node_id) {
            // Declared down now, down already (the rounds bring it back), or passing.
            return Ok(down && !was_down);
        }
        tokio::time::sleep(CONFIRM_INTERVAL).await;
    }
}

/// One round: every node, concurrently.
pub async fn check_all(state: &HubState) -> Result<usize, StoreError> {
    let all = {
        let mut connection = state.store.acquire().await?;
        nodes::list(&mut connection).await?
    };
    let results = join_all(all.iter().map(|node| check_and_record(state, node, None))).await;
    for result in &results {
        if let Err(err) = result {
            tracing::error!(error = %err, "Recording a node check failed.");
        }
    }
    Ok(all.len())
}

/// Runs rounds every `monitor_interval` (read again before each wait, so a reloaded
/// configuration takes effect), the first one interval from now, until `shutdown` completes.
pub async fn run(state: Arc<HubState>, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let period = state.settings().monitor_interval;
        tokio::select! {
            () = tokio::time::sleep(period) => {
                if let Err(err) = check_all(&state).await {
                    tracing::error!(error = %err, "Node monitor round failed.");
                }
                for node in state.failing_nodes() {
                    suspect(&state, node);
                }
                if let Err(err) = reconciler::round(&state).await {
                    tracing::error!(error = %err, "Reconciler round failed.");
                }
            }
            () = &mut shutdown => return,
        }
    }
}
