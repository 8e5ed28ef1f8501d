//! Step 7, DPoP replay detection: the `jti`s of the proofs accepted recently, so that a
//! proof is accepted once within its `iat` window (RFC 9449 section 11.1).
//!
//! Each replica keeps its own set in memory (bounded; it outlives reloads and is not
//! dropped by `POST /admin/caches/flush`, which would re-open the window for replays).
//! With `stores.redis`, an issuer's `dpop.replay_store: redis` marks each `jti` in Redis
//! too (`SET NX` with an expiry), so every replica sharing the store sees it.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

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
}
