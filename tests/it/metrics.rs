//! `/metrics` read by an independent parser (PyPI prometheus-client, in the venv
//! tests/metrics_parser/install.sh makes) in both formats: Prometheus text 0.0.4 for a
//! plain scrape, OpenMetrics 1.0 when `Accept` asks for it; and the operator families
//! (build info, upstream durations and errors, JWKS fetches, cache hits and misses)
//! counted from real traffic.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::admin_api::SPEC_FAMILIES;
use crate::common::*;
use crate::gwconfig::{client_credentials, GatewayConfig};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The families of `page` as the Python client's parser for `format` reads them
/// ("text" or "openmetrics"); panics with the parser's error if it refuses the page.
fn parse(page: &str, format: &str) -> Vec<Value> {
    let python = repo().join("target/metrics-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tests/metrics_parser/install.sh (scripts/test.sh does)",
        python.display()
    );
    let out = output_with_stdin(
        &format!("the {format} parser"),
        std::process::Command::new(python)
            .arg(repo().join("tests/metrics_parser/parse.py"))
            .arg(format),
        Some(page.as_bytes()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "the {format} parser refused the page: {}\n{page}",
        out.stderr
    );
    serde_json::from_str(&out.stdout).unwrap()
}

fn family<'a>(families: &'a [Value], name: &str) -> &'a Value {
    families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name} in {families:#?}"))
}

async fn scrape(gw: &Gw, accept: Option<&str>) -> (String, String) {
    let mut req = client().get(gw.admin_url("/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, r.text().await.unwrap())
}

/// An open route `api` and a route `secure` for issuer `corp` (with `issuer_extra`).
fn yaml(up: &str, idp: &Idp, issuer_extra: Value) -> String {
    GatewayConfig::new()
        .issuer_with(idp, "corp", issuer_extra)
        .upstream("bi", up)
        .open_route("api", "/api", "bi")
        .route(json!({
            "name": "secure", "path_prefix": "/secure", "upstream": "bi",
            "auth": {"issuers": ["corp"]},
        }))
        .yaml()
}

// Behaviour: a plain scrape (no Accept, or text/plain) is Prometheus text 0.0.4 that
// the Python client's strict parser reads, with `# TYPE x_total counter` lines; a
// scrape whose Accept asks for OpenMetrics gets OpenMetrics 1.0 (its content type,
// `# EOF`) that the OpenMetrics parser reads; both hold the same families and values.
#[tokio::test]
async fn both_exposition_formats_parse_with_a_real_parser() {
    let up = spawn_upstream().await;
    let idp = spawn_idp().await;
    let gw = spawn_gateway(&yaml(&up.url(), &idp, json!({}))).await;
    for _ in 0..3 {
        let r = client().get(gw.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client().get(gw.url("/secure/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    for accept in [
        None,
        Some("text/plain"),
        Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"),
    ] {
        let (ct, page) = scrape(&gw, accept).await;
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8", "{accept:?}");
        assert!(!page.contains("# EOF"), "{page}");
        for (name, kind) in SPEC_FAMILIES {
            assert!(
                page.lines().any(|l| l == format!("# TYPE {name} {kind}")),
                "no TYPE {kind} for {name}:\n{page}"
            );
        }
        let fams = parse(&page, "text");
        // The 0.0.4 parser names a counter family without `_total`.
        let req = family(&fams, "tollgate_requests");
        assert_eq!(req["type"], "counter");
        assert!(
            req["samples"].as_array().unwrap().iter().any(|s| s["name"]
                == "tollgate_requests_total"
                && s["labels"]["route"] == "api"
                && s["labels"]["status"] == "200"
                && s["value"] == 3.0),
            "{req:#}"
        );
        assert_eq!(
            family(&fams, "tollgate_request_duration_seconds")["type"],
            "histogram"
        );
        // Families without samples yet are still announced.
        assert_eq!(
            family(&fams, "tollgate_upstream_token_fetches")["type"],
            "counter"
        );
    }

    // Prometheus' own scrape Accept header (OpenMetrics preferred).
    let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in [OPENMETRICS, prom] {
        let (ct, page) = scrape(&gw, Some(accept)).await;
        assert_eq!(ct, OPENMETRICS);
        assert!(page.ends_with("# EOF\n"), "{page}");
        let fams = parse(&page, "openmetrics");
        let req = family(&fams, "tollgate_requests");
        assert_eq!(req["type"], "counter");
        assert!(
            req["samples"].as_array().unwrap().iter().any(|s| s["name"]
                == "tollgate_requests_total"
                && s["labels"]["route"] == "secure"
                && s["labels"]["status"] == "401"
                && s["value"] == 1.0),
            "{req:#}"
        );
        let denied = family(&fams, "tollgate_auth_denied");
        assert!(
            denied["samples"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["labels"]["reason"] == "token_missing" && s["value"] == 1.0),
            "{denied:#}"
        );
        let build = family(&fams, "tollgate_build_info");
        assert_eq!(build["type"], "gauge");
        assert_eq!(build["samples"][0]["value"], 1.0);
        assert_eq!(
            build["samples"][0]["labels"]["version"],
            env!("CARGO_PKG_VERSION")
        );
    }
    // An Accept that refuses OpenMetrics (q=0) gets the text format.
    let (ct, _) = scrape(&gw, Some("application/openmetrics-text;q=0, text/plain")).await;
    assert!(ct.starts_with("text/plain"), "{ct}");
}

// Behaviour: `tollgate_upstream_request_duration_seconds{upstream}` observes every
// exchange, and `tollgate_upstream_errors_total{upstream,kind}` counts an upstream that
// refuses connections (connect), one that never answers within its timeout (timeout)
// and one that closes the connection without an answer (reset).
#[tokio::test]
async fn upstream_durations_and_errors_by_kind() {
    let up = spawn_upstream().await;
    // Accepts, reads the request, closes without answering.
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    let closing = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = closer.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                drop(s);
            });
        }
    });
    let mut cfg = GatewayConfig::new()
        .upstream("good", &up.url())
        .upstream_with("slow", &up.url(), json!({"timeout": "300ms"}))
        .upstream("gone", &format!("http://{}", dead_addr()))
        .upstream("closer", &format!("http://{closer_addr}"));
    for name in ["good", "slow", "gone", "closer"] {
        cfg = cfg.open_route(name, &format!("/{name}"), name);
    }
    let yaml = cfg.yaml();
    let gw = spawn_gateway(&yaml).await;
    let admin = gw.admin_url("");
    // Exported from startup (HELP/TYPE), before any exchange.
    let m = admin_metrics(&admin).await;
    assert!(m.contains("# TYPE tollgate_upstream_request_duration_seconds histogram"));
    assert!(m.contains("# TYPE tollgate_upstream_errors_total counter"));

    let status = |p: &'static str| {
        let url = gw.url(p);
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/good/x").await, 200);
    assert_eq!(status("/good/y").await, 200);
    assert_eq!(status("/gone/x").await, 502);
    assert_eq!(status("/slow/hold").await, 504);
    assert_eq!(status("/closer/x").await, 502);

    metric_eventually(
        &admin,
        "tollgate_upstream_request_duration_seconds_count{upstream=\"good\"}",
        |v| v == 2.0,
    )
    .await;
    metric_eventually(
        &admin,
        "tollgate_upstream_errors_total{upstream=\"gone\",kind=\"connect\"}",
        |v| v == 1.0,
    )
    .await;
    metric_eventually(
        &admin,
        "tollgate_upstream_errors_total{upstream=\"slow\",kind=\"timeout\"}",
        |v| v == 1.0,
    )
    .await;
    metric_eventually(
        &admin,
        "tollgate_upstream_errors_total{upstream=\"closer\",kind=\"reset\"}",
        |v| v == 1.0,
    )
    .await;
    let m = admin_metrics(&admin).await;
    assert_eq!(
        series_value(
            &m,
            "tollgate_upstream_errors_total{upstream=\"good\",kind=\"connect\"}"
        ),
        None,
        "a good upstream has no errors:\n{m}"
    );
    // A failed exchange is timed too (the timeout one took at least its timeout).
    assert_eq!(
        series_value(
            &m,
            "tollgate_upstream_request_duration_seconds_bucket{upstream=\"slow\",le=\"0.25\"}"
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        series_value(
            &m,
            "tollgate_upstream_request_duration_seconds_count{upstream=\"slow\"}"
        ),
        Some(1.0),
        "{m}"
    );
    up.release();
    closing.abort();
}

// Behaviour: `tollgate_jwks_fetches_total{issuer,result}` counts key set fetches by
// issuer: the first fetch succeeds; a refresh while the identity provider fails counts
// a failure (both series exported from startup for every JWT issuer).
#[tokio::test]
async fn jwks_fetch_results_by_issuer() {
    let up = spawn_upstream().await;
    let idp = spawn_idp().await;
    let gw = spawn_gateway(&yaml(&up.url(), &idp, json!({"jwks_refresh": "200ms"}))).await;
    let admin = gw.admin_url("");
    metric_eventually(
        &admin,
        "tollgate_jwks_fetches_total{issuer=\"corp\",result=\"success\"}",
        |v| v >= 1.0,
    )
    .await;
    let m = admin_metrics(&admin).await;
    assert_eq!(
        series_value(
            &m,
            "tollgate_jwks_fetches_total{issuer=\"corp\",result=\"failure\"}"
        ),
        Some(0.0),
        "{m}"
    );
    // The background refresh (every 200 ms) meets a failing identity provider.
    idp.jwks_fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    metric_eventually(
        &admin,
        "tollgate_jwks_fetches_total{issuer=\"corp\",result=\"failure\"}",
        |v| v >= 1.0,
    )
    .await;
}

// Behaviour: `tollgate_cache_requests_total{cache,result}` counts the verified-token
// cache: the first request with a token is a miss (verified), the second identical one
// a hit; the upstream-token cache counts its fetch as a miss and the reuse as a hit.
// Every cache's hit and miss series exist from startup, so a ratio is computable.
#[tokio::test]
async fn cache_hits_and_misses() {
    let up = spawn_upstream().await;
    let idp = spawn_idp().await;
    let yaml = GatewayConfig::new()
        .issuer(&idp, "corp")
        .upstream("bi", &up.url())
        .upstream_with(
            "cc-up",
            &up.url(),
            json!({"auth": client_credentials(&idp, "gw", "cc-s3cret")}),
        )
        .route(json!({
            "name": "secure", "path_prefix": "/secure", "upstream": "bi",
            "auth": {"issuers": ["corp"]},
        }))
        .open_route("cc", "/cc", "cc-up")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let admin = gw.admin_url("");
    let series = |cache: &str, result: &str| {
        format!("tollgate_cache_requests_total{{cache=\"{cache}\",result=\"{result}\"}}")
    };
    let m = admin_metrics(&admin).await;
    for cache in ["verified_tokens", "introspection", "upstream_tokens"] {
        for result in ["hit", "miss"] {
            assert_eq!(
                series_value(&m, &series(cache, result)),
                Some(0.0),
                "{cache} {result} from startup:\n{m}"
            );
        }
    }

    let tok = idp.token(json!({}));
    for _ in 0..2 {
        let r = client()
            .get(gw.url("/secure/x"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    metric_eventually(&admin, &series("verified_tokens", "miss"), |v| v == 1.0).await;
    metric_eventually(&admin, &series("verified_tokens", "hit"), |v| v == 1.0).await;

    for _ in 0..2 {
        let r = client().get(gw.url("/cc/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    metric_eventually(&admin, &series("upstream_tokens", "miss"), |v| v == 1.0).await;
    metric_eventually(&admin, &series("upstream_tokens", "hit"), |v| v == 1.0).await;
    assert_eq!(idp.token_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}
