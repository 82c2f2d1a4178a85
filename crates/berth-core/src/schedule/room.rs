//! An index of the room nodes have, so that a placement visits only nodes that may fit instead
//! of checking each in turn.
//!
//! Each tier keeps a [`RoomTree`]: a segment tree over the tier's nodes whose leaves hold each
//! node's [`Room`] (free CPU, memory, disk and container slots, GPUs free for a whole tenant,
//! the most memory free on one GPU; nothing for a node that takes no work) and whose inner
//! entries hold the largest of each dimension below them. A walk skips every subtree whose
//! largest values cannot cover the request, so only nodes that pass all of them are checked in
//! full ([`super::check`]: labels, the node to avoid, a chosen GPU index). The room is a
//! necessary condition of [`super::check`], never a sufficient one: a skipped node would have
//! been refused, so the walk sees the nodes a scan would accept, in the same order.

use super::{GpuDemand, NodeState, Request, gpu_fit};

/// What a node has free, or the largest free amounts of a subtree's nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Room {
    cpu_millis: u64,
    memory_bytes: u64,
    disk_bytes: u64,
    containers: u32,
    whole_gpus: u32,
    gpu_slice_bytes: u64,
}

impl Room {
    /// The room of `node`: none when it takes no work.
    pub(super) fn of(node: &NodeState) -> Self {
        if !(node.enabled && node.listed && node.healthy) || node.containers >= node.max_containers
        {
            return Self::default();
        }
        let free = |capacity: u64, allocated: u64| capacity.saturating_sub(allocated);
        Self {
            cpu_millis: free(node.capacity.cpu_millis, node.allocated.cpu_millis),
            memory_bytes: free(node.capacity.memory_bytes, node.allocated.memory_bytes),
            disk_bytes: free(node.capacity.disk_bytes, node.allocated.disk_bytes),
            containers: node.max_containers - node.containers,
            whole_gpus: u32::try_from(gpu_fit::whole_gpus_free(node)).unwrap_or(u32::MAX),
            gpu_slice_bytes: node
                .gpus
                .iter()
                .map(super::GpuState::free_bytes)
                .max()
                .unwrap_or(0),
        }
    }

    /// What `request` needs of a node's room.
    pub(super) fn needed_by(request: &Request) -> Self {
        let wanted = &request.resources;
        let (whole_gpus, gpu_slice_bytes) = match request.gpu {
            GpuDemand::None => (0, 0),
            GpuDemand::Whole(count) => (count, 0),
            GpuDemand::Slice(bytes) => (0, bytes),
        };
        Self {
            cpu_millis: wanted.cpu_millis,
            memory_bytes: wanted.memory_bytes,
            disk_bytes: wanted.disk_bytes,
            containers: 1,
            whole_gpus,
            gpu_slice_bytes,
        }
    }

    fn covers(&self, need: &Self) -> bool {
        self.cpu_millis >= need.cpu_millis
            && self.memory_bytes >= need.memory_bytes
            && self.disk_bytes >= need.disk_bytes
            && self.containers >= need.containers
            && self.whole_gpus >= need.whole_gpus
            && self.gpu_slice_bytes >= need.gpu_slice_bytes
    }

    fn largest(&self, other: &Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
            disk_bytes: self.disk_bytes.max(other.disk_bytes),
            containers: self.containers.max(other.containers),
            whole_gpus: self.whole_gpus.max(other.whole_gpus),
            gpu_slice_bytes: self.gpu_slice_bytes.max(other.gpu_slice_bytes),
        }
    }
}

/// The rooms of one tier's nodes (by their slot in the tier) and the largest of every subtree.
#[derive(Debug, Clone)]
pub(super) struct RoomTree {
    /// Leaves: a power of two at least the tier's size.
    width: usize,
    /// Entry 1 is the root, `2i` and `2i + 1` the children of `i`, `width + slot` a leaf.
    entries: Vec<Room>,
}

impl RoomTree {
    /// A tree of `rooms`, in slot order.
    pub(super) fn new(rooms: impl ExactSizeIterator<Item = Room>) -> Self {
        let width = rooms.len().max(1).next_power_of_two();
        let mut entries = vec![Room::default(); 2 * width];
        for (slot, room) in rooms.enumerate() {
            entries[width + slot] = room;
        }
        for entry in (1..width).rev() {
            entries[entry] = entries[2 * entry].largest(&entries[2 * entry + 1]);
        }
        Self { width, entries }
    }

    /// Sets the room of `slot`.
    pub(super) fn set(&mut self, slot: usize, room: Room) {
        let mut entry = self.width + slot;
        if self.entries[entry] == room {
            return;
        }
        self.entries[entry] = room;
        while entry > 1 {
            entry /= 2;
            let combined = self.entries[2 * entry].largest(&self.entries[2 * entry + 1]);
            if self.entries[entry] == combined {
                break;
            }
            self.entries[entry] = combined;
        }
    }

    /// Calls `visit` with each slot in `from..to`, in order, whose room covers `need`, until
    /// `visit` answers false; false when it did.
    pub(super) fn visit(
        &self,
        from: usize,
        to: usize,
        need: &Room,
        visit: &mut impl FnMut(usize) -> bool,
    ) -> bool {
        let span = Span { from, to, need };
        self.walk(1, 0, self.width, &span, visit)
    }

    fn walk(
        &self,
        entry: usize,
        low: usize,
        high: usize,
        span: &Span<'_>,
        visit: &mut impl FnMut(usize) -> bool,
    ) -> bool {
        if high <= span.from || span.to <= low || !self.entries[entry].covers(span.need) {
            return true;
        }
        if high - low == 1 {
            return visit(low);
        }
        let middle = (low + high) / 2;
        self.walk(2 * entry, low, middle, span, visit)
            && self.walk(2 * entry + 1, middle, high, span, visit)
    }
}

/// The slots a walk visits and what they must cover.
struct Span<'a> {
    from: usize,
    to: usize,
    need: &'a Room,
}
