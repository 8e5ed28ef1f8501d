//! Step 5 of the request path, as a layer: the token service's own endpoints are
//! answered here; every other request passes.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};

use crate::body::{Body, BoxError};
use crate::decision;
use crate::error::Rejection;
use crate::gateway::Gateway;
use crate::route::layer::routed;
use crate::service::Step;

/// Serves the token service's own paths (token endpoint, JWKS, metadata); every other
/// request passes.
#[derive(Clone)]
pub struct TokenServiceLayer {
    gw: Arc<Gateway>,
}

impl TokenServiceLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        TokenServiceLayer { gw }
    }
}

impl<S> tower::Layer<S> for TokenServiceLayer {
    type Service = TokenEndpoints<S>;
    fn layer(&self, inner: S) -> TokenEndpoints<S> {
        TokenEndpoints {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TokenEndpoints<S> {
    inner: S,
    gw: Arc<Gateway>,
}

impl<S, B> tower::Service<Request<B>> for TokenEndpoints<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ts = routed(&req).and_then(|r| {
            r.snapshot
                .token_service
                .clone()
                .filter(|ts| ts.serves(&r.path))
        });
        let Some(ts) = ts else {
            return Step::inner(self.inner.call(req));
        };
        decision::note(&req, || {
            "token service: answered by tollgate itself (clients authenticate with their secret)"
                .into()
        });
        let gw = self.gw.clone();
        Step::boxed(async move {
            let path = routed(&req).map(|r| r.path.to_string()).unwrap_or_default();
            ts.handle(req, &path, &gw.metrics, &gw.auth_caches.dpop_replay)
                .await
                .map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use http_body_util::Full;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::route::layer::RouteLayer;
    use crate::testing::{body_json, gateway, Reached, Stub, CONFIG};

    fn token_request(secret: &str) -> Request<Full<Bytes>> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("dash:{secret}"));
        Request::post("/oauth2/token")
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(
                b"grant_type=client_credentials",
            )))
            .unwrap()
    }

    // Behaviour: the token endpoint is answered here (a token for a good secret, a
    // refusal for a bad one) and never reaches the inner service; other paths pass.
    #[tokio::test]
    async fn token_paths_are_answered_here_and_others_pass() {
        let (gw, _dir) = gateway(CONFIG);
        let reached = Reached::default();
        let svc = RouteLayer::new(gw.clone())
            .layer(TokenServiceLayer::new(gw.clone()).layer(Stub(reached.clone())));

        let resp = svc
            .clone()
            .oneshot(token_request("s3cret-s3cret"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = body_json(resp).await;
        assert!(
            body["access_token"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert_eq!(body["token_type"], "Bearer", "{body}");

        let refused = svc.clone().oneshot(token_request("wrong")).await;
        let status = match refused {
            Ok(r) => r.status(),
            Err(rej) => rej.error.status(),
        };
        assert_eq!(status, 401);

        let jwks = svc
            .clone()
            .oneshot(
                Request::get("/.well-known/jwks.json")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(jwks.status(), 200);
        assert_eq!(
            reached.count(),
            0,
            "a token-service path reached the inner service"
        );

        let open = svc
            .oneshot(
                Request::get("/open/x")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(open.status(), 200);
        assert_eq!(reached.count(), 1);
        assert_eq!(reached.last().uri().path(), "/open/x");
    }
}
