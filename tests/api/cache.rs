//! The in-process cache of sessions and tokens stays true across instances: what one instance
//! (or a hand in psql) changes, every instance sees at once; notifications lost while the
//! listener was away empty the cache.

use std::time::Duration;

use reqwest::StatusCode;

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, TestApp, TestDb};

const COOKIE: &str = "__Host-courier";

/// The backends of the courier instances listening on the test's database right now.
async fn listener_pids(db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn wait_for_listeners(db: &TestDb, n: usize) {
    for _ in 0..200 {
        if listener_pids(db).await.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} instances never listened");
}

/// Two instances on one database, both listening, and a browser logged in on the first with
/// its cookie copied to a second browser for the other instance.
async fn two_instances() -> (FakeProvider, TestApp, TestApp) {
    let fake = FakeProvider::start().await;
    let keys = vec![courier::crypto::generate_key()];
    let mut settings = AppSettings::new(&fake.issuer);
    settings.encryption_keys = keys.clone();
    let first = TestApp::spawn(TestApp::bind(), settings).await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.encryption_keys = keys;
    let second = first.spawn_sibling(settings).await;
    wait_for_listeners(&first.db, 2).await;
    (fake, first, second)
}

async fn login_on_both(
    fake: &FakeProvider,
    first: &TestApp,
    second: &TestApp,
) -> (Browser, Browser) {
    let mut on_first = Browser::new();
    login_with_fake(first, fake, &mut on_first, "/").await;
    let cookie = on_first.cookie(&first.address, COOKIE).unwrap();
    let mut on_second = Browser::new();
    on_second.set_cookie(&second.address, COOKIE, &cookie);
    // Twice each: the second answer comes from the cache.
    for _ in 0..2 {
        assert_eq!(first.me(&mut on_first).await.status(), StatusCode::OK);
        assert_eq!(second.me(&mut on_second).await.status(), StatusCode::OK);
    }
    (on_first, on_second)
}

#[tokio::test]
async fn a_logout_on_one_instance_ends_the_session_on_the_other_at_once() {
    let (fake, first, second) = two_instances().await;
    for _ in 0..10 {
        let (mut on_first, mut on_second) = login_on_both(&fake, &first, &second).await;
        first.logout(&mut on_first).await;
        // The logout answers once every listening instance has confirmed dropping the
        // session: the very next request to the other one must be refused.
        assert_eq!(
            second.me(&mut on_second).await.status(),
            StatusCode::UNAUTHORIZED,
            "the other instance still served a logged-out session"
        );
    }
    assert_eq!(first.db.count("sessions").await, 0);
}

#[tokio::test]
async fn a_session_deleted_by_hand_ends_on_every_instance() {
    let (fake, first, second) = two_instances().await;
    let (mut on_first, mut on_second) = login_on_both(&fake, &first, &second).await;
    sqlx::query("DELETE FROM sessions")
        .execute(&first.db.pool)
        .await
        .unwrap();
    // The notification travels on its own connection: give it a moment, not a poll loop that
    // would hide a cache that never hears it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        first.me(&mut on_first).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        second.me(&mut on_second).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn notifications_lost_while_the_listener_was_away_empty_the_cache() {
    let (fake, first, second) = two_instances().await;
    let (mut on_first, mut on_second) = login_on_both(&fake, &first, &second).await;
    let pool = &first.db.pool;

    // A change nobody announces (no triggers fire for a replica): the cache is what answers, so the session still works.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM sessions")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(first.me(&mut on_first).await.status(), StatusCode::OK);
    assert_eq!(second.me(&mut on_second).await.status(), StatusCode::OK);

    // The listeners' connections drop: whatever they may have missed, the caches are emptied
    // once they listen again.
    let old: Vec<i32> = listener_pids(&first.db).await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
        .bind(&old)
        .execute(pool)
        .await
        .unwrap();
    for (app, browser) in [(&first, &mut on_first), (&second, &mut on_second)] {
        let mut ended = false;
        for _ in 0..80 {
            if app.me(browser).await.status() == StatusCode::UNAUTHORIZED {
                ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(ended, "a cache kept serving after its listener reconnected");
    }
    // And they listen again by themselves, on new connections.
    wait_for_listeners(&first.db, 2).await;
    let new: Vec<i32> = listener_pids(&first.db).await;
    assert!(new.iter().all(|pid| !old.contains(pid)));
}

#[tokio::test]
async fn an_instance_that_never_confirms_holds_a_logout_up_for_a_second_at_most() {
    let (fake, first, second) = two_instances().await;
    let (mut on_first, mut on_second) = login_on_both(&fake, &first, &second).await;
    // An instance that registered as listening and then went silent (hung, partitioned).
    sqlx::query("INSERT INTO cache_listeners (instance_id, seen_at) VALUES ($1, now())")
        .bind(uuid::Uuid::new_v4())
        .execute(&first.db.pool)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    first.logout(&mut on_first).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "waited {waited:?} for the silent instance"
    );
    assert_eq!(
        second.me(&mut on_second).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let acks: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_acks")
        .fetch_one(&first.db.pool)
        .await
        .unwrap();
    assert_eq!(acks, 0, "a logout clears its confirmations");
}
