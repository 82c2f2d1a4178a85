//! Random: a uniform pick from the request's random bits.

use super::{Backend, RequestFacts, RoutingPolicy};

/// A uniform pick from [`RequestFacts::roll`] (multiply-shift: `roll * len >> 64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Random;

impl RoutingPolicy for Random {
    fn choose(&self, backends: &[Backend], request: &RequestFacts<'_>) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let index = (u128::from(request.roll) * backends.len() as u128) >> 64;
        // Below `len`, so it fits.
        usize::try_from(index).ok()
    }
}
