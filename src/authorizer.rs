//! The decision service (`server.decision_listen`): tollgate as the external authoriser
//! of an ingress a team already runs. The ingress asks before it forwards; tollgate
//! decides with the very layers it proxies with ([`crate::stack::policy`]: routes,
//! issuers, auth, claims, permissions, CORS, rate limits) and answers 200 with the
//! identity headers to add upstream, or exactly SPEC's error for the client.
//!
//! Where it sits: it is a request path of its own, beside the public one. The
//! decision request is first turned back into the client's request, by the
//! convention of the endpoint it was sent to:
//!
//! | endpoint              | ingress                       | the client's request            |
//! |-----------------------|-------------------------------|---------------------------------|
//! | `/ext-authz/{path}`   | Envoy `ext_authz` (HTTP), `path_prefix: /ext-authz` | the request itself, prefix removed |
//! | `/forward-auth`       | Traefik `forwardAuth`         | `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto`, `-For` |
//! | `/auth-request`       | nginx `auth_request`          | `X-Original-Method`, `X-Original-URI` (`X-Original-Host` or `Host`) |
//!
//! Those headers are trusted here, and only here: the listener is reachable by the
//! ingress alone (never the public listener, never the admin one). The endpoint fixes
//! the convention, so a client header that slips through an ingress (an
//! `X-Forwarded-Uri` Envoy was told to pass on) cannot change what is decided. A
//! convention header that is missing or malformed is a 400: the method decides
//! permissions, and guessing it would let a `POST` be checked as a `GET`. The client
//! address is the last `X-Forwarded-For` entry (the one the ingress added), else the
//! ingress's own; `X-Forwarded-Proto: https` counts as TLS.
//!
//! Then the request goes through request ids, trace context, the metrics, the denial
//! and access logs and the decisions ring (`observe`), the rescue layer and
//! `stack::policy`, in front of [`Allow`] instead of the upstream. The answer:
//! - allowed: 200, empty body, with `X-Auth-Client-Id`, `X-Auth-Subject`,
//!   `X-Auth-Scopes` (the headers the proxy sends upstream), `X-Request-Id`, the route's
//!   CORS and RateLimit headers; never the inbound token, and the route's upstream
//!   credentials (as `Authorization`) only when `decision.upstream_credentials` says
//!   so. For Envoy, the identity
//!   headers tollgate does not set are named in `x-envoy-auth-headers-to-remove`, so
//!   that a client cannot smuggle its own `X-Auth-Subject` past a token without `sub`.
//! - refused: SPEC's error (status, JSON body, `WWW-Authenticate`, CORS headers,
//!   `Retry-After`), which Envoy and Traefik pass to the client as it is. nginx keeps
//!   only the status of an `auth_request` (and only 401 and 403), so on `/auth-request`
//!   the JSON body also travels in `X-Tollgate-Error-Body`, for the nginx config to
//!   answer with (README "Keep your ingress").
//! - a CORS preflight: tollgate's own preflight answer (204 with the
//!   `Access-Control-*` headers); one the route's CORS does not grant (a foreign origin,
//!   method or header) is refused 403 `origin_not_allowed`, since any 2xx would have
//!   the ingress forward the `OPTIONS` upstream. A granted one is a 2xx, so
//!   the ingress lets it pass: the ingress answers it without the upstream (Envoy: a
//!   `direct_response` route for preflights, with the `Access-Control-*` headers in
//!   `allowed_client_headers_on_success`), as README shows.
//! - what tollgate answers itself with a 2xx on its own listener (the token service, its
//!   JWKS and metadata) cannot be carried by an authoriser's "allow": 400, naming
//!   tollgate's own listener. A sign-in redirect (302) is passed on like an error.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, COOKIE, HOST, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Empty;
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::body::{empty, Body};
use crate::conn::ConnInfo;
use crate::cors::Cors;
use crate::credentials::upstream_layer::{UpstreamAuthLayer, UpstreamCredentials};
use crate::decision;
use crate::error::{DenyReason, GatewayError, Rejection, RescueLayer};
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::observe::ObserveLayer;
use crate::otel::layer::TraceLayer;
use crate::request_id::{self, SaneRequestId, X_REQUEST_ID};
use crate::route::layer::routed;
use crate::service::{OnOutcome, Outcome, Step, Then};

/// Envoy `ext_authz`: the check request is `{path_prefix}{the client's path}`.
pub const EXT_AUTHZ_PREFIX: &str = "/ext-authz";
/// Traefik `forwardAuth`'s `address` path.
pub const FORWARD_AUTH_PATH: &str = "/forward-auth";
/// nginx `auth_request`'s location proxies here.
pub const AUTH_REQUEST_PATH: &str = "/auth-request";

/// Where a refused `/auth-request` answer's JSON body is repeated for nginx.
pub static X_TOLLGATE_ERROR_BODY: HeaderName = HeaderName::from_static("x-tollgate-error-body");
/// Envoy's HTTP `ext_authz`: headers to remove from the request before it goes upstream.
pub static X_ENVOY_AUTH_HEADERS_TO_REMOVE: HeaderName =
    HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// The identity headers an allowed request gets (SPEC's names, as the proxy sends them).
const IDENTITY_HEADERS: [&str; 3] = ["x-auth-client-id", "x-auth-subject", "x-auth-scopes"];

/// Which ingress convention a decision request follows (fixed by its endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    ExtAuthz,
    ForwardAuth,
    AuthRequest,
}

impl Convention {
    pub fn as_str(self) -> &'static str {
        match self {
            Convention::ExtAuthz => "ext_authz",
            Convention::ForwardAuth => "forwardAuth",
            Convention::AuthRequest => "auth_request",
        }
    }
}

/// Fact on the rebuilt request: how it was asked, and what was wrong with the asking.
#[derive(Debug, Clone)]
pub struct Asked {
    pub convention: Option<Convention>,
    /// The decision request could not be turned into the client's request (400).
    pub problem: Option<Arc<str>>,
}

/// The decision listener's service: the client's request rebuilt from the ingress's
/// convention, then request ids, trace context, observation, rescue and the policy.
pub fn service<B>(
    gw: &Arc<Gateway>,
) -> impl Service<
    Request<B>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static
where
    B: Send + 'static,
{
    ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            COOKIE,
            PROXY_AUTHORIZATION,
        ]))
        // The client's request, as the ingress describes it (its body is not sent).
        .map_request(original::<B> as fn(Request<B>) -> Request<Empty<Bytes>>)
        .map_request(
            request_id::drop_insane::<Empty<Bytes>>
                as fn(Request<Empty<Bytes>>) -> Request<Empty<Bytes>>,
        )
        .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), SaneRequestId))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(TraceLayer::new(gw.clone()))
        // Metrics, the denial and access logs, the decisions ring: like any request.
        .layer(ObserveLayer::new(gw.clone()))
        .layer(tower::layer::layer_fn(|inner| ForNginx { inner }))
        .layer(RescueLayer)
        .layer(tower::layer::layer_fn(|inner| Answer { inner }))
        .service(crate::stack::policy(
            gw,
            Inner {
                with_credentials: UpstreamAuthLayer::new(gw.clone()).layer(Allow),
            },
        ))
}

/// Where the upstream would be: [`Allow`], behind the upstream-credentials step when
/// `decision.upstream_credentials` asks for the route's credentials in the answer.
#[derive(Clone)]
pub struct Inner {
    with_credentials: UpstreamCredentials<Allow>,
}

/// `decision.upstream_credentials` is on and the request's route has an upstream with
/// `auth:` (so the credentials step replaces `Authorization` before [`Allow`]).
fn returns_credentials<B>(req: &Request<B>) -> bool {
    routed(req).is_some_and(|r| {
        r.snapshot.decision.upstream_credentials
            && r.route
                .as_ref()
                .and_then(|r| r.upstream.as_ref())
                .is_some_and(|u| u.auth.is_some())
    })
}

impl<B: Send + 'static> Service<Request<B>> for Inner {
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = InnerFuture<<UpstreamCredentials<Allow> as Service<Request<B>>>::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if returns_credentials(&req) {
            InnerFuture::Credentials {
                fut: self.with_credentials.call(req),
            }
        } else {
            InnerFuture::Plain {
                fut: Allow.call(req),
            }
        }
    }
}

pin_project! {
    #[project = InnerProj]
    pub enum InnerFuture<F> {
        Credentials { #[pin] fut: F },
        Plain { #[pin] fut: std::future::Ready<Outcome> },
    }
}

impl<F: Future<Output = Outcome>> Future for InnerFuture<F> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self.project() {
            InnerProj::Credentials { fut } => fut.poll(cx),
            InnerProj::Plain { fut } => fut.poll(cx),
        }
    }
}

/// The client's request, rebuilt from the decision request by its endpoint's
/// convention. A problem is recorded in [`Asked`] (and refused by [`Answer`]), so that
/// it is observed, logged and answered like any refusal.
pub fn original<B>(req: Request<B>) -> Request<Empty<Bytes>> {
    let (parts, _body) = req.into_parts();
    let peer = parts.extensions.get::<Arc<ConnInfo>>().cloned();
    let path = parts.uri.path();
    let convention = if path == EXT_AUTHZ_PREFIX || path.starts_with("/ext-authz/") {
        Some(Convention::ExtAuthz)
    } else if path == FORWARD_AUTH_PATH {
        Some(Convention::ForwardAuth)
    } else if path == AUTH_REQUEST_PATH {
        Some(Convention::AuthRequest)
    } else {
        None
    };
    let rebuilt = match convention {
        Some(c) => rebuild(c, &parts),
        None => Err(format!(
            "the decision listener answers {EXT_AUTHZ_PREFIX}/... (Envoy ext_authz), {FORWARD_AUTH_PATH} (Traefik forwardAuth) and {AUTH_REQUEST_PATH} (nginx auth_request), not {path}"
        )),
    };
    let (method, uri, headers, client, tls, problem) = match rebuilt {
        Ok(r) => (r.method, r.uri, r.headers, r.client, r.tls, None),
        Err(problem) => (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
            None,
            false,
            Some(Arc::from(problem)),
        ),
    };
    let remote = match (client, &peer) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, Some(c)) => c.remote,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut out = Request::new(Empty::new());
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    out.extensions_mut()
        .insert(Arc::new(ConnInfo::new(remote, tls)));
    out.extensions_mut().insert(Asked {
        convention,
        problem,
    });
    out
}

/// The client's request as the ingress describes it.
struct Rebuilt {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    client: Option<IpAddr>,
    tls: bool,
}

fn rebuild(c: Convention, parts: &http::request::Parts) -> Result<Rebuilt, String> {
    let h = &parts.headers;
    let text = |name: &str| -> Result<Option<&str>, String> {
        match h.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.trim()))
                .map_err(|_| format!("{name} is not text")),
        }
    };
    let required = |name: &str, hint: &str| -> Result<&str, String> {
        text(name)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{} sent no {name} header ({hint})", c.as_str()))
    };
    let (method, target, host) = match c {
        Convention::ExtAuthz => {
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let rest = &pq[EXT_AUTHZ_PREFIX.len()..];
            let target = if rest.is_empty() || rest.starts_with('?') {
                format!("/{rest}")
            } else {
                rest.to_owned()
            };
            (
                parts.method.clone(),
                target,
                text("host")?.map(str::to_owned),
            )
        }
        Convention::ForwardAuth => (
            method(required(
                "x-forwarded-method",
                "Traefik's forwardAuth always sends it",
            )?)?,
            required("x-forwarded-uri", "Traefik's forwardAuth always sends it")?.to_owned(),
            text("x-forwarded-host")?.map(str::to_owned),
        ),
        Convention::AuthRequest => (
            method(required(
                "x-original-method",
                "proxy_set_header X-Original-Method $request_method;",
            )?)?,
            required(
                "x-original-uri",
                "proxy_set_header X-Original-URI $request_uri;",
            )?
            .to_owned(),
            text("x-original-host")?
                .or(text("host")?)
                .map(str::to_owned),
        ),
    };
    if !target.starts_with('/') {
        return Err(format!(
            "the request target must be a path starting with /, got {target:?}"
        ));
    }
    let uri: Uri = target
        .parse()
        .map_err(|_| format!("the request target {target:?} is not a valid path"))?;
    let client = text("x-forwarded-for")?
        .and_then(|xff| xff.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok());
    let tls = text("x-forwarded-proto")?.is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let mut headers = h.clone();
    // What described the request is not part of it.
    for name in [
        "x-forwarded-method",
        "x-forwarded-uri",
        "x-forwarded-host",
        "x-original-method",
        "x-original-uri",
        "x-original-host",
        "content-length",
        "transfer-encoding",
    ] {
        headers.remove(name);
    }
    headers.remove(HOST);
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        let v = HeaderValue::from_str(&host).map_err(|_| format!("invalid host {host:?}"))?;
        headers.insert(HOST, v);
    }
    Ok(Rebuilt {
        method,
        uri,
        headers,
        client,
        tls,
    })
}

fn method(m: &str) -> Result<Method, String> {
    Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method {m:?}"))
}

/// Fact on an allow answer: the request passed every gate.
#[derive(Debug, Clone, Copy)]
pub struct Allowed;

/// Stands where the upstream would: the request passed every gate, so the answer is
/// 200 with the verified identity's headers for the ingress to add upstream.
#[derive(Debug, Clone, Copy)]
pub struct Allow;

impl<B> Service<Request<B>> for Allow {
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = std::future::Ready<Outcome>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        decision::note(&req, || {
            "decision service: allow (200 with the identity headers)".into()
        });
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        if let Some(id) = req.extensions().get::<Arc<Identity>>() {
            for (name, value) in id.forward_headers() {
                h.insert(name.clone(), value.clone());
            }
        }
        let envoy = req
            .extensions()
            .get::<Asked>()
            .is_some_and(|a| a.convention == Some(Convention::ExtAuthz));
        if envoy {
            // The identity headers tollgate does not set, the client's own spelt with
            // `_` (`X_Auth_Subject`: the same CGI variable to many backends), and the
            // client's headers that frameworks read instead of what was checked.
            let unset: Vec<&str> = IDENTITY_HEADERS
                .into_iter()
                .filter(|n| !h.contains_key(*n))
                .chain(
                    req.headers()
                        .keys()
                        .filter(|n| crate::identity::is_identity_header(n))
                        .map(HeaderName::as_str)
                        .filter(|n| n.contains('_')),
                )
                // And the client's headers that would override what was checked.
                .chain(
                    crate::proxy::OVERRIDING_HEADERS
                        .into_iter()
                        .filter(|n| req.headers().contains_key(*n)),
                )
                .collect();
            if !unset.is_empty() {
                h.insert(
                    &X_ENVOY_AUTH_HEADERS_TO_REMOVE,
                    HeaderValue::from_str(&unset.join(","))
                        .expect("header names are a valid header value"),
                );
            }
        }
        if returns_credentials(&req) {
            // Set by the upstream-credentials step just before (the client's own token
            // was replaced): what the operator asked the ingress to send upstream.
            if let Some(v) = req.headers().get(AUTHORIZATION) {
                decision::note(&req, || {
                    "decision service: the upstream's credentials returned as Authorization".into()
                });
                resp.headers_mut().insert(AUTHORIZATION, v.clone());
            }
        }
        resp.extensions_mut().insert(Allowed);
        std::future::ready(Ok(resp))
    }
}

/// Below the rescue layer: refuses a request the ingress described badly, and keeps
/// an authoriser's "allow" for requests that really passed every gate.
#[derive(Clone)]
pub struct Answer<S> {
    inner: S,
}

/// On the way out: what tollgate answered itself becomes a decision.
pub struct Decide {
    preflight: bool,
    path: String,
}

impl OnOutcome for Decide {
    fn on_outcome(self, out: Outcome) -> Outcome {
        match out {
            Ok(resp)
                if self.preflight
                    && resp.status().is_success()
                    && !resp
                        .headers()
                        .contains_key(http::header::ACCESS_CONTROL_ALLOW_ORIGIN) =>
            {
                // A preflight the route's CORS does not grant: tollgate's own answer
                // (204 without `Access-Control-*`) is a 2xx, which an ingress takes for
                // "forward it"; the browser fails such a preflight either way.
                let mut rej = Rejection::from(GatewayError::AccessDenied {
                    reason: DenyReason::OriginNotAllowed,
                    description: "this preflight's origin, method or headers are not allowed by the route's cors".into(),
                });
                let (parts, _) = resp.into_parts();
                rej.facts.extend(parts.extensions);
                Err(rej)
            }
            Ok(resp)
                if resp.extensions().get::<Allowed>().is_none()
                    && !self.preflight
                    && resp.status().is_success() =>
            {
                // The token service's endpoints: an "allow" would forward the request
                // upstream and lose tollgate's answer.
                let mut rej = Rejection::from(GatewayError::BadRequest(format!(
                    "{} is answered by tollgate itself (token service); send it to tollgate's own listener, not through the ingress",
                    self.path
                )));
                let (parts, _) = resp.into_parts();
                rej.facts.extend(parts.extensions);
                Err(rej)
            }
            other => other,
        }
    }
}

impl<S, B> Service<Request<B>> for Answer<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Then<S::Future, Decide>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let decide = Decide {
            preflight: Cors::is_preflight(&req),
            path: req.uri().path().to_owned(),
        };
        let asked = req.extensions().get::<Asked>();
        if let Some(problem) = asked.and_then(|a| a.problem.clone()) {
            return Then::new(
                Step::reject(GatewayError::BadRequest(problem.to_string())),
                decide,
            );
        }
        decision::note(&req, || {
            format!(
                "decision service: asked by {}",
                asked
                    .and_then(|a| a.convention)
                    .map_or("an unknown ingress", Convention::as_str)
            )
        });
        Then::new(Step::inner(self.inner.call(req)), decide)
    }
}

/// Above the rescue layer: on `/auth-request`, a refusal's JSON body is repeated in
/// `X-Tollgate-Error-Body` (nginx drops an auth subrequest's body).
#[derive(Clone)]
pub struct ForNginx<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ForNginx<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = NginxFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let nginx = req
            .extensions()
            .get::<Asked>()
            .is_some_and(|a| a.convention == Some(Convention::AuthRequest));
        let request_id = nginx
            .then(|| req.headers().get(&X_REQUEST_ID).cloned())
            .flatten();
        let trace_id = nginx
            .then(|| {
                req.extensions()
                    .get::<crate::trace_context::TraceRecorded>()
                    .and_then(|_| req.headers().get(&crate::trace_context::TRACEPARENT))
                    .and_then(crate::trace_context::trace_id_text)
            })
            .flatten();
        NginxFuture {
            inner: self.inner.call(req),
            nginx,
            request_id,
            trace_id,
        }
    }
}

pin_project! {
    pub struct NginxFuture<F> {
        #[pin]
        inner: F,
        nginx: bool,
        request_id: Option<HeaderValue>,
        trace_id: Option<[u8; 32]>,
    }
}

impl<F> Future for NginxFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        if *this.nginx {
            if let Some(e) = resp.extensions().get::<Arc<GatewayError>>().cloned() {
                let rid = this
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let trace_id = this
                    .trace_id
                    .as_ref()
                    .and_then(|t| std::str::from_utf8(t).ok());
                if let Ok(v) = HeaderValue::from_str(&e.body_json(rid, trace_id)) {
                    resp.headers_mut().insert(&X_TOLLGATE_ERROR_BODY, v);
                }
            }
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(uri: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        original(b.body(()).unwrap())
    }

    fn problem(r: &Request<Empty<Bytes>>) -> Option<String> {
        r.extensions()
            .get::<Asked>()
            .unwrap()
            .problem
            .as_deref()
            .map(str::to_owned)
    }

    // Behaviour: ext_authz's check request is the client's request with the prefix
    // removed (method, path, query, Host); the last X-Forwarded-For entry is the client.
    #[test]
    fn ext_authz_is_the_request_minus_the_prefix() {
        let r = original(
            Request::post("/ext-authz/v2/analytics/data?x=1")
                .header("host", "bi-api.company.com")
                .header("x-forwarded-for", "10.9.9.9, 192.0.2.7")
                .header("authorization", "Bearer t")
                .body(())
                .unwrap(),
        );
        assert_eq!(problem(&r), None);
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "/v2/analytics/data?x=1");
        assert_eq!(r.headers()["host"], "bi-api.company.com");
        assert_eq!(r.headers()["authorization"], "Bearer t");
        let conn = r.extensions().get::<Arc<ConnInfo>>().unwrap();
        assert_eq!(conn.remote.ip().to_string(), "192.0.2.7");
        assert_eq!(ask("/ext-authz", &[]).uri(), "/");
    }

    // Behaviour: forwardAuth's X-Forwarded-* describe the request; they are required,
    // and removed from what the policy sees.
    #[test]
    fn forward_auth_reads_x_forwarded() {
        let r = ask(
            "/forward-auth",
            &[
                ("x-forwarded-method", "DELETE"),
                ("x-forwarded-uri", "/v2/analytics/data?y=2"),
                ("x-forwarded-host", "bi-api.company.com"),
                ("x-forwarded-proto", "https"),
                ("host", "tollgate:9191"),
            ],
        );
        assert_eq!(problem(&r), None);
        assert_eq!(r.method(), Method::DELETE);
        assert_eq!(r.uri(), "/v2/analytics/data?y=2");
        assert_eq!(r.headers()["host"], "bi-api.company.com");
        assert!(r.headers().get("x-forwarded-uri").is_none());
        assert!(r.extensions().get::<Arc<ConnInfo>>().unwrap().tls);
        // No method: refused, never guessed.
        let r = ask(
            "/forward-auth",
            &[("x-forwarded-uri", "/v2/analytics/data")],
        );
        assert!(problem(&r).unwrap().contains("x-forwarded-method"));
        let r = ask(
            "/forward-auth",
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "http://x/"),
            ],
        );
        assert!(problem(&r).unwrap().contains("must be a path"));
    }

    // Behaviour: auth_request's X-Original-* describe the request; Host is the
    // subrequest's own unless X-Original-Host is sent.
    #[test]
    fn auth_request_reads_x_original() {
        let r = ask(
            "/auth-request",
            &[
                ("x-original-method", "PUT"),
                ("x-original-uri", "/a/b"),
                ("host", "api.example.com"),
            ],
        );
        assert_eq!(problem(&r), None);
        assert_eq!((r.method().as_str(), r.uri().path()), ("PUT", "/a/b"));
        assert_eq!(r.headers()["host"], "api.example.com");
        let r = ask("/auth-request", &[("x-original-uri", "/a")]);
        assert!(problem(&r).unwrap().contains("x-original-method"));
        // Another endpoint: refused, naming the three.
        let r = ask("/v2/analytics", &[]);
        assert!(problem(&r).unwrap().contains("/forward-auth"));
        // A client header that Envoy passes on does not change the decision.
        let r = ask("/ext-authz/a", &[("x-forwarded-uri", "/b")]);
        assert_eq!(r.uri(), "/a");
    }
}
