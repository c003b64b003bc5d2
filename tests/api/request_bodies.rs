//! Request bodies under a deadline, and protocol upgrades: a client that trickles a body or asks
//! to switch protocols gets a clear 4xx and loses its connection, and no service takes a
//! half-sent body for a request.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, TestApp};

/// The deadline the tests configure, for courier's own endpoints and for the services.
const DEADLINE_SECS: u64 = 2;
/// How long a test waits for courier to answer and close: far beyond the deadline, far short
/// of the trickle's end.
const PATIENCE: Duration = Duration::from_secs(60);

struct World {
    app: TestApp,
    _fake: FakeProvider,
    service: MockServer,
    cookie: String,
}

async fn world() -> World {
    let fake = FakeProvider::start().await;
    let service = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&service)
        .await;
    let base = format!("{}/", service.uri());
    let mut settings = AppSettings::new(&fake.issuer)
        .service(
            "held",
            &base,
            &format!("provider = \"main\"\ntimeout_secs = {DEADLINE_SECS}"),
        )
        .service(
            "streamed",
            &base,
            &format!(
                "provider = \"main\"\ntimeout_secs = {DEADLINE_SECS}\nretry_buffer_bytes = 16"
            ),
        );
    settings.server_toml = format!("body_timeout_secs = {DEADLINE_SECS}\n");
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let cookie = format!(
        "__Host-courier={}",
        browser.cookie(&app.address, "__Host-courier").unwrap()
    );
    World {
        app,
        _fake: fake,
        service,
        cookie,
    }
}

struct RawAnswer {
    status: u16,
    body: String,
    /// Whether courier closed the connection (rather than the test giving up waiting).
    closed: bool,
}

impl RawAnswer {
    fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body).unwrap_or_default()["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends `head` and `start` over a raw connection, then `drip` every 5 s (as the review's
/// client did) for far longer than `PATIENCE`; reads courier's answer until it closes the
/// connection, or `PATIENCE` runs out.
async fn trickle(port: u16, head: &str, start: &[u8], drip: &'static [u8]) -> RawAnswer {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    writer.write_all(start).await.unwrap();
    let dripping = tokio::spawn(async move {
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if writer.write_all(drip).await.is_err() {
                return;
            }
        }
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut received))
        .await
        .is_ok();
    dripping.abort();
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    RawAnswer {
        status,
        body,
        closed,
    }
}

fn head(method_and_path: &str, cookie: &str, extra: &str) -> String {
    format!(
        "{method_and_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: {cookie}\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_proxied_body_that_trickles_gets_408_and_reaches_no_service() {
    let world = world().await;
    let answer = trickle(
        world.app.port,
        &head(
            "POST /api/services/held/orders",
            &world.cookie,
            "Content-Type: application/json\r\nContent-Length: 100\r\n",
        ),
        b"{",
        b" ",
    )
    .await;
    assert_eq!(answer.status, 408, "{}", answer.body);
    assert_eq!(answer.code(), "bad_request");
    assert!(answer.closed, "courier closes the connection");
    assert!(world.service.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_streamed_body_that_trickles_gets_408_and_no_service_sees_it_whole() {
    let world = world().await;
    // Larger than the service's retry buffer: the call to the service starts at once and the
    // body streams through, so the service has part of it when the deadline passes.
    let first = format!("40\r\n{}\r\n", "x".repeat(64));
    let answer = trickle(
        world.app.port,
        &head(
            "POST /api/services/streamed/upload",
            &world.cookie,
            "Transfer-Encoding: chunked\r\n",
        ),
        first.as_bytes(),
        b"1\r\nx\r\n",
    )
    .await;
    assert_eq!(answer.status, 408, "{}", answer.body);
    assert_eq!(answer.code(), "bad_request");
    assert!(answer.closed, "courier closes the connection");
    // The service's connection was cut mid-body: it never got a complete request.
    assert!(world.service.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_body_to_courier_s_own_endpoint_that_trickles_gets_408() {
    let world = world().await;
    let answer = trickle(
        world.app.port,
        &head(
            "POST /auth/backchannel-logout/main",
            &world.cookie,
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n",
        ),
        b"l",
        b"o",
    )
    .await;
    assert_eq!(answer.status, 408, "{}", answer.body);
    assert_eq!(answer.code(), "bad_request");
    assert!(answer.closed, "courier closes the connection");
}

#[tokio::test]
async fn an_unread_chunked_body_does_not_hold_the_connection() {
    let world = world().await;
    // `/healthz` never reads a body; the rest of this one would only come in drips.
    let answer = trickle(
        world.app.port,
        &head(
            "GET /healthz",
            &world.cookie,
            "Transfer-Encoding: chunked\r\n",
        ),
        b"1\r\nx\r\n",
        b"1\r\nx\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.closed,
        "courier closes the connection after answering"
    );
}

#[tokio::test]
async fn upgrade_requests_are_refused_at_once_on_every_route() {
    let world = world().await;
    let websocket = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let h2c = "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n";
    for path in [
        "/healthz",
        "/api/me",
        "/api/services/held/socket",
        "/auth/login",
        "/",
        "/no/such/page",
    ] {
        for upgrade in [websocket, h2c] {
            let answer = trickle(
                world.app.port,
                &head(&format!("GET {path}"), &world.cookie, upgrade),
                b"",
                b"\x00",
            )
            .await;
            assert_eq!(answer.status, 400, "{path} {upgrade}");
            assert_eq!(answer.code(), "bad_request", "{path}");
            assert!(answer.closed, "{path}: courier closes the connection");
        }
    }
    assert!(world.service.received_requests().await.unwrap().is_empty());
}
