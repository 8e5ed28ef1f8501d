//! What a request is counted under: a limit's [`KeySpec`] applied to the request
//! (after authentication, so client and subject are known) gives a [`RateKey`].
//!
//! A `RateKey` is the first 128 bits of SHA-256 over a version tag, the key kind and
//! the value. It is the only thing the stores keep: a header carrying an API key or a
//! token never reaches memory or Redis verbatim, and a 8 KiB header value costs the same
//! 16 bytes as a short one. A missing value hashes to a distinct "no value" digest per
//! kind, the one shared key every request without a value is counted under.

use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::KeySpec;

/// Facts about one request that keys are derived from.
#[derive(Clone, Copy, Debug)]
pub struct KeyInput<'a> {
    /// The client IP as tollgate determined it (peer address, or the trusted forwarded one).
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    /// The authenticated client id, when the route authenticates.
    pub client_id: Option<&'a str>,
    /// The token subject, when the token has one.
    pub subject: Option<&'a str>,
    /// Where the connection keeps the digest of `client_ip` once computed (the
    /// listener's [`ConnInfo::ip_key`](crate::conn::ConnInfo::ip_key)): a `key: ip` limit
    /// then hashes once per connection, not once per request. `None`: hash every time.
    pub ip_key: Option<&'a OnceLock<[u8; 16]>>,
}

/// A digest identifying what a request is counted under (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateKey([u8; 16]);

impl RateKey {
    /// The digest of `value` under the key kind `kind`; `None` is the shared "no value" key.
    pub fn from_parts(kind: &str, value: Option<&[u8]>) -> RateKey {
        let mut h = Sha256::new();
        h.update(b"tollgate-rl-key-v1\0");
        h.update(kind.as_bytes());
        match value {
            Some(v) => {
                h.update([0, 1]);
                h.update(v);
            }
            None => h.update([0, 0]),
        }
        let d = h.finalize();
        RateKey(d[..16].try_into().expect("16 bytes"))
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(crate) fn push_hex(&self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in self.0 {
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }

    pub(crate) fn low_u64(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }
}

/// The digest in hex: safe to print, it reveals nothing of the value.
impl fmt::Debug for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(32);
        self.push_hex(&mut s);
        write!(f, "RateKey({s})")
    }
}

impl KeySpec {
    /// The key `input` is counted under for this spec.
    ///
    /// - `client` / `subject`: the identity's value; absent or empty -> the shared key.
    /// - `ip`: the address bytes (IPv4-mapped IPv6 as IPv4).
    /// - `header:NAME`: the first value, surrounding whitespace trimmed; absent or empty ->
    ///   the shared key. Non-UTF-8 bytes are hashed as they are.
    pub fn key(&self, input: &KeyInput<'_>) -> RateKey {
        fn non_empty(v: Option<&str>) -> Option<&[u8]> {
            v.filter(|v| !v.is_empty()).map(str::as_bytes)
        }
        match self {
            KeySpec::Client => RateKey::from_parts("client", non_empty(input.client_id)),
            KeySpec::Subject => RateKey::from_parts("subject", non_empty(input.subject)),
            KeySpec::Ip => {
                let digest = || match input.client_ip.to_canonical() {
                    IpAddr::V4(a) => RateKey::from_parts("ip", Some(&a.octets())),
                    IpAddr::V6(a) => RateKey::from_parts("ip", Some(&a.octets())),
                };
                match input.ip_key {
                    Some(cell) => RateKey(*cell.get_or_init(|| digest().0)),
                    None => digest(),
                }
            }
            KeySpec::Header(name) => {
                let value = input
                    .headers
                    .get(name)
                    .map(|v| v.as_bytes().trim_ascii())
                    .filter(|v| !v.is_empty());
                RateKey::from_parts(name.as_str(), value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue, AUTHORIZATION};

    fn input<'a>(headers: &'a HeaderMap, ip: &str) -> KeyInput<'a> {
        KeyInput {
            client_ip: ip.parse().unwrap(),
            headers,
            client_id: Some("bi-tool"),
            subject: None,
            ip_key: None,
        }
    }

    // Requests without a value share one key; with values they are told apart.
    #[test]
    fn missing_values_share_one_key() {
        let empty = HeaderMap::new();
        let mut blank = HeaderMap::new();
        blank.insert("x-tenant", HeaderValue::from_static("  "));
        let mut a = HeaderMap::new();
        a.insert("x-tenant", HeaderValue::from_static("a"));
        let spec = KeySpec::Header(HeaderName::from_static("x-tenant"));
        let k_none = spec.key(&input(&empty, "10.0.0.1"));
        assert_eq!(k_none, spec.key(&input(&blank, "10.0.0.2")));
        assert_ne!(k_none, spec.key(&input(&a, "10.0.0.1")));
        let subj = KeySpec::Subject;
        assert_eq!(
            subj.key(&input(&empty, "10.0.0.1")),
            subj.key(&KeyInput {
                subject: Some(""),
                ..input(&empty, "10.0.0.9")
            })
        );
        assert_ne!(
            KeySpec::Client.key(&input(&empty, "10.0.0.1")),
            KeySpec::Client.key(&KeyInput {
                client_id: None,
                ..input(&empty, "10.0.0.1")
            })
        );
    }

    // The same address counts once whether it arrived as IPv4 or IPv4-mapped IPv6.
    #[test]
    fn ip_keys_fold_mapped_addresses() {
        let h = HeaderMap::new();
        let v4 = KeySpec::Ip.key(&input(&h, "192.0.2.7"));
        assert_eq!(v4, KeySpec::Ip.key(&input(&h, "::ffff:192.0.2.7")));
        assert_ne!(v4, KeySpec::Ip.key(&input(&h, "192.0.2.8")));
        assert_ne!(v4, KeySpec::Ip.key(&input(&h, "2001:db8::7")));
    }

    // A connection's cached digest is the digest: computed by the first request that
    // asks, then reused (and only `key: ip` uses it).
    #[test]
    fn ip_digest_is_kept_per_connection() {
        let h = HeaderMap::new();
        let cell = OnceLock::new();
        let cached = KeyInput {
            ip_key: Some(&cell),
            ..input(&h, "192.0.2.7")
        };
        assert_eq!(
            KeySpec::Client.key(&cached),
            KeySpec::Client.key(&input(&h, "192.0.2.7"))
        );
        assert!(cell.get().is_none());
        let k = KeySpec::Ip.key(&cached);
        assert_eq!(k, KeySpec::Ip.key(&input(&h, "192.0.2.7")));
        assert_eq!(cell.get(), Some(k.as_bytes()));
        assert_eq!(KeySpec::Ip.key(&cached), k);
    }

    // A digest neither contains nor prints the value it was made from.
    #[test]
    fn keys_hide_the_value() {
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl";
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        let k = KeySpec::Header(AUTHORIZATION).key(&input(&h, "10.0.0.1"));
        let shown = format!("{k:?}");
        assert_eq!(shown.len(), "RateKey()".len() + 32);
        assert!(!shown.contains("eyJ") && !shown.contains("Bearer"));
        let long = "v".repeat(8192);
        let mut h2 = HeaderMap::new();
        h2.insert(AUTHORIZATION, HeaderValue::from_str(&long).unwrap());
        let k2 = KeySpec::Header(AUTHORIZATION).key(&input(&h2, "10.0.0.1"));
        assert_eq!(k2.as_bytes().len(), 16);
        assert_ne!(k, k2);
    }
}
