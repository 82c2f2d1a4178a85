//! Node mirrors: for every node reached directly over the Docker API, an in-memory copy of this
//! hub's containers kept from the engine's event stream ([`berth_docker::mirror`]), and the
//! reactions to each change: the gateway's entry of the container's service is refreshed at
//! once (a replica restarted by the engine is routed to its new port), and the node is
//! reconciled at once (a container killed behind Berth's back is started again without waiting
//! for the monitor's next round). Reconciles a node's changes trigger are coalesced and at most
//! one per [`RECONCILE_SPACING`], so a container that dies as soon as it starts cannot keep the
//! hub busy.
//!
//! [`run`] keeps one watch per node in step with the node records. Readers ask
//! [`HubState::mirror_of`] for a node's copy while it follows its engine. Agent nodes and
//! simulated ones are not watched here: the periodic passes serve them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_docker::mirror::{self, ContainerMirror, MirrorChange};
use berth_docker::{DockerDriver, GpuMode};
use berth_store::nodes::{self, NodeRecord};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::node_check::docker_endpoint;
use crate::reconciler;
use crate::service_definition::{LABEL_HUB, LABEL_SERVICE};
use crate::state::HubState;

/// How often a mirror lists its engine again to check that its events missed nothing.
const RESYNC: Duration = Duration::from_secs(60);
/// How long a mirror waits before it connects again after its event stream broke.
const RETRY: Duration = Duration::from_secs(1);
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
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Watch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps a watch on every Docker node until `shutdown` completes.
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
        .filter(|node| node.driver == "docker")
        .collect())
}

/// Starts watching `node`: a task that connects and keeps the mirror following the engine,
/// and one that reacts to its changes.
fn start(state: &Arc<HubState>, node: NodeRecord) -> (i64, Watch) {
    let mirror = ContainerMirror::new(format!("{LABEL_HUB}={}", state.hub_id));
    state.keep_mirror(node.id, Arc::clone(&mirror));
    let follower = tokio::spawn(follow(
        Arc::downgrade(state),
        node.clone(),
        Arc::clone(&mirror),
    ));
    let reactor = tokio::spawn(react(Arc::downgrade(state), node.id, mirror));
    (
        node.id,
        Watch {
            version: node.updated_at,
            tasks: [follower, reactor],
        },
    )
}

/// Connects to the node's engine (again after each failure) and follows it.
async fn follow(state: Weak<HubState>, node: NodeRecord, mirror: Arc<ContainerMirror>) {
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
        tokio::time::sleep(RETRY).await;
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
                    touched.extend(service);
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
        let Some(state) = state.upgrade() else { return };
        for service in &touched {
            state.routes.touch(*service);
        }
        if touched.is_empty() {
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
