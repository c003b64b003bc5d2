//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics`.
//!
//! Counted where things happen: HTTP requests by route pattern and status (with latency),
//! service calls by service and status (with latency), token refreshes by provider and outcome,
//! logins and logouts by outcome. Active sessions and database-pool use are read when scraped.
//!
//! No label value comes from the client as it is: every series costs memory until the process
//! ends, so a client that could choose label values could grow `/metrics` (and courier) without
//! bound. Methods outside the standard set are `other`, routes are the matched pattern or
//! `unmatched`, services are configured names, statuses are numbers or fixed error codes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `method` label: the method when it is one of RFC 9110's (plus PATCH), else `other`.
/// Methods are case-sensitive: `get` is not `GET`, and made-up methods may be any length.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

/// A counter and a latency histogram sharing one label set.
#[derive(Clone)]
struct Pair {
    count: Counter,
    seconds: Histogram,
}

/// The handles of each label set, registered once per worker thread: asking the recorder by
/// label set costs label strings, a hash and a lookup under a lock on every request. The sets are
/// bounded as the module says (patterns, configured names, numeric statuses, fixed codes).
/// Keyed by the one free-text label first, so that a lookup borrows it instead of allocating.
type Handles<K> = RefCell<HashMap<Box<str>, HashMap<K, Pair>>>;

thread_local! {
    static HTTP: Handles<(&'static str, u16)> = RefCell::new(HashMap::new());
    static SERVICE_CALLS: Handles<String> = RefCell::new(HashMap::new());
}

fn pair<K: std::hash::Hash + Eq>(
    handles: &'static std::thread::LocalKey<Handles<K>>,
    first: &str,
    key: K,
    register: impl FnOnce() -> Pair,
) -> Pair {
    handles.with_borrow_mut(|by_first| {
        if let Some(pair) = by_first.get(first).and_then(|m| m.get(&key)) {
            return pair.clone();
        }
        let pair = register();
        by_first
            .entry(first.into())
            .or_default()
            .insert(key, pair.clone());
        pair
    })
}

/// Counts a served request and its latency (`courier_http_requests_total`,
/// `courier_http_request_duration_seconds`).
pub fn record_http_request(method: &'static str, route: &str, status: u16, seconds: f64) {
    pair(&HTTP, route, (method, status), || {
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        Pair {
            count: metrics::counter!("courier_http_requests_total", &labels),
            seconds: metrics::histogram!("courier_http_request_duration_seconds", &labels),
        }
    })
    .record(seconds);
}

/// Counts a call to a service by its answer's status or courier's error code, and its latency
/// (`courier_service_calls_total`, `courier_service_call_duration_seconds`).
pub fn record_service_call(service: &str, status: &str, seconds: f64) {
    pair(&SERVICE_CALLS, service, status.to_owned(), || {
        let labels = [
            ("service", service.to_owned()),
            ("status", status.to_owned()),
        ];
        Pair {
            count: metrics::counter!("courier_service_calls_total", &labels),
            seconds: metrics::histogram!("courier_service_call_duration_seconds", &labels),
        }
    })
    .record(seconds);
}

impl Pair {
    fn record(&self, seconds: f64) {
        self.count.increment(1);
        self.seconds.record(seconds);
    }
}

/// The request span's name for a `method_label`: fixed strings, so that naming a span costs no
/// allocation.
pub fn span_name(method_label: &str) -> &'static str {
    match method_label {
        "GET" => "GET request",
        "HEAD" => "HEAD request",
        "POST" => "POST request",
        "PUT" => "PUT request",
        "DELETE" => "DELETE request",
        "CONNECT" => "CONNECT request",
        "OPTIONS" => "OPTIONS request",
        "TRACE" => "TRACE request",
        "PATCH" => "PATCH request",
        _ => "other request",
    }
}

/// The recorder, installed once per process (tests run several instances in one).
#[allow(
    clippy::expect_used,
    reason = "start-up installs the recorder (`startup` calls this first); fixed buckets"
)]
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Histogram samples wait in memory until they are folded into their buckets: at a scrape, or
/// here every 5 s, so that an instance nobody scrapes does not grow (the soak found ~19 bytes
/// per request held until the next scrape).
pub fn spawn_upkeep() {
    tokio::spawn(async {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            ticker.tick().await;
            handle().run_upkeep();
        }
    });
}

/// `GET /metrics`: Prometheus text.
pub async fn render(state: web::Data<AppState>) -> HttpResponse {
    let sessions = crate::db::sessions::count_live(&state.pool, state.clock.now()).await;
    if let Ok(sessions) = sessions {
        metrics::gauge!("courier_active_sessions").set(sessions as f64);
    }
    metrics::gauge!("courier_db_pool_connections").set(state.pool.size() as f64);
    metrics::gauge!("courier_db_pool_idle_connections").set(state.pool.num_idle() as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle().render())
}
