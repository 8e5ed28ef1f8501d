//! Hostile input. Every case gets a clear 4xx or a closed connection —
//! never a panic, never a request the upstream could read differently from tollgate.

use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// Small header and body limits; an open route /api and a body-credentials route
/// /cpi/token.
fn yaml(up: &Upstream) -> String {
    GatewayConfig::public_only()
        .merge(
            "server",
            json!({"limits": {"max_header_bytes": 4096, "max_body_bytes": 65536}}),
        )
        .upstream("bi", &up.url())
        .open_route("api", "/api", "bi")
        .route(json!({
            "name": "cpi", "path_prefix": "/cpi/token", "upstream": "bi", "auth": "none",
            "body_credentials": "basic",
        }))
        .yaml()
}

/// The status code of the first response, or None when the connection closed silently.
fn status_of(out: &str) -> Option<u16> {
    out.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

fn refused(out: &str) -> bool {
    match status_of(out) {
        None => true,
        Some(s) => (400..500).contains(&s),
    }
}

// Behaviour: request smuggling variants are refused or neutralised; nothing hidden in a
// body is ever read as a second request.
#[tokio::test]
async fn smuggling_variants() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up)).await;
    let cases: &[(&str, &[u8])] = &[
        ("TE.CL", b"POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        ("TE.TE obfuscated (xchunked)", b"POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("TE.TE double", b"POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("TE with space before colon", b"POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("duplicate Content-Length", b"POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("Content-Length list", b"POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 40\r\n\r\nabcd"),
        ("negative Content-Length", b"POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
        ("obs-fold", b"GET /api/a HTTP/1.1\r\nHost: x\r\nX-A: b\r\n  folded: yes\r\n\r\n"),
        ("invalid chunk size", b"POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("chunk size overflow", b"POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"),
        ("HTTP/1.0 with TE", b"POST /api/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("two Host headers", b"GET /api/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("NUL in header value", b"GET /api/a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
        ("space in header name", b"GET /api/a HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n"),
        ("control char in path", b"GET /api/a\x01b HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("invalid UTF-8 in path", b"GET /api/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("encoded NUL in path", b"GET /api/a%00b HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("authority-form", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"),
        ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
    ];
    for (name, req) in cases {
        let out = raw(gw.addr, req, Duration::from_secs(3)).await;
        assert!(
            refused(&out)
                || (status_of(&out) == Some(200) && out.matches("HTTP/1.1 ").count() == 1),
            "{name}: {out}"
        );
    }
    let seen = up.seen.lock().unwrap().clone();
    for s in &seen {
        assert!(
            !s.uri.contains("smuggled"),
            "a smuggled request reached the upstream: {s:?}"
        );
        assert!(!(s.header("content-length").is_some() && s.header("transfer-encoding").is_some()));
    }
    // Still healthy afterwards.
    assert_eq!(
        client()
            .get(gw.url("/api/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.stop().await;
}

// Behaviour: bare LF line endings parse the same for tollgate and what it forwards
// (tollgate re-serialises the head with CRLF, so the upstream cannot read it differently).
#[tokio::test]
async fn bare_lf_is_reframed() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up)).await;
    let out = raw(
        gw.addr,
        b"GET /api/lf HTTP/1.1\nHost: x\nX-A: 1\nConnection: close\n\n",
        Duration::from_secs(3),
    )
    .await;
    match status_of(&out) {
        Some(200) => assert_eq!(up.last().uri, "/api/lf"),
        Some(s) => assert!((400..500).contains(&s), "{out}"),
        None => {}
    }
    assert!(!up
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.headers.keys().any(|k| k.contains('\n'))));
    gw.stop().await;
}

// Behaviour: absolute-form targets route by their path; the upstream gets origin-form
// with its own Host; a Host/authority mismatch cannot pick another route.
#[tokio::test]
async fn absolute_form_and_host_mismatch() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up)).await;
    let out = raw(
        gw.addr,
        b"GET http://evil.example/api/abs?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(refused(&out) || status_of(&out) == Some(200), "{out}");
    if status_of(&out) == Some(200) {
        let s = up.last();
        assert_eq!(s.uri, "/api/abs?q=1");
        assert_eq!(
            s.header("host"),
            Some(up.addr.unwrap().to_string().as_str())
        );
    }
    let out = raw(
        gw.addr,
        b"GET http://evil.example/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&out), Some(404), "{out}");
    gw.stop().await;
}

/// The head and the JSON body of the first response in `out`.
fn json_reply(out: &str) -> (String, serde_json::Value) {
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out, ""));
    let v = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (head.to_ascii_lowercase(), v)
}

// Behaviour: requests the HTTP layer cannot parse (garbage, two Content-Lengths, a
// header line without a colon, a head far over every limit) still get SPEC's JSON
// error with a request id, and the connection is closed.
#[tokio::test]
async fn unparsable_requests_get_json_errors() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up)).await;
    let cases: [(&str, Vec<u8>, u16, &str); 3] = [
        ("garbage", b"GARBAGE\r\n\r\n".to_vec(), 400, "invalid_request"),
        (
            "two Content-Lengths",
            b"POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "header without a colon",
            b"GET /api/a HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let reply = raw_exchange(gw.addr, &bytes, Duration::from_secs(3)).await;
        let out = reply.text;
        assert_eq!(status_of(&out), Some(status), "{what}: {out}");
        let (head, body) = json_reply(&out);
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{what}: {out}"
        );
        assert_eq!(body["error"], code, "{what}: {out}");
        let rid = body["request_id"].as_str().unwrap();
        assert!(
            head.contains(&format!("\r\nx-request-id: {rid}")),
            "{what}: {out}"
        );
        assert!(reply.closed, "{what}: the connection is closed after it");
    }
    // A head far over every limit: hyper stops reading it and closes, so the client may
    // see a reset before the answer; an answer that does arrive is SPEC's 431.
    let huge = "x".repeat(300_000);
    let out = raw(
        gw.addr,
        format!("GET /api/a HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    if status_of(&out).is_some() {
        assert_eq!(status_of(&out), Some(431), "{out}");
        assert_eq!(
            json_reply(&out).1["error"],
            "request_header_too_large",
            "{out}"
        );
    }
    assert_eq!(up.count(), 0);
    gw.stop().await;
}

// Behaviour: an answer to a request the HTTP layer could not parse is counted like any
// other, under route "none" in tollgate_requests_total.
#[tokio::test]
async fn unparsable_requests_are_counted() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(
        &GatewayConfig::new()
            .upstream("bi", &up.url())
            .open_route("api", "/api", "bi")
            .yaml(),
    )
    .await;
    for _ in 0..2 {
        let out = raw(gw.addr, b"GARBAGE\r\n\r\n", Duration::from_secs(1)).await;
        assert_eq!(status_of(&out), Some(400), "{out}");
    }
    metric_eventually(
        &gw.admin_url(""),
        "tollgate_requests_total{route=\"none\",status=\"400\"}",
        |v| v == 2.0,
    )
    .await;
    gw.stop().await;
}

// Behaviour: a response body that reads exactly like hyper's bare error answer (content
// an upstream serves) reaches the client byte for byte, and the keep-alive connection
// stays in step: the next response on it is the next request's own.
#[tokio::test]
async fn a_body_that_looks_like_an_error_answer_is_passed_on_untouched() {
    const LOOK_ALIKE: &str = "HTTP/1.1 400 X\r\ncontent-length: 0\r\n\r\n";
    let addr = serve(|req: hyper::Request<hyper::body::Incoming>| async move {
        let body = if req.uri().path().ends_with("/tricky") {
            LOOK_ALIKE
        } else {
            "plain"
        };
        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)))
    })
    .await;
    let yaml = GatewayConfig::public_only()
        .upstream("bi", &format!("http://{addr}"))
        .open_route("api", "/api", "bi")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let c = client();
    for _ in 0..3 {
        let r = c.get(gw.url("/api/tricky")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), LOOK_ALIKE);
        let r = c.get(gw.url("/api/next")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "plain");
    }
    // The same over one raw connection, two requests in a row.
    let reply = raw_exchange(
        gw.addr,
        b"GET /api/tricky HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert!(reply.text.ends_with(LOOK_ALIKE), "{}", reply.text);
    assert!(reply.text.starts_with("HTTP/1.1 200 "), "{}", reply.text);
    gw.stop().await;
}

// Behaviour: oversized and many headers, long tokens and long paths get 4xx, not a crash.
#[tokio::test]
async fn oversized_inputs() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up)).await;
    let many: String = (0..600).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = raw(
        gw.addr,
        format!("GET /api/a HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(refused(&out), "{out}");
    let long_path = format!("/api/{}", "a".repeat(10_000));
    let out = raw(
        gw.addr,
        format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(refused(&out), "{}", &out[..out.len().min(200)]);
    let r = client()
        .get(gw.url("/api/a"))
        .bearer_auth("t".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let huge = "x".repeat(100_000);
    let out = raw(
        gw.addr,
        format!("GET /api/a HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(refused(&out));
    assert_eq!(up.count(), 0);
    assert_eq!(
        client()
            .get(gw.url("/api/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.stop().await;
}

// Behaviour: deeply nested or malformed JSON bodies on a body_credentials route are
// bounded and never crash the gateway.
#[tokio::test]
async fn nested_json_body_credentials() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up)).await;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let r = client()
        .post(gw.url("/cpi/token"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status().is_client_error(),
        "{}",
        r.status()
    );
    let nested = format!(
        "{{\"client_id\":\"a\",\"client_secret\":\"b\",\"x\":{}1{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let r = client()
        .post(gw.url("/cpi/token"))
        .header("content-type", "application/json")
        .body(nested)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status().is_client_error(),
        "{}",
        r.status()
    );
    let r = client()
        .post(gw.url("/cpi/token"))
        .header("content-type", "application/json")
        .body("{\"client_id\":")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success() || r.status().is_client_error());
    let r = client()
        .post(gw.url("/cpi/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        client()
            .get(gw.url("/api/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.stop().await;
}

// Behaviour: HTTP/2 abuse — a huge header list and a burst of reset streams — leaves the
// gateway serving.
#[tokio::test]
async fn http2_abuse() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&up)).await;
    tollgate::tls::install_default_provider();
    let h2_client = || {
        reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap()
    };
    let c = h2_client();
    let mut req = c.get(gw.url("/api/h2"));
    for i in 0..300 {
        req = req.header(format!("x-h{i}"), "v".repeat(50));
    }
    if let Ok(r) = req.send().await {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    // Rapid reset: start many requests and drop them at once.
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let c = c.clone();
        let url = gw.url("/api/slow/2000");
        tasks.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(20), c.get(url).send()).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Still serving, on a new connection: the abusive one may rightly be gone (hyper's
    // rapid-reset guard ends it with GOAWAY ENHANCE_YOUR_CALM once enough of the resets
    // have reached it, which on a busy machine they sometimes do).
    let r = h2_client().get(gw.url("/api/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}
