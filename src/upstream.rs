//! A compiled `upstreams[]` entry: where forwarded requests go (origin, base path,
//! `Host`), how long to wait for them, the credentials tollgate adds, and the
//! connection pool (in `client`) that serves the origin; or, for several endpoints
//! (`urls`) or retries and health checks, the [`Endpoints`] (`balancer.rs`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::HeaderValue;

use crate::balancer::{h2_for, pool_for, Endpoints};
use crate::client::{H2Conn, HttpClient, Pool};
use crate::credentials::UpstreamAuth;

/// A compiled `upstreams[]` entry.
pub struct Upstream {
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The URL's path without a trailing `/` ("" for none); prepended to request paths.
    pub base_path: String,
    /// `Host` sent upstream.
    pub host: HeaderValue,
    pub timeout: Duration,
    pub client: HttpClient,
    pub auth: Option<UpstreamAuth>,
    /// `csrf`: the SAP X-CSRF-Token protocol and upstream session cookies.
    pub csrf: Option<Arc<Csrf>>,
    /// Idle connections to this upstream (shared with the previous config's upstream
    /// of the same origin and client), looked up on first use.
    pub pool: OnceLock<Arc<Pool>>,
    /// `protocol`: how requests are sent (HTTP/1.1 by default).
    pub protocol: Protocol,
    /// The HTTP/2 connection (`protocol: h2 | h2c`), looked up on first use.
    pub h2: OnceLock<Arc<H2Conn>>,
    /// `urls` (or `retries`, `passive`, `health_check`): the endpoints requests are
    /// balanced over. `None` for a plain single `url`, the fast path (then `scheme`,
    /// `authority` and `host` are its endpoint's; otherwise the first endpoint's).
    pub endpoints: Option<Box<Endpoints>>,
    /// `dns: {mode: per_address}`: the name of `url` resolved in the background, each
    /// address an endpoint of `endpoints` (`discovery.rs` keeps the list current).
    pub dns: Option<crate::dns::PerAddress>,
    /// Its series of the exchange-duration histogram, looked up on first use.
    pub series: crate::metrics::UpstreamSeries,
}

/// `upstreams[].protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1, pooled connections (the default).
    #[default]
    Http1,
    /// HTTP/2 over TLS (`https://`, ALPN `h2`): gRPC upstreams.
    H2,
    /// HTTP/2 in cleartext with prior knowledge (`http://`): gRPC upstreams in the
    /// cluster.
    H2c,
}

/// `upstreams[].csrf`, compiled.
#[derive(Debug)]
pub struct Csrf {
    /// Where the token is fetched: the upstream URL's path + `fetch_path` (origin form).
    pub fetch_path: http::uri::PathAndQuery,
    /// The upstream's origin (`scheme://authority`), what the session cookie jar matches
    /// cookies' `Domain` and `Path` against.
    pub origin: url::Url,
    /// Request bodies kept for the one replay after `403` + `X-CSRF-Token: Required`
    /// (default and at most `server.limits.max_body_bytes`).
    pub replay_max_bytes: Option<u64>,
}

impl Upstream {
    /// The HTTP/2 connection to this upstream's origin (shared across reloads).
    pub fn h2(&self) -> &Arc<H2Conn> {
        self.h2
            .get_or_init(|| h2_for(&self.client, &self.scheme, &self.authority))
    }

    pub fn pool(&self) -> &Arc<Pool> {
        self.pool
            .get_or_init(|| pool_for(&self.client, &self.scheme, &self.authority))
    }

    /// Stops the endpoints' active health checks (`health.rs` starts them) (a reload replaced this config, or the gateway stops).
    pub fn stop_background(&self) {
        if let Some(eps) = &self.endpoints {
            eps.stop();
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}
