//! The `login:` section of `gateway.yaml` as written (stage 1 of 3: a [`section!`]
//! block, read like every other section by `config::yaml`).

use std::collections::BTreeMap;

use crate::config::yaml::{section, DurationText, List};
use crate::secret::Secret;

section! {
    /// `login:` as written.
    pub struct LoginModel {
        /// An `issuers[].name` with `discovery:`.
        "issuer" => pub issuer: Option<String> as required(),
        /// tollgate's client id at the identity provider.
        "client_id" => pub client_id: Option<String> as required(),
        /// Absent: a public client (PKCE only).
        "client_secret" => pub client_secret: Option<Secret>,
        /// Default `[openid]`; must include `openid`.
        "scopes" => pub scopes: Option<List<String>>,
        /// Where the identity provider sends the browser back (default /oauth2/callback).
        "callback_path" => pub callback_path: Option<String>,
        /// Where a browser signs out (default /oauth2/logout).
        "logout_path" => pub logout_path: Option<String>,
        /// At least 32 bytes; seals the session and sign-in-state cookies.
        "cookie_secret" => pub cookie_secret: Option<Secret> as required(),
        /// Default true; false only for plain-HTTP development.
        "cookie_secure" => pub cookie_secure: Option<bool>,
        /// Default 8h.
        "session_ttl" => pub session_ttl: Option<DurationText>,
        /// Where the identity provider sends the browser after logout (an absolute URL
        /// registered there, or a path on the host the logout was asked on).
        "post_logout_redirect_uri" => pub post_logout_redirect_uri: Option<String>,
        /// More parameters for the authorization request (`resource`, `audience`, ...).
        "extra_params" => pub extra_params: Option<BTreeMap<String, String>>,
    }
}
