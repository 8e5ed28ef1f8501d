//! The running gateway: the current [`Runtime`] behind an `ArcSwap`, plus everything
//! that outlives a reload (caches, key stores, HTTP clients, metrics, reload status).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::auth::{AuthCaches, IssuerKind};
use crate::config::{self, ConfigError, LoadTimings, Registry};
use crate::credentials::TokenCache;
use crate::decisions::Decisions;
use crate::encoding::rfc3339;
use crate::metrics::{
    Metrics, ScrapeExtras, CACHE_INTROSPECTION, CACHE_UPSTREAM_TOKENS, CACHE_VERIFIED,
};
use crate::runtime::Runtime;
use crate::session::SessionCaches;
use crate::upstream_session::Sessions;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub version: u64,
    pub config_hash: String,
    pub loaded_at: Option<String>,
    pub last_reload_at: Option<String>,
    pub last_reload_trigger: Option<String>,
    pub last_reload_ok: Option<bool>,
    pub last_reload_errors: Vec<String>,
    /// How long the last reload took, in total and per phase.
    pub last_reload_timings: Option<ReloadTimings>,
}

/// Milliseconds spent in each phase of a reload (`GET /admin/status` and the
/// "config reloaded" log line). A phase a failed reload did not reach is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ReloadTimings {
    /// Reading the file (and hashing it for change detection).
    pub read_ms: f64,
    /// YAML -> the config model: syntax, types, unknown keys, `${...}`.
    pub parse_ms: f64,
    /// Every check on the values, and the runtime model built from them.
    pub compile_ms: f64,
    /// Publishing the new config (the atomic swap and what goes with it).
    pub swap_ms: f64,
    /// From the start of the reload until the new config is live (including the
    /// wait for a blocking thread).
    pub total_ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

pub struct Gateway {
    pub runtime: ArcSwap<Runtime>,
    pub config_path: PathBuf,
    pub registry: Registry,
    pub metrics: Metrics,
    pub auth_caches: Arc<AuthCaches>,
    pub tokens: TokenCache,
    /// Upstream sessions (`upstreams[].csrf`): tokens and cookie jars.
    pub sessions: Sessions,
    /// Browser sessions' refreshes in flight, and their results for a short while.
    pub login_sessions: SessionCaches,
    /// Span export (`tracing:`), following reloads.
    pub tracing: crate::otel::Tracing,
    pub status: Mutex<ReloadStatus>,
    /// Recent refused and failed requests, by request id (`GET /admin/decisions`).
    pub decisions: Decisions,
    /// WebSocket tunnels (`upgrade`).
    pub tunnels: crate::conn::Tunnels,
    pub listeners_up: AtomicBool,
    /// SHA-256 of the file content of the last load or reload attempt, successful or
    /// not: the watcher reloads when the file differs from it.
    last_attempt_hash: Mutex<String>,
    next_version: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Gateway {
    /// Loads the config for the first time, and writes the files it needs that do not
    /// exist yet (a signing key to create). Starts nothing yet.
    pub fn load(path: PathBuf) -> Result<Arc<Gateway>, ConfigError> {
        Gateway::load_with(path, Registry::default())
    }

    /// [`Gateway::load`] with a registry set up by the caller (`tollgate::layer` loads
    /// with `embedded` set: routes need no upstream).
    pub fn load_with(path: PathBuf, registry: Registry) -> Result<Arc<Gateway>, ConfigError> {
        let mut rt = config::load(&path, &registry)?;
        rt.create_files()
            .map_err(|(key, e)| ConfigError::at_key_of(&path, key, e))?;
        Ok(Gateway::with_runtime(path, registry, rt))
    }

    /// A gateway serving `rt`, a runtime the caller loaded from `path` with `registry`,
    /// without writing anything (`tollgate explain` and `tollgate test`: a signing key
    /// that `create_signing_key` would create stays in memory; `tollgate test` also
    /// swaps chosen issuers' keys for a test key first).
    pub fn with_runtime(path: PathBuf, registry: Registry, mut rt: Runtime) -> Arc<Gateway> {
        rt.version = 1;
        let rt_hash = config::inputs_hash(&rt.hash, &rt.files);
        let status = ReloadStatus {
            version: 1,
            config_hash: rt.hash.clone(),
            loaded_at: Some(rfc3339(rt.loaded_at)),
            ..Default::default()
        };
        let metrics = Metrics::new();
        let auth_caches = AuthCaches::counted(
            metrics.cache_counters(CACHE_VERIFIED),
            metrics.cache_counters(CACHE_INTROSPECTION),
        );
        let tokens = TokenCache::counted(metrics.cache_counters(CACHE_UPSTREAM_TOKENS));
        Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(rt),
            config_path: path,
            registry,
            metrics,
            auth_caches: Arc::new(auth_caches),
            tokens,
            sessions: Sessions::default(),
            login_sessions: SessionCaches::default(),
            tracing: crate::otel::Tracing::default(),
            status: Mutex::new(status),
            decisions: Decisions::default(),
            tunnels: Default::default(),
            listeners_up: AtomicBool::new(false),
            last_attempt_hash: Mutex::new(rt_hash),
            next_version: AtomicU64::new(2),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn current(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// SHA-256 (hex) of the file content the last load or reload attempt read.
    pub fn last_attempt_hash(&self) -> String {
        self.last_attempt_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts background work for the current runtime (issuer key refreshers, upstream
    /// endpoints' health checks).
    pub fn start_background(&self) {
        // The exporter follows the config: started here, and after every reload.
        self.tracing.apply(self.current().tracing.as_ref());
        let rt = self.current();
        for issuer in &rt.issuers {
            if let IssuerKind::Jwt(store) = &issuer.kind {
                store.start();
            }
        }
        for up in &rt.upstreams {
            crate::health::start(up);
            crate::discovery::start(up, &rt.server.dns);
        }
    }

    /// Stops the current runtime's upstream health checks (the gateway stops).
    pub fn stop_background(&self) {
        for up in &self.current().upstreams {
            up.stop_background();
        }
    }

    /// Ready: config loaded, listeners up, every issuer's first key fetch finished, and
    /// every `dns: per_address` upstream's first resolution finished (successfully or
    /// not: an upstream whose name has no address is shown by /readyz, but does not
    /// hold the whole gateway back).
    pub fn ready(&self) -> bool {
        let rt = self.current();
        self.listeners_up.load(Ordering::Acquire)
            && rt.issuers.iter().all(|i| match &i.kind {
                IssuerKind::Jwt(s) => s.first_fetch_done(),
                IssuerKind::Introspection(_) => true,
            })
            && rt
                .upstreams
                .iter()
                .filter_map(|u| u.dns.as_ref())
                .all(|d| d.target.first_done())
    }

    /// Reloads the config file. The new config is compiled completely before it
    /// replaces the old one; on any problem the old one keeps serving.
    pub async fn reload(self: &Arc<Self>, trigger: &str) -> Result<u64, ConfigError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let started = Instant::now();
        let gw = self.clone();
        let file = self.config_path.display().to_string();
        let (result, load_timings) = tokio::task::spawn_blocking(move || {
            let mut timings = LoadTimings::default();
            let read_started = Instant::now();
            let bytes = std::fs::read(&gw.config_path);
            // Remember what was tried, valid or not, so that the watcher reports an
            // invalid file once and retries as soon as it changes again.
            if let Ok(bytes) = &bytes {
                *gw.last_attempt_hash
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = config::inputs_hash(
                    &crate::encoding::hex(&Sha256::digest(bytes)),
                    &gw.current().files,
                );
            }
            timings.read = read_started.elapsed();
            // The bytes just hashed are the ones compiled (the file is read once).
            let result = config::load_bytes(&gw.config_path, bytes, &gw.registry, &mut timings);
            (result, timings)
        })
        .await
        .unwrap_or_else(|e| {
            (
                Err(ConfigError::at(
                    &file,
                    1,
                    1,
                    "",
                    format!("reload task failed: {e}"),
                )),
                LoadTimings::default(),
            )
        });
        let swap_started = Instant::now();
        let result = result.and_then(|rt| {
            // The listener's protocol is fixed when it is bound: turning TLS on or off
            // would make it speak the wrong one to every client.
            let old = self.current();
            if rt.server.tls.is_some() != old.server.tls.is_some() {
                let (line, column) = tls_key_position(&rt.path);
                let message = if rt.server.tls.is_some() {
                    "TLS cannot be turned on by a reload; restart tollgate"
                } else {
                    "TLS cannot be turned off by a reload; restart tollgate"
                };
                return Err(ConfigError::at(
                    &file,
                    line,
                    column,
                    "server.tls",
                    message.into(),
                ));
            }
            Ok(rt)
        });
        // Only a config that is about to serve writes the files it needs (validate and
        // explain never do).
        let result = result.and_then(|mut rt| {
            rt.create_files()
                .map_err(|(key, e)| ConfigError::at_key_of(&self.config_path, key, e))?;
            Ok(rt)
        });
        let now = SystemTime::now();
        let mut timings = ReloadTimings {
            read_ms: ms(load_timings.read),
            parse_ms: ms(load_timings.parse),
            compile_ms: ms(load_timings.compile),
            swap_ms: 0.0,
            total_ms: 0.0,
        };
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_reload_at = Some(rfc3339(now));
        status.last_reload_trigger = Some(trigger.to_owned());
        match result {
            Ok(mut rt) => {
                let old = self.current();
                if rt.server.listen != old.server.listen
                    || rt.server.admin_listen != old.server.admin_listen
                    || rt.server.redirect_listen != old.server.redirect_listen
                    || rt.server.decision_listen != old.server.decision_listen
                {
                    tracing::warn!(
                        "listen addresses changed in the config; they apply after a restart"
                    );
                }
                if rt.server.limits.max_connections != old.server.limits.max_connections {
                    tracing::warn!(
                        "server.limits.max_connections changed in the config; it applies after a restart"
                    );
                }
                drop(old);
                rt.version = self.next_version.fetch_add(1, Ordering::Relaxed);
                let version = rt.version;
                status.version = version;
                status.config_hash = rt.hash.clone();
                // Exactly the text that was compiled (the file may have changed since
                // it was hashed above).
                *self
                    .last_attempt_hash
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = config::inputs_hash(&rt.hash, &rt.files);
                status.loaded_at = Some(rfc3339(rt.loaded_at));
                status.last_reload_ok = Some(true);
                status.last_reload_errors.clear();
                let rt = Arc::new(rt);
                let previous = self.runtime.swap(rt.clone());
                // The old config's health checks end now, not when its last request does.
                for up in &previous.upstreams {
                    up.stop_background();
                }
                self.forget_unused(&rt);
                self.start_background();
                // Freeing a large config takes milliseconds: not on a request worker.
                // (Requests still holding it free it when they finish, as before.)
                tokio::task::spawn_blocking(move || drop(previous));
                timings.swap_ms = ms(swap_started.elapsed());
                timings.total_ms = ms(started.elapsed());
                status.last_reload_timings = Some(timings);
                self.metrics.reload(true);
                tracing::info!(
                    version,
                    trigger,
                    total_ms = timings.total_ms,
                    read_ms = timings.read_ms,
                    parse_ms = timings.parse_ms,
                    compile_ms = timings.compile_ms,
                    swap_ms = timings.swap_ms,
                    "config reloaded"
                );
                Ok(version)
            }
            Err(e) => {
                timings.total_ms = ms(started.elapsed());
                status.last_reload_ok = Some(false);
                status.last_reload_errors = e.lines();
                status.last_reload_timings = Some(timings);
                self.metrics.reload(false);
                tracing::error!(
                    trigger,
                    problems = e.problems.len(),
                    total_ms = timings.total_ms,
                    "config reload rejected; the previous config keeps serving"
                );
                for line in e.lines() {
                    tracing::error!("{line}");
                }
                Err(e)
            }
        }
    }

    /// Key stores no issuer uses any more are dropped (their refreshers stop).
    fn forget_unused(&self, rt: &Runtime) {
        let live: Vec<*const crate::auth::jwks::KeyStore> = rt
            .issuers
            .iter()
            .filter_map(|i| match &i.kind {
                IssuerKind::Jwt(s) => Some(Arc::as_ptr(s)),
                _ => None,
            })
            .collect();
        self.registry
            .key_stores
            .retain(|_, s| live.contains(&Arc::as_ptr(s)));
        // Endpoint states of endpoints no longer in the config are forgotten.
        let endpoints: std::collections::HashSet<*const crate::balancer::EndpointState> = rt
            .upstreams
            .iter()
            .filter_map(|u| u.endpoints.as_ref())
            .flat_map(|e| {
                e.list()
                    .iter()
                    .map(|ep| Arc::as_ptr(&ep.state))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.registry
            .endpoint_states
            .retain(|_, s| endpoints.contains(&Arc::as_ptr(s)));
        // Names no upstream resolves per address any more.
        let targets: std::collections::HashSet<*const crate::dns::Target> = rt
            .upstreams
            .iter()
            .filter_map(|u| u.dns.as_ref().map(|d| Arc::as_ptr(&d.target)))
            .collect();
        self.registry
            .dns_targets
            .retain(|_, t| targets.contains(&Arc::as_ptr(t)));
    }

    /// `POST /admin/caches/flush`: upstream tokens, introspection results and
    /// verified-token results. JWKS key sets are kept.
    pub fn flush_caches(&self) -> serde_json::Value {
        let upstream_tokens = self.tokens.clear();
        let introspection = self.auth_caches.introspection.clear();
        let verified = self.auth_caches.verified.clear();
        let upstream_sessions = self.sessions.clear();
        tracing::info!(
            upstream_tokens,
            introspection,
            verified,
            upstream_sessions,
            "caches flushed"
        );
        serde_json::json!({
            "flushed": {
                "upstream_tokens": upstream_tokens,
                "introspection_results": introspection,
                "verified_tokens": verified,
                "upstream_sessions": upstream_sessions,
            },
            "kept": ["jwks"],
        })
    }

    pub fn scrape_extras(&self) -> ScrapeExtras {
        let rt = self.current();
        let jwks_fetches = rt
            .issuers
            .iter()
            .filter_map(|i| match &i.kind {
                IssuerKind::Jwt(s) => {
                    Some((i.name.clone(), s.fetches_ok.get(), s.fetches_failed.get()))
                }
                _ => None,
            })
            .collect();
        let introspections = rt
            .issuers
            .iter()
            .filter_map(|i| match &i.kind {
                IssuerKind::Introspection(x) => Some((
                    i.name.clone(),
                    x.calls.active.get(),
                    x.calls.inactive.get(),
                    x.calls.failure.get(),
                )),
                _ => None,
            })
            .collect();
        ScrapeExtras {
            jwks_fetches,
            introspections,
            cache_sizes: vec![
                (CACHE_VERIFIED, self.auth_caches.verified.len()),
                (CACHE_INTROSPECTION, self.auth_caches.introspection.len()),
                (CACHE_UPSTREAM_TOKENS, self.tokens.tokens.len()),
            ],
            config_version: rt.version,
            ready: self.ready(),
            last_reload_ok: self
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_reload_ok
                != Some(false),
            redis_store_errors: self.registry.rate_limit_stores.redis_errors(),
            trace_spans: (
                self.tracing.counters.exported.load(Ordering::Relaxed),
                self.tracing.counters.dropped.load(Ordering::Relaxed),
            ),
            websocket_tunnels: (
                self.tunnels.opened.load(Ordering::Relaxed),
                self.tunnels.open.load(Ordering::Relaxed),
            ),
            endpoints: endpoint_samples(&rt),
        }
    }
}

/// Every endpoint of every upstream with [`crate::balancer::Endpoints`], for a scrape.
fn endpoint_samples(rt: &Runtime) -> Vec<crate::metrics::EndpointSample> {
    let now = crate::balancer::now_ms();
    rt.upstreams
        .iter()
        .filter_map(|u| u.endpoints.as_ref().map(|e| (u, e)))
        .flat_map(|(u, e)| {
            e.list()
                .iter()
                .map(|ep| crate::metrics::EndpointSample {
                    upstream: u.name.clone(),
                    endpoint: ep.label.clone(),
                    healthy: ep.state.healthy(now),
                    ejections: ep.state.ejections(),
                    in_flight: ep.state.in_flight(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The upstreams and their endpoints' health, for `GET /admin/status`.
pub fn upstream_status(rt: &Runtime) -> serde_json::Value {
    let now = crate::balancer::now_ms();
    let list: Vec<serde_json::Value> = rt
        .upstreams
        .iter()
        .map(|u| {
            // Which outbound proxy carries its traffic and its `auth` token requests.
            let proxy = u.client.outbound().to_string();
            let token_proxy = u
                .auth
                .as_ref()
                .and_then(|a| a.outbound())
                .map(|o| o.to_string());
            let Some(eps) = &u.endpoints else {
                return serde_json::json!({
                    "name": &*u.name,
                    "proxy": proxy,
                    "token_proxy": token_proxy,
                    "balance": null,
                    "endpoints": [{
                        "endpoint": u.authority.as_str(),
                        "healthy": true,
                        "state": "healthy",
                    }],
                });
            };
            let endpoints: Vec<serde_json::Value> = eps
                .list()
                .iter()
                .map(|ep| {
                    let st = &ep.state;
                    let ejected_until = st.ejected_until(now);
                    let check = st.check_failing();
                    let state = if ejected_until.is_some() {
                        "ejected"
                    } else if check == Some(true) {
                        "failing_health_check"
                    } else {
                        "healthy"
                    };
                    serde_json::json!({
                        "endpoint": &*ep.label,
                        // An address of a name (`dns: per_address`): the name.
                        "dns_name": ep.addr.map(|_| ep.authority.as_str()),
                        "healthy": st.healthy(now),
                        "state": state,
                        "ejected_until": ejected_until.map(rfc3339),
                        "health_check": match check {
                            None if eps.health_check.is_some() => "pending",
                            None => "off",
                            Some(true) => "failing",
                            Some(false) => "passing",
                        },
                        "consecutive_failures": st.consecutive_failures(),
                        "ejections": st.ejections(),
                        "in_flight": st.in_flight(),
                        "requests": st.requests(),
                    })
                })
                .collect();
            let mut out = serde_json::json!({
                "name": &*u.name,
                "proxy": proxy,
                "token_proxy": token_proxy,
                "balance": eps.balance.as_str(),
                "endpoints": endpoints,
            });
            if let Some(d) = &u.dns {
                out["dns"] = dns_status(d);
            }
            out
        })
        .collect();
    serde_json::Value::Array(list)
}

/// A `dns: per_address` upstream's name and how its resolutions go.
fn dns_status(d: &crate::dns::PerAddress) -> serde_json::Value {
    let st = d.target.status();
    serde_json::json!({
        "mode": "per_address",
        "name": d.target.shown(),
        "state": st.state.as_str(),
        "addresses": st.addresses,
        "last_error": st.last_error,
        "last_resolved_at": st.last_resolved_at.map(rfc3339),
        "resolutions": d.target.resolutions_ok.load(Ordering::Relaxed),
        "failed_resolutions": d.target.resolutions_failed.load(Ordering::Relaxed),
        "refresh_ms": d.refresh.as_millis() as u64,
        "min_refresh_ms": d.min_refresh.as_millis() as u64,
    })
}

/// `dns: per_address` upstreams whose name has no address or whose resolution fails
/// (for `/readyz`).
pub fn dns_problems(rt: &Runtime) -> Vec<serde_json::Value> {
    rt.upstreams
        .iter()
        .filter_map(|u| u.dns.as_ref().map(|d| (u, d)))
        .filter_map(|(u, d)| {
            let st = d.target.status();
            matches!(
                st.state,
                crate::dns::DnsState::NoAddresses | crate::dns::DnsState::Failing
            )
            .then(|| {
                serde_json::json!({
                    "upstream": &*u.name,
                    "name": d.target.shown(),
                    "state": st.state.as_str(),
                    "addresses": st.addresses,
                    "error": st.last_error,
                })
            })
        })
        .collect()
}

/// Where `tls:` (else `server:`) sits in the file, 1-based, for a located error.
fn tls_key_position(path: &std::path::Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let find = |key: &str| {
        text.lines().enumerate().find_map(|(i, l)| {
            let t = l.trim_start();
            (t == key || t.starts_with(&format!("{key} ")) || t.starts_with(&format!("{key}#")))
                .then(|| (i + 1, l.len() - t.len() + 1))
        })
    };
    find("tls:").or_else(|| find("server:")).unwrap_or((1, 1))
}
