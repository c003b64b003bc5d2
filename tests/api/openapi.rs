//! openapi.yaml and the router agree: every path and method the document names is routed, and
//! every other method on those paths is refused by the router (405).

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::fake_provider::FakeProvider;
use crate::helpers::{AppSettings, Browser, TestApp};

/// (path, methods) of the document's `paths`, read from its layout: a path is a two-space
/// indented key starting with `/`, an operation a four-space indented HTTP method.
fn documented() -> Vec<(String, Vec<String>)> {
    let text = include_str!("../../openapi.yaml");
    let mut paths: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_paths = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            paths.push((format!("/{path}"), Vec::new()));
        } else if let Some(method) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            && ["get", "put", "post", "delete", "options", "head", "patch"].contains(&method)
        {
            paths
                .last_mut()
                .expect("an operation under a path")
                .1
                .push(method.to_uppercase());
        }
    }
    paths
}

fn concrete(path: &str) -> String {
    path.replace("{provider}", "main")
        .replace("{service}", "orders")
        .replace("{path}", "v1/items")
        .replace("{id}", "0b6f3c1e-5f2a-4d55-9c1e-2f4b8a7d9e10")
}

/// Whether the router had no route: 404 or 405 that no handler wrote.
async fn router_refused(response: reqwest::Response) -> Option<StatusCode> {
    let status = response.status();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        return Some(status);
    }
    if status == StatusCode::NOT_FOUND {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if body["code"].is_null() || body["code"] == "not_found" {
            return Some(status);
        }
    }
    None
}

#[tokio::test]
async fn the_router_serves_exactly_what_openapi_documents() {
    let fake = FakeProvider::start().await;
    // A client key, so that /.well-known/jwks.json answers (it is 404 without one).
    let key =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api/keys/client_p256.pem");
    let settings = AppSettings {
        extra_toml: format!(
            "client_auth = \"private_key_jwt\"\nclient_key = \"{}\"\n",
            key.display()
        ),
        ..AppSettings::new(&fake.issuer)
    }
    .service("orders", "http://127.0.0.1:9/", "provider = \"main\"");
    let app = TestApp::spawn(TestApp::bind(), settings).await;
    let documented = documented();
    assert!(
        documented.len() >= 12,
        "the document's paths were read: {documented:?}"
    );

    let mut browser = Browser::new();
    for (path, methods) in &documented {
        let url = app.url(&concrete(path));
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let response = browser
                .send(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    &url,
                    &[("x-csrf", "1")],
                    None,
                )
                .await;
            let refused = router_refused(response).await;
            if methods.iter().any(|m| m == method) {
                assert_eq!(
                    refused, None,
                    "{method} {path} is documented but not routed"
                );
            } else {
                assert!(
                    refused.is_some(),
                    "{method} {path} is routed but not documented"
                );
            }
        }
    }
    // And nothing outside the document answers.
    for path in ["/api/session", "/auth/token", "/admin", "/api/services"] {
        let response = browser
            .send(Method::DELETE, &app.url(path), &[("x-csrf", "1")], None)
            .await;
        assert!(router_refused(response).await.is_some(), "DELETE {path}");
    }
    let metrics = browser.get(&app.url("/metrics")).await;
    assert_eq!(
        router_refused(metrics).await.is_some(),
        !documented.iter().any(|(p, _)| p == "/metrics")
    );
}
