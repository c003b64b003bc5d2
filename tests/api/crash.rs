//! A crash in the middle of a refresh: the `courier` binary (built with `fault-injection`) is
//! stopped at each point between sending the refresh grant and committing its result, killed
//! with SIGKILL, and started again. Afterwards the session either works with a refresh token
//! the provider still accepts, or has ended cleanly with `reauth_required` — never a session
//! left holding a refresh token the provider has rotated away.
//!
//! `COURIER_CRASH_ROUNDS` (default 1) repeats every point; CI runs one round.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{AppSettings, Browser, CourierProcess, NodeProvider, TestDb, spawn_demo_api};

/// What a crash at each point must leave behind. Up to the grant being sent nothing has
/// changed; once the provider has rotated the refresh token and the new one is not committed,
/// it is lost with the process, and the provider refuses the old one: the session ends.
const POINTS: &[(&str, Expect)] = &[
    ("refresh:before_grant", Expect::Works),
    ("refresh:after_grant", Expect::Ended),
    ("refresh:before_commit", Expect::Ended),
    ("refresh:after_commit", Expect::Works),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Works,
    Ended,
}

async fn stored_refresh_token(db: &TestDb, keys: &[String]) -> Option<SecretString> {
    let keys: Vec<SecretString> = keys.iter().map(|k| k.clone().into()).collect();
    let ring = courier::crypto::KeyRing::from_config(&keys).unwrap();
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_optional(&db.pool)
        .await
        .unwrap()?;
    courier::db::session_tokens::get(&db.pool, &ring, id)
        .await
        .unwrap()
        .and_then(|s| s.tokens.refresh_token)
}

#[tokio::test]
async fn a_crash_mid_refresh_never_leaves_a_session_with_a_rotated_away_token() {
    let rounds: usize = std::env::var("COURIER_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let port = CourierProcess::free_port();
    let provider = NodeProvider::for_courier(port, json!({"rotate_refresh_token": true})).await;
    let demo = spawn_demo_api(None);
    let settings = AppSettings::new(&provider.issuer).service(
        "demo",
        &format!("{demo}/"),
        "provider = \"main\"",
    );
    let keys = settings.encryption_keys.clone();
    let db = Arc::new(TestDb::new().await);
    let marks = tempfile::tempdir().unwrap();

    for round in 0..rounds {
        for &(point, expect) in POINTS {
            // Each pass starts from no session (the first creates the tables).
            let _ = sqlx::query("DELETE FROM users").execute(&db.pool).await;
            let mark = marks
                .path()
                .join(format!("{round}-{}", point.replace(':', "-")));
            let mark_env = mark.to_str().unwrap().to_owned();
            let mut courier = CourierProcess::start(
                db.clone(),
                port,
                &settings,
                &[
                    ("COURIER_FAULT_POINT", point),
                    ("COURIER_FAULT_MARK", &mark_env),
                ],
            )
            .await;
            let mut browser = Browser::new();
            courier.app.login(&mut browser, "alice").await;
            let before = stored_refresh_token(&db, &keys).await.unwrap();

            // The access token is due: the next call refreshes, and stops at `point`.
            sqlx::query("UPDATE session_tokens SET expires_at = now() - interval '1 minute'")
                .execute(&db.pool)
                .await
                .unwrap();
            let cookie = browser
                .cookie(&courier.app.address, "__Host-courier")
                .unwrap();
            let call = {
                let url = courier.app.url("/api/services/demo/v1/items");
                let cookie = cookie.clone();
                tokio::spawn(async move {
                    reqwest::Client::new()
                        .get(url)
                        .header("x-csrf", "1")
                        .header("cookie", format!("__Host-courier={cookie}"))
                        .send()
                        .await
                })
            };
            let mut waited = 0;
            while !mark.exists() {
                waited += 1;
                assert!(waited < 400, "{point} was never reached");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            courier.signal("KILL");
            courier.child.wait().await.unwrap();
            assert!(
                call.await.unwrap().is_err(),
                "the call in flight dies with the process"
            );

            // Started again, without the fault.
            let courier = CourierProcess::start(db.clone(), port, &settings, &[]).await;
            let response = reqwest::Client::new()
                .get(courier.app.url("/api/services/demo/v1/items"))
                .header("x-csrf", "1")
                .header("cookie", format!("__Host-courier={cookie}"))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let after = stored_refresh_token(&db, &keys).await;
            match expect {
                Expect::Works => {
                    assert_eq!(status, StatusCode::OK, "{point}: {body}");
                    let after = after.expect("the session still holds a refresh token");
                    assert!(
                        provider.is_active(&after).await,
                        "{point}: the stored refresh token is one the provider accepts"
                    );
                }
                Expect::Ended => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{point}: {body}");
                    assert_eq!(body["code"], "reauth_required", "{point}");
                    assert!(
                        after.is_none(),
                        "{point}: the session ended with its tokens"
                    );
                    assert!(
                        !provider.is_active(&before).await,
                        "{point}: the provider did rotate the old token away"
                    );
                }
            }
            courier.stop().await;
        }
    }
}
