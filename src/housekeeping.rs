//! Background purge of what has expired: sessions, used login states, used logout tokens and
//! refresh leases nobody holds. Deletes are
//! idempotent, so any number of instances may run this at once.

use std::time::Duration;

use sqlx::PgPool;

use crate::clock::SharedClock;
use crate::db;
use crate::oidc::login::PENDING_LOGIN_TTL;

const INTERVAL: Duration = Duration::from_secs(300);

pub async fn purge_once(pool: &PgPool, clock: &SharedClock) -> Result<(), sqlx::Error> {
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

pub fn spawn(pool: PgPool, clock: SharedClock) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        loop {
            ticker.tick().await;
            if let Err(e) = purge_once(&pool, &clock).await {
                tracing::warn!(error = %e, "housekeeping failed; will retry");
            }
        }
    });
}
