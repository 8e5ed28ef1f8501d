//! Step 9 of the request path, as a layer: the upstream's own credentials.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};

use super::{OAuth2Source, UpstreamAuth};
use crate::body::Body;
use crate::decision;
use crate::error::{BadGateway, Rejection};
use crate::gateway::Gateway;
use crate::runtime::Route;
use crate::service::{take_ready, OnOutcome, Outcome, Step, Then};

/// Step 9: adds the upstream's own credentials (`upstreams[].auth`), replacing the
/// inbound `Authorization`. A cached upstream token is added inline; fetching one boxes
/// the request's future while it waits. An upstream that answers 401 loses the cached
/// token it was sent with.
#[derive(Clone)]
pub struct UpstreamAuthLayer {
    gw: Arc<Gateway>,
}

impl UpstreamAuthLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        UpstreamAuthLayer { gw }
    }
}

impl<S> tower::Layer<S> for UpstreamAuthLayer {
    type Service = UpstreamCredentials<S>;
    fn layer(&self, inner: S) -> UpstreamCredentials<S> {
        UpstreamCredentials {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct UpstreamCredentials<S> {
    inner: S,
    gw: Arc<Gateway>,
}

/// On the way out: a 401 from the upstream drops the token it was sent with.
pub struct DropRefusedToken(Option<(Arc<Gateway>, Arc<OAuth2Source>, HeaderValue)>);

impl OnOutcome for DropRefusedToken {
    fn on_outcome(self, out: Outcome) -> Outcome {
        if let (Some((gw, src, used)), Ok(resp)) = (self.0, &out) {
            if resp.status() == StatusCode::UNAUTHORIZED {
                tracing::info!(upstream = %src.upstream, "upstream answered 401; dropping its cached token");
                gw.tokens.invalidate_if_current(&src, &used);
            }
        }
        out
    }
}

impl<S, B> tower::Service<Request<B>> for UpstreamCredentials<S>
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
    type Future = Then<S::Future, DropRefusedToken>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let auth = req
            .extensions()
            .get::<Arc<Route>>()
            .and_then(|r| r.upstream.as_ref())
            .and_then(|u| u.auth.as_ref());
        let src = match auth {
            None => return Then::new(Step::inner(self.inner.call(req)), DropRefusedToken(None)),
            Some(UpstreamAuth::Basic(v)) => {
                let v = v.clone();
                decision::note(&req, || "upstream credentials: Basic".into());
                req.headers_mut().insert(AUTHORIZATION, v);
                return Then::new(Step::inner(self.inner.call(req)), DropRefusedToken(None));
            }
            Some(UpstreamAuth::OAuth2(src)) => src.clone(),
        };
        // A cached token (or a cached failure, while it is backed off) decides inline.
        match self.gw.tokens.tokens.get(&src.cache_key) {
            Some(Ok(v)) => {
                req.headers_mut().insert(AUTHORIZATION, v.clone());
                let post = DropRefusedToken(Some((self.gw.clone(), src, v)));
                Then::new(Step::inner(self.inner.call(req)), post)
            }
            Some(Err(_)) => Then::new(
                Step::reject(BadGateway::UpstreamToken {
                    upstream: src.upstream.clone(),
                }),
                DropRefusedToken(None),
            ),
            None => {
                let gw = self.gw.clone();
                let mut inner = take_ready(&mut self.inner);
                Then::new(
                    Step::boxed(async move {
                        let v = gw
                            .tokens
                            .authorization(&src, &gw.metrics)
                            .await
                            .map_err(|_| BadGateway::UpstreamToken {
                                upstream: src.upstream.clone(),
                            })?;
                        req.headers_mut().insert(AUTHORIZATION, v.clone());
                        let out = inner.call(req).await;
                        DropRefusedToken(Some((gw, src, v))).on_outcome(out)
                    }),
                    DropRefusedToken(None),
                )
            }
        }
    }
}
