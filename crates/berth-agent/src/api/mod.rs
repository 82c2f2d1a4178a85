//! The agent's HTTP API: mManager's routes and Bearer authentication, JSON on every answer,
//! problem+json on every error, and `GET /events`, the stream of its containers' changes. `router` builds it; `main` only binds and serves.

mod containers;
mod events;
mod files;
mod images;
mod node_routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

pub use berth_http::Problem;
pub(crate) use berth_http::{parse_body, parse_query};

use crate::state::AgentState;

/// Largest request body: file and directory uploads carry whole model archives in base64.
pub const MAX_BODY_BYTES: usize = 1024 * 1024 * 1024;

/// Paths answered without a key: the liveness probe, the banner and the API description, as
/// mManager leaves them open.
const OPEN_PATHS: [&str; 3] = ["/health", "/", "/openapi.json"];

/// The whole API over `state`.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/", get(node_routes::root))
        .route("/health", get(node_routes::health))
        .route("/system", get(node_routes::system))
        .route("/capabilities", get(node_routes::capabilities))
        .route("/metrics", get(node_routes::metrics))
        .route("/openapi.json", get(node_routes::openapi))
        .route("/events", get(events::stream))
        .route(
            "/containers/",
            get(containers::list).post(containers::create),
        )
        .route(
            "/containers",
            get(containers::list).post(containers::create),
        )
        .route(
            "/containers/{id}",
            get(containers::info).delete(containers::remove),
        )
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/restart", post(containers::restart))
        .route("/containers/{id}/stats", get(containers::stats))
        .route("/containers/{id}/logs", get(containers::logs))
        .route("/containers/{id}/files", post(files::copy_file))
        .route("/containers/{id}/directories", post(files::copy_directory))
        .route("/images/", get(images::list))
        .route("/images", get(images::list))
        .route("/images/pull", post(images::pull))
        .route("/images/prune", post(images::prune))
        .route(
            "/images/{*name}",
            get(images::inspect).delete(images::remove),
        )
        .fallback(berth_http::no_route)
        .method_not_allowed_fallback(berth_http::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(berth_http::problems_only))
        .with_state(state)
}

/// Requires `Authorization: Bearer <MMANAGER_API_KEY>` on every path but the open ones.
async fn authenticate(
    State(state): State<Arc<AgentState>>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Problem::unauthorized("Missing Authorization header").into_response();
    };
    let Some(token) = value
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return Problem::unauthorized(
            "Invalid authorization format; use: Authorization: Bearer <key>",
        )
        .into_response();
    };
    if !bool::from(
        token
            .trim()
            .as_bytes()
            .ct_eq(state.config.api_key.as_bytes()),
    ) {
        return Problem::unauthorized("Invalid API key").into_response();
    }
    next.run(request).await
}

/// Counts requests by route and status, and sets mManager's `X-Process-Time` and `X-Server-ID`.
async fn observe(State(state): State<Arc<AgentState>>, request: Request, next: Next) -> Response {
    let (mut response, seconds) = state.metrics.http.measure(request, next).await;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.6}")) {
        headers.insert("x-process-time", value);
    }
    if let Ok(value) = HeaderValue::from_str(&state.config.server_id) {
        headers.insert("x-server-id", value);
    }
    response
}
