//! WebSocket relay: a browser's WebSocket to a service with `websocket = true`, as two
//! connections — the browser's, accepted by courier (actix-ws), and courier's own to the
//! service, opened with the user's token (`proxy::send` makes the handshake on a connection
//! that reqwest then hands over, so TLS and roots are the proxy's) — and messages relayed
//! between them.
//!
//! Each direction is read only as fast as the other side takes what was read: a slow browser
//! slows the service's connection down to TCP's pace, and the other way round, so neither
//! side can make courier buffer more than a few frames. The connection is bound to the session
//! (`live::Binding`): when the session ends anywhere, the binding says so and both sides get a
//! close frame with the SPEC's code; so do both when nothing has passed for the service's
//! `stream_idle_timeout_secs`, and when courier stops.

use std::cell::Cell;
use std::time::Duration;

use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as ServiceCloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as ServiceMessage};

use crate::error::ApiError;
use crate::live::{Binding, CloseCause};
use crate::proxy::WebSocketKey;

/// The browser's side, accepted but not yet answered: its 101, and the two ends to relay.
pub struct BrowserSide {
    response: HttpResponse,
    session: Session,
    messages: AggregatedMessageStream,
}

/// Checks the browser's handshake (400 when it is not a valid one) before anything is asked
/// of the service. `max_message` bounds one message, however many frames it comes in.
pub fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    max_message: usize,
) -> Result<BrowserSide, ApiError> {
    let (response, session, messages) = actix_ws::handle(req, payload)
        .map_err(|e| ApiError::BadRequest(format!("WebSocket handshake: {e}")))?;
    let messages = messages
        .max_frame_size(max_message)
        .aggregate_continuations()
        .max_continuation_size(max_message);
    Ok(BrowserSide {
        response,
        session,
        messages,
    })
}

/// What the relay needs besides the two connections.
pub struct RelayRules {
    pub service: String,
    pub idle: Duration,
    pub max_message: usize,
}

/// The service answered the handshake: when it switched protocols, completes the browser's
/// handshake and relays until either side closes or the binding says to; any other answer is
/// passed on as the browser's (its WebSocket then fails as the service's did).
pub async fn relay(
    browser: BrowserSide,
    upstream: reqwest::Response,
    binding: Binding,
    rules: RelayRules,
) -> Result<HttpResponse, ApiError> {
    if upstream.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        return crate::proxy::respond(
            upstream,
            crate::proxy::StreamRules {
                idle: rules.idle,
                binding: None,
                follow: None,
            },
        );
    }
    let accepted = upstream
        .extensions()
        .get::<WebSocketKey>()
        .map(|key| tungstenite::handshake::derive_accept_key(key.0.as_bytes()));
    let answered = upstream
        .headers()
        .get("sec-websocket-accept")
        .and_then(|v| v.to_str().ok());
    if accepted.is_none() || accepted.as_deref() != answered {
        return Err(ApiError::ServiceUnreachable(
            "the service's WebSocket handshake is not valid".into(),
        ));
    }
    let protocol = upstream.headers().get("sec-websocket-protocol").cloned();
    let upgraded = upstream.upgrade().await.map_err(|e| {
        tracing::warn!(error = %crate::oidc::registry::error_chain(&e.without_url()), "WebSocket upgrade failed");
        ApiError::ServiceUnreachable("the service's WebSocket could not be opened".into())
    })?;
    let config = WebSocketConfig::default()
        .read_buffer_size(32 * 1024)
        .write_buffer_size(32 * 1024)
        .max_message_size(Some(rules.max_message))
        .max_frame_size(Some(rules.max_message));
    let service = WebSocketStream::from_raw_socket(upgraded, Role::Client, Some(config)).await;

    let BrowserSide {
        mut response,
        session,
        messages,
    } = browser;
    // The service chose among the protocols the browser offered (passed on by `proxy::send`).
    if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_bytes(p.as_bytes()).ok()) {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    actix_web::rt::spawn(run(session, messages, service, binding, rules));
    Ok(response)
}

/// How a relay ended.
enum End {
    /// courier closes both sides.
    Courier(CloseCause),
    /// The browser sent a close frame.
    BrowserClosed(Option<CloseReason>),
    /// The browser's connection failed or went away without a close frame.
    BrowserGone,
    /// The service sent a close frame.
    ServiceClosed(Option<CloseFrame>),
    /// The service's connection failed or went away without a close frame.
    ServiceFailed,
}

type ServiceSocket = WebSocketStream<reqwest::Upgraded>;

/// How long the closing handshakes may take before both connections are dropped anyway.
const CLOSING_WAIT: Duration = Duration::from_secs(3);

async fn run(
    browser: Session,
    mut from_browser: AggregatedMessageStream,
    service: ServiceSocket,
    binding: Binding,
    rules: RelayRules,
) {
    let opened = std::time::Instant::now();
    let (mut to_service, mut from_service) = service.split();
    let last_frame = Cell::new(Instant::now());
    let counted = |direction: &'static str| {
        metrics::counter!("courier_live_frames_total", "service" => rules.service.clone(),
            "direction" => direction)
    };
    let (to_service_frames, to_browser_frames) = (counted("to_service"), counted("to_browser"));

    let end = {
        let mut pong_to = browser.clone();
        let mut to_browser = browser.clone();
        let browser_to_service = async {
            while let Some(message) = from_browser.next().await {
                last_frame.set(Instant::now());
                let message = match message {
                    Ok(AggregatedMessage::Text(text)) => ServiceMessage::text(text.to_string()),
                    Ok(AggregatedMessage::Binary(bytes)) => ServiceMessage::Binary(bytes),
                    Ok(AggregatedMessage::Ping(bytes)) => {
                        // Answered here: each connection keeps itself alive.
                        if pong_to.pong(&bytes).await.is_err() {
                            return End::BrowserGone;
                        }
                        continue;
                    }
                    Ok(AggregatedMessage::Pong(_)) => continue,
                    Ok(AggregatedMessage::Close(reason)) => return End::BrowserClosed(reason),
                    Err(_) => return End::BrowserGone,
                };
                to_service_frames.increment(1);
                if to_service.send(message).await.is_err() {
                    return End::ServiceFailed;
                }
            }
            End::BrowserGone
        };
        let service_to_browser = async {
            while let Some(message) = from_service.next().await {
                last_frame.set(Instant::now());
                let sent = match message {
                    Ok(ServiceMessage::Text(text)) => to_browser.text(text.as_str()).await,
                    Ok(ServiceMessage::Binary(bytes)) => to_browser.binary(bytes).await,
                    // tungstenite answers the service's pings itself.
                    Ok(ServiceMessage::Ping(_) | ServiceMessage::Pong(_)) => continue,
                    Ok(ServiceMessage::Close(frame)) => return End::ServiceClosed(frame),
                    Ok(ServiceMessage::Frame(_)) => continue,
                    Err(_) => return End::ServiceFailed,
                };
                to_browser_frames.increment(1);
                if sent.is_err() {
                    return End::BrowserGone;
                }
            }
            End::ServiceFailed
        };
        let idle = async {
            loop {
                let due = last_frame.get() + rules.idle;
                if Instant::now() >= due {
                    return;
                }
                tokio::time::sleep_until(due).await;
            }
        };
        tokio::select! {
            end = browser_to_service => end,
            end = service_to_browser => end,
            cause = binding.closed() => End::Courier(cause),
            () = idle => End::Courier(CloseCause::Idle),
        }
    };

    let (to_browser, to_service_frame) = match end {
        End::Courier(cause) => (
            Some(reason_for_browser(cause.code(), cause.reason())),
            Some(frame_for_service(cause.code(), cause.reason())),
        ),
        End::BrowserClosed(reason) => {
            let frame = reason.as_ref().map(|r| {
                frame_for_service(u16::from(r.code), r.description.as_deref().unwrap_or(""))
            });
            (reason, frame)
        }
        End::BrowserGone => (None, Some(frame_for_service(1001, "the browser went away"))),
        // tungstenite answers the service's close frame itself.
        End::ServiceClosed(frame) => (
            frame
                .as_ref()
                .map(|f| reason_for_browser(u16::from(f.code), f.reason.as_str())),
            None,
        ),
        End::ServiceFailed => (
            Some(reason_for_browser(
                CloseCause::ServiceFailed.code(),
                CloseCause::ServiceFailed.reason(),
            )),
            None,
        ),
    };
    let code = to_browser.as_ref().map_or(1005, |r| u16::from(r.code));
    // Each side gets its close frame; a side that is gone already makes these fail, which
    // changes nothing.
    let _ = tokio::time::timeout(CLOSING_WAIT, async {
        let _ = browser.close(to_browser).await;
        if let Some(frame) = to_service_frame {
            let _ = to_service.send(ServiceMessage::Close(Some(frame))).await;
            // As the client of the service's connection, courier lets the service close it
            // (RFC 6455 §7.1.1): dropping it at once could reach the service before the close
            // frame is read.
            while let Some(Ok(message)) = from_service.next().await {
                if matches!(message, ServiceMessage::Close(_)) {
                    break;
                }
            }
        }
        let _ = to_service.close().await;
    })
    .await;
    metrics::counter!("courier_live_closed_total", "kind" => binding.kind().label(),
        "code" => code_label(code))
    .increment(1);
    tracing::info!(
        service = %rules.service,
        code,
        duration_ms = opened.elapsed().as_millis() as u64,
        "WebSocket closed"
    );
}

/// A close code as a metric label: courier's own and the common ones by number; the codes a
/// browser or service may choose freely (3000–4999) would make a label value each.
fn code_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1005 => "1005",
        1011 => "1011",
        4401 => "4401",
        4408 => "4408",
        _ => "other",
    }
}

fn reason_for_browser(code: u16, reason: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::from(code),
        description: (!reason.is_empty()).then(|| reason.to_owned()),
    }
}

fn frame_for_service(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: ServiceCloseCode::from(code),
        reason: reason.to_owned().into(),
    }
}
