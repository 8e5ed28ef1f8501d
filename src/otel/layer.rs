//! Step 2 of the request path, before the timer: W3C trace context and the request's
//! server span.
//!
//! A valid incoming `traceparent` is continued (its trace id, its sampled flag, its
//! `tracestate` passed on untouched); otherwise a new trace is started (random ids, the
//! sampled flag by `tracing.sample_ratio`, any `tracestate` dropped, as the
//! specification asks). Either way tollgate's own server span gets a new id, and the
//! request's `traceparent` is rewritten to name it as the parent: the upstream
//! receives it, and the access log reads the trace id from it.
//!
//! When the request is sampled and spans are exported (`tracing.otlp_endpoint`), the
//! server span is current while the layers below run (their child spans hang under it)
//! and ends when the response head is ready, with the route, method, status and the
//! gate's decision read from the response's extensions. Otherwise the future is the
//! inner one, unwrapped.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{HeaderValue, Method, Request, Response};
use opentelemetry::trace::{SpanKind, Status, TraceState};
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;

use super::{scope, sync_scope, Active, Tracer};
use crate::body::Body;
use crate::conn::ConnInfo;
use crate::error::Denied;
use crate::gateway::Gateway;
use crate::policy::GateFacts;
use crate::request_id::X_REQUEST_ID;
use crate::runtime::Route;
use crate::trace_context::{self, SAMPLED, TRACEPARENT, TRACESTATE};

#[derive(Clone)]
pub struct TraceLayer {
    gw: Arc<Gateway>,
}

impl TraceLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        TraceLayer { gw }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    gw: Arc<Gateway>,
}

impl<S, B> tower::Service<Request<B>> for Trace<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let guard = self.gw.tracing.load();
        let tracer: Option<&Tracer> = (*guard).as_deref();
        let incoming = trace_context::incoming(req.headers());
        let (trace_id, parent, sampled) = match &incoming {
            Some(tp) => (tp.trace_id, Some(tp.parent_id), tp.sampled()),
            None => {
                let id = trace_context::new_trace_id();
                let ratio = tracer.map_or(1.0, Tracer::sample_ratio);
                (id, None, trace_context::sample(&id, ratio))
            }
        };
        let span_id = trace_context::new_span_id();
        let flags = if sampled { SAMPLED } else { 0 };
        let headers = req.headers_mut();
        headers.insert(
            TRACEPARENT.clone(),
            trace_context::header(&trace_id, &span_id, flags),
        );
        if incoming.is_none() {
            // tracestate belongs to the trace it came with, and there is none.
            headers.remove(&TRACESTATE);
        }
        if incoming.is_some() || tracer.is_some() {
            req.extensions_mut().insert(trace_context::TraceRecorded);
        }
        let active = match tracer {
            Some(t) if sampled && t.exporting() => {
                let state = tracestate(req.headers());
                Active::new(trace_id, span_id, state, t)
            }
            _ => None,
        };
        let Some(active) = active else {
            return TraceFuture::Plain {
                fut: self.inner.call(req),
            };
        };
        let server = ServerSpan {
            active: active.clone(),
            parent,
            start: SystemTime::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            request_id: req.headers().get(&X_REQUEST_ID).cloned(),
            client: req
                .extensions()
                .get::<Arc<ConnInfo>>()
                .map(|c| c.ip.clone()),
        };
        let inner = &mut self.inner;
        let fut = sync_scope(active.clone(), || inner.call(req));
        TraceFuture::Recording {
            fut: scope(active, fut),
            span: Some(server),
        }
    }
}

/// The incoming `tracestate` for the exported spans (an unparsable one is still passed
/// upstream untouched; it is just not recorded).
fn tracestate(h: &http::HeaderMap) -> TraceState {
    let mut all = h.get_all(&TRACESTATE).iter();
    let Some(first) = all.next() else {
        return TraceState::NONE;
    };
    let joined: Cow<'_, str> = match all.next() {
        None => Cow::Borrowed(first.to_str().unwrap_or("")),
        Some(_) => Cow::Owned(
            h.get_all(&TRACESTATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    TraceState::from_str(&joined).unwrap_or(TraceState::NONE)
}

/// What the server span needs from the way in.
struct ServerSpan {
    active: Arc<Active>,
    parent: Option<[u8; 8]>,
    start: SystemTime,
    method: Method,
    path: String,
    request_id: Option<HeaderValue>,
    client: Option<HeaderValue>,
}

impl ServerSpan {
    fn end(self, resp: &Response<Body>) {
        let ext = resp.extensions();
        let route = ext.get::<Arc<Route>>();
        let denied = ext.get::<Denied>();
        let status = resp.status().as_u16();
        let mut attrs = Vec::with_capacity(11);
        attrs.push(KeyValue::new(
            "http.request.method",
            self.method.to_string(),
        ));
        attrs.push(KeyValue::new("url.path", self.path));
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(r) = route {
            attrs.push(KeyValue::new("tollgate.route", r.name.to_string()));
            if let Some(u) = &r.upstream {
                attrs.push(KeyValue::new("tollgate.upstream", u.name.to_string()));
            }
        }
        match denied {
            Some(d) => {
                attrs.push(KeyValue::new("tollgate.decision", "deny"));
                attrs.push(KeyValue::new("tollgate.reason", d.reason.as_str()));
            }
            // A matched route that nothing refused: the gate let it through.
            None if route.is_some() => {
                attrs.push(KeyValue::new("tollgate.decision", "allow"));
            }
            None => {}
        }
        let facts = ext.get::<GateFacts>();
        if let Some(c) = facts
            .and_then(|f| f.identity.as_ref())
            .and_then(|i| i.client_id.as_deref())
        {
            attrs.push(KeyValue::new("tollgate.client_id", c.to_owned()));
        }
        if let Some(p) = facts.and_then(|f| f.permission.as_deref()) {
            attrs.push(KeyValue::new("tollgate.permission", p.to_owned()));
        }
        if let Some(id) = self.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            attrs.push(KeyValue::new("tollgate.request_id", id.to_owned()));
        }
        if let Some(ip) = self.client.as_ref().and_then(|v| v.to_str().ok()) {
            attrs.push(KeyValue::new("client.address", ip.to_owned()));
        }
        let name = match route {
            Some(r) => Cow::Owned(format!("{} {}", self.method, r.name)),
            None => Cow::Owned(self.method.to_string()),
        };
        let span_status = if status >= 500 {
            Status::error(format!("HTTP {status}"))
        } else {
            Status::Unset
        };
        self.active.end(
            self.active.span_id,
            self.parent,
            self.parent.is_some(),
            SpanKind::Server,
            name,
            self.start,
            attrs,
            span_status,
        );
    }
}

pin_project! {
    #[project = TraceProj]
    pub enum TraceFuture<F> {
        /// Not recorded: the inner future as it is.
        Plain { #[pin] fut: F },
        /// Recorded: the span is current while the inner future runs, and ends with it.
        Recording {
            #[pin]
            fut: tokio::task::futures::TaskLocalFuture<Arc<Active>, F>,
            span: Option<ServerSpan>,
        },
    }
}

impl<F> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TraceProj::Plain { fut } => fut.poll(cx),
            TraceProj::Recording { fut, span } => {
                let Ok(resp) = std::task::ready!(fut.poll(cx));
                if let Some(s) = span.take() {
                    s.end(&resp);
                }
                Poll::Ready(Ok(resp))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::error::RescueLayer;
    use crate::testing::{gateway, get, Reached, Stub, CONFIG};

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    async fn forwarded(headers: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let (gw, _dir) = gateway(CONFIG);
        let reached = Reached::default();
        let svc = TraceLayer::new(gw).layer(RescueLayer.layer(Stub(reached.clone())));
        let mut req = get("/open/x");
        for (k, v) in headers {
            req.headers_mut().append(*k, HeaderValue::from_static(v));
        }
        svc.oneshot(req).await.unwrap();
        reached.last().headers().clone()
    }

    fn parts(tp: &HeaderValue) -> Vec<String> {
        tp.to_str().unwrap().split('-').map(str::to_owned).collect()
    }

    // Behaviour: a valid incoming traceparent is continued (its trace id and sampled
    // flag, its tracestate untouched) with tollgate's own span id as the new parent.
    #[tokio::test]
    async fn a_valid_trace_is_continued_under_a_new_span() {
        let h = forwarded(&[("traceparent", INCOMING), ("tracestate", "vendor=abc")]).await;
        let p = parts(&h[&TRACEPARENT]);
        assert_eq!(p[0], "00");
        assert_eq!(
            p[1], "4bf92f3577b34da6a3ce929d0e0e4736",
            "the trace id changed"
        );
        assert_eq!(p[2].len(), 16);
        assert_ne!(
            p[2], "00f067aa0ba902b7",
            "the upstream's parent is not tollgate's span"
        );
        assert_eq!(p[3], "01");
        assert_eq!(h[&TRACESTATE], "vendor=abc");
    }

    // Behaviour: without a traceparent, or with one that is not valid, a new trace is
    // started and a tracestate (which belonged to no trace) is dropped.
    #[tokio::test]
    async fn a_missing_or_broken_trace_starts_a_new_one() {
        for given in [
            &[("tracestate", "vendor=abc")][..],
            &[
                (
                    "traceparent",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ),
                ("tracestate", "vendor=abc"),
            ][..],
        ] {
            let h = forwarded(given).await;
            let p = parts(&h[&TRACEPARENT]);
            assert_eq!(p.len(), 4);
            assert_eq!(p[1].len(), 32);
            assert_ne!(p[1], "00000000000000000000000000000000");
            assert!(p[1].bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(h.get(&TRACESTATE).is_none(), "{given:?}: tracestate kept");
        }
    }
}
