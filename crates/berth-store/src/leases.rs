//! The leader lease of several hubs on one PostgreSQL database: one row, taken by the first hub
//! to ask and held by renewing it before it expires; a hub takes it over only once it has
//! expired, and every takeover raises its term. Times are the database's own clock, so the
//! hubs' clocks need not agree.
//!
//! A [`Fence`] makes every write transaction of a hub ([`crate::Store::begin`]) prove that the
//! hub still holds the lease with the term it had: on PostgreSQL the transaction reads the row
//! `FOR SHARE`, so a takeover waits until it ends and a transaction begun after a takeover is
//! refused ([`crate::StoreError::Fenced`]). A hub paused inside such a transaction cannot block
//! the others for long: the server ends a transaction left idle for 5 s.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use sqlx::Row;

use crate::{Backend, Conn, StoreError};

/// The lease's row name.
const LEADER: &str = "leader";

/// How long a fenced transaction may sit idle before the server ends it (a paused hub).
const FENCED_IDLE_LIMIT: &str = "5s";

/// The database's clock in Unix milliseconds, as an SQL expression.
fn database_now(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

/// A lease as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The term: raised by every takeover.
    pub term: i64,
    /// When this term began, Unix ms (the database's clock).
    pub since: i64,
    /// When it ends unless renewed, Unix ms.
    pub expires_at: i64,
}

/// Who leads, as the row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The holder's id.
    pub holder: String,
    /// Where its API is reached.
    pub url: String,
    /// Its term.
    pub term: i64,
    /// When its term began, Unix ms.
    pub since: i64,
    /// Whether the lease is still live by the database's clock.
    pub live: bool,
}

/// Takes the lease for `holder` (reached at `url`) for `ttl_ms`, or renews it when `holder`
/// has it: the lease held, or `None` while another holder's lease is live.
pub async fn lead(
    conn: &mut Conn,
    backend: Backend,
    holder: &str,
    url: &str,
    ttl_ms: i64,
) -> Result<Option<Held>, StoreError> {
    let now = database_now(backend);
    let statement = format!(
        "INSERT INTO hub_leases (name, holder, holder_url, term, acquired_at, renewed_at, expires_at) \
         VALUES ($1, $2, $3, 1, {now}, {now}, {now} + $4) \
         ON CONFLICT (name) DO UPDATE SET \
           term = CASE WHEN hub_leases.holder = excluded.holder THEN hub_leases.term ELSE hub_leases.term + 1 END, \
           acquired_at = CASE WHEN hub_leases.holder = excluded.holder THEN hub_leases.acquired_at ELSE excluded.acquired_at END, \
           holder = excluded.holder, holder_url = excluded.holder_url, \
           renewed_at = excluded.renewed_at, expires_at = excluded.expires_at \
         WHERE hub_leases.holder = excluded.holder OR hub_leases.expires_at < excluded.renewed_at \
         RETURNING term, acquired_at, expires_at"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(LEADER)
        .bind(holder)
        .bind(url)
        .bind(ttl_ms)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| {
        Ok(Held {
            term: row.try_get("term")?,
            since: row.try_get("acquired_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    })
    .transpose()
}

/// Gives the lease up (a hub stopping), so another takes it at once.
pub async fn resign(conn: &mut Conn, holder: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE hub_leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
        .bind(LEADER)
        .bind(holder)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Who leads (or led last), if any hub ever did.
pub async fn leader(conn: &mut Conn, backend: Backend) -> Result<Option<Leader>, StoreError> {
    let statement = format!(
        "SELECT holder, holder_url, term, acquired_at, \
         CAST(CASE WHEN expires_at > {} THEN 1 ELSE 0 END AS BIGINT) AS live \
         FROM hub_leases WHERE name = $1",
        database_now(backend)
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(LEADER)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| {
        Ok(Leader {
            holder: row.try_get("holder")?,
            url: row.try_get("holder_url")?,
            term: row.try_get("term")?,
            since: row.try_get("acquired_at")?,
            live: row.try_get::<i64, _>("live")? == 1,
        })
    })
    .transpose()
}

/// The advisory lock that lets one hub at a time set up an empty database.
const SETUP_LOCK: i64 = 0x6265_7274_6873_6574;

/// Makes the caller's transaction the only one setting the database up (the first admin, the
/// declared nodes) until it ends: hubs started together on an empty PostgreSQL database do it
/// one after another, and the later ones find it done. On SQLite a write transaction is alone
/// already.
pub async fn setup_turn(conn: &mut Conn) -> Result<(), StoreError> {
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETUP_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// What a hub's write transactions must prove: that `holder` leads in the term it took.
#[derive(Debug)]
pub struct Fence {
    holder: String,
    /// The term held; 0 while not leading.
    term: AtomicI64,
    /// Whether writes are fenced at all (several hubs on PostgreSQL).
    armed: AtomicBool,
}

impl Fence {
    /// An unarmed fence for `holder`: every write passes until [`Fence::arm`].
    pub fn new(holder: impl Into<String>) -> Self {
        Self {
            holder: holder.into(),
            term: AtomicI64::new(0),
            armed: AtomicBool::new(false),
        }
    }

    /// The holder's id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// From now on, writes need the lease.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Whether writes need the lease.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// Records the term held (0: none).
    pub fn hold(&self, term: i64) {
        self.term.store(term, Ordering::SeqCst);
    }

    /// The term held; 0 while not leading.
    pub fn term(&self) -> i64 {
        self.term.load(Ordering::SeqCst)
    }

    /// Checks, inside transaction `conn`, that the lease is still this holder's in its term
    /// and live; on PostgreSQL the row stays locked against a takeover until the transaction
    /// ends.
    pub(crate) async fn check(&self, conn: &mut Conn, backend: Backend) -> Result<(), StoreError> {
        if !self.armed() {
            return Ok(());
        }
        let term = self.term();
        let refused = || {
            StoreError::Fenced(format!(
                "this hub does not lead (term {term} ended or was never held); the leader makes changes"
            ))
        };
        if term == 0 {
            return Err(refused());
        }
        // On PostgreSQL the same statement sets the idle limit for this transaction
        // (`set_config(…, true)` is `SET LOCAL`) and locks the row: one round trip a write.
        let statement = match backend {
            Backend::Postgres => format!(
                "SELECT term, set_config('idle_in_transaction_session_timeout', '{FENCED_IDLE_LIMIT}', true) \
                 FROM hub_leases WHERE name = $1 AND holder = $2 AND term = $3 \
                 AND expires_at > {} FOR SHARE",
                database_now(backend)
            ),
            Backend::Sqlite => format!(
                "SELECT term FROM hub_leases WHERE name = $1 AND holder = $2 AND term = $3 \
                 AND expires_at > {}",
                database_now(backend)
            ),
        };
        let held = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(LEADER)
            .bind(&self.holder)
            .bind(term)
            .fetch_optional(&mut *conn)
            .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(refused()),
        }
    }
}
