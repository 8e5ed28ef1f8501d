//! `upstreams[].csrf` and `routes[].strip_cookies`: their serde model and how they
//! compile into the runtime model (`upstream::Csrf`, `Route::strip_cookies`), used by
//! the upstream-session step between upstream credentials and forwarding.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::validate::Problems;
use crate::upstream::Csrf;

/// `upstreams[].csrf`: the SAP X-CSRF-Token protocol.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct CsrfModel {
    /// Where the token is fetched, under the upstream URL's path (default `/`).
    pub fetch_path: Option<String>,
    /// Request bodies kept for the replay after `403` + `X-CSRF-Token: Required`
    /// (default and at most `server.limits.max_body_bytes`).
    pub replay_max_bytes: Option<u64>,
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
/// is called with a token), off for `auth: none`.
pub fn strip_cookies(given: Option<bool>, bearer_auth: bool) -> bool {
    given.unwrap_or(bearer_auth)
}
