//! Upstreams: one pooled hyper client per upstream (http or https via rustls), connect
//! and response-head timeouts, and a small bounded `fetch` used for IdP calls (JWKS,
//! discovery, introspection, upstream token endpoints).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, BoxError};
use crate::credentials::UpstreamAuth;

pub type HttpClient = Client<TimeoutConnector<HttpsConnector<HttpConnector>>, Body>;

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
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
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
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(TimeoutConnector {
            inner: https,
            timeout: connect_timeout,
        })
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

/// How a forwarded request failed.
#[derive(Debug)]
pub enum UpstreamFailure {
    Connect(String),
    Timeout,
    Broken(String),
}

pub fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = src {
        if s.is::<ConnectTimeout>() {
            return UpstreamFailure::Connect("connect timed out".into());
        }
        detail = s.to_string();
        src = s.source();
    }
    if e.is_connect() {
        UpstreamFailure::Connect(if detail.is_empty() {
            "connection refused".into()
        } else {
            detail
        })
    } else {
        UpstreamFailure::Broken(if detail.is_empty() {
            e.to_string()
        } else {
            detail
        })
    }
}

/// Sends `req` and waits for the response head at most `timeout`.
pub async fn send(
    client: &HttpClient,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, UpstreamFailure> {
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(UpstreamFailure::Timeout),
    }
}

/// A small HTTP exchange with bounded time and body size (IdP and token endpoints).
pub async fn fetch(
    client: &HttpClient,
    req: Request<Body>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    let work = async {
        let resp = client.request(req).await.map_err(|e| match classify(&e) {
            UpstreamFailure::Connect(d) => format!("cannot connect: {d}"),
            UpstreamFailure::Broken(d) => d,
            UpstreamFailure::Timeout => "timed out".into(),
        })?;
        let (parts, body) = resp.into_parts();
        let limited = http_body_util::Limited::new(body, max_bytes);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| format!("reading response: {e}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}
