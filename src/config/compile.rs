//! Stage 3 of 3: the serde model -> the runtime model, checking as it goes.
//!
//! Every check records a [`Problem`](super::validate::Problem) with its key path and
//! carries on, so one run reports everything wrong with the file. Only when nothing
//! was recorded is the result used.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::HeaderValue;
use sha2::{Digest, Sha256};

use super::model::*;
use super::ratelimit as rl;
use super::source::resolve_path;
use super::upstream_auth;
use super::validate::{self as v, At, Problems};
use crate::auth::introspect::Introspection;
use crate::auth::jwks::{KeySource, KeyStore};
use crate::auth::{jwt, Issuer, IssuerKind};
use crate::client::{build_client, HttpClient};
use crate::cors::{Cors, OriginPattern};
use crate::credentials::{ClientAuth, Grant, OAuth2Source, RequestFormat, UpstreamAuth};
use crate::policy::{AuthRule, Permission, Permissions, RouteAuth};
use crate::route::{normalize_path, HostPattern, RouteTable};
use crate::runtime::{BodyCredentials, Limits, Route, Runtime, Server};
use crate::tls;
use crate::token_service::keys::SigningKey;
use crate::token_service::{ClientSecret, TokenService, LOCAL_LEEWAY};
use crate::upstream::Upstream;

/// What compiling may reuse from the running gateway: key stores (so JWKS caches
/// survive a reload) and HTTP clients (so pooled connections do too).
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
}

impl Registry {
    fn client(
        &self,
        p: &mut Problems,
        path: &str,
        ca: Option<&Path>,
        connect_timeout: Duration,
    ) -> Option<HttpClient> {
        let key = format!("{:?}|{}", ca, connect_timeout.as_millis());
        if let Some(c) = self.clients.get(&key) {
            // A CA file may have been rotated: rebuild when it is named.
            if ca.is_none() {
                return Some(c.clone());
            }
        }
        match tls::client_config(ca) {
            Ok(cfg) => {
                let c = build_client(cfg, connect_timeout);
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

const MAX_ISSUER_LEEWAY: Duration = Duration::from_secs(3600);
pub const DEFAULT_ISSUER_LEEWAY: Duration = Duration::from_secs(30);
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

pub fn compile(m: &ConfigModel, base: &Path, reg: &Registry, p: &mut Problems) -> Option<Runtime> {
    let server = compile_server(m.server.as_ref(), base, p);
    let limits = rl::compile(m.stores.as_ref(), &m.rate_limits, &reg.rate_limit_stores, p);
    let mut issuers = compile_issuers(&m.issuers, m.token_service.is_some(), base, reg, p);
    let token_service = m
        .token_service
        .as_ref()
        .and_then(|t| compile_token_service(t, base, reg, &limits, p));
    if let Some(ts) = &token_service {
        issuers.push(local_issuer(ts));
    }
    let upstreams = compile_upstreams(&m.upstreams, base, reg, p);
    let (routes, table) = compile_routes(
        &m.routes,
        &issuers,
        &upstreams,
        m.token_service.is_some(),
        reg.embedded,
        &limits,
        p,
    );
    if let (Some(ts), Some(s)) = (&token_service, &server) {
        if let Some(id) = table.lookup("", &ts.path) {
            let r = &routes[id];
            if r.path_prefix.trim_end_matches('/') == ts.path.trim_end_matches('/') {
                p.add(
                    "token_service.path",
                    format!(
                        "route \"{}\" has the same path; the token service answers it first",
                        r.name
                    ),
                );
            }
        }
        let _ = s;
    }
    let login = super::login::compile(m, &issuers, &routes, token_service.as_deref(), p);
    let mut server = server?;
    if let Some(b) = m.server.as_ref().and_then(|s| s.admin_auth.as_ref()) {
        if server.admin_listen.is_none() {
            p.add("server.admin_auth", "admin_auth needs admin_listen");
        }
        let block = AuthBlockModel {
            issuers: b.issuers.clone(),
            scopes: b.scopes.clone(),
            clients: b.clients.clone(),
            login: None,
        };
        let has_ts = m.token_service.is_some();
        server.admin_auth = super::admin_auth::compile(b, p, |p| {
            compile_auth_rule(&block, &issuers, has_ts, At::Path("server.admin_auth"), p)
        })
        .map(Arc::new);
    }
    if !p.is_empty() {
        return None;
    }
    Some(Runtime {
        version: 0,
        hash: String::new(),
        loaded_at: std::time::SystemTime::now(),
        path: Default::default(),
        server,
        routes,
        table,
        issuers,
        upstreams,
        token_service,
        login,
        files: model_files(m, base),
        redacted: Default::default(),
    })
}

fn compile_token_service(
    t: &TokenServiceModel,
    base: &Path,
    reg: &Registry,
    limits: &rl::Compiled,
    p: &mut Problems,
) -> Option<Arc<TokenService>> {
    let path = t.path.clone().unwrap_or_else(|| "/oauth2/token".to_owned());
    if !path.starts_with('/') || normalize_path(&path).ok().as_deref() != Some(path.as_str()) {
        p.add(
            "token_service.path",
            format!("path \"{path}\" must be a normalised absolute path like /oauth2/token"),
        );
    }
    if t.issuer.trim().is_empty() {
        p.add("token_service.issuer", "must not be empty");
    }
    if t.audience.trim().is_empty() {
        p.add("token_service.audience", "must not be empty");
    }
    if t.create_signing_key && t.signing_key.is_none() {
        p.add(
            "token_service.create_signing_key",
            "needs signing_key: the file to create",
        );
    }
    let ttl = v::duration(
        p,
        "token_service.token_ttl",
        t.token_ttl.as_ref(),
        Duration::from_secs(3600),
    );
    let key = match &t.signing_key {
        Some(file) => {
            let f = resolve_path(base, file);
            if t.create_signing_key && !f.exists() {
                if let Err(e) = create_key_file(&f) {
                    p.add("token_service.signing_key", e);
                }
            }
            match std::fs::read(&f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))
                .and_then(|d| SigningKey::from_pem(&d))
            {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    p.add("token_service.signing_key", e);
                    None
                }
            }
        }
        None => {
            let mut g = reg.generated_key.lock().unwrap_or_else(|e| e.into_inner());
            if g.is_none() {
                match SigningKey::generate_es256() {
                    Ok(k) => {
                        tracing::warn!(kid = %k.kid, "token_service.signing_key is not set: generated an EC P-256 key for this process; tokens will not survive a restart and replicas will not accept each other's tokens");
                        *g = Some(Arc::new(k));
                    }
                    Err(e) => p.add("token_service", e),
                }
            }
            g.clone()
        }
    };
    let mut clients = HashMap::new();
    for (i, c) in t.clients.iter().enumerate() {
        let cp = format!("token_service.clients[{i}]");
        if !v::token_word(p, format!("{cp}.id"), &c.id, "client id") {
            continue;
        }
        let secret = match (&c.secret, &c.secret_hash) {
            (Some(s), None) if !s.is_empty() => Some(ClientSecret::Plain(s.clone())),
            (None, Some(h)) => match argon2::password_hash::PasswordHash::new(h.expose()) {
                Ok(ph) if ph.algorithm.as_str().starts_with("argon2") => {
                    Some(ClientSecret::Hash(h.clone()))
                }
                _ => {
                    p.add(
                        format!("{cp}.secret_hash"),
                        "not an argon2 PHC string (make one with `tollgate hash-secret`)",
                    );
                    None
                }
            },
            (Some(_), Some(_)) => {
                p.add(cp.clone(), "give either secret or secret_hash, not both");
                None
            }
            _ => {
                p.add(
                    cp.clone(),
                    "a client needs a non-empty secret or secret_hash",
                );
                None
            }
        };
        if c.scopes.is_empty() {
            p.add(
                format!("{cp}.scopes"),
                "register at least one scope for the client",
            );
        }
        for (j, s) in c.scopes.iter().enumerate() {
            v::token_word(p, format!("{cp}.scopes[{j}]"), s, "scope");
        }
        if let Some(secret) = secret {
            let client = crate::token_service::Client {
                id: c.id.clone(),
                secret,
                scopes: c.scopes.clone(),
            };
            if clients.insert(c.id.clone(), client).is_some() {
                p.add(
                    format!("{cp}.id"),
                    format!("duplicate client id \"{}\"", c.id),
                );
            }
        }
    }
    let failed_auth = rl::failed_auth_limit(t.failed_auth_limit.as_ref(), limits, p);
    Some(Arc::new(TokenService {
        path,
        issuer: t.issuer.clone(),
        audience: t.audience.clone(),
        ttl,
        key: key?,
        clients,
        failed_auth: failed_auth?,
    }))
}

/// Writes a new EC P-256 key, readable by the owner only.
fn create_key_file(f: &Path) -> Result<(), String> {
    let pem = SigningKey::generate_es256_pem()?;
    if let Some(dir) = f.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut file = opts
        .open(f)
        .map_err(|e| format!("cannot create {}: {e}", f.display()))?;
    file.write_all(&pem)
        .map_err(|e| format!("cannot write {}: {e}", f.display()))?;
    tracing::warn!(path = %f.display(), "created a new token service signing key");
    Ok(())
}

/// The token service as the issuer `local`: verified in-process, no HTTP round trip.
fn local_issuer(ts: &TokenService) -> Arc<Issuer> {
    let store = Arc::new(KeyStore::with_static_keys(
        "local".into(),
        ts.issuer.clone(),
        ts.key.key_set(),
    ));
    Arc::new(Issuer {
        name: "local".into(),
        issuer: ts.issuer.clone(),
        kind: IssuerKind::Jwt(store),
        audiences: vec![ts.audience.clone()],
        skip_audience_check: false,
        algorithms: vec![ts.key.alg],
        leeway: LOCAL_LEEWAY,
        scope_claims: vec!["scope".into()],
        client_claims: vec!["client_id".into()],
        fingerprint: fingerprint(&["local", &ts.issuer, &ts.audience, &ts.key.kid]),
    })
}

/// Files named by the model (TLS material, CAs, the signing key).
fn model_files(m: &ConfigModel, base: &Path) -> Vec<std::path::PathBuf> {
    let mut f: Vec<&str> = Vec::new();
    if let Some(t) = m.server.as_ref().and_then(|s| s.tls.as_ref()) {
        f.extend([t.cert.as_str(), t.key.as_str()]);
        f.extend(t.client_ca.as_deref());
        for s in &t.sni {
            f.extend([s.cert.as_str(), s.key.as_str()]);
        }
    }
    f.extend(m.upstreams.iter().filter_map(|u| u.ca.as_deref()));
    f.extend(
        m.token_service
            .as_ref()
            .and_then(|t| t.signing_key.as_deref()),
    );
    f.into_iter().map(|p| resolve_path(base, p)).collect()
}

fn compile_server(s: Option<&ServerModel>, base: &Path, p: &mut Problems) -> Option<Server> {
    let Some(s) = s else {
        p.add(
            "server",
            "missing required key \"server\" (with at least server.listen)",
        );
        return None;
    };
    let listen = match &s.listen {
        Some(l) => v::socket_addr(p, "server.listen", l),
        None => {
            p.add("server", "missing required key \"listen\"");
            None
        }
    };
    let redirect_listen = s
        .redirect_listen
        .as_ref()
        .and_then(|a| v::socket_addr(p, "server.redirect_listen", a));
    let admin_listen = s
        .admin_listen
        .as_ref()
        .and_then(|a| v::socket_addr(p, "server.admin_listen", a));
    let d = Limits::default();
    let l = &s.limits;
    let mut limits = Limits {
        max_header_bytes: l
            .max_header_bytes
            .map(|n| n as usize)
            .unwrap_or(d.max_header_bytes),
        max_body_bytes: l.max_body_bytes.unwrap_or(d.max_body_bytes),
        header_read_timeout: v::duration(
            p,
            "server.limits.header_read_timeout",
            l.header_read_timeout.as_ref(),
            d.header_read_timeout,
        ),
        request_timeout: v::duration(
            p,
            "server.limits.request_timeout",
            l.request_timeout.as_ref(),
            d.request_timeout,
        ),
        max_connections: l
            .max_connections
            .map(|n| n as usize)
            .unwrap_or(d.max_connections),
        max_concurrent_requests: l
            .max_concurrent_requests
            .map(|n| n as usize)
            .unwrap_or(d.max_concurrent_requests),
    };
    if limits.max_header_bytes < 1024 {
        p.add("server.limits.max_header_bytes", "must be at least 1024");
        limits.max_header_bytes = d.max_header_bytes;
    }
    if limits.max_connections == 0 {
        p.add("server.limits.max_connections", "must be at least 1");
    }
    if limits.max_concurrent_requests == 0 {
        p.add(
            "server.limits.max_concurrent_requests",
            "must be at least 1",
        );
    }
    let tls = s.tls.as_ref().and_then(|t| compile_tls(t, base, p));
    Some(Server {
        listen: listen?,
        tls,
        redirect_listen,
        admin_listen,
        admin_auth: None,
        redirect_https_port: s.redirect_https_port,
        limits,
    })
}

fn compile_tls(t: &TlsModel, base: &Path, p: &mut Problems) -> Option<Arc<rustls::ServerConfig>> {
    let default = tls::certified_key(&resolve_path(base, &t.cert), &resolve_path(base, &t.key))
        .map_err(|e| p.add("server.tls.cert", e))
        .ok();
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    for (i, sni) in t.sni.iter().enumerate() {
        let path = format!("server.tls.sni[{i}]");
        let Ok(key) = tls::certified_key(
            &resolve_path(base, &sni.cert),
            &resolve_path(base, &sni.key),
        )
        .map_err(|e| p.add(format!("{path}.cert"), e)) else {
            continue;
        };
        if sni.hosts.is_empty() {
            p.add(format!("{path}.hosts"), "at least one host is required");
        }
        for h in &sni.hosts {
            match HostPattern::parse(h) {
                HostPattern::Exact(h) => {
                    exact.insert(h, key.clone());
                }
                HostPattern::Wildcard(s) => wildcard.push((s, key.clone())),
            }
        }
    }
    wildcard.sort_by_key(|w: &(String, _)| std::cmp::Reverse(w.0.len()));
    let resolver = tls::SniResolver {
        default: default?,
        exact,
        wildcard,
    };
    let ca = t.client_ca.as_ref().map(|c| resolve_path(base, c));
    tls::server_config(resolver, ca.as_deref())
        .map_err(|e| p.add("server.tls", e))
        .ok()
}

fn fingerprint(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

fn compile_issuers(
    ms: &[IssuerModel],
    has_token_service: bool,
    base: &Path,
    reg: &Registry,
    p: &mut Problems,
) -> Vec<Arc<Issuer>> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, m) in ms.iter().enumerate() {
        let path = format!("issuers[{i}]");
        if m.name.trim().is_empty() {
            p.add(format!("{path}.name"), "issuer name must not be empty");
        } else if m.name == "local" && has_token_service {
            p.add(
                format!("{path}.name"),
                "\"local\" is the token service's issuer name; pick another",
            );
        } else if !names.insert(m.name.clone()) {
            p.add(
                format!("{path}.name"),
                format!("duplicate issuer name \"{}\"", m.name),
            );
        }
        let issuer = match &m.issuer {
            Some(s) if !s.trim().is_empty() => s.clone(),
            _ => {
                p.add(
                    format!("{path}.issuer"),
                    "missing required key \"issuer\" (the exact `iss` value)",
                );
                String::new()
            }
        };
        let mut leeway = v::duration(
            p,
            format!("{path}.leeway"),
            m.leeway.as_ref(),
            DEFAULT_ISSUER_LEEWAY,
        );
        // Clock skew is seconds to minutes; hours of leeway would keep expired tokens
        // valid (and huge values would overflow the expiry arithmetic).
        if leeway > MAX_ISSUER_LEEWAY {
            p.add(
                format!("{path}.leeway"),
                format!(
                    "leeway {}s is more than the maximum of {}s (1 hour)",
                    leeway.as_secs(),
                    MAX_ISSUER_LEEWAY.as_secs()
                ),
            );
            leeway = DEFAULT_ISSUER_LEEWAY;
        }
        let fetch_timeout = v::duration(
            p,
            format!("{path}.fetch_timeout"),
            m.fetch_timeout.as_ref(),
            DEFAULT_FETCH_TIMEOUT,
        );
        let refresh = v::duration(
            p,
            format!("{path}.jwks_refresh"),
            m.jwks_refresh.as_ref(),
            DEFAULT_JWKS_REFRESH,
        );
        let algorithms = match &m.algorithms {
            None => jwt::ALL_ASYMMETRIC.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    p.add(
                        format!("{path}.algorithms"),
                        "list at least one algorithm, or leave the key out",
                    );
                }
                list.iter()
                    .enumerate()
                    .filter_map(|(j, a)| {
                        jwt::asymmetric_alg(a)
                            .map_err(|r| p.add(format!("{path}.algorithms[{j}]"), format!("{}; allowed: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA", r.description)))
                            .ok()
                    })
                    .collect()
            }
        };
        let claims_list = |p: &mut Problems,
                           key: &str,
                           v: &Option<Vec<String>>,
                           default: &[&str]|
         -> Vec<String> {
            match v {
                None => default.iter().map(|s| s.to_string()).collect(),
                Some(l) if l.is_empty() || l.iter().any(|c| c.trim().is_empty()) => {
                    p.add(format!("{path}.{key}"), "claim names must not be empty");
                    Vec::new()
                }
                Some(l) => l.clone(),
            }
        };
        let scope_claims = claims_list(p, "scope_claims", &m.scope_claims, &["scope", "scp"]);
        let client_claims =
            claims_list(p, "client_claims", &m.client_claims, &["client_id", "azp"]);
        let audiences = m.audiences.clone().unwrap_or_default();
        if audiences.iter().any(|a| a.trim().is_empty()) {
            p.add(
                format!("{path}.audiences"),
                "audiences must not be empty strings",
            );
        }
        let sources = [
            m.jwks_uri.is_some(),
            m.discovery.is_some(),
            m.introspection.is_some(),
        ];
        let n_sources = sources.iter().filter(|b| **b).count();
        if n_sources != 1 {
            p.add(
                path.clone(),
                "give exactly one of jwks_uri, discovery or introspection",
            );
            continue;
        }
        if m.introspection.is_none() && audiences.is_empty() && !m.skip_audience_check {
            p.add(
                format!("{path}.audiences"),
                "a JWT issuer needs `audiences` (tokens for other APIs must not pass); set skip_audience_check: true only for IdPs whose tokens carry no aud",
            );
        }
        let fp = fingerprint(&[
            &m.name,
            &issuer,
            &format!("{:?}", m.jwks_uri),
            &format!("{:?}", m.discovery),
            &format!(
                "{:?}",
                m.introspection
                    .as_ref()
                    .map(|x| (&x.url, &x.client_id, x.client_secret.expose()))
            ),
            &audiences.join(" "),
            &format!("{algorithms:?}"),
            &leeway.as_secs().to_string(),
            &scope_claims.join(" "),
            &client_claims.join(" "),
            &m.skip_audience_check.to_string(),
        ]);
        let kind = if let Some(intro) = &m.introspection {
            let ipath = format!("{path}.introspection");
            let url = v::http_url(p, &format!("{ipath}.url"), &intro.url);
            if intro.client_id.trim().is_empty() {
                p.add(format!("{ipath}.client_id"), "must not be empty");
            }
            if intro.client_secret.is_empty() {
                p.add(format!("{ipath}.client_secret"), "must not be empty");
            }
            let ttl = v::duration(
                p,
                format!("{ipath}.cache_ttl"),
                intro.cache_ttl.as_ref(),
                Duration::from_secs(30),
            );
            let client = reg.client(p, &ipath, None, fetch_timeout);
            match (url, client) {
                (Some(u), Some(c)) => IssuerKind::Introspection(Box::new(Introspection::new(
                    u.to_string(),
                    intro.client_id.clone(),
                    intro.client_secret.clone(),
                    ttl,
                    fetch_timeout,
                    c,
                ))),
                _ => continue,
            }
        } else {
            let (source, key_path) = match (&m.jwks_uri, &m.discovery) {
                (Some(u), _) => (
                    v::http_url(p, &format!("{path}.jwks_uri"), u)
                        .map(|u| KeySource::Jwks(u.to_string())),
                    "jwks_uri",
                ),
                (_, Some(u)) => (
                    v::http_url(p, &format!("{path}.discovery"), u)
                        .map(|u| KeySource::Discovery(u.to_string())),
                    "discovery",
                ),
                _ => (None, ""),
            };
            let (Some(source), Some(client)) = (
                source,
                reg.client(p, &format!("{path}.{key_path}"), None, fetch_timeout),
            ) else {
                continue;
            };
            let reg_key = format!(
                "{}|{}|{:?}|{}|{}",
                m.name,
                issuer,
                source,
                fetch_timeout.as_millis(),
                refresh.as_millis()
            );
            let store = reg
                .key_stores
                .entry(reg_key)
                .or_insert_with(|| {
                    Arc::new(KeyStore::new(
                        m.name.as_str().into(),
                        issuer.clone(),
                        source,
                        Some(client),
                        fetch_timeout,
                        refresh,
                    ))
                })
                .clone();
            IssuerKind::Jwt(store)
        };
        out.push(Arc::new(Issuer {
            name: m.name.as_str().into(),
            issuer,
            kind,
            audiences,
            skip_audience_check: m.skip_audience_check,
            algorithms,
            leeway,
            scope_claims,
            client_claims,
            fingerprint: fp,
        }));
    }
    let _ = base;
    out
}

fn compile_upstreams(
    ms: &[UpstreamModel],
    base: &Path,
    reg: &Registry,
    p: &mut Problems,
) -> Vec<Arc<Upstream>> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, m) in ms.iter().enumerate() {
        let path = format!("upstreams[{i}]");
        if m.name.trim().is_empty() {
            p.add(format!("{path}.name"), "upstream name must not be empty");
        } else if !names.insert(m.name.clone()) {
            p.add(
                format!("{path}.name"),
                format!("duplicate upstream name \"{}\"", m.name),
            );
        }
        let connect_timeout = v::duration(
            p,
            format!("{path}.connect_timeout"),
            m.connect_timeout.as_ref(),
            Duration::from_secs(5),
        );
        let timeout = v::duration(
            p,
            format!("{path}.timeout"),
            m.timeout.as_ref(),
            Duration::from_secs(30),
        );
        let Some(url) = v::http_url(p, &format!("{path}.url"), &m.url) else {
            continue;
        };
        if url.query().is_some() || url.fragment().is_some() {
            p.add(
                format!("{path}.url"),
                "upstream URL must not have a query or fragment",
            );
        }
        let https = url.scheme() == "https";
        let ca = m.ca.as_ref().map(|c| resolve_path(base, c));
        if ca.is_some() && !https {
            p.add(
                format!("{path}.ca"),
                "`ca` only applies to https:// upstreams",
            );
        }
        let host = url.host_str().unwrap_or_default();
        let authority_s = match url.port() {
            Some(port) => format!(
                "{}:{port}",
                if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                }
            ),
            None => host.to_owned(),
        };
        let Ok(authority) = authority_s.parse::<Authority>() else {
            p.add(format!("{path}.url"), "invalid host");
            continue;
        };
        let auth = m
            .auth
            .as_ref()
            .and_then(|a| compile_upstream_auth(a, &m.name, &format!("{path}.auth"), reg, p));
        let base_path = url.path().trim_end_matches('/').to_owned();
        let csrf = m
            .csrf
            .as_ref()
            .and_then(|c| super::upstream_session::compile_csrf(c, &url, &base_path, &path, p));
        let Some(client) = reg.client(p, &format!("{path}.ca"), ca.as_deref(), connect_timeout)
        else {
            continue;
        };
        out.push(Arc::new(Upstream {
            name: m.name.as_str().into(),
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            host: HeaderValue::from_str(authority.as_str())
                .unwrap_or(HeaderValue::from_static("localhost")),
            authority,
            base_path,
            timeout,
            client,
            auth,
            csrf,
            pool: Default::default(),
        }));
    }
    out
}

fn compile_upstream_auth(
    a: &UpstreamAuthModel,
    upstream: &str,
    path: &str,
    reg: &Registry,
    p: &mut Problems,
) -> Option<UpstreamAuth> {
    let only = |p: &mut Problems, allowed: &[&str]| {
        let present: [(&str, bool); 14] = [
            ("token_url", a.token_url.is_some()),
            ("client_id", a.client_id.is_some()),
            ("client_secret", a.client_secret.is_some()),
            ("scope", a.scope.is_some()),
            ("audience", a.audience.is_some()),
            ("client_auth", a.client_auth.is_some()),
            ("request_format", a.request_format.is_some()),
            ("extra_params", a.extra_params.is_some()),
            ("username", a.username.is_some()),
            ("password", a.password.is_some()),
            ("service_key", a.service_key.is_some()),
            ("subject_token_type", a.subject_token_type.is_some()),
            ("requested_token_type", a.requested_token_type.is_some()),
            ("resource", a.resource.is_some()),
        ];
        for (k, is) in present {
            if is && !allowed.contains(&k) {
                p.0.push(v::Problem {
                    path: format!("{path}.{k}"),
                    message: format!("key \"{k}\" does not apply to auth type \"{}\"", a.kind),
                    at_key: true,
                });
            }
        }
    };
    match a.kind.as_str() {
        "basic" => {
            only(p, &["username", "password"]);
            let (Some(u), Some(pw)) = (&a.username, &a.password) else {
                p.add(path, "auth type basic needs username and password");
                return None;
            };
            if u.contains(':') {
                p.add(
                    format!("{path}.username"),
                    "a Basic username cannot contain ':'",
                );
            }
            // Plain Basic (RFC 7617): not form-encoded, unlike OAuth2 client auth.
            use base64::Engine;
            let raw = format!("{u}:{}", pw.expose());
            let mut h = HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ))
            .ok()?;
            h.set_sensitive(true);
            Some(UpstreamAuth::Basic(h))
        }
        kind if upstream_auth::TOKEN_TYPES.contains(&kind) => {
            let mut allowed = vec![
                "token_url",
                "client_id",
                "client_secret",
                "service_key",
                "scope",
                "audience",
                "client_auth",
                "request_format",
                "extra_params",
            ];
            allowed.extend_from_slice(upstream_auth::extra_keys(kind));
            only(p, &allowed);
            let (url, client_id, secret) = upstream_auth::client(a, path, p);
            let grant = upstream_auth::grant(a, path, p);
            let client_auth = match a.client_auth.as_deref() {
                None | Some("basic") => ClientAuth::Basic,
                Some("body") => ClientAuth::Body,
                Some(o) => {
                    p.add(
                        format!("{path}.client_auth"),
                        format!("unknown client_auth \"{o}\": use basic or body"),
                    );
                    ClientAuth::Basic
                }
            };
            let format = match a.request_format.as_deref() {
                None | Some("form") => RequestFormat::Form,
                Some("json") => RequestFormat::Json,
                Some(o) => {
                    p.add(
                        format!("{path}.request_format"),
                        format!("unknown request_format \"{o}\": use form or json"),
                    );
                    RequestFormat::Form
                }
            };
            let scope = a.scope.clone().filter(|s| !s.trim().is_empty());
            let extra = a.extra_params.clone().unwrap_or_default();
            for k in extra.keys() {
                if upstream_auth::reserved_params(&grant).contains(&k.as_str()) {
                    p.add(
                        format!("{path}.extra_params.{k}"),
                        format!("\"{k}\" is set by tollgate"),
                    );
                }
            }
            let client = reg.client(p, path, None, DEFAULT_FETCH_TIMEOUT)?;
            let url = url?.to_string();
            let cache_key = OAuth2Source::cache_key_for(
                upstream,
                &url,
                &client_id,
                scope.as_deref(),
                a.audience.as_deref(),
                &extra,
            );
            let on_behalf = grant != Grant::ClientCredentials;
            // Tokens of another grant (or other exchange parameters) are never shared.
            let cache_key = if on_behalf {
                fingerprint(&[&crate::encoding::hex(&cache_key), &format!("{grant:?}")])
            } else {
                cache_key
            };
            let src = Arc::new(OAuth2Source {
                upstream: upstream.into(),
                token_url: url,
                client_id,
                client_secret: secret,
                scope,
                audience: a.audience.clone(),
                client_auth,
                format,
                extra_params: extra,
                grant,
                client,
                timeout: Duration::from_secs(10),
                cache_key,
            });
            Some(if on_behalf {
                UpstreamAuth::OnBehalf(src)
            } else {
                UpstreamAuth::OAuth2(src)
            })
        }
        other => {
            p.add(
                format!("{path}.type"),
                format!("unknown auth type \"{other}\": use basic, oauth2_client_credentials, token_exchange or jwt_bearer"),
            );
            None
        }
    }
}

fn compile_routes(
    ms: &[RouteModel],
    issuers: &[Arc<Issuer>],
    upstreams: &[Arc<Upstream>],
    has_token_service: bool,
    embedded: bool,
    limits: &rl::Compiled,
    p: &mut Problems,
) -> (Vec<Arc<Route>>, RouteTable) {
    let mut routes = Vec::with_capacity(ms.len());
    let mut table = RouteTable::default();
    let mut names: HashSet<&str> = HashSet::with_capacity(ms.len());
    let by_name: HashMap<&str, &Arc<Upstream>> =
        upstreams.iter().map(|u| (&*u.name, u)).rev().collect();
    let all = At::Path("routes");
    for (i, m) in ms.iter().enumerate() {
        // Key paths are written out only when a problem is reported.
        let path = all.index(i);
        if m.name.trim().is_empty() {
            p.add(path.key("name").to_string(), "route name must not be empty");
        } else if !names.insert(&m.name) {
            p.add(
                path.key("name").to_string(),
                format!("duplicate route name \"{}\"", m.name),
            );
        }
        let prefix = match normalize_path(&m.path_prefix) {
            Ok(n) if n.trim_end_matches('/') == m.path_prefix.trim_end_matches('/') => n,
            Ok(n) => {
                p.add(
                    path.key("path_prefix").to_string(),
                    format!(
                        "path_prefix is not normalised; write \"{}\"",
                        n.trim_end_matches('/')
                    ),
                );
                n
            }
            Err(e) => {
                p.add(
                    path.key("path_prefix").to_string(),
                    format!("invalid path_prefix \"{}\": {}", m.path_prefix, e.0),
                );
                continue;
            }
        };
        let upstream = match &m.upstream {
            Some(u) => match by_name.get(u.as_str()) {
                Some(x) => Some(Arc::clone(x)),
                None => {
                    let known: Vec<&str> = upstreams.iter().map(|x| &*x.name).collect();
                    let hint = v::suggest(u, &known)
                        .map(|s| format!(" (did you mean \"{s}\"?)"))
                        .unwrap_or_default();
                    p.add(
                        path.key("upstream").to_string(),
                        format!("unknown upstream \"{u}\"{hint}"),
                    );
                    None
                }
            },
            None if embedded => None,
            None => {
                p.add(path.to_string(), "missing required key \"upstream\"");
                None
            }
        };
        let auth = match &m.auth {
            None => {
                p.add(path.to_string(), "missing required key \"auth\": give an auth block, or `auth: none` for a public route");
                RouteAuth::None
            }
            Some(RouteAuthModel::Keyword(k)) if k == "none" => RouteAuth::None,
            Some(RouteAuthModel::Keyword(k)) => {
                p.add(
                    path.key("auth").to_string(),
                    format!("auth must be `none` or a block, got \"{k}\""),
                );
                RouteAuth::None
            }
            Some(RouteAuthModel::Block(b)) => RouteAuth::Bearer(compile_auth_rule(
                b,
                issuers,
                has_token_service,
                path.key("auth"),
                p,
            )),
        };
        let permissions = m.permissions.as_ref().map(|list| {
            if matches!(auth, RouteAuth::None) && m.auth.is_some() {
                p.add(
                    path.key("permissions").to_string(),
                    "permissions need an auth block (they are checked against the token)",
                );
            }
            let all = path.key("permissions");
            let under = prefix.trim_end_matches('/');
            let mut entries = Vec::with_capacity(list.len());
            for (j, pm) in list.iter().enumerate() {
                let ppath = all.index(j);
                let methods = if pm.methods.iter().any(|x| x == "*") {
                    None
                } else {
                    if pm.methods.is_empty() {
                        p.add(
                            ppath.key("methods").to_string(),
                            "list at least one method (or \"*\")",
                        );
                    }
                    let mpath = ppath.key("methods");
                    Some(
                        pm.methods
                            .iter()
                            .enumerate()
                            .filter_map(|(k, s)| v::method(p, mpath.index(k), s))
                            .collect(),
                    )
                };
                let spath = ppath.key("scopes");
                for (k, s) in pm.scopes.iter().enumerate() {
                    v::token_word(p, spath.index(k), s, "scope");
                }
                let inside = pm.path == under
                    || pm
                        .path
                        .strip_prefix(under)
                        .is_some_and(|rest| rest.starts_with('/'))
                    || under.is_empty();
                if !inside {
                    p.add(
                        ppath.key("path").to_string(),
                        format!(
                            "\"{}\" is outside the route's path_prefix \"{}\" and can never match",
                            pm.path, m.path_prefix
                        ),
                    );
                }
                match Permission::new(&pm.path, methods, pm.scopes.clone()) {
                    Ok(e) => entries.push(e),
                    Err(e) => p.add(ppath.key("path").to_string(), e),
                }
            }
            Permissions::new(entries)
        });
        let cors = m
            .cors
            .as_ref()
            .and_then(|c| compile_cors(c, path.key("cors"), p));
        let body_credentials = match m.body_credentials.as_deref() {
            None => None,
            Some("basic") => Some(BodyCredentials {
                grant_type_to_query: m.grant_type_to_query.unwrap_or(false),
            }),
            Some(o) => {
                p.add(
                    path.key("body_credentials").to_string(),
                    format!("unknown body_credentials \"{o}\": the only value is basic"),
                );
                None
            }
        };
        if m.grant_type_to_query.is_some() && body_credentials.is_none() {
            p.add(
                path.key("grant_type_to_query").to_string(),
                "only applies together with body_credentials: basic",
            );
        }
        let hpath = path.key("hosts");
        let hosts: Vec<HostPattern> = m
            .hosts
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(j, h)| {
                let ok = !h.is_empty()
                    && (h.strip_prefix("*.").unwrap_or(h))
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                if !ok {
                    p.add(
                        hpath.index(j).to_string(),
                        format!(
                            "invalid host \"{h}\": use \"api.company.com\" or \"*.company.com\""
                        ),
                    );
                    return None;
                }
                Some(HostPattern::parse(h))
            })
            .collect();
        if m.hosts.as_ref().is_some_and(|h| h.is_empty()) {
            p.add(
                hpath.to_string(),
                "empty hosts list: leave the key out to match every host",
            );
        }
        let id = routes.len();
        if !table.insert(&hosts, &prefix, id) {
            p.add(
                path.key("path_prefix").to_string(),
                format!(
                    "another route already has path_prefix \"{}\" for the same hosts",
                    m.path_prefix
                ),
            );
        }
        if let (RouteAuth::None, Some(u)) = (&auth, &upstream) {
            if matches!(u.auth, Some(UpstreamAuth::OnBehalf(_))) && m.auth.is_some() {
                p.add(
                    path.key("auth").to_string(),
                    format!("upstream \"{}\" passes on the caller's identity (token_exchange / jwt_bearer): the route needs an auth block, not `auth: none`", u.name),
                );
            }
        }
        let login = matches!(&m.auth, Some(RouteAuthModel::Block(b)) if b.login == Some(true));
        let strip_cookies = super::upstream_session::strip_cookies(
            m.strip_cookies,
            matches!(auth, RouteAuth::Bearer(_)),
            login,
        );
        let rate_limits = rl::route_limits(
            limits,
            m.rate_limits.as_deref(),
            matches!(auth, RouteAuth::None),
            path,
            p,
        );
        routes.push(Arc::new(Route {
            name: m.name.as_str().into(),
            path_prefix: prefix,
            upstream,
            auth,
            permissions,
            cors,
            body_credentials,
            strip_cookies,
            rate_limits,
            login,
        }));
    }
    (routes, table)
}

fn compile_auth_rule(
    b: &AuthBlockModel,
    issuers: &[Arc<Issuer>],
    has_ts: bool,
    path: At,
    p: &mut Problems,
) -> AuthRule {
    let mut idx = Vec::new();
    match &b.issuers {
        None => idx.extend(0..issuers.len()),
        Some(list) => {
            if list.is_empty() {
                p.add(
                    path.key("issuers").to_string(),
                    "empty issuers list: leave the key out to accept every issuer",
                );
            }
            for (j, name) in list.iter().enumerate() {
                match issuers.iter().position(|i| &*i.name == name.as_str()) {
                    Some(k) => idx.push(k),
                    None if name == "local" && has_ts => {}
                    None => {
                        let mut known: Vec<&str> = issuers.iter().map(|i| &*i.name).collect();
                        if has_ts {
                            known.push("local");
                        }
                        let hint = v::suggest(name, &known)
                            .map(|s| format!(" (did you mean \"{s}\"?)"))
                            .unwrap_or_default();
                        let extra = if name == "local" {
                            " (`local` needs a token_service block)"
                        } else {
                            ""
                        };
                        p.add(
                            path.key("issuers").index(j).to_string(),
                            format!("unknown issuer \"{name}\"{hint}{extra}"),
                        );
                    }
                }
            }
        }
    }
    if idx.is_empty() && b.issuers.is_none() && !has_ts {
        p.add(path.to_string(), "no issuers are configured, so no token could ever pass: add an `issuers` entry or use `auth: none`");
    }
    let scopes = b.scopes.clone().unwrap_or_default();
    let spath = path.key("scopes");
    for (j, s) in scopes.iter().enumerate() {
        v::token_word(p, spath.index(j), s, "scope");
    }
    let clients = b.clients.clone();
    if let Some(c) = &clients {
        let cpath = path.key("clients");
        if c.is_empty() {
            p.add(
                cpath.to_string(),
                "empty clients list would deny everyone: leave the key out to allow any client",
            );
        }
        for (j, s) in c.iter().enumerate() {
            v::token_word(p, cpath.index(j), s, "client id");
        }
    }
    AuthRule {
        issuers: idx,
        scopes,
        clients,
    }
}

fn compile_cors(c: &CorsModel, path: At, p: &mut Problems) -> Option<Cors> {
    let mut origins = Vec::new();
    for (j, o) in c.allow_origins.iter().enumerate() {
        match OriginPattern::parse(o) {
            Ok(OriginPattern::Any) if c.allow_credentials => p.add(
                path.key("allow_origins").index(j).to_string(),
                "\"*\" together with allow_credentials: true is not allowed (browsers refuse it, and it would let any site read credentialed responses); list the origins",
            ),
            Ok(x) => origins.push(x),
            Err(e) => p.add(path.key("allow_origins").index(j).to_string(), e),
        }
    }
    if c.allow_origins.is_empty() {
        p.add(
            path.key("allow_origins").to_string(),
            "list at least one origin",
        );
    }
    for (j, m) in c.allow_methods.iter().enumerate() {
        v::method(p, path.key("allow_methods").index(j), m);
    }
    for (key, list) in [
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (j, h) in list.iter().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                p.add(
                    path.key(key).index(j).to_string(),
                    format!("invalid header name \"{h}\""),
                );
            }
        }
    }
    let max_age = c
        .max_age
        .as_ref()
        .map(|m| v::duration(p, path.key("max_age"), Some(m), Duration::ZERO));
    Cors::new(
        origins,
        &c.allow_methods,
        &c.allow_headers,
        &c.expose_headers,
        c.allow_credentials,
        max_age,
    )
    .map_err(|e| p.add(path.to_string(), e))
    .ok()
}
