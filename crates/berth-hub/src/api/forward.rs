//! A follower's changes go to the leader. Among hubs elected on PostgreSQL only the leader
//! writes ([`crate::leadership`]); a follower passes every request that may change something
//! (any method but GET, HEAD and OPTIONS, on the API and the console alike) to the leader's
//! API as it came — headers, credentials and body — and streams the leader's answer back, so a
//! client or a load balancer may use any hub. A request already forwarded once is never
//! forwarded again: a hub that lost the lease meanwhile answers it itself (fenced, a 503).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_http::Problem;

use crate::state::HubState;
use berth_gateway::forward::HOP_BY_HOP;

/// Marks a request a follower forwarded.
const FORWARDED_MARK: &str = "x-berth-forwarded-by";

/// The largest body a follower forwards.
const MAX_FORWARDED_BODY: usize = 64 << 20;

/// Whether a header is passed on: not one of a single connection (the gateway's list, RFC 9110
/// §7.6.1) nor one the HTTP client sets again.
fn passes(name: &HeaderName) -> bool {
    let name = name.as_str();
    !(HOP_BY_HOP.contains(&name)
        || matches!(
            name,
            "transfer-encoding" | "upgrade" | "host" | "content-length"
        ))
}

/// Serves `request` here, or at the leader when this hub follows and it may change something.
pub async fn to_leader(
    State(state): State<Arc<HubState>>,
    request: Request,
    next: Next,
) -> Response {
    let reads = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if reads || request.headers().contains_key(FORWARDED_MARK) {
        return next.run(request).await;
    }
    // Read under the borrow; the leader's URL is taken out only to forward.
    let follows = {
        let lead = state.leadership.borrow();
        (lead.elected && !lead.leading()).then(|| lead.leader_url.clone())
    };
    let Some(leader_url) = follows else {
        return next.run(request).await;
    };
    let Some(leader) = leader_url else {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no hub leads at this moment (one is being elected); nothing was changed, try again",
        )
        .retry_after(1)
        .into_response();
    };
    forward(&state, &leader, request).await
}

async fn forward(state: &HubState, leader: &str, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_FORWARDED_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {} MiB", MAX_FORWARDED_BODY >> 20),
            )
            .into_response();
        }
    };
    let target = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut outgoing = state
        .leader_http
        .request(parts.method.clone(), format!("{leader}{target}"))
        .body(body);
    for (name, value) in parts.headers.iter().filter(|(name, _)| passes(name)) {
        outgoing = outgoing.header(name, value);
    }
    outgoing = outgoing.header(FORWARDED_MARK, state.store.fence().holder());
    match outgoing.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers().iter().filter(|(name, _)| passes(name)) {
                response = response.header(name, value);
            }
            response
                .body(Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|err| {
                    Problem::new(StatusCode::BAD_GATEWAY, err.to_string()).into_response()
                })
        }
        Err(err) => Problem::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "the leading hub at {leader} did not take the change ({err}); if it stopped, another hub leads within seconds: try again"
            ),
        )
        .retry_after(1)
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn connection_headers_stay_and_the_rest_passes() {
        assert!(!passes(&header::CONNECTION));
        assert!(!passes(&header::HOST));
        assert!(passes(&header::AUTHORIZATION));
        assert!(passes(&header::COOKIE));
    }
}
