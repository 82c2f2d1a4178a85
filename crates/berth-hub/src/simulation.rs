//! Simulated nodes: an in-memory fleet that answers as Docker engines would — containers created,
//! started, stopped, removed and listed by label — and that can be taken down and brought back.
//! Nodes with the driver `simulated` use it; the API never registers them (only the scenario
//! runner does), so the hub's loops can be exercised on hundreds of nodes without Docker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use axum::http::StatusCode;
use berth_core::{ConnectionReport, ConnectionStatus, ContainerSpec};
use berth_http::Problem;

use crate::node_client::ContainerState;

/// The memory a simulated container without a limit sees (16 GiB).
const SIMULATED_HOST_MEMORY: u64 = 16 << 30;

/// The driver name of a simulated node.
pub const SIMULATED_DRIVER: &str = "simulated";

#[derive(Debug, Clone)]
struct SimulatedContainer {
    name: String,
    status: String,
    labels: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
    memory_limit_bytes: u64,
    uses_gpu: bool,
}

#[derive(Debug, Default)]
struct SimulatedNode {
    containers: HashMap<String, SimulatedContainer>,
    next_id: u64,
}

/// Every simulated node's containers, and which nodes are down.
#[derive(Debug, Default)]
pub struct SimulatedFleet {
    nodes: Mutex<HashMap<i64, SimulatedNode>>,
    down: Mutex<HashSet<i64>>,
}

fn unreachable(node: i64) -> Problem {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        format!("simulated node {node} is down"),
    )
}

fn missing(id: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no container {id}"))
}

impl SimulatedFleet {
    /// Takes `node` down (it stops answering; its containers keep running, as on a partition).
    pub fn take_down(&self, node: i64) {
        if let Ok(mut down) = self.down.lock() {
            down.insert(node);
        }
    }

    /// Brings `node` back.
    pub fn bring_back(&self, node: i64) {
        if let Ok(mut down) = self.down.lock() {
            down.remove(&node);
        }
    }

    fn is_up(&self, node: i64) -> bool {
        self.down.lock().is_ok_and(|down| !down.contains(&node))
    }

    /// What a connection test of `node` reports.
    pub fn check(&self, node: i64) -> ConnectionReport {
        if self.is_up(node) {
            ConnectionReport {
                status: ConnectionStatus::Connected,
                message: "simulated node".to_owned(),
            }
        } else {
            ConnectionReport {
                status: ConnectionStatus::Failed,
                message: format!("simulated node {node} is down"),
            }
        }
    }

    fn with_node<T>(
        &self,
        node: i64,
        work: impl FnOnce(&mut SimulatedNode) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        if !self.is_up(node) {
            return Err(unreachable(node));
        }
        let mut nodes = self
            .nodes
            .lock()
            .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "fleet lock poisoned"))?;
        work(nodes.entry(node).or_default())
    }

    /// Creates a container; a taken name is a conflict, as on Docker.
    pub fn create(&self, node: i64, spec: &ContainerSpec) -> Result<String, Problem> {
        self.with_node(node, |state| {
            if state
                .containers
                .values()
                .any(|existing| existing.name == spec.name)
            {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    format!("the name {} is taken", spec.name),
                ));
            }
            state.next_id += 1;
            let id = format!("{node:08x}{:056x}", state.next_id);
            state.containers.insert(
                id.clone(),
                SimulatedContainer {
                    name: spec.name.clone(),
                    status: "created".to_owned(),
                    labels: spec.labels.clone(),
                    ports: BTreeMap::new(),
                    memory_limit_bytes: spec
                        .memory_limit
                        .map_or(SIMULATED_HOST_MEMORY, |limit| limit.bytes()),
                    uses_gpu: spec.gpus.is_some() || spec.gpu_share.is_some(),
                },
            );
            Ok(id)
        })
    }

    /// Sets a container's status (`running`, `exited`).
    pub fn set_status(&self, node: i64, id: &str, status: &str) -> Result<(), Problem> {
        self.with_node(node, |state| {
            let container = state.containers.get_mut(id).ok_or_else(|| missing(id))?;
            container.status = status.to_owned();
            Ok(())
        })
    }

    /// Publishes a container's `port` (`8080/tcp`) as `host_port` on the simulated node's host
    /// (loopback): whatever listens there answers for the container, as a benchmark's upstream.
    pub fn publish(&self, node: i64, id: &str, port: &str, host_port: u16) -> Result<(), Problem> {
        self.with_node(node, |state| {
            let container = state.containers.get_mut(id).ok_or_else(|| missing(id))?;
            container.ports.insert(port.to_owned(), host_port);
            Ok(())
        })
    }

    /// Removes a container; a missing one is fine.
    pub fn remove(&self, node: i64, id: &str) -> Result<(), Problem> {
        self.with_node(node, |state| {
            state.containers.remove(id);
            Ok(())
        })
    }

    /// A stats sample of a running container, in the shape the engine's and agents' samples
    /// take: a quarter of its memory limit in use, a quarter of a core busy, and, when it asked
    /// for a GPU, 1 GiB of GPU memory at 40 % utilization.
    pub fn stats(&self, node: i64, id: &str) -> Result<serde_json::Value, Problem> {
        self.with_node(node, |state| {
            let container = state.containers.get(id).ok_or_else(|| missing(id))?;
            let running = container.status == "running";
            let mut sample = serde_json::json!({
                "simulated": true,
                "cpu_percent": if running { 25.0 } else { 0.0 },
                "memory_used_bytes": if running { container.memory_limit_bytes / 4 } else { 0 },
                "memory_limit_bytes": container.memory_limit_bytes,
                "pids": u64::from(running),
            });
            if container.uses_gpu && running {
                sample["gpu_memory_used_bytes"] = serde_json::json!(1u64 << 30);
                sample["gpu_utilization_percent"] = serde_json::json!(40);
            }
            Ok(sample)
        })
    }

    /// One container by id or name.
    pub fn state(&self, node: i64, id: &str) -> Result<ContainerState, Problem> {
        self.with_node(node, |state| {
            state
                .containers
                .iter()
                .find(|(key, container)| key.as_str() == id || container.name == id)
                .map(|(key, container)| view(key, container))
                .ok_or_else(|| missing(id))
        })
    }

    /// Containers carrying `label` (`key=value`).
    pub fn list_labelled(&self, node: i64, label: &str) -> Result<Vec<ContainerState>, Problem> {
        let (key, value) = label.split_once('=').unwrap_or((label, ""));
        self.with_node(node, |state| {
            Ok(state
                .containers
                .iter()
                .filter(|(_, container)| {
                    container.labels.get(key).map(String::as_str) == Some(value)
                })
                .map(|(id, container)| view(id, container))
                .collect())
        })
    }

    /// Every container of every node, whether or not the node answers: for checks.
    pub fn all_containers(&self) -> Vec<(i64, ContainerState)> {
        self.nodes
            .lock()
            .map(|nodes| {
                nodes
                    .iter()
                    .flat_map(|(node, state)| {
                        state
                            .containers
                            .iter()
                            .map(|(id, container)| (*node, view(id, container)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn view(id: &str, container: &SimulatedContainer) -> ContainerState {
    ContainerState {
        id: id.to_owned(),
        name: container.name.clone(),
        status: container.status.clone(),
        ports: container.ports.clone(),
        labels: container.labels.clone(),
    }
}
