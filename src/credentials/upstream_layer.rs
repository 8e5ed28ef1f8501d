//! Step 9 of the request path, as a layer: the upstream's own credentials.
//!
//! For `token_exchange` and `jwt_bearer` the caller's token is read here from the
//! `Authorization` header the gate verified (nothing between the gate and this layer
//! changes it), before it is replaced by the exchanged token.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};

use super::{OAuth2Source, Subject, TokenCache, UpstreamAuth};
use crate::auth;
use crate::body::Body;
use crate::decision;
use crate::error::{BadGateway, Rejection};
use crate::gate::token_missing;
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::route::layer::Routed;
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

/// A token sent upstream: the source, its cache key, the token.
type Sent = (Arc<Gateway>, Arc<OAuth2Source>, [u8; 32], HeaderValue);

/// On the way out: a 401 from the upstream drops the token it was sent with.
pub struct DropRefusedToken(Option<Sent>);

impl OnOutcome for DropRefusedToken {
    fn on_outcome(self, out: Outcome) -> Outcome {
        if let (Some((gw, src, key, used)), Ok(resp)) = (self.0, &out) {
            if resp.status() == StatusCode::UNAUTHORIZED {
                tracing::info!(upstream = %src.upstream, "upstream answered 401; dropping its cached token");
                gw.tokens.invalidate_if_current(&key, &used);
            }
        }
        out
    }
}

/// Where a token for this request comes from: the source's own token, or one obtained
/// with the caller's token.
enum Need {
    Own,
    OnBehalf { subject: String, expires_at: u64 },
}

impl Need {
    async fn fetch(
        &self,
        tokens: &TokenCache,
        src: &OAuth2Source,
        gw: &Gateway,
    ) -> super::TokenResult {
        match self {
            Need::Own => tokens.authorization(src, &gw.metrics).await,
            Need::OnBehalf {
                subject,
                expires_at,
            } => {
                let s = Subject {
                    token: subject,
                    expires_at: *expires_at,
                };
                tokens.on_behalf(src, &s, &gw.metrics).await
            }
        }
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
            .get::<Routed>()
            .and_then(|r| r.route.as_ref())
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
            Some(UpstreamAuth::OAuth2(src)) => (src.clone(), src.cache_key, Need::Own),
            Some(UpstreamAuth::OnBehalf(src)) => {
                // The caller's token, as the gate verified it.
                let expires_at = req
                    .extensions()
                    .get::<Arc<Identity>>()
                    .map(|i| i.expires_at);
                let (Some(subject), Some(expires_at)) = (
                    auth::sender::presented_token(req.headers()).map(|(_, t)| t),
                    expires_at,
                ) else {
                    return Then::new(Step::reject(token_missing()), DropRefusedToken(None));
                };
                decision::note(&req, || {
                    "upstream credentials: a token obtained with the caller's token".into()
                });
                let key = src.subject_key(subject);
                let need = Need::OnBehalf {
                    subject: subject.to_owned(),
                    expires_at,
                };
                (src.clone(), key, need)
            }
        };
        let (src, key, need) = src;
        // A cached token (or a cached failure, while it is backed off) decides inline;
        // a miss is counted by the fetch below.
        let cached = self.gw.tokens.tokens.get(&key);
        if cached.is_some() {
            self.gw.tokens.lookups.hit();
        }
        match cached {
            Some(Ok(v)) => {
                req.headers_mut().insert(AUTHORIZATION, v.clone());
                let post = DropRefusedToken(Some((self.gw.clone(), src, key, v)));
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
                        let v = need.fetch(&gw.tokens, &src, &gw).await.map_err(|_| {
                            BadGateway::UpstreamToken {
                                upstream: src.upstream.clone(),
                            }
                        })?;
                        req.headers_mut().insert(AUTHORIZATION, v.clone());
                        let out = inner.call(req).await;
                        DropRefusedToken(Some((gw, src, key, v))).on_outcome(out)
                    }),
                    DropRefusedToken(None),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::route::layer::RouteLayer;
    use crate::testing::{config, gateway, get, Answer, Reached, Stub};

    const CONFIG: &str = r#"
upstreams:
  - name: plain
    url: "http://127.0.0.1:9"
  - name: basic
    url: "http://127.0.0.1:9"
    auth: {type: basic, username: svc, password: pa55word}
  - name: oauth
    url: "http://127.0.0.1:9"
    auth:
      type: oauth2_client_credentials
      token_url: "http://127.0.0.1:9/token"
      client_id: gw
      client_secret: gw-secret
routes:
  - {name: plain, path_prefix: /plain, upstream: plain, auth: none}
  - {name: basic, path_prefix: /basic, upstream: basic, auth: none}
  - {name: oauth, path_prefix: /oauth, upstream: oauth, auth: none}
"#;

    fn with_bearer(path: &str) -> Request<http_body_util::Empty<bytes::Bytes>> {
        let mut req = get(path);
        req.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer caller-token"),
        );
        req
    }

    fn oauth_source(gw: &Gateway) -> Arc<OAuth2Source> {
        let snap = gw.current();
        let up = snap.upstreams.iter().find(|u| &*u.name == "oauth").unwrap();
        match up.auth.as_ref() {
            Some(UpstreamAuth::OAuth2(src)) => src.clone(),
            _ => panic!("the oauth upstream has no client-credentials source"),
        }
    }

    // Behaviour: an upstream without `auth` sees the caller's Authorization untouched;
    // a `type: basic` upstream gets its own Basic credentials instead of the caller's.
    #[tokio::test]
    async fn basic_credentials_replace_the_callers_and_none_leave_it() {
        let (gw, _dir) = gateway(&config(CONFIG));
        let reached = Reached::default();
        let svc = RouteLayer::new(gw.clone())
            .layer(UpstreamAuthLayer::new(gw).layer(Stub(reached.clone())));

        let resp = svc.clone().oneshot(with_bearer("/plain/x")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            reached.last().headers()[AUTHORIZATION],
            "Bearer caller-token"
        );

        svc.oneshot(with_bearer("/basic/x")).await.unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("svc:pa55word");
        assert_eq!(
            reached.last().headers()[AUTHORIZATION],
            format!("Basic {basic}").as_str()
        );
        assert_eq!(reached.count(), 2);
    }

    // Behaviour: a cached client-credentials token is added without a fetch; when the
    // upstream answers 401 with it, the cached token is dropped (the next request
    // fetches a new one), and a token the cache no longer holds is not touched.
    #[tokio::test]
    async fn a_cached_token_is_sent_and_dropped_when_the_upstream_refuses_it() {
        let (gw, _dir) = gateway(&config(CONFIG));
        let src = oauth_source(&gw);
        let token = HeaderValue::from_static("Bearer upstream-token-1");
        gw.tokens
            .tokens
            .insert(src.cache_key, Ok(token.clone()), Duration::from_secs(300));

        let reached = Reached::default();
        let ok = RouteLayer::new(gw.clone())
            .layer(UpstreamAuthLayer::new(gw.clone()).layer(Stub(reached.clone())));
        let resp = ok.oneshot(with_bearer("/oauth/x")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(reached.last().headers()[AUTHORIZATION], token);
        assert!(
            matches!(gw.tokens.tokens.get(&src.cache_key), Some(Ok(v)) if v == token),
            "a token the upstream accepted was dropped"
        );

        let refused = RouteLayer::new(gw.clone()).layer(
            UpstreamAuthLayer::new(gw.clone())
                .layer(Answer::status(reached.clone(), StatusCode::UNAUTHORIZED)),
        );
        let resp = refused.oneshot(with_bearer("/oauth/x")).await.unwrap();
        assert_eq!(resp.status(), 401, "the upstream's answer is passed on");
        assert_eq!(reached.count(), 2);
        assert!(
            gw.tokens.tokens.get(&src.cache_key).is_none(),
            "the token the upstream refused is still cached"
        );
    }

    // Behaviour: a token endpoint that cannot be reached is a 502 naming the upstream,
    // and the request never reaches the inner service; while the failure is backed
    // off, the next request is refused at once from the cache.
    #[tokio::test]
    async fn an_unreachable_token_endpoint_is_a_502_before_the_upstream() {
        let (gw, _dir) = gateway(&config(CONFIG));
        let reached = Reached::default();
        let svc = RouteLayer::new(gw.clone())
            .layer(UpstreamAuthLayer::new(gw.clone()).layer(Stub(reached.clone())));
        for round in 0..2 {
            let err = svc
                .clone()
                .oneshot(with_bearer("/oauth/x"))
                .await
                .expect_err("a request went on without upstream credentials");
            assert_eq!(err.error.status(), 502, "round {round}");
        }
        assert_eq!(
            reached.count(),
            0,
            "a request reached the upstream without a token"
        );
    }
}
