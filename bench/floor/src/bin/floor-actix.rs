//! (g) The floor of actix-web + reqwest: a pass-through proxy as those crates come, with
//! courier's runtime shape (actix-web's workers, one reqwest client) and nothing else.
//!
//!     floor-actix LISTEN UPSTREAM [--per-worker]
//!
//! With `--per-worker`, each actix worker builds its own client, so its pooled connections'
//! tasks run on that worker's thread.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

struct Upstream {
    base: String,
    client: reqwest::Client,
}

const HOP_BY_HOP: [&str; 8] = [
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
];

/// The body is read whole, as courier reads a small one (the rows send none): actix-web's
/// payload is tied to its worker thread, reqwest's body must be `Send`.
async fn pass(req: HttpRequest, body: web::Bytes, up: web::Data<Upstream>) -> HttpResponse {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    // actix-web speaks the `http` crate's 0.2 types, reqwest its 1.x ones: names and values
    // cross as bytes.
    let Ok(method) = reqwest::Method::from_bytes(req.method().as_str().as_bytes()) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut out = up.client.request(method, format!("{}{path}", up.base));
    for (name, value) in req.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    if !body.is_empty() {
        out = out.body(body);
    }
    match out.send().await {
        Ok(answer) => {
            let status = actix_web::http::StatusCode::from_u16(answer.status().as_u16())
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
            let mut reply = HttpResponse::build(status);
            for (name, value) in answer.headers() {
                if !HOP_BY_HOP.contains(&name.as_str()) {
                    reply.append_header((name.as_str(), value.as_bytes()));
                }
            }
            reply.streaming(answer.bytes_stream())
        }
        Err(_) => HttpResponse::BadGateway().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        eprintln!("usage: floor-actix LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let per_worker = args.next().as_deref() == Some("--per-worker");
    let build = || reqwest::Client::builder().no_proxy().build().map_err(std::io::Error::other);
    let base = base.trim_end_matches('/').to_owned();
    let shared = web::Data::new(Upstream { base: base.clone(), client: build()? });
    HttpServer::new(move || {
        let upstream = match per_worker.then(build) {
            Some(Ok(client)) => web::Data::new(Upstream { base: base.clone(), client }),
            _ => shared.clone(),
        };
        App::new().app_data(upstream).default_service(web::to(pass))
    })
        .bind(listen)?
        .run()
        .await
}
