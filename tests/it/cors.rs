//! CORS per route: preflights answered without a token, origin patterns, the grant's
//! headers on every answer (errors and limit refusals included), `*` only without
//! credentials, and validation of the `cors` block.

use reqwest::Method;
use serde_json::json;

use crate::common::*;
use crate::gwconfig::{load_error, GatewayConfig};
use crate::upstream_credentials::header;

// ---------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------

const CX: &str = "https://cx.company.com";

fn cors_config(idp: &Idp, up: &Upstream) -> GatewayConfig {
    let cors = json!({
        "allow_origins": ["https://dash.partner.io", "https://*.company.com"],
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", "Content-Type"],
        "expose_headers": ["X-Request-Id"],
        "allow_credentials": true,
        "max_age": "10m",
    });
    let auth = json!({"issuers": ["corp"], "scopes": ["analytics.read"]});
    GatewayConfig::public_only()
        .issuer(idp, "corp")
        .upstream("bi", &up.url())
        .upstream_with(
            "dead",
            &format!("http://{}", dead_addr()),
            json!({"connect_timeout": "500ms"}),
        )
        .route(json!({
            "name": "api", "path_prefix": "/api", "upstream": "bi",
            "auth": auth, "cors": cors,
        }))
        .route(json!({
            "name": "dead", "path_prefix": "/dead", "upstream": "dead",
            "auth": auth, "cors": cors,
        }))
        .open_route("nocors", "/nocors", "bi")
}

fn varies_on_origin(r: &reqwest::Response) -> bool {
    r.headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("origin"))
}

fn allow_headers_present(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-allow-"))
        .map(|k| k.as_str().to_owned())
        .collect()
}

/// An actual (non-preflight) response to an allowed origin on the credentialed route.
fn assert_cors_granted(r: &reqwest::Response, origin: &str, what: &str) {
    assert_eq!(
        header(r, "access-control-allow-origin"),
        Some(origin),
        "{what}"
    );
    assert_eq!(
        header(r, "access-control-allow-credentials"),
        Some("true"),
        "{what}"
    );
    assert_eq!(
        header(r, "access-control-expose-headers"),
        Some("X-Request-Id"),
        "{what}"
    );
    assert!(varies_on_origin(r), "{what}: no Vary: Origin");
    assert_eq!(
        r.headers()
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1,
        "{what}"
    );
}

fn assert_no_cors_grant(r: &reqwest::Response, what: &str) {
    let present = allow_headers_present(r);
    assert!(present.is_empty(), "{what}: {present:?}");
    assert!(
        header(r, "access-control-expose-headers").is_none(),
        "{what}"
    );
}

async fn preflight(gw: &Gw, path: &str, origin: &str) -> reqwest::Response {
    client()
        .request(Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

// Behaviour: a preflight is answered by tollgate — 204, empty body, no token needed, never
// forwarded — with Allow-Origin (the origin itself), Allow-Methods, Allow-Headers,
// Max-Age, Allow-Credentials and `Vary: Origin`.
#[tokio::test]
async fn cors_preflight_answered_without_token() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&cors_config(&idp, &up).yaml()).await;
    for origin in [CX, "https://dash.partner.io", "https://a.b.company.com"] {
        let r = preflight(&gw, "/api/v1/data", origin).await;
        assert_eq!(r.status(), 204, "{origin}");
        assert_eq!(header(&r, "access-control-allow-origin"), Some(origin));
        let methods = header(&r, "access-control-allow-methods").unwrap();
        let methods: Vec<&str> = methods.split(',').map(str::trim).collect();
        assert!(
            methods.contains(&"GET") && methods.contains(&"POST"),
            "{methods:?}"
        );
        assert!(!methods.contains(&"DELETE"), "{methods:?}");
        let headers = header(&r, "access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase();
        let headers: Vec<&str> = headers.split(',').map(str::trim).collect();
        assert!(
            headers.contains(&"authorization") && headers.contains(&"content-type"),
            "{headers:?}"
        );
        assert_eq!(header(&r, "access-control-max-age"), Some("600"));
        assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
        assert!(varies_on_origin(&r), "{origin}: no Vary: Origin");
        assert!(header(&r, "www-authenticate").is_none());
        assert!(header(&r, "x-request-id").is_some());
        assert!(r.bytes().await.unwrap().is_empty(), "{origin}: body");
    }
    // A preflight for a path under the route that the upstream would 404 on: still ours.
    let r = preflight(&gw, "/api", CX).await;
    assert_eq!(r.status(), 204);
    assert_eq!(up.count(), 0, "a preflight was forwarded");
    gw.stop().await;
}

// Behaviour: `https://*.company.com` matches subdomains on a dot boundary only, exact
// origins match exactly; a preflight from anything else gets no `Access-Control-Allow-*`
// header, is still not forwarded and still needs no token.
#[tokio::test]
async fn cors_origin_matching() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&cors_config(&idp, &up).yaml()).await;
    for origin in [
        CX,
        "https://CX.Company.com",
        "https://a.b.company.com",
        "https://dash.partner.io",
    ] {
        let r = preflight(&gw, "/api/x", origin).await;
        assert_eq!(r.status(), 204, "{origin}");
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            Some(origin),
            "{origin} must be allowed"
        );
    }
    for origin in [
        "https://evilcompany.com",
        "https://company.com.evil.io",
        "http://a.company.com",
        "https://company.com",
        "https://a.company.com:8443",
        "https://sub.dash.partner.io",
        "https://dash.partner.io.evil.io",
        "http://dash.partner.io",
        "null",
    ] {
        let r = preflight(&gw, "/api/x", origin).await;
        assert!(
            r.status() == 200 || r.status() == 204,
            "{origin}: {}",
            r.status()
        );
        assert_no_cors_grant(&r, origin);
        assert!(header(&r, "access-control-max-age").is_none(), "{origin}");
        assert!(varies_on_origin(&r), "{origin}: no Vary: Origin");
        assert!(r.bytes().await.unwrap().is_empty(), "{origin}: body");
    }
    assert_eq!(up.count(), 0, "a preflight was forwarded");
    gw.stop().await;
}

// Behaviour: every response to an allowed origin — 200, 401 without a token, 403 for a
// missing scope, 502 for a dead upstream, an upstream's own error — carries the CORS
// headers and `Vary: Origin`; disallowed origins get no `Access-Control-Allow-*` at all.
#[tokio::test]
async fn cors_headers_on_every_response() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&cors_config(&idp, &up).yaml()).await;
    let good = idp.token(json!({}));
    let no_scope = idp.token(json!({"scope": "other.scope"}));

    for origin in [CX, "https://dash.partner.io"] {
        // 200
        let r = client()
            .get(gw.url("/api/data"))
            .header("origin", origin)
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{origin}");
        assert_cors_granted(&r, origin, "200");
        assert_eq!(up.last().header("origin"), Some(origin));

        // 401, no token
        let r = client()
            .get(gw.url("/api/data"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_cors_granted(&r, origin, "401");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"tollgate\"")
        );
        assert_eq!(json_of(r).await["error"], "invalid_token");

        // 401, bad token
        let r = client()
            .get(gw.url("/api/data"))
            .header("origin", origin)
            .bearer_auth("not.a.jwt")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_cors_granted(&r, origin, "401 bad token");

        // 403, scope missing
        let r = client()
            .get(gw.url("/api/data"))
            .header("origin", origin)
            .bearer_auth(&no_scope)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert_cors_granted(&r, origin, "403");
        assert_eq!(json_of(r).await["error"], "insufficient_scope");

        // 502, upstream unreachable
        let r = client()
            .get(gw.url("/dead/data"))
            .header("origin", origin)
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        assert_cors_granted(&r, origin, "502");
        assert_eq!(json_of(r).await["error"], "bad_gateway");

        // The upstream's own 500.
        let r = client()
            .get(gw.url("/api/status/500"))
            .header("origin", origin)
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert_cors_granted(&r, origin, "upstream 500");

        // OPTIONS without Access-Control-Request-Method is not a preflight: it needs a token.
        let r = client()
            .request(Method::OPTIONS, gw.url("/api/data"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_cors_granted(&r, origin, "plain OPTIONS");
    }

    for origin in [
        "https://evilcompany.com",
        "https://company.com.evil.io",
        "http://a.company.com",
    ] {
        let r = client()
            .get(gw.url("/api/data"))
            .header("origin", origin)
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{origin}");
        assert_no_cors_grant(&r, origin);
        assert!(varies_on_origin(&r), "{origin}: no Vary: Origin");
        let r = client()
            .get(gw.url("/api/data"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{origin}");
        assert_no_cors_grant(&r, origin);
        let r = client()
            .get(gw.url("/dead/data"))
            .header("origin", origin)
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "{origin}");
        assert_no_cors_grant(&r, origin);
    }

    // No Origin at all: a plain API call, no grant.
    let r = client()
        .get(gw.url("/api/data"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_no_cors_grant(&r, "no Origin");

    // A route without `cors` adds nothing, and an OPTIONS preflight there is forwarded.
    let before = up.count();
    let r = preflight(&gw, "/nocors/x", CX).await;
    assert_no_cors_grant(&r, "route without cors");
    assert_eq!(up.count(), before + 1);
    assert_eq!(up.last().method, "OPTIONS");
    gw.stop().await;
}

// Behaviour: `allow_origins: ["*"]` without credentials answers
// `Access-Control-Allow-Origin: *` (and no Allow-Credentials), on preflights and on
// responses, errors included.
#[tokio::test]
async fn cors_wildcard_without_credentials() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(
        &GatewayConfig::public_only()
            .issuer(&idp, "corp")
            .upstream("bi", &up.url())
            .route(json!({
                "name": "public", "path_prefix": "/pub", "upstream": "bi",
                "auth": {"issuers": ["corp"]},
                "cors": {"allow_origins": ["*"]},
            }))
            .yaml(),
    )
    .await;
    let r = preflight(&gw, "/pub/x", "https://anywhere.example").await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert!(header(&r, "access-control-allow-credentials").is_none());
    assert!(header(&r, "access-control-allow-methods").is_some());
    // allow_headers unset: the requested headers are reflected.
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(up.count(), 0);

    let good = idp.token(json!({}));
    let r = client()
        .get(gw.url("/pub/x"))
        .header("origin", "https://anywhere.example")
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert!(header(&r, "access-control-allow-credentials").is_none());

    let r = client()
        .get(gw.url("/pub/x"))
        .header("origin", "https://anywhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    gw.stop().await;
}

// Behaviour: `"*"` together with `allow_credentials: true` is a validation error naming
// the key; so are malformed origin patterns.
#[tokio::test]
async fn cors_validation_errors() {
    let up = spawn_upstream().await;
    let yaml = |origins: serde_json::Value, creds: bool| {
        GatewayConfig::public_only()
            .upstream("bi", &up.url())
            .route(json!({
                "name": "api", "path_prefix": "/api", "upstream": "bi", "auth": "none",
                "cors": {"allow_origins": origins, "allow_credentials": creds},
            }))
            .yaml()
    };
    let e = load_error(&yaml(json!(["https://cx.company.com", "*"]), true));
    assert!(e.contains("routes[0].cors.allow_origins[1]"), "{e}");
    assert!(e.contains("allow_credentials"), "{e}");

    for bad in [
        json!(["https://a.*.com"]),
        json!(["cx.company.com"]),
        json!(["https://cx.company.com/app"]),
        json!([]),
    ] {
        let e = load_error(&yaml(bad.clone(), false));
        assert!(e.contains("routes[0].cors.allow_origins"), "{bad}: {e}");
    }

    // The same config without credentials is fine.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml(json!(["*"]), false)).unwrap();
    assert!(tollgate::Gateway::load(path).is_ok());
}

// Behaviour: errors found before or while routing — 413 for a declared Content-Length
// over `max_body_bytes`, 431 for a head over `max_header_bytes`, 400 for a path refused
// by normalisation — on a path whose route has `cors` still carry the CORS headers for an
// allowed origin (SPEC: every response to an allowed origin, errors included), so the
// page can read why it failed; a disallowed origin gets none.
#[tokio::test]
async fn cors_headers_on_limit_errors() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = cors_config(&idp, &up)
        .merge(
            "server",
            json!({"limits": {"max_body_bytes": 1000, "max_header_bytes": 4096}}),
        )
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let good = idp.token(json!({}));

    let r = client()
        .get(gw.url("/api/data"))
        .header("origin", CX)
        .bearer_auth(&good)
        .header("x-filler", "f".repeat(6000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_cors_granted(&r, CX, "431");

    let r = client()
        .post(gw.url("/api/upload"))
        .header("origin", CX)
        .bearer_auth(&good)
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_cors_granted(&r, CX, "413");

    let r = client()
        .get(gw.url("/api/x%2fy"))
        .header("origin", CX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_cors_granted(&r, CX, "400");
    let r = client()
        .get(gw.url("/api/x%2fy"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert_eq!(up.count(), 0);
    gw.stop().await;
}
