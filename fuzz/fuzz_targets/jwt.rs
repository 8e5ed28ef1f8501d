//! JWT parsing and verification (`auth::jwt`, `auth::verify_jwt`, `auth::check_claims`).
//!
//! The first input byte picks a mode (`b'0' + mode`, so seeds are readable text):
//! - `0`: the rest is a token. Parsing, the claims helpers and the claims checks must
//!   never panic, and verification against the fixed issuer (test keys from
//!   `tests/fixtures`) may only succeed when the token's `header.payload` is one this
//!   harness signed itself: nothing else may ever be accepted.
//! - `1`: the rest is a claims object, signed here with the Ed25519 test key, so the
//!   checks after a valid signature (exp, nbf, iss, aud, scopes, client) run on
//!   arbitrary claims. When it verifies, the identity must obey the issuer's rules.
//! - `2`: the rest is a JOSE header, followed by valid claims and signed with the
//!   Ed25519 key: the header must never talk the verifier into another algorithm
//!   (`alg` confusion, `none`, HMAC, self-named keys).
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tollgate::auth::jwks::{KeySet, KeyStore};
use tollgate::auth::{check_claims, jwt, verify_jwt, Issuer, IssuerKind, Trace};
use tollgate::token_service::keys::SigningKey;

const ISSUER: &str = "https://idp.fuzz.example";
const AUDIENCE: &str = "https://api.fuzz.example";
/// A fixed "now" for the pure claims checks, so runs are reproducible.
const NOW: i64 = 1_700_000_000;

/// Claims of the tokens the harness signs (and of the seeds in `fuzz/seeds/jwt`).
/// `exp` is in 2100 so that the seeds stay valid.
pub const CLAIMS: &[&str] = &[
    r#"{"iss":"https://idp.fuzz.example","aud":"https://api.fuzz.example","sub":"u1","client_id":"dash","scope":"analytics.read bi.x","exp":4102444800}"#,
    r#"{"iss":"https://idp.fuzz.example","aud":["x","https://api.fuzz.example"],"azp":"c2","scp":["a","b c"],"exp":4102444800,"nbf":1}"#,
    r#"{"iss":"https://idp.fuzz.example","aud":"https://api.fuzz.example","realm_access":{"roles":["r1"]},"exp":4102444800.5}"#,
];

const PEMS: &[&[u8]] = &[
    include_bytes!("../../tests/fixtures/ed25519.pem"),
    include_bytes!("../../tests/fixtures/ec256.pem"),
    include_bytes!("../../tests/fixtures/ec384.pem"),
    include_bytes!("../../tests/fixtures/rsa-a.pem"),
];

struct Fixture {
    issuer: Issuer,
    ed25519: SigningKey,
    /// The same Ed25519 key, for signing arbitrary `header.payload` in mode 2.
    ed25519_raw: jsonwebtoken::EncodingKey,
    /// `header.payload` of every token signed by this harness in mode 0.
    signed: HashSet<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys: Vec<SigningKey> = PEMS
            .iter()
            .map(|p| SigningKey::from_pem(p).expect("fixture key"))
            .collect();
        let mut set = KeySet::default();
        let mut signed = HashSet::new();
        let mut tokens = Vec::new();
        for k in &keys {
            for key in k.key_set().all {
                if let Some(kid) = &key.kid {
                    set.by_kid.insert(kid.clone(), key.clone());
                }
                set.all.push(key);
            }
            for c in CLAIMS {
                let v: Value = serde_json::from_str(c).expect("claims");
                let t = k.sign("at+jwt", &v).expect("sign");
                let (input, _) = t.rsplit_once('.').expect("three parts");
                signed.insert(input.to_owned());
                tokens.push(t);
            }
        }
        let store = KeyStore::with_static_keys("fuzz".into(), ISSUER.into(), set);
        let issuer = Issuer {
            name: "fuzz".into(),
            issuer: ISSUER.into(),
            kind: IssuerKind::Jwt(Arc::new(store)),
            audiences: vec![AUDIENCE.into()],
            skip_audience_check: false,
            algorithms: jwt::ALL_ASYMMETRIC.to_vec(),
            leeway: Duration::from_secs(30),
            scope_claims: vec!["scope".into(), "scp".into(), "realm_access.roles".into()],
            client_claims: vec!["client_id".into(), "azp".into()],
            sender_constraint: Default::default(),
            dpop: Default::default(),
            fingerprint: [7; 32],
        };
        // `TOLLGATE_FUZZ_JWT_SEEDS=fuzz/seeds/jwt cargo fuzz run jwt -- -runs=0` rewrites
        // the signed-token seeds (ECDSA and PSS signatures differ on every run).
        if let Ok(dir) = std::env::var("TOLLGATE_FUZZ_JWT_SEEDS") {
            for (i, t) in tokens.iter().enumerate() {
                std::fs::write(format!("{dir}/signed-{i}"), format!("0{t}")).expect("write seed");
            }
        }
        let ed25519 = SigningKey::from_pem(PEMS[0]).expect("ed25519");
        let ed25519_raw = jsonwebtoken::EncodingKey::from_ed_pem(PEMS[0]).expect("ed25519");
        Fixture {
            issuer,
            ed25519,
            ed25519_raw,
            signed,
        }
    })
}

/// Verifies against the fixed issuer. Static keys never wait on the network, so the
/// future completes on its first poll.
fn verify(token: &str) -> Option<Result<tollgate::policy::Identity, jwt::Refusal>> {
    let jws = jwt::parse(token).ok()?;
    let mut trace = Trace::default();
    let r = verify_jwt(&fixture().issuer, &jws, &mut trace)
        .now_or_never()
        .expect("verification with static keys never waits");
    Some(r.map(|(id, _ttl)| id))
}

/// What every accepted identity must satisfy, whatever the claims were.
fn check_identity(claims: &Map<String, Value>, id: &tollgate::policy::Identity) {
    assert_eq!(&*id.issuer, "fuzz");
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
    let aud_ok = match claims.get("aud") {
        Some(Value::String(s)) => s == AUDIENCE,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "accepted a token without our audience: {claims:?}");
    assert!(
        matches!(claims.get("exp"), Some(Value::Number(_))),
        "accepted a token without a numeric exp"
    );
}

fn helpers(token: &str) {
    let looks = jwt::looks_like_jwt(token);
    let Ok(jws) = jwt::parse(token) else {
        return;
    };
    assert!(
        looks,
        "parse accepted what looks_like_jwt refuses: {token:?}"
    );
    assert!(jwt::asymmetric_alg(&jws.alg_name).is_ok());
    assert_eq!(
        format!("{}.{}", jws.signing_input, jws.signature),
        token,
        "signing input + signature must be the whole token"
    );
    for name in ["exp", "nbf", "iat"] {
        let _ = jwt::numeric_claim(&jws.claims, name);
    }
    for path in [
        "scope",
        "scp",
        "realm_access.roles",
        "a.b.c",
        ".",
        "",
        "client_id",
    ] {
        if let Some(v) = jwt::claim(&jws.claims, path) {
            for s in jwt::scopes_of(v) {
                assert!(!s.is_empty() && !s.contains(char::is_whitespace));
            }
        }
    }
    let _ = jwt::ago(
        jwt::numeric_claim(&jws.claims, "exp")
            .ok()
            .flatten()
            .unwrap_or(0),
    );
    let issuer = &fixture().issuer;
    for exp_required in [true, false] {
        if let Ok((id, until)) = check_claims(issuer, &jws.claims, NOW, exp_required) {
            if exp_required {
                check_identity(&jws.claims, &id);
            }
            if let Some(until) = until {
                assert!(until >= NOW, "an accepted token is already over");
            }
        }
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode.wrapping_sub(b'0') % 3 {
        0 => {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            helpers(token);
            if let Some(Ok(id)) = verify(token) {
                let (input, _) = token
                    .rsplit_once('.')
                    .expect("verified tokens have 3 parts");
                assert!(
                    f.signed.contains(input),
                    "accepted a token this harness never signed: {token:?}"
                );
                let jws = jwt::parse(token).expect("verified token parses");
                check_identity(&jws.claims, &id);
            }
        }
        1 => {
            let Ok(claims) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            let Ok(token) = f.ed25519.sign("at+jwt", &claims) else {
                return;
            };
            helpers(&token);
            if let Some(Ok(id)) = verify(&token) {
                let jws = jwt::parse(&token).expect("verified token parses");
                check_identity(&jws.claims, &id);
            }
        }
        _ => {
            let Ok(header) = std::str::from_utf8(rest) else {
                return;
            };
            let input = format!("{}.{}", b64(header.as_bytes()), b64(CLAIMS[0].as_bytes()));
            let sig = jsonwebtoken::crypto::sign(
                input.as_bytes(),
                &f.ed25519_raw,
                jsonwebtoken::Algorithm::EdDSA,
            )
            .expect("sign");
            let token = format!("{input}.{sig}");
            helpers(&token);
            if let Some(Ok(_)) = verify(&token) {
                let jws = jwt::parse(&token).expect("verified token parses");
                assert_eq!(
                    jws.alg_name, "EdDSA",
                    "an Ed25519 signature verified under another alg: {header:?}"
                );
            }
        }
    }
});
