//! `upstreams[].csrf` and `routes[].strip_cookies`: their model and how they
//! compile into the runtime model (`upstream::Csrf`, `Route::strip_cookies`), used by
//! the upstream-session step between upstream credentials and forwarding.

use std::sync::Arc;

use super::validate::Problems;
use super::yaml::section;
use crate::upstream::Csrf;

section! {
    /// `upstreams[].csrf`: the SAP X-CSRF-Token protocol.
    pub struct CsrfModel {
        /// Where the token is fetched, under the upstream URL's path (default `/`).
        "fetch_path" => pub fetch_path: Option<String>,
        /// Request bodies kept for the replay after `403` + `X-CSRF-Token: Required`
        /// (default and at most `server.limits.max_body_bytes`).
        "replay_max_bytes" => pub replay_max_bytes: Option<u64>,
    }
}

/// Compiles `csrf` of the upstream at `url` (whose path, without a trailing `/`, is
/// `base_path`).
pub fn compile_csrf(
    m: &CsrfModel,
    url: &url::Url,
    base_path: &str,
    path: &str,
    p: &mut Problems,
) -> Option<Arc<Csrf>> {
    let fetch = m.fetch_path.as_deref().unwrap_or("/");
    if !fetch.starts_with('/') || fetch.contains('#') || fetch.contains(char::is_whitespace) {
        p.add(
            format!("{path}.csrf.fetch_path"),
            format!("fetch_path \"{fetch}\" must be an absolute path like /sap/opu/odata/sap/API_X/ (a query is allowed, a fragment is not)"),
        );
        return None;
    }
    let Ok(fetch_path) = format!("{base_path}{fetch}").parse::<http::uri::PathAndQuery>() else {
        p.add(
            format!("{path}.csrf.fetch_path"),
            format!("fetch_path \"{fetch}\" is not a valid request path"),
        );
        return None;
    };
    if m.replay_max_bytes == Some(0) {
        p.add(
            format!("{path}.csrf.replay_max_bytes"),
            "must be at least 1 (leave it out to keep bodies up to max_body_bytes)",
        );
    }
    let mut origin = url.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    Some(Arc::new(Csrf {
        fetch_path,
        origin,
        replay_max_bytes: m.replay_max_bytes,
    }))
}

/// `strip_cookies`, or its default: on for routes with a Bearer `auth` block (the
/// browser's cookies for the gateway's domain are not the backend's business when it
/// is called with a token), off for `auth: none` and for browser sign-in routes
/// (`login: true`: a dashboard's own cookies are its backend's; tollgate's own session
/// cookies are removed from them in any case).
pub fn strip_cookies(given: Option<bool>, bearer_auth: bool, login: bool) -> bool {
    given.unwrap_or(bearer_auth && !login)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(url: &str, fetch: Option<&str>) -> (Option<Arc<Csrf>>, Vec<String>) {
        let mut p = Problems::default();
        let u = url::Url::parse(url).unwrap();
        let base = u.path().trim_end_matches('/').to_owned();
        let m = CsrfModel {
            fetch_path: fetch.map(str::to_owned),
            replay_max_bytes: None,
        };
        let c = compile_csrf(&m, &u, &base, "upstreams[0]", &mut p);
        (
            c,
            p.errors
                .into_iter()
                .map(|x| format!("{}: {}", x.path, x.message))
                .collect(),
        )
    }

    // Behaviour: fetch_path is taken under the upstream URL's path (like forwarded
    // paths), default "/", a query (sap-client) allowed; the jar's origin is the URL's
    // scheme and authority.
    #[test]
    fn fetch_path_under_the_upstream_path() {
        let (c, p) = compile("https://s4.example:8443/sap/opu/odata/sap/API_X/", None);
        let c = c.unwrap();
        assert!(p.is_empty());
        assert_eq!(c.fetch_path.as_str(), "/sap/opu/odata/sap/API_X/");
        assert_eq!(c.origin.as_str(), "https://s4.example:8443/");
        let (c, _) = compile(
            "https://s4.example",
            Some("/sap/opu/odata/sap/API_X/?sap-client=100"),
        );
        assert_eq!(
            c.unwrap().fetch_path.as_str(),
            "/sap/opu/odata/sap/API_X/?sap-client=100"
        );
    }

    // Behaviour: a relative fetch_path or one with a fragment is a located problem.
    #[test]
    fn bad_fetch_paths_are_refused() {
        for bad in ["sap/opu", "/a#b", "/a b"] {
            let (c, p) = compile("https://s4.example", Some(bad));
            assert!(c.is_none(), "{bad}");
            assert!(
                p[0].starts_with("upstreams[0].csrf.fetch_path: fetch_path"),
                "{p:?}"
            );
        }
    }

    // Behaviour: strip_cookies defaults to on exactly for Bearer routes that are not
    // browser sign-in routes; an explicit value always wins.
    #[test]
    fn strip_cookies_default() {
        assert!(strip_cookies(None, true, false));
        assert!(!strip_cookies(None, false, false));
        assert!(!strip_cookies(None, true, true));
        assert!(!strip_cookies(Some(false), true, false));
        assert!(strip_cookies(Some(true), false, false));
        assert!(strip_cookies(Some(true), true, true));
    }
}
