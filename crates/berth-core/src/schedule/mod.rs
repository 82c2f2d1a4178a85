//! The scheduler: given a snapshot of the cluster and a request, where it runs — a node, and
//! which whole GPUs or which GPU's memory slice — or a refusal that says, per node and dimension,
//! why nothing fits.
//!
//! Pure: no I/O, no clock; its only randomness is seeded ([`crate::seeded`]), so the same
//! snapshot, request sequence and seed always give the same placements.
//!
//! Order of preference: GPU work runs only on `gpu` nodes; CPU work prefers `cpu`, then `edge`,
//! then `gpu` nodes (keeping GPU servers for GPU work). Within that, the lower priority number
//! first (seed 000), then the best score: spread picks the least load per unit of weight,
//! binpack the fullest node per unit of weight. When a tier has more feasible nodes than
//! [`Options::candidates`], the best of a seeded sample of that many is taken (as Nomad does),
//! which keeps a placement's cost flat in the cluster's size; a request is refused only after
//! every node was checked.
//!
//! Each tier indexes its nodes' free room ([`room`]), so a placement visits only the nodes that
//! may fit — in the order a scan would, so the choice is the same — and a full cluster refuses
//! without visiting any. [`Walk::Scanning`] checks every node in turn instead: the reference the
//! index is tested and measured against.

mod gpu_fit;
mod refusal;
mod room;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

pub use gpu_fit::WHOLE_GPU_OBSERVED_FREE_SHARE;
pub use refusal::{Reason, Refusal, SHORTFALLS_KEPT, Shortfall};

use self::room::{Room, RoomTree};
use crate::SpecError;
use crate::seeded::mix;

/// What kind of server a node is (seed 000's `server_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerType {
    /// A CPU server.
    Cpu,
    /// A GPU server.
    Gpu,
    /// An edge device.
    Edge,
}

impl ServerType {
    /// Parses `cpu`, `gpu` or `edge`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cpu" => Some(Self::Cpu),
            "gpu" => Some(Self::Gpu),
            "edge" => Some(Self::Edge),
            _ => None,
        }
    }

    /// How much CPU work prefers this kind (lower first).
    fn cpu_work_rank(self) -> u8 {
        match self {
            Self::Cpu => 0,
            Self::Edge => 1,
            Self::Gpu => 2,
        }
    }
}

/// Amounts of the dimensions every node has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU, thousandths of a core.
    pub cpu_millis: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Disk (system plus data disk), bytes.
    pub disk_bytes: u64,
}

/// One GPU of a node: its memory, what Berth placed on it, and what the node last saw free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuState {
    /// Index on the node.
    pub index: u32,
    /// Total memory, bytes.
    pub memory_bytes: u64,
    /// A whole-GPU tenant holds it.
    pub whole_tenant: bool,
    /// Memory of the slices placed on it, bytes.
    pub sliced_bytes: u64,
    /// Free memory the node last observed (NVML), when known.
    pub observed_free_bytes: Option<u64>,
}

impl GpuState {
    /// Free memory by Berth's own allocations.
    pub fn free_by_allocations(&self) -> u64 {
        if self.whole_tenant {
            0
        } else {
            self.memory_bytes.saturating_sub(self.sliced_bytes)
        }
    }

    /// Free memory: the lesser of what allocations leave and what was observed free.
    pub fn free_bytes(&self) -> u64 {
        let by_allocations = self.free_by_allocations();
        self.observed_free_bytes
            .map_or(by_allocations, |observed| observed.min(by_allocations))
    }
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Node id.
    pub id: i64,
    /// Node name.
    pub name: String,
    /// Its kind.
    pub server_type: ServerType,
    /// Takes new work.
    pub enabled: bool,
    /// Listed for scheduling (a drained node is not).
    pub listed: bool,
    /// Its last checks passed.
    pub healthy: bool,
    /// Lower is tried first.
    pub priority: i64,
    /// Share of work within its priority (seed 000's `weight`; 100 is the norm).
    pub weight: u32,
    /// Labels that requests can constrain on.
    pub labels: BTreeMap<String, String>,
    /// What it has.
    pub capacity: Resources,
    /// What placements take.
    pub allocated: Resources,
    /// `MAX_CONTAINERS`.
    pub max_containers: u32,
    /// Containers placed on it.
    pub containers: u32,
    /// Its GPUs.
    pub gpus: Vec<GpuState>,
}

/// GPUs a request needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuDemand {
    /// No GPU.
    #[default]
    None,
    /// This many whole GPUs, exclusively.
    Whole(u32),
    /// A slice of one GPU's memory (HAMi), bytes.
    Slice(u64),
}

/// What to place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// CPU, memory and disk.
    pub resources: Resources,
    /// GPUs.
    pub gpu: GpuDemand,
    /// Labels the node must carry with these values.
    pub constraints: BTreeMap<String, String>,
    /// Only this node (a pinned service, or a move to a chosen node).
    pub only_node: Option<i64>,
    /// Never these nodes (the node a replica moves away from).
    pub avoid: BTreeSet<i64>,
    /// Only this GPU of a node (seed 004's `device: cuda:N`), for a whole GPU or a slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_index: Option<u32>,
    /// Which of a node's fitting GPUs a slice takes.
    #[serde(default)]
    pub gpu_choice: GpuChoice,
}

/// Which GPU of a node a slice takes among those it fits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuChoice {
    /// The one with the least free memory that fits: GPUs fill up one by one, leaving whole
    /// ones for large requests.
    #[default]
    BestFit,
    /// The one with the most free memory (seed 004's `find_best_device`): slices spread out.
    MostFree,
}

impl Request {
    fn needs_gpu(&self) -> bool {
        !matches!(self.gpu, GpuDemand::None | GpuDemand::Whole(0))
    }
}

/// The GPUs of a placement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuAssignment {
    /// None.
    None,
    /// These whole GPUs.
    Whole(Vec<u32>),
    /// A slice of GPU `index`.
    Slice {
        /// The GPU.
        index: u32,
        /// Its size, bytes.
        memory_bytes: u64,
    },
}

/// Where a request runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// The node.
    pub node_id: i64,
    /// Its GPUs.
    pub gpus: GpuAssignment,
}

/// How to choose among feasible nodes of one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The least load per unit of weight.
    #[default]
    Spread,
    /// The fullest node per unit of weight, keeping others empty.
    Binpack,
}

/// Scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Spread or binpack.
    pub policy: Policy,
    /// Feasible nodes compared per tier; 0 compares all.
    pub candidates: usize,
    /// Seed of the sampling.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: Policy::Spread,
            candidates: 16,
            seed: 0,
        }
    }
}

/// How [`Cluster::decide`] finds the nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Through each tier's index of free room (what [`Cluster::place`] does).
    Indexed,
    /// Checking every node in turn.
    Scanning,
}

/// Nodes tried together (one server-type preference and priority), in id order, with the index
/// of their room.
#[derive(Debug, Clone)]
struct Tier {
    /// Positions in [`Cluster::nodes`].
    members: Vec<usize>,
    rooms: RoomTree,
}

/// Where a node sits in the tiers: (tier, slot) among the GPU tiers and the CPU tiers.
#[derive(Debug, Clone, Copy, Default)]
struct Slots {
    gpu: Option<(usize, usize)>,
    cpu: Option<(usize, usize)>,
}

/// A cluster snapshot with the tiers the scheduler walks, kept current by [`Cluster::commit`]
/// and [`Cluster::release`].
#[derive(Debug, Clone)]
pub struct Cluster {
    nodes: Vec<NodeState>,
    by_id: HashMap<i64, usize>,
    /// Tiers for GPU work: `gpu` nodes by priority.
    gpu_tiers: Vec<Tier>,
    /// Tiers for CPU work: by server-type preference, then priority.
    cpu_tiers: Vec<Tier>,
    /// Each node's slots, by position.
    slots: Vec<Slots>,
    /// Placements committed so far; feeds the sampling so that each one looks elsewhere.
    committed: u64,
}

fn tiers(nodes: &[NodeState], key: impl Fn(&NodeState) -> Option<(u8, i64)>) -> Vec<Tier> {
    let mut grouped: BTreeMap<(u8, i64), Vec<usize>> = BTreeMap::new();
    for (position, node) in nodes.iter().enumerate() {
        if let Some(tier) = key(node) {
            grouped.entry(tier).or_default().push(position);
        }
    }
    grouped
        .into_values()
        .map(|members| Tier {
            rooms: RoomTree::new(members.iter().map(|position| Room::of(&nodes[*position]))),
            members,
        })
        .collect()
}

/// The best node seen so far: the lowest score, then the lowest id.
#[derive(Default)]
struct Best(Option<(f64, i64, GpuAssignment)>);

impl Best {
    fn offer(&mut self, score: f64, id: i64, gpus: GpuAssignment) {
        let better = match &self.0 {
            None => true,
            Some((best_score, best_id, _)) => {
                score < *best_score || (score == *best_score && id < *best_id)
            }
        };
        if better {
            self.0 = Some((score, id, gpus));
        }
    }
}

impl Cluster {
    /// A snapshot of `nodes` (ordered by id, so that input order does not matter).
    pub fn new(mut nodes: Vec<NodeState>) -> Self {
        nodes.sort_by_key(|node| node.id);
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(position, node)| (node.id, position))
            .collect();
        let gpu_tiers = tiers(&nodes, |node| {
            (node.server_type == ServerType::Gpu).then_some((0, node.priority))
        });
        let cpu_tiers = tiers(&nodes, |node| {
            Some((node.server_type.cpu_work_rank(), node.priority))
        });
        let mut slots = vec![Slots::default(); nodes.len()];
        for (number, tier) in gpu_tiers.iter().enumerate() {
            for (slot, position) in tier.members.iter().enumerate() {
                slots[*position].gpu = Some((number, slot));
            }
        }
        for (number, tier) in cpu_tiers.iter().enumerate() {
            for (slot, position) in tier.members.iter().enumerate() {
                slots[*position].cpu = Some((number, slot));
            }
        }
        Self {
            nodes,
            by_id,
            gpu_tiers,
            cpu_tiers,
            slots,
            committed: 0,
        }
    }

    /// The nodes, by id.
    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, id: i64) -> Option<&NodeState> {
        self.by_id.get(&id).map(|position| &self.nodes[*position])
    }

    /// Where `request` should run, or why it cannot.
    pub fn place(&self, request: &Request, options: &Options) -> Result<Placement, Refusal> {
        self.decide(request, options, Walk::Indexed)
            .ok_or_else(|| self.explain(request))
    }

    /// Where `request` should run, found by `walk`; `None` when nowhere ([`Cluster::explain`]
    /// says why). Both walks choose the same node.
    pub fn decide(&self, request: &Request, options: &Options, walk: Walk) -> Option<Placement> {
        if let Some(only) = request.only_node {
            let gpus = check(self.node(only)?, request).ok()?;
            return Some(Placement {
                node_id: only,
                gpus,
            });
        }
        let tiers = if request.needs_gpu() {
            &self.gpu_tiers
        } else {
            &self.cpu_tiers
        };
        let need = Room::needed_by(request);
        let start_seed = mix(options.seed ^ mix(self.committed));
        for tier in tiers {
            let size = tier.members.len();
            let offset = (start_seed % size as u64) as usize;
            let mut best = Best::default();
            let mut seen = 0;
            let mut consider = |slot: usize| {
                let node = &self.nodes[tier.members[slot]];
                if let Ok(gpus) = check(node, request) {
                    best.offer(score(node, request, options.policy), node.id, gpus);
                    seen += 1;
                }
                options.candidates == 0 || seen < options.candidates
            };
            match walk {
                Walk::Indexed => {
                    let _ = tier.rooms.visit(offset, size, &need, &mut consider)
                        && tier.rooms.visit(0, offset, &need, &mut consider);
                }
                Walk::Scanning => {
                    for step in 0..size {
                        if !consider((offset + step) % size) {
                            break;
                        }
                    }
                }
            }
            if let Some((_, node_id, gpus)) = best.0 {
                return Some(Placement { node_id, gpus });
            }
        }
        None
    }

    /// Brings the index of the node at `position` in step with it.
    fn refresh(&mut self, position: usize) {
        let room = Room::of(&self.nodes[position]);
        let slots = self.slots[position];
        if let Some((tier, slot)) = slots.gpu {
            self.gpu_tiers[tier].rooms.set(slot, room);
        }
        if let Some((tier, slot)) = slots.cpu {
            self.cpu_tiers[tier].rooms.set(slot, room);
        }
    }

    /// Why `request` fits nowhere: the first failing dimension of every node.
    pub fn explain(&self, request: &Request) -> Refusal {
        let mut refusal = Refusal::default();
        let mut counted = [0; Reason::ALL.len()];
        for node in &self.nodes {
            let reason = if request.only_node.is_some_and(|only| only != node.id) {
                Reason::NotRequested
            } else {
                match check(node, request) {
                    Ok(_) => continue,
                    Err(reason) => reason,
                }
            };
            counted[reason as usize] += 1;
            if let Some((asked, free)) = shortfall(node, request, reason) {
                refusal.note(&node.name, reason, asked, free);
            }
        }
        refusal.add_counted(&counted);
        refusal
    }

    /// Accounts `placement` of `request`. A placement the snapshot no longer has room for (a
    /// stale one) is refused and changes nothing.
    pub fn commit(&mut self, request: &Request, placement: &Placement) -> Result<(), Refusal> {
        let position = *self
            .by_id
            .get(&placement.node_id)
            .ok_or_else(|| Refusal::single(Reason::NotRequested))?;
        let node = &mut self.nodes[position];
        if !fits_placement(node, request, &placement.gpus) {
            return Err(Refusal::single(
                check(node, request).err().unwrap_or(Reason::GpuTaken),
            ));
        }
        node.allocated.cpu_millis += request.resources.cpu_millis;
        node.allocated.memory_bytes += request.resources.memory_bytes;
        node.allocated.disk_bytes += request.resources.disk_bytes;
        node.containers += 1;
        gpu_fit::take(node, &placement.gpus);
        self.committed += 1;
        self.refresh(position);
        Ok(())
    }

    /// Gives back what `placement` of `request` took (a replica removed or moved).
    pub fn release(&mut self, request: &Request, placement: &Placement) {
        let Some(&position) = self.by_id.get(&placement.node_id) else {
            return;
        };
        let node = &mut self.nodes[position];
        let allocated = &mut node.allocated;
        allocated.cpu_millis = allocated
            .cpu_millis
            .saturating_sub(request.resources.cpu_millis);
        allocated.memory_bytes = allocated
            .memory_bytes
            .saturating_sub(request.resources.memory_bytes);
        allocated.disk_bytes = allocated
            .disk_bytes
            .saturating_sub(request.resources.disk_bytes);
        node.containers = node.containers.saturating_sub(1);
        gpu_fit::give_back(node, &placement.gpus);
        self.refresh(position);
    }

    /// Changes a node's health (the failure detector's verdict).
    pub fn set_healthy(&mut self, id: i64, healthy: bool) {
        if let Some(&position) = self.by_id.get(&id) {
            self.nodes[position].healthy = healthy;
            self.refresh(position);
        }
    }
}

/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 63;

/// Checks node labels or a request's constraints: keys of letters, digits, `.`, `_`, `-` and
/// `/` (1–63), values of at most 63 printable characters. The error names `field.key`.
pub fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), SpecError> {
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_LEN
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok {
            return Err(SpecError::new(
                field,
                format!("{key:?} is not a label key (1-63 of letters, digits, . _ - /)"),
            ));
        }
        if value.len() > MAX_LABEL_LEN || value.chars().any(char::is_control) {
            return Err(SpecError::new(
                format!("{field}.{key}"),
                format!("{value:?} is not a label value (at most 63 printable characters)"),
            ));
        }
    }
    Ok(())
}

/// Whether `request` fits on `node`; the GPUs it would take, or the first dimension short.
fn check(node: &NodeState, request: &Request) -> Result<GpuAssignment, Reason> {
    if request.avoid.contains(&node.id) {
        return Err(Reason::Avoided);
    }
    if !node.enabled {
        return Err(Reason::Disabled);
    }
    if !node.listed {
        return Err(Reason::Unlisted);
    }
    if !node.healthy {
        return Err(Reason::Unhealthy);
    }
    if request.needs_gpu() && node.server_type != ServerType::Gpu {
        return Err(Reason::ServerType);
    }
    if request
        .constraints
        .iter()
        .any(|(key, value)| node.labels.get(key) != Some(value))
    {
        return Err(Reason::Labels);
    }
    if node.containers >= node.max_containers {
        return Err(Reason::MaxContainers);
    }
    let free = |capacity: u64, allocated: u64| capacity.saturating_sub(allocated);
    let wanted = &request.resources;
    if wanted.cpu_millis > free(node.capacity.cpu_millis, node.allocated.cpu_millis) {
        return Err(Reason::Cpu);
    }
    if wanted.memory_bytes > free(node.capacity.memory_bytes, node.allocated.memory_bytes) {
        return Err(Reason::Memory);
    }
    if wanted.disk_bytes > free(node.capacity.disk_bytes, node.allocated.disk_bytes) {
        return Err(Reason::Disk);
    }
    gpu_fit::choose(node, request.gpu, request.gpu_index, request.gpu_choice)
}

/// Asked and free on `node` in the capacity dimension `reason` names; none for a reason that
/// is not about capacity.
fn shortfall(node: &NodeState, request: &Request, reason: Reason) -> Option<(u64, u64)> {
    let free = |capacity: u64, allocated: u64| capacity.saturating_sub(allocated);
    let (asked, free) = match reason {
        Reason::Cpu => (
            request.resources.cpu_millis,
            free(node.capacity.cpu_millis, node.allocated.cpu_millis),
        ),
        Reason::Memory => (
            request.resources.memory_bytes,
            free(node.capacity.memory_bytes, node.allocated.memory_bytes),
        ),
        Reason::Disk => (
            request.resources.disk_bytes,
            free(node.capacity.disk_bytes, node.allocated.disk_bytes),
        ),
        Reason::GpuCount
        | Reason::GpuCountObserved
        | Reason::GpuMemory
        | Reason::GpuMemoryObserved => {
            let counted = matches!(reason, Reason::GpuCount | Reason::GpuCountObserved);
            let asked = match request.gpu {
                GpuDemand::Whole(count) => u64::from(count),
                GpuDemand::Slice(_) if counted => 1,
                GpuDemand::Slice(bytes) => bytes,
                GpuDemand::None => 0,
            };
            (asked, gpu_fit::free_for(node, reason))
        }
        _ => return None,
    };
    Some((asked, free))
}

/// Whether a given placement (not a chosen one) still fits.
fn fits_placement(node: &NodeState, request: &Request, gpus: &GpuAssignment) -> bool {
    let mut without_gpus = request.clone();
    without_gpus.gpu = GpuDemand::None;
    without_gpus.avoid.clear();
    // GPU work on a node without GPUs fails the GPU check: the node has no such GPU.
    check(node, &without_gpus).is_ok() && gpu_fit::still_free(node, request.gpu, gpus)
}

/// Lower is better.
fn score(node: &NodeState, request: &Request, policy: Policy) -> f64 {
    let share = |allocated: u64, adding: u64, capacity: u64| {
        if capacity == 0 {
            0.0
        } else {
            (allocated + adding) as f64 / capacity as f64
        }
    };
    let wanted = &request.resources;
    let mut load = share(
        node.allocated.cpu_millis,
        wanted.cpu_millis,
        node.capacity.cpu_millis,
    )
    .max(share(
        node.allocated.memory_bytes,
        wanted.memory_bytes,
        node.capacity.memory_bytes,
    ))
    .max(share(
        u64::from(node.containers),
        1,
        u64::from(node.max_containers),
    ));
    if request.needs_gpu() {
        let total: u64 = node.gpus.iter().map(|gpu| gpu.memory_bytes).sum();
        let used: u64 = node
            .gpus
            .iter()
            .map(|gpu| gpu.memory_bytes - gpu.free_by_allocations())
            .sum();
        load = load.max(share(used, 0, total));
    }
    let weight = f64::from(node.weight.max(1)) / 100.0;
    match policy {
        Policy::Spread => load / weight,
        Policy::Binpack => (1.0 - load.min(1.0)) / weight,
    }
}
