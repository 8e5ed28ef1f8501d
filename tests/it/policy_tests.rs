//! `tollgate test`: policy test cases run by the real binary against a config, with
//! text and JUnit XML results and the exit codes CI relies on (0 pass, 1 mismatch, 2 a
//! bad cases file).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cli::bin;
use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// The shipped gateway.yaml and its cases, copied into a temporary folder (whose
/// listing then shows that `tollgate test` writes nothing there).
fn shipped() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = dir.path().join("gateway.yaml");
    let cases = dir.path().join("gateway.cases.yaml");
    std::fs::copy(root.join("gateway.yaml"), &config).unwrap();
    std::fs::copy(root.join("tests/policy/gateway.cases.yaml"), &cases).unwrap();
    (dir, config, cases)
}

fn run_test(config: &Path, cases: &Path, extra: &[&str]) -> Finished {
    output_within(
        "tollgate test",
        bin()
            .args(["test", "--config"])
            .arg(config)
            .arg(cases)
            .args(extra),
        PATIENCE,
    )
}

fn junit_counts(xml: &str) -> (usize, usize, Vec<(String, Option<String>)>) {
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suite = root
        .children()
        .find(|n| n.has_tag_name("testsuite"))
        .expect("a testsuite");
    let tests: usize = suite.attribute("tests").unwrap().parse().unwrap();
    let failures: usize = suite.attribute("failures").unwrap().parse().unwrap();
    let cases = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|c| {
            let failure = c.children().find(|n| n.has_tag_name("failure")).map(|f| {
                format!(
                    "{}\n{}",
                    f.attribute("message").unwrap_or(""),
                    f.text().unwrap_or("")
                )
            });
            (c.attribute("name").unwrap().to_owned(), failure)
        })
        .collect();
    (tests, failures, cases)
}

// Behaviour: the shipped cases pass against the shipped gateway.yaml (exit 0, one PASS
// line per case), and the JUnit file lists every case, none failed.
#[test]
fn shipped_cases_pass() {
    let (dir, config, cases) = shipped();
    let out_dir = tempfile::tempdir().unwrap();
    let junit = out_dir.path().join("junit.xml");
    let out = run_test(&config, &cases, &["--junit", junit.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // gateway.yaml asks for its signing key to be created: only `tollgate run` does.
    let mut listing: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listing.sort();
    assert_eq!(
        listing,
        ["gateway.cases.yaml", "gateway.yaml"],
        "tollgate test wrote"
    );
    assert!(
        out.stderr.contains("signing_key does not exist yet"),
        "{}",
        out.stderr
    );
    let doc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&cases).unwrap()).unwrap();
    let n = doc["cases"].as_array().unwrap().len();
    assert!(n >= 20, "{n}");
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("PASS  "))
            .count(),
        n,
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("{n} passed, 0 failed")),
        "{}",
        out.stdout
    );
    let (tests, failures, listed) = junit_counts(&std::fs::read_to_string(&junit).unwrap());
    assert_eq!((tests, failures), (n, 0));
    assert!(listed.iter().all(|(_, f)| f.is_none()));
    assert!(listed
        .iter()
        .any(|(name, _)| name == "dashboard reads data"));
}

/// Literal YAML: tests/it/schema.rs also checks this text against gateway.schema.json.
pub const CONFIG: &str = r#"server:
  listen: "127.0.0.1:0"
token_service:
  issuer: "https://gw.test"
  audience: "https://api.test"
  clients:
    - id: reporting
      secret: reporting-secret
      scopes: [analytics.read]
upstreams:
  - name: bi
    url: "http://127.0.0.1:9"
routes:
  - name: analytics
    path_prefix: /v2/analytics
    upstream: bi
    auth: {issuers: [local], scopes: [analytics.read]}
    permissions:
      - path: /v2/analytics/metadata
        methods: [GET]
"#;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// Behaviour: a case whose expectation the policy does not meet fails the run (exit 1);
// the report names the case and its line, says what was expected and what came, and
// shows the decision trace with the gate that decided; JUnit carries the same failure.
#[test]
fn failing_case_exits_1_and_shows_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "gateway.yaml", CONFIG);
    let cases = write(
        &dir,
        "cases.yaml",
        "cases:\n  - name: reporting reads metadata\n    token: {issuer: local, claims: {client_id: reporting, scope: analytics.read}}\n    path: /v2/analytics/metadata\n    expect: {status: 200}\n  - name: reporting may post metadata\n    token: {issuer: local, claims: {client_id: reporting, scope: analytics.read}}\n    method: POST\n    path: /v2/analytics/metadata\n    expect: {status: 200}\n",
    );
    let out = run_test(&config, &cases, &[]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let text = &out.stdout;
    assert!(text.contains("PASS  reporting reads metadata"), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL  reporting may post metadata  ({}:6)",
            cases.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("expected status 200, got 403 access_denied, reason method_not_allowed: method POST is not permitted on /v2/analytics/metadata"),
        "{text}"
    );
    assert!(text.contains("decision trace:"), "{text}");
    assert!(
        text.contains("route: analytics") || text.contains("analytics"),
        "{text}"
    );
    assert!(
        text.contains("permission: /v2/analytics/metadata methods [GET]"),
        "the gate is shown: {text}"
    );
    assert!(text.contains("1 passed, 1 failed"), "{text}");
    // The token never shows (the trace has no token, the report no Authorization).
    assert!(!text.contains("eyJ"), "{text}");

    let out = run_test(&config, &cases, &["--format", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    let (tests, failures, listed) = junit_counts(&out.stdout);
    assert_eq!((tests, failures), (2, 1));
    assert_eq!(listed[0], ("reporting reads metadata".to_owned(), None));
    assert_eq!(listed[1].0, "reporting may post metadata");
    let failure = listed[1].1.as_deref().unwrap();
    assert!(failure.contains("expected status 200"), "{failure}");
    assert!(failure.contains("method_not_allowed"), "{failure}");
}

// Behaviour: a bad cases file is refused before any case runs (exit 2), every problem
// located like the config's (`file:line:col key.path: message`).
#[test]
fn bad_cases_file_exits_2_located() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "gateway.yaml", CONFIG);
    let cases = write(
        &dir,
        "cases.yaml",
        "cases:\n  - name: a\n    path: /v2/analytics/metadata\n    expect: {status: 403, reason: scope_mising}\n  - name: b\n    token: {issuer: corp, claims: {sub: x}}\n    path: /v2/analytics/metadata\n    expect: {status: 200}\n",
    );
    let out = run_test(&config, &cases, &[]);
    assert_eq!(out.status.code(), Some(2), "{}\n{}", out.stdout, out.stderr);
    let file = cases.display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "{file}:4:35 cases[0].expect.reason: unknown reason code \"scope_mising\" (did you mean \"scope_missing\"?)"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "{file}:6:21 cases[1].token.issuer: unknown issuer \"corp\""
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("PASS"), "{}", out.stdout);

    let cases = write(
        &dir,
        "typo.yaml",
        "cases:\n  - name: a\n    path: /x\n    expext: {status: 200}\n",
    );
    let out = run_test(&config, &cases, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr.contains(&format!(
            "{}:4:5 cases[0].expext: unknown key \"expext\" (did you mean \"expect\"?)",
            cases.display()
        )),
        "{}",
        out.stderr
    );
}

// Behaviour: tokens of an external JWT issuer listed under `mint.issuers` are signed
// with a test key that replaces its JWKS for this run only (its JWKS endpoint is never
// reachable here), while every other check stays the configured one: a wrong audience
// is still refused, and a token signed by another key is refused.
#[test]
fn minted_external_issuer_keeps_its_checks() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "gateway.yaml",
        &GatewayConfig::public_only()
            .issuer_block(json!({
                "name": "corp",
                "issuer": "https://idp.corp.test",
                "jwks_uri": format!("http://{}/jwks", dead_addr()),
                "audiences": ["https://api.test"],
                "algorithms": ["RS256", "ES256"],
            }))
            .upstream("bi", "http://127.0.0.1:9")
            .route(json!({
                "name": "api", "path_prefix": "/api", "upstream": "bi",
                "auth": {"issuers": ["corp"], "scopes": ["api.read"]},
            }))
            .yaml(),
    );
    let stranger = tollgate::token_service::keys::SigningKey::generate_es256().unwrap();
    let foreign = stranger
        .sign(
            "JWT",
            &json!({"iss": "https://idp.corp.test", "aud": "https://api.test", "exp": now() + 300, "scope": "api.read"}),
        )
        .unwrap();
    let cases = write(
        &dir,
        "cases.yaml",
        &format!(
            "mint: {{issuers: [corp]}}\ncases:\n  - name: minted token passes\n    token: {{issuer: corp, claims: {{sub: u1, scope: api.read}}}}\n    path: /api/x\n    expect: {{status: 200}}\n  - name: wrong audience still refused\n    token: {{issuer: corp, claims: {{sub: u1, scope: api.read, aud: other}}}}\n    path: /api/x\n    expect: {{status: 401, reason: audience_not_accepted}}\n  - name: missing scope\n    token: {{issuer: corp, claims: {{sub: u1}}}}\n    path: /api/x\n    expect: {{status: 403, reason: scope_missing}}\n  - name: a token from another key is refused\n    token: \"{foreign}\"\n    path: /api/x\n    expect: {{status: 401, reason: kid_unknown}}\n"
        ),
    );
    let out = run_test(&config, &cases, &[]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("4 passed, 0 failed"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("issuer corp: keys replaced by a generated test key for this run"),
        "{}",
        out.stderr
    );
    // The config file is not changed.
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("jwks_uri"));
}
