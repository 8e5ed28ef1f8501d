//! CORS origin matching (`cors::OriginPattern::parse`, `cors::Cors::check`).
//!
//! Input: `pattern \n origin` (without a newline, the whole input is both). Properties:
//! - parsing a pattern and checking an origin never panic;
//! - an exact pattern allows exactly its origin, in any case;
//! - for a real browser origin (what `url` serialises back to the same text), a
//!   `https://*.company.com` pattern allows it exactly when scheme and port are the
//!   pattern's and the host is a proper subdomain of the suffix on a dot boundary,
//!   with no empty label;
//! - an origin with a path, query, fragment or user info is never allowed by a
//!   non-`*` pattern;
//! - `Access-Control-Allow-Origin` is `*` only for `*` without credentials, otherwise
//!   the request's own origin.
#![no_main]

use http::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, ORIGIN};
use http::{HeaderMap, Request};
use libfuzzer_sys::fuzz_target;
use tollgate::cors::{Cors, OriginPattern};

fn check(cors: &Cors, origin: &HeaderValue) -> Option<HeaderValue> {
    let req = Request::get("/x").header(ORIGIN, origin).body(()).ok()?;
    let grant = cors.check(&req)?;
    let mut h = HeaderMap::new();
    cors.apply(&mut h, Some(&grant));
    Some(
        h.get(ACCESS_CONTROL_ALLOW_ORIGIN)
            .expect("allowed origin gets ACAO")
            .clone(),
    )
}

/// Reference for subdomain patterns on browser-serialised origins.
fn model_subdomain(scheme: &str, suffix: &str, port: Option<u16>, origin: &str) -> Option<bool> {
    let url = url::Url::parse(origin).ok()?;
    // Only origins a browser would send: the URL crate serialises them back unchanged.
    if !url
        .origin()
        .ascii_serialization()
        .eq_ignore_ascii_case(origin)
    {
        return None;
    }
    let host = url.host_str()?.to_ascii_lowercase();
    let ok = url.scheme() == scheme
        && url.port() == port
        && host.len() > suffix.len()
        && host.ends_with(suffix)
        && host[..host.len() - suffix.len()]
            .split('.')
            .all(|label| !label.is_empty());
    Some(ok)
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, origin) = s.split_once('\n').unwrap_or((s, s));
    let Ok(pat) = OriginPattern::parse(pattern) else {
        return;
    };
    // `Origin` is ASCII (browsers send punycode); other bytes are never an origin.
    let Ok(origin_value) = HeaderValue::from_str(origin) else {
        return;
    };
    if origin_value.to_str().is_err() {
        assert!(check(
            &Cors::new(vec![pat], &[], &[], &[], false, None).unwrap(),
            &origin_value
        )
        .is_none());
        return;
    }
    for credentials in [false, true] {
        let Ok(cors) = Cors::new(vec![pat.clone()], &[], &[], &[], credentials, None) else {
            return;
        };
        let acao = check(&cors, &origin_value);
        match &pat {
            OriginPattern::Any => {
                let want = if credentials {
                    origin_value.clone()
                } else {
                    HeaderValue::from_static("*")
                };
                assert_eq!(acao, Some(want));
            }
            OriginPattern::Exact(o) => {
                assert_eq!(
                    acao.is_some(),
                    o.eq_ignore_ascii_case(origin),
                    "{pattern:?} vs {origin:?}"
                );
            }
            OriginPattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                if let Some(want) = model_subdomain(scheme, suffix, *port, origin) {
                    assert_eq!(acao.is_some(), want, "{pattern:?} vs {origin:?}");
                }
            }
        }
        if !matches!(pat, OriginPattern::Any) {
            if let Some(v) = &acao {
                assert_eq!(v, &origin_value, "ACAO must echo the origin");
                let after_scheme = origin.split_once("://").map_or("", |(_, r)| r);
                assert!(
                    !after_scheme.contains(['/', '?', '#', '@']),
                    "{pattern:?} allowed {origin:?}, which is not an origin"
                );
            }
        }
    }
});
