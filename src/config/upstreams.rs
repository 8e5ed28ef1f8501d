//! The `upstreams:` section: where routes forward to (URL, CA, timeouts) and the
//! credentials tollgate adds on the way (Basic, or an OAuth2 client-credentials token).
//! Compiles to [`Upstream`]s, which `proxy.rs` forwards to; HTTP clients (and their
//! pooled connections) are reused across reloads through the [`Registry`].

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::HeaderValue;

use super::issuers::DEFAULT_FETCH_TIMEOUT;
use super::registry::Registry;
use super::subst::resolve_path;
use super::validate::{self as v, Problems};
use super::yaml::{section, DurationText, List};
use crate::credentials::{ClientAuth, OAuth2Source, RequestFormat, UpstreamAuth};
use crate::secret::Secret;
use crate::upstream::Upstream;

section! {
    pub struct UpstreamModel {
        "name" => pub name: Option<String>,
        "url" => pub url: Option<String>,
        "ca" => pub ca: Option<String>,
        "connect_timeout" => pub connect_timeout: Option<DurationText>,
        "timeout" => pub timeout: Option<DurationText>,
        "auth" => pub auth: Option<UpstreamAuthModel>,
    }
}

section! {
    /// One block for every `type`, so that every key is read; [`compile_auth`] says
    /// which keys belong to which type.
    pub struct UpstreamAuthModel {
        "type" => pub kind: Option<String>,
        "token_url" => pub token_url: Option<String>,
        "client_id" => pub client_id: Option<String>,
        "client_secret" => pub client_secret: Option<Secret>,
        "scope" => pub scope: Option<String>,
        "audience" => pub audience: Option<String>,
        "client_auth" => pub client_auth: Option<String>,
        "request_format" => pub request_format: Option<String>,
        "extra_params" => pub extra_params: Option<BTreeMap<String, String>>,
        "username" => pub username: Option<String>,
        "password" => pub password: Option<Secret>,
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
    let auth = m
        .auth
        .as_ref()
        .and_then(|a| compile_auth(a, name, &format!("{path}.auth"), reg, p));
    let Some(url) = &m.url else {
        p.missing(path, "url", " (e.g. url: \"http://127.0.0.1:9000\")");
        return None;
    };
    let url = v::http_url(p, &format!("{path}.url"), url)?;
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
    let Some(authority) = authority(&url) else {
        p.add(format!("{path}.url"), "invalid host");
        return None;
    };
    let client = reg.client(p, &format!("{path}.ca"), ca.as_deref(), connect_timeout)?;
    Some(Arc::new(Upstream {
        name: name.into(),
        scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
        host: HeaderValue::from_str(authority.as_str())
            .unwrap_or(HeaderValue::from_static("localhost")),
        authority,
        base_path: url.path().trim_end_matches('/').to_owned(),
        timeout,
        client,
        auth,
        pool: Default::default(),
    }))
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

fn compile_auth(
    a: &UpstreamAuthModel,
    upstream: &str,
    path: &str,
    reg: &Registry,
    p: &mut Problems,
) -> Option<UpstreamAuth> {
    match a.kind.as_deref() {
        Some("basic") => {
            only_keys(a, &["username", "password"], path, p);
            basic(a, path, p)
        }
        Some("oauth2_client_credentials") => {
            only_keys(a, &OAUTH2_KEYS, path, p);
            oauth2(a, upstream, path, reg, p)
        }
        Some(other) => {
            p.add(
                format!("{path}.type"),
                format!("unknown auth type \"{other}\": use basic or oauth2_client_credentials"),
            );
            None
        }
        None => {
            p.missing(path, "type", ": basic or oauth2_client_credentials");
            None
        }
    }
}

const OAUTH2_KEYS: [&str; 8] = [
    "token_url",
    "client_id",
    "client_secret",
    "scope",
    "audience",
    "client_auth",
    "request_format",
    "extra_params",
];

/// Keys given that the auth `type` does not use are problems at the key.
fn only_keys(a: &UpstreamAuthModel, allowed: &[&str], path: &str, p: &mut Problems) {
    let present: [(&str, bool); 10] = [
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
    ];
    let kind = a.kind.as_deref().unwrap_or_default();
    for (k, is) in present {
        if is && !allowed.contains(&k) {
            p.at_key(
                format!("{path}.{k}"),
                format!("key \"{k}\" does not apply to auth type \"{kind}\""),
            );
        }
    }
}

/// Plain Basic (RFC 7617): not form-encoded, unlike OAuth2 client auth.
fn basic(a: &UpstreamAuthModel, path: &str, p: &mut Problems) -> Option<UpstreamAuth> {
    let (Some(u), Some(pw)) = (&a.username, &a.password) else {
        if !p.has(&format!("{path}.username")) && !p.has(&format!("{path}.password")) {
            p.add(path, "auth type basic needs username and password");
        }
        return None;
    };
    if u.contains(':') {
        p.add(
            format!("{path}.username"),
            "a Basic username cannot contain ':'",
        );
    }
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

fn oauth2(
    a: &UpstreamAuthModel,
    upstream: &str,
    path: &str,
    reg: &Registry,
    p: &mut Problems,
) -> Option<UpstreamAuth> {
    let url = match &a.token_url {
        Some(u) => v::http_url(p, &format!("{path}.token_url"), u),
        None => {
            p.missing(path, "token_url", "");
            None
        }
    };
    let client_id = a.client_id.clone().unwrap_or_default();
    if client_id.trim().is_empty() && !p.has(&format!("{path}.client_id")) {
        p.add(format!("{path}.client_id"), "missing or empty client_id");
    }
    let secret = a.client_secret.clone().unwrap_or_default();
    if secret.is_empty() && !p.has(&format!("{path}.client_secret")) {
        p.add(
            format!("{path}.client_secret"),
            "missing or empty client_secret",
        );
    }
    let (client_auth, format) = client_auth_and_format(a, path, p);
    let scope = a.scope.clone().filter(|s| !s.trim().is_empty());
    let extra = a.extra_params.clone().unwrap_or_default();
    for k in extra.keys() {
        if ["grant_type", "client_id", "client_secret"].contains(&k.as_str()) {
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
    Some(UpstreamAuth::OAuth2(Arc::new(OAuth2Source {
        upstream: upstream.into(),
        token_url: url,
        client_id,
        client_secret: secret,
        scope,
        audience: a.audience.clone(),
        client_auth,
        format,
        extra_params: extra,
        client,
        timeout: Duration::from_secs(10),
        cache_key,
    })))
}

fn client_auth_and_format(
    a: &UpstreamAuthModel,
    path: &str,
    p: &mut Problems,
) -> (ClientAuth, RequestFormat) {
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
    (client_auth, format)
}
