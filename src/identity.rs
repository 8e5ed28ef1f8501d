//! Who the caller is, once a token (or later a session) has been verified: what the
//! authorisation gates decide on, what the upstream is told in `X-Auth-*` headers, and
//! what an embedding service's handlers read from the request extensions.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue};

use crate::claims::TokenClaims;

/// Who the token says the caller is, after verification.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The `issuers[].name` that vouched for the token (`local` for the token service).
    pub issuer: Arc<str>,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// Unix seconds; 0 when the token had no expiry (introspection without `exp`).
    pub expires_at: u64,
    /// Every claim of the verified token (JWT payload or introspection response), for
    /// the `claims` gate; `Debug` shows the names only.
    pub claims: TokenClaims,
    /// The `X-Auth-*` headers sent upstream, built once per verified token (the
    /// identity is cached with it) rather than on every request.
    pub forward_headers: OnceLock<Vec<(HeaderName, HeaderValue)>>,
}

impl Identity {
    /// `X-Auth-Client-Id`, `X-Auth-Subject`, `X-Auth-Scopes` for the upstream; a value
    /// that is not a valid header value is left out.
    pub fn forward_headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.forward_headers.get_or_init(|| {
            let mut v = Vec::with_capacity(3);
            let mut add = |name: &'static str, value: &str| {
                if let Ok(value) = HeaderValue::from_str(value) {
                    v.push((HeaderName::from_static(name), value));
                }
            };
            if let Some(c) = &self.client_id {
                add("x-auth-client-id", c);
            }
            if let Some(s) = &self.subject {
                add("x-auth-subject", s);
            }
            add("x-auth-scopes", &self.scopes.join(" "));
            v
        })
    }

    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|x| x == s)
    }
}

/// An `X-Auth-*` header, however it is spelt: `X_Auth_Subject` is `HTTP_X_AUTH_SUBJECT`
/// to a backend that maps headers to CGI variables (Rack, PHP, WSGI), just like
/// `X-Auth-Subject`. (Names arrive in lower case.)
pub fn is_identity_header(name: &http::HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    n.len() >= 7
        && n[..7]
            .iter()
            .map(|b| if *b == b'_' { b'-' } else { *b })
            .eq(*b"x-auth-")
}
