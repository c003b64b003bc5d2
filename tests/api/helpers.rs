//! Test harness: a fresh database per test, courier on a random port with an injectable clock,
//! a real OpenID provider (node-oidc-provider) or an in-process fake one (wiremock), and a
//! "browser" that keeps cookies per origin and path and never follows redirects by itself.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use actix_web::cookie::Cookie;
use courier::clock::OffsetClock;
use courier::config::Config;
use courier::startup::Application;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use url::Url;
use uuid::Uuid;

pub const CLIENT_ID: &str = "courier";
pub const CLIENT_SECRET: &str = "courier-secret";
/// The RFC 8693 grant type, which the test provider registers.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::new_on(admin_url()).await
    }

    /// A database on the server that `admin` (a superuser URL) reaches.
    pub async fn new_on(admin: String) -> Self {
        let name = format!("courier_test_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("Postgres is reachable at DATABASE_URL (scripts/test starts it)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let mut url = Url::parse(&admin).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        let url = url.to_string();
        let pool = PgPool::connect(&url)
            .await
            .expect("connect to the test database");
        TestDb {
            name,
            url,
            pool,
            admin,
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        // Drop runs inside the test's runtime; a thread of its own may block on a new one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// node-oidc-provider, started for one test from `tests/oidc-provider/server.mjs`.
pub struct NodeProvider {
    pub issuer: String,
    child: Option<tokio::process::Child>,
}

impl NodeProvider {
    pub async fn start(config: Value) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "run `npm ci` in tests/oidc-provider first (scripts/test does)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("OIDC_CONFIG", config.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read provider output") {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    return issuer.trim().to_owned();
                }
            }
            panic!("the provider exited before it was ready");
        })
        .await
        .expect("the provider starts within 60 s");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        NodeProvider {
            issuer,
            child: Some(child),
        }
    }

    /// The login provider (`main`) with courier's client registered for the app on `port`.
    pub async fn for_courier(port: u16, extra: Value) -> Self {
        Self::for_courier_as(port, "main", extra).await
    }

    /// A provider that courier knows as `provider_id`, with courier's client registered for
    /// the app listening on `port`.
    pub async fn for_courier_as(port: u16, provider_id: &str, extra: Value) -> Self {
        let mut config = json!({
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback/{provider_id}")],
                "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/")],
                "grant_types": [
                    "authorization_code",
                    "refresh_token",
                    "client_credentials",
                    TOKEN_EXCHANGE,
                ],
                "response_types": ["code"],
            }]
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut config, extra) {
            base.extend(extra);
        }
        Self::start(config).await
    }
}

/// Settings a test may change in courier's configuration.
pub struct AppSettings {
    pub issuer: String,
    pub idle_timeout_secs: u64,
    pub absolute_timeout_secs: u64,
    pub scopes: Vec<&'static str>,
    /// `security.encryption_keys`; the first seals.
    pub encryption_keys: Vec<String>,
    /// Extra TOML appended to the configuration: `[[services]]` and `[[providers]]` tables.
    pub extra_toml: String,
    /// Extra keys of the `[server]` table.
    pub server_toml: String,
    /// Extra keys of the `[session]` table.
    pub session_toml: String,
    /// `database.max_connections`.
    pub max_connections: u32,
    /// Whether the `main` provider has courier's client secret (a `private_key_jwt` one has
    /// none).
    pub main_secret: bool,
}

impl AppSettings {
    pub fn new(issuer: &str) -> Self {
        AppSettings {
            issuer: issuer.to_owned(),
            idle_timeout_secs: 28_800,
            absolute_timeout_secs: 86_400,
            scopes: vec!["openid", "profile", "email", "offline_access"],
            encryption_keys: vec![courier::crypto::generate_key()],
            extra_toml: String::new(),
            server_toml: String::new(),
            session_toml: String::new(),
            max_connections: 5,
            main_secret: true,
        }
    }

    /// Adds a `[[services]]` table with `fields` (TOML lines).
    pub fn service(mut self, name: &str, base_url: &str, fields: &str) -> Self {
        self.extra_toml.push_str(&format!(
            "\n[[services]]\nname = \"{name}\"\nbase_url = \"{base_url}\"\n{fields}\n"
        ));
        self
    }
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub db: Arc<TestDb>,
    pub clock: Arc<OffsetClock>,
}

impl TestApp {
    /// Binds a port first, so a provider can register the callback URL before courier starts.
    pub fn bind() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").expect("bind a random port")
    }

    pub async fn spawn(listener: TcpListener, settings: AppSettings) -> TestApp {
        Self::spawn_on(Arc::new(TestDb::new().await), listener, settings).await
    }

    /// courier on a database made elsewhere (another Postgres server, say).
    pub async fn spawn_on_db(db: Arc<TestDb>, settings: AppSettings) -> TestApp {
        Self::spawn_on(db, Self::bind(), settings).await
    }

    /// Another courier instance on the same database as `self`.
    pub async fn spawn_sibling(&self, settings: AppSettings) -> TestApp {
        Self::spawn_on(self.db.clone(), Self::bind(), settings).await
    }

    async fn spawn_on(db: Arc<TestDb>, listener: TcpListener, settings: AppSettings) -> TestApp {
        // COURIER_TEST_LOG=debug shows courier's log lines for a failing test.
        if let Ok(filter) = std::env::var("COURIER_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let port = listener.local_addr().unwrap().port();
        let text = config_text(port, &db.url, &settings);
        let config = Config::parse(&text, "test.toml".as_ref(), &|_| None).expect("test config");
        let clock = Arc::new(OffsetClock::default());
        let app = Application::build_with_clock(config, listener, clock.clone())
            .await
            .expect("courier starts");
        tokio::spawn(app.run_until_stopped());
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            db,
            clock,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Whether `url` is courier's and outside `/auth/`: where a login ends.
    fn is_app_page(&self, url: &Url) -> bool {
        url.port() == Some(self.port) && !url.path().starts_with("/auth/")
    }

    /// Logs `user` in at a real provider through its pages, starting at `/auth/login`.
    /// Returns courier's answer to the callback.
    pub async fn login(&self, browser: &mut Browser, user: &str) -> Response {
        let form_url = self.start_login_at_provider(browser, "/after-login").await;
        self.finish_login_at_provider(browser, form_url, user).await
    }

    /// Goes from `/auth/login` to the provider's login form; returns the form's URL.
    pub async fn start_login_at_provider(&self, browser: &mut Browser, return_to: &str) -> Url {
        self.provider_form(browser, &format!("/auth/login?return_to={return_to}"))
            .await
    }

    /// Follows redirects from courier's `path` (a login or connect start) to the provider's
    /// login form; returns the form's URL.
    pub async fn provider_form(&self, browser: &mut Browser, path: &str) -> Url {
        let start = self.url(path);
        let (url, response) = browser.follow(&start, |_| false).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the provider shows a form"
        );
        assert!(url.path().starts_with("/interaction/"), "{url}");
        url
    }

    /// Submits the provider's login form and follows redirects back to courier's callback.
    pub async fn finish_login_at_provider(
        &self,
        browser: &mut Browser,
        form_url: Url,
        user: &str,
    ) -> Response {
        let post = form_url
            .join(&format!("{}/login", form_url.path()))
            .unwrap();
        let response = browser
            .send(
                Method::POST,
                post.as_str(),
                &[],
                Some(&[("login", user), ("password", "x")]),
            )
            .await;
        assert!(response.status().is_redirection(), "{}", response.status());
        let next = location(&post, &response);
        let (_, response) = browser.follow(next.as_str(), |u| self.is_app_page(u)).await;
        response
    }

    /// Starts a login and returns the provider's authorization URL, without following it.
    pub async fn authorize_url(&self, browser: &mut Browser, return_to: &str) -> Url {
        let response = browser
            .get(&self.url(&format!("/auth/login?return_to={return_to}")))
            .await;
        assert_eq!(response.status(), StatusCode::FOUND);
        Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap()
    }

    pub async fn api(&self, browser: &mut Browser, method: Method, path: &str) -> Response {
        browser
            .send(method, &self.url(path), &[("x-csrf", "1")], None)
            .await
    }

    /// `POST /auth/logout` with the CSRF header; asserts it succeeded.
    pub async fn logout(&self, browser: &mut Browser) {
        let response = browser
            .send(
                Method::POST,
                &self.url("/auth/logout"),
                &[("x-csrf", "1")],
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub async fn me(&self, browser: &mut Browser) -> Response {
        self.api(browser, Method::GET, "/api/me").await
    }

    /// Connects `service` for the logged-in user of `browser`, signing in at the service's
    /// provider as `user`. Returns courier's answer to the callback.
    pub async fn connect(&self, browser: &mut Browser, service: &str, user: &str) -> Response {
        let form = self
            .provider_form(
                browser,
                &format!("/auth/connect/{service}?return_to=/settings"),
            )
            .await;
        self.finish_login_at_provider(browser, form, user).await
    }
}

pub fn config_text(port: u16, database_url: &str, s: &AppSettings) -> String {
    let quoted = |items: &[&str]| -> String {
        let items: Vec<String> = items.iter().map(|x| format!("\"{x}\"")).collect();
        items.join(", ")
    };
    let keys: Vec<&str> = s.encryption_keys.iter().map(String::as_str).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
{server_extra}
[database]
url = "{database_url}"
max_connections = {max_connections}

[session]
idle_timeout_secs = {idle}
absolute_timeout_secs = {absolute}
{session_extra}

[security]
encryption_keys = [{keys}]

[[providers]]
id = "main"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
{secret}
scopes = [{scopes}]
login = true
{extra}
"#,
        idle = s.idle_timeout_secs,
        absolute = s.absolute_timeout_secs,
        keys = quoted(&keys),
        issuer = s.issuer,
        scopes = quoted(&s.scopes),
        extra = s.extra_toml,
        server_extra = s.server_toml,
        session_extra = s.session_toml,
        max_connections = s.max_connections,
        secret = if s.main_secret {
            format!("client_secret = \"{CLIENT_SECRET}\"")
        } else {
            String::new()
        },
    )
}

/// Where a redirect response points, resolved against the URL that was requested.
pub fn location(requested: &Url, response: &Response) -> Url {
    let value = response.headers()[LOCATION]
        .to_str()
        .expect("ASCII Location");
    requested.join(value).expect("a valid Location")
}

struct StoredCookie {
    origin: String,
    name: String,
    value: String,
    path: String,
}

/// A cookie-keeping HTTP client that behaves like a browser tab, except that it follows
/// redirects only when asked. It sends `Secure` cookies over http to 127.0.0.1, as browsers do.
pub struct Browser {
    client: reqwest::Client,
    cookies: Vec<StoredCookie>,
    /// Sent as `User-Agent` on every request (none by default).
    user_agent: Option<String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
            user_agent: None,
        }
    }

    /// A browser that sends `user_agent` as its `User-Agent` header.
    pub fn with_user_agent(user_agent: &str) -> Self {
        Browser {
            user_agent: Some(user_agent.to_owned()),
            ..Self::new()
        }
    }

    fn origin(url: &Url) -> String {
        format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )
    }

    /// The value of cookie `name` held for `url`'s origin.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let origin = Self::origin(&Url::parse(url).unwrap());
        self.cookies
            .iter()
            .find(|c| c.origin == origin && c.name == name)
            .map(|c| c.value.clone())
    }

    /// Names of the cookies held for `url`'s origin.
    pub fn cookie_names(&self, url: &str) -> Vec<String> {
        let origin = Self::origin(&Url::parse(url).unwrap());
        self.cookies
            .iter()
            .filter(|c| c.origin == origin)
            .map(|c| c.name.clone())
            .collect()
    }

    pub fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        let origin = Self::origin(&Url::parse(url).unwrap());
        self.cookies
            .retain(|c| !(c.origin == origin && c.name == name && c.path == "/"));
        self.cookies.push(StoredCookie {
            origin,
            name: name.to_owned(),
            value: value.to_owned(),
            path: "/".to_owned(),
        });
    }

    fn cookie_header(&self, url: &Url) -> Option<String> {
        let origin = Self::origin(url);
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .filter(|c| c.origin == origin && url.path().starts_with(&c.path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    fn store(&mut self, url: &Url, response: &Response) {
        let origin = Self::origin(url);
        for header in response.headers().get_all(SET_COOKIE) {
            let cookie = Cookie::parse(header.to_str().unwrap().to_owned()).unwrap();
            let path = cookie.path().unwrap_or("/").to_owned();
            let name = cookie.name().to_owned();
            self.cookies
                .retain(|c| !(c.origin == origin && c.name == name && c.path == path));
            let removed = cookie
                .max_age()
                .is_some_and(|a| a.is_zero() || a.is_negative())
                || cookie.value().is_empty();
            if !removed {
                self.cookies.push(StoredCookie {
                    origin: origin.clone(),
                    name,
                    value: cookie.value().to_owned(),
                    path,
                });
            }
        }
    }

    pub async fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Response {
        let parsed = Url::parse(url).unwrap();
        let mut request = self.client.request(method, parsed.clone());
        if let Some(cookies) = self.cookie_header(&parsed) {
            request = request.header(COOKIE, cookies);
        }
        if let Some(user_agent) = &self.user_agent {
            request = request.header(reqwest::header::USER_AGENT, user_agent);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        let response = request.send().await.expect("request sent");
        self.store(&parsed, &response);
        response
    }

    pub async fn get(&mut self, url: &str) -> Response {
        self.send(Method::GET, url, &[], None).await
    }

    /// GETs `start` and follows redirects until a response is not a redirect, or the next URL
    /// satisfies `stop`. Returns the last URL requested and its response.
    pub async fn follow(&mut self, start: &str, stop: impl Fn(&Url) -> bool) -> (Url, Response) {
        let mut url = Url::parse(start).unwrap();
        for _ in 0..20 {
            let response = self.get(url.as_str()).await;
            if !response.status().is_redirection() {
                return (url, response);
            }
            let next = location(&url, &response);
            if stop(&next) {
                return (url, response);
            }
            url = next;
        }
        panic!("more than 20 redirects from {start}");
    }
}

/// The demo API (dev/demo-api) on a random port; with `issuer`, it checks bearer tokens at that
/// provider's introspection endpoint with courier's client credentials. Returns its base URL.
pub fn spawn_demo_api(issuer: Option<&str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = demo_api::DemoConfig {
        introspection: issuer.map(|issuer| demo_api::Introspection {
            endpoint: Url::parse(&format!("{issuer}/token/introspection")).unwrap(),
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
        }),
        ..Default::default()
    };
    tokio::spawn(demo_api::run(listener, config).unwrap());
    format!("http://127.0.0.1:{port}")
}

/// The demo API checking tokens at `issuer`'s introspection endpoint with `config`'s other
/// settings (an audience to require, say). Returns its base URL.
pub fn spawn_demo_api_with(issuer: &str, config: demo_api::DemoConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = demo_api::DemoConfig {
        introspection: Some(demo_api::Introspection {
            endpoint: Url::parse(&format!("{issuer}/token/introspection")).unwrap(),
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
        }),
        ..config
    };
    tokio::spawn(demo_api::run(listener, config).unwrap());
    format!("http://127.0.0.1:{port}")
}

/// Sends `request` (a whole HTTP/1.1 request head, as text) over a raw connection, so that
/// paths reach courier exactly as written. Returns the status code.
pub async fn raw_request(port: u16, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

impl NodeProvider {
    /// Stops the provider: its port refuses connections from now on.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill the provider");
        }
    }

    /// How many token requests of each grant type succeeded at the provider.
    pub async fn grants(&self, grant_type: &str) -> u64 {
        let counts: Value = reqwest::get(format!("{}/__test/grants", self.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        counts[grant_type].as_u64().unwrap_or(0)
    }

    /// Makes every later token request wait `ms` milliseconds.
    pub async fn set_token_delay(&self, ms: u64) {
        reqwest::Client::new()
            .post(format!("{}/__test/token-delay?ms={ms}", self.issuer))
            .send()
            .await
            .unwrap();
    }

    /// Whether the provider still considers `token` active (RFC 7662 introspection).
    pub async fn is_active(&self, token: &secrecy::SecretString) -> bool {
        use secrecy::ExposeSecret;
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token.expose_secret())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["active"] == true
    }

    /// Revokes `token` at the provider (RFC 7009) as courier's client.
    pub async fn revoke(&self, token: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "revocation: {}",
            response.status()
        );
    }
}

/// The real `courier` binary, serving `settings` on `port` over `db`: for what only a process
/// can show (signals, crashes, span export). Killed when dropped.
pub struct CourierProcess {
    pub child: tokio::process::Child,
    pub app: TestApp,
    _dir: tempfile::TempDir,
}

impl CourierProcess {
    /// A port for a process to bind (free when this returns).
    pub fn free_port() -> u16 {
        TestApp::bind().local_addr().unwrap().port()
    }

    /// Starts the binary and waits until `/healthz` answers.
    pub async fn start(
        db: Arc<TestDb>,
        port: u16,
        settings: &AppSettings,
        env: &[(&str, &str)],
    ) -> CourierProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("courier.toml");
        std::fs::write(&config, config_text(port, &db.url, settings)).unwrap();
        let log = std::env::var("COURIER_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", log)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let app = TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            db,
            clock: Default::default(),
        };
        let started = std::time::Instant::now();
        while reqwest::get(app.url("/healthz")).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "courier starts"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        CourierProcess {
            child,
            app,
            _dir: dir,
        }
    }

    /// Kills the process and waits until it is gone, so that its port is free again.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends `signal` (a `kill` name: TERM, KILL) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        assert!(
            std::process::Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

/// courier's log lines (INFO and above) from `install` on, for tests of what an operator reads.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Installs a subscriber writing here. nextest runs each test in a process of its own, so
    /// the capture holds this test's lines only.
    pub fn install() -> Self {
        let captured = CapturedLog::default();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(captured.clone())
            .with_ansi(false)
            .try_init();
        captured
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
