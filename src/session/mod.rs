//! Browser sign-in (OpenID Connect authorization code + PKCE), between the token
//! service's endpoints (step 5) and `body_credentials` (step 6) of the request path.
//!
//! On a route with `auth: {login: true}`, a browser without a Bearer token carries a
//! session instead: a sealed cookie ([`cookie`]) holding the tokens the identity
//! provider issued at sign-in. The session layer ([`layer`]) opens it and presents its
//! access token to the gate exactly like a Bearer token, so the issuer, scopes,
//! clients, permissions, reason codes, `explain`, metrics and logs are those of any
//! token. Without a token or a session, a browser navigation is sent to the identity
//! provider to sign in ([`flow`]) and comes back to the callback path, which tollgate
//! serves itself (like the token service's paths), as it does the logout path.
//!
//! This module holds what the layer works with: the compiled `login:` section
//! ([`Login`]), what a session cookie and a sign-in-state cookie carry, and the
//! single-flight cache for refreshes that outlives reloads ([`SessionCaches`]).
//! Sessions are stateless: nothing about one is kept on the server.

pub mod cookie;
pub mod flow;
pub mod layer;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::cookie::{OpenError, Sealer};
use crate::auth::Issuer;
use crate::cache::FlightCache;
use crate::secret::Secret;

/// An access token is refreshed when less than this is left of it (SPEC).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// How long a sign-in may take, from the redirect to the callback.
pub const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the result of a refresh is kept for other requests that still carry the
/// refreshed cookie (sent before the browser stored the new one): a rotated refresh
/// token can be used only once.
pub const REFRESHED_KEPT: Duration = Duration::from_secs(60);

/// The compiled `login:` section.
pub struct Login {
    /// Verifies ID tokens: the configured issuer's key store and `iss`, with the
    /// client id as the only accepted audience.
    pub id_tokens: Issuer,
    pub client_id: String,
    /// `None`: a public client (PKCE only); else client_secret_basic.
    pub client_secret: Option<Secret>,
    /// Space-separated, `openid` included.
    pub scope: String,
    pub callback_path: String,
    pub logout_path: String,
    pub cookie_secure: bool,
    pub session_ttl: Duration,
    /// Where the identity provider sends the browser after logout: an absolute URL, or a
    /// path on the host the logout was asked on.
    pub post_logout_redirect_uri: Option<String>,
    /// More parameters for the authorization request (`resource`, `audience`, ...).
    pub extra_params: Vec<(String, String)>,
    pub sessions: Sealer,
    pub states: Sealer,
    /// Identifies this login (issuer, client) in cache keys.
    pub fingerprint: [u8; 32],
    /// The endpoints, parsed from the discovery document once it is known.
    endpoints: OnceLock<Arc<flow::Endpoints>>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("issuer", &self.id_tokens.name)
            .field("client_id", &self.client_id)
            .field("callback_path", &self.callback_path)
            .field("logout_path", &self.logout_path)
            .finish_non_exhaustive()
    }
}

/// What `config` hands over to build a [`Login`].
pub struct LoginSettings {
    pub id_tokens: Issuer,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    pub callback_path: String,
    pub logout_path: String,
    pub cookie_secret: Secret,
    pub cookie_secure: bool,
    pub session_ttl: Duration,
    pub post_logout_redirect_uri: Option<String>,
    pub extra_params: Vec<(String, String)>,
}

impl Login {
    pub fn new(s: LoginSettings) -> Login {
        let context = format!("{}\n{}", s.id_tokens.issuer, s.client_id);
        let secret = s.cookie_secret.expose().as_bytes();
        let fingerprint = Sha256::digest(context.as_bytes()).into();
        Login {
            sessions: Sealer::new(secret, "session", context.as_bytes()),
            states: Sealer::new(secret, "state", context.as_bytes()),
            id_tokens: s.id_tokens,
            client_id: s.client_id,
            client_secret: s.client_secret,
            scope: s.scopes.join(" "),
            callback_path: s.callback_path,
            logout_path: s.logout_path,
            cookie_secure: s.cookie_secure,
            session_ttl: s.session_ttl,
            post_logout_redirect_uri: s.post_logout_redirect_uri,
            extra_params: s.extra_params,
            fingerprint,
            endpoints: OnceLock::new(),
        }
    }

    /// Whether tollgate answers this (normalised) path itself.
    pub fn serves(&self, path: &str) -> bool {
        path == self.callback_path || path == self.logout_path
    }

    /// The issuer's `name` in `issuers[]`.
    pub fn issuer_name(&self) -> &str {
        &self.id_tokens.name
    }

    pub fn open_session(&self, sealed: &str) -> Result<Session, OpenError> {
        let plain = self.sessions.open(sealed)?;
        serde_json::from_slice(&plain).map_err(|_| OpenError::Malformed)
    }

    pub fn seal_session(&self, s: &Session) -> Option<String> {
        self.sessions.seal(&serde_json::to_vec(s).ok()?)
    }

    pub fn open_state(&self, sealed: &str) -> Result<SignIn, OpenError> {
        let plain = self.states.open(sealed)?;
        serde_json::from_slice(&plain).map_err(|_| OpenError::Malformed)
    }

    pub fn seal_state(&self, s: &SignIn) -> Option<String> {
        self.states.seal(&serde_json::to_vec(s).ok()?)
    }

    /// Cookie attributes for a session of `ttl_secs` more seconds.
    pub fn session_attrs(&self, ttl_secs: u64) -> cookie::Attrs<'_> {
        cookie::Attrs {
            path: "/",
            secure: self.cookie_secure,
            max_age_secs: ttl_secs,
        }
    }

    /// The key of a refresh in the single-flight cache: this login and the token.
    pub fn refresh_key(&self, refresh_token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.fingerprint);
        h.update(refresh_token.as_bytes());
        h.finalize().into()
    }
}

/// What a session cookie carries. Never printed: its `Debug` shows no token.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "a")]
    pub access_token: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Kept only when the provider has an end-session endpoint (`id_token_hint`).
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// When the access token expires (unix seconds; 0: unknown).
    #[serde(rename = "ae")]
    pub access_expires: i64,
    /// When the session ends (`session_ttl` after sign-in; unix seconds).
    #[serde(rename = "se")]
    pub session_expires: i64,
    /// The ID token's `sub`, for `explain` and the sign-in log line.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("subject", &self.subject)
            .field("access_expires", &self.access_expires)
            .field("session_expires", &self.session_expires)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Whether the access token should be refreshed now (less than a minute left).
    pub fn needs_refresh(&self, now: i64) -> bool {
        self.access_expires != 0 && self.access_expires - now < REFRESH_BEFORE.as_secs() as i64
    }

    pub fn access_expired(&self, now: i64) -> bool {
        self.access_expires != 0 && self.access_expires <= now
    }

    /// Seconds the cookie should live (until the session ends).
    pub fn max_age(&self, now: i64) -> u64 {
        (self.session_expires - now).max(0) as u64
    }
}

/// What a sign-in-state cookie carries, from the redirect to the callback.
#[derive(Clone, Serialize, Deserialize)]
pub struct SignIn {
    pub state: String,
    pub nonce: String,
    /// The PKCE code verifier (RFC 7636).
    pub verifier: String,
    /// The page first asked for (a path on this host).
    pub return_to: String,
    /// The redirect URI the authorization request named (the code exchange repeats it).
    pub redirect_uri: String,
    /// Unix seconds.
    pub created: i64,
}

impl SignIn {
    /// A sign-in with fresh random `state`, `nonce` and code verifier.
    pub fn start(return_to: String, redirect_uri: String, now: i64) -> SignIn {
        SignIn {
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
            return_to,
            redirect_uri,
            created: now,
        }
    }

    /// The PKCE S256 code challenge of the verifier.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }
}

/// The name of the state cookie of sign-in `state` (several may be in progress).
pub fn state_cookie(state: &str) -> String {
    let h = Sha256::digest(state.as_bytes());
    format!(
        "{}{}",
        cookie::STATE_PREFIX,
        &URL_SAFE_NO_PAD.encode(h)[..16]
    )
}

/// 256 random bits, base64url (43 characters).
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// `to` if it is a path on this host (a relative reference starting with exactly one
/// `/`: no `//`, no backslash, no scheme, no control characters or spaces that a
/// browser would drop), else `None`. What the callback redirects to goes through this.
pub fn same_origin(to: &str) -> Option<&str> {
    let b = to.as_bytes();
    let ok = b.first() == Some(&b'/')
        && b.get(1) != Some(&b'/')
        && to.len() <= 4096
        && !b
            .iter()
            .any(|&c| c == b'\\' || c <= b' ' || c == 0x7f || !c.is_ascii());
    ok.then_some(to)
}

/// Refreshes in flight and their results, shared by every config (it outlives reloads).
pub struct SessionCaches {
    /// Keyed by [`Login::refresh_key`].
    pub refreshes: FlightCache<[u8; 32], Result<Arc<flow::Tokens>, flow::FlowError>>,
}

impl Default for SessionCaches {
    fn default() -> Self {
        SessionCaches {
            refreshes: FlightCache::new(100_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: only paths on this host pass as return URLs; anything a browser could
    // read as another origin (`//evil`, `/\evil`, `https://evil`, a tab or newline that
    // browsers strip) is refused.
    #[test]
    fn return_urls_are_same_origin_only() {
        for ok in ["/", "/dash", "/dash/x?a=1&b=%2F%2F", "/a//b", "/a:b//c"] {
            assert_eq!(same_origin(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "dash",
            "//evil.example",
            "//evil.example/x",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /x",
            "/é",
        ] {
            assert_eq!(same_origin(bad), None, "{bad:?}");
        }
    }

    // Behaviour: PKCE S256 is base64url(SHA-256(verifier)) — RFC 7636 appendix B.
    #[test]
    fn pkce_challenge_matches_rfc_7636() {
        let s = SignIn {
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            ..SignIn::start(String::new(), String::new(), 0)
        };
        assert_eq!(s.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let a = SignIn::start("/".into(), String::new(), 0);
        let b = SignIn::start("/".into(), String::new(), 0);
        assert_ne!(a.state, b.state);
        assert_ne!(a.nonce, a.state);
        assert_eq!(a.verifier.len(), 43);
    }
}
