//! Config loading (`config::load_str`) from arbitrary YAML: never panics, every
//! refusal names at least one problem with a location, and an accepted config only has
//! normalised route prefixes.
//!
//! Loading reads the files a config names (`${file:...}`, certificates, keys); it never
//! writes one. The harness keeps the filesystem out of the fuzzer's reach: relative
//! paths resolve in an empty scratch folder, and inputs naming device or kernel files
//! (which never end, e.g. `/dev/zero`) are skipped.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::config::{load_str, Registry};

struct Fixture {
    base: PathBuf,
    /// Shared like the gateway shares it across reloads: HTTP clients (and their
    /// native root certificates) are built once, not per input.
    reg: Registry,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base =
            std::env::temp_dir().join(format!("tollgate-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("scratch folder");
        Fixture {
            base,
            reg: Registry::default(),
        }
    })
}

const BAD: [&str; 7] = ["/dev", "/proc", "/sys", "dev/", "proc/", "sys/", "fd/"];

fn names_bad_path(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    BAD.iter().any(|bad| s.contains(bad))
}

/// Whether any key or string in the document could name an endless device file.
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
    // As written, and as decoded (escape sequences can spell a path). A document that
    // cannot be decoded as JSON-like data (e.g. a list used as a key) is skipped when it
    // has escapes.
    if names_bad_path(text) {
        return;
    }
    match serde_saphyr::from_str::<Value>(text) {
        Ok(v) if unsafe_for_fuzzing(&v) => return,
        Err(_) if text.contains('\\') => return,
        _ => {}
    }
    let f = fixture();
    match load_str(text, "fuzz.yaml", &f.base, &f.reg) {
        Ok(rt) => {
            // What a request is matched against was checked at load time.
            for r in &rt.routes {
                let n = tollgate::route::normalize_path(&r.path_prefix)
                    .unwrap_or_else(|e| panic!("route {} has a bad prefix: {e:?}", r.name));
                assert_eq!(n.trim_end_matches('/'), r.path_prefix.trim_end_matches('/'));
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "refused without a problem");
            for p in &e.problems {
                assert!(p.line >= 1 && p.column >= 1, "{p:?}");
                assert!(!p.message.is_empty(), "{p:?}");
            }
        }
    }
});
