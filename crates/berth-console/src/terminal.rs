//! A terminal on a replica in the browser: a page with term.js (served from the binary) and the
//! WebSocket it speaks to, which runs a shell through the API's exec (`api::exec`) as the
//! signed-in user — owner or admin, logged as `service.exec`. The WebSocket carries the session
//! cookie, so it is accepted only from a page of this console (its `Origin` is this host).

use std::sync::Arc;

use askama::Template;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_http::{Path, Problem, parse_query};
use berth_store::services::ServiceRecord;

use super::session::Visitor;
use super::{Chrome, Tr, problem_page, render};
use berth_hub::api::exec::{self, ExecQuery};
use berth_hub::api::services::owned;
use berth_hub::replicas;
use berth_hub::state::HubState;

type Shared = State<Arc<HubState>>;

#[derive(Template)]
#[template(path = "console/service_terminal.html")]
struct TerminalPage {
    t: Tr,
    chrome: Chrome,
    service: ServiceRecord,
    replicas: Vec<i64>,
    chosen: i64,
}

/// The page's replica choice.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Choice {
    #[serde(default)]
    replica: Option<i64>,
}

/// `GET /services/{id}/terminal?replica=N`.
pub async fn page(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Response {
    let loaded = async {
        let choice: Choice = parse_query(raw)?;
        let service = owned(&state, &visitor.signed.user, id).await?;
        let replicas: Vec<i64> = replicas::allocations_of(&state, id)
            .await?
            .iter()
            .map(|allocation| allocation.replica)
            .collect();
        let chosen = choice
            .replica
            .or_else(|| replicas.first().copied())
            .unwrap_or(0);
        Ok::<_, Problem>(TerminalPage {
            t: visitor.t,
            chrome: visitor.chrome("services"),
            service,
            replicas,
            chosen,
        })
    }
    .await;
    match loaded {
        Ok(page) => {
            let mut response = render(&page);
            // term.js colours its cells with style attributes.
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
                     base-uri 'none'",
                ),
            );
            response
        }
        Err(problem) => problem_page(&visitor, "services", &problem),
    }
}

/// Whether the request comes from a page of this host: its `Origin` names the `Host` it was
/// sent to (a WebSocket carries cookies, so another site's page must not open one).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
    };
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        _ => false,
    }
}

/// `GET /services/{id}/exec?replica=N` with a WebSocket upgrade: a shell in that replica.
pub async fn socket(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !same_origin(&headers) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "a terminal opens only from this console's own pages",
        )
        .into_response();
    }
    let opened = async {
        let choice: Choice = parse_query(raw)?;
        let upgrade = upgrade
            .map_err(|_| Problem::new(StatusCode::UPGRADE_REQUIRED, "connect with a WebSocket"))?;
        let service = owned(&state, &visitor.signed.user, id).await?;
        let query = ExecQuery {
            replica: choice.replica,
            command: None,
            tty: Some(true),
            cols: Some(100),
            rows: Some(30),
        };
        let opened = exec::open(&state, &visitor.signed.user, &service, &query).await?;
        Ok::<_, Problem>((upgrade, opened))
    }
    .await;
    match opened {
        Ok((upgrade, opened)) => upgrade.on_upgrade(move |socket| exec::relay(socket, opened)),
        Err(problem) => problem.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    #[test]
    fn only_this_consoles_pages_open_a_terminal() {
        assert!(same_origin(&headers(
            Some("http://hub.example:7700"),
            "hub.example:7700"
        )));
        assert!(same_origin(&headers(
            Some("https://HUB.example"),
            "hub.example"
        )));
        assert!(!same_origin(&headers(
            Some("http://evil.example"),
            "hub.example:7700"
        )));
        assert!(!same_origin(&headers(
            Some("http://hub.example:7701"),
            "hub.example:7700"
        )));
        assert!(!same_origin(&headers(None, "hub.example:7700")));
    }
}
