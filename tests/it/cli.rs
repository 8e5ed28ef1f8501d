//! The `tollgate` binary: validate, run, SIGTERM, hash-secret.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let out = bin()
        .args(["validate", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("1 route(s)"));
}

// Behaviour: validate reports EVERY problem with file:line:col and key path, exit 1.
#[test]
fn validate_reports_every_problem_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let text = "server:\n  listen: \"127.0.0.1:0\"\n  limits:\n    request_timeout: 30\nupstreams:\n  - name: bi\n    url: \"http://127.0.0.1:9000\"\n    timout: 5s\n  - name: cpi\n    url: \"http://127.0.0.1:9001\"\n    auth:\n      type: basic\n      username: u\n      password: \"${env:TOLLGATE_TEST_SURELY_UNSET}\"\nroutes:\n  - name: analytics\n    path_prefix: /v2/analytics\n    upstream: bi-backend\n    auth:\n      scopes: [\u{201C}analytics.read\u{201D}]\n";
    let p = write(&dir, text);
    let out = bin()
        .args(["validate", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
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
    let out = bin().args(["run", "--config"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("routes[0].upstream: unknown upstream \"nope\""),
        "{stderr}"
    );
}

/// Starts the binary and returns (child, public address).
pub fn start_binary(config: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    let b = spawn_binary(config, args);
    (b.child, b.public)
}

// Behaviour: SIGTERM stops accepting, lets the in-flight request finish, exits 0.
#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, &VALID.replace("http://127.0.0.1:9000", &up.url()));
    let (mut child, addr) = start_binary(&p, &["run"]);
    let url = format!("http://{addr}/api/slow/1500");
    let inflight =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "in-flight request must complete"
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
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
    let mut child = bin()
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cr:et with spaces\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8(out.stdout).unwrap().trim().to_owned();
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
    let (mut child, addr) = start_binary(&p, &[]);
    assert_eq!(
        client()
            .get(format!("http://{addr}/api/bare"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let mut child = bin()
        .env("TOLLGATE_CONFIG", &p)
        .args(["run", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stderr for the life of the process.
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if l.contains("tollgate listening") {
                let _ = tx.send(l);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("listening line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["level"], "INFO");
    assert!(v["public"].as_str().unwrap().starts_with("127.0.0.1:"));
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Kills the child when the test ends, panics included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) for the child to exit; returns its status and stderr.
fn exit_of(child: std::process::Child) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    guard
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

const WITH_WARNING: &str = r#"server:
  listen: "127.0.0.1:0"
issuers:
  - name: corp
    issuer: "https://idp.example.com"
    jwks_uri: "http://127.0.0.1:9/jwks"
    skip_audience_check: true
upstreams:
  - name: bi
    url: "http://127.0.0.1:9000"
routes:
  - name: api
    path_prefix: /api
    upstream: bi
    auth: {issuers: [corp]}
"#;

// Behaviour: warnings are printed, located, and do not fail validation; --format json
// gives CI one document with every error and warning and their places.
#[test]
fn validate_warnings_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, WITH_WARNING);
    let f = p.display().to_string();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!(
            "{f}:7:26 issuers[0].skip_audience_check: warning: tokens this issuer made for any other API"
        )),
        "{stdout}"
    );
    assert!(
        lines[1].contains(": OK — 1 route(s)") && lines[1].ends_with("(1 warning(s))"),
        "{stdout}"
    );

    let out = bin()
        .args(["validate", "--format", "json", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v:#}");
    assert_eq!(v["errors"], serde_json::json!([]), "{v:#}");
    let w = &v["warnings"][0];
    assert_eq!(
        (
            w["file"].as_str(),
            w["line"].as_u64(),
            w["column"].as_u64(),
            w["path"].as_str()
        ),
        (
            Some(f.as_str()),
            Some(7),
            Some(26),
            Some("issuers[0].skip_audience_check")
        ),
        "{v:#}"
    );

    let broken = WITH_WARNING.replace("upstream: bi", "upstream: bj");
    std::fs::write(&p, broken).unwrap();
    let out = bin()
        .args(["validate", "--format", "json", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false, "{v:#}");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1, "{v:#}");
    let e = &v["errors"][0];
    assert_eq!(e["path"], "routes[0].upstream", "{v:#}");
    assert_eq!(e["line"], 14, "{v:#}");
    assert_eq!(
        e["message"], "unknown upstream \"bj\" (did you mean \"bi\"?)",
        "{v:#}"
    );
}

// Behaviour: without a config file, validate and run say so in one line.
#[test]
fn no_config_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gateway.yaml");
    for cmd in ["validate", "run"] {
        let child = bin()
            .current_dir(dir.path())
            .arg(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (status, stderr) = exit_of(child);
        assert_eq!(status.code(), Some(1), "{cmd}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{cmd}: {stderr}");
        assert_eq!(
            lines[0],
            "tollgate: cannot read the config file gateway.yaml: No such file or directory (os error 2) (name it with --config FILE or TOLLGATE_CONFIG)",
            "{cmd}"
        );
    }
    assert!(!missing.exists());
}

// Behaviour: when the listen address is taken, run says which address.
#[test]
fn run_names_the_address_it_cannot_listen_on() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, &VALID.replace("127.0.0.1:0", &addr.to_string()));
    let child = bin()
        .args(["run", "--config"])
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr) = exit_of(child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("tollgate: cannot listen on {addr}: ")),
        "{stderr}"
    );
    drop(taken);
}

// Behaviour: validate never writes; the signing key asked for with create_signing_key
// is written by run only (owner-readable), and the tokens it signs verify with it.
#[tokio::test]
async fn only_run_creates_the_signing_key() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}token_service:\n  issuer: \"https://gw.example.com\"\n  audience: gw\n  signing_key: keys/signing.pem\n  create_signing_key: true\n  clients:\n    - id: c\n      secret: s3cret\n      scopes: [a]\n",
        VALID.replace("http://127.0.0.1:9000", &up.url())
    );
    let p = write(&dir, &yaml);
    let before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("token_service.signing_key: warning: "),
        "{stdout}"
    );
    let after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "validate wrote something");

    let b = spawn_binary(&p, &["run"]);
    let _guard = KillOnDrop(b.child);
    let key = dir.path().join("keys/signing.pem");
    let pem = std::fs::read(&key).expect("run creates the key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let r = client()
        .post(format!("http://{}/oauth2/token", b.public))
        .basic_auth("c", Some("s3cret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = json_of(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let signing = tollgate::token_service::keys::SigningKey::from_pem(&pem).unwrap();
    assert_eq!(
        kid, signing.kid,
        "tokens are signed with the key in the file"
    );
}
