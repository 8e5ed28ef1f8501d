//! The gateway's HTTP client side: the connector (TCP + rustls, one deadline around the
//! whole connect); a lean per-upstream HTTP/1.1 connection [`Pool`] for forwarded
//! requests; and [`fetch`], a small exchange with bounded time and body size for the
//! gateway's calls to identity providers (JWKS, discovery, introspection, upstream
//! token endpoints). Every connection is dialled by [`crate::outbound::Dialer`]: directly,
//! or through an HTTP CONNECT tunnel when an outbound proxy applies.
//!
//! Forwarded requests go through [`Pool`] on `hyper::client::conn::http1` rather than
//! hyper-util's general pooled client: one upstream is one origin, so the pool needs no
//! keyed lookup, no checkout future and no background task per request; and a pooled
//! connection runs on no task of its own: the request using it drives it, so that a
//! request and its upstream exchange cost one task's polls, not two tasks' and their
//! wake-ups (history in bench/ANALYSIS.md). Framing stays hyper's.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

use crate::body::{Body, BoxError};
use crate::error::Cause;
use crate::outbound::{Dialer, Outbound};
use crate::service::request_deadline;

pub(crate) type Connector = TimeoutConnector<Dialer>;
type Pools = std::collections::HashMap<(Scheme, Authority), Arc<Pool>>;
type H2Conns = std::collections::HashMap<(Scheme, Authority), Arc<H2Conn>>;

/// Idle connections of the general client are closed after this long unused (below the
/// common keep-alive timeouts, e.g. nginx's 75 s, so that tollgate closes first).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const FETCH_POOL_MAX_IDLE: usize = 32;

/// An HTTP client for one CA bundle and connect timeout: hyper-util's pooled client for
/// the gateway's own small calls (`fetch`), and the connector that forwarded requests'
/// [`Pool`](crate::upstream::Pool)s dial with.
#[derive(Clone)]
pub struct HttpClient {
    general: Client<Connector, Body>,
    pub(crate) connector: Connector,
    /// One pool per origin. The client outlives reloads (the config registry keeps it),
    /// so warm upstream connections survive a reload too.
    pub(crate) pools: Arc<Mutex<Pools>>,
    /// For `protocol: h2` upstreams: the same TLS settings, offering only `h2` by ALPN.
    pub(crate) h2_connector: Connector,
    /// One HTTP/2 connection per origin (`protocol: h2 | h2c`), kept across reloads.
    pub(crate) h2_conns: Arc<Mutex<H2Conns>>,
}

impl HttpClient {
    /// How this client reaches its targets (directly, or through which proxy).
    pub fn outbound(&self) -> &Outbound {
        &self.connector.inner.outbound
    }

    pub fn request(&self, req: Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        self.general.request(req)
    }
}

/// Builds a pooled client. `connect_timeout` covers TCP, the proxy's CONNECT (when one
/// applies, see `outbound`) and the TLS handshake.
pub fn build_client(
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    outbound: Outbound,
) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    // Inside a tunnel, TLS to the target offers what the direct connector offers:
    // nothing for HTTP/1.1 (as hyper-rustls with only http1), `h2` for HTTP/2.
    let h2_tls = {
        let mut c = (*tls).clone();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    };
    let to_proxy = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http.clone());
    let connector = TimeoutConnector {
        inner: Dialer {
            direct: to_proxy.clone(),
            to_proxy: to_proxy.clone(),
            tls: tls.clone(),
            outbound: outbound.clone(),
            pin: None,
        },
        timeout: connect_timeout,
    };
    let h2_connector = TimeoutConnector {
        inner: Dialer {
            direct: hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*tls).clone())
                .https_or_http()
                .enable_http2()
                .wrap_connector(http),
            to_proxy,
            tls: h2_tls,
            outbound,
            pin: None,
        },
        timeout: connect_timeout,
    };
    let general = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(FETCH_POOL_MAX_IDLE)
        .build(connector.clone());
    HttpClient {
        general,
        connector,
        pools: Arc::default(),
        h2_connector,
        h2_conns: Arc::default(),
    }
}

impl TimeoutConnector<Dialer> {
    /// The same connector, dialling `addr` whatever the target's name: TLS still
    /// sends and verifies the name (`upstreams[].dns: per_address`).
    pub(crate) fn pinned(&self, addr: std::net::IpAddr) -> Connector {
        let mut c = self.clone();
        c.inner.pin = Some(addr);
        c
    }
}

/// Marks a connect attempt that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out")]
pub struct ConnectTimeout;

/// Puts one deadline around the whole connect (TCP + TLS).
#[derive(Clone)]
pub struct TimeoutConnector<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower::Service<Uri> for TimeoutConnector<C>
where
    C: tower::Service<Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    C::Response: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let t = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(t, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimeout) as BoxError),
            }
        })
    }
}

/// How one of the gateway's own exchanges failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect: {0}")]
    Connect(Cause),
    #[error("{0}")]
    Exchange(Cause),
    #[error("reading response: {0}")]
    Body(Cause),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

fn classify(e: hyper_util::client::legacy::Error) -> FetchError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = src {
        if s.is::<ConnectTimeout>() {
            return FetchError::Connect(Cause::new(ConnectTimeout));
        }
        src = s.source();
    }
    if e.is_connect() {
        FetchError::Connect(Cause::new(e))
    } else {
        FetchError::Exchange(Cause::new(e))
    }
}

/// A small HTTP exchange with bounded time and body size (IdP and token endpoints).
pub async fn fetch(
    client: &HttpClient,
    req: Request<Body>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), FetchError> {
    let work = async {
        let resp = client.request(req).await.map_err(classify)?;
        let (parts, body) = resp.into_parts();
        let limited = http_body_util::Limited::new(body, max_bytes);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| FetchError::Body(Cause(Arc::from(e))))?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// Idle connections kept per upstream; more are closed once their exchange ends. Sized
/// for bursts: with 256, 64 HTTP/2 clients x 10 streams closed and reopened hundreds of
/// upstream connections per second (h2 bench: 19.9 -> 13.9 us CPU per request at 1024).
const POOL_MAX_IDLE: usize = 1024;

/// What the connector hands back: a TCP (+ TLS, or tunnel) stream to the upstream.
type UpstreamIo = <Connector as tower::Service<Uri>>::Response;

/// Idle HTTP/1.1 connections to one upstream, most recently used last.
///
/// A connection runs on no task of its own: the request that uses it drives it (see
/// [`Link`]), and an idle one is watched only through its socket's waker, which asks the
/// pool to sweep when the upstream closes it (or sends anything unasked).
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// Set when an idle connection's socket had an event: the next checkout sweeps
    /// first (a task spawned by the event sweeps too, so that a closed connection's
    /// socket does not wait for the next request to be closed).
    stirred: AtomicBool,
    connector: Connector,
    /// `scheme://authority/`, what the connector dials.
    uri: Uri,
}

struct Idle {
    link: Box<Link>,
    since: Instant,
}

/// One HTTP/1.1 connection: hyper's request sender and the connection state machine
/// (hyper's framing, parsing and keep-alive rules), kept together and driven by whoever
/// holds them: the request's own task while it is in use ([`exchange`], then
/// [`PooledBody`]), nobody while it is idle in the pool.
struct Link {
    tx: SendRequest<Body>,
    conn: hyper::client::conn::http1::Connection<UpstreamIo, Body>,
    /// Polls of an idle connection register this waker (see [`Watch`]).
    waker: Waker,
    watch: Arc<Watch>,
}

impl Link {
    /// Polls the connection with the pool's waker, as it goes idle (or is swept): true
    /// when it is open and ready for another request.
    fn park(&mut self) -> Parked {
        self.watch.idle.store(true, Ordering::Release);
        let mut cx = Context::from_waker(&self.waker);
        match self.conn.poll_without_shutdown(&mut cx) {
            Poll::Ready(r) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "idle upstream connection ended");
                }
                Parked::Closed
            }
            Poll::Pending if self.tx.is_ready() => Parked::Ready,
            Poll::Pending => {
                self.watch.idle.store(false, Ordering::Release);
                Parked::Busy
            }
        }
    }

    /// Drives the connection from the caller's task: `Ready` once it is over (closed,
    /// failed, or switched protocols), after which it must not be polled again.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.conn.poll_without_shutdown(cx).map(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        })
    }
}

enum Parked {
    /// Idle and open: may go back to the pool.
    Ready,
    /// Closed or failed: dropped.
    Closed,
    /// Still writing the request body (the upstream answered before reading all of it).
    Busy,
}

/// The waker an idle connection's socket holds: an event on it (the upstream closing
/// the connection, most often) marks the pool for a sweep. Events while the connection
/// is in use (`idle` false) are its user's business, not the pool's.
struct Watch {
    pool: Weak<Pool>,
    idle: AtomicBool,
}

impl Wake for Watch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.idle.load(Ordering::Acquire) {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.stir();
        }
    }
}

impl Pool {
    pub fn new(connector: Connector, uri: Uri) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            stirred: AtomicBool::new(false),
            connector,
            uri,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection. When an idle connection's socket has
    /// had an event since the last look, the closed ones are dropped first.
    fn checkout(&self) -> Option<Box<Link>> {
        let mut idle = self.idle();
        if self.stirred.load(Ordering::Acquire) && self.stirred.swap(false, Ordering::AcqRel) {
            sweep(&mut idle);
        }
        let c = idle.pop()?;
        drop(idle);
        c.link.watch.idle.store(false, Ordering::Release);
        Some(c.link)
    }

    /// An idle connection's socket had an event: sweep now on a task of its own (once
    /// per burst), so that a connection the upstream closed is closed here too.
    fn stir(self: Arc<Self>) {
        if self.stirred.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if self.stirred.swap(false, Ordering::AcqRel) {
                    sweep(&mut self.idle());
                }
            });
        }
    }

    /// Takes back a connection whose response has been read to its end: into the pool
    /// when it is open and idle; finished on a task of its own when it is still writing
    /// the request body (then pooled or dropped); dropped when it is closed. Closes the
    /// oldest idle ones past the idle timeout or over the cap.
    fn put(self: Arc<Self>, mut link: Box<Link>) {
        match link.park() {
            Parked::Ready => {}
            Parked::Closed => return,
            Parked::Busy => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                rt.spawn(async move {
                    let done = std::future::poll_fn(|cx| match link.drive(cx) {
                        Poll::Ready(()) => Poll::Ready(None),
                        Poll::Pending if link.tx.is_ready() => Poll::Ready(Some(())),
                        Poll::Pending => Poll::Pending,
                    })
                    .await;
                    if done.is_some() {
                        self.put(link);
                    }
                });
                return;
            }
        }
        let now = Instant::now();
        let mut idle = self.idle();
        let stale = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) > POOL_IDLE_TIMEOUT)
            .count();
        let over = (idle.len() + 1).saturating_sub(POOL_MAX_IDLE);
        let gone: Vec<Idle> = idle.drain(..stale.max(over)).collect();
        idle.push(Idle { link, since: now });
        drop(idle);
        drop(gone);
    }

    async fn connect(self: &Arc<Self>) -> Result<Box<Link>, UpstreamFailure> {
        let io = dial(&self.connector, &self.uri).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| UpstreamFailure::Connect(Cause::new(e)))?;
        let watch = Arc::new(Watch {
            pool: Arc::downgrade(self),
            idle: AtomicBool::new(false),
        });
        Ok(Box::new(Link {
            tx,
            conn,
            waker: Waker::from(watch.clone()),
            watch,
        }))
    }
}

/// Drops the idle connections that have closed (or received anything unasked); polls
/// the others again with their pool waker.
fn sweep(idle: &mut Vec<Idle>) {
    idle.retain_mut(|c| matches!(c.link.park(), Parked::Ready));
}

/// A new connection to `uri`'s origin (TCP, and TLS for https), within the connector's
/// deadline.
async fn dial(
    connector: &Connector,
    uri: &Uri,
) -> Result<<Connector as tower::Service<Uri>>::Response, UpstreamFailure> {
    connector
        .clone()
        .oneshot(uri.clone())
        .await
        .map_err(|e| UpstreamFailure::Connect(Cause(Arc::from(e))))
}

/// Sends an upgrade request (a WebSocket handshake) to `pool`'s upstream on a new
/// connection of its own, which can switch protocols and never goes back to the pool;
/// waits for the response head at most `timeout`.
pub async fn connect_upgradable(
    pool: &Arc<Pool>,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, UpstreamFailure> {
    let work = async {
        let io = dial(&pool.connector, &pool.uri).await?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| UpstreamFailure::Connect(Cause::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgraded upstream connection ended");
            }
        });
        tx.send_request(req)
            .await
            .map_err(|e| UpstreamFailure::Broken(Cause::new(e)))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamFailure::Timeout),
    }
}

/// Sends `req` (origin-form URI, `Host` set) to `pool`'s upstream and waits for the
/// response head as `wait` says. A pooled connection that turns out closed before
/// the request was written is replaced by a new one, once; a request that was written
/// is never resent.
pub async fn send_pooled(
    pool: &Arc<Pool>,
    req: Request<Body>,
    wait: Wait,
) -> Result<Response<PooledBody>, UpstreamFailure> {
    send_pooled_or_back(pool, req, wait)
        .await
        .map_err(|(failure, _)| failure)
}

/// A failed send, and the request when it was never written (no connection could be
/// be made, or the pooled one had closed): such a request, its body untouched, may go
/// to another endpoint (`proxy::forward_balanced`).
pub type Unsent = (UpstreamFailure, Option<Request<Body>>);

/// [`send_pooled`] for an upstream with several endpoints: a request that was never
/// written is handed back with the failure instead of being dropped.
pub async fn send_pooled_or_back(
    pool: &Arc<Pool>,
    req: Request<Body>,
    wait: Wait,
) -> Result<Response<PooledBody>, Unsent> {
    // The exchange is pinned where it is made and polled beside its deadline
    // (`within`), without `timeout(t, work)` moving the exchange into its own future
    // and that again into this one's state — two copies per request
    // (bench/ANALYSIS.md, "Smaller futures").
    let mut work = std::pin::pin!(async {
        let mut req = req;
        if let Some(link) = pool.checkout() {
            match exchange(link, req).await {
                (Ok(resp), link) => return Ok(pooled_response(pool, link, resp)),
                (Err(mut e), _) => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        return Err((UpstreamFailure::Broken(Cause::new(e.into_error())), None))
                    }
                },
            }
        }
        // Boxed: dialling and the handshake hold ~2.4 KB of state that only a new
        // connection needs; unboxed, every request's future would carry it (and the
        // proxy's boxed future copies all of it on every request).
        let link = match Box::pin(pool.connect()).await {
            Ok(link) => link,
            Err(f) => return Err((f, Some(req))),
        };
        match exchange(link, req).await {
            (Ok(resp), link) => Ok(pooled_response(pool, link, resp)),
            (Err(mut e), _) => {
                let back = e.take_message();
                Err((UpstreamFailure::Broken(Cause::new(e.into_error())), back))
            }
        }
    });
    match within(wait, work.as_mut()).await {
        Some(r) => r,
        None => Err((UpstreamFailure::Timeout, None)),
    }
}

/// How long an exchange waits for the upstream's response head.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    timeout: Duration,
    forwarded: bool,
}

impl Wait {
    /// The upstream's `timeout` alone: health checks and tollgate's own fetches.
    pub fn upstream(timeout: Duration) -> Wait {
        Wait {
            timeout,
            forwarded: false,
        }
    }

    /// A client's request forwarded by the proxy: the upstream's `timeout`, or the
    /// request's `request_timeout` when that ends first. The one timer then stands for
    /// both ([`crate::service::request_deadline`]); when it is the request's deadline
    /// that passes, the exchange keeps waiting and the request timer answers (504 with
    /// the request's reason, no upstream timeout counted), as when it had its own timer.
    pub fn forwarded(timeout: Duration) -> Wait {
        Wait {
            timeout,
            forwarded: true,
        }
    }
}

/// `work`'s output, or `None` once `wait`'s timeout has passed: `tokio::time::timeout`
/// without moving the (pinned) work into it.
pub(crate) async fn within<T>(
    wait: Wait,
    mut work: Pin<&mut impl Future<Output = T>>,
) -> Option<T> {
    let own = std::time::Instant::now() + wait.timeout;
    let request = if wait.forwarded {
        request_deadline::current()
    } else {
        None
    };
    // The request's deadline, when it comes first, is the one this timer waits for.
    // tollgate's own deadline (`timer`), not tokio's: this one runs on every request. It
    // is polled after the work whatever the work did to the task's co-operative budget
    // (it takes no part in it), as `tokio::time::Timeout` polls its deadline.
    let request_first = request.filter(|r| *r < own);
    let mut deadline = crate::timer::Sleep::until(request_first.unwrap_or(own));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        match Pin::new(&mut deadline).poll(cx) {
            Poll::Pending => {
                if request.is_some() {
                    request_deadline::cover();
                }
                Poll::Pending
            }
            // Not covered on this poll: the request timer makes its own, already due.
            Poll::Ready(()) if request_first.is_some() => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(None),
        }
    })
    .await
}

type Sent = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>;

/// Sends `req` on `link`, driving the connection from this task until the response
/// head is in; the link comes back unless the connection is over. Dropped (timeout,
/// client gone), the exchange closes the connection.
async fn exchange(mut link: Box<Link>, req: Request<Body>) -> (Sent, Option<Box<Link>>) {
    let mut sent = std::pin::pin!(link.tx.try_send_request(req));
    let mut open = true;
    let got = std::future::poll_fn(|cx| {
        if open && link.drive(cx).is_ready() {
            open = false;
        }
        match sent.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending if open => Poll::Pending,
            // Over without an answer: dropping the connection gives the request back
            // (if it was never written) or the error.
            Poll::Pending => Poll::Ready(None),
        }
    })
    .await;
    match got {
        Some(r) => (r, open.then_some(link)),
        None => {
            drop(link);
            (sent.await, None)
        }
    }
}

fn pooled_response(
    pool: &Arc<Pool>,
    link: Option<Box<Link>>,
    resp: Response<Incoming>,
) -> Response<PooledBody> {
    resp.map(|inner| {
        let mut body = PooledBody {
            inner,
            link: link.map(|l| (l, pool.clone())),
        };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    })
}

/// An upstream response body that also drives its connection (the response arrives
/// through it), and gives the connection back to the pool once the whole body has been
/// read. Dropped early (client gone), ended by an error, or on a connection that is
/// closing (`Connection: close`, a protocol switch), the connection is not reused: it
/// closes with this body.
pub struct PooledBody {
    inner: Incoming,
    link: Option<(Box<Link>, Arc<Pool>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((link, pool)) = self.link.take() {
            pool.put(link);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // What the connection has read already is taken first; the connection is
        // driven only when there is nothing yet.
        let mut r = Pin::new(&mut this.inner).poll_frame(cx);
        if r.is_pending() {
            if let Some((link, _)) = &mut this.link {
                if link.drive(cx).is_ready() {
                    // Over: what it read stays readable in `inner`.
                    this.link = None;
                }
                r = Pin::new(&mut this.inner).poll_frame(cx);
            }
        }
        match &r {
            // The last frame: a sized body is not polled again after it.
            Poll::Ready(Some(Ok(_))) => {
                if this.inner.is_end_stream() {
                    this.give_back();
                }
            }
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.link = None,
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One multiplexed HTTP/2 connection to an upstream (`protocol: h2` over TLS, `h2c`
/// cleartext with prior knowledge), made on first use and made again once it has
/// closed. Every request to the upstream is a stream on it (gRPC's model).
pub struct H2Conn {
    connector: Connector,
    /// `scheme://authority/`, what the connector dials.
    uri: Uri,
    tx: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Body>>>,
}

impl H2Conn {
    pub fn new(connector: Connector, uri: Uri) -> H2Conn {
        H2Conn {
            connector,
            uri,
            tx: tokio::sync::Mutex::new(None),
        }
    }

    /// The open connection's sender, or a new connection's.
    async fn sender(
        &self,
    ) -> Result<hyper::client::conn::http2::SendRequest<Body>, UpstreamFailure> {
        let mut slot = self.tx.lock().await;
        if let Some(tx) = slot.as_ref() {
            if !tx.is_closed() {
                return Ok(tx.clone());
            }
        }
        // Boxed, like `Pool::connect`: only a new connection needs the dial and
        // handshake's ~5 KB of state, not every stream's future.
        let tx = Box::pin(self.open()).await?;
        *slot = Some(tx.clone());
        Ok(tx)
    }

    /// A new connection: dialled, handshaken, and driven by a task of its own.
    async fn open(&self) -> Result<hyper::client::conn::http2::SendRequest<Body>, UpstreamFailure> {
        let io = dial(&self.connector, &self.uri).await?;
        let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .handshake(io)
            .await
            .map_err(|e| UpstreamFailure::Connect(Cause::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(tx)
    }
}

/// Sends `req` (absolute URI, HTTP/2) as a stream on the upstream's HTTP/2 connection
/// and waits for the response head as `wait` says.
pub async fn send_h2(
    conn: &H2Conn,
    req: Request<Body>,
    wait: Wait,
) -> Result<Response<Incoming>, UpstreamFailure> {
    send_h2_or_back(conn, req, wait)
        .await
        .map_err(|(failure, _)| failure)
}

/// [`send_h2`] for an upstream with several endpoints: a request that was never
/// written (no connection could be made) is handed back with the failure.
pub async fn send_h2_or_back(
    conn: &H2Conn,
    req: Request<Body>,
    wait: Wait,
) -> Result<Response<Incoming>, Unsent> {
    // Pinned in place with its deadline, as in `send_pooled_or_back`.
    let mut work = std::pin::pin!(async {
        let mut tx = match conn.sender().await {
            Ok(tx) => tx,
            Err(f) => return Err((f, Some(req))),
        };
        if let Err(e) = tx.ready().await {
            return Err((UpstreamFailure::Broken(Cause::new(e)), Some(req)));
        }
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => {
                let back = e.take_message();
                Err((UpstreamFailure::Broken(Cause::new(e.into_error())), back))
            }
        }
    });
    match within(wait, work.as_mut()).await {
        Some(r) => r,
        None => Err((UpstreamFailure::Timeout, None)),
    }
}

/// How a forwarded request failed.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// No connection could be made (refused, unreachable, TLS, connect timeout).
    Connect(Cause),
    /// No response head within the upstream's `timeout`.
    Timeout,
    /// The exchange broke after the connection was made (reset, closed, or the request
    /// body failed while it was being sent).
    Broken(Cause),
}

impl UpstreamFailure {
    /// Whether `E` is somewhere in the failure's cause chain (e.g. the request body's
    /// own error, which hyper reports as the cause of a failed send).
    pub fn caused_by<E: std::error::Error + 'static>(&self) -> bool {
        let (UpstreamFailure::Connect(c) | UpstreamFailure::Broken(c)) = self else {
            return false;
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*c.0);
        while let Some(e) = cur {
            if e.is::<E>() {
                return true;
            }
            cur = e.source();
        }
        false
    }
}
