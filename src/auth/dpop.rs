//! Step 7, after the token is verified: the DPoP proof (RFC 9449) of a request whose
//! token is DPoP-bound. This file parses and verifies one proof JWT on its own
//! (header, key, signature, claims) and computes the RFC 7638 thumbprint of its key;
//! `auth::sender` decides when a proof is needed and compares it with the request and
//! the token, and `auth::replay` remembers the `jti`s seen.
//!
//! A proof is a compact JWS with `typ: dpop+jwt`, an asymmetric `alg` (never `none` or
//! HMAC), and the client's public key as `jwk` in its header (private members refused);
//! its signature is verified with that key through the same aws-lc-rs verifier that
//! checks issuer tokens (`auth::jwks::Key`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwks;
use super::jwt::{self, Refusal};
use crate::error::DenyReason;

/// Longest proof looked at (bytes): a proof carries one public key (an RSA-4096 JWK is
/// under 1 KiB) and a few claims.
pub const MAX_PROOF_LEN: usize = 8 * 1024;

/// The `jwk` members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A proof whose signature verified with the key in its own header; its claims are
/// read but not yet compared with the request (see [`Proof::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub alg: String,
    /// RFC 7638 SHA-256 thumbprint of the proof's `jwk`, base64url (what `cnf.jkt` holds).
    pub jkt: String,
    pub htm: String,
    pub htu: String,
    pub iat: i64,
    pub jti: String,
    pub ath: Option<String>,
}

/// What the request says a proof must match.
pub struct Expected<'a> {
    pub method: &'a str,
    /// The request's URI as the client addressed tollgate (`scheme://host/path`).
    pub htu: &'a str,
    /// The access token the proof must cover (`ath`); `None` at a token endpoint,
    /// where there is no access token yet.
    pub token: Option<&'a str>,
    pub now: i64,
    /// How far `iat` may be from `now`, either way.
    pub iat_window_secs: i64,
}

fn invalid(d: impl Into<String>) -> Refusal {
    Refusal::new(DenyReason::DpopProofInvalid, d)
}

/// The proof algorithms accepted: every asymmetric one tollgate verifies.
pub fn alg_allowed(name: &str) -> Result<Algorithm, Refusal> {
    jwt::asymmetric_alg(name).map_err(|r| invalid(format!("DPoP proof: {}", r.description)))
}

/// Parses `proof` and verifies its signature with the `jwk` in its header.
pub fn parse(proof: &str) -> Result<Proof, Refusal> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(invalid("DPoP proof is too long"));
    }
    let mut parts = proof.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(
            "DPoP proof is not a JWT (expected three dot-separated parts)",
        ));
    };
    let header = json_part(h).ok_or_else(|| invalid("DPoP proof header is not base64url JSON"))?;
    match header.get("typ") {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("dpop+jwt") => {}
        _ => return Err(invalid("DPoP proof typ must be dpop+jwt")),
    }
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(invalid("DPoP proof header has no alg")),
    };
    let alg = alg_allowed(alg_name)?;
    if header.contains_key("crit") {
        return Err(invalid(
            "DPoP proof header has crit extensions, which are not supported",
        ));
    }
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(invalid(
            "DPoP proof header has no jwk (the client's public key)",
        ));
    };
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(invalid(format!(
            "DPoP proof jwk carries the private key member \"{m}\"; send the public key only"
        )));
    }
    let jkt = thumbprint(jwk)?;
    let parsed: Jwk = serde_json::from_value(Value::Object(jwk.clone()))
        .map_err(|_| invalid("DPoP proof jwk is not a valid public JWK"))?;
    let key = jwks::key_from_jwk(&parsed)
        .ok_or_else(|| invalid("DPoP proof jwk is not a usable signature key"))?;
    if Some(key.kind) != jwt::key_kind_for(alg) {
        return Err(invalid(format!(
            "DPoP proof alg {alg_name} does not match its jwk's key type"
        )));
    }
    if s.is_empty() || !key.verify(alg, &proof.as_bytes()[..h.len() + 1 + p.len()], s) {
        return Err(invalid(
            "DPoP proof signature does not verify with its own jwk",
        ));
    }
    let claims = json_part(p).ok_or_else(|| invalid("DPoP proof payload is not base64url JSON"))?;
    let text = |name: &str| match claims.get(name) {
        Some(Value::String(v)) if !v.is_empty() => Ok(v.clone()),
        _ => Err(invalid(format!("DPoP proof has no {name} claim"))),
    };
    let iat = jwt::numeric_claim(&claims, "iat")
        .map_err(|_| invalid("DPoP proof iat is not a number"))?
        .ok_or_else(|| invalid("DPoP proof has no iat claim"))?;
    let ath = match claims.get("ath") {
        None => None,
        Some(Value::String(a)) => Some(a.clone()),
        Some(_) => return Err(invalid("DPoP proof ath is not a string")),
    };
    Ok(Proof {
        alg: alg_name.to_owned(),
        jkt,
        htm: text("htm")?,
        htu: text("htu")?,
        iat,
        jti: text("jti")?,
        ath,
    })
}

fn json_part(part: &str) -> Option<Map<String, Value>> {
    URL_SAFE_NO_PAD
        .decode(part)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

impl Proof {
    /// Compares the proof with the request: `htm`, `htu` (query and fragment ignored,
    /// RFC 3986 syntax-based normalisation), `iat` within the window, and `ath`.
    pub fn check(&self, want: &Expected<'_>) -> Result<(), Refusal> {
        if self.htm != want.method {
            return Err(invalid(format!(
                "DPoP proof htm {} does not match the request method {}",
                shown(&self.htm),
                want.method
            )));
        }
        if !same_target(&self.htu, want.htu) {
            return Err(invalid(format!(
                "DPoP proof htu {} does not match the request URI {}",
                shown(&self.htu),
                want.htu
            )));
        }
        let age = want.now - self.iat;
        if age > want.iat_window_secs {
            return Err(invalid(format!(
                "DPoP proof is too old (iat {} ago; at most {}s)",
                jwt::ago(age),
                want.iat_window_secs
            )));
        }
        if -age > want.iat_window_secs {
            return Err(invalid(format!(
                "DPoP proof iat is {} in the future (at most {}s)",
                jwt::ago(-age),
                want.iat_window_secs
            )));
        }
        let Some(token) = want.token else {
            return Ok(());
        };
        match &self.ath {
            None => Err(invalid(
                "DPoP proof has no ath claim (the access token's hash)",
            )),
            Some(a) if *a != ath(token) => Err(invalid(
                "DPoP proof ath is not the hash of the access token sent with it",
            )),
            Some(_) => Ok(()),
        }
    }
}

/// A claim value as shown in an error: quoted, at most 80 characters.
fn shown(v: &str) -> String {
    let cut: String = v.chars().take(80).collect();
    format!("\"{cut}\"")
}

/// `base64url(SHA-256(token))`, the proof's `ath`.
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Whether two HTTP URIs name the same target, query and fragment ignored: scheme and
/// host case-insensitively, default ports dropped, dot segments and percent-encoding
/// case normalised (the `url` crate's WHATWG parsing).
pub fn same_target(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let mut u = url::Url::parse(s).ok()?;
        if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
            return None;
        }
        u.set_query(None);
        u.set_fragment(None);
        Some(u)
    };
    match (norm(a), norm(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) over the key type's required members.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, Refusal> {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("RSA") => &["e", "kty", "n"],
        Some("OKP") => &["crv", "kty", "x"],
        Some(k) => {
            return Err(invalid(format!(
                "DPoP proof jwk has kty {}, not EC, RSA or OKP",
                shown(k)
            )))
        }
        None => return Err(invalid("DPoP proof jwk has no kty")),
    };
    // The required members, as strings, in lexicographic order, without whitespace: a
    // BTreeMap of strings serialises to exactly that canonical form.
    let mut canonical = std::collections::BTreeMap::new();
    for m in members {
        match jwk.get(*m) {
            Some(Value::String(v)) => {
                canonical.insert(*m, v.as_str());
            }
            _ => return Err(invalid(format!("DPoP proof jwk has no {m}"))),
        }
    }
    let json = serde_json::to_string(&canonical).map_err(|_| invalid("DPoP proof jwk"))?;
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(json.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    // Behaviour: the thumbprint is RFC 7638's own example (section 3.1).
    #[test]
    fn rfc7638_example() {
        let jwk: Map<String, Value> = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    // Behaviour: the DPoP challenge's algs are exactly the algorithms a proof may use.
    #[test]
    fn challenge_lists_the_allowed_algorithms() {
        for name in crate::error::DPOP_ALGS.split(' ') {
            assert!(alg_allowed(name).is_ok(), "{name}");
        }
        assert_eq!(
            crate::error::DPOP_ALGS.split(' ').count(),
            jwt::ALL_ASYMMETRIC.len()
        );
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn signed(key: &EcdsaKeyPair, header: Value, claims: Value) -> String {
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn ec_jwk(key: &EcdsaKeyPair) -> Value {
        let point = key.public_key().as_ref();
        serde_json::json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..])})
    }

    fn key() -> EcdsaKeyPair {
        EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()
    }

    // Behaviour: a proof signed by its own jwk parses and matches its request; each
    // mismatch is refused with dpop_proof_invalid and says which claim.
    #[test]
    fn proof_verifies_and_checks_the_request() {
        let k = key();
        let claims = serde_json::json!({"htm": "GET", "htu": "https://API.example.com:443/v1/x?q=1",
            "iat": 1000, "jti": "j1", "ath": ath("tok")});
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": ec_jwk(&k)});
        let p = parse(&signed(&k, header.clone(), claims.clone())).unwrap();
        assert_eq!(p.jkt, thumbprint(ec_jwk(&k).as_object().unwrap()).unwrap());
        let want = Expected {
            method: "GET",
            htu: "https://api.example.com/v1/x",
            token: Some("tok"),
            now: 1030,
            iat_window_secs: 60,
        };
        p.check(&want).unwrap();
        let why = |w: Expected<'_>| p.check(&w).unwrap_err().description;
        assert!(why(Expected {
            method: "POST",
            ..want
        })
        .contains("htm"));
        assert!(why(Expected {
            htu: "https://api.example.com/v1/y",
            ..want
        })
        .contains("htu"));
        assert!(why(Expected {
            htu: "http://api.example.com/v1/x",
            ..want
        })
        .contains("htu"));
        assert!(why(Expected { now: 1100, ..want }).contains("too old"));
        assert!(why(Expected { now: 900, ..want }).contains("future"));
        assert!(why(Expected {
            token: Some("other"),
            ..want
        })
        .contains("ath"));
        // Another key signed it: the signature does not verify with the header's jwk.
        let other = key();
        let e = parse(&signed(&other, header.clone(), claims.clone())).unwrap_err();
        assert_eq!(e.reason, DenyReason::DpopProofInvalid);
        assert!(e.description.contains("signature"));
        // Private members, wrong typ, alg none and HMAC.
        let mut private = ec_jwk(&k);
        private["d"] = "AAAA".into();
        let h = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private});
        assert!(parse(&signed(&k, h, claims.clone()))
            .unwrap_err()
            .description
            .contains("private"));
        let h = serde_json::json!({"typ": "JWT", "alg": "ES256", "jwk": ec_jwk(&k)});
        assert!(parse(&signed(&k, h, claims.clone()))
            .unwrap_err()
            .description
            .contains("typ"));
        for alg in ["none", "HS256"] {
            let h = serde_json::json!({"typ": "dpop+jwt", "alg": alg, "jwk": ec_jwk(&k)});
            let t = format!("{}.{}.", b64(&h), b64(&claims));
            let e = parse(&t).unwrap_err();
            assert_eq!(e.reason, DenyReason::DpopProofInvalid, "{alg}");
            assert!(e.description.contains(alg), "{alg}: {}", e.description);
        }
        // A key type that does not fit the alg.
        let h = serde_json::json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": ec_jwk(&k)});
        assert!(parse(&signed(&k, h, claims)).is_err());
        assert!(parse("a.b").is_err());
        assert!(parse(&"x".repeat(MAX_PROOF_LEN + 1)).is_err());
    }

    #[test]
    fn targets_compare_normalised() {
        assert!(same_target(
            "https://a.example/x?y#z",
            "https://A.EXAMPLE:443/x"
        ));
        assert!(same_target("http://a:80/p/../q", "http://a/q"));
        assert!(!same_target("https://a/x", "https://a:8443/x"));
        assert!(!same_target("https://a/x", "https://b/x"));
        assert!(!same_target("ftp://a/x", "ftp://a/x"));
        assert!(!same_target("not a url", "not a url"));
    }
}
