//! django-oauth-toolkit (`tests/dot-provider/`) as a second, independent real provider: a
//! login through its own login and consent pages, `/api/me`, a proxied call whose token the
//! service checks at the provider, refresh with rotation, a refused refresh, RP-initiated
//! logout and revocation. What it does differently from node-oidc-provider is written down in
//! tests/dot-provider/README.md.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::{Method, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use url::Url;

use crate::helpers::{AppSettings, Browser, CLIENT_ID, CLIENT_SECRET, TestApp, location};

/// The password serve.py gives every test user.
const PASSWORD: &str = "courier-test-password";

/// django-oauth-toolkit, started for one test from `tests/dot-provider/serve.py` with the
/// venv that scripts/test installs into `target/dot-provider`. Its sqlite database lives in a
/// temporary directory of this test. Dropping it kills the process and removes the directory.
pub struct DotProvider {
    /// `http://127.0.0.1:{port}/o`: django-oauth-toolkit's URLs are mounted under `/o/`.
    pub issuer: String,
    _child: tokio::process::Child,
    _data: tempfile::TempDir,
}

impl DotProvider {
    pub async fn start(config: Value) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("target/dot-provider/bin/python");
        assert!(
            python.exists(),
            "run scripts/test first: it installs tests/dot-provider/requirements.txt into target/dot-provider"
        );
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut child = tokio::process::Command::new(python)
            .arg(root.join("tests/dot-provider/serve.py"))
            .env("DOT_CONFIG", config.to_string())
            .env("DOT_DATA_DIR", data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the django-oauth-toolkit provider");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read provider output") {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    return issuer.trim().to_owned();
                }
            }
            panic!("the provider exited before it was ready");
        })
        .await
        .expect("the provider starts within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        DotProvider {
            issuer,
            _child: child,
            _data: data,
        }
    }

    /// The provider with courier's confidential client registered for the app on `port`
    /// (as provider `main`), issuing access tokens that live `access_token_ttl` seconds.
    pub async fn for_courier(port: u16, access_token_ttl: u64) -> Self {
        Self::start(json!({
            "access_token_ttl": access_token_ttl,
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [format!("http://127.0.0.1:{port}/auth/callback/main")],
                "post_logout_redirect_uris": [format!("http://127.0.0.1:{port}/")],
            }]
        }))
        .await
    }

    pub(crate) fn endpoint(&self, name: &str) -> String {
        format!("{}/{name}/", self.issuer)
    }

    /// RFC 7662 introspection as courier's client. django-oauth-toolkit introspects access
    /// tokens only: a refresh token is always `{"active": false}`.
    pub async fn introspect(&self, token: &SecretString) -> Value {
        reqwest::Client::new()
            .post(self.endpoint("introspect"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token.expose_secret())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A refresh grant made directly, as courier's client: the status and the JSON body.
    pub async fn refresh(&self, refresh_token: &SecretString) -> (StatusCode, Value) {
        let response = reqwest::Client::new()
            .post(self.endpoint("token"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose_secret()),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Revokes `token` (RFC 7009) as courier's client.
    pub async fn revoke(&self, token: &SecretString, hint: &str) {
        let response = reqwest::Client::new()
            .post(self.endpoint("revoke_token"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token.expose_secret()), ("token_type_hint", hint)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "revocation at DOT");
    }
}

/// The `<input>` fields of an HTML form that a browser would submit without the user's
/// help: hidden ones (Django's CSRF token, the authorization request's parameters).
fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    fn attribute(tag: &str, name: &str) -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = start + tag[start..].find('"')?;
        Some(
            tag[start..end]
                .replace("&quot;", "\"")
                .replace("&#x27;", "'")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    }
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            (attribute(tag, "type").as_deref() == Some("hidden"))
                .then(|| Some((attribute(tag, "name")?, attribute(tag, "value")?)))?
        })
        .collect()
}

/// Submits the form on `page` (fetched from `url`) to `action` with its hidden fields and
/// `extra`, as a browser does. Returns the answer (not followed).
async fn submit(
    browser: &mut Browser,
    action: &Url,
    page: &str,
    extra: &[(&str, &str)],
) -> Response {
    let hidden = hidden_inputs(page);
    let mut fields: Vec<(&str, &str)> = hidden
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    fields.extend_from_slice(extra);
    browser
        .send(Method::POST, action.as_str(), &[], Some(&fields))
        .await
}

/// A login as `user` through DOT's pages: `/auth/login` → DOT's authorize endpoint → Django's
/// login form → DOT's consent form ("Authorize") → courier's callback. Returns the callback
/// URL DOT sent the browser to and courier's answer to it.
async fn login(app: &TestApp, browser: &mut Browser, user: &str) -> (Url, Response) {
    login_answering_consent(app, browser, user, true).await
}

/// Like `login`, pressing "Authorize" on the consent page when `allow`, else "Cancel".
async fn login_answering_consent(
    app: &TestApp,
    browser: &mut Browser,
    user: &str,
    allow: bool,
) -> (Url, Response) {
    login_at(
        app,
        browser,
        "/auth/login?return_to=/after-login",
        user,
        allow,
    )
    .await
}

/// A login through DOT's pages that starts at courier's `start` (a `/auth/login…` path).
pub(crate) async fn login_at(
    app: &TestApp,
    browser: &mut Browser,
    start: &str,
    user: &str,
    allow: bool,
) -> (Url, Response) {
    let (login_url, page) = browser.follow(&app.url(start), |_| false).await;
    assert_eq!(page.status(), StatusCode::OK, "{login_url}");
    assert_eq!(login_url.path(), "/accounts/login/", "DOT wants a login");
    let page = page.text().await.unwrap();
    let action = login_url.join("/accounts/login/").unwrap();
    let answer = submit(
        browser,
        &action,
        &page,
        &[("username", user), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(answer.status(), StatusCode::FOUND, "the login form took it");
    let authorize = location(&action, &answer);
    assert_eq!(authorize.path(), "/o/authorize/");

    let (consent_url, page) = browser.follow(authorize.as_str(), |_| false).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("authorizationForm"), "DOT asks for consent");
    // The consent form posts to the URL it was shown at.
    // "Cancel" is a submit button without a name: the form goes without `allow`.
    let button: &[(&str, &str)] = if allow {
        &[("allow", "Authorize")]
    } else {
        &[]
    };
    let answer = submit(browser, &consent_url, &page, button).await;
    assert_eq!(answer.status(), StatusCode::FOUND, "consent answered");
    let callback = location(&consent_url, &answer);
    assert_eq!(
        callback.port(),
        Some(app.port),
        "back to courier: {callback}"
    );
    let response = browser.get(callback.as_str()).await;
    (callback, response)
}

/// courier with DOT as its login provider, a logged-in browser, and the demo API (checking
/// tokens by introspection at DOT) as service `orders`.
struct World {
    app: TestApp,
    provider: DotProvider,
    browser: Browser,
    keys: Vec<String>,
}

impl World {
    async fn start(access_token_ttl: u64) -> World {
        let listener = TestApp::bind();
        let port = listener.local_addr().unwrap().port();
        let provider = DotProvider::for_courier(port, access_token_ttl).await;
        let demo = spawn_demo_api_checking_at(&provider);
        let mut settings = AppSettings::new(&provider.issuer);
        // DOT knows no `offline_access`, and refuses a request that asks for it
        // (`invalid_scope`); it issues refresh tokens with every code anyway.
        settings.scopes = vec!["openid", "profile", "email"];
        // DOT's OpenID discovery document names no revocation endpoint (only its RFC 8414
        // metadata does). These lines continue the `main` provider's table.
        settings.extra_toml = format!(
            "revocation_endpoint = \"{}\"\n",
            provider.endpoint("revoke_token")
        );
        let settings = settings.service("orders", &format!("{demo}/"), "provider = \"main\"");
        let keys = settings.encryption_keys.clone();
        let app = TestApp::spawn(listener, settings).await;
        let mut browser = Browser::new();
        let (_, response) = login(&app, &mut browser, "alice").await;
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()[LOCATION], "/after-login");
        World {
            app,
            provider,
            browser,
            keys,
        }
    }

    async fn stored_tokens(&self) -> courier::tokens::TokenSet {
        let keys: Vec<SecretString> = self.keys.iter().map(|k| k.clone().into()).collect();
        let ring = courier::crypto::KeyRing::from_config(&keys).unwrap();
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions")
            .fetch_one(&self.app.db.pool)
            .await
            .unwrap();
        courier::db::session_tokens::get(&self.app.db.pool, &ring, id)
            .await
            .unwrap()
            .unwrap()
            .tokens
    }

    async fn call(&mut self, path: &str) -> Response {
        self.app.api(&mut self.browser, Method::GET, path).await
    }

    /// A proxied call that must succeed; returns the demo API's echo.
    async fn echo(&mut self) -> Value {
        let response = self.call("/api/services/orders/v1/orders").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

/// The demo API, checking bearer tokens at DOT's introspection endpoint with courier's client
/// credentials. Returns its base URL.
pub(crate) fn spawn_demo_api_checking_at(provider: &DotProvider) -> String {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let config = demo_api::DemoConfig {
        introspection: Some(demo_api::Introspection {
            endpoint: Url::parse(&provider.endpoint("introspect")).unwrap(),
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
        }),
        ..Default::default()
    };
    tokio::spawn(demo_api::run(listener, config).unwrap());
    format!("http://127.0.0.1:{port}")
}

async fn problem_code(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_user_logs_in_through_dot_login_and_consent_pages_and_reads_api_me() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let provider = DotProvider::for_courier(port, 3600).await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.scopes = vec!["openid", "profile", "email"];
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();

    let (callback, response) = login(&app, &mut browser, "bob").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/after-login");
    // RFC 9207: DOT names itself in the authorization response.
    let iss = callback.query_pairs().find(|(k, _)| k == "iss").unwrap().1;
    assert_eq!(iss, provider.issuer.as_str());

    let response = app.me(&mut browser).await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["provider"], "main");
    // DOT's subject is the Django user's primary key; bob is the second user serve.py made.
    assert_eq!(me["sub"], "2");
    assert_eq!(me["name"], "User bob");
    assert_eq!(me["email"], "bob@example.test");
    assert_eq!(me["claims"]["preferred_username"], "bob");
    assert_eq!(me["claims"]["iss"], provider.issuer.as_str());
    assert_eq!(me["claims"]["aud"], CLIENT_ID);

    let (refresh, scopes): (Option<Vec<u8>>, Vec<String>) =
        sqlx::query_as("SELECT refresh_token, scopes FROM session_tokens")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(refresh.is_some(), "DOT gives a refresh token with the code");
    assert!(scopes.contains(&"email".to_owned()), "{scopes:?}");
}

#[tokio::test]
async fn cancelling_consent_at_dot_comes_back_as_access_denied_without_a_session() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    let provider = DotProvider::for_courier(port, 3600).await;
    let mut settings = AppSettings::new(&provider.issuer);
    settings.scopes = vec!["openid", "profile", "email"];
    let app = TestApp::spawn(listener, settings).await;
    let mut browser = Browser::new();

    let (callback, response) = login_answering_consent(&app, &mut browser, "carol", false).await;
    let error = callback
        .query_pairs()
        .find(|(k, _)| k == "error")
        .unwrap()
        .1;
    assert_eq!(error, "access_denied", "{callback}");
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/?login_error=access_denied");
    assert!(browser.cookie(&app.address, "__Host-courier").is_none());
    assert_eq!(app.db.count("sessions").await, 0);
}

#[tokio::test]
async fn a_proxied_call_carries_a_token_that_dot_introspects_as_active() {
    let mut w = World::start(3600).await;
    let echo = w.echo().await;
    // The demo API answered only because DOT said the bearer token is active.
    assert_eq!(echo["token"]["active"], true);
    assert_eq!(echo["token"]["client_id"], CLIENT_ID);
    let scope = echo["token"]["scope"].as_str().unwrap();
    assert!(scope.split(' ').any(|s| s == "openid"), "{scope}");
    assert_eq!(echo["headers"]["authorization"], "Bearer <redacted>");

    let stored = w.stored_tokens().await;
    let answer = w.provider.introspect(&stored.access_token).await;
    assert_eq!(answer["active"], true);
    assert_eq!(answer["username"], "alice");
}

#[tokio::test]
async fn an_expired_dot_token_is_refreshed_and_the_rotated_out_refresh_token_is_refused() {
    let mut w = World::start(2).await;
    let before = w.stored_tokens().await;
    let expires_at = before.expires_at.expect("DOT sends expires_in");
    // Wait (on the real clock: DOT's) until the access token has expired at DOT too.
    let left = (expires_at - chrono::Utc::now()).num_milliseconds().max(0) as u64;
    tokio::time::sleep(Duration::from_millis(left + 1_000)).await;
    assert_eq!(
        w.provider.introspect(&before.access_token).await["active"],
        false,
        "the first access token has expired at DOT"
    );

    let echo = w.echo().await;
    assert_eq!(
        echo["token"]["active"], true,
        "a fresh token reached the API"
    );
    let after = w.stored_tokens().await;
    let old_refresh = before.refresh_token.unwrap();
    assert_ne!(
        old_refresh.expose_secret(),
        after.refresh_token.as_ref().unwrap().expose_secret(),
        "DOT rotated the refresh token and courier stored the new one"
    );
    assert_ne!(
        before.access_token.expose_secret(),
        after.access_token.expose_secret()
    );
    // DOT sends a new ID token with each refresh, without `nonce`: courier checked and kept it.
    assert_ne!(
        before.id_token.unwrap().expose_secret(),
        after.id_token.as_ref().unwrap().expose_secret(),
        "the refreshed ID token was accepted"
    );

    // The rotated-out refresh token is dead at DOT.
    let (status, body) = w.provider.refresh(&old_refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // courier goes on with the token it got: still signed in, calls still work.
    assert_eq!(w.app.me(&mut w.browser).await.status(), StatusCode::OK);
    w.echo().await;
}

#[tokio::test]
async fn a_refresh_token_revoked_at_dot_ends_the_session_at_the_next_refresh() {
    let mut w = World::start(3600).await;
    let stored = w.stored_tokens().await;
    w.provider
        .revoke(stored.refresh_token.as_ref().unwrap(), "refresh_token")
        .await;
    let (status, body) = w
        .provider
        .refresh(stored.refresh_token.as_ref().unwrap())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // The access token is due for a refresh on courier's clock.
    w.app.clock.advance(chrono::Duration::seconds(3600));
    let response = w.call("/api/services/orders/v1/orders").await;
    assert_eq!(
        problem_code(response).await,
        (StatusCode::UNAUTHORIZED, "reauth_required".to_owned())
    );
    let response = w.app.me(&mut w.browser).await;
    assert_eq!(
        problem_code(response).await,
        (StatusCode::UNAUTHORIZED, "login_required".to_owned())
    );
    assert_eq!(w.app.db.count("sessions").await, 0);
}

#[tokio::test]
async fn logout_sends_the_browser_to_dot_end_session_endpoint_which_accepts_it() {
    let mut w = World::start(3600).await;
    let id_token = w.stored_tokens().await.id_token.expect("an ID token");
    let response = w
        .browser
        .send(
            Method::POST,
            &w.app.url("/auth/logout"),
            &[("x-csrf", "1")],
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let logout_url = Url::parse(body["logout_url"].as_str().unwrap()).unwrap();
    assert!(
        logout_url
            .as_str()
            .starts_with(&format!("{}/logout/?", w.provider.issuer)),
        "{logout_url}"
    );
    let param = |name: &str| {
        logout_url
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        param("id_token_hint").as_deref(),
        Some(id_token.expose_secret())
    );
    let back = format!("{}/", w.app.address);
    assert_eq!(
        param("post_logout_redirect_uri").as_deref(),
        Some(back.as_str())
    );
    assert_eq!(
        w.app.me(&mut w.browser).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // DOT accepts the hint and the redirect: it asks to confirm, then sends the browser back.
    let page = w.browser.get(logout_url.as_str()).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("Confirm Logout"), "{page}");
    let answer = submit(&mut w.browser, &logout_url, &page, &[("allow", "Logout")]).await;
    assert_eq!(answer.status(), StatusCode::FOUND);
    assert_eq!(location(&logout_url, &answer).as_str(), back);
}

#[tokio::test]
async fn logout_revokes_the_tokens_at_dot() {
    let mut w = World::start(3600).await;
    let stored = w.stored_tokens().await;
    assert_eq!(
        w.provider.introspect(&stored.access_token).await["active"],
        true
    );
    w.app.logout(&mut w.browser).await;

    // Checked before the browser visits DOT's end-session page, which would delete the
    // user's tokens at DOT by itself.
    assert_eq!(
        w.provider.introspect(&stored.access_token).await["active"],
        false,
        "revoking the refresh token took its access token along"
    );
    let (status, body) = w
        .provider
        .refresh(stored.refresh_token.as_ref().unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"], "invalid_grant",
        "the refresh token is revoked"
    );
}
