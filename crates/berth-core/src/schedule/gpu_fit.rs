//! Choosing GPUs on one node: whole GPUs are exclusive and need a GPU nobody holds; a memory
//! slice goes to the GPU it fits most tightly (best fit), so that whole GPUs stay free.

use super::{GpuAssignment, GpuChoice, GpuDemand, GpuState, NodeState, Reason};

/// A whole GPU is taken only when the node saw at least this share of its memory free: memory
/// held by processes Berth did not place makes a GPU unfit for an exclusive tenant.
pub const WHOLE_GPU_OBSERVED_FREE_SHARE: f64 = 0.9;

fn whole_free_by_allocations(gpu: &GpuState) -> bool {
    !gpu.whole_tenant && gpu.sliced_bytes == 0
}

fn whole_free_observed(gpu: &GpuState) -> bool {
    gpu.observed_free_bytes
        .is_none_or(|free| free as f64 >= gpu.memory_bytes as f64 * WHOLE_GPU_OBSERVED_FREE_SHARE)
}

/// GPUs of `node` a whole tenant could take: free by allocations and as observed.
pub(super) fn whole_gpus_free(node: &NodeState) -> usize {
    node.gpus
        .iter()
        .filter(|gpu| whole_free_by_allocations(gpu) && whole_free_observed(gpu))
        .count()
}

/// What `node` has free of what `reason` says it lacks, in the unit of `demand`: whole GPUs
/// free (by allocations, or also as observed), or the most memory free on one GPU.
pub(super) fn free_for(node: &NodeState, reason: Reason) -> u64 {
    let count = |free: &dyn Fn(&GpuState) -> bool| node.gpus.iter().filter(|gpu| free(gpu)).count();
    match reason {
        Reason::GpuCount => count(&whole_free_by_allocations) as u64,
        Reason::GpuCountObserved => {
            count(&|gpu| whole_free_by_allocations(gpu) && whole_free_observed(gpu)) as u64
        }
        Reason::GpuMemory => node
            .gpus
            .iter()
            .map(GpuState::free_by_allocations)
            .max()
            .unwrap_or(0),
        _ => node
            .gpus
            .iter()
            .map(GpuState::free_bytes)
            .max()
            .unwrap_or(0),
    }
}

/// The GPUs `demand` takes on `node` (only GPU `only` when given), or why it cannot have them.
pub(super) fn choose(
    node: &NodeState,
    demand: GpuDemand,
    only: Option<u32>,
    choice: GpuChoice,
) -> Result<GpuAssignment, Reason> {
    let Some(index) = only else {
        return choose_among(node, demand, choice);
    };
    let mut pinned = node.clone();
    pinned.gpus.retain(|gpu| gpu.index == index);
    choose_among(&pinned, demand, choice)
}

fn choose_among(
    node: &NodeState,
    demand: GpuDemand,
    choice: GpuChoice,
) -> Result<GpuAssignment, Reason> {
    match demand {
        GpuDemand::None | GpuDemand::Whole(0) => Ok(GpuAssignment::None),
        GpuDemand::Whole(count) => {
            // Counted first, so that a refusal (every node of an explanation) allocates nothing.
            let count = count as usize;
            let unallocated = || {
                node.gpus
                    .iter()
                    .filter(|gpu| whole_free_by_allocations(gpu))
            };
            if unallocated().count() < count {
                return Err(Reason::GpuCount);
            }
            let usable = || unallocated().filter(|gpu| whole_free_observed(gpu));
            if usable().count() < count {
                return Err(Reason::GpuCountObserved);
            }
            Ok(GpuAssignment::Whole(
                usable().take(count).map(|gpu| gpu.index).collect(),
            ))
        }
        GpuDemand::Slice(bytes) => {
            let mut fits_allocations = false;
            let fitting = node
                .gpus
                .iter()
                .filter(|gpu| gpu.free_by_allocations() >= bytes)
                .inspect(|_| fits_allocations = true)
                .filter(|gpu| gpu.free_bytes() >= bytes);
            let best = match choice {
                GpuChoice::BestFit => fitting.min_by_key(|gpu| (gpu.free_bytes(), gpu.index)),
                GpuChoice::MostFree => {
                    fitting.max_by_key(|gpu| (gpu.free_bytes(), std::cmp::Reverse(gpu.index)))
                }
            };
            match best {
                Some(gpu) => Ok(GpuAssignment::Slice {
                    index: gpu.index,
                    memory_bytes: bytes,
                }),
                None if fits_allocations => Err(Reason::GpuMemoryObserved),
                None if node.gpus.is_empty() => Err(Reason::GpuCount),
                None => Err(Reason::GpuMemory),
            }
        }
    }
}

/// Whether `assignment` is still free on `node` and is what `demand` asks for.
pub(super) fn still_free(node: &NodeState, demand: GpuDemand, assignment: &GpuAssignment) -> bool {
    let gpu = |index: u32| node.gpus.iter().find(|gpu| gpu.index == index);
    match (demand, assignment) {
        (GpuDemand::None | GpuDemand::Whole(0), GpuAssignment::None) => true,
        (GpuDemand::Whole(count), GpuAssignment::Whole(indices)) => {
            let mut distinct = indices.clone();
            distinct.sort_unstable();
            distinct.dedup();
            distinct.len() == count as usize
                && indices.len() == distinct.len()
                && indices
                    .iter()
                    .all(|index| gpu(*index).is_some_and(whole_free_by_allocations))
        }
        (
            GpuDemand::Slice(bytes),
            GpuAssignment::Slice {
                index,
                memory_bytes,
            },
        ) => *memory_bytes == bytes && gpu(*index).is_some_and(|gpu| gpu.free_bytes() >= bytes),
        _ => false,
    }
}

/// Marks `assignment`'s GPUs as taken.
pub(super) fn take(node: &mut NodeState, assignment: &GpuAssignment) {
    for gpu in &mut node.gpus {
        match assignment {
            GpuAssignment::None => {}
            GpuAssignment::Whole(indices) => {
                if indices.contains(&gpu.index) {
                    gpu.whole_tenant = true;
                }
            }
            GpuAssignment::Slice {
                index,
                memory_bytes,
            } => {
                if gpu.index == *index {
                    gpu.sliced_bytes += memory_bytes;
                    gpu.observed_free_bytes = gpu
                        .observed_free_bytes
                        .map(|free| free.saturating_sub(*memory_bytes));
                }
            }
        }
    }
}

/// Gives `assignment`'s GPUs back.
pub(super) fn give_back(node: &mut NodeState, assignment: &GpuAssignment) {
    for gpu in &mut node.gpus {
        match assignment {
            GpuAssignment::None => {}
            GpuAssignment::Whole(indices) => {
                if indices.contains(&gpu.index) {
                    gpu.whole_tenant = false;
                }
            }
            GpuAssignment::Slice {
                index,
                memory_bytes,
            } => {
                if gpu.index == *index {
                    gpu.sliced_bytes = gpu.sliced_bytes.saturating_sub(*memory_bytes);
                    let total = gpu.memory_bytes;
                    gpu.observed_free_bytes = gpu
                        .observed_free_bytes
                        .map(|free| (free + memory_bytes).min(total));
                }
            }
        }
    }
}
