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
        "leadership": leadership_view(&state.leadership.borrow()),
    });
    let status = if database {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Who leads, as `/health` says it.
fn leadership_view(lead: &crate::leadership::Lead) -> Value {
    json!({
        "mode": if lead.elected { "elected" } else { "single" },
        "leading": lead.leading(),
        "term": lead.term,
        "since_ms": (lead.since_ms > 0).then_some(lead.since_ms),
        "leader_url": lead.leader_url,
    })
}

/// `GET /metrics` (admin): OpenMetrics text. It names every user's services and their traffic,
/// so it is the admins' (and their scraper's, with an admin's token); a user reads their own
/// services' figures from `GET /api/services/{id}/status`.
pub async fn metrics(
    State(state): State<Arc<HubState>>,
    user: CurrentUser,
) -> Result<Response, Problem> {
    user.require_admin()?;
    let nodes: Vec<(String, i64)> = nodes_by_status(&state)
        .await?
        .into_iter()
        .map(|(status, count)| (status.to_owned(), count))
        .collect();
    let services = {
        let mut connection = state.store.acquire().await?;
        berth_store::services::count_by_status(&mut connection).await?
    };
    let (following, lost, differences) = state.mirror_counts();
    state.metrics.set_mirrors(following, lost, differences);
    state.metrics.set_failing_repairs(state.failing_repairs());
    state.metrics.set_leadership(&state.leadership.borrow());
    let expiries: Vec<(String, &str, i64)> = {
        let mut connection = state.store.acquire().await?;
        nodes::list(&mut connection)
            .await?
            .iter()
            .flat_map(|node| {
                crate::node_check::node_certificate_expiry(node, &state.secrets)
                    .into_iter()
                    .map(|(certificate, at)| (node.name.clone(), certificate, at))
            })
            .collect()
    };
    state.metrics.set_certificate_expiry(&expiries);
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
        let routes: Vec<(String, &str)> = super::super::route_list()
            .into_iter()
            .map(|(method, path)| (method.as_str().to_ascii_lowercase(), path))
            .collect();
        let routes: Vec<(&str, &str)> = routes
            .iter()
            .map(|(method, path)| (*path, method.as_str()))
            .collect();
        berth_http::assert_documents_exactly(OPENAPI_DOCUMENT, &routes);
    }
}
