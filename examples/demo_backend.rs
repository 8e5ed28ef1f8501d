//! The sample backend behind the shipped gateway.yaml (started by ./demo.sh):
//! a small "BI API" on 127.0.0.1:9000 that shows what tollgate forwards.
//!
//! - GET  /v2/analytics/data, /v2/analytics/metadata, /v2/analytics/reports/{id}: sample JSON
//!   plus the identity tollgate verified (X-Auth-* headers)
//! - POST /cpi/oauth/token: a token endpoint that accepts only Authorization: Basic
//! - anything else: an echo of method, path and headers

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn json(status: u16, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{v:#}\n"))))
        .unwrap()
}

fn header(req: &Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn handle(req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let identity = serde_json::json!({
        "client_id": header(&req, "x-auth-client-id"),
        "subject": header(&req, "x-auth-subject"),
        "scopes": header(&req, "x-auth-scopes"),
        "request_id": header(&req, "x-request-id"),
    });
    match path.as_str() {
        "/v2/analytics/data" => json(
            200,
            serde_json::json!({
                "rows": [{"region": "EMEA", "revenue": 1250000}, {"region": "AMER", "revenue": 1730000}],
                "verified_by_tollgate": identity,
            }),
        ),
        "/v2/analytics/metadata" => json(
            200,
            serde_json::json!({
                "fields": ["region", "revenue"], "verified_by_tollgate": identity,
            }),
        ),
        p if p.starts_with("/v2/analytics/reports/") => json(
            200,
            serde_json::json!({
                "report": p.rsplit('/').next(), "verified_by_tollgate": identity,
            }),
        ),
        "/cpi/oauth/token" => {
            let auth = header(&req, "authorization");
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            match auth.as_deref().and_then(|a| a.strip_prefix("Basic ")) {
                Some(_) => json(
                    200,
                    serde_json::json!({
                        "access_token": "demo-cpi-token",
                        "token_type": "Bearer",
                        "expires_in": 3600,
                        "backend_saw": {
                            "authorization": "Basic (credentials moved out of the body by tollgate)",
                            "body": String::from_utf8_lossy(&body),
                        },
                    }),
                ),
                None => json(
                    401,
                    serde_json::json!({"error": "invalid_client", "error_description": "this endpoint only accepts HTTP Basic client authentication"}),
                ),
            }
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .filter(|(k, _)| k.as_str() != "authorization")
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                    )
                })
                .collect();
            json(
                200,
                serde_json::json!({"method": req.method().as_str(), "path": path, "headers": headers}),
            )
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::var("DEMO_BACKEND_LISTEN").unwrap_or_else(|_| "127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    eprintln!("demo backend listening on http://{addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req| async move { Ok::<_, Infallible>(handle(req).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
