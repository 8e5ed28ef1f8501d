//! The `upstreams:` section: where routes forward to (URL, CA, timeouts) and the
//! credentials tollgate adds on the way (Basic, or an OAuth2 token: client credentials,
//! a service key's, or one exchanged for the caller's, see `upstream_auth.rs`), and the
//! SAP CSRF-token session (`upstream_session.rs`).
//! Compiles to [`Upstream`]s, which `proxy.rs` forwards to; HTTP clients (and their
//! pooled connections) are reused across reloads through the [`Registry`].

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::HeaderValue;

use super::registry::Registry;
use super::subst::resolve_path;
use super::upstream_auth::{self, UpstreamAuthModel};
use super::upstream_endpoints::{
    self, DnsModel, EndpointSettings, HealthCheckModel, PassiveModel, RetriesModel,
};
use super::upstream_session::{self, CsrfModel};
use super::validate::{self as v, Problems};
use super::yaml::{section, DurationText, List};
use crate::outbound::Outbound;
use crate::secret::Secret;
use crate::upstream::{Protocol, Upstream};

section! {
    pub struct UpstreamModel {
        /// The name routes refer to in `upstream`.
        "name" => pub name: Option<String> as required(),
        /// The backend's base URL, e.g. "http://127.0.0.1:9000" (https:// is verified
        /// against the system roots or `ca`). Give `url` or `urls`.
        "url" => pub url: Option<String>,
        /// Several endpoints of the same backend, e.g. ["http://10.0.0.1:9000",
        /// "http://10.0.0.2:9000"], instead of `url`: same scheme and path for all;
        /// requests are spread by `balance`. Every other key applies to each endpoint.
        "urls" => pub urls: Option<List<String>>,
        /// How requests are spread over `urls`: round-robin (default) or
        /// least-requests (of two endpoints drawn at random, the one with fewer
        /// requests in flight).
        "balance" => pub balance: Option<String> as choice(&["round-robin", "least-requests"]),
        /// Passive ejection: an endpoint that fails several exchanges in a row gets no
        /// requests for a while (on by default for `urls`).
        "passive" => pub passive: Option<PassiveModel>,
        /// Active health checks: GET a path on every endpoint at an interval.
        "health_check" => pub health_check: Option<HealthCheckModel>,
        /// Retries of idempotent requests on another endpoint (default for `urls`:
        /// attempts 2 on connect-failure; none for a single `url`).
        "retries" => pub retries: Option<RetriesModel>,
        /// How the URL's name becomes endpoints: `per_name` (default: one endpoint,
        /// resolved on each new connection) or `per_address` (resolved in the
        /// background, one endpoint per address: Kubernetes headless Services).
        "dns" => pub dns: Option<DnsModel>,
        /// Verify an https:// upstream against this CA (PEM file) instead of the system roots.
        "ca" => pub ca: Option<String>,
        /// Time allowed to connect (default 5s); longer -> 502.
        "connect_timeout" => pub connect_timeout: Option<DurationText>,
        /// Time allowed until the response head (default 30s); longer -> 504.
        "timeout" => pub timeout: Option<DurationText>,
        /// Credentials tollgate adds on the way upstream.
        "auth" => pub auth: Option<UpstreamAuthModel>,
        /// The SAP X-CSRF-Token protocol: fetch a token, send it with changing requests.
        "csrf" => pub csrf: Option<CsrfModel>,
        /// `http1` (default), `h2` (HTTP/2 over TLS) or `h2c` (cleartext HTTP/2): gRPC
        /// upstreams speak HTTP/2.
        "protocol" => pub protocol: Option<String> as choice(&["http1", "h2", "h2c"]),
        /// The HTTP proxy for ALL traffic to this upstream (forwarded requests, CSRF
        /// fetches) and its `auth` token requests: "http://[user:password@]host:port"
        /// (https:// for TLS to the proxy; CONNECT tunnels), or `direct`. Default:
        /// forwarded traffic goes directly (HTTPS_PROXY/HTTP_PROXY never redirect it);
        /// `auth` token requests follow HTTPS_PROXY/HTTP_PROXY/NO_PROXY.
        "proxy" => pub proxy: Option<Secret>,
    }
}

/// The upstreams that compiled; each one that did not has its problems recorded.
pub fn compile(
    ms: &List<UpstreamModel>,
    base: &Path,
    reg: &Registry,
    p: &mut Problems,
) -> Vec<Arc<Upstream>> {
    let mut names = HashSet::new();
    ms.iter()
        .filter_map(|(i, m)| {
            let path = format!("upstreams[{i}]");
            match m.name.as_deref() {
                None => p.missing(&path, "name", ""),
                Some(n) if n.trim().is_empty() => {
                    p.add(format!("{path}.name"), "upstream name must not be empty")
                }
                Some(n) if !names.insert(n) => p.add(
                    format!("{path}.name"),
                    format!("duplicate upstream name \"{n}\""),
                ),
                Some(_) => {}
            }
            compile_one(m, &path, base, reg, p)
        })
        .collect()
}

fn compile_one(
    m: &UpstreamModel,
    path: &str,
    base: &Path,
    reg: &Registry,
    p: &mut Problems,
) -> Option<Arc<Upstream>> {
    let duration = |p: &mut Problems, key: &str, v: &Option<DurationText>, default| {
        v::duration(p, format!("{path}.{key}"), v.as_ref(), default)
    };
    let connect_timeout = duration(
        p,
        "connect_timeout",
        &m.connect_timeout,
        Duration::from_secs(5),
    );
    let timeout = duration(p, "timeout", &m.timeout, Duration::from_secs(30));
    let name = m.name.as_deref().unwrap_or_default();
    // An upstream's own `proxy:` carries everything to it; without one, forwarded
    // traffic goes directly and only token requests follow the environment.
    let ppath = format!("{path}.proxy");
    let forwarded = v::outbound(p, &ppath, m.proxy.as_ref(), Outbound::Direct);
    let token_calls = match &m.proxy {
        Some(_) => forwarded.clone(),
        None => Outbound::Env,
    };
    let auth = m.auth.as_ref().and_then(|a| {
        upstream_auth::compile(a, name, &format!("{path}.auth"), &token_calls, reg, p)
    });
    let urls: Vec<(String, &String)> = match (&m.url, &m.urls) {
        (Some(_), Some(_)) => {
            p.add(
                format!("{path}.urls"),
                "give either url (one endpoint) or urls (several), not both",
            );
            return None;
        }
        (None, None) => {
            p.missing(
                path,
                "url",
                " (e.g. url: \"http://127.0.0.1:9000\", or urls: [...] for several endpoints)",
            );
            return None;
        }
        (Some(u), None) => vec![(format!("{path}.url"), u)],
        (None, Some(list)) => {
            if list.is_empty() {
                p.add(
                    format!("{path}.urls"),
                    "urls needs at least one URL (e.g. urls: [\"http://10.0.0.1:9000\", \"http://10.0.0.2:9000\"])",
                );
                return None;
            }
            list.iter()
                .map(|(i, u)| (format!("{path}.urls[{i}]"), u))
                .collect()
        }
    };
    let mut endpoints = Vec::with_capacity(urls.len());
    let mut first: Option<(url::Url, String)> = None;
    for (at, written) in &urls {
        let Some(url) = v::http_url(p, at, written) else {
            continue;
        };
        if url.query().is_some() || url.fragment().is_some() {
            p.add(at.clone(), "upstream URL must not have a query or fragment");
        }
        let Some(authority) = authority(&url) else {
            p.add(at.clone(), "invalid host");
            continue;
        };
        let scheme = if url.scheme() == "https" {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        if let Some((f, f_at)) = &first {
            let f_at = f_at.rsplit('.').next().unwrap_or_default();
            if f.scheme() != url.scheme() {
                p.add(
                    at.clone(),
                    format!(
                        "every URL of urls needs the same scheme: {f_at} is {}://, this one {}://",
                        f.scheme(),
                        url.scheme()
                    ),
                );
            }
            if f.path().trim_end_matches('/') != url.path().trim_end_matches('/') {
                p.add(
                    at.clone(),
                    format!(
                        "every URL of urls needs the same path: {f_at} has \"{}\", this one \"{}\"",
                        f.path(),
                        url.path()
                    ),
                );
            }
        }
        if let Some((_, _, twin)) = endpoints
            .iter()
            .find(|(_, a, _): &&(Scheme, Authority, &String)| *a == authority)
        {
            let twin = twin.rsplit('.').next().unwrap_or_default();
            p.add(
                at.clone(),
                format!("{authority} is listed twice in urls ({twin})"),
            );
        }
        endpoints.push((scheme, authority, at));
        first.get_or_insert((url, at.clone()));
    }
    let (url, _) = first?;
    let several = m.urls.is_some();
    if several && m.csrf.is_some() && endpoints.len() > 1 {
        p.add(
            format!("{path}.csrf"),
            "csrf needs one endpoint (url): an SAP session and its CSRF token live on one server",
        );
    }
    let per_address = m
        .dns
        .as_ref()
        .and_then(|d| upstream_endpoints::dns_mode(d, &format!("{path}.dns"), p));
    if per_address.is_some() {
        if endpoints.len() > 1 {
            p.add(
                format!("{path}.dns.mode"),
                "per_address expands one name into its addresses: give the name as url (not several urls)",
            );
        }
        if !matches!(forwarded, Outbound::Direct) {
            p.add(
                format!("{path}.dns.mode"),
                "per_address connects to each address itself; through an outbound proxy (proxy:) the proxy resolves the name: use mode per_name",
            );
        }
        if m.csrf.is_some() {
            p.add(
                format!("{path}.csrf"),
                "csrf needs one server (an SAP session and its CSRF token live on one): not with dns per_address",
            );
        }
    }
    let base_path = url.path().trim_end_matches('/').to_owned();
    let csrf = m
        .csrf
        .as_ref()
        .and_then(|c| upstream_session::compile_csrf(c, &url, &base_path, path, p));
    let https = url.scheme() == "https";
    let ca = m.ca.as_ref().map(|c| resolve_path(base, c));
    if ca.is_some() && !https {
        p.add(
            format!("{path}.ca"),
            "`ca` only applies to https:// upstreams",
        );
    }
    let Some(authority) = authority(&url) else {
        p.add(format!("{path}.url"), "invalid host");
        return None;
    };
    let protocol = protocol(m.protocol.as_deref(), https, path, p);
    if protocol != Protocol::Http1 && csrf.is_some() {
        p.add(
            format!("{path}.csrf"),
            "csrf applies to HTTP/1.1 upstreams (SAP OData); remove it or protocol",
        );
    }
    let client = reg.client(
        p,
        &format!("{path}.ca"),
        ca.as_deref(),
        connect_timeout,
        &forwarded,
    )?;
    // The plain single `url` (no balancing, retries or checks) keeps the direct path.
    let balanced = several
        || m.balance.is_some()
        || m.passive.is_some()
        || m.health_check.is_some()
        || m.retries.is_some()
        || per_address.is_some();
    let scheme = if https { Scheme::HTTPS } else { Scheme::HTTP };
    // A name resolved per address starts with the addresses known from before a
    // reload (none at the first start); `discovery.rs` keeps them current.
    let dns = per_address.map(|(refresh, min_refresh)| {
        let port = url.port_or_known_default().unwrap_or(80);
        let host = url.host_str().unwrap_or_default();
        crate::dns::PerAddress {
            target: reg.dns_target(name, host, port),
            refresh,
            min_refresh,
        }
    });
    let endpoints = balanced.then(|| {
        let eps = upstream_endpoints::compile(
            EndpointSettings {
                name,
                path,
                endpoints: match &dns {
                    Some(_) => Vec::new(),
                    None => endpoints.into_iter().map(|(s, a, _)| (s, a)).collect(),
                },
                balance: m.balance.as_deref(),
                passive: m.passive.as_ref(),
                health_check: m.health_check.as_ref(),
                retries: m.retries.as_ref(),
                per_address: dns.is_some(),
            },
            reg,
            p,
        );
        if let Some(d) = &dns {
            eps.replace(
                d.target
                    .addresses()
                    .into_iter()
                    .map(|(addr, state)| {
                        Arc::new(crate::balancer::Endpoint::at_address(
                            scheme.clone(),
                            authority.clone(),
                            addr,
                            state,
                        ))
                    })
                    .collect(),
            );
        }
        Box::new(eps)
    });
    Some(Arc::new(Upstream {
        name: name.into(),
        scheme,
        host: HeaderValue::from_str(authority.as_str())
            .unwrap_or(HeaderValue::from_static("localhost")),
        authority,
        base_path,
        timeout,
        client,
        auth,
        csrf,
        pool: Default::default(),
        protocol,
        h2: Default::default(),
        endpoints,
        dns,
        series: Default::default(),
    }))
}

fn protocol(written: Option<&str>, https: bool, path: &str, p: &mut Problems) -> Protocol {
    let at = || format!("{path}.protocol");
    match written {
        None | Some("http1") => Protocol::Http1,
        Some("h2") if https => Protocol::H2,
        Some("h2") => {
            p.add(
                at(),
                "h2 is HTTP/2 over TLS and needs an https:// url; for cleartext HTTP/2 write h2c",
            );
            Protocol::H2
        }
        Some("h2c") if !https => Protocol::H2c,
        Some("h2c") => {
            p.add(
                at(),
                "h2c is cleartext HTTP/2 and needs an http:// url; over TLS write h2",
            );
            Protocol::H2c
        }
        Some(other) => {
            p.add(
                at(),
                format!("unknown protocol \"{other}\": http1, h2 (HTTP/2 over TLS) or h2c (cleartext HTTP/2)"),
            );
            Protocol::Http1
        }
    }
}

/// `host[:port]` of a URL, IPv6 hosts in brackets.
fn authority(url: &url::Url) -> Option<Authority> {
    let host = url.host_str().unwrap_or_default();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let s = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    s.parse().ok()
}
