//! `/api/users`: the caller (`me`), and for admins the users, their quotas and their tokens.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use berth_http::Path;
use berth_http::{Problem, parse_body};
use berth_store::operations::{self, NewOperation};
use berth_store::users::{self, Quotas, Role, User};
use serde::Deserialize;
use serde_json::{Value, json};

use super::CurrentUser;
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    #[serde(default = "user_role")]
    role: Role,
    #[serde(default)]
    max_services: Option<i64>,
    #[serde(default)]
    max_cpu_cores: Option<f64>,
    #[serde(default)]
    max_memory: Option<berth_core::ByteSize>,
    #[serde(default)]
    max_gpus: Option<i64>,
}

fn user_role() -> Role {
    Role::User
}

/// A change of a user: a quota left out keeps its value, `null` clears it (the hub's default
/// applies again).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChange {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default, deserialize_with = "sent")]
    max_services: Option<Option<i64>>,
    #[serde(default, deserialize_with = "sent")]
    max_cpu_cores: Option<Option<f64>>,
    #[serde(default, deserialize_with = "sent")]
    max_memory: Option<Option<berth_core::ByteSize>>,
    #[serde(default, deserialize_with = "sent")]
    max_gpus: Option<Option<i64>>,
}

/// A field that was sent, `null` included (left out, it stays `None` through `default`).
fn sent<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    name: Option<String>,
    /// Days until it expires (1–3650); without it, it lasts until revoked.
    #[serde(default)]
    expires_in_days: Option<i64>,
    /// The only services it reaches (ids), through the gateway; it cannot use the API then.
    #[serde(default)]
    services: Option<Vec<i64>>,
}

/// The most services one token may be limited to.
const MAX_TOKEN_SERVICES: usize = 100;

/// Checks that user `holder` may call each of `services` (an owner's, a public one, or any for
/// an admin): the ids, sorted and without repeats.
async fn token_services(
    connection: &mut berth_store::Conn,
    holder: &User,
    services: &[i64],
) -> Result<Vec<i64>, Problem> {
    if services.is_empty() || services.len() > MAX_TOKEN_SERVICES {
        return Err(Problem::invalid_field(
            "services",
            format!(
                "name 1 to {MAX_TOKEN_SERVICES} service ids; leave it out for a token without limits"
            ),
        ));
    }
    let mut ids = services.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for &id in &ids {
        let service = berth_store::services::get(connection, id).await;
        let callable = service.as_ref().is_ok_and(|service| {
            service.owner_id == holder.id || service.is_public || holder.role == Role::Admin
        });
        if !callable {
            return Err(Problem::bad_input(
                StatusCode::NOT_FOUND,
                "services",
                format!("{} has no service {id} to call", holder.name),
            ));
        }
    }
    Ok(ids)
}

/// The longest a token may be issued for, in days.
const MAX_TOKEN_DAYS: i64 = 3650;

fn user_operation(actor: &User, action: &str, target: i64, detail: Value) -> NewOperation {
    NewOperation {
        user_id: Some(actor.id),
        action: action.to_owned(),
        target_kind: "user".to_owned(),
        target_id: target.to_string(),
        node_id: None,
        service_id: None,
        outcome: "ok".to_owned(),
        detail,
    }
}

/// `GET /api/users/me`.
pub async fn me(user: CurrentUser) -> Json<User> {
    Json(user.0)
}

/// `GET /api/users` (admin).
pub async fn list(State(state): Shared, user: CurrentUser) -> Result<Json<Vec<User>>, Problem> {
    user.require_admin()?;
    let mut connection = state.store.acquire().await?;
    Ok(Json(users::list_users(&mut connection).await?))
}

/// `GET /api/users/{id}` (admin, or the user themself).
pub async fn get_one(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<User>, Problem> {
    require_self_or_admin(&user, id)?;
    let mut connection = state.store.acquire().await?;
    Ok(Json(users::get_user(&mut connection, id).await?))
}

/// `POST /api/users` (admin): creates a user and their first token, shown only in this answer.
pub async fn create(
    State(state): Shared,
    user: CurrentUser,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    user.require_admin()?;
    let request: NewUser = parse_body(&body)?;
    berth_core::spec::validate_name("name", &request.name)?;
    check_limits(
        request.max_services,
        request.max_gpus,
        request.max_cpu_cores,
    )?;
    let quotas = Quotas {
        max_services: request.max_services,
        max_cpu_millis: request
            .max_cpu_cores
            .map(|cores| (cores * 1000.0).round() as i64),
        max_memory_bytes: request.max_memory.map(|size| size.bytes_i64()),
        max_gpus: request.max_gpus,
    };
    let mut transaction = state.store.begin().await?;
    let created =
        users::create_user(&mut transaction, &request.name, request.role, &quotas).await?;
    let token = users::issue_token(&mut transaction, created.id, "initial", None).await?;
    let detail = json!({"name": created.name, "role": created.role});
    operations::commit_with(
        transaction,
        &user_operation(&user.0, "user.create", created.id, detail),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": created, "token": token.token})),
    ))
}

/// `PUT /api/users/{id}` (admin): role and quotas; fields not sent keep their value. An admin
/// cannot take their own admin role away.
pub async fn update(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Json<User>, Problem> {
    user.require_admin()?;
    let change: UserChange = parse_body(&body)?;
    check_limits(
        change.max_services.flatten(),
        change.max_gpus.flatten(),
        change.max_cpu_cores.flatten(),
    )?;
    if id == user.0.id && change.role == Some(Role::User) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "you cannot take your own admin role away; another admin can",
        ));
    }
    let mut transaction = state.store.begin().await?;
    let current = users::get_user(&mut transaction, id).await?;
    let quotas = Quotas {
        max_services: change.max_services.unwrap_or(current.quotas.max_services),
        max_cpu_millis: change
            .max_cpu_cores
            .map_or(current.quotas.max_cpu_millis, |cores| {
                cores.map(|cores| (cores * 1000.0).round() as i64)
            }),
        max_memory_bytes: change
            .max_memory
            .map_or(current.quotas.max_memory_bytes, |size| {
                size.map(|size| size.bytes_i64())
            }),
        max_gpus: change.max_gpus.unwrap_or(current.quotas.max_gpus),
    };
    let updated = users::update_user(
        &mut transaction,
        id,
        change.role.unwrap_or(current.role),
        &quotas,
    )
    .await?;
    let detail = json!({"role": updated.role, "quotas": updated.quotas});
    operations::commit_with(
        transaction,
        &user_operation(&user.0, "user.update", id, detail),
    )
    .await?;
    Ok(Json(updated))
}

fn check_limits(
    max_services: Option<i64>,
    max_gpus: Option<i64>,
    max_cpu_cores: Option<f64>,
) -> Result<(), Problem> {
    for (field, value) in [("max_services", max_services), ("max_gpus", max_gpus)] {
        if value.is_some_and(|value| value < 0) {
            return Err(Problem::invalid_field(field, "must not be negative"));
        }
    }
    if max_cpu_cores.is_some_and(|cores| !(cores.is_finite() && cores >= 0.0)) {
        return Err(Problem::invalid_field(
            "max_cpu_cores",
            "must be a number of cores, 0 or more",
        ));
    }
    Ok(())
}

/// `DELETE /api/users/{id}` (admin; not oneself).
pub async fn delete(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, Problem> {
    user.require_admin()?;
    if id == user.0.id {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "you cannot delete yourself; another admin can",
        ));
    }
    let mut transaction = state.store.begin().await?;
    users::delete_user(&mut transaction, id).await?;
    operations::commit_with(
        transaction,
        &user_operation(&user.0, "user.delete", id, json!({})),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses unless `user` is user `id` or an admin.
fn require_self_or_admin(user: &CurrentUser, id: i64) -> Result<(), Problem> {
    if user.0.id == id {
        Ok(())
    } else {
        user.require_admin()
    }
}

/// `POST /api/users/{id}/tokens` (admin, or the user themself): a new token, shown once;
/// `expires_in_days` gives it an end.
pub async fn issue_token(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    require_self_or_admin(&user, id)?;
    let request: NewToken = if body.iter().all(u8::is_ascii_whitespace) {
        NewToken::default()
    } else {
        parse_body(&body)?
    };
    let name = request.name.unwrap_or_else(|| "api".to_owned());
    if name.trim().is_empty() || name.len() > 100 {
        return Err(Problem::invalid_field(
            "name",
            "must be 1 to 100 characters",
        ));
    }
    let expires_at = match request.expires_in_days {
        None => None,
        Some(days) if (1..=MAX_TOKEN_DAYS).contains(&days) => {
            Some(berth_store::now_ms() + days * 86_400_000)
        }
        Some(_) => {
            return Err(Problem::invalid_field(
                "expires_in_days",
                format!(
                    "must be 1 to {MAX_TOKEN_DAYS}; leave it out for a token that lasts until revoked"
                ),
            ));
        }
    };
    let mut transaction = state.store.begin().await?;
    let holder = users::get_user(&mut transaction, id).await?;
    let services = match &request.services {
        Some(services) => Some(token_services(&mut transaction, &holder, services).await?),
        None => None,
    };
    let token = users::issue_token(&mut transaction, id, &name, expires_at).await?;
    if let Some(services) = &services {
        users::limit_token(&mut transaction, token.id, services).await?;
    }
    operations::commit_with(
        transaction,
        &user_operation(
            &user.0,
            "token.issue",
            id,
            json!({"name": name, "token_id": token.id, "expires_at": expires_at,
                "services": services}),
        ),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": token.id, "name": name, "token": token.token, "expires_at": expires_at,
            "services": services}),
        ),
    ))
}

/// `GET /api/users/{id}/tokens` (admin, or the user themself): the tokens without their text —
/// name, creation, last use, expiry.
pub async fn list_tokens(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    require_self_or_admin(&user, id)?;
    let mut connection = state.store.acquire().await?;
    users::get_user(&mut connection, id).await?;
    let tokens = users::list_tokens(&mut connection, id).await?;
    Ok(Json(json!({"tokens": tokens})))
}

/// `POST /api/users/{id}/tokens/{token_id}/reissue` (admin, or the user themself): in one
/// transaction, revokes the token and issues its successor with the same name and lifetime,
/// shown once — for a token that leaked or was lost.
pub async fn reissue_token(
    State(state): Shared,
    user: CurrentUser,
    Path((id, token_id)): Path<(i64, i64)>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    require_self_or_admin(&user, id)?;
    let mut transaction = state.store.begin().await?;
    let old = users::list_tokens(&mut transaction, id)
        .await?
        .into_iter()
        .find(|token| token.id == token_id)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!("user {id} has no token {token_id}"),
            )
        })?;
    users::revoke_token(&mut transaction, id, token_id).await?;
    let expires_at = old
        .expires_at
        .map(|end| berth_store::now_ms() + (end - old.created_at).max(86_400_000));
    let token = users::issue_token(&mut transaction, id, &old.name, expires_at).await?;
    if let Some(services) = &old.services {
        users::limit_token(&mut transaction, token.id, services).await?;
    }
    operations::commit_with(
        transaction,
        &user_operation(
            &user.0,
            "token.reissue",
            id,
            json!({"name": old.name, "revoked_token_id": token_id, "token_id": token.id,
                "expires_at": expires_at}),
        ),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": token.id, "name": old.name, "token": token.token,
            "expires_at": expires_at, "revoked_token_id": token_id, "services": old.services}),
        ),
    ))
}

/// `DELETE /api/users/{id}/tokens/{token_id}` (admin, or the user themself): revokes a token at
/// once — the API, the gateway and the console sessions opened with it refuse it from now on.
pub async fn revoke_token(
    State(state): Shared,
    user: CurrentUser,
    Path((id, token_id)): Path<(i64, i64)>,
) -> Result<StatusCode, Problem> {
    require_self_or_admin(&user, id)?;
    let mut transaction = state.store.begin().await?;
    users::revoke_token(&mut transaction, id, token_id).await?;
    operations::commit_with(
        transaction,
        &user_operation(&user.0, "token.revoke", id, json!({"token_id": token_id})),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
