//! The scheduler's view of the hub: a cluster snapshot from the node table (declared and observed
//! hardware, connection status, the failure detector) and the allocations, the request a service
//! definition makes, and the allocation row a placement becomes. Creates place on a
//! [`PlacementCache`]: the snapshot kept in memory and updated by each create's placements,
//! read again from the database when something else changed placements or nodes, or when it is
//! a second old (observed hardware moves on).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use berth_core::ByteSize;
use berth_core::schedule::{
    Cluster, GpuAssignment, GpuDemand, GpuState, NodeState, Options, Placement, Refusal, Request,
    Resources, ServerType,
};
use berth_http::Problem;
use berth_store::StoreError;
use berth_store::allocations::{self, Allocation, ReplicaRef};
use berth_store::nodes::{self, NodeRecord};
use serde_json::Value;

use crate::service_definition::ServiceDefinition;
use crate::state::HubState;

const GIB: u64 = 1 << 30;
/// Capacity of a dimension the node neither declares nor reports: never the short one.
const UNKNOWN_CAPACITY: u64 = u64::MAX / 4;

/// The leading number of a declared size like `"32核"`, `"32 cores"` or `"2.5"`.
fn leading_number(text: &str) -> Option<f64> {
    let digits: String = text
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok().filter(|value: &f64| *value > 0.0)
}

/// A declared size: Docker units (`"128GB"`, `"2Ti"`), or a bare number of GiB.
fn declared_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    text.parse::<ByteSize>()
        .ok()
        .map(|size| size.bytes())
        .filter(|bytes| *bytes >= GIB)
        .or_else(|| leading_number(text).map(|gib| (gib * GIB as f64) as u64))
}

fn observed_u64(observed: &Value, key: &str) -> Option<u64> {
    observed[key]
        .as_u64()
        .or_else(|| observed[key].as_f64().map(|value| value as u64))
        .filter(|value| *value > 0)
}

/// What `node` has: reported by the node when it did, else as declared, else unbounded.
pub fn capacity(node: &NodeRecord) -> Resources {
    let observed = &node.observed;
    let cpu_millis = observed_u64(observed, "cpu_cores")
        .map(|cores| cores * 1000)
        .or_else(|| leading_number(&node.cpu).map(|cores| (cores * 1000.0) as u64))
        .unwrap_or(UNKNOWN_CAPACITY);
    let memory_bytes = observed_u64(observed, "memory_bytes")
        .or_else(|| {
            observed["memory_gb"]
                .as_f64()
                .filter(|gb| *gb > 0.0)
                .map(|gb| (gb * GIB as f64) as u64)
        })
        .or_else(|| declared_bytes(&node.memory))
        .unwrap_or(UNKNOWN_CAPACITY);
    let disk_bytes = match (
        declared_bytes(&node.system_disk),
        declared_bytes(&node.data_disk),
    ) {
        (None, None) => UNKNOWN_CAPACITY,
        (system, data) => system.unwrap_or(0) + data.unwrap_or(0),
    };
    Resources {
        cpu_millis,
        memory_bytes,
        disk_bytes,
    }
}

/// The node's GPUs: as reported (with what was free), else as declared.
fn gpus(node: &NodeRecord) -> Vec<GpuState> {
    if let Some(reported) = node.observed["gpus"]
        .as_array()
        .filter(|gpus| !gpus.is_empty())
    {
        return reported
            .iter()
            .enumerate()
            .map(|(position, gpu)| {
                let total = gpu["memory_total_bytes"].as_u64().unwrap_or(0);
                let used = gpu["memory_used_bytes"].as_u64();
                GpuState {
                    index: gpu["index"]
                        .as_u64()
                        .and_then(|index| u32::try_from(index).ok())
                        .unwrap_or(position as u32),
                    memory_bytes: total,
                    whole_tenant: false,
                    sliced_bytes: 0,
                    observed_free_bytes: used.map(|used| total.saturating_sub(used)),
                }
            })
            .collect();
    }
    let memory = u64::try_from(node.gpu_memory_gb).unwrap_or(0) * GIB;
    (0..u32::try_from(node.gpu_count).unwrap_or(0))
        .map(|index| GpuState {
            index,
            memory_bytes: memory,
            whole_tenant: false,
            sliced_bytes: 0,
            observed_free_bytes: None,
        })
        .collect()
}

/// The scheduler's view of `node` before its allocations are counted.
fn node_state(node: &NodeRecord, down: bool, default_max_containers: u32) -> NodeState {
    NodeState {
        id: node.id,
        name: node.name.clone(),
        server_type: ServerType::parse(&node.server_type).unwrap_or(ServerType::Cpu),
        enabled: node.enabled,
        listed: node.listed,
        healthy: node.docker_status == "connected" && !down,
        priority: node.priority,
        weight: u32::try_from(node.weight.max(1)).unwrap_or(100),
        labels: node.labels.clone(),
        capacity: capacity(node),
        allocated: Resources::default(),
        max_containers: node.observed["max_containers"]
            .as_u64()
            .and_then(|max| u32::try_from(max).ok())
            .unwrap_or(default_max_containers),
        containers: 0,
        gpus: gpus(node),
    }
}

/// Counts `allocation` on its node's state.
fn count(node: &mut NodeState, allocation: &Allocation) {
    let as_u64 = |value: i64| u64::try_from(value).unwrap_or(0);
    node.allocated.cpu_millis += as_u64(allocation.cpu_millis);
    node.allocated.memory_bytes += as_u64(allocation.memory_bytes);
    node.allocated.disk_bytes += as_u64(allocation.disk_bytes);
    node.containers += 1;
    for gpu in &mut node.gpus {
        if !allocation.gpu_indices.contains(&gpu.index) {
            continue;
        }
        if allocation.gpu_memory_bytes > 0 {
            gpu.sliced_bytes += as_u64(allocation.gpu_memory_bytes);
        } else {
            gpu.whole_tenant = true;
        }
    }
}

/// The cluster as the scheduler sees it: nodes with their allocations counted.
pub fn cluster(
    nodes: &[NodeRecord],
    allocations: &[Allocation],
    down: &dyn Fn(i64) -> bool,
    default_max_containers: u32,
) -> Cluster {
    let mut states: HashMap<i64, NodeState> = nodes
        .iter()
        .map(|node| {
            (
                node.id,
                node_state(node, down(node.id), default_max_containers),
            )
        })
        .collect();
    for allocation in allocations {
        if let Some(node) = states.get_mut(&allocation.node_id) {
            count(node, allocation);
        }
    }
    Cluster::new(states.into_values().collect())
}

/// The nodes and the cluster snapshot, read now.
pub async fn snapshot(state: &HubState) -> Result<(Vec<NodeRecord>, Cluster), StoreError> {
    let mut connection = state.store.acquire().await?;
    let all = nodes::list(&mut connection).await?;
    let placed = allocations::list(&mut connection).await?;
    let cluster = cluster(
        &all,
        &placed,
        &|node| state.is_down(node),
        state.settings().default_max_containers,
    );
    Ok((all, cluster))
}

/// How old the creates' snapshot may get before it is read again from the database.
pub const PLACEMENT_CACHE_AGE: Duration = Duration::from_secs(1);

/// The snapshot creates place on, between creates.
pub struct PlacementCache {
    /// The nodes it was read with.
    pub nodes: Vec<NodeRecord>,
    /// The cluster, with every create's placements since committed.
    pub cluster: Cluster,
    version: u64,
    read_at: Instant,
}

impl PlacementCache {
    /// The snapshot in `slot`, read again first when placements changed elsewhere since, or it
    /// is older than [`PLACEMENT_CACHE_AGE`].
    pub async fn current<'a>(
        state: &HubState,
        slot: &'a mut Option<PlacementCache>,
    ) -> Result<&'a mut PlacementCache, StoreError> {
        let version = state.placements_version();
        let fresh = slot.as_ref().is_some_and(|cache| {
            cache.version == version && cache.read_at.elapsed() < PLACEMENT_CACHE_AGE
        });
        if !fresh {
            let (nodes, cluster) = snapshot(state).await?;
            *slot = Some(PlacementCache {
                nodes,
                cluster,
                version,
                read_at: Instant::now(),
            });
        }
        match slot {
            Some(cache) => Ok(cache),
            None => Err(StoreError::NotFound("no snapshot".to_owned())),
        }
    }
}

/// Places `count` replicas of `request` on the creates' snapshot in `slot` and commits them to
/// it: replica number, placement, node. A refusal forgets the snapshot (the replicas placed
/// before it are not to count).
pub async fn place_cached(
    state: &HubState,
    slot: &mut Option<PlacementCache>,
    request: &Request,
    count: i64,
) -> Result<Vec<(i64, Placement, NodeRecord)>, Problem> {
    let options = state.scheduler_options();
    let cache = PlacementCache::current(state, slot).await?;
    let placed = place_all(&mut cache.cluster, &cache.nodes, request, count, &options);
    if placed.is_err() {
        *slot = None;
    }
    placed
}

/// Places `count` replicas of `request` on `cluster`, committing each: replica number,
/// placement, node. A refusal names the replica when there are several.
pub fn place_all(
    cluster: &mut Cluster,
    nodes: &[NodeRecord],
    request: &Request,
    count: i64,
    options: &Options,
) -> Result<Vec<(i64, Placement, NodeRecord)>, Problem> {
    (0..count)
        .map(|replica| {
            let which = if count > 1 {
                format!("replica {replica} of {count}: ")
            } else {
                String::new()
            };
            place_and_commit(cluster, nodes, request, None, options, &which)
                .map(|(placement, node)| (replica, placement, node))
        })
        .collect()
}

/// Places `request` on `cluster` — on `preferred` when it fits there — and commits it to the
/// snapshot, so that the next placement sees it; the placement and its node's record. A refusal
/// is a 409 (the cluster has no room now) whose detail starts with `which` (e.g.
/// `replica 3 of 5: `).
pub fn place_and_commit(
    cluster: &mut Cluster,
    nodes: &[NodeRecord],
    request: &Request,
    preferred: Option<i64>,
    options: &Options,
    which: &str,
) -> Result<(Placement, NodeRecord), Problem> {
    let unavailable =
        |refusal: Refusal| Problem::new(StatusCode::CONFLICT, format!("{which}{refusal}"));
    let on_preferred = preferred.and_then(|node| {
        let only_there = Request {
            only_node: Some(node),
            ..request.clone()
        };
        cluster.place(&only_there, options).ok()
    });
    let placement = match on_preferred {
        Some(placement) => placement,
        None => cluster.place(request, options).map_err(unavailable)?,
    };
    cluster.commit(request, &placement).map_err(unavailable)?;
    let node = nodes
        .iter()
        .find(|node| node.id == placement.node_id)
        .cloned()
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                "the chosen node was removed meanwhile",
            )
        })?;
    Ok((placement, node))
}

/// What a service of `definition` asks of a node.
pub fn request_for(definition: &ServiceDefinition) -> Request {
    let as_u64 = |value: i64| u64::try_from(value).unwrap_or(0);
    let gpu = match (definition.gpu_share_gb, definition.gpu_count) {
        (Some(gb), _) => GpuDemand::Slice(as_u64(gb) * GIB),
        (None, count) if count > 0 => GpuDemand::Whole(u32::try_from(count).unwrap_or(u32::MAX)),
        _ => GpuDemand::None,
    };
    Request {
        resources: Resources {
            cpu_millis: as_u64(definition.cpu_millis),
            memory_bytes: as_u64(definition.memory_bytes),
            disk_bytes: as_u64(definition.system_disk_bytes.unwrap_or(0))
                + as_u64(definition.data_disk_bytes.unwrap_or(0)),
        },
        gpu,
        constraints: definition.constraints.clone(),
        gpu_index: definition.gpu_index,
        gpu_choice: definition.gpu_choice,
        ..Request::default()
    }
}

/// The allocation row of `placement` for `replica`.
pub fn allocation_for(
    replica: ReplicaRef,
    request: &Request,
    placement: &Placement,
    name: &str,
) -> Allocation {
    let as_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let (gpu_indices, gpu_memory_bytes) = match &placement.gpus {
        GpuAssignment::None => (Vec::new(), 0),
        GpuAssignment::Whole(indices) => (indices.clone(), 0),
        GpuAssignment::Slice {
            index,
            memory_bytes,
        } => (vec![*index], as_i64(*memory_bytes)),
    };
    Allocation {
        id: 0,
        service_id: replica.service_id,
        replica: replica.replica,
        node_id: placement.node_id,
        generation: replica.generation,
        container_id: String::new(),
        name: name.to_owned(),
        status: "creating".to_owned(),
        cpu_millis: as_i64(request.resources.cpu_millis),
        memory_bytes: as_i64(request.resources.memory_bytes),
        disk_bytes: as_i64(request.resources.disk_bytes),
        gpu_indices,
        gpu_memory_bytes,
        created_at: 0,
    }
}

/// What an allocation takes, as the request it was placed for.
pub fn request_of(allocation: &Allocation) -> Request {
    let as_u64 = |value: i64| u64::try_from(value).unwrap_or(0);
    let gpu = match assignment_of(allocation) {
        GpuAssignment::None => GpuDemand::None,
        GpuAssignment::Whole(indices) => GpuDemand::Whole(indices.len() as u32),
        GpuAssignment::Slice { memory_bytes, .. } => GpuDemand::Slice(memory_bytes),
    };
    Request {
        resources: Resources {
            cpu_millis: as_u64(allocation.cpu_millis),
            memory_bytes: as_u64(allocation.memory_bytes),
            disk_bytes: as_u64(allocation.disk_bytes),
        },
        gpu,
        ..Request::default()
    }
}

/// The GPUs an allocation holds, as a placement.
pub fn assignment_of(allocation: &Allocation) -> GpuAssignment {
    match (
        allocation.gpu_indices.as_slice(),
        allocation.gpu_memory_bytes,
    ) {
        ([], _) => GpuAssignment::None,
        ([index], memory) if memory > 0 => GpuAssignment::Slice {
            index: *index,
            memory_bytes: u64::try_from(memory).unwrap_or(0),
        },
        (indices, _) => GpuAssignment::Whole(indices.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(id: i64) -> NodeRecord {
        let mut node = NodeRecord::new(&format!("n{id}"), "agent");
        node.id = id;
        node.docker_status = "connected".to_owned();
        node
    }

    #[test]
    fn capacity_prefers_what_the_node_reported_then_what_was_declared() {
        let mut declared = node(1);
        declared.cpu = "32核".into();
        declared.memory = "128GB".into();
        declared.data_disk = "2T".into();
        let capacity = capacity(&declared);
        assert_eq!(capacity.cpu_millis, 32_000);
        assert_eq!(capacity.memory_bytes, 128 * GIB);
        assert_eq!(capacity.disk_bytes, 2048 * GIB);
        declared.observed = json!({"cpu_cores": 8, "memory_gb": 15.5});
        let reported = super::capacity(&declared);
        assert_eq!(reported.cpu_millis, 8000);
        assert_eq!(reported.memory_bytes, (15.5 * GIB as f64) as u64);
        assert_eq!(super::capacity(&node(2)).cpu_millis, UNKNOWN_CAPACITY);
    }

    #[test]
    fn allocations_count_against_their_node_and_gpu() {
        let mut gpu_node = node(1);
        gpu_node.server_type = "gpu".into();
        gpu_node.observed = json!({"gpus": [
            {"index": 0, "memory_total_bytes": 80 * GIB, "memory_used_bytes": 10 * GIB},
            {"index": 1, "memory_total_bytes": 80 * GIB, "memory_used_bytes": 0},
        ], "max_containers": 7});
        let slice = Allocation {
            id: 1,
            service_id: 1,
            replica: 0,
            node_id: 1,
            generation: 1,
            container_id: "c".into(),
            name: "a".into(),
            status: "running".into(),
            cpu_millis: 1000,
            memory_bytes: GIB as i64,
            disk_bytes: 0,
            gpu_indices: vec![0],
            gpu_memory_bytes: 20 * GIB as i64,
            created_at: 0,
        };
        let whole = Allocation {
            id: 2,
            service_id: 2,
            gpu_indices: vec![1],
            gpu_memory_bytes: 0,
            ..slice.clone()
        };
        let cluster = cluster(
            &[gpu_node],
            &[slice.clone(), whole.clone()],
            &|_| false,
            100,
        );
        let state = cluster.node(1).expect("node");
        assert_eq!(state.containers, 2);
        assert_eq!(state.max_containers, 7);
        assert_eq!(state.allocated.cpu_millis, 2000);
        assert_eq!(state.gpus[0].sliced_bytes, 20 * GIB);
        assert_eq!(state.gpus[0].free_bytes(), 60 * GIB);
        assert!(state.gpus[1].whole_tenant);
        assert_eq!(
            assignment_of(&slice),
            GpuAssignment::Slice {
                index: 0,
                memory_bytes: 20 * GIB
            }
        );
        assert_eq!(assignment_of(&whole), GpuAssignment::Whole(vec![1]));
        let down = super::cluster(&[node(3)], &[], &|_| true, 100);
        assert!(!down.node(3).expect("node").healthy);
    }
}
