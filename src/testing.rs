//! Unit-test helpers for the layers of the request path: a gateway built from YAML
//! text, a stub inner service that records what reached it, and a request builder.
//! Layers are driven through `tower::ServiceExt::oneshot`, with no sockets.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};

use crate::body::{empty, Body};
use crate::error::Rejection;
use crate::gateway::Gateway;
use crate::service::Outcome;

/// A gateway loaded from `yaml` (in a temporary folder kept alive with it).
pub fn gateway(yaml: &str) -> (Arc<Gateway>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let gw = Gateway::load(path).unwrap_or_else(|e| panic!("config: {e}"));
    (gw, dir)
}

pub const CONFIG: &str = r#"
server:
  listen: "127.0.0.1:0"
  limits:
    max_header_bytes: 2048
    max_body_bytes: 100
    max_concurrent_requests: 1
token_service:
  issuer: "https://gw.test"
  audience: "https://api.test"
  clients:
    - id: dash
      secret: s3cret-s3cret
      scopes: [analytics.read, extra]
upstreams:
  - name: bi
    url: "http://127.0.0.1:9"
routes:
  - name: analytics
    path_prefix: /v2/analytics
    upstream: bi
    auth:
      issuers: [local]
      scopes: [analytics.read]
    permissions:
      - path: /v2/analytics/data
        methods: [GET]
        scopes: [extra]
      - path: /v2/analytics/metadata
        methods: [GET]
    cors:
      allow_origins: ["https://cx.company.com"]
  - name: open
    path_prefix: /open
    upstream: bi
    auth: none
"#;

/// A config of `rest` (its `upstreams` and `routes`) behind a public listener on a free
/// loopback port: the layers' own test configs state only what they are about.
pub fn config(rest: &str) -> String {
    format!("server:\n  listen: \"127.0.0.1:0\"\n{rest}")
}

/// What reached the stub: the request as it arrived, extensions included.
#[derive(Clone, Default)]
pub struct Reached(pub Arc<Mutex<Vec<Request<()>>>>);

impl Reached {
    /// Keeps `req`'s head (its body is dropped).
    pub fn record<B>(&self, req: Request<B>) {
        let (parts, _) = req.into_parts();
        self.0.lock().unwrap().push(Request::from_parts(parts, ()));
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn last(&self) -> Request<()> {
        let mut v = self.0.lock().unwrap();
        let r = v.last_mut().expect("nothing reached the inner service");
        let mut out = Request::new(());
        *out.method_mut() = r.method().clone();
        *out.uri_mut() = r.uri().clone();
        *out.headers_mut() = r.headers().clone();
        std::mem::swap(out.extensions_mut(), r.extensions_mut());
        out
    }
}

/// The inner service: records the request and answers 200 with an empty body.
#[derive(Clone, Default)]
pub struct Stub(pub Reached);

impl<B> tower::Service<Request<B>> for Stub {
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = std::future::Ready<Outcome>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.0.record(req);
        std::future::ready(Ok(Response::new(empty())))
    }
}

pub fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).unwrap()
}

pub async fn body_json(resp: Response<Body>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// An inner service like [`Stub`] that answers with a response of the test's making.
#[derive(Clone)]
pub struct Answer {
    pub reached: Reached,
    respond: Arc<dyn Fn() -> Response<Body> + Send + Sync>,
}

impl Answer {
    /// Every request is answered with `status` and an empty body.
    pub fn status(reached: Reached, status: http::StatusCode) -> Self {
        Answer::with(reached, move || {
            let mut resp = Response::new(empty());
            *resp.status_mut() = status;
            resp
        })
    }

    /// Every request is answered with what `respond` makes.
    pub fn with(
        reached: Reached,
        respond: impl Fn() -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        Answer {
            reached,
            respond: Arc::new(respond),
        }
    }
}

impl<B> tower::Service<Request<B>> for Answer {
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = std::future::Ready<Outcome>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.reached.record(req);
        std::future::ready(Ok((self.respond)()))
    }
}
