//! deploy/: the Grafana dashboard and the Prometheus alerts name only metric families a
//! real tollgate exports, and the gauges the alerts rely on (tollgate_ready,
//! tollgate_config_last_reload_successful) follow /readyz and reloads.

use std::collections::BTreeSet;

use serde_json::json;

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// Upstream `u` and one open route on `/` to `route_upstream` (`u`, or a name that
/// does not exist to make the config invalid).
fn open_yaml(up: &Upstream, route_upstream: &str) -> String {
    GatewayConfig::new()
        .upstream("u", &up.url())
        .open_route("r", "/", route_upstream)
        .yaml()
}

/// Every `tollgate_*` family a file names (histogram series names folded into the family).
fn families_named_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("tollgate_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
            .unwrap_or(&name);
        out.insert(family.to_owned());
    }
    out
}

/// The `# TYPE` families of a /metrics page.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

// Behaviour: each metric family the dashboard and the alerts query is on /metrics of a
// freshly started gateway (every family is exported from startup).
#[tokio::test]
async fn dashboard_and_alerts_use_exported_families() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&open_yaml(&up, "u")).await;
    let have = exported(&admin_metrics(&gw.admin_url("")).await);
    for file in [
        "deploy/grafana/tollgate-dashboard.json",
        "deploy/prometheus/tollgate-rules.yaml",
        "deploy/helm/tollgate/files/tollgate-dashboard.json",
        "deploy/helm/tollgate/files/prometheus-rules.yaml",
    ] {
        let named = families_named_in(file);
        assert!(named.len() >= 5, "{file}: {named:?}");
        let missing: Vec<_> = named.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "{file} queries families /metrics does not export: {missing:?}\nexported: {have:?}"
        );
    }
    gw.stop().await;
}

// Behaviour: tollgate_ready is 1 when /readyz answers 200 and 0 while an issuer's first
// key fetch is still pending; tollgate_config_last_reload_successful drops to 0 when a
// reload is refused and returns to 1 with the next good one.
#[tokio::test]
async fn ready_and_reload_gauges() {
    let up = spawn_upstream().await;
    let base = open_yaml(&up, "u");
    let gw = spawn_gateway(&base).await;
    let admin = gw.admin_url("");
    let c = client();
    assert_eq!(
        c.get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let m = admin_metrics(&admin).await;
    assert_eq!(series_value(&m, "tollgate_ready"), Some(1.0), "{m}");
    assert_eq!(
        series_value(&m, "tollgate_config_last_reload_successful"),
        Some(1.0)
    );

    std::fs::write(gw.config_path(), open_yaml(&up, "nope")).unwrap();
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let m = admin_metrics(&admin).await;
    assert_eq!(
        series_value(&m, "tollgate_config_last_reload_successful"),
        Some(0.0),
        "{m}"
    );
    std::fs::write(gw.config_path(), &base).unwrap();
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m = admin_metrics(&admin).await;
    assert_eq!(
        series_value(&m, "tollgate_config_last_reload_successful"),
        Some(1.0)
    );
    gw.stop().await;

    // A key set endpoint that accepts and never answers: the first fetch stays pending.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let pending = spawn_gateway_unready(
        &GatewayConfig::new()
            .issuer_block(json!({
                "name": "slow",
                "issuer": "https://slow.example",
                "jwks_uri": format!("http://{silent_addr}/jwks"),
                "audiences": ["a"],
                "fetch_timeout": "60s",
            }))
            .upstream("u", &up.url())
            .route(json!({"name": "r", "path_prefix": "/", "upstream": "u", "auth": {"issuers": ["slow"]}}))
            .yaml(),
    )
    .await;
    assert_eq!(
        c.get(pending.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let m = admin_metrics(&pending.admin_url("")).await;
    assert_eq!(series_value(&m, "tollgate_ready"), Some(0.0), "{m}");
    pending.stop().await;
    holder.abort();
}
