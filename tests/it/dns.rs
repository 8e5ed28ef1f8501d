//! `upstreams[].dns: {mode: per_address}`: a name expanded to one endpoint per address,
//! resolved in the background through a real DNS server (Debian's `dnsmasq`, on a free
//! loopback port, its answers edited through an `--addn-hosts` file and SIGHUP), with
//! real upstream servers on several loopback addresses (127.0.0.2, 127.0.0.3, ...: all
//! of 127.0.0.0/8 is loopback on Linux) sharing one port.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::common::*;
use crate::gwconfig::GatewayConfig;

// ---------------------------------------------------------------- the DNS server

/// A real `dnsmasq` answering from a hosts file only (no upstream servers, no
/// /etc/hosts), on a free loopback port, killed by PID when dropped.
struct Dnsmasq {
    guard: Option<ChildGuard>,
    port: u16,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts it answering `records` (`(address, name)`); `.test` and `company.com`
    /// names it does not know are NXDOMAIN.
    fn start(records: &[(&str, &str)]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        write_hosts(&hosts, records);
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_udp_and_tcp_port();
            let log = dir.path().join(format!("dnsmasq-{port}.log"));
            let program = if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
                "/usr/sbin/dnsmasq"
            } else {
                "dnsmasq"
            };
            let mut cmd = std::process::Command::new(program);
            cmd.args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
                .arg(format!("--addn-hosts={}", hosts.display()))
                .arg(format!("--port={port}"))
                .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
                .args(["--pid-file=", "--local=/test/", "--local=/company.com/"])
                .args(["--log-facility=-", "--log-queries"])
                .stdin(std::process::Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(&log).unwrap());
            // dnsmasq drops root privileges to `nobody` by default; the hosts file is in
            // a private temp directory.
            if is_root() {
                cmd.arg("--user=root");
            }
            let mut guard = ChildGuard::spawn("dnsmasq (apt-get install dnsmasq-base)", &mut cmd);
            let started = Instant::now();
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Dnsmasq {
                        guard: Some(guard),
                        port,
                        hosts,
                        _dir: dir,
                    };
                }
                if guard.try_wait().is_some() || started.elapsed() > STARTUP {
                    last = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last.contains("Address already in use") && !last.contains("in use") {
                panic!("dnsmasq did not start:\n{last}");
            }
        }
        panic!("dnsmasq found no free port in 10 attempts; last log:\n{last}");
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Answers `records` from now on (hosts file rewritten, SIGHUP).
    fn set(&self, records: &[(&str, &str)]) {
        write_hosts(&self.hosts, records);
        self.guard.as_ref().expect("dnsmasq runs").signal("HUP");
    }

    fn kill(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
    }
}

fn write_hosts(path: &PathBuf, records: &[(&str, &str)]) {
    let text: String = records
        .iter()
        .map(|(addr, name)| format!("{addr} {name}\n"))
        .collect();
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A port free for both UDP and TCP on 127.0.0.1 (DNS listens on both).
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

// ---------------------------------------------------------------- the upstreams

/// One upstream server on one loopback address; records each request's path and
/// `Host`; `/hold` waits until released; answers with its address.
struct Backend {
    ip: IpAddr,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    released: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Backend {
    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }

    fn hosts(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, h)| h.clone())
            .collect()
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.release.notify_waiters();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.release();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

type Tls = Option<tokio_rustls::TlsAcceptor>;

/// Backends on 127.0.0.2, 127.0.0.3, ... (`n` of them), all on one port; with `tls`,
/// https with the fixtures' certificate (names localhost and api.company.com, not
/// these addresses).
async fn backends(n: u8, tls: bool) -> (u16, Vec<Backend>) {
    let acceptor: Tls = tls.then(|| {
        tollgate::tls::install_default_provider();
        let certs = tollgate::tls::load_certs(&fixture("server.pem")).unwrap();
        let key = tollgate::tls::load_key(&fixture("server-key.pem")).unwrap();
        let cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    'port: for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..n {
            match TcpListener::bind((format!("127.0.0.{}", 2 + i).as_str(), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'port,
            }
        }
        let list = listeners
            .into_iter()
            .map(|l| serve(l, acceptor.clone()))
            .collect();
        return (port, list);
    }
    panic!("no port free on 127.0.0.2..{} after 20 tries", 1 + n);
}

fn serve(listener: TcpListener, tls: Tls) -> Backend {
    let ip = listener.local_addr().unwrap().ip();
    let b = Backend {
        ip,
        seen: Arc::default(),
        released: Arc::default(),
        release: Arc::default(),
        tasks: Arc::default(),
    };
    let (seen, released, release) = (b.seen.clone(), b.released.clone(), b.release.clone());
    let tasks = b.tasks.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, released, release) = (seen.clone(), released.clone(), release.clone());
            let tls = tls.clone();
            let conn = tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (seen, released, release) =
                        (seen.clone(), released.clone(), release.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        seen.lock().unwrap().push((path.clone(), host));
                        if path == "/hold" {
                            loop {
                                let notified = release.notified();
                                if released.load(Ordering::SeqCst) {
                                    break;
                                }
                                notified.await;
                            }
                        }
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(ip.to_string()))))
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
            tasks.lock().unwrap().push(conn.abort_handle());
        }
    });
    b.tasks.lock().unwrap().push(accept.abort_handle());
    b
}

// ---------------------------------------------------------------- helpers

fn config(dns: &Dnsmasq, url: &str, extra: serde_json::Value) -> String {
    let mut up = json!({"dns": {"mode": "per_address", "refresh": "500ms", "min_refresh": "50ms"}});
    crate::gwconfig::merge(&mut up, extra);
    GatewayConfig::new()
        .merge(
            "server",
            json!({"dns": {"servers": [dns.server()], "query_timeout": "1s"}}),
        )
        .upstream_with("svc", url, up)
        .open_route("all", "/", "svc")
        .yaml()
}

async fn status(gw: &Gw) -> serde_json::Value {
    upstream_status(gw, "svc").await
}

/// The endpoint labels of upstream `svc` in /admin/status, sorted.
async fn endpoint_labels(gw: &Gw) -> Vec<String> {
    let mut v: Vec<String> = status(gw).await["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

async fn wait_for_endpoints(gw: &Gw, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    eventually(
        &format!("/admin/status lists exactly {want:?}"),
        PATIENCE,
        async || endpoint_labels(gw).await,
        |l| *l == want,
    )
    .await;
}

fn label(b: &Backend, port: u16) -> String {
    SocketAddr::new(b.ip, port).to_string()
}

/// Sends `n` GETs of `path`; every one must be answered 200; returns the answers by
/// backend address.
async fn spread(c: &reqwest::Client, gw: &Gw, path: &str, n: usize) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for _ in 0..n {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        *by.entry(r.text().await.unwrap()).or_insert(0) += 1;
    }
    by
}

// ---------------------------------------------------------------- tests

// Behaviour: a name with two A records is two endpoints; requests spread over both
// (round-robin: evenly), each sent with the name as Host; /admin/status shows each
// address with the name it came from. An address removed from DNS leaves the list at
// the next refresh and gets no new request, while a request it had in flight finishes
// on it (drained); a new address joins and gets requests.
#[tokio::test]
async fn addresses_are_endpoints_and_follow_dns() {
    let (port, b) = backends(3, false).await;
    let dns = Dnsmasq::start(&[("127.0.0.2", "svc.test"), ("127.0.0.3", "svc.test")]);
    let gw = spawn_gateway(&config(&dns, &format!("http://svc.test:{port}"), json!({}))).await;
    wait_for_endpoints(&gw, &[label(&b[0], port), label(&b[1], port)]).await;
    let up = status(&gw).await;
    assert_eq!(up["dns"]["state"], "resolved", "{up:#}");
    assert_eq!(up["dns"]["name"], format!("svc.test:{port}"));
    for e in up["endpoints"].as_array().unwrap() {
        assert_eq!(e["dns_name"], format!("svc.test:{port}"), "{e:#}");
        assert_eq!(e["healthy"], true);
    }

    let c = client();
    let by = spread(&c, &gw, "/a", 20).await;
    assert_eq!(by.get("127.0.0.2"), Some(&10), "{by:?}");
    assert_eq!(by.get("127.0.0.3"), Some(&10), "{by:?}");
    for backend in &b[..2] {
        assert!(
            backend
                .hosts()
                .iter()
                .all(|h| *h == format!("svc.test:{port}")),
            "{:?}",
            backend.hosts()
        );
    }

    // A request in flight on 127.0.0.2 while it leaves DNS.
    dns.set(&[("127.0.0.2", "svc.test")]);
    wait_for_endpoints(&gw, &[label(&b[0], port)]).await;
    let held = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/hold"));
        async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    eventually(
        "the held request reached 127.0.0.2",
        PATIENCE,
        async || b[0].hits("/hold"),
        |n| *n == 1,
    )
    .await;
    dns.set(&[("127.0.0.3", "svc.test")]);
    wait_for_endpoints(&gw, &[label(&b[1], port)]).await;
    let before = b[0].hits("/b");
    let by = spread(&c, &gw, "/b", 10).await;
    assert_eq!(by.get("127.0.0.3"), Some(&10), "{by:?}");
    assert_eq!(
        b[0].hits("/b"),
        before,
        "the removed address got new requests"
    );
    b[0].release();
    assert_eq!(
        held.await.unwrap(),
        (200, "127.0.0.2".to_owned()),
        "the drained address finished its request"
    );

    // A new address joins.
    dns.set(&[("127.0.0.3", "svc.test"), ("127.0.0.4", "svc.test")]);
    wait_for_endpoints(&gw, &[label(&b[1], port), label(&b[2], port)]).await;
    let by = spread(&c, &gw, "/c", 10).await;
    assert_eq!(by.get("127.0.0.3"), Some(&5), "{by:?}");
    assert_eq!(by.get("127.0.0.4"), Some(&5), "{by:?}");
    assert_eq!(b[0].hits("/c"), 0);
    gw.stop().await;
}

// Behaviour: when the DNS server goes away, resolutions fail, that is shown
// (/admin/status, /readyz) and counted, and the last good addresses keep serving.
#[tokio::test]
async fn dns_outage_keeps_the_last_good_list() {
    let (port, b) = backends(2, false).await;
    let mut dns = Dnsmasq::start(&[("127.0.0.2", "svc.test"), ("127.0.0.3", "svc.test")]);
    let gw = spawn_gateway(&config(&dns, &format!("http://svc.test:{port}"), json!({}))).await;
    wait_for_endpoints(&gw, &[label(&b[0], port), label(&b[1], port)]).await;
    dns.kill();
    let up = eventually(
        "resolutions fail once the DNS server is gone",
        PATIENCE,
        async || status(&gw).await,
        |u| u["dns"]["state"] == "failing" && u["dns"]["failed_resolutions"].as_u64() >= Some(2),
    )
    .await;
    assert_eq!(up["dns"]["addresses"], 2, "{up:#}");
    assert!(up["dns"]["last_error"].as_str().is_some(), "{up:#}");
    let by = spread(&client(), &gw, "/x", 10).await;
    assert_eq!(by.get("127.0.0.2"), Some(&5), "{by:?}");
    assert_eq!(by.get("127.0.0.3"), Some(&5), "{by:?}");
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body = json_of(ready).await;
    assert_eq!(body["upstream_dns"][0]["upstream"], "svc", "{body:#}");
    assert_eq!(body["upstream_dns"][0]["state"], "failing", "{body:#}");
    assert_eq!(body["upstream_dns"][0]["addresses"], 2, "{body:#}");
    gw.stop().await;
}

// Behaviour: a name without any address at the start is not a crash: the gateway is
// ready, /readyz names the upstream as having no addresses, its requests are answered
// 502 saying so; once the name has an address, it is served.
#[tokio::test]
async fn no_address_at_start_then_one() {
    let (port, b) = backends(1, false).await;
    let dns = Dnsmasq::start(&[("127.0.0.9", "other.test")]);
    let gw = spawn_gateway(&config(&dns, &format!("http://svc.test:{port}"), json!({}))).await;
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body = json_of(ready).await;
    assert_eq!(body["upstream_dns"][0]["state"], "no_addresses", "{body:#}");
    let r = client().get(gw.url("/a")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let e = json_of(r).await;
    assert_eq!(e["error"], "bad_gateway", "{e:#}");
    assert!(
        e["error_description"]
            .as_str()
            .unwrap()
            .contains("has no known address"),
        "{e:#}"
    );
    dns.set(&[("127.0.0.2", "svc.test")]);
    wait_for_endpoints(&gw, &[label(&b[0], port)]).await;
    let by = spread(&client(), &gw, "/a", 3).await;
    assert_eq!(by.get("127.0.0.2"), Some(&3), "{by:?}");
    gw.stop().await;
}

// Behaviour: an https upstream by name is reached at each of its addresses, and every
// connection verifies the certificate for the name (the certificate does not name the
// addresses: verifying against them would fail) and sends the name as SNI and Host.
// Active health checks run per address.
#[tokio::test]
async fn tls_by_name_per_address() {
    let (port, b) = backends(2, true).await;
    let dns = Dnsmasq::start(&[
        ("127.0.0.2", "api.company.com"),
        ("127.0.0.3", "api.company.com"),
    ]);
    let yaml = config(
        &dns,
        &format!("https://api.company.com:{port}"),
        json!({
            "ca": fixture("ca.pem").display().to_string(),
            "health_check": {"path": "/health", "interval": "100ms", "healthy": 1, "unhealthy": 1},
        }),
    );
    let gw = spawn_gateway(&yaml).await;
    wait_for_endpoints(&gw, &[label(&b[0], port), label(&b[1], port)]).await;
    let by = spread(&client(), &gw, "/secure", 10).await;
    assert_eq!(by.get("127.0.0.2"), Some(&5), "{by:?}");
    assert_eq!(by.get("127.0.0.3"), Some(&5), "{by:?}");
    for backend in &b {
        assert!(
            backend
                .hosts()
                .iter()
                .all(|h| *h == format!("api.company.com:{port}")),
            "{:?}",
            backend.hosts()
        );
    }
    eventually(
        "each address passes its own health check",
        PATIENCE,
        async || {
            let up = status(&gw).await;
            up["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["health_check"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        },
        |v| v.len() == 2 && v.iter().all(|s| s == "passing"),
    )
    .await;
    assert!(b[0].hits("/health") > 0 && b[1].hits("/health") > 0);
    gw.stop().await;
}

// Behaviour: per_address is refused where it cannot work, with located messages.
#[test]
fn per_address_refusals() {
    let base = |up: serde_json::Value| {
        GatewayConfig::new()
            .set("upstreams", json!([up]))
            .open_route("all", "/", "svc")
            .yaml()
    };
    let e = crate::gwconfig::load_error(&base(json!({
        "name": "svc", "urls": ["http://a.test:1", "http://b.test:1"],
        "dns": {"mode": "per_address"},
    })));
    assert!(
        e.contains("upstreams[0].dns.mode") && e.contains("not several urls"),
        "{e}"
    );
    let e = crate::gwconfig::load_error(&base(json!({
        "name": "svc", "url": "http://a.test:1", "proxy": "http://127.0.0.1:3128",
        "dns": {"mode": "per_address"},
    })));
    assert!(e.contains("outbound proxy"), "{e}");
    let e = crate::gwconfig::load_error(&base(json!({
        "name": "svc", "url": "http://a.test:1", "dns": {"refresh": "5s"},
    })));
    assert!(
        e.contains("upstreams[0].dns.refresh") && e.contains("per_address"),
        "{e}"
    );
    let e = crate::gwconfig::load_error(&base(json!({
        "name": "svc", "url": "http://a.test:1",
        "dns": {"mode": "per_address", "refresh": "1s", "min_refresh": "2s"},
    })));
    assert!(e.contains("upstreams[0].dns.min_refresh"), "{e}");
    let e = crate::gwconfig::load_error(
        &GatewayConfig::new()
            .merge("server", json!({"dns": {"servers": ["dns.example:53"]}}))
            .upstream("svc", "http://a.test:1")
            .open_route("all", "/", "svc")
            .yaml(),
    );
    assert!(e.contains("server.dns.servers[0]"), "{e}");
}
