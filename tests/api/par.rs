//! A pushed authorization request (RFC 9126) that the provider refuses sends the browser back
//! with the provider's error code, as a callback would (`provider_error` when it is not a
//! registered one), not with `server_error`, which is courier's own failure.

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::fake_provider::FakeProvider;
use crate::helpers::{AppSettings, Browser, NodeProvider, TestApp};

#[tokio::test]
async fn a_pushed_login_with_a_prompt_the_provider_refuses_comes_back_as_invalid_request() {
    let listener = TestApp::bind();
    let port = listener.local_addr().unwrap().port();
    // node-oidc-provider supports the prompts `none`, `login` and `consent`: it answers the
    // push of `prompt=create` with 400 `invalid_request`.
    let provider = NodeProvider::for_courier(port, json!({})).await;
    let app = TestApp::spawn(listener, AppSettings::new(&provider.issuer)).await;
    let mut browser = Browser::new();
    let response = browser
        .get(&app.url("/auth/login?prompt=create&return_to=/x"))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()[LOCATION],
        "/?login_error=invalid_request"
    );
    assert!(
        browser
            .cookie_names(&app.address)
            .iter()
            .all(|name| !name.contains("-login-")),
        "no pending login is left behind"
    );
    // The same login without it goes through the push to the provider's form.
    app.start_login_at_provider(&mut browser, "/x").await;
}

#[tokio::test]
async fn a_push_refused_with_an_unregistered_code_comes_back_as_provider_error() {
    let fake = FakeProvider::start().await;
    fake.advertise(json!({
        "pushed_authorization_request_endpoint": format!("{}/par", fake.issuer),
    }))
    .await;
    for (status, body) in [
        (400, json!({ "error": "invalid_request" })),
        (400, json!({ "error": "invalid_scope" })),
        (
            400,
            json!({ "error": "no_such_thing", "error_description": "<script>" }),
        ),
        (403, json!({ "message": "blocked" })),
    ] {
        Mock::given(method("POST"))
            .and(path("/par"))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .up_to_n_times(1)
            .mount(&fake.server)
            .await;
    }
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    for expected in [
        "invalid_request",
        "invalid_scope",
        "provider_error",
        "provider_error",
    ] {
        let response = Browser::new()
            .get(&app.url("/auth/login?return_to=/x"))
            .await;
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(
            response.headers()[LOCATION],
            format!("/?login_error={expected}").as_str()
        );
    }
    // A silent login goes back where it came from, told the provider's code.
    Mock::given(method("POST"))
        .and(path("/par"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({ "error": "login_required" })),
        )
        .mount(&fake.server)
        .await;
    let response = Browser::new()
        .get(&app.url("/auth/login?prompt=none&return_to=/app"))
        .await;
    assert_eq!(
        response.headers()[LOCATION],
        "/app?login_error=login_required"
    );
}
