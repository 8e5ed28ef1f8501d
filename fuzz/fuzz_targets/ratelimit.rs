//! Rate limits (`ratelimit`, the step after authorisation): the `key:` of a limit, the
//! key a request is counted under, the local store's windows and the `RateLimit`,
//! `RateLimit-Policy` and `Retry-After` values of the answer.
//!
//! Input: a head of 4 bytes (limit, `per`, window, start time), operations of 3 bytes
//! each, then optionally `\n--\n` and text lines: a `key:` value, a limit name and
//! header values. Properties:
//! - no panic; `KeySpec` parses exactly `client`, `subject`, `ip`, `header:NAME` (a valid
//!   header name, surrounding whitespace ignored) and prints back to itself;
//! - a `header:NAME` key is the digest of the first value trimmed; no value and a blank
//!   value share the "no value" key, other values never do, and a key's `Debug` shows 32
//!   hex digits and none of the value;
//! - `Limit::new` accepts a name exactly when it is 1-64 of `[A-Za-z0-9._-]`, a limit in
//!   `1..=u32::MAX`, a `per` of whole seconds in `1s..=366d`; its `RateLimit-Policy` is
//!   the sf-string of the name with `q` and `w`;
//! - the local store against a model of admitted requests (two limits, three keys,
//!   checks and peeks at non-decreasing times): **a sliding limit never admits more than
//!   `limit` requests in any interval of `per`**, a fixed one never more than `limit`
//!   per epoch-aligned window and exactly `min(limit, asked)`; peeks and refusals count
//!   nothing; `remaining` is what is left; a refusal's `Retry-After` is **exact**: one
//!   more request is admitted after it and not a millisecond before; `RateLimit` reads
//!   `"name";r=REMAINING;t=SECONDS` with `t` at most `per` plus one bucket.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tollgate::ratelimit::{
    Decision, KeyInput, KeySpec, Limit, LimitSpec, LocalStore, OnError, RateKey, Source, StoreKind,
    Window, MAX_LIMIT, MAX_PER, SLIDING_BUCKETS,
};

const START: u64 = 1_700_000_000_000;

#[derive(Clone, Copy)]
struct Op {
    limit: usize,
    key: usize,
    commit: bool,
    at: u64,
}

fn limit(name: &str, n: u64, per_s: u64, window: Window) -> Limit {
    Limit::new(LimitSpec {
        name: name.into(),
        key: KeySpec::Client,
        limit: n,
        per: Duration::from_secs(per_s),
        window,
        store: StoreKind::Local,
        on_error: OnError::Allow,
    })
    .expect("a valid limit")
}

fn key(i: usize) -> RateKey {
    RateKey::from_parts("client", Some(format!("client-{i}").as_bytes()))
}

fn run(limits: &[Limit], ops: &[Op]) -> Vec<Decision> {
    let store = LocalStore::new(100_000);
    ops.iter()
        .map(|o| store.check_at(&limits[o.limit], &key(o.key), o.at, o.commit, Source::Local))
        .collect()
}

/// `"name";r=R;t=T` -> (name, r, t).
fn read_ratelimit(v: &HeaderValue) -> (String, u64, u64) {
    let s = v.to_str().expect("RateLimit is text");
    let rest = s.strip_prefix('"').expect("an sf-string first");
    let (name, rest) = rest.split_once('"').expect("a closed sf-string");
    let rest = rest.strip_prefix(";r=").expect(";r=");
    let (r, t) = rest.split_once(";t=").expect(";t=");
    (name.to_owned(), r.parse().unwrap(), t.parse().unwrap())
}

fn check_decision(l: &Limit, d: &Decision) {
    assert_eq!(&*d.name, &**l.name());
    assert_eq!(d.policy_header(), l.policy_header());
    assert!(d.remaining <= l.limit());
    let per_ms = l.per().as_millis() as u64;
    let g = per_ms.div_ceil(SLIDING_BUCKETS).max(1);
    let bound = Duration::from_millis(per_ms + g);
    assert!(
        d.reset <= bound,
        "reset {:?} beyond per + one bucket",
        d.reset
    );
    assert!(d.retry_after <= bound);
    let (name, r, t) = read_ratelimit(&d.ratelimit_header());
    assert_eq!(name, &**l.name());
    assert_eq!(r, d.remaining);
    assert!(t <= bound.as_secs() + 1);
    match d.retry_after_secs() {
        Some(s) => {
            assert!(!d.allowed && d.remaining == 0);
            assert!(s >= 1 && s == t);
            assert_eq!(d.retry_after_header().unwrap(), s.to_string().as_str());
        }
        None => assert!(d.allowed && d.retry_after.is_zero()),
    }
}

fn check_store(head: &[u8], body: &[u8]) {
    let n = match head[0] >> 6 {
        0 => 1,
        1 => 2,
        2 => 3 + u64::from(head[0] & 7),
        _ => 1 + u64::from(head[0] & 63),
    };
    let per_s = match head[1] >> 6 {
        0 => 1,
        1 => 1 + u64::from(head[1] & 63),
        2 => 60 * (1 + u64::from(head[1] & 63)),
        _ => 86_400,
    };
    let window = if head[2] & 1 == 0 {
        Window::Sliding
    } else {
        Window::Fixed
    };
    let limits = [
        limit("a", n, per_s, window),
        // Same name, another per: counters of its own.
        limit("a", n + 1, per_s + 1, window),
    ];
    let mut at = START + u64::from(head[3]) * 997;
    let mut ops = Vec::new();
    for c in body.chunks_exact(3).take(64) {
        let step = u64::from(u16::from_le_bytes([c[1], c[2]]));
        at += match c[0] >> 5 {
            0..=3 => step % 64,
            4 | 5 => step,
            6 => step * 16,
            _ => step * 1000,
        };
        ops.push(Op {
            limit: usize::from(c[0] & 1),
            key: usize::from((c[0] >> 1) & 3) % 3,
            commit: c[0] & 8 == 0,
            at,
        });
    }
    if ops.is_empty() {
        return;
    }
    let ds = run(&limits, &ops);
    // The model: every admitted, counted request per (limit, key).
    let mut admitted: HashMap<(usize, usize), Vec<u64>> = HashMap::new();
    for (i, (o, d)) in ops.iter().zip(&ds).enumerate() {
        let l = &limits[o.limit];
        check_decision(l, d);
        let per = l.per().as_millis() as u64;
        let mine = admitted.entry((o.limit, o.key)).or_default();
        match window {
            Window::Sliding => {
                let g = per.div_ceil(SLIDING_BUCKETS).max(1);
                let counting = mine
                    .iter()
                    .filter(|&&t| (t / g + 1) * g + per > o.at)
                    .count() as u64;
                assert_eq!(
                    d.allowed,
                    counting < l.limit(),
                    "op {i}: {counting} counting"
                );
                if d.allowed && o.commit {
                    mine.push(o.at);
                }
                let in_per = mine.iter().filter(|&&t| t + per > o.at).count() as u64;
                assert!(in_per <= l.limit(), "{in_per} admitted within {per} ms");
                let now_counting = counting + u64::from(d.allowed && o.commit);
                if d.allowed {
                    assert_eq!(d.remaining, l.limit() - now_counting);
                }
            }
            Window::Fixed => {
                let w = o.at / per;
                let in_window = mine.iter().filter(|&&t| t / per == w).count() as u64;
                assert_eq!(d.allowed, in_window < l.limit(), "op {i}");
                if d.allowed && o.commit {
                    mine.push(o.at);
                }
                if d.allowed {
                    let now_in = in_window + u64::from(o.commit);
                    assert_eq!(d.remaining, l.limit() - now_in);
                }
            }
        }
        // Retry-After is exact: replay the history up to here on a fresh store, then
        // ask one millisecond early and on time (peeks: they count nothing).
        if !d.allowed && i < 24 {
            let wait = d.retry_after.as_millis() as u64;
            assert!(wait >= 1);
            let mut probe = ops[..=i].to_vec();
            probe.push(Op {
                commit: false,
                at: o.at + wait - 1,
                ..*o
            });
            probe.push(Op {
                commit: false,
                at: o.at + wait,
                ..*o
            });
            let r = run(&limits, &probe);
            assert!(
                !r[i + 1].allowed,
                "op {i}: admitted 1 ms before Retry-After"
            );
            assert!(r[i + 2].allowed, "op {i}: still refused after Retry-After");
        }
    }
}

fn reference_keyspec(s: &str) -> Option<KeySpec> {
    match s {
        "client" => Some(KeySpec::Client),
        "subject" => Some(KeySpec::Subject),
        "ip" => Some(KeySpec::Ip),
        _ => {
            let n = s.strip_prefix("header:")?.trim();
            let ok = !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            ok.then(|| KeySpec::Header(HeaderName::from_bytes(n.as_bytes()).unwrap()))
        }
    }
}

fn check_text(text: &[u8]) {
    let mut lines = text.split(|b| *b == b'\n');
    let spec_text = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let parsed: Option<KeySpec> = spec_text.parse().ok();
    assert_eq!(parsed, reference_keyspec(&spec_text), "{spec_text:?}");
    if let Some(spec) = &parsed {
        let shown = spec.to_string();
        assert_eq!(shown.parse::<KeySpec>().as_ref(), Ok(spec), "{shown:?}");
    }

    // A limit name, with limit and per from its length.
    let name = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let valid_name = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    for (n, per) in [
        (1, Duration::from_secs(1)),
        (MAX_LIMIT, MAX_PER),
        (0, Duration::from_secs(60)),
        (MAX_LIMIT + 1, Duration::from_secs(60)),
        (5, Duration::from_millis(1500)),
        (5, MAX_PER + Duration::from_secs(1)),
        (5, Duration::ZERO),
    ] {
        let r = Limit::new(LimitSpec {
            name: name.clone(),
            key: KeySpec::Ip,
            limit: n,
            per,
            window: Window::Fixed,
            store: StoreKind::Redis,
            on_error: OnError::Deny,
        });
        let ok = valid_name
            && (1..=MAX_LIMIT).contains(&n)
            && per.subsec_nanos() == 0
            && per >= Duration::from_secs(1)
            && per <= MAX_PER;
        assert_eq!(r.is_ok(), ok, "{name:?} {n} {per:?}");
        if let Ok(l) = r {
            assert_eq!(
                l.policy_header(),
                format!("\"{name}\";q={n};w={}", per.as_secs()).as_str()
            );
            let k = l.redis_key(&key(0));
            assert!(k.len() <= 64 + 56 && k.is_ascii(), "{k:?}");
        }
    }

    // Header keys: the first value, trimmed.
    let name = HeaderName::from_static("x-api-key");
    let spec = KeySpec::Header(name.clone());
    let values: Vec<HeaderValue> = lines
        .take(4)
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect();
    let mut h = HeaderMap::new();
    for v in &values {
        h.append(&name, v.clone());
    }
    let input = KeyInput {
        client_ip: "192.0.2.1".parse().unwrap(),
        headers: &h,
        client_id: None,
        subject: None,
        ip_key: None,
    };
    let k = spec.key(&input);
    let first = values
        .first()
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty());
    assert_eq!(k, RateKey::from_parts("x-api-key", first));
    let none = RateKey::from_parts("x-api-key", None);
    assert_eq!(
        k == none,
        first.is_none(),
        "only a missing value is the shared key"
    );
    // Debug is the digest in hex and nothing else (so no part of the value).
    let shown = format!("{k:?}");
    let hex = shown
        .strip_prefix("RateKey(")
        .and_then(|s| s.strip_suffix(')'))
        .expect("RateKey(..)");
    assert!(
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

fuzz_target!(|data: &[u8]| {
    let (ops, text) = match data.windows(4).position(|w| w == b"\n--\n") {
        Some(i) => (&data[..i], Some(&data[i + 4..])),
        None => (data, None),
    };
    if ops.len() >= 4 {
        check_store(&ops[..4], &ops[4..]);
    }
    if let Some(t) = text {
        check_text(t);
    }
});
