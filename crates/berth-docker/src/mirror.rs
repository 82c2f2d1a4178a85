//! A live copy of the engine's containers that carry one label, kept from the engine's event
//! stream instead of asking the engine on every read.
//!
//! [`follow`] lists the labelled containers once (each inspected), then applies the engine's
//! `/events` (container events with the label) in order: every event re-inspects its container
//! (a destroy removes it), so the copy holds what an inspect answers — state, exit code, OOM,
//! health, published ports, times. When the stream breaks it lists again and replaces the copy;
//! every `resync_every` it lists again too and counts each difference it finds (there should be
//! none). Readers ask [`ContainerMirror`] (a lock held for a copy of an `Arc`), and every applied
//! change gets a sequence number, is kept in a bounded journal and is broadcast, so a subscriber
//! can resume from the last number it saw — or learns it must take a snapshot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, EventMessage};
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::{broadcast, watch};

use crate::{DockerDriver, DriverError};

/// One container as the engine's inspect described it.
pub type Inspected = Arc<ContainerInspectResponse>;

/// How many changes the journal keeps for subscribers that resume.
const JOURNAL: usize = 1024;
/// How many changes a live subscriber may fall behind before it is told it lagged (and must
/// take a snapshot). Each slot is allocated up front, so it stays small.
const BROADCAST: usize = 256;

/// The longest wait between attempts to reach an engine that does not answer, in `retry`s.
pub const MAX_RETRY_FACTOR: u32 = 32;

/// How long a difference a periodic list found may wait for the events on their way before
/// it counts.
const SETTLE: Duration = Duration::from_secs(2);

/// Engine actions that do not change what an inspect says about a container.
const QUIET_ACTIONS: &[&str] = &[
    "attach",
    "detach",
    "resize",
    "top",
    "archive-path",
    "extract-to-dir",
    "copy",
    "export",
    "commit",
    "exec_create",
    "exec_start",
    "exec_die",
    "exec_detach",
];

/// One applied change of the copy.
#[derive(Debug, Clone)]
pub struct MirrorChange {
    /// Its place in the order of changes, from 1.
    pub seq: u64,
    /// The engine's action (`create`, `start`, `die`, `destroy`, `health_status: healthy`, …),
    /// or `resync` for a difference a re-list found.
    pub action: String,
    /// The container's id.
    pub id: String,
    /// The container after the change; `None` when it is gone.
    pub container: Option<Inspected>,
}

/// The copy itself.
#[derive(Default)]
struct View {
    containers: HashMap<String, Inspected>,
    seq: u64,
    journal: VecDeque<MirrorChange>,
}

/// The in-memory copy of one engine's containers with a label.
pub struct ContainerMirror {
    label: String,
    view: RwLock<View>,
    changes: broadcast::Sender<MirrorChange>,
    synced: watch::Sender<bool>,
    differences: AtomicU64,
}

impl std::fmt::Debug for ContainerMirror {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ContainerMirror")
            .field("label", &self.label)
            .field("seq", &self.seq())
            .field("synced", &self.is_synced())
            .finish_non_exhaustive()
    }
}

impl ContainerMirror {
    /// An empty copy of the containers carrying `label` (`key=value`, or `key` for any value);
    /// [`follow`] fills it.
    pub fn new(label: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            label: label.into(),
            view: RwLock::new(View::default()),
            changes: broadcast::channel(BROADCAST).0,
            synced: watch::Sender::new(false),
            differences: AtomicU64::new(0),
        })
    }

    /// The label the copy follows.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every container, ordered by name.
    pub fn containers(&self) -> Vec<Inspected> {
        self.snapshot().1
    }

    /// The last change's number and every container, ordered by name, as of that change.
    pub fn snapshot(&self) -> (u64, Vec<Inspected>) {
        let view = self.read();
        let seq = view.seq;
        let mut containers: Vec<Inspected> = view.containers.values().cloned().collect();
        drop(view);
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        (seq, containers)
    }

    /// The container with this full id, name (with or without `/`) or unique id prefix.
    pub fn get(&self, reference: &str) -> Option<Inspected> {
        let view = self.read();
        if let Some(container) = view.containers.get(reference) {
            return Some(Arc::clone(container));
        }
        // A full id the copy does not hold names nothing else: no scan.
        if reference.len() == 64 && reference.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        let name = reference.trim_start_matches('/');
        let mut by_prefix = None;
        for container in view.containers.values() {
            if container
                .name
                .as_deref()
                .map(|own| own.trim_start_matches('/'))
                == Some(name)
            {
                return Some(Arc::clone(container));
            }
            if reference.len() >= 4
                && container
                    .id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(reference))
            {
                if by_prefix.is_some() {
                    return None;
                }
                by_prefix = Some(Arc::clone(container));
            }
        }
        by_prefix
    }

    /// The number of the last change (0 before the first).
    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    /// Whether the copy follows the engine now (listed and its event stream open).
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Follows whether the copy follows its source: `false` as soon as its stream breaks.
    pub fn sync_changes(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    fn set_synced(&self, synced: bool) {
        self.synced.send_if_modified(|current| {
            let changed = *current != synced;
            *current = synced;
            changed
        });
    }

    /// How many differences the periodic re-lists found between the copy and the engine.
    pub fn differences_found(&self) -> u64 {
        self.differences.load(Ordering::Relaxed)
    }

    /// The changes after `seq`, in order; `None` when the journal no longer holds them all
    /// (take a [`snapshot`](Self::snapshot) instead).
    pub fn since(&self, seq: u64) -> Option<Vec<MirrorChange>> {
        let view = self.read();
        if seq > view.seq {
            return None;
        }
        let oldest = view
            .journal
            .front()
            .map_or(view.seq + 1, |change| change.seq);
        if seq + 1 < oldest {
            return None;
        }
        Some(
            view.journal
                .iter()
                .filter(|change| change.seq > seq)
                .cloned()
                .collect(),
        )
    }

    /// Every change from now on. Subscribe first, then read [`since`](Self::since) or
    /// [`snapshot`](Self::snapshot), and skip what was already seen by its `seq`.
    pub fn subscribe(&self) -> broadcast::Receiver<MirrorChange> {
        self.changes.subscribe()
    }

    /// Puts a container the caller just inspected into the copy without recording a change: a
    /// read after the caller's own write sees it; the engine's event records the change.
    pub fn remember(&self, container: ContainerInspectResponse) {
        if let Some(id) = container.id.clone() {
            self.write().containers.insert(id, Arc::new(container));
        }
    }

    /// Takes a container the caller just removed out of the copy without recording a change.
    pub fn forget(&self, id: &str) {
        self.write().containers.remove(id);
    }

    /// Applies a change reported by another source than [`follow`] (an agent's event
    /// stream): journals and broadcasts it.
    pub fn apply(&self, action: &str, id: &str, container: Option<ContainerInspectResponse>) {
        self.record(action, id, container.map(Arc::new));
    }

    /// Replaces the copy with a full list from another source than [`follow`], recording a
    /// `resync` change for each container that differs, and marks the copy as following;
    /// how many differed.
    pub fn replace_with(&self, listed: Vec<ContainerInspectResponse>) -> usize {
        let listed: HashMap<String, Inspected> = listed
            .into_iter()
            .filter_map(|container| Some((container.id.clone()?, Arc::new(container))))
            .collect();
        let found = self.replace(&listed);
        self.set_synced(true);
        found
    }

    /// Marks the copy as no longer following its source (its stream broke).
    pub fn lost(&self) {
        self.set_synced(false);
    }

    /// Applies one change under the lock, journals and broadcasts it.
    fn record(&self, action: &str, id: &str, container: Option<Inspected>) {
        let mut view = self.write();
        match &container {
            Some(container) => view.containers.insert(id.to_owned(), Arc::clone(container)),
            None => view.containers.remove(id),
        };
        view.seq += 1;
        let change = MirrorChange {
            seq: view.seq,
            action: action.to_owned(),
            id: id.to_owned(),
            container,
        };
        if view.journal.len() == JOURNAL {
            view.journal.pop_front();
        }
        view.journal.push_back(change.clone());
        // Sent under the lock, so subscribers receive changes in their order.
        let _ = self.changes.send(change);
    }

    /// The containers on which a list and the copy disagree, by id, with what the list found
    /// (`None`: the list does not have it).
    fn differing(&self, listed: &HashMap<String, Inspected>) -> Vec<(String, Option<Inspected>)> {
        let view = self.read();
        let mut differing: Vec<(String, Option<Inspected>)> = listed
            .iter()
            .filter(|(id, container)| {
                !view
                    .containers
                    .get(*id)
                    .is_some_and(|held| same_state(held, container))
            })
            .map(|(id, container)| (id.clone(), Some(Arc::clone(container))))
            .collect();
        differing.extend(
            view.containers
                .keys()
                .filter(|id| !listed.contains_key(*id))
                .map(|id| (id.clone(), None)),
        );
        drop(view);
        differing.sort_by(|a, b| a.0.cmp(&b.0));
        differing
    }

    /// Whether the copy holds `container` for `id` as it is (both `None`: both without it).
    fn holds(&self, id: &str, container: Option<&Inspected>) -> bool {
        match (self.read().containers.get(id), container) {
            (Some(held), Some(container)) => same_state(held, container),
            (None, None) => true,
            _ => false,
        }
    }

    /// Replaces the copy with what a list found, recording a `resync` change for each
    /// container that differs; how many differed.
    fn replace(&self, listed: &HashMap<String, Inspected>) -> usize {
        let differing = self.differing(listed);
        for (id, container) in &differing {
            self.record("resync", id, container.clone());
        }
        differing.len()
    }
}

/// Whether two inspects of a container say the same about it: name, image, labels, state,
/// exit code, OOM, health status, times, restarts and published ports. A health check's log
/// and other counters change without an event, so they are not compared.
fn same_state(a: &ContainerInspectResponse, b: &ContainerInspectResponse) -> bool {
    let state = |container: &ContainerInspectResponse| {
        container.state.as_ref().map(|state| {
            (
                state.status,
                state.exit_code,
                state.oom_killed,
                state.health.as_ref().and_then(|health| health.status),
                state.started_at.clone(),
                state.finished_at.clone(),
            )
        })
    };
    let ports = |container: &ContainerInspectResponse| {
        container
            .network_settings
            .as_ref()
            .and_then(|settings| settings.ports.clone())
    };
    let labels = |container: &ContainerInspectResponse| {
        container
            .config
            .as_ref()
            .and_then(|config| config.labels.clone())
    };
    a.name == b.name
        && a.image == b.image
        && a.restart_count == b.restart_count
        && state(a) == state(b)
        && ports(a) == ports(b)
        && labels(a) == labels(b)
}

/// Keeps `mirror` following the engine of `driver` until the task is dropped: list, then the
/// event stream; on a break, list again after `retry` (doubled after each attempt that did not
/// get as far as a list, up to [`MAX_RETRY_FACTOR`] times); every `resync_every`, list and
/// count differences.
pub async fn follow(
    driver: Arc<DockerDriver>,
    mirror: Arc<ContainerMirror>,
    resync_every: Duration,
    retry: Duration,
) {
    let mut first = true;
    let mut wait = retry;
    loop {
        if let Err(err) = follow_once(&driver, &mirror, resync_every, &mut first).await {
            if mirror.is_synced() {
                tracing::warn!(engine = %driver.address, error = %err, "The container event stream broke; listing again.");
            } else {
                tracing::debug!(engine = %driver.address, error = %err, "The engine cannot be followed yet.");
            }
        }
        wait = if mirror.is_synced() {
            retry
        } else {
            (wait * 2).min(retry * MAX_RETRY_FACTOR)
        };
        mirror.set_synced(false);
        tokio::time::sleep(wait).await;
    }
}

/// One connection: the list, then events until the stream ends.
async fn follow_once(
    driver: &DockerDriver,
    mirror: &ContainerMirror,
    resync_every: Duration,
    first: &mut bool,
) -> Result<(), DriverError> {
    // Events from just before the list on, by the engine's own clock: whatever happens
    // between the list and the stream's start is replayed, and replaying is harmless.
    let since = driver.engine_now().await?.saturating_sub(1);
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("label".to_owned(), vec![mirror.label.clone()]),
    ]);
    let mut events = driver.docker.events(Some(EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters),
    }));
    let listed = list_inspected(driver, &mirror.label).await?;
    let found = mirror.replace(&listed);
    if !*first && found > 0 {
        tracing::info!(engine = %driver.address, found, "The re-list after a broken event stream found changes.");
    }
    *first = false;
    mirror.set_synced(true);
    let mut resync = tokio::time::interval(resync_every);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    // Containers a periodic list saw otherwise than the copy, checked again once the events
    // already on their way have been applied.
    let mut suspects: Vec<String> = Vec::new();
    let check = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(check);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => apply(driver, mirror, event).await?,
                Some(Err(err)) => return Err(DriverError::for_engine(&driver.address, err)),
                None => return Err(DriverError::EngineUnreachable {
                    address: driver.address.clone(),
                    message: "the engine ended its event stream".to_owned(),
                }),
            },
            _ = resync.tick(), if suspects.is_empty() => {
                let listed = list_inspected(driver, &mirror.label).await?;
                suspects = mirror.differing(&listed).into_iter().map(|(id, _)| id).collect();
                check.as_mut().reset(tokio::time::Instant::now() + SETTLE);
            }
            () = &mut check, if !suspects.is_empty() => {
                let mut found = 0;
                for id in std::mem::take(&mut suspects) {
                    let container = inspect(driver, &id).await?;
                    if !mirror.holds(&id, container.as_ref()) {
                        mirror.record("resync", &id, container);
                        found += 1;
                    }
                }
                if found > 0 {
                    mirror.differences.fetch_add(found, Ordering::Relaxed);
                    tracing::warn!(engine = %driver.address, found, "The periodic re-list found containers the event stream had not reported.");
                }
            }
        }
    }
}

/// Applies one engine event: a destroy removes its container, a quiet action is skipped,
/// anything else re-inspects it (gone by now: removed).
async fn apply(
    driver: &DockerDriver,
    mirror: &ContainerMirror,
    event: EventMessage,
) -> Result<(), DriverError> {
    let action = event.action.unwrap_or_default();
    let Some(id) = event.actor.and_then(|actor| actor.id) else {
        return Ok(());
    };
    if QUIET_ACTIONS.contains(&action.as_str()) {
        return Ok(());
    }
    if action == "destroy" {
        mirror.record(&action, &id, None);
        return Ok(());
    }
    match inspect(driver, &id).await? {
        Some(container) => mirror.record(&action, &id, Some(container)),
        None => mirror.record(&action, &id, None),
    }
    Ok(())
}

/// The container with `id`, or `None` when the engine no longer has it.
async fn inspect(driver: &DockerDriver, id: &str) -> Result<Option<Inspected>, DriverError> {
    match driver
        .docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    {
        Ok(container) => Ok(Some(Arc::new(container))),
        Err(err) => match DriverError::for_container(&driver.address, id, err) {
            DriverError::ContainerNotFound { .. } => Ok(None),
            other => Err(other),
        },
    }
}

/// Every container with `label`, inspected (eight at a time), by id.
async fn list_inspected(
    driver: &DockerDriver,
    label: &str,
) -> Result<HashMap<String, Inspected>, DriverError> {
    let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
    let summaries = driver
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|err| DriverError::for_engine(&driver.address, err))?;
    let ids: Vec<String> = summaries
        .into_iter()
        .filter_map(|summary| summary.id)
        .collect();
    let inspected: Vec<Option<Inspected>> = futures_util::stream::iter(ids)
        .map(|id| async move { inspect(driver, &id).await })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    Ok(inspected
        .into_iter()
        .flatten()
        .filter_map(|container| Some((container.id.clone()?, container)))
        .collect())
}

/// What a list item of another source (an agent's `GET /containers/` or its event stream) says
/// about a container, to hold in a mirror as an inspect would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    /// Full id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image.
    pub image: String,
    /// Docker status: `created`, `running`, `exited`, …
    pub status: String,
    /// Creation time (RFC 3339).
    pub created_at: Option<String>,
    /// Last start (RFC 3339).
    pub started_at: Option<String>,
    /// Last end (RFC 3339).
    pub finished_at: Option<String>,
    /// `"7860/tcp"` → host port.
    pub ports: std::collections::BTreeMap<String, u16>,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl From<ContainerFacts> for ContainerInspectResponse {
    fn from(facts: ContainerFacts) -> Self {
        use bollard::models::{
            ContainerConfig, ContainerState, ContainerStateStatusEnum, NetworkSettings, PortBinding,
        };
        let status = facts.status.parse::<ContainerStateStatusEnum>().ok();
        ContainerInspectResponse {
            id: Some(facts.id),
            name: Some(format!("/{}", facts.name)),
            created: facts.created_at,
            state: Some(ContainerState {
                running: Some(facts.status == "running"),
                status,
                started_at: facts.started_at,
                finished_at: facts.finished_at,
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                image: Some(facts.image),
                labels: Some(facts.labels.into_iter().collect()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(
                    facts
                        .ports
                        .into_iter()
                        .map(|(key, port)| {
                            let binding = PortBinding {
                                host_ip: Some("0.0.0.0".to_owned()),
                                host_port: Some(port.to_string()),
                            };
                            (key, Some(vec![binding]))
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
