//! The gateway's table of routable services: for every service with a port, who owns it, how it
//! is served, and its replicas' addresses with their readiness and requests in flight. The
//! readiness loop ([`super::readiness`]) keeps it in step with the database; requests only read it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_core::routing::{Backend, RequestFacts, RoutingPolicy};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::admission::{Admission, RateLimiter};
use super::feed::ServiceUsage;
use super::rules::Subset;
use crate::metrics::{AnswerLabels, ModelMetrics, ServiceLabels};
use crate::serving::ServingSettings;

/// The wanted state of a service that is unloaded: a request to it loads it.
pub const UNLOADED: &str = "unloaded";

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// What a version of a service says about serving it.
#[derive(Debug)]
pub struct Profile {
    /// Anyone may call it; otherwise only its owner's (or an admin's) token.
    pub public: bool,
    /// The deployment version.
    pub version: i64,
    /// The port it listens on inside its containers.
    pub port: u16,
    /// Routing, probes, warmup and timeouts.
    pub settings: ServingSettings,
    /// The routing policy the settings describe.
    pub policy: Box<dyn RoutingPolicy>,
}

/// One replica's container as the gateway reaches it.
#[derive(Debug)]
pub struct Endpoint {
    /// Which replica.
    pub replica: i64,
    /// Its container.
    pub container_id: String,
    /// Its node.
    pub node_id: i64,
    /// Where its port is published.
    pub address: SocketAddr,
    /// The same, as a URI authority and a `Host` header, made once.
    pub authority: hyper::http::uri::Authority,
    /// `Host` for HTTP/1.1 requests to it.
    pub host: hyper::header::HeaderValue,
    /// Routing weight.
    pub weight: u32,
    /// The deployment version its container was made for.
    pub version: i64,
    /// Its node's labels, as last read.
    node_labels: RwLock<BTreeMap<String, String>>,
    /// Passed its probe and warmup, and its latest probe.
    pub ready: AtomicBool,
    /// Requests it is answering now.
    pub in_flight: AtomicU32,
    /// Requests it answered.
    pub requests: AtomicU64,
    watcher: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Endpoint {
    /// A replica not yet ready.
    pub fn new(
        replica: i64,
        container_id: String,
        node_id: i64,
        address: SocketAddr,
        weight: u32,
    ) -> Self {
        let text = address.to_string();
        Self {
            replica,
            container_id,
            node_id,
            address,
            authority: text
                .parse()
                .unwrap_or_else(|_| hyper::http::uri::Authority::from_static("127.0.0.1")),
            host: hyper::header::HeaderValue::from_str(&text)
                .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("127.0.0.1")),
            weight,
            version: 0,
            node_labels: RwLock::default(),
            ready: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            watcher: std::sync::Mutex::new(None),
        }
    }

    /// The same, made for deployment `version`.
    #[must_use]
    pub fn of_version(mut self, version: i64) -> Self {
        self.version = version;
        self
    }

    /// Records its node's labels (they may change while it runs).
    pub fn set_node_labels(&self, labels: BTreeMap<String, String>) {
        if let Ok(mut current) = self.node_labels.write()
            && *current != labels
        {
            *current = labels;
        }
    }

    /// Its node's labels.
    pub fn node_labels(&self) -> BTreeMap<String, String> {
        self.node_labels
            .read()
            .map(|labels| labels.clone())
            .unwrap_or_default()
    }

    /// Whether its node carries every one of `labels`.
    pub fn node_carries(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_labels.read().is_ok_and(|own| {
            labels
                .iter()
                .all(|(key, value)| own.get(key) == Some(value))
        })
    }

    /// Ties the probe task to this endpoint: it stops when the endpoint is dropped.
    pub fn set_watcher(&self, handle: tokio::task::AbortHandle) {
        if let Ok(mut watcher) = self.watcher.lock() {
            *watcher = Some(handle);
        }
    }

    /// Whether it takes traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Ok(mut watcher) = self.watcher.lock()
            && let Some(handle) = watcher.take()
        {
            handle.abort();
        }
    }
}

/// Request counters of one service, kept across versions and table refreshes.
#[derive(Debug, Default)]
pub struct Usage {
    /// When the gateway began to watch the service, ms since the epoch.
    pub watched_since_ms: u64,
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Requests being answered now.
    pub in_flight: AtomicU32,
    /// When the last request arrived, ms since the epoch (0: never).
    pub last_used_ms: AtomicU64,
    /// When the service was last loaded, ms since the epoch (0: not since the hub started).
    pub loaded_at_ms: AtomicU64,
    /// How long its last load took until a replica was ready, ms.
    pub load_duration_ms: AtomicU64,
    /// Requests that found it unloaded and started it.
    pub cold_starts: AtomicU64,
    /// Prompt tokens of its answers through the OpenAI-compatible front.
    pub prompt_tokens: AtomicU64,
    /// Completion tokens of the same.
    pub completion_tokens: AtomicU64,
    /// The part of `prompt_tokens` already in the stats history.
    prompt_tokens_recorded: AtomicU64,
    /// The part of `completion_tokens` already in the stats history.
    completion_tokens_recorded: AtomicU64,
    /// What gateways elsewhere last reported, by gateway.
    remote: std::sync::Mutex<HashMap<String, Reported>>,
}

/// One gateway's last report of a service ([`super::feed::UsageReport`]).
#[derive(Debug)]
struct Reported {
    at: std::time::Instant,
    counted: ServiceUsage,
}

/// How long a gateway's report of requests in flight holds: a few of its report intervals.
const REPORT_HOLDS: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the counters of a gateway that stopped reporting are remembered.
const REPORTER_FORGOTTEN: std::time::Duration = std::time::Duration::from_secs(600);

impl Usage {
    /// `(prompt, completion)` tokens counted but not yet in the stats history.
    pub fn unrecorded_tokens(&self) -> (u64, u64) {
        let unrecorded = |total: &AtomicU64, recorded: &AtomicU64| {
            total
                .load(Ordering::Acquire)
                .saturating_sub(recorded.load(Ordering::Acquire))
        };
        (
            unrecorded(&self.prompt_tokens, &self.prompt_tokens_recorded),
            unrecorded(&self.completion_tokens, &self.completion_tokens_recorded),
        )
    }

    /// Counts a report of `gateway`: what it answered since its previous report is added to
    /// these counters (everything, when it restarted), and its requests in flight are held.
    pub fn count_remote(&self, gateway: &str, report: &ServiceUsage) {
        let Ok(mut remote) = self.remote.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        remote.retain(|_, reported| now.duration_since(reported.at) < REPORTER_FORGOTTEN);
        let before = remote.get(gateway).map(|reported| &reported.counted);
        let since = |now: u64, before: Option<u64>| match before {
            Some(before) if before <= now => now - before,
            _ => now,
        };
        self.requests.fetch_add(
            since(report.requests, before.map(|before| before.requests)),
            Ordering::Relaxed,
        );
        self.prompt_tokens.fetch_add(
            since(
                report.prompt_tokens,
                before.map(|before| before.prompt_tokens),
            ),
            Ordering::AcqRel,
        );
        self.completion_tokens.fetch_add(
            since(
                report.completion_tokens,
                before.map(|before| before.completion_tokens),
            ),
            Ordering::AcqRel,
        );
        self.last_used_ms
            .fetch_max(report.last_used_ms, Ordering::Relaxed);
        remote.insert(
            gateway.to_owned(),
            Reported {
                at: now,
                counted: report.clone(),
            },
        );
    }

    /// The reports of other gateways that still hold, each through `read`, summed.
    fn remote_sum(&self, read: impl Fn(&ServiceUsage) -> u32) -> u32 {
        let now = std::time::Instant::now();
        self.remote.lock().map_or(0, |remote| {
            remote
                .values()
                .filter(|reported| now.duration_since(reported.at) < REPORT_HOLDS)
                .map(|reported| read(&reported.counted))
                .fold(0, u32::saturating_add)
        })
    }

    /// Requests in flight here and, by their latest reports, at other gateways.
    pub fn in_flight_total(&self) -> u32 {
        self.in_flight
            .load(Ordering::Acquire)
            .saturating_add(self.remote_sum(|usage| usage.in_flight))
    }

    /// Notes that `(prompt, completion)` more tokens are in the stats history.
    pub fn tokens_recorded(&self, (prompt, completion): (u64, u64)) {
        self.prompt_tokens_recorded
            .fetch_add(prompt, Ordering::AcqRel);
        self.completion_tokens_recorded
            .fetch_add(completion, Ordering::AcqRel);
    }
}

/// A routable service.
#[derive(Debug)]
pub struct ServiceRoutes {
    /// Service id.
    pub id: i64,
    /// Owner's user id.
    pub owner_id: i64,
    /// Owner's name (the first path segment).
    pub owner: String,
    /// Service name (the second).
    pub name: String,
    profile: RwLock<Arc<Profile>>,
    wanted: RwLock<String>,
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    /// Replicas taken out of the table while they still answered requests, until they end.
    retiring: RwLock<Vec<Arc<Endpoint>>>,
    /// During a rollout, the previous version's ready replicas: they keep taking requests
    /// beside the new version's until the rollout moves all traffic over.
    outgoing: RwLock<Vec<Arc<Endpoint>>>,
    /// A rollout is under way: ready replicas taken out of the table stay in `outgoing`.
    handing_over: AtomicBool,
    sequence: AtomicU64,
    /// Counters.
    pub usage: Usage,
    /// Bumped whenever a replica becomes ready; requests waiting for a start watch it.
    ready_signal: tokio::sync::watch::Sender<u64>,
    /// Held by the one request that starts an unloaded service; the others wait behind it. It
    /// holds when and why the last start failed, so that requests right after a failure are
    /// refused at once instead of each trying again.
    pub waking: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// Its metric handles, looked up once.
    metrics: OnceLock<ServiceMetrics>,
    /// Requests waiting for a replica with room (`max_concurrency_per_replica`).
    pub admission: Admission,
    /// Each caller's request rate (`rate_limit`).
    pub rate_limiter: RateLimiter,
    /// The table's change counter, once the service is in a table ([`RouteTable::insert`]).
    table_changes: OnceLock<Arc<tokio::sync::watch::Sender<u64>>>,
}

/// One service's metric handles (they share their values with the registered families).
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// `owner/name`.
    pub labels: ServiceLabels,
    /// Requests being answered.
    pub in_flight: Gauge,
    /// Answer durations.
    pub duration: Histogram,
    /// Answers with status 200, the common case.
    pub answered_ok: Counter,
    /// Requests waiting in the queue.
    pub queue_length: Gauge,
    /// How long admitted requests waited in the queue.
    pub queue_wait: Histogram,
}

impl ServiceRoutes {
    /// A service with `profile` and no replicas yet.
    pub fn new(
        id: i64,
        owner_id: i64,
        owner: String,
        name: String,
        wanted: String,
        profile: Profile,
    ) -> Self {
        Self {
            id,
            owner_id,
            owner,
            name,
            profile: RwLock::new(Arc::new(profile)),
            wanted: RwLock::new(wanted),
            endpoints: RwLock::new(Vec::new()),
            retiring: RwLock::new(Vec::new()),
            outgoing: RwLock::new(Vec::new()),
            handing_over: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            usage: Usage {
                watched_since_ms: now_millis(),
                ..Usage::default()
            },
            ready_signal: tokio::sync::watch::Sender::new(0),
            waking: tokio::sync::Mutex::new(None),
            metrics: OnceLock::new(),
            admission: Admission::default(),
            rate_limiter: RateLimiter::default(),
            table_changes: OnceLock::new(),
        }
    }

    /// Tells the table's watchers ([`RouteTable::watch_changes`]) that what the service shows
    /// the gateway changed.
    fn changed(&self) {
        if let Some(changes) = self.table_changes.get() {
            changes.send_modify(|count| *count += 1);
        }
    }

    /// The service's metric handles in `models`.
    pub fn metrics(&self, models: &ModelMetrics) -> &ServiceMetrics {
        self.metrics.get_or_init(|| {
            let labels = ServiceLabels {
                service: format!("{}/{}", self.owner, self.name),
            };
            ServiceMetrics {
                in_flight: models.in_flight.get_or_create(&labels).clone(),
                duration: models.duration.get_or_create(&labels).clone(),
                answered_ok: models
                    .requests
                    .get_or_create(&AnswerLabels {
                        service: labels.service.clone(),
                        status: 200,
                    })
                    .clone(),
                queue_length: models.queue_length.get_or_create(&labels).clone(),
                queue_wait: models.queue_wait.get_or_create(&labels).clone(),
                labels,
            }
        })
    }

    /// The metric handles, once a request looked them up.
    pub fn metrics_if_used(&self) -> Option<&ServiceMetrics> {
        self.metrics.get()
    }

    /// The current profile.
    pub fn profile(&self) -> Arc<Profile> {
        self.profile
            .read()
            .map(|profile| Arc::clone(&profile))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    /// Replaces the profile.
    pub fn set_profile(&self, profile: Profile) {
        if let Ok(mut current) = self.profile.write() {
            *current = Arc::new(profile);
        }
        self.changed();
        self.dispatch();
    }

    /// The service's wanted state (`running`, `unloaded`, `stopped`, …).
    pub fn wanted(&self) -> String {
        self.wanted
            .read()
            .map(|wanted| wanted.clone())
            .unwrap_or_default()
    }

    /// Whether the wanted state is `value`.
    pub fn wanted_is(&self, value: &str) -> bool {
        self.wanted.read().is_ok_and(|wanted| *wanted == value)
    }

    /// Records the wanted state as the database now holds it.
    pub fn set_wanted(&self, wanted: &str) {
        if let Ok(mut current) = self.wanted.write()
            && *current != wanted
        {
            *current = wanted.to_owned();
            drop(current);
            self.changed();
        }
    }

    /// The replicas known now.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .map(|endpoints| endpoints.clone())
            .unwrap_or_default()
    }

    /// Replaces the replicas; one taken out while it answers requests is kept aside until
    /// they end ([`ServiceRoutes::in_flight_on`]).
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        if let Ok(mut current) = self.endpoints.write() {
            let handing_over = self.handing_over.load(Ordering::Acquire);
            let (leaving, gone): (Vec<Arc<Endpoint>>, Vec<Arc<Endpoint>>) = current
                .iter()
                .filter(|old| !endpoints.iter().any(|new| Arc::ptr_eq(new, old)))
                .cloned()
                .partition(|old| handing_over && old.is_ready());
            *current = endpoints;
            if let Ok(mut outgoing) = self.outgoing.write() {
                outgoing.extend(leaving);
            }
            if let Ok(mut retiring) = self.retiring.write() {
                retiring.retain(|endpoint| endpoint.in_flight.load(Ordering::Acquire) > 0);
                retiring.extend(
                    gone.into_iter()
                        .filter(|old| old.in_flight.load(Ordering::Acquire) > 0),
                );
            }
        }
        self.ready_signal.send_modify(|count| *count += 1);
        self.changed();
        self.dispatch();
    }

    /// The previous version's replicas in rotation during a rollout.
    pub fn outgoing(&self) -> Vec<Arc<Endpoint>> {
        self.outgoing
            .read()
            .map(|outgoing| outgoing.clone())
            .unwrap_or_default()
    }

    /// A rollout begins: the previous version's ready replicas keep taking requests until
    /// [`ServiceRoutes::end_handover`].
    pub fn begin_handover(&self) {
        self.handing_over.store(true, Ordering::Release);
        self.changed();
    }

    /// Whether a rollout's handover is under way.
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// Puts the previous version's replicas `endpoints` in rotation beside the new version's
    /// (a rollout the hub carries on after a restart); one already in the table is left.
    pub fn add_outgoing(&self, endpoints: Vec<Arc<Endpoint>>) {
        let current = self.endpoints();
        if let Ok(mut outgoing) = self.outgoing.write() {
            for endpoint in endpoints {
                let known = current
                    .iter()
                    .chain(outgoing.iter())
                    .any(|known| known.container_id == endpoint.container_id);
                if !known {
                    outgoing.push(endpoint);
                }
            }
        }
        self.ready_signal.send_modify(|count| *count += 1);
        self.changed();
    }

    /// The rollout is over: the previous version's replicas take no new requests and finish
    /// the ones they have.
    pub fn end_handover(&self) {
        self.handing_over.store(false, Ordering::Release);
        let leaving: Vec<Arc<Endpoint>> = self
            .outgoing
            .write()
            .map(|mut outgoing| outgoing.drain(..).collect())
            .unwrap_or_default();
        if let Ok(mut retiring) = self.retiring.write() {
            retiring.extend(leaving);
        }
        self.changed();
    }

    /// Takes the previous version's replicas on `containers` out of rotation during a rollout;
    /// they finish the requests they have.
    pub fn stop_outgoing(&self, containers: &[String]) {
        let leaving: Vec<Arc<Endpoint>> = self
            .outgoing
            .write()
            .map(|mut outgoing| {
                let (leaving, staying) = outgoing
                    .drain(..)
                    .partition(|endpoint| containers.contains(&endpoint.container_id));
                *outgoing = staying;
                leaving
            })
            .unwrap_or_default();
        if let Ok(mut retiring) = self.retiring.write() {
            retiring.extend(leaving);
        }
        self.changed();
    }

    /// Requests in flight on the containers `containers`, in the table or taken out of it.
    pub fn in_flight_on(&self, containers: &[String]) -> u32 {
        let count = |endpoints: &[Arc<Endpoint>]| -> u32 {
            endpoints
                .iter()
                .filter(|endpoint| containers.contains(&endpoint.container_id))
                .map(|endpoint| endpoint.in_flight.load(Ordering::Acquire))
                .sum()
        };
        let listed = self
            .endpoints
            .read()
            .map_or(0, |endpoints| count(&endpoints));
        let outgoing = self
            .outgoing
            .read()
            .map_or(0, |endpoints| count(&endpoints));
        let retiring = self
            .retiring
            .read()
            .map_or(0, |endpoints| count(&endpoints));
        let elsewhere = self.usage.remote_sum(|usage| {
            containers
                .iter()
                .filter_map(|container| usage.in_flight_by_container.get(container))
                .fold(0, |sum, count| sum.saturating_add(*count))
        });
        listed + retiring + outgoing.saturating_add(elsewhere)
    }

    /// Waits until no request is in flight on `containers`, at most `limit`; whether they
    /// drained.
    pub async fn drained(&self, containers: &[String], limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while self.in_flight_on(containers) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        true
    }

    /// How many replicas take traffic.
    pub fn ready_count(&self) -> usize {
        self.endpoints()
            .iter()
            .filter(|endpoint| endpoint.is_ready())
            .count()
    }

    /// Marks `endpoint` ready or not; waiting requests hear of a newly ready one.
    pub fn set_ready(&self, endpoint: &Endpoint, ready: bool) {
        let was = endpoint.ready.swap(ready, Ordering::AcqRel);
        if ready != was {
            self.changed();
        }
        if ready && !was {
            self.ready_signal.send_modify(|count| *count += 1);
            self.dispatch();
        }
    }

    /// A receiver that changes whenever a replica becomes ready.
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ready_signal.subscribe()
    }

    /// The ready replicas of this service (and, under a canary split, of the canary service)
    /// with fewer than `limit` requests in flight, among `only` when given: the one the
    /// routing policy gives this request, if any.
    pub fn choose(
        &self,
        roll: u64,
        affinity: Option<&str>,
        canary: Option<&ServiceRoutes>,
        limit: Option<u32>,
        only: Option<&Subset>,
    ) -> Option<Arc<Endpoint>> {
        let profile = self.profile();
        let takes = |endpoint: &Endpoint| {
            endpoint.is_ready()
                && only.is_none_or(|subset| subset.admits(endpoint))
                && limit.is_none_or(|limit| endpoint.in_flight.load(Ordering::Acquire) < limit)
        };
        // During a rollout with a canary split of its own, the new version's replicas are the
        // canary group and the previous version's the rest.
        let split_here = profile
            .settings
            .routing
            .canary
            .as_ref()
            .is_some_and(|split| split.service.is_none())
            && self
                .outgoing
                .read()
                .is_ok_and(|outgoing| !outgoing.is_empty());
        let mut ready: Vec<(Arc<Endpoint>, bool)> = Vec::new();
        if let Ok(endpoints) = self.endpoints.read() {
            ready.extend(
                endpoints
                    .iter()
                    .filter(|endpoint| takes(endpoint))
                    .map(|endpoint| (Arc::clone(endpoint), split_here)),
            );
        }
        if let Ok(outgoing) = self.outgoing.read() {
            ready.extend(
                outgoing
                    .iter()
                    .filter(|endpoint| takes(endpoint))
                    .map(|endpoint| (Arc::clone(endpoint), false)),
            );
        }
        if let Some(canary) = canary {
            ready.extend(
                canary
                    .endpoints()
                    .into_iter()
                    .filter(|endpoint| takes(endpoint))
                    .map(|endpoint| (endpoint, true)),
            );
        }
        let backends: Vec<Backend> = ready
            .iter()
            .map(|(endpoint, canary)| Backend {
                replica: endpoint.replica,
                weight: endpoint.weight,
                in_flight: endpoint.in_flight.load(Ordering::Relaxed),
                canary: *canary,
            })
            .collect();
        let facts = RequestFacts {
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
            roll,
            affinity,
        };
        let index = profile.policy.choose(&backends, &facts)?;
        ready.get(index).map(|(endpoint, _)| Arc::clone(endpoint))
    }
}

/// Every routable service, by id and by owner and name.
#[derive(Debug)]
pub struct RouteTable {
    services: RwLock<HashMap<i64, Arc<ServiceRoutes>>>,
    names: RwLock<HashMap<String, HashMap<String, i64>>>,
    /// Wakes the readiness loop before its next tick (a service was loaded or changed).
    changed: tokio::sync::Notify,
    /// The services changed since the readiness loop last looked: it reads these alone.
    touched: std::sync::Mutex<HashSet<i64>>,
    /// Probes and warms replicas that speak HTTP/2 only (gRPC servers).
    pub http2_probes: reqwest::Client,
    /// Counts changes of what the table shows the gateway: services in or out, their profiles,
    /// wanted states, replicas and readiness.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self {
            services: RwLock::default(),
            names: RwLock::default(),
            changed: tokio::sync::Notify::new(),
            touched: std::sync::Mutex::default(),
            http2_probes: reqwest::Client::builder()
                .http2_prior_knowledge()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl RouteTable {
    /// The service `name` of `owner`.
    pub fn find(&self, owner: &str, name: &str) -> Option<Arc<ServiceRoutes>> {
        let id = *self.names.read().ok()?.get(owner)?.get(name)?;
        self.get(id)
    }

    /// The service `id`.
    pub fn get(&self, id: i64) -> Option<Arc<ServiceRoutes>> {
        self.services.read().ok()?.get(&id).cloned()
    }

    /// Every service.
    pub fn all(&self) -> Vec<Arc<ServiceRoutes>> {
        self.services
            .read()
            .map(|services| services.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds `service`, or keeps the one already there (with its counters) and returns it.
    pub fn insert(&self, service: ServiceRoutes) -> Arc<ServiceRoutes> {
        let Ok(mut services) = self.services.write() else {
            return Arc::new(service);
        };
        let id = service.id;
        let (owner, name) = (service.owner.clone(), service.name.clone());
        let entry = Arc::clone(services.entry(id).or_insert_with(|| {
            let service = Arc::new(service);
            let _ = service.table_changes.set(Arc::clone(&self.changes));
            self.changes.send_modify(|count| *count += 1);
            service
        }));
        if let Ok(mut names) = self.names.write() {
            names.entry(owner).or_default().insert(name, id);
        }
        entry
    }

    /// A receiver that changes whenever what the table shows the gateway does.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Marks service `id` changed (committed) and wakes the readiness loop to read it again.
    pub fn touch(&self, id: i64) {
        if let Ok(mut touched) = self.touched.lock() {
            touched.insert(id);
        }
        self.changed.notify_one();
    }

    /// Waits until a service is touched.
    pub async fn touched(&self) {
        self.changed.notified().await;
    }

    /// The services touched since the last call.
    pub fn take_touched(&self) -> Vec<i64> {
        self.touched
            .lock()
            .map(|mut touched| touched.drain().collect())
            .unwrap_or_default()
    }

    /// Takes service `id` out; the entry, if it was there.
    pub fn remove(&self, id: i64) -> Option<Arc<ServiceRoutes>> {
        let removed = self.services.write().ok()?.remove(&id)?;
        if let Ok(mut names) = self.names.write()
            && let Some(services) = names.get_mut(&removed.owner)
        {
            services.retain(|_, named| *named != id);
            if services.is_empty() {
                names.remove(&removed.owner);
            }
        }
        self.changes.send_modify(|count| *count += 1);
        Some(removed)
    }
}
