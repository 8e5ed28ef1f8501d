//! tollgate's policy in front of an axum application, with no gateway process:
//! the routes, issuers, `auth` rules and `permissions` of a `gateway.yaml` decide every
//! request; handlers read the verified caller with the `Caller` extractor.
//!
//!     cargo run --example embed_axum --features axum -- gateway.yaml 127.0.0.1:8090
//!
//! With the shipped gateway.yaml and the demo (./demo.sh), a token from the demo token
//! service reaches `GET /v2/analytics/metadata`; without one the answer is SPEC's 401.

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use tollgate::layer::{Caller, PolicyLayer};

async fn whoami(Caller(id): Caller) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "client_id": id.client_id,
        "subject": id.subject,
        "scopes": id.scopes,
        "issuer": &*id.issuer,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config = args.next().unwrap_or_else(|| "gateway.yaml".into());
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()?;
    let policy = match PolicyLayer::from_file(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let app = Router::new()
        .route("/v2/analytics/metadata", get(whoami))
        .route("/v2/analytics/data", get(whoami).post(whoami))
        .layer(policy);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("embed_axum listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
