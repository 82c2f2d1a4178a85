//! The hub's Prometheus metrics: nodes by connection status, node mirrors, failovers, services
//! failing repair, node certificates' expiry, API requests and latency, and the gateway's: seed
//! 004's model metrics labelled by service, and the gateway's own errors.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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

/// A service, as `owner/name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `owner/name`.
    pub service: String,
}

/// A service and the status code of an answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    /// `owner/name`.
    pub service: String,
    /// HTTP status code.
    pub status: u16,
}

/// Why the gateway answered itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `no_route`, `unauthorized`, `stopped`, `no_ready_replica`, `upstream`, `timeout`, `load_failed`.
    pub kind: String,
}

/// Seed 004's model metrics and the gateway's own.
#[derive(Clone)]
pub struct ModelMetrics {
    /// Loads (by the API, a request, or the LRU making room) per service.
    pub load_total: Family<ServiceLabels, Counter>,
    /// Unloads per service.
    pub unload_total: Family<ServiceLabels, Counter>,
    /// Loads that failed (no room, a node refusing), per service.
    pub load_failures: Family<ServiceLabels, Counter>,
    /// 1 while a service is loaded.
    pub loaded: Family<ServiceLabels, Gauge>,
    /// Requests answered, by service and status code.
    pub requests: Family<AnswerLabels, Counter>,
    /// Time from a request's arrival to the end of its answer.
    pub duration: Family<ServiceLabels, Histogram>,
    /// Requests that found their service unloaded and started it.
    pub cold_starts: Family<ServiceLabels, Counter>,
    /// Requests being answered now.
    pub in_flight: Family<ServiceLabels, Gauge>,
    /// Answers the gateway gave itself, by reason.
    pub gateway_errors: Family<ErrorLabels, Counter>,
    /// Requests waiting for a replica with room, per service.
    pub queue_length: Family<ServiceLabels, Gauge>,
    /// How long admitted requests waited in the queue, per service.
    pub queue_wait: Family<ServiceLabels, Histogram>,
    /// Requests refused by flow control, by service and reason.
    pub rejections: Family<RejectionLabels, Counter>,
    /// Tokens the OpenAI-compatible front counted from answers' `usage`.
    pub tokens: Family<TokenLabels, Counter>,
    /// Seed 004's per-model resource gauges, from the stats sampler's latest round.
    pub usage: ModelUsage,
}

/// Seed 004's resource gauges per model service: what its running replicas used together at
/// the stats sampler's latest round (a service not sampled then has none).
#[derive(Clone, Default)]
pub struct ModelUsage {
    /// CPU in percent of one core.
    pub cpu_percent: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    /// Memory in use, MiB.
    pub memory_mb: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    /// GPU memory in use, MiB, where the node reports it.
    pub gpu_memory_mb: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
}

impl ModelUsage {
    /// Forgets every service's values before a new round sets them.
    pub fn clear(&self) {
        self.cpu_percent.clear();
        self.memory_mb.clear();
        self.gpu_memory_mb.clear();
    }
}

/// Whose tokens of which model, and which kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// `owner/name` of the service that answered.
    pub service: String,
    /// The `model` the request named.
    pub model: String,
    /// The caller's user name, or `anonymous`.
    pub user: String,
    /// `prompt` or `completion`.
    pub kind: String,
}

/// A service and why flow control refused a request of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    /// `owner/name`.
    pub service: String,
    /// `queue_full`, `queue_timeout` or `rate_limited`.
    pub reason: String,
}

impl ModelMetrics {
    /// Registers the gateway's metrics in `registry` (the hub's, or a gateway process's own).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            load_total: Family::default(),
            unload_total: Family::default(),
            load_failures: Family::default(),
            loaded: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.5, 14))
            }),
            cold_starts: Family::default(),
            in_flight: Family::default(),
            gateway_errors: Family::default(),
            queue_length: Family::default(),
            queue_wait: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.5, 14))
            }),
            rejections: Family::default(),
            tokens: Family::default(),
            usage: ModelUsage::default(),
        };
        registry.register(
            "model_load",
            "Model service loads",
            metrics.load_total.clone(),
        );
        registry.register(
            "model_unload",
            "Model service unloads (by the API, idle timeout or LRU eviction)",
            metrics.unload_total.clone(),
        );
        registry.register(
            "model_load_failures",
            "Model service loads that failed",
            metrics.load_failures.clone(),
        );
        registry.register(
            "models_loaded",
            "1 while the model service is loaded",
            metrics.loaded.clone(),
        );
        registry.register(
            "inference_requests",
            "Requests through the gateway by status code",
            metrics.requests.clone(),
        );
        registry.register(
            "inference_duration_seconds",
            "Time from a request's arrival at the gateway to the end of its answer",
            metrics.duration.clone(),
        );
        registry.register(
            "model_cold_starts",
            "Requests that found the service unloaded and started it",
            metrics.cold_starts.clone(),
        );
        registry.register(
            "inference_requests_in_flight",
            "Requests being answered now",
            metrics.in_flight.clone(),
        );
        registry.register(
            "berth_gateway_errors",
            "Answers the gateway gave itself, by reason",
            metrics.gateway_errors.clone(),
        );
        registry.register(
            "berth_gateway_queue_length",
            "Requests waiting for a replica with room (max_concurrency_per_replica)",
            metrics.queue_length.clone(),
        );
        registry.register(
            "berth_gateway_queue_wait_seconds",
            "How long requests waited in the queue before a replica took them",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "berth_gateway_rejections",
            "Requests refused by flow control: queue full (429), waited too long (503), over the caller's rate (429)",
            metrics.rejections.clone(),
        );
        registry.register(
            "berth_gateway_tokens",
            "Tokens counted from the usage of answers through the OpenAI-compatible front, by service, model, user and kind",
            metrics.tokens.clone(),
        );
        registry.register(
            "cpu_usage_percent",
            "CPU of a model service's running replicas together, percent of one core (latest stats sample)",
            metrics.usage.cpu_percent.clone(),
        );
        registry.register(
            "memory_usage_mb",
            "Memory of a model service's running replicas together, MiB (latest stats sample)",
            metrics.usage.memory_mb.clone(),
        );
        registry.register(
            "gpu_memory_mb",
            "GPU memory of a model service's running replicas together, MiB, where nodes report it",
            metrics.usage.gpu_memory_mb.clone(),
        );
        metrics
    }

    /// Counts one answer the gateway gave itself.
    pub fn gateway_error(&self, kind: &str) {
        self.gateway_errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }
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
