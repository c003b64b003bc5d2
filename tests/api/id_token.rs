//! ID token checks against forged and mis-addressed tokens from an in-process provider.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};

use crate::fake_provider::{
    FakeProvider, login_with_fake, now, public_pem, spawn_app_with_fake, start_login,
};
use crate::helpers::{Browser, TestApp};

fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "signing"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

fn hs256_with_public_key(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("signing".into());
    let key = EncodingKey::from_secret(&public_pem("signing")).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

/// Runs one login whose token endpoint answers with `forge(provider, nonce)`; returns where
/// courier sent the browser.
async fn login_with_token(
    app: &TestApp,
    fake: &FakeProvider,
    forge: impl Fn(&FakeProvider, &str) -> String,
) -> String {
    let mut browser = Browser::new();
    let login = start_login(app, &mut browser, "/after").await;
    fake.answer_token_with(&forge(fake, &login.nonce)).await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(
        browser.cookie(&app.address, "__Host-courier").is_none(),
        "no session cookie"
    );
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_valid_id_token_logs_the_user_in() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let response = login_with_fake(&app, &fake, &mut browser, "/orders?page=2").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/orders?page=2");

    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    assert_eq!(me["sub"], "alice");
    assert_eq!(me["name"], "Alice Example");
    assert_eq!(me["claims"]["groups"], json!(["staff"]));
}

#[tokio::test]
async fn forged_and_misaddressed_id_tokens_are_refused() {
    let (app, fake) = spawn_app_with_fake().await;
    type Forge = Box<dyn Fn(&FakeProvider, &str) -> String>;
    let cases: Vec<(&str, Forge)> = vec![
        ("alg none", Box::new(|f, n| unsigned(&f.claims(n)))),
        (
            "a bad signature",
            Box::new(|f, n| f.sign_as("attacker", "signing", &f.claims(n))),
        ),
        (
            "HS256 keyed with the public key",
            Box::new(|f, n| hs256_with_public_key(&f.claims(n))),
        ),
        (
            "a wrong iss",
            Box::new(|f, n| {
                f.sign(
                    "signing",
                    &with(f.claims(n), "iss", json!("http://evil.example")),
                )
            }),
        ),
        (
            "a wrong aud",
            Box::new(|f, n| f.sign("signing", &with(f.claims(n), "aud", json!("someone-else")))),
        ),
        (
            "an extra untrusted aud",
            Box::new(|f, n| {
                f.sign(
                    "signing",
                    &with(f.claims(n), "aud", json!(["courier", "someone-else"])),
                )
            }),
        ),
        (
            "a foreign azp",
            Box::new(|f, n| f.sign("signing", &with(f.claims(n), "azp", json!("someone-else")))),
        ),
        (
            "an expired token",
            Box::new(|f, n| {
                let claims = with(f.claims(n), "exp", json!(now() - 10));
                f.sign("signing", &with(claims, "iat", json!(now() - 400)))
            }),
        ),
        (
            "an iat in the future",
            Box::new(|f, n| f.sign("signing", &with(f.claims(n), "iat", json!(now() + 3600)))),
        ),
        (
            "a wrong nonce",
            Box::new(|f, n| f.sign("signing", &with(f.claims(n), "nonce", json!("other")))),
        ),
        (
            "no nonce",
            Box::new(|f, n| {
                let mut claims = f.claims(n);
                claims.as_object_mut().unwrap().remove("nonce");
                f.sign("signing", &claims)
            }),
        ),
        (
            "a key the provider never published",
            Box::new(|f, n| f.sign("attacker", &f.claims(n))),
        ),
    ];
    for (case, forge) in cases {
        let location = login_with_token(&app, &fake, forge).await;
        assert_eq!(location, "/?login_error=invalid_id_token", "{case}");
    }
    // A token response whose id_token is not even a JWT does not parse at all.
    let location = login_with_token(&app, &fake, |_, _| "not-a-jwt".to_owned()).await;
    assert_eq!(location, "/?login_error=token_exchange_failed");
    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(app.db.count("users").await, 0);
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_after_the_provider_rotates() {
    let (app, fake) = spawn_app_with_fake().await;
    // courier loaded the JWKS with `signing` only; the provider now signs with a new key.
    fake.publish_keys(&["signing", "rotated"]).await;
    let mut browser = Browser::new();
    let login = start_login(&app, &mut browser, "/").await;
    fake.answer_token_with(&fake.sign("rotated", &fake.claims(&login.nonce)))
        .await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(response.headers()[LOCATION], "/");
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_key_rotations_in_a_row_are_both_picked_up() {
    let (app, fake) = spawn_app_with_fake().await;
    // Two rotations within a few seconds (OIDC Core §10.1.1): each login meets a key courier
    // has not seen, and each fetches the keys again at once.
    for (published, new_key) in [
        (["signing", "rotated"], "rotated"),
        (["rotated", "attacker"], "attacker"),
    ] {
        fake.publish_keys(&published).await;
        let mut browser = Browser::new();
        let login = start_login(&app, &mut browser, "/").await;
        fake.answer_token_with(&fake.sign(new_key, &fake.claims(&login.nonce)))
            .await;
        let response = browser.get(&app.url(&login.callback_path())).await;
        assert_eq!(response.headers()[LOCATION], "/", "signed with {new_key}");
        assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn an_id_token_with_an_empty_subject_makes_no_session() {
    let (app, fake) = spawn_app_with_fake().await;
    let location = login_with_token(&app, &fake, |fake, nonce| {
        fake.sign("signing", &with(fake.claims(nonce), "sub", json!("")))
    })
    .await;
    assert_eq!(location, "/?login_error=invalid_id_token");
    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(app.db.count("users").await, 0);
}
