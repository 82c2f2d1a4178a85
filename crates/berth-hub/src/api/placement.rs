//! Admin placement controls: moving one container (`migrate`), moving everything off a node
//! (`drain`), and the resource view — per node and per GPU, what allocations take against what
//! the node has and what it last observed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use berth_http::Path;
use berth_http::{Problem, parse_body};
use berth_store::allocations;
use berth_store::nodes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::CurrentUser;
use super::operations::{WaitQuery, accepted};
use crate::node_work;
use crate::scheduling;
use crate::service_work::{self, Change};
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateRequest {
    #[serde(default)]
    node_id: Option<i64>,
}

/// `POST /api/admin/containers/{id}/migrate?wait=SECONDS` with `{node_id}` (optional: the
/// scheduler chooses, never the current node): the move is committed as an operation, then the
/// replacement starts on the new node at the next generation and the old container is removed.
/// The data volume does not move. 202 with the operation (200 once ended, with `?wait=`).
pub async fn migrate(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    user.require_admin()?;
    let wait = WaitQuery::parse(raw)?;
    let request: MigrateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MigrateRequest::default()
    } else {
        parse_body(&body)?
    };
    let allocation = {
        let mut connection = state.store.acquire().await?;
        let allocation = allocations::get(&mut connection, id).await?;
        if let Some(node) = request.node_id {
            nodes::get(&mut connection, node)
                .await
                .map_err(|_| Problem::invalid_field("node_id", format!("no node {node}")))?;
            if node == allocation.node_id {
                return Err(Problem::invalid_field(
                    "node_id",
                    format!("container {id} already runs on node {node}"),
                ));
            }
        }
        allocation
    };
    let operation = service_work::intend(
        &state,
        Some(user.0.id),
        allocation.service_id,
        None,
        Change::Migrate,
        json!({"container": id, "replica": allocation.replica,
            "from_node_id": allocation.node_id, "from_generation": allocation.generation,
            "to_node": request.node_id}),
    )
    .await?;
    accepted(&state, operation, &wait).await
}

/// `POST /api/nodes/{id}/drain?wait=SECONDS`: the node is unlisted so nothing new lands there
/// (committed with the operation), then every service is moved off it (pinned ones stay and
/// are reported). Repeating it moves what is left. 202 with the operation (200 once ended,
/// with `?wait=`).
pub async fn drain(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    user.require_admin()?;
    let wait = WaitQuery::parse(raw)?;
    let operation = node_work::intend_drain(&state, user.0.id, id).await?;
    accepted(&state, operation, &wait).await
}

/// `GET /api/admin/resources/usage`: per node and per GPU, allocated against capacity and what
/// the node observed, with the failure detector's verdict.
pub async fn resources_usage(
    State(state): Shared,
    user: CurrentUser,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let (all_nodes, placed) = {
        let mut connection = state.store.acquire().await?;
        (
            nodes::list(&mut connection).await?,
            allocations::list(&mut connection).await?,
        )
    };
    let cluster = scheduling::cluster(
        &all_nodes,
        &placed,
        &|node| state.is_down(node),
        state.settings().default_max_containers,
    );
    let mut tenants: BTreeMap<(i64, u32), Vec<Value>> = BTreeMap::new();
    for allocation in &placed {
        for index in &allocation.gpu_indices {
            tenants
                .entry((allocation.node_id, *index))
                .or_default()
                .push(json!({
                    "service_id": allocation.service_id,
                    "kind": if allocation.gpu_memory_bytes > 0 { "slice" } else { "whole" },
                    "memory_bytes": allocation.gpu_memory_bytes,
                }));
        }
    }
    let known = |value: u64| (value < u64::MAX / 8).then_some(value);
    let per_node: Vec<Value> = cluster
        .nodes()
        .iter()
        .map(|node| {
            let gpus: Vec<Value> = node
                .gpus
                .iter()
                .map(|gpu| {
                    json!({
                        "index": gpu.index,
                        "memory_bytes": gpu.memory_bytes,
                        "allocated_bytes": gpu.memory_bytes - gpu.free_by_allocations(),
                        "free_by_allocations_bytes": gpu.free_by_allocations(),
                        "observed_free_bytes": gpu.observed_free_bytes,
                        "free_bytes": gpu.free_bytes(),
                        "tenants": tenants.get(&(node.id, gpu.index)).cloned().unwrap_or_default(),
                    })
                })
                .collect();
            json!({
                "node_id": node.id,
                "name": node.name,
                "server_type": node.server_type,
                "enabled": node.enabled,
                "listed": node.listed,
                "healthy": node.healthy,
                "down": state.is_down(node.id),
                "containers": node.containers,
                "max_containers": node.max_containers,
                "capacity": {
                    "cpu_millis": known(node.capacity.cpu_millis),
                    "memory_bytes": known(node.capacity.memory_bytes),
                    "disk_bytes": known(node.capacity.disk_bytes),
                },
                "allocated": node.allocated,
                "gpus": gpus,
            })
        })
        .collect();
    let total_cpu: u64 = cluster
        .nodes()
        .iter()
        .map(|node| node.allocated.cpu_millis)
        .sum();
    let total_memory: u64 = cluster
        .nodes()
        .iter()
        .map(|node| node.allocated.memory_bytes)
        .sum();
    Ok(Json(json!({
        "nodes": per_node,
        "containers": placed.len(),
        "allocated": {"cpu_millis": total_cpu, "memory_bytes": total_memory},
    })))
}
