//! Before the admin listener's handlers (`admin`): `server.admin_auth`, the optional
//! guard of the whole admin API but `/healthz` and `/readyz` (probes stay open). Either
//! a Bearer rule checked by the same gate as a route (issuers, scopes, clients), or
//! HTTP Basic credentials checked against an argon2id hash (`tollgate hash-secret`),
//! which a browser can present to the admin page by itself (an `EventSource` cannot
//! send an `Authorization: Bearer` header).
//!
//! The admin listener must never be exposed publicly: keep it on loopback or a private
//! network; this guard is defence in depth, not a reason to publish it.

use std::sync::Mutex;

use base64::Engine as _;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::policy::AuthRule;
use crate::secret::{constant_time_eq, Secret};

/// `server.admin_auth`, compiled.
pub enum AdminAuth {
    /// `{type: bearer, issuers, scopes, clients}` (`type` may be left out).
    Bearer(AuthRule),
    /// `{type: basic, username, password_hash}`.
    Basic(BasicAuth),
}

pub struct BasicAuth {
    username: String,
    /// An argon2 PHC string.
    password_hash: Secret,
    /// SHA-256 of the last `Authorization` value that verified: the page's requests
    /// (page, script, style, events, explain) do not each pay an argon2 check. Kept
    /// only until a reload (a new config builds a new `BasicAuth`).
    verified: Mutex<Option<[u8; 32]>>,
}

/// argon2 checks at once (each ~19 MiB and tens of ms of CPU, on the blocking pool).
static ARGON2_AT_ONCE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

impl BasicAuth {
    /// `password_hash` must be an argon2 PHC string (checked by the config).
    pub fn new(username: String, password_hash: Secret) -> BasicAuth {
        BasicAuth {
            username,
            password_hash,
            verified: Mutex::new(None),
        }
    }

    /// Whether the request's `Authorization: Basic` credentials are right. The user
    /// name is compared in constant time and the password always checked, so neither
    /// answers sooner for a wrong user name.
    pub async fn check(&self, headers: &HeaderMap, metrics: &Metrics) -> bool {
        let Some(value) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let known = *self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if known.is_some_and(|k| constant_time_eq(&k, &digest)) {
            return true;
        }
        let Some((user, password)) = parse_basic(value) else {
            return false;
        };
        let user_ok = constant_time_eq(user.as_bytes(), self.username.as_bytes());
        let Ok(_permit) = ARGON2_AT_ONCE.acquire().await else {
            return false;
        };
        metrics.argon2_check("admin_auth");
        let hash = self.password_hash.clone();
        let password = Secret::new(password);
        let password_ok = tokio::task::spawn_blocking(move || {
            use argon2::password_hash::{PasswordHash, PasswordVerifier};
            PasswordHash::new(hash.expose())
                .map(|p| {
                    argon2::Argon2::default()
                        .verify_password(password.expose().as_bytes(), &p)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let ok = user_ok & password_ok;
        if ok {
            *self.verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(digest);
        }
        ok
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    // Behaviour: only the right user name with the right password passes; a verified
    // value is remembered (and only that value).
    #[tokio::test]
    async fn basic_credentials() {
        let hash = crate::token_service::hash_secret("s3cret pass").unwrap();
        let a = BasicAuth::new("ops".into(), Secret::new(hash));
        let m = Metrics::new();
        assert!(!a.check(&HeaderMap::new(), &m).await);
        assert!(!a.check(&headers(&basic("ops", "wrong")), &m).await);
        assert!(!a.check(&headers(&basic("other", "s3cret pass")), &m).await);
        assert!(!a.check(&headers("Bearer abc"), &m).await);
        assert!(!a.check(&headers("Basic !!!"), &m).await);
        assert!(a.check(&headers(&basic("ops", "s3cret pass")), &m).await);
        assert!(a.check(&headers(&basic("ops", "s3cret pass")), &m).await);
        assert!(!a.check(&headers(&basic("ops", "s3cret pass2")), &m).await);
    }
}
