//! tollgate's policy as a tower layer for any Rust HTTP service: put the same
//! `gateway.yaml` rules (routes, `issuers`, each route's `auth` and `permissions`, CORS,
//! limits, `body_credentials`, the token service) in front of an axum, tonic or hyper
//! application instead of an upstream.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = tollgate::layer::PolicyLayer::from_file("gateway.yaml")?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/v2/analytics/data", axum::routing::get(|| async { "rows" }))
//!     .layer(policy);
//! # let _ = app; Ok(()) }
//! ```
//!
//! A request is decided by the very layers the gateway runs (`stack::policy`), the same
//! gate, the same SPEC error bodies and reason codes: a refusal never reaches the
//! application. A path that is not in normal form (`%61`, `..`, `//`) is refused with
//! 400, since an application may route on the path as sent (axum's `Router::layer`
//! routes before its layers run): what the gate checks is what the handler serves. An
//! allowed request reaches the application with the verified [`Identity`] as an
//! `Arc<Identity>` request extension — with the `axum` feature, the [`Caller`]
//! extractor. The routes' `upstream` entries are not used: the application is the
//! upstream. Issuer keys are refreshed in the background like the gateway's (started
//! on the first request if no tokio runtime was running when the layer was built), and
//! an unknown `kid` refetches the issuer's JWKS, so key rotation is picked up.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower_http::request_id::{PropagateRequestId, SetRequestId};

use crate::body::{Body, BoxError};
use crate::config::ConfigError;
use crate::error::{GatewayError, Rejection, Rescue, RescueLayer};
pub use crate::gateway::Gateway;
pub use crate::identity::Identity;
use crate::request_id::{drop_insane, SaneRequestId, X_REQUEST_ID};
use crate::route::layer::routed;
use crate::service::Step;
use crate::stack::Policy;

/// Builds [`PolicyService`]s: one config, shared by every clone.
#[derive(Clone)]
pub struct PolicyLayer {
    gw: Arc<Gateway>,
    started: Arc<AtomicBool>,
}

impl PolicyLayer {
    /// The rules of a `gateway.yaml` (validated like `tollgate validate` does, every
    /// problem reported with its file, line and column; routes need no `upstream`).
    pub fn from_file(path: impl Into<PathBuf>) -> Result<PolicyLayer, ConfigError> {
        let registry = crate::config::Registry {
            embedded: true,
            ..Default::default()
        };
        Ok(PolicyLayer::from_gateway(Gateway::load_with(
            path.into(),
            registry,
        )?))
    }

    /// The rules of a gateway loaded elsewhere (e.g. to call [`Gateway::reload`]).
    pub fn from_gateway(gw: Arc<Gateway>) -> PolicyLayer {
        let layer = PolicyLayer {
            gw,
            started: Arc::new(AtomicBool::new(false)),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            layer.start();
        }
        layer
    }

    /// The gateway behind the layer: its config, caches, metrics and `reload`.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Starts the issuer key refreshers once (needs a tokio runtime).
    fn start(&self) {
        if !self.started.swap(true, Ordering::AcqRel) {
            self.gw.start_background();
        }
    }
}

/// The layer's service: request ids, then the gateway's policy layers, then the
/// application.
pub type PolicyService<S> =
    SaneIds<SetRequestId<PropagateRequestId<Rescue<Policy<App<S>>>>, SaneRequestId>>;

impl<S> tower::Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> PolicyService<S> {
        let app = App {
            inner,
            layer: self.clone(),
        };
        let policy = crate::stack::policy(&self.gw, app);
        let rescued = tower::Layer::layer(&RescueLayer, policy);
        SaneIds {
            inner: SetRequestId::new(
                PropagateRequestId::new(rescued, X_REQUEST_ID.clone()),
                X_REQUEST_ID.clone(),
                SaneRequestId,
            ),
        }
    }
}

/// Drops an insane `X-Request-Id` before tower-http's `SetRequestId` sees it.
#[derive(Clone)]
pub struct SaneIds<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for SaneIds<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        self.inner.call(drop_insane(req))
    }
}

/// The application, where the gateway would forward to an upstream.
#[derive(Clone)]
pub struct App<S> {
    inner: S,
    layer: PolicyLayer,
}

impl<S, B, ResBody> tower::Service<Request<B>> for App<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>, Error = Infallible>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Step<AppFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(never)) => match never {},
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.layer.start();
        // The gate checked the normalised path; the application may route on the path
        // as sent (axum's `Router::layer` routes before its layers run). They must be
        // the same, or a request could be checked as one endpoint and served as another.
        if let Some(r) = routed(&req) {
            if r.path != req.uri().path() {
                return Step::reject(GatewayError::BadRequest(format!(
                    "path is not in normal form; send it as {}",
                    r.path
                )));
            }
        }
        Step::inner(AppFuture {
            inner: self.inner.call(req),
        })
    }
}

pin_project! {
    pub struct AppFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResBody> Future for AppFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(resp) = std::task::ready!(self.project().inner.poll(cx));
        Poll::Ready(Ok(resp.map(|b| b.map_err(Into::into).boxed_unsync())))
    }
}

/// The caller's verified identity, for axum handlers behind a [`PolicyLayer`].
#[cfg(feature = "axum")]
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Identity>);

#[cfg(feature = "axum")]
impl<St: Send + Sync> axum_core::extract::FromRequestParts<St> for Caller {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &St,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<Identity>>()
            .cloned()
            .map(Caller)
            .ok_or((
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "no verified caller: the route is `auth: none`, or the handler is not behind tollgate's PolicyLayer",
            ))
    }
}
