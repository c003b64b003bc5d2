//! A provider's `id_token_signed_response_alg`: the one algorithm its ID tokens and logout
//! tokens must use, and `none` (unsigned ID tokens from the token endpoint) only where set.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};

use crate::fake_provider::{FakeProvider, login_with_fake, private_pem, start_login};
use crate::helpers::{AppSettings, Browser, TestApp};
use crate::logout::{logout_claims, sign_logout};

async fn app_with(fake: &FakeProvider, provider_toml: &str) -> TestApp {
    let mut settings = AppSettings::new(&fake.issuer);
    settings.extra_toml = format!("{provider_toml}\n");
    TestApp::spawn(TestApp::bind(), settings).await
}

fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// Logs in with the ID token `token(fake, nonce)` makes; returns where the callback sent the
/// browser.
async fn login_with(
    app: &TestApp,
    fake: &FakeProvider,
    token: impl Fn(&FakeProvider, &str) -> String,
) -> String {
    let mut browser = Browser::new();
    let login = start_login(app, &mut browser, "/").await;
    fake.answer_token_with(&token(fake, &login.nonce)).await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

fn signed_as(fake: &FakeProvider, alg: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some("signing".into());
    let key = EncodingKey::from_rsa_pem(&private_pem("signing")).unwrap();
    let _ = fake;
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test]
async fn an_unsigned_id_token_is_taken_only_from_a_provider_configured_for_none() {
    let fake = FakeProvider::start().await;
    let configured = app_with(&fake, "id_token_signed_response_alg = \"none\"").await;
    let location = login_with(&configured, &fake, |f, nonce| unsigned(&f.claims(nonce))).await;
    assert_eq!(location, "/", "rp-id_token-sig-none");
    assert_eq!(configured.db.count("sessions").await, 1);
    // Configured unsigned, a signed one is not what was registered.
    let location = login_with(&configured, &fake, |f, nonce| {
        f.sign("signing", &f.claims(nonce))
    })
    .await;
    assert_eq!(location, "/?login_error=invalid_id_token");

    let default = app_with(&fake, "").await;
    let location = login_with(&default, &fake, |f, nonce| unsigned(&f.claims(nonce))).await;
    assert_eq!(location, "/?login_error=invalid_id_token");
    assert_eq!(default.db.count("sessions").await, 0);
}

#[tokio::test]
async fn a_pinned_algorithm_refuses_id_tokens_in_any_other() {
    let fake = FakeProvider::start().await;
    fake.publish_keys_for_any_alg().await;
    fake.advertise(json!({"id_token_signing_alg_values_supported": ["RS256", "PS256"]}))
        .await;
    let open = app_with(&fake, "").await;
    let location = login_with(&open, &fake, |f, nonce| {
        signed_as(f, Algorithm::PS256, &f.claims(nonce))
    })
    .await;
    assert_eq!(location, "/", "without a pin, any advertised algorithm");

    let pinned = app_with(&fake, "id_token_signed_response_alg = \"RS256\"").await;
    let location = login_with(&pinned, &fake, |f, nonce| {
        signed_as(f, Algorithm::RS256, &f.claims(nonce))
    })
    .await;
    assert_eq!(location, "/");
    let location = login_with(&pinned, &fake, |f, nonce| {
        signed_as(f, Algorithm::PS256, &f.claims(nonce))
    })
    .await;
    assert_eq!(
        location, "/?login_error=invalid_id_token",
        "advertised, but not the registered algorithm"
    );
}

#[tokio::test]
async fn a_logout_token_in_another_algorithm_than_the_pinned_one_is_refused() {
    let fake = FakeProvider::start().await;
    // The provider signs with either (rp-backchannel-rpinitlogout-lt-wrong-alg).
    fake.advertise(json!({"id_token_signing_alg_values_supported": ["RS256", "PS256"]}))
        .await;
    let pinned = app_with(&fake, "id_token_signed_response_alg = \"RS256\"").await;
    let mut browser = Browser::new();
    login_with_fake(&pinned, &fake, &mut browser, "/").await;
    let post = |token: String| {
        let url = pinned.url("/auth/backchannel-logout/main");
        async move {
            reqwest::Client::new()
                .post(url)
                .form(&[("logout_token", token)])
                .send()
                .await
                .unwrap()
        }
    };
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some("signing".into());
    header.typ = Some("logout+jwt".into());
    let key = EncodingKey::from_rsa_pem(&private_pem("signing")).unwrap();
    let wrong = jsonwebtoken::encode(&header, &logout_claims(&fake), &key).unwrap();
    assert_eq!(post(wrong).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(pinned.me(&mut browser).await.status(), StatusCode::OK);
    let right = sign_logout("signing", &logout_claims(&fake));
    assert_eq!(post(right).await.status(), StatusCode::OK);
    assert_eq!(
        pinned.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Without a pin, both advertised algorithms are the provider's.
    let open = app_with(&fake, "").await;
    let mut browser = Browser::new();
    login_with_fake(&open, &fake, &mut browser, "/").await;
    let other = jsonwebtoken::encode(&header, &logout_claims(&fake), &key).unwrap();
    let response = reqwest::Client::new()
        .post(open.url("/auth/backchannel-logout/main"))
        .form(&[("logout_token", other)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn none_is_refused_off_tls_and_shared_secret_algorithms_are_not_offered() {
    let check = |provider: &str| {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
[database]
url = "postgres://nobody@127.0.0.1/x"
[security]
encryption_keys = ["{key}"]
[[providers]]
id = "main"
client_id = "courier"
login = true
{provider}
"#,
            key = courier::crypto::generate_key()
        );
        courier::config::Config::parse(&text, "t.toml".as_ref(), &|_| None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let secret = "client_secret = \"s\"";
    assert!(
        check(&format!(
            "issuer = \"http://127.0.0.1:9000\"\n{secret}\nid_token_signed_response_alg = \"none\""
        ))
        .is_ok()
    );
    assert!(
        check(&format!(
            "issuer = \"https://id.example\"\n{secret}\nid_token_signed_response_alg = \"none\""
        ))
        .is_ok()
    );
    let e = check(&format!(
        "issuer = \"http://id.example\"\n{secret}\nid_token_signed_response_alg = \"none\""
    ))
    .unwrap_err();
    assert!(
        e.contains("providers[0].id_token_signed_response_alg (provider \"main\")")
            && e.contains("https"),
        "{e}"
    );
    let e = check(&format!(
        "issuer = \"https://id.example\"\n{secret}\nid_token_signed_response_alg = \"HS256\""
    ))
    .unwrap_err();
    assert!(e.contains("id_token_signed_response_alg"), "{e}");
}
