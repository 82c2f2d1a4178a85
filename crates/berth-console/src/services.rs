//! Services: the list (a user's own; an admin's everyone's), the create form (an image and a
//! spec, each field explained), start, stop, load, unload and delete, and a detail page with
//! status, node, ports, the gateway URL, live logs, resource charts of the last hour, the
//! deployments with rollback, and the service's operations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_http::Path;
use berth_http::Problem;
use berth_store::operations::OperationFilter;
use berth_store::services::{self, ServiceRecord};
use berth_store::users::Role;
use berth_store::{StoreError, catalog, nodes, stats_history, users};
use serde_json::{Value, json};

use super::charts::{Chart, ChartRange, chart_range, service_charts};
use super::forms::{
    Field, FieldView, FormData, Kind, Refusal, field, form_error, form_status, required, to_json,
    views,
};
use super::operations::{OperationRow, recent};
use super::session::Visitor;
use super::text::Tr;
use super::{Chrome, human_bytes, paged, problem_page, render, rendered, see_other, timestamp};
use berth_hub::api;
use berth_hub::state::HubState;

type Shared = State<Arc<HubState>>;

/// The create form, in order; `repo` is the path segment of the API's create route.
const FIELDS: &[Field] = &[
    required("name", Kind::Text),
    field("repo", Kind::Text),
    required("image", Kind::Text),
    field("spec_id", Kind::Select),
    field("cpu_limit", Kind::Number),
    field("memory_limit", Kind::Size),
    field("gpu_count", Kind::Integer),
    field("port", Kind::Integer),
    field("command", Kind::Text),
    field("environment", Kind::Pairs),
    field("replicas", Kind::Integer),
    field("constraints", Kind::Pairs),
    field(
        "serving.routing.policy",
        Kind::Choice(&["round_robin", "least_loaded", "random", "sticky"]),
    ),
    field("serving.probe_path", Kind::Text),
    field("serving.warmup.path", Kind::Text),
    field("serving.idle_timeout_seconds", Kind::Integer),
    field("serving.start_timeout_seconds", Kind::Integer),
    field("serving.max_concurrency_per_replica", Kind::Integer),
    field("serving.queue_size", Kind::Integer),
    field("is_public", Kind::Flag),
    field("start", Kind::Flag),
];

/// How long the detail page waits for the node's logs before showing the page without them.
const LOG_WAIT: Duration = Duration::from_secs(3);

/// One row of the list.
#[derive(Debug, Clone)]
pub struct ServiceRow {
    id: i64,
    name: String,
    owner: String,
    image: String,
    status: String,
    node: String,
    replicas: i64,
    version: i64,
    updated: String,
}

#[derive(Template)]
#[template(path = "console/services.html")]
struct ListPage {
    t: Tr,
    chrome: Chrome,
    services: Vec<ServiceRow>,
    query: String,
    state: String,
    states: Vec<String>,
    page: usize,
    pages: usize,
    total: usize,
    filter_query: String,
}

/// Rows per page of the list.
const PAGE_SIZE: usize = 50;

/// `GET /services?q=&state=&page=`: search by name, owner, image or node; filter by state.
pub async fn list(State(state): Shared, visitor: Visitor, RawQuery(raw): RawQuery) -> Response {
    let query = FormData::parse(raw.unwrap_or_default().as_bytes());
    let admin = visitor.signed.user.role == Role::Admin;
    let loaded = async {
        let mut connection = state.store.acquire().await?;
        let owner = (!admin).then_some(visitor.signed.user.id);
        let found = services::list(&mut connection, owner).await?;
        let owners: HashMap<i64, String> = users::list_users(&mut connection)
            .await?
            .into_iter()
            .map(|user| (user.id, user.name))
            .collect();
        let node_names: HashMap<i64, String> = nodes::list(&mut connection)
            .await?
            .into_iter()
            .map(|node| (node.id, node.name))
            .collect();
        Ok::<_, StoreError>(
            found
                .into_iter()
                .map(|service| ServiceRow {
                    id: service.id,
                    owner: owners.get(&service.owner_id).cloned().unwrap_or_default(),
                    node: service
                        .node_id
                        .and_then(|id| node_names.get(&id).cloned())
                        .unwrap_or_else(|| "—".to_owned()),
                    name: service.name,
                    image: service.image,
                    status: service.status,
                    replicas: service.replicas,
                    version: service.version,
                    updated: timestamp(service.updated_at),
                })
                .collect(),
        )
    };
    let all: Vec<ServiceRow> = match loaded.await {
        Ok(services) => services,
        Err(err) => return problem_page(&visitor, "services", &err.into()),
    };
    let mut states: Vec<String> = all.iter().map(|row| row.status.clone()).collect();
    states.sort();
    states.dedup();
    let needle = query.get("q").trim().to_lowercase();
    let wanted_state = query.get("state");
    let matching: Vec<ServiceRow> = all
        .into_iter()
        .filter(|row| wanted_state.is_empty() || row.status == wanted_state)
        .filter(|row| {
            needle.is_empty()
                || [&row.name, &row.owner, &row.image, &row.node]
                    .iter()
                    .any(|text| text.to_lowercase().contains(&needle))
        })
        .collect();
    let shown = paged(matching, &query.get("page"), PAGE_SIZE);
    let filter_query = form_urlencoded::Serializer::new(String::new())
        .append_pair("q", &query.get("q"))
        .append_pair("state", &wanted_state)
        .finish();
    render(&ListPage {
        t: visitor.t,
        chrome: visitor.chrome("services"),
        services: shown.rows,
        query: query.get("q"),
        state: wanted_state,
        states,
        page: shown.page,
        pages: shown.pages,
        total: shown.total,
        filter_query,
    })
}

#[derive(Template)]
#[template(path = "console/service_form.html")]
struct FormPage {
    t: Tr,
    chrome: Chrome,
    fields: Vec<FieldView>,
    form_error: Option<String>,
    images: Vec<(String, String)>,
}

async fn form_page(
    state: &HubState,
    visitor: &Visitor,
    values: &FormData,
    refusal: Option<&Refusal>,
) -> Response {
    let catalog = async {
        let mut connection = state.store.acquire().await?;
        let specs = catalog::list_specs(&mut connection).await?;
        let images = catalog::list_images(&mut connection).await?;
        Ok::<_, StoreError>((specs, images))
    };
    let (specs, images) = match catalog.await {
        Ok(found) => found,
        Err(err) => return problem_page(visitor, "services", &err.into()),
    };
    let spec_choices = specs
        .iter()
        .map(|spec| {
            let label = format!(
                "{} — {:.2} CPU, {}{}",
                spec.name,
                spec.cpu_millis as f64 / 1000.0,
                human_bytes(spec.memory_bytes),
                if spec.gpu_count > 0 {
                    format!(", {} GPU", spec.gpu_count)
                } else {
                    String::new()
                }
            );
            (spec.id.to_string(), label)
        })
        .collect();
    let choices = HashMap::from([("spec_id", spec_choices)]);
    let page = FormPage {
        t: visitor.t,
        chrome: visitor.chrome("services"),
        fields: views(
            visitor.t,
            "service",
            FIELDS,
            values,
            &choices,
            &HashMap::new(),
            refusal,
        ),
        form_error: form_error(refusal),
        images: images
            .into_iter()
            .map(|image| (image.reference, image.name))
            .collect(),
    };
    let status = form_status(refusal);
    rendered(status, &page)
}

/// `GET /services/new`.
pub async fn new_form(State(state): Shared, visitor: Visitor) -> Response {
    let defaults = FormData::from_pairs(vec![
        ("repo".into(), "default".into()),
        ("replicas".into(), "1".into()),
        ("start".into(), "on".into()),
    ]);
    form_page(&state, &visitor, &defaults, None).await
}

/// `POST /services`: creates the service through the API, then shows it.
pub async fn create(State(state): Shared, visitor: Visitor, form: FormData) -> Response {
    let mut body = match to_json(FIELDS, &form) {
        Ok(body) => body,
        Err(refusal) => return form_page(&state, &visitor, &form, Some(&refusal)).await,
    };
    let repo = body
        .as_object_mut()
        .and_then(|body| body.remove("repo"))
        .and_then(|repo| repo.as_str().map(str::to_owned))
        .unwrap_or_else(|| "default".to_owned());
    if body["gpu_count"].as_i64().is_some_and(|count| count > 0) {
        body["gpu_required"] = json!(true);
    }
    let created = api::services::create(
        State(Arc::clone(&state)),
        visitor.as_user(),
        Path((visitor.signed.user.name.clone(), repo)),
        RawQuery(Some(CONSOLE_WAIT.to_owned())),
        HeaderMap::new(),
        Bytes::from(body.to_string()),
    )
    .await;
    match created {
        Ok(answer) => {
            let operation = operation_of(answer).await;
            see_other(&format!(
                "/services/{}",
                operation["service_id"].as_i64().unwrap_or_default()
            ))
        }
        Err(problem) => {
            let refusal = Refusal::from_problem(&problem, FIELDS);
            form_page(&state, &visitor, &form, Some(&refusal)).await
        }
    }
}

/// One deployment version.
#[derive(Debug, Clone)]
pub struct DeploymentRow {
    version: i64,
    at: String,
    note: String,
    image: String,
    current: bool,
}

/// The gateway's view of a service.
#[derive(Debug, Clone, Default)]
pub struct Serving {
    url: String,
    ready: i64,
    requests: i64,
    in_flight: i64,
    queued: i64,
    last_used: String,
    loaded_at: String,
    load_ms: String,
    /// The names the OpenAI-compatible front routes here, joined; empty when none.
    model_names: String,
    /// Prompt and completion tokens counted through the front.
    tokens: String,
}

#[derive(Template)]
#[template(path = "console/service.html")]
struct DetailPage {
    t: Tr,
    chrome: Chrome,
    service: ServiceRecord,
    owner: String,
    node_name: String,
    node_id: i64,
    container_status: String,
    replicas: Vec<(i64, String, String)>,
    serving: Option<Serving>,
    resources: String,
    logs: String,
    logs_error: String,
    charts: Vec<Chart>,
    deployments: Vec<DeploymentRow>,
    operations: Vec<OperationRow>,
    working: Option<Working>,
    verbs: Vec<&'static str>,
    can_exec: bool,
    range: ChartRange,
    environment: String,
}

/// The actions that apply to a service in `status`: stop and restart while it runs, start
/// while it does not, load and unload only for one served through the gateway (with a port),
/// and none while a change is under way.
fn verbs_for(status: &str, served: bool, busy: bool) -> Vec<&'static str> {
    if busy {
        return Vec::new();
    }
    let (mut verbs, model) = match status {
        "running" => (vec!["stop", "restart"], "unload"),
        "creating" | "deleting" | "starting" | "stopping" | "restarting" => return Vec::new(),
        _ => (vec!["start"], "load"),
    };
    if served {
        verbs.push(model);
    }
    verbs
}

/// The commands a rollout under way takes: held, it can be promoted, aborted or resumed; going,
/// paused, promoted or aborted.
fn rollout_verbs(flow: berth_hub::rollout::Flow) -> Vec<&'static str> {
    match flow {
        berth_hub::rollout::Flow::Paused => vec!["promote", "abort", "resume"],
        berth_hub::rollout::Flow::Going => vec!["pause", "promote", "abort"],
        _ => Vec::new(),
    }
}

/// The operation a service is going through now, shown with its progress; the page refreshes
/// itself until it ended.
#[derive(Debug, Clone)]
pub struct Working {
    /// The action without its family (`start`, `image_pull`).
    pub kind: String,
    /// What is being done now.
    pub step: String,
    /// Steps done.
    pub done: u64,
    /// Steps in all (at least 1).
    pub total: u64,
    /// Bytes pulled of all, when a pull is under way.
    pub bytes: String,
}

impl Working {
    /// The earliest unfinished operation of service `id`, if any.
    async fn of(conn: &mut berth_store::Conn, id: i64) -> Result<Option<Self>, StoreError> {
        Self::first(conn, |operation| operation.service_id == Some(id)).await
    }

    /// The earliest unfinished operation `wanted` picks, if any.
    pub(super) async fn first(
        conn: &mut berth_store::Conn,
        wanted: impl Fn(&berth_store::operations::Operation) -> bool,
    ) -> Result<Option<Self>, StoreError> {
        let unfinished = berth_store::operations::unfinished(conn).await?;
        Ok(unfinished
            .into_iter()
            .find(|operation| wanted(operation))
            .map(|operation| {
                let progress = &operation.progress;
                let (done, all) = (
                    progress["bytes_done"].as_i64().unwrap_or(0),
                    progress["bytes_total"].as_i64().unwrap_or(0),
                );
                Self {
                    kind: operation
                        .action
                        .split_once('.')
                        .map_or(operation.action.as_str(), |(_, verb)| verb)
                        .to_owned(),
                    step: progress["step"].as_str().unwrap_or_default().to_owned(),
                    done: progress["steps_done"].as_u64().unwrap_or(0),
                    total: progress["steps_total"].as_u64().unwrap_or(1).max(1),
                    bytes: if all > 0 {
                        format!("{} / {}", human_bytes(done), human_bytes(all))
                    } else {
                        String::new()
                    },
                }
            }))
    }
}

/// The gateway's base URL as this browser reaches it: the gateway's own address, with the
/// host the browser used when the gateway listens on every interface.
fn millis_text(value: &Value) -> String {
    value
        .as_i64()
        .map(timestamp)
        .unwrap_or_else(|| "—".to_owned())
}

async fn detail_page(
    state: &Arc<HubState>,
    visitor: &Visitor,
    headers: &HeaderMap,
    id: i64,
    range: ChartRange,
) -> Result<Response, Problem> {
    let user = visitor.as_user();
    let Json(status) = api::services::status(
        State(Arc::clone(state)),
        user.clone(),
        Path(id),
        headers.clone(),
    )
    .await?;
    let mut connection = state.store.acquire().await?;
    let service = services::get(&mut connection, id).await?;
    let owner = users::get_user(&mut connection, service.owner_id)
        .await?
        .name;
    let history = services::deployments(&mut connection, id).await?;
    let now = berth_store::now_ms();
    let samples = stats_history::since(&mut connection, id, now - range.millis()).await?;
    let operations = recent(
        &mut connection,
        OperationFilter {
            service_id: Some(id),
            ..OperationFilter::default()
        },
        10,
    )
    .await?;
    let working = Working::of(&mut connection, id).await?;
    drop(connection);
    let (logs, logs_error) = if service.container_id.is_some() && service.node_id.is_some() {
        let query = Some("tail=200".to_owned());
        let fetched = tokio::time::timeout(
            LOG_WAIT,
            api::services::logs(State(Arc::clone(state)), user, Path(id), RawQuery(query)),
        )
        .await;
        match fetched {
            Ok(Ok(response)) => match axum::body::to_bytes(response.into_body(), 4 << 20).await {
                Ok(bytes) => {
                    let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                    (
                        value["logs"].as_str().unwrap_or_default().to_owned(),
                        String::new(),
                    )
                }
                Err(err) => (String::new(), err.to_string()),
            },
            Ok(Err(problem)) => (String::new(), problem.detail().to_owned()),
            Err(_) => (
                String::new(),
                visitor.t.get("services.logs_slow").to_owned(),
            ),
        }
    } else {
        (
            String::new(),
            visitor.t.get("services.not_placed").to_owned(),
        )
    };
    let serving = status["serving"].as_object().map(|serving| Serving {
        url: format!(
            "{}{}",
            api::services::gateway_base(state, headers).unwrap_or_default(),
            serving["gateway_path"].as_str().unwrap_or_default()
        ),
        ready: serving["ready_replicas"].as_i64().unwrap_or(0),
        requests: serving["requests"].as_i64().unwrap_or(0),
        in_flight: serving["in_flight"].as_i64().unwrap_or(0),
        queued: serving["queued"].as_i64().unwrap_or(0),
        model_names: serving["model_names"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        tokens: format!(
            "{} / {}",
            serving["tokens"]["prompt"].as_i64().unwrap_or(0),
            serving["tokens"]["completion"].as_i64().unwrap_or(0)
        ),
        last_used: millis_text(&serving["last_used_ms"]),
        loaded_at: millis_text(&serving["loaded_at_ms"]),
        load_ms: serving["load_duration_ms"]
            .as_i64()
            .map_or_else(|| "—".to_owned(), |ms| format!("{ms} ms")),
    });
    let resources = format!(
        "{:.2} CPU · {}{}",
        service.cpu_millis as f64 / 1000.0,
        human_bytes(service.memory_bytes),
        if service.gpu_count > 0 {
            format!(" · {} GPU", service.gpu_count)
        } else {
            String::new()
        }
    );
    let deployments = history
        .iter()
        .map(|deployment| DeploymentRow {
            version: deployment.version,
            at: timestamp(deployment.created_at),
            note: deployment.note.clone(),
            image: deployment.definition["image"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            current: deployment.version == service.version,
        })
        .collect();
    let replicas = status["replicas"]
        .as_array()
        .map(|replicas| {
            replicas
                .iter()
                .map(|replica| {
                    let container: String = replica["container_id"]
                        .as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(12)
                        .collect();
                    let down = if replica["node_down"].as_bool() == Some(true) {
                        visitor.t.get("services.node_down").to_owned()
                    } else {
                        String::new()
                    };
                    (replica["replica"].as_i64().unwrap_or(0), container, down)
                })
                .collect()
        })
        .unwrap_or_default();
    let working_now = working.is_some();
    Ok(render(&DetailPage {
        t: visitor.t,
        chrome: visitor.chrome("services"),
        owner,
        node_name: status["node"]["name"].as_str().unwrap_or("—").to_owned(),
        node_id: status["node"]["id"].as_i64().unwrap_or(0),
        container_status: status["container_status"]
            .as_str()
            .unwrap_or("—")
            .to_owned(),
        replicas,
        working,
        serving,
        resources,
        logs,
        logs_error,
        charts: service_charts(visitor.t, &samples, now - range.millis(), now),
        range,
        deployments,
        operations,
        verbs: match state.rollouts.of(service.id) {
            Some(flow) => rollout_verbs(flow),
            None => verbs_for(
                &service.status,
                service.definition["port"].is_u64(),
                working_now,
            ),
        },
        can_exec: service.status == "running",
        environment: service.definition["environment"]
            .as_object()
            .map(|environment| {
                environment
                    .iter()
                    .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default(),
        service,
    }))
}

/// `GET /services/{id}?range=`; another user's service is not found.
pub async fn detail(
    State(state): Shared,
    visitor: Visitor,
    headers: HeaderMap,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Response {
    detail_page(&state, &visitor, &headers, id, chart_range(raw))
        .await
        .unwrap_or_else(|problem| problem_page(&visitor, "services", &problem))
}

/// How long a change from the console waits for its operation before showing the page (which
/// then shows the operation's progress and refreshes itself until it ended).
const CONSOLE_WAIT: &str = "wait=10";

fn waiting() -> RawQuery {
    RawQuery(Some(CONSOLE_WAIT.to_owned()))
}

/// The operation an API handler answered a change with.
async fn operation_of(answer: Response) -> Value {
    let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// `POST /services/{id}/do/{start|stop|restart|load|unload|delete}`, and a rollout's
/// `pause|resume|promote|abort`, through the API's handlers.
pub async fn act(
    State(state): Shared,
    visitor: Visitor,
    Path((id, verb)): Path<(i64, String)>,
    form: FormData,
) -> Response {
    let user = visitor.as_user();
    let shared = State(Arc::clone(&state));
    let done = match verb.as_str() {
        "start" => api::services::start(shared, user, Path(id), waiting())
            .await
            .map(drop),
        "stop" => api::services::stop(shared, user, Path(id), waiting(), Bytes::new())
            .await
            .map(drop),
        "restart" => api::services::restart(shared, user, Path(id), waiting(), Bytes::new())
            .await
            .map(drop),
        "load" => api::services::load(shared, user, Path(id), waiting())
            .await
            .map(drop),
        "unload" => api::services::unload(shared, user, Path(id), waiting())
            .await
            .map(drop),
        "pause" | "resume" | "promote" | "abort" => {
            api::services::rollout(shared, user, Path((id, verb.clone())))
                .await
                .map(drop)
        }
        "delete" if form.find("confirm").is_some() => {
            return match api::services::delete(shared, user, Path(id), waiting()).await {
                Ok(_) => see_other("/services"),
                Err(problem) => problem_page(&visitor, "services", &problem),
            };
        }
        "delete" => Err(Problem::invalid_field(
            "confirm",
            visitor.t.get("services.confirm_needed"),
        )),
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no action {verb:?}"),
        )),
    };
    match done {
        Ok(()) => see_other(&format!("/services/{id}")),
        Err(problem) => problem_page(&visitor, "services", &problem),
    }
}

#[derive(Template)]
#[template(path = "console/services_bulk.html")]
struct BulkPage {
    t: Tr,
    chrome: Chrome,
    verb: String,
    /// Service id, name, and what became of the action (empty: accepted).
    outcomes: Vec<(i64, String, String)>,
}

/// Most services one bulk action takes.
const BULK_LIMIT: usize = 200;

/// `POST /services/bulk` with `action` (start, stop or delete), the checked `id`s and, for a
/// delete, `confirm`: the action on each service as the visitor (the API's checks apply one by
/// one); the page says what became of each.
pub async fn bulk(State(state): Shared, visitor: Visitor, form: FormData) -> Response {
    let verb = form.get("action");
    let ids: Vec<i64> = form
        .all("id")
        .iter()
        .filter_map(|id| id.parse().ok())
        .take(BULK_LIMIT)
        .collect();
    let refused = if !matches!(verb.as_str(), "start" | "stop" | "delete") {
        Some(Problem::invalid_field(
            "action",
            "choose start, stop or delete",
        ))
    } else if ids.is_empty() {
        Some(Problem::invalid_field(
            "id",
            visitor.t.get("services.bulk_none"),
        ))
    } else if verb == "delete" && form.find("confirm").is_none() {
        Some(Problem::invalid_field(
            "confirm",
            visitor.t.get("services.confirm_needed"),
        ))
    } else {
        None
    };
    if let Some(problem) = refused {
        return problem_page(&visitor, "services", &problem);
    }
    let mut outcomes = Vec::with_capacity(ids.len());
    for id in ids {
        let user = visitor.as_user();
        let shared = State(Arc::clone(&state));
        let name = match api::services::owned(&state, &visitor.signed.user, id).await {
            Ok(service) => service.name,
            Err(problem) => {
                outcomes.push((id, format!("#{id}"), problem.detail().to_owned()));
                continue;
            }
        };
        // Not waited for: the hub carries each out; the services page shows them moving.
        let done = match verb.as_str() {
            "start" => api::services::start(shared, user, Path(id), RawQuery(None))
                .await
                .map(drop),
            "stop" => api::services::stop(shared, user, Path(id), RawQuery(None), Bytes::new())
                .await
                .map(drop),
            _ => api::services::delete(shared, user, Path(id), RawQuery(None))
                .await
                .map(drop),
        };
        let outcome = done.err().map(|problem| problem.detail().to_owned());
        outcomes.push((id, name, outcome.unwrap_or_default()));
    }
    render(&BulkPage {
        t: visitor.t,
        chrome: visitor.chrome("services"),
        verb,
        outcomes,
    })
}

/// `POST /services/{id}/edit` with `image`, `environment` (KEY=VALUE lines) and `replicas`:
/// the service's next version through the API's `PATCH`, then its page.
pub async fn edit(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    form: FormData,
) -> Response {
    const EDITABLE: &[Field] = &[
        required("image", Kind::Text),
        field("environment", Kind::Pairs),
        required("replicas", Kind::Integer),
    ];
    let mut body = match to_json(EDITABLE, &form) {
        Ok(body) => body,
        Err(refusal) => {
            let problem =
                Problem::invalid_field(refusal.field.as_deref().unwrap_or("form"), refusal.message);
            return problem_page(&visitor, "services", &problem);
        }
    };
    if body.get("environment").is_none() {
        body["environment"] = json!({});
    }
    let sent = Bytes::from(body.to_string());
    match api::services::patch(State(state), visitor.as_user(), Path(id), waiting(), sent).await {
        Ok(_) => see_other(&format!("/services/{id}")),
        Err(problem) => problem_page(&visitor, "services", &problem),
    }
}

/// `POST /services/{id}/rollback` with `version`.
pub async fn rollback(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    form: FormData,
) -> Response {
    let Ok(version) = form.get("version").parse::<i64>() else {
        return problem_page(
            &visitor,
            "services",
            &Problem::invalid_field("version", "is not a version number"),
        );
    };
    let body = Bytes::from(json!({"version": version}).to_string());
    match api::services::rollback(State(state), visitor.as_user(), Path(id), waiting(), body).await
    {
        Ok(_) => see_other(&format!("/services/{id}")),
        Err(problem) => problem_page(&visitor, "services", &problem),
    }
}

/// `GET /services/{id}/logs?follow=true&tail=N`: the API's log stream, for the page's script.
pub async fn logs(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Response {
    match api::services::logs(State(state), visitor.as_user(), Path(id), RawQuery(raw)).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

#[derive(Template)]
#[template(path = "console/service_charts.html")]
struct ChartsFragment {
    charts: Vec<Chart>,
}

/// `GET /services/{id}/charts?range=`: the charts alone, which the page's script swaps in.
pub async fn charts(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Response {
    let range = chart_range(raw);
    let loaded = async {
        // The API's ownership check: another user's service is not found.
        let Json(_) =
            api::services::get_one(State(Arc::clone(&state)), visitor.as_user(), Path(id)).await?;
        let mut connection = state.store.acquire().await?;
        let now = berth_store::now_ms();
        let samples = stats_history::since(&mut connection, id, now - range.millis()).await?;
        Ok::<_, Problem>(service_charts(
            visitor.t,
            &samples,
            now - range.millis(),
            now,
        ))
    };
    match loaded.await {
        Ok(charts) => render(&ChartsFragment { charts }),
        Err(problem) => problem.into_response(),
    }
}
