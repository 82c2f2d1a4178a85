//! The agent's shared state: configuration, the Docker driver, the mirror of its containers,
//! GPU and host probes, metrics.

use std::sync::Arc;
use std::time::Duration;

use berth_docker::mirror::{self, ContainerMirror};
use berth_docker::{DockerDriver, DockerEndpoint, GpuMode};
use bollard::models::ContainerInspectResponse;

use crate::api::Problem;
use crate::config::AgentConfig;
use crate::gpus::GpuProbe;
use crate::host::HostProbe;
use crate::metrics::AgentMetrics;
use crate::node::NodeSnapshot;
use crate::wire::{LABEL_MMANAGER_SERVER, made_by_mmanager, managed_by};

/// How often the mirror lists the engine's containers to check it missed nothing.
const MIRROR_RESYNC: Duration = Duration::from_secs(60);
/// How long the mirror waits before it lists again after its event stream broke.
const MIRROR_RETRY: Duration = Duration::from_millis(500);

/// What every request handler can reach.
pub struct AgentState {
    /// The configuration the agent started with.
    pub config: AgentConfig,
    /// The local Docker engine.
    pub driver: Arc<DockerDriver>,
    /// This agent's containers as the engine's events last described them.
    pub mirror: Arc<ContainerMirror>,
    /// Keeps the mirror following the engine while the state lives.
    follower: tokio::task::JoinHandle<()>,
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
        let driver = Arc::new(driver);
        let host = HostProbe::new()?;
        let mirror = ContainerMirror::new(scope_of(&config.server_id));
        let follower = tokio::spawn(mirror::follow(
            Arc::clone(&driver),
            Arc::clone(&mirror),
            MIRROR_RESYNC,
            MIRROR_RETRY,
        ));
        Ok(Arc::new(Self {
            config,
            driver,
            mirror,
            follower,
            gpus,
            host,
            metrics: AgentMetrics::new(),
            create_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The label filter that selects this agent's containers (and those the original mManager
    /// made under the same `SERVER_ID`; [`managed_by`] tells them apart from strangers).
    pub fn scope_label(&self) -> String {
        scope_of(&self.config.server_id)
    }

    /// Whether this agent manages `inspected`.
    pub fn manages(&self, inspected: &ContainerInspectResponse) -> bool {
        inspected
            .config
            .as_ref()
            .and_then(|config| config.labels.as_ref())
            .is_some_and(|labels| managed_by(labels, &self.config.server_id))
    }

    /// This agent's containers: from the mirror while it follows the engine, else listed and
    /// inspected now.
    pub async fn containers(&self) -> Result<Vec<Arc<ContainerInspectResponse>>, Problem> {
        if self.mirror.is_synced() {
            let mut containers = self.mirror.containers();
            containers.retain(|inspected| self.manages(inspected));
            return Ok(containers);
        }
        let mut containers = Vec::new();
        for summary in self.driver.list(&[&self.scope_label()], true).await? {
            match self.driver.inspect_raw(&summary.id).await {
                Ok(inspected) if self.manages(&inspected) => containers.push(Arc::new(inspected)),
                Ok(_) | Err(berth_docker::DriverError::ContainerNotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(containers)
    }

    /// How many of this agent's containers the original mManager made: adopted, managed like
    /// the agent's own.
    pub async fn adopted(&self) -> Result<usize, Problem> {
        Ok(self
            .containers()
            .await?
            .iter()
            .filter(|inspected| {
                inspected
                    .config
                    .as_ref()
                    .and_then(|config| config.labels.as_ref())
                    .is_some_and(made_by_mmanager)
            })
            .count())
    }

    /// Puts the container's state after this agent's own change into the mirror at once, so a
    /// read right after the change sees it (the engine's event follows).
    pub async fn refresh(&self, id: &str) {
        match self.driver.inspect_raw(id).await {
            Ok(inspected) => self.mirror.remember(inspected),
            Err(berth_docker::DriverError::ContainerNotFound { .. }) => self.mirror.forget(id),
            Err(err) => {
                tracing::debug!(container = %id, error = %err, "Could not refresh the mirror.")
            }
        }
    }

    /// Reads the node now: engine, host, GPUs and the managed containers.
    pub async fn snapshot(self: &Arc<Self>) -> Result<NodeSnapshot, Problem> {
        let engine = self.driver.engine_info().await?;
        let managed = self.containers().await?;
        let running = managed
            .iter()
            .filter(|container| status_of(container) == "running")
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

impl Drop for AgentState {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// The label filter of agent `server_id`'s containers: mManager's, which the agent puts on its
/// own too.
fn scope_of(server_id: &str) -> String {
    format!("{LABEL_MMANAGER_SERVER}={server_id}")
}

/// The Docker status of an inspected container (`running`, `exited`, …).
pub fn status_of(inspected: &ContainerInspectResponse) -> String {
    inspected
        .state
        .as_ref()
        .and_then(|state| state.status)
        .map(|status| status.to_string())
        .unwrap_or_default()
}
