//! Issuer key sets: fetched from `jwks_uri` (or found through `discovery`), cached,
//! refreshed in the background, and refetched on an unknown `kid` at most once per 10 s.
//! One fetch is in flight per issuer; when the endpoint fails, the last good keys stay.
//! A `KeyStore` outlives config reloads (it is shared by issuer name + source URL).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Request;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::jwt::KeyKind;
use crate::body::empty;
use crate::upstream::{fetch, HttpClient};

/// How often an unknown `kid` may trigger a refetch, per issuer.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The `alg` the JWK pins, if any.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

#[derive(Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, Arc<Key>>,
    pub all: Vec<Arc<Key>>,
}

impl KeySet {
    pub fn from_jwks(set: &JwkSet) -> (KeySet, usize) {
        let mut ks = KeySet::default();
        let mut skipped = 0;
        for jwk in &set.keys {
            match key_from_jwk(jwk) {
                Some(k) => {
                    let k = Arc::new(k);
                    if let Some(kid) = &k.kid {
                        ks.by_kid.insert(kid.clone(), k.clone());
                    }
                    ks.all.push(k);
                }
                None => skipped += 1,
            }
        }
        (ks, skipped)
    }
}

fn key_from_jwk(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            _ => return None,
        },
        // Symmetric keys are never used: that is how HMAC key confusion starts.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    // KeyAlgorithm's names are the JOSE names; only signature algorithms parse.
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| format!("{a:?}").parse::<Algorithm>().ok());
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        decoding,
    })
}

#[derive(Debug, Clone)]
pub enum KeySource {
    Jwks(String),
    Discovery(String),
    /// Keys known in-process (the token service's own).
    Static,
}

pub struct KeyStore {
    pub issuer_name: Arc<str>,
    pub issuer: String,
    pub source: KeySource,
    client: Option<HttpClient>,
    fetch_timeout: Duration,
    pub refresh_every: Duration,
    keys: ArcSwap<KeySet>,
    /// jwks_uri learned from discovery.
    discovered: Mutex<Option<String>>,
    flight: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    last_kid_refetch: Mutex<Option<Instant>>,
    first_done: AtomicBool,
    pub fetches_ok: AtomicU64,
    pub fetches_failed: AtomicU64,
    refresher_started: AtomicBool,
}

impl KeyStore {
    pub fn new(
        issuer_name: Arc<str>,
        issuer: String,
        source: KeySource,
        client: Option<HttpClient>,
        fetch_timeout: Duration,
        refresh_every: Duration,
    ) -> KeyStore {
        KeyStore {
            issuer_name,
            issuer,
            source,
            client,
            fetch_timeout,
            refresh_every,
            keys: ArcSwap::from_pointee(KeySet::default()),
            discovered: Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            last_kid_refetch: Mutex::new(None),
            first_done: AtomicBool::new(false),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            refresher_started: AtomicBool::new(false),
        }
    }

    pub fn with_static_keys(issuer_name: Arc<str>, issuer: String, keys: KeySet) -> KeyStore {
        let ks = KeyStore::new(
            issuer_name,
            issuer,
            KeySource::Static,
            None,
            Duration::ZERO,
            Duration::ZERO,
        );
        ks.keys.store(Arc::new(keys));
        ks.first_done.store(true, Ordering::Release);
        ks
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    pub fn first_fetch_done(&self) -> bool {
        self.first_done.load(Ordering::Acquire)
    }

    /// Starts the background refresher once; it ends when the store is dropped.
    pub fn start(self: &Arc<Self>) {
        if matches!(self.source, KeySource::Static)
            || self.refresher_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak: Weak<KeyStore> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Some(store) = weak.upgrade() else { return };
                if !first {
                    let every = store.refresh_every;
                    drop(store);
                    tokio::time::sleep(every).await;
                    let Some(s) = weak.upgrade() else { return };
                    s.refresh().await;
                } else {
                    store.refresh().await;
                }
                first = false;
            }
        });
    }

    /// Fetches now unless another fetch finished while we waited for the flight.
    pub async fn refresh(&self) {
        if matches!(self.source, KeySource::Static) {
            return;
        }
        let seen = self.generation.load(Ordering::Acquire);
        let _guard = self.flight.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return;
        }
        match self.fetch_keys().await {
            Ok((set, skipped)) => {
                tracing::info!(issuer = %self.issuer_name, keys = set.all.len(), skipped, "fetched issuer keys");
                self.keys.store(Arc::new(set));
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(issuer = %self.issuer_name, error = %e,
                    kept_keys = self.keys.load().all.len(), "issuer key fetch failed; keeping last good keys");
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.first_done.store(true, Ordering::Release);
    }

    /// On an unknown `kid`: refetch, at most once per [`UNKNOWN_KID_REFETCH`].
    /// Returns whether a refetch happened (or was joined).
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        if matches!(self.source, KeySource::Static) {
            return false;
        }
        {
            let mut last = self
                .last_kid_refetch
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFETCH) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.refresh().await;
        true
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let client = self.client.as_ref().ok_or("no HTTP client")?;
        let req = Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(empty())
            .map_err(|e| e.to_string())?;
        let (status, _, body) = fetch(client, req, self.fetch_timeout, MAX_JWKS_BYTES).await?;
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: invalid JSON: {e}"))
    }

    async fn fetch_keys(&self) -> Result<(KeySet, usize), String> {
        let jwks_url = match &self.source {
            KeySource::Jwks(u) => u.clone(),
            KeySource::Static => return Ok((KeySet::default(), 0)),
            KeySource::Discovery(meta) => {
                let known = self
                    .discovered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match known {
                    Some(u) => u,
                    None => {
                        let doc = self.get_json(meta).await?;
                        if let Some(iss) = doc.get("issuer").and_then(|v| v.as_str()) {
                            if iss != self.issuer {
                                return Err(format!(
                                    "discovery document names issuer \"{iss}\", config says \"{}\"",
                                    self.issuer
                                ));
                            }
                        }
                        let u = doc
                            .get("jwks_uri")
                            .and_then(|v| v.as_str())
                            .ok_or("discovery document has no jwks_uri")?
                            .to_owned();
                        *self.discovered.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(u.clone());
                        u
                    }
                }
            }
        };
        let doc = self.get_json(&jwks_url).await?;
        let set: JwkSet =
            serde_json::from_value(lenient_jwks(doc)).map_err(|e| format!("invalid JWKS: {e}"))?;
        Ok(KeySet::from_jwks(&set))
    }
}

/// Drops JWKs that do not parse (unknown `kty`, odd fields) instead of failing the set.
fn lenient_jwks(doc: serde_json::Value) -> serde_json::Value {
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .map(|ks| {
            ks.iter()
                .filter(|k| serde_json::from_value::<Jwk>((*k).clone()).is_ok())
                .cloned()
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    serde_json::json!({ "keys": keys })
}
