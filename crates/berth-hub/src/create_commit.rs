//! Creates' intents committed together. A create queues its intent (the service, its shape, its
//! replica count) and a task takes the creates' placing lock and commits every intent queued
//! by then in one transaction: each is placed on the creates' snapshot, checked against its
//! owner's quotas (read once per owner and batch, under the owner's lock) and its
//! `Idempotency-Key`, and written — the service, its first deployment, every replica's
//! allocation and the operation. Concurrent creates thus share one write lock, one commit and
//! one quota read instead of paying each. The batch runs in its own task, so a client that hangs
//! up cannot cut it off halfway; every queued create gets its own answer: committed, the
//! earlier create its key names, or why not.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use axum::http::StatusCode;
use berth_core::schedule::{Placement, Request};
use berth_http::Problem;
use berth_store::nodes::NodeRecord;
use berth_store::services::{self, Deployment, ServiceRecord, Usage};
use berth_store::users::{self, User};
use berth_store::{StoreError, allocations, operations};
use serde_json::json;
use tokio::sync::oneshot;

use crate::api::services::{earlier_answer, quota_check};
use crate::models;
use crate::replicas;
use crate::scheduling::{self, PlacementCache};
use crate::service_definition::{ServiceDefinition, container_name};
use crate::service_work::{self, Change};
use crate::state::HubState;

/// A create that passed its checks, ready to be placed and committed.
pub struct CreateIntent {
    /// Who asked.
    pub actor: i64,
    /// The service to insert (its id is given on insert).
    pub record: ServiceRecord,
    /// Its definition.
    pub definition: ServiceDefinition,
    /// What each replica asks of a node.
    pub shape: Request,
    /// Start each replica once created.
    pub start: bool,
    /// The client's `Idempotency-Key`.
    pub key: Option<String>,
}

/// What became of a create's intent.
pub enum Committed {
    /// The service and its operation committed.
    New {
        /// The service's id.
        service_id: i64,
        /// Its create's operation.
        operation: i64,
    },
    /// An earlier create with the same key: its operation.
    Earlier(i64),
}

struct Pending {
    intent: CreateIntent,
    reply: oneshot::Sender<Result<Committed, Problem>>,
}

/// The intents waiting for the next batch.
#[derive(Default)]
pub struct CreateQueue(std::sync::Mutex<Vec<Pending>>);

impl CreateQueue {
    fn push(&self, pending: Pending) {
        if let Ok(mut queue) = self.0.lock() {
            queue.push(pending);
        }
    }

    fn take(&self) -> Vec<Pending> {
        self.0
            .lock()
            .map(|mut queue| std::mem::take(&mut *queue))
            .unwrap_or_default()
    }
}

/// Commits `intent` with whatever other creates are queued, then starts its work.
pub async fn commit(state: &Arc<HubState>, intent: CreateIntent) -> Result<Committed, Problem> {
    let (reply, answer) = oneshot::channel();
    state.create_queue.push(Pending { intent, reply });
    let batch_state = Arc::clone(state);
    tokio::spawn(async move {
        let mut placing = batch_state.placing.lock().await;
        let batch = batch_state.create_queue.take();
        if !batch.is_empty() {
            commit_batch(&batch_state, &mut placing, batch).await;
        }
    });
    answer.await.unwrap_or_else(|_| {
        Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the create was dropped before it committed; try again",
        ))
    })
}

/// Places, writes and answers one batch; starts the work of every committed create.
async fn commit_batch(
    state: &Arc<HubState>,
    placing: &mut Option<PlacementCache>,
    batch: Vec<Pending>,
) {
    let began = std::time::Instant::now();
    let size = batch.len();
    let mut placed = Vec::with_capacity(batch.len());
    for pending in batch {
        match place(state, placing, &pending.intent).await {
            Ok(placements) => placed.push((pending, placements)),
            Err(problem) => {
                let _ = pending.reply.send(Err(problem));
            }
        }
    }
    if placed.is_empty() {
        return;
    }
    let placed_in = began.elapsed();
    let written = write(state, &placed).await;
    tracing::debug!(size, ?placed_in, took = ?began.elapsed(), "Committed a batch of creates.");
    let results = match written {
        Ok(results) => results,
        Err(err) => {
            let problem = Problem::from(err);
            placed
                .iter()
                .map(|_| Err(Problem::new(problem.status(), problem.detail())))
                .collect()
        }
    };
    if results
        .iter()
        .any(|result| !matches!(result, Ok(Committed::New { .. })))
    {
        // Placements that did not land are still counted in the snapshot.
        *placing = None;
    }
    for ((pending, _), result) in placed.into_iter().zip(results) {
        if let Ok(Committed::New {
            service_id,
            operation,
        }) = &result
        {
            state.operation_changed(*operation);
            service_work::spawn(
                state,
                *operation,
                *service_id,
                Some(pending.intent.actor),
                Change::Create {
                    start: pending.intent.start,
                },
            );
        }
        let _ = pending.reply.send(result);
    }
    state.routes.changed.notify_one();
}

/// One replica's placement: replica number, placement, node.
type Placed = (i64, Placement, NodeRecord);

/// Places every replica of `intent` on the creates' snapshot; when they do not fit and the
/// hub may evict for capacity, idle model services' reservations make room first.
async fn place(
    state: &HubState,
    placing: &mut Option<PlacementCache>,
    intent: &CreateIntent,
) -> Result<Vec<Placed>, Problem> {
    let count = intent.record.replicas;
    match scheduling::place_cached(state, placing, &intent.shape, count).await {
        Ok(placements) => Ok(placements),
        Err(refusal) => {
            let evicted =
                models::make_room_for(state, &intent.shape, count, &intent.record.name, 0).await?;
            if evicted.is_empty() {
                return Err(refusal);
            }
            tracing::info!(?evicted, service = %intent.record.name, "Evicted idle model services to make room.");
            *placing = None;
            scheduling::place_cached(state, placing, &intent.shape, count).await
        }
    }
}

/// Writes the placed intents in one transaction: the answer of each, in order.
async fn write(
    state: &HubState,
    placed: &[(Pending, Vec<Placed>)],
) -> Result<Vec<Result<Committed, Problem>>, StoreError> {
    let mut transaction = state.store.begin().await?;
    let mut owners: HashMap<i64, (User, Usage)> = HashMap::new();
    let mut results = Vec::with_capacity(placed.len());
    for (pending, placements) in placed {
        let intent = &pending.intent;
        if let Some(key) = &intent.key
            && let Some(earlier) =
                operations::find_by_key(&mut transaction, intent.actor, key).await?
        {
            results
                .push(earlier_answer(&earlier, key, &intent.record.name).map(Committed::Earlier));
            continue;
        }
        let owner_id = intent.record.owner_id;
        let (owner, used) = match owners.entry(owner_id) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => {
                users::lock_for_change(&mut transaction, owner_id).await?;
                let owner = users::get_user(&mut transaction, owner_id).await?;
                let used = services::usage(&mut transaction, owner_id).await?;
                slot.insert((owner, used))
            }
        };
        let replicas = intent.record.replicas;
        if let Err(problem) = quota_check(state, owner, used, &intent.definition, replicas) {
            results.push(Err(problem));
            continue;
        }
        results.push(Ok(
            insert(state, &mut transaction, intent, placements).await?
        ));
        used.services += 1;
        used.cpu_millis += intent.definition.cpu_millis * replicas;
        used.memory_bytes += intent.definition.memory_bytes * replicas;
        used.gpus += intent.definition.gpus_needed() * replicas;
    }
    transaction.commit().await?;
    Ok(results)
}

/// Inserts one create: the service, its first deployment, its allocations and its operation.
async fn insert(
    state: &HubState,
    transaction: &mut berth_store::Conn,
    intent: &CreateIntent,
    placements: &[Placed],
) -> Result<Committed, StoreError> {
    let mut service = intent.record.clone();
    service.node_id = placements.first().map(|(_, _, node)| node.id);
    let mut service = services::insert(transaction, &service).await?;
    let name = |replica| {
        container_name(
            &state.hub_id,
            &service.name,
            service.id,
            replica,
            service.version,
            1,
        )
    };
    service.container_name = Some(name(0));
    services::set_container_name(transaction, service.id, &name(0)).await?;
    let deployment = Deployment {
        version: service.version,
        definition: service.definition.clone(),
        node_id: service.node_id,
        user_id: Some(intent.actor),
        note: "created".to_owned(),
        created_at: 0,
    };
    services::add_deployment(transaction, service.id, &deployment).await?;
    for (replica, placement, _) in placements {
        let reference = allocations::ReplicaRef {
            service_id: service.id,
            replica: *replica,
            generation: 1,
        };
        let allocation =
            scheduling::allocation_for(reference, &intent.shape, placement, &name(*replica));
        allocations::insert_new(transaction, &allocation).await?;
    }
    let nodes: Vec<&str> = placements
        .iter()
        .map(|(_, _, node)| node.name.as_str())
        .collect();
    let detail = json!({"name": service.name, "image": service.image, "replicas": service.replicas,
        "nodes": nodes, "start": intent.start});
    let operation = operations::open(
        transaction,
        &replicas::service_operation(
            Some(intent.actor),
            Change::Create {
                start: intent.start,
            }
            .action(),
            &service,
            "running",
            detail,
        ),
        intent.key.as_deref(),
    )
    .await?;
    Ok(Committed::New {
        service_id: service.id,
        operation,
    })
}
