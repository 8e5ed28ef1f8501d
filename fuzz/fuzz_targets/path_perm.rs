//! Path normalisation (`route::normalize_path`), route lookup and permission decisions
//! (`policy::authorize`) on arbitrary request paths.
//!
//! Input: the first byte picks the method (`0` GET, `1` POST, `2` PUT, `3` DELETE, `4`
//! PATCH, `5` HEAD, `6` OPTIONS, then around again), the rest is the raw request path.
//! Properties:
//! - normalising is idempotent, and an accepted path is canonical: starts with `/`, no
//!   `//`, no `.`/`..` segment, no `\`, NUL or control character, and every escape is
//!   upper-case and stands for a reserved byte (never `/`, `\` or NUL);
//! - the decision on the raw path (normalised, as the gateway does) equals the decision
//!   on the normalised path, and a trailing `/` never changes it;
//! - the decision equals a linear reference model of the fixed permission table;
//! - whatever tollgate allows is also allowed when a lenient backend reads the path
//!   (decoding every escape, dropping `;` parameters, ignoring case): no encoding, case,
//!   parameter or trailing-slash trick reaches a denied endpoint;
//! - route lookup returns the longest route prefix on a segment boundary;
//! - with `case_sensitive: false` (routes inserted in another spelling, permissions
//!   `ignoring_case`), lookup and decision do not change with the path's ASCII case,
//!   lookup is the reference on the lower-cased path, whatever the case-sensitive
//!   table allows the case-insensitive one allows, and what it allows a lenient
//!   backend reads as an allowed endpoint too.
#![no_main]

use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use tollgate::error::DenyReason;
use tollgate::policy::{authorize, AuthRule, Identity, Permission, Permissions};
use tollgate::route::{normalize_path, RouteTable};

const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
];

/// (path pattern, methods or None for any). Every entry needs only scopes the caller
/// has, so the decision is about the endpoint and method alone.
const RULES: &[(&str, Option<&[Method]>)] = &[
    ("/v2/analytics/data", Some(&[Method::GET, Method::POST])),
    ("/v2/analytics/metadata", Some(&[Method::GET])),
    ("/v2/analytics/reports/*/rows", Some(&[Method::GET])),
    ("/v2/analytics/public/**", None),
    ("/v2/analytics/a%20b", Some(&[Method::PUT])),
    ("/v2/analytics/caf%C3%A9/*", Some(&[Method::DELETE])),
    ("/v2/analytics/~user/file.json", Some(&[Method::GET])),
];

const ROUTES: &[&str] = &[
    "/",
    "/v2/analytics",
    "/v2/analytics/data/",
    "/v2/analytics/public/x",
];

struct Fixture {
    rule: AuthRule,
    perms: Permissions,
    id: Identity,
    table: RouteTable,
    /// The same permissions, `case_sensitive: false`.
    perms_any_case: Permissions,
    /// [`ROUTES`] spelt in alternating case, inserted `case_sensitive: false`.
    table_any_case: RouteTable,
}

/// `s` in alternating ASCII case (`/V2/aNaLyTiCs`).
fn alternate(s: &str) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let entries: Vec<Permission> = RULES
            .iter()
            .map(|(p, m)| {
                Permission::new(p, m.map(|m| m.to_vec()), vec!["bi.x".into()]).expect("rule")
            })
            .collect();
        let mut table = RouteTable::default();
        let mut table_any_case = RouteTable::default();
        for (i, p) in ROUTES.iter().enumerate() {
            assert!(table.insert(&[], p, i));
            assert!(table_any_case.insert_with_case(&[], &alternate(p), i, false));
        }
        Fixture {
            rule: AuthRule {
                issuers: vec![0],
                scopes: vec!["analytics.read".into()],
                clients: None,
                claims: Vec::new(),
            },
            perms_any_case: Permissions::new(entries.clone()).ignoring_case(),
            perms: Permissions::new(entries),
            table_any_case,
            id: Identity {
                issuer: "corp".into(),
                subject: Some("s".into()),
                client_id: Some("dash".into()),
                scopes: vec!["analytics.read".into(), "bi.x".into()],
                ..Identity::default()
            },
            table,
        }
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Every escape decoded (byte-wise; lossy to UTF-8).
fn decode_all(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decision as a comparable value: Ok, or the deny reason.
fn decision(method: &Method, path: &str) -> Result<(), DenyReason> {
    let f = fixture();
    authorize(&f.rule, Some(&f.perms), method, path, &f.id)
        .result
        .map_err(|e| e.deny_reason().expect("a policy denial has a reason"))
}

/// The decision of the `case_sensitive: false` permissions.
fn decision_any_case(method: &Method, path: &str) -> Result<(), DenyReason> {
    let f = fixture();
    authorize(&f.rule, Some(&f.perms_any_case), method, path, &f.id)
        .result
        .map_err(|e| e.deny_reason().expect("a policy denial has a reason"))
}

/// Segments of a pattern or a path. `lenient` reads them like a forgiving backend:
/// every escape decoded, `;` parameters dropped, case ignored, then dot-segments
/// resolved.
fn segs(path: &str, lenient: bool) -> Vec<String> {
    let raw = path.split('/').filter(|s| !s.is_empty());
    if !lenient {
        return raw.map(str::to_owned).collect();
    }
    let mut out: Vec<String> = Vec::new();
    for s in raw {
        let d = decode_all(s);
        let d = d.split(';').next().unwrap_or("").to_lowercase();
        match d.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(d),
        }
    }
    out
}

fn pattern_matches(pattern: &str, path: &[String], lenient: bool) -> bool {
    let (body, rest) = match pattern.strip_suffix("/**") {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    let pat = segs(body, lenient);
    if path.len() < pat.len() || (!rest && path.len() != pat.len()) {
        return false;
    }
    pat.iter().zip(path).all(|(p, s)| p == "*" || p == s)
}

/// Linear reference model of the fixed table (SPEC: deny unless an entry allows).
fn model(method: &Method, path: &str, lenient: bool) -> Result<(), DenyReason> {
    let p = segs(path, lenient);
    let mut path_hit = false;
    for (pattern, methods) in RULES {
        if pattern_matches(pattern, &p, lenient) {
            path_hit = true;
            if methods.is_none_or(|ms| ms.contains(method)) {
                return Ok(());
            }
        }
    }
    Err(if path_hit {
        DenyReason::MethodNotAllowed
    } else {
        DenyReason::EndpointNotAllowed
    })
}

fn check_canonical(n: &str) {
    assert!(n.starts_with('/'), "{n:?}");
    assert!(!n.contains("//"), "{n:?}");
    for s in n.split('/') {
        assert!(s != "." && s != "..", "dot segment in {n:?}");
    }
    let b = n.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        assert!(c != b'\\' && c >= 0x20 && c != 0x7f, "bad byte in {n:?}");
        if c == b'%' {
            let (h, l) = (b[i + 1], b[i + 2]);
            assert!(
                h.is_ascii_hexdigit() && l.is_ascii_hexdigit(),
                "malformed escape in {n:?}"
            );
            assert!(
                !h.is_ascii_lowercase() && !l.is_ascii_lowercase(),
                "lower-case escape in {n:?}"
            );
            let v = hex(h).unwrap() * 16 + hex(l).unwrap();
            assert!(
                !is_unreserved(v) && !matches!(v, b'/' | b'\\' | 0),
                "escape {v:#x} should not survive in {n:?}"
            );
            i += 3;
        } else {
            i += 1;
        }
    }
}

/// Reference route lookup: longest prefix on a segment boundary.
fn model_route(n: &str) -> Option<usize> {
    let key = n.trim_end_matches('/');
    ROUTES
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            let p = p.trim_end_matches('/');
            p.is_empty() || key == p || key.starts_with(&format!("{p}/"))
        })
        .max_by_key(|(_, p)| p.trim_end_matches('/').len())
        .map(|(i, _)| i)
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[m.wrapping_sub(b'0') as usize % METHODS.len()];
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(n) = normalize_path(raw) else {
        return;
    };
    assert_eq!(
        normalize_path(&n).as_ref(),
        Ok(&n),
        "not idempotent for {raw:?}"
    );
    check_canonical(&n);

    let d = decision(method, &n);
    // The gateway decides on the normalised raw path; deciding again on the normalised
    // form of that changes nothing.
    let again = normalize_path(&n).expect("idempotent");
    assert_eq!(decision(method, &again), d);
    // A trailing slash is not a way around (or into) an endpoint.
    let toggled = if n == "/" {
        n.clone()
    } else if let Some(s) = n.strip_suffix('/') {
        s.to_owned()
    } else {
        format!("{n}/")
    };
    assert_eq!(
        decision(method, &toggled),
        d,
        "trailing slash changes {n:?}"
    );
    assert_eq!(
        d,
        model(method, &n, false),
        "model disagrees on {method} {n:?}"
    );
    if d.is_ok() {
        assert!(
            model(method, &n, true).is_ok(),
            "{method} {raw:?} -> {n:?} allowed, but a lenient backend reads a denied endpoint"
        );
    }
    assert_eq!(
        fixture().table.lookup("h", &n),
        model_route(&n),
        "route lookup for {n:?}"
    );
    // case_sensitive: false.
    let f = fixture();
    let (lower, upper) = (n.to_ascii_lowercase(), n.to_ascii_uppercase());
    let any = f.table_any_case.lookup("h", &n);
    assert_eq!(any, model_route(&lower), "case-insensitive route lookup for {n:?}");
    assert_eq!(f.table_any_case.lookup("h", &upper), any, "{n:?} upper-cased");
    let da = decision_any_case(method, &n);
    assert_eq!(decision_any_case(method, &lower), da, "{n:?} lower-cased");
    assert_eq!(decision_any_case(method, &upper), da, "{n:?} upper-cased");
    if d.is_ok() {
        assert!(da.is_ok(), "{method} {n:?}: allowed case-sensitively only");
    }
    if da.is_ok() {
        assert!(
            model(method, &n, true).is_ok(),
            "{method} {n:?} allowed ignoring case, but a lenient backend reads a denied endpoint"
        );
    }
});
