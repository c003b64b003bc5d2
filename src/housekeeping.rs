//! Background purge of what has expired: sessions, used login states, used logout tokens and
//! refresh leases nobody holds. Deletes are idempotent, so any number of instances may run this
//! at once. Also counts the rows still sealed under keys other than the first
//! (`courier_sealed_rows_under_old_keys`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::crypto::KeyRing;
use crate::db;
use crate::db::sealed::SEALED_TABLES;
use crate::oidc::login::PENDING_LOGIN_TTL;

const INTERVAL: Duration = Duration::from_secs(300);

pub async fn purge_once(pool: &PgPool, clock: &SharedClock) -> Result<(), db::DbError> {
    let now = clock.now();
    let sessions = db::sessions::purge_expired(pool, now, now - PENDING_LOGIN_TTL).await?;
    let states = db::login_states::purge_expired(pool, now).await?;
    let logout_tokens = db::logout_tokens::purge_expired(pool, now).await?;
    db::cache_acks::purge(pool).await?;
    db::refresh_leases::purge(pool).await?;
    if sessions + states + logout_tokens > 0 {
        tracing::info!(
            sessions,
            login_states = states,
            logout_tokens,
            "purged expired rows"
        );
    }
    Ok(())
}

/// Sets `courier_sealed_rows_under_old_keys{table}`: the rows with a value that this
/// instance's first key did not seal, which would no longer open once the other keys are
/// removed. Counted by each value's key-id prefix, so nothing is opened.
pub async fn count_sealed_under_old_keys(pool: &PgPool, keys: &KeyRing) -> Result<(), sqlx::Error> {
    for table in SEALED_TABLES {
        let stale = table.count_stale(pool, keys).await?;
        metrics::gauge!("courier_sealed_rows_under_old_keys", "table" => table.table)
            .set(stale as f64);
    }
    Ok(())
}

pub fn spawn(pool: PgPool, clock: SharedClock, keys: Arc<KeyRing>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        loop {
            ticker.tick().await;
            if let Err(e) = purge_once(&pool, &clock).await {
                tracing::warn!(error = %e, "housekeeping failed; will retry");
            }
            if let Err(e) = count_sealed_under_old_keys(&pool, &keys).await {
                tracing::warn!(error = %e, "counting sealed rows failed; will retry");
            }
        }
    });
}
