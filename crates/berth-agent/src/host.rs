//! Facts about the host the agent runs on: name, OS, kernel, CPU, memory, load, and the disk that
//! holds the Docker data root (or `/` when that path is not visible from here).

use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;
use sysinfo::{Disks, System};

/// A snapshot of the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// OS name and version.
    pub os: String,
    /// Kernel version.
    pub kernel: String,
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_cores: usize,
    /// Memory, bytes.
    pub memory_total_bytes: u64,
    /// Memory available, bytes.
    pub memory_available_bytes: u64,
    /// Load average over 1, 5 and 15 minutes.
    pub load_average: [f64; 3],
    /// The disk holding the Docker data root.
    pub disk: DiskFacts,
}

/// Size and use of one filesystem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskFacts {
    /// The mount point measured.
    pub mount_point: String,
    /// Size, bytes.
    pub total_bytes: u64,
    /// Free, bytes.
    pub free_bytes: u64,
}

/// Reads host facts; keeps one `sysinfo` handle to refresh.
pub struct HostProbe {
    system: Mutex<System>,
}

impl HostProbe {
    /// A probe with nothing read yet.
    pub fn new() -> Result<Self, String> {
        let system = System::new().map_err(|err| format!("cannot read host facts: {err}"))?;
        Ok(Self {
            system: Mutex::new(system),
        })
    }

    /// Reads the host now. `docker_root` picks the disk to report. Blocks briefly (procfs reads).
    pub fn facts(&self, docker_root: &str) -> HostFacts {
        let mut system = self
            .system
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        system.refresh_memory();
        if system.cpus().is_empty() {
            system.refresh_cpu_all();
        }
        let load = System::load_average()
            .map(|load| [load.one, load.five, load.fifteen])
            .unwrap_or_default();
        HostFacts {
            hostname: host_name(),
            os: System::long_os_version().unwrap_or_default(),
            kernel: System::kernel_version().unwrap_or_default(),
            cpu_model: system
                .cpus()
                .first()
                .map(|cpu| cpu.brand().trim().to_owned())
                .unwrap_or_default(),
            cpu_cores: system.cpus().len().max(1),
            memory_total_bytes: system.total_memory(),
            memory_available_bytes: system.available_memory(),
            load_average: load,
            disk: disk_of(Path::new(if docker_root.is_empty() {
                "/"
            } else {
                docker_root
            })),
        }
    }
}

/// The filesystem whose mount point is the longest prefix of `path`.
fn disk_of(path: &Path) -> DiskFacts {
    let disks = Disks::new_with_refreshed_list().ok();
    let best = disks.as_ref().and_then(|disks| {
        disks
            .iter()
            .filter(|disk| path.starts_with(disk.mount_point()))
            .max_by_key(|disk| disk.mount_point().as_os_str().len())
    });
    match best {
        Some(disk) => DiskFacts {
            mount_point: disk.mount_point().display().to_string(),
            total_bytes: disk.total_space(),
            free_bytes: disk.available_space(),
        },
        None => DiskFacts {
            mount_point: path.display().to_string(),
            total_bytes: 0,
            free_bytes: 0,
        },
    }
}

/// This host's name, as the system reports it (empty when it does not).
pub fn host_name() -> String {
    System::host_name().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_memory_cpus_and_a_root_disk() {
        let facts = HostProbe::new().expect("probe").facts("/var/lib/docker");
        assert!(facts.cpu_cores >= 1);
        assert!(facts.memory_total_bytes > facts.memory_available_bytes / 2);
        assert!(facts.memory_available_bytes > 0);
        assert!(facts.disk.total_bytes > 0, "{:?}", facts.disk);
        assert!(Path::new("/var/lib/docker").starts_with(&facts.disk.mount_point));
        assert!(!facts.kernel.is_empty());
    }
}
