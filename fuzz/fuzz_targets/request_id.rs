//! Request ids (`request_id`, step 2 of the request path): which client `X-Request-Id`
//! is kept, and what reaches the upstream and the logs.
//!
//! Input: lines; each line is one `X-Request-Id` value (all lines as repeated headers).
//! Properties:
//! - no panic; `is_sane` equals SPEC's rule (1 to 128 bytes of `[A-Za-z0-9._:-]`),
//!   so no space, quote, control byte, `/` or non-ASCII byte reaches a log line or a
//!   header as an id;
//! - `drop_insane` keeps exactly one sane id and drops an insane or repeated one, and
//!   touches no other header;
//! - `of` always answers a sane id: the client's when it is the only one and sane, else
//!   a generated one (32 lowercase hex digits).
#![no_main]

use http::header::{HeaderValue, ACCEPT};
use http::Request;
use libfuzzer_sys::fuzz_target;
use tollgate::request_id::{drop_insane, generate, is_sane, of, X_REQUEST_ID};

fn sane_reference(b: &[u8]) -> bool {
    (1..=128).contains(&b.len())
        && b.iter().all(|c| {
            c.is_ascii_digit()
                || c.is_ascii_lowercase()
                || c.is_ascii_uppercase()
                || b"._:-".contains(c)
        })
}

fn generated(v: &HeaderValue) -> bool {
    v.len() == 32
        && v.as_bytes()
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

fuzz_target!(|data: &[u8]| {
    let values: Vec<HeaderValue> = data
        .split(|b| *b == b'\n')
        .take(8)
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect();
    for v in &values {
        assert_eq!(is_sane(v), sane_reference(v.as_bytes()), "{v:?}");
    }

    let mut b = Request::get("/");
    for v in &values {
        b = b.header(&X_REQUEST_ID, v.clone());
    }
    let req = b.header(ACCEPT, "*/*").body(()).unwrap();

    let id = of(&req);
    assert!(is_sane(&id));
    let kept_expected = match values.as_slice() {
        [only] if sane_reference(only.as_bytes()) => Some(only.clone()),
        _ => None,
    };
    // `of` reads the first value (the layers in front have already dropped repeats).
    match values.first() {
        Some(first) if sane_reference(first.as_bytes()) => assert_eq!(&id, first),
        _ => assert!(generated(&id), "{id:?} is not a generated id"),
    }

    let req = drop_insane(req);
    let left: Vec<&HeaderValue> = req.headers().get_all(&X_REQUEST_ID).iter().collect();
    match &kept_expected {
        Some(v) => assert_eq!(left, vec![v], "a single sane id is kept"),
        None => assert!(
            left.is_empty(),
            "an insane or repeated id is dropped: {left:?}"
        ),
    }
    assert_eq!(req.headers()[ACCEPT], "*/*", "other headers stay");
    assert!(generated(&generate()));
});
