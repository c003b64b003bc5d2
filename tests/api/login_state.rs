//! The pending login: state bound to the browser, single use, expiring; provider errors;
//! `return_to` kept on the origin.

use chrono::Duration;
use reqwest::StatusCode;
use reqwest::header::LOCATION;

use crate::fake_provider::{login_with_fake, spawn_app_with_fake, start_login};
use crate::helpers::Browser;

fn location(response: &reqwest::Response) -> &str {
    response.headers()[LOCATION].to_str().unwrap()
}

#[tokio::test]
async fn a_callback_without_state_is_refused() {
    let (app, _fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let response = browser.get(&app.url("/auth/callback/main?code=abc")).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(location(&response), "/?login_error=invalid_state");
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "auth replies are not cached"
    );
}

#[tokio::test]
async fn a_wrong_state_is_refused() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let login = start_login(&app, &mut browser, "/").await;
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
        .await;
    let response = browser
        .get(&app.url("/auth/callback/main?code=abc&state=not-the-state"))
        .await;
    assert_eq!(location(&response), "/?login_error=invalid_state");
    assert_eq!(app.db.count("sessions").await, 0);
}

#[tokio::test]
async fn a_replayed_state_is_refused() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let login = start_login(&app, &mut browser, "/").await;
    // Keep the pending-login cookie as an attacker replaying the whole request would.
    let pending: Vec<(String, String)> = browser
        .cookie_names(&app.address)
        .into_iter()
        .filter(|n| n.contains("-login-"))
        .map(|n| (n.clone(), browser.cookie(&app.address, &n).unwrap()))
        .collect();
    assert_eq!(pending.len(), 1);
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
        .await;
    let first = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(location(&first), "/");

    let mut replayer = Browser::new();
    replayer.set_cookie(&app.address, &pending[0].0, &pending[0].1);
    let replay = replayer.get(&app.url(&login.callback_path())).await;
    assert_eq!(location(&replay), "/?login_error=invalid_state");
    assert_eq!(app.db.count("sessions").await, 1);
}

#[tokio::test]
async fn a_state_from_another_browser_is_refused() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut victim = Browser::new();
    let login = start_login(&app, &mut victim, "/").await;
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
        .await;
    let mut attacker = Browser::new();
    let response = attacker.get(&app.url(&login.callback_path())).await;
    assert_eq!(location(&response), "/?login_error=invalid_state");
    assert!(attacker.cookie(&app.address, "__Host-courier").is_none());
    assert_eq!(app.db.count("sessions").await, 0);
}

#[tokio::test]
async fn a_pending_login_expires_after_ten_minutes() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let login = start_login(&app, &mut browser, "/").await;
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
        .await;
    app.clock
        .advance(Duration::minutes(10) + Duration::seconds(1));
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(location(&response), "/?login_error=invalid_state");
}

#[tokio::test]
async fn access_denied_at_the_provider_comes_back_as_a_login_error() {
    let (app, _fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let login = start_login(&app, &mut browser, "/").await;
    let response = browser
        .get(&app.url(&format!(
            "/auth/callback/main?error=access_denied&error_description=no&state={}",
            login.state
        )))
        .await;
    assert_eq!(location(&response), "/?login_error=access_denied");
    assert_eq!(app.db.count("sessions").await, 0);
    // The pending login is spent: its cookie is cleared.
    assert!(
        browser
            .cookie_names(&app.address)
            .iter()
            .all(|n| !n.contains("-login-"))
    );
}

#[tokio::test]
async fn a_failed_code_exchange_makes_no_session() {
    let (app, _fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    // No token endpoint answer is mounted: the exchange gets a 404.
    let login = start_login(&app, &mut browser, "/").await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(location(&response), "/?login_error=token_exchange_failed");
    assert_eq!(app.db.count("sessions").await, 0);
}

#[tokio::test]
async fn return_to_never_leads_off_the_origin() {
    let (app, fake) = spawn_app_with_fake().await;
    for hostile in [
        "//evil.example",
        "https://evil.example",
        "/%5Cevil.example",
        "%2F%2Fevil.example",
        "/%2F%2Fevil.example",
        "https:evil.example",
        "%09//evil.example",
    ] {
        let mut browser = Browser::new();
        let response = login_with_fake(&app, &fake, &mut browser, hostile).await;
        assert_eq!(location(&response), "/", "return_to={hostile}");
    }
    let mut browser = Browser::new();
    let response = login_with_fake(&app, &fake, &mut browser, "/ok%3Fx").await;
    assert_eq!(location(&response), "/ok?x");
}

#[tokio::test]
async fn anonymous_logins_write_nothing_to_the_database() {
    let (app, _fake) = spawn_app_with_fake().await;
    for _ in 0..50 {
        let mut browser = Browser::new();
        start_login(&app, &mut browser, "/").await;
    }
    for table in ["users", "sessions", "used_login_states", "session_tokens"] {
        assert_eq!(app.db.count(table).await, 0, "{table}");
    }
}
