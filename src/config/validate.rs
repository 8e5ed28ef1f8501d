//! Stage 2 of 3: the checks every section uses, collecting every problem with its key
//! path.
//!
//! Nothing here stops at the first problem. Each check returns `Option` (or a default)
//! and records what is wrong in [`Problems`]; the section files (`server.rs`,
//! `routes.rs`, ...) call them while compiling, and `mod.rs` refuses the file if any
//! error was recorded. Warnings are recorded the same way and never refuse a file.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A key path that is only written out when a problem is reported
/// (`routes[2].permissions[0].methods[1]`): formatting one per checked value was a
/// fifth of compiling a 10,000-route file, nearly all of it for values that are fine.
#[derive(Clone, Copy)]
pub enum At<'a> {
    /// A path written out already (`""` is the document itself).
    Path(&'a str),
    /// `parent.key`
    Key(&'a At<'a>, &'a str),
    /// `parent[index]`
    Index(&'a At<'a>, usize),
}

impl<'a> At<'a> {
    pub fn key(&'a self, key: &'a str) -> At<'a> {
        At::Key(self, key)
    }

    pub fn index(&'a self, index: usize) -> At<'a> {
        At::Index(self, index)
    }
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Path(p) => f.write_str(p),
            At::Key(At::Path(""), key) => f.write_str(key),
            At::Key(parent, key) => write!(f, "{parent}.{key}"),
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// One thing wrong with the config, at a key path like `routes[2].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    /// Unknown keys point at the key, everything else at the value.
    pub at_key: bool,
}

/// What the checks found: errors refuse the file, warnings are reported and the file
/// is used.
#[derive(Debug, Default)]
pub struct Problems {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.into(),
            message: message.into(),
            at_key: false,
        });
    }

    /// A problem with a key itself (unknown, repeated, not for this type).
    pub fn at_key(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.into(),
            message: message.into(),
            at_key: true,
        });
    }

    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
            at_key: false,
        });
    }

    /// A required `key` of the block at `parent` is not there. Not reported when the
    /// key is there with a value that could not be read (that problem says more), when
    /// the block itself was reported, or when a misspelling of the key was.
    pub fn missing(&mut self, parent: impl fmt::Display, key: &str, why: &str) {
        let parent = parent.to_string();
        let full = if parent.is_empty() {
            key.to_owned()
        } else {
            format!("{parent}.{key}")
        };
        if self.has(&full) || self.has(&parent) {
            return;
        }
        // A misspelt key was reported already, with this key as its suggestion.
        let hint = format!("(did you mean \"{key}\"?)");
        let misspelt = self.errors.iter().any(|p| {
            p.at_key
                && p.message.ends_with(&hint)
                && p.path.strip_prefix(parent.as_str()).is_some_and(|rest| {
                    rest.strip_prefix('.')
                        .unwrap_or(rest)
                        .bytes()
                        .all(|b| b != b'.' && b != b'[')
                })
        });
        if misspelt {
            return;
        }
        self.add(parent, format!("missing required key \"{key}\"{why}"));
    }

    /// Whether an error was recorded at exactly `path`.
    pub fn has(&self, path: &str) -> bool {
        self.errors.iter().any(|p| p.path == path)
    }

    /// No errors (warnings do not count).
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

/// `500ms`, `30s`, `1.5s`, `10m`, `1h`, `1d`, and sums like `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const EXAMPLE: &str = "expected e.g. 500ms, 1.5s, 30s, 10m, 1h";
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t.starts_with('-') {
        return Err(format!(
            "invalid duration \"{s}\": durations cannot be negative"
        ));
    }
    let too_large = || format!("invalid duration \"{s}\": too large");
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let (nanos_per_unit, whole, fraction, after) = match duration_part(rest) {
            Some(p) => p,
            None => return Err(format!("invalid duration \"{s}\": {EXAMPLE}")),
        };
        let nanos_per_unit: u128 = match nanos_per_unit {
            Ok(n) => n,
            Err("") => {
                return Err(format!(
                    "invalid duration \"{s}\": a unit is required (ms, s, m, h, d), e.g. \"{}s\"",
                    &rest[..rest.len() - after.len()]
                ))
            }
            Err(unit) => return Err(format!("invalid duration \"{s}\": unknown unit \"{unit}\"")),
        };
        let whole: u128 = whole.parse().map_err(|_| too_large())?;
        // Up to 18 fraction digits are exact in u128 arithmetic; more cannot matter.
        let digits = &fraction[..fraction.len().min(18)];
        let scale = 10u128.pow(digits.len() as u32);
        let frac: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| too_large())?
        };
        let part = whole
            .checked_mul(nanos_per_unit)
            .and_then(|w| w.checked_add(frac * nanos_per_unit / scale))
            .ok_or_else(too_large)?;
        total = total.checked_add(part).ok_or_else(too_large)?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| too_large())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// One `1.5s` of a duration: (nanoseconds per unit, or the unknown unit; whole digits;
/// fraction digits; the rest). `None` when it does not start with a number.
#[allow(clippy::type_complexity)]
fn duration_part(s: &str) -> Option<(Result<u128, &str>, &str, &str, &str)> {
    let whole_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (whole, mut rest) = s.split_at(whole_len);
    let mut fraction = "";
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        fraction = &r[..n];
        rest = &r[n..];
        if n == 0 {
            return None;
        }
    }
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole = if whole.is_empty() { "0" } else { whole };
    let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
    let (unit, after) = rest.split_at(unit_len);
    let nanos = match unit {
        "ms" => Ok(1_000_000),
        "s" => Ok(1_000_000_000),
        "m" => Ok(60_000_000_000),
        "h" => Ok(3_600_000_000_000),
        "d" => Ok(86_400_000_000_000),
        other => Err(other),
    };
    Some((nanos, whole, fraction, after))
}

/// A duration key: `default` when absent; a problem (and `default`) when it cannot be
/// read or is zero.
pub fn duration(
    p: &mut Problems,
    path: impl fmt::Display,
    v: Option<&impl AsRef<str>>,
    default: Duration,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s.as_ref()) {
            Ok(d) if d.is_zero() => {
                p.add(path.to_string(), "duration must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                p.add(path.to_string(), e);
                default
            }
        },
    }
}

/// A listen address: `127.0.0.1:8080`, `[::1]:8080`, or `:8080` for every IPv4
/// interface (`0.0.0.0:8080`).
pub fn socket_addr(p: &mut Problems, path: &str, s: &str) -> Option<SocketAddr> {
    if let Some(port) = s.strip_prefix(':') {
        if let Ok(port) = port.parse::<u16>() {
            return Some(SocketAddr::from(([0, 0, 0, 0], port)));
        }
    }
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let hint = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                format!(
                    ": a port alone is not an address; write \":{s}\" (every interface) or \"127.0.0.1:{s}\" (this machine only)"
                )
            } else if let Some(port) = s.strip_prefix("localhost:") {
                format!(" (write \"127.0.0.1:{port}\")")
            } else if !s.contains(':') {
                " (a port is required, e.g. 127.0.0.1:8080)".to_owned()
            } else {
                String::new()
            };
            p.add(path, format!("invalid listen address \"{s}\"{hint}"));
            None
        }
    }
}

/// An absolute http(s) URL.
/// A `proxy:` value: `direct` (or `none`) bypasses the environment's proxy; a URL
/// (`http://[user:password@]host:port`, `https://` for TLS to the proxy) is that proxy.
/// Absent: `default`. Problems never repeat the value (it may hold a password).
pub fn outbound(
    p: &mut Problems,
    path: &str,
    v: Option<&crate::secret::Secret>,
    default: crate::outbound::Outbound,
) -> crate::outbound::Outbound {
    use crate::outbound::{Outbound, ProxyServer};
    let Some(v) = v else {
        return default;
    };
    match v.expose().trim() {
        "direct" | "none" => Outbound::Direct,
        "" => {
            p.add(
                path,
                "must not be empty: a proxy URL (http://host:port), or direct",
            );
            default
        }
        url => match ProxyServer::parse(url) {
            Ok(s) => Outbound::Via(std::sync::Arc::new(s)),
            Err(e) => {
                p.add(path, format!("{e} (or write direct to bypass any proxy)"));
                default
            }
        },
    }
}

pub fn http_url(p: &mut Problems, path: &str, s: &str) -> Option<url::Url> {
    match url::Url::parse(s) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                p.add(
                    path,
                    "credentials in URLs are not allowed; use the auth settings",
                );
                return None;
            }
            Some(u)
        }
        Ok(u) => {
            p.add(
                path,
                format!(
                    "URL must be http:// or https:// with a host, got scheme \"{}\"",
                    u.scheme()
                ),
            );
            None
        }
        Err(e) => {
            p.add(path, format!("invalid URL \"{s}\": {e}"));
            None
        }
    }
}

/// The methods of RFC 9110 (and PATCH, RFC 5789). Any other method a route names must
/// be listed in `server.extension_methods`.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// The schema of a list of methods (`permissions[].methods`, `cors.allow_methods`):
/// the known methods (offered by editors), `*`, or another method token (valid when
/// `server.extension_methods` lists it, which only `tollgate validate` can tell).
pub fn methods_schema() -> serde_json::Value {
    let mut known: Vec<&str> = KNOWN_METHODS.to_vec();
    known.push("*");
    serde_json::json!({
        "type": "array",
        "items": {
            "anyOf": [
                {"enum": known},
                {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
            ]
        }
    })
}

/// Whether `s` is a method token (RFC 9110 §5.6.2 `tchar`s).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP method a route names: one of [`KNOWN_METHODS`] or of `extension` (the
/// config's `server.extension_methods`).
pub fn method(
    p: &mut Problems,
    path: impl fmt::Display,
    s: &str,
    extension: &[String],
) -> Option<http::Method> {
    let known = KNOWN_METHODS.contains(&s) || extension.iter().any(|e| e == s);
    if known {
        return http::Method::from_bytes(s.as_bytes()).ok();
    }
    let upper = s.to_ascii_uppercase();
    let message = if !is_token(s) {
        format!("invalid HTTP method \"{s}\"")
    } else if upper != s && (KNOWN_METHODS.contains(&upper.as_str()) || extension.contains(&upper))
    {
        format!("HTTP methods are case-sensitive: write \"{upper}\"")
    } else {
        let mut candidates: Vec<&str> = KNOWN_METHODS.to_vec();
        candidates.extend(extension.iter().map(String::as_str));
        match suggest(&upper, &candidates) {
            Some(m) => format!("unknown HTTP method \"{s}\" (did you mean \"{m}\"?)"),
            None => format!(
                "unknown HTTP method \"{s}\": list it under server.extension_methods to allow it"
            ),
        }
    };
    p.add(path.to_string(), message);
    None
}

/// A scope or client id: non-empty, no whitespace.
pub fn token_word(p: &mut Problems, path: impl fmt::Display, s: &str, what: &str) -> bool {
    if s.trim().is_empty() {
        p.add(path.to_string(), format!("{what} must not be empty"));
        false
    } else if s.chars().any(|c| c.is_whitespace()) {
        p.add(
            path.to_string(),
            format!("{what} \"{s}\" contains whitespace; list each one separately"),
        );
        false
    } else {
        true
    }
}

/// The candidate a misspelt `key` most likely meant ("did you mean").
pub fn suggest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if let Some(c) = candidates
        .iter()
        .find(|c| c.len() >= 2 && key.len() >= 2 && (key.starts_with(*c) || c.starts_with(key)))
    {
        return Some(c);
    }
    candidates
        .iter()
        .map(|c| (edit_distance(key, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: durations with units, sums and decimals; clear refusals.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0.25m").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("2.5ms").unwrap(),
            Duration::from_micros(2500)
        );
        assert_eq!(parse_duration("1h0.5m").unwrap(), Duration::from_secs(3630));
        assert!(parse_duration("30")
            .unwrap_err()
            .contains("unit is required"));
        assert!(parse_duration("1.5").unwrap_err().contains("\"1.5s\""));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("nan").unwrap_err().contains("expected e.g."));
        assert!(parse_duration("NaNs")
            .unwrap_err()
            .contains("expected e.g."));
        assert!(parse_duration("1.s").is_err());
        assert!(parse_duration("99999999999999999999999d")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("5x")
            .unwrap_err()
            .contains("unknown unit \"x\""));
        assert!(parse_duration("").is_err());
    }

    // Behaviour: a lazily built key path reads like the ones written out by hand.
    #[test]
    fn key_paths() {
        let routes = At::Path("routes");
        let r = routes.index(2);
        let m = r.key("permissions");
        let m0 = m.index(0);
        assert_eq!(
            m0.key("methods").index(1).to_string(),
            "routes[2].permissions[0].methods[1]"
        );
        assert_eq!(At::Path("").key("server").to_string(), "server");
        assert_eq!(
            At::Path("server").key("listen").to_string(),
            "server.listen"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("upstrem", &["upstream", "upstreams"]),
            Some("upstream")
        );
        assert_eq!(suggest("zzz", &["upstream"]), None);
        assert_eq!(suggest("PSOT", &KNOWN_METHODS), Some("POST"));
    }

    // Behaviour: listen addresses say what to write instead.
    #[test]
    fn listen_addresses() {
        let mut p = Problems::default();
        assert_eq!(
            socket_addr(&mut p, "l", ":8080"),
            Some("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(socket_addr(&mut p, "l", "8080"), None);
        assert!(p.errors[0].message.contains("\":8080\""), "{p:?}");
        assert!(p.errors[0].message.contains("\"127.0.0.1:8080\""), "{p:?}");
        assert_eq!(socket_addr(&mut p, "l", "localhost:80"), None);
        assert!(p.errors[1].message.contains("127.0.0.1:80"), "{p:?}");
    }

    // Behaviour: methods outside the known nine need opting in; typos get a suggestion.
    #[test]
    fn methods() {
        let mut p = Problems::default();
        assert_eq!(method(&mut p, "m", "GET", &[]), Some(http::Method::GET));
        assert_eq!(method(&mut p, "m", "PSOT", &[]), None);
        assert_eq!(method(&mut p, "m", "PURGE", &[]), None);
        assert_eq!(method(&mut p, "m", "get", &[]), None);
        let ext = ["PURGE".to_owned()];
        assert!(method(&mut p, "m", "PURGE", &ext).is_some());
        let m: Vec<&str> = p.errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            m,
            [
                "unknown HTTP method \"PSOT\" (did you mean \"POST\"?)",
                "unknown HTTP method \"PURGE\": list it under server.extension_methods to allow it",
                "HTTP methods are case-sensitive: write \"GET\"",
            ]
        );
    }
}
