//! Paths and headers that other servers read differently from courier: `;parameters` on dot
//! segments, a percent-encoded service name, URL-rewrite headers, lowercase methods. None of
//! them may reach a service past courier's checks.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fake_provider::{FakeProvider, login_with_fake};
use crate::helpers::{AppSettings, Browser, TestApp, raw_request};

struct World {
    app: TestApp,
    _fake: FakeProvider,
    browser: Browser,
    /// The service: answers everything, and remembers what reached it.
    service: MockServer,
}

async fn world() -> World {
    let fake = FakeProvider::start().await;
    let service = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .mount(&service)
        .await;
    let base = format!("{}/", service.uri());
    let settings = AppSettings::new(&fake.issuer)
        .service(
            "limited",
            &base,
            "token = \"none\"\nallowed_methods = [\"GET\"]\nallowed_paths = [\"/v1/**\", \"/files/*.json\"]",
        )
        .service("open", &base, "token = \"none\"");
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let mut browser = Browser::new();
    login_with_fake(&app, &fake, &mut browser, "/").await;
    World {
        app,
        _fake: fake,
        browser,
        service,
    }
}

impl World {
    /// Sends `method path` over a raw connection, exactly as written; returns the status.
    async fn raw(&self, method: &str, path: &str) -> u16 {
        let cookie = self
            .browser
            .cookie(&self.app.address, "__Host-courier")
            .unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: __Host-courier={cookie}\r\nConnection: close\r\n\r\n"
        );
        raw_request(self.app.port, &request).await
    }

    async fn received(&self) -> Vec<wiremock::Request> {
        self.service.received_requests().await.unwrap()
    }
}

#[tokio::test]
async fn dot_segments_with_path_parameters_answer_400_and_reach_no_service() {
    let w = world().await;
    for tail in [
        "v1/..;/v2/x",
        "v1/%2e%2e;/v2/x",
        "v1/..%3b/v2/x",
        "v1/..%3B/v2/x",
        "v1/.;/x",
        "v1/%2e;/x",
        "v1/%2E%2E%3Bjsessionid=x/v2/x",
        "v1/..;jsessionid=x/v2/x",
        "v1/.%2e;x=1/v2/x",
        "v1/;/x",
        "v1/;x=1/x",
    ] {
        let status = w.raw("GET", &format!("/api/services/limited/{tail}")).await;
        assert_eq!(status, 400, "{tail}");
    }
    assert!(
        w.received().await.is_empty(),
        "a request reached the service"
    );

    // The same connection and service take a plain path.
    assert_eq!(w.raw("GET", "/api/services/limited/v1/x").await, 200);
    let received = w.received().await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].url.path(), "/v1/x");
}

#[tokio::test]
async fn path_parameters_do_not_stretch_an_allowed_path() {
    let mut w = world().await;
    let response = w
        .app
        .api(
            &mut w.browser,
            Method::GET,
            "/api/services/limited/files/a;.json",
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_allowed");
    assert!(
        w.received().await.is_empty(),
        "a request reached the service"
    );

    // Parameters that leave the matched shape alone are the service's business.
    for path in ["files/a.json", "v1/cars;color=red/x"] {
        let response = w
            .app
            .api(
                &mut w.browser,
                Method::GET,
                &format!("/api/services/limited/{path}"),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(w.received().await.len(), 2);
}

#[tokio::test]
async fn a_percent_encoded_service_name_is_no_service() {
    let mut w = world().await;
    for path in [
        "/api/services/op%65n/anything",
        "/api/services/%6Fpen/v1/x",
        "/api/services/op%65n",
    ] {
        let response = w.app.api(&mut w.browser, Method::GET, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "service_not_found", "{path}");
    }
    assert!(
        w.received().await.is_empty(),
        "a request reached the service"
    );

    let response = w
        .app
        .api(&mut w.browser, Method::GET, "/api/services/open/anything")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(w.received().await[0].url.path(), "/anything");
}

#[tokio::test]
async fn rewrite_headers_are_not_forwarded() {
    let mut w = world().await;
    let response = w
        .browser
        .send(
            Method::GET,
            &w.app.url("/api/services/limited/v1/x"),
            &[
                ("x-csrf", "1"),
                ("x-original-url", "/admin"),
                ("x-rewrite-url", "/admin"),
                ("x-forwarded-prefix", "/admin"),
                ("x-forwarded-uri", "/admin"),
                ("x-kept", "yes"),
            ],
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = w.received().await;
    let headers = &received[0].headers;
    for dropped in [
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-forwarded-uri",
    ] {
        assert!(!headers.contains_key(dropped), "{dropped} was forwarded");
    }
    assert_eq!(headers["x-kept"], "yes", "other headers are forwarded");
}

#[tokio::test]
async fn trace_and_connect_in_any_case_fail_the_default_method_rule() {
    let w = world().await;
    for method in ["TRACE", "trace", "Trace", "connect", "Connect", "tRaCe"] {
        let status = w.raw(method, "/api/services/open/x").await;
        assert_eq!(status, 403, "{method}");
    }
    assert_eq!(w.raw("get", "/api/services/limited/v1/x").await, 403);
    assert!(
        w.received().await.is_empty(),
        "a request reached the service"
    );
    // Made-up methods are the service's business under the default rule, and `get` is one;
    // an allowlist compares exactly (`get` is not GET, above).
    assert_eq!(w.raw("PROPFIND", "/api/services/open/x").await, 200);
    assert_eq!(w.raw("get", "/api/services/open/x").await, 200);
    assert_eq!(w.raw("GET", "/api/services/limited/v1/x").await, 200);
    assert_eq!(w.received().await.len(), 3);
}
