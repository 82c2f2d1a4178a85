//! The hub's Prometheus metrics: nodes by connection status, node mirrors, failovers, services
//! failing repair, node certificates' expiry, API requests and latency, and the gateway's: seed
//! 004's model metrics labelled by service, and the gateway's own errors.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use prometheus_client::registry::Registry;

use berth_gateway::metrics::ModelMetrics;
use berth_http::RequestMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// A certificate the hub holds for a node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    node: String,
    certificate: String,
}

/// Every metric the hub exports.
pub struct HubMetrics {
    registry: Registry,
    /// Requests and their latency.
    pub http: RequestMetrics,
    /// The gateway's.
    pub models: ModelMetrics,
    nodes: Family<StatusLabels, Gauge>,
    services: Family<StatusLabels, Gauge>,
    mirrors: Family<StatusLabels, Gauge>,
    mirror_differences: Gauge,
    /// Replicas the reconciler moved off down nodes.
    pub failovers: Counter,
    /// Failovers that found no node to take the replica.
    pub failovers_refused: Counter,
    failing_repairs: Gauge,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    /// Times this hub began or stopped leading.
    pub leader_changes: Counter,
    leading: Gauge,
    leader_term: Gauge,
    leader_since: Gauge,
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
        let mirrors = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "berth_hub_node_mirrors",
            "Node mirrors by state: following their node's event stream, or not (lost)",
            mirrors.clone(),
        );
        let mirror_differences = Gauge::default();
        registry.register(
            "berth_hub_node_mirror_differences",
            "Containers the mirrors' periodic re-lists found that the event streams had not reported (should stay 0)",
            mirror_differences.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "berth_hub_failovers",
            "Replicas moved off nodes declared down",
            failovers.clone(),
        );
        let failovers_refused = Counter::default();
        registry.register(
            "berth_hub_failovers_refused",
            "Failovers of a replica that no node could take",
            failovers_refused.clone(),
        );
        let failing_repairs = Gauge::default();
        registry.register(
            "berth_hub_services_failing_repair",
            "Services whose last repair by the reconciler failed (not converging to what is wanted)",
            failing_repairs.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "berth_hub_node_certificate_expiry_timestamp_seconds",
            "When the TLS certificates the hub holds for a node's Docker engine expire, Unix seconds",
            certificate_expiry.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "berth_hub_leader_changes",
            "Times this hub began or stopped leading",
            leader_changes.clone(),
        );
        let leading = Gauge::default();
        registry.register(
            "berth_hub_leader",
            "1 while this hub leads (runs the control loops), 0 while it follows",
            leading.clone(),
        );
        let leader_term = Gauge::default();
        registry.register(
            "berth_hub_leader_term",
            "The leader lease's term this hub leads in (0 alone on SQLite)",
            leader_term.clone(),
        );
        let leader_since = Gauge::default();
        registry.register(
            "berth_hub_leader_since_timestamp_seconds",
            "When the current leader's term began, Unix seconds",
            leader_since.clone(),
        );
        let models = ModelMetrics::register(&mut registry);
        Self {
            registry,
            http,
            models,
            nodes,
            services,
            mirrors,
            mirror_differences,
            failovers,
            failovers_refused,
            failing_repairs,
            certificate_expiry,
            leader_changes,
            leading,
            leader_term,
            leader_since,
        }
    }

    /// Sets the leadership gauges from `lead`.
    pub fn set_leadership(&self, lead: &crate::leadership::Lead) {
        self.leading.set(i64::from(lead.leading()));
        self.leader_term.set(lead.term.unwrap_or(0));
        self.leader_since.set(lead.since_ms / 1000);
    }

    /// Sets how many services' last repair failed.
    pub fn set_failing_repairs(&self, count: usize) {
        self.failing_repairs
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the expiry of every node certificate the hub holds: `(node, certificate, Unix
    /// seconds)`.
    pub fn set_certificate_expiry(&self, expiries: &[(String, &str, i64)]) {
        self.certificate_expiry.clear();
        for (node, certificate, at) in expiries {
            self.certificate_expiry
                .get_or_create(&CertificateLabels {
                    node: node.clone(),
                    certificate: (*certificate).to_owned(),
                })
                .set(*at);
        }
    }

    /// Sets the node mirrors' gauges: how many follow their node, how many do not, and the
    /// differences their re-lists found.
    pub fn set_mirrors(&self, following: i64, lost: i64, differences: i64) {
        for (status, count) in [("following", following), ("lost", lost)] {
            self.mirrors
                .get_or_create(&StatusLabels {
                    status: status.to_owned(),
                })
                .set(count);
        }
        self.mirror_differences.set(differences);
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
