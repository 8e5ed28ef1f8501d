//! Step 3 of the request path: normalise the path, then find the route.
//!
//! Normalisation happens once, before any matching, and the upstream receives the
//! normalised path: what tollgate checked is what the backend reads. Route lookup is a
//! hash lookup per path segment (longest prefix first), so it costs the same with ten
//! routes or ten thousand.
//! [`layer::RouteLayer`] is the step itself.

pub mod layer;

use std::borrow::Cow;
use std::collections::HashMap;

/// Why a path was refused (400 `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises a request path (no query):
/// - percent-encoded unreserved characters are decoded, other escapes kept with
///   upper-case hex; an escape for `/`, `\` or NUL, or a malformed escape -> 400;
/// - repeated `/` collapse; `.` segments vanish; `..` removes the previous segment,
///   and one that would climb above `/` -> 400;
/// - a `.` or `..` segment spelled with escapes (`%2e%2e`) or hidden behind a `;`
///   parameter (`..;/`, `..%3B/`), or a segment that is only parameters (`/;x/`, which
///   backends that drop parameters read as no segment at all) -> 400: backends
///   disagree on those, so nobody gets them;
/// - a trailing `/` is kept (it is the backend's business), a literal `\` -> 400.
pub fn normalize_path(raw: &str) -> Result<String, BadPath> {
    Ok(normalized(raw)?.unwrap_or_else(|| raw.to_owned()))
}

/// [`normalize_path`] without the copy: `Ok(None)` when `raw` is already normal.
pub fn normalized(raw: &str) -> Result<Option<String>, BadPath> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadPath("path must start with /"));
    }
    if is_normal(raw) {
        // Nothing below would change it.
        return Ok(None);
    }
    rebuild(raw).map(Some)
}

/// [`normalize_path`] segment by segment (for a path that starts with `/`).
fn rebuild(raw: &str) -> Result<String, BadPath> {
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_seg in raw[1..].split('/') {
        trailing_slash = false;
        if raw_seg.is_empty() {
            trailing_slash = true;
            continue;
        }
        let mut seg = String::with_capacity(raw_seg.len());
        let mut escaped_dot = false;
        let sb = raw_seg.as_bytes();
        let mut i = 0;
        while i < sb.len() {
            let b = sb[i];
            match b {
                b'%' => {
                    let (Some(h), Some(l)) = (
                        sb.get(i + 1).copied().and_then(hex_val),
                        sb.get(i + 2).copied().and_then(hex_val),
                    ) else {
                        return Err(BadPath("malformed percent-encoding in path"));
                    };
                    let v = h * 16 + l;
                    match v {
                        b'/' | b'\\' => return Err(BadPath("encoded slash in path")),
                        0 => return Err(BadPath("NUL in path")),
                        _ if is_unreserved(v) => {
                            if v == b'.' {
                                escaped_dot = true;
                            }
                            seg.push(v as char);
                        }
                        _ => {
                            seg.push('%');
                            seg.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
                            seg.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
                        }
                    }
                    i += 3;
                }
                b'\\' => return Err(BadPath("backslash in path")),
                0 => return Err(BadPath("NUL in path")),
                _ if b < 0x20 || b == 0x7f => return Err(BadPath("control character in path")),
                _ => {
                    // Multi-byte UTF-8 arrives here byte by byte; copy the char whole.
                    let ch_len = utf8_len(b);
                    seg.push_str(&raw_seg[i..i + ch_len]);
                    i += ch_len;
                    continue;
                }
            }
        }
        let bare = &seg[..segment_name_len(&seg)];
        let dotty = bare == "." || bare == "..";
        if dotty && (escaped_dot || bare.len() != seg.len()) {
            return Err(BadPath("disguised dot-segment in path"));
        }
        if bare.is_empty() {
            // `/a/;x/b` is `/a/b` to such a backend, while `*` would match `;x`.
            return Err(BadPath("path segment with parameters but no name"));
        }
        match seg.as_str() {
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(BadPath("path climbs above /"));
                }
                trailing_slash = true;
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// The length of a segment's name as a backend that drops `;` parameters reads it
/// (some decode `%3B` first, so that counts as `;` too).
fn segment_name_len(seg: &str) -> usize {
    [seg.find(';'), seg.find("%3B")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(seg.len())
}

/// A normalised path as a backend that drops `;` parameters reads it (Tomcat, Jetty,
/// Spring: `/admin;x/users` is `/admin/users`). Routes are chosen by it, so a
/// parameter cannot move a request away from the route its segments name.
pub fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') && !path.contains("%3B") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&seg[..segment_name_len(seg)]);
    }
    Cow::Owned(out)
}

/// Whether `raw` (starting with `/`) is its own normal form: printable ASCII without
/// `%`, `\\` or `;`, no empty segment but a trailing one, no `.` or `..` segment. Most
/// request paths are; [`normalize_path`] then skips its segment-by-segment rebuild.
fn is_normal(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.iter()
        .all(|&c| (0x21..0x7f).contains(&c) && !matches!(c, b'%' | b'\\' | b';'))
        && !raw.contains("//")
        && raw[1..].split('/').all(|seg| seg != "." && seg != "..")
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// Host for routing: port removed, lower case, trailing dot removed. Borrows `host` when
/// it is already in lower case (the usual case: no allocation per request).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    let h = h.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// A compiled route's position in `Runtime::routes`.
pub type RouteId = usize;

/// The route tables' maps. Looked up once or more per request (once per path segment
/// until a prefix matches) with the request's own path and host: hashed with foldhash
/// under a per-process random seed rather than std's SipHash (~340 of the plain path's
/// instructions, bench/ANALYSIS.md "Session 14"). Only the config inserts keys, so the
/// hash-flooding defence SipHash buys matters less here than where clients add keys.
type Table<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Longest `path_prefix` on a segment boundary, one hash lookup per segment (two when
/// the table has routes with `case_sensitive: false`).
#[derive(Debug, Default)]
pub struct PrefixTable {
    // Key: prefix without trailing slash ("" for "/").
    map: Table<RouteId>,
    /// `case_sensitive: false` routes, by their key in ASCII lower case: a path is
    /// looked up here in lower case too, at every length, so the longest prefix wins
    /// whichever way either is spelt.
    any_case: Table<RouteId>,
}

impl PrefixTable {
    /// Returns false when the prefix is already present.
    pub fn insert(&mut self, prefix: &str, id: RouteId) -> bool {
        self.insert_with_case(prefix, id, true)
    }

    /// Returns false when the prefix is already present, or (ignoring case on either
    /// side) a case-insensitive route and another route have the same prefix.
    pub fn insert_with_case(&mut self, prefix: &str, id: RouteId, case_sensitive: bool) -> bool {
        let key = prefix_key(prefix);
        let lower = key.to_ascii_lowercase();
        if self.map.contains_key(&key) || self.any_case.contains_key(&lower) {
            return false;
        }
        if case_sensitive {
            self.map.insert(key, id);
        } else {
            if self.map.keys().any(|k| k.eq_ignore_ascii_case(&lower)) {
                return false;
            }
            self.any_case.insert(lower, id);
        }
        true
    }

    pub fn lookup(&self, path: &str) -> Option<RouteId> {
        if self.map.is_empty() && self.any_case.is_empty() {
            return None;
        }
        let path = path.strip_suffix('/').unwrap_or(path);
        // Lower-cased once; its prefixes are cut at the same places (ASCII case
        // mapping keeps every byte where it is).
        let lower = (!self.any_case.is_empty()).then(|| path.to_ascii_lowercase());
        let mut end = path.len();
        loop {
            if let Some(id) = self.map.get(&path[..end]) {
                return Some(*id);
            }
            if let Some(id) = lower.as_ref().and_then(|l| self.any_case.get(&l[..end])) {
                return Some(*id);
            }
            if end == 0 {
                return None;
            }
            end = path[..end].rfind('/').unwrap_or(0);
        }
    }
}

pub fn prefix_key(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_owned()
}

/// Routes by host class, then longest prefix: exact host beats `*.` wildcard beats
/// routes without `hosts`.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: Table<PrefixTable>,
    /// (suffix including the leading dot, table), longest suffix first.
    wildcard: Vec<(String, PrefixTable)>,
    any: PrefixTable,
}

/// Where a route's `hosts` entry puts it.
pub enum HostPattern {
    Exact(String),
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> HostPattern {
        let s = s.trim_end_matches('.').to_ascii_lowercase();
        match s.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
            None => HostPattern::Exact(s),
        }
    }
}

impl RouteTable {
    /// Returns false when the same host + prefix is already taken.
    pub fn insert(&mut self, hosts: &[HostPattern], prefix: &str, id: RouteId) -> bool {
        self.insert_with_case(hosts, prefix, id, true)
    }

    /// Like [`RouteTable::insert`]; `case_sensitive: false` (a route's
    /// `case_sensitive: false`) matches the prefix ignoring ASCII case.
    pub fn insert_with_case(
        &mut self,
        hosts: &[HostPattern],
        prefix: &str,
        id: RouteId,
        case_sensitive: bool,
    ) -> bool {
        if hosts.is_empty() {
            return self.any.insert_with_case(prefix, id, case_sensitive);
        }
        let mut ok = true;
        for h in hosts {
            ok &= match h {
                HostPattern::Exact(host) => self
                    .exact
                    .entry(host.clone())
                    .or_default()
                    .insert_with_case(prefix, id, case_sensitive),
                HostPattern::Wildcard(suffix) => {
                    let pos = self.wildcard.iter().position(|(s, _)| s == suffix);
                    let idx = match pos {
                        Some(i) => i,
                        None => {
                            self.wildcard.push((suffix.clone(), PrefixTable::default()));
                            self.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
                            self.wildcard
                                .iter()
                                .position(|(s, _)| s == suffix)
                                .unwrap_or(0)
                        }
                    };
                    self.wildcard[idx]
                        .1
                        .insert_with_case(prefix, id, case_sensitive)
                }
            };
        }
        ok
    }

    /// `host` must already be normalised (see [`normalize_host`]).
    pub fn lookup(&self, host: &str, path: &str) -> Option<RouteId> {
        if let Some(t) = self.exact.get(host) {
            if let Some(id) = t.lookup(path) {
                return Some(id);
            }
        }
        for (suffix, t) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(id) = t.lookup(path) {
                    return Some(id);
                }
            }
        }
        self.any.lookup(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: the fast path for paths already normal gives what the segment-by-segment
    // rebuild gives, and is not taken for anything the rebuild would change or refuse.
    #[test]
    fn fast_path_agrees_with_the_rebuild() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/a/b/c",
            "/v2/analytics/data",
            "/a/..b",
            "/a/.b/",
            "/a.b/c..",
            "/a-b_c~d/e:f@g!h$&'()*+,=",
            "/...",
            "/a/...",
        ] {
            assert!(is_normal(p), "{p}");
            assert_eq!(normalize_path(p), rebuild(p), "{p}");
        }
        for p in [
            "//", "/a//b", "/a/./b", "/a/../b", "/a/.", "/a/..", "/..", "/a%2e", "/a;x", "/a\\b",
            "/é", "/a b", "/a/;x/b",
        ] {
            assert!(!is_normal(p), "{p}");
        }
    }

    fn n(p: &str) -> Result<String, BadPath> {
        normalize_path(p)
    }

    // Behaviour: SPEC "Paths are normalised before any matching".
    #[test]
    fn normalisation_rules() {
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(n("/a/b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/%61%62c").unwrap(), "/abc");
        assert_eq!(n("/a%7e%2D").unwrap(), "/a~-");
        assert_eq!(n("/a%20b%3f").unwrap(), "/a%20b%3F");
        assert_eq!(n("/a%25%32%66").unwrap(), "/a%252f", "no double decoding");
        assert_eq!(n("/file%2ejson").unwrap(), "/file.json");
        assert_eq!(n("/caf\u{e9}").unwrap(), "/caf\u{e9}");
    }

    #[test]
    fn tricks_are_refused() {
        for p in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/%2e%2e/x",
            "/a/%2E%2e/x",
            "/a/.%2e/x",
            "/a/..;/x",
            "/a/.;x/y",
            "/..",
            "/a/../../b",
            "/a%zz",
            "/a%4",
            "relative",
            "",
        ] {
            assert!(n(p).is_err(), "{p:?} must be refused");
        }
    }

    // Behaviour: a segment that is only `;` parameters, or a dot-segment hidden behind
    // an escaped `;`, is refused: a backend that drops parameters would read
    // `/reports/;x/rows` as `/reports/rows`, which `/reports/*/rows` must not reach.
    // Found by the `path_perm` fuzz target.
    #[test]
    fn parameter_only_segments_are_refused() {
        for p in [
            "/v2/analytics/reports/;x/rows",
            "/a/;/b",
            "/;x",
            "/a/%3bx/b",
            "/a/%3B/b",
            "/a/..%3B/b",
            "/a/.%3bx/b",
        ] {
            assert!(n(p).is_err(), "{p:?} must be refused");
        }
        assert_eq!(n("/a;x/b").unwrap(), "/a;x/b");
        assert_eq!(n("/data;jsessionid=1").unwrap(), "/data;jsessionid=1");
        assert_eq!(n("/a%3Bb").unwrap(), "/a%3Bb");
    }

    // Behaviour: routes are chosen by segment names, `;` parameters (and `%3B` ones)
    // removed, as a backend that drops parameters reads the path.
    #[test]
    fn routing_key_drops_parameters() {
        assert_eq!(without_parameters("/admin;x/users"), "/admin/users");
        assert_eq!(without_parameters("/admin%3Bx/users/"), "/admin/users/");
        assert_eq!(without_parameters("/a/b;jsessionid=1"), "/a/b");
        assert!(matches!(without_parameters("/a/b"), Cow::Borrowed("/a/b")));
    }

    // Behaviour: normalisation is idempotent.
    #[test]
    fn idempotent() {
        for p in ["/a//b/./c/../d/", "/x%20y%3a", "/%41/b/.."] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once);
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(normalize_host("API.Company.com:8443"), "api.company.com");
        assert_eq!(normalize_host("api.company.com."), "api.company.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        // A host already in lower case is borrowed, not copied, on every request.
        assert!(matches!(
            normalize_host("api.company.com:443"),
            std::borrow::Cow::Borrowed("api.company.com")
        ));
        assert!(matches!(
            normalize_host("Api.company.com"),
            std::borrow::Cow::Owned(_)
        ));
    }

    // Behaviour: longest prefix on a segment boundary; exact > wildcard > any host.
    #[test]
    fn longest_prefix_on_segment_boundary() {
        let mut t = RouteTable::default();
        assert!(t.insert(&[], "/", 0));
        assert!(t.insert(&[], "/v2/analytics", 1));
        assert!(t.insert(&[], "/v2/analytics/data/", 2));
        assert!(!t.insert(&[], "/v2/analytics/", 9), "duplicate prefix");
        assert_eq!(t.lookup("h", "/v2/analytics"), Some(1));
        assert_eq!(t.lookup("h", "/v2/analytics/"), Some(1));
        assert_eq!(t.lookup("h", "/v2/analytics/x"), Some(1));
        assert_eq!(t.lookup("h", "/v2/analyticsx"), Some(0));
        assert_eq!(t.lookup("h", "/v2/analytics/data"), Some(2));
        assert_eq!(t.lookup("h", "/v2/analytics/data/1"), Some(2));
        assert_eq!(t.lookup("h", "/other"), Some(0));

        let mut t = RouteTable::default();
        t.insert(&[], "/api", 0);
        t.insert(&[HostPattern::parse("*.company.com")], "/", 1);
        t.insert(&[HostPattern::parse("api.company.com")], "/", 2);
        assert_eq!(t.lookup("api.company.com", "/api/x"), Some(2));
        assert_eq!(t.lookup("bi.company.com", "/api/x"), Some(1));
        assert_eq!(t.lookup("company.com", "/api/x"), Some(0));
        assert_eq!(t.lookup("evilcompany.com", "/api/x"), Some(0));
        assert_eq!(t.lookup("evilcompany.com", "/nope"), None);
    }

    // Behaviour: a case-insensitive route takes every spelling of its whole prefix (its
    // parent's case rule does not matter), and the longest prefix still wins across both kinds; a case-sensitive route is untouched;
    // two routes whose prefixes differ only in case cannot both be case-insensitive
    // or meet a case-insensitive one.
    #[test]
    fn case_insensitive_prefixes() {
        let mut t = RouteTable::default();
        assert!(t.insert_with_case(&[], "/", 0, false));
        assert!(t.insert_with_case(&[], "/Admin", 1, false));
        assert!(t.insert(&[], "/api", 2));
        assert!(t.insert_with_case(&[], "/api/Internal", 3, false));
        assert!(!t.insert_with_case(&[], "/ADMIN", 9, false));
        assert!(!t.insert(&[], "/admin", 9));
        assert!(!t.insert_with_case(&[], "/API", 9, false));
        for (path, want) in [
            ("/admin", 1),
            ("/ADMIN/x", 1),
            ("/aDmIn/", 1),
            ("/adminx", 0),
            ("/api/x", 2),
            ("/API/x", 0),
            ("/api/internal/y", 3),
            ("/api/INTERNAL", 3),
            ("/API/internal", 3),
            ("/API/internalx", 0),
            ("/", 0),
        ] {
            assert_eq!(t.lookup("h", path), Some(want), "{path}");
        }
        let mut t = RouteTable::default();
        let host = [HostPattern::parse("a.example")];
        assert!(t.insert_with_case(&host, "/Admin", 0, false));
        assert!(t.insert(&[], "/", 1));
        assert_eq!(t.lookup("a.example", "/ADMIN/1"), Some(0));
        assert_eq!(t.lookup("b.example", "/ADMIN/1"), Some(1));
    }
}
