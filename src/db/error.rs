//! `DbError`: the one error type of the storage layer. It keeps the sqlx error as its source
//! and knows the difference callers act on: Postgres unreachable (retry, 503) or anything else.

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Postgres cannot be reached right now (connection refused or reset, pool timeout,
    /// server shutting down): a retry may succeed.
    #[error("the database is not reachable")]
    Unavailable(#[source] sqlx::Error),
    /// A query failed for another reason.
    #[error("a database query failed")]
    Query(#[source] sqlx::Error),
    /// A row holds a value courier does not know (an unknown status, say): never guessed.
    #[error("a stored value is not valid: {0}")]
    Invalid(String),
}

impl DbError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        if super::is_unavailable(&e) {
            DbError::Unavailable(e)
        } else {
            DbError::Query(e)
        }
    }
}
