//! Several login providers: node-oidc-provider (`main`, the default) and django-oauth-toolkit
//! (`dot`) side by side, two implementations; `/auth/providers`, a login through each, a user
//! per identity, services that follow the session's provider, logout at the session's own
//! provider; and, with two node-oidc-providers that both know `alice`, a back-channel logout
//! that ends only its own provider's sessions, and a token-exchange service that follows the
//! session's provider.

use reqwest::header::LOCATION;
use reqwest::{Method, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::dot::{DotProvider, login_at, spawn_demo_api_checking_at};
use crate::helpers::{
    AppSettings, Browser, CLIENT_ID, CLIENT_SECRET, NodeProvider, TOKEN_EXCHANGE, TestApp,
    spawn_demo_api, spawn_demo_api_with,
};

async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The entry for `name` in a `/api/services` answer.
fn service<'a>(services: &'a Value, name: &str) -> &'a Value {
    services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} is listed: {services}"))
}

/// courier with node-oidc-provider as `main` (listed first: the default) and DOT as `dot`,
/// both login providers, a plain OAuth provider `github` that is not one, and a service per
/// provider (`orders` of main, `reports` of dot), each the demo API checking its tokens by
/// introspection at its provider (so a token of the other provider is refused).
struct TwoProviders {
    app: TestApp,
    node: NodeProvider,
    dot: DotProvider,
    keys: Vec<String>,
}

impl TwoProviders {
    async fn start() -> Self {
        let listener = TestApp::bind();
        let port = listener.local_addr().unwrap().port();
        let node = NodeProvider::for_courier(port, json!({})).await;
        let dot = DotProvider::start(json!({
            "access_token_ttl": 3600,
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback/dot")],
                "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/")],
            }]
        }))
        .await;
        let orders = spawn_demo_api(Some(&node.issuer));
        let reports = spawn_demo_api_checking_at(&dot);
        let mut settings = AppSettings::new(&node.issuer);
        // These lines continue the `main` provider's table; then the other providers.
        settings.extra_toml = format!(
            r#"display_name = "Example ID"

[[providers]]
id = "dot"
issuer = "{dot_issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email"]
revocation_endpoint = "{revocation}"
login = true

[[providers]]
id = "github"
authorization_endpoint = "http://127.0.0.1:9/login/oauth/authorize"
token_endpoint = "http://127.0.0.1:9/login/oauth/access_token"
client_id = "gh"
client_secret = "gh-secret"
"#,
            dot_issuer = dot.issuer,
            revocation = dot.endpoint("revoke_token"),
        );
        let settings = settings
            .service(
                "orders",
                &format!("{orders}/"),
                "provider = \"main\"\nscopes = [\"orders:read\"]",
            )
            .service("reports", &format!("{reports}/"), "provider = \"dot\"");
        let keys = settings.encryption_keys.clone();
        let app = TestApp::spawn(listener, settings).await;
        TwoProviders {
            app,
            node,
            dot,
            keys,
        }
    }

    /// The refresh token of the (one) session that logged in with `provider`.
    async fn refresh_token(&self, provider: &str) -> SecretString {
        let keys: Vec<SecretString> = self.keys.iter().map(|k| k.clone().into()).collect();
        let ring = courier::crypto::KeyRing::from_config(&keys).unwrap();
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions WHERE provider = $1")
            .bind(provider)
            .fetch_one(&self.app.db.pool)
            .await
            .unwrap();
        courier::db::session_tokens::get(&self.app.db.pool, &ring, id)
            .await
            .unwrap()
            .unwrap()
            .tokens
            .refresh_token
            .unwrap()
    }

    /// A browser signed in as `user` at node-oidc-provider (`main`), through the default.
    async fn login_main(&self, user: &str) -> Browser {
        let mut browser = Browser::new();
        let response = self.app.login(&mut browser, user).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()[LOCATION], "/after-login");
        browser
    }

    /// A browser signed in as `user` at DOT, through `/auth/login?provider=dot`.
    async fn login_dot(&self, user: &str) -> Browser {
        let mut browser = Browser::new();
        let (callback, response) = login_at(
            &self.app,
            &mut browser,
            "/auth/login?provider=dot&return_to=/from-dot",
            user,
            true,
        )
        .await;
        assert_eq!(callback.path(), "/auth/callback/dot");
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()[LOCATION], "/from-dot");
        browser
    }

    async fn get(&self, browser: &mut Browser, path: &str) -> (StatusCode, Value) {
        json_of(self.app.api(browser, Method::GET, path).await).await
    }
}

#[tokio::test]
async fn auth_providers_lists_the_login_providers_in_order_with_their_names() {
    let w = TwoProviders::start().await;
    // No session, no CSRF header.
    let response = reqwest::get(w.app.url("/auth/providers")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"providers": [
            {"id": "main", "name": "Example ID"},
            {"id": "dot", "name": "dot"},
        ]}),
        "login providers only (not github), the display name or else the id"
    );
}

#[tokio::test]
async fn a_login_names_a_login_provider_or_gets_the_default_and_anything_else_is_400() {
    let w = TwoProviders::start().await;
    let mut browser = Browser::new();
    let to = |response: &Response| -> String {
        response.headers()[LOCATION]
            .to_str()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned()
    };
    let default = browser.get(&w.app.url("/auth/login")).await;
    assert_eq!(default.status(), StatusCode::FOUND);
    assert_eq!(to(&default), format!("{}/auth", w.node.issuer));
    let dot = browser.get(&w.app.url("/auth/login?provider=dot")).await;
    assert_eq!(dot.status(), StatusCode::FOUND);
    assert_eq!(to(&dot), format!("{}/authorize/", w.dot.issuer));
    let main = browser.get(&w.app.url("/auth/login?provider=main")).await;
    assert_eq!(to(&main), format!("{}/auth", w.node.issuer));

    let pending_before = browser.cookie_names(&w.app.address).len();
    for query in [
        "provider=nope",
        "provider=github",
        "provider=",
        "provider=MAIN",
        "provider=main&provider=dot",
    ] {
        let response = browser
            .get(&w.app.url(&format!("/auth/login?{query}")))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "bad_request", "{query}");
    }
    assert_eq!(
        browser.cookie_names(&w.app.address).len(),
        pending_before,
        "a refused login starts nothing"
    );
}

#[tokio::test]
async fn each_login_provider_gives_its_own_user_and_the_services_follow_the_session() {
    let w = TwoProviders::start().await;
    let mut at_main = w.login_main("alice").await;
    let mut at_dot = w.login_dot("alice").await;

    let (status, me_main) = w.get(&mut at_main, "/api/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me_main["provider"], "main");
    assert_eq!(me_main["sub"], "alice");
    let (status, me_dot) = w.get(&mut at_dot, "/api/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me_dot["provider"], "dot");
    assert_ne!(
        me_main["user_id"], me_dot["user_id"],
        "one user per identity: accounts are never merged"
    );
    assert_eq!(w.app.db.count("users").await, 2);

    // A service of the session's provider uses the session's tokens; the other provider's is
    // a linked account to connect.
    let (_, services) = w.get(&mut at_main, "/api/services").await;
    let (orders, reports) = (service(&services, "orders"), service(&services, "reports"));
    assert_eq!(orders["linked"], false);
    assert_eq!(orders["status"], "connected");
    assert!(orders.get("connect_url").is_none());
    assert_eq!(reports["linked"], true);
    assert_eq!(reports["status"], "not_connected");
    assert_eq!(reports["connect_url"], "/auth/connect/reports");
    let (_, services) = w.get(&mut at_dot, "/api/services").await;
    let (orders, reports) = (service(&services, "orders"), service(&services, "reports"));
    assert_eq!(reports["linked"], false);
    assert_eq!(reports["status"], "connected");
    assert_eq!(orders["linked"], true);
    assert_eq!(orders["status"], "not_connected");
    assert_eq!(orders["connect_url"], "/auth/connect/orders");

    // The proxy agrees: each session calls its own provider's service with its own token
    // (each service checks it at its provider).
    let (status, echo) = w.get(&mut at_main, "/api/services/orders/x").await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["token"]["active"], true);
    assert_eq!(echo["token"]["sub"], "alice");
    let (status, body) = w.get(&mut at_main, "/api/services/reports/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "connect_required");
    assert_eq!(body["connect_url"], "/auth/connect/reports");
    let (status, echo) = w.get(&mut at_dot, "/api/services/reports/x").await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["token"]["active"], true);
    assert_eq!(echo["token"]["client_id"], CLIENT_ID);
    let (status, body) = w.get(&mut at_dot, "/api/services/orders/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "connect_required");

    // Connecting the service of the session's own provider links nothing: back to return_to.
    let response = at_main
        .get(&w.app.url("/auth/connect/orders?return_to=/settings"))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/settings");
    // The other one goes to its provider, as a linked account.
    let response = at_main
        .get(&w.app.url("/auth/connect/reports?return_to=/settings"))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()[LOCATION].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/authorize/", w.dot.issuer)),
        "{location}"
    );
}

#[tokio::test]
async fn a_linked_account_at_a_login_provider_serves_other_sessions_and_the_sessions_own_tokens_win()
 {
    let w = TwoProviders::start().await;
    // alice signs in at DOT and links her node-oidc-provider account for `orders`.
    let mut at_dot = w.login_dot("alice").await;
    let response = w.app.connect(&mut at_dot, "orders", "alice").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/settings");
    // The link's token was asked for with the service's scopes too; the login's was not.
    let has_service_scope = |echo: &Value| {
        echo["token"]["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "orders:read")
    };
    let (status, linked) = w.get(&mut at_dot, "/api/services/orders/x").await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    assert!(has_service_scope(&linked), "{linked}");
    let (_, me_dot) = w.get(&mut at_dot, "/api/me").await;

    // Then she signs in with that node-oidc-provider account: the identity she linked is hers,
    // so it is the same user; this session calls `orders` with its own token, not the link.
    let mut at_main = w.login_main("alice").await;
    let (_, me_main) = w.get(&mut at_main, "/api/me").await;
    assert_eq!(me_main["provider"], "main");
    assert_eq!(me_main["user_id"], me_dot["user_id"]);
    let (_, services) = w.get(&mut at_main, "/api/services").await;
    assert_eq!(service(&services, "orders")["linked"], false);
    assert_eq!(service(&services, "reports")["linked"], true);
    let (status, own) = w.get(&mut at_main, "/api/services/orders/x").await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own["token"]["sub"], "alice");
    assert!(!has_service_scope(&own), "the session's own token: {own}");

    // The DOT session still uses the link.
    let (status, again) = w.get(&mut at_dot, "/api/services/orders/x").await;
    assert_eq!(status, StatusCode::OK);
    assert!(has_service_scope(&again), "{again}");

    // Disconnecting the link ends it for the DOT session; the session that signed in with
    // that account keeps its user and its own tokens.
    let response = w
        .app
        .api(&mut at_dot, Method::DELETE, "/api/connections/orders")
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = w.get(&mut at_dot, "/api/services/orders/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "connect_required");
    // Past the few seconds `/api/me` keeps a view cached: read from Postgres.
    w.app.clock.advance(chrono::Duration::seconds(10));
    let (status, me) = w.get(&mut at_main, "/api/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], me_dot["user_id"]);
    let (status, own) = w.get(&mut at_main, "/api/services/orders/x").await;
    assert_eq!(status, StatusCode::OK, "{own}");
}

#[tokio::test]
async fn logout_goes_to_the_end_session_endpoint_of_the_sessions_own_provider() {
    let w = TwoProviders::start().await;
    let mut at_main = w.login_main("alice").await;
    let mut at_dot = w.login_dot("alice").await;
    let main_refresh = w.refresh_token("main").await;
    let dot_refresh = w.refresh_token("dot").await;

    let logout_url = |body: &Value| body["logout_url"].as_str().unwrap().to_owned();
    let response = at_dot
        .send(
            Method::POST,
            &w.app.url("/auth/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        logout_url(&body).starts_with(&format!("{}/logout/?", w.dot.issuer)),
        "{body}"
    );
    assert_eq!(
        w.get(&mut at_dot, "/api/me").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        w.get(&mut at_main, "/api/me").await.0,
        StatusCode::OK,
        "the other provider's session lives on"
    );
    // Revoked at its own provider: DOT refuses the refresh token; node's is untouched.
    let (status, body) = w.dot.refresh(&dot_refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(w.node.is_active(&main_refresh).await);

    let response = at_main
        .send(
            Method::POST,
            &w.app.url("/auth/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await;
    let (_, body) = json_of(response).await;
    assert!(
        logout_url(&body).starts_with(&format!("{}/session/end?", w.node.issuer)),
        "{body}"
    );
    assert!(!w.node.is_active(&main_refresh).await);
}

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A logout token for `sub`, signed by node-oidc-provider's own key (its test hook).
async fn logout_token(provider: &NodeProvider, sub: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    reqwest::Client::new()
        .post(format!("{}/__test/sign", provider.issuer))
        .json(&json!({
            "header": {"typ": "logout+jwt"},
            "claims": {
                "iss": provider.issuer,
                "aud": CLIENT_ID,
                "iat": now,
                "exp": now + 120,
                "jti": uuid::Uuid::new_v4().to_string(),
                "events": { BACKCHANNEL_EVENT: {} },
                "sub": sub,
            },
        }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_back_channel_logout_ends_only_the_sessions_of_its_own_provider() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let main = NodeProvider::for_courier(port, json!({})).await;
    let second = NodeProvider::for_courier_as(port, "second", json!({})).await;
    let mut settings = AppSettings::new(&main.issuer);
    settings.extra_toml = format!(
        r#"
[[providers]]
id = "second"
issuer = "{}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
"#,
        second.issuer
    );
    let app = TestApp::spawn(listener, settings).await;

    // `alice` at each provider: the same subject, two identities, two users.
    let mut at_main = Browser::new();
    app.login(&mut at_main, "alice").await;
    let mut at_second = Browser::new();
    let form = app
        .provider_form(&mut at_second, "/auth/login?provider=second&return_to=/")
        .await;
    assert_eq!(
        form.origin().ascii_serialization(),
        url::Url::parse(&second.issuer)
            .unwrap()
            .origin()
            .ascii_serialization()
    );
    app.finish_login_at_provider(&mut at_second, form, "alice")
        .await;
    let (_, me_main) = json_of(app.me(&mut at_main).await).await;
    let (_, me_second) = json_of(app.me(&mut at_second).await).await;
    assert_eq!(me_main["sub"], "alice");
    assert_eq!(me_second["sub"], "alice");
    assert_eq!(me_second["provider"], "second");
    assert_ne!(me_main["user_id"], me_second["user_id"]);

    // `second` says alice signed out there; `main` has said nothing.
    let token = logout_token(&second, "alice").await;
    let response = reqwest::Client::new()
        .post(app.url("/auth/backchannel-logout/second"))
        .form(&[("logout_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.me(&mut at_second).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me(&mut at_main).await.status(), StatusCode::OK);

    // A token of `second` sent to `main`'s endpoint is not `main`'s: refused, nothing ends.
    let token = logout_token(&second, "alice").await;
    let response = reqwest::Client::new()
        .post(app.url("/auth/backchannel-logout/main"))
        .form(&[("logout_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.me(&mut at_main).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_exchange_service_uses_the_sessions_own_token_at_its_provider_and_a_linked_account_elsewhere()
 {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let main = NodeProvider::for_courier(port, json!({})).await;
    let second = NodeProvider::for_courier_as(
        port,
        "second",
        json!({ "resource_servers": { "reports-api": { "scope": "reports:read" } } }),
    )
    .await;
    let reports = spawn_demo_api_with(
        &second.issuer,
        demo_api::DemoConfig {
            audience: Some("reports-api".to_owned()),
            ..Default::default()
        },
    );
    let mut settings = AppSettings::new(&main.issuer);
    settings.extra_toml = format!(
        r#"
[[providers]]
id = "second"
issuer = "{}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
"#,
        second.issuer
    );
    let app = TestApp::spawn(
        listener,
        settings.service(
            "reports",
            &format!("{reports}/"),
            "provider = \"second\"\ntoken = \"exchange\"\naudience = \"reports-api\"",
        ),
    )
    .await;
    let call = async |browser: &mut Browser| {
        json_of(
            app.api(browser, Method::GET, "/api/services/reports/x")
                .await,
        )
        .await
    };

    // Signed in at `second`: the session's own token is exchanged, nothing to connect.
    let mut at_second = Browser::new();
    let form = app
        .provider_form(&mut at_second, "/auth/login?provider=second&return_to=/")
        .await;
    app.finish_login_at_provider(&mut at_second, form, "alice")
        .await;
    let (_, services) = json_of(app.api(&mut at_second, Method::GET, "/api/services").await).await;
    let entry = service(&services, "reports");
    assert_eq!(entry["linked"], false);
    assert_eq!(entry["status"], "connected");
    assert!(entry.get("connect_url").is_none());
    let (status, echo) = call(&mut at_second).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["token"]["sub"], "alice");
    assert_eq!(echo["token"]["aud"], "reports-api");
    assert_eq!(second.grants(TOKEN_EXCHANGE).await, 1);
    assert_eq!(app.db.count("linked_accounts").await, 0);

    // Signed in at `main`: the same service needs the user's linked account at `second`.
    let mut at_main = Browser::new();
    app.login(&mut at_main, "alice").await;
    let (_, services) = json_of(app.api(&mut at_main, Method::GET, "/api/services").await).await;
    let entry = service(&services, "reports");
    assert_eq!(entry["linked"], true);
    assert_eq!(entry["status"], "not_connected");
    assert_eq!(entry["connect_url"], "/auth/connect/reports");
    let (status, body) = call(&mut at_main).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "connect_required");
    assert_eq!(body["connect_url"], "/auth/connect/reports");
    assert_eq!(
        second.grants(TOKEN_EXCHANGE).await,
        1,
        "nothing was exchanged"
    );

    let response = app.connect(&mut at_main, "reports", "carol").await;
    assert_eq!(response.headers()[LOCATION], "/settings");
    let (status, echo) = call(&mut at_main).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["token"]["sub"], "carol", "the linked account's token");
    assert_eq!(echo["token"]["aud"], "reports-api");
    assert_eq!(second.grants(TOKEN_EXCHANGE).await, 2);
    assert_eq!(main.grants(TOKEN_EXCHANGE).await, 0);

    // The session at `second` keeps its own exchanged token.
    let (status, echo) = call(&mut at_second).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["token"]["sub"], "alice");
    assert_eq!(second.grants(TOKEN_EXCHANGE).await, 2);
}
