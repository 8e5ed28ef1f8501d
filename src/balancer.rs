//! Step 10 of the request path, for an upstream with several endpoints
//! (`upstreams[].urls`) or with `retries` / `passive` / `health_check`: which endpoint
//! a forwarded request goes to, and what each endpoint's exchanges say about its health.
//!
//! - Balancing: `round-robin` (one shared atomic cursor) or `least-requests` (power of
//!   two choices over the endpoints' in-flight counts, as Envoy's LEAST_REQUEST does:
//!   two distinct endpoints drawn at random, the one with fewer requests in flight
//!   wins). Picking takes no lock and allocates nothing.
//! - Passive ejection (outlier detection): `consecutive_failures` connect failures,
//!   resets, timeouts or 5xx answers in a row eject an endpoint for `eject_for`; never
//!   the last healthy one, and at most `max_ejected_percent` of them (at least one).
//!   When no endpoint is healthy, all of them are used ("panic mode", as Envoy does).
//! - Active health checks (`health.rs` runs them) mark an endpoint failing after
//!   `unhealthy` failed checks in a row and passing again after `healthy` passes.
//!
//! The per-endpoint state ([`EndpointState`]) is kept across reloads for endpoints whose
//! URL did not change (the config registry hands the same one to the new config).
//! Connections are per endpoint: each has its own [`Pool`] (HTTP/1.1) or [`H2Conn`].
//!
//! The endpoint list can change while the config serves (`upstreams[].dns: {mode:
//! per_address}`, `discovery.rs`): a request works on the list it loaded
//! ([`Endpoints::list`]); an endpoint that leaves it gets no new request, and the
//! requests it has in flight finish on it (drained).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, StatusCode, Uri};

use crate::client::{H2Conn, HttpClient, Pool, UpstreamFailure};

/// `upstreams[].balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastRequests,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastRequests => "least-requests",
        }
    }
}

/// `upstreams[].passive`: outlier detection on the exchanges themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Failures in a row that eject an endpoint (0: never eject).
    pub consecutive_failures: u32,
    pub eject_for: Duration,
    /// At most this share of the endpoints is ejected at once (at least one may be).
    pub max_ejected_percent: u8,
}

impl Default for Passive {
    /// Envoy's outlier detection defaults (consecutive_5xx 5, base_ejection_time 30 s),
    /// with a higher ejection share than Envoy's 10%: with three endpoints, one is.
    fn default() -> Self {
        Passive {
            consecutive_failures: 5,
            eject_for: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// `upstreams[].retries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retries {
    /// Tries in all, the first included (1: no retry).
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    /// Bit `code - 500` for each 5xx status that is retried.
    pub on_status: u128,
}

impl Default for Retries {
    /// Without a `retries` block: one more try, on another endpoint, when no connection
    /// could be made (the request never reached an upstream), like nginx's
    /// `proxy_next_upstream error`.
    fn default() -> Self {
        Retries {
            attempts: 2,
            on_connect_failure: true,
            on_reset: false,
            on_timeout: false,
            on_status: 0,
        }
    }
}

impl Retries {
    /// None at all (a single `url` without a `retries` block).
    pub const NONE: Retries = Retries {
        attempts: 1,
        on_connect_failure: false,
        on_reset: false,
        on_timeout: false,
        on_status: 0,
    };

    /// Methods that may be sent twice (RFC 9110 9.2.2): the only ones retried.
    pub fn method_allows(&self, m: &Method) -> bool {
        self.attempts > 1
            && matches!(
                *m,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            )
    }

    pub fn on_failure(&self, f: &UpstreamFailure) -> bool {
        match f {
            UpstreamFailure::Connect(_) => self.on_connect_failure,
            UpstreamFailure::Broken(_) => self.on_reset,
            UpstreamFailure::Timeout => self.on_timeout,
        }
    }

    pub fn on_status(&self, s: StatusCode) -> bool {
        let code = s.as_u16();
        (500..600).contains(&code) && self.on_status & (1u128 << (code - 500)) != 0
    }
}

/// `upstreams[].health_check`: an HTTP GET to each endpoint; 2xx passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passes in a row that mark a failing endpoint healthy again.
    pub healthy: u32,
    /// Failures in a row that mark an endpoint failing.
    pub unhealthy: u32,
}

/// What is known about one endpoint; shared by requests, health checks and the admin
/// status, and kept across reloads while its URL stays in the config.
#[derive(Debug, Default)]
pub struct EndpointState {
    in_flight: AtomicUsize,
    /// Failed exchanges in a row (passive).
    failures: AtomicU32,
    /// Ejected until this instant (milliseconds after [`clock`]'s start; 0: not ejected).
    ejected_until: AtomicU64,
    ejections: AtomicU64,
    /// The active health check says the endpoint is failing.
    check_failing: AtomicBool,
    /// Whether an active check ran at all (status shows "unknown" before).
    checked: AtomicBool,
    check_passes: AtomicU32,
    check_failures: AtomicU32,
    /// Exchanges sent (for the admin status).
    requests: AtomicU64,
}

/// (start instant, wall time then): times are kept as milliseconds after the start.
fn clock() -> &'static (Instant, SystemTime) {
    static START: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    START.get_or_init(|| (Instant::now(), SystemTime::now()))
}

/// Milliseconds since [`clock`]'s start, at least 1 (0 means "never").
pub fn now_ms() -> u64 {
    (clock().0.elapsed().as_millis() as u64).max(1)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

impl EndpointState {
    /// Ejected (passively) at `now`.
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Usable: neither ejected nor failing its active check.
    pub fn healthy(&self, now: u64) -> bool {
        !self.ejected(now) && !self.check_failing.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// When the ejection ends (wall time), while ejected.
    pub fn ejected_until(&self, now: u64) -> Option<SystemTime> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now).then(|| clock().1 + Duration::from_millis(until))
    }

    /// The active check's verdict: `None` before the first check.
    pub fn check_failing(&self) -> Option<bool> {
        self.checked
            .load(Ordering::Relaxed)
            .then(|| self.check_failing.load(Ordering::Relaxed))
    }

    /// One request in flight on this endpoint until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// An exchange ended well (any answer below 500): the failure run ends.
    fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// One active check's result; true when the endpoint's verdict flipped.
    pub fn check_result(&self, passed: bool, hc: &HealthCheck) -> bool {
        self.checked.store(true, Ordering::Relaxed);
        if passed {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
            // A passing check ends a passive ejection (Envoy's
            // successful_active_health_check_uneject_host).
            self.ejected_until.store(0, Ordering::Relaxed);
            if n >= hc.healthy && self.check_failing.swap(false, Ordering::Relaxed) {
                return true;
            }
        } else {
            self.check_passes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= hc.unhealthy && !self.check_failing.swap(true, Ordering::Relaxed) {
                return true;
            }
        }
        false
    }
}

/// Counts a request in flight on an endpoint (least-requests) while it lives: it rides
/// on the response body, so a streaming answer counts until it ends.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint of an upstream: where to connect and what to send as `Host`.
pub struct Endpoint {
    /// `host:port` as written, or `address:port` for an address of a name (the
    /// `endpoint` label of its metrics).
    pub label: Arc<str>,
    pub scheme: Scheme,
    /// `host:port`: what TLS names (SNI, certificate) and HTTP/2's `:authority` say.
    pub authority: Authority,
    /// `Host` sent to this endpoint.
    pub host: HeaderValue,
    /// The address connections go to (`dns: per_address`); `None`: the name's,
    /// resolved by the system for each new connection.
    pub addr: Option<IpAddr>,
    pub state: Arc<EndpointState>,
    pool: OnceLock<Arc<Pool>>,
    h2: OnceLock<Arc<H2Conn>>,
    /// Its active health check (`health.rs`), stopped when it leaves the list.
    pub check: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Endpoint {
    pub fn new(scheme: Scheme, authority: Authority, state: Arc<EndpointState>) -> Endpoint {
        Endpoint {
            label: authority.as_str().into(),
            host: HeaderValue::from_str(authority.as_str())
                .unwrap_or(HeaderValue::from_static("localhost")),
            scheme,
            authority,
            addr: None,
            state,
            pool: OnceLock::new(),
            h2: OnceLock::new(),
            check: Mutex::new(None),
        }
    }

    /// One address of `authority`'s name: connections go to `addr`, TLS and `Host`
    /// keep the name.
    pub fn at_address(
        scheme: Scheme,
        authority: Authority,
        addr: IpAddr,
        state: Arc<EndpointState>,
    ) -> Endpoint {
        let port = authority
            .port_u16()
            .unwrap_or(if scheme == Scheme::HTTPS { 443 } else { 80 });
        let mut ep = Endpoint::new(scheme, authority, state);
        ep.label = std::net::SocketAddr::new(addr, port).to_string().into();
        ep.addr = Some(addr);
        ep
    }

    /// This endpoint's HTTP/1.1 pool (shared with any upstream of the same origin, and
    /// across reloads; an address's own).
    pub fn pool(&self, client: &HttpClient) -> &Arc<Pool> {
        self.pool.get_or_init(|| match self.addr {
            Some(addr) => Arc::new(Pool::new(
                client.connector.pinned(addr),
                origin(&self.scheme, &self.authority),
            )),
            None => pool_for(client, &self.scheme, &self.authority),
        })
    }

    /// This endpoint's HTTP/2 connection (`protocol: h2 | h2c`).
    pub fn h2(&self, client: &HttpClient) -> &Arc<H2Conn> {
        self.h2.get_or_init(|| match self.addr {
            Some(addr) => Arc::new(H2Conn::new(
                client.h2_connector.pinned(addr),
                origin(&self.scheme, &self.authority),
            )),
            None => h2_for(client, &self.scheme, &self.authority),
        })
    }

    /// Stops its active health check.
    pub fn stop_check(&self) {
        if let Some(t) = self.check.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

fn origin(scheme: &Scheme, authority: &Authority) -> Uri {
    Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .expect("scheme and authority were validated")
}

/// The pool for an origin: one per origin and client, kept across reloads.
pub fn pool_for(client: &HttpClient, scheme: &Scheme, authority: &Authority) -> Arc<Pool> {
    let mut pools = client.pools.lock().unwrap_or_else(|p| p.into_inner());
    pools
        .entry((scheme.clone(), authority.clone()))
        .or_insert_with(|| {
            Arc::new(Pool::new(
                client.connector.clone(),
                origin(scheme, authority),
            ))
        })
        .clone()
}

/// The HTTP/2 connection for an origin: one per origin and client, kept across reloads.
pub fn h2_for(client: &HttpClient, scheme: &Scheme, authority: &Authority) -> Arc<H2Conn> {
    let mut conns = client.h2_conns.lock().unwrap_or_else(|p| p.into_inner());
    conns
        .entry((scheme.clone(), authority.clone()))
        .or_insert_with(|| {
            Arc::new(H2Conn::new(
                client.h2_connector.clone(),
                origin(scheme, authority),
            ))
        })
        .clone()
}

/// An upstream's endpoints and how requests are spread over them.
pub struct Endpoints {
    /// The endpoints now (replaced as a whole when a name's addresses change).
    members: ArcSwap<Vec<Arc<Endpoint>>>,
    pub balance: Balance,
    pub passive: Passive,
    pub retries: Retries,
    pub health_check: Option<Arc<HealthCheck>>,
    /// Round-robin cursor; for least-requests, the seed of the random draws.
    cursor: AtomicUsize,
    /// The running background task (`discovery.rs`'s resolutions); aborted with the
    /// endpoints' health checks by [`Endpoints::stop`] and when the config that owns
    /// them is dropped.
    pub tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The health checks were started (once per config).
    pub started: AtomicBool,
    /// [`Endpoints::stop`] ran: nothing more starts.
    pub stopped: AtomicBool,
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bit of endpoint `i` in an "already tried" set (endpoints past 63 share bit 63).
pub fn bit(i: usize) -> u64 {
    1u64 << i.min(63)
}

/// splitmix64: a well-spread number from a counter, for the random draws.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Endpoints {
    pub fn new(
        list: Vec<Arc<Endpoint>>,
        balance: Balance,
        passive: Passive,
        retries: Retries,
        health_check: Option<HealthCheck>,
    ) -> Endpoints {
        // Instances start at different places, so that replicas do not all send their
        // first request to the same endpoint.
        let seed = rand::random::<u32>() as usize;
        Endpoints {
            members: ArcSwap::from_pointee(list),
            balance,
            passive,
            retries,
            health_check: health_check.map(Arc::new),
            cursor: AtomicUsize::new(seed),
            tasks: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    /// The endpoints now: a request picks from the list it loaded, for all its tries.
    pub fn list(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.members.load_full()
    }

    /// Replaces the list; returns the previous one.
    pub fn replace(&self, list: Vec<Arc<Endpoint>>) -> Arc<Vec<Arc<Endpoint>>> {
        self.members.swap(Arc::new(list))
    }

    /// Stops the background work: resolutions and health checks (a reload replaced
    /// this config, or the gateway stops).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
        for ep in self.list().iter() {
            ep.stop_check();
        }
    }

    /// The endpoint of `list` (loaded with [`Endpoints::list`]; not empty) for the next
    /// try: a healthy one not in `tried` by the balancing policy; when every untried
    /// one is unhealthy, any untried one (panic mode); when every one was tried, any.
    pub fn pick(&self, list: &[Arc<Endpoint>], tried: u64) -> usize {
        let n = list.len();
        if n <= 1 {
            return 0;
        }
        let now = now_ms();
        let untried = |i: usize| tried & bit(i) == 0;
        let good = |i: usize| untried(i) && list[i].state.healthy(now);
        let c = self.cursor.fetch_add(1, Ordering::Relaxed);
        let found = match self.balance {
            Balance::RoundRobin => first_from(n, c % n, good),
            Balance::LeastRequests => {
                let r = mix(c as u64);
                // Two distinct draws; each moves on to the next usable endpoint.
                let a0 = (r % n as u64) as usize;
                let b0 = (a0 + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                match (first_from(n, a0, good), first_from(n, b0, good)) {
                    (Some(a), Some(b)) => {
                        if list[b].state.in_flight() < list[a].state.in_flight() {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    (a, b) => a.or(b),
                }
            }
        };
        found
            .or_else(|| first_from(n, c % n, untried))
            .unwrap_or(c % n)
    }

    /// Counts an exchange's outcome for endpoint `i` of `list`: `failed` is a connect
    /// failure, reset, timeout or 5xx answer. Returns true when it ejected the endpoint.
    pub fn record(&self, list: &[Arc<Endpoint>], i: usize, failed: bool) -> bool {
        let st = &list[i].state;
        if !failed {
            st.success();
            return false;
        }
        let need = self.passive.consecutive_failures;
        let run = st.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if need == 0 || run < need {
            return false;
        }
        let now = now_ms();
        if st.ejected(now) {
            return false;
        }
        // Never the last healthy endpoint, and not more than the allowed share.
        let others_healthy = list
            .iter()
            .enumerate()
            .any(|(j, e)| j != i && e.state.healthy(now));
        let ejected = list.iter().filter(|e| e.state.ejected(now)).count();
        let allowed = ejected == 0
            || (ejected + 1) * 100 <= self.passive.max_ejected_percent as usize * list.len();
        if !others_healthy || !allowed {
            return false;
        }
        st.failures.store(0, Ordering::Relaxed);
        st.ejected_until
            .store(now + ms(self.passive.eject_for), Ordering::Relaxed);
        st.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(endpoint = %list[i].label, eject_for = ?self.passive.eject_for,
            "upstream endpoint ejected after {run} failures in a row");
        true
    }
}

/// The first `i` from `start` on (wrapping) for which `ok` holds.
fn first_from(n: usize, start: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize, balance: Balance, passive: Passive) -> Endpoints {
        let list = (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    Scheme::HTTP,
                    format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    Arc::default(),
                ))
            })
            .collect();
        Endpoints::new(list, balance, passive, Retries::default(), None)
    }

    fn counts(e: &Endpoints, rounds: usize, tried: u64) -> Vec<usize> {
        let list = e.list();
        let mut c = vec![0; list.len()];
        for _ in 0..rounds {
            c[e.pick(&list, tried)] += 1;
        }
        c
    }

    // Behaviour: round-robin visits every endpoint in turn, exactly evenly.
    #[test]
    fn round_robin_is_even() {
        let e = endpoints(3, Balance::RoundRobin, Passive::default());
        assert_eq!(counts(&e, 300, 0), [100, 100, 100]);
    }

    // Behaviour: an ejected endpoint gets nothing while others are healthy; endpoints
    // already tried are avoided; when every endpoint is down, all are used (panic).
    #[test]
    fn unhealthy_and_tried_endpoints_are_skipped() {
        let passive = Passive {
            consecutive_failures: 2,
            ..Passive::default()
        };
        let e = endpoints(3, Balance::RoundRobin, passive);
        assert!(!e.record(&e.list(), 1, true));
        assert!(
            e.record(&e.list(), 1, true),
            "the second failure in a row ejects"
        );
        assert!(e.list()[1].state.ejected(now_ms()));
        assert!(e.list()[1].state.ejected_until(now_ms()).is_some());
        assert_eq!(e.list()[1].state.ejections(), 1);
        assert_eq!(counts(&e, 100, 0)[1], 0);
        // Tried 0 already: 2 (the only healthy untried one).
        for _ in 0..10 {
            assert_eq!(e.pick(&e.list(), bit(0)), 2);
        }
        // Tried 0 and 2: the ejected one rather than none (panic for the retry).
        assert_eq!(e.pick(&e.list(), bit(0) | bit(2)), 1);
        // Every endpoint failing its active check: all are used.
        let hc = HealthCheck {
            path: "/h".parse().unwrap(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy: 1,
            unhealthy: 1,
        };
        for ep in e.list().iter() {
            ep.state.check_result(false, &hc);
        }
        assert!(counts(&e, 90, 0).iter().all(|&c| c == 30));
    }

    // Behaviour: the last healthy endpoint is never ejected, nor more than the allowed
    // share; a success ends a failure run.
    #[test]
    fn ejection_limits() {
        let passive = Passive {
            consecutive_failures: 1,
            eject_for: Duration::from_secs(60),
            max_ejected_percent: 100,
        };
        let e = endpoints(2, Balance::RoundRobin, passive);
        assert!(e.record(&e.list(), 0, true));
        assert!(
            !e.record(&e.list(), 1, true),
            "the last healthy endpoint stays"
        );
        assert!(e.list()[1].state.healthy(now_ms()));

        let passive = Passive {
            consecutive_failures: 2,
            eject_for: Duration::from_secs(60),
            max_ejected_percent: 10,
        };
        let e = endpoints(4, Balance::RoundRobin, passive);
        e.record(&e.list(), 0, true);
        e.record(&e.list(), 0, false);
        assert!(!e.record(&e.list(), 0, true), "a success ended the run");
        assert!(e.record(&e.list(), 0, true));
        e.record(&e.list(), 1, true);
        assert!(
            !e.record(&e.list(), 1, true),
            "10% of 4: only one at a time"
        );
    }

    // Behaviour: least-requests compares two distinct endpoints, so with one busy
    // endpoint among three it is never chosen; with equal loads it spreads.
    #[test]
    fn least_requests_prefers_idle() {
        let e = endpoints(3, Balance::LeastRequests, Passive::default());
        let _busy = e.list()[1].state.start();
        assert_eq!(counts(&e, 300, 0)[1], 0);
        drop(_busy);
        let c = counts(&e, 3000, 0);
        assert!(c.iter().all(|&n| n > 500), "{c:?}");
        let e = endpoints(2, Balance::LeastRequests, Passive::default());
        let _busy = e.list()[0].state.start();
        assert_eq!(counts(&e, 100, 0), [0, 100]);
    }

    // Behaviour: an active check flips the verdict only after `unhealthy` failures
    // and `healthy` passes in a row, and a pass ends a passive ejection.
    #[test]
    fn active_checks_need_runs() {
        let hc = HealthCheck {
            path: "/h".parse().unwrap(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        };
        let st = EndpointState::default();
        assert_eq!(st.check_failing(), None);
        assert!(!st.check_result(false, &hc));
        assert!(!st.check_result(false, &hc));
        assert!(!st.check_result(true, &hc) && st.healthy(now_ms()));
        assert!(!st.check_result(false, &hc));
        assert!(!st.check_result(false, &hc));
        assert!(st.check_result(false, &hc));
        assert_eq!(st.check_failing(), Some(true));
        assert!(!st.healthy(now_ms()));
        assert!(!st.check_result(true, &hc));
        assert!(st.check_result(true, &hc));
        assert!(st.healthy(now_ms()));
        st.ejected_until.store(now_ms() + 60_000, Ordering::Relaxed);
        assert!(!st.healthy(now_ms()));
        st.check_result(true, &hc);
        assert!(st.healthy(now_ms()));
    }

    // Behaviour: retries only for idempotent methods, on the listed failures and codes.
    #[test]
    fn retry_rules() {
        let r = Retries {
            attempts: 3,
            on_connect_failure: true,
            on_reset: false,
            on_timeout: false,
            on_status: 1 << 3,
        };
        assert!(r.method_allows(&Method::GET) && r.method_allows(&Method::PUT));
        assert!(!r.method_allows(&Method::POST) && !r.method_allows(&Method::PATCH));
        assert!(!Retries::NONE.method_allows(&Method::GET));
        assert!(r.on_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!r.on_status(StatusCode::BAD_GATEWAY));
        assert!(!r.on_status(StatusCode::OK));
        assert!(
            r.on_failure(&UpstreamFailure::Connect(crate::error::Cause::new(
                std::io::Error::other("x")
            )))
        );
        assert!(!r.on_failure(&UpstreamFailure::Timeout));
    }
}
