//! A dependent service for courier's tests, benchmarks and dev stack. Every request's bearer
//! token is checked at the provider's introspection endpoint (when one is configured), and the
//! answer echoes what arrived: method, path, query, headers, body and the token's owner. With
//! `audience` set, a token must be made for it (its introspected `aud` names it): a token made
//! for another service is refused. With `require_dpop`, a token must come as `Authorization:
//! DPoP` with a proof (RFC 9449 §4.3, §7): signed by the key in its header, for this method and
//! URL, issued within a minute, never seen before (`jti`), for this token (`ath`), with the
//! nonce when `dpop_nonce` demands one, and by the key the token is bound to (its introspected
//! `cnf.jkt`).
//!
//! Paths under `/_demo/` misbehave on purpose: `status/{code}`, `slow?ms=`, `cookie`,
//! `redirect`, `stream?chunks=&size=`, `origin-headers` (an echo that also sends every response
//! header that would act on courier's origin: `Refresh`, `Clear-Site-Data`, HSTS, CORS, …, and
//! a Basic challenge beside a Bearer one), `ndjson?count=&interval_ms=` (a JSON line every
//! `interval_ms`, `count` of them, 0: without end; counted in `/_demo/live`'s `open_streams`).
//!
//! Live connections (courier's `websocket = true` services and streamed responses):
//! - `/_demo/ws`: a WebSocket, its token checked like any call's. Its first message is a JSON
//!   `{"hello": {"token": …, "authorization": "<scheme> <redacted>"}}`; then it echoes every
//!   text and binary message, except the text commands `flood:<frames>:<bytes>` (that many binary
//!   frames as fast as the connection takes them, for back-pressure) and `close:<code>` (it
//!   closes with that code).
//! - `/_demo/events?count=&interval_ms=&silence_after=`: server-sent events, `count` of them (0:
//!   without end) `interval_ms` apart, or silence without end after `silence_after` of them.
//! - `/_demo/live`: what the live endpoints saw: open WebSockets, bytes a flood has sent so far,
//!   the close codes received, and open event streams.

use std::net::TcpListener;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use url::Url;

#[derive(Clone)]
pub struct Introspection {
    pub endpoint: Url,
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Clone, Default)]
pub struct DemoConfig {
    pub introspection: Option<Introspection>,
    /// The audience a token must have (RFC 8707 resource / RFC 8693 audience); needs
    /// `introspection`.
    pub audience: Option<String>,
    /// Tokens must be DPoP-bound and come with a valid proof; needs `introspection`.
    pub require_dpop: bool,
    /// The nonce every DPoP proof must carry (RFC 9449 §9); without it a 401
    /// `use_dpop_nonce` says which.
    pub dpop_nonce: Option<String>,
}

/// What the live endpoints report at `/_demo/live`.
#[derive(Default)]
struct LiveStats {
    open_sockets: AtomicI64,
    flood_sent_bytes: AtomicU64,
    open_streams: AtomicI64,
    close_codes: std::sync::Mutex<Vec<u16>>,
}

struct State {
    config: DemoConfig,
    live: LiveStats,
    http: reqwest::Client,
    /// DPoP proof ids seen: a replayed proof is refused.
    seen_jtis: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A checked DPoP proof: the thumbprint of the key that signed it.
struct Proof {
    jkt: String,
}

fn dpop_refused(error: &str, why: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((
            "www-authenticate",
            format!("DPoP error=\"{error}\", algs=\"ES256\""),
        ))
        .json(json!({"error": error, "error_description": why}))
}

/// Checks the request's DPoP proof for `token` (RFC 9449 §4.3).
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the response itself, made once per refused request"
)]
fn check_proof(state: &State, req: &HttpRequest, token: &str) -> Result<Proof, HttpResponse> {
    use jsonwebtoken::jwk::ThumbprintHash;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let invalid = |why: &str| dpop_refused("invalid_dpop_proof", why);
    let mut proofs = req.headers().get_all("dpop");
    let proof = proofs
        .next()
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("no DPoP proof"))?;
    if proofs.next().is_some() {
        return Err(invalid("more than one DPoP proof"));
    }
    let header = jsonwebtoken::decode_header(proof).map_err(|_| invalid("not a JWT"))?;
    if header.typ.as_deref() != Some("dpop+jwt") || header.alg != Algorithm::ES256 {
        return Err(invalid("typ must be dpop+jwt and alg ES256"));
    }
    let jwk = header.jwk.ok_or_else(|| invalid("no jwk in the header"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| invalid("unusable jwk"))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(proof, &key, &validation)
        .map_err(|_| invalid("bad signature"))?
        .claims;
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let htu = format!("http://{host}{}", req.path());
    if claims["htm"] != req.method().as_str() || claims["htu"] != htu.as_str() {
        return Err(invalid("htm or htu do not match the request"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let iat = claims["iat"].as_i64().ok_or_else(|| invalid("no iat"))?;
    if (now - iat).abs() > 60 {
        return Err(invalid("iat is not within a minute"));
    }
    let ath = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(token))
    };
    if claims["ath"] != ath.as_str() {
        return Err(invalid("ath is not this token's"));
    }
    if let Some(nonce) = &state.config.dpop_nonce
        && claims["nonce"] != nonce.as_str()
    {
        let mut refused = dpop_refused("use_dpop_nonce", "a nonce is required");
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(nonce) {
            refused.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("dpop-nonce"),
                value,
            );
        }
        return Err(refused);
    }
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| invalid("no jti"))?;
    let fresh = state
        .seen_jtis
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(jti.to_owned());
    if !fresh {
        return Err(invalid("the proof was used before"));
    }
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| invalid("unusable jwk"))?;
    Ok(Proof { jkt })
}

pub fn run(listener: TcpListener, config: DemoConfig) -> std::io::Result<Server> {
    let state = web::Data::new(State {
        config,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client builds"),
        seen_jtis: std::sync::Mutex::new(std::collections::HashSet::new()),
        live: LiveStats::default(),
    });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .route("/_demo/ws", web::get().to(websocket))
            .route("/_demo/events", web::get().to(events))
            .route("/_demo/live", web::get().to(live_stats))
            .default_service(web::to(handle))
    })
    .listen(listener)?
    .run())
}

async fn introspect(state: &State, req: &HttpRequest) -> Result<Value, HttpResponse> {
    let Some(introspection) = &state.config.introspection else {
        return Ok(Value::Null);
    };
    let unauthorized = |why: &str| {
        HttpResponse::Unauthorized()
            .insert_header(("www-authenticate", "Bearer error=\"invalid_token\""))
            .json(json!({"error": "invalid_token", "error_description": why}))
    };
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let (token, proof) = if state.config.require_dpop {
        let token = authorization
            .and_then(|v| v.strip_prefix("DPoP "))
            .ok_or_else(|| dpop_refused("invalid_token", "no DPoP-bound token"))?;
        (token, Some(check_proof(state, req, token)?))
    } else {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("no bearer token"))?;
        (token, None)
    };
    let answer: Value = state
        .http
        .post(introspection.endpoint.clone())
        .basic_auth(&introspection.client_id, Some(&introspection.client_secret))
        .form(&[("token", token)])
        .send()
        .await
        .map_err(|_| HttpResponse::BadGateway().json(json!({"error": "introspection failed"})))?
        .json()
        .await
        .map_err(|_| HttpResponse::BadGateway().json(json!({"error": "introspection failed"})))?;
    if answer["active"] != true {
        return Err(unauthorized("the token is not active"));
    }
    if let Some(proof) = &proof
        && answer["cnf"]["jkt"] != proof.jkt.as_str()
    {
        return Err(dpop_refused(
            "invalid_token",
            "the token is not bound to the proof's key",
        ));
    }
    if let Some(audience) = &state.config.audience {
        let made_for_us = match &answer["aud"] {
            Value::String(aud) => aud == audience,
            Value::Array(auds) => auds.iter().any(|a| a == audience),
            _ => false,
        };
        if !made_for_us {
            return Err(unauthorized("the token is not made for this service"));
        }
    }
    Ok(json!({
        "active": true,
        "sub": answer["sub"],
        "client_id": answer["client_id"],
        "scope": answer["scope"],
        "aud": answer["aud"],
        "token_type": answer["token_type"],
        "jkt": answer["cnf"]["jkt"],
    }))
}

/// `/_demo/ws`: see the module's comment.
async fn websocket(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let token = match introspect(&state, &req).await {
        Ok(token) => token,
        Err(response) => return response,
    };
    let scheme = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(' ').next())
        .unwrap_or("none")
        .to_owned();
    let (response, mut session, messages) = match actix_ws::handle(&req, payload) {
        Ok(parts) => parts,
        Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
    };
    let mut messages = messages
        .max_frame_size(16 * 1024 * 1024)
        .aggregate_continuations()
        .max_continuation_size(16 * 1024 * 1024);
    actix_web::rt::spawn(async move {
        state.live.open_sockets.fetch_add(1, Ordering::SeqCst);
        let hello =
            json!({"hello": {"token": token, "authorization": format!("{scheme} <redacted>")}});
        let mut closing = None;
        if session.text(hello.to_string()).await.is_ok() {
            while let Some(Ok(message)) = messages.recv().await {
                use actix_ws::AggregatedMessage as M;
                let sent = match message {
                    M::Text(text) => match text.split(':').collect::<Vec<_>>()[..] {
                        ["flood", frames, bytes] => {
                            flood(
                                &state,
                                &mut session,
                                frames.parse().unwrap_or(0),
                                bytes.parse().unwrap_or(0),
                            )
                            .await
                        }
                        ["close", code] => {
                            closing = Some(actix_ws::CloseReason {
                                code: actix_ws::CloseCode::from(
                                    code.parse::<u16>().unwrap_or(1000),
                                ),
                                description: Some("asked to".into()),
                            });
                            break;
                        }
                        _ => session.text(text).await,
                    },
                    M::Binary(bytes) => session.binary(bytes).await,
                    M::Ping(bytes) => session.pong(&bytes).await,
                    M::Pong(_) => Ok(()),
                    M::Close(reason) => {
                        let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
                        state
                            .live
                            .close_codes
                            .lock()
                            .expect("not poisoned")
                            .push(code);
                        closing = reason;
                        break;
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
        }
        let _ = session.close(closing).await;
        state.live.open_sockets.fetch_sub(1, Ordering::SeqCst);
    });
    response
}

/// Sends `frames` binary frames of `bytes` each, as fast as the connection takes them, counting
/// what went out in `/_demo/live`'s `flood_sent_bytes`.
async fn flood(
    state: &State,
    session: &mut actix_ws::Session,
    frames: u64,
    bytes: usize,
) -> Result<(), actix_ws::Closed> {
    let frame = Bytes::from(vec![b'x'; bytes]);
    for _ in 0..frames {
        session.binary(frame.clone()).await?;
        state
            .live
            .flood_sent_bytes
            .fetch_add(bytes as u64, Ordering::SeqCst);
    }
    Ok(())
}

/// `/_demo/events`: see the module's comment.
async fn events(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if let Err(response) = introspect(&state, &req).await {
        return response;
    }
    let count = query_param(&req, "count").unwrap_or(10);
    let interval = Duration::from_millis(query_param(&req, "interval_ms").unwrap_or(200));
    let silence_after = query_param(&req, "silence_after");
    let open = OpenStream::new(&state);
    let stream = futures_util::stream::unfold((0u64, open), move |(n, open)| async move {
        if count != 0 && n >= count {
            return None;
        }
        if silence_after.is_some_and(|s| n >= s) {
            std::future::pending::<()>().await;
        }
        if n > 0 {
            tokio::time::sleep(interval).await;
        }
        let event = format!("id: {n}\ndata: {{\"n\":{n}}}\n\n");
        Some((Ok::<_, std::io::Error>(Bytes::from(event)), (n + 1, open)))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}

/// Counts a streamed response as open while it lives.
struct OpenStream(web::Data<State>);

impl OpenStream {
    fn new(state: &web::Data<State>) -> Self {
        state.live.open_streams.fetch_add(1, Ordering::SeqCst);
        OpenStream(state.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.live.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `/_demo/live`: see the module's comment.
async fn live_stats(state: web::Data<State>) -> HttpResponse {
    let live = &state.live;
    HttpResponse::Ok().json(json!({
        "open_sockets": live.open_sockets.load(Ordering::SeqCst),
        "flood_sent_bytes": live.flood_sent_bytes.load(Ordering::SeqCst),
        "open_streams": live.open_streams.load(Ordering::SeqCst),
        "close_codes": *live.close_codes.lock().expect("not poisoned"),
    }))
}

fn query_param(req: &HttpRequest, name: &str) -> Option<u64> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

async fn handle(req: HttpRequest, body: Bytes, state: web::Data<State>) -> HttpResponse {
    let path = req.path().to_owned();
    if let Some(code) = path.strip_prefix("/_demo/status/") {
        let status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return HttpResponse::build(status).json(json!({"status": status.as_u16()}));
    }
    let token = match introspect(&state, &req).await {
        Ok(token) => token,
        Err(response) => return response,
    };
    match path.as_str() {
        "/_demo/slow" => {
            let ms = query_param(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        "/_demo/redirect" => {
            return HttpResponse::Found()
                .insert_header(("location", "http://evil.example/"))
                .finish();
        }
        "/_demo/ndjson" => {
            let count = query_param(&req, "count").unwrap_or(0);
            let interval = Duration::from_millis(query_param(&req, "interval_ms").unwrap_or(100));
            let open = OpenStream::new(&state);
            let stream = futures_util::stream::unfold((0u64, open), move |(n, open)| async move {
                if count != 0 && n >= count {
                    return None;
                }
                if n > 0 {
                    tokio::time::sleep(interval).await;
                }
                let line = format!("{{\"n\":{n}}}\n");
                Some((Ok::<_, std::io::Error>(Bytes::from(line)), (n + 1, open)))
            });
            return HttpResponse::Ok()
                .content_type("application/x-ndjson")
                .streaming(stream);
        }
        "/_demo/stream" => {
            let chunks = query_param(&req, "chunks").unwrap_or(10);
            let size = query_param(&req, "size").unwrap_or(1024) as usize;
            let stream = futures_util::stream::iter(
                (0..chunks).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))),
            );
            return HttpResponse::Ok()
                .content_type("application/octet-stream")
                .streaming(stream);
        }
        _ => {}
    }
    let mut headers = Map::new();
    for (name, value) in req.headers() {
        // Echo that a token came, never the token itself.
        let value = if name == "authorization" {
            let scheme = value
                .to_str()
                .unwrap_or_default()
                .split(' ')
                .next()
                .unwrap_or("");
            format!("{scheme} <redacted>")
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let mut response = HttpResponse::Ok();
    if path == "/_demo/cookie" {
        response.insert_header(("set-cookie", "demo=1; Path=/"));
    }
    if path == "/_demo/origin-headers" {
        for (name, value) in [
            ("refresh", "0; url=http://evil.example/"),
            ("clear-site-data", "\"cookies\", \"storage\""),
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains",
            ),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("service-worker-allowed", "/"),
            ("nel", "{\"report_to\":\"x\",\"max_age\":86400}"),
            (
                "report-to",
                "{\"group\":\"x\",\"max_age\":86400,\"endpoints\":[]}",
            ),
            ("alt-svc", "h3=\":443\""),
            ("accept-ch", "Sec-CH-UA-Model"),
        ] {
            response.insert_header((name, value));
        }
        response.append_header(("www-authenticate", "Basic realm=\"demo\""));
        response.append_header((
            "www-authenticate",
            "Bearer realm=\"demo\", error=\"invalid_token\"",
        ));
    }
    response.insert_header(("x-demo", "echo"));
    response.json(json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.query_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "body_len": body.len(),
        "token": token,
    }))
}
