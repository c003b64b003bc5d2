//! Hostile requests: oversized and malformed heads, ambiguous targets and hosts, method
//! overrides, oversized bodies, floods of logins. Each gets a clear 4xx and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, TestApp, raw_request, spawn_demo_api};

const TABLES: &[&str] = &[
    "users",
    "identities",
    "sessions",
    "session_tokens",
    "linked_accounts",
    "used_login_states",
    "used_logout_tokens",
];

async fn snapshot(app: &TestApp) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in TABLES {
        counts.push(app.db.count(table).await);
    }
    counts
}

async fn world() -> (TestApp, FakeProvider, Browser) {
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let mut settings = AppSettings::new(&fake.issuer).service(
        "echo",
        &format!("{demo}/"),
        "provider = \"main\"\nallowed_methods = [\"GET\", \"POST\", \"PUT\"]",
    );
    settings
        .extra_toml
        .push_str("\n[rate_limit]\nrequests_per_minute = 60\nburst = 100\n");
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    (app, fake, browser)
}

fn cookie(app: &TestApp, browser: &Browser) -> String {
    format!(
        "__Host-courier={}",
        browser.cookie(&app.address, "__Host-courier").unwrap()
    )
}

#[tokio::test]
async fn hostile_request_heads_get_a_clear_4xx_and_change_nothing() {
    let (app, _fake, browser) = world().await;
    let session = cookie(&app, &browser);
    let before = snapshot(&app).await;
    let big = "x".repeat(20 * 1024);
    let thousand_cookies: Vec<String> = (0..1000).map(|i| format!("c{i}=v")).collect();
    let thousand_cookies = thousand_cookies.join("; ");
    let head = |line: &str, extra: &str| {
        format!(
            "{line}\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: {session}\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    let valid = browser.cookie(&app.address, "__Host-courier").unwrap();
    let truncated = &valid[..valid.len() / 2];
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "a truncated session cookie",
            format!("GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: __Host-courier={truncated}\r\nConnection: close\r\n\r\n"),
            401,
        ),
        (
            "a malformed cookie header",
            "GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: ;;==;__Host-courier\r\nConnection: close\r\n\r\n".to_owned(),
            401,
        ),
        (
            "an oversized header",
            head("GET /api/me HTTP/1.1", &format!("X-Big: {big}\r\n")),
            431,
        ),
        (
            "an oversized cookie",
            head("GET /api/me HTTP/1.1", &format!("Cookie: junk={big}\r\n")),
            431,
        ),
        (
            "a thousand cookies",
            head(
                "GET /api/me HTTP/1.1",
                &format!("Cookie: {thousand_cookies}\r\n"),
            ),
            431,
        ),
        (
            "CR in a header",
            head("GET /api/me HTTP/1.1", "X-Evil: a\rb\r\n"),
            400,
        ),
        (
            "NUL in a header",
            head("GET /api/me HTTP/1.1", "X-Evil: a\0b\r\n"),
            400,
        ),
        (
            "a line feed in a path",
            head("GET /api/me\n/x HTTP/1.1", ""),
            400,
        ),
        ("NUL in a path", head("GET /api/me\0 HTTP/1.1", ""), 400),
        ("a space in a path", head("GET /api/m e HTTP/1.1", ""), 400),
        (
            "a path that is not UTF-8",
            head("GET /api/services/echo/%ff%fe HTTP/1.1", ""),
            400,
        ),
        (
            "an absolute-form target",
            head("GET http://evil.example/api/me HTTP/1.1", ""),
            400,
        ),
        (
            "an authority-form target",
            head("CONNECT evil.example:443 HTTP/1.1", ""),
            400,
        ),
        (
            "two Host headers",
            head("GET /api/me HTTP/1.1", "Host: evil.example\r\n"),
            400,
        ),
        (
            "a method override",
            head(
                "GET /api/services/echo/x HTTP/1.1",
                "X-HTTP-Method-Override: DELETE\r\n",
            ),
            400,
        ),
        (
            "a declared body over the limit",
            head(
                "POST /api/services/echo/x HTTP/1.1",
                "Content-Length: 20000000\r\n",
            ),
            413,
        ),
    ];
    for (case, request, expected) in cases {
        let status = raw_request(app.port, &request).await;
        assert_eq!(status, expected, "{case}");
    }
    // The guard's refusals carry the security headers too.
    let refused = reqwest::Client::new()
        .get(app.url("/api/me"))
        .header("x-http-method-override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()["x-content-type-options"], "nosniff");
    assert_eq!(refused.headers()["cache-control"], "no-store");
    assert_eq!(
        snapshot(&app).await,
        before,
        "nothing changed in the database"
    );

    // The session is still fine.
    let mut browser = browser;
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused() {
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let mut settings = AppSettings::new(&fake.issuer).service(
        "echo",
        &format!("{demo}/"),
        "provider = \"main\"\nretry_buffer_bytes = 1024",
    );
    settings.server_toml = "max_body_bytes = 65536\n".into();
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;

    let chunks = futures_util::stream::iter(
        (0..32).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 8192]))),
    );
    let response = reqwest::Client::new()
        .post(app.url("/api/services/echo/upload"))
        .header("x-csrf", "1")
        .header("cookie", cookie(&app, &browser))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");

    // Under the limit it goes through.
    let response = reqwest::Client::new()
        .post(app.url("/api/services/echo/upload"))
        .header("x-csrf", "1")
        .header("cookie", cookie(&app, &browser))
        .body(vec![b'y'; 60_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn security_headers_are_on_every_reply_and_there_is_no_banner() {
    let (app, _fake, mut browser) = world().await;
    for (method, path) in [
        (Method::GET, "/auth/login"),
        (Method::GET, "/api/me"),
        (Method::GET, "/api/services/echo/x"),
        (Method::GET, "/healthz"),
        (Method::GET, "/nope"),
    ] {
        let response = browser
            .send(method, &app.url(path), &[("x-csrf", "1")], None)
            .await;
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(headers.contains_key("referrer-policy"), "{path}");
        assert!(!headers.contains_key("server"), "{path}: no version banner");
        if path.starts_with("/auth") {
            assert_eq!(headers["content-security-policy"], "frame-ancestors 'none'");
            assert_eq!(headers["x-frame-options"], "DENY");
        }
    }
}

#[tokio::test]
async fn logins_are_rate_limited_per_client_address() {
    let fake = FakeProvider::start().await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.extra_toml.push_str(
        "\n[rate_limit]\nrequests_per_minute = 1\nburst = 3\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let login = |forwarded: &'static str| {
        let url = app.url("/auth/login");
        async move {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
                .get(url)
                .header("x-forwarded-for", forwarded)
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        assert_eq!(login("203.0.113.7").await.status(), StatusCode::FOUND);
    }
    let limited = login("203.0.113.7").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Another client behind the same trusted proxy has its own allowance; a spoofed chain
    // counts from the right-most untrusted address.
    assert_eq!(login("198.51.100.1").await.status(), StatusCode::FOUND);
    assert_eq!(
        login("198.51.100.9, 203.0.113.7").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Other endpoints are not limited.
    assert_eq!(
        reqwest::get(app.url("/healthz")).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_untrusted_peers() {
    let fake = FakeProvider::start().await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings
        .extra_toml
        .push_str("\n[rate_limit]\nrequests_per_minute = 1\nburst = 2\n");
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let response = client
            .get(app.url("/auth/login"))
            .header("x-forwarded-for", format!("192.0.2.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, vec![302, 302, 429], "all from the one real peer");
}
