//! What both APIs do around every request: count it and time it by route and status, and answer
//! unknown routes and methods in problem+json.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Problem;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// Requests served (`<prefix>_http_requests_total`) and their latency
/// (`<prefix>_http_request_duration_seconds`), by method, route template and status.
#[derive(Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
}

impl RequestMetrics {
    /// Registers both metrics in `registry` under `prefix` (e.g. `berth_hub`).
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            format!("{prefix}_http_requests"),
            "HTTP requests served, by route and status",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 4.0, 10))
        });
        registry.register(
            format!("{prefix}_http_request_duration_seconds"),
            "Time to answer an HTTP request, by route",
            durations.clone(),
        );
        Self {
            requests,
            durations,
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status: status.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        let route = RouteLabels {
            method: method.to_owned(),
            route: route.to_owned(),
        };
        self.durations.get_or_create(&route).observe(seconds);
    }

    /// Runs the rest of the stack for `request`, counts and times it; returns the response and
    /// the seconds it took.
    pub async fn measure(&self, request: Request, next: Next) -> (Response, f64) {
        let started = Instant::now();
        let method = request.method().to_string();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|path| path.as_str().to_owned())
            .unwrap_or_else(|| "unmatched".to_owned());
        let response = next.run(request).await;
        let seconds = started.elapsed().as_secs_f64();
        self.observe(&method, &route, response.status().as_u16(), seconds);
        (response, seconds)
    }
}

/// The fallback for a path no route matches.
pub async fn no_route(request: Request) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

/// The fallback for a method a route does not take.
pub async fn method_not_allowed(request: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Asserts that an OpenAPI `document` lists exactly `routes` (path, lower-case method); for the
/// tests that keep each API's document true.
pub fn assert_documents_exactly(document: &str, routes: &[(&str, &str)]) {
    let document: serde_json::Value =
        serde_json::from_str(document).expect("the OpenAPI document is JSON");
    let paths = document["paths"]
        .as_object()
        .expect("the document has paths");
    for (path, method) in routes {
        assert!(
            paths
                .get(*path)
                .and_then(|item| item.get(*method))
                .is_some(),
            "{method} {path} is not documented"
        );
    }
    let documented: usize = paths
        .values()
        .map(|item| item.as_object().map_or(0, |methods| methods.len()))
        .sum();
    assert_eq!(
        documented,
        routes.len(),
        "the document lists a route the API does not have"
    );
}
