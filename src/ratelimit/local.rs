//! The in-process store (`store: local`, and the stand-in for an unreachable Redis):
//! counters for one replica, consulted by the rate-limit step after authorisation.
//!
//! # Layout
//! Keys (limit fingerprint + [`RateKey`]) are spread over up to 64 shards, each a
//! `HashMap` behind its own mutex. A decision locks one shard for a few hundred
//! nanoseconds: read, decide, count, unlock. Because the check and the count happen in
//! one critical section, concurrent callers can never both take the last unit.
//!
//! # Memory
//! An entry is 232 bytes plus the hash map's spare room, whatever the key's value was
//! (the key is a digest). Two mechanisms bound the total:
//! - **Expiry**: an entry records when its last counted request stops counting; entries
//!   past that are dropped by a sweep that each shard runs at most once per second of
//!   traffic it sees (amortised, no background task), and by [`LocalStore::sweep`],
//!   which a caller may run on a timer.
//! - **Cap** (`max_keys`, default [`DEFAULT_MAX_KEYS`], ~27 MB when full): a shard that
//!   is full when a new key arrives first drops its expired entries; if it is still full it
//!   evicts the least recently seen eighth of its entries (nginx `limit_req_zone` and
//!   HAProxy stick tables do the same). An evicted key that comes back starts a fresh
//!   window, so under a flood of distinct keys the limit can be more generous for the
//!   keys pushed out, but memory never grows past the cap and no new key is ever
//!   refused for lack of room (refusing would let a flood lock out every new client).
//!   [`LocalStore::evictions`] counts evictions; a non-zero rate means `max_keys` is too
//!   small for the traffic (or someone is flooding keys).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::decision::{Decision, Source};
use super::key::RateKey;
use super::{now_ms, Limit, Window, SLIDING_BUCKETS};

/// The default cap on keys held by one local store.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

const RING: usize = SLIDING_BUCKETS as usize + 1;
const MAX_SHARDS: usize = 64;
const SWEEP_EVERY_MS: u64 = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct MapKey {
    limit: u64,
    key: RateKey,
}

struct Entry {
    state: State,
    /// Last time the key was decided on (for eviction at the cap).
    last_seen: u64,
    /// When nothing counted here counts any more (the entry can go).
    expires: u64,
}

enum State {
    Fixed {
        window: u64,
        count: u64,
    },
    /// Bucket `b` lives in slot `b % RING`; valid slots are `newest - RING + 1 ..= newest`.
    /// `held` is the sum of all `counts` and bit `s` of `live` says whether slot `s` is
    /// not empty, both kept as buckets are counted and cleared, so a decision neither sums
    /// nor scans the 21 buckets.
    Sliding {
        newest: u64,
        held: u32,
        live: u32,
        slots: [Slot; RING],
    },
}

/// One sliding bucket: its count and when the latest request counted in it arrived, in
/// ms from the bucket's start (below `g`, which fits 32 bits for any `per` up to
/// [`super::MAX_PER`]); the bucket stops counting `per` after that request. Side by
/// side, so a decision reads one cache line for both.
#[derive(Clone, Copy, Default)]
struct Slot {
    count: u32,
    last: u32,
}

/// A store's raw answer, before it becomes a [`Decision`].
pub(crate) struct Raw {
    pub allowed: bool,
    pub counted: u64,
    pub reset_ms: u64,
    pub retry_ms: u64,
}

impl State {
    fn new(limit: &Limit, now: u64) -> State {
        match limit.window() {
            Window::Fixed => State::Fixed {
                window: now / limit.per_ms(),
                count: 0,
            },
            Window::Sliding => State::Sliding {
                newest: now / limit.granularity_ms(),
                held: 0,
                live: 0,
                slots: [Slot::default(); RING],
            },
        }
    }

    /// Decides one request at `now`; counts it if admitted and `commit`. Returns the
    /// answer and when the entry stops holding anything.
    fn decide(&mut self, limit: &Limit, now: u64, commit: bool) -> (Raw, u64) {
        match self {
            State::Fixed { window, count } => {
                let per = limit.per_ms();
                let w = now / per;
                if w > *window {
                    *window = w;
                    *count = 0;
                }
                let end = (*window + 1) * per;
                let reset = end.saturating_sub(now).max(1);
                let allowed = *count < limit.limit();
                if allowed && commit {
                    *count += 1;
                }
                let raw = Raw {
                    allowed,
                    counted: *count,
                    reset_ms: if *count == 0 { 0 } else { reset },
                    retry_ms: if allowed { 0 } else { reset },
                };
                (raw, if *count == 0 { now } else { end })
            }
            State::Sliding {
                newest,
                held,
                live,
                slots,
            } => {
                let g = limit.granularity_ms();
                let per = limit.per_ms();
                // Empties slot `s`, keeping `held` and `live` in step.
                let clear = |s: usize, held: &mut u32, live: &mut u32, slots: &mut [Slot; RING]| {
                    *held -= slots[s].count;
                    slots[s].count = 0;
                    *live &= !(1 << s);
                };
                // A clock that went back counts in the newest bucket (never forgets counts).
                let c = (now / g).max(*newest);
                if c > *newest {
                    if c - *newest >= RING as u64 {
                        *slots = [Slot::default(); RING];
                        *held = 0;
                        *live = 0;
                    } else {
                        for b in *newest + 1..=c {
                            clear((b % RING as u64) as usize, held, live, slots);
                        }
                    }
                    *newest = c;
                }
                // Bucket b counts while its latest request does: b·g + last + per > now.
                // Every bucket from lo + 1 on does (its start is past now - per); every
                // one before lo has stopped (its end is not); bucket lo itself is decided
                // by its latest request's time.
                let lo = now.saturating_sub(per) / g;
                let oldest = c + 1 - (RING as u64).min(c + 1);
                let mut first = lo.max(oldest);
                // The ring holds buckets oldest..=c; those before `first` no longer count
                // (`per` is at most 20 buckets, so at most one of them) and are emptied
                // now: time never goes back for an entry (`LocalStore::decide_at`), so
                // they never count again. Then `held` is the requests still counting.
                for b in oldest..first {
                    clear((b % RING as u64) as usize, held, live, slots);
                }
                // `lo` < `c` (a bucket is never longer than `per`), so a bucket is left.
                if first == lo {
                    let s = (lo % RING as u64) as usize;
                    if *live & (1 << s) != 0 && lo * g + u64::from(slots[s].last) + per <= now {
                        clear(s, held, live, slots);
                        first += 1;
                    }
                }
                // Buckets first..=c are the n slots from `start` on, wrapping: one
                // division here instead of one per bucket and pass (a 64-bit division
                // costs tens of cycles; this ran ~60 of them per request).
                let n = (c - first + 1) as usize;
                let start = (first % RING as u64) as usize;
                let slot = |i: usize| {
                    let s = start + i;
                    if s >= RING {
                        s - RING
                    } else {
                        s
                    }
                };
                let total = u64::from(*held);
                let allowed = total < limit.limit();
                let mut counted = total;
                if allowed && commit {
                    // `held` < `limit` <= u32::MAX: neither it nor a bucket can overflow.
                    // A clock that went back counts as the start of the newest bucket.
                    let newest = &mut slots[slot(n - 1)];
                    let at = now.saturating_sub(c * g) as u32;
                    newest.last = if newest.count == 0 {
                        at
                    } else {
                        newest.last.max(at)
                    };
                    newest.count += 1;
                    *live |= 1 << slot(n - 1);
                    *held += 1;
                    counted += 1;
                }
                debug_assert_eq!(
                    u64::from(*held),
                    slots.iter().map(|s| u64::from(s.count)).sum::<u64>()
                );
                debug_assert!((0..RING).all(|s| (slots[s].count > 0) == (*live & (1 << s) != 0)));
                // When the i-th bucket from `first` stops counting.
                let stops =
                    |i: usize| (first + i as u64) * g + u64::from(slots[slot(i)].last) + per;
                // The non-empty buckets as bits 0..n from `first` on: the oldest and the
                // newest of them without walking the ring (a hot key's window is mostly
                // empty buckets at its old end).
                let ordered = ((*live >> start) | (*live << (RING - start))) & ((1 << n) - 1);
                let (reset, expires) = if ordered == 0 {
                    (0, now)
                } else {
                    let oldest_live = ordered.trailing_zeros() as usize;
                    let newest_live = 31 - ordered.leading_zeros() as usize;
                    (stops(oldest_live) - now, stops(newest_live))
                };
                let live = || (0..n).filter(|&i| slots[slot(i)].count > 0);
                let retry = if allowed {
                    0
                } else {
                    // The oldest buckets that must stop counting for one more to fit.
                    let need = counted + 1 - limit.limit();
                    let mut dropped = 0;
                    live()
                        .find(|&i| {
                            dropped += u64::from(slots[slot(i)].count);
                            dropped >= need
                        })
                        .map_or(reset, |i| stops(i) - now)
                };
                let raw = Raw {
                    allowed,
                    counted,
                    reset_ms: reset,
                    retry_ms: retry,
                };
                (raw, expires)
            }
        }
    }
}

/// Keys are SHA-256 digests of client-chosen values: hashed again with foldhash under a
/// per-process random seed (as the verified-token cache does), so nobody can aim many
/// keys at one bucket, at a fraction of SipHash's cost.
type Map = HashMap<MapKey, Entry, foldhash::fast::RandomState>;

struct Shard {
    map: Map,
    next_sweep: u64,
}

impl Shard {
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| e.expires > now);
        if self.map.capacity() > 64 && self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to(self.map.len() * 2);
        }
        before - self.map.len()
    }

    /// Evicts the least recently seen `n` entries.
    fn evict_oldest(&mut self, n: usize) -> usize {
        let n = n.min(self.map.len());
        if n == 0 {
            return 0;
        }
        let mut seen: Vec<u64> = self.map.values().map(|e| e.last_seen).collect();
        let threshold = *seen.select_nth_unstable(n - 1).1;
        let mut removed = 0;
        self.map.retain(|_, e| {
            if removed < n && e.last_seen <= threshold {
                removed += 1;
                false
            } else {
                true
            }
        });
        removed
    }
}

/// In-process counters for every local limit (see the module docs). Keep one per
/// process and carry it across reloads, so a reload does not reset anyone's counters.
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    evictions: AtomicU64,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore::new(DEFAULT_MAX_KEYS)
    }
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("shards", &self.shards.len())
            .field("max_keys", &self.max_keys())
            .finish()
    }
}

impl LocalStore {
    /// A store holding at most `max_keys` keys (at least 1).
    pub fn new(max_keys: usize) -> LocalStore {
        let max_keys = max_keys.max(1);
        // A power of two, so a key finds its shard with a mask, not a division.
        let n = 1 << (max_keys / 256).clamp(1, MAX_SHARDS).ilog2();
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    map: Map::default(),
                    next_sweep: 0,
                })
            })
            .collect();
        LocalStore {
            shards,
            shard_cap: max_keys / n,
            evictions: AtomicU64::new(0),
        }
    }

    /// Decides and counts one request now.
    pub fn check(&self, limit: &Limit, key: &RateKey) -> Decision {
        self.check_at(limit, key, now_ms(), true, Source::Local)
    }

    /// Whether one more request would be admitted now, without counting it.
    pub fn peek(&self, limit: &Limit, key: &RateKey) -> Decision {
        self.check_at(limit, key, now_ms(), false, Source::Local)
    }

    /// Decides one request at `now_ms` (Unix milliseconds), counting it if admitted and
    /// `commit`; `source` is recorded in the decision.
    pub fn check_at(
        &self,
        limit: &Limit,
        key: &RateKey,
        now_ms: u64,
        commit: bool,
        source: Source,
    ) -> Decision {
        let raw = self.decide_at(limit, key, now_ms, commit);
        Decision::from_counts(
            limit,
            raw.allowed,
            raw.counted,
            raw.reset_ms,
            raw.retry_ms,
            source,
        )
    }

    /// [`LocalStore::check_at`]'s numbers, before they become a [`Decision`]: what the
    /// admitted requests of a local-only route need (their headers come straight from
    /// the limit, without a `Decision`'s copies of its name and policy).
    pub(crate) fn decide_at(&self, limit: &Limit, key: &RateKey, now_ms: u64, commit: bool) -> Raw {
        let mk = MapKey {
            limit: limit.fingerprint(),
            key: *key,
        };
        let idx = (key.low_u64() ^ mk.limit) as usize & (self.shards.len() - 1);
        let mut shard = self.lock(idx);
        if now_ms >= shard.next_sweep {
            shard.sweep(now_ms);
            shard.next_sweep = now_ms + SWEEP_EVERY_MS;
        }
        let raw = match shard.map.get_mut(&mk) {
            Some(e) => {
                // Time never goes back for an entry: a caller that read the clock just
                // before another one but locked the shard after it is decided at the
                // later instant, so no bucket is ever forgotten.
                let now = now_ms.max(e.last_seen);
                let (raw, expires) = e.state.decide(limit, now, commit);
                e.last_seen = now;
                e.expires = expires;
                raw
            }
            None => {
                let mut state = State::new(limit, now_ms);
                let (raw, expires) = state.decide(limit, now_ms, commit);
                if raw.counted > 0 {
                    if shard.map.len() >= self.shard_cap {
                        self.make_room(&mut shard, now_ms);
                    }
                    shard.map.insert(
                        mk,
                        Entry {
                            state,
                            last_seen: now_ms,
                            expires,
                        },
                    );
                }
                raw
            }
        };
        drop(shard);
        raw
    }

    fn make_room(&self, shard: &mut Shard, now_ms: u64) {
        shard.sweep(now_ms);
        shard.next_sweep = now_ms + SWEEP_EVERY_MS;
        if shard.map.len() >= self.shard_cap {
            let n = (self.shard_cap / 8).max(1);
            let evicted = shard.evict_oldest(n);
            self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        }
    }

    /// Drops every entry that no longer holds a counted request at `now_ms`; returns how
    /// many went. Shards also do this themselves as traffic passes.
    pub fn sweep(&self, now_ms: u64) -> usize {
        (0..self.shards.len())
            .map(|i| self.lock(i).sweep(now_ms))
            .sum()
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        (0..self.shards.len()).map(|i| self.lock(i).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap on keys.
    pub fn max_keys(&self) -> usize {
        self.shard_cap * self.shards.len()
    }

    /// Keys evicted at the cap so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave an entry half-written in a way
        // that over-admits; keep serving.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{KeySpec, LimitSpec, OnError, StoreKind};
    use std::time::Duration;

    fn limit(n: u64, per_s: u64, window: Window) -> Limit {
        Limit::new(LimitSpec {
            name: "t".into(),
            key: KeySpec::Client,
            limit: n,
            per: Duration::from_secs(per_s),
            window,
            store: StoreKind::Local,
            on_error: OnError::Allow,
        })
        .unwrap()
    }

    fn key(s: &str) -> RateKey {
        RateKey::from_parts("client", Some(s.as_bytes()))
    }

    const T0: u64 = 19_676 * 86_400_000; // 2023-11-15T00:00:00Z: a day, minute and bucket boundary

    fn at(s: &LocalStore, l: &Limit, k: &RateKey, now: u64) -> Decision {
        s.check_at(l, k, now, true, Source::Local)
    }

    // Fixed windows: `limit` per window aligned to the epoch, reset at the boundary.
    #[test]
    fn fixed_window_is_aligned_to_the_epoch() {
        let s = LocalStore::new(1000);
        let l = limit(3, 60, Window::Fixed);
        let k = key("a");
        let start = T0 + 59_000; // one second before a minute boundary
        for i in 0..3 {
            let d = at(&s, &l, &k, start + i);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
            assert_eq!(d.reset, Duration::from_millis(1000 - i));
        }
        let d = at(&s, &l, &k, start + 500);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(500));
        assert_eq!(d.retry_after_secs(), Some(1));
        // The next window starts at the minute, whatever happened before.
        let d = at(&s, &l, &k, T0 + 60_000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset, Duration::from_secs(60));
        // A daily quota resets at 00:00 UTC.
        let day = limit(1, 86_400, Window::Fixed);
        let noon = 19_700 * 86_400_000 + 12 * 3_600_000;
        assert!(at(&s, &day, &k, noon).allowed);
        let d = at(&s, &day, &k, noon + 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(12 * 3_600_000 - 1));
        assert!(at(&s, &day, &k, 19_701 * 86_400_000).allowed);
    }

    // Sliding: never more than `limit` in any interval of `per`, capacity returns when
    // the oldest bucket's latest request stops counting, and the reported waits are
    // exact and never longer than `per`.
    #[test]
    fn sliding_window_never_exceeds_limit_in_any_interval() {
        let s = LocalStore::new(1000);
        let l = limit(10, 60, Window::Sliding); // buckets of 3 s
        let k = key("a");
        // 10 requests at the start of a bucket...
        for i in 0..10 {
            let d = at(&s, &l, &k, T0 + i);
            assert!(d.allowed);
            // `t`: the bucket stops counting `per` after its latest request, just now.
            assert_eq!(d.reset, Duration::from_secs(60));
        }
        // ...keep counting until the latest of them + per = T0 + 60 009.
        let d = at(&s, &l, &k, T0 + 30_000);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(30_009));
        assert_eq!(d.remaining, 0);
        assert!(!at(&s, &l, &k, T0 + 60_008).allowed);
        let d = at(&s, &l, &k, T0 + 60_009);
        assert!(
            d.allowed,
            "capacity is back once the bucket stopped counting"
        );
        assert_eq!(d.remaining, 9);
        // A bucket's latest request holds it: requests at both ends of one bucket count
        // until the later one's `per` has passed, never less.
        let k = key("b");
        let start = T0 + 120_000; // a bucket boundary
        assert!(at(&s, &l, &k, start).allowed);
        for i in 0..9 {
            assert!(at(&s, &l, &k, start + 2_990 + i).allowed);
        }
        let d = at(&s, &l, &k, start + 2_999);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(60_000 - 1));
        assert_eq!(d.retry_after_secs(), Some(60), "never more than per");
        assert!(!at(&s, &l, &k, start + 62_997).allowed);
        assert!(at(&s, &l, &k, start + 62_998).allowed);
    }

    // A brute-force check of the SPEC sentence: random arrivals, and every admitted
    // request's preceding `per` holds at most `limit` admissions.
    #[test]
    fn sliding_window_holds_under_random_arrivals() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (n, per_s) in [(1, 1), (5, 2), (10, 60), (7, 3)] {
            let s = LocalStore::new(1000);
            let l = limit(n, per_s, Window::Sliding);
            let k = key("r");
            let per = per_s * 1000;
            let mut now = T0 + rng.gen_range(0..per);
            let mut admitted: Vec<u64> = Vec::new();
            let mut admit = |now: u64| {
                admitted.push(now);
                let in_window = admitted.iter().filter(|&&t| t + per > now).count();
                assert!(in_window as u64 <= n, "{in_window} > {n} within {per} ms");
            };
            for _ in 0..5000 {
                now += rng.gen_range(0..per / 5 + 1);
                let d = at(&s, &l, &k, now);
                if d.allowed {
                    admit(now);
                } else {
                    // The promised wait is exact: refused a millisecond before, admitted at it.
                    let retry = d.retry_after.as_millis() as u64;
                    assert!(retry <= per && d.reset.as_millis() as u64 <= per);
                    if retry > 1 {
                        assert!(!at(&s, &l, &k, now + retry - 1).allowed);
                    }
                    now += retry;
                    assert!(at(&s, &l, &k, now).allowed);
                    admit(now);
                }
            }
            assert!(admitted.len() as u64 > n, "the window slid at all");
        }
    }

    fn at_peek(s: &LocalStore, l: &Limit, k: &RateKey, now: u64) -> Decision {
        s.check_at(l, k, now, false, Source::Local)
    }

    // A peek never counts, and a refused request is not counted either.
    #[test]
    fn peeks_and_refusals_do_not_count() {
        let s = LocalStore::new(1000);
        let l = limit(2, 60, Window::Sliding);
        let k = key("p");
        for _ in 0..5 {
            assert!(at_peek(&s, &l, &k, T0).allowed);
        }
        assert!(s.is_empty(), "a peek creates no entry");
        assert!(at(&s, &l, &k, T0).allowed);
        assert!(at(&s, &l, &k, T0 + 1).allowed);
        for i in 0..5 {
            assert!(!at(&s, &l, &k, T0 + 10 + i).allowed);
        }
        // Both admitted requests sit in the first bucket: back `per` after the later one.
        assert!(!at(&s, &l, &k, T0 + 60_000).allowed);
        assert!(at(&s, &l, &k, T0 + 60_001).allowed);
        assert!(at(&s, &l, &k, T0 + 60_001).allowed);
    }

    // Limits and keys are counted apart.
    #[test]
    fn limits_and_keys_are_independent() {
        let s = LocalStore::new(1000);
        let a = limit(1, 60, Window::Sliding);
        let mut spec_b = LimitSpec {
            name: "other".into(),
            key: KeySpec::Client,
            limit: 1,
            per: Duration::from_secs(60),
            window: Window::Sliding,
            store: StoreKind::Local,
            on_error: OnError::Allow,
        };
        let b = Limit::new(spec_b.clone()).unwrap();
        assert!(at(&s, &a, &key("x"), T0).allowed);
        assert!(!at(&s, &a, &key("x"), T0).allowed);
        assert!(at(&s, &a, &key("y"), T0).allowed);
        assert!(at(&s, &b, &key("x"), T0).allowed);
        // The same limit recompiled with another budget keeps its counters.
        spec_b.limit = 2;
        let b2 = Limit::new(spec_b).unwrap();
        let d = at(&s, &b2, &key("x"), T0);
        assert!(d.allowed && d.remaining == 0);
    }

    // Idle keys go away once their requests stopped counting.
    #[test]
    fn idle_keys_expire() {
        let s = LocalStore::new(10_000);
        let l = limit(5, 2, Window::Sliding);
        let f = limit(5, 2, Window::Fixed);
        for i in 0..500 {
            at(&s, &l, &key(&format!("k{i}")), T0);
            at(&s, &f, &key(&format!("k{i}")), T0);
        }
        assert_eq!(s.len(), 1000);
        assert_eq!(s.sweep(T0 + 1_999), 0, "nothing expired yet");
        // Sliding entries count until their latest request + per, fixed ones until the
        // window's end: both T0 + 2000 here.
        assert_eq!(s.sweep(T0 + 2_000), 1000);
        assert!(s.is_empty());
        // The amortised sweep does it too, as traffic passes.
        for i in 0..500 {
            at(&s, &l, &key(&format!("k{i}")), T0);
        }
        for i in 0..2000 {
            at(&s, &l, &key(&format!("later{i}")), T0 + 10_000);
        }
        assert_eq!(s.len(), 2000);
        assert_eq!(s.evictions(), 0);
    }

    // A flood of distinct keys never grows the store past its cap, and the keys that
    // stay are the recently active ones.
    #[test]
    fn a_key_flood_is_capped() {
        let s = LocalStore::new(4096);
        let l = limit(1, 3600, Window::Sliding);
        let regular = key("regular");
        for i in 0..200_000u64 {
            let now = T0 + i / 10;
            if i % 1000 == 0 {
                // A regular client, active all along, stays limited: never evicted.
                let d = at(&s, &l, &regular, now);
                assert_eq!(d.allowed, i == 0, "at {i}");
            }
            at(&s, &l, &key(&format!("flood{i}")), now);
            assert!(s.len() <= s.max_keys());
        }
        assert!(s.max_keys() <= 4096);
        assert!(s.len() > 4096 / 2, "the cap is used, not cleared");
        assert!(s.evictions() >= 200_000 - 4096);
    }

    // The clock going back never forgets counted requests.
    #[test]
    fn clock_going_back_keeps_counts() {
        let s = LocalStore::new(1000);
        let l = limit(2, 60, Window::Sliding);
        let k = key("c");
        assert!(at(&s, &l, &k, T0 + 30_000).allowed);
        assert!(at(&s, &l, &k, T0 + 10_000).allowed);
        assert!(!at(&s, &l, &k, T0).allowed);
        let f = limit(1, 60, Window::Fixed);
        assert!(at(&s, &f, &k, T0 + 61_000).allowed);
        assert!(!at(&s, &f, &k, T0 + 1_000).allowed);
    }

    // The memory the module docs promise per key.
    #[test]
    fn an_entry_is_the_documented_size() {
        assert!(std::mem::size_of::<(MapKey, Entry)>() <= 232);
    }

    // Many threads taking the last units at once: exactly `limit` get through.
    #[test]
    fn concurrent_callers_never_over_admit() {
        use std::sync::Arc;
        let s = Arc::new(LocalStore::new(1000));
        for window in [Window::Sliding, Window::Fixed] {
            let l = Arc::new(limit(1000, 3600, window));
            let allowed = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (s, l, allowed) = (s.clone(), l.clone(), allowed.clone());
                    std::thread::spawn(move || {
                        for _ in 0..500 {
                            // One instant: the test must not straddle a window boundary.
                            if at(&s, &l, &key("shared"), T0 + 1).allowed {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(allowed.load(Ordering::Relaxed), 1000, "{window:?}");
        }
    }
}
