//! Canary: a share of requests goes to the canary group, the rest to the other replicas.

use super::{Backend, RequestFacts, RoutingPolicy};
use crate::seeded::mix;

/// Sends `percent` of requests to the backends with [`Backend::canary`] set and the rest to the
/// others, then lets `inner` choose within that group.
///
/// The split reads `roll % 100 < percent`; `inner` sees the same request with `roll` replaced by
/// `mix(roll)`, so its own randomness is independent of the split. When the chosen group is empty
/// (no canary deployed yet, or only canaries left) every backend is offered instead.
#[derive(Debug)]
pub struct Canary {
    /// Share of requests for the canary group, `0..=100` (above 100 counts as 100).
    pub percent: u8,
    /// The policy that chooses within the group.
    pub inner: Box<dyn RoutingPolicy>,
}

impl RoutingPolicy for Canary {
    fn choose(&self, backends: &[Backend], request: &RequestFacts<'_>) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let to_canary = request.roll % 100 < u64::from(self.percent);
        let inner_request = RequestFacts {
            roll: mix(request.roll),
            ..*request
        };
        let group: Vec<usize> = backends
            .iter()
            .enumerate()
            .filter(|(_, backend)| backend.canary == to_canary)
            .map(|(index, _)| index)
            .collect();
        if group.is_empty() {
            return self.inner.choose(backends, &inner_request);
        }
        let members: Vec<Backend> = group.iter().map(|index| backends[*index]).collect();
        let chosen = self.inner.choose(&members, &inner_request)?;
        group.get(chosen).copied()
    }
}
