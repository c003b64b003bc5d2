//! No token, secret or cookie value reaches the log, at any level.

use std::io::Write;
use std::sync::{Arc, Mutex};

use reqwest::Method;
use tracing_subscriber::fmt::MakeWriter;

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, CLIENT_SECRET, TestApp, spawn_demo_api};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_token_secret_or_cookie_value_reaches_the_log_at_any_level() {
    let captured = Captured::default();
    // Each test runs in a process of its own (nextest), so this subscriber sees only this test.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .try_init();

    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let settings =
        AppSettings::new(&fake.issuer).service("echo", &format!("{demo}/"), "provider = \"main\"");
    let key = settings.encryption_keys[0].clone();
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    let login = crate::fake_provider::start_login(&app, &mut browser, "/").await;
    let id_token = fake.sign("signing", &fake.claims(&login.nonce));
    fake.answer_token_with(&id_token).await;
    browser.get(&app.url(&login.callback_path())).await;
    let cookie = browser.cookie(&app.address, "__Host-courier").unwrap();
    app.me(&mut browser).await;
    app.api(
        &mut browser,
        Method::GET,
        "/api/services/echo/x?code=query-secret",
    )
    .await;
    // A second login (a renewed session) and a logout.
    login_with_fake(&app, &fake, &mut browser, "/").await;
    app.logout(&mut browser).await;

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(log.contains("request"), "the log was captured");
    for (what, secret) in [
        ("the access token", "fake-access-token"),
        ("the refresh token", "fake-refresh-token"),
        ("the ID token", id_token.as_str()),
        ("the session cookie", cookie.as_str()),
        ("the client secret", CLIENT_SECRET),
        ("the encryption key", key.as_str()),
        ("the login state", login.state.as_str()),
        ("a query string", "query-secret"),
    ] {
        assert!(!log.contains(secret), "{what} is in the log");
    }
}
