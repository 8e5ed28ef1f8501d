//! Upstreams: a lean per-upstream HTTP/1.1 connection pool for forwarded requests
//! (http or https via rustls, dialled by `client`'s connector), with connect and
//! response-head timeouts.
//!
//! Forwarded requests go through [`Pool`] on `hyper::client::conn::http1` rather than
//! hyper-util's general pooled client: one upstream is one origin, so the pool needs no
//! keyed lookup, no checkout future and no background task per request (callgrind: the
//! general client's send path was ~11k of ~60k instructions per proxied request).

use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tower::ServiceExt;

use crate::body::Body;
use crate::client::{Connector, HttpClient};
use crate::credentials::UpstreamAuth;
use crate::error::Cause;

/// A compiled `upstreams[]` entry.
pub struct Upstream {
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The URL's path without a trailing `/` ("" for none); prepended to request paths.
    pub base_path: String,
    /// `Host` sent upstream.
    pub host: HeaderValue,
    pub timeout: Duration,
    pub client: HttpClient,
    pub auth: Option<UpstreamAuth>,
    /// Idle connections to this upstream (shared with the previous config's upstream
    /// of the same origin and client), looked up on first use.
    pub pool: OnceLock<Arc<Pool>>,
}

impl Upstream {
    pub fn pool(&self) -> &Arc<Pool> {
        self.pool.get_or_init(|| {
            let mut pools = self.client.pools.lock().unwrap_or_else(|p| p.into_inner());
            let key = (self.scheme.clone(), self.authority.clone());
            pools
                .entry(key)
                .or_insert_with(|| {
                    let uri = Uri::builder()
                        .scheme(self.scheme.clone())
                        .authority(self.authority.clone())
                        .path_and_query("/")
                        .build()
                        .expect("scheme and authority were validated");
                    Arc::new(Pool {
                        idle: Mutex::new(Vec::new()),
                        connector: self.client.connector.clone(),
                        uri,
                    })
                })
                .clone()
        })
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// Idle upstream connections are closed after this long unused (below the common
/// upstream keep-alive timeouts, e.g. nginx's 75 s, so that tollgate closes first).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream; more are closed once their exchange ends. Sized
/// for bursts: with 256, 64 HTTP/2 clients x 10 streams closed and reopened hundreds of
/// upstream connections per second (h2 bench: 19.9 -> 13.9 us CPU per request at 1024).
const POOL_MAX_IDLE: usize = 1024;

/// Idle HTTP/1.1 connections to one upstream, most recently used last.
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    connector: Connector,
    /// `scheme://authority/`, what the connector dials.
    uri: Uri,
}

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// The most recently used idle connection that can take a request now. Closed ones
    /// are dropped; ones still finishing their last exchange are kept for later.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(c) = idle.pop() {
            if c.tx.is_closed() {
                continue;
            }
            if c.tx.is_ready() {
                found = Some(c.tx);
                break;
            }
            busy.push(c);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    /// Returns a connection whose exchange has ended; closes the oldest idle ones past
    /// the idle timeout or over the cap.
    fn put(&self, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stale = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) > POOL_IDLE_TIMEOUT)
            .count();
        let over = (idle.len() + 1).saturating_sub(POOL_MAX_IDLE);
        idle.drain(..stale.max(over));
        idle.push(Idle { tx, since: now });
    }

    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamFailure> {
        let io = self
            .connector
            .clone()
            .oneshot(self.uri.clone())
            .await
            .map_err(|e| UpstreamFailure::Connect(Cause(Arc::from(e))))?;
        let (tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| UpstreamFailure::Connect(Cause::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }
}

/// Sends `req` (origin-form URI, `Host` set) to `pool`'s upstream and waits for the
/// response head at most `timeout`. A pooled connection that turns out closed before
/// the request was written is replaced by a new one, once; a request that was written
/// is never resent.
pub async fn send_pooled(
    pool: &Arc<Pool>,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<PooledBody>, UpstreamFailure> {
    let work = async {
        let mut req = req;
        if let Some(mut tx) = pool.checkout() {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(pooled_response(pool, tx, resp)),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(UpstreamFailure::Broken(Cause::new(e.into_error()))),
                },
            }
        }
        let mut tx = pool.connect().await?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(pooled_response(pool, tx, resp)),
            Err(e) => Err(UpstreamFailure::Broken(Cause::new(e.into_error()))),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamFailure::Timeout),
    }
}

fn pooled_response(
    pool: &Arc<Pool>,
    tx: SendRequest<Body>,
    resp: Response<Incoming>,
) -> Response<PooledBody> {
    resp.map(|inner| {
        let mut body = PooledBody {
            inner,
            give_back: Some((tx, pool.clone())),
        };
        body.give_back_if_done();
        body
    })
}

/// An upstream response body that gives its connection back to the pool once the
/// whole body has been read. Dropped early (client gone, error), the connection is
/// not reused: hyper closes it.
pub struct PooledBody {
    inner: Incoming,
    give_back: Option<(SendRequest<Body>, Arc<Pool>)>,
}

impl PooledBody {
    fn give_back_if_done(&mut self) {
        if self.inner.is_end_stream() {
            if let Some((tx, pool)) = self.give_back.take() {
                pool.put(tx);
            }
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
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            // The last frame: a sized body is not polled again after it.
            Poll::Ready(Some(Ok(_))) => self.give_back_if_done(),
            Poll::Ready(None) => {
                if let Some((tx, pool)) = self.give_back.take() {
                    pool.put(tx);
                }
            }
            Poll::Ready(Some(Err(_))) => self.give_back = None,
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
