//! The request path, in order: the one place its steps are composed. Each step is a
//! tower layer living in the module of its concern; this file only says which, and in
//! what order. Per-request facts travel in request extensions on the way in (the config
//! snapshot, the normalised path, the matched route, the identity) and in response
//! extensions on the way out (route, identity, permission, denial), so one stack serves
//! every route: per-route variation is data, not a separate stack.
//!
//! A layer below [`RescueLayer`] refuses a request by returning a `Rejection`; the rescue
//! layer turns it into SPEC's JSON error (with the request id, and the CORS headers the
//! CORS layer recorded), so that every error is written in one place.
//!
//!  1. accept, TLS, header size and read timeout ........ `listener`
//!     credentials marked sensitive (never printed) ..... `sensitive`
//!  2. request id ......................................... `request_id`
//!     W3C trace context, the server span ............... `otel::layer`, `trace_context`
//!     timer; on the way out metrics and the access log . `observe`
//!     refusals -> SPEC's JSON errors ................... `error::Rescue`
//!     ... or gRPC statuses for gRPC clients ............ `grpc`
//!  3. normalise the path, match the route (400 / 404) ... `route`
//!  4. CORS: answer preflights, headers on every answer .. `cors`
//!     request_timeout, load shedding, head/body size ... `limits`
//!  5. endpoints tollgate serves itself .................. `token_service`
//!     browser sign-in: session cookie -> Bearer token,
//!     redirect to sign in, callback, logout ............ `session`
//!  6. `body_credentials` rewrite ........................ `credentials::body`
//!  7. authenticate the Bearer token, and
//!  8. authorise: clients, scopes, claims, permissions ... `gate` (`auth`, `policy`, `claims`)
//!     rate limits and quotas (429 / 503) ................ `ratelimit`
//!  9. upstream credentials .............................. `credentials`
//!     strip_cookies; the upstream's session (X-CSRF-Token) `upstream_session`
//! 10. forward, streaming ................................ `proxy`
//!     WebSocket: handshake, then a tunnel ............... `upgrade`
//!
//! [`policy`] (steps 3-8, rate limits included) is shared by the server and `tollgate explain`, which runs the
//! very same layers in front of a recording inner service instead of the upstream.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use tower::{Service, ServiceBuilder};

use crate::body::{Body, BoxError};
use crate::cors::layer::{CorsLayer, CorsService};
use crate::credentials::body_layer::{BodyCredentials, BodyCredentialsLayer};
use crate::credentials::upstream_layer::UpstreamAuthLayer;
use crate::error::RescueLayer;
use crate::gate::{GateLayer, GateService};
use crate::gateway::Gateway;
use crate::grpc::GrpcStatusLayer;
use crate::limits::{
    RequestTimeout, RequestTimeoutLayer, Shed, ShedLayer, SizeLimit, SizeLimitLayer,
};
use crate::observe::ObserveLayer;
use crate::otel::layer::TraceLayer;
use crate::proxy::Proxy;
use crate::ratelimit::layer::{RateLimit, RateLimitLayer};
use crate::request_id::RequestIdLayer;
use crate::route::layer::{RouteLayer, Routing};
use crate::sensitive::SensitiveHeadersLayer;
use crate::session::layer::{SessionLayer, Sessions};
use crate::token_service::layer::{TokenEndpoints, TokenServiceLayer};
use crate::upgrade::WebSocketLayer;
use crate::upstream_session::layer::UpstreamSessionLayer;

/// The public listener's service: every step of the request path.
pub fn public<B>(
    gw: &Arc<Gateway>,
) -> impl Service<
    Request<B>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        // Credentials are marked sensitive before anything can print them.
        .layer(SensitiveHeadersLayer)
        // 2. A sane X-Request-Id is kept, anything else replaced by a generated one, and
        //    every response carries it, errors included (tollgate's own layer: one
        //    header lookup, no extensions; see `request_id`).
        .layer(RequestIdLayer)
        // 11. A gRPC client gets tollgate's refusals as gRPC statuses (grpc-status
        //     16/7/8/14...); outside the metrics and log, which keep the HTTP status.
        .layer(GrpcStatusLayer)
        // W3C trace context: the client's trace continued or a new one started; the
        // request's traceparent names tollgate's span; the server span (when exported).
        .layer(TraceLayer::new(gw.clone()))
        // 2/11. The timer; on the way out the metrics, denial log and access log.
        .layer(ObserveLayer::new(gw.clone()))
        // 11. Refusals become SPEC's JSON errors, with the CORS headers recorded below.
        .layer(RescueLayer)
        .service(policy(
            gw,
            ServiceBuilder::new()
                // 9. Upstream credentials (Basic, or a cached client-credentials token).
                .layer(UpstreamAuthLayer::new(gw.clone()))
                // strip_cookies; the upstream's session: X-CSRF-Token fetch, session
                // cookies, one replay after 403 + X-CSRF-Token: Required.
                .layer(UpstreamSessionLayer::new(gw.clone()))
                // 10. WebSocket on `websocket:` routes: the handshake on a connection of
                //     its own, then a tunnel with idle and total timeouts.
                .layer(WebSocketLayer::new(gw.clone()))
                // 10. Forward to the route's upstream, streaming both ways.
                .service(Proxy::new(gw.metrics.upstream())),
        ))
}

/// Steps 3-8 in front of `S`, as a type (what [`policy`] builds).
pub type Policy<S> = Routing<
    CorsService<
        RequestTimeout<
            Shed<SizeLimit<TokenEndpoints<Sessions<BodyCredentials<GateService<RateLimit<S>>>>>>>,
        >,
    >,
>;

/// Steps 3-8: everything that decides whether a request may pass, in front of `inner`
/// (the upstream side for the server, a recorder for `tollgate explain`, the
/// application for the embeddable `tollgate::layer`).
pub fn policy<S>(gw: &Arc<Gateway>, inner: S) -> Policy<S> {
    ServiceBuilder::new()
        // 3. Normalise the path and match the route (400 / 404); the config snapshot
        //    is read here, once.
        .layer(RouteLayer::new(gw.clone()))
        // 4. CORS: preflights answered without a token; CORS headers on every answer.
        .layer(CorsLayer)
        // The end-to-end request_timeout (504).
        .layer(RequestTimeoutLayer)
        // Load shedding over max_concurrent_requests (503 + Retry-After).
        .layer(ShedLayer::new(gw.clone()))
        // Request head and declared body size (431 / 413).
        .layer(SizeLimitLayer)
        // 5. The token service's own endpoints (token, JWKS, metadata).
        .layer(TokenServiceLayer::new(gw.clone()))
        // Browser sign-in: on `login: true` routes a session cookie's access token is
        // presented to the gate as a Bearer token; a browser without either is sent to
        // sign in; the callback and logout paths are answered here.
        .layer(SessionLayer::new(gw.clone()))
        // 6. body_credentials: client_id/client_secret in the body -> Basic.
        .layer(BodyCredentialsLayer)
        // 7-8. Authenticate the Bearer token; authorise clients, scopes, permissions.
        .layer(GateLayer::new(gw.auth_caches.clone()))
        // 8½. The route's rate limits and quotas: after authorisation, so that denied
        //     requests and preflights are never counted (429 / 503).
        .layer(RateLimitLayer::new(gw.clone()))
        .service(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use http_body_util::Empty;

    // Cost guard: hyper allocates the stack's future for every request (boxed in
    // `listener`), and each layer's future holds the one below it; the slow paths
    // (key fetches, body reads, the exchange itself) are boxed so that it stays small.
    #[tokio::test]
    async fn the_stack_future_stays_small() {
        let (gw, _dir) = testing::gateway(testing::CONFIG);
        let mut svc = public::<Empty<Bytes>>(&gw);
        let fut = svc.call(testing::get("/open/x"));
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 2048, "the stack's future grew to {size} bytes");
    }
}
