//! A real `redis-server` (Debian package `redis-server`) for tests, on a free loopback
//! port, killed by PID when the guard drops (a panicking test included).
//!
//! Redis cannot pick its own port (`--port 0` disables TCP), so a free port is found by
//! binding 127.0.0.1:0 and closing it; if another process takes it before Redis binds,
//! Redis exits with "Address already in use" and the start is retried on a new port.

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::fixture;

const BINARY: &str = "redis-server";

/// How the server is started.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Serve TLS only (no plain port), with tests/fixtures/server.pem signed by ca.pem.
    pub tls: bool,
    /// With `tls`: require a client certificate signed by ca.pem.
    pub tls_client_auth: bool,
    /// `requirepass`.
    pub password: Option<String>,
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    opts: RedisOptions,
    dir: tempfile::TempDir,
    starts: u32,
}

impl RedisServer {
    /// A plain server on 127.0.0.1.
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    pub fn start_with(opts: RedisOptions) -> RedisServer {
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port();
            let mut s = RedisServer {
                child: None,
                port,
                opts: opts.clone(),
                dir: tempfile::tempdir().expect("temp dir for redis"),
                starts: 0,
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(Start::PortTaken(log)) => last = log,
                Err(Start::Failed(log)) => panic!("redis-server did not start:\n{log}"),
            }
        }
        panic!("redis-server found no free port in 10 attempts; last log:\n{last}");
    }

    /// `redis://127.0.0.1:PORT/0` or `rediss://localhost:PORT/0` (the name in server.pem),
    /// with the password if one is set.
    pub fn url(&self) -> String {
        let auth = self
            .opts
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        if self.opts.tls {
            format!("rediss://{auth}localhost:{}/0", self.port)
        } else {
            format!("redis://{auth}127.0.0.1:{}/0", self.port)
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL by PID, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (after [`RedisServer::kill`]), empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(Start::PortTaken(log)) if Instant::now() < deadline => {
                    let _ = log;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(Start::PortTaken(log)) | Err(Start::Failed(log)) => {
                    panic!("redis-server did not restart on port {}:\n{log}", self.port)
                }
            }
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing (a wedged server).
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// A plain connection for inspecting what the server holds (not for TLS servers).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        assert!(!self.opts.tls, "inspect TLS servers through the store");
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    fn spawn(&mut self) -> Result<(), Start> {
        self.starts += 1;
        let log_path = self.log_path();
        let log = std::fs::File::create(&log_path).expect("redis log file");
        let mut cmd = Command::new(BINARY);
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--databases", "1", "--logfile", ""])
            .arg("--dir")
            .arg(self.dir.path());
        if self.opts.tls {
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(fixture("server.pem"))
                .arg("--tls-key-file")
                .arg(fixture("server-key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(fixture("ca.pem"))
                .args([
                    "--tls-auth-clients",
                    if self.opts.tls_client_auth {
                        "yes"
                    } else {
                        "no"
                    },
                ]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        if let Some(p) = &self.opts.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {BINARY} ({e}): install the Debian package redis-server")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = read(&log_path);
            if text.contains("Ready to accept connections") {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                .unwrap_or(true);
            if exited || Instant::now() > deadline {
                self.kill();
                let text = read(&log_path);
                return Err(if text.contains("Address already in use") {
                    Start::PortTaken(text)
                } else {
                    Start::Failed(text)
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Start {
    PortTaken(String),
    Failed(String),
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

fn read(path: &PathBuf) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}
