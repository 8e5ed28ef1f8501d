//! The `issuers:` section: who may issue the Bearer tokens routes accept (JWKS,
//! OIDC discovery or RFC 7662 introspection), with audiences, algorithms, leeway and
//! claim names. Compiles to [`Issuer`]s, which authentication (`auth/`) verifies
//! tokens against; key stores are reused across reloads through the [`Registry`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::refs::fingerprint;
use super::registry::Registry;
use super::validate::{self as v, Problems};
use super::yaml::{section, DurationText, List};
use crate::auth::introspect::Introspection;
use crate::auth::jwks::{KeySource, KeyStore};
use crate::auth::replay::{OnStoreError, ReplayStore};
use crate::auth::sender::{DpopSettings, SenderConstraint, DEFAULT_IAT_WINDOW};
use crate::auth::{jwt, Issuer, IssuerKind};
use crate::outbound::Outbound;
use crate::secret::Secret;

section! {
    pub struct IssuerModel {
        /// The name routes refer to in `auth.issuers`.
        "name" => pub name: Option<String> as required(),
        /// The tokens' `iss` value, exactly.
        "issuer" => pub issuer: Option<String> as required(),
        /// Where the issuer's signing keys are (JWKS URL).
        "jwks_uri" => pub jwks_uri: Option<String>,
        /// The OIDC discovery URL (…/.well-known/openid-configuration) instead of `jwks_uri`.
        "discovery" => pub discovery: Option<String>,
        /// Opaque tokens: check them at the issuer's RFC 7662 introspection endpoint.
        "introspection" => pub introspection: Option<IntrospectionModel>,
        /// A token's `aud` must contain one of these.
        "audiences" => pub audiences: Option<List<String>> as restricting(),
        /// Signature algorithms accepted (default: every asymmetric one; never `none` or HS*).
        "algorithms" => pub algorithms: Option<List<String>> as schema(list(one_of(&["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]))),
        /// Clock skew allowed on `exp` and `nbf`.
        "leeway" => pub leeway: Option<DurationText>,
        /// Claims that carry the token's scopes (default `scope`, `scp`).
        "scope_claims" => pub scope_claims: Option<List<String>>,
        /// Claims that carry the client id, first present wins (default `client_id`, `azp`).
        "client_claims" => pub client_claims: Option<List<String>>,
        /// Accept tokens whatever their `aud` (a warning: prefer `audiences`).
        "skip_audience_check" => pub skip_audience_check: bool,
        /// How often the key set is refreshed in the background (default 5m).
        "jwks_refresh" => pub jwks_refresh: Option<DurationText>,
        /// Timeout for JWKS, discovery and introspection HTTP calls (default 5s).
        "fetch_timeout" => pub fetch_timeout: Option<DurationText>,
        /// `none` (default) | `dpop` | `mtls`: sender-constrained tokens (RFC 9449, 8705).
        "sender_constraint" => pub sender_constraint: Option<String> as restricting(),
        "dpop" => pub dpop: Option<DpopModel>,
        /// The HTTP proxy for this issuer's JWKS, discovery, introspection and sign-in
        /// token calls: "http://[user:password@]host:port" (https:// for TLS to the
        /// proxy; CONNECT tunnels), or `direct` to bypass HTTPS_PROXY/HTTP_PROXY.
        /// Default: the environment's HTTPS_PROXY/HTTP_PROXY/NO_PROXY.
        "proxy" => pub proxy: Option<Secret>,
    }
}

section! {
    pub struct DpopModel {
        /// How far a proof's `iat` may be from now, either way (default 60s).
        "iat_window" => pub iat_window: Option<DurationText>,
        /// Where the proofs' `jti`s are remembered against replays.
        "replay" => pub replay: Option<DpopReplayModel>,
    }
}

section! {
    /// `issuers[].dpop.replay:`
    pub struct DpopReplayModel {
        /// `redis` (default when `stores.redis` is configured: a proof used at one replica is refused at every other) or `local` (this replica only).
        "store" => pub store: Option<String> as choice(&["local", "redis"]),
        /// When Redis cannot answer: `deny` (default: 503 service_unavailable) or `allow` (this replica's own check, warned).
        "on_error" => pub on_error: Option<String> as choice(&["deny", "allow"]),
    }
}

section! {
    pub struct IntrospectionModel {
        /// The introspection endpoint.
        "url" => pub url: Option<String> as required(),
        /// tollgate's client id at the endpoint.
        "client_id" => pub client_id: Option<String>,
        /// tollgate's client secret (use ${env:..} or ${file:..}).
        "client_secret" => pub client_secret: Option<Secret>,
        /// How long an answer is reused (never past the token's `exp`).
        "cache_ttl" => pub cache_ttl: Option<DurationText>,
    }
}

const MAX_ISSUER_LEEWAY: Duration = Duration::from_secs(3600);
pub const DEFAULT_ISSUER_LEEWAY: Duration = Duration::from_secs(30);
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// The issuers that compiled; each one that did not has its problems recorded.
pub fn compile(
    ms: &List<IssuerModel>,
    has_token_service: bool,
    limits: &super::ratelimit::Compiled,
    reg: &Registry,
    p: &mut Problems,
) -> Vec<Arc<Issuer>> {
    let mut names = HashSet::new();
    let stores = Shared {
        redis: limits.limiter().redis(),
        redis_configured: limits.redis_configured(),
    };
    ms.iter()
        .filter_map(|(i, m)| {
            let path = format!("issuers[{i}]");
            check_name(m, &path, has_token_service, &mut names, p);
            compile_one(m, &path, &stores, reg, p)
        })
        .collect()
}

/// The shared stores an issuer may use (`stores:`).
struct Shared<'a> {
    redis: Option<&'a Arc<crate::ratelimit::RedisStore>>,
    redis_configured: bool,
}

fn check_name<'a>(
    m: &'a IssuerModel,
    path: &str,
    has_token_service: bool,
    names: &mut HashSet<&'a str>,
    p: &mut Problems,
) {
    let npath = format!("{path}.name");
    match m.name.as_deref() {
        None => p.missing(path, "name", ""),
        Some(n) if n.trim().is_empty() => p.add(npath, "issuer name must not be empty"),
        Some("local") if has_token_service => p.add(
            npath,
            "\"local\" is the token service's issuer name; pick another",
        ),
        Some(n) if !names.insert(n) => p.add(npath, format!("duplicate issuer name \"{n}\"")),
        Some(_) => {}
    }
}

/// Settings that do not depend on where the keys come from.
struct Common {
    issuer: String,
    outbound: Outbound,
    audiences: Vec<String>,
    algorithms: Vec<jsonwebtoken::Algorithm>,
    leeway: Duration,
    fetch_timeout: Duration,
    refresh: Duration,
    scope_claims: Vec<String>,
    client_claims: Vec<String>,
}

fn compile_one(
    m: &IssuerModel,
    path: &str,
    stores: &Shared<'_>,
    reg: &Registry,
    p: &mut Problems,
) -> Option<Arc<Issuer>> {
    let c = common(m, path, p);
    let sources = [
        m.jwks_uri.is_some(),
        m.discovery.is_some(),
        m.introspection.is_some(),
    ];
    if sources.iter().filter(|b| **b).count() != 1 {
        p.add(
            path,
            "give exactly one of jwks_uri, discovery or introspection",
        );
        return None;
    }
    if m.introspection.is_none() && c.audiences.is_empty() && !m.skip_audience_check {
        p.add(
            format!("{path}.audiences"),
            "a JWT issuer needs `audiences` (tokens for other APIs must not pass); set skip_audience_check: true only for IdPs whose tokens carry no aud",
        );
    }
    if m.skip_audience_check {
        p.warn(
            format!("{path}.skip_audience_check"),
            "tokens this issuer made for any other API (any audience) are accepted too; use it only for IdPs whose tokens carry no aud",
        );
    }
    let name = m.name.as_deref().unwrap_or_default();
    let sender = sender_constraint(m, path, p);
    let dpop = dpop_settings(m, path, stores, p);
    let kind = match &m.introspection {
        Some(intro) => introspection(intro, path, &c, reg, p)?,
        None => key_store(m, name, path, &c, reg, p)?,
    };
    let fp = fingerprint(&[
        name,
        &c.issuer,
        &format!("{:?}", m.jwks_uri),
        &format!("{:?}", m.discovery),
        &format!(
            "{:?}",
            m.introspection.as_ref().map(|x| (
                &x.url,
                &x.client_id,
                x.client_secret.as_ref().map(Secret::expose)
            ))
        ),
        &c.audiences.join(" "),
        &format!("{:?}", c.algorithms),
        &c.leeway.as_secs().to_string(),
        &c.scope_claims.join(" "),
        &c.client_claims.join(" "),
        &m.skip_audience_check.to_string(),
        sender.as_str(),
        &dpop.iat_window.as_secs().to_string(),
        &c.outbound.key(),
        if dpop.replay.redis.is_some() {
            "replay:redis"
        } else {
            "replay:local"
        },
        dpop.replay.on_error.as_str(),
    ]);
    Some(Arc::new(Issuer {
        name: name.into(),
        issuer: c.issuer,
        kind,
        audiences: c.audiences,
        skip_audience_check: m.skip_audience_check,
        algorithms: c.algorithms,
        leeway: c.leeway,
        scope_claims: c.scope_claims,
        client_claims: c.client_claims,
        sender_constraint: sender,
        dpop,
        fingerprint: fp,
    }))
}

/// `sender_constraint`: none | dpop | mtls.
pub fn parse_sender_constraint(v: Option<&str>, at: String, p: &mut Problems) -> SenderConstraint {
    match v {
        None | Some("none") => SenderConstraint::None,
        Some("dpop") => SenderConstraint::Dpop,
        Some("mtls") => SenderConstraint::Mtls,
        Some(other) => {
            p.add(
                at,
                format!("unknown sender_constraint \"{other}\"; use none, dpop or mtls"),
            );
            SenderConstraint::None
        }
    }
}

fn sender_constraint(m: &IssuerModel, path: &str, p: &mut Problems) -> SenderConstraint {
    parse_sender_constraint(
        m.sender_constraint.as_deref(),
        format!("{path}.sender_constraint"),
        p,
    )
}

/// Longest `dpop.iat_window`: a proof is meant for one request, now.
const MAX_IAT_WINDOW: Duration = Duration::from_secs(600);

fn dpop_settings(
    m: &IssuerModel,
    path: &str,
    stores: &Shared<'_>,
    p: &mut Problems,
) -> DpopSettings {
    let d = m.dpop.as_ref();
    let at = format!("{path}.dpop.iat_window");
    let mut w = v::duration(
        p,
        at.clone(),
        d.and_then(|d| d.iat_window.as_ref()),
        DEFAULT_IAT_WINDOW,
    );
    if w.is_zero() || w > MAX_IAT_WINDOW {
        p.add(at, "iat_window must be between 1s and 10m");
        w = DEFAULT_IAT_WINDOW;
    }
    DpopSettings {
        iat_window: w,
        replay: replay_store(d.and_then(|d| d.replay.as_ref()), path, stores, p),
    }
}

/// `dpop.replay`: Redis by default when `stores.redis` is configured.
fn replay_store(
    m: Option<&DpopReplayModel>,
    path: &str,
    stores: &Shared<'_>,
    p: &mut Problems,
) -> ReplayStore {
    let at = |key: &str| format!("{path}.dpop.replay.{key}");
    let redis = match m.and_then(|m| m.store.as_deref()) {
        None => stores.redis_configured,
        Some("redis") => {
            if !stores.redis_configured {
                p.add(
                    at("store"),
                    "store: redis needs stores.redis (the Redis URL the replicas share)",
                );
            }
            true
        }
        Some("local") => false,
        Some(o) => {
            p.add(
                at("store"),
                format!("unknown store \"{o}\"; use local or redis"),
            );
            false
        }
    };
    let on_error = match m.and_then(|m| m.on_error.as_deref()) {
        None | Some("deny") => OnStoreError::Deny,
        Some("allow") => OnStoreError::Allow,
        Some(o) => {
            p.add(
                at("on_error"),
                format!("unknown on_error \"{o}\"; use deny or allow"),
            );
            OnStoreError::Deny
        }
    };
    if !redis && m.is_some_and(|m| m.on_error.is_some()) {
        p.warn(
            at("on_error"),
            "has no effect: the proofs are remembered by each replica alone (no Redis to fail)",
        );
    }
    ReplayStore {
        redis: if redis { stores.redis.cloned() } else { None },
        on_error,
    }
}

fn common(m: &IssuerModel, path: &str, p: &mut Problems) -> Common {
    let issuer = match &m.issuer {
        Some(s) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            p.add(
                format!("{path}.issuer"),
                "must not be empty (the exact `iss` value)",
            );
            String::new()
        }
        None => {
            p.missing(path, "issuer", " (the exact `iss` value)");
            String::new()
        }
    };
    let duration = |p: &mut Problems, key: &str, v: &Option<DurationText>, default| {
        v::duration(p, format!("{path}.{key}"), v.as_ref(), default)
    };
    let mut leeway = duration(p, "leeway", &m.leeway, DEFAULT_ISSUER_LEEWAY);
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
    let audiences = m.audiences.as_ref().map(List::to_vec).unwrap_or_default();
    if audiences.iter().any(|a| a.trim().is_empty()) {
        p.add(
            format!("{path}.audiences"),
            "audiences must not be empty strings",
        );
    }
    Common {
        issuer,
        outbound: v::outbound(p, &format!("{path}.proxy"), m.proxy.as_ref(), Outbound::Env),
        audiences,
        algorithms: algorithms(m.algorithms.as_ref(), path, p),
        leeway,
        fetch_timeout: duration(p, "fetch_timeout", &m.fetch_timeout, DEFAULT_FETCH_TIMEOUT),
        refresh: duration(p, "jwks_refresh", &m.jwks_refresh, DEFAULT_JWKS_REFRESH),
        scope_claims: claims(p, path, "scope_claims", &m.scope_claims, &["scope", "scp"]),
        client_claims: claims(
            p,
            path,
            "client_claims",
            &m.client_claims,
            &["client_id", "azp"],
        ),
    }
}

fn algorithms(
    list: Option<&List<String>>,
    path: &str,
    p: &mut Problems,
) -> Vec<jsonwebtoken::Algorithm> {
    let Some(list) = list else {
        return jwt::ALL_ASYMMETRIC.to_vec();
    };
    if list.is_empty() {
        p.add(
            format!("{path}.algorithms"),
            "list at least one algorithm, or leave the key out",
        );
    }
    list.iter()
        .filter_map(|(j, a)| {
            jwt::asymmetric_alg(a)
                .map_err(|r| {
                    p.add(
                        format!("{path}.algorithms[{j}]"),
                        format!(
                            "{}; allowed: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA",
                            r.description
                        ),
                    )
                })
                .ok()
        })
        .collect()
}

fn claims(
    p: &mut Problems,
    path: &str,
    key: &str,
    v: &Option<List<String>>,
    default: &[&str],
) -> Vec<String> {
    match v {
        None => default.iter().map(|s| s.to_string()).collect(),
        Some(l) if l.is_empty() || l.values().any(|c| c.trim().is_empty()) => {
            p.add(format!("{path}.{key}"), "claim names must not be empty");
            Vec::new()
        }
        Some(l) => l.to_vec(),
    }
}

fn introspection(
    intro: &IntrospectionModel,
    path: &str,
    c: &Common,
    reg: &Registry,
    p: &mut Problems,
) -> Option<IssuerKind> {
    let ipath = format!("{path}.introspection");
    let url = match &intro.url {
        Some(u) => v::http_url(p, &format!("{ipath}.url"), u),
        None => {
            p.missing(&ipath, "url", "");
            None
        }
    };
    let client_id = intro.client_id.clone().unwrap_or_default();
    if client_id.trim().is_empty() {
        p.add(format!("{ipath}.client_id"), "must not be empty");
    }
    let secret = intro.client_secret.clone().unwrap_or_default();
    if secret.is_empty() {
        p.add(format!("{ipath}.client_secret"), "must not be empty");
    }
    let ttl = v::duration(
        p,
        format!("{ipath}.cache_ttl"),
        intro.cache_ttl.as_ref(),
        Duration::from_secs(30),
    );
    let client = reg.client(p, &ipath, None, c.fetch_timeout, &c.outbound)?;
    Some(IssuerKind::Introspection(Box::new(Introspection::new(
        url?.to_string(),
        client_id,
        secret,
        ttl,
        c.fetch_timeout,
        client,
    ))))
}

/// The JWKS key store of an issuer, shared with the previous config when nothing it
/// depends on changed (its cached keys and refresher survive the reload).
fn key_store(
    m: &IssuerModel,
    name: &str,
    path: &str,
    c: &Common,
    reg: &Registry,
    p: &mut Problems,
) -> Option<IssuerKind> {
    let (source, key) = match (&m.jwks_uri, &m.discovery) {
        (Some(u), _) => (
            v::http_url(p, &format!("{path}.jwks_uri"), u).map(|u| KeySource::Jwks(u.to_string())),
            "jwks_uri",
        ),
        (_, Some(u)) => (
            v::http_url(p, &format!("{path}.discovery"), u)
                .map(|u| KeySource::Discovery(u.to_string())),
            "discovery",
        ),
        _ => return None,
    };
    let client = reg.client(
        p,
        &format!("{path}.{key}"),
        None,
        c.fetch_timeout,
        &c.outbound,
    )?;
    let source = source?;
    let reg_key = format!(
        "{name}|{}|{source:?}|{}|{}|{}",
        c.issuer,
        c.fetch_timeout.as_millis(),
        c.refresh.as_millis(),
        c.outbound.key()
    );
    let store = reg
        .key_stores
        .entry(reg_key)
        .or_insert_with(|| {
            Arc::new(KeyStore::new(
                name.into(),
                c.issuer.clone(),
                source,
                Some(client),
                c.fetch_timeout,
                c.refresh,
            ))
        })
        .clone();
    Some(IssuerKind::Jwt(store))
}
