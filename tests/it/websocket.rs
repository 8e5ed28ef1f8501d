//! WebSocket through the gateway: a real WebSocket echo upstream and real WebSocket
//! clients (tokio-tungstenite), over HTTP/1.1 upgrades and HTTP/2 extended CONNECT
//! (RFC 8441); the route's token, scopes and permissions apply to the handshake; idle
//! and total timeouts; cross-site handshakes refused; hostile upgrade shapes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// A WebSocket echo server that records every handshake's headers and counts the
/// connections that ended.
#[derive(Clone, Default)]
struct Echo {
    addr: Option<SocketAddr>,
    handshakes: Arc<Mutex<Vec<HashMap<String, String>>>>,
    closed: Arc<AtomicUsize>,
}

impl Echo {
    fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }
    fn handshakes(&self) -> usize {
        self.handshakes.lock().unwrap().len()
    }
}

async fn spawn_echo() -> Echo {
    let mut echo = Echo::default();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    echo.addr = Some(l.local_addr().unwrap());
    let e = echo.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let e = e.clone();
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let record = |req: &WsRequest, resp: WsResponse| {
                    let mut h: HashMap<String, String> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    h.insert(":path".into(), req.uri().to_string());
                    e.handshakes.lock().unwrap().push(h);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, record).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
                e.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    echo
}

/// Routes /live (WebSocket with `websocket`, per-endpoint permissions) and /dash
/// (WebSocket, CORS) to upstream `live` at `live_url`, and /plain (no WebSocket) to
/// `plain_url`; every route needs `analytics.read`.
fn yaml(idp: &Idp, live_url: &str, plain_url: &str, websocket: Value) -> String {
    let scoped = json!({"scopes": ["analytics.read"]});
    GatewayConfig::new()
        .issuer(idp, "corp")
        .upstream("live", live_url)
        .upstream("plain", plain_url)
        .route(json!({
            "name": "live", "path_prefix": "/live", "upstream": "live", "auth": scoped,
            "permissions": [
                {"path": "/live/feed", "methods": ["GET"]},
                {"path": "/live/admin", "methods": ["GET"], "scopes": ["live.admin"]},
            ],
            "websocket": websocket,
        }))
        .route(json!({
            "name": "dashboard", "path_prefix": "/dash", "upstream": "live", "auth": scoped,
            "cors": {"allow_origins": ["https://dashboard.example.com"]},
            "websocket": {},
        }))
        .route(json!({
            "name": "plain", "path_prefix": "/plain", "upstream": "plain", "auth": scoped,
        }))
        .yaml()
}

struct Setup {
    idp: Idp,
    echo: Echo,
    plain: Upstream,
    gw: Gw,
}

async fn setup(websocket: Value) -> Setup {
    let idp = spawn_idp().await;
    let echo = spawn_echo().await;
    let plain = spawn_upstream().await;
    let gw = spawn_gateway(&yaml(&idp, &echo.url(), &plain.url(), websocket)).await;
    Setup {
        idp,
        echo,
        plain,
        gw,
    }
}

fn ws_request(
    gw: &Gw,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{}{path}", gw.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    for (k, v) in extra {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req
}

/// The handshake's refusal: status and the SPEC JSON body.
async fn refused(
    gw: &Gw,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    match tokio_tungstenite::connect_async(ws_request(gw, path, token, extra)).await {
        Ok(_) => panic!("the handshake to {path} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            (resp.status().as_u16(), json)
        }
        Err(e) => panic!("handshake to {path} failed without an HTTP answer: {e}"),
    }
}

async fn echo_once<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("no echo in time")
        .expect("stream ended")
        .expect("websocket error");
    assert_eq!(back, Message::text(text));
}

// Behaviour: with a valid token and the permission for GET /live/feed, the handshake
// is forwarded, the client gets 101, messages flow both ways through the tunnel, and
// the upstream's handshake carried the verified identity and the request id.
#[tokio::test]
async fn websocket_through_the_gateway_after_the_policy_said_yes() {
    let s = setup(json!({})).await;
    let token = s.idp.token(serde_json::json!({}));
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(ws_request(&s.gw, "/live/feed", Some(&token), &[]))
            .await
            .expect("handshake accepted");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    for i in 0..5 {
        echo_once(&mut ws, &format!("tick {i}")).await;
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let back = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::binary(vec![0u8, 1, 2, 255]));
    let h = s.echo.handshakes.lock().unwrap()[0].clone();
    assert_eq!(h[":path"], "/live/feed");
    assert_eq!(h.get("x-auth-subject").map(String::as_str), Some("user-1"));
    // SPEC: without upstream `auth:` the inbound Authorization is passed on.
    assert_eq!(h.get("authorization"), Some(&format!("Bearer {token}")));
    assert!(h.contains_key("x-request-id"));
    ws.close(None).await.unwrap();
    // The close handshake completes through the tunnel: the client reads to the end.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, ws.next()).await {}
    drop(ws);
    eventually(
        "the upstream sees the close",
        PATIENCE,
        async || s.echo.closed.load(Ordering::SeqCst),
        |n| *n == 1,
    )
    .await;
    let open = &s.gw.gateway().tunnels;
    eventually(
        "the tunnel is counted closed",
        PATIENCE,
        async || open.open.load(Ordering::SeqCst),
        |n| *n == 0,
    )
    .await;
    assert_eq!(open.opened.load(Ordering::SeqCst), 1);
    let m = admin_metrics(&s.gw.admin_url("")).await;
    assert_eq!(
        series_value(&m, "tollgate_websocket_upgrades_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series_value(&m, "tollgate_websocket_tunnels_open"),
        Some(0.0)
    );
}

// Behaviour: the route's gates decide the handshake like any request: no token 401,
// missing scope 403 insufficient_scope, a path without a permission 403
// access_denied; the upstream never sees a handshake that was refused.
#[tokio::test]
async fn a_refused_handshake_never_reaches_the_upstream() {
    let s = setup(json!({})).await;
    let (status, body) = refused(&s.gw, "/live/feed", None, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_token");
    let weak = s.idp.token(serde_json::json!({"scope": "other"}));
    let (status, body) = refused(&s.gw, "/live/feed", Some(&weak), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    let token = s.idp.token(serde_json::json!({}));
    let (status, body) = refused(&s.gw, "/live/admin", Some(&token), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    let (status, body) = refused(&s.gw, "/live/elsewhere", Some(&token), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied"))
    );
    assert_eq!(s.echo.handshakes(), 0);
}

// Behaviour: a browser page from another site cannot open a WebSocket with the user's
// credentials: an Origin the route's CORS does not allow, or (without cors) one that is
// not the host addressed, is refused 403 origin_not_allowed; an allowed origin passes.
#[tokio::test]
async fn cross_site_handshakes_are_refused() {
    let s = setup(json!({})).await;
    let token = s.idp.token(serde_json::json!({}));
    let (status, body) = refused(
        &s.gw,
        "/live/feed",
        Some(&token),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("origin"),
        "{body}"
    );
    let own = format!("http://{}", s.gw.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(
        &s.gw,
        "/live/feed",
        Some(&token),
        &[("origin", &own)],
    ))
    .await
    .expect("same-host origin accepted");
    echo_once(&mut ws, "same host").await;
    let (status, _) = refused(
        &s.gw,
        "/dash/x",
        Some(&token),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(
        &s.gw,
        "/dash/x",
        Some(&token),
        &[("origin", "https://dashboard.example.com")],
    ))
    .await
    .expect("CORS-allowed origin accepted");
    echo_once(&mut ws, "dashboard").await;
    assert_eq!(s.echo.handshakes(), 2);
    let metrics = admin_metrics(&s.gw.admin_url("")).await;
    assert!(
        metrics.contains(r#"reason="origin_not_allowed""#),
        "denials counted by reason"
    );
}

// Behaviour: a tunnel with no data either way is closed after idle_timeout; one with
// steady traffic is closed at max_duration. (Conditions polled with a deadline.)
#[tokio::test]
async fn idle_and_total_timeouts_end_tunnels() {
    let s = setup(json!({"idle_timeout": "1s", "max_duration": "1h"})).await;
    let token = s.idp.token(serde_json::json!({}));
    let (mut ws, _) =
        tokio_tungstenite::connect_async(ws_request(&s.gw, "/live/feed", Some(&token), &[]))
            .await
            .unwrap();
    echo_once(&mut ws, "hello").await;
    // Nothing more is sent: the gateway ends the tunnel, the client sees the end.
    let end = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("idle tunnel not closed");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    eventually(
        "the upstream side closed",
        PATIENCE,
        async || s.echo.closed.load(Ordering::SeqCst),
        |n| *n == 1,
    )
    .await;
    s.gw.stop().await;

    let s = setup(json!({"idle_timeout": "2s", "max_duration": "2s"})).await;
    let token = s.idp.token(serde_json::json!({}));
    let (mut ws, _) =
        tokio_tungstenite::connect_async(ws_request(&s.gw, "/live/feed", Some(&token), &[]))
            .await
            .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "busy tunnel not closed at max_duration"
        );
        i += 1;
        if ws.send(Message::text(format!("m{i}"))).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => {}
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(i > 1, "the tunnel carried traffic before it was ended");
}

// Behaviour: HTTP/2 extended CONNECT (RFC 8441) reaches the same HTTP/1.1 WebSocket
// upstream: the client gets 200 and a working stream; on a route without `websocket`
// it is refused 400 and nothing reaches an upstream.
#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let s = setup(json!({})).await;
    let token = s.idp.token(serde_json::json!({}));
    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<bytes::Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let connect = |path: &str| {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}{path}", s.gw.addr))
            .header("authorization", format!("Bearer {token}"))
            .header("sec-websocket-version", "13")
            .body(Empty::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    let mut resp = send.send_request(connect("/live/feed")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    echo_once(&mut ws, "over h2").await;
    let h = s.echo.handshakes.lock().unwrap()[0].clone();
    assert_eq!(h.get("upgrade").map(String::as_str), Some("websocket"));
    assert!(h.contains_key("sec-websocket-key"));

    let resp = send.send_request(connect("/plain/x")).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(s.plain.count(), 0);
    // A plain CONNECT (tollgate is no forward proxy) is not a WebSocket either.
    let plain_connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("{}", s.echo.addr.unwrap()))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();
    // (An error is a refusal at the HTTP/2 layer: fine too.)
    if let Ok(r) = send.send_request(plain_connect).await {
        assert!(
            !r.status().is_success(),
            "plain CONNECT answered {}",
            r.status()
        );
    }
    assert_eq!(s.echo.handshakes(), 1);
    assert_eq!(s.plain.count(), 0);
}

// Behaviour: hostile upgrade shapes. An upgrade with a body or by POST is refused 400
// before anything is sent; `Connection: upgrade` without `Upgrade` and an upgrade on a
// route without `websocket` are forwarded as plain requests with no `Upgrade` header.
#[tokio::test]
async fn hostile_upgrades() {
    let s = setup(json!({})).await;
    let token = s.idp.token(serde_json::json!({}));
    let head = |method: &str, path: &str, extra: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    };
    let quiet = Duration::from_millis(300);
    let with_body = head(
        "GET",
        "/live/feed",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n",
    ) + "hello";
    let r = raw(s.gw.addr, with_body.as_bytes(), quiet).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // /dash has no permissions: any method passes the gate, the handshake check refuses.
    let post = head(
        "POST",
        "/dash/x",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n",
    );
    let r = raw(s.gw.addr, post.as_bytes(), quiet).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("invalid_request"), "{r}");
    assert_eq!(s.echo.handshakes(), 0);

    let no_upgrade = head("GET", "/plain/x", "Connection: upgrade\r\n");
    let r = raw(s.gw.addr, no_upgrade.as_bytes(), quiet).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let not_ws_route = head(
        "GET",
        "/plain/y",
        "Connection: Upgrade\r\nUpgrade: websocket\r\n",
    );
    let r = raw(s.gw.addr, not_ws_route.as_bytes(), quiet).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(s.plain.count(), 2);
    for seen in s.plain.seen.lock().unwrap().iter() {
        assert!(seen.header("upgrade").is_none(), "{:?}", seen.headers);
        assert!(
            seen.header("connection")
                .is_none_or(|c| !c.to_ascii_lowercase().contains("upgrade")),
            "{:?}",
            seen.headers
        );
    }
}

// Behaviour: an upstream that refuses the upgrade (answers 403 instead of 101) has its
// answer passed to the client, and no tunnel is counted.
#[tokio::test]
async fn an_upstream_refusing_the_upgrade_is_answered_as_it_is() {
    let idp = spawn_idp().await;
    let plain = spawn_upstream().await;
    // The "live" upstream is the plain HTTP upstream here: it never switches protocols.
    let gw = spawn_gateway(&yaml(&idp, &plain.url(), &plain.url(), json!({}))).await;
    let token = idp.token(serde_json::json!({}));
    let err = tokio_tungstenite::connect_async(ws_request(&gw, "/live/feed", Some(&token), &[]))
        .await
        .expect_err("no switch");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 200),
        e => panic!("{e}"),
    }
    assert_eq!(plain.count(), 1);
    let seen = plain.last();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(gw.gateway().tunnels.opened.load(Ordering::SeqCst), 0);
}

// Behaviour: a route whose upstream has several endpoints (`urls`) spreads WebSocket
// handshakes over them (round-robin), each naming its own endpoint as `Host`, and the
// tunnels carry messages.
#[tokio::test]
async fn websocket_over_several_endpoints() {
    let (a, b) = (spawn_echo().await, spawn_echo().await);
    let yaml = GatewayConfig::public_only()
        .upstream_urls("live", &[&a.url(), &b.url()], json!({}))
        .route(json!({
            "name": "live", "path_prefix": "/live", "upstream": "live", "auth": "none",
            "websocket": {},
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let mut open = Vec::new();
    for i in 0..4 {
        let (mut ws, resp) =
            tokio_tungstenite::connect_async(ws_request(&gw, "/live/feed", None, &[]))
                .await
                .unwrap();
        assert_eq!(resp.status(), 101);
        echo_once(&mut ws, &format!("hello {i}")).await;
        open.push(ws);
    }
    assert_eq!((a.handshakes(), b.handshakes()), (2, 2));
    for echo in [&a, &b] {
        let host = echo.url().trim_start_matches("http://").to_owned();
        for h in echo.handshakes.lock().unwrap().iter() {
            assert_eq!(h.get("host"), Some(&host), "{h:?}");
        }
    }
    drop(open);
    gw.stop().await;
}

/// The explain steps of a `POST /admin/explain` answer, one per line.
fn steps(v: &serde_json::Value) -> String {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

// Behaviour: explain describes a WebSocket handshake (`websocket: true` on POST
// /admin/explain, `--websocket` on `tollgate explain`, `websocket: true` in a `tollgate
// test` case): on a `websocket:` route the handshake would be forwarded; on a route
// without it the trace says the upgrade is not accepted (forwarded as a plain GET); a
// cross-site origin and a non-GET handshake are refused with the WebSocket step's
// reason. Nothing reaches an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_describes_websocket_upgrades() {
    let s = setup(json!({"idle_timeout": "30s", "max_duration": "1h"})).await;
    let token = s.idp.token(serde_json::json!({}));
    let ask = async |body: serde_json::Value| -> serde_json::Value {
        let r = client()
            .post(s.gw.admin_url("/admin/explain"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    };
    let v = ask(serde_json::json!({"token": token, "path": "/live/feed", "websocket": true})).await;
    assert_eq!(v["allowed"], true, "{v:#}");
    let text = steps(&v);
    assert!(text.contains("(WebSocket upgrade)"), "{text}");
    assert!(
        text.contains("route \"live\" accepts WebSocket upgrades")
            && text.contains("idle_timeout 30s, max_duration 3600s"),
        "{text}"
    );
    // The same request without `websocket` says nothing about upgrades.
    let v = ask(serde_json::json!({"token": token, "path": "/live/feed"})).await;
    assert!(!steps(&v).contains("websocket:"), "{}", steps(&v));
    let v = ask(serde_json::json!({"token": token, "path": "/plain/x", "websocket": true})).await;
    assert!(
        steps(&v).contains("route \"plain\" does not accept WebSocket upgrades"),
        "{}",
        steps(&v)
    );
    let v = ask(
        serde_json::json!({"token": token, "path": "/live/feed", "websocket": true,
        "origin": "https://evil.example"}),
    )
    .await;
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("origin_not_allowed")),
        "{v:#}"
    );
    assert!(
        steps(&v).contains("websocket: handshake refused"),
        "{}",
        steps(&v)
    );
    let v = ask(
        serde_json::json!({"token": token, "path": "/dash/x", "websocket": true,
        "method": "POST"}),
    )
    .await;
    assert_eq!(v["status"], 400, "{v:#}");
    assert!(steps(&v).contains("is a GET request"), "{}", steps(&v));
    // A CONNECT is never tunnelled: explain says so as the server refuses it.
    let v = ask(serde_json::json!({"token": token, "path": "/dash/x", "method": "CONNECT"})).await;
    assert_eq!(v["status"], 400, "{v:#}");
    assert!(
        steps(&v).contains("CONNECT is only accepted"),
        "{}",
        steps(&v)
    );
    // The gates still come first: no token, no handshake.
    let v = ask(serde_json::json!({"path": "/live/feed", "websocket": true})).await;
    assert_eq!(v["reason"], "token_missing", "{v:#}");

    // The CLI.
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("explain")
            .arg("--config")
            .arg(s.gw.config_path())
            .args(args);
        output_within("tollgate explain", &mut cmd, PATIENCE)
    };
    let out = cli(&["--token", &token, "--websocket", "/live/feed"]);
    assert!(out.status.success(), "{}", out.stdout);
    assert!(
        out.stdout.contains("accepts WebSocket upgrades"),
        "{}",
        out.stdout
    );
    let out = cli(&["--token", &token, "--websocket", "/plain/x"]);
    assert!(
        out.stdout.contains("does not accept WebSocket upgrades"),
        "{}",
        out.stdout
    );
    let out = cli(&[
        "--token",
        &token,
        "--websocket",
        "--origin",
        "https://evil.example",
        "/live/feed",
    ]);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.stdout.contains("origin_not_allowed"), "{}", out.stdout);

    // `tollgate test` cases.
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        format!(
            "cases:\n  - name: live feed opens\n    token: \"{token}\"\n    path: /live/feed\n    websocket: true\n    expect: {{status: 200}}\n  - name: foreign page cannot open it\n    token: \"{token}\"\n    path: /live/feed\n    origin: https://evil.example\n    websocket: true\n    expect: {{status: 403, reason: origin_not_allowed}}\n"
        ),
    )
    .unwrap();
    let run = |cases: &std::path::Path| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("test")
            .arg("--config")
            .arg(s.gw.config_path())
            .arg(cases);
        output_within("tollgate test", &mut cmd, PATIENCE)
    };
    let out = run(&cases);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // A case that expects the wrong answer fails: the field is not ignored.
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        format!(
            "cases:\n  - name: expects the origin to pass\n    token: \"{token}\"\n    path: /live/feed\n    origin: https://evil.example\n    websocket: true\n    expect: {{status: 200}}\n"
        ),
    )
    .unwrap();
    let out = run(&wrong);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.stdout.contains("origin_not_allowed"), "{}", out.stdout);
    assert_eq!(s.echo.handshakes(), 0);
    assert_eq!(s.plain.count(), 0);
}

// Behaviour: hostile HTTP/2 extended CONNECTs: an unknown `:protocol` (not websocket),
// on a WebSocket route and on a route with no permissions, is refused and never reaches
// an upstream; so is a WebSocket CONNECT without a token. A chunked body on an HTTP/1.1
// handshake is refused 400 like a declared length.
#[tokio::test]
async fn hostile_extended_connects_never_reach_an_upstream() {
    let s = setup(json!({})).await;
    let token = s.idp.token(serde_json::json!({}));
    let io = TokioIo::new(TcpStream::connect(s.gw.addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<bytes::Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let connect = |path: &str, protocol: &'static str, token: Option<&str>| {
        let mut b = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}{path}", s.gw.addr))
            .header("sec-websocket-version", "13");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let mut req = b.body(Empty::new()).unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(protocol));
        req
    };
    for (path, protocol, token, what) in [
        (
            "/live/feed",
            "webtransport",
            Some(token.as_str()),
            "unknown protocol",
        ),
        (
            "/dash/x",
            "h2c",
            Some(token.as_str()),
            "unknown protocol, no permissions",
        ),
        (
            "/plain/x",
            "connect-udp",
            Some(token.as_str()),
            "unknown protocol, plain route",
        ),
        ("/live/feed", "websocket", None, "no token"),
    ] {
        // (An error is a refusal at the HTTP/2 layer: fine too.)
        if let Ok(r) = send.send_request(connect(path, protocol, token)).await {
            assert!(
                r.status().is_client_error(),
                "{what}: answered {}",
                r.status()
            );
        }
    }
    let quiet = Duration::from_millis(300);
    let chunked = format!(
        "GET /live/feed HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let r = raw(s.gw.addr, chunked.as_bytes(), quiet).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(s.echo.handshakes(), 0);
    assert_eq!(s.plain.count(), 0);
}
