//! Least loaded: the backend serving the fewest requests now.

use super::{Backend, RequestFacts, RoutingPolicy, rotate};

/// The backend with the fewest [`Backend::in_flight`]; ties are broken by rotating with
/// [`RequestFacts::sequence`] among the tied ones, so sequential requests with nothing in flight
/// spread evenly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeastLoaded;

impl RoutingPolicy for LeastLoaded {
    fn choose(&self, backends: &[Backend], request: &RequestFacts<'_>) -> Option<usize> {
        let least = backends.iter().map(|backend| backend.in_flight).min()?;
        let tied = backends
            .iter()
            .filter(|backend| backend.in_flight == least)
            .count();
        let nth = rotate(request.sequence, tied)?;
        backends
            .iter()
            .enumerate()
            .filter(|(_, backend)| backend.in_flight == least)
            .nth(nth)
            .map(|(index, _)| index)
    }
}
