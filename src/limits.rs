//! Limits that apply once the route is known, so that their refusals carry the route's
//! CORS headers: the end-to-end `request_timeout` (504), load shedding over
//! `max_concurrent_requests` (503 with `Retry-After`), and the request head and
//! declared body size (431 / 413). Every value is read from the request's config
//! snapshot, so a reload applies them at once.
//!
//! These are tollgate's own layers rather than tower's `Timeout`/`ConcurrencyLimit` +
//! `LoadShed` or tower-http's `RequestBodyLimit`: those take their limits when the stack
//! is built (a reload must change them without rebuilding it), and answer with their own
//! errors or plain-text bodies where SPEC wants its JSON error with CORS headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use http::{Request, Response};
use pin_project_lite::pin_project;

use crate::body::Body;
use crate::conn::ConnInfo;
use crate::error::{GatewayError, Rejection, Timeout};
use crate::gateway::Gateway;
use crate::route::layer::routed;
use crate::runtime::Limits;
use crate::service::{request_deadline, OnOutcome, Outcome, Step, Then};

fn limits<B>(req: &Request<B>) -> Option<&Limits> {
    routed(req).map(|r| &r.snapshot.server.limits)
}

// ---- request_timeout -------------------------------------------------------------

/// Bounds the whole exchange below it by `request_timeout` (504).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTimeoutLayer;

impl<S> tower::Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;
    fn layer(&self, inner: S) -> RequestTimeout<S> {
        RequestTimeout { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestTimeout<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for RequestTimeout<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let after = limits(&req).map_or(Limits::default().request_timeout, |l| l.request_timeout);
        // The inner future is made in place, not moved into a `tokio::time::Timeout`
        // (a copy of the whole stack below per request: bench/ANALYSIS.md, "Smaller
        // futures"); the timer is made only when nothing below covers the deadline.
        TimeoutFuture {
            at: std::time::Instant::now() + after,
            inner: self.inner.call(req),
            deadline: None,
            after,
        }
    }
}

pin_project! {
    /// The inner future, or a 504 once `after` has passed. Polled as
    /// `tokio::time::Timeout` is: the inner future first, then the deadline — outside the
    /// task's co-operative budget when the inner future used it up
    /// ([`crate::service::poll_deadline`]). The inner future is polled inside the
    /// request's deadline scope ([`crate::service::request_deadline`]): on a poll where
    /// the upstream's timer below stood for the deadline, the request's own timer is not
    /// needed, and a forwarded request whose upstream answers never makes it.
    pub struct TimeoutFuture<F> {
        at: std::time::Instant,
        #[pin]
        inner: F,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        after: std::time::Duration,
    }
}

impl<F: Future<Output = Outcome>> Future for TimeoutFuture<F> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        let had_budget = tokio::task::coop::has_budget_remaining();
        let inner = this.inner;
        let (polled, covered) = request_deadline::scope(*this.at, || inner.poll(cx));
        if let Poll::Ready(out) = polled {
            return Poll::Ready(out);
        }
        if covered {
            return Poll::Pending;
        }
        if this.deadline.is_none() {
            this.deadline
                .set(Some(tokio::time::sleep_until((*this.at).into())));
        }
        let deadline = this.deadline.as_pin_mut().expect("set just above");
        std::task::ready!(crate::service::poll_deadline(deadline, cx, had_budget));
        Poll::Ready(Err(Timeout::Request { after: *this.after }.into()))
    }
}

// ---- max_concurrent_requests -------------------------------------------------------

/// Sheds requests over `max_concurrent_requests` at once (503), rather than queueing
/// them; counts the rest in `tollgate_requests_in_flight` while they are handled.
#[derive(Clone)]
pub struct ShedLayer {
    gw: Arc<Gateway>,
}

impl ShedLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        ShedLayer { gw }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    gw: Arc<Gateway>,
}

/// One request counted in flight, until its response head is ready.
pub struct InFlight(Option<Arc<Gateway>>);

impl InFlight {
    /// Counts the request in; `None` (and not counted) when `limit` are in flight.
    fn enter(gw: &Arc<Gateway>, limit: usize) -> Option<InFlight> {
        // The gauge's atomic add returns the count before this request.
        let before = usize::try_from(gw.metrics.in_flight.inc()).unwrap_or(0);
        if before >= limit {
            gw.metrics.in_flight.dec();
            return None;
        }
        Some(InFlight(Some(gw.clone())))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(gw) = self.0.take() {
            gw.metrics.in_flight.dec();
        }
    }
}

impl OnOutcome for InFlight {
    fn on_outcome(self, out: Outcome) -> Outcome {
        drop(self);
        out
    }
}

impl<S, B> tower::Service<Request<B>> for Shed<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Then<S::Future, InFlight>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = limits(&req).map_or(usize::MAX, |l| l.max_concurrent_requests);
        match InFlight::enter(&self.gw, limit) {
            Some(guard) => Then::new(Step::inner(self.inner.call(req)), guard),
            None => {
                self.gw.metrics.shed_total.inc();
                Then::new(
                    Step::reject(GatewayError::Overloaded(limit)),
                    InFlight(None),
                )
            }
        }
    }
}

// ---- head and declared body size ---------------------------------------------------

/// 431 for heads over `max_header_bytes`, 413 for a declared body over
/// `max_body_bytes` (a streamed body is counted as it flows, in `proxy`).
///
/// The head is measured where it arrives ([`measure_head`], called by the listener
/// before any layer runs): by the time a request gets here, the layers above
/// have added headers of tollgate's own (`X-Request-Id`, `traceparent`), which are not
/// the client's and must not count against its limit. A request that did not come
/// through a listener ([`ConnInfo::heads_measured`] unset: explain, a decision
/// request's original, tests) is measured here as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SizeLimitLayer;

impl<S> tower::Layer<S> for SizeLimitLayer {
    type Service = SizeLimit<S>;
    fn layer(&self, inner: S) -> SizeLimit<S> {
        SizeLimit { inner }
    }
}

#[derive(Debug, Clone)]
pub struct SizeLimit<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for SizeLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(l) = limits(&req) {
            if let Err(e) = check_sizes(&req, l) {
                return Step::reject(e);
            }
        }
        Step::inner(self.inner.call(req))
    }
}

pub fn check_sizes<B>(req: &Request<B>, limits: &Limits) -> Result<(), GatewayError> {
    let ext = req.extensions();
    // A request as a listener received it was measured there; any other (explain, a
    // decision request's original) is measured now.
    let too_large = if ext.get::<Arc<ConnInfo>>().is_some_and(|c| c.heads_measured) {
        ext.get::<HeadTooLarge>().is_some()
    } else {
        measure_head(req).bytes > limits.max_header_bytes
    };
    if too_large {
        return Err(GatewayError::HeaderTooLarge);
    }
    if let Some(cl) = req.headers().get(header::CONTENT_LENGTH) {
        match cl.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > limits.max_body_bytes => {
                return Err(GatewayError::PayloadTooLarge(limits.max_body_bytes))
            }
            Some(_) => {}
            None => return Err(GatewayError::BadRequest("invalid Content-Length".into())),
        }
    }
    Ok(())
}

/// Set by the listener on a request whose head, as the client sent it, is over the
/// `max_header_bytes` serving when it arrived.
#[derive(Debug, Clone, Copy)]
pub struct HeadTooLarge;

/// A request head as measured: its bytes in HTTP/1.1 form (the request line, each
/// header line and the blank line that ends the head), and whether it names a `Host`.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub bytes: usize,
    pub host: bool,
}

/// Measures a request's head in one pass over its headers.
pub fn measure_head<B>(req: &Request<B>) -> Head {
    let uri = req.uri();
    // The target as written: an absolute-form target's scheme and authority (HTTP/2's
    // :scheme and :authority) count too.
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| {
            uri.scheme_str().map_or(0, |s| s.len() + 3) + a.as_str().len()
        });
    // "GET /path HTTP/1.1\r\n" and the final "\r\n".
    let mut bytes = req.method().as_str().len() + target + 12 + 2;
    let mut host = false;
    for (k, v) in req.headers() {
        host |= k == header::HOST;
        bytes += k.as_str().len() + v.len() + 4;
    }
    Head { bytes, host }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::route::layer::RouteLayer;
    use crate::testing::{gateway, get, Reached, Stub, CONFIG};

    /// A service answering every request with the future its function makes (given
    /// the duration beside it).
    #[derive(Clone)]
    struct Answers(
        fn(std::time::Duration) -> crate::service::BoxOutcome,
        std::time::Duration,
    );

    impl<B> tower::Service<Request<B>> for Answers {
        type Response = Response<Body>;
        type Error = Rejection;
        type Future = crate::service::BoxOutcome;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<B>) -> Self::Future {
            (self.0)(self.1)
        }
    }

    /// An answer that never comes although its future is always ready to run: every
    /// poll spends the task's whole co-operative budget (as a fast upload to an upstream
    /// that never answers does).
    const BUSY: Answers = Answers(
        |_| {
            Box::pin(async {
                loop {
                    tokio::task::consume_budget().await;
                }
            })
        },
        std::time::Duration::ZERO,
    );

    /// A forwarded exchange with an upstream that never answers, waiting as the proxy
    /// does (`client::Wait::forwarded`) for at most the upstream `timeout` given.
    fn silent(upstream: std::time::Duration) -> Answers {
        Answers(
            |upstream| {
                Box::pin(async move {
                    let never = std::pin::pin!(std::future::pending::<()>());
                    let wait = crate::client::Wait::forwarded(upstream);
                    match crate::client::within(wait, never).await {
                        Some(()) => unreachable!("the upstream never answers"),
                        None => Err(Timeout::Upstream {
                            upstream: "up".into(),
                            after: upstream,
                        }
                        .into()),
                    }
                })
            },
            upstream,
        )
    }

    // Behaviour: request_timeout fires even when the work below it is always ready and
    // uses up the task's co-operative budget on every poll (the deadline is then polled
    // outside the budget, as tokio::time::Timeout does).
    #[tokio::test]
    async fn request_timeout_fires_under_work_that_is_always_ready() {
        let cfg = CONFIG.replace(
            "    max_concurrent_requests: 1\n",
            "    max_concurrent_requests: 1\n    request_timeout: 100ms\n",
        );
        let (gw, _dir) = gateway(&cfg);
        let svc = RouteLayer::new(gw.clone()).layer(RequestTimeoutLayer.layer(BUSY));
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            svc.oneshot(get("/open/x")),
        )
        .await
        .expect("request_timeout (100ms) never fired");
        let e = out.unwrap_err();
        assert!(
            matches!(
                e.error,
                GatewayError::GatewayTimeout(Timeout::Request { .. })
            ),
            "{:?}",
            e.error
        );
    }

    fn with_request_timeout(t: &str) -> (Arc<Gateway>, tempfile::TempDir) {
        let cfg = CONFIG.replace(
            "    max_concurrent_requests: 1\n",
            &format!("    max_concurrent_requests: 1\n    request_timeout: {t}\n"),
        );
        gateway(&cfg)
    }

    // Behaviour: while a forwarded request waits for its upstream, the upstream's timer
    // stands for request_timeout, and the 504 still comes from the right clock: the
    // request's (request_timeout 300 ms < timeout 20 s) or the upstream's (timeout
    // 300 ms < request_timeout 20 s), each at its time (not before; bounded well below
    // the other clock, so a busy machine cannot fail it).
    #[tokio::test]
    async fn one_timer_serves_request_timeout_and_the_upstream_timeout() {
        use std::time::Duration;
        for (request, upstream, request_fires) in [("300ms", 20_000, true), ("20s", 300, false)] {
            let (gw, _dir) = with_request_timeout(request);
            let svc = RouteLayer::new(gw.clone())
                .layer(RequestTimeoutLayer.layer(silent(Duration::from_millis(upstream))));
            let start = tokio::time::Instant::now();
            let e = svc.oneshot(get("/open/x")).await.unwrap_err();
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(15),
                "{request}/{upstream}ms: answered after {took:?}"
            );
            if request_fires {
                assert!(
                    matches!(
                        e.error,
                        GatewayError::GatewayTimeout(Timeout::Request { .. })
                    ),
                    "{:?}",
                    e.error
                );
            } else {
                assert!(
                    matches!(
                        e.error,
                        GatewayError::GatewayTimeout(Timeout::Upstream { .. })
                    ),
                    "{:?}",
                    e.error
                );
            }
        }
    }

    // The request timer is made only on a poll nothing below covered.
    #[tokio::test]
    async fn the_request_timer_is_made_only_when_nothing_below_covers_it() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut covered = RequestTimeoutLayer.layer(silent(std::time::Duration::from_secs(10)));
        let mut fut = std::pin::pin!(covered.call(Request::new(())));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(
            fut.as_ref().get_ref().deadline.is_none(),
            "covered, yet the request timer was made"
        );

        let mut bare = RequestTimeoutLayer.layer(BUSY);
        let mut fut = std::pin::pin!(bare.call(Request::new(())));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(
            fut.as_ref().get_ref().deadline.is_some(),
            "nothing covered, and no request timer"
        );
    }

    // Behaviour: 431 for a head over max_header_bytes, 413 for a declared body over
    // max_body_bytes, 400 for a Content-Length that is not a number.
    #[tokio::test]
    async fn head_and_declared_body_sizes() {
        let (gw, _dir) = gateway(CONFIG);
        let svc = || RouteLayer::new(gw.clone()).layer(SizeLimitLayer.layer(Stub::default()));
        let mut big = get("/open/x");
        big.headers_mut()
            .insert("x-big", "a".repeat(3000).parse().unwrap());
        let e = svc().oneshot(big).await.unwrap_err();
        assert!(matches!(e.error, GatewayError::HeaderTooLarge));
        let mut body = get("/open/x");
        body.headers_mut()
            .insert("content-length", "101".parse().unwrap());
        let e = svc().oneshot(body).await.unwrap_err();
        assert!(matches!(e.error, GatewayError::PayloadTooLarge(100)));
        let mut bad = get("/open/x");
        bad.headers_mut()
            .insert("content-length", "x".parse().unwrap());
        let e = svc().oneshot(bad).await.unwrap_err();
        assert!(matches!(e.error, GatewayError::BadRequest(_)));
        assert!(svc().oneshot(get("/open/x")).await.is_ok());
    }

    // Behaviour: over max_concurrent_requests (1 here) a request is shed at once and
    // counted; once the first is answered, the next one passes again.
    #[tokio::test]
    async fn sheds_over_the_concurrency_limit() {
        let (gw, _dir) = gateway(CONFIG);
        let reached = Reached::default();
        let mut svc = RouteLayer::new(gw.clone())
            .layer(ShedLayer::new(gw.clone()).layer(Stub(reached.clone())));
        let first = svc.call(get("/open/a"));
        let second = svc.call(get("/open/b")).await.unwrap_err();
        assert!(matches!(second.error, GatewayError::Overloaded(1)));
        assert_eq!(gw.metrics.shed_total.get(), 1);
        assert!(first.await.is_ok());
        assert_eq!(gw.metrics.in_flight.get(), 0);
        assert!(svc.call(get("/open/c")).await.is_ok());
        assert_eq!(reached.count(), 2);
    }
}
