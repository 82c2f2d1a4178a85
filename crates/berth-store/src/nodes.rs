//! Compute nodes: seed 003's fields (hardware, addresses, SSH, GPUs, HAMi-core, Docker connection
//! with TLS), the controller fields of seed 000 (driver, server type, enabled, priority, weight),
//! the connection status the monitor keeps, and the hardware it observed. Secrets are stored
//! sealed; this module never sees them in clear.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::conflict_or;
use crate::{Conn, StoreError, now_ms};

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    /// Id (0 before insert).
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Region.
    pub region: String,
    /// CPU description.
    pub cpu: String,
    /// Memory description.
    pub memory: String,
    /// System disk size.
    pub system_disk: String,
    /// Data disk size.
    pub data_disk: String,
    /// Public IP.
    pub public_ip: String,
    /// Private IP.
    pub private_ip: String,
    /// SSH port.
    pub ssh_port: i64,
    /// SSH user.
    pub ssh_user: String,
    /// SSH password, sealed.
    #[serde(skip)]
    pub ssh_password_sealed: Option<String>,
    /// GPU model.
    pub gpu_model: String,
    /// GPU count.
    pub gpu_count: i64,
    /// Memory of one GPU, GB.
    pub gpu_memory_gb: i64,
    /// HAMi-core build dir.
    pub hami_core_dir: String,
    /// `docker` or `agent`.
    pub driver: String,
    /// Docker API address.
    pub docker_address: String,
    /// Use TLS to the Docker API.
    pub use_tls: bool,
    /// CA certificate, sealed.
    #[serde(skip)]
    pub ca_cert_sealed: Option<String>,
    /// Client certificate, sealed.
    #[serde(skip)]
    pub client_cert_sealed: Option<String>,
    /// Client key, sealed.
    #[serde(skip)]
    pub client_key_sealed: Option<String>,
    /// Agent URL.
    pub agent_url: String,
    /// Agent API key, sealed.
    #[serde(skip)]
    pub agent_key_sealed: Option<String>,
    /// `gpu`, `cpu` or `edge`.
    pub server_type: String,
    /// Takes new work.
    pub enabled: bool,
    /// Shown to users (seed 003's "listed").
    pub listed: bool,
    /// Lower is tried first.
    pub priority: i64,
    /// Share of work within a priority.
    pub weight: i64,
    /// Free text.
    pub remark: String,
    /// Labels services can require (`constraints`).
    pub labels: BTreeMap<String, String>,
    /// `connected`, `failed` or `unknown`.
    pub docker_status: String,
    /// The last connection test's message.
    pub status_message: String,
    /// When the connection was last tested, Unix ms.
    pub last_checked_at: Option<i64>,
    /// Hardware learned from the node, JSON.
    pub observed: serde_json::Value,
    /// `api` or `config`.
    pub origin: String,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Updated, Unix ms.
    pub updated_at: i64,
}

impl NodeRecord {
    /// A node with `name` and `driver` and every other field at its default.
    pub fn new(name: &str, driver: &str) -> Self {
        Self {
            id: 0,
            name: name.to_owned(),
            region: String::new(),
            cpu: String::new(),
            memory: String::new(),
            system_disk: String::new(),
            data_disk: String::new(),
            public_ip: String::new(),
            private_ip: String::new(),
            ssh_port: 22,
            ssh_user: String::new(),
            ssh_password_sealed: None,
            gpu_model: String::new(),
            gpu_count: 0,
            gpu_memory_gb: 0,
            hami_core_dir: String::new(),
            driver: driver.to_owned(),
            docker_address: String::new(),
            use_tls: true,
            ca_cert_sealed: None,
            client_cert_sealed: None,
            client_key_sealed: None,
            agent_url: String::new(),
            agent_key_sealed: None,
            server_type: "cpu".to_owned(),
            enabled: true,
            listed: true,
            priority: 100,
            weight: 100,
            remark: String::new(),
            labels: BTreeMap::new(),
            docker_status: "unknown".to_owned(),
            status_message: String::new(),
            last_checked_at: None,
            observed: serde_json::json!({}),
            origin: "api".to_owned(),
            created_at: 0,
            updated_at: 0,
        }
    }
}

fn node_from(row: &AnyRow) -> Result<NodeRecord, sqlx::Error> {
    let observed: String = row.try_get("observed")?;
    Ok(NodeRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        region: row.try_get("region")?,
        cpu: row.try_get("cpu")?,
        memory: row.try_get("memory")?,
        system_disk: row.try_get("system_disk")?,
        data_disk: row.try_get("data_disk")?,
        public_ip: row.try_get("public_ip")?,
        private_ip: row.try_get("private_ip")?,
        ssh_port: row.try_get("ssh_port")?,
        ssh_user: row.try_get("ssh_user")?,
        ssh_password_sealed: row.try_get("ssh_password_sealed")?,
        gpu_model: row.try_get("gpu_model")?,
        gpu_count: row.try_get("gpu_count")?,
        gpu_memory_gb: row.try_get("gpu_memory_gb")?,
        hami_core_dir: row.try_get("hami_core_dir")?,
        driver: row.try_get("driver")?,
        docker_address: row.try_get("docker_address")?,
        use_tls: row.try_get::<i64, _>("use_tls")? != 0,
        ca_cert_sealed: row.try_get("ca_cert_sealed")?,
        client_cert_sealed: row.try_get("client_cert_sealed")?,
        client_key_sealed: row.try_get("client_key_sealed")?,
        agent_url: row.try_get("agent_url")?,
        agent_key_sealed: row.try_get("agent_key_sealed")?,
        server_type: row.try_get("server_type")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        listed: row.try_get::<i64, _>("listed")? != 0,
        priority: row.try_get("priority")?,
        weight: row.try_get("weight")?,
        remark: row.try_get("remark")?,
        labels: serde_json::from_str(&row.try_get::<String, _>("labels")?).unwrap_or_default(),
        docker_status: row.try_get("docker_status")?,
        status_message: row.try_get("status_message")?,
        last_checked_at: row.try_get("last_checked_at")?,
        observed: serde_json::from_str(&observed).unwrap_or_default(),
        origin: row.try_get("origin")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Binds the node's fields, `$1` to `$34`, in the column order both statements use.
fn bind_fields<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    node: &'q NodeRecord,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(&node.name)
        .bind(&node.region)
        .bind(&node.cpu)
        .bind(&node.memory)
        .bind(&node.system_disk)
        .bind(&node.data_disk)
        .bind(&node.public_ip)
        .bind(&node.private_ip)
        .bind(node.ssh_port)
        .bind(&node.ssh_user)
        .bind(node.ssh_password_sealed.clone())
        .bind(&node.gpu_model)
        .bind(node.gpu_count)
        .bind(node.gpu_memory_gb)
        .bind(&node.hami_core_dir)
        .bind(&node.driver)
        .bind(&node.docker_address)
        .bind(i64::from(node.use_tls))
        .bind(node.ca_cert_sealed.clone())
        .bind(node.client_cert_sealed.clone())
        .bind(node.client_key_sealed.clone())
        .bind(&node.agent_url)
        .bind(node.agent_key_sealed.clone())
        .bind(&node.server_type)
        .bind(i64::from(node.enabled))
        .bind(i64::from(node.listed))
        .bind(node.priority)
        .bind(node.weight)
        .bind(&node.remark)
        .bind(&node.docker_status)
        .bind(&node.status_message)
        .bind(node.last_checked_at)
        .bind(node.observed.to_string())
        .bind(&node.origin)
        .bind(serde_json::to_string(&node.labels).unwrap_or_else(|_| "{}".to_owned()))
}

/// Inserts `node`; a taken name is a conflict. Returns the stored node.
pub async fn insert(conn: &mut Conn, node: &NodeRecord) -> Result<NodeRecord, StoreError> {
    let now = now_ms();
    let query = sqlx::query(
        "INSERT INTO nodes (name, region, cpu, memory, system_disk, data_disk, public_ip, private_ip, ssh_port, \
         ssh_user, ssh_password_sealed, gpu_model, gpu_count, gpu_memory_gb, hami_core_dir, driver, docker_address, \
         use_tls, ca_cert_sealed, client_cert_sealed, client_key_sealed, agent_url, agent_key_sealed, server_type, \
         enabled, listed, priority, weight, remark, docker_status, status_message, last_checked_at, observed, origin, \
         labels, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37) \
         RETURNING id",
    );
    let row = bind_fields(query, node)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| conflict_or(err, || format!("a node named {:?} exists", node.name)))?;
    get(conn, row.try_get("id")?).await
}

/// Writes every field of `node` (by id); a taken name is a conflict.
pub async fn update(conn: &mut Conn, node: &NodeRecord) -> Result<NodeRecord, StoreError> {
    let query = sqlx::query(
        "UPDATE nodes SET name = $1, region = $2, cpu = $3, memory = $4, system_disk = $5, data_disk = $6, \
         public_ip = $7, private_ip = $8, ssh_port = $9, ssh_user = $10, ssh_password_sealed = $11, gpu_model = $12, \
         gpu_count = $13, gpu_memory_gb = $14, hami_core_dir = $15, driver = $16, docker_address = $17, \
         use_tls = $18, ca_cert_sealed = $19, client_cert_sealed = $20, client_key_sealed = $21, agent_url = $22, \
         agent_key_sealed = $23, server_type = $24, enabled = $25, listed = $26, priority = $27, weight = $28, \
         remark = $29, docker_status = $30, status_message = $31, last_checked_at = $32, observed = $33, \
         origin = $34, labels = $35, updated_at = $36 WHERE id = $37",
    );
    let updated = bind_fields(query, node)
        .bind(now_ms())
        .bind(node.id)
        .execute(&mut *conn)
        .await
        .map_err(|err| conflict_or(err, || format!("a node named {:?} exists", node.name)))?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no node {}", node.id)));
    }
    get(conn, node.id).await
}

/// One node.
pub async fn get(conn: &mut Conn, id: i64) -> Result<NodeRecord, StoreError> {
    let row = sqlx::query("SELECT * FROM nodes WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no node {id}")))?;
    Ok(node_from(&row)?)
}

/// The node called `name`, if any.
pub async fn find_by_name(conn: &mut Conn, name: &str) -> Result<Option<NodeRecord>, StoreError> {
    let row = sqlx::query("SELECT * FROM nodes WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(node_from).transpose()?)
}

/// Every node, by id.
pub async fn list(conn: &mut Conn) -> Result<Vec<NodeRecord>, StoreError> {
    let rows = sqlx::query("SELECT * FROM nodes ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(node_from).collect::<Result<_, _>>()?)
}

/// Records a connection test.
pub async fn set_status(
    conn: &mut Conn,
    id: i64,
    status: &str,
    message: &str,
    observed: Option<&serde_json::Value>,
) -> Result<(), StoreError> {
    let now = now_ms();
    let result = match observed {
        Some(observed) => {
            sqlx::query(
                "UPDATE nodes SET docker_status = $1, status_message = $2, last_checked_at = $3, observed = $4 \
                 WHERE id = $5",
            )
            .bind(status)
            .bind(message)
            .bind(now)
            .bind(observed.to_string())
            .bind(id)
            .execute(&mut *conn)
            .await?
        }
        None => {
            sqlx::query("UPDATE nodes SET docker_status = $1, status_message = $2, last_checked_at = $3 WHERE id = $4")
                .bind(status)
                .bind(message)
                .bind(now)
                .bind(id)
                .execute(&mut *conn)
                .await?
        }
    };
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no node {id}")));
    }
    Ok(())
}

/// Containers recorded on a node.
pub async fn container_count(conn: &mut Conn, id: i64) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("SELECT COUNT(*) AS n FROM containers WHERE node_id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?,
    )
}

/// Deletes a node; refused (conflict) while containers are recorded on it.
pub async fn delete(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    let containers = container_count(conn, id).await?;
    if containers > 0 {
        return Err(StoreError::Conflict(format!(
            "node {id} still runs {containers} service containers; stop or move them first"
        )));
    }
    let deleted = sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no node {id}")));
    }
    Ok(())
}
