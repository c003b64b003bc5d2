//! Linked accounts: a second OpenID provider and a plain OAuth 2.0 one, connected once per user.

use chrono::Duration;
use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    AppSettings, Browser, CLIENT_ID, CLIENT_SECRET, NodeProvider, TestApp, spawn_demo_api,
};

/// A plain OAuth 2.0 provider in the manner of GitHub: form-encoded token responses with
/// comma-separated scopes, no refresh token, no expiry; and its API.
struct PlainProvider {
    server: MockServer,
}

impl PlainProvider {
    async fn start() -> Self {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/login/oauth/access_token"))
            .and(body_string_contains("client_secret=gh-secret"))
            .and(body_string_contains("code_verifier="))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/x-www-form-urlencoded")
                    .set_body_string(
                        "access_token=gho_linked&scope=read%3Auser%2Crepo&token_type=bearer",
                    ),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/user"))
            .and(header("authorization", "Bearer gho_linked"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"id": 4242, "login": "octo"})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/user/repos"))
            .and(header("authorization", "Bearer gho_linked"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"name": "courier"}])))
            .mount(&server)
            .await;
        PlainProvider { server }
    }
}

struct World {
    app: TestApp,
    main: NodeProvider,
    calendar: NodeProvider,
    plain: PlainProvider,
    keys: Vec<String>,
}

/// Settings for courier with the login provider, `calendar` (a second OpenID provider) and
/// `github` (plain OAuth 2.0), and a service on each.
fn settings(main: &NodeProvider, calendar: &NodeProvider, plain: &PlainProvider) -> AppSettings {
    let demo = spawn_demo_api(Some(&calendar.issuer));
    let gh = plain.server.uri();
    let mut settings = AppSettings::new(&main.issuer)
        .service(
            "calendar",
            &format!("{demo}/"),
            "provider = \"calendar\"\nscopes = [\"calendar:read\"]",
        )
        .service(
            "github",
            &format!("{gh}/api/"),
            "provider = \"github\"\nscopes = [\"repo\"]",
        );
    settings.extra_toml.push_str(&format!(
        r#"
[[providers]]
id = "calendar"
issuer = "{calendar}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "offline_access"]

[[providers]]
id = "github"
authorization_endpoint = "{gh}/login/oauth/authorize"
token_endpoint = "{gh}/login/oauth/access_token"
userinfo_endpoint = "{gh}/user"
client_id = "gh-client"
client_secret = "gh-secret"
scopes = ["read:user"]
"#,
        calendar = calendar.issuer,
    ));
    settings
}

async fn world() -> World {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let main = NodeProvider::for_courier(port, json!({})).await;
    let calendar = NodeProvider::for_courier_as(port, "calendar", json!({})).await;
    let plain = PlainProvider::start().await;
    let settings = settings(&main, &calendar, &plain);
    let keys = settings.encryption_keys.clone();
    let app = TestApp::spawn(listener, settings).await;
    World {
        app,
        main,
        calendar,
        plain,
        keys,
    }
}

impl World {
    async fn logged_in(&self, user: &str) -> Browser {
        let mut browser = Browser::new();
        let response = self.app.login(&mut browser, user).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        browser
    }

    async fn service_status(&self, browser: &mut Browser, name: &str) -> Value {
        let body: Value = self
            .app
            .api(browser, Method::GET, "/api/services")
            .await
            .json()
            .await
            .unwrap();
        body["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    }

    async fn linked_refresh_token(&self, provider: &str) -> SecretString {
        let keys: Vec<SecretString> = self.keys.iter().map(|k| k.clone().into()).collect();
        let ring = courier::crypto::KeyRing::from_config(&keys).unwrap();
        let user_id: uuid::Uuid =
            sqlx::query_scalar("SELECT user_id FROM linked_accounts WHERE provider = $1")
                .bind(provider)
                .fetch_one(&self.app.db.pool)
                .await
                .unwrap();
        courier::db::linked_accounts::get(&self.app.db.pool, &ring, user_id, provider)
            .await
            .unwrap()
            .unwrap()
            .tokens
            .refresh_token
            .unwrap()
    }
}

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_connected_account_is_used_kept_across_logins_and_revoked_on_disconnect() {
    let w = world().await;
    let mut browser = w.logged_in("alice").await;
    let before = w.service_status(&mut browser, "calendar").await;
    assert_eq!(before["status"], "not_connected");
    assert_eq!(before["linked"], true);
    assert_eq!(before["connect_url"], "/auth/connect/calendar");
    let call = w
        .app
        .api(&mut browser, Method::GET, "/api/services/calendar/events")
        .await;
    assert_eq!(call.status(), StatusCode::FORBIDDEN);
    let body = problem(call).await;
    assert_eq!(body["code"], "connect_required");
    assert_eq!(body["connect_url"], "/auth/connect/calendar");

    let response = w
        .app
        .connect(&mut browser, "calendar", "alice-at-calendar")
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/settings");
    let after = w.service_status(&mut browser, "calendar").await;
    assert_eq!(after["status"], "connected");
    assert_eq!(after["connected"], true);
    assert!(after.get("connect_url").is_none());

    let echo: Value = w
        .app
        .api(&mut browser, Method::GET, "/api/services/calendar/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        echo["token"]["sub"], "alice-at-calendar",
        "the linked account's token"
    );
    assert!(
        echo["token"]["scope"]
            .as_str()
            .unwrap()
            .contains("calendar:read"),
        "the service's scopes were asked for: {}",
        echo["token"]["scope"]
    );

    // Logging out ends the session, not the linked account: the next login finds it.
    let response = browser
        .send(
            Method::POST,
            &w.app.url("/auth/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(w.app.db.count("sessions").await, 0);
    let mut later = w.logged_in("alice").await;
    assert_eq!(
        w.service_status(&mut later, "calendar").await["status"],
        "connected"
    );
    let call = w
        .app
        .api(&mut later, Method::GET, "/api/services/calendar/events")
        .await;
    assert_eq!(call.status(), StatusCode::OK);

    // Disconnect: revoked at the provider, gone here.
    let refresh = w.linked_refresh_token("calendar").await;
    assert!(w.calendar.is_active(&refresh).await);
    let response = w
        .app
        .api(&mut later, Method::DELETE, "/api/connections/calendar")
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        !w.calendar.is_active(&refresh).await,
        "revoked at the provider"
    );
    assert_eq!(
        w.service_status(&mut later, "calendar").await["status"],
        "not_connected"
    );
    assert_eq!(w.app.db.count("linked_accounts").await, 0);
    let call = w
        .app
        .api(&mut later, Method::GET, "/api/services/calendar/events")
        .await;
    assert_eq!(problem(call).await["code"], "connect_required");
    // The main provider is untouched.
    assert_eq!(w.main.grants("refresh_token").await, 0);
}

#[tokio::test]
async fn an_account_linked_to_another_user_is_refused() {
    let w = world().await;
    let mut alice = w.logged_in("alice").await;
    w.app
        .connect(&mut alice, "calendar", "shared-account")
        .await;
    let mut bob = w.logged_in("bob").await;
    let response = w.app.connect(&mut bob, "calendar", "shared-account").await;
    assert_eq!(
        response.headers()[LOCATION],
        "/?connect_error=account_linked_elsewhere&service=calendar"
    );
    assert_eq!(
        w.service_status(&mut bob, "calendar").await["status"],
        "not_connected"
    );
    assert_eq!(
        w.service_status(&mut alice, "calendar").await["status"],
        "connected"
    );
}

#[tokio::test]
async fn invalid_grant_marks_the_connection_and_leaves_the_session_alone() {
    let w = world().await;
    let mut browser = w.logged_in("alice").await;
    w.app.connect(&mut browser, "calendar", "alice-cal").await;
    let refresh = w.linked_refresh_token("calendar").await;
    w.calendar.revoke(refresh.expose_secret()).await;
    // Expire the stored access token (rather than moving courier's clock, which would make the
    // provider's next ID token look stale).
    sqlx::query("UPDATE linked_accounts SET expires_at = now()")
        .execute(&w.app.db.pool)
        .await
        .unwrap();

    let call = w
        .app
        .api(&mut browser, Method::GET, "/api/services/calendar/x")
        .await;
    assert_eq!(call.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem(call).await["code"], "connect_required");
    let status = w.service_status(&mut browser, "calendar").await;
    assert_eq!(status["status"], "reauth_required");
    assert_eq!(status["connect_url"], "/auth/connect/calendar");
    assert_eq!(w.app.me(&mut browser).await.status(), StatusCode::OK);

    // Connecting again repairs it (the provider remembers the user: no form this time).
    let port = w.app.port;
    let (_, response) = browser
        .follow(
            &w.app.url("/auth/connect/calendar?return_to=/settings"),
            |u| u.port() == Some(port) && !u.path().starts_with("/auth/"),
        )
        .await;
    assert_eq!(response.headers()[LOCATION], "/settings");
    assert_eq!(
        w.service_status(&mut browser, "calendar").await["status"],
        "connected"
    );
}

#[tokio::test]
async fn linked_tokens_refresh_once_for_concurrent_calls_on_two_instances() {
    let w = world().await;
    let mut browser = w.logged_in("alice").await;
    w.app.connect(&mut browser, "calendar", "alice-cal").await;
    let mut settings = settings(&w.main, &w.calendar, &w.plain);
    settings.encryption_keys = w.keys.clone();
    let second = w.app.spawn_sibling(settings).await;
    w.calendar.set_token_delay(300).await;
    w.app.clock.advance(Duration::seconds(3600));
    second.clock.advance(Duration::seconds(3600));
    let cookie = format!(
        "__Host-courier={}",
        browser.cookie(&w.app.address, "__Host-courier").unwrap()
    );
    let client = reqwest::Client::new();
    let calls = (0..20).map(|i| {
        let app = if i % 2 == 0 { &w.app } else { &second };
        client
            .get(app.url("/api/services/calendar/x"))
            .header("x-csrf", "1")
            .header("cookie", cookie.clone())
            .send()
    });
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(w.calendar.grants("refresh_token").await, 1);
}

#[tokio::test]
async fn a_plain_oauth2_provider_is_connected_by_its_endpoints() {
    let w = world().await;
    let mut browser = w.logged_in("alice").await;
    let response = browser
        .get(&w.app.url("/auth/connect/github?return_to=/repos"))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let authorize = url::Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert!(authorize.as_str().starts_with(&w.plain.server.uri()));
    let param = |name: &str| {
        authorize
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("scope").as_deref(), Some("read:user repo"));
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param("nonce"), None, "no OpenID Connect here");
    let state = param("state").unwrap();

    let response = browser
        .get(
            &w.app
                .url(&format!("/auth/callback/github?code=gh-code&state={state}")),
        )
        .await;
    assert_eq!(response.headers()[LOCATION], "/repos");
    let status = w.service_status(&mut browser, "github").await;
    assert_eq!(status["status"], "connected");
    let subject: String =
        sqlx::query_scalar("SELECT subject FROM linked_accounts WHERE provider = 'github'")
            .fetch_one(&w.app.db.pool)
            .await
            .unwrap();
    assert_eq!(subject, "4242", "userinfo's id names the account");
    let scopes: Vec<String> =
        sqlx::query_scalar("SELECT scopes FROM linked_accounts WHERE provider = 'github'")
            .fetch_one(&w.app.db.pool)
            .await
            .unwrap();
    assert_eq!(scopes, vec!["read:user", "repo"]);

    let response = w
        .app
        .api(&mut browser, Method::GET, "/api/services/github/user/repos")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body[0]["name"], "courier");

    // No revocation endpoint: disconnecting just forgets the token.
    let response = w
        .app
        .api(&mut browser, Method::DELETE, "/api/connections/github")
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        w.service_status(&mut browser, "github").await["status"],
        "not_connected"
    );
}

#[tokio::test]
async fn connecting_needs_a_session_and_a_linked_service() {
    let w = world().await;
    let mut anonymous = Browser::new();
    let response = anonymous
        .get(&w.app.url("/auth/connect/calendar?return_to=/x"))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()[LOCATION],
        "/auth/login?return_to=%2Fauth%2Fconnect%2Fcalendar%3Freturn_to%3D%252Fx"
    );

    let mut browser = w.logged_in("alice").await;
    let response = browser.get(&w.app.url("/auth/connect/nope")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = w
        .app
        .api(&mut browser, Method::DELETE, "/api/connections/nope")
        .await;
    assert_eq!(problem(response).await["code"], "service_not_found");

    // A connection started in one session cannot be finished in another user's.
    let started = browser.get(&w.app.url("/auth/connect/github")).await;
    let authorize = url::Url::parse(started.headers()[LOCATION].to_str().unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let pending: Vec<(String, String)> = browser
        .cookie_names(&w.app.address)
        .into_iter()
        .filter(|n| n.contains("-login-"))
        .map(|n| (n.clone(), browser.cookie(&w.app.address, &n).unwrap()))
        .collect();
    let mut mallory = w.logged_in("mallory").await;
    for (name, value) in &pending {
        mallory.set_cookie(&w.app.address, name, value);
    }
    let response = mallory
        .get(
            &w.app
                .url(&format!("/auth/callback/github?code=gh-code&state={state}")),
        )
        .await;
    assert_eq!(
        response.headers()[LOCATION],
        "/?connect_error=login_required&service=github"
    );
    assert_eq!(w.app.db.count("linked_accounts").await, 0);
}
