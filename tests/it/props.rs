//! Property tests against simple reference models (proptest).
//!
//! - Path normalisation: idempotent; the output is canonical (starts with `/`, no `//`,
//!   no `.`/`..` segment, never an escaped `/`, `\` or NUL); for paths of unreserved
//!   characters it equals a straightforward reference (decode, drop `.`, pop on `..`).
//! - Permissions: `policy::authorize` gives the verdict and the reason code of a linear
//!   reference model written from SPEC ("permissions": deny unless an entry allows;
//!   gates: trusted client, route scopes, endpoint, method, endpoint scopes), also for
//!   requests disguised with encodings, dot-segments, repeated and trailing slashes.
//! - Time claims: `exp`/`nbf` of any size are judged like the reference, never panic.
//!
//! Case counts keep the whole file under a few seconds in debug builds.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use tollgate::auth::jwks::{KeySet, KeyStore};
use tollgate::auth::{check_claims, Issuer, IssuerKind};
use tollgate::error::DenyReason;
use tollgate::policy::{authorize, AuthRule, Identity, Permission, Permissions};
use tollgate::route::normalize_path;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------
// Path normalisation

/// Pieces that make paths interesting: separators, dot-segments, escapes (good, bad,
/// malformed), parameters, backslashes, control characters, multi-byte UTF-8.
const PIECES: &[&str] = &[
    "/", "/", "/", "a", "b", "Z", "~", "-", "_", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c",
    "%5C", "%00", "%41", "%7e", "%7E", "%20", "%3b", "%3B", "%25", ";", "%", "%g1", "%4", "\\",
    "\u{e9}", "%C3%A9", "\u{1}", "\u{7f}", "?", "*", "//", "/./", "/../",
];

fn raw_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(select(PIECES), 0..14).prop_map(|v| format!("/{}", v.concat())),
        1 => prop::collection::vec(select(PIECES), 0..8).prop_map(|v| v.concat()),
        1 => any::<String>().prop_map(|s| format!("/{s}")),
    ]
}

fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

/// Checks the shape of an accepted path; returns a description of the first flaw.
fn canonical_flaw(n: &str) -> Option<String> {
    if !n.starts_with('/') {
        return Some("does not start with /".into());
    }
    if n.contains("//") {
        return Some("contains //".into());
    }
    if n.split('/').any(|s| s == "." || s == "..") {
        return Some("has a dot-segment".into());
    }
    if n.contains('\\') || n.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Some("has a backslash or control character".into());
    }
    for (i, _) in n.match_indices('%') {
        let esc = n.get(i + 1..i + 3).unwrap_or("");
        let Ok(v) = u8::from_str_radix(esc, 16) else {
            return Some(format!("malformed escape at {i}"));
        };
        if esc != esc.to_ascii_uppercase() {
            return Some(format!("lower-case escape %{esc}"));
        }
        if is_unreserved(v as char) || matches!(v, b'/' | b'\\' | 0) {
            return Some(format!("escape %{esc} should not survive"));
        }
    }
    None
}

proptest! {
    #![proptest_config(config(2000))]

    // Behaviour: normalisation is idempotent and its output is canonical.
    #[test]
    fn normalisation_is_idempotent_and_canonical(raw in raw_path()) {
        if let Ok(n) = normalize_path(&raw) {
            prop_assert_eq!(normalize_path(&n), Ok(n.clone()), "not idempotent: {:?}", raw);
            prop_assert_eq!(canonical_flaw(&n), None, "{:?} -> {:?}", raw, n);
        }
    }

    // Behaviour: a path that carries an escaped `/` or `\` is refused, never decoded.
    #[test]
    fn escaped_slashes_are_refused(raw in raw_path()) {
        let lower = raw.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            prop_assert!(normalize_path(&raw).is_err(), "{:?} accepted", raw);
        }
    }
}

/// A path segment for the reference model: (raw text, decoded text).
fn unreserved_segment() -> impl Strategy<Value = (String, String)> {
    let word = prop::collection::vec(
        (
            select(
                &[
                    'a', 'b', 'Z', '0', '9', '-', '_', '~', '.', 'q', 'M', 'x', 'y', '.',
                ][..],
            ),
            0u8..4,
        ),
        1..5,
    )
    .prop_filter("a dot-segment is generated separately", |w| {
        let s: String = w.iter().map(|(c, _)| *c).collect();
        s != "." && s != ".."
    })
    .prop_map(|w| {
        let decoded: String = w.iter().map(|(c, _)| *c).collect();
        let raw: String = w
            .iter()
            .map(|(c, how)| match how {
                1 => format!("%{:02X}", *c as u32),
                2 => format!("%{:02x}", *c as u32),
                _ => c.to_string(),
            })
            .collect();
        (raw, decoded)
    });
    prop_oneof![
        6 => word,
        1 => Just((".".to_owned(), ".".to_owned())),
        1 => Just(("..".to_owned(), "..".to_owned())),
        1 => Just((String::new(), String::new())),
    ]
}

/// RFC 3986-style reference for paths of unreserved characters: decode, collapse empty
/// segments, drop `.`, pop on `..` (refused above the root), keep a trailing `/`.
fn reference_normalise(segs: &[(String, String)]) -> Option<String> {
    let mut stack: Vec<&str> = Vec::new();
    for (_, d) in segs {
        match d.as_str() {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            w => stack.push(w),
        }
    }
    let trailing = segs
        .last()
        .is_none_or(|(_, d)| d.is_empty() || d == "." || d == "..");
    let mut out = format!("/{}", stack.join("/"));
    if !stack.is_empty() && trailing {
        out.push('/');
    }
    Some(out)
}

proptest! {
    #![proptest_config(config(2000))]

    // Behaviour: on unreserved paths, normalisation is exactly the reference model.
    #[test]
    fn normalisation_matches_reference(segs in prop::collection::vec(unreserved_segment(), 0..8)) {
        let raw = format!(
            "/{}",
            segs.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join("/")
        );
        prop_assert_eq!(normalize_path(&raw).ok(), reference_normalise(&segs), "raw {:?}", raw);
    }

    // Behaviour: a `.`/`..` segment spelled with escapes is refused, wherever it stands.
    #[test]
    fn escaped_dot_segments_are_refused(
        before in prop::collection::vec(select(&["a", "b", "c"][..]), 0..3),
        dots in select(&["%2e", "%2E", ".%2e", "%2e.", "%2E%2e"][..]),
        after in prop::collection::vec(select(&["a", "b", "c"][..]), 0..3),
    ) {
        let mut segs: Vec<&str> = before.clone();
        segs.push(dots);
        segs.extend(&after);
        let raw = format!("/{}", segs.join("/"));
        prop_assert!(normalize_path(&raw).is_err(), "{:?} accepted", raw);
    }
}

// ---------------------------------------------------------------------------------
// Permissions

const METHODS: &[Method] = &[Method::GET, Method::POST, Method::DELETE, Method::PUT];

#[derive(Debug, Clone)]
struct Rule {
    /// Literal segments or `*`.
    segs: Vec<&'static str>,
    /// A trailing `/**`.
    rest: bool,
    /// None: `methods: ["*"]`.
    methods: Option<Vec<Method>>,
    scopes: Vec<&'static str>,
}

impl Rule {
    fn path(&self) -> String {
        let mut p = format!("/{}", self.segs.join("/"));
        if self.rest {
            p = format!("{}/**", p.trim_end_matches('/'));
        }
        p
    }

    /// SPEC: exact segments, `*` one segment, a trailing `/**` any rest (none included).
    fn matches(&self, path: &[&str]) -> bool {
        let n = self.segs.len();
        if self.rest {
            if path.len() < n {
                return false;
            }
        } else if path.len() != n {
            return false;
        }
        self.segs.iter().zip(path).all(|(p, s)| *p == "*" || p == s)
    }
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(select(&["a", "b", "c", "*"][..]), 0..4),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.8, subsequence(METHODS.to_vec(), 1..=3)),
        subsequence(vec!["s1", "s2"], 0..=2),
    )
        .prop_map(|(segs, rest, methods, scopes)| Rule {
            segs,
            rest,
            methods,
            scopes,
        })
}

#[derive(Debug, Clone)]
struct Case {
    route_scopes: Vec<&'static str>,
    clients: Option<Vec<&'static str>>,
    rules: Option<Vec<Rule>>,
    client: Option<&'static str>,
    granted: Vec<&'static str>,
    method: Method,
    /// The canonical request path, as segments.
    path: Vec<&'static str>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        subsequence(vec!["r1", "s1"], 0..=2),
        prop::option::weighted(0.3, subsequence(vec!["c1", "c2"], 0..=2)),
        prop::option::weighted(0.85, prop::collection::vec(rule(), 0..6)),
        prop::option::weighted(0.9, select(&["c1", "c2", "c3"][..])),
        subsequence(vec!["r1", "s1", "s2"], 0..=3),
        select(METHODS),
        prop::collection::vec(select(&["a", "b", "c", "A", "C"][..]), 0..5),
    )
        .prop_map(
            |(route_scopes, clients, rules, client, granted, method, path)| Case {
                route_scopes,
                clients,
                rules,
                client,
                granted,
                method,
                path,
            },
        )
}

/// The reference: SPEC's gates, in order, over a plain list of rules.
fn model(c: &Case) -> Result<(), DenyReason> {
    let has = |s: &&str| c.granted.contains(s);
    if let Some(clients) = &c.clients {
        if !c.client.is_some_and(|x| clients.contains(&x)) {
            return Err(DenyReason::ClientNotAllowed);
        }
    }
    if !c.route_scopes.iter().all(has) {
        return Err(DenyReason::ScopeMissing);
    }
    let Some(rules) = &c.rules else {
        return Ok(());
    };
    let on_path: Vec<&Rule> = rules.iter().filter(|r| r.matches(&c.path)).collect();
    let with_method: Vec<&&Rule> = on_path
        .iter()
        .filter(|r| r.methods.as_ref().is_none_or(|m| m.contains(&c.method)))
        .collect();
    if with_method.iter().any(|r| r.scopes.iter().all(has)) {
        Ok(())
    } else if !with_method.is_empty() {
        Err(DenyReason::ScopeMissing)
    } else if !on_path.is_empty() {
        Err(DenyReason::MethodNotAllowed)
    } else {
        Err(DenyReason::EndpointNotAllowed)
    }
}

fn tollgate_verdict(c: &Case, raw_path: &str) -> Result<(), DenyReason> {
    let path = normalize_path(raw_path).expect("the disguises only use accepted forms");
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let rule = AuthRule {
        issuers: vec![0],
        scopes: strings(&c.route_scopes),
        clients: c.clients.as_deref().map(strings),
        claims: Vec::new(),
    };
    let perms = c.rules.as_ref().map(|rules| {
        Permissions::new(
            rules
                .iter()
                .map(|r| {
                    Permission::new(&r.path(), r.methods.clone(), strings(&r.scopes))
                        .expect("generated patterns are valid")
                })
                .collect(),
        )
    });
    let id = Identity {
        issuer: "corp".into(),
        subject: Some("s".into()),
        client_id: c.client.map(str::to_owned),
        scopes: strings(&c.granted),
        ..Identity::default()
    };
    authorize(&rule, perms.as_ref(), &c.method, &path, &id)
        .result
        .map_err(|e| e.deny_reason().expect("policy denials carry a reason"))
}

/// Spells the canonical path differently: escaped unreserved characters, `.` and
/// `x/..` detours, repeated slashes, a trailing slash. Every spelling normalises back.
fn disguise(path: &[&str], tricks: &[u8]) -> String {
    let mut t = tricks.iter().copied().cycle();
    let mut out = String::new();
    for seg in path {
        match t.next().unwrap_or(0) % 4 {
            1 => out.push_str("/."),
            2 => out.push_str("/zz/.."),
            3 => out.push('/'),
            _ => {}
        }
        out.push('/');
        for ch in seg.chars() {
            match t.next().unwrap_or(0) % 3 {
                1 => out.push_str(&format!("%{:02X}", ch as u32)),
                2 => out.push_str(&format!("%{:02x}", ch as u32)),
                _ => out.push(ch),
            }
        }
    }
    if out.is_empty() || t.next().unwrap_or(0) % 2 == 1 {
        out.push('/');
    }
    out
}

proptest! {
    #![proptest_config(config(1500))]

    // Behaviour: SPEC's permission semantics, verdict and reason code, on canonical paths.
    #[test]
    fn authorize_matches_reference(c in case()) {
        let path = format!("/{}", c.path.join("/"));
        prop_assert_eq!(tollgate_verdict(&c, &path), model(&c), "{:?}", c);
    }

    // Behaviour: no encoding, dot-segment, slash or trailing-slash trick changes the
    // decision: the disguised request gets the verdict of the path it stands for.
    #[test]
    fn disguised_requests_get_the_canonical_verdict(
        c in case(),
        tricks in prop::collection::vec(any::<u8>(), 1..24),
    ) {
        let raw = disguise(&c.path, &tricks);
        prop_assert_eq!(tollgate_verdict(&c, &raw), model(&c), "raw {:?}, {:?}", raw, c);
    }
}

// ---------------------------------------------------------------------------------
// Time claims

const NOW: i64 = 1_700_000_000;
const LEEWAY: i64 = 30;

fn issuer() -> Issuer {
    Issuer {
        name: "corp".into(),
        issuer: "https://idp.example".into(),
        kind: IssuerKind::Jwt(Arc::new(KeyStore::with_static_keys(
            "corp".into(),
            "https://idp.example".into(),
            KeySet::default(),
        ))),
        audiences: vec!["api".into()],
        skip_audience_check: false,
        algorithms: tollgate::auth::jwt::ALL_ASYMMETRIC.to_vec(),
        leeway: Duration::from_secs(LEEWAY as u64),
        scope_claims: vec!["scope".into()],
        client_claims: vec!["client_id".into()],
        sender_constraint: Default::default(),
        dpop: Default::default(),
        fingerprint: [0; 32],
    }
}

/// A time claim of any size and kind: near now, huge, negative, fractional.
fn time_claim() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (-200i64..200).prop_map(|d| serde_json::json!(NOW + d)),
        any::<i64>().prop_map(|v| serde_json::json!(v)),
        any::<u64>().prop_map(|v| serde_json::json!(v)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|v| serde_json::json!(v)),
        select(&[1e300, -1e300, 9.3e18, -9.3e18, 1.7e9 + 0.5][..])
            .prop_map(|v| serde_json::json!(v)),
    ]
}

/// The reference: seconds as a float, "forever" beyond 2^53 either way.
fn seconds(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .expect("numbers only")
        .clamp(-(2f64.powi(53)), 2f64.powi(53))
        .trunc()
}

proptest! {
    #![proptest_config(config(1000))]

    // Behaviour: exp and nbf of any size are judged against now ± leeway, and never panic
    // (exp 1e300 used to overflow `exp + leeway`; found by the `jwt` fuzz target).
    #[test]
    fn time_claims_match_reference(exp in time_claim(), nbf in prop::option::of(time_claim())) {
        let mut claims = serde_json::json!({"iss": "https://idp.example", "aud": "api", "exp": exp});
        if let Some(n) = &nbf {
            claims["nbf"] = n.clone();
        }
        let claims = claims.as_object().expect("object").clone();
        let got = check_claims(&issuer(), &claims, NOW, true).map(|_| ()).map_err(|r| r.reason);
        let (now, leeway) = (NOW as f64, LEEWAY as f64);
        let want = if now > seconds(&exp) + leeway {
            Err(DenyReason::TokenExpired)
        } else if nbf.as_ref().is_some_and(|n| seconds(n) > now + leeway) {
            Err(DenyReason::TokenNotYetValid)
        } else {
            Ok(())
        };
        prop_assert_eq!(got, want, "exp {:?}, nbf {:?}", exp, nbf);
    }
}

// Regression (the `jwt` fuzz target's input): absurd time claims neither panic nor
// turn a far-future token into an expired one.
#[test]
fn absurd_time_claims_are_judged_not_overflowed() {
    let claims = |v: serde_json::Value| v.as_object().expect("object").clone();
    let far = claims(serde_json::json!({
        "iss": "https://idp.example", "aud": "api", "exp": 1e300, "nbf": -1e300, "scope": "a b"
    }));
    let (id, until) = check_claims(&issuer(), &far, NOW, true).expect("far-future token");
    assert_eq!(id.scopes, vec!["a", "b"]);
    assert!(until.is_some_and(|u| u > NOW));
    let past =
        claims(serde_json::json!({"iss": "https://idp.example", "aud": "api", "exp": -1e300}));
    assert_eq!(
        check_claims(&issuer(), &past, NOW, true)
            .unwrap_err()
            .reason,
        DenyReason::TokenExpired
    );
    let max = claims(
        serde_json::json!({"iss": "https://idp.example", "aud": "api", "exp": i64::MAX, "nbf": i64::MIN}),
    );
    assert!(check_claims(&issuer(), &max, NOW, true).is_ok());
}

// ---------------------------------------------------------------------------------
// DPoP proofs (the `dpop` fuzz target's no-forgery property, as a property test)

mod dpop_proofs {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use std::sync::OnceLock;
    use tollgate::auth::dpop;

    fn key() -> &'static EcdsaKeyPair {
        static K: OnceLock<EcdsaKeyPair> = OnceLock::new();
        K.get_or_init(|| EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    fn jwk() -> Value {
        let p = key().public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])})
    }

    fn signed(header: &[u8], claims: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = key().sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn valid() -> String {
        let h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk()}).to_string();
        signed(
            h.as_bytes(),
            br#"{"htm":"GET","htu":"https://a.example/x","iat":1,"jti":"j"}"#,
        )
    }

    /// A header built from parts that matter: typ, alg, the jwk (ours, altered, with a
    /// private member, or another type) and extra members.
    fn header() -> impl Strategy<Value = Value> {
        let typ = prop_oneof![Just("dpop+jwt"), Just("DPOP+JWT"), Just("JWT"), Just("")];
        let alg = prop_oneof![
            Just("ES256"),
            Just("ES384"),
            Just("RS256"),
            Just("EdDSA"),
            Just("none"),
            Just("HS256")
        ];
        let jwk_kind = 0..5u8;
        let extra = prop_oneof![
            Just(None),
            Just(Some("crit")),
            Just(Some("kid")),
            Just(Some("jku"))
        ];
        (typ, alg, jwk_kind, extra).prop_map(|(typ, alg, kind, extra)| {
            let mut j = jwk();
            match kind {
                1 => j["d"] = "AAAA".into(),
                2 => j["x"] = j["y"].clone(),
                3 => j["crv"] = "P-384".into(),
                4 => j = json!({"kty": "oct", "k": "c2VjcmV0"}),
                _ => {}
            }
            let mut h = json!({"typ": typ, "alg": alg, "jwk": j});
            if let Some(e) = extra {
                h[e] = json!(["x"]);
            }
            h
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        // Behaviour: a proof is accepted only with typ dpop+jwt, alg ES256 (the key's
        // type), our own public jwk, and no crit; never none, HMAC or a private jwk.
        #[test]
        fn accepted_only_as_signed(h in header()) {
            let claims = br#"{"htm":"GET","htu":"https://a.example/x","iat":1,"jti":"j"}"#;
            let got = dpop::parse(&signed(h.to_string().as_bytes(), claims));
            let want = h["typ"].as_str().unwrap().eq_ignore_ascii_case("dpop+jwt")
                && h["alg"] == "ES256"
                && h["jwk"] == jwk()
                && h.get("crit").is_none();
            prop_assert_eq!(got.is_ok(), want, "{} -> {:?}", h, got);
        }

        // Behaviour: changing any one character of a valid proof never yields another
        // accepted proof (the signature covers header and claims; base64 is canonical).
        #[test]
        fn one_changed_character_is_refused(at in any::<prop::sample::Index>(), c in prop::char::range('!', '~')) {
            let p = valid();
            let i = at.index(p.len());
            prop_assume!(p.as_bytes()[i] != c as u8);
            let mut changed = p.clone().into_bytes();
            changed[i] = c as u8;
            let changed = String::from_utf8(changed).unwrap();
            prop_assert!(dpop::parse(&changed).is_err(), "{}", changed);
        }
    }
}
