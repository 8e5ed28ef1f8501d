//! Step 4 of the request path: CORS.
//!
//! A preflight (`OPTIONS` + `Origin` + `Access-Control-Request-Method`) on a route with
//! `cors` is answered here, before any token is asked for, and never forwarded. For
//! every other request the matched origin is remembered and `apply` adds the
//! `Access-Control-*` headers to whatever response goes out, errors included.
//! A disallowed origin gets no `Access-Control-Allow-*` header at all.
//! The step itself is [`layer::CorsLayer`].

pub mod layer;

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::{empty, Body};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    /// `scheme://host[:port]`, lower case.
    Exact(String),
    /// `https://*.company.com`: same scheme and port, host ends with `.company.com`
    /// and has at least one more label in front.
    Subdomains {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        if s == "*" {
            return Ok(OriginPattern::Any);
        }
        if !s.is_ascii() {
            // Browsers send internationalised hosts in punycode; this could never match.
            return Err(format!(
                "origin \"{s}\" is not ASCII: write the host in punycode (xn--...)"
            ));
        }
        let lower = s.to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!("origin \"{s}\" must look like https://host[:port]"));
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "origin \"{s}\" must be scheme://host[:port], without a path"
            ));
        }
        if let Some(host) = rest.strip_prefix("*.") {
            let (host, port) = split_port(host).ok_or(format!("origin \"{s}\": bad port"))?;
            if host.is_empty() || host.contains('*') {
                return Err(format!(
                    "origin \"{s}\": only a leading \"*.\" wildcard is allowed"
                ));
            }
            return Ok(OriginPattern::Subdomains {
                scheme: scheme.to_owned(),
                suffix: format!(".{host}"),
                port,
            });
        }
        if rest.contains('*') {
            return Err(format!(
                "origin \"{s}\": only a leading \"*.\" wildcard is allowed"
            ));
        }
        split_port(rest).ok_or(format!("origin \"{s}\": bad port"))?;
        Ok(OriginPattern::Exact(lower))
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginPattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                let lower = origin.to_ascii_lowercase();
                let Some((s, rest)) = lower.split_once("://") else {
                    return false;
                };
                if s != scheme || rest.contains(['/', '?', '#', '@']) {
                    return false;
                }
                let Some((host, p)) = split_port(rest) else {
                    return false;
                };
                // One or more labels in front of the suffix, none of them empty.
                p == *port
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && host[..host.len() - suffix.len()]
                        .split('.')
                        .all(|label| !label.is_empty())
            }
        }
    }
}

fn split_port(hp: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = hp.strip_prefix('[') {
        let end = rest.find(']')?;
        let (host, after) = hp.split_at(end + 2);
        return match after.strip_prefix(':') {
            Some(p) => p.parse().ok().map(|p| (host, Some(p))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match hp.split_once(':') {
        Some((h, p)) => p.parse().ok().map(|p| (h, Some(p))),
        None => Some((hp, None)),
    }
}

/// A route's compiled `cors` block.
#[derive(Debug, Clone)]
pub struct Cors {
    pub origins: Vec<OriginPattern>,
    pub allow_methods: HeaderValue,
    /// None: reflect `Access-Control-Request-Headers`.
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub allow_credentials: bool,
    pub max_age: Option<HeaderValue>,
}

/// What CORS decided for one request: carried to the way out.
#[derive(Debug, Clone)]
pub struct CorsGrant {
    /// The value for `Access-Control-Allow-Origin`.
    allow_origin: HeaderValue,
    /// The request is a preflight: its answer is tollgate's own (`preflight`), never an
    /// upstream's, and already carries the preflight-only headers (Allow-Methods,
    /// Allow-Headers, Max-Age) that `apply` must keep.
    preflight: bool,
}

impl Cors {
    pub fn new(
        origins: Vec<OriginPattern>,
        methods: &[String],
        headers: &[String],
        expose: &[String],
        allow_credentials: bool,
        max_age: Option<Duration>,
    ) -> Result<Cors, String> {
        let join = |v: &[String]| HeaderValue::from_str(&v.join(", ")).map_err(|e| e.to_string());
        let default_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map(String::from);
        Ok(Cors {
            origins,
            allow_methods: join(if methods.is_empty() {
                &default_methods
            } else {
                methods
            })?,
            allow_headers: if headers.is_empty() {
                None
            } else {
                Some(join(headers)?)
            },
            expose_headers: if expose.is_empty() {
                None
            } else {
                Some(join(expose)?)
            },
            allow_credentials,
            max_age: max_age.map(|d| HeaderValue::from(d.as_secs())),
        })
    }

    /// The grant for this request's `Origin`, if it is allowed.
    pub fn check<B>(&self, req: &Request<B>) -> Option<CorsGrant> {
        let origin = req.headers().get(header::ORIGIN)?;
        let o = origin.to_str().ok()?;
        let pat = self.origins.iter().find(|p| p.matches(o))?;
        let allow_origin = if *pat == OriginPattern::Any && !self.allow_credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        Some(CorsGrant {
            allow_origin,
            preflight: Cors::is_preflight(req),
        })
    }

    pub fn is_preflight<B>(req: &Request<B>) -> bool {
        req.method() == Method::OPTIONS
            && req.headers().contains_key(header::ORIGIN)
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: 204, empty body, never forwarded.
    pub fn preflight<B>(&self, req: &Request<B>, grant: Option<&CorsGrant>) -> Response<Body> {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        add_vary(
            h,
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        );
        if let Some(g) = grant {
            self.apply_common(h, g);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
            let headers = match &self.allow_headers {
                Some(v) => Some(v.clone()),
                None => req
                    .headers()
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .cloned(),
            };
            if let Some(v) = headers {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            if let Some(v) = &self.max_age {
                h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
            }
        }
        resp
    }

    /// Headers for whatever response goes out (step 11). On an actual response any
    /// `Access-Control-*` the upstream set is replaced: on a route with `cors`, tollgate
    /// owns CORS. On the answer to a preflight (never forwarded, so nothing in it came
    /// from upstream) the headers `preflight` added are kept.
    pub fn apply(&self, h: &mut HeaderMap, grant: Option<&CorsGrant>) {
        let preflight = grant.is_some_and(|g| g.preflight);
        if !preflight {
            let upstream_cors: Vec<HeaderName> = h
                .keys()
                .filter(|k| k.as_str().starts_with("access-control-"))
                .cloned()
                .collect();
            for k in upstream_cors {
                h.remove(k);
            }
        }
        add_vary(h, "Origin");
        if let Some(g) = grant {
            self.apply_common(h, g);
            if !preflight {
                if let Some(v) = &self.expose_headers {
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
                }
            }
        }
    }

    fn apply_common(&self, h: &mut HeaderMap, g: &CorsGrant) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, g.allow_origin.clone());
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

fn add_vary(h: &mut HeaderMap, value: &'static str) {
    let present = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("origin"))
        });
    if !present {
        h.append(header::VARY, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, o: &str) -> bool {
        OriginPattern::parse(p).unwrap().matches(o)
    }

    // Behaviour: wildcard origins match on a dot boundary, never as a substring.
    #[test]
    fn origin_patterns() {
        assert!(m("https://cx.company.com", "https://cx.company.com"));
        assert!(m("https://cx.company.com", "https://CX.company.com"));
        assert!(!m("https://cx.company.com", "http://cx.company.com"));
        assert!(m("https://*.company.com", "https://a.company.com"));
        assert!(m("https://*.company.com", "https://a.b.company.com"));
        assert!(!m("https://*.company.com", "https://company.com"));
        assert!(!m("https://*.company.com", "https://evilcompany.com"));
        assert!(!m("https://*.company.com", "https://a.company.com.evil.io"));
        assert!(!m("https://*.company.com", "http://a.company.com"));
        assert!(!m("https://*.company.com", "https://a.company.com:8443"));
        assert!(m(
            "https://*.company.com:8443",
            "https://a.company.com:8443"
        ));
        assert!(!m("https://*.company.com", "https://.company.com"));
        // Empty labels anywhere in front of the suffix, not only right before it (the
        // `cors` fuzz target found `https://.*n.com` allowed by `https://*.com`).
        assert!(!m("https://*.com", "https://.*n.com"));
        assert!(!m("https://*.company.com", "https://.a.company.com"));
        assert!(!m("https://*.company.com", "https://a..b.company.com"));
        assert!(!m("https://*.company.com", "https://a..company.com"));
        assert!(m("*", "https://anything.example"));
        assert!(OriginPattern::parse("https://a.com/path").is_err());
        assert!(OriginPattern::parse("https://a.*.com").is_err());
        assert!(OriginPattern::parse("cx.company.com").is_err());
    }

    // Behaviour: a pattern with non-ASCII characters is a config error, not an origin
    // that silently never matches (`Origin` is ASCII: browsers send punycode). Found by
    // the `cors` fuzz target.
    #[test]
    fn non_ascii_patterns_are_refused() {
        assert!(OriginPattern::parse("https://y\u{49c}om").is_err());
        assert!(OriginPattern::parse("https://b\u{fc}cher.example").is_err());
        assert!(OriginPattern::parse("https://*.b\u{fc}cher.example").is_err());
        assert!(m(
            "https://xn--bcher-kva.example",
            "https://xn--bcher-kva.example"
        ));
    }

    // Behaviour: the way out (`apply`) keeps what `preflight` answered, but replaces
    // whatever CORS headers an upstream set on an actual response.
    #[test]
    fn apply_keeps_preflight_headers_and_replaces_upstream_ones() {
        let cors = Cors::new(
            vec![OriginPattern::parse("https://cx.company.com").unwrap()],
            &["GET".to_owned()],
            &["Authorization".to_owned()],
            &["X-Request-Id".to_owned()],
            true,
            Some(Duration::from_secs(600)),
        )
        .unwrap();
        let pre = Request::options("/x")
            .header(header::ORIGIN, "https://cx.company.com")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .body(())
            .unwrap();
        let g = cors.check(&pre);
        let mut resp = cors.preflight(&pre, g.as_ref());
        cors.apply(resp.headers_mut(), g.as_ref());
        let h = resp.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://cx.company.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "Authorization");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(!h.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));

        let get = Request::get("/x")
            .header(header::ORIGIN, "https://cx.company.com")
            .body(())
            .unwrap();
        let g = cors.check(&get);
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("DELETE"),
        );
        cors.apply(&mut h, g.as_ref());
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://cx.company.com"
        );
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS));
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "X-Request-Id");
    }
}
