//! Userinfo at login and connect: an endpoint that refuses the access token (401/403, as for a
//! token made for the granted resource) leaves the login standing on its ID token; one that
//! names another `sub` fails it (`invalid_userinfo`); one that is down fails it
//! (`provider_unavailable`); a 401 asking for a DPoP nonce is answered with the nonce first.

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};
use wiremock::matchers::{header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fake_provider::{FakeProvider, login_with_fake, start_login};
use crate::helpers::{AppSettings, Browser, CapturedLog, NodeProvider, TestApp};

/// courier with the fake provider advertising `userinfo` as its userinfo endpoint (its own
/// `/userinfo` when `None`), configured with `extra_toml` for `main`.
async fn spawn_with_userinfo(userinfo: Option<&str>, extra_toml: &str) -> (TestApp, FakeProvider) {
    let fake = FakeProvider::start().await;
    let endpoint = userinfo
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}/userinfo", fake.issuer));
    fake.advertise(json!({ "userinfo_endpoint": endpoint }))
        .await;
    let mut settings = AppSettings::new(&fake.issuer);
    settings.extra_toml = extra_toml.to_owned();
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    (app, fake)
}

/// Logs in with a good ID token while userinfo answers `answer`; returns the browser and
/// where the callback sent it.
async fn login_answered_by(
    app: &TestApp,
    fake: &FakeProvider,
    answer: ResponseTemplate,
) -> (Browser, String) {
    let mut browser = Browser::new();
    let login = start_login(app, &mut browser, "/").await;
    // Answering the token request resets the fake's other answers: userinfo's comes after.
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
        .await;
    Mock::given(method("GET"))
        .and(path("/userinfo"))
        .respond_with(answer)
        .mount(&fake.server)
        .await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()[LOCATION].to_str().unwrap().to_owned();
    (browser, location)
}

#[tokio::test]
async fn a_userinfo_that_refuses_the_token_with_401_or_403_leaves_the_login_on_its_id_token() {
    let log = CapturedLog::install();
    let (app, fake) = spawn_with_userinfo(None, "").await;
    for status in [401, 403] {
        let refusal = ResponseTemplate::new(status).insert_header(
            "www-authenticate",
            r#"Bearer error="invalid_token", error_description="token audience prevents accessing the userinfo endpoint""#,
        );
        let (mut browser, location) = login_answered_by(&app, &fake, refusal).await;
        assert_eq!(location, "/", "userinfo answered {status}");
        let me = app.me(&mut browser).await;
        assert_eq!(me.status(), StatusCode::OK);
        let me: Value = me.json().await.unwrap();
        assert_eq!(me["sub"], "alice");
        assert_eq!(me["name"], "Alice Example", "the ID token's claims");
        assert_eq!(me["email"], "alice@example.test");
        let text = log.text();
        assert!(
            text.lines().any(|l| l.contains("WARN")
                && l.contains("provider=main")
                && l.contains("userinfo refused")
                && l.contains(&status.to_string())),
            "a warning names the provider: {text}"
        );
    }
}

#[tokio::test]
async fn a_userinfo_naming_another_sub_fails_the_login_with_invalid_userinfo() {
    let (app, fake) = spawn_with_userinfo(None, "").await;
    let other = ResponseTemplate::new(200).set_body_json(json!({ "sub": "mallory" }));
    let (_, location) = login_answered_by(&app, &fake, other).await;
    assert_eq!(location, "/?login_error=invalid_userinfo");
    assert_eq!(app.db.count("sessions").await, 0);
    // Its own `sub`: the login goes through, with userinfo's claims merged.
    let same = ResponseTemplate::new(200)
        .set_body_json(json!({ "sub": "alice", "locale": "de-CH", "name": "Alice U." }));
    let (mut browser, location) = login_answered_by(&app, &fake, same).await;
    assert_eq!(location, "/");
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    assert_eq!(me["claims"]["locale"], "de-CH");
    assert_eq!(me["name"], "Alice U.");
}

#[tokio::test]
async fn a_userinfo_that_fails_or_cannot_be_reached_fails_the_login_as_provider_unavailable() {
    let (app, fake) = spawn_with_userinfo(None, "").await;
    for failure in [
        ResponseTemplate::new(500),
        ResponseTemplate::new(503).set_body_string("<html>down</html>"),
    ] {
        let (_, location) = login_answered_by(&app, &fake, failure).await;
        assert_eq!(location, "/?login_error=provider_unavailable");
    }
    // An answer that is not a JSON object is unusable, not an outage.
    let garbage = ResponseTemplate::new(200).set_body_string("<html>hello</html>");
    let (_, location) = login_answered_by(&app, &fake, garbage).await;
    assert_eq!(location, "/?login_error=invalid_userinfo");
    assert_eq!(app.db.count("sessions").await, 0);

    // Nothing listens where the metadata says userinfo is.
    let closed = {
        let listener = TestApp::bind();
        format!("http://{}/userinfo", listener.local_addr().unwrap())
    };
    let (app, fake) = spawn_with_userinfo(Some(&closed), "").await;
    let mut browser = Browser::new();
    let response = login_with_fake(&app, &fake, &mut browser, "/").await;
    assert_eq!(
        response.headers()[LOCATION],
        "/?login_error=provider_unavailable"
    );
    assert_eq!(app.db.count("sessions").await, 0);
}

#[tokio::test]
async fn a_userinfo_401_asking_for_a_dpop_nonce_is_retried_with_it_not_taken_as_a_refusal() {
    let (app, fake) = spawn_with_userinfo(None, "dpop = true\n").await;
    let mut browser = Browser::new();
    let login = start_login(&app, &mut browser, "/").await;
    // Answers replaced: discovery, the keys, and these.
    fake.publish_keys(&["signing"]).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "dpop-bound-token",
            "token_type": "DPoP",
            "expires_in": 300,
            "id_token": fake.sign("signing", &fake.claims(&login.nonce)),
        })))
        .mount(&fake.server)
        .await;
    // The first proof carries no nonce: userinfo asks for one, once.
    Mock::given(method("GET"))
        .and(path("/userinfo"))
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
                .insert_header("dpop-nonce", "userinfo-nonce-1"),
        )
        .up_to_n_times(1)
        .mount(&fake.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/userinfo"))
        .and(header_exists("dpop"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "sub": "alice", "locale": "fr" })),
        )
        .mount(&fake.server)
        .await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(response.headers()[LOCATION], "/");
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    assert_eq!(
        me["claims"]["locale"], "fr",
        "userinfo's claims, after the retry"
    );
    let requests = fake.server.received_requests().await.unwrap();
    let userinfo: Vec<_> = requests
        .iter()
        .filter(|r| r.url.path() == "/userinfo")
        .collect();
    assert_eq!(userinfo.len(), 2, "one retry");
    let proof = userinfo[1].headers["dpop"].to_str().unwrap();
    let payload = proof.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["nonce"], "userinfo-nonce-1");
}

/// A plain OAuth 2.0 provider (GitHub-like) whose `/user` refuses the token it issued.
async fn refusing_plain_provider() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "gh-token",
            "token_type": "bearer",
            "scope": "repo",
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/user"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({ "message": "Forbidden" })))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn a_connect_whose_userinfo_refuses_the_token_still_links_the_account() {
    let fake = FakeProvider::start().await;
    let plain = refusing_plain_provider().await;
    let gh = plain.uri();
    let mut settings = AppSettings::new(&fake.issuer).service(
        "github",
        &format!("{gh}/api/"),
        "provider = \"github\"\nscopes = [\"repo\"]",
    );
    settings.extra_toml.push_str(&format!(
        r#"
[[providers]]
id = "github"
authorization_endpoint = "{gh}/authorize"
token_endpoint = "{gh}/token"
userinfo_endpoint = "{gh}/user"
client_id = "gh-client"
client_secret = "gh-secret"
scopes = ["read:user"]
"#
    ));
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    let user_id = me["user_id"].as_str().unwrap().to_owned();

    let start = browser
        .get(&app.url("/auth/connect/github?return_to=/repos"))
        .await;
    let authorize = url::Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let response = browser
        .get(&app.url(&format!("/auth/callback/github?code=gh-code&state={state}")))
        .await;
    assert_eq!(response.headers()[LOCATION], "/repos");
    // No subject could be learnt: the account is recorded as the courier user's, as at a
    // provider without userinfo.
    let subject: String =
        sqlx::query_scalar("SELECT subject FROM linked_accounts WHERE provider = 'github'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(subject, format!("user:{user_id}"));
}

#[tokio::test]
async fn a_login_whose_access_token_is_made_for_the_granted_resource_succeeds_at_a_real_provider() {
    const ORDERS: &str = "https://orders.example/";
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    // node-oidc-provider issues the code exchange's token for the one resource the login was
    // granted; its userinfo endpoint refuses that token.
    let provider = NodeProvider::for_courier(
        port,
        json!({
            "resource_servers": { ORDERS: { "scope": "orders:read" } },
            "use_granted_resource": true,
        }),
    )
    .await;
    let settings = AppSettings::new(&provider.issuer).service(
        "orders",
        "http://127.0.0.1:9/",
        &format!("provider = \"main\"\nresource = \"{ORDERS}\""),
    );
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();
    let response = app.login(&mut browser, "alice").await;
    assert_eq!(response.headers()[LOCATION], "/after-login");
    let me: Value = app.me(&mut browser).await.json().await.unwrap();
    assert_eq!(me["sub"], "alice");
    assert_eq!(me["name"], "User alice", "the ID token's claims");
}
