//! Why a request fits nowhere: per node, the first dimension that was short, counted by reason
//! and said in one sentence ("5 nodes: not enough GPU memory on any single GPU (allocations);
//! 2 nodes: disabled; 1 node: unhealthy").

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

/// Nodes counted by the reason they refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Nodes per reason.
    pub reasons: BTreeMap<Reason, usize>,
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
        Ok(())
    }
}
