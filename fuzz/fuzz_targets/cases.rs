//! The cases file of `tollgate test` (`policy_test::cases::parse`), from arbitrary bytes,
//! against a config with the token service (`local`), a mintable JWT issuer (`corp`) and
//! an introspection issuer (`opaque`).
//!
//! Properties:
//! - nothing panics;
//! - a refusal names at least one problem, each located (line and column ≥ 1, inside the
//!   file) with a message, and names the file it was given;
//! - an accepted file has at least one case; every case has a non-blank name unique in
//!   the file, a line inside the file, a path starting with `/` that is a valid request
//!   target, a status 100-599 (401/403/429 with a reason or error code), no
//!   `Authorization` header (the token is `token:`), valid host/origin header values, a
//!   literal token that is non-blank, trimmed and fits a header, and minted tokens only
//!   for `local` or issuers listed under `mint.issuers`, never `local` itself there.
//!
//! `${file:..}` reads files: inputs that could name a device or kernel file (which never
//! ends) are skipped; relative paths resolve in an empty scratch folder.
#![no_main]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::policy_test::cases::{parse, IssuerInfo, TokenSpec};

struct Fixture {
    base: PathBuf,
    issuers: Vec<IssuerInfo>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("tollgate-fuzz-cases-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("scratch folder");
        Fixture {
            base,
            issuers: vec![
                IssuerInfo {
                    name: "local".into(),
                    mintable: Ok(()),
                },
                IssuerInfo {
                    name: "corp".into(),
                    mintable: Ok(()),
                },
                IssuerInfo {
                    name: "opaque".into(),
                    mintable: Err("uses introspection".into()),
                },
            ],
        }
    })
}

const BAD: [&str; 7] = ["/dev", "/proc", "/sys", "dev/", "proc/", "sys/", "fd/"];

fn names_bad_path(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    BAD.iter().any(|bad| s.contains(bad))
}

fn unsafe_for_fuzzing(v: &Value) -> bool {
    match v {
        Value::String(s) => names_bad_path(s),
        Value::Array(xs) => xs.iter().any(unsafe_for_fuzzing),
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| names_bad_path(k) || unsafe_for_fuzzing(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_bad_path(text) {
        return;
    }
    match serde_saphyr::from_str::<Value>(text) {
        Ok(v) if unsafe_for_fuzzing(&v) => return,
        Err(_) if text.contains('\\') => return,
        _ => {}
    }
    let f = fixture();
    // Lines as YAML counts them (CR, LF and CRLF end a line).
    let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
    match parse(text, "fuzz.cases.yaml", &f.base, &f.issuers) {
        Err(e) => {
            assert_eq!(e.file, "fuzz.cases.yaml");
            assert!(!e.problems.is_empty(), "refused without a problem");
            for p in &e.problems {
                assert!(p.line >= 1 && p.column >= 1, "{p:?}");
                assert!(p.line <= lines + 1, "{p:?} beyond {lines} lines");
                assert!(!p.message.is_empty(), "{p:?}");
            }
        }
        Ok(file) => {
            assert!(!file.cases.is_empty(), "accepted without cases");
            assert!(
                !file.mint_issuers.iter().any(|i| i == "local"),
                "{:?}",
                file.mint_issuers
            );
            for i in &file.mint_issuers {
                assert!(i == "corp", "{i} cannot mint");
            }
            let mut names = HashSet::new();
            for c in &file.cases {
                assert!(!c.name.trim().is_empty(), "{c:?}");
                assert!(names.insert(c.name.clone()), "name twice: {c:?}");
                assert!(c.line >= 1 && c.line <= lines, "{c:?}");
                assert!(c.path.starts_with('/'), "{c:?}");
                assert!(c.path.parse::<http::Uri>().is_ok(), "{c:?}");
                for v in [&c.host, &c.origin].into_iter().flatten() {
                    assert!(!v.is_empty() && HeaderValue::from_str(v).is_ok(), "{c:?}");
                }
                for (n, _) in &c.headers {
                    assert_ne!(*n, http::header::AUTHORIZATION, "{c:?}");
                }
                let e = &c.expect;
                assert!((100..=599).contains(&e.status), "{c:?}");
                if [401, 403, 429].contains(&e.status) {
                    assert!(e.reason.is_some() || e.error.is_some(), "{c:?}");
                }
                match &c.token {
                    None => {}
                    Some(TokenSpec::Literal(t)) => {
                        assert!(!t.is_empty() && t.trim() == t, "{c:?}");
                        assert!(HeaderValue::from_str(&format!("Bearer {t}")).is_ok());
                    }
                    Some(TokenSpec::Mint {
                        issuer, expires_in, ..
                    }) => {
                        assert!(
                            issuer == "local" || file.mint_issuers.contains(issuer),
                            "{c:?}"
                        );
                        assert!(expires_in.unsigned_abs() <= 10 * 365 * 86_400, "{c:?}");
                    }
                }
            }
        }
    }
});
