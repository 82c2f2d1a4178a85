//! Compute nodes (seed 003), for admins: a paged, filterable list with the connection status and
//! when it was last checked; create and edit forms with every field (certificates and keys
//! pasted or read from a file, shown afterwards only as set or not set); "test connection" with
//! its result on the page; the listed and enabled switches; delete behind a confirmation and
//! the API's guard; and a detail page with hardware, each GPU's allocations, the containers on
//! the node and its health history.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use berth_http::Path;
use berth_http::Problem;
use berth_store::nodes::{self, NodeRecord};
use berth_store::operations::OperationFilter;
use berth_store::{allocations, services, stats_history};
use serde_json::{Value, json};

use super::charts::{Chart, ChartRange, chart_range, node_samples, service_charts};
use super::forms::{
    Field, FieldView, FormData, Kind, Refusal, field, form_error, form_status, pairs_text,
    required, submit, views,
};
use super::operations::{OperationRow, recent};
use super::services::Working;
use super::session::{Visitor, admin_only};
use super::text::Tr;
use super::{Chrome, human_bytes, paged, problem_page, render, rendered, see_other, timestamp};
use berth_hub::api;
use berth_hub::state::HubState;

type Shared = State<Arc<HubState>>;

/// Every node field of seed 003 and seed 000's controller fields, in form order.
const FIELDS: &[Field] = &[
    required("name", Kind::Text),
    field("region", Kind::Text),
    field("server_type", Kind::Choice(&["cpu", "gpu", "edge"])),
    field("cpu", Kind::Text),
    field("memory", Kind::Text),
    field("system_disk", Kind::Text),
    field("data_disk", Kind::Text),
    required("public_ip", Kind::Text),
    required("private_ip", Kind::Text),
    field("ssh_port", Kind::Integer),
    field("ssh_user", Kind::Text),
    field("ssh_password", Kind::Secret),
    field("gpu_model", Kind::Text),
    field("gpu_count", Kind::Integer),
    field("gpu_memory_gb", Kind::Integer),
    field("hami_core_dir", Kind::Text),
    field("driver", Kind::Choice(&["docker", "agent"])),
    field("docker_address", Kind::Text),
    field("use_tls", Kind::Flag),
    field("ca_cert", Kind::Pem),
    field("client_cert", Kind::Pem),
    field("client_key", Kind::Pem),
    field("agent_url", Kind::Text),
    field("agent_api_key", Kind::Secret),
    field("enabled", Kind::Flag),
    field("listed", Kind::Flag),
    field("priority", Kind::Integer),
    field("weight", Kind::Integer),
    field("labels", Kind::Pairs),
    field("remark", Kind::Text),
];

/// Rows per page of the list.
const PAGE_SIZE: usize = 25;

/// One row of the list.
#[derive(Debug, Clone)]
pub struct NodeRow {
    id: i64,
    name: String,
    region: String,
    server_type: String,
    address: String,
    status: String,
    message: String,
    checked: String,
    enabled: bool,
    listed: bool,
    gpus: i64,
}

#[derive(Template)]
#[template(path = "console/nodes.html")]
struct ListPage {
    t: Tr,
    chrome: Chrome,
    nodes: Vec<NodeRow>,
    query: String,
    status: String,
    page: usize,
    pages: usize,
    total: usize,
    filter_query: String,
}

fn row(node: &NodeRecord) -> NodeRow {
    NodeRow {
        id: node.id,
        name: node.name.clone(),
        region: node.region.clone(),
        server_type: node.server_type.clone(),
        address: if node.driver == "agent" {
            node.agent_url.clone()
        } else {
            node.docker_address.clone()
        },
        status: node.docker_status.clone(),
        message: node.status_message.clone(),
        checked: node.last_checked_at.map(timestamp).unwrap_or_default(),
        enabled: node.enabled,
        listed: node.listed,
        gpus: node.gpu_count,
    }
}

/// `GET /nodes?q=&status=&page=`: search by name, region or address; filter by status.
pub async fn list(State(state): Shared, visitor: Visitor, RawQuery(raw): RawQuery) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let query = FormData::parse(raw.unwrap_or_default().as_bytes());
    let needle = query.get("q").trim().to_lowercase();
    let status = query.get("status");
    let all = match state.store.acquire().await {
        Ok(mut connection) => nodes::list(&mut connection).await,
        Err(err) => Err(err),
    };
    let all = match all {
        Ok(all) => all,
        Err(err) => return problem_page(&visitor, "nodes", &err.into()),
    };
    let matching: Vec<NodeRow> = all
        .iter()
        .filter(|node| status.is_empty() || node.docker_status == status)
        .filter(|node| {
            needle.is_empty()
                || [
                    &node.name,
                    &node.region,
                    &node.public_ip,
                    &node.docker_address,
                    &node.agent_url,
                ]
                .iter()
                .any(|text| text.to_lowercase().contains(&needle))
        })
        .map(row)
        .collect();
    let shown = paged(matching, &query.get("page"), PAGE_SIZE);
    let filter_query = form_urlencoded::Serializer::new(String::new())
        .append_pair("q", &query.get("q"))
        .append_pair("status", &status)
        .finish();
    render(&ListPage {
        t: visitor.t,
        chrome: visitor.chrome("nodes"),
        nodes: shown.rows,
        query: query.get("q"),
        status,
        page: shown.page,
        pages: shown.pages,
        total: shown.total,
        filter_query,
    })
}

#[derive(Template)]
#[template(path = "console/node_form.html")]
struct FormPage {
    t: Tr,
    chrome: Chrome,
    node_id: Option<i64>,
    node_name: String,
    fields: Vec<FieldView>,
    form_error: Option<String>,
}

fn form_page(
    visitor: &Visitor,
    node: Option<&NodeRecord>,
    values: &FormData,
    refusal: Option<&Refusal>,
) -> Response {
    let stored: HashMap<&str, bool> = node
        .map(|node| {
            HashMap::from([
                ("ssh_password", node.ssh_password_sealed.is_some()),
                ("ca_cert", node.ca_cert_sealed.is_some()),
                ("client_cert", node.client_cert_sealed.is_some()),
                ("client_key", node.client_key_sealed.is_some()),
                ("agent_api_key", node.agent_key_sealed.is_some()),
            ])
        })
        .unwrap_or_default();
    let page = FormPage {
        t: visitor.t,
        chrome: visitor.chrome("nodes"),
        node_id: node.map(|node| node.id),
        node_name: node.map(|node| node.name.clone()).unwrap_or_default(),
        fields: views(
            visitor.t,
            "node",
            FIELDS,
            values,
            &HashMap::new(),
            &stored,
            refusal,
        ),
        form_error: form_error(refusal),
    };
    let status = form_status(refusal);
    rendered(status, &page)
}

/// The stored values of `node` as form values (never its secrets).
fn stored_values(node: &NodeRecord) -> FormData {
    let flag = |on: bool| if on { "on" } else { "" }.to_owned();
    FormData::from_pairs(vec![
        ("name".into(), node.name.clone()),
        ("region".into(), node.region.clone()),
        ("server_type".into(), node.server_type.clone()),
        ("cpu".into(), node.cpu.clone()),
        ("memory".into(), node.memory.clone()),
        ("system_disk".into(), node.system_disk.clone()),
        ("data_disk".into(), node.data_disk.clone()),
        ("public_ip".into(), node.public_ip.clone()),
        ("private_ip".into(), node.private_ip.clone()),
        ("ssh_port".into(), node.ssh_port.to_string()),
        ("ssh_user".into(), node.ssh_user.clone()),
        ("gpu_model".into(), node.gpu_model.clone()),
        ("gpu_count".into(), node.gpu_count.to_string()),
        ("gpu_memory_gb".into(), node.gpu_memory_gb.to_string()),
        ("hami_core_dir".into(), node.hami_core_dir.clone()),
        ("driver".into(), node.driver.clone()),
        ("docker_address".into(), node.docker_address.clone()),
        ("use_tls".into(), flag(node.use_tls)),
        ("agent_url".into(), node.agent_url.clone()),
        ("enabled".into(), flag(node.enabled)),
        ("listed".into(), flag(node.listed)),
        ("priority".into(), node.priority.to_string()),
        ("weight".into(), node.weight.to_string()),
        ("labels".into(), pairs_text(&node.labels)),
        ("remark".into(), node.remark.clone()),
    ])
}

/// `GET /nodes/new`.
pub async fn new_form(visitor: Visitor) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let defaults = FormData::from_pairs(vec![
        ("server_type".into(), "cpu".into()),
        ("driver".into(), "docker".into()),
        (
            "docker_address".into(),
            "unix:///var/run/docker.sock".into(),
        ),
        ("ssh_port".into(), "22".into()),
        ("enabled".into(), "on".into()),
        ("listed".into(), "on".into()),
        ("priority".into(), "100".into()),
        ("weight".into(), "100".into()),
    ]);
    form_page(&visitor, None, &defaults, None)
}

#[derive(Template)]
#[template(path = "console/node_join.html")]
struct JoinPage {
    t: Tr,
    chrome: Chrome,
    command: String,
    docker_run: String,
    minutes: u64,
    since: i64,
    joined: Vec<NodeRow>,
}

#[derive(Template)]
#[template(path = "console/node_joined.html")]
struct JoinedList {
    t: Tr,
    joined: Vec<NodeRow>,
}

/// The nodes that joined with a token since `since` (Unix ms), oldest first.
async fn joined_since(state: &HubState, since: i64) -> Result<Vec<NodeRow>, Problem> {
    let mut connection = state.store.acquire().await?;
    Ok(nodes::list(&mut connection)
        .await?
        .iter()
        .filter(|node| node.origin == "join" && node.created_at >= since)
        .map(row)
        .collect())
}

/// `POST /nodes/join`: a join token and the command that uses it, with the nodes that join
/// after it, refreshed as they appear.
pub async fn join(
    State(state): Shared,
    visitor: Visitor,
    over_tls: Option<axum::Extension<berth_http::listen::ServedOverTls>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let since = berth_store::now_ms();
    let issued = api::node_join::issue(
        State(Arc::clone(&state)),
        visitor.as_user(),
        over_tls,
        uri,
        headers,
        Bytes::new(),
    )
    .await;
    match issued {
        Ok((_, Json(issued))) => {
            let expires_at = issued["expires_at"].as_i64().unwrap_or(since);
            render(&JoinPage {
                t: visitor.t,
                chrome: visitor.chrome("nodes"),
                command: issued["command"].as_str().unwrap_or_default().to_owned(),
                docker_run: issued["docker_run"].as_str().unwrap_or_default().to_owned(),
                minutes: u64::try_from((expires_at - since).div_euclid(60_000)).unwrap_or(0),
                since,
                joined: Vec::new(),
            })
        }
        Err(problem) => problem_page(&visitor, "nodes", &problem),
    }
}

/// `GET /nodes/joined?since=MS`: the join page's live list.
pub async fn joined(State(state): Shared, visitor: Visitor, RawQuery(raw): RawQuery) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let query = FormData::parse(raw.unwrap_or_default().as_bytes());
    let since = query
        .get("since")
        .parse()
        .unwrap_or_else(|_| berth_store::now_ms());
    match joined_since(&state, since).await {
        Ok(joined) => render(&JoinedList {
            t: visitor.t,
            joined,
        }),
        Err(problem) => problem_page(&visitor, "nodes", &problem),
    }
}

/// `POST /nodes`: creates the node through the API (which tests its connection), then shows it.
pub async fn create(State(state): Shared, visitor: Visitor, form: FormData) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let created = submit(FIELDS, &form, |body| {
        api::nodes::create(State(state), visitor.as_user(), body)
    })
    .await;
    match created {
        Ok((_, Json(view))) => {
            let id = serde_json::to_value(&view).unwrap_or_default()["id"]
                .as_i64()
                .unwrap_or_default();
            see_other(&format!("/nodes/{id}"))
        }
        Err(refusal) => form_page(&visitor, None, &form, Some(&refusal)),
    }
}

async fn load(state: &HubState, id: i64) -> Result<NodeRecord, Problem> {
    let mut connection = state.store.acquire().await?;
    Ok(nodes::get(&mut connection, id).await?)
}

/// `GET /nodes/{id}/edit`.
pub async fn edit_form(State(state): Shared, visitor: Visitor, Path(id): Path<i64>) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    match load(&state, id).await {
        Ok(node) => form_page(&visitor, Some(&node), &stored_values(&node), None),
        Err(problem) => problem_page(&visitor, "nodes", &problem),
    }
}

/// `POST /nodes/{id}`: saves the edit form through the API.
pub async fn update(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    form: FormData,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let node = match load(&state, id).await {
        Ok(node) => node,
        Err(problem) => return problem_page(&visitor, "nodes", &problem),
    };
    let updated = submit(FIELDS, &form, |body| {
        api::nodes::update(State(state), visitor.as_user(), Path(id), body)
    })
    .await;
    match updated {
        Ok(_) => see_other(&format!("/nodes/{id}")),
        Err(refusal) => form_page(&visitor, Some(&node), &form, Some(&refusal)),
    }
}

/// One GPU of a node and what is placed on it.
#[derive(Debug, Clone)]
pub struct GpuRow {
    index: u32,
    memory: String,
    used: String,
    holders: Vec<String>,
}

/// One container on the node.
#[derive(Debug, Clone)]
pub struct ContainerRow {
    service_id: i64,
    service: String,
    replica: i64,
    name: String,
    status: String,
    cpu: String,
    memory: String,
    gpus: String,
}

/// A connection test's result, shown on the detail page.
#[derive(Debug, Clone)]
pub struct TestResult {
    status: String,
    message: String,
}

#[derive(Template)]
#[template(path = "console/node.html")]
struct DetailPage {
    t: Tr,
    chrome: Chrome,
    node: NodeRecord,
    checked: String,
    observed: Vec<(String, String)>,
    gpus: Vec<GpuRow>,
    containers: Vec<ContainerRow>,
    operations: Vec<OperationRow>,
    test: Option<TestResult>,
    labels: String,
    images: Vec<ImageRow>,
    images_error: String,
    working: Option<Working>,
    charts: Vec<Chart>,
    range: ChartRange,
}

/// One image on the node.
#[derive(Debug, Clone)]
struct ImageRow {
    reference: String,
    size: String,
    created: String,
}

/// How long the node page waits for the node's image list.
const IMAGES_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The node's images as rows, or what kept them from being read.
async fn image_rows(state: &HubState, node: &NodeRecord) -> (Vec<ImageRow>, String) {
    let listed = tokio::time::timeout(IMAGES_WAIT, async {
        state.node_client(node).await?.images().await
    })
    .await;
    match listed {
        Ok(Ok(images)) => {
            let mut rows: Vec<ImageRow> = images
                .iter()
                .map(|image| ImageRow {
                    reference: image["reference"].as_str().unwrap_or_default().to_owned(),
                    size: human_bytes(image["size_bytes"].as_i64().unwrap_or(0)),
                    created: image["created"]
                        .as_str()
                        .and_then(|created| created.parse::<i64>().ok())
                        .map_or_else(
                            || table_text(&image["created"]),
                            |seconds| timestamp(seconds * 1000),
                        ),
                })
                .collect();
            rows.sort_by(|a, b| a.reference.cmp(&b.reference));
            (rows, String::new())
        }
        Ok(Err(problem)) => (Vec::new(), problem.detail().to_owned()),
        Err(_) => (
            Vec::new(),
            format!(
                "the node did not list its images within {} s",
                IMAGES_WAIT.as_secs()
            ),
        ),
    }
}

/// A JSON value as plain text.
fn table_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "—".to_owned(),
        other => other.to_string(),
    }
}

/// The node's resource charts over `range`: the services placed on it now, each by its share
/// of replicas here.
async fn node_charts(
    state: &HubState,
    connection: &mut berth_store::Conn,
    t: Tr,
    placed: &[allocations::Allocation],
    replicas: &HashMap<i64, i64>,
    range: ChartRange,
) -> Result<Vec<Chart>, Problem> {
    let now = berth_store::now_ms();
    let mut here: HashMap<i64, i64> = HashMap::new();
    for allocation in placed {
        *here.entry(allocation.service_id).or_default() += 1;
    }
    let mut per_service = Vec::with_capacity(here.len());
    for (service, count) in here {
        let all = replicas.get(&service).copied().unwrap_or(count).max(1);
        let samples = stats_history::since(connection, service, now - range.millis()).await?;
        per_service.push((count as f64 / all as f64, samples));
    }
    let step = i64::try_from(state.settings().stats_interval.as_millis()).unwrap_or(10_000);
    let samples = node_samples(&per_service, step.max(1000));
    Ok(service_charts(t, &samples, now - range.millis(), now))
}

async fn detail_page(
    state: &HubState,
    visitor: &Visitor,
    id: i64,
    test: Option<TestResult>,
    range: ChartRange,
) -> Result<Response, Problem> {
    let mut connection = state.store.acquire().await?;
    let node = nodes::get(&mut connection, id).await?;
    let placed = allocations::on_node(&mut connection, id).await?;
    let listed = services::list(&mut connection, None).await?;
    let replicas: HashMap<i64, i64> = listed
        .iter()
        .map(|service| (service.id, service.replicas))
        .collect();
    let names: HashMap<i64, String> = listed
        .into_iter()
        .map(|service| (service.id, service.name))
        .collect();
    let charts = node_charts(state, &mut connection, visitor.t, &placed, &replicas, range).await?;
    let service_name = |id: i64| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let reported = node.observed["gpus"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let gpu_indices: Vec<(u32, i64, Option<i64>)> = if reported.is_empty() {
        (0..u32::try_from(node.gpu_count).unwrap_or(0))
            .map(|index| (index, node.gpu_memory_gb << 30, None))
            .collect()
    } else {
        reported
            .iter()
            .enumerate()
            .map(|(position, gpu)| {
                (
                    gpu["index"]
                        .as_u64()
                        .map_or(position as u32, |index| index as u32),
                    gpu["memory_total_bytes"].as_i64().unwrap_or(0),
                    gpu["memory_used_bytes"].as_i64(),
                )
            })
            .collect()
    };
    let gpus = gpu_indices
        .into_iter()
        .map(|(index, memory, used)| GpuRow {
            index,
            memory: human_bytes(memory),
            used: used.map(human_bytes).unwrap_or_else(|| "—".to_owned()),
            holders: placed
                .iter()
                .filter(|allocation| allocation.gpu_indices.contains(&index))
                .map(|allocation| {
                    let who = format!(
                        "{} r{}",
                        service_name(allocation.service_id),
                        allocation.replica
                    );
                    if allocation.gpu_memory_bytes > 0 {
                        format!("{who}: {}", human_bytes(allocation.gpu_memory_bytes))
                    } else {
                        format!("{who}: {}", visitor.t.get("node.whole_gpu"))
                    }
                })
                .collect(),
        })
        .collect();
    let containers = placed
        .iter()
        .map(|allocation| ContainerRow {
            service_id: allocation.service_id,
            service: service_name(allocation.service_id),
            replica: allocation.replica,
            name: allocation.name.clone(),
            status: allocation.status.clone(),
            cpu: format!("{:.2}", allocation.cpu_millis as f64 / 1000.0),
            memory: human_bytes(allocation.memory_bytes),
            gpus: allocation
                .gpu_indices
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    let filter = OperationFilter {
        node_id: Some(id),
        action: Some("node.*".to_owned()),
        ..OperationFilter::default()
    };
    let operations = recent(&mut connection, filter, 20).await?;
    let working = Working::first(&mut connection, |operation| {
        operation.node_id == Some(id) && operation.action.starts_with("node.")
    })
    .await?;
    drop(connection);
    let (images, images_error) = image_rows(state, &node).await;
    let observed = node
        .observed
        .as_object()
        .map(|facts| {
            facts
                .iter()
                .filter(|(key, value)| *key != "gpus" && !value.is_null())
                .map(|(key, value)| {
                    let shown = match value {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    (key.clone(), shown)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(render(&DetailPage {
        t: visitor.t,
        chrome: visitor.chrome("nodes"),
        checked: node
            .last_checked_at
            .map(timestamp)
            .unwrap_or_else(|| "—".to_owned()),
        labels: pairs_text(&node.labels),
        node,
        observed,
        gpus,
        containers,
        operations,
        test,
        images,
        images_error,
        working,
        charts,
        range,
    }))
}

/// `POST /nodes/{id}/images/pull` with `image`: starts the pull and shows the node page, which
/// follows its progress.
pub async fn pull_image(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    form: FormData,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let body = Bytes::from(json!({"image": form.get("image").trim()}).to_string());
    match api::node_images::pull(
        State(state),
        visitor.as_user(),
        Path(id),
        RawQuery(None),
        body,
    )
    .await
    {
        Ok(_) => see_other(&format!("/nodes/{id}#images")),
        Err(problem) => problem_page(&visitor, "nodes", &problem),
    }
}

/// `POST /nodes/{id}/images/remove` with `name` (and `force`).
pub async fn remove_image(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    form: FormData,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("name", &form.get("name"))
        .append_pair(
            "force",
            if form.find("force").is_some() {
                "true"
            } else {
                "false"
            },
        )
        .finish();
    match api::node_images::remove(
        State(state),
        visitor.as_user(),
        Path(id),
        RawQuery(Some(query)),
    )
    .await
    {
        Ok(_) => see_other(&format!("/nodes/{id}#images")),
        Err(problem) => problem_page(&visitor, "nodes", &problem),
    }
}

/// `GET /nodes/{id}?range=`.
pub async fn detail(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    detail_page(&state, &visitor, id, None, chart_range(raw))
        .await
        .unwrap_or_else(|problem| problem_page(&visitor, "nodes", &problem))
}

/// `POST /nodes/{id}/test`: tests the connection and shows the node with the result.
pub async fn test(State(state): Shared, visitor: Visitor, Path(id): Path<i64>) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let result =
        match api::nodes::test(State(Arc::clone(&state)), visitor.as_user(), Path(id)).await {
            Ok(Json(report)) => TestResult {
                status: report["status"].as_str().unwrap_or("unknown").to_owned(),
                message: report["message"].as_str().unwrap_or_default().to_owned(),
            },
            Err(problem) => return problem_page(&visitor, "nodes", &problem),
        };
    detail_page(&state, &visitor, id, Some(result), ChartRange::default())
        .await
        .unwrap_or_else(|problem| problem_page(&visitor, "nodes", &problem))
}

/// `POST /nodes/{id}/toggle/{enabled|listed}`: flips the switch through the API.
pub async fn toggle(
    State(state): Shared,
    visitor: Visitor,
    Path((id, flag)): Path<(i64, String)>,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    let node = match load(&state, id).await {
        Ok(node) => node,
        Err(problem) => return problem_page(&visitor, "nodes", &problem),
    };
    let body = match flag.as_str() {
        "enabled" => json!({"enabled": !node.enabled}),
        "listed" => json!({"listed": !node.listed}),
        _ => {
            return problem_page(
                &visitor,
                "nodes",
                &Problem::new(StatusCode::NOT_FOUND, format!("no switch {flag:?}")),
            );
        }
    };
    match api::nodes::update(
        State(state),
        visitor.as_user(),
        Path(id),
        Bytes::from(body.to_string()),
    )
    .await
    {
        Ok(_) => see_other(&format!("/nodes/{id}")),
        Err(problem) => problem_page(&visitor, "nodes", &problem),
    }
}

/// `POST /nodes/{id}/delete` with `confirm` ticked: deletes through the API, whose guard
/// refuses a node that still has containers.
pub async fn delete(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    form: FormData,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "nodes") {
        return refused;
    }
    if form.find("confirm").is_none() {
        return problem_page(
            &visitor,
            "nodes",
            &Problem::invalid_field("confirm", visitor.t.get("node.confirm_needed")),
        );
    }
    match api::nodes::delete(State(state), visitor.as_user(), Path(id)).await {
        Ok(_) => see_other("/nodes"),
        Err(problem) => problem_page(&visitor, "nodes", &problem),
    }
}
