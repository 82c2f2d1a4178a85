//! Model services' lifecycle (seed 004): load and unload, scale to zero after `idle_timeout`,
//! and `max_models` per node — loading one more evicts the least recently used idle model
//! service on that node, never one with requests in flight. An unloaded service keeps its
//! containers (stopped) and its allocations, so a request or `load` starts it where it was.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use berth_http::Problem;
use berth_store::allocations;
use berth_store::operations;
use berth_store::services::{self, ServiceRecord};
use serde_json::json;

use crate::gateway::routes::{ServiceRoutes, now_millis};
use crate::metrics::ServiceLabels;
use crate::replicas;
use crate::state::HubState;

/// The wanted state of an unloaded service: stopped, and started again by the next request.
pub const UNLOADED: &str = "unloaded";

/// Seconds a replica gets to stop when its service is unloaded.
const UNLOAD_GRACE_SECONDS: u32 = 10;

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

/// Starts every replica of `service` and marks it running, first unloading the least recently
/// used idle model services on its nodes when they hold `max_models` already.
pub async fn load(
    state: &HubState,
    service: &ServiceRecord,
    actor: Option<i64>,
    reason: &str,
) -> Result<ServiceRecord, Problem> {
    let evicted = make_room(state, service).await?;
    let _claim = state.claim(service.id).ok_or_else(|| busy(service.id))?;
    replicas::on_every_replica(state, service, |client, container| async move {
        client.start(&container).await
    })
    .await?;
    let mut loaded = service.clone();
    loaded.status = "running".to_owned();
    loaded.error.clear();
    let saved = {
        let mut transaction = state.store.begin().await?;
        let saved = services::update(&mut transaction, &loaded).await?;
        let record = replicas::service_operation(
            actor,
            "service.load",
            &saved,
            "ok",
            json!({"reason": reason, "evicted": evicted}),
        );
        operations::commit_with(transaction, &record).await?;
        saved
    };
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
    state.routes.changed.notify_one();
    Ok(saved)
}

/// Stops every replica of `service` and marks it unloaded; its next request starts it again.
pub async fn unload(
    state: &HubState,
    service: &ServiceRecord,
    actor: Option<i64>,
    reason: &str,
) -> Result<ServiceRecord, Problem> {
    let _claim = state.claim(service.id).ok_or_else(|| busy(service.id))?;
    if let Some(routes) = state.routes.get(service.id) {
        routes.set_wanted(UNLOADED);
    }
    replicas::on_every_replica(state, service, |client, container| async move {
        client.stop(&container, UNLOAD_GRACE_SECONDS).await
    })
    .await?;
    let mut unloaded = service.clone();
    unloaded.status = UNLOADED.to_owned();
    let mut transaction = state.store.begin().await?;
    let saved = services::update(&mut transaction, &unloaded).await?;
    let record = replicas::service_operation(
        actor,
        "service.unload",
        &saved,
        "ok",
        json!({"reason": reason}),
    );
    operations::commit_with(transaction, &record).await?;
    state
        .metrics
        .models
        .unload_total
        .get_or_create(&labels(state, service))
        .inc();
    state.routes.changed.notify_one();
    Ok(saved)
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

/// Unloads every running model service idle past its `idle_timeout`; their names.
pub async fn reclaim_idle(state: &HubState) -> Vec<String> {
    let now = now_millis();
    let mut unloaded = Vec::new();
    for routes in state.routes.all() {
        let Some(limit) = routes.profile().settings.idle_timeout() else {
            continue;
        };
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        if routes.wanted() != "running"
            || routes.usage.in_flight.load(Ordering::Acquire) > 0
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
async fn make_room(state: &HubState, service: &ServiceRecord) -> Result<Vec<String>, Problem> {
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
                    routes.usage.in_flight.load(Ordering::Acquire) == 0
                        && !state.is_busy(routes.id)
                })
                .min_by_key(|routes| last_used(routes))
                .cloned()
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
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
            unload(
                state,
                &record,
                None,
                &format!(
                    "least recently used on node {node}, evicted to load {}",
                    service.name
                ),
            )
            .await?;
            evicted.push(name);
        }
    }
    Ok(evicted)
}
