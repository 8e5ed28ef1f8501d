//! A person's browser sign-in, in a real browser: Debian's chromium, driven by
//! playwright-core through `tests/e2e/browser/login.mjs`, signs in at the certified
//! OpenID provider (tests/e2e/oidc) through tollgate and uses the dashboard. Needs
//! `/usr/bin/chromium`, Node 20+, `npm ci --prefix tests/e2e/browser` and
//! `npm ci --prefix tests/e2e/oidc`; fails, naming what to install, when they are missing.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::browser_cors::{browser_dir, require_browser_toolchain, CHROMIUM};
use crate::common::*;
use crate::login::{claims, login_yaml, metric, Client, COOKIE_SECRET, DASHBOARD_API};
use crate::oidc_e2e::OidcProvider;

/// Bound on one browser run (login.mjs bounds itself at 150 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(200);
/// The provider's access tokens live this long: the journey waits for one to expire.
const ACCESS_TOKEN_TTL: &str = "8";

// Behaviour (SPEC "Browser sign-in"): in chromium, opening the dashboard URL leads to the
// provider's login page and, signed in, back to the page first asked for; the session
// cookie is HttpOnly (the page cannot read it), Secure, SameSite=Lax, Path=/; the page's
// fetch() reaches the upstream with the person's access token, X-Auth-Subject, and the
// page's own cookie but not tollgate's; after the access token has expired the next fetch
// still works with a refreshed token; a tampered cookie gets 401 for a fetch and a fresh
// sign-in for a navigation (counted as session_invalid); logout ends the session at the
// provider too (its end-session page, then tollgate's post-logout page), after which the
// dashboard asks for a login again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_journey_chromium() {
    require_browser_toolchain();
    let op = OidcProvider::spawn_with(&["--login-access-token-ttl", ACCESS_TOKEN_TTL]);
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&login_yaml(&op, &up, Client::Web, COOKIE_SECRET)).await;
    // The browser uses `localhost` for tollgate and 127.0.0.1 for the provider: two
    // sites, two cookie jars, as in a real deployment.
    let gateway = format!("http://localhost:{}", gw.addr.port());

    // node leads a process group of its own; chromium, which playwright starts in a
    // session (and group) of its own, is named by login.mjs on stderr (`BROWSER_PGID n`).
    // Both groups are killed, by PGID, when the run ends however it ends; and login.mjs
    // exits (closing the browser) when its stdin closes, should this test process die
    // without unwinding.
    let mut node = ChildGuard::spawn_group(
        "node login.mjs",
        std::process::Command::new("node")
            .arg("login.mjs")
            .args([
                "--gateway",
                &gateway,
                "--idp",
                &op.issuer,
                "--user",
                "alice",
            ])
            .args(["--chromium", CHROMIUM])
            .env("TOLLGATE_E2E_WATCH_STDIN", "1")
            .current_dir(browser_dir())
            // Kept open (unused) for as long as `node` lives: its EOF tells login.mjs to quit.
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
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("login.mjs printed no JSON ({status}):\n{stdout}\n{stderr}"));
    let v: Value = serde_json::from_str(line).unwrap();
    let ctx = serde_json::to_string_pretty(&v).unwrap();
    assert!(
        status.success() && v["ok"] == json!(true),
        "login.mjs failed ({status}): {ctx}\n{stderr}\nprovider: {}",
        op.stderr()
    );
    let s = &v["steps"];

    // 1. The provider's login page, then back on the page first asked for.
    let login_url = s["login_page"]["url"].as_str().unwrap();
    assert!(
        login_url.starts_with(&format!("{}/interaction/", op.issuer)),
        "{ctx}"
    );
    assert_eq!(s["login_page"]["has_login_form"], json!(true), "{ctx}");
    assert_eq!(
        s["landing"]["url"],
        json!(format!("{gateway}/dash/page?tab=1")),
        "{ctx}"
    );
    let echo = &s["landing"]["echo"];
    assert_eq!(echo["uri"], json!("/dash/page?tab=1"), "{ctx}");
    assert_eq!(echo["headers"]["x-auth-subject"], json!(["alice"]), "{ctx}");
    let cookies = s["session_cookies"].as_array().unwrap();
    assert!(!cookies.is_empty(), "{ctx}");
    for c in cookies {
        assert_eq!(c["httpOnly"], json!(true), "{ctx}");
        assert_eq!(c["secure"], json!(true), "{ctx}");
        assert_eq!(c["sameSite"], json!("Lax"), "{ctx}");
        assert_eq!(c["path"], json!("/"), "{ctx}");
    }
    let doc_cookie = s["document_cookie"].as_str().unwrap();
    assert!(doc_cookie.contains("theme=dark"), "{ctx}");
    assert!(
        !doc_cookie.contains("tollgate_"),
        "the page can read tollgate's cookie: {ctx}"
    );

    // 2. The page's fetch: 200 from the upstream, as the person, without tollgate's cookie.
    let f = &s["fetch"];
    assert_eq!(f["status"], json!(200), "{ctx}");
    assert_eq!(f["json"]["uri"], json!("/dash/api/data?n=1"), "{ctx}");
    let h = &f["json"]["headers"];
    assert_eq!(h["x-auth-subject"], json!(["alice"]), "{ctx}");
    assert_eq!(h["x-auth-client-id"], json!(["tollgate-web"]), "{ctx}");
    assert_eq!(h["cookie"], json!(["theme=dark"]), "{ctx}");
    let t1 = h["authorization"][0]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    assert_eq!(claims(t1)["aud"], json!(DASHBOARD_API), "{ctx}");
    assert_eq!(claims(t1)["sub"], json!("alice"), "{ctx}");

    // 3. After the access token expired: still 200, with a newer token and a new cookie.
    let before = &s["before_refresh"];
    assert!(
        before["now"].as_i64().unwrap() > before["exp"].as_i64().unwrap(),
        "{ctx}"
    );
    let f = &s["refreshed_fetch"];
    assert_eq!(f["status"], json!(200), "{ctx}");
    let t2 = f["json"]["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    assert_ne!(t2, t1, "{ctx}");
    assert!(
        claims(t2)["exp"].as_i64().unwrap() > before["now"].as_i64().unwrap(),
        "{ctx}"
    );
    assert_ne!(
        s["after_refresh"]["cookie"], before["cookie"],
        "the refreshed session was stored: {ctx}"
    );
    assert_eq!(
        f["json"]["headers"]["cookie"],
        json!(["theme=dark"]),
        "{ctx}"
    );

    // 4. Tampered: the fetch gets 401 (and the cookie is dropped); a navigation signs in
    //    again, through the provider, without a login page (the provider knows alice).
    let f = &s["tampered_fetch"];
    assert_eq!(f["status"], json!(401), "{ctx}");
    assert_eq!(f["json"]["error"], json!("invalid_token"), "{ctx}");
    assert_eq!(
        s["after_tampered_fetch"]["session_cookies"],
        json!(0),
        "{ctx}"
    );
    assert_eq!(
        s["signed_in_again"]["url"],
        json!(format!("{gateway}/dash/again")),
        "{ctx}"
    );
    assert_eq!(
        s["signed_in_again"]["echo"]["headers"]["x-auth-subject"],
        json!(["alice"]),
        "{ctx}"
    );
    let via = s["signed_in_again"]["via"].as_array().unwrap();
    assert!(
        via.iter().any(|u| u
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/auth", op.issuer))),
        "not through the provider: {ctx}"
    );
    assert!(
        via.iter().any(|u| u
            .as_str()
            .unwrap()
            .starts_with(&format!("{gateway}/oauth2/callback?"))),
        "{ctx}"
    );

    // 5. Logout: through the provider's end-session endpoint, back on /signed-out.
    assert!(
        s["logout_page"]["url"]
            .as_str()
            .unwrap()
            .starts_with(&op.issuer),
        "{ctx}"
    );
    let after = &s["after_logout"];
    assert!(
        after["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{gateway}/signed-out")),
        "{ctx}"
    );
    assert_eq!(after["session_cookies"], json!(0), "{ctx}");
    assert!(
        after["echo"]["headers"]["x-auth-subject"].is_null(),
        "{ctx}"
    );

    // 6. The dashboard asks for a login again.
    let again = &s["after_logout_dashboard"];
    assert!(
        again["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/interaction/", op.issuer)),
        "{ctx}"
    );
    assert_eq!(again["has_login_form"], json!(true), "{ctx}");

    // tollgate's side: no tollgate cookie ever went upstream; two sign-ins, a refresh,
    // and session_invalid for the tampered fetch and the tampered navigation.
    for seen in up.seen.lock().unwrap().iter() {
        for c in seen.headers.get("cookie").into_iter().flatten() {
            assert!(!c.contains("tollgate_"), "forwarded: {c}");
        }
    }
    assert_eq!(
        metric(&gw, "tollgate_sign_ins_total{result=\"success\"}").await,
        2.0
    );
    assert!(metric(&gw, "tollgate_session_refreshes_total{result=\"success\"}").await >= 1.0);
    assert_eq!(
        metric(
            &gw,
            "tollgate_auth_denied_total{route=\"dashboard\",reason=\"session_invalid\"}"
        )
        .await,
        2.0
    );
    gw.stop().await;
}
