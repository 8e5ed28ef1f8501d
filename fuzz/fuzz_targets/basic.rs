//! `Authorization: Basic` parsing in the token service (`token_service::parse_basic`)
//! and its round trip with `credentials::basic_header` (RFC 6749 §2.3.1: id and secret
//! form-urlencoded before base64).
//!
//! Input: the bytes are tried as a header value; they are also split at the first NUL
//! into an id and a secret. Properties:
//! - parsing never panics; a non-Basic scheme is "no credentials", never an error;
//! - `parse_basic(basic_header(id, secret)) == (id, secret)` for every id and secret;
//! - whatever a header parses to comes back unchanged through `basic_header`.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tollgate::credentials::basic_header;
use tollgate::token_service::parse_basic;

fn round_trip(id: &str, secret: &str) {
    let v = basic_header(id, secret);
    assert!(v.is_sensitive());
    assert_eq!(
        parse_basic(&v).ok().flatten(),
        Some((id.to_owned(), secret.to_owned())),
        "round trip of {id:?} / {secret:?} through {v:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = HeaderValue::from_bytes(data) {
        let parsed = parse_basic(&v);
        let basic_scheme = v
            .to_str()
            .ok()
            .and_then(|s| s.split_once(' '))
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"));
        if !basic_scheme {
            assert!(
                matches!(parsed, Ok(None)) || v.to_str().is_err(),
                "a non-Basic header is not an error: {v:?}"
            );
        }
        if let Ok(Some((id, secret))) = parsed {
            round_trip(&id, &secret);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let (id, secret) = s.split_once('\0').unwrap_or((s, ""));
        round_trip(id, secret);
    }
});
