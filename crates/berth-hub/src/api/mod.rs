//! The hub's REST API under `/api`, plus `/health` (open) and `/metrics`. Every route but
//! `/health` needs `Authorization: Bearer <token>`; admin routes need the admin role.

pub(crate) mod admin;
pub(crate) mod catalog;
pub(crate) mod nodes;
pub(crate) mod placement;
pub(crate) mod services;
pub(crate) mod system;
pub(crate) mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_http::Problem;
use berth_store::users::{Role, User};

use crate::state::HubState;

/// The whole API over `state`.
pub fn router(state: Arc<HubState>) -> Router {
    Router::new()
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/api/openapi.json", get(system::openapi))
        .route("/api/users", get(users::list).post(users::create))
        .route("/api/users/me", get(users::me))
        .route(
            "/api/users/{id}",
            get(users::get_one).put(users::update).delete(users::delete),
        )
        .route("/api/users/{id}/tokens", post(users::issue_token))
        .route("/api/nodes", get(nodes::list).post(nodes::create))
        .route(
            "/api/nodes/{id}",
            get(nodes::get_one).put(nodes::update).delete(nodes::delete),
        )
        .route("/api/nodes/{id}/test", post(nodes::test))
        .route("/api/nodes/{id}/drain", post(placement::drain))
        .route(
            "/api/images",
            get(catalog::list_images).post(catalog::create_image),
        )
        .route(
            "/api/images/{id}",
            axum::routing::put(catalog::update_image).delete(catalog::delete_image),
        )
        .route(
            "/api/specs",
            get(catalog::list_specs).post(catalog::create_spec),
        )
        .route(
            "/api/specs/{id}",
            axum::routing::put(catalog::update_spec).delete(catalog::delete_spec),
        )
        .route("/api/services", get(services::list))
        .route(
            "/api/services/{id}",
            get(services::get_one)
                .put(services::update)
                .delete(services::delete),
        )
        .route("/api/services/{id}/start", post(services::start))
        .route("/api/services/{id}/stop", post(services::stop))
        .route("/api/services/{id}/load", post(services::load))
        .route("/api/services/{id}/unload", post(services::unload))
        .route("/api/services/{id}/status", get(services::status))
        .route("/api/services/{id}/logs", get(services::logs))
        .route("/api/services/{id}/stats", get(services::stats))
        .route(
            "/api/services/{id}/stats/history",
            get(services::stats_history),
        )
        .route("/api/services/{id}/deployments", get(services::deployments))
        .route("/api/services/{id}/rollback", post(services::rollback))
        .route("/api/{username}/{repo}/services", post(services::create))
        .route("/api/admin/controllers", get(admin::controllers))
        .route(
            "/api/admin/controllers/{id}/health",
            get(admin::controller_health),
        )
        .route("/api/admin/controllers/{id}/enable", post(admin::enable))
        .route("/api/admin/controllers/{id}/disable", post(admin::disable))
        .route("/api/admin/operations", get(admin::operations))
        .route("/api/admin/containers", get(admin::containers))
        .route(
            "/api/admin/containers/{id}/migrate",
            post(placement::migrate),
        )
        .route(
            "/api/admin/resources/usage",
            get(placement::resources_usage),
        )
        .fallback(berth_http::no_route)
        .method_not_allowed_fallback(berth_http::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
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
    if request.uri().path() == "/health" {
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
        Ok(Some(user)) => {
            request.extensions_mut().insert(CurrentUser(user));
            next.run(request).await
        }
        Ok(None) => Problem::unauthorized("Invalid token").into_response(),
        Err(err) => Problem::from(err).into_response(),
    }
}

async fn observe(State(state): State<Arc<HubState>>, request: Request, next: Next) -> Response {
    state.metrics.http.measure(request, next).await.0
}
