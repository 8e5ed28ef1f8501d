//! The admin listener (`server.admin_listen`): health, readiness, metrics, status,
//! the running config with secrets redacted, reload and cache flush, recent decisions
//! by request id, and the admin page (`admin_ui`). None of these paths exist on the
//! public listener. `server.admin_auth` guards everything but the
//! probes with the same gate as a route.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use crate::admin_auth::AdminAuth;
use crate::admin_ui;
use crate::auth;
use crate::body::{full, Body};
use crate::conn::ConnInfo;
use crate::error::GatewayError;
use crate::gate::Gate;
use crate::gateway::Gateway;
use crate::metrics::Format;
use crate::request_id::{self, SaneRequestId, X_REQUEST_ID};

/// The admin listener's service: request ids, then [`handle`].
pub fn service(
    gw: Arc<Gateway>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    ServiceBuilder::new()
        .map_request(request_id::drop_insane::<Incoming> as fn(_) -> _)
        .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), SaneRequestId))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .service(tower::service_fn(move |req| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(handle(gw, req).await) }
        }))
}

/// Each issuer's outbound route (`direct`, `environment` or the proxy, credentials
/// redacted) and how its last key fetch went.
fn issuers_status(rt: &crate::runtime::Runtime) -> Vec<serde_json::Value> {
    rt.issuers
        .iter()
        .map(|i| {
            let (proxy, last) = match &i.kind {
                auth::IssuerKind::Jwt(s) => (
                    s.http().map(|(c, _)| c.outbound().to_string()),
                    s.last_fetch().map(|f| match f.result {
                        Ok(keys) => serde_json::json!({"ok": true, "keys": keys}),
                        Err(e) => serde_json::json!({"ok": false, "error": e}),
                    }),
                ),
                auth::IssuerKind::Introspection(x) => (Some(x.client.outbound().to_string()), None),
            };
            serde_json::json!({"name": &*i.name, "proxy": proxy, "last_key_fetch": last})
        })
        .collect()
}

/// Issuers whose last key fetch failed, and why.
fn issuer_errors(rt: &crate::runtime::Runtime) -> Vec<serde_json::Value> {
    rt.issuers
        .iter()
        .filter_map(|i| match &i.kind {
            auth::IssuerKind::Jwt(s) => match s.last_fetch()?.result {
                Err(e) => Some(serde_json::json!({"issuer": &*i.name, "error": e})),
                Ok(_) => None,
            },
            auth::IssuerKind::Introspection(_) => None,
        })
        .collect()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `server.admin_auth`: the same gate as a route (issuers, scopes, clients), or Basic
/// credentials against an argon2 hash.
async fn authorize(
    gw: &Gateway,
    auth: &AdminAuth,
    req: &Request<Incoming>,
) -> Result<(), GatewayError> {
    let rule = match auth {
        AdminAuth::Bearer(rule) => rule,
        AdminAuth::Basic(b) => {
            let ip = req
                .extensions()
                .get::<Arc<ConnInfo>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.remote.ip());
            return b.authorize(req.headers(), ip, &gw.metrics).await;
        }
    };
    let rt = gw.current();
    let gate = Gate {
        issuers: &rt.issuers,
        rule,
        permissions: None,
        caches: &gw.auth_caches,
    };
    gate.check(auth::bearer(req.headers()), req.method(), req.uri().path())
        .await
        .result
}

/// The methods an admin endpoint takes (its 405's `Allow`).
fn allowed_methods(path: &str) -> &'static str {
    match path {
        "/healthz" | "/readyz" => "GET, HEAD",
        "/admin/reload" | "/admin/caches/flush" | "/admin/explain" => "POST",
        _ => "GET",
    }
}

pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let rid = req.headers().get(&X_REQUEST_ID).cloned();
    let error =
        |e: GatewayError| e.to_response(rid.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""));
    if !matches!(path, "/healthz" | "/readyz") {
        if let Some(rule) = gw.current().server.admin_auth.clone() {
            if let Err(e) = authorize(&gw, &rule, &req).await {
                tracing::warn!(target: "tollgate::admin", path, reason = e.deny_reason().map(|r| r.as_str()).unwrap_or("-"), "admin request denied: {e}");
                return error(e);
            }
        }
    }
    // A browser on another site must not drive the admin API with the admin's
    // credentials (a cached Basic login): browsers say where a request comes from.
    if req.method() == Method::POST
        && req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v != "same-origin" && v != "none")
    {
        return error(GatewayError::AccessDenied {
            reason: crate::error::DenyReason::EndpointNotAllowed,
            description: "cross-site requests to the admin API are refused".into(),
        });
    }
    let rid_str = rid
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if req.method() == Method::GET {
        if path == "/admin/ui" || path == "/admin/ui/" {
            return admin_ui::page(&gw);
        }
        if let Some(r) = admin_ui::asset(path) {
            return r;
        }
        if path == "/admin/events" {
            let last = req
                .headers()
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            return admin_ui::events(&gw, last, &rid_str);
        }
        if path == "/admin/decisions" {
            return admin_ui::decisions(&gw, req.uri().query());
        }
        if let Some(id) = path.strip_prefix("/admin/decisions/") {
            return admin_ui::decision(&gw, id, &rid_str);
        }
    }
    if path == "/admin/explain" && req.method() == Method::POST {
        return admin_ui::explain(&gw, req).await;
    }
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            json(StatusCode::OK, serde_json::json!({"status": "ok"}))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            let (status, mut body) = if gw.ready() {
                (StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not ready"}),
                )
            };
            // Why an issuer's keys could not be fetched (e.g. the outbound proxy
            // refused the tunnel), only when one could not. /readyz needs no
            // credentials: with `admin_auth` set it names the issuers only (the reasons
            // are in /admin/status).
            let rt = gw.current();
            let mut failing = issuer_errors(&rt);
            if rt.server.admin_auth.is_some() {
                for f in &mut failing {
                    if let Some(o) = f.as_object_mut() {
                        o.remove("error");
                    }
                }
            }
            if !failing.is_empty() {
                body["issuer_errors"] = serde_json::Value::Array(failing);
            }
            // `dns: per_address` upstreams without addresses, or whose name cannot be
            // resolved (the last known addresses serve): not a reason to be unready.
            let mut dns = crate::gateway::dns_problems(&rt);
            if rt.server.admin_auth.is_some() {
                for f in &mut dns {
                    if let Some(o) = f.as_object_mut() {
                        o.remove("error");
                    }
                }
            }
            if !dns.is_empty() {
                body["upstream_dns"] = serde_json::Value::Array(dns);
            }
            json(status, body)
        }
        (&Method::GET, "/metrics") => {
            // Prometheus text 0.0.4 unless the scraper asks for OpenMetrics.
            let format = Format::negotiate(
                req.headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            let text = gw.metrics.render(gw.scrape_extras(), format);
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
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
                    // Each upstream's outbound proxy, endpoints and their health.
                    "upstreams": crate::gateway::upstream_status(&rt),
                    "last_reload": {
                        "at": s.last_reload_at,
                        "trigger": s.last_reload_trigger,
                        "success": s.last_reload_ok,
                        "errors": s.last_reload_errors,
                        // Milliseconds per phase (read, parse, compile, swap, total).
                        "timings": s.last_reload_timings,
                    },
                    "issuers": issuers_status(&rt),
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
            | "/admin/caches/flush"
            | "/admin/ui"
            | "/admin/events"
            | "/admin/decisions"
            | "/admin/explain",
        ) => error(GatewayError::MethodNotAllowed {
            description: format!("{} is not allowed on {path}", req.method()),
            allow: allowed_methods(path),
        }),
        _ => error(GatewayError::NoAdminEndpoint),
    }
}
