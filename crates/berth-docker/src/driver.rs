//! `DockerDriver`: one connected Docker engine and the container lifecycle on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use berth_core::{ByteSize, ContainerSpec};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, NetworkConnectRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    RemoveVolumeOptions, RestartContainerOptions, StopContainerOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;
use serde::Serialize;

use crate::cgroup::CgroupRoot;
use crate::error::{EngineFailure, engine_failure};
use crate::gpu_usage::{GpuUsageCache, HostGpuView};
use crate::stats::CpuSample;
use crate::translate::{GpuMode, LABEL_DATA_DISK, LABEL_DATA_VOLUME, LABEL_MANAGED, create_body};
use crate::{DockerEndpoint, DriverError};

/// A connected Docker engine.
pub struct DockerDriver {
    pub(crate) docker: Docker,
    pub(crate) address: String,
    gpu_mode: GpuMode,
    pub(crate) cpu_samples: Mutex<HashMap<String, CpuSample>>,
    pub(crate) gpu_cache: GpuUsageCache,
    pub(crate) host_gpus: Option<Arc<dyn HostGpuView>>,
    /// The host's cgroups, when the engine runs on this host and they are readable.
    pub(crate) cgroups: Option<CgroupRoot>,
    /// CPUs of the host, for CPU percentages from cgroup readings.
    pub(crate) online_cpus: u32,
    /// How long a pull may go without a step before it is given up.
    pull_inactivity: std::time::Duration,
}

impl std::fmt::Debug for DockerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerDriver")
            .field("address", &self.address)
            .field("gpu_mode", &self.gpu_mode)
            .field("host_gpus", &self.host_gpus.is_some())
            .field("cgroups", &self.cgroups.is_some())
            .finish_non_exhaustive()
    }
}

/// One step of an image pull, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullProgress {
    /// Layer id, when the step is about a layer.
    pub layer: Option<String>,
    /// `Downloading`, `Pull complete`, …
    pub status: String,
    /// Bytes done and total, when known.
    pub current: Option<i64>,
    /// Total bytes of the layer, when known.
    pub total: Option<i64>,
}

/// Registry credentials for a pull.
#[derive(Clone, PartialEq, Eq)]
pub struct PullAuth {
    /// User name.
    pub username: String,
    /// Password or token; never logged.
    pub password: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedContainer {
    /// Full container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// False when a system disk was asked for and the engine could not limit it.
    pub system_disk_applied: bool,
    /// Things the caller should know: the engine's warnings and the limits not applied.
    pub warnings: Vec<String>,
}

/// Options of a remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoveOptions {
    /// Remove even when running.
    pub force: bool,
    /// Keep the `<name>-data` volume.
    pub keep_data: bool,
}

/// What a remove did; removing what is already gone succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemoveOutcome {
    /// The container existed and was removed.
    pub container_removed: bool,
    /// The data volume existed and was removed.
    pub data_volume_removed: bool,
}

/// Whether a start or stop changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transition {
    /// The container changed state.
    Changed,
    /// It already was in the asked state.
    AlreadyThere,
}

/// A container as the engine describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerDetails {
    /// Full id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image reference as created.
    pub image: String,
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited` or `dead`.
    pub status: String,
    /// Exit code of the last run.
    pub exit_code: Option<i64>,
    /// Killed for exceeding its memory limit.
    pub oom_killed: bool,
    /// RFC 3339 start time; `None` when never started.
    pub started_at: Option<String>,
    /// RFC 3339 end time; `None` when never finished.
    pub finished_at: Option<String>,
    /// Published ports: `"7860/tcp"` → host port (empty while not running).
    pub ports: BTreeMap<String, u16>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment as `KEY=VALUE`.
    pub env: Vec<String>,
    /// How often the engine restarted it.
    pub restart_count: i64,
}

/// A line of the container list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSummary {
    /// Full id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image.
    pub image: String,
    /// `running`, `exited`, …
    pub state: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl DockerDriver {
    /// Connects to `endpoint` and agrees on an API version with the engine.
    pub async fn connect(endpoint: &DockerEndpoint) -> Result<Self, DriverError> {
        Self::connect_with(endpoint, GpuMode::Nvidia, None).await
    }

    /// Connects with a GPU mode and, where the host's GPUs can be read, a host GPU view.
    pub async fn connect_with(
        endpoint: &DockerEndpoint,
        gpu_mode: GpuMode,
        host_gpus: Option<Arc<dyn HostGpuView>>,
    ) -> Result<Self, DriverError> {
        let docker = endpoint
            .client()?
            .negotiate_version()
            .await
            .map_err(|err| DriverError::for_engine(&endpoint.address, err))?;
        Ok(Self {
            docker,
            address: endpoint.address.clone(),
            gpu_mode,
            cpu_samples: Mutex::new(HashMap::new()),
            cgroups: endpoint
                .address
                .trim()
                .starts_with("unix://")
                .then(CgroupRoot::detect)
                .flatten(),
            online_cpus: std::thread::available_parallelism().map_or(1, |cpus| cpus.get() as u32),
            gpu_cache: GpuUsageCache::default(),
            host_gpus,
            pull_inactivity: berth_core::timeouts::PULL_INACTIVITY,
        })
    }

    /// This driver with pulls given up after `quiet` without a step (instead of
    /// [`berth_core::timeouts::PULL_INACTIVITY`]).
    pub fn with_pull_inactivity(mut self, quiet: std::time::Duration) -> Self {
        self.pull_inactivity = quiet;
        self
    }

    /// The engine address this driver talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The engine's version string.
    pub async fn engine_version(&self) -> Result<String, DriverError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|err| DriverError::for_engine(&self.address, err))?;
        Ok(version.version.unwrap_or_default())
    }

    /// The engine's clock now, in Unix seconds (its `/info` time; this host's clock when the
    /// engine does not say).
    pub async fn engine_now(&self) -> Result<i64, DriverError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|err| DriverError::for_engine(&self.address, err))?;
        Ok(info
            .system_time
            .as_deref()
            .and_then(berth_core::calendar::unix_seconds_of_rfc3339)
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs() as i64)
            }))
    }

    /// True when the image is present on the node.
    pub async fn image_exists(&self, image: &str) -> Result<bool, DriverError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(err) => match engine_failure(&self.address, err) {
                EngineFailure::Status(404, _) => Ok(false),
                EngineFailure::Status(status, message) => {
                    Err(DriverError::Engine { status, message })
                }
                EngineFailure::Transport(err) => Err(err),
            },
        }
    }

    /// Pulls `image`, calling `progress` for each step the engine reports. The pull is bounded by
    /// inactivity ([`berth_core::timeouts::PULL_INACTIVITY`] without a step), not by its length.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<&PullAuth>,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<(), DriverError> {
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let credentials = auth.map(|auth| bollard::auth::DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.clone()),
            ..Default::default()
        });
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        let quiet = self.pull_inactivity;
        while let Some(step) = tokio::time::timeout(quiet, stream.next())
            .await
            .map_err(|_| DriverError::PullStalled {
                address: self.address.clone(),
                image: image.to_owned(),
                seconds: quiet.as_secs_f64(),
            })?
        {
            let step = step.map_err(|err| match engine_failure(&self.address, err) {
                EngineFailure::Status(_, message) => DriverError::ImageNotFound {
                    image: image.to_owned(),
                    message,
                },
                EngineFailure::Transport(err) => err,
            })?;
            if let Some(detail) = step.error_detail {
                return Err(DriverError::ImageNotFound {
                    image: image.to_owned(),
                    message: detail.message.unwrap_or_default(),
                });
            }
            let detail = step.progress_detail.unwrap_or_default();
            progress(PullProgress {
                layer: step.id,
                status: step.status.unwrap_or_default(),
                current: detail.current,
                total: detail.total,
            });
        }
        Ok(())
    }

    /// Creates the container of `spec` (not started): pulls the image when absent, creates the data
    /// volume, and retries once without the system disk limit when the engine cannot apply it.
    pub async fn create(
        &self,
        spec: &ContainerSpec,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<CreatedContainer, DriverError> {
        spec.validate()?;
        if !self.image_exists(&spec.image).await? {
            self.pull_image(&spec.image, None, progress).await?;
        }
        if let (Some(volume), Some(size)) = (spec.data_volume(), spec.data_disk) {
            self.create_data_volume(&volume, size).await?;
        }
        let mut warnings = Vec::new();
        let body = create_body(spec, self.gpu_mode, true)?;
        let (response, system_disk_applied) = match self.create_container(spec, body).await {
            Err(DriverError::Engine { message, .. })
                if spec.system_disk.is_some() && message.contains("storage-opt") =>
            {
                warnings.push(format!("system disk limit not applied: {message}"));
                let body = create_body(spec, self.gpu_mode, false)?;
                (self.create_container(spec, body).await?, false)
            }
            other => (other?, spec.system_disk.is_some()),
        };
        warnings.extend(response.warnings);
        if spec.data_disk.is_some() {
            warnings.push(
                "data disk size is recorded, not enforced, by the local volume driver".to_owned(),
            );
        }
        Ok(CreatedContainer {
            id: response.id,
            name: spec.name.clone(),
            system_disk_applied,
            warnings,
        })
    }

    async fn create_container(
        &self,
        spec: &ContainerSpec,
        body: ContainerCreateBody,
    ) -> Result<bollard::models::ContainerCreateResponse, DriverError> {
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        self.for_setup()
            .create_container(Some(options), body)
            .await
            .map_err(|err| match engine_failure(&self.address, err) {
                EngineFailure::Status(409, message) => DriverError::NameConflict {
                    name: spec.name.clone(),
                    message,
                },
                EngineFailure::Status(404, message) if message.contains("image") => {
                    DriverError::ImageNotFound {
                        image: spec.image.clone(),
                        message,
                    }
                }
                EngineFailure::Status(status, message) => DriverError::Engine { status, message },
                EngineFailure::Transport(err) => err,
            })
    }

    async fn create_data_volume(&self, name: &str, size: ByteSize) -> Result<(), DriverError> {
        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_DATA_DISK.to_owned(), size.to_string()),
        ]);
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        };
        self.for_setup()
            .create_volume(request)
            .await
            .map_err(|err| DriverError::for_engine(&self.address, err))?;
        Ok(())
    }

    /// Starts a container; starting a running one changes nothing.
    pub async fn start(&self, container: &str) -> Result<Transition, DriverError> {
        // The engine answers 304 for a running container, which bollard reports as success.
        if self.inspect(container).await?.status == "running" {
            return Ok(Transition::AlreadyThere);
        }
        match self.for_setup().start_container(container, None).await {
            Ok(()) => Ok(Transition::Changed),
            Err(err) => match engine_failure(&self.address, err) {
                EngineFailure::Status(404, message) => Err(DriverError::ContainerNotFound {
                    container: container.to_owned(),
                    message,
                }),
                EngineFailure::Status(_, message)
                    if message.contains("port is already allocated")
                        || message.contains("address already in use") =>
                {
                    Err(DriverError::PortInUse {
                        container: container.to_owned(),
                        message,
                    })
                }
                EngineFailure::Status(status, message) => {
                    Err(DriverError::Engine { status, message })
                }
                EngineFailure::Transport(err) => Err(err),
            },
        }
    }

    /// Stops a container, killing it after `grace_secs`; stopping a stopped one changes nothing.
    pub async fn stop(&self, container: &str, grace_secs: u32) -> Result<Transition, DriverError> {
        let status = self.inspect(container).await?.status;
        if !matches!(status.as_str(), "running" | "restarting" | "paused") {
            return Ok(Transition::AlreadyThere);
        }
        let options = StopContainerOptions {
            t: Some(clamp_secs(grace_secs)),
            signal: None,
        };
        self.for_stop(grace_secs)
            .stop_container(container, Some(options))
            .await
            .map_err(|err| DriverError::for_container(&self.address, container, err))?;
        Ok(Transition::Changed)
    }

    /// The engine client for a stop with `grace_secs` of grace: its timeout outlasts the grace
    /// (and is never shorter than the connection's own).
    fn for_stop(&self, grace_secs: u32) -> Docker {
        let timeout = berth_core::timeouts::stop(grace_secs).max(self.docker.timeout());
        self.docker.clone().with_timeout(timeout)
    }

    /// The engine client for creating or starting a container: allowed
    /// [`berth_core::timeouts::CONTAINER_SETUP`] (never less than the connection's own).
    fn for_setup(&self) -> Docker {
        let timeout = berth_core::timeouts::CONTAINER_SETUP.max(self.docker.timeout());
        self.docker.clone().with_timeout(timeout)
    }

    /// Restarts a container, stopping it with `grace_secs` first.
    pub async fn restart(&self, container: &str, grace_secs: u32) -> Result<(), DriverError> {
        let options = RestartContainerOptions {
            t: Some(clamp_secs(grace_secs)),
            signal: None,
        };
        self.for_stop(grace_secs)
            .restart_container(container, Some(options))
            .await
            .map_err(|err| DriverError::for_container(&self.address, container, err))
    }

    /// Removes a container and, unless asked to keep it, its data volume. Gone already is fine.
    pub async fn remove(
        &self,
        container: &str,
        options: RemoveOptions,
    ) -> Result<RemoveOutcome, DriverError> {
        let data_volume = match self.inspect(container).await {
            Ok(details) => details.labels.get(LABEL_DATA_VOLUME).cloned(),
            Err(DriverError::ContainerNotFound { .. }) => None,
            Err(err) => return Err(err),
        };
        let remove = RemoveContainerOptions {
            force: options.force,
            v: false,
            link: false,
        };
        let container_removed = match self
            .for_setup()
            .remove_container(container, Some(remove))
            .await
        {
            Ok(()) => true,
            Err(err) => match DriverError::for_container(&self.address, container, err) {
                DriverError::ContainerNotFound { .. } => false,
                // An earlier request (from a caller that was cut off) is removing it: wait
                // until it is gone.
                DriverError::Engine { message, .. } if message.contains("already in progress") => {
                    self.until_gone(container).await?;
                    true
                }
                err => return Err(err),
            },
        };
        self.cpu_samples
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(container);
        let mut data_volume_removed = false;
        if let Some(volume) = data_volume.filter(|_| !options.keep_data) {
            match self
                .docker
                .remove_volume(&volume, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => data_volume_removed = true,
                Err(err) => match engine_failure(&self.address, err) {
                    EngineFailure::Status(404, _) => {}
                    EngineFailure::Status(status, message) => {
                        return Err(DriverError::Engine { status, message });
                    }
                    EngineFailure::Transport(err) => return Err(err),
                },
            }
        }
        Ok(RemoveOutcome {
            container_removed,
            data_volume_removed,
        })
    }

    /// Waits until `container` no longer exists, for at most
    /// [`berth_core::timeouts::CONTAINER_SETUP`].
    async fn until_gone(&self, container: &str) -> Result<(), DriverError> {
        let deadline = tokio::time::Instant::now() + berth_core::timeouts::CONTAINER_SETUP;
        loop {
            match self.inspect(container).await {
                Err(DriverError::ContainerNotFound { .. }) => return Ok(()),
                Err(err) => return Err(err),
                Ok(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(DriverError::EngineSlow {
                        address: self.address.clone(),
                    });
                }
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    /// The engine's view of a container.
    pub async fn inspect(&self, container: &str) -> Result<ContainerDetails, DriverError> {
        let response = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|err| DriverError::for_container(&self.address, container, err))?;
        Ok(ContainerDetails::from(&response))
    }

    /// The raw inspect document, for callers that need fields the summary leaves out.
    pub async fn inspect_raw(
        &self,
        container: &str,
    ) -> Result<ContainerInspectResponse, DriverError> {
        self.docker
            .inspect_container(container, None)
            .await
            .map_err(|err| DriverError::for_container(&self.address, container, err))
    }

    /// Containers carrying every one of `labels` (`key=value`, or `key` for any value).
    pub async fn list(
        &self,
        labels: &[&str],
        all: bool,
    ) -> Result<Vec<ContainerSummary>, DriverError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            labels.iter().map(|label| (*label).to_owned()).collect(),
        )]);
        let options = ListContainersOptions {
            all,
            filters: Some(filters),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|err| DriverError::for_engine(&self.address, err))?;
        Ok(summaries
            .into_iter()
            .map(|summary| ContainerSummary {
                id: summary.id.unwrap_or_default(),
                name: summary
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                image: summary.image.unwrap_or_default(),
                state: summary
                    .state
                    .map(|state| state.to_string())
                    .unwrap_or_default(),
                labels: summary.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }
}

impl DockerDriver {
    /// Extracts a tar archive (plain, gzip, bzip2 or xz) into `dir` inside the container, running
    /// or stopped. A missing `dir` is an engine 404.
    pub async fn upload_archive(
        &self,
        container: &str,
        dir: &str,
        archive: bytes::Bytes,
    ) -> Result<(), DriverError> {
        let options = UploadToContainerOptions {
            path: dir.to_owned(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(container, Some(options), bollard::body_full(archive))
            .await
            .map_err(|err| match engine_failure(&self.address, err) {
                EngineFailure::Status(status, message) => DriverError::Engine { status, message },
                EngineFailure::Transport(err) => err,
            })
    }

    /// Connects a container to a network by name.
    pub async fn connect_network(&self, container: &str, network: &str) -> Result<(), DriverError> {
        let request = NetworkConnectRequest {
            container: container.to_owned(),
            ..Default::default()
        };
        self.docker
            .connect_network(network, request)
            .await
            .map_err(|err| DriverError::for_engine(&self.address, err))
    }
}

fn clamp_secs(secs: u32) -> i32 {
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// Docker's "never" timestamp.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The published ports of an inspected container: `"7860/tcp"` → the first binding's host
/// port (none while it is not running).
pub fn published_ports(response: &ContainerInspectResponse) -> BTreeMap<String, u16> {
    response
        .network_settings
        .as_ref()
        .and_then(|settings| settings.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|(key, bindings)| {
                    let port = bindings
                        .as_ref()?
                        .iter()
                        .find_map(|binding| binding.host_port.as_ref()?.parse::<u16>().ok())?;
                    Some((key.clone(), port))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A start or end time the engine reports, `None` for its "never".
pub fn real_time(value: Option<&String>) -> Option<String> {
    value
        .filter(|time| !time.is_empty() && *time != ZERO_TIME)
        .cloned()
}

impl From<&ContainerInspectResponse> for ContainerDetails {
    fn from(response: &ContainerInspectResponse) -> Self {
        let state = response.state.as_ref();
        let config = response.config.as_ref();
        ContainerDetails {
            id: response.id.clone().unwrap_or_default(),
            name: response
                .name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            image: config
                .and_then(|config| config.image.clone())
                .unwrap_or_default(),
            status: state
                .and_then(|state| state.status)
                .map(|status| status.to_string())
                .unwrap_or_default(),
            exit_code: state.and_then(|state| state.exit_code),
            oom_killed: state.and_then(|state| state.oom_killed).unwrap_or(false),
            started_at: real_time(state.and_then(|state| state.started_at.as_ref())),
            finished_at: real_time(state.and_then(|state| state.finished_at.as_ref())),
            ports: published_ports(response),
            labels: config
                .and_then(|config| config.labels.as_ref())
                .map(|labels| {
                    labels
                        .iter()
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            env: config
                .and_then(|config| config.env.clone())
                .unwrap_or_default(),
            restart_count: response.restart_count.unwrap_or(0),
        }
    }
}
