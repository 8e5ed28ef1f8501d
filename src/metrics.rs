//! Prometheus metrics, written by hand in the text exposition format so that SPEC's
//! family names are exact and every family is exported from startup (HELP/TYPE lines
//! even before the first sample). The hot path touches one sharded map entry and a
//! few atomics per request. Label values are bounded: route names, never raw paths.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::error::DenyReason;

const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    requests: DashMap<(Arc<str>, u16), AtomicU64>,
    durations: DashMap<Arc<str>, Histogram>,
    denied: DashMap<(Arc<str>, &'static str), AtomicU64>,
    token_fetches: DashMap<(Arc<str>, &'static str), AtomicU64>,
    csrf_fetches: DashMap<(Arc<str>, &'static str), AtomicU64>,
    csrf_replays: DashMap<Arc<str>, AtomicU64>,
    reload_success: AtomicU64,
    reload_failure: AtomicU64,
    pub open_connections: AtomicI64,
    /// Requests on the public listener being handled now (load shedding counts these).
    pub in_flight: AtomicUsize,
    /// Requests answered 503 because `max_concurrent_requests` were in flight.
    pub shed_total: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused_total: AtomicU64,
    pub connections_total: AtomicU64,
    pub client_auth_failures: DashMap<&'static str, AtomicU64>,
    pub tokens_issued: AtomicU64,
    rate_limited: DashMap<(Arc<str>, Arc<str>), AtomicU64>,
    /// Browser sign-ins completed at the callback, by result.
    sign_ins: DashMap<&'static str, AtomicU64>,
    /// Session refreshes at the identity provider: [success, failure].
    session_refreshes: [AtomicU64; 2],
}

/// The `result` values of `tollgate_sign_ins_total`, exported from startup.
pub const SIGN_IN_RESULTS: [&str; 5] = [
    "success",
    "state_invalid",
    "idp_error",
    "exchange_failed",
    "id_token_invalid",
];

fn inc<K: std::hash::Hash + Eq>(map: &DashMap<K, AtomicU64>, k: K) {
    if let Some(c) = map.get(&k) {
        c.fetch_add(1, Ordering::Relaxed);
        return;
    }
    map.entry(k).or_default().fetch_add(1, Ordering::Relaxed);
}

/// Extra gauges read at scrape time (cache sizes, key fetch counts).
pub struct ScrapeExtras {
    pub jwks_fetches: Vec<(String, u64, u64)>,
    /// (issuer, active, inactive, failed)
    pub introspections: Vec<(String, [u64; 3])>,
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
}

impl Metrics {
    pub fn request(&self, route: &Arc<str>, status: u16, elapsed: Duration) {
        let key = (route.clone(), status);
        inc(&self.requests, key);
        let secs = elapsed.as_secs_f64();
        let h = match self.durations.get(route) {
            Some(h) => h,
            None => {
                self.durations.entry(route.clone()).or_default();
                match self.durations.get(route) {
                    Some(h) => h,
                    None => return,
                }
            }
        };
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn denied(&self, route: &Arc<str>, reason: DenyReason) {
        inc(&self.denied, (route.clone(), reason.as_str()));
    }

    pub fn upstream_token_fetch(&self, upstream: &Arc<str>, ok: bool) {
        inc(
            &self.token_fetches,
            (upstream.clone(), if ok { "success" } else { "failure" }),
        );
    }

    /// An X-CSRF-Token fetch (`upstreams[].csrf`).
    pub fn csrf_fetch(&self, upstream: &Arc<str>, ok: bool) {
        inc(
            &self.csrf_fetches,
            (upstream.clone(), if ok { "success" } else { "failure" }),
        );
    }

    /// A request sent once more after `403` + `X-CSRF-Token: Required`.
    pub fn csrf_replay(&self, upstream: &Arc<str>) {
        inc(&self.csrf_replays, upstream.clone());
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reload_success
        } else {
            &self.reload_failure
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_auth_failure(&self, reason: &'static str) {
        inc(&self.client_auth_failures, reason);
    }

    /// A request refused 429 by `limit` on `route`.
    pub fn rate_limited(&self, route: &Arc<str>, limit: &Arc<str>) {
        inc(&self.rate_limited, (route.clone(), limit.clone()));
    }

    /// A browser sign-in ended at the callback (`result`: one of [`SIGN_IN_RESULTS`]).
    pub fn sign_in(&self, result: &'static str) {
        inc(&self.sign_ins, result);
    }

    pub fn session_refresh(&self, ok: bool) {
        self.session_refreshes[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, extras: &ScrapeExtras) -> String {
        let mut o = String::with_capacity(4096);
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };

        header(
            &mut o,
            "tollgate_requests_total",
            "counter",
            "Requests answered, by route and status.",
        );
        let mut rows: Vec<_> = self
            .requests
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((route, status), v) in rows {
            let _ = writeln!(
                o,
                "tollgate_requests_total{{route=\"{}\",status=\"{status}\"}} {v}",
                esc(&route)
            );
        }

        header(
            &mut o,
            "tollgate_request_duration_seconds",
            "histogram",
            "Time from request head to response head.",
        );
        let mut routes: Vec<Arc<str>> = self.durations.iter().map(|e| e.key().clone()).collect();
        routes.sort();
        for route in routes {
            let Some(h) = self.durations.get(&route) else {
                continue;
            };
            let r = esc(&route);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "tollgate_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "tollgate_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                o,
                "tollgate_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                o,
                "tollgate_request_duration_seconds_count{{route=\"{r}\"}} {count}"
            );
        }

        header(
            &mut o,
            "tollgate_auth_denied_total",
            "counter",
            "Auth denials, by route and reason code.",
        );
        let mut rows: Vec<_> = self
            .denied
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((route, reason), v) in rows {
            let _ = writeln!(
                o,
                "tollgate_auth_denied_total{{route=\"{}\",reason=\"{reason}\"}} {v}",
                esc(&route)
            );
        }

        header(
            &mut o,
            "tollgate_upstream_token_fetches_total",
            "counter",
            "Upstream OAuth2 token fetches, by upstream and result.",
        );
        let mut rows: Vec<_> = self
            .token_fetches
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((up, result), v) in rows {
            let _ = writeln!(
                o,
                "tollgate_upstream_token_fetches_total{{upstream=\"{}\",result=\"{result}\"}} {v}",
                esc(&up)
            );
        }

        header(
            &mut o,
            "tollgate_upstream_csrf_fetches_total",
            "counter",
            "X-CSRF-Token fetches (upstreams[].csrf), by upstream and result.",
        );
        let mut rows: Vec<_> = self
            .csrf_fetches
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((up, result), v) in rows {
            let _ = writeln!(
                o,
                "tollgate_upstream_csrf_fetches_total{{upstream=\"{}\",result=\"{result}\"}} {v}",
                esc(&up)
            );
        }
        header(
            &mut o,
            "tollgate_upstream_csrf_replays_total",
            "counter",
            "Requests sent once more after 403 + X-CSRF-Token: Required, by upstream.",
        );
        let mut rows: Vec<_> = self
            .csrf_replays
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for (up, v) in rows {
            let _ = writeln!(
                o,
                "tollgate_upstream_csrf_replays_total{{upstream=\"{}\"}} {v}",
                esc(&up)
            );
        }

        header(
            &mut o,
            "tollgate_config_reloads_total",
            "counter",
            "Config reloads, by result.",
        );
        let _ = writeln!(
            o,
            "tollgate_config_reloads_total{{result=\"success\"}} {}",
            self.reload_success.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "tollgate_config_reloads_total{{result=\"failure\"}} {}",
            self.reload_failure.load(Ordering::Relaxed)
        );

        header(
            &mut o,
            "tollgate_introspection_requests_total",
            "counter",
            "RFC 7662 introspection calls, by issuer and result (active, inactive, failure).",
        );
        for (issuer, counts) in &extras.introspections {
            let i = esc(issuer);
            for (result, n) in ["active", "inactive", "failure"].iter().zip(counts) {
                let _ = writeln!(
                    o,
                    "tollgate_introspection_requests_total{{issuer=\"{i}\",result=\"{result}\"}} {n}"
                );
            }
        }

        header(
            &mut o,
            "tollgate_jwks_fetches_total",
            "counter",
            "Issuer key set fetches, by issuer and result.",
        );
        for (issuer, ok, failed) in &extras.jwks_fetches {
            let i = esc(issuer);
            let _ = writeln!(
                o,
                "tollgate_jwks_fetches_total{{issuer=\"{i}\",result=\"success\"}} {ok}"
            );
            let _ = writeln!(
                o,
                "tollgate_jwks_fetches_total{{issuer=\"{i}\",result=\"failure\"}} {failed}"
            );
        }

        header(
            &mut o,
            "tollgate_client_auth_failures_total",
            "counter",
            "Failed client authentications at the token service, by reason.",
        );
        for e in self.client_auth_failures.iter() {
            let _ = writeln!(
                o,
                "tollgate_client_auth_failures_total{{reason=\"{}\"}} {}",
                e.key(),
                e.value().load(Ordering::Relaxed)
            );
        }

        header(
            &mut o,
            "tollgate_rate_limited_total",
            "counter",
            "Requests refused with 429 by a rate limit or quota, by route and limit.",
        );
        let mut rows: Vec<_> = self
            .rate_limited
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((route, limit), v) in rows {
            let _ = writeln!(
                o,
                "tollgate_rate_limited_total{{route=\"{}\",limit=\"{}\"}} {v}",
                esc(&route),
                esc(&limit)
            );
        }
        header(
            &mut o,
            "tollgate_store_errors_total",
            "counter",
            "Rate-limit decisions a store could not make (timeouts, connection and server errors, fail-fast refusals), by store.",
        );
        let _ = writeln!(
            o,
            "tollgate_store_errors_total{{store=\"redis\"}} {}",
            extras.redis_store_errors
        );
        header(
            &mut o,
            "tollgate_trace_spans_exported_total",
            "counter",
            "Spans the OTLP collector accepted (tracing.otlp_endpoint).",
        );
        let _ = writeln!(
            o,
            "tollgate_trace_spans_exported_total {}",
            extras.trace_spans.0
        );
        header(
            &mut o,
            "tollgate_trace_spans_dropped_total",
            "counter",
            "Spans dropped without reaching the collector: export failed or timed out, or the queue was full.",
        );
        let _ = writeln!(
            o,
            "tollgate_trace_spans_dropped_total {}",
            extras.trace_spans.1
        );
        header(
            &mut o,
            "tollgate_sign_ins_total",
            "counter",
            "Browser sign-ins that reached the callback, by result.",
        );
        for result in SIGN_IN_RESULTS {
            let n = self
                .sign_ins
                .get(result)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            let _ = writeln!(o, "tollgate_sign_ins_total{{result=\"{result}\"}} {n}");
        }
        header(
            &mut o,
            "tollgate_session_refreshes_total",
            "counter",
            "Browser sessions' access tokens refreshed at the identity provider, by result.",
        );
        for (i, result) in ["success", "failure"].iter().enumerate() {
            let _ = writeln!(
                o,
                "tollgate_session_refreshes_total{{result=\"{result}\"}} {}",
                self.session_refreshes[i].load(Ordering::Relaxed)
            );
        }

        scalar(
            &mut o,
            "tollgate_tokens_issued_total",
            "counter",
            "Tokens issued by the token service.",
            self.tokens_issued.load(Ordering::Relaxed),
        );

        header(
            &mut o,
            "tollgate_cache_entries",
            "gauge",
            "Entries in each cache.",
        );
        for (name, n) in &extras.cache_sizes {
            let _ = writeln!(o, "tollgate_cache_entries{{cache=\"{name}\"}} {n}");
        }

        scalar(
            &mut o,
            "tollgate_open_connections",
            "gauge",
            "Client connections open now.",
            self.open_connections.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "tollgate_requests_in_flight",
            "gauge",
            "Requests on the public listener being handled now.",
            self.in_flight.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "tollgate_requests_shed_total",
            "counter",
            "Requests answered 503 because limits.max_concurrent_requests were in flight.",
            self.shed_total.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "tollgate_connections_refused_total",
            "counter",
            "Connections answered 503 and closed because limits.max_connections were open.",
            self.connections_refused_total.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "tollgate_connections_total",
            "counter",
            "Client connections accepted.",
            self.connections_total.load(Ordering::Relaxed),
        );
        header(
            &mut o,
            "tollgate_config_version",
            "gauge",
            "Version number of the config now serving.",
        );
        let _ = writeln!(o, "tollgate_config_version {}", extras.config_version);
        scalar(
            &mut o,
            "tollgate_config_last_reload_successful",
            "gauge",
            "1 when the last config reload succeeded (or none was tried), 0 when it failed and an older config serves.",
            u8::from(extras.last_reload_ok),
        );
        scalar(
            &mut o,
            "tollgate_ready",
            "gauge",
            "1 when GET /readyz answers 200 (config loaded, listeners up, first key fetches done).",
            u8::from(extras.ready),
        );
        o
    }
}

/// A family with one unlabelled series.
fn scalar(o: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(o, name, kind, help);
    let _ = writeln!(o, "{name} {value}");
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}
