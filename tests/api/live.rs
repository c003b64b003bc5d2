//! Live connections: WebSockets relayed to services with `websocket = true`, and streamed
//! responses (server-sent events), bound to the session that opened them.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use courier::clock::Clock;

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{
    AppSettings, Browser, CLIENT_ID, NodeProvider, TestApp, raw_request, spawn_demo_api,
    spawn_demo_api_with,
};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A live service named `live` at the demo API, with `fields` added.
fn live_service(settings: AppSettings, demo: &str, fields: &str) -> AppSettings {
    settings.service(
        "live",
        &format!("{demo}/"),
        &format!("provider = \"main\"\nwebsocket = true\n{fields}"),
    )
}

/// The fake provider, the demo API (no token check), courier with the demo API as `live`
/// (`fields` added, then `edit`ed), and a browser signed in.
struct One {
    fake: FakeProvider,
    demo: String,
    app: TestApp,
    browser: Browser,
}

async fn one_instance(fields: &str, edit: impl FnOnce(&mut AppSettings)) -> One {
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let mut settings = live_service(AppSettings::new(&fake.issuer), &demo, fields);
    edit(&mut settings);
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    One {
        fake,
        demo,
        app,
        browser,
    }
}

fn cookie_header(app: &TestApp, browser: &Browser) -> String {
    format!(
        "__Host-courier={}",
        browser.cookie(&app.address, "__Host-courier").unwrap()
    )
}

/// The handshake a browser page on courier's origin makes to `path`, with `browser`'s cookie.
fn handshake(
    app: &TestApp,
    browser: &Browser,
    path: &str,
) -> tungstenite::handshake::client::Request {
    let mut request = format!("ws://127.0.0.1:{}{path}", app.port)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", cookie_header(app, browser).parse().unwrap());
    headers.insert("origin", app.address.parse().unwrap());
    request
}

/// Opens a WebSocket through courier to the demo API's echo; returns it and its hello.
async fn open(app: &TestApp, browser: &Browser) -> (Socket, Value) {
    let (mut socket, response) =
        tokio_tungstenite::connect_async(handshake(app, browser, "/api/services/live/_demo/ws"))
            .await
            .expect("the handshake succeeds");
    assert_eq!(response.status(), 101);
    let hello = next_text(&mut socket).await;
    (socket, serde_json::from_str(&hello).unwrap())
}

async fn next_text(socket: &mut Socket) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
        {
            Some(Ok(Message::Text(text))) => return text.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the close frame; returns its code and how long it took from `since`.
async fn closed_with(socket: &mut Socket, since: Instant) -> (u16, Duration) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                return (code, since.elapsed());
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A handshake's refusal: status and problem document.
async fn refused(request: tungstenite::handshake::client::Request) -> (u16, Value) {
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the WebSocket opened"),
    }
}

async fn demo_live(demo: &str) -> Value {
    reqwest::get(format!("{demo}/_demo/live"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_websocket_carries_the_users_token_and_relays_messages_both_ways() {
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), json!({})).await;
    let demo = spawn_demo_api(Some(&provider.issuer));
    let app = TestApp::spawn(
        listener,
        live_service(AppSettings::new(&provider.issuer), &demo, ""),
    )
    .await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;

    let (mut socket, hello) = open(&app, &browser).await;
    // The service checked the token at the provider: it is alice's, sent as a bearer token.
    assert_eq!(hello["hello"]["token"]["active"], true, "{hello}");
    assert_eq!(hello["hello"]["token"]["sub"], "alice");
    assert_eq!(hello["hello"]["authorization"], "Bearer <redacted>");

    socket.send(Message::text("hello there")).await.unwrap();
    assert_eq!(next_text(&mut socket).await, "hello there");
    let blob: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    socket.send(Message::binary(blob.clone())).await.unwrap();
    match socket.next().await {
        Some(Ok(Message::Binary(back))) => assert_eq!(back.as_ref(), blob.as_slice()),
        other => panic!("expected the binary echo, got {other:?}"),
    }

    // The service's close code reaches the browser; the browser's reaches the service.
    socket.send(Message::text("close:4000")).await.unwrap();
    assert_eq!(closed_with(&mut socket, Instant::now()).await.0, 4000);
    let (mut socket, _) = open(&app, &browser).await;
    socket
        .close(Some(CloseFrame {
            code: CloseCode::from(4321),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let started = Instant::now();
    while demo_live(&demo).await["close_codes"] != json!([4321]) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            demo_live(&demo).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Frames are counted in /metrics.
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("courier_live_frames_total{service=\"live\",direction=\"to_service\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("courier_live_connections{kind=\"websocket\"}"));
}

#[tokio::test]
async fn a_handshake_needs_a_session_courier_s_origin_and_a_websocket_service() {
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let settings = live_service(
        AppSettings::new(&fake.issuer),
        &demo,
        "allowed_paths = [\"/_demo/**\"]",
    )
    .service("plain", &format!("{demo}/"), "provider = \"main\"");
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let path = "/api/services/live/_demo/ws";

    for origin in [
        None,
        Some("null"),
        Some("http://evil.example"),
        Some("http://127.0.0.1:1"),
    ] {
        let mut request = handshake(&app, &browser, path);
        match origin {
            None => {
                request.headers_mut().remove("origin");
            }
            Some(origin) => {
                request
                    .headers_mut()
                    .insert("origin", origin.parse().unwrap());
            }
        }
        let (status, problem) = refused(request).await;
        assert_eq!(
            (status, &problem["code"]),
            (403, &json!("csrf_required")),
            "{origin:?}"
        );
    }
    // `Sec-Fetch-Site: same-origin` stands in for `Origin` on an event stream only: a browser's
    // WebSocket handshake always carries `Origin`.
    let mut request = handshake(&app, &browser, path);
    request.headers_mut().remove("origin");
    request
        .headers_mut()
        .insert("sec-fetch-site", "same-origin".parse().unwrap());
    let (status, problem) = refused(request).await;
    assert_eq!((status, &problem["code"]), (403, &json!("csrf_required")));
    let mut request = handshake(&app, &browser, path);
    request.headers_mut().remove("cookie");
    let (status, problem) = refused(request).await;
    assert_eq!((status, &problem["code"]), (401, &json!("login_required")));

    let (status, problem) =
        refused(handshake(&app, &browser, "/api/services/plain/_demo/ws")).await;
    assert_eq!(
        (status, &problem["code"]),
        (400, &json!("bad_request")),
        "{problem}"
    );
    let (status, problem) = refused(handshake(&app, &browser, "/api/services/live/ws")).await;
    assert_eq!(
        (status, &problem["code"]),
        (403, &json!("not_allowed")),
        "{problem}"
    );
    let (status, problem) = refused(handshake(&app, &browser, "/api/me")).await;
    assert_eq!(
        (status, &problem["code"]),
        (400, &json!("bad_request")),
        "{problem}"
    );

    // Any other protocol switch, even to the WebSocket service, is refused before anything
    // reads its body: `h2c`, or `websocket` offered beside another protocol.
    for upgrade in ["h2c", "websocket, h2c"] {
        let request = format!(
            "GET /api/services/live/_demo/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: upgrade\r\n\
             Upgrade: {upgrade}\r\nOrigin: {}\r\nCookie: {}\r\n\r\n",
            app.address,
            cookie_header(&app, &browser)
        );
        assert_eq!(raw_request(app.port, &request).await, 400, "{upgrade}");
    }

    // None of the refusals reached the service; a proper one does.
    assert_eq!(demo_live(&demo).await["open_sockets"], 0);
    let (_socket, hello) = open(&app, &browser).await;
    assert_eq!(hello["hello"]["authorization"], "Bearer <redacted>");
}

/// A valid back-channel logout token for alice's session at the fake provider.
fn logout_token(fake: &FakeProvider) -> String {
    crate::logout::sign_logout("signing", &crate::logout::logout_claims(fake))
}

/// Two instances on one database, a session on both, a WebSocket to each.
struct TwoInstances {
    fake: FakeProvider,
    demo: String,
    first: TestApp,
    second: TestApp,
    browser: Browser,
    on_second: Browser,
}

impl TwoInstances {
    async fn start(fields: &str) -> Self {
        Self::start_with(fields, |_| {}).await
    }

    async fn start_with(fields: &str, edit: impl Fn(&mut AppSettings)) -> Self {
        let fake = FakeProvider::start().await;
        let demo = spawn_demo_api(None);
        let mut settings = live_service(AppSettings::new(&fake.issuer), &demo, fields);
        edit(&mut settings);
        let keys = settings.encryption_keys.clone();
        let first = TestApp::spawn(TestApp::bind(), settings).await;
        let mut settings = live_service(AppSettings::new(&fake.issuer), &demo, fields);
        edit(&mut settings);
        settings.encryption_keys = keys;
        let second = first.spawn_sibling(settings).await;
        let mut browser = Browser::new();
        login_with_fake(&first, &fake, &mut browser, "/").await;
        let mut on_second = Browser::new();
        on_second.set_cookie(
            &second.address,
            "__Host-courier",
            &browser.cookie(&first.address, "__Host-courier").unwrap(),
        );
        TwoInstances {
            fake,
            demo,
            first,
            second,
            browser,
            on_second,
        }
    }

    async fn sockets(&self) -> [Socket; 2] {
        [
            open(&self.first, &self.browser).await.0,
            open(&self.second, &self.on_second).await.0,
        ]
    }
}

/// Both sockets get `code` within `within` of `since`.
async fn both_closed(sockets: [Socket; 2], code: u16, since: Instant, within: Duration) {
    for (i, mut socket) in sockets.into_iter().enumerate() {
        let (got, after) = closed_with(&mut socket, since).await;
        assert_eq!(got, code, "instance {i}");
        eprintln!("instance {i}: closed with {got} after {after:?}");
        assert!(after < within, "instance {i} closed after {after:?}");
    }
}

#[tokio::test]
async fn a_back_channel_logout_closes_the_sessions_websockets_on_every_instance_within_a_second() {
    let t = TwoInstances::start("").await;
    let sockets = t.sockets().await;
    assert_eq!(demo_live(&t.demo).await["open_sockets"], 2);

    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(t.first.url("/auth/backchannel-logout/main"))
        .form(&[("logout_token", logout_token(&t.fake))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    both_closed(sockets, 4401, started, Duration::from_secs(1)).await;
    // The service saw its side closed with the same code.
    let started = Instant::now();
    while demo_live(&t.demo).await["open_sockets"] != 0 {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(demo_live(&t.demo).await["close_codes"], json!([4401, 4401]));
}

#[tokio::test]
async fn a_logout_on_one_instance_closes_the_websockets_on_both() {
    let mut t = TwoInstances::start("").await;
    let sockets = t.sockets().await;
    let started = Instant::now();
    t.second.logout(&mut t.on_second).await;
    both_closed(sockets, 4401, started, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_session_ended_from_the_list_closes_its_websockets_and_no_other_sessions() {
    let t = TwoInstances::start("").await;
    let sockets = t.sockets().await;
    let mut laptop = Browser::new();
    login_with_fake(&t.first, &t.fake, &mut laptop, "/").await;
    let (mut laptop_socket, _) = open(&t.first, &laptop).await;

    let list: Value = t
        .first
        .api(&mut laptop, Method::GET, "/api/sessions")
        .await
        .json()
        .await
        .unwrap();
    let other = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let response = t
        .first
        .api(
            &mut laptop,
            Method::DELETE,
            &format!("/api/sessions/{other}"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    both_closed(sockets, 4401, started, Duration::from_secs(1)).await;

    // The laptop's own connection is untouched.
    laptop_socket
        .send(Message::text("still here"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut laptop_socket).await, "still here");
}

#[tokio::test]
async fn the_command_line_ending_sessions_closes_their_websockets() {
    let t = TwoInstances::start("").await;
    let sockets = t.sockets().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("courier.toml");
    let mut settings = AppSettings::new(&t.fake.issuer);
    settings.encryption_keys = vec![courier::crypto::generate_key()];
    std::fs::write(
        &config,
        crate::helpers::config_text(t.first.port, &t.first.db.url, &settings),
    )
    .unwrap();
    let started = Instant::now();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["sessions", "end", "--sub", "alice", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .status()
        .await
        .unwrap();
    assert!(status.success());
    both_closed(sockets, 4401, started, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_idle_or_expired_session_closes_its_websockets_and_frames_do_not_keep_it_alive() {
    let One {
        fake,
        app,
        mut browser,
        ..
    } = one_instance("", |s| {
        s.idle_timeout_secs = 600;
        s.absolute_timeout_secs = 3600;
    })
    .await;

    // A session past its absolute expiry has ended: 4401.
    let mut ending = Browser::new();
    login_with_fake(&app, &fake, &mut ending, "/").await;
    let (mut socket, _) = open(&app, &ending).await;
    let sessions: Value = app
        .api(&mut ending, Method::GET, "/api/sessions")
        .await
        .json()
        .await
        .unwrap();
    let current = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    sqlx::query("UPDATE sessions SET absolute_expires_at = $1 WHERE public_id = $2")
        .bind(app.clock.now())
        .bind(current)
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(closed_with(&mut socket, Instant::now()).await.0, 4401);
    let (mut socket, _) = open(&app, &browser).await;
    // Frames flow, but only requests move the idle expiry.
    for _ in 0..3 {
        socket.send(Message::text("tick")).await.unwrap();
        assert_eq!(next_text(&mut socket).await, "tick");
    }
    app.clock.advance(chrono::Duration::seconds(601));
    assert_eq!(closed_with(&mut socket, Instant::now()).await.0, 4408);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_websocket_silent_for_stream_idle_timeout_secs_is_closed_on_both_sides() {
    let One {
        demo, app, browser, ..
    } = one_instance("stream_idle_timeout_secs = 1", |_| {}).await;
    let (mut socket, _) = open(&app, &browser).await;
    // Talking keeps it open past the idle bound…
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        socket.send(Message::text("tick")).await.unwrap();
        assert_eq!(next_text(&mut socket).await, "tick");
    }
    // …silence closes it.
    assert_eq!(closed_with(&mut socket, Instant::now()).await.0, 4408);
    let started = Instant::now();
    while demo_live(&demo).await["close_codes"] != json!([4408]) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            demo_live(&demo).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_caps_refuse_one_connection_too_many_with_429() {
    let One {
        fake,
        app,
        browser: one,
        ..
    } = one_instance("", |s| {
        s.server_toml = "max_live_connections = 3".into();
        s.session_toml = "max_live_connections = 2".into();
    })
    .await;
    let mut two = Browser::new();
    login_with_fake(&app, &fake, &mut two, "/").await;

    let first = open(&app, &one).await.0;
    let _second = open(&app, &one).await.0;
    let (status, problem) = refused(handshake(&app, &one, "/api/services/live/_demo/ws")).await;
    assert_eq!(
        (status, &problem["code"]),
        (429, &json!("rate_limited")),
        "the session's cap"
    );
    // An event stream counts too.
    let response = one_stream(&app, &one, "count=1").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    let _third = open(&app, &two).await.0;
    let (status, _) = refused(handshake(&app, &two, "/api/services/live/_demo/ws")).await;
    assert_eq!(status, 429, "the instance's cap");

    // A closed connection frees its place.
    drop(first);
    let started = Instant::now();
    loop {
        match tokio_tungstenite::connect_async(handshake(&app, &two, "/api/services/live/_demo/ws"))
            .await
        {
            Ok(_) => break,
            Err(_) if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the place was not freed: {e}"),
        }
    }
}

#[tokio::test]
async fn a_sessions_cap_holds_across_instances() {
    let t = TwoInstances::start_with("", |s| {
        s.session_toml = "max_live_connections = 2".into();
    })
    .await;
    let path = "/api/services/live/_demo/ws";
    let _on_first = open(&t.first, &t.browser).await.0;
    let on_second = open(&t.second, &t.on_second).await.0;
    for (app, browser) in [(&t.first, &t.browser), (&t.second, &t.on_second)] {
        let (status, problem) = refused(handshake(app, browser, path)).await;
        assert_eq!((status, &problem["code"]), (429, &json!("rate_limited")));
    }
    // Closing one on the second instance frees a place for the session on the first.
    drop(on_second);
    let started = Instant::now();
    while tokio_tungstenite::connect_async(handshake(&t.first, &t.browser, path))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /api/services/live/_demo/events?{query}` as an `EventSource` sends it.
async fn one_stream(app: &TestApp, browser: &Browser, query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(app.url(&format!("/api/services/live/_demo/events?{query}")))
        .header("accept", "text/event-stream")
        .header("origin", &app.address)
        .header("cookie", cookie_header(app, browser))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_websocket_relay_keeps_to_the_slower_sides_pace() {
    let One {
        demo, app, browser, ..
    } = one_instance("", |_| {}).await;
    let (mut socket, _) = open(&app, &browser).await;

    // The service floods 256 MiB while the browser reads nothing for a while: what the service
    // gets to send is bounded by the sockets' buffers and a few frames in courier, not by the
    // flood.
    const FRAMES: u64 = 4096;
    const FRAME: u64 = 64 * 1024;
    socket
        .send(Message::text(format!("flood:{FRAMES}:{FRAME}")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = demo_live(&demo).await["flood_sent_bytes"].as_u64().unwrap();
    assert!(
        sent < 48 * 1024 * 1024,
        "the service sent {sent} bytes to a browser that read nothing"
    );
    assert!(sent > 0);
    // Reading lets it all through, in order and whole.
    let mut received = 0u64;
    while received < FRAMES * FRAME {
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => received += bytes.len() as u64,
            other => panic!("expected the flood, got {other:?}"),
        }
    }
    assert_eq!(demo_live(&demo).await["flood_sent_bytes"], FRAMES * FRAME);
}

#[tokio::test]
async fn server_sent_events_outlive_timeout_secs_while_data_flows_and_end_with_the_session() {
    let One {
        demo,
        app,
        mut browser,
        ..
    } = one_instance("timeout_secs = 1\nstream_idle_timeout_secs = 2", |_| {}).await;

    // Eight events 400 ms apart: about three seconds, three times `timeout_secs`.
    let started = Instant::now();
    let response = one_stream(&app, &browser, "count=8&interval_ms=400").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    assert_eq!(body.matches("data: ").count(), 8, "{body}");
    assert!(started.elapsed() > Duration::from_secs(2));

    // Silence past `stream_idle_timeout_secs` cuts the stream after what came.
    let response = one_stream(&app, &browser, "silence_after=2").await;
    let body = response.text().await;
    assert!(
        body.is_err(),
        "an idle stream is cut, not completed: {body:?}"
    );

    // Without courier's origin it is refused like any call without the CSRF header. Chromium
    // sends no `Origin` on a same-origin `EventSource`, only `Sec-Fetch-Site: same-origin`:
    // that passes; `cross-site`, `same-site`, another origin, or neither header does not.
    let events = |headers: &[(&str, &str)]| {
        let mut request = reqwest::Client::new()
            .get(app.url("/api/services/live/_demo/events?count=1"))
            .header("accept", "text/event-stream")
            .header("cookie", cookie_header(&app, &browser));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    for headers in [
        &[][..],
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "same-origin"),
        ],
        &[("origin", "null")],
    ] {
        let response = events(headers).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "csrf_required");
    }
    let response = events(&[("sec-fetch-site", "same-origin")]).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap().matches("data: ").count(), 1);

    // A stream without end stops when the session does (logout elsewhere). (The silent stream
    // above stays open at the service until it next writes: its count is the baseline.)
    let baseline = demo_live(&demo).await["open_streams"].clone();
    let mut response = one_stream(&app, &browser, "count=0&interval_ms=100").await;
    assert!(response.chunk().await.unwrap().is_some());
    let logged_out = Instant::now();
    app.logout(&mut browser).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended with the session");
    assert!(logged_out.elapsed() < Duration::from_secs(2));
    let started = Instant::now();
    while demo_live(&demo).await["open_streams"] != baseline {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the service's stream was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_websocket_to_a_linked_service_closes_when_the_linked_account_is_disconnected() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let main = NodeProvider::for_courier(port, json!({})).await;
    let other = NodeProvider::for_courier_as(port, "other", json!({})).await;
    let demo = spawn_demo_api_with(&other.issuer, Default::default());
    let mut settings = AppSettings::new(&main.issuer);
    settings.extra_toml = format!(
        r#"
[[providers]]
id = "other"
issuer = "{issuer}"
client_id = "{client}"
client_secret = "{secret}"
scopes = ["openid", "offline_access"]

[[services]]
name = "live"
base_url = "{demo}/"
provider = "other"
websocket = true
"#,
        issuer = other.issuer,
        client = CLIENT_ID,
        secret = crate::helpers::CLIENT_SECRET,
    );
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    app.login(&mut browser, "alice").await;
    app.connect(&mut browser, "live", "alice-elsewhere").await;

    let (mut socket, hello) = open(&app, &browser).await;
    assert_eq!(hello["hello"]["token"]["sub"], "alice-elsewhere");
    let started = Instant::now();
    let response = app
        .api(&mut browser, Method::DELETE, "/api/connections/live")
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (code, after) = closed_with(&mut socket, started).await;
    assert_eq!(code, 4401);
    assert!(after < Duration::from_secs(1), "{after:?}");
    // The session itself lives on.
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn sigterm_closes_live_connections_with_1001_and_exits_within_the_shutdown_bound() {
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let port = crate::helpers::CourierProcess::free_port();
    let settings = live_service(AppSettings::new(&fake.issuer), &demo, "");
    let mut courier = crate::helpers::CourierProcess::start(
        std::sync::Arc::new(crate::helpers::TestDb::new().await),
        port,
        &settings,
        &[],
    )
    .await;
    let app = &courier.app;
    let mut browser = Browser::new();
    login_with_fake(app, &fake, &mut browser, "/").await;
    let (mut socket, _) = open(app, &browser).await;
    let mut stream = one_stream(app, &browser, "count=0&interval_ms=100").await;
    assert!(stream.chunk().await.unwrap().is_some());

    let started = Instant::now();
    courier.signal("TERM");
    assert_eq!(closed_with(&mut socket, started).await.0, 1001);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream ended");
    let status = tokio::time::timeout(Duration::from_secs(30), courier.child.wait())
        .await
        .expect("courier exits within its shutdown bound")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "live connections do not hold the exit up: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_expired_token_does_not_cut_a_websocket_but_a_dead_refresh_on_another_instance_does() {
    use wiremock::matchers::{body_string_contains, method, path};
    let t = TwoInstances::start("").await;
    let mut on_second = Browser::new();
    on_second.set_cookie(
        &t.second.address,
        "__Host-courier",
        &t.browser
            .cookie(&t.first.address, "__Host-courier")
            .unwrap(),
    );
    let (mut socket, _) = open(&t.first, &t.browser).await;

    // The access token expires (by the first instance's clock) while the connection is open:
    // the connection does not care.
    t.first.clock.advance(chrono::Duration::seconds(3600));
    tokio::time::sleep(Duration::from_millis(600)).await;
    socket.send(Message::text("after expiry")).await.unwrap();
    assert_eq!(next_text(&mut socket).await, "after expiry");

    // The second instance refreshes, and the provider says the grant is dead.
    wiremock::Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(
            wiremock::ResponseTemplate::new(400).set_body_string(r#"{"error":"invalid_grant"}"#),
        )
        .with_priority(1)
        .mount(&t.fake.server)
        .await;
    t.second.clock.advance(chrono::Duration::seconds(3600));
    let started = Instant::now();
    let response = t
        .second
        .api(&mut on_second, Method::GET, "/api/services/live/_demo/x")
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (code, after) = closed_with(&mut socket, started).await;
    assert_eq!(code, 4401);
    assert!(after < Duration::from_secs(1), "{after:?}");
}

#[tokio::test]
async fn a_message_over_websocket_max_message_bytes_closes_the_websocket_with_1009() {
    let One {
        demo, app, browser, ..
    } = one_instance("", |s| {
        s.server_toml = "websocket_max_message_bytes = 4096".into();
    })
    .await;

    // Up to the limit, either way.
    let (mut socket, _) = open(&app, &browser).await;
    socket.send(Message::binary(vec![7u8; 4000])).await.unwrap();
    match socket.next().await {
        Some(Ok(Message::Binary(echo))) => assert_eq!(echo.len(), 4000),
        other => panic!("expected the echo, got {other:?}"),
    }

    // One frame over it from the browser.
    socket.send(Message::binary(vec![7u8; 5000])).await.unwrap();
    let (code, _) = closed_with(&mut socket, Instant::now()).await;
    assert_eq!(code, 1009);

    // A message of several frames, over it only when put together.
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let (mut socket, _) = open(&app, &browser).await;
    let first = Frame::message(vec![1u8; 3000], OpCode::Data(Data::Binary), false);
    let rest = Frame::message(vec![2u8; 3000], OpCode::Data(Data::Continue), true);
    socket.send(Message::Frame(first)).await.unwrap();
    socket.send(Message::Frame(rest)).await.unwrap();
    let (code, _) = closed_with(&mut socket, Instant::now()).await;
    assert_eq!(code, 1009, "the continuation limit is the message limit");

    // One over it from the service.
    let (mut socket, _) = open(&app, &browser).await;
    socket.send(Message::text("flood:1:5000")).await.unwrap();
    let (code, _) = closed_with(&mut socket, Instant::now()).await;
    assert_eq!(code, 1009);

    // The service was told why, each time it could be (its own oversized message leaves
    // its connection to courier failed).
    let started = Instant::now();
    loop {
        let codes = demo_live(&demo).await["close_codes"].clone();
        let told = codes
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| **c == 1009)
            .count();
        if told >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the service got no 1009: {codes}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_browser_that_reads_nothing_keeps_its_place_until_it_is_disconnected() {
    let One {
        demo, app, browser, ..
    } = one_instance("stream_idle_timeout_secs = 2", |s| {
        s.session_toml = "max_live_connections = 1".into();
    })
    .await;
    let (mut socket, _) = open(&app, &browser).await;
    // The service floods without end; the browser reads nothing.
    socket
        .send(Message::text("flood:1000000:65536"))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = demo_live(&demo).await["flood_sent_bytes"].as_u64().unwrap();
    assert!(
        sent < 32 * 1024 * 1024,
        "the service sent {sent} bytes to a browser that read nothing"
    );
    // Past the idle close (nothing could pass for two seconds): the close frame waits behind
    // what the browser has not read, and the connection still holds its place.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = refused(handshake(&app, &browser, "/api/services/live/_demo/ws")).await;
    assert_eq!(
        status, 429,
        "a connection whose body still holds data keeps its place"
    );

    // Ten seconds without a byte taken while data waits: courier drops the TCP connection,
    // which frees the place.
    let started = Instant::now();
    loop {
        match tokio_tungstenite::connect_async(handshake(
            &app,
            &browser,
            "/api/services/live/_demo/ws",
        ))
        .await
        {
            Ok(_) => break,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("the stalled connection was never dropped: {e}"),
        }
    }
    // What the browser's socket still held arrives, then the connection ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the connection was dropped");
}

#[tokio::test]
async fn a_logout_closes_flooded_websockets_after_the_frame_each_has_begun() {
    let One {
        app, mut browser, ..
    } = one_instance("", |_| {}).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (mut socket, _) = open(&app, &browser).await;
        socket
            .send(Message::text("flood:1000000:65536"))
            .await
            .unwrap();
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let response = app.api(&mut browser, Method::POST, "/auth/logout").await;
    assert_eq!(response.status(), StatusCode::OK);
    let since = Instant::now();
    for mut socket in sockets {
        let (code, _) = closed_with(&mut socket, since).await;
        assert_eq!(code, 4401);
    }
}
