//! Step 1 of the request path, before anything can print a request: the credentials in
//! `Authorization`, `Cookie`, `Proxy-Authorization` and `DPoP` (a one-time proof) are
//! marked sensitive
//! (`HeaderValue::set_sensitive`), so that `Debug` of the headers shows `Sensitive`
//! instead of the value and HTTP/2 never puts them in an HPACK table.
//!
//! tollgate's own layer rather than tower-http's `SetSensitiveRequestHeaders`: that one
//! looks each of the three names up in the header map (three hash lookups per request);
//! this one walks the few headers a request has once, comparing standard names
//! (callgrind: bench/ANALYSIS.md, "The tower stack's cost per request", session 6).

use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::Request;

/// Marks the credential headers of every request sensitive.
#[derive(Debug, Clone, Copy, Default)]
pub struct SensitiveHeadersLayer;

impl<S> tower::Layer<S> for SensitiveHeadersLayer {
    type Service = SensitiveHeaders<S>;
    fn layer(&self, inner: S) -> SensitiveHeaders<S> {
        SensitiveHeaders { inner }
    }
}

#[derive(Debug, Clone)]
pub struct SensitiveHeaders<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for SensitiveHeaders<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        mark(req.headers_mut());
        self.inner.call(req)
    }
}

/// `DPoP`, as `http` spells header names (lower case).
const DPOP: &str = "dpop";

/// Whether `name` is one of the credential headers.
fn is_credential(name: &http::HeaderName) -> bool {
    name == AUTHORIZATION || name == COOKIE || name == PROXY_AUTHORIZATION || name == DPOP
}

/// Marks every value of the credential headers sensitive.
pub fn mark(h: &mut http::HeaderMap) {
    for (name, value) in h.iter_mut() {
        if is_credential(name) {
            value.set_sensitive(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // Behaviour: every value of the four credential headers is sensitive (repeated ones
    // too), and nothing else is.
    #[test]
    fn credentials_and_only_credentials_are_sensitive() {
        let mut h = http::HeaderMap::new();
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        h.append(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.append("dpop", HeaderValue::from_static("eyJ.proof"));
        h.append("x-api-key-not-listed", HeaderValue::from_static("k"));
        h.append("accept", HeaderValue::from_static("*/*"));
        mark(&mut h);
        for (name, v) in &h {
            let credential =
                ["authorization", "cookie", "proxy-authorization", "dpop"].contains(&name.as_str());
            assert_eq!(v.is_sensitive(), credential, "{name}");
        }
        assert_eq!(
            h.get_all(COOKIE)
                .iter()
                .filter(|v| v.is_sensitive())
                .count(),
            2
        );
        assert!(!format!("{h:?}").contains("Bearer a"));
    }
}
