//! `/api/admin`: the controllers view of nodes (seed 000), enabling and disabling them, and the
//! operation log.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use berth_http::Path;
use berth_http::{Problem, parse_query};
use berth_store::operations::{self, OperationFilter};
use berth_store::{allocations, nodes};
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

/// The last page number the operation log answers.
const MAX_PAGE: i64 = 1_000_000;

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
    if !(1..=MAX_PAGE).contains(&query.page) {
        return Err(Problem::invalid_field(
            "page",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    if !(1..=500).contains(&query.size) {
        return Err(Problem::invalid_field("size", "must be between 1 and 500"));
    }
    let filter = OperationFilter {
        service_id: query.service_id,
        node_id: query.node_id,
        user_id: query.user_id,
        action: query.action,
        visible_to: None,
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
