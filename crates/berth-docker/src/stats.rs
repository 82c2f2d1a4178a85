//! One-shot container stats, with the CPU percentage computed against the previous sample the
//! driver kept for that container (the engine's one-shot answer carries no previous sample).
//! For an engine on this host the figures come straight from the container's cgroup files; the
//! engine's stats API is the fallback.

use bollard::models::{ContainerBlkioStatEntry, ContainerStatsResponse};
use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;
use serde::Serialize;

use crate::cgroup::{host_memory_bytes, network_bytes};
use crate::{DockerDriver, DriverError};

/// Cumulative CPU counters of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuSample {
    container_total: u64,
    system_total: u64,
    from_cgroup: bool,
}

/// Resource use of a container at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerStats {
    /// CPU use in percent of one core (200 = two cores busy); `None` on the first sample, which
    /// has nothing to compare with.
    pub cpu_percent: Option<f64>,
    /// CPUs the container can see.
    pub online_cpus: u32,
    /// Memory in use, without the page cache (as `docker stats` shows it).
    pub memory_used_bytes: u64,
    /// Memory limit (the host's memory when unlimited).
    pub memory_limit_bytes: u64,
    /// `memory_used / memory_limit` in percent.
    pub memory_percent: f64,
    /// Processes and threads.
    pub pids: u64,
    /// Bytes received over all networks.
    pub network_rx_bytes: u64,
    /// Bytes sent over all networks.
    pub network_tx_bytes: u64,
    /// Bytes read from block devices.
    pub block_read_bytes: u64,
    /// Bytes written to block devices.
    pub block_write_bytes: u64,
}

impl DockerDriver {
    /// A one-shot stats sample of `container` (its full id takes the fast cgroup path).
    pub async fn stats(&self, container: &str) -> Result<ContainerStats, DriverError> {
        if let Some(stats) = self.cgroup_stats(container) {
            return Ok(stats);
        }
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.docker.stats(container, Some(options));
        let response = match stream.next().await {
            Some(result) => {
                result.map_err(|err| DriverError::for_container(&self.address, container, err))?
            }
            None => {
                return Err(DriverError::Engine {
                    status: 500,
                    message: "the engine sent no stats sample".to_owned(),
                });
            }
        };
        let sample = cpu_sample(&response);
        let previous = self.swap_cpu_sample(container, sample);
        Ok(summarize(&response, previous, sample))
    }

    fn swap_cpu_sample(&self, container: &str, sample: Option<CpuSample>) -> Option<CpuSample> {
        let mut samples = self
            .cpu_samples
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let previous = match sample {
            Some(sample) => samples.insert(container.to_owned(), sample),
            None => samples.get(container).copied(),
        };
        previous.filter(|previous| {
            sample.is_none_or(|sample| sample.from_cgroup == previous.from_cgroup)
        })
    }

    fn cgroup_stats(&self, container: &str) -> Option<ContainerStats> {
        let cgroups = self.cgroups.as_ref()?;
        if container.len() != 64 || !container.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        let read = cgroups.sample(container, self.online_cpus)?;
        let (network_rx_bytes, network_tx_bytes) = read.first_pid.and_then(network_bytes)?;
        let sample = CpuSample {
            container_total: read.cpu_ns,
            system_total: read.capacity_ns,
            from_cgroup: true,
        };
        let previous = self.swap_cpu_sample(container, Some(sample));
        let memory_limit_bytes = read.memory_limit.unwrap_or_else(host_memory_bytes);
        Some(ContainerStats {
            cpu_percent: previous.map(|previous| cpu_percent(previous, sample, read.online_cpus)),
            online_cpus: read.online_cpus,
            memory_used_bytes: read.memory_used,
            memory_limit_bytes,
            memory_percent: if memory_limit_bytes > 0 {
                read.memory_used as f64 / memory_limit_bytes as f64 * 100.0
            } else {
                0.0
            },
            pids: read.pids,
            network_rx_bytes,
            network_tx_bytes,
            block_read_bytes: read.block_read,
            block_write_bytes: read.block_write,
        })
    }
}

fn cpu_sample(response: &ContainerStatsResponse) -> Option<CpuSample> {
    let cpu = response.cpu_stats.as_ref()?;
    Some(CpuSample {
        container_total: cpu.cpu_usage.as_ref()?.total_usage?,
        system_total: cpu.system_cpu_usage?,
        from_cgroup: false,
    })
}

fn summarize(
    response: &ContainerStatsResponse,
    previous: Option<CpuSample>,
    current: Option<CpuSample>,
) -> ContainerStats {
    let online_cpus = response
        .cpu_stats
        .as_ref()
        .and_then(|cpu| {
            cpu.online_cpus.or_else(|| {
                cpu.cpu_usage
                    .as_ref()?
                    .percpu_usage
                    .as_ref()
                    .map(|per_cpu| per_cpu.len() as u32)
            })
        })
        .unwrap_or(1)
        .max(1);
    let cpu_percent = match (previous, current) {
        (Some(previous), Some(current)) => Some(cpu_percent(previous, current, online_cpus)),
        _ => None,
    };
    let memory = response.memory_stats.clone().unwrap_or_default();
    let cache = memory.stats.as_ref().and_then(|stats| {
        stats
            .get("total_inactive_file")
            .or_else(|| stats.get("inactive_file"))
            .copied()
    });
    let memory_used_bytes = memory.usage.unwrap_or(0).saturating_sub(cache.unwrap_or(0));
    let memory_limit_bytes = memory.limit.unwrap_or(0);
    let memory_percent = if memory_limit_bytes > 0 {
        memory_used_bytes as f64 / memory_limit_bytes as f64 * 100.0
    } else {
        0.0
    };
    let (network_rx_bytes, network_tx_bytes) = response
        .networks
        .as_ref()
        .map(|networks| {
            networks.values().fold((0, 0), |(rx, tx), network| {
                (
                    rx + network.rx_bytes.unwrap_or(0),
                    tx + network.tx_bytes.unwrap_or(0),
                )
            })
        })
        .unwrap_or((0, 0));
    let block = response
        .blkio_stats
        .as_ref()
        .and_then(|blkio| blkio.io_service_bytes_recursive.as_deref());
    ContainerStats {
        cpu_percent,
        online_cpus,
        memory_used_bytes,
        memory_limit_bytes,
        memory_percent,
        pids: response
            .pids_stats
            .as_ref()
            .and_then(|pids| pids.current)
            .unwrap_or(0),
        network_rx_bytes,
        network_tx_bytes,
        block_read_bytes: block_bytes(block, "read"),
        block_write_bytes: block_bytes(block, "write"),
    }
}

fn cpu_percent(previous: CpuSample, current: CpuSample, online_cpus: u32) -> f64 {
    let container = current
        .container_total
        .saturating_sub(previous.container_total) as f64;
    let system = current.system_total.saturating_sub(previous.system_total) as f64;
    if system <= 0.0 {
        return 0.0;
    }
    container / system * f64::from(online_cpus) * 100.0
}

fn block_bytes(entries: Option<&[ContainerBlkioStatEntry]>, op: &str) -> u64 {
    entries
        .unwrap_or_default()
        .iter()
        .filter(|entry| {
            entry
                .op
                .as_deref()
                .is_some_and(|name| name.eq_ignore_ascii_case(op))
        })
        .map(|entry| entry.value.unwrap_or(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};
    use std::collections::HashMap;

    #[test]
    fn cpu_percent_scales_by_online_cpus() {
        let previous = CpuSample {
            container_total: 1_000,
            system_total: 10_000,
            from_cgroup: false,
        };
        let current = CpuSample {
            container_total: 2_000,
            system_total: 20_000,
            from_cgroup: false,
        };
        assert!((cpu_percent(previous, current, 2) - 20.0).abs() < 1e-9);
        assert_eq!(cpu_percent(current, current, 2), 0.0);
    }

    #[test]
    fn memory_leaves_out_the_page_cache() {
        let response = ContainerStatsResponse {
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(300),
                limit: Some(1_000),
                stats: Some(HashMap::from([("total_inactive_file".to_owned(), 100)])),
                ..Default::default()
            }),
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: Some(5),
                    ..Default::default()
                }),
                system_cpu_usage: Some(50),
                online_cpus: Some(4),
                ..Default::default()
            }),
            blkio_stats: Some(bollard::models::ContainerBlkioStats {
                io_service_bytes_recursive: Some(vec![
                    ContainerBlkioStatEntry {
                        op: Some("Read".into()),
                        value: Some(7),
                        ..Default::default()
                    },
                    ContainerBlkioStatEntry {
                        op: Some("write".into()),
                        value: Some(9),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let stats = summarize(&response, None, cpu_sample(&response));
        assert_eq!(stats.memory_used_bytes, 200);
        assert!((stats.memory_percent - 20.0).abs() < 1e-9);
        assert_eq!(stats.cpu_percent, None);
        assert_eq!(stats.online_cpus, 4);
        assert_eq!((stats.block_read_bytes, stats.block_write_bytes), (7, 9));
    }
}
