//! Web console sessions. A session id is shown to the browser once, as a cookie; the table keeps
//! only its SHA-256, the user, the CSRF token the session's forms carry, and when it expires.

use sqlx::Row;

use crate::users::{User, user_from_prefixed};
use crate::{Conn, StoreError, now_ms, random_hex};

/// A session as started: the cookie value is known only here and to the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedSession {
    /// The cookie value.
    pub id: String,
    /// The token every form of the session carries.
    pub csrf_token: String,
    /// Unix ms after which the session is refused.
    pub expires_at: i64,
}

/// A live session's user and CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who signed in.
    pub user: User,
    /// The token every form of the session carries.
    pub csrf_token: String,
}

fn hash_id(id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Starts a session for `user_id`, opened with token `token_id`, lasting `lifetime_ms` (and no
/// longer than the token: it ends when the token expires or is revoked); drops expired sessions.
pub async fn start(
    conn: &mut Conn,
    user_id: i64,
    token_id: i64,
    lifetime_ms: i64,
) -> Result<StartedSession, StoreError> {
    let now = now_ms();
    sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let started = StartedSession {
        id: random_hex::<32>()?,
        csrf_token: random_hex::<32>()?,
        expires_at: now + lifetime_ms,
    };
    sqlx::query(
        "INSERT INTO console_sessions (id_hash, user_id, token_id, csrf_token, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(hash_id(&started.id))
    .bind(user_id)
    .bind(token_id)
    .bind(&started.csrf_token)
    .bind(now)
    .bind(started.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(started)
}

/// The user and CSRF token of the unexpired session `id`, or `None`.
pub async fn find(conn: &mut Conn, id: &str) -> Result<Option<Session>, StoreError> {
    let row = sqlx::query(
        "SELECT s.csrf_token, u.id AS u_id, u.name AS u_name, u.role AS u_role, \
         u.max_services AS u_max_services, u.max_cpu_millis AS u_max_cpu_millis, \
         u.max_memory_bytes AS u_max_memory_bytes, u.max_gpus AS u_max_gpus, \
         u.created_at AS u_created_at \
         FROM console_sessions s JOIN users u ON u.id = s.user_id \
         LEFT JOIN api_tokens t ON t.id = s.token_id \
         WHERE s.id_hash = $1 AND s.expires_at > $2 AND (t.expires_at IS NULL OR t.expires_at > $2)",
    )
    .bind(hash_id(id))
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(Session {
        user: user_from_prefixed(&row, "u_")?,
        csrf_token: row.try_get("csrf_token")?,
    }))
}

/// Ends the session `id`; ending one that does not exist is not an error.
pub async fn end(conn: &mut Conn, id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
        .bind(hash_id(id))
        .execute(&mut *conn)
        .await?;
    Ok(())
}
