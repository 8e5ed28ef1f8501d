//! The admin page in a real browser: Debian's chromium, driven by playwright-core
//! through `tests/e2e/browser/admin.mjs` (see browser_cors.rs for the toolchain and how
//! the browser's process groups are killed however the run ends).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::admin_ui::gateway_yaml;
use crate::browser_cors::{browser_dir, require_browser_toolchain, CHROMIUM};
use crate::common::*;

/// Bound on one browser run (admin.mjs bounds itself at 150 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(210);

fn run_admin_mjs(args: &[&str], token: &str) -> (std::process::ExitStatus, Value, String) {
    use std::io::{BufRead, BufReader, Read};
    let mut node = ChildGuard::spawn_group(
        "node admin.mjs",
        std::process::Command::new("node")
            .arg("admin.mjs")
            .args(args)
            .args(["--chromium", CHROMIUM])
            .env("TOLLGATE_TOKEN", token)
            .env("TOLLGATE_E2E_WATCH_STDIN", "1")
            .current_dir(browser_dir())
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
    let status = node.exit_within(RUN_TIMEOUT);
    drop(node); // kills what is left of both groups
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("admin.mjs printed no JSON ({status}):\n{stdout}\n{stderr}"));
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("admin.mjs output is not JSON ({e}): {line}\n{stderr}"));
    (status, v, stderr)
}

// Behaviour (issue 17 item 5): the admin page loads in chromium with no console error
// and no CSP violation; a refusal made with an HTTP client appears in its live list;
// clicking it shows the decision trace with the refusing step highlighted; the explain
// form shows the failing gate for a pasted token; a screenshot is saved under target/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_admin_page_chromium() {
    require_browser_toolchain();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &up)).await;
    // Refused by the permission's extra scope (reports.read).
    let token = idp.token(json!({"scope": "analytics.read"}));
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/admin-ui/admin-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let admin = gw.admin_url("");
    let deny_url = gw.url("/api/data");
    let shot = screenshot.display().to_string();
    let tok = token.clone();
    let (status, v, stderr) = tokio::task::spawn_blocking(move || {
        run_admin_mjs(
            &[
                "--admin",
                &admin,
                "--deny-url",
                &deny_url,
                "--deny-id",
                "browser-denial-1",
                "--explain-path",
                "/api/reports",
                "--screenshot",
                &shot,
            ],
            &tok,
        )
    })
    .await
    .unwrap();
    let ctx = format!("{}\n{stderr}", serde_json::to_string_pretty(&v).unwrap());
    assert_eq!(status.success(), v["ok"] == json!(true), "{ctx}");
    assert!(v["failures"].as_array().is_some_and(Vec::is_empty), "{ctx}");
    assert_eq!(v["page_status"], json!(200), "{ctx}");
    assert_eq!(v["console_errors"], json!([]), "{ctx}");
    assert_eq!(v["page_errors"], json!([]), "{ctx}");
    assert_eq!(v["csp_violations"], json!([]), "{ctx}");
    assert!(
        v["csp_header"]
            .as_str()
            .is_some_and(|c| c.contains("script-src 'self'")),
        "{ctx}"
    );
    // The refusal, made with node's fetch, reached the live list and its trace.
    assert_eq!(v["denied_status"], json!(401), "{ctx}");
    let cells: Vec<&str> = v["row_cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells[1], "401", "{ctx}");
    assert_eq!(cells[2], "token", "{ctx}");
    assert_eq!(cells[3], "token_missing", "{ctx}");
    assert_eq!(cells[6], "/api/data", "{ctx}");
    assert_eq!(cells[9], "browser-denial-1", "{ctx}");
    assert_eq!(v["trace_gate"], json!("token"), "{ctx}");
    assert!(
        v["trace_failing"]
            .as_str()
            .unwrap()
            .starts_with("result: DENY 401 invalid_token (reason token_missing)"),
        "{ctx}"
    );
    assert_ne!(
        v["trace_failing_bg"],
        json!("rgba(0, 0, 0, 0)"),
        "not highlighted: {ctx}"
    );
    // The explain form: the scopes gate, its lines highlighted.
    assert_eq!(v["explain_gate"], json!("scopes"), "{ctx}");
    assert!(
        v["explain_failing"]
            .as_str()
            .unwrap()
            .starts_with("result: DENY 403 insufficient_scope (reason scope_missing)"),
        "{ctx}"
    );
    assert!(
        v["explain_gate_lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("permission: /api/reports")),
        "{ctx}"
    );
    assert_eq!(v["token_in_text"], json!(false), "{ctx}");
    // The same refusal is in the ring, and the screenshot exists.
    let d = json_of(
        client()
            .get(gw.admin_url("/admin/decisions/browser-denial-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(d["reason"], json!("token_missing"));
    let png =
        std::fs::read(&screenshot).unwrap_or_else(|e| panic!("{}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    gw.stop().await;
}
