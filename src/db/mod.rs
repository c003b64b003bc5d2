//! Postgres: the pool, migrations, and one module per table family. SQL lives here (the
//! cache's LISTEN/NOTIFY statements are still in `crate::cache`).

pub mod cache_acks;
pub mod client_dpop_keys;
mod error;
pub mod health;
pub mod linked_accounts;
pub mod live_connections;
pub mod login_states;
pub mod logout_tokens;
pub mod refresh_leases;
pub mod sealed;
pub mod secrets;
pub mod service_tokens;
pub mod session_tokens;
pub mod sessions;
pub mod users;

pub use error::DbError;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A lazily connecting pool: it connects on first use and again after Postgres comes back.
/// (Start-up runs the migrations first, so courier does not start while Postgres is down.)
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options.application_name("courier")))
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether the error means "Postgres cannot be reached right now" rather than a bad query.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}
