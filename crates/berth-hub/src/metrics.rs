//! The hub's Prometheus metrics: nodes by connection status, and API requests and latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// Every metric the hub exports.
pub struct HubMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    nodes: Family<StatusLabels, Gauge>,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HubMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "berth_hub_http_requests",
            "API requests served, by route and status",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 4.0, 10))
        });
        registry.register(
            "berth_hub_http_request_duration_seconds",
            "Time to answer an API request",
            request_seconds.clone(),
        );
        let nodes = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "berth_hub_nodes",
            "Compute nodes by Docker connection status",
            nodes.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            nodes,
        }
    }

    /// Counts one answered request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
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
        self.request_seconds.get_or_create(&route).observe(seconds);
    }

    /// Sets the node gauges from `(status, count)` pairs and renders everything as OpenMetrics text.
    pub fn render(&self, nodes_by_status: &[(&str, i64)]) -> String {
        self.nodes.clear();
        for (status, count) in nodes_by_status {
            self.nodes
                .get_or_create(&StatusLabels {
                    status: (*status).to_owned(),
                })
                .set(*count);
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "Encoding metrics failed.");
        }
        text
    }
}
