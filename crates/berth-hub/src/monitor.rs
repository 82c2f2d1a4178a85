//! The node monitor: tests every node's connection concurrently at a fixed interval, stores the
//! status and the hardware learned, records status changes in the operation log, and logs only
//! the failures.

use std::future::Future;
use std::sync::Arc;

use berth_core::ConnectionStatus;
use berth_store::StoreError;
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::{self, NewOperation};
use futures_util::future::join_all;
use serde_json::json;

use crate::node_check::{self, NodeCheck};
use crate::state::HubState;

/// Tests `node`, stores the outcome, and records an operation: always when `actor` asked for the
/// test (`Some(user)`), otherwise only when the status changed.
pub async fn check_and_record(
    state: &HubState,
    node: &NodeRecord,
    actor: Option<i64>,
) -> Result<NodeCheck, StoreError> {
    let check = node_check::check(node, &state.secrets, &state.http).await;
    let status = check.report.status.as_str();
    let changed = status != node.docker_status;
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
    transaction.commit().await?;
    if check.report.status == ConnectionStatus::Failed {
        tracing::error!(node = %node.name, message = %check.report.message, "Node connection failed.");
    }
    Ok(check)
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

/// Runs rounds every `settings.monitor_interval`, the first one interval from now, until
/// `shutdown` completes.
pub async fn run(state: Arc<HubState>, shutdown: impl Future<Output = ()>) {
    let period = state.settings.monitor_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(err) = check_all(&state).await {
                    tracing::error!(error = %err, "Node monitor round failed.");
                }
            }
            () = &mut shutdown => return,
        }
    }
}
