//! Several endpoints per upstream (`upstreams[].urls`): balancing, passive ejection,
//! active health checks, retries, and what `/admin/status` and `/metrics` say, with
//! real upstream servers on loopback that can be killed and revived.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// A test upstream that can be killed (listener closed, connections cut) and revived on
/// the same port. Records `(method, path, body length)` of every request. `/health`
/// answers `health`; `/hold` waits until released; `/fail` answers 503; anything else
/// 200 with the backend's name.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String, usize)>>>,
    health: Arc<AtomicU16>,
    released: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut b = Backend {
            name,
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            health: Arc::new(AtomicU16::new(200)),
            released: Arc::default(),
            release: Arc::default(),
            tasks: Arc::default(),
        };
        b.serve(listener);
        b
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (name, seen, health) = (self.name, self.seen.clone(), self.health.clone());
        let (released, release) = (self.released.clone(), self.release.clone());
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, health) = (seen.clone(), health.clone());
                let (released, release) = (released.clone(), release.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, health) = (seen.clone(), health.clone());
                        let (released, release) = (released.clone(), release.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            seen.lock()
                                .unwrap()
                                .push((method, path.clone(), body.len()));
                            let status = match path.as_str() {
                                "/health" => health.load(Ordering::SeqCst),
                                "/fail" => 503,
                                "/hold" => {
                                    loop {
                                        let notified = release.notified();
                                        if released.load(Ordering::SeqCst) {
                                            break;
                                        }
                                        notified.await;
                                    }
                                    200
                                }
                                _ => 200,
                            };
                            let r = Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(name)))
                                .unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Closes the listener and cuts every connection: connects are refused from now on.
    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Listens on the same port again.
    async fn revive(&mut self) {
        let listener = eventually(
            "the port can be bound again",
            PATIENCE,
            async || TcpListener::bind(self.addr).await.ok(),
            |l| l.is_some(),
        )
        .await
        .unwrap();
        self.serve(listener);
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.release.notify_waiters();
    }

    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p == path)
            .count()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.release();
        self.kill();
    }
}

/// Upstream `pool` with one endpoint per backend (more upstream keys in `extra`),
/// behind one open route on `/`.
fn config(backends: &[&Backend], extra: Value) -> String {
    let urls: Vec<String> = backends.iter().map(|b| b.url()).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    GatewayConfig::new()
        .upstream_urls("pool", &urls, extra)
        .open_route("all", "/", "pool")
        .yaml()
}

/// The endpoints of upstream `pool` in `/admin/status`, by endpoint label.
async fn endpoints(gw: &Gw) -> HashMap<String, serde_json::Value> {
    let up = upstream_status(gw, "pool").await;
    up["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["endpoint"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

async fn get(gw: &Gw, path: &str) -> (u16, String) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn label(b: &Backend) -> String {
    b.addr.to_string()
}

// Behaviour: round-robin spreads requests evenly over three endpoints, each getting
// its own Host; /admin/status lists the endpoints, all healthy, with their counts.
#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let gw = spawn_gateway(&config(&[&a, &b, &c], json!({}))).await;
    let mut by_backend: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (status, body) = get(&gw, "/x").await;
        assert_eq!(status, 200);
        *by_backend.entry(body).or_default() += 1;
    }
    assert_eq!(by_backend.len(), 3, "{by_backend:?}");
    assert!(by_backend.values().all(|&n| n == 10), "{by_backend:?}");
    let eps = endpoints(&gw).await;
    assert_eq!(eps.len(), 3);
    for be in [&a, &b, &c] {
        let e = &eps[&label(be)];
        assert_eq!(e["healthy"], true, "{e}");
        assert_eq!(e["state"], "healthy", "{e}");
        assert_eq!(e["requests"], 10, "{e}");
        assert_eq!(e["health_check"], "off", "{e}");
    }
    let base = format!("http://{}", gw.admin.unwrap());
    let series = format!(
        "tollgate_upstream_endpoint_healthy{{upstream=\"pool\",endpoint=\"{}\"}}",
        label(&a)
    );
    metric_eventually(&base, &series, |v| v == 1.0).await;
    gw.stop().await;
}

// Behaviour: one endpoint killed and revived: no idempotent GET fails meanwhile
// (retries on connect failure go to another endpoint), the dead endpoint is ejected
// (visible in /admin/status and the ejections counter), and once it is back and the
// ejection has run out it gets requests again and shows healthy.
#[tokio::test]
async fn killed_endpoint_is_ejected_and_comes_back() {
    let (a, mut b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let extra = json!({
        "passive": {"consecutive_failures": 2, "eject_for": "2s"},
        "retries": {"attempts": 3, "on": ["connect-failure", "reset", 503]},
    });
    let gw = spawn_gateway(&config(&[&a, &b, &c], extra)).await;
    for _ in 0..6 {
        assert_eq!(get(&gw, "/x").await.0, 200);
    }
    b.kill();
    // Every GET succeeds while b is dead; b ends up ejected.
    let mut sent = 0;
    let ejected = eventually(
        "the dead endpoint is ejected",
        PATIENCE,
        async || {
            let (status, body) = get(&gw, "/x").await;
            assert_eq!(
                status, 200,
                "a GET failed while one endpoint was down: {body}"
            );
            assert_ne!(body, "b");
            sent += 1;
            endpoints(&gw).await[&label(&b)].clone()
        },
        |e| e["state"] == "ejected",
    )
    .await;
    assert_eq!(ejected["healthy"], false, "{ejected}");
    assert!(ejected["ejected_until"].is_string(), "{ejected}");
    assert!(sent >= 2, "{sent}");
    let base = format!("http://{}", gw.admin.unwrap());
    let ejections = format!(
        "tollgate_upstream_ejections_total{{upstream=\"pool\",endpoint=\"{}\"}}",
        label(&b)
    );
    metric_eventually(&base, &ejections, |v| v >= 1.0).await;
    metric_eventually(
        &base,
        "tollgate_upstream_retries_total{upstream=\"pool\"}",
        |v| v >= 1.0,
    )
    .await;
    let healthy = format!(
        "tollgate_upstream_endpoint_healthy{{upstream=\"pool\",endpoint=\"{}\"}}",
        label(&b)
    );
    // Revived: after the ejection runs out, b serves again.
    b.revive().await;
    let before = b.hits("/x");
    eventually(
        "the revived endpoint gets requests again and shows healthy",
        PATIENCE,
        async || {
            let (status, body) = get(&gw, "/x").await;
            assert_eq!(status, 200, "{body}");
            (b.hits("/x"), endpoints(&gw).await[&label(&b)].clone())
        },
        |(hits, e)| *hits > before && e["state"] == "healthy",
    )
    .await;
    metric_eventually(&base, &healthy, |v| v == 1.0).await;
    gw.stop().await;
}

// Behaviour: an endpoint whose health path answers 503 is taken out after `unhealthy`
// failed checks (no request reaches it meanwhile) and brought back after `healthy`
// passes.
#[tokio::test]
async fn active_health_check_flips_an_endpoint() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let extra = json!({"health_check": {
        "path": "/health", "interval": "100ms", "timeout": "1s", "healthy": 2, "unhealthy": 2,
    }});
    let gw = spawn_gateway(&config(&[&a, &b, &c], extra)).await;
    eventually(
        "every endpoint passes its first checks",
        PATIENCE,
        async || endpoints(&gw).await,
        |eps| eps.values().all(|e| e["health_check"] == "passing"),
    )
    .await;
    b.health.store(503, Ordering::SeqCst);
    let e = eventually(
        "b fails its health check",
        PATIENCE,
        async || endpoints(&gw).await[&label(&b)].clone(),
        |e| e["health_check"] == "failing",
    )
    .await;
    assert_eq!(e["healthy"], false, "{e}");
    assert_eq!(e["state"], "failing_health_check", "{e}");
    let before = b.hits("/x");
    for _ in 0..12 {
        let (status, body) = get(&gw, "/x").await;
        assert_eq!(status, 200);
        assert_ne!(body, "b", "a request reached the failing endpoint");
    }
    assert_eq!(b.hits("/x"), before);
    b.health.store(200, Ordering::SeqCst);
    eventually(
        "b passes again and gets requests",
        PATIENCE,
        async || {
            get(&gw, "/x").await;
            (b.hits("/x"), endpoints(&gw).await[&label(&b)].clone())
        },
        |(hits, e)| *hits > before && e["state"] == "healthy",
    )
    .await;
    gw.stop().await;
}

// Behaviour: a reload stops the old config's health checks (no task outlives its
// config): after a reload to another health path, the old path gets no more checks
// while the new one keeps getting them.
#[tokio::test]
async fn reload_replaces_health_checks() {
    let a = Backend::start("a").await;
    let extra =
        |path: &str| json!({"health_check": {"path": path, "interval": "50ms", "timeout": "1s"}});
    let gw = spawn_gateway(&config(&[&a], extra("/health"))).await;
    eventually(
        "checks arrive",
        PATIENCE,
        async || a.hits("/health"),
        |n| *n >= 3,
    )
    .await;
    std::fs::write(gw.config_path(), config(&[&a], extra("/other"))).unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let old = a.hits("/health");
    let new = a.hits("/other");
    eventually(
        "the new checks run",
        PATIENCE,
        async || a.hits("/other"),
        |n| *n >= new + 10,
    )
    .await;
    // At most one check of the old config was under way when it stopped.
    assert!(a.hits("/health") <= old + 1, "old checks kept running");
    gw.stop().await;
}

// Behaviour: retries on 503 go to a different endpoint each time for a GET (each of
// three endpoints tried once) and are counted; a POST with a body and a PUT with a
// body are never retried.
#[tokio::test]
async fn only_idempotent_bodiless_requests_are_retried() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let extra = json!({
        "passive": {"consecutive_failures": 0},
        "retries": {"attempts": 3, "on": [503]},
    });
    let gw = spawn_gateway(&config(&[&a, &b, &c], extra)).await;
    let total = |path: &str| a.hits(path) + b.hits(path) + c.hits(path);
    let (status, _) = get(&gw, "/fail").await;
    assert_eq!(status, 503);
    assert_eq!(
        (a.hits("/fail"), b.hits("/fail"), c.hits("/fail")),
        (1, 1, 1),
        "three tries, each on another endpoint"
    );
    let base = format!("http://{}", gw.admin.unwrap());
    metric_eventually(
        &base,
        "tollgate_upstream_retries_total{upstream=\"pool\"}",
        |v| v == 2.0,
    )
    .await;
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        let before = total("/fail");
        let r = client()
            .request(method.clone(), gw.url("/fail"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{method}");
        assert_eq!(
            total("/fail"),
            before + 1,
            "{method} was sent more than once"
        );
    }
    // A POST without a body is not idempotent either.
    let before = total("/fail");
    let r = client().post(gw.url("/fail")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(total("/fail"), before + 1);
    metric_eventually(
        &base,
        "tollgate_upstream_retries_total{upstream=\"pool\"}",
        |v| v == 2.0,
    )
    .await;
    gw.stop().await;
}

// Behaviour: least-requests sends nothing to an endpoint that holds requests open
// while the others are idle.
#[tokio::test]
async fn least_requests_prefers_idle_endpoints() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    // b and c answer /hold at once; a holds it.
    b.release();
    c.release();
    let gw = spawn_gateway(&config(&[&a, &b, &c], json!({"balance": "least-requests"}))).await;
    let url = gw.url("/hold");
    let mut held = Vec::new();
    for _ in 0..60 {
        if a.hits("/hold") >= 1 {
            break;
        }
        let before = (a.hits("/hold"), b.hits("/hold") + c.hits("/hold"));
        let u = url.clone();
        held.push(tokio::spawn(async move { client().get(u).send().await }));
        eventually(
            "the request reached an endpoint",
            PATIENCE,
            async || (a.hits("/hold"), b.hits("/hold") + c.hits("/hold")),
            |now| *now != before,
        )
        .await;
    }
    assert_eq!(a.hits("/hold"), 1, "a holds a request");
    let eps = endpoints(&gw).await;
    assert_eq!(eps[&label(&a)]["in_flight"], 1, "{eps:?}");
    // Two distinct endpoints are compared, so a busy one always loses to an idle one:
    // neither quick requests nor more held ones reach a.
    for path in ["/x", "/hold"].repeat(15) {
        let (status, body) = get(&gw, path).await;
        assert_eq!(status, 200);
        assert_ne!(body, "a", "least-requests chose the busy endpoint");
    }
    assert_eq!((a.hits("/x"), a.hits("/hold")), (0, 1));
    a.release();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    gw.stop().await;
}

fn load_errors(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    match tollgate::Gateway::load(path) {
        Ok(_) => panic!("config accepted:\n{yaml}"),
        Err(e) => e.lines().join("\n"),
    }
}

/// Literal YAML: the cases below check `line:col` in this text.
fn upstream_yaml(keys: &str) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\nupstreams:\n  - name: pool\n{keys}routes:\n  - name: all\n    path_prefix: /\n    upstream: pool\n    auth: none\n"
    )
}

// Behaviour: every mistake with urls and the keys beside them is a located error.
#[test]
fn endpoint_config_errors_are_located() {
    let cases: &[(&str, &str)] = &[
        (
            "    url: \"http://127.0.0.1:1\"\n    urls: [\"http://127.0.0.1:2\"]\n",
            "6:11 upstreams[0].urls: give either url (one endpoint) or urls (several), not both",
        ),
        (
            "    timeout: 5s\n",
            "4:5 upstreams[0]: missing required key \"url\" (e.g. url: \"http://127.0.0.1:9000\", or urls: [...] for several endpoints)",
        ),
        ("    urls: []\n", "5:11 upstreams[0].urls: urls needs at least one URL"),
        (
            "    urls: [\"http://127.0.0.1:1\", \"https://127.0.0.1:2\"]\n",
            "upstreams[0].urls[1]: every URL of urls needs the same scheme",
        ),
        (
            "    urls: [\"http://127.0.0.1:1/api\", \"http://127.0.0.1:2/other\"]\n",
            "upstreams[0].urls[1]: every URL of urls needs the same path",
        ),
        (
            "    urls:\n      - \"http://127.0.0.1:1\"\n      - \"http://127.0.0.1:1/\"\n",
            "7:9 upstreams[0].urls[1]: 127.0.0.1:1 is listed twice in urls (urls[0])",
        ),
        (
            "    urls: [\"ftp://127.0.0.1:1\", \"http://127.0.0.1:3\", \"http://127.0.0.1:3\"]\n",
            "upstreams[0].urls[2]: 127.0.0.1:3 is listed twice in urls (urls[1])",
        ),
        (
            "    urls: [\"http://127.0.0.1:1\"]\n    balance: fastest\n",
            "upstreams[0].balance",
        ),
        (
            "    urls: [\"http://127.0.0.1:1\"]\n    retries: {attempts: 0}\n",
            "upstreams[0].retries.attempts: must be from 1 to 10, found 0",
        ),
        (
            "    urls: [\"http://127.0.0.1:1\"]\n    retries: {on: [connect-failure, 404]}\n",
            "upstreams[0].retries.on[1]: unknown retry condition \"404\"",
        ),
        (
            "    urls: [\"http://127.0.0.1:1\"]\n    health_check: {interval: 5s}\n",
            "upstreams[0].health_check: missing required key \"path\"",
        ),
        (
            "    urls: [\"http://127.0.0.1:1\"]\n    health_check: {path: healthz}\n",
            "upstreams[0].health_check.path: \"healthz\" must be an absolute path",
        ),
        (
            "    urls: [\"http://127.0.0.1:1\"]\n    passive: {max_ejected_percent: 0}\n",
            "upstreams[0].passive.max_ejected_percent: must be from 1 to 100",
        ),
        (
            "    urls: [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]\n    csrf: {}\n",
            "upstreams[0].csrf: csrf needs one endpoint",
        ),
    ];
    let mut wrong = Vec::new();
    for (keys, expected) in cases {
        let errors = load_errors(&upstream_yaml(keys));
        if !errors.contains(expected) {
            wrong.push(format!(
                "expected {expected:?} for:\n{keys}got:\n{errors}\n"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// Behaviour: HTTP/2 (h2c) endpoints each get their own connection, requests are spread
// over them, and a killed one costs no request (retried on the other).
#[tokio::test]
async fn h2c_endpoints_are_balanced_and_retried() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let extra = json!({
        "protocol": "h2c",
        "retries": {"attempts": 2, "on": ["connect-failure", "reset"]},
    });
    let gw = spawn_gateway(&config(&[&a, &b], extra)).await;
    let mut by_backend: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let (status, body) = get(&gw, "/x").await;
        assert_eq!(status, 200);
        *by_backend.entry(body).or_default() += 1;
    }
    assert_eq!(by_backend.get("a"), Some(&5), "{by_backend:?}");
    assert_eq!(by_backend.get("b"), Some(&5), "{by_backend:?}");
    b.kill();
    for _ in 0..10 {
        let (status, body) = get(&gw, "/x").await;
        assert_eq!((status, body.as_str()), (200, "a"));
    }
    gw.stop().await;
}
