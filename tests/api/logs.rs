//! No token, secret or cookie value reaches the log, at any level.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// How a broken service behaves towards every connection.
#[derive(Clone, Copy)]
enum Broken {
    /// Reads the request and never answers.
    Silent,
    /// Reads the request and resets the connection.
    Reset,
    /// Answers a head promising 100 bytes, sends 5 and resets.
    CutShort,
}

/// A service that fails the way `broken` says; returns its base URL.
async fn broken_service(broken: Broken) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                match broken {
                    Broken::Silent => tokio::time::sleep(Duration::from_secs(30)).await,
                    Broken::Reset => {}
                    Broken::CutShort => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                            .await;
                        let _ = stream.flush().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                // Dropped with a zero linger, the peer sees a reset rather than an orderly close
                // (and with zero, the drop does not block, which is what the lint warns of).
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
            });
        }
    });
    format!("http://{address}/")
}

#[tokio::test]
async fn failed_service_calls_leave_their_query_out_of_the_log() {
    let captured = Captured::default();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .try_init();

    let fake = FakeProvider::start().await;
    let closed = TestApp::bind().local_addr().unwrap().port();
    let settings = AppSettings::new(&fake.issuer)
        .service(
            "refused",
            &format!("http://127.0.0.1:{closed}/"),
            "token = \"none\"",
        )
        .service(
            "silent",
            &broken_service(Broken::Silent).await,
            "token = \"none\"\ntimeout_secs = 1",
        )
        .service(
            "reset",
            &broken_service(Broken::Reset).await,
            "token = \"none\"",
        )
        .service(
            "cut",
            &broken_service(Broken::CutShort).await,
            "token = \"none\"",
        );
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;

    for (service, status) in [("refused", 502), ("silent", 504), ("reset", 502)] {
        let response = app
            .api(
                &mut browser,
                Method::GET,
                &format!("/api/services/{service}/x?api_key=SECRET-{service}"),
            )
            .await;
        assert_eq!(response.status().as_u16(), status, "{service}");
    }
    let response = app
        .api(
            &mut browser,
            Method::GET,
            "/api/services/cut/x?api_key=SECRET-cut",
        )
        .await;
    assert_eq!(response.status().as_u16(), 200, "the head arrived");
    assert!(response.bytes().await.is_err(), "the body was cut short");

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("service call failed"),
        "the failures were logged"
    );
    assert!(
        log.contains("Response payload stream error"),
        "the cut-short body was logged"
    );
    assert!(!log.contains("SECRET"), "a query string is in the log");
}

/// Log lines written to a file or a pipe carry no colour codes: only a terminal gets them.
#[tokio::test]
async fn log_lines_to_a_pipe_carry_no_colour_codes() {
    use crate::helpers::{CourierProcess, TestDb, config_text};
    let fake = FakeProvider::start().await;
    let db = TestDb::new().await;
    let port = CourierProcess::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("courier.toml");
    std::fs::write(
        &config,
        config_text(port, &db.url, &AppSettings::new(&fake.issuer)),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "courier starts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM: courier flushes its lines and exits.
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("INFO"), "courier logged: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "no escape codes in a piped log: {log:?}"
    );
}
