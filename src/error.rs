//! Every error tollgate produces, and the one place it becomes an HTTP response.
//!
//! Layers return a `GatewayError`; `to_response` writes SPEC.md's JSON body
//! `{"error", "error_description", "request_id"}` and the headers that go with it
//! (`WWW-Authenticate` on 401/403). Internals never reach the client: descriptions are
//! written for the caller and never contain a token or a secret.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::{full, Body};

/// Stable reason codes for auth denials: the `reason` label of
/// `tollgate_auth_denied_total` and the `reason` field of denial logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    TokenMissing,
    TokenMalformed,
    SignatureInvalid,
    AlgorithmNotAllowed,
    KidUnknown,
    TokenExpired,
    TokenNotYetValid,
    IssuerNotAccepted,
    AudienceNotAccepted,
    TokenInactive,
    ScopeMissing,
    ClientNotAllowed,
    MethodNotAllowed,
    EndpointNotAllowed,
}

impl DenyReason {
    pub const ALL: [DenyReason; 14] = [
        DenyReason::TokenMissing,
        DenyReason::TokenMalformed,
        DenyReason::SignatureInvalid,
        DenyReason::AlgorithmNotAllowed,
        DenyReason::KidUnknown,
        DenyReason::TokenExpired,
        DenyReason::TokenNotYetValid,
        DenyReason::IssuerNotAccepted,
        DenyReason::AudienceNotAccepted,
        DenyReason::TokenInactive,
        DenyReason::ScopeMissing,
        DenyReason::ClientNotAllowed,
        DenyReason::MethodNotAllowed,
        DenyReason::EndpointNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::TokenMissing => "token_missing",
            DenyReason::TokenMalformed => "token_malformed",
            DenyReason::SignatureInvalid => "signature_invalid",
            DenyReason::AlgorithmNotAllowed => "algorithm_not_allowed",
            DenyReason::KidUnknown => "kid_unknown",
            DenyReason::TokenExpired => "token_expired",
            DenyReason::TokenNotYetValid => "token_not_yet_valid",
            DenyReason::IssuerNotAccepted => "issuer_not_accepted",
            DenyReason::AudienceNotAccepted => "audience_not_accepted",
            DenyReason::TokenInactive => "token_inactive",
            DenyReason::ScopeMissing => "scope_missing",
            DenyReason::ClientNotAllowed => "client_not_allowed",
            DenyReason::MethodNotAllowed => "method_not_allowed",
            DenyReason::EndpointNotAllowed => "endpoint_not_allowed",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for this host and path")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    /// 401 from the Bearer gate. `TokenMissing` gets a challenge without an error attribute.
    #[error("{description}")]
    Unauthorized {
        reason: DenyReason,
        description: String,
    },
    /// 403 `insufficient_scope`; `scope` lists the scopes the request needs.
    #[error("{description}")]
    InsufficientScope { scope: String, description: String },
    /// 403 `access_denied`: client allow-list or endpoint/method permissions.
    #[error("{description}")]
    AccessDenied {
        reason: DenyReason,
        description: String,
    },
    #[error("request header fields too large")]
    HeaderTooLarge,
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("{0}")]
    ServiceUnavailable(String),
    /// Load shedding: more requests in flight than `max_concurrent_requests`.
    #[error("tollgate is handling its limit of {0} requests at once; retry shortly")]
    Overloaded(usize),
    /// Token service: 401 `invalid_client` with `WWW-Authenticate: Basic`.
    #[error("{0}")]
    InvalidClient(String),
    /// Token service: 400 with an OAuth2 error code (`invalid_scope`, ...).
    #[error("{description}")]
    OAuth {
        code: &'static str,
        description: String,
    },
    #[error("{0}")]
    MethodNotAllowed(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) | GatewayError::OAuth { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized { .. } | GatewayError::InvalidClient(_) => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::InsufficientScope { .. } | GatewayError::AccessDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            GatewayError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ServiceUnavailable(_) | GatewayError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// SPEC.md's `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NotFound => "not_found",
            GatewayError::BadRequest(_) => "invalid_request",
            GatewayError::Unauthorized { .. } => "invalid_token",
            GatewayError::InsufficientScope { .. } => "insufficient_scope",
            GatewayError::AccessDenied { .. } => "access_denied",
            GatewayError::HeaderTooLarge => "request_header_too_large",
            GatewayError::PayloadTooLarge(_) => "payload_too_large",
            GatewayError::BadGateway(_) => "bad_gateway",
            GatewayError::GatewayTimeout(_) => "gateway_timeout",
            GatewayError::ServiceUnavailable(_) | GatewayError::Overloaded(_) => {
                "service_unavailable"
            }
            GatewayError::InvalidClient(_) => "invalid_client",
            GatewayError::OAuth { code, .. } => code,
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    /// The auth reason code, when this is an auth denial.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            GatewayError::Unauthorized { reason, .. }
            | GatewayError::AccessDenied { reason, .. } => Some(*reason),
            GatewayError::InsufficientScope { .. } => Some(DenyReason::ScopeMissing),
            _ => None,
        }
    }

    fn www_authenticate(&self) -> Option<String> {
        match self {
            GatewayError::Unauthorized { reason: DenyReason::TokenMissing, .. } => {
                Some("Bearer realm=\"tollgate\"".to_owned())
            }
            GatewayError::Unauthorized { description, .. } => Some(format!(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{}\"",
                quote_safe(description)
            )),
            GatewayError::InsufficientScope { scope, description } => Some(format!(
                "Bearer realm=\"tollgate\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                quote_safe(description),
                quote_safe(scope)
            )),
            GatewayError::InvalidClient(_) => Some("Basic realm=\"tollgate\"".to_owned()),
            _ => None,
        }
    }

    /// The one mapping from error to response.
    pub fn to_response(&self, request_id: &str) -> Response<Body> {
        let body = serde_json::json!({
            "error": self.code(),
            "error_description": self.to_string(),
            "request_id": request_id,
        });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        if let Some(v) = self.www_authenticate() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(WWW_AUTHENTICATE, v);
            }
        }
        if let GatewayError::Overloaded(_) = self {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(
            self,
            GatewayError::HeaderTooLarge | GatewayError::BadRequest(_)
        ) {
            // The connection's framing may be off: do not reuse it.
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Header parameter values are quoted-strings: no `"` or `\` or control characters.
fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() || !c.is_ascii() => ' ',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: SPEC's error table — status, code and WWW-Authenticate per case.
    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        let e = GatewayError::Unauthorized {
            reason: DenyReason::TokenMissing,
            description: "no Bearer token".into(),
        };
        let r = e.to_response("rid");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"tollgate\"");
    }

    #[test]
    fn scope_challenge_names_scopes() {
        let e = GatewayError::InsufficientScope {
            scope: "a b".into(),
            description: "scope b required".into(),
        };
        let r = e.to_response("rid");
        assert_eq!(r.status(), 403);
        let v = r.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(v.contains("error=\"insufficient_scope\""));
        assert!(v.contains("scope=\"a b\""));
    }
}
