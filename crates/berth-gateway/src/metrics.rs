//! The gateway's Prometheus metrics: seed 004's model metrics labelled by service (loads,
//! requests, durations, cold starts, resource gauges) and the gateway's own (errors, queues,
//! rejections, tokens). The hub registers them beside its own; a gateway process alone.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
