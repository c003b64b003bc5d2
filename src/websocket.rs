//! WebSocket relay: a browser's WebSocket to a service with `websocket = true`, as two
//! connections — the browser's, accepted by courier (actix-ws reads it; `outbox` writes it),
//! and courier's own to the service, opened with the user's token (`proxy::send` makes the
//! handshake on a connection that reqwest then hands over, so TLS and roots are the proxy's) —
//! and messages relayed between them.
//!
//! What courier holds for one connection is bounded (SPEC, "Live connections"): a message
//! larger than `websocket_max_message_bytes` closes both sides with 1009; each direction reads
//! its source only once the message before is written or queued within budget (`outbox`, and
//! the service's own socket), and the instance's `WebSocketBudget` bounds all connections
//! together; a side that takes nothing for `STALLED_AFTER` while data waits for it is
//! disconnected. The connection is bound to the session (`live::Binding`, held by the browser's
//! response body until the connection is gone): when the session ends anywhere, the binding
//! says so and both sides get a close frame with the SPEC's code; so do both when nothing has
//! passed for the service's `stream_idle_timeout_secs`, and when courier stops.

mod outbox;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use actix_web::body::{BodyStream, MessageBody};
use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Message};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as ServiceCloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as ServiceMessage};

use crate::error::ApiError;
use crate::live::{Binding, CloseCause, WebSocketBudget};
use crate::proxy::WebSocketKey;

use outbox::Outbox;
pub use outbox::STALLED_AFTER;

/// The bytes all relayed WebSockets of an instance may hold queued together: enough for
/// thousands of busy connections with small messages, and always for a few of the largest.
pub fn instance_budget(max_message: usize) -> usize {
    (256 * 1024 * 1024).max(4 * max_message)
}

/// The browser's side, accepted but not yet answered: its 101, its messages, and its socket.
pub struct BrowserSide {
    response: HttpResponse,
    messages: AggregatedMessageStream,
    socket: Option<Socket>,
}

/// Checks the browser's handshake (400 when it is not a valid one) before anything is asked
/// of the service. `max_message` bounds one message, however many frames it comes in.
pub fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    max_message: usize,
) -> Result<BrowserSide, ApiError> {
    // actix-ws's `Session` would queue towards its own response body, which `relay` replaces
    // with the outbox's: it is not used.
    let (response, _session, messages) = actix_ws::handle(req, payload)
        .map_err(|e| ApiError::BadRequest(format!("WebSocket handshake: {e}")))?;
    let messages = messages
        .max_frame_size(max_message)
        .aggregate_continuations()
        .max_continuation_size(max_message);
    Ok(BrowserSide {
        response,
        messages,
        socket: Socket::of(req),
    })
}

/// What the relay needs besides the two connections.
pub struct RelayRules {
    pub service: String,
    pub idle: Duration,
    pub max_message: usize,
    pub budget: WebSocketBudget,
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
    // tungstenite holds one message while it reads it, and writes one at a time (`send`
    // waits for the flush): its buffers stay small.
    let config = WebSocketConfig::default()
        .read_buffer_size(32 * 1024)
        .write_buffer_size(32 * 1024)
        .max_write_buffer_size(64 * 1024 + rules.max_message)
        .max_message_size(Some(rules.max_message))
        .max_frame_size(Some(rules.max_message));
    let written = Rc::new(Progress::default());
    let upgraded = Tracked {
        inner: upgraded,
        written: written.clone(),
    };
    let service = WebSocketStream::from_raw_socket(upgraded, Role::Client, Some(config)).await;

    let BrowserSide {
        response,
        messages,
        socket,
    } = browser;
    let outbox = Outbox::new(rules.max_message, rules.budget.clone());
    let closed = binding.closed();
    let kind = binding.kind();
    let body_outbox = outbox.clone();
    let mut response = response.map_body(|_, handshake_body| {
        BodyStream::new(body_outbox.body(binding, handshake_body)).boxed()
    });
    // The service chose among the protocols the browser offered (passed on by `proxy::send`).
    if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_bytes(p.as_bytes()).ok()) {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    let browser = Browser {
        outbox,
        messages,
        socket,
    };
    actix_web::rt::spawn(async move {
        let code = run(browser, service, written, closed, &rules).await;
        metrics::counter!("courier_live_closed_total", "kind" => kind.label(),
            "code" => code_label(code))
        .increment(1);
    });
    Ok(response)
}

/// The browser's side as the relay drives it.
struct Browser {
    outbox: Outbox,
    messages: AggregatedMessageStream,
    socket: Option<Socket>,
}

/// How a relay ended.
enum End {
    /// courier closes both sides.
    Courier(CloseCause),
    /// The browser sent a close frame.
    BrowserClosed(Option<CloseReason>),
    /// The browser's connection failed or went away without a close frame.
    BrowserGone,
    /// The browser took nothing for `STALLED_AFTER` while data waited for it.
    BrowserStalled,
    /// The service sent a close frame.
    ServiceClosed(Option<CloseFrame>),
    /// The service's connection failed or went away without a close frame.
    ServiceFailed,
    /// The service took nothing for `STALLED_AFTER` while a message waited for it.
    ServiceStalled,
    /// A message larger than `websocket_max_message_bytes`, from either side.
    TooBig,
}

type ServiceSocket = WebSocketStream<Tracked<reqwest::Upgraded>>;

/// How long the closing handshake with the service may take before its connection is dropped
/// anyway.
const CLOSING_WAIT: Duration = Duration::from_secs(3);
/// How often the relay looks for a side that stopped reading.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// 1009 (RFC 6455 §7.4.1): a message too big to process.
const TOO_BIG: u16 = 1009;

/// Relays until the connection ends; returns the close code the browser got (1005: none).
async fn run(
    browser: Browser,
    service: ServiceSocket,
    written: Rc<Progress>,
    closed: impl std::future::Future<Output = CloseCause>,
    rules: &RelayRules,
) -> u16 {
    let opened = std::time::Instant::now();
    let Browser {
        outbox,
        messages: mut from_browser,
        socket,
    } = browser;
    let (mut to_service, mut from_service) = service.split();
    let last_frame = Cell::new(Instant::now());
    let counted = |direction: &'static str| {
        metrics::counter!("courier_live_frames_total", "service" => rules.service.clone(),
            "direction" => direction)
    };
    let (to_service_frames, to_browser_frames) = (counted("to_service"), counted("to_browser"));

    let end = {
        let browser_to_service = async {
            while let Some(message) = from_browser.next().await {
                last_frame.set(Instant::now());
                let message = match message {
                    Ok(AggregatedMessage::Text(text)) => ServiceMessage::text(text.to_string()),
                    Ok(AggregatedMessage::Binary(bytes)) => ServiceMessage::Binary(bytes),
                    Ok(AggregatedMessage::Ping(bytes)) => {
                        // Answered here: each connection keeps itself alive.
                        outbox.pong(bytes);
                        continue;
                    }
                    Ok(AggregatedMessage::Pong(_)) => continue,
                    Ok(AggregatedMessage::Close(reason)) => return End::BrowserClosed(reason),
                    Err(e) if too_big_from_browser(&e) => return End::TooBig,
                    Err(_) => return End::BrowserGone,
                };
                to_service_frames.increment(1);
                let _held = rules.budget.acquire(message.len()).await;
                written.begin_waiting();
                let sent = to_service.send(message).await;
                written.end_waiting();
                if sent.is_err() {
                    return End::ServiceFailed;
                }
            }
            End::BrowserGone
        };
        let service_to_browser = async {
            while let Some(message) = from_service.next().await {
                last_frame.set(Instant::now());
                let message = match message {
                    Ok(ServiceMessage::Text(text)) => {
                        match bytestring::ByteString::try_from(bytes::Bytes::from(text)) {
                            Ok(text) => Message::Text(text),
                            Err(_) => return End::ServiceFailed,
                        }
                    }
                    Ok(ServiceMessage::Binary(bytes)) => Message::Binary(bytes),
                    // tungstenite answers the service's pings itself.
                    Ok(ServiceMessage::Ping(_) | ServiceMessage::Pong(_)) => continue,
                    Ok(ServiceMessage::Close(frame)) => return End::ServiceClosed(frame),
                    Ok(ServiceMessage::Frame(_)) => continue,
                    Err(tungstenite::Error::Capacity(_)) => return End::TooBig,
                    Err(_) => return End::ServiceFailed,
                };
                to_browser_frames.increment(1);
                if outbox.send(message).await.is_err() {
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
        let stalled = async {
            let mut ticker = tokio::time::interval(STALL_CHECK);
            loop {
                ticker.tick().await;
                if outbox.stalled() {
                    return End::BrowserStalled;
                }
                if written.stalled() {
                    return End::ServiceStalled;
                }
            }
        };
        tokio::select! {
            end = browser_to_service => end,
            end = service_to_browser => end,
            cause = closed => End::Courier(cause),
            () = idle => End::Courier(CloseCause::Idle),
            end = stalled => end,
        }
    };

    let too_big = "message too big";
    let (to_browser, to_service_frame) = match &end {
        End::Courier(cause) => (
            Some(reason_for_browser(cause.code(), cause.reason())),
            Some(frame_for_service(cause.code(), cause.reason())),
        ),
        End::BrowserClosed(reason) => {
            let frame = reason.as_ref().map(|r| {
                frame_for_service(u16::from(r.code), r.description.as_deref().unwrap_or(""))
            });
            (reason.clone(), frame)
        }
        End::BrowserGone | End::BrowserStalled => {
            (None, Some(frame_for_service(1001, "the browser went away")))
        }
        // tungstenite answers the service's close frame itself.
        End::ServiceClosed(frame) => (
            frame
                .as_ref()
                .map(|f| reason_for_browser(u16::from(f.code), f.reason.as_str())),
            None,
        ),
        End::ServiceFailed | End::ServiceStalled => (
            Some(reason_for_browser(
                CloseCause::ServiceFailed.code(),
                CloseCause::ServiceFailed.reason(),
            )),
            None,
        ),
        End::TooBig => (
            Some(reason_for_browser(TOO_BIG, too_big)),
            Some(frame_for_service(TOO_BIG, too_big)),
        ),
    };
    let code = to_browser.as_ref().map_or(1005, |r| u16::from(r.code));
    match end {
        End::BrowserStalled => cut(socket.as_ref(), "the browser read nothing"),
        End::BrowserGone => outbox.finish(),
        _ => outbox.close(to_browser),
    }
    // The service gets its close frame, unless its connection is the one that failed or
    // stopped reading. As the client of that connection, courier lets the service close it
    // (RFC 6455 §7.1.1): dropping it at once could reach the service before the close frame.
    if let Some(frame) = to_service_frame
        && !matches!(end, End::ServiceFailed | End::ServiceStalled)
    {
        let _ = tokio::time::timeout(CLOSING_WAIT, async {
            let _ = to_service.send(ServiceMessage::Close(Some(frame))).await;
            // What the service still sends is discarded, and a service that keeps sending is
            // not read for long: its close frame is no longer worth the wait.
            let mut discarded = 0;
            while let Some(Ok(message)) = from_service.next().await {
                if matches!(message, ServiceMessage::Close(_)) {
                    break;
                }
                discarded += message.len();
                if discarded > rules.max_message {
                    break;
                }
            }
            let _ = to_service.close().await;
        })
        .await;
    }
    drop((to_service, from_service));
    // The browser's close frame goes after what it has begun to receive; a browser that takes
    // none of it is cut off rather than waited for.
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    while !outbox.drained() {
        if outbox.stalled() {
            cut(socket.as_ref(), "the browser read nothing");
            break;
        }
        ticker.tick().await;
    }
    tracing::info!(
        service = %rules.service,
        code,
        duration_ms = opened.elapsed().as_millis() as u64,
        "WebSocket closed"
    );
    code
}

/// Whether the browser's message stream failed on a message over the size limit: a frame
/// (actix-http's `Overflow`) or a message of several frames (actix-ws's continuation limit,
/// which it reports as an I/O error: `websocket::tests` pins its wording).
fn too_big_from_browser(e: &actix_ws::ProtocolError) -> bool {
    match e {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(io) => io.to_string().contains("maximum continuation size"),
        _ => false,
    }
}

/// A duplicate of the browser connection's socket: courier's one way to end a connection
/// whose writes are blocked (actix-http stops polling a body it cannot write).
pub struct Socket(std::net::TcpStream);

/// The descriptor of a connection's socket, noted when the connection is accepted
/// (`remember_connection`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFd(#[cfg(unix)] std::os::fd::RawFd);

/// `HttpServer::on_connect`: notes each plain TCP connection's descriptor.
pub fn remember_connection(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    #[cfg(unix)]
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsRawFd;
        data.insert(ConnectionFd(tcp.as_raw_fd()));
    }
    #[cfg(not(unix))]
    let _ = (connection, data);
}

impl Socket {
    /// The request's connection's socket, duplicated so that courier holds it as long as the
    /// relay needs it.
    fn of(req: &HttpRequest) -> Option<Socket> {
        #[cfg(unix)]
        {
            let ConnectionFd(fd) = *req.conn_data::<ConnectionFd>()?;
            // SAFETY: `fd` is the socket of the connection this request arrived on. actix's
            // dispatcher owns it and keeps it open at least while it runs this request's
            // handler, which is the only caller; the duplicate made here is courier's own.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let owned = borrowed.try_clone_to_owned().ok()?;
            Some(Socket(std::net::TcpStream::from(owned)))
        }
        #[cfg(not(unix))]
        {
            let _ = req;
            None
        }
    }
}

/// Ends the browser's TCP connection: its dispatcher's blocked write fails at once, and the
/// response body (with its binding) is dropped.
fn cut(socket: Option<&Socket>, why: &str) {
    tracing::info!(why, "WebSocket disconnected");
    if let Some(Socket(stream)) = socket {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

/// When courier's connection to the service last took bytes, while a message waits for it.
#[derive(Default)]
struct Progress {
    waiting: Cell<bool>,
    last: Cell<Option<Instant>>,
}

impl Progress {
    fn begin_waiting(&self) {
        self.waiting.set(true);
        self.last.set(Some(Instant::now()));
    }

    fn end_waiting(&self) {
        self.waiting.set(false);
    }

    fn wrote(&self) {
        if self.waiting.get() {
            self.last.set(Some(Instant::now()));
        }
    }

    fn stalled(&self) -> bool {
        self.waiting.get()
            && self
                .last
                .get()
                .is_some_and(|t| t.elapsed() >= STALLED_AFTER)
    }
}

/// The service's connection, noting each write that takes bytes.
struct Tracked<T> {
    inner: T,
    written: Rc<Progress>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.written.wrote();
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A close code as a metric label: courier's own and the common ones by number; the codes a
/// browser or service may choose freely (3000–4999) would make a label value each.
fn code_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1005 => "1005",
        1009 => "1009",
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
