//! The overview (`/`): nodes by connection status, GPU capacity declared, observed and
//! allocated, services by state, and the latest operations.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use berth_store::operations::OperationFilter;
use berth_store::users::Role;
use berth_store::{StoreError, allocations, nodes, services};

use super::operations::{OperationRow, recent};
use super::session::Visitor;
use super::text::Tr;
use super::{Chrome, human_bytes, problem_page, render};
use berth_hub::state::HubState;

/// GPU capacity across the fleet.
#[derive(Debug, Clone, Default)]
pub struct GpuCapacity {
    /// GPUs the node records declare.
    pub declared: i64,
    /// GPUs the nodes reported at their last check.
    pub observed: i64,
    /// GPUs held whole by a service.
    pub whole: i64,
    /// Slices (HAMi shares) placed.
    pub slices: i64,
    /// GPU memory reported in use / in all, where reported.
    pub memory: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    t: Tr,
    chrome: Chrome,
    node_states: Vec<(String, i64)>,
    node_total: i64,
    gpus: GpuCapacity,
    service_states: Vec<(String, i64)>,
    service_total: i64,
    operations: Vec<OperationRow>,
}

/// `GET /`.
pub async fn page(State(state): State<Arc<HubState>>, visitor: Visitor) -> Response {
    let user = visitor.signed.user.clone();
    let admin = user.role == Role::Admin;
    let loaded = async {
        let mut connection = state.store.acquire().await?;
        let mut node_states = BTreeMap::new();
        let mut gpus = GpuCapacity::default();
        let mut node_total = 0;
        if admin {
            let (mut used, mut total) = (0u64, 0u64);
            for node in nodes::list(&mut connection).await? {
                node_total += 1;
                *node_states.entry(node.docker_status.clone()).or_insert(0) += 1;
                gpus.declared += node.gpu_count;
                if let Some(reported) = node.observed["gpus"].as_array() {
                    gpus.observed += reported.len() as i64;
                    for gpu in reported {
                        used += gpu["memory_used_bytes"].as_u64().unwrap_or(0);
                        total += gpu["memory_total_bytes"].as_u64().unwrap_or(0);
                    }
                }
            }
            for allocation in allocations::list(&mut connection).await? {
                if allocation.gpu_memory_bytes > 0 {
                    gpus.slices += 1;
                } else {
                    gpus.whole += allocation.gpu_indices.len() as i64;
                }
            }
            gpus.memory = if total > 0 {
                format!(
                    "{} / {}",
                    human_bytes(used as i64),
                    human_bytes(total as i64)
                )
            } else {
                "—".to_owned()
            };
        }
        let owner = (!admin).then_some(user.id);
        let mut service_states = BTreeMap::new();
        for service in services::list(&mut connection, owner).await? {
            *service_states.entry(service.status).or_insert(0) += 1;
        }
        let filter = OperationFilter {
            visible_to: owner,
            ..OperationFilter::default()
        };
        let operations = recent(&mut connection, filter, 10).await?;
        Ok::<_, StoreError>((node_states, node_total, gpus, service_states, operations))
    };
    match loaded.await {
        Ok((node_states, node_total, gpus, service_states, operations)) => {
            let service_total = service_states.values().sum();
            render(&OverviewPage {
                t: visitor.t,
                chrome: visitor.chrome("overview"),
                node_states: node_states.into_iter().collect(),
                node_total,
                gpus,
                service_states: service_states.into_iter().collect(),
                service_total,
                operations,
            })
        }
        Err(err) => problem_page(&visitor, "overview", &err.into()),
    }
}
