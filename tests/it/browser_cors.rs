//! CORS in a real browser: Debian's chromium, driven by playwright-core through
//! `tests/e2e/browser/cors.mjs`, calls tollgate with `fetch()` from a page on another
//! origin. Needs `/usr/bin/chromium` (apt-get install chromium) and
//! `npm ci --prefix tests/e2e/browser`; fails, naming what to install, when they are missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::GatewayConfig;

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on one browser run (cors.mjs bounds itself at 150 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(210);

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/browser")
}

/// Fails (never skips) with what to install when the browser toolchain is missing.
pub fn require_browser_toolchain() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test needs Debian's chromium \
         (apt-get update && apt-get install -y chromium)"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "`node` is not runnable ({node:?}): this test needs Node.js >= 20 \
         (apt-get install -y nodejs npm)"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "tests/e2e/browser/node_modules is missing playwright-core: \
         run `npm ci --prefix tests/e2e/browser` (never `npx playwright install`)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cors_gateway_yaml(idp: &Idp, up: &Upstream, allowed_origin: &str) -> String {
    GatewayConfig::public_only()
        .issuer(idp, "corp")
        .upstream("bi", &up.url())
        .route(json!({
            "name": "api", "path_prefix": "/api", "upstream": "bi",
            "auth": {"issuers": ["corp"], "scopes": ["analytics.read"]},
            "cors": {
                "allow_origins": [allowed_origin],
                "allow_methods": ["GET", "POST"],
                "allow_headers": ["Authorization", "Content-Type"],
                "expose_headers": ["X-Request-Id"],
                "allow_credentials": true,
                "max_age": "10m",
            },
        }))
        .yaml()
}

enum Run {
    Done(Value),
    /// cors.mjs could not listen on the port we picked (taken meanwhile): pick another.
    PortTaken,
}

/// Runs cors.mjs to its end. node leads a process group of its own; chromium, which
/// playwright starts in a session (and group) of its own, is named by cors.mjs on stderr
/// (`BROWSER_PGID n`). Both groups are killed, by PGID, when the run ends however it ends;
/// and cors.mjs exits (closing the browser) when its stdin closes, should this test
/// process die without unwinding.
async fn run_cors_mjs(api: &str, allowed_port: u16, token: &str) -> Run {
    use std::io::{BufRead, BufReader, Read};
    let mut node = ChildGuard::spawn_group(
        "node cors.mjs",
        std::process::Command::new("node")
            .arg("cors.mjs")
            .args(["--api", api, "--allowed-port", &allowed_port.to_string()])
            .args(["--chromium", CHROMIUM])
            .env("TOLLGATE_TOKEN", token)
            .env("TOLLGATE_E2E_WATCH_STDIN", "1")
            .current_dir(browser_dir())
            // Kept open (unused) for as long as `node` lives: its EOF tells cors.mjs to quit.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdout = node.child_mut().stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let stderr = node.child_mut().stderr.take().unwrap();
    let browser_groups = node.extra_groups();
    let stderr = std::thread::spawn(move || {
        let mut out = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(pgid) = line
                .strip_prefix("BROWSER_PGID ")
                .and_then(|n| n.trim().parse::<u32>().ok())
            {
                browser_groups.lock().unwrap().push(pgid);
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    let status = node.exited_within(RUN_TIMEOUT).await;
    drop(node); // kills what is left of both groups
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    if status.code() == Some(3) {
        return Run::PortTaken;
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("cors.mjs printed no JSON ({status}):\n{stdout}\n{stderr}"));
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("cors.mjs output is not JSON ({e}): {line}\n{stderr}"));
    // The script's own verdict must agree with its exit status; the details are
    // asserted below, independently.
    assert_eq!(
        status.success(),
        v["ok"] == json!(true),
        "exit status {status} vs {v}\n{stderr}"
    );
    Run::Done(v)
}

// Behaviour (SPEC "Request behaviour", CORS): from a page on an allowed origin, a
// fetch() with `Authorization: Bearer` is preflighted; tollgate answers the preflight
// without a token and never forwards it, the real request's JSON (and the exposed
// X-Request-Id) is readable by the page, and so are 401 error bodies. From origins not in
// allow_origins — another port, or the same port under another host name — Chromium
// blocks the call (TypeError) and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_cors_chromium() {
    require_browser_toolchain();
    let idp = spawn_idp().await;
    let token = idp.token(json!({}));

    let mut attempt = 0;
    let (v, up, allowed_origin, gw) = loop {
        attempt += 1;
        let up = spawn_upstream().await;
        let port = free_port();
        let allowed_origin = format!("http://127.0.0.1:{port}");
        let gw = spawn_gateway(&cors_gateway_yaml(&idp, &up, &allowed_origin)).await;
        let api = gw.url("/api/data?via=browser");
        match run_cors_mjs(&api, port, &token).await {
            Run::Done(v) => break (v, up, allowed_origin, gw),
            Run::PortTaken if attempt < 3 => gw.stop().await,
            Run::PortTaken => panic!("127.0.0.1:{port} taken, three times in a row"),
        }
    };
    let ctx = serde_json::to_string_pretty(&v).unwrap();
    let r = &v["results"];
    assert_eq!(v["allowed_origin"], json!(allowed_origin), "{ctx}");
    assert!(
        v["failures"].as_array().is_some_and(Vec::is_empty),
        "cors.mjs failures: {ctx}"
    );

    // 1. Allowed origin, valid token: 200, the page reads the upstream's JSON echo.
    for (name, method) in [
        ("allowed_valid", "GET"),
        ("allowed_valid_credentials", "GET"),
        ("allowed_post", "POST"),
    ] {
        let x = &r[name];
        assert_eq!(x["fetched"], json!(true), "{name}: {ctx}");
        assert_eq!(x["status"], json!(200), "{name}: {ctx}");
        assert_eq!(x["json"]["method"], json!(method), "{name}: {ctx}");
        assert_eq!(
            x["json"]["uri"],
            json!("/api/data?via=browser"),
            "{name}: {ctx}"
        );
        assert_eq!(
            x["json"]["headers"]["authorization"],
            json!([format!("Bearer {token}")]),
            "{name}: {ctx}"
        );
        assert_eq!(
            x["json"]["headers"]["origin"],
            json!([allowed_origin]),
            "{name}: {ctx}"
        );
        assert!(
            x["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: X-Request-Id not readable by the page: {ctx}"
        );
    }

    // 2. Allowed origin, bad or no token: the page reads the 401 JSON body.
    for name in ["allowed_bad_token", "allowed_no_token"] {
        let x = &r[name];
        assert_eq!(
            x["fetched"],
            json!(true),
            "{name}: the page could not read the error response: {ctx}"
        );
        assert_eq!(x["status"], json!(401), "{name}: {ctx}");
        assert_eq!(x["json"]["error"], json!("invalid_token"), "{name}: {ctx}");
        assert!(
            x["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: X-Request-Id not readable on an error: {ctx}"
        );
    }

    // The preflights Chromium sent from the allowed origin were answered 200/204 by
    // tollgate (no token was sent with them: browsers never do).
    let preflights: Vec<&Value> = v["preflights"]
        .as_array()
        .expect("preflights")
        .iter()
        .filter(|p| p["page_origin"] == json!(allowed_origin))
        .collect();
    assert!(!preflights.is_empty(), "no preflight observed: {ctx}");
    for p in &preflights {
        assert_eq!(p["method"], json!("OPTIONS"), "{ctx}");
        assert!(
            p["status"] == json!(204) || p["status"] == json!(200),
            "preflight: {p}\n{ctx}"
        );
    }

    // 3. Foreign origins: the browser blocks the call — fetch rejects with TypeError,
    //    and Chromium names a CORS error for that origin.
    let foreign = v["foreign_origins"].as_array().expect("foreign_origins");
    assert_eq!(foreign.len(), 2, "{ctx}");
    for (i, origin) in foreign.iter().enumerate() {
        assert_ne!(origin, &json!(allowed_origin));
        let x = &r[format!("foreign_{i}")];
        assert_eq!(&x["origin"], origin, "{ctx}");
        assert_eq!(
            x["fetched"],
            json!(false),
            "{origin}: page read a response: {ctx}"
        );
        assert_eq!(x["error_name"], json!("TypeError"), "{origin}: {ctx}");
        assert!(
            v["cors_errors"]
                .as_array()
                .expect("cors_errors")
                .iter()
                .any(|c| &c["page_origin"] == origin),
            "{origin}: no CORS error reported by Chromium: {ctx}"
        );
    }
    assert!(
        !v["cors_errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["page_origin"] == json!(allowed_origin)),
        "CORS error on the allowed origin: {ctx}"
    );

    // 4. The upstream saw exactly the three authorised requests: no OPTIONS, nothing
    //    from the foreign origins, nothing for the rejected tokens.
    let seen = up.seen.lock().unwrap().clone();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert!(
        !methods.contains(&"OPTIONS"),
        "a preflight was forwarded upstream: {methods:?}"
    );
    assert_eq!(methods, ["GET", "GET", "POST"], "{ctx}");
    for s in &seen {
        assert_eq!(s.header("origin"), Some(allowed_origin.as_str()), "{s:?}");
    }
    gw.stop().await;
}
