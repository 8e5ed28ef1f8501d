//! The `server:` section: listen addresses, TLS (certificates, SNI, client CA), limits,
//! the admin listener, the decision listener and `extension_methods`. Compiles to [`Server`], which the
//! listeners (`listener.rs`) are bound with.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use super::admin_auth::AdminAuthModel;
use super::subst::resolve_path;
use super::validate::{self as v, Problems};
use super::yaml::{section, DurationText, List, ListenAddr};
use crate::route::HostPattern;
use crate::runtime::{Limits, Server};
use crate::tls;

section! {
    pub struct ServerModel {
        /// The public listener, e.g. "127.0.0.1:8080" (HTTP/1.1 and h2c; HTTPS with `tls`).
        /// Changes apply after a restart.
        "listen" => pub listen: Option<ListenAddr> as required(),
        /// HTTPS on `listen` (ALPN h2 + http/1.1); the files are reloaded when they change.
        "tls" => pub tls: Option<TlsModel>,
        /// A plain-HTTP listener that answers 308 to https://{host}{path}.
        "redirect_listen" => pub redirect_listen: Option<ListenAddr>,
        /// The HTTPS port clients use, when it is not 443 (added to redirects).
        "redirect_https_port" => pub redirect_https_port: Option<u16>,
        /// The admin listener: /healthz /readyz /metrics /admin/*. Never expose it publicly.
        "admin_listen" => pub admin_listen: Option<ListenAddr>,
        /// The decision service: Envoy `ext_authz`, Traefik `forwardAuth` and nginx
        /// `auth_request` ask here whether to let a request pass (its own listener).
        "decision_listen" => pub decision_listen: Option<ListenAddr>,
        /// Protection of the admin API (all but /healthz and /readyz): a Bearer rule like
        /// a route's, or Basic credentials.
        "admin_auth" => pub admin_auth: Option<AdminAuthModel> as restricting(),
        /// Request size, time and concurrency limits.
        "limits" => pub limits: LimitsModel,
        /// HTTP methods beyond the standard nine that routes may name (`PURGE`, ...).
        "extension_methods" => pub extension_methods: Option<List<String>>,
        /// The resolver for upstreams with `dns: {mode: per_address}` (default: the
        /// system's name servers from /etc/resolv.conf, and /etc/hosts).
        "dns" => pub dns: Option<DnsModel>,
    }
}

section! {
    /// `server.dns`
    pub struct DnsModel {
        /// Name servers asked (UDP, TCP for long answers), e.g. ["10.96.0.10",
        /// "127.0.0.1:5353"] (port 53 unless given); /etc/hosts is not read then.
        "servers" => pub servers: Option<List<String>>,
        /// Time allowed for one query (default 5s).
        "query_timeout" => pub query_timeout: Option<DurationText>,
    }
}

section! {
    pub struct TlsModel {
        /// The certificate chain (PEM file).
        "cert" => pub cert: Option<String> as required(),
        /// The certificate's private key (PEM file).
        "key" => pub key: Option<String> as required(),
        /// Require client certificates signed by this CA (PEM file): mutual TLS.
        "client_ca" => pub client_ca: Option<String>,
        /// More certificates, chosen by the host name the client asks for (SNI).
        "sni" => pub sni: List<SniModel>,
    }
}

section! {
    pub struct SniModel {
        /// The host names this certificate serves.
        "hosts" => pub hosts: List<String> as required(),
        /// The certificate chain (PEM file).
        "cert" => pub cert: Option<String> as required(),
        /// The certificate's private key (PEM file).
        "key" => pub key: Option<String> as required(),
    }
}

section! {
    pub struct LimitsModel {
        /// Largest request head (default 16384); larger -> 431.
        "max_header_bytes" => pub max_header_bytes: Option<u64>,
        /// Largest request body (default 10485760); larger -> 413.
        "max_body_bytes" => pub max_body_bytes: Option<u64>,
        /// Time allowed to send the request head (default 10s).
        "header_read_timeout" => pub header_read_timeout: Option<DurationText>,
        /// End-to-end time allowed for a request (default 60s); longer -> 504.
        "request_timeout" => pub request_timeout: Option<DurationText>,
        /// Open client connections at most (default 10000).
        "max_connections" => pub max_connections: Option<u64>,
        /// Requests being handled at once; more are answered 503 at once (load shedding).
        "max_concurrent_requests" => pub max_concurrent_requests: Option<u64>,
    }
}

/// A certificate closer to its end than this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

pub fn compile(s: Option<&ServerModel>, base: &Path, p: &mut Problems) -> Option<Server> {
    let Some(s) = s else {
        p.add(
            "server",
            "missing required key \"server\" (with at least server.listen)",
        );
        return None;
    };
    let addr = |p: &mut Problems, key: &str, a: &Option<ListenAddr>| {
        a.as_ref()
            .and_then(|a| v::socket_addr(p, &format!("server.{key}"), &a.0))
    };
    let listen = addr(p, "listen", &s.listen);
    if s.listen.is_none() {
        p.missing("server", "listen", " (e.g. listen: \"127.0.0.1:8080\")");
    }
    let redirect_listen = addr(p, "redirect_listen", &s.redirect_listen);
    let admin_listen = addr(p, "admin_listen", &s.admin_listen);
    let decision_listen = addr(p, "decision_listen", &s.decision_listen);
    // Two listeners on one address: `run` could never start (the second bind fails).
    // An unspecified address (0.0.0.0, [::]) takes its port on every address of its
    // family ([::] on IPv4 too, as Linux binds it dual-stack); port 0 takes a free port
    // each time, so it never collides.
    let listeners = [
        ("listen", listen),
        ("admin_listen", admin_listen),
        ("redirect_listen", redirect_listen),
        ("decision_listen", decision_listen),
    ];
    let clash = |a: std::net::SocketAddr, b: std::net::SocketAddr| {
        let covers = |wide: std::net::SocketAddr, other: std::net::SocketAddr| {
            wide.ip().is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
        };
        a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
    };
    for (i, (key, a)) in listeners.iter().enumerate() {
        let Some(a) = a.filter(|a| a.port() != 0) else {
            continue;
        };
        let earlier = listeners[..i]
            .iter()
            .find(|(_, b)| b.is_some_and(|b| clash(a, b)));
        if let Some((other, _)) = earlier {
            // The decision listener trusts what the ingress says about the request
            // (method, path, host, client address): it must never be reachable as
            // another listener.
            let why = if *key == "decision_listen" {
                "the decision service needs a listener of its own, reachable by the ingress only"
            } else {
                "every listener needs an address of its own"
            };
            p.add(
                format!("server.{key}"),
                format!("{a} is also server.{other}'s address: {why}"),
            );
        }
    }
    let limits = compile_limits(&s.limits, p);
    let dns = s
        .dns
        .as_ref()
        .map(|d| compile_dns(d, p))
        .unwrap_or_default();
    let tls = s.tls.as_ref().and_then(|t| compile_tls(t, base, p));
    Some(Server {
        listen: listen?,
        tls,
        redirect_listen,
        admin_listen,
        decision_listen,
        admin_auth: None,
        redirect_https_port: s.redirect_https_port,
        limits,
        dns,
    })
}

fn compile_dns(d: &DnsModel, p: &mut Problems) -> crate::dns::DnsSettings {
    let mut servers = Vec::new();
    if d.servers.as_ref().is_some_and(|l| l.is_empty()) {
        p.add(
            "server.dns.servers",
            "list at least one name server, or remove servers to use the system's",
        );
    }
    for (i, s) in d.servers.iter().flat_map(|l| l.iter()) {
        let at = format!("server.dns.servers[{i}]");
        let parsed = s.parse::<std::net::SocketAddr>().ok().or_else(|| {
            s.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        });
        match parsed {
            Some(a) if a.port() != 0 => servers.push(a),
            _ => p.add(
                at,
                format!("\"{s}\" is not a name server address: an IP address, optionally with a port (10.96.0.10, 127.0.0.1:5353, [fd00::a]:53)"),
            ),
        }
    }
    crate::dns::DnsSettings {
        servers,
        timeout: d.query_timeout.as_ref().map(|t| {
            v::duration(
                p,
                "server.dns.query_timeout",
                Some(t),
                Duration::from_secs(5),
            )
        }),
    }
}

fn compile_limits(l: &LimitsModel, p: &mut Problems) -> Limits {
    let d = Limits::default();
    let at = |key: &str| format!("server.limits.{key}");
    let count = |p: &mut Problems, key: &str, v: Option<u64>, min: u64, default: usize| match v {
        Some(n) if n < min => {
            p.add(at(key), format!("must be at least {min}"));
            default
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => default,
    };
    Limits {
        max_header_bytes: count(
            p,
            "max_header_bytes",
            l.max_header_bytes,
            crate::runtime::MIN_MAX_HEADER_BYTES as u64,
            d.max_header_bytes,
        ),
        max_body_bytes: l.max_body_bytes.unwrap_or(d.max_body_bytes),
        header_read_timeout: v::duration(
            p,
            at("header_read_timeout"),
            l.header_read_timeout.as_ref(),
            d.header_read_timeout,
        ),
        request_timeout: v::duration(
            p,
            at("request_timeout"),
            l.request_timeout.as_ref(),
            d.request_timeout,
        ),
        max_connections: count(
            p,
            "max_connections",
            l.max_connections,
            1,
            d.max_connections,
        ),
        max_concurrent_requests: count(
            p,
            "max_concurrent_requests",
            l.max_concurrent_requests,
            1,
            d.max_concurrent_requests,
        ),
    }
}

/// `server.extension_methods`: method tokens routes may name besides the standard nine.
pub fn extension_methods(s: Option<&ServerModel>, p: &mut Problems) -> Vec<String> {
    let Some(list) = s.and_then(|s| s.extension_methods.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter() {
        let path = format!("server.extension_methods[{i}]");
        if !v::is_token(m) {
            p.add(path, format!("invalid HTTP method \"{m}\""));
        } else if m.bytes().any(|b| b.is_ascii_lowercase()) {
            p.add(
                path,
                format!(
                    "HTTP methods are case-sensitive and written in capitals: write \"{}\"",
                    m.to_ascii_uppercase()
                ),
            );
        } else if v::KNOWN_METHODS.contains(&m.as_str()) {
            p.warn(
                path,
                format!("{m} is a standard method; it needs no listing here"),
            );
        } else {
            out.push(m.clone());
        }
    }
    out
}

fn compile_tls(t: &TlsModel, base: &Path, p: &mut Problems) -> Option<Arc<rustls::ServerConfig>> {
    let default = certified(t.cert.as_deref(), t.key.as_deref(), "server.tls", base, p);
    // Checked on its own, so that its problem is reported at its key, whatever else is
    // wrong with the TLS settings.
    let client_verifier = match &t.client_ca {
        Some(c) => match tls::client_verifier(&resolve_path(base, c)) {
            Ok(v) => Some(Some(v)),
            Err(e) => {
                p.add("server.tls.client_ca", e);
                None
            }
        },
        None => Some(None),
    };
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    for (i, sni) in t.sni.iter() {
        let path = format!("server.tls.sni[{i}]");
        if sni.hosts.is_empty() {
            p.add(format!("{path}.hosts"), "at least one host is required");
        }
        let Some(key) = certified(sni.cert.as_deref(), sni.key.as_deref(), &path, base, p) else {
            continue;
        };
        for h in sni.hosts.values() {
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
    tls::server_config(resolver, client_verifier?)
        .map_err(|e| p.add("server.tls", e))
        .ok()
}

/// A certificate and its key (`path.cert`, `path.key`): loaded, checked to belong
/// together, and checked to be valid now (a warning within 30 days of its end).
fn certified(
    cert: Option<&str>,
    key: Option<&str>,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<Arc<CertifiedKey>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        for (k, given) in [("cert", cert.is_some()), ("key", key.is_some())] {
            if !given {
                p.missing(path, k, " (a PEM file)");
            }
        }
        return None;
    };
    let ck = tls::certified_key(&resolve_path(base, cert), &resolve_path(base, key))
        .map_err(|e| p.add(format!("{path}.cert"), e))
        .ok()?;
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        ck.keys_match()
    {
        p.add(
            format!("{path}.key"),
            format!(
                "{key} is not the private key of the certificate in {cert}: every TLS handshake would fail"
            ),
        );
        return None;
    }
    if let Some(leaf) = ck.cert.first() {
        check_validity(leaf, &format!("{path}.cert"), SystemTime::now(), p);
    }
    Some(ck)
}

/// Expired or not yet valid: an error. Ending within [`EXPIRY_WARNING`]: a warning.
fn check_validity(der: &[u8], path: &str, now: SystemTime, p: &mut Problems) {
    use x509_cert::der::Decode;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return;
    };
    let validity = cert.tbs_certificate().validity();
    let (from, until) = (
        SystemTime::UNIX_EPOCH + validity.not_before.to_unix_duration(),
        SystemTime::UNIX_EPOCH + validity.not_after.to_unix_duration(),
    );
    let date = crate::encoding::rfc3339;
    if now < from {
        p.add(
            path,
            format!(
                "the certificate is not valid yet (valid from {})",
                date(from)
            ),
        );
    } else if now > until {
        p.add(path, format!("the certificate expired on {}", date(until)));
    } else if let Ok(left) = until.duration_since(now) {
        if left < EXPIRY_WARNING {
            let days = left.as_secs() / 86_400;
            p.warn(
                path,
                format!(
                    "the certificate expires on {} (in {days} day(s))",
                    date(until)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: a certificate ending within 30 days is a warning, after its end or
    // before its start an error.
    #[test]
    fn certificate_dates() {
        let pem = format!("{}/tests/fixtures/server.pem", env!("CARGO_MANIFEST_DIR"));
        let der = tls::load_certs(Path::new(&pem)).unwrap().remove(0);
        use x509_cert::der::Decode;
        let cert = x509_cert::Certificate::from_der(&der).unwrap();
        let validity = cert.tbs_certificate().validity();
        let end = validity.not_after.to_unix_duration().as_secs();
        let start = validity.not_before.to_unix_duration().as_secs();
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let check = |now| {
            let mut p = Problems::default();
            check_validity(&der, "c", now, &mut p);
            (p.errors, p.warnings)
        };
        let (errors, warnings) = check(at(end - 10 * 86_400));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            warnings[0].message.contains("(in 10 day(s))"),
            "{warnings:?}"
        );
        let (errors, warnings) = check(at(end - 40 * 86_400));
        assert!(errors.is_empty() && warnings.is_empty());
        let (errors, _) = check(at(end + 1));
        assert!(
            errors[0].message.starts_with("the certificate expired on"),
            "{errors:?}"
        );
        let (errors, _) = check(at(start - 1));
        assert!(
            errors[0]
                .message
                .starts_with("the certificate is not valid yet"),
            "{errors:?}"
        );
    }
}
