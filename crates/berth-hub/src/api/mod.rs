//! The hub's REST API under `/api`, plus `/health` (open) and `/metrics`. Every route but
//! `/health` and `POST /api/nodes/join` (whose join token is its credential) needs
//! `Authorization: Bearer <token>`; admin routes need the admin role. Every
//! refusal is problem+json: a body that is not JSON is a 415 (once the caller is known), and an
//! error from below in another form is rewritten.

pub mod admin;
pub mod catalog;
pub mod exec;
pub mod forward;
pub mod gateways;
pub mod node_images;
pub mod node_join;
pub mod nodes;
pub mod operations;
pub mod placement;
pub mod services;
pub mod system;
pub mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use berth_http::Problem;
use berth_store::users::{Bearer, Role, User};

use crate::state::HubState;

/// Every route of the API: method, path template and handler. The router is made from this
/// table, and the tests that hold the OpenAPI document and the authorization matrix to the API
/// read it, so a route cannot be added without them noticing.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<Arc<HubState>>)> {
    vec![
        (Method::GET, "/health", get(system::health)),
        (Method::GET, "/metrics", get(system::metrics)),
        (Method::GET, "/api/openapi.json", get(system::openapi)),
        (Method::GET, "/api/users", get(users::list)),
        (Method::POST, "/api/users", post(users::create)),
        (Method::GET, "/api/users/me", get(users::me)),
        (Method::GET, "/api/users/{id}", get(users::get_one)),
        (Method::PUT, "/api/users/{id}", put(users::update)),
        (Method::DELETE, "/api/users/{id}", delete(users::delete)),
        (
            Method::GET,
            "/api/users/{id}/tokens",
            get(users::list_tokens),
        ),
        (
            Method::POST,
            "/api/users/{id}/tokens",
            post(users::issue_token),
        ),
        (
            Method::DELETE,
            "/api/users/{id}/tokens/{token_id}",
            delete(users::revoke_token),
        ),
        (
            Method::POST,
            "/api/users/{id}/tokens/{token_id}/reissue",
            post(users::reissue_token),
        ),
        (Method::GET, "/api/nodes", get(nodes::list)),
        (Method::POST, "/api/nodes", post(nodes::create)),
        (
            Method::POST,
            "/api/nodes/join-tokens",
            post(node_join::issue),
        ),
        (Method::POST, "/api/nodes/join", post(node_join::join)),
        (Method::GET, "/api/nodes/{id}", get(nodes::get_one)),
        (
            Method::GET,
            "/api/nodes/{id}/images",
            get(node_images::list),
        ),
        (
            Method::DELETE,
            "/api/nodes/{id}/images",
            delete(node_images::remove),
        ),
        (
            Method::POST,
            "/api/nodes/{id}/images/pull",
            post(node_images::pull),
        ),
        (Method::PUT, "/api/nodes/{id}", put(nodes::update)),
        (Method::DELETE, "/api/nodes/{id}", delete(nodes::delete)),
        (Method::POST, "/api/nodes/{id}/test", post(nodes::test)),
        (
            Method::POST,
            "/api/nodes/{id}/drain",
            post(placement::drain),
        ),
        (Method::GET, "/api/images", get(catalog::list_images)),
        (Method::POST, "/api/images", post(catalog::create_image)),
        (Method::PUT, "/api/images/{id}", put(catalog::update_image)),
        (
            Method::DELETE,
            "/api/images/{id}",
            delete(catalog::delete_image),
        ),
        (Method::GET, "/api/specs", get(catalog::list_specs)),
        (Method::POST, "/api/specs", post(catalog::create_spec)),
        (Method::PUT, "/api/specs/{id}", put(catalog::update_spec)),
        (
            Method::DELETE,
            "/api/specs/{id}",
            delete(catalog::delete_spec),
        ),
        (Method::GET, "/api/services", get(services::list)),
        (Method::GET, "/api/services/{id}", get(services::get_one)),
        (Method::PUT, "/api/services/{id}", put(services::update)),
        (Method::PATCH, "/api/services/{id}", patch(services::patch)),
        (
            Method::DELETE,
            "/api/services/{id}",
            delete(services::delete),
        ),
        (
            Method::POST,
            "/api/services/{id}/start",
            post(services::start),
        ),
        (
            Method::POST,
            "/api/services/{id}/stop",
            post(services::stop),
        ),
        (
            Method::POST,
            "/api/services/{id}/restart",
            post(services::restart),
        ),
        (
            Method::GET,
            "/api/services/{id}/operations",
            get(operations::of_service),
        ),
        (
            Method::GET,
            "/api/operations/{id}",
            get(operations::get_one),
        ),
        (
            Method::GET,
            "/api/operations/{id}/events",
            get(operations::events),
        ),
        (
            Method::POST,
            "/api/services/{id}/load",
            post(services::load),
        ),
        (
            Method::POST,
            "/api/services/{id}/unload",
            post(services::unload),
        ),
        (
            Method::GET,
            "/api/services/{id}/status",
            get(services::status),
        ),
        (Method::GET, "/api/services/{id}/logs", get(services::logs)),
        (Method::GET, "/api/services/{id}/exec", get(exec::exec)),
        (
            Method::GET,
            "/api/services/{id}/stats",
            get(services::stats),
        ),
        (
            Method::GET,
            "/api/services/{id}/stats/history",
            get(services::stats_history),
        ),
        (
            Method::GET,
            "/api/services/{id}/deployments",
            get(services::deployments),
        ),
        (
            Method::POST,
            "/api/services/{id}/rollback",
            post(services::rollback),
        ),
        (
            Method::POST,
            "/api/services/{id}/rollout/{command}",
            post(services::rollout),
        ),
        (
            Method::POST,
            "/api/{username}/{repo}/services",
            post(services::create),
        ),
        (
            Method::GET,
            "/api/admin/controllers",
            get(admin::controllers),
        ),
        (
            Method::GET,
            "/api/admin/controllers/{id}/health",
            get(admin::controller_health),
        ),
        (
            Method::POST,
            "/api/admin/controllers/{id}/enable",
            post(admin::enable),
        ),
        (
            Method::POST,
            "/api/admin/controllers/{id}/disable",
            post(admin::disable),
        ),
        (Method::GET, "/api/gateway/routes", get(gateways::routes)),
        (Method::GET, "/api/gateway/bearer", get(gateways::bearer)),
        (Method::POST, "/api/gateway/usage", post(gateways::usage)),
        (Method::GET, "/api/admin/operations", get(admin::operations)),
        (Method::GET, "/api/admin/containers", get(admin::containers)),
        (
            Method::POST,
            "/api/admin/containers/{id}/migrate",
            post(placement::migrate),
        ),
        (
            Method::GET,
            "/api/admin/resources/usage",
            get(placement::resources_usage),
        ),
    ]
}

/// The API's routes as (method, path template), in [`routes`]' order.
pub fn route_list() -> Vec<(Method, &'static str)> {
    routes()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// The whole API over `state`.
pub fn router(state: Arc<HubState>) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| {
            router.route(path, handler)
        })
        .fallback(berth_http::no_route)
        .method_not_allowed_fallback(berth_http::method_not_allowed)
        .layer(middleware::from_fn(berth_http::require_json))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(berth_http::problems_only))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The user a request is made by; set by the authentication layer.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub User);

impl CurrentUser {
    /// Refuses with 403 unless the user is an admin.
    pub fn require_admin(&self) -> Result<(), Problem> {
        if self.0.role == Role::Admin {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "this needs the admin role",
            ))
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CurrentUser {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or_else(|| Problem::unauthorized("Missing Authorization header"))
    }
}

async fn authenticate(
    State(state): State<Arc<HubState>>,
    mut request: Request,
    next: Next,
) -> Response {
    // Open: the liveness probe, and the join of a new node (its join token is the credential).
    if matches!(request.uri().path(), "/health" | "/api/nodes/join") {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned());
    let Some(token) = token else {
        return Problem::unauthorized(
            "Missing Authorization header; use: Authorization: Bearer <token>",
        )
        .into_response();
    };
    let user = match state.store.acquire().await {
        Ok(mut connection) => berth_store::users::user_for_token(&mut connection, &token).await,
        Err(err) => Err(err),
    };
    match user {
        Ok(Some(Bearer {
            services: Some(services),
            ..
        })) => Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "this token is limited to services {services:?} through the gateway; the API needs a token without a service limit"
            ),
        )
        .into_response(),
        Ok(Some(bearer)) => {
            request.extensions_mut().insert(CurrentUser(bearer.user));
            next.run(request).await
        }
        Ok(None) => Problem::unauthorized("Invalid token").into_response(),
        Err(err) => Problem::from(err).into_response(),
    }
}

async fn observe(State(state): State<Arc<HubState>>, request: Request, next: Next) -> Response {
    state.metrics.http.measure(request, next).await.0
}
