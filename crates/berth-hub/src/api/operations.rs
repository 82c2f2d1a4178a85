//! Operations as resources: `GET /api/operations/{id}` (with `?wait=SECONDS`, the operation once
//! it ended or as it is when the time runs out), its live stream of changes as Server-Sent
//! Events (`GET /api/operations/{id}/events`), and a service's operations
//! (`GET /api/services/{id}/operations`). A change answers with [`accepted`]: `202 Accepted`, the
//! operation and `Location: /api/operations/{id}` — or, with `?wait=`, the ended operation.
//! Users see their own operations and those on their services; admins see all.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_http::{Path, Problem, parse_query};
use berth_store::operations::{self, Operation, OperationFilter};
use berth_store::services;
use berth_store::users::{Role, User};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::CurrentUser;
use crate::ops;
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

/// The longest `?wait=` a request may ask for, in seconds.
pub const MAX_WAIT_SECS: u64 = berth_gateway::control::HUB_WAIT_LIMIT_SECS;

/// `?wait=SECONDS`, the only query a change takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait for the operation's end.
    #[serde(default)]
    pub wait: Option<u64>,
}

impl WaitQuery {
    /// Reads `?wait=` from a raw query, refusing anything else or a wait past the limit.
    pub fn parse(raw: Option<String>) -> Result<Self, Problem> {
        let query: Self = parse_query(raw)?;
        query.checked()
    }

    /// This wait, refused past the limit.
    pub fn checked(self) -> Result<Self, Problem> {
        if self.wait.is_some_and(|wait| wait > MAX_WAIT_SECS) {
            return Err(Problem::invalid_field(
                "wait",
                format!("must be at most {MAX_WAIT_SECS} seconds"),
            ));
        }
        Ok(self)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.wait.unwrap_or(0))
    }
}

/// The operation as the API shows it: its row, `kind` (its action), and the service it is
/// about as it stands now (absent once deleted).
pub async fn view(state: &HubState, operation: &Operation) -> Result<Value, Problem> {
    let mut value = serde_json::to_value(operation).unwrap_or_default();
    value["kind"] = json!(operation.action);
    if let Some(service_id) = operation.service_id {
        let mut connection = state.store.acquire().await?;
        if let Ok(service) = services::get(&mut connection, service_id).await {
            value["service"] = super::services::view(&service);
        }
    }
    Ok(value)
}

/// The answer to a change whose operation `id` was committed: with `?wait=`, the operation
/// once it ended (200) or as it is when the wait runs out (202); without, at once (202). Always
/// with `Location`.
pub async fn accepted(state: &HubState, id: i64, query: &WaitQuery) -> Result<Response, Problem> {
    let operation = ops::wait_for(state, id, query.duration()).await?;
    let status = if operation.state.is_finished() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let body = view(state, &operation).await?;
    Ok((
        status,
        [(header::LOCATION, format!("/api/operations/{id}"))],
        Json(body),
    )
        .into_response())
}

/// Operation `id` if `user` may see it; 404 otherwise, so others cannot probe.
async fn visible(state: &HubState, user: &User, id: i64) -> Result<Operation, Problem> {
    let not_found = || Problem::new(StatusCode::NOT_FOUND, format!("no operation {id}"));
    let mut connection = state.store.acquire().await?;
    let operation = operations::get(&mut connection, id)
        .await
        .map_err(|_| not_found())?;
    if user.role == Role::Admin || operation.user_id == Some(user.id) {
        return Ok(operation);
    }
    match operation.service_id {
        Some(service_id) => match services::get(&mut connection, service_id).await {
            Ok(service) if service.owner_id == user.id => Ok(operation),
            _ => Err(not_found()),
        },
        None => Err(not_found()),
    }
}

/// `GET /api/operations/{id}?wait=SECONDS`.
pub async fn get_one(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let query = WaitQuery::parse(raw)?;
    visible(&state, &user.0, id).await?;
    accepted(&state, id, &query).await
}

/// `GET /api/operations/{id}/events`: the operation now, then again at every change, as
/// Server-Sent Events (`event: operation`); the stream ends after the operation ended.
pub async fn events(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Response, Problem> {
    visible(&state, &user.0, id).await?;
    let changes = state.operation_events.subscribe();
    // Each turn: wait for a change of this operation (not before the first event) — or, as its
    // work may run in another hub, a second — read it, and send it if it differs from what was
    // sent; after the event of its end, stop.
    let stream = futures_util::stream::unfold(
        (state, changes, Turn::First, String::new()),
        move |(state, mut changes, mut turn, mut sent)| async move {
            loop {
                match turn {
                    Turn::Ended => return None,
                    Turn::First => {}
                    Turn::Next => loop {
                        match tokio::time::timeout(ops::REREAD_EVERY, changes.recv()).await {
                            Ok(Ok(changed)) if changed != id => continue,
                            Ok(Err(RecvError::Closed)) => return None,
                            _ => break,
                        }
                    },
                }
                let current = {
                    let mut connection = state.store.acquire().await.ok()?;
                    operations::get(&mut connection, id).await.ok()?
                };
                let body = view(&state, &current).await.unwrap_or_default().to_string();
                let next = if current.state.is_finished() {
                    Turn::Ended
                } else {
                    Turn::Next
                };
                if body == sent {
                    turn = next;
                    continue;
                }
                let event = Event::default().event("operation").data(&body);
                sent = body;
                return Some((Ok::<_, Infallible>(event), (state, changes, next, sent)));
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Where the live stream of an operation is.
enum Turn {
    /// Nothing sent yet.
    First,
    /// Waiting for the next change.
    Next,
    /// The end was sent.
    Ended,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default = "first_page")]
    page: i64,
    #[serde(default = "fifty")]
    size: i64,
}

impl Default for PageQuery {
    fn default() -> Self {
        Self {
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

/// `GET /api/services/{id}/operations?page=&size=`: the service's operations, newest first.
pub async fn of_service(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, Problem> {
    let service = super::services::owned(&state, &user.0, id).await?;
    let query: PageQuery = parse_query(raw)?;
    if !(1..=1_000_000).contains(&query.page) {
        return Err(Problem::invalid_field(
            "page",
            "must be between 1 and 1000000",
        ));
    }
    if !(1..=500).contains(&query.size) {
        return Err(Problem::invalid_field("size", "must be between 1 and 500"));
    }
    let filter = OperationFilter {
        service_id: Some(service.id),
        page: query.page,
        size: query.size,
        ..OperationFilter::default()
    };
    let mut connection = state.store.acquire().await?;
    let (items, total) = operations::list(&mut connection, &filter).await?;
    let items: Vec<Value> = items
        .iter()
        .map(|operation| {
            let mut value = serde_json::to_value(operation).unwrap_or_default();
            value["kind"] = json!(operation.action);
            value
        })
        .collect();
    Ok(Json(
        json!({"operations": items, "total": total, "page": query.page, "size": query.size}),
    ))
}
