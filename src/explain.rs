//! `tollgate explain`: the decision trace a request would get — route, CORS, issuer,
//! signature, claims, client, scopes granted vs required, permission, final status.
//!
//! It runs the server's own policy layers (`stack::policy`: routing, CORS, limits, the
//! token service, body credentials, the gate) on a request built from the command line,
//! with a [`Trace`] in its extensions, in front of a recorder instead of the upstream:
//! whatever the server would decide, explain shows, step by step. Issuer keys are
//! fetched like the server fetches them. Nothing is sent upstream.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, COOKIE, HOST, ORIGIN};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, ServiceExt};

use crate::auth::IssuerKind;
use crate::body::{empty, Body};
use crate::config::{self, ConfigError, Registry};
use crate::conn::{ClientCert, ConnInfo};
use crate::decision::{self, Trace};
use crate::error::{GatewayError, Rejection, RescueLayer};
use crate::gateway::Gateway;
use crate::route::layer::Routed;
use crate::service::Outcome;

/// What the policy decided for one request.
pub struct Explained {
    /// The decision trace: the request, every gate's note, the result.
    pub lines: Vec<String>,
    /// Forwarded upstream, or answered by tollgate itself with a 2xx.
    pub allowed: bool,
    /// The status tollgate would answer with (200 when the request would be forwarded;
    /// the upstream's own answer is not known).
    pub status: StatusCode,
    /// The response headers tollgate would add (CORS, `WWW-Authenticate`, `RateLimit`,
    /// ...), on a refusal as on an answer of its own or a forwarded request.
    pub headers: HeaderMap,
    /// The refusal behind a denial (its SPEC `error` code and reason code).
    pub refused: Option<Arc<GatewayError>>,
    /// The request passed every gate and would be forwarded upstream.
    pub forwarded: bool,
    /// The step that refused (see `GatewayError::gate`), and the reason code.
    pub gate: Option<&'static str>,
    pub reason: Option<&'static str>,
}

/// Fact: the request got through every gate and would be forwarded.
#[derive(Debug, Clone, Copy)]
struct Forwarded;

/// Stands where the upstream would: records that the request would be forwarded.
#[derive(Debug, Clone, Copy)]
struct Recorder;

impl<B> tower::Service<Request<B>> for Recorder {
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = std::future::Ready<Outcome>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = req
            .extensions()
            .get::<Routed>()
            .and_then(|r| r.route.clone());
        if let Some(route) = route.filter(|_| crate::upgrade::asks_to_upgrade(&req)) {
            // The WebSocket step stands between the policy and the upstream: decided here
            // as it would decide.
            match crate::upgrade::explain(&req, &route, false) {
                Ok(line) => decision::note(&req, || line),
                Err(e) => {
                    decision::note(&req, || format!("websocket: handshake refused: {e}"));
                    return std::future::ready(Err(e.into()));
                }
            }
        }
        decision::note(&req, || {
            match req
                .extensions()
                .get::<Routed>()
                .and_then(|r| r.route.as_ref())
                .and_then(|r| r.upstream.as_ref())
            {
                Some(u) => format!("upstream: would forward to {}", u.name),
                None => "upstream: none on this route (404)".into(),
            }
        });
        let mut resp = Response::new(empty());
        resp.extensions_mut().insert(Forwarded);
        std::future::ready(Ok(resp))
    }
}

/// One request to decide: what a client would send, as far as the policy looks at it.
#[derive(Clone, Copy, Default)]
pub struct Probe<'a> {
    /// The Bearer token (without `Bearer `).
    pub token: Option<&'a str>,
    /// A browser's `Cookie` header (a `login: true` route's session).
    pub cookie: Option<&'a str>,
    /// `GET` when absent.
    pub method: Option<&'a Method>,
    /// The request path (and query).
    pub url_path: &'a str,
    /// The `Host` header, for routes with `hosts`.
    pub host: Option<&'a str>,
    /// The `Origin` header: a browser's cross-origin call (CORS is decided too). With
    /// `OPTIONS` and `access_control_request_method`, a preflight.
    pub origin: Option<&'a str>,
    /// `Access-Control-Request-Method`, for a preflight (`OPTIONS` with an origin).
    pub access_control_request_method: Option<&'a str>,
    /// Any other request headers (`tollgate test` cases' `headers:`), added after the
    /// ones above.
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// A DPoP proof (the `DPoP` header): the token is then sent as
    /// `Authorization: DPoP`, as a DPoP client sends it.
    pub dpop: Option<&'a str>,
    /// A WebSocket handshake: `Upgrade: websocket` and `Connection: upgrade` are added
    /// (a `GET`, as a WebSocket client sends it), and the trace says whether the route
    /// accepts the upgrade.
    pub websocket: bool,
    /// The DER of a TLS client certificate, for certificate-bound tokens (RFC 8705).
    /// Without it, a certificate binding is reported as not checked: explain has no
    /// TLS connection.
    pub client_cert: Option<&'a [u8]>,
}

pub async fn explain(
    config_path: &std::path::Path,
    token: Option<&str>,
    method: &Method,
    url_path: &str,
    host: Option<&str>,
) -> Result<Explained, ConfigError> {
    explain_with_cookie(config_path, token, None, method, url_path, host).await
}

/// [`explain`] for a request that may also carry a `Cookie` header (a browser session:
/// `tollgate_session=...`). A session is opened and its access token checked like the
/// server does, but never refreshed (a refresh token may be usable only once).
pub async fn explain_with_cookie(
    config_path: &std::path::Path,
    token: Option<&str>,
    cookie: Option<&str>,
    method: &Method,
    url_path: &str,
    host: Option<&str>,
) -> Result<Explained, ConfigError> {
    let probe = Probe {
        token,
        cookie,
        method: Some(method),
        url_path,
        host,
        ..Probe::default()
    };
    explain_probe(config_path, &probe).await
}

/// Loads the config at `config_path` (writing nothing: a signing key that
/// `create_signing_key` would create stays in memory), fetches the issuers' keys like
/// the server does, and decides `probe` (see [`decide`]).
pub async fn explain_probe(
    config_path: &std::path::Path,
    probe: &Probe<'_>,
) -> Result<Explained, ConfigError> {
    let registry = Registry::default();
    let rt = config::load(config_path, &registry)?;
    let gw = Gateway::with_runtime(config_path.to_path_buf(), registry, rt);
    let rt = gw.current();
    let mut out = Vec::new();
    if let Some(note) = unwritten_key_note(&rt) {
        out.push(format!("note: {note}"));
    }
    // Keys are fetched like the server fetches them, before the request is decided.
    for i in &rt.issuers {
        if let IssuerKind::Jwt(store) = &i.kind {
            store.refresh().await;
            out.push(format!(
                "issuer {}: {} key(s) loaded",
                i.name,
                store.keys().all.len()
            ));
            let generated = gw
                .registry
                .generated_key
                .lock()
                .map(|g| g.is_some())
                .unwrap_or(false);
            if &*i.name == "local" && generated {
                out.push("note: token_service has no signing_key, so this run generated its own key; tokens from a running tollgate only verify here when signing_key is set".into());
            }
        }
    }
    let mut decided = decide(&gw, probe).await;
    let first = decided.lines.remove(0);
    out.insert(0, first);
    out.append(&mut decided.lines);
    decided.lines = out;
    Ok(decided)
}

/// A note when the token service's `signing_key` is a file `tollgate run` would create
/// (`create_signing_key`): this run signs and verifies with a key in memory instead.
pub fn unwritten_key_note(rt: &crate::runtime::Runtime) -> Option<String> {
    rt.create_key_file.as_ref().map(|_| {
        "token_service.signing_key does not exist yet (create_signing_key): this run uses a key in memory and writes nothing; `tollgate run` creates the file".into()
    })
}

/// Runs `probe` through the very layers the server runs ([`crate::stack::policy`]) in
/// front of a recorder instead of the upstream, on a gateway already loaded (the server's
/// own, for the admin API), and returns the decision trace. Nothing is forwarded and
/// nothing is counted (rate limits are looked at, not spent).
pub async fn decide(gw: &Arc<Gateway>, probe: &Probe<'_>) -> Explained {
    let method = probe.method.cloned().unwrap_or(Method::GET);
    let mut out = vec![format!(
        "request: {method} {}{}{}{}",
        probe.url_path,
        probe
            .host
            .map(|h| format!(" (Host {h})"))
            .unwrap_or_default(),
        probe
            .origin
            .map(|o| format!(" (Origin {o})"))
            .unwrap_or_default(),
        if probe.websocket {
            " (WebSocket upgrade)"
        } else {
            ""
        }
    )];
    let req = match build_request(probe, &method) {
        Ok(r) => r,
        Err(e) => {
            out.push(deny_line(&e));
            return Explained {
                lines: out,
                allowed: false,
                status: e.status(),
                headers: HeaderMap::new(),
                gate: Some(e.gate()),
                reason: e.deny_reason().map(|r| r.as_str()),
                refused: Some(Arc::new(e)),
                forwarded: false,
            };
        }
    };
    let trace = Trace::default();
    let mut req = req;
    req.extensions_mut().insert(trace.clone());
    // As the server's listener would: TLS when the config has `server.tls` (a DPoP
    // proof's htu then says https://), and the client certificate when one was given.
    let tls = gw.current().server.tls.is_some();
    let mut conn = ConnInfo::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), tls);
    conn.client_cert = match probe.client_cert {
        Some(der) => conn.clone().with_client_cert(Some(der)).client_cert,
        None => ClientCert::Offline,
    };
    req.extensions_mut().insert(Arc::new(conn));
    let svc = RescueLayer.layer(crate::stack::policy(gw, Recorder));
    let Ok(resp) = svc.oneshot(req).await;
    out.extend(trace.lines());
    let refused = resp.extensions().get::<Arc<GatewayError>>().cloned();
    let forwarded = resp.extensions().get::<Forwarded>().is_some();
    let allowed = match &refused {
        Some(e) => {
            out.push(deny_line(e));
            false
        }
        None if forwarded => {
            out.push("result: ALLOW".into());
            true
        }
        None => {
            if probe.origin.is_some() {
                for (name, value) in resp.headers() {
                    if name.as_str().starts_with("access-control-") {
                        out.push(format!(
                            "cors: {name}: {}",
                            value.to_str().unwrap_or("(not text)")
                        ));
                    }
                }
            }
            out.push(format!(
                "result: answered by tollgate itself with {}",
                resp.status().as_u16()
            ));
            resp.status().is_success()
        }
    };
    let (parts, _) = resp.into_parts();
    Explained {
        lines: out,
        allowed,
        status: parts.status,
        headers: parts.headers,
        gate: refused.as_ref().map(|e| e.gate()),
        reason: refused
            .as_ref()
            .and_then(|e| e.deny_reason())
            .map(|r| r.as_str()),
        refused,
        forwarded,
    }
}

fn build_request(
    probe: &Probe<'_>,
    method: &Method,
) -> Result<Request<http_body_util::Empty<bytes::Bytes>>, GatewayError> {
    let bad = |what: &str| GatewayError::BadRequest(format!("invalid {what}"));
    let mut b = Request::builder()
        .method(method.clone())
        .uri(probe.url_path);
    if let Some(h) = probe.host {
        b = b.header(HOST, HeaderValue::from_str(h).map_err(|_| bad("host"))?);
    }
    if let Some(o) = probe.origin {
        b = b.header(ORIGIN, HeaderValue::from_str(o).map_err(|_| bad("origin"))?);
    }
    if let Some(m) = probe.access_control_request_method {
        b = b.header(
            ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(m).map_err(|_| bad("access-control-request-method"))?,
        );
    }
    if let Some(t) = probe.token.map(str::trim).filter(|t| !t.is_empty()) {
        let scheme = if probe.dpop.is_some() {
            "DPoP"
        } else {
            "Bearer"
        };
        let mut v = HeaderValue::from_str(&format!("{scheme} {t}")).map_err(|_| bad("token"))?;
        v.set_sensitive(true);
        b = b.header(AUTHORIZATION, v);
    }
    if let Some(c) = probe.cookie.map(str::trim).filter(|c| !c.is_empty()) {
        let mut v = HeaderValue::from_str(c).map_err(|_| bad("cookie"))?;
        v.set_sensitive(true);
        b = b.header(COOKIE, v);
    }
    if let Some(p) = probe.dpop.map(str::trim) {
        let mut v = HeaderValue::from_str(p).map_err(|_| bad("DPoP proof"))?;
        v.set_sensitive(true);
        b = b.header("dpop", v);
    }
    if probe.websocket {
        b = b
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::SEC_WEBSOCKET_VERSION, "13")
            .header(http::header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
    }
    for (name, value) in probe.headers {
        b = b.header(name, value);
    }
    b.body(http_body_util::Empty::new())
        .map_err(|_| bad("request path"))
}

fn deny_line(e: &GatewayError) -> String {
    e.explain_line()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gateway, CONFIG};

    // Behaviour: explain predicts the 431 the server would answer to a head over
    // max_header_bytes (2048 here), and forwards one within it.
    #[tokio::test]
    async fn explain_predicts_the_head_size_refusal() {
        let (gw, _dir) = gateway(CONFIG);
        let big = [(
            HeaderName::from_static("x-big"),
            HeaderValue::from_str(&"a".repeat(3000)).unwrap(),
        )];
        let probe = |headers| Probe {
            url_path: "/open/x",
            headers,
            ..Probe::default()
        };
        let refused = decide(&gw, &probe(&big)).await;
        assert_eq!(refused.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(!refused.allowed);
        let small = decide(&gw, &probe(&[])).await;
        assert!(small.allowed, "{:?}", small.lines);
    }
}
