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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
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
/// `/slow/<ms>` waits first; `/status/<code>` answers that status;
/// `/bytes/<n>` answers n bytes. Bodies are read whole (and counted).
pub async fn spawn_upstream() -> Upstream {
    let mut up = Upstream::default();
    let seen = up.seen.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let seen = seen.clone();
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
        async move {
            let path = req.uri().path().to_owned();
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let gw = tollgate::Gateway::load(path).unwrap_or_else(|e| panic!("config rejected:\n{e}"));
    let running = tollgate::start(gw).await.unwrap();
    // Wait for first key fetches, like /readyz.
    for _ in 0..200 {
        if running.gateway.ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// The standard issuer block for the test IdP.
pub fn issuer_yaml(idp: &Idp, name: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    issuer: \"{}\"\n    jwks_uri: \"{}\"\n    audiences: [\"https://bi-api.company.com\"]\n{extra}",
        idp.issuer,
        idp.url("/jwks")
    )
}

pub async fn json_of(r: reqwest::Response) -> serde_json::Value {
    r.json().await.unwrap()
}

/// Sends raw bytes on a fresh connection and reads until close or timeout.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The real `tollgate` binary, started on a config; stderr is drained for its whole
/// life (into `logs`), and the listening addresses are read from the startup line.
pub struct Binary {
    pub child: std::process::Child,
    pub public: String,
    pub admin: Option<String>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

pub fn spawn_binary(config: &std::path::Path, args: &[&str]) -> Binary {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .env_remove("TOLLGATE_CONFIG")
        .env("RUST_LOG", "info")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
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
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok((public, admin)) => Binary {
            child,
            public,
            admin,
            logs,
        },
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tollgate did not start:\n{}",
                logs.lock().unwrap().join("\n")
            );
        }
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

/// The `/metrics` page of an admin listener (`base`: `http://host:port`).
pub async fn admin_metrics(base: &str) -> String {
    let r = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}
