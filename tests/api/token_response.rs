//! A token response that parses but carries an ID token openidconnect cannot read (a required
//! claim missing): at the code exchange the login fails as `invalid_id_token` with a log that
//! names the claim, not as a provider outage; at a refresh the session keeps its new access
//! token and its old ID token.

use chrono::Duration;
use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::fake_provider::{FakeProvider, spawn_app_with_fake, start_login};
use crate::helpers::{AppSettings, Browser, CapturedLog, TestApp, spawn_demo_api};

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

/// Logs in with the claims `claims(nonce)` makes, signed by the provider's key; returns where
/// the callback sent the browser.
async fn login_with_claims(
    app: &TestApp,
    fake: &FakeProvider,
    claims: impl Fn(&str) -> Value,
) -> String {
    let mut browser = Browser::new();
    let login = start_login(app, &mut browser, "/").await;
    fake.answer_token_with(&fake.sign("signing", &claims(&login.nonce)))
        .await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_id_token_without_iat_or_sub_fails_the_login_as_invalid_id_token_naming_the_claim() {
    let log = CapturedLog::install();
    let (app, fake) = spawn_app_with_fake().await;
    for claim in ["iat", "sub"] {
        let location =
            login_with_claims(&app, &fake, |nonce| without(fake.claims(nonce), claim)).await;
        assert_eq!(
            location, "/?login_error=invalid_id_token",
            "without {claim}"
        );
        let text = log.text();
        assert!(
            text.contains(&format!("the ID token has no `{claim}`")),
            "the log names `{claim}`: {text}"
        );
    }
    let text = log.text();
    assert!(
        !text.contains("unavailable"),
        "no outage is claimed: {text}"
    );
    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(app.db.count("users").await, 0);
    // The provider is fine, and so is courier: a good ID token logs in.
    let location = login_with_claims(&app, &fake, |nonce| fake.claims(nonce)).await;
    assert_eq!(location, "/");
}

#[tokio::test]
async fn a_refreshed_id_token_without_iat_keeps_the_session_and_its_old_id_token() {
    let log = CapturedLog::install();
    let fake = FakeProvider::start().await;
    // The logout URL carries the session's ID token as `id_token_hint`: it shows which is kept.
    fake.advertise(json!({ "end_session_endpoint": format!("{}/logout", fake.issuer) }))
        .await;
    let demo = spawn_demo_api(None);
    let settings = AppSettings::new(&fake.issuer).service(
        "orders",
        &format!("{demo}/"),
        "provider = \"main\"",
    );
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    let login = start_login(&app, &mut browser, "/").await;
    let login_id_token = fake.sign("signing", &fake.claims(&login.nonce));
    fake.answer_token_with(&login_id_token).await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(response.headers()[LOCATION], "/");

    let bad = fake.sign("signing", &without(fake.claims("unused"), "iat"));
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "refreshed-access-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": "refreshed-refresh-token",
            "id_token": bad,
        })))
        .with_priority(1)
        .mount(&fake.server)
        .await;
    app.clock.advance(Duration::seconds(3600));
    let call = app
        .api(&mut browser, Method::GET, "/api/services/orders/x")
        .await;
    assert_eq!(call.status(), StatusCode::OK, "the refresh served the call");
    let refreshes = fake
        .server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("grant_type=refresh_token"))
        .count();
    assert_eq!(refreshes, 1);
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    assert_eq!(me["sub"], "alice");
    let text = log.text();
    assert!(
        text.contains("refreshed ID token rejected") && text.contains("the ID token has no `iat`"),
        "the log names the claim: {text}"
    );

    let logout: Value = browser
        .send(
            Method::POST,
            &app.url("/auth/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let logout_url = url::Url::parse(logout["logout_url"].as_str().unwrap()).unwrap();
    let hint = logout_url
        .query_pairs()
        .find(|(k, _)| k == "id_token_hint")
        .map(|(_, v)| v.into_owned());
    assert_eq!(hint, Some(login_id_token), "the login's ID token is kept");
}
