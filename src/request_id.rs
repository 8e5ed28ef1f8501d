//! Step 2 of the request path: the request id.
//!
//! `X-Request-Id` is kept when the client sent a sane one (1 to 128 characters of
//! `[A-Za-z0-9._:-]`), else replaced by a generated one; the upstream receives it and
//! every response carries it, errors included. tower-http's `SetRequestId` and
//! `PropagateRequestId` do the setting and echoing; tollgate adds the sanity rule
//! (tower-http keeps whatever id the client sent) as a request map in front of them,
//! and [`SaneRequestId`] as the generator.

use http::header::{HeaderName, HeaderValue};
use http::Request;
use rand::Rng;
use tower_http::request_id::{MakeRequestId, RequestId};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `v` is an id tollgate keeps: 1-128 of `[A-Za-z0-9._:-]`.
pub fn is_sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// Drops an `X-Request-Id` that is not sane (or given twice), so that one is generated.
pub fn drop_insane<B>(mut req: Request<B>) -> Request<B> {
    let mut ids = req.headers().get_all(&X_REQUEST_ID).iter();
    if let Some(v) = ids.next() {
        if !is_sane(v) || ids.next().is_some() {
            req.headers_mut().remove(&X_REQUEST_ID);
        }
    }
    req
}

/// 128 random bits as 32 hex digits.
#[derive(Debug, Clone, Copy, Default)]
pub struct SaneRequestId;

impl MakeRequestId for SaneRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(generate()))
    }
}

pub fn generate() -> HeaderValue {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill(&mut bytes);
    HeaderValue::from_str(&crate::encoding::hex(&bytes)).unwrap_or(HeaderValue::from_static("0"))
}

/// The request's id as set by the request-id layers (or, outside the stack, the sane
/// id the client sent, else a new one).
pub fn of<B>(req: &Request<B>) -> HeaderValue {
    match req.headers().get(&X_REQUEST_ID) {
        Some(v) if is_sane(v) => v.clone(),
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: SPEC's sane-id rule — kept when 1-128 of [A-Za-z0-9._:-].
    #[test]
    fn sane_ids() {
        for ok in ["a", "A-b_c.d:e", &"x".repeat(128)] {
            assert!(is_sane(&HeaderValue::from_str(ok).unwrap()), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            let Ok(v) = HeaderValue::from_str(bad) else {
                continue;
            };
            assert!(!is_sane(&v), "{bad}");
        }
        let g = generate();
        assert!(is_sane(&g) && g.len() == 32);
    }

    // Behaviour: an insane or repeated id is dropped before SetRequestId sees it.
    #[test]
    fn insane_and_repeated_ids_are_dropped() {
        let r = drop_insane(
            Request::get("/")
                .header("x-request-id", "ok-1")
                .body(())
                .unwrap(),
        );
        assert_eq!(r.headers()["x-request-id"], "ok-1");
        let r = drop_insane(
            Request::get("/")
                .header("x-request-id", "no way")
                .body(())
                .unwrap(),
        );
        assert!(r.headers().get("x-request-id").is_none());
        let r = drop_insane(
            Request::get("/")
                .header("x-request-id", "a")
                .header("x-request-id", "b")
                .body(())
                .unwrap(),
        );
        assert!(r.headers().get("x-request-id").is_none());
    }
}
