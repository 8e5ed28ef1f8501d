//! `tracing:`: span export over OTLP/HTTP and the sampling of new traces. Its serde model
//! and how it compiles into `otel::Settings` (read per request by `otel::layer`; the
//! exporter itself lives in the gateway and follows reloads).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::validate::{http_url, Problems};
use crate::otel::Settings;

/// `tracing: {otlp_endpoint, service_name, sample_ratio}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingModel {
    /// The OTLP/HTTP receiver, e.g. `http://127.0.0.1:4318` (an OpenTelemetry
    /// Collector's `otlp` receiver): spans are POSTed to `<endpoint>/v1/traces` (a URL
    /// that already ends in `/v1/traces` is used as it is). Without it nothing is
    /// exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default `tollgate`).
    pub service_name: Option<String>,
    /// The share of new traces that are sampled, 0.0 to 1.0 (default 1.0). A request
    /// with a valid `traceparent` keeps its caller's sampled flag.
    pub sample_ratio: Option<f64>,
}

/// The OTLP traces URL for `otlp_endpoint`.
fn traces_url(mut u: url::Url) -> String {
    if !u.path().trim_end_matches('/').ends_with("/v1/traces") {
        let path = format!("{}/v1/traces", u.path().trim_end_matches('/'));
        u.set_path(&path);
    }
    u.to_string()
}

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
    use super::*;

    fn compile_one(m: TracingModel) -> (Option<Arc<Settings>>, Vec<String>) {
        let mut p = Problems::default();
        let s = compile(Some(&m), &mut p);
        (
            s,
            p.0.iter()
                .map(|x| format!("{}: {}", x.path, x.message))
                .collect(),
        )
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
}
