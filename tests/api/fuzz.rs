//! Property-based fuzzing (proptest) of what decodes hostile input that arrives over HTTP: the
//! session cookie, the pending-login cookie and the back-channel logout token. Each property
//! runs against one courier (real Postgres, real HTTP) with the in-process fake provider, and
//! asks for what the SPEC promises: a clear 4xx, never a 5xx or a dropped connection (a panic),
//! and nothing changed. The path checks have their properties next to them, in
//! src/services.rs. Every failing case proptest ever finds stays as a named test, and its seed
//! in tests/proptest-regressions/.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::fake_provider::{FakeProvider, login_with_fake, now, private_pem};
use crate::helpers::{AppSettings, Browser, CLIENT_ID, TestApp};

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// One courier and its fake provider, driven from a synchronous proptest runner.
struct World {
    app: TestApp,
    fake: FakeProvider,
    http: reqwest::Client,
    /// A logged-in browser's session cookie value.
    session: String,
    // Last, so that the app's tasks outlive everything above.
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new() -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, fake, session) = rt.block_on(async {
            let fake = FakeProvider::start().await;
            let mut settings = AppSettings::new(&fake.issuer);
            // Every case is a callback; the login rate limit is not under test here.
            settings
                .extra_toml
                .push_str("\n[rate_limit]\nrequests_per_minute = 100000\nburst = 100000\n");
            let app = TestApp::spawn(TestApp::bind(), settings).await;
            let mut browser = Browser::new();
            login_with_fake(&app, &fake, &mut browser, "/").await;
            let session = browser.cookie(&app.address, "__Host-courier").unwrap();
            (app, fake, session)
        });
        World {
            app,
            fake,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            session,
            rt,
        }
    }

    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.rt.block_on(future)
    }

    fn count(&self, table: &str) -> i64 {
        self.block_on(self.app.db.count(table))
    }

    /// `GET /api/me` with `cookie` as the whole `Cookie` header.
    fn me(&self, cookie: &str) -> Result<(StatusCode, Value), reqwest::Error> {
        self.block_on(async {
            let response = self
                .http
                .get(self.app.url("/api/me"))
                .header("x-csrf", "1")
                .header(COOKIE, cookie)
                .send()
                .await?;
            let status = response.status();
            Ok((status, response.json().await.unwrap_or(Value::Null)))
        })
    }
}

/// Runs `test` on `cases` values of `strategy`, replaying the seeds saved for this file first.
fn check<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        source_file: Some(file!()),
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// Garbage made from a valid value: one character replaced, cut short, or added to.
fn mangled(valid: String) -> impl Strategy<Value = String> {
    let len = valid.len();
    let alphabet = prop::sample::select("AaZz09-_+/=.%;, \"\\!~".chars().collect::<Vec<_>>());
    let (a, b, c) = (valid.clone(), valid.clone(), valid);
    prop_oneof![
        (0..len, alphabet).prop_map(move |(i, ch)| {
            let mut v: Vec<char> = a.chars().collect();
            v[i] = ch;
            v.into_iter().collect()
        }),
        (0..len).prop_map(move |i| b[..i].to_owned()),
        "[ -~]{1,40}".prop_map(move |tail| format!("{c}{tail}")),
    ]
}

/// Cookie-header-safe garbage: printable ASCII, base64-looking or not.
fn garbage() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,200}", "[A-Za-z0-9+/=_-]{0,300}",]
}

#[test]
fn garbage_session_cookies_are_refused_and_change_nothing() {
    let w = World::new();
    let valid = w.session.clone();
    let (status, _) = w.me(&format!("__Host-courier={valid}")).unwrap();
    assert_eq!(status, StatusCode::OK, "the valid cookie is accepted");
    let sessions = w.count("sessions");

    check(
        96,
        prop_oneof![garbage(), mangled(valid.clone())],
        |value| {
            // `valid;…` is the valid cookie followed by another: not garbage.
            prop_assume!(value.split(';').next().unwrap_or_default().trim() != valid);
            let (status, body) = w
                .me(&format!("__Host-courier={value}"))
                .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "{:?}", value);
            prop_assert_eq!(&body["code"], "login_required", "{:?}", value);
            Ok(())
        },
    );

    assert_eq!(w.count("sessions"), sessions, "a session was made or lost");
    let (status, _) = w.me(&format!("__Host-courier={valid}")).unwrap();
    assert_eq!(status, StatusCode::OK, "the valid cookie still works");
}

/// A started login: its pending-login cookie (name and value) and its `state`.
struct Pending {
    name: String,
    value: String,
    state: String,
    nonce: String,
}

fn start_login(w: &World) -> Pending {
    w.block_on(async {
        let response = w
            .http
            .get(w.app.url("/auth/login?return_to=/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = url::Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap();
        let param = |name: &str| {
            location
                .query_pairs()
                .find(|(k, _)| k == name)
                .unwrap()
                .1
                .into_owned()
        };
        let (state, nonce) = (param("state"), param("nonce"));
        // Whatever the cookie is called, it is the one the login set.
        let cookie = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| actix_web::cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
            .find(|c| !c.value().is_empty())
            .expect("the login sets a pending-login cookie");
        Pending {
            name: cookie.name().to_owned(),
            value: cookie.value().to_owned(),
            state,
            nonce,
        }
    })
}

/// The callback for `state` with `cookie` as the whole `Cookie` header: status and Location.
fn callback(w: &World, cookie: &str, state: &str) -> Result<(StatusCode, String), reqwest::Error> {
    w.block_on(async {
        let response = w
            .http
            .get(w.app.url(&format!(
                "/auth/callback/main?code=the-code&state={}",
                urlencoding(state)
            )))
            .header(COOKIE, cookie)
            .send()
            .await?;
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((response.status(), location))
    })
}

fn urlencoding(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[test]
fn garbage_pending_login_cookies_are_refused_and_change_nothing() {
    let w = World::new();
    let pending = start_login(&w);
    let sessions = w.count("sessions");

    check(
        96,
        prop_oneof![
            garbage().prop_map(|v| (v, None)),
            mangled(pending.value.clone()).prop_map(|v| (v, None)),
            // A state of the attacker's choosing, with garbage under the cookie's name.
            (garbage(), "[ -~]{0,60}").prop_map(|(v, s)| (v, Some(s))),
        ],
        |(value, state)| {
            let state = state.unwrap_or_else(|| pending.state.clone());
            // `valid;…` is the valid cookie followed by another: not garbage.
            prop_assume!(value.split(';').next().unwrap_or_default().trim() != pending.value);
            let (status, location) = callback(&w, &format!("{}={value}", pending.name), &state)
                .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            prop_assert_eq!(status, StatusCode::FOUND, "{:?}", value);
            prop_assert_eq!(location, "/?login_error=invalid_state", "{:?}", value);
            Ok(())
        },
    );

    assert_eq!(w.count("sessions"), sessions, "a session was made");
    // The login the garbage stood in for still completes: nothing was spent.
    w.block_on(
        w.fake
            .answer_token_with(&w.fake.sign("signing", &w.fake.claims(&pending.nonce))),
    );
    let (status, location) = callback(
        &w,
        &format!("{}={}", pending.name, pending.value),
        &pending.state,
    )
    .unwrap();
    assert_eq!((status, location.as_str()), (StatusCode::FOUND, "/"));
    assert_eq!(w.count("sessions"), sessions + 1);
}

/// `POST /auth/backchannel-logout/main` with `token`: status and body.
fn backchannel(w: &World, token: &str) -> Result<(StatusCode, Value), reqwest::Error> {
    w.block_on(async {
        let response = w
            .http
            .post(w.app.url("/auth/backchannel-logout/main"))
            .form(&[("logout_token", token)])
            .send()
            .await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    })
}

fn sign(header: &Header, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&private_pem("signing")).unwrap();
    jsonwebtoken::encode(header, claims, &key).unwrap()
}

fn logout_header() -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("signing".into());
    header.typ = Some("logout+jwt".into());
    header
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings that look more or less like a JWT.
fn token_like() -> impl Strategy<Value = String> {
    let b64 = |s: String| URL_SAFE_NO_PAD.encode(s);
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}",
        (
            json_value(),
            prop::sample::select(vec![
                "RS256", "none", "HS256", "ES256", "PS256", "", "rs256"
            ]),
            prop::option::of(".{0,10}"),
            json_value(),
            "[A-Za-z0-9_-]{0,60}",
        )
            .prop_map(move |(extra, alg, kid, claims, signature)| {
                let mut header = json!({"alg": alg, "typ": "logout+jwt", "x": extra});
                if let Some(kid) = kid {
                    header["kid"] = json!(kid);
                }
                format!(
                    "{}.{}.{signature}",
                    b64(header.to_string()),
                    b64(claims.to_string())
                )
            }),
    ]
}

/// A claim that is there with a fitting value, there with any value, or not there.
fn claim(fitting: Value) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(Some(fitting)),
        1 => json_value().prop_map(Some),
        1 => Just(None),
    ]
}

#[derive(Debug, Clone)]
struct Claims(serde_json::Map<String, Value>);

/// Logout-token claims, each valid, odd or missing, plus extra members.
fn logout_claims(issuer: String) -> impl Strategy<Value = Claims> {
    let t = now();
    (
        claim(json!(issuer)),
        claim(json!(CLIENT_ID)),
        claim(json!(t)),
        claim(json!(t + 120)),
        claim(json!(uuid::Uuid::new_v4().to_string())),
        claim(json!({ BACKCHANNEL_EVENT: {} })),
        claim(json!("provider-session-1")),
        claim(json!("alice")),
        prop::option::weighted(0.2, json_value()),
        prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
    )
        .prop_map(
            |(iss, aud, iat, exp, jti, events, sid, sub, nonce, extra)| {
                let mut claims: serde_json::Map<String, Value> = extra.into_iter().collect();
                for (name, value) in [
                    ("iss", iss),
                    ("aud", aud),
                    ("iat", iat),
                    ("exp", exp),
                    ("jti", jti),
                    ("events", events),
                    ("sid", sid),
                    ("sub", sub),
                    ("nonce", nonce),
                ] {
                    match value {
                        Some(value) => claims.insert(name.into(), value),
                        None => claims.remove(name),
                    };
                }
                Claims(claims)
            },
        )
}

/// What no reading of Back-Channel Logout 1.0 accepts: a wrong `iss` or `aud`, no back-channel
/// event, a `nonce`, neither `sid` nor `sub`, no `jti`.
fn surely_invalid(claims: &serde_json::Map<String, Value>, issuer: &str) -> bool {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let audience_fits = match claims.get("aud") {
        Some(Value::String(aud)) => aud == CLIENT_ID,
        Some(Value::Array(auds)) => auds.iter().any(|a| a == CLIENT_ID),
        _ => false,
    };
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_EVENT))
        .is_some_and(Value::is_object);
    text("iss") != Some(issuer)
        || !audience_fits
        || !has_event
        || claims.contains_key("nonce")
        || (text("sid").is_none() && text("sub").is_none())
        || text("jti").is_none()
}

#[test]
fn garbage_logout_tokens_are_refused_with_400() {
    let w = World::new();
    check(128, token_like(), |token| {
        let (status, body) =
            backchannel(&w, &token).map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
        prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{:?}", token);
        prop_assert!(body["error"].is_string(), "{:?}", body);
        Ok(())
    });
}

#[test]
fn signed_logout_tokens_with_any_claims_get_200_or_400_as_they_deserve() {
    let w = World::new();
    let issuer = w.fake.issuer.clone();
    // The generator can make a valid token; make sure one is accepted.
    let valid = logout_header();
    let claims = json!({
        "iss": issuer, "aud": CLIENT_ID, "iat": now(), "exp": now() + 120,
        "jti": uuid::Uuid::new_v4().to_string(), "events": { BACKCHANNEL_EVENT: {} },
        "sid": "provider-session-1",
    });
    assert_eq!(
        backchannel(&w, &sign(&valid, &claims)).unwrap().0,
        StatusCode::OK
    );

    check(48, logout_claims(issuer.clone()), |Claims(claims)| {
        let token = sign(&logout_header(), &Value::Object(claims.clone()));
        let (status, body) =
            backchannel(&w, &token).map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
        prop_assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "{} for {:?}",
            status,
            claims
        );
        if status == StatusCode::BAD_REQUEST {
            prop_assert!(body["error"].is_string(), "{:?}", body);
        }
        if surely_invalid(&claims, &issuer) {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{:?}", claims);
        }
        Ok(())
    });
}
