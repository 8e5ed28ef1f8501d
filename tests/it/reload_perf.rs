//! A reload of a large config, and the phase timings it reports
//! (`GET /admin/status` -> `last_reload.timings`).

use crate::common::*;

/// `n` routes with permissions, like the benchmark's 10k-route config.
fn many_routes(upstream_url: &str, n: usize, extra_route_key: &str) -> String {
    let mut y = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:0\"\nupstreams:\n  - name: up\n    url: \"{upstream_url}\"\nroutes:\n"
    );
    for i in 0..n {
        y.push_str(&format!(
            "  - name: r{i}\n    path_prefix: /svc{i}\n    upstream: up\n    auth: none\n    hosts: [\"api{i}.example.com\"]\n{extra_route_key}"
        ));
    }
    y
}

async fn reload(gw: &Gw) -> (u16, serde_json::Value) {
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), json_of(r).await)
}

async fn last_reload(gw: &Gw) -> serde_json::Value {
    admin_status(gw).await["last_reload"].clone()
}

// Behaviour: a reload reports how long it took, in total and per phase; a rejected
// one too (with the phases it reached); before any reload there is nothing to report.
#[tokio::test]
async fn reload_reports_phase_timings() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&many_routes(&up.url(), 2_000, "")).await;
    assert_eq!(last_reload(&gw).await["timings"], serde_json::Value::Null);

    let (status, body) = reload(&gw).await;
    assert_eq!(status, 200, "{body:#}");
    let lr = last_reload(&gw).await;
    assert_eq!(lr["success"], true, "{lr:#}");
    let t = &lr["timings"];
    for phase in ["read_ms", "parse_ms", "compile_ms", "swap_ms", "total_ms"] {
        assert!(
            t[phase].as_f64().is_some_and(|v| v >= 0.0),
            "{phase}: {lr:#}"
        );
    }
    let sum: f64 = ["read_ms", "parse_ms", "compile_ms", "swap_ms"]
        .iter()
        .map(|p| t[*p].as_f64().unwrap())
        .sum();
    // Each value is rounded to 0.1 ms.
    assert!(t["total_ms"].as_f64().unwrap() + 0.3 >= sum, "{lr:#}");
    assert!(t["parse_ms"].as_f64().unwrap() > 0.0, "{lr:#}");
    assert!(t["compile_ms"].as_f64().unwrap() > 0.0, "{lr:#}");

    // The new config is live: the last route answers.
    let r = client()
        .get(gw.url("/svc1999/x"))
        .header("host", "api1999.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A typo in one of 2,000 routes: rejected with its line and key path, timed too.
    std::fs::write(
        gw.config_path(),
        many_routes(&up.url(), 2_000, "").replace(
            "  - name: r1234\n    path_prefix: /svc1234\n    upstream: up\n",
            "  - name: r1234\n    path_prefix: /svc1234\n    upstraem: up\n",
        ),
    )
    .unwrap();
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 422, "{body:#}");
    let errors = body["errors"].to_string();
    assert!(
        errors.contains(
            ":6180:5 routes[1234].upstraem: unknown key \\\"upstraem\\\" (did you mean \\\"upstream\\\"?)"
        ),
        "{errors}"
    );
    let lr = last_reload(&gw).await;
    assert_eq!(lr["success"], false, "{lr:#}");
    assert!(lr["timings"]["total_ms"].as_f64().unwrap() > 0.0, "{lr:#}");
    assert_eq!(lr["timings"]["swap_ms"], 0.0, "{lr:#}");
    gw.stop().await;
}

// Behaviour: the one-pass parse of a clean file and the full parse agree: a large file
// with env references (full route) and the same file without (one pass) serve the same.
#[tokio::test]
async fn env_references_still_resolve_in_a_large_file() {
    let up = spawn_upstream().await;
    std::env::set_var("TOLLGATE_IT_RELOAD_HOST", "api7.example.com");
    let gw = spawn_gateway(&many_routes(&up.url(), 500, "")).await;
    std::fs::write(
        gw.config_path(),
        many_routes(&up.url(), 500, "").replace(
            "hosts: [\"api7.example.com\"]",
            "hosts: [\"${env:TOLLGATE_IT_RELOAD_HOST}\"]",
        ),
    )
    .unwrap();
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 200, "{body:#}");
    let r = client()
        .get(gw.url("/svc7/x"))
        .header("host", "api7.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

// Behaviour: a reload that changes one route of 2,000 (and one `${env:..}` route whose
// variable changed while its text did not) serves the new routes at once, and the
// routes left as they were keep serving; each route is read again only when its text
// changed, but what is served is always the file as it is now.
#[tokio::test]
async fn a_reload_serves_the_edited_route_and_keeps_the_others() {
    let up = spawn_upstream().await;
    std::env::set_var("TOLLGATE_IT_EDIT_HOST", "old.example.com");
    let text = many_routes(&up.url(), 2_000, "").replace(
        "hosts: [\"api7.example.com\"]",
        "hosts: [\"${env:TOLLGATE_IT_EDIT_HOST}\"]",
    );
    let gw = spawn_gateway(&text).await;
    let get = |path: &'static str, host: &'static str| {
        let url = gw.url(path);
        async move {
            client()
                .get(url)
                .header("host", host)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/svc1500/x", "api1500.example.com").await, 200);
    assert_eq!(get("/svc1500/x", "edited.example.com").await, 404);
    assert_eq!(get("/svc7/x", "old.example.com").await, 200);

    std::env::set_var("TOLLGATE_IT_EDIT_HOST", "new.example.com");
    std::fs::write(
        gw.config_path(),
        text.replace(
            "hosts: [\"api1500.example.com\"]",
            "hosts: [\"edited.example.com\"]",
        ),
    )
    .unwrap();
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(get("/svc1500/x", "edited.example.com").await, 200);
    assert_eq!(get("/svc1500/x", "api1500.example.com").await, 404);
    assert_eq!(get("/svc7/x", "new.example.com").await, 200);
    assert_eq!(get("/svc7/x", "old.example.com").await, 404);
    assert_eq!(get("/svc1999/x", "api1999.example.com").await, 200);
    gw.stop().await;
}
