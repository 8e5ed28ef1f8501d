//! `tollgate schema` and the shipped `gateway.schema.json`: the file is what the binary
//! prints (it cannot drift from the config model), every gateway config the repository
//! ships validates against it with a real JSON Schema validator (the `jsonschema`
//! crate, draft-07), and it catches a misspelt key, a wrong type and a value outside a
//! key's fixed set, as an editor would show them.

use std::path::PathBuf;

use crate::cli::bin;
use crate::common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `tollgate schema` prints.
fn printed_schema() -> String {
    let out = output_within("tollgate schema", bin().arg("schema"), PATIENCE);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    out.stdout
}

fn validator(schema_text: &str) -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(schema_text).expect("the schema is JSON");
    jsonschema::draft7::meta::validate(&schema).expect("a valid draft-07 schema");
    jsonschema::draft7::new(&schema).expect("the validator compiles the schema")
}

/// YAML as the YAML language server reads it (1.2 core schema: only true/false are
/// booleans).
fn yaml(text: &str) -> serde_json::Value {
    serde_saphyr::from_str_with_options(text, serde_saphyr::options! { strict_booleans: true })
        .unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// Every error as `instance path: message`.
fn errors(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// Behaviour: the shipped gateway.schema.json is exactly what `tollgate schema` prints,
// so a key added to the config model without regenerating it fails here.
#[test]
fn shipped_schema_is_current() {
    let printed = printed_schema();
    let shipped = read("gateway.schema.json");
    assert!(
        printed == shipped,
        "gateway.schema.json is not what `tollgate schema` prints; regenerate it with:\n    \
         cargo run -q -- schema > gateway.schema.json"
    );
}

// Behaviour: every gateway config the repository ships (gateway.yaml, the Kubernetes
// manifest's, the Helm chart's default and CI values, the starter `tollgate init`
// writes, the fuzz seeds that are valid configs, the policy tests' config) validates
// against the schema, and `tollgate validate` agrees with each that is self-contained.
#[test]
fn shipped_configs_validate_against_the_schema() {
    let v = validator(&printed_schema());
    let init = output_within(
        "tollgate init",
        bin().args(["init", "--output", "-"]),
        PATIENCE,
    );
    assert_eq!(init.status.code(), Some(0), "{}", init.stderr);
    let mut configs: Vec<(String, serde_json::Value)> = vec![
        ("gateway.yaml".into(), yaml(&read("gateway.yaml"))),
        (
            "deploy/kubernetes/gateway.yaml".into(),
            yaml(&read("deploy/kubernetes/gateway.yaml")),
        ),
        ("tollgate init".into(), yaml(&init.stdout)),
        (
            "tests/it/policy_tests.rs CONFIG".into(),
            yaml(crate::policy_tests::CONFIG),
        ),
    ];
    for values in [
        "deploy/helm/tollgate/values.yaml",
        "deploy/helm/tollgate/ci/full-values.yaml",
    ] {
        let doc = yaml(&read(values));
        let config = doc["config"].clone();
        assert!(config.is_object(), "{values}: no config block");
        configs.push((format!("{values} .config"), config));
    }
    for seed in ["gateway.yaml", "minimal.yaml", "issuers.yaml", "k8s.yaml"] {
        let rel = format!("fuzz/seeds/config/{seed}");
        configs.push((rel.clone(), yaml(&read(&rel))));
    }
    for (name, doc) in &configs {
        let found = errors(&v, doc);
        assert!(
            found.is_empty(),
            "{name} fails the schema:\n{}",
            found.join("\n")
        );
    }
    assert!(configs.len() >= 10);
}

// Behaviour: the mistakes an editor should underline fail schema validation, each at
// its key: a misspelt key, a wrong type, a value outside a key's fixed set, a
// duration without a unit, a port alone as an address, a missing required key.
#[test]
fn mistakes_fail_the_schema() {
    let v = validator(&printed_schema());
    let good = r#"server:
  listen: "127.0.0.1:8080"
upstreams:
  - name: backend
    url: "http://127.0.0.1:9000"
    timeout: 30s
routes:
  - name: api
    path_prefix: /api
    upstream: backend
    auth: none
    rate_limits: [per-client]
rate_limits:
  - name: per-client
    key: client
    limit: 100
    per: 1m
    window: sliding
"#;
    assert_eq!(errors(&v, &yaml(good)), Vec::<String>::new());
    let cases: [(&str, &str, &str); 8] = [
        ("    timeout: 30s", "    timeuot: 30s", "/upstreams/0"),
        ("    limit: 100", "    limit: lots", "/rate_limits/0/limit"),
        (
            "    window: sliding",
            "    window: rolling",
            "/rate_limits/0/window",
        ),
        ("    key: client", "    key: cleint", "/rate_limits/0/key"),
        (
            "    timeout: 30s",
            "    timeout: 30",
            "/upstreams/0/timeout",
        ),
        (
            "  listen: \"127.0.0.1:8080\"",
            "  listen: \"8080\"",
            "/server/listen",
        ),
        ("    auth: none", "    auth: open", "/routes/0/auth"),
        ("    upstream: backend\n", "", "/routes/0"),
    ];
    for (from, to, at) in cases {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        let found = errors(&v, &yaml(&bad));
        assert!(
            found.iter().any(|e| e.starts_with(&format!("{at}:"))),
            "{to:?} must fail at {at}; found {found:?}"
        );
    }
    // A misspelt key names the key.
    let found = errors(&v, &yaml(&good.replacen("timeout: 30s", "timeuot: 30s", 1)));
    assert!(found.iter().any(|e| e.contains("timeuot")), "{found:?}");
    // A route's permissions: an unknown method token is the validator's business, but
    // a method that is not a token at all is refused here.
    let bad = good.replacen(
        "    auth: none\n",
        "    auth: {issuers: [corp]}\n    permissions:\n      - {path: /x, methods: [\"GET POST\"], scopes: [a]}\n",
        1,
    );
    let found = errors(&v, &yaml(&bad));
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("/routes/0/permissions/0/methods/0:")),
        "{found:?}"
    );
}

// Behaviour: keys written as ${env:..} / ${file:..} substitutions validate whatever
// their type (a port, a whole number, a boolean, a duration, an address, a fixed set),
// and the binary accepts the same file once the variables are set.
#[test]
fn substitutions_validate() {
    let v = validator(&printed_schema());
    let text = r#"server:
  listen: "${env:SCHEMA_T_LISTEN}"
  redirect_https_port: "${env:SCHEMA_T_PORT}"
  limits:
    max_body_bytes: "${env:SCHEMA_T_MAX_BODY}"
    request_timeout: "${env:SCHEMA_T_TIMEOUT}"
upstreams:
  - name: backend
    url: "${env:SCHEMA_T_URL}"
routes:
  - name: api
    path_prefix: /api
    upstream: backend
    auth: none
    strip_cookies: "${env:SCHEMA_T_STRIP}"
rate_limits:
  - name: l
    key: client
    limit: 5
    per: 1m
    window: "${env:SCHEMA_T_WINDOW}"
"#;
    assert_eq!(errors(&v, &yaml(text)), Vec::<String>::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    let out = output_within(
        "tollgate validate",
        bin().args(["validate", "--config"]).arg(&path).envs([
            ("SCHEMA_T_LISTEN", "127.0.0.1:0"),
            ("SCHEMA_T_PORT", "8443"),
            ("SCHEMA_T_MAX_BODY", "1024"),
            ("SCHEMA_T_TIMEOUT", "5s"),
            ("SCHEMA_T_URL", "http://127.0.0.1:9000"),
            ("SCHEMA_T_STRIP", "true"),
            ("SCHEMA_T_WINDOW", "fixed"),
        ]),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout, out.stderr);
}

// Behaviour: the editor modeline on the first line of the shipped gateway.yaml names
// the shipped schema file next to it, and `tollgate init` writes the schema beside the
// starter config it points at (an existing, different schema is kept without --force).
#[test]
fn modeline_points_at_the_schema() {
    const MODELINE: &str = "# yaml-language-server: $schema=./gateway.schema.json";
    let shipped = read("gateway.yaml");
    assert_eq!(shipped.lines().next(), Some(MODELINE));
    assert!(root().join("gateway.schema.json").is_file());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let out = output_within(
        "tollgate init",
        bin().args(["init", "--output"]).arg(&config),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let written = std::fs::read_to_string(&config).unwrap();
    assert_eq!(written.lines().next(), Some(MODELINE));
    let schema = dir.path().join("gateway.schema.json");
    assert_eq!(std::fs::read_to_string(&schema).unwrap(), printed_schema());

    // A schema someone changed is kept (and said so) unless --force.
    std::fs::write(&schema, "{}\n").unwrap();
    std::fs::remove_file(&config).unwrap();
    let out = output_within(
        "tollgate init",
        bin().args(["init", "--output"]).arg(&config),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&schema).unwrap(), "{}\n");
    let out = output_within(
        "tollgate init",
        bin().args(["init", "--force", "--output"]).arg(&config),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&schema).unwrap(), printed_schema());
}
