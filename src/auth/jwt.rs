//! Parsing and verifying a compact JWS, with a precise reason for every refusal.
//!
//! The header is read by hand (not by a library that would refuse `alg: none` with a
//! generic error) so that each attack gets its own reason: `alg: none` and HMAC are
//! never accepted, the algorithm must be on the issuer's allow-list *and* match the
//! key's type, and tokens that name their own key (`jku`, `x5u`, `jwk`, `x5c`) are
//! refused outright. Keys come only from the issuer's configured key set.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::error::DenyReason;

/// Longest token we look at (bytes); longer ones are malformed.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DenyReason,
    pub description: String,
}

impl Refusal {
    pub fn new(reason: DenyReason, description: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            description: description.into(),
        }
    }
}

/// A JWS split into parts, header and payload decoded, signature not yet checked.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg_name: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'a str,
    pub signature: &'a str,
}

/// Is this string shaped like a JWS (three base64url parts, JSON header with `alg`)?
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        .is_some_and(|m| m.contains_key("alg"))
}

pub fn parse(token: &str) -> Result<Jws<'_>, Refusal> {
    let malformed = |d: &str| Refusal::new(DenyReason::TokenMalformed, d.to_owned());
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed("token is too long"));
    }
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "token is not a JWT (expected three dot-separated parts)",
        ));
    };
    let header: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("token header is not base64url JSON"))?;
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(malformed("token header has no alg")),
    };
    // `none` and HMAC are refused before anything else is looked at.
    asymmetric_alg(&alg_name)?;
    for named_key in ["jku", "x5u", "jwk", "x5c"] {
        if header.contains_key(named_key) {
            return Err(malformed(&format!(
                "token names its own key ({named_key} header); keys come only from the issuer's key set"
            )));
        }
    }
    if header.contains_key("crit") {
        return Err(malformed(
            "token header has crit extensions, which are not supported",
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed("token header kid is not a string")),
    };
    let claims: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("token payload is not base64url JSON"))?;
    if s.is_empty() {
        return Err(Refusal::new(
            DenyReason::SignatureInvalid,
            "token is unsigned",
        ));
    }
    Ok(Jws {
        alg_name,
        kid,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

/// Maps a JOSE `alg` name to an asymmetric algorithm, refusing `none` and HMAC.
pub fn asymmetric_alg(name: &str) -> Result<Algorithm, Refusal> {
    let refuse = |d: String| Refusal::new(DenyReason::AlgorithmNotAllowed, d);
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "EdDSA" => Ok(Algorithm::EdDSA),
        n if n.eq_ignore_ascii_case("none") => Err(refuse("alg none is never accepted".into())),
        n if n.starts_with("HS") => Err(refuse(format!(
            "alg {n} (shared-secret HMAC) is never accepted"
        ))),
        n => Err(refuse(format!("alg {n} is not supported"))),
    }
}

pub const ALL_ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

pub fn key_kind_for(alg: Algorithm) -> Option<KeyKind> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(KeyKind::Rsa),
        Algorithm::ES256 => Some(KeyKind::P256),
        Algorithm::ES384 => Some(KeyKind::P384),
        Algorithm::EdDSA => Some(KeyKind::Ed25519),
        _ => None,
    }
}

/// Seconds beyond which a time claim means "forever" (2^53, about 285 million years):
/// `exp: 1e300` is read as this, so comparing claims with now ± leeway cannot overflow.
pub const MAX_CLAIM_SECS: i64 = 1 << 53;

/// A claim as a number of seconds (integers and floats both occur in the wild),
/// clamped to ±[`MAX_CLAIM_SECS`].
pub fn numeric_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Refusal> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(|s| Some(s.clamp(-MAX_CLAIM_SECS, MAX_CLAIM_SECS)))
            .ok_or_else(|| {
                Refusal::new(
                    DenyReason::TokenMalformed,
                    format!("claim {name} is not a number"),
                )
            }),
        Some(_) => Err(Refusal::new(
            DenyReason::TokenMalformed,
            format!("claim {name} is not a number"),
        )),
    }
}

/// A claim by name, or by dotted path (`realm_access.roles`) when no claim has that name.
pub fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Scopes from a space-separated string or an array of strings.
pub fn scopes_of(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .flat_map(|s| s.split_whitespace())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Human wording for "42s ago" / "in 3m".
pub fn ago(secs: i64) -> String {
    let s = secs.unsigned_abs();
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    // Behaviour: alg none, HMAC and self-named keys are refused with their reasons.
    #[test]
    fn attack_headers() {
        assert_eq!(
            asymmetric_alg("none").unwrap_err().reason,
            DenyReason::AlgorithmNotAllowed
        );
        assert_eq!(
            asymmetric_alg("NONE").unwrap_err().reason,
            DenyReason::AlgorithmNotAllowed
        );
        assert_eq!(
            asymmetric_alg("HS256").unwrap_err().reason,
            DenyReason::AlgorithmNotAllowed
        );
        let t = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","jku":"http://evil/jwks"}"#),
            b64("{}")
        );
        assert_eq!(parse(&t).unwrap_err().reason, DenyReason::TokenMalformed);
        let t = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(
            parse(&t).unwrap_err().reason,
            DenyReason::AlgorithmNotAllowed
        );
        let t = format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert_eq!(parse(&t).unwrap_err().reason, DenyReason::SignatureInvalid);
        assert!(parse("garbage").is_err());
        assert!(parse("a.b.c.d").is_err());
        assert!(!looks_like_jwt("opaque-token-value"));
    }

    // Behaviour: time claims of any size are clamped, so `exp + leeway` and `now - exp`
    // cannot overflow (exp 1e300 did; found by the `jwt` fuzz target).
    #[test]
    fn numeric_claims_are_clamped() {
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"a":1e300,"b":-1e300,"c":18446744073709551615,"d":-9223372036854775808,"e":1700000000.9,"f":"1"}"#,
        )
        .unwrap();
        let n = |k: &str| numeric_claim(&m, k).unwrap();
        assert_eq!(n("a"), Some(MAX_CLAIM_SECS));
        assert_eq!(n("b"), Some(-MAX_CLAIM_SECS));
        assert_eq!(n("c"), Some(MAX_CLAIM_SECS));
        assert_eq!(n("d"), Some(-MAX_CLAIM_SECS));
        assert_eq!(n("e"), Some(1_700_000_000));
        assert_eq!(n("none"), None);
        assert!(numeric_claim(&m, "f").is_err());
    }

    #[test]
    fn claims_by_path() {
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"realm_access":{"roles":["a","b"]},"scope":"x y","https://x/s":"q"}"#,
        )
        .unwrap();
        assert_eq!(
            scopes_of(claim(&m, "realm_access.roles").unwrap()),
            vec!["a", "b"]
        );
        assert_eq!(scopes_of(claim(&m, "scope").unwrap()), vec!["x", "y"]);
        assert!(claim(&m, "https://x/s").is_some());
        assert!(claim(&m, "nope.x").is_none());
    }
}
