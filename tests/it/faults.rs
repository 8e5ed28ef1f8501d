//! Fault injection. Upstreams, JWKS endpoints, introspection endpoints
//! and upstream token endpoints that reset, stall, talk garbage or answer far too much,
//! on real sockets on 127.0.0.1. Every case checks that the request ends within a
//! bounded time with SPEC's status and `error` code, that the gateway keeps serving
//! afterwards, and that nothing leaks: tokio tasks, client connections
//! (`tollgate_open_connections`), the faulty server's accepted sockets, and, for the
//! real binary, file descriptors and peak memory.
//!
//! Observed outcomes are printed (`cargo test --test it faults -- --nocapture`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::token_service::keys::SigningKey;

use crate::common::*;
use crate::gwconfig::{GatewayConfig, AUDIENCE};

const MIB: u64 = 1024 * 1024;
/// How long an idle keep-alive connection stays open on the faulty server (like
/// nginx's `keepalive_timeout`, only much shorter). Long enough that sequential requests
/// on a busy machine never meet the server closing the connection they reuse (see
/// upstream_closing_pooled_connections_is_not_a_502).
const SERVER_KEEPALIVE: Duration = Duration::from_secs(2);

/// The bound on an exchange that a 1 s or 2 s timer (upstream `timeout`, `fetch_timeout`,
/// `request_timeout`) or an immediate failure must end. Far above those timers, so that a
/// busy machine stays inside it, and far below what else could end the exchange (the
/// patient upstream's 30 s `timeout`, a stalled peer that never answers), so that it
/// still shows which one did. The status and `error` code tell the timers apart.
const QUICK: Duration = Duration::from_secs(10);

/// What the faulty server does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// 200 with the path's normal body (JWKS, introspection, token or "ok"), keep-alive;
    /// an idle connection is closed after [`SERVER_KEEPALIVE`].
    Ok,
    /// 200 with `Connection: close`.
    OkClose,
    /// 200 without `Connection: close`, then the server closes the connection at once.
    OkThenClose,
    /// Reads the request head, then resets the connection (RST).
    ResetBeforeHead,
    /// Sends the head (`Content-Length: 100000`) and 1000 body bytes, then resets.
    ResetMidBody,
    /// Sends a chunked head and one chunk, then resets.
    ResetMidChunked,
    /// Sends the head (`Content-Length: 100000`) and 1000 body bytes, then closes (FIN).
    CloseMidBody,
    /// Never answers (until the peer closes).
    StallHead,
    /// Sends the head (`Content-Length: 1000`), never the body.
    StallBody,
    /// Sends a 10-byte body one byte every 300 ms (3 s in all, each pause short).
    Drip,
    /// Answers with something that is not HTTP.
    Garbage,
    /// A response head with a 1 MiB header.
    HugeHeader,
    /// 200 with a body of this many MiB, streamed.
    HugeBody(u64),
    /// 500 with a JSON error body.
    Status500,
    /// 200 with a body that is not JSON.
    InvalidJson,
    /// 200 with a token response lacking `access_token`.
    NoAccessToken,
    /// Reads the request body 4 KiB at a time with pauses, then answers its length.
    SlowReadBody,
    /// Reads 64 KiB of the request body, then resets.
    ResetMidRequestBody,
    /// Reads the head, leaves the body unread and never answers.
    IgnoreBody,
    /// 200 keep-alive, then half-closes (FIN, reading on) and waits for the peer to
    /// close too; counted in `eofs`.
    OkThenHalfClose,
    /// 200 keep-alive with a 16 MiB body, streamed; the connection stays open after it.
    BigKeepAlive,
    /// Answers 200 keep-alive as soon as the request head is in, then reads the whole
    /// request body (counted in `received`) and serves the connection on.
    AnswerFirst,
}

impl Fault {
    fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "ok" => Fault::Ok,
            "ok-close" => Fault::OkClose,
            "ok-then-close" => Fault::OkThenClose,
            "reset-before-head" => Fault::ResetBeforeHead,
            "reset-mid-body" => Fault::ResetMidBody,
            "reset-mid-chunked" => Fault::ResetMidChunked,
            "close-mid-body" => Fault::CloseMidBody,
            "stall-head" => Fault::StallHead,
            "stall-body" => Fault::StallBody,
            "drip" => Fault::Drip,
            "garbage" => Fault::Garbage,
            "huge-header" => Fault::HugeHeader,
            "500" => Fault::Status500,
            "invalid-json" => Fault::InvalidJson,
            "no-access-token" => Fault::NoAccessToken,
            "slow-read-body" => Fault::SlowReadBody,
            "reset-mid-request-body" => Fault::ResetMidRequestBody,
            "ignore-body" => Fault::IgnoreBody,
            "ok-then-half-close" => Fault::OkThenHalfClose,
            "big-keep-alive" => Fault::BigKeepAlive,
            "answer-first" => Fault::AnswerFirst,
            s => Fault::HugeBody(s.strip_prefix("huge-body-")?.parse().ok()?),
        })
    }
}

/// A raw-TCP HTTP/1.1 server that misbehaves on request. A path with a segment `f`
/// followed by a fault name (`/f/reset-mid-body`, `/api/f/stall-head/x`) gets that
/// fault; any other path gets the server's current `mode`.
#[derive(Clone)]
struct FaultServer {
    addr: SocketAddr,
    mode: Arc<Mutex<Fault>>,
    /// Accepted connections not yet closed (by either side).
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// Response body bytes written (shows that a huge answer was cut short).
    sent: Arc<AtomicU64>,
    /// Request body bytes read after answering (`answer-first`).
    received: Arc<AtomicU64>,
    /// Half-closed connections (`ok-then-half-close`) the peer then closed.
    eofs: Arc<AtomicUsize>,
    jwks: Arc<serde_json::Value>,
}

/// Decrements the open-connection count however the handler ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultServer {
    async fn spawn(mode: Fault) -> FaultServer {
        let key = signing_key();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let srv = FaultServer {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(mode)),
            open: Arc::default(),
            accepted: Arc::default(),
            requests: Arc::default(),
            sent: Arc::default(),
            received: Arc::default(),
            eofs: Arc::default(),
            jwks: Arc::new(key.jwks()),
        };
        let s = srv.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.open.fetch_add(1, Ordering::SeqCst);
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(s.open.clone());
                let s2 = s.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    s2.connection(stream).await;
                });
            }
        });
        srv
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, f: Fault) {
        *self.mode.lock().unwrap() = f;
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn fault_for(&self, path: &str) -> Fault {
        let segs: Vec<&str> = path.split('/').collect();
        segs.iter()
            .position(|s| *s == "f")
            .and_then(|i| segs.get(i + 1))
            .and_then(|s| Fault::parse(s))
            .unwrap_or_else(|| *self.mode.lock().unwrap())
    }

    /// The body a healthy server gives for `path`.
    fn ok_body(&self, path: &str) -> String {
        if path.ends_with("/jwks") {
            self.jwks.to_string()
        } else if path.ends_with("/introspect") {
            serde_json::json!({
                "active": true, "sub": "user-1", "client_id": "sap-cx-dashboard",
                "scope": "analytics.read", "exp": now() + 300,
            })
            .to_string()
        } else if path.ends_with("/token") {
            let n = self.requests.load(Ordering::SeqCst);
            serde_json::json!({
                "access_token": format!("upstream-token-{n}"),
                "token_type": "Bearer", "expires_in": 3600,
            })
            .to_string()
        } else {
            "ok".to_owned()
        }
    }

    async fn connection(&self, mut s: TcpStream) {
        let mut buf: Vec<u8> = Vec::new();
        let mut first = true;
        loop {
            let idle = (!first).then_some(SERVER_KEEPALIVE);
            first = false;
            let Some(head) = read_head(&mut s, &mut buf, idle).await else {
                return;
            };
            self.requests.fetch_add(1, Ordering::SeqCst);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let cl = content_length(&head);
            let fault = self.fault_for(&path);
            match fault {
                Fault::Ok | Fault::OkClose | Fault::OkThenClose => {
                    if !read_body(&mut s, &mut buf, cl).await {
                        return;
                    }
                    let body = self.ok_body(&path);
                    let close = if fault == Fault::OkClose {
                        "connection: close\r\n"
                    } else {
                        ""
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{close}\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() || fault != Fault::Ok {
                        return;
                    }
                }
                Fault::Status500 | Fault::InvalidJson | Fault::NoAccessToken => {
                    if !read_body(&mut s, &mut buf, cl).await {
                        return;
                    }
                    let (status, body) = match fault {
                        Fault::Status500 => ("500 Internal Server Error", "{\"error\":\"down\"}"),
                        Fault::InvalidJson => ("200 OK", "{\"keys\": [ this is not json"),
                        _ => ("200 OK", "{\"token_type\":\"Bearer\",\"expires_in\":3600}"),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    return;
                }
                Fault::ResetBeforeHead => {
                    let _ = s.set_zero_linger();
                    return;
                }
                Fault::ResetMidBody | Fault::CloseMidBody | Fault::ResetMidChunked => {
                    let head = if fault == Fault::ResetMidChunked {
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n".to_owned()
                    } else {
                        "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_owned()
                    };
                    let mut out = head.into_bytes();
                    out.extend_from_slice(&[b'x'; 1000]);
                    if fault == Fault::ResetMidChunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    self.sent.fetch_add(1000, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if fault != Fault::CloseMidBody {
                        let _ = s.set_zero_linger();
                    }
                    return;
                }
                Fault::StallHead => {
                    wait_eof(&mut s).await;
                    return;
                }
                Fault::StallBody => {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                        .await;
                    wait_eof(&mut s).await;
                    return;
                }
                Fault::Drip => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n";
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..10 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if s.write_all(b"d").await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                Fault::Garbage => {
                    let _ = s
                        .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \x01\x02\r\n\r\n")
                        .await;
                    wait_eof(&mut s).await;
                    return;
                }
                Fault::HugeHeader => {
                    if s.write_all(b"HTTP/1.1 200 OK\r\nx-big: ").await.is_err() {
                        return;
                    }
                    let chunk = [b'a'; 64 * 1024];
                    for _ in 0..16 {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = s.write_all(b"\r\ncontent-length: 0\r\n\r\n").await;
                    wait_eof(&mut s).await;
                    return;
                }
                Fault::HugeBody(mib) => {
                    if !read_body(&mut s, &mut buf, cl).await {
                        return;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        mib * MIB
                    );
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    // Starts like JSON, so that only the size can make it fail.
                    let mut chunk = vec![b' '; 64 * 1024];
                    chunk[..9].copy_from_slice(b"{\"keys\":[");
                    for i in 0..(mib * MIB / chunk.len() as u64) {
                        if i == 1 {
                            chunk[..9].copy_from_slice(b"         ");
                        }
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                        self.sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                    return;
                }
                Fault::SlowReadBody => {
                    let mut n = buf.len().min(cl);
                    buf.clear();
                    let mut piece = [0u8; 4096];
                    while n < cl {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let want = piece.len().min(cl - n);
                        match s.read(&mut piece[..want]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => n += k,
                        }
                    }
                    let body = n.to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    return;
                }
                Fault::ResetMidRequestBody => {
                    let want = cl.min(64 * 1024);
                    let _ = read_body(&mut s, &mut buf, want).await;
                    let _ = s.set_zero_linger();
                    return;
                }
                Fault::IgnoreBody => {
                    // Well past the gateway's upstream timeout, then notice its close.
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    wait_eof(&mut s).await;
                    return;
                }
                Fault::OkThenHalfClose => {
                    if !read_body(&mut s, &mut buf, cl).await {
                        return;
                    }
                    let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(resp.as_bytes()).await.is_err() || s.shutdown().await.is_err() {
                        return;
                    }
                    wait_eof(&mut s).await;
                    self.eofs.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Fault::BigKeepAlive => {
                    if !read_body(&mut s, &mut buf, cl).await {
                        return;
                    }
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 16 * MIB);
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'k'; 64 * 1024];
                    for _ in 0..(16 * MIB / chunk.len() as u64) {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                }
                Fault::AnswerFirst => {
                    let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(resp.as_bytes()).await.is_err()
                        || !read_body(&mut s, &mut buf, cl).await
                    {
                        return;
                    }
                    self.received.fetch_add(cl as u64, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Reads up to the end of a request head; leaves what follows in `buf`. `idle` bounds
/// the wait for a further request on a kept-alive connection.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>, idle: Option<Duration>) -> Option<String> {
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 4);
            return Some(head);
        }
        let n = match idle.filter(|_| buf.is_empty()) {
            Some(t) => tokio::time::timeout(t, s.read(&mut tmp)).await.ok()?,
            None => s.read(&mut tmp).await,
        };
        match n {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// Reads `n` body bytes (some may already be in `buf`) and drops them.
async fn read_body(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    let mut tmp = [0u8; 16384];
    while buf.len() < n {
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
    buf.drain(..n);
    true
}

/// Waits until the peer closes (or resets) the connection.
async fn wait_eof(s: &mut TcpStream) {
    let mut tmp = [0u8; 16384];
    while let Ok(n) = s.read(&mut tmp).await {
        if n == 0 {
            return;
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn signing_key() -> SigningKey {
    SigningKey::from_pem(&std::fs::read(fixture("rsa-a.pem")).unwrap()).unwrap()
}

fn jwt_for(iss: &str) -> String {
    signing_key()
        .sign(
            "JWT",
            &serde_json::json!({
                "iss": iss, "aud": AUDIENCE, "sub": "user-1", "client_id": "sap-cx-dashboard",
                "scope": "analytics.read", "iat": now(), "exp": now() + 300,
            }),
        )
        .unwrap()
}

/// Runs `fut`, failing the test if it takes longer than `bound`; returns its output and
/// how long it took.
async fn bounded<T>(
    what: &str,
    bound: Duration,
    fut: impl std::future::Future<Output = T>,
) -> (T, Duration) {
    let t = Instant::now();
    match tokio::time::timeout(bound, fut).await {
        Ok(v) => (v, t.elapsed()),
        Err(_) => panic!("{what}: not finished within {bound:?}"),
    }
}

/// Checks SPEC's error response; returns the `error` code.
async fn expect_error(what: &str, r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status(), status, "{what}");
    assert_eq!(r.headers()["content-type"], "application/json", "{what}");
    assert!(r.headers().contains_key("x-request-id"), "{what}");
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"], code, "{what}: {b}");
    assert!(b["request_id"].is_string(), "{what}");
    assert!(b["error_description"].is_string(), "{what}");
    code.to_owned()
}

/// A GET (or POST with `body`) that must end in SPEC's `status` / `code` within `bound`.
async fn error_case(
    what: &str,
    url: String,
    auth: Option<String>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &str,
    bound: Duration,
) -> Duration {
    let (_, took) = bounded(what, bound, async {
        let c = client();
        let mut req = match body {
            Some(b) => c.post(url).body(b),
            None => c.get(url),
        };
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        expect_error(what, r, status, code).await
    })
    .await;
    eprintln!(
        "[faults] {what:<44} -> {status} {code:<16} in {:>5} ms",
        took.as_millis()
    );
    took
}

async fn get_ok(what: &str, url: String, auth: Option<String>) -> String {
    let (r, _) = bounded(what, PATIENCE, async {
        let mut req = client().get(url);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{what}: {text}");
        text
    })
    .await;
    r
}

/// A value from the gateway's `/metrics`.
async fn metric(admin: &str, name: &str) -> f64 {
    series_value(&admin_metrics(&format!("http://{admin}")).await, name)
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// What an idle gateway looks like: tokio tasks of this test's runtime (gateway,
/// faulty servers, refreshers) and the gateway's open client connections (the scrape's
/// own included).
#[derive(Debug, Clone, Copy)]
struct Baseline {
    tasks: usize,
    connections: f64,
}

/// The lowest readings over a short quiet period.
async fn baseline(admin: &str) -> Baseline {
    let mut b = Baseline {
        tasks: usize::MAX,
        connections: f64::MAX,
    };
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        b.tasks = b.tasks.min(alive_tasks());
        b.connections = b
            .connections
            .min(metric(admin, "tollgate_open_connections").await);
    }
    b
}

/// Waits (at most [`PATIENCE`]) until tasks and client connections are back to the
/// baseline and every faulty server has seen all its connections closed.
async fn assert_settled(what: &str, admin: &str, base: Baseline, servers: &[&FaultServer]) {
    let t = Instant::now();
    let mut last = (0, 0.0, vec![]);
    while t.elapsed() < PATIENCE {
        let tasks = alive_tasks();
        let conns = metric(admin, "tollgate_open_connections").await;
        let open: Vec<usize> = servers.iter().map(|s| s.open()).collect();
        if tasks <= base.tasks && conns <= base.connections && open.iter().all(|n| *n == 0) {
            eprintln!(
                "[faults] leaks after {what}: tasks {tasks} (baseline {}), open client connections {conns} (baseline {}), faulty server sockets open {open:?}; settled in {} ms",
                base.tasks,
                base.connections,
                t.elapsed().as_millis()
            );
            return;
        }
        last = (tasks, conns, open);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what}: not settled after {PATIENCE:?}: tasks {} (baseline {}), open client connections {} (baseline {}), faulty server sockets open {:?}",
        last.0, base.tasks, last.1, base.connections, last.2
    );
}

/// Listeners with `server.limits.request_timeout` (the other configs here start from it).
fn with_request_timeout(t: &str) -> GatewayConfig {
    GatewayConfig::new().merge("server", json!({"limits": {"request_timeout": t}}))
}

/// The faulty server as upstream `faulty` on /f (its `timeout` as given) and, under
/// /patient, as `faulty-patient` on /p.
fn upstream_config(up: &FaultServer, request_timeout: &str, timeout: &str) -> GatewayConfig {
    with_request_timeout(request_timeout)
        .upstream_with(
            "faulty",
            &up.url(""),
            json!({"connect_timeout": "1s", "timeout": timeout}),
        )
        .upstream_with(
            "faulty-patient",
            &up.url("/patient"),
            json!({"timeout": "30s"}),
        )
        .open_route("faulty", "/f", "faulty")
        .open_route("patient", "/p", "faulty-patient")
}

fn upstream_yaml(up: &FaultServer) -> String {
    upstream_config(up, "2s", "1s").yaml()
}

/// Sends a POST head and `sent` bytes of a body declared `declared` long on a fresh
/// connection (the rest never comes); reads the response until it is complete, the
/// gateway closes or `wait` passes.
async fn raw_partial_post(
    addr: SocketAddr,
    path: &str,
    declared: usize,
    sent: usize,
    wait: Duration,
) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-length: {declared}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'b'; 16 * 1024];
        let mut n = 0;
        while n < sent {
            let k = chunk.len().min(sent - n);
            if wr.write_all(&chunk[..k]).await.is_err() {
                break;
            }
            n += k;
        }
        // Keep the write half open: the body is "still coming".
        tokio::time::sleep(wait).await;
        drop(wr);
    });
    let mut out = Vec::new();
    let mut tmp = [0u8; 8192];
    let _ = tokio::time::timeout(wait, async {
        while let Ok(n) = rd.read(&mut tmp).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&tmp[..n]);
            // Done once the whole response is in (the connection may stay open).
            if let Some(i) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..i]).into_owned();
                if out.len() >= i + 4 + content_length(&head) {
                    break;
                }
            }
        }
    })
    .await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

/// A request (name, path, POST body size) and the status, `error` code and time bound
/// it must end with.
type Case = (
    &'static str,
    &'static str,
    Option<usize>,
    u16,
    &'static str,
    Duration,
);

// Behaviour: an upstream that fails before its response head — resets, answers garbage
// or a 1 MiB header, never answers, or resets / ignores a POST body — gets SPEC's
// 502 `bad_gateway` or 504 `gateway_timeout` within its `timeout` (or request_timeout),
// the gateway keeps serving, and no task or connection is left behind.
#[tokio::test]
async fn upstream_failures_before_the_response_head() {
    let up = FaultServer::spawn(Fault::OkClose).await;
    let gw = spawn_gateway(&upstream_yaml(&up)).await;
    let admin = gw.admin.unwrap().to_string();
    get_ok("warm-up", gw.url("/f/ok-close"), None).await;
    let base = baseline(&admin).await;

    let mut set = tokio::task::JoinSet::new();
    let cases: Vec<Case> = vec![
        (
            "upstream resets before head",
            "/f/reset-before-head",
            None,
            502,
            "bad_gateway",
            QUICK,
        ),
        (
            "upstream answers garbage",
            "/f/garbage",
            None,
            502,
            "bad_gateway",
            QUICK,
        ),
        (
            "upstream sends a 1 MiB header",
            "/f/huge-header",
            None,
            502,
            "bad_gateway",
            QUICK,
        ),
        (
            "upstream stalls before head (timeout 1s)",
            "/f/stall-head",
            None,
            504,
            "gateway_timeout",
            QUICK,
        ),
        (
            "upstream stalls before head (request 2s)",
            "/p/f/stall-head",
            None,
            504,
            "gateway_timeout",
            QUICK,
        ),
    ];
    for (what, path, body, status, code, bound) in cases {
        let url = gw.url(path);
        set.spawn(async move {
            let body = body.map(|n| vec![b'b'; n]);
            let took = error_case(what, url, None, body, status, code, bound).await;
            (what, took)
        });
    }
    let mut took = std::collections::HashMap::new();
    while let Some(r) = set.join_next().await {
        let (what, t) = r.unwrap();
        took.insert(what, t);
    }
    // The 504s come from the right clock: upstream `timeout` (1 s), request_timeout (2 s).
    assert!(took["upstream stalls before head (timeout 1s)"] >= Duration::from_millis(900));
    assert!(took["upstream stalls before head (request 2s)"] >= Duration::from_millis(1900));

    // POSTs on a raw socket (the client may still be sending when the answer comes, so
    // an HTTP client could report its own write error instead of the answer). The body
    // is declared 4 MiB; the upstream resets after 64 KiB of it, or never reads it.
    for (what, path, sent, status, code) in [
        (
            "upstream resets mid request body",
            "/f/reset-mid-request-body",
            256 << 10,
            502,
            "bad_gateway",
        ),
        (
            "upstream ignores a 4 MiB POST body",
            "/f/ignore-body",
            4 << 20,
            504,
            "gateway_timeout",
        ),
    ] {
        let (resp, t) = bounded(what, QUICK, async {
            raw_partial_post(gw.addr, path, 4 << 20, sent, QUICK).await
        })
        .await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {resp}"
        );
        assert!(
            resp.contains(&format!("\"error\":\"{code}\"")),
            "{what}: {resp}"
        );
        eprintln!(
            "[faults] {what:<44} -> {status} {code:<16} in {:>5} ms",
            t.as_millis()
        );
    }

    // Still serving.
    assert_eq!(
        get_ok("after faults", gw.url("/f/ok-close"), None).await,
        "ok"
    );
    assert_settled("upstream faults before the head", &admin, base, &[&up]).await;
    gw.stop().await;
}

// Behaviour: an upstream that reads a 512 KiB POST body slowly (4 KiB at a time, with
// pauses: backpressure all the way to the client) gets all of it, and its answer streams
// back; nothing leaks. The reading takes about half a second on an idle machine and
// several on a busy one, so the route is a patient one (timeouts of 30 s): this case is
// about completeness, not about timers.
#[tokio::test]
async fn upstream_reading_the_body_slowly_gets_all_of_it() {
    let up = FaultServer::spawn(Fault::OkClose).await;
    let gw = spawn_gateway(&upstream_config(&up, "30s", "1s").yaml()).await;
    let admin = gw.admin.unwrap().to_string();
    get_ok("warm-up", gw.url("/p/f/ok-close"), None).await;
    let base = baseline(&admin).await;

    let body = vec![b'b'; 512 << 10];
    let (r, t) = bounded("slow-reading upstream", PATIENCE, async {
        client()
            .post(gw.url("/p/f/slow-read-body"))
            .body(body)
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), (512 << 10).to_string());
    eprintln!(
        "[faults] {:<44} -> 200 (all 512 KiB read) in {:>5} ms",
        "upstream reads the POST body slowly",
        t.as_millis()
    );
    assert_settled("a slowly reading upstream", &admin, base, &[&up]).await;
    gw.stop().await;
}

/// Reads a streamed response body to its end; Err when it breaks off.
async fn read_body_of(r: reqwest::Response) -> Result<usize, String> {
    let mut r = r;
    let mut n = 0;
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| format!("{e:?} after {n} bytes"))?
    {
        n += chunk.len();
    }
    Ok(n)
}

// Behaviour: an upstream that fails after its response head (reset or FIN mid-body,
// chunked or not, or a body that stops coming) cannot get a 502 any more: the client
// gets the 200 head and then a body that breaks off — never a truncated body that
// looks complete. A body that pauses longer than the upstream's `timeout` is cut off
// then (it used to hang for as long as the upstream kept the connection open); one
// that keeps flowing, however slowly, is not cut even past request_timeout.
// Nothing leaks.
#[tokio::test]
async fn upstream_failures_while_streaming_the_body() {
    let up = FaultServer::spawn(Fault::OkClose).await;
    let gw = spawn_gateway(&upstream_yaml(&up)).await;
    let admin = gw.admin.unwrap().to_string();
    get_ok("warm-up", gw.url("/f/ok-close"), None).await;
    let base = baseline(&admin).await;

    let mut set = tokio::task::JoinSet::new();
    for (what, path) in [
        (
            "upstream resets mid body (content-length)",
            "/f/reset-mid-body",
        ),
        ("upstream resets mid body (chunked)", "/f/reset-mid-chunked"),
        (
            "upstream closes mid body (content-length)",
            "/f/close-mid-body",
        ),
        ("upstream stalls after head (timeout 1s)", "/f/stall-body"),
    ] {
        let url = gw.url(path);
        set.spawn(async move {
            let (res, took) = bounded(what, QUICK, async {
                let r = client().get(url).send().await.unwrap();
                assert_eq!(r.status(), 200, "{what}");
                read_body_of(r).await
            })
            .await;
            let err = res.expect_err(&format!("{what}: a broken body must not end cleanly"));
            eprintln!(
                "[faults] {what:<44} -> 200, body broken off in {:>5} ms ({})",
                took.as_millis(),
                err.chars().take(60).collect::<String>()
            );
            (what, took)
        });
    }
    // 10 bytes, one every 300 ms: 3 s in all, longer than timeout and request_timeout.
    let url = gw.url("/f/drip");
    set.spawn(async move {
        let what = "upstream drips its body for 3 s";
        let (res, took) = bounded(what, QUICK + Duration::from_secs(3), async {
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{what}");
            read_body_of(r).await
        })
        .await;
        assert_eq!(res, Ok(10), "{what}: a flowing body must not be cut");
        eprintln!(
            "[faults] {what:<44} -> 200, all 10 bytes in {:>5} ms",
            took.as_millis()
        );
        (what, took)
    });
    while let Some(r) = set.join_next().await {
        let (what, took) = r.unwrap();
        if what.contains("stalls") {
            assert!(
                took >= Duration::from_millis(900),
                "{what}: cut before the upstream's timeout"
            );
        }
    }

    assert_eq!(
        get_ok("after faults", gw.url("/f/ok-close"), None).await,
        "ok"
    );
    assert_settled("upstream faults mid body", &admin, base, &[&up]).await;
    gw.stop().await;
}

// Behaviour: keep-alive connections the upstream closes are not a 502 — neither one it
// closes right after its answer (without saying `Connection: close`) nor one it closes
// after an idle timeout: once the gateway has seen the close, the pool drops the dead
// connection (or hyper hands the unsent request back and it is retried on a new one).
// Reuse does happen otherwise.
#[tokio::test]
async fn upstream_closing_pooled_connections_is_not_a_502() {
    let up = FaultServer::spawn(Fault::Ok).await;
    let gw = spawn_gateway(&upstream_yaml(&up)).await;
    let admin = gw.admin.unwrap().to_string();
    let base = baseline(&admin).await;

    // Reuse works: back-to-back requests share a connection.
    let before = up.accepted.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(get_ok("keep-alive", gw.url("/f/ok"), None).await, "ok");
    }
    let reused = up.accepted.load(Ordering::SeqCst) - before;
    assert!(reused < 5, "no connection reuse: {reused} connections");

    // Each next request below comes once the server has closed the pooled connection
    // and the gateway has seen it close (the pool's sweep has run: tasks back to the
    // baseline). Sent in the moment between the two, before the gateway's I/O driver
    // has seen the FIN, a request still goes out on the dead connection and ends in a
    // 502 (seen under load, 1 run in 5 with 64 tests at once): client::send_pooled
    // never resends a request written on a reused connection.
    let gateway_saw_the_close = async || {
        eventually(
            "the faulty server closed the connection, and the gateway noticed",
            PATIENCE,
            async || (up.open(), alive_tasks()),
            |(open, tasks)| *open == 0 && *tasks <= base.tasks,
        )
        .await
    };
    // Closed right after each answer: every request still succeeds.
    for i in 0..30 {
        get_ok(
            &format!("ok-then-close #{i}"),
            gw.url("/f/ok-then-close"),
            None,
        )
        .await;
        gateway_saw_the_close().await;
    }
    // Closed after the server's idle timeout, between requests.
    for i in 0..4 {
        get_ok(&format!("idle-closed #{i}"), gw.url("/f/ok"), None).await;
        gateway_saw_the_close().await;
    }
    eprintln!(
        "[faults] {:<44} -> 200 x39, {} upstream connections",
        "upstream closes pooled connections",
        up.accepted.load(Ordering::SeqCst) - before
    );
    assert_settled(
        "pooled connections closed by the upstream",
        &admin,
        base,
        &[&up],
    )
    .await;
    gw.stop().await;
}

// Behaviour: a pooled upstream connection is reused for sequential requests, and never
// after anything that leaves it unusable: a `Connection: close` answer, a response
// body the client abandons half-way (closed at once), or the upstream closing it while
// it is idle (closed here too, without waiting for the next request to find it). An
// upstream that answers before it has read the whole request body still gets all of it,
// and the connection is reused afterwards.
#[tokio::test]
async fn pooled_connections_are_reused_only_when_whole() {
    let up = FaultServer::spawn(Fault::Ok).await;
    let gw = spawn_gateway(&upstream_yaml(&up)).await;
    let accepted = || up.accepted.load(Ordering::SeqCst);

    // Keep-alive: sequential requests share one upstream connection.
    for i in 0..10 {
        get_ok(&format!("keep-alive #{i}"), gw.url("/f/ok"), None).await;
    }
    assert_eq!(
        accepted(),
        1,
        "sequential requests must share one connection"
    );

    // `Connection: close`: the connection that said it is never used again (the first
    // of these answers comes on the pooled connection; after it, none is left).
    get_ok("close #0", gw.url("/f/ok-close"), None).await;
    for i in 1..4 {
        let before = accepted();
        get_ok(&format!("close #{i}"), gw.url("/f/ok-close"), None).await;
        assert_eq!(
            accepted() - before,
            1,
            "close #{i}: a closed connection was reused"
        );
    }

    // Answered before the request body was read: the body still goes through whole,
    // and the connection, once it is written, goes back to the pool.
    let before = accepted();
    let r = bounded("answer-first", PATIENCE, async {
        client()
            .post(gw.url("/f/answer-first"))
            .body(vec![b'u'; 4 << 20])
            .send()
            .await
            .unwrap()
    })
    .await
    .0;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    eventually(
        "the upstream read the whole request body after answering",
        PATIENCE,
        async || up.received.load(Ordering::SeqCst),
        |n| *n == 4 << 20,
    )
    .await;
    // (The gateway wrote the body's last bytes, and pooled the connection in the same
    // step, before the upstream could read them.)
    get_ok("after answer-first", gw.url("/f/ok"), None).await;
    assert_eq!(
        accepted() - before,
        1,
        "the connection that answered first was not reused"
    );

    // A response body the client abandons: its connection is closed, not reused.
    let mut r = bounded("big-keep-alive", PATIENCE, async {
        client()
            .get(gw.url("/f/big-keep-alive"))
            .send()
            .await
            .unwrap()
    })
    .await
    .0;
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    let before = accepted();
    drop(r);
    get_ok("after an abandoned body", gw.url("/f/ok"), None).await;
    assert_eq!(
        accepted() - before,
        1,
        "the connection of an abandoned body was reused"
    );
    eventually(
        "the abandoned connection is closed",
        PATIENCE,
        async || up.open(),
        |n| *n <= 1,
    )
    .await;

    // The upstream half-closes an idle pooled connection: the gateway closes it as
    // soon as it sees that, not when a next request would find it.
    get_ok("half-close", gw.url("/f/ok-then-half-close"), None).await;
    eventually(
        "the gateway closed the idle connection the upstream half-closed",
        PATIENCE,
        async || up.eofs.load(Ordering::SeqCst),
        |n| *n == 1,
    )
    .await;
    get_ok("after half-close", gw.url("/f/ok"), None).await;
    gw.stop().await;
}

// Behaviour: a 64 MiB response streams through in full (nothing buffers a whole body).
#[tokio::test]
async fn huge_response_body_streams() {
    let up = FaultServer::spawn(Fault::OkClose).await;
    let gw = spawn_gateway(&upstream_yaml(&up)).await;
    let (r, t) = bounded("64 MiB body", Duration::from_secs(120), async {
        let r = client()
            .get(gw.url("/f/huge-body-64"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        read_body_of(r).await
    })
    .await;
    assert_eq!(r.unwrap() as u64, 64 * MIB);
    eprintln!(
        "[faults] {:<44} -> 200, 64 MiB in {:>5} ms",
        "upstream answers a 64 MiB body",
        t.as_millis()
    );
    gw.stop().await;
}

fn jwks_yaml(idp: &FaultServer, up: &FaultServer) -> String {
    let issuer = |name: &str, jwks: String| {
        json!({
            "name": name,
            "issuer": format!("https://{name}.idp.test"),
            "jwks_uri": jwks,
            "audiences": [AUDIENCE],
            "fetch_timeout": "1s",
        })
    };
    let mut cfg = with_request_timeout("5s");
    for (name, path) in JWKS_FAULTS {
        cfg = cfg.issuer_block(issuer(name, idp.url(path)));
    }
    let mut flaky = issuer("flaky", idp.url("/jwks"));
    flaky["jwks_refresh"] = json!("300ms");
    cfg.issuer_block(flaky)
        .upstream("up", &up.url("/f/ok-close"))
        .route(json!({
            "name": "api", "path_prefix": "/api", "upstream": "up",
            "auth": {"scopes": ["analytics.read"]},
        }))
        .yaml()
}

const JWKS_FAULTS: [(&str, &str); 6] = [
    ("hang", "/f/stall-head/jwks"),
    ("e500", "/f/500/jwks"),
    ("badjson", "/f/invalid-json/jwks"),
    ("huge", "/f/huge-body-50/jwks"),
    ("reset", "/f/reset-before-head/jwks"),
    ("garbage", "/f/garbage/jwks"),
];

// Behaviour: a JWKS endpoint that hangs, answers 500, invalid JSON, 50 MiB, a reset or
// garbage leaves no keys: tokens are refused 401 `invalid_token` within `fetch_timeout`
// (the read stops at 1 MiB), an issuer whose endpoint recovers is picked up by the
// background refresh, and nothing leaks.
#[tokio::test]
async fn jwks_endpoint_failures() {
    let idp = FaultServer::spawn(Fault::Status500).await;
    let up = FaultServer::spawn(Fault::OkClose).await;
    let gw = spawn_gateway(&jwks_yaml(&idp, &up)).await;
    let admin = gw.admin.unwrap().to_string();
    let base = baseline(&admin).await;

    let mut set = tokio::task::JoinSet::new();
    for (name, _) in JWKS_FAULTS {
        let url = gw.url("/api/x");
        set.spawn(async move {
            let what = format!("JWKS {name}");
            let token = jwt_for(&format!("https://{name}.idp.test"));
            error_case(&what, url, Some(token), None, 401, "invalid_token", QUICK).await
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let sent = idp.sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 * MIB,
        "the 50 MiB JWKS was read on: {sent} bytes sent"
    );
    eprintln!(
        "[faults] 50 MiB JWKS: the IdP got {} KiB out before the gateway hung up",
        sent / 1024
    );

    // Recovery: the flaky issuer's endpoint comes back; the refresh picks its keys up.
    let token = jwt_for("https://flaky.idp.test");
    error_case(
        "JWKS flaky (500)",
        gw.url("/api/x"),
        Some(token.clone()),
        None,
        401,
        "invalid_token",
        QUICK,
    )
    .await;
    idp.set(Fault::OkClose);
    let (_, t) = bounded("JWKS recovery", PATIENCE, async {
        loop {
            let r = client()
                .get(gw.url("/api/x"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                return;
            }
            assert_eq!(r.status(), 401);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    eprintln!(
        "[faults] {:<44} -> 200 after {:>5} ms",
        "JWKS endpoint recovers",
        t.as_millis()
    );
    // Stop the refresher's traffic from being counted as a leak: it fetches on its own.
    assert_settled("JWKS faults", &admin, base, &[&up]).await;
    gw.stop().await;
}

const INTROSPECTION_FAULTS: [(&str, &str); 6] = [
    ("hang", "/f/stall-head/introspect"),
    ("e500", "/f/500/introspect"),
    ("badjson", "/f/invalid-json/introspect"),
    ("huge", "/f/huge-body-50/introspect"),
    ("reset", "/f/reset-before-head/introspect"),
    ("garbage", "/f/garbage/introspect"),
];

fn introspection_yaml(idp: &FaultServer, up: &FaultServer) -> String {
    let mut cfg = with_request_timeout("5s").upstream("up", &up.url("/f/ok-close"));
    let faults = INTROSPECTION_FAULTS
        .iter()
        .copied()
        .chain([("flaky", "/introspect")]);
    for (name, path) in faults {
        cfg = cfg
            .issuer_block(json!({
                "name": name,
                "issuer": format!("https://{name}.intro.test"),
                "fetch_timeout": "1s",
                "introspection": {
                    "url": idp.url(path), "client_id": "gateway", "client_secret": "s3cret",
                },
            }))
            .route(json!({
                "name": name, "path_prefix": format!("/{name}"), "upstream": "up",
                "auth": {"issuers": [name]},
            }));
    }
    cfg.yaml()
}

// Behaviour: an RFC 7662 endpoint that hangs, answers 500, invalid JSON, 50 MiB, a reset
// or garbage is an outage, not a verdict on the token: 502 `bad_gateway` within
// `fetch_timeout`, never a pass; not cached, so the next request after recovery passes.
#[tokio::test]
async fn introspection_endpoint_failures() {
    let idp = FaultServer::spawn(Fault::Status500).await;
    let up = FaultServer::spawn(Fault::OkClose).await;
    let gw = spawn_gateway(&introspection_yaml(&idp, &up)).await;
    let admin = gw.admin.unwrap().to_string();
    let base = baseline(&admin).await;

    let mut set = tokio::task::JoinSet::new();
    for (name, _) in INTROSPECTION_FAULTS.iter().copied().chain([("flaky", "")]) {
        let url = gw.url(&format!("/{name}/x"));
        set.spawn(async move {
            let what = format!("introspection {name}");
            error_case(
                &what,
                url,
                Some("opaque-token-1".into()),
                None,
                502,
                "bad_gateway",
                QUICK,
            )
            .await
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        0,
        "nothing may pass unverified"
    );
    let sent = idp.sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 * MIB,
        "the 50 MiB introspection answer was read on: {sent} bytes"
    );

    idp.set(Fault::Ok);
    get_ok(
        "introspection recovered",
        gw.url("/flaky/x"),
        Some("opaque-token-1".into()),
    )
    .await;
    idp.set(Fault::OkClose);
    // The recovered issuer's keep-alive connection closes on the server's idle timeout.
    assert_settled("introspection faults", &admin, base, &[&idp, &up]).await;
    gw.stop().await;
}

const TOKEN_FAULTS: [(&str, &str, u16, &str); 7] = [
    // The token fetch's own timeout (10 s) is longer than request_timeout (2 s).
    ("hang", "/f/stall-head/token", 504, "gateway_timeout"),
    ("e500", "/f/500/token", 502, "bad_gateway"),
    ("badjson", "/f/invalid-json/token", 502, "bad_gateway"),
    ("huge", "/f/huge-body-50/token", 502, "bad_gateway"),
    ("noat", "/f/no-access-token/token", 502, "bad_gateway"),
    ("reset", "/f/reset-before-head/token", 502, "bad_gateway"),
    ("garbage", "/f/garbage/token", 502, "bad_gateway"),
];

fn token_yaml(idp: &FaultServer, up: &FaultServer) -> String {
    let mut cfg = with_request_timeout("2s");
    let all = TOKEN_FAULTS
        .iter()
        .map(|(n, p, _, _)| (*n, *p))
        .chain([("flaky", "/token")]);
    for (name, path) in all {
        cfg = cfg
            .upstream_with(
                name,
                &up.url("/f/ok-close"),
                json!({"auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": idp.url(path),
                    "client_id": "gw",
                    "client_secret": "s3cret",
                }}),
            )
            .open_route(name, &format!("/{name}"), name);
    }
    cfg.yaml()
}

// Behaviour: an upstream OAuth2 token endpoint that hangs, answers 500, invalid JSON,
// 50 MiB, no access_token, a reset or garbage: the request never reaches the upstream
// and ends in 502 `bad_gateway` (504 `gateway_timeout` when request_timeout runs out
// first); once the endpoint recovers, the next fetch after the back-off works.
#[tokio::test]
async fn token_endpoint_failures() {
    let idp = FaultServer::spawn(Fault::Status500).await;
    let up = FaultServer::spawn(Fault::OkClose).await;
    let gw = spawn_gateway(&token_yaml(&idp, &up)).await;
    let admin = gw.admin.unwrap().to_string();
    let base = baseline(&admin).await;

    let mut set = tokio::task::JoinSet::new();
    for (name, _, status, code) in
        TOKEN_FAULTS
            .iter()
            .copied()
            .chain([("flaky", "", 502, "bad_gateway")])
    {
        let url = gw.url(&format!("/{name}/x"));
        set.spawn(async move {
            let what = format!("token endpoint {name}");
            error_case(&what, url, None, None, status, code, QUICK).await
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        0,
        "nothing may reach the upstream without a token"
    );
    let sent = idp.sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 * MIB,
        "the 50 MiB token answer was read on: {sent} bytes"
    );

    idp.set(Fault::OkClose);
    let (_, t) = bounded("token endpoint recovery", PATIENCE, async {
        loop {
            let r = client().get(gw.url("/flaky/x")).send().await.unwrap();
            if r.status() == 200 {
                return;
            }
            assert_eq!(r.status(), 502);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    eprintln!(
        "[faults] {:<44} -> 200 after {:>5} ms",
        "token endpoint recovers",
        t.as_millis()
    );
    assert_settled("token endpoint faults", &admin, base, &[&idp, &up]).await;
    gw.stop().await;
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

// Behaviour: the real binary, after 200 faulty exchanges (resets, garbage, huge
// headers, stalls, broken bodies), holds no more file descriptors than before, and a
// 256 MiB response streams through it without its peak memory growing by more than a
// few MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keeps_no_descriptors_or_memory_after_faults() {
    let up = FaultServer::spawn(Fault::OkClose).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    // Upstream timeout 2 s, request_timeout 3 s: with 40 exchanges at once, a 1 MiB
    // response head takes long enough to come through on a busy machine that a short
    // upstream timeout (it was 300 ms) ends some of them first: 504 where the head's
    // size must give 502.
    std::fs::write(&config, upstream_config(&up, "3s", "2s").yaml()).unwrap();
    let bin = spawn_binary(&config, &["run"]);
    let pid = bin.pid();
    let public = bin.public.clone();
    let admin = bin.admin.clone().unwrap();
    let admin_base = format!("http://{admin}");

    get_ok("warm-up", format!("http://{public}/f/ok-close"), None).await;
    // Idle: no client connection open but the scrape's own (the admin listener's
    // connections are counted too), the warm-up's closed.
    let conns_before =
        metric_eventually(&admin_base, "tollgate_open_connections", |v| v <= 1.0).await;
    // ...and its descriptors back to their lowest: the fewest seen over a quiet second.
    let mut fds_before = usize::MAX;
    for _ in 0..20 {
        fds_before = fds_before.min(fd_count(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak_start = peak_rss_kib(pid);

    let faults = [
        ("/f/reset-before-head", Some(502)),
        ("/f/garbage", Some(502)),
        ("/f/huge-header", Some(502)),
        ("/f/stall-head", Some(504)),
        ("/f/reset-mid-body", Some(200)),
        ("/f/close-mid-body", Some(200)),
        ("/f/reset-mid-chunked", Some(200)),
        ("/f/stall-body", Some(200)),
        ("/f/reset-before-head", Some(502)),
        ("/f/garbage", Some(502)),
    ];
    let (_, t) = bounded("200 faulty requests", Duration::from_secs(120), async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (path, status) = faults[i % faults.len()];
            let url = format!("http://{public}{path}");
            set.spawn(async move {
                let r = client().get(url).send().await.unwrap();
                assert_eq!(Some(r.status().as_u16()), status, "{path}");
                let _ = r.bytes().await;
            });
            if set.len() >= 40 {
                set.join_next().await.unwrap().unwrap();
            }
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    })
    .await;
    get_ok("after faults", format!("http://{public}/f/ok-close"), None).await;
    // Connections end (and their descriptors close) a moment after their last answer.
    let conns_after = eventually(
        "open client connections back to idle",
        PATIENCE,
        async || metric(&admin, "tollgate_open_connections").await,
        |n| *n <= conns_before,
    )
    .await;
    let fds_after = eventually(
        "descriptors back to where they were",
        PATIENCE,
        async || fd_count(pid),
        |n| *n <= fds_before + 2,
    )
    .await;
    eprintln!(
        "[faults] binary: 200 faulty requests in {} ms; fds {fds_before} -> {fds_after}; open client connections {conns_before} -> {conns_after}; faulty server sockets open {}",
        t.as_millis(),
        up.open()
    );
    assert!(
        fds_after <= fds_before + 2,
        "descriptors leaked: {fds_before} -> {fds_after}"
    );
    assert!(
        conns_after <= conns_before,
        "connections leaked: {conns_before} -> {conns_after}"
    );

    let peak_before = peak_rss_kib(pid);
    let (n, t) = bounded(
        "256 MiB through the binary",
        Duration::from_secs(240),
        async {
            let r = client()
                .get(format!("http://{public}/f/huge-body-256"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            read_body_of(r).await.unwrap()
        },
    )
    .await;
    assert_eq!(n as u64, 256 * MIB);
    let peak_after = peak_rss_kib(pid);
    eprintln!(
        "[faults] binary: 256 MiB streamed in {} ms; peak RSS at start {peak_start} KiB, after faults {} KiB, after streaming {} KiB",
        t.as_millis(),
        peak_before,
        peak_after
    );
    assert!(
        peak_after < peak_before + 32 * 1024,
        "peak memory grew by {} KiB while streaming",
        peak_after - peak_before
    );
    drop(bin);
}
