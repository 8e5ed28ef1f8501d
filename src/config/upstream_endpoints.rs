//! `upstreams[].urls` and what goes with several endpoints: `balance`, `passive`
//! (outlier ejection), `health_check` and `retries`. Compiles to
//! [`Endpoints`](crate::balancer::Endpoints), which `proxy.rs` forwards through and
//! `health.rs` checks; endpoint states come from the [`Registry`] so that a reload keeps
//! the health of endpoints whose URL did not change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use super::registry::Registry;
use super::validate::{self as v, Problems};
use super::yaml::{section, DurationText, List, Word};
use crate::balancer::{Balance, Endpoint, Endpoints, HealthCheck, Passive, Retries};

section! {
    /// `upstreams[].passive`
    pub struct PassiveModel {
        /// Failed exchanges in a row (connect failures, resets, timeouts, 5xx answers)
        /// that eject an endpoint (default 5; 0 never ejects).
        "consecutive_failures" => pub consecutive_failures: Option<u64>,
        /// How long an ejected endpoint gets no requests (default 30s); a passing
        /// health check ends the ejection early.
        "eject_for" => pub eject_for: Option<DurationText>,
        /// At most this share of the endpoints is ejected at once (default 50; at least
        /// one endpoint may always be, never the last healthy one).
        "max_ejected_percent" => pub max_ejected_percent: Option<u64>,
    }
}

section! {
    /// `upstreams[].health_check`
    pub struct HealthCheckModel {
        /// Path requested with GET on every endpoint, e.g. /healthz; a 2xx answer passes.
        "path" => pub path: Option<String> as required(),
        /// Time between checks of one endpoint (default 10s).
        "interval" => pub interval: Option<DurationText>,
        /// Time allowed for an answer (default 2s); longer fails the check.
        "timeout" => pub timeout: Option<DurationText>,
        /// Passing checks in a row that bring a failing endpoint back (default 2).
        "healthy" => pub healthy: Option<u64>,
        /// Failed checks in a row that take an endpoint out (default 3).
        "unhealthy" => pub unhealthy: Option<u64>,
    }
}

section! {
    /// `upstreams[].retries`
    pub struct RetriesModel {
        /// Tries in all, the first included (default 2; 1 turns retries off). Only
        /// idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) whose body was
        /// never sent are tried again, each time on another endpoint while there is
        /// one, all within the route's request_timeout.
        "attempts" => pub attempts: Option<u64>,
        /// What is retried (default [connect-failure, reset, 503]): connect-failure,
        /// reset, timeout, 5xx (any 5xx answer), gateway-error (502, 503, 504), or a
        /// status code from 500 to 599.
        "on" => pub on: Option<List<Word>>,
    }
}

section! {
    /// `upstreams[].dns`
    pub struct DnsModel {
        /// per_name (default): the URL's name is one endpoint, resolved by the system
        /// for each new connection. per_address: the name is resolved in the
        /// background (server.dns) and each address is an endpoint of its own, with its
        /// own connections, passive ejection and health check (Kubernetes headless
        /// Services, several A records); TLS and Host keep the name.
        "mode" => pub mode: Option<String> as choice(&["per_name", "per_address"]),
        /// per_address: the longest time between two resolutions (default 5s); an
        /// answer whose TTL runs out sooner is resolved again then.
        "refresh" => pub refresh: Option<DurationText>,
        /// per_address: the shortest time between two resolutions (default 1s), also
        /// the first wait after a failed one (doubled per failure, up to refresh).
        "min_refresh" => pub min_refresh: Option<DurationText>,
    }
}

/// `dns` of an upstream: `Some((refresh, min_refresh))` for `mode: per_address`.
pub fn dns_mode(m: &DnsModel, path: &str, p: &mut Problems) -> Option<(Duration, Duration)> {
    let per_address = match m.mode.as_deref() {
        None | Some("per_name") => false,
        Some("per_address") => true,
        Some(other) => {
            p.add(
                format!("{path}.mode"),
                format!("unknown dns mode \"{other}\": per_name or per_address"),
            );
            false
        }
    };
    let refresh = v::duration(
        p,
        format!("{path}.refresh"),
        m.refresh.as_ref(),
        Duration::from_secs(5),
    );
    let min_refresh = v::duration(
        p,
        format!("{path}.min_refresh"),
        m.min_refresh.as_ref(),
        Duration::from_secs(1).min(refresh),
    );
    if !per_address {
        for (key, set) in [
            ("refresh", m.refresh.is_some()),
            ("min_refresh", m.min_refresh.is_some()),
        ] {
            if set {
                p.add(
                    format!("{path}.{key}"),
                    "applies to mode: per_address (a per_name URL is resolved on each new connection)",
                );
            }
        }
        return None;
    }
    if min_refresh > refresh {
        p.add(
            format!("{path}.min_refresh"),
            format!("{min_refresh:?} is longer than refresh ({refresh:?})"),
        );
    }
    Some((refresh, min_refresh))
}

/// What the retries section may list, for messages.
const RETRY_ON: &str =
    "connect-failure, reset, timeout, 5xx, gateway-error or a status code 500-599";

/// The endpoints of one upstream: `urls` as checked by `upstreams.rs` (scheme and
/// authority each), and the settings beside them.
pub struct EndpointSettings<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub endpoints: Vec<(Scheme, Authority)>,
    pub balance: Option<&'a str>,
    pub passive: Option<&'a PassiveModel>,
    pub health_check: Option<&'a HealthCheckModel>,
    pub retries: Option<&'a RetriesModel>,
    /// The endpoints are a name's addresses (`dns: per_address`): as many as it has.
    pub per_address: bool,
}

pub fn compile(s: EndpointSettings<'_>, reg: &Registry, p: &mut Problems) -> Endpoints {
    let path = s.path;
    let balance = match s.balance {
        None | Some("round-robin") => Balance::RoundRobin,
        Some("least-requests") => Balance::LeastRequests,
        Some(other) => {
            p.add(
                format!("{path}.balance"),
                format!("unknown balance \"{other}\": round-robin or least-requests"),
            );
            Balance::RoundRobin
        }
    };
    let passive = s
        .passive
        .map(|m| passive(m, &format!("{path}.passive"), p))
        .unwrap_or_default();
    let health_check = s
        .health_check
        .and_then(|m| health_check(m, &format!("{path}.health_check"), p));
    let retries = match s.retries {
        Some(m) => retries(m, &format!("{path}.retries"), p),
        None if s.endpoints.len() > 1 || s.per_address => Retries::default(),
        None => Retries::NONE,
    };
    let list = s
        .endpoints
        .into_iter()
        .map(|(scheme, authority)| {
            let state = reg.endpoint_state(s.name, authority.as_str());
            Arc::new(Endpoint::new(scheme, authority, state))
        })
        .collect();
    Endpoints::new(list, balance, passive, retries, health_check)
}

/// A whole number within `lo..=hi` at `key`, or `default`.
fn count(p: &mut Problems, key: String, v: Option<u64>, default: u32, lo: u64, hi: u64) -> u32 {
    match v {
        None => default,
        Some(n) if (lo..=hi).contains(&n) => n as u32,
        Some(n) => {
            p.add(key, format!("must be from {lo} to {hi}, found {n}"));
            default
        }
    }
}

fn passive(m: &PassiveModel, path: &str, p: &mut Problems) -> Passive {
    let d = Passive::default();
    Passive {
        consecutive_failures: count(
            p,
            format!("{path}.consecutive_failures"),
            m.consecutive_failures,
            d.consecutive_failures,
            0,
            1000,
        ),
        eject_for: v::duration(
            p,
            format!("{path}.eject_for"),
            m.eject_for.as_ref(),
            d.eject_for,
        ),
        max_ejected_percent: count(
            p,
            format!("{path}.max_ejected_percent"),
            m.max_ejected_percent,
            u32::from(d.max_ejected_percent),
            1,
            100,
        ) as u8,
    }
}

fn health_check(m: &HealthCheckModel, path: &str, p: &mut Problems) -> Option<HealthCheck> {
    let interval = v::duration(
        p,
        format!("{path}.interval"),
        m.interval.as_ref(),
        Duration::from_secs(10),
    );
    let timeout = v::duration(
        p,
        format!("{path}.timeout"),
        m.timeout.as_ref(),
        Duration::from_secs(2),
    );
    let healthy = count(p, format!("{path}.healthy"), m.healthy, 2, 1, 100);
    let unhealthy = count(p, format!("{path}.unhealthy"), m.unhealthy, 3, 1, 100);
    let Some(written) = m.path.as_deref() else {
        p.missing(path, "path", " (e.g. path: /healthz)");
        return None;
    };
    if !written.starts_with('/') || written.contains('#') || written.contains(char::is_whitespace) {
        p.add(
            format!("{path}.path"),
            format!("\"{written}\" must be an absolute path like /healthz (a query is allowed, a fragment is not)"),
        );
        return None;
    }
    let Ok(pq) = written.parse() else {
        p.add(
            format!("{path}.path"),
            format!("\"{written}\" is not a valid request path"),
        );
        return None;
    };
    Some(HealthCheck {
        path: pq,
        interval,
        timeout,
        healthy,
        unhealthy,
    })
}

fn retries(m: &RetriesModel, path: &str, p: &mut Problems) -> Retries {
    let attempts = count(p, format!("{path}.attempts"), m.attempts, 2, 1, 10);
    let mut r = Retries {
        attempts,
        on_connect_failure: false,
        on_reset: false,
        on_timeout: false,
        on_status: 0,
    };
    let Some(on) = &m.on else {
        r.on_connect_failure = true;
        r.on_reset = true;
        r.on_status = 1 << 3;
        return r;
    };
    if on.is_empty() {
        p.add(
            format!("{path}.on"),
            format!("list what is retried ({RETRY_ON}), or set attempts: 1 for no retries"),
        );
    }
    let mut seen = HashMap::new();
    for (i, Word(w)) in on.iter() {
        let at = format!("{path}.on[{i}]");
        if let Some(first) = seen.insert(w.as_str(), i) {
            p.add(at.clone(), format!("\"{w}\" is listed twice (on[{first}])"));
        }
        match w.as_str() {
            "connect-failure" => r.on_connect_failure = true,
            "reset" => r.on_reset = true,
            "timeout" => r.on_timeout = true,
            "5xx" => r.on_status = (1u128 << 100) - 1,
            "gateway-error" => r.on_status |= (1 << 2) | (1 << 3) | (1 << 4),
            code => match code.parse::<u16>() {
                Ok(c) if (500..600).contains(&c) => r.on_status |= 1 << (c - 500),
                _ => {
                    let hint = v::suggest(
                        code,
                        &[
                            "connect-failure",
                            "reset",
                            "timeout",
                            "5xx",
                            "gateway-error",
                        ],
                    )
                    .map(|h| format!(" (did you mean \"{h}\"?)"))
                    .unwrap_or_default();
                    p.add(
                        at,
                        format!("unknown retry condition \"{code}\"{hint}: {RETRY_ON}"),
                    );
                }
            },
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries_of(on: &[&str]) -> (Retries, Vec<String>) {
        let mut p = Problems::default();
        let m = RetriesModel {
            attempts: Some(3),
            on: Some(on.iter().map(|w| Word((*w).to_owned())).collect()),
        };
        let r = retries(&m, "upstreams[0].retries", &mut p);
        (
            r,
            p.errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        )
    }

    // Behaviour: every retry condition turns on exactly what it names; an unknown one is
    // a located error with a suggestion.
    #[test]
    fn retry_conditions() {
        let (r, e) = retries_of(&["gateway-error"]);
        assert!(e.is_empty(), "{e:?}");
        let codes: Vec<u16> = (500..600)
            .filter(|c| r.on_status(http::StatusCode::from_u16(*c).unwrap()))
            .collect();
        assert_eq!(codes, [502, 503, 504]);
        let (r, _) = retries_of(&["5xx"]);
        assert!((500..600).all(|c| r.on_status(http::StatusCode::from_u16(c).unwrap())));
        let (r, _) = retries_of(&["connect-failure", "504"]);
        assert!(r.on_connect_failure && !r.on_reset && !r.on_timeout);
        assert!(r.on_status(http::StatusCode::GATEWAY_TIMEOUT));
        assert!(!r.on_status(http::StatusCode::SERVICE_UNAVAILABLE));
        let (_, e) = retries_of(&["rest", "404", "reset", "reset"]);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("upstreams[0].retries.on[0]: ")
                && e[0].contains("did you mean \"reset\""),
            "{e:?}"
        );
        assert!(e[1].starts_with("upstreams[0].retries.on[1]: "), "{e:?}");
        assert!(e[2].contains("listed twice"), "{e:?}");
    }
}
