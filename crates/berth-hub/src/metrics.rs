//! The hub's Prometheus metrics: nodes by connection status, and API requests and latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use berth_http::RequestMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// Every metric the hub exports.
pub struct HubMetrics {
    registry: Registry,
    /// Requests and their latency.
    pub http: RequestMetrics,
    nodes: Family<StatusLabels, Gauge>,
    services: Family<StatusLabels, Gauge>,
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
        let http = RequestMetrics::register(&mut registry, "berth_hub");
        let nodes = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "berth_hub_nodes",
            "Compute nodes by Docker connection status",
            nodes.clone(),
        );
        let services = Family::<StatusLabels, Gauge>::default();
        registry.register("berth_hub_services", "Services by state", services.clone());
        Self {
            registry,
            http,
            nodes,
            services,
        }
    }

    /// Sets the node and service gauges from `(status, count)` pairs and renders everything as
    /// OpenMetrics text.
    pub fn render(
        &self,
        nodes_by_status: &[(String, i64)],
        services_by_state: &[(String, i64)],
    ) -> String {
        for (family, counts) in [
            (&self.nodes, nodes_by_status),
            (&self.services, services_by_state),
        ] {
            family.clear();
            for (status, count) in counts {
                family
                    .get_or_create(&StatusLabels {
                        status: status.clone(),
                    })
                    .set(*count);
            }
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "Encoding metrics failed.");
        }
        text
    }
}
