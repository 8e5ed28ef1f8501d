//! Step 2 of the request path: the request id.
//!
//! `X-Request-Id` is kept when the client sent a sane one (1 to 128 characters of
//! `[A-Za-z0-9._:-]`), else replaced by a generated one; the upstream receives it and
//! every response carries it, errors included.
//!
//! The server's stack uses [`RequestIdLayer`], tollgate's own layer, rather than
//! tower-http's `SetRequestId` + `PropagateRequestId` with a sanity map in front: those
//! look the header up four times, and store the id as a `RequestId` extension on the
//! request and on the response (a boxed allocation each) that nothing in tollgate reads.
//! One layer reads the header once and echoes it with one map operation (callgrind:
//! bench/ANALYSIS.md, "The tower stack's cost per request", session 6). The embeddable
//! [`crate::layer::PolicyLayer`] keeps tower-http's layers (an application behind it may
//! read the `RequestId` extension), with [`drop_insane`] and [`SaneRequestId`] giving
//! them tollgate's sanity rule (tower-http keeps whatever id the client sent).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use rand::Rng;
use tower_http::request_id::{MakeRequestId, RequestId};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `v` is an id tollgate keeps: 1-128 of `[A-Za-z0-9._:-]`.
pub fn is_sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// Drops an `X-Request-Id` that is not sane (or given twice), so that one is generated.
pub fn drop_insane<B>(mut req: Request<B>) -> Request<B> {
    let mut ids = req.headers().get_all(&X_REQUEST_ID).iter();
    if let Some(v) = ids.next() {
        if !is_sane(v) || ids.next().is_some() {
            req.headers_mut().remove(&X_REQUEST_ID);
        }
    }
    req
}

/// 128 random bits as 32 hex digits.
#[derive(Debug, Clone, Copy, Default)]
pub struct SaneRequestId;

impl MakeRequestId for SaneRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(generate()))
    }
}

pub fn generate() -> HeaderValue {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill(&mut bytes);
    let mut text = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        text[2 * i] = DIGITS[usize::from(b >> 4)];
        text[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0"))
}

/// Keeps a sane `X-Request-Id` (given once), else sets a generated one; the upstream
/// receives it, and every response carries it unless it already has one.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;
    fn layer(&self, inner: S) -> RequestIds<S> {
        RequestIds { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIds<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<Request<B>> for RequestIds<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut ids = req.headers().get_all(&X_REQUEST_ID).iter();
        let kept = match (ids.next(), ids.next()) {
            (Some(v), None) if is_sane(v) => Some(v.clone()),
            _ => None,
        };
        let id = kept.unwrap_or_else(|| {
            let id = generate();
            // `insert` replaces an insane or repeated id.
            req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            id
        });
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            resp.headers_mut().entry(X_REQUEST_ID.clone()).or_insert(id);
        }
        Poll::Ready(Ok(resp))
    }
}

/// The request's id as set by the request-id layers (or, outside the stack, the sane
/// id the client sent, else a new one).
pub fn of<B>(req: &Request<B>) -> HeaderValue {
    match req.headers().get(&X_REQUEST_ID) {
        Some(v) if is_sane(v) => v.clone(),
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: SPEC's sane-id rule — kept when 1-128 of [A-Za-z0-9._:-].
    #[test]
    fn sane_ids() {
        for ok in ["a", "A-b_c.d:e", &"x".repeat(128)] {
            assert!(is_sane(&HeaderValue::from_str(ok).unwrap()), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            let Ok(v) = HeaderValue::from_str(bad) else {
                continue;
            };
            assert!(!is_sane(&v), "{bad}");
        }
        let g = generate();
        assert!(is_sane(&g) && g.len() == 32);
    }

    // Behaviour: the layer keeps a sane id, replaces an insane or repeated one, and echoes
    // the id the upstream received on the response (unless the response has its own).
    #[tokio::test]
    async fn layer_keeps_replaces_and_echoes() {
        use tower::{Layer, ServiceExt};
        let echo = |own: bool| {
            RequestIdLayer.layer(tower::service_fn(move |req: Request<()>| async move {
                let seen = req.headers().get_all(&X_REQUEST_ID).iter().count();
                assert_eq!(seen, 1, "the upstream receives exactly one id");
                let sent = req.headers()[&X_REQUEST_ID].clone();
                let mut resp = Response::new(sent.clone());
                if own {
                    resp.headers_mut().insert(
                        X_REQUEST_ID.clone(),
                        HeaderValue::from_static("upstream-own"),
                    );
                }
                Ok::<_, std::convert::Infallible>(resp)
            }))
        };
        let with = |ids: &[&str]| {
            let mut b = Request::get("/");
            for id in ids {
                b = b.header("x-request-id", *id);
            }
            b.body(()).unwrap()
        };
        let resp = echo(false).oneshot(with(&["ok-1"])).await.unwrap();
        assert_eq!(resp.body(), "ok-1");
        assert_eq!(resp.headers()["x-request-id"], "ok-1");
        for bad in [&["no way"][..], &["a", "b"], &[]] {
            let resp = echo(false).oneshot(with(bad)).await.unwrap();
            let sent = resp.body().clone();
            assert!(is_sane(&sent) && sent.len() == 32, "{bad:?}: {sent:?}");
            assert_eq!(resp.headers()["x-request-id"], sent);
            assert_eq!(resp.headers().get_all("x-request-id").iter().count(), 1);
        }
        let resp = echo(true).oneshot(with(&["ok-2"])).await.unwrap();
        assert_eq!(resp.headers()["x-request-id"], "upstream-own");
    }

    // Behaviour: an insane or repeated id is dropped before SetRequestId sees it.
    #[test]
    fn insane_and_repeated_ids_are_dropped() {
        let r = drop_insane(
            Request::get("/")
                .header("x-request-id", "ok-1")
                .body(())
                .unwrap(),
        );
        assert_eq!(r.headers()["x-request-id"], "ok-1");
        let r = drop_insane(
            Request::get("/")
                .header("x-request-id", "no way")
                .body(())
                .unwrap(),
        );
        assert!(r.headers().get("x-request-id").is_none());
        let r = drop_insane(
            Request::get("/")
                .header("x-request-id", "a")
                .header("x-request-id", "b")
                .body(())
                .unwrap(),
        );
        assert!(r.headers().get("x-request-id").is_none());
    }
}
