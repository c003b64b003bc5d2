//! A token made for each service: RFC 8707 resource indicators against node-oidc-provider,
//! with demo APIs that accept only tokens made for them.

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};

use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp, spawn_demo_api_with};

const ORDERS: &str = "https://orders.example/";
const CALENDAR: &str = "https://calendar.example/";

/// A provider that knows the orders and calendar resource servers.
async fn provider_for(port: u16, extra: Value) -> NodeProvider {
    let mut config = json!({
        "resource_servers": {
            ORDERS: { "scope": "orders:read" },
            CALENDAR: { "scope": "calendar:read" },
        },
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut config, extra) {
        base.extend(extra);
    }
    NodeProvider::for_courier(port, config).await
}

fn demo_for(provider: &NodeProvider, audience: Option<&str>) -> String {
    spawn_demo_api_with(
        &provider.issuer,
        demo_api::DemoConfig {
            audience: audience.map(str::to_owned),
            ..Default::default()
        },
    )
}

struct World {
    app: TestApp,
    provider: NodeProvider,
    browser: Browser,
    /// The encryption key, for a second instance.
    key: String,
}

/// courier with `orders` and `calendar` (each restricted to its resource, each API accepting
/// only tokens for itself), `profile` (no resource, an API that checks no audience) and
/// `misdirected` (orders' resource, sent to the calendar API); alice logged in.
async fn world(ttl: u64) -> World {
    let listener = TestApp::bind();
    let provider = provider_for(
        listener.local_addr().unwrap().port(),
        json!({ "access_token_ttl": ttl }),
    )
    .await;
    let settings = settings(&provider);
    let key = settings.encryption_keys[0].clone();
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    let response = app.login(&mut browser, "alice").await;
    assert_eq!(response.status(), StatusCode::FOUND, "the login completes");
    World {
        app,
        provider,
        browser,
        key,
    }
}

/// The services of `world`, each behind a demo API of its own.
fn settings(provider: &NodeProvider) -> AppSettings {
    let orders = demo_for(provider, Some(ORDERS));
    let calendar = demo_for(provider, Some(CALENDAR));
    let plain = demo_for(provider, None);
    AppSettings::new(&provider.issuer)
        .service(
            "orders",
            &format!("{orders}/"),
            &format!("provider = \"main\"\nresource = \"{ORDERS}\""),
        )
        .service(
            "calendar",
            &format!("{calendar}/"),
            &format!("provider = \"main\"\nresource = \"{CALENDAR}\""),
        )
        .service("profile", &format!("{plain}/"), "provider = \"main\"")
        .service(
            "misdirected",
            &format!("{calendar}/"),
            &format!("provider = \"main\"\nresource = \"{ORDERS}\""),
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

#[tokio::test]
async fn the_login_asks_for_the_resources_of_its_providers_services() {
    let listener = TestApp::bind();
    let provider = provider_for(listener.local_addr().unwrap().port(), json!({})).await;
    // The resources are read from the front-channel request: not pushed (PAR).
    let settings = AppSettings {
        extra_toml: "par = \"off\"\n".into(),
        ..AppSettings::new(&provider.issuer)
    }
    .service(
        "orders",
        "http://127.0.0.1:9/",
        &format!("provider = \"main\"\nresource = \"{ORDERS}\""),
    )
    .service(
        "orders-again",
        "http://127.0.0.1:9/",
        &format!("provider = \"main\"\nresource = \"{ORDERS}\""),
    )
    .service("plain", "http://127.0.0.1:9/", "provider = \"main\"");
    let app = TestApp::spawn(listener, settings).await;
    let url = app.authorize_url(&mut Browser::new(), "/").await;
    let resources: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "resource")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(resources, [ORDERS], "each resource once: {url}");
}

#[tokio::test]
async fn a_connection_asks_only_for_its_services_resource() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let provider = provider_for(port, json!({})).await;
    let other = provider_for(port, json!({})).await;
    let settings = AppSettings {
        // The resources are read from the front-channel requests: not pushed (PAR).
        extra_toml: format!(
            "par = \"off\"\n\n[[providers]]\nid = \"other\"\nissuer = \"{}\"\n\
             client_id = \"courier\"\nclient_secret = \"courier-secret\"\n\
             scopes = [\"openid\"]\npar = \"off\"\n",
            other.issuer
        ),
        ..AppSettings::new(&provider.issuer)
    }
    .service(
        "orders",
        "http://127.0.0.1:9/",
        &format!("provider = \"other\"\nresource = \"{ORDERS}\""),
    )
    .service(
        "calendar",
        "http://127.0.0.1:9/",
        &format!("provider = \"other\"\nresource = \"{CALENDAR}\""),
    );
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    // The login provider has no service with a resource: the login asks for none.
    let login = app.authorize_url(&mut browser, "/").await;
    assert!(
        !login.query_pairs().any(|(k, _)| k == "resource"),
        "{login}"
    );
    app.login(&mut browser, "alice").await;

    let response = browser.get(&app.url("/auth/connect/calendar")).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let url = url::Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert!(url.as_str().starts_with(&other.issuer), "{url}");
    let resources: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "resource")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(resources, [CALENDAR], "{url}");
}

#[tokio::test]
async fn each_service_gets_a_token_for_its_resource_and_another_service_refuses_it() {
    let mut w = world(3600).await;

    // The login's own token (for userinfo) served the login and serves a service without a
    // resource; /api/me works.
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
    let plain: Value = call(&mut w, "profile").await.json().await.unwrap();
    assert_eq!(plain["token"]["sub"], "alice");
    assert!(plain["token"]["aud"].is_null(), "{plain}");
    assert_eq!(w.provider.grants("refresh_token").await, 0);

    // Each resource's first call gets its token with one refresh grant.
    let response = call(&mut w, "orders").await;
    assert_eq!(response.status(), StatusCode::OK);
    let orders: Value = response.json().await.unwrap();
    assert_eq!(orders["token"]["aud"], ORDERS, "{orders}");
    assert_eq!(orders["token"]["sub"], "alice");
    let response = call(&mut w, "calendar").await;
    assert_eq!(response.status(), StatusCode::OK);
    let calendar: Value = response.json().await.unwrap();
    assert_eq!(calendar["token"]["aud"], CALENDAR, "{calendar}");
    assert_eq!(w.provider.grants("refresh_token").await, 2);

    // Kept per resource: more calls cost nothing.
    for service in ["orders", "calendar", "orders", "profile"] {
        assert_eq!(call(&mut w, service).await.status(), StatusCode::OK);
    }
    assert_eq!(w.provider.grants("refresh_token").await, 2);

    // orders' token at the calendar API: refused, also after the one refresh a 401 earns.
    let response = call(&mut w, "misdirected").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error_description"],
        "the token is not made for this service"
    );

    // The rotated refresh token kept the session whole: /api/me and every service still work.
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
    for service in ["orders", "calendar", "profile"] {
        assert_eq!(call(&mut w, service).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_storm_of_first_calls_for_two_resources_on_two_instances_costs_one_grant_each() {
    let w = world(3600).await;
    let mut sibling_settings = settings(&w.provider);
    sibling_settings.encryption_keys = vec![w.key.clone()];
    let sibling = w.app.spawn_sibling(sibling_settings).await;
    let cookie = format!(
        "__Host-courier={}",
        w.browser.cookie(&w.app.address, "__Host-courier").unwrap()
    );
    let client = reqwest::Client::new();
    let calls = (0..16).map(|i| {
        let service = if i % 2 == 0 { "orders" } else { "calendar" };
        let app = if i % 4 < 2 { &w.app } else { &sibling };
        client
            .get(app.url(&format!("/api/services/{service}/x")))
            .header("x-csrf", "1")
            .header("cookie", cookie.clone())
            .send()
    });
    let responses = futures_util::future::join_all(calls).await;
    for (i, response) in responses.into_iter().enumerate() {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        let expected = if i % 2 == 0 { ORDERS } else { CALENDAR };
        assert_eq!(echo["token"]["aud"], expected, "call {i}: {echo}");
    }
    // One lease for the owner across both resources and instances: two grants in a row, each
    // with the refresh token the one before it got (a reused one would have ended the grant).
    assert_eq!(w.provider.grants("refresh_token").await, 2);
}

#[tokio::test]
async fn a_resource_token_is_refreshed_when_due_without_touching_the_sessions_own() {
    let mut w = world(20).await;
    assert_eq!(call(&mut w, "orders").await.status(), StatusCode::OK);
    assert_eq!(w.provider.grants("refresh_token").await, 1);
    // Due: one grant for orders; the session's own token (also due) gets its own.
    w.app.clock.advance(chrono::Duration::seconds(16));
    assert_eq!(call(&mut w, "orders").await.status(), StatusCode::OK);
    assert_eq!(w.provider.grants("refresh_token").await, 2);
    let plain: Value = call(&mut w, "profile").await.json().await.unwrap();
    assert!(plain["token"]["aud"].is_null(), "{plain}");
    assert_eq!(w.provider.grants("refresh_token").await, 3);
    assert_eq!(call(&mut w, "orders").await.status(), StatusCode::OK);
    assert_eq!(w.provider.grants("refresh_token").await, 3);
}

#[tokio::test]
async fn a_resource_the_provider_will_not_issue_for_is_403_not_allowed_and_pauses_nothing() {
    let listener = TestApp::bind();
    let provider = provider_for(listener.local_addr().unwrap().port(), json!({})).await;
    let plain = demo_for(&provider, None);
    // The login asks for both; the provider refuses unknown indicators at authorization, so
    // this one is asked for only at refresh (a connection made for another service, say).
    let settings = AppSettings::new(&provider.issuer)
        .service(
            "orders",
            &format!("{plain}/"),
            &format!("provider = \"main\"\nresource = \"{ORDERS}\""),
        )
        .service(
            "client-only",
            &format!("{plain}/"),
            "provider = \"main\"\ntoken = \"client\"\nresource = \"https://unknown.example/\"",
        );
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    let response = app
        .api(
            &mut browser,
            reqwest::Method::GET,
            "/api/services/client-only/x",
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_allowed");
    // The session's own grants are not paused by it.
    let response = app
        .api(&mut browser, reqwest::Method::GET, "/api/services/orders/x")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}
