//! `GET /api/services` and `ANY /api/services/{service}/{path…}`.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::body_deadline::BodyDeadline;
use crate::config::TokenMode;
use crate::connections::{self, DisconnectError};
use crate::db;
use crate::db::linked_accounts::Status;
use crate::error::ApiError;
use crate::proxy::{self, Incoming, OutgoingBody};
use crate::services::Service;
use crate::session::CurrentSession;
use crate::state::AppState;
use crate::tokens::TokenError;

fn provider_of(service: &Service) -> &str {
    service.config.provider.as_deref().unwrap_or_default()
}

fn connect_url(service: &Service) -> String {
    format!("/auth/connect/{}", service.name())
}

/// `GET /api/services`: what the SPA can call, and whether each service is usable now.
pub async fn list(
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let linked = db::linked_accounts::statuses(&state.pool, current.user_id).await?;
    let services: Vec<_> = state
        .services
        .all()
        .iter()
        .map(|s| {
            // A linked account is connected once per user (`/auth/connect/{service}`); the
            // login provider's token and courier's own come with the session.
            let status = if !s.linked {
                "connected"
            } else {
                let provider = s.config.provider.as_deref().unwrap_or_default();
                match linked.iter().find(|(p, _)| p == provider) {
                    Some((_, Status::Connected)) => "connected",
                    Some((_, Status::ReauthRequired)) => "reauth_required",
                    None => "not_connected",
                }
            };
            let mut entry = json!({
                "name": s.name(),
                "provider": s.config.provider,
                "linked": s.linked,
                "connected": status == "connected",
                "status": status,
                "scopes": s.config.scopes,
            });
            if status != "connected" {
                entry["connect_url"] = json!(connect_url(s));
            }
            entry
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "services": services })))
}

/// `DELETE /api/connections/{service}`: revokes the linked account's tokens at the provider
/// and deletes them. 204 also when nothing was connected.
pub async fn disconnect(
    path: web::Path<String>,
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let service = state
        .services
        .get(&path)
        .ok_or_else(|| ApiError::ServiceNotFound(path.clone()))?;
    if !service.linked {
        return Err(ApiError::BadRequest(format!(
            "service `{}` uses no linked account",
            service.name()
        )));
    }
    let provider = state
        .providers
        .get(service.config.provider.as_deref().unwrap_or_default())
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("a service names no configured provider"))
        })?;
    connections::disconnect(
        &state.pool,
        &state.keys,
        &state.providers.http,
        current.user_id,
        provider,
    )
    .await
    .map_err(|e| match e {
        DisconnectError::ProviderUnavailable(detail) => {
            tracing::warn!(%detail, "revocation failed; nothing deleted");
            ApiError::UpstreamUnavailable(
                "the provider cannot be reached to revoke the account".into(),
            )
        }
        DisconnectError::Database(e) => e.into(),
        DisconnectError::Load(e) => ApiError::internal(e),
    })?;
    state
        .cache
        .invalidate(&crate::cache::linked_key(current.user_id, provider.id()));
    Ok(HttpResponse::NoContent().finish())
}

/// Answers a linked-account problem with the service's connect URL.
fn linked_error(service: &Service, e: TokenError) -> ApiError {
    match e {
        TokenError::NotConnected => ApiError::ConnectRequired {
            connect_url: connect_url(service),
        },
        TokenError::ConnectionNeedsReauth => ApiError::ConnectRequired {
            connect_url: connect_url(service),
        },
        other => other.into(),
    }
}

/// `ANY /api/services/{service}/{path…}`: the call, made for the session user.
pub async fn call(
    req: HttpRequest,
    payload: web::Payload,
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = req
        .match_info()
        .get("service")
        .ok_or_else(|| ApiError::NotFound("no such endpoint".into()))?
        .to_owned();
    let service = state
        .services
        .get(&name)
        .ok_or_else(|| ApiError::ServiceNotFound(name.clone()))?;
    // The raw path, still percent-encoded: decoding is the target check's business. The router
    // matched a decoded name (`or%64ers` is `orders` to it); a name not written as configured
    // is no service of ours, rather than a path cut short.
    let prefix = format!("/api/services/{name}");
    let raw = req
        .uri()
        .path()
        .strip_prefix(&prefix)
        .and_then(|rest| match rest {
            "" => Some(""),
            rest => rest.strip_prefix('/'),
        })
        .ok_or_else(|| ApiError::ServiceNotFound(name.clone()))?;
    service.check_method(req.method().as_str())?;
    let target = service.target(raw, req.query_string())?;

    let token = match service.config.token {
        TokenMode::None => None,
        TokenMode::Client => Some(
            state
                .tokens
                .client_access_token(provider_of(service), &service.config.scopes)
                .await?,
        ),
        TokenMode::User if service.linked => Some(
            state
                .tokens
                .linked_access_token(current.user_id, provider_of(service), None)
                .await
                .map_err(|e| linked_error(service, e))?,
        ),
        TokenMode::User => Some(state.tokens.session_access_token(current.id).await?),
    };

    let length = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = OutgoingBody::read(
        payload,
        service.config.retry_buffer_bytes,
        state.config.server.max_body_bytes,
        length,
    )
    .await?;
    let retry_body = match &body {
        OutgoingBody::Buffered(bytes) => Some(bytes.clone()),
        OutgoingBody::Streaming { .. } => None,
    };
    let incoming = Incoming {
        req: &req,
        public_url: &state.config.server.public_url,
    };
    let timeout = Duration::from_secs(service.config.timeout_secs);
    let client = &state.services_http;
    let started = std::time::Instant::now();
    let response = proxy::send(
        client,
        &incoming,
        &target,
        body,
        token.as_ref().map(|t| &t.secret),
        timeout,
    )
    .await
    // A streamed body that stopped arriving failed the call: the client was slow (408).
    .map_err(|e| {
        if BodyDeadline::client_is_late(&req) {
            ApiError::RequestTimeout
        } else {
            e
        }
    });
    let status = match &response {
        Ok(r) => r.status().as_u16().to_string(),
        Err(e) => e.code().to_owned(),
    };
    let labels = [("service", service.name().to_owned()), ("status", status)];
    metrics::counter!("courier_service_calls_total", &labels).increment(1);
    metrics::histogram!("courier_service_call_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    let response = response?;

    // A 401 may mean the token was revoked or rotated early: refresh once and try again, when
    // the body can be sent again — unless this token was itself got after a 401 (a service
    // that keeps refusing must not cost a refresh per request).
    if response.status() == reqwest::StatusCode::UNAUTHORIZED
        && service.config.token == TokenMode::User
        && let (Some(rejected), Some(bytes)) = (&token, retry_body)
        && !rejected.after_rejection
    {
        let fresh = if service.linked {
            state
                .tokens
                .linked_access_token(
                    current.user_id,
                    provider_of(service),
                    Some(&rejected.secret),
                )
                .await
                .map_err(|e| linked_error(service, e))?
        } else {
            state
                .tokens
                .session_access_token_after_rejection(current.id, &rejected.secret)
                .await?
        };
        let again = proxy::send(
            client,
            &incoming,
            &target,
            OutgoingBody::Buffered(bytes),
            Some(&fresh.secret),
            timeout,
        )
        .await?;
        return proxy::respond(again);
    }
    proxy::respond(response)
}
