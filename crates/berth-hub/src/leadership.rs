//! Which hub leads. Hubs on SQLite are alone: each leads from its start. Hubs on PostgreSQL
//! elect one through the database's lease row ([`berth_store::leases`]): every second each
//! asks for it — the holder renews it, the others take it once it has expired (after
//! [`LeaseSettings::ttl`] without renewal) — so a follower leads within a lease and a second of
//! the leader's death. Only the leader runs the control loops ([`while_leading`]: monitor,
//! reconciler, failover, autoscaler, sampler, idle reclaim, node watches) and carries on the
//! operations an earlier leader left unfinished; every write transaction of an elected hub is
//! fenced by its term ([`berth_store::leases::Fence`]), so a hub that was paused past its lease
//! cannot write once another took over. Followers serve the API (their writes go to the leader,
//! [`crate::api::forward`]), the console and the gateway.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_store::Backend;
use berth_store::leases;
use tokio::sync::watch;

use crate::state::HubState;

/// The lease's settings.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// How often it is renewed (and a follower asks for it).
    pub renew_every: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
        }
    }
}

/// This hub's leadership, as [`HubState::leadership`] publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lead {
    /// The term this hub leads in (0 alone on SQLite); `None` while following.
    pub term: Option<i64>,
    /// When its term began, Unix ms.
    pub since_ms: i64,
    /// Where the leader's API is, when another hub leads.
    pub leader_url: Option<String>,
    /// Whether hubs are elected (PostgreSQL) rather than alone (SQLite).
    pub elected: bool,
}

impl Lead {
    /// Whether this hub leads.
    pub fn leading(&self) -> bool {
        self.term.is_some()
    }
}

/// Keeps this hub's leadership until `shutdown` completes, then gives the lease up. `url` is
/// where other hubs reach this one's API.
pub async fn run(
    state: Arc<HubState>,
    url: String,
    settings: LeaseSettings,
    shutdown: impl Future<Output = ()>,
) {
    if state.store.backend() == Backend::Sqlite {
        state.leadership.send_replace(Lead {
            term: Some(0),
            since_ms: berth_store::now_ms(),
            leader_url: None,
            elected: false,
        });
        shutdown.await;
        return;
    }
    let fence = Arc::clone(state.store.fence());
    fence.arm();
    let ttl_ms = i64::try_from(settings.ttl.as_millis()).unwrap_or(i64::MAX);
    let mut last_renewal: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let asked = match state.store.acquire().await {
            Ok(mut connection) => {
                leases::lead(
                    &mut connection,
                    Backend::Postgres,
                    fence.holder(),
                    &url,
                    ttl_ms,
                )
                .await
            }
            Err(err) => Err(err),
        };
        match asked {
            Ok(Some(held)) => {
                last_renewal = Some(Instant::now());
                if fence.term() != held.term {
                    fence.hold(held.term);
                    tracing::info!(term = held.term, "This hub leads now.");
                    state.metrics.leader_changes.inc();
                }
                publish(
                    &state,
                    Lead {
                        term: Some(held.term),
                        since_ms: held.since,
                        leader_url: None,
                        elected: true,
                    },
                );
            }
            Ok(None) => {
                step_down(&state, &fence, "another hub holds the lease");
                last_renewal = None;
                let leader = match state.store.acquire().await {
                    Ok(mut connection) => leases::leader(&mut connection, Backend::Postgres)
                        .await
                        .ok()
                        .flatten(),
                    Err(_) => None,
                };
                publish(
                    &state,
                    Lead {
                        term: None,
                        since_ms: leader.as_ref().map_or(0, |leader| leader.since),
                        leader_url: leader.map(|leader| leader.url),
                        elected: true,
                    },
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "Asking for the leader lease failed.");
                // Without a renewal for a whole lease, another hub may lead: stop acting.
                if last_renewal.is_none_or(|renewed| renewed.elapsed() >= settings.ttl) {
                    step_down(&state, &fence, "the lease could not be renewed");
                    let following = Lead {
                        term: None,
                        ..state.leadership.borrow().clone()
                    };
                    publish(&state, following);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.renew_every) => {}
            () = &mut shutdown => break,
        }
    }
    if fence.term() != 0
        && let Ok(mut connection) = state.store.acquire().await
    {
        fence.hold(0);
        if let Err(err) = leases::resign(&mut connection, fence.holder()).await {
            tracing::warn!(error = %err, "Giving the leader lease up failed; it lapses by itself.");
        }
    }
}

/// Publishes `now` on [`HubState::leadership`], waking the watchers only when it changed.
fn publish(state: &HubState, now: Lead) {
    state.leadership.send_if_modified(|lead| {
        let changed = *lead != now;
        *lead = now;
        changed
    });
}

fn step_down(state: &HubState, fence: &leases::Fence, why: &str) {
    if fence.term() != 0 {
        tracing::warn!(
            term = fence.term(),
            reason = why,
            "This hub no longer leads."
        );
        fence.hold(0);
        state.metrics.leader_changes.inc();
    }
}

/// A future that completes when the hub stops or leaves the term it led in.
pub type Until = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns [`while_leading`] for `task`.
pub fn spawn_while_leading<Task, Fut>(
    state: &Arc<HubState>,
    stopping: &watch::Receiver<bool>,
    task: Task,
) -> tokio::task::JoinHandle<()>
where
    Task: Fn(Arc<HubState>, Until) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(while_leading(Arc::clone(state), stopping.clone(), task))
}

/// Runs `task` while this hub leads, from each term's start to its end (or the hub's stop,
/// `stopping` turning true), again at the next term; returns once the hub stops.
pub async fn while_leading<Task, Fut>(
    state: Arc<HubState>,
    mut stopping: watch::Receiver<bool>,
    task: Task,
) where
    Task: Fn(Arc<HubState>, Until) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut leadership = state.leadership.subscribe();
    loop {
        let term = tokio::select! {
            lead = leadership.wait_for(Lead::leading) => match lead {
                Ok(lead) => lead.term,
                Err(_) => return,
            },
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        let until: Until = {
            let (mut leadership, mut stopping) = (leadership.clone(), stopping.clone());
            Box::pin(async move {
                tokio::select! {
                    _ = leadership.wait_for(|lead| lead.term != term) => {}
                    _ = stopping.wait_for(|stop| *stop) => {}
                }
            })
        };
        task(Arc::clone(&state), until).await;
        if *stopping.borrow() {
            return;
        }
    }
}

/// How often a follower tells the leader of its gateway's traffic.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// While this hub follows, tells the leading hub every second what its gateway answered
/// ([`berth_gateway::feed::UsageReport`]), as a gateway process does, so that the leader's
/// autoscaler, idle reclaim, drains and token history count the requests served here; returns
/// once the hub stops. `url` (where this hub is reached) names it among the reporters.
pub async fn report_to_leader(
    state: Arc<HubState>,
    url: String,
    mut stopping: watch::Receiver<bool>,
) {
    let reporter = format!("hub {url}#{:x}", berth_gateway::routes::now_millis());
    let mut ticks = tokio::time::interval(REPORT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let leader = {
            let lead = state.leadership.borrow();
            (lead.elected && !lead.leading())
                .then(|| lead.leader_url.clone())
                .flatten()
        };
        let (Some(leader), Some(token)) = (leader, state.peer_token.get()) else {
            continue;
        };
        let report = berth_gateway::feed::usage_of(&state.routes, &reporter);
        let sent = state
            .leader_http
            .post(format!("{leader}/api/gateway/usage"))
            .bearer_auth(token)
            .json(&report)
            .timeout(REPORT_EVERY * 5)
            .send()
            .await;
        if let Err(err) = sent {
            tracing::debug!(%leader, error = %err, "A usage report did not reach the leader.");
        }
    }
}
