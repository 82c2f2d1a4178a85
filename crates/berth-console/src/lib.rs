//! Berth's web console: server-rendered pages (askama templates compiled into the binary, one small
//! script and one style sheet served from memory) over the same state and the same handlers as
//! the REST API. Reads come from the store; every change goes through the API's own handler, so
//! validation, ownership, quotas and the operation log are the API's. Sign-in with an API token
//! starts a session (an HttpOnly, SameSite=Strict cookie); every form carries the session's
//! CSRF token, checked before any handler runs.

mod assets;
mod catalog;
mod charts;
mod forms;
mod nodes;
mod operations;
mod overview;
mod services;
mod session;
mod terminal;
mod text;
mod tokens;
mod users;

pub use berth_core::calendar::utc_timestamp as timestamp;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use berth_http::Problem;
use berth_hub::api;
use berth_hub::state::HubState;
use berth_store::users::{Role, User};
pub use text::{Lang, Tr};

/// Everything the hub serves on its main listener: the REST API (token auth) and the web
/// console (session auth); a follower's changes go to the leader ([`api::forward`]).
pub fn app(state: Arc<HubState>) -> Router {
    api::router(Arc::clone(&state))
        .merge(router(Arc::clone(&state)))
        .layer(middleware::from_fn_with_state(
            state,
            api::forward::to_leader,
        ))
}

/// The console's pages over `state`.
pub fn router(state: Arc<HubState>) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route(
            "/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/sign-out", post(session::sign_out))
        .route("/language/{lang}", get(session::language))
        .route("/console/assets/{file}", get(assets::serve))
        .route("/nodes", get(nodes::list).post(nodes::create))
        .route("/nodes/new", get(nodes::new_form))
        .route("/nodes/join", post(nodes::join))
        .route("/nodes/joined", get(nodes::joined))
        .route("/nodes/{id}", get(nodes::detail).post(nodes::update))
        .route("/nodes/{id}/edit", get(nodes::edit_form))
        .route("/nodes/{id}/test", post(nodes::test))
        .route("/nodes/{id}/images/pull", post(nodes::pull_image))
        .route("/nodes/{id}/images/remove", post(nodes::remove_image))
        .route("/nodes/{id}/toggle/{flag}", post(nodes::toggle))
        .route("/nodes/{id}/delete", post(nodes::delete))
        .route("/catalog", get(catalog::page))
        .route("/catalog/specs", post(catalog::create_spec))
        .route("/catalog/images", post(catalog::create_image))
        .route(
            "/catalog/{kind}/{id}",
            get(catalog::edit_form).post(catalog::update),
        )
        .route("/catalog/{kind}/{id}/delete", post(catalog::delete))
        .route("/services", get(services::list).post(services::create))
        .route("/services/new", get(services::new_form))
        .route("/services/bulk", post(services::bulk))
        .route("/services/{id}", get(services::detail))
        .route("/services/{id}/do/{verb}", post(services::act))
        .route("/services/{id}/rollback", post(services::rollback))
        .route("/services/{id}/edit", post(services::edit))
        .route("/services/{id}/logs", get(services::logs))
        .route("/services/{id}/charts", get(services::charts))
        .route("/services/{id}/terminal", get(terminal::page))
        .route("/services/{id}/exec", get(terminal::socket))
        .route("/operations", get(operations::page))
        .route("/users", get(users::page).post(users::create))
        .route("/users/{id}", post(users::update))
        .route("/tokens", get(tokens::page).post(tokens::create))
        .route("/tokens/{id}/revoke", post(tokens::revoke))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            session::attach,
        ))
        .with_state(state)
}

/// What every page's frame shows: who is signed in, the language, the form token and where
/// in the console the page is.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// The signed-in user.
    pub user: User,
    /// The session's CSRF token, for every form.
    pub csrf: String,
    /// The page's section in the navigation (`overview`, `nodes`, …).
    pub section: &'static str,
    /// The path of this page, for the language switch to come back to.
    pub path: String,
}

impl Chrome {
    /// True for admins, who see every user's work and the admin pages.
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }
}

/// A page rendered to HTML with the console's headers.
fn render(page: &impl Template) -> Response {
    rendered(StatusCode::OK, page)
}

/// A page rendered with `status` (422 for a refused form, 404 for a missing object …).
fn rendered(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "A console page failed to render.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// The page shown when an action is refused for a reason that is not one form field.
#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    t: Tr,
    chrome: Chrome,
    status: u16,
    detail: String,
}

/// An error page for `problem` in the visitor's language, within `section` of the console.
fn problem_page(visitor: &session::Visitor, section: &'static str, problem: &Problem) -> Response {
    rendered(
        problem.status(),
        &ErrorPage {
            t: visitor.t,
            chrome: visitor.chrome(section),
            status: problem.status().as_u16(),
            detail: problem.detail().to_owned(),
        },
    )
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    /// The rows of this page.
    pub rows: Vec<T>,
    /// This page, from 1.
    pub page: usize,
    /// Pages in all (at least 1).
    pub pages: usize,
    /// Rows in all.
    pub total: usize,
}

/// Page `requested` (a query value; anything else is page 1, past the end the last) of `rows`,
/// `size` to a page.
pub fn paged<T>(rows: Vec<T>, requested: &str, size: usize) -> Paged<T> {
    let total = rows.len();
    let pages = total.div_ceil(size).max(1);
    let page = requested.parse::<usize>().unwrap_or(1).clamp(1, pages);
    Paged {
        rows: rows
            .into_iter()
            .skip((page - 1) * size)
            .take(size)
            .collect(),
        page,
        pages,
        total,
    }
}

/// After a change: back to `path` with a GET (post/redirect/get).
fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// Bytes as a short human size (`1.5 GiB`).
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes as a size the forms take back unchanged (`2g`, `512m`, `1536k`).
pub fn size_text(bytes: i64) -> String {
    berth_core::ByteSize::from_bytes(u64::try_from(bytes).unwrap_or(0)).docker_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_sizes_read_as_people_write_them() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_764_676_800_000), "2025-12-02 12:00:00");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(size_text(3 << 29), "1536m");
        let third = paged((1..=7).collect::<Vec<_>>(), "3", 3);
        assert_eq!(
            (third.rows, third.page, third.pages, third.total),
            (vec![7], 3, 3, 7)
        );
        assert_eq!(
            paged((1..=7).collect::<Vec<_>>(), "9", 3).page,
            3,
            "past the end: the last"
        );
        assert_eq!(paged(Vec::<u8>::new(), "x", 3).pages, 1);
    }
}
