//! RFC 9207: the authorization response's `iss`. A provider that advertises
//! `authorization_response_iss_parameter_supported` must name itself in every callback, and a
//! callback naming another issuer is refused (the mix-up attack), with `issuer_mismatch`.

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::json;

use crate::fake_provider::{FakeProvider, StartedLogin, start_login};
use crate::helpers::{AppSettings, Browser, TestApp};

fn location(response: &reqwest::Response) -> &str {
    response.headers()[LOCATION].to_str().unwrap()
}

fn encoded(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The fake provider, advertising RFC 9207 support or not, and courier using it.
async fn spawn(advertises_iss: bool) -> (TestApp, FakeProvider) {
    let fake = FakeProvider::start().await;
    if advertises_iss {
        fake.advertise(json!({ "authorization_response_iss_parameter_supported": true }))
            .await;
    }
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    (app, fake)
}

async fn token_requests(fake: &FakeProvider) -> usize {
    let requests = fake.server.received_requests().await.unwrap();
    requests.iter().filter(|r| r.url.path() == "/token").count()
}

async fn started(app: &TestApp, fake: &FakeProvider, browser: &mut Browser) -> StartedLogin {
    let login = start_login(app, browser, "/after").await;
    fake.answer_token_with(&fake.sign("signing", &fake.claims(&login.nonce)))
        .await;
    login
}

#[tokio::test]
async fn a_callback_without_iss_is_refused_when_the_provider_promises_one() {
    let (app, fake) = spawn(true).await;
    let mut browser = Browser::new();
    let login = started(&app, &fake, &mut browser).await;

    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(location(&response), "/?login_error=issuer_mismatch");
    assert_eq!(token_requests(&fake).await, 0, "no code was exchanged");
    assert_eq!(app.db.count("sessions").await, 0);
    assert_eq!(app.db.count("users").await, 0);
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // An error response without `iss` carries no code to misdirect (django-oauth-toolkit
    // sends none there): its error is reported, and still nothing is made.
    let login = started(&app, &fake, &mut browser).await;
    let response = browser
        .get(&app.url(&format!(
            "/auth/callback/main?error=access_denied&state={}",
            login.state
        )))
        .await;
    assert_eq!(location(&response), "/?login_error=access_denied");
    assert_eq!(
        app.me(&mut browser).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // An error response naming another issuer is refused as such.
    let login = started(&app, &fake, &mut browser).await;
    let response = browser
        .get(&app.url(&format!(
            "/auth/callback/main?error=access_denied&state={}&iss=https%3A%2F%2Fevil.example",
            login.state
        )))
        .await;
    assert_eq!(location(&response), "/?login_error=issuer_mismatch");
}

#[tokio::test]
async fn a_callback_naming_the_provider_completes_the_login() {
    let (app, fake) = spawn(true).await;
    let mut browser = Browser::new();
    let login = started(&app, &fake, &mut browser).await;
    let response = browser
        .get(&app.url(&format!(
            "{}&iss={}",
            login.callback_path(),
            encoded(&fake.issuer)
        )))
        .await;
    assert_eq!(location(&response), "/after");
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_callback_naming_another_issuer_is_refused_and_spares_other_pending_logins() {
    for advertises_iss in [true, false] {
        let (app, fake) = spawn(advertises_iss).await;
        let mut browser = Browser::new();
        // Two tabs: the refused callback must not take the other tab's login with it.
        let first = start_login(&app, &mut browser, "/first").await;
        let second = start_login(&app, &mut browser, "/second").await;
        fake.answer_token_with(&fake.sign("signing", &fake.claims(&second.nonce)))
            .await;

        let forged = format!(
            "{}&iss={}",
            first.callback_path(),
            encoded("https://attacker.example")
        );
        let response = browser.get(&app.url(&forged)).await;
        assert_eq!(
            location(&response),
            "/?login_error=issuer_mismatch",
            "advertised: {advertises_iss}"
        );
        assert_eq!(token_requests(&fake).await, 0);
        assert_eq!(app.db.count("sessions").await, 0);

        // The refused login is spent ...
        let retried = format!("{}&iss={}", first.callback_path(), encoded(&fake.issuer));
        let response = browser.get(&app.url(&retried)).await;
        assert_eq!(location(&response), "/?login_error=invalid_state");
        // ... the other one is not.
        let response = browser
            .get(&app.url(&format!(
                "{}&iss={}",
                second.callback_path(),
                encoded(&fake.issuer)
            )))
            .await;
        assert_eq!(
            location(&response),
            "/second",
            "advertised: {advertises_iss}"
        );
        assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_callback_without_iss_is_accepted_from_a_provider_that_promises_none() {
    let (app, fake) = spawn(false).await;
    let mut browser = Browser::new();
    let login = started(&app, &fake, &mut browser).await;
    let response = browser.get(&app.url(&login.callback_path())).await;
    assert_eq!(location(&response), "/after");
    assert_eq!(app.me(&mut browser).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_provider_naming_itself_with_a_trailing_slash_is_discovered() {
    // Auth0 does: its issuer is `https://tenant.auth0.com/`, configured as either form.
    let fake = FakeProvider::start().await;
    fake.advertise(json!({ "issuer": format!("{}/", fake.issuer) }))
        .await;
    let app = TestApp::spawn(TestApp::bind(), AppSettings::new(&fake.issuer)).await;
    let mut browser = Browser::new();
    let ready = browser.get(&app.url("/readyz")).await;
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "{}",
        ready.text().await.unwrap()
    );
}
