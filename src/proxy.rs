//! Step 10 of the request path: forwarding.
//!
//! Rewrites the URI to the upstream (its base path + the normalised path + the query),
//! cleans the headers (hop-by-hop, those named in `Connection`, inbound `X-Auth-*`),
//! adds `X-Forwarded-*`, `X-Request-Id` and the verified identity, and streams the body
//! both ways. The request body is counted while it streams: past `max_body_bytes` the
//! stream fails and the exchange is answered 413. The upstream's `timeout` bounds the
//! wait for its response head (504) and every pause in its response body (after the
//! head a 504 is too late: the body is cut off, like nginx's `proxy_read_timeout`).
//!
//! An upstream with several endpoints (or retries) goes through [`forward_balanced`]:
//! the balancer (`balancer.rs`) picks an endpoint per try, each exchange's outcome
//! counts towards the endpoint's passive ejection, and an idempotent request whose
//! body was never streamed is tried again on another endpoint when the failure is one
//! `retries.on` lists. A plain single `url` keeps the direct path.
//!
//! [`Proxy`] is the innermost service of the stack: everything it needs (the route's
//! upstream, the normalised path, the connection, the identity) is in the request's
//! extensions, put there by the layers above.

use opentelemetry::trace::SpanKind;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use crate::balancer::{bit, Endpoint, Endpoints, InFlight};
use crate::body::{Body, BoxError};
use crate::client::{
    send_h2, send_h2_or_back, send_pooled, send_pooled_or_back, Unsent, UpstreamFailure, Wait,
};
use crate::conn::ConnInfo;
use crate::error::{BadGateway, GatewayError, Rejection, Timeout};
use crate::identity::{is_identity_header, Identity};
use crate::metrics::{UpstreamErrorKind, UpstreamMetrics};
pub use crate::request_id::X_REQUEST_ID;
use crate::route::layer::{request_host, routed};

use crate::service::{Outcome, Step};
use crate::upstream::{Protocol, Upstream};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `HOP_BY_HOP`'s index of `name`, by one string match (no hashing).
fn hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including every header named in `Connection`.
/// One pass over the names finds which are present; only those are removed.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let mut present = 0u16;
    for k in h.keys() {
        if let Some(i) = hop_index(k) {
            present |= 1 << i;
        }
    }
    remove_hop_by_hop(h, present);
}

/// Removes the hop-by-hop headers `present` marks (bit `i`: `HOP_BY_HOP[i]`), and those
/// `Connection` names.
fn remove_hop_by_hop(h: &mut HeaderMap, present: u16) {
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // The headers `Connection` names besides its own options. Nearly every message
        // says only `keep-alive` or `close`, and then nothing is allocated here (this
        // runs on every proxied response: it was ~540 instructions with a `String` per
        // token, bench/ANALYSIS.md "Session 14").
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            for token in v.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty()
                    || token.eq_ignore_ascii_case(b"keep-alive")
                    || token.eq_ignore_ascii_case(b"close")
                {
                    continue;
                }
                // Not a header name: nothing by that name can be in the map.
                if let Ok(n) = HeaderName::from_bytes(token) {
                    named.push(n);
                }
            }
        }
        for n in named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
}

pin_project! {
    /// Counts the request body as it streams and fails it past the limit. Its errors
    /// are typed, so that a failed send can tell whose fault it was: [`BodyTooLarge`]
    /// (413) or [`ClientBodyError`] (400) rather than the upstream's (502).
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        seen: u64,
        limit: u64,
    }
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        LimitedBody {
            inner,
            seen: 0,
            limit,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit")]
pub struct BodyTooLarge;

/// The client's body broke while it streamed (bad chunk framing, a reset).
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct ClientBodyError(#[source] BoxError);

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.seen += d.len() as u64;
                    if *this.seen > *this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e.into())))))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The upstream's response body, cut off when no frame arrives for `idle`: an
    /// upstream that sends its head and then stalls must not hold the client, and a
    /// connection on each side, forever. A body that keeps flowing is never cut.
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        last_frame: tokio::time::Instant,
        #[pin]
        timer: tokio::time::Sleep,
        upstream: Arc<str>,
    }
}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, idle: Duration, upstream: Arc<str>) -> Self {
        let now = tokio::time::Instant::now();
        IdleTimeoutBody {
            inner,
            idle,
            last_frame: now,
            timer: tokio::time::sleep_until(now + idle),
            upstream,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response data for {0:?}")]
pub struct UpstreamStalled(Duration);

impl<B> HttpBody for IdleTimeoutBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(r) = this.inner.poll_frame(cx) {
            // Re-arming the timer lazily (below) keeps a flowing body at one clock read
            // per frame.
            *this.last_frame = tokio::time::Instant::now();
            return Poll::Ready(r.map(|r| r.map_err(Into::into)));
        }
        loop {
            std::task::ready!(this.timer.as_mut().poll(cx));
            let due = *this.last_frame + *this.idle;
            if tokio::time::Instant::now() >= due {
                tracing::warn!(upstream = %this.upstream, idle = ?this.idle,
                    "upstream response body stalled; cutting it off");
                return Poll::Ready(Some(Err(Box::new(UpstreamStalled(*this.idle)))));
            }
            this.timer.as_mut().reset(due);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the forwarding step needs to know about the exchange.
pub struct ForwardContext<'a> {
    /// The client's IP as text.
    pub client_ip: &'a HeaderValue,
    pub tls: bool,
    pub original_host: Option<HeaderValue>,
    pub identity: Option<&'a Identity>,
}

/// The request target sent upstream, in origin form (`/base/path?query`): the
/// upstream is reached by the pool's connection and named by `Host`.
pub fn upstream_uri(up: &Upstream, path: &str, request: &Uri) -> Result<Uri, GatewayError> {
    // The usual case, an upstream without a base path and a path that normalising left
    // as it was: the request's own path and query, shared, not copied.
    if let Some(pq) = request.path_and_query() {
        if up.base_path.is_empty() && path == request.path() {
            return Ok(Uri::from(pq.clone()));
        }
    }
    let query = request.query();
    // Exactly the length: `Uri` then takes the buffer over without copying it.
    let mut pq =
        String::with_capacity(up.base_path.len() + path.len() + query.map_or(0, |q| 1 + q.len()));
    pq.push_str(&up.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    Uri::try_from(pq)
        .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded".into()))
}

/// Client headers that frameworks read in place of what tollgate checked and set: the
/// method (`X-HTTP-Method-Override`: a `GET` that permissions allowed runs as `DELETE`),
/// the path (`X-Original-URL`, `X-Rewrite-URL`: IIS URL Rewrite, Symfony, Zend) and the
/// client, host, scheme, port or prefix (`Forwarded`, `X-Real-IP`, `X-Forwarded-Port`,
/// `X-Forwarded-Prefix`: Spring, ASP.NET) beside the `X-Forwarded-*` tollgate sets.
pub const OVERRIDING_HEADERS: [&str; 9] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "forwarded",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
];

/// `OVERRIDING_HEADERS`' index of `name`, by one string match (no hashing).
fn overriding_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "x-http-method-override" => 0,
        "x-http-method" => 1,
        "x-method-override" => 2,
        "x-original-url" => 3,
        "x-rewrite-url" => 4,
        "forwarded" => 5,
        "x-real-ip" => 6,
        "x-forwarded-port" => 7,
        "x-forwarded-prefix" => 8,
        _ => return None,
    })
}

/// Header hygiene for the upstream: hop-by-hop and inbound `X-Auth-*` headers (also spelt
/// with `_`) removed, so are [`OVERRIDING_HEADERS`],
/// `X-Forwarded-*`, `Host` and the verified identity added. (`X-Request-Id` is already
/// the request's own, set by the request-id layer; upstream credentials, when the
/// upstream has `auth:`, were set by the credentials layer.)
pub fn prepare_headers(h: &mut HeaderMap, up: &Upstream, cx: &ForwardContext<'_>) {
    // One pass over the names finds what there is to remove, so that a request without
    // any of these headers (the usual one) pays no lookup per absent name.
    let (mut hop, mut overriding) = (0u16, 0u16);
    let (mut identity, mut xff) = (false, false);
    for k in h.keys() {
        if let Some(i) = hop_index(k) {
            hop |= 1 << i;
        } else if let Some(i) = overriding_index(k) {
            overriding |= 1 << i;
        } else if k == X_FORWARDED_FOR {
            xff = true;
        } else if is_identity_header(k) {
            identity = true;
        }
    }
    remove_hop_by_hop(h, hop);
    if identity {
        let inbound_auth: Vec<HeaderName> = h
            .keys()
            .filter(|k| is_identity_header(k))
            .cloned()
            .collect();
        for k in inbound_auth {
            h.remove(k);
        }
    }
    for (i, name) in OVERRIDING_HEADERS.iter().enumerate() {
        if overriding & (1 << i) != 0 {
            h.remove(*name);
        }
    }
    if xff {
        let joined = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => {
                let ip = cx.client_ip.to_str().unwrap_or("");
                HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
            }
            _ => Some(cx.client_ip.clone()),
        };
        h.remove(&X_FORWARDED_FOR);
        if let Some(v) = joined {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
    } else {
        h.insert(X_FORWARDED_FOR.clone(), cx.client_ip.clone());
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if cx.tls { "https" } else { "http" }),
    );
    match &cx.original_host {
        Some(host) => {
            h.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            h.remove(&X_FORWARDED_HOST);
        }
    }
    h.insert(header::HOST, up.host.clone());
    if let Some(id) = cx.identity {
        for (name, value) in id.forward_headers() {
            h.insert(name.clone(), value.clone());
        }
    }
}

/// The upstream's response for the client: hop-by-hop headers and the upstream's own
/// request id removed, the body (trailers included) streamed with the idle timeout.
fn from_upstream<B>(up: &Upstream, resp: Response<B>) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The client gets tollgate's request id, never one the upstream made up.
    parts.headers.remove(&X_REQUEST_ID);
    let body = IdleTimeoutBody::new(body, up.timeout, up.name.clone()).boxed_unsync();
    Response::from_parts(parts, body)
}

/// Forwards the request and returns the upstream's response, streaming; counts the
/// exchange in `metrics` (time to the response head, and a failure's kind).
pub async fn forward<B>(
    up: &Upstream,
    req: Request<B>,
    uri: Uri,
    cx: ForwardContext<'_>,
    max_body: u64,
    metrics: &UpstreamMetrics,
) -> Result<Response<Body>, GatewayError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(eps) = &up.endpoints {
        // Boxed: the plain path's future stays as small as it was.
        return Box::pin(forward_balanced(up, eps, req, uri, cx, max_body, metrics)).await;
    }
    let (mut parts, body) = req.into_parts();
    // gRPC needs `TE: trailers` end to end; it is hop-by-hop, so it is sent again on
    // an HTTP/2 hop when the client sent it.
    let te_trailers = up.protocol != Protocol::Http1
        && parts
            .headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    prepare_headers(&mut parts.headers, up, &cx);
    // The request's facts are not the upstream's business. They travel on with the
    // response instead: its extension map then exists already when the layers above
    // record their facts there (the route, the gate's), which saves building a second
    // map per request. Nothing reads the request's own types from a response.
    let facts = std::mem::take(&mut parts.extensions);
    let start = Instant::now();
    let sent = match up.protocol {
        Protocol::Http1 => {
            parts.uri = uri;
            parts.version = Version::HTTP_11;
            let body = LimitedBody::new(body, max_body).boxed_unsync();
            send_pooled(
                up.pool(),
                Request::from_parts(parts, body),
                Wait::forwarded(up.timeout),
            )
            .await
            .map(|resp| from_upstream(up, resp))
        }
        Protocol::H2 | Protocol::H2c => {
            // HTTP/2 names the upstream by :scheme and :authority, not `Host`.
            let mut abs = http::uri::Parts::from(uri);
            abs.scheme = Some(up.scheme.clone());
            abs.authority = Some(up.authority.clone());
            parts.uri = Uri::from_parts(abs).map_err(|_| {
                GatewayError::BadRequest("request target cannot be forwarded".into())
            })?;
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            if te_trailers {
                parts
                    .headers
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
            let body = LimitedBody::new(body, max_body).boxed_unsync();
            send_h2(
                up.h2(),
                Request::from_parts(parts, body),
                Wait::forwarded(up.timeout),
            )
            .await
            .map(|resp| from_upstream(up, resp))
        }
    };
    let kind = match &sent {
        Ok(_) => None,
        // The client's body failed, not the upstream.
        Err(f) if f.caused_by::<BodyTooLarge>() || f.caused_by::<ClientBodyError>() => None,
        Err(UpstreamFailure::Timeout) => Some(UpstreamErrorKind::Timeout),
        Err(UpstreamFailure::Connect(_)) => Some(UpstreamErrorKind::Connect),
        Err(UpstreamFailure::Broken(_)) => Some(UpstreamErrorKind::Reset),
    };
    metrics.exchange(&up.name, &up.series, start.elapsed(), kind);
    match sent {
        Ok(mut resp) => {
            // The upstream response's own entries (an upgrade, a reason phrase) win
            // over the request's of the same type.
            let own = std::mem::replace(resp.extensions_mut(), facts);
            resp.extensions_mut().extend(own);
            Ok(resp)
        }
        Err(f) if f.caused_by::<BodyTooLarge>() => Err(GatewayError::PayloadTooLarge(max_body)),
        Err(f) if f.caused_by::<ClientBodyError>() => Err(GatewayError::BadRequest(
            "the request body could not be read (malformed chunked encoding or a reset)".into(),
        )),
        Err(f) => Err(upstream_error(up, f)),
    }
}

pin_project! {
    /// An endpoint's response body: its request counts as in flight on the endpoint
    /// (least-requests) until the body ends or is dropped.
    struct Counted<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B: HttpBody> HttpBody for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Points a request at endpoint `ep`: its `Host` (HTTP/1.1), or its `:scheme` and
/// `:authority` (HTTP/2).
fn aim(req: &mut Request<Body>, ep: &Endpoint, h2: bool) -> Result<(), GatewayError> {
    if h2 {
        let mut abs = http::uri::Parts::default();
        abs.scheme = Some(ep.scheme.clone());
        abs.authority = Some(ep.authority.clone());
        abs.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from_parts(abs)
            .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded".into()))?;
    } else {
        req.headers_mut().insert(header::HOST, ep.host.clone());
    }
    Ok(())
}

/// [`forward`] for an upstream with [`Endpoints`]: each try goes to the endpoint the
/// balancer picks (another one than before while there is one), its outcome counts
/// towards the endpoint's ejection, and a failure `retries.on` lists is tried again
/// when the method is idempotent and the body was never streamed (a request without
/// a body, or one handed back unsent). The route's `request_timeout` bounds all tries.
pub async fn forward_balanced<B>(
    up: &Upstream,
    eps: &Endpoints,
    req: Request<B>,
    uri: Uri,
    cx: ForwardContext<'_>,
    max_body: u64,
    metrics: &UpstreamMetrics,
) -> Result<Response<Body>, GatewayError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let h2 = up.protocol != Protocol::Http1;
    let te_trailers = h2
        && parts
            .headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    prepare_headers(&mut parts.headers, up, &cx);
    parts.extensions = http::Extensions::new();
    parts.uri = uri;
    if h2 {
        parts.version = Version::HTTP_2;
        parts.headers.remove(header::HOST);
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
    } else {
        parts.version = Version::HTTP_11;
    }
    let retries = &eps.retries;
    let may_retry = retries.method_allows(&parts.method);
    // A request without a body can be sent again as it is.
    let template = (may_retry && body.is_end_stream()).then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.version,
            parts.headers.clone(),
        )
    });
    let body = LimitedBody::new(body, max_body).boxed_unsync();
    let mut next = Some(Request::from_parts(parts, body));
    let mut tried = 0u64;
    let mut attempt = 1u32;
    // The endpoints as they are now, for every try (a name's addresses may change).
    let list = eps.list();
    if list.is_empty() {
        return Err(no_endpoint(up, metrics));
    }
    loop {
        let i = eps.pick(&list, tried);
        tried |= bit(i);
        let ep = &list[i];
        let mut req = match (next.take(), &template) {
            (Some(r), _) => r,
            (None, Some((method, uri, version, headers))) => {
                let mut r = Request::new(crate::body::empty());
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri.clone();
                *r.version_mut() = *version;
                *r.headers_mut() = headers.clone();
                r
            }
            (None, None) => unreachable!("a try without a request is never started"),
        };
        aim(&mut req, ep, h2)?;
        let in_flight = ep.state.start();
        let start = Instant::now();
        let sent: Result<Response<Body>, Unsent> = if h2 {
            send_h2_or_back(ep.h2(&up.client), req, Wait::forwarded(up.timeout))
                .await
                .map(|r| from_upstream(up, r.map(|inner| Counted { inner, in_flight })))
        } else {
            send_pooled_or_back(ep.pool(&up.client), req, Wait::forwarded(up.timeout))
                .await
                .map(|r| from_upstream(up, r.map(|inner| Counted { inner, in_flight })))
        };
        let elapsed = start.elapsed();
        let can_retry =
            |back: bool| attempt < retries.attempts && may_retry && (back || template.is_some());
        match sent {
            Ok(resp) => {
                metrics.exchange(&up.name, &up.series, elapsed, None);
                let status = resp.status();
                eps.record(&list, i, status.is_server_error());
                if retries.on_status(status) && can_retry(false) {
                    tracing::debug!(upstream = %up.name, endpoint = %ep.label,
                        status = status.as_u16(), "retrying on another endpoint");
                    metrics.retry(&up.name);
                    attempt += 1;
                    continue;
                }
                return Ok(resp);
            }
            Err((f, back)) => {
                if f.caused_by::<BodyTooLarge>() {
                    return Err(GatewayError::PayloadTooLarge(max_body));
                }
                if f.caused_by::<ClientBodyError>() {
                    return Err(GatewayError::BadRequest(
                        "the request body could not be read (malformed chunked encoding or a reset)"
                            .into(),
                    ));
                }
                metrics.exchange(&up.name, &up.series, elapsed, Some(failure_kind(&f)));
                eps.record(&list, i, true);
                if retries.on_failure(&f) && can_retry(back.is_some()) {
                    tracing::debug!(upstream = %up.name, endpoint = %ep.label,
                        error = ?f, "retrying on another endpoint");
                    metrics.retry(&up.name);
                    next = back;
                    attempt += 1;
                    continue;
                }
                return Err(upstream_error(up, f));
            }
        }
    }
}

/// 502 for an upstream without an endpoint (a `dns: per_address` name with no
/// address, or not resolved yet), counted as a connect failure.
fn no_endpoint(up: &Upstream, metrics: &UpstreamMetrics) -> GatewayError {
    metrics.exchange(
        &up.name,
        &up.series,
        Duration::ZERO,
        Some(UpstreamErrorKind::Connect),
    );
    let why = match &up.dns {
        Some(d) => {
            let st = d.target.status();
            match st.last_error {
                Some(e) => format!("{} has no known address: {e}", d.target.shown()),
                None => format!("{} has not been resolved yet", d.target.shown()),
            }
        }
        None => "no endpoint".to_owned(),
    };
    tracing::warn!(upstream = %up.name, "upstream has no endpoint: {why}");
    BadGateway::Unreachable {
        upstream: up.name.clone(),
        cause: crate::error::Cause::new(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            why,
        )),
    }
    .into()
}

fn failure_kind(f: &UpstreamFailure) -> UpstreamErrorKind {
    match f {
        UpstreamFailure::Timeout => UpstreamErrorKind::Timeout,
        UpstreamFailure::Connect(_) => UpstreamErrorKind::Connect,
        UpstreamFailure::Broken(_) => UpstreamErrorKind::Reset,
    }
}

/// What the client is told when the upstream failed (504 or 502, naming the upstream);
/// connect and exchange failures are logged. Shared by forwarding and WebSocket
/// handshakes.
pub fn upstream_error(up: &Upstream, f: UpstreamFailure) -> GatewayError {
    match f {
        UpstreamFailure::Timeout => Timeout::Upstream {
            upstream: up.name.clone(),
            after: up.timeout,
        }
        .into(),
        UpstreamFailure::Connect(cause) => {
            tracing::warn!(upstream = %up.name, error = %cause, "upstream connect failed");
            // The log names the outbound proxy; the client is told only what happened.
            let cause = match crate::outbound::ProxyError::find(&*cause.0) {
                Some(p) => crate::error::Cause::new(crate::outbound::PublicProxyError(p.public())),
                None => cause,
            };
            BadGateway::Unreachable {
                upstream: up.name.clone(),
                cause,
            }
            .into()
        }
        UpstreamFailure::Broken(cause) => {
            tracing::warn!(upstream = %up.name, error = %cause, "upstream exchange failed");
            BadGateway::Reset {
                upstream: up.name.clone(),
                cause,
            }
            .into()
        }
    }
}

/// Step 10: the innermost service, forwarding to the matched route's upstream.
#[derive(Debug, Clone)]
pub struct Proxy {
    metrics: Arc<UpstreamMetrics>,
}

impl Proxy {
    pub fn new(metrics: UpstreamMetrics) -> Self {
        Proxy {
            metrics: Arc::new(metrics),
        }
    }
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    // Never `Step::Inner`: the proxy answers itself (a refusal, or the boxed exchange).
    type Future = Step<std::future::Pending<Outcome>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(r) = routed(&req) else {
            return Step::reject(GatewayError::NotFound);
        };
        let Some(upstream) = r.route.as_ref().and_then(|r| r.upstream.clone()) else {
            return Step::reject(GatewayError::NotFound);
        };
        let max_body = r.snapshot.server.limits.max_body_bytes;
        let uri = match upstream_uri(&upstream, &r.path, req.uri()) {
            Ok(uri) => uri,
            Err(e) => return Step::reject(e),
        };
        let conn = req.extensions().get::<Arc<ConnInfo>>().cloned();
        let identity = req.extensions().get::<Arc<Identity>>().cloned();
        let metrics = self.metrics.clone();
        Step::boxed(async move {
            let mut span = crate::otel::child("upstream", SpanKind::Client);
            if span.recording() {
                span.attr("tollgate.upstream", upstream.name.to_string())
                    .attr("http.request.method", req.method().to_string())
                    .attr(
                        "server.address",
                        upstream.host.to_str().unwrap_or("").to_owned(),
                    )
                    .attr("url.path", uri.path().to_owned());
            }
            let unknown = HeaderValue::from_static("unknown");
            let cx = ForwardContext {
                client_ip: conn.as_ref().map_or(&unknown, |c| &c.ip),
                tls: conn.as_ref().is_some_and(|c| c.tls),
                original_host: request_host(&req),
                identity: identity.as_deref(),
            };
            let out = forward(&upstream, req, uri, cx, max_body, &metrics).await;
            match &out {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    span.attr("http.response.status_code", i64::from(status));
                    if status >= 500 {
                        span.fail(format!("HTTP {status}"));
                    }
                }
                Err(e) => span.fail(e.to_string()),
            }
            out.map_err(Rejection::from)
        })
    }
}

#[cfg(test)]
mod hop_tests {
    use super::*;

    // Behaviour: the overriding headers' fast name match agrees with the list.
    #[test]
    fn overriding_index_matches_the_list() {
        for (i, n) in OVERRIDING_HEADERS.iter().enumerate() {
            assert_eq!(
                overriding_index(&HeaderName::from_static(n)),
                Some(i),
                "{n}"
            );
        }
        assert_eq!(overriding_index(&header::HOST), None);
    }

    // Behaviour: the fast name match and the removal list agree, entry for entry, and
    // every hop-by-hop header (any case) plus the ones `Connection` names are removed
    // while end-to-end headers stay.
    #[test]
    fn hop_by_hop_index_matches_the_list() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n), Some(i), "{n}");
        }
        let mut h = HeaderMap::new();
        for n in &HOP_BY_HOP {
            h.insert(n.clone(), HeaderValue::from_static("x"));
        }
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("X-Secret, close"),
        );
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert("x-kept", HeaderValue::from_static("k"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept", "content-type"]);

        // Several Connection lines, blanks, tabs and a token that is no header name.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" ,\tX-One ,, bad name,x-two"),
        );
        for n in ["x-one", "x-two", "x-three"] {
            h.insert(n, HeaderValue::from_static("v"));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-three"]);
    }

    // Cost guard: the exchange's future is boxed on every forwarded request, and a box
    // is filled by copying the whole future. Dialling and handshakes (a new connection
    // only) are boxed separately, so that it stays small: 7.6 KB before session 9
    // (bench/ANALYSIS.md, "Smaller futures").
    #[tokio::test]
    async fn the_forwarding_future_stays_small() {
        use crate::route::layer::Routed;
        use tower::Service;
        let (gw, _dir) = crate::testing::gateway(crate::testing::CONFIG);
        let rt = gw.current();
        let route = rt.routes.iter().find(|r| &*r.name == "open").cloned();
        assert!(route.is_some());
        let mut req = crate::testing::get("/open/x");
        req.extensions_mut().insert(Routed {
            snapshot: rt.clone(),
            path: "/open/x".into(),
            route,
        });
        let fut = Proxy::new(gw.metrics.upstream()).call(req);
        let size = fut.boxed_size().expect("the exchange is boxed");
        assert!(size <= 4096, "the forwarding future grew to {size} bytes");
    }
}
