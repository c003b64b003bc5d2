//! FAPI building blocks against node-oidc-provider: pushed authorization requests (RFC 9126),
//! `private_key_jwt` client authentication (RFC 7523) and courier's `/.well-known/jwks.json`.

use std::path::PathBuf;

use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{
    AppSettings, Browser, CLIENT_ID, CLIENT_SECRET, NodeProvider, TOKEN_EXCHANGE, TestApp,
    spawn_demo_api, spawn_demo_api_with,
};

fn key_path(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/api/keys")
        .join(name)
        .display()
        .to_string()
}

fn key_pem(name: &str) -> String {
    std::fs::read_to_string(key_path(name)).unwrap()
}

/// The public JWK courier publishes for the key in `name` (as a provider registers it).
fn public_jwk(name: &str, alg: &str) -> Value {
    let key = courier::domain::client_key::ClientKey::from_pem(&key_pem(name)).unwrap();
    let mut jwk = serde_json::to_value(key.public_jwk(alg == "PS256")).unwrap();
    jwk["alg"] = json!(alg);
    jwk
}

/// node-oidc-provider's registration of courier's `private_key_jwt` client `bank`, for the app
/// on `port`; `fields` adds to it (`jwks`, `jwks_uri`, `token_endpoint_auth_signing_alg`).
fn bank_client(port: u16, fields: Value) -> Value {
    let mut client = json!({
        "client_id": "bank",
        "token_endpoint_auth_method": "private_key_jwt",
        "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback/bank")],
        "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut client, fields) {
        base.extend(extra);
    }
    client
}

/// courier's own secret client `courier` (the `main` provider of every test app).
fn main_client(port: u16) -> Value {
    json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback/main")],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types": ["code"],
    })
}

/// A provider with courier's two clients and `extra` settings.
async fn provider_for(port: u16, bank: Value, extra: Value) -> NodeProvider {
    let mut config = json!({ "clients": [main_client(port), bank] });
    if let (Value::Object(base), Value::Object(extra)) = (&mut config, extra) {
        base.extend(extra);
    }
    NodeProvider::start(config).await
}

/// The `bank` login provider at `issuer`, authenticating with `client_key` (a TOML value)
/// and no secret, plus `fields`.
fn bank_provider(issuer: &str, client_key: &str, fields: &str) -> String {
    format!(
        "\n[[providers]]\nid = \"bank\"\nissuer = \"{issuer}\"\nclient_id = \"bank\"\n\
         client_auth = \"private_key_jwt\"\nclient_key = {client_key}\n\
         scopes = [\"openid\", \"profile\", \"offline_access\"]\nlogin = true\n{fields}\n"
    )
}

fn jwks_uri(port: u16) -> Value {
    json!({ "jwks_uri": format!("http://127.0.0.1:{port}/.well-known/jwks.json") })
}

/// Logs in at `bank`; returns courier's answer to the callback.
async fn bank_login(app: &TestApp, browser: &mut Browser) -> reqwest::Response {
    let form = app
        .provider_form(browser, "/auth/login?provider=bank&return_to=/after")
        .await;
    app.finish_login_at_provider(browser, form, "alice").await
}

fn query_names(url: &url::Url) -> Vec<String> {
    let mut names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_login_through_par_shows_the_browser_only_client_id_and_request_uri() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    // The provider refuses any authorization request that was not pushed.
    let provider = NodeProvider::for_courier(port, json!({ "require_par": true })).await;
    let app = TestApp::spawn(listener, AppSettings::new(&provider.issuer)).await;
    let mut browser = Browser::new();

    let authorize = app.authorize_url(&mut browser, "/after").await;
    assert_eq!(query_names(&authorize), ["client_id", "request_uri"]);
    assert!(
        authorize
            .as_str()
            .starts_with(&format!("{}/auth?", provider.issuer))
    );
    let request_uri = authorize
        .query_pairs()
        .find(|(k, _)| k == "request_uri")
        .unwrap()
        .1
        .into_owned();
    assert!(request_uri.starts_with("urn:ietf:params:oauth:request_uri:"));

    let response = app.login(&mut browser, "alice").await;
    assert_eq!(response.headers()[LOCATION], "/after-login");
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn par_off_sends_the_request_through_the_browser() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let provider = NodeProvider::for_courier(port, json!({})).await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml.push_str("par = \"off\"\n");
    let app = TestApp::spawn(listener, settings).await;
    let authorize = app.authorize_url(&mut Browser::new(), "/").await;
    let names = query_names(&authorize);
    assert!(names.contains(&"code_challenge".to_owned()), "{names:?}");
    assert!(!names.contains(&"request_uri".to_owned()));
}

#[tokio::test]
async fn a_provider_without_par_under_required_refuses_to_start_the_login() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let provider = NodeProvider::for_courier(port, json!({ "par": false })).await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml.push_str("par = \"required\"\n");
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    let response = browser.get(&app.url("/auth/login?return_to=/x")).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/?login_error=server_error");
    // No front-channel request, and no pending login left behind.
    assert!(
        browser
            .cookie_names(&app.address)
            .iter()
            .all(|n| !n.contains("-login-"))
    );
}

#[tokio::test]
async fn private_key_jwt_logs_in_refreshes_and_revokes_without_a_secret() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    // The provider fetches courier's keys from its jwks.json; PAR is required, and short-lived
    // access tokens make the first service call refresh.
    let provider = provider_for(
        port,
        bank_client(port, jwks_uri(port)),
        json!({ "require_par": true, "access_token_ttl": 30 }),
    )
    .await;
    let demo = spawn_demo_api(Some(&provider.issuer));
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = bank_provider(
        &provider.issuer,
        &format!("\"{}\"", key_path("client_rsa.pem")),
        "",
    );
    let settings = settings.service("orders", &format!("{demo}/"), "provider = \"bank\"");
    let keys = settings.encryption_keys.clone();
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();

    let response = bank_login(&app, &mut browser).await;
    assert_eq!(response.headers()[LOCATION], "/after");
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    assert_eq!(me["provider"], "bank");
    assert_eq!(me["sub"], "alice");

    let first_refresh = session_refresh_token(&app, &keys).await;
    // Within a quarter of its lifetime of expiry, the token is refreshed first.
    app.clock.advance(chrono::Duration::seconds(25));
    let refreshes = provider.grants("refresh_token").await;
    let call = app
        .api(&mut browser, Method::GET, "/api/services/orders/x")
        .await;
    assert_eq!(call.status(), StatusCode::OK);
    assert_eq!(provider.grants("refresh_token").await, refreshes + 1);

    let refresh = session_refresh_token(&app, &keys).await;
    assert_ne!(
        secrecy::ExposeSecret::expose_secret(&refresh),
        secrecy::ExposeSecret::expose_secret(&first_refresh),
        "rotated"
    );
    assert!(provider.is_active(&refresh).await);
    app.logout(&mut browser).await;
    assert!(!provider.is_active(&refresh).await, "revoked at logout");
}

async fn session_refresh_token(app: &TestApp, keys: &[String]) -> SecretString {
    let keys: Vec<SecretString> = keys.iter().map(|k| k.clone().into()).collect();
    let ring = courier::crypto::KeyRing::from_config(&keys).unwrap();
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    courier::db::session_tokens::get(&app.db.pool, &ring, id)
        .await
        .unwrap()
        .unwrap()
        .tokens
        .refresh_token
        .unwrap()
}

/// Logs in at `bank` with `client_key` against a provider that registered `client` fields;
/// returns the callback's `Location`.
async fn bank_login_with(client_key: &str, client: impl Fn(u16) -> Value, extra: Value) -> String {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let provider = provider_for(port, bank_client(port, client(port)), extra).await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = bank_provider(&provider.issuer, client_key, "");
    let app = TestApp::spawn(listener, settings).await;
    let response = bank_login(&app, &mut Browser::new()).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_rsa_key_signs_ps256_where_the_provider_lists_it() {
    // The client's registration allows PS256 only.
    let location = bank_login_with(
        &format!("\"{}\"", key_path("client_rsa.pem")),
        |port| {
            let mut c = jwks_uri(port);
            c["token_endpoint_auth_signing_alg"] = json!("PS256");
            c
        },
        json!({}),
    )
    .await;
    assert_eq!(location, "/after");
}

#[tokio::test]
async fn an_rsa_key_signs_rs256_where_the_provider_does_not_list_ps256() {
    let location = bank_login_with(
        &format!("\"{}\"", key_path("client_rsa.pem")),
        |port| {
            let mut c = jwks_uri(port);
            c["token_endpoint_auth_signing_alg"] = json!("RS256");
            c
        },
        json!({ "client_auth_signing_algs": ["RS256", "ES256"] }),
    )
    .await;
    assert_eq!(location, "/after");
}

#[tokio::test]
async fn a_p256_key_given_inline_signs_es256() {
    let inline = format!("'''\n{}'''", key_pem("client_p256.pem"));
    let location = bank_login_with(
        &inline,
        |port| {
            let mut c = jwks_uri(port);
            c["token_endpoint_auth_signing_alg"] = json!("ES256");
            c
        },
        json!({}),
    )
    .await;
    assert_eq!(location, "/after");
}

#[tokio::test]
async fn in_a_key_rollover_the_first_key_signs_and_both_are_published() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    // The provider knows only the new key: a login works only if that one signs.
    let provider = provider_for(
        port,
        bank_client(
            port,
            json!({ "jwks": { "keys": [public_jwk("client_rsa_next.pem", "PS256")] } }),
        ),
        json!({}),
    )
    .await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = bank_provider(
        &provider.issuer,
        &format!(
            "[\"{}\", \"{}\"]",
            key_path("client_rsa_next.pem"),
            key_path("client_rsa.pem")
        ),
        "",
    );
    let app = TestApp::spawn(listener, settings).await;

    let response = reqwest::get(app.url("/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cache = response.headers()["cache-control"].to_str().unwrap();
    assert!(cache.starts_with("public, max-age="), "{cache}");
    let jwks: Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0]["kid"],
        public_jwk("client_rsa_next.pem", "PS256")["kid"]
    );
    assert_eq!(keys[1]["kid"], public_jwk("client_rsa.pem", "PS256")["kid"]);
    for key in keys {
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "PS256");
        assert_eq!(key["kty"], "RSA");
        assert!(key.get("d").is_none(), "no private part");
    }

    let response = bank_login(&app, &mut Browser::new()).await;
    assert_eq!(response.headers()[LOCATION], "/after");
}

#[tokio::test]
async fn a_key_the_provider_does_not_know_fails_the_code_exchange() {
    // Without PAR the first authenticated request is the code exchange.
    let location = bank_login_with(
        &format!("\"{}\"", key_path("client_rsa.pem")),
        |_| json!({ "jwks": { "keys": [public_jwk("client_rsa_next.pem", "PS256")] } }),
        json!({ "par": false }),
    )
    .await;
    assert_eq!(location, "/?login_error=token_exchange_failed");
}

#[tokio::test]
async fn a_key_the_provider_does_not_know_fails_the_pushed_request() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let provider = provider_for(
        port,
        bank_client(
            port,
            json!({ "jwks": { "keys": [public_jwk("client_rsa_next.pem", "PS256")] } }),
        ),
        json!({}),
    )
    .await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = bank_provider(
        &provider.issuer,
        &format!("\"{}\"", key_path("client_rsa.pem")),
        "",
    );
    let app = TestApp::spawn(listener, settings).await;
    let response = Browser::new()
        .get(&app.url("/auth/login?provider=bank&return_to=/x"))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/?login_error=server_error");
}

#[tokio::test]
async fn jwks_json_is_404_without_client_keys() {
    // Discovery of an unreachable provider is retried in the background; courier serves.
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new("http://127.0.0.1:1")).await;
    let response = reqwest::get(app.url("/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn private_key_jwt_authenticates_the_token_exchange_too() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let mut bank = bank_client(port, jwks_uri(port));
    bank["grant_types"] = json!(["authorization_code", "refresh_token", TOKEN_EXCHANGE]);
    let provider = provider_for(
        port,
        bank,
        json!({ "resource_servers": { "orders-api": { "scope": "orders:read" } } }),
    )
    .await;
    let orders = spawn_demo_api_with(
        &provider.issuer,
        demo_api::DemoConfig {
            audience: Some("orders-api".to_owned()),
            ..Default::default()
        },
    );
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = bank_provider(
        &provider.issuer,
        &format!("\"{}\"", key_path("client_p256.pem")),
        "",
    );
    let settings = settings.service(
        "orders",
        &format!("{orders}/"),
        "provider = \"bank\"\ntoken = \"exchange\"\naudience = \"orders-api\"\n\
         scopes = [\"orders:read\"]",
    );
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    assert_eq!(
        bank_login(&app, &mut browser).await.headers()[LOCATION],
        "/after"
    );
    let call = app
        .api(&mut browser, Method::GET, "/api/services/orders/x")
        .await;
    assert_eq!(call.status(), StatusCode::OK);
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 1);
}

#[tokio::test]
async fn a_push_to_an_unreachable_provider_is_an_error_not_a_front_channel_fallback() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let mut provider = NodeProvider::for_courier(port, json!({})).await;
    let app = TestApp::spawn(listener, AppSettings::new(&provider.issuer)).await;
    // The metadata (with its PAR endpoint) is loaded; then the provider goes away.
    provider.stop().await;
    let mut browser = Browser::new();
    let response = browser.get(&app.url("/auth/login?return_to=/x")).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()[LOCATION],
        "/?login_error=provider_unavailable"
    );
    // A silent login goes back where it came from, told why.
    let response = browser
        .get(&app.url("/auth/login?return_to=/app&prompt=none"))
        .await;
    assert_eq!(
        response.headers()[LOCATION],
        "/app?login_error=provider_unavailable"
    );
}

/// The provider's signing key without its `alg`, so that it may sign PS256 ID tokens.
fn provider_jwks_for_ps256() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider/jwks.json");
    let mut jwks: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for key in jwks["keys"].as_array_mut().unwrap() {
        key.as_object_mut().unwrap().remove("alg");
    }
    jwks
}

#[tokio::test]
async fn the_fapi2_profile_logs_in_refreshes_and_calls_a_dpop_service_where_its_absence_is_refused()
{
    let fapi_listener = TestApp::bind();
    let plain_listener = TestApp::bind();
    let ports = [
        fapi_listener.local_addr().unwrap().port(),
        plain_listener.local_addr().unwrap().port(),
    ];
    // A provider that requires FAPI 2.0 of `bank`: PAR, private_key_jwt, DPoP-bound tokens,
    // PS256 ID tokens.
    let mut bank = bank_client(
        ports[0],
        json!({
            "jwks": { "keys": [public_jwk("client_rsa.pem", "PS256")] },
            "token_endpoint_auth_signing_alg": "PS256",
            "id_token_signed_response_alg": "PS256",
            "dpop_bound_access_tokens": true,
        }),
    );
    bank["redirect_uris"] = json!(
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/auth/callback/bank"))
            .collect::<Vec<_>>()
    );
    let provider = NodeProvider::start(json!({
        "clients": [main_client(ports[0]), bank],
        "fapi": true,
        "require_par": true,
        "access_token_ttl": 30,
        "jwks": provider_jwks_for_ps256(),
    }))
    .await;
    let orders = spawn_demo_api_with(
        &provider.issuer,
        demo_api::DemoConfig {
            require_dpop: true,
            ..Default::default()
        },
    );
    let key = format!("\"{}\"", key_path("client_rsa.pem"));

    // With the switch: nothing else to configure.
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = bank_provider(&provider.issuer, &key, "profile = \"fapi2\"");
    let settings = settings.service("orders", &format!("{orders}/"), "provider = \"bank\"");
    let app = TestApp::spawn(fapi_listener, settings).await;
    let mut browser = Browser::new();
    let authorize = browser
        .get(&app.url("/auth/login?provider=bank&return_to=/after"))
        .await;
    let authorize = url::Url::parse(authorize.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(query_names(&authorize), ["client_id", "request_uri"]);
    let response = bank_login(&app, &mut browser).await;
    assert_eq!(response.headers()[LOCATION], "/after");
    app.clock.advance(chrono::Duration::seconds(25));
    let call = app
        .api(&mut browser, Method::GET, "/api/services/orders/x")
        .await;
    assert_eq!(
        call.status(),
        StatusCode::OK,
        "a DPoP-bound token with its proof"
    );
    assert_eq!(provider.grants("refresh_token").await, 1);

    // The same configuration without the switch: the provider refuses its tokens request.
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = bank_provider(&provider.issuer, &key, "");
    let app = TestApp::spawn(plain_listener, settings).await;
    let response = bank_login(&app, &mut Browser::new()).await;
    assert_eq!(
        response.headers()[LOCATION],
        "/?login_error=token_exchange_failed"
    );
}

#[tokio::test]
async fn under_fapi2_a_callback_without_iss_is_refused_even_where_none_is_promised() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};

    // A provider that does not advertise RFC 9207, with a PAR endpoint.
    let fake = crate::fake_provider::FakeProvider::start().await;
    fake.advertise(json!({
        "pushed_authorization_request_endpoint": format!("{}/par", fake.issuer),
    }))
    .await;
    Mock::given(method("POST"))
        .and(path("/par"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "request_uri": "urn:ietf:params:oauth:request_uri:abc",
            "expires_in": 60,
        })))
        .mount(&fake.server)
        .await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.main_secret = false;
    settings.extra_toml = format!(
        "profile = \"fapi2\"\nclient_key = \"{}\"\n",
        key_path("client_p256.pem")
    );
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    let response = browser.get(&app.url("/auth/login?return_to=/after")).await;
    let authorize = url::Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(query_names(&authorize), ["client_id", "request_uri"]);

    // The pushed request: authenticated by an ES256 assertion, no secret; it holds `state`.
    let requests = fake.server.received_requests().await.unwrap();
    let pushed = requests.iter().find(|r| r.url.path() == "/par").unwrap();
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&pushed.body)
        .into_owned()
        .collect();
    assert!(!form.contains_key("client_secret"));
    assert!(pushed.headers.get("authorization").is_none());
    let header = jsonwebtoken::decode_header(&form["client_assertion"]).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(form["code_challenge_method"], "S256");

    let response = browser
        .get(&app.url(&format!(
            "/auth/callback/main?code=c&state={}",
            form["state"]
        )))
        .await;
    assert_eq!(
        response.headers()[LOCATION],
        "/?login_error=issuer_mismatch"
    );
    let token_requests = fake
        .server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/token")
        .count();
    assert_eq!(token_requests, 0, "no code was exchanged");
}
