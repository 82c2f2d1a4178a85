//! A service's container on a node. Launching goes in three steps, each safe to interrupt:
//! record the intent (the allocation at its generation, the service pointing at the node), create
//! the container under a name fixed by hub, service, version and generation (an earlier,
//! interrupted attempt's container is adopted), then record the container id — only if the
//! service is still at that generation, so a replica that was moved meanwhile never comes back.

use axum::http::StatusCode;
use berth_core::ContainerSpec;
use berth_core::schedule::{Placement, Request};
use berth_http::Problem;
use berth_store::nodes::NodeRecord;
use berth_store::operations::{self, NewOperation};
use berth_store::services::{self, ServiceRecord};
use berth_store::{StoreError, allocations};
use serde_json::{Value, json};

use crate::node_client::NodeClient;
use crate::scheduling;
use crate::service_definition::{
    LABEL_GENERATION, LABEL_HUB, LABEL_SERVICE, ServiceDefinition, Target,
};
use crate::state::HubState;

/// What to launch where.
pub struct LaunchPlan<'a> {
    /// The service, its `generation` already the one to launch.
    pub service: ServiceRecord,
    /// What it runs.
    pub definition: &'a ServiceDefinition,
    /// Its owner's name (a label).
    pub owner: &'a str,
    /// The node.
    pub node: &'a NodeRecord,
    /// The scheduler's placement on it.
    pub placement: &'a Placement,
    /// What it takes there.
    pub request: &'a Request,
    /// Start it, or only create it.
    pub start: bool,
}

/// Who launches it and why, for the operation row.
pub struct Cause<'a> {
    /// The user, or `None` for the hub's own loops.
    pub actor: Option<i64>,
    /// The operation's action (`container.create`, `service.failover`, …).
    pub action: &'a str,
    /// Extra detail.
    pub detail: Value,
}

/// A launched container.
pub struct Launched {
    /// The service as stored afterwards.
    pub service: ServiceRecord,
    /// The engine's warnings.
    pub warnings: Vec<String>,
}

/// An operation row about `service`.
pub fn service_operation(
    actor: Option<i64>,
    action: &str,
    service: &ServiceRecord,
    outcome: &str,
    detail: Value,
) -> NewOperation {
    NewOperation {
        user_id: actor,
        action: action.to_owned(),
        target_kind: "service".to_owned(),
        target_id: service.id.to_string(),
        node_id: service.node_id,
        service_id: Some(service.id),
        outcome: outcome.to_owned(),
        detail,
    }
}

/// Launches `plan`; records `cause` as an operation with the outcome.
pub async fn launch(
    state: &HubState,
    plan: LaunchPlan<'_>,
    cause: Cause<'_>,
) -> Result<Launched, Problem> {
    let LaunchPlan {
        mut service,
        definition,
        owner,
        node,
        placement,
        request,
        start,
    } = plan;
    let spec = definition.container_spec(
        service.id,
        &service.name,
        service.version,
        owner,
        &Target {
            node,
            generation: service.generation,
            hub_id: &state.hub_id,
            gpus: &placement.gpus,
        },
    )?;
    service.node_id = Some(node.id);
    service.container_id = None;
    service.container_name = Some(spec.name.clone());
    {
        let mut transaction = state.store.begin().await?;
        service = services::update(&mut transaction, &service).await?;
        let allocation = scheduling::allocation_for(
            service.id,
            service.generation,
            request,
            placement,
            &spec.name,
        );
        allocations::record(&mut transaction, &allocation).await?;
        transaction.commit().await.map_err(StoreError::from)?;
    }
    let outcome = create_and_start(state, node, &spec, start).await;
    let mut transaction = state.store.begin().await?;
    let (id, warnings) = match outcome {
        Ok(created) => created,
        Err(problem) => {
            let detail =
                json!({"node": node.name, "error": problem.detail(), "cause": cause.detail});
            operations::commit_with(
                transaction,
                &service_operation(cause.actor, cause.action, &service, "failed", detail),
            )
            .await?;
            return Err(problem);
        }
    };
    let status = if start { "running" } else { "created" };
    if !allocations::set_container(
        &mut transaction,
        service.id,
        service.generation,
        &id,
        status,
    )
    .await?
    {
        drop(transaction);
        if let Ok(client) = state.node_client(node).await {
            let _ = client.remove(&id).await;
        }
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("service {} was placed elsewhere meanwhile", service.id),
        ));
    }
    service.container_id = Some(id.clone());
    service.status = status.to_owned();
    service.error.clear();
    let saved = services::update(&mut transaction, &service).await?;
    let detail = json!({
        "node": node.name,
        "container_id": id,
        "name": spec.name,
        "generation": service.generation,
        "gpus": placement.gpus,
        "warnings": warnings,
        "cause": cause.detail,
    });
    operations::commit_with(
        transaction,
        &service_operation(cause.actor, cause.action, &saved, "ok", detail),
    )
    .await?;
    Ok(Launched {
        service: saved,
        warnings,
    })
}

/// Creates the container (or adopts the one an interrupted attempt made) and starts it.
async fn create_and_start(
    state: &HubState,
    node: &NodeRecord,
    spec: &ContainerSpec,
    start: bool,
) -> Result<(String, Vec<String>), Problem> {
    let client = state.node_client(node).await?;
    let (id, warnings) = match client.create(spec).await {
        Ok(created) => created,
        Err(problem) if problem.status() == StatusCode::CONFLICT => {
            (adopt(&client, spec).await?, Vec::new())
        }
        Err(problem) => return Err(problem),
    };
    if start {
        client.start(&id).await?;
    }
    Ok((id, warnings))
}

/// The container named like `spec`, if it is this hub's container of the same service and
/// generation (its labels carry the hub's identity); a conflict otherwise.
async fn adopt(client: &NodeClient, spec: &ContainerSpec) -> Result<String, Problem> {
    let existing = client.state(&spec.name).await?;
    let same = [LABEL_HUB, LABEL_SERVICE, LABEL_GENERATION]
        .iter()
        .all(|label| existing.labels.get(*label) == spec.labels.get(*label));
    if !same {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "a container named {} exists and is not this service's",
                spec.name
            ),
        ));
    }
    Ok(existing.id)
}

/// Stops and removes a container that is no longer any service's; a missing one is fine.
pub async fn retire(
    state: &HubState,
    node: &NodeRecord,
    container_id: &str,
) -> Result<(), Problem> {
    let client = state.node_client(node).await?;
    client.remove(container_id).await
}

/// Where a move goes: a chosen node, or wherever the scheduler puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The scheduler's choice, never the current node.
    Scheduled,
    /// This node.
    Node(i64),
}

/// Moves `service` to another node at the next generation: the replacement is launched (and
/// started if the service runs), then the old container is retired when its node answers; a
/// node that does not is cleaned by the reconciler when it returns. The data volume stays
/// behind on the old node.
pub async fn move_service(
    state: &HubState,
    service: ServiceRecord,
    destination: Destination,
    cause: Cause<'_>,
) -> Result<Launched, Problem> {
    let definition: ServiceDefinition = serde_json::from_value(service.definition.clone())
        .map_err(|err| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("service {} has an unreadable definition: {err}", service.id),
            )
        })?;
    let owner = {
        let mut connection = state.store.acquire().await?;
        berth_store::users::get_user(&mut connection, service.owner_id)
            .await?
            .name
    };
    let (all, mut cluster) = scheduling::snapshot(state).await?;
    let current = {
        let mut connection = state.store.acquire().await?;
        allocations::for_service(&mut connection, service.id).await?
    };
    if let Some(current) = &current {
        let held = Placement {
            node_id: current.node_id,
            gpus: scheduling::assignment_of(current),
        };
        cluster.release(&scheduling::request_of(current), &held);
    }
    let mut request = scheduling::request_for(&definition);
    match destination {
        Destination::Scheduled => request.avoid.extend(service.node_id),
        Destination::Node(node) => request.only_node = Some(node),
    }
    let placement = match cluster.place(&request, &state.scheduler_options()) {
        Ok(placement) => placement,
        Err(refusal) => {
            let transaction = state.store.begin().await?;
            let detail = json!({"reason": refusal.to_string(), "cause": cause.detail});
            operations::commit_with(
                transaction,
                &service_operation(cause.actor, cause.action, &service, "refused", detail),
            )
            .await?;
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                refusal.to_string(),
            ));
        }
    };
    let node = all
        .iter()
        .find(|node| node.id == placement.node_id)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                "the chosen node was removed meanwhile",
            )
        })?;
    let old = service.node_id.zip(service.container_id.clone());
    let start = service.status == "running";
    let mut moved = service;
    moved.generation += 1;
    let launched = launch(
        state,
        LaunchPlan {
            service: moved,
            definition: &definition,
            owner: &owner,
            node,
            placement: &placement,
            request: &request,
            start,
        },
        cause,
    )
    .await?;
    if let Some((old_node, container)) = old
        && let Some(old_node) = all.iter().find(|node| node.id == old_node)
        && !state.is_down(old_node.id)
        && retire(state, old_node, &container).await.is_ok()
    {
        let transaction = state.store.begin().await?;
        operations::commit_with(
            transaction,
            &NewOperation {
                node_id: Some(old_node.id),
                ..service_operation(
                    None,
                    "container.remove_stale",
                    &launched.service,
                    "ok",
                    json!({"container_id": container, "node": old_node.name}),
                )
            },
        )
        .await?;
    }
    Ok(launched)
}
