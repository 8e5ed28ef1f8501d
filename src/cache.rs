//! The one cache discipline (SPEC "Keys, introspection results and upstream tokens
//! share one cache discipline"): entries expire, and one fetch is in flight per key —
//! concurrent callers for the same key wait for it instead of fetching again.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub struct FlightCache<K, V> {
    entries: DashMap<K, (V, Instant)>,
    flights: DashMap<K, Arc<tokio::sync::Mutex<()>>>,
    max_entries: usize,
    /// When expired entries were last swept out (seconds since `born`): a key that is
    /// never looked up again must not stay until the cache is full.
    born: Instant,
    last_sweep: AtomicU64,
}

/// How often `insert` sweeps expired entries out.
const SWEEP_EVERY_SECS: u64 = 30;

impl<K: Hash + Eq + Clone, V: Clone> FlightCache<K, V> {
    pub fn new(max_entries: usize) -> Self {
        FlightCache {
            entries: DashMap::new(),
            flights: DashMap::new(),
            max_entries,
            born: Instant::now(),
            last_sweep: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let e = self.entries.get(key)?;
        if e.1 > Instant::now() {
            Some(e.0.clone())
        } else {
            drop(e);
            self.entries.remove_if(key, |_, v| v.1 <= Instant::now());
            None
        }
    }

    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let age = self.born.elapsed().as_secs();
        let last = self.last_sweep.load(Ordering::Relaxed);
        if age >= last + SWEEP_EVERY_SECS
            && self
                .last_sweep
                .compare_exchange(last, age, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let now = Instant::now();
            self.entries.retain(|_, v| v.1 > now);
        }
        if self.entries.len() >= self.max_entries {
            // Full: drop the expired entries, then if need be an arbitrary eighth (hash
            // order), so that the O(n) sweep runs at most once per max/8 inserts and a
            // full cache never turns into an empty one (a burst of misses).
            let now = Instant::now();
            self.entries.retain(|_, v| v.1 > now);
            let keep = self.max_entries - (self.max_entries / 8).max(1);
            let len = self.entries.len();
            if len > keep {
                let mut excess = len - keep;
                self.entries.retain(|_, _| {
                    if excess == 0 {
                        return true;
                    }
                    excess -= 1;
                    false
                });
            }
        }
        let now = Instant::now();
        let until = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(365 * 86_400));
        self.entries.insert(key, (value, until));
    }

    pub fn remove(&self, key: &K) {
        self.entries.remove(key);
    }

    /// Drops every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        let n = self.entries.len();
        self.entries.clear();
        n
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached value, or the result of `fetch` — run once for all concurrent callers
    /// of the same key. `fetch` returns the value and how long it may be cached
    /// (`Duration::ZERO`: not cached, e.g. an error).
    pub async fn get_or_fetch<F, Fut>(&self, key: &K, fetch: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (V, Duration)>,
    {
        if let Some(v) = self.get(key) {
            return v;
        }
        let lock = self.flights.entry(key.clone()).or_default().clone();
        let _guard = lock.lock().await;
        // Someone else may have fetched while we waited.
        if let Some(v) = self.get(key) {
            return v;
        }
        let (v, ttl) = fetch().await;
        self.insert(key.clone(), v.clone(), ttl);
        self.flights
            .remove_if(key, |_, l| Arc::strong_count(l) <= 2);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    // Behaviour: 40 concurrent callers of one key make one fetch.
    #[tokio::test]
    async fn single_flight() {
        let cache: Arc<FlightCache<String, u32>> = Arc::new(FlightCache::new(100));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(&"k".to_string(), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        (7, Duration::from_secs(60))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn expiry_and_bound() {
        let c: FlightCache<u32, u32> = FlightCache::new(2);
        c.insert(1, 1, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get(&1), None);
        c.insert(2, 2, Duration::from_secs(10));
        c.insert(3, 3, Duration::from_secs(10));
        c.insert(4, 4, Duration::from_secs(10));
        assert!(c.len() <= 2);
    }

    // Behaviour: expired entries that are never looked up again are swept out by a
    // later insert (at most every SWEEP_EVERY_SECS), long before the cache is full.
    #[test]
    fn expired_entries_are_swept() {
        let c: FlightCache<u32, u32> = FlightCache::new(1000);
        for i in 0..100 {
            c.insert(i, i, Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        // Pretend the last sweep was long ago.
        c.last_sweep.store(0, Ordering::Relaxed);
        let c = FlightCache {
            born: Instant::now() - Duration::from_secs(SWEEP_EVERY_SECS + 1),
            ..c
        };
        c.insert(1000, 1, Duration::from_secs(60));
        assert_eq!(c.len(), 1);
    }

    // Behaviour: a full cache of live entries sheds an eighth, never everything: the
    // newest entry and most of the others stay.
    #[test]
    fn full_cache_evicts_an_eighth() {
        let c: FlightCache<u32, u32> = FlightCache::new(64);
        for i in 0..64 {
            c.insert(i, i, Duration::from_secs(60));
        }
        assert_eq!(c.len(), 64);
        c.insert(1000, 1, Duration::from_secs(60));
        assert_eq!(c.len(), 64 - 8 + 1);
        assert_eq!(c.get(&1000), Some(1));
        for i in 0..10_000 {
            c.insert(2000 + i, i, Duration::from_secs(60));
            assert!(c.len() <= 64);
        }
        assert!(c.len() > 48);
    }
}
