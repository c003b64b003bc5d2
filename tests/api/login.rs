//! The whole login against a real OpenID provider (node-oidc-provider).

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};

use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp};

async fn spawn_app_with_real_provider() -> (TestApp, NodeProvider) {
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let app = TestApp::spawn(listener, AppSettings::new(&provider.issuer)).await;
    (app, provider)
}

#[tokio::test]
async fn a_user_logs_in_at_a_real_provider_and_reads_api_me() {
    let (app, provider) = spawn_app_with_real_provider().await;
    let mut browser = Browser::new();
    let response = app.login(&mut browser, "alice").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/after-login");

    let response = app.me(&mut browser).await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["provider"], "main");
    assert_eq!(me["sub"], "alice");
    assert_eq!(me["name"], "User alice");
    assert_eq!(me["email"], "alice@example.test");
    assert_eq!(me["claims"]["iss"], provider.issuer.as_str());
    assert_eq!(me["claims"]["email_verified"], true);

    let (refresh, scopes): (Option<Vec<u8>>, Vec<String>) =
        sqlx::query_as("SELECT refresh_token, scopes FROM session_tokens")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(refresh.is_some(), "offline_access gave a refresh token");
    assert!(scopes.contains(&"offline_access".to_owned()), "{scopes:?}");
}

#[tokio::test]
async fn two_tabs_logging_in_at_once_both_complete() {
    let (app, _provider) = spawn_app_with_real_provider().await;
    let mut browser = Browser::new();
    let first_form = app.start_login_at_provider(&mut browser, "/tab-one").await;
    let second_form = app.start_login_at_provider(&mut browser, "/tab-two").await;

    let first = app
        .finish_login_at_provider(&mut browser, first_form, "bob")
        .await;
    assert_eq!(first.headers()[LOCATION], "/tab-one");
    let second = app
        .finish_login_at_provider(&mut browser, second_form, "bob")
        .await;
    assert_eq!(second.headers()[LOCATION], "/tab-two");

    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    assert_eq!(me["sub"], "bob");
}

#[tokio::test]
async fn a_code_used_twice_is_refused() {
    // The replay below reads `state` from a front-channel request: no PAR.
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.extra_toml = "par = \"off\"\n".into();
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    let form = app.start_login_at_provider(&mut browser, "/").await;
    // Stop at the redirect to courier's callback to keep the code.
    let post = form.join(&format!("{}/login", form.path())).unwrap();
    let response = browser
        .send(
            reqwest::Method::POST,
            post.as_str(),
            &[],
            Some(&[("login", "carol"), ("password", "x")]),
        )
        .await;
    let next = crate::helpers::location(&post, &response);
    let (_, at_provider) = browser
        .follow(next.as_str(), |u| u.port() == Some(app.port))
        .await;
    let callback = crate::helpers::location(&next, &at_provider);
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let first = browser.get(callback.as_str()).await;
    assert_eq!(first.headers()[LOCATION], "/");

    // A new login in another browser, answered with the spent code.
    let mut other = Browser::new();
    let authorize = app.authorize_url(&mut other, "/").await;
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    // The provider names itself in its callbacks (RFC 9207), so a replay would too.
    let iss = callback
        .query_pairs()
        .find(|(k, _)| k == "iss")
        .map(|(_, v)| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>())
        .unwrap_or_default();
    let replay = other
        .get(&app.url(&format!(
            "/auth/callback/main?code={code}&state={state}&iss={iss}"
        )))
        .await;
    assert_eq!(
        replay.headers()[LOCATION],
        "/?login_error=token_exchange_failed"
    );
    assert!(other.cookie(&app.address, "__Host-courier").is_none());
}
