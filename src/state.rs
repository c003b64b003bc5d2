//! What every handler can reach: the handles that `startup` builds once and hands to each
//! worker. Part of the wiring, but the one part routes may name: it holds only handles of the
//! layers below routes.

use std::sync::Arc;

use sqlx::PgPool;

use crate::app_cache::AppCache;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::live::LiveConnections;
use crate::oidc::ProviderRegistry;
use crate::services::ServiceRegistry;
use crate::tokens::TokenService;

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub keys: Arc<KeyRing>,
    pub providers: Arc<ProviderRegistry>,
    pub services: ServiceRegistry,
    pub tokens: TokenService,
    pub cache: Arc<AppCache>,
    pub clock: SharedClock,
    /// This instance's WebSockets and event streams, bound to their sessions.
    pub live: Arc<LiveConnections>,
}
