//! Node mirrors: for every node, an in-memory copy of this hub's containers kept from an event
//! stream — the engine's own `/events` for a node reached over the Docker API
//! ([`berth_docker::mirror`]), the agent's `GET /events` for a `berth agent` node — and the
//! reactions to each change: the gateway's entry of the container's service is refreshed at
//! once (a replica restarted by the engine is routed to its new port), and the node is
//! reconciled at once (a container killed behind Berth's back is started again without waiting
//! for the monitor's next round). Reconciles a node's changes trigger are coalesced and at most
//! one per [`RECONCILE_SPACING`], so a container that dies as soon as it starts cannot keep the
//! hub busy. A stream that breaks makes its node a suspect of the failure detector
//! ([`monitor::suspect`]), so a dead node is confirmed in seconds, not at the next rounds.
//!
//! [`run`] keeps one watch per node in step with the node records. Readers ask
//! [`HubState::mirror_of`] for a node's copy while it follows its node. An original mManager
//! has no event stream (its `/events` answers 404): its node is not mirrored, and the periodic
//! passes serve it, as they serve simulated nodes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_docker::mirror::{self, ContainerFacts, ContainerMirror, MirrorChange};
use berth_docker::{DockerDriver, GpuMode};
use berth_store::nodes::{self, NodeRecord};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::node_check::docker_endpoint;
use crate::node_client::{agent_ca, port_map, string_map};
use crate::service_definition::{LABEL_HUB, LABEL_SERVICE};
use crate::state::HubState;
use crate::{monitor, reconciler};

/// How often a mirror lists its engine again to check that its events missed nothing.
const RESYNC: Duration = Duration::from_secs(60);
/// How long a mirror waits before it connects again after its event stream broke.
const RETRY: Duration = Duration::from_secs(1);
/// How long an agent's event stream may stay silent (it sends a keep-alive every 15 s)
/// before it counts as broken.
const STREAM_SILENCE: Duration = Duration::from_secs(40);
/// How long to wait before asking an agent without an event stream again.
const NO_STREAM_RETRY: Duration = Duration::from_secs(60);
/// How often the set of watches is compared with the node records.
const NODES_PASS: Duration = Duration::from_secs(2);
/// Changes that arrive within this much of each other are reacted to together.
const COALESCE: Duration = Duration::from_millis(100);
/// The least time between two reconciles of one node that its changes trigger.
pub const RECONCILE_SPACING: Duration = Duration::from_secs(1);

/// One node's watch: its mirror and the tasks that fill it and react to it.
struct Watch {
    /// The node record's `updated_at` when the watch started: a changed record restarts it.
    version: i64,
    tasks: [JoinHandle<()>; 3],
}

impl Drop for Watch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps a watch on every Docker or agent node with an address until `shutdown` completes.
pub async fn run(state: Arc<HubState>, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut watches: HashMap<i64, Watch> = HashMap::new();
    loop {
        match nodes_to_watch(&state).await {
            Ok(wanted) => {
                watches.retain(|id, watch| {
                    let keep = wanted
                        .iter()
                        .any(|node| node.id == *id && node.updated_at == watch.version);
                    if !keep {
                        state.forget_mirror(*id);
                    }
                    keep
                });
                for node in wanted {
                    if !watches.contains_key(&node.id) {
                        let watch = start(&state, node);
                        watches.insert(watch.0, watch.1);
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "Reading the nodes to watch failed."),
        }
        tokio::select! {
            () = tokio::time::sleep(NODES_PASS) => {}
            () = &mut shutdown => return,
        }
    }
}

async fn nodes_to_watch(state: &HubState) -> Result<Vec<NodeRecord>, berth_store::StoreError> {
    let mut connection = state.store.acquire().await?;
    Ok(nodes::list(&mut connection)
        .await?
        .into_iter()
        .filter(|node| match node.driver.as_str() {
            "docker" => !node.docker_address.trim().is_empty(),
            "agent" => !node.agent_url.trim().is_empty(),
            _ => false,
        })
        .collect())
}

/// Starts watching `node`: a task that keeps the mirror following the node, one that reacts to
/// its changes, and one that reports its stream's breaks to the failure detector.
fn start(state: &Arc<HubState>, node: NodeRecord) -> (i64, Watch) {
    let mirror = ContainerMirror::new(format!("{LABEL_HUB}={}", state.hub_id));
    state.keep_mirror(node.id, Arc::clone(&mirror));
    let follower = if node.driver == "agent" {
        tokio::spawn(follow_agent(
            Arc::downgrade(state),
            node.clone(),
            Arc::clone(&mirror),
        ))
    } else {
        tokio::spawn(follow(
            Arc::downgrade(state),
            node.clone(),
            Arc::clone(&mirror),
        ))
    };
    let breaks = tokio::spawn(suspect_on_break(
        Arc::downgrade(state),
        node.id,
        mirror.sync_changes(),
    ));
    let reactor = tokio::spawn(react(Arc::downgrade(state), node.id, mirror));
    (
        node.id,
        Watch {
            version: node.updated_at,
            tasks: [follower, reactor, breaks],
        },
    )
}

/// Connects to the node's engine (again after each failure, waiting longer after each one in a
/// row) and follows it.
async fn follow(state: Weak<HubState>, node: NodeRecord, mirror: Arc<ContainerMirror>) {
    let mut wait = RETRY;
    loop {
        let endpoint = {
            let Some(state) = state.upgrade() else { return };
            docker_endpoint(&node, &state.secrets)
        };
        match endpoint {
            Ok(endpoint) => {
                match DockerDriver::connect_with(&endpoint, GpuMode::Nvidia, None).await {
                    Ok(driver) => {
                        mirror::follow(Arc::new(driver), Arc::clone(&mirror), RESYNC, RETRY).await;
                    }
                    Err(err) => {
                        tracing::debug!(node = %node.name, error = %err, "The node's engine cannot be watched yet.");
                    }
                }
            }
            Err(reason) => {
                tracing::debug!(node = %node.name, %reason, "The node's engine cannot be watched.");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY * mirror::MAX_RETRY_FACTOR);
    }
}

/// Follows an agent's `GET /events` into `mirror`: its snapshot replaces the copy, each change
/// is applied; after a break, it resumes from the last number it saw. An agent without the
/// stream (an original mManager) is asked again after [`NO_STREAM_RETRY`].
async fn follow_agent(state: Weak<HubState>, node: NodeRecord, mirror: Arc<ContainerMirror>) {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(berth_core::timeouts::AGENT_CONNECT)
        .read_timeout(STREAM_SILENCE);
    if let Some(ca) = state
        .upgrade()
        .and_then(|state| agent_ca(&node, &state.secrets).ok().flatten())
    {
        builder = builder.add_root_certificate(ca);
    }
    let http = builder.build().unwrap_or_default();
    let base = node.agent_url.trim_end_matches('/').to_owned();
    let mut last: Option<u64> = None;
    let mut wait = RETRY;
    loop {
        let key = {
            let Some(state) = state.upgrade() else { return };
            node.agent_key_sealed
                .as_deref()
                .and_then(|sealed| state.secrets.open(sealed).ok())
        };
        wait = match key {
            Some(key) => match stream_agent(&http, &base, &key, &mirror, &mut last).await {
                Ok(()) => RETRY,
                Err(StreamEnd::NoStream) => NO_STREAM_RETRY,
                Err(StreamEnd::Broken(reason)) => {
                    tracing::debug!(node = %node.name, %reason, "The agent's event stream broke.");
                    if mirror.is_synced() {
                        RETRY
                    } else {
                        (wait * 2).min(RETRY * mirror::MAX_RETRY_FACTOR)
                    }
                }
            },
            None => NO_STREAM_RETRY,
        };
        mirror.lost();
        tokio::time::sleep(wait).await;
    }
}

/// Why an agent's stream ended.
enum StreamEnd {
    /// The agent has no `GET /events`.
    NoStream,
    /// The connection failed or broke.
    Broken(String),
}

/// One connection to an agent's event stream, until it ends.
async fn stream_agent(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    mirror: &ContainerMirror,
    last: &mut Option<u64>,
) -> Result<(), StreamEnd> {
    let url = match *last {
        Some(seq) => format!("{base}/events?since={seq}"),
        None => format!("{base}/events"),
    };
    let response = http
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .map_err(|err| StreamEnd::Broken(err.to_string()))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(StreamEnd::NoStream);
    }
    if !response.status().is_success() {
        return Err(StreamEnd::Broken(format!(
            "the agent answered {}",
            response.status()
        )));
    }
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        let chunk = chunk.map_err(|err| StreamEnd::Broken(err.to_string()))?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data) = ("", None);
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = if name.trim() == "snapshot" {
                        "snapshot"
                    } else {
                        "container"
                    };
                } else if let Some(text) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<Value>(text.trim()).ok();
                }
            }
            let Some(data) = data else { continue };
            // The agent streams every container it manages; the mirror holds this hub's.
            let ours = |item: &Value| {
                let (key, value) = mirror.label().split_once('=').unwrap_or_default();
                item["labels"][key].as_str() == Some(value)
            };
            if event == "snapshot" {
                let listed = data["containers"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter(|item| ours(item))
                    .map(|item| facts_of(item).into())
                    .collect();
                mirror.replace_with(listed);
            } else {
                let id = data["id"].as_str().unwrap_or_default();
                let action = data["action"].as_str().unwrap_or_default();
                let item = &data["container"];
                if item.is_null() {
                    mirror.apply(action, id, None);
                } else if ours(item) {
                    mirror.apply(action, id, Some(facts_of(item).into()));
                }
            }
            *last = data["seq"].as_u64().or(*last);
        }
    }
    Ok(())
}

/// What an agent's list item says about a container.
fn facts_of(item: &Value) -> ContainerFacts {
    let text = |key: &str| item[key].as_str().map(str::to_owned);
    ContainerFacts {
        id: text("id").unwrap_or_default(),
        name: text("name").unwrap_or_default(),
        image: text("image").unwrap_or_default(),
        status: text("status").unwrap_or_default(),
        created_at: text("created_at").filter(|at| !at.is_empty()),
        started_at: text("started_at"),
        finished_at: text("finished_at"),
        ports: port_map(&item["ports"]),
        labels: string_map(&item["labels"]),
    }
}

/// Makes the node a suspect of the failure detector whenever its stream breaks: the monitor
/// probes it at once and every half second until it passes or is down.
async fn suspect_on_break(
    state: Weak<HubState>,
    node_id: i64,
    mut synced: tokio::sync::watch::Receiver<bool>,
) {
    while synced.changed().await.is_ok() {
        if *synced.borrow_and_update() {
            continue;
        }
        let Some(state) = state.upgrade() else { return };
        if !state.is_down(node_id) {
            monitor::suspect(&state, node_id);
        }
    }
}

/// The service a change concerns, from its container's labels.
fn service_of(change: &MirrorChange) -> Option<i64> {
    change
        .container
        .as_ref()?
        .config
        .as_ref()?
        .labels
        .as_ref()?
        .get(LABEL_SERVICE)?
        .parse()
        .ok()
}

/// Reacts to the node's changes: touches the services they concern in the route table and
/// reconciles the node, coalesced and spaced.
async fn react(state: Weak<HubState>, node_id: i64, mirror: Arc<ContainerMirror>) {
    let mut changes = mirror.subscribe();
    // What a removed container was, to know its service when its destroy arrives.
    let mut services: HashMap<String, i64> = HashMap::new();
    let mut last_reconcile: Option<tokio::time::Instant> = None;
    loop {
        let mut touched = Vec::new();
        // Whether a change may call for a repair: not a mere signal sent (`kill`), which the
        // `die` it causes follows.
        let mut due = false;
        let mut first = true;
        loop {
            let next = if first {
                changes.recv().await
            } else {
                match tokio::time::timeout(COALESCE, changes.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            first = false;
            match next {
                Ok(change) => {
                    let service = service_of(&change).or_else(|| services.get(&change.id).copied());
                    match (&change.container, service) {
                        (Some(_), Some(service)) => {
                            services.insert(change.id.clone(), service);
                        }
                        (None, _) => {
                            services.remove(&change.id);
                        }
                        _ => {}
                    }
                    due |= service.is_some() && change.action != "kill";
                    touched.extend(service);
                }
                // Fell behind: which services changed is lost, so the node is reconciled
                // and the gateway's full refresh catches the routes.
                Err(RecvError::Lagged(_)) => due = true,
                Err(RecvError::Closed) => return,
            }
        }
        let Some(state) = state.upgrade() else { return };
        for service in &touched {
            state.routes.touch(*service);
        }
        if !due {
            continue;
        }
        if let Some(last) = last_reconcile {
            tokio::time::sleep_until(last + RECONCILE_SPACING).await;
        }
        last_reconcile = Some(tokio::time::Instant::now());
        if let Err(err) = reconciler::converge_now(&state, node_id).await {
            tracing::warn!(node = node_id, error = %err.detail(), "Reconciling the node after its events failed.");
        }
    }
}
