//! The session cookie, the CSRF guard, problem documents and server-side expiry.

use actix_web::cookie::{Cookie, SameSite};
use chrono::Duration;
use reqwest::header::SET_COOKIE;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::fake_provider::{FakeProvider, login_with_fake, spawn_app_with_fake};
use crate::helpers::{AppSettings, Browser, TestApp};

const COOKIE: &str = "__Host-courier";

async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code);
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
}

#[tokio::test]
async fn the_session_cookie_is_host_only_secure_httponly_and_lax() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let response = login_with_fake(&app, &fake, &mut browser, "/").await;
    let cookies: Vec<Cookie> = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|h| Cookie::parse(h.to_str().unwrap().to_owned()).unwrap())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.name() == COOKIE)
        .expect("a session cookie");
    assert_eq!(session.secure(), Some(true));
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.same_site(), Some(SameSite::Lax));
    assert_eq!(session.path(), Some("/"));
    assert_eq!(session.domain(), None);

    // Only a hash of the cookie's key is stored.
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_hash FROM sessions")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(hashes.len(), 1);
    assert_eq!(hashes[0].len(), 32);
    assert!(
        !session
            .value()
            .as_bytes()
            .windows(32)
            .any(|w| w == &hashes[0][..])
    );
}

#[tokio::test]
async fn tokens_are_stored_sealed() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let (access, refresh): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT access_token, refresh_token FROM session_tokens")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    for sealed in [&access, &refresh] {
        assert_eq!(sealed[0], 1, "a versioned ciphertext");
        assert!(!String::from_utf8_lossy(sealed).contains("fake-"));
    }
}

#[tokio::test]
async fn api_calls_need_the_csrf_header() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let without = browser.get(&app.url("/api/me")).await;
    assert_problem(without, StatusCode::FORBIDDEN, "csrf_required").await;
    let wrong = browser
        .send(Method::GET, &app.url("/api/me"), &[("x-csrf", "0")], None)
        .await;
    assert_problem(wrong, StatusCode::FORBIDDEN, "csrf_required").await;
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_me_without_a_session_is_401_login_required() {
    let (app, _fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    assert_problem(
        app.me(&mut browser).await,
        StatusCode::UNAUTHORIZED,
        "login_required",
    )
    .await;
    let unknown = app.api(&mut browser, Method::GET, "/api/nope").await;
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
    let wrong_method = app.api(&mut browser, Method::POST, "/api/me").await;
    assert_problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED, "not_allowed").await;
}

#[tokio::test]
async fn api_me_describes_the_user_and_the_session() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let response = app.me(&mut browser).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["provider"], "main");
    assert_eq!(me["sub"], "alice");
    assert_eq!(me["email"], "alice@example.test");
    assert_eq!(me["picture"], "https://example.test/alice.png");
    assert!(me["user_id"].as_str().unwrap().len() == 36);
    assert!(me["session"]["created_at"].is_string());
    assert!(me["session"]["expires_at"].is_string());
    assert!(me["session"]["idle_expires_at"].is_string());
    assert!(me["session"]["expires_in"].as_i64().unwrap() > 0);
    let body = me.to_string();
    assert!(!body.contains("fake-access-token") && !body.contains("fake-refresh-token"));
}

#[tokio::test]
async fn malformed_and_forged_cookies_are_just_no_session() {
    let (app, _fake) = spawn_app_with_fake().await;
    for value in ["", "garbage", "%00%ff", &"A".repeat(3000), "a=b=c"] {
        let mut browser = Browser::new();
        browser.set_cookie(&app.address, COOKIE, value);
        let response = app.me(&mut browser).await;
        assert_problem(response, StatusCode::UNAUTHORIZED, "login_required").await;
    }
}

#[tokio::test]
async fn a_second_login_renews_the_session_key() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let first = browser.cookie(&app.address, COOKIE).unwrap();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let second = browser.cookie(&app.address, COOKIE).unwrap();
    assert_ne!(first, second);
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);

    let mut old = Browser::new();
    old.set_cookie(&app.address, COOKIE, &first);
    assert_eq!(app.me(&mut old).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.db.count("sessions").await, 1);
}

async fn app_with_timeouts(idle: u64, absolute: u64) -> (TestApp, FakeProvider) {
    let fake = FakeProvider::start().await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.idle_timeout_secs = idle;
    settings.absolute_timeout_secs = absolute;
    (TestApp::spawn(TestApp::bind(), settings).await, fake)
}

#[tokio::test]
async fn an_idle_session_expires_on_the_server() {
    let (app, fake) = app_with_timeouts(600, 3600).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    app.clock.advance(Duration::seconds(590));
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    // That request extended the idle expiry.
    app.clock.advance(Duration::seconds(590));
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    app.clock.advance(Duration::seconds(601));
    assert_problem(
        app.me(&mut browser).await,
        StatusCode::UNAUTHORIZED,
        "login_required",
    )
    .await;
}

#[tokio::test]
async fn an_active_session_still_ends_at_the_absolute_timeout() {
    let (app, fake) = app_with_timeouts(600, 1500).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    for _ in 0..2 {
        app.clock.advance(Duration::seconds(500));
        assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    }
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(me["session"]["expires_at"].as_str().unwrap())
            .unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(me["session"]["created_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        (expires - created).num_seconds(),
        1500,
        "the absolute expiry"
    );
    let idle =
        chrono::DateTime::parse_from_rfc3339(me["session"]["idle_expires_at"].as_str().unwrap())
            .unwrap();
    // `expires_in` counts to the earlier of the two; 1000 s of the 1500 have passed.
    let now = created + chrono::Duration::seconds(1000);
    let expires_in = me["session"]["expires_in"].as_i64().unwrap();
    let expected = (idle.min(expires) - now).num_seconds();
    assert!(
        (expires_in - expected).abs() <= 2,
        "{expires_in} vs {expected}"
    );
    assert!((1..=500).contains(&expires_in), "{expires_in}");
    app.clock.advance(Duration::seconds(501));
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_session_made_on_one_instance_works_on_another_after_a_key_rotation() {
    let fake = FakeProvider::start().await;
    let old_key = courier::crypto::generate_key();
    let mut settings = AppSettings::new(&fake.issuer);
    settings.encryption_keys = vec![old_key.clone()];
    let first = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&first, &fake, &mut browser, "/").await;
    let cookie = browser.cookie(&first.address, COOKIE).unwrap();

    // A second instance whose key ring has a new first key.
    let new_key = courier::crypto::generate_key();
    let mut settings = AppSettings::new(&fake.issuer);
    settings.encryption_keys = vec![new_key.clone(), old_key.clone()];
    let second = first.spawn_sibling(settings).await;
    let mut same_user = Browser::new();
    same_user.set_cookie(&second.address, COOKIE, &cookie);
    let me: Value = second.me(&mut same_user).await.json().await.unwrap();
    assert_eq!(me["sub"], "alice");

    // The stored tokens open with the rotated ring.
    let ring = courier::crypto::KeyRing::from_config(&[new_key.into(), old_key.into()]).unwrap();
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_one(&first.db.pool)
        .await
        .unwrap();
    let stored = courier::db::session_tokens::get(&first.db.pool, &ring, id)
        .await
        .unwrap()
        .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        stored.tokens.access_token.expose_secret(),
        "fake-access-token"
    );
}

#[tokio::test]
async fn a_token_copied_into_another_session_does_not_open() {
    let fake = FakeProvider::start().await;
    let key = courier::crypto::generate_key();
    let mut settings = AppSettings::new(&fake.issuer);
    settings.encryption_keys = vec![key.clone()];
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    for _ in 0..2 {
        login_with_fake(&app, &fake, &mut Browser::new(), "/").await;
    }
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT session_id FROM session_tokens")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE session_tokens SET access_token =
             (SELECT access_token FROM session_tokens WHERE session_id = $1)
         WHERE session_id = $2",
    )
    .bind(ids[0])
    .bind(ids[1])
    .execute(&app.db.pool)
    .await
    .unwrap();
    let ring = courier::crypto::KeyRing::from_config(&[key.into()]).unwrap();
    assert!(
        courier::db::session_tokens::get(&app.db.pool, &ring, ids[0])
            .await
            .is_ok()
    );
    assert!(
        courier::db::session_tokens::get(&app.db.pool, &ring, ids[1])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn api_me_leaves_out_the_claims_of_the_login_exchange() {
    use base64::Engine;
    use sha2::Digest;
    // The left half of the SHA-256 of a value, as `at_hash` and `c_hash` are made for RS256.
    let half_hash = |value: &str| {
        let digest = sha2::Sha256::digest(value.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    };
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let login = crate::fake_provider::start_login(&app, &mut browser, "/").await;
    let mut claims = fake.claims(&login.nonce);
    claims["at_hash"] = half_hash("fake-access-token").into();
    claims["c_hash"] = half_hash("the-code").into();
    claims["auth_time"] = crate::fake_provider::now().into();
    fake.answer_token_with(&fake.sign("signing", &claims)).await;
    browser.get(&app.url(&login.callback_path())).await;

    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    let shown = me["claims"].as_object().unwrap();
    for protocol in ["nonce", "at_hash", "c_hash"] {
        assert!(!shown.contains_key(protocol), "{protocol} in {shown:?}");
    }
    assert!(!me.to_string().contains(&login.nonce));
    for kept in ["sub", "iss", "auth_time", "groups"] {
        assert!(shown.contains_key(kept), "{kept} missing from {shown:?}");
    }
}

#[tokio::test]
async fn a_short_idle_timeout_does_not_end_a_session_in_use() {
    // Idle 20 s: a session used every 15 s must live on (it is extended at least every 5 s
    // of use, not once a minute).
    let (app, fake) = app_with_timeouts(20, 3600).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    for step in 1..=4 {
        app.clock.advance(Duration::seconds(15));
        assert_eq!(
            app.me(&mut browser).await.status(),
            StatusCode::OK,
            "after {} s",
            step * 15
        );
    }
    // Unused for longer than the idle timeout, it ends.
    app.clock.advance(Duration::seconds(21));
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
