//! `/`, `/health`, `/system`, `/capabilities`, `/metrics` and `/openapi.json`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Problem, parse_query};
use crate::metrics::OPENMETRICS_CONTENT_TYPE;
use crate::state::AgentState;
use crate::timestamp::utc_now;

type Shared = State<Arc<AgentState>>;

/// The OpenAPI document of this API.
pub const OPENAPI_DOCUMENT: &str = include_str!("../openapi.json");

/// `GET /`: a banner with the routes.
pub async fn root(State(state): Shared) -> Json<Value> {
    Json(json!({
        "service": "mManager",
        "implementation": "berth agent",
        "description": "Docker container controller of this server",
        "version": env!("CARGO_PKG_VERSION"),
        "server_id": state.config.server_id,
        "server_type": state.config.server_type,
        "timestamp": utc_now(),
        "status": "running",
        "endpoints": {
            "health": "/health",
            "containers": "/containers/",
            "images": "/images/",
            "system": "/system",
            "capabilities": "/capabilities",
            "metrics": "/metrics",
            "docs": "/openapi.json",
        },
    }))
}

/// `GET /health`: always 200; `status` says `healthy`, `warning`, `critical` or `unhealthy`.
pub async fn health(State(state): Shared) -> Json<Value> {
    match state.snapshot().await {
        Ok(snapshot) => Json(snapshot.health()),
        Err(problem) => Json(json!({
            "status": "unhealthy",
            "timestamp": utc_now(),
            "server_id": state.config.server_id,
            "server_type": state.config.server_type,
            "error": serde_json::to_value(&problem).ok().and_then(|body| body.get("detail").cloned()),
        })),
    }
}

/// `GET /system`.
pub async fn system(State(state): Shared) -> Result<Json<Value>, Problem> {
    Ok(Json(state.snapshot().await?.system()))
}

/// `GET /capabilities`.
pub async fn capabilities(State(state): Shared) -> Result<Json<Value>, Problem> {
    Ok(Json(state.snapshot().await?.capabilities()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {
    #[serde(default)]
    format: Option<String>,
}

/// `GET /metrics`: OpenMetrics text; `?format=json` for mManager's JSON.
pub async fn metrics(State(state): Shared, RawQuery(raw): RawQuery) -> Result<Response, Problem> {
    let query: MetricsQuery = parse_query(raw)?;
    let snapshot = state.snapshot().await?;
    match query.format.as_deref() {
        None | Some("prometheus" | "openmetrics" | "text") => Ok((
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            state.metrics.render(&snapshot),
        )
            .into_response()),
        Some("json") => Ok(Json(snapshot.metrics_json()).into_response()),
        Some(other) => Err(Problem::invalid_field(
            "format",
            format!("{other:?} is not json or prometheus"),
        )),
    }
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
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
            ("/", "get"),
            ("/health", "get"),
            ("/system", "get"),
            ("/capabilities", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
            ("/events", "get"),
            ("/containers/", "get"),
            ("/containers/", "post"),
            ("/containers/{id}", "get"),
            ("/containers/{id}", "delete"),
            ("/containers/{id}/start", "post"),
            ("/containers/{id}/stop", "post"),
            ("/containers/{id}/restart", "post"),
            ("/containers/{id}/stats", "get"),
            ("/containers/{id}/logs", "get"),
            ("/containers/{id}/files", "post"),
            ("/containers/{id}/directories", "post"),
            ("/images/", "get"),
            ("/images/pull", "post"),
            ("/images/prune", "post"),
            ("/images/{name}", "get"),
            ("/images/{name}", "delete"),
        ];
        berth_http::assert_documents_exactly(OPENAPI_DOCUMENT, &routes);
    }
}
