//! End to end with a real, certified OpenID provider: panva/oidc-provider (Node,
//! tests/e2e/oidc/provider.mjs). client_credentials with RFC 8707 resource indicators
//! gives JWT access tokens (verified through `discovery:`) and opaque ones (RFC 7662
//! introspection); tollgate must accept and refuse them exactly as configured.
//!
//! Needs Node 20+ and `npm ci --prefix tests/e2e/oidc` (CI does it in `.ci/run`).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use serde_json::json;

use crate::common::*;
use crate::gwconfig::GatewayConfig;

const GATEWAY_E2E_SECRET: &str = "gateway-e2e-s3cret-from-test";
/// The secret of the provider's `tollgate-web` sign-in client.
pub const TOLLGATE_WEB_SECRET: &str = "tollgate-web-s3cret-from-test";
const INTROSPECTOR_SECRET: &str = "introspector-s3cret-from-test";
const INTROSPECTOR_SECRET_ENV: &str = "TOLLGATE_E2E_OIDC_INTROSPECTOR_SECRET";

const BI_API: &str = "https://bi-api.company.com";
const OTHER_API: &str = "https://other-api.company.com";
const OPAQUE_API: &str = "https://opaque-api.company.com";
const OTHER_OPAQUE_API: &str = "https://other-opaque-api.company.com";

/// The oidc-provider child process, in a process group of its own; killed (the group,
/// by its PGID) when dropped. It also exits by itself when its stdin closes, so it does
/// not outlive a test process that dies without unwinding.
pub struct OidcProvider {
    process: ChildGuard,
    pub issuer: String,
    stderr: Arc<Mutex<String>>,
}

impl OidcProvider {
    fn spawn() -> OidcProvider {
        OidcProvider::spawn_with(&[])
    }

    /// With provider.mjs command-line flags (e.g. `--login-access-token-ttl 65`).
    pub fn spawn_with(args: &[&str]) -> OidcProvider {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{}/node_modules is missing: run `npm ci --prefix tests/e2e/oidc` (needs Node 20+)",
            dir.display()
        );
        let mut process = ChildGuard::spawn_group(
            "node provider.mjs (Node 20+ must be on PATH)",
            Command::new("node")
                .arg(dir.join("provider.mjs"))
                .args(args)
                .current_dir(&dir)
                .env("OIDC_PORT", "0")
                .env("GATEWAY_E2E_SECRET", GATEWAY_E2E_SECRET)
                .env("TOLLGATE_WEB_SECRET", TOLLGATE_WEB_SECRET)
                .env("INTROSPECTOR_SECRET", INTROSPECTOR_SECRET)
                // The provider exits when its stdin closes: nothing outlives a killed test.
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = process.child_mut().stderr.take().unwrap();
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdout = process.child_mut().stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("LISTENING ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let mut provider = OidcProvider {
            process,
            issuer: String::new(),
            stderr,
        };
        match rx.recv_timeout(STARTUP) {
            Ok(url) => provider.issuer = url,
            Err(_) => panic!(
                "oidc-provider did not print LISTENING within {STARTUP:?} (exit: {:?}); stderr:\n{}",
                provider.process.try_wait(),
                provider.stderr()
            ),
        }
        assert!(
            provider.issuer.starts_with("http://127.0.0.1:"),
            "{}",
            provider.issuer
        );
        provider
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// client_credentials at the provider's token endpoint, client_secret_basic.
async fn token(token_endpoint: &str, resource: &str, scope: &str) -> serde_json::Value {
    let r = client()
        .post(token_endpoint)
        .basic_auth("gateway-e2e", Some(GATEWAY_E2E_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", resource),
            ("scope", scope),
        ])
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = json_of(r).await;
    assert_eq!(status, 200, "token request for {resource}: {body}");
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["scope"], scope, "{body}");
    body
}

fn access_token(v: &serde_json::Value) -> String {
    v["access_token"].as_str().unwrap().to_owned()
}

fn is_jwt(t: &str) -> bool {
    t.split('.').count() == 3
}

async fn get(gw: &Gw, method: reqwest::Method, path: &str, token: &str) -> reqwest::Response {
    client()
        .request(method, gw.url(path))
        .bearer_auth(token)
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap()
}

/// Status, error code, error_description and WWW-Authenticate of a refusal.
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

// Behaviour: tokens from panva/oidc-provider (client_credentials + resource indicators)
// pass and fail as configured — JWT access tokens (typ at+jwt, RS256 key found through
// discovery) by audience, scope and client allow-list; opaque tokens through RFC 7662
// introspection by activity and audience; identity headers reach the upstream.
#[tokio::test]
async fn oidc_provider_tokens_accepted_and_refused() {
    let op = OidcProvider::spawn();
    let iss = op.issuer.clone();
    let discovery_url = format!("{iss}/.well-known/openid-configuration");
    let meta = json_of(client().get(&discovery_url).send().await.unwrap()).await;
    assert_eq!(meta["issuer"], iss.as_str(), "{meta}");
    let token_endpoint = meta["token_endpoint"].as_str().unwrap().to_owned();
    let introspection_endpoint = meta["introspection_endpoint"]
        .as_str()
        .expect("provider advertises introspection")
        .to_owned();

    // Tokens first: everything below is decided by tollgate alone.
    let read = access_token(&token(&token_endpoint, BI_API, "analytics.read").await);
    let read_write =
        access_token(&token(&token_endpoint, BI_API, "analytics.read analytics.write").await);
    let other_aud = access_token(&token(&token_endpoint, OTHER_API, "analytics.read").await);
    let opaque = access_token(&token(&token_endpoint, OPAQUE_API, "analytics.read").await);
    let other_opaque =
        access_token(&token(&token_endpoint, OTHER_OPAQUE_API, "analytics.read").await);
    assert!(is_jwt(&read) && is_jwt(&read_write) && is_jwt(&other_aud));
    assert!(!is_jwt(&opaque) && !is_jwt(&other_opaque), "{opaque}");

    std::env::set_var(INTROSPECTOR_SECRET_ENV, INTROSPECTOR_SECRET);
    let up = spawn_upstream().await;
    let route = |name: &str, prefix: &str, auth: serde_json::Value| json!({"name": name, "path_prefix": prefix, "upstream": "bi", "auth": auth});
    let yaml = GatewayConfig::public_only()
        .issuer_block(json!({
            "name": "oidc",
            "issuer": iss,
            "discovery": discovery_url,
            "audiences": [BI_API],
        }))
        .issuer_block(json!({
            "name": "oidc-opaque",
            "issuer": iss,
            "introspection": {
                "url": introspection_endpoint,
                "client_id": "introspector",
                "client_secret": format!("${{env:{INTROSPECTOR_SECRET_ENV}}}"),
                "cache_ttl": "30s",
            },
            "audiences": [OPAQUE_API],
        }))
        .upstream("bi", &up.url())
        .route(route(
            "analytics",
            "/v2/analytics",
            json!({"issuers": ["oidc"], "scopes": ["analytics.read"]}),
        ))
        .route(route(
            "analytics-write",
            "/v2/analytics/write",
            json!({"issuers": ["oidc"], "scopes": ["analytics.write"]}),
        ))
        .route(route(
            "partner",
            "/v2/partner",
            json!({"issuers": ["oidc"], "scopes": ["analytics.read"], "clients": ["partner-dashboard"]}),
        ))
        .route(route(
            "opaque",
            "/v2/opaque",
            json!({"issuers": ["oidc-opaque"], "scopes": ["analytics.read"]}),
        ))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    assert!(gw.gateway().ready(), "keys found through discovery");

    // JWT, right audience and scope: forwarded with the verified identity.
    let r = get(&gw, reqwest::Method::GET, "/v2/analytics/reports", &read).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(up.count(), 1);
    let s = up.last();
    assert_eq!(s.uri, "/v2/analytics/reports");
    assert_eq!(s.header("x-auth-client-id"), Some("gateway-e2e"));
    assert_eq!(s.header("x-auth-subject"), Some("gateway-e2e"));
    assert_eq!(s.header("x-auth-scopes"), Some("analytics.read"));
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {read}").as_str())
    );

    // A scope the token lacks: 403 insufficient_scope naming it; nothing forwarded.
    let r = get(&gw, reqwest::Method::POST, "/v2/analytics/write/x", &read).await;
    let (status, code, _, www) = refusal(r).await;
    assert_eq!((status, code.as_str()), (403, "insufficient_scope"));
    assert!(www.contains("scope=\"analytics.write\""), "{www}");
    assert_eq!(up.count(), 1);
    // ...and with the scope granted by the provider, the same route passes.
    let r = get(
        &gw,
        reqwest::Method::POST,
        "/v2/analytics/write/x",
        &read_write,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(up.count(), 2);
    assert_eq!(
        up.last().header("x-auth-scopes"),
        Some("analytics.read analytics.write")
    );

    // A route for another client: 403 access_denied; nothing forwarded.
    let r = get(&gw, reqwest::Method::GET, "/v2/partner/data", &read).await;
    let (status, code, desc, _) = refusal(r).await;
    assert_eq!((status, code.as_str()), (403, "access_denied"), "{desc}");
    assert_eq!(up.count(), 2);

    // A validly signed token for another resource (ES256, same JWKS): 401 on audience.
    let r = get(
        &gw,
        reqwest::Method::GET,
        "/v2/analytics/reports",
        &other_aud,
    )
    .await;
    let (status, code, desc, www) = refusal(r).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"), "{desc}");
    assert!(desc.contains(OTHER_API), "{desc}");
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    assert_eq!(up.count(), 2);

    // An opaque token on a JWT-only route: 401.
    let r = get(&gw, reqwest::Method::GET, "/v2/analytics/reports", &opaque).await;
    let (status, code, desc, _) = refusal(r).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"), "{desc}");
    assert_eq!(up.count(), 2);

    // Opaque token, introspected by the provider for the `introspector` client.
    let r = get(&gw, reqwest::Method::GET, "/v2/opaque/reports", &opaque).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(up.count(), 3);
    let s = up.last();
    assert_eq!(s.header("x-auth-client-id"), Some("gateway-e2e"));
    assert_eq!(s.header("x-auth-scopes"), Some("analytics.read"));
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {opaque}").as_str())
    );

    // Active, but for another audience: 401.
    let r = get(
        &gw,
        reqwest::Method::GET,
        "/v2/opaque/reports",
        &other_opaque,
    )
    .await;
    let (status, code, desc, _) = refusal(r).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"), "{desc}");
    assert!(desc.contains(OTHER_OPAQUE_API), "{desc}");
    assert_eq!(up.count(), 3);

    // Garbage: the provider says inactive; 401.
    let garbage = "Zm9vYmFyLW5vdC1hLXRva2VuLWZyb20tdGhpcy1wcm92aWRlcg";
    let r = get(&gw, reqwest::Method::GET, "/v2/opaque/reports", garbage).await;
    let (status, code, desc, _) = refusal(r).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"), "{desc}");
    assert_eq!(up.count(), 3);

    gw.stop().await;
    assert!(
        !op.stderr().contains("server_error"),
        "provider errors:\n{}",
        op.stderr()
    );
    drop(op);
}
