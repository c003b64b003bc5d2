//! Behaviour the architecture review found untested: `token = "none"`, a pending login naming a
//! provider that a deploy removed, two first logins of one user at once, `/readyz` while
//! Postgres is down, and logout and disconnect while the provider is down.

use std::sync::Arc;

use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fake_provider::{FakeProvider, login_with_fake, start_login};
use crate::faults::OwnPostgres;
use crate::helpers::{
    AppSettings, Browser, CLIENT_ID, CLIENT_SECRET, NodeProvider, TestApp, TestDb,
};

/// Copies the cookies `browser` holds for `from` to `to` (another instance, same origin in a
/// real deployment behind one load balancer).
fn carry_cookies(browser: &mut Browser, from: &TestApp, to: &TestApp) {
    for name in browser.cookie_names(&from.address) {
        let value = browser.cookie(&from.address, &name).unwrap();
        browser.set_cookie(&to.address, &name, &value);
    }
}

#[tokio::test]
async fn a_service_with_token_none_gets_no_authorization_header() {
    let fake = FakeProvider::start().await;
    let service = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/status"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&service)
        .await;
    let settings = AppSettings::new(&fake.issuer).service(
        "public",
        &format!("{}/", service.uri()),
        "token = \"none\"",
    );
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;

    // The browser's own Authorization is not passed on either.
    let response = browser
        .send(
            Method::GET,
            &app.url("/api/services/public/status"),
            &[
                ("x-csrf", "1"),
                ("authorization", "Bearer from-the-browser"),
            ],
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = service.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    assert!(
        !received[0].headers.contains_key("authorization"),
        "{:?}",
        received[0].headers
    );
}

#[tokio::test]
async fn a_pending_login_naming_a_removed_provider_is_a_clean_login_error() {
    let fake = FakeProvider::start().await;
    let with_github = || {
        let mut settings = AppSettings::new(&fake.issuer).service(
            "github",
            "http://127.0.0.1:9/api/",
            "provider = \"github\"",
        );
        settings.extra_toml.push_str(
            "\n[[providers]]\nid = \"github\"\nauthorization_endpoint = \"http://127.0.0.1:9/authorize\"\ntoken_endpoint = \"http://127.0.0.1:9/token\"\nclient_id = \"gh\"\nclient_secret = \"x\"\n",
        );
        settings
    };
    let before = with_github();
    let keys = before.encryption_keys.clone();
    let app = TestApp::spawn(TestApp::bind(), before).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let started = browser.get(&app.url("/auth/connect/github")).await;
    assert_eq!(started.status(), StatusCode::FOUND);
    let authorize = url::Url::parse(started.headers()[LOCATION].to_str().unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();

    // A deploy that removes the provider (and its service) before the browser comes back.
    let mut after = AppSettings::new(&fake.issuer);
    after.encryption_keys = keys;
    let redeployed = app.spawn_sibling(after).await;
    carry_cookies(&mut browser, &app, &redeployed);
    let response = browser
        .get(&redeployed.url(&format!("/auth/callback/github?code=gh-code&state={state}")))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()[LOCATION],
        "/?connect_error=invalid_state&service=github"
    );
    assert_eq!(app.db.count("linked_accounts").await, 0);
    // The session is untouched.
    assert_eq!(redeployed.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_first_logins_of_one_user_at_once_make_one_user_and_two_sessions() {
    let fake = FakeProvider::start().await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    fake.publish_keys(&["signing"]).await;
    let (mut first, mut second) = (Browser::new(), Browser::new());
    let mut callbacks = Vec::new();
    for (browser, code) in [(&mut first, "code-one"), (&mut second, "code-two")] {
        let login = start_login(&app, browser, "/").await;
        let id_token = fake.sign("signing", &fake.claims(&login.nonce));
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains(format!("code={code}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": format!("access-{code}"),
                "token_type": "Bearer",
                "expires_in": 300,
                "refresh_token": format!("refresh-{code}"),
                "id_token": id_token,
                "scope": "openid profile email offline_access",
            })))
            .mount(&fake.server)
            .await;
        callbacks.push(app.url(&format!(
            "/auth/callback/main?code={code}&state={}",
            login.state
        )));
    }
    let (one, two) = tokio::join!(first.get(&callbacks[0]), second.get(&callbacks[1]));
    assert_eq!(one.headers()[LOCATION], "/");
    assert_eq!(two.headers()[LOCATION], "/");
    assert_eq!(app.db.count("users").await, 1);
    assert_eq!(app.db.count("identities").await, 1);
    assert_eq!(app.db.count("sessions").await, 2);
    let a: Value = app.me(&mut first).await.json().await.unwrap();
    let b: Value = app.me(&mut second).await.json().await.unwrap();
    assert_eq!(a["user_id"], b["user_id"]);
}

#[tokio::test]
async fn readyz_names_the_database_while_postgres_is_down() {
    let pg = OwnPostgres::start();
    let db = Arc::new(TestDb::new_on(pg.admin_url()).await);
    let fake = FakeProvider::start().await;
    let app = TestApp::spawn_on_db(db.clone(), AppSettings::new(&fake.issuer)).await;
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    pg.pg_ctl(&["-m", "fast", "stop"]);
    let response = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["missing"], json!(["database"]));
    // The process still serves.
    let live = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
}

#[tokio::test]
async fn logout_and_disconnect_while_the_providers_are_down() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let mut main = NodeProvider::for_courier(port, json!({})).await;
    let mut calendar = NodeProvider::for_courier_as(port, "calendar", json!({})).await;
    let mut settings = AppSettings::new(&main.issuer).service(
        "calendar",
        "http://127.0.0.1:9/",
        "provider = \"calendar\"\nscopes = [\"calendar:read\"]",
    );
    settings.extra_toml.push_str(&format!(
        "\n[[providers]]\nid = \"calendar\"\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nscopes = [\"openid\", \"offline_access\"]\n",
        calendar.issuer
    ));
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    assert_eq!(
        app.login(&mut browser, "alice").await.status(),
        StatusCode::FOUND
    );
    let connected = app.connect(&mut browser, "calendar", "alice-cal").await;
    assert_eq!(connected.headers()[LOCATION], "/settings");
    assert_eq!(app.db.count("linked_accounts").await, 1);

    // Disconnecting cannot revoke: 503, and the tokens stay so that a retry still can.
    calendar.stop().await;
    let response = app
        .api(&mut browser, Method::DELETE, "/api/connections/calendar")
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "upstream_unavailable");
    assert_eq!(app.db.count("linked_accounts").await, 1);

    // Logging out ends the session here even though the refresh token cannot be revoked; the
    // logout URL is still the provider's (its metadata was loaded at start).
    main.stop().await;
    let response = browser
        .send(
            Method::POST,
            &app.url("/auth/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let logout_url = body["logout_url"].as_str().unwrap();
    assert!(logout_url.starts_with(&main.issuer), "{logout_url}");
    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(app.db.count("session_tokens").await, 0);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_forwarded_for_from_an_untrusted_peer_reaches_neither_the_limit_nor_the_service() {
    let fake = FakeProvider::start().await;
    let service = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&service)
        .await;
    let mut settings = AppSettings::new(&fake.issuer).service(
        "public",
        &format!("{}/", service.uri()),
        "token = \"none\"",
    );
    // Only 10.0.0.1 is trusted to say who its client is; the test connects from 127.0.0.1.
    settings.extra_toml.push_str(
        "\n[rate_limit]\nrequests_per_minute = 1\nburst = 3\ntrusted_proxies = [\"10.0.0.1\"]\n",
    );
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let response = browser
        .send(
            Method::GET,
            &app.url("/api/services/public/x"),
            &[("x-csrf", "1"), ("x-forwarded-for", "203.0.113.9")],
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = service.received_requests().await.unwrap();
    assert_eq!(received[0].headers["x-forwarded-for"], "127.0.0.1");

    // The login above spent part of the allowance of three; a new forged address each time
    // buys no fresh one (were it believed, every attempt would be a 302).
    let mut statuses = Vec::new();
    for i in 0..3 {
        let response = browser
            .send(
                Method::GET,
                &app.url("/auth/login"),
                &[("x-forwarded-for", &format!("198.51.100.{i}"))],
                None,
            )
            .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let first_limited = statuses.iter().position(|s| *s == 429).unwrap();
    assert!(
        statuses[first_limited..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_forwarded_for_from_a_trusted_proxy_names_the_client_to_the_service() {
    let fake = FakeProvider::start().await;
    let service = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&service)
        .await;
    let mut settings = AppSettings::new(&fake.issuer).service(
        "public",
        &format!("{}/", service.uri()),
        "token = \"none\"",
    );
    // The test connects from 127.0.0.1, here a trusted proxy in front of courier.
    settings
        .extra_toml
        .push_str("\n[rate_limit]\ntrusted_proxies = [\"127.0.0.1/32\"]\n");
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    // The right-most address that is not a trusted proxy is the client.
    let response = browser
        .send(
            Method::GET,
            &app.url("/api/services/public/x"),
            &[
                ("x-csrf", "1"),
                ("x-forwarded-for", "198.51.100.4, 203.0.113.9, 127.0.0.1"),
            ],
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = service.received_requests().await.unwrap();
    assert_eq!(received[0].headers["x-forwarded-for"], "203.0.113.9");
}
