//! Browser sign-in's side of the conversation with the identity provider: its
//! endpoints (from the issuer's discovery document), the authorization request, the
//! code exchange and refreshes at the token endpoint (client_secret_basic, or a public
//! client), and the ID token check (signature with the issuer's keys, `iss`, `aud`,
//! `exp`, `nonce`). Nothing here logs or returns a token in an error.

use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::Request;
use opentelemetry::trace::SpanKind;

use super::{Login, SignIn};
use crate::auth::{self, jwt, IssuerKind};
use crate::body::full;
use crate::client::fetch;
use crate::error::{BadGateway, GatewayError};
use crate::secret::constant_time_eq;

/// Largest token endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// The identity provider's endpoints, from its discovery document.
#[derive(Debug)]
pub struct Endpoints {
    pub authorization: url::Url,
    pub token: String,
    pub end_session: Option<url::Url>,
}

impl Endpoints {
    pub fn from_document(doc: &serde_json::Value) -> Result<Endpoints, String> {
        let url = |key: &str| -> Result<Option<url::Url>, String> {
            let Some(v) = doc.get(key).and_then(|v| v.as_str()) else {
                return Ok(None);
            };
            match url::Url::parse(v) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    Ok(Some(u))
                }
                _ => Err(format!("its {key} \"{v}\" is not an http(s) URL")),
            }
        };
        Ok(Endpoints {
            authorization: url("authorization_endpoint")?
                .ok_or("it has no authorization_endpoint")?,
            token: url("token_endpoint")?
                .ok_or("it has no token_endpoint")?
                .to_string(),
            end_session: url("end_session_endpoint")?,
        })
    }
}

fn unknown(login: &Login) -> GatewayError {
    GatewayError::BadGateway(BadGateway::Discovery {
        issuer: login.id_tokens.name.clone(),
    })
}

/// The endpoints, if the discovery document has been fetched (no waiting).
pub fn endpoints_now(login: &Login) -> Option<Arc<Endpoints>> {
    if let Some(e) = login.endpoints.get() {
        return Some(e.clone());
    }
    let IssuerKind::Jwt(store) = &login.id_tokens.kind else {
        return None;
    };
    let doc = store.discovery_document()?;
    match Endpoints::from_document(&doc) {
        Ok(e) => Some(login.endpoints.get_or_init(|| Arc::new(e)).clone()),
        Err(why) => {
            tracing::warn!(issuer = %login.id_tokens.name, "cannot sign browsers in: the discovery document is unusable: {why}");
            None
        }
    }
}

/// The endpoints, fetching the discovery document first if it is not known yet (at
/// most once per 10 s while the identity provider is unreachable).
pub async fn endpoints(login: &Login) -> Result<Arc<Endpoints>, GatewayError> {
    if let Some(e) = endpoints_now(login) {
        return Ok(e);
    }
    let IssuerKind::Jwt(store) = &login.id_tokens.kind else {
        return Err(unknown(login));
    };
    if store.first_fetch_done() {
        store.refetch_for_unknown_kid().await;
    } else {
        store.refresh().await;
    }
    endpoints_now(login).ok_or_else(|| unknown(login))
}

/// Where the browser is sent to sign in: response_type=code, PKCE S256, state, nonce.
pub fn authorization_url(login: &Login, ep: &Endpoints, s: &SignIn) -> String {
    let mut u = ep.authorization.clone();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &login.client_id)
            .append_pair("redirect_uri", &s.redirect_uri)
            .append_pair("scope", &login.scope)
            .append_pair("state", &s.state)
            .append_pair("nonce", &s.nonce)
            .append_pair("code_challenge", &s.challenge())
            .append_pair("code_challenge_method", "S256");
        for (k, v) in &login.extra_params {
            q.append_pair(k, v);
        }
    }
    u.into()
}

/// Where the browser is sent to end its session at the identity provider
/// (OpenID Connect RP-Initiated Logout).
pub fn end_session_url(
    login: &Login,
    end_session: &url::Url,
    id_token: Option<&str>,
    post_logout_redirect_uri: Option<&str>,
) -> String {
    let mut u = end_session.clone();
    {
        let mut q = u.query_pairs_mut();
        if let Some(t) = id_token {
            q.append_pair("id_token_hint", t);
        }
        q.append_pair("client_id", &login.client_id);
        if let Some(p) = post_logout_redirect_uri {
            q.append_pair("post_logout_redirect_uri", p);
        }
    }
    u.into()
}

/// What the token endpoint answered. Its `Debug` shows no token.
#[derive(Clone, serde::Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    /// A number, or (some providers) a string of digits.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn expires_in(&self) -> Option<i64> {
        match self.expires_in.as_ref()? {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|n| *n > 0)
    }

    /// When the access token expires (unix seconds; 0: unknown): `expires_in`, else the
    /// `exp` of a JWT access token (read only to time the refresh; the gate verifies it).
    pub fn access_expires(&self, now: i64) -> i64 {
        if let Some(n) = self.expires_in() {
            return now.saturating_add(n);
        }
        jwt::parse(&self.access_token)
            .ok()
            .and_then(|j| jwt::numeric_claim(&j.claims, "exp").ok().flatten())
            .unwrap_or(0)
    }
}

/// Why a token request failed; shown to the browser, so never a token or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlowError {
    #[error("the token endpoint is unreachable ({0})")]
    Unreachable(String),
    #[error("the identity provider answered {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Text from the identity provider, fit to show: printable ASCII, bounded.
pub fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

/// A call of the identity provider's token endpoint, as a child span `login.token` of
/// the request's (tracing exports it): the endpoint, the grant and whether it worked —
/// never the code, the verifier, the refresh token or the tokens obtained.
async fn token_request(
    login: &Login,
    ep: &Endpoints,
    form: &[(&str, &str)],
) -> Result<Tokens, FlowError> {
    let mut span = crate::otel::child("login.token", SpanKind::Client);
    if span.recording() {
        let grant = form
            .iter()
            .find(|(k, _)| *k == "grant_type")
            .map_or("", |(_, v)| *v);
        let url = ep.token.split(['?', '#']).next().unwrap_or("");
        span.attr("oauth.grant_type", grant.to_owned())
            .attr("url.full", url.to_owned());
    }
    let r = call_token_endpoint(login, ep, form, span.traceparent()).await;
    if let Err(e) = &r {
        span.fail(e.to_string());
    }
    r
}

async fn call_token_endpoint(
    login: &Login,
    ep: &Endpoints,
    form: &[(&str, &str)],
    traceparent: Option<http::HeaderValue>,
) -> Result<Tokens, FlowError> {
    let IssuerKind::Jwt(store) = &login.id_tokens.kind else {
        return Err(FlowError::Invalid(
            "the login issuer has no HTTP client".into(),
        ));
    };
    let Some((client, timeout)) = store.http() else {
        return Err(FlowError::Invalid(
            "the login issuer has no HTTP client".into(),
        ));
    };
    // Built whole before any await (the serializer is not Send).
    let body = {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        if login.client_secret.is_none() {
            body.append_pair("client_id", &login.client_id);
        }
        body.finish()
    };
    let mut req = Request::post(&ep.token)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json");
    if let Some(secret) = &login.client_secret {
        // client_secret_basic (RFC 6749 2.3.1: both form-urlencoded first).
        req = req.header(
            AUTHORIZATION,
            crate::credentials::basic_header(&login.client_id, secret.expose()),
        );
    }
    if let Some(tp) = traceparent {
        req = req.header(&crate::trace_context::TRACEPARENT, tp);
    }
    let req = req
        .body(full(body))
        .map_err(|e| FlowError::Invalid(format!("cannot build the token request: {e}")))?;
    let (status, _, bytes) = fetch(
        client,
        req,
        timeout.max(Duration::from_secs(5)),
        MAX_TOKEN_RESPONSE,
    )
    .await
    .map_err(|e| FlowError::Unreachable(e.to_string()))?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(FlowError::Refused {
            error: v
                .get("error")
                .and_then(|e| e.as_str())
                .map(clean)
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16())),
            description: v
                .get("error_description")
                .and_then(|e| e.as_str())
                .map(clean),
        });
    }
    let t: Tokens = serde_json::from_slice(&bytes).map_err(|_| {
        FlowError::Invalid("the token endpoint's answer is not a token response".into())
    })?;
    match t.token_type.as_deref() {
        Some(tt) if tt.eq_ignore_ascii_case("bearer") => {}
        Some(tt) => {
            return Err(FlowError::Invalid(format!(
                "the token endpoint issued a \"{}\" token, not a Bearer token",
                clean(tt)
            )))
        }
        None => {
            return Err(FlowError::Invalid(
                "the token endpoint's answer has no token_type".into(),
            ))
        }
    }
    if t.access_token.is_empty() {
        return Err(FlowError::Invalid(
            "the token endpoint's answer has an empty access_token".into(),
        ));
    }
    Ok(t)
}

/// The authorization code for tokens, with the PKCE verifier.
pub async fn exchange_code(
    login: &Login,
    ep: &Endpoints,
    code: &str,
    s: &SignIn,
) -> Result<Tokens, FlowError> {
    token_request(
        login,
        ep,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &s.redirect_uri),
            ("code_verifier", &s.verifier),
        ],
    )
    .await
}

/// New tokens for a refresh token.
pub async fn refresh(
    login: &Login,
    ep: &Endpoints,
    refresh_token: &str,
) -> Result<Tokens, FlowError> {
    token_request(
        login,
        ep,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// What a verified ID token says about the user.
#[derive(Debug, Clone)]
pub struct IdToken {
    pub subject: String,
}

/// Verifies an ID token: signature with the issuer's keys, `iss`, `aud` (the client id),
/// `exp`/`nbf`, `azp` when present, and the `nonce` of this sign-in.
pub async fn verify_id_token(
    login: &Login,
    id_token: &str,
    nonce: &str,
) -> Result<IdToken, String> {
    let jws = jwt::parse(id_token).map_err(|r| r.description)?;
    auth::verify_jwt(&login.id_tokens, &jws, &mut auth::Trace::default())
        .await
        .map_err(|r| r.description)?;
    let claims = &jws.claims;
    match claims.get("nonce").and_then(|v| v.as_str()) {
        Some(n) if constant_time_eq(n.as_bytes(), nonce.as_bytes()) => {}
        Some(_) => return Err("its nonce does not match this sign-in".into()),
        None => return Err("it has no nonce".into()),
    }
    if let Some(azp) = claims.get("azp").and_then(|v| v.as_str()) {
        if azp != login.client_id {
            return Err(format!("its azp \"{}\" is not this client", clean(azp)));
        }
    }
    let subject = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or("it has no sub")?;
    Ok(IdToken {
        subject: subject.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: the endpoints come from the discovery document; a missing or non-http
    // authorization or token endpoint is reported by name.
    #[test]
    fn endpoints_from_discovery() {
        let doc = serde_json::json!({
            "authorization_endpoint": "https://idp/auth?tenant=a",
            "token_endpoint": "https://idp/token",
            "end_session_endpoint": "https://idp/logout",
        });
        let e = Endpoints::from_document(&doc).unwrap();
        assert_eq!(e.token, "https://idp/token");
        assert!(e.end_session.is_some());
        let e = Endpoints::from_document(&serde_json::json!({
            "authorization_endpoint": "https://idp/auth", "token_endpoint": "https://idp/token"
        }))
        .unwrap();
        assert!(e.end_session.is_none());
        let err = Endpoints::from_document(&serde_json::json!({"token_endpoint": "https://idp/t"}))
            .unwrap_err();
        assert!(err.contains("authorization_endpoint"), "{err}");
        let err = Endpoints::from_document(&serde_json::json!({
            "authorization_endpoint": "javascript:x", "token_endpoint": "https://idp/t"
        }))
        .unwrap_err();
        assert!(err.contains("authorization_endpoint"), "{err}");
    }

    // Behaviour: text from the identity provider is shown printable and bounded.
    #[test]
    fn idp_text_is_cleaned() {
        assert_eq!(clean("bad\r\nthing\u{7}é"), "badthing");
        assert_eq!(clean(&"x".repeat(500)).len(), 200);
    }
}
