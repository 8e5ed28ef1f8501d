//! Step 8½ of the request path, as a layer: the route's `rate_limits`, checked after
//! the gate (authentication and authorisation), so that denied requests and CORS
//! preflights (answered above) are never counted.
//!
//! - A route without limits costs one extension lookup (the matched route).
//! - Local limits are decided inline (one short critical section per limit, no
//!   future); only a route with a `store: redis` limit boxes its future, to wait for
//!   Redis.
//! - Over a limit: 429 `rate_limited` naming it, with `Retry-After`, `RateLimit-Policy`
//!   and `RateLimit` (the CORS layer above adds its headers to the refusal like to any
//!   other); counted in `tollgate_rate_limited_total{route,limit}` and, as a denial
//!   with reason `rate_limited`, in `tollgate_auth_denied_total`.
//! - A store that cannot decide with `on_error: deny`: 503 `service_unavailable` with
//!   `Retry-After` (`on_error: allow` decides locally instead, see [`Limiter`]).
//! - Admitted: the response carries `RateLimit-Policy` and `RateLimit` of the limit
//!   closest to exhaustion (errors from further down too, as recorded headers).
//! - Under `tollgate explain` (a decision [`Trace`](crate::decision::Trace) in the
//!   request) every limit is peeked, not counted, and listed in the trace.
//!
//! The key inputs come from the request extensions the layers above left: the verified
//! `Arc<Identity>` (client, subject), the listener's `Arc<ConnInfo>` (the client IP;
//! without one, as in an embedding application, every request counts under the
//! unspecified address), and the request headers.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{Request, Response};

use super::{
    Decision, KeyInput, Limit, Limiter, LocalVerdict, Outcome, RateHeaders, Unavailable, Verdict,
};
use crate::body::Body;
use crate::conn::ConnInfo;
use crate::decision::{self, Trace};
use crate::error::{GatewayError, RateLimited, Rejection, RATELIMIT, RATELIMIT_POLICY};
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::route::layer::route_of;
use crate::runtime::Route;
use crate::service::{take_ready, OnOutcome, Outcome as StepOutcome, Step, Then};

/// Checks the matched route's `rate_limits` (see the module docs).
#[derive(Clone)]
pub struct RateLimitLayer {
    gw: Arc<Gateway>,
}

impl RateLimitLayer {
    /// `gw` for its metrics (the limits and stores come with the request's route).
    pub fn new(gw: Arc<Gateway>) -> Self {
        RateLimitLayer { gw }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    gw: Arc<Gateway>,
}

/// On the way out of an admitted request: the `RateLimit-Policy` / `RateLimit` headers
/// of the decision closest to exhaustion.
pub struct RateLimitHeaders(Option<RateHeaders>);

impl RateLimitHeaders {
    fn of(d: Option<Decision>) -> RateLimitHeaders {
        RateLimitHeaders(d.as_ref().map(RateHeaders::from))
    }
}

impl OnOutcome for RateLimitHeaders {
    fn on_outcome(self, out: StepOutcome) -> StepOutcome {
        let Some(RateHeaders { policy, state }) = self.0 else {
            return out;
        };
        match out {
            Ok(mut resp) => {
                let h = resp.headers_mut();
                h.insert(&RATELIMIT_POLICY, policy);
                h.insert(&RATELIMIT, state);
                Ok(resp)
            }
            Err(rej) => Err(rej.with_headers(|h| {
                h.insert(&RATELIMIT_POLICY, policy);
                h.insert(&RATELIMIT, state);
            })),
        }
    }
}

/// The facts keys are derived from, read from the request.
fn key_input<B>(req: &Request<B>) -> KeyInput<'_> {
    let ext = req.extensions();
    let id = ext.get::<Arc<Identity>>();
    let conn = ext.get::<Arc<ConnInfo>>();
    KeyInput {
        client_ip: conn.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |c| c.remote.ip()),
        headers: req.headers(),
        client_id: id.and_then(|i| i.client_id.as_deref()),
        subject: id.and_then(|i| i.subject.as_deref()),
        ip_key: conn.map(|c| &c.ip_key),
    }
}

/// 429 `rate_limited` for the refusing decision `d`.
pub fn limited(d: &Decision) -> GatewayError {
    let retry = d.retry_after_secs().unwrap_or(1);
    GatewayError::RateLimited(Box::new(RateLimited {
        limit: d.name.clone(),
        description: format!(
            "rate limit \"{}\" exceeded (at most {} requests per {}s); retry in {retry}s",
            d.name,
            d.limit,
            d.per.as_secs()
        ),
        retry_after: HeaderValue::from(retry),
        policy: d.policy.clone(),
        state: d.ratelimit_header(),
    }))
}

/// 503 `service_unavailable` for a store that could not decide (`on_error: deny`).
fn unavailable(u: &Unavailable) -> GatewayError {
    GatewayError::StoreUnavailable {
        limit: u.limit.clone(),
        retry_after: Unavailable::RETRY_AFTER.as_secs(),
    }
}

impl<S> RateLimit<S> {
    /// A refusal or a pass for a verdict; counts refusals in the metrics.
    fn settle(&self, route: &Route, verdict: Verdict) -> Result<Option<Decision>, GatewayError> {
        match verdict {
            Verdict::Allowed(d) => Ok(d),
            Verdict::Limited(d) => Err(self.refuse(route, &d)),
            Verdict::Unavailable(u) => Err(unavailable(&u)),
        }
    }

    /// The 429 for `d`, counted in the metrics.
    fn refuse(&self, route: &Route, d: &Decision) -> GatewayError {
        self.gw.metrics.rate_limited(&route.name, &d.name);
        limited(d)
    }
}

impl<S, B> tower::Service<Request<B>> for RateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Then<S::Future, RateLimitHeaders>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let with_limits = route_of(&req).and_then(|r| Some((r, r.rate_limits.as_ref()?)));
        let Some((route, rl)) = with_limits else {
            return Then::new(Step::inner(self.inner.call(req)), RateLimitHeaders(None));
        };
        if let Some(trace) = decision::of(&req) {
            let route = route.clone();
            return explain(take_ready(&mut self.inner), route, trace, req);
        }
        if rl.local_only() {
            // Decided while the route is borrowed from the request: nothing of it is
            // kept but the two header values.
            let verdict = rl
                .limiter()
                .decide_all_local(rl.limits(), &key_input(&req))
                .expect("every limit is local");
            let headers = match verdict {
                LocalVerdict::Allowed(h) => h,
                LocalVerdict::Limited(d) => {
                    return Then::new(Step::reject(self.refuse(route, &d)), RateLimitHeaders(None));
                }
            };
            return Then::new(Step::inner(self.inner.call(req)), RateLimitHeaders(headers));
        }
        // A limit counts in Redis: wait for it.
        let route = route.clone();
        let mut inner = take_ready(&mut self.inner);
        let this = RateLimit {
            inner: (),
            gw: self.gw.clone(),
        };
        Then::new(
            Step::boxed(async move {
                let Some(rl) = &route.rate_limits else {
                    unreachable!("checked above")
                };
                let verdict = {
                    let input = key_input(&req);
                    rl.limiter().decide_all(rl.limits(), &input).await
                };
                match this.settle(&route, verdict) {
                    Ok(d) => RateLimitHeaders::of(d).on_outcome(inner.call(req).await),
                    Err(e) => Err(e.into()),
                }
            }),
            RateLimitHeaders(None),
        )
    }
}

/// `tollgate explain`: every limit the request would be counted against, peeked
/// (nothing counted) and noted in `trace`, then the request goes on as the server
/// would let it.
fn explain<S, B>(
    mut inner: S,
    route: Arc<Route>,
    trace: Trace,
    req: Request<B>,
) -> Then<S::Future, RateLimitHeaders>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection> + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    Then::new(
        Step::boxed(async move {
            let Some(rl) = &route.rate_limits else {
                unreachable!("checked by the caller")
            };
            let verdict = {
                let input = key_input(&req);
                peek_all(&trace, rl.limiter(), rl.limits(), &input).await
            };
            let d = match verdict {
                Verdict::Allowed(d) => d,
                Verdict::Limited(d) => return Err(limited(&d).into()),
                Verdict::Unavailable(u) => return Err(unavailable(&u).into()),
            };
            RateLimitHeaders::of(d).on_outcome(inner.call(req).await)
        }),
        RateLimitHeaders(None),
    )
}

/// Peeks every limit (counting nothing) and notes each in the request's trace.
async fn peek_all<'l>(
    trace: &Trace,
    limiter: &Limiter,
    limits: impl Iterator<Item = &'l Limit>,
    input: &KeyInput<'_>,
) -> Verdict {
    let mut closest: Option<Decision> = None;
    let mut refusal: Option<Verdict> = None;
    for limit in limits {
        let key = limit.key().key(input);
        let where_ = match limit.store() {
            super::StoreKind::Local => {
                " (counted by each replica alone; this run's counters start empty)"
            }
            super::StoreKind::Redis => "",
        };
        match limiter.decide_peek(limit, &key).await {
            Outcome::Allowed(d) => {
                trace.push(format!(
                    "rate limit {limit}: {} of {} left{where_}{}",
                    d.remaining,
                    d.limit,
                    fallback(&d)
                ));
                if closest.as_ref().is_none_or(|c| d.is_closer_than(c)) {
                    closest = Some(d);
                }
            }
            Outcome::Limited(d) => {
                trace.push(format!(
                    "rate limit {limit}: exhausted, next request allowed in {}s{}",
                    d.retry_after_secs().unwrap_or(1),
                    fallback(&d)
                ));
                refusal.get_or_insert(Verdict::Limited(d));
            }
            Outcome::Unavailable(u) => {
                trace.push(format!(
                    "rate limit {limit}: store unavailable ({}), on_error deny refuses",
                    u.error
                ));
                refusal.get_or_insert(Verdict::Unavailable(u));
            }
        }
    }
    refusal.unwrap_or(Verdict::Allowed(closest))
}

fn fallback(d: &Decision) -> &'static str {
    match d.source {
        super::Source::LocalFallback => {
            " (redis unreachable: decided by this replica's counters, on_error allow)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::error::DenyReason;
    use crate::route::layer::RouteLayer;
    use crate::testing::{gateway, get, Reached, Stub};

    const YAML: &str = r#"
server:
  listen: "127.0.0.1:0"
upstreams:
  - name: u
    url: "http://127.0.0.1:9"
rate_limits:
  - name: by-tenant
    key: header:X-Tenant
    limit: 2
    per: 1h
  - name: wide
    key: ip
    limit: 100
    per: 1h
routes:
  - name: limited
    path_prefix: /limited
    upstream: u
    auth: none
    rate_limits: [wide, by-tenant]
  - name: free
    path_prefix: /free
    upstream: u
    auth: none
"#;

    fn tenant(uri: &str, t: Option<&str>) -> Request<http_body_util::Empty<bytes::Bytes>> {
        let mut r = get(uri);
        r.extensions_mut().insert(Arc::new(ConnInfo::new(
            "192.0.2.10:4000".parse().unwrap(),
            false,
        )));
        if let Some(t) = t {
            r.headers_mut().insert("x-tenant", t.parse().unwrap());
        }
        r
    }

    // Behaviour: a limited route admits `limit` per key with the headers of the limit
    // closest to exhaustion, then refuses with 429 naming it; requests without the
    // header share one key; a route without limits passes untouched.
    #[tokio::test]
    async fn admits_the_limit_then_refuses() {
        let (gw, _dir) = gateway(YAML);
        let reached = Reached::default();
        let svc = || {
            RouteLayer::new(gw.clone())
                .layer(RateLimitLayer::new(gw.clone()).layer(Stub(reached.clone())))
        };
        for left in ["1", "0"] {
            let resp = svc()
                .oneshot(tenant("/limited/x", Some("a")))
                .await
                .unwrap();
            assert_eq!(
                resp.headers()["ratelimit-policy"],
                "\"by-tenant\";q=2;w=3600"
            );
            let state = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
            assert!(
                state.starts_with(&format!("\"by-tenant\";r={left};t=")),
                "{state}"
            );
        }
        let rej = svc()
            .oneshot(tenant("/limited/x", Some("a")))
            .await
            .unwrap_err();
        assert_eq!(rej.error.deny_reason(), Some(DenyReason::RateLimited));
        let resp = rej.error.to_response("rid");
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers()["ratelimit-policy"],
            "\"by-tenant\";q=2;w=3600"
        );
        assert!(
            resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        assert!(rej.error.to_string().contains("\"by-tenant\""));
        // Another tenant has its own budget; no header at all is one shared tenant.
        assert!(svc().oneshot(tenant("/limited/x", Some("b"))).await.is_ok());
        for _ in 0..2 {
            assert!(svc().oneshot(tenant("/limited/x", None)).await.is_ok());
        }
        assert!(svc().oneshot(tenant("/limited/x", None)).await.is_err());
        assert_eq!(reached.count(), 5);
        let free = svc().oneshot(tenant("/free/x", None)).await.unwrap();
        assert!(free.headers().get("ratelimit").is_none());
        // Only the two refusals were counted, under the route and the limit.
        let text = gw
            .metrics
            .render(gw.scrape_extras(), crate::metrics::Format::Text);
        assert!(
            text.contains("tollgate_rate_limited_total{route=\"limited\",limit=\"by-tenant\"} 2"),
            "{text}"
        );
    }

    // Behaviour: an admitted request that fails further down (here: the upstream side
    // refuses) still tells the client where it stands: the RateLimit headers are recorded
    // for the rescue layer.
    #[tokio::test]
    async fn refusals_below_carry_the_ratelimit_headers() {
        let (gw, _dir) = gateway(YAML);
        let refuse = tower::service_fn(|_req: Request<_>| async {
            Err::<Response<Body>, _>(Rejection::from(GatewayError::PayloadTooLarge(1)))
        });
        let svc = RouteLayer::new(gw.clone()).layer(RateLimitLayer::new(gw.clone()).layer(refuse));
        let rej = svc
            .oneshot(tenant("/limited/x", Some("z")))
            .await
            .unwrap_err();
        let h = &rej
            .facts
            .get::<crate::error::ResponseHeaders>()
            .expect("recorded")
            .0;
        assert_eq!(h["ratelimit-policy"], "\"by-tenant\";q=2;w=3600");
        assert!(h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"by-tenant\";r=1;t="));
        let resp = crate::error::rescue(rej, None);
        assert_eq!(resp.status(), 413);
        assert_eq!(
            resp.headers()["ratelimit-policy"],
            "\"by-tenant\";q=2;w=3600"
        );
    }

    // Behaviour: under explain the limits are listed and peeked, never counted.
    #[tokio::test]
    async fn explain_peeks_and_lists_the_limits() {
        let (gw, _dir) = gateway(YAML);
        let svc = || {
            RouteLayer::new(gw.clone())
                .layer(RateLimitLayer::new(gw.clone()).layer(Stub::default()))
        };
        for _ in 0..3 {
            let trace = Trace::default();
            let mut req = tenant("/limited/x", Some("a"));
            req.extensions_mut().insert(trace.clone());
            let resp = svc().oneshot(req).await.unwrap();
            assert_eq!(resp.headers()["ratelimit"], "\"by-tenant\";r=2;t=0");
            let lines = trace.lines();
            assert!(
                lines.iter().any(|l| l.starts_with(
                    "rate limit by-tenant: 2 per 3600s (sliding) by header:x-tenant, store local"
                ) && l.contains("2 of 2 left")),
                "{lines:?}"
            );
            assert!(
                lines.iter().any(|l| l.starts_with("rate limit wide:")),
                "{lines:?}"
            );
        }
    }
}
