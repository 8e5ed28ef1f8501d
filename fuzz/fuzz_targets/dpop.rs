//! DPoP proof parsing and checking (`auth::dpop::{parse, thumbprint, same_target}`,
//! `Proof::check`).
//!
//! The first input byte picks a mode (`b'0' + mode`, so seeds are readable text):
//! - `0`: the rest is a proof. Parsing must never panic, and a proof is accepted only
//!   when its `header.payload` is one this harness signed itself with the Ed25519 test
//!   key (no forgery, no `alg: none`/HMAC, no key confusion); its `jkt` is then that
//!   key's thumbprint.
//! - `1`: the rest is a claims object under a valid header, signed here: the claims
//!   checks run on arbitrary claims; an accepted proof matches its own `htm`/`htu`/`iat`
//!   and never another method or a stale `iat`.
//! - `2`: the rest is a JOSE header over valid claims, signed here with the Ed25519 key:
//!   it is accepted only as `EdDSA`, `typ: dpop+jwt`, with exactly the signing key's
//!   public `jwk` (whatever else the header says), and never with private members.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use tollgate::auth::dpop::{self, Expected};
use tollgate::token_service::keys::SigningKey;

const PEM: &[u8] = include_bytes!("../../tests/fixtures/ed25519.pem");
const HTU: &str = "https://api.fuzz.example/v1/reports";
const IAT: i64 = 1_700_000_000;

/// Claims of the proofs the harness signs (and of the seeds in `fuzz/seeds/dpop`).
const CLAIMS: &[&str] = &[
    r#"{"htm":"GET","htu":"https://api.fuzz.example/v1/reports","iat":1700000000,"jti":"j1","ath":"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"}"#,
    r#"{"htm":"POST","htu":"https://API.fuzz.example:443/v1/reports?x=1#f","iat":1700000000.5,"jti":"j2"}"#,
];

struct Fixture {
    raw: jsonwebtoken::EncodingKey,
    jwk: Value,
    jkt: String,
    /// `header.payload` of every proof signed in mode 0.
    signed: HashSet<String>,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn sign(f_raw: &jsonwebtoken::EncodingKey, header: &[u8], claims: &[u8]) -> (String, String) {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), f_raw, jsonwebtoken::Algorithm::EdDSA)
        .expect("sign");
    (input.clone(), format!("{input}.{sig}"))
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = SigningKey::from_pem(PEM).expect("fixture key");
        let mut jwk = key.jwks()["keys"][0].clone();
        let o = jwk.as_object_mut().expect("jwk");
        o.retain(|k, _| matches!(k.as_str(), "kty" | "crv" | "x"));
        let jkt = dpop::thumbprint(jwk.as_object().expect("jwk")).expect("thumbprint");
        let raw = jsonwebtoken::EncodingKey::from_ed_pem(PEM).expect("ed25519");
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}).to_string();
        let mut signed = HashSet::new();
        let mut proofs = Vec::new();
        for c in CLAIMS {
            let (input, proof) = sign(&raw, header.as_bytes(), c.as_bytes());
            signed.insert(input);
            proofs.push(proof);
        }
        // `TOLLGATE_FUZZ_DPOP_SEEDS=seeds/dpop cargo fuzz run dpop -- -runs=0` writes the
        // signed-proof seeds (Ed25519 signatures are deterministic: they stay valid).
        if let Ok(dir) = std::env::var("TOLLGATE_FUZZ_DPOP_SEEDS") {
            for (i, p) in proofs.iter().enumerate() {
                std::fs::write(format!("{dir}/signed-{i}"), format!("0{p}")).expect("seed");
            }
            std::fs::write(format!("{dir}/header-valid"), format!("2{header}")).expect("seed");
        }
        Fixture {
            raw,
            jwk,
            jkt,
            signed,
        }
    })
}

fn header_of(proof: &str) -> Option<Map<String, Value>> {
    let h = proof.split('.').next()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()
}

/// Properties of any accepted proof.
fn accepted(f: &Fixture, proof: &str, p: &dpop::Proof) {
    assert_eq!(p.jkt, f.jkt, "accepted only with the signing key's jwk");
    let h = header_of(proof).expect("accepted proof has a JSON header");
    assert_eq!(h["alg"], "EdDSA");
    let jwk = h["jwk"].as_object().expect("jwk object");
    for m in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        assert!(!jwk.contains_key(m), "private member {m} accepted");
    }
    assert!(!p.htm.is_empty() && !p.htu.is_empty() && !p.jti.is_empty());
    // The proof matches its own request, at its own time, and nothing else.
    let own = Expected {
        method: &p.htm,
        htu: &p.htu,
        token: None,
        now: p.iat,
        iat_window_secs: 60,
    };
    let htu_ok = url::Url::parse(&p.htu)
        .ok()
        .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    assert_eq!(p.check(&own).is_ok(), htu_ok, "own request: {p:?}");
    let other = if p.htm == "GET" { "DELETE" } else { "GET" };
    assert!(p.check(&Expected { method: other, ..own }).is_err());
    assert!(p
        .check(&Expected {
            now: p.iat.saturating_add(61),
            ..own
        })
        .is_err());
    assert!(p
        .check(&Expected {
            now: p.iat.saturating_sub(61),
            ..own
        })
        .is_err());
    match &p.ath {
        Some(a) => {
            let with = Expected {
                token: Some("access-token"),
                ..own
            };
            assert_eq!(
                p.check(&with).is_ok(),
                htu_ok && *a == dpop::ath("access-token")
            );
        }
        None => assert!(p
            .check(&Expected {
                token: Some("t"),
                ..own
            })
            .is_err()),
    }
    assert!(dpop::same_target(&p.htu, &p.htu) == htu_ok);
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode.wrapping_sub(b'0') % 3 {
        0 => {
            let Ok(proof) = std::str::from_utf8(rest) else {
                return;
            };
            let _ = dpop::same_target(proof, HTU);
            if let Ok(p) = dpop::parse(proof) {
                let input = proof.rsplit_once('.').map(|(i, _)| i).unwrap_or("");
                assert!(f.signed.contains(input), "forged proof accepted: {proof}");
                accepted(f, proof, &p);
            }
        }
        1 => {
            let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": f.jwk}).to_string();
            let (_, proof) = sign(&f.raw, header.as_bytes(), rest);
            if let Ok(p) = dpop::parse(&proof) {
                let claims: Map<String, Value> =
                    serde_json::from_slice(rest).expect("accepted claims are JSON");
                assert!(claims.contains_key("iat"));
                accepted(f, &proof, &p);
                let _ = p.check(&Expected {
                    method: "GET",
                    htu: HTU,
                    token: Some("x"),
                    now: IAT,
                    iat_window_secs: 60,
                });
            }
        }
        _ => {
            if let Ok(m) = serde_json::from_slice::<Map<String, Value>>(rest) {
                if let Some(Value::Object(jwk)) = m.get("jwk") {
                    let _ = dpop::thumbprint(jwk);
                }
            }
            let (_, proof) = sign(&f.raw, rest, CLAIMS[0].as_bytes());
            if let Ok(p) = dpop::parse(&proof) {
                accepted(f, &proof, &p);
            }
        }
    }
});
