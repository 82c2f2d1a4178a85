//! `/containers` routes: create, list, info, start, stop, restart, remove, stats and logs, scoped
//! to the containers this agent created (label `berth.agent=<SERVER_ID>`) and those the original
//! mManager made on this host under the same `SERVER_ID` (`mmanager.managed=true`,
//! `mmanager.server_id=<SERVER_ID>`), adopted as its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_docker::{
    ContainerStats, DriverError, LogQuery, RemoveOptions, Transition, published_ports, real_time,
};
use berth_http::Path;
use bollard::models::ContainerInspectResponse;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Problem, parse_body, parse_query};
use crate::state::{AgentState, status_of};
use crate::timestamp::utc_now;
use crate::wire::{
    AgentLabels, ContainerInfo, ContainerList, CreateContainerRequest, OperationResponse,
    QueryBool, ResourceUsage,
};

type Shared = State<Arc<AgentState>>;

/// The container `id` (full id, unique prefix or name) if this agent manages it.
pub(crate) async fn resolve(
    state: &AgentState,
    id: &str,
) -> Result<ContainerInspectResponse, Problem> {
    let inspected = match state.driver.inspect_raw(id).await {
        Ok(inspected) => inspected,
        // The engine answers 400 for an id it cannot even read as a name: there is no such
        // container either.
        Err(DriverError::ContainerNotFound { .. } | DriverError::Engine { status: 400, .. }) => {
            return Err(Problem::no_container(id));
        }
        Err(err) => return Err(err.into()),
    };
    if state.manages(&inspected) {
        Ok(inspected)
    } else {
        Err(Problem::no_container(id))
    }
}

fn operation(
    container_id: &str,
    operation: &'static str,
    message: String,
    details: Option<Value>,
) -> OperationResponse {
    OperationResponse {
        success: true,
        container_id: container_id.to_owned(),
        message,
        operation,
        timestamp: utc_now(),
        details,
        warnings: Vec::new(),
    }
}

fn name_of(inspected: &ContainerInspectResponse) -> String {
    inspected
        .name
        .clone()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned()
}

/// `POST /containers/`.
pub async fn create(State(state): Shared, body: Bytes) -> Result<Json<OperationResponse>, Problem> {
    let request: CreateContainerRequest = parse_body(&body)?;
    let labels = AgentLabels {
        server_id: &state.config.server_id,
        created_at: utc_now(),
        hami_core_dir: &state.config.hami_core_dir,
    };
    let (spec, networks) = request.into_spec(&labels)?;
    let _one_create_at_a_time = state.create_lock.lock().await;
    match state.driver.inspect(&spec.name).await {
        Ok(existing) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "container name {:?} is already in use by container {}",
                    spec.name, existing.id
                ),
            ));
        }
        Err(DriverError::ContainerNotFound { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    let managed = state.containers().await?;
    let limit = state.config.max_containers as usize;
    if managed.len() >= limit {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "MAX_CONTAINERS={limit} reached: this agent already manages {} containers; remove one or raise MAX_CONTAINERS",
                managed.len()
            ),
        ));
    }
    let created = state
        .driver
        .create(&spec, &mut |step| tracing::debug!(image = %spec.image, status = %step.status, "Pulling image."))
        .await?;
    let mut warnings = created.warnings;
    for network in &networks {
        if let Err(err) = state.driver.connect_network(&created.id, network).await {
            warnings.push(format!("not connected to network {network}: {err}"));
        }
    }
    state.refresh(&created.id).await;
    tracing::info!(container = %created.id, name = %spec.name, "Container created.");
    let details = json!({"name": spec.name, "image": spec.image, "status": "created"});
    let mut response = operation(
        &created.id,
        "create",
        format!("container {} created", spec.name),
        Some(details),
    );
    response.warnings = warnings;
    Ok(Json(response))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: QueryBool,
}

/// `GET /containers/?all=`: from the mirror of this agent's containers (listed from the engine
/// only while the mirror does not follow it).
pub async fn list(
    State(state): Shared,
    RawQuery(raw): RawQuery,
) -> Result<Json<ContainerList>, Problem> {
    let query: ListQuery = parse_query(raw)?;
    let containers: Vec<ContainerInfo> = state
        .containers()
        .await?
        .iter()
        .map(|inspected| list_item(inspected))
        .filter(|item| query.all.0 || item.status == "running")
        .collect();
    let running = containers
        .iter()
        .filter(|container| container.status == "running")
        .count();
    Ok(Json(ContainerList {
        total: containers.len(),
        running,
        stopped: containers.len() - running,
        containers,
    }))
}

/// A container as a list item: what mManager's list carries (id, name, image, status,
/// creation time, labels), plus its times and published ports; the rest empty, as in
/// mManager's list.
pub(crate) fn list_item(inspected: &ContainerInspectResponse) -> ContainerInfo {
    let state = inspected.state.as_ref();
    ContainerInfo {
        id: inspected.id.clone().unwrap_or_default(),
        name: name_of(inspected),
        image: inspected
            .config
            .as_ref()
            .and_then(|config| config.image.clone())
            .unwrap_or_default(),
        status: status_of(inspected),
        created_at: inspected.created.clone().unwrap_or_default(),
        started_at: real_time(state.and_then(|state| state.started_at.as_ref())),
        finished_at: real_time(state.and_then(|state| state.finished_at.as_ref())),
        ports: published_ports(inspected),
        networks: json!({}),
        ip_address: None,
        resource_limits: json!({}),
        resource_usage: None,
        labels: inspected
            .config
            .as_ref()
            .and_then(|config| config.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        environment: BTreeMap::new(),
        mounts: Vec::new(),
    }
}

/// `GET /containers/{id}`.
pub async fn info(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<ContainerInfo>, Problem> {
    let inspected = resolve(&state, &id).await?;
    let status = status_of(&inspected);
    let resource_usage = if status == "running" {
        state
            .driver
            .stats(inspected.id.as_deref().unwrap_or(&id))
            .await
            .ok()
            .map(|stats| usage(&stats))
    } else {
        None
    };
    Ok(Json(container_info(inspected, status, resource_usage)))
}

fn container_info(
    inspected: ContainerInspectResponse,
    status: String,
    resource_usage: Option<ResourceUsage>,
) -> ContainerInfo {
    let name = name_of(&inspected);
    let ports = published_ports(&inspected);
    let config = inspected.config.unwrap_or_default();
    let state = inspected.state.unwrap_or_default();
    let host = inspected.host_config.unwrap_or_default();
    let settings = inspected.network_settings.unwrap_or_default();
    let networks = settings.networks.unwrap_or_default();
    let ip_address = networks
        .values()
        .next()
        .and_then(|network| network.ip_address.clone());
    ContainerInfo {
        id: inspected.id.unwrap_or_default(),
        name,
        image: config.image.unwrap_or_default(),
        status,
        created_at: inspected.created.unwrap_or_default(),
        started_at: state.started_at,
        finished_at: state.finished_at,
        ports,
        networks: serde_json::to_value(&networks).unwrap_or_default(),
        ip_address,
        resource_limits: cpu_and_memory_limits(&host),
        resource_usage,
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        environment: config
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|entry| match entry.split_once('=') {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (entry, String::new()),
            })
            .collect(),
        mounts: inspected
            .mounts
            .unwrap_or_default()
            .into_iter()
            .map(|mount| {
                json!({
                    "source": mount.name.or(mount.source),
                    "destination": mount.destination,
                    "mode": mount.mode,
                    "type": mount.typ.map(|kind| kind.to_string()),
                    "read_only": !mount.rw.unwrap_or(true),
                })
            })
            .collect(),
    }
}

/// `resource_limits` as mManager's clients read them: memory, and `cpu_quota`/`cpu_period`
/// whose ratio is the CPU limit in cores — from the container's own quota and period, or from
/// its NanoCpus on a period of 100 ms (`nano_cpus` beside them); 0 and 0 without a limit.
fn cpu_and_memory_limits(host: &bollard::models::HostConfig) -> Value {
    let nano_cpus = host.nano_cpus.unwrap_or(0);
    let (quota, period) = match (host.cpu_quota.unwrap_or(0), host.cpu_period.unwrap_or(0)) {
        (quota, period) if quota > 0 && period > 0 => (quota, period),
        _ if nano_cpus > 0 => (nano_cpus / 10_000, 100_000),
        _ => (0, 0),
    };
    json!({
        "memory": host.memory.unwrap_or(0),
        "cpu_quota": quota,
        "cpu_period": period,
        "nano_cpus": nano_cpus,
    })
}

fn usage(stats: &ContainerStats) -> ResourceUsage {
    let host_percent = stats.cpu_percent.unwrap_or(0.0) / f64::from(stats.online_cpus.max(1));
    ResourceUsage {
        cpu_percent: round2(host_percent),
        memory_mb: round2(stats.memory_used_bytes as f64 / 1_048_576.0),
        memory_percent: round2(stats.memory_percent),
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// `POST /containers/{id}/start`: starting a running container succeeds without change.
pub async fn start(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Json<OperationResponse>, Problem> {
    let inspected = resolve(&state, &id).await?;
    let name = name_of(&inspected);
    let full_id = inspected.id.unwrap_or_default();
    let transition = state.driver.start(&full_id).await?;
    state.refresh(&full_id).await;
    Ok(Json(match transition {
        Transition::AlreadyThere => operation(
            &id,
            "start",
            format!("container {name} is already running"),
            None,
        ),
        Transition::Changed => {
            tracing::info!(container = %full_id, "Container started.");
            operation(
                &id,
                "start",
                format!("container {name} started"),
                Some(json!({"name": name, "status": "running"})),
            )
        }
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    #[serde(default = "ten_seconds")]
    timeout: u32,
}

impl Default for StopQuery {
    fn default() -> Self {
        Self {
            timeout: ten_seconds(),
        }
    }
}

fn ten_seconds() -> u32 {
    10
}

/// `POST /containers/{id}/stop?timeout=10`: stopping a stopped container succeeds without change.
pub async fn stop(
    State(state): Shared,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<OperationResponse>, Problem> {
    let query: StopQuery = parse_query(raw)?;
    let inspected = resolve(&state, &id).await?;
    let name = name_of(&inspected);
    let status = status_of(&inspected);
    let full_id = inspected.id.unwrap_or_default();
    let transition = state.driver.stop(&full_id, query.timeout).await?;
    state.refresh(&full_id).await;
    Ok(Json(match transition {
        Transition::AlreadyThere => operation(
            &id,
            "stop",
            format!("container {name} is already stopped, current status: {status}"),
            None,
        ),
        Transition::Changed => {
            tracing::info!(container = %full_id, "Container stopped.");
            operation(
                &id,
                "stop",
                format!("container {name} stopped"),
                Some(json!({"name": name, "status": "exited"})),
            )
        }
    }))
}

/// `POST /containers/{id}/restart?timeout=10`.
pub async fn restart(
    State(state): Shared,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<OperationResponse>, Problem> {
    let query: StopQuery = parse_query(raw)?;
    let inspected = resolve(&state, &id).await?;
    let name = name_of(&inspected);
    let full_id = inspected.id.unwrap_or_default();
    state.driver.stop(&full_id, query.timeout).await?;
    state.driver.start(&full_id).await?;
    state.refresh(&full_id).await;
    tracing::info!(container = %full_id, "Container restarted.");
    Ok(Json(operation(
        &id,
        "restart",
        format!("container {name} restarted"),
        Some(json!({"name": name, "status": "running"})),
    )))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    force: QueryBool,
    #[serde(default)]
    keep_data: QueryBool,
}

/// `DELETE /containers/{id}?force=&keep_data=`: removing what does not exist succeeds.
pub async fn remove(
    State(state): Shared,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<OperationResponse>, Problem> {
    let query: RemoveQuery = parse_query(raw)?;
    let inspected = match resolve(&state, &id).await {
        Ok(inspected) => inspected,
        Err(problem) if problem.status() == StatusCode::NOT_FOUND => {
            return Ok(Json(operation(
                &id,
                "remove",
                format!("container {id} does not exist; nothing to remove"),
                None,
            )));
        }
        Err(problem) => return Err(problem),
    };
    let name = name_of(&inspected);
    let full_id = inspected.id.unwrap_or_default();
    let options = RemoveOptions {
        force: query.force.0,
        keep_data: query.keep_data.0,
    };
    let outcome = state
        .driver
        .remove(&full_id, options)
        .await
        .map_err(|err| match err {
            DriverError::Engine {
                status: 409,
                message,
            } => Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "container {name} is running; stop it first or pass force=true ({message})"
                ),
            ),
            other => other.into(),
        })?;
    state.mirror.forget(&full_id);
    tracing::info!(container = %full_id, "Container removed.");
    let details = json!({"name": name, "force": query.force.0, "data_volume_removed": outcome.data_volume_removed});
    Ok(Json(operation(
        &id,
        "remove",
        format!("container {name} removed"),
        Some(details),
    )))
}

/// `GET /containers/{id}/stats`: one sample, also for stopped containers.
pub async fn stats(State(state): Shared, Path(id): Path<String>) -> Result<Json<Value>, Problem> {
    let inspected = resolve(&state, &id).await?;
    let running = status_of(&inspected) == "running";
    let full_id = inspected.id.unwrap_or_default();
    let mut stats = state.driver.stats(&full_id).await?;
    if stats.cpu_percent.is_none() && running {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stats = state.driver.stats(&full_id).await?;
    }
    let gpu = state.driver.gpu_usage(&full_id).await.ok().flatten();
    let resource_usage = usage(&stats);
    Ok(Json(json!({
        "container_id": id,
        "cpu_percent": resource_usage.cpu_percent,
        "cpu_usage": {"online_cpus": stats.online_cpus, "percent_of_one_core": stats.cpu_percent.map(round2)},
        "memory_usage_mb": resource_usage.memory_mb,
        "memory_limit_mb": round2(stats.memory_limit_bytes as f64 / 1_048_576.0),
        "memory_percent": resource_usage.memory_percent,
        "network_rx_bytes": stats.network_rx_bytes,
        "network_tx_bytes": stats.network_tx_bytes,
        "block_read_bytes": stats.block_read_bytes,
        "block_write_bytes": stats.block_write_bytes,
        "pids": stats.pids,
        "gpu": gpu,
        "resource_usage": resource_usage,
        "timestamp": utc_now(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default = "hundred")]
    lines: u32,
    #[serde(default)]
    tail: Option<u64>,
    #[serde(default)]
    timestamps: QueryBool,
    #[serde(default)]
    since: Option<i64>,
    #[serde(default)]
    follow: QueryBool,
}

impl Default for LogsQuery {
    fn default() -> Self {
        Self {
            lines: hundred(),
            tail: None,
            timestamps: QueryBool(false),
            since: None,
            follow: QueryBool(false),
        }
    }
}

fn hundred() -> u32 {
    100
}

/// `GET /containers/{id}/logs?lines=100` (also `tail`, `timestamps`, `since`, `follow`).
pub async fn logs(
    State(state): Shared,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let query: LogsQuery = parse_query(raw)?;
    if !(1..=10_000).contains(&query.lines) {
        return Err(Problem::invalid_field(
            "lines",
            format!("{} is not between 1 and 10000", query.lines),
        ));
    }
    let inspected = resolve(&state, &id).await?;
    let full_id = inspected.id.unwrap_or_default();
    let log_query = LogQuery {
        tail: Some(query.tail.unwrap_or(u64::from(query.lines))),
        timestamps: query.timestamps.0,
        since: query.since,
        follow: query.follow.0,
    };
    if query.follow.0 {
        let stream = state.driver.logs(&full_id, &log_query).map(|chunk| {
            chunk
                .map(|chunk| Bytes::from(chunk.text))
                .map_err(std::io::Error::other)
        });
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let text = state.driver.logs_text(&full_id, &log_query).await?;
    let lines = text.lines().filter(|line| !line.trim().is_empty()).count();
    Ok(
        Json(json!({"container_id": id, "logs": text, "lines": lines, "timestamp": utc_now()}))
            .into_response(),
    )
}
