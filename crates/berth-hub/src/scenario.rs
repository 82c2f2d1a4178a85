//! Scenarios on simulated nodes (`berth sim SCENARIO.yaml`): a hub on its own SQLite database
//! with hundreds of simulated nodes, services created through the real API, then steps that take
//! nodes down, run monitor and reconciler rounds, and bring nodes back. After every step the
//! runner checks the invariants: no running replica on a down node (unless pinned or nowhere to
//! go), no stale or duplicate container on an answering node, no node over-committed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request};
use berth_core::seeded::SeededRandom;
use berth_store::allocations;
use berth_store::nodes::{self, NodeRecord};
use berth_store::services;
use berth_store::{SecretBox, Store};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::service_definition::{LABEL_GENERATION, LABEL_HUB, LABEL_REPLICA, LABEL_SERVICE};
use crate::simulation::SIMULATED_DRIVER;
use crate::state::{HubSettings, HubState};
use crate::{api, bootstrap, monitor, reconciler, scheduling};

/// How many nodes of each kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// GPU servers: 64 cores, 512 GiB, 8 GPUs of 80 GiB.
    #[serde(default)]
    pub gpu: u32,
    /// CPU servers: 32 cores, 128 GiB.
    #[serde(default)]
    pub cpu: u32,
    /// Edge devices: 8 cores, 16 GiB.
    #[serde(default)]
    pub edge: u32,
}

/// One step, written `- fail: 10`, `- rounds: 3` or `- recover: true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "StepFields")]
pub enum Step {
    /// Take this many answering nodes that run replicas down.
    Fail(u32),
    /// Run this many monitor + reconciler rounds.
    Rounds(u32),
    /// Bring every node back.
    Recover(bool),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFields {
    #[serde(default)]
    fail: Option<u32>,
    #[serde(default)]
    rounds: Option<u32>,
    #[serde(default)]
    recover: Option<bool>,
}

impl TryFrom<StepFields> for Step {
    type Error = String;

    fn try_from(fields: StepFields) -> Result<Self, String> {
        match (fields.fail, fields.rounds, fields.recover) {
            (Some(count), None, None) => Ok(Step::Fail(count)),
            (None, Some(count), None) => Ok(Step::Rounds(count)),
            (None, None, Some(all)) => Ok(Step::Recover(all)),
            _ => Err("a step is one of `fail: N`, `rounds: N` or `recover: true`".to_owned()),
        }
    }
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seed of every random choice.
    #[serde(default)]
    pub seed: u64,
    /// The nodes.
    pub nodes: Fleet,
    /// Services to create (half CPU, a quarter whole GPUs, a quarter GPU slices).
    pub services: u32,
    /// Failed checks in a row that make a node down.
    #[serde(default = "three")]
    pub failure_threshold: u32,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

fn three() -> u32 {
    3
}

/// The invariants after one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Check {
    /// Nodes down now.
    pub down_nodes: usize,
    /// Replicas of running services whose node is down.
    pub replicas_on_down_nodes: usize,
    /// Containers on answering nodes that no allocation claims at their generation.
    pub stale_containers: usize,
    /// Allocations with more than one container on answering nodes.
    pub duplicates: usize,
    /// Nodes whose allocations exceed what they have.
    pub overcommitted_nodes: usize,
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Services created (some may have been refused for capacity).
    pub services_created: usize,
    /// Replicas moved, containers removed and repaired over all rounds.
    pub moved: usize,
    /// Containers removed.
    pub removed: usize,
    /// Containers repaired.
    pub repaired: usize,
    /// The check after each step, with the step's name.
    pub checks: Vec<(String, Check)>,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let scenario: Scenario =
            yaml_serde::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
        if scenario.nodes.gpu + scenario.nodes.cpu + scenario.nodes.edge == 0 {
            return Err(format!("{}: nodes: give at least one node", path.display()));
        }
        if scenario.failure_threshold == 0 {
            return Err(format!(
                "{}: failure_threshold: must be at least 1",
                path.display()
            ));
        }
        Ok(scenario)
    }
}

/// Simulated node `index` of `kind` (`gpu`: 64 cores, 512 GiB, 8 GPUs of 80 GiB; `cpu`: 32
/// cores, 128 GiB; else an edge device of 8 cores and 16 GiB), connected.
pub fn simulated_node(index: u32, kind: &str) -> NodeRecord {
    let mut node = NodeRecord::new(&format!("sim-{kind}-{index:04}"), SIMULATED_DRIVER);
    node.server_type = kind.to_owned();
    node.docker_status = "connected".to_owned();
    let (cpu, memory) = match kind {
        "gpu" => ("64", "512g"),
        "cpu" => ("32", "128g"),
        _ => ("8", "16g"),
    };
    node.cpu = cpu.to_owned();
    node.memory = memory.to_owned();
    if kind == "gpu" {
        node.gpu_count = 8;
        node.gpu_memory_gb = 80;
    }
    node
}

async fn call(
    router: &axum::Router,
    token: &str,
    method: Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()));
    let Ok(request) = request else {
        return (0, Value::Null);
    };
    let Ok(response) = router.clone().oneshot(request).await;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Runs `scenario` with its database in `dir`; `progress` hears one line per step.
pub async fn run(
    scenario: &Scenario,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, String> {
    std::fs::create_dir_all(dir)
        .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    let database = dir.join("berth.db");
    let _ = std::fs::remove_file(&database);
    let store = Store::connect(&format!("sqlite://{}", database.display()))
        .await
        .map_err(|err| err.to_string())?;
    let secrets =
        SecretBox::load_or_create(None, &dir.join("secret.key")).map_err(|err| err.to_string())?;
    let settings = HubSettings {
        failure_threshold: scenario.failure_threshold,
        // A scenario's rounds are logical: the threshold alone decides.
        failure_window: std::time::Duration::ZERO,
        recovery_window: std::time::Duration::ZERO,
        max_services_per_user: i64::MAX,
        ..HubSettings::default()
    };
    let state = Arc::new(
        HubState::new(store, secrets, settings)
            .await
            .map_err(|err| err.to_string())?,
    );
    let booted = bootstrap::ensure(&state, None, None)
        .await
        .map_err(|err| err.to_string())?;
    let token = booted
        .new_admin_token
        .ok_or("the scenario's database already had users")?;
    {
        let mut transaction = state.store.begin().await.map_err(|err| err.to_string())?;
        for (kind, count) in [
            ("gpu", scenario.nodes.gpu),
            ("cpu", scenario.nodes.cpu),
            ("edge", scenario.nodes.edge),
        ] {
            for index in 0..count {
                nodes::insert(&mut transaction, &simulated_node(index, kind))
                    .await
                    .map_err(|err| err.to_string())?;
            }
        }
        transaction.commit().await.map_err(|err| err.to_string())?;
    }
    let router = api::router(Arc::clone(&state));
    let (_, me) = call(&router, &token, Method::GET, "/api/users/me", Value::Null).await;
    let user = me["name"].as_str().unwrap_or("admin").to_owned();
    for (name, spec) in [
        (
            "whole-gpu",
            json!({"name": "whole-gpu", "cpu_cores": 8, "memory": "32g", "gpu_count": 1}),
        ),
        (
            "slice-20g",
            json!({"name": "slice-20g", "cpu_cores": 2, "memory": "8g", "memory_split": true, "gpu_memory_gb": 20}),
        ),
    ] {
        let (status, body) = call(&router, &token, Method::POST, "/api/specs", spec).await;
        if status != 201 {
            return Err(format!("creating spec {name}: {body}"));
        }
    }
    let (_, specs) = call(&router, &token, Method::GET, "/api/specs", Value::Null).await;
    let spec_id = |name: &str| {
        specs["specs"]
            .as_array()
            .and_then(|all| all.iter().find(|spec| spec["name"] == name))
            .map(|spec| spec["id"].clone())
            .unwrap_or(Value::Null)
    };
    let (whole, slice) = (spec_id("whole-gpu"), spec_id("slice-20g"));
    let mut random = SeededRandom::new(scenario.seed);
    let started = Instant::now();
    let mut outcome = Outcome::default();
    for index in 0..scenario.services {
        let mut body =
            json!({"name": format!("svc-{index:05}"), "image": "sim/model:1", "start": true});
        match random.below(4) {
            0 => body["spec_id"] = whole.clone(),
            1 => body["spec_id"] = slice.clone(),
            _ => {
                body["cpu_limit"] = json!(0.5 + random.below(4) as f64 * 0.5);
                body["memory_limit"] = json!(format!("{}g", 1 + random.below(4)));
            }
        }
        let (status, operation) = call(
            &router,
            &token,
            Method::POST,
            &format!("/api/{user}/sim/services?wait=60"),
            body,
        )
        .await;
        if status == 200 && operation["state"] == "succeeded" {
            outcome.services_created += 1;
        }
    }
    progress(&format!(
        "created {} of {} services on {} nodes in {:.1} s",
        outcome.services_created,
        scenario.services,
        scenario.nodes.gpu + scenario.nodes.cpu + scenario.nodes.edge,
        started.elapsed().as_secs_f64()
    ));
    let mut down: Vec<i64> = Vec::new();
    for (number, step) in scenario.steps.iter().enumerate() {
        let step_started = Instant::now();
        let name = match step {
            Step::Fail(count) => {
                let placed = {
                    let mut connection =
                        state.store.acquire().await.map_err(|err| err.to_string())?;
                    allocations::list(&mut connection)
                        .await
                        .map_err(|err| err.to_string())?
                };
                let mut busy: Vec<i64> =
                    placed.iter().map(|allocation| allocation.node_id).collect();
                busy.sort_unstable();
                busy.dedup();
                busy.retain(|node| !down.contains(node));
                for _ in 0..*count {
                    if busy.is_empty() {
                        break;
                    }
                    let node = busy.swap_remove(random.below(busy.len() as u64) as usize);
                    state.fleet.take_down(node);
                    down.push(node);
                }
                format!("fail {count}")
            }
            Step::Rounds(count) => {
                for _ in 0..*count {
                    monitor::check_all(&state)
                        .await
                        .map_err(|err| err.to_string())?;
                    let report = reconciler::round(&state)
                        .await
                        .map_err(|err| err.to_string())?;
                    outcome.moved += report.moved;
                    outcome.removed += report.removed;
                    outcome.repaired += report.repaired;
                }
                format!("{count} rounds")
            }
            Step::Recover(_) => {
                for node in down.drain(..) {
                    state.fleet.bring_back(node);
                }
                "recover".to_owned()
            }
        };
        let check = check(&state).await?;
        progress(&format!(
            "step {}: {name} ({:.2} s): {check:?}; moved {}, removed {}, repaired {} so far",
            number + 1,
            step_started.elapsed().as_secs_f64(),
            outcome.moved,
            outcome.removed,
            outcome.repaired
        ));
        outcome.checks.push((name, check));
    }
    Ok(outcome)
}

/// The invariants now.
pub async fn check(state: &HubState) -> Result<Check, String> {
    let (all_nodes, placed, all_services) = {
        let mut connection = state.store.acquire().await.map_err(|err| err.to_string())?;
        (
            nodes::list(&mut connection)
                .await
                .map_err(|err| err.to_string())?,
            allocations::list(&mut connection)
                .await
                .map_err(|err| err.to_string())?,
            services::list(&mut connection, None)
                .await
                .map_err(|err| err.to_string())?,
        )
    };
    let fleet_down =
        |node: i64| state.fleet.check(node).status != berth_core::ConnectionStatus::Connected;
    let running: HashMap<i64, bool> = all_services
        .iter()
        .map(|service| (service.id, service.status == "running" && !service.pinned))
        .collect();
    let mut result = Check {
        down_nodes: all_nodes.iter().filter(|node| fleet_down(node.id)).count(),
        ..Check::default()
    };
    result.replicas_on_down_nodes = placed
        .iter()
        .filter(|allocation| {
            fleet_down(allocation.node_id) && running.get(&allocation.service_id) == Some(&true)
        })
        .count();
    let wanted: HashMap<(i64, i64), (i64, i64)> = placed
        .iter()
        .map(|allocation| {
            (
                (allocation.service_id, allocation.replica),
                (allocation.node_id, allocation.generation),
            )
        })
        .collect();
    let label = |container: &crate::node_client::ContainerState, key: &str| -> Option<i64> {
        container.labels.get(key)?.parse().ok()
    };
    let mut seen: HashMap<(i64, i64), usize> = HashMap::new();
    for (node, container) in state.fleet.all_containers() {
        if fleet_down(node) || container.labels.get(LABEL_HUB) != Some(&state.hub_id) {
            continue;
        }
        let key = (
            label(&container, LABEL_SERVICE).unwrap_or(0),
            label(&container, LABEL_REPLICA).unwrap_or(0),
        );
        if wanted.get(&key) == Some(&(node, label(&container, LABEL_GENERATION).unwrap_or(0))) {
            *seen.entry(key).or_default() += 1;
        } else {
            result.stale_containers += 1;
        }
    }
    result.duplicates = seen.values().filter(|count| **count > 1).count();
    let cluster = scheduling::cluster(
        &all_nodes,
        &placed,
        &|_| false,
        state.settings().default_max_containers,
    );
    result.overcommitted_nodes = cluster
        .nodes()
        .iter()
        .filter(|node| {
            node.allocated.cpu_millis > node.capacity.cpu_millis
                || node.allocated.memory_bytes > node.capacity.memory_bytes
                || node.containers > node.max_containers
                || node.gpus.iter().any(|gpu| {
                    gpu.sliced_bytes > gpu.memory_bytes
                        || (gpu.whole_tenant && gpu.sliced_bytes > 0)
                })
        })
        .count();
    Ok(result)
}
