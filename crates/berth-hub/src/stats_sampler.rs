//! Samples every running service's resource use on an interval (`stats_interval`): each
//! replica's container is asked for one stats sample through its node's client, the replicas
//! are summed, the tokens its answers used through the OpenAI-compatible front since the last
//! point are added, and the point goes into the bounded history (`berth_store::stats_history`) that
//! `GET /api/services/{id}/stats/history` and the console's charts read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_store::nodes::{self, NodeRecord};
use berth_store::stats_history::{self, Retention, StatsSample};
use berth_store::{StoreError, allocations, services};
use futures_util::StreamExt;
use serde_json::Value;

use crate::state::HubState;
use berth_gateway::metrics::ServiceLabels;

/// Services sampled at once.
const CONCURRENCY: usize = 16;

/// A whole sample read from one container's stats, whatever its source (engine, agent,
/// simulation) called the fields.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ContainerUse {
    cpu_percent: f64,
    memory_bytes: i64,
    memory_limit_bytes: i64,
    pids: i64,
    gpu_memory_bytes: Option<i64>,
    gpu_utilization_percent: Option<i64>,
}

/// Bytes from a field in bytes, or from the agent's field in MiB.
fn bytes(stats: &Value, in_bytes: &[&str], in_mib: &str) -> Option<i64> {
    in_bytes
        .iter()
        .find_map(|key| stats.get(*key).and_then(Value::as_i64))
        .or_else(|| {
            stats
                .get(in_mib)
                .and_then(Value::as_f64)
                .map(|mib| (mib * 1_048_576.0).round() as i64)
        })
}

/// One sample in any of the shapes a node answers with: the engine driver's (`memory_used_bytes`,
/// CPU in percent of one core), the agent's mManager shape (`memory_usage_mb`,
/// `cpu_usage.percent_of_one_core`, `gpu.devices[]` in MiB) and the simulation's.
fn read_use(stats: &Value) -> ContainerUse {
    let devices = stats["gpu"]["devices"].as_array();
    let gpu_memory_bytes = stats
        .get("gpu_memory_used_bytes")
        .and_then(Value::as_i64)
        .or_else(|| {
            devices.map(|devices| {
                devices
                    .iter()
                    .filter_map(|device| device["memory_used_mib"].as_i64())
                    .sum::<i64>()
                    * 1_048_576
            })
        });
    let gpu_utilization_percent = stats
        .get("gpu_utilization_percent")
        .and_then(Value::as_i64)
        .or_else(|| {
            devices.and_then(|devices| {
                devices
                    .iter()
                    .filter_map(|device| device["utilization_percent"].as_f64())
                    .map(|percent| percent.round() as i64)
                    .max()
            })
        });
    ContainerUse {
        cpu_percent: stats["cpu_usage"]["percent_of_one_core"]
            .as_f64()
            .or_else(|| stats.get("cpu_percent").and_then(Value::as_f64))
            .unwrap_or(0.0),
        memory_bytes: bytes(
            stats,
            &["memory_used_bytes", "memory_usage_bytes"],
            "memory_usage_mb",
        )
        .unwrap_or(0),
        memory_limit_bytes: bytes(stats, &["memory_limit_bytes"], "memory_limit_mb").unwrap_or(0),
        pids: stats.get("pids").and_then(Value::as_i64).unwrap_or(0),
        gpu_memory_bytes,
        gpu_utilization_percent,
    }
}

/// Sums replicas: CPU, memory, limits and PIDs add up; GPU memory adds up and GPU utilization
/// is the busiest replica's, each present when any replica reported it.
fn summed(uses: &[ContainerUse], at_ms: i64) -> StatsSample {
    let add_optional = |left: Option<i64>, right: Option<i64>| match (left, right) {
        (Some(left), Some(right)) => Some(left + right),
        (left, right) => left.or(right),
    };
    uses.iter()
        .fold(StatsSample::zero(at_ms, 0), |mut total, one| {
            total.cpu_percent += one.cpu_percent;
            total.memory_bytes += one.memory_bytes;
            total.memory_limit_bytes += one.memory_limit_bytes;
            total.pids += one.pids;
            total.gpu_memory_bytes = add_optional(total.gpu_memory_bytes, one.gpu_memory_bytes);
            total.gpu_utilization_percent = total
                .gpu_utilization_percent
                .max(one.gpu_utilization_percent);
            total
        })
}

/// The containers of one running service, with the nodes they are on.
struct Job {
    service_id: i64,
    containers: Vec<(NodeRecord, String)>,
}

/// Reads every container of `job`; those that cannot be read are left out (and logged).
async fn read_job(state: Arc<HubState>, job: Job) -> (i64, Vec<ContainerUse>) {
    let mut uses = Vec::with_capacity(job.containers.len());
    for (node, container) in job.containers {
        let read = async {
            let client = state.node_client(&node).await?;
            client.stats(&container).await
        };
        match read.await {
            Ok(stats) => uses.push(read_use(&stats)),
            Err(problem) => tracing::debug!(
                service = job.service_id,
                container = %container,
                error = problem.detail(),
                "No stats sample from a replica."
            ),
        }
    }
    (job.service_id, uses)
}

/// The containers of every running service (each replica's, or the service's own where it has
/// no replica rows).
async fn jobs(state: &HubState) -> Result<Vec<Job>, StoreError> {
    let mut connection = state.store.acquire().await?;
    let node_records: HashMap<i64, NodeRecord> = nodes::list(&mut connection)
        .await?
        .into_iter()
        .map(|node| (node.id, node))
        .collect();
    // One read of every allocation, not one per service.
    let mut replicas_of: HashMap<i64, Vec<allocations::Allocation>> = HashMap::new();
    for allocation in allocations::list(&mut connection).await? {
        replicas_of
            .entry(allocation.service_id)
            .or_default()
            .push(allocation);
    }
    let mut jobs = Vec::new();
    for service in services::list(&mut connection, None).await? {
        if service.status != "running" {
            continue;
        }
        let replicas = replicas_of.remove(&service.id).unwrap_or_default();
        let placed: Vec<(i64, String)> = if replicas.is_empty() {
            service
                .node_id
                .zip(service.container_id)
                .into_iter()
                .collect()
        } else {
            replicas
                .into_iter()
                .filter(|replica| !replica.container_id.is_empty())
                .map(|replica| (replica.node_id, replica.container_id))
                .collect()
        };
        let containers = placed
            .into_iter()
            .filter_map(|(node_id, container)| {
                node_records
                    .get(&node_id)
                    .map(|node| (node.clone(), container))
            })
            .collect();
        jobs.push(Job {
            service_id: service.id,
            containers,
        });
    }
    Ok(jobs)
}

/// Samples every running service once and compacts the history; returns the services sampled.
pub async fn sample_all(state: &Arc<HubState>) -> Result<usize, StoreError> {
    let jobs = jobs(state).await?;
    let at_ms = berth_store::now_ms();
    let read: Vec<(i64, Vec<ContainerUse>)> = futures_util::stream::iter(jobs)
        .map(|job| read_job(Arc::clone(state), job))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut transaction = state.store.begin().await?;
    let mut sampled = 0;
    let mut tokens_recorded = Vec::new();
    let gauges = &state.metrics.models.usage;
    gauges.clear();
    for (service_id, uses) in read {
        if uses.is_empty() {
            continue;
        }
        let mut sample = summed(&uses, at_ms);
        let routes = state.routes.get(service_id);
        if let Some(routes) = &routes {
            let tokens = routes.usage.unrecorded_tokens();
            (sample.prompt_tokens, sample.completion_tokens) = as_counts(tokens);
            tokens_recorded.push((Arc::clone(routes), tokens));
        }
        stats_history::record(&mut transaction, service_id, &sample).await?;
        if let Some(routes) = routes {
            let labels = ServiceLabels {
                service: format!("{}/{}", routes.owner, routes.name),
            };
            let mib = |bytes: i64| bytes as f64 / f64::from(1 << 20);
            gauges
                .cpu_percent
                .get_or_create(&labels)
                .set(sample.cpu_percent);
            gauges
                .memory_mb
                .get_or_create(&labels)
                .set(mib(sample.memory_bytes));
            if let Some(bytes) = sample.gpu_memory_bytes {
                gauges.gpu_memory_mb.get_or_create(&labels).set(mib(bytes));
            }
        }
        sampled += 1;
    }
    // Tokens of services with no replica to sample now (unloaded, stopped since) are kept too.
    for routes in state.routes.all() {
        let tokens = routes.usage.unrecorded_tokens();
        if tokens == (0, 0)
            || tokens_recorded
                .iter()
                .any(|(sampled, _)| Arc::ptr_eq(sampled, &routes))
        {
            continue;
        }
        let mut sample = StatsSample::zero(at_ms, 0);
        (sample.prompt_tokens, sample.completion_tokens) = as_counts(tokens);
        stats_history::record(&mut transaction, routes.id, &sample).await?;
        tokens_recorded.push((routes, tokens));
    }
    stats_history::compact(&mut transaction, at_ms, Retention::default()).await?;
    transaction.commit().await?;
    for (routes, tokens) in tokens_recorded {
        routes.usage.tokens_recorded(tokens);
    }
    Ok(sampled)
}

/// Token counts as the history's columns hold them.
fn as_counts((prompt, completion): (u64, u64)) -> (i64, i64) {
    let count = |tokens: u64| i64::try_from(tokens).unwrap_or(i64::MAX);
    (count(prompt), count(completion))
}

/// Samples every `stats_interval` (read again before each wait, so a reloaded configuration
/// takes effect; zero pauses sampling) until `stop` completes.
pub async fn run(state: Arc<HubState>, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let interval = state.settings().stats_interval;
        let period = if interval.is_zero() {
            Duration::from_secs(5)
        } else {
            interval
        };
        tokio::select! {
            () = tokio::time::sleep(period) => {
                if interval.is_zero() {
                    continue;
                }
                if let Err(err) = sample_all(&state).await {
                    tracing::error!(error = %err, "Sampling services' resource use failed.");
                }
            }
            () = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_source_is_read_and_replicas_add_up() {
        let engine = read_use(&json!({"cpu_percent": 50.0, "memory_used_bytes": 100,
            "memory_limit_bytes": 1000, "pids": 3}));
        let first_engine_sample = read_use(&json!({"cpu_percent": null, "memory_used_bytes": 7}));
        let simulated_gpu = read_use(&json!({"cpu_percent": 25.0, "memory_usage_bytes": 40,
            "gpu_memory_used_bytes": 1024, "gpu_utilization_percent": 40}));
        assert_eq!(first_engine_sample.cpu_percent, 0.0);
        assert_eq!(first_engine_sample.memory_bytes, 7);
        let total = summed(&[engine, simulated_gpu, first_engine_sample], 9);
        assert_eq!(total.at_ms, 9);
        assert_eq!(total.cpu_percent, 75.0);
        assert_eq!(total.memory_bytes, 147);
        assert_eq!(total.memory_limit_bytes, 1000);
        assert_eq!(total.pids, 3);
        assert_eq!(total.gpu_memory_bytes, Some(1024));
        assert_eq!(total.gpu_utilization_percent, Some(40));
        assert_eq!(summed(&[engine], 0).gpu_utilization_percent, None);

        let agent = read_use(&json!({"cpu_percent": 12.5,
            "cpu_usage": {"online_cpus": 4, "percent_of_one_core": 50.0},
            "memory_usage_mb": 1.5, "memory_limit_mb": 64.0, "pids": 2,
            "gpu": {"source": "nvidia-smi", "devices": [
                {"index": 0, "memory_used_mib": 1024, "memory_total_mib": 24576, "utilization_percent": 30.4},
                {"index": 1, "memory_used_mib": 512, "memory_total_mib": 24576, "utilization_percent": 71.6}]}}));
        assert_eq!(
            agent.cpu_percent, 50.0,
            "percent of one core, as the engine's"
        );
        assert_eq!(agent.memory_bytes, 1_572_864);
        assert_eq!(agent.memory_limit_bytes, 64 << 20);
        assert_eq!(agent.pids, 2);
        assert_eq!(agent.gpu_memory_bytes, Some(1536 << 20));
        assert_eq!(agent.gpu_utilization_percent, Some(72));
        let agent_without_gpu = read_use(&json!({"memory_usage_mb": 1.0, "gpu": null}));
        assert_eq!(agent_without_gpu.gpu_memory_bytes, None);
    }
}
