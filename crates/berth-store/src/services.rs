//! Services (a user's model services) and each service's deployment history. Where a service's
//! container runs is its allocation ([`crate::allocations`]).

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::conflict_or;
use crate::{Conn, ROWS_PER_STATEMENT, StoreError, now_ms, value_rows};

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Id (0 before insert).
    pub id: i64,
    /// Owner.
    pub owner_id: i64,
    /// The repository it was created under.
    pub repo: String,
    /// Name, unique per owner.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// The product spec it was sized from.
    pub spec_id: Option<i64>,
    /// CPU, thousandths of a core.
    pub cpu_millis: i64,
    /// Memory, bytes.
    pub memory_bytes: i64,
    /// Whole GPUs, or 1 for a GPU share.
    pub gpu_count: i64,
    /// The service definition of the current version (JSON).
    pub definition: serde_json::Value,
    /// Anyone may use it.
    pub is_public: bool,
    /// `created`, `running`, `stopped` or `error`.
    pub status: String,
    /// The node it runs on.
    pub node_id: Option<i64>,
    /// Its container there.
    pub container_id: Option<String>,
    /// Its container's name.
    pub container_name: Option<String>,
    /// Current deployment version.
    pub version: i64,
    /// Placement generation: raised by every move to another node.
    pub generation: i64,
    /// Stays on its node: never moved by failover (reported instead).
    pub pinned: bool,
    /// Containers it runs; replica 0's placement is the one the fields above describe.
    pub replicas: i64,
    /// The last error.
    pub error: String,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Updated, Unix ms.
    pub updated_at: i64,
}

/// What a user's services take, for quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Services.
    pub services: i64,
    /// CPU, thousandths of a core.
    pub cpu_millis: i64,
    /// Memory, bytes.
    pub memory_bytes: i64,
    /// GPUs.
    pub gpus: i64,
}

/// One version of a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    /// Version, from 1.
    pub version: i64,
    /// Its definition.
    pub definition: serde_json::Value,
    /// Where it ran.
    pub node_id: Option<i64>,
    /// Who deployed it.
    pub user_id: Option<i64>,
    /// Why.
    pub note: String,
    /// When, Unix ms.
    pub created_at: i64,
}

fn service_from(row: &AnyRow) -> Result<ServiceRecord, sqlx::Error> {
    let definition: String = row.try_get("definition")?;
    Ok(ServiceRecord {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        repo: row.try_get("repo")?,
        name: row.try_get("name")?,
        image: row.try_get("image")?,
        spec_id: row.try_get("spec_id")?,
        cpu_millis: row.try_get("cpu_millis")?,
        memory_bytes: row.try_get("memory_bytes")?,
        gpu_count: row.try_get("gpu_count")?,
        definition: serde_json::from_str(&definition).unwrap_or_default(),
        is_public: row.try_get::<i64, _>("is_public")? != 0,
        status: row.try_get("status")?,
        node_id: row.try_get("node_id")?,
        container_id: row.try_get("container_id")?,
        container_name: row.try_get("container_name")?,
        version: row.try_get("version")?,
        generation: row.try_get("generation")?,
        pinned: row.try_get::<i64, _>("pinned")? != 0,
        replicas: row.try_get("replicas")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Inserts a service; a name the owner already uses is a conflict.
pub async fn insert(conn: &mut Conn, service: &ServiceRecord) -> Result<ServiceRecord, StoreError> {
    let ids = insert_all(conn, std::slice::from_ref(service)).await?;
    get(conn, ids[0]).await
}

/// Inserts `services` (in as few statements as the rows allow); their ids, in order. A name an
/// owner already uses, or uses twice among them, is a conflict and inserts none.
pub async fn insert_all(
    conn: &mut Conn,
    services: &[ServiceRecord],
) -> Result<Vec<i64>, StoreError> {
    const COLUMNS: usize = 21;
    let now = now_ms();
    let mut ids = std::collections::HashMap::with_capacity(services.len());
    for chunk in services.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO services (owner_id, repo, name, image, spec_id, cpu_millis, memory_bytes, gpu_count, definition, \
             is_public, status, node_id, container_id, container_name, version, error, created_at, updated_at, generation, pinned, replicas) \
             VALUES {} RETURNING id, owner_id, name",
            value_rows(chunk.len(), COLUMNS)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for service in chunk {
            query = query
                .bind(service.owner_id)
                .bind(service.repo.clone())
                .bind(service.name.clone())
                .bind(service.image.clone())
                .bind(service.spec_id)
                .bind(service.cpu_millis)
                .bind(service.memory_bytes)
                .bind(service.gpu_count)
                .bind(service.definition.to_string())
                .bind(i64::from(service.is_public))
                .bind(service.status.clone())
                .bind(service.node_id)
                .bind(service.container_id.clone())
                .bind(service.container_name.clone())
                .bind(service.version)
                .bind(service.error.clone())
                .bind(now)
                .bind(now)
                .bind(service.generation)
                .bind(i64::from(service.pinned))
                .bind(service.replicas);
        }
        let rows = query.fetch_all(&mut *conn).await.map_err(|err| {
            conflict_or(err, || match chunk {
                [one] => format!("you already have a service named {:?}", one.name),
                _ => {
                    let names: Vec<&str> =
                        chunk.iter().map(|service| service.name.as_str()).collect();
                    format!("a service named one of {names:?} exists already")
                }
            })
        })?;
        for row in rows {
            let key: (i64, String) = (row.try_get("owner_id")?, row.try_get("name")?);
            ids.insert(key, row.try_get::<i64, _>("id")?);
        }
    }
    services
        .iter()
        .map(|service| {
            ids.get(&(service.owner_id, service.name.clone()))
                .copied()
                .ok_or_else(|| {
                    StoreError::Invalid(format!("service {:?} was not inserted", service.name))
                })
        })
        .collect()
}

/// Which of `wanted` (owner, name) are taken by existing services.
pub async fn names_taken(
    conn: &mut Conn,
    wanted: &[(i64, String)],
) -> Result<std::collections::HashSet<(i64, String)>, StoreError> {
    let mut taken = std::collections::HashSet::new();
    for chunk in wanted.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT owner_id, name FROM services WHERE name IN {}",
            value_rows(1, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (_, name) in chunk {
            query = query.bind(name.clone());
        }
        for row in query.fetch_all(&mut *conn).await? {
            let key: (i64, String) = (row.try_get("owner_id")?, row.try_get("name")?);
            if chunk.contains(&key) {
                taken.insert(key);
            }
        }
    }
    Ok(taken)
}

/// Sets the container name of each (service id, name) in `named`.
pub async fn set_container_names(
    conn: &mut Conn,
    named: &[(i64, String)],
) -> Result<(), StoreError> {
    for chunk in named.chunks(ROWS_PER_STATEMENT) {
        let cases: String = (0..chunk.len())
            .map(|at| format!(" WHEN ${} THEN ${}", 2 * at + 1, 2 * at + 2))
            .collect();
        let ids: Vec<String> = (0..chunk.len())
            .map(|at| format!("${}", 2 * at + 1))
            .collect();
        let sql = format!(
            "UPDATE services SET container_name = CASE id{cases} END WHERE id IN ({})",
            ids.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, name) in chunk {
            query = query.bind(*id).bind(name.clone());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Sets service `id`'s wanted `status` and clears its error.
pub async fn set_status(conn: &mut Conn, id: i64, status: &str) -> Result<(), StoreError> {
    let updated =
        sqlx::query("UPDATE services SET status = $1, error = '', updated_at = $2 WHERE id = $3")
            .bind(status)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *conn)
            .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no service {id}")));
    }
    Ok(())
}

/// Sets the container of service `id`'s first replica.
pub async fn set_container_id(
    conn: &mut Conn,
    id: i64,
    container_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE services SET container_id = $1, updated_at = $2 WHERE id = $3")
        .bind(container_id)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes the mutable fields of `service` (by id).
pub async fn update(conn: &mut Conn, service: &ServiceRecord) -> Result<ServiceRecord, StoreError> {
    let updated = sqlx::query(
        "UPDATE services SET image = $1, cpu_millis = $2, memory_bytes = $3, gpu_count = $4, definition = $5, \
         is_public = $6, status = $7, node_id = $8, container_id = $9, container_name = $10, version = $11, \
         error = $12, updated_at = $13, generation = $14, pinned = $15, replicas = $16 WHERE id = $17",
    )
    .bind(&service.image)
    .bind(service.cpu_millis)
    .bind(service.memory_bytes)
    .bind(service.gpu_count)
    .bind(service.definition.to_string())
    .bind(i64::from(service.is_public))
    .bind(&service.status)
    .bind(service.node_id)
    .bind(service.container_id.clone())
    .bind(service.container_name.clone())
    .bind(service.version)
    .bind(&service.error)
    .bind(now_ms())
    .bind(service.generation)
    .bind(i64::from(service.pinned))
    .bind(service.replicas)
    .bind(service.id)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no service {}", service.id)));
    }
    get(conn, service.id).await
}

/// One service.
pub async fn get(conn: &mut Conn, id: i64) -> Result<ServiceRecord, StoreError> {
    let row = sqlx::query("SELECT * FROM services WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no service {id}")))?;
    Ok(service_from(&row)?)
}

/// Services of `owner`, or all when `None`.
pub async fn list(conn: &mut Conn, owner: Option<i64>) -> Result<Vec<ServiceRecord>, StoreError> {
    let rows = match owner {
        Some(owner) => {
            sqlx::query("SELECT * FROM services WHERE owner_id = $1 ORDER BY id")
                .bind(owner)
                .fetch_all(&mut *conn)
                .await?
        }
        None => {
            sqlx::query("SELECT * FROM services ORDER BY id")
                .fetch_all(&mut *conn)
                .await?
        }
    };
    Ok(rows.iter().map(service_from).collect::<Result<_, _>>()?)
}

/// How many services are in each state.
pub async fn count_by_status(conn: &mut Conn) -> Result<Vec<(String, i64)>, StoreError> {
    let rows =
        sqlx::query("SELECT status, COUNT(*) AS n FROM services GROUP BY status ORDER BY status")
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<String, _>("status")?,
                row.try_get::<i64, _>("n")?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// What `owner`'s services take.
pub async fn usage(conn: &mut Conn, owner: i64) -> Result<Usage, StoreError> {
    let row = sqlx::query(
        // PostgreSQL sums BIGINTs as NUMERIC, which the Any driver cannot read: cast back.
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(cpu_millis * replicas), 0) AS BIGINT) AS cpu, \
         CAST(COALESCE(SUM(memory_bytes * replicas), 0) AS BIGINT) AS memory, \
         CAST(COALESCE(SUM(gpu_count * replicas), 0) AS BIGINT) AS gpus \
         FROM services WHERE owner_id = $1",
    )
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Usage {
        services: row.try_get("n")?,
        cpu_millis: row.try_get("cpu")?,
        memory_bytes: row.try_get("memory")?,
        gpus: row.try_get("gpus")?,
    })
}

/// Deletes a service with its container rows and history.
pub async fn delete(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM containers WHERE service_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM deployments WHERE service_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM stats_samples WHERE service_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let deleted = sqlx::query("DELETE FROM services WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no service {id}")));
    }
    Ok(())
}

/// Records a deployment of a service; a version it has already is a conflict.
pub async fn add_deployment(
    conn: &mut Conn,
    service_id: i64,
    deployment: &Deployment,
) -> Result<(), StoreError> {
    add_deployments(conn, &[(service_id, deployment)]).await
}

/// Records each (service id, deployment) of `deployments`, in as few statements as the rows
/// allow; a version a service has already is a conflict and records none.
pub async fn add_deployments(
    conn: &mut Conn,
    deployments: &[(i64, &Deployment)],
) -> Result<(), StoreError> {
    const COLUMNS: usize = 7;
    let now = now_ms();
    for chunk in deployments.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO deployments (service_id, version, definition, node_id, user_id, note, created_at) VALUES {}",
            value_rows(chunk.len(), COLUMNS)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (service_id, deployment) in chunk {
            query = query
                .bind(*service_id)
                .bind(deployment.version)
                .bind(deployment.definition.to_string())
                .bind(deployment.node_id)
                .bind(deployment.user_id)
                .bind(deployment.note.clone())
                .bind(now);
        }
        query.execute(&mut *conn).await.map_err(|err| {
            conflict_or(err, || match chunk {
                [(id, one)] => format!("version {} of service {id} exists", one.version),
                _ => {
                    let versions: Vec<(i64, i64)> = chunk
                        .iter()
                        .map(|(id, deployment)| (*id, deployment.version))
                        .collect();
                    format!("one of the (service, version) pairs {versions:?} exists")
                }
            })
        })?;
    }
    Ok(())
}

/// A service's deployments, newest first.
pub async fn deployments(conn: &mut Conn, service_id: i64) -> Result<Vec<Deployment>, StoreError> {
    let rows = sqlx::query("SELECT * FROM deployments WHERE service_id = $1 ORDER BY version DESC")
        .bind(service_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            let definition: String = row.try_get("definition")?;
            Ok(Deployment {
                version: row.try_get("version")?,
                definition: serde_json::from_str(&definition).unwrap_or_default(),
                node_id: row.try_get("node_id")?,
                user_id: row.try_get("user_id")?,
                note: row.try_get("note")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}
