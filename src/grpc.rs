//! Step 11 for gRPC clients: a refusal answered as a gRPC status.
//!
//! A gRPC client (`content-type: application/grpc...`) cannot read SPEC's JSON error: it
//! looks for `grpc-status` and `grpc-message`. When tollgate itself refuses such a
//! request (the rescue layer's answer, which carries the [`GatewayError`] in its
//! extensions), this layer rewrites the answer into a gRPC "trailers-only" response:
//! HTTP 200, `content-type: application/grpc`, `grpc-status` (401 -> 16
//! UNAUTHENTICATED, 403 -> 7 PERMISSION_DENIED, 429 -> 8 RESOURCE_EXHAUSTED, 404 -> 12
//! UNIMPLEMENTED, 400/413/431 -> 3 INVALID_ARGUMENT / 8, 502/503 -> 14 UNAVAILABLE, 504
//! -> 4 DEADLINE_EXCEEDED) and the `error_description` as `grpc-message`, keeping
//! `WWW-Authenticate`, `Retry-After`, the `RateLimit` headers and `X-Request-Id`.
//! Answers of the upstream pass untouched (its statuses are its own). The layer sits
//! outside the metrics and the access log, which keep the HTTP status tollgate decided.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;

use crate::body::Body;
use crate::error::GatewayError;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether the request is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE).is_some_and(|v| {
        let b = v.as_bytes();
        b.len() >= 16
            && b[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(b.get(16), None | Some(b'+' | b';'))
    })
}

/// The gRPC status code for an HTTP status tollgate answers with.
pub fn code_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 | 431 => 3,  // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 => 12,       // UNIMPLEMENTED (no such method here)
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        504 => 4,        // DEADLINE_EXCEEDED
        _ => 13,         // INTERNAL
    }
}

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%`.
pub fn encode_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Rewrites tollgate's own refusal of a gRPC call into a trailers-only gRPC answer.
fn to_grpc(resp: Response<Body>) -> Response<Body> {
    let Some(err) = resp.extensions().get::<Arc<GatewayError>>().cloned() else {
        return resp;
    };
    let (mut parts, _json) = resp.into_parts();
    let code = code_for(parts.status);
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.remove(http::header::CONTENT_LENGTH);
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&encode_message(&err.to_string())) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    Response::from_parts(parts, crate::body::empty())
}

/// gRPC refusals as gRPC statuses (outermost, above the metrics and access log).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcStatusLayer;

impl<S> tower::Layer<S> for GrpcStatusLayer {
    type Service = GrpcStatus<S>;
    fn layer(&self, inner: S) -> GrpcStatus<S> {
        GrpcStatus { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcStatus<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for GrpcStatus<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = GrpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = is_grpc(req.headers());
        GrpcFuture {
            inner: self.inner.call(req),
            grpc,
        }
    }
}

pin_project! {
    pub struct GrpcFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F, E> Future for GrpcFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(if *this.grpc { out.map(to_grpc) } else { out })
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::error::RescueLayer;
    use crate::route::layer::RouteLayer;
    use crate::testing::{body_json, gateway, get, Answer, Reached, CONFIG};

    fn grpc(path: &str) -> Request<http_body_util::Empty<bytes::Bytes>> {
        let mut req = get(path);
        req.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        req
    }

    // Behaviour: tollgate's own refusal of a gRPC call becomes a trailers-only gRPC
    // answer (HTTP 200, grpc-status, grpc-message); the same refusal of a non-gRPC
    // request stays SPEC's JSON; an answer of the upstream passes untouched even to a
    // gRPC client.
    #[tokio::test]
    async fn only_tollgates_refusals_of_grpc_calls_become_grpc_statuses() {
        let (gw, _dir) = gateway(CONFIG);
        let reached = Reached::default();
        let svc = GrpcStatusLayer.layer(RescueLayer.layer(
            RouteLayer::new(gw).layer(Answer::status(reached.clone(), StatusCode::UNAUTHORIZED)),
        ));

        let resp = svc.clone().oneshot(grpc("/no/such/route")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(resp.headers()[&GRPC_STATUS], "12");
        assert!(resp.headers().contains_key(&GRPC_MESSAGE));
        assert!(resp.headers().get(http::header::CONTENT_LENGTH).is_none());

        let resp = svc.clone().oneshot(get("/no/such/route")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert!(resp.headers().get(&GRPC_STATUS).is_none());
        assert_eq!(body_json(resp).await["error"], "not_found");

        let resp = svc.oneshot(grpc("/open/svc.Method")).await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "the upstream's answer was rewritten"
        );
        assert!(resp.headers().get(&GRPC_STATUS).is_none());
        assert_eq!(reached.count(), 1);
    }

    // Behaviour: only gRPC content types are recognised, in any case, with suffixes.
    #[test]
    fn grpc_content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_grpc(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(h("Application/GRPC;charset=x"));
        assert!(!h("application/grpcx"));
        assert!(!h("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    // Behaviour: grpc-message keeps printable ASCII and escapes the rest and `%`.
    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("scope a.b required"), "scope a.b required");
        assert_eq!(encode_message("50% ü\n"), "50%25 %C3%BC%0A");
    }

    // Behaviour: SPEC's refusals map to the gRPC codes clients act on.
    #[test]
    fn status_codes() {
        assert_eq!(code_for(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(code_for(StatusCode::FORBIDDEN), 7);
        assert_eq!(code_for(StatusCode::TOO_MANY_REQUESTS), 8);
        assert_eq!(code_for(StatusCode::BAD_GATEWAY), 14);
        assert_eq!(code_for(StatusCode::GATEWAY_TIMEOUT), 4);
    }
}
