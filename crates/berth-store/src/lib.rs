//! The hub's state in SQL: SQLite (embedded default, WAL) or PostgreSQL, chosen by URL, through
//! sqlx's `Any` driver. Migrations are compiled into the binary and applied at connect. Every
//! repository function takes a connection, so a caller can put a state change and its operation
//! row in one transaction. Secrets are sealed with an AEAD before they reach a table.

pub mod allocations;
pub mod catalog;
mod error;
pub mod join_tokens;
pub mod leases;
pub mod nodes;
pub mod operations;
pub mod secrets;
pub mod services;
pub mod sessions;
pub mod stats_history;
pub mod users;

use std::sync::Once;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use error::StoreError;
pub use secrets::SecretBox;
use secrets::random_hex;

/// Creates the SQLite file of `url` readable by its owner only (0600) when it does not exist
/// yet; SQLite gives its journal files the same mode.
fn create_private_file(url: &str) -> Result<(), StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.starts_with(':') {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(StoreError::Invalid(format!(
            "cannot create the database file {path}: {err}"
        ))),
    }
}

/// A connection or transaction any repository function accepts.
pub type Conn = sqlx::AnyConnection;
/// An open write transaction; on SQLite it holds the store's one write connection until it
/// commits or is dropped. It reads and writes as the connection it derefs to.
pub struct Tx<'a> {
    inner: sqlx::Transaction<'a, sqlx::Any>,
}

impl<'a> Tx<'a> {
    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }
}

impl<'a> std::ops::Deref for Tx<'a> {
    type Target = sqlx::Transaction<'a, sqlx::Any>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, a file in the data dir.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A pool of connections to the hub's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The connections writes take: on SQLite a pool of one, so writers take turns for it
    /// (first come, first served) rather than in SQLite's busy handler, which sleeps for
    /// milliseconds whenever two connections want the write lock at once, and a writer never
    /// waits for a connection that readers hold; on PostgreSQL the one pool.
    writes: AnyPool,
    /// What every write transaction proves once several hubs share the database.
    fence: std::sync::Arc<leases::Fence>,
}

static DRIVERS: Once = Once::new();

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://…`) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "database URL {:?} is neither sqlite://PATH nor postgres://…",
                redact_url(url)
            )));
        };
        if backend == Backend::Sqlite {
            create_private_file(url)?;
        }
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let options: AnyConnectOptions = url.parse().map_err(StoreError::from)?;
        let (pool, writes) = match backend {
            Backend::Sqlite => {
                let pool = sqlite_pool(12).connect_with(options.clone()).await?;
                pool.execute("PRAGMA journal_mode = WAL;").await?;
                let writes = sqlite_pool(1).connect_with(options).await?;
                (pool, writes)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .connect_with(options)
                    .await?;
                (pool.clone(), pool)
            }
        };
        let store = Self {
            pool,
            backend,
            writes,
            fence: std::sync::Arc::new(leases::Fence::new(random_hex::<8>()?)),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|err| StoreError::Migration(err.to_string()))
    }

    /// The database kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. On SQLite it waits for the store's write connection (one
    /// write transaction of this process at a time), then begins IMMEDIATE: it takes the write
    /// lock at once (waiting up to the busy timeout for another process), so a read followed by
    /// a write inside it cannot fail with "database is locked" when another writer committed
    /// between them.
    pub async fn begin(&self) -> Result<Tx<'static>, StoreError> {
        let mut inner = match self.backend {
            Backend::Sqlite => self.writes.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writes.begin().await?,
        };
        self.fence.check(&mut inner, self.backend).await?;
        Ok(Tx { inner })
    }

    /// This process's lease fence: unarmed (every write passes) until a hub arms it.
    pub fn fence(&self) -> &std::sync::Arc<leases::Fence> {
        &self.fence
    }

    /// A pooled connection for reads.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes every connection, waiting for those in use.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writes.close().await;
    }
}

/// Rows a multi-row statement carries at most (well under both databases' limits on bound
/// values, at 21 columns a row).
pub(crate) const ROWS_PER_STATEMENT: usize = 100;

/// The VALUES of a multi-row insert: `($1, …, $columns), ($columns+1, …)` for `rows` rows.
pub(crate) fn value_rows(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let numbers: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", numbers.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A pool of `size` SQLite connections, each with foreign keys on and a busy timeout (for
/// another process's writes). A local file is not pinged before each use.
fn sqlite_pool(size: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .after_connect(|connection, _| {
            Box::pin(async move {
                connection
                    .execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 15000;")
                    .await?;
                Ok(())
            })
        })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}://{user}:***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two migration sets must describe one schema: they may differ only in how an id column
    /// counts up.
    #[test]
    fn sqlite_and_postgres_migrations_stay_the_same_schema() {
        let pairs = [
            (
                include_str!("../migrations/sqlite/0001_hub.sql"),
                include_str!("../migrations/postgres/0001_hub.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0002_services.sql"),
                include_str!("../migrations/postgres/0002_services.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0003_allocations.sql"),
                include_str!("../migrations/postgres/0003_allocations.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0004_replicas.sql"),
                include_str!("../migrations/postgres/0004_replicas.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0005_node_labels.sql"),
                include_str!("../migrations/postgres/0005_node_labels.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0006_console.sql"),
                include_str!("../migrations/postgres/0006_console.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0007_token_life.sql"),
                include_str!("../migrations/postgres/0007_token_life.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0008_operation_state.sql"),
                include_str!("../migrations/postgres/0008_operation_state.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0009_usage_index.sql"),
                include_str!("../migrations/postgres/0009_usage_index.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0010_token_services.sql"),
                include_str!("../migrations/postgres/0010_token_services.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0011_stats_tokens.sql"),
                include_str!("../migrations/postgres/0011_stats_tokens.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0012_join_tokens.sql"),
                include_str!("../migrations/postgres/0012_join_tokens.sql"),
            ),
            (
                include_str!("../migrations/sqlite/0013_leases.sql"),
                include_str!("../migrations/postgres/0013_leases.sql"),
            ),
        ];
        for (sqlite, postgres) in pairs {
            let translated = sqlite.replace(
                "INTEGER PRIMARY KEY AUTOINCREMENT",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            );
            assert_eq!(translated, postgres);
        }
        let sqlite_dir =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
                .expect("dir")
                .count();
        let postgres_dir =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
                .expect("dir")
                .count();
        assert_eq!(
            (sqlite_dir, postgres_dir),
            (pairs.len(), pairs.len()),
            "every migration is in both sets and listed here"
        );
    }

    #[test]
    fn value_rows_number_every_value_once() {
        assert_eq!(value_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(value_rows(1, 1), "($1)");
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://berth:s3cret@db:5432/berth"),
            "postgres://berth:***@db:5432/berth"
        );
        assert_eq!(
            redact_url("sqlite://berth-data/berth.db"),
            "sqlite://berth-data/berth.db"
        );
    }
}
