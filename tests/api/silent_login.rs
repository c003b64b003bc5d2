//! Silent login, prompts and hints on `/auth/login` (node-oidc-provider): `prompt=none` comes
//! back to `return_to` with `login_error` when the user must interact, and logs in without a
//! page when the provider still has a session; `prompt` replaces the configured one, and
//! `login_hint`, `max_age`, `acr_values` reach the provider; a session without a refresh token
//! ends when its access token expires.

use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use url::Url;

use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp, location};

async fn app_with(settings: impl FnOnce(&mut AppSettings)) -> (TestApp, NodeProvider) {
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let mut s = AppSettings::new(&provider.issuer);
    settings(&mut s);
    (TestApp::spawn(listener, s).await, provider)
}

fn encoded(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Follows a login from courier's `start` through the provider, without any page in between,
/// to courier's callback; returns courier's answer to it (not followed).
async fn silent(app: &TestApp, browser: &mut Browser, start: &str) -> reqwest::Response {
    let (callback, answer) = browser
        .follow(&app.url(start), |u| {
            u.port() == Some(app.port) && u.path().starts_with("/auth/callback/")
        })
        .await;
    assert!(
        answer.status().is_redirection(),
        "the provider showed a page at {callback}: {}",
        answer.status()
    );
    let callback = location(&callback, &answer);
    assert_eq!(callback.path(), "/auth/callback/main", "{callback}");
    browser.get(callback.as_str()).await
}

#[tokio::test]
async fn a_silent_login_without_a_provider_session_comes_back_to_return_to_with_login_required() {
    let (app, _provider) = app_with(|_| {}).await;
    let mut browser = Browser::new();
    let start = format!(
        "/auth/login?prompt=none&return_to={}",
        encoded("/app?x=1#top")
    );
    let answer = silent(&app, &mut browser, &start).await;
    assert_eq!(answer.status(), StatusCode::FOUND);
    assert_eq!(
        answer.headers()[LOCATION],
        "/app?x=1&login_error=login_required#top"
    );
    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(
        browser
            .cookie_names(&app.address)
            .iter()
            .all(|name| !name.contains("-login-")),
        "the pending login is spent"
    );
}

#[tokio::test]
async fn a_silent_login_with_a_provider_session_signs_in_without_a_page() {
    // Asked for `offline_access`, node-oidc-provider answers a silent login with
    // `consent_required` (a silent login cannot give consent); without it, it signs in.
    let (app, _provider) = app_with(|s| s.scopes = vec!["openid", "profile", "email"]).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    let first: Value = app.me(&mut browser).await.json().await.unwrap();
    // courier's session ends; the provider's stays (the browser does not go to its logout).
    app.logout(&mut browser).await;
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let answer = silent(
        &app,
        &mut browser,
        "/auth/login?prompt=none&return_to=/back",
    )
    .await;
    assert_eq!(answer.status(), StatusCode::FOUND);
    assert_eq!(answer.headers()[LOCATION], "/back");
    let me = app.me(&mut browser).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["sub"], "alice");
    assert_eq!(me["user_id"], first["user_id"]);
}

/// Starts a login at courier with `query`, and answers its callback with the provider's
/// `error` (as a provider redirects the browser): returns where courier sends the browser.
async fn provider_answers(app: &TestApp, issuer: &str, query: &str, error: &str) -> String {
    let mut browser = Browser::new();
    let started = browser.get(&app.url(&format!("/auth/login?{query}"))).await;
    assert_eq!(started.status(), StatusCode::FOUND, "{query}");
    let authorize = Url::parse(started.headers()[LOCATION].to_str().unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let answer = browser
        .get(&app.url(&format!(
            "/auth/callback/main?error={error}&state={state}&iss={}",
            encoded(issuer)
        )))
        .await;
    assert_eq!(answer.status(), StatusCode::FOUND);
    answer.headers()[LOCATION].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn only_a_silent_login_goes_back_to_return_to_and_only_for_the_interaction_errors() {
    let (app, provider) = app_with(|_| {}).await;
    let issuer = &provider.issuer;
    for code in [
        "login_required",
        "interaction_required",
        "consent_required",
        "account_selection_required",
    ] {
        assert_eq!(
            provider_answers(&app, issuer, "prompt=none&return_to=/app", code).await,
            format!("/app?login_error={code}")
        );
        // A login that was allowed to show pages failed for real: the usual error page.
        assert_eq!(
            provider_answers(&app, issuer, "prompt=login&return_to=/app", code).await,
            format!("/?login_error={code}")
        );
    }
    for code in ["access_denied", "server_error"] {
        assert_eq!(
            provider_answers(&app, issuer, "prompt=none&return_to=/app", code).await,
            format!("/?login_error={code}")
        );
    }
    // A provider's made-up code is not echoed, silent or not.
    assert_eq!(
        provider_answers(&app, issuer, "prompt=none&return_to=/app", "weird").await,
        "/?login_error=provider_error"
    );
}

#[tokio::test]
async fn prompt_replaces_the_configured_one_and_hints_reach_the_provider() {
    let (app, _provider) = app_with(|s| {
        // Continues the `main` provider's table.
        s.extra_toml = "authorize_params = { prompt = \"consent\", ui_locales = \"de\" }\n".into();
    })
    .await;
    let mut browser = Browser::new();
    let authorize = |query: &'static str| {
        let app = &app;
        async move {
            let mut browser = Browser::new();
            let response = browser
                .get(&app.url(&format!("/auth/login?return_to=/&{query}")))
                .await;
            assert_eq!(response.status(), StatusCode::FOUND, "{query}");
            let url = Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap();
            let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            pairs
        }
    };
    let values = |pairs: &[(String, String)], name: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };

    let configured = authorize("").await;
    assert_eq!(values(&configured, "prompt"), ["consent"]);
    assert_eq!(values(&configured, "ui_locales"), ["de"]);
    assert!(values(&configured, "login_hint").is_empty());

    let asked = authorize(
        "prompt=login&login_hint=alice%40example.test&max_age=300&acr_values=urn%3Aacr%3Agold%20silver",
    )
    .await;
    assert_eq!(values(&asked, "prompt"), ["login"], "replaced, not added");
    assert_eq!(values(&asked, "ui_locales"), ["de"]);
    assert_eq!(values(&asked, "login_hint"), ["alice@example.test"]);
    assert_eq!(values(&asked, "max_age"), ["300"]);
    assert_eq!(values(&asked, "acr_values"), ["urn:acr:gold silver"]);

    // The provider takes them: its sign-in form is filled in with the hint.
    let form = app
        .provider_form(&mut browser, "/auth/login?return_to=/&login_hint=alice")
        .await;
    let page = browser.get(form.as_str()).await.text().await.unwrap();
    assert!(page.contains(r#"value="alice""#), "{page}");
}

#[tokio::test]
async fn malformed_prompts_and_hints_are_refused_with_400() {
    let (app, _provider) = app_with(|_| {}).await;
    let mut browser = Browser::new();
    let long = "a".repeat(300);
    for query in [
        "prompt=bogus".to_owned(),
        "prompt=none%20login".to_owned(),
        "prompt=none&prompt=login".to_owned(),
        "max_age=-5".to_owned(),
        "max_age=ten".to_owned(),
        format!("login_hint={long}"),
        "login_hint=a%0D%0Ab".to_owned(),
        "acr_values=a%09b".to_owned(),
    ] {
        let response = browser
            .get(&app.url(&format!("/auth/login?return_to=/&{query}")))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "bad_request", "{query}");
        assert!(
            !body["detail"].as_str().unwrap().contains(&long),
            "the value is not echoed"
        );
    }
    assert!(
        browser.cookie_names(&app.address).is_empty(),
        "a refused login starts nothing"
    );
}

#[tokio::test]
async fn a_session_without_a_refresh_token_ends_when_its_access_token_expires() {
    // Without `offline_access`, node-oidc-provider issues no refresh token.
    let mut keys = Vec::new();
    let (app, provider) = app_with(|s| {
        s.scopes = vec!["openid", "profile", "email"];
        keys = s.encryption_keys.clone();
    })
    .await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    let refresh: Option<Vec<u8>> = sqlx::query_scalar("SELECT refresh_token FROM session_tokens")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(refresh.is_none(), "the provider gave no refresh token");
    let cookie = browser.cookie(&app.address, "__Host-courier").unwrap();
    let mut settings = AppSettings::new(&provider.issuer);
    settings.scopes = vec!["openid", "profile", "email"];
    settings.encryption_keys = keys;
    let sibling = app.spawn_sibling(settings).await;
    let mut on_sibling = Browser::new();
    on_sibling.set_cookie(&sibling.address, "__Host-courier", &cookie);

    // The session says when it ends: with the access token (an hour), not in a day.
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    let expires_in = me["session"]["expires_in"].as_i64().unwrap();
    assert!((3500..=3600).contains(&expires_in), "{me}");
    let token_expiry: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM session_tokens")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> = me["session"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(expires_at, token_expiry);
    assert_eq!(sibling.me(&mut on_sibling).await.status(), StatusCode::OK);

    app.clock.advance(chrono::Duration::seconds(3601));
    sibling.clock.advance(chrono::Duration::seconds(3601));
    let code = |response: reqwest::Response| async move {
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (status, body["code"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        code(app.me(&mut browser).await).await,
        (StatusCode::UNAUTHORIZED, "reauth_required".to_owned())
    );
    assert_eq!(app.db.count("sessions").await, 0, "ended, not only refused");
    for (instance, browser) in [(&app, &mut browser), (&sibling, &mut on_sibling)] {
        for path in ["/api/me", "/api/services"] {
            assert_eq!(
                code(instance.api(browser, Method::GET, path).await).await,
                (StatusCode::UNAUTHORIZED, "login_required".to_owned()),
                "{path} on {}",
                instance.address
            );
        }
    }
}

#[tokio::test]
async fn a_session_with_a_refresh_token_keeps_its_configured_lifetime() {
    let (app, _provider) = app_with(|_| {}).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    let expires_in = me["session"]["expires_in"].as_i64().unwrap();
    // The harness's idle timeout (8 h) comes first; the access token's hour does not count.
    assert!(expires_in > 8 * 3600 - 60, "{me}");
    app.clock.advance(chrono::Duration::seconds(3601));
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}
