//! Before the admin listener's handlers (`admin`): `server.admin_auth`, the optional
//! guard of the whole admin API but `/healthz` and `/readyz` (probes stay open). Either
//! a Bearer rule checked by the same gate as a route (issuers, scopes, clients), or
//! HTTP Basic credentials checked against an argon2id hash (`tollgate hash-secret`),
//! which a browser can present to the admin page by itself (an `EventSource` cannot
//! send an `Authorization: Bearer` header).
//!
//! Failed Basic sign-ins count per client address (`admin_auth.failed_auth_limit`,
//! default 10 per 5 minutes): over it an address is refused 429 `rate_limited` before
//! any argon2 check, whatever it sends, until the window has passed.
//!
//! The admin listener must never be exposed publicly: keep it on loopback or a private
//! network; this guard is defence in depth, not a reason to publish it.

use std::net::IpAddr;
use std::sync::Mutex;

use base64::Engine as _;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::policy::AuthRule;
use crate::ratelimit::applied::{self, FailedAuthLimit};
use crate::secret::{constant_time_eq, Secret};

/// `server.admin_auth`, compiled.
pub enum AdminAuth {
    /// `{type: bearer, issuers, scopes, clients}` (`type` may be left out).
    Bearer(AuthRule),
    /// `{type: basic, username, password_hash, failed_auth_limit}`.
    Basic(Box<BasicAuth>),
}

pub struct BasicAuth {
    username: String,
    /// An argon2 PHC string.
    password_hash: Secret,
    /// SHA-256 of the last `Authorization` value that verified: the page's requests
    /// (page, script, style, events, explain) do not each pay an argon2 check. Kept
    /// only until a reload (a new config builds a new `BasicAuth`).
    verified: Mutex<Option<[u8; 32]>>,
    /// `failed_auth_limit`: failed sign-ins per client address.
    failed: FailedAuthLimit,
}

/// The `route` label of the admin API's `tollgate_rate_limited_total` series (it is no
/// route; the limit's name says whose it is).
const NO_ROUTE: &str = "none";

/// argon2 checks at once (each ~19 MiB and tens of ms of CPU, on the blocking pool).
static ARGON2_AT_ONCE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

impl BasicAuth {
    /// `password_hash` must be an argon2 PHC string (checked by the config).
    pub fn new(username: String, password_hash: Secret, failed: FailedAuthLimit) -> BasicAuth {
        BasicAuth {
            username,
            password_hash,
            verified: Mutex::new(None),
            failed,
        }
    }

    /// Lets the request from `ip` in when its `Authorization: Basic` credentials are
    /// right: 401 `invalid_client` when they are missing or wrong (a wrong attempt is
    /// counted against `failed_auth_limit`; a request without credentials, a browser's
    /// first, is not), 429 `rate_limited` while `ip` is over that limit, decided before
    /// any argon2 check and whatever the credentials.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        ip: IpAddr,
        metrics: &Metrics,
    ) -> Result<(), GatewayError> {
        let presented = headers.contains_key(http::header::AUTHORIZATION);
        if presented {
            if let Some(d) = self.failed.check(None, ip).await {
                metrics.admin_auth_failure("rate_limited");
                metrics.rate_limited(&std::sync::Arc::from(NO_ROUTE), &d.name);
                tracing::warn!(target: "tollgate::admin", client_ip = %ip, limit = %d.name, retry_after = d.retry_after_secs().unwrap_or(1), "admin request refused: too many failed sign-ins from this address");
                return Err(applied::too_many_failures(
                    &d,
                    "failed admin sign-ins from this address",
                ));
            }
        }
        if self.check(headers, metrics).await {
            return Ok(());
        }
        if presented {
            metrics.admin_auth_failure("bad_credentials");
            self.failed.failed(None, ip).await;
        }
        Err(GatewayError::InvalidClient(
            "admin credentials missing or wrong".into(),
        ))
    }

    /// Whether the request's `Authorization: Basic` credentials are right. The user
    /// name is compared in constant time and the password always checked, so neither
    /// answers sooner for a wrong user name.
    async fn check(&self, headers: &HeaderMap, metrics: &Metrics) -> bool {
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
        let limiter = crate::ratelimit::Limiter::new(
            std::sync::Arc::new(crate::ratelimit::LocalStore::new(100)),
            None,
        );
        let failed = FailedAuthLimit::per_address(
            applied::ADMIN_FAILED_AUTH_IP,
            100,
            std::time::Duration::from_secs(60),
            crate::ratelimit::StoreKind::Local,
            limiter,
        )
        .unwrap();
        let a = BasicAuth::new("ops".into(), Secret::new(hash), failed);
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
