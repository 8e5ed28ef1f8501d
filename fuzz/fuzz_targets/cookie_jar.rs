//! The upstream session cookie jar (`upstream_session::jar::Jar`, `upstreams[].csrf`):
//! `Set-Cookie` values an upstream sends, stored by RFC 6265's rules and sent back.
//!
//! Input: lines. Each line is a `Set-Cookie` value received from
//! `https://s4.corp.example.com` for a request path chosen by its first byte (one of
//! a few paths). Properties, checked after every line:
//! - no panic; the jar never holds more than `MAX_COOKIES`, never stores a value
//!   longer than `MAX_COOKIE_BYTES`;
//! - a cookie whose `Domain` attribute the upstream's host does not domain-match is
//!   never stored (RFC 6265 §5.3 step 6);
//! - the `Cookie` header for any request is a valid, sensitive header value (the bytes of
//!   stored names and values, UTF-8 as they came), and every cookie it carries was stored
//!   (`Kept`) by an earlier line;
//! - a cookie stored only with explicit `Path` attributes is sent only for request
//!   paths that path-match one of them (RFC 6265 §5.1.4).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tollgate::upstream_session::jar::{Jar, Stored, MAX_COOKIES, MAX_COOKIE_BYTES};
use url::Url;

const HOST: &str = "s4.corp.example.com";
const PATHS: [&str; 6] = [
    "/",
    "/sap",
    "/sap/opu/odata/sap/API_X/A_Items",
    "/sap/opux",
    "/other/deep/path",
    "/%2e%2e/x",
];

/// RFC 6265 §5.1.4 path-match.
fn path_match(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request.as_bytes().get(cookie.len()) == Some(&b'/')))
}

/// RFC 6265 §5.1.3 domain-match of HOST against a Domain attribute. Spaces after the
/// leading dot are ignored, as the jar's parser does (`Domain=. host` is the host).
fn domain_ok(attr: &str) -> bool {
    let d = attr.trim_start_matches('.').trim().to_ascii_lowercase();
    d.is_empty() || HOST == d || HOST.ends_with(&format!(".{d}"))
}

/// What the model remembers of a cookie name: every path it was kept with (`None`:
/// the default path).
#[derive(Default)]
struct Model {
    paths: Vec<Option<String>>,
}

fuzz_target!(|data: &[u8]| {
    let mut jar = Jar::new();
    let mut model: HashMap<String, Model> = HashMap::new();
    for line in data.split(|b| *b == b'\n').take(200) {
        let (sel, value) = match line.split_first() {
            Some((s, rest)) => (*s as usize % PATHS.len(), rest),
            None => continue,
        };
        let url = Url::parse(&format!("https://{HOST}{}", PATHS[sel])).unwrap();
        let parsed = std::str::from_utf8(value)
            .ok()
            .and_then(|s| cookie::Cookie::parse(s.to_owned()).ok());
        match jar.store(value, &url) {
            Stored::Kept(name) => {
                assert!(value.len() <= MAX_COOKIE_BYTES);
                let c = parsed.expect("a kept cookie parses");
                assert_eq!(c.name(), name);
                if let Some(d) = c.domain() {
                    assert!(domain_ok(d), "stored a cookie for Domain={d:?}");
                }
                let explicit = c.path().filter(|p| p.starts_with('/')).map(str::to_owned);
                model.entry(name).or_default().paths.push(explicit);
            }
            Stored::Deleted(_) | Stored::Refused(_) => {}
        }
        assert!(jar.count() <= MAX_COOKIES);
        for p in PATHS {
            let u = Url::parse(&format!("https://{HOST}{p}")).unwrap();
            let Some(h) = jar.header(&u) else { continue };
            assert!(h.is_sensitive());
            let text = std::str::from_utf8(h.as_bytes()).expect("stored cookies are UTF-8");
            for pair in text.split("; ") {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                let m = model
                    .get(name)
                    .unwrap_or_else(|| panic!("sent {name:?}, which was never stored"));
                if m.paths.iter().all(Option::is_some) {
                    let req_path = u.path();
                    assert!(
                        m.paths.iter().flatten().any(|cp| path_match(req_path, cp)),
                        "{name:?} (paths {:?}) sent for {req_path}",
                        m.paths
                    );
                }
            }
        }
    }
});
