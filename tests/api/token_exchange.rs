//! `token = "exchange"` services (RFC 8693) against node-oidc-provider's registered exchange
//! grant, with demo APIs that accept only tokens made for their audience.

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::helpers::{
    AppSettings, Browser, CLIENT_ID, CLIENT_SECRET, NodeProvider, TOKEN_EXCHANGE, TestApp,
    spawn_demo_api_with,
};
use courier::crypto::KeyRing;
use courier::domain::tokens::OwnerKey;

const CALENDAR: &str = "https://calendar.example/";

struct World {
    app: TestApp,
    provider: NodeProvider,
    browser: Browser,
    key: String,
    keys: KeyRing,
}

fn demo_for(provider: &NodeProvider, audience: &str) -> String {
    spawn_demo_api_with(
        &provider.issuer,
        demo_api::DemoConfig {
            audience: Some(audience.to_owned()),
            ..Default::default()
        },
    )
}

/// courier with two exchange services of the login provider: `orders` (audience
/// `orders-api`) and `calendar` (resource `https://calendar.example/`, whose tokens have the
/// audience `calendar-api`), each behind a demo API that accepts only its own audience, and
/// `misdirected` (orders' audience, sent to the calendar API); alice logged in.
async fn world(extra: &str) -> World {
    world_with(json!({}), extra).await
}

/// `world` with more of the provider's settings.
async fn world_with(provider_settings: Value, extra: &str) -> World {
    let listener = TestApp::bind();
    let mut config = json!({
        "resource_servers": {
            "orders-api": { "scope": "orders:read" },
            CALENDAR: { "scope": "calendar:read", "audience": "calendar-api" },
        },
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut config, provider_settings) {
        base.extend(more);
    }
    let provider = NodeProvider::for_courier(listener.local_addr().unwrap().port(), config).await;
    let mut settings = settings(&provider);
    settings.extra_toml.push_str(extra);
    let key = settings.encryption_keys[0].clone();
    let keys = KeyRing::from_config(&[SecretString::from(key.clone())]).unwrap();
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    let response = app.login(&mut browser, "alice").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    World {
        app,
        provider,
        browser,
        key,
        keys,
    }
}

/// The services of `world`, each behind a demo API of its own.
fn settings(provider: &NodeProvider) -> AppSettings {
    let orders = demo_for(provider, "orders-api");
    let calendar = demo_for(provider, "calendar-api");
    AppSettings::new(&provider.issuer)
        .service(
            "orders",
            &format!("{orders}/"),
            "provider = \"main\"\ntoken = \"exchange\"\naudience = \"orders-api\"\n\
             scopes = [\"orders:read\"]",
        )
        .service(
            "calendar",
            &format!("{calendar}/"),
            &format!(
                "provider = \"main\"\ntoken = \"exchange\"\nresource = \"{CALENDAR}\"\n\
                 scopes = [\"calendar:read\"]"
            ),
        )
        .service(
            "misdirected",
            &format!("{calendar}/"),
            "provider = \"main\"\ntoken = \"exchange\"\naudience = \"orders-api\"",
        )
}

async fn call(w: &mut World, service: &str) -> reqwest::Response {
    w.app
        .api(
            &mut w.browser,
            reqwest::Method::GET,
            &format!("/api/services/{service}/x"),
        )
        .await
}

async fn session_id(w: &World) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_one(&w.app.db.pool)
        .await
        .unwrap()
}

/// The stored exchanged token of `service`, opened.
async fn stored_token(w: &World, service: &str) -> SecretString {
    let owner = OwnerKey::Session(session_id(w).await);
    courier::db::service_tokens::get(
        &w.app.db.pool,
        &w.keys,
        &owner,
        &format!("exchange:{service}"),
    )
    .await
    .unwrap()
    .expect("a stored exchanged token")
    .access_token
}

/// What the provider says of `token` (RFC 7662).
async fn introspect(provider: &NodeProvider, token: &SecretString) -> Value {
    reqwest::Client::new()
        .post(format!("{}/token/introspection", provider.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", token.expose_secret())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn two_exchange_services_get_different_tokens_with_their_own_audiences() {
    let mut w = world("").await;
    for service in ["orders", "calendar", "orders", "calendar"] {
        let response = call(&mut w, service).await;
        assert_eq!(response.status(), StatusCode::OK, "{service}");
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["token"]["sub"], "alice", "{echo}");
    }
    // One exchange per service; later calls use the kept token.
    assert_eq!(w.provider.grants(TOKEN_EXCHANGE).await, 2);

    let orders = stored_token(&w, "orders").await;
    let calendar = stored_token(&w, "calendar").await;
    assert_ne!(orders.expose_secret(), calendar.expose_secret());
    let orders = introspect(&w.provider, &orders).await;
    let calendar = introspect(&w.provider, &calendar).await;
    assert_eq!(orders["active"], true);
    assert_eq!(orders["aud"], "orders-api", "{orders}");
    assert_eq!(orders["scope"], "orders:read", "{orders}");
    assert_eq!(orders["sub"], "alice");
    assert_eq!(calendar["aud"], "calendar-api", "{calendar}");
    assert_eq!(calendar["scope"], "calendar:read", "{calendar}");

    // orders' token is never given to another service: one exchanged for orders' audience
    // but sent to the calendar API is refused there.
    let response = call(&mut w, "misdirected").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The session's own token is neither of them, and /api/me is unaffected.
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_storm_of_eight_first_calls_on_two_instances_costs_one_exchange() {
    let w = world("").await;
    let mut sibling_settings = settings(&w.provider);
    sibling_settings.encryption_keys = vec![w.key.clone()];
    let sibling = w.app.spawn_sibling(sibling_settings).await;
    let cookie = format!(
        "__Host-courier={}",
        w.browser.cookie(&w.app.address, "__Host-courier").unwrap()
    );
    let client = reqwest::Client::new();
    let calls = (0..8).map(|i| {
        let app = if i % 2 == 0 { &w.app } else { &sibling };
        client
            .get(app.url("/api/services/orders/x"))
            .header("x-csrf", "1")
            .header("cookie", cookie.clone())
            .send()
    });
    for response in futures_util::future::join_all(calls).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["token"]["aud"], "orders-api", "{echo}");
    }
    assert_eq!(w.provider.grants(TOKEN_EXCHANGE).await, 1);
}

#[tokio::test]
async fn a_dead_subject_token_takes_the_refresh_path_and_the_exchange_is_sent_again() {
    // The provider's tokens live 3 s; courier's clock runs 5 s behind it, so that the session's
    // token looks fresh to courier when the provider no longer takes it.
    let mut w = world_with(json!({ "access_token_ttl": 3 }), "").await;
    w.app.clock.advance(chrono::Duration::seconds(-5));
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let response = call(&mut w, "orders").await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["token"]["aud"], "orders-api", "{echo}");
    // The refused exchange is not counted by the provider; the refresh and the second are.
    assert_eq!(w.provider.grants("refresh_token").await, 1);
    assert_eq!(w.provider.grants(TOKEN_EXCHANGE).await, 1);
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_target_the_provider_refuses_is_403_not_allowed_and_a_provider_down_is_503() {
    let mut w = world(
        "\n[[services]]\nname = \"unknown\"\nbase_url = \"http://127.0.0.1:9/\"\n\
         provider = \"main\"\ntoken = \"exchange\"\naudience = \"nobody\"\n",
    )
    .await;
    let response = call(&mut w, "unknown").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_allowed");
    // Nothing of the session changed: the other services work.
    assert_eq!(call(&mut w, "orders").await.status(), StatusCode::OK);

    w.provider.stop().await;
    let response = call(&mut w, "calendar").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable");
}

#[tokio::test]
async fn an_exchange_at_another_provider_uses_the_linked_account_and_needs_it_connected() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let main = NodeProvider::for_courier(port, json!({})).await;
    let other = NodeProvider::for_courier_as(
        port,
        "other",
        json!({ "resource_servers": { "reports-api": { "scope": "reports:read" } } }),
    )
    .await;
    let reports = demo_for(&other, "reports-api");
    let mut settings = AppSettings::new(&main.issuer);
    settings.extra_toml = format!(
        "\n[[providers]]\nid = \"other\"\nissuer = \"{}\"\nclient_id = \"courier\"\n\
         client_secret = \"courier-secret\"\nscopes = [\"openid\", \"offline_access\"]\n",
        other.issuer
    );
    let app = TestApp::spawn(
        listener,
        settings.service(
            "reports",
            &format!("{reports}/"),
            "provider = \"other\"\ntoken = \"exchange\"\naudience = \"reports-api\"",
        ),
    )
    .await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;

    let response = app
        .api(
            &mut browser,
            reqwest::Method::GET,
            "/api/services/reports/x",
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "connect_required");
    assert_eq!(body["connect_url"], "/auth/connect/reports");

    let response = app.connect(&mut browser, "reports", "alice-at-other").await;
    assert_eq!(response.headers()["location"], "/settings");
    let response = app
        .api(
            &mut browser,
            reqwest::Method::GET,
            "/api/services/reports/x",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["token"]["sub"], "alice-at-other", "{echo}");
    assert_eq!(echo["token"]["aud"], "reports-api", "{echo}");
    assert_eq!(other.grants(TOKEN_EXCHANGE).await, 1);
    assert_eq!(main.grants(TOKEN_EXCHANGE).await, 0);
}
