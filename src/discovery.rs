//! The background resolution of `upstreams[].dns: {mode: per_address}` upstreams: not
//! on the request path, beside it (like `health.rs`). One task per such upstream
//! resolves its name (`dns.rs`) every `refresh` (sooner when the answer's TTL runs out,
//! never sooner than `min_refresh`) and keeps the balancer's endpoint list equal to the
//! answer: an address that appears becomes an endpoint (with its own connections,
//! passive ejection state and active health check), one that disappears leaves the
//! list (no new requests; the ones in flight finish on it) and its health check stops.
//! A failed resolution keeps the last good list and is logged and counted.
//!
//! The task belongs to the config that started it: [`start`] runs when a config begins
//! to serve; `Endpoints::stop` (a reload, the gateway stopping, the config dropped)
//! aborts it. It holds the upstream weakly, so it never keeps a config alive.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::balancer::Endpoint;
use crate::dns::{resolve, Answer, DnsSettings};
use crate::upstream::Upstream;

/// Starts `up`'s resolutions, once (nothing for an upstream without `dns:
/// per_address`).
pub fn start(up: &Arc<Upstream>, settings: &DnsSettings) {
    let (Some(eps), Some(dns)) = (&up.endpoints, &up.dns) else {
        return;
    };
    let mut tasks = eps.tasks.lock().unwrap_or_else(|p| p.into_inner());
    if !tasks.is_empty() || eps.stopped.load(Ordering::Acquire) {
        return;
    }
    let resolver = match settings.resolver() {
        Ok(r) => r,
        Err(why) => {
            // Without a resolver the last known addresses (from before a reload) serve.
            tracing::error!(upstream = %up.name, name = %dns.target.shown(),
                "{why}; the upstream's addresses cannot be refreshed");
            dns.target.apply(&Answer::Failed(why));
            return;
        }
    };
    let task = tokio::spawn(run(Arc::downgrade(up), resolver));
    tasks.push(task.abort_handle());
}

async fn run(up: Weak<Upstream>, resolver: hickory_resolver::TokioResolver) {
    let mut failures = 0u32;
    loop {
        let Some((target, host)) = up.upgrade().and_then(|u| {
            u.dns
                .as_ref()
                .map(|d| (d.target.clone(), d.target.host.clone()))
        }) else {
            return;
        };
        let answer = resolve(&resolver, &host).await;
        let Some(up) = up.upgrade() else {
            return;
        };
        let Some(dns) = &up.dns else {
            return;
        };
        let first = !target.first_done();
        let changed = target.apply(&answer);
        let ttl = match &answer {
            Answer::Addresses(addrs, ttl) => {
                failures = 0;
                if changed {
                    tracing::info!(upstream = %up.name, name = %target.shown(),
                        addresses = ?addrs, "upstream addresses changed");
                }
                *ttl
            }
            Answer::Empty => {
                failures = 0;
                if changed || first {
                    tracing::warn!(upstream = %up.name, name = %target.shown(),
                        "the upstream's name has no address: it has no endpoint");
                }
                None
            }
            Answer::Failed(why) => {
                failures = failures.saturating_add(1);
                tracing::warn!(upstream = %up.name, name = %target.shown(), error = %why,
                    failures_in_a_row = failures,
                    "resolving the upstream's name failed; its last known addresses keep serving");
                None
            }
        };
        sync(&up);
        let wait: Duration = dns.next_wait(ttl, failures);
        drop(up);
        tokio::time::sleep(wait).await;
    }
}

/// Makes `up`'s endpoint list what its target knows: endpoints of addresses that stay
/// are kept (their connections too), new ones are made, gone ones leave.
pub fn sync(up: &Upstream) {
    let (Some(eps), Some(dns)) = (&up.endpoints, &up.dns) else {
        return;
    };
    let current = eps.list();
    let wanted = dns.target.addresses();
    let same = current.len() == wanted.len()
        && current
            .iter()
            .zip(&wanted)
            .all(|(ep, (a, _))| ep.addr == Some(*a));
    if same {
        return;
    }
    let find = |a: IpAddr| current.iter().find(|ep| ep.addr == Some(a)).cloned();
    let next: Vec<Arc<Endpoint>> = wanted
        .iter()
        .map(|(a, state)| {
            find(*a).unwrap_or_else(|| {
                Arc::new(Endpoint::at_address(
                    up.scheme.clone(),
                    up.authority.clone(),
                    *a,
                    state.clone(),
                ))
            })
        })
        .collect();
    let previous = eps.replace(next.clone());
    for ep in previous.iter() {
        if !next.iter().any(|n| Arc::ptr_eq(n, ep)) {
            // Drained: no new request picks it; those in flight hold it until they end.
            ep.stop_check();
        }
    }
    if eps.started.load(Ordering::Acquire) {
        for ep in &next {
            crate::health::start_endpoint(up, ep);
        }
    }
    if eps.stopped.load(Ordering::Acquire) {
        for ep in &next {
            ep.stop_check();
        }
    }
}
