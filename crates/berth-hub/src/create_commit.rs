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
            state.routes.touch(*service_id);
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

/// What a batch decided for one intent before writing.
enum Slot {
    /// Answered without a write of its own.
    Answered(Result<Committed, Problem>),
    /// Written as the n-th accepted create.
    Accepted(usize),
    /// The same `Idempotency-Key` as the n-th accepted create of this batch: its answer if
    /// it is for the same service name, else refused.
    SameKey { first: usize, same_name: bool },
}

/// Writes the placed intents in one transaction: the answer of each, in order. A name its
/// owner has (or another create of the batch takes first), an exceeded quota or a reused key is
/// that create's own answer; the others commit.
async fn write(
    state: &HubState,
    placed: &[(Pending, Vec<Placed>)],
) -> Result<Vec<Result<Committed, Problem>>, StoreError> {
    let mut transaction = state.store.begin().await?;
    let wanted: Vec<(i64, String)> = placed
        .iter()
        .map(|(pending, _)| {
            let record = &pending.intent.record;
            (record.owner_id, record.name.clone())
        })
        .collect();
    let mut names_used = services::names_taken(&mut transaction, &wanted).await?;
    let mut owners: HashMap<i64, (User, Usage)> = HashMap::new();
    let mut keys: HashMap<(i64, &str), (usize, &str)> = HashMap::new();
    let mut slots = Vec::with_capacity(placed.len());
    let mut accepted = Vec::with_capacity(placed.len());
    for ((pending, placements), name) in placed.iter().zip(wanted) {
        let intent = &pending.intent;
        if let Some(key) = intent.key.as_deref() {
            if let Some(&(first, first_name)) = keys.get(&(intent.actor, key)) {
                let same_name = first_name == intent.record.name;
                slots.push(Slot::SameKey { first, same_name });
                continue;
            }
            if let Some(earlier) =
                operations::find_by_key(&mut transaction, intent.actor, key).await?
            {
                let answer = earlier_answer(&earlier, key, &intent.record.name);
                slots.push(Slot::Answered(answer.map(Committed::Earlier)));
                continue;
            }
        }
        if names_used.contains(&name) {
            slots.push(Slot::Answered(Err(Problem::new(
                StatusCode::CONFLICT,
                format!("you already have a service named {:?}", intent.record.name),
            ))));
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
            slots.push(Slot::Answered(Err(problem)));
            continue;
        }
        used.services += 1;
        used.cpu_millis += intent.definition.cpu_millis * replicas;
        used.memory_bytes += intent.definition.memory_bytes * replicas;
        used.gpus += intent.definition.gpus_needed() * replicas;
        names_used.insert(name);
        if let Some(key) = intent.key.as_deref() {
            keys.insert((intent.actor, key), (accepted.len(), &intent.record.name));
        }
        slots.push(Slot::Accepted(accepted.len()));
        accepted.push((intent, placements.as_slice()));
    }
    let written = insert(state, &mut transaction, &accepted).await?;
    transaction.commit().await?;
    Ok(placed
        .iter()
        .zip(slots)
        .map(|((pending, _), slot)| match slot {
            Slot::Answered(answer) => answer,
            Slot::Accepted(at) => {
                let (service_id, operation) = written[at];
                Ok(Committed::New {
                    service_id,
                    operation,
                })
            }
            Slot::SameKey {
                first,
                same_name: true,
            } => Ok(Committed::Earlier(written[first].1)),
            Slot::SameKey { first, .. } => Err(Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "Idempotency-Key {} was used for another request (operation {}); use a new key",
                    pending.intent.key.as_deref().unwrap_or_default(),
                    written[first].1
                ),
            )),
        })
        .collect())
}

/// Inserts the accepted creates, a few statements for all: the services, their first
/// deployments, every replica's allocation and each one's operation; (service, operation) ids,
/// in order.
async fn insert(
    state: &HubState,
    transaction: &mut berth_store::Conn,
    accepted: &[(&CreateIntent, &[Placed])],
) -> Result<Vec<(i64, i64)>, StoreError> {
    if accepted.is_empty() {
        return Ok(Vec::new());
    }
    let records: Vec<ServiceRecord> = accepted
        .iter()
        .map(|(intent, placements)| ServiceRecord {
            node_id: placements.first().map(|(_, _, node)| node.id),
            ..intent.record.clone()
        })
        .collect();
    let ids = services::insert_all(transaction, &records).await?;
    let mut named = Vec::with_capacity(accepted.len());
    let mut deployments = Vec::with_capacity(accepted.len());
    let mut placed = Vec::new();
    let mut opened = Vec::with_capacity(accepted.len());
    for (((intent, placements), record), &id) in accepted.iter().zip(&mut records.iter()).zip(&ids)
    {
        let name =
            |replica| container_name(&state.hub_id, &record.name, id, replica, record.version, 1);
        let first = name(0);
        let service = ServiceRecord {
            id,
            container_name: Some(first.clone()),
            ..record.clone()
        };
        named.push((id, first.clone()));
        deployments.push((
            id,
            Deployment {
                version: service.version,
                definition: service.definition.clone(),
                node_id: service.node_id,
                user_id: Some(intent.actor),
                note: "created".to_owned(),
                created_at: 0,
            },
        ));
        for (replica, placement, _) in placements.iter() {
            let reference = allocations::ReplicaRef {
                service_id: id,
                replica: *replica,
                generation: 1,
            };
            let replica_name = if *replica == 0 {
                first.clone()
            } else {
                name(*replica)
            };
            placed.push(scheduling::allocation_for(
                reference,
                &intent.shape,
                placement,
                &replica_name,
            ));
        }
        let nodes: Vec<&str> = placements
            .iter()
            .map(|(_, _, node)| node.name.as_str())
            .collect();
        let detail = json!({"name": service.name, "image": service.image, "replicas": service.replicas,
            "nodes": nodes, "start": intent.start});
        let action = Change::Create {
            start: intent.start,
        }
        .action();
        opened.push((
            replicas::service_operation(Some(intent.actor), action, &service, "running", detail),
            intent.key.as_deref(),
        ));
    }
    services::set_container_names(transaction, &named).await?;
    let deployments: Vec<(i64, &Deployment)> = deployments
        .iter()
        .map(|(id, deployment)| (*id, deployment))
        .collect();
    services::add_deployments(transaction, &deployments).await?;
    allocations::insert_all_new(transaction, &placed).await?;
    let operations = operations::open_all(transaction, &opened).await?;
    Ok(ids.into_iter().zip(operations).collect())
}
