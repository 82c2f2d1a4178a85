//! The operation log (audit trail): who did what to which target, when, with what outcome.
//! A change that takes time is an operation with a life: opened `running` in the transaction
//! that commits its intent, its progress written as the work goes, then finished `succeeded`,
//! `failed` (with the error in the user's terms) or `cancelled`. An instant change is recorded
//! finished. A create may carry the client's idempotency key: one operation per user and key.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Conn, ROWS_PER_STATEMENT, StoreError, now_ms, value_rows};

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

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Accepted, not started.
    Pending,
    /// Being carried out.
    Running,
    /// Done as asked.
    Succeeded,
    /// Ended without doing what was asked; `error` says why and what to do.
    Failed,
    /// Given up on purpose.
    Cancelled,
}

impl State {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state a stored name stands for (an unknown one reads as failed).
    pub fn parse(text: &str) -> Self {
        match text {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "cancelled" => Self::Cancelled,
            _ => Self::Failed,
        }
    }

    /// Whether the operation has ended.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// The state an instant change with `outcome` ends in.
    fn of_outcome(outcome: &str) -> Self {
        match outcome {
            "failed" | "refused" | "rolled_back" => Self::Failed,
            _ => Self::Succeeded,
        }
    }
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
    /// Where it is in its life.
    pub state: State,
    /// How far the work got: steps and bytes.
    pub progress: serde_json::Value,
    /// What failed, in the user's terms, and what to do; empty unless failed.
    pub error: String,
    /// Last change, Unix ms.
    pub updated_at: i64,
    /// When it ended, Unix ms.
    pub finished_at: Option<i64>,
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
    /// Only this action; `node.*` is every action of the `node` family.
    pub action: Option<String>,
    /// Only what this user may see without being an admin: their own actions and anything
    /// done to their services (a failover by the hub, say).
    pub visible_to: Option<i64>,
    /// Page, from 1.
    pub page: i64,
    /// Rows per page.
    pub size: i64,
}

/// Writes one operation row of a change that is done: finished in the state its outcome says.
pub async fn record(conn: &mut Conn, operation: &NewOperation) -> Result<i64, StoreError> {
    insert(conn, operation, State::of_outcome(&operation.outcome), None).await
}

/// Opens an operation that is carried out after its intent commits: `running`, outcome
/// `running`, with the client's idempotency key if it sent one.
pub async fn open(
    conn: &mut Conn,
    operation: &NewOperation,
    idempotency_key: Option<&str>,
) -> Result<i64, StoreError> {
    let running = NewOperation {
        outcome: State::Running.as_str().to_owned(),
        ..operation.clone()
    };
    insert(conn, &running, State::Running, idempotency_key).await
}

async fn insert(
    conn: &mut Conn,
    operation: &NewOperation,
    state: State,
    idempotency_key: Option<&str>,
) -> Result<i64, StoreError> {
    let ids = insert_all(conn, &[(operation, idempotency_key)], state).await?;
    Ok(ids[0])
}

/// Opens the operations of creates committed together, as [`open`] does one; each is of a
/// different service. Their ids, in order.
pub async fn open_all(
    conn: &mut Conn,
    operations: &[(NewOperation, Option<&str>)],
) -> Result<Vec<i64>, StoreError> {
    let running: Vec<NewOperation> = operations
        .iter()
        .map(|(operation, _)| NewOperation {
            outcome: State::Running.as_str().to_owned(),
            ..operation.clone()
        })
        .collect();
    let rows: Vec<(&NewOperation, Option<&str>)> = running
        .iter()
        .zip(operations)
        .map(|(operation, (_, key))| (operation, *key))
        .collect();
    if rows.len() > 1 {
        let mut services: Vec<Option<i64>> = rows.iter().map(|(op, _)| op.service_id).collect();
        services.sort_unstable();
        services.dedup();
        if services.len() != rows.len() || services.contains(&None) {
            return Err(StoreError::Invalid(
                "operations opened together must each be of a different service".to_owned(),
            ));
        }
    }
    insert_all(conn, &rows, State::Running).await
}

/// Inserts `operations` in `state`, in as few statements as the rows allow; their ids, in order
/// (one row alone, or rows each of a different service).
async fn insert_all(
    conn: &mut Conn,
    operations: &[(&NewOperation, Option<&str>)],
    state: State,
) -> Result<Vec<i64>, StoreError> {
    const COLUMNS: usize = 13;
    let now = now_ms();
    let mut ids = Vec::with_capacity(operations.len());
    for chunk in operations.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO operations (at, user_id, action, target_kind, target_id, node_id, service_id, outcome, detail, \
             state, updated_at, finished_at, idempotency_key) VALUES {} RETURNING id, service_id",
            value_rows(chunk.len(), COLUMNS)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (operation, key) in chunk {
            query = query
                .bind(now)
                .bind(operation.user_id)
                .bind(operation.action.clone())
                .bind(operation.target_kind.clone())
                .bind(operation.target_id.clone())
                .bind(operation.node_id)
                .bind(operation.service_id)
                .bind(operation.outcome.clone())
                .bind(operation.detail.to_string())
                .bind(state.as_str())
                .bind(now)
                .bind(state.is_finished().then_some(now))
                .bind(key.map(str::to_owned));
        }
        let rows = query.fetch_all(&mut *conn).await?;
        if let [row] = rows.as_slice() {
            ids.push(row.try_get("id")?);
            continue;
        }
        let by_service: std::collections::HashMap<Option<i64>, i64> = rows
            .iter()
            .map(|row| Ok((row.try_get("service_id")?, row.try_get("id")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        for (operation, _) in chunk {
            ids.push(
                by_service
                    .get(&operation.service_id)
                    .copied()
                    .ok_or_else(|| {
                        StoreError::Invalid(
                            "an operation opened together was not inserted".to_owned(),
                        )
                    })?,
            );
        }
    }
    Ok(ids)
}

/// Operation `id`.
pub async fn get(conn: &mut Conn, id: i64) -> Result<Operation, StoreError> {
    let row = sqlx::query("SELECT * FROM operations WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no operation {id}")))?;
    Ok(operation_from(&row)?)
}

/// The operation `user_id` opened with `key`, if any.
pub async fn find_by_key(
    conn: &mut Conn,
    user_id: i64,
    key: &str,
) -> Result<Option<Operation>, StoreError> {
    let row = sqlx::query("SELECT * FROM operations WHERE user_id = $1 AND idempotency_key = $2")
        .bind(user_id)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(operation_from).transpose()?)
}

/// Writes how far operation `id` got; an ended operation is left as it is.
pub async fn set_progress(
    conn: &mut Conn,
    id: i64,
    progress: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE operations SET progress = $1, updated_at = $2 \
         WHERE id = $3 AND state IN ('pending', 'running')",
    )
    .bind(progress.to_string())
    .bind(now_ms())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How an operation ended.
pub struct End<'a> {
    /// Succeeded, failed or cancelled.
    pub state: State,
    /// Why it failed, in the user's terms; empty otherwise.
    pub error: &'a str,
    /// Merged into the operation's detail.
    pub detail: &'a serde_json::Value,
    /// Its last progress, if it changed since it was last written.
    pub progress: Option<&'a serde_json::Value>,
}

/// Ends operation `id` as `end` says (its error empty unless it failed, its detail merged into
/// the operation's, its last progress written with it); returns false when it had ended already
/// (it is left as it was).
pub async fn finish(conn: &mut Conn, id: i64, end: End<'_>) -> Result<bool, StoreError> {
    let End {
        state,
        error,
        detail,
        progress,
    } = end;
    let current = get(conn, id).await?;
    if current.state.is_finished() {
        return Ok(false);
    }
    let mut merged = current.detail;
    if let (Some(into), Some(from)) = (merged.as_object_mut(), detail.as_object()) {
        for (key, value) in from {
            into.insert(key.clone(), value.clone());
        }
    }
    let outcome = match state {
        State::Succeeded => "ok",
        other => other.as_str(),
    };
    let now = now_ms();
    sqlx::query(
        "UPDATE operations SET state = $1, outcome = $2, error = $3, detail = $4, updated_at = $5, \
         finished_at = $6, progress = COALESCE($7, progress) WHERE id = $8",
    )
    .bind(state.as_str())
    .bind(outcome)
    .bind(error)
    .bind(merged.to_string())
    .bind(now)
    .bind(now)
    .bind(progress.map(|progress| progress.to_string()))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Operations not yet ended (a hub that stopped left them so), oldest first.
pub async fn unfinished(conn: &mut Conn) -> Result<Vec<Operation>, StoreError> {
    let rows =
        sqlx::query("SELECT * FROM operations WHERE state IN ('pending', 'running') ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.iter().map(operation_from).collect::<Result<_, _>>()?)
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
    let progress: String = row.try_get("progress")?;
    let state: String = row.try_get("state")?;
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
        state: State::parse(&state),
        progress: serde_json::from_str(&progress).unwrap_or_default(),
        error: row.try_get("error")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
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
    // `node.*` is every action of that family.
    let action = filter
        .action
        .as_ref()
        .map(|action| match action.strip_suffix('*') {
            Some(family) => (format!("{family}%"), "LIKE"),
            None => (action.clone(), "="),
        });
    if let Some((_, compare)) = &action {
        conditions.push(format!("action {compare} ${}", numbers.len() + 1));
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
        if let Some((action, _)) = &action {
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
