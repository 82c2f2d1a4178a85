//! `/health` (open), `/metrics` and `/api/openapi.json`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_http::Problem;
use berth_store::nodes;
use serde_json::{Value, json};

use super::CurrentUser;
use crate::state::HubState;

/// The OpenAPI document of the hub's API.
pub const OPENAPI_DOCUMENT: &str = include_str!("../openapi.json");

async fn nodes_by_status(state: &HubState) -> Result<Vec<(&'static str, i64)>, Problem> {
    let mut connection = state.store.acquire().await?;
    let all = nodes::list(&mut connection).await?;
    Ok(["connected", "failed", "unknown"]
        .into_iter()
        .map(|status| {
            (
                status,
                all.iter()
                    .filter(|node| node.docker_status == status)
                    .count() as i64,
            )
        })
        .collect())
}

/// `GET /health`: the database answers, and the nodes by status.
pub async fn health(State(state): State<Arc<HubState>>) -> Response {
    let database = state.store.ping().await;
    let nodes = nodes_by_status(&state).await.ok();
    let body = json!({
        "status": if database { "healthy" } else { "unhealthy" },
        "database": if database { "ok" } else { "unreachable" },
        "nodes": nodes.map(|counts| {
            counts.into_iter().map(|(status, count)| (status.to_owned(), json!(count))).collect::<serde_json::Map<String, Value>>()
        }),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = if database {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: OpenMetrics text.
pub async fn metrics(
    State(state): State<Arc<HubState>>,
    _user: CurrentUser,
) -> Result<Response, Problem> {
    let nodes: Vec<(String, i64)> = nodes_by_status(&state)
        .await?
        .into_iter()
        .map(|(status, count)| (status.to_owned(), count))
        .collect();
    let services = {
        let mut connection = state.store.acquire().await?;
        berth_store::services::count_by_status(&mut connection).await?
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&nodes, &services),
    )
        .into_response())
}

/// `GET /api/openapi.json`.
pub async fn openapi(_user: CurrentUser) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route() {
        let routes = [
            ("/health", "get"),
            ("/metrics", "get"),
            ("/api/openapi.json", "get"),
            ("/api/users", "get"),
            ("/api/users", "post"),
            ("/api/users/me", "get"),
            ("/api/users/{id}", "get"),
            ("/api/users/{id}", "put"),
            ("/api/users/{id}", "delete"),
            ("/api/users/{id}/tokens", "post"),
            ("/api/nodes", "get"),
            ("/api/nodes", "post"),
            ("/api/nodes/{id}", "get"),
            ("/api/nodes/{id}", "put"),
            ("/api/nodes/{id}", "delete"),
            ("/api/nodes/{id}/test", "post"),
            ("/api/nodes/{id}/drain", "post"),
            ("/api/admin/controllers", "get"),
            ("/api/admin/controllers/{id}/health", "get"),
            ("/api/admin/controllers/{id}/enable", "post"),
            ("/api/admin/controllers/{id}/disable", "post"),
            ("/api/admin/operations", "get"),
            ("/api/admin/containers", "get"),
            ("/api/admin/containers/{id}/migrate", "post"),
            ("/api/admin/resources/usage", "get"),
            ("/api/images", "get"),
            ("/api/images", "post"),
            ("/api/images/{id}", "put"),
            ("/api/images/{id}", "delete"),
            ("/api/specs", "get"),
            ("/api/specs", "post"),
            ("/api/specs/{id}", "put"),
            ("/api/specs/{id}", "delete"),
            ("/api/{username}/{repo}/services", "post"),
            ("/api/services", "get"),
            ("/api/services/{id}", "get"),
            ("/api/services/{id}", "put"),
            ("/api/services/{id}", "delete"),
            ("/api/services/{id}/start", "post"),
            ("/api/services/{id}/stop", "post"),
            ("/api/services/{id}/load", "post"),
            ("/api/services/{id}/unload", "post"),
            ("/api/services/{id}/status", "get"),
            ("/api/services/{id}/logs", "get"),
            ("/api/services/{id}/stats", "get"),
            ("/api/services/{id}/stats/history", "get"),
            ("/api/services/{id}/deployments", "get"),
            ("/api/services/{id}/rollback", "post"),
        ];
        berth_http::assert_documents_exactly(OPENAPI_DOCUMENT, &routes);
    }
}
