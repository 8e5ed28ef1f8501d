//! The shared store (`store: redis`): counters every replica sees, consulted by the
//! rate-limit step after authorisation.
//!
//! # One atomic operation per decision, decisions in batches
//! A decision is one run of [`SCRIPT`]'s decision function inside one `EVALSHA` (loaded
//! with `SCRIPT LOAD` on first use and again after a Redis restart, which `redis::Script`
//! does on `NOSCRIPT`). Redis runs a script without interleaving any other command, so
//! read, decide and count cannot race between replicas.
//!
//! Decisions are sent in batches: a request's decision goes into the store's queue, and
//! one task per store sends everything queued as one `EVALSHA` over many keys (at most
//! [`MAX_BATCH`]) — the requests that became ready in the same turn of the runtime share
//! one command, one write, one reply and one parse, where each used to pay for its own
//! (bench/ANALYSIS.md, "Redis decisions in batches"). A batch does not wait for the
//! previous one: batches are pipelined on the connection, and a lone request goes out at
//! once (after the other tasks that are ready to run have had their turn). The script
//! decides the batch's requests one after the other, exactly as separate calls would; a
//! decision that fails inside the script (a key of the wrong type) fails alone. The script reads the time from Redis (`TIME`), so replicas with
//! skewed clocks still agree on windows; it runs the arithmetic of the local store (see
//! the parent module) on a hash per key:
//! - fixed: fields `w` (window index) and `n` (count), expiring at the end of the window;
//! - sliding: one field per bucket index holding its count and one `t<bucket index>`
//!   holding its latest request's time (ms); buckets that no longer count are deleted as
//!   the key is touched, and the key expires once its newest bucket has stopped counting.
//!
//! Keys: `tollgate:rl:{limit}:{s|f}{per seconds}:{32 hex digits of the key digest}`,
//! e.g. `tollgate:rl:per-client:s60:9f86d081884c7d659a2feaa0c55ad015` — never a token,
//! a secret or a header value, and at most ~130 bytes whatever the request sent.
//!
//! # Connection
//! One `redis::aio::ConnectionManager` per store: a single multiplexed connection
//! (every in-flight batch pipelined on it, no connection per request) that reconnects
//! by itself when the connection drops. It is created on first use (so building the
//! store needs neither a runtime nor a reachable Redis) and connects in the background.
//! `rediss://` uses rustls with the system roots, or `ca_pem` for a private CA, and
//! `client_cert_pem`/`client_key_pem` for mutual TLS.
//!
//! # Failures
//! - every decision is bounded by `timeout` (waiting in the queue and for a reconnect
//!   included), then fails with [`StoreError::Timeout`]; a batch that fails fails each of
//!   its decisions with the same error;
//! - after [`OPEN_AFTER`] consecutive failures the store fails fast
//!   ([`StoreError::FailingFast`]) for [`PROBE_EVERY`], then lets one decision through
//!   as a probe; the first success closes it again (and is logged);
//! - a connection with no successful decision for `stale_after` (default 20 × `timeout`,
//!   at least 1 s) is thrown away and a new one made: this recovers from a connection
//!   that silently stopped answering (a dropped conntrack entry after a Redis pod moved,
//!   a wedged server) where waiting for TCP to notice would take minutes;
//! - every failed decision counts in [`RedisStore::errors`]; [`RedisStore::warn`] logs
//!   at most one line per [`WARN_EVERY`] with the number of failures in between.
//!
//! # Operating the Redis
//! A standalone Redis (or a primary; a replica answers `READONLY`, a store error). Give
//! it `maxmemory-policy noeviction` (or room enough): an evicted counter is a client
//! whose count starts again, while `noeviction` turns a full Redis into store errors that
//! `on_error` handles. Persistence is optional: after a restart without it every window
//! starts afresh, which over-admits at most one window's worth. Redis Cluster is not
//! supported by this client (a batch touches many keys, which Cluster only allows
//! within one hash slot).

use opentelemetry::trace::SpanKind;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};

use super::decision::{Decision, Source};
use super::key::RateKey;
use super::{Limit, OnError, Window};
use crate::secret::Secret;

/// Consecutive failures after which the store fails fast.
pub const OPEN_AFTER: u32 = 3;
/// How long the store fails fast before letting one probe through.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// At most one warning per this interval per store.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// Most decisions in one `EVALSHA`: Redis runs nothing else while a script runs, and a
/// decision costs it a few microseconds, so a batch holds other clients up well under a
/// millisecond.
pub const MAX_BATCH: usize = 64;

/// The decision script. `KEYS[i]`: the counter of decision `i`; `ARGV[5i-4 .. 5i]`: its
/// limit, per (ms), bucket size (ms), `f`|`s`, `1` to count an admitted request (`0` to
/// only ask). Returns `allowed(0|1) counted reset(ms) retry(ms)` for each decision, one
/// after the other, as one string of integers separated by single spaces (see the local
/// store for the arithmetic); a decision the script could not make (its key holds
/// something else) answers `-1 0 0 0`. One string rather than an array of integers: the
/// redis crate's reply parser costs about 2k instructions per array element
/// (bench/ANALYSIS.md, "Redis decisions in batches"), tollgate's split-and-parse a few
/// dozen per number.
///
/// Written for redis-server's CPU (bench/ANALYSIS.md, "A cheaper script"): an admitted
/// request costs one read (`HGETALL` / `HMGET`) and one write (`HSET` / `HINCRBY`),
/// `TIME` once per batch; the key's expiry is set only when a bucket (sliding) or window
/// (fixed) is created, since the end of that bucket's or window's counting bounds it
/// either way; nothing is sorted unless the request is refused. The data layout is the
/// one the first script (kept in tests/fixtures/ratelimit-script-v1.lua) reads and
/// writes, plus a `t<bucket>` field per sliding bucket with its latest request's time,
/// so old and new replicas sharing one Redis during a rolling deploy count into the same
/// keys, exactly: an old replica deletes the time fields (it drops every field that is
/// not a number), and a bucket without one counts until its end + `per`, as before.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fmt = string.format
local function fixed(key, limit, per, commit)
  local w = math.floor(now / per)
  local v = redis.call('HMGET', key, 'w', 'n')
  local n = 0
  local stored = tonumber(v[1])
  local same = stored ~= nil and stored >= w
  if same then
    w = stored
    n = tonumber(v[2]) or 0
  end
  local reset = math.max((w + 1) * per - now, 1)
  local allowed = n < limit
  if allowed and commit then
    n = n + 1
    if same and n > 1 then
      -- the window and its expiry were set by its first request
      redis.call('HINCRBY', key, 'n', 1)
    else
      redis.call('HSET', key, 'w', fmt('%d', w), 'n', fmt('%d', n))
      redis.call('PEXPIRE', key, fmt('%d', reset))
    end
  end
  local r = reset
  if n == 0 then r = 0 end
  if allowed then return 1, n, r, 0 end
  return 0, n, r, reset
end
-- A sliding bucket counts until per after its latest request (its 't<b>' field); one
-- without a time (written by an older replica) until its end + per.
local function stops(times, b, g, per)
  local t = tonumber(times[fmt('t%d', b)])
  if t == nil then t = (b + 1) * g end
  return t + per
end
local function sliding(key, limit, per, g, commit)
  local c = math.floor(now / g)
  local lo = math.floor((now - per) / g)
  local h = redis.call('HGETALL', key)
  local total = 0
  local oldest = nil
  local live = {}
  local counts = {}
  -- 't<b>' fields (when bucket b's latest request arrived), read only where needed
  local times = {}
  for i = 1, #h, 2 do
    local f = h[i]
    local b = tonumber(f)
    if b == nil then
      times[f] = h[i + 1]
    elseif b < lo then
      redis.call('HDEL', key, f, 't' .. f)
    else
      local n = tonumber(h[i + 1]) or 0
      total = total + n
      if counts[b] == nil then live[#live + 1] = b end
      counts[b] = (counts[b] or 0) + n
      -- a bucket newer than now: the clock went back; count in it, forget nothing
      if b > c then c = b end
      if oldest == nil or b < oldest then oldest = b end
    end
  end
  -- Only bucket lo can have stopped counting.
  if oldest == lo and stops(times, lo, g, per) <= now then
    total = total - counts[lo]
    counts[lo] = nil
    redis.call('HDEL', key, fmt('%d', lo), fmt('t%d', lo))
    local rest = {}
    oldest = nil
    for i = 1, #live do
      local b = live[i]
      if b ~= lo then
        rest[#rest + 1] = b
        if oldest == nil or b < oldest then oldest = b end
      end
    end
    live = rest
  end
  local allowed = total < limit
  if allowed and commit then
    total = total + 1
    local n = counts[c]
    -- a clock that went back counts at the newest bucket's start
    local at = math.max(now, c * g)
    local tc = fmt('t%d', c)
    local prev = n ~= nil and tonumber(times[tc])
    if prev and prev > at then at = prev end
    times[tc] = at
    redis.call('HSET', key, fmt('%d', c), fmt('%d', (n or 0) + 1), tc, fmt('%d', at))
    if n == nil then
      -- c is the newest bucket: the key lives as long as it counts, set when it is made
      redis.call('PEXPIRE', key, fmt('%d', (c + 1) * g + per - now))
      live[#live + 1] = c
      if oldest == nil then oldest = c end
    end
    counts[c] = (n or 0) + 1
  end
  local reset = 0
  if oldest ~= nil then reset = stops(times, oldest, g, per) - now end
  if allowed then return 1, total, reset, 0 end
  -- refused: the oldest buckets that must stop counting for one more to fit
  table.sort(live)
  local need = total + 1 - limit
  local dropped = 0
  for i = 1, #live do
    local b = live[i]
    dropped = dropped + counts[b]
    if dropped >= need then return 0, total, reset, stops(times, b, g, per) - now end
  end
  return 0, total, reset, reset
end
local out = {}
for i = 1, #KEYS do
  local a = (i - 1) * 5
  local limit = tonumber(ARGV[a + 1])
  local per = tonumber(ARGV[a + 2])
  local commit = ARGV[a + 5] == '1'
  local ok, allowed, counted, reset, retry
  if ARGV[a + 4] == 'f' then
    ok, allowed, counted, reset, retry = pcall(fixed, KEYS[i], limit, per, commit)
  else
    ok, allowed, counted, reset, retry = pcall(sliding, KEYS[i], limit, per, tonumber(ARGV[a + 3]), commit)
  end
  if not ok then allowed, counted, reset, retry = -1, 0, 0, 0 end
  out[i] = fmt('%d %d %d %d', allowed, counted, reset, retry)
end
return table.concat(out, ' ')
"#;

/// Why a store could not decide. Never carries the Redis URL or its password. `Clone`:
/// a batch that fails hands its error to each of its decisions.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("no answer from redis within {0:?}")]
    Timeout(Duration),
    #[error("redis failed {OPEN_AFTER} times in a row; failing fast until the next probe")]
    FailingFast,
    #[error("cannot reach redis: {0}")]
    Connection(#[source] redis::RedisError),
    #[error("redis refused the credentials in stores.redis.url: {0}")]
    Auth(#[source] redis::RedisError),
    #[error("redis refused the operation: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("redis answered the rate-limit script with something it never returns")]
    Reply,
    #[error(
        "redis could not run the rate-limit script on this counter (does something else write tollgate:rl: keys?)"
    )]
    Counter,
    #[error("the limit uses store: redis but no stores.redis is configured")]
    NotConfigured,
}

impl StoreError {
    /// A short stable word for logs: `timeout`, `failing_fast`, `connection`, `auth`,
    /// `redis` (also for a counter the script could not use), `reply`, `not_configured`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::FailingFast => "failing_fast",
            StoreError::Connection(_) => "connection",
            StoreError::Auth(_) => "auth",
            StoreError::Redis(_) | StoreError::Counter => "redis",
            StoreError::Reply => "reply",
            StoreError::NotConfigured => "not_configured",
        }
    }

    fn from_redis(e: redis::RedisError, timeout: Duration) -> StoreError {
        if e.is_timeout() {
            StoreError::Timeout(timeout)
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        {
            StoreError::Auth(e)
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            StoreError::Connection(e)
        } else {
            StoreError::Redis(e)
        }
    }
}

/// `stores.redis` as the configuration states it.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://...`.
    pub url: Secret,
    /// Per operation, connection waits included.
    pub timeout: Duration,
    /// PEM CA certificates trusted for `rediss://` instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and key, for Redis with `tls-auth-clients yes`.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Secret>,
    /// Replace a connection with no successful decision for this long
    /// (default: 20 × `timeout`, at least 1 s).
    pub stale_after: Option<Duration>,
}

impl RedisConfig {
    pub fn new(url: Secret, timeout: Duration) -> RedisConfig {
        RedisConfig {
            url,
            timeout,
            ca_pem: None,
            client_cert_pem: None,
            client_key_pem: None,
            stale_after: None,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_cert_pem", &self.client_cert_pem.is_some())
            .field("stale_after", &self.stale_after)
            .finish()
    }
}

/// Why `stores.redis` cannot work. Messages never repeat the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error("url is not a valid URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("url scheme {0:?}: use redis:// or rediss://")]
    Scheme(String),
    #[error("url has no host")]
    NoHost,
    #[error("timeout must be more than zero")]
    Timeout,
    #[error("TLS settings (CA, client certificate) need a rediss:// url")]
    TlsNeedsRediss,
    #[error("client_cert_pem and client_key_pem go together")]
    HalfClientCert,
    #[error("TLS material: {0}")]
    Tls(#[source] redis::RedisError),
    #[error("{0}")]
    Client(#[source] redis::RedisError),
}

/// The Redis store (see the module docs). One per `stores.redis`; share it (`Arc`)
/// between config generations while its settings stay the same.
pub struct RedisStore {
    link: Arc<Link>,
    timeout: Duration,
    stale_after: Duration,
    /// Where decisions wait for the next batch; the batch task is started on first use
    /// (and again if its runtime went away).
    queue: ArcSwapOption<mpsc::UnboundedSender<Job>>,
    starting: Mutex<()>,
    script: Arc<redis::Script>,
    started: Instant,
    consecutive: AtomicU32,
    /// Monotonic ms (since `started`) until which the store fails fast; 0 = not failing.
    open_until: AtomicU64,
    last_ok: AtomicU64,
    last_rebuild: AtomicU64,
    errors: Arc<AtomicU64>,
    limit_warnings: Throttle,
    replay_warnings: Throttle,
}

/// At most one warning per [`WARN_EVERY`], counting the ones left out.
struct Throttle {
    last: AtomicU64,
    unwarned: AtomicU64,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            last: AtomicU64::new(NEVER),
            unwarned: AtomicU64::new(0),
        }
    }

    /// `Some(warnings left out since the last one)` when a warning is due at `now` (ms).
    fn due(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.unwarned.swap(0, Ordering::AcqRel))
        } else {
            self.unwarned.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The connection, shared by the store and its batch task.
struct Link {
    client: redis::Client,
    timeout: Duration,
    conn: ArcSwapOption<ConnectionManager>,
    creating: Mutex<()>,
}

impl Link {
    /// The connection manager, made on first use (and after a stale one was dropped).
    fn manager(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(m) = &*self.conn.load() {
            return Ok((**m).clone());
        }
        let _one = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = &*self.conn.load() {
            return Ok((**m).clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_secs(1))))
            // Each batch has its own timeout; the connection needs none of its own.
            .set_response_timeout(None)
            // Few retries inside one reconnect: the next decision after a failed one starts
            // another, and the fail-fast probe paces them.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_pipeline_buffer_size(1024);
        let m = ConnectionManager::new_lazy_with_config(self.client.clone(), cfg)
            .map_err(|e| StoreError::from_redis(e, self.timeout))?;
        // Connect in the background so that the first decisions do not each have to
        // drive the handshake within their own timeout.
        let mut warm = m.clone();
        tokio::spawn(async move {
            let _ = redis::cmd("PING").query_async::<()>(&mut warm).await;
        });
        self.conn.store(Some(Arc::new(m.clone())));
        Ok(m)
    }
}

/// One decision waiting for its batch: the script's arguments, and where its answer goes
/// (`{allowed, counted, reset, retry}` as the script returns them).
struct Job {
    key: String,
    limit: u64,
    per_ms: u64,
    granularity_ms: u64,
    fixed: bool,
    commit: bool,
    reply: oneshot::Sender<Result<[i64; 4], StoreError>>,
}

/// The batch task of one store: takes what is queued and sends it as one `EVALSHA`
/// (at most [`MAX_BATCH`] decisions), without waiting for the previous batch's answer —
/// the batches in flight are polled here too, so a batch costs no task of its own and
/// its answer reaches the requests in one hop. Ends when the store is dropped (its
/// sender with it), after the batches in flight.
///
/// Which decisions make a batch: on a current-thread runtime (`workers: 1`) the task is
/// woken behind the tasks that are already ready to run, so it finds their decisions
/// queued; on a multi-thread runtime a woken task may run at once (tokio's LIFO slot),
/// so it first lets the ready tasks run (one `yield_now`). A lone decision waits for
/// nothing else either way.
///
/// The queue is unbounded because what is in it is bounded elsewhere: each decision
/// belongs to a request that waits for it (at most `timeout`), and requests are bounded
/// by `server.max_connections` and the HTTP/2 stream limits.
async fn batches(
    link: Arc<Link>,
    script: Arc<redis::Script>,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<Job>,
) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let gather = !matches!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
    let mut in_flight = FuturesUnordered::new();
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            n = queue.recv_many(&mut jobs, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
                if gather && jobs.len() < MAX_BATCH {
                    tokio::task::yield_now().await;
                    while jobs.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                }
                // A request that went away (client gone, its own timeout) is not counted.
                jobs.retain(|j| !j.reply.is_closed());
                if !jobs.is_empty() {
                    let batch = std::mem::replace(&mut jobs, Vec::with_capacity(MAX_BATCH));
                    in_flight.push(send_batch(link.clone(), script.clone(), timeout, batch));
                }
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// The script's answer: exactly `n` integers separated by single spaces (`None` if it is
/// anything else).
fn numbers(reply: &[u8], n: usize) -> Option<Vec<i64>> {
    let mut out = Vec::with_capacity(n);
    for s in reply.split(|&b| b == b' ') {
        out.push(std::str::from_utf8(s).ok()?.parse().ok()?);
    }
    (out.len() == n).then_some(out)
}

/// One `EVALSHA` for `jobs`, bounded by `timeout`; each job gets its four numbers, or
/// the batch's error.
async fn send_batch(
    link: Arc<Link>,
    script: Arc<redis::Script>,
    timeout: Duration,
    jobs: Vec<Job>,
) {
    let call = async {
        let mut m = link.manager()?;
        let mut inv = script.prepare_invoke();
        for j in &jobs {
            inv.key(j.key.as_str());
        }
        for j in &jobs {
            inv.arg(j.limit)
                .arg(j.per_ms)
                .arg(j.granularity_ms)
                .arg(if j.fixed { "f" } else { "s" })
                .arg(if j.commit { "1" } else { "0" });
        }
        match inv.invoke_async::<redis::Value>(&mut m).await {
            Ok(redis::Value::BulkString(b)) => numbers(&b, 4 * jobs.len()).ok_or(StoreError::Reply),
            Ok(_) => Err(StoreError::Reply),
            Err(e) => Err(StoreError::from_redis(e, timeout)),
        }
    };
    let result = match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout(timeout)),
    };
    match result {
        Ok(v) => {
            for (job, c) in jobs.into_iter().zip(v.chunks_exact(4)) {
                let _ = job.reply.send(Ok([c[0], c[1], c[2], c[3]]));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .field("errors", &self.errors())
            .finish_non_exhaustive()
    }
}

const NEVER: u64 = u64::MAX;

impl RedisStore {
    /// Checks the settings and prepares the client; connects on first use. Does not
    /// need a runtime, so config validation can call it.
    pub fn new(cfg: RedisConfig) -> Result<RedisStore, RedisConfigError> {
        let url = url::Url::parse(cfg.url.expose())?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => return Err(RedisConfigError::Scheme(other.to_owned())),
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(RedisConfigError::NoHost);
        }
        if cfg.timeout.is_zero() {
            return Err(RedisConfigError::Timeout);
        }
        let wants_tls_material = cfg.ca_pem.is_some() || cfg.client_cert_pem.is_some();
        if cfg.client_cert_pem.is_some() != cfg.client_key_pem.is_some() {
            return Err(RedisConfigError::HalfClientCert);
        }
        if wants_tls_material && !tls {
            return Err(RedisConfigError::TlsNeedsRediss);
        }
        if tls && rustls::crypto::CryptoProvider::get_default().is_none() {
            // redis builds its rustls config with the process default provider; make it
            // the one tollgate uses everywhere else (ignored if another thread won).
            let _ = (*crate::tls::provider()).clone().install_default();
        }
        let client = if wants_tls_material {
            let client_tls = match (&cfg.client_cert_pem, &cfg.client_key_pem) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.expose().as_bytes().to_vec(),
                }),
                _ => None,
            };
            let certs = redis::TlsCertificates {
                client_tls,
                root_cert: cfg.ca_pem.clone(),
            };
            redis::Client::build_with_tls(cfg.url.expose(), certs).map_err(RedisConfigError::Tls)?
        } else {
            redis::Client::open(cfg.url.expose()).map_err(RedisConfigError::Client)?
        };
        let stale_after = cfg
            .stale_after
            .unwrap_or_else(|| (cfg.timeout * 20).max(Duration::from_secs(1)));
        Ok(RedisStore {
            link: Arc::new(Link {
                client,
                timeout: cfg.timeout,
                conn: ArcSwapOption::empty(),
                creating: Mutex::new(()),
            }),
            timeout: cfg.timeout,
            stale_after,
            queue: ArcSwapOption::empty(),
            starting: Mutex::new(()),
            script: Arc::new(redis::Script::new(SCRIPT)),
            started: Instant::now(),
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            last_rebuild: AtomicU64::new(0),
            errors: Arc::new(AtomicU64::new(0)),
            limit_warnings: Throttle::new(),
            replay_warnings: Throttle::new(),
        })
    }

    /// Counts this store's failed decisions in `counter` (shared by every store the
    /// process makes, so that `tollgate_store_errors_total` never goes back when a reload
    /// replaces the store) instead of a counter of its own.
    pub fn with_error_counter(mut self, counter: Arc<AtomicU64>) -> RedisStore {
        self.errors = counter;
        self
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Decisions that failed so far (timeouts, connection and server errors, fail-fast
    /// refusals): the value of `tollgate_store_errors_total{store="redis"}` (with
    /// [`RedisStore::with_error_counter`], of every store sharing the counter).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Decides and counts one request.
    pub async fn check(&self, limit: &Limit, key: &RateKey) -> Result<Decision, StoreError> {
        self.run(limit, key, true).await
    }

    /// Whether one more request would be admitted, without counting it.
    pub async fn peek(&self, limit: &Limit, key: &RateKey) -> Result<Decision, StoreError> {
        self.run(limit, key, false).await
    }

    /// One `PING`, bounded by the timeout (for readiness checks and warm-up). Not
    /// counted as a decision.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut m = self.link.manager()?;
        match tokio::time::timeout(self.timeout, redis::cmd("PING").query_async::<()>(&mut m)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::from_redis(e, self.timeout)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    async fn run(
        &self,
        limit: &Limit,
        key: &RateKey,
        commit: bool,
    ) -> Result<Decision, StoreError> {
        let mut span = None;
        let result = self
            .guarded(|| {
                let mut s = crate::otel::child("ratelimit.redis", SpanKind::Client);
                if s.recording() {
                    // The limit's name, not its key (a key may be a client id or an address).
                    s.attr("db.system.name", "redis")
                        .attr("tollgate.limit", limit.name().to_string());
                }
                span = Some(s);
                self.eval(limit, key, commit)
            })
            .await;
        if let Some(mut span) = span {
            match &result {
                Ok(d) => {
                    span.attr("tollgate.limit_allowed", d.allowed);
                }
                Err(e) => span.fail(e.to_string()),
            }
        }
        result
    }

    /// Runs one operation under the store's rules: refused at once while failing fast,
    /// its success or failure counted for the fail-fast state and the error counter.
    async fn guarded<T, F>(&self, op: impl FnOnce() -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let now = self.mono_ms();
        if !self.may_try(now) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::FailingFast);
        }
        let result = op().await;
        let now = self.mono_ms();
        match &result {
            Ok(_) => self.succeeded(now),
            Err(_) => self.failed(now),
        }
        result
    }

    /// One command with the store's timeout (connection waits included).
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut m = self.link.manager()?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut m)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.kind() == redis::ErrorKind::UnexpectedReturnType => {
                Err(StoreError::Reply)
            }
            Ok(Err(e)) => Err(StoreError::from_redis(e, self.timeout)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// `SET key 1 NX PX ttl_ms`, one atomic operation: `true` when the key was not
    /// there (it is now, for `ttl_ms`), `false` when it was. For marks that must be
    /// made once across every replica (a DPoP proof's `jti`). `key` must never hold
    /// request material: callers pass a digest.
    pub async fn set_once(&self, key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(1).arg("NX").arg("PX").arg(ttl_ms.max(1));
        self.guarded(|| async {
            let mut span = crate::otel::child("dpop.replay.redis", SpanKind::Client);
            if span.recording() {
                span.attr("db.system.name", "redis");
            }
            let r = self.query::<Option<String>>(cmd).await;
            if let Err(e) = &r {
                span.fail(e.to_string());
            }
            r.map(|set| set.is_some())
        })
        .await
    }

    /// Whether `key` exists (`EXISTS`), writing nothing: a dry check.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(key);
        self.guarded(|| async { self.query::<i64>(cmd).await.map(|n| n > 0) })
            .await
    }

    async fn eval(
        &self,
        limit: &Limit,
        key: &RateKey,
        commit: bool,
    ) -> Result<Decision, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Job {
            key: limit.redis_key(key),
            limit: limit.limit(),
            per_ms: limit.per_ms(),
            granularity_ms: limit.granularity_ms(),
            fixed: matches!(limit.window(), Window::Fixed),
            commit,
            reply,
        });
        let [allowed, counted, reset, retry] =
            match tokio::time::timeout(self.timeout, answer).await {
                Ok(Ok(r)) => r?,
                // The batch was given up at its own timeout (or its runtime is shutting down).
                Ok(Err(_)) | Err(_) => return Err(StoreError::Timeout(self.timeout)),
            };
        if allowed == -1 {
            return Err(StoreError::Counter);
        }
        let nonneg = |v: i64| u64::try_from(v).map_err(|_| StoreError::Reply);
        Ok(Decision::from_counts(
            limit,
            allowed == 1,
            nonneg(counted)?,
            nonneg(reset)?,
            nonneg(retry)?,
            Source::Redis,
        ))
    }

    /// Puts a decision in the queue of the next batch, starting the batch task on first
    /// use (or again when the runtime it ran on has gone).
    fn enqueue(&self, job: Job) {
        let Err(job) = self.try_queue(job) else {
            return;
        };
        let _one = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        // Another caller may have started the task while this one waited for the lock.
        let Err(job) = self.try_queue(job) else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batches(
            self.link.clone(),
            self.script.clone(),
            self.timeout,
            rx,
        ));
        // Cannot fail: the task holding the receiver was only just spawned.
        let _ = tx.send(job);
        self.queue.store(Some(Arc::new(tx)));
    }

    /// Queues `job` if the batch task is running; hands it back if there is none (yet,
    /// or any more).
    fn try_queue(&self, job: Job) -> Result<(), Job> {
        match &*self.queue.load() {
            Some(q) => q.send(job).map_err(|mpsc::error::SendError(job)| job),
            None => Err(job),
        }
    }

    fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Whether a decision may go to Redis now: yes unless failing fast; when the
    /// fail-fast period is over, exactly one caller gets through as the probe.
    fn may_try(&self, now: u64) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until == 0
            || (now >= until
                && self
                    .open_until
                    .compare_exchange(
                        until,
                        now + PROBE_EVERY.as_millis() as u64,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok())
    }

    fn succeeded(&self, now: u64) {
        self.last_ok.store(now, Ordering::Relaxed);
        let before = self.consecutive.swap(0, Ordering::AcqRel);
        if before > 0 {
            self.open_until.store(0, Ordering::Release);
            if before >= OPEN_AFTER {
                tracing::info!(
                    store = "redis",
                    failed_in_a_row = before,
                    "rate-limit store reachable again"
                );
            }
        }
    }

    fn failed(&self, now: u64) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= OPEN_AFTER {
            self.open_until
                .store(now + PROBE_EVERY.as_millis() as u64, Ordering::Release);
        }
        let stale = self.stale_after.as_millis() as u64;
        let last_ok = self.last_ok.load(Ordering::Relaxed);
        let last_rebuild = self.last_rebuild.load(Ordering::Relaxed);
        if now.saturating_sub(last_ok) >= stale
            && now.saturating_sub(last_rebuild) >= stale
            && self
                .last_rebuild
                .compare_exchange(last_rebuild, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // Dropping the manager closes its connection; the next decision makes a new one.
            self.link.conn.store(None);
            tracing::debug!(
                store = "redis",
                "replacing a connection with no success for stale_after"
            );
        }
    }

    /// Logs that a decision for `limit` could not be made by Redis and what happened
    /// instead (`on_error`), at most once per [`WARN_EVERY`]; the line carries the
    /// number of failures since the previous one. Never logs the URL.
    pub fn warn(&self, limit: &Limit, err: &StoreError, on_error: OnError) {
        let Some(since_last) = self.limit_warnings.due(self.mono_ms()) else {
            return;
        };
        let action = match on_error {
            OnError::Allow => "deciding with the local limiter (on_error: allow)",
            OnError::Deny => "refusing with 503 (on_error: deny)",
        };
        tracing::warn!(
            store = "redis",
            limit = %limit.name(),
            error = %err,
            kind = err.kind(),
            failures_not_logged = since_last,
            "rate-limit store unavailable: {action}"
        );
    }

    /// Logs that the DPoP replay check of `issuer` could not ask Redis and what it did
    /// instead, at most once per [`WARN_EVERY`] (apart from the rate-limit warnings).
    pub fn warn_replay(&self, issuer: &str, err: &StoreError, action: &str) {
        let Some(since_last) = self.replay_warnings.due(self.mono_ms()) else {
            return;
        };
        tracing::warn!(
            store = "redis",
            issuer,
            error = %err,
            kind = err.kind(),
            failures_not_logged = since_last,
            "DPoP replay store unavailable: {action}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> RedisConfig {
        RedisConfig::new(Secret::new(url), Duration::from_millis(50))
    }

    // The batch script's answer is taken only when it is exactly what the script writes:
    // n integers, single spaces, nothing else (a Lua float or a short answer is a
    // `Reply` error, never a decision).
    #[test]
    fn the_scripts_answer_is_read_exactly() {
        assert_eq!(
            numbers(b"1 49 3600000 0 -1 0 0 0", 8),
            Some(vec![1, 49, 3_600_000, 0, -1, 0, 0, 0])
        );
        for (reply, n) in [
            (&b"1 49 3600000 0"[..], 8),
            (b"1 49 3600000 0 5", 4),
            (b"1  49 3600000 0", 3),
            (b"1 4.9e1 3600000 0", 4),
            (b"1 49 3600000 0 ", 4),
            (b"", 1),
        ] {
            assert_eq!(
                numbers(reply, n),
                None,
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    // Settings that cannot work are refused up front, without echoing the URL.
    #[test]
    fn bad_settings_are_refused_without_the_password() {
        for url in [
            "http://:hunter2@127.0.0.1:6379",
            "redis://:hunter2@",
            "not a url hunter2",
            "redis://:hunter2@127.0.0.1:6379/notadb",
        ] {
            let e = RedisStore::new(cfg(url)).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{url}: {e}");
        }
        let mut c = cfg("redis://127.0.0.1:6379");
        c.ca_pem = Some(b"-----BEGIN CERTIFICATE-----".to_vec());
        assert!(matches!(
            RedisStore::new(c).unwrap_err(),
            RedisConfigError::TlsNeedsRediss
        ));
        let mut c = cfg("rediss://127.0.0.1:6379");
        c.client_cert_pem = Some(b"x".to_vec());
        assert!(matches!(
            RedisStore::new(c).unwrap_err(),
            RedisConfigError::HalfClientCert
        ));
        let mut c = cfg("redis://127.0.0.1:6379");
        c.timeout = Duration::ZERO;
        assert!(matches!(
            RedisStore::new(c).unwrap_err(),
            RedisConfigError::Timeout
        ));
        let s = RedisStore::new(cfg("redis://:hunter2@127.0.0.1:6379/0")).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{:?}", cfg("redis://:hunter2@h")).contains("hunter2"));
    }
}
