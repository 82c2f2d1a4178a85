//! A running service's new version, rolled out without a gap: its replicas start beside the
//! previous version's, which keep taking requests (the gateway's handover, begun when the
//! intent committed); once every new replica passed its probe and warmup, traffic moves to the
//! new version, the previous replicas finish the requests they have, and only then are they
//! retired. A new version that is not ready within `serving.rollout_deadline_seconds` (or whose
//! replicas cannot be created) is undone: the previous version's definition and replicas —
//! still running — are recorded again as the next version, the new containers are removed, and
//! the operation fails saying why. Requests never reach a replica that was not ready.
//!
//! A rollout can be held: with `routing.canary.percent` and no canary `service`, it pauses once
//! the new replicas are ready and sends that share of requests to them (the rest to the
//! previous version) until its owner promotes it (`berth service rollout promote`) or aborts it
//! (`… abort`: undone as above); `pause` holds any rollout before its traffic moves, `resume`
//! lets it go on. While held, the deadline does not run and the rollout keeps the service.
//!
//! A rollout the hub was stopped in the middle of is carried on when it starts again, the
//! previous replicas back in the gateway's rotation until the new version is ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use berth_http::Problem;
use berth_store::StoreError;
use berth_store::allocations::{self, Allocation};
use berth_store::services::{self, Deployment, ServiceRecord};
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::gateway::readiness;
use crate::ops::Tracker;
use crate::replicas;
use crate::service_work;
use crate::state::HubState;
use berth_gateway::routes::ServiceRoutes;

/// How long the restored previous replicas have to be probed ready again after an undo.
const RESTORE_WAIT: Duration = Duration::from_secs(30);

/// What a rollout's owner told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on: move the traffic once the new version is ready.
    Going,
    /// Hold before moving the traffic (a canary rollout starts so).
    Paused,
    /// Move the traffic now.
    Promote,
    /// Undo the rollout.
    Abort,
}

impl Flow {
    /// The command's name in the API (`pause`, `resume`, `promote`, `abort`).
    pub fn parse(command: &str) -> Option<Self> {
        match command {
            "pause" => Some(Self::Paused),
            "resume" => Some(Self::Going),
            "promote" => Some(Self::Promote),
            "abort" => Some(Self::Abort),
            _ => None,
        }
    }
}

/// The rollouts under way, by service, with what their owners told them.
#[derive(Debug, Default)]
pub struct Controls {
    running: Mutex<HashMap<i64, watch::Sender<Flow>>>,
}

impl Controls {
    fn start(&self, service: i64, flow: Flow) -> watch::Receiver<Flow> {
        let (sender, receiver) = watch::channel(flow);
        if let Ok(mut running) = self.running.lock() {
            running.insert(service, sender);
        }
        receiver
    }

    fn end(&self, service: i64) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&service);
        }
    }

    /// Tells service `service`'s rollout `flow`; false when none is under way. A decision
    /// (promote, abort) stands: a later pause or resume does not undo it.
    pub fn tell(&self, service: i64, flow: Flow) -> bool {
        let Ok(running) = self.running.lock() else {
            return false;
        };
        let Some(sender) = running.get(&service) else {
            return false;
        };
        sender.send_modify(|current| {
            if !matches!(*current, Flow::Promote | Flow::Abort) {
                *current = flow;
            }
        });
        true
    }

    /// Whether service `service` has a rollout under way, and what it was told.
    pub fn of(&self, service: i64) -> Option<Flow> {
        let running = self.running.lock().ok()?;
        running.get(&service).map(|sender| *sender.borrow())
    }
}

/// Carries out the rollout the intent `detail` names (its `retire` list is the previous
/// version's containers, `previous` its service row and allocations).
pub async fn carry_out(
    state: &Arc<HubState>,
    tracker: &Tracker,
    service: &ServiceRecord,
    actor: Option<i64>,
    detail: &Value,
    routes: &Arc<ServiceRoutes>,
) -> Result<Value, Problem> {
    // Carried on after a restart, the rollout finds the gateway without its handover: the
    // previous replicas go back in rotation first.
    let previous: Vec<Allocation> =
        serde_json::from_value(detail["previous"]["allocations"].clone()).unwrap_or_default();
    readiness::resume_handover(state, routes, &previous).await?;
    let settings = routes.profile().settings.clone();
    let canary = settings
        .routing
        .canary
        .as_ref()
        .filter(|split| split.service.is_none())
        .map(|split| split.percent);
    let mut flow = state.rollouts.start(
        service.id,
        if canary.is_some() {
            Flow::Paused
        } else {
            Flow::Going
        },
    );
    let rollout = Rollout {
        state,
        tracker,
        service,
        actor,
        detail,
        routes,
    };
    let outcome = roll(rollout, &mut flow, canary).await;
    state.rollouts.end(service.id);
    outcome
}

/// One rollout's inputs.
#[derive(Clone, Copy)]
struct Rollout<'a> {
    state: &'a HubState,
    tracker: &'a Tracker,
    service: &'a ServiceRecord,
    actor: Option<i64>,
    detail: &'a Value,
    routes: &'a ServiceRoutes,
}

async fn roll(
    rollout: Rollout<'_>,
    flow: &mut watch::Receiver<Flow>,
    canary: Option<u8>,
) -> Result<Value, Problem> {
    let Rollout {
        state,
        tracker,
        service,
        actor,
        detail,
        routes,
    } = rollout;
    let deadline = routes.profile().settings.rollout_deadline();
    let began = Instant::now();
    let previous = replicas::to_retire(detail);
    tracker
        .step(
            0,
            3,
            format!(
                "starting version {} beside the running one",
                service.version
            ),
        )
        .await;
    let wanted = usize::try_from(service.replicas).unwrap_or(0);
    // With `max_surge`, the new replicas start a batch at a time and as many previous ones
    // leave after each batch is ready (a canary rollout starts them all at once).
    let surge = routes
        .profile()
        .settings
        .max_surge
        .filter(|_| canary.is_none())
        .map_or(wanted, |surge| usize::try_from(surge).unwrap_or(wanted))
        .clamp(1, wanted.max(1));
    let (mut launched, mut left_early) = (0, 0);
    while launched < wanted {
        let batch: Vec<i64> = (launched..(launched + surge).min(wanted))
            .filter_map(|replica| i64::try_from(replica).ok())
            .collect();
        let created = tokio::select! {
            created = tokio::time::timeout(
                deadline.saturating_sub(began.elapsed()),
                service_work::bring_up_some(state, tracker, service, actor, true, Some(&batch)),
            ) => created,
            () = told(flow, Flow::Abort) => {
                return Err(undo(state, service, detail, routes, "aborted by its owner").await);
            }
        };
        launched += batch.len();
        let failure = match created {
            Ok(Ok(_)) => {
                let left = deadline.saturating_sub(began.elapsed());
                let ready = tokio::select! {
                    ready = ready_within(routes, launched, left) => ready,
                    () = told(flow, Flow::Abort) => {
                        return Err(undo(state, service, detail, routes, "aborted by its owner").await);
                    }
                };
                (!ready).then(|| {
                    format!(
                        "{} of its {wanted} replica(s) passed their probe and warmup within {} s (serving.rollout_deadline_seconds)",
                        routes.ready_count(),
                        deadline.as_secs()
                    )
                })
            }
            Ok(Err(problem)) => Some(problem.detail().to_owned()),
            Err(_) => Some(format!(
                "its replicas were not created within {} s (serving.rollout_deadline_seconds)",
                deadline.as_secs()
            )),
        };
        if let Some(reason) = failure {
            return Err(undo(state, service, detail, routes, &reason).await);
        }
        if launched < wanted {
            let leaving = previous
                .get(left_early..(left_early + batch.len()).min(previous.len()))
                .unwrap_or_default();
            left_early += leaving.len();
            replicas::drain_and_retire(state, service.id, leaving).await?;
        }
    }
    if *flow.borrow() == Flow::Paused {
        tracker
            .step(
                1,
                3,
                match canary {
                    Some(percent) => format!(
                        "paused: version {} takes {percent}% of the requests; berth service rollout promote or abort",
                        service.version
                    ),
                    None => format!(
                        "paused before version {} takes the traffic; berth service rollout resume, promote or abort",
                        service.version
                    ),
                },
            )
            .await;
        let decided = flow
            .wait_for(|told| *told != Flow::Paused)
            .await
            .map(|told| *told);
        if matches!(decided, Ok(Flow::Abort)) {
            return Err(undo(state, service, detail, routes, "aborted by its owner").await);
        }
    }
    tracker
        .step(
            1,
            3,
            format!("version {} takes the traffic", service.version),
        )
        .await;
    routes.end_handover();
    tracker
        .step(2, 3, "the previous version finishes its requests")
        .await;
    let drained = replicas::drain_and_retire(
        state,
        service.id,
        previous.get(left_early..).unwrap_or_default(),
    )
    .await?;
    tracker.step(3, 3, "rolled out").await;
    Ok(
        json!({"version": service.version, "rolled_out": true, "drained": drained,
        "seconds": began.elapsed().as_secs_f64()}),
    )
}

/// Resolves once the rollout is told `wanted` (never, if its controls are gone).
async fn told(flow: &mut watch::Receiver<Flow>, wanted: Flow) {
    if flow.wait_for(|told| *told == wanted).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether `wanted` replicas of the new version take traffic within `limit`.
async fn ready_within(routes: &ServiceRoutes, wanted: usize, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut signal = routes.watch_ready();
    loop {
        if routes.ready_count() >= wanted {
            return true;
        }
        // Readiness changes wake the wait; a probe that fails after passing does not, so look
        // again at least every half second.
        let next = (tokio::time::Instant::now() + Duration::from_millis(500)).min(deadline);
        if tokio::time::timeout_at(next, signal.changed())
            .await
            .is_err()
            && tokio::time::Instant::now() >= deadline
        {
            return routes.ready_count() >= wanted;
        }
    }
}

/// Undoes the rollout for `reason`: the previous version's definition and allocations recorded
/// again (as the next version), the new containers removed, the handover ended once the
/// previous replicas are ready again; the operation's error.
async fn undo(
    state: &HubState,
    service: &ServiceRecord,
    detail: &Value,
    routes: &ServiceRoutes,
    reason: &str,
) -> Problem {
    let restored = restore(state, service, detail, reason).await;
    let outcome = match restored {
        Ok((version, failed)) => {
            let wanted = usize::try_from(service.replicas).unwrap_or(0);
            ready_within(routes, wanted, RESTORE_WAIT).await;
            let created: Vec<(i64, String)> = failed
                .into_iter()
                .filter(|allocation| !allocation.container_id.is_empty())
                .map(|allocation| (allocation.node_id, allocation.container_id))
                .collect();
            let _ = replicas::retire_all(state, &created).await;
            format!(
                "version {} was rolled back: {reason}; the previous definition serves again as version {version}, and no request reached version {}",
                service.version, service.version
            )
        }
        Err(problem) => format!(
            "version {} did not become ready ({reason}) and undoing it failed: {}; the service stays at version {} and the hub keeps trying to create its replicas",
            service.version,
            problem.detail(),
            service.version
        ),
    };
    routes.end_handover();
    state.routes.touch(service.id);
    Problem::new(StatusCode::CONFLICT, outcome)
}

/// Records the previous version again: its row's definition and counts at the next version
/// number, and its allocations (the containers that still run); the version and the new
/// version's allocations it replaced.
async fn restore(
    state: &HubState,
    service: &ServiceRecord,
    detail: &Value,
    reason: &str,
) -> Result<(i64, Vec<Allocation>), Problem> {
    let before: ServiceRecord = serde_json::from_value(detail["previous"]["service"].clone())
        .map_err(|err| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    let kept: Vec<Allocation> =
        serde_json::from_value(detail["previous"]["allocations"].clone())
            .map_err(|err| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    let mut transaction = state.store.begin().await?;
    let mut current = services::get(&mut transaction, service.id).await?;
    let failed = allocations::for_service(&mut transaction, service.id).await?;
    for allocation in &failed {
        allocations::remove(&mut transaction, service.id, allocation.replica).await?;
    }
    for allocation in &kept {
        allocations::record(&mut transaction, allocation).await?;
    }
    current.version += 1;
    current.definition = before.definition.clone();
    current.image = before.image.clone();
    current.cpu_millis = before.cpu_millis;
    current.memory_bytes = before.memory_bytes;
    current.gpu_count = before.gpu_count;
    current.replicas = before.replicas;
    current.node_id = before.node_id;
    current.container_id = before.container_id.clone();
    current.container_name = before.container_name.clone();
    current.generation = before.generation;
    let deployment = Deployment {
        version: current.version,
        definition: current.definition.clone(),
        node_id: current.node_id,
        user_id: None,
        note: format!("rolled back from version {}: {reason}", service.version),
        created_at: 0,
    };
    services::add_deployment(&mut transaction, current.id, &deployment).await?;
    let saved = services::update(&mut transaction, &current).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    state.placements_changed();
    Ok((saved.version, failed))
}
