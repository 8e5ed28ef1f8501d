//! What `validate` reports for a config, through [`load_str`]: every problem once, at
//! its key path, in words an operator understands.

use super::*;

fn problems(yaml: &str) -> String {
    match load_str(yaml, "g.yaml", Path::new("."), &Registry::default()) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

// Behaviour: a wrongly typed secret is reported without its value.
#[test]
fn secret_values_are_not_echoed() {
    let yaml = "server:\n  listen: \"127.0.0.1:0\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n    auth:\n      type: basic\n      username: a\n      password: 987654321\n";
    let e = load_str(yaml, "g.yaml", Path::new("."), &Registry::default())
        .err()
        .unwrap();
    let text = e.to_string();
    assert!(text.contains("upstreams[0].auth.password"), "{text}");
    assert!(!text.contains("987654321"), "{text}");
}

// Behaviour: a free-form key (a claim name, a token-request parameter) that YAML reads as
// a number or a boolean is refused, located, with the way out: it would otherwise be the
// number as it prints (`1_000` -> `1000`), another name than the file's. Quoted, the same
// keys are names, spelt exactly as written; `010` (not a number to this reader) is one.
#[test]
fn keys_read_as_numbers_are_refused_not_renamed() {
    let claims = |block: &str| {
        format!("server:\n  listen: \"127.0.0.1:0\"\nissuers:\n  - name: corp\n    issuer: \"https://idp\"\n    jwks_uri: \"http://127.0.0.1:1/jwks\"\n    audiences: [a]\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n    auth:\n      type: oauth2_client_credentials\n      token_url: \"http://127.0.0.1:1/token\"\n      client_id: c\n      client_secret: s\n      extra_params:\n        {block}: x\nroutes:\n  - name: r\n    path_prefix: /\n    upstream: u\n    auth:\n      issuers: [corp]\n      claims:\n        {block}: [y]\n")
    };
    for (key, printed, kind) in [
        ("1_000", "1000", "a number"),
        ("0x10", "16", "a number"),
        ("true", "true", "a boolean"),
    ] {
        let text = problems(&claims(key));
        for place in ["upstreams[0].auth.extra_params", "routes[0].auth.claims"] {
            let line = text
                .lines()
                .find(|l| l.contains(place))
                .unwrap_or_else(|| panic!("{key}: nothing at {place}: {text}"));
            assert!(
                line.contains(&format!("the key {printed} is read as {kind}"))
                    && line.contains("quotes"),
                "{key}: {line}"
            );
        }
        // Reported once: not again as an empty `claims` map.
        assert_eq!(text.lines().count(), 2, "{key}: {text}");
        let quoted = problems(&claims(&format!("\"{key}\"")));
        assert_eq!(quoted, "", "{key} quoted");
    }
    for key in ["\"1_000\"", "010"] {
        let config = load_str(&claims(key), "g.yaml", Path::new("."), &Registry::default())
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let text = format!("{:?}", config.routes[0].auth);
        assert!(text.contains(key.trim_matches('"')), "{key}: {text}");
    }
}

// Behaviour: an issuer leeway over an hour is a validation error (it would keep
// expired tokens valid; huge values once overflowed the expiry check).
#[test]
fn huge_leeway_is_refused() {
    let yaml = "server:\n  listen: \"127.0.0.1:0\"\nissuers:\n  - name: corp\n    issuer: \"https://idp\"\n    jwks_uri: \"http://127.0.0.1:1/jwks\"\n    audiences: [a]\n    leeway: 99999999999s\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\nroutes:\n  - name: r\n    path_prefix: /\n    upstream: u\n    auth: {issuers: [corp]}\n";
    let text = problems(yaml);
    assert!(text.contains("issuers[0].leeway"), "{text}");
    assert!(text.contains("maximum"), "{text}");
}

// Behaviour: sender_constraint takes none, dpop or mtls (issuers, the token service and
// its clients), and dpop.iat_window is bounded; each problem at its key path.
#[test]
fn sender_constraints_are_checked() {
    let issuer = |extra: &str| {
        format!("server:\n  listen: \"127.0.0.1:0\"\nissuers:\n  - name: corp\n    issuer: \"https://idp\"\n    jwks_uri: \"http://127.0.0.1:1/jwks\"\n    audiences: [a]\n{extra}upstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\nroutes:\n  - name: r\n    path_prefix: /\n    upstream: u\n    auth: {{issuers: [corp]}}\n")
    };
    assert_eq!(
        problems(&issuer(
            "    sender_constraint: dpop\n    dpop: {iat_window: 30s}\n"
        )),
        ""
    );
    assert_eq!(problems(&issuer("    sender_constraint: mtls\n")), "");
    let text = problems(&issuer("    sender_constraint: DPoP\n"));
    assert!(text.contains("issuers[0].sender_constraint: unknown sender_constraint \"DPoP\"; use none, dpop or mtls"), "{text}");
    let text = problems(&issuer("    dpop: {iat_window: 2h}\n"));
    assert!(text.contains("issuers[0].dpop.iat_window"), "{text}");
    let text = problems(&issuer("    dpop: {iat_windw: 2s}\n"));
    assert!(text.contains("iat_window"), "did you mean: {text}");
    // dpop.replay: store redis needs stores.redis; unknown values are named.
    let text = problems(&issuer("    dpop: {replay: {store: redis}}\n"));
    assert!(
        text.contains("issuers[0].dpop.replay.store: store: redis needs stores.redis"),
        "{text}"
    );
    let text = problems(&issuer("    dpop: {replay: {on_error: ignore}}\n"));
    assert!(text.contains("issuers[0].dpop.replay.on_error"), "{text}");
    assert_eq!(
        problems(&issuer("    dpop: {replay: {store: local}}\n")),
        ""
    );
    let ts = "server:\n  listen: \"127.0.0.1:0\"\ntoken_service:\n  issuer: \"https://gw\"\n  audience: a\n  sender_constraint: bearer\n  clients:\n    - id: c\n      secret: s\n      scopes: [x]\n      sender_constraint: tls\n";
    let text = problems(ts);
    assert!(text.contains("token_service.sender_constraint"), "{text}");
    assert!(
        text.contains("token_service.clients[0].sender_constraint"),
        "{text}"
    );
}

fn check_text(yaml: &str, base: &Path) -> Checked {
    check_str(
        yaml,
        "g.yaml",
        base,
        &Registry::default(),
        &mut LoadTimings::default(),
    )
}

fn lines(c: &Checked) -> (Vec<String>, Vec<String>) {
    let errors = match &c.result {
        Ok(_) => Vec::new(),
        Err(e) => e.lines(),
    };
    (errors, c.warning_lines())
}

const SERVER: &str = "server:\n  listen: \"127.0.0.1:0\"\n";
const UPSTREAM: &str = "upstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n";

fn with_route(extra_server: &str, route_extra: &str) -> String {
    format!(
        "{SERVER}{extra_server}{UPSTREAM}routes:\n  - name: r\n    path_prefix: /api\n    upstream: u\n    auth: none\n{route_extra}"
    )
}

// Behaviour: a warning is reported with its place and does not refuse the file.
#[test]
fn warnings_do_not_refuse_a_file() {
    let yaml = format!(
        "{SERVER}issuers:\n  - name: corp\n    issuer: \"https://idp\"\n    jwks_uri: \"http://127.0.0.1:1/jwks\"\n    skip_audience_check: true\ntoken_service:\n  issuer: \"https://gw\"\n  audience: gw\n{UPSTREAM}routes:\n  - name: r\n    path_prefix: /api\n    upstream: u\n    auth: {{issuers: [corp]}}\n"
    );
    let c = check_text(&yaml, Path::new("."));
    let (errors, warnings) = lines(&c);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("g.yaml:7:26 issuers[0].skip_audience_check: warning: tokens this issuer made for any other API"),
        "{warnings:#?}"
    );
    assert!(
        warnings[1].starts_with("g.yaml:8:1 token_service: warning: signing_key is not set"),
        "{warnings:#?}"
    );
}

// Behaviour: methods are checked against the known set, with a suggestion for a typo;
// other methods are allowed only when listed in server.extension_methods.
#[test]
fn http_methods_are_checked() {
    let perms = "    permissions:\n      - path: /api/x\n        methods: [GET, PSOT, PURGE]\n";
    let route = |server_extra| {
        with_route(server_extra, perms).replace("auth: none", "auth: {issuers: [corp]}")
            + "issuers:\n  - name: corp\n    issuer: i\n    jwks_uri: \"http://127.0.0.1:1/j\"\n    audiences: [a]\n"
    };
    let text = problems(&route(""));
    assert!(
        text.contains("g.yaml:13:24 routes[0].permissions[0].methods[1]: unknown HTTP method \"PSOT\" (did you mean \"POST\"?)"),
        "{text}"
    );
    assert!(
        text.contains("routes[0].permissions[0].methods[2]: unknown HTTP method \"PURGE\": list it under server.extension_methods"),
        "{text}"
    );
    let text = problems(&route("  extension_methods: [PURGE]\n"));
    assert!(!text.contains("PURGE"), "{text}");
    assert!(text.contains("PSOT"), "{text}");
    let text = problems(&route("  extension_methods: [purge, GET]\n"));
    assert!(
        text.contains("server.extension_methods[0]: HTTP methods are case-sensitive"),
        "{text}"
    );
}

// Behaviour: an unknown key is compared with the keys of its own block only; a key
// that belongs elsewhere says where.
#[test]
fn unknown_keys_are_judged_per_block() {
    let text = problems(&with_route("  timeout: 5s\n", "    timout: 5s\n"));
    assert!(
        text.contains(
            "server.timeout: unknown key \"timeout\" here (\"timeout\" is a key of upstreams[], upstreams[].health_check, stores.redis)"
        ),
        "{text}"
    );
    assert!(!text.contains("did you mean \"timeout\""), "{text}");
    // A route has no timeout: the typo is not "corrected" to a key of another block.
    assert!(
        text.contains("routes[0].timout: unknown key \"timout\""),
        "{text}"
    );
    let text = problems(&with_route("  lisen: \"127.0.0.1:1\"\n", ""));
    assert!(
        text.contains("server.lisen: unknown key \"lisen\" (did you mean \"listen\"?)"),
        "{text}"
    );
}

// Behaviour: one broken upstream is one problem, not one more per route using it.
#[test]
fn one_root_cause_is_reported_once() {
    let mut yaml = format!("{SERVER}upstreams:\n  - name: bi\n    url: \"ftp://x\"\nroutes:\n");
    for i in 0..12 {
        yaml.push_str(&format!(
            "  - name: r{i}\n    path_prefix: /r{i}\n    upstream: bi\n    auth: none\n"
        ));
    }
    let e = load_str(&yaml, "g.yaml", Path::new("."), &Registry::default())
        .err()
        .unwrap();
    assert_eq!(e.lines().len(), 1, "{e}");
    assert!(
        e.to_string()
            .contains("upstreams[0].url: URL must be http:// or https://"),
        "{e}"
    );
    // The same for an issuer with a problem, and for a key of the wrong kind.
    let yaml = "server:\n  listen: 8080\n  admin_listen: [x]\n";
    let e = load_str(yaml, "g.yaml", Path::new("."), &Registry::default())
        .err()
        .unwrap();
    assert_eq!(e.lines().len(), 2, "{e}");
}

// Behaviour: durations may be decimal; negative, NaN and overflowing ones are refused
// in words.
#[test]
fn decimal_durations() {
    let ok = with_route("", "").replace(
        "    url: \"http://127.0.0.1:1\"\n",
        "    url: \"http://127.0.0.1:1\"\n    timeout: 1.5s\n",
    );
    let rt = load_str(&ok, "g.yaml", Path::new("."), &Registry::default()).unwrap();
    assert_eq!(
        rt.upstreams[0].timeout,
        std::time::Duration::from_millis(1500)
    );
    for (bad, words) in [
        ("-1s", "cannot be negative"),
        ("nan", "expected e.g. 500ms, 1.5s"),
        ("1e400s", "unknown unit"),
        ("99999999999999999999999999d", "too large"),
    ] {
        let text = problems(&ok.replace("1.5s", bad));
        assert!(
            text.contains(&format!(
                "g.yaml:6:14 upstreams[0].timeout: invalid duration \"{bad}\""
            )),
            "{text}"
        );
        assert!(text.contains(words), "{bad}: {text}");
    }
    let text = problems(&ok.replace("1.5s", "1.5"));
    assert!(text.contains("write \"1.5s\""), "{text}");
}

// Behaviour: a bare port as listen address gets the two ways to write it, quoted or not.
#[test]
fn a_port_alone_is_explained() {
    for listen in ["\"8080\"", "8080"] {
        let text = problems(&with_route("", "").replace("\"127.0.0.1:0\"", listen));
        assert!(
            text.contains("g.yaml:2:11 server.listen: invalid listen address \"8080\": a port alone is not an address; write \":8080\" (every interface) or \"127.0.0.1:8080\" (this machine only)"),
            "{text}"
        );
    }
    let rt = load_str(
        &with_route("", "").replace("\"127.0.0.1:0\"", "\":0\""),
        "g.yaml",
        Path::new("."),
        &Registry::default(),
    )
    .unwrap();
    assert_eq!(rt.server.listen, "0.0.0.0:0".parse().unwrap());
}

// Behaviour: a tab in the indentation is named as such, at its place.
#[test]
fn tabs_in_indentation() {
    let text = problems(&with_route("", "").replace("  listen:", "\tlisten:"));
    assert_eq!(
        text,
        "g.yaml:2:1: YAML syntax error: a tab in the indentation; YAML indents with spaces only (replace the tab with spaces)"
    );
}

// Behaviour: no message names a Rust type, whatever is written where.
#[test]
fn no_rust_type_names_in_messages() {
    let yaml = "server:\n  listen: [1]\n  redirect_https_port: 70000\n  limits: 5\n  extension_methods: GET\nissuers: {a: 1}\ntoken_service:\n  issuer: 5\n  create_signing_key: \"yes\"\n  clients: [x]\nupstreams:\n  - name: true\n    url: 1.5\n    auth: [basic]\nroutes:\n  - name: ~\n    path_prefix: {a: b}\n    upstream: u\n    auth: 7\n    permissions: [{path: /x, methods: [GET], scopes: -1}]\n    hosts: [1, 2]\n    grant_type_to_query: maybe\n";
    let text = problems(yaml);
    assert!(text.lines().count() >= 14, "{text}");
    for l in text.lines() {
        let message = l.split_once(": ").map(|(_, m)| m).unwrap_or(l);
        assert!(!message.contains("invalid type"), "{l}");
        for word in message.split(|c: char| !c.is_ascii_alphanumeric()) {
            let rust = [
                "u8", "u16", "u32", "u64", "i64", "f64", "usize", "bool", "str", "struct", "enum",
                "Option", "Some", "None", "Vec", "String", "sequence", "map", "unit",
            ];
            assert!(!rust.contains(&word), "{word:?} in {l}");
        }
    }
}

// Behaviour: a 10,000-route file with problems spread through it reports every one,
// each at its own line.
#[test]
fn every_problem_of_a_large_file() {
    let mut yaml = format!("{SERVER}{UPSTREAM}routes:\n");
    let mut expected = Vec::new();
    for i in 0..10_000 {
        let line = 7 + i * 4;
        let (upstream, prefix) = match i % 1000 {
            7 => {
                expected.push(format!(
                    "g.yaml:{}:15 routes[{i}].upstream: unknown upstream \"v\"",
                    line + 2
                ));
                ("v", format!("/r{i}"))
            }
            500 => {
                expected.push(format!(
                    "g.yaml:{}:18 routes[{i}].path_prefix: path_prefix is not normalised",
                    line + 1
                ));
                ("u", format!("/r{i}/../x{i}"))
            }
            _ => ("u", format!("/r{i}")),
        };
        let auth = if i % 2500 == 3 {
            expected.push(format!(
                "g.yaml:{}:5 routes[{i}].auht: unknown key \"auht\" (did you mean \"auth\"?)",
                line + 3
            ));
            "auht"
        } else {
            "auth"
        };
        yaml.push_str(&format!(
            "  - name: r{i}\n    path_prefix: {prefix}\n    upstream: {upstream}\n    {auth}: none\n"
        ));
    }
    let e = load_str(&yaml, "g.yaml", Path::new("."), &Registry::default())
        .err()
        .unwrap();
    let lines = e.lines();
    for x in &expected {
        assert!(
            lines.iter().any(|l| l.starts_with(x.as_str())),
            "missing {x}"
        );
    }
    // A misspelt auth key is not reported a second time as a missing auth.
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn with_tls(cert: &str, key: &str) -> String {
    with_route(
        &format!(
            "  tls:\n    cert: \"{}\"\n    key: \"{}\"\n",
            fixture(cert),
            fixture(key)
        ),
        "",
    )
}

// Behaviour: a certificate and a key that do not belong together are refused (every
// handshake would fail), as are expired and not yet valid certificates.
#[test]
fn tls_certificates_are_checked() {
    assert_eq!(problems(&with_tls("server.pem", "server-key.pem")), "");
    let text = problems(&with_tls("server.pem", "sni-key.pem"));
    assert!(text.starts_with("g.yaml:5:10 server.tls.key: "), "{text}");
    assert!(
        text.contains("sni-key.pem is not the private key of the certificate in"),
        "{text}"
    );
    let text = problems(&with_tls("expired.pem", "dated-key.pem"));
    assert_eq!(
        text,
        "g.yaml:4:11 server.tls.cert: the certificate expired on 2021-01-01T00:00:00Z"
    );
    let text = problems(&with_tls("not-yet-valid.pem", "dated-key.pem"));
    assert_eq!(
        text,
        "g.yaml:4:11 server.tls.cert: the certificate is not valid yet (valid from 2100-01-01T00:00:00Z)"
    );
}

// Behaviour: a `client_ca` that cannot be used is reported at its own key, also when the
// certificate and key have a problem of their own.
#[test]
fn tls_client_ca_is_checked_at_its_key() {
    let with_ca = |key: &str, ca: &str| {
        with_route(
            &format!(
                "  tls:\n    cert: \"{}\"\n    key: \"{}\"\n    client_ca: \"{ca}\"\n",
                fixture("server.pem"),
                fixture(key)
            ),
            "",
        )
    };
    assert_eq!(problems(&with_ca("server-key.pem", &fixture("ca.pem"))), "");
    let text = problems(&with_ca("server-key.pem", "/nonexistent/ca.pem"));
    assert!(
        text.starts_with("g.yaml:6:16 server.tls.client_ca: "),
        "{text}"
    );
    assert!(text.contains("/nonexistent/ca.pem"), "{text}");
    let text = problems(&with_ca("sni-key.pem", &fixture("server-key.pem")));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("g.yaml:5:10 server.tls.key: ")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("g.yaml:6:16 server.tls.client_ca: ")),
        "{text}"
    );
}

// Behaviour: validating a config that asks for a signing key to be created writes
// nothing; the key is generated in memory and the file is left to `tollgate run`.
#[test]
fn checking_never_writes_the_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{SERVER}token_service:\n  issuer: \"https://gw\"\n  audience: gw\n  signing_key: keys/signing.pem\n  create_signing_key: true\n{UPSTREAM}routes:\n  - name: r\n    path_prefix: /api\n    upstream: u\n    auth: {{issuers: [local]}}\n"
    );
    let c = check_text(&yaml, dir.path());
    let (errors, warnings) = lines(&c);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
    assert!(
        warnings[0].contains("token_service.signing_key: warning: "),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains("does not exist yet: `tollgate run` creates it"),
        "{warnings:?}"
    );
    let mut rt = c.result.unwrap();
    let kid = rt.token_service.as_ref().unwrap().key.kid.clone();
    rt.create_files().unwrap();
    let written = std::fs::read(dir.path().join("keys/signing.pem")).unwrap();
    let key = crate::token_service::keys::SigningKey::from_pem(&written).unwrap();
    assert_eq!(
        key.kid, kid,
        "the file holds the key the config was compiled with"
    );
}

// Behaviour: a substituted value (from a variable or a secret's file) is never shown,
// even where it does not fit; neither is text standing where a block belongs.
#[test]
fn substituted_values_are_not_echoed() {
    std::env::set_var("TOLLGATE_TEST_NOT_A_NUMBER", "hunter2-secret");
    let yaml = with_route(
        "  limits:\n    max_connections: \"${env:TOLLGATE_TEST_NOT_A_NUMBER}\"\n  tls: \"hunter2-secret\"\n",
        "    cors:\n      allow_origins: [\"https://a.example\"]\n      allow_credentials: \"${env:TOLLGATE_TEST_NOT_A_NUMBER}\"\n",
    );
    let text = problems(&yaml);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("server.limits.max_connections: expected a whole number, and the substituted value is not one"),
        "{text}"
    );
    assert!(
        text.contains("server.tls: expected a mapping (key: value lines), found text"),
        "{text}"
    );
    assert!(
        text.contains("routes[0].cors.allow_credentials: expected true or false"),
        "{text}"
    );
    std::env::set_var("TOLLGATE_TEST_NOT_A_NUMBER", "42");
    let rt = load_str(
        &with_route(
            "  limits:\n    max_connections: \"${env:TOLLGATE_TEST_NOT_A_NUMBER}\"\n",
            "",
        ),
        "g.yaml",
        Path::new("."),
        &Registry::default(),
    )
    .unwrap();
    assert_eq!(
        rt.server.limits.max_connections, 42,
        "a variable can stand for a number"
    );
}

// Behaviour: main's sections are read like every other block: a missing required key
// is a located problem (not the first serde error), a misspelt key gets a hint from
// its own block, a key of another block says where it belongs, an inline service key
// has its variables substituted and is never echoed, and a Redis URL that is not text
// is refused without its value.
#[test]
fn ported_sections_collect_every_problem() {
    std::env::set_var("TOLLGATE_TEST_SK_SECRET", "hunter2-sk");
    let yaml = format!(
        "{SERVER}stores:\n  redis:\n    url: 6379123\n    timeot: 1s\nrate_limits:\n  - name: a\n    limit: 5\n    per: 1m\n    windo: fixed\n  - key: ip\n    limit: 1\n    per: 1s\n    fetch_path: /x\n{UPSTREAM}    csrf: {{fetch_pth: /}}\n    auth:\n      type: oauth2_client_credentials\n      service_key:\n        clientid: c\n        clientsecret: \"${{env:TOLLGATE_TEST_SK_SECRET}}\"\n        url: \"not a url\"\nlogin:\n  client_id: web\n  cookie_secrett: x\nroutes:\n  - name: r\n    path_prefix: /api\n    upstream: u\n    auth: none\n    rate_limits: [a]\n    strip_cookie: true\n"
    );
    let text = problems(&yaml);
    for want in [
        "stores.redis.url: expected text, found a number (the value is not shown)",
        "stores.redis.timeot: unknown key \"timeot\" (did you mean \"timeout\"?)",
        "rate_limits[0]: missing required key \"key\" (client, subject, ip or header:NAME)",
        "rate_limits[0].windo: unknown key \"windo\" (did you mean \"window\"?)",
        "rate_limits[1]: missing required key \"name\"",
        "rate_limits[1].fetch_path: unknown key \"fetch_path\" here (\"fetch_path\" is a key of upstreams[].csrf)",
        "upstreams[0].csrf.fetch_pth: unknown key \"fetch_pth\" (did you mean \"fetch_path\"?)",
        "upstreams[0].auth.service_key: ",
        "login: missing required key \"issuer\"",
        "login.cookie_secrett: unknown key \"cookie_secrett\" (did you mean \"cookie_secret\"?)",
        "routes[0].strip_cookie: unknown key \"strip_cookie\" (did you mean \"strip_cookies\"?)",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    assert!(
        !text.contains("6379123") && !text.contains("hunter2"),
        "{text}"
    );
    // The rate limit with problems of its own is not "unknown" to the route.
    assert!(!text.contains("unknown rate limit"), "{text}");
}

// Behaviour: a route whose path_prefix is missing or invalid still has the rest of
// its problems reported in the same run (issuer, method, permission path).
#[test]
fn a_bad_prefix_does_not_hide_the_routes_other_problems() {
    for prefix in ["    path_prefix: api\n", ""] {
        let yaml = format!(
            "{SERVER}{UPSTREAM}routes:\n  - name: r\n{prefix}    upstream: u\n    auth:\n      issuers: [nope]\n    permissions:\n      - path: /api/x\n        methods: [GET, PSOT]\n      - path: /api/**/x\n        methods: [GET]\n"
        );
        let text = problems(&yaml);
        for want in [
            "routes[0].auth.issuers[0]: unknown issuer \"nope\"",
            "routes[0].permissions[0].methods[1]: unknown HTTP method \"PSOT\"",
            "routes[0].permissions[1].path: ",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert!(text.contains("path_prefix"), "{text}");
        assert!(!text.contains("outside the route's path_prefix"), "{text}");
    }
}

// Behaviour: the decision listener trusts what the ingress says about a request, so it
// may not share an address with the public (or admin, or redirect) listener.
#[test]
fn decision_listen_needs_its_own_address() {
    let yaml = "server:\n  listen: \"127.0.0.1:8080\"\n  admin_listen: \"127.0.0.1:9901\"\n  decision_listen: \"127.0.0.1:8080\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n";
    let text = problems(yaml);
    assert!(text.contains("server.decision_listen"), "{text}");
    assert!(text.contains("is also server.listen"), "{text}");
    let yaml = yaml.replace(
        "decision_listen: \"127.0.0.1:8080\"",
        "decision_listen: \"127.0.0.1:9191\"",
    );
    assert_eq!(problems(&yaml), "");
    let yaml = yaml.replace("9191", "not-an-address");
    assert!(problems(&yaml).contains("server.decision_listen"));
}

// Behaviour: the public, admin and redirect listeners need addresses of their own (the
// second bind would fail at start); an unspecified address (0.0.0.0) clashes with any
// on its port, port 0 with none.
#[test]
fn listeners_need_addresses_of_their_own() {
    let yaml = |admin: &str, redirect: &str| {
        format!("server:\n  listen: \"127.0.0.1:8080\"\n  admin_listen: \"{admin}\"\n  redirect_listen: \"{redirect}\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n")
    };
    assert_eq!(problems(&yaml("127.0.0.1:9901", "127.0.0.1:8081")), "");
    assert_eq!(problems(&yaml("127.0.0.2:8080", "127.0.0.1:8081")), "");
    let text = problems(&yaml("127.0.0.1:8080", "0.0.0.0:8080"));
    assert_eq!(
        text,
        "g.yaml:3:17 server.admin_listen: 127.0.0.1:8080 is also server.listen's address: every listener needs an address of its own\n\
         g.yaml:4:20 server.redirect_listen: 0.0.0.0:8080 is also server.listen's address: every listener needs an address of its own"
    );
    let zero = "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:0\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n";
    assert_eq!(problems(zero), "");
    // An IPv4 wildcard leaves IPv6 addresses free; an IPv6 one takes IPv4 too.
    assert_eq!(problems(&yaml("0.0.0.0:9901", "[::1]:9901")), "");
    let text = problems(&yaml("[::]:9901", "127.0.0.1:9901"));
    assert!(
        text.contains(
            "server.redirect_listen: 127.0.0.1:9901 is also server.admin_listen's address"
        ),
        "{text}"
    );
    // The decision listener is checked against the others alike.
    let decision = "server:\n  listen: \"127.0.0.1:8080\"\n  admin_listen: \"127.0.0.1:9000\"\n  decision_listen: \"0.0.0.0:9000\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n";
    let text = problems(decision);
    assert!(text.contains("server.decision_listen: 0.0.0.0:9000 is also server.admin_listen's address: the decision service needs a listener of its own"), "{text}");
}

// Behaviour: a plain single `url` keeps the direct forwarding path (no endpoints, no
// balancer); `urls`, or any of retries / passive / health_check / balance on a single
// url, goes through the balancer; a reload of the same endpoints keeps their state.
#[test]
fn only_endpoint_keys_leave_the_direct_path() {
    let up = |keys: &str| {
        format!("server:\n  listen: \"127.0.0.1:0\"\nupstreams:\n  - name: u\n{keys}routes:\n  - name: r\n    path_prefix: /\n    upstream: u\n    auth: none\n")
    };
    let reg = Registry::default();
    let compile = |keys: &str| {
        load_str(&up(keys), "g.yaml", Path::new("."), &reg)
            .unwrap_or_else(|e| panic!("{e}"))
            .upstreams[0]
            .clone()
    };
    assert!(compile("    url: \"http://127.0.0.1:1\"\n")
        .endpoints
        .is_none());
    for keys in [
        "    urls: [\"http://127.0.0.1:1\"]\n",
        "    url: \"http://127.0.0.1:1\"\n    retries: {attempts: 3}\n",
        "    url: \"http://127.0.0.1:1\"\n    passive: {consecutive_failures: 2}\n",
        "    url: \"http://127.0.0.1:1\"\n    health_check: {path: /h}\n",
    ] {
        let u = compile(keys);
        let eps = u.endpoints.as_ref().unwrap_or_else(|| panic!("{keys}"));
        assert_eq!(eps.list().len(), 1);
    }
    let two = "    urls: [\"http://127.0.0.1:1\", \"http://127.0.0.1:2/\"]\n";
    let a = compile(two);
    let b = compile(two);
    let (a, b) = (a.endpoints.as_ref().unwrap(), b.endpoints.as_ref().unwrap());
    assert!(std::sync::Arc::ptr_eq(
        &a.list()[1].state,
        &b.list()[1].state
    ));
    assert_eq!(&*a.list()[1].label, "127.0.0.1:2");
    // Without a retries block, several endpoints retry once on connect failure.
    assert_eq!(a.retries, crate::balancer::Retries::default());
    assert_eq!(
        compile("    urls: [\"http://127.0.0.1:1\"]\n")
            .endpoints
            .as_ref()
            .unwrap()
            .retries,
        crate::balancer::Retries::NONE
    );
}

// Behaviour: `proxy:` takes a proxy URL (http:// or https://, credentials allowed),
// `direct` or `none`; anything else is reported at its key path without repeating the
// value (it may hold a password).
#[test]
fn proxy_values_are_checked() {
    let cfg = |issuer_proxy: &str, upstream_proxy: &str| {
        format!("server:\n  listen: \"127.0.0.1:0\"\nissuers:\n  - name: corp\n    issuer: \"https://idp\"\n    jwks_uri: \"http://127.0.0.1:1/jwks\"\n    audiences: [a]\n    proxy: \"{issuer_proxy}\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\n    proxy: \"{upstream_proxy}\"\nroutes:\n  - name: r\n    path_prefix: /\n    upstream: u\n    auth: {{issuers: [corp]}}\n")
    };
    assert_eq!(problems(&cfg("http://u:p@proxy.corp:3128", "direct")), "");
    assert_eq!(problems(&cfg("none", "https://proxy.corp")), "");
    assert_eq!(
        problems(&cfg("proxy.corp:3128", "http://proxy.corp:8080/")),
        ""
    );
    let text = problems(&cfg("socks5://u:hunter2@proxy:1080", "ftp://proxy"));
    assert!(
        text.contains("issuers[0].proxy: SOCKS proxies are not supported"),
        "{text}"
    );
    assert!(
        text.contains("upstreams[0].proxy: unsupported proxy scheme \"ftp\""),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    let text = problems(&cfg("http://proxy:3128/path?x", ""));
    assert!(
        text.contains("issuers[0].proxy: a proxy URL is scheme://host:port"),
        "{text}"
    );
    assert!(
        text.contains("upstreams[0].proxy: must not be empty"),
        "{text}"
    );
}

// Behaviour: a route with `case_sensitive: false` says its upstream ignores case; a
// case-sensitive route to the same upstream under a shorter route is warned (another
// spelling of its prefix would go through the shorter one); two prefixes equal but for
// case, one of them case-insensitive, are an error.
#[test]
fn case_insensitive_routes_are_checked() {
    let route = |name: &str, prefix: &str, extra: &str| {
        format!(
            "  - name: {name}\n    path_prefix: {prefix}\n    upstream: u\n    auth: none\n{extra}"
        )
    };
    let any_case = "    case_sensitive: false\n";
    let yaml = format!(
        "{SERVER}{UPSTREAM}routes:\n{}{}",
        route("admin", "/admin", ""),
        route("public", "/", any_case)
    );
    let c = check_text(&yaml, Path::new("."));
    let (errors, warnings) = lines(&c);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("routes[0].path_prefix: warning: route \"admin\" is case-sensitive, but route \"public\" says upstream \"u\" ignores case"),
        "{warnings:#?}"
    );
    // Every case-sensitive route under a shorter one is warned, naming the first
    // covering route in the file; a prefix that only shares letters ("/apix") is
    // covered by "/" alone, not by "/api".
    let yaml = format!(
        "{SERVER}{UPSTREAM}routes:\n{}{}{}{}",
        route("items", "/api/v1/items/", ""),
        route("api", "/api", ""),
        route("public", "/", any_case),
        route("apix", "/apix", "")
    );
    let c = check_text(&yaml, Path::new("."));
    let (errors, warnings) = lines(&c);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for (i, name, via) in [
        (0, "items", "api"),
        (1, "api", "public"),
        (3, "apix", "public"),
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(&format!(
                "routes[{i}].path_prefix: warning: route \"{name}\" is case-sensitive"
            )) && w.contains(&format!("through route \"{via}\""))),
            "{name} via {via}: {warnings:#?}"
        );
    }
    // Both case-insensitive: nothing to warn.
    let yaml = format!(
        "{SERVER}{UPSTREAM}routes:\n{}{}",
        route("admin", "/admin", any_case),
        route("public", "/", any_case)
    );
    let c = check_text(&yaml, Path::new("."));
    assert_eq!(lines(&c), (Vec::new(), Vec::new()));
    let yaml = format!(
        "{SERVER}{UPSTREAM}routes:\n{}{}",
        route("a", "/Admin", any_case),
        route("b", "/admin", "")
    );
    let text = problems(&yaml);
    assert!(
        text.contains("routes[1].path_prefix: another route already has path_prefix \"/admin\" for the same hosts"),
        "{text}"
    );
}
