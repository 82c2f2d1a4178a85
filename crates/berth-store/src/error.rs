//! The store's error type.

use thiserror::Error;

/// Why a store call failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A unique value is taken (a name).
    #[error("{0}")]
    Conflict(String),
    /// No row has this id.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be stored as given.
    #[error("{0}")]
    Invalid(String),
    /// A sealed secret could not be opened (wrong key, damaged value).
    #[error("secret cannot be opened: {0}")]
    Secret(String),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// This hub does not lead: another hub makes the changes now.
    #[error("{0}")]
    Fenced(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the database was too busy to take the change now (SQLite's lock held past the
    /// busy timeout; a PostgreSQL serialization failure, deadlock or lock timeout): the same
    /// request may simply be made again.
    pub fn is_busy(&self) -> bool {
        let StoreError::Database(err) = self else {
            return false;
        };
        match err {
            sqlx::Error::PoolTimedOut => true,
            sqlx::Error::Database(db) => {
                let code = db.code();
                let code = code.as_deref().unwrap_or_default();
                // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6) with their extended codes.
                let sqlite_busy = code
                    .parse::<i64>()
                    .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
                sqlite_busy || matches!(code, "40001" | "40P01" | "55P03")
            }
            _ => false,
        }
    }
}

/// Turns a unique-constraint violation into `Conflict(message)`, other errors into `Database`.
pub(crate) fn conflict_or(err: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    let unique = err
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation());
    if unique {
        StoreError::Conflict(message())
    } else {
        StoreError::Database(err)
    }
}
