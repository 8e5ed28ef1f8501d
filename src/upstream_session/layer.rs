//! Between step 9 (upstream credentials) and step 10 (forwarding), as a layer: the
//! route's `strip_cookies`, and the upstream session of `upstreams[].csrf`.
//!
//! It sits below the credentials layer because a session belongs to the credential
//! the upstream sees (the `Authorization` that layer set), and above the proxy because
//! a refused request is sent again through it. Requests to other upstreams pass
//! inline (at most a header removed); a modifying request to a `csrf` upstream boxes
//! its future: it may wait for a token fetch, and for the one replay.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::ServiceExt;

use super::replay::{self, ReplayBody};
use super::{
    drain, needs_token, session_key, target_url, token_required, FetchFailure, Session, Token,
    X_CSRF_TOKEN,
};
use crate::body::{Body, BoxError};
use crate::decision;
use crate::error::Rejection;
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::route::layer::{route_of, routed};
use crate::service::{take_ready, OnOutcome, Outcome, Step, Then};
use crate::upstream::{Csrf, Upstream};

/// `strip_cookies` and the upstream session of `upstreams[].csrf`.
#[derive(Clone)]
pub struct UpstreamSessionLayer {
    gw: Arc<Gateway>,
}

impl UpstreamSessionLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        UpstreamSessionLayer { gw }
    }
}

impl<S> tower::Layer<S> for UpstreamSessionLayer {
    type Service = UpstreamSession<S>;
    fn layer(&self, inner: S) -> UpstreamSession<S> {
        UpstreamSession {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct UpstreamSession<S> {
    inner: S,
    gw: Arc<Gateway>,
}

pin_project! {
    /// The request body handed to the proxy: the client's, or one send of a body kept
    /// for a replay.
    #[project = SessionBodyProj]
    pub enum SessionBody<B> {
        Plain { #[pin] body: B },
        Kept { #[pin] body: ReplayBody<B> },
    }
}

impl<B> SessionBody<B> {
    pub fn plain(body: B) -> Self {
        SessionBody::Plain { body }
    }
}

impl<B> HttpBody for SessionBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            SessionBodyProj::Plain { body } => body
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into))),
            SessionBodyProj::Kept { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SessionBody::Plain { body } => body.is_end_stream(),
            SessionBody::Kept { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SessionBody::Plain { body } => body.size_hint(),
            SessionBody::Kept { body } => body.size_hint(),
        }
    }
}

/// On the way out of a request that needed no token: the upstream's cookies go into
/// the session's jar (made now if the upstream starts one), never to the client, and
/// neither does an `X-CSRF-Token`.
pub struct Absorb(Option<AbsorbInto>);

pub struct AbsorbInto {
    gw: Arc<Gateway>,
    key: [u8; 32],
    url: url::Url,
    upstream: Arc<str>,
}

impl OnOutcome for Absorb {
    fn on_outcome(self, mut out: Outcome) -> Outcome {
        if let (Some(a), Ok(resp)) = (self.0, &mut out) {
            if resp.headers().contains_key(SET_COOKIE) {
                let session = a.gw.sessions.get_or_create(a.key);
                session.absorb(resp.headers_mut(), &a.url, &a.upstream);
            } else {
                resp.headers_mut().remove(&X_CSRF_TOKEN);
            }
        }
        out
    }
}

impl<S, B> tower::Service<Request<B>> for UpstreamSession<S>
where
    S: tower::Service<Request<SessionBody<B>>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Then<S::Future, Absorb>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(route) = route_of(&req).cloned() else {
            return Then::new(
                Step::inner(self.inner.call(req.map(SessionBody::plain))),
                Absorb(None),
            );
        };
        let up = route.upstream.as_ref();
        let Some((up, csrf)) = up.and_then(|u| Some((u.clone(), u.csrf.clone()?))) else {
            if route.strip_cookies && req.headers().contains_key(COOKIE) {
                decision::note(&req, || {
                    "strip_cookies: the client's cookies are not forwarded".into()
                });
                req.headers_mut().remove(COOKIE);
            }
            return Then::new(
                Step::inner(self.inner.call(req.map(SessionBody::plain))),
                Absorb(None),
            );
        };
        // The upstream session is tollgate's: the client's own token and cookies for
        // this upstream are not passed on.
        let h = req.headers_mut();
        h.remove(COOKIE);
        h.remove(&X_CSRF_TOKEN);
        let authorization = h.get(AUTHORIZATION).cloned();
        let caller = req.extensions().get::<Arc<Identity>>().cloned();
        let key = session_key(&up, authorization.as_ref(), caller.as_deref());
        let path = match routed(&req) {
            Some(r) => r.path.as_str(),
            None => req.uri().path(),
        };
        let url = target_url(&csrf.origin, &format!("{}{path}", up.base_path));
        if !needs_token(req.method()) {
            // Safe methods need no token (SAP checks only modifying requests) but go
            // with the session's cookies, which keep the session alive.
            if let Some(s) = self.gw.sessions.get(&key) {
                if let Some(c) = s.cookie_header(&url) {
                    req.headers_mut().insert(COOKIE, c);
                }
            }
            let post = Absorb(Some(AbsorbInto {
                gw: self.gw.clone(),
                key,
                url,
                upstream: up.name.clone(),
            }));
            return Then::new(
                Step::inner(self.inner.call(req.map(SessionBody::plain))),
                post,
            );
        }
        let max_body = routed(&req).map_or(u64::MAX, |r| r.snapshot.server.limits.max_body_bytes);
        let keep = csrf.replay_max_bytes.unwrap_or(max_body).min(max_body);
        let gw = self.gw.clone();
        let inner = take_ready(&mut self.inner);
        let session = gw.sessions.get_or_create(key);
        let exchange = Exchange {
            gw,
            up,
            csrf,
            session,
            url,
            authorization,
        };
        let (parts, body) = req.into_parts();
        let (first, recording) = replay::record(body, keep);
        Then::new(
            Step::boxed(exchange.run(inner, parts, first, recording)),
            Absorb(None),
        )
    }
}

/// A modifying request to a `csrf` upstream: token, send, and at most one replay.
struct Exchange {
    gw: Arc<Gateway>,
    up: Arc<Upstream>,
    csrf: Arc<Csrf>,
    session: Arc<Session>,
    url: url::Url,
    authorization: Option<HeaderValue>,
}

impl Exchange {
    /// The session's token; a fetch carries the request's id and trace context (`head`).
    async fn token(&self, head: &http::HeaderMap) -> Result<Token, Outcome> {
        self.session
            .token(
                &self.up,
                &self.csrf,
                self.authorization.as_ref(),
                head,
                &self.gw.metrics,
            )
            .await
            .map_err(|f| match f {
                FetchFailure::Refused(resp) => Ok(resp),
                FetchFailure::Failed(e) => Err(Rejection::from(e)),
            })
    }

    /// One send of the request, with the session's token and cookies.
    fn request<B>(
        &self,
        parts: &http::request::Parts,
        token: &Token,
        body: ReplayBody<B>,
    ) -> Request<SessionBody<B>> {
        let mut req = Request::new(SessionBody::Kept { body });
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();
        let h = req.headers_mut();
        if let Some(t) = &token.value {
            h.insert(X_CSRF_TOKEN.clone(), t.clone());
        }
        if let Some(c) = self.session.cookie_header(&self.url) {
            h.insert(COOKIE, c);
        }
        req
    }

    async fn run<S, B>(
        self,
        mut inner: S,
        parts: http::request::Parts,
        first: ReplayBody<B>,
        recording: replay::Recording<B>,
    ) -> Outcome
    where
        S: tower::Service<Request<SessionBody<B>>, Response = Response<Body>, Error = Rejection>,
    {
        let token = match self.token(&parts.headers).await {
            Ok(t) => t,
            Err(out) => {
                recording.release();
                return out;
            }
        };
        let out = inner
            .ready()
            .await?
            .call(self.request(&parts, &token, first))
            .await;
        let mut resp = match out {
            Ok(r) => r,
            Err(e) => {
                recording.release();
                return Err(e);
            }
        };
        let required = token_required(resp.status(), resp.headers());
        self.session
            .absorb(resp.headers_mut(), &self.url, &self.up.name);
        if !required {
            recording.release();
            return Ok(resp);
        }
        // The token (or the session it belongs to) is no longer valid upstream.
        self.session.invalidate(token.generation);
        let Some(again) = recording.replay() else {
            tracing::info!(upstream = %self.up.name,
                "403 X-CSRF-Token: Required; the request body was longer than can be kept for a replay, so the refusal is passed on");
            return Ok(resp);
        };
        drain(resp.into_body(), self.up.timeout).await;
        let token = match self.token(&parts.headers).await {
            Ok(t) => t,
            Err(out) => return out,
        };
        self.gw.metrics.csrf_replay(&self.up.name);
        tracing::info!(upstream = %self.up.name,
            "the upstream session had expired (403 X-CSRF-Token: Required): sending the request once more with a new token");
        let mut resp = inner
            .ready()
            .await?
            .call(self.request(&parts, &token, again))
            .await?;
        self.session
            .absorb(resp.headers_mut(), &self.url, &self.up.name);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::body::empty;
    use crate::route::layer::RouteLayer;
    use crate::testing::{config, gateway, get, Answer, Reached, Stub};

    const CONFIG: &str = r#"
upstreams:
  - name: plain
    url: "http://127.0.0.1:9"
  - name: s4
    url: "http://127.0.0.1:9/odata"
    csrf: {fetch_path: /odata/}
routes:
  - {name: strip, path_prefix: /strip, upstream: plain, auth: none, strip_cookies: true}
  - {name: keep, path_prefix: /keep, upstream: plain, auth: none}
  - {name: s4, path_prefix: /s4, upstream: s4, auth: none}
"#;

    fn with_cookie(method: Method, path: &str) -> Request<http_body_util::Empty<Bytes>> {
        let mut req = get(path);
        *req.method_mut() = method;
        req.headers_mut()
            .insert(COOKIE, HeaderValue::from_static("client=1"));
        req.headers_mut().insert(
            X_CSRF_TOKEN.clone(),
            HeaderValue::from_static("clients-own"),
        );
        req
    }

    // Behaviour: `strip_cookies: true` keeps the client's cookies from the upstream;
    // a route without it forwards them; neither touches anything else.
    #[tokio::test]
    async fn strip_cookies_removes_the_clients_cookies_only_where_asked() {
        let (gw, _dir) = gateway(&config(CONFIG));
        let reached = Reached::default();
        let svc = RouteLayer::new(gw.clone())
            .layer(UpstreamSessionLayer::new(gw).layer(Stub(reached.clone())));

        svc.clone()
            .oneshot(with_cookie(Method::GET, "/strip/x"))
            .await
            .unwrap();
        let seen = reached.last();
        assert!(
            seen.headers().get(COOKIE).is_none(),
            "strip_cookies forwarded a cookie"
        );
        assert_eq!(seen.headers()[&X_CSRF_TOKEN], "clients-own");

        svc.oneshot(with_cookie(Method::GET, "/keep/x"))
            .await
            .unwrap();
        assert_eq!(reached.last().headers()[COOKIE], "client=1");
    }

    // Behaviour: on a `csrf` upstream the session is tollgate's: the client's cookies
    // and X-CSRF-Token never reach it; a safe request needs no token; the upstream's
    // Set-Cookie and X-CSRF-Token go into the session's jar, not to the client, and
    // the next request carries the session's cookie.
    #[tokio::test]
    async fn a_csrf_upstreams_cookies_stay_in_the_gateways_session() {
        let (gw, _dir) = gateway(&config(CONFIG));
        let reached = Reached::default();
        let upstream = Answer::with(reached.clone(), || {
            let mut resp = Response::new(empty());
            let h = resp.headers_mut();
            h.append(
                SET_COOKIE,
                HeaderValue::from_static("SAP_SESSIONID=abc; Path=/"),
            );
            h.insert(
                X_CSRF_TOKEN.clone(),
                HeaderValue::from_static("upstream-token"),
            );
            resp
        });
        let svc = RouteLayer::new(gw.clone())
            .layer(UpstreamSessionLayer::new(gw.clone()).layer(upstream));

        let resp = svc
            .clone()
            .oneshot(with_cookie(Method::GET, "/s4/Orders"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers().get(SET_COOKIE).is_none(),
            "the upstream's cookie reached the client"
        );
        assert!(
            resp.headers().get(&X_CSRF_TOKEN).is_none(),
            "the upstream's token reached the client"
        );
        let first = reached.last();
        assert!(
            first.headers().get(COOKIE).is_none(),
            "the client's cookie reached a csrf upstream"
        );
        assert!(
            first.headers().get(&X_CSRF_TOKEN).is_none(),
            "the client's X-CSRF-Token was forwarded"
        );

        svc.oneshot(with_cookie(Method::GET, "/s4/Orders"))
            .await
            .unwrap();
        assert_eq!(reached.last().headers()[COOKIE], "SAP_SESSIONID=abc");
        assert_eq!(reached.count(), 2);
    }

    // Behaviour: a modifying request to a `csrf` upstream first fetches a token; when
    // that fetch fails the request is refused (502) and never sent without a token.
    #[tokio::test]
    async fn a_modifying_request_is_not_sent_without_a_token() {
        let (gw, _dir) = gateway(&config(CONFIG));
        let reached = Reached::default();
        let svc = RouteLayer::new(gw.clone())
            .layer(UpstreamSessionLayer::new(gw).layer(Stub(reached.clone())));
        let err = svc
            .oneshot(with_cookie(Method::POST, "/s4/Orders"))
            .await
            .expect_err("a POST went on without a CSRF token");
        assert_eq!(err.error.status(), 502);
        assert_eq!(reached.count(), 0);
    }
}
