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
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
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
