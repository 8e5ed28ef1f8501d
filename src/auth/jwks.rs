//! Issuer key sets: fetched from `jwks_uri` (or found through `discovery`), cached,
//! refreshed in the background, and refetched on an unknown `kid` at most once per 10 s.
//! One fetch is in flight per issuer; when the endpoint fails, the last good keys stay.
//! A `KeyStore` outlives config reloads (it is shared by issuer name + source URL).
//!
//! Each JWK is parsed into an aws-lc-rs public key when the set is loaded, and that
//! parsed key verifies every token signed with it: nothing about the key (for RSA, the
//! Montgomery constants of the modulus) is rebuilt per request.

use opentelemetry::trace::SpanKind;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::Request;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::Algorithm;
use prometheus_client::metrics::counter::Counter;

use super::jwt::KeyKind;
use crate::body::empty;
use crate::client::{fetch, HttpClient};

/// How often an unknown `kid` may trigger a refetch, per issuer.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The `alg` the JWK pins, if any.
    pub alg: Option<Algorithm>,
    verifier: Verifier,
}

/// A public key parsed once, for the algorithms its type allows.
enum Verifier {
    /// aws-lc-rs ties a parsed key to one algorithm, so an RSA key holds one per
    /// [`RSA_ALGS`] entry, each parsed on first use (most issuers use only RS256).
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
        parsed: Box<[OnceLock<Option<ParsedPublicKey>>; 6]>,
    },
    /// EC P-256 (ES256), P-384 (ES384) or Ed25519 (EdDSA): one algorithm per curve.
    Single(Algorithm, ParsedPublicKey),
}

/// The RSA algorithms and their aws-lc-rs parameters (moduli of 2048 to 8192 bits, the
/// bounds tollgate has always had).
const RSA_ALGS: [(Algorithm, &RsaParameters); 6] = [
    (Algorithm::RS256, &lc::RSA_PKCS1_2048_8192_SHA256),
    (Algorithm::RS384, &lc::RSA_PKCS1_2048_8192_SHA384),
    (Algorithm::RS512, &lc::RSA_PKCS1_2048_8192_SHA512),
    (Algorithm::PS256, &lc::RSA_PSS_2048_8192_SHA256),
    (Algorithm::PS384, &lc::RSA_PSS_2048_8192_SHA384),
    (Algorithm::PS512, &lc::RSA_PSS_2048_8192_SHA512),
];

impl Verifier {
    fn rsa(n: &[u8], e: &[u8], first: Algorithm) -> Option<Verifier> {
        // Same integers; some issuers pad n with a zero byte, which aws-lc-rs refuses.
        let strip = |b: &[u8]| -> Box<[u8]> {
            let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
            b[start..].into()
        };
        let v = Verifier::Rsa {
            n: strip(n),
            e: strip(e),
            parsed: Default::default(),
        };
        // Parse one now, so a malformed key is dropped with the set instead of failing
        // every token later.
        v.parsed_rsa(first)?;
        Some(v)
    }

    fn parsed_rsa(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        let Verifier::Rsa { n, e, parsed } = self else {
            return None;
        };
        let i = RSA_ALGS.iter().position(|(a, _)| *a == alg)?;
        parsed[i]
            .get_or_init(|| {
                RsaPublicKeyComponents { n: &**n, e: &**e }
                    .to_parsed_public_key(RSA_ALGS[i].1)
                    .ok()
            })
            .as_ref()
    }
}

impl Key {
    /// Whether `signature` (base64url, as in the token) is a valid `alg` signature of
    /// `message` with this key. False for an algorithm the key's type or its JWK `alg`
    /// does not allow.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        let key = match &self.verifier {
            Verifier::Rsa { .. } => self.verifier.parsed_rsa(alg),
            Verifier::Single(a, key) => (*a == alg).then_some(key),
        };
        let Some(key) = key else { return false };
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        key.verify_sig(message, &signature).is_ok()
    }
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

pub fn key_from_jwk(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    // KeyAlgorithm's names are the JOSE names; only signature algorithms parse.
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| format!("{a:?}").parse::<Algorithm>().ok());
    let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    let (kind, verifier) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            // Parsed now for the JWK's own alg (RS256 when it names none or a non-RSA one).
            let first = alg
                .filter(|a| RSA_ALGS.iter().any(|(r, _)| r == a))
                .unwrap_or(Algorithm::RS256);
            (
                KeyKind::Rsa,
                Verifier::rsa(&b64(&p.n)?, &b64(&p.e)?, first)?,
            )
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, alg, lc_alg, len) = match p.curve {
                EllipticCurve::P256 => (
                    KeyKind::P256,
                    Algorithm::ES256,
                    &lc::ECDSA_P256_SHA256_FIXED,
                    32,
                ),
                EllipticCurve::P384 => (
                    KeyKind::P384,
                    Algorithm::ES384,
                    &lc::ECDSA_P384_SHA384_FIXED,
                    48,
                ),
                _ => return None,
            };
            let (x, y) = (b64(&p.x)?, b64(&p.y)?);
            if x.len() != len || y.len() != len {
                return None;
            }
            // The uncompressed SEC1 point: 04 || x || y.
            let point = [&[4u8][..], &x, &y].concat();
            let key = ParsedPublicKey::new(lc_alg, point).ok()?;
            (kind, Verifier::Single(alg, key))
        }
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => {
                // Exactly the 32-byte point (aws-lc-rs would also take a DER SPKI).
                let x = b64(&p.x).filter(|x| x.len() == 32)?;
                let key = ParsedPublicKey::new(&lc::ED25519, x).ok()?;
                (KeyKind::Ed25519, Verifier::Single(Algorithm::EdDSA, key))
            }
            _ => return None,
        },
        // Symmetric keys are never used: that is how HMAC key confusion starts.
        AlgorithmParameters::OctetKey(_) => return None,
        // Key types this gateway does not verify with.
        _ => return None,
    };
    Some(Key {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        verifier,
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
    /// The discovery document itself, once fetched (browser sign-in reads its
    /// authorization, token and end-session endpoints).
    document: Mutex<Option<Arc<serde_json::Value>>>,
    flight: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    last_kid_refetch: Mutex<Option<Instant>>,
    first_done: AtomicBool,
    /// Key set fetches by result (`tollgate_jwks_fetches_total`).
    pub fetches_ok: Counter,
    pub fetches_failed: Counter,
    refresher_started: AtomicBool,
    /// The last fetch's outcome and when the key set now in use was fetched (the admin
    /// page shows both).
    last_fetch: Mutex<Option<FetchOutcome>>,
    keys_fetched_at: Mutex<Option<SystemTime>>,
}

/// How the last key fetch of an issuer went.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub at: SystemTime,
    /// `Err` holds why it failed (no secrets: a URL, a status, a parse error).
    pub result: Result<usize, String>,
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
            document: Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            last_kid_refetch: Mutex::new(None),
            first_done: AtomicBool::new(false),
            fetches_ok: Counter::default(),
            fetches_failed: Counter::default(),
            refresher_started: AtomicBool::new(false),
            last_fetch: Mutex::new(None),
            keys_fetched_at: Mutex::new(None),
        }
    }

    /// The last key fetch's outcome (`None` before the first, and for static keys).
    pub fn last_fetch(&self) -> Option<FetchOutcome> {
        self.last_fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When the key set in use was fetched (`None`: never, or static keys).
    pub fn keys_fetched_at(&self) -> Option<SystemTime> {
        *self
            .keys_fetched_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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

    /// The discovery document, once a fetch has read it (`discovery:` issuers only).
    pub fn discovery_document(&self) -> Option<Arc<serde_json::Value>> {
        self.document
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The HTTP client and timeout this issuer's fetches use (for other calls to the
    /// same identity provider: browser sign-in's token endpoint).
    pub fn http(&self) -> Option<(&HttpClient, Duration)> {
        self.client.as_ref().map(|c| (c, self.fetch_timeout))
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
                let n = set.all.len();
                self.keys.store(Arc::new(set));
                self.fetches_ok.inc();
                let now = SystemTime::now();
                *self
                    .keys_fetched_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(now);
                *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(FetchOutcome {
                    at: now,
                    result: Ok(n),
                });
            }
            Err(e) => {
                self.fetches_failed.inc();
                *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(FetchOutcome {
                    at: SystemTime::now(),
                    result: Err(e.clone()),
                });
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
        // A child span when a request waits for this fetch (an unknown kid); the
        // scheduled refreshes run outside any request and record none.
        let mut span = crate::otel::child("jwks.fetch", SpanKind::Client);
        if span.recording() {
            span.attr("tollgate.issuer", self.issuer_name.to_string())
                .attr(
                    "url.full",
                    url.split(['?', '#']).next().unwrap_or("").to_owned(),
                );
        }
        let r = self.get_json_inner(url, span.traceparent()).await;
        if let Err(e) = &r {
            span.fail(e.clone());
        }
        r
    }

    async fn get_json_inner(
        &self,
        url: &str,
        traceparent: Option<http::HeaderValue>,
    ) -> Result<serde_json::Value, String> {
        let client = self.client.as_ref().ok_or("no HTTP client")?;
        let mut req = Request::get(url).header(http::header::ACCEPT, "application/json");
        if let Some(tp) = traceparent {
            req = req.header(&crate::trace_context::TRACEPARENT, tp);
        }
        let req = req.body(empty()).map_err(|e| e.to_string())?;
        let (status, _, body) = fetch(client, req, self.fetch_timeout, MAX_JWKS_BYTES)
            .await
            .map_err(|e| e.to_string())?;
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
                        *self.document.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Arc::new(doc));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_service::keys::SigningKey;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature as rs;
    use jsonwebtoken::{EncodingKey, Header};

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// The key parsed from `jwk` (as an issuer's JWKS would carry it).
    fn key_of(jwk: &serde_json::Value) -> Arc<Key> {
        let set: JwkSet = serde_json::from_value(serde_json::json!({ "keys": [jwk] })).unwrap();
        let (ks, skipped) = KeySet::from_jwks(&set);
        assert_eq!(skipped, 0, "{jwk}");
        ks.all[0].clone()
    }

    fn sign(alg: Algorithm, kid: &str, with: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &serde_json::json!({"sub": "x"}), with).unwrap()
    }

    fn verifies(key: &Key, alg: Algorithm, token: &str) -> bool {
        let (input, sig) = token.rsplit_once('.').unwrap();
        key.verify(alg, input.as_bytes(), sig)
    }

    /// For each alg: a token of the key's own private half verifies; one signed by
    /// `other` under the same kid does not, nor a tampered payload, nor the genuine
    /// signature presented under the family's other algorithms.
    fn same_kid_other_key(key: &Key, mine: &EncodingKey, other: &EncodingKey, algs: &[Algorithm]) {
        let kid = key.kid.as_deref().unwrap();
        for &alg in algs {
            let good = sign(alg, kid, mine);
            assert!(verifies(key, alg, &good), "{alg:?}: genuine token refused");
            let forged = sign(alg, kid, other);
            assert!(!verifies(key, alg, &forged), "{alg:?}: other key accepted");
            let (input, sig) = good.rsplit_once('.').unwrap();
            let tampered = format!("{input}x");
            assert!(!key.verify(alg, tampered.as_bytes(), sig), "{alg:?}");
            for &alt in algs.iter().filter(|&&a| a != alg) {
                assert!(!verifies(key, alt, &good), "{alg:?} signature as {alt:?}");
            }
            for junk in ["", "!!!", "AAAA"] {
                assert!(!key.verify(alg, input.as_bytes(), junk), "{alg:?}");
            }
        }
    }

    fn unpinned(k: &SigningKey) -> serde_json::Value {
        let mut jwk = k.jwk.clone();
        jwk.as_object_mut().unwrap().remove("alg");
        jwk
    }

    // Behaviour: RSA keys verify RS256..PS512 through the parsed key; a token signed by
    // another RSA key under the same kid is refused, and a pinned alg is enforced.
    #[test]
    fn rsa_same_kid_other_key() {
        let (a, b) = (fixture("rsa-a.pem"), fixture("rsa-b.pem"));
        let sk = SigningKey::from_pem(&a).unwrap();
        let mine = EncodingKey::from_rsa_pem(&a).unwrap();
        let other = EncodingKey::from_rsa_pem(&b).unwrap();
        // The six RSA algorithms (RS*, PS*) lead the list of asymmetric ones.
        let all = &crate::auth::jwt::ALL_ASYMMETRIC[..6];
        same_kid_other_key(&key_of(&unpinned(&sk)), &mine, &other, all);
        // The token service's JWK pins RS256: PS256 with it is refused.
        let pinned = key_of(&sk.jwk);
        same_kid_other_key(&pinned, &mine, &other, &[Algorithm::RS256]);
        let ps = sign(Algorithm::PS256, &sk.kid, &mine);
        assert!(!verifies(&pinned, Algorithm::PS256, &ps));
        // A modulus written with a leading zero byte is the same key.
        let mut jwk = sk.jwk.clone();
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        jwk["n"] = URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()).into();
        let good = sign(Algorithm::RS256, &sk.kid, &mine);
        assert!(verifies(&key_of(&jwk), Algorithm::RS256, &good));
    }

    // Behaviour: EC P-256 / P-384 keys verify ES256 / ES384 only; another key of the
    // same curve under the same kid is refused.
    #[test]
    fn ec_same_kid_other_key() {
        let rng = SystemRandom::new();
        for (file, alg, ring_alg) in [
            (
                "ec256.pem",
                Algorithm::ES256,
                &rs::ECDSA_P256_SHA256_FIXED_SIGNING,
            ),
            (
                "ec384.pem",
                Algorithm::ES384,
                &rs::ECDSA_P384_SHA384_FIXED_SIGNING,
            ),
        ] {
            let pem = fixture(file);
            let sk = SigningKey::from_pem(&pem).unwrap();
            let mine = EncodingKey::from_ec_pem(&pem).unwrap();
            let other = rs::EcdsaKeyPair::generate_pkcs8(ring_alg, &rng).unwrap();
            let other = EncodingKey::from_ec_der(other.as_ref());
            let key = key_of(&unpinned(&sk));
            same_kid_other_key(&key, &mine, &other, &[alg]);
            let wrong = if alg == Algorithm::ES256 {
                Algorithm::ES384
            } else {
                Algorithm::ES256
            };
            let good = sign(alg, &sk.kid, &mine);
            assert!(!verifies(&key, wrong, &good));
            assert!(!verifies(&key, Algorithm::RS256, &good));
        }
    }

    // Behaviour: Ed25519 keys verify EdDSA; another Ed25519 key under the same kid is refused.
    #[test]
    fn ed25519_same_kid_other_key() {
        let pem = fixture("ed25519.pem");
        let sk = SigningKey::from_pem(&pem).unwrap();
        let mine = EncodingKey::from_ed_pem(&pem).unwrap();
        let other = rs::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let other = EncodingKey::from_ed_der(other.as_ref());
        let key = key_of(&sk.jwk);
        same_kid_other_key(&key, &mine, &other, &[Algorithm::EdDSA]);
        let good = sign(Algorithm::EdDSA, &sk.kid, &mine);
        assert!(!verifies(&key, Algorithm::ES256, &good));
    }

    // Behaviour: keys that do not parse are dropped from the set (counted as skipped),
    // never kept to fail or, worse, pass tokens later.
    #[test]
    fn malformed_keys_are_skipped() {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let bad = serde_json::json!({ "keys": [
            {"kty": "RSA", "kid": "empty-n", "n": "", "e": "AQAB"},
            {"kty": "RSA", "kid": "not-b64", "n": "*", "e": "AQAB"},
            {"kty": "EC", "kid": "short-x", "crv": "P-256", "x": b(&[1; 31]), "y": b(&[1; 32])},
            {"kty": "EC", "kid": "off-curve", "crv": "P-256", "x": b(&[1; 32]), "y": b(&[1; 32])},
            {"kty": "OKP", "kid": "long-x", "crv": "Ed25519", "x": b(&[1; 33])},
            {"kty": "oct", "kid": "hmac", "k": b(b"secret")},
        ]});
        let set: JwkSet = serde_json::from_value(bad).unwrap();
        let (ks, skipped) = KeySet::from_jwks(&set);
        assert!(ks.all.is_empty() && ks.by_kid.is_empty());
        assert_eq!(skipped, 6);
    }
}
