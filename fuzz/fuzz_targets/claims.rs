//! The `claims:` block (`config::claims`, `claims::{check, lookup, describe}`): claim
//! names, dotted paths and values as written in `gateway.yaml`, and a token's claims
//! matched against them.
//!
//! The input is a `claims:` block (YAML, any style), optionally followed by a line `@@`
//! and a JSON token payload (without it, a fixed payload is used). The block is put
//! under a route's `auth.claims` and a permission's `claims` of a small config, which is
//! loaded with `config::load_str` (the public config path, every check included).
//!
//! Properties:
//! - nothing panics; a refusal names at least one problem, each located (line and
//!   column ≥ 1, inside the document) with a message;
//! - an accepted config has the same rules on the route and the permission, every name
//!   non-empty, at most 256 bytes, without spaces, controls or an empty dotted segment,
//!   and at least one value, none empty; when the block has no `${..}` reference and
//!   serde-saphyr reads it as a mapping of strings to strings or lists of strings, the
//!   rules are exactly those (names and values in order);
//! - `claims::check` of the compiled rules — and of rules made directly from the block
//!   with any name at all — equals a reference built on JSON pointers: a rule holds only
//!   when the token has the claim as written or at the dotted path through nested
//!   objects, and its value is a listed string or an array holding one. So a dotted
//!   path never matches a claim the token does not have, and numbers, booleans, objects
//!   and substrings never match. A refusal says `Missing` exactly when the reference
//!   finds no value, and names the claim, never a value;
//! - `claims::describe` gives one line per rule, whatever the values' size.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tollgate::claims::{self, ClaimRule, Mismatch};
use tollgate::config::{load_str, Registry};
use tollgate::policy::RouteAuth;

const HEAD: &str = "server:\n  listen: \"127.0.0.1:0\"\ntoken_service:\n  issuer: \"https://gw.test\"\n  audience: \"https://api.test\"\n  clients:\n    - id: c\n      secret: s\n      scopes: [a]\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:9\"\nroutes:\n  - name: r\n    path_prefix: /api\n    upstream: u\n    auth:\n      claims:\n";
const MID: &str =
    "    permissions:\n      - path: /api/x\n        methods: [GET]\n        claims:\n";
const TOKEN: &str = r#"{"sub":"u1","groups":["analysts","bi-admins"],"tenant":"acme","realm_access":{"roles":["analyst"],"x.y":"dotted"},"https://ex.com/team":"red","a.b":"flat","a":{"b":"nested"},"scope":"a b","level":3,"admin":true,"empty":"","list":[],"obj":{}}"#;

struct Fixture {
    base: PathBuf,
    reg: Registry,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base =
            std::env::temp_dir().join(format!("tollgate-fuzz-claims-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("scratch folder");
        Fixture {
            base,
            reg: Registry::default(),
        }
    })
}

/// `${file:..}` reads files; a device or kernel file never ends. Inputs that could name
/// one are skipped (as in the `config` target); relative paths resolve in an empty
/// scratch folder.
fn reads_files(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    s.contains("file:") || s.contains('\\') && (s.contains("ile") || s.contains("x24"))
}

/// The reference lookup: the name as written, else the dotted path as a JSON pointer.
fn reference(claims: &Map<String, Value>, name: &str) -> Option<Value> {
    if let Some(v) = claims.get(name) {
        return Some(v.clone());
    }
    let pointer: String = name
        .split('.')
        .map(|seg| format!("/{}", seg.replace('~', "~0").replace('/', "~1")))
        .collect();
    let root = Value::Object(claims.clone());
    let v = root.pointer(&pointer)?;
    // A pointer also indexes arrays ("/groups/0"); a claims path does not.
    let mut cur = &root;
    for seg in name.split('.') {
        cur = cur.as_object()?.get(seg)?;
    }
    assert_eq!(cur, v);
    Some(v.clone())
}

fn reference_holds(v: &Value, wanted: &[String]) -> bool {
    let is_wanted = |x: &Value| matches!(x, Value::String(s) if wanted.contains(s));
    match v {
        Value::Array(items) => items.iter().any(is_wanted),
        other => is_wanted(other),
    }
}

fn judge(rules: &[ClaimRule], token: &Map<String, Value>) {
    let got = claims::check(rules, token);
    let mut want = Ok(());
    for r in rules {
        match reference(token, &r.name) {
            None => {
                want = Err(Mismatch::Missing(r.name.clone()));
                break;
            }
            Some(v) if !reference_holds(&v, &r.values) => {
                want = Err(Mismatch::Value(r.name.clone()));
                break;
            }
            Some(_) => {}
        }
    }
    assert_eq!(got, want, "rules {rules:?}");
    for r in rules {
        // lookup alone agrees with the reference too.
        assert_eq!(
            claims::lookup(token, &r.name).cloned(),
            reference(token, &r.name)
        );
    }
    if let Err(m) = &got {
        let text = m.to_string();
        let name = match m {
            Mismatch::Missing(n) | Mismatch::Value(n) => n,
        };
        assert!(text.contains(&**name), "{text}");
    }
    let lines = claims::describe(rules, token);
    assert_eq!(lines.len(), rules.len());
}

/// The block as a YAML parser reads it: `Some(rules)` when it is a mapping of strings to
/// a string or a list of strings. Nothing at all (`claims:` with an empty or
/// commented-out body) is read as no key, like every other key of the config: no rules.
fn as_rules(block: &str) -> Option<Vec<ClaimRule>> {
    let v: Value = serde_saphyr::from_str(block).ok()?;
    if v.is_null() {
        return Some(Vec::new());
    }
    let mut rules = Vec::new();
    for (k, v) in v.as_object()? {
        let values = match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(xs) => xs
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()?,
            _ => return None,
        };
        rules.push(ClaimRule {
            name: k.as_str().into(),
            values,
        });
    }
    Some(rules)
}

fn indent(block: &str, by: &str) -> String {
    block.lines().map(|l| format!("{by}{l}\n")).collect()
}

fn sorted(rules: &[ClaimRule]) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<_> = rules
        .iter()
        .map(|r| (r.name.to_string(), r.values.clone()))
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (block, token) = match text.split_once("\n@@\n") {
        Some((b, t)) => (b, t),
        None => (text, TOKEN),
    };
    // Lines are indented under `claims:`; a lone CR would end a line unindented.
    if block.contains('\r') || reads_files(block) {
        return;
    }
    let token: Map<String, Value> = match serde_json::from_str(token) {
        Ok(Value::Object(m)) => m,
        _ => return,
    };

    // Straight to the matcher, with any names at all.
    let direct = as_rules(block);
    if let Some(rules) = &direct {
        judge(rules, &token);
    }

    // Through the config loader.
    let doc = format!(
        "{HEAD}{}{MID}{}",
        indent(block, "        "),
        indent(block, "          ")
    );
    let f = fixture();
    let lines = doc.lines().count();
    match load_str(&doc, "fuzz.yaml", Path::new(&f.base), &f.reg) {
        Err(e) => {
            assert!(!e.problems.is_empty(), "refused without a problem");
            for p in &e.problems {
                assert!(p.line >= 1 && p.column >= 1, "{p:?}");
                assert!(p.line <= lines + 1, "{p:?} beyond {lines} lines");
                assert!(!p.message.is_empty(), "{p:?}");
            }
        }
        Ok(rt) => {
            let route = &rt.routes[0];
            let RouteAuth::Bearer(rule) = &route.auth else {
                panic!("a Bearer route");
            };
            let on_route = &rule.claims;
            // A quoted scalar left open in the route's copy of the block runs on over
            // the permission (it is then part of a value): there is no permission.
            let perm = route
                .permissions
                .as_ref()
                .and_then(|p| p.entry("/api/x"))
                .map(|e| &e.claims);
            let intact = perm.is_some();
            if let Some(perm) = perm {
                assert_eq!(on_route, perm, "the same block compiled twice");
            }
            for r in on_route {
                assert!(!r.name.is_empty() && r.name.len() <= 256, "{r:?}");
                assert!(
                    !r.name.chars().any(|c| c.is_whitespace() || c.is_control()),
                    "{r:?}"
                );
                assert!(!r.name.split('.').any(str::is_empty), "{r:?}");
                assert!(!r.values.is_empty(), "{r:?}");
                assert!(r.values.iter().all(|v| !v.is_empty()), "{r:?}");
            }
            // Where serde-saphyr reads the block as claims too, the rules are the same.
            // (It reads plain scalars by the YAML core schema — `02` is a number there,
            // text to tollgate's reader — and merges `<<`, which tollgate's reader takes
            // as a claim named `<<`: those blocks are compared by `judge` alone.)
            if let (true, false, false, Some(parsed)) =
                (intact, block.contains('$'), block.contains("<<"), &direct)
            {
                // Keys YAML's core schema reads as numbers (serde-saphyr's `Value`
                // reads more plain scalars as numbers than its deserializer does) are
                // not compared: tollgate's reader refuses a key it reads as a number.
                // Numbers by YAML's reading, not Rust's: `1_000` is one too, and so is
                // `880e302176`, which overflows to infinity (`inf`) (both found).
                let number = |name: &str| {
                    name.replace('_', "").parse::<f64>().is_ok()
                        || serde_saphyr::from_str::<Value>(name).is_ok_and(|v| v.is_number())
                };
                if !parsed.iter().any(|r| number(&r.name)) {
                    assert_eq!(sorted(on_route), sorted(parsed), "{block:?}");
                }
            }
            judge(on_route, &token);
        }
    }
});
