//! SIGTERM and SIGINT (Ctrl-C): the `courier` binary stops accepting, lets in-flight requests
//! finish, exits 0.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, CourierProcess, TestDb, spawn_demo_api};

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    stopping_lets_in_flight_requests_finish("TERM").await;
}

#[tokio::test]
async fn sigint_stops_as_gracefully_as_sigterm() {
    stopping_lets_in_flight_requests_finish("INT").await;
}

/// `signal` arrives while a call is under way: the call finishes, courier exits 0.
async fn stopping_lets_in_flight_requests_finish(signal: &str) {
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let port = CourierProcess::free_port();
    let settings =
        AppSettings::new(&fake.issuer).service("slow", &format!("{demo}/"), "provider = \"main\"");
    let mut courier =
        CourierProcess::start(Arc::new(TestDb::new().await), port, &settings, &[]).await;
    let app = &courier.app;
    let mut browser = Browser::new();
    login_with_fake(app, &fake, &mut browser, "/").await;

    // A call that takes 1.5 s is under way when the signal arrives.
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
    courier.signal(signal);

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the in-flight call finished"
    );
    let status = tokio::time::timeout(Duration::from_secs(35), courier.child.wait())
        .await
        .expect("courier exits within its shutdown bound")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        reqwest::get(app.url("/healthz")).await.is_err(),
        "no longer accepting"
    );
}
