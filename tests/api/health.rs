//! Liveness and readiness.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fake_provider::spawn_app_with_fake;
use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp, location};

#[tokio::test]
async fn healthz_and_readyz_answer_when_everything_is_up() {
    let (app, _fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    assert_eq!(
        browser.get(&app.url("/healthz")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        browser.get(&app.url("/readyz")).await.status(),
        StatusCode::OK
    );
    let spec = browser.get(&app.url("/openapi.yaml")).await;
    assert_eq!(spec.status(), StatusCode::OK);
    assert!(spec.text().await.unwrap().starts_with("openapi: 3.1"));
}

#[tokio::test]
async fn readyz_names_a_provider_that_cannot_be_discovered() {
    // A port nothing listens on.
    let closed = TestApp::bind();
    let issuer = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&issuer)).await;
    let mut browser = Browser::new();
    assert_eq!(
        browser.get(&app.url("/healthz")).await.status(),
        StatusCode::OK
    );
    let response = browser.get(&app.url("/readyz")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["missing"], serde_json::json!(["provider:main"]));

    let login = browser.get(&app.url("/auth/login")).await;
    assert_eq!(login.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = login.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_logins_by_outcome() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    crate::fake_provider::login_with_fake(&app, &fake, &mut browser, "/").await;
    app.me(&mut browser).await;
    browser
        .get(&app.url("/api/services/nope/secret-looking-path"))
        .await;
    let text = browser
        .get(&app.url("/metrics"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("courier_http_requests_total"), "{text}");
    assert!(text.contains(r#"route="/api/me""#), "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with("courier_logins_total{")
                && [r#"kind="login""#, r#"provider="main""#, r#"outcome="ok""#]
                    .iter()
                    .all(|label| line.contains(label))),
        "{text}"
    );
    assert!(text.contains("courier_active_sessions 1"), "{text}");
    assert!(text.contains("courier_http_request_duration_seconds_bucket"));
    assert!(
        !text.contains("secret-looking-path"),
        "paths never become labels"
    );
}

#[tokio::test]
async fn a_provider_down_at_start_up_is_discovered_when_it_comes_back() {
    // The provider's port is known (courier is configured with it) but nothing listens yet.
    let provider_port = {
        let probe = TestApp::bind();
        probe.local_addr().unwrap().port()
    };
    let listener = TestApp::bind();
    let app_port = listener.local_addr().unwrap().port();
    let issuer = format!("http://127.0.0.1:{provider_port}");
    let app = TestApp::spawn(listener, AppSettings::new(&issuer)).await;
    let mut browser = Browser::new();
    let ready = browser.get(&app.url("/readyz")).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        browser.get(&app.url("/auth/login")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The provider comes up on that port; courier finds it without a restart.
    let _provider = crate::helpers::NodeProvider::start(serde_json::json!({
        "port": provider_port,
        "clients": [{
            "client_id": crate::helpers::CLIENT_ID,
            "client_secret": crate::helpers::CLIENT_SECRET,
            "redirect_uris": [format!("http://127.0.0.1:{app_port}/auth/callback/main")],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }]
    }))
    .await;
    let started = std::time::Instant::now();
    while browser.get(&app.url("/readyz")).await.status() != StatusCode::OK {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(45),
            "discovery is retried"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let response = app.login(&mut browser, "alice").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_provider_down_at_the_callback_sends_the_browser_back_and_stores_nothing() {
    let listener = TestApp::bind();
    let mut provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let app = TestApp::spawn(listener, AppSettings::new(&provider.issuer)).await;
    let mut browser = Browser::new();
    let form = app.start_login_at_provider(&mut browser, "/after").await;
    let post = form.join(&format!("{}/login", form.path())).unwrap();
    let response = browser
        .send(
            Method::POST,
            post.as_str(),
            &[],
            Some(&[("login", "alice"), ("password", "x")]),
        )
        .await;
    let next = location(&post, &response);
    // Through the provider's consent, up to (not into) courier's callback.
    let (at, response) = browser
        .follow(next.as_str(), |u| u.path().starts_with("/auth/callback/"))
        .await;
    let callback = location(&at, &response);

    // The provider goes away between its redirect and courier's code exchange.
    provider.stop().await;
    let response = browser.get(callback.as_str()).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()["location"],
        "/?login_error=provider_unavailable"
    );
    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(app.db.count("users").await, 0);
}
