//! Forwarding, errors, headers, limits, protocols.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// Upstream `bi` (route /api) and `dead` (route /dead, nothing listening), both open;
/// `server` and `bi` are merged into the server section and the `bi` upstream.
fn basic_yaml(up: &Upstream, server: Value, bi: Value) -> String {
    GatewayConfig::new()
        .merge("server", server)
        .upstream_with("bi", &up.url(), bi)
        .upstream_with(
            "dead",
            &format!("http://{}", dead_addr()),
            json!({"connect_timeout": "500ms"}),
        )
        .open_route("api", "/api", "bi")
        .open_route("dead", "/dead", "dead")
        .yaml()
}

/// The gateway of [`basic_yaml`] with `max_header_bytes` set.
async fn with_header_limit(up: &Upstream, max_header_bytes: usize) -> Gw {
    spawn_gateway(&basic_yaml(
        up,
        json!({"limits": {"max_header_bytes": max_header_bytes}}),
        json!({}),
    ))
    .await
}

// Behaviour: method, path, query and body reach the upstream; the response comes back.
#[tokio::test]
async fn forwards_method_path_query_body() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let r = client()
        .put(gw.url("/api/items/7?x=1&y=a%20b"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.uri, "/api/items/7?x=1&y=a%20b");
    assert_eq!(&seen.body[..], b"hello");
    assert_eq!(
        seen.header("host"),
        Some(up.addr.unwrap().to_string().as_str())
    );
    gw.stop().await;
}

// Behaviour: no route -> 404 JSON with request_id; the id is echoed in X-Request-Id.
#[tokio::test]
async fn unknown_path_is_404_json() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let r = client().get(gw.url("/apix")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = json_of(r).await;
    assert_eq!(body["error"], "not_found");
    assert_eq!(body["request_id"], rid.as_str());
    assert!(body["error_description"].is_string());
    assert_eq!(up.count(), 0);
    gw.stop().await;
}

// Behaviour: X-Forwarded-*, request ids kept when sane, generated otherwise.
#[tokio::test]
async fn forwarded_headers_and_request_ids() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let r = client()
        .get(gw.url("/api/x"))
        .header("x-request-id", "abc-123.Z:9")
        .header("x-forwarded-for", "203.0.113.7")
        .header("host", "bi-api.company.com:8443")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123.Z:9");
    let s = up.last();
    assert_eq!(s.header("x-request-id"), Some("abc-123.Z:9"));
    assert_eq!(s.header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        s.header("x-forwarded-host"),
        Some("bi-api.company.com:8443")
    );

    for bad in ["has space", "semi;colon", &"x".repeat(129)] {
        let r = client()
            .get(gw.url("/api/x"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let got = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(got, bad);
        assert!(!got.is_empty() && got.len() <= 128);
        assert_eq!(up.last().header("x-request-id"), Some(got.as_str()));
    }
    gw.stop().await;
}

// Behaviour: hop-by-hop headers (also those named in Connection) and inbound X-Auth-*
// are removed in both directions.
#[tokio::test]
async fn hop_by_hop_and_x_auth_are_stripped() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let r = client()
        .get(gw.url("/api/x"))
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-auth-client-id", "forged")
        .header("X-Auth-Scopes", "admin")
        .header("x-other", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-upstream-hop").is_none(),
        "Connection-named response header must go"
    );
    let s = up.last();
    for h in [
        "x-secret-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "x-auth-client-id",
        "x-auth-scopes",
    ] {
        assert!(s.header(h).is_none(), "{h} must not reach the upstream");
    }
    assert_eq!(s.header("x-other"), Some("kept"));
    gw.stop().await;
}

// Behaviour: unreachable upstream -> 502 bad_gateway.
#[tokio::test]
async fn unreachable_upstream_is_502() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let r = client().get(gw.url("/dead/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let b = json_of(r).await;
    assert_eq!(b["error"], "bad_gateway");
    assert!(b["error_description"].as_str().unwrap().contains("dead"));
    gw.stop().await;
}

// Behaviour: an upstream slower than `timeout` -> 504 within about that time.
#[tokio::test]
async fn slow_upstream_is_504() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({"timeout": "300ms"}))).await;
    let t = Instant::now();
    // The upstream would answer after 30 s, request_timeout is 60 s: an answer well
    // before either can only come from the 300 ms `timeout` (a busy machine may add
    // seconds, never tens of them).
    let r = client()
        .get(gw.url("/api/slow/30000"))
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 504);
    assert_eq!(json_of(r).await["error"], "gateway_timeout");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    gw.stop().await;
}

// Behaviour: request_timeout bounds the whole exchange -> 504.
#[tokio::test]
async fn request_timeout_is_504() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(
        &up,
        json!({"limits": {"request_timeout": "400ms"}}),
        json!({}),
    ))
    .await;
    let r = client().get(gw.url("/api/slow/3000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    gw.stop().await;
}

// Behaviour: an 8 MiB body streams to the upstream intact.
#[tokio::test]
async fn large_body_streams() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let body: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = client()
        .post(gw.url("/api/upload"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["body_len"], 8 * 1024 * 1024);
    assert_eq!(up.last().body.as_ref(), &body[..]);
    gw.stop().await;
}

// Behaviour: bodies over max_body_bytes -> 413, by Content-Length and while streaming.
#[tokio::test]
async fn body_limit_is_413() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(
        &up,
        json!({"limits": {"max_body_bytes": 1000}}),
        json!({}),
    ))
    .await;
    let r = client()
        .post(gw.url("/api/x"))
        .body(vec![b'a'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(json_of(r).await["error"], "payload_too_large");
    assert_eq!(up.count(), 0);
    // Chunked: no Content-Length, counted while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b'b'; 500])).collect();
    let stream = futures_util::stream::iter(chunks);
    let r = client()
        .post(gw.url("/api/x"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let ok = client()
        .post(gw.url("/api/x"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    gw.stop().await;
}

// Behaviour: max_header_bytes counts the head as the client sent it, up to and
// including the blank line: a head of exactly the limit is forwarded, one byte more is
// 431 — the X-Request-Id and traceparent tollgate adds do not count against it.
#[tokio::test]
async fn header_limit_counts_the_clients_head_exactly() {
    let up = spawn_upstream().await;
    let gw = with_header_limit(&up, 4096).await;
    let head = |total: usize| {
        let start = "GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Pad: ";
        let pad = total - start.len() - "\r\n\r\n".len();
        format!("{start}{}\r\n\r\n", "a".repeat(pad)).into_bytes()
    };
    let at_limit = head(4096);
    assert_eq!(at_limit.len(), 4096);
    let r = raw(gw.addr, &at_limit, Duration::from_millis(100)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(up.count(), 1);
    let over = head(4097);
    let r = raw(gw.addr, &over, Duration::from_millis(100)).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    assert!(r.contains("request_header_too_large"), "{r}");
    assert_eq!(up.count(), 1);
    gw.stop().await;
}

// Behaviour: over HTTP/2 (h2c) too, a header list far over max_header_bytes gets SPEC's
// JSON 431 with the request id, not the HTTP/2 layer's bare one.
#[tokio::test]
async fn header_limit_is_431_json_over_http2() {
    let up = spawn_upstream().await;
    let gw = with_header_limit(&up, 4096).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(gw.url("/api/x"))
        .header("x-big", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 431);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(json_of(r).await["error"], "request_header_too_large");
    assert_eq!(up.count(), 0);
    gw.stop().await;
}

// Behaviour: an HTTP/1.1 request without Host is refused 400 `invalid_request` (RFC 9112
// §3.2), also in absolute form; HTTP/1.0 needs no Host and is forwarded.
#[tokio::test]
async fn http11_without_host_is_400() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let quiet = Duration::from_millis(100);
    for head in [
        "GET /api/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET http://{}/api/x HTTP/1.1\r\nConnection: close\r\n\r\n",
            gw.addr
        ),
    ] {
        let r = raw(gw.addr, head.as_bytes(), quiet).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{head:?}: {r}");
        assert!(r.contains("\"error\":\"invalid_request\""), "{r}");
        assert!(r.contains("without a Host header"), "{r}");
        assert!(r.to_ascii_lowercase().contains("\r\nx-request-id: "), "{r}");
    }
    assert_eq!(up.count(), 0);
    let r = raw(gw.addr, b"GET /api/x HTTP/1.0\r\n\r\n", quiet).await;
    assert!(
        r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
        "{r}"
    );
    assert_eq!(up.count(), 1);
    gw.stop().await;
}

// Behaviour: a request head over max_header_bytes -> 431 JSON.
#[tokio::test]
async fn header_limit_is_431() {
    let up = spawn_upstream().await;
    let gw = with_header_limit(&up, 2048).await;
    let r = client()
        .get(gw.url("/api/x"))
        .header("x-big", "a".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(json_of(r).await["error"], "request_header_too_large");
    // Heads up to four times the limit (at least 64 KiB) still get SPEC's JSON 431
    // with the request id, not the HTTP layer's bare one.
    let r = client()
        .get(gw.url("/api/x"))
        .header("x-big", "a".repeat(60_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(json_of(r).await["error"], "request_header_too_large");
    // Far larger heads are refused by the HTTP layer itself, still with 431.
    let r = client()
        .get(gw.url("/api/x"))
        .header("x-big", "a".repeat(300_000))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 431);
    }
    assert_eq!(up.count(), 0);
    gw.stop().await;
}

// Behaviour: Content-Length + Transfer-Encoding together. hyper applies RFC 9112 §6.3:
// Transfer-Encoding wins, Content-Length is dropped before the gateway sees the request,
// and the connection is closed after the response — so the upstream never receives both
// headers and nothing pipelined behind the body is ever read.
#[tokio::test]
async fn cl_te_smuggling_is_neutralised() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let req = b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let reply = raw_exchange(gw.addr, req, Duration::from_secs(3)).await;
    let out = reply.text;
    assert!(
        reply.closed,
        "connection must be closed after the response: {out}"
    );
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {out}"
    );
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|s| s.uri.contains("smuggled")),
        "smuggled request reached the upstream"
    );
    for s in &seen {
        assert!(!(s.header("content-length").is_some() && s.header("transfer-encoding").is_some()));
        assert!(s.body.is_empty());
    }
    gw.stop().await;
}

// Behaviour: a head trickled slower than header_read_timeout is cut off.
#[tokio::test]
async fn trickled_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(
        &up,
        json!({"limits": {"header_read_timeout": "500ms"}}),
        json!({}),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let t = Instant::now();
    s.write_all(b"GET /api/x HTTP/1.1\r\n").await.unwrap();
    // One header line every 100 ms, for up to 15 s: nothing but header_read_timeout
    // (request_timeout is 60 s) ends this connection early.
    let mut closed = false;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X-A: b\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            if n == 0 || buf.starts_with(b"HTTP/1.1 408") {
                closed = true;
                break;
            }
        }
    }
    let took = t.elapsed();
    assert!(closed, "connection still open after {took:?}");
    assert!(took >= Duration::from_millis(500), "cut off after {took:?}");
    assert!(took < Duration::from_secs(10), "cut off after {took:?}");
    assert_eq!(up.count(), 0);
    gw.stop().await;
}

// Behaviour: header_read_timeout also bounds the wait for the next head on a kept-alive
// connection: answered once, then silent, the connection is closed after the timeout
// (not before it, and not never), and a second request on a fresh connection is served.
#[tokio::test]
async fn silent_keep_alive_connection_is_closed_after_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(
        &up,
        json!({"limits": {"header_read_timeout": "500ms"}}),
        json!({}),
    ))
    .await;
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(PATIENCE, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(n) => {
                        first.get_or_insert_with(Instant::now);
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            }
        })
        .await
        .expect("the silent kept-alive connection was never closed");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(!text.contains("connection: close"), "{text}");
        let idle = closed - first.expect("answered");
        assert!(idle >= Duration::from_millis(400), "closed after {idle:?}");
    }
    assert_eq!(up.count(), 2);
    gw.stop().await;
}

// Behaviour: paths are normalised before routing and forwarded normalised; tricks -> 400.
#[tokio::test]
async fn path_normalisation() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let out = raw(
        gw.addr,
        b"GET /other/../api//a/./b%7e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.last().uri, "/api/a/b~");
    for p in ["/api/a%2fb", "/api/%2e%2e/x", "/api/a%00", "/api/..;/x"] {
        let out = raw(
            gw.addr,
            format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{p}: {out}");
        assert!(out.contains("invalid_request"));
    }
    gw.stop().await;
}

// Behaviour: plain listeners speak h2c with prior knowledge.
#[tokio::test]
async fn h2c_prior_knowledge() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    tollgate::tls::install_default_provider();
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c.get(gw.url("/api/h2")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri, "/api/h2");
    gw.stop().await;
}

fn tls_client(alpn_h2: bool, identity: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.pem")).unwrap()).unwrap();
    tollgate::tls::install_default_provider();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .use_rustls_tls();
    if !alpn_h2 {
        b = b.http1_only();
    }
    if identity {
        let mut pem = std::fs::read(fixture("client.pem")).unwrap();
        pem.extend(std::fs::read(fixture("client-key.pem")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn tls_yaml(up: &Upstream, mtls: bool) -> String {
    let f = |n: &str| fixture(n).display().to_string();
    let mut tls = json!({"cert": f("server.pem"), "key": f("server-key.pem")});
    if mtls {
        tls["client_ca"] = json!(f("ca.pem"));
    }
    basic_yaml(up, json!({ "tls": tls }), json!({}))
}

// Behaviour: TLS listener negotiates h2 and http/1.1 by ALPN; X-Forwarded-Proto is https.
#[tokio::test]
async fn tls_listener_with_alpn() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&tls_yaml(&up, false)).await;
    let url = format!("https://localhost:{}/api/tls", gw.addr.port());
    let r = tls_client(true, false).get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
    let r = tls_client(false, false).get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    gw.stop().await;
}

// Behaviour: with client_ca, a client without a certificate is refused; with one, served.
#[tokio::test]
async fn mtls_requires_client_certificate() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&tls_yaml(&up, true)).await;
    let url = format!("https://localhost:{}/api/tls", gw.addr.port());
    assert!(tls_client(true, false).get(&url).send().await.is_err());
    let r = tls_client(true, true).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

// Behaviour: https upstreams are verified against `ca`.
#[tokio::test]
async fn https_upstream_with_custom_ca() {
    let up = spawn_upstream().await;
    // A TLS tollgate in front of the echo upstream plays the https backend.
    let backend = spawn_gateway(&tls_yaml(&up, false)).await;
    let backend_url = format!("https://localhost:{}", backend.addr.port());
    let yaml = GatewayConfig::public_only()
        .upstream_with(
            "secure",
            &backend_url,
            json!({"ca": fixture("ca.pem").display().to_string()}),
        )
        .upstream("untrusted", &backend_url)
        .open_route("a", "/api", "secure")
        .open_route("b", "/bad", "untrusted")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let r = client()
        .get(gw.url("/api/through-tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri, "/api/through-tls");
    let r = client().get(gw.url("/bad/x")).send().await.unwrap();
    assert_eq!(r.status(), 502, "unknown CA must not be trusted");
    gw.stop().await;
    backend.stop().await;
}

// Behaviour: admin listener answers /healthz and /readyz; the public one does not.
#[tokio::test]
async fn health_and_readiness() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
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
    assert_eq!(
        client()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let m = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for fam in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_auth_denied_total",
        "tollgate_upstream_token_fetches_total",
        "tollgate_config_reloads_total",
    ] {
        assert!(
            m.contains(&format!("# TYPE {fam} ")),
            "{fam} missing from /metrics"
        );
    }
    gw.stop().await;
}

// max_connections (a quick 503 and close over the limit): tests/it/overload.rs.

// Behaviour: a path in the upstream URL is prepended to the (normalised) request path.
#[tokio::test]
async fn upstream_base_path() {
    let up = spawn_upstream().await;
    let yaml = GatewayConfig::public_only()
        .upstream("b", &format!("{}/base/", up.url()))
        .open_route("r", "/", "b")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let r = client().get(gw.url("/x/y?q=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri, "/base/x/y?q=1");
    gw.stop().await;
}

// Behaviour: the upstream connection pool reuses one connection for back-to-back
// requests whatever the response framing (sized, chunked, empty 204/304, HEAD), after
// a request body and across a reload; a response body the client abandons half-way does not put a
// half-read connection back (the next request still gets a whole, correct answer).
#[tokio::test]
async fn upstream_connections_are_reused_across_framings() {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
    use hyper::body::Frame;

    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let _ = req.into_body().collect().await;
                        type B = UnsyncBoxBody<Bytes, Infallible>;
                        let resp: hyper::Response<B> = match path.as_str() {
                            "/api/chunked" => {
                                let chunks = (0..3).map(|i| {
                                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!(
                                        "part{i};"
                                    ))))
                                });
                                hyper::Response::new(
                                    StreamBody::new(futures_util::stream::iter(chunks))
                                        .boxed_unsync(),
                                )
                            }
                            "/api/empty" => hyper::Response::builder()
                                .status(204)
                                .body(Full::new(Bytes::new()).boxed_unsync())
                                .unwrap(),
                            "/api/not-modified" => hyper::Response::builder()
                                .status(304)
                                .body(Full::new(Bytes::new()).boxed_unsync())
                                .unwrap(),
                            // 1 GiB, made as it is sent: far more than the socket
                            // buffers between here and the client can hold, so a
                            // client that stops reading leaves it half-read.
                            "/api/big" => {
                                let chunk = Bytes::from(vec![b'b'; 64 * 1024]);
                                let chunks = std::iter::repeat_n(chunk, 16 * 1024)
                                    .map(|c| Ok::<_, Infallible>(Frame::data(c)));
                                hyper::Response::new(
                                    StreamBody::new(futures_util::stream::iter(chunks))
                                        .boxed_unsync(),
                                )
                            }
                            _ => hyper::Response::new(
                                Full::new(Bytes::from_static(b"sized")).boxed_unsync(),
                            ),
                        };
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let up = Upstream {
        addr: Some(addr),
        ..Default::default()
    };
    let gw = spawn_gateway(&basic_yaml(&up, json!({}), json!({}))).await;
    let c = client();
    for round in 0..5 {
        let r = c.get(gw.url("/api/sized")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "sized", "round {round}");
        let r = c.get(gw.url("/api/chunked")).send().await.unwrap();
        assert_eq!(
            r.text().await.unwrap(),
            "part0;part1;part2;",
            "round {round}"
        );
        let r = c.get(gw.url("/api/empty")).send().await.unwrap();
        assert_eq!(r.status(), 204, "round {round}");
        let r = c.get(gw.url("/api/not-modified")).send().await.unwrap();
        assert_eq!(r.status(), 304, "round {round}");
        let r = c.head(gw.url("/api/sized")).send().await.unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        let r = c
            .post(gw.url("/api/sized"))
            .body(vec![b'p'; 100_000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "sized", "round {round}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "30 back-to-back requests should share one upstream connection"
    );
    // A reload keeps the warm connection: the new config's upstream uses the same pool.
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = c.get(gw.url("/api/sized")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "sized");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "reload dropped the pool"
    );

    // Abandon a (1 GiB) body after its first bytes: that connection cannot be reused.
    let mut r = c.get(gw.url("/api/big")).send().await.unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    for _ in 0..3 {
        let r = c.get(gw.url("/api/sized")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "sized");
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        n == 2,
        "the abandoned connection must be replaced, once: {n} connections"
    );
    gw.stop().await;
}
