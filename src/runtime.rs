//! The compiled, typed model a request reads: built by the config loader, published
//! behind an `ArcSwap` in [`crate::gateway::Gateway`], and loaded once per request so
//! that a reload never changes the rules under a request in flight. Nothing here is a
//! string waiting to be parsed, and nothing here knows the config file's own model
//! (`crate::config`): the loader depends on the runtime, never the other way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::auth::Issuer;
use crate::cors::Cors;
use crate::metrics::RouteSeries;
use crate::policy::{Permissions, RouteAuth};
use crate::ratelimit::RouteLimits;
use crate::route::RouteTable;
use crate::session::Login;
use crate::token_service::keys::NewKeyFile;
use crate::token_service::TokenService;
use crate::upstream::Upstream;

/// The smallest `max_header_bytes` a config may set: a head within it is within every
/// limit, so the listener need not look the limit up for it.
pub const MIN_MAX_HEADER_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// Requests in flight at once (public listener); over it: 503 at once.
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16_384,
            max_body_bytes: 10_485_760,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_concurrent_requests: 10_000,
        }
    }
}

pub struct Server {
    pub listen: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub redirect_listen: Option<SocketAddr>,
    pub redirect_https_port: Option<u16>,
    pub admin_listen: Option<SocketAddr>,
    /// The decision service's listener (`authorizer.rs`): an ingress's external
    /// authoriser (Envoy `ext_authz`, Traefik `forwardAuth`, nginx `auth_request`).
    pub decision_listen: Option<SocketAddr>,
    /// Protection of the admin API (all but /healthz and /readyz): Bearer or Basic.
    pub admin_auth: Option<Arc<crate::admin_auth::AdminAuth>>,
    pub limits: Limits,
    /// `server.dns`: the resolver of `dns: per_address` upstreams (`discovery.rs`).
    pub dns: crate::dns::DnsSettings,
}

/// `decision:`: what the decision service adds to an "allow" (`authorizer.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DecisionSettings {
    /// Answer with the route's upstream credentials as `Authorization`.
    pub upstream_credentials: bool,
}

/// `body_credentials: basic` on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCredentials {
    pub grant_type_to_query: bool,
}

pub struct Route {
    pub name: Arc<str>,
    pub path_prefix: String,
    /// `case_sensitive` (default true): false matches the prefix and the permissions
    /// ignoring ASCII case.
    pub case_sensitive: bool,
    pub upstream: Option<Arc<Upstream>>,
    pub auth: RouteAuth,
    pub permissions: Option<Permissions>,
    pub cors: Option<Cors>,
    pub body_credentials: Option<BodyCredentials>,
    /// `strip_cookies`: the client's `Cookie` header is not forwarded (default: on
    /// routes with a Bearer `auth` block).
    pub strip_cookies: bool,
    /// `rate_limits`: checked after authorisation (`None`: the route has none).
    pub rate_limits: Option<RouteLimits>,
    /// `auth: {login: true}`: a browser session is accepted as well as a Bearer token.
    pub login: bool,
    /// `websocket:`: upgrades are forwarded (`None`: an `Upgrade` header is removed like
    /// any hop-by-hop header).
    pub websocket: Option<WebSocket>,
    /// Its handles into the request metrics, resolved on its first request.
    pub series: RouteSeries,
}

/// A route's `websocket:` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocket {
    /// The tunnel is closed after this long with no data either way.
    pub idle_timeout: Duration,
    /// The tunnel is closed after this long whatever the traffic.
    pub max_duration: Duration,
}

impl WebSocket {
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX: Duration = Duration::from_secs(24 * 3600);
}

pub struct Runtime {
    pub version: u64,
    /// SHA-256 of the file as read, hex.
    pub hash: String,
    pub loaded_at: SystemTime,
    pub path: PathBuf,
    pub server: Server,
    pub routes: Vec<Arc<Route>>,
    pub table: RouteTable,
    pub issuers: Vec<Arc<Issuer>>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub token_service: Option<Arc<TokenService>>,
    /// `login:`: browser sign-in.
    pub login: Option<Arc<Login>>,
    /// Files the config depends on besides itself (certificates, keys, CAs,
    /// `${file:}` references): a change to any of them reloads the config.
    pub files: Vec<PathBuf>,
    /// The config as loaded, secrets redacted (`GET /admin/config`).
    pub redacted: RedactedConfig,
    /// `token_service.create_signing_key` with no file yet: the key in use, to be
    /// written by `tollgate run` before this config serves ([`Runtime::create_files`]).
    /// `validate` and `explain` never write it.
    pub create_key_file: Option<NewKeyFile>,
    /// `tracing:` (`None`: no block; traces are still continued and started).
    pub tracing: Option<Arc<crate::otel::Settings>>,
    /// `decision:` (defaults without a block).
    pub decision: DecisionSettings,
}

/// The config as loaded, for `GET /admin/config`, with every secret printed as
/// `[redacted]`. The config loader hands over a way to build the JSON (it owns the
/// config file's model; the runtime does not know it), and the JSON is built on the
/// first request for it, so that a reload does not pay for a view that is rarely
/// asked for (~7% of a 10k-route reload).
#[derive(Default)]
pub struct RedactedConfig {
    /// Renders the JSON (the config module keeps its model inside; the runtime model
    /// does not know the config parser's types).
    render: Option<Box<dyn Fn() -> serde_json::Value + Send + Sync>>,
    json: OnceLock<serde_json::Value>,
}

impl RedactedConfig {
    pub fn new(render: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        RedactedConfig {
            render: Some(Box::new(render)),
            json: OnceLock::new(),
        }
    }

    pub fn json(&self) -> &serde_json::Value {
        self.json
            .get_or_init(|| self.render.as_ref().map(|r| r()).unwrap_or_default())
    }
}

impl Runtime {
    /// Writes the files this config needs and does not have yet (the token service's
    /// new signing key), once: `tollgate run` calls it before the config serves.
    /// `Err` is (key path, message).
    pub fn create_files(&mut self) -> Result<(), (&'static str, String)> {
        if let Some(f) = self.create_key_file.take() {
            f.write().map_err(|e| ("token_service.signing_key", e))?;
        }
        Ok(())
    }

    /// An issuer by its `name` (`local` for the token service).
    pub fn issuer(&self, name: &str) -> Option<&Arc<Issuer>> {
        self.issuers.iter().find(|i| &*i.name == name)
    }
}
