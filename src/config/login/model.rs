//! The `login:` section of `gateway.yaml` as written (stage 1 of 3, like `config::model`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// `login:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LoginModel {
    /// An `issuers[].name` with `discovery:`.
    pub issuer: String,
    pub client_id: String,
    /// Absent: a public client (PKCE only).
    pub client_secret: Option<Secret>,
    /// Default `[openid]`; must include `openid`.
    pub scopes: Option<Vec<String>>,
    pub callback_path: Option<String>,
    pub logout_path: Option<String>,
    /// At least 32 bytes; seals the session and sign-in-state cookies.
    pub cookie_secret: Secret,
    /// Default true; false only for plain-HTTP development.
    pub cookie_secure: Option<bool>,
    /// Default 8h.
    pub session_ttl: Option<String>,
    /// Where the identity provider sends the browser after logout (an absolute URL
    /// registered there, or a path on the host the logout was asked on).
    pub post_logout_redirect_uri: Option<String>,
    /// More parameters for the authorization request (`resource`, `audience`, ...).
    pub extra_params: Option<BTreeMap<String, String>>,
}
