//! Back-channel logout tokens as providers in the field send them: typed `JWT` or untyped
//! (Keycloak before 25, IdentityServer 6), and without `exp`. Signed by the fake provider.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_provider::{FakeProvider, login_with_fake, now, private_pem};
use crate::helpers::{AppSettings, Browser, CLIENT_ID, TestApp};

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn claims(fake: &FakeProvider) -> Value {
    json!({
        "iss": fake.issuer,
        "aud": CLIENT_ID,
        "iat": now(),
        "exp": now() + 120,
        "jti": uuid::Uuid::new_v4().to_string(),
        "events": { BACKCHANNEL_EVENT: {} },
        "sid": "provider-session-1",
        "sub": "alice",
    })
}

/// Claims without `exp`, issued `age_secs` ago.
fn undated_claims(fake: &FakeProvider, age_secs: i64) -> Value {
    let mut claims = claims(fake);
    claims.as_object_mut().unwrap().remove("exp");
    claims["iat"] = json!(now() - age_secs);
    claims
}

/// A logout token signed by the provider's key, with `typ` as given (or none).
fn sign(typ: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("signing".into());
    header.typ = typ.map(str::to_owned);
    let key = EncodingKey::from_rsa_pem(&private_pem("signing")).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

async fn backchannel(app: &TestApp, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/auth/backchannel-logout/main"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap()
}

async fn logged_in() -> (TestApp, FakeProvider, Browser) {
    let fake = FakeProvider::start().await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    (app, fake, browser)
}

#[tokio::test]
async fn logout_tokens_typed_jwt_or_untyped_end_the_session() {
    let (app, fake, mut browser) = logged_in().await;
    for typ in [
        None,
        Some("JWT"),
        Some("jwt"),
        Some("logout+jwt"),
        Some("application/logout+jwt"),
        Some("Application/Logout+JWT"),
    ] {
        if app.me(&mut browser).await.status() != StatusCode::OK {
            login_with_fake(&app, &fake, &mut browser, "/").await;
        }
        let response = backchannel(&app, &sign(typ, &claims(&fake))).await;
        assert_eq!(response.status(), StatusCode::OK, "typ {typ:?}");
        assert_eq!(
            app.me(&mut browser).await.status(),
            StatusCode::UNAUTHORIZED,
            "typ {typ:?} ended the session"
        );
    }
}

#[tokio::test]
async fn logout_tokens_typed_for_another_purpose_are_refused() {
    let (app, fake, mut browser) = logged_in().await;
    for typ in ["at+jwt", "application/at+jwt", "secevent+jwt", "JOSE", ""] {
        let response = backchannel(&app, &sign(Some(typ), &claims(&fake))).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "typ {typ:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "typ {typ:?}");
        assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK, "{typ}");
    }
    assert_eq!(app.db.count("used_logout_tokens").await, 0);
}

#[tokio::test]
async fn a_recent_logout_token_without_exp_ends_the_session() {
    let (app, fake, mut browser) = logged_in().await;
    let response = backchannel(&app, &sign(Some("JWT"), &undated_claims(&fake, 30))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_logout_token_without_exp_is_refused_once_its_window_has_passed() {
    let (app, fake, mut browser) = logged_in().await;
    // At most 120 s after iat, as the SPEC says: no skew is added to an undated token.
    for age in [600, 190, 130] {
        let token = sign(None, &undated_claims(&fake, age));
        let response = backchannel(&app, &token).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{age} s old");
        assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    }
    // Still inside the window.
    let token = sign(None, &undated_claims(&fake, 100));
    assert_eq!(backchannel(&app, &token).await.status(), StatusCode::OK);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_replayed_logout_token_without_exp_is_refused_even_after_the_purge() {
    let (app, fake, mut browser) = logged_in().await;
    let token = sign(Some("logout+jwt"), &undated_claims(&fake, 100));
    assert_eq!(backchannel(&app, &token).await.status(), StatusCode::OK);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let replay = backchannel(&app, &token).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST, "replay at once");

    // 170 s after iat: the token itself would still pass its time checks, so its jti must
    // survive the purge that every instance runs.
    login_with_fake(&app, &fake, &mut browser, "/").await;
    app.clock.advance(chrono::Duration::seconds(70));
    let clock: courier::clock::SharedClock = app.clock.clone();
    courier::housekeeping::purge_once(&app.db.pool, &clock)
        .await
        .unwrap();
    assert_eq!(app.db.count("used_logout_tokens").await, 1);
    let replay = backchannel(&app, &token).await;
    assert_eq!(
        replay.status(),
        StatusCode::BAD_REQUEST,
        "replay after purge"
    );
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);

    // Once the token is past its window, its jti may go.
    app.clock.advance(chrono::Duration::minutes(5));
    courier::housekeeping::purge_once(&app.db.pool, &clock)
        .await
        .unwrap();
    assert_eq!(app.db.count("used_logout_tokens").await, 0);
    let replay = backchannel(&app, &token).await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST, "too old by now");
}
