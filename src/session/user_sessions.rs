//! What a user sees and does with their own sessions (`/api/sessions`): list the live ones, end
//! one, end all but the current one. Ending goes through `session::end`, like every ending.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::app_cache::AppCache;
use crate::crypto::KeyRing;
use crate::db::sessions::{Selection, SessionSummary};
use crate::db::{self, DbError};
use crate::oidc::ProviderRegistry;
use crate::session::CurrentSession;
use crate::session::end;

/// Ending every other session needs an authentication at the provider this recent.
pub const RECENT_LOGIN: Duration = Duration::minutes(10);

/// The user's live sessions at `now`, newest first.
pub async fn list(
    pool: &PgPool,
    current: &CurrentSession,
    now: DateTime<Utc>,
) -> Result<Vec<SessionSummary>, DbError> {
    db::sessions::list(
        pool,
        &Selection {
            user_id: Some(current.user_id),
            live_at: Some(now),
            ..Selection::default()
        },
    )
    .await
}

/// The handles ending a session needs.
pub struct Enders<'a> {
    pub pool: &'a PgPool,
    pub keys: &'a KeyRing,
    pub cache: &'a AppCache,
    pub providers: &'a Arc<ProviderRegistry>,
}

/// What ending one session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedOne {
    /// It was not one of the user's live sessions: nothing changed.
    NotFound,
    /// Another of the user's sessions ended.
    Other,
    /// The request's own session ended (its cookie is to be cleared).
    Current,
}

/// Ends the user's live session whose public id is `public_id`, on every instance, and
/// revokes its refresh token (waiting for the provider a short while at most).
pub async fn end_one(
    enders: &Enders<'_>,
    current: &CurrentSession,
    public_id: Uuid,
    now: DateTime<Utc>,
) -> Result<EndedOne, DbError> {
    let selection = Selection {
        user_id: Some(current.user_id),
        public_id: Some(public_id),
        live_at: Some(now),
        ..Selection::default()
    };
    let ended = end::end_selected(enders.pool, enders.keys, enders.cache, &selection, now).await?;
    if ended.ids.is_empty() {
        return Ok(EndedOne::NotFound);
    }
    let own = ended.ids.contains(&current.id);
    end::revoke_without_holding_the_reply(enders.providers.clone(), ended.refresh_tokens).await;
    tracing::info!(ended = ended.ids.len(), own, "a user ended a session");
    Ok(if own {
        EndedOne::Current
    } else {
        EndedOne::Other
    })
}

/// Why the user's other sessions were not ended.
#[derive(Debug, thiserror::Error)]
pub enum EndOthersError {
    /// The current session's authentication is older than `RECENT_LOGIN` (or the session is
    /// gone): the user signs in again first.
    #[error("ending every other session needs a sign-in less than 10 minutes old; sign in again")]
    LoginTooOld,
    #[error(transparent)]
    Database(#[from] DbError),
}

/// Ends every session of the user but the current one, on every instance, and revokes their
/// refresh tokens; only when the user authenticated within `RECENT_LOGIN`. Returns how many
/// live sessions ended.
pub async fn end_others(
    enders: &Enders<'_>,
    current: &CurrentSession,
    now: DateTime<Utc>,
) -> Result<u64, EndOthersError> {
    let auth_time = db::sessions::auth_time(enders.pool, current.id)
        .await?
        .ok_or(EndOthersError::LoginTooOld)?;
    if now - auth_time >= RECENT_LOGIN {
        return Err(EndOthersError::LoginTooOld);
    }
    let selection = Selection {
        user_id: Some(current.user_id),
        except: Some(current.id),
        ..Selection::default()
    };
    let ended = end::end_selected(enders.pool, enders.keys, enders.cache, &selection, now).await?;
    end::revoke_without_holding_the_reply(enders.providers.clone(), ended.refresh_tokens).await;
    tracing::info!(ended = ended.live, "a user ended their other sessions");
    Ok(ended.live)
}
