//! An in-process OpenID provider (wiremock) with keys the tests own, for what a real provider
//! never sends: forged, expired and mis-addressed ID tokens, key rotation, provider errors.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{AppSettings, Browser, CLIENT_ID, TestApp};

const KEYS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/keys");

pub fn private_pem(kid: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS_DIR}/{kid}.pem")).unwrap()
}

pub fn public_pem(kid: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS_DIR}/{kid}.pub.pem")).unwrap()
}

fn jwk(kid: &str) -> Value {
    serde_json::from_slice(&std::fs::read(format!("{KEYS_DIR}/{kid}.jwk.json")).unwrap()).unwrap()
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub struct FakeProvider {
    pub server: MockServer,
    pub issuer: String,
    published: std::sync::Mutex<Vec<String>>,
    /// Extra discovery metadata (see `advertise`).
    extra_metadata: std::sync::Mutex<serde_json::Map<String, Value>>,
    /// Whether the published keys name their `alg` (see `publish_keys_for_any_alg`).
    key_algs: std::sync::atomic::AtomicBool,
}

impl FakeProvider {
    /// Starts the provider publishing the key `signing`.
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        let issuer = server.uri();
        let provider = FakeProvider {
            server,
            issuer,
            published: Default::default(),
            extra_metadata: Default::default(),
            key_algs: std::sync::atomic::AtomicBool::new(true),
        };
        provider.publish_keys(&["signing"]).await;
        provider
    }

    /// Serves discovery and a JWKS holding exactly `kids`, replacing earlier answers.
    pub async fn publish_keys(&self, kids: &[&str]) {
        *self.published.lock().unwrap() = kids.iter().map(|k| k.to_string()).collect();
        self.server.reset().await;
        let issuer = &self.issuer;
        let mut metadata = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        });
        let extra = self.extra_metadata.lock().unwrap().clone();
        metadata.as_object_mut().unwrap().extend(extra);
        Mock::given(method("GET"))
            .and(path("/.well-known/openid-configuration"))
            .respond_with(ResponseTemplate::new(200).set_body_json(metadata))
            .mount(&self.server)
            .await;
        let named = self.key_algs.load(std::sync::atomic::Ordering::SeqCst);
        let keys: Vec<Value> = kids
            .iter()
            .map(|k| {
                let mut key = jwk(k);
                if !named {
                    key.as_object_mut().unwrap().remove("alg");
                }
                key
            })
            .collect();
        Mock::given(method("GET"))
            .and(path("/jwks"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "keys": keys })))
            .mount(&self.server)
            .await;
    }

    /// Publishes the keys without their `alg` member from now on, so that an RSA key may sign
    /// PS256 as well as RS256 (providers that rotate algorithms publish keys so).
    pub async fn publish_keys_for_any_alg(&self) {
        self.key_algs
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let published = self.published.lock().unwrap().clone();
        let kids: Vec<&str> = published.iter().map(String::as_str).collect();
        self.publish_keys(&kids).await;
    }

    /// Adds (or overrides) members of the discovery metadata from now on. courier reads the
    /// metadata at start-up: call this before spawning the app.
    pub async fn advertise(&self, extra: Value) {
        if let Value::Object(extra) = extra {
            self.extra_metadata.lock().unwrap().extend(extra);
        }
        let published = self.published.lock().unwrap().clone();
        let kids: Vec<&str> = published.iter().map(String::as_str).collect();
        self.publish_keys(&kids).await;
    }

    /// Claims of a valid ID token for `nonce`.
    pub fn claims(&self, nonce: &str) -> Value {
        json!({
            "iss": self.issuer,
            "sub": "alice",
            "aud": CLIENT_ID,
            "exp": now() + 300,
            "iat": now(),
            "nonce": nonce,
            "sid": "provider-session-1",
            "name": "Alice Example",
            "email": "alice@example.test",
            "picture": "https://example.test/alice.png",
            "groups": ["staff"],
        })
    }

    /// An RS256 ID token signed with key file `key`, naming `kid` in its header.
    pub fn sign_as(&self, key: &str, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let key = EncodingKey::from_rsa_pem(&private_pem(key)).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        self.sign_as(kid, kid, claims)
    }

    /// Makes the token endpoint answer every code with `id_token` (and nothing else).
    pub async fn answer_token_with(&self, id_token: &str) {
        let published = self.published.lock().unwrap().clone();
        let kids: Vec<&str> = published.iter().map(String::as_str).collect();
        self.publish_keys(&kids).await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "fake-access-token",
                "token_type": "Bearer",
                "expires_in": 300,
                "refresh_token": "fake-refresh-token",
                "id_token": id_token,
                "scope": "openid profile email offline_access",
            })))
            .mount(&self.server)
            .await;
    }
}

/// A login started at courier and not yet come back.
pub struct StartedLogin {
    pub state: String,
    pub nonce: String,
}

impl StartedLogin {
    pub fn callback_path(&self) -> String {
        format!("/auth/callback/main?code=the-code&state={}", self.state)
    }
}

pub async fn spawn_app_with_fake() -> (TestApp, FakeProvider) {
    let fake = FakeProvider::start().await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    (app, fake)
}

pub async fn start_login(app: &TestApp, browser: &mut Browser, return_to: &str) -> StartedLogin {
    let url = app.authorize_url(browser, return_to).await;
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("the authorization URL has {name}"))
    };
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(param("response_type"), "code");
    StartedLogin {
        state: param("state"),
        nonce: param("nonce"),
    }
}

/// Logs in through the fake provider with a valid ID token; returns the callback response.
pub async fn login_with_fake(
    app: &TestApp,
    fake: &FakeProvider,
    browser: &mut Browser,
    return_to: &str,
) -> reqwest::Response {
    let login = start_login(app, browser, return_to).await;
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
        .await;
    browser.get(&app.url(&login.callback_path())).await
}
