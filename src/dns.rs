//! DNS names expanded to one endpoint per address (`upstreams[].dns: {mode:
//! per_address}`), like Envoy's STRICT_DNS clusters: not on the request path, beside it.
//! `discovery.rs` resolves an upstream's name in the background with the resolver
//! [`DnsSettings`] describes (`server.dns`); each address becomes an endpoint of the
//! balancer (`balancer.rs`) whose connections go to that address while TLS (SNI and
//! certificate verification) and `Host` keep the name.
//!
//! A [`Target`] is one name of one upstream and what is known of it: the addresses of
//! the last good answer, each address's endpoint state (health, ejection, counters) and
//! how the last resolution went. The config registry keeps it across reloads, so a
//! reload starts serving with the addresses already known and keeps their health; a
//! failed resolution keeps the last good list.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::balancer::EndpointState;

/// `server.dns`: the name servers background resolutions ask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// `servers`: asked over UDP (TCP for truncated answers); empty: the system's
    /// (`/etc/resolv.conf`, with `/etc/hosts`).
    pub servers: Vec<SocketAddr>,
    /// `query_timeout`: one query's time (hickory's default 5 s when `None`).
    pub timeout: Option<Duration>,
}

impl DnsSettings {
    /// A resolver without a cache of its own: every refresh asks the name servers
    /// (the answer's TTL still shortens the wait before the next one).
    pub fn resolver(&self) -> Result<TokioResolver, String> {
        let mut builder = if self.servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("the system's resolver settings cannot be read: {e}"))?
        } else {
            let servers = self
                .servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            let cfg = ResolverConfig::from_name_servers(servers);
            let mut b = TokioResolver::builder_with_config(cfg, TokioRuntimeProvider::default());
            // The operator named the servers: /etc/hosts does not shadow them.
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        if let Some(t) = self.timeout {
            opts.timeout = t;
        }
        // One try per server per refresh: the next refresh is the retry.
        opts.attempts = 1;
        builder
            .build()
            .map_err(|e| format!("the resolver cannot be built: {e}"))
    }
}

/// `upstreams[].dns` with `mode: per_address`, compiled.
#[derive(Clone)]
pub struct PerAddress {
    pub target: Arc<Target>,
    /// The longest time between two resolutions.
    pub refresh: Duration,
    /// The shortest: a TTL below it (0 included) waits this long.
    pub min_refresh: Duration,
}

impl PerAddress {
    /// The wait before the next resolution: `refresh`, shortened to the answer's TTL,
    /// never below `min_refresh`. After failures, `min_refresh` doubled per failure in a
    /// row, up to `refresh`.
    pub fn next_wait(&self, ttl: Option<Duration>, failures_in_a_row: u32) -> Duration {
        if failures_in_a_row > 0 {
            let factor = 1u32 << failures_in_a_row.min(16).saturating_sub(1);
            return self
                .min_refresh
                .saturating_mul(factor)
                .min(self.refresh)
                .max(self.min_refresh);
        }
        ttl.unwrap_or(self.refresh)
            .min(self.refresh)
            .max(self.min_refresh)
    }
}

/// How the last resolution of a [`Target`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsState {
    /// None finished yet.
    Pending,
    /// The last one answered with at least one address.
    Resolved,
    /// The last one answered that the name has no address (NXDOMAIN or no A/AAAA):
    /// the upstream has no endpoint.
    NoAddresses,
    /// The last one failed (timeout, server failure, refused); the last good list, if
    /// any, keeps serving.
    Failing,
}

impl DnsState {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsState::Pending => "pending",
            DnsState::Resolved => "resolved",
            DnsState::NoAddresses => "no_addresses",
            DnsState::Failing => "failing",
        }
    }
}

/// One upstream's name, resolved in the background; kept across reloads.
pub struct Target {
    /// The name as written (no brackets), what is resolved.
    pub host: String,
    pub port: u16,
    inner: Mutex<Known>,
    first_done: AtomicBool,
    pub resolutions_ok: AtomicU64,
    pub resolutions_failed: AtomicU64,
}

struct Known {
    /// The last good answer's addresses, sorted.
    addrs: Vec<IpAddr>,
    /// Each address's endpoint state (kept while the address is in the answer).
    states: HashMap<IpAddr, Arc<EndpointState>>,
    state: DnsState,
    last_error: Option<String>,
    last_resolved_at: Option<SystemTime>,
}

/// What one resolution found.
#[derive(Debug)]
pub enum Answer {
    /// Addresses (deduplicated, sorted) and the answer's TTL.
    Addresses(Vec<IpAddr>, Option<Duration>),
    /// The name has no address.
    Empty,
    /// The resolution failed; why.
    Failed(String),
}

/// What `/admin/status` and `/readyz` show of a target.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub state: DnsState,
    pub addresses: usize,
    pub last_error: Option<String>,
    pub last_resolved_at: Option<SystemTime>,
}

impl Target {
    pub fn new(host: &str, port: u16) -> Target {
        Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            inner: Mutex::new(Known {
                addrs: Vec::new(),
                states: HashMap::new(),
                state: DnsState::Pending,
                last_error: None,
                last_resolved_at: None,
            }),
            first_done: AtomicBool::new(false),
            resolutions_ok: AtomicU64::new(0),
            resolutions_failed: AtomicU64::new(0),
        }
    }

    /// `name:port`, as shown.
    pub fn shown(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a resolution has finished (successfully or not) since the start.
    pub fn first_done(&self) -> bool {
        self.first_done.load(Ordering::Acquire)
    }

    /// The addresses to serve now, each with its endpoint state.
    pub fn addresses(&self) -> Vec<(IpAddr, Arc<EndpointState>)> {
        let k = self.known();
        k.addrs
            .iter()
            .map(|a| (*a, k.states.get(a).cloned().unwrap_or_default()))
            .collect()
    }

    pub fn status(&self) -> TargetStatus {
        let k = self.known();
        TargetStatus {
            state: k.state,
            addresses: k.addrs.len(),
            last_error: k.last_error.clone(),
            last_resolved_at: k.last_resolved_at,
        }
    }

    /// Records a resolution's answer; returns whether the address list changed. A
    /// failure keeps the last good list.
    pub fn apply(&self, answer: &Answer) -> bool {
        let mut k = self.known();
        let changed = match answer {
            Answer::Addresses(addrs, _) => {
                self.resolutions_ok.fetch_add(1, Ordering::Relaxed);
                k.state = DnsState::Resolved;
                k.last_error = None;
                k.last_resolved_at = Some(SystemTime::now());
                let changed = k.addrs != *addrs;
                k.states.retain(|a, _| addrs.contains(a));
                for a in addrs {
                    k.states.entry(*a).or_default();
                }
                k.addrs = addrs.clone();
                changed
            }
            Answer::Empty => {
                self.resolutions_ok.fetch_add(1, Ordering::Relaxed);
                k.state = DnsState::NoAddresses;
                k.last_error = Some(format!("{} has no address", self.host));
                k.last_resolved_at = Some(SystemTime::now());
                let changed = !k.addrs.is_empty();
                k.addrs.clear();
                k.states.clear();
                changed
            }
            Answer::Failed(why) => {
                self.resolutions_failed.fetch_add(1, Ordering::Relaxed);
                k.state = DnsState::Failing;
                k.last_error = Some(why.clone());
                false
            }
        };
        drop(k);
        self.first_done.store(true, Ordering::Release);
        changed
    }
}

/// Resolves `host` once (A, else AAAA records), bypassing the resolver's cache.
pub async fn resolve(resolver: &TokioResolver, host: &str) -> Answer {
    // An address written as the name needs no lookup.
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Answer::Addresses(vec![ip], None);
    }
    resolver.clear_cache();
    let started = Instant::now();
    // A fully qualified name: search domains apply only to names without a dot
    // (resolv.conf's ndots), as the system resolver does.
    match resolver.lookup_ip(host).await {
        Ok(found) => {
            let mut addrs: Vec<IpAddr> = found.iter().collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                return Answer::Empty;
            }
            let ttl = found
                .valid_until()
                .checked_duration_since(started)
                .unwrap_or_default();
            Answer::Addresses(addrs, Some(ttl))
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Answer::Empty,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_address(refresh: u64, min: u64) -> PerAddress {
        PerAddress {
            target: Arc::new(Target::new("svc.test", 80)),
            refresh: Duration::from_secs(refresh),
            min_refresh: Duration::from_secs(min),
        }
    }

    // Behaviour: the TTL shortens the wait down to min_refresh, never lengthens it past
    // refresh; failures back off from min_refresh up to refresh.
    #[test]
    fn waits() {
        let p = per_address(30, 2);
        let s = Duration::from_secs;
        assert_eq!(p.next_wait(None, 0), s(30));
        assert_eq!(p.next_wait(Some(s(10)), 0), s(10));
        assert_eq!(p.next_wait(Some(s(0)), 0), s(2));
        assert_eq!(p.next_wait(Some(s(300)), 0), s(30));
        assert_eq!(p.next_wait(None, 1), s(2));
        assert_eq!(p.next_wait(None, 2), s(4));
        assert_eq!(p.next_wait(None, 4), s(16));
        assert_eq!(p.next_wait(None, 9), s(30));
        assert_eq!(p.next_wait(None, 1000), s(30));
    }

    // Behaviour: a failed resolution keeps the last good list and its states; an empty
    // answer empties it; a new list keeps the states of the addresses that stay.
    #[test]
    fn answers() {
        let t = Target::new("svc.test", 80);
        assert_eq!(t.status().state, DnsState::Pending);
        assert!(!t.first_done());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(t.apply(&Answer::Addresses(vec![a, b], None)));
        assert!(t.first_done());
        let st_a = t.addresses()[0].1.clone();
        assert!(!t.apply(&Answer::Failed("timed out".into())));
        assert_eq!(t.addresses().len(), 2);
        assert_eq!(t.status().state, DnsState::Failing);
        assert_eq!(t.status().last_error.as_deref(), Some("timed out"));
        assert!(t.apply(&Answer::Addresses(vec![a], None)));
        assert!(Arc::ptr_eq(&t.addresses()[0].1, &st_a));
        assert!(!t.apply(&Answer::Addresses(vec![a], None)));
        assert!(t.apply(&Answer::Empty));
        assert!(t.addresses().is_empty());
        assert_eq!(t.status().state, DnsState::NoAddresses);
        assert_eq!(t.resolutions_ok.load(Ordering::Relaxed), 4);
        assert_eq!(t.resolutions_failed.load(Ordering::Relaxed), 1);
    }
}
