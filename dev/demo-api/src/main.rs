use std::net::TcpListener;

use clap::Parser;
use demo_api::{DemoConfig, Introspection};
use url::Url;

/// courier's demo API: checks bearer tokens at its provider and echoes requests.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    /// The provider's introspection endpoint; without it, tokens are not checked.
    #[arg(long)]
    introspection_endpoint: Option<Url>,
    #[arg(long, default_value = "demo-api")]
    client_id: String,
    #[arg(long, env = "DEMO_API_CLIENT_SECRET", default_value = "")]
    client_secret: String,
    /// Refuse tokens not made for this audience (their introspected `aud`).
    #[arg(long)]
    audience: Option<String>,
    /// Accept only DPoP-bound tokens with a valid proof (RFC 9449).
    #[arg(long)]
    require_dpop: bool,
    /// The nonce every DPoP proof must carry.
    #[arg(long)]
    dpop_nonce: Option<String>,
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = DemoConfig {
        introspection: args.introspection_endpoint.map(|endpoint| Introspection {
            endpoint,
            client_id: args.client_id,
            client_secret: args.client_secret,
        }),
        audience: args.audience,
        require_dpop: args.require_dpop,
        dpop_nonce: args.dpop_nonce,
    };
    let listener = TcpListener::bind(&args.listen)?;
    eprintln!("demo-api listening on http://{}", args.listen);
    demo_api::run(listener, config)?.await
}
