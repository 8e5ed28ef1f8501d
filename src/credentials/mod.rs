//! Step 9 of the request path: credentials tollgate adds upstream.
//!
//! `basic`: a fixed `Authorization: Basic` header. `oauth2_client_credentials`: a token
//! fetched from the upstream's `token_url`, cached per upstream + token URL + client +
//! scope, refreshed when less than min(60 s, half its lifetime) remains, one fetch in
//! flight at a time, failures backed off, and dropped when the upstream answers 401.
//! Tokens and secrets live in sensitive `HeaderValue`s and `Secret`s: never logged.

pub mod body;
pub mod body_layer;
pub mod upstream_layer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dashmap::DashMap;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode};
use sha2::{Digest, Sha256};

use crate::body::full;
use crate::cache::FlightCache;
use crate::client::{fetch, FetchError, HttpClient};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1), sensitive.
pub fn basic_header(id: &str, secret: &str) -> HeaderValue {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    let mut v = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw)))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFormat {
    Form,
    Json,
}

pub enum UpstreamAuth {
    Basic(HeaderValue),
    OAuth2(Arc<OAuth2Source>),
}

pub struct OAuth2Source {
    pub upstream: Arc<str>,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub client_auth: ClientAuth,
    pub format: RequestFormat,
    pub extra_params: BTreeMap<String, String>,
    pub client: HttpClient,
    pub timeout: Duration,
    /// upstream + token URL + client + scope (+ audience, params).
    pub cache_key: [u8; 32],
}

impl OAuth2Source {
    pub fn cache_key_for(
        upstream: &str,
        url: &str,
        client: &str,
        scope: Option<&str>,
        audience: Option<&str>,
        extra: &BTreeMap<String, String>,
    ) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            upstream,
            url,
            client,
            scope.unwrap_or(""),
            audience.unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for (k, v) in extra {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }
}

/// A cached upstream token: the ready-made `Authorization` value.
pub type TokenResult = Result<HeaderValue, TokenError>;

/// Why an upstream token could not be had (logged; the client sees a 502).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("token endpoint answered {0}")]
    Status(StatusCode),
    #[error("token endpoint {0}")]
    Response(&'static str),
}

/// Upstream tokens, shared across reloads; flushed by `POST /admin/caches/flush`.
pub struct TokenCache {
    pub tokens: FlightCache<[u8; 32], TokenResult>,
    failures: DashMap<[u8; 32], AtomicU32>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            tokens: FlightCache::new(10_000),
            failures: DashMap::new(),
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Longest lifetime believed from a token endpoint's `expires_in`: a longer (or absurd,
/// e.g. 2^64-1) value is treated as this, so the token is refreshed at least daily and
/// no expiry computation can overflow.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

impl TokenCache {
    /// The `Authorization` header for this source, fetching when needed.
    pub async fn authorization(&self, src: &OAuth2Source, metrics: &Metrics) -> TokenResult {
        self.tokens
            .get_or_fetch(&src.cache_key, || async {
                let r = fetch_token(src).await;
                let ok = r.is_ok();
                metrics.upstream_token_fetch(&src.upstream, ok);
                match r {
                    Ok((value, lifetime)) => {
                        self.failures.remove(&src.cache_key);
                        let margin = Duration::from_secs(60).min(lifetime / 2);
                        (Ok(value), lifetime.saturating_sub(margin))
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %src.upstream, error = %e, "upstream token fetch failed");
                        let n = self
                            .failures
                            .entry(src.cache_key)
                            .or_insert_with(|| AtomicU32::new(0))
                            .fetch_add(1, Ordering::Relaxed);
                        let backoff = BACKOFF_START.saturating_mul(1 << n.min(8)).min(BACKOFF_MAX);
                        (Err(e), backoff)
                    }
                }
            })
            .await
    }

    /// The upstream said 401 to a request sent with `used`: drop the cached token only if
    /// it is still that one. A request that started with an older token must not throw
    /// away the fresh token another request fetched in the meantime.
    pub fn invalidate_if_current(&self, src: &OAuth2Source, used: &HeaderValue) {
        if matches!(self.tokens.get(&src.cache_key), Some(Ok(v)) if v == used) {
            self.tokens.remove(&src.cache_key);
        }
    }

    pub fn clear(&self) -> usize {
        self.failures.clear();
        self.tokens.clear()
    }
}

async fn fetch_token(src: &OAuth2Source) -> Result<(HeaderValue, Duration), TokenError> {
    let mut fields: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    if let Some(s) = &src.scope {
        fields.push(("scope", s));
    }
    if let Some(a) = &src.audience {
        fields.push(("audience", a));
    }
    for (k, v) in &src.extra_params {
        fields.push((k, v));
    }
    if src.client_auth == ClientAuth::Body {
        fields.push(("client_id", &src.client_id));
        fields.push(("client_secret", src.client_secret.expose()));
    }
    let (ctype, body) = match src.format {
        RequestFormat::Form => {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &fields {
                s.append_pair(k, v);
            }
            ("application/x-www-form-urlencoded", s.finish())
        }
        RequestFormat::Json => {
            let map: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect();
            (
                "application/json",
                serde_json::Value::Object(map).to_string(),
            )
        }
    };
    let mut req = Request::post(&src.token_url)
        .header(CONTENT_TYPE, ctype)
        .header(ACCEPT, "application/json");
    if src.client_auth == ClientAuth::Basic {
        req = req.header(
            AUTHORIZATION,
            basic_header(&src.client_id, src.client_secret.expose()),
        );
    }
    let req = req
        .body(full(body))
        .map_err(|_| TokenError::Response("URL cannot be requested"))?;
    let (status, _, bytes) = fetch(&src.client, req, src.timeout, MAX_TOKEN_RESPONSE).await?;
    if !status.is_success() {
        return Err(TokenError::Status(status));
    }
    let doc: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Response("returned invalid JSON"))?;
    let token = doc
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Response("response has no access_token"))?;
    if let Some(tt) = doc.get("token_type").and_then(|v| v.as_str()) {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Response(
                "returned a token_type other than Bearer",
            ));
        }
    }
    let expires_in = match doc.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(300);
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| TokenError::Response("returned a token that is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((
        value,
        Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: RFC 6749 §2.3.1 — id and secret are form-urlencoded before base64.
    #[test]
    fn basic_header_encodes_reserved_characters() {
        let v = basic_header("my client", "p@ss:w/rd+%");
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let raw = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(raw, "my+client:p%40ss%3Aw%2Frd%2B%25");
        assert!(v.is_sensitive());
    }

    // Behaviour: a 401 for an older token leaves a newer cached token alone.
    #[test]
    fn invalidate_if_current_only_drops_the_token_used() {
        let src = OAuth2Source {
            upstream: "bi".into(),
            token_url: "http://127.0.0.1:9/token".into(),
            client_id: "gw".into(),
            client_secret: Secret::new("s"),
            scope: None,
            audience: None,
            client_auth: ClientAuth::Basic,
            format: RequestFormat::Form,
            extra_params: BTreeMap::new(),
            client: crate::client::build_client(
                crate::tls::client_config(None).unwrap(),
                Duration::from_secs(1),
            ),
            timeout: Duration::from_secs(1),
            cache_key: [7; 32],
        };
        let cache = TokenCache::default();
        let new = HeaderValue::from_static("Bearer new");
        cache
            .tokens
            .insert(src.cache_key, Ok(new.clone()), Duration::from_secs(60));
        cache.invalidate_if_current(&src, &HeaderValue::from_static("Bearer old"));
        assert!(matches!(cache.tokens.get(&src.cache_key), Some(Ok(v)) if v == new));
        cache.invalidate_if_current(&src, &new);
        assert!(cache.tokens.get(&src.cache_key).is_none());
    }
}
