//! Sender-constrained tokens over real sockets: DPoP (RFC 9449) proofs made here with
//! real EC P-256 keys (aws-lc-rs) for tokens the test IdP minted with `cnf.jkt`;
//! certificate-bound tokens (RFC 8705) over a real TLS connection with a client
//! certificate; and the token service issuing bound tokens that are then used.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::*;
use crate::gwconfig::{idp_introspection, GatewayConfig, AUDIENCE};
use crate::redis_server::RedisServer;
use crate::tls::{der_of, f};

/// A client's DPoP key.
struct DpopKey(EcdsaKeyPair);

static JTI: AtomicU64 = AtomicU64::new(0);

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

impl DpopKey {
    fn new() -> Self {
        DpopKey(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    fn jwk(&self) -> Value {
        let p = self.0.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])})
    }

    /// RFC 7638 thumbprint, written out here independently of the gateway's code.
    fn jkt(&self) -> String {
        let j = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            j["x"].as_str().unwrap(),
            j["y"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = self.0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()})
    }

    /// Claims of a fresh, correct proof; tests change one thing at a time.
    fn claims(&self, method: &str, htu: &str, token: Option<&str>) -> Value {
        let mut c = json!({"htm": method, "htu": htu, "iat": now(),
            "jti": format!("jti-{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::Relaxed))});
        if let Some(t) = token {
            c["ath"] = ath(t).into();
        }
        c
    }

    fn proof(&self, method: &str, htu: &str, token: Option<&str>) -> String {
        self.sign(&self.header(), &self.claims(method, htu, token))
    }
}

/// Routes /dpop (issuer `dpop-idp`) and /bearer (issuer `bearer-idp`), both needing
/// `analytics.read`, to one upstream; the issuers are the caller's.
fn config(up: &Upstream) -> GatewayConfig {
    let route = |name: &str, prefix: &str, issuer: &str| {
        json!({
            "name": name, "path_prefix": prefix, "upstream": "bi",
            "auth": {"issuers": [issuer], "scopes": ["analytics.read"]},
        })
    };
    GatewayConfig::new()
        .upstream("bi", &up.url())
        .route(route("dpop-api", "/dpop", "dpop-idp"))
        .route(route("bearer-api", "/bearer", "bearer-idp"))
}

async fn setup() -> (Idp, Upstream, Gw) {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&up)
        .issuer_with(
            &idp,
            "dpop-idp",
            json!({"sender_constraint": "dpop", "dpop": {"iat_window": "60s"}}),
        )
        .issuer(&idp, "bearer-idp")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    (idp, up, gw)
}

async fn send(
    gw: &Gw,
    method: reqwest::Method,
    path: &str,
    authorization: &str,
    proof: Option<&str>,
) -> reqwest::Response {
    let mut r = client()
        .request(method, gw.url(path))
        .header("authorization", authorization);
    if let Some(p) = proof {
        r = r.header("dpop", p);
    }
    r.send().await.unwrap()
}

/// Asserts a 401 with the DPoP challenge naming `error`, the SPEC body, and `reason` as
/// the denial's reason code (looked up by request id on the admin API).
async fn assert_refused(gw: &Gw, r: reqwest::Response, error: &str, reason: &str, what: &str) {
    assert_eq!(r.status(), 401, "{what}");
    let challenge = r
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("DPoP "), "{what}: {challenge}");
    assert!(
        challenge.contains(&format!("error=\"{error}\"")),
        "{what}: {challenge}"
    );
    assert!(challenge.contains("algs=\"ES256 "), "{what}: {challenge}");
    let body = json_of(r).await;
    assert_eq!(body["error"], "invalid_token", "{what}: {body}");
    let id = body["request_id"].as_str().unwrap().to_owned();
    let url = gw.admin_url(&format!("/admin/decisions/{id}"));
    let record = eventually(
        "the denial is recorded",
        PATIENCE,
        async || {
            let r = client().get(&url).send().await.unwrap();
            if r.status() == 200 {
                r.json::<Value>().await.ok()
            } else {
                None
            }
        },
        |d| d.is_some(),
    )
    .await
    .unwrap();
    assert_eq!(record["reason"], json!(reason), "{what}: {record:#}");
    assert_eq!(
        record["gate"],
        json!("sender constraint"),
        "{what}: {record:#}"
    );
}

// Behaviour: a DPoP-bound token with a correct proof reaches the upstream, which gets the
// DPoP scheme and proof; every broken proof, a replay, a proof by another key, and the
// token sent as Bearer are refused with 401, their reason code and the RFC 9449 challenge,
// and never reach the upstream. Reason codes are counted in tollgate_auth_denied_total.
#[tokio::test]
async fn dpop_proofs_over_real_sockets() {
    let (idp, up, gw) = setup().await;
    let key = DpopKey::new();
    let token = idp.token(json!({"cnf": {"jkt": key.jkt()}}));
    let path = "/dpop/reports";
    let htu = gw.url(path);
    let auth = format!("DPoP {token}");

    let proof = key.proof("GET", &htu, Some(&token));
    let r = send(&gw, reqwest::Method::GET, path, &auth, Some(&proof)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    // The proof is tollgate's to check, not the upstream's: it is not forwarded (the
    // token is, as `Authorization: DPoP`, like a Bearer token without upstream `auth`).
    assert_eq!(up.last().header("dpop"), None);
    assert_eq!(up.last().header("authorization"), Some(auth.as_str()));
    assert_eq!(up.last().header("x-auth-subject"), Some("user-1"));
    // The query is not part of htu; a second fresh proof for the same token passes
    // (the verified-token cache is in front of the binding check, not instead of it).
    let proof = key.proof("GET", &htu, Some(&token));
    let r = send(
        &gw,
        reqwest::Method::GET,
        &format!("{path}?x=1"),
        &auth,
        Some(&proof),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 2);

    let other = DpopKey::new();
    let mut cases: Vec<(&str, String, &str, &str, String)> = Vec::new();
    let mut with =
        |what: &'static str, claims: Value, error: &'static str, reason: &'static str| {
            cases.push((
                what,
                key.sign(&key.header(), &claims),
                error,
                reason,
                auth.clone(),
            ));
        };
    let mut c = key.claims("POST", &htu, Some(&token));
    with(
        "wrong htm",
        c.clone(),
        "invalid_dpop_proof",
        "dpop_proof_invalid",
    );
    c = key.claims("GET", &gw.url("/dpop/other"), Some(&token));
    with("wrong htu", c, "invalid_dpop_proof", "dpop_proof_invalid");
    c = key.claims("GET", &htu.replace("http://", "https://"), Some(&token));
    with(
        "wrong scheme in htu",
        c,
        "invalid_dpop_proof",
        "dpop_proof_invalid",
    );
    c = key.claims("GET", &htu, Some(&token));
    c["iat"] = (now() - 300).into();
    with("stale iat", c, "invalid_dpop_proof", "dpop_proof_invalid");
    c = key.claims("GET", &htu, Some(&token));
    c["iat"] = (now() + 300).into();
    with(
        "iat in the future",
        c,
        "invalid_dpop_proof",
        "dpop_proof_invalid",
    );
    with(
        "missing ath",
        key.claims("GET", &htu, None),
        "invalid_dpop_proof",
        "dpop_proof_invalid",
    );
    c = key.claims("GET", &htu, Some(&token));
    c["ath"] = ath("another-token").into();
    with("wrong ath", c, "invalid_dpop_proof", "dpop_proof_invalid");
    // Signed by another key than the jwk in its header.
    let claims = key.claims("GET", &htu, Some(&token));
    cases.push((
        "signed by another key",
        other.sign(&key.header(), &claims),
        "invalid_dpop_proof",
        "dpop_proof_invalid",
        auth.clone(),
    ));
    // A valid proof by a key the token is not bound to.
    cases.push((
        "jwk thumbprint is not cnf.jkt",
        other.proof("GET", &htu, Some(&token)),
        "invalid_token",
        "token_binding_mismatch",
        auth.clone(),
    ));
    // alg none and HS256 (keyed with the public key's x, the classic confusion).
    let claims = key.claims("GET", &htu, Some(&token));
    let none = json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk()});
    cases.push((
        "alg none",
        format!("{}.{}.", b64(&none), b64(&claims)),
        "invalid_dpop_proof",
        "dpop_proof_invalid",
        auth.clone(),
    ));
    let hs = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk()});
    let input = format!("{}.{}", b64(&hs), b64(&claims));
    let mac = hmac::sign(
        &hmac::Key::new(
            hmac::HMAC_SHA256,
            key.jwk()["x"].as_str().unwrap().as_bytes(),
        ),
        input.as_bytes(),
    );
    cases.push((
        "HS256",
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())),
        "invalid_dpop_proof",
        "dpop_proof_invalid",
        auth.clone(),
    ));
    let mut private = key.header();
    private["jwk"]["d"] = URL_SAFE_NO_PAD.encode([7u8; 32]).into();
    cases.push((
        "private key members in jwk",
        key.sign(&private, &key.claims("GET", &htu, Some(&token))),
        "invalid_dpop_proof",
        "dpop_proof_invalid",
        auth.clone(),
    ));
    let mut typ = key.header();
    typ["typ"] = "JWT".into();
    cases.push((
        "typ not dpop+jwt",
        key.sign(&typ, &key.claims("GET", &htu, Some(&token))),
        "invalid_dpop_proof",
        "dpop_proof_invalid",
        auth.clone(),
    ));
    // The DPoP-bound token as Bearer, with a valid proof even.
    cases.push((
        "DPoP-bound token sent as Bearer",
        key.proof("GET", &htu, Some(&token)),
        "invalid_token",
        "token_binding_mismatch",
        format!("Bearer {token}"),
    ));
    for (what, proof, error, reason, authorization) in &cases {
        let r = send(&gw, reqwest::Method::GET, path, authorization, Some(proof)).await;
        assert_refused(&gw, r, error, reason, what).await;
    }
    // No proof at all.
    let r = send(&gw, reqwest::Method::GET, path, &auth, None).await;
    assert_refused(
        &gw,
        r,
        "invalid_dpop_proof",
        "dpop_proof_invalid",
        "no proof",
    )
    .await;
    // A replayed proof: accepted once, refused the second time.
    let proof = key.proof("GET", &htu, Some(&token));
    let r = send(&gw, reqwest::Method::GET, path, &auth, Some(&proof)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 3);
    let r = send(&gw, reqwest::Method::GET, path, &auth, Some(&proof)).await;
    let text = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_refused(
        &gw,
        r,
        "invalid_dpop_proof",
        "dpop_replayed",
        "replayed jti",
    )
    .await;
    assert!(text.unwrap().contains("replayed"));
    metric_eventually(
        &gw.admin_url(""),
        "tollgate_auth_denied_total{route=\"dpop-api\",reason=\"dpop_replayed\"}",
        |v| v >= 1.0,
    )
    .await;
    // A token that is not DPoP-bound, on the dpop issuer: refused, even with a proof.
    let unbound = idp.token(json!({}));
    let proof = key.proof("GET", &htu, Some(&unbound));
    let r = send(
        &gw,
        reqwest::Method::GET,
        path,
        &format!("DPoP {unbound}"),
        Some(&proof),
    )
    .await;
    assert_refused(
        &gw,
        r,
        "invalid_token",
        "token_binding_mismatch",
        "unbound token",
    )
    .await;
    assert_eq!(up.count(), 3, "no refused request reached the upstream");
    gw.stop().await;
}

// Behaviour: an issuer with sender_constraint none keeps accepting bearer tokens as
// before; a DPoP-bound token from it is still held to its binding (never a bearer
// token), and passes with its proof.
#[tokio::test]
async fn bearer_issuer_keeps_working_and_bound_tokens_keep_their_binding() {
    let (idp, up, gw) = setup().await;
    let token = idp.token(json!({}));
    let r = send(
        &gw,
        reqwest::Method::GET,
        "/bearer/x",
        &format!("Bearer {token}"),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    let key = DpopKey::new();
    let bound = idp.token(json!({"cnf": {"jkt": key.jkt()}}));
    let r = send(
        &gw,
        reqwest::Method::GET,
        "/bearer/x",
        &format!("Bearer {bound}"),
        None,
    )
    .await;
    assert_refused(
        &gw,
        r,
        "invalid_token",
        "token_binding_mismatch",
        "bound as Bearer",
    )
    .await;
    let proof = key.proof("GET", &gw.url("/bearer/x"), Some(&bound));
    let r = send(
        &gw,
        reqwest::Method::GET,
        "/bearer/x",
        &format!("DPoP {bound}"),
        Some(&proof),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 2);
    gw.stop().await;
}

// Behaviour: the explain CLI takes a proof (--dpop) and shows each DPoP check; a
// certificate binding is reported as not checkable offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_dpop_checks() {
    let (idp, _up, gw) = setup().await;
    let key = DpopKey::new();
    let token = idp.token(json!({"cnf": {"jkt": key.jkt()}}));
    let host = "api.example.com";
    let proof = key.proof("GET", &format!("http://{host}/dpop/reports"), Some(&token));
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("explain")
            .arg("--config")
            .arg(gw.config_path())
            .args(args);
        output_within("tollgate explain", &mut cmd, PATIENCE)
    };
    let out = run(&[
        "--token",
        &token,
        "--dpop",
        &proof,
        "--host",
        host,
        "/dpop/reports",
    ]);
    assert!(out.status.success(), "{}", out.stdout);
    for line in [
        "dpop: proof signature valid (ES256",
        "cnf.jkt",
        "jti not seen before",
        "result: ALLOW",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing {line:?}:\n{}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains(&token),
        "explain never prints the token"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proof");
    std::fs::write(
        &file,
        format!(
            "{}\n",
            key.proof("POST", &format!("http://{host}/dpop/reports"), Some(&token))
        ),
    )
    .unwrap();
    let out = run(&[
        "--token",
        &token,
        "--dpop-file",
        file.to_str().unwrap(),
        "--host",
        host,
        "/dpop/reports",
    ]);
    assert!(!out.status.success());
    assert!(
        out.stdout.contains("htm \"POST\" does not match"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("dpop_proof_invalid"), "{}", out.stdout);
    // A certificate-bound token: explain cannot see a TLS client certificate.
    let cert_bound = idp.token(json!({"cnf": {"x5t#S256": "abc"}}));
    let out = run(&["--token", &cert_bound, "/bearer/x"]);
    assert!(
        out.stdout.contains("client certificate NOT CHECKED"),
        "{}",
        out.stdout
    );
    gw.stop().await;
}

fn x5t_of(pem: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der_of(std::path::Path::new(pem))))
}

fn mtls_client(identity: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.pem")).unwrap()).unwrap();
    tollgate::tls::install_default_provider();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .add_root_certificate(ca)
        .use_rustls_tls();
    if identity {
        let mut pem = std::fs::read(fixture("client.pem")).unwrap();
        pem.extend(std::fs::read(fixture("client-key.pem")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

// Behaviour: on a TLS listener with client certificates, a token whose cnf.x5t#S256 is
// the client certificate's SHA-256 passes; another thumbprint, or an unbound token on an
// mtls issuer, is refused with certificate_mismatch; without a client certificate (a
// TLS listener without client_ca) a certificate-bound token is refused too.
#[tokio::test]
async fn certificate_bound_tokens_over_mtls() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let with_tls = |client_ca: bool| {
        let mut tls = json!({"cert": f("server.pem"), "key": f("server-key.pem")});
        if client_ca {
            tls["client_ca"] = json!(f("ca.pem"));
        }
        config(&up)
            .merge("server", json!({ "tls": tls }))
            .issuer_with(&idp, "dpop-idp", json!({"sender_constraint": "mtls"}))
            .issuer(&idp, "bearer-idp")
            .yaml()
    };
    let gw = spawn_gateway(&with_tls(true)).await;
    let url = |p: &str| format!("https://localhost:{}{p}", gw.addr.port());
    let x5t = x5t_of(&f("client.pem"));
    let get = async |token: &str, path: &str| {
        mtls_client(true)
            .get(url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    };
    let good = idp.token(json!({"cnf": {"x5t#S256": x5t}}));
    let r = get(&good, "/dpop/x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    let wrong = idp.token(json!({"cnf": {"x5t#S256": x5t_of(&f("server.pem"))}}));
    for (what, token, path) in [
        ("another certificate's thumbprint", &wrong, "/dpop/x"),
        ("another thumbprint on a bearer issuer", &wrong, "/bearer/x"),
        (
            "unbound token on the mtls issuer",
            &idp.token(json!({})),
            "/dpop/x",
        ),
    ] {
        let r = get(token, path).await;
        assert_eq!(r.status(), 401, "{what}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
        assert!(challenge.contains("error=\"invalid_token\""), "{what}");
        assert_eq!(json_of(r).await["error"], "invalid_token");
    }
    metric_eventually(
        &gw.admin_url(""),
        "tollgate_auth_denied_total{route=\"dpop-api\",reason=\"certificate_mismatch\"}",
        |v| v >= 2.0,
    )
    .await;
    assert_eq!(up.count(), 1);
    // The same certificate-bound token on a bearer issuer passes with the certificate.
    assert_eq!(get(&good, "/bearer/x").await.status(), 200);
    gw.stop().await;

    // No client certificate at all (TLS without client_ca).
    let gw = spawn_gateway(&with_tls(false)).await;
    let r = mtls_client(false)
        .get(format!("https://localhost:{}/dpop/x", gw.addr.port()))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body = json_of(r).await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("without one"),
        "{body}"
    );
    assert_eq!(up.count(), 2);
    gw.stop().await;
}

/// The token service (`sender_constraint: ts_constraint`; client `mtls-client` always
/// mtls) and one route /api that takes its tokens.
fn ts_config(up: &Upstream, ts_constraint: &str) -> GatewayConfig {
    GatewayConfig::new()
        .token_service(
            "https://gateway.example.com",
            AUDIENCE,
            &[("dash", "s3cret", &["analytics.read"])],
        )
        .token_service_client(json!({
            "id": "mtls-client", "secret": "s3cret", "scopes": ["analytics.read"],
            "sender_constraint": "mtls",
        }))
        .merge(
            "token_service",
            json!({"path": "/oauth2/token", "sender_constraint": ts_constraint}),
        )
        .upstream("bi", &up.url())
        .route(json!({
            "name": "api", "path_prefix": "/api", "upstream": "bi",
            "auth": {"issuers": ["local"], "scopes": ["analytics.read"]},
        }))
}

fn ts_yaml(up: &Upstream, ts_constraint: &str) -> String {
    ts_config(up, ts_constraint).yaml()
}

fn payload(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

// Behaviour: with token_service.sender_constraint dpop, a client_credentials request with
// a valid DPoP proof gets token_type DPoP and cnf.jkt of the proof's key; that token
// works with a proof and is refused as Bearer; a request without a proof gets 400
// invalid_dpop_proof; a replayed token-request proof is refused.
#[tokio::test]
async fn token_service_issues_dpop_bound_tokens() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&ts_yaml(&up, "dpop")).await;
    let key = DpopKey::new();
    let token_url = gw.url("/oauth2/token");
    let ask = async |proof: Option<&str>| {
        let mut r = client()
            .post(&token_url)
            .header(
                "authorization",
                format!("Basic {}", STANDARD.encode("dash:s3cret")),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials");
        if let Some(p) = proof {
            r = r.header("dpop", p);
        }
        r.send().await.unwrap()
    };
    let r = ask(None).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_of(r).await["error"], "invalid_dpop_proof");
    let proof = key.proof("POST", &token_url, None);
    let r = ask(Some(&proof)).await;
    assert_eq!(r.status(), 200);
    let body = json_of(r).await;
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(payload(&token)["cnf"]["jkt"], key.jkt());
    let r = ask(Some(&proof)).await;
    assert_eq!(r.status(), 400, "a token-request proof is used once");
    let htu = gw.url("/api/x");
    let r = send(
        &gw,
        reqwest::Method::GET,
        "/api/x",
        &format!("DPoP {token}"),
        Some(&key.proof("GET", &htu, Some(&token))),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    let r = send(
        &gw,
        reqwest::Method::GET,
        "/api/x",
        &format!("Bearer {token}"),
        None,
    )
    .await;
    assert_refused(
        &gw,
        r,
        "invalid_token",
        "token_binding_mismatch",
        "as Bearer",
    )
    .await;
    assert_eq!(up.count(), 1);
    gw.stop().await;
}

// Behaviour: with stores.redis, the DPoP proof sent with a token request is marked in
// Redis: used at one replica's token endpoint, it is refused at another's (400
// invalid_dpop_proof), and the mark holds no request material.
#[tokio::test]
async fn token_endpoint_proofs_are_used_once_across_replicas() {
    let redis = RedisServer::start();
    let up = spawn_upstream().await;
    let yaml = ts_config(&up, "dpop").redis(&redis.url(), "2s").yaml();
    let a = spawn_gateway(&yaml).await;
    let b = spawn_gateway(&yaml).await;
    let key = DpopKey::new();
    // Both replicas behind one name, as behind a load balancer: one htu.
    let claims = key.claims("POST", &format!("http://{LB_HOST}/oauth2/token"), None);
    let jti = claims["jti"].as_str().unwrap().to_owned();
    let proof = key.sign(&key.header(), &claims);
    tollgate::tls::install_default_provider();
    let ask = async |gw: &Gw| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .unwrap()
            .post(gw.url("/oauth2/token"))
            .header("host", LB_HOST)
            .basic_auth("dash", Some("s3cret"))
            .header("dpop", &proof)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
    };
    let r = ask(&a).await;
    assert_eq!(r.status(), 200, "A accepts a fresh proof");
    assert_eq!(json_of(r).await["token_type"], "DPoP");
    let r = ask(&b).await;
    assert_eq!(r.status(), 400, "B refuses the proof A used");
    let body = json_of(r).await;
    assert_eq!(body["error"], "invalid_dpop_proof", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replayed"),
        "{body}"
    );
    let keys = redis_keys(&redis).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    for secret in [&key.jkt(), &jti, &proof] {
        assert!(!keys[0].contains(secret.as_str()), "{keys:?}");
    }
    a.stop().await;
    b.stop().await;
}

// Behaviour: a client with sender_constraint mtls gets a token bound to its TLS client
// certificate (cnf.x5t#S256), which works over the same mTLS connection's certificate.
#[tokio::test]
async fn token_service_issues_certificate_bound_tokens() {
    let up = spawn_upstream().await;
    let yaml = ts_config(&up, "none")
        .merge(
            "server",
            json!({"tls": {
                "cert": f("server.pem"),
                "key": f("server-key.pem"),
                "client_ca": f("ca.pem"),
            }}),
        )
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let url = |p: &str| format!("https://localhost:{}{p}", gw.addr.port());
    let r = mtls_client(true)
        .post(url("/oauth2/token"))
        .basic_auth("mtls-client", Some("s3cret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = json_of(r).await;
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(payload(&token)["cnf"]["x5t#S256"], x5t_of(&f("client.pem")));
    let r = mtls_client(true)
        .get(url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    // Another client of the same service, without sender_constraint: a bearer token.
    let r = mtls_client(true)
        .post(url("/oauth2/token"))
        .basic_auth("dash", Some("s3cret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let token = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(payload(&token).get("cnf").is_none());
    gw.stop().await;
}

// Behaviour: an opaque token's binding comes from the introspection response's `cnf`:
// with its proof it passes, with another key's proof or as Bearer it is refused.
#[tokio::test]
async fn introspected_tokens_keep_their_binding() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    std::env::set_var("TOLLGATE_TEST_INTROSPECT_SECRET", INTROSPECT_SECRET);
    let yaml = config(&up)
        .issuer_block(json!({
            "name": "dpop-idp",
            "issuer": idp.issuer,
            "sender_constraint": "dpop",
            "introspection": idp_introspection(&idp, "${env:TOLLGATE_TEST_INTROSPECT_SECRET}"),
            "audiences": [AUDIENCE],
        }))
        .issuer(&idp, "bearer-idp")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let key = DpopKey::new();
    idp.opaque.lock().unwrap().insert(
        "opaque-bound".into(),
        json!({"active": true, "iss": idp.issuer, "aud": "https://bi-api.company.com",
            "client_id": "partner", "sub": "svc", "scope": "analytics.read",
            "exp": now() + 300, "cnf": {"jkt": key.jkt()}}),
    );
    let htu = gw.url("/dpop/x");
    let proof = key.proof("GET", &htu, Some("opaque-bound"));
    let r = send(
        &gw,
        reqwest::Method::GET,
        "/dpop/x",
        "DPoP opaque-bound",
        Some(&proof),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    let other = DpopKey::new();
    let proof = other.proof("GET", &htu, Some("opaque-bound"));
    let r = send(
        &gw,
        reqwest::Method::GET,
        "/dpop/x",
        "DPoP opaque-bound",
        Some(&proof),
    )
    .await;
    assert_refused(
        &gw,
        r,
        "invalid_token",
        "token_binding_mismatch",
        "another key",
    )
    .await;
    let r = send(
        &gw,
        reqwest::Method::GET,
        "/dpop/x",
        "Bearer opaque-bound",
        None,
    )
    .await;
    assert_refused(
        &gw,
        r,
        "invalid_token",
        "token_binding_mismatch",
        "as Bearer",
    )
    .await;
    assert_eq!(up.count(), 1);
    gw.stop().await;
}

/// Two replicas sharing `redis`: routes /dpop (on_error deny, the default) and
/// /dpop-allow (on_error allow).
fn replicas_yaml(idp: &Idp, up: &Upstream, redis: &RedisServer) -> String {
    let route = |name: &str, prefix: &str, issuer: &str| {
        json!({
            "name": name, "path_prefix": prefix, "upstream": "bi",
            "auth": {"issuers": [issuer], "scopes": ["analytics.read"]},
        })
    };
    GatewayConfig::new()
        .redis(&redis.url(), "200ms")
        .issuer_with(idp, "dpop-idp", json!({"sender_constraint": "dpop"}))
        .issuer_with(
            idp,
            "dpop-allow",
            json!({"sender_constraint": "dpop",
                   "dpop": {"replay": {"store": "redis", "on_error": "allow"}}}),
        )
        .upstream("bi", &up.url())
        .route(route("dpop-api", "/dpop", "dpop-idp"))
        .route(route("dpop-allow", "/lenient", "dpop-allow"))
        .yaml()
}

/// Both replicas sit behind one load balancer: the client addresses this host.
const LB_HOST: &str = "api.example.com";

async fn send_lb(gw: &Gw, path: &str, token: &str, proof: &str) -> reqwest::Response {
    tollgate::tls::install_default_provider();
    reqwest::Client::builder()
        .no_proxy()
        // A bound on every answer, Redis dead or alive (not a timing assertion: a
        // request that hangs fails the test instead of hanging it).
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .unwrap()
        .get(gw.url(path))
        .header("host", LB_HOST)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
        .await
        .unwrap()
}

async fn redis_keys(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.conn().await;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

// Behaviour: two tollgate replicas sharing one real Redis share the DPoP replay check:
// a proof accepted by A is refused by B with dpop_replayed (a token B verifies for the
// first time, and one it has cached); Redis holds one expiring key per proof, named by
// a digest (no token, proof, jti or key thumbprint in it). With Redis killed, the
// default (on_error: deny) answers 503 service_unavailable with Retry-After and the
// request never reaches the upstream, while on_error: allow checks on the replica
// alone (a replay at the same replica is still refused); when Redis is back, proofs are
// shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_refuse_each_others_proofs() {
    let mut redis = RedisServer::start();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = replicas_yaml(&idp, &up, &redis);
    let a = spawn_gateway(&yaml).await;
    let b = spawn_gateway(&yaml).await;
    let key = DpopKey::new();
    let token = idp.token(json!({"cnf": {"jkt": key.jkt()}}));
    let htu = format!("http://{LB_HOST}/dpop/reports");
    let path = "/dpop/reports";

    // B has never seen the token (slow path), then has it cached (fast path).
    let mut jtis = Vec::new();
    let mut proofs = Vec::new();
    for round in 0..2 {
        let claims = key.claims("GET", &htu, Some(&token));
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
        let proof = key.sign(&key.header(), &claims);
        let r = send_lb(&a, path, &token, &proof).await;
        assert_eq!(r.status(), 200, "round {round}: A accepts a fresh proof");
        let r = send_lb(&b, path, &token, &proof).await;
        let body = json_of(r).await;
        assert_eq!(body["error"], "invalid_token", "round {round}: {body}");
        let id = body["request_id"].as_str().unwrap();
        let rec = eventually(
            "B recorded the denial",
            PATIENCE,
            async || {
                let r = client()
                    .get(b.admin_url(&format!("/admin/decisions/{id}")))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    r.json::<Value>().await.ok()
                } else {
                    None
                }
            },
            |d| d.is_some(),
        )
        .await
        .unwrap();
        assert_eq!(rec["reason"], "dpop_replayed", "round {round}: {rec:#}");
        proofs.push(proof);
    }
    assert_eq!(up.count(), 2, "only A's two requests reached the upstream");

    // What Redis holds: one key per proof, a digest, with an expiry.
    let keys = redis_keys(&redis).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let mut conn = redis.conn().await;
    for k in &keys {
        let hex = k
            .strip_prefix("tollgate:dpop:")
            .unwrap_or_else(|| panic!("{k}"));
        assert!(
            hex.len() == 32 && hex.bytes().all(|c| c.is_ascii_hexdigit()),
            "{k}"
        );
        for secret in [token.as_str(), &key.jkt(), &jtis[0], &jtis[1], &proofs[0]] {
            assert!(!k.contains(secret), "{k} holds request material");
        }
        let value: String = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, "1");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        // iat window 60s + 1s, plus the issuer's default leeway (30s).
        assert!(ttl > 0 && ttl <= 91_000, "{k}: PTTL {ttl}");
    }

    // Redis killed.
    redis.kill();
    let fresh = key.proof("GET", &htu, Some(&token));
    let r = send_lb(&a, path, &token, &fresh).await;
    assert_eq!(r.status(), 503, "on_error: deny fails closed");
    assert!(r.headers().contains_key("retry-after"));
    let body = json_of(r).await;
    assert_eq!(body["error"], "service_unavailable", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay"),
        "{body}"
    );
    assert_eq!(
        up.count(),
        2,
        "a refused request never reaches the upstream"
    );
    // on_error: allow decides on the replica alone; a replay there is still refused.
    let lenient_htu = format!("http://{LB_HOST}/lenient/x");
    let p = key.proof("GET", &lenient_htu, Some(&token));
    let r = send_lb(&a, "/lenient/x", &token, &p).await;
    assert_eq!(r.status(), 200, "on_error: allow accepts a fresh proof");
    let r = send_lb(&a, "/lenient/x", &token, &p).await;
    assert_eq!(
        r.status(),
        401,
        "the replica's own cache still refuses replays"
    );
    assert_eq!(up.count(), 3);
    let m = admin_metrics(&a.admin_url("")).await;
    assert!(
        series_value(&m, "tollgate_store_errors_total{store=\"redis\"}").is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // Redis back (empty): proofs are shared again once the store reconnects.
    redis.restart();
    let accepted = eventually(
        "A accepts a fresh proof again",
        PATIENCE,
        async || {
            let p = key.proof("GET", &htu, Some(&token));
            let status = send_lb(&a, path, &token, &p).await.status().as_u16();
            (status, p)
        },
        |(status, _)| *status == 200,
    )
    .await
    .1;
    // B reconnects on its own (its first tries after the restart may still be 503:
    // fail-closed, and nothing is recorded by them).
    eventually(
        "B refuses A's proof again",
        PATIENCE,
        async || send_lb(&b, path, &token, &accepted).await.status().as_u16(),
        |s| *s == 401,
    )
    .await;
    assert_eq!(up.count(), 4, "only A's proofs reached the upstream");
    assert!(
        !redis_keys(&redis).await.is_empty(),
        "the accepted proof is marked again"
    );
    a.stop().await;
    b.stop().await;
}

// Behaviour: POST /admin/explain takes a DPoP proof (`dpop`) and names each DPoP check;
// explaining a proof does not use it up (the jti is looked up in the replay cache and
// in Redis, never recorded): the same proof is then accepted for real, after which
// explain reports it as replayed. A proof for another method names the htm check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_explain_checks_a_proof_without_using_it_up() {
    let redis = RedisServer::start();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let a = spawn_gateway(&replicas_yaml(&idp, &up, &redis)).await;
    let key = DpopKey::new();
    let token = idp.token(json!({"cnf": {"jkt": key.jkt()}}));
    let htu = format!("http://{LB_HOST}/dpop/reports");
    let explain = async |proof: &str| -> Value {
        let r = client()
            .post(a.admin_url("/admin/explain"))
            .json(&json!({"token": token, "path": "/dpop/reports", "host": LB_HOST, "dpop": proof}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    };
    let steps = |v: &Value| -> String {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let proof = key.proof("GET", &htu, Some(&token));
    for _ in 0..2 {
        let v = explain(&proof).await;
        assert_eq!(v["allowed"], true, "{v:#}");
        let text = steps(&v);
        for line in [
            "dpop: proof signature valid",
            "htm GET and htu",
            "jti not seen before by any replica (dry check",
        ] {
            assert!(text.contains(line), "missing {line:?}:\n{text}");
        }
        assert!(!text.contains(&token), "explain never shows the token");
        assert!(!text.contains(&proof), "explain never shows the proof");
    }
    assert!(
        redis_keys(&redis).await.is_empty(),
        "explain wrote nothing to Redis"
    );
    assert_eq!(up.count(), 0);
    // The proof explained twice is still good for one real request ...
    let r = send_lb(&a, "/dpop/reports", &token, &proof).await;
    assert_eq!(r.status(), 200);
    // ... and explain now sees it as used.
    let v = explain(&proof).await;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("dpop_replayed")),
        "{v:#}"
    );
    assert!(steps(&v).contains("jti seen before"), "{}", steps(&v));
    // `tollgate explain --dpop` asks the same Redis, dry: a used proof is reported as
    // replayed by another replica, a fresh one is left unused.
    let cli = |proof: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("explain")
            .arg("--config")
            .arg(a.config_path())
            .args([
                "--token",
                &token,
                "--dpop",
                proof,
                "--host",
                LB_HOST,
                "/dpop/reports",
            ]);
        output_within("tollgate explain", &mut cmd, PATIENCE)
    };
    let out = cli(&proof);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("jti seen before by another replica (Redis)"),
        "{}",
        out.stdout
    );
    let unused = key.proof("GET", &htu, Some(&token));
    let out = cli(&unused);
    assert!(out.status.success(), "{}", out.stdout);
    assert!(out.stdout.contains("dry check in Redis"), "{}", out.stdout);
    assert_eq!(
        redis_keys(&redis).await.len(),
        1,
        "only the real request marked"
    );
    let r = send_lb(&a, "/dpop/reports", &token, &unused).await;
    assert_eq!(
        r.status(),
        200,
        "a proof explained by the CLI is still good"
    );
    // Each failing check is named.
    let post = key.proof("POST", &htu, Some(&token));
    let v = explain(&post).await;
    assert_eq!(v["reason"], "dpop_proof_invalid", "{v:#}");
    assert!(
        steps(&v).contains("htm \"POST\" does not match"),
        "{}",
        steps(&v)
    );
    let mut stale = key.claims("GET", &htu, Some(&token));
    stale["iat"] = (now() - 600).into();
    let v = explain(&key.sign(&key.header(), &stale)).await;
    assert!(steps(&v).contains("too old"), "{}", steps(&v));
    let v = explain(&key.proof("GET", &format!("http://{LB_HOST}/dpop/other"), Some(&token))).await;
    assert!(steps(&v).contains("htu"), "{}", steps(&v));
    a.stop().await;
}
