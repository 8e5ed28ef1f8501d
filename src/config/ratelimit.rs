//! The config's rate-limit section (SPEC "Rate limits and quotas"): `stores.redis`,
//! the named `rate_limits`, each route's `rate_limits: [names]` and
//! `token_service.failed_auth_limit` — their model ([`section!`] blocks) and their compile step
//! (model + `Problems` -> the runtime's [`RouteLimits`] / [`FailedAuthLimit`]).
//!
//! The stores outlive a reload ([`Stores`], kept in the [`Registry`](super::Registry)):
//! one [`LocalStore`] for the process, and the [`RedisStore`] reused for as long as
//! `stores.redis` is unchanged, so a reload resets no counter and drops no connection.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::validate::{self as v, At, Problems};
use super::yaml::{schema, section, Cx, DurationText, List, Node, Schema};
use crate::ratelimit::applied::ADMIN_FAILED_AUTH_IP;
use crate::ratelimit::{
    FailedAuthLimit, KeySpec, KeySpecError, Limit, LimitError, LimitSpec, Limiter, LocalStore,
    OnError, RedisConfig, RedisConfigError, RedisStore, RouteLimits, StoreKind, Window,
};
use crate::secret::Secret;

/// `stores.redis.timeout` when not given.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

section! {
    /// `stores:`
    pub struct StoresModel {
        "redis" => pub redis: Option<RedisStoreModel>,
    }
}

section! {
    /// `stores.redis:`
    pub struct RedisStoreModel {
        /// The Redis server.
        "url" => pub url: Option<RedisUrl> as required(),
        /// Per operation (default 50ms).
        "timeout" => pub timeout: Option<DurationText>,
    }
}

/// `stores.redis.url`: may carry a password, so it is a [`Secret`] (never echoed in a
/// problem); `/admin/config` shows it with the password replaced by `[redacted]`.
#[derive(Clone, Default)]
pub struct RedisUrl(pub Secret);

/// `rate_limits[].key`: one of the fixed keys or `header:NAME`.
fn limit_key_schema() -> serde_json::Value {
    serde_json::json!({
        "anyOf": [
            {"enum": ["client", "subject", "ip"]},
            {"type": "string", "pattern": "^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
            schema::substituted(),
        ]
    })
}

impl Schema for RedisUrl {
    fn schema() -> serde_json::Value {
        schema::text_matching(
            "^rediss?://",
            "A redis:// or rediss:// (TLS) URL, e.g. \"redis://127.0.0.1:6379/0\"; one with a password belongs in a ${file:..} or ${env:..}.",
        )
    }
}

impl Node for RedisUrl {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        Ok(Secret::read(d, cx)?.map(RedisUrl))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted_url(self.0.expose()))
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redacted_url(self.0.expose()))
    }
}

/// The URL with its password (if any) replaced by `[redacted]`; anything that does not
/// parse is hidden whole.
fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => match u.password() {
            None => raw.to_owned(),
            Some(pw) => {
                let needle = format!(":{pw}@");
                if raw.contains(&needle) {
                    raw.replacen(&needle, ":[redacted]@", 1)
                } else {
                    "[redacted]".to_owned()
                }
            }
        },
        Err(_) => "[redacted]".to_owned(),
    }
}

section! {
    /// One entry of `rate_limits:`.
    pub struct RateLimitModel {
        /// The name routes refer to in `rate_limits`.
        "name" => pub name: Option<String> as required(),
        /// What is counted: `client`, `subject`, `ip` or `header:NAME`.
        "key" => pub key: Option<String> as required().schema(limit_key_schema()),
        /// Requests allowed per window.
        "limit" => pub limit: Option<u64> as required(),
        /// The window, e.g. 1m.
        "per" => pub per: Option<DurationText> as required(),
        /// `sliding` (default) or `fixed`.
        "window" => pub window: Option<String> as choice(&["sliding", "fixed"]),
        /// `local` (default: each replica counts alone) or `redis` (every replica together).
        "store" => pub store: Option<String> as choice(&["local", "redis"]),
        /// When the store cannot be reached: `allow` (default) or `deny`.
        "on_error" => pub on_error: Option<String> as choice(&["allow", "deny"]),
    }
}

section! {
    /// `token_service.failed_auth_limit:` and `server.admin_auth.failed_auth_limit:`
    pub struct FailedAuthLimitModel {
        /// Failed authentications allowed per client id and per client IP (default 10;
        /// the admin API counts per client IP only).
        "limit" => pub limit: Option<u64>,
        /// In any window of this (default 1m; the admin API's 5m).
        "per" => pub per: Option<DurationText>,
        /// `local` (default: each replica counts alone) | `redis` (every replica together).
        "store" => pub store: Option<String> as choice(&["local", "redis"]),
    }
}

/// The rate-limit stores of the process, kept across reloads in the registry.
#[derive(Default)]
pub struct Stores {
    local: Arc<LocalStore>,
    /// Redis stores by settings fingerprint; the running config holds them (strongly),
    /// so a store lives exactly as long as a config uses it.
    redis: Mutex<Vec<([u8; 32], Weak<RedisStore>)>>,
    /// Failed decisions of every Redis store the process made (a reload that changes
    /// `stores.redis` does not set `tollgate_store_errors_total` back).
    redis_errors: Arc<AtomicU64>,
}

impl Stores {
    /// `tollgate_store_errors_total{store="redis"}`.
    pub fn redis_errors(&self) -> u64 {
        self.redis_errors.load(Ordering::Relaxed)
    }

    /// The process's local store.
    pub fn local(&self) -> &Arc<LocalStore> {
        &self.local
    }

    /// The store for `cfg`: the one in use when its settings are the same, else a new one.
    fn redis(&self, cfg: RedisConfig) -> Result<Arc<RedisStore>, RedisConfigError> {
        let mut h = Sha256::new();
        h.update(cfg.url.expose().as_bytes());
        h.update([0]);
        h.update((cfg.timeout.as_nanos() as u64).to_be_bytes());
        let fp: [u8; 32] = h.finalize().into();
        let mut list = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|(_, w)| w.strong_count() > 0);
        if let Some(s) = list
            .iter()
            .find(|(f, _)| *f == fp)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(s);
        }
        let store = Arc::new(RedisStore::new(cfg)?.with_error_counter(self.redis_errors.clone()));
        list.push((fp, Arc::downgrade(&store)));
        Ok(store)
    }
}

/// The named limits of a config, compiled, and the limiter they count with.
pub struct Compiled {
    limiter: Limiter,
    by_name: HashMap<String, Arc<Limit>>,
    names: Vec<String>,
    /// `stores.redis` is in the file (valid or not: its own problems are reported).
    redis_configured: bool,
}

impl Compiled {
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// `stores.redis` is in the file (valid or not).
    pub fn redis_configured(&self) -> bool {
        self.redis_configured
    }
}

/// `stores` and `rate_limits`: every problem recorded in `p`.
pub fn compile(
    stores: Option<&StoresModel>,
    limits: &List<RateLimitModel>,
    reg: &Stores,
    p: &mut Problems,
) -> Compiled {
    let redis_model = stores.and_then(|s| s.redis.as_ref());
    let redis = redis_model.and_then(|r| {
        let timeout = v::duration(
            p,
            "stores.redis.timeout",
            r.timeout.as_ref(),
            DEFAULT_REDIS_TIMEOUT,
        );
        let Some(RedisUrl(url)) = &r.url else {
            p.missing(
                "stores.redis",
                "url",
                " (e.g. url: \"redis://127.0.0.1:6379/0\")",
            );
            return None;
        };
        if url.expose().trim().is_empty() {
            p.add("stores.redis.url", "must not be empty");
            return None;
        }
        reg.redis(RedisConfig::new(url.clone(), timeout))
            .map_err(|e| {
                let path = match e {
                    RedisConfigError::Timeout => "stores.redis.timeout",
                    _ => "stores.redis.url",
                };
                p.add(path, e.to_string());
            })
            .ok()
    });
    let limiter = Limiter::new(reg.local.clone(), redis);
    let mut by_name = HashMap::with_capacity(limits.len());
    let mut names = Vec::with_capacity(limits.len());
    let all = At::Path("rate_limits");
    for (i, m) in limits.iter() {
        let at = all.index(i);
        let bad = |p: &mut Problems, key: &str, msg: String| {
            p.add(at.key(key).to_string(), msg);
        };
        for (k, given, example) in [
            ("name", m.name.is_some(), ""),
            (
                "key",
                m.key.is_some(),
                " (client, subject, ip or header:NAME)",
            ),
            ("limit", m.limit.is_some(), " (requests allowed per window)"),
            ("per", m.per.is_some(), " (the window, e.g. 1m)"),
        ] {
            if !given {
                p.missing(at, k, example);
            }
        }
        if let Some(name) = &m.name {
            if name.starts_with("failed_auth_limit.") {
                bad(
                    p,
                    "name",
                    "names starting with \"failed_auth_limit.\" are reserved for token_service.failed_auth_limit".into(),
                );
            } else if name.starts_with("admin_auth.") {
                bad(
                    p,
                    "name",
                    "names starting with \"admin_auth.\" are reserved for server.admin_auth.failed_auth_limit".into(),
                );
            } else if names.contains(name) {
                bad(p, "name", format!("duplicate rate limit name \"{name}\""));
            }
        }
        let key =
            m.key
                .as_deref()
                .and_then(|key| match key.parse::<KeySpec>() {
                    Ok(k) => Some(k),
                    Err(KeySpecError::Unknown(k)) => {
                        let hint = v::suggest(&k, &["client", "subject", "ip", "header:"])
                            .map(|s| format!(" (did you mean \"{s}\"?)"))
                            .unwrap_or_default();
                        bad(
                    p,
                    "key",
                    format!("\"{k}\" is not a key: use client, subject, ip or header:NAME{hint}"),
                );
                        None
                    }
                    Err(KeySpecError::BadHeader(h)) => {
                        bad(
                            p,
                            "key",
                            format!("\"header:{h}\" does not name a valid HTTP header"),
                        );
                        None
                    }
                });
        let per = m
            .per
            .as_ref()
            .and_then(|written| match v::parse_duration(&written.0) {
                Ok(d) => Some(d),
                Err(e) => {
                    bad(p, "per", e);
                    None
                }
            });
        let window = match m.window.as_deref() {
            None | Some("sliding") => Window::Sliding,
            Some("fixed") => Window::Fixed,
            Some(o) => {
                bad(p, "window", choice("window", o, &["sliding", "fixed"]));
                Window::Sliding
            }
        };
        let store = match m.store.as_deref() {
            None | Some("local") => StoreKind::Local,
            Some("redis") => {
                if redis_model.is_none() {
                    bad(
                        p,
                        "store",
                        "store: redis needs stores.redis (the Redis URL the replicas share)".into(),
                    );
                }
                StoreKind::Redis
            }
            Some(o) => {
                bad(p, "store", choice("store", o, &["local", "redis"]));
                StoreKind::Local
            }
        };
        let on_error = match m.on_error.as_deref() {
            None | Some("allow") => OnError::Allow,
            Some("deny") => OnError::Deny,
            Some(o) => {
                bad(p, "on_error", choice("on_error", o, &["allow", "deny"]));
                OnError::Allow
            }
        };
        // Known to the routes' checks even with problems, so they do not call it unknown.
        let Some(name) = &m.name else {
            continue;
        };
        names.push(name.clone());
        let written = m.per.as_ref().map_or("", |d| d.0.as_str());
        for e in field_errors(name, m.limit.unwrap_or(1), per) {
            bad(p, limit_error_key(&e), field_message(&e, written));
        }
        let (Some(key), Some(limit), Some(per)) = (key, m.limit, per) else {
            continue;
        };
        let spec = LimitSpec {
            name: name.clone(),
            key,
            limit,
            per,
            window,
            store,
            on_error,
        };
        // A limit with problems is still known to the routes' checks (so that they
        // report theirs too); the config is refused anyway.
        if let (Ok(l), false) = (Limit::new(spec), by_name.contains_key(name)) {
            by_name.insert(name.clone(), Arc::new(l));
        }
    }
    Compiled {
        limiter,
        by_name,
        names,
        redis_configured: redis_model.is_some(),
    }
}

fn choice(key: &str, got: &str, allowed: &[&str]) -> String {
    let hint = v::suggest(got, allowed)
        .map(|s| format!(" (did you mean \"{s}\"?)"))
        .unwrap_or_default();
    format!(
        "unknown {key} \"{got}\": use {}{hint}",
        allowed.join(" or ")
    )
}

/// What is wrong with a limit's name, `limit` and `per`, each on its own (the engine's
/// [`Limit::new`] stops at the first), so that one run reports all of them.
fn field_errors(name: &str, limit: u64, per: Option<Duration>) -> Vec<LimitError> {
    let spec = |name: &str, limit: u64, per: Duration| LimitSpec {
        name: name.to_owned(),
        key: KeySpec::Ip,
        limit,
        per,
        window: Window::Sliding,
        store: StoreKind::Local,
        on_error: OnError::Allow,
    };
    let one = Duration::from_secs(1);
    let mut out = Vec::new();
    out.extend(Limit::new(spec(name, 1, one)).err());
    out.extend(Limit::new(spec("x", limit, one)).err());
    if let Some(per) = per {
        out.extend(Limit::new(spec("x", 1, per)).err());
    }
    out
}

/// The message for a field error, with `per` as it was written.
fn field_message(e: &LimitError, per_written: &str) -> String {
    match e {
        LimitError::Per(_) => format!(
            "per must be a whole number of seconds between 1s and 366d, got \"{per_written}\""
        ),
        e => e.to_string(),
    }
}

fn limit_error_key(e: &LimitError) -> &'static str {
    match e {
        LimitError::Name(_) => "name",
        LimitError::Limit(_) => "limit",
        LimitError::Per(_) => "per",
    }
}

/// A route's `rate_limits: [names]` (`names` as written; `public`: the route has
/// `auth: none`). `None` when the route lists none or something is wrong (recorded).
pub fn route_limits(
    c: &Compiled,
    names: Option<&List<String>>,
    public: bool,
    at: At,
    p: &mut Problems,
) -> Option<RouteLimits> {
    let list = names?;
    let at = at.key("rate_limits");
    if list.is_empty() {
        p.add(
            at.to_string(),
            "empty rate_limits list: leave the key out for a route without limits",
        );
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    let mut seen = HashSet::with_capacity(list.len());
    let mut ok = !list.has_holes();
    for (j, name) in list.iter() {
        let here = at.index(j);
        if !seen.insert(name.as_str()) {
            p.add(
                here.to_string(),
                format!("rate limit \"{name}\" is listed twice"),
            );
            ok = false;
            continue;
        }
        let Some(limit) = c.by_name.get(name) else {
            ok = false;
            if c.names.contains(name) {
                continue; // defined, but with problems of its own (reported there)
            }
            let known: Vec<&str> = c.names.iter().map(String::as_str).collect();
            let msg = if known.is_empty() {
                format!("unknown rate limit \"{name}\": define it under the top-level rate_limits")
            } else {
                let hint = v::suggest(name, &known)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                format!("unknown rate limit \"{name}\"{hint}")
            };
            p.add(here.to_string(), msg);
            continue;
        };
        if public && limit.key().needs_identity() {
            p.add(
                here.to_string(),
                format!(
                    "rate limit \"{name}\" counts by {}, which a route with auth: none does not know (no token is checked there); use key: ip or header:NAME",
                    limit.key()
                ),
            );
            ok = false;
            continue;
        }
        out.push(limit.clone());
    }
    (ok && !out.is_empty()).then(|| RouteLimits::new(out, c.limiter.clone()))
}

/// `token_service.failed_auth_limit` (the SPEC default when absent).
pub fn failed_auth_limit(
    m: Option<&FailedAuthLimitModel>,
    c: &Compiled,
    p: &mut Problems,
) -> Option<FailedAuthLimit> {
    let (limit, per, store, ok) = failure_budget(
        m,
        "token_service.failed_auth_limit",
        (FailedAuthLimit::DEFAULT_LIMIT, FailedAuthLimit::DEFAULT_PER),
        c,
        p,
    );
    match FailedAuthLimit::new(limit, per, store, c.limiter.clone()) {
        Ok(f) if ok => Some(f),
        _ => None,
    }
}

/// `server.admin_auth.failed_auth_limit` (10 per 5m when absent): failed Basic
/// sign-ins, counted per client address.
pub fn admin_failed_auth_limit(
    m: Option<&FailedAuthLimitModel>,
    c: &Compiled,
    p: &mut Problems,
) -> Option<FailedAuthLimit> {
    let (limit, per, store, ok) = failure_budget(
        m,
        "server.admin_auth.failed_auth_limit",
        (
            FailedAuthLimit::ADMIN_DEFAULT_LIMIT,
            FailedAuthLimit::ADMIN_DEFAULT_PER,
        ),
        c,
        p,
    );
    match FailedAuthLimit::per_address(ADMIN_FAILED_AUTH_IP, limit, per, store, c.limiter.clone()) {
        Ok(f) if ok => Some(f),
        _ => None,
    }
}

/// A `failed_auth_limit:` block at `at`: (limit, per, store, no problem found), with
/// `defaults` for what is not written.
fn failure_budget(
    m: Option<&FailedAuthLimitModel>,
    at: &str,
    (default_limit, default_per): (u64, Duration),
    c: &Compiled,
    p: &mut Problems,
) -> (u64, Duration, StoreKind, bool) {
    let limit = m.and_then(|m| m.limit).unwrap_or(default_limit);
    let per = v::duration(
        p,
        format!("{at}.per"),
        m.and_then(|m| m.per.as_ref()),
        default_per,
    );
    let store = match m.and_then(|m| m.store.as_deref()) {
        None | Some("local") => StoreKind::Local,
        Some("redis") => {
            if !c.redis_configured {
                p.add(
                    format!("{at}.store"),
                    "store: redis needs stores.redis (the Redis URL the replicas share)",
                );
            }
            StoreKind::Redis
        }
        Some(o) => {
            p.add(
                format!("{at}.store"),
                choice("store", o, &["local", "redis"]),
            );
            StoreKind::Local
        }
    };
    let errors = field_errors("x", limit, Some(per));
    let secs = default_per.as_secs();
    let default_text = if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    };
    let written = m
        .and_then(|m| m.per.as_ref())
        .map_or(default_text.as_str(), |d| d.0.as_str());
    for e in &errors {
        p.add(
            format!("{at}.{}", limit_error_key(e)),
            field_message(e, written),
        );
    }
    (limit, per, store, errors.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The password of a Redis URL never shows; the rest of the URL does.
    #[test]
    fn redis_urls_are_shown_without_their_password() {
        let u = RedisUrl(Secret::new("redis://:hunter2@redis.svc:6379/0"));
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            "redis://:[redacted]@redis.svc:6379/0"
        );
        assert_eq!(format!("{u:?}"), "redis://:[redacted]@redis.svc:6379/0");
        let u = RedisUrl(Secret::new("rediss://tollgate:hunter2@r:6380"));
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            "rediss://tollgate:[redacted]@r:6380"
        );
        let u = RedisUrl(Secret::new("redis://r:6379/0"));
        assert_eq!(serde_json::to_value(&u).unwrap(), "redis://r:6379/0");
        let u = RedisUrl(Secret::new("not a url hunter2"));
        assert_eq!(serde_json::to_value(&u).unwrap(), "[redacted]");
    }

    fn problems(yaml: &str) -> Vec<String> {
        match super::super::load_str(
            yaml,
            "g.yaml",
            std::path::Path::new("."),
            &super::super::Registry::default(),
        ) {
            Ok(_) => Vec::new(),
            Err(e) => e.lines(),
        }
    }

    fn assert_has(lines: &[String], want: &str) {
        assert!(
            lines.iter().any(|l| l.ends_with(want)),
            "no problem ending with {want:?} in:\n{}",
            lines.join("\n")
        );
    }

    // Everything that cannot work is refused, each problem at its line, column and
    // key path, all in one run.
    #[test]
    fn what_cannot_work_is_refused_with_its_location() {
        let yaml = r#"server:
  listen: "127.0.0.1:0"
token_service:
  issuer: "https://gw"
  audience: "https://api"
  failed_auth_limit: {limit: 0, per: 1500ms, store: shared}
upstreams:
  - name: u
    url: "http://127.0.0.1:9"
rate_limits:
  - name: per-client
    key: client
    limit: 10
    per: 1m
  - name: "bad name"
    key: clients
    limit: 0
    per: 1500ms
    window: fixd
    store: redis
    on_error: block
  - name: per-client
    key: ip
    limit: 1
    per: 1s
  - name: hdr
    key: "header:bad name"
    limit: 1
    per: forever
  - name: failed_auth_limit.mine
    key: ip
    limit: 1
    per: 1s
  - name: huge
    key: ip
    limit: 1
    per: 400d
routes:
  - name: open
    path_prefix: /open
    upstream: u
    auth: none
    rate_limits: [per-client, per-clinet]
  - name: twice
    path_prefix: /twice
    upstream: u
    auth: {issuers: [local]}
    rate_limits: [per-client, per-client]
  - name: empty
    path_prefix: /empty
    upstream: u
    auth: none
    rate_limits: []
"#;
        let lines = problems(yaml);
        for want in [
            "g.yaml:6:53 token_service.failed_auth_limit.store: unknown store \"shared\": use local or redis",
            "g.yaml:15:11 rate_limits[1].name: name \"bad name\": use 1 to 64 characters of A-Z a-z 0-9 . _ -",
            "g.yaml:16:10 rate_limits[1].key: \"clients\" is not a key: use client, subject, ip or header:NAME (did you mean \"client\"?)",
            "g.yaml:19:13 rate_limits[1].window: unknown window \"fixd\": use sliding or fixed (did you mean \"fixed\"?)",
            "g.yaml:20:12 rate_limits[1].store: store: redis needs stores.redis (the Redis URL the replicas share)",
            "g.yaml:21:15 rate_limits[1].on_error: unknown on_error \"block\": use allow or deny",
            "g.yaml:22:11 rate_limits[2].name: duplicate rate limit name \"per-client\"",
            "g.yaml:27:10 rate_limits[3].key: \"header:bad name\" does not name a valid HTTP header",
            "g.yaml:29:10 rate_limits[3].per: invalid duration \"forever\": expected e.g. 500ms, 1.5s, 30s, 10m, 1h",
            "g.yaml:30:11 rate_limits[4].name: names starting with \"failed_auth_limit.\" are reserved for token_service.failed_auth_limit",
            "g.yaml:37:10 rate_limits[5].per: per must be a whole number of seconds between 1s and 366d, got \"400d\"",
            "g.yaml:43:19 routes[0].rate_limits[0]: rate limit \"per-client\" counts by client, which a route with auth: none does not know (no token is checked there); use key: ip or header:NAME",
            "g.yaml:43:31 routes[0].rate_limits[1]: unknown rate limit \"per-clinet\" (did you mean \"per-client\"?)",
            "g.yaml:48:31 routes[1].rate_limits[1]: rate limit \"per-client\" is listed twice",
            "g.yaml:53:18 routes[2].rate_limits: empty rate_limits list: leave the key out for a route without limits",
        ] {
            assert_has(&lines, want);
        }
        for want in [
            "g.yaml:6:30 token_service.failed_auth_limit.limit: limit must be between 1 and 4294967295, got 0",
            "g.yaml:6:38 token_service.failed_auth_limit.per: per must be a whole number of seconds between 1s and 366d, got \"1500ms\"",
            "g.yaml:17:12 rate_limits[1].limit: limit must be between 1 and 4294967295, got 0",
            "g.yaml:18:10 rate_limits[1].per: per must be a whole number of seconds between 1s and 366d, got \"1500ms\"",
        ] {
            assert_has(&lines, want);
        }
        assert_eq!(lines.len(), 19, "{lines:#?}");
    }

    // stores.redis: a URL that cannot work is refused without echoing it; a limit with
    // store: redis is then not reported a second time.
    #[test]
    fn a_bad_redis_store_is_refused_without_its_password() {
        let yaml = r#"server:
  listen: "127.0.0.1:0"
stores:
  redis:
    url: "http://:hunter2@127.0.0.1:6379"
    timeout: 0ms
rate_limits:
  - name: shared
    key: ip
    limit: 1
    per: 1s
    store: redis
"#;
        let lines = problems(yaml);
        let text = lines.join("\n");
        assert!(!text.contains("hunter2"), "{text}");
        assert_has(
            &lines,
            "stores.redis.timeout: duration must be greater than zero",
        );
        assert!(
            text.contains("stores.redis.url: url scheme \"http\": use redis:// or rediss://"),
            "{text}"
        );
        assert!(!text.contains("rate_limits[0]"), "{text}");
        let ok = "server:\n  listen: \"127.0.0.1:0\"\nstores:\n  redis:\n    url: \"redis://:hunter2@127.0.0.1:1/0\"\nrate_limits:\n  - {name: shared, key: ip, limit: 1, per: 1s, store: redis, on_error: deny}\n";
        assert!(problems(ok).is_empty(), "{:?}", problems(ok));
    }

    // A reload with the same stores.redis gets the same store (its connection and
    // state); other settings get another one; a store no config holds is let go.
    #[test]
    fn redis_stores_are_reused_while_the_settings_stay() {
        let s = Stores::default();
        let cfg =
            |url: &str, ms: u64| RedisConfig::new(Secret::new(url), Duration::from_millis(ms));
        let a = s.redis(cfg("redis://127.0.0.1:6379/0", 50)).unwrap();
        let a2 = s.redis(cfg("redis://127.0.0.1:6379/0", 50)).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        let b = s.redis(cfg("redis://127.0.0.1:6379/0", 60)).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        let weak = Arc::downgrade(&b);
        drop(b);
        assert!(weak.upgrade().is_none());
        let b2 = s.redis(cfg("redis://127.0.0.1:6379/0", 60)).unwrap();
        assert!(!Arc::ptr_eq(&a, &b2));
        assert_eq!(s.redis.lock().unwrap().len(), 2);
    }
}
