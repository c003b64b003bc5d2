//! A dependent service for courier's tests, benchmarks and dev stack. Every request's bearer
//! token is checked at the provider's introspection endpoint (when one is configured), and the
//! answer echoes what arrived: method, path, query, headers, body and the token's owner. With
//! `audience` set, a token must be made for it (its introspected `aud` names it): a token made
//! for another service is refused.
//!
//! Paths under `/_demo/` misbehave on purpose: `status/{code}`, `slow?ms=`, `cookie`,
//! `redirect`, `stream?chunks=&size=`.

use std::net::TcpListener;
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
}

struct State {
    config: DemoConfig,
    http: reqwest::Client,
}

pub fn run(listener: TcpListener, config: DemoConfig) -> std::io::Result<Server> {
    let state = web::Data::new(State {
        config,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client builds"),
    });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
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
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("no bearer token"))?;
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
