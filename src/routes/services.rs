//! `GET /api/services` and `ANY /api/services/{service}/{path…}`.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::body_deadline::BodyDeadline;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::connections;
use crate::error::ApiError;
use crate::live::{Binding, LinkedAccount, LiveKind, Refused};
use crate::oidc::grants::ExchangeTarget;
use crate::proxy::{self, Incoming, OutgoingBody};
use crate::services::{CallToken, Service, ServiceStatus};
use crate::session::CurrentSession;
use crate::state::AppState;
use crate::tokens::{AccessToken, ExchangeFor, TokenError};
use crate::websocket;

fn connect_url(service: &Service) -> String {
    format!("/auth/connect/{}", service.name())
}

/// `GET /api/services`: what the SPA can call, and whether each service is usable now. A
/// service of the provider the session logged in with uses the session's tokens; any other
/// provider's needs a linked account, so the answer depends on the session.
pub async fn list(
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let statuses = connections::service_statuses(
        &state.pool,
        current.user_id,
        &current.provider,
        &state.services,
    )
    .await?;
    let services: Vec<_> = statuses
        .into_iter()
        .map(|(s, status)| {
            let mut entry = json!({
                "name": s.name(),
                "provider": s.config.provider,
                "linked": s.linked_provider(&current.provider).is_some(),
                "connected": status == ServiceStatus::Connected,
                "status": status,
                "scopes": s.config.scopes,
            });
            if status != ServiceStatus::Connected {
                entry["connect_url"] = json!(connect_url(s));
            }
            entry
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "services": services })))
}

/// `DELETE /api/connections/{service}`: revokes the user's linked account at the service's
/// provider and deletes it. 204 also when nothing was connected. A linked account is the
/// user's, across sessions: in a session that logged in with the service's provider (whose
/// calls use the session's own tokens) it is the account other sessions of the user link, and
/// the session's own tokens stay.
pub async fn disconnect(
    path: web::Path<String>,
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let service = state
        .services
        .get(&path)
        .ok_or_else(|| ApiError::ServiceNotFound(path.clone()))?;
    let provider = service
        .user_provider()
        .and_then(|id| state.providers.get(id))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "service `{}` uses no linked account",
                service.name()
            ))
        })?;
    connections::disconnect(
        &state.pool,
        &state.keys,
        &state.cache,
        &state.providers.http,
        current.user_id,
        provider,
    )
    .await?;
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

/// The token a call to `service` carries, for the first try and (with the token the service
/// rejected) for the one retry after a 401. The token mode is decided here only.
async fn token_for(
    state: &AppState,
    service: &Service,
    current: &CurrentSession,
    rejected: Option<&SecretString>,
) -> Result<Option<AccessToken>, ApiError> {
    let resource = service.resource();
    let token = match service.call_token(&current.provider) {
        CallToken::None => return Ok(None),
        CallToken::Client { provider } => {
            state
                .tokens
                .client_access_token(provider, &service.config.scopes, resource)
                .await?
        }
        CallToken::Linked { provider } => state
            .tokens
            .linked_access_token(current.user_id, provider, resource, rejected)
            .await
            .map_err(|e| linked_error(service, e))?,
        CallToken::Exchange { provider, linked } => {
            let exchange = ExchangeFor {
                service: service.name(),
                provider,
                linked,
                target: ExchangeTarget {
                    audience: service.config.audience.as_deref(),
                    resource,
                    scopes: &service.config.scopes,
                },
            };
            state
                .tokens
                .exchanged_token(current.id, current.user_id, exchange, rejected)
                .await
                .map_err(|e| linked_error(service, e))?
        }
        CallToken::Session => match rejected {
            None => {
                state
                    .tokens
                    .session_access_token(current.id, resource)
                    .await?
            }
            Some(rejected) => {
                state
                    .tokens
                    .session_access_token_after_rejection(current.id, resource, rejected)
                    .await?
            }
        },
    };
    Ok(Some(token))
}

/// The service a call names and the URL it goes to, when the method and path are allowed.
fn resolve<'a>(req: &HttpRequest, state: &'a AppState) -> Result<(&'a Service, Url), ApiError> {
    let name = req
        .match_info()
        .get("service")
        .ok_or_else(|| ApiError::NotFound("no such endpoint".into()))?;
    let service = state
        .services
        .get(name)
        .ok_or_else(|| ApiError::ServiceNotFound(name.to_owned()))?;
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
        .ok_or_else(|| ApiError::ServiceNotFound(name.to_owned()))?;
    service.check_method(req.method().as_str())?;
    let target = service.target(raw, req.query_string())?;
    Ok((service, target))
}

/// The request body, buffered up to the service's `retry_buffer_bytes` (so that it can be sent
/// again after a 401), streamed beyond.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    service: &Service,
    state: &AppState,
) -> Result<OutgoingBody, ApiError> {
    let length = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    OutgoingBody::read(
        payload,
        service.config.retry_buffer_bytes,
        state.config.server.max_body_bytes,
        length,
    )
    .await
}

/// The first try of a call, counted and timed in the service-call metrics.
async fn send_measured(
    state: &AppState,
    req: &HttpRequest,
    service: &Service,
    target: &Url,
    body: OutgoingBody,
    token: Option<&AccessToken>,
) -> Result<reqwest::Response, ApiError> {
    let incoming = Incoming {
        req,
        public_url: &state.config.server.public_url,
        client: client_of(req),
    };
    let timeout = Duration::from_secs(service.config.timeout_secs);
    let started = std::time::Instant::now();
    let credentials = token
        .map(|t| credentials(req, service, target, t))
        .transpose()?;
    let response = proxy::send(
        &proxy::client(),
        &incoming,
        target,
        body,
        credentials,
        timeout,
    )
    .await
    // A streamed body that stopped arriving failed the call: the client was slow (408).
    .map_err(|e| {
        if BodyDeadline::client_is_late(req) {
            ApiError::RequestTimeout
        } else {
            e
        }
    });
    let answered = response.as_ref().map(|r| r.status());
    let status = match (&answered, &response) {
        (Ok(status), _) => status.as_str(),
        (Err(_), Err(e)) => e.code(),
        (Err(_), Ok(_)) => "internal",
    };
    crate::metrics::record_service_call(service.name(), status, started.elapsed().as_secs_f64());
    response
}

/// The one retry after a 401, with a fresh token and the buffered body (not counted in the
/// service-call metrics: the first try was).
async fn send_retry(
    state: &AppState,
    req: &HttpRequest,
    service: &Service,
    target: &Url,
    body: web::Bytes,
    fresh: &AccessToken,
) -> Result<reqwest::Response, ApiError> {
    let incoming = Incoming {
        req,
        public_url: &state.config.server.public_url,
        client: client_of(req),
    };
    let timeout = Duration::from_secs(service.config.timeout_secs);
    let body = OutgoingBody::Buffered(body);
    let credentials = credentials(req, service, target, fresh)?;
    proxy::send(
        &proxy::client(),
        &incoming,
        target,
        body,
        Some(credentials),
        timeout,
    )
    .await
}

/// What a call carries for `token`: the token, and for a DPoP-bound one a fresh proof for
/// this method and URL with the service's last nonce (RFC 9449 §7). Bearer tokens cost
/// nothing more.
fn credentials<'a>(
    req: &HttpRequest,
    service: &Service,
    target: &Url,
    token: &'a AccessToken,
) -> Result<proxy::Credentials<'a>, ApiError> {
    let dpop_proof = match &token.dpop {
        None => None,
        Some(key) => Some(
            key.proof(
                req.method().as_str(),
                target,
                Some(token.secret.expose_secret()),
                service.dpop_nonce().as_deref(),
                chrono::Utc::now().timestamp(),
            )
            .map_err(ApiError::internal)?,
        ),
    };
    Ok(proxy::Credentials {
        token: &token.secret,
        dpop_proof,
    })
}

/// Whether a service's 401 asks for a DPoP nonce (RFC 9449 §9) that it sent along; the nonce
/// is kept for the service either way.
fn asks_for_dpop_nonce(service: &Service, response: &reqwest::Response) -> bool {
    let nonce = response
        .headers()
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok());
    let fresh_nonce = service.keep_dpop_nonce(nonce);
    fresh_nonce
        && response.status() == reqwest::StatusCode::UNAUTHORIZED
        && response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("use_dpop_nonce"))
}

/// The linked account a call's token comes from, whose end closes a live connection too.
fn linked_account(service: &Service, current: &CurrentSession) -> Option<LinkedAccount> {
    match service.call_token(&current.provider) {
        CallToken::Linked { provider }
        | CallToken::Exchange {
            provider,
            linked: true,
        } => Some((current.user_id, provider.to_owned())),
        _ => None,
    }
}

/// A live connection's place, or 429/503 when there is none.
async fn bind_live(
    state: &AppState,
    service: &Service,
    current: &CurrentSession,
    kind: LiveKind,
) -> Result<Binding, ApiError> {
    state
        .live
        .bind(current.id, linked_account(service, current), kind)
        .await
        .map_err(|refused| match refused {
            Refused::InstanceFull | Refused::SessionFull => {
                tracing::info!(service = service.name(), %refused, "live connection refused");
                ApiError::TooManyLiveConnections(refused.to_string())
            }
            Refused::ShuttingDown => ApiError::UpstreamUnavailable(refused.to_string()),
            Refused::Unavailable(e) => ApiError::DatabaseUnavailable(e),
        })
}

/// How the service's answer streams back: with the service's idle bound, and bound to the
/// session — server-sent events at once, as a live connection within the caps; any other body
/// once it has streamed for a second, outside them.
async fn stream_rules(
    state: &AppState,
    service: &Service,
    current: &CurrentSession,
    response: &reqwest::Response,
) -> Result<proxy::StreamRules, ApiError> {
    let (binding, follow) = if proxy::is_event_stream(response) {
        let binding = bind_live(state, service, current, LiveKind::Stream).await?;
        (Some(binding), None)
    } else {
        let follow = proxy::Follow {
            live: state.live.clone(),
            session: current.id,
            linked: linked_account(service, current),
        };
        (None, Some(follow))
    };
    Ok(proxy::StreamRules {
        idle: Duration::from_secs(service.config.stream_idle_timeout_secs),
        binding,
        follow,
    })
}

/// `ANY /api/services/{service}/{path…}`: the call, made for the session user. A WebSocket
/// handshake (to a service with `websocket = true`; `limits` refuses the rest) is the same call
/// without a body, whose 101 starts a relay.
pub async fn call(
    req: HttpRequest,
    payload: web::Payload,
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (service, target) = resolve(&req, &state)?;
    let max_message = state.config.server.websocket_max_message_bytes;
    let (live, payload) = if proxy::is_websocket_upgrade(&req) {
        if !service.config.websocket {
            return Err(ApiError::BadRequest(format!(
                "service `{}` takes no WebSocket",
                service.name()
            )));
        }
        let browser = websocket::accept(&req, payload, max_message)?;
        let binding = bind_live(&state, service, &current, LiveKind::WebSocket).await?;
        (Some((browser, binding)), None)
    } else {
        (None, Some(payload))
    };
    let token = token_for(&state, service, &current, None).await?;
    let body = match payload {
        None => OutgoingBody::Buffered(web::Bytes::new()),
        Some(payload) => read_body(&req, payload, service, &state).await?,
    };
    let retry_body = match &body {
        OutgoingBody::Buffered(bytes) => Some(bytes.clone()),
        OutgoingBody::Streaming { .. } => None,
    };
    let mut response = send_measured(&state, &req, service, &target, body, token.as_ref()).await?;

    // A DPoP-bound call that the service answered with a nonce to use: once more with it,
    // same token, no refresh (a streamed body cannot be sent again).
    if let Some(bound) = token.as_ref().filter(|t| t.dpop.is_some())
        && asks_for_dpop_nonce(service, &response)
        && let Some(bytes) = &retry_body
    {
        response = send_retry(&state, &req, service, &target, bytes.clone(), bound).await?;
        asks_for_dpop_nonce(service, &response);
    }

    // A 401 may mean the token was revoked or rotated early: refresh once and try again, when
    // the body can be sent again — unless this token was itself got after a 401 (a service
    // that keeps refusing must not cost a refresh per request). courier's own client token is
    // not retried.
    if response.status() == reqwest::StatusCode::UNAUTHORIZED
        && matches!(
            service.call_token(&current.provider),
            CallToken::Session | CallToken::Linked { .. } | CallToken::Exchange { .. }
        )
        && let (Some(rejected), Some(bytes)) = (&token, retry_body)
        && !rejected.after_rejection
        && let Some(fresh) = token_for(&state, service, &current, Some(&rejected.secret)).await?
    {
        response = send_retry(&state, &req, service, &target, bytes, &fresh).await?;
    }
    match live {
        Some((browser, binding)) => {
            let rules = websocket::RelayRules {
                service: service.name().to_owned(),
                idle: Duration::from_secs(service.config.stream_idle_timeout_secs),
                max_message,
                budget: state.live.websocket_budget(),
            };
            websocket::relay(browser, response, binding, rules).await
        }
        None => {
            let rules = stream_rules(&state, service, &current, &response).await?;
            proxy::respond(response, rules)
        }
    }
}

/// The client's address for `X-Forwarded-For`: believed from a trusted proxy only.
fn client_of(req: &HttpRequest) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    match req.app_data::<web::Data<std::sync::Arc<crate::limits::Limits>>>() {
        Some(limits) => limits.client_of(peer, req.headers()),
        None => Some(peer),
    }
}
