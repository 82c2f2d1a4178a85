//! Operations carried out after their intent commits. A change commits the wanted state of a
//! service and its operation row (opened `running`) in one transaction; [`spawn`] then does the
//! work in a task that waits for the service's claim, reports progress through a [`Tracker`]
//! (written at most every half second, and at the end) and ends the row `succeeded` or
//! `failed` with the error in the user's terms. An operation that a later change of the same
//! service overtook before it ran ends `cancelled`: the later one carries the service to its
//! newer wanted state. Every change to a row is announced on [`HubState::operation_events`], for
//! `?wait=` and the live stream. On start, [`resume`] carries on what a stopped hub left
//! unfinished.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_docker::PullProgress;
use berth_http::Problem;
use berth_store::StoreError;
use berth_store::operations::{self, End, Operation, State};
use serde::Serialize;
use serde_json::{Value, json};

use crate::state::HubState;

/// How often pull progress is written to an operation's row at most.
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_millis(500);
/// How often a worker tries again for a service another change holds.
const CLAIM_RETRY: Duration = Duration::from_millis(20);

/// How far an operation got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Steps done.
    pub steps_done: u64,
    /// Steps in all.
    pub steps_total: u64,
    /// What is being done now, in the user's terms.
    pub step: String,
    /// Image bytes pulled so far, over every layer seen.
    pub bytes_done: u64,
    /// Image bytes to pull, over every layer seen.
    pub bytes_total: u64,
}

/// Reports one operation's progress.
pub struct Tracker {
    state: Arc<HubState>,
    id: i64,
    progress: std::sync::Mutex<Progress>,
    layers: std::sync::Mutex<HashMap<String, (u64, u64)>>,
    unwritten: AtomicBool,
}

impl Tracker {
    fn new(state: Arc<HubState>, id: i64) -> Self {
        Self {
            state,
            id,
            progress: Default::default(),
            layers: Default::default(),
            unwritten: AtomicBool::new(false),
        }
    }

    /// The operation's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Records that `done` of `total` steps are done and what comes next; written by the next
    /// flush (at most half a second later, and at the end).
    pub async fn step(&self, done: u64, total: u64, what: impl Into<String>) {
        if let Ok(mut progress) = self.progress.lock() {
            progress.steps_done = done;
            progress.steps_total = total;
            progress.step = what.into();
        }
        self.unwritten.store(true, Ordering::Relaxed);
    }

    /// Takes one step of an image pull into the byte counts; written by the next flush.
    pub fn pulled(&self, step: &PullProgress) {
        let (Some(layer), Some(total)) = (&step.layer, step.total) else {
            return;
        };
        let Ok(mut layers) = self.layers.lock() else {
            return;
        };
        let total = u64::try_from(total).unwrap_or(0);
        let current = u64::try_from(step.current.unwrap_or(0)).unwrap_or(0);
        let entry = layers.entry(layer.clone()).or_default();
        *entry = (current.max(entry.0).min(total), total);
        let (done, all) = layers
            .values()
            .fold((0, 0), |(done, all), (d, t)| (done + d, all + t));
        if let Ok(mut progress) = self.progress.lock() {
            progress.bytes_done = done;
            progress.bytes_total = all;
            if !step.status.is_empty() {
                progress.step = format!("pulling the image: {}", step.status);
            }
        }
        self.unwritten.store(true, Ordering::Relaxed);
    }

    /// A callback for a pull that reports into this tracker.
    pub fn pull_callback(&self) -> impl FnMut(PullProgress) + Send + '_ {
        move |step| self.pulled(&step)
    }

    /// The progress as it is now.
    fn current(&self) -> Progress {
        self.progress
            .lock()
            .map(|progress| progress.clone())
            .unwrap_or_default()
    }

    /// The last progress, for the operation's end; none if it never made any.
    fn last(&self) -> Option<Value> {
        let progress = self.current();
        (progress != Progress::default())
            .then(|| serde_json::to_value(progress).unwrap_or_default())
    }

    /// Writes the progress if it changed since the last write.
    async fn write(&self) {
        if !self.unwritten.swap(false, Ordering::Relaxed) {
            return;
        }
        let value = serde_json::to_value(self.current()).unwrap_or_default();
        let written = async {
            let mut transaction = self.state.store.begin().await?;
            operations::set_progress(&mut transaction, self.id, &value).await?;
            transaction.commit().await.map_err(StoreError::from)
        }
        .await;
        match written {
            Ok(()) => self.state.operation_changed(self.id),
            Err(err) => {
                tracing::warn!(operation = self.id, error = %err, "Writing progress failed.")
            }
        }
    }
}

/// Waits until this task holds `service_id`'s claim (another change or a reconcile may hold it).
pub async fn claim_when_free(state: &HubState, service_id: i64) -> crate::state::ServiceClaim<'_> {
    loop {
        if let Some(claim) = state.claim(service_id) {
            return claim;
        }
        tokio::time::sleep(CLAIM_RETRY).await;
    }
}

/// Ends operation `id` as `outcome` says and announces it.
pub async fn finish(
    state: &HubState,
    id: i64,
    outcome: Result<Value, Problem>,
    progress: Option<Value>,
) -> Result<(), StoreError> {
    let (end, error, detail) = match outcome {
        Ok(detail) => (State::Succeeded, String::new(), detail),
        Err(problem) => (
            State::Failed,
            problem.detail().to_owned(),
            json!({"status": problem.status().as_u16()}),
        ),
    };
    end_as(
        state,
        id,
        End {
            state: end,
            error: &error,
            detail: &detail,
            progress: progress.as_ref(),
        },
    )
    .await
}

async fn end_as(state: &HubState, id: i64, end: End<'_>) -> Result<(), StoreError> {
    let mut transaction = state.store.begin().await?;
    operations::finish(&mut transaction, id, end).await?;
    transaction.commit().await?;
    state.operation_changed(id);
    Ok(())
}

/// What an operation changes: one service's wanted state, one service without changing what
/// is wanted of it (a move), or more than one service (a node's drain), whose work claims each
/// service it touches itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One service's wanted state: a later change of it overtakes this one.
    Service(i64),
    /// One service, its wanted state kept: it overtakes nothing and nothing overtakes it.
    Beside(i64),
    /// Several services, claimed one at a time by the work.
    Several,
}

/// Carries out operation `id`: for a [`Scope::Service`] or [`Scope::Beside`], waits for the
/// service's claim, and for a [`Scope::Service`] ends the operation cancelled if a later change
/// of the service overtook it; then runs `work`,
/// writes its progress every half second while it runs, and ends the row with its outcome. The
/// task outlives the request.
pub fn spawn<F, Fut>(state: Arc<HubState>, id: i64, scope: Scope, work: F)
where
    F: FnOnce(Arc<HubState>, Arc<Tracker>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Value, Problem>> + Send + 'static,
{
    if let Scope::Service(service_id) = scope {
        state.note_change(service_id, id);
    }
    tokio::spawn(async move {
        let (outcome, progress) = {
            let _claim = match scope {
                Scope::Service(service_id) | Scope::Beside(service_id) => {
                    Some(claim_when_free(&state, service_id).await)
                }
                Scope::Several => None,
            };
            if let Scope::Service(service_id) = scope
                && let Some(later) = state.latest_change(service_id).filter(|later| *later > id)
            {
                let reason = format!("operation {later} changed the service after this one");
                let cancelled = End {
                    state: State::Cancelled,
                    error: &reason,
                    detail: &json!({}),
                    progress: None,
                };
                if let Err(err) = end_as(&state, id, cancelled).await {
                    tracing::warn!(operation = id, error = %err, "Recording a cancel failed.");
                }
                return;
            }
            let tracker = Arc::new(Tracker::new(Arc::clone(&state), id));
            let flusher = {
                let tracker = Arc::clone(&tracker);
                tokio::spawn(async move {
                    // Work that ends within the first interval writes its progress once, with
                    // its end.
                    let first = tokio::time::Instant::now() + PROGRESS_WRITE_INTERVAL;
                    let mut ticks = tokio::time::interval_at(first, PROGRESS_WRITE_INTERVAL);
                    loop {
                        ticks.tick().await;
                        tracker.write().await;
                    }
                })
            };
            let outcome = work(Arc::clone(&state), Arc::clone(&tracker)).await;
            flusher.abort();
            // The last progress is written with the end.
            (outcome, tracker.last())
        };
        if let Err(problem) = &outcome {
            tracing::warn!(operation = id, ?scope, error = %problem.detail(), "Operation failed.");
        }
        if let Err(err) = finish(&state, id, outcome, progress).await {
            tracing::error!(operation = id, error = %err, "Recording an operation's end failed.");
        }
    });
}

/// How often a wait for an operation reads it again without hearing of a change: the work of
/// an operation may run in another hub (the leader), whose changes this hub does not hear of.
pub const REREAD_EVERY: Duration = Duration::from_secs(1);

/// Operation `id` once it ended, or as it is when `wait` runs out.
pub async fn wait_for(state: &HubState, id: i64, wait: Duration) -> Result<Operation, StoreError> {
    let mut events = state.operation_events.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let current = {
            let mut connection = state.store.acquire().await?;
            operations::get(&mut connection, id).await?
        };
        if current.state.is_finished() {
            return Ok(current);
        }
        let reread = deadline.min(tokio::time::Instant::now() + REREAD_EVERY);
        loop {
            match tokio::time::timeout_at(reread, events.recv()).await {
                Err(_) if reread >= deadline => return Ok(current),
                Ok(Ok(changed)) if changed != id => continue,
                _ => break,
            }
        }
    }
}

/// What the hub does with an operation a stopped hub left unfinished.
pub enum Resumption {
    /// Carry it out again: its work is safe to repeat.
    Again(Operation),
    /// End it failed with this reason.
    Abandon(Operation, String),
}

/// Sorts what a stopped hub left unfinished: the actions in `repeatable` are carried out again
/// (through the caller), any other ends failed with what to do.
pub async fn unfinished(
    state: &HubState,
    repeatable: &[&str],
) -> Result<Vec<Resumption>, StoreError> {
    let left = {
        let mut connection = state.store.acquire().await?;
        operations::unfinished(&mut connection).await?
    };
    Ok(left
        .into_iter()
        .map(|operation| {
            if repeatable.contains(&operation.action.as_str()) {
                Resumption::Again(operation)
            } else {
                let reason = format!(
                    "the hub stopped before {} finished; the reconciler brings the {} to its wanted state — check it, and repeat the change if it is not there",
                    operation.action, operation.target_kind
                );
                Resumption::Abandon(operation, reason)
            }
        })
        .collect())
}

/// Ends `operation` failed with `reason` (a [`Resumption::Abandon`]).
pub async fn abandon(
    state: &HubState,
    operation: &Operation,
    reason: &str,
) -> Result<(), StoreError> {
    let abandoned = End {
        state: State::Failed,
        error: reason,
        detail: &json!({}),
        progress: None,
    };
    end_as(state, operation.id, abandoned).await
}
