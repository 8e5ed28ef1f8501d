//! Test harness: real servers on 127.0.0.1:0 — an echo upstream, an OAuth2 / OIDC
//! identity provider (JWKS, discovery, introspection, token endpoint) and tollgate
//! itself, in-process or as the real binary.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tollgate::token_service::keys::SigningKey;

pub type Resp = Response<Full<Bytes>>;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Serves `handler` on 127.0.0.1:0 (HTTP/1.1 and h2c) until the test ends.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A loopback address where nothing listens, for "the upstream is down": a socket is
/// bound to it (for the whole test run) but never listens, so connections are refused
/// at once and no other test can be given the port meanwhile.
pub fn dead_addr() -> SocketAddr {
    static DEAD: std::sync::OnceLock<(tokio::net::TcpSocket, SocketAddr)> =
        std::sync::OnceLock::new();
    DEAD.get_or_init(|| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        (socket, addr)
    })
    .1
}

pub fn json_resp(status: u16, v: serde_json::Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

/// What the echo upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HashMap<String, Vec<String>>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

#[derive(Clone, Default)]
pub struct Upstream {
    pub addr: Option<SocketAddr>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Set by [`Upstream::release`]: `/hold` requests are answered.
    pub released: Arc<AtomicBool>,
    pub release: Arc<tokio::sync::Notify>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }
    /// Lets every `/hold` request (held until now) and every later one be answered.
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.release.notify_waiters();
    }
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

/// An upstream that records every request and answers with a JSON echo.
/// `/slow/<ms>` waits first; `/hold` waits until [`Upstream::release`];
/// `/status/<code>` answers that status; `/bytes/<n>` answers n bytes. Bodies are read
/// whole (and counted); a request is recorded before any wait.
pub async fn spawn_upstream() -> Upstream {
    let mut up = Upstream::default();
    let seen = up.seen.clone();
    let (released, release) = (up.released.clone(), up.release.clone());
    let addr = serve(move |req: Request<Incoming>| {
        let seen = seen.clone();
        let (released, release) = (released.clone(), release.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut headers: HashMap<String, Vec<String>> = HashMap::new();
            for (k, v) in &parts.headers {
                headers
                    .entry(k.as_str().to_owned())
                    .or_default()
                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
            }
            let path = parts.uri.path().to_owned();
            seen.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: headers.clone(),
                body: body.clone(),
            });
            let segs: Vec<&str> = path.split('/').collect();
            if let Some(i) = segs.iter().position(|s| *s == "slow") {
                let ms: u64 = segs.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if segs.contains(&"hold") {
                loop {
                    let notified = release.notified();
                    if released.load(Ordering::SeqCst) {
                        break;
                    }
                    notified.await;
                }
            }
            if let Some(i) = segs.iter().position(|s| *s == "status") {
                let code: u16 = segs.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(200);
                return json_resp(code, serde_json::json!({"status": code}));
            }
            if let Some(i) = segs.iter().position(|s| *s == "bytes") {
                let n: usize = segs.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(0);
                return Response::new(Full::new(Bytes::from(vec![b'x'; n])));
            }
            let mut r = json_resp(
                200,
                serde_json::json!({
                    "method": parts.method.as_str(),
                    "uri": parts.uri.to_string(),
                    "body_len": body.len(),
                    "headers": headers,
                }),
            );
            r.headers_mut()
                .insert("connection", "keep-alive, x-upstream-hop".parse().unwrap());
            r.headers_mut()
                .insert("x-upstream-hop", "1".parse().unwrap());
            r
        }
    })
    .await;
    up.addr = Some(addr);
    up
}

/// A token request as received: (authorization header, content-type, body).
pub type TokenRequest = (Option<String>, Option<String>, String);

/// A real identity provider on 127.0.0.1:0.
pub struct Idp {
    pub addr: SocketAddr,
    pub issuer: String,
    pub keys: Arc<Mutex<Vec<Arc<SigningKey>>>>,
    pub jwks_hits: Arc<AtomicUsize>,
    pub jwks_fail: Arc<AtomicBool>,
    pub introspect_hits: Arc<AtomicUsize>,
    /// opaque token -> introspection response
    pub opaque: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    pub token_hits: Arc<AtomicUsize>,
    pub token_fail: Arc<AtomicBool>,
    pub token_expires_in: Arc<AtomicU64>,
    /// Token requests as received: (authorization header, content-type, body).
    pub token_requests: Arc<Mutex<Vec<TokenRequest>>>,
    /// (path, traceparent) of every request that carried a `traceparent`.
    pub traceparents: Arc<Mutex<Vec<(String, String)>>>,
}

pub const INTROSPECT_ID: &str = "gateway";
pub const INTROSPECT_SECRET: &str = "intro-s3cret";

impl Idp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn key(&self, i: usize) -> Arc<SigningKey> {
        self.keys.lock().unwrap()[i].clone()
    }

    /// A signed token with sensible defaults merged with `claims`.
    pub fn token_with(&self, key: &SigningKey, claims: serde_json::Value) -> String {
        let mut c = serde_json::json!({
            "iss": self.issuer,
            "aud": "https://bi-api.company.com",
            "sub": "user-1",
            "client_id": "sap-cx-dashboard",
            "scope": "analytics.read",
            "iat": now(),
            "exp": now() + 300,
        });
        for (k, v) in claims.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        key.sign("JWT", &c).unwrap()
    }

    pub fn token(&self, claims: serde_json::Value) -> String {
        self.token_with(&self.key(0), claims)
    }
}

pub async fn spawn_idp() -> Idp {
    let keys = Arc::new(Mutex::new(vec![
        Arc::new(SigningKey::from_pem(&std::fs::read(fixture("rsa-a.pem")).unwrap()).unwrap()),
        Arc::new(SigningKey::from_pem(&std::fs::read(fixture("ec256.pem")).unwrap()).unwrap()),
    ]));
    let jwks_hits = Arc::new(AtomicUsize::new(0));
    let jwks_fail = Arc::new(AtomicBool::new(false));
    let introspect_hits = Arc::new(AtomicUsize::new(0));
    let opaque: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
    let token_hits = Arc::new(AtomicUsize::new(0));
    let token_fail = Arc::new(AtomicBool::new(false));
    let token_expires_in = Arc::new(AtomicU64::new(3600));
    let token_requests: Arc<Mutex<Vec<_>>> = Arc::default();
    let issuer_cell: Arc<Mutex<String>> = Arc::default();
    let traceparents: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let tps = traceparents.clone();
    let (k, jh, jf, ih, op, th, tf, te, tr, ic) = (
        keys.clone(),
        jwks_hits.clone(),
        jwks_fail.clone(),
        introspect_hits.clone(),
        opaque.clone(),
        token_hits.clone(),
        token_fail.clone(),
        token_expires_in.clone(),
        token_requests.clone(),
        issuer_cell.clone(),
    );
    let addr = serve(move |req: Request<Incoming>| {
        let (k, jh, jf, ih, op, th, tf, te, tr, ic) = (
            k.clone(),
            jh.clone(),
            jf.clone(),
            ih.clone(),
            op.clone(),
            th.clone(),
            tf.clone(),
            te.clone(),
            tr.clone(),
            ic.clone(),
        );
        let tps = tps.clone();
        async move {
            let path = req.uri().path().to_owned();
            if let Some(tp) = req.headers().get("traceparent") {
                let tp = tp.to_str().unwrap().to_owned();
                tps.lock().unwrap().push((path.clone(), tp));
            }
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            let ctype = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let body =
                String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec())
                    .unwrap();
            match path.as_str() {
                "/jwks" => {
                    jh.fetch_add(1, Ordering::SeqCst);
                    if jf.load(Ordering::SeqCst) {
                        return json_resp(500, serde_json::json!({"error": "down"}));
                    }
                    let keys: Vec<serde_json::Value> =
                        k.lock().unwrap().iter().map(|k| k.jwk.clone()).collect();
                    json_resp(200, serde_json::json!({ "keys": keys }))
                }
                "/.well-known/openid-configuration" => {
                    let iss = ic.lock().unwrap().clone();
                    json_resp(
                        200,
                        serde_json::json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")}),
                    )
                }
                "/introspect" => {
                    ih.fetch_add(1, Ordering::SeqCst);
                    let expected =
                        tollgate::credentials::basic_header(INTROSPECT_ID, INTROSPECT_SECRET);
                    if auth.as_deref() != Some(expected.to_str().unwrap()) {
                        return json_resp(401, serde_json::json!({"error": "invalid_client"}));
                    }
                    let token = form_urlencoded::parse(body.as_bytes())
                        .find(|(k, _)| k == "token")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    let v = op
                        .lock()
                        .unwrap()
                        .get(&token)
                        .cloned()
                        .unwrap_or(serde_json::json!({"active": false}));
                    let v = match token.as_str() {
                        "answer-400" => {
                            return json_resp(
                                400,
                                serde_json::json!({"error": "unsupported_token_type"}),
                            )
                        }
                        "answer-500" => {
                            return json_resp(500, serde_json::json!({"error": "server_error"}))
                        }
                        _ => v,
                    };
                    json_resp(200, v)
                }
                "/token" => {
                    th.fetch_add(1, Ordering::SeqCst);
                    tr.lock().unwrap().push((auth, ctype, body));
                    if tf.load(Ordering::SeqCst) {
                        return json_resp(
                            503,
                            serde_json::json!({"error": "temporarily_unavailable"}),
                        );
                    }
                    let n = th.load(Ordering::SeqCst);
                    json_resp(
                        200,
                        serde_json::json!({
                            "access_token": format!("upstream-token-{n}"),
                            "token_type": "Bearer",
                            "expires_in": te.load(Ordering::SeqCst),
                        }),
                    )
                }
                _ => json_resp(404, serde_json::json!({"error": "not_found"})),
            }
        }
    })
    .await;
    let issuer = format!("http://{addr}");
    *issuer_cell.lock().unwrap() = issuer.clone();
    Idp {
        addr,
        issuer,
        keys,
        jwks_hits,
        jwks_fail,
        introspect_hits,
        opaque,
        token_hits,
        token_fail,
        token_expires_in,
        token_requests,
        traceparents,
    }
}

/// tollgate, in-process, on 127.0.0.1:0.
pub struct Gw {
    pub running: Option<tollgate::Running>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl Gw {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener"))
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }
    pub fn gateway(&self) -> &Arc<tollgate::Gateway> {
        &self.running.as_ref().unwrap().gateway
    }
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// `yaml` must say `listen: "127.0.0.1:0"`.
pub async fn spawn_gateway(yaml: &str) -> Gw {
    let gw = spawn_gateway_unready(yaml).await;
    let running = gw.running.as_ref().unwrap();
    // Wait for the first key fetches (each ends, fetched or failed, within its
    // fetch_timeout), like /readyz.
    eventually(
        "the gateway is ready (first key fetches done)",
        PATIENCE,
        async || running.gateway.ready(),
        |ready| *ready,
    )
    .await;
    gw
}

/// Like [`spawn_gateway`], without waiting for the first key fetches: for tests of
/// readiness itself. `yaml` must say `listen: "127.0.0.1:0"`.
pub async fn spawn_gateway_unready(yaml: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let gw = tollgate::Gateway::load(path).unwrap_or_else(|e| panic!("config rejected:\n{e}"));
    let running = tollgate::start(gw).await.unwrap();
    Gw {
        addr: running.public,
        admin: running.admin,
        running: Some(running),
        dir,
    }
}

pub fn client() -> reqwest::Client {
    tollgate::tls::install_default_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub async fn json_of(r: reqwest::Response) -> serde_json::Value {
    r.json().await.unwrap()
}

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawReply {
    pub text: String,
    /// The gateway closed the connection (rather than the reader giving up).
    pub closed: bool,
}

/// The length of the first complete HTTP/1.1 response at the start of `out`, if it is
/// all there (framed by Content-Length or chunked; otherwise only the close ends it).
fn complete_response(out: &[u8]) -> Option<usize> {
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        return (out.len() >= head_end + n).then_some(head_end + n);
    }
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let body = &out[head_end..];
        return body
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .filter(|i| *i == 0 || body[..*i].ends_with(b"\r\n"))
            .map(|i| head_end + i + 5);
    }
    None
}

/// Sends raw bytes on a fresh connection and reads what comes back until the gateway
/// closes the connection, or until a complete response is in and nothing more came for
/// `quiet` (so that a second, smuggled response would be seen). Waits up to
/// [`PATIENCE`] for the first response.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The gateway may answer (and close) before it has read everything we send.
    let _ = s.write_all(bytes).await;
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let wait = if complete_response(&out).is_some() {
            quiet
        } else {
            PATIENCE.saturating_sub(started.elapsed())
        };
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return RawReply {
                    text: String::from_utf8_lossy(&out).into_owned(),
                    closed: true,
                }
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                return RawReply {
                    text: String::from_utf8_lossy(&out).into_owned(),
                    closed: false,
                }
            }
        }
    }
}

/// [`raw_exchange`], the text only.
pub async fn raw(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> String {
    raw_exchange(addr, bytes, quiet).await.text
}

// ---------------------------------------------------------------- waiting

/// How long a test waits for something that must happen soon (a connection to close, a
/// gauge to settle, a reload to be applied, a process to exit) before it fails. Generous
/// on purpose: on a busy 2-core machine things take many times longer than on an idle
/// one, and a passing run never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How long a process a test starts (the tollgate binary, a node helper loading its
/// packages and generating keys) may take to say it is ready, on a busy machine.
pub const STARTUP: Duration = Duration::from_secs(180);

/// How often [`eventually`] and [`wait_until`] look again.
const POLL: Duration = Duration::from_millis(25);

/// Polls `probe` until `ok` holds for what it returns, and returns that value. After
/// `within`, panics naming `what`, the time waited and the last value observed.
///
/// For the test's own body (and what it awaits): an async closure's future is not
/// `Send` for every lifetime, so inside `tokio::spawn` poll by hand.
pub async fn eventually<T: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let started = Instant::now();
    loop {
        let v = probe().await;
        if ok(&v) {
            return v;
        }
        if started.elapsed() >= within {
            panic!(
                "{what}: not so after {:?}; last observed: {v:#?}",
                started.elapsed()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for code outside the async runtime (threads, `std::process`).
pub fn wait_until<T: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let started = Instant::now();
    loop {
        let v = probe();
        if ok(&v) {
            return v;
        }
        if started.elapsed() >= within {
            panic!(
                "{what}: not so after {:?}; last observed: {v:#?}",
                started.elapsed()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The value of `series` on the `/metrics` page at `base` (`http://host:port`) once
/// `ok` holds for it (see [`eventually`]); a missing series is `None`.
pub async fn metric_eventually(base: &str, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    eventually(
        &format!("{series} on {base}/metrics"),
        PATIENCE,
        async || series_value(&admin_metrics(base).await, series),
        |v| v.is_some_and(&ok),
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------- child processes

/// Sends `sig` (a name, `TERM`) to `target` (`1234`, or `-1234` for a process group).
fn send_signal(sig: &str, target: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A process the test started. Dropping it (the test ended, passed or panicked) kills
/// it by its PID (SIGKILL) and reaps it; one started with [`ChildGuard::spawn_group`]
/// leads a process group of its own, and the whole group is killed by its PGID, as are
/// the groups put in [`ChildGuard::extra_groups`] (a browser that a node helper started
/// in a session of its own).
pub struct ChildGuard {
    child: std::process::Child,
    what: String,
    group: bool,
    extra_groups: Arc<Mutex<Vec<u32>>>,
}

impl ChildGuard {
    /// Spawns `cmd`; `what` names it in messages.
    pub fn spawn(what: &str, cmd: &mut std::process::Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        ChildGuard {
            child,
            what: what.to_owned(),
            group: false,
            extra_groups: Arc::default(),
        }
    }

    /// Spawns `cmd` as the leader of a new process group (its PGID is its PID), so that
    /// whatever it starts in turn is killed with it.
    pub fn spawn_group(what: &str, cmd: &mut std::process::Command) -> ChildGuard {
        use std::os::unix::process::CommandExt;
        let mut g = ChildGuard::spawn(what, cmd.process_group(0));
        g.group = true;
        g
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's pipes (stdin, stdout, stderr) to take.
    pub fn child_mut(&mut self) -> &mut std::process::Child {
        &mut self.child
    }

    /// A list this guard also kills, as process groups, when dropped (shared with a
    /// thread that reads the child's output and learns them from it).
    pub fn extra_groups(&self) -> Arc<Mutex<Vec<u32>>> {
        self.extra_groups.clone()
    }

    /// Sends `sig` (`TERM`, `HUP`, ...) to the child, by its PID.
    pub fn signal(&self, sig: &str) {
        assert!(
            send_signal(sig, &self.child.id().to_string()),
            "kill -{sig} {} ({}) failed",
            self.child.id(),
            self.what
        );
    }

    /// Kills it now (SIGKILL, its group too if it leads one) and reaps it.
    pub fn kill(&mut self) {
        if self.group {
            send_signal("KILL", &format!("-{}", self.child.id()));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Waits (at most `within`) for the child to exit; panics if it does not.
    pub fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let what = format!("{} (pid {}) exits", self.what, self.child.id());
        wait_until(&what, within, || self.try_wait(), Option::is_some).unwrap()
    }

    /// [`ChildGuard::exit_within`] without blocking the async runtime.
    pub async fn exited_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let what = format!("{} (pid {}) exits", self.what, self.child.id());
        eventually(&what, within, async || self.try_wait(), Option::is_some)
            .await
            .unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        for pgid in self
            .extra_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            send_signal("KILL", &format!("-{pgid}"));
        }
        if self.group {
            // Also after the leader exited: what it started may still run in its group.
            // (The group lives on, and keeps its number, as long as any member does.)
            send_signal("KILL", &format!("-{}", self.child.id()));
        }
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The output of a command run to its end with [`output_within`].
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) to its end; panics (after
/// killing it) if it runs longer than `within`.
pub fn output_within(what: &str, cmd: &mut std::process::Command, within: Duration) -> Finished {
    output_with_stdin(what, cmd, None, within)
}

/// [`output_within`], with `stdin` (if any) written to the command's stdin, then closed.
pub fn output_with_stdin(
    what: &str,
    cmd: &mut std::process::Command,
    stdin: Option<&[u8]>,
    within: Duration,
) -> Finished {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut g = ChildGuard::spawn(
        what,
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    if let Some(input) = stdin {
        // It may exit before reading it all (a refusal): a broken pipe is not our error.
        let mut pipe = g.child_mut().stdin.take().unwrap();
        let _ = pipe.write_all(input);
    }
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = drain(Box::new(g.child_mut().stdout.take().unwrap()));
    let stderr = drain(Box::new(g.child_mut().stderr.take().unwrap()));
    let status = g.exit_within(within);
    Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The real `tollgate` binary, started on a config; stderr is drained for its whole
/// life (into `logs`), and the listening addresses are read from the startup line.
/// Killed when dropped (see [`ChildGuard`]).
pub struct Binary {
    pub process: ChildGuard,
    pub public: String,
    pub admin: Option<String>,
    pub logs: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Binary {
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Everything it has logged so far.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits for a log line that `ok` accepts, and returns it.
    pub async fn log_line(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let found = eventually(
            what,
            PATIENCE,
            async || {
                let lines = self.logs.lock().unwrap();
                lines.iter().find(|l| ok(l)).cloned().ok_or(lines.len())
            },
            Result::is_ok,
        )
        .await;
        found.unwrap()
    }

    /// SIGTERM; waits for the exit and for the last log line to be read; returns the
    /// exit status. Every log line is in `logs` afterwards.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.signal("TERM");
        let status = self.process.exited_within(PATIENCE).await;
        self.finish_reading().await;
        status
    }

    /// Waits for the stderr reader to reach the end of the output (the process exited).
    async fn finish_reading(&mut self) {
        let reader = self.reader.take().expect("read once");
        eventually(
            "the tollgate binary's stderr is read to its end",
            PATIENCE,
            async || reader.is_finished(),
            |done| *done,
        )
        .await;
        reader.join().unwrap();
    }
}

pub fn spawn_binary(config: &std::path::Path, args: &[&str]) -> Binary {
    spawn_binary_env(config, args, &[])
}

/// The outbound proxy variables a spawned tollgate never inherits from the test run.
pub const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// [`spawn_binary`] with `env` set for the process (the test process's own
/// environment is never changed; proxy variables are not inherited).
pub fn spawn_binary_env(config: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Binary {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let mut process = ChildGuard::spawn(
        "the tollgate binary",
        cmd.env_remove("TOLLGATE_CONFIG")
            .env("RUST_LOG", "info")
            .args(args)
            .arg("--config")
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let stderr = process.child_mut().stderr.take().unwrap();
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(p) = line.find("public=") {
                let word = |i: usize| line[i..].split_whitespace().next().unwrap_or("").to_owned();
                let admin = line
                    .find("admin=")
                    .map(|a| word(a + 6))
                    .filter(|a| a != "-");
                let _ = tx.send((word(p + 7), admin));
            }
            sink.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(STARTUP) {
        Ok((public, admin)) => Binary {
            process,
            public,
            admin,
            logs,
            reader: Some(reader),
        },
        Err(_) => panic!(
            "tollgate did not start within {STARTUP:?} (exit: {:?}):\n{}",
            process.try_wait(),
            logs.lock().unwrap().join("\n")
        ),
    }
}

/// The value of one exact series (`name` or `name{labels}`) in Prometheus text.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `GET base + path` on an admin listener (`base`: `http://host:port`), 200 asserted.
async fn admin_ok(base: &str, path: &str) -> reqwest::Response {
    let r = client().get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r
}

/// `GET /admin/status` of the admin listener at `base` (200 asserted), as JSON.
pub async fn admin_status_at(base: &str) -> serde_json::Value {
    admin_ok(base, "/admin/status").await.json().await.unwrap()
}

/// `GET /admin/status` of `gw` (200 asserted), as JSON.
pub async fn admin_status(gw: &Gw) -> serde_json::Value {
    admin_status_at(&gw.admin_url("")).await
}

/// Upstream `name`'s entry in `gw`'s `/admin/status`.
pub async fn upstream_status(gw: &Gw, name: &str) -> serde_json::Value {
    let status = admin_status(gw).await;
    status["upstreams"]
        .as_array()
        .expect("upstreams in /admin/status")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("upstream {name} in /admin/status: {status}"))
        .clone()
}

/// The `/metrics` page of an admin listener (`base`: `http://host:port`).
pub async fn admin_metrics(base: &str) -> String {
    admin_ok(base, "/metrics").await.text().await.unwrap()
}
