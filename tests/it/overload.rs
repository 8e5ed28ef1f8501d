//! Overload: load shedding at `max_concurrent_requests` (a quick 503, never an
//! unbounded queue), `max_connections` enforced, memory flat under a flood.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::common::*;
use crate::gwconfig::{load_error, GatewayConfig};

/// An upstream whose `/hold` requests wait until the test adds permits to `gate`;
/// everything else answers 200 at once. `held` counts the `/hold` requests that arrived.
async fn holding_upstream() -> (String, Arc<Semaphore>, Arc<AtomicUsize>) {
    let gate = Arc::new(Semaphore::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let (g, h) = (gate.clone(), held.clone());
    let addr = serve(move |req: hyper::Request<hyper::body::Incoming>| {
        let (g, h) = (g.clone(), h.clone());
        async move {
            if req.uri().path().starts_with("/hold") {
                h.fetch_add(1, Ordering::SeqCst);
                g.acquire().await.unwrap().forget();
            }
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    (format!("http://{addr}"), gate, held)
}

/// One open route (with CORS) on `/` to `upstream`, with these `server.limits`.
fn config(upstream: &str, limits: Value) -> String {
    GatewayConfig::new()
        .merge("server", json!({"limits": limits}))
        .upstream("bi", upstream)
        .route(json!({
            "name": "open", "path_prefix": "/", "upstream": "bi", "auth": "none",
            "cors": {"allow_origins": ["https://dash.example.com"]},
        }))
        .yaml()
}

async fn metric(gw: &Gw, name: &str) -> f64 {
    series_value(&admin_metrics(&gw.admin_url("")).await, name)
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

// Behaviour: with max_concurrent_requests in flight, the next request is answered 503
// `service_unavailable` at once (JSON, Retry-After, CORS headers), counted in metrics;
// once the held requests finish, requests are served again.
#[tokio::test]
async fn requests_over_the_limit_are_shed_with_503() {
    let (up, gate, _) = holding_upstream().await;
    let gw = spawn_gateway(&config(&up, json!({"max_concurrent_requests": 2}))).await;
    let c = client();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            let url = gw.url("/hold");
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    // Wait until both are in flight.
    metric_eventually(&gw.admin_url(""), "tollgate_requests_in_flight", |n| {
        n >= 2.0
    })
    .await;

    // Bounded, not timed: a shed request never waits for the held ones (they wait
    // until the gate opens, which is after this answer).
    let r = tokio::time::timeout(
        PATIENCE,
        c.get(gw.url("/other"))
            .header("origin", "https://dash.example.com")
            .send(),
    )
    .await
    .expect("the request over the limit was queued, not shed")
    .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = json_of(r).await;
    assert_eq!(body["error"], "service_unavailable");
    assert_eq!(body["request_id"], rid.as_str());
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("limit of 2 requests"));
    assert_eq!(metric(&gw, "tollgate_requests_shed_total").await, 1.0);

    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    metric_eventually(&gw.admin_url(""), "tollgate_requests_in_flight", |n| {
        n == 0.0
    })
    .await;
    let r = c.get(gw.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

// Behaviour: the limit is read per request, so a reload that raises it applies at once.
#[tokio::test]
async fn a_reload_changes_the_request_limit() {
    let (up, gate, _) = holding_upstream().await;
    let gw = spawn_gateway(&config(&up, json!({"max_concurrent_requests": 1}))).await;
    let c = client();
    let url = gw.url("/hold");
    let c1 = c.clone();
    let held = tokio::spawn(async move { c1.get(url).send().await.unwrap().status() });
    metric_eventually(&gw.admin_url(""), "tollgate_requests_in_flight", |n| {
        n >= 1.0
    })
    .await;
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 503);

    std::fs::write(
        gw.config_path(),
        config(&up, json!({"max_concurrent_requests": 5})),
    )
    .unwrap();
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    gate.add_permits(1);
    assert_eq!(held.await.unwrap(), 200);
    gw.stop().await;
}

// Behaviour: zero is refused by validation (it would shed everything).
#[tokio::test]
async fn zero_concurrent_requests_is_a_validation_error() {
    let err = load_error(&config(
        "http://127.0.0.1:9",
        json!({"max_concurrent_requests": 0}),
    ));
    assert!(
        err.contains("server.limits.max_concurrent_requests"),
        "{err}"
    );
}

// Behaviour: with max_connections open, a new connection gets a quick 503 and is closed;
// once a connection closes, new connections are served again.
#[tokio::test]
async fn connections_over_max_connections_get_503_and_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, _gate, _) = holding_upstream().await;
    let gw = spawn_gateway(&config(&up, json!({"max_connections": 2}))).await;
    let req = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        open.push(s); // kept alive, idle
    }
    let reply = raw_exchange(gw.addr, req, PATIENCE).await;
    let answer = reply.text;
    assert!(reply.closed, "not closed: {answer}");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"error\":\"service_unavailable\""),
        "{answer}"
    );
    assert!(answer.contains("connections open"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"));
    // The answer carries a request id, in the header and the body alike; the client's
    // own when it sent a sane one.
    let id = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no x-request-id: {answer}"));
    assert!(
        answer.contains(&format!("\"request_id\":\"{id}\"")),
        "{answer}"
    );
    let answer = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\nX-Request-Id: abc-123\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\r\nx-request-id: abc-123\r\n"), "{answer}");
    assert!(answer.contains("\"request_id\":\"abc-123\""), "{answer}");

    drop(open.pop());
    // The freed slot is taken by the next connection (after the gateway notices the close).
    let answer = eventually(
        "the freed connection slot serves a new connection",
        PATIENCE,
        async || {
            raw(
                gw.addr,
                b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
                Duration::from_secs(1),
            )
            .await
        },
        |answer| !answer.starts_with("HTTP/1.1 503"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let refused = metric(&gw, "tollgate_connections_refused_total").await;
    assert!(refused >= 1.0, "{refused}");
    gw.stop().await;
}

// Behaviour: max_connections counts the connections open, not the ones accepted: with a
// limit of 1, connections one after another are all served (the slot of a connection
// that has closed serves the next one, also when the next was already waited for).
#[tokio::test]
async fn max_connections_serves_connections_one_after_another() {
    let (up, _gate, _) = holding_upstream().await;
    let gw = spawn_gateway(&config(&up, json!({"max_connections": 1}))).await;
    let open = || gw.gateway().metrics.open_connections.get();
    for i in 0..6 {
        let answer = raw(
            gw.addr,
            b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
            Duration::from_secs(1),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "connection {i}: {answer}"
        );
        eventually(
            "the connection is gone",
            PATIENCE,
            async || open(),
            |n| *n == 0,
        )
        .await;
    }
    gw.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

// Behaviour: a flood far over the limit is shed, not queued: every request is answered
// (200 or 503), and the real binary's memory after the flood stays near where it was
// after a warm-up flood of the same size (no queue growing with the overload).
#[tokio::test]
async fn a_flood_is_shed_and_memory_stays_flat() {
    let (up, gate, arrived) = holding_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        config(
            &up,
            json!({"max_concurrent_requests": 20, "max_connections": 4000}),
        ),
    )
    .unwrap();
    let bin = spawn_binary(&path, &["run"]);
    let pid = bin.pid();
    let base = format!("http://{}", bin.public);

    async fn flood(
        base: &str,
        gate: &Semaphore,
        arrived: &AtomicUsize,
        n: usize,
    ) -> (usize, usize) {
        tollgate::tls::install_default_provider();
        let c = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        // 20 held requests fill the limit; the rest must be shed while they are held.
        let held: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                let url = format!("{base}/hold");
                tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        eventually(
            "the 20 held requests reach the upstream",
            PATIENCE,
            async || arrived.load(Ordering::SeqCst),
            |n| *n >= 20,
        )
        .await;
        arrived.store(0, Ordering::SeqCst);
        let sem = Arc::new(Semaphore::new(64));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let c = c.clone();
                let url = format!("{base}/x");
                let sem = sem.clone();
                tokio::spawn(async move {
                    let _p = sem.acquire().await.unwrap();
                    c.get(url).send().await.map(|r| r.status().as_u16())
                })
            })
            .collect();
        let (mut ok, mut shed) = (0, 0);
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(Ok(Ok(200))) => ok += 1,
                Ok(Ok(Ok(503))) => shed += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        gate.add_permits(20);
        for h in held {
            assert_eq!(h.await.unwrap().unwrap(), 200);
        }
        (ok, shed)
    }

    let (_, shed_warm) = flood(&base, &gate, &arrived, 3000).await;
    assert!(shed_warm > 0);
    let after_warmup = rss_kib(pid);
    let (ok, shed) = flood(&base, &gate, &arrived, 3000).await;
    let after = rss_kib(pid);
    assert_eq!(ok + shed, 3000);
    assert!(
        shed > 2000,
        "only {shed} of 3000 shed while the limit was full"
    );
    assert!(
        after <= after_warmup + after_warmup / 5 + 2048,
        "RSS grew from {after_warmup} KiB to {after} KiB over one flood"
    );
    drop(bin);
}
