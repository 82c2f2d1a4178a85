//! Users, their roles and quotas, and API tokens (stored as SHA-256 hashes, shown once).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::conflict_or;
use crate::secrets::random_hex;
use crate::{Conn, StoreError, now_ms};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Their own services.
    User,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "admin" {
            Role::Admin
        } else {
            Role::User
        }
    }
}

/// Per-user limits; `None` means the hub's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    /// Services the user may own.
    pub max_services: Option<i64>,
    /// CPU, in thousandths of a core, over all the user's services.
    pub max_cpu_millis: Option<i64>,
    /// Memory, bytes, over all the user's services.
    pub max_memory_bytes: Option<i64>,
    /// GPUs over all the user's services.
    pub max_gpus: Option<i64>,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Limits.
    pub quotas: Quotas,
    /// Creation time, Unix ms.
    pub created_at: i64,
}

/// A token as issued: the only time its text is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedToken {
    /// Token id.
    pub id: i64,
    /// The bearer token text.
    pub token: String,
}

/// The prefix of every Berth API token.
pub const TOKEN_PREFIX: &str = "berth_";

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn user_from(row: &AnyRow) -> Result<User, sqlx::Error> {
    user_from_prefixed(row, "")
}

/// A user from a row whose user columns are named `{prefix}id`, `{prefix}name`, ….
pub(crate) fn user_from_prefixed(row: &AnyRow, prefix: &str) -> Result<User, sqlx::Error> {
    let column = |name: &str| format!("{prefix}{name}");
    Ok(User {
        id: row.try_get(column("id").as_str())?,
        name: row.try_get(column("name").as_str())?,
        role: Role::parse(&row.try_get::<String, _>(column("role").as_str())?),
        quotas: Quotas {
            max_services: row.try_get(column("max_services").as_str())?,
            max_cpu_millis: row.try_get(column("max_cpu_millis").as_str())?,
            max_memory_bytes: row.try_get(column("max_memory_bytes").as_str())?,
            max_gpus: row.try_get(column("max_gpus").as_str())?,
        },
        created_at: row.try_get(column("created_at").as_str())?,
    })
}

macro_rules! user_columns {
    () => {
        "id, name, role, max_services, max_cpu_millis, max_memory_bytes, max_gpus, created_at"
    };
}

/// Creates a user; a taken name is a conflict.
pub async fn create_user(
    conn: &mut Conn,
    name: &str,
    role: Role,
    quotas: &Quotas,
) -> Result<User, StoreError> {
    let row = sqlx::query(concat!(
        "INSERT INTO users (name, role, max_services, max_cpu_millis, max_memory_bytes, max_gpus, created_at) ",
        "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
        user_columns!()
    ))
    .bind(name)
    .bind(role.as_str())
    .bind(quotas.max_services)
    .bind(quotas.max_cpu_millis)
    .bind(quotas.max_memory_bytes)
    .bind(quotas.max_gpus)
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| conflict_or(err, || format!("a user named {name:?} exists")))?;
    Ok(user_from(&row)?)
}

/// Changes a user's role and quotas.
pub async fn update_user(
    conn: &mut Conn,
    id: i64,
    role: Role,
    quotas: &Quotas,
) -> Result<User, StoreError> {
    let updated = sqlx::query(
        "UPDATE users SET role = $1, max_services = $2, max_cpu_millis = $3, max_memory_bytes = $4, max_gpus = $5 \
         WHERE id = $6",
    )
    .bind(role.as_str())
    .bind(quotas.max_services)
    .bind(quotas.max_cpu_millis)
    .bind(quotas.max_memory_bytes)
    .bind(quotas.max_gpus)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no user {id}")));
    }
    get_user(conn, id).await
}

/// Every user, by id.
pub async fn list_users(conn: &mut Conn) -> Result<Vec<User>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users ORDER BY id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(user_from).collect::<Result<_, _>>()?)
}

/// One user.
pub async fn get_user(conn: &mut Conn, id: i64) -> Result<User, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("no user {id}")))?;
    Ok(user_from(&row)?)
}

/// The user called `name`, if any.
pub async fn find_by_name(conn: &mut Conn, name: &str) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(user_from).transpose()?)
}

/// How many users exist.
pub async fn count_users(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?)
}

/// Deletes a user and their tokens.
pub async fn delete_user(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no user {id}")));
    }
    Ok(())
}

/// Holds `user_id`'s row until the transaction ends, so that checks of that user's quotas and the
/// changes they guard happen one at a time. PostgreSQL locks the row; a SQLite write transaction
/// already holds the database's write lock (it begins IMMEDIATE).
pub async fn lock_for_change(conn: &mut Conn, user_id: i64) -> Result<(), StoreError> {
    let sql = if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        "SELECT id FROM users WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT id FROM users WHERE id = $1"
    };
    sqlx::query(sql)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no user {user_id}")))?;
    Ok(())
}

/// Issues a new token for `user_id`, valid until `expires_at` (Unix ms; `None`: until revoked);
/// its text is returned here and never again.
pub async fn issue_token(
    conn: &mut Conn,
    user_id: i64,
    name: &str,
    expires_at: Option<i64>,
) -> Result<IssuedToken, StoreError> {
    let token = format!("{TOKEN_PREFIX}{}", random_hex::<32>()?);
    let row = sqlx::query(
        "INSERT INTO api_tokens (user_id, name, token_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(user_id)
    .bind(name)
    .bind(hash_token(&token))
    .bind(now_ms())
    .bind(expires_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(IssuedToken {
        id: row.try_get("id")?,
        token,
    })
}

/// What is known of a token besides its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Token id.
    pub id: i64,
    /// Whose.
    pub user_id: i64,
    /// What it is for.
    pub name: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of its last use (kept to the minute), if it was used.
    pub last_used_at: Option<i64>,
    /// Unix ms after which it is refused; `None`: until revoked.
    pub expires_at: Option<i64>,
    /// The only services it reaches (through the gateway, not the API); `None`: no limit.
    pub services: Option<Vec<i64>>,
}

fn token_from(row: &AnyRow) -> Result<TokenInfo, sqlx::Error> {
    Ok(TokenInfo {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        expires_at: row.try_get("expires_at")?,
        services: services_from(row)?,
    })
}

/// The `services` column: a JSON array of service ids, or NULL.
fn services_from(row: &AnyRow) -> Result<Option<Vec<i64>>, sqlx::Error> {
    let text: Option<String> = row.try_get("services")?;
    text.map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

/// Limits token `token_id` to `services`: it reaches those alone, through the gateway.
pub async fn limit_token(
    conn: &mut Conn,
    token_id: i64,
    services: &[i64],
) -> Result<(), StoreError> {
    let text = serde_json::to_string(services)
        .map_err(|err| StoreError::Invalid(format!("service ids: {err}")))?;
    sqlx::query("UPDATE api_tokens SET services = $1 WHERE id = $2")
        .bind(text)
        .bind(token_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `user_id`'s tokens, newest first.
pub async fn list_tokens(conn: &mut Conn, user_id: i64) -> Result<Vec<TokenInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, user_id, name, created_at, last_used_at, expires_at, services FROM api_tokens \
         WHERE user_id = $1 ORDER BY id DESC",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(token_from).collect::<Result<_, _>>()?)
}

/// Revokes `user_id`'s token `token_id` (and ends the console sessions opened with it).
pub async fn revoke_token(conn: &mut Conn, user_id: i64, token_id: i64) -> Result<(), StoreError> {
    let deleted = sqlx::query("DELETE FROM api_tokens WHERE id = $1 AND user_id = $2")
        .bind(token_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!(
            "user {user_id} has no token {token_id}"
        )));
    }
    Ok(())
}

/// The holder of a valid bearer token, and which token it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bearer {
    /// Whose token.
    pub user: User,
    /// The token's id.
    pub token_id: i64,
    /// The only services the token reaches, through the gateway; `None`: no limit (and the API).
    pub services: Option<Vec<i64>>,
}

impl Bearer {
    /// Whether the token may reach service `id` (its user's rights aside).
    pub fn reaches(&self, service_id: i64) -> bool {
        self.services
            .as_ref()
            .is_none_or(|services| services.contains(&service_id))
    }
}

/// How stale a token's `last_used_at` may get before a use writes it again.
const LAST_USE_RESOLUTION_MS: i64 = 60_000;

/// The holder of `token` if it is a token that exists and has not expired, else `None`. Its
/// last use is written at most once a minute, so reads stay reads.
pub async fn user_for_token(conn: &mut Conn, token: &str) -> Result<Option<Bearer>, StoreError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let now = now_ms();
    let row = sqlx::query(
        "SELECT u.id, u.name, u.role, u.max_services, u.max_cpu_millis, u.max_memory_bytes, u.max_gpus, \
         u.created_at, t.id AS token_id, t.last_used_at, t.services FROM users u JOIN api_tokens t ON t.user_id = u.id \
         WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)",
    )
    .bind(hash_token(token))
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let token_id: i64 = row.try_get("token_id")?;
    let last_used: Option<i64> = row.try_get("last_used_at")?;
    if last_used.is_none_or(|at| now - at >= LAST_USE_RESOLUTION_MS) {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(token_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(Bearer {
        user: user_from(&row)?,
        token_id,
        services: services_from(&row)?,
    }))
}
