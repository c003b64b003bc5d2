//! `/api/services` and the proxy, against a real provider and a real service that checks
//! tokens by introspection.

use chrono::Duration;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp, raw_request, spawn_demo_api};

struct World {
    app: TestApp,
    provider: NodeProvider,
    browser: Browser,
    keys: Vec<String>,
}

fn closed_port() -> u16 {
    TestApp::bind().local_addr().unwrap().port()
}

/// courier with a logged-in alice, a provider, and the demo API behind several services.
async fn world() -> World {
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let demo = spawn_demo_api(Some(&provider.issuer));
    let settings = AppSettings::new(&provider.issuer)
        .service("orders", &format!("{demo}/"), "provider = \"main\"")
        .service(
            "reports",
            &format!("{demo}/reports/"),
            "provider = \"main\"\ntoken = \"client\"\nscopes = [\"api:read\"]",
        )
        .service("public", &format!("{demo}/"), "token = \"none\"")
        .service(
            "limited",
            &format!("{demo}/"),
            "provider = \"main\"\nallowed_methods = [\"GET\"]\nallowed_paths = [\"/v1/**\", \"/_demo/slow\"]\ntimeout_secs = 1",
        )
        .service(
            "down",
            &format!("http://127.0.0.1:{}/", closed_port()),
            "provider = \"main\"",
        )
        .service("github", "https://api.github.example/", "provider = \"github\"\nscopes = [\"read:user\"]");
    let mut settings = settings;
    settings.extra_toml.push_str(
        "\n[[providers]]\nid = \"github\"\nauthorization_endpoint = \"http://127.0.0.1:9/authorize\"\ntoken_endpoint = \"http://127.0.0.1:9/token\"\nclient_id = \"gh\"\nclient_secret = \"x\"\n",
    );
    let keys = settings.encryption_keys.clone();
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    World {
        app,
        provider,
        browser,
        keys,
    }
}

impl World {
    async fn call(&mut self, method: Method, path: &str) -> reqwest::Response {
        self.app.api(&mut self.browser, method, path).await
    }

    async fn echo(&mut self, path: &str) -> Value {
        let response = self.call(Method::GET, path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    async fn stored_tokens(&self) -> courier::db::session_tokens::SessionTokens {
        let keys: Vec<secrecy::SecretString> = self.keys.iter().map(|k| k.clone().into()).collect();
        let ring = courier::crypto::KeyRing::from_config(&keys).unwrap();
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
            .fetch_one(&self.app.db.pool)
            .await
            .unwrap();
        courier::db::session_tokens::get(&self.app.db.pool, &ring, id)
            .await
            .unwrap()
            .unwrap()
    }
}

async fn problem_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    (status, body["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn services_lists_what_the_spa_can_call() {
    let mut w = world().await;
    let response = w.call(Method::GET, "/api/services").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let find = |name: &str| {
        body["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    let orders = find("orders");
    assert_eq!(orders["provider"], "main");
    assert_eq!(orders["linked"], false);
    assert_eq!(orders["connected"], true);
    assert_eq!(orders["status"], "connected");
    assert!(orders.get("connect_url").is_none());
    let github = find("github");
    assert_eq!(github["linked"], true);
    assert_eq!(github["connected"], false);
    assert_eq!(github["status"], "not_connected");
    assert_eq!(github["scopes"], json!(["read:user"]));
    assert_eq!(github["connect_url"], "/auth/connect/github");
    assert_eq!(find("public")["provider"], Value::Null);

    let mut anonymous = Browser::new();
    let response = w
        .app
        .api(&mut anonymous, Method::GET, "/api/services")
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_call_carries_the_users_token_and_only_the_right_headers() {
    let mut w = world().await;
    let response = w
        .app
        .api(
            &mut w.browser,
            Method::GET,
            "/api/services/orders/v1/items?page=2&q=a%20b",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(
        response.headers()["x-demo"],
        "echo",
        "service headers come back"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(request_id.len(), 32, "a new request id");
    let echo: Value = response.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-request-id"],
        request_id.as_str(),
        "passed on"
    );
    assert_eq!(echo["path"], "/v1/items");
    assert_eq!(echo["query"], "page=2&q=a%20b");
    assert_eq!(echo["token"]["sub"], "alice");
    assert_eq!(echo["token"]["client_id"], "courier");
    let headers = &echo["headers"];
    assert_eq!(headers["authorization"], "Bearer <redacted>");
    for dropped in ["cookie", "x-csrf", "connection", "keep-alive"] {
        assert!(headers.get(dropped).is_none(), "{dropped} was forwarded");
    }
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["x-forwarded-host"],
        format!("127.0.0.1:{}", w.app.port)
    );
    let traceparent = headers["traceparent"].as_str().unwrap();
    assert!(regex_like_traceparent(traceparent), "{traceparent}");

    // The browser's own Authorization and forwarding headers are not passed on.
    let response = w
        .browser
        .send(
            Method::GET,
            &w.app.url("/api/services/orders/x"),
            &[
                ("x-csrf", "1"),
                ("authorization", "Bearer forged"),
                ("x-forwarded-for", "6.6.6.6"),
                ("connection", "x-secret"),
                ("x-secret", "1"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("x-request-id", "spa-req-42"),
            ],
            None,
        )
        .await;
    assert_eq!(
        response.headers()["x-request-id"],
        "spa-req-42",
        "a plain id is kept"
    );
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], "spa-req-42");
    assert_eq!(
        echo["token"]["sub"], "alice",
        "courier's token, not the browser's"
    );
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(
        echo["headers"].get("x-secret").is_none(),
        "listed in Connection"
    );
    let traceparent = echo["headers"]["traceparent"].as_str().unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(!traceparent.contains("00f067aa0ba902b7"), "a new span id");
}

fn regex_like_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn bodies_are_forwarded_both_ways_small_and_large() {
    let mut w = world().await;
    let small = "a=1&b=2";
    let response = w
        .browser
        .send(
            Method::POST,
            &w.app.url("/api/services/orders/v1/orders"),
            &[
                ("x-csrf", "1"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(&[("a", "1"), ("b", "2")]),
        )
        .await;
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], small);

    // Larger than the retry buffer: streamed through.
    let big = "x".repeat(300 * 1024);
    let response = reqwest::Client::new()
        .put(w.app.url("/api/services/orders/upload"))
        .header("x-csrf", "1")
        .header(
            "cookie",
            format!(
                "__Host-courier={}",
                w.browser.cookie(&w.app.address, "__Host-courier").unwrap()
            ),
        )
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["body_len"], big.len());

    // A streamed answer arrives whole.
    let response = w
        .call(
            Method::GET,
            "/api/services/orders/_demo/stream?chunks=64&size=4096",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), 64 * 4096);
}

#[tokio::test]
async fn the_services_headers_that_act_on_courier_s_origin_are_dropped() {
    let mut w = world().await;
    let response = w
        .browser
        .send(
            Method::GET,
            &w.app.url("/api/services/orders/_demo/origin-headers"),
            &[("x-csrf", "1"), ("dpop", "a-proof-the-browser-made")],
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    for name in [
        "refresh",
        "clear-site-data",
        "strict-transport-security",
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "service-worker-allowed",
        "nel",
        "report-to",
        "alt-svc",
        "accept-ch",
    ] {
        assert!(headers.get(name).is_none(), "{name} reached the browser");
    }
    let challenges: Vec<&str> = headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        [r#"Bearer realm="demo", error="invalid_token""#],
        "no Basic challenge: it would open a password prompt on courier's origin"
    );
    assert_eq!(headers.get("x-demo").unwrap(), "echo", "others pass");
    let echo: Value = response.json().await.unwrap();
    assert!(
        echo["headers"].get("dpop").is_none(),
        "the browser's DPoP header never reaches a service: {}",
        echo["headers"]
    );
    assert!(
        echo["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer ")
    );
}

#[tokio::test]
async fn a_streamed_body_is_cut_off_when_its_session_ends() {
    let mut w = world().await;
    let cookie = w.browser.cookie(&w.app.address, "__Host-courier").unwrap();
    let mut feed = reqwest::Client::new()
        .get(
            w.app
                .url("/api/services/orders/_demo/ndjson?interval_ms=100"),
        )
        .header("x-csrf", "1")
        .header("cookie", format!("__Host-courier={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    // Past the second after which a body is bound to its session.
    let mut lines = 0;
    while lines < 15 {
        let chunk = feed.chunk().await.unwrap().expect("the feed flows");
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let response = w.call(Method::POST, "/auth/logout").await;
    assert_eq!(response.status(), StatusCode::OK);
    let outcome = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), feed.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
            Err(_) => panic!("the feed still flows 5 s after the logout"),
        }
    };
    assert!(
        outcome.is_err(),
        "cut off, not ended cleanly: the browser must not take it for complete"
    );
}

#[tokio::test]
async fn the_services_cookies_and_redirects_do_not_reach_the_browser() {
    let mut w = world().await;
    let response = w
        .call(Method::GET, "/api/services/orders/_demo/cookie")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("set-cookie").is_none());

    let response = w
        .call(Method::GET, "/api/services/orders/_demo/redirect")
        .await;
    assert!(!response.status().is_redirection(), "/api never redirects");
    assert!(response.headers().get("location").is_none());
    let (status, code) = problem_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_GATEWAY, "upstream_unavailable")
    );
}

#[tokio::test]
async fn a_services_own_errors_pass_through() {
    let mut w = world().await;
    let response = w
        .call(Method::GET, "/api/services/orders/_demo/status/418")
        .await;
    assert_eq!(response.status().as_u16(), 418);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 418);
}

#[tokio::test]
async fn allowlists_unknown_services_and_faults_get_clear_problems() {
    let mut w = world().await;
    let cases = [
        (
            Method::POST,
            "/api/services/limited/v1/x",
            StatusCode::FORBIDDEN,
            "not_allowed",
        ),
        (
            Method::GET,
            "/api/services/limited/v2/x",
            StatusCode::FORBIDDEN,
            "not_allowed",
        ),
        (
            Method::TRACE,
            "/api/services/orders/x",
            StatusCode::FORBIDDEN,
            "not_allowed",
        ),
        (
            Method::GET,
            "/api/services/nope/x",
            StatusCode::NOT_FOUND,
            "service_not_found",
        ),
        (
            Method::GET,
            "/api/services/github/user",
            StatusCode::FORBIDDEN,
            "connect_required",
        ),
        (
            Method::GET,
            "/api/services/down/x",
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
        ),
        (
            Method::GET,
            "/api/services/limited/_demo/slow?ms=3000",
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
        ),
    ];
    for (method, path, status, code) in cases {
        let response = w.call(method.clone(), path).await;
        assert_eq!(
            problem_code(response).await,
            (status, code.to_owned()),
            "{method} {path}"
        );
    }
    assert_eq!(w.echo("/api/services/limited/v1/x").await["path"], "/v1/x");
}

#[tokio::test]
async fn hostile_paths_never_leave_base_url() {
    let w = world().await;
    let cookie = format!(
        "__Host-courier={}",
        w.browser.cookie(&w.app.address, "__Host-courier").unwrap()
    );
    // `reports` lives under /reports/ on the demo API: none of these may reach anything else.
    for path in [
        "../secret",
        "..%2fsecret",
        "%2e%2e/secret",
        "%2E%2E%2Fsecret",
        ".%2e/secret",
        "v1/../../secret",
        "%252e%252e/secret",
        "..%5csecret",
        "..\\secret",
        "//evil.example/x",
        "http://evil.example/x",
        "@evil.example/x",
        "a@evil.example",
        "v1/%00/x",
    ] {
        let request = format!(
            "GET /api/services/reports/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        );
        let status = raw_request(w.app.port, &request).await;
        assert_eq!(status, 400, "{path}");
    }
    // Absolute-form request target: the path is what counts.
    let request = format!(
        "GET http://evil.example/api/services/reports/../x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_request(w.app.port, &request).await, 400);
}

#[tokio::test]
async fn client_and_no_token_modes() {
    let mut w = world().await;
    let echo = w.echo("/api/services/reports/daily").await;
    assert_eq!(echo["path"], "/reports/daily");
    assert_eq!(echo["token"]["client_id"], "courier");
    assert_eq!(echo["token"]["sub"], Value::Null, "courier's own token");
    w.echo("/api/services/reports/weekly").await;
    assert_eq!(w.provider.grants("client_credentials").await, 1, "cached");

    let response = w
        .call(Method::GET, "/api/services/public/_demo/status/200")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_first() {
    let mut w = world().await;
    let before = w.stored_tokens().await;
    w.app.clock.advance(Duration::seconds(3600 - 30));
    let echo = w.echo("/api/services/orders/x").await;
    assert_eq!(echo["token"]["sub"], "alice");
    assert_eq!(w.provider.grants("refresh_token").await, 1);
    let after = w.stored_tokens().await;
    assert_ne!(
        before.tokens.refresh_token.unwrap().expose_secret(),
        after.tokens.refresh_token.unwrap().expose_secret(),
        "the rotated refresh token was stored"
    );
    w.echo("/api/services/orders/x").await;
    assert_eq!(w.provider.grants("refresh_token").await, 1);
}

#[tokio::test]
async fn fifty_concurrent_calls_on_two_instances_cost_one_refresh() {
    let w = world().await;
    let mut settings = AppSettings::new(&w.provider.issuer);
    settings.encryption_keys = w.keys.clone();
    let demo = spawn_demo_api(Some(&w.provider.issuer));
    let settings = settings.service("orders", &format!("{demo}/"), "provider = \"main\"");
    let second = w.app.spawn_sibling(settings).await;
    // A slow provider: the refresh is still running while the other calls arrive.
    w.provider.set_token_delay(500).await;
    w.app.clock.advance(Duration::seconds(3600));
    second.clock.advance(Duration::seconds(3600));

    let cookie = format!(
        "__Host-courier={}",
        w.browser.cookie(&w.app.address, "__Host-courier").unwrap()
    );
    let client = reqwest::Client::new();
    let calls = (0..50).map(|i| {
        let app = if i % 2 == 0 { &w.app } else { &second };
        client
            .get(app.url("/api/services/orders/x"))
            .header("x-csrf", "1")
            .header("cookie", cookie.clone())
            .send()
    });
    let responses = futures_util::future::join_all(calls).await;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["token"]["sub"], "alice");
    }
    assert_eq!(w.provider.grants("refresh_token").await, 1);
}

#[tokio::test]
async fn invalid_grant_ends_the_session() {
    let mut w = world().await;
    let stored = w.stored_tokens().await;
    w.provider
        .revoke(stored.tokens.refresh_token.unwrap().expose_secret())
        .await;
    w.app.clock.advance(Duration::seconds(3600));
    let response = w.call(Method::GET, "/api/services/orders/x").await;
    assert_eq!(
        problem_code(response).await,
        (StatusCode::UNAUTHORIZED, "reauth_required".to_owned())
    );
    assert_eq!(w.app.db.count("sessions").await, 0);
    assert_eq!(
        w.app.me(&mut w.browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_leaves_the_tokens_as_they_were() {
    let mut w = world().await;
    let before: Vec<u8> = sqlx::query_scalar("SELECT refresh_token FROM session_tokens")
        .fetch_one(&w.app.db.pool)
        .await
        .unwrap();
    w.provider.stop().await;
    w.app.clock.advance(Duration::seconds(3600));
    let response = w.call(Method::GET, "/api/services/orders/x").await;
    assert_eq!(
        problem_code(response).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable".to_owned()
        )
    );
    let after: Vec<u8> = sqlx::query_scalar("SELECT refresh_token FROM session_tokens")
        .fetch_one(&w.app.db.pool)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_401_from_the_service_refreshes_once_and_retries() {
    let mut w = world().await;
    // The stored access token is one the service does not accept (revoked or rotated early);
    // the refresh token is still good. (Revoking the access token at node-oidc-provider would
    // revoke the whole grant.)
    let keys: Vec<secrecy::SecretString> = w.keys.iter().map(|k| k.clone().into()).collect();
    let ring = courier::crypto::KeyRing::from_config(&keys).unwrap();
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_one(&w.app.db.pool)
        .await
        .unwrap();
    let bogus = ring.seal(
        b"not-a-live-token",
        format!("session_tokens.access_token:{id}").as_bytes(),
    );
    sqlx::query("UPDATE session_tokens SET access_token = $1")
        .bind(bogus)
        .execute(&w.app.db.pool)
        .await
        .unwrap();
    let response = w
        .browser
        .send(
            Method::POST,
            &w.app.url("/api/services/orders/v1/orders"),
            &[("x-csrf", "1")],
            Some(&[("item", "book")]),
        )
        .await;
    let status = response.status();
    assert_eq!(status, StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["body"], "item=book", "the body was sent again");
    assert_eq!(w.provider.grants("refresh_token").await, 1);
}
