//! Operations: liveness, readiness and the API description.

use std::error::Error as _;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::db;
use crate::state::AppState;

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when Postgres answers and every provider's metadata is loaded.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut missing = Vec::new();
    let ping = db::health::ping(&state.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let cause = e.source().map(|c| c.to_string()).unwrap_or_default();
            tracing::warn!(error = %e, %cause, "readiness: the database does not answer");
            missing.push("database".to_owned());
        }
        Err(_) => {
            tracing::warn!("readiness: the database did not answer within 2 s");
            missing.push("database".to_owned());
        }
    }
    missing.extend(
        state
            .providers
            .missing()
            .into_iter()
            .map(|id| format!("provider:{id}")),
    );
    if missing.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "missing": missing}))
    }
}

/// `GET /openapi.yaml`: the same document as the repository's `openapi.yaml`.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml")
        .body(include_str!("../../openapi.yaml"))
}
