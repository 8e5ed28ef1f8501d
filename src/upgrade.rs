//! Step 10, for WebSocket: the upgrade handshake and the tunnel after it.
//!
//! On a route with `websocket:`, a request asking to switch to WebSocket — HTTP/1.1
//! `GET` with `Connection: upgrade` + `Upgrade: websocket`, or HTTP/2 extended CONNECT
//! with `:protocol: websocket` (RFC 8441), which the listener turns into the same `GET`
//! ([`from_extended_connect`]) so that the policy above sees one shape — has already
//! passed every gate of the route (token, scopes, permissions, rate limits) when it gets
//! here. It is sent to the upstream on a connection of its own (an upgraded connection
//! never goes back to the pool); when the upstream answers `101 Switching Protocols`,
//! the client gets `101` (HTTP/1.1) or `200` (HTTP/2), and bytes flow both ways until
//! either side closes, `idle_timeout` passes with no data, or `max_duration` ends it.
//! Any other answer of the upstream (a 400, a 403) goes to the client as it is.
//!
//! A browser's WebSocket carries its page's `Origin` and the site's cookies, so a
//! foreign page could open one with the user's session (cross-site WebSocket
//! hijacking): an upgrade with an `Origin` is let through only when the route's `cors`
//! allows that origin, or, on a route without `cors`, when it is the host the request
//! was sent to. Requests without `Origin` (machine clients) are not affected.
//!
//! Upgrades on routes without `websocket:` are not forwarded as such: on HTTP/1.1 the
//! `Upgrade` header is removed like any hop-by-hop header (as before), an HTTP/2
//! extended CONNECT is refused (400), since it cannot be answered as a plain request.
//! Any other CONNECT (an extended CONNECT for another `:protocol`, a plain tunnel
//! request) is refused 400 on every route: it is never forwarded.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::client::connect_upgradable;
use crate::conn::ConnInfo;
use crate::decision;
use crate::error::{DenyReason, GatewayError, Rejection};
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::proxy::{
    prepare_headers, strip_hop_by_hop, upstream_error, upstream_uri, ForwardContext, X_REQUEST_ID,
};
use crate::route::layer::{request_host, routed};
use crate::runtime::{Route, WebSocket};
use crate::service::Step;

static SEC_WEBSOCKET_KEY: header::HeaderName = header::SEC_WEBSOCKET_KEY;

/// Marks a request that arrived as an HTTP/2 extended CONNECT (RFC 8441): its answer is
/// `200`, not `101`.
#[derive(Debug, Clone, Copy)]
pub struct ExtendedConnect;

/// HTTP/2 extended CONNECT with `:protocol: websocket` becomes the `GET` + `Upgrade:
/// websocket` of HTTP/1.1 (marked [`ExtendedConnect`]), so that routing, permissions and
/// the upstream see the one shape of a WebSocket handshake. Any other CONNECT is left
/// as it is (no route serves it). Called by the listener for every request: one method
/// comparison when it is not a CONNECT.
pub fn from_extended_connect<B>(req: &mut Request<B>) {
    if req.method() != Method::CONNECT {
        return;
    }
    let websocket = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if !websocket {
        return;
    }
    *req.method_mut() = Method::GET;
    let h = req.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    req.extensions_mut().insert(ExtendedConnect);
}

/// Whether `value` (a comma-separated header) lists `token`, in any case.
fn lists(h: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request asks to switch to WebSocket (`Connection: upgrade` and
/// `Upgrade: websocket`).
pub fn wants_websocket<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(header::UPGRADE)
        && lists(h, &header::UPGRADE, "websocket")
        && lists(h, &header::CONNECTION, "upgrade")
}

/// Why an upgrade request cannot be forwarded as one, before anything is sent.
fn refuse<B>(req: &Request<B>, route: &Route) -> Option<GatewayError> {
    if req.method() != Method::GET {
        return Some(GatewayError::BadRequest(format!(
            "a WebSocket handshake is a GET request, not {}",
            req.method()
        )));
    }
    if req.version() == Version::HTTP_10 || req.version() == Version::HTTP_09 {
        return Some(GatewayError::BadRequest(
            "a WebSocket handshake needs HTTP/1.1 or HTTP/2".into(),
        ));
    }
    let h = req.headers();
    let declared_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if declared_body {
        return Some(GatewayError::BadRequest(
            "a WebSocket handshake carries no request body".into(),
        ));
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        if !origin_allowed(req, route, origin) {
            let o = origin.to_str().unwrap_or("(not text)");
            return Some(GatewayError::AccessDenied {
                reason: DenyReason::OriginNotAllowed,
                description: format!(
                    "origin {o} may not open a WebSocket on route \"{}\"",
                    route.name
                ),
            });
        }
    }
    None
}

/// What the WebSocket step would do with an upgrade request on `route`, for `explain`:
/// `Ok(line)` when it would be forwarded (as a handshake, or as a plain request on a
/// route without `websocket:`), the refusal otherwise. `h2` marks an HTTP/2 extended
/// CONNECT. Nothing is sent.
pub fn explain<B>(req: &Request<B>, route: &Route, h2: bool) -> Result<String, GatewayError> {
    if req.method() == Method::CONNECT {
        return Err(GatewayError::BadRequest(
            "CONNECT is only accepted as an HTTP/2 WebSocket handshake (:protocol websocket)"
                .into(),
        ));
    }
    let Some(ws) = route.websocket else {
        if h2 {
            return Err(GatewayError::BadRequest(format!(
                "route \"{}\" does not accept WebSocket connections",
                route.name
            )));
        }
        return Ok(format!(
            "websocket: route \"{}\" does not accept WebSocket upgrades (no `websocket:` on the route): the Upgrade header is dropped and the request forwarded as a plain GET, so the client gets no 101 (over HTTP/2 the extended CONNECT is refused 400)",
            route.name
        ));
    };
    if !wants_websocket(req) {
        return Ok(format!(
            "websocket: not an upgrade (needs both `Connection: upgrade` and `Upgrade: websocket`): forwarded as a plain request on route \"{}\"",
            route.name
        ));
    }
    if let Some(e) = refuse(req, route) {
        return Err(e);
    }
    Ok(format!(
        "websocket: route \"{}\" accepts WebSocket upgrades: the handshake would be forwarded to the upstream, then a tunnel (idle_timeout {}s, max_duration {}s)",
        route.name,
        ws.idle_timeout.as_secs(),
        ws.max_duration.as_secs()
    ))
}

/// Whether the request asks for an upgrade or a tunnel at all (`Upgrade`, `Connection:
/// upgrade`, or `CONNECT`), WebSocket or not: what `explain` reports on.
pub fn asks_to_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || req.headers().contains_key(header::UPGRADE)
        || lists(req.headers(), &header::CONNECTION, "upgrade")
}

/// The route's CORS origins decide; without `cors`, only the request's own host.
fn origin_allowed<B>(req: &Request<B>, route: &Route, origin: &HeaderValue) -> bool {
    if let Some(cors) = &route.cors {
        return cors.check(req).is_some();
    }
    let Ok(o) = origin.to_str() else {
        return false;
    };
    let Some(host) = request_host(req) else {
        return false;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    // `scheme://host[:port]`: the authority part is compared, in any case.
    let authority = o.split_once("://").map_or("", |(_, a)| a);
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// The WebSocket step, in front of [`crate::proxy::Proxy`].
#[derive(Clone)]
pub struct WebSocketLayer {
    gw: Arc<Gateway>,
}

impl WebSocketLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        WebSocketLayer { gw }
    }
}

impl<S> Layer<S> for WebSocketLayer {
    type Service = WebSockets<S>;

    fn layer(&self, inner: S) -> WebSockets<S> {
        WebSockets {
            inner,
            gw: self.gw.clone(),
        }
    }
}

/// Forwards WebSocket upgrades on `websocket:` routes; everything else goes to `inner`.
#[derive(Clone)]
pub struct WebSockets<S> {
    inner: S,
    gw: Arc<Gateway>,
}

impl<S, B> Service<Request<B>> for WebSockets<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Rejection>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(route) = routed(&req).and_then(|r| r.route.clone()) else {
            return Step::inner(self.inner.call(req));
        };
        let h2 = req.extensions().get::<ExtendedConnect>().is_some();
        if req.method() == Method::CONNECT {
            // Left a CONNECT by the listener: not a WebSocket (an HTTP/2 extended CONNECT
            // for another `:protocol`, or a plain tunnel request). tollgate is no forward
            // proxy and tunnels nothing else: never sent upstream.
            decision::note(&req, || {
                "websocket: a CONNECT that is not a WebSocket handshake is refused".into()
            });
            return Step::reject(GatewayError::BadRequest(
                "CONNECT is only accepted as an HTTP/2 WebSocket handshake (:protocol websocket)"
                    .into(),
            ));
        }
        let Some(ws) = route.websocket else {
            if h2 {
                return Step::reject(GatewayError::BadRequest(format!(
                    "route \"{}\" does not accept WebSocket connections",
                    route.name
                )));
            }
            return Step::inner(self.inner.call(req));
        };
        if !wants_websocket(&req) {
            return Step::inner(self.inner.call(req));
        }
        if let Some(e) = refuse(&req, &route) {
            decision::note(&req, || format!("websocket: handshake refused: {e}"));
            return Step::reject(e);
        }
        decision::note(&req, || {
            "websocket: handshake forwarded to the upstream".into()
        });
        let gw = self.gw.clone();
        Step::boxed(async move {
            handshake(gw, route, ws, req, h2)
                .await
                .map_err(Rejection::from)
        })
    }
}

/// Sends the handshake to the upstream and, on `101`, answers the client and starts the
/// tunnel.
async fn handshake<B>(
    gw: Arc<Gateway>,
    route: Arc<Route>,
    ws: WebSocket,
    mut req: Request<B>,
    h2: bool,
) -> Result<Response<Body>, GatewayError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(up) = route.upstream.clone() else {
        return Err(GatewayError::NotFound);
    };
    let Some(client_side) = req.extensions_mut().remove::<OnUpgrade>() else {
        // Not served by tollgate's listener (e.g. embedded): nothing to switch.
        return Err(GatewayError::BadRequest(
            "this connection cannot be upgraded".into(),
        ));
    };
    let path = routed(&req).map(|r| r.path.to_string()).unwrap_or_default();
    let uri = upstream_uri(&up, &path, req.uri())?;
    let conn = req.extensions().get::<Arc<ConnInfo>>().cloned();
    let identity = req.extensions().get::<Arc<Identity>>().cloned();
    let unknown = HeaderValue::from_static("unknown");
    let cx = ForwardContext {
        client_ip: conn.as_ref().map_or(&unknown, |c| &c.ip),
        tls: conn.as_ref().is_some_and(|c| c.tls),
        original_host: request_host(&req),
        identity: identity.as_deref(),
    };
    let (mut parts, _body) = req.into_parts();
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    prepare_headers(&mut parts.headers, &up, &cx);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if h2 {
        // RFC 8441 has no key/accept exchange; the HTTP/1.1 upstream needs one.
        if !parts.headers.contains_key(&SEC_WEBSOCKET_KEY) {
            let key: [u8; 16] = rand::random();
            let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
            if let Ok(v) = HeaderValue::from_str(&key) {
                parts.headers.insert(SEC_WEBSOCKET_KEY.clone(), v);
            }
        }
        parts
            .headers
            .entry(header::SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }
    // Several endpoints: the balancer picks one, and the handshake names it as `Host`.
    let pool = match &up.endpoints {
        Some(eps) => {
            let list = eps.list();
            if list.is_empty() {
                // A `dns: per_address` name without an address.
                return Err(upstream_error(
                    &up,
                    crate::client::UpstreamFailure::Connect(crate::error::Cause::new(
                        std::io::Error::new(
                            std::io::ErrorKind::AddrNotAvailable,
                            "the upstream has no known address",
                        ),
                    )),
                ));
            }
            let ep = &list[eps.pick(&list, 0)];
            parts.headers.insert(header::HOST, ep.host.clone());
            ep.pool(&up.client).clone()
        }
        None => up.pool().clone(),
    };
    let out = Request::from_parts(parts, crate::body::empty());
    let mut resp = connect_upgradable(&pool, out, up.timeout)
        .await
        .map_err(|f| upstream_error(&up, f))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream said no (or does not speak WebSocket): its answer, as it is.
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(&X_REQUEST_ID);
        return Ok(Response::from_parts(
            parts,
            body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
        ));
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&X_REQUEST_ID);
    if h2 {
        parts.status = StatusCode::OK;
        parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    } else {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    gw.tunnels.opened.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(tunnel(
        gw,
        route.name.clone(),
        ws,
        client_side,
        upstream_side,
        conn,
    ));
    Ok(Response::from_parts(parts, crate::body::empty()))
}

/// Copies bytes both ways until one side closes or a timeout ends the tunnel. `_conn`
/// holds the client connection's slot (`max_connections`) while the tunnel lives.
async fn tunnel(
    gw: Arc<Gateway>,
    route: Arc<str>,
    ws: WebSocket,
    client: OnUpgrade,
    upstream: OnUpgrade,
    _conn: Option<Arc<ConnInfo>>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(route = %route, error = %e, "WebSocket upgrade did not complete");
            return;
        }
    };
    gw.tunnels.open.fetch_add(1, Ordering::Relaxed);
    let start = tokio::time::Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Activity::new(TokioIo::new(client), start, last.clone());
    let mut upstream = Activity::new(TokioIo::new(upstream), start, last.clone());
    let idle = async {
        loop {
            let seen = Duration::from_millis(last.load(Ordering::Relaxed));
            let due = start + seen + ws.idle_timeout;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok((up, down)) => format!("closed ({up} bytes up, {down} bytes down)"),
            Err(e) => format!("broken: {e}"),
        },
        _ = idle => format!("idle for {:?}", ws.idle_timeout),
        _ = tokio::time::sleep(ws.max_duration) => format!("max_duration {:?} reached", ws.max_duration),
    };
    gw.tunnels.open.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(route = %route, lasted = ?start.elapsed(), "WebSocket tunnel {end}");
}

/// An upgraded connection that notes when data last arrived on it (milliseconds after
/// `start`, shared by both sides of the tunnel), for `idle_timeout`.
struct Activity<T> {
    io: T,
    start: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn new(io: T, start: tokio::time::Instant, last: Arc<AtomicU64>) -> Self {
        Activity { io, start, last }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let ms = self.start.elapsed().as_millis() as u64;
            self.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::route::layer::RouteLayer;
    use crate::testing::{config, gateway, get, Reached, Stub};

    const CONFIG: &str = r#"
upstreams:
  - name: feed
    url: "http://127.0.0.1:9"
routes:
  - {name: live, path_prefix: /live, upstream: feed, auth: none, websocket: {}}
  - {name: plain, path_prefix: /plain, upstream: feed, auth: none}
"#;

    fn upgrade(method: Method, path: &str) -> Request<http_body_util::Empty<Bytes>> {
        let mut req = get(path);
        *req.method_mut() = method;
        let h = req.headers_mut();
        h.insert(header::HOST, HeaderValue::from_static("gw.example"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        req
    }

    // Behaviour: a handshake that cannot be a WebSocket one (not GET, a declared body,
    // a foreign Origin) and any CONNECT are refused before anything is sent; a plain
    // request on a `websocket:` route, and an upgrade request on a route without it,
    // go on as ordinary requests.
    #[tokio::test]
    async fn bad_handshakes_are_refused_and_ordinary_requests_pass() {
        let (gw, _dir) = gateway(&config(CONFIG));
        let reached = Reached::default();
        let svc =
            RouteLayer::new(gw.clone()).layer(WebSocketLayer::new(gw).layer(Stub(reached.clone())));

        let refusals = [
            (upgrade(Method::POST, "/live/feed"), 400),
            (
                {
                    let mut r = upgrade(Method::GET, "/live/feed");
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
                    r
                },
                400,
            ),
            (
                {
                    let mut r = upgrade(Method::GET, "/live/feed");
                    r.headers_mut().insert(
                        header::ORIGIN,
                        HeaderValue::from_static("https://evil.example"),
                    );
                    r
                },
                403,
            ),
            (upgrade(Method::CONNECT, "/plain/x"), 400),
        ];
        for (i, (req, status)) in refusals.into_iter().enumerate() {
            let err = svc.clone().oneshot(req).await.expect_err("refused");
            assert_eq!(err.error.status(), status, "case {i}");
        }
        assert_eq!(
            reached.count(),
            0,
            "a refused handshake reached the upstream side"
        );

        svc.clone().oneshot(get("/live/feed")).await.unwrap();
        svc.oneshot(upgrade(Method::GET, "/plain/x")).await.unwrap();
        assert_eq!(reached.count(), 2);
        assert!(reached.last().headers().contains_key(header::UPGRADE));
    }
}
