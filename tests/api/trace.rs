//! Trace context: the caller's `traceparent` is continued to providers and services, and spans
//! reach an OpenTelemetry collector when one is configured.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fake_provider::{FakeProvider, spawn_app_with_fake, start_login};
use crate::helpers::{AppSettings, Browser, CourierProcess, TestDb};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn the_callers_trace_reaches_the_provider() {
    let (app, fake) = spawn_app_with_fake().await;
    let mut browser = Browser::new();
    let login = start_login(&app, &mut browser, "/").await;
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
        .await;
    let callback = browser
        .send(
            Method::GET,
            &app.url(&login.callback_path()),
            &[("traceparent", TRACEPARENT)],
            None,
        )
        .await;
    assert!(callback.status().is_redirection());

    let requests = fake.server.received_requests().await.unwrap();
    let token = requests
        .iter()
        .find(|r| r.url.path() == "/token")
        .expect("the code was exchanged");
    let sent = token.headers["traceparent"].to_str().unwrap();
    assert!(sent.starts_with(&format!("00-{TRACE_ID}-")), "{sent}");
    assert!(
        !sent.contains("00f067aa0ba902b7"),
        "courier's span is the parent"
    );
}

#[tokio::test]
async fn spans_are_exported_to_a_configured_collector() {
    let collector = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&collector)
        .await;
    let fake = FakeProvider::start().await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.extra_toml.push_str(&format!(
        "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"courier-test\"\n",
        collector.uri()
    ));
    let courier = CourierProcess::start(
        Arc::new(TestDb::new().await),
        CourierProcess::free_port(),
        &settings,
        &[("OTEL_BSP_SCHEDULE_DELAY", "100"), ("RUST_LOG", "info")],
    )
    .await;
    let response = reqwest::Client::new()
        .get(courier.app.url("/healthz"))
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    // OTLP/protobuf carries the trace id as its 16 raw bytes.
    let trace_id = hex::decode(TRACE_ID).unwrap();
    let mut exported = false;
    for _ in 0..100 {
        let requests = collector.received_requests().await.unwrap();
        exported = requests.iter().any(|r| {
            r.headers["content-type"] == "application/x-protobuf"
                && r.body.windows(16).any(|w| w == trace_id.as_slice())
                && r.body.windows(12).any(|w| w == b"courier-test")
        });
        if exported {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exported, "the request's span reached the collector");
    courier.stop().await;
}
