//! Logging out: RP-initiated logout with revocation, and back-channel logout from the provider.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::fake_provider::{FakeProvider, login_with_fake, now, private_pem, public_pem};
use crate::helpers::{AppSettings, Browser, CLIENT_ID, CLIENT_SECRET, NodeProvider, TestApp};

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

async fn session_tokens(app: &TestApp, keys: &[String]) -> courier::tokens::TokenSet {
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
}

async fn logout(app: &TestApp, browser: &mut Browser, csrf: bool) -> reqwest::Response {
    let headers: &[(&str, &str)] = if csrf { &[("x-csrf", "1")] } else { &[] };
    browser
        .send(Method::POST, &app.url("/auth/logout"), headers, None)
        .await
}

#[tokio::test]
async fn logout_ends_the_session_revokes_the_refresh_token_and_builds_the_logout_url() {
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let settings = AppSettings::new(&provider.issuer);
    let keys = settings.encryption_keys.clone();
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    let tokens = session_tokens(&app, &keys).await;
    let refresh = tokens.refresh_token.clone().unwrap();
    assert!(provider.is_active(&refresh).await);

    let refused = logout(&app, &mut browser, false).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.db.count("sessions").await,
        1,
        "a refused logout changes nothing"
    );

    let response = logout(&app, &mut browser, true).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let logout_url = url::Url::parse(body["logout_url"].as_str().unwrap()).unwrap();
    assert!(
        logout_url
            .as_str()
            .starts_with(&format!("{}/session/end?", provider.issuer))
    );
    let param = |name: &str| {
        logout_url
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        param("id_token_hint").as_deref(),
        Some(tokens.id_token.unwrap().expose_secret())
    );
    assert_eq!(
        param("post_logout_redirect_uri").unwrap(),
        format!("{}/", app.address)
    );
    assert_eq!(param("client_id").as_deref(), Some(CLIENT_ID));

    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(app.db.count("session_tokens").await, 0);
    assert!(
        browser.cookie(&app.address, "__Host-courier").is_none(),
        "cookie cleared"
    );
    assert!(!provider.is_active(&refresh).await, "refresh token revoked");
    for path in ["/api/me", "/api/services"] {
        let response = app.api(&mut browser, Method::GET, path).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }

    // The provider accepts the logout URL and comes back to courier.
    let page = browser.get(logout_url.as_str()).await;
    assert_eq!(page.status(), StatusCode::OK);

    // Logging out without a session is harmless.
    let again = logout(&app, &mut Browser::new(), true).await;
    assert_eq!(again.status(), StatusCode::OK);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["logout_url"], "/");
}

/// The hidden `xsrf` field of the provider's logout confirmation page.
fn xsrf(page: &str) -> String {
    let at = page.find("name=\"xsrf\"").expect("an xsrf field");
    let value = &page[at..];
    let start = value.find("value=\"").unwrap() + 7;
    value[start..start + value[start..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn a_back_channel_logout_from_the_provider_ends_the_session_on_every_instance() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let provider = NodeProvider::start(json!({
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback/main")],
            "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/")],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "backchannel_logout_uri": format!("http://127.0.0.1:{port}/auth/backchannel-logout/main"),
            "backchannel_logout_session_required": true,
        }]
    }))
    .await;
    let settings = AppSettings::new(&provider.issuer);
    let keys = settings.encryption_keys.clone();
    let first = TestApp::spawn(listener, settings).await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.encryption_keys = keys.clone();
    let second = first.spawn_sibling(settings).await;

    let mut browser = Browser::new();
    first.login(&mut browser, "alice").await;
    let cookie = browser.cookie(&first.address, "__Host-courier").unwrap();
    let mut on_second = Browser::new();
    on_second.set_cookie(&second.address, "__Host-courier", &cookie);
    assert_eq!(second.me(&mut on_second).await.status(), StatusCode::OK);
    let sid: Option<String> = sqlx::query_scalar("SELECT provider_sid FROM sessions")
        .fetch_one(&first.db.pool)
        .await
        .unwrap();
    assert!(sid.is_some(), "the ID token carried the provider's sid");

    // The user signs out at the provider (not through courier).
    let id_token = session_tokens(&first, &keys).await.id_token.unwrap();
    let end = format!(
        "{}/session/end?id_token_hint={}&post_logout_redirect_uri={}",
        provider.issuer,
        id_token.expose_secret(),
        url::form_urlencoded::byte_serialize(format!("{}/", first.address).as_bytes())
            .collect::<String>()
    );
    let page = browser.get(&end).await.text().await.unwrap();
    let confirm = browser
        .send(
            Method::POST,
            &format!("{}/session/end/confirm", provider.issuer),
            &[],
            Some(&[("xsrf", &xsrf(&page)), ("logout", "yes")]),
        )
        .await;
    assert!(confirm.status().is_redirection(), "{}", confirm.status());

    assert_eq!(
        second.me(&mut on_second).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        first.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(first.db.count("sessions").await, 0);
}

pub(crate) fn logout_claims(fake: &FakeProvider) -> Value {
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

pub(crate) fn sign_logout(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("logout+jwt".into());
    let key = EncodingKey::from_rsa_pem(&private_pem(kid)).unwrap();
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

#[tokio::test]
async fn forged_logout_tokens_are_refused_and_leave_the_session_alive() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let fake = FakeProvider::start().await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;

    let without = |name: &str| {
        let mut claims = logout_claims(&fake);
        claims.as_object_mut().unwrap().remove(name);
        sign_logout("signing", &claims)
    };
    let with = |name: &str, value: Value| {
        let mut claims = logout_claims(&fake);
        claims[name] = value;
        sign_logout("signing", &claims)
    };
    let unsigned = {
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "logout+jwt"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(logout_claims(&fake).to_string());
        format!("{header}.{payload}.")
    };
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("signing".into());
        header.typ = Some("logout+jwt".into());
        let key = EncodingKey::from_secret(&public_pem("signing")).unwrap();
        jsonwebtoken::encode(&header, &logout_claims(&fake), &key).unwrap()
    };
    let wrong_typ = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("signing".into());
        header.typ = Some("at+jwt".into());
        let key = EncodingKey::from_rsa_pem(&private_pem("signing")).unwrap();
        jsonwebtoken::encode(&header, &logout_claims(&fake), &key).unwrap()
    };
    let neither = {
        let mut claims = logout_claims(&fake);
        claims.as_object_mut().unwrap().remove("sid");
        claims.as_object_mut().unwrap().remove("sub");
        sign_logout("signing", &claims)
    };
    let cases = vec![
        ("a bad signature", {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("signing".into());
            header.typ = Some("logout+jwt".into());
            let key = EncodingKey::from_rsa_pem(&private_pem("attacker")).unwrap();
            jsonwebtoken::encode(&header, &logout_claims(&fake), &key).unwrap()
        }),
        ("alg none", unsigned),
        ("HS256 keyed with the public key", hs256),
        ("a wrong iss", with("iss", json!("http://evil.example"))),
        ("a wrong aud", with("aud", json!("someone-else"))),
        ("expired", with("exp", json!(now() - 300))),
        ("no exp, issued 10 minutes ago", {
            let mut claims = logout_claims(&fake);
            claims.as_object_mut().unwrap().remove("exp");
            claims["iat"] = json!(now() - 600);
            sign_logout("signing", &claims)
        }),
        ("no iat", without("iat")),
        ("events missing", without("events")),
        (
            "the wrong event",
            with("events", json!({"http://example.com/other": {}})),
        ),
        ("a nonce", with("nonce", json!("n"))),
        ("no jti", without("jti")),
        ("neither sid nor sub", neither),
        ("typ at+jwt", wrong_typ),
        (
            "a key the provider never published",
            sign_logout("attacker", &logout_claims(&fake)),
        ),
        ("not a JWT", "garbage".to_owned()),
    ];
    for (case, token) in cases {
        let response = backchannel(&app, &token).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{case}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{case}");
        assert_eq!(
            app.me(&mut browser).await.status(),
            StatusCode::OK,
            "{case}"
        );
    }
    let missing_field = reqwest::Client::new()
        .post(app.url("/auth/backchannel-logout/main"))
        .form(&[("other", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing_field.status(), StatusCode::BAD_REQUEST);

    // A valid one works, once.
    let valid = sign_logout("signing", &logout_claims(&fake));
    assert_eq!(backchannel(&app, &valid).await.status(), StatusCode::OK);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        backchannel(&app, &valid).await.status(),
        StatusCode::BAD_REQUEST,
        "replayed jti"
    );
}

#[tokio::test]
async fn a_logout_token_with_only_sub_ends_all_of_that_users_sessions() {
    let fake = FakeProvider::start().await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    let (mut one, mut two) = (Browser::new(), Browser::new());
    login_with_fake(&app, &fake, &mut one, "/").await;
    login_with_fake(&app, &fake, &mut two, "/").await;
    assert_eq!(app.db.count("sessions").await, 2);

    let mut claims = logout_claims(&fake);
    claims.as_object_mut().unwrap().remove("sid");
    let other_user = {
        let mut c = claims.clone();
        c["sub"] = json!("bob");
        c["jti"] = json!("other");
        sign_logout("signing", &c)
    };
    let r = backchannel(&app, &other_user).await;
    let status = r.status();
    assert_eq!(
        status,
        StatusCode::OK,
        "{:?} {}",
        r.headers().clone(),
        r.text().await.unwrap()
    );
    assert_eq!(app.db.count("sessions").await, 2, "bob had no session");

    assert_eq!(
        backchannel(&app, &sign_logout("signing", &claims))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(app.me(&mut one).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&mut two).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn housekeeping_purges_what_has_expired_and_nothing_else() {
    let fake = FakeProvider::start().await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.idle_timeout_secs = 600;
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let valid = sign_logout("signing", &logout_claims(&fake));
    let mut claims = logout_claims(&fake);
    claims["sub"] = json!("nobody");
    claims.as_object_mut().unwrap().remove("sid");
    assert_eq!(
        backchannel(&app, &sign_logout("signing", &claims))
            .await
            .status(),
        StatusCode::OK
    );

    let clock: courier::clock::SharedClock = app.clock.clone();
    courier::housekeeping::purge_once(&app.db.pool, &clock)
        .await
        .unwrap();
    assert_eq!(app.db.count("sessions").await, 1, "a live session stays");
    assert_eq!(
        app.db.count("used_logout_tokens").await,
        1,
        "an unexpired jti stays"
    );
    assert_eq!(app.db.count("used_login_states").await, 1);

    app.clock.advance(chrono::Duration::minutes(11));
    courier::housekeeping::purge_once(&app.db.pool, &clock)
        .await
        .unwrap();
    assert_eq!(app.db.count("sessions").await, 0, "idle for 11 minutes");
    assert_eq!(app.db.count("session_tokens").await, 0);
    assert_eq!(app.db.count("used_logout_tokens").await, 0);
    assert_eq!(app.db.count("used_login_states").await, 0);
    drop(valid);
}
