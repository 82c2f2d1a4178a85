//! Exec inside containers, and GPU usage of a container through the fallback chain: `nvidia-smi`
//! inside the container, then the host's view of the container's visible devices, then the
//! `CUDA_DEVICE_MEMORY_LIMIT` it was given. Results are cached for 30 seconds per container.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_core::gpu::{
    ContainerGpuUsage, GpuDeviceUsage, GpuUsageSource, NVIDIA_SMI_QUERY, memory_limit_mib,
    parse_nvidia_smi_csv, visible_device_indices,
};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;
use serde::Serialize;

use crate::{DockerDriver, DriverError};

/// How long a GPU usage answer is reused.
pub const GPU_USAGE_TTL: Duration = Duration::from_secs(30);

/// The host's GPUs as the host sees them (NVML on a node agent). Implementations must be cheap
/// enough to call once per cache period.
pub trait HostGpuView: Send + Sync {
    /// Every GPU of the host with its index, memory and utilisation.
    fn devices(&self) -> Vec<GpuDeviceUsage>;
}

/// Cached GPU usage answers by container.
#[derive(Default)]
pub(crate) struct GpuUsageCache {
    entries: Mutex<HashMap<String, (Instant, Option<ContainerGpuUsage>)>>,
}

/// The result of a command run inside a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecOutput {
    /// Exit code, when the engine reports one.
    pub exit_code: Option<i64>,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl DockerDriver {
    /// Runs `argv` inside a running container and waits for it.
    pub async fn exec(&self, container: &str, argv: &[&str]) -> Result<ExecOutput, DriverError> {
        let options = CreateExecOptions {
            cmd: Some(argv.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(container, options)
            .await
            .map_err(|err| DriverError::for_container(&self.address, container, err))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|err| DriverError::for_container(&self.address, container, err))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                match chunk
                    .map_err(|err| DriverError::for_container(&self.address, container, err))?
                {
                    LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        stdout.extend_from_slice(&message)
                    }
                    LogOutput::StdIn { .. } => {}
                }
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|err| DriverError::for_container(&self.address, container, err))?;
        Ok(ExecOutput {
            exit_code: inspected.exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// GPU usage of `container`, or `None` when no source knows anything (a CPU container).
    pub async fn gpu_usage(
        &self,
        container: &str,
    ) -> Result<Option<ContainerGpuUsage>, DriverError> {
        if let Some(cached) = self.gpu_cache.fresh(container) {
            return Ok(cached);
        }
        let usage = self.read_gpu_usage(container).await?;
        self.gpu_cache.store(container, usage.clone());
        Ok(usage)
    }

    async fn read_gpu_usage(
        &self,
        container: &str,
    ) -> Result<Option<ContainerGpuUsage>, DriverError> {
        let inspected = self.inspect_raw(container).await?;
        let running = inspected
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        let has_devices = inspected
            .host_config
            .as_ref()
            .and_then(|host| host.device_requests.as_ref())
            .is_some_and(|requests| !requests.is_empty());
        let env_entries = inspected
            .config
            .and_then(|config| config.env)
            .unwrap_or_default();
        let env: HashMap<&str, &str> = env_entries
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .collect();
        let gpu_env = env.contains_key("NVIDIA_VISIBLE_DEVICES")
            || env.contains_key("CUDA_DEVICE_MEMORY_LIMIT");
        if !has_devices && !gpu_env {
            return Ok(None);
        }
        if running
            && let Ok(output) = self.exec(container, &NVIDIA_SMI_QUERY).await
            && output.exit_code == Some(0)
        {
            let devices = parse_nvidia_smi_csv(&output.stdout);
            if !devices.is_empty() {
                return Ok(Some(ContainerGpuUsage {
                    source: GpuUsageSource::ContainerSmi,
                    devices,
                }));
            }
        }
        if let (Some(view), Some(visible)) = (
            &self.host_gpus,
            env.get("NVIDIA_VISIBLE_DEVICES")
                .and_then(|value| visible_device_indices(value)),
        ) {
            let devices: Vec<GpuDeviceUsage> = view
                .devices()
                .into_iter()
                .filter(|device| device.index.is_some_and(|index| visible.contains(&index)))
                .collect();
            if !devices.is_empty() {
                return Ok(Some(ContainerGpuUsage {
                    source: GpuUsageSource::HostView,
                    devices,
                }));
            }
        }
        if let Some(limit) = env
            .get("CUDA_DEVICE_MEMORY_LIMIT")
            .and_then(|value| memory_limit_mib(value))
        {
            let device = GpuDeviceUsage {
                index: None,
                memory_used_mib: None,
                memory_total_mib: limit,
                utilization_percent: None,
            };
            return Ok(Some(ContainerGpuUsage {
                source: GpuUsageSource::EnvironmentLimit,
                devices: vec![device],
            }));
        }
        Ok(None)
    }
}

impl GpuUsageCache {
    fn fresh(&self, container: &str) -> Option<Option<ContainerGpuUsage>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        entries
            .get(container)
            .filter(|(at, _)| at.elapsed() < GPU_USAGE_TTL)
            .map(|(_, usage)| usage.clone())
    }

    fn store(&self, container: &str, usage: Option<ContainerGpuUsage>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        entries.retain(|_, (at, _)| at.elapsed() < GPU_USAGE_TTL);
        entries.insert(container.to_owned(), (Instant::now(), usage));
    }
}
