//! The cookie jar of one upstream session (step 10, `upstreams[].csrf`): the cookies an
//! upstream set with `Set-Cookie`, kept by RFC 6265's storage rules and sent back on the
//! requests they match.
//!
//! Storage and matching are `cookie_store`'s (the jar reqwest uses): `Path` and `Domain`
//! matching (a cookie for another domain than the upstream's host is refused),
//! `Expires` / `Max-Age` (an expired cookie is no longer sent; `Max-Age=0` deletes),
//! `Secure` cookies only over https. On top of it this jar bounds what an upstream can
//! make tollgate hold (cookies per jar, bytes per cookie) and never logs a value.

use cookie_store::{Cookie, CookieStore};
use http::HeaderValue;
use url::Url;

/// Cookies kept per jar (RFC 6265 §6.1 asks for at least 50 per domain).
pub const MAX_COOKIES: usize = 64;
/// Longest `Set-Cookie` value stored (RFC 6265 §6.1 asks for at least 4096 bytes).
pub const MAX_COOKIE_BYTES: usize = 4096;

/// What became of one `Set-Cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored (new, or replacing the cookie of the same name, domain and path).
    Kept(String),
    /// An expired cookie (e.g. `Max-Age=0`): the stored one of that name is gone.
    Deleted(String),
    /// Not stored, and why (never the value).
    Refused(&'static str),
}

/// One upstream session's cookies.
#[derive(Default)]
pub struct Jar {
    store: CookieStore,
}

impl std::fmt::Debug for Jar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values are session secrets.
        let names: Vec<&str> = self.store.iter_unexpired().map(|c| c.name()).collect();
        f.debug_struct("Jar").field("cookies", &names).finish()
    }
}

impl Jar {
    pub fn new() -> Self {
        Jar::default()
    }

    /// Stores one `Set-Cookie` value received in answer to a request for `url`.
    pub fn store(&mut self, set_cookie: &[u8], url: &Url) -> Stored {
        if set_cookie.len() > MAX_COOKIE_BYTES {
            return Stored::Refused("longer than 4096 bytes");
        }
        let Ok(text) = std::str::from_utf8(set_cookie) else {
            return Stored::Refused("not UTF-8");
        };
        let cookie = match Cookie::parse(text, url) {
            Ok(c) => c.into_owned(),
            Err(_) => return Stored::Refused("malformed, or for another domain or path"),
        };
        let name = cookie.name().to_owned();
        if name.is_empty() {
            return Stored::Refused("no name");
        }
        let Some(domain) = cookie.domain.as_cow().map(|d| d.into_owned()) else {
            return Stored::Refused("no domain");
        };
        let path = String::from(&cookie.path);
        let replaces = self.store.contains_any(&domain, &path, &name);
        if !replaces && self.count() >= MAX_COOKIES {
            self.purge_expired();
            if self.count() >= MAX_COOKIES {
                return Stored::Refused("the jar is full");
            }
        }
        let expired = cookie.is_expired();
        match self.store.insert(cookie, url) {
            Ok(_) if expired => Stored::Deleted(name),
            Ok(_) => Stored::Kept(name),
            // An expired cookie for a name not stored: nothing to delete.
            Err(cookie_store::CookieError::Expired) => Stored::Deleted(name),
            Err(_) => Stored::Refused("for another domain or path"),
        }
    }

    /// The `Cookie` header for a request to `url` (sensitive: never logged), or `None`
    /// when no stored cookie matches. Cookies with longer paths come first (RFC 6265
    /// §5.4 step 2).
    pub fn header(&self, url: &Url) -> Option<HeaderValue> {
        let mut matching = self.store.matches(url);
        if matching.is_empty() {
            return None;
        }
        matching.sort_by_key(|c| std::cmp::Reverse(String::from(&c.path).len()));
        let mut s = String::new();
        for c in matching {
            if !s.is_empty() {
                s.push_str("; ");
            }
            s.push_str(c.name());
            s.push('=');
            s.push_str(c.value());
        }
        let mut v = HeaderValue::from_str(&s).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Whether an unexpired cookie of this name is stored (any domain or path).
    pub fn has(&self, name: &str) -> bool {
        self.store.iter_unexpired().any(|c| c.name() == name)
    }

    /// Stored cookies, expired ones not yet purged included.
    pub fn count(&self) -> usize {
        self.store.iter_any().count()
    }

    pub fn clear(&mut self) {
        self.store.clear();
    }

    fn purge_expired(&mut self) {
        let expired: Vec<(String, String, String)> = self
            .store
            .iter_any()
            .filter(|c| c.is_expired())
            .filter_map(|c| {
                Some((
                    c.domain.as_cow()?.into_owned(),
                    String::from(&c.path),
                    c.name().to_owned(),
                ))
            })
            .collect();
        for (d, p, n) in expired {
            self.store.remove(&d, &p, &n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn header(jar: &Jar, u: &str) -> Option<String> {
        jar.header(&url(u)).map(|v| v.to_str().unwrap().to_owned())
    }

    // Behaviour: a cookie is sent back only under its Path (RFC 6265 §5.1.4), the
    // longer path first; a cookie without Path gets the request's directory.
    #[test]
    fn path_scoping() {
        let mut jar = Jar::new();
        let base = url("http://s4.example/sap/opu/odata/sap/API_X/A_Items");
        assert_eq!(
            jar.store(b"SAP_SESSIONID=abc; Path=/; HttpOnly", &base),
            Stored::Kept("SAP_SESSIONID".into())
        );
        assert_eq!(
            jar.store(b"sap-usercontext=sap-client=100; Path=/sap/opu", &base),
            Stored::Kept("sap-usercontext".into())
        );
        jar.store(b"dir=1", &base);
        let h = header(&jar, "http://s4.example/sap/opu/odata/sap/API_X/other").unwrap();
        assert!(
            h.starts_with("dir=1; sap-usercontext=sap-client=100"),
            "{h}"
        );
        assert!(h.ends_with("SAP_SESSIONID=abc"), "{h}");
        assert_eq!(
            header(&jar, "http://s4.example/other").as_deref(),
            Some("SAP_SESSIONID=abc")
        );
        // `/sap/opux` is not under `/sap/opu`.
        assert_eq!(
            header(&jar, "http://s4.example/sap/opux").as_deref(),
            Some("SAP_SESSIONID=abc")
        );
    }

    // Behaviour: Max-Age=0 and an Expires in the past delete; an expired cookie is not
    // sent; a Max-Age in the future keeps it.
    #[test]
    fn expiry() {
        let mut jar = Jar::new();
        let u = url("http://s4.example/");
        jar.store(b"a=1; Max-Age=3600", &u);
        jar.store(b"b=2", &u);
        assert!(jar.has("a") && jar.has("b"));
        assert_eq!(jar.store(b"a=; Max-Age=0", &u), Stored::Deleted("a".into()));
        assert!(!jar.has("a"));
        assert_eq!(
            jar.store(b"b=; Expires=Thu, 01 Jan 1970 00:00:00 GMT", &u),
            Stored::Deleted("b".into())
        );
        assert_eq!(header(&jar, "http://s4.example/"), None);
        assert_eq!(
            jar.store(b"gone=1; Max-Age=0", &u),
            Stored::Deleted("gone".into())
        );
    }

    // Behaviour: a Domain attribute the upstream's host does not domain-match is refused
    // (RFC 6265 §5.3 step 6); a matching parent domain is kept.
    #[test]
    fn domain_sanity() {
        let mut jar = Jar::new();
        let u = url("https://s4.company.example/x");
        assert!(matches!(
            jar.store(b"evil=1; Domain=other.example", &u),
            Stored::Refused(_)
        ));
        assert_eq!(
            jar.store(b"ok=1; Domain=company.example; Secure", &u),
            Stored::Kept("ok".into())
        );
        assert_eq!(
            header(&jar, "https://s4.company.example/").as_deref(),
            Some("ok=1")
        );
        // Secure cookies never go over plain http.
        assert_eq!(header(&jar, "http://s4.company.example/"), None);
    }

    // Behaviour: an upstream cannot make the jar grow without bound.
    #[test]
    fn bounded() {
        let mut jar = Jar::new();
        let u = url("http://s4.example/");
        for i in 0..MAX_COOKIES {
            assert!(matches!(
                jar.store(format!("c{i}=v").as_bytes(), &u),
                Stored::Kept(_)
            ));
        }
        assert_eq!(
            jar.store(b"one-more=v", &u),
            Stored::Refused("the jar is full")
        );
        // Replacing a stored cookie still works when full.
        assert!(matches!(jar.store(b"c0=new", &u), Stored::Kept(_)));
        let long = format!("big={}", "x".repeat(MAX_COOKIE_BYTES));
        assert!(matches!(jar.store(long.as_bytes(), &u), Stored::Refused(_)));
        assert!(matches!(jar.store(b"\xff=1", &u), Stored::Refused(_)));
        assert!(matches!(jar.store(b"novalue", &u), Stored::Refused(_)));
    }

    // Behaviour: Debug shows cookie names, never values.
    #[test]
    fn debug_never_shows_values() {
        let mut jar = Jar::new();
        jar.store(b"SAP_SESSIONID=s3cr3t-session", &url("http://s4.example/"));
        let d = format!("{jar:?}");
        assert!(d.contains("SAP_SESSIONID") && !d.contains("s3cr3t"), "{d}");
        assert!(jar
            .header(&url("http://s4.example/"))
            .unwrap()
            .is_sensitive());
    }
}
