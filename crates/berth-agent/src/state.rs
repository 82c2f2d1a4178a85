//! The agent's shared state: configuration, the Docker driver, GPU and host probes, metrics.

use std::sync::Arc;

use berth_docker::{DockerDriver, DockerEndpoint, GpuMode};

use crate::api::Problem;
use crate::config::AgentConfig;
use crate::gpus::GpuProbe;
use crate::host::HostProbe;
use crate::metrics::AgentMetrics;
use crate::node::NodeSnapshot;
use crate::wire::LABEL_AGENT;

/// What every request handler can reach.
pub struct AgentState {
    /// The configuration the agent started with.
    pub config: AgentConfig,
    /// The local Docker engine.
    pub driver: DockerDriver,
    /// The host's GPUs.
    pub gpus: Arc<GpuProbe>,
    /// The host's facts.
    pub host: HostProbe,
    /// Prometheus metrics.
    pub metrics: AgentMetrics,
    /// Held while a create checks the container limit and creates, so two creates cannot both
    /// take the last place.
    pub create_lock: tokio::sync::Mutex<()>,
}

impl AgentState {
    /// Connects to the engine named in `config` and prepares the probes.
    pub async fn connect(config: AgentConfig) -> Result<Arc<Self>, String> {
        let gpus = Arc::new(GpuProbe::new(config.simulated_gpus.clone()));
        let gpu_mode = if config.simulated_gpus.is_some() {
            GpuMode::Simulated
        } else {
            GpuMode::Nvidia
        };
        let endpoint = DockerEndpoint {
            timeout_secs: config.docker_timeout_secs,
            ..DockerEndpoint::plain(&config.docker_host)
        };
        let driver = DockerDriver::connect_with(&endpoint, gpu_mode, Some(gpus.clone()))
            .await
            .map_err(|err| err.to_string())?;
        let host = HostProbe::new()?;
        Ok(Arc::new(Self {
            config,
            driver,
            gpus,
            host,
            metrics: AgentMetrics::new(),
            create_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The label filter that selects this agent's containers.
    pub fn scope_label(&self) -> String {
        format!("{LABEL_AGENT}={}", self.config.server_id)
    }

    /// Reads the node now: engine, host, GPUs and the managed containers.
    pub async fn snapshot(self: &Arc<Self>) -> Result<NodeSnapshot, Problem> {
        let engine = self.driver.engine_info().await?;
        let managed = self.driver.list(&[&self.scope_label()], true).await?;
        let running = managed
            .iter()
            .filter(|container| container.state == "running")
            .count();
        let probe = Arc::clone(self);
        let root = engine.docker_root_dir.clone();
        let (host, gpus) =
            tokio::task::spawn_blocking(move || (probe.host.facts(&root), probe.gpus.inventory()))
                .await
                .map_err(|err| {
                    Problem::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        err.to_string(),
                    )
                })?;
        Ok(NodeSnapshot {
            server_id: self.config.server_id.clone(),
            server_type: self.config.server_type,
            max_containers: self.config.max_containers,
            managed_total: managed.len(),
            managed_running: running,
            engine,
            host,
            gpus,
            hami_core_dir: self.config.hami_core_dir.clone(),
        })
    }
}
