//! Step 9 of the request path: credentials tollgate adds upstream.
//!
//! `basic`: a fixed `Authorization: Basic` header. `oauth2_client_credentials`: a token
//! fetched from the upstream's `token_url`, cached per upstream + token URL + client +
//! scope, refreshed when less than min(60 s, half its lifetime) remains, one fetch in
//! flight at a time, failures backed off, and dropped when the upstream answers 401.
//! `token_exchange` (RFC 8693) and `jwt_bearer` (RFC 7523, SAP's principal
//! propagation): the caller's verified token is exchanged for one for the upstream,
//! with the same discipline, cached per subject token (a hash of upstream, client and
//! token) and never beyond the subject token's own expiry.
//! Tokens and secrets live in sensitive `HeaderValue`s and `Secret`s: never logged.

pub mod body;
pub mod body_layer;
pub mod service_key;
pub mod upstream_layer;

use opentelemetry::trace::SpanKind;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
use crate::metrics::{CacheCounters, Metrics};
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
    /// `oauth2_client_credentials`: one token per source.
    OAuth2(Arc<OAuth2Source>),
    /// `token_exchange` / `jwt_bearer`: one token per caller's token.
    OnBehalf(Arc<OAuth2Source>),
}

impl UpstreamAuth {
    /// How token requests reach the token endpoint (none for Basic).
    pub fn outbound(&self) -> Option<&crate::outbound::Outbound> {
        match self {
            UpstreamAuth::Basic(_) => None,
            UpstreamAuth::OAuth2(s) | UpstreamAuth::OnBehalf(s) => Some(s.client.outbound()),
        }
    }
}

/// The grant a token is requested with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials,
    /// RFC 8693: `subject_token` is the caller's token.
    TokenExchange {
        subject_token_type: String,
        requested_token_type: Option<String>,
        resource: Option<String>,
    },
    /// RFC 7523 §2.1: `assertion` is the caller's token (a JWT).
    JwtBearer,
}

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

pub struct OAuth2Source {
    pub upstream: Arc<str>,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub client_auth: ClientAuth,
    pub format: RequestFormat,
    /// Values kept as secrets: a parameter may be a credential (`client_assertion`).
    pub extra_params: BTreeMap<String, Secret>,
    pub grant: Grant,
    pub client: HttpClient,
    pub timeout: Duration,
    /// upstream + token URL + client + scope (+ audience, params, grant).
    pub cache_key: [u8; 32],
}

impl OAuth2Source {
    pub fn cache_key_for(
        upstream: &str,
        url: &str,
        client: &str,
        scope: Option<&str>,
        audience: Option<&str>,
        extra: &BTreeMap<String, Secret>,
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
            h.update(v.expose().as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }

    /// The cache key of the token for one caller's token (`subject`): the source's key
    /// and the subject token, hashed. The token itself is never a key.
    pub fn subject_key(&self, subject: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update(subject.as_bytes());
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
    /// Lookups in `tokens` (`tollgate_cache_requests_total{cache="upstream_tokens"}`).
    pub lookups: CacheCounters,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::counted(CacheCounters::default())
    }
}

impl TokenCache {
    /// An empty cache whose lookups count into `lookups`.
    pub fn counted(lookups: CacheCounters) -> Self {
        TokenCache {
            tokens: FlightCache::new(10_000),
            failures: DashMap::new(),
            lookups,
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

/// Backoff entries kept at most (one per failing source or subject token).
const MAX_FAILURES: usize = 10_000;

/// The caller's verified token, for `token_exchange` and `jwt_bearer`.
pub struct Subject<'a> {
    pub token: &'a str,
    /// Unix seconds (0: unknown): no token obtained with it is cached beyond it.
    pub expires_at: u64,
}

impl TokenCache {
    /// The `Authorization` header for this source, fetching when needed.
    pub async fn authorization(&self, src: &OAuth2Source, metrics: &Metrics) -> TokenResult {
        self.get_or_fetch(src, src.cache_key, None, metrics).await
    }

    /// The `Authorization` header for the caller whose token is `subject`
    /// (`token_exchange`, `jwt_bearer`), fetching when needed.
    pub async fn on_behalf(
        &self,
        src: &OAuth2Source,
        subject: &Subject<'_>,
        metrics: &Metrics,
    ) -> TokenResult {
        self.get_or_fetch(src, src.subject_key(subject.token), Some(subject), metrics)
            .await
    }

    async fn get_or_fetch(
        &self,
        src: &OAuth2Source,
        key: [u8; 32],
        subject: Option<&Subject<'_>>,
        metrics: &Metrics,
    ) -> TokenResult {
        // A miss is a lookup that made the fetch; finding a token (or waiting for
        // another request's fetch) is a hit.
        let fetched = AtomicBool::new(false);
        let r = self
            .tokens
            .get_or_fetch(&key, || async {
                fetched.store(true, Ordering::Relaxed);
                let r = fetch_token(src, subject.map(|s| s.token)).await;
                let ok = r.is_ok();
                metrics.upstream_token_fetch(&src.upstream, ok);
                match r {
                    Ok((value, lifetime)) => {
                        self.failures.remove(&key);
                        let margin = Duration::from_secs(60).min(lifetime / 2);
                        let mut ttl = lifetime.saturating_sub(margin);
                        if let Some(left) = subject.and_then(subject_left) {
                            ttl = ttl.min(left);
                        }
                        (Ok(value), ttl)
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %src.upstream, error = %e, "upstream token fetch failed");
                        if self.failures.len() >= MAX_FAILURES {
                            self.failures.clear();
                        }
                        let n = self
                            .failures
                            .entry(key)
                            .or_insert_with(|| AtomicU32::new(0))
                            .fetch_add(1, Ordering::Relaxed);
                        let backoff = BACKOFF_START.saturating_mul(1 << n.min(8)).min(BACKOFF_MAX);
                        (Err(e), backoff)
                    }
                }
            })
            .await;
        if fetched.load(Ordering::Relaxed) {
            self.lookups.miss();
        } else {
            self.lookups.hit();
        }
        r
    }

    /// The upstream said 401 to a request sent with `used`: drop the token cached under
    /// `key` only if it is still that one. A request that started with an older token
    /// must not throw away the fresh token another request fetched in the meantime.
    pub fn invalidate_if_current(&self, key: &[u8; 32], used: &HeaderValue) {
        if matches!(self.tokens.get(key), Some(Ok(v)) if v == used) {
            self.tokens.remove(key);
        }
    }

    pub fn clear(&self) -> usize {
        self.failures.clear();
        self.tokens.clear()
    }
}

/// How long the subject token has left (None: unknown).
fn subject_left(s: &Subject<'_>) -> Option<Duration> {
    if s.expires_at == 0 {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Some(Duration::from_secs(s.expires_at.saturating_sub(now)))
}

async fn fetch_token(
    src: &OAuth2Source,
    subject: Option<&str>,
) -> Result<(HeaderValue, Duration), TokenError> {
    // Neither the client secret, the subject token nor the token obtained: the upstream,
    // the endpoint and whether it worked.
    let mut span = crate::otel::child("upstream_token.fetch", SpanKind::Client);
    if span.recording() {
        span.attr("tollgate.upstream", src.upstream.to_string())
            .attr(
                "url.full",
                src.token_url
                    .split(['?', '#'])
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            );
    }
    let r = fetch_token_inner(src, subject, span.traceparent()).await;
    if let Err(e) = &r {
        span.fail(e.to_string());
    }
    r
}

async fn fetch_token_inner(
    src: &OAuth2Source,
    subject: Option<&str>,
    traceparent: Option<HeaderValue>,
) -> Result<(HeaderValue, Duration), TokenError> {
    let mut fields: Vec<(&str, &str)> = Vec::with_capacity(8);
    match (&src.grant, subject) {
        (Grant::ClientCredentials, _) => fields.push(("grant_type", "client_credentials")),
        (
            Grant::TokenExchange {
                subject_token_type,
                requested_token_type,
                resource,
            },
            Some(token),
        ) => {
            fields.push(("grant_type", GRANT_TOKEN_EXCHANGE));
            fields.push(("subject_token", token));
            fields.push(("subject_token_type", subject_token_type));
            if let Some(r) = requested_token_type {
                fields.push(("requested_token_type", r));
            }
            if let Some(r) = resource {
                fields.push(("resource", r));
            }
        }
        (Grant::JwtBearer, Some(token)) => {
            fields.push(("grant_type", GRANT_JWT_BEARER));
            fields.push(("assertion", token));
        }
        (_, None) => return Err(TokenError::Response("needs the caller's token")),
    }
    if let Some(s) = &src.scope {
        fields.push(("scope", s));
    }
    if let Some(a) = &src.audience {
        fields.push(("audience", a));
    }
    for (k, v) in &src.extra_params {
        fields.push((k, v.expose()));
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
    if let Some(tp) = traceparent {
        req = req.header(&crate::trace_context::TRACEPARENT, tp);
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
        // RFC 8693 §2.2.1: "N_A" when the issued token is not an access token; it is
        // still what the upstream is to receive.
        let exchanged = matches!(src.grant, Grant::TokenExchange { .. });
        let accepted =
            tt.eq_ignore_ascii_case("bearer") || (exchanged && tt.eq_ignore_ascii_case("n_a"));
        if !accepted {
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
            grant: Grant::ClientCredentials,
            client: crate::client::build_client(
                crate::tls::client_config(None).unwrap(),
                Duration::from_secs(1),
                crate::outbound::Outbound::Direct,
            ),
            timeout: Duration::from_secs(1),
            cache_key: [7; 32],
        };
        let cache = TokenCache::default();
        let new = HeaderValue::from_static("Bearer new");
        cache
            .tokens
            .insert(src.cache_key, Ok(new.clone()), Duration::from_secs(60));
        cache.invalidate_if_current(&src.cache_key, &HeaderValue::from_static("Bearer old"));
        assert!(matches!(cache.tokens.get(&src.cache_key), Some(Ok(v)) if v == new));
        cache.invalidate_if_current(&src.cache_key, &new);
        assert!(cache.tokens.get(&src.cache_key).is_none());
    }
}
