//! The rate-limit step's entry point: picks the store for each limit, applies
//! `on_error` when Redis cannot decide, and folds several limits into one verdict
//! for the response (429 with the refusing limit, 503, or the headers of the decision
//! closest to exhaustion).

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;

use super::decision::{Decision, RateHeaders, Source};
use super::key::{KeyInput, RateKey};
use super::local::LocalStore;
use super::redis::{RedisStore, StoreError};
use super::{now_ms, Limit, OnError, StoreKind};

/// The stores limits are counted in. Cheap to build per config generation from the
/// long-lived stores (keep the [`LocalStore`] for the process, the [`RedisStore`] while
/// `stores.redis` is unchanged), so a reload keeps every counter.
#[derive(Clone, Debug)]
pub struct Limiter {
    local: Arc<LocalStore>,
    redis: Option<Arc<RedisStore>>,
}

/// One limit's outcome for one request, `on_error` applied.
#[derive(Debug)]
pub enum Outcome {
    /// Admitted (by the limit's store, or by the local fallback: see [`Decision::source`]).
    Allowed(Decision),
    /// Over the limit: 429 `rate_limited`.
    Limited(Decision),
    /// The store could not decide and the limit says `on_error: deny`: 503.
    Unavailable(Unavailable),
}

/// A refusal because the store could not decide (`on_error: deny`).
#[derive(Debug)]
pub struct Unavailable {
    /// The limit that could not be decided.
    pub limit: Arc<str>,
    pub error: StoreError,
}

impl Unavailable {
    /// `Retry-After` of the 503: the store is retried (probed) well within a second.
    pub const RETRY_AFTER: Duration = Duration::from_secs(1);

    pub fn retry_after_header(&self) -> HeaderValue {
        HeaderValue::from(Self::RETRY_AFTER.as_secs())
    }
}

/// Several limits' outcome for one request.
#[derive(Debug)]
pub enum Verdict {
    /// Every limit admitted the request; the decision closest to exhaustion supplies the
    /// `RateLimit-Policy`/`RateLimit` headers (`None` when no limit applies).
    Allowed(Option<Decision>),
    /// A limit refused: 429 naming `Decision::name`, with its headers and `Retry-After`.
    Limited(Decision),
    /// A limit's store failed with `on_error: deny`: 503 with `Retry-After`.
    Unavailable(Unavailable),
}

/// [`Limiter::decide_all_local`]'s answer.
#[derive(Debug)]
pub enum LocalVerdict {
    /// Every limit admitted the request: the headers of the one closest to exhaustion
    /// (`None` when no limit applies).
    Allowed(Option<RateHeaders>),
    /// A limit refused: 429 naming `Decision::name`.
    Limited(Decision),
}

impl Limiter {
    pub fn new(local: Arc<LocalStore>, redis: Option<Arc<RedisStore>>) -> Limiter {
        Limiter { local, redis }
    }

    pub fn local(&self) -> &Arc<LocalStore> {
        &self.local
    }

    pub fn redis(&self) -> Option<&Arc<RedisStore>> {
        self.redis.as_ref()
    }

    /// Decides and counts one request in the limit's own store; no fallback.
    pub async fn check(&self, limit: &Limit, key: &RateKey) -> Result<Decision, StoreError> {
        self.raw(limit, key, true).await
    }

    /// Whether one more request would be admitted, without counting; no fallback.
    pub async fn peek(&self, limit: &Limit, key: &RateKey) -> Result<Decision, StoreError> {
        self.raw(limit, key, false).await
    }

    /// [`Limiter::check`] with the limit's `on_error` applied: on a store failure,
    /// `allow` decides with the local store (counted there, [`Source::LocalFallback`]),
    /// `deny` gives [`Outcome::Unavailable`]; either way the failure is warned about
    /// (rate-limited) and counted in [`RedisStore::errors`].
    pub async fn decide(&self, limit: &Limit, key: &RateKey) -> Outcome {
        self.decide_op(limit, key, true).await
    }

    /// [`Limiter::peek`] with `on_error` applied, for limits that count only failures
    /// (ask before the expensive work, [`Limiter::decide`] after a failure).
    pub async fn decide_peek(&self, limit: &Limit, key: &RateKey) -> Outcome {
        self.decide_op(limit, key, false).await
    }

    /// Every limit of a route, in order, for one request. Stops at the first refusal
    /// or unavailability: later limits do not count a request that is refused anyway
    /// (earlier ones have counted it: the request was admitted by them and refused by
    /// another, which is what a client sees).
    pub async fn decide_all<'l, I>(&self, limits: I, input: &KeyInput<'_>) -> Verdict
    where
        I: IntoIterator<Item = &'l Limit>,
    {
        let mut closest: Option<Decision> = None;
        for limit in limits {
            let key = limit.key().key(input);
            match self.decide(limit, &key).await {
                Outcome::Allowed(d) => {
                    if closest.as_ref().is_none_or(|c| d.is_closer_than(c)) {
                        closest = Some(d);
                    }
                }
                Outcome::Limited(d) => return Verdict::Limited(d),
                Outcome::Unavailable(u) => return Verdict::Unavailable(u),
            }
        }
        Verdict::Allowed(closest)
    }

    /// [`Limiter::decide_all`] decided on the spot, without a future, when every limit
    /// is `store: local` (the local store never waits: one short critical section per
    /// limit). `None`, with nothing counted, when a limit uses another store: ask
    /// [`Limiter::decide_all`] then.
    ///
    /// This is the hot path of a limited route, so an admitted request gets only what
    /// its response needs: the headers of the limit closest to exhaustion, built from
    /// that limit once (no [`Decision`] per limit, no copy of a name or policy that is
    /// not sent).
    pub fn decide_all_local<'l, I>(&self, limits: I, input: &KeyInput<'_>) -> Option<LocalVerdict>
    where
        I: IntoIterator<Item = &'l Limit>,
        I::IntoIter: Clone,
    {
        let limits = limits.into_iter();
        if !limits.clone().all(|l| l.store() == StoreKind::Local) {
            return None;
        }
        let now = now_ms();
        // (limit, remaining, reset): fewest remaining first, then the longest reset,
        // as `Decision::is_closer_than` orders admitted decisions.
        let mut closest: Option<(&Limit, u64, u64)> = None;
        for limit in limits {
            let key = limit.key().key(input);
            let raw = self.local.decide_at(limit, &key, now, true);
            if !raw.allowed {
                return Some(LocalVerdict::Limited(Decision::from_counts(
                    limit,
                    false,
                    raw.counted,
                    raw.reset_ms,
                    raw.retry_ms,
                    Source::Local,
                )));
            }
            let remaining = limit.limit().saturating_sub(raw.counted);
            let closer = |(_, r, t): (&Limit, u64, u64)| {
                remaining < r || (remaining == r && raw.reset_ms > t)
            };
            if closest.is_none_or(closer) {
                closest = Some((limit, remaining, raw.reset_ms));
            }
        }
        Some(LocalVerdict::Allowed(closest.map(
            |(l, remaining, reset)| l.rate_headers(remaining, reset),
        )))
    }

    async fn raw(
        &self,
        limit: &Limit,
        key: &RateKey,
        commit: bool,
    ) -> Result<Decision, StoreError> {
        match limit.store() {
            StoreKind::Local => {
                Ok(self
                    .local
                    .check_at(limit, key, now_ms(), commit, Source::Local))
            }
            StoreKind::Redis => match &self.redis {
                Some(r) if commit => r.check(limit, key).await,
                Some(r) => r.peek(limit, key).await,
                None => Err(StoreError::NotConfigured),
            },
        }
    }

    async fn decide_op(&self, limit: &Limit, key: &RateKey, commit: bool) -> Outcome {
        let decision = match self.raw(limit, key, commit).await {
            Ok(d) => d,
            Err(error) => {
                if let Some(r) = &self.redis {
                    r.warn(limit, &error, limit.on_error());
                }
                match limit.on_error() {
                    OnError::Allow => {
                        self.local
                            .check_at(limit, key, now_ms(), commit, Source::LocalFallback)
                    }
                    OnError::Deny => {
                        return Outcome::Unavailable(Unavailable {
                            limit: limit.name().clone(),
                            error,
                        })
                    }
                }
            }
        };
        if decision.allowed {
            Outcome::Allowed(decision)
        } else {
            Outcome::Limited(decision)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{KeySpec, LimitSpec, Window};
    use http::HeaderMap;

    fn limit(name: &str, n: u64, store: StoreKind, on_error: OnError) -> Limit {
        Limit::new(LimitSpec {
            name: name.into(),
            key: KeySpec::Ip,
            limit: n,
            per: Duration::from_secs(3600),
            window: Window::Sliding,
            store,
            on_error,
        })
        .unwrap()
    }

    // Several limits: the tightest supplies the headers, the first refusal stops the
    // rest from counting.
    #[tokio::test]
    async fn several_limits_fold_into_one_verdict() {
        let l = Limiter::new(Arc::new(LocalStore::new(1000)), None);
        let wide = limit("wide", 100, StoreKind::Local, OnError::Allow);
        let narrow = limit("narrow", 2, StoreKind::Local, OnError::Allow);
        let after = limit("after", 100, StoreKind::Local, OnError::Allow);
        let headers = HeaderMap::new();
        let input = KeyInput {
            client_ip: "192.0.2.1".parse().unwrap(),
            headers: &headers,
            client_id: None,
            subject: None,
            ip_key: None,
        };
        for left in [1, 0] {
            match l.decide_all([&wide, &narrow, &after], &input).await {
                Verdict::Allowed(Some(d)) => {
                    assert_eq!(&*d.name, "narrow");
                    assert_eq!(d.remaining, left);
                }
                v => panic!("{v:?}"),
            }
        }
        match l.decide_all([&wide, &narrow, &after], &input).await {
            Verdict::Limited(d) => {
                assert_eq!(&*d.name, "narrow");
                assert!(d.retry_after_secs().unwrap() >= 1);
            }
            v => panic!("{v:?}"),
        }
        // "after" counted the two admitted requests only.
        let d = l.peek(&after, &KeySpec::Ip.key(&input)).await.unwrap();
        assert_eq!(d.remaining, 98);
        assert!(matches!(
            l.decide_all(std::iter::empty(), &input).await,
            Verdict::Allowed(None)
        ));
    }

    // The sync path decides local limits exactly like decide_all, and declines (counting
    // nothing) as soon as one limit lives in another store.
    #[tokio::test]
    async fn local_limits_are_decided_without_a_future() {
        let l = Limiter::new(Arc::new(LocalStore::new(1000)), None);
        let wide = limit("wide", 100, StoreKind::Local, OnError::Allow);
        let narrow = limit("narrow", 1, StoreKind::Local, OnError::Allow);
        let shared = limit("shared", 100, StoreKind::Redis, OnError::Allow);
        let headers = HeaderMap::new();
        let input = KeyInput {
            client_ip: "192.0.2.9".parse().unwrap(),
            headers: &headers,
            client_id: None,
            subject: None,
            ip_key: None,
        };
        assert!(l.decide_all_local([&wide, &shared], &input).is_none());
        let key = KeySpec::Ip.key(&input);
        assert_eq!(l.peek(&wide, &key).await.unwrap().remaining, 100);
        // The tightest limit's headers; `t` is when its one request stops counting: an
        // hour after it (a second less if the test ran slowly), never more.
        let t = |h: &RateHeaders, prefix: &str| -> u64 {
            let s = h.state.to_str().unwrap();
            s.strip_prefix(prefix).unwrap().parse().unwrap()
        };
        match l.decide_all_local([&wide, &narrow], &input) {
            Some(LocalVerdict::Allowed(Some(h))) => {
                assert_eq!(h.policy, "\"narrow\";q=1;w=3600");
                assert!((3599..=3600).contains(&t(&h, "\"narrow\";r=0;t=")), "{h:?}");
            }
            v => panic!("{v:?}"),
        }
        match l.decide_all_local([&wide, &narrow], &input) {
            Some(LocalVerdict::Limited(d)) => assert_eq!(&*d.name, "narrow"),
            v => panic!("{v:?}"),
        }
        assert_eq!(l.peek(&wide, &key).await.unwrap().remaining, 98);
        // Alone, a limit is its own closest.
        match l.decide_all_local([&wide], &input) {
            Some(LocalVerdict::Allowed(Some(h))) => {
                assert_eq!(h.policy, "\"wide\";q=100;w=3600");
                assert!((3599..=3600).contains(&t(&h, "\"wide\";r=97;t=")), "{h:?}");
            }
            v => panic!("{v:?}"),
        }
        // The same number left: the longer wait wins, whichever comes first.
        let minute = Limit::new(LimitSpec {
            name: "minute".into(),
            key: KeySpec::Ip,
            limit: 5,
            per: Duration::from_secs(60),
            window: Window::Fixed,
            store: StoreKind::Local,
            on_error: OnError::Allow,
        })
        .unwrap();
        let hour = limit("hour", 5, StoreKind::Local, OnError::Allow);
        for (order, left) in [([&minute, &hour], 4), ([&hour, &minute], 3)] {
            match l.decide_all_local(order, &input) {
                Some(LocalVerdict::Allowed(Some(h))) => {
                    assert_eq!(h.policy, "\"hour\";q=5;w=3600");
                    let prefix = format!("\"hour\";r={left};t=");
                    assert!((3599..=3600).contains(&t(&h, &prefix)), "{h:?}");
                }
                v => panic!("{v:?}"),
            }
        }
        assert!(matches!(
            l.decide_all_local(std::iter::empty(), &input),
            Some(LocalVerdict::Allowed(None))
        ));
    }

    // A redis limit without stores.redis: deny refuses, allow falls back locally.
    #[tokio::test]
    async fn missing_store_applies_on_error() {
        let l = Limiter::new(Arc::new(LocalStore::new(1000)), None);
        let key = RateKey::from_parts("ip", Some(b"x"));
        let deny = limit("d", 1, StoreKind::Redis, OnError::Deny);
        match l.decide(&deny, &key).await {
            Outcome::Unavailable(u) => {
                assert!(matches!(u.error, StoreError::NotConfigured));
                assert_eq!(u.retry_after_header(), "1");
            }
            o => panic!("{o:?}"),
        }
        let allow = limit("a", 1, StoreKind::Redis, OnError::Allow);
        match l.decide(&allow, &key).await {
            Outcome::Allowed(d) => assert_eq!(d.source, Source::LocalFallback),
            o => panic!("{o:?}"),
        }
        assert!(matches!(l.decide(&allow, &key).await, Outcome::Limited(_)));
    }
}
