//! Pending logins are bounded per browser: abandoned ones cannot pile up into a request head
//! too large to be served (431), and a browser that abandoned many can still log in.

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::json;

use crate::fake_provider::{spawn_app_with_fake, start_login};
use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp};

/// courier keeps at most this many pending-login cookies per browser.
const MAX_PENDING: usize = 10;

fn pending_cookies(app: &TestApp, browser: &Browser) -> usize {
    browser
        .cookie_names(&app.address)
        .iter()
        .filter(|n| n.contains("-login-"))
        .count()
}

#[tokio::test]
async fn forty_unfinished_logins_keep_ten_cookies_and_the_browser_can_still_log_in() {
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let app = TestApp::spawn(listener, AppSettings::new(&provider.issuer)).await;
    let mut browser = Browser::new();
    for i in 1..=40 {
        let response = browser.get(&app.url("/auth/login?return_to=/")).await;
        assert_eq!(response.status(), StatusCode::FOUND, "login {i}");
        let held = pending_cookies(&app, &browser);
        assert_eq!(
            held,
            i.min(MAX_PENDING),
            "pending-login cookies after {i} logins"
        );
    }
    // Every request is still served, logout included (no 431).
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.logout(&mut browser).await;

    let response = app.login(&mut browser, "alice").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/after-login");
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    assert!(pending_cookies(&app, &browser) <= MAX_PENDING);
}

#[tokio::test]
async fn the_oldest_pending_login_is_the_one_dropped() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let mut logins = Vec::new();
    for _ in 0..=MAX_PENDING {
        logins.push(start_login(&app, &mut browser, "/").await);
    }
    assert_eq!(pending_cookies(&app, &browser), MAX_PENDING);

    let oldest = &logins[0];
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&oldest.nonce)))
        .await;
    let response = browser.get(&app.url(&oldest.callback_path())).await;
    assert_eq!(response.headers()[LOCATION], "/?login_error=invalid_state");
    assert_eq!(app.db.count("sessions").await, 0);

    // The second oldest and the newest are still pending and complete.
    for login in [&logins[1], &logins[MAX_PENDING]] {
        fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
            .await;
        let response = browser.get(&app.url(&login.callback_path())).await;
        assert_eq!(response.headers()[LOCATION], "/");
    }
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}
