//! tollgate's policy as a tower layer in front of a real axum application, served on
//! 127.0.0.1:0 and called over real sockets: SPEC's 401/403 bodies, the identity
//! reaching the handler, path normalisation, and issuer key rotation.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tollgate::layer::{Caller, PolicyLayer};

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// Routes without upstreams: the policy only, in front of the axum app.
fn config(idp: &Idp) -> String {
    GatewayConfig::public_only()
        .issuer(idp, "corp")
        .route(json!({
            "name": "analytics",
            "path_prefix": "/v2/analytics",
            "auth": {"scopes": ["analytics.read"], "clients": ["sap-cx-dashboard"]},
            "permissions": [
                {"path": "/v2/analytics/data", "methods": ["GET"], "scopes": ["bi.integration.external"]},
                {"path": "/v2/analytics/metadata", "methods": ["GET"]},
            ],
        }))
        .route(json!({"name": "public", "path_prefix": "/public", "auth": "none"}))
        .yaml()
}

async fn whoami(Caller(id): Caller) -> Json<serde_json::Value> {
    Json(json!({
        "client_id": id.client_id,
        "subject": id.subject,
        "scopes": id.scopes,
        "issuer": &*id.issuer,
    }))
}

/// The app behind the layer, on 127.0.0.1:0; the task ends with the test's runtime.
async fn spawn_app(policy: PolicyLayer) -> String {
    let app = Router::new()
        .route("/v2/analytics/metadata", get(whoami))
        .route("/v2/analytics/data", get(whoami))
        .route(
            "/v2/analytics/admin",
            get(|| async { "must never be reached" }),
        )
        .route("/public/hello", get(|| async { "hello" }))
        .layer(policy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

async fn setup() -> (Idp, String, tempfile::TempDir) {
    let idp = spawn_idp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, config(&idp)).unwrap();
    let base = spawn_app(PolicyLayer::from_file(&cfg).unwrap()).await;
    (idp, base, dir)
}

async fn get_with(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = client().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

// Behaviour: no token -> SPEC's 401 with the challenge and JSON body, request id echoed;
// the application is not reached.
#[tokio::test]
async fn refuses_without_a_token_with_spec_errors() {
    let (_idp, base, _dir) = setup().await;
    let r = get_with(&format!("{base}/v2/analytics/metadata"), None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["request_id"], rid.as_str());
    // Public routes pass without a token; unknown paths are the gateway's 404.
    assert_eq!(
        get_with(&format!("{base}/public/hello"), None)
            .await
            .text()
            .await
            .unwrap(),
        "hello"
    );
    let r = get_with(&format!("{base}/nowhere"), None).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}

// Behaviour: each gate says no with its own code; the handler sees the verified identity.
#[tokio::test]
async fn gates_decide_and_the_identity_reaches_the_handler() {
    let (idp, base, _dir) = setup().await;
    let ok = idp.token(json!({}));
    let r = get_with(&format!("{base}/v2/analytics/metadata"), Some(&ok)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["client_id"], "sap-cx-dashboard");
    assert_eq!(body["subject"], "user-1");
    assert_eq!(body["issuer"], "corp");
    assert_eq!(body["scopes"], json!(["analytics.read"]));

    let r = get_with(&format!("{base}/v2/analytics/data"), Some(&ok)).await;
    assert_eq!(r.status(), 403);
    let www = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(
        body["error_description"],
        "scope bi.integration.external required"
    );

    // Endpoint not in permissions: 403 access_denied, the handler is never reached.
    let r = get_with(&format!("{base}/v2/analytics/admin"), Some(&ok)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "access_denied"
    );

    // A client not on the list.
    let other = idp.token(json!({"client_id": "someone-else"}));
    let r = get_with(&format!("{base}/v2/analytics/metadata"), Some(&other)).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("someone-else"));

    // Expired.
    let old = idp.token(json!({"exp": now() - 1000}));
    let r = get_with(&format!("{base}/v2/analytics/metadata"), Some(&old)).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.json::<serde_json::Value>().await.unwrap()["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

// Behaviour: what the gate checks is what the handler serves: an encoded, dot-segment or
// doubled-slash spelling of any endpoint is refused (axum routes on the path as sent).
#[tokio::test]
async fn path_tricks_do_not_reach_a_denied_endpoint() {
    let (idp, base, _dir) = setup().await;
    let ok = idp.token(json!({}));
    for trick in [
        "/v2/analytics/metadata/../admin",
        "/v2/analytics/%61dmin",
        "/v2/analytics//admin",
    ] {
        let r = get_with(&format!("{base}{trick}"), Some(&ok)).await;
        assert!(
            r.status() == 403 || r.status() == 400,
            "{trick}: {}",
            r.status()
        );
        assert_ne!(r.text().await.unwrap(), "must never be reached", "{trick}");
    }
    // Even an allowed endpoint spelled with an escape: 400 naming the normal form.
    let r = get_with(&format!("{base}/v2/analytics/%6Detadata"), Some(&ok)).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("/v2/analytics/metadata"),
        "{body}"
    );
}

// Behaviour: a token signed with a key the issuer published after the layer started is
// accepted after one JWKS refetch (key rotation).
#[tokio::test]
async fn a_rotated_issuer_key_is_picked_up() {
    let (idp, base, _dir) = setup().await;
    let first = idp.token(json!({}));
    assert_eq!(
        get_with(&format!("{base}/v2/analytics/metadata"), Some(&first))
            .await
            .status(),
        200
    );
    let before = idp.jwks_hits.load(Ordering::SeqCst);
    let new_key = Arc::new(
        tollgate::token_service::keys::SigningKey::from_pem(
            &std::fs::read(fixture("ec384.pem")).unwrap(),
        )
        .unwrap(),
    );
    idp.keys.lock().unwrap().push(new_key.clone());
    let rotated = idp.token_with(&new_key, json!({}));
    let r = get_with(&format!("{base}/v2/analytics/metadata"), Some(&rotated)).await;
    assert_eq!(r.status(), 200);
    assert!(
        idp.jwks_hits.load(Ordering::SeqCst) > before,
        "the JWKS was refetched"
    );
}
