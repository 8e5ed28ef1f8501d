//! The gateway's own HTTP client: the connector (TCP + rustls, one deadline around the
//! whole connect) that forwarded requests' pools dial with, and [`fetch`], a small
//! exchange with bounded time and body size for the gateway's calls to identity
//! providers (JWKS, discovery, introspection, upstream token endpoints).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, BoxError};
use crate::error::Cause;
use crate::upstream::Pool;

pub(crate) type Connector = TimeoutConnector<HttpsConnector<HttpConnector>>;
type Pools = std::collections::HashMap<(Scheme, Authority), Arc<Pool>>;

/// Idle connections of the general client are closed after this long unused (below the
/// common keep-alive timeouts, e.g. nginx's 75 s, so that tollgate closes first).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const POOL_MAX_IDLE: usize = 32;

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
}

impl HttpClient {
    pub fn request(&self, req: Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        self.general.request(req)
    }
}

/// Builds a pooled client. `connect_timeout` covers TCP and the TLS handshake.
pub fn build_client(tls: Arc<rustls::ClientConfig>, connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let connector = TimeoutConnector {
        inner: https,
        timeout: connect_timeout,
    };
    let general = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector.clone());
    HttpClient {
        general,
        connector,
        pools: Arc::default(),
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
