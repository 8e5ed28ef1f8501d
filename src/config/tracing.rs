//! `tracing:`: span export over OTLP/HTTP and the sampling of new traces. Its model (a
//! [`section!`] block) and how it compiles into `otel::Settings` (read per request by
//! `otel::layer`; the exporter itself lives in the gateway and follows reloads).

use std::sync::Arc;

use super::validate::{http_url, Problems};
use super::yaml::section;
use crate::otel::Settings;

section! {
    /// `tracing:`
    pub struct TracingModel {
        /// The OTLP/HTTP receiver, e.g. `http://127.0.0.1:4318` (an OpenTelemetry
        /// Collector's `otlp` receiver): spans are POSTed to `<endpoint>/v1/traces` (a
        /// URL that already ends in `/v1/traces` is used as it is). Without it nothing
        /// is exported.
        "otlp_endpoint" => pub otlp_endpoint: Option<String>,
        /// `service.name` of the exported spans (default `tollgate`).
        "service_name" => pub service_name: Option<String>,
        /// The share of new traces that are sampled, 0.0 to 1.0 (default 1.0). A
        /// request with a valid `traceparent` keeps its caller's sampled flag.
        "sample_ratio" => pub sample_ratio: Option<f64> as schema(or_substituted(serde_json::json!({"type": "number", "minimum": 0, "maximum": 1}))),
    }
}

/// The OTLP traces URL for `otlp_endpoint`.
fn traces_url(mut u: url::Url) -> String {
    if !u.path().trim_end_matches('/').ends_with("/v1/traces") {
        let path = format!("{}/v1/traces", u.path().trim_end_matches('/'));
        u.set_path(&path);
    }
    u.to_string()
}

/// `None` without a `tracing:` block (traces are still continued and started, nothing
/// is exported); every problem recorded in `p`.
pub fn compile(m: Option<&TracingModel>, p: &mut Problems) -> Option<Arc<Settings>> {
    let m = m?;
    let mut s = Settings::default();
    if let Some(e) = &m.otlp_endpoint {
        if let Some(u) = http_url(p, "tracing.otlp_endpoint", e) {
            if u.query().is_some() || u.fragment().is_some() {
                p.add(
                    "tracing.otlp_endpoint",
                    "the OTLP endpoint takes no query or fragment (e.g. http://127.0.0.1:4318)",
                );
            } else {
                match traces_url(u).parse::<http::Uri>() {
                    Ok(uri) => s.endpoint = Some(uri),
                    Err(err) => p.add(
                        "tracing.otlp_endpoint",
                        format!("invalid URL \"{e}\": {err}"),
                    ),
                }
            }
        }
    }
    if let Some(n) = &m.service_name {
        if n.trim().is_empty() || n.chars().any(char::is_control) {
            p.add(
                "tracing.service_name",
                "service_name must be a non-empty name without control characters",
            );
        } else {
            s.service_name = Arc::from(n.as_str());
        }
    }
    if let Some(r) = m.sample_ratio {
        if !(0.0..=1.0).contains(&r) {
            p.add(
                "tracing.sample_ratio",
                format!("sample_ratio must be between 0.0 and 1.0, got {r}"),
            );
        } else {
            s.sample_ratio = r;
        }
    }
    Some(Arc::new(s))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{load_str, Registry};

    fn compile_one(m: TracingModel) -> (Option<Arc<Settings>>, Vec<String>) {
        let mut p = Problems::default();
        let s = compile(Some(&m), &mut p);
        (
            s,
            p.errors
                .iter()
                .map(|x| format!("{}: {}", x.path, x.message))
                .collect(),
        )
    }

    const BASE: &str = "server:\n  listen: \"127.0.0.1:0\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:1\"\nroutes:\n  - name: r\n    path_prefix: /api\n    upstream: u\n    auth: none\n";

    /// `tracing:` lines appended to a valid file (the block starts at line 11).
    fn load(tracing: &str) -> Result<crate::runtime::Runtime, Vec<String>> {
        load_str(
            &format!("{BASE}{tracing}"),
            "g.yaml",
            Path::new("."),
            &Registry::default(),
        )
        .map_err(|e| e.lines())
    }

    /// What `validate` reports for `tracing` appended to a valid file.
    fn problems(tracing: &str) -> Vec<String> {
        load(tracing).err().expect("the file is refused")
    }

    // Behaviour: the base URL gets the OTLP traces path; one that has it is kept;
    // defaults fill the rest.
    #[test]
    fn endpoint_gets_the_traces_path() {
        for (given, want) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "https://otel.example/v1/traces",
                "https://otel.example/v1/traces",
            ),
            (
                "https://otel.example/prefix",
                "https://otel.example/prefix/v1/traces",
            ),
        ] {
            let (s, errs) = compile_one(TracingModel {
                otlp_endpoint: Some(given.into()),
                ..Default::default()
            });
            assert!(errs.is_empty(), "{errs:?}");
            let s = s.unwrap();
            assert_eq!(s.endpoint.as_ref().unwrap().to_string(), want);
            assert_eq!(&*s.service_name, "tollgate");
            assert_eq!(s.sample_ratio, 1.0);
        }
    }

    // Behaviour: bad values are named with their key path.
    #[test]
    fn bad_values_are_located() {
        let (_, errs) = compile_one(TracingModel {
            otlp_endpoint: Some("grpc://collector:4317".into()),
            service_name: Some(" ".into()),
            sample_ratio: Some(1.5),
        });
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("tracing.otlp_endpoint: URL must be http://"),
            "{errs:?}"
        );
        assert!(errs[1].starts_with("tracing.service_name:"), "{errs:?}");
        assert!(
            errs[2].starts_with("tracing.sample_ratio: sample_ratio must be between"),
            "{errs:?}"
        );
        let (_, errs) = compile_one(TracingModel {
            sample_ratio: Some(f64::NAN),
            ..Default::default()
        });
        assert_eq!(errs.len(), 1, "{errs:?}");
    }

    // Behaviour: a block read from a file compiles into the runtime's settings (a
    // whole number is a ratio too); no block means no settings.
    #[test]
    fn read_from_a_file() {
        let rt = load(
            "tracing:\n  otlp_endpoint: \"http://127.0.0.1:4318\"\n  service_name: edge\n  sample_ratio: 0.25\n",
        )
        .unwrap();
        let s = rt.tracing.expect("settings");
        assert_eq!(
            s.endpoint.as_ref().unwrap().to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(&*s.service_name, "edge");
        assert_eq!(s.sample_ratio, 0.25);
        let rt = load("tracing:\n  sample_ratio: 0\n").unwrap();
        let s = rt.tracing.expect("settings");
        assert_eq!(s.sample_ratio, 0.0);
        assert!(s.endpoint.is_none());
        assert!(load("").unwrap().tracing.is_none());
    }

    // Behaviour: every problem of the block is reported in one pass at its file
    // position, alongside a problem elsewhere in the file: wrong kinds, unknown keys
    // (with a hint) and bad values.
    #[test]
    fn every_problem_at_its_place() {
        let errs = problems(
            "tracing:\n  otlp_endpoint: \"grpc://collector:4317\"\n  service_name: \" \"\n  sample_ratio: 1.5\n  sample_rate: 0.5\nrate_limits:\n  - name: x\n",
        );
        let want = [
            "g.yaml:12:18 tracing.otlp_endpoint: URL must be http://",
            "g.yaml:13:17 tracing.service_name: service_name must be a non-empty name",
            "g.yaml:14:17 tracing.sample_ratio: sample_ratio must be between 0.0 and 1.0, got 1.5",
            "g.yaml:15:3 tracing.sample_rate: unknown key \"sample_rate\" (did you mean \"sample_ratio\"?)",
            "g.yaml:17:5 rate_limits[0]: missing required key",
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (e, w) in errs.iter().zip(want) {
            assert!(
                e.starts_with(w),
                "{e:?} does not start with {w:?}\n{errs:#?}"
            );
        }
        let errs = problems(
            "tracing:\n  sample_ratio: \"0.5\"\n  service_name: 7\n  otlp_endpoint: [a]\n",
        );
        let want = [
            "g.yaml:12:17 tracing.sample_ratio: expected a number, found the text \"0.5\" (write it without quotes)",
            "g.yaml:13:17 tracing.service_name: expected text, found the number 7",
            "g.yaml:14:18 tracing.otlp_endpoint: expected text, found a list",
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (e, w) in errs.iter().zip(want) {
            assert!(
                e.starts_with(w),
                "{e:?} does not start with {w:?}\n{errs:#?}"
            );
        }
        let errs = problems("tracing: http://127.0.0.1:4318\n");
        assert_eq!(
            errs,
            ["g.yaml:11:10 tracing: expected a mapping (key: value lines), found text"]
        );
    }
}
