//! The token service and body credentials.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::{GatewayConfig, AUDIENCE};

const SECRET: &str = "p@ss:w/rd+%&=x";

/// The token service (a plain and a hashed client, the signing key file if given) and
/// the analytics route for its tokens, plus `extra_routes`.
fn yaml(up: &Upstream, key: Option<&std::path::Path>, extra_routes: &[Value]) -> String {
    let hash = tollgate::token_service::hash_secret("hashed-secret").unwrap();
    let mut ts = json!({
        "path": "/oauth2/token",
        "issuer": "https://gateway.example.com",
        "audience": AUDIENCE,
        "token_ttl": "10m",
        "clients": [
            {
                "id": "sap-cx-dashboard",
                "secret": SECRET,
                "scopes": ["analytics.read", "dashboard.access", "bi.integration.external"],
            },
            {"id": "hashed", "secret_hash": hash, "scopes": ["analytics.read"]},
        ],
    });
    if let Some(k) = key {
        ts["signing_key"] = json!(k.display().to_string());
    }
    let mut cfg = GatewayConfig::public_only()
        .set("token_service", ts)
        .upstream("bi", &up.url())
        .route(json!({
            "name": "analytics",
            "path_prefix": "/v2/analytics",
            "upstream": "bi",
            "auth": {"issuers": ["local"], "scopes": ["analytics.read"]},
            "permissions": [
                {"path": "/v2/analytics/data", "methods": ["GET"], "scopes": ["bi.integration.external"]},
                {"path": "/v2/analytics/metadata", "methods": ["GET"]},
            ],
        }));
    for r in extra_routes {
        cfg = cfg.route(r.clone());
    }
    cfg.yaml()
}

fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

fn claims(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    let c = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, c)
}

async fn token_basic(gw: &Gw, id: &str, secret: &str, scope: Option<&str>) -> reqwest::Response {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    client()
        .post(gw.url("/oauth2/token"))
        .header("authorization", basic(id, secret))
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn access_token(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 200);
    json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

// Behaviour: client_secret_basic with reserved characters -> an RFC 9068 JWT with every
// claim, Cache-Control: no-store, verifiable with the published JWKS.
#[tokio::test]
async fn basic_client_auth_issues_a_verifiable_jwt() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up, None, &[])).await;
    let r = token_basic(&gw, "sap-cx-dashboard", SECRET, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = json_of(r).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(
        body["scope"],
        "analytics.read dashboard.access bi.integration.external"
    );
    let token = body["access_token"].as_str().unwrap();
    let (h, c) = claims(token);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "ES256");
    for k in [
        "iss",
        "sub",
        "client_id",
        "aud",
        "scope",
        "iat",
        "exp",
        "jti",
    ] {
        assert!(!c[k].is_null(), "claim {k} missing: {c}");
    }
    assert_eq!(c["iss"], "https://gateway.example.com");
    assert_eq!(c["aud"], "https://bi-api.company.com");
    assert_eq!(c["client_id"], "sap-cx-dashboard");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
    // Verify against the published key set.
    let jwks: Value = client()
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let jwk = set.find(h["kid"].as_str().unwrap()).expect("kid published");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["https://bi-api.company.com"]);
    v.set_issuer(&["https://gateway.example.com"]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .expect("verifies");
    gw.stop().await;
}

// Behaviour: client_secret_post in form and JSON bodies; grant_type in the query string;
// argon2id secret_hash clients.
#[tokio::test]
async fn body_json_query_and_hashed_clients() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up, None, &[])).await;
    let form = client()
        .post(gw.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sap-cx-dashboard"),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let j = client()
        .post(gw.url("/oauth2/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "sap-cx-dashboard", "client_secret": SECRET, "scope": "analytics.read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(j.status(), 200);
    assert_eq!(json_of(j).await["scope"], "analytics.read");
    // JSON `null` is a parameter not given: every registered scope.
    let n = client()
        .post(gw.url("/oauth2/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "sap-cx-dashboard", "client_secret": SECRET, "scope": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(n.status(), 200);
    assert_eq!(
        json_of(n).await["scope"],
        "analytics.read dashboard.access bi.integration.external"
    );
    let q = client()
        .post(gw.url("/oauth2/token?grant_type=client_credentials"))
        .header("authorization", basic("sap-cx-dashboard", SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(q.status(), 200);
    let h = token_basic(&gw, "hashed", "hashed-secret", None).await;
    assert_eq!(h.status(), 200);
    gw.stop().await;
}

// Behaviour: the OAuth2 error cases.
#[tokio::test]
async fn token_endpoint_errors() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up, None, &[])).await;
    let err = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        let www = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let b = json_of(r).await;
        (
            s,
            b["error"].as_str().unwrap().to_owned(),
            b["error_description"].as_str().unwrap().to_owned(),
            www,
        )
    };
    let (s, e, _, www) = err(token_basic(&gw, "sap-cx-dashboard", "wrong", None).await).await;
    assert_eq!((s, e.as_str()), (401, "invalid_client"));
    assert!(www.unwrap().starts_with("Basic"));
    let (s, e, _, _) = err(token_basic(&gw, "nobody", SECRET, None).await).await;
    assert_eq!((s, e.as_str()), (401, "invalid_client"));
    let (s, e, d, _) = err(token_basic(
        &gw,
        "sap-cx-dashboard",
        SECRET,
        Some("analytics.read admin.write"),
    )
    .await)
    .await;
    assert_eq!((s, e.as_str()), (400, "invalid_scope"));
    assert!(
        d.contains("admin.write") && d.contains("sap-cx-dashboard"),
        "{d}"
    );
    let r = client()
        .post(gw.url("/oauth2/token"))
        .header("authorization", basic("sap-cx-dashboard", SECRET))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    let (s, e, _, _) = err(r).await;
    assert_eq!((s, e.as_str()), (400, "unsupported_grant_type"));
    let r = client()
        .post(gw.url("/oauth2/token"))
        .header("authorization", basic("sap-cx-dashboard", SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sap-cx-dashboard"),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    let (s, e, _, _) = err(r).await;
    assert_eq!(
        (s, e.as_str()),
        (400, "invalid_request"),
        "credentials in both places"
    );
    let r = client()
        .post(gw.url("/oauth2/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let (s, e, _, _) = err(r).await;
    assert_eq!((s, e.as_str()), (401, "invalid_client"));
    // Two Authorization headers: which client is asking is ambiguous.
    let r = client()
        .post(gw.url("/oauth2/token"))
        .header("authorization", basic("sap-cx-dashboard", SECRET))
        .header("authorization", basic("hashed", "hashed-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let (s, e, d, _) = err(r).await;
    assert_eq!((s, e.as_str()), (400, "invalid_request"));
    assert!(d.contains("more than one Authorization header"), "{d}");
    // Any method but POST: 405 saying which one it takes.
    let r = client().get(gw.url("/oauth2/token")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(json_of(r).await["error"], "method_not_allowed");
    // The key set and the metadata are read, not written.
    for p in [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
    ] {
        let r = client().post(gw.url(p)).send().await.unwrap();
        assert_eq!(r.status(), 405, "{p}");
        assert_eq!(r.headers()["allow"], "GET, HEAD", "{p}");
        assert_eq!(client().get(gw.url(p)).send().await.unwrap().status(), 200);
    }
    gw.stop().await;
}

// Behaviour: blank scope -> every registered scope; downscoped tokens are enforced at
// routes; a token from the service passes a route requiring `local`.
#[tokio::test]
async fn scopes_and_routes() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up, None, &[])).await;
    for blank in ["", " ", "   "] {
        let r = token_basic(&gw, "sap-cx-dashboard", SECRET, Some(blank)).await;
        assert_eq!(
            json_of(r).await["scope"],
            "analytics.read dashboard.access bi.integration.external",
            "{blank:?}"
        );
    }
    let full = access_token(token_basic(&gw, "sap-cx-dashboard", SECRET, None).await).await;
    let down =
        access_token(token_basic(&gw, "sap-cx-dashboard", SECRET, Some("analytics.read")).await)
            .await;
    let get = |t: String, p: &'static str| {
        let url = gw.url(p);
        async move { client().get(url).bearer_auth(t).send().await.unwrap() }
    };
    assert_eq!(get(full.clone(), "/v2/analytics/data").await.status(), 200);
    assert_eq!(
        up.last().header("x-auth-client-id"),
        Some("sap-cx-dashboard")
    );
    assert_eq!(
        get(down.clone(), "/v2/analytics/metadata").await.status(),
        200
    );
    let r = get(down, "/v2/analytics/data").await;
    assert_eq!(r.status(), 403);
    assert_eq!(json_of(r).await["error"], "insufficient_scope");
    gw.stop().await;
}

// Behaviour: RFC 8414 metadata.
#[tokio::test]
async fn metadata() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up, None, &[])).await;
    let m: Value = client()
        .get(gw.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["issuer"], "https://gateway.example.com");
    assert_eq!(
        m["token_endpoint"],
        "https://gateway.example.com/oauth2/token"
    );
    assert_eq!(
        m["jwks_uri"],
        "https://gateway.example.com/.well-known/jwks.json"
    );
    assert_eq!(m["grant_types_supported"], json!(["client_credentials"]));
    assert!(m["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("client_secret_basic")));
    gw.stop().await;
}

// Behaviour: a restart with the same signing_key keeps earlier tokens valid.
#[tokio::test]
async fn same_signing_key_survives_restart() {
    let up = spawn_upstream().await;
    let key = fixture("ec256.pem");
    let gw = spawn_gateway(&yaml(&up, Some(&key), &[])).await;
    let t = access_token(token_basic(&gw, "sap-cx-dashboard", SECRET, None).await).await;
    gw.stop().await;
    let gw = spawn_gateway(&yaml(&up, Some(&key), &[])).await;
    let r = client()
        .get(gw.url("/v2/analytics/metadata"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
    // A different key refuses it.
    let gw = spawn_gateway(&yaml(&up, Some(&fixture("rsa-a.pem")), &[])).await;
    let r = client()
        .get(gw.url("/v2/analytics/metadata"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let t2 = access_token(token_basic(&gw, "sap-cx-dashboard", SECRET, None).await).await;
    assert_eq!(claims(&t2).0["alg"], "RS256");
    gw.stop().await;
}

/// Two open routes with `body_credentials: basic`, the second with
/// `grant_type_to_query`.
fn cpi_routes() -> [Value; 2] {
    [
        json!({
            "name": "cpi-token", "path_prefix": "/cpi/oauth/token", "upstream": "bi",
            "auth": "none", "body_credentials": "basic",
        }),
        json!({
            "name": "cpi-query", "path_prefix": "/cpiq/oauth/token", "upstream": "bi",
            "auth": "none", "body_credentials": "basic", "grant_type_to_query": true,
        }),
    ]
}

// Behaviour: body_credentials moves client_id/client_secret from form and JSON bodies to
// Authorization: Basic (RFC 6749 §2.3.1), keeping every other field.
#[tokio::test]
async fn body_credentials_to_basic() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up, None, &cpi_routes())).await;
    let r = client()
        .post(gw.url("/cpi/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id=third%20party&scope=a+b&client_secret={}",
            form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = up.last();
    assert_eq!(
        s.header("authorization"),
        Some(basic("third party", SECRET).as_str())
    );
    assert_eq!(&s.body[..], b"grant_type=client_credentials&scope=a+b");
    assert_eq!(s.header("content-length"), Some("39"));
    let r = client()
        .post(gw.url("/cpi/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "c", "client_secret": SECRET, "resource_type": "learning_public_api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = up.last();
    assert_eq!(s.header("authorization"), Some(basic("c", SECRET).as_str()));
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        body,
        json!({"grant_type": "client_credentials", "resource_type": "learning_public_api"})
    );
    // grant_type to the query string.
    let r = client()
        .post(gw.url("/cpiq/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "c"),
            ("client_secret", "s"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().uri,
        "/cpiq/oauth/token?grant_type=client_credentials"
    );
    gw.stop().await;
}

// Behaviour: header and body, or only one of the two fields -> 400; nothing forwarded.
#[tokio::test]
async fn body_credentials_refusals() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up, None, &cpi_routes())).await;
    let cases: Vec<reqwest::RequestBuilder> = vec![
        client()
            .post(gw.url("/cpi/oauth/token"))
            .header("authorization", basic("a", "b"))
            .form(&[("client_id", "a"), ("client_secret", "b")]),
        client()
            .post(gw.url("/cpi/oauth/token"))
            .form(&[("grant_type", "client_credentials"), ("client_id", "a")]),
        client()
            .post(gw.url("/cpi/oauth/token"))
            .json(&json!({"client_secret": "b"})),
        client()
            .post(gw.url("/cpi/oauth/token"))
            .json(&json!({"client_id": 5, "client_secret": "b"})),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let r = c.send().await.unwrap();
        assert_eq!(r.status(), 400, "case {i}");
        assert_eq!(json_of(r).await["error"], "invalid_request");
    }
    assert_eq!(up.count(), 0);
    gw.stop().await;
}

// Behaviour: secrets never appear in the logs (token service and body credentials).
#[tokio::test]
async fn no_secret_in_logs() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, yaml(&up, None, &cpi_routes())).unwrap();
    let mut bin = spawn_binary(&cfg, &["run"]);
    let addr = bin.public.clone();
    let base = format!("http://{addr}");
    let r = client()
        .post(format!("{base}/oauth2/token"))
        .header("authorization", basic("sap-cx-dashboard", SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let token = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let _ = client()
        .post(format!("{base}/oauth2/token"))
        .header(
            "authorization",
            basic("sap-cx-dashboard", "Wr0ngSecretValue"),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let _ = client()
        .post(format!("{base}/cpi/oauth/token"))
        .form(&[("client_id", "c"), ("client_secret", "BodySecretValue9")])
        .send()
        .await
        .unwrap();
    let _ = client()
        .get(format!("{base}/v2/analytics/metadata"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    // Stopped, and its output read to the end: every line it wrote is in.
    assert!(bin.terminate().await.success());
    let logs = bin.log_text();
    assert!(
        logs.contains("client authentication failed") && logs.contains("bad_secret"),
        "{logs}"
    );
    for secret in [
        SECRET,
        "Wr0ngSecretValue",
        "BodySecretValue9",
        token.as_str(),
        token.rsplit('.').next().unwrap(),
    ] {
        assert!(!logs.contains(secret), "secret or token in logs: {secret}");
    }
}
