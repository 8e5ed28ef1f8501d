//! Every error tollgate produces, and the one place it becomes an HTTP response.
//!
//! Layers refuse a request with a [`Rejection`] (a `GatewayError` plus the facts the
//! layers above it learnt); the [`Rescue`] layer near the top of the stack turns it
//! into SPEC.md's JSON body `{"error", "error_description", "request_id"}` with the
//! headers that go with it (`WWW-Authenticate` on 401/403, the route's CORS headers,
//! `Retry-After`). Everything else that answers with an error (the admin API, the
//! redirect listener, the connection-limit refusal) uses [`GatewayError::to_response`]
//! too. Internals never reach the client: descriptions are written for the caller and
//! never contain a token or a secret.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Extensions, Request, Response, StatusCode};
use pin_project_lite::pin_project;

use crate::body::{full, Body};
use crate::trace_context;

/// Stable reason codes for auth denials: the `reason` label of
/// `tollgate_auth_denied_total` and the `reason` field of denial logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    TokenMissing,
    TokenMalformed,
    SignatureInvalid,
    AlgorithmNotAllowed,
    KidUnknown,
    TokenExpired,
    TokenNotYetValid,
    IssuerNotAccepted,
    AudienceNotAccepted,
    TokenInactive,
    ScopeMissing,
    ClientNotAllowed,
    MethodNotAllowed,
    EndpointNotAllowed,
    /// Over a rate limit or quota, or too many failed client authentications (429).
    RateLimited,
    /// A browser session cookie that cannot be opened, has expired, or could not be
    /// refreshed.
    SessionInvalid,
    /// A claim required by the route's or the permission's `claims` is missing or has
    /// none of the allowed values (403 access_denied, naming the claim).
    ClaimMismatch,
    /// A WebSocket handshake from a browser page whose `Origin` the route does not
    /// allow (cross-site WebSocket hijacking; 403 access_denied), or, asked by an
    /// ingress (decision service), a CORS preflight the route's `cors` does not grant.
    OriginNotAllowed,
    /// The `DPoP` proof JWT is missing, malformed, badly signed, or does not match the
    /// request (`htm`, `htu`, `iat`, `ath`) (401, `WWW-Authenticate: DPoP
    /// error="invalid_dpop_proof"`).
    DpopProofInvalid,
    /// The proof's `jti` was seen before within its window (401 invalid_dpop_proof).
    DpopReplayed,
    /// A DPoP binding does not hold: the proof's key is not the token's `cnf.jkt`, a
    /// DPoP-bound token was sent as `Bearer`, or an issuer with `sender_constraint: dpop`
    /// issued a token that is not DPoP-bound (401 invalid_token, DPoP challenge).
    TokenBindingMismatch,
    /// A certificate binding (RFC 8705 `cnf.x5t#S256`) does not hold: no client
    /// certificate, another certificate, or an issuer with `sender_constraint: mtls`
    /// issued a token that is not certificate-bound (401 invalid_token).
    CertificateMismatch,
}

/// The `algs` of a DPoP challenge: the proof algorithms tollgate verifies
/// (`auth::dpop` checks its allow-list against this).
pub const DPOP_ALGS: &str = "ES256 ES384 RS256 RS384 RS512 PS256 PS384 PS512 EdDSA";

impl DenyReason {
    pub const ALL: [DenyReason; 22] = [
        DenyReason::TokenMissing,
        DenyReason::TokenMalformed,
        DenyReason::SignatureInvalid,
        DenyReason::AlgorithmNotAllowed,
        DenyReason::KidUnknown,
        DenyReason::TokenExpired,
        DenyReason::TokenNotYetValid,
        DenyReason::IssuerNotAccepted,
        DenyReason::AudienceNotAccepted,
        DenyReason::TokenInactive,
        DenyReason::ScopeMissing,
        DenyReason::ClientNotAllowed,
        DenyReason::MethodNotAllowed,
        DenyReason::EndpointNotAllowed,
        DenyReason::RateLimited,
        DenyReason::SessionInvalid,
        DenyReason::ClaimMismatch,
        DenyReason::OriginNotAllowed,
        DenyReason::DpopProofInvalid,
        DenyReason::DpopReplayed,
        DenyReason::TokenBindingMismatch,
        DenyReason::CertificateMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::TokenMissing => "token_missing",
            DenyReason::TokenMalformed => "token_malformed",
            DenyReason::SignatureInvalid => "signature_invalid",
            DenyReason::AlgorithmNotAllowed => "algorithm_not_allowed",
            DenyReason::KidUnknown => "kid_unknown",
            DenyReason::TokenExpired => "token_expired",
            DenyReason::TokenNotYetValid => "token_not_yet_valid",
            DenyReason::IssuerNotAccepted => "issuer_not_accepted",
            DenyReason::AudienceNotAccepted => "audience_not_accepted",
            DenyReason::TokenInactive => "token_inactive",
            DenyReason::ScopeMissing => "scope_missing",
            DenyReason::ClientNotAllowed => "client_not_allowed",
            DenyReason::MethodNotAllowed => "method_not_allowed",
            DenyReason::EndpointNotAllowed => "endpoint_not_allowed",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::SessionInvalid => "session_invalid",
            DenyReason::ClaimMismatch => "claim_mismatch",
            DenyReason::OriginNotAllowed => "origin_not_allowed",
            DenyReason::DpopProofInvalid => "dpop_proof_invalid",
            DenyReason::DpopReplayed => "dpop_replayed",
            DenyReason::TokenBindingMismatch => "token_binding_mismatch",
            DenyReason::CertificateMismatch => "certificate_mismatch",
        }
    }

    /// The gate that gives this reason (the admin page highlights it).
    pub fn gate(self) -> &'static str {
        match self {
            DenyReason::TokenMissing
            | DenyReason::TokenMalformed
            | DenyReason::SignatureInvalid
            | DenyReason::AlgorithmNotAllowed
            | DenyReason::KidUnknown
            | DenyReason::TokenExpired
            | DenyReason::TokenNotYetValid
            | DenyReason::IssuerNotAccepted
            | DenyReason::AudienceNotAccepted
            | DenyReason::TokenInactive => "token",
            DenyReason::ScopeMissing => "scopes",
            DenyReason::ClientNotAllowed => "client",
            DenyReason::ClaimMismatch => "claims",
            DenyReason::MethodNotAllowed | DenyReason::EndpointNotAllowed => "permission",
            DenyReason::RateLimited => "rate limit",
            DenyReason::SessionInvalid => "session",
            DenyReason::OriginNotAllowed => "origin",
            DenyReason::DpopProofInvalid
            | DenyReason::DpopReplayed
            | DenyReason::TokenBindingMismatch
            | DenyReason::CertificateMismatch => "sender constraint",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for this host and path")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    /// 401 from the Bearer gate. `TokenMissing` gets a challenge without an error attribute.
    #[error("{description}")]
    Unauthorized {
        reason: DenyReason,
        description: String,
    },
    /// 403 `insufficient_scope`; `scope` lists the scopes the request needs.
    #[error("{description}")]
    InsufficientScope { scope: String, description: String },
    /// 403 `access_denied`: client allow-list or endpoint/method permissions.
    #[error("{description}")]
    AccessDenied {
        reason: DenyReason,
        description: String,
    },
    #[error("request header fields too large")]
    HeaderTooLarge,
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error(transparent)]
    BadGateway(#[from] BadGateway),
    #[error(transparent)]
    GatewayTimeout(#[from] Timeout),
    /// tollgate cannot do its own part (e.g. signing a token failed).
    #[error("{0}")]
    ServiceUnavailable(&'static str),
    /// Load shedding: more requests in flight than `max_concurrent_requests`.
    #[error("tollgate is handling its limit of {0} requests at once; retry shortly")]
    Overloaded(usize),
    /// Over `max_connections`: the connection is answered and closed.
    #[error("tollgate has its limit of {0} connections open; retry shortly")]
    TooManyConnections(usize),
    /// Token service: 401 `invalid_client` with `WWW-Authenticate: Basic`.
    #[error("{0}")]
    InvalidClient(String),
    /// Token service: 400 with an OAuth2 error code (`invalid_scope`, ...).
    #[error("{description}")]
    OAuth {
        code: &'static str,
        description: String,
    },
    /// 405 `method_not_allowed`, with `Allow` listing the methods the resource takes.
    #[error("{description}")]
    MethodNotAllowed {
        description: String,
        allow: &'static str,
    },
    /// The admin listener has no such endpoint.
    #[error("no such admin endpoint")]
    NoAdminEndpoint,
    /// 429 `rate_limited`: over a rate limit or quota, or too many failed client
    /// authentications; carries `Retry-After`, `RateLimit-Policy` and `RateLimit`.
    #[error("{}", .0.description)]
    RateLimited(Box<RateLimited>),
    /// 503 `service_unavailable` with `Retry-After`: a limit's store cannot decide and
    /// the limit says `on_error: deny`.
    #[error("rate limit \"{limit}\" cannot be checked right now (its store is unreachable); retry shortly")]
    StoreUnavailable { limit: Arc<str>, retry_after: u64 },
    /// 503 `service_unavailable` with `Retry-After: 1`: the DPoP replay store (Redis)
    /// cannot answer and the issuer says `dpop.replay.on_error: deny`.
    #[error("DPoP proofs for issuer \"{issuer}\" cannot be checked for replays right now (the replay store is unreachable); retry shortly")]
    ReplayStoreUnavailable { issuer: Arc<str> },
}

/// What a 429 says: which limit, and the headers that tell the client when to come back.
#[derive(Debug, Clone)]
pub struct RateLimited {
    /// The limit that refused (`rate_limits[].name`, or the token service's
    /// `failed_auth_limit.client` / `failed_auth_limit.ip`).
    pub limit: Arc<str>,
    pub description: String,
    /// `Retry-After`, whole seconds (at least 1).
    pub retry_after: HeaderValue,
    /// `RateLimit-Policy`: `"name";q=LIMIT;w=SECONDS`.
    pub policy: HeaderValue,
    /// `RateLimit`: `"name";r=0;t=SECONDS`.
    pub state: HeaderValue,
}

/// Why an exchange with an upstream, an issuer or a token endpoint gave 502.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BadGateway {
    #[error("upstream {upstream} is unreachable ({cause})")]
    Unreachable { upstream: Arc<str>, cause: Cause },
    #[error("upstream {upstream} closed or reset the connection")]
    Reset { upstream: Arc<str>, cause: Cause },
    #[error("could not get a token for upstream {upstream} from its token endpoint")]
    UpstreamToken { upstream: Arc<str> },
    #[error("token introspection at issuer {issuer} failed")]
    Introspection { issuer: Arc<str> },
    /// `upstreams[].csrf`: the X-CSRF-Token fetch failed (`reason` never holds a token).
    #[error("could not get an X-CSRF-Token from upstream {upstream}: {reason}")]
    CsrfFetch { upstream: Arc<str>, reason: String },
    #[error("the sign-in endpoints of issuer {issuer} are unknown: its discovery document could not be fetched")]
    Discovery { issuer: Arc<str> },
}

/// What ran out of time (504).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Timeout {
    #[error("upstream {upstream} did not answer within {after:?}")]
    Upstream { upstream: Arc<str>, after: Duration },
    #[error("request did not complete within {after:?}")]
    Request { after: Duration },
}

/// The underlying cause of a failed exchange, kept as the error itself (for logs and
/// `source()`); shown as its innermost message ("connection refused").
#[derive(Debug, Clone)]
pub struct Cause(pub Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Cause {
        Cause(Arc::from(e.into()))
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last: &(dyn std::error::Error + 'static) = &*self.0;
        while let Some(s) = last.source() {
            last = s;
        }
        write!(f, "{last}")
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) | GatewayError::OAuth { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized { .. } | GatewayError::InvalidClient(_) => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::InsufficientScope { .. } | GatewayError::AccessDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            GatewayError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ServiceUnavailable(_)
            | GatewayError::Overloaded(_)
            | GatewayError::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::NoAdminEndpoint => StatusCode::NOT_FOUND,
            GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::StoreUnavailable { .. } | GatewayError::ReplayStoreUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// SPEC.md's `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NotFound | GatewayError::NoAdminEndpoint => "not_found",
            GatewayError::BadRequest(_) => "invalid_request",
            GatewayError::Unauthorized { .. } => "invalid_token",
            GatewayError::InsufficientScope { .. } => "insufficient_scope",
            GatewayError::AccessDenied { .. } => "access_denied",
            GatewayError::HeaderTooLarge => "request_header_too_large",
            GatewayError::PayloadTooLarge(_) => "payload_too_large",
            GatewayError::BadGateway(_) => "bad_gateway",
            GatewayError::GatewayTimeout(_) => "gateway_timeout",
            GatewayError::ServiceUnavailable(_)
            | GatewayError::Overloaded(_)
            | GatewayError::TooManyConnections(_)
            | GatewayError::StoreUnavailable { .. }
            | GatewayError::ReplayStoreUnavailable { .. } => "service_unavailable",
            GatewayError::InvalidClient(_) => "invalid_client",
            GatewayError::OAuth { code, .. } => code,
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::RateLimited(_) => "rate_limited",
        }
    }

    /// The step of the request path that refused: a gate (see [`DenyReason::gate`]), or
    /// `route`, `limits`, `upstream`, ...
    pub fn gate(&self) -> &'static str {
        if let Some(r) = self.deny_reason() {
            return r.gate();
        }
        match self {
            GatewayError::NotFound | GatewayError::BadRequest(_) => "route",
            GatewayError::HeaderTooLarge
            | GatewayError::PayloadTooLarge(_)
            | GatewayError::Overloaded(_)
            | GatewayError::TooManyConnections(_) => "limits",
            GatewayError::BadGateway(_) | GatewayError::GatewayTimeout(_) => "upstream",
            GatewayError::StoreUnavailable { .. } => "rate limit",
            GatewayError::ReplayStoreUnavailable { .. } => "sender constraint",
            GatewayError::InvalidClient(_) | GatewayError::OAuth { .. } => "token service",
            _ => "tollgate",
        }
    }

    /// The last line of an explain trace for this refusal.
    pub fn explain_line(&self) -> String {
        format!(
            "result: DENY {} {}{}: {}",
            self.status().as_u16(),
            self.code(),
            self.deny_reason()
                .map(|r| format!(" (reason {})", r.as_str()))
                .unwrap_or_default(),
            self
        )
    }

    /// The auth reason code, when this is an auth denial.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            GatewayError::Unauthorized { reason, .. }
            | GatewayError::AccessDenied { reason, .. } => Some(*reason),
            GatewayError::InsufficientScope { .. } => Some(DenyReason::ScopeMissing),
            GatewayError::RateLimited(_) => Some(DenyReason::RateLimited),
            _ => None,
        }
    }

    fn www_authenticate(&self) -> Option<String> {
        match self {
            GatewayError::Unauthorized { reason: DenyReason::TokenMissing, .. } => {
                Some("Bearer realm=\"tollgate\"".to_owned())
            }
            GatewayError::Unauthorized {
                reason: DenyReason::DpopProofInvalid | DenyReason::DpopReplayed,
                description,
            } => Some(format!(
                "DPoP realm=\"tollgate\", error=\"invalid_dpop_proof\", error_description=\"{}\", algs=\"{DPOP_ALGS}\"",
                quote_safe(description)
            )),
            GatewayError::Unauthorized {
                reason: DenyReason::TokenBindingMismatch,
                description,
            } => Some(format!(
                "DPoP realm=\"tollgate\", error=\"invalid_token\", error_description=\"{}\", algs=\"{DPOP_ALGS}\"",
                quote_safe(description)
            )),
            GatewayError::Unauthorized { description, .. } => Some(format!(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{}\"",
                quote_safe(description)
            )),
            GatewayError::InsufficientScope { scope, description } => Some(format!(
                "Bearer realm=\"tollgate\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                quote_safe(description),
                quote_safe(scope)
            )),
            GatewayError::InvalidClient(_) => Some("Basic realm=\"tollgate\"".to_owned()),
            _ => None,
        }
    }

    /// The one mapping from error to response.
    pub fn to_response(&self, request_id: &str) -> Response<Body> {
        self.to_traced_response(request_id, None)
    }

    /// [`GatewayError::to_response`] for a request in a trace: the body also carries
    /// `"trace_id"` (32 hex digits), so that a refusal a user reports can be found in
    /// the tracing system.
    pub fn to_traced_response(&self, request_id: &str, trace_id: Option<&str>) -> Response<Body> {
        let mut resp = Response::new(full(Bytes::from(self.body_json(request_id, trace_id))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        if let Some(v) = self.www_authenticate() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(WWW_AUTHENTICATE, v);
            }
        }
        match self {
            GatewayError::Overloaded(_)
            | GatewayError::TooManyConnections(_)
            | GatewayError::ReplayStoreUnavailable { .. } => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::RateLimited(r) => {
                h.insert(http::header::RETRY_AFTER, r.retry_after.clone());
                h.insert(&RATELIMIT_POLICY, r.policy.clone());
                h.insert(&RATELIMIT, r.state.clone());
            }
            GatewayError::StoreUnavailable { retry_after, .. } => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            // RFC 9110 §15.5.6: a 405 says which methods the resource takes.
            GatewayError::MethodNotAllowed { allow, .. } => {
                h.insert(http::header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        if matches!(
            self,
            GatewayError::HeaderTooLarge
                | GatewayError::BadRequest(_)
                | GatewayError::TooManyConnections(_)
        ) {
            // The connection's framing may be off: do not reuse it.
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl GatewayError {
    /// The whole HTTP/1.1 response as bytes, with `X-Request-Id`, for answering on a
    /// raw connection before any HTTP machinery runs (the connection-limit refusal).
    /// `request_id` must be a sane id ([`crate::request_id::is_sane`]).
    pub fn to_http1_bytes(&self, request_id: &str) -> Vec<u8> {
        let resp = self.to_response(request_id);
        let body = self.body_json(request_id, None);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            resp.status().as_u16(),
            resp.status().canonical_reason().unwrap_or("")
        )
        .into_bytes();
        for (k, v) in resp.headers() {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("x-request-id: {request_id}\r\n").as_bytes());
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body.as_bytes());
        out
    }

    pub fn body_json(&self, request_id: &str, trace_id: Option<&str>) -> String {
        let mut body = serde_json::json!({
            "error": self.code(),
            "error_description": self.to_string(),
            "request_id": request_id,
        });
        if let Some(t) = trace_id {
            body["trace_id"] = serde_json::Value::from(t);
        }
        body.to_string()
    }
}

/// A request refused by a layer: the error, plus the facts the layers it passed through
/// had learnt (the matched route, the identity, headers every response must carry). The
/// [`Rescue`] layer moves the facts onto the error response, where the observing layer
/// reads them like it reads them on any other response.
#[derive(Debug)]
pub struct Rejection {
    pub error: GatewayError,
    pub facts: Extensions,
}

impl Rejection {
    pub fn with<T: Clone + Send + Sync + 'static>(mut self, fact: T) -> Rejection {
        self.facts.insert(fact);
        self
    }

    /// Adds headers to the [`ResponseHeaders`] the error response will carry, keeping
    /// those other layers recorded (a header this error sets itself still wins).
    pub fn with_headers(mut self, add: impl FnOnce(&mut HeaderMap)) -> Rejection {
        let mut h = self.facts.remove::<ResponseHeaders>().unwrap_or_default();
        add(&mut h.0);
        self.facts.insert(h);
        self
    }
}

impl<E: Into<GatewayError>> From<E> for Rejection {
    fn from(e: E) -> Rejection {
        Rejection {
            error: e.into(),
            facts: Extensions::new(),
        }
    }
}

/// Headers every response to this request carries, error responses included (the
/// route's CORS headers, a limited route's RateLimit headers): recorded by the layer
/// that decided them with [`Rejection::with_headers`], added by [`Rescue`].
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders(pub HeaderMap);

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// Fact on an error response: the request was refused by a gate, with SPEC's reason
/// code (for the denial log line and `tollgate_auth_denied_total`).
#[derive(Debug, Clone)]
pub struct Denied {
    pub reason: DenyReason,
    pub status: StatusCode,
    pub description: Arc<str>,
}

/// Turns every [`Rejection`] of the layers below into SPEC's error response, with the
/// request id, the facts as response extensions and the recorded [`ResponseHeaders`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Rescue<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The layers below are always ready; a refusal to be ready would be answered
        // per request instead.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request_id = req.headers().get(&crate::request_id::X_REQUEST_ID).cloned();
        // The trace-context layer above has written the request's traceparent (the
        // client's trace continued, or a new one): its trace id goes into error bodies
        // when that trace is recorded somewhere (`TraceRecorded`).
        let trace_id = req
            .extensions()
            .get::<trace_context::TraceRecorded>()
            .and_then(|_| req.headers().get(&trace_context::TRACEPARENT))
            .and_then(trace_context::trace_id_text);
        RescueFuture {
            inner: self.inner.call(req),
            request_id,
            trace_id,
        }
    }
}

pin_project! {
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
        request_id: Option<HeaderValue>,
        trace_id: Option<[u8; 32]>,
    }
}

impl<F: Future<Output = Result<Response<Body>, Rejection>>> Future for RescueFuture<F> {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(Ok(match out {
            Ok(resp) => resp,
            Err(rej) => rescue_traced(
                rej,
                this.request_id.as_ref(),
                this.trace_id
                    .as_ref()
                    .and_then(|t| std::str::from_utf8(t).ok()),
            ),
        }))
    }
}

/// One refusal, as the client sees it.
pub fn rescue(rej: Rejection, request_id: Option<&HeaderValue>) -> Response<Body> {
    rescue_traced(rej, request_id, None)
}

/// [`rescue`] for a request in a trace (`trace_id`: 32 hex digits, into the body).
pub fn rescue_traced(
    rej: Rejection,
    request_id: Option<&HeaderValue>,
    trace_id: Option<&str>,
) -> Response<Body> {
    let Rejection { error, facts } = rej;
    let rid = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut resp = error.to_traced_response(rid, trace_id);
    if let Some(ResponseHeaders(h)) = facts.get::<ResponseHeaders>() {
        for name in h.keys() {
            // A header the error sets itself (a 429's RateLimit headers) wins.
            if resp.headers().contains_key(name) {
                continue;
            }
            for v in h.get_all(name) {
                resp.headers_mut().append(name.clone(), v.clone());
            }
        }
    }
    let denied = error.deny_reason().map(|reason| Denied {
        reason,
        status: error.status(),
        description: Arc::from(error.to_string()),
    });
    resp.extensions_mut().extend(facts);
    if let Some(d) = denied {
        resp.extensions_mut().insert(d);
    }
    resp.extensions_mut().insert(Arc::new(error));
    resp
}

/// Header parameter values are quoted-strings: no `"` or `\` or control characters.
fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() || !c.is_ascii() => ' ',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: SPEC's error table — status, code and WWW-Authenticate per case.
    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        let e = GatewayError::Unauthorized {
            reason: DenyReason::TokenMissing,
            description: "no Bearer token".into(),
        };
        let r = e.to_response("rid");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"tollgate\"");
    }

    #[test]
    fn scope_challenge_names_scopes() {
        let e = GatewayError::InsufficientScope {
            scope: "a b".into(),
            description: "scope b required".into(),
        };
        let r = e.to_response("rid");
        assert_eq!(r.status(), 403);
        let v = r.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(v.contains("error=\"insufficient_scope\""));
        assert!(v.contains("scope=\"a b\""));
    }
}

#[cfg(test)]
mod rescue_tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::testing::{body_json, get};

    // Behaviour: the rescue layer writes SPEC's JSON error with the request id, adds the
    // recorded headers, and leaves the facts and the denial on the response.
    #[tokio::test]
    async fn refusals_become_spec_errors() {
        let refuse = tower::service_fn(|_req: Request<_>| async {
            let mut h = HeaderMap::new();
            h.insert(
                "access-control-allow-origin",
                HeaderValue::from_static("https://a.b"),
            );
            let rej = Rejection::from(GatewayError::AccessDenied {
                reason: DenyReason::ClientNotAllowed,
                description: "client \"x\" is not allowed on this route".into(),
            })
            .with(ResponseHeaders(h))
            .with(42u32);
            Err::<Response<Body>, _>(rej)
        });
        let mut req = get("/x");
        req.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("rid-1"));
        let Ok(resp) = RescueLayer.layer(refuse).oneshot(req).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["access-control-allow-origin"], "https://a.b");
        assert_eq!(resp.extensions().get::<u32>(), Some(&42));
        assert_eq!(
            resp.extensions().get::<Denied>().unwrap().reason,
            DenyReason::ClientNotAllowed
        );
        let body = body_json(resp).await;
        assert_eq!(body["error"], "access_denied");
        assert_eq!(body["request_id"], "rid-1");
        assert_eq!(
            body["error_description"],
            "client \"x\" is not allowed on this route"
        );
    }

    // Behaviour: the connection-limit refusal is a complete HTTP/1.1 answer with SPEC's body.
    #[test]
    fn raw_refusal_is_a_complete_answer() {
        let bytes = GatewayError::TooManyConnections(5).to_http1_bytes("r1");
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains("retry-after: 1") && head.contains("connection: close"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "service_unavailable");
        assert_eq!(v["request_id"], "r1");
    }
}
