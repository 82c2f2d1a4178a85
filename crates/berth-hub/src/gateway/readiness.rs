//! Readiness: keeps the route table in step with the database — every service with a port, its
//! wanted state, and the published address of each replica's container — and runs one probe task
//! per replica. A replica takes traffic once its probe passes and its warmup requests succeed;
//! a failed probe takes it out of the rotation until a probe passes again. Where a node is
//! mirrored ([`crate::node_watch`]), addresses come from its mirror, and a replica the engine
//! restarted on another port is resolved and probed again as soon as its service is touched.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use berth_http::Problem;
use berth_store::allocations::{self, Allocation};
use berth_store::nodes::{self, NodeRecord};
use berth_store::services::{self, ServiceRecord};
use berth_store::{StoreError, users};

use crate::replicas;
use crate::service_definition::{LABEL_VERSION, ServingSettings, Warmup};
use crate::simulation::SIMULATED_DRIVER;
use crate::state::HubState;
use berth_gateway::routes::{Endpoint, Profile, ServiceRoutes, now_millis};

/// How often the table is compared with the database when nothing asks sooner.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Probing a starting replica: first wait, doubled up to [`STARTING_PROBE_MAX`].
const STARTING_PROBE_FIRST: Duration = Duration::from_millis(2);
const STARTING_PROBE_MAX: Duration = Duration::from_millis(250);

/// A full refresh reads every service, so with a large table the next one waits this many
/// times as long as the last one took: full reads take at most a fifth of the time. Changes made
/// through this hub do not wait for it: each is read alone as soon as it is touched.
const REFRESH_SPACING: u32 = 4;

/// Compares the whole table with the database every [`REFRESH_INTERVAL`] (or
/// [`REFRESH_SPACING`] times the last full read's length, if longer), reads each service
/// touched in between ([`super::routes::RouteTable::touch`]) at once, and unloads idle
/// services, until `stop` completes.
pub async fn run(state: Arc<HubState>, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut reclaiming: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let began = tokio::time::Instant::now();
        // The full read covers what was touched before it began.
        state.routes.take_touched();
        if let Err(err) = refresh(&state).await {
            tracing::warn!(error = %err, "Refreshing the gateway's routes failed.");
        }
        let next_full = began + REFRESH_INTERVAL.max(began.elapsed() * REFRESH_SPACING);
        if reclaiming.as_ref().is_none_or(|task| task.is_finished()) {
            let state = Arc::clone(&state);
            reclaiming = Some(tokio::spawn(async move {
                let unloaded = crate::models::reclaim_idle(&state).await;
                if !unloaded.is_empty() {
                    tracing::info!(?unloaded, "Unloaded idle model services.");
                }
            }));
        }
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep_until(next_full) => break,
                () = state.routes.touched() => {
                    let touched = state.routes.take_touched();
                    if let Err(err) = refresh_services(&state, &touched).await {
                        tracing::warn!(error = %err, "Refreshing changed services' routes failed.");
                    }
                }
            }
        }
    }
}

/// The host the hub reaches `node`'s published ports on: the host of the address it drives the
/// node through (loopback for a local socket).
pub fn node_host(node: &NodeRecord) -> String {
    let address = match node.driver.as_str() {
        "agent" => node.agent_url.as_str(),
        SIMULATED_DRIVER => return "127.0.0.1".to_owned(),
        _ => node.docker_address.as_str(),
    };
    if address.is_empty() || address.starts_with("unix://") || address.starts_with('/') {
        return "127.0.0.1".to_owned();
    }
    crate::config::url_host(address)
}

/// The address the gateway reaches `node`'s published ports on, resolved: replicas publish
/// their ports on it alone, so a private service cannot be reached around the gateway.
pub async fn node_address(node: &NodeRecord) -> Result<IpAddr, Problem> {
    let host = node_host(node);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let unresolved = |reason: String| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "node {}: its address {host:?} does not resolve ({reason}); use an IP address or fix DNS",
                node.name
            ),
        )
    };
    tokio::net::lookup_host((host.as_str(), 0))
        .await
        .map_err(|err| unresolved(err.to_string()))?
        .next()
        .map(|address| address.ip())
        .ok_or_else(|| unresolved("no address".to_owned()))
}

/// One comparison of the whole table with the database.
pub async fn refresh(state: &Arc<HubState>) -> Result<(), StoreError> {
    let (all_services, all_allocations, owners, all_nodes) = {
        let mut connection = state.store.acquire().await?;
        let all_services = services::list(&mut connection, None).await?;
        let all_allocations = allocations::list(&mut connection).await?;
        let owners: HashMap<i64, String> = users::list_users(&mut connection)
            .await?
            .into_iter()
            .map(|user| (user.id, user.name))
            .collect();
        let all_nodes: HashMap<i64, NodeRecord> = nodes::list(&mut connection)
            .await?
            .into_iter()
            .map(|node| (node.id, node))
            .collect();
        (all_services, all_allocations, owners, all_nodes)
    };
    let mut by_service: HashMap<i64, Vec<Allocation>> = HashMap::new();
    for allocation in all_allocations {
        by_service
            .entry(allocation.service_id)
            .or_default()
            .push(allocation);
    }
    let mut keep = HashSet::new();
    for service in &all_services {
        let placed = by_service.remove(&service.id).unwrap_or_default();
        if let Some((port, serving)) = routing_of(service) {
            keep.insert(service.id);
            apply(state, service, (port, serving), placed, &owners, &all_nodes).await;
        }
    }
    for gone in state.routes.all() {
        if !keep.contains(&gone.id) {
            forget(state, gone.id);
        }
    }
    Ok(())
}

/// Reads services `ids` alone (each just changed) and brings their entries in step.
pub async fn refresh_services(state: &Arc<HubState>, ids: &[i64]) -> Result<(), StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    let mut placed = HashMap::with_capacity(ids.len());
    let mut owners = HashMap::new();
    {
        let mut connection = state.store.acquire().await?;
        for &id in ids {
            let service = match services::get(&mut connection, id).await {
                Ok(service) => service,
                Err(StoreError::NotFound(_)) => {
                    forget(state, id);
                    continue;
                }
                Err(err) => return Err(err),
            };
            let Some(routing) = routing_of(&service) else {
                forget(state, id);
                continue;
            };
            if let Entry::Vacant(owner) = owners.entry(service.owner_id) {
                owner.insert(
                    users::get_user(&mut connection, service.owner_id)
                        .await?
                        .name,
                );
            }
            placed.insert(id, allocations::for_service(&mut connection, id).await?);
            found.push((service, routing));
        }
    }
    let node_ids = placed
        .values()
        .flatten()
        .map(|allocation| allocation.node_id);
    let nodes = replicas::nodes_of(state, node_ids).await?;
    for (service, routing) in found {
        let replicas = placed.remove(&service.id).unwrap_or_default();
        apply(state, &service, routing, replicas, &owners, &nodes).await;
    }
    Ok(())
}

/// The port and serving settings of a service the gateway routes to; none for one without a
/// port (or with an unreadable definition).
fn routing_of(service: &ServiceRecord) -> Option<(u16, ServingSettings)> {
    let definition = replicas::definition_of(service).ok()?;
    Some((definition.port?, definition.serving))
}

/// Brings routable `service`'s entry in step with its record and `placed` allocations.
async fn apply(
    state: &Arc<HubState>,
    service: &ServiceRecord,
    (port, serving): (u16, ServingSettings),
    placed: Vec<Allocation>,
    owners: &HashMap<i64, String>,
    nodes: &HashMap<i64, NodeRecord>,
) {
    let routes = upsert(state, service, owners, port, serving);
    let models = &state.metrics.models;
    models
        .loaded
        .get_or_create(&routes.metrics(models).labels)
        .set(i64::from(service.status == "running"));
    resolve_endpoints(state, &routes, service, port, placed, nodes).await;
}

/// Takes service `id` out of the table and its gauge out of the metrics.
fn forget(state: &HubState, id: i64) {
    if let Some(gone) = state.routes.remove(id) {
        let models = &state.metrics.models;
        models.loaded.remove(&gone.metrics(models).labels);
    }
}

fn upsert(
    state: &HubState,
    service: &ServiceRecord,
    owners: &HashMap<i64, String>,
    port: u16,
    settings: ServingSettings,
) -> Arc<ServiceRoutes> {
    let profile = |settings: ServingSettings| Profile {
        public: service.is_public,
        version: service.version,
        port,
        policy: settings.routing.policy(),
        settings,
    };
    if let Some(routes) = state.routes.get(service.id) {
        let current = routes.profile();
        if current.public != service.is_public
            || current.version != service.version
            || current.port != port
            || current.settings != settings
        {
            routes.set_profile(profile(settings));
        }
        routes.set_wanted(&service.status);
        return routes;
    }
    state.routes.insert(ServiceRoutes::new(
        service.id,
        service.owner_id,
        owners.get(&service.owner_id).cloned().unwrap_or_default(),
        service.name.clone(),
        service.status.clone(),
        profile(settings),
    ))
}

async fn resolve_endpoints(
    state: &Arc<HubState>,
    routes: &Arc<ServiceRoutes>,
    service: &ServiceRecord,
    port: u16,
    placed: Vec<Allocation>,
    all_nodes: &HashMap<i64, NodeRecord>,
) {
    let current = routes.endpoints();
    if service.status != "running" {
        routes.end_handover();
        if !current.is_empty() {
            routes.set_endpoints(Vec::new());
        }
        return;
    }
    let settings = routes.profile().settings.clone();
    let mut next = Vec::new();
    for allocation in placed {
        if allocation.container_id.is_empty() || state.is_down(allocation.node_id) {
            continue;
        }
        if let Some(known) = current
            .iter()
            .find(|endpoint| endpoint.container_id == allocation.container_id)
        {
            // Kept unless the node's mirror shows the container publishing elsewhere now (the
            // engine restarted it on a new port): then it is resolved and probed anew.
            let moved = mirrored_port(state, &allocation, port)
                .is_some_and(|host_port| host_port != known.address.port());
            if !moved {
                if let Some(node) = all_nodes.get(&allocation.node_id) {
                    known.set_node_labels(node.labels.clone());
                }
                next.push(Arc::clone(known));
                continue;
            }
        }
        let Some(node) = all_nodes.get(&allocation.node_id) else {
            continue;
        };
        if let Some(endpoint) =
            probed_endpoint(state, routes, node, &allocation, port, &settings).await
        {
            next.push(endpoint);
        }
    }
    let same = next.len() == current.len()
        && next
            .iter()
            .zip(&current)
            .all(|(new, old)| Arc::ptr_eq(new, old));
    if !same {
        next.sort_by_key(|endpoint| endpoint.replica);
        routes.set_endpoints(next);
    }
}

/// The replica `allocation` on `node` as an endpoint of `routes`, with its probe task (not
/// ready until the probe and warmup pass); `None` when it does not run or publish `port`.
async fn probed_endpoint(
    state: &Arc<HubState>,
    routes: &Arc<ServiceRoutes>,
    node: &NodeRecord,
    allocation: &Allocation,
    port: u16,
    settings: &ServingSettings,
) -> Option<Arc<Endpoint>> {
    let (address, version) = published_address(state, node, allocation, port).await?;
    let endpoint = Arc::new(
        Endpoint::new(
            allocation.replica,
            allocation.container_id.clone(),
            node.id,
            address,
            settings.routing.weight_of(allocation.replica),
        )
        .of_version(version.unwrap_or_else(|| routes.profile().version)),
    );
    endpoint.set_node_labels(node.labels.clone());
    let watcher = tokio::spawn(watch(
        Arc::clone(state),
        Arc::downgrade(routes),
        Arc::downgrade(&endpoint),
    ));
    endpoint.set_watcher(watcher.abort_handle());
    Some(endpoint)
}

/// A rollout the hub carries on after a restart: its handover begins again with the previous
/// version's replicas (`previous`, those still running) back in rotation beside the new
/// version's, probed like any other, so requests keep being answered while the new version
/// starts. Nothing is done when the handover is under way already.
pub async fn resume_handover(
    state: &Arc<HubState>,
    routes: &Arc<ServiceRoutes>,
    previous: &[Allocation],
) -> Result<(), StoreError> {
    if routes.is_handing_over() {
        return Ok(());
    }
    routes.begin_handover();
    let profile = routes.profile();
    let all_nodes: HashMap<i64, NodeRecord> = {
        let mut connection = state.store.acquire().await?;
        nodes::list(&mut connection)
            .await?
            .into_iter()
            .map(|node| (node.id, node))
            .collect()
    };
    let mut kept = Vec::new();
    for allocation in previous {
        if allocation.container_id.is_empty() || state.is_down(allocation.node_id) {
            continue;
        }
        let Some(node) = all_nodes.get(&allocation.node_id) else {
            continue;
        };
        if let Some(endpoint) = probed_endpoint(
            state,
            routes,
            node,
            allocation,
            profile.port,
            &profile.settings,
        )
        .await
        {
            kept.push(endpoint);
        }
    }
    routes.add_outgoing(kept);
    Ok(())
}

async fn published_address(
    state: &HubState,
    node: &NodeRecord,
    allocation: &Allocation,
    port: u16,
) -> Option<(SocketAddr, Option<i64>)> {
    let container = state
        .container_state(node, &allocation.container_id)
        .await
        .ok()?;
    if container.status != "running" {
        return None;
    }
    let host_port = *container.ports.get(&format!("{port}/tcp"))?;
    let host = node_host(node);
    let address = tokio::net::lookup_host((host.as_str(), host_port))
        .await
        .ok()?
        .next()?;
    let version = container
        .labels
        .get(LABEL_VERSION)
        .and_then(|version| version.parse().ok());
    Some((address, version))
}

/// The host port a running replica publishes `port` on, by its node's mirror; `None` when
/// the node is not mirrored, or the mirror does not show it running with that port.
fn mirrored_port(state: &HubState, allocation: &Allocation, port: u16) -> Option<u16> {
    let container = state
        .mirror_of(allocation.node_id)?
        .get(&allocation.container_id)?;
    let running = container
        .state
        .as_ref()
        .and_then(|state| state.running)
        .unwrap_or(false);
    if !running {
        return None;
    }
    berth_docker::published_ports(&container)
        .get(&format!("{port}/tcp"))
        .copied()
}

/// Probes one replica for as long as its endpoint lives.
async fn watch(state: Arc<HubState>, service: Weak<ServiceRoutes>, endpoint: Weak<Endpoint>) {
    loop {
        // Starting: probe often, so that a replica takes traffic moments after it listens.
        let mut wait = STARTING_PROBE_FIRST;
        loop {
            let (Some(routes), Some(replica)) = (service.upgrade(), endpoint.upgrade()) else {
                return;
            };
            let settings = routes.profile().settings.clone();
            let address = replica.address;
            drop((routes, replica));
            if probe(&state, address, &settings).await {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(STARTING_PROBE_MAX);
        }
        let Some(routes) = service.upgrade() else {
            return;
        };
        let settings = routes.profile().settings.clone();
        drop(routes);
        let Some(address) = endpoint.upgrade().map(|replica| replica.address) else {
            return;
        };
        if let Some(warmup) = &settings.warmup
            && let Err(reason) = warm(&state, address, warmup, &settings).await
        {
            tracing::info!(%address, %reason, "A replica's warmup failed; probing it again.");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Serving: one probe per interval; a failure takes it out until one passes.
        loop {
            let (Some(routes), Some(replica)) = (service.upgrade(), endpoint.upgrade()) else {
                return;
            };
            let became_ready = !replica.is_ready();
            routes.set_ready(&replica, true);
            if became_ready {
                let loaded_at = routes
                    .usage
                    .loaded_at_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                if loaded_at > 0 {
                    routes.usage.load_duration_ms.store(
                        now_millis().saturating_sub(loaded_at),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            }
            let settings = routes.profile().settings.clone();
            drop(routes);
            drop(replica);
            let mut passed = true;
            while passed {
                tokio::time::sleep(Duration::from_secs(settings.probe_interval_seconds)).await;
                passed = probe(&state, address, &settings).await;
            }
            let (Some(routes), Some(replica)) = (service.upgrade(), endpoint.upgrade()) else {
                return;
            };
            routes.set_ready(&replica, false);
            tracing::info!(service = routes.id, replica = replica.replica, %address,
                "A replica failed its probe and left the rotation.");
            drop((routes, replica));
            // Back in once a probe passes; no second warmup for the same container.
            let mut wait = STARTING_PROBE_MAX;
            loop {
                tokio::time::sleep(wait).await;
                if probe(&state, address, &settings).await {
                    break;
                }
                wait = (wait * 2).min(Duration::from_secs(settings.probe_interval_seconds));
                if service.strong_count() == 0 || endpoint.strong_count() == 0 {
                    return;
                }
            }
        }
    }
}

fn probe_timeout(settings: &ServingSettings) -> Duration {
    Duration::from_secs(settings.probe_interval_seconds.clamp(1, 5))
}

/// The client for a replica: HTTP/2 with prior knowledge when the service speaks only that.
fn client_for<'a>(state: &'a HubState, settings: &ServingSettings) -> &'a reqwest::Client {
    if settings.http2 {
        &state.routes.http2_probes
    } else {
        &state.http
    }
}

async fn probe(state: &HubState, address: SocketAddr, settings: &ServingSettings) -> bool {
    client_for(state, settings)
        .get(format!("http://{address}{}", settings.probe_path))
        .timeout(probe_timeout(settings))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success() || response.status().is_redirection())
}

async fn warm(
    state: &HubState,
    address: SocketAddr,
    warmup: &Warmup,
    settings: &ServingSettings,
) -> Result<(), String> {
    let http = client_for(state, settings);
    let method = reqwest::Method::from_bytes(warmup.method.as_bytes())
        .map_err(|err| format!("method {:?}: {err}", warmup.method))?;
    let is_json = serde_json::from_str::<serde_json::Value>(&warmup.body).is_ok();
    for round in 1..=warmup.count {
        let mut request = http
            .request(method.clone(), format!("http://{address}{}", warmup.path))
            .timeout(settings.timeout())
            .body(warmup.body.clone());
        if is_json {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        let response = request
            .send()
            .await
            .map_err(|err| format!("warmup request {round}: {err}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "warmup request {round} answered {}",
                response.status()
            ));
        }
        // Read the whole answer: a forward pass is only done when its output is.
        response
            .bytes()
            .await
            .map_err(|err| format!("warmup request {round}: {err}"))?;
    }
    Ok(())
}
