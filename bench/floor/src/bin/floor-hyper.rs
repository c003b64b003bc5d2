//! (h) The floor of hyper: a pass-through proxy on hyper's server and hyper-util's pooled
//! client, HTTP/1.1 keep-alive, bodies passed as streams, nothing else.
//!
//!     floor-hyper LISTEN UPSTREAM     e.g. floor-hyper 127.0.0.1:8082 http://127.0.0.1:9100

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HOST, HeaderName, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;

type Body = BoxBody<Bytes, hyper::Error>;

const HOP_BY_HOP: [HeaderName; 6] = [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, HOST];

struct Upstream {
    authority: hyper::http::uri::Authority,
    client: Client<HttpConnector, Incoming>,
}

async fn pass(mut req: Request<Incoming>, up: Arc<Upstream>) -> Result<Response<Body>, hyper::Error> {
    let path = req.uri().path_and_query().cloned();
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
    parts.authority = Some(up.authority.clone());
    parts.path_and_query = path;
    let Ok(uri) = Uri::from_parts(parts) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *req.uri_mut() = uri;
    for name in &HOP_BY_HOP {
        req.headers_mut().remove(name);
    }
    match up.client.request(req).await {
        Ok(mut answer) => {
            for name in &HOP_BY_HOP {
                answer.headers_mut().remove(name);
            }
            Ok(answer.map(BodyExt::boxed))
        }
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut reply = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed());
    *reply.status_mut() = code;
    reply
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        eprintln!("usage: floor-hyper LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let base: Uri = base.parse().map_err(std::io::Error::other)?;
    let authority = base.authority().cloned().ok_or_else(|| std::io::Error::other("UPSTREAM needs host:port"))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let upstream = Arc::new(Upstream { authority, client });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let up = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| pass(req, up.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
