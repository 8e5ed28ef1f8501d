//! The admin listener: health and readiness, metrics families, status, the redacted
//! config, cache flushing, admin paths never served publicly, and `server.admin_auth`.

use serde_json::json;

use crate::common::*;
use crate::gwconfig::{client_credentials, idp_introspection, GatewayConfig, AUDIENCE};
use crate::reload::route_yaml;

pub(crate) const SPEC_FAMILIES: [(&str, &str); 5] = [
    ("tollgate_requests_total", "counter"),
    ("tollgate_request_duration_seconds", "histogram"),
    ("tollgate_auth_denied_total", "counter"),
    ("tollgate_upstream_token_fetches_total", "counter"),
    ("tollgate_config_reloads_total", "counter"),
];

const BASIC_PASSWORD: &str = "basic-Pa55word-never-shown";
const CLIENT_SECRET: &str = "token-service-client-s3cret";
const UPSTREAM_CLIENT_SECRET: &str = "upstream-cc-s3cret";
const EXTRA_PARAM_SECRET: &str = "extra-param-assertion-never-shown";

/// Every kind of secret the admin API must redact: an introspection secret, a token
/// service client's secret, a basic password (`basic_password`), an upstream client
/// secret.
fn admin_config(up: &Upstream, idp: &Idp, basic_password: &str) -> GatewayConfig {
    GatewayConfig::new()
        .issuer(idp, "corp")
        .issuer_block(json!({
            "name": "opaque",
            "issuer": "https://opaque.example.com",
            "introspection": idp_introspection(idp, INTROSPECT_SECRET),
        }))
        .token_service(
            "https://gateway.example.com",
            AUDIENCE,
            &[("dash", CLIENT_SECRET, &["analytics.read"])],
        )
        .merge("token_service", json!({"path": "/oauth2/token"}))
        .upstream("bi", &up.url())
        .upstream_with(
            "basic-up",
            &up.url(),
            json!({"auth": {"type": "basic", "username": "svc", "password": basic_password}}),
        )
        .upstream_with(
            "cc-up",
            &up.url(),
            json!({"auth": client_credentials(idp, "gw", UPSTREAM_CLIENT_SECRET)
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .chain([("extra_params".to_owned(), json!({"client_assertion": EXTRA_PARAM_SECRET}))])
                .collect::<serde_json::Map<_, _>>()}),
        )
        .open_route("api", "/api", "bi")
        .route(json!({
            "name": "secure", "path_prefix": "/secure", "upstream": "bi",
            "auth": {"issuers": ["corp"], "scopes": ["analytics.read"]},
        }))
        .open_route("basic", "/basic", "basic-up")
        .open_route("cc", "/cc", "cc-up")
}

fn admin_yaml(up: &Upstream, idp: &Idp) -> String {
    admin_config(up, idp, BASIC_PASSWORD).yaml()
}

// Behaviour: /healthz and /readyz answer 200 once started; /metrics exports every
// SPEC family with HELP/TYPE from startup and counts traffic by route and status,
// denials by reason, upstream token fetches by result.
#[tokio::test]
async fn health_ready_and_metrics() {
    let up = spawn_upstream().await;
    let idp = spawn_idp().await;
    let gw = spawn_gateway(&admin_yaml(&up, &idp)).await;
    let admin = gw.admin_url("");

    let r = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "ready once the JWKS fetch has finished");
    assert!(idp.jwks_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    let r = client().get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = r.text().await.unwrap();
    for (name, kind) in SPEC_FAMILIES {
        assert!(
            m.lines().any(|l| l.starts_with(&format!("# HELP {name} "))),
            "no HELP for {name}:\n{m}"
        );
        assert!(
            m.lines().any(|l| l == format!("# TYPE {name} {kind}")),
            "no TYPE {kind} for {name}:\n{m}"
        );
    }
    assert_eq!(
        series_value(&m, "tollgate_requests_total{route=\"api\",status=\"200\"}"),
        None,
        "no traffic yet"
    );

    // Traffic.
    for _ in 0..2 {
        assert_eq!(
            client()
                .get(gw.url("/api/x"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        client()
            .get(gw.url("/api/status/503"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        client()
            .get(gw.url("/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client()
            .get(gw.url("/secure/x"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let tok = idp.token(json!({}));
    let r = client()
        .get(gw.url("/secure/x"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        client().get(gw.url("/cc/x")).send().await.unwrap().status(),
        200
    );

    let m = admin_metrics(&admin).await;
    let want = [
        ("tollgate_requests_total{route=\"api\",status=\"200\"}", 2.0),
        ("tollgate_requests_total{route=\"api\",status=\"503\"}", 1.0),
        (
            "tollgate_requests_total{route=\"secure\",status=\"401\"}",
            1.0,
        ),
        (
            "tollgate_requests_total{route=\"secure\",status=\"200\"}",
            1.0,
        ),
        ("tollgate_requests_total{route=\"cc\",status=\"200\"}", 1.0),
        (
            "tollgate_request_duration_seconds_count{route=\"api\"}",
            3.0,
        ),
        (
            "tollgate_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"}",
            3.0,
        ),
        (
            "tollgate_auth_denied_total{route=\"secure\",reason=\"token_missing\"}",
            1.0,
        ),
        (
            "tollgate_upstream_token_fetches_total{upstream=\"cc-up\",result=\"success\"}",
            1.0,
        ),
        ("tollgate_config_reloads_total{result=\"success\"}", 0.0),
        ("tollgate_config_reloads_total{result=\"failure\"}", 0.0),
    ];
    for (s, v) in want {
        assert_eq!(series_value(&m, s), Some(v), "{s}:\n{m}");
    }
    // The unmatched request is counted with status 404, under no real route name.
    assert!(
        m.lines()
            .any(|l| l.starts_with("tollgate_requests_total{") && l.contains("status=\"404\"")),
        "{m}"
    );
    // No raw paths as label values.
    assert!(!m.contains("/nowhere") && !m.contains("/api/x"), "{m}");
    // Histogram buckets are cumulative.
    let buckets: Vec<f64> = m
        .lines()
        .filter(|l| l.starts_with("tollgate_request_duration_seconds_bucket{route=\"api\","))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.len() > 2, "{m}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    gw.stop().await;
}

// Behaviour: /admin/status reports version, hash, path and the last reload;
// /admin/config shows the running config with every secret redacted.
#[tokio::test]
async fn status_and_redacted_config() {
    let up = spawn_upstream().await;
    let idp = spawn_idp().await;
    let yaml = admin_yaml(&up, &idp);
    let gw = spawn_gateway(&yaml).await;

    let st = admin_status(&gw).await;
    assert_eq!(st["config_version"], 1, "{st:#}");
    assert_eq!(st["ready"], true, "{st:#}");
    assert_eq!(st["routes"], 4, "{st:#}");
    assert_eq!(
        st["config_path"],
        gw.config_path().display().to_string(),
        "{st:#}"
    );
    assert!(st["loaded_at"].as_str().unwrap().ends_with('Z'), "{st:#}");
    {
        use sha2::Digest;
        let h = sha2::Sha256::digest(yaml.as_bytes());
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(st["config_hash"], hex, "{st:#}");
    }
    assert!(
        st["last_reload"]["success"].is_null(),
        "no reload yet: {st:#}"
    );

    let r = client()
        .get(gw.admin_url("/admin/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    for secret in [
        INTROSPECT_SECRET,
        BASIC_PASSWORD,
        CLIENT_SECRET,
        UPSTREAM_CLIENT_SECRET,
        EXTRA_PARAM_SECRET,
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    let c = &v["config"];
    assert_eq!(
        c["issuers"][1]["introspection"]["client_secret"], "[redacted]",
        "{c:#}"
    );
    assert_eq!(c["upstreams"][1]["auth"]["password"], "[redacted]", "{c:#}");
    assert_eq!(
        c["upstreams"][2]["auth"]["client_secret"], "[redacted]",
        "{c:#}"
    );
    assert_eq!(
        c["token_service"]["clients"][0]["secret"], "[redacted]",
        "{c:#}"
    );
    // A token request's extra parameter may be a credential (client_assertion).
    assert_eq!(
        c["upstreams"][2]["auth"]["extra_params"]["client_assertion"], "[redacted]",
        "{c:#}"
    );
    // Everything else is there, as configured.
    assert_eq!(c["upstreams"][1]["auth"]["username"], "svc", "{c:#}");
    assert_eq!(c["routes"][0]["path_prefix"], "/api", "{c:#}");
    assert_eq!(c["issuers"][0]["jwks_uri"], idp.url("/jwks"), "{c:#}");

    // Secrets given through ${env:..} / ${file:..} are redacted too, and the
    // running config (not the file) is what is shown.
    let secret_file = gw.dir.path().join("pw.txt");
    std::fs::write(&secret_file, "file-secret-value\n").unwrap();
    let yaml2 = admin_config(&up, &idp, &format!("${{file:{}}}", secret_file.display())).yaml();
    assert_ne!(yaml2, yaml);
    std::fs::write(gw.config_path(), &yaml2).unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let text = client()
        .get(gw.admin_url("/admin/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("file-secret-value"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["version"].as_u64().unwrap() >= 2);
    assert_eq!(
        v["config"]["upstreams"][1]["auth"]["password"],
        "[redacted]"
    );
    // The basic upstream really uses the secret from the file.
    assert_eq!(
        client()
            .get(gw.url("/basic/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let auth = up.last().header("authorization").unwrap().to_owned();
    assert_eq!(
        auth,
        tollgate::credentials::basic_header("svc", "file-secret-value")
            .to_str()
            .unwrap()
    );
    gw.stop().await;
}

// Behaviour: POST /admin/caches/flush drops upstream tokens (the next request fetches
// a new one) and keeps JWKS key sets (no refetch).
#[tokio::test]
async fn flush_caches_drops_tokens_keeps_jwks() {
    use std::sync::atomic::Ordering::SeqCst;
    let up = spawn_upstream().await;
    let idp = spawn_idp().await;
    let gw = spawn_gateway(&admin_yaml(&up, &idp)).await;
    let tok = idp.token(json!({}));

    for _ in 0..2 {
        assert_eq!(
            client().get(gw.url("/cc/x")).send().await.unwrap().status(),
            200
        );
        let r = client()
            .get(gw.url("/secure/x"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(idp.token_hits.load(SeqCst), 1, "upstream token is cached");
    let jwks = idp.jwks_hits.load(SeqCst);
    assert_eq!(
        up.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri == "/cc/x")
            .last()
            .unwrap()
            .header("authorization"),
        Some("Bearer upstream-token-1")
    );

    let r = client()
        .post(gw.admin_url("/admin/caches/flush"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = json_of(r).await;
    assert_eq!(body["flushed"]["upstream_tokens"], 1, "{body:#}");
    assert!(
        body["kept"].as_array().unwrap().contains(&"jwks".into()),
        "{body:#}"
    );

    assert_eq!(
        client().get(gw.url("/cc/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        idp.token_hits.load(SeqCst),
        2,
        "a new upstream token was fetched"
    );
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-2")
    );
    let r = client()
        .get(gw.url("/secure/x"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(idp.jwks_hits.load(SeqCst), jwks, "JWKS key sets are kept");

    let r = client()
        .get(gw.admin_url("/admin/caches/flush"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST", "a 405 says which methods");
    for (method, path, allow) in [
        (reqwest::Method::GET, "/admin/reload", "POST"),
        (reqwest::Method::POST, "/admin/status", "GET"),
        (reqwest::Method::DELETE, "/healthz", "GET, HEAD"),
    ] {
        let r = client()
            .request(method, gw.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.headers()["allow"], allow, "{path}");
        assert_eq!(json_of(r).await["error"], "method_not_allowed");
    }
    gw.stop().await;
}

// Behaviour: none of the admin paths exist on the public listener; unknown admin
// paths are 404 on the admin listener.
#[tokio::test]
async fn admin_paths_are_not_public() {
    let a = spawn_upstream().await;
    let gw = spawn_gateway(&route_yaml(&a.url(), "api", "/api")).await;
    for p in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/status",
        "/admin/config",
        "/admin/reload",
        "/admin/caches/flush",
    ] {
        for m in [reqwest::Method::GET, reqwest::Method::POST] {
            let r = client().request(m.clone(), gw.url(p)).send().await.unwrap();
            assert_eq!(r.status(), 404, "{m} {p} on the public listener");
            assert_eq!(json_of(r).await["error"], "not_found");
        }
    }
    assert_eq!(a.count(), 0);
    assert_eq!(
        admin_status(&gw).await["config_version"],
        1,
        "nothing reloaded"
    );
    let r = client().get(gw.admin_url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 404, "the admin listener does not proxy");
    assert_eq!(a.count(), 0);
    gw.stop().await;
}

// Behaviour: `server.admin_auth` protects the admin API with the route gates (issuers,
// scopes); /healthz and /readyz stay open for probes.
#[tokio::test]
async fn admin_api_bearer_protection() {
    let up = spawn_upstream().await;
    let yaml = GatewayConfig::new()
        .merge(
            "server",
            json!({"admin_auth": {"issuers": ["local"], "scopes": ["tollgate.admin"]}}),
        )
        .token_service(
            "https://gw.example",
            "tollgate-admin",
            &[("ops-bot", "ops-secret", &["tollgate.admin", "other"])],
        )
        .upstream("bi", &up.url())
        .open_route("api", "/api", "bi")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let token = |scope: &'static str| {
        let url = gw.url("/oauth2/token");
        async move {
            let r = client()
                .post(url)
                .basic_auth("ops-bot", Some("ops-secret"))
                .form(&[("grant_type", "client_credentials"), ("scope", scope)])
                .send()
                .await
                .unwrap();
            json_of(r).await["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(
        client()
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
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
    let r = client()
        .get(gw.admin_url("/admin/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    let weak = token("other").await;
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(&weak)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json_of(r).await["error"], "insufficient_scope");
    let strong = token("tollgate.admin").await;
    assert_eq!(
        client()
            .get(gw.admin_url("/admin/status"))
            .bearer_auth(&strong)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.admin_url("/metrics"))
            .bearer_auth(&strong)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    gw.stop().await;
}
