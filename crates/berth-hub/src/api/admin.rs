//! `/api/admin`: the controllers view of nodes (seed 000), enabling and disabling them, and the
//! operation log.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use berth_http::{Problem, parse_query};
use berth_store::operations::NewOperation;
use berth_store::operations::{self, OperationFilter};
use berth_store::{allocations, nodes, services};
use serde::Deserialize;
use serde_json::{Value, json};

use super::CurrentUser;
use super::nodes::set_enabled;
use crate::monitor;
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

/// `GET /api/admin/controllers`: every node as a controller (driver, URL, type, priority, weight,
/// status).
pub async fn controllers(State(state): Shared, user: CurrentUser) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let mut connection = state.store.acquire().await?;
    let all = nodes::list(&mut connection).await?;
    let items: Vec<Value> = all
        .iter()
        .map(|node| {
            let url = if node.driver == "agent" {
                &node.agent_url
            } else {
                &node.docker_address
            };
            json!({
                "id": node.id,
                "name": node.name,
                "driver": node.driver,
                "url": url,
                "server_type": node.server_type,
                "enabled": node.enabled,
                "priority": node.priority,
                "weight": node.weight,
                "status": node.docker_status,
                "message": node.status_message,
                "last_checked_at": node.last_checked_at,
                "observed": node.observed,
            })
        })
        .collect();
    Ok(Json(json!({"controllers": items, "total": items.len()})))
}

/// `GET /api/admin/controllers/{id}/health`: tests the node now.
pub async fn controller_health(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let node = {
        let mut connection = state.store.acquire().await?;
        nodes::get(&mut connection, id).await?
    };
    let check = monitor::check_and_record(&state, &node, Some(user.0.id)).await?;
    Ok(Json(
        json!({"id": id, "status": check.report.status, "message": check.report.message, "observed": check.observed}),
    ))
}

/// `POST /api/admin/controllers/{id}/enable`.
pub async fn enable(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    Ok(Json(json!(set_enabled(&state, user.0.id, id, true).await?)))
}

/// `POST /api/admin/controllers/{id}/disable`: the node takes no new work.
pub async fn disable(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    Ok(Json(json!(
        set_enabled(&state, user.0.id, id, false).await?
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationsQuery {
    #[serde(default)]
    service_id: Option<i64>,
    #[serde(default)]
    node_id: Option<i64>,
    #[serde(default)]
    user_id: Option<i64>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default = "first_page")]
    page: i64,
    #[serde(default = "fifty")]
    size: i64,
}

impl Default for OperationsQuery {
    fn default() -> Self {
        Self {
            service_id: None,
            node_id: None,
            user_id: None,
            action: None,
            page: first_page(),
            size: fifty(),
        }
    }
}

fn first_page() -> i64 {
    1
}

fn fifty() -> i64 {
    50
}

/// `GET /api/admin/operations?service_id=&node_id=&user_id=&action=&page=&size=`, newest first.
pub async fn operations(
    State(state): Shared,
    user: CurrentUser,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let query: OperationsQuery = parse_query(raw)?;
    if query.page < 1 {
        return Err(Problem::invalid_field("page", "starts at 1"));
    }
    if !(1..=500).contains(&query.size) {
        return Err(Problem::invalid_field("size", "must be between 1 and 500"));
    }
    let filter = OperationFilter {
        service_id: query.service_id,
        node_id: query.node_id,
        user_id: query.user_id,
        action: query.action,
        page: query.page,
        size: query.size,
    };
    let mut connection = state.store.acquire().await?;
    let (items, total) = operations::list(&mut connection, &filter).await?;
    Ok(Json(
        json!({"operations": items, "total": total, "page": filter.page, "size": filter.size}),
    ))
}

/// `GET /api/admin/containers`: every container Berth placed, with its service and node.
pub async fn containers(State(state): Shared, user: CurrentUser) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let mut connection = state.store.acquire().await?;
    let placed = allocations::list(&mut connection).await?;
    let names: std::collections::HashMap<i64, String> = nodes::list(&mut connection)
        .await?
        .into_iter()
        .map(|node| (node.id, node.name))
        .collect();
    let items: Vec<Value> = placed
        .iter()
        .map(|container| {
            let mut item = json!(container);
            item["node_name"] = json!(names.get(&container.node_id));
            item
        })
        .collect();
    Ok(Json(json!({"containers": items, "total": items.len()})))
}

/// `POST /api/admin/containers/{id}/migrate`: moving a running service to another node comes with
/// the scheduler; until then the answer is 501 and nothing changes (the request is logged).
pub async fn migrate(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let transaction = state.store.begin().await?;
    operations::commit_with(
        transaction,
        &NewOperation {
            user_id: Some(user.0.id),
            action: "container.migrate".to_owned(),
            target_kind: "container".to_owned(),
            target_id: id.to_string(),
            node_id: None,
            service_id: None,
            outcome: "not_implemented".to_owned(),
            detail: json!({}),
        },
    )
    .await?;
    Err(Problem::new(
        StatusCode::NOT_IMPLEMENTED,
        "migration comes with the scheduler; stop the service and create it again to move it",
    ))
}

/// `GET /api/admin/resources/usage`: per node, what services were given against what it has.
pub async fn resources_usage(
    State(state): Shared,
    user: CurrentUser,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let mut connection = state.store.acquire().await?;
    let all_nodes = nodes::list(&mut connection).await?;
    let all_services = services::list(&mut connection, None).await?;
    let per_node: Vec<Value> = all_nodes
        .iter()
        .map(|node| {
            let here: Vec<_> = all_services.iter().filter(|service| service.node_id == Some(node.id)).collect();
            let cpu_millis: i64 = here.iter().map(|service| service.cpu_millis).sum();
            let memory_bytes: i64 = here.iter().map(|service| service.memory_bytes).sum();
            let gpus: i64 = here.iter().map(|service| service.gpu_count).sum();
            let running = here.iter().filter(|service| service.status == "running").count();
            json!({
                "node_id": node.id,
                "name": node.name,
                "status": node.docker_status,
                "services": here.len(),
                "running": running,
                "allocated": {"cpu_millis": cpu_millis, "memory_bytes": memory_bytes, "gpus": gpus},
                "capacity": {
                    "cpu_cores": node.observed["cpu_cores"],
                    "memory_bytes": node.observed["memory_bytes"],
                    "gpus": node.gpu_count.max(node.observed["gpus"].as_array().map_or(0, |gpus| gpus.len() as i64)),
                },
            })
        })
        .collect();
    let total_cpu: i64 = all_services.iter().map(|service| service.cpu_millis).sum();
    let total_memory: i64 = all_services
        .iter()
        .map(|service| service.memory_bytes)
        .sum();
    Ok(Json(json!({
        "nodes": per_node,
        "services": all_services.len(),
        "allocated": {"cpu_millis": total_cpu, "memory_bytes": total_memory},
    })))
}
