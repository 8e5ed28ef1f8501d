//! Step 7, DPoP replay detection: the `jti`s of the proofs accepted recently, so that a
//! proof is accepted once within its `iat` window (RFC 9449 section 11.1).
//!
//! Each replica keeps its own set in memory (bounded; it outlives reloads and is not
//! dropped by `POST /admin/caches/flush`, which would re-open the window for replays).
//! With `stores.redis`, an issuer's proofs are also marked in Redis (`dpop.replay.store:
//! redis`, the default when `stores.redis` is configured), so that a proof used at one
//! replica is refused at every other: one atomic `SET tollgate:dpop:{digest} 1 NX PX
//! ttl` per proof on the rate limits' connection ([`RedisStore::set_once`]). The key is
//! 32 hex digits of SHA-256 over the issuer, the proof key's thumbprint and the `jti`
//! — never the proof or the token — and lives for as long as the proof could still
//! pass the `iat` check anywhere: until `iat + iat_window`, plus the issuer's `leeway`
//! for replicas whose clocks are behind.
//!
//! When Redis cannot answer (down, slow past `stores.redis.timeout`, failing fast),
//! `dpop.replay.on_error` decides: `deny` (default) refuses with 503
//! `service_unavailable` and `Retry-After: 1`; `allow` decides with this replica's set
//! alone and logs a warning at most every 10 s.
//!
//! `tollgate explain` (a request with a decision trace) checks without recording:
//! looking at a proof must not use it up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::ratelimit::{RedisStore, StoreError};

/// How a `jti` was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: remembered until the proof's window has passed.
    New,
    /// Seen before within its window: a replay.
    Replayed,
    /// The set is full of proofs still inside their windows: refuse rather than forget.
    Full,
}

/// The proofs seen, by SHA-256 of (key thumbprint, `jti`), with when each may be forgotten.
pub struct ReplayCache {
    seen: Mutex<Entries>,
    capacity: usize,
}

/// The entries, and when (unix seconds) expired ones were last swept out: a full set is
/// swept at most once a second, so a flood of proofs cannot make every insert a scan.
#[derive(Default)]
struct Entries {
    entries: HashMap<[u8; 32], i64>,
    last_sweep: i64,
}

/// Proofs remembered at once per replica (about 80 bytes each): at 60 s windows, about
/// 4,000 new DPoP proofs a second, sustained.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(DEFAULT_CAPACITY)
    }
}

/// The key a proof is remembered under: a `jti` is unique per client key.
pub fn key(jkt: &str, jti: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(jkt.as_bytes());
    h.update([0]);
    h.update(jti.as_bytes());
    h.finalize().into()
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: Mutex::new(Entries::default()),
            capacity,
        }
    }

    /// Records `key` until `forget_at` (unix seconds) unless it is already there.
    pub fn insert(&self, key: [u8; 32], forget_at: i64, now: i64) -> Seen {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = seen.entries.get(&key) {
            if *until >= now {
                return Seen::Replayed;
            }
        }
        if seen.entries.len() >= self.capacity {
            if seen.last_sweep == now {
                return Seen::Full;
            }
            seen.last_sweep = now;
            seen.entries.retain(|_, until| *until >= now);
            if seen.entries.len() >= self.capacity {
                return Seen::Full;
            }
        }
        seen.entries.insert(key, forget_at);
        Seen::New
    }

    /// Whether `key` is remembered and still inside its window, without recording it.
    pub fn contains(&self, key: &[u8; 32], now: i64) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.entries.get(key).is_some_and(|until| *until >= now)
    }

    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `issuers[].dpop.replay.on_error`: what a replay check does when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// Refuse with 503 `service_unavailable` (the default: fail closed).
    #[default]
    Deny,
    /// Decide with this replica's own set, and warn.
    Allow,
}

impl OnStoreError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Deny => "deny",
            OnStoreError::Allow => "allow",
        }
    }
}

/// `issuers[].dpop.replay`: where an issuer's proofs are remembered.
#[derive(Clone, Default)]
pub struct ReplayStore {
    /// Marked in Redis too (every replica sharing it sees the proof); `None`: this
    /// replica's set only.
    pub redis: Option<Arc<RedisStore>>,
    pub on_error: OnStoreError,
}

impl std::fmt::Debug for ReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayStore")
            .field("redis", &self.redis.is_some())
            .field("on_error", &self.on_error)
            .finish()
    }
}

impl PartialEq for ReplayStore {
    fn eq(&self, other: &Self) -> bool {
        self.on_error == other.on_error
            && match (&self.redis, &other.redis) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for ReplayStore {}

/// A proof that passed every other check: its `jti` is all that is left to look at.
#[derive(Debug, Clone)]
pub struct Fresh {
    /// The issuer's name (for logs) and `iss` value (part of the Redis key).
    pub issuer: Arc<str>,
    pub iss: String,
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    /// `dpop.iat_window`, seconds.
    pub window: i64,
    /// The issuer's clock leeway, seconds: how far another replica's clock may be behind.
    pub skew: i64,
    pub store: ReplayStore,
}

impl Fresh {
    /// Until when (unix seconds) this replica remembers the proof: after that it could
    /// no longer pass the `iat` check.
    pub fn forget_at(&self) -> i64 {
        self.iat.saturating_add(self.window).saturating_add(1)
    }

    /// How long Redis keeps the mark (ms): until the proof could no longer pass the
    /// `iat` check on any replica, clocks up to `skew` behind included.
    pub fn ttl_ms(&self, now: i64) -> u64 {
        let secs = self
            .forget_at()
            .saturating_sub(now)
            .max(0)
            .saturating_add(self.skew.max(0))
            .max(1);
        (secs as u64).saturating_mul(1000)
    }

    /// `tollgate:dpop:` and 32 hex digits of SHA-256 over the issuer, the key
    /// thumbprint and the `jti`: never request material, at most 46 bytes.
    pub fn redis_key(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.iss, &self.jkt, &self.jti] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let d = h.finalize();
        let mut out = String::with_capacity(46);
        out.push_str("tollgate:dpop:");
        for b in &d[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Whether the check has to wait for Redis.
    pub fn needs_redis(&self) -> bool {
        self.store.redis.is_some()
    }
}

/// Whether the check records the proof or only looks (explain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Record,
    Dry,
}

fn replayed() -> GatewayError {
    GatewayError::Unauthorized {
        reason: crate::error::DenyReason::DpopReplayed,
        description:
            "DPoP proof replayed (its jti was used before); make a new proof for every request"
                .into(),
    }
}

fn full(issuer: &str) -> GatewayError {
    tracing::warn!(
        issuer,
        "DPoP replay cache full; refusing proofs until entries expire"
    );
    GatewayError::ServiceUnavailable(
        "too many DPoP proofs at once to check for replays; retry shortly",
    )
}

/// This replica's part of the check: `Ok(Seen::New)` or `Ok(Seen::Full)` to go on with,
/// an error for a replay.
fn local(
    cache: &ReplayCache,
    f: &Fresh,
    now: i64,
    mode: Mode,
    note: &mut dyn FnMut(String),
) -> Result<Seen, GatewayError> {
    let k = key(&f.jkt, &f.jti);
    let seen = match mode {
        Mode::Record => cache.insert(k, f.forget_at(), now),
        Mode::Dry if cache.contains(&k, now) => Seen::Replayed,
        Mode::Dry => Seen::New,
    };
    if seen == Seen::Replayed {
        note("dpop: jti seen before by this replica: a replayed proof".into());
        return Err(replayed());
    }
    Ok(seen)
}

/// The replay check of a proof whose issuer keeps its proofs on this replica only
/// (`!f.needs_redis()`): decided without waiting.
pub fn check_local(
    cache: &ReplayCache,
    f: &Fresh,
    now: i64,
    mode: Mode,
    note: &mut dyn FnMut(String),
) -> Result<(), GatewayError> {
    match local(cache, f, now, mode, note)? {
        Seen::Full => Err(full(&f.issuer)),
        _ => {
            note(match mode {
                Mode::Record => {
                    "dpop: jti not seen before (remembered for the proof's window)".into()
                }
                Mode::Dry => {
                    "dpop: jti not seen before (dry check: explain does not use the proof up)"
                        .into()
                }
            });
            Ok(())
        }
    }
}

/// The replay check: this replica's set, then Redis when the issuer uses it (see the
/// module docs for `on_error`).
pub async fn check(
    cache: &ReplayCache,
    f: &Fresh,
    now: i64,
    mode: Mode,
    note: &mut (dyn FnMut(String) + Send),
) -> Result<(), GatewayError> {
    let Some(redis) = &f.store.redis else {
        return check_local(cache, f, now, mode, note);
    };
    // A replay at this replica is refused without asking Redis.
    let here = local(cache, f, now, mode, note)?;
    let k = f.redis_key();
    let asked = match mode {
        Mode::Record => redis.set_once(&k, f.ttl_ms(now)).await,
        Mode::Dry => redis.exists(&k).await.map(|exists| !exists),
    };
    match asked {
        Ok(true) => {
            note(match mode {
                Mode::Record => format!(
                    "dpop: jti not seen before by any replica (marked in Redis for {}s)",
                    f.ttl_ms(now) / 1000
                ),
                Mode::Dry => {
                    "dpop: jti not seen before by any replica (dry check in Redis: explain does not use the proof up)"
                        .into()
                }
            });
            Ok(())
        }
        Ok(false) => {
            note("dpop: jti seen before by another replica (Redis): a replayed proof".into());
            Err(replayed())
        }
        Err(e) => unavailable(f, here, e, mode, note),
    }
}

fn unavailable(
    f: &Fresh,
    here: Seen,
    e: StoreError,
    mode: Mode,
    note: &mut (dyn FnMut(String) + Send),
) -> Result<(), GatewayError> {
    let redis = f.store.redis.as_ref();
    match f.store.on_error {
        OnStoreError::Deny => {
            note(format!(
                "dpop: replay store unavailable ({}): refused (dpop.replay.on_error: deny)",
                e.kind()
            ));
            if mode == Mode::Record {
                if let Some(r) = redis {
                    r.warn_replay(
                        &f.issuer,
                        &e,
                        "refusing DPoP proofs with 503 (on_error: deny)",
                    );
                }
            }
            Err(GatewayError::ReplayStoreUnavailable {
                issuer: f.issuer.clone(),
            })
        }
        OnStoreError::Allow => {
            if mode == Mode::Record {
                if let Some(r) = redis {
                    r.warn_replay(
                        &f.issuer,
                        &e,
                        "checking DPoP proofs against this replica's own cache (on_error: allow)",
                    );
                }
            }
            if here == Seen::Full {
                return Err(full(&f.issuer));
            }
            note(format!(
                "dpop: replay store unavailable ({}): jti not seen before by this replica, accepted (dpop.replay.on_error: allow)",
                e.kind()
            ));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: a jti is accepted once within its window, again after it; a full set
    // forgets expired entries first and refuses only when every entry is still live.
    #[test]
    fn once_per_window_and_bounded() {
        let c = ReplayCache::new(2);
        let (a, b, d) = (key("k", "a"), key("k", "b"), key("k", "d"));
        assert_ne!(key("k", "a"), key("k2", "a"));
        assert_eq!(c.insert(a, 100, 10), Seen::New);
        assert_eq!(c.insert(a, 100, 50), Seen::Replayed);
        assert_eq!(c.insert(b, 20, 10), Seen::New);
        assert_eq!(c.insert(d, 100, 15), Seen::Full);
        assert_eq!(
            c.insert(d, 100, 30),
            Seen::New,
            "b expired and was forgotten"
        );
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.insert(key("k", "e"), 100, 30),
            Seen::Full,
            "swept at most once a second"
        );
        assert_eq!(c.insert(a, 200, 60), Seen::Replayed);
        assert_eq!(c.insert(a, 200, 101), Seen::New, "both windows passed");
    }

    fn fresh(iat: i64) -> Fresh {
        Fresh {
            issuer: "corp".into(),
            iss: "https://idp".into(),
            jkt: "thumb".into(),
            jti: "jti-1".into(),
            iat,
            window: 60,
            skew: 30,
            store: ReplayStore::default(),
        }
    }

    // Behaviour: the Redis mark lives until the proof could no longer pass the iat check
    // on any replica (clock skew included); its key is a digest, never the jti or key.
    #[test]
    fn redis_mark_key_and_expiry() {
        let f = fresh(1000);
        assert_eq!(f.ttl_ms(1000), (61 + 30) * 1000);
        assert_eq!(f.ttl_ms(1050), (11 + 30) * 1000);
        assert_eq!(f.ttl_ms(5000), 30 * 1000, "never below the skew");
        let k = f.redis_key();
        assert_eq!(k.len(), 46);
        assert!(k.starts_with("tollgate:dpop:"));
        assert!(!k.contains("jti-1") && !k.contains("thumb"));
        let mut other = fresh(1000);
        other.iss = "https://other".into();
        assert_ne!(other.redis_key(), k, "issuers do not share jtis");
    }

    // Behaviour: a dry check (explain) looks without recording; a real one records.
    #[test]
    fn dry_checks_do_not_use_a_proof_up() {
        let c = ReplayCache::new(10);
        let f = fresh(1000);
        let mut lines = Vec::new();
        for _ in 0..2 {
            check_local(&c, &f, 1010, Mode::Dry, &mut |l| lines.push(l)).unwrap();
        }
        assert!(c.is_empty());
        assert!(lines[0].contains("dry check"), "{lines:?}");
        check_local(&c, &f, 1010, Mode::Record, &mut |_| {}).unwrap();
        let e = check_local(&c, &f, 1011, Mode::Dry, &mut |_| {}).unwrap_err();
        assert_eq!(
            e.deny_reason(),
            Some(crate::error::DenyReason::DpopReplayed)
        );
        assert!(check_local(&c, &f, 1011, Mode::Record, &mut |_| {}).is_err());
    }
}
