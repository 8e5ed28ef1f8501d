//! Step 7 of the request path: authentication.
//!
//! `Authorization: Bearer` -> which issuer -> verified-token cache -> JWKS signature
//! check or RFC 7662 introspection -> an [`Identity`]. Every refusal carries SPEC's
//! reason code. A JWT goes to the JWT issuer whose `issuer` equals its `iss`; anything
//! else goes to the route's introspection issuers.

pub mod dpop;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod replay;
pub mod sender;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use self::introspect::{IntrospectError, Introspection, INACTIVE_TTL};
use self::jwks::KeyStore;
use self::jwt::{Jws, Refusal};
use self::replay::ReplayCache;
use self::sender::{DpopSettings, SenderConstraint};
use crate::cache::FlightCache;
use crate::error::{BadGateway, DenyReason, GatewayError};
use crate::identity::Identity;
use crate::metrics::CacheCounters;

/// A compiled `issuers[]` entry (or the token service, named `local`).
pub struct Issuer {
    pub name: Arc<str>,
    pub issuer: String,
    pub kind: IssuerKind,
    pub audiences: Vec<String>,
    pub skip_audience_check: bool,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub scope_claims: Vec<String>,
    pub client_claims: Vec<String>,
    /// `sender_constraint`: whether tokens must be DPoP- or certificate-bound.
    pub sender_constraint: SenderConstraint,
    /// `dpop`: how DPoP proofs are checked.
    pub dpop: DpopSettings,
    /// Distinguishes cache entries of differently configured issuers.
    pub fingerprint: Fingerprint,
}

pub enum IssuerKind {
    Jwt(Arc<KeyStore>),
    Introspection(Box<Introspection>),
}

impl Issuer {
    pub fn is_jwt(&self) -> bool {
        matches!(self.kind, IssuerKind::Jwt(_))
    }
}

/// Result of introspection, as cached.
pub type IntrospectResult = Result<Arc<Identity>, IntrospectError>;

pub type Fingerprint = [u8; 32];

/// A token verified before, as the verified-token cache keeps it.
pub struct Verified {
    /// The token itself: a hit is a cache key match *and* this token, compared whole.
    token: Box<str>,
    /// The issuer that verified it.
    fingerprint: Fingerprint,
    identity: Arc<Identity>,
}

/// The verified-token cache's key: a fast keyed hash of the token (foldhash, with keys
/// drawn from the operating system's random source once per process), rather than a
/// SHA-256 of the whole token on every request. It only finds the entry: a hit also
/// compares the whole token ([`same_token`]), so two tokens with one key can never
/// share an identity (the later one takes the slot over), and only a token that
/// verified is ever inserted, so a client cannot fill the map with keys of its
/// choosing.
pub struct TokenKeys(foldhash::quality::SeedableRandomState);

impl Default for TokenKeys {
    fn default() -> Self {
        static SHARED: LazyLock<foldhash::SharedSeed> =
            LazyLock::new(|| foldhash::SharedSeed::from_u64(rand::random()));
        TokenKeys(foldhash::quality::SeedableRandomState::with_seed(
            rand::random(),
            &SHARED,
        ))
    }
}

impl TokenKeys {
    pub fn key(&self, token: &str) -> u64 {
        self.0.hash_one(token.as_bytes())
    }
}

/// Whether `presented` is the cached token, in a time that depends on the lengths only
/// (eight bytes at a time, no early exit).
fn same_token(cached: &str, presented: &str) -> bool {
    let (a, b) = (cached.as_bytes(), presented.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let ((wa, ta), (wb, tb)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    let mut diff = 0u64;
    for (x, y) in wa.iter().zip(wb) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in ta.iter().zip(tb) {
        diff |= u64::from(x ^ y);
    }
    diff.ct_eq(&0).into()
}

/// Caches that outlive a request (and a reload); flushed by `POST /admin/caches/flush`.
pub struct AuthCaches {
    /// Keyed hash of the token ([`TokenKeys`]) -> the token, the issuer that verified
    /// it and its identity.
    pub verified: FlightCache<u64, Arc<Verified>>,
    pub token_keys: TokenKeys,
    pub introspection: FlightCache<[u8; 32], IntrospectResult>,
    /// DPoP proofs seen recently (`jti`s), against replays. Not flushed with the others:
    /// forgetting them would accept replays again.
    pub dpop_replay: ReplayCache,
    /// Lookups in `verified` and `introspection` (`tollgate_cache_requests_total`).
    pub verified_lookups: CacheCounters,
    pub introspection_lookups: CacheCounters,
}

impl Default for AuthCaches {
    fn default() -> Self {
        AuthCaches::counted(CacheCounters::default(), CacheCounters::default())
    }
}

impl AuthCaches {
    /// Empty caches whose lookups count into `verified` and `introspection`.
    pub fn counted(verified: CacheCounters, introspection: CacheCounters) -> Self {
        AuthCaches {
            verified: FlightCache::new(100_000),
            token_keys: TokenKeys::default(),
            introspection: FlightCache::new(100_000),
            dpop_replay: ReplayCache::default(),
            verified_lookups: verified,
            introspection_lookups: introspection,
        }
    }
}

/// Decision steps for `tollgate explain`; free when disabled.
#[derive(Default)]
pub struct Trace {
    pub enabled: bool,
    pub lines: Vec<String>,
}

impl Trace {
    pub fn note(&mut self, f: impl FnOnce() -> String) {
        if self.enabled {
            self.lines.push(f());
        }
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The Bearer token, if the request carries one (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then_some(t)
}

/// A verified token is cached until it expires, but for at most this long: the cache
/// then holds the tokens seen in the last few minutes, not every token of the day
/// (re-verifying a token costs ~20 µs).
const VERIFIED_TTL_MAX_SECS: i64 = 300;

fn cache_key(issuer: &Issuer, token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(issuer.fingerprint);
    h.update(token.as_bytes());
    h.finalize().into()
}

fn unauthorized(r: Refusal) -> GatewayError {
    GatewayError::Unauthorized {
        reason: r.reason,
        description: r.description,
    }
}

/// The identity of a JWT one of `issuers` verified before, while its cache entry lasts
/// (never past the token's `exp` plus leeway): the request path's fast path.
pub fn cached<'a>(
    mut issuers: impl Iterator<Item = &'a Arc<Issuer>>,
    caches: &AuthCaches,
    token: &str,
) -> Option<Arc<Identity>> {
    if token.len() > jwt::MAX_TOKEN_LEN {
        return None;
    }
    // Only a hit is counted here: a miss goes on to `authenticate`, which counts it.
    let v = caches.verified.get(&caches.token_keys.key(token))?;
    if !same_token(&v.token, token) || !issuers.any(|i| i.fingerprint == v.fingerprint) {
        return None;
    }
    caches.verified_lookups.hit();
    Some(v.identity.clone())
}

/// Authenticates `token` against the allowed `issuers` (already resolved for the route).
pub async fn authenticate(
    issuers: &[&Arc<Issuer>],
    caches: &AuthCaches,
    token: &str,
    trace: &mut Trace,
) -> Result<Arc<Identity>, GatewayError> {
    if token.len() > jwt::MAX_TOKEN_LEN {
        return Err(unauthorized(Refusal::new(
            DenyReason::TokenMalformed,
            "token is too long",
        )));
    }
    // The hot path: a token verified before, by an issuer this route accepts, costs one
    // keyed hash, one map lookup and one comparison. Entries expire no later than the
    // token (plus leeway).
    let key = caches.token_keys.key(token);
    if let Some(v) = caches
        .verified
        .get(&key)
        .filter(|v| same_token(&v.token, token))
    {
        if let Some(issuer) = issuers.iter().find(|i| i.fingerprint == v.fingerprint) {
            caches.verified_lookups.hit();
            trace.note(|| format!("verified-token cache: hit (issuer {})", issuer.name));
            return Ok(v.identity.clone());
        }
    }
    caches.verified_lookups.miss();
    let mut introspectors: Vec<&Arc<Issuer>> =
        issuers.iter().copied().filter(|i| !i.is_jwt()).collect();
    if jwt::looks_like_jwt(token) {
        let jws = jwt::parse(token).map_err(unauthorized)?;
        let iss = jws
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        trace.note(|| {
            format!(
                "token: JWT, alg {}, kid {}, iss \"{iss}\"",
                jws.alg_name,
                jws.kid.as_deref().unwrap_or("-")
            )
        });
        let mut first_err = None;
        for issuer in issuers.iter().filter(|i| i.is_jwt() && i.issuer == iss) {
            trace.note(|| format!("issuer: {} (iss matches)", issuer.name));
            match verify_jwt(issuer, &jws, trace).await {
                Ok((id, ttl)) => {
                    let id = Arc::new(id);
                    let entry = Verified {
                        token: token.into(),
                        fingerprint: issuer.fingerprint,
                        identity: id.clone(),
                    };
                    caches.verified.insert(key, Arc::new(entry), ttl);
                    return Ok(id);
                }
                Err(r) => {
                    trace.note(|| {
                        format!(
                            "issuer {}: refused: {} ({})",
                            issuer.name,
                            r.description,
                            r.reason.as_str()
                        )
                    });
                    first_err.get_or_insert(r);
                }
            }
        }
        if let Some(r) = first_err {
            return Err(unauthorized(r));
        }
        if introspectors.is_empty() {
            let names: Vec<&str> = issuers.iter().map(|i| &*i.name).collect();
            return Err(unauthorized(Refusal::new(
                DenyReason::IssuerNotAccepted,
                format!(
                    "issuer \"{iss}\" not accepted on this route (accepted issuers: {})",
                    names.join(", ")
                ),
            )));
        }
        // A JWT names its issuer: when introspection issuers with that `issuer` are
        // on the route, only they are asked (another IdP never sees this IdP's
        // tokens); when none is, every introspection issuer is, as before.
        if introspectors.iter().any(|i| i.issuer == iss) {
            introspectors.retain(|i| i.issuer == iss);
            trace.note(|| {
                format!("no JWT issuer matches iss; trying introspection at the issuers whose issuer is \"{iss}\"")
            });
        } else {
            trace.note(|| "no JWT issuer matches iss; trying introspection".into());
        }
    } else {
        trace.note(|| "token: opaque (not a JWT)".into());
        if introspectors.is_empty() {
            return Err(unauthorized(Refusal::new(
                DenyReason::TokenMalformed,
                "token is not a JWT and this route has no introspection issuer",
            )));
        }
    }
    let mut last = None;
    for issuer in introspectors {
        let IssuerKind::Introspection(intro) = &issuer.kind else {
            continue;
        };
        let key = cache_key(issuer, token);
        // A miss is a lookup that made the call (a request that waited for another's
        // call in flight, or found its answer, is a hit).
        let called = AtomicBool::new(false);
        let res = caches
            .introspection
            .get_or_fetch(&key, || async {
                called.store(true, Ordering::Relaxed);
                let r = introspect_identity(issuer, intro, token).await;
                let ttl = match &r {
                    Ok((_, ttl)) => *ttl,
                    Err(IntrospectError::Refused(_)) => INACTIVE_TTL.min(intro.cache_ttl),
                    Err(IntrospectError::Unavailable(_)) => Duration::ZERO,
                };
                (r.map(|(id, _)| Arc::new(id)), ttl)
            })
            .await;
        if called.load(Ordering::Relaxed) {
            caches.introspection_lookups.miss();
        } else {
            caches.introspection_lookups.hit();
        }
        match res {
            Ok(id) => {
                // A cached "allow" never outlives the token.
                if id.expires_at != 0
                    && (id.expires_at as i64).saturating_add(issuer.leeway.as_secs() as i64)
                        <= now_secs()
                {
                    caches.introspection.remove(&key);
                    last = Some(unauthorized(Refusal::new(
                        DenyReason::TokenExpired,
                        "token expired",
                    )));
                    continue;
                }
                trace.note(|| format!("issuer {}: introspection says active", issuer.name));
                return Ok(id);
            }
            Err(IntrospectError::Refused(r)) => {
                trace.note(|| {
                    format!(
                        "issuer {}: introspection refused: {}",
                        issuer.name, r.description
                    )
                });
                last = Some(unauthorized(r));
            }
            Err(IntrospectError::Unavailable(e)) => {
                tracing::warn!(issuer = %issuer.name, error = %e, "introspection failed");
                trace.note(|| format!("issuer {}: introspection unavailable: {e}", issuer.name));
                last.get_or_insert(GatewayError::BadGateway(BadGateway::Introspection {
                    issuer: issuer.name.clone(),
                }));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        unauthorized(Refusal::new(
            DenyReason::TokenInactive,
            "token is not active",
        ))
    }))
}

async fn introspect_identity(
    issuer: &Issuer,
    intro: &Introspection,
    token: &str,
) -> Result<(Identity, Duration), IntrospectError> {
    let claims = intro.introspect(token).await?;
    let now = now_secs();
    let refused = IntrospectError::Refused;
    let (id, until) = check_claims(issuer, &claims, now, false).map_err(refused)?;
    let ttl = match until {
        Some(u) => Duration::from_secs((u - now).max(0) as u64).min(intro.cache_ttl),
        None => intro.cache_ttl,
    };
    Ok((id, ttl))
}

/// Verifies a JWS against one issuer. Returns the identity and how long it may be cached.
pub async fn verify_jwt(
    issuer: &Issuer,
    jws: &Jws<'_>,
    trace: &mut Trace,
) -> Result<(Identity, Duration), Refusal> {
    let IssuerKind::Jwt(store) = &issuer.kind else {
        return Err(Refusal::new(
            DenyReason::IssuerNotAccepted,
            "issuer does not verify JWTs",
        ));
    };
    let alg = jwt::asymmetric_alg(&jws.alg_name)?;
    if !issuer.algorithms.contains(&alg) {
        return Err(Refusal::new(
            DenyReason::AlgorithmNotAllowed,
            format!(
                "alg {} not allowed for issuer {}",
                jws.alg_name, issuer.name
            ),
        ));
    }
    let want = jwt::key_kind_for(alg)
        .ok_or_else(|| Refusal::new(DenyReason::AlgorithmNotAllowed, "unsupported alg"))?;
    if !store.first_fetch_done() {
        // Before the issuer's first key fetch has finished, wait for it (or make it)
        // rather than spending the unknown-kid refetch on keys that are on their way.
        store.refresh().await;
    }
    let mut keys = store.keys();
    let candidates: Vec<Arc<jwks::Key>> = loop {
        let found: Vec<Arc<jwks::Key>> = match &jws.kid {
            Some(kid) => keys.by_kid.get(kid).cloned().into_iter().collect(),
            None => keys
                .all
                .iter()
                .filter(|k| k.kind == want)
                .cloned()
                .collect(),
        };
        if !found.is_empty() {
            break found;
        }
        if store.refetch_for_unknown_kid().await {
            trace.note(|| "unknown kid: key set refetched".into());
            keys = store.keys();
            continue;
        }
        return Err(Refusal::new(
            DenyReason::KidUnknown,
            match &jws.kid {
                Some(kid) => format!("key \"{kid}\" unknown for issuer {}", issuer.name),
                None => format!("no {} key known for issuer {}", jws.alg_name, issuer.name),
            },
        ));
    };
    let mut verified = false;
    for key in &candidates {
        if key.kind != want || key.alg.is_some_and(|a| a != alg) {
            if jws.kid.is_some() {
                return Err(Refusal::new(
                    DenyReason::AlgorithmNotAllowed,
                    format!(
                        "alg {} does not match the type of key \"{}\"",
                        jws.alg_name,
                        jws.kid.as_deref().unwrap_or("")
                    ),
                ));
            }
            continue;
        }
        if key.verify(alg, jws.signing_input.as_bytes(), jws.signature) {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(Refusal::new(
            DenyReason::SignatureInvalid,
            "signature does not verify",
        ));
    }
    trace.note(|| format!("signature: valid ({})", jws.alg_name));
    let now = now_secs();
    let (id, until) = check_claims(issuer, &jws.claims, now, true)?;
    trace.note(|| "claims: iss, aud, exp, nbf accepted".into());
    let until = until.unwrap_or(now);
    let ttl = Duration::from_secs((until - now).clamp(0, VERIFIED_TTL_MAX_SECS) as u64);
    Ok((id, ttl))
}

/// Checks `exp` (required for JWTs), `nbf`, `iss` and `aud`, then reads the identity.
/// Returns the identity and until when (unix seconds, leeway included) it holds.
pub fn check_claims(
    issuer: &Issuer,
    claims: &serde_json::Map<String, serde_json::Value>,
    now: i64,
    exp_required: bool,
) -> Result<(Identity, Option<i64>), Refusal> {
    let leeway = issuer.leeway.as_secs() as i64;
    let exp = jwt::numeric_claim(claims, "exp")?;
    if exp.is_none() && exp_required {
        return Err(Refusal::new(
            DenyReason::TokenMalformed,
            "token has no exp claim",
        ));
    }
    if let Some(exp) = exp {
        if now > exp.saturating_add(leeway) {
            return Err(Refusal::new(
                DenyReason::TokenExpired,
                format!("token expired {} ago", jwt::ago(now - exp)),
            ));
        }
    }
    if let Some(nbf) = jwt::numeric_claim(claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(Refusal::new(
                DenyReason::TokenNotYetValid,
                format!("token not valid for another {}", jwt::ago(nbf - now)),
            ));
        }
    }
    match claims.get("iss").and_then(|v| v.as_str()) {
        Some(iss) if iss == issuer.issuer => {}
        Some(iss) => {
            return Err(Refusal::new(
                DenyReason::IssuerNotAccepted,
                format!("issuer \"{iss}\" not accepted"),
            ))
        }
        None if exp_required => {
            return Err(Refusal::new(
                DenyReason::IssuerNotAccepted,
                "token has no iss claim",
            ))
        }
        None => {}
    }
    if !issuer.skip_audience_check && !issuer.audiences.is_empty() {
        let auds: Vec<&str> = match claims.get("aud") {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        if auds.is_empty() {
            return Err(Refusal::new(
                DenyReason::AudienceNotAccepted,
                "token has no aud claim",
            ));
        }
        if !auds.iter().any(|a| issuer.audiences.iter().any(|x| x == a)) {
            let shown: Vec<String> = auds.iter().take(5).map(|a| format!("\"{}\"", a)).collect();
            return Err(Refusal::new(
                DenyReason::AudienceNotAccepted,
                format!("audience {} not accepted", shown.join(", ")),
            ));
        }
    }
    let scopes = issuer
        .scope_claims
        .iter()
        .find_map(|c| jwt::claim(claims, c))
        .map(jwt::scopes_of)
        .unwrap_or_default();
    let client_id = issuer
        .client_claims
        .iter()
        // An empty string names no client: the next claim is read.
        .find_map(|c| {
            jwt::claim(claims, c)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        })
        .map(str::to_owned);
    let subject = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let identity = Identity {
        issuer: issuer.name.clone(),
        subject,
        client_id,
        scopes,
        expires_at: exp.unwrap_or(0).max(0) as u64,
        claims: crate::claims::TokenClaims(Arc::new(claims.clone())),
        ..Identity::default()
    };
    Ok((identity, exp.map(|e| e.saturating_add(leeway))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gateway, CONFIG};

    // Behaviour: the constant-time comparison tells every one-byte difference (in the
    // eight-byte words and in the tail) and every length difference.
    #[test]
    fn same_token_compares_every_byte() {
        let t = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl";
        assert!(same_token(t, t));
        for i in 0..t.len() {
            let mut b = t.as_bytes().to_vec();
            b[i] ^= 1;
            let other = String::from_utf8(b).unwrap();
            assert!(!same_token(t, &other), "byte {i}");
        }
        assert!(!same_token(t, &t[..t.len() - 1]));
        assert!(!same_token("", "a"));
        assert!(same_token("", ""));
    }

    // Behaviour: a verified-token cache entry found by its key is a hit only for the very
    // token it was made for: another token under the same key (what a collision of the
    // keyed hash would look like) is a miss, never that entry's identity.
    #[test]
    fn a_hit_needs_the_whole_token_not_only_its_key() {
        let (gw, _dir) = gateway(CONFIG);
        let rt = gw.current();
        let fingerprint = rt.issuer("local").expect("the token service").fingerprint;
        let caches = AuthCaches::default();
        let identity = Arc::new(Identity::default());
        let entry = |token: &str| {
            Arc::new(Verified {
                token: token.into(),
                fingerprint,
                identity: identity.clone(),
            })
        };
        let (a, b) = ("token.a.sig", "token.b.sig");
        let ttl = Duration::from_secs(60);
        caches
            .verified
            .insert(caches.token_keys.key(a), entry(b), ttl);
        assert!(cached(rt.issuers.iter(), &caches, a).is_none());
        caches
            .verified
            .insert(caches.token_keys.key(a), entry(a), ttl);
        let hit = cached(rt.issuers.iter(), &caches, a).expect("a hit");
        assert!(Arc::ptr_eq(&hit, &identity));
        assert!(cached(rt.issuers.iter(), &caches, b).is_none());
        // An issuer the route does not accept does not hit either.
        assert!(cached(std::iter::empty(), &caches, a).is_none());
    }
}
