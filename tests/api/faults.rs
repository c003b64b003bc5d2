//! Faults in the parts courier depends on: Postgres restarted under load, and services that
//! hang, reset the connection, cut a body short or never stop sending.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, TestApp, TestDb, spawn_demo_api};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A Postgres server of the test's own, so that restarting it disturbs no other test.
pub(crate) struct OwnPostgres {
    dir: PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn as_postgres(args: &[&str]) {
        let status = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("runuser runs");
        assert!(status.success(), "{args:?}");
    }

    pub(crate) fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let mut all = vec![
            format!("{PG_BIN}/pg_ctl"),
            "-D".into(),
            data.display().to_string(),
            "-o".into(),
            options,
            "-l".into(),
            log.display().to_string(),
            "-w".into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        Self::as_postgres(&all.iter().map(String::as_str).collect::<Vec<_>>());
    }

    pub(crate) fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap().keep();
        std::process::Command::new("chown")
            .args(["postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let port = TestApp::bind().local_addr().unwrap().port();
        let data = dir.join("data");
        Self::as_postgres(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        let pg = OwnPostgres { dir, port };
        pg.pg_ctl(&["start"]);
        pg
    }

    pub(crate) fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl")])
            .args(["-D", self.dir.join("data").to_str().unwrap()])
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    unavailable: u64,
    other: Vec<(u16, String)>,
}

#[tokio::test]
async fn postgres_restarted_under_load_gives_503s_and_loses_nothing() {
    let pg = OwnPostgres::start();
    let db = Arc::new(TestDb::new_on(pg.admin_url()).await);
    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let settings =
        AppSettings::new(&fake.issuer).service("demo", &format!("{demo}/"), "provider = \"main\"");
    let app = TestApp::spawn_on_db(db.clone(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let cookie = browser.cookie(&app.address, "__Host-courier").unwrap();
    let sealed_before: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT access_token, refresh_token FROM session_tokens")
            .fetch_all(&db.pool)
            .await
            .unwrap();

    // Eight clients call /api/me and a service back to back while Postgres goes away for
    // longer than a request waits for a connection (5 s), and comes back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..8 {
        let (stop, cookie) = (stop.clone(), cookie.clone());
        let url = if n % 2 == 0 {
            app.url("/api/me")
        } else {
            app.url("/api/services/demo/v1/items")
        };
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tally = Tally::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = http
                    .get(&url)
                    .header("x-csrf", "1")
                    .header("cookie", format!("__Host-courier={cookie}"))
                    .send()
                    .await
                    .expect("courier answers every request");
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                match (status, body["code"].as_str()) {
                    (StatusCode::OK, _) => tally.ok += 1,
                    (StatusCode::SERVICE_UNAVAILABLE, Some("upstream_unavailable")) => {
                        tally.unavailable += 1
                    }
                    (status, code) => tally
                        .other
                        .push((status.as_u16(), code.unwrap_or("-").to_owned())),
                }
            }
            tally
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.pg_ctl(&["-m", "fast", "stop"]);
    tokio::time::sleep(Duration::from_secs(7)).await;
    pg.pg_ctl(&["start"]);

    // The pool reconnects by itself: the session works again without a restart of courier.
    let back = Instant::now();
    loop {
        let status = app.me(&mut browser).await.status();
        if status == StatusCode::OK {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "still {status} long after Postgres came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = Tally::default();
    for client in clients {
        let tally = client.await.unwrap();
        total.ok += tally.ok;
        total.unavailable += tally.unavailable;
        total.other.extend(tally.other);
    }
    assert!(
        total.other.is_empty(),
        "only 200 or 503 upstream_unavailable: {total:?}"
    );
    assert!(total.unavailable > 0, "the outage was seen: {total:?}");
    assert!(total.ok > 0, "{total:?}");

    // Nothing was lost or rewritten.
    let sealed_after: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT access_token, refresh_token FROM session_tokens")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(sealed_before, sealed_after);
    assert_eq!(db.count("sessions").await, 1);
    let response = app
        .api(
            &mut browser,
            reqwest::Method::GET,
            "/api/services/demo/v1/items",
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// A service that misbehaves as its path says: `/hang` never answers, `/reset` resets the
/// connection, `/truncate` promises 1000 bytes and sends 10, `/endless` streams forever,
/// `/stall` sends one chunk and then nothing.
async fn spawn_bad_service() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                match path.as_str() {
                    "/hang" => tokio::time::sleep(Duration::from_secs(3600)).await,
                    "/reset" => {
                        let _ = socket.set_zero_linger();
                        drop(socket);
                    }
                    "/truncate" => {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                            .await;
                    }
                    "/stall" => {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    "/endless" => {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        let chunk = format!("{:x}\r\n{}\r\n", 4096, "x".repeat(4096));
                        while socket.write_all(chunk.as_bytes()).await.is_ok() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    _ => {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn services_that_hang_reset_truncate_or_never_stop_get_bounded_clear_answers() {
    let bad = spawn_bad_service().await;
    let fake = FakeProvider::start().await;
    let settings = AppSettings::new(&fake.issuer).service(
        "bad",
        &format!("{bad}/"),
        "provider = \"main\"\ntimeout_secs = 2\nstream_idle_timeout_secs = 1",
    );
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let cookie = format!(
        "__Host-courier={}",
        browser.cookie(&app.address, "__Host-courier").unwrap()
    );
    let http = reqwest::Client::new();
    let call = |path: &str| {
        http.get(app.url(&format!("/api/services/bad{path}")))
            .header("x-csrf", "1")
            .header("cookie", &cookie)
            .send()
    };

    // While each bad call is under way, other requests are served as usual.
    let hang = tokio::spawn(call("/hang"));
    let endless = tokio::spawn(call("/endless"));
    for _ in 0..5 {
        assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
        assert_eq!(call("/fine").await.unwrap().status(), StatusCode::OK);
    }

    let hang = hang.await.unwrap().unwrap();
    assert_eq!(hang.status(), StatusCode::GATEWAY_TIMEOUT);
    let problem: Value = hang.json().await.unwrap();
    assert_eq!(problem["code"], "upstream_timeout");

    let reset = call("/reset").await.unwrap();
    assert_eq!(reset.status(), StatusCode::BAD_GATEWAY);
    let problem: Value = reset.json().await.unwrap();
    assert_eq!(problem["code"], "upstream_unavailable");

    // Once the head is passed on, a body cut short can only be shown as one: the connection
    // ends before the promised length, never as a complete short reply.
    let truncated = call("/truncate").await.unwrap();
    assert_eq!(truncated.status(), StatusCode::OK);
    assert!(truncated.bytes().await.is_err(), "the truncation shows");

    // A body that keeps flowing is not cut at `timeout_secs` (which bounds the wait for the
    // head): well past it, it still streams.
    let endless = endless.await.unwrap().unwrap();
    assert_eq!(endless.status(), StatusCode::OK);
    let mut stream = endless;
    let started = std::time::Instant::now();
    let mut received = 0usize;
    while started.elapsed() < Duration::from_secs(4) {
        match stream.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            other => panic!("the stream stopped after {received} bytes: {other:?}"),
        }
    }
    drop(stream);

    // A body that stops flowing is cut after `stream_idle_timeout_secs`, visibly.
    let stalled = call("/stall").await.unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    assert!(stalled.bytes().await.is_err(), "the stall shows as a cut");
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}
