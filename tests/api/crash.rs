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

/// An instance that stalls past its refresh lease and then sends the refresh token another
/// instance has rotated meanwhile is refused (`invalid_grant`). The newer tokens stand: the
/// call uses them and the session lives on, where ending it would log the user out although
/// fresh tokens are stored.
#[tokio::test]
async fn a_refresh_refused_after_a_stall_past_the_lease_keeps_the_newer_tokens() {
    use crate::fake_provider::{FakeProvider, login_with_fake};
    use secrecy::ExposeSecret;
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, ResponseTemplate};

    let fake = FakeProvider::start().await;
    let demo = spawn_demo_api(None);
    let settings =
        AppSettings::new(&fake.issuer).service("demo", &format!("{demo}/"), "provider = \"main\"");
    let keys = settings.encryption_keys.clone();
    let db = Arc::new(TestDb::new().await);
    let marks = tempfile::tempdir().unwrap();
    let (mark, resume) = (marks.path().join("stalled"), marks.path().join("resume"));
    let stalling = CourierProcess::start(
        db.clone(),
        CourierProcess::free_port(),
        &settings,
        &[
            ("COURIER_FAULT_POINT", "refresh:before_grant"),
            ("COURIER_FAULT_MARK", mark.to_str().unwrap()),
            ("COURIER_FAULT_RESUME", resume.to_str().unwrap()),
        ],
    )
    .await;
    let mut browser = Browser::new();
    login_with_fake(&stalling.app, &fake, &mut browser, "/").await;
    let cookie = browser
        .cookie(&stalling.app.address, "__Host-courier")
        .unwrap();
    // The first refresh rotates the login's refresh token; the provider refuses it after that.
    let refresh = || {
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("grant_type=refresh_token"))
            .and(body_string_contains("refresh_token=fake-refresh-token"))
    };
    refresh()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "newer-access-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": "newer-refresh-token",
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&fake.server)
        .await;
    refresh()
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .with_priority(2)
        .mount(&fake.server)
        .await;

    sqlx::query("UPDATE session_tokens SET expires_at = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    let get = |url: String| {
        let cookie = cookie.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .header("x-csrf", "1")
                .header("cookie", format!("__Host-courier={cookie}"))
                .send()
                .await
                .unwrap()
        }
    };
    // The stalling instance takes the lease and stops before its grant.
    let stalled = tokio::spawn(get(stalling.app.url("/api/services/demo/v1/items")));
    let mut waited = 0;
    while !mark.exists() {
        waited += 1;
        assert!(waited < 400, "the refresh never started");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Its lease lapses, as it does when a holder stops renewing it; another instance refreshes.
    sqlx::query("UPDATE refresh_leases SET held_until = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    let sibling = crate::helpers::TestApp::spawn_on_db(db.clone(), settings).await;
    let response = get(sibling.url("/api/services/demo/v1/items")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let newer = stored_refresh_token(&db, &keys).await.unwrap();
    assert_eq!(newer.expose_secret(), "newer-refresh-token");

    // The stalled instance goes on with the rotated-away token, and is refused.
    std::fs::write(&resume, "").unwrap();
    let response = stalled.await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "the newer tokens serve it: {body}");
    let kept = stored_refresh_token(&db, &keys).await;
    assert_eq!(
        kept.as_ref().map(|t| t.expose_secret().to_owned()),
        Some("newer-refresh-token".to_owned()),
        "the session and its newer tokens stand"
    );
    assert_eq!(get(sibling.url("/api/me")).await.status(), StatusCode::OK);
    stalling.stop().await;
}
