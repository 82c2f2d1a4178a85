//! Join tokens: an admin issues one (`berth node join-token`); a new host's `berth agent --join`
//! presents it once, before it expires, to register itself as a node. Only the token's SHA-256
//! is stored; redeeming it marks it used in the same transaction that creates the node, so a
//! token makes one node at most.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::secrets::random_hex;
use crate::{Conn, StoreError};

/// The prefix of every join token.
pub const JOIN_TOKEN_PREFIX: &str = "berth_join_";

/// A join token as issued: the secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedJoinToken {
    /// Row id.
    pub id: i64,
    /// The token itself.
    pub token: String,
    /// When it stops working, Unix ms.
    pub expires_at: i64,
}

/// What a redeemed token allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    /// Row id.
    pub id: i64,
    /// The admin who issued it.
    pub created_by: Option<i64>,
    /// The node name the admin chose, if any.
    pub node_name: Option<String>,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Issues a token of `created_by` valid until `expires_at` (Unix ms), for a node named
/// `node_name` when given.
pub async fn issue(
    conn: &mut Conn,
    created_by: i64,
    expires_at: i64,
    node_name: Option<&str>,
) -> Result<IssuedJoinToken, StoreError> {
    let token = format!("{JOIN_TOKEN_PREFIX}{}", random_hex::<24>()?);
    let row = sqlx::query(
        "INSERT INTO join_tokens (token_hash, created_by, created_at, expires_at, node_name) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(hash(&token))
    .bind(created_by)
    .bind(crate::now_ms())
    .bind(expires_at)
    .bind(node_name)
    .fetch_one(&mut *conn)
    .await?;
    Ok(IssuedJoinToken {
        id: row.try_get("id")?,
        token,
        expires_at,
    })
}

/// Takes `token` for one join at `now_ms`: `None` when it is unknown, used or expired (the
/// three are not told apart, so a guess learns nothing). Call inside the transaction that
/// creates the node, then [`record_node`].
pub async fn redeem(
    conn: &mut Conn,
    token: &str,
    now_ms: i64,
) -> Result<Option<Redeemed>, StoreError> {
    if !token.starts_with(JOIN_TOKEN_PREFIX) {
        return Ok(None);
    }
    let row = sqlx::query(
        "UPDATE join_tokens SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
         RETURNING id, created_by, node_name",
    )
    .bind(now_ms)
    .bind(hash(token))
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok(Redeemed {
            id: row.try_get("id")?,
            created_by: row.try_get("created_by")?,
            node_name: row.try_get("node_name")?,
        })
    })
    .transpose()
    .map_err(|err: sqlx::Error| err.into())
}

/// Records the node token `id` made.
pub async fn record_node(conn: &mut Conn, id: i64, node_id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE join_tokens SET node_id = $1 WHERE id = $2")
        .bind(node_id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
