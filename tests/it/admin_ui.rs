//! The admin listener's decisions lookup, live event stream, explain endpoint and page,
//! over real sockets: a real tollgate, a real upstream, a real (fake) IdP's JWKS, real
//! HTTP clients, and the real `tollgate` binary for `explain --request-id`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::{load_error, GatewayConfig};

/// Issuer `corp`; route `analytics` on /api (analytics.read, and reports.read for GET
/// /api/reports) and an open route on /public.
pub fn gateway_config(idp: &Idp, up: &Upstream) -> GatewayConfig {
    GatewayConfig::new()
        .issuer(idp, "corp")
        .upstream("bi", &up.url())
        .route(json!({
            "name": "analytics", "path_prefix": "/api", "upstream": "bi",
            "auth": {"issuers": ["corp"], "scopes": ["analytics.read"]},
            "permissions": [
                {"path": "/api/reports", "methods": ["GET"], "scopes": ["reports.read"]},
            ],
        }))
        .open_route("open", "/public", "bi")
}

pub fn gateway_yaml(idp: &Idp, up: &Upstream) -> String {
    gateway_config(idp, up).yaml()
}

/// [`gateway_config`] with `server.admin_auth`.
fn with_admin_auth(idp: &Idp, up: &Upstream, admin_auth: Value) -> String {
    gateway_config(idp, up)
        .merge("server", json!({"admin_auth": admin_auth}))
        .yaml()
}

async fn get_with(url: String, token: Option<&str>, rid: Option<&str>) -> reqwest::Response {
    let mut b = client().get(url);
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    if let Some(r) = rid {
        b = b.header("x-request-id", r);
    }
    b.send().await.unwrap()
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_owned()
}

// Behaviour (issue 22 item 3): the X-Request-Id of a refused request finds its decision
// on the admin listener — route, method, path, client, status, the refusing gate and
// reason, and explain-style steps ending in the refusal — and neither the token nor any
// part of it is in the record. A forwarded request and an unknown id are 404; the list
// is newest first and honours `limit`.
#[tokio::test]
async fn decision_lookup_by_request_id() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &up)).await;

    // A valid token without the permission's extra scope: 403 scope_missing.
    let token = idp.token(json!({"scope": "analytics.read"}));
    let r = get_with(gw.url("/api/reports?q=1"), Some(&token), None).await;
    assert_eq!(r.status(), 403);
    let denied_id = request_id(&r);

    let r = client()
        .get(gw.admin_url(&format!("/admin/decisions/{denied_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for part in token.split('.') {
        assert!(
            !text.contains(part),
            "a token part is in the record: {text}"
        );
    }
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["request_id"], json!(denied_id), "{d:#}");
    assert_eq!(d["status"], json!(403), "{d:#}");
    assert_eq!(d["route"], json!("analytics"), "{d:#}");
    assert_eq!(d["method"], json!("GET"), "{d:#}");
    assert_eq!(d["path"], json!("/api/reports"), "{d:#}");
    assert_eq!(d["client"], json!("sap-cx-dashboard"), "{d:#}");
    assert_eq!(d["remote"], json!("127.0.0.1"), "{d:#}");
    assert_eq!(d["error"], json!("insufficient_scope"), "{d:#}");
    assert_eq!(d["reason"], json!("scope_missing"), "{d:#}");
    assert_eq!(d["gate"], json!("scopes"), "{d:#}");
    let steps: Vec<&str> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(steps[0], "request: GET /api/reports", "{steps:#?}");
    assert!(
        steps.contains(&"route: analytics (path_prefix /api, upstream bi)"),
        "{steps:#?}"
    );
    assert!(
        steps.contains(&"auth: issuers [corp], scopes required [analytics.read], clients any"),
        "{steps:#?}"
    );
    assert!(
        steps.contains(&"scopes granted: [analytics.read]"),
        "{steps:#?}"
    );
    assert!(
        steps.contains(&"permission: /api/reports methods [GET] extra scopes [reports.read]"),
        "{steps:#?}"
    );
    let last = steps.last().unwrap();
    assert!(
        last.starts_with("result: DENY 403 insufficient_scope (reason scope_missing)"),
        "{steps:#?}"
    );

    // No token at all: 401 token_missing, the token gate.
    let r = get_with(gw.url("/api/x"), None, Some("my-denied-1")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(request_id(&r), "my-denied-1");
    let d = json_of(
        client()
            .get(gw.admin_url("/admin/decisions/my-denied-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(d["reason"], json!("token_missing"), "{d:#}");
    assert_eq!(d["gate"], json!("token"), "{d:#}");
    assert_eq!(d["client"], json!("-"), "{d:#}");

    // A forwarded request is not recorded; neither is an unknown id.
    let good = idp.token(json!({"scope": "analytics.read reports.read"}));
    let r = get_with(gw.url("/api/reports"), Some(&good), Some("allowed-1")).await;
    assert_eq!(r.status(), 200);
    for id in ["allowed-1", "never-seen"] {
        let r = client()
            .get(gw.admin_url(&format!("/admin/decisions/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{id}");
        let v = json_of(r).await;
        assert_eq!(v["error"], json!("not_found"));
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains("only refused or failed"),
            "{v}"
        );
    }

    // The list: newest first, limit honoured.
    let v = json_of(
        client()
            .get(gw.admin_url("/admin/decisions?limit=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["capacity"], json!(1000));
    assert_eq!(v["kept"], json!(2));
    let list = v["decisions"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["request_id"], json!("my-denied-1"));
    let r = client()
        .get(gw.admin_url("/admin/decisions?limit=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    gw.stop().await;
}

// Behaviour: the ring keeps the last 1000 refusals and no more: after 1005 refused
// requests the first five are gone, the rest are found.
#[tokio::test]
async fn decision_ring_is_bounded() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &up)).await;
    // Its own rustls provider: run alone, no other test has installed one.
    tollgate::tls::install_default_provider();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    for i in 0..1005 {
        let r = c
            .get(gw.url("/api/x"))
            .header("x-request-id", format!("ring-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "load loop bound"
        );
    }
    let v = json_of(
        client()
            .get(gw.admin_url("/admin/decisions?limit=5000"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["kept"], json!(1000));
    let list = v["decisions"].as_array().unwrap();
    assert_eq!(list.len(), 1000);
    assert_eq!(list[0]["request_id"], json!("ring-1004"));
    assert_eq!(list[999]["request_id"], json!("ring-5"));
    for (id, want) in [
        ("ring-0", 404),
        ("ring-4", 404),
        ("ring-5", 200),
        ("ring-1004", 200),
    ] {
        let r = client()
            .get(gw.admin_url(&format!("/admin/decisions/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{id}");
    }
    gw.stop().await;
}

// Behaviour: `tollgate explain --request-id ID --admin URL` (the real binary) prints the
// recorded decision like explain prints a trace, and exits 1; an unknown id exits 2
// with the admin API's message.
#[tokio::test]
async fn explain_request_id_cli() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &up)).await;
    let expired = idp.token(json!({"exp": now() - 3600, "iat": now() - 7200}));
    let r = get_with(gw.url("/api/data"), Some(&expired), None).await;
    assert_eq!(r.status(), 401);
    let id = request_id(&r);
    let admin = gw.admin_url("");
    let run = |id: String| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            output_within(
                "tollgate explain --request-id",
                std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
                    .env_remove("TOLLGATE_CONFIG")
                    .args(["explain", "--request-id", &id, "--admin", &admin]),
                Duration::from_secs(60),
            )
        })
    };
    let out = run(id.clone()).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("decision {id}")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("refused by: token"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("route: analytics (path_prefix /api, upstream bi)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("result: DENY 401 invalid_token (reason token_expired)"),
        "{}",
        out.stdout
    );
    for part in expired.split('.') {
        assert!(!out.stdout.contains(part));
    }
    let out = run("no-such-id".into()).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("answered 404"), "{}", out.stderr);
    assert!(
        out.stderr.contains("only refused or failed"),
        "{}",
        out.stderr
    );
    gw.stop().await;
}

/// Reads Server-Sent Events from `resp` until one `decision` event's data has
/// `request_id == id`, or `within` passes.
async fn sse_until(resp: &mut reqwest::Response, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    let mut buf = String::new();
    loop {
        if let Some(v) = buf
            .split("\n\n")
            .filter(|ev| ev.contains("event: decision"))
            .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|v| v["request_id"] == json!(id))
        {
            return v;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no event for {id} within {within:?}: {buf}"
        );
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            Ok(Ok(None)) => panic!("event stream ended: {buf}"),
            Ok(Err(e)) => panic!("event stream failed: {e}: {buf}"),
            Err(_) => panic!("no event for {id} within {within:?}: {buf}"),
        }
    }
}

// Behaviour: `GET /admin/events` streams refusals as Server-Sent Events: what was
// recorded before the stream opened first, then each new refusal as it happens; with
// `Last-Event-ID` only what came after it.
#[tokio::test]
async fn events_stream_refusals() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &up)).await;
    let r = get_with(gw.url("/api/x"), None, Some("before-stream")).await;
    assert_eq!(r.status(), 401);
    let mut s = client()
        .get(gw.admin_url("/admin/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(s.status(), 200);
    assert_eq!(s.headers()["content-type"], "text/event-stream");
    let first = sse_until(&mut s, "before-stream", PATIENCE).await;
    let r = get_with(gw.url("/nowhere"), None, Some("while-streaming")).await;
    assert_eq!(r.status(), 404);
    let live = sse_until(&mut s, "while-streaming", PATIENCE).await;
    assert_eq!(live["gate"], json!("route"), "{live}");
    assert_eq!(live["error"], json!("not_found"), "{live}");
    assert!(live["seq"].as_u64() > first["seq"].as_u64());
    drop(s);
    // Resuming after the first event: the second comes, the first does not again.
    let mut s = client()
        .get(gw.admin_url("/admin/events"))
        .header("last-event-id", first["seq"].to_string())
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let deadline = Instant::now() + PATIENCE;
    while !buf.contains("while-streaming") {
        let left = deadline.saturating_duration_since(Instant::now());
        let c = tokio::time::timeout(left, s.chunk())
            .await
            .expect("resumed stream")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&c.expect("stream open")));
    }
    assert!(!buf.contains("before-stream"), "{buf}");
    drop(s);
    gw.stop().await;
}

// Behaviour: `POST /admin/explain` runs the running gateway's policy on a pasted token,
// method, path and origin, step by step, naming the refusing gate; it only takes JSON,
// and a cross-site browser request is refused.
#[tokio::test]
async fn explain_endpoint() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &up)).await;
    let token = idp.token(json!({"scope": "analytics.read"}));
    let r = client()
        .post(gw.admin_url("/admin/explain"))
        .json(&json!({"token": token, "method": "GET", "path": "/api/reports"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for part in token.split('.') {
        assert!(!text.contains(part), "token echoed: {text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["allowed"], json!(false), "{v:#}");
    assert_eq!(v["status"], json!(403), "{v:#}");
    assert_eq!(v["gate"], json!("scopes"), "{v:#}");
    assert_eq!(v["reason"], json!("scope_missing"), "{v:#}");
    let steps = v["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("route: analytics")),
        "{v:#}"
    );
    assert!(
        steps
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("result: DENY 403 insufficient_scope"),
        "{v:#}"
    );
    // Allowed, nothing sent upstream.
    let good = idp.token(json!({"scope": "analytics.read reports.read"}));
    let v = json_of(
        client()
            .post(gw.admin_url("/admin/explain"))
            .json(&json!({"token": good, "path": "/api/reports"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["allowed"], json!(true), "{v:#}");
    assert_eq!(
        v["steps"].as_array().unwrap().last().unwrap(),
        "result: ALLOW"
    );
    assert_eq!(up.count(), 0, "explain sent something upstream");
    // Not JSON: refused; cross-site: refused.
    let r = client()
        .post(gw.admin_url("/admin/explain"))
        .body("path=/api")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .post(gw.admin_url("/admin/explain"))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"path": "/api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    gw.stop().await;
}

// Behaviour: `POST /admin/explain` decides a browser's cross-origin call like
// `tollgate explain --origin [--preflight]`: with `origin` the route's CORS is decided,
// with `preflight` the browser's preflight is explained with the headers it would get;
// an origin the route does not allow gets none, and a preflight without an origin is
// refused. The first step names the config version that decided.
#[tokio::test]
async fn explain_endpoint_cors() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = gateway_config(&idp, &up)
        .route(json!({
            "name": "partner", "path_prefix": "/partner", "upstream": "bi", "auth": "none",
            "cors": {"allow_origins": ["https://cx.example"], "allow_methods": ["GET", "PUT"]},
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let explain = |body: Value| {
        let url = gw.admin_url("/admin/explain");
        async move { client().post(url).json(&body).send().await.unwrap() }
    };
    let steps = |v: &Value| -> Vec<String> {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let v = json_of(
        explain(
            json!({"path": "/partner/orders", "origin": "https://cx.example", "preflight": "PUT"}),
        )
        .await,
    )
    .await;
    let s = steps(&v);
    assert!(
        s[0].starts_with("request: OPTIONS /partner/orders (Origin https://cx.example)")
            && s[0].ends_with("(config version 1)"),
        "{v:#}"
    );
    assert!(
        s.iter()
            .any(|l| l == "cors: access-control-allow-origin: https://cx.example"),
        "{v:#}"
    );
    assert!(
        s.iter()
            .any(|l| l.starts_with("cors: access-control-allow-methods:") && l.contains("PUT")),
        "{v:#}"
    );
    assert_eq!(v["allowed"], json!(true), "{v:#}");
    // An origin the route does not allow: no CORS headers for it.
    let v = json_of(
        explain(json!({"path": "/partner/orders", "origin": "https://evil.example", "preflight": "PUT"})).await,
    )
    .await;
    let s = steps(&v);
    assert!(
        !s.iter()
            .any(|l| l.starts_with("cors: access-control-allow-origin")),
        "{v:#}"
    );
    // A plain cross-origin GET is forwarded (the route has no auth).
    let v =
        json_of(explain(json!({"path": "/partner/orders", "origin": "https://cx.example"})).await)
            .await;
    assert_eq!(v["allowed"], json!(true), "{v:#}");
    assert_eq!(steps(&v).last().unwrap(), "result: ALLOW", "{v:#}");
    // A preflight needs an origin.
    let r = explain(json!({"path": "/partner/orders", "preflight": "PUT"})).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("preflight needs origin"));
    assert_eq!(up.count(), 0, "explain sent something upstream");
    gw.stop().await;
}

// Behaviour: `GET /admin/ui` is HTML under a strict CSP, listing routes and issuers
// (escaped), with its script and style from the admin listener itself.
#[tokio::test]
async fn admin_page_served() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &up)).await;
    let r = client()
        .get(gw.admin_url("/admin/ui"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let html = r.text().await.unwrap();
    assert!(html.contains("<td>analytics</td>"), "{html}");
    assert!(html.contains("<code>/api</code>"), "{html}");
    assert!(html.contains("reports.read"), "{html}");
    assert!(html.contains(&idp.url("/jwks")), "{html}");
    assert!(html.contains("href=\"/metrics\""), "{html}");
    assert!(!html.contains("<script>"), "inline script: {html}");
    assert!(!html.contains(" onclick"), "{html}");
    for (p, ct) in [
        ("/admin/ui/page.js", "text/javascript; charset=utf-8"),
        ("/admin/ui/page.css", "text/css; charset=utf-8"),
    ] {
        let r = client().get(gw.admin_url(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(r.headers()["content-type"], ct, "{p}");
    }
    // Not on the public listener.
    let r = client().get(gw.url("/admin/ui")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    gw.stop().await;
}

// Behaviour: `server.admin_auth` on and off. Off: the admin API answers anyone who
// reaches it. `type: basic`: every admin path but /healthz and /readyz needs the user
// name and the password (checked against its argon2 hash), else 401 with a Basic
// challenge (a browser asks for them, then the page and its event stream work).
// `type: bearer` (or no type): the route gate, 401 Bearer challenge, 403 without the
// scope. A bad admin_auth is a located config error.
#[tokio::test]
async fn admin_auth_on_and_off() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let status = |url: String, auth: Option<String>| async move {
        let mut b = client().get(url);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let r = b.send().await.unwrap();
        (
            r.status().as_u16(),
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    };
    let basic = |u: &str, p: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };

    // Off.
    let gw = spawn_gateway(&gateway_yaml(&idp, &up)).await;
    for p in ["/admin/ui", "/admin/decisions", "/admin/status"] {
        assert_eq!(status(gw.admin_url(p), None).await.0, 200, "{p}");
    }
    gw.stop().await;

    // Basic.
    let hash = tollgate::token_service::hash_secret("correct horse").unwrap();
    let gw = spawn_gateway(&with_admin_auth(
        &idp,
        &up,
        // Two wrong attempts per path below: more than the default failed-attempt limit
        // (10 per address), which this test is not about (adversarial.rs is).
        json!({"type": "basic", "username": "ops", "password_hash": hash,
               "failed_auth_limit": {"limit": 100, "per": "1m"}}),
    ))
    .await;
    for p in ["/healthz", "/readyz"] {
        assert_eq!(status(gw.admin_url(p), None).await.0, 200, "{p} stays open");
    }
    for p in [
        "/admin/ui",
        "/admin/ui/page.js",
        "/admin/events",
        "/admin/decisions",
        "/admin/decisions/x",
        "/metrics",
        "/admin/config",
    ] {
        let (s, challenge) = status(gw.admin_url(p), None).await;
        assert_eq!(s, 401, "{p}");
        assert_eq!(
            challenge.as_deref(),
            Some("Basic realm=\"tollgate\""),
            "{p}"
        );
        assert_eq!(
            status(gw.admin_url(p), Some(basic("ops", "wrong"))).await.0,
            401,
            "{p}"
        );
        assert_eq!(
            status(gw.admin_url(p), Some(basic("root", "correct horse")))
                .await
                .0,
            401,
            "{p}"
        );
    }
    for (p, want) in [
        ("/admin/ui", 200),
        ("/admin/decisions", 200),
        ("/admin/decisions/x", 404),
        ("/metrics", 200),
    ] {
        assert_eq!(
            status(gw.admin_url(p), Some(basic("ops", "correct horse")))
                .await
                .0,
            want,
            "{p}"
        );
    }
    // The hash is redacted in the running config.
    let cfg = client()
        .get(gw.admin_url("/admin/config"))
        .header("authorization", basic("ops", "correct horse"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!cfg.contains(&hash), "{cfg}");
    gw.stop().await;

    // Bearer, with `type` spelt out.
    let gw = spawn_gateway(&with_admin_auth(
        &idp,
        &up,
        json!({"type": "bearer", "issuers": ["corp"], "scopes": ["tollgate.admin"]}),
    ))
    .await;
    assert_eq!(status(gw.admin_url("/readyz"), None).await.0, 200);
    let (s, challenge) = status(gw.admin_url("/admin/decisions"), None).await;
    assert_eq!(s, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"tollgate\""));
    let weak = idp.token(json!({"scope": "analytics.read"}));
    let strong = idp.token(json!({"scope": "tollgate.admin"}));
    assert_eq!(
        status(
            gw.admin_url("/admin/decisions"),
            Some(format!("Bearer {weak}"))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        status(gw.admin_url("/admin/ui"), Some(format!("Bearer {strong}")))
            .await
            .0,
        200
    );
    gw.stop().await;

    // Config errors, located.
    for (block, want) in [
        (
            json!({"type": "basic", "username": "ops", "password_hash": "plain"}),
            "server.admin_auth.password_hash: not an argon2 PHC string",
        ),
        (
            json!({"type": "basic", "password_hash": "x", "scopes": ["a"]}),
            "server.admin_auth.scopes: scopes is for `type: bearer`",
        ),
        (
            json!({"type": "digest"}),
            "server.admin_auth.type: unknown admin_auth type \"digest\"",
        ),
        (
            json!({"issuers": ["corp"], "username": "ops"}),
            "server.admin_auth.username: username is for `type: basic`",
        ),
    ] {
        let e = load_error(&with_admin_auth(&idp, &up, block.clone()));
        assert!(e.contains(want), "{block}: {e}");
    }
}
