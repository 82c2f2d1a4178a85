//! The hub's state in SQL: SQLite (embedded default, WAL) or PostgreSQL, chosen by URL, through
//! sqlx's `Any` driver. Migrations are compiled into the binary and applied at connect. Every
//! repository function takes a connection, so a caller can put a state change and its operation
//! row in one transaction. Secrets are sealed with an AEAD before they reach a table.

pub mod allocations;
pub mod catalog;
mod error;
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
/// An open write transaction: a database transaction and, on SQLite, the store's writer turn,
/// held until it commits or is dropped. It reads and writes as the connection it derefs to.
pub struct Tx<'a> {
    inner: sqlx::Transaction<'a, sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
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

/// A connection for single writes, holding the writer turn on SQLite ([`Store::writer`]).
pub struct Writer {
    connection: sqlx::pool::PoolConnection<sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for Writer {
    type Target = sqlx::pool::PoolConnection<sqlx::Any>;

    fn deref(&self) -> &Self::Target {
        &self.connection
    }
}

impl std::ops::DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.connection
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
    /// SQLite's writers take turns here rather than in SQLite's busy handler, which sleeps for
    /// milliseconds whenever two connections want the write lock at once.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
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
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 12 } else { 16 })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        connection
                            .execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 15000;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        if backend == Backend::Sqlite {
            pool.execute("PRAGMA journal_mode = WAL;").await?;
        }
        let store = Self {
            pool,
            backend,
            writer: Default::default(),
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

    /// Starts a write transaction. On SQLite it waits for the store's writer turn (one write
    /// transaction of this process at a time), then begins IMMEDIATE: it takes the write lock
    /// at once (waiting up to the busy timeout for another process), so a read followed by a
    /// write inside it cannot fail with "database is locked" when another writer committed
    /// between them.
    pub async fn begin(&self) -> Result<Tx<'static>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let turn = std::sync::Arc::clone(&self.writer).lock_owned().await;
                Tx {
                    inner: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: Some(turn),
                }
            }
            Backend::Postgres => Tx {
                inner: self.pool.begin().await?,
                _turn: None,
            },
        })
    }

    /// A pooled connection for single writes outside a transaction: on SQLite it holds the
    /// store's writer turn like [`Store::begin`], so it never waits in SQLite's busy handler
    /// behind this process's own transactions.
    pub async fn writer(&self) -> Result<Writer, StoreError> {
        let turn = match self.backend {
            Backend::Sqlite => Some(std::sync::Arc::clone(&self.writer).lock_owned().await),
            Backend::Postgres => None,
        };
        Ok(Writer {
            connection: self.pool.acquire().await?,
            _turn: turn,
        })
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
    }
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
