//! Browser sign-in's cookies, as bytes on the wire: sealing and opening them (an AEAD
//! under a key derived from `login.cookie_secret`), splitting a large session over
//! several cookies, reading them from `Cookie` headers, writing `Set-Cookie`, and
//! removing tollgate's own cookies before a request goes upstream.
//!
//! A sealed value is `base64url(version || nonce || ciphertext+tag)`: XChaCha20-Poly1305
//! with a random 192-bit nonce (no nonce bookkeeping between replicas), the version byte
//! and the cookie's purpose in the associated data, so that a sign-in-state cookie can
//! never be presented as a session and a value sealed for another `login:` (another
//! issuer or client id) never opens. Keys come from HKDF-SHA256 over the secret, one per
//! purpose: any replica with the same `cookie_secret` opens any other's cookies.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use rand::RngCore;

/// The session cookie (SPEC); further parts of a large session are `tollgate_session.1`,
/// `tollgate_session.2`, ...
pub const SESSION: &str = "tollgate_session";
/// Sign-in-state cookies: `tollgate_state.<id>`, one per sign-in in progress (several
/// tabs may sign in at once), sent only to the callback path.
pub const STATE_PREFIX: &str = "tollgate_state.";
/// The format of sealed values; a value of another version does not open.
pub const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Characters of sealed value per cookie: with its name and attributes a cookie stays
/// under the 4096 bytes every browser keeps.
pub const CHUNK: usize = 3800;
/// At most this many cookies per session (about 15 KB, within common header limits).
pub const MAX_CHUNKS: usize = 4;

/// Seals and opens values for one purpose. Its key is never shown.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// Bound into every value as associated data (purpose, issuer, client).
    context: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

/// Why a sealed value did not open (the value itself is never kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not base64url, or too short to be sealed.
    Malformed,
    /// Sealed in another format version.
    Version,
    /// Tampered with, or sealed under another secret or for another purpose.
    Forged,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenError::Malformed => "the cookie is not a sealed tollgate value",
            OpenError::Version => "the cookie was sealed in another format version",
            OpenError::Forged => {
                "the cookie does not open (tampered with, or sealed under another cookie_secret)"
            }
        })
    }
}

impl Sealer {
    /// A sealer for `purpose` (`session`, `state`) under `secret`, bound to `context`.
    pub fn new(secret: &[u8], purpose: &str, context: &[u8]) -> Sealer {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"tollgate cookie seal"), secret);
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: expand cannot fail.
        let _ = hk.expand(purpose.as_bytes(), &mut key);
        let mut ctx = Vec::with_capacity(purpose.len() + context.len() + 2);
        ctx.extend_from_slice(purpose.as_bytes());
        ctx.push(0);
        ctx.extend_from_slice(context);
        Sealer {
            cipher: XChaCha20Poly1305::new(&key.into()),
            context: ctx,
        }
    }

    fn aad(&self) -> Vec<u8> {
        let mut a = Vec::with_capacity(self.context.len() + 1);
        a.push(VERSION);
        a.extend_from_slice(&self.context);
        a
    }

    /// `plain`, sealed, as cookie-safe text.
    pub fn seal(&self, plain: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = self.aad();
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .ok()?;
        let mut raw = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        raw.push(VERSION);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        Some(URL_SAFE_NO_PAD.encode(raw))
    }

    /// The plain bytes of a value [`seal`](Self::seal) made with the same key and context.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, OpenError> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed.as_bytes())
            .map_err(|_| OpenError::Malformed)?;
        if raw.len() < 1 + NONCE_LEN + 16 {
            return Err(OpenError::Malformed);
        }
        if raw[0] != VERSION {
            return Err(OpenError::Version);
        }
        let aad = self.aad();
        self.cipher
            .decrypt(
                XNonce::from_slice(&raw[1..1 + NONCE_LEN]),
                Payload {
                    msg: &raw[1 + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Forged)
    }
}

/// Every `name=value` pair of the request's `Cookie` header(s), in order, name and value
/// trimmed of spaces and tabs and the value of surrounding quotes. Headers are split
/// on `;` as bytes: a pair that is not UTF-8 (a browser sends a cookie's bytes as they
/// are) is skipped alone, it does not hide the other cookies of its header.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|kv| {
            let (k, v) = std::str::from_utf8(kv).ok()?.split_once('=')?;
            Some((k.trim_ascii(), v.trim_ascii().trim_matches('"')))
        })
}

/// The index of a session cookie part: `tollgate_session` is 0, `tollgate_session.2` is 2.
fn session_part(name: &str) -> Option<usize> {
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

/// Whether a cookie is one of tollgate's own (never forwarded upstream).
pub fn is_own(name: &str) -> bool {
    session_part(name).is_some() || name.starts_with(STATE_PREFIX)
}

/// The session as the browser sent it: its parts joined in order, and how many parts
/// were sent (to clear the ones a smaller session no longer needs). `None` without a
/// `tollgate_session` cookie.
pub fn session_value(headers: &HeaderMap) -> Option<(String, usize)> {
    let mut parts: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    let mut sent = 0;
    for (k, v) in pairs(headers) {
        if let Some(i) = session_part(k) {
            sent = sent.max(i + 1);
            // The first of duplicates wins (the most specific path comes first).
            if let Some(slot @ None) = parts.get_mut(i) {
                *slot = Some(v);
            }
        }
    }
    parts[0]?;
    let len = parts.iter().map_while(|p| *p).map(str::len).sum();
    let mut value = String::with_capacity(len);
    for p in parts.iter().map_while(|p| *p) {
        value.push_str(p);
    }
    Some((value, sent))
}

/// The value of cookie `name`, if sent.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    pairs(headers).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Removes tollgate's own cookies from the `Cookie` header(s); other cookies stay, in
/// order and byte for byte (UTF-8 or not), in one header. Cheap when there is none of
/// ours.
pub fn strip_own(headers: &mut HeaderMap) {
    let ours = headers
        .get_all(COOKIE)
        .iter()
        .any(|v| v.as_bytes().windows(9).any(|w| w == b"tollgate_"));
    if !ours {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for kv in headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|kv| !kv.is_empty())
    {
        let name = kv.split(|b| *b == b'=').next().unwrap_or(kv).trim_ascii();
        if std::str::from_utf8(name).is_ok_and(is_own) {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(kv);
    }
    headers.remove(COOKIE);
    if kept.is_empty() {
        return;
    }
    // Every byte came from a valid header value, joined by "; ": always valid.
    if let Ok(mut v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)) {
        v.set_sensitive(true);
        headers.insert(COOKIE, v);
    }
}

/// How a cookie is set.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    pub path: &'a str,
    pub secure: bool,
    pub max_age_secs: u64,
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Secure` unless turned off.
pub fn set(name: &str, value: &str, a: Attrs<'_>) -> Option<HeaderValue> {
    let mut s = format!(
        "{name}={value}; Path={}; Max-Age={}; HttpOnly; SameSite=Lax",
        a.path, a.max_age_secs
    );
    if a.secure {
        s.push_str("; Secure");
    }
    let mut v = HeaderValue::from_str(&s).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// A `Set-Cookie` value that makes the browser drop cookie `name`.
pub fn clear(name: &str, path: &str, secure: bool) -> Option<HeaderValue> {
    let mut s = format!(
        "{name}=; Path={path}; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
    );
    if secure {
        s.push_str("; Secure");
    }
    HeaderValue::from_str(&s).ok()
}

/// The cookie name of part `i` of a session.
pub fn part_name(i: usize) -> String {
    if i == 0 {
        SESSION.to_owned()
    } else {
        format!("{SESSION}.{i}")
    }
}

/// `Set-Cookie` values for a sealed session: one per part, and a clearing one for each
/// part the browser sent (`sent`) that the new value does not need. `None` when the
/// session is too large for [`MAX_CHUNKS`] cookies.
pub fn session_cookies(sealed: &str, sent: usize, a: Attrs<'_>) -> Option<Vec<HeaderValue>> {
    let parts: Vec<&str> = sealed
        .as_bytes()
        .chunks(CHUNK)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    if parts.len() > MAX_CHUNKS {
        return None;
    }
    let mut out = Vec::with_capacity(parts.len().max(sent));
    for (i, p) in parts.iter().enumerate() {
        out.push(set(&part_name(i), p, a)?);
    }
    for i in parts.len()..sent {
        out.extend(clear(&part_name(i), a.path, a.secure));
    }
    Some(out)
}

/// `Set-Cookie` values that drop a session of `sent` parts (at least the first).
pub fn clear_session(sent: usize, secure: bool) -> Vec<HeaderValue> {
    (0..sent.max(1))
        .filter_map(|i| clear(&part_name(i), "/", secure))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    // Behaviour: a sealed value opens with the same secret, purpose and context only; a
    // flipped bit, another secret, purpose, context or version does not open.
    #[test]
    fn seal_open_and_every_way_to_fail() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let s = Sealer::new(secret, "session", b"corp|web");
        let sealed = s.seal(b"hello").unwrap();
        assert_eq!(s.open(&sealed).unwrap(), b"hello");
        assert_ne!(
            s.seal(b"hello").unwrap(),
            sealed,
            "a fresh nonce every time"
        );
        assert!(!sealed.contains("hello"));

        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(
            s.open(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(OpenError::Forged)
        );
        raw[last] ^= 1;
        raw[0] = 2;
        assert_eq!(
            s.open(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(OpenError::Version)
        );
        let other_secret = Sealer::new(b"0123456789abcdef0123456789abcdeX", "session", b"corp|web");
        assert_eq!(other_secret.open(&sealed), Err(OpenError::Forged));
        let other_purpose = Sealer::new(secret, "state", b"corp|web");
        assert_eq!(other_purpose.open(&sealed), Err(OpenError::Forged));
        let other_client = Sealer::new(secret, "session", b"corp|other");
        assert_eq!(other_client.open(&sealed), Err(OpenError::Forged));
        assert_eq!(s.open("not sealed!"), Err(OpenError::Malformed));
        assert_eq!(s.open("AQID"), Err(OpenError::Malformed));
    }

    // Behaviour: a large session is split over tollgate_session, .1, .2 and read back in
    // order whatever order the browser sends them in; parts no longer needed are cleared.
    #[test]
    fn chunks_round_trip_and_stale_parts_are_cleared() {
        let value: String = (0..(CHUNK * 2 + 10))
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let a = Attrs {
            path: "/",
            secure: true,
            max_age_secs: 60,
        };
        let set = session_cookies(&value, 4, a).unwrap();
        assert_eq!(set.len(), 4, "three parts and one cleared");
        let texts: Vec<&str> = set.iter().map(|v| v.to_str().unwrap()).collect();
        assert!(texts[0].starts_with("tollgate_session=") && texts[0].contains("; Secure"));
        assert!(texts[1].starts_with("tollgate_session.1="));
        assert!(texts[2].starts_with("tollgate_session.2="));
        assert!(texts[3].starts_with("tollgate_session.3=;") && texts[3].contains("Max-Age=0"));
        for t in &texts {
            assert!(t.contains("HttpOnly") && t.contains("SameSite=Lax") && t.contains("Path=/"));
            assert!(t.len() < 4096, "{}", t.len());
        }
        // The browser sends them back in any order.
        let back: Vec<String> = texts[..3]
            .iter()
            .rev()
            .map(|t| t.split(';').next().unwrap().to_owned())
            .collect();
        let (joined, sent) = session_value(&headers(&back.join("; "))).unwrap();
        assert_eq!(joined, value);
        assert_eq!(sent, 3);
        assert!(session_cookies(&"x".repeat(CHUNK * MAX_CHUNKS + 1), 0, a).is_none());
    }

    // Behaviour: only tollgate's own cookies are removed from what goes upstream; the
    // rest stay in order; no Cookie header is left when nothing remains.
    #[test]
    fn strip_own_keeps_other_cookies() {
        let mut h = headers("a=1; tollgate_session=x; b=2; tollgate_session.1=y; tollgate_state.abc=z; tollgate_sessionx=keep");
        h.append(COOKIE, HeaderValue::from_static("c=3"));
        strip_own(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2; tollgate_sessionx=keep; c=3");
        let mut h = headers("tollgate_session=x");
        strip_own(&mut h);
        assert!(h.get(COOKIE).is_none());
        let mut h = headers("a=1");
        strip_own(&mut h);
        assert_eq!(h[COOKIE], "a=1");
    }

    // Behaviour (issue 19, found for the `session_cookie` fuzz target): a cookie with
    // UTF-8 or other non-ASCII bytes in the browser's Cookie header hid the session in
    // that header (a sign-in loop) and made strip_own drop every other cookie of it. Now each pair
    // is read on its own; everything not ours goes upstream byte for byte; names are
    // trimmed of ASCII whitespace only, the same when reading and when stripping.
    #[test]
    fn non_ascii_cookies_neither_hide_the_session_nor_get_lost() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_bytes(b"name=Jos\xc3\xa9; tollgate_session=abc; lat=\xe9t\xe9; b=2")
                .unwrap(),
        );
        assert_eq!(session_value(&h), Some(("abc".to_owned(), 1)));
        assert_eq!(get(&h, "b"), Some("2"));
        strip_own(&mut h);
        assert_eq!(
            h[COOKIE].as_bytes(),
            b"name=Jos\xc3\xa9; lat=\xe9t\xe9; b=2"
        );
        assert!(h[COOKIE].is_sensitive());

        // A name that only looks like ours after Unicode trimming is not ours, in
        // both places.
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_bytes(b"\xc2\xa0tollgate_session=abc; \ttollgate_state.x=1 ")
                .unwrap(),
        );
        assert_eq!(session_value(&h), None);
        strip_own(&mut h);
        assert_eq!(h[COOKIE].as_bytes(), b"\xc2\xa0tollgate_session=abc");
    }

    // Behaviour (issue 19, found for the `session_cookie` fuzz target): the joined
    // session reserved the first part's length times the highest part number sent, so
    // a 3 KB cookie and a `tollgate_session.99` reserved 300 KB per request; now it
    // reserves what it joins.
    #[test]
    fn session_value_reserves_what_it_joins() {
        let big = "a".repeat(3000);
        let (v, sent) = session_value(&headers(&format!(
            "tollgate_session={big}; tollgate_session.99=x"
        )))
        .unwrap();
        assert_eq!((v.len(), sent), (3000, 100));
        assert!(v.capacity() < 4000, "reserved {}", v.capacity());
    }

    #[test]
    fn session_needs_its_first_part() {
        assert!(session_value(&headers("tollgate_session.1=abc")).is_none());
        assert!(session_value(&headers("other=1")).is_none());
        let (v, sent) =
            session_value(&headers("tollgate_session=ab; tollgate_session.2=cd")).unwrap();
        assert_eq!((v.as_str(), sent), ("ab", 3), "a gap ends the value");
    }
}
