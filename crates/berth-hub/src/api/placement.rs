//! Admin placement controls: moving one container (`migrate`), moving everything off a node
//! (`drain`), and the resource view — per node and per GPU, what allocations take against what
//! the node has and what it last observed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use berth_http::Path;
use berth_http::{Problem, parse_body};
use berth_store::allocations::{self, Allocation};
use berth_store::nodes;
use berth_store::operations::{self, NewOperation};
use berth_store::services;
use serde::Deserialize;
use serde_json::{Value, json};

use super::CurrentUser;
use crate::replicas::{self, Cause, Destination};
use crate::scheduling;
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateRequest {
    #[serde(default)]
    node_id: Option<i64>,
}

fn busy(id: i64) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        format!("service {id} is being changed by another request; try again"),
    )
}

/// `POST /api/admin/containers/{id}/migrate` with `{node_id}` (optional: the scheduler chooses,
/// never the current node). The replacement starts on the new node at the next generation, then
/// the old container is removed. The data volume does not move.
pub async fn migrate(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let request: MigrateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MigrateRequest::default()
    } else {
        parse_body(&body)?
    };
    let (allocation, service) = {
        let mut connection = state.store.acquire().await?;
        let allocation = allocations::get(&mut connection, id).await?;
        let service = services::get(&mut connection, allocation.service_id).await?;
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
        (allocation, service)
    };
    let _claim = state.claim(service.id).ok_or_else(|| busy(service.id))?;
    let destination = request
        .node_id
        .map_or(Destination::Scheduled, Destination::Node);
    let moved = replicas::move_replica(
        &state,
        service.id,
        allocation.replica,
        destination,
        Cause {
            actor: Some(user.0.id),
            action: "container.migrate",
            detail: json!({"container": id, "from_node": allocation.node_id}),
        },
    )
    .await?;
    Ok(Json(json!({
        "service_id": service.id,
        "replica": moved.replica,
        "from_node_id": allocation.node_id,
        "node_id": moved.node_id,
        "generation": moved.generation,
        "container_id": moved.container_id,
        "status": service.status,
        "note": "the data volume stays on the old node",
    })))
}

/// `POST /api/nodes/{id}/drain`: unlists the node so nothing new lands there, then moves every
/// service off it (pinned ones stay and are reported). Repeating it moves what is left.
pub async fn drain(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let (node, here) = {
        let mut transaction = state.store.begin().await?;
        let mut node = nodes::get(&mut transaction, id).await?;
        let was_listed = node.listed;
        node.listed = false;
        let node = nodes::update(&mut transaction, &node).await?;
        let here: Vec<Allocation> = allocations::list(&mut transaction)
            .await?
            .into_iter()
            .filter(|allocation| allocation.node_id == id)
            .collect();
        operations::commit_with(
            transaction,
            &NewOperation {
                user_id: Some(user.0.id),
                action: "node.drain".to_owned(),
                target_kind: "node".to_owned(),
                target_id: id.to_string(),
                node_id: Some(id),
                service_id: None,
                outcome: "ok".to_owned(),
                detail: json!({"was_listed": was_listed, "services": here.len()}),
            },
        )
        .await?;
        state.placements_changed();
        (node, here)
    };
    let (mut moved, mut pinned, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for allocation in here {
        let service = {
            let mut connection = state.store.acquire().await?;
            services::get(&mut connection, allocation.service_id).await?
        };
        let entry =
            json!({"service_id": service.id, "replica": allocation.replica, "name": service.name});
        if service.pinned {
            pinned.push(entry);
            continue;
        }
        let Some(_claim) = state.claim(service.id) else {
            failed.push(
                json!({"service_id": service.id, "replica": allocation.replica,
                "reason": "being changed by another request"}),
            );
            continue;
        };
        let cause = Cause {
            actor: Some(user.0.id),
            action: "service.drain",
            detail: json!({"from_node": node.name}),
        };
        match replicas::move_replica(
            &state,
            service.id,
            allocation.replica,
            Destination::Scheduled,
            cause,
        )
        .await
        {
            Ok(launched) => moved.push(json!({
                "service_id": service.id,
                "replica": launched.replica,
                "node_id": launched.node_id,
                "generation": launched.generation,
            })),
            Err(problem) => failed.push(
                json!({"service_id": service.id, "replica": allocation.replica,
                "reason": problem.detail()}),
            ),
        }
    }
    Ok(Json(json!({
        "node_id": node.id,
        "listed": node.listed,
        "moved": moved,
        "pinned": pinned,
        "failed": failed,
    })))
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
