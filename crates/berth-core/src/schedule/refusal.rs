//! Why a request fits nowhere: per node, the first dimension that was short, counted by reason
//! and said in one sentence ("5 nodes: not enough GPU memory on any single GPU (allocations);
//! 2 nodes: disabled; 1 node: unhealthy"), with the amounts of the nodes that came closest
//! ("node gpu-3: CPU asked 4 cores, free 1.5").

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Why one node cannot take a request, in the order the scheduler checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not the node the request is bound to.
    NotRequested,
    /// The request moves away from it.
    Avoided,
    /// Disabled by an administrator.
    Disabled,
    /// Unlisted (drained).
    Unlisted,
    /// Failing its checks.
    Unhealthy,
    /// GPU work on a node that is not a GPU server.
    ServerType,
    /// Missing a label the request requires.
    Labels,
    /// At `MAX_CONTAINERS`.
    MaxContainers,
    /// Not enough CPU.
    Cpu,
    /// Not enough memory.
    Memory,
    /// Not enough disk.
    Disk,
    /// Not enough GPUs free of other tenants.
    GpuCount,
    /// Enough GPUs by allocations, but the node saw their memory in use.
    GpuCountObserved,
    /// No single GPU has the memory left by allocations.
    GpuMemory,
    /// Allocations leave room, but the node saw less memory free.
    GpuMemoryObserved,
    /// The GPUs of a placement were taken meanwhile.
    GpuTaken,
}

impl Reason {
    /// Every reason, in the order the scheduler checks (each at its own discriminant).
    pub const ALL: [Self; 16] = [
        Self::NotRequested,
        Self::Avoided,
        Self::Disabled,
        Self::Unlisted,
        Self::Unhealthy,
        Self::ServerType,
        Self::Labels,
        Self::MaxContainers,
        Self::Cpu,
        Self::Memory,
        Self::Disk,
        Self::GpuCount,
        Self::GpuCountObserved,
        Self::GpuMemory,
        Self::GpuMemoryObserved,
        Self::GpuTaken,
    ];

    /// The reason in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotRequested => "not the requested node",
            Self::Avoided => "the node it moves away from",
            Self::Disabled => "disabled",
            Self::Unlisted => "unlisted",
            Self::Unhealthy => "unhealthy",
            Self::ServerType => "not a GPU server",
            Self::Labels => "labels do not match",
            Self::MaxContainers => "at MAX_CONTAINERS",
            Self::Cpu => "not enough CPU",
            Self::Memory => "not enough memory",
            Self::Disk => "not enough disk",
            Self::GpuCount => "not enough free GPUs",
            Self::GpuCountObserved => "not enough free GPUs (observed memory in use)",
            Self::GpuMemory => "not enough GPU memory on any single GPU (allocations)",
            Self::GpuMemoryObserved => "not enough GPU memory on any single GPU (observed free)",
            Self::GpuTaken => "its GPUs were taken meanwhile",
        }
    }
}

/// How far one node fell short in the dimension that refused: asked and free, in the
/// dimension's unit (thousandths of a core, bytes, GPUs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shortfall {
    /// The node's name.
    pub node: String,
    /// The dimension.
    pub reason: Reason,
    /// What the request asks.
    pub asked: u64,
    /// What the node has free.
    pub free: u64,
}

/// Bytes in binary units, one decimal below 10 (`1.5 GiB`, `512 MiB`).
fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 && value.fract() != 0.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// Thousandths of a core as cores (`1.5`).
fn cores(millis: u64) -> String {
    let text = format!("{:.3}", millis as f64 / 1000.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl fmt::Display for Shortfall {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = &self.node;
        let (asked, free) = (self.asked, self.free);
        match self.reason {
            Reason::Cpu => write!(
                formatter,
                "node {node}: CPU asked {} cores, free {}",
                cores(asked),
                cores(free)
            ),
            Reason::Memory | Reason::Disk => write!(
                formatter,
                "node {node}: {} asked {}, free {}",
                if self.reason == Reason::Memory {
                    "memory"
                } else {
                    "disk"
                },
                bytes(asked),
                bytes(free)
            ),
            Reason::GpuCount | Reason::GpuCountObserved => {
                write!(formatter, "node {node}: GPUs asked {asked}, free {free}")
            }
            _ => write!(
                formatter,
                "node {node}: GPU memory asked {}, most free on one GPU {}",
                bytes(asked),
                bytes(free)
            ),
        }
    }
}

/// How many nodes' amounts a refusal keeps: those that came closest.
pub const SHORTFALLS_KEPT: usize = 3;

/// Nodes counted by the reason they refused, and the amounts of those that came closest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Nodes per reason.
    pub reasons: BTreeMap<Reason, usize>,
    /// Asked and free on the nodes short of capacity that came closest (at most
    /// [`SHORTFALLS_KEPT`], closest first).
    pub shortfalls: Vec<Shortfall>,
}

impl Refusal {
    /// One node, one reason.
    pub fn single(reason: Reason) -> Self {
        let mut refusal = Self::default();
        refusal.add(reason);
        refusal
    }

    /// Counts one more node refusing for `reason`.
    pub fn add(&mut self, reason: Reason) {
        *self.reasons.entry(reason).or_default() += 1;
    }

    /// Counts nodes by reason, `counted[reason as usize]` of each.
    pub fn add_counted(&mut self, counted: &[usize; Reason::ALL.len()]) {
        for (reason, count) in Reason::ALL.iter().zip(counted) {
            if *count > 0 {
                *self.reasons.entry(*reason).or_default() += count;
            }
        }
    }

    /// Notes how far node `node` fell short for `reason` (`asked`, `free`), keeping the
    /// closest ones; the name is copied only when kept.
    pub fn note(&mut self, node: &str, reason: Reason, asked: u64, free: u64) {
        let closeness = |asked: u64, free: u64| free as f64 / asked.max(1) as f64;
        let this = closeness(asked, free);
        let position = self
            .shortfalls
            .iter()
            .position(|kept| closeness(kept.asked, kept.free) < this)
            .unwrap_or(self.shortfalls.len());
        if position < SHORTFALLS_KEPT {
            self.shortfalls.insert(
                position,
                Shortfall {
                    node: node.to_owned(),
                    reason,
                    asked,
                    free,
                },
            );
            self.shortfalls.truncate(SHORTFALLS_KEPT);
        }
    }

    /// Nodes that refused.
    pub fn nodes(&self) -> usize {
        self.reasons.values().sum()
    }

    /// Whether some node was short of capacity (rather than excluded): eviction could help.
    pub fn short_of_capacity(&self) -> bool {
        self.reasons.keys().any(|reason| {
            matches!(
                reason,
                Reason::MaxContainers
                    | Reason::Cpu
                    | Reason::Memory
                    | Reason::Disk
                    | Reason::GpuCount
                    | Reason::GpuMemory
            )
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            return formatter.write_str("no compute node is registered");
        }
        let mut counted: Vec<(&Reason, &usize)> = self.reasons.iter().collect();
        counted.sort_by(|left, right| right.1.cmp(left.1).then(left.0.cmp(right.0)));
        formatter.write_str("no node can run it: ")?;
        for (position, (reason, count)) in counted.into_iter().enumerate() {
            if position > 0 {
                formatter.write_str("; ")?;
            }
            let plural = if *count == 1 { "" } else { "s" };
            write!(formatter, "{count} node{plural}: {}", reason.describe())?;
        }
        if !self.shortfalls.is_empty() {
            let amounts: Vec<String> = self.shortfalls.iter().map(ToString::to_string).collect();
            write!(formatter, " ({})", amounts.join("; "))?;
        }
        Ok(())
    }
}
