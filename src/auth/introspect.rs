//! Opaque tokens: RFC 7662 introspection, tollgate authenticating with HTTP Basic.
//! Results are cached per issuer + SHA-256 of the token (never the token itself), for
//! `cache_ttl` but never past the token's `exp`; inactive answers are cached briefly;
//! concurrent requests with the same token make one call.

use opentelemetry::trace::SpanKind;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request};

use super::jwt::Refusal;
use crate::body::full;
use crate::client::{fetch, HttpClient};
use crate::error::DenyReason;
use crate::metrics::IntrospectionCalls;
use crate::secret::Secret;

/// How long an "inactive" answer is remembered (bounded by `cache_ttl`).
pub const INACTIVE_TTL: Duration = Duration::from_secs(10);
const MAX_INTROSPECTION_BYTES: usize = 256 * 1024;

pub struct Introspection {
    pub url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub cache_ttl: Duration,
    pub timeout: Duration,
    pub client: HttpClient,
    /// `Basic base64(urlencode(id):urlencode(secret))`, marked sensitive.
    authorization: HeaderValue,
    /// Calls by result (`tollgate_introspection_requests_total`).
    pub calls: IntrospectionCalls,
}

/// Why introspection gave no identity.
#[derive(Debug, Clone)]
pub enum IntrospectError {
    /// The token is refused (inactive, expired, wrong audience...).
    Refused(Refusal),
    /// The endpoint could not answer; not cached.
    Unavailable(String),
}

impl Introspection {
    pub fn new(
        url: String,
        client_id: String,
        client_secret: Secret,
        cache_ttl: Duration,
        timeout: Duration,
        client: HttpClient,
    ) -> Self {
        let authorization = crate::credentials::basic_header(&client_id, client_secret.expose());
        Introspection {
            url,
            client_id,
            client_secret,
            cache_ttl,
            timeout,
            client,
            authorization,
            calls: Default::default(),
        }
    }

    /// Asks the endpoint about `token`, counting the outcome.
    pub async fn introspect(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, IntrospectError> {
        let r = self.call(token).await;
        match &r {
            Ok(_) => self.calls.active.inc(),
            Err(IntrospectError::Refused(_)) => self.calls.inactive.inc(),
            Err(IntrospectError::Unavailable(_)) => self.calls.failure.inc(),
        };
        r
    }

    /// Asks the endpoint about `token`. Returns the response's claims when active.
    async fn call(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, IntrospectError> {
        // The token is never an attribute: only where it was asked and the answer.
        let mut span = crate::otel::child("introspection", SpanKind::Client);
        if span.recording() {
            span.attr(
                "url.full",
                self.url.split(['?', '#']).next().unwrap_or("").to_owned(),
            );
        }
        let r = self.call_inner(token, span.traceparent()).await;
        match &r {
            Ok(_) => {
                span.attr("tollgate.token_active", true);
            }
            Err(IntrospectError::Refused(_)) => {
                span.attr("tollgate.token_active", false);
            }
            Err(IntrospectError::Unavailable(e)) => span.fail(e.clone()),
        }
        r
    }

    async fn call_inner(
        &self,
        token: &str,
        traceparent: Option<http::HeaderValue>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, IntrospectError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let mut req = Request::post(&self.url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if let Some(tp) = traceparent {
            req = req.header(&crate::trace_context::TRACEPARENT, tp);
        }
        let req = req
            .body(full(body))
            .map_err(|e| IntrospectError::Unavailable(e.to_string()))?;
        let (status, _, bytes) = fetch(&self.client, req, self.timeout, MAX_INTROSPECTION_BYTES)
            .await
            .map_err(|e| IntrospectError::Unavailable(format!("introspection endpoint: {e}")))?;
        if status == http::StatusCode::BAD_REQUEST {
            // Some providers answer 400 instead of {"active": false} for tokens they do
            // not know or will not introspect (RFC 7662 §2.3 allows only `active:false`,
            // but oidc-provider, for one, says `unsupported_token_type` for JWTs). That is
            // a refusal of the token, not an outage.
            let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
            if let Some(code @ ("unsupported_token_type" | "invalid_token" | "invalid_request")) =
                code.as_deref()
            {
                return Err(IntrospectError::Refused(Refusal::new(
                    DenyReason::TokenInactive,
                    format!("token is not active (introspection answered {code})"),
                )));
            }
        }
        if !status.is_success() {
            return Err(IntrospectError::Unavailable(format!(
                "introspection endpoint answered {status}"
            )));
        }
        let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
            .map_err(|_| {
                IntrospectError::Unavailable("introspection endpoint returned invalid JSON".into())
            })?;
        if doc.get("active") != Some(&serde_json::Value::Bool(true)) {
            return Err(IntrospectError::Refused(Refusal::new(
                DenyReason::TokenInactive,
                "token is not active (introspection)",
            )));
        }
        Ok(doc)
    }
}
