//! GPU usage of one container, and the readers for the seed's fallback sources.
//!
//! Usage comes from three places, best first: `nvidia-smi` run inside the container, the host's
//! view of the devices the container was given (`NVIDIA_VISIBLE_DEVICES`), and finally the
//! `CUDA_DEVICE_MEMORY_LIMIT` the container was started with (total memory only).

use serde::{Deserialize, Serialize};

use crate::units::ByteSize;

/// Where a GPU usage figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuUsageSource {
    /// `nvidia-smi` inside the container.
    ContainerSmi,
    /// The host's device view, filtered by the container's visible devices.
    HostView,
    /// Only the memory limit from the container's environment; no live usage.
    EnvironmentLimit,
}

/// Usage of one GPU device as seen by a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuDeviceUsage {
    /// Device index on the host, when known.
    pub index: Option<u32>,
    /// Memory in use, MiB.
    pub memory_used_mib: Option<u64>,
    /// Memory available to the container, MiB.
    pub memory_total_mib: u64,
    /// Compute utilisation, percent.
    pub utilization_percent: Option<f64>,
}

/// GPU usage of a container: its devices and the source of the figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerGpuUsage {
    /// Which fallback produced this.
    pub source: GpuUsageSource,
    /// One entry per device.
    pub devices: Vec<GpuDeviceUsage>,
}

/// The `nvidia-smi` arguments whose output [`parse_nvidia_smi_csv`] reads.
pub const NVIDIA_SMI_QUERY: [&str; 3] = [
    "nvidia-smi",
    "--query-gpu=index,memory.used,memory.total,utilization.gpu",
    "--format=csv,noheader,nounits",
];

/// Reads `index, memory.used, memory.total, utilization.gpu` lines, with or without units
/// (`MiB`, `GiB`, `%`) and with `[N/A]` for unknown values. Lines that are not GPU rows (headers,
/// blank lines, error text) are skipped.
pub fn parse_nvidia_smi_csv(text: &str) -> Vec<GpuDeviceUsage> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, used, total, utilization] = fields.as_slice() else {
                return None;
            };
            let memory_total_mib = mib_value(total)?;
            Some(GpuDeviceUsage {
                index: index.parse().ok(),
                memory_used_mib: mib_value(used),
                memory_total_mib,
                utilization_percent: utilization.trim_end_matches('%').trim().parse().ok(),
            })
        })
        .collect()
}

fn mib_value(field: &str) -> Option<u64> {
    let field = field.trim();
    if let Some(gib) = field.strip_suffix("GiB") {
        return gib
            .trim()
            .parse::<f64>()
            .ok()
            .map(|gib| (gib * 1024.0).round() as u64);
    }
    field
        .trim_end_matches("MiB")
        .trim()
        .parse::<f64>()
        .ok()
        .map(|mib| mib.round() as u64)
}

/// Device indices named by an `NVIDIA_VISIBLE_DEVICES` value. `None` when the value does not name
/// indices (`all`, `none`, `void`, UUIDs), so the caller cannot filter by it.
pub fn visible_device_indices(value: &str) -> Option<Vec<u32>> {
    let indices: Result<Vec<u32>, _> = value.split(',').map(|part| part.trim().parse()).collect();
    indices.ok().filter(|indices| !indices.is_empty())
}

/// The GPU memory limit HAMi-core enforces, read from `CUDA_DEVICE_MEMORY_LIMIT` (`8g`, `8192m`).
pub fn memory_limit_mib(value: &str) -> Option<u64> {
    let size: ByteSize = value.parse().ok()?;
    let mib = size.bytes() / (1024 * 1024);
    (mib > 0).then_some(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nounits_and_unit_rows_for_several_gpus() {
        let text = "0, 1024, 24576, 35\n1, 2048 MiB, 24 GiB, 80 %\n";
        let devices = parse_nvidia_smi_csv(text);
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].index, Some(0));
        assert_eq!(devices[0].memory_used_mib, Some(1024));
        assert_eq!(devices[0].memory_total_mib, 24576);
        assert_eq!(devices[0].utilization_percent, Some(35.0));
        assert_eq!(devices[1].memory_total_mib, 24576);
        assert_eq!(devices[1].memory_used_mib, Some(2048));
        assert_eq!(devices[1].utilization_percent, Some(80.0));
    }

    #[test]
    fn skips_headers_and_reads_not_available_as_none() {
        let text = "index, memory.used [MiB], memory.total [MiB], utilization.gpu [%]\n\
                    0, [N/A], 16384, [N/A]\nNVIDIA-SMI has failed\n";
        let devices = parse_nvidia_smi_csv(text);
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].memory_used_mib, None);
        assert_eq!(devices[0].utilization_percent, None);
        assert_eq!(devices[0].memory_total_mib, 16384);
    }

    #[test]
    fn visible_devices_only_when_they_are_indices() {
        assert_eq!(visible_device_indices("0,2"), Some(vec![0, 2]));
        assert_eq!(visible_device_indices("all"), None);
        assert_eq!(visible_device_indices("GPU-8f3a"), None);
        assert_eq!(visible_device_indices(""), None);
    }

    #[test]
    fn memory_limit_reads_hami_units() {
        assert_eq!(memory_limit_mib("8g"), Some(8192));
        assert_eq!(memory_limit_mib("512m"), Some(512));
        assert_eq!(memory_limit_mib("soon"), None);
    }
}
