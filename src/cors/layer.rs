//! Step 4 of the request path, as a layer: preflights answered here, the route's CORS
//! headers added to every answer.
//!
//! tollgate keeps its own layer rather than tower-http's `CorsLayer`: CORS is configured
//! per route (tower-http's is one policy per service, which would mean one stack per
//! route), origins match `https://*.company.com` on a dot boundary, and refusals produced
//! below this layer (401, 403, 413, 429, 504...) must carry the same headers: on a
//! refusal the headers are recorded as a [`ResponseHeaders`](crate::error::ResponseHeaders)
//! fact that the rescue layer adds to the error response.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use http::{Request, Response};

use super::{Cors, CorsGrant};
use crate::body::Body;
use crate::decision;
use crate::error::Rejection;
use crate::route::layer::route_of;
use crate::runtime::Route;
use crate::service::{OnOutcome, Outcome, Step, Then};

/// Answers preflights and adds the route's CORS headers to every response.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorsLayer;

impl<S> tower::Layer<S> for CorsLayer {
    type Service = CorsService<S>;
    fn layer(&self, inner: S) -> CorsService<S> {
        CorsService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CorsService<S> {
    inner: S,
}

/// On the way out: this request's CORS headers, on any response.
pub struct ApplyCors(Option<(Arc<Route>, Option<CorsGrant>)>);

impl OnOutcome for ApplyCors {
    fn on_outcome(self, out: Outcome) -> Outcome {
        let Some((route, grant)) = self.0 else {
            return out;
        };
        let Some(cors) = &route.cors else {
            return out;
        };
        match out {
            Ok(mut resp) => {
                cors.apply(resp.headers_mut(), grant.as_ref());
                Ok(resp)
            }
            Err(rej) => Err(rej.with_headers(|h| cors.apply(h, grant.as_ref()))),
        }
    }
}

impl<S, B> tower::Service<Request<B>> for CorsService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Then<S::Future, ApplyCors>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(route) = route_of(&req).cloned() else {
            return Then::new(Step::inner(self.inner.call(req)), ApplyCors(None));
        };
        let Some(cors) = &route.cors else {
            return Then::new(Step::inner(self.inner.call(req)), ApplyCors(None));
        };
        let grant = cors.check(&req);
        if req.headers().contains_key(header::ORIGIN) {
            decision::note(&req, || match &grant {
                Some(_) => "cors: origin allowed".into(),
                None => "cors: origin not allowed (no Access-Control-Allow-* headers)".into(),
            });
        }
        if Cors::is_preflight(&req) {
            decision::note(&req, || {
                "cors: preflight answered by tollgate, no token needed".into()
            });
            let resp = cors.preflight(&req, grant.as_ref());
            return Then::new(Step::done(Ok(resp)), ApplyCors(Some((route, grant))));
        }
        Then::new(
            Step::inner(self.inner.call(req)),
            ApplyCors(Some((route, grant))),
        )
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::error::{GatewayError, ResponseHeaders};
    use crate::route::layer::RouteLayer;
    use crate::testing::{gateway, Reached, Stub, CONFIG};

    fn request(method: &str, origin: &str) -> Request<http_body_util::Empty<bytes::Bytes>> {
        Request::builder()
            .method(method)
            .uri("/v2/analytics/data")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .body(http_body_util::Empty::new())
            .unwrap()
    }

    // Behaviour: a preflight is answered here, without a token, never passed on.
    #[tokio::test]
    async fn preflights_are_answered_here() {
        let (gw, _dir) = gateway(CONFIG);
        let reached = Reached::default();
        let svc = RouteLayer::new(gw).layer(CorsLayer.layer(Stub(reached.clone())));
        let resp = svc
            .oneshot(request("OPTIONS", "https://cx.company.com"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://cx.company.com"
        );
        assert_eq!(reached.count(), 0);
    }

    // Behaviour: answers and refusals alike carry the CORS headers; a refusal records
    // them for the rescue layer.
    #[tokio::test]
    async fn answers_and_refusals_carry_cors_headers() {
        let (gw, _dir) = gateway(CONFIG);
        let svc = RouteLayer::new(gw.clone()).layer(CorsLayer.layer(Stub::default()));
        let resp = svc
            .oneshot(request("GET", "https://cx.company.com"))
            .await
            .unwrap();
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://cx.company.com"
        );
        assert!(resp.headers()["vary"].to_str().unwrap().contains("Origin"));

        let refuse = tower::service_fn(|_req: Request<_>| async {
            Err::<Response<Body>, _>(Rejection::from(GatewayError::PayloadTooLarge(1)))
        });
        let svc = RouteLayer::new(gw).layer(CorsLayer.layer(refuse));
        let rej = svc
            .oneshot(request("POST", "https://cx.company.com"))
            .await
            .unwrap_err();
        let h = &rej.facts.get::<ResponseHeaders>().expect("recorded").0;
        assert_eq!(h["access-control-allow-origin"], "https://cx.company.com");

        // A foreign origin gets no Access-Control-Allow-* header.
        let (gw, _dir) = gateway(CONFIG);
        let svc = RouteLayer::new(gw).layer(CorsLayer.layer(Stub::default()));
        let resp = svc
            .oneshot(request("GET", "https://evil.example"))
            .await
            .unwrap();
        assert!(resp.headers().get("access-control-allow-origin").is_none());
    }
}
