//! SIGTERM: the `courier` binary stops accepting, lets in-flight requests finish, exits 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, TestApp, TestDb, config_text, spawn_demo_api};

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let db = Arc::new(TestDb::new().await);
    let port = {
        let listener = TestApp::bind();
        listener.local_addr().unwrap().port()
    };
    let settings =
        AppSettings::new(&fake.issuer).service("slow", &format!("{demo}/"), "provider = \"main\"");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("courier.toml");
    std::fs::write(&config, config_text(port, &db.url, &settings)).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        db,
        clock: Default::default(),
    };
    let started = Instant::now();
    while reqwest::get(app.url("/healthz")).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "courier starts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;

    // A call that takes 1.5 s is under way when SIGTERM arrives.
    let cookie = format!(
        "__Host-courier={}",
        browser.cookie(&app.address, "__Host-courier").unwrap()
    );
    let in_flight = tokio::spawn(
        reqwest::Client::new()
            .request(
                Method::GET,
                app.url("/api/services/slow/_demo/slow?ms=1500"),
            )
            .header("x-csrf", "1")
            .header("cookie", cookie)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the in-flight call finished"
    );
    let status = tokio::time::timeout(Duration::from_secs(35), child.wait())
        .await
        .expect("courier exits within its shutdown bound")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        reqwest::get(app.url("/healthz")).await.is_err(),
        "no longer accepting"
    );
}
