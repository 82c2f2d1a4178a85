//! The hub's shared state: the store, secrets, metrics, settings, one connection per node, each
//! watched node's container mirror, each node's failure-detector record, the gateway's route table, and the services a handler or loop
//! is changing right now.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::schedule::{Options, Policy};
use berth_docker::ContainerDetails;
use berth_docker::mirror::ContainerMirror;
use berth_http::Problem;
use berth_store::nodes::NodeRecord;
use berth_store::{SecretBox, Store, StoreError, allocations};

use crate::metrics::HubMetrics;
use crate::node_client::{ContainerState, NodeClient};
use crate::simulation::{SIMULATED_DRIVER, SimulatedFleet};
use berth_gateway::routes::RouteTable;

/// Settings the hub runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// How often the monitor tests every node.
    pub monitor_interval: Duration,
    /// Services a user may own unless their quota says otherwise.
    pub max_services_per_user: i64,
    /// Consecutive failed checks after which a node may be declared down.
    pub failure_threshold: u32,
    /// How long a node's checks must keep failing before it is down and its services move
    /// (and at least `failure_threshold` of them): a shorter blip moves nothing.
    pub failure_window: Duration,
    /// How long a down node's checks must keep passing before it is up again: a node that
    /// flaps is not declared back on one good answer.
    pub recovery_window: Duration,
    /// How the scheduler chooses among feasible nodes.
    pub placement_policy: Policy,
    /// Containers a node takes when it does not say (`MAX_CONTAINERS` of an agent).
    pub default_max_containers: u32,
    /// Model services loaded at once per node; loading one more unloads the least recently used
    /// idle one. 0: no limit.
    pub max_models_per_node: u32,
    /// With a domain, the gateway also routes `{service}.{user}.{domain}` by host.
    pub service_domain: Option<String>,
    /// A placement that does not fit may evict the least recently used idle model services.
    pub evict_idle_for_capacity: bool,
    /// Between two samples of every running service's resource use; zero: no sampling.
    pub stats_interval: Duration,
    /// Images that serve seed 004's model files, by name.
    pub model_runtimes: std::collections::BTreeMap<String, crate::model_file::ModelRuntime>,
    /// Host directories a user's model file may mount from.
    pub model_roots: Vec<String>,
    /// Seed 000's `service_idle_timeout`: the idle timeout of services with a port that set
    /// neither their own nor an autoscale.
    pub service_idle_timeout: Option<Duration>,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            monitor_interval: Duration::from_secs(3),
            max_services_per_user: 5,
            failure_threshold: 3,
            failure_window: Duration::from_secs(3),
            recovery_window: Duration::from_secs(2),
            placement_policy: Policy::Spread,
            default_max_containers: 100,
            max_models_per_node: 0,
            service_domain: None,
            evict_idle_for_capacity: false,
            stats_interval: Duration::from_secs(10),
            model_runtimes: std::collections::BTreeMap::new(),
            model_roots: Vec::new(),
            service_idle_timeout: None,
        }
    }
}

/// The failure detector's record of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeHealth {
    /// Checks failed in a row.
    pub consecutive_failures: u32,
    /// When the current run of failed checks began.
    pub failing_since: Option<Instant>,
    /// When the current run of passed checks of a down node began.
    pub passing_since: Option<Instant>,
    /// Declared down and not yet back.
    pub down: bool,
}

impl NodeHealth {
    /// Failed its last check and not (yet) declared down: being confirmed.
    pub fn is_failing(&self) -> bool {
        self.consecutive_failures > 0 && !self.down
    }
}

/// What every handler and background loop can reach.
pub struct HubState {
    /// The database.
    pub store: Store,
    /// Seals and opens secrets.
    pub secrets: SecretBox,
    /// HTTP client for agents.
    pub http: reqwest::Client,
    /// Prometheus metrics.
    pub metrics: HubMetrics,
    /// Settings; replaced whole when the configuration file is reloaded.
    settings: std::sync::RwLock<Arc<HubSettings>>,
    /// Marks this hub's containers (`berth.hub`), so that hubs sharing an engine leave each
    /// other's alone.
    pub hub_id: String,
    /// The failure detector, per node id.
    pub health: std::sync::Mutex<HashMap<i64, NodeHealth>>,
    /// Services being changed by a request or a loop; the reconciler leaves them alone.
    busy: std::sync::Mutex<HashSet<i64>>,
    /// Services whose last repair failed: failures so far and when to try again.
    retries: std::sync::Mutex<HashMap<i64, (u32, Instant)>>,
    /// The gateway's routable services and their replicas.
    pub routes: RouteTable,
    /// Where the gateway listens, once it does (for the URLs the console shows).
    pub gateway_address: std::sync::OnceLock<std::net::SocketAddr>,
    /// This hub's leadership ([`crate::leadership`]).
    pub leadership: tokio::sync::watch::Sender<crate::leadership::Lead>,
    /// The token this hub asks the leading hub with when it follows (its gateway's wake-ups).
    pub peer_token: std::sync::OnceLock<String>,
    /// The client that forwards a follower's writes to the leader (no overall timeout: a
    /// change may wait for its operation).
    pub leader_http: reqwest::Client,
    /// The hub's PKI directory (`DATA_DIR/pki`), whose CA signs joining agents' certificates.
    pub pki_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// Whether the gateway serves TLS (its URLs are `https`).
    pub gateway_over_tls: std::sync::atomic::AtomicBool,
    /// Simulated nodes (driver `simulated`), for scenarios; empty otherwise.
    pub fleet: Arc<SimulatedFleet>,
    /// The id of every operation whose row changed, for waiters and live streams.
    pub operation_events: tokio::sync::broadcast::Sender<i64>,
    /// The scheduler's snapshot that creates place on, kept between creates; held while a
    /// create places its replicas and records them, so two creates never count the same free
    /// capacity.
    pub placing: tokio::sync::Mutex<Option<crate::scheduling::PlacementCache>>,
    /// Creates waiting to be committed together, by whoever holds `placing` next.
    pub create_queue: crate::create_commit::CreateQueue,
    /// Counts changes of placements or nodes made outside creates; a snapshot taken before the
    /// latest is rebuilt.
    placements_version: std::sync::atomic::AtomicU64,
    /// The latest operation that changed each service's wanted state.
    latest_changes: std::sync::Mutex<HashMap<i64, i64>>,
    /// One connection per node, kept until the node's record changes.
    node_clients: tokio::sync::Mutex<HashMap<i64, (i64, Arc<NodeClient>)>>,
    /// Nodes the monitor is probing to confirm a failure.
    confirming: std::sync::Mutex<HashSet<i64>>,
    /// Each watched node's copy of this hub's containers ([`crate::node_watch`]).
    mirrors: std::sync::RwLock<HashMap<i64, Arc<ContainerMirror>>>,
    /// The rollouts under way, and what their owners told them (pause, resume, promote, abort).
    pub rollouts: crate::rollout::Controls,
    /// When this hub process started, Unix ms: an operation from before was left by an earlier
    /// run.
    pub started_at_ms: i64,
}

/// Holds a service for one change; released when dropped.
pub struct ServiceClaim<'a> {
    state: &'a HubState,
    service_id: i64,
}

impl Drop for ServiceClaim<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.state.busy.lock() {
            busy.remove(&self.service_id);
        }
    }
}

impl HubState {
    /// State over an open store.
    pub async fn new(
        store: Store,
        secrets: SecretBox,
        settings: HubSettings,
    ) -> Result<Self, StoreError> {
        let hub_id = allocations::hub_id(&mut *store.acquire().await?).await?;
        // Hubs on PostgreSQL are elected from their start: until the first election a hub
        // follows no known leader, it is not alone.
        let leadership = crate::leadership::Lead {
            elected: store.backend() == berth_store::Backend::Postgres,
            ..crate::leadership::Lead::default()
        };
        let http = reqwest::Client::builder()
            .connect_timeout(berth_core::timeouts::AGENT_CONNECT)
            .timeout(berth_core::timeouts::AGENT_CALL)
            .build()
            .unwrap_or_default();
        Ok(Self {
            store,
            secrets,
            http,
            metrics: HubMetrics::new(),
            settings: std::sync::RwLock::new(Arc::new(settings)),
            hub_id,
            health: Default::default(),
            busy: Default::default(),
            retries: Default::default(),
            routes: RouteTable::default(),
            gateway_address: Default::default(),
            gateway_over_tls: Default::default(),
            pki_dir: Default::default(),
            leadership: tokio::sync::watch::Sender::new(leadership),
            peer_token: Default::default(),
            leader_http: reqwest::Client::builder()
                .connect_timeout(berth_core::timeouts::AGENT_CONNECT)
                .build()
                .unwrap_or_default(),
            fleet: Default::default(),
            operation_events: tokio::sync::broadcast::channel(1024).0,
            placing: Default::default(),
            create_queue: Default::default(),
            placements_version: Default::default(),
            latest_changes: Default::default(),
            node_clients: Default::default(),
            mirrors: Default::default(),
            rollouts: Default::default(),
            started_at_ms: berth_store::now_ms(),
            confirming: Default::default(),
        })
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<HubSettings> {
        match self.settings.read() {
            Ok(settings) => Arc::clone(&settings),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `settings` in force for everything that reads them from now on.
    pub fn replace_settings(&self, settings: HubSettings) {
        if let Ok(mut current) = self.settings.write() {
            *current = Arc::new(settings);
        }
    }

    /// Claims `service_id` for one change, or `None` while someone else changes it.
    pub fn claim(&self, service_id: i64) -> Option<ServiceClaim<'_>> {
        let mut busy = self.busy.lock().ok()?;
        // Lazily: a claim made and dropped here would release the holder's claim.
        busy.insert(service_id).then(|| ServiceClaim {
            state: self,
            service_id,
        })
    }

    /// Notes that placements or nodes changed outside a create (a move, a removal, a node
    /// going down or coming back, a node's record): the next create rebuilds its snapshot.
    pub fn placements_changed(&self) {
        self.placements_version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// The count of [`Self::placements_changed`] so far.
    pub fn placements_version(&self) -> u64 {
        self.placements_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Announces that operation `id`'s row changed.
    pub fn operation_changed(&self, id: i64) {
        // No receiver is fine: nobody waits.
        let _ = self.operation_events.send(id);
    }

    /// Notes that operation `operation` changed `service_id`'s wanted state.
    pub fn note_change(&self, service_id: i64, operation: i64) {
        if let Ok(mut latest) = self.latest_changes.lock() {
            let entry = latest.entry(service_id).or_insert(operation);
            *entry = (*entry).max(operation);
        }
    }

    /// The latest operation noted as changing `service_id`'s wanted state.
    pub fn latest_change(&self, service_id: i64) -> Option<i64> {
        self.latest_changes
            .lock()
            .ok()
            .and_then(|latest| latest.get(&service_id).copied())
    }

    /// The scheduler's options from the settings.
    pub fn scheduler_options(&self) -> Options {
        Options {
            policy: self.settings().placement_policy,
            ..Options::default()
        }
    }

    /// Whether a request or loop is changing `service_id` now.
    pub fn is_busy(&self, service_id: i64) -> bool {
        self.busy
            .lock()
            .map(|busy| busy.contains(&service_id))
            .unwrap_or(false)
    }

    /// Whether a repair of `service_id` may be tried now (no failure, or its backoff passed).
    pub fn may_retry(&self, service_id: i64) -> bool {
        self.retries.lock().map_or(true, |retries| {
            retries
                .get(&service_id)
                .is_none_or(|(_, next)| Instant::now() >= *next)
        })
    }

    /// How many services' last repair failed (waiting to be tried again).
    pub fn failing_repairs(&self) -> usize {
        self.retries.lock().map_or(0, |retries| retries.len())
    }

    /// Records the outcome of a repair of `service_id`: a failure doubles the wait before the
    /// next try (from one monitor interval up to five minutes); a success forgets the failures.
    pub fn repaired(&self, service_id: i64, succeeded: bool) {
        let Ok(mut retries) = self.retries.lock() else {
            return;
        };
        if succeeded {
            retries.remove(&service_id);
            return;
        }
        let failures = retries
            .get(&service_id)
            .map_or(0, |(failures, _)| *failures)
            + 1;
        let wait = self
            .settings()
            .monitor_interval
            .saturating_mul(1 << failures.min(10))
            .min(Duration::from_secs(300));
        retries.insert(service_id, (failures, Instant::now() + wait));
    }

    /// Feeds one check of `node_id` to the failure detector. Returns `Some(false)` when this
    /// failure makes the node down (`failure_threshold` failures in a row, failing for
    /// `failure_window`), `Some(true)` when this pass brings a down node back (passing for
    /// `recovery_window`), `None` otherwise: a short blip changes nothing either way.
    pub fn record_check(&self, node_id: i64, passed: bool) -> Option<bool> {
        self.record_check_at(node_id, passed, Instant::now())
    }

    /// [`record_check`](Self::record_check) of a check that ended at `now`.
    pub fn record_check_at(&self, node_id: i64, passed: bool, now: Instant) -> Option<bool> {
        let settings = self.settings();
        let mut health = self.health.lock().ok()?;
        let record = health.entry(node_id).or_default();
        if passed {
            record.consecutive_failures = 0;
            record.failing_since = None;
            if !record.down {
                return None;
            }
            let since = *record.passing_since.get_or_insert(now);
            if now.saturating_duration_since(since) < settings.recovery_window {
                return None;
            }
            record.down = false;
            record.passing_since = None;
            return Some(true);
        }
        record.passing_since = None;
        record.consecutive_failures = record.consecutive_failures.saturating_add(1);
        let since = *record.failing_since.get_or_insert(now);
        let persisted = now.saturating_duration_since(since) >= settings.failure_window;
        if !record.down
            && persisted
            && record.consecutive_failures >= settings.failure_threshold.max(1)
        {
            record.down = true;
            return Some(false);
        }
        None
    }

    /// Whether `node_id` failed its last check and is not (yet) held down: the failure
    /// detector is confirming it.
    pub fn is_failing(&self, node_id: i64) -> bool {
        self.health
            .lock()
            .map(|health| health.get(&node_id).is_some_and(NodeHealth::is_failing))
            .unwrap_or(false)
    }

    /// Nodes that failed their last check and are not held down yet.
    pub fn failing_nodes(&self) -> Vec<i64> {
        self.health
            .lock()
            .map(|health| {
                health
                    .iter()
                    .filter(|(_, record)| record.is_failing())
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks `node_id` as being confirmed; false when it already is.
    pub fn start_confirming(&self, node_id: i64) -> bool {
        self.confirming
            .lock()
            .map(|mut confirming| confirming.insert(node_id))
            .unwrap_or(false)
    }

    /// Ends the confirmation of `node_id`.
    pub fn stop_confirming(&self, node_id: i64) {
        if let Ok(mut confirming) = self.confirming.lock() {
            confirming.remove(&node_id);
        }
    }

    /// Whether the failure detector holds `node_id` down.
    pub fn is_down(&self, node_id: i64) -> bool {
        self.health
            .lock()
            .map(|health| health.get(&node_id).is_some_and(|record| record.down))
            .unwrap_or(false)
    }

    /// The copy of this hub's containers on `node`, while it follows the node's engine.
    pub fn mirror_of(&self, node: i64) -> Option<Arc<ContainerMirror>> {
        let mirrors = self
            .mirrors
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        mirrors
            .get(&node)
            .filter(|mirror| mirror.is_synced())
            .cloned()
    }

    /// How many node mirrors follow their node, how many do not, and the differences their
    /// periodic re-lists found.
    pub fn mirror_counts(&self) -> (i64, i64, i64) {
        let mirrors = self
            .mirrors
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        mirrors
            .values()
            .fold((0, 0, 0), |(following, lost, differences), mirror| {
                let found = i64::try_from(mirror.differences_found()).unwrap_or(i64::MAX);
                if mirror.is_synced() {
                    (following + 1, lost, differences + found)
                } else {
                    (following, lost + 1, differences + found)
                }
            })
    }

    /// Keeps `mirror` as node `node`'s copy.
    pub fn keep_mirror(&self, node: i64, mirror: Arc<ContainerMirror>) {
        self.mirrors
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(node, mirror);
    }

    /// Drops node `node`'s copy.
    pub fn forget_mirror(&self, node: i64) {
        self.mirrors
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&node);
    }

    /// Container `id` on `node` as its mirror shows it, or as the node answers when the mirror
    /// does not hold it (or the node is not mirrored).
    pub async fn container_state(
        &self,
        node: &NodeRecord,
        id: &str,
    ) -> Result<ContainerState, Problem> {
        match self.mirrored_state(node.id, id) {
            Some(Some(container)) => Ok(container),
            _ => self.node_client(node).await?.state(id).await,
        }
    }

    /// Container `id` on node `node_id` by the node's mirror alone: `None` when the node is not
    /// mirrored (or its mirror does not follow it now), `Some(None)` when the mirror has no
    /// such container.
    pub fn mirrored_state(&self, node_id: i64, id: &str) -> Option<Option<ContainerState>> {
        let mirror = self.mirror_of(node_id)?;
        Some(
            mirror
                .get(id)
                .map(|inspected| ContainerState::from(ContainerDetails::from(&*inspected))),
        )
    }

    /// The connection to `node`: the kept one while the node's record is unchanged, else a new one.
    pub async fn node_client(&self, node: &NodeRecord) -> Result<Arc<NodeClient>, Problem> {
        if let Some((version, client)) = self.node_clients.lock().await.get(&node.id)
            && *version == node.updated_at
        {
            return Ok(Arc::clone(client));
        }
        // Connect without holding the lock: an unreachable node must not stall the others.
        let client = if node.driver == SIMULATED_DRIVER {
            Arc::new(NodeClient::Simulated {
                fleet: Arc::clone(&self.fleet),
                node: node.id,
            })
        } else {
            Arc::new(NodeClient::connect(node, &self.secrets, &self.http).await?)
        };
        self.node_clients
            .lock()
            .await
            .insert(node.id, (node.updated_at, Arc::clone(&client)));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn state(threshold: u32) -> HubState {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir =
            std::env::temp_dir().join(format!("berth-state-{}-{threshold}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let store = Store::connect(&format!("sqlite://{}", dir.join("berth.db").display()))
            .await
            .expect("store");
        let secrets = SecretBox::load_or_create(None, &dir.join("secret.key")).expect("key");
        let settings = HubSettings {
            failure_threshold: threshold,
            failure_window: Duration::ZERO,
            recovery_window: Duration::ZERO,
            ..HubSettings::default()
        };
        HubState::new(store, secrets, settings)
            .await
            .expect("state")
    }

    #[tokio::test]
    async fn a_node_is_down_after_the_threshold_of_failures_in_a_row_and_up_on_one_pass() {
        let state = state(3).await;
        assert_eq!(state.record_check(7, false), None);
        assert_eq!(state.record_check(7, false), None);
        assert_eq!(state.record_check(7, true), None, "a pass resets the count");
        assert_eq!(state.record_check(7, false), None);
        assert_eq!(state.record_check(7, false), None);
        assert!(!state.is_down(7));
        assert_eq!(
            state.record_check(7, false),
            Some(false),
            "third in a row: down"
        );
        assert!(state.is_down(7));
        assert_eq!(state.record_check(7, false), None, "down once");
        assert_eq!(state.record_check(7, true), Some(true), "back");
        assert!(!state.is_down(7));
        assert!(!state.is_down(8), "never checked is not down");
    }

    #[tokio::test]
    async fn a_node_is_down_only_after_failing_for_the_window_and_up_after_passing_for_one() {
        let state = state(3).await;
        state.replace_settings(HubSettings {
            failure_window: Duration::from_secs(3),
            recovery_window: Duration::from_secs(2),
            ..(*state.settings()).clone()
        });
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        // A 2 s blip: five failed probes, then a pass. Nothing moves.
        for millis in [0, 500, 1000, 1500, 2000] {
            assert_eq!(state.record_check_at(4, false, at(millis)), None);
        }
        assert!(state.is_failing(4));
        assert_eq!(state.record_check_at(4, true, at(2500)), None);
        assert!(!state.is_failing(4) && !state.is_down(4));
        // Failing for 3 s: down at the first failure past the window.
        for millis in [3000, 3500, 4000, 4500, 5000, 5500] {
            assert_eq!(
                state.record_check_at(4, false, at(millis)),
                None,
                "{millis}"
            );
        }
        assert_eq!(state.record_check_at(4, false, at(6000)), Some(false));
        assert!(state.is_down(4));
        // Back only after passing for 2 s; a failure in between starts the count again.
        assert_eq!(state.record_check_at(4, true, at(7000)), None);
        assert_eq!(state.record_check_at(4, true, at(8000)), None);
        assert_eq!(state.record_check_at(4, false, at(8500)), None);
        assert_eq!(state.record_check_at(4, true, at(9000)), None);
        assert_eq!(state.record_check_at(4, true, at(10_500)), None);
        assert!(state.is_down(4), "still down after 1.5 s of passes");
        assert_eq!(state.record_check_at(4, true, at(11_000)), Some(true));
        assert!(!state.is_down(4));
    }

    #[tokio::test]
    async fn claims_are_exclusive_and_repairs_back_off() {
        let state = state(1).await;
        let claim = state.claim(5).expect("free");
        assert!(state.claim(5).is_none(), "held");
        assert!(state.is_busy(5));
        drop(claim);
        assert!(state.claim(5).is_some(), "released on drop");
        assert!(state.may_retry(9));
        state.repaired(9, false);
        assert!(!state.may_retry(9), "waits after a failure");
        state.repaired(9, true);
        assert!(state.may_retry(9), "a success forgets");
    }
}
