//! Allocations: where each replica of a service runs and what it takes there — CPU, memory, disk,
//! whole GPUs or a slice of one GPU's memory — with the placement generation that fences a moved
//! replica (a container whose generation is not its service's current one is stale and is never
//! served or kept). Also the hub's identity, the label that tells this hub's containers apart on
//! an engine other hubs share.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Conn, ROWS_PER_STATEMENT, StoreError, now_ms, secrets, value_rows};

/// One replica's placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Row id (0 before insert).
    pub id: i64,
    /// The service.
    pub service_id: i64,
    /// Which of its replicas, from 0.
    pub replica: i64,
    /// The node.
    pub node_id: i64,
    /// Placement generation, from 1, raised by every move.
    pub generation: i64,
    /// The engine's container id; empty while the container is being created.
    pub container_id: String,
    /// Container name.
    pub name: String,
    /// Status when last recorded.
    pub status: String,
    /// CPU, thousandths of a core.
    pub cpu_millis: i64,
    /// Memory, bytes.
    pub memory_bytes: i64,
    /// Disk, bytes.
    pub disk_bytes: i64,
    /// Whole GPUs held, or the one GPU a slice is on.
    pub gpu_indices: Vec<u32>,
    /// The slice's GPU memory, bytes (0 for whole GPUs).
    pub gpu_memory_bytes: i64,
    /// Recorded, Unix ms.
    pub created_at: i64,
}

fn allocation_from(row: &AnyRow) -> Result<Allocation, sqlx::Error> {
    let indices: String = row.try_get("gpu_indices")?;
    Ok(Allocation {
        id: row.try_get("id")?,
        service_id: row.try_get::<Option<i64>, _>("service_id")?.unwrap_or(0),
        replica: row.try_get("replica")?,
        node_id: row.try_get("node_id")?,
        generation: row.try_get("generation")?,
        container_id: row.try_get("container_id")?,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        cpu_millis: row.try_get("cpu_millis")?,
        memory_bytes: row.try_get("memory_bytes")?,
        disk_bytes: row.try_get("disk_bytes")?,
        gpu_indices: indices
            .split(',')
            .filter_map(|index| index.trim().parse().ok())
            .collect(),
        gpu_memory_bytes: row.try_get("gpu_memory_bytes")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Records `allocation` as its replica's placement, replacing the earlier one in place (the
/// row keeps its id through launches and moves).
pub async fn record(conn: &mut Conn, allocation: &Allocation) -> Result<Allocation, StoreError> {
    let updated = bind_columns(
        sqlx::query(
            "UPDATE containers SET node_id = $1, container_id = $2, name = $3, status = $4, created_at = $5, \
             generation = $6, cpu_millis = $7, memory_bytes = $8, disk_bytes = $9, gpu_indices = $10, \
             gpu_memory_bytes = $11 WHERE service_id = $12 AND replica = $13",
        ),
        allocation,
        now_ms(),
    )
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 0 {
        insert_new(conn, allocation).await?;
    }
    for_replica(conn, allocation.service_id, allocation.replica)
        .await?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "no allocation of replica {} of service {}",
                allocation.replica, allocation.service_id
            ))
        })
}

/// The columns [`bind_columns`] binds, in its order.
const COLUMN_NAMES: &str = "node_id, container_id, name, status, created_at, generation, cpu_millis, \
     memory_bytes, disk_bytes, gpu_indices, gpu_memory_bytes, service_id, replica";

/// Binds `allocation`'s columns in the order of [`COLUMN_NAMES`], written at `now`.
fn bind_columns<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    allocation: &Allocation,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let indices: Vec<String> = allocation.gpu_indices.iter().map(u32::to_string).collect();
    query
        .bind(allocation.node_id)
        .bind(allocation.container_id.clone())
        .bind(allocation.name.clone())
        .bind(allocation.status.clone())
        .bind(now)
        .bind(allocation.generation)
        .bind(allocation.cpu_millis)
        .bind(allocation.memory_bytes)
        .bind(allocation.disk_bytes)
        .bind(indices.join(","))
        .bind(allocation.gpu_memory_bytes)
        .bind(allocation.service_id)
        .bind(allocation.replica)
}

/// Inserts the first allocation of a replica that has none yet (a create's).
pub async fn insert_new(conn: &mut Conn, allocation: &Allocation) -> Result<(), StoreError> {
    insert_all_new(conn, std::slice::from_ref(allocation)).await
}

/// Inserts the first allocations of replicas that have none yet (creates'), in as few
/// statements as the rows allow.
pub async fn insert_all_new(conn: &mut Conn, allocations: &[Allocation]) -> Result<(), StoreError> {
    const COLUMNS: usize = 13;
    let now = now_ms();
    for chunk in allocations.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO containers ({COLUMN_NAMES}) VALUES {}",
            value_rows(chunk.len(), COLUMNS)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for allocation in chunk {
            query = bind_columns(query, allocation, now);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Forgets a replica's allocation (the replica was removed); a missing one is fine.
pub async fn remove(conn: &mut Conn, service_id: i64, replica: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM containers WHERE service_id = $1 AND replica = $2")
        .bind(service_id)
        .bind(replica)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The replica an allocation is about, at the generation it was recorded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaRef {
    /// The service.
    pub service_id: i64,
    /// The replica.
    pub replica: i64,
    /// The generation expected.
    pub generation: i64,
}

/// Sets the container of a replica's allocation, only if it is still at `replica.generation`;
/// returns whether it was.
pub async fn set_container(
    conn: &mut Conn,
    replica: ReplicaRef,
    container_id: &str,
    status: &str,
) -> Result<bool, StoreError> {
    update_container(conn, replica, container_id, status, "").await
}

/// Records `container_id` as the container of a replica's allocation that has none yet, only
/// if it is still at `replica.generation`; returns whether it was. A container recorded
/// meanwhile (by the launch that made it) is never replaced by one adopted from an older view.
pub async fn adopt_container(
    conn: &mut Conn,
    replica: ReplicaRef,
    container_id: &str,
    status: &str,
) -> Result<bool, StoreError> {
    update_container(
        conn,
        replica,
        container_id,
        status,
        " AND container_id = ''",
    )
    .await
}

/// Sets the container and status of `replica`'s allocation at its generation, where `also`
/// (an extra SQL condition, a constant) holds.
async fn update_container(
    conn: &mut Conn,
    replica: ReplicaRef,
    container_id: &str,
    status: &str,
    also: &'static str,
) -> Result<bool, StoreError> {
    let statement = format!(
        "UPDATE containers SET container_id = $1, status = $2 \
         WHERE service_id = $3 AND replica = $4 AND generation = $5{also}"
    );
    let updated = sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(container_id)
        .bind(status)
        .bind(replica.service_id)
        .bind(replica.replica)
        .bind(replica.generation)
        .execute(&mut *conn)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// The allocations of a service's replicas, by replica.
pub async fn for_service(conn: &mut Conn, service_id: i64) -> Result<Vec<Allocation>, StoreError> {
    let rows = sqlx::query("SELECT * FROM containers WHERE service_id = $1 ORDER BY replica")
        .bind(service_id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(allocation_from).collect::<Result<_, _>>()?)
}

/// The allocation of one replica, if it has one.
pub async fn for_replica(
    conn: &mut Conn,
    service_id: i64,
    replica: i64,
) -> Result<Option<Allocation>, StoreError> {
    let row = sqlx::query("SELECT * FROM containers WHERE service_id = $1 AND replica = $2")
        .bind(service_id)
        .bind(replica)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(allocation_from).transpose()?)
}

/// One allocation by row id.
pub async fn get(conn: &mut Conn, id: i64) -> Result<Allocation, StoreError> {
    let row = sqlx::query("SELECT * FROM containers WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no container {id}")))?;
    Ok(allocation_from(&row)?)
}

/// Every allocation.
pub async fn list(conn: &mut Conn) -> Result<Vec<Allocation>, StoreError> {
    let rows = sqlx::query("SELECT * FROM containers ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(allocation_from).collect::<Result<_, _>>()?)
}

/// The allocations on one node.
pub async fn on_node(conn: &mut Conn, node_id: i64) -> Result<Vec<Allocation>, StoreError> {
    let rows = sqlx::query("SELECT * FROM containers WHERE node_id = $1 ORDER BY id")
        .bind(node_id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(allocation_from).collect::<Result<_, _>>()?)
}

/// Allocations per node.
pub async fn count_per_node(conn: &mut Conn) -> Result<HashMap<i64, i64>, StoreError> {
    let rows = sqlx::query("SELECT node_id, COUNT(*) AS n FROM containers GROUP BY node_id")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>("node_id")?,
                row.try_get::<i64, _>("n")?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// This hub's identity: made at first use, the same for the database's life.
pub async fn hub_id(conn: &mut Conn) -> Result<String, StoreError> {
    let known = |row: Option<AnyRow>| -> Result<Option<String>, StoreError> {
        Ok(row.map(|row| row.try_get("id")).transpose()?)
    };
    let read = "SELECT id FROM hub_identity";
    if let Some(id) = known(sqlx::query(read).fetch_optional(&mut *conn).await?)? {
        return Ok(id);
    }
    // Hubs started together on an empty database make it one at a time: the later ones find
    // the first one's.
    let mut transaction = sqlx::Connection::begin(&mut *conn).await?;
    crate::leases::setup_turn(&mut transaction).await?;
    if let Some(id) = known(sqlx::query(read).fetch_optional(&mut *transaction).await?)? {
        return Ok(id);
    }
    let id = secrets::random_hex::<8>()?;
    sqlx::query("INSERT INTO hub_identity (id, created_at) VALUES ($1, $2)")
        .bind(&id)
        .bind(now_ms())
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(id)
}
