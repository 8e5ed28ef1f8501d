//! What compiling a config may reuse from the running gateway, across reloads: JWKS key
//! stores (so key caches survive a reload), HTTP clients (so pooled upstream
//! connections do), the token service key generated when none is configured, and the
//! rate-limit stores (so a reload resets no counter and drops no Redis connection).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::validate::Problems;
use crate::auth::jwks::KeyStore;
use crate::client::{build_client, HttpClient};
use crate::outbound::Outbound;
use crate::tls;
use crate::token_service::keys::SigningKey;

#[derive(Default)]
pub struct Registry {
    pub key_stores: dashmap::DashMap<String, Arc<KeyStore>>,
    pub clients: dashmap::DashMap<String, HttpClient>,
    /// The token service key generated when `signing_key` is absent, kept across
    /// reloads so that tokens already issued stay valid.
    pub generated_key: std::sync::Mutex<Option<Arc<SigningKey>>>,
    /// Loaded for `tollgate::layer` (the application is the upstream): routes need no
    /// `upstream`.
    pub embedded: bool,
    /// Rate-limit counters and the Redis connection, kept across reloads.
    pub rate_limit_stores: super::ratelimit::Stores,
    /// Upstream endpoints' health and counters, by "upstream name|endpoint", kept across
    /// reloads while the endpoint stays in the config.
    pub endpoint_states: dashmap::DashMap<String, Arc<crate::balancer::EndpointState>>,
    /// Names resolved per address (`upstreams[].dns: per_address`), by "upstream
    /// name|host:port": their last good addresses and those endpoints' states, kept
    /// across reloads while the upstream keeps the name.
    pub dns_targets: dashmap::DashMap<String, Arc<crate::dns::Target>>,
}

impl Registry {
    /// The state of endpoint `endpoint` of upstream `upstream`: the one the running
    /// config has, or a new one.
    pub fn endpoint_state(
        &self,
        upstream: &str,
        endpoint: &str,
    ) -> Arc<crate::balancer::EndpointState> {
        self.endpoint_states
            .entry(format!("{upstream}|{endpoint}"))
            .or_default()
            .clone()
    }

    /// The background-resolved name `host:port` of upstream `upstream`: the one the
    /// running config has, or a new one.
    pub fn dns_target(&self, upstream: &str, host: &str, port: u16) -> Arc<crate::dns::Target> {
        self.dns_targets
            .entry(format!("{upstream}|{host}:{port}"))
            .or_insert_with(|| Arc::new(crate::dns::Target::new(host, port)))
            .clone()
    }

    /// An HTTP client trusting `ca` (or the system roots) that dials as `outbound`
    /// says (directly or through a proxy), shared by every user with the same settings.
    /// A problem building it is recorded at `path`.
    pub fn client(
        &self,
        p: &mut Problems,
        path: &str,
        ca: Option<&Path>,
        connect_timeout: Duration,
        outbound: &Outbound,
    ) -> Option<HttpClient> {
        let key = format!(
            "{:?}|{}|{}",
            ca,
            connect_timeout.as_millis(),
            outbound.key()
        );
        if let Some(c) = self.clients.get(&key) {
            // A CA file may have been rotated: rebuild when it is named.
            if ca.is_none() {
                return Some(c.clone());
            }
        }
        match tls::client_config(ca) {
            Ok(cfg) => {
                let c = build_client(cfg, connect_timeout, outbound.clone());
                self.clients.insert(key, c.clone());
                Some(c)
            }
            Err(e) => {
                p.add(path, e);
                None
            }
        }
    }
}
