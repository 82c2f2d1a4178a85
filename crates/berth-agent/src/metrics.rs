//! The agent's Prometheus metrics: mManager's node gauges (`mmanager_*`), one gauge family per GPU
//! figure, and the agent's own HTTP request counters and latencies. Node gauges are set from a
//! [`NodeSnapshot`] just before each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use berth_http::RequestMetrics;

use crate::node::NodeSnapshot;

/// Content type of the text this module renders.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    server_id: String,
    server_type: String,
    docker_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    gpu: String,
    uuid: String,
    name: String,
    simulated: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the agent exports.
pub struct AgentMetrics {
    registry: Registry,
    /// Requests and their latency.
    pub http: RequestMetrics,
    containers_total: Gauge,
    containers_running: Gauge,
    containers_stopped: Gauge,
    containers_max: Gauge,
    memory_usage_bytes: Gauge,
    memory_total_bytes: Gauge,
    memory_available_bytes: Gauge,
    cpu_cores: Gauge,
    load_percentage: FloatGauge,
    memory_usage_percent: FloatGauge,
    disk_total_bytes: Gauge,
    disk_free_bytes: Gauge,
    up: Gauge,
    info: Family<InfoLabels, Gauge>,
    gpu_memory_total_bytes: Family<GpuLabels, Gauge>,
    gpu_memory_used_bytes: Family<GpuLabels, Gauge>,
    gpu_utilization_percent: Family<GpuLabels, Gauge>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http = RequestMetrics::register(&mut registry, "berth_agent");
        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let containers_total = gauge("mmanager_containers_total", "Containers this agent manages");
        let containers_running = gauge(
            "mmanager_containers_running",
            "Running containers this agent manages",
        );
        let containers_stopped = gauge(
            "mmanager_containers_stopped",
            "Stopped containers this agent manages",
        );
        let containers_max = gauge("mmanager_containers_max", "MAX_CONTAINERS");
        let memory_usage_bytes = gauge("mmanager_memory_usage_bytes", "Host memory in use");
        let memory_total_bytes = gauge("mmanager_memory_total_bytes", "Host memory");
        let memory_available_bytes =
            gauge("mmanager_memory_available_bytes", "Host memory available");
        let cpu_cores = gauge("mmanager_cpu_cores", "Logical CPUs of the host");
        let disk_total_bytes = gauge(
            "mmanager_disk_total_bytes",
            "Size of the disk holding the Docker data root",
        );
        let disk_free_bytes = gauge(
            "mmanager_disk_free_bytes",
            "Free space on the disk holding the Docker data root",
        );
        let up = gauge("mmanager_up", "1 while the agent answers");
        let load_percentage = FloatGauge::default();
        registry.register(
            "mmanager_load_percentage",
            "Running containers as a percentage of MAX_CONTAINERS",
            load_percentage.clone(),
        );
        let memory_usage_percent = FloatGauge::default();
        registry.register(
            "mmanager_memory_usage_percent",
            "Host memory in use, percent (seed 000's alerting metric)",
            memory_usage_percent.clone(),
        );
        let info = Family::<InfoLabels, Gauge>::default();
        registry.register(
            "mmanager_info",
            "Server id, type and Docker version, as labels",
            info.clone(),
        );
        let gpu_memory_total_bytes = Family::<GpuLabels, Gauge>::default();
        registry.register(
            "mmanager_gpu_memory_total_bytes",
            "GPU memory",
            gpu_memory_total_bytes.clone(),
        );
        let gpu_memory_used_bytes = Family::<GpuLabels, Gauge>::default();
        registry.register(
            "mmanager_gpu_memory_used_bytes",
            "GPU memory in use",
            gpu_memory_used_bytes.clone(),
        );
        let gpu_utilization_percent = Family::<GpuLabels, Gauge>::default();
        registry.register(
            "mmanager_gpu_utilization_percent",
            "GPU compute utilisation",
            gpu_utilization_percent.clone(),
        );
        Self {
            registry,
            http,
            containers_total,
            containers_running,
            containers_stopped,
            containers_max,
            memory_usage_bytes,
            memory_total_bytes,
            memory_available_bytes,
            cpu_cores,
            load_percentage,
            memory_usage_percent,
            disk_total_bytes,
            disk_free_bytes,
            up,
            info,
            gpu_memory_total_bytes,
            gpu_memory_used_bytes,
            gpu_utilization_percent,
        }
    }

    /// Sets the node gauges from `snapshot` and renders every metric as OpenMetrics text.
    pub fn render(&self, snapshot: &NodeSnapshot) -> String {
        let as_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.containers_total.set(snapshot.managed_total as i64);
        self.containers_running.set(snapshot.managed_running as i64);
        self.containers_stopped
            .set((snapshot.managed_total - snapshot.managed_running) as i64);
        self.containers_max.set(i64::from(snapshot.max_containers));
        let host = &snapshot.host;
        self.memory_total_bytes.set(as_i64(host.memory_total_bytes));
        self.memory_available_bytes
            .set(as_i64(host.memory_available_bytes));
        self.memory_usage_bytes.set(as_i64(
            host.memory_total_bytes
                .saturating_sub(host.memory_available_bytes),
        ));
        let used = host
            .memory_total_bytes
            .saturating_sub(host.memory_available_bytes);
        self.memory_usage_percent
            .set(if host.memory_total_bytes > 0 {
                used as f64 / host.memory_total_bytes as f64 * 100.0
            } else {
                0.0
            });
        self.cpu_cores.set(host.cpu_cores as i64);
        self.load_percentage.set(snapshot.load_percentage());
        self.disk_total_bytes.set(as_i64(host.disk.total_bytes));
        self.disk_free_bytes.set(as_i64(host.disk.free_bytes));
        self.up.set(1);
        self.info.clear();
        self.info
            .get_or_create(&InfoLabels {
                server_id: snapshot.server_id.clone(),
                server_type: snapshot.server_type.to_string(),
                docker_version: snapshot.engine.server_version.clone(),
            })
            .set(1);
        for family in [
            &self.gpu_memory_total_bytes,
            &self.gpu_memory_used_bytes,
            &self.gpu_utilization_percent,
        ] {
            family.clear();
        }
        for device in &snapshot.gpus.devices {
            let labels = GpuLabels {
                gpu: device.index.to_string(),
                uuid: device.uuid.clone(),
                name: device.name.clone(),
                simulated: device.simulated.to_string(),
            };
            self.gpu_memory_total_bytes
                .get_or_create(&labels)
                .set(as_i64(device.memory_total_bytes));
            self.gpu_memory_used_bytes
                .get_or_create(&labels)
                .set(as_i64(device.memory_used_bytes));
            if let Some(percent) = device.utilization_percent {
                self.gpu_utilization_percent
                    .get_or_create(&labels)
                    .set(i64::from(percent));
            }
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "Encoding metrics failed.");
        }
        text
    }
}
