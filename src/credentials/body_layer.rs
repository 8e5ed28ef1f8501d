//! Step 6 of the request path, as a layer: `body_credentials: basic`. Routes without it
//! pass untouched (their body keeps streaming, wrapped in `Either::Left` at no cost);
//! only such routes box a future and read the body (bounded by `max_body_bytes`).

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Either, Full};

use super::body::{apply_headers, rewrite};
use crate::body::{Body, BoxError};
use crate::decision;
use crate::error::{GatewayError, Rejection};
use crate::route::layer::{route_of, routed};
use crate::service::{take_ready, Step};

/// The request body after this step: the client's, streaming, or the rewritten one.
pub type MaybeRewritten<B> = Either<B, Full<Bytes>>;

/// `body_credentials: basic` on the matched route: credentials move from the body to
/// `Authorization: Basic`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyCredentialsLayer;

impl<S> tower::Layer<S> for BodyCredentialsLayer {
    type Service = BodyCredentials<S>;
    fn layer(&self, inner: S) -> BodyCredentials<S> {
        BodyCredentials { inner }
    }
}

#[derive(Debug, Clone)]
pub struct BodyCredentials<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for BodyCredentials<S>
where
    S: tower::Service<Request<MaybeRewritten<B>>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
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
        let bc = route_of(&req).and_then(|r| r.body_credentials);
        let Some(bc) = bc else {
            return Step::inner(self.inner.call(req.map(Either::Left)));
        };
        let max = routed(&req).map_or(u64::MAX, |r| r.snapshot.server.limits.max_body_bytes);
        let mut inner = take_ready(&mut self.inner);
        Step::boxed(async move {
            let (mut parts, body) = req.into_parts();
            let bytes =
                http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
                    .collect()
                    .await
                    .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                        Ok(_) => GatewayError::PayloadTooLarge(max),
                        Err(_) => {
                            GatewayError::BadRequest("could not read the request body".into())
                        }
                    })?
                    .to_bytes();
            let bytes = match rewrite(&parts.headers, &bytes, bc.grant_type_to_query)? {
                None => bytes,
                Some((rest, auth, grant)) => {
                    apply_headers(&mut parts.headers, auth, rest.len());
                    if let Some(g) = grant {
                        parts.uri = with_grant_type(&parts.uri, &g)?;
                    }
                    if let Some(t) = parts.extensions.get::<decision::Trace>() {
                        t.push("body_credentials: client_id/client_secret moved to Authorization: Basic".into());
                    }
                    rest
                }
            };
            inner
                .call(Request::from_parts(parts, Either::Right(Full::new(bytes))))
                .await
        })
    }
}

/// `uri` with `grant_type=...` added to its query.
fn with_grant_type(uri: &Uri, grant: &str) -> Result<Uri, GatewayError> {
    let pair = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", grant)
        .finish();
    let pq = match uri.query() {
        Some(q) if !q.is_empty() => format!("{}?{q}&{pair}", uri.path()),
        _ => format!("{}?{pair}", uri.path()),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded".into()))?,
    );
    Uri::from_parts(parts)
        .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded".into()))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::route::layer::RouteLayer;
    use crate::testing::{gateway, Reached, Stub, CONFIG};

    /// The shared test config (max_body_bytes 100) plus a route with body credentials.
    fn config() -> String {
        format!(
            "{CONFIG}  - name: cpi\n    path_prefix: /cpi/token\n    upstream: bi\n    auth: none\n    body_credentials: basic\n"
        )
    }

    fn post(path: &str, body: &str) -> Request<Full<Bytes>> {
        Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    // Behaviour: on a `body_credentials: basic` route the client id and secret leave the
    // body for `Authorization: Basic`; a route without it passes the request untouched;
    // a body over max_body_bytes is refused with 413 before anything is passed on.
    #[tokio::test]
    async fn credentials_move_from_the_body_only_where_the_route_asks() {
        let (gw, _dir) = gateway(&config());
        let reached = Reached::default();
        let svc = RouteLayer::new(gw).layer(BodyCredentialsLayer.layer(Stub(reached.clone())));

        let form = "grant_type=client_credentials&client_id=cx&client_secret=s3cret";
        let resp = svc.clone().oneshot(post("/cpi/token", form)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let seen = reached.last();
        let basic = base64::engine::general_purpose::STANDARD.encode("cx:s3cret");
        assert_eq!(
            seen.headers()["authorization"],
            format!("Basic {basic}").as_str()
        );

        svc.clone().oneshot(post("/open/x", form)).await.unwrap();
        let seen = reached.last();
        assert!(seen.headers().get("authorization").is_none());
        assert_eq!(reached.count(), 2);

        let big = format!("{form}&pad={}", "x".repeat(200));
        let refused = svc.oneshot(post("/cpi/token", &big)).await.unwrap_err();
        assert_eq!(refused.error.status(), 413);
        assert_eq!(reached.count(), 2, "an oversized body was passed on");
    }
}
