//! The admin listener (`server.admin_listen`): health, readiness, metrics, status,
//! the running config with secrets redacted, reload and cache flush. None of these
//! paths exist on the public listener.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::auth;
use crate::body::{full, Body};
use crate::error::{DenyReason, GatewayError};
use crate::gateway::Gateway;
use crate::policy::{self, AuthRule};

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `server.admin_auth`: the same Bearer gates as a route (issuers, scopes, clients).
async fn authorize(
    gw: &Gateway,
    rule: &AuthRule,
    req: &Request<Incoming>,
) -> Result<(), GatewayError> {
    let Some(token) = auth::bearer(req.headers()) else {
        return Err(GatewayError::Unauthorized {
            reason: DenyReason::TokenMissing,
            description: "the admin API needs a Bearer token".into(),
        });
    };
    let rt = gw.current();
    let issuers: Vec<&Arc<auth::Issuer>> = rule
        .issuers
        .iter()
        .filter_map(|i| rt.issuers.get(*i))
        .collect();
    let id = auth::authenticate(
        &issuers,
        &gw.auth_caches,
        token,
        &mut auth::Trace::default(),
    )
    .await?;
    policy::authorize(rule, None, req.method(), req.uri().path(), &id).result
}

pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if !matches!(path, "/healthz" | "/readyz") {
        if let Some(rule) = gw.current().server.admin_auth.clone() {
            if let Err(e) = authorize(&gw, &rule, &req).await {
                let rid = crate::stack::request_id(&req);
                tracing::warn!(target: "tollgate::admin", path, reason = e.deny_reason().map(|r| r.as_str()).unwrap_or("-"), "admin request denied: {e}");
                return e.to_response(rid.to_str().unwrap_or(""));
            }
        }
    }
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            json(StatusCode::OK, serde_json::json!({"status": "ok"}))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if gw.ready() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not ready"}),
                )
            }
        }
        (&Method::GET, "/metrics") => {
            let text = gw.metrics.render(&gw.scrape_extras());
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/admin/status") => {
            let s = gw.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let rt = gw.current();
            json(
                StatusCode::OK,
                serde_json::json!({
                    "config_version": s.version,
                    "config_hash": s.config_hash,
                    "config_path": gw.config_path.display().to_string(),
                    "loaded_at": s.loaded_at,
                    "ready": gw.ready(),
                    "routes": rt.routes.len(),
                    "last_reload": {
                        "at": s.last_reload_at,
                        "trigger": s.last_reload_trigger,
                        "success": s.last_reload_ok,
                        "errors": s.last_reload_errors,
                        // Milliseconds per phase (read, parse, compile, swap, total).
                        "timings": s.last_reload_timings,
                    },
                }),
            )
        }
        (&Method::GET, "/admin/config") => {
            let rt = gw.current();
            json(
                StatusCode::OK,
                serde_json::json!({"version": rt.version, "config": rt.redacted.json()}),
            )
        }
        (&Method::POST, "/admin/reload") => match gw.reload("admin").await {
            Ok(version) => json(
                StatusCode::OK,
                serde_json::json!({"result": "success", "config_version": version}),
            ),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "result": "failure",
                    "config_version": gw.current().version,
                    "errors": e.lines(),
                }),
            ),
        },
        (&Method::POST, "/admin/caches/flush") => json(StatusCode::OK, gw.flush_caches()),
        (
            _,
            "/healthz"
            | "/readyz"
            | "/metrics"
            | "/admin/status"
            | "/admin/config"
            | "/admin/reload"
            | "/admin/caches/flush",
        ) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed", "error_description": format!("{} is not allowed on {path}", req.method())}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "error_description": "no such admin endpoint"}),
        ),
    }
}
