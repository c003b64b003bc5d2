//! Builds the application from configuration and a bound listener; the one place where routes
//! and middleware are wired.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_identity::IdentityMiddleware;
use actix_session::SessionMiddleware;
use actix_session::config::{CookieContentSecurity, PersistentSession};
use actix_web::cookie::{Key, SameSite, time::Duration as CookieDuration};
use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::web::resource;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;

use crate::app_cache::AppCache;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::crypto::{KeyRing, random_bytes};
use crate::error::ApiError;
use crate::limits::{
    Limits, body_deadline, close_after_unread_body, login_rate_limit, request_guard,
};
use crate::live::LiveConnections;
use crate::middleware::require_csrf_header;
use crate::oidc::ProviderRegistry;
use crate::services::ServiceRegistry;
use crate::session::PgSessionStore;
use crate::state::AppState;
use crate::tokens::TokenService;
use crate::{db, housekeeping, middleware, routes};

/// How long start-up waits for the first discovery before serving anyway (retries go on in
/// the background and `/readyz` reports the provider as missing meanwhile).
const INITIAL_DISCOVERY_WAIT: Duration = Duration::from_secs(10);

/// How long in-flight requests may run on after SIGTERM or SIGINT.
const SHUTDOWN_TIMEOUT_SECS: u64 = 25;

pub struct Application {
    port: u16,
    server: Server,
    live: Arc<LiveConnections>,
}

impl Application {
    /// Builds courier on the real clock.
    pub async fn build(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        Self::build_with_clock(config, listener, Arc::new(SystemClock)).await
    }

    /// Builds courier with an injected clock (tests move time forward with it).
    pub async fn build_with_clock(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let pool = db::pool(config.database_url(), config.database.max_connections)
            .context("database.url is not a valid Postgres URL")?;
        db::migrate(&pool)
            .await
            .context("running database migrations")?;

        let keys = Arc::new(
            KeyRing::from_config(&config.security.encryption_keys)
                .map_err(|(i, m)| anyhow::anyhow!("security.encryption_keys[{i}]: {m}"))?,
        );
        let cookie_key =
            db::secrets::get_or_create(&pool, &keys, db::secrets::SESSION_COOKIE_KEY, || {
                random_bytes::<64>().to_vec()
            })
            .await
            .context("loading the session cookie key")?;

        let providers = Arc::new(ProviderRegistry::new(
            &config,
            crate::oidc::http::build_client(),
        ));
        let _ = tokio::time::timeout(INITIAL_DISCOVERY_WAIT, providers.discover_missing()).await;
        providers.spawn_discovery_retries();
        housekeeping::spawn(pool.clone(), clock.clone(), keys.clone());

        crate::metrics::handle();
        crate::metrics::spawn_upkeep();
        let port = listener.local_addr()?.port();
        let cache = Arc::new(AppCache::default());
        {
            tokio::spawn(cache.clone().listen(pool.clone()));
        }
        let tokens = TokenService::new(
            pool.clone(),
            cache.clone(),
            keys.clone(),
            providers.clone(),
            clock.clone(),
        );
        let live = LiveConnections::new(
            pool.clone(),
            config.server.max_live_connections,
            config.session.max_live_connections,
            crate::websocket::instance_budget(config.server.websocket_max_message_bytes),
        );
        tokio::spawn(live.clone().watch(clock.clone(), cache.changes()));
        let state = web::Data::new(AppState {
            services: ServiceRegistry::new(&config)?,
            config: Arc::new(config),
            pool: pool.clone(),
            keys,
            providers,
            tokens,
            cache,
            clock: clock.clone(),
            live: live.clone(),
        });
        let cookie_key = Key::from(&cookie_key);
        let limits = web::Data::new(Arc::new(Limits::new(&state.config)));
        {
            let limits = limits.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(60));
                loop {
                    ticker.tick().await;
                    limits.shrink();
                }
            });
        }

        let server = HttpServer::new(move || {
            let session_config = &state.config.session;
            let store = PgSessionStore::new(
                state.pool.clone(),
                state.cache.clone(),
                state.clock.clone(),
                chrono::Duration::seconds(session_config.idle_timeout_secs as i64),
            );
            let sessions = SessionMiddleware::builder(store, cookie_key.clone())
                .cookie_name(session_config.cookie_name.clone())
                .cookie_secure(true)
                .cookie_http_only(true)
                .cookie_same_site(SameSite::Lax)
                .cookie_path("/".into())
                .cookie_domain(None)
                .cookie_content_security(CookieContentSecurity::Signed)
                .session_lifecycle(PersistentSession::default().session_ttl(
                    CookieDuration::seconds(session_config.absolute_timeout_secs as i64),
                ))
                .build();

            let mut app = App::new()
                .app_data(state.clone())
                .app_data(limits.clone())
                .app_data(
                    web::PathConfig::default().error_handler(|e, _| {
                        ApiError::BadRequest(format!("bad path: {e}")).into()
                    }),
                )
                .service(resource("/healthz").route(web::get().to(routes::health::healthz)))
                .service(resource("/readyz").route(web::get().to(routes::health::readyz)))
                .service(resource("/metrics").route(web::get().to(crate::metrics::render)))
                .service(resource("/openapi.yaml").route(web::get().to(routes::health::openapi)))
                .service(
                    resource("/.well-known/jwks.json").route(web::get().to(routes::jwks::jwks)),
                )
                .service(
                    web::scope("/auth")
                        .service(
                            resource("/login")
                                .wrap(from_fn(login_rate_limit))
                                .route(web::get().to(routes::auth::login)),
                        )
                        .service(
                            resource("/providers").route(web::get().to(routes::auth::providers)),
                        )
                        .service(
                            resource("/connect/{service}")
                                .wrap(from_fn(login_rate_limit))
                                .route(web::get().to(routes::auth::connect)),
                        )
                        .service(
                            resource("/callback/{provider}")
                                .wrap(from_fn(login_rate_limit))
                                .route(web::get().to(routes::auth::callback)),
                        )
                        .service(
                            resource("/logout")
                                .wrap(from_fn(require_csrf_header))
                                .route(web::post().to(routes::logout::logout)),
                        )
                        .service(
                            resource("/backchannel-logout/{provider}")
                                .route(web::post().to(routes::logout::backchannel)),
                        ),
                )
                .service(
                    web::scope("/api")
                        .wrap(from_fn(require_csrf_header))
                        .service(resource("/me").route(web::get().to(routes::me::me)))
                        .service(resource("/services").route(web::get().to(routes::services::list)))
                        .service(
                            resource("/sessions")
                                .route(web::get().to(routes::sessions::list))
                                .route(web::delete().to(routes::sessions::end_others)),
                        )
                        .service(
                            resource("/sessions/{id}")
                                .route(web::delete().to(routes::sessions::end_one)),
                        )
                        .service(
                            resource("/connections/{service}")
                                .route(web::delete().to(routes::services::disconnect)),
                        )
                        .service(
                            resource(["/services/{service}", "/services/{service}/{path:.*}"])
                                .route(web::route().to(routes::services::call)),
                        )
                        .default_service(web::to(|| async {
                            Err::<HttpResponse, _>(ApiError::NotFound("no such endpoint".into()))
                        })),
                );
            if let Some(dir) = &state.config.server.static_dir {
                let index = dir.join("index.html");
                app = app.default_service(
                    actix_files::Files::new("/", dir)
                        .index_file("index.html")
                        .default_handler(web::to(move || {
                            let index = index.clone();
                            async move { actix_files::NamedFile::open_async(index).await }
                        })),
                );
            }
            app.wrap(IdentityMiddleware::default())
                .wrap(sessions)
                .wrap(from_fn(request_guard))
                // Outside the guard: a refused request's unread body is held too (see
                // `close_after_unread_body`).
                .wrap(from_fn(body_deadline))
                .wrap(from_fn(middleware::response_policy))
                .wrap(from_fn(middleware::request_log))
                .wrap(from_fn(close_after_unread_body))
        })
        // A relayed WebSocket whose browser stops reading is ended by closing its socket.
        .on_connect(crate::websocket::remember_connection)
        .listen(listener)?
        // actix-server's own handlers stop forcefully on SIGINT; `run_until_signalled` treats
        // SIGINT like SIGTERM instead. Without them, an in-process server (the tests') leaves
        // the process's signals alone.
        .disable_signals()
        // After a stop: no new connections, in-flight requests get this long, then exit.
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .run();

        Ok(Application { port, server, live })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }

    /// Serves until SIGTERM or SIGINT (Ctrl-C), then stops gracefully: no new connections,
    /// live connections (WebSockets, event streams) get a close frame (1001), in-flight requests
    /// may run on for up to `SHUTDOWN_TIMEOUT_SECS`. A second signal stops at once.
    pub async fn run_until_signalled(self) -> std::io::Result<()> {
        let mut signals = StopSignals::install()?;
        let handle = self.server.handle();
        let live = self.live.clone();
        actix_web::rt::spawn(async move {
            let name = signals.next().await;
            let closing = live.shut_down();
            tracing::info!(
                signal = name,
                grace_secs = SHUTDOWN_TIMEOUT_SECS,
                live_connections = closing,
                "stopping: no new connections; live connections closed; in-flight requests may finish"
            );
            let graceful = handle.stop(true);
            tokio::select! {
                _ = graceful => {}
                name = signals.next() => {
                    tracing::warn!(signal = name, "second signal: stopping now");
                    handle.stop(false).await;
                }
            }
        });
        self.server.await
    }
}

/// SIGTERM and SIGINT, registered before serving so that neither can kill the process with
/// its default action once courier runs.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Waits for the next stop signal; returns its name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
