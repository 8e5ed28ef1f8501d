//! What a compiled config applies, in the runtime model: the limits one route lists
//! (checked by the rate-limit layer, after authorisation) and the token service's
//! `failed_auth_limit` (checked before a client secret is verified, counted when the
//! check fails). Both hold a [`Limiter`] over the process's long-lived stores, so a
//! reload keeps every counter.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::error::{GatewayError, RateLimited};

use super::{
    Decision, KeyInput, KeySpec, Limit, LimitError, LimitSpec, Limiter, OnError, Outcome,
    StoreKind, Window,
};

/// `routes[].rate_limits`, compiled: every limit the route lists, in order.
#[derive(Debug)]
pub struct RouteLimits {
    limits: Box<[Arc<Limit>]>,
    limiter: Limiter,
    local_only: bool,
}

impl RouteLimits {
    /// `limits` must not be empty.
    pub fn new(limits: Vec<Arc<Limit>>, limiter: Limiter) -> RouteLimits {
        debug_assert!(!limits.is_empty());
        let local_only = limits.iter().all(|l| l.store() == StoreKind::Local);
        RouteLimits {
            limits: limits.into(),
            limiter,
            local_only,
        }
    }

    pub fn limits(&self) -> impl Iterator<Item = &Limit> + Clone {
        self.limits.iter().map(|l| &**l)
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Every limit counts in this replica's store: decided inline, without a future.
    pub fn local_only(&self) -> bool {
        self.local_only
    }
}

/// `token_service.failed_auth_limit`: failed client authentications, counted per
/// client id and per client IP. While either is over its budget the token endpoint
/// answers 429 `rate_limited`, whatever secret is presented, until the window passes.
///
/// `server.admin_auth.failed_auth_limit` is the same limit counted per client IP only
/// ([`FailedAuthLimit::per_address`]): the admin API has one user name, and a limit
/// per user would let anyone lock the operators out.
#[derive(Debug)]
pub struct FailedAuthLimit {
    per_client: Option<Limit>,
    per_ip: Limit,
    limiter: Limiter,
}

/// The limit names that appear in the 429, `RateLimit-Policy` and metrics.
pub const FAILED_AUTH_CLIENT: &str = "failed_auth_limit.client";
pub const FAILED_AUTH_IP: &str = "failed_auth_limit.ip";
/// `server.admin_auth.failed_auth_limit`'s name (counted per client IP).
pub const ADMIN_FAILED_AUTH_IP: &str = "admin_auth.failed_auth_limit.ip";

impl FailedAuthLimit {
    /// The SPEC default: 10 failures per minute.
    pub const DEFAULT_LIMIT: u64 = 10;
    pub const DEFAULT_PER: Duration = Duration::from_secs(60);
    /// The admin API's default: 10 failed sign-ins per 5 minutes and address (a person
    /// mistyping gets several tries; a password guesser gets 120 an hour).
    pub const ADMIN_DEFAULT_LIMIT: u64 = 10;
    pub const ADMIN_DEFAULT_PER: Duration = Duration::from_secs(300);

    /// `limit` failures per sliding `per`, counted in `store` (a Redis store that cannot
    /// answer falls back to this replica's counters: a failed-auth limit never refuses
    /// a client because Redis is down).
    pub fn new(
        limit: u64,
        per: Duration,
        store: StoreKind,
        limiter: Limiter,
    ) -> Result<FailedAuthLimit, LimitError> {
        Ok(FailedAuthLimit {
            per_client: Some(failure_limit(
                FAILED_AUTH_CLIENT,
                KeySpec::Client,
                limit,
                per,
                store,
            )?),
            per_ip: failure_limit(FAILED_AUTH_IP, KeySpec::Ip, limit, per, store)?,
            limiter,
        })
    }

    /// Failures counted per client IP only, under the limit name `name` (its own
    /// counters: a name is part of every counter's key).
    pub fn per_address(
        name: &str,
        limit: u64,
        per: Duration,
        store: StoreKind,
        limiter: Limiter,
    ) -> Result<FailedAuthLimit, LimitError> {
        Ok(FailedAuthLimit {
            per_client: None,
            per_ip: failure_limit(name, KeySpec::Ip, limit, per, store)?,
            limiter,
        })
    }

    pub fn limit(&self) -> u64 {
        self.per_ip.limit()
    }

    pub fn per(&self) -> Duration {
        self.per_ip.per()
    }

    fn limits(&self, client_id: Option<&str>) -> impl Iterator<Item = &Limit> {
        self.per_client
            .as_ref()
            .filter(|_| client_id.is_some())
            .into_iter()
            .chain([&self.per_ip])
    }

    /// Before a secret is verified: the refusing decision (longest wait first) when the
    /// client id or the IP has used up its failures, `None` when the attempt may go on.
    /// Counts nothing.
    pub async fn check(&self, client_id: Option<&str>, ip: IpAddr) -> Option<Decision> {
        let headers = HeaderMap::new();
        let input = input(&headers, client_id, ip);
        let mut refused: Option<Decision> = None;
        for l in self.limits(client_id) {
            let key = l.key().key(&input);
            if let Outcome::Limited(d) = self.limiter.decide_peek(l, &key).await {
                if refused.as_ref().is_none_or(|r| d.is_closer_than(r)) {
                    refused = Some(d);
                }
            }
        }
        refused
    }

    /// After a failed authentication: counts it for the client id (when one was
    /// presented) and for the IP.
    pub async fn failed(&self, client_id: Option<&str>, ip: IpAddr) {
        let headers = HeaderMap::new();
        let input = input(&headers, client_id, ip);
        for l in self.limits(client_id) {
            let key = l.key().key(&input);
            let _ = self.limiter.decide(l, &key).await;
        }
    }
}

/// The 429 `rate_limited` for an attempt refused by a failed-auth limit: `what` names
/// the failures and whose they are ("failed client authentications for client dash").
pub fn too_many_failures(d: &Decision, what: &str) -> GatewayError {
    let retry = d.retry_after_secs().unwrap_or(1);
    GatewayError::RateLimited(Box::new(RateLimited {
        limit: d.name.clone(),
        description: format!(
            "too many {what} (at most {} per {}s); retry in {retry}s",
            d.limit,
            d.per.as_secs()
        ),
        retry_after: HeaderValue::from(retry),
        policy: d.policy_header().clone(),
        state: d.ratelimit_header(),
    }))
}

/// A sliding failure limit that lets a client through when its store cannot answer (a
/// Redis store that cannot answer falls back to this replica's counters).
fn failure_limit(
    name: &str,
    key: KeySpec,
    limit: u64,
    per: Duration,
    store: StoreKind,
) -> Result<Limit, LimitError> {
    Limit::new(LimitSpec {
        name: name.into(),
        key,
        limit,
        per,
        window: Window::Sliding,
        store,
        on_error: OnError::Allow,
    })
}

fn input<'a>(headers: &'a HeaderMap, client_id: Option<&'a str>, ip: IpAddr) -> KeyInput<'a> {
    KeyInput {
        client_ip: ip,
        headers,
        client_id,
        subject: None,
        ip_key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::LocalStore;

    // Failures are counted per client id and per IP; either one over its budget refuses
    // the next attempt, whoever it is for; a request without a client id counts per IP only.
    #[tokio::test]
    async fn failures_count_per_client_and_per_ip() {
        let limiter = Limiter::new(Arc::new(LocalStore::new(1000)), None);
        let f =
            FailedAuthLimit::new(2, Duration::from_secs(60), StoreKind::Local, limiter).unwrap();
        let ip1: IpAddr = "192.0.2.1".parse().unwrap();
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(f.check(Some("dash"), ip1).await.is_none());
        f.failed(Some("dash"), ip1).await;
        f.failed(Some("dash"), ip2).await;
        // "dash" failed twice (from two IPs): refused from anywhere.
        let d = f.check(Some("dash"), "192.0.2.3".parse().unwrap()).await;
        assert_eq!(d.unwrap().name.as_ref(), FAILED_AUTH_CLIENT);
        // Another client from ip1 is fine (ip1 failed once).
        assert!(f.check(Some("other"), ip1).await.is_none());
        f.failed(None, ip1).await;
        let d = f.check(Some("other"), ip1).await.unwrap();
        assert_eq!(d.name.as_ref(), FAILED_AUTH_IP);
        assert!(d.retry_after_secs().unwrap() >= 1);
        assert!(f.check(None, ip2).await.is_none());
    }

    // The admin limit counts per address only, under its own name and counters: a
    // client id is ignored, and token-service failures from the same address do not
    // count toward it.
    #[tokio::test]
    async fn a_per_address_limit_has_its_own_counters() {
        let limiter = Limiter::new(Arc::new(LocalStore::new(1000)), None);
        let per = Duration::from_secs(60);
        let token = FailedAuthLimit::new(1, per, StoreKind::Local, limiter.clone()).unwrap();
        let admin =
            FailedAuthLimit::per_address(ADMIN_FAILED_AUTH_IP, 2, per, StoreKind::Local, limiter)
                .unwrap();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        token.failed(None, ip).await;
        assert!(token.check(None, ip).await.is_some());
        assert!(admin.check(None, ip).await.is_none());
        admin.failed(Some("ops"), ip).await;
        admin.failed(None, ip).await;
        let d = admin.check(Some("someone-else"), ip).await.unwrap();
        assert_eq!(d.name.as_ref(), ADMIN_FAILED_AUTH_IP);
        assert!(admin
            .check(None, "192.0.2.10".parse().unwrap())
            .await
            .is_none());
    }
}
