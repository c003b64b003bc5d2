//! DPoP (RFC 9449) against node-oidc-provider, with demo APIs that check every proof and the
//! token's binding to its key.

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::helpers::{
    AppSettings, Browser, NodeProvider, TOKEN_EXCHANGE, TestApp, spawn_demo_api_with,
};
use courier::crypto::KeyRing;

fn dpop_demo(provider: &NodeProvider, audience: Option<&str>, nonce: Option<&str>) -> String {
    spawn_demo_api_with(
        &provider.issuer,
        demo_api::DemoConfig {
            audience: audience.map(str::to_owned),
            require_dpop: true,
            dpop_nonce: nonce.map(str::to_owned),
            ..Default::default()
        },
    )
}

struct World {
    app: TestApp,
    provider: NodeProvider,
    browser: Browser,
    keys: KeyRing,
    orders: String,
}

/// courier with `dpop = true` on the login provider, `orders` (the session's token) and
/// `reports` (an exchange for `reports-api`), each behind a demo API that requires DPoP;
/// alice logged in.
async fn world(provider_settings: Value, orders_nonce: Option<&str>) -> World {
    let listener = TestApp::bind();
    let mut config = json!({
        "resource_servers": { "reports-api": { "scope": "reports:read" } },
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut config, provider_settings) {
        base.extend(more);
    }
    let provider = NodeProvider::for_courier(listener.local_addr().unwrap().port(), config).await;
    let orders = dpop_demo(&provider, None, orders_nonce);
    let reports = dpop_demo(&provider, Some("reports-api"), None);
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = "dpop = true\n".to_owned();
    let settings = settings
        .service("orders", &format!("{orders}/"), "provider = \"main\"")
        .service(
            "reports",
            &format!("{reports}/"),
            "provider = \"main\"\ntoken = \"exchange\"\naudience = \"reports-api\"\n\
             scopes = [\"reports:read\"]",
        );
    let keys =
        KeyRing::from_config(&[SecretString::from(settings.encryption_keys[0].clone())]).unwrap();
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    let response = app.login(&mut browser, "alice").await;
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "the login completes: {:?}",
        response.headers().get("location")
    );
    assert_eq!(
        response.headers()["location"],
        "/after-login",
        "the login completes"
    );
    World {
        app,
        provider,
        browser,
        keys,
        orders,
    }
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

async fn session_token(w: &World) -> SecretString {
    let session: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_one(&w.app.db.pool)
        .await
        .unwrap();
    courier::db::session_tokens::get(&w.app.db.pool, &w.keys, session)
        .await
        .unwrap()
        .unwrap()
        .tokens
        .access_token
}

#[tokio::test]
async fn a_dpop_bound_call_is_accepted_and_a_replayed_proof_is_refused() {
    let mut w = world(json!({}), None).await;
    // The login's userinfo call and /api/me worked with a DPoP-bound token.
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);

    let response = call(&mut w, "orders").await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["token"]["token_type"], "DPoP", "{echo}");
    assert_eq!(echo["headers"]["authorization"], "DPoP <redacted>");
    let jkt = echo["token"]["jkt"]
        .as_str()
        .expect("a bound token")
        .to_owned();

    // The same proof again, with the same token, straight to the service: refused.
    let proof = echo["headers"]["dpop"].as_str().unwrap().to_owned();
    let token = session_token(&w).await;
    let replay = reqwest::Client::new()
        .get(format!("{}/x", w.orders))
        .header("authorization", format!("DPoP {}", token.expose_secret()))
        .header("dpop", &proof)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let body: Value = replay.json().await.unwrap();
    assert_eq!(body["error_description"], "the proof was used before");
    // And the token as a bearer token: refused (the service requires DPoP).
    let bearer = reqwest::Client::new()
        .get(format!("{}/x", w.orders))
        .header("authorization", format!("Bearer {}", token.expose_secret()))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::UNAUTHORIZED);

    // Through courier every call has a fresh proof.
    for _ in 0..3 {
        assert_eq!(call(&mut w, "orders").await.status(), StatusCode::OK);
    }

    // A refresh with a proof keeps the binding to the session's key.
    w.app.clock.advance(chrono::Duration::seconds(3600));
    let response = call(&mut w, "orders").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(w.provider.grants("refresh_token").await, 1);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["token"]["jkt"], jkt.as_str());

    // An exchange with a proof of the subject token's key: the new token is bound to it too.
    let response = call(&mut w, "reports").await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["token"]["aud"], "reports-api", "{echo}");
    assert_eq!(echo["token"]["jkt"], jkt.as_str());
    assert_eq!(w.provider.grants(TOKEN_EXCHANGE).await, 1);
}

#[tokio::test]
async fn nonces_from_the_provider_and_the_service_are_used_after_one_retry_and_then_up_front() {
    let mut w = world(json!({ "dpop_require_nonce": true }), Some("nonce-1")).await;
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(call(&mut w, "orders").await.status(), StatusCode::OK);
    }
    // Only the first call's first try lacked the nonce; the others sent it up front.
    let metrics = reqwest::get(w.app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |status: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("courier_service_calls_total")
                    && l.contains("service=\"orders\"")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("401"), 1, "{metrics}");
    assert_eq!(count("200"), 2, "{metrics}");
    // The provider's nonce served the refresh as well.
    w.app.clock.advance(chrono::Duration::seconds(3600));
    assert_eq!(call(&mut w, "orders").await.status(), StatusCode::OK);
    assert_eq!(w.provider.grants("refresh_token").await, 1);
}

#[tokio::test]
async fn a_linked_account_and_courier_own_client_token_are_dpop_bound_too() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let main = NodeProvider::for_courier(port, json!({})).await;
    let other = NodeProvider::for_courier_as(port, "other", json!({})).await;
    let calendar = dpop_demo(&other, None, None);
    let machine = dpop_demo(&other, None, None);
    let mut settings = AppSettings::new(&main.issuer);
    settings.extra_toml = format!(
        "\n[[providers]]\nid = \"other\"\nissuer = \"{}\"\nclient_id = \"courier\"\n\
         client_secret = \"courier-secret\"\nscopes = [\"openid\", \"offline_access\"]\n\
         dpop = true\n",
        other.issuer
    );
    let settings = settings
        .service("calendar", &format!("{calendar}/"), "provider = \"other\"")
        .service(
            "machine",
            &format!("{machine}/"),
            "provider = \"other\"\ntoken = \"client\"\nscopes = [\"api:read\"]",
        );
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    let response = app
        .connect(&mut browser, "calendar", "alice-at-other")
        .await;
    assert_eq!(response.headers()["location"], "/settings");

    let response = app
        .api(
            &mut browser,
            reqwest::Method::GET,
            "/api/services/calendar/x",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["token"]["sub"], "alice-at-other");
    assert_eq!(echo["token"]["token_type"], "DPoP");

    let response = app
        .api(
            &mut browser,
            reqwest::Method::GET,
            "/api/services/machine/x",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["token"]["token_type"], "DPoP");
    // courier's own key for the provider is kept, sealed, for every instance.
    assert_eq!(app.db.count("client_dpop_keys").await, 1);
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT private_key FROM client_dpop_keys")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sealed[0], 1, "sealed with the key ring's version byte");
}
