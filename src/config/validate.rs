//! Stage 2 of 3: checks, collecting every problem with its key path.
//!
//! Nothing here stops at the first problem. Each parser returns `Option` and records
//! what is wrong in [`Problems`]; `compile.rs` calls them while building the runtime
//! model, and `load.rs` refuses the file if anything was recorded.

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

#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
            at_key: false,
        });
    }

    pub fn unknown_key(&mut self, path: String, hint: Option<&str>) {
        let key = path.rsplit(['.', '[']).next().unwrap_or(&path).to_owned();
        let message = match hint {
            Some(h) => format!("unknown key \"{key}\" (did you mean \"{h}\"?)"),
            None => format!("unknown key \"{key}\""),
        };
        self.0.push(Problem {
            path,
            message,
            at_key: true,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `500ms`, `30s`, `10m`, `1h`, `1d`, and sums like `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration \"{s}\": expected e.g. 500ms, 30s, 10m, 1h"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration \"{s}\": number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => {
                return Err(format!(
                    "invalid duration \"{s}\": a unit is required (ms, s, m, h), e.g. \"{n}s\""
                ))
            }
            u => return Err(format!("invalid duration \"{s}\": unknown unit \"{u}\"")),
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

pub fn duration(
    p: &mut Problems,
    path: impl fmt::Display,
    v: Option<&String>,
    default: Duration,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s) {
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

pub fn socket_addr(p: &mut Problems, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let hint = if s.starts_with("localhost:") {
                " (use 127.0.0.1:PORT)"
            } else if !s.contains(':') {
                " (a port is required, e.g. 127.0.0.1:8080)"
            } else {
                ""
            };
            p.add(path, format!("invalid listen address \"{s}\"{hint}"));
            None
        }
    }
}

/// An absolute http(s) URL.
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

/// An HTTP method token (`GET`, `POST`, ...) or `*`.
pub fn method(p: &mut Problems, path: impl fmt::Display, s: &str) -> Option<http::Method> {
    if s.is_empty() || s.bytes().any(|b| !b.is_ascii_alphabetic()) {
        p.add(path.to_string(), format!("invalid HTTP method \"{s}\""));
        return None;
    }
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        p.add(
            path.to_string(),
            format!(
                "HTTP methods are case-sensitive: write \"{}\"",
                s.to_ascii_uppercase()
            ),
        );
        return None;
    }
    http::Method::from_bytes(s.as_bytes()).ok()
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

/// Keys whose misspelling we can name ("did you mean").
pub fn suggest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if let Some(c) = candidates
        .iter()
        .find(|c| c.len() >= 2 && (key.starts_with(*c) || c.starts_with(key)))
    {
        return Some(c);
    }
    candidates
        .iter()
        .map(|c| (edit_distance(key, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("30")
            .unwrap_err()
            .contains("unit is required"));
        assert!(parse_duration("5x").is_err());
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
    }
}
