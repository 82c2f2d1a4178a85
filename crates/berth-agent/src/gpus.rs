//! This host's GPUs: read through NVML, loaded at run time (so the agent runs where there is no
//! NVIDIA driver, reporting why it sees none), or simulated from a declaration such as
//! `2xA100-80GB` for tests and demos, marked `simulated` wherever shown.

use std::str::FromStr;
use std::sync::Mutex;

use berth_core::gpu::GpuDeviceUsage;
use berth_docker::HostGpuView;
use nvml_wrapper::Nvml;
use serde::Serialize;

const GIB: u64 = 1024 * 1024 * 1024;

/// One GPU of the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuDevice {
    /// Index as NVML and `NVIDIA_VISIBLE_DEVICES` count.
    pub index: u32,
    /// Device UUID.
    pub uuid: String,
    /// Model name.
    pub name: String,
    /// Memory, bytes.
    pub memory_total_bytes: u64,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Compute utilisation, percent, when known.
    pub utilization_percent: Option<u32>,
    /// True for a simulated device.
    pub simulated: bool,
}

/// The GPUs of the host and where the list came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInventory {
    /// `nvml`, `simulated` or `none`.
    pub source: &'static str,
    /// The devices.
    pub devices: Vec<GpuDevice>,
    /// Why the list is empty, when it is.
    pub reason: Option<String>,
}

/// A declaration of simulated GPUs: `<count>x<model>-<memory>GB`, comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedGpus {
    models: Vec<(u32, String, u64)>,
}

impl FromStr for SimulatedGpus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = "write <count>x<model>-<memory>GB, e.g. 2xA100-80GB or 1xT4-16GB,1xL4-24GB";
        let mut models = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (count, rest) = part
                .split_once(['x', 'X'])
                .ok_or_else(|| usage.to_owned())?;
            let count: u32 = count.parse().map_err(|_| usage.to_owned())?;
            let (model, memory) = rest.rsplit_once('-').ok_or_else(|| usage.to_owned())?;
            let memory_gb: u64 = memory
                .trim_end_matches(['B', 'b'])
                .trim_end_matches(['G', 'g'])
                .parse()
                .map_err(|_| usage.to_owned())?;
            if count == 0 || count > 64 || memory_gb == 0 || model.is_empty() {
                return Err(usage.to_owned());
            }
            models.push((count, model.to_owned(), memory_gb));
        }
        if models.is_empty() {
            return Err(usage.to_owned());
        }
        Ok(Self { models })
    }
}

impl SimulatedGpus {
    /// The declared devices, numbered from 0, idle.
    pub fn devices(&self) -> Vec<GpuDevice> {
        let mut devices = Vec::new();
        for (count, model, memory_gb) in &self.models {
            for _ in 0..*count {
                let index = devices.len() as u32;
                devices.push(GpuDevice {
                    index,
                    uuid: format!("GPU-simulated-{index:04}"),
                    name: format!("{model} (simulated)"),
                    memory_total_bytes: memory_gb * GIB,
                    memory_used_bytes: 0,
                    utilization_percent: Some(0),
                    simulated: true,
                });
            }
        }
        devices
    }
}

/// Reads the host's GPUs.
pub enum GpuProbe {
    /// NVML, or the reason it could not be loaded.
    Nvml(Result<Box<Mutex<Nvml>>, String>),
    /// Simulated devices.
    Simulated(SimulatedGpus),
}

impl GpuProbe {
    /// Simulated devices when declared, else NVML (its absence is not an error).
    pub fn new(simulated: Option<SimulatedGpus>) -> Self {
        match simulated {
            Some(simulated) => GpuProbe::Simulated(simulated),
            None => GpuProbe::Nvml(Nvml::init().map(|nvml| Box::new(Mutex::new(nvml))).map_err(
                |err| format!("NVML is not available ({err}); no NVIDIA driver on this host?"),
            )),
        }
    }

    /// The current inventory. NVML calls block briefly; call from a blocking-capable context.
    pub fn inventory(&self) -> GpuInventory {
        match self {
            GpuProbe::Simulated(simulated) => GpuInventory {
                source: "simulated",
                devices: simulated.devices(),
                reason: None,
            },
            GpuProbe::Nvml(Err(reason)) => GpuInventory {
                source: "none",
                devices: Vec::new(),
                reason: Some(reason.clone()),
            },
            GpuProbe::Nvml(Ok(nvml)) => {
                let nvml = nvml.lock().unwrap_or_else(|poison| poison.into_inner());
                match read_nvml(&nvml) {
                    Ok(devices) if devices.is_empty() => GpuInventory {
                        source: "nvml",
                        devices,
                        reason: Some("NVML reports no GPU".to_owned()),
                    },
                    Ok(devices) => GpuInventory {
                        source: "nvml",
                        devices,
                        reason: None,
                    },
                    Err(err) => GpuInventory {
                        source: "nvml",
                        devices: Vec::new(),
                        reason: Some(format!("NVML query failed: {err}")),
                    },
                }
            }
        }
    }
}

fn read_nvml(nvml: &Nvml) -> Result<Vec<GpuDevice>, nvml_wrapper::error::NvmlError> {
    let count = nvml.device_count()?;
    let mut devices = Vec::with_capacity(count as usize);
    for index in 0..count {
        let device = nvml.device_by_index(index)?;
        let memory = device.memory_info()?;
        devices.push(GpuDevice {
            index,
            uuid: device.uuid()?,
            name: device.name()?,
            memory_total_bytes: memory.total,
            memory_used_bytes: memory.used,
            utilization_percent: device.utilization_rates().ok().map(|rates| rates.gpu),
            simulated: false,
        });
    }
    Ok(devices)
}

impl HostGpuView for GpuProbe {
    fn devices(&self) -> Vec<GpuDeviceUsage> {
        self.inventory()
            .devices
            .into_iter()
            .map(|device| GpuDeviceUsage {
                index: Some(device.index),
                memory_used_mib: Some(device.memory_used_bytes / (1024 * 1024)),
                memory_total_mib: device.memory_total_bytes / (1024 * 1024),
                utilization_percent: device.utilization_percent.map(f64::from),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_declarations_parse() {
        let gpus: SimulatedGpus = "2xA100-80GB, 1xT4-16G".parse().expect("valid");
        let devices = gpus.devices();
        assert_eq!(devices.len(), 3);
        assert_eq!(devices[1].index, 1);
        assert_eq!(devices[1].memory_total_bytes, 80 * GIB);
        assert_eq!(devices[2].name, "T4 (simulated)");
        assert!(devices.iter().all(|device| device.simulated));
        for bad in [
            "",
            "A100",
            "0xA100-80GB",
            "2xA100",
            "2xA100-lotsGB",
            "twoxA100-80GB",
        ] {
            assert!(
                bad.parse::<SimulatedGpus>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn a_host_without_a_driver_reports_why() {
        let probe = GpuProbe::Nvml(Err("NVML is not available".to_owned()));
        let inventory = probe.inventory();
        assert!(inventory.devices.is_empty());
        assert_eq!(inventory.source, "none");
        assert!(inventory.reason.expect("reason").contains("NVML"));
    }

    #[test]
    fn the_probe_feeds_the_driver_host_view() {
        let probe = GpuProbe::Simulated("1xL4-24GB".parse().expect("valid"));
        let view = HostGpuView::devices(&probe);
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].memory_total_mib, 24 * 1024);
    }
}
