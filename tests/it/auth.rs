//! Inbound Bearer auth — issuers, JWKS, introspection, scopes, clients,
//! permissions, denial logs, explain.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::{idp_introspection, GatewayConfig, AUDIENCE};

/// Upstream `bi`; a test adds its issuers and routes.
fn config(up: &Upstream) -> GatewayConfig {
    GatewayConfig::new().upstream("bi", &up.url())
}

/// The analytics route: analytics.read for the route, and per-endpoint permissions.
fn analytics() -> Value {
    json!({
        "name": "analytics",
        "path_prefix": "/v2/analytics",
        "upstream": "bi",
        "auth": {"scopes": ["analytics.read"]},
        "permissions": [
            {"path": "/v2/analytics/data", "methods": ["GET", "POST"], "scopes": ["bi.integration.external"]},
            {"path": "/v2/analytics/metadata", "methods": ["GET"]},
            {"path": "/v2/analytics/reports/*/rows", "methods": ["GET"]},
            {"path": "/v2/analytics/public/**", "methods": ["*"]},
        ],
    })
}

/// Issuer `corp` (the test IdP, with `issuer_extra`) in front of the analytics route.
fn corp_yaml(idp: &Idp, up: &Upstream, issuer_extra: Value) -> String {
    config(up)
        .issuer_with(idp, "corp", issuer_extra)
        .route(analytics())
        .yaml()
}

async fn setup(issuer_extra: Value) -> (Idp, Upstream, Gw) {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&corp_yaml(&idp, &up, issuer_extra)).await;
    (idp, up, gw)
}

async fn call(
    gw: &Gw,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut r = client().request(method, gw.url(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

/// Status, error code and WWW-Authenticate of a refusal.
async fn refusal(r: reqwest::Response) -> (u16, String, String, String) {
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let b = json_of(r).await;
    (
        status,
        b["error"].as_str().unwrap_or("").to_owned(),
        b["error_description"].as_str().unwrap_or("").to_owned(),
        www,
    )
}

async fn metrics(gw: &Gw) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn denied(m: &str, reason: &str) -> bool {
    m.lines().any(|l| {
        l.starts_with("tollgate_auth_denied_total{")
            && l.contains(&format!("reason=\"{reason}\""))
            && !l.ends_with(" 0")
    })
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

// Behaviour: RS256 and ES256 tokens pass; the verified identity reaches the upstream and
// forged X-Auth-* headers do not.
#[tokio::test]
async fn valid_rs256_and_es256_tokens() {
    let (idp, up, gw) = setup(json!({})).await;
    let scopes = json!({"scope": "analytics.read bi.integration.external"});
    for key in [idp.key(0), idp.key(1)] {
        let t = idp.token_with(&key, scopes.clone());
        let r = client()
            .get(gw.url("/v2/analytics/data"))
            .bearer_auth(&t)
            .header("x-auth-client-id", "forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", key.alg);
        let s = up.last();
        assert_eq!(s.header("x-auth-client-id"), Some("sap-cx-dashboard"));
        assert_eq!(s.header("x-auth-subject"), Some("user-1"));
        assert_eq!(
            s.header("x-auth-scopes"),
            Some("analytics.read bi.integration.external")
        );
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {t}").as_str()),
            "no upstream auth: passed on"
        );
    }
    gw.stop().await;
}

// Behaviour: no token -> 401 with a bare Bearer challenge (no error attribute).
#[tokio::test]
async fn missing_token_challenge() {
    let (_idp, up, gw) = setup(json!({})).await;
    for auth in [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer"),
        Some("Bearer   "),
    ] {
        let mut r = client().get(gw.url("/v2/analytics/metadata"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let (status, code, _, www) = refusal(r.send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (401, "invalid_token"), "{auth:?}");
        assert_eq!(www, "Bearer realm=\"tollgate\"", "{auth:?}");
    }
    // Scheme is case-insensitive.
    let t = idp_token_for_scheme(&gw, &_idp);
    let r = client()
        .get(gw.url("/v2/analytics/metadata"))
        .header("authorization", format!("bEaReR {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    assert!(denied(&metrics(&gw).await, "token_missing"));
    gw.stop().await;
}

// Behaviour: a request with two Authorization headers is refused with 400
// invalid_request, whichever of them holds the valid token — the upstream never sees a
// second credential tollgate did not check.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let (idp, up, gw) = setup(json!({})).await;
    let good = idp.token(json!({"scope": "analytics.read"}));
    for (first, second) in [
        (format!("Bearer {good}"), "Bearer forged".to_owned()),
        ("Bearer forged".to_owned(), format!("Bearer {good}")),
        (format!("Bearer {good}"), "Basic dXNlcjpwYXNz".to_owned()),
    ] {
        let r = client()
            .get(gw.url("/v2/analytics/metadata"))
            .header("authorization", first)
            .header("authorization", second)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.headers().contains_key("x-request-id"));
        let b = json_of(r).await;
        assert_eq!(b["error"], "invalid_request");
        assert!(
            b["error_description"]
                .as_str()
                .unwrap()
                .contains("more than one Authorization header"),
            "{b}"
        );
    }
    assert_eq!(up.count(), 0);
    // One header with the same token still passes.
    let r = call(
        &gw,
        reqwest::Method::GET,
        "/v2/analytics/metadata",
        Some(&good),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["authorization"].len(), 1);
    gw.stop().await;
}

fn idp_token_for_scheme(_gw: &Gw, idp: &Idp) -> String {
    idp.token(json!({}))
}

// Behaviour: every bad-token case is 401 invalid_token with its reason in the challenge
// and in tollgate_auth_denied_total.
#[tokio::test]
async fn bad_tokens_are_refused_with_reasons() {
    let (idp, up, gw) = setup(json!({"leeway": "5s"})).await;
    let rsa = idp.key(0);
    let now = now();
    let good = idp.token(json!({}));
    let (h, p, s) = {
        let mut it = good.split('.');
        (
            it.next().unwrap().to_owned(),
            it.next().unwrap().to_owned(),
            it.next().unwrap().to_owned(),
        )
    };
    // An attacker's key with the victim's kid.
    let other = tollgate::token_service::keys::SigningKey::from_pem(
        &std::fs::read(fixture("rsa-b.pem")).unwrap(),
    )
    .unwrap();
    let forged_kid = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(rsa.kid.clone());
        let claims = json!({"iss": idp.issuer, "aud": "https://bi-api.company.com", "scope": "analytics.read", "exp": now + 300});
        let k =
            jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-b.pem")).unwrap())
                .unwrap();
        jsonwebtoken::encode(&header, &claims, &k).unwrap()
    };
    let tampered = {
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p).unwrap()).unwrap();
        let mut c = claims.clone();
        c["scope"] = json!("analytics.read bi.integration.external admin");
        format!("{h}.{}.{s}", b64(&c.to_string()))
    };
    let alg_none = format!("{}.{p}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let alg_none_sig = format!("{}.{p}.{s}", b64(r#"{"alg":"none"}"#));
    // HS256 "key confusion": HMAC keyed with the public key material.
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p).unwrap()).unwrap();
        let secret = rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec();
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
        )
        .unwrap()
    };
    let jku = {
        let header = format!(
            r#"{{"alg":"RS256","kid":"{}","jku":"http://127.0.0.1:1/evil"}}"#,
            rsa.kid
        );
        format!("{}.{p}.{s}", b64(&header))
    };
    let embedded_jwk = format!(
        "{}.{p}.{s}",
        b64(&format!(r#"{{"alg":"RS256","jwk":{}}}"#, other.jwk))
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            idp.token(json!({"exp": now - 60})),
            "token_expired",
        ),
        (
            "not yet valid",
            idp.token(json!({"nbf": now + 120})),
            "token_not_yet_valid",
        ),
        ("no exp", idp.token(json!({"exp": null})), "token_malformed"),
        (
            "wrong iss (same keys)",
            idp.token(json!({"iss": "https://evil.example"})),
            "issuer_not_accepted",
        ),
        (
            "wrong aud",
            idp.token(json!({"aud": "https://other-api"})),
            "audience_not_accepted",
        ),
        (
            "no aud",
            idp.token(json!({"aud": null})),
            "audience_not_accepted",
        ),
        ("bad signature", forged_kid, "signature_invalid"),
        ("tampered payload", tampered, "signature_invalid"),
        ("alg none", alg_none, "algorithm_not_allowed"),
        ("alg none with sig", alg_none_sig, "algorithm_not_allowed"),
        ("HS256 key confusion", hs256, "algorithm_not_allowed"),
        ("jku header", jku, "token_malformed"),
        ("embedded jwk", embedded_jwk, "token_malformed"),
        (
            "unknown kid",
            idp.token_with(&other, json!({})),
            "kid_unknown",
        ),
        ("garbage", "garbage".into(), "token_malformed"),
        ("three dots garbage", "a.b.c".into(), "token_malformed"),
        ("huge", "x".repeat(10_000), "token_malformed"),
    ];
    for (name, token, reason) in &cases {
        let (status, code, desc, www) = refusal(
            call(
                &gw,
                reqwest::Method::GET,
                "/v2/analytics/metadata",
                Some(token),
            )
            .await,
        )
        .await;
        assert_eq!(status, 401, "{name}: {desc}");
        assert_eq!(code, "invalid_token", "{name}");
        assert!(
            www.starts_with(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\""
            ),
            "{name}: {www}"
        );
        assert!(
            !desc.contains(token.as_str()) || token.len() < 12,
            "{name}: token echoed"
        );
        assert!(
            denied(&metrics(&gw).await, reason),
            "{name}: reason {reason} not counted"
        );
    }
    assert_eq!(up.count(), 0, "no bad token may reach the upstream");
    // Within leeway is fine.
    let r = call(
        &gw,
        reqwest::Method::GET,
        "/v2/analytics/metadata",
        Some(&idp.token(json!({"exp": now - 2}))),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Expiry is explained.
    let (_, _, desc, _) = refusal(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some(&idp.token(json!({"exp": now - 42}))),
        )
        .await,
    )
    .await;
    assert!(desc.starts_with("token expired 4"), "{desc}");
    let (_, _, desc, _) = refusal(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some(&idp.token(json!({"aud": "x"}))),
        )
        .await,
    )
    .await;
    assert_eq!(desc, "audience \"x\" not accepted");
    gw.stop().await;
}

// Behaviour: algorithms outside the issuer's allow-list are refused.
#[tokio::test]
async fn algorithm_allow_list() {
    let (idp, up, gw) = setup(json!({"algorithms": ["ES256"]})).await;
    let (status, _, desc, _) = refusal(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some(&idp.token_with(&idp.key(0), json!({}))),
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    assert!(desc.contains("RS256 not allowed"), "{desc}");
    let r = call(
        &gw,
        reqwest::Method::GET,
        "/v2/analytics/metadata",
        Some(&idp.token_with(&idp.key(1), json!({}))),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    assert!(denied(&metrics(&gw).await, "algorithm_not_allowed"));
    gw.stop().await;
}

// Behaviour: aud arrays, `scp` arrays, whole-word scopes, dotted scope claims.
#[tokio::test]
async fn audiences_and_scope_claims() {
    let (idp, _up, gw) = setup(json!({})).await;
    let g = &gw;
    let ok = |t: String| async move {
        call(g, reqwest::Method::GET, "/v2/analytics/metadata", Some(&t))
            .await
            .status()
            .as_u16()
    };
    assert_eq!(
        ok(idp.token(json!({"aud": ["https://other", "https://bi-api.company.com"]}))).await,
        200
    );
    assert_eq!(
        ok(idp.token(json!({"scope": null, "scp": ["analytics.read", "x"]}))).await,
        200
    );
    assert_eq!(
        ok(idp.token(json!({"scope": "analytics.reader analytics"}))).await,
        403
    );
    assert_eq!(
        ok(idp.token(json!({"scope": "analytics.read.all"}))).await,
        403
    );
    assert_eq!(ok(idp.token(json!({"scope": " "}))).await, 403);
    gw.stop().await;

    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&up)
        .issuer_with(&idp, "kc", json!({"scope_claims": ["realm_access.roles"]}))
        .route(analytics())
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let t = idp.token(json!({"scope": null, "realm_access": {"roles": ["analytics.read"]}}));
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some(&t)
        )
        .await
        .status(),
        200
    );
    gw.stop().await;
}

// Behaviour: endpoint/method permissions with wildcards and extra scopes; each gate has
// its own status, code and description.
#[tokio::test]
async fn endpoint_and_method_permissions() {
    let (idp, up, gw) = setup(json!({})).await;
    let base = idp.token(json!({}));
    let full = idp.token(json!({"scope": "analytics.read bi.integration.external"}));
    use reqwest::Method as M;
    for (m, path, token, status) in [
        (M::GET, "/v2/analytics/metadata", &base, 200),
        (M::POST, "/v2/analytics/metadata", &base, 403),
        (M::GET, "/v2/analytics/data", &base, 403),
        (M::GET, "/v2/analytics/data", &full, 200),
        (M::POST, "/v2/analytics/data", &full, 200),
        (M::DELETE, "/v2/analytics/data", &full, 403),
        (M::GET, "/v2/analytics/reports/42/rows", &base, 200),
        (M::GET, "/v2/analytics/reports/42/43/rows", &base, 403),
        (M::PATCH, "/v2/analytics/public/a/b", &base, 200),
        (M::GET, "/v2/analytics/admin", &full, 403),
    ] {
        let r = call(&gw, m.clone(), path, Some(token)).await;
        assert_eq!(r.status().as_u16(), status, "{m} {path}");
    }
    let (s, code, desc, www) =
        refusal(call(&gw, M::GET, "/v2/analytics/data", Some(&base)).await).await;
    assert_eq!(
        (s, code.as_str(), desc.as_str()),
        (
            403,
            "insufficient_scope",
            "scope bi.integration.external required"
        )
    );
    assert!(
        www.contains("error=\"insufficient_scope\"")
            && www.contains("scope=\"analytics.read bi.integration.external\""),
        "{www}"
    );
    let (_, code, desc, _) =
        refusal(call(&gw, M::DELETE, "/v2/analytics/data", Some(&full)).await).await;
    assert_eq!(code, "access_denied");
    assert!(
        desc.contains("DELETE") && desc.contains("/v2/analytics/data"),
        "{desc}"
    );
    let (_, code, desc, _) =
        refusal(call(&gw, M::GET, "/v2/analytics/admin", Some(&full)).await).await;
    assert_eq!(code, "access_denied");
    assert!(desc.contains("/v2/analytics/admin"), "{desc}");
    let m = metrics(&gw).await;
    assert!(
        denied(&m, "method_not_allowed")
            && denied(&m, "endpoint_not_allowed")
            && denied(&m, "scope_missing")
    );
    assert!(!up
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.uri.contains("admin")));
    gw.stop().await;
}

// Behaviour: no encoding, case, slash or dot trick reaches an endpoint permissions deny.
#[tokio::test]
async fn path_tricks_never_reach_denied_endpoints() {
    let (idp, up, gw) = setup(json!({})).await;
    let t = idp.token(json!({"scope": "analytics.read bi.integration.external"}));
    let tricks = [
        "/v2/analytics/data/../admin",
        "/v2/analytics/data/%2e%2e/admin",
        "/v2/analytics/data%2f..%2fadmin",
        "/v2/analytics/%61dmin",
        "/v2/analytics//admin",
        "/v2/analytics/./admin",
        "/v2/analytics/ADMIN",
        "/v2/analytics/admin/",
        "/v2/analytics/admin;jsessionid=1",
        "/v2/analytics/data/..;/admin",
        "/v2/analytics/data%00/../admin",
        "/v2/analytics/data%5c..%5cadmin",
        "/v2/analytics/metadata/../../analytics/admin",
        "/V2/analytics/data/../admin",
    ];
    for p in tricks {
        let req = format!(
            "GET {p} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        );
        let out = raw(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert!(
            out.starts_with("HTTP/1.1 400")
                || out.starts_with("HTTP/1.1 403")
                || out.starts_with("HTTP/1.1 404"),
            "{p}: {out}"
        );
    }
    assert!(
        !up.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.uri.to_ascii_lowercase().contains("admin")),
        "a trick reached the upstream"
    );
    // The legitimate spelling variants of an allowed endpoint still work and arrive normalised.
    let out = raw(gw.addr, format!("GET /v2/analytics//%64ata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.last().uri, "/v2/analytics/data");
    gw.stop().await;
}

// Behaviour: the clients allow-list, with the client read from client_id or azp.
#[tokio::test]
async fn client_allow_list_with_azp() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&up)
        .issuer(&idp, "corp")
        .route(json!({
            "name": "r", "path_prefix": "/r", "upstream": "bi",
            "auth": {"clients": ["sap-cx-dashboard"]},
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let g = &gw;
    let st = |t: String| async move { call(g, reqwest::Method::GET, "/r/x", Some(&t)).await };
    assert_eq!(st(idp.token(json!({}))).await.status(), 200);
    assert_eq!(
        st(idp.token(json!({"client_id": null, "azp": "sap-cx-dashboard"})))
            .await
            .status(),
        200
    );
    let (s, code, desc, _) =
        refusal(st(idp.token(json!({"client_id": null, "azp": "intruder"}))).await).await;
    assert_eq!((s, code.as_str()), (403, "access_denied"));
    assert!(desc.contains("\"intruder\""), "{desc}");
    let (s, _, _, _) = refusal(st(idp.token(json!({"client_id": null}))).await).await;
    assert_eq!(s, 403);
    // An empty client_id names no client: azp is read instead.
    assert_eq!(
        st(idp.token(json!({"client_id": "", "azp": "sap-cx-dashboard"})))
            .await
            .status(),
        200
    );
    assert!(denied(&metrics(&gw).await, "client_not_allowed"));
    gw.stop().await;
}

// Behaviour: a route accepts only its issuers; tokens of another issuer are refused.
#[tokio::test]
async fn per_route_issuers() {
    let a = spawn_idp().await;
    let b = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&up)
        .issuer(&a, "a")
        .issuer(&b, "b")
        .route(json!({"name": "only-a", "path_prefix": "/a", "upstream": "bi", "auth": {"issuers": ["a"]}}))
        .route(json!({"name": "any", "path_prefix": "/any", "upstream": "bi", "auth": {}}))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let tb = b.token(json!({}));
    assert_eq!(
        call(&gw, reqwest::Method::GET, "/a/x", Some(&a.token(json!({}))))
            .await
            .status(),
        200
    );
    let (s, _, desc, _) = refusal(call(&gw, reqwest::Method::GET, "/a/x", Some(&tb)).await).await;
    assert_eq!(s, 401);
    assert!(desc.contains("not accepted"), "{desc}");
    assert_eq!(
        call(&gw, reqwest::Method::GET, "/any/x", Some(&tb))
            .await
            .status(),
        200
    );
    // Now cached as verified by issuer b: still refused where only a is accepted.
    let (s, _, _, _) = refusal(call(&gw, reqwest::Method::GET, "/a/x", Some(&tb)).await).await;
    assert_eq!(s, 401);
    assert!(denied(&metrics(&gw).await, "issuer_not_accepted"));
    gw.stop().await;
}

// Behaviour: key rotation — a token signed with a new key is accepted after one refetch;
// unknown-kid storms do not hammer the JWKS endpoint (at most one refetch per 10 s).
#[tokio::test]
async fn key_rotation_and_unknown_kid_storm() {
    let (idp, _up, gw) = setup(json!({})).await;
    let before = idp.jwks_hits.load(Ordering::SeqCst);
    let new_key = Arc::new(
        tollgate::token_service::keys::SigningKey::from_pem(
            &std::fs::read(fixture("ec384.pem")).unwrap(),
        )
        .unwrap(),
    );
    idp.keys.lock().unwrap().push(new_key.clone());
    let t = idp.token_with(&new_key, json!({}));
    // The refetch for the new kid happens after this; the next one is allowed 10 s later.
    let first_refetch = std::time::Instant::now();
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some(&t)
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        before + 1,
        "one refetch for the new kid"
    );
    // Storm of unknown kids: no further fetch within 10 s.
    let stranger = tollgate::token_service::keys::SigningKey::from_pem(
        &std::fs::read(fixture("ed25519.pem")).unwrap(),
    )
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(format!("random-{i}"));
        let _ = &stranger;
        let claims =
            json!({"iss": idp.issuer, "aud": "https://bi-api.company.com", "exp": now() + 60});
        let k =
            jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-b.pem")).unwrap())
                .unwrap();
        let tok = jsonwebtoken::encode(&header, &claims, &k).unwrap();
        let url = gw.url("/v2/analytics/metadata");
        tasks.push(tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    // One refetch per 10 s that has passed since the first (none on any sane machine:
    // the storm takes a second or two).
    let windows = (first_refetch.elapsed().as_secs() / 10) as usize;
    let hits = idp.jwks_hits.load(Ordering::SeqCst);
    assert!(
        (before + 1..=before + 1 + windows).contains(&hits),
        "unknown kids must not trigger refetches within 10 s: {} refetches in {:?}",
        hits - before,
        first_refetch.elapsed()
    );
    gw.stop().await;
}

// Behaviour: a JWKS outage keeps the last good keys; readiness is not blocked by it.
#[tokio::test]
async fn jwks_outage_keeps_last_good_keys() {
    let (idp, _up, gw) = setup(json!({"jwks_refresh": "200ms"})).await;
    idp.jwks_fail.store(true, Ordering::SeqCst);
    let hits = idp.jwks_hits.load(Ordering::SeqCst);
    eventually(
        "the background refresh retries the failing JWKS endpoint (twice)",
        PATIENCE,
        async || idp.jwks_hits.load(Ordering::SeqCst),
        |n| *n >= hits + 2,
    )
    .await;
    let t = idp.token(json!({"jti": "fresh-token-during-outage"}));
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some(&t)
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.stop().await;
}

// Behaviour: a gateway that starts during an outage becomes ready once the first fetch
// finished (unsuccessfully) and refuses tokens with kid_unknown, never lets them in.
#[tokio::test]
async fn start_during_jwks_outage() {
    let idp = spawn_idp().await;
    idp.jwks_fail.store(true, Ordering::SeqCst);
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&corp_yaml(&idp, &up, json!({}))).await;
    assert_eq!(
        client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (s, _, _, _) = refusal(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some(&idp.token(json!({}))),
        )
        .await,
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(up.count(), 0);
    gw.stop().await;
}

// Behaviour: `discovery` finds the jwks_uri through OIDC metadata.
#[tokio::test]
async fn discovery() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&up)
        .issuer_block(json!({
            "name": "d",
            "issuer": idp.issuer,
            "discovery": idp.url("/.well-known/openid-configuration"),
            "audiences": [AUDIENCE],
        }))
        .route(analytics())
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some(&idp.token(json!({})))
        )
        .await
        .status(),
        200
    );
    gw.stop().await;
}

// Behaviour: opaque tokens via RFC 7662 introspection: active passes with identity,
// inactive is 401 token_inactive, results are cached, expired answers refused.
#[tokio::test]
async fn introspection() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    std::env::set_var("TOLLGATE_TEST_INTROSPECT_SECRET", INTROSPECT_SECRET);
    let mut intro = idp_introspection(&idp, "${env:TOLLGATE_TEST_INTROSPECT_SECRET}");
    intro["cache_ttl"] = json!("30s");
    let yaml = config(&up)
        .issuer_block(json!({
            "name": "opaque",
            "issuer": idp.issuer,
            "introspection": intro,
            "audiences": [AUDIENCE],
        }))
        .route(analytics())
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    idp.opaque.lock().unwrap().insert("opaque-good".into(), json!({"active": true, "iss": idp.issuer, "aud": "https://bi-api.company.com", "client_id": "partner", "sub": "svc", "scope": "analytics.read", "exp": now() + 300}));
    idp.opaque.lock().unwrap().insert("opaque-expired".into(), json!({"active": true, "scope": "analytics.read", "aud": "https://bi-api.company.com", "exp": now() - 300}));
    idp.opaque.lock().unwrap().insert("opaque-wrong-aud".into(), json!({"active": true, "scope": "analytics.read", "aud": "https://elsewhere", "exp": now() + 300}));
    for _ in 0..3 {
        assert_eq!(
            call(
                &gw,
                reqwest::Method::GET,
                "/v2/analytics/metadata",
                Some("opaque-good")
            )
            .await
            .status(),
            200
        );
    }
    assert_eq!(idp.introspect_hits.load(Ordering::SeqCst), 1, "cached");
    assert_eq!(up.last().header("x-auth-client-id"), Some("partner"));
    // Concurrent first use of one token: one call.
    idp.opaque.lock().unwrap().insert("opaque-burst".into(), json!({"active": true, "scope": "analytics.read", "aud": "https://bi-api.company.com", "exp": now() + 300}));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = gw.url("/v2/analytics/metadata");
        tasks.push(tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth("opaque-burst")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        idp.introspect_hits.load(Ordering::SeqCst),
        2,
        "single flight per token"
    );
    let (s, _, _, _) = refusal(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some("opaque-unknown"),
        )
        .await,
    )
    .await;
    assert_eq!(s, 401);
    assert!(denied(&metrics(&gw).await, "token_inactive"));
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some("opaque-expired")
        )
        .await
        .status(),
        401
    );
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some("opaque-wrong-aud")
        )
        .await
        .status(),
        401
    );
    // A 400 `unsupported_token_type` is a refusal (401); an outage is 502, never a pass.
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some("answer-400")
        )
        .await
        .status(),
        401
    );
    let r = call(
        &gw,
        reqwest::Method::GET,
        "/v2/analytics/metadata",
        Some("answer-500"),
    )
    .await;
    assert_eq!(r.status(), 502);
    assert_eq!(json_of(r).await["error"], "bad_gateway");
    let m = metrics(&gw).await;
    let count = |result: &str| -> u64 {
        let prefix = format!(
            "tollgate_introspection_requests_total{{issuer=\"opaque\",result=\"{result}\"}} "
        );
        m.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing:\n{m}"))
    };
    assert!(count("active") >= 2 && count("inactive") >= 2 && count("failure") >= 1);
    // Flushing drops cached results.
    let hits = idp.introspect_hits.load(Ordering::SeqCst);
    client()
        .post(gw.admin_url("/admin/caches/flush"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/v2/analytics/metadata",
            Some("opaque-good")
        )
        .await
        .status(),
        200
    );
    assert_eq!(idp.introspect_hits.load(Ordering::SeqCst), hits + 1);
    gw.stop().await;
}

// Behaviour: every denial is logged once with request id, route, permission, client and
// reason code — never the token.
#[tokio::test]
async fn denial_logs_name_the_gate_not_the_token() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, corp_yaml(&idp, &up, json!({}))).unwrap();
    let mut bin = spawn_binary(&cfg, &["run"]);
    let addr = bin.public.clone();
    let t = idp.token(json!({}));
    let r = client()
        .get(format!("http://{addr}/v2/analytics/data"))
        .bearer_auth(&t)
        .header("x-request-id", "log-check-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let expired = idp.token(json!({"exp": now() - 100}));
    let r = client()
        .get(format!("http://{addr}/v2/analytics/metadata"))
        .bearer_auth(&expired)
        .header("x-request-id", "log-check-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Stopped, and its output read to the end: every line it wrote is in.
    assert!(bin.terminate().await.success());
    let logs = bin.log_text();
    let denial: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("denied") && l.contains("log-check-1"))
        .collect();
    assert_eq!(denial.len(), 1, "exactly one denial line:\n{logs}");
    let d = denial[0];
    for needle in [
        "route=\"analytics\"",
        "permission=\"/v2/analytics/data\"",
        "client=\"sap-cx-dashboard\"",
        "reason=\"scope_missing\"",
    ] {
        assert!(d.contains(needle), "{needle} missing in {d}");
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("log-check-2") && l.contains("reason=\"token_expired\"")),
        "{logs}"
    );
    let sig = t.rsplit('.').next().unwrap();
    assert!(
        !logs.contains(sig) && !logs.contains(&expired),
        "a token appeared in the logs"
    );
    assert!(
        logs.lines()
            .filter(|l| l.contains("tollgate::access"))
            .count()
            >= 2,
        "access log lines"
    );
}

// Behaviour: `tollgate explain` prints the trace and exits 0 when allowed, 1 when denied.
#[tokio::test]
async fn explain_allow_and_deny() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, corp_yaml(&idp, &up, json!({}))).unwrap();
    let run = |token: String, method: &'static str, path: &'static str| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            output_within(
                "tollgate explain",
                crate::cli::bin()
                    .args(["explain", "--config"])
                    .arg(&cfg)
                    .args(["--token", &token, "--method", method, path]),
                PATIENCE,
            )
        })
    };
    let allowed = run(idp.token(json!({})), "GET", "/v2/analytics/metadata")
        .await
        .unwrap();
    let text = allowed.stdout.clone();
    assert_eq!(allowed.status.code(), Some(0), "{text}");
    for needle in [
        "route: analytics",
        "signature: valid",
        "scopes granted: [analytics.read]",
        "permission: /v2/analytics/metadata",
        "result: ALLOW",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let denied_out = run(idp.token(json!({})), "GET", "/v2/analytics/data")
        .await
        .unwrap();
    let text = denied_out.stdout.clone();
    assert_eq!(denied_out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("insufficient_scope")
            && text.contains("scope bi.integration.external required")
            && text.contains("scope_missing"),
        "{text}"
    );
    let expired = run(
        idp.token(json!({"exp": now() - 1000})),
        "GET",
        "/v2/analytics/metadata",
    )
    .await
    .unwrap();
    let text = expired.stdout.clone();
    assert_eq!(expired.status.code(), Some(1));
    assert!(text.contains("token_expired"), "{text}");
    let method = run(idp.token(json!({})), "DELETE", "/v2/analytics/metadata")
        .await
        .unwrap();
    assert_eq!(method.status.code(), Some(1));
    assert!(method.stdout.contains("method_not_allowed"));
    // Refused by the route's own scopes: the permissions were never looked at, which
    // the trace says instead of claiming that no entry matches.
    let route_scope = run(
        idp.token(json!({"scope": "other"})),
        "GET",
        "/v2/analytics/metadata",
    )
    .await
    .unwrap();
    let text = route_scope.stdout.clone();
    assert_eq!(route_scope.status.code(), Some(1), "{text}");
    assert!(text.contains("scope_missing"), "{text}");
    assert!(text.contains("permission: not checked"), "{text}");
    assert!(!text.contains("no entry matches"), "{text}");
    let no_entry = run(idp.token(json!({})), "GET", "/v2/analytics/nothing-here")
        .await
        .unwrap();
    let text = no_entry.stdout.clone();
    assert_eq!(no_entry.status.code(), Some(1), "{text}");
    assert!(text.contains("endpoint_not_allowed"), "{text}");
    assert!(
        text.contains("permission: no entry matches this path"),
        "{text}"
    );
    assert_eq!(up.count(), 0, "explain sends no request upstream");
}
