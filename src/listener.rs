//! Step 1 of the request path: accepting connections.
//!
//! Plain listeners speak HTTP/1.1 and h2c (prior knowledge); TLS listeners negotiate
//! h2 or http/1.1 by ALPN (rustls, optional client certificates). The connection limit,
//! the header size cap and the header read timeout are enforced here. On shutdown the
//! accept loops stop and in-flight requests get `request_timeout` to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::body::Body;
use crate::drain::Drain;
use crate::error::GatewayError;
use crate::gateway::Gateway;

pub use crate::conn::ConnInfo;
use crate::parse_errors::JsonParseErrors;

/// The HTTP settings every listener shares.
pub fn http_builder(gw: &Gateway) -> auto::Builder<TokioExecutor> {
    let limits = gw.current().server.limits.clone();
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        // header_read_timeout runs once per request head: on tollgate's own deadlines,
        // a fraction of a tokio timer's cost (`timer`).
        .timer(crate::timer::HyperTimer)
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // Heads well over the limit still parse, so that the gateway answers SPEC's
        // JSON 431 (with the request id and CORS headers) rather than hyper its bare
        // one; only heads over four times the limit (at least 64 KiB) are cut off by
        // hyper itself. Memory stays bounded: the read buffer grows only as bytes
        // arrive, `header_read_timeout` bounds how long, and `max_connections` how many.
        .max_buf_size((limits.max_header_bytes * 4).max(64 * 1024))
        .max_headers(512);
    b.http2()
        .timer(TokioTimer::new())
        // As for HTTP/1 above: header lists well over the limit still reach tollgate's
        // JSON 431 (HTTP/2 counts 32 bytes more per header than the head's text).
        .max_header_list_size(
            ((limits.max_header_bytes * 4).max(64 * 1024)).min(u32::MAX as usize) as u32,
        )
        .max_concurrent_streams(256)
        // RFC 8441: WebSocket over HTTP/2 (extended CONNECT), for `websocket:` routes.
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// What a listener serves, as far as accepting its connections differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Requests to route (the public listener) or to decide on (the decision
    /// listener): answers to unparsable requests count in `tollgate_requests_total`
    /// like every other answer there.
    Requests,
    /// The admin API, the redirect listener: not counted.
    Other,
}

/// Accepts on `listener` until `shutdown` flips, serving each connection with `svc`
/// (a clone per request, with the connection's [`ConnInfo`] in its extensions).
pub async fn serve<S>(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: bool,
    serving: Serving,
    mut shutdown: watch::Receiver<bool>,
    svc: S,
) where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let drain = Drain::new();
    let max_conn = gw.current().server.limits.max_connections;
    let permits = Arc::new(Semaphore::new(max_conn));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    loop {
        let slot = tokio::select! {
            s = slot(&permits, &refusals) => s,
            _ = shutdown.changed() => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        // The slot was taken before the connection came; a connection that closed in
        // the meantime may have freed one to serve it with.
        let slot = match slot {
            Slot::Refuse(r) => match permits.clone().try_acquire_owned() {
                Ok(p) => {
                    drop(r);
                    Slot::Serve(p)
                }
                Err(_) => Slot::Refuse(r),
            },
            serve => serve,
        };
        let permit = match slot {
            Slot::Serve(p) => p,
            Slot::Refuse(r) => {
                gw.metrics.connections_refused_total.inc();
                tracing::warn!(remote = %remote, max_connections = max_conn, "connection limit reached; refusing");
                tokio::spawn(async move {
                    if !tls {
                        refuse(stream, max_conn).await;
                    }
                    drop(r);
                });
                continue;
            }
        };
        let gw2 = gw.clone();
        // Built per connection from the config now serving, so that reloaded limits
        // (header size, header read timeout) apply to new connections.
        let builder = http_builder(&gw);
        let svc = svc.clone();
        let member = drain.conn();
        tokio::spawn(async move {
            gw2.metrics.open_connections.inc();
            gw2.metrics.connections_total.inc();
            let tls_cfg = if tls {
                gw2.current().server.tls.clone()
            } else {
                None
            };
            let permit = Arc::new(permit);
            // One service per connection, called in place rather than cloned per
            // request (a clone is an atomic increment and decrement per layer).
            let svc = std::sync::Mutex::new(svc);
            // Boxed: hyper keeps a slot for the request future on every connection,
            // idle ones included, so an unboxed future would cost its full size
            // per idle keep-alive connection.
            // Set once hyper has handed a request to the stack: from then on nothing
            // the connection writes is one of hyper's own error answers to an
            // unparsable first head (`JsonParseErrors`).
            let served = Arc::new(AtomicBool::new(false));
            let seen = served.clone();
            let gw_req = gw2.clone();
            // Where answers to unparsable requests are counted (see `Serving`).
            let counter = (serving == Serving::Requests).then(|| gw2.clone());
            let service = move |info: Arc<ConnInfo>| {
                service_fn(move |mut req: Request<Incoming>| {
                    if !seen.load(Ordering::Relaxed) {
                        seen.store(true, Ordering::Relaxed);
                    }
                    // Measured before any layer adds a header of its own, against the
                    // limit serving now (looked up only for a head over the smallest
                    // limit a config may set); marked only when refused further down.
                    let head = crate::limits::measure_head(&req);
                    if head.bytes > crate::runtime::MIN_MAX_HEADER_BYTES
                        && head.bytes > gw_req.runtime.load().server.limits.max_header_bytes
                    {
                        req.extensions_mut().insert(crate::limits::HeadTooLarge);
                    }
                    if !head.host && req.version() == http::Version::HTTP_11 {
                        req.extensions_mut()
                            .insert(crate::route::layer::HostMissing);
                    }
                    req.extensions_mut().insert(info.clone());
                    crate::upgrade::from_extended_connect(&mut req);
                    Box::pin(call_ready(&svc, req))
                })
            };
            match tls_cfg {
                // Boxed: a TLS connection's state (the handshake, the TLS stream) is
                // ~3 KB that a plain connection's task would otherwise carry too.
                Some(cfg) => Box::pin(async {
                    let handshake = TlsAcceptor::from(cfg).accept(stream);
                    let timeout = gw2.current().server.limits.header_read_timeout;
                    match tokio::time::timeout(timeout, handshake).await {
                        Ok(Ok(s)) => {
                            // The client certificate (server.tls.client_ca), for
                            // certificate-bound tokens (RFC 8705).
                            let leaf = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.as_ref());
                            let info = Arc::new(
                                ConnInfo::new(remote, true)
                                    .with_client_cert(leaf)
                                    .with_slot(permit.clone())
                                    .measuring_heads(),
                            );
                            let io = TokioIo::new(
                                JsonParseErrors::new(s, remote, served).counted_in(counter),
                            );
                            let conn = builder.serve_connection_with_upgrades(io, service(info));
                            let _ = member.watch(conn.into_owned()).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(remote = %remote, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(remote = %remote, "TLS handshake timed out"),
                    }
                })
                .await,
                None => {
                    let info = Arc::new(
                        ConnInfo::new(remote, false)
                            .with_slot(permit.clone())
                            .measuring_heads(),
                    );
                    // hyper's own answer to an unparsable head gets SPEC's JSON body.
                    let io = TokioIo::new(
                        JsonParseErrors::new(stream, remote, served).counted_in(counter),
                    );
                    let conn = builder.serve_connection_with_upgrades(io, service(info));
                    let _ = member.watch(conn.into_owned()).await;
                }
            }
            // The slot first: once the gauge says a connection is gone, its slot is
            // free for the next one (unless a WebSocket tunnel still holds it).
            drop(permit);
            gw2.metrics.open_connections.dec();
        });
    }
    drop(listener);
    let grace = gw.current().server.limits.request_timeout;
    if tokio::time::timeout(grace, drain.shutdown()).await.is_err() {
        tracing::warn!(
            "some connections were still busy after {grace:?}; they end as tollgate exits"
        );
    }
}

pin_project_lite::pin_project! {
    /// The answer of a service called in place, or of a clone that waits to be ready.
    #[project = CallProj]
    pub enum Call<F, W> {
        Now { #[pin] fut: F },
        Waiting { #[pin] fut: W },
    }
}

impl<F, W, T, E> std::future::Future for Call<F, W>
where
    F: std::future::Future<Output = Result<T, E>>,
    W: std::future::Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            CallProj::Now { fut } => fut.poll(cx),
            CallProj::Waiting { fut } => fut.poll(cx),
        }
    }
}

/// Calls the connection's service in place when it is ready now (the stack always is:
/// its limits are decided per request), else a clone of it once it is ready.
fn call_ready<S, R>(
    svc: &std::sync::Mutex<S>,
    req: R,
) -> Call<S::Future, tower::util::Oneshot<S, R>>
where
    S: tower::Service<R> + Clone,
{
    let mut s = svc.lock().unwrap_or_else(|p| p.into_inner());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match s.poll_ready(&mut cx) {
        std::task::Poll::Ready(Ok(())) => Call::Now { fut: s.call(req) },
        _ => Call::Waiting {
            fut: s.clone().oneshot(req),
        },
    }
}

/// Connections being refused at once when `max_connections` are open; beyond these,
/// new connections wait in the kernel's accept backlog.
const REFUSALS_AT_ONCE: usize = 64;

enum Slot {
    Serve(OwnedSemaphorePermit),
    Refuse(OwnedSemaphorePermit),
}

/// A connection slot, or when all `max_connections` are taken, a refusal slot.
async fn slot(permits: &Arc<Semaphore>, refusals: &Arc<Semaphore>) -> Slot {
    if let Ok(p) = permits.clone().try_acquire_owned() {
        return Slot::Serve(p);
    }
    if let Ok(r) = refusals.clone().try_acquire_owned() {
        return Slot::Refuse(r);
    }
    tokio::select! {
        Ok(p) = permits.clone().acquire_owned() => Slot::Serve(p),
        Ok(r) = refusals.clone().acquire_owned() => Slot::Refuse(r),
    }
}

/// Over `max_connections` (plain HTTP/1): a quick SPEC-shaped 503 and close, rather than
/// leaving the client in the backlog until it times out. What the client already sent
/// is read first (briefly) so that closing does not reset the answer away.
async fn refuse(mut stream: tokio::net::TcpStream, limit: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let brief = Duration::from_millis(200);
    let mut buf = [0u8; 4096];
    // The head as far as it arrives within `brief` (it may come in several reads).
    let mut n = 0;
    let _ = tokio::time::timeout(brief, async {
        while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    })
    .await;
    // The client's own request id when it sent a sane one, as on every other answer.
    let rid = client_request_id(&buf[..n]).unwrap_or_else(crate::request_id::generate);
    let answer = GatewayError::TooManyConnections(limit).to_http1_bytes(rid.to_str().unwrap_or(""));
    let _ = tokio::time::timeout(brief, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
    let _ = tokio::time::timeout(brief, async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The sane `X-Request-Id` of the HTTP/1 request head at the start of `bytes`, if the
/// head is there whole (and names one id).
fn client_request_id(bytes: &[u8]) -> Option<http::HeaderValue> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(bytes).ok()?.is_complete().then_some(())?;
    let mut ids = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-request-id"));
    let id = ids.next()?;
    if ids.next().is_some() {
        return None;
    }
    let v = http::HeaderValue::from_bytes(id.value).ok()?;
    crate::request_id::is_sane(&v).then_some(v)
}

/// The public listener.
pub async fn serve_public(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let tls = gw.current().server.tls.is_some();
    let svc = crate::stack::public(&gw);
    serve(gw, listener, tls, Serving::Requests, shutdown, svc).await
}

/// `redirect_listen`: answers 308 to `https://{host}{path}` — the port the clients use
/// for HTTPS is not the listener's own behind a load balancer, so none is added unless
/// `redirect_https_port` names one.
pub async fn serve_redirect(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let g = gw.clone();
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let port = g.current().server.redirect_https_port;
        std::future::ready(Ok::<_, Infallible>(redirect(port, &req)))
    });
    serve(gw, listener, false, Serving::Other, shutdown, svc).await
}

fn redirect<B>(port: Option<u16>, req: &Request<B>) -> Response<Body> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(crate::route::normalize_host)
        .unwrap_or_default();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let port = match port {
        None | Some(443) => String::new(),
        Some(p) => format!(":{p}"),
    };
    let location = format!("https://{host}{port}{pq}");
    // Every response carries the request id (SPEC), the redirect too.
    let rid = crate::request_id::of(req);
    match http::HeaderValue::from_str(&location) {
        Ok(v) if !host.is_empty() => {
            let mut resp = Response::new(crate::body::empty());
            *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(http::header::LOCATION, v);
            resp.headers_mut()
                .insert(crate::request_id::X_REQUEST_ID.clone(), rid);
            resp
        }
        _ => GatewayError::BadRequest("no usable Host header to redirect to".into())
            .to_response(rid.to_str().unwrap_or("")),
    }
}

/// A listening socket on `addr`. The error names the address: "cannot listen on
/// 127.0.0.1:8080: Address already in use (os error 98)".
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    };
    bind().map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: the connection-limit refusal keeps a client's sane request id, and
    // only that: not an insane one, not one of two, not one from a head cut short.
    #[test]
    fn refusal_request_id() {
        let id = |b: &[u8]| client_request_id(b).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            id(b"GET / HTTP/1.1\r\nHost: a\r\nx-REQUEST-id: ab-1\r\n\r\n").as_deref(),
            Some("ab-1")
        );
        assert_eq!(id(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(id(b"GET / HTTP/1.1\r\nX-Request-Id: a b\r\n\r\n"), None);
        assert_eq!(
            id(b"GET / HTTP/1.1\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\r\n"),
            None
        );
        assert_eq!(id(b"GET / HTTP/1.1\r\nX-Request-Id: ab-1\r\n"), None);
        assert_eq!(id(b"\x16\x03\x01 not http"), None);
    }

    // Behaviour: SPEC's redirect is https://{host}{path}; a port only when configured.
    #[test]
    fn redirect_location() {
        let req = Request::get("/a/b?c=1")
            .header("host", "API.example.com:8080")
            .body(())
            .unwrap();
        let loc = |port| {
            redirect(port, &req).headers()[http::header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(loc(None), "https://api.example.com/a/b?c=1");
        assert_eq!(loc(Some(443)), "https://api.example.com/a/b?c=1");
        assert_eq!(loc(Some(8443)), "https://api.example.com:8443/a/b?c=1");
        let no_host = Request::get("/").body(()).unwrap();
        assert_eq!(redirect(None, &no_host).status(), 400);
    }
}
