//! Metric labels never take a value a client makes up: each new value is a series kept in
//! memory for the life of the process, and shown by every scrape of `/metrics`.

use crate::fake_provider::spawn_app_with_fake;
use crate::helpers::raw_request;

/// A made-up method of `len` capital letters (a valid HTTP token), different on every call.
fn made_up_method(len: usize) -> String {
    let mut letters = String::with_capacity(len);
    while letters.len() < len {
        for byte in uuid::Uuid::new_v4().as_bytes() {
            letters.push(char::from(b'A' + byte % 26));
        }
    }
    letters.truncate(len);
    letters
}

async fn metrics(app: &crate::helpers::TestApp) -> String {
    reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn made_up_methods_leave_no_trace_in_metrics() {
    let (app, _fake) = spawn_app_with_fake().await;
    let before = metrics(&app).await.len();
    let methods: Vec<String> = (0..20).map(|_| made_up_method(8000)).collect();
    for method in &methods {
        let request =
            format!("{method} /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let status = raw_request(app.port, &request).await;
        assert_eq!(status, 405, "the router answered the made-up method");
    }
    let after = metrics(&app).await;
    for method in &methods {
        assert!(
            !after.contains(&method[..32]),
            "a made-up method became a label"
        );
    }
    assert!(
        after.contains(r#"method="other",route="/healthz",status="405""#),
        "the requests were counted, as `other`"
    );
    // Before the fix the 20 methods added about 3 MB (each in a counter and 17 histogram
    // lines); one `other` series is a few kilobytes.
    let growth = after.len().saturating_sub(before);
    assert!(growth < 64 * 1024, "/metrics grew by {growth} bytes");
}
