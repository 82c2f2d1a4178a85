//! Flow control of one service. With `serving.max_concurrency_per_replica`, each ready replica
//! answers at most that many requests at once; the others wait in arrival order in a bounded
//! queue (`queue_size`; one more is refused with 429 and `Retry-After`, and one that waited
//! `queue_timeout_seconds` with 503). A freed place goes to the queue's first request, never to
//! one arriving after it, and requests that find the service starting wait in the same queue.
//! `serving.rate_limit` gives each caller (a user, else an address) a token bucket.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::routes::{Endpoint, ServiceRoutes};
use super::rules::Subset;
use crate::serving::RateLimit;

/// How a request wants its replica chosen (what the routing policy reads).
#[derive(Debug, Clone)]
pub struct Choice {
    /// Its random draw.
    pub roll: u64,
    /// Its sticky key, if any.
    pub affinity: Option<String>,
    /// The service a canary split sends a share to.
    pub canary: Option<Arc<ServiceRoutes>>,
    /// Only these replicas (a routing rule's).
    pub only: Option<Subset>,
}

/// The waiting requests of one service.
#[derive(Debug, Default)]
pub struct Admission {
    queue: Mutex<Queue>,
    /// How many wait, readable without the lock.
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct Queue {
    next_ticket: u64,
    waiting: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    choice: Choice,
    hand: oneshot::Sender<Arc<Endpoint>>,
}

/// A request's place in the queue.
#[derive(Debug)]
pub struct Ticket {
    number: u64,
    /// Where its replica arrives, counted in flight already.
    pub replica: oneshot::Receiver<Arc<Endpoint>>,
}

/// What [`ServiceRoutes::admit`] gives a request.
#[derive(Debug)]
pub enum Entry {
    /// A replica with room, counted in flight for this request.
    Admitted(Arc<Endpoint>),
    /// A place in the queue.
    Queued(Ticket),
    /// The queue is full.
    Full,
}

impl Admission {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many requests wait now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

impl ServiceRoutes {
    /// A ready replica (by the routing policy) with fewer than `limit` requests in flight,
    /// counted in flight for one more request at once.
    pub fn reserve(&self, choice: &Choice, limit: Option<u32>) -> Option<Arc<Endpoint>> {
        let endpoint = self.choose(
            choice.roll,
            choice.affinity.as_deref(),
            choice.canary.as_deref(),
            limit,
            choice.only.as_ref(),
        )?;
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(endpoint)
    }

    /// Lets a request in under `limit` requests per replica: a replica now if one has room and
    /// nobody waits before it, else a place among at most `queue_size` waiting.
    pub fn admit(&self, choice: Choice, limit: u32, queue_size: u32) -> Entry {
        let mut queue = self.admission.lock();
        queue.waiting.retain(|waiter| !waiter.hand.is_closed());
        if queue.waiting.is_empty()
            && let Some(endpoint) = self.reserve(&choice, Some(limit))
        {
            self.counted(&queue);
            return Entry::Admitted(endpoint);
        }
        if queue.waiting.len() >= usize::try_from(queue_size).unwrap_or(usize::MAX) {
            self.counted(&queue);
            return Entry::Full;
        }
        let (hand, replica) = oneshot::channel();
        queue.next_ticket += 1;
        let number = queue.next_ticket;
        queue.waiting.push_back(Waiter {
            ticket: number,
            choice,
            hand,
        });
        self.counted(&queue);
        Entry::Queued(Ticket { number, replica })
    }

    /// Hands the replicas that have room to the waiting requests, first come first served;
    /// called when a request ends, a replica becomes ready or the limit changes.
    pub fn dispatch(&self) {
        if self.admission.waiting() == 0 {
            return;
        }
        let Some(limit) = self.profile().settings.max_concurrency_per_replica else {
            // The limit is gone: everyone waiting goes now, wherever the policy says.
            self.dispatch_under(None);
            return;
        };
        self.dispatch_under(Some(limit));
    }

    fn dispatch_under(&self, limit: Option<u32>) {
        let mut queue = self.admission.lock();
        while let Some(first) = queue.waiting.front() {
            if first.hand.is_closed() {
                queue.waiting.pop_front();
                continue;
            }
            let Some(endpoint) = self.reserve(&first.choice, limit) else {
                break;
            };
            let Some(waiter) = queue.waiting.pop_front() else {
                break;
            };
            if let Err(endpoint) = waiter.hand.send(endpoint) {
                endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.counted(&queue);
    }

    /// Takes `ticket` out of the queue after its wait ran out: the replica handed to it at the
    /// last moment, if one was.
    pub fn leave(&self, mut ticket: Ticket) -> Option<Arc<Endpoint>> {
        let mut queue = self.admission.lock();
        let place = queue
            .waiting
            .iter()
            .position(|waiter| waiter.ticket == ticket.number);
        let handed = match place {
            Some(place) => {
                queue.waiting.remove(place);
                None
            }
            None => ticket.replica.try_recv().ok(),
        };
        self.counted(&queue);
        handed
    }

    fn counted(&self, queue: &Queue) {
        let waiting = queue.waiting.len();
        self.admission.waiting.store(waiting, Ordering::Release);
        if let Some(metrics) = self.metrics_if_used() {
            metrics
                .queue_length
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
    }
}

/// Who a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A user, by a token of theirs.
    User(i64),
    /// A caller without a token, by its address.
    Address(IpAddr),
}

/// Beyond this many callers, buckets that are full again are forgotten.
const BUCKETS_KEPT: usize = 10_000;

/// One token bucket per caller of a service.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<Caller, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Takes one request from `caller`'s bucket under `limit` at `now`; when it is empty, how
    /// long until it holds one again.
    pub fn take(&self, caller: Caller, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(limit.requests_per_second.max(1));
        let burst = f64::from(limit.burst.unwrap_or(limit.requests_per_second).max(1));
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= BUCKETS_KEPT {
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(caller).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if refilled >= 1.0 {
            bucket.tokens = refilled - 1.0;
            Ok(())
        } else {
            bucket.tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate() {
        let limiter = RateLimiter::default();
        let limit = RateLimit {
            requests_per_second: 2,
            burst: Some(3),
        };
        let start = Instant::now();
        let alice = Caller::User(1);
        for _ in 0..3 {
            assert_eq!(limiter.take(alice, limit, start), Ok(()));
        }
        let wait = limiter.take(alice, limit, start).expect_err("empty");
        assert!(
            (wait.as_secs_f64() - 0.5).abs() < 1e-9,
            "one token takes half a second: {wait:?}"
        );
        // Another caller has a bucket of its own.
        assert_eq!(
            limiter.take(Caller::Address([127, 0, 0, 1].into()), limit, start),
            Ok(())
        );
        assert_eq!(
            limiter.take(alice, limit, start + Duration::from_millis(500)),
            Ok(())
        );
        assert!(
            limiter
                .take(alice, limit, start + Duration::from_millis(600))
                .is_err()
        );
    }
}
