//! Key retirement: `courier reseal` (the real binary) re-seals every stored secret under the
//! first key, so that an older key can leave `encryption_keys` without logging anyone out.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    AppSettings, Browser, CLIENT_ID, CLIENT_SECRET, CourierProcess, NodeProvider, TestApp, TestDb,
    config_text, spawn_demo_api,
};
use courier::crypto::{KeyRing, generate_key};

/// The resource indicator of `orders`' tokens.
const ORDERS: &str = "https://orders.example/";

fn ring(keys: &[&str]) -> KeyRing {
    let keys: Vec<SecretString> = keys.iter().map(|k| SecretString::from(*k)).collect();
    KeyRing::from_config(&keys).unwrap()
}

/// Runs `courier reseal` on the database at `url` with `keys`; returns whether it exited 0,
/// its stdout and its stderr.
async fn reseal(url: &str, keys: &[&str]) -> (bool, String, String) {
    let mut settings = AppSettings::new("http://127.0.0.1:9");
    settings.encryption_keys = keys.iter().map(|k| k.to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("courier.toml");
    std::fs::write(&config, config_text(9, url, &settings)).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["reseal", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// courier with the login provider and a service on it (`orders`, whose tokens are made for
/// its RFC 8707 resource and kept in `service_tokens`), and a second provider (`calendar`)
/// whose service needs a linked account. Both services check every token at their provider
/// (introspection), so a call succeeds only with a live token.
fn settings(main: &NodeProvider, calendar: &NodeProvider, keys: &[&str]) -> AppSettings {
    let orders = spawn_demo_api(Some(&main.issuer));
    let events = spawn_demo_api(Some(&calendar.issuer));
    let mut settings = AppSettings::new(&main.issuer)
        .service(
            "orders",
            &format!("{orders}/"),
            &format!("provider = \"main\"\nresource = \"{ORDERS}\""),
        )
        .service(
            "calendar",
            &format!("{events}/"),
            "provider = \"calendar\"\nscopes = [\"calendar:read\"]",
        );
    settings.extra_toml.push_str(&format!(
        r#"
[[providers]]
id = "calendar"
issuer = "{calendar}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "offline_access"]
"#,
        calendar = calendar.issuer,
    ));
    settings.encryption_keys = keys.iter().map(|k| k.to_string()).collect();
    settings
}

/// The session answers `/api/me`, and both services answer with the right user's token.
async fn everything_works(app: &TestApp, browser: &mut Browser, step: &str) {
    let me = app.me(browser).await;
    assert_eq!(me.status(), StatusCode::OK, "{step}: /api/me");
    let orders = app
        .api(browser, Method::GET, "/api/services/orders/v1/items")
        .await;
    assert_eq!(orders.status(), StatusCode::OK, "{step}: orders");
    let orders: Value = orders.json().await.unwrap();
    assert_eq!(
        orders["token"]["sub"], "alice",
        "{step}: the session's token"
    );
    let events = app
        .api(browser, Method::GET, "/api/services/calendar/events")
        .await;
    assert_eq!(events.status(), StatusCode::OK, "{step}: calendar");
    let events: Value = events.json().await.unwrap();
    assert_eq!(
        events["token"]["sub"], "alice-at-calendar",
        "{step}: the linked account's token"
    );
}

/// `courier_sealed_rows_under_old_keys{table}` once it reads `expected` (the housekeeping task
/// counts at start-up, shortly after the instance answers).
async fn wait_for_gauge(app: &TestApp, table: &str, expected: u64) {
    let line = format!("courier_sealed_rows_under_old_keys{{table=\"{table}\"}} {expected}");
    let mut last = String::new();
    for _ in 0..200 {
        last = reqwest::get(app.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if last.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("courier_sealed_rows"))
        .collect();
    panic!("no `{line}` in /metrics: {seen:?}");
}

#[tokio::test]
async fn keys_retire_through_reseal_with_a_live_session_and_linked_account() {
    let (a, b) = (generate_key(), generate_key());
    let port = CourierProcess::free_port();
    let main = NodeProvider::for_courier(
        port,
        json!({ "resource_servers": { ORDERS: { "scope": "orders:read" } } }),
    )
    .await;
    let calendar = NodeProvider::for_courier_as(port, "calendar", json!({})).await;
    let db = Arc::new(TestDb::new().await);

    // Key A only: log in and link the calendar account.
    let courier =
        CourierProcess::start(db.clone(), port, &settings(&main, &calendar, &[&a]), &[]).await;
    let mut browser = Browser::new();
    let response = courier.app.login(&mut browser, "alice").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let response = courier
        .app
        .connect(&mut browser, "calendar", "alice-at-calendar")
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    everything_works(&courier.app, &mut browser, "under [A]").await;
    courier.stop().await;

    // [B, A]: B seals, A still opens what it sealed; the gauge counts A's rows.
    let courier = CourierProcess::start(
        db.clone(),
        port,
        &settings(&main, &calendar, &[&b, &a]),
        &[],
    )
    .await;
    everything_works(&courier.app, &mut browser, "under [B, A]").await;
    wait_for_gauge(&courier.app, "session_tokens", 1).await;
    wait_for_gauge(&courier.app, "linked_accounts", 1).await;
    wait_for_gauge(&courier.app, "service_tokens", 1).await;
    // Each instance re-seals the shared cookie key under its first key when it starts.
    wait_for_gauge(&courier.app, "shared_secrets", 0).await;

    // Reseal while that instance serves; a second run finds nothing left to do.
    let (ok, out, err) = reseal(&db.url, &[&b, &a]).await;
    assert!(ok, "reseal succeeds: {out}{err}");
    assert!(out.contains("session_tokens: 1 re-sealed"), "{out}");
    assert!(out.contains("linked_accounts: 1 re-sealed"), "{out}");
    assert!(out.contains("service_tokens: 1 re-sealed"), "{out}");
    assert!(
        out.contains("shared_secrets: 0 re-sealed, 1 already under the first key"),
        "{out}"
    );
    let (ok, out, err) = reseal(&db.url, &[&b, &a]).await;
    assert!(ok, "a second run succeeds: {out}{err}");
    assert_eq!(out.matches(" 0 re-sealed").count(), 5, "{out}");
    everything_works(&courier.app, &mut browser, "after reseal").await;
    courier.stop().await;

    // [B] only: A is gone, and nobody noticed.
    let courier =
        CourierProcess::start(db.clone(), port, &settings(&main, &calendar, &[&b]), &[]).await;
    everything_works(&courier.app, &mut browser, "under [B]").await;
    for table in [
        "session_tokens",
        "linked_accounts",
        "service_tokens",
        "client_dpop_keys",
        "shared_secrets",
    ] {
        wait_for_gauge(&courier.app, table, 0).await;
    }

    // The refresh tokens, re-sealed under B, still refresh.
    sqlx::query("UPDATE session_tokens SET expires_at = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE linked_accounts SET expires_at = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE service_tokens SET expires_at = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    let before = (
        main.grants("refresh_token").await,
        calendar.grants("refresh_token").await,
    );
    everything_works(&courier.app, &mut browser, "after the refreshes").await;
    assert_eq!(main.grants("refresh_token").await, before.0 + 1);
    assert_eq!(calendar.grants("refresh_token").await, before.1 + 1);
    courier.stop().await;
}

/// A user and a session row for `session_tokens` rows to belong to.
async fn session_row(db: &TestDb) -> Uuid {
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO users (id) VALUES ($1)")
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, provider, subject, created_at, last_seen_at,
                               idle_expires_at, absolute_expires_at)
         VALUES ($1, $2, 'main', 'alice', now(), now(), now() + interval '1 hour',
                 now() + interval '1 day')",
    )
    .bind(session)
    .bind(user)
    .execute(&db.pool)
    .await
    .unwrap();
    session
}

/// Stores tokens for `session` as courier does: each bound to its column and row.
async fn store_tokens(db: &TestDb, keys: &KeyRing, session: Uuid, access: &str, refresh: &str) {
    let aad = |column: &str| format!("session_tokens.{column}:{session}").into_bytes();
    sqlx::query(
        "INSERT INTO session_tokens (session_id, access_token, refresh_token) VALUES ($1, $2, $3)
         ON CONFLICT (session_id) DO UPDATE
         SET access_token = EXCLUDED.access_token, refresh_token = EXCLUDED.refresh_token",
    )
    .bind(session)
    .bind(keys.seal(access.as_bytes(), &aad("access_token")))
    .bind(keys.seal(refresh.as_bytes(), &aad("refresh_token")))
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn stored(db: &TestDb, session: Uuid) -> (Vec<u8>, Vec<u8>) {
    sqlx::query_as("SELECT access_token, refresh_token FROM session_tokens WHERE session_id = $1")
        .bind(session)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The session's (access, refresh) tokens as courier opens them with `keys`.
async fn opened(db: &TestDb, keys: &KeyRing, session: Uuid) -> Option<(String, String)> {
    let tokens = courier::db::session_tokens::get(&db.pool, keys, session)
        .await
        .ok()??
        .tokens;
    Some((
        tokens.access_token.expose_secret().to_owned(),
        tokens.refresh_token?.expose_secret().to_owned(),
    ))
}

#[tokio::test]
async fn reseal_names_rows_that_open_under_no_configured_key_and_leaves_them_alone() {
    let db = TestDb::new().await;
    courier::db::migrate(&db.pool).await.unwrap();
    let (a, b, lost) = (generate_key(), generate_key(), generate_key());
    let old = ring(&[&a]);
    // More rows than one batch (100), so that paging past the rows left alone is exercised.
    let mut goods = Vec::new();
    for _ in 0..150 {
        let good = session_row(&db).await;
        store_tokens(&db, &old, good, "good-access", "good-refresh").await;
        goods.push(good);
    }
    let good = goods[0];
    let orphan = session_row(&db).await;
    store_tokens(
        &db,
        &ring(&[&lost]),
        orphan,
        "orphan-access",
        "orphan-refresh",
    )
    .await;
    // A ciphertext moved to another row does not open there, even under a configured key.
    let moved = session_row(&db).await;
    store_tokens(&db, &old, moved, "moved-access", "moved-refresh").await;
    let (good_access, _) = stored(&db, good).await;
    sqlx::query("UPDATE session_tokens SET access_token = $2 WHERE session_id = $1")
        .bind(moved)
        .bind(&good_access)
        .execute(&db.pool)
        .await
        .unwrap();
    let untouched = (stored(&db, orphan).await, stored(&db, moved).await);

    let (ok, out, err) = reseal(&db.url, &[&b, &a]).await;
    assert!(!ok, "reseal fails while rows are left: {out}{err}");
    assert!(out.contains("session_tokens: 150 re-sealed"), "{out}");
    for session in [orphan, moved] {
        assert!(
            err.lines()
                .any(|l| l.contains("session_tokens") && l.contains(&session.to_string())),
            "{session} is named: {err}"
        );
    }
    assert!(err.contains("access_token"), "{err}");
    for row in ["good", "orphan", "moved"] {
        for token in ["access", "refresh"] {
            let plain = format!("{row}-{token}");
            assert!(
                !out.contains(&plain) && !err.contains(&plain),
                "{plain} printed"
            );
        }
    }
    for good in goods {
        assert_eq!(
            opened(&db, &ring(&[&b]), good).await,
            Some(("good-access".into(), "good-refresh".into())),
            "every good row opens under B alone"
        );
    }
    assert_eq!(
        (stored(&db, orphan).await, stored(&db, moved).await),
        untouched,
        "rows that do not open are left as they were"
    );
}

#[tokio::test]
async fn reseal_waits_for_a_concurrent_refresh_and_seals_the_new_token_not_the_old() {
    let db = TestDb::new().await;
    courier::db::migrate(&db.pool).await.unwrap();
    let (a, b) = (generate_key(), generate_key());
    let old = ring(&[&a]);
    let session = session_row(&db).await;
    store_tokens(&db, &old, session, "old-access", "old-refresh").await;

    // A refresh in progress on an instance: it holds the row, as src/tokens.rs does.
    let mut refresh = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM session_tokens WHERE session_id = $1 FOR UPDATE")
        .bind(session)
        .execute(&mut *refresh)
        .await
        .unwrap();
    let run = {
        let (url, keys) = (db.url.clone(), [b.clone(), a.clone()]);
        tokio::spawn(async move { reseal(&url, &[&keys[0], &keys[1]]).await })
    };
    // Until reseal waits for the row lock.
    let mut waiting = false;
    for _ in 0..400 {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "reseal never waited for the locked row");
    // The refresh stores the rotated tokens (sealed under A: that instance still has [A]).
    let aad = |column: &str| format!("session_tokens.{column}:{session}").into_bytes();
    sqlx::query(
        "UPDATE session_tokens SET access_token = $2, refresh_token = $3 WHERE session_id = $1",
    )
    .bind(session)
    .bind(old.seal(b"new-access", &aad("access_token")))
    .bind(old.seal(b"new-refresh", &aad("refresh_token")))
    .execute(&mut *refresh)
    .await
    .unwrap();
    refresh.commit().await.unwrap();

    let (ok, out, err) = run.await.unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("session_tokens: 1 re-sealed"), "{out}");
    assert_eq!(
        opened(&db, &ring(&[&b]), session).await,
        Some(("new-access".into(), "new-refresh".into())),
        "the refreshed tokens, under B"
    );
}

#[tokio::test]
async fn reseal_refuses_to_run_before_the_instances_seal_with_its_first_key() {
    let db = TestDb::new().await;
    courier::db::migrate(&db.pool).await.unwrap();
    let (a, b) = (generate_key(), generate_key());
    // The instances still run with [A]: the cookie key they share is sealed under A.
    let serving = ring(&[&a]);
    courier::db::secrets::get_or_create(
        &db.pool,
        &serving,
        courier::db::secrets::SESSION_COOKIE_KEY,
        || vec![7; 64],
    )
    .await
    .unwrap();
    let session = session_row(&db).await;
    store_tokens(&db, &serving, session, "live-access", "live-refresh").await;
    let before = stored(&db, session).await;

    let (ok, out, err) = reseal(&db.url, &[&b, &a]).await;
    assert!(!ok, "{out}{err}");
    assert!(err.contains("restart every instance"), "{err}");
    assert_eq!(stored(&db, session).await, before, "nothing was re-sealed");
    assert!(opened(&db, &serving, session).await.is_some());
}
