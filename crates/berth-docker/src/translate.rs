//! Translation of a [`ContainerSpec`] into the Docker Engine's create request.
//!
//! Pure: no engine call. Whole GPUs become `DeviceRequests` for the `nvidia` driver; a GPU memory
//! share adds HAMi-core (its build dir mounted read-only at `/libvgpu/build`, `LD_PRELOAD`,
//! `CUDA_DEVICE_MEMORY_LIMIT`, `CUDA_DEVICE_SM_LIMIT`). On a node whose GPUs are simulated the
//! environment is the same but no device is requested and no host directory is mounted.

use std::collections::HashMap;

use berth_core::spec::{GpuRequest, MountSource};
use berth_core::{ContainerSpec, SpecError};
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, PortBinding,
    RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
};

/// Label on every container and volume Berth creates.
pub const LABEL_MANAGED: &str = "berth.managed";
/// Label naming a container's data disk volume.
pub const LABEL_DATA_VOLUME: &str = "berth.data-volume";
/// Label recording the requested data disk size.
pub const LABEL_DATA_DISK: &str = "berth.data-disk";
/// Where HAMi-core's build dir is mounted inside the container.
pub const HAMI_MOUNT: &str = "/libvgpu/build";
/// The HAMi-core library preloaded into GPU-share containers.
pub const HAMI_PRELOAD: &str = "/libvgpu/build/libvgpu.so";

/// How a node provides GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuMode {
    /// Real NVIDIA GPUs through the engine's `nvidia` device driver.
    #[default]
    Nvidia,
    /// No real GPUs: same environment, no device request, no HAMi mount.
    Simulated,
}

/// Builds the create request for `spec`. `with_system_disk` is false on the retry after the
/// engine refused the `size` storage option.
pub fn create_body(
    spec: &ContainerSpec,
    gpu_mode: GpuMode,
    with_system_disk: bool,
) -> Result<ContainerCreateBody, SpecError> {
    let mut env: Vec<(String, String)> = spec
        .environment
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let mut binds: Vec<String> = spec
        .mounts()
        .into_iter()
        .map(|mount| {
            let source = match mount.source {
                MountSource::Bind(path) => path,
                MountSource::Volume(name) => name,
            };
            let mode = if mount.read_only { "ro" } else { "rw" };
            format!("{source}:{}:{mode}", mount.target)
        })
        .collect();

    let mut device_requests = Vec::new();
    let gpus = match (&spec.gpus, &spec.gpu_share) {
        (None, Some(_)) => Some(GpuRequest::Count(1)),
        (gpus, _) => gpus.clone(),
    };
    if let Some(gpus) = &gpus {
        match gpu_mode {
            GpuMode::Nvidia => device_requests.push(nvidia_request(gpus)),
            GpuMode::Simulated => {
                if let GpuRequest::Devices(devices) = gpus {
                    set_env(&mut env, "NVIDIA_VISIBLE_DEVICES", join_indices(devices));
                }
            }
        }
    }
    if let Some(share) = &spec.gpu_share {
        if gpu_mode == GpuMode::Nvidia {
            binds.push(format!("{}:{HAMI_MOUNT}:ro", share.hami_core_dir()));
        }
        set_env(&mut env, "LD_PRELOAD", HAMI_PRELOAD.to_owned());
        set_env(
            &mut env,
            "CUDA_DEVICE_MEMORY_LIMIT",
            format!("{}g", share.memory_gb),
        );
        set_env(
            &mut env,
            "CUDA_DEVICE_SM_LIMIT",
            share.effective_sm_limit().to_string(),
        );
    }

    let mut port_bindings = HashMap::new();
    let mut exposed_ports = Vec::new();
    for (container, host) in &spec.ports {
        let key = container.to_string();
        let host_port = host
            .filter(|port| *port != 0)
            .map(|port| port.to_string())
            .unwrap_or_default();
        exposed_ports.push(key.clone());
        port_bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: Some(
                    spec.ports_host_ip
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                ),
                host_port: Some(host_port),
            }]),
        );
    }

    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
    if let (Some(volume), Some(size)) = (spec.data_volume(), spec.data_disk) {
        labels.insert(LABEL_DATA_VOLUME.to_owned(), volume);
        labels.insert(LABEL_DATA_DISK.to_owned(), size.to_string());
    }

    let storage_opt = spec
        .system_disk
        .filter(|_| with_system_disk)
        .map(|size| HashMap::from([("size".to_owned(), size.docker_string())]));

    let host_config = HostConfig {
        memory: spec.memory_limit.map(|size| size.bytes_i64()),
        nano_cpus: spec.cpu_limit.map(|cores| (cores * 1e9).round() as i64),
        restart_policy: spec.restart_policy.map(restart_policy),
        binds: (!binds.is_empty()).then_some(binds),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        device_requests: (!device_requests.is_empty()).then_some(device_requests),
        storage_opt,
        network_mode: spec.network_mode.clone(),
        ..Default::default()
    };

    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec
            .command
            .as_ref()
            .map(|command| command.argv())
            .transpose()?,
        working_dir: spec.working_dir.clone(),
        env: (!env.is_empty()).then(|| {
            env.into_iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect()
        }),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    })
}

fn nvidia_request(gpus: &GpuRequest) -> DeviceRequest {
    let (count, device_ids) = match gpus {
        GpuRequest::Count(count) => (Some(i64::from(*count)), None),
        GpuRequest::Devices(devices) => (None, Some(devices.iter().map(u32::to_string).collect())),
        GpuRequest::All(_) => (Some(-1), None),
    };
    DeviceRequest {
        driver: Some("nvidia".to_owned()),
        count,
        device_ids,
        capabilities: Some(vec![vec!["gpu".to_owned()]]),
        options: None,
    }
}

fn restart_policy(policy: berth_core::spec::RestartPolicy) -> DockerRestartPolicy {
    use berth_core::spec::RestartPolicy as Policy;
    let (name, retries) = match policy {
        Policy::No => (RestartPolicyNameEnum::NO, None),
        Policy::Always => (RestartPolicyNameEnum::ALWAYS, None),
        Policy::UnlessStopped => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
        Policy::OnFailure(count) => (RestartPolicyNameEnum::ON_FAILURE, count.map(i64::from)),
    };
    DockerRestartPolicy {
        name: Some(name),
        maximum_retry_count: retries,
    }
}

fn set_env(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(existing, _)| existing != key);
    env.push((key.to_owned(), value));
}

fn join_indices(devices: &[u32]) -> String {
    devices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
