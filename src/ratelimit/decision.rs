//! One limit's answer for one request, and the response headers SPEC derives from it
//! (`Retry-After`, `RateLimit-Policy`, `RateLimit`, draft-ietf-httpapi-ratelimit-headers).
//! Used on the way out of the rate-limit step: on the 429 and on every response of a
//! limited route.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;

use super::Limit;

/// Who made a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The local store, for a `store: local` limit.
    Local,
    /// Redis, for a `store: redis` limit.
    Redis,
    /// The local store standing in for an unreachable Redis (`on_error: allow`).
    LocalFallback,
}

/// A limit's decision for one request.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Whether the request is admitted (and was counted, unless this was a peek).
    pub allowed: bool,
    /// The limit's name (the `RateLimit-Policy` item and the 429's description).
    pub name: Arc<str>,
    /// The limit's budget (`q`).
    pub limit: u64,
    /// The limit's `per` (`w`).
    pub per: Duration,
    /// The limit's `RateLimit-Policy` value, `"name";q=LIMIT;w=PER_SECONDS`.
    pub policy: HeaderValue,
    /// Requests still admissible now (`r`); 0 when refused.
    pub remaining: u64,
    /// Until more quota becomes available (`t`): the end of the fixed window, or until the
    /// oldest counted bucket of a sliding window stops counting. Zero when nothing is counted.
    pub reset: Duration,
    /// Until one more request would be admitted; zero when allowed.
    pub retry_after: Duration,
    pub source: Source,
}

impl Decision {
    /// Builds a decision from a store's raw numbers (`counted` after this request).
    pub(crate) fn from_counts(
        limit: &Limit,
        allowed: bool,
        counted: u64,
        reset_ms: u64,
        retry_ms: u64,
        source: Source,
    ) -> Decision {
        Decision {
            allowed,
            name: limit.name().clone(),
            limit: limit.limit(),
            per: limit.per(),
            policy: limit.policy_header().clone(),
            remaining: if allowed {
                limit.limit().saturating_sub(counted)
            } else {
                0
            },
            reset: Duration::from_millis(reset_ms),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                Duration::from_millis(retry_ms.max(1))
            },
            source,
        }
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1; `None` when allowed.
    pub fn retry_after_secs(&self) -> Option<u64> {
        (!self.allowed).then(|| ceil_secs(self.retry_after).max(1))
    }

    /// The `Retry-After` header value, only for a refusal.
    pub fn retry_after_header(&self) -> Option<HeaderValue> {
        self.retry_after_secs().map(HeaderValue::from)
    }

    /// The `RateLimit-Policy` value, `"name";q=LIMIT;w=PER_SECONDS` (precomputed by [`Limit`]).
    pub fn policy_header(&self) -> &HeaderValue {
        &self.policy
    }

    /// `"name";r=REMAINING;t=SECONDS`: seconds rounded up; for a refusal `t` is the
    /// `Retry-After` wait.
    pub fn ratelimit_header(&self) -> HeaderValue {
        let t = match self.retry_after_secs() {
            Some(s) => s,
            None => ceil_secs(self.reset),
        };
        let mut prefix = String::with_capacity(self.name.len() + 5);
        push_sf_string(&mut prefix, &self.name);
        prefix.push_str(";r=");
        ratelimit_value(prefix.as_bytes(), self.remaining, t)
    }

    /// Whether `self` is strictly closer to exhaustion than `other` (see
    /// [`closest_to_exhaustion`]).
    pub fn is_closer_than(&self, other: &Decision) -> bool {
        self.exhaustion_rank() < other.exhaustion_rank()
    }

    /// Orders decisions by how close they are to exhaustion: refusals first (the
    /// longest wait first), then the fewest remaining, then the longest `t`.
    fn exhaustion_rank(&self) -> (bool, u64, std::cmp::Reverse<Duration>) {
        let wait = if self.allowed {
            self.reset
        } else {
            self.retry_after
        };
        (self.allowed, self.remaining, std::cmp::Reverse(wait))
    }
}

/// The `RateLimit-Policy` and `RateLimit` values a response of a limited route carries.
#[derive(Clone, Debug)]
pub struct RateHeaders {
    pub policy: HeaderValue,
    pub state: HeaderValue,
}

impl From<&Decision> for RateHeaders {
    fn from(d: &Decision) -> RateHeaders {
        RateHeaders {
            policy: d.policy.clone(),
            state: d.ratelimit_header(),
        }
    }
}

/// `{prefix}{remaining};t={t}`, the `RateLimit` value after its `"name";r=` prefix.
/// Once per admitted request on a limited route: written into one buffer of the exact
/// length, which `Bytes` takes over without a copy or a second allocation (a buffer with
/// spare room costs `Bytes` another one), the numbers by itoa rather than `core::fmt`.
pub(crate) fn ratelimit_value(prefix: &[u8], remaining: u64, t: u64) -> HeaderValue {
    let mut r = itoa::Buffer::new();
    let r = r.format(remaining).as_bytes();
    let mut t_buf = itoa::Buffer::new();
    let t = t_buf.format(t).as_bytes();
    let mut v = Vec::with_capacity(prefix.len() + r.len() + 3 + t.len());
    v.extend_from_slice(prefix);
    v.extend_from_slice(r);
    v.extend_from_slice(b";t=");
    v.extend_from_slice(t);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).expect("sf-string of printable ASCII")
}

/// The decision whose headers a response carries when several limits apply: the one
/// closest to exhaustion (see SPEC). `None` for no decisions.
pub fn closest_to_exhaustion<'a, I>(decisions: I) -> Option<&'a Decision>
where
    I: IntoIterator<Item = &'a Decision>,
{
    decisions.into_iter().min_by_key(|d| d.exhaustion_rank())
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_sf_string(&mut out, s);
    out
}

/// Appends `s` as an RFC 9651 sf-string: printable ASCII, `"` and `\` escaped; anything
/// else (which [`Limit::new`]'s name check keeps out) becomes `?`.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, allowed: bool, remaining: u64, reset_ms: u64, retry_ms: u64) -> Decision {
        Decision {
            allowed,
            name: name.into(),
            limit: 100,
            per: Duration::from_secs(60),
            policy: HeaderValue::from_str(&format!("\"{name}\";q=100;w=60")).unwrap(),
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: Duration::from_millis(retry_ms),
            source: Source::Local,
        }
    }

    // SPEC's header examples, and seconds rounded up.
    #[test]
    fn header_values_follow_the_draft() {
        let ok = d("per-client", true, 42, 12_001, 0);
        assert_eq!(ok.policy_header(), "\"per-client\";q=100;w=60");
        assert_eq!(ok.ratelimit_header(), "\"per-client\";r=42;t=13");
        assert_eq!(ok.retry_after_header(), None);
        let no = d("per-client", false, 0, 30_000, 1);
        assert_eq!(no.retry_after_header().unwrap(), "1");
        assert_eq!(no.ratelimit_header(), "\"per-client\";r=0;t=1");
        let no = d("per-client", false, 0, 30_000, 2_000);
        assert_eq!(no.retry_after_secs(), Some(2));
        let no = d("per-client", false, 0, 30_000, 2_001);
        assert_eq!(no.retry_after_secs(), Some(3));
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    // A refusal outranks any allowance; then fewest remaining; then longest wait.
    #[test]
    fn picks_the_decision_closest_to_exhaustion() {
        let a = d("a", true, 5, 1000, 0);
        let b = d("b", true, 2, 1000, 0);
        let c = d("c", true, 2, 9000, 0);
        assert_eq!(
            closest_to_exhaustion([&a, &b, &c]).unwrap().name.as_ref(),
            "c"
        );
        let r1 = d("r1", false, 0, 0, 3000);
        let r2 = d("r2", false, 0, 0, 7000);
        assert_eq!(
            closest_to_exhaustion([&a, &r1, &b, &r2])
                .unwrap()
                .name
                .as_ref(),
            "r2"
        );
        let zero = d("z", true, 0, 500, 0);
        assert_eq!(
            closest_to_exhaustion([&a, &zero]).unwrap().name.as_ref(),
            "z"
        );
        assert!(closest_to_exhaustion(std::iter::empty::<&Decision>()).is_none());
    }
}
