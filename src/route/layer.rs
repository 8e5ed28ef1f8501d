//! Step 3 of the request path, as a layer: where a request meets the config. It reads
//! the runtime model once and records it, the normalised path and the matched [`Route`]
//! as one [`Routed`] request extension for the layers below (one extension rather than
//! three: each costs an allocation on every request), so a reload never changes the
//! rules under a request in flight. The token service's own paths pass without a route.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http::Request;

use super::{normalize_host, normalized, without_parameters, BadPath};
use crate::decision;
use crate::error::{GatewayError, Rejection};
use crate::gateway::Gateway;
use crate::runtime::{Route, Runtime};
use crate::service::{record, OnOutcome, Outcome, Step, Then};

/// Fact: what routing decided for this request.
#[derive(Clone)]
pub struct Routed {
    /// The runtime model this request is served by, read once when it is routed.
    pub snapshot: Arc<Runtime>,
    /// The normalised path: what permissions match and the upstream receives.
    pub path: NormalPath,
    /// The matched route; none for the token service's own paths.
    pub route: Option<Arc<Route>>,
}

/// A normalised request path ([`Routed::path`]; reads as a `&str`). When normalising
/// changed nothing, as for nearly every request, it is the request's own path, shared
/// with its URI rather than copied (one allocation per request fewer).
#[derive(Clone)]
pub struct NormalPath(PathRepr);

#[derive(Clone)]
enum PathRepr {
    /// The request URI's path (`PathAndQuery::path`), already normal.
    Request(http::uri::PathAndQuery),
    Rebuilt(Box<str>),
}

impl NormalPath {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            PathRepr::Request(pq) => pq.path(),
            PathRepr::Rebuilt(p) => p,
        }
    }

    /// The normalised form of `uri`'s path (see [`normalize_path`]).
    pub fn of(uri: &http::Uri) -> Result<NormalPath, BadPath> {
        Ok(NormalPath(match normalized(uri.path())? {
            None => match uri.path_and_query() {
                Some(pq) => PathRepr::Request(pq.clone()),
                None => PathRepr::Rebuilt(uri.path().into()),
            },
            Some(p) => PathRepr::Rebuilt(p.into()),
        }))
    }
}

impl From<String> for NormalPath {
    /// A path the caller has normalised.
    fn from(p: String) -> NormalPath {
        NormalPath(PathRepr::Rebuilt(p.into()))
    }
}

impl From<&str> for NormalPath {
    /// A path the caller has normalised.
    fn from(p: &str) -> NormalPath {
        NormalPath(PathRepr::Rebuilt(p.into()))
    }
}

impl std::ops::Deref for NormalPath {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for NormalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for NormalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for NormalPath {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for NormalPath {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for NormalPath {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

/// The request's [`Routed`] fact, once it has been routed.
pub fn routed<B>(req: &Request<B>) -> Option<&Routed> {
    req.extensions().get::<Routed>()
}

/// The request's matched route, once it has been routed.
pub fn route_of<B>(req: &Request<B>) -> Option<&Arc<Route>> {
    routed(req).and_then(|r| r.route.as_ref())
}

/// Normalises the path and finds the route (400 / 404 here).
#[derive(Clone)]
pub struct RouteLayer {
    gw: Arc<Gateway>,
}

impl RouteLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        RouteLayer { gw }
    }
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = Routing<S>;
    fn layer(&self, inner: S) -> Routing<S> {
        Routing {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Routing<S> {
    inner: S,
    gw: Arc<Gateway>,
}

/// On the way out: the matched route, for the logs, the metrics and the rescue layer.
pub struct RecordRoute(Option<Arc<Route>>);

impl OnOutcome for RecordRoute {
    fn on_outcome(self, out: Outcome) -> Outcome {
        match self.0 {
            Some(route) => record(out, route),
            None => out,
        }
    }
}

/// Set by the listener on an HTTP/1.1 request that came without a `Host` header.
#[derive(Debug, Clone, Copy)]
pub struct HostMissing;

/// Framing tricks hyper lets through that a proxy must refuse (request smuggling); else
/// the one `Host` header, if any (read here once for routing).
fn smuggling_guard<B>(req: &Request<B>) -> Result<Option<&HeaderValue>, GatewayError> {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding present".into(),
        ));
    }
    let mut hosts = h.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header".into()));
    }
    Ok(host)
}

/// The host a request is routed by: `Host`, else the authority of an absolute URI.
pub fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

impl<S, B> tower::Service<Request<B>> for Routing<S>
where
    S: tower::Service<
        Request<B>,
        Response = http::Response<crate::body::Body>,
        Error = crate::error::Rejection,
    >,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Then<S::Future, RecordRoute>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let refuse = |e: GatewayError| Then::new(Step::reject(e), RecordRoute(None));
        // The Host header, else the authority of an absolute URI (`request_host`).
        let host = match smuggling_guard(&req) {
            Ok(Some(h)) => h.to_str().ok().map(normalize_host),
            // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, whatever its
            // target (the listener marks it; HTTP/1.0 and HTTP/2 need no Host).
            Ok(None) if req.extensions().get::<HostMissing>().is_some() => {
                return refuse(GatewayError::BadRequest(
                    "HTTP/1.1 request without a Host header".into(),
                ))
            }
            Ok(None) => req.uri().authority().map(|a| normalize_host(a.as_str())),
            Err(e) => return refuse(e),
        };
        let rt = self.gw.current();
        let path = match NormalPath::of(req.uri()) {
            Ok(p) => p,
            Err(e) => {
                decision::note(&req, || format!("path: refused ({})", e.0));
                let refusal =
                    Rejection::from(GatewayError::BadRequest(format!("invalid path: {}", e.0)));
                // SPEC: every response to an allowed origin, errors included, carries
                // the CORS headers. The route the path was written for (its prefix,
                // read as written) says which; it decides nothing else.
                let raw = without_parameters(req.uri().path());
                let cors = rt
                    .table
                    .lookup(host.as_deref().unwrap_or_default(), &raw)
                    .and_then(|id| rt.routes[id].cors.as_ref());
                let refusal = match cors {
                    Some(c) => {
                        let grant = c.check(&req);
                        refusal.with_headers(|h| c.apply(h, grant.as_ref()))
                    }
                    None => refusal,
                };
                return Then::new(Step::reject(refusal), RecordRoute(None));
            }
        };
        if path != req.uri().path() {
            decision::note(&req, || format!("normalised path: {path}"));
        }
        let route = if rt.token_service.as_ref().is_some_and(|ts| ts.serves(&path)) {
            decision::note(&req, || "route: tollgate's token service".into());
            None
        } else if rt.login.as_ref().is_some_and(|l| l.serves(&path)) {
            decision::note(&req, || "route: tollgate's sign-in endpoints".into());
            None
        } else {
            let host = host.unwrap_or_default();
            // By the segments' names: `/admin;x/users` is `/admin/users` to many
            // backends, so it must meet the `/admin` route's gates, not `/`'s.
            let Some(id) = rt.table.lookup(&host, &without_parameters(&path)) else {
                decision::note(&req, || "route: none matches".into());
                return refuse(GatewayError::NotFound);
            };
            let route = rt.routes[id].clone();
            decision::note(&req, || {
                format!(
                    "route: {} (path_prefix {}{}, upstream {})",
                    route.name,
                    route.path_prefix,
                    if route.case_sensitive {
                        ""
                    } else {
                        " in any case"
                    },
                    route.upstream.as_ref().map_or("-", |u| &*u.name)
                )
            });
            Some(route)
        };
        req.extensions_mut().insert(Routed {
            snapshot: rt,
            path,
            route: route.clone(),
        });
        Then::new(Step::inner(self.inner.call(req)), RecordRoute(route))
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::testing::{gateway, get, Reached, Stub, CONFIG};

    // A path normalising leaves alone is the request's own (shared with its URI); one it
    // changes is rebuilt; a refused one is refused; either way it reads as the text.
    #[test]
    fn normal_paths_share_the_request_uri() {
        let uri: http::Uri = "/v2/data?x=1".parse().unwrap();
        let p = NormalPath::of(&uri).unwrap();
        assert!(matches!(p.0, PathRepr::Request(_)));
        assert_eq!(p, "/v2/data");
        assert_eq!(format!("{p} {p:?}"), "/v2/data \"/v2/data\"");
        let uri: http::Uri = "/v2//./data/%7Euser?x=1".parse().unwrap();
        let p = NormalPath::of(&uri).unwrap();
        assert!(matches!(p.0, PathRepr::Rebuilt(_)));
        assert_eq!(p, "/v2/data/~user");
        assert_eq!(p.len(), "/v2/data/~user".len());
        let uri: http::Uri = "/a/%2e%2e/b".parse().unwrap();
        assert!(NormalPath::of(&uri).is_err());
    }

    async fn route(
        gw: &Arc<Gateway>,
        req: Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> (Outcome, Reached) {
        let reached = Reached::default();
        let svc = RouteLayer::new(gw.clone()).layer(Stub(reached.clone()));
        (svc.oneshot(req).await, reached)
    }

    // Behaviour: a matched request carries the route, the normalised path and the config
    // snapshot to the layers below; the route is recorded on the response.
    #[tokio::test]
    async fn routes_and_records_the_facts() {
        let (gw, _dir) = gateway(CONFIG);
        let (out, reached) = route(&gw, get("/v2/analytics/x/../metadata")).await;
        let resp = out.expect("routed");
        assert_eq!(
            resp.extensions().get::<Arc<Route>>().unwrap().name.as_ref(),
            "analytics"
        );
        let req = reached.last();
        let routed = routed(&req).unwrap();
        assert_eq!(routed.path, "/v2/analytics/metadata");
        assert_eq!(&*routed.route.as_ref().unwrap().name, "analytics");
    }

    // Behaviour: no route -> 404, a bad path -> 400, smuggling framing -> 400; the inner
    // service is not reached.
    #[tokio::test]
    async fn refuses_unknown_paths_bad_paths_and_smuggling() {
        let (gw, _dir) = gateway(CONFIG);
        let (out, reached) = route(&gw, get("/nowhere")).await;
        assert!(matches!(out.unwrap_err().error, GatewayError::NotFound));
        let (out, _) = route(&gw, get("/v2/analytics/%2e%2e/x")).await;
        assert!(matches!(
            out.unwrap_err().error,
            GatewayError::BadRequest(_)
        ));
        let mut req = get("/open/x");
        req.headers_mut()
            .insert("content-length", "1".parse().unwrap());
        req.headers_mut()
            .insert("transfer-encoding", "chunked".parse().unwrap());
        let (out, _) = route(&gw, req).await;
        assert!(matches!(
            out.unwrap_err().error,
            GatewayError::BadRequest(_)
        ));
        assert_eq!(reached.count(), 0);
    }

    // Behaviour: the token service's own paths pass without a route.
    #[tokio::test]
    async fn token_service_paths_pass_without_a_route() {
        let (gw, _dir) = gateway(CONFIG);
        let (out, reached) = route(&gw, get("/.well-known/jwks.json")).await;
        assert!(out.unwrap().extensions().get::<Arc<Route>>().is_none());
        assert!(route_of(&reached.last()).is_none());
    }
}
