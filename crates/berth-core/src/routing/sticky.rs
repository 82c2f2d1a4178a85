//! Sticky: the same key always reaches the same replica, by rendezvous hashing.

use super::{Backend, RequestFacts, RoutingPolicy, rotate};
use crate::seeded::mix;

/// Rendezvous (highest-random-weight) hashing of [`RequestFacts::affinity`] with each backend's
/// [`Backend::replica`]: every backend gets a score `mix(fnv1a_64(key) ^ mix(replica))` and the
/// highest wins. The hash is stable (FNV-1a and SplitMix64's finaliser, no per-process seed), so a
/// key reaches the same replica across runs and processes whatever the order of the backends, and
/// removing a backend moves only the keys that were on it. A request without a key goes round
/// robin by [`RequestFacts::sequence`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sticky;

impl RoutingPolicy for Sticky {
    fn choose(&self, backends: &[Backend], request: &RequestFacts<'_>) -> Option<usize> {
        let Some(key) = request.affinity else {
            return rotate(request.sequence, backends.len());
        };
        let key = fnv1a_64(key.as_bytes());
        backends
            .iter()
            .enumerate()
            // `max_by_key` keeps the last of equal maxima; reversed, that is the first index (ties
            // only happen when a replica is listed twice).
            .rev()
            .max_by_key(|(_, backend)| score(key, backend.replica))
            .map(|(index, _)| index)
    }
}

/// The rendezvous score of `replica` for the key hashed to `key`.
fn score(key: u64, replica: i64) -> u64 {
    mix(key ^ mix(replica as u64))
}

/// FNV-1a, 64 bits.
pub(super) fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}
