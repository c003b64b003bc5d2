//! What `/api/me` shows of a session: read from Postgres, kept a few seconds in the cache.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::app_cache::AppCache;
use crate::cache::VIEW_MAX_AGE;
use crate::db::sessions::SessionView;
use crate::db::{self, DbError};

/// The session's view at `now`, or `None` when the session has ended. A cached view younger
/// than `VIEW_MAX_AGE` is used; a fresh read is cached under the epoch taken before it, so a
/// read that raced an invalidation is not kept.
pub async fn view(
    pool: &PgPool,
    cache: &AppCache,
    session_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Arc<SessionView>>, DbError> {
    let cached = cache.view(session_id).filter(|(read_at, _)| {
        (now - *read_at)
            .to_std()
            .is_ok_and(|age| age < VIEW_MAX_AGE)
    });
    if let Some((_, view)) = cached {
        return Ok(Some(view));
    }
    let epoch = cache.epoch();
    let Some(view) = db::sessions::view(pool, session_id, now).await? else {
        return Ok(None);
    };
    let view = Arc::new(view);
    cache.put_view(epoch, session_id, (now, view.clone()));
    Ok(Some(view))
}
