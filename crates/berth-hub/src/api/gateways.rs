//! What gateway processes (`berth gateway --hub …`) ask a hub, with an admin's token: the route
//! table as a blocking query, the holder of a caller's token, and their traffic reported back
//! ([`berth_gateway::feed`]). A follower hub answers the first two itself and passes reports to
//! the leader, whose loops count them.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use berth_http::{Problem, parse_body, parse_query};
use berth_store::users;
use serde::Deserialize;
use serde_json::{Value, json};

use super::CurrentUser;
use crate::state::HubState;
use berth_gateway::feed::{self, CHECKED_TOKEN_HEADER, RouteSnapshot, UsageReport};

/// The longest a route query waits for a change.
pub const MAX_ROUTE_WAIT_SECS: u64 = 60;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteQuery {
    /// The revision the gateway holds: answer once the table differs from it.
    #[serde(default)]
    after: Option<String>,
    /// Seconds to wait for a change.
    #[serde(default)]
    wait: Option<u64>,
}

/// `GET /api/gateway/routes?after=REVISION&wait=SECONDS` (admin): the route table, at once when
/// it differs from `after` (or without it), else as soon as it does or `wait` passed.
pub async fn routes(
    State(state): State<Arc<HubState>>,
    user: CurrentUser,
    RawQuery(raw): RawQuery,
) -> Result<Json<RouteSnapshot>, Problem> {
    user.require_admin()?;
    let query: RouteQuery = parse_query(raw)?;
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_ROUTE_WAIT_SECS {
        return Err(Problem::invalid_field(
            "wait",
            format!("must be at most {MAX_ROUTE_WAIT_SECS} seconds"),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut changes = state.routes.watch_changes();
    loop {
        changes.mark_unchanged();
        let shown = feed::snapshot(&state.routes, state.settings().service_domain.clone());
        if query.after.as_deref() != Some(shown.revision.as_str()) {
            return Ok(Json(shown));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return Ok(Json(shown)),
        }
    }
}

/// `GET /api/gateway/bearer` (admin) with the token asked about in `X-Berth-Checked-Token`:
/// `{"bearer": …}`, its holder and the services it is limited to, or `null` when it is not a
/// valid Berth token.
pub async fn bearer(
    State(state): State<Arc<HubState>>,
    user: CurrentUser,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let token = headers
        .get(CHECKED_TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| {
            Problem::invalid_field(
                CHECKED_TOKEN_HEADER,
                "send the token to check in this header",
            )
        })?;
    let mut connection = state.store.acquire().await?;
    let bearer = users::user_for_token(&mut connection, token).await?;
    Ok(Json(json!({"bearer": bearer})))
}

/// `POST /api/gateway/usage` (admin): a gateway's traffic ([`UsageReport`]), counted as the
/// hub's own; `{"counted": N}` services it routes.
pub async fn usage(
    State(state): State<Arc<HubState>>,
    user: CurrentUser,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let report: UsageReport = parse_body(&body)?;
    if report.gateway.is_empty() || report.gateway.len() > 200 {
        return Err(Problem::invalid_field(
            "gateway",
            "name the gateway in 1 to 200 characters",
        ));
    }
    let most = u64::try_from(i64::MAX).unwrap_or(u64::MAX);
    for (index, service) in report.services.iter().enumerate() {
        for (field, value) in [
            ("requests", service.requests),
            ("last_used_ms", service.last_used_ms),
            ("prompt_tokens", service.prompt_tokens),
            ("completion_tokens", service.completion_tokens),
        ] {
            if value > most {
                return Err(Problem::invalid_field(
                    format!("services[{index}].{field}"),
                    format!("{value} is more than {most}"),
                ));
            }
        }
    }
    let counted = feed::count_report(&state.routes, &report);
    Ok(Json(json!({"counted": counted})))
}
