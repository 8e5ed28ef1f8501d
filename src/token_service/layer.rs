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
            let path = routed(&req).map(|r| r.path.clone()).unwrap_or_default();
            ts.handle(req, &path, &gw.metrics, &gw.auth_caches.dpop_replay)
                .await
                .map_err(Into::into)
        })
    }
}
