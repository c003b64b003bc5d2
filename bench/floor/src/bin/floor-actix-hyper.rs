//! (g′) actix-web with hyper-util's client instead of reqwest: one client per actix worker,
//! its connection tasks spawned on that worker (spawn_local), so that a request and its
//! upstream connection never wake each other across threads. What courier's proxy path would
//! cost on actix-web without reqwest (docs/benchmarks.md).
//!
//!     floor-actix-hyper LISTEN UPSTREAM

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::TryStreamExt;
use http_body_util::{BodyDataStream, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::future::Future;

#[derive(Clone, Copy)]
struct LocalExecutor;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExecutor {
    fn execute(&self, future: F) {
        actix_web::rt::spawn(async move {
            future.await;
        });
    }
}

struct Upstream {
    authority: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

const HOP_BY_HOP: [&str; 8] = [
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
];

async fn pass(req: HttpRequest, body: web::Bytes, up: web::Data<Upstream>) -> HttpResponse {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(method) = hyper::Method::from_bytes(req.method().as_str().as_bytes()) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut out = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", up.authority));
    for (name, value) in req.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return HttpResponse::BadRequest().finish();
    };
    match up.client.request(out).await {
        Ok(answer) => {
            let status = actix_web::http::StatusCode::from_u16(answer.status().as_u16())
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
            let mut reply = HttpResponse::build(status);
            for (name, value) in answer.headers() {
                if !HOP_BY_HOP.contains(&name.as_str()) {
                    reply.append_header((name.as_str(), value.as_bytes()));
                }
            }
            let stream = BodyDataStream::new(answer.into_body()).map_err(std::io::Error::other);
            reply.streaming(stream)
        }
        Err(_) => HttpResponse::BadGateway().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        eprintln!("usage: floor-actix-hyper LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let authority = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    HttpServer::new(move || {
        // Built once per worker: its pool and connection tasks stay on this worker's thread.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(LocalExecutor).build(connector);
        App::new()
            .app_data(web::Data::new(Upstream { authority: authority.clone(), client }))
            .default_service(web::to(pass))
    })
    .bind(listen)?
    .run()
    .await
}
