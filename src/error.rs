//! `ApiError`: every failure on `/api/*` becomes an RFC 9457 problem document with a stable
//! `code`. Client errors say what was wrong; faults are logged with their cause and answered
//! with an opaque message.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("there is no live session")]
    LoginRequired,
    #[error("the X-CSRF: 1 header is required")]
    CsrfRequired,
    #[error("no service named `{0}`")]
    ServiceNotFound(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("the service needs a connected account")]
    ConnectRequired { connect_url: String },
    #[error("the provider no longer accepts this session's grant; sign in again")]
    ReauthRequired,
    /// What was asked needs a more recent sign-in (`reauth_required`); the session stays.
    #[error("{0}")]
    RecentLoginRequired(String),
    #[error("too many requests")]
    RateLimited,
    /// One live connection too many for the instance's or the session's cap (429
    /// `rate_limited`, without `Retry-After`: a place frees when a connection closes).
    #[error("{0}")]
    TooManyLiveConnections(String),
    #[error("{0}")]
    UpstreamUnavailable(String),
    /// A provider that failed or refused courier's request: 503 with `Retry-After`.
    #[error("{detail}")]
    RetryLater {
        detail: String,
        retry_after_secs: u64,
    },
    /// A dependent service that cannot be reached (502), as opposed to a provider or Postgres
    /// (503); both have the code `upstream_unavailable`.
    #[error("{0}")]
    ServiceUnreachable(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// The client's body stopped arriving before its deadline (`crate::body_deadline`).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("{0}")]
    NotFound(String),
    /// Postgres cannot be reached (503, `upstream_unavailable`); the cause is kept for the log.
    #[error("the database is not reachable")]
    DatabaseUnavailable(#[source] DbError),
    #[error("an internal error occurred")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::LoginRequired => "login_required",
            ApiError::CsrfRequired => "csrf_required",
            ApiError::ServiceNotFound(_) => "service_not_found",
            ApiError::NotAllowed(_) => "not_allowed",
            ApiError::ConnectRequired { .. } => "connect_required",
            ApiError::ReauthRequired | ApiError::RecentLoginRequired(_) => "reauth_required",
            ApiError::RateLimited | ApiError::TooManyLiveConnections(_) => "rate_limited",
            ApiError::UpstreamUnavailable(_)
            | ApiError::DatabaseUnavailable(_)
            | ApiError::RetryLater { .. }
            | ApiError::ServiceUnreachable(_) => "upstream_unavailable",
            ApiError::UpstreamTimeout(_) => "upstream_timeout",
            ApiError::BadRequest(_) | ApiError::PayloadTooLarge | ApiError::RequestTimeout => {
                "bad_request"
            }
            ApiError::NotFound(_) => "not_found",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            ApiError::DatabaseUnavailable(e)
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        DbError::from(e).into()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::LoginRequired
            | ApiError::ReauthRequired
            | ApiError::RecentLoginRequired(_) => StatusCode::UNAUTHORIZED,
            ApiError::CsrfRequired | ApiError::NotAllowed(_) | ApiError::ConnectRequired { .. } => {
                StatusCode::FORBIDDEN
            }
            ApiError::ServiceNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RateLimited | ApiError::TooManyLiveConnections(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::UpstreamUnavailable(_)
            | ApiError::DatabaseUnavailable(_)
            | ApiError::RetryLater { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ServiceUnreachable(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        // The response says little; the log keeps what it replaced, with every cause.
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %error_chain(self), "request failed");
        }
        let mut body = problem(status, self.code(), &self.to_string());
        if let ApiError::ConnectRequired { connect_url } = self {
            body["connect_url"] = json!(connect_url);
        }
        let mut response = problem_response(status, body);
        if let ApiError::RetryLater {
            retry_after_secs, ..
        } = self
        {
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(*retry_after_secs),
            );
        }
        response
    }
}

/// The error and its sources, outermost first: "a: b: c".
fn error_chain(e: &ApiError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    // `Internal` displays as a fixed sentence; its anyhow error is the first source.
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The problem document for `status` and `code`.
pub fn problem(status: StatusCode, code: &str, detail: &str) -> serde_json::Value {
    json!({
        "type": format!("urn:courier:problem:{code}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    })
}

pub fn problem_response(status: StatusCode, body: serde_json::Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((CONTENT_TYPE, "application/problem+json"))
        .insert_header((CACHE_CONTROL, "no-store"))
        .body(body.to_string())
}

/// A proxied call that the service's rules refuse.
impl From<crate::services::Refused> for ApiError {
    fn from(e: crate::services::Refused) -> Self {
        match e {
            crate::services::Refused::BadRequest(detail) => ApiError::BadRequest(detail),
            crate::services::Refused::NotAllowed(detail) => ApiError::NotAllowed(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ApiError, error_chain};
    use crate::db::DbError;

    #[test]
    fn a_database_outage_keeps_its_cause_for_the_log() {
        let e: ApiError = DbError::from(sqlx::Error::PoolTimedOut).into();
        assert_eq!(e.code(), "upstream_unavailable");
        let chain = error_chain(&e);
        assert!(
            chain.starts_with("the database is not reachable"),
            "{chain}"
        );
        assert!(
            chain.contains(&sqlx::Error::PoolTimedOut.to_string()),
            "{chain}"
        );
    }

    #[test]
    fn an_internal_error_logs_every_cause() {
        let inner = anyhow::anyhow!("the root cause").context("the middle");
        let chain = error_chain(&ApiError::internal(inner));
        assert!(chain.contains("the middle"), "{chain}");
        assert!(chain.contains("the root cause"), "{chain}");
    }
}
