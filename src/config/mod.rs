//! `gateway.yaml` in three stages: [`model`] (serde, as written) -> checks collecting
//! every problem with `file:line:col` and key path ([`validate`], [`source`]) ->
//! [`compile`] into the runtime model. [`load`] runs the three.

pub mod admin_auth;
pub mod compile;
pub mod fast;
pub mod login;
pub mod model;
pub mod ratelimit;
pub mod source;
pub mod upstream_auth;
pub mod upstream_session;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use compile::Registry;
use source::PosIndex;
use validate::{Problem, Problems};

use crate::runtime::Runtime;

/// Every problem found in a config file, each with its location.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    /// (line, col, path, message), in file order.
    pub problems: Vec<Located>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(
                f,
                "{}:{} {}: {}",
                self.line, self.column, self.path, self.message
            )
        }
    }
}

impl ConfigError {
    fn single(file: &str, line: usize, column: usize, message: String) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            problems: vec![Located {
                line,
                column,
                path: String::new(),
                message,
            }],
        }
    }

    /// One line per problem: `gateway.yaml:41:9 routes[2].upstream: unknown upstream "x"`.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("{}:{}", self.file, p))
            .collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// Every key tollgate knows, for "did you mean" hints on unknown keys.
const KNOWN_KEYS: &[&str] = &[
    "server",
    "listen",
    "tls",
    "cert",
    "key",
    "client_ca",
    "sni",
    "hosts",
    "redirect_listen",
    "redirect_https_port",
    "admin_listen",
    "admin_auth",
    "limits",
    "max_header_bytes",
    "max_body_bytes",
    "header_read_timeout",
    "request_timeout",
    "max_connections",
    "max_concurrent_requests",
    "issuers",
    "name",
    "issuer",
    "jwks_uri",
    "discovery",
    "audiences",
    "algorithms",
    "leeway",
    "scope_claims",
    "client_claims",
    "skip_audience_check",
    "introspection",
    "url",
    "client_id",
    "client_secret",
    "cache_ttl",
    "jwks_refresh",
    "fetch_timeout",
    "token_service",
    "path",
    "audience",
    "signing_key",
    "create_signing_key",
    "token_ttl",
    "clients",
    "id",
    "secret",
    "secret_hash",
    "scopes",
    "upstreams",
    "ca",
    "connect_timeout",
    "timeout",
    "auth",
    "type",
    "token_url",
    "scope",
    "client_auth",
    "request_format",
    "extra_params",
    "username",
    "password_hash",
    "password",
    "routes",
    "path_prefix",
    "upstream",
    "permissions",
    "methods",
    "cors",
    "allow_origins",
    "allow_methods",
    "allow_headers",
    "expose_headers",
    "allow_credentials",
    "max_age",
    "body_credentials",
    "csrf",
    "fetch_path",
    "replay_max_bytes",
    "strip_cookies",
    "service_key",
    "subject_token_type",
    "requested_token_type",
    "resource",
    "stores",
    "redis",
    "rate_limits",
    "limit",
    "per",
    "window",
    "store",
    "on_error",
    "failed_auth_limit",
    "login",
    "callback_path",
    "logout_path",
    "cookie_secret",
    "cookie_secure",
    "session_ttl",
    "post_logout_redirect_uri",
];

fn ignored_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => source::join_index(&ignored_path(parent), *index),
        P::Map { parent, key } => source::join_key(&ignored_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

fn error_path(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment as S;
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            S::Seq { index } => out = source::join_index(&out, *index),
            S::Map { key } => out = source::join_key(&out, key),
            S::Enum { .. } | S::Unknown => {}
        }
    }
    out
}

/// Reads, checks and compiles a config file. Relative paths inside it are relative to
/// its folder.
pub fn load(path: &Path, reg: &Registry) -> Result<Runtime, ConfigError> {
    let mut timings = LoadTimings::default();
    let started = Instant::now();
    let bytes = std::fs::read(path);
    timings.read = started.elapsed();
    load_bytes(path, bytes, reg, &mut timings)
}

/// How long each stage of a load took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadTimings {
    /// Reading the file.
    pub read: Duration,
    /// YAML text -> the serde model: syntax, types, unknown keys, `${...}`.
    pub parse: Duration,
    /// Every check on the values and the runtime model built from them (one pass:
    /// validation happens while compiling).
    pub compile: Duration,
}

/// [`load`] with the file already read (`bytes` is what reading it gave), so that a
/// caller that needs the bytes too (the reload's change detection) reads it once.
pub fn load_bytes(
    path: &Path,
    bytes: std::io::Result<Vec<u8>>,
    reg: &Registry,
    timings: &mut LoadTimings,
) -> Result<Runtime, ConfigError> {
    let file = path.display().to_string();
    let text = bytes
        .and_then(|b| {
            // The same words as `read_to_string`'s error.
            String::from_utf8(b).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                )
            })
        })
        .map_err(|e| ConfigError::single(&file, 1, 1, format!("cannot read config file: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rt = load_str_timed(&text, &file, base, reg, timings)?;
    rt.hash = hex(&Sha256::digest(text.as_bytes()));
    rt.path = path.to_path_buf();
    Ok(rt)
}

/// Identity of everything a config was built from: the config text's hash and the
/// content of every file it refers to (missing files count too).
pub fn inputs_hash(config_hash: &str, files: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    h.update(config_hash.as_bytes());
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(b) => h.update(Sha256::digest(&b)),
            Err(_) => h.update(b"missing"),
        }
    }
    hex(&h.finalize())
}

pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

pub fn load_str(
    text: &str,
    file: &str,
    base: &Path,
    reg: &Registry,
) -> Result<Runtime, ConfigError> {
    load_str_timed(text, file, base, reg, &mut LoadTimings::default())
}

fn load_str_timed(
    text: &str,
    file: &str,
    base: &Path,
    reg: &Registry,
    timings: &mut LoadTimings,
) -> Result<Runtime, ConfigError> {
    let started = Instant::now();
    let base_dir: PathBuf = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base.to_path_buf()
    };
    // The tree walks below build a path string per node; on a 10,000-route file that
    // was a third of the load time, so they only run when the text can need them.
    // (An escape sequence could spell either, so text with escapes is walked too.)
    let escapes = text.contains('\\');
    // (Typographic quotes are not ASCII; an ASCII check is much faster than the search.)
    let curly = escapes || (!text.is_ascii() && text.contains(source::CURLY));
    let references = escapes || text.contains("${");
    // A text that needs neither walk is first read in one pass, straight into the
    // model; anything unusual (a problem, a tag, ...) sends it down the full route
    // below, which reports exactly what it always did.
    if !curly && !references {
        if let Some(model) = fast::parse(text) {
            timings.parse = started.elapsed();
            let started = Instant::now();
            let mut problems = Problems::default();
            let rt = compile::compile(&model, &base_dir, reg, &mut problems);
            timings.compile = started.elapsed();
            return match rt {
                Some(mut rt) if problems.is_empty() => {
                    rt.files.sort();
                    rt.files.dedup();
                    rt.redacted = redacted(model);
                    Ok(rt)
                }
                _ => Err(locate(file, &PosIndex::build(text), problems.0)),
            };
        }
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let (l, c) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigError::single(file, l, c, format!("YAML syntax error: {e}"))
    })?;
    if value.is_null() {
        return Err(ConfigError::single(
            file,
            1,
            1,
            "config file is empty".into(),
        ));
    }
    let mut problems = Problems::default();
    if curly {
        for (path, msg) in source::curly_quote_problems(&value) {
            problems.add(path, msg);
        }
    }
    let (file_refs, substitution_problems) = if references {
        (
            source::file_references(&value, &base_dir),
            source::substitute(&mut value, &base_dir),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    // A value that could not be substituted is reported once, not again by the checks
    // that then see the raw `${...}` text.
    for (path, msg) in &substitution_problems {
        problems.add(path.clone(), msg.clone());
    }
    // serde stops at the first type error; to still report every problem, the
    // offending key is removed and deserialisation tried again (a bounded number of
    // times). Semantic checks then run on what is left.
    let mut unknown: Vec<String> = Vec::new();
    let mut model = None;
    for _ in 0..32 {
        let mut seen = Vec::new();
        let mut on_unknown = |p: serde_ignored::Path| seen.push(ignored_path(&p));
        let de = serde_ignored::Deserializer::new(&value, &mut on_unknown);
        let result: Result<model::ConfigModel, _> = serde_path_to_error::deserialize(de);
        unknown.extend(seen);
        match result {
            Ok(m) => {
                model = Some(m);
                break;
            }
            Err(e) => {
                let path = error_path(e.path());
                let msg = e.inner().to_string();
                // serde_yaml appends its own (post-substitution) location; ours is better.
                let mut msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
                // serde quotes the offending value; never for a secret.
                let key = path.rsplit('.').next().unwrap_or("");
                if key.contains("secret") || key.contains("password") || key == "service_key" {
                    msg = "invalid value (expected a string; the value is not shown)".into();
                }
                problems.add(path.clone(), msg);
                if !remove_map_entry(&mut value, &path) {
                    break;
                }
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    for u in unknown {
        let key = u.rsplit(['.', '[']).next().unwrap_or("").to_owned();
        problems.unknown_key(u, validate::suggest(&key, KNOWN_KEYS));
    }
    timings.parse = started.elapsed();
    let started = Instant::now();
    let rt = model.and_then(|m| {
        let mut rt = compile::compile(&m, &base_dir, reg, &mut problems)?;
        rt.redacted = redacted(m);
        Some(rt)
    });
    timings.compile = started.elapsed();
    problems.0.retain(|p| {
        substitution_problems
            .iter()
            .all(|(path, _)| *path != p.path)
            || substitution_problems
                .iter()
                .any(|(path, msg)| *path == p.path && *msg == p.message)
    });
    match rt {
        Some(mut rt) if problems.is_empty() => {
            rt.files.extend(file_refs);
            rt.files.sort();
            rt.files.dedup();
            Ok(rt)
        }
        // Positions are only needed to report problems.
        _ => Err(locate(file, &PosIndex::build(text), problems.0)),
    }
}

/// The `GET /admin/config` view of a loaded model: built on first request (every secret
/// serialises as `[redacted]`).
fn redacted(model: model::ConfigModel) -> crate::runtime::RedactedConfig {
    crate::runtime::RedactedConfig::new(move || serde_json::to_value(&model).unwrap_or_default())
}

/// Removes the mapping entry at `path` (`a.b[2].c`). Sequence elements are never removed
/// (that would shift the indexes later problems are reported with).
fn remove_map_entry(value: &mut serde_yaml::Value, path: &str) -> bool {
    let Some(dot) = path.rfind('.') else {
        return match value.as_mapping_mut() {
            Some(m) if !path.is_empty() && !path.contains('[') => m.remove(path).is_some(),
            _ => false,
        };
    };
    let (parent, key) = (&path[..dot], &path[dot + 1..]);
    if key.contains('[') {
        return false;
    }
    let mut cur = value;
    for part in split_path(parent) {
        cur = match part {
            Ok(k) => match cur.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            Err(i) => match cur.get_mut(i) {
                Some(v) => v,
                None => return false,
            },
        };
    }
    cur.as_mapping_mut()
        .is_some_and(|m| m.remove(key).is_some())
}

/// `a.b[2].c` -> [Ok("a"), Ok("b"), Err(2), Ok("c")]
fn split_path(p: &str) -> Vec<Result<&str, usize>> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(Ok(&rest[..i]));
            }
            rest = &rest[i..];
            while let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').unwrap_or(r.len());
                if let Ok(n) = r[..end].parse() {
                    out.push(Err(n));
                }
                rest = r.get(end + 1..).unwrap_or("");
            }
        } else if !rest.is_empty() {
            out.push(Ok(rest));
        }
    }
    out
}

fn locate(file: &str, index: &PosIndex, problems: Vec<Problem>) -> ConfigError {
    let mut out: Vec<Located> = problems
        .into_iter()
        .map(|p| {
            let pos = if p.at_key {
                index.key_pos(&p.path)
            } else {
                index.value_pos(&p.path)
            };
            let pos = pos.unwrap_or(source::Pos { line: 1, col: 1 });
            Located {
                line: pos.line,
                column: pos.col,
                path: p.path,
                message: p.message,
            }
        })
        .collect();
    out.sort_by_key(|p| (p.line, p.column));
    out.dedup_by(|a, b| a.path == b.path && a.message == b.message);
    ConfigError {
        file: file.to_owned(),
        problems: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: a wrongly typed secret is reported without its value.
    #[test]
    fn secret_values_are_not_echoed() {
        let yaml = "server:\n  listen: \"127.0.0.1:0\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n    auth:\n      type: basic\n      username: a\n      password: 987654321\n";
        let e = load_str(yaml, "g.yaml", Path::new("."), &Registry::default())
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(text.contains("upstreams[0].auth.password"), "{text}");
        assert!(!text.contains("987654321"), "{text}");
    }

    // Behaviour: an issuer leeway over an hour is a validation error (it would keep
    // expired tokens valid; huge values once overflowed the expiry check).
    #[test]
    fn huge_leeway_is_refused() {
        let yaml = "server:\n  listen: \"127.0.0.1:0\"\nissuers:\n  - name: corp\n    issuer: \"https://idp\"\n    jwks_uri: \"http://127.0.0.1:1/jwks\"\n    audiences: [a]\n    leeway: 99999999999s\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\nroutes:\n  - name: r\n    path_prefix: /\n    upstream: u\n    auth: {issuers: [corp]}\n";
        let e = load_str(yaml, "g.yaml", Path::new("."), &Registry::default())
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(text.contains("issuers[0].leeway"), "{text}");
        assert!(text.contains("maximum"), "{text}");
    }
}
