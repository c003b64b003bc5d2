//! The one cache courier keeps, and what fills its three tables: loaded sessions (filled by
//! `session::store`), opened access tokens (by `tokens`) and `/api/me` views (by the `me`
//! route), each with the time, by courier's clock, it was read. It sits with the services that
//! fill it, so that `crate::cache` itself names none of their types.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::cache::Cache;
use crate::db::sessions::SessionView;
use crate::domain::session::LiveSession;
use crate::domain::tokens::CachedAccess;

pub type AppCache = Cache<LiveSession, CachedAccess, (DateTime<Utc>, Arc<SessionView>)>;
