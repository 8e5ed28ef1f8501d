//! Step 7, after the token is verified and before it is authorised: sender-constrained
//! tokens. A token bound to a key (RFC 9449 DPoP, `cnf.jkt`) must come with a proof
//! signed by that key; a token bound to a client certificate (RFC 8705,
//! `cnf.x5t#S256`) must come over a TLS connection that presented that certificate.
//!
//! Per issuer, `sender_constraint`:
//! - `none` (default): bearer tokens are accepted; a token that *is* bound is still
//!   held to its binding (a bound token is never accepted as a bearer token).
//! - `dpop`: every token must be DPoP-bound and sent as `Authorization: DPoP` with a proof.
//! - `mtls`: every token must be certificate-bound and match the client certificate.
//!
//! The gate calls [`check`] with what the request presented ([`Presented`]); each
//! check is noted for `explain`. The `cnf` claim is read from the verified token's
//! claims: a JWT's payload or an introspection response.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderMap;
use serde_json::{Map, Value};

use super::dpop::{self, Expected};
use super::replay::{Fresh, ReplayStore};
use crate::conn::ClientCert;
use crate::error::{DenyReason, GatewayError};

/// `issuers[].sender_constraint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenderConstraint {
    #[default]
    None,
    Dpop,
    Mtls,
}

impl SenderConstraint {
    pub fn as_str(self) -> &'static str {
        match self {
            SenderConstraint::None => "none",
            SenderConstraint::Dpop => "dpop",
            SenderConstraint::Mtls => "mtls",
        }
    }
}

/// How an issuer's DPoP proofs are checked (`issuers[].dpop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    /// How far a proof's `iat` may be from now, either way.
    pub iat_window: Duration,
    /// `replay`: where the proofs' `jti`s are remembered.
    pub replay: ReplayStore,
}

pub const DEFAULT_IAT_WINDOW: Duration = Duration::from_secs(60);

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            iat_window: DEFAULT_IAT_WINDOW,
            replay: ReplayStore::default(),
        }
    }
}

/// The issuer's rule for sender constraints, as the check needs it.
#[derive(Debug, Clone, Copy)]
pub struct Rule<'a> {
    /// The issuer's name (`issuers[].name`).
    pub issuer: &'a Arc<str>,
    /// Its `iss` value.
    pub iss: &'a str,
    /// Its clock leeway: how far another replica's clock may be off.
    pub leeway: Duration,
    pub constraint: SenderConstraint,
    pub dpop: &'a DpopSettings,
}

/// The `Authorization` scheme a token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

/// Whether the request carries more than one `Authorization` header. `Authorization` is
/// not a list (RFC 9110 §11.6.2) and a client uses one method to present a token
/// (RFC 6750 §2): with two, the upstream might read the one tollgate never checked.
pub fn several_credentials(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
}

/// 400 `invalid_request` for [`several_credentials`].
pub fn several_credentials_refused() -> GatewayError {
    GatewayError::BadRequest("more than one Authorization header; send exactly one".into())
}

/// The token of `Authorization: Bearer ...` or `Authorization: DPoP ...` (scheme
/// case-insensitive), with its scheme.
pub fn presented_token(headers: &HeaderMap) -> Option<(Scheme, &str)> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return None;
    };
    let t = rest.trim();
    (!t.is_empty()).then_some((scheme, t))
}

/// The `DPoP` header: `Ok(None)` when absent, an error when sent more than once or
/// not text.
pub fn proof_header(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut all = headers.get_all("dpop").iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err("more than one DPoP header");
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| "the DPoP header is not text")
}

/// What a request presented, as far as sender constraints look at it.
pub struct Presented<'a> {
    pub scheme: Scheme,
    pub token: &'a str,
    pub method: &'a str,
    /// The request's URI as the client addressed tollgate, query left out (`None` when
    /// the request names no host).
    pub htu: Option<&'a str>,
    pub proof: Result<Option<&'a str>, &'static str>,
    pub client_cert: &'a ClientCert,
}

fn binding(d: impl Into<String>) -> GatewayError {
    GatewayError::Unauthorized {
        reason: DenyReason::TokenBindingMismatch,
        description: d.into(),
    }
}

fn certificate(d: impl Into<String>) -> GatewayError {
    GatewayError::Unauthorized {
        reason: DenyReason::CertificateMismatch,
        description: d.into(),
    }
}

fn proof_invalid(d: impl Into<String>) -> GatewayError {
    GatewayError::Unauthorized {
        reason: DenyReason::DpopProofInvalid,
        description: d.into(),
    }
}

/// The bindings the token's `cnf` claim names.
pub struct Cnf<'a> {
    pub jkt: Option<&'a str>,
    pub x5t: Option<&'a str>,
}

/// A bearer token for a bearer issuer: a token bound to nothing, presented as `Bearer`,
/// of an issuer without a sender constraint has nothing to check (the common case; the
/// gate asks this before it gathers what [`check`] would look at).
pub fn nothing_to_check(constraint: SenderConstraint, bound: &Cnf<'_>, scheme: Scheme) -> bool {
    constraint == SenderConstraint::None
        && bound.jkt.is_none()
        && bound.x5t.is_none()
        && scheme == Scheme::Bearer
}

pub fn cnf(claims: &Map<String, Value>) -> Cnf<'_> {
    let c = claims.get("cnf").and_then(Value::as_object);
    let member = |name: &str| c.and_then(|c| c.get(name)).and_then(Value::as_str);
    Cnf {
        jkt: member("jkt"),
        x5t: member("x5t#S256"),
    }
}

/// `base64url(SHA-256(DER))` of a certificate: RFC 8705's `x5t#S256`.
pub fn x5t_s256(der_sha256: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(der_sha256)
}

/// Checks the token's sender constraint against what the request presented. Each
/// step goes to `note` (the explain trace). A DPoP proof that passed every check comes
/// back as [`Fresh`]: its `jti` is still to be checked for a replay
/// (`auth::replay::check`).
pub fn check(
    rule: Rule<'_>,
    claims: &Map<String, Value>,
    p: &Presented<'_>,
    now: i64,
    note: &mut dyn FnMut(String),
) -> Result<Option<Fresh>, GatewayError> {
    let bound = cnf(claims);
    if nothing_to_check(rule.constraint, &bound, p.scheme) {
        return Ok(None);
    }
    note(format!(
        "sender constraint: issuer {} requires {}; token bound to {}",
        rule.issuer,
        match rule.constraint {
            SenderConstraint::None => "none (bound tokens keep their binding)",
            SenderConstraint::Dpop => "a DPoP key (cnf.jkt)",
            SenderConstraint::Mtls => "a client certificate (cnf.x5t#S256)",
        },
        match (bound.jkt, bound.x5t) {
            (Some(_), Some(_)) => "a DPoP key and a client certificate",
            (Some(_), None) => "a DPoP key (cnf.jkt)",
            (None, Some(_)) => "a client certificate (cnf.x5t#S256)",
            (None, None) => "nothing (a bearer token)",
        }
    ));
    match rule.constraint {
        SenderConstraint::Dpop if bound.jkt.is_none() => {
            return Err(binding(format!(
                "issuer {} accepts only DPoP-bound tokens; this token has no cnf.jkt",
                rule.issuer
            )))
        }
        SenderConstraint::Mtls if bound.x5t.is_none() => {
            return Err(certificate(format!(
                "issuer {} accepts only certificate-bound tokens; this token has no cnf.x5t#S256",
                rule.issuer
            )))
        }
        _ => {}
    }
    let fresh = match bound.jkt {
        Some(jkt) => Some(check_dpop(rule, jkt, p, now, note)?),
        None if p.scheme == Scheme::Dpop => {
            return Err(binding(
                "the token was sent with the DPoP scheme but is not DPoP-bound (no cnf.jkt); send it as Bearer",
            ))
        }
        None => None,
    };
    if let Some(x5t) = bound.x5t {
        check_certificate(x5t, p.client_cert, note)?;
    }
    Ok(fresh)
}

fn check_dpop(
    rule: Rule<'_>,
    jkt: &str,
    p: &Presented<'_>,
    now: i64,
    note: &mut dyn FnMut(String),
) -> Result<Fresh, GatewayError> {
    if p.scheme == Scheme::Bearer {
        note("dpop: the DPoP-bound token came as Bearer".into());
        return Err(binding(
            "this token is DPoP-bound: send it as `Authorization: DPoP` with a DPoP proof, not as Bearer",
        ));
    }
    let proof = match p.proof {
        Ok(Some(proof)) => proof,
        Ok(None) => {
            note("dpop: no DPoP proof header with the DPoP-bound token".into());
            return Err(proof_invalid(
                "no DPoP proof header with the DPoP-bound token",
            ));
        }
        Err(e) => {
            note(format!("dpop: proof refused: {e}"));
            return Err(proof_invalid(e));
        }
    };
    let proof = dpop::parse(proof).map_err(|r| {
        note(format!("dpop: proof refused: {}", r.description));
        proof_invalid(r.description)
    })?;
    note(format!(
        "dpop: proof signature valid ({}, its own jwk, thumbprint {})",
        proof.alg, proof.jkt
    ));
    let Some(htu) = p.htu else {
        note("dpop: proof refused: the request names no host to compare htu with".into());
        return Err(proof_invalid(
            "the request names no host, so its URI cannot be compared with the proof's htu",
        ));
    };
    let window = rule.dpop.iat_window.as_secs() as i64;
    proof
        .check(&Expected {
            method: p.method,
            htu,
            token: Some(p.token),
            now,
            iat_window_secs: window,
        })
        .map_err(|r| {
            note(format!("dpop: proof refused: {}", r.description));
            proof_invalid(r.description)
        })?;
    note(format!(
        "dpop: htm {} and htu {htu} match, iat within {window}s, ath is the token's hash",
        p.method
    ));
    if proof.jkt != jkt {
        note("dpop: the proof's key is not the one the token is bound to".into());
        return Err(binding(
            "the DPoP proof's key is not the key the token is bound to (cnf.jkt)",
        ));
    }
    note("dpop: the proof's key thumbprint equals the token's cnf.jkt".into());
    Ok(Fresh {
        issuer: rule.issuer.clone(),
        iss: rule.iss.to_owned(),
        jkt: proof.jkt,
        jti: proof.jti,
        iat: proof.iat,
        window,
        skew: rule.leeway.as_secs() as i64,
        store: rule.dpop.replay.clone(),
    })
}

fn check_certificate(
    x5t: &str,
    cert: &ClientCert,
    note: &mut dyn FnMut(String),
) -> Result<(), GatewayError> {
    match cert {
        ClientCert::Offline => {
            note("mtls: client certificate NOT CHECKED: explain has no TLS connection (pass --client-cert FILE)".into());
            Ok(())
        }
        ClientCert::None => Err(certificate(
            "the token is bound to a client certificate (cnf.x5t#S256), and the request came without one",
        )),
        ClientCert::Leaf(sha) => {
            let got = x5t_s256(sha);
            if crate::secret::constant_time_eq(got.as_bytes(), x5t.as_bytes()) {
                note("mtls: the client certificate's SHA-256 equals the token's cnf.x5t#S256".into());
                Ok(())
            } else {
                note("mtls: the client certificate is not the one the token is bound to".into());
                Err(certificate(
                    "the client certificate is not the one the token is bound to (cnf.x5t#S256)",
                ))
            }
        }
    }
}

/// The request's URI as the client addressed tollgate, without the query: what a DPoP
/// proof's `htu` must name. The scheme is `https` on a TLS listener or behind a proxy
/// that says `X-Forwarded-Proto: https` (the rule sign-in redirects use too); the host
/// is the `Host` header (or an absolute URI's authority) as the client sent it —
/// `X-Forwarded-Host` is not trusted, so a load balancer in front must pass `Host` on
/// unchanged (most do by default). `None` without a usable host.
pub fn target_uri(headers: &HeaderMap, uri: &http::Uri, tls: bool) -> Option<String> {
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let scheme = if tls || forwarded_https {
        "https"
    } else {
        "http"
    };
    let host = match headers.get(http::header::HOST) {
        Some(h) => h.to_str().ok()?.to_owned(),
        None => uri.authority()?.as_str().to_owned(),
    };
    let authority: http::uri::Authority = host.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    Some(format!("{scheme}://{}{}", authority.as_str(), uri.path()))
}
