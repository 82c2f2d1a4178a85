//! Model services' lifecycle (seed 004): load and unload, scale to zero after `idle_timeout`,
//! and `max_models` per node — loading one more evicts the least recently used idle model
//! service on that node, never one with requests in flight. An unloaded service keeps its
//! containers (stopped) and its allocations, so a request or `load` starts it where it was.
//! With `evict_idle_for_capacity`, a placement that does not fit may take the reservations of
//! the least recently used idle model services instead: they are evicted — containers removed,
//! allocations released, unloaded — and placed again when next loaded. Loads and unloads are
//! operations: the wanted state commits with the operation, then [`bring_in`] (or the
//! stop of every replica, for an unload) does the work under the service's claim.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use berth_core::schedule::{Cluster, Options, Placement, Request};
use berth_http::Problem;
use berth_store::StoreError;
use berth_store::allocations::{self, Allocation};
use berth_store::operations;
use berth_store::services::{self, ServiceRecord};
use serde_json::{Value, json};

use crate::ops::{self, Tracker};
use crate::replicas::{self, Cause, LaunchPlan};
use crate::scheduling;
use crate::service_work::{self, Change};
use crate::state::HubState;
use berth_gateway::metrics::ServiceLabels;
use berth_gateway::routes::{ServiceRoutes, now_millis};

pub use berth_gateway::routes::UNLOADED;

/// Seconds a replica gets to stop when its service is unloaded.
const UNLOAD_GRACE_SECONDS: u32 = 10;

/// How long a load waits for the unload of a model service it evicts (its grace and a margin).
const UNLOAD_WAIT: std::time::Duration =
    std::time::Duration::from_secs(UNLOAD_GRACE_SECONDS as u64 + 30);

fn labels(state: &HubState, service: &ServiceRecord) -> ServiceLabels {
    let owner = state
        .routes
        .get(service.id)
        .map(|routes| routes.owner.clone())
        .unwrap_or_default();
    ServiceLabels {
        service: format!("{owner}/{}", service.name),
    }
}

fn busy(id: i64) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        format!("service {id} is being changed by another request; try again"),
    )
}

/// Loads `service`: commits its intent (wanted running, with the operation) and starts the
/// work ([`bring_in`]); the operation's id.
pub async fn load(
    state: &Arc<HubState>,
    service: &ServiceRecord,
    actor: Option<i64>,
    reason: &str,
) -> Result<i64, Problem> {
    service_work::intend(
        state,
        actor,
        service.id,
        Some("running"),
        Change::Load,
        json!({"reason": reason}),
    )
    .await
}

/// A load's work, under the service's claim: its replicas started — placed again when it was
/// evicted, after unloading the least recently used idle model services on its nodes when they
/// hold `max_models` already — then, for a service with a port, a wait of up to its start
/// timeout for a ready replica. A load that cannot start the replicas leaves the service
/// unloaded; one whose replicas do not become ready in time leaves it loaded (the gateway keeps
/// probing) and says so.
pub async fn bring_in(
    state: &Arc<HubState>,
    tracker: &Tracker,
    service: &ServiceRecord,
    actor: Option<i64>,
) -> Result<Value, Problem> {
    tracker.step(0, 2, "starting the replicas").await;
    let started = async {
        if replicas::allocations_of(state, service.id)
            .await?
            .is_empty()
        {
            return place_again(state, service, actor).await;
        }
        let evicted = make_room(state, service).await?;
        replicas::on_every_replica(state, service, |client, container| async move {
            client.start(&container).await
        })
        .await?;
        Ok(json!({"evicted": evicted}))
    }
    .await;
    let mut detail = match started {
        Ok(detail) => detail,
        Err(problem) => {
            service_work::set_status(state, service.id, UNLOADED).await?;
            return Err(Problem::new(
                problem.status(),
                format!(
                    "{}; the service stays unloaded — its next request or `berth service load` tries again",
                    problem.detail()
                ),
            ));
        }
    };
    record_load(state, service);
    let definition = replicas::definition_of(service)?;
    if definition.port.is_some() {
        let limit = definition.serving.start_timeout();
        tracker.step(1, 2, "waiting for a ready replica").await;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if state
                .routes
                .get(service.id)
                .is_some_and(|routes| routes.ready_count() > 0)
            {
                break;
            }
            if state
                .latest_change(service.id)
                .is_some_and(|later| later > tracker.id())
            {
                detail["ready"] = json!(false);
                detail["note"] =
                    json!("a later change of the service came before a replica was ready");
                return Ok(detail);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no replica of {} passed its readiness probe within {} s (its start_timeout_seconds); the service stays loaded and the gateway keeps probing it — see `berth service logs {}`",
                        service.name,
                        limit.as_secs(),
                        service.id
                    ),
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        detail["ready"] = json!(true);
    }
    tracker.step(2, 2, "loaded").await;
    Ok(detail)
}

/// How often a load looks for a ready replica.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Tells the gateway and the metrics that `service` was just loaded.
fn record_load(state: &HubState, service: &ServiceRecord) {
    if let Some(routes) = state.routes.get(service.id) {
        routes
            .usage
            .loaded_at_ms
            .store(now_millis(), Ordering::Relaxed);
        routes.set_wanted("running");
    }
    state
        .metrics
        .models
        .load_total
        .get_or_create(&labels(state, service))
        .inc();
    state.routes.touch(service.id);
}

/// Unloads `service`: commits its intent (wanted unloaded, with the operation), after which its
/// replicas are stopped with a grace period; its next request starts it again. The operation's
/// id.
pub async fn unload(
    state: &Arc<HubState>,
    service: &ServiceRecord,
    actor: Option<i64>,
    reason: &str,
) -> Result<i64, Problem> {
    let id = service_work::intend(
        state,
        actor,
        service.id,
        Some(UNLOADED),
        Change::Unload {
            grace: UNLOAD_GRACE_SECONDS,
        },
        json!({"reason": reason, "timeout_seconds": UNLOAD_GRACE_SECONDS}),
    )
    .await?;
    state
        .metrics
        .models
        .unload_total
        .get_or_create(&labels(state, service))
        .inc();
    Ok(id)
}

/// When the service was last used: its last request, else its load, else when the hub started
/// watching it.
fn last_used(routes: &ServiceRoutes) -> u64 {
    let usage = &routes.usage;
    usage
        .last_used_ms
        .load(Ordering::Relaxed)
        .max(usage.loaded_at_ms.load(Ordering::Relaxed))
        .max(usage.watched_since_ms)
}

/// How long `routes`' service may go without requests before it is unloaded: its own
/// `idle_timeout`, else the hub's `service_idle_timeout` unless it autoscales.
fn idle_limit(state: &HubState, routes: &ServiceRoutes) -> Option<std::time::Duration> {
    let settings = &routes.profile().settings;
    settings.idle_timeout().or_else(|| {
        settings
            .autoscale
            .is_none()
            .then(|| state.settings().service_idle_timeout)
            .flatten()
    })
}

/// Unloads every running model service idle past its idle limit ([`idle_limit`]; each an
/// operation, not waited for); their names.
pub async fn reclaim_idle(state: &Arc<HubState>) -> Vec<String> {
    let now = now_millis();
    let mut unloaded = Vec::new();
    for routes in state.routes.all() {
        let Some(limit) = idle_limit(state, &routes) else {
            continue;
        };
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        if routes.wanted() != "running"
            || routes.usage.in_flight_total() > 0
            || now.saturating_sub(last_used(&routes)) < limit
            || state.is_busy(routes.id)
        {
            continue;
        }
        let service = match state.store.acquire().await {
            Ok(mut connection) => services::get(&mut connection, routes.id).await,
            Err(err) => Err(err),
        };
        let Ok(service) = service else { continue };
        if service.status != "running" {
            continue;
        }
        let reason = format!("idle for more than {} s", limit / 1000);
        match unload(state, &service, None, &reason).await {
            Ok(_) => unloaded.push(format!("{}/{}", routes.owner, routes.name)),
            Err(err) => tracing::warn!(service = service.id, error = %err.detail(),
                "Unloading an idle service failed."),
        }
    }
    unloaded
}

/// On each node of `service`, unloads least recently used idle model services until fewer than
/// `max_models` other model services are loaded there. Their names; a conflict when a node is
/// full of busy ones.
async fn make_room(state: &Arc<HubState>, service: &ServiceRecord) -> Result<Vec<String>, Problem> {
    let max_models = state.settings().max_models_per_node;
    if max_models == 0 {
        return Ok(Vec::new());
    }
    let placed = {
        let mut connection = state.store.acquire().await?;
        allocations::list(&mut connection).await?
    };
    let mut nodes_of: HashMap<i64, HashSet<i64>> = HashMap::new();
    for allocation in &placed {
        nodes_of
            .entry(allocation.service_id)
            .or_default()
            .insert(allocation.node_id);
    }
    let mine = nodes_of.get(&service.id).cloned().unwrap_or_default();
    let mut evicted = Vec::new();
    for node in mine {
        loop {
            let loaded: Vec<Arc<ServiceRoutes>> = state
                .routes
                .all()
                .into_iter()
                .filter(|routes| {
                    routes.id != service.id
                        && routes.wanted() == "running"
                        && nodes_of
                            .get(&routes.id)
                            .is_some_and(|nodes| nodes.contains(&node))
                })
                .collect();
            if loaded.len() < max_models as usize {
                break;
            }
            let victim = loaded
                .iter()
                .filter(|routes| {
                    routes.usage.in_flight_total() == 0
                        && !state.is_busy(routes.id)
                })
                .min_by_key(|routes| last_used(routes))
                .cloned()
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::CONFLICT,
                        format!(
                            "node {node} has max_models={max_models} model services loaded and every one is answering requests; try again when one is idle"
                        ),
                    )
                })?;
            let record = {
                let mut connection = state.store.acquire().await?;
                services::get(&mut connection, victim.id).await?
            };
            let name = format!("{}/{}", victim.owner, victim.name);
            let unloading = unload(
                state,
                &record,
                None,
                &format!(
                    "least recently used on node {node}, evicted to load {}",
                    service.name
                ),
            )
            .await?;
            // Its memory is free once its replicas stopped; a stop that does not end in time
            // is the reconciler's to finish, and the service counts as unloaded already.
            let _ = ops::wait_for(state, unloading, UNLOAD_WAIT).await;
            evicted.push(name);
        }
    }
    Ok(evicted)
}

/// Loads a service that holds no placement (it was evicted): every replica placed again —
/// making room by eviction when allowed — and launched, started, at the next generation.
async fn place_again(
    state: &HubState,
    service: &ServiceRecord,
    actor: Option<i64>,
) -> Result<Value, Problem> {
    let definition = replicas::definition_of(service)?;
    let request = scheduling::request_for(&definition);
    let evicted =
        make_room_for(state, &request, service.replicas, &service.name, service.id).await?;
    let owner = replicas::owner_name(state, service).await?;
    let placements = place_replicas(state, &request, service.replicas).await?;
    let generation = service.generation + 1;
    let cause = Cause {
        actor,
        action: "container.create",
        detail: json!({"reason": "placed again to load"}),
    };
    let (definition_ref, cause_ref, request_ref) = (&definition, &cause, &request);
    let launched = replicas::bounded(placements, |(replica, placement, node)| {
        let owner = owner.as_str();
        async move {
            replicas::launch(
                state,
                LaunchPlan {
                    service,
                    replica,
                    generation,
                    definition: definition_ref,
                    owner,
                    node: &node,
                    placement: &placement,
                    request: request_ref,
                    start: true,
                    tracker: None,
                },
                cause_ref,
            )
            .await
        }
    })
    .await;
    // A replica that did not launch keeps its allocation; the reconciler creates it again.
    if let Some(problem) = launched.into_iter().find_map(Result::err) {
        return Err(problem);
    }
    Ok(json!({"placed_again": true, "evicted": evicted}))
}

/// Places `count` replicas of `request` on a fresh snapshot: replica number, placement, node.
pub async fn place_replicas(
    state: &HubState,
    request: &Request,
    count: i64,
) -> Result<Vec<(i64, Placement, berth_store::nodes::NodeRecord)>, Problem> {
    let (all, mut cluster) = scheduling::snapshot(state).await?;
    scheduling::place_all(
        &mut cluster,
        &all,
        request,
        count,
        &state.scheduler_options(),
    )
}

/// Whether `count` replicas of `request` all fit on a copy of `cluster`.
fn all_fit(cluster: &Cluster, request: &Request, count: i64, options: &Options) -> bool {
    let mut trial = cluster.clone();
    (0..count).all(|_| {
        trial
            .place(request, options)
            .is_ok_and(|placement| trial.commit(request, &placement).is_ok())
    })
}

fn placement_of(allocation: &Allocation) -> Placement {
    Placement {
        node_id: allocation.node_id,
        gpus: scheduling::assignment_of(allocation),
    }
}

/// Model services whose reservations may go to make room, least recently used first: unloaded
/// ones, and running ones idle past their idle limit; never one with requests in flight
/// or being changed.
fn eviction_candidates(state: &HubState, except: i64) -> Vec<Arc<ServiceRoutes>> {
    let now = now_millis();
    let mut candidates: Vec<Arc<ServiceRoutes>> = state
        .routes
        .all()
        .into_iter()
        .filter(|routes| {
            if routes.id == except || state.is_busy(routes.id) || routes.usage.in_flight_total() > 0
            {
                return false;
            }
            match routes.wanted().as_str() {
                UNLOADED => true,
                "running" => idle_limit(state, routes).is_some_and(|limit| {
                    let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
                    now.saturating_sub(last_used(routes)) >= limit
                }),
                _ => false,
            }
        })
        .collect();
    candidates.sort_by_key(|routes| last_used(routes));
    candidates
}

/// When `count` replicas of `request` (for `for_service`) do not fit and the hub may evict for
/// capacity: evicts the fewest least recently used idle model services whose reservations make
/// them fit. Their names; none when eviction is off, not needed, or would not be enough — then
/// nothing is touched and the caller's refusal stands.
pub async fn make_room_for(
    state: &HubState,
    request: &Request,
    count: i64,
    for_service: &str,
    except: i64,
) -> Result<Vec<String>, Problem> {
    if !state.settings().evict_idle_for_capacity {
        return Ok(Vec::new());
    }
    let (_, cluster) = scheduling::snapshot(state).await?;
    let options = state.scheduler_options();
    if all_fit(&cluster, request, count, &options) {
        return Ok(Vec::new());
    }
    let mut held: HashMap<i64, Vec<Allocation>> = HashMap::new();
    for allocation in allocations::list(&mut *state.store.acquire().await?).await? {
        held.entry(allocation.service_id)
            .or_default()
            .push(allocation);
    }
    let mut trial = cluster;
    let mut chosen: Vec<(Arc<ServiceRoutes>, Vec<Allocation>)> = Vec::new();
    for candidate in eviction_candidates(state, except) {
        let Some(reserved) = held.remove(&candidate.id) else {
            continue;
        };
        for allocation in &reserved {
            trial.release(
                &scheduling::request_of(allocation),
                &placement_of(allocation),
            );
        }
        chosen.push((candidate, reserved));
        if all_fit(&trial, request, count, &options) {
            break;
        }
    }
    if !all_fit(&trial, request, count, &options) {
        return Ok(Vec::new());
    }
    // Keep only the victims that are needed: the most recently used go back first.
    let mut index = chosen.len();
    while index > 0 {
        index -= 1;
        let mut without = trial.clone();
        let restored = chosen[index].1.iter().all(|allocation| {
            without
                .commit(
                    &scheduling::request_of(allocation),
                    &placement_of(allocation),
                )
                .is_ok()
        });
        if restored && all_fit(&without, request, count, &options) {
            trial = without;
            chosen.remove(index);
        }
    }
    let mut evicted = Vec::new();
    for (victim, _) in chosen {
        let record = services::get(&mut *state.store.acquire().await?, victim.id).await?;
        evict(
            state,
            &record,
            &format!("its reservation was needed to place {for_service}"),
        )
        .await?;
        evicted.push(format!("{}/{}", victim.owner, victim.name));
    }
    Ok(evicted)
}

/// Frees `service`'s placement: its containers removed, its allocations released, the service
/// unloaded; the next request or `load` places it again.
pub async fn evict(state: &HubState, service: &ServiceRecord, reason: &str) -> Result<(), Problem> {
    let _claim = state.claim(service.id).ok_or_else(|| busy(service.id))?;
    if let Some(routes) = state.routes.get(service.id) {
        routes.set_wanted(UNLOADED);
    }
    let held = replicas::allocations_of(state, service.id).await?;
    replicas::on_every_replica(state, service, |client, container| async move {
        client.remove(&container).await
    })
    .await?;
    let mut evicted = service.clone();
    evicted.status = UNLOADED.to_owned();
    evicted.node_id = None;
    evicted.container_id = None;
    evicted.generation = held
        .iter()
        .map(|allocation| allocation.generation)
        .fold(service.generation, i64::max);
    let nodes: Vec<i64> = held.iter().map(|allocation| allocation.node_id).collect();
    let mut transaction = state.store.begin().await?;
    for allocation in &held {
        allocations::remove(&mut transaction, service.id, allocation.replica).await?;
    }
    let saved = services::update(&mut transaction, &evicted).await?;
    let record = replicas::service_operation(
        None,
        "service.evict",
        &saved,
        "ok",
        json!({"reason": reason, "nodes": nodes}),
    );
    operations::commit_with(transaction, &record)
        .await
        .map_err(|err: StoreError| Problem::from(err))?;
    state.placements_changed();
    state
        .metrics
        .models
        .unload_total
        .get_or_create(&labels(state, service))
        .inc();
    state.routes.touch(service.id);
    Ok(())
}
