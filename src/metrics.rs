//! Prometheus metrics, registered once with `prometheus-client` (the Prometheus
//! project's own Rust client) as typed families: the request path (step 11, the
//! observing layer), the upstream call, the caches, the token service and the
//! listeners hold handles and count; `GET /metrics` on the admin listener encodes.
//!
//! Why `prometheus-client` rather than `metrics` + `metrics-exporter-prometheus`: label
//! sets are Rust types checked at compile time (`#[derive(EncodeLabelSet)]`), families
//! and their HELP text are registered in one place, a handle (`Counter`, `Histogram`)
//! can be resolved once and kept, and it encodes both the Prometheus text format 0.0.4
//! and OpenMetrics 1.0 itself; `metrics` goes through a global recorder keyed by
//! strings, which hides the label set and costs a key lookup per call.
//!
//! Every family is exported from startup (HELP and TYPE even before a first sample,
//! [`Exported`]); label values are bounded: route, upstream, issuer and limit names
//! from the config, fixed reason/result/kind codes, never a raw path or a client value.
//! Values owned elsewhere (per-issuer key fetches, introspection calls, cache sizes,
//! readiness) are read at scrape time by [`Scraped`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::error::DenyReason;

const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `Content-Type` of the Prometheus text format 0.0.4 (a scrape without an OpenMetrics
/// `Accept`).
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of OpenMetrics 1.0 text (when the scraper's `Accept` asks for it).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which exposition format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: `# TYPE x_total counter`, no `# EOF`.
    Text,
    /// OpenMetrics 1.0 text: `# TYPE x counter`, samples `x_total`, ends with `# EOF`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `Accept` lists `application/openmetrics-text` (with a q-value
    /// above 0), else the Prometheus text format, as Prometheus' own scrape
    /// negotiation expects.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let wants = accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && !parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        });
        if wants {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: Arc<str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteReason {
    route: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamResult {
    upstream: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamKind {
    upstream: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamEndpoint {
    upstream: Arc<str>,
    endpoint: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurposeLabel {
    purpose: &'static str,
}

/// The `purpose` values of `tollgate_argon2_checks_total`, exported from startup.
pub const ARGON2_PURPOSES: [&str; 2] = ["token_service", "admin_auth"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLimit {
    route: Arc<str>,
    limit: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheResult {
    cache: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResult {
    issuer: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: &'static str,
}

/// `tollgate_build_info`'s labels: `version`, and `commit` when the build knew it.
type BuildInfo = Vec<(&'static str, &'static str)>;

fn duration_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A metric whose HELP and TYPE lines are written even while it has no sample
/// (`prometheus-client` leaves out an empty family; SPEC exports every family from
/// startup).
#[derive(Debug)]
struct Exported<M>(M);

impl<M: EncodeMetric> EncodeMetric for Exported<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
    fn is_empty(&self) -> bool {
        false
    }
}

/// A hit/miss pair of one cache's `tollgate_cache_requests_total` series, resolved
/// once; a default one counts without being exported (caches built outside a
/// gateway, in tests and `tollgate explain`).
#[derive(Clone, Debug, Default)]
pub struct CacheCounters {
    hit: Counter,
    miss: Counter,
}

impl CacheCounters {
    pub fn hit(&self) {
        self.hit.inc();
    }
    pub fn miss(&self) {
        self.miss.inc();
    }
    pub fn hits(&self) -> u64 {
        self.hit.get()
    }
    pub fn misses(&self) -> u64 {
        self.miss.get()
    }
}

/// A compiled route's handles into `tollgate_requests_total` and
/// `tollgate_request_duration_seconds`, resolved on the route's first request (a
/// label lookup hashes the route name under the family's lock; a handle is an atomic
/// add). Kept on the route, so a reload starts afresh; the handles belong to the
/// [`Metrics`] that resolved them, and any other one looks its series up as before.
#[derive(Debug, Default)]
pub struct RouteSeries(OnceLock<Resolved>);

/// How many statuses of one route keep a handle; a route answering more statuses than
/// this counts the others through the family's lookup.
const STATUSES_KEPT: usize = 4;

#[derive(Debug)]
struct Resolved {
    owner: u64,
    duration: Histogram,
    statuses: [OnceLock<(u16, Counter)>; STATUSES_KEPT],
}

impl Resolved {
    /// The counter of `status`: a kept one, or a free slot filled with `make()`.
    fn counter(&self, status: u16, make: impl Fn() -> Counter) -> Option<&Counter> {
        self.statuses.iter().find_map(|slot| {
            let (s, c) = slot.get_or_init(|| (status, make()));
            (*s == status).then_some(c)
        })
    }
}

/// The `cache` label values of `tollgate_cache_requests_total` and
/// `tollgate_cache_entries`.
pub const CACHE_VERIFIED: &str = "verified_tokens";
pub const CACHE_INTROSPECTION: &str = "introspection";
pub const CACHE_UPSTREAM_TOKENS: &str = "upstream_tokens";

/// Why an upstream exchange failed (`kind` of `tollgate_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be made (refused, unreachable, TLS handshake).
    Connect,
    /// No response head within the upstream's `timeout`.
    Timeout,
    /// The connection broke during the exchange, or the response was malformed.
    Reset,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
        }
    }
}

/// Counts of RFC 7662 introspection calls of one issuer, by result.
#[derive(Debug, Default)]
pub struct IntrospectionCalls {
    pub active: Counter,
    pub inactive: Counter,
    pub failure: Counter,
}

/// A compiled upstream's handle into `tollgate_upstream_request_duration_seconds`,
/// resolved on its first exchange, as [`RouteSeries`] is for a route: the lookup hashed
/// the upstream's name under the family's lock on every forwarded request (~380
/// instructions with the observation, bench/ANALYSIS.md "Session 14").
#[derive(Debug, Default)]
pub struct UpstreamSeries(OnceLock<(u64, Histogram)>);

/// Handles to the upstream families, for the proxy (cheap to clone: the families are
/// shared).
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// The [`Metrics`] these handles belong to (a series resolved by another is not used).
    owner: u64,
    durations: Histograms<UpstreamLabel>,
    errors: Family<UpstreamKind, Counter>,
    retries: Family<UpstreamLabel, Counter>,
}

impl UpstreamMetrics {
    /// One exchange with an upstream: how long until its response head (or the
    /// failure), and why it failed if it did.
    pub fn exchange(
        &self,
        upstream: &Arc<str>,
        series: &UpstreamSeries,
        elapsed: Duration,
        error: Option<UpstreamErrorKind>,
    ) {
        let (owner, duration) = series.0.get_or_init(|| {
            let h = self.durations.get_or_create_owned(&UpstreamLabel {
                upstream: upstream.clone(),
            });
            (self.owner, h)
        });
        if *owner == self.owner {
            duration.observe(elapsed.as_secs_f64());
        } else {
            self.durations
                .get_or_create(&UpstreamLabel {
                    upstream: upstream.clone(),
                })
                .observe(elapsed.as_secs_f64());
        }
        if let Some(kind) = error {
            self.errors
                .get_or_create(&UpstreamKind {
                    upstream: upstream.clone(),
                    kind: kind.as_str(),
                })
                .inc();
        }
    }

    /// A request sent once more (`upstreams[].retries`).
    pub fn retry(&self, upstream: &Arc<str>) {
        self.retries
            .get_or_create(&UpstreamLabel {
                upstream: upstream.clone(),
            })
            .inc();
    }
}

pub struct Metrics {
    /// Tells this registry's handles from another's ([`RouteSeries`]).
    id: u64,
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    durations: Histograms<RouteLabel>,
    denied: Family<RouteReason, Counter>,
    token_fetches: Family<UpstreamResult, Counter>,
    csrf_fetches: Family<UpstreamResult, Counter>,
    csrf_replays: Family<UpstreamLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    client_auth_failures: Family<ReasonLabel, Counter>,
    admin_auth_failures: Family<ReasonLabel, Counter>,
    argon2_checks: Family<PurposeLabel, Counter>,
    rate_limited: Family<RouteLimit, Counter>,
    sign_ins: Family<ResultLabel, Counter>,
    session_refreshes: Family<ResultLabel, Counter>,
    upstream_durations: Histograms<UpstreamLabel>,
    upstream_errors: Family<UpstreamKind, Counter>,
    upstream_retries: Family<UpstreamLabel, Counter>,
    cache_requests: Family<CacheResult, Counter>,
    pub tokens_issued: Counter,
    /// Client connections open now.
    pub open_connections: Gauge,
    /// Requests on the public listener being handled now (load shedding counts these).
    pub in_flight: Gauge,
    /// Requests answered 503 because `max_concurrent_requests` were in flight.
    pub shed_total: Counter,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused_total: Counter,
    pub connections_total: Counter,
    /// What the next scrape reads from outside (filled and taken by [`Metrics::render`]).
    scraped: Arc<Mutex<Option<ScrapeExtras>>>,
    /// One scrape at a time (the scrape-time values are handed over through `scraped`).
    render_lock: Mutex<()>,
}

/// The `result` values of `tollgate_sign_ins_total`, exported from startup.
pub const SIGN_IN_RESULTS: [&str; 5] = [
    "success",
    "state_invalid",
    "idp_error",
    "exchange_failed",
    "id_token_invalid",
];

/// Values read at scrape time from the gateway (per-issuer counts of the config now
/// serving, cache sizes, readiness).
#[derive(Debug, Default)]
pub struct ScrapeExtras {
    /// (issuer, successful fetches, failed fetches)
    pub jwks_fetches: Vec<(Arc<str>, u64, u64)>,
    /// (issuer, active, inactive, failed)
    pub introspections: Vec<(Arc<str>, u64, u64, u64)>,
    pub cache_sizes: Vec<(&'static str, usize)>,
    pub config_version: u64,
    /// What `GET /readyz` would answer (true: 200).
    pub ready: bool,
    /// False while the last reload attempt failed (the previous config still serves).
    pub last_reload_ok: bool,
    /// Failed decisions of the Redis rate-limit store(s), since the start.
    pub redis_store_errors: u64,
    /// Spans sent to the OTLP collector, and spans dropped (queue full, export failed).
    pub trace_spans: (u64, u64),
    /// WebSocket tunnels: opened since the start, open now.
    pub websocket_tunnels: (u64, u64),
    /// Upstream endpoints of the config now serving.
    pub endpoints: Vec<EndpointSample>,
}

/// One upstream endpoint at scrape time.
#[derive(Debug)]
pub struct EndpointSample {
    pub upstream: Arc<str>,
    pub endpoint: Arc<str>,
    pub healthy: bool,
    pub ejections: u64,
    pub in_flight: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        // Counters are registered without `_total`: the encoder appends it (and in the
        // 0.0.4 format writes it on the HELP and TYPE lines too, as before). The
        // registry ends each HELP text with a full stop itself.
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, Exported(m.clone()));
                m
            }};
        }
        let requests = reg!(
            "tollgate_requests",
            "Requests answered, by route and status",
            Family::<RouteStatus, Counter>::default()
        );
        let durations = reg!(
            "tollgate_request_duration_seconds",
            "Time from request head to response head",
            Histograms::<RouteLabel>::new_with_constructor(duration_histogram)
        );
        let denied = reg!(
            "tollgate_auth_denied",
            "Auth denials, by route and reason code",
            Family::<RouteReason, Counter>::default()
        );
        let token_fetches = reg!(
            "tollgate_upstream_token_fetches",
            "Upstream OAuth2 token fetches, by upstream and result",
            Family::<UpstreamResult, Counter>::default()
        );
        let csrf_fetches = reg!(
            "tollgate_upstream_csrf_fetches",
            "X-CSRF-Token fetches (upstreams[].csrf), by upstream and result",
            Family::<UpstreamResult, Counter>::default()
        );
        let csrf_replays = reg!(
            "tollgate_upstream_csrf_replays",
            "Requests sent once more after 403 + X-CSRF-Token: Required, by upstream",
            Family::<UpstreamLabel, Counter>::default()
        );
        let reloads = reg!(
            "tollgate_config_reloads",
            "Config reloads, by result",
            Family::<ResultLabel, Counter>::default()
        );
        let upstream_durations = reg!(
            "tollgate_upstream_request_duration_seconds",
            "Time from sending a request to an upstream until its response head (or the failure), by upstream",
            Histograms::<UpstreamLabel>::new_with_constructor(duration_histogram)
        );
        let upstream_errors = reg!(
            "tollgate_upstream_errors",
            "Upstream exchanges that got no response, by upstream and kind (connect, timeout, reset)",
            Family::<UpstreamKind, Counter>::default()
        );
        let upstream_retries = reg!(
            "tollgate_upstream_retries",
            "Requests sent once more after a failed try (upstreams[].retries), by upstream",
            Family::<UpstreamLabel, Counter>::default()
        );
        let client_auth_failures = reg!(
            "tollgate_client_auth_failures",
            "Failed client authentications at the token service, by reason",
            Family::<ReasonLabel, Counter>::default()
        );
        let admin_auth_failures = reg!(
            "tollgate_admin_auth_failures",
            "Refused admin API credentials (server.admin_auth: basic), by reason (bad_credentials, rate_limited)",
            Family::<ReasonLabel, Counter>::default()
        );
        let argon2_checks = reg!(
            "tollgate_argon2_checks",
            "argon2 password-hash verifications (each tens of milliseconds of CPU), by purpose (token_service, admin_auth)",
            Family::<PurposeLabel, Counter>::default()
        );
        let rate_limited = reg!(
            "tollgate_rate_limited",
            "Requests refused with 429 by a rate limit or quota, by route and limit",
            Family::<RouteLimit, Counter>::default()
        );
        let sign_ins = reg!(
            "tollgate_sign_ins",
            "Browser sign-ins that reached the callback, by result",
            Family::<ResultLabel, Counter>::default()
        );
        let session_refreshes = reg!(
            "tollgate_session_refreshes",
            "Browser sessions' access tokens refreshed at the identity provider, by result",
            Family::<ResultLabel, Counter>::default()
        );
        let tokens_issued = reg!(
            "tollgate_tokens_issued",
            "Tokens issued by the token service",
            Counter::default()
        );
        let cache_requests = reg!(
            "tollgate_cache_requests",
            "Lookups in each cache, by result (hit, miss): hit ratio = hit / (hit + miss)",
            Family::<CacheResult, Counter>::default()
        );
        let open_connections = reg!(
            "tollgate_open_connections",
            "Client connections open now",
            Gauge::default()
        );
        let in_flight = reg!(
            "tollgate_requests_in_flight",
            "Requests on the public listener being handled now",
            Gauge::default()
        );
        let shed_total = reg!(
            "tollgate_requests_shed",
            "Requests answered 503 because limits.max_concurrent_requests were in flight",
            Counter::default()
        );
        let connections_refused_total = reg!(
            "tollgate_connections_refused",
            "Connections answered 503 and closed because limits.max_connections were open",
            Counter::default()
        );
        let connections_total = reg!(
            "tollgate_connections",
            "Client connections accepted",
            Counter::default()
        );
        let build_info = reg!(
            "tollgate_build_info",
            "Always 1: the version (and, when built with TOLLGATE_GIT_COMMIT set, the commit) of this tollgate",
            Family::<BuildInfo, Gauge>::default()
        );
        let mut labels: BuildInfo = vec![("version", env!("CARGO_PKG_VERSION"))];
        if let Some(commit) = option_env!("TOLLGATE_GIT_COMMIT").filter(|c| !c.is_empty()) {
            labels.push(("commit", commit));
        }
        build_info.get_or_create(&labels).set(1);
        let scraped = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(Scraped(scraped.clone())));

        // Series whose label values are all known are there from the start.
        for result in ["success", "failure"] {
            reloads.get_or_create_owned(&ResultLabel { result });
            session_refreshes.get_or_create_owned(&ResultLabel { result });
        }
        for purpose in ARGON2_PURPOSES {
            argon2_checks.get_or_create_owned(&PurposeLabel { purpose });
        }
        for reason in ["bad_credentials", "rate_limited"] {
            admin_auth_failures.get_or_create_owned(&ReasonLabel { reason });
        }
        for result in SIGN_IN_RESULTS {
            sign_ins.get_or_create_owned(&ResultLabel { result });
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            durations,
            denied,
            token_fetches,
            csrf_fetches,
            csrf_replays,
            reloads,
            client_auth_failures,
            admin_auth_failures,
            argon2_checks,
            rate_limited,
            sign_ins,
            session_refreshes,
            upstream_durations,
            upstream_errors,
            upstream_retries,
            cache_requests,
            tokens_issued,
            open_connections,
            in_flight,
            shed_total,
            connections_refused_total,
            connections_total,
            scraped,
            render_lock: Mutex::new(()),
        }
    }

    /// One answered request: `tollgate_requests_total{route, status}` and its duration.
    /// With the route's [`RouteSeries`] the two series are looked up once per route
    /// (and status) instead of per request; they are still created on first use, so
    /// the page shows the same series for the same traffic.
    pub fn request(
        &self,
        route: &Arc<str>,
        series: Option<&RouteSeries>,
        status: u16,
        elapsed: Duration,
    ) {
        let resolved = series.map(|s| {
            s.0.get_or_init(|| Resolved {
                owner: self.id,
                duration: self.durations.get_or_create_owned(&RouteLabel {
                    route: route.clone(),
                }),
                statuses: Default::default(),
            })
        });
        match resolved.filter(|r| r.owner == self.id) {
            Some(r) => {
                match r.counter(status, || {
                    self.requests.get_or_create_owned(&RouteStatus {
                        route: route.clone(),
                        status,
                    })
                }) {
                    Some(c) => {
                        c.inc();
                    }
                    None => self.count_request(route, status),
                };
                r.duration.observe(elapsed.as_secs_f64());
            }
            None => {
                self.count_request(route, status);
                self.durations
                    .get_or_create(&RouteLabel {
                        route: route.clone(),
                    })
                    .observe(elapsed.as_secs_f64());
            }
        }
    }

    fn count_request(&self, route: &Arc<str>, status: u16) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.clone(),
                status,
            })
            .inc();
    }

    pub fn denied(&self, route: &Arc<str>, reason: DenyReason) {
        self.denied
            .get_or_create(&RouteReason {
                route: route.clone(),
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn upstream_token_fetch(&self, upstream: &Arc<str>, ok: bool) {
        self.token_fetches
            .get_or_create(&UpstreamResult {
                upstream: upstream.clone(),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// An X-CSRF-Token fetch (`upstreams[].csrf`).
    pub fn csrf_fetch(&self, upstream: &Arc<str>, ok: bool) {
        self.csrf_fetches
            .get_or_create(&UpstreamResult {
                upstream: upstream.clone(),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// A request sent once more after `403` + `X-CSRF-Token: Required`.
    pub fn csrf_replay(&self, upstream: &Arc<str>) {
        self.csrf_replays
            .get_or_create(&UpstreamLabel {
                upstream: upstream.clone(),
            })
            .inc();
    }

    /// Handles for the proxy's upstream families.
    pub fn upstream(&self) -> UpstreamMetrics {
        UpstreamMetrics {
            owner: self.id,
            durations: self.upstream_durations.clone(),
            errors: self.upstream_errors.clone(),
            retries: self.upstream_retries.clone(),
        }
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    pub fn client_auth_failure(&self, reason: &'static str) {
        self.client_auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Admin API credentials refused (`reason`: `bad_credentials` or `rate_limited`).
    pub fn admin_auth_failure(&self, reason: &'static str) {
        self.admin_auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// One argon2 verification started (`purpose`: one of [`ARGON2_PURPOSES`]).
    pub fn argon2_check(&self, purpose: &'static str) {
        self.argon2_checks
            .get_or_create(&PurposeLabel { purpose })
            .inc();
    }

    /// A request refused 429 by `limit` on `route`.
    pub fn rate_limited(&self, route: &Arc<str>, limit: &Arc<str>) {
        self.rate_limited
            .get_or_create(&RouteLimit {
                route: route.clone(),
                limit: limit.clone(),
            })
            .inc();
    }

    /// A browser sign-in ended at the callback (`result`: one of [`SIGN_IN_RESULTS`]).
    pub fn sign_in(&self, result: &'static str) {
        self.sign_ins.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn session_refresh(&self, ok: bool) {
        self.session_refreshes
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// The hit and miss counters of `cache` (exported from now on, at 0).
    pub fn cache_counters(&self, cache: &'static str) -> CacheCounters {
        CacheCounters {
            hit: self.cache_requests.get_or_create_owned(&CacheResult {
                cache,
                result: "hit",
            }),
            miss: self.cache_requests.get_or_create_owned(&CacheResult {
                cache,
                result: "miss",
            }),
        }
    }

    /// The whole `/metrics` page in `format`, with `extras` read from the gateway now.
    pub fn render(&self, extras: ScrapeExtras, format: Format) -> String {
        let _one = self.render_lock.lock().unwrap_or_else(|e| e.into_inner());
        *self.scraped.lock().unwrap_or_else(|e| e.into_inner()) = Some(extras);
        let mut out = String::with_capacity(8192);
        let r = match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        // Writing into a String only fails if an encoder refuses a value; none of ours do.
        if let Err(e) = r {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        self.scraped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        out
    }
}

/// The families whose values live outside [`Metrics`], read once per scrape.
#[derive(Debug)]
struct Scraped(Arc<Mutex<Option<ScrapeExtras>>>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let empty = ScrapeExtras::default();
        let x = guard.as_ref().unwrap_or(&empty);

        let mut m = encoder.encode_descriptor(
            "tollgate_introspection_requests",
            "RFC 7662 introspection calls, by issuer and result (active, inactive, failure).",
            None,
            MetricType::Counter,
        )?;
        for (issuer, active, inactive, failed) in &x.introspections {
            for (result, n) in [
                ("active", active),
                ("inactive", inactive),
                ("failure", failed),
            ] {
                ConstCounter::new(*n).encode(m.encode_family(&IssuerResult {
                    issuer: issuer.clone(),
                    result,
                })?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "tollgate_jwks_fetches",
            "Issuer key set fetches, by issuer and result.",
            None,
            MetricType::Counter,
        )?;
        for (issuer, ok, failed) in &x.jwks_fetches {
            for (result, n) in [("success", ok), ("failure", failed)] {
                ConstCounter::new(*n).encode(m.encode_family(&IssuerResult {
                    issuer: issuer.clone(),
                    result,
                })?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "tollgate_store_errors",
            "Rate-limit decisions a store could not make (timeouts, connection and server errors, fail-fast refusals), by store.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(x.redis_store_errors)
            .encode(m.encode_family(&StoreLabel { store: "redis" })?)?;
        let m = encoder.encode_descriptor(
            "tollgate_trace_spans_exported",
            "Spans the OTLP collector accepted (tracing.otlp_endpoint).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(x.trace_spans.0).encode(m)?;
        let m = encoder.encode_descriptor(
            "tollgate_trace_spans_dropped",
            "Spans dropped without reaching the collector: export failed or timed out, or the queue was full.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(x.trace_spans.1).encode(m)?;
        let mut m = encoder.encode_descriptor(
            "tollgate_cache_entries",
            "Entries in each cache.",
            None,
            MetricType::Gauge,
        )?;
        for (cache, n) in &x.cache_sizes {
            ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX))
                .encode(m.encode_family(&CacheLabel { cache })?)?;
        }
        let m = encoder.encode_descriptor(
            "tollgate_websocket_upgrades",
            "WebSocket upgrades the upstream accepted (tunnels opened).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(x.websocket_tunnels.0).encode(m)?;
        let m = encoder.encode_descriptor(
            "tollgate_websocket_tunnels_open",
            "WebSocket tunnels open now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(x.websocket_tunnels.1).unwrap_or(i64::MAX)).encode(m)?;
        let mut m = encoder.encode_descriptor(
            "tollgate_upstream_endpoint_healthy",
            "1 when the upstream endpoint takes requests (not ejected, not failing its health check), by upstream and endpoint.",
            None,
            MetricType::Gauge,
        )?;
        for e in &x.endpoints {
            ConstGauge::new(i64::from(e.healthy)).encode(m.encode_family(
                &UpstreamEndpoint {
                    upstream: e.upstream.clone(),
                    endpoint: e.endpoint.clone(),
                },
            )?)?;
        }
        let mut m = encoder.encode_descriptor(
            "tollgate_upstream_ejections",
            "Times an upstream endpoint was ejected after failures in a row (upstreams[].passive), by upstream and endpoint.",
            None,
            MetricType::Counter,
        )?;
        for e in &x.endpoints {
            ConstCounter::new(e.ejections).encode(m.encode_family(&UpstreamEndpoint {
                upstream: e.upstream.clone(),
                endpoint: e.endpoint.clone(),
            })?)?;
        }
        let mut m = encoder.encode_descriptor(
            "tollgate_upstream_endpoint_requests_in_flight",
            "Requests in flight on each upstream endpoint (what least-requests compares), by upstream and endpoint.",
            None,
            MetricType::Gauge,
        )?;
        for e in &x.endpoints {
            ConstGauge::new(i64::try_from(e.in_flight).unwrap_or(i64::MAX)).encode(
                m.encode_family(&UpstreamEndpoint {
                    upstream: e.upstream.clone(),
                    endpoint: e.endpoint.clone(),
                })?,
            )?;
        }
        let m = encoder.encode_descriptor(
            "tollgate_config_version",
            "Version number of the config now serving.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(x.config_version).unwrap_or(i64::MAX)).encode(m)?;
        let m = encoder.encode_descriptor(
            "tollgate_config_last_reload_successful",
            "1 when the last config reload succeeded (or none was tried), 0 when it failed and an older config serves.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(x.last_reload_ok)).encode(m)?;
        let m = encoder.encode_descriptor(
            "tollgate_ready",
            "1 when GET /readyz answers 200 (config loaded, listeners up, first key fetches done).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(x.ready)).encode(m)?;
        Ok(())
    }
}
