//! The operation log (audit trail): who did what to which target, when, with what outcome.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Conn, StoreError, now_ms};

/// An operation to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOperation {
    /// The acting user; `None` for the hub itself (monitor, reconciler).
    pub user_id: Option<i64>,
    /// What was done, e.g. `node.create`.
    pub action: String,
    /// The kind of target, e.g. `node`.
    pub target_kind: String,
    /// The target's id or name.
    pub target_id: String,
    /// The node concerned.
    pub node_id: Option<i64>,
    /// The service concerned.
    pub service_id: Option<i64>,
    /// `ok`, `failed`, …
    pub outcome: String,
    /// Details, JSON.
    pub detail: serde_json::Value,
}

/// A recorded operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    /// Id, increasing.
    pub id: i64,
    /// When, Unix ms.
    pub at: i64,
    /// The acting user.
    pub user_id: Option<i64>,
    /// What was done.
    pub action: String,
    /// Kind of target.
    pub target_kind: String,
    /// Target id.
    pub target_id: String,
    /// Node concerned.
    pub node_id: Option<i64>,
    /// Service concerned.
    pub service_id: Option<i64>,
    /// Outcome.
    pub outcome: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// Which operations to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationFilter {
    /// Only this service.
    pub service_id: Option<i64>,
    /// Only this node.
    pub node_id: Option<i64>,
    /// Only this user.
    pub user_id: Option<i64>,
    /// Only this action.
    pub action: Option<String>,
    /// Only what this user may see without being an admin: their own actions and anything
    /// done to their services (a failover by the hub, say).
    pub visible_to: Option<i64>,
    /// Page, from 1.
    pub page: i64,
    /// Rows per page.
    pub size: i64,
}

/// Writes one operation row.
pub async fn record(conn: &mut Conn, operation: &NewOperation) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO operations (at, user_id, action, target_kind, target_id, node_id, service_id, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(now_ms())
    .bind(operation.user_id)
    .bind(&operation.action)
    .bind(&operation.target_kind)
    .bind(&operation.target_id)
    .bind(operation.node_id)
    .bind(operation.service_id)
    .bind(&operation.outcome)
    .bind(operation.detail.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}

/// Records `operation` in `transaction` and commits both: the change and its row land together
/// or not at all.
pub async fn commit_with(
    mut transaction: crate::Tx<'_>,
    operation: &NewOperation,
) -> Result<i64, StoreError> {
    let id = record(&mut transaction, operation).await?;
    transaction.commit().await?;
    Ok(id)
}

fn operation_from(row: &AnyRow) -> Result<Operation, sqlx::Error> {
    let detail: String = row.try_get("detail")?;
    Ok(Operation {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        user_id: row.try_get("user_id")?,
        action: row.try_get("action")?,
        target_kind: row.try_get("target_kind")?,
        target_id: row.try_get("target_id")?,
        node_id: row.try_get("node_id")?,
        service_id: row.try_get("service_id")?,
        outcome: row.try_get("outcome")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
    })
}

/// Operations matching `filter`, newest first, with the total count.
pub async fn list(
    conn: &mut Conn,
    filter: &OperationFilter,
) -> Result<(Vec<Operation>, i64), StoreError> {
    let mut conditions = Vec::new();
    let mut numbers = Vec::new();
    for (column, value) in [
        ("service_id", filter.service_id),
        ("node_id", filter.node_id),
        ("user_id", filter.user_id),
    ] {
        if let Some(value) = value {
            numbers.push(value);
            conditions.push(format!("{column} = ${}", numbers.len()));
        }
    }
    if let Some(user) = filter.visible_to {
        numbers.push(user);
        let by_them = numbers.len();
        numbers.push(user);
        conditions.push(format!(
            "(user_id = ${by_them} OR service_id IN (SELECT id FROM services WHERE owner_id = ${}))",
            numbers.len()
        ));
    }
    if filter.action.is_some() {
        conditions.push(format!("action = ${}", numbers.len() + 1));
    }
    let clause = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let bind_all = |sql: String| {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for number in &numbers {
            query = query.bind(*number);
        }
        if let Some(action) = &filter.action {
            query = query.bind(action.clone());
        }
        query
    };
    let total: i64 = bind_all(format!("SELECT COUNT(*) AS n FROM operations{clause}"))
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    let size = filter.size.clamp(1, 500);
    let offset = (filter.page.max(1) - 1).saturating_mul(size);
    let rows = bind_all(format!(
        "SELECT * FROM operations{clause} ORDER BY id DESC LIMIT {size} OFFSET {offset}"
    ))
    .fetch_all(&mut *conn)
    .await?;
    Ok((
        rows.iter().map(operation_from).collect::<Result<_, _>>()?,
        total,
    ))
}
