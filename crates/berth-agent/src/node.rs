//! A snapshot of the node — engine, host, GPUs, managed containers — and the documents built from
//! it: `/health`, `/system`, `/capabilities` and the JSON form of `/metrics`.

use std::path::Path;

use berth_docker::EngineInfo;
use serde_json::{Value, json};

use crate::config::ServerType;
use crate::gpus::GpuInventory;
use crate::host::HostFacts;
use crate::timestamp::utc_now;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Everything the node documents are made of, read at one moment.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    /// `SERVER_ID`.
    pub server_id: String,
    /// `SERVER_TYPE`.
    pub server_type: ServerType,
    /// `MAX_CONTAINERS`.
    pub max_containers: u32,
    /// Containers this agent manages.
    pub managed_total: usize,
    /// Of those, running.
    pub managed_running: usize,
    /// The engine.
    pub engine: EngineInfo,
    /// The host.
    pub host: HostFacts,
    /// The GPUs.
    pub gpus: GpuInventory,
    /// HAMi-core build dir of this host.
    pub hami_core_dir: String,
}

fn gib(bytes: u64) -> f64 {
    round2(bytes as f64 / GIB)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

impl NodeSnapshot {
    /// Running managed containers as a percentage of `MAX_CONTAINERS`.
    pub fn load_percentage(&self) -> f64 {
        self.managed_running as f64 / f64::from(self.max_containers.max(1)) * 100.0
    }

    fn disk_usage(&self) -> Value {
        let disk = &self.host.disk;
        let used = disk.total_bytes.saturating_sub(disk.free_bytes);
        let percent = if disk.total_bytes > 0 {
            round2(used as f64 / disk.total_bytes as f64 * 100.0)
        } else {
            0.0
        };
        json!({
            "path": disk.mount_point,
            "total_gb": gib(disk.total_bytes),
            "used_gb": gib(used),
            "free_gb": gib(disk.free_bytes),
            "percent": percent,
        })
    }

    fn features(&self) -> Vec<&'static str> {
        match self.server_type {
            ServerType::Cpu => vec!["basic_compute", "file_processing"],
            ServerType::Gpu => vec!["ml_training", "inference", "cuda_compute"],
            ServerType::Edge => vec!["edge_inference", "iot_processing"],
        }
    }

    /// `GET /capabilities`; also the `capabilities` of `/health`, which hubs read for placement.
    pub fn capabilities(&self) -> Value {
        let simulated = self.gpus.source == "simulated";
        json!({
            "server_id": self.server_id,
            "server_type": self.server_type,
            "max_containers": self.max_containers,
            "current_containers": self.managed_total,
            "running_containers": self.managed_running,
            "max_cpu_cores": self.host.cpu_cores,
            "max_memory_gb": gib(self.host.memory_total_bytes),
            "gpu_support": !self.gpus.devices.is_empty(),
            "gpu_count": self.gpus.devices.len(),
            "gpu_source": self.gpus.source,
            "gpu_reason": self.gpus.reason,
            "simulated": simulated,
            "gpus": self.gpus.devices,
            "hami_core_dir": self.hami_core_dir,
            "hami_core_available": Path::new(&self.hami_core_dir).join("libvgpu.so").exists(),
            "storage_driver": self.engine.storage_driver,
            "backing_filesystem": self.engine.backing_filesystem,
            "system_disk_limit_supported": self.engine.system_disk_limit_supported(),
            "features": self.features(),
        })
    }

    /// `GET /health`.
    pub fn health(&self) -> Value {
        let available_gb = gib(self.host.memory_available_bytes);
        let status = if self.managed_running as f64 >= 0.9 * f64::from(self.max_containers) {
            "warning"
        } else if available_gb < 1.0 {
            "critical"
        } else {
            "healthy"
        };
        let total = self.host.memory_total_bytes;
        let used_percent = if total > 0 {
            round2((total - self.host.memory_available_bytes) as f64 / total as f64 * 100.0)
        } else {
            0.0
        };
        json!({
            "status": status,
            "timestamp": utc_now(),
            "server_id": self.server_id,
            "server_type": self.server_type,
            "docker_version": self.engine.server_version,
            "containers": {
                "total": self.managed_total,
                "running": self.managed_running,
                "stopped": self.managed_total - self.managed_running,
                "max_allowed": self.max_containers,
            },
            "resources": {
                "cpu_cores": self.host.cpu_cores,
                "memory_total_gb": gib(total),
                "memory_available_gb": available_gb,
                "memory_usage_percent": used_percent,
                "disk_usage": self.disk_usage(),
            },
            "load_percentage": round2(self.load_percentage()),
            "capabilities": self.capabilities(),
            "uptime": "healthy",
        })
    }

    /// `GET /system`.
    pub fn system(&self) -> Value {
        json!({
            "hostname": self.host.hostname,
            "os": self.host.os,
            "kernel": self.host.kernel,
            "cpu_model": self.host.cpu_model,
            "cpu_cores": self.host.cpu_cores,
            "memory_total_gb": gib(self.host.memory_total_bytes),
            "memory_available_gb": gib(self.host.memory_available_bytes),
            "load_average": self.host.load_average,
            "disk_usage": self.disk_usage(),
            "docker_version": self.engine.server_version,
            "docker_root_dir": self.engine.docker_root_dir,
            "containers_total": self.managed_total,
            "containers_running": self.managed_running,
            "containers_stopped": self.managed_total - self.managed_running,
            "host_containers_total": self.engine.containers,
            "host_containers_running": self.engine.running,
            "images_total": self.engine.images,
        })
    }

    /// The JSON form of `/metrics` (`?format=json`), as mManager served it.
    pub fn metrics_json(&self) -> Value {
        let host = &self.host;
        let disk_used = host.disk.total_bytes.saturating_sub(host.disk.free_bytes);
        json!({
            "timestamp": utc_now(),
            "metrics": {
                "mmanager_containers_total": self.managed_total,
                "mmanager_containers_running": self.managed_running,
                "mmanager_containers_stopped": self.managed_total - self.managed_running,
                "mmanager_containers_max": self.max_containers,
                "mmanager_memory_total_bytes": host.memory_total_bytes,
                "mmanager_memory_available_bytes": host.memory_available_bytes,
                "mmanager_memory_usage_bytes": host.memory_total_bytes.saturating_sub(host.memory_available_bytes),
                "mmanager_cpu_cores": host.cpu_cores,
                "mmanager_disk_total_bytes": host.disk.total_bytes,
                "mmanager_disk_used_bytes": disk_used,
                "mmanager_load_percentage": self.load_percentage(),
                "mmanager_up": 1,
                "mmanager_info": {
                    "server_id": self.server_id,
                    "server_type": self.server_type,
                    "docker_version": self.engine.server_version,
                },
            },
        })
    }
}
