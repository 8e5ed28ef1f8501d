//! Browser sign-in's cookies (`session::cookie`, the session layer between the token
//! service and `body_credentials`): opening attacker-chosen sealed values, reading
//! `Cookie` headers, splitting a session over several cookies and removing tollgate's
//! own cookies before a request goes upstream.
//!
//! The first byte picks a mode:
//! - `0`: the rest is a cookie value presented as a session. It must never open: the
//!   harness sealed nothing, and the key is not derivable from the input.
//! - `1`: the harness seals the rest (as plain bytes) for the session purpose, then the
//!   value is tampered with by the last few bytes of the input (flip, cut, insert in the
//!   text). **A value opens only if its decoded bytes are exactly the sealed ones**, and
//!   then to the sealed plain bytes; a value sealed for the sign-in state, for another
//!   client or under another secret never opens as a session, tampered or not.
//! - `2`: the rest is lines, each one `Cookie` header. Against a reference split on
//!   `;` that reads bytes (a browser sends a cookie's UTF-8 as it is): tollgate's own
//!   cookies are found whatever else the header carries; `session_value` joins parts
//!   `tollgate_session`, `.1`, `.2`, `.3` in order up to the first gap (the first of
//!   duplicates wins) and counts the parts sent; its allocation stays within the header
//!   bytes; `get` finds the first cookie of a name;
//!   after `strip_own` **no cookie a parser splitting on `;` reads as tollgate's reaches
//!   the upstream**, every other cookie does, in order, in one valid sensitive header,
//!   and stripping again changes nothing; a header with nothing of ours is untouched.
//! - `3`: the rest is a sealed-looking value: `session_cookies` splits it into at most
//!   `MAX_CHUNKS` `Set-Cookie`s under 4096 bytes each (`HttpOnly`, `SameSite=Lax`,
//!   `Secure`), clears the parts sent before that are no longer needed, and the browser's
//!   `Cookie` header built from them (in any order) reads back as the value.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, COOKIE};
use libfuzzer_sys::fuzz_target;
use tollgate::session::cookie::{
    get, is_own, pairs, session_cookies, session_value, strip_own, Attrs, OpenError, Sealer, CHUNK,
    MAX_CHUNKS, SESSION, STATE_PREFIX,
};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const CONTEXT: &[u8] = b"https://idp.example.com\nweb";

fn sealers() -> (Sealer, Vec<Sealer>) {
    let session = Sealer::new(SECRET, "session", CONTEXT);
    let others = vec![
        Sealer::new(SECRET, "state", CONTEXT),
        Sealer::new(SECRET, "session", b"https://idp.example.com\nother"),
        Sealer::new(b"0123456789abcdef0123456789abcdeX", "session", CONTEXT),
    ];
    (session, others)
}

fn tamper(text: &str, ops: &[u8]) -> String {
    let mut t: Vec<u8> = text.as_bytes().to_vec();
    for op in ops.chunks(3) {
        if t.is_empty() {
            break;
        }
        let at = usize::from(op.get(1).copied().unwrap_or(0)) * 7 % t.len();
        let arg = op.get(2).copied().unwrap_or(b'A');
        match op[0] % 4 {
            0 => t[at] ^= arg | 1,
            1 => t.truncate(at),
            2 => t.insert(at, arg),
            _ => t[at] = arg,
        }
    }
    String::from_utf8_lossy(&t).into_owned()
}

fn mode_open(rest: &[u8]) {
    let (session, _) = sealers();
    let text = String::from_utf8_lossy(rest);
    assert!(session.open(&text).is_err(), "an unsealed value opened");
}

fn mode_tamper(rest: &[u8]) {
    let (plain, ops) = rest.split_at(rest.len().saturating_sub(9));
    let (session, others) = sealers();
    let sealed = session.seal(plain).expect("sealing never fails");
    assert_eq!(session.open(&sealed).as_deref(), Ok(plain));
    let raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
    for o in &others {
        assert_eq!(o.open(&sealed), Err(OpenError::Forged));
        let theirs = o.seal(plain).unwrap();
        assert_eq!(session.open(&theirs), Err(OpenError::Forged));
        assert!(session.open(&tamper(&theirs, ops)).is_err());
    }
    let t = tamper(&sealed, ops);
    match session.open(&t) {
        Ok(p) => {
            assert_eq!(
                URL_SAFE_NO_PAD.decode(t.as_bytes()).ok().as_ref(),
                Some(&raw),
                "a tampered value opened"
            );
            assert_eq!(p, plain);
        }
        Err(_) => assert_ne!(
            URL_SAFE_NO_PAD.decode(t.as_bytes()).ok().as_ref(),
            Some(&raw),
            "the sealed bytes did not open"
        ),
    }
}

/// The index of a session part as the reference reads names.
fn part(name: &str) -> Option<usize> {
    let rest = name.strip_prefix(SESSION)?;
    if rest.is_empty() {
        return Some(0);
    }
    let n = rest.strip_prefix('.')?;
    if n.is_empty() || n.len() > 2 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Cookie pairs as a server reading bytes sees them: split on `;`, name and value
/// trimmed of spaces and tabs, quotes around the value dropped. Every header counts,
/// text or not (browsers send a cookie's UTF-8 bytes as they are).
fn reference_pairs<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for h in headers {
        for kv in h.split(|b| *b == b';') {
            let Some(i) = kv.iter().position(|b| *b == b'=') else {
                continue;
            };
            let k = kv[..i].trim_ascii();
            let mut v = kv[i + 1..].trim_ascii();
            while let [b'"', rest @ ..] = v {
                v = rest;
            }
            while let [rest @ .., b'"'] = v {
                v = rest;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
    }
    out
}

fn own(name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(|n| part(n).is_some() || n.starts_with(STATE_PREFIX))
}

fn mode_headers(rest: &[u8]) {
    let mut h = HeaderMap::new();
    let mut total = 0;
    for line in rest.split(|b| *b == b'\n').take(8) {
        let Ok(v) = HeaderValue::from_bytes(line) else {
            continue;
        };
        total += line.len();
        h.append(COOKIE, v);
    }
    let want = reference_pairs(h.get_all(COOKIE).iter().map(HeaderValue::as_bytes));
    // `pairs` answers text: every pair whose name and value are UTF-8.
    let text: Vec<(String, String)> = want
        .iter()
        .filter_map(|(k, v)| {
            Some((
                String::from_utf8(k.clone()).ok()?,
                String::from_utf8(v.clone()).ok()?,
            ))
        })
        .collect();
    let got: Vec<(String, String)> = pairs(&h)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // Our own cookies are never missed, whatever else the header carries.
    let own_want: Vec<&(String, String)> = text.iter().filter(|(k, _)| is_own(k)).collect();
    let own_got: Vec<&(String, String)> = got.iter().filter(|(k, _)| is_own(k)).collect();
    assert_eq!(
        own_got, own_want,
        "tollgate's own cookies as a byte parser reads them"
    );
    for p in &got {
        assert!(text.contains(p), "{p:?} is not in the header");
    }

    // The session, by the reference.
    let mut parts: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    let mut sent = 0;
    for (k, v) in &text {
        if let Some(i) = part(k) {
            sent = sent.max(i + 1);
            if i < MAX_CHUNKS && parts[i].is_none() {
                parts[i] = Some(v);
            }
        }
    }
    match (session_value(&h), parts[0]) {
        (None, None) => {}
        (Some((value, n)), Some(_)) => {
            let joined: String = parts.iter().map_while(|p| *p).collect();
            assert_eq!(value, joined);
            assert_eq!(n, sent);
            assert!(
                value.capacity() <= total.max(16),
                "session_value reserved {} bytes for a {total}-byte Cookie header",
                value.capacity()
            );
        }
        (got, want) => panic!("session_value {got:?}, reference first part {want:?}"),
    }
    for (k, _) in own_want.iter().take(4) {
        let first = text.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get(&h, k), first);
    }

    // Stripping tollgate's own cookies.
    let mut stripped = h.clone();
    strip_own(&mut stripped);
    let ours_named = h
        .get_all(COOKIE)
        .iter()
        .any(|v| v.as_bytes().windows(9).any(|w| w == b"tollgate_"));
    if !ours_named {
        // No name of ours anywhere: untouched, byte for byte.
        assert_eq!(stripped, h);
        return;
    }
    let after: Vec<&HeaderValue> = stripped.get_all(COOKIE).iter().collect();
    assert!(after.len() <= 1, "one header at most");
    let left = reference_pairs(after.iter().map(|v| v.as_bytes()));
    for (k, _) in &left {
        assert!(!own(k), "{:?} went upstream", String::from_utf8_lossy(k));
    }
    let others: Vec<(Vec<u8>, Vec<u8>)> = want.into_iter().filter(|(k, _)| !own(k)).collect();
    assert_eq!(left, others, "every other cookie goes upstream, in order");
    if let Some(v) = stripped.get(COOKIE) {
        assert!(v.is_sensitive());
    }
    let mut again = stripped.clone();
    strip_own(&mut again);
    assert_eq!(
        reference_pairs(again.get_all(COOKIE).iter().map(HeaderValue::as_bytes)),
        left,
        "stripping twice changes nothing"
    );
}

fn mode_chunks(rest: &[u8]) {
    let Some((&sent, rest)) = rest.split_first() else {
        return;
    };
    let sent = usize::from(sent % 8);
    // A sealed value is base64url text; repeat the input to reach several chunks.
    let unit: String = URL_SAFE_NO_PAD.encode(rest);
    let reps = usize::from(rest.first().copied().unwrap_or(0) % 4) + 1;
    let value = unit.repeat(reps * (CHUNK / unit.len().max(1) / 2).max(1));
    if value.is_empty() {
        return;
    }
    let a = Attrs {
        path: "/",
        secure: true,
        max_age_secs: 3600,
    };
    let needed = value.len().div_ceil(CHUNK);
    let Some(set) = session_cookies(&value, sent, a) else {
        assert!(
            needed > MAX_CHUNKS,
            "a session of {needed} parts was refused"
        );
        return;
    };
    assert!(needed <= MAX_CHUNKS);
    assert_eq!(set.len(), needed.max(sent));
    let mut browser: Vec<String> = Vec::new();
    for (i, v) in set.iter().enumerate() {
        let t = v.to_str().unwrap();
        assert!(t.len() < 4096, "a Set-Cookie of {} bytes", t.len());
        assert!(t.contains("; HttpOnly") && t.contains("SameSite=Lax") && t.ends_with("; Secure"));
        let pair = t.split(';').next().unwrap();
        if i < needed {
            browser.push(pair.to_owned());
        } else {
            assert!(t.contains("Max-Age=0"), "part {i} is cleared");
        }
    }
    // The browser sends them back in another order.
    let rot = usize::from(rest.len() as u8) % browser.len();
    browser.rotate_left(rot);
    let mut h = HeaderMap::new();
    h.insert(COOKIE, HeaderValue::from_str(&browser.join("; ")).unwrap());
    let (back, n) = session_value(&h).expect("the session reads back");
    assert_eq!(back, value);
    assert_eq!(n, needed);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => mode_open(rest),
        1 => mode_tamper(rest),
        2 => mode_headers(rest),
        _ => mode_chunks(rest),
    }
});
