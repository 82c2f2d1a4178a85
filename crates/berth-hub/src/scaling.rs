//! Changing how many replicas a service runs without touching the ones that stay, and the
//! autoscaler that decides it.
//!
//! A scale is an operation like the others: its intent — the new replicas placed through the
//! scheduler and recorded without containers, the removed ones' allocations gone, the count,
//! and the operation naming the containers to retire — commits in one transaction; then its
//! work launches the new replicas and retires the removed ones only once the gateway's requests
//! in flight on them have ended (the gateway stops sending them new ones as soon as the intent
//! commits).
//!
//! The autoscaler (`serving.autoscale`) reads the gateway's own counts four times a second —
//! requests in flight, or requests per second — and takes as the load the larger of the latest
//! count and its average over the last few seconds (so a step is seen at once and a dip does
//! not count until it lasts), asking for `ceil(load / target)` replicas between `min` and `max`: up once the load has asked for more
//! for `scale_up_seconds`, down once it has asked for fewer for `scale_down_delay_seconds`.
//! With `min: 0`, a service without requests for `scale_down_delay_seconds` is unloaded, and its
//! next request loads it (scale to zero). Each step is a `service.scale` (or `service.unload`)
//! operation whose detail says why.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_http::Problem;
use berth_store::services::{self, ServiceRecord};
use berth_store::{StoreError, allocations, operations};
use serde_json::{Value, json};

use crate::ops::Tracker;
use crate::service_definition::{Autoscale, container_name};
use crate::service_request::MAX_REPLICAS;
use crate::service_work::{self, Change};
use crate::state::HubState;
use crate::{models, replicas, scheduling};
use berth_gateway::routes::ServiceRoutes;

/// Commits the intent to run `to` replicas of `service` (by `actor`, for `reason`) and starts
/// its work; the operation's id.
pub async fn scale(
    state: &Arc<HubState>,
    service: &ServiceRecord,
    to: i64,
    actor: Option<i64>,
    reason: &str,
) -> Result<i64, Problem> {
    if !(1..=MAX_REPLICAS).contains(&to) {
        return Err(Problem::invalid_field(
            "replicas",
            format!("{to} is not between 1 and {MAX_REPLICAS}"),
        ));
    }
    let mut placing = state.placing.lock().await;
    *placing = None;
    let mut service = {
        let mut connection = state.store.acquire().await?;
        services::get(&mut connection, service.id).await?
    };
    let from = service.replicas;
    let definition = replicas::definition_of(&service)?;
    let shape = scheduling::request_for(&definition);
    let current = replicas::allocations_of(state, service.id).await?;
    let mut added = Vec::new();
    if to > from {
        let (all, mut cluster) = scheduling::snapshot(state).await?;
        let options = state.scheduler_options();
        let generation = current
            .iter()
            .map(|allocation| allocation.generation)
            .max()
            .unwrap_or(0)
            + 1;
        for replica in from..to {
            let (placement, _) = scheduling::place_and_commit(
                &mut cluster,
                &all,
                &shape,
                None,
                &options,
                &format!("replica {replica}: "),
            )?;
            added.push((replica, generation, placement));
        }
    }
    let retire: Vec<Value> = current
        .iter()
        .filter(|allocation| allocation.replica >= to && !allocation.container_id.is_empty())
        .map(|allocation| {
            json!([
                allocation.node_id,
                allocation.container_id,
                allocation.replica
            ])
        })
        .collect();
    let mut transaction = state.store.begin().await?;
    for (replica, generation, placement) in &added {
        let name = container_name(
            &state.hub_id,
            &service.name,
            service.id,
            *replica,
            service.version,
            *generation,
        );
        let reference = allocations::ReplicaRef {
            service_id: service.id,
            replica: *replica,
            generation: *generation,
        };
        let allocation = scheduling::allocation_for(reference, &shape, placement, &name);
        allocations::record(&mut transaction, &allocation).await?;
    }
    for allocation in current.iter().filter(|allocation| allocation.replica >= to) {
        allocations::remove(&mut transaction, service.id, allocation.replica).await?;
    }
    service.replicas = to;
    let saved = services::update(&mut transaction, &service).await?;
    let detail = json!({"from": from, "to": to, "reason": reason,
        "start": saved.status == "running", "retire": retire});
    let id = operations::open(
        &mut transaction,
        &replicas::service_operation(actor, Change::Scale.action(), &saved, "running", detail),
        None,
    )
    .await?;
    transaction.commit().await.map_err(StoreError::from)?;
    state.placements_changed();
    drop(placing);
    state.operation_changed(id);
    state.routes.touch(service.id);
    service_work::spawn(state, id, service.id, actor, Change::Scale);
    Ok(id)
}

/// A scale's work: the new replicas launched (started if the service runs), then the removed
/// ones retired once their requests in flight have ended.
pub async fn carry_out(
    state: &Arc<HubState>,
    tracker: &Tracker,
    service: &ServiceRecord,
    actor: Option<i64>,
    detail: &Value,
) -> Result<Value, Problem> {
    let (from, to) = (
        detail["from"].as_i64().unwrap_or(0),
        detail["to"].as_i64().unwrap_or(0),
    );
    let start = detail["start"].as_bool().unwrap_or(false);
    if to > from {
        service_work::bring_up(state, tracker, service, actor, start).await?;
    }
    let retire = replicas::to_retire(detail);
    if retire.is_empty() {
        return Ok(json!({"from": from, "to": to}));
    }
    tracker
        .step(0, 1, "letting the retired replicas finish their requests")
        .await;
    let drained = replicas::drain_and_retire(state, service.id, &retire).await?;
    tracker.step(1, 1, "retired").await;
    Ok(json!({"from": from, "to": to, "retired": retire.len(), "drained": drained}))
}

/// What the autoscaler keeps of one service between two looks.
#[derive(Debug)]
struct Track {
    /// Smoothed requests in flight.
    in_flight: f64,
    /// Smoothed requests per second.
    rate: f64,
    /// The request counter at the last look.
    requests: u64,
    /// When the load began to ask for more replicas than run, or for fewer.
    more_since: Option<Instant>,
    fewer_since: Option<Instant>,
    /// A step asked for and not yet seen in the gateway's table: the count, and since when.
    pending: Option<(usize, Instant)>,
}

/// How often the autoscaler looks.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The weight of the newest sample in the smoothed load (a time constant of about 2.5 s at four
/// looks per second).
const SMOOTHING: f64 = 0.1;

/// How long the autoscaler waits for an asked step to show before it decides again.
const STEP_PATIENCE: Duration = Duration::from_secs(60);

/// How many replicas `load` (per `target` each) asks for, between the bounds.
pub fn wanted_replicas(load: f64, target: f64, min: u32, max: u32) -> usize {
    let wanted = if target > 0.0 {
        (load / target).ceil()
    } else {
        0.0
    };
    (wanted as usize).clamp(min.max(1) as usize, max.max(1) as usize)
}

/// Looks at every autoscaled service four times a second until `stop` completes.
pub async fn run(state: Arc<HubState>, stop: impl Future<Output = ()>) {
    let mut tracks: HashMap<i64, Track> = HashMap::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = tokio::time::sleep(LOOK_EVERY) => {}
            () = &mut stop => return,
        }
        let now = Instant::now();
        let mut seen = Vec::new();
        for routes in state.routes.all() {
            let Some(rule) = routes.profile().settings.autoscale else {
                continue;
            };
            seen.push(routes.id);
            let track = tracks.entry(routes.id).or_insert_with(|| Track {
                in_flight: 0.0,
                rate: 0.0,
                requests: routes.usage.requests.load(Ordering::Relaxed),
                more_since: None,
                fewer_since: None,
                pending: None,
            });
            if let Some(step) = look(&state, &routes, &rule, track, now)
                && let Err(problem) = step.await
            {
                tracing::warn!(service = routes.id, error = %problem.detail(),
                    "An autoscaling step failed; the next look tries again.");
            }
        }
        tracks.retain(|id, _| seen.contains(id));
    }
}

/// One look at `routes`: the step to take now, if any.
fn look<'a>(
    state: &'a Arc<HubState>,
    routes: &'a Arc<ServiceRoutes>,
    rule: &Autoscale,
    track: &mut Track,
    now: Instant,
) -> Option<impl Future<Output = Result<(), Problem>> + 'a> {
    let requests = routes.usage.requests.load(Ordering::Relaxed);
    let in_flight = f64::from(routes.usage.in_flight_total());
    let rate = requests.saturating_sub(track.requests) as f64 / LOOK_EVERY.as_secs_f64();
    track.requests = requests;
    track.in_flight += SMOOTHING * (in_flight - track.in_flight);
    track.rate += SMOOTHING * (rate - track.rate);
    if !routes.wanted_is("running") || state.is_busy(routes.id) {
        return None;
    }
    let running = routes.endpoints().len();
    if let Some((count, since)) = track.pending {
        if running != count && now.duration_since(since) < STEP_PATIENCE {
            return None;
        }
        track.pending = None;
    }
    let (load, target, unit) = match (
        rule.target_in_flight_per_replica,
        rule.target_rps_per_replica,
    ) {
        (Some(target), _) => (track.in_flight.max(in_flight), target, "requests in flight"),
        (None, Some(target)) => (track.rate.max(rate), target, "requests per second"),
        (None, None) => return None,
    };
    let wanted = wanted_replicas(load, target, rule.min, rule.max);
    let idle = rule.min == 0 && in_flight == 0.0 && track.rate < 0.01;
    let (since, delay) = if wanted > running {
        track.fewer_since = None;
        (
            track.more_since.get_or_insert(now),
            Duration::from_secs(rule.scale_up_seconds),
        )
    } else if wanted < running || idle {
        track.more_since = None;
        (
            track.fewer_since.get_or_insert(now),
            Duration::from_secs(rule.scale_down_delay_seconds),
        )
    } else {
        track.more_since = None;
        track.fewer_since = None;
        return None;
    };
    if now.duration_since(*since) < delay {
        return None;
    }
    track.more_since = None;
    track.fewer_since = None;
    let reason = if wanted == running && idle {
        format!(
            "autoscale: no requests for {} s (min 0)",
            rule.scale_down_delay_seconds
        )
    } else {
        format!(
            "autoscale: {load:.1} {unit} over {running} replica(s), target {target} each → {wanted}"
        )
    };
    track.pending = Some((if idle && wanted == running { 0 } else { wanted }, now));
    let to = i64::try_from(wanted).unwrap_or(1);
    Some(async move {
        let service = {
            let mut connection = state.store.acquire().await?;
            services::get(&mut connection, routes.id).await?
        };
        if service.status != "running" {
            return Ok(());
        }
        if idle && to == service.replicas {
            models::unload(state, &service, None, &reason).await?;
        } else if to != service.replicas {
            scale(state, &service, to, None, &reason).await?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_asks_for_replicas_within_the_bounds() {
        assert_eq!(wanted_replicas(0.0, 2.0, 1, 5), 1);
        assert_eq!(
            wanted_replicas(0.0, 2.0, 0, 5),
            1,
            "a running service keeps one"
        );
        assert_eq!(wanted_replicas(4.1, 2.0, 1, 5), 3);
        assert_eq!(wanted_replicas(40.0, 2.0, 1, 5), 5);
        assert_eq!(wanted_replicas(3.0, 1.0, 2, 5), 3);
    }
}
