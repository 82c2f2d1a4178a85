//! Round robin: request `n` goes to backend `n % len`.

use super::{Backend, RequestFacts, RoutingPolicy, rotate};

/// Each backend in turn, by [`RequestFacts::sequence`]: exactly even over any whole number of
/// rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundRobin;

impl RoutingPolicy for RoundRobin {
    fn choose(&self, backends: &[Backend], request: &RequestFacts<'_>) -> Option<usize> {
        rotate(request.sequence, backends.len())
    }
}
