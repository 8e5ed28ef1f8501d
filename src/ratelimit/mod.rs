//! Rate limits and quotas: the step after authorisation (SPEC "Rate limits and quotas").
//!
//! A request that passed authentication and authorisation is counted against every
//! limit its route lists; the first limit over its budget refuses it (429 `rate_limited`),
//! and the decision closest to exhaustion supplies the `RateLimit-Policy` / `RateLimit`
//! headers of the response. Denied requests and CORS preflights never reach this step,
//! so they are never counted.
//!
//! # What is counted: the key
//! Each [`Limit`] counts per value of its [`KeySpec`]: the authenticated client id, the
//! token subject, the client IP (IPv4-mapped IPv6 folded to IPv4) or the first value of
//! a request header. A request without a value for the key (no such header, an empty
//! one, no identity) is counted under one shared key per limit, so omitting the header
//! never escapes the limit. Whatever the value, only a 128-bit SHA-256 digest of it is
//! stored (see [`RateKey`]): no token, secret or header value is ever kept in memory or
//! written to Redis, and a key costs the same however long the value was.
//!
//! # Algorithms
//! Both stores run the same arithmetic on integer milliseconds of Unix time (the local
//! store on this host's clock, the Redis store on the Redis server's `TIME`, so every
//! replica agrees on windows whatever their clocks say).
//!
//! - `window: fixed` — one counter per window `[k·per, (k+1)·per)`, windows aligned to
//!   the Unix epoch in UTC: `per: 1d` resets at 00:00 UTC, `per: 1h` on the hour, `per: 7d`
//!   on Thursdays 00:00 UTC (the epoch was a Thursday). At most `limit` requests are
//!   admitted per window; `Retry-After` and the `RateLimit` `t` are the time to the end
//!   of the window. Use it for quotas.
//! - `window: sliding` — a bucketed sliding log: the window is cut into
//!   [`SLIDING_BUCKETS`] buckets of `g = ceil(per / 20)` ms aligned to the epoch, each
//!   holding the number of admitted requests that arrived in it and the arrival time of
//!   the latest of them. A bucket's requests keep counting until `per` after that latest
//!   arrival: each request for `per`, plus at most the rest of its bucket (less than
//!   `g`). A request is admitted when the requests still counting, plus itself, are at
//!   most `limit`. This is exact in the direction that matters: **in any interval of
//!   length `per`, at most `limit` requests are admitted** (every request admitted in
//!   the interval is still counting when the last one of them is decided). The price
//!   is that capacity can come back up to `g` (5% of `per`) later than an exact log
//!   would return it, for the earlier requests of a bucket; `Retry-After` and `t` are
//!   never more than `per`. Unlike a token bucket or GCRA (which admit a burst of `limit` and then
//!   keep refilling, so up to ~2×`limit` in one `per`) or the two-bucket weighted
//!   estimate (which assumes even traffic in the previous window and can admit up to
//!   ~2×`limit` when it was not), the SPEC's sentence "at most `limit` requests in any
//!   window of `per`" holds. `Retry-After` is exact: the time until enough of the oldest
//!   buckets have stopped counting for one more request to fit. `RateLimit` `t` is the
//!   time until the oldest bucket stops counting (when more quota becomes available,
//!   draft-ietf-httpapi-ratelimit-headers-10).
//!
//! A refused request is not counted (a client hammering a closed limit does not extend
//! its own wait), and [`Limiter::peek`] asks "would one more be admitted" without
//! counting, for limits that count failures only (the token service's failed
//! authentications: peek before the argon2 work, count with [`Limiter::check`] after a
//! failure).
//!
//! # Stores
//! - [`LocalStore`] (`store: local`): this replica only; sharded mutex-protected maps, so
//!   a decision is one short critical section and concurrent callers never over-admit.
//!   Idle keys are swept (amortised, per shard, at most once per second of traffic) and
//!   the number of keys is capped: at the cap the least recently seen keys are evicted
//!   (like nginx `limit_req_zone` and HAProxy stick tables), see [`local`].
//! - [`RedisStore`] (`store: redis`): one Lua script per decision (EVALSHA), atomic on
//!   the server, so replicas sharing one Redis admit at most `limit` per window between
//!   them. Key: `tollgate:rl:{limit}:{s|f}{per seconds}:{32 hex digits}`; every key
//!   carries an expiry (PEXPIRE) equal to the time its last counted request stops
//!   counting, so Redis holds nothing for an idle client. See [`redis`].
//!
//! # Failure modes
//! Only the Redis store can fail. Every operation is bounded by the store's `timeout`
//! (connection set-up included). After 3 consecutive failures the store fails fast for
//! 500 ms and then lets one probe through, so an outage costs requests no latency; a
//! connection that stays silent (a Redis behind a dropped conntrack entry, a hung server)
//! is replaced after `stale_after`. [`Limiter::decide`] applies the limit's `on_error`:
//! `allow` decides with the local store instead (the same limit, counted by this replica
//! alone; the [`Decision::source`] says so) and logs one warning per 10 s per store
//! (with the number of failures since the last one); `deny` returns
//! [`Outcome::Unavailable`] (503 `service_unavailable`, `Retry-After: 1`). Each failed
//! decision is counted in [`RedisStore::errors`], the value of
//! `tollgate_store_errors_total{store="redis"}`.

pub mod applied;
pub mod decision;
pub mod key;
pub mod layer;
pub mod limiter;
pub mod local;
pub mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

pub use applied::{FailedAuthLimit, RouteLimits};
pub use decision::{closest_to_exhaustion, Decision, RateHeaders, Source};
pub use key::{KeyInput, RateKey};
pub use limiter::{Limiter, LocalVerdict, Outcome, Unavailable, Verdict};
pub use local::LocalStore;
pub use redis::{RedisConfig, RedisConfigError, RedisStore, StoreError};

/// How many buckets a sliding window is cut into (its granularity is `per / 20`).
pub const SLIDING_BUCKETS: u64 = 20;

/// The longest `per` accepted (a yearly quota; anything longer is a configuration slip).
pub const MAX_PER: Duration = Duration::from_secs(366 * 24 * 3600);

/// The largest `limit` accepted (per-bucket counters are 32-bit).
pub const MAX_LIMIT: u64 = u32::MAX as u64;

/// What a limit counts requests by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// The authenticated client id (`client_id`/`azp` of the token, or the token service client).
    Client,
    /// The token's subject (`sub`).
    Subject,
    /// The client IP as tollgate determined it.
    Ip,
    /// The first value of a request header.
    Header(HeaderName),
}

impl KeySpec {
    /// Whether the key needs an authenticated identity (`client`/`subject`), which makes
    /// it a validation error on a route with `auth: none`.
    pub fn needs_identity(&self) -> bool {
        matches!(self, KeySpec::Client | KeySpec::Subject)
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Client => f.write_str("client"),
            KeySpec::Subject => f.write_str("subject"),
            KeySpec::Ip => f.write_str("ip"),
            KeySpec::Header(h) => write!(f, "header:{h}"),
        }
    }
}

/// Why a `key:` value is not one tollgate knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    #[error("unknown key {0:?}: expected client, subject, ip or header:NAME")]
    Unknown(String),
    #[error("header:{0:?} is not a valid header name")]
    BadHeader(String),
}

impl std::str::FromStr for KeySpec {
    type Err = KeySpecError;

    /// `client`, `subject`, `ip` or `header:NAME` (the header name is case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(KeySpec::Client),
            "subject" => Ok(KeySpec::Subject),
            "ip" => Ok(KeySpec::Ip),
            _ => match s.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .map(KeySpec::Header)
                    .map_err(|_| KeySpecError::BadHeader(name.to_owned())),
                None => Err(KeySpecError::Unknown(s.to_owned())),
            },
        }
    }
}

/// `window:` of a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Window {
    /// At most `limit` in any interval of `per` (the default).
    #[default]
    Sliding,
    /// At most `limit` per window aligned to the Unix epoch in UTC (a quota).
    Fixed,
}

/// `store:` of a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// Counted by this replica alone (the default).
    #[default]
    Local,
    /// Counted in `stores.redis`, shared by every replica using it.
    Redis,
}

impl StoreKind {
    /// The `store` label of `tollgate_store_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::Redis => "redis",
        }
    }
}

/// `on_error:` of a limit: what happens when its store cannot decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnError {
    /// Decide with the local store instead, and warn (the default).
    #[default]
    Allow,
    /// Refuse with 503 `service_unavailable`.
    Deny,
}

/// A limit as the configuration states it; [`Limit::new`] checks and compiles it.
#[derive(Clone, Debug)]
pub struct LimitSpec {
    pub name: String,
    pub key: KeySpec,
    pub limit: u64,
    pub per: Duration,
    pub window: Window,
    pub store: StoreKind,
    pub on_error: OnError,
}

/// Why a limit cannot work. Messages name the field, for config validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("name {0:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    Name(String),
    #[error("limit must be between 1 and {MAX_LIMIT}, got {0}")]
    Limit(u64),
    #[error("per must be a whole number of seconds between 1s and 366d, got {0:?}")]
    Per(Duration),
}

/// A compiled limit: validated, with everything a decision needs precomputed (the
/// `RateLimit-Policy` value, the Redis key prefix, the bucket size), so nothing is
/// parsed or formatted while a request is in flight beyond the counter itself.
#[derive(Clone, Debug)]
pub struct Limit {
    name: Arc<str>,
    key: KeySpec,
    limit: u64,
    per: Duration,
    window: Window,
    store: StoreKind,
    on_error: OnError,
    per_ms: u64,
    granularity_ms: u64,
    fingerprint: u64,
    redis_prefix: Box<str>,
    policy: HeaderValue,
    /// `"name";r=`, the start of every `RateLimit` value of this limit.
    state_prefix: Box<[u8]>,
}

impl Limit {
    /// Checks `spec` (name charset and length, `1 <= limit <= MAX_LIMIT`, `per` a whole
    /// number of seconds in `1s..=366d`) and compiles it.
    pub fn new(spec: LimitSpec) -> Result<Limit, LimitError> {
        let LimitSpec {
            name,
            key,
            limit,
            per,
            window,
            store,
            on_error,
        } = spec;
        if !valid_name(&name) {
            return Err(LimitError::Name(name));
        }
        if limit == 0 || limit > MAX_LIMIT {
            return Err(LimitError::Limit(limit));
        }
        if per.is_zero() || per.subsec_nanos() != 0 || per > MAX_PER {
            return Err(LimitError::Per(per));
        }
        let per_ms = per.as_millis() as u64;
        let granularity_ms = per_ms.div_ceil(SLIDING_BUCKETS).max(1);
        let mode = match window {
            Window::Sliding => 's',
            Window::Fixed => 'f',
        };
        let fingerprint = {
            let mut h = Sha256::new();
            h.update(b"tollgate-rl-limit\0");
            h.update(name.as_bytes());
            h.update([0, mode as u8]);
            h.update(per_ms.to_be_bytes());
            let d = h.finalize();
            u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
        };
        let redis_prefix = format!("tollgate:rl:{name}:{mode}{}:", per.as_secs()).into();
        // The name's charset is a subset of what an sf-string and a header value allow.
        let policy = HeaderValue::from_str(&format!("\"{name}\";q={limit};w={}", per.as_secs()))
            .expect("validated name");
        let state_prefix = format!("\"{name}\";r=").into_bytes().into();
        Ok(Limit {
            name: name.into(),
            key,
            limit,
            per,
            window,
            store,
            on_error,
            per_ms,
            granularity_ms,
            fingerprint,
            redis_prefix,
            policy,
            state_prefix,
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
    pub fn key(&self) -> &KeySpec {
        &self.key
    }
    pub fn limit(&self) -> u64 {
        self.limit
    }
    pub fn per(&self) -> Duration {
        self.per
    }
    pub fn window(&self) -> Window {
        self.window
    }
    pub fn store(&self) -> StoreKind {
        self.store
    }
    pub fn on_error(&self) -> OnError {
        self.on_error
    }
    /// `"name";q=LIMIT;w=PER_SECONDS`, the `RateLimit-Policy` value of this limit.
    pub fn policy_header(&self) -> &HeaderValue {
        &self.policy
    }
    /// The headers of a response this limit admitted with `remaining` requests left and
    /// `reset_ms` until more quota comes (see [`Decision::ratelimit_header`]).
    pub(crate) fn rate_headers(&self, remaining: u64, reset_ms: u64) -> RateHeaders {
        RateHeaders {
            policy: self.policy.clone(),
            state: decision::ratelimit_value(
                &self.state_prefix,
                remaining,
                reset_ms.div_ceil(1000),
            ),
        }
    }
    /// The Redis key counting `key` under this limit:
    /// `tollgate:rl:{name}:{s|f}{per seconds}:{digest hex}` (at most 64 + 56 bytes).
    pub fn redis_key(&self, key: &RateKey) -> String {
        let mut s = String::with_capacity(self.redis_prefix.len() + 32);
        s.push_str(&self.redis_prefix);
        key.push_hex(&mut s);
        s
    }
    pub(crate) fn per_ms(&self) -> u64 {
        self.per_ms
    }
    pub(crate) fn granularity_ms(&self) -> u64 {
        self.granularity_ms
    }
    /// Identifies the limit's counters in the local store: name, window and `per` (so a
    /// reload that keeps them keeps the counters, and one that changes them starts afresh).
    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// One line for `tollgate explain` and logs: `per-client: 100 per 60s (sliding) by client, store local, on_error allow`.
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} per {}s ({}) by {}, store {}, on_error {}",
            self.name,
            self.limit,
            self.per.as_secs(),
            match self.window {
                Window::Sliding => "sliding",
                Window::Fixed => "fixed",
            },
            self.key,
            self.store.as_str(),
            match self.on_error {
                OnError::Allow => "allow",
                OnError::Deny => "deny",
            }
        )
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Milliseconds since the Unix epoch on this host's clock (the local store's time).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, limit: u64, per: Duration) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            key: KeySpec::Client,
            limit,
            per,
            window: Window::Sliding,
            store: StoreKind::Local,
            on_error: OnError::Allow,
        }
    }

    // A limit compiles its RateLimit-Policy value and Redis prefix once.
    #[test]
    fn compiles_policy_and_prefix() {
        let l = Limit::new(spec("per-client", 100, Duration::from_secs(60))).unwrap();
        assert_eq!(l.policy_header(), "\"per-client\";q=100;w=60");
        let k = RateKey::from_parts("client", Some(b"abc"));
        let rk = l.redis_key(&k);
        assert!(rk.starts_with("tollgate:rl:per-client:s60:"), "{rk}");
        assert_eq!(rk.len(), "tollgate:rl:per-client:s60:".len() + 32);
        assert_eq!(l.granularity_ms(), 3000);
    }

    // The admitted fast path's headers read exactly as a decision's would.
    #[test]
    fn fast_path_headers_match_the_decision() {
        let l = Limit::new(spec("per-client", 100, Duration::from_secs(60))).unwrap();
        for (counted, reset_ms) in [(1, 60_000), (58, 12_001), (100, 1), (0, 0), (99, 999)] {
            let d = Decision::from_counts(&l, true, counted, reset_ms, 0, Source::Local);
            let want = RateHeaders::from(&d);
            let got = l.rate_headers(d.remaining, reset_ms);
            assert_eq!((&got.policy, &got.state), (&want.policy, &want.state));
        }
        let h = l.rate_headers(42, 12_001);
        assert_eq!(h.state, "\"per-client\";r=42;t=13");
        assert_eq!(h.policy, "\"per-client\";q=100;w=60");
    }

    // Everything that cannot work is refused with a message naming the field.
    #[test]
    fn rejects_what_cannot_work() {
        let bad = [
            spec("", 1, Duration::from_secs(1)),
            spec("has space", 1, Duration::from_secs(1)),
            spec("quote\"", 1, Duration::from_secs(1)),
            spec(&"x".repeat(65), 1, Duration::from_secs(1)),
            spec("ok", 0, Duration::from_secs(1)),
            spec("ok", MAX_LIMIT + 1, Duration::from_secs(1)),
            spec("ok", 1, Duration::ZERO),
            spec("ok", 1, Duration::from_millis(1500)),
            spec("ok", 1, MAX_PER + Duration::from_secs(1)),
        ];
        for s in bad {
            let shown = format!("{s:?}");
            assert!(Limit::new(s).is_err(), "accepted {shown}");
        }
        assert!(Limit::new(spec("a.b_c-9", MAX_LIMIT, MAX_PER)).is_ok());
    }

    // `key:` accepts the four forms and nothing else.
    #[test]
    fn parses_key_specs() {
        assert_eq!("client".parse::<KeySpec>().unwrap(), KeySpec::Client);
        assert_eq!("subject".parse::<KeySpec>().unwrap(), KeySpec::Subject);
        assert_eq!("ip".parse::<KeySpec>().unwrap(), KeySpec::Ip);
        let h = "header:X-Api-Key".parse::<KeySpec>().unwrap();
        assert_eq!(h, KeySpec::Header(HeaderName::from_static("x-api-key")));
        assert_eq!(h.to_string(), "header:x-api-key");
        assert!("header:".parse::<KeySpec>().is_err());
        assert!("header:bad name".parse::<KeySpec>().is_err());
        assert!("clients".parse::<KeySpec>().is_err());
        assert!(KeySpec::Client.needs_identity() && !KeySpec::Ip.needs_identity());
    }

    // Changing name, window or per gives other counters; changing the limit keeps them.
    #[test]
    fn fingerprint_follows_identity_not_budget() {
        let a = Limit::new(spec("a", 10, Duration::from_secs(60))).unwrap();
        let a2 = Limit::new(spec("a", 20, Duration::from_secs(60))).unwrap();
        let b = Limit::new(spec("b", 10, Duration::from_secs(60))).unwrap();
        let a3 = Limit::new(spec("a", 10, Duration::from_secs(61))).unwrap();
        assert_eq!(a.fingerprint(), a2.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), a3.fingerprint());
    }
}
