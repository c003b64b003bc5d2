//! Refresh as real providers make it happen: every kind of token-endpoint answer, short-lived
//! tokens, a slow provider with a small pool, and a service that keeps refusing.

use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp, spawn_demo_api};

/// What a token-endpoint answer must do to the session.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Meaning {
    /// The grant is dead: the session ends.
    Dead,
    /// courier's misconfiguration or a provider outage: 503, everything kept, a pause.
    Kept,
}

struct FakeWorld {
    app: TestApp,
    fake: FakeProvider,
    browser: Browser,
}

/// courier logged in through the fake provider, with the demo API (no token check) as
/// `orders`, and a token endpoint that answers refresh grants with `status` and `body`.
async fn fake_world(status: u16, body: &str) -> FakeWorld {
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let settings = AppSettings::new(&fake.issuer)
        .service("orders", &format!("{demo}/"), "provider = \"main\"")
        .service(
            "reports",
            &format!("{demo}/"),
            "provider = \"main\"\ntoken = \"client\"\nscopes = [\"api:read\"]",
        );
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    let response = login_with_fake(&app, &fake, &mut browser, "/").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    for grant in ["refresh_token", "client_credentials"] {
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains(format!("grant_type={grant}")))
            .respond_with(ResponseTemplate::new(status).set_body_string(body))
            .with_priority(1)
            .mount(&fake.server)
            .await;
    }
    FakeWorld { app, fake, browser }
}

impl FakeWorld {
    async fn grants(&self, grant: &str) -> usize {
        let needle = format!("grant_type={grant}");
        self.fake
            .server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| {
                r.url.path() == "/token" && String::from_utf8_lossy(&r.body).contains(&needle)
            })
            .count()
    }

    async fn call(&mut self, service: &str) -> reqwest::Response {
        self.browser
            .send(
                Method::GET,
                &self.app.url(&format!("/api/services/{service}/x")),
                &[("x-csrf", "1")],
                None,
            )
            .await
    }
}

async fn problem(response: reqwest::Response) -> (StatusCode, String, Option<String>) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["code"].as_str().unwrap_or_default().to_owned(),
        retry_after,
    )
}

/// Expires the session's token (by courier's clock), calls, and checks what the answer meant.
async fn refresh_answered(status: u16, body: &str, meaning: Meaning) {
    let mut w = fake_world(status, body).await;
    let before: Vec<u8> = sqlx::query_scalar("SELECT refresh_token FROM session_tokens")
        .fetch_one(&w.app.db.pool)
        .await
        .unwrap();
    w.app.clock.advance(Duration::seconds(3600));
    let first = problem(w.call("orders").await).await;
    match meaning {
        Meaning::Dead => {
            assert_eq!(
                (first.0, first.1.as_str()),
                (StatusCode::UNAUTHORIZED, "reauth_required"),
                "{status} {body:?}"
            );
            assert_eq!(w.app.db.count("sessions").await, 0);
            let me = w.app.me(&mut w.browser).await;
            assert_eq!(problem(me).await.1, "login_required");
            let again = problem(w.call("orders").await).await;
            assert_eq!(
                (again.0, again.1.as_str()),
                (StatusCode::UNAUTHORIZED, "login_required")
            );
        }
        Meaning::Kept => {
            assert_eq!(
                (first.0, first.1.as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"),
                "{status} {body:?}"
            );
            let retry_after: u64 = first.2.expect("Retry-After").parse().unwrap();
            assert!((1..=60).contains(&retry_after));
            let after: Vec<u8> = sqlx::query_scalar("SELECT refresh_token FROM session_tokens")
                .fetch_one(&w.app.db.pool)
                .await
                .unwrap();
            assert_eq!(before, after, "the tokens are kept");
            assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
            // The pause: the next calls send no grant.
            for _ in 0..3 {
                assert_eq!(
                    w.call("orders").await.status(),
                    StatusCode::SERVICE_UNAVAILABLE
                );
            }
        }
    }
    assert_eq!(
        w.grants("refresh_token").await,
        1,
        "one grant, never one per request"
    );
}

#[tokio::test]
async fn a_refresh_refused_with_a_bare_400_ends_the_session() {
    refresh_answered(400, "", Meaning::Dead).await;
}

#[tokio::test]
async fn a_refresh_refused_with_an_html_400_ends_the_session() {
    refresh_answered(400, "<html><body>Bad Request</body></html>", Meaning::Dead).await;
}

#[tokio::test]
async fn githubs_bad_refresh_token_sent_with_200_ends_the_session() {
    refresh_answered(
        200,
        r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired."}"#,
        Meaning::Dead,
    )
    .await;
}

#[tokio::test]
async fn invalid_grant_with_a_401_ends_the_session() {
    refresh_answered(401, r#"{"error":"invalid_grant"}"#, Meaning::Dead).await;
}

#[tokio::test]
async fn invalid_client_keeps_the_session_and_answers_503() {
    refresh_answered(401, r#"{"error":"invalid_client"}"#, Meaning::Kept).await;
}

#[tokio::test]
async fn invalid_request_keeps_the_session_and_answers_503() {
    refresh_answered(400, r#"{"error":"invalid_request"}"#, Meaning::Kept).await;
}

#[tokio::test]
async fn a_bare_403_keeps_the_session_and_answers_503() {
    refresh_answered(403, "", Meaning::Kept).await;
}

#[tokio::test]
async fn a_provider_failing_with_5xx_keeps_the_session_and_pauses_grants() {
    refresh_answered(502, "<html>Bad Gateway</html>", Meaning::Kept).await;
}

#[tokio::test]
async fn misconfiguration_is_logged_as_an_error_naming_the_provider_and_counted() {
    let mut w = fake_world(401, r#"{"error":"invalid_client"}"#).await;
    w.app.clock.advance(Duration::seconds(3600));
    assert_eq!(
        w.call("orders").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let metrics = reqwest::get(w.app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("courier_token_refreshes_total")
                && l.contains("provider=\"main\"")
                && l.contains("outcome=\"misconfigured\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_pause_ends_and_a_working_provider_refreshes_again() {
    let mut w = fake_world(503, "").await;
    w.app.clock.advance(Duration::seconds(3600));
    assert_eq!(
        w.call("orders").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The provider recovers; after the first pause (5 s) the next call refreshes.
    w.fake.server.reset().await;
    let id_token = w.fake.sign("signing", &w.fake.claims("unused"));
    w.fake.answer_token_with(&id_token).await;
    tokio::time::sleep(StdDuration::from_millis(5200)).await;
    assert_eq!(w.call("orders").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_refused_client_credentials_grant_answers_503_and_pauses() {
    let mut w = fake_world(401, r#"{"error":"invalid_client"}"#).await;
    for _ in 0..3 {
        let (status, code, retry_after) = problem(w.call("reports").await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable")
        );
        assert!(retry_after.is_some());
    }
    assert_eq!(w.grants("client_credentials").await, 1);
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
}

/// node-oidc-provider issuing access tokens that live `ttl` seconds, courier logged in as
/// alice, and the demo API (checking tokens at the provider) as `orders`.
async fn node_world(ttl: u64, max_connections: u32) -> (TestApp, NodeProvider, Browser, String) {
    let listener = TestApp::bind();
    let provider = NodeProvider::for_courier(
        listener.local_addr().unwrap().port(),
        json!({ "access_token_ttl": ttl }),
    )
    .await;
    let demo = spawn_demo_api(Some(&provider.issuer));
    let mut settings = AppSettings::new(&provider.issuer).service(
        "orders",
        &format!("{demo}/"),
        "provider = \"main\"",
    );
    settings.max_connections = max_connections;
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    (app, provider, browser, demo)
}

fn cookie_of(app: &TestApp, browser: &Browser) -> String {
    format!(
        "__Host-courier={}",
        browser.cookie(&app.address, "__Host-courier").unwrap()
    )
}

#[tokio::test]
async fn short_lived_tokens_cost_no_refresh_while_fresh_and_one_grant_when_due() {
    let (app, provider, browser, _) = node_world(20, 5).await;
    let cookie = cookie_of(&app, &browser);
    let client = reqwest::Client::new();
    let call = || {
        client
            .get(app.url("/api/services/orders/x"))
            .header("x-csrf", "1")
            .header("cookie", cookie.clone())
            .send()
    };
    for _ in 0..5 {
        assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        provider.grants("refresh_token").await,
        0,
        "a fresh 20 s token is not due"
    );

    // 4 s before it expires, the token is due (a quarter of 20 s is 5 s): eight calls at once
    // cost one grant, and every call uses its token.
    app.clock.advance(Duration::seconds(16));
    let responses = futures_util::future::join_all((0..8).map(|_| call())).await;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["token"]["sub"], "alice");
    }
    assert_eq!(provider.grants("refresh_token").await, 1);

    // Past its expiry, the same again.
    app.clock.advance(Duration::seconds(25));
    let responses = futures_util::future::join_all((0..8).map(|_| call())).await;
    for response in responses {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(provider.grants("refresh_token").await, 2);
}

#[tokio::test]
async fn refreshes_stuck_at_a_slow_provider_do_not_hold_up_other_users() {
    let (app, provider, _, _) = node_world(3600, 4).await;
    let mut browsers = Vec::new();
    for i in 0..6 {
        let mut browser = Browser::new();
        app.login(&mut browser, &format!("user{i}")).await;
        browsers.push(browser);
    }
    let mut other = Browser::new();
    app.login(&mut other, "bob").await;
    let bob = cookie_of(&app, &other);

    // Six sessions' tokens are due at once, and the provider takes 6 s to answer each.
    sqlx::query("UPDATE session_tokens SET expires_at = now() + interval '1 second'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    app.clock.advance(Duration::seconds(10));
    provider.set_token_delay(6000).await;
    let client = reqwest::Client::new();
    let stuck: Vec<_> = browsers
        .iter()
        .map(|b| {
            tokio::spawn(
                client
                    .get(app.url("/api/services/orders/x"))
                    .header("x-csrf", "1")
                    .header("cookie", cookie_of(&app, b))
                    .send(),
            )
        })
        .collect();
    tokio::time::sleep(StdDuration::from_millis(500)).await;

    // Bob needs no refresh: his requests, which read Postgres, are not held up by theirs.
    let started = Instant::now();
    for path in ["/api/me", "/api/services"] {
        let response = client
            .get(app.url(path))
            .header("x-csrf", "1")
            .header("cookie", bob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let waited = started.elapsed();
    assert!(
        waited < StdDuration::from_secs(3),
        "bob waited {waited:?} behind refreshes at a slow provider"
    );
    for call in stuck {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Bob's token was due too, but he never called a service.
    assert_eq!(provider.grants("refresh_token").await, 6);
}

#[tokio::test]
async fn a_service_that_keeps_answering_401_costs_one_refresh() {
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let refusing = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_string("no"))
        .mount(&refusing)
        .await;
    let settings = AppSettings::new(&provider.issuer).service(
        "refusing",
        &format!("{}/", refusing.uri()),
        "provider = \"main\"",
    );
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    for _ in 0..4 {
        let response = browser
            .send(
                Method::GET,
                &app.url("/api/services/refusing/x"),
                &[("x-csrf", "1")],
                None,
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "passed through"
        );
    }
    assert_eq!(provider.grants("refresh_token").await, 1);
    // The first call was sent twice (once more after the refresh), the others once.
    assert_eq!(refusing.received_requests().await.unwrap().len(), 5);
}
