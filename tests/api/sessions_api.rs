//! A user's sessions: `GET /api/sessions`, `DELETE /api/sessions/{id}`, `DELETE /api/sessions`,
//! and the operator's `courier sessions list|end` (the real binary). An ended session is
//! refused by every instance before the reply, and its refresh token is revoked.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::fake_provider::{FakeProvider, login_with_fake, now};
use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp, TestDb, config_text};

const COOKIE: &str = "__Host-courier";
const CHROME_ON_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const FIREFOX_ON_MACOS: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0";
const CURL: &str = "curl/8.5.0";

/// Two courier instances on one database, both listening for cache announcements, and the
/// provider their logins go through (registered for the first one's callback).
struct Cluster {
    provider: NodeProvider,
    first: TestApp,
    second: TestApp,
    keys: Vec<String>,
}

async fn wait_for_listeners(db: &TestDb, n: i64) {
    for _ in 0..200 {
        let listening: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_listeners")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if listening == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} instances never listened");
}

async fn cluster(provider_extra: Value) -> Cluster {
    let listener = TestApp::bind();
    let provider =
        NodeProvider::for_courier(listener.local_addr().unwrap().port(), provider_extra).await;
    let settings = AppSettings::new(&provider.issuer);
    let keys = settings.encryption_keys.clone();
    let first = TestApp::spawn(listener, settings).await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.encryption_keys = keys.clone();
    let second = first.spawn_sibling(settings).await;
    wait_for_listeners(&first.db, 2).await;
    Cluster {
        provider,
        first,
        second,
        keys,
    }
}

/// A browser sending `user_agent`, signed in as `user` on `app`.
async fn signed_in(app: &TestApp, user_agent: &str, user: &str) -> Browser {
    let mut browser = Browser::with_user_agent(user_agent);
    let response = app.login(&mut browser, user).await;
    assert!(
        response.status().is_redirection(),
        "login of {user}: {}",
        response.status()
    );
    let to = response.headers()["location"].to_str().unwrap();
    assert!(!to.contains("login_error"), "login of {user}: {to}");
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    browser
}

/// The same session (its cookie) in a browser for another instance.
fn on_instance(browser: &Browser, from: &TestApp, to: &TestApp) -> Browser {
    let mut other = Browser::new();
    other.set_cookie(
        &to.address,
        COOKIE,
        &browser.cookie(&from.address, COOKIE).unwrap(),
    );
    other
}

async fn sessions(app: &TestApp, browser: &mut Browser) -> Vec<Value> {
    let response = app.api(browser, Method::GET, "/api/sessions").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    body["sessions"].as_array().unwrap().clone()
}

/// The public id of the browser's own session.
async fn own_id(app: &TestApp, browser: &mut Browser) -> String {
    let list = sessions(app, browser).await;
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "exactly one current session: {list:?}");
    current[0]["id"].as_str().unwrap().to_owned()
}

async fn delete(app: &TestApp, browser: &mut Browser, path: &str) -> reqwest::Response {
    app.api(browser, Method::DELETE, path).await
}

async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
}

/// The refresh token of the session with this public id, as stored.
async fn refresh_token(cluster: &Cluster, public_id: &str) -> SecretString {
    let keys: Vec<SecretString> = cluster.keys.iter().map(|k| k.clone().into()).collect();
    let ring = courier::crypto::KeyRing::from_config(&keys).unwrap();
    let id: Uuid = sqlx::query_scalar("SELECT id FROM sessions WHERE public_id = $1")
        .bind(Uuid::parse_str(public_id).unwrap())
        .fetch_one(&cluster.first.db.pool)
        .await
        .unwrap();
    courier::db::session_tokens::get(&cluster.first.db.pool, &ring, id)
        .await
        .unwrap()
        .unwrap()
        .tokens
        .refresh_token
        .expect("the provider issued a refresh token")
}

#[tokio::test]
async fn a_user_sees_their_live_sessions_with_the_current_one_marked() {
    let c = cluster(json!({})).await;
    let app = &c.first;
    let mut chrome = signed_in(app, CHROME_ON_LINUX, "alice").await;
    let mut firefox = signed_in(app, FIREFOX_ON_MACOS, "alice").await;
    let mut bob = signed_in(app, CURL, "bob").await;

    let seen_by_chrome = sessions(app, &mut chrome).await;
    assert_eq!(seen_by_chrome.len(), 2, "{seen_by_chrome:?}");
    let by_agent = |list: &[Value], agent: &str| -> Value {
        list.iter()
            .find(|s| s["user_agent"] == agent)
            .unwrap_or_else(|| panic!("a session from {agent} in {list:?}"))
            .clone()
    };
    assert_eq!(
        by_agent(&seen_by_chrome, "Chrome on Linux")["current"],
        true
    );
    assert_eq!(
        by_agent(&seen_by_chrome, "Firefox on macOS")["current"],
        false
    );

    // The other browser sees the same two sessions, with itself current.
    let seen_by_firefox = sessions(app, &mut firefox).await;
    assert_eq!(seen_by_firefox.len(), 2);
    assert_eq!(
        by_agent(&seen_by_firefox, "Chrome on Linux")["current"],
        false
    );
    assert_eq!(
        by_agent(&seen_by_firefox, "Firefox on macOS")["current"],
        true
    );
    let ids = |list: &[Value]| -> Vec<String> {
        let mut ids: Vec<String> = list
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&seen_by_chrome), ids(&seen_by_firefox));

    // Bob sees only his own.
    let seen_by_bob = sessions(app, &mut bob).await;
    assert_eq!(seen_by_bob.len(), 1);
    assert_eq!(seen_by_bob[0]["user_agent"], "curl");
    assert_eq!(seen_by_bob[0]["current"], true);
    assert!(!ids(&seen_by_chrome).contains(&seen_by_bob[0]["id"].as_str().unwrap().to_owned()));

    // Every field, for the current session, agrees with the row and with /api/me.
    let current = by_agent(&seen_by_chrome, "Chrome on Linux");
    let me: Value = app.me(&mut chrome).await.json().await.unwrap();
    assert_eq!(current["provider"], "main");
    assert_eq!(current["created_at"], me["session"]["created_at"]);
    assert_eq!(current["expires_at"], me["session"]["expires_at"]);
    let (internal, last_seen): (Uuid, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT id, last_seen_at FROM sessions WHERE public_id = $1")
            .bind(Uuid::parse_str(current["id"].as_str().unwrap()).unwrap())
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let listed_last_seen: chrono::DateTime<chrono::Utc> =
        current["last_seen_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(listed_last_seen, last_seen);
    // The public id is neither the row's id, nor the cookie, nor the cookie's hash.
    let public = current["id"].as_str().unwrap();
    assert_ne!(public, internal.to_string());
    let cookie = chrome.cookie(&app.address, COOKIE).unwrap();
    assert!(!cookie.contains(public) && !public.contains(&cookie));
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_hash FROM sessions")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    for hash in hashes {
        assert_ne!(Uuid::from_slice(&hash[..16]).unwrap().to_string(), public);
    }

    // The raw header is not stored: only its summary.
    let agents: Vec<Option<String>> =
        sqlx::query_scalar("SELECT user_agent FROM sessions ORDER BY user_agent")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        agents,
        [
            Some("Chrome on Linux".to_owned()),
            Some("Firefox on macOS".to_owned()),
            Some("curl".to_owned())
        ]
    );

    // An expired session is not listed.
    app.clock.advance(chrono::Duration::hours(9));
    assert_eq!(
        app.api(&mut chrome, Method::GET, "/api/sessions")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn ending_another_session_refuses_it_on_every_instance_at_once_and_revokes_its_refresh_token()
{
    let c = cluster(json!({})).await;
    let (first, second) = (&c.first, &c.second);
    let mut laptop = signed_in(first, CHROME_ON_LINUX, "alice").await;
    let phone = signed_in(first, FIREFOX_ON_MACOS, "alice").await;
    let mut phone_on_second = on_instance(&phone, first, second);
    // Twice: the second answer comes from the other instance's cache.
    for _ in 0..2 {
        assert_eq!(
            second.me(&mut phone_on_second).await.status(),
            StatusCode::OK
        );
    }
    let laptop_id = own_id(first, &mut laptop).await;
    let phone_id = sessions(first, &mut laptop)
        .await
        .into_iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let phone_refresh = refresh_token(&c, &phone_id).await;
    let laptop_refresh = refresh_token(&c, &laptop_id).await;
    assert!(c.provider.is_active(&phone_refresh).await);

    let response = delete(first, &mut laptop, &format!("/api/sessions/{phone_id}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers().get("set-cookie").is_none(),
        "the laptop's own cookie stays"
    );
    // The very next request on the other instance is refused: no cache expiry was waited for.
    assert_eq!(
        second.me(&mut phone_on_second).await.status(),
        StatusCode::UNAUTHORIZED,
        "the other instance still served an ended session"
    );
    let mut phone = phone;
    assert_eq!(
        first.me(&mut phone).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(
        !c.provider.is_active(&phone_refresh).await,
        "the ended session's refresh token is revoked"
    );
    assert!(
        c.provider.is_active(&laptop_refresh).await,
        "the laptop's is not"
    );

    // The laptop goes on, alone in the list.
    assert_eq!(first.me(&mut laptop).await.status(), StatusCode::OK);
    let left = sessions(first, &mut laptop).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], laptop_id.as_str());

    // Ending it again: it is no longer one of the user's sessions.
    let again = delete(first, &mut laptop, &format!("/api/sessions/{phone_id}")).await;
    assert_problem(again, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn ending_a_foreign_or_bogus_session_is_not_found_and_changes_nothing() {
    let c = cluster(json!({})).await;
    let app = &c.first;
    let mut alice = signed_in(app, CHROME_ON_LINUX, "alice").await;
    let mut bob = signed_in(app, CURL, "bob").await;
    let bobs = own_id(app, &mut bob).await;
    let bobs_refresh = refresh_token(&c, &bobs).await;
    let internal: Uuid = sqlx::query_scalar("SELECT id FROM sessions WHERE public_id = $1")
        .bind(Uuid::parse_str(&bobs).unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();

    for id in [
        bobs.clone(),
        internal.to_string(),
        Uuid::new_v4().to_string(),
        "not-a-session".to_owned(),
        "%00".to_owned(),
        "1".repeat(300),
        bobs.to_uppercase().replace('-', ""),
    ] {
        let response = delete(app, &mut alice, &format!("/api/sessions/{id}")).await;
        assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(app.db.count("sessions").await, 2);
    assert_eq!(app.me(&mut bob).await.status(), StatusCode::OK);
    assert_eq!(app.me(&mut alice).await.status(), StatusCode::OK);
    assert!(c.provider.is_active(&bobs_refresh).await);

    // Without the CSRF header, nothing is listed or ended.
    let alices = own_id(app, &mut alice).await;
    for (method, path) in [
        (Method::GET, "/api/sessions".to_owned()),
        (Method::DELETE, "/api/sessions".to_owned()),
        (Method::DELETE, format!("/api/sessions/{alices}")),
    ] {
        let response = alice.send(method, &app.url(&path), &[], None).await;
        assert_problem(response, StatusCode::FORBIDDEN, "csrf_required").await;
    }
    assert_eq!(app.db.count("sessions").await, 2);

    // Without a session: 401.
    let mut nobody = Browser::new();
    let response = delete(app, &mut nobody, &format!("/api/sessions/{bobs}")).await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "login_required").await;
    let response = app.api(&mut nobody, Method::GET, "/api/sessions").await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "login_required").await;
    assert_eq!(app.db.count("sessions").await, 2);
}

#[tokio::test]
async fn ending_the_current_session_is_a_logout_that_clears_the_cookie() {
    let c = cluster(json!({})).await;
    let (first, second) = (&c.first, &c.second);
    let mut browser = signed_in(first, CHROME_ON_LINUX, "alice").await;
    let mut on_second = on_instance(&browser, first, second);
    assert_eq!(second.me(&mut on_second).await.status(), StatusCode::OK);
    let id = own_id(first, &mut browser).await;
    let refresh = refresh_token(&c, &id).await;

    let response = delete(first, &mut browser, &format!("/api/sessions/{id}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        browser.cookie(&first.address, COOKIE).is_none(),
        "the cookie is cleared"
    );
    assert_eq!(
        second.me(&mut on_second).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(first.db.count("sessions").await, 0);
    assert!(!c.provider.is_active(&refresh).await);
}

#[tokio::test]
async fn ending_every_other_session_keeps_the_current_one_and_only_the_users() {
    let c = cluster(json!({})).await;
    let (first, second) = (&c.first, &c.second);
    let mut laptop = signed_in(first, CHROME_ON_LINUX, "alice").await;
    let phone = signed_in(first, FIREFOX_ON_MACOS, "alice").await;
    let tablet = signed_in(first, CURL, "alice").await;
    let mut bob = signed_in(first, CURL, "bob").await;
    let mut phone_on_second = on_instance(&phone, first, second);
    let mut tablet_on_second = on_instance(&tablet, first, second);
    for browser in [&mut phone_on_second, &mut tablet_on_second] {
        assert_eq!(second.me(browser).await.status(), StatusCode::OK);
    }
    let others: Vec<String> = sessions(first, &mut laptop)
        .await
        .into_iter()
        .filter(|s| s["current"] == false)
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(others.len(), 2);
    let mut refresh = Vec::new();
    for id in &others {
        refresh.push(refresh_token(&c, id).await);
    }

    let response = delete(first, &mut laptop, "/api/sessions").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for browser in [&mut phone_on_second, &mut tablet_on_second] {
        assert_eq!(
            second.me(browser).await.status(),
            StatusCode::UNAUTHORIZED,
            "an ended session still served on the other instance"
        );
    }
    for token in &refresh {
        assert!(!c.provider.is_active(token).await, "revoked");
    }
    assert_eq!(first.me(&mut laptop).await.status(), StatusCode::OK);
    assert_eq!(sessions(first, &mut laptop).await.len(), 1);
    assert_eq!(
        first.me(&mut bob).await.status(),
        StatusCode::OK,
        "bob's stays"
    );

    // With nothing else left it is still a success.
    let response = delete(first, &mut laptop, "/api/sessions").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn ending_every_other_session_needs_a_login_under_ten_minutes_old() {
    let c = cluster(json!({})).await;
    let app = &c.first;
    let mut old = signed_in(app, CHROME_ON_LINUX, "alice").await;
    let mut other = signed_in(app, FIREFOX_ON_MACOS, "alice").await;
    let ten_minutes = chrono::Duration::minutes(10) + chrono::Duration::seconds(5);
    app.clock.advance(ten_minutes);

    let response = delete(app, &mut old, "/api/sessions").await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "reauth_required").await;
    // Refused, nothing ended: not even the asking session.
    assert_eq!(app.me(&mut old).await.status(), StatusCode::OK);
    assert_eq!(app.me(&mut other).await.status(), StatusCode::OK);
    assert_eq!(app.db.count("sessions").await, 2);

    // Logins are checked against the clock too (an ID token's `iat`): back to the present,
    // with logins recorded as 11 minutes old.
    app.clock.advance(-ten_minutes);
    sqlx::query("UPDATE sessions SET auth_time = auth_time - interval '11 minutes'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let response = delete(app, &mut old, "/api/sessions").await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "reauth_required").await;
    assert_eq!(app.db.count("sessions").await, 2);

    // Signing in again makes it recent.
    let mut fresh = signed_in(app, CHROME_ON_LINUX, "alice").await;
    let response = delete(app, &mut fresh, "/api/sessions").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.me(&mut old).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&mut other).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&mut fresh).await.status(), StatusCode::OK);
}

/// Logs in through the fake provider with an ID token whose `auth_time` is `auth_time`.
async fn login_with_auth_time(app: &TestApp, fake: &FakeProvider, auth_time: i64) -> Browser {
    let mut browser = Browser::with_user_agent(FIREFOX_ON_MACOS);
    let login = crate::fake_provider::start_login(app, &mut browser, "/").await;
    let mut claims = fake.claims(&login.nonce);
    claims["auth_time"] = json!(auth_time);
    fake.answer_token_with(&fake.sign("signing", &claims)).await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert!(response.status().is_redirection());
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    browser
}

#[tokio::test]
async fn the_id_tokens_auth_time_is_what_must_be_recent() {
    let fake = FakeProvider::start().await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    let mut other = Browser::new();
    login_with_fake(&app, &fake, &mut other, "/").await;

    // A new session, but the user authenticated at the provider 20 minutes ago (single
    // sign-on): not recent enough.
    let mut stale = login_with_auth_time(&app, &fake, now() - 20 * 60).await;
    let response = delete(&app, &mut stale, "/api/sessions").await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "reauth_required").await;
    assert_eq!(app.me(&mut other).await.status(), StatusCode::OK);

    let mut recent = login_with_auth_time(&app, &fake, now() - 60).await;
    let response = delete(&app, &mut recent, "/api/sessions").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.me(&mut other).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&mut stale).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&mut recent).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn ending_a_session_does_not_wait_for_a_provider_that_is_down() {
    let mut c = cluster(json!({})).await;
    let app = &c.first;
    let mut laptop = signed_in(app, CHROME_ON_LINUX, "alice").await;
    let mut phone = signed_in(app, FIREFOX_ON_MACOS, "alice").await;
    let phone_id = own_id(app, &mut phone).await;
    c.provider.stop().await;

    let started = Instant::now();
    let response = delete(app, &mut laptop, &format!("/api/sessions/{phone_id}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let app = &c.first;
    assert_eq!(app.me(&mut phone).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&mut laptop).await.status(), StatusCode::OK);
}

/// Runs the `courier` binary with `args` and `settings` for `app`'s database; returns its exit
/// code, stdout and stderr.
async fn courier_cli(
    app: &TestApp,
    settings: &AppSettings,
    args: &[&str],
) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("courier.toml");
    std::fs::write(&config, config_text(app.port, &app.db.url, settings)).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Cluster {
    /// `courier sessions …` with the cluster's configuration.
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut settings = AppSettings::new(&self.provider.issuer);
        settings.encryption_keys = self.keys.clone();
        courier_cli(&self.first, &settings, args).await
    }
}

#[tokio::test]
async fn the_sessions_command_lists_and_ends_sessions_on_every_instance_at_once() {
    let c = cluster(json!({})).await;
    let (first, second) = (&c.first, &c.second);
    let mut laptop = signed_in(first, CHROME_ON_LINUX, "alice").await;
    let phone = signed_in(first, FIREFOX_ON_MACOS, "alice").await;
    let mut bob = signed_in(first, CURL, "bob").await;
    let mut carol = signed_in(first, CURL, "carol").await;
    let mut laptop_on_second = on_instance(&laptop, first, second);
    let mut phone_on_second = on_instance(&phone, first, second);
    for browser in [&mut laptop_on_second, &mut phone_on_second] {
        assert_eq!(second.me(browser).await.status(), StatusCode::OK);
    }

    // `list`: one JSON object per line, alice's two sessions with the ids she sees.
    let (code, out, err) = c.cli(&["sessions", "list", "--sub", "alice"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    let mut listed: Vec<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut seen: Vec<String> = sessions(first, &mut laptop)
        .await
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    assert_eq!(listed, seen);
    for line in &lines {
        assert_eq!(line["sub"], "alice");
        assert_eq!(line["provider"], "main");
        assert!(line["expires_at"].is_string() && line["last_seen_at"].is_string());
    }
    assert!(out.contains("\"user_agent\":\"Firefox on macOS\""), "{out}");
    assert!(err.contains("2 live session(s)"), "{err}");
    let refresh = refresh_token(&c, &listed[0]).await;

    // `end --sub`: both of alice's sessions are refused by both instances once it returns.
    let (code, out, err) = c.cli(&["sessions", "end", "--sub", "alice"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ended 2 session(s)"), "{out}");
    assert!(out.contains("revoked 2 refresh token(s)"), "{out}");
    for browser in [&mut laptop_on_second, &mut phone_on_second] {
        assert_eq!(
            second.me(browser).await.status(),
            StatusCode::UNAUTHORIZED,
            "an ended session still served"
        );
    }
    assert_eq!(
        first.me(&mut laptop).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(!c.provider.is_active(&refresh).await, "revoked");
    assert_eq!(first.me(&mut bob).await.status(), StatusCode::OK);
    let (code, out, _) = c.cli(&["sessions", "list", "--sub", "alice"]).await;
    assert_eq!((code, out.as_str()), (0, ""));

    // `end --user`: bob's, by his user id.
    let bob_id: Value = first.me(&mut bob).await.json().await.unwrap();
    let bob_id = bob_id["user_id"].as_str().unwrap().to_owned();
    let (code, out, err) = c.cli(&["sessions", "end", "--user", &bob_id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ended 1 session(s)"), "{out}");
    assert_eq!(first.me(&mut bob).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(first.me(&mut carol).await.status(), StatusCode::OK);

    // `end --all`, for the login provider named explicitly.
    let (code, out, err) = c
        .cli(&["sessions", "end", "--all", "--provider", "main"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ended 1 session(s)"), "{out}");
    assert_eq!(
        first.me(&mut carol).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(first.db.count("sessions").await, 0);
}

#[tokio::test]
async fn the_sessions_command_refuses_what_it_cannot_do() {
    let fake = FakeProvider::start().await;
    let keys = vec![courier::crypto::generate_key()];
    let settings = || {
        let mut settings = AppSettings::new(&fake.issuer);
        settings.encryption_keys = keys.clone();
        // A provider that is not a login provider.
        settings.extra_toml.push_str(
            r#"
[[providers]]
id = "github"
authorization_endpoint = "http://127.0.0.1:9/authorize"
token_endpoint = "http://127.0.0.1:9/token"
client_id = "courier"
client_secret = "secret"
"#,
        );
        settings
    };
    let app = TestApp::spawn(TestApp::bind(), settings()).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let settings = settings();

    for (args, expected) in [
        (
            &["sessions", "list", "--sub", "alice", "--provider", "nope"][..],
            "--provider nope: no such provider",
        ),
        (
            &["sessions", "end", "--sub", "alice", "--provider", "github"][..],
            "--provider github: not a login provider",
        ),
        (
            &["sessions", "end", "--all", "--provider", "github"][..],
            "--provider github: not a login provider",
        ),
        (
            &["sessions", "end", "--sub", "alice", "--all"][..],
            "cannot be used with",
        ),
        (&["sessions", "end"][..], "required"),
        (&["sessions", "end", "--user", "not-a-uuid"][..], "--user"),
    ] {
        let (code, _, err) = courier_cli(&app, &settings, args).await;
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    assert_eq!(app.db.count("sessions").await, 1);

    // The sub of the one login provider, without --provider.
    let (code, out, err) =
        courier_cli(&app, &settings, &["sessions", "list", "--sub", "alice"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

/// Registers an instance that listens (by its heartbeat) but never confirms anything.
async fn add_silent_instance(db: &TestDb) {
    sqlx::query("INSERT INTO cache_listeners (instance_id, seen_at) VALUES ($1, now())")
        .bind(Uuid::new_v4())
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn every_ending_waits_for_every_listening_instance_to_confirm() {
    // The fake provider has no revocation endpoint: nothing but the confirmations can take time.
    let fake = FakeProvider::start().await;
    let settings = AppSettings::new(&fake.issuer);
    let keys = settings.encryption_keys.clone();
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    wait_for_listeners(&app.db, 1).await;
    // The first one ends the others: its login is recent by its ID token's `auth_time`.
    let mut browsers = vec![login_with_auth_time(&app, &fake, now()).await];
    for _ in 0..3 {
        let mut browser = Browser::new();
        login_with_fake(&app, &fake, &mut browser, "/").await;
        browsers.push(browser);
    }
    let victim = own_id(&app, &mut browsers[1]).await;
    add_silent_instance(&app.db).await;

    // One instance never confirms: each ending answers only after giving it the full second.
    let started = Instant::now();
    let response = delete(&app, &mut browsers[0], &format!("/api/sessions/{victim}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let response = delete(&app, &mut browsers[0], "/api/sessions").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    let mut settings = AppSettings::new(&fake.issuer);
    settings.encryption_keys = keys;
    let started = Instant::now();
    let (code, out, err) = courier_cli(&app, &settings, &["sessions", "end", "--all"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ended 1 session(s)"), "{out}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.db.count("sessions").await, 0);
}

#[tokio::test]
async fn ending_a_thousand_sessions_at_once_ends_them_everywhere() {
    let fake = FakeProvider::start().await;
    let settings = AppSettings::new(&fake.issuer);
    let keys = settings.encryption_keys.clone();
    let first = TestApp::spawn(TestApp::bind(), settings).await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.encryption_keys = keys.clone();
    let second = first.spawn_sibling(settings).await;
    wait_for_listeners(&first.db, 2).await;
    let mut keep = login_with_auth_time(&first, &fake, now()).await;
    let mut other = Browser::new();
    login_with_fake(&first, &fake, &mut other, "/").await;
    let mut other_on_second = on_instance(&other, &first, &second);
    assert_eq!(
        second.me(&mut other_on_second).await.status(),
        StatusCode::OK
    );
    // More of the same user's sessions than one batch, as other browsers would have made.
    sqlx::query(
        "INSERT INTO sessions (id, key_hash, user_id, provider, subject, created_at,
                               last_seen_at, idle_expires_at, absolute_expires_at, public_id,
                               auth_time)
         SELECT gen_random_uuid(), sha256(n::text::bytea), user_id, provider, subject,
                created_at, last_seen_at, idle_expires_at, absolute_expires_at,
                gen_random_uuid(), auth_time
         FROM (SELECT * FROM sessions LIMIT 1) AS s, generate_series(1, 1100) AS n",
    )
    .execute(&first.db.pool)
    .await
    .unwrap();
    assert_eq!(first.db.count("sessions").await, 1102);

    let response = delete(&first, &mut keep, "/api/sessions").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        second.me(&mut other_on_second).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(first.db.count("sessions").await, 1);
    assert_eq!(first.me(&mut keep).await.status(), StatusCode::OK);

    // The operator's command too, for every session.
    let mut settings = AppSettings::new(&fake.issuer);
    settings.encryption_keys = keys;
    let (code, out, err) = courier_cli(&first, &settings, &["sessions", "end", "--all"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ended 1 session(s)"), "{out}");
    assert_eq!(first.me(&mut keep).await.status(), StatusCode::UNAUTHORIZED);
}
