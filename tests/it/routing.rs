//! Routing by host and path: exact hosts before wildcards before host-less routes, the
//! longest path prefix on a segment boundary.

use serde_json::json;

use crate::common::*;
use crate::gwconfig::GatewayConfig;

// Behaviour: `hosts` exact and `*.company.com` wildcard, port stripped, any case;
// exact host beats wildcard beats no hosts, then the longest prefix.
#[tokio::test]
async fn host_routing_precedence() {
    let exact = spawn_upstream().await;
    let exact_deep = spawn_upstream().await;
    let wild = spawn_upstream().await;
    let any = spawn_upstream().await;
    let any_deep = spawn_upstream().await;
    let yaml = GatewayConfig::new()
        .upstream("exact", &exact.url())
        .upstream("exact-deep", &exact_deep.url())
        .upstream("wild", &wild.url())
        .upstream("any", &any.url())
        .upstream("any-deep", &any_deep.url())
        .open_route("any-deep", "/v2/analytics", "any-deep")
        .open_route("any", "/", "any")
        .route(json!({
            "name": "wild", "path_prefix": "/v2", "hosts": ["*.company.com"],
            "upstream": "wild", "auth": "none",
        }))
        .route(json!({
            "name": "exact", "path_prefix": "/", "hosts": ["API.company.com", "bi-api.company.com"],
            "upstream": "exact", "auth": "none",
        }))
        .route(json!({
            "name": "exact-deep", "path_prefix": "/v2/special", "hosts": ["api.company.com"],
            "upstream": "exact-deep", "auth": "none",
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let ups = [
        ("exact", &exact),
        ("exact-deep", &exact_deep),
        ("wild", &wild),
        ("any", &any),
        ("any-deep", &any_deep),
    ];
    let cases = [
        // exact host beats a longer prefix elsewhere
        ("api.company.com", "/v2/analytics/x", "exact"),
        ("API.Company.COM:8443", "/v2/analytics/x", "exact"),
        ("api.company.com.", "/x", "exact"),
        ("bi-api.company.com", "/anything", "exact"),
        // longest prefix within the exact host
        ("api.company.com", "/v2/special/x", "exact-deep"),
        ("Api.Company.Com:80", "/v2/special", "exact-deep"),
        ("api.company.com", "/v2/specialx", "exact"),
        // wildcard beats no hosts
        ("bi.company.com", "/v2/analytics/x", "wild"),
        ("a.b.company.com:9", "/v2", "wild"),
        ("BI.COMPANY.COM", "/v2/x", "wild"),
        // wildcard without a matching prefix falls back to host-less routes
        ("bi.company.com", "/other", "any"),
        // the wildcard needs a label before the suffix, on a dot boundary
        ("company.com", "/v2/analytics/x", "any-deep"),
        ("evilcompany.com", "/v2/analytics", "any-deep"),
        ("company.com.evil.net", "/v2/x", "any"),
        // no Host match at all: longest prefix among routes without hosts
        ("127.0.0.1", "/v2/analytics/y", "any-deep"),
        ("other.example", "/v2x", "any"),
    ];
    for (host, path, want) in cases {
        let before: Vec<usize> = ups.iter().map(|(_, u)| u.count()).collect();
        let r = client()
            .get(gw.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host} {path}");
        let after: Vec<usize> = ups.iter().map(|(_, u)| u.count()).collect();
        let hit: Vec<&str> = ups
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a > b)
            .map(|((n, _), _)| *n)
            .collect();
        assert_eq!(hit, vec![want], "Host: {host}, path {path}");
    }
    // Without a host-less catch-all, an unmatched host is a 404.
    let yaml = GatewayConfig::public_only()
        .upstream("u", &any.url())
        .route(json!({
            "name": "r", "path_prefix": "/", "hosts": ["*.company.com"], "upstream": "u",
            "auth": "none",
        }))
        .yaml();
    let gw2 = spawn_gateway(&yaml).await;
    let r = client()
        .get(gw2.url("/x"))
        .header("host", "x.company.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw2.url("/x"))
        .header("host", "company.org")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gw2.stop().await;
    gw.stop().await;
}
