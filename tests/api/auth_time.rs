//! How old a login's authentication is, by its ID token's `auth_time`: courier asks for it where
//! the provider takes the `claims` parameter (in pushed requests too), requires it, recent
//! enough, when the login sent `max_age`, and counts a session whose ID token named none as
//! authenticated long ago, so that a silent login (the provider's single sign-on) cannot end the
//! user's other sessions.

use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::fake_provider::{FakeProvider, login_with_fake, now, spawn_app_with_fake, start_login};
use crate::helpers::{AppSettings, Browser, TestApp};

/// What courier asks for when the provider supports the `claims` parameter.
const CLAIMS_AUTH_TIME: &str = r#"{"id_token":{"auth_time":{"essential":true}}}"#;

fn values(url: &Url, name: &str) -> Vec<String> {
    url.query_pairs()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

async fn end_other_sessions(app: &TestApp, browser: &mut Browser) -> reqwest::Response {
    app.api(browser, Method::DELETE, "/api/sessions").await
}

async fn assert_reauth_required(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "reauth_required", "{body}");
}

/// Starts a login at `/auth/login?return_to=/&{query}` and comes back with an ID token whose
/// `auth_time` is `auth_time` (none when `None`); returns the callback's `Location`.
async fn login_with(
    app: &TestApp,
    fake: &FakeProvider,
    browser: &mut Browser,
    query: &str,
    auth_time: Option<i64>,
) -> String {
    let login = start_login(app, browser, &format!("/&{query}")).await;
    let mut claims = fake.claims(&login.nonce);
    if let Some(auth_time) = auth_time {
        claims["auth_time"] = json!(auth_time);
    }
    fake.answer_token_with(&fake.sign("signing", &claims)).await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_silent_login_without_auth_time_cannot_end_the_other_sessions_right_after_it() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut other = Browser::new();
    login_with_fake(&app, &fake, &mut other, "/").await;

    // The provider still has the user's session: a silent login succeeds without anyone
    // authenticating, and its ID token names no `auth_time`.
    let mut silent = Browser::new();
    let location = login_with(&app, &fake, &mut silent, "prompt=none", None).await;
    assert_eq!(location, "/");
    assert_eq!(app.me(&mut silent).await.status(), StatusCode::OK);

    assert_reauth_required(end_other_sessions(&app, &mut silent).await).await;
    assert_eq!(app.me(&mut other).await.status(), StatusCode::OK);
    assert_eq!(app.db.count("sessions").await, 2);
    let unknown: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE auth_time IS NULL")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        unknown, 2,
        "no auth_time is recorded as unknown, never as now"
    );
}

#[tokio::test]
async fn a_login_asks_for_auth_time_where_the_provider_takes_the_claims_parameter() {
    // A provider that does not say it takes `claims` gets none.
    let (app, _fake) = spawn_app_with_fake().await;
    let url = app.authorize_url(&mut Browser::new(), "/").await;
    assert!(values(&url, "claims").is_empty(), "{url}");

    let fake = FakeProvider::start().await;
    fake.advertise(json!({"claims_parameter_supported": false}))
        .await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    let url = app.authorize_url(&mut Browser::new(), "/").await;
    assert!(values(&url, "claims").is_empty(), "{url}");

    // One that does is asked for `auth_time` as an essential ID-token claim.
    let fake = FakeProvider::start().await;
    fake.advertise(json!({"claims_parameter_supported": true}))
        .await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    let url = app.authorize_url(&mut Browser::new(), "/").await;
    assert_eq!(values(&url, "claims"), [CLAIMS_AUTH_TIME], "{url}");

    // `claims` set in the provider's `authorize_params` is the operator's: left as it is.
    let theirs = r#"{"userinfo":{"email":null}}"#;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.extra_toml = format!("authorize_params = {{ claims = '{theirs}' }}");
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let url = app.authorize_url(&mut Browser::new(), "/").await;
    assert_eq!(values(&url, "claims"), [theirs], "{url}");
}

#[tokio::test]
async fn a_pushed_login_request_asks_for_auth_time_too() {
    let fake = FakeProvider::start().await;
    let issuer = fake.issuer.clone();
    fake.advertise(json!({
        "claims_parameter_supported": true,
        "pushed_authorization_request_endpoint": format!("{issuer}/par"),
    }))
    .await;
    Mock::given(method("POST"))
        .and(path("/par"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "request_uri": "urn:ietf:params:oauth:request_uri:pushed",
            "expires_in": 60,
        })))
        .mount(&fake.server)
        .await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;

    let url = app.authorize_url(&mut Browser::new(), "/").await;
    assert!(
        values(&url, "claims").is_empty(),
        "only the request_uri: {url}"
    );
    let pushed = fake
        .server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/par")
        .expect("the request was pushed");
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&pushed.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let claims: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "claims")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(claims, [CLAIMS_AUTH_TIME], "{form:?}");
}

#[tokio::test]
async fn a_login_sent_with_max_age_needs_a_recent_auth_time_and_can_then_end_the_other_sessions() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut other = Browser::new();
    login_with_fake(&app, &fake, &mut other, "/").await;
    let refused = "/?login_error=unmet_authentication_requirements";
    let fresh_login = "prompt=login&max_age=0";

    // With `max_age`, `auth_time` is required (OpenID Connect Core §2).
    let mut browser = Browser::new();
    let location = login_with(&app, &fake, &mut browser, fresh_login, None).await;
    assert_eq!(location, refused);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.db.count("sessions").await, 1, "no session was made");

    // An authentication older than `max_age` (and the clock skew) is no fresh one.
    let stale = Some(now() - 5 * 60);
    let location = login_with(&app, &fake, &mut browser, fresh_login, stale).await;
    assert_eq!(location, refused);
    let location = login_with(&app, &fake, &mut browser, "max_age=60", stale).await;
    assert_eq!(location, refused);
    assert_eq!(app.db.count("sessions").await, 1, "no session was made");

    // Within `max_age` it logs in.
    let location = login_with(&app, &fake, &mut browser, "max_age=600", stale).await;
    assert_eq!(location, "/");
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);

    // The SPA's fresh login for "sign out everywhere else": it may end the other sessions.
    let mut fresh = Browser::new();
    let location = login_with(&app, &fake, &mut fresh, fresh_login, Some(now())).await;
    assert_eq!(location, "/");
    let response = end_other_sessions(&app, &mut fresh).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.me(&mut other).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me(&mut fresh).await.status(), StatusCode::OK);
}
