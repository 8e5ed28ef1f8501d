//! Steps 2 and 11 of the request path: the duration timer, and on the way out the
//! request metrics, the denial log line and the one access-log line per request.
//!
//! Everything it reports it reads from the response: the layers below record what they
//! learnt as response extensions (the matched [`Route`], the verified [`Identity`], the
//! permission entry, and for a refusal the [`Denied`] fact), errors included, because
//! the rescue layer below this one has already turned every refusal into a response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, Uri};
use pin_project_lite::pin_project;

use crate::body::Body;
use crate::conn::ConnInfo;
use crate::decisions::Refusal;
use crate::error::{Denied, GatewayError};
use crate::gate::{self, Gate};
use crate::gateway::Gateway;

use crate::policy::GateFacts;
use crate::request_id::X_REQUEST_ID;
use crate::runtime::Route;
use crate::trace_context::{self, TRACEPARENT};

#[derive(Clone)]
pub struct ObserveLayer {
    gw: Arc<Gateway>,
}

impl ObserveLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        ObserveLayer { gw }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    gw: Arc<Gateway>,
}

impl<S, B> tower::Service<Request<B>> for Observe<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let record = Record {
            start: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id: req.headers().get(&X_REQUEST_ID).cloned(),
            // Written by the trace-context layer above: the trace id, copied (no
            // allocation).
            trace_id: req
                .headers()
                .get(&TRACEPARENT)
                .and_then(trace_context::trace_id_text),
            conn: req.extensions().get::<Arc<ConnInfo>>().cloned(),
            gw: self.gw.clone(),
        };
        ObserveFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

/// What the way out needs from the way in.
struct Record {
    start: Instant,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    trace_id: Option<[u8; 32]>,
    conn: Option<Arc<ConnInfo>>,
    gw: Arc<Gateway>,
}

pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = std::task::ready!(this.inner.poll(cx));
        if let Some(r) = this.record.take() {
            r.finish(&resp);
        }
        Poll::Ready(Ok(resp))
    }
}

/// The route label of an answer no route took.
pub(crate) static NO_ROUTE: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("none"));

impl Record {
    fn finish(self, resp: &Response<Body>) {
        let elapsed = self.start.elapsed();
        let ext = resp.extensions();
        let route = ext.get::<Arc<Route>>();
        let route_name = route.map_or(&*NO_ROUTE, |r| &r.name);
        let facts = ext.get::<GateFacts>();
        let identity = facts.and_then(|f| f.identity.as_ref());
        let client = identity.and_then(|i| i.client_id.as_deref()).unwrap_or("-");
        let rid = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let status = resp.status().as_u16();
        if let Some(d) = ext.get::<Denied>() {
            self.gw.metrics.denied(route_name, d.reason);
            tracing::info!(
                target: "tollgate::auth",
                request_id = rid,
                route = &**route_name,
                method = %self.method,
                path = self.uri.path(),
                permission = facts.and_then(|f| f.permission.as_deref()).unwrap_or("-"),
                client,
                reason = d.reason.as_str(),
                status = d.status.as_u16(),
                "denied: {}", d.description
            );
        }
        if let Some(e) = ext.get::<Arc<GatewayError>>() {
            self.remember(e, route, facts, route_name, client, rid, status);
        }
        self.gw
            .metrics
            .request(route_name, route.map(|r| &r.series), status, elapsed);
        crate::logging::access(&crate::logging::Access {
            request_id: rid,
            route: route_name,
            method: self.method.as_str(),
            path: self.uri.path(),
            status,
            duration: elapsed,
            upstream: route
                .and_then(|r| r.upstream.as_ref())
                .map_or("-", |u| &*u.name),
            client,
            remote: self
                .conn
                .as_ref()
                .and_then(|c| c.ip.to_str().ok())
                .unwrap_or("-"),
            trace_id: self
                .trace_id
                .as_ref()
                .and_then(|t| std::str::from_utf8(t).ok())
                .unwrap_or("-"),
        });
    }
}

impl Record {
    /// Keeps a refused or failed request in `gw.decisions` (the refusal path only: a
    /// forwarded request never comes here). Its steps are rebuilt from the facts on
    /// the response, as `tollgate explain` would print them; request headers (where
    /// the credentials are) are not read.
    #[allow(clippy::too_many_arguments)]
    fn remember(
        &self,
        e: &GatewayError,
        route: Option<&Arc<Route>>,
        facts: Option<&GateFacts>,
        route_name: &str,
        client: &str,
        rid: &str,
        status: u16,
    ) {
        let mut steps = vec![format!("request: {} {}", self.method, self.uri.path())];
        match route {
            Some(r) => {
                steps.push(format!(
                    "route: {} (path_prefix {}{}, upstream {})",
                    r.name,
                    r.path_prefix,
                    if r.case_sensitive { "" } else { " in any case" },
                    r.upstream.as_ref().map_or("-", |u| &*u.name)
                ));
                let rt = self.gw.current();
                match Gate::of(r, &rt.issuers, &self.gw.auth_caches) {
                    Some(g) => {
                        steps.push(gate::describe_rule(&g));
                        let identity = facts.and_then(|f| f.identity.as_deref());
                        if identity.is_some() {
                            steps.extend(gate::decision_lines(
                                &g,
                                identity,
                                facts.and_then(|f| f.permission.as_deref()),
                                Some(e),
                            ));
                        }
                    }
                    None => steps.push("auth: none (public route)".into()),
                }
                if let Some(rl) = &r.rate_limits {
                    let names: Vec<&str> = rl.limits().map(|l| &**l.name()).collect();
                    steps.push(format!("rate limits: [{}]", names.join(", ")));
                }
            }
            None if matches!(e, GatewayError::NotFound) => steps.push("route: none matches".into()),
            None => {}
        }
        steps.push(e.explain_line());
        self.gw.decisions.record(Refusal {
            request_id: rid,
            route: route_name,
            method: self.method.as_str(),
            path: self.uri.path(),
            client,
            remote: self
                .conn
                .as_ref()
                .and_then(|c| c.ip.to_str().ok())
                .unwrap_or("-"),
            status,
            error: e.code(),
            reason: e.deny_reason().map(|r| r.as_str()),
            gate: e.gate(),
            description: &e.to_string(),
            steps,
        });
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::error::RescueLayer;
    use crate::gate::GateLayer;
    use crate::metrics::Format;
    use crate::route::layer::RouteLayer;
    use crate::testing::{gateway, get, Reached, Stub, CONFIG};

    fn with_id(path: &str, id: &'static str) -> Request<http_body_util::Empty<bytes::Bytes>> {
        let mut req = get(path);
        req.headers_mut()
            .insert(X_REQUEST_ID.clone(), HeaderValue::from_static(id));
        req
    }

    fn sample<'a>(page: &'a str, prefix: &str) -> Option<&'a str> {
        page.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap())
    }

    // Behaviour: every request, forwarded or refused, is counted by route and status;
    // a refusal is counted by its reason and kept, under its request id, with the
    // steps that led to it; a forwarded request is not kept.
    #[tokio::test]
    async fn requests_are_counted_and_refusals_remembered() {
        let (gw, _dir) = gateway(CONFIG);
        let reached = Reached::default();
        let svc = ObserveLayer::new(gw.clone()).layer(
            RescueLayer.layer(
                RouteLayer::new(gw.clone())
                    .layer(GateLayer::new(gw.auth_caches.clone()).layer(Stub(reached.clone()))),
            ),
        );

        let ok = svc
            .clone()
            .oneshot(with_id("/open/x", "req-ok-1"))
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let nf = svc
            .clone()
            .oneshot(with_id("/nowhere", "req-nf-1"))
            .await
            .unwrap();
        assert_eq!(nf.status(), 404);
        let denied = svc
            .oneshot(with_id("/v2/analytics/data", "req-401-1"))
            .await
            .unwrap();
        assert_eq!(denied.status(), 401);
        assert_eq!(reached.count(), 1);

        let page = gw.metrics.render(gw.scrape_extras(), Format::Text);
        assert_eq!(
            sample(
                &page,
                r#"tollgate_requests_total{route="open",status="200"}"#
            ),
            Some("1"),
            "{page}"
        );
        assert_eq!(
            sample(
                &page,
                r#"tollgate_requests_total{route="none",status="404"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &page,
                r#"tollgate_requests_total{route="analytics",status="401"}"#
            ),
            Some("1")
        );
        assert!(
            page.lines()
                .any(|l| l.starts_with("tollgate_auth_denied_total{")
                    && l.contains(r#"route="analytics""#)
                    && l.contains(r#"reason="token_missing""#)),
            "{page}"
        );

        assert!(
            gw.decisions.get("req-ok-1").is_none(),
            "a forwarded request was kept as a refusal"
        );
        let nf = gw.decisions.get("req-nf-1").expect("the 404 was not kept");
        assert_eq!((nf.status, nf.error.as_str()), (404, "not_found"));
        let d = gw.decisions.get("req-401-1").expect("the 401 was not kept");
        assert_eq!(d.route, "analytics");
        assert_eq!(d.reason.as_deref(), Some("token_missing"));
    }
}
