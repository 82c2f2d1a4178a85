//! Weighted: deterministic shares of traffic in proportion to each backend's weight.

use super::{Backend, RequestFacts, RoutingPolicy, rotate};

/// Shares in proportion to [`Backend::weight`], exact over every `total weight` consecutive
/// requests: position `sequence % total` is looked up in the cumulative weights. A backend
/// weighing 0 is never chosen unless every weight is 0; then this is round robin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weighted;

impl RoutingPolicy for Weighted {
    fn choose(&self, backends: &[Backend], request: &RequestFacts<'_>) -> Option<usize> {
        // At most `len * u32::MAX`, far below `u64::MAX` for any real slice.
        let total: u64 = backends
            .iter()
            .map(|backend| u64::from(backend.weight))
            .sum();
        if total == 0 {
            return rotate(request.sequence, backends.len());
        }
        let mut position = request.sequence % total;
        for (index, backend) in backends.iter().enumerate() {
            let weight = u64::from(backend.weight);
            if position < weight {
                return Some(index);
            }
            position -= weight;
        }
        // Unreachable: `position < total`, the sum of the weights walked above.
        None
    }
}
