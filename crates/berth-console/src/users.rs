//! Users and quotas (admins): the list with each user's limits and use, a form to create a user
//! (their first token is shown once, on the page that answers the form), and each user's
//! role and quotas changed in place.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use berth_http::Path;
use berth_http::Problem;
use berth_store::{services, users};

use super::forms::{
    Field, FieldView, FormData, Kind, Refusal, field, form_error, form_status, required,
    simple_views, submit, to_json,
};
use super::session::{Visitor, admin_only};
use super::text::Tr;
use super::{Chrome, problem_page, rendered, see_other, size_text, timestamp};
use berth_hub::api;
use berth_hub::state::HubState;

type Shared = State<Arc<HubState>>;

const NEW_FIELDS: &[Field] = &[
    required("name", Kind::Text),
    field("role", Kind::Choice(&["user", "admin"])),
    field("max_services", Kind::Integer),
    field("max_cpu_cores", Kind::Number),
    field("max_memory", Kind::Size),
    field("max_gpus", Kind::Integer),
];

const CHANGE_FIELDS: &[Field] = &[
    field("role", Kind::Choice(&["user", "admin"])),
    field("max_services", Kind::Integer),
    field("max_cpu_cores", Kind::Number),
    field("max_memory", Kind::Size),
    field("max_gpus", Kind::Integer),
];

/// One user as a row, with their quota form's values.
#[derive(Debug, Clone)]
pub struct UserRow {
    id: i64,
    name: String,
    role: String,
    created: String,
    services: i64,
    max_services: String,
    max_cpu_cores: String,
    max_memory: String,
    max_gpus: String,
}

#[derive(Template)]
#[template(path = "console/users.html")]
struct UsersPage {
    t: Tr,
    chrome: Chrome,
    users: Vec<UserRow>,
    fields: Vec<FieldView>,
    form_error: Option<String>,
    issued: Option<(String, String)>,
}

async fn users_page(
    state: &HubState,
    visitor: &Visitor,
    values: &FormData,
    refusal: Option<&Refusal>,
    issued: Option<(String, String)>,
) -> Response {
    let loaded = async {
        let mut connection = state.store.acquire().await?;
        let all = users::list_users(&mut connection).await?;
        let mut counts: HashMap<i64, i64> = HashMap::new();
        for service in services::list(&mut connection, None).await? {
            *counts.entry(service.owner_id).or_default() += 1;
        }
        Ok::<_, Problem>((all, counts))
    };
    let (all, counts) = match loaded.await {
        Ok(found) => found,
        Err(problem) => return problem_page(visitor, "users", &problem),
    };
    let text = |value: Option<i64>| value.map(|value| value.to_string()).unwrap_or_default();
    let rows = all
        .into_iter()
        .map(|user| UserRow {
            id: user.id,
            role: user.role.as_str().to_owned(),
            created: timestamp(user.created_at),
            services: counts.get(&user.id).copied().unwrap_or(0),
            max_services: text(user.quotas.max_services),
            max_cpu_cores: user
                .quotas
                .max_cpu_millis
                .map(|millis| (millis as f64 / 1000.0).to_string())
                .unwrap_or_default(),
            max_memory: user
                .quotas
                .max_memory_bytes
                .map(size_text)
                .unwrap_or_default(),
            max_gpus: text(user.quotas.max_gpus),
            name: user.name,
        })
        .collect();
    let status = form_status(refusal);
    rendered(
        status,
        &UsersPage {
            t: visitor.t,
            chrome: visitor.chrome("users"),
            users: rows,
            fields: simple_views(visitor.t, "user", NEW_FIELDS, values, refusal),
            form_error: form_error(refusal),
            issued,
        },
    )
}

/// `GET /users`.
pub async fn page(State(state): Shared, visitor: Visitor) -> Response {
    if let Some(refused) = admin_only(&visitor, "users") {
        return refused;
    }
    let defaults = FormData::from_pairs(vec![("role".into(), "user".into())]);
    users_page(&state, &visitor, &defaults, None, None).await
}

/// `POST /users`: creates a user and shows their first token once.
pub async fn create(State(state): Shared, visitor: Visitor, form: FormData) -> Response {
    if let Some(refused) = admin_only(&visitor, "users") {
        return refused;
    }
    let created = submit(NEW_FIELDS, &form, |body| {
        api::users::create(State(Arc::clone(&state)), visitor.as_user(), body)
    })
    .await;
    match created {
        Ok((_, Json(answer))) => {
            let issued = (
                answer["user"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                answer["token"].as_str().unwrap_or_default().to_owned(),
            );
            let defaults = FormData::from_pairs(vec![("role".into(), "user".into())]);
            users_page(&state, &visitor, &defaults, None, Some(issued)).await
        }
        Err(refusal) => users_page(&state, &visitor, &form, Some(&refusal), None).await,
    }
}

/// `POST /users/{id}`: changes a user's role and quotas; empty limits mean the defaults.
pub async fn update(
    State(state): Shared,
    visitor: Visitor,
    Path(id): Path<i64>,
    form: FormData,
) -> Response {
    if let Some(refused) = admin_only(&visitor, "users") {
        return refused;
    }
    let body = match to_json(CHANGE_FIELDS, &form) {
        Ok(mut body) => {
            // An emptied limit clears the quota: the hub's default applies again.
            for field in CHANGE_FIELDS.iter().filter(|field| field.name != "role") {
                if form
                    .find(field.name)
                    .is_some_and(|value| value.trim().is_empty())
                {
                    body[field.name] = serde_json::Value::Null;
                }
            }
            body
        }
        Err(refusal) => {
            return problem_page(
                &visitor,
                "users",
                &Problem::invalid_field(refusal.field.unwrap_or_default(), refusal.message),
            );
        }
    };
    match api::users::update(
        State(state),
        visitor.as_user(),
        Path(id),
        Bytes::from(body.to_string()),
    )
    .await
    {
        Ok(_) => see_other("/users"),
        Err(problem) => problem_page(&visitor, "users", &problem),
    }
}
