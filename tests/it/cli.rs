//! The `tollgate` binary: validate, run, SIGTERM, hash-secret.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::common::*;

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.env_remove("TOLLGATE_CONFIG").env("RUST_LOG", "info");
    c
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("gateway.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

const VALID: &str = r#"server:
  listen: "127.0.0.1:0"
upstreams:
  - name: bi
    url: "http://127.0.0.1:9000"
routes:
  - name: api
    path_prefix: /api
    upstream: bi
    auth: none
"#;

// Behaviour: validate exits 0 with a one-line summary for a valid file.
#[test]
fn validate_ok() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, VALID);
    let out = output_within(
        "tollgate validate",
        bin().args(["validate", "--config"]).arg(&p),
        PATIENCE,
    );
    let stdout = out.stdout;
    assert!(out.status.success(), "{stdout}\n{}", out.stderr);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("1 route(s)"));
}

// Behaviour: validate reports EVERY problem with file:line:col and key path, exit 1.
#[test]
fn validate_reports_every_problem_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let text = "server:\n  listen: \"127.0.0.1:0\"\n  limits:\n    request_timeout: 30\nupstreams:\n  - name: bi\n    url: \"http://127.0.0.1:9000\"\n    timout: 5s\n  - name: cpi\n    url: \"http://127.0.0.1:9001\"\n    auth:\n      type: basic\n      username: u\n      password: \"${env:TOLLGATE_TEST_SURELY_UNSET}\"\nroutes:\n  - name: analytics\n    path_prefix: /v2/analytics\n    upstream: bi-backend\n    auth:\n      scopes: [\u{201C}analytics.read\u{201D}]\n";
    let p = write(&dir, text);
    let out = output_within(
        "tollgate validate",
        bin().args(["validate", "--config"]).arg(&p),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = out.stdout;
    let f = p.display().to_string();
    let expect = [
        format!("{f}:4:22 server.limits.request_timeout: "),
        format!("{f}:8:5 upstreams[0].timout: unknown key \"timout\" (did you mean \"timeout\"?)"),
        format!("{f}:14:17 upstreams[1].auth.password: environment variable TOLLGATE_TEST_SURELY_UNSET is not set"),
        format!("{f}:18:15 routes[0].upstream: unknown upstream \"bi-backend\" (did you mean \"bi\"?)"),
        format!("{f}:20:16 routes[0].auth.scopes[0]: value is wrapped in curly quotes"),
    ];
    for e in &expect {
        assert!(
            stdout.lines().any(|l| l.starts_with(e.as_str())),
            "missing {e:?} in:\n{stdout}"
        );
    }
    // Also: no issuers configured, so the auth block can never pass.
    assert!(
        stdout.contains("routes[0].auth: no issuers are configured"),
        "{stdout}"
    );
}

// Behaviour: run refuses to start on an invalid file and says why.
#[test]
fn run_refuses_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, &VALID.replace("upstream: bi", "upstream: nope"));
    let out = output_within(
        "tollgate run (invalid config)",
        bin().args(["run", "--config"]).arg(&p),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = out.stderr;
    assert!(
        stderr.contains("routes[0].upstream: unknown upstream \"nope\""),
        "{stderr}"
    );
}

// Behaviour: SIGTERM stops accepting, lets the in-flight request finish, exits 0.
#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, &VALID.replace("http://127.0.0.1:9000", &up.url()));
    let mut bin = spawn_binary(&p, &["run"]);
    let addr = bin.public.clone();
    let url = format!("http://{addr}/api/hold");
    let inflight =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    eventually(
        "the request is in flight (held at the upstream)",
        PATIENCE,
        async || up.count(),
        |n| *n == 1,
    )
    .await;
    bin.process.signal("TERM");
    // Draining: the listener is closed while the request is still held upstream.
    bin.log_line("tollgate logs that it is shutting down", |l| {
        l.contains("shutting down")
    })
    .await;
    eventually(
        "the listener is closed",
        PATIENCE,
        async || tokio::net::TcpStream::connect(&addr).await.is_err(),
        |refused| *refused,
    )
    .await;
    assert!(!inflight.is_finished(), "the held request ended early");
    up.release();
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "in-flight request must complete"
    );
    let status = bin.process.exited_within(PATIENCE).await;
    assert!(status.success(), "{status:?}");
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "still accepting after exit"
    );
}

// Behaviour: hash-secret reads one line and prints an argon2id PHC string that verifies.
#[test]
fn hash_secret_prints_argon2id() {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let mut child = ChildGuard::spawn(
        "tollgate hash-secret",
        bin()
            .arg("hash-secret")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    child
        .child_mut()
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cr:et with spaces\n")
        .unwrap();
    let mut stdout = child.child_mut().stdout.take().unwrap();
    let status = child.exit_within(PATIENCE);
    let mut h = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut h).unwrap();
    assert!(status.success());
    let h = h.trim().to_owned();
    assert!(h.starts_with("$argon2id$"), "{h}");
    let parsed = PasswordHash::new(&h).unwrap();
    assert!(argon2::Argon2::default()
        .verify_password(b"s3cr:et with spaces", &parsed)
        .is_ok());
    assert!(argon2::Argon2::default()
        .verify_password(b"s3cr:et with spaces\n", &parsed)
        .is_err());
}

// Behaviour: `tollgate --config FILE` alone serves; TOLLGATE_CONFIG names the file;
// --log-format json writes one JSON object per line.
#[tokio::test]
async fn bare_config_env_config_and_json_logs() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, &VALID.replace("http://127.0.0.1:9000", &up.url()));
    let mut gateway = spawn_binary(&p, &[]);
    assert_eq!(
        client()
            .get(format!("http://{}/api/bare", gateway.public))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(gateway.terminate().await.success());

    let mut child = ChildGuard::spawn(
        "tollgate run --log-format json",
        bin()
            .env("TOLLGATE_CONFIG", &p)
            .args(["run", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let stderr = child.child_mut().stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stderr for the life of the process.
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if l.contains("tollgate listening") {
                let _ = tx.send(l);
            }
        }
    });
    let line = rx.recv_timeout(STARTUP).expect("listening line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["level"], "INFO");
    assert!(v["public"].as_str().unwrap().starts_with("127.0.0.1:"));
    child.signal("TERM");
    assert!(child.exited_within(PATIENCE).await.success());
}

// Behaviour: a SIGTERM sent the moment tollgate says it listens still drains and exits 0
// (the signal handlers used to be installed only after the listeners: 14 of 100 such
// SIGTERMs killed it, exit by signal; this test caught it 3 times in 4 with 20
// attempts). Repeated, since it was a race.
#[tokio::test]
async fn sigterm_right_after_start_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, VALID);
    for i in 0..50 {
        let mut gateway = spawn_binary(&p, &["run"]);
        let status = gateway.terminate().await;
        assert!(status.success(), "attempt {i}: {status:?}");
    }
}
