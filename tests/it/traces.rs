//! Tracing (SPEC "Tracing"): W3C trace context continued or started and forwarded with
//! tollgate's span as the parent; the access log's trace id; spans exported over
//! OTLP/HTTP to a real receiver that decodes them with the official protobuf definitions
//! (tests/otlp/receiver.py on PyPI's opentelemetry-proto, installed by
//! tests/otlp/install.sh, which scripts/test.sh runs); a collector that is down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::{client_credentials, idp_introspection, GatewayConfig, AUDIENCE};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str, flags: &str) -> String {
    format!("00-{trace}-{span}-{flags}")
}

/// The fields of a `traceparent` tollgate sent, checked to be version 00 and well-formed.
fn fields(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(hex(parts[1], 32) && parts[1] != "0".repeat(32), "{tp}");
    assert!(hex(parts[2], 16) && parts[2] != "0".repeat(16), "{tp}");
    assert!(hex(parts[3], 2), "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// Upstream `bi` behind an open route `api` on /api.
fn plain(up: &Upstream) -> GatewayConfig {
    GatewayConfig::new()
        .upstream("bi", &up.url())
        .open_route("api", "/api", "bi")
}

/// The real binary on `yaml` (the directory holds its config file).
fn run_binary(yaml: &str) -> (tempfile::TempDir, Binary) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let bin = spawn_binary(&cfg, &[]);
    (dir, bin)
}

/// The binary's access-log line of the request whose line contains `needle`.
async fn access_line(bin: &Binary, needle: &str) -> String {
    bin.log_line(&format!("the access line of {needle}"), |l| {
        l.contains("tollgate::access") && l.contains(needle)
    })
    .await
}

// Behaviour: a valid traceparent is continued: the upstream receives the same trace id,
// a new parent id (tollgate's span), the caller's sampled flag, and tracestate as sent.
// Works without any `tracing:` block.
#[tokio::test]
async fn traceparent_is_continued_with_tollgates_span_as_parent() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&plain(&up).yaml()).await;
    let c = client();
    for flags in ["01", "00"] {
        let r = c
            .get(gw.url("/api/x"))
            .header("traceparent", traceparent(CLIENT_TRACE, CLIENT_SPAN, flags))
            .header("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = up.last();
        let (trace, parent, got_flags) = fields(seen.header("traceparent").unwrap());
        assert_eq!(trace, CLIENT_TRACE, "the trace is continued");
        assert_ne!(
            parent, CLIENT_SPAN,
            "the parent is tollgate's span, not the client's"
        );
        assert_eq!(got_flags, flags, "the caller's sampling decision is kept");
        assert_eq!(seen.headers["traceparent"].len(), 1);
        assert_eq!(
            seen.header("tracestate"),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }
    // Each request is a span of its own.
    let parents: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| fields(s.header("traceparent").unwrap()).1)
        .collect();
    assert_ne!(parents[0], parents[1]);
    // A later version is read leniently (its extra fields ignored) and sent on as 00.
    let future = format!("cc-{CLIENT_TRACE}-{CLIENT_SPAN}-01-future-stuff");
    let r = c
        .get(gw.url("/api/x"))
        .header("traceparent", future)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (trace, _, flags) = fields(up.last().header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
}

// Behaviour: without a traceparent, or with an invalid one, a new trace is started (a
// random trace id, sampled by default) and any tracestate is dropped with it.
#[tokio::test]
async fn absent_or_invalid_traceparent_starts_a_new_trace() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&plain(&up).yaml()).await;
    let c = client();
    let r = c.get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (first, _, flags) = fields(up.last().header("traceparent").unwrap());
    assert_eq!(flags, "01", "sample_ratio defaults to 1.0");
    let invalid = [
        traceparent(&CLIENT_TRACE.to_uppercase(), CLIENT_SPAN, "01"),
        traceparent(&"0".repeat(32), CLIENT_SPAN, "01"),
        traceparent(CLIENT_TRACE, &"0".repeat(16), "01"),
        format!("ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
        format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra"),
        format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}"),
        "garbage".to_owned(),
    ];
    let mut traces = vec![first];
    for bad in &invalid {
        let r = c
            .get(gw.url("/api/x"))
            .header("traceparent", bad)
            .header("tracestate", "congo=t61rcWkgMzE")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{bad}");
        let seen = up.last();
        let (trace, parent, _) = fields(seen.header("traceparent").unwrap());
        assert_ne!(trace, CLIENT_TRACE, "{bad} must not be continued");
        assert_ne!(trace.to_uppercase(), CLIENT_TRACE.to_uppercase(), "{bad}");
        assert_ne!(parent, CLIENT_SPAN, "{bad}");
        assert_eq!(seen.header("tracestate"), None, "{bad}: tracestate dropped");
        traces.push(trace);
    }
    // Two traceparent headers are invalid too.
    let r = c
        .get(gw.url("/api/x"))
        .header("traceparent", traceparent(CLIENT_TRACE, CLIENT_SPAN, "01"))
        .header(
            "traceparent",
            traceparent(CLIENT_TRACE, "00f067aa0ba902b8", "01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["traceparent"].len(), 1);
    let (trace, _, _) = fields(seen.header("traceparent").unwrap());
    assert_ne!(trace, CLIENT_TRACE);
    traces.push(trace);
    let distinct: std::collections::HashSet<&String> = traces.iter().collect();
    assert_eq!(
        distinct.len(),
        traces.len(),
        "every new trace has its own id"
    );
}

// Behaviour: the access-log line carries the trace id (continued or new), in the real
// binary's log output.
#[tokio::test]
async fn access_log_carries_the_trace_id() {
    let up = spawn_upstream().await;
    let (_dir, bin) = run_binary(&plain(&up).yaml());
    let c = client();
    let r = c
        .get(format!("http://{}/api/continued", bin.public))
        .header("traceparent", traceparent(CLIENT_TRACE, CLIENT_SPAN, "01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = access_line(&bin, "/api/continued").await;
    assert!(
        line.contains(&format!("trace_id=\"{CLIENT_TRACE}\"")),
        "{line}"
    );
    let r = c
        .get(format!("http://{}/api/new", bin.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (trace, _, _) = fields(up.last().header("traceparent").unwrap());
    let line = access_line(&bin, "/api/new").await;
    assert!(line.contains(&format!("trace_id=\"{trace}\"")), "{line}");
    // A 404 (no route, nothing forwarded) has its trace id too.
    let r = c
        .get(format!("http://{}/nowhere", bin.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let line = access_line(&bin, "/nowhere").await;
    assert!(line.contains("trace_id=\""), "{line}");
    assert!(!line.contains("trace_id=\"-\""), "{line}");
}

// Behaviour: an error body carries the request's W3C trace id (`trace_id`, 32 hex)
// beside SPEC's fields, so a refusal a user reports is found in the tracing system:
// the client's trace id on a 403 with a traceparent (without one and without span
// export, SPEC's three fields only); the access-log line of the same request carries
// the same trace id; X-Request-Id is unchanged.
#[tokio::test]
async fn error_bodies_carry_the_trace_id() {
    let up = spawn_upstream().await;
    let idp = spawn_idp().await;
    let yaml = GatewayConfig::new()
        .issuer(&idp, "corp")
        .upstream("bi", &up.url())
        .route(json!({
            "name": "secure", "path_prefix": "/secure", "upstream": "bi",
            "auth": {"issuers": ["corp"], "scopes": ["analytics.admin"]},
        }))
        .yaml();
    let (_dir, bin) = run_binary(&yaml);
    let c = client();
    let tok = idp.token(json!({"scope": "analytics.read"}));
    let r = c
        .get(format!("http://{}/secure/report", bin.public))
        .bearer_auth(&tok)
        .header("traceparent", traceparent(CLIENT_TRACE, CLIENT_SPAN, "01"))
        .header("x-request-id", "shot-403")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-request-id"], "shot-403");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope", "{body}");
    assert_eq!(body["request_id"], "shot-403", "{body}");
    assert_eq!(body["trace_id"], CLIENT_TRACE, "{body}");
    let line = access_line(&bin, "shot-403").await;
    assert!(
        line.contains(&format!("trace_id=\"{CLIENT_TRACE}\"")),
        "{line}"
    );
    assert_eq!(up.count(), 0, "a refusal forwards nothing");

    // Without a traceparent and without span export nobody records the trace: the
    // body keeps SPEC's three fields; the access line still names the trace id.
    let r = c
        .get(format!("http://{}/secure/report", bin.public))
        .header("x-request-id", "shot-401")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    let keys: std::collections::BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["error", "error_description", "request_id"].into(),
        "{body}"
    );
    let line = access_line(&bin, "shot-401").await;
    assert!(line.contains("trace_id=\""), "{line}");
}

/// The OTLP receiver (tests/otlp/receiver.py), killed when dropped.
struct Receiver {
    _process: ChildGuard,
    base: String,
    _dir: tempfile::TempDir,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Receiver {
    fn start() -> Receiver {
        let python = repo().join("target/otlp-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run tests/otlp/install.sh (scripts/test.sh does)",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let process = ChildGuard::spawn(
            "the OTLP receiver",
            std::process::Command::new(python)
                .arg(repo().join("tests/otlp/receiver.py"))
                .arg(&port_file)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null()),
        );
        let port = wait_until(
            "the OTLP receiver listens",
            STARTUP,
            || std::fs::read_to_string(&port_file).ok(),
            Option::is_some,
        )
        .unwrap();
        Receiver {
            _process: process,
            base: format!("http://127.0.0.1:{}", port.trim()),
            _dir: dir,
        }
    }

    /// One list (`spans` or `requests`) of what the receiver has recorded.
    async fn recorded(&self, list: &str) -> Vec<Value> {
        let v: Value = client()
            .get(format!("{}/spans", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v[list].as_array().unwrap().clone()
    }

    async fn spans(&self) -> Vec<Value> {
        self.recorded("spans").await
    }

    async fn raw(&self) -> String {
        client()
            .get(format!("{}/raw", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The spans of `trace`, once `ok` holds for them.
    async fn trace(&self, trace: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        eventually(
            &format!("spans of trace {trace} at the receiver"),
            PATIENCE,
            async || {
                self.spans()
                    .await
                    .into_iter()
                    .filter(|s| s["trace_id"] == trace)
                    .collect::<Vec<_>>()
            },
            |spans| ok(spans),
        )
        .await
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn server(spans: &[Value]) -> &Value {
    let s: Vec<&Value> = spans
        .iter()
        .filter(|s| s["kind"] == "SPAN_KIND_SERVER")
        .collect();
    assert_eq!(s.len(), 1, "one server span per request: {spans:#?}");
    s[0]
}

const UPSTREAM_SECRET: &str = "upstream-client-s3cret";

/// Spans exported to `endpoint` at `ratio`; a JWT issuer `corp`, an introspected
/// issuer `opaque` and an upstream with client credentials, so that each kind of child
/// span has a request that makes it.
fn traced(idp: &Idp, up: &Upstream, endpoint: &str, ratio: f64) -> GatewayConfig {
    let mut intro = idp_introspection(idp, INTROSPECT_SECRET);
    intro["cache_ttl"] = json!("30s");
    GatewayConfig::new()
        .set(
            "tracing",
            json!({"otlp_endpoint": endpoint, "service_name": "tollgate-it", "sample_ratio": ratio}),
        )
        .issuer(idp, "corp")
        .issuer_block(json!({
            "name": "opaque",
            "issuer": format!("{}/opaque", idp.issuer),
            "introspection": intro,
            "audiences": [AUDIENCE],
        }))
        .upstream("bi", &up.url())
        .upstream_with(
            "cc-up",
            &up.url(),
            json!({"auth": client_credentials(idp, "gw", UPSTREAM_SECRET)}),
        )
        .route(json!({
            "name": "secure", "path_prefix": "/secure", "upstream": "bi",
            "auth": {"issuers": ["corp"], "scopes": ["analytics.read"]},
        }))
        .route(json!({
            "name": "opaque", "path_prefix": "/opaque", "upstream": "bi",
            "auth": {"issuers": ["opaque"]},
        }))
        .open_route("cc", "/cc", "cc-up")
}

fn attrs(span: &Value) -> &serde_json::Map<String, Value> {
    span["attributes"].as_object().unwrap()
}

// Behaviour: with `tracing.otlp_endpoint`, spans reach a real OTLP/HTTP receiver
// (protobuf decoded with the official definitions): one server span per request whose
// parent is the client's span and whose id is the parent the upstream received; child
// spans (JWKS fetch, introspection, upstream token fetch, upstream call) whose parent is
// the server span; route, method, status, decision and reason as attributes; the
// resource's service.name; and no token or secret anywhere in what was exported.
#[tokio::test]
async fn spans_reach_a_real_otlp_receiver_with_correct_parents() {
    let receiver = Receiver::start();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&traced(&idp, &up, &receiver.base, 1.0).yaml()).await;
    let c = client();

    // 1. A JWT signed by a key the gateway has not seen: the JWKS is fetched again
    //    during the request.
    let new_key = Arc::new(
        tollgate::token_service::keys::SigningKey::from_pem(
            &std::fs::read(fixture("ec384.pem")).unwrap(),
        )
        .unwrap(),
    );
    idp.keys.lock().unwrap().push(new_key.clone());
    let jwt = idp.token_with(&new_key, json!({}));
    let trace1 = "11111111111111111111111111111111";
    let r = c
        .get(gw.url("/secure/data"))
        .bearer_auth(&jwt)
        .header("traceparent", traceparent(trace1, CLIENT_SPAN, "01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, forwarded_parent, _) = fields(up.last().header("traceparent").unwrap());
    let spans = receiver
        .trace(trace1, |s| {
            s.iter().any(|x| x["kind"] == "SPAN_KIND_SERVER")
                && !named(s, "upstream").is_empty()
                && !named(s, "jwks.fetch").is_empty()
        })
        .await;
    let srv = server(&spans);
    assert_eq!(
        srv["parent_span_id"], CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(
        srv["span_id"], forwarded_parent,
        "the upstream's parent is the exported server span"
    );
    assert_eq!(srv["name"], "GET secure");
    assert_eq!(srv["trace_state"], "vendor=abc");
    let a = attrs(srv);
    assert_eq!(a["tollgate.route"], "secure");
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["tollgate.decision"], "allow");
    assert_eq!(a["tollgate.client_id"], "sap-cx-dashboard");
    assert_eq!(srv["resource"]["service.name"], "tollgate-it");
    assert_eq!(srv["scope"], "tollgate");
    for name in ["jwks.fetch", "upstream"] {
        let children = named(&spans, name);
        assert!(!children.is_empty(), "{name}: {spans:#?}");
        for ch in children {
            assert_eq!(ch["parent_span_id"], srv["span_id"], "{name}'s parent");
            assert_eq!(ch["kind"], "SPAN_KIND_CLIENT", "{name}");
        }
    }
    let upstream_span = named(&spans, "upstream")[0];
    assert_eq!(attrs(upstream_span)["tollgate.upstream"], "bi");
    assert_eq!(attrs(upstream_span)["http.response.status_code"], 200);
    assert_eq!(
        attrs(named(&spans, "jwks.fetch")[0])["tollgate.issuer"],
        "corp"
    );
    // The key set endpoint continues the trace under the fetch's span.
    let jwks_spans: Vec<String> = named(&spans, "jwks.fetch")
        .iter()
        .map(|s| s["span_id"].as_str().unwrap().to_owned())
        .collect();
    let received = idp_parent(&idp, "/jwks", trace1);
    assert!(
        !received.is_empty() && received.iter().all(|p| jwks_spans.contains(p)),
        "{received:?} vs {jwks_spans:?}"
    );

    // 2. A denial: decision and reason on the server span, no upstream call.
    let trace2 = "22222222222222222222222222222222";
    let weak = idp.token(json!({"scope": "other"}));
    let r = c
        .get(gw.url("/secure/data"))
        .bearer_auth(&weak)
        .header("traceparent", traceparent(trace2, CLIENT_SPAN, "01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let spans = receiver
        .trace(trace2, |s| {
            s.iter().any(|x| x["kind"] == "SPAN_KIND_SERVER")
        })
        .await;
    let a = attrs(server(&spans));
    assert_eq!(a["tollgate.decision"], "deny");
    assert_eq!(a["tollgate.reason"], "scope_missing");
    assert_eq!(a["http.response.status_code"], 403);
    assert!(named(&spans, "upstream").is_empty());

    // 3. An opaque token: introspection during the request.
    let opaque = "opaque-very-secret-token-value";
    idp.opaque.lock().unwrap().insert(
        opaque.into(),
        json!({"active": true, "iss": format!("{}/opaque", idp.issuer), "aud": "https://bi-api.company.com", "client_id": "partner", "scope": "analytics.read", "exp": now() + 300}),
    );
    let trace3 = "33333333333333333333333333333333";
    let r = c
        .get(gw.url("/opaque/x"))
        .bearer_auth(opaque)
        .header("traceparent", traceparent(trace3, CLIENT_SPAN, "01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = receiver
        .trace(trace3, |s| {
            !named(s, "introspection").is_empty() && !named(s, "upstream").is_empty()
        })
        .await;
    let srv = server(&spans);
    let intro = named(&spans, "introspection")[0];
    assert_eq!(intro["parent_span_id"], srv["span_id"]);
    assert_eq!(attrs(intro)["tollgate.token_active"], true);
    assert_eq!(
        idp_parent(&idp, "/introspect", trace3),
        [intro["span_id"].as_str().unwrap()]
    );

    // 4. An upstream with client credentials: the token fetch during the request. A new
    //    trace (no traceparent): the server span is a root.
    let before = up.count();
    let r = c.get(gw.url("/cc/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), before + 1);
    let (trace4, forwarded_parent, _) = fields(up.last().header("traceparent").unwrap());
    let upstream_token = up.last().header("authorization").unwrap().to_owned();
    let spans = receiver
        .trace(&trace4, |s| {
            !named(s, "upstream_token.fetch").is_empty() && !named(s, "upstream").is_empty()
        })
        .await;
    let srv = server(&spans);
    assert_eq!(
        srv["parent_span_id"], "",
        "a new trace's server span is a root"
    );
    assert_eq!(srv["span_id"], forwarded_parent);
    let fetch = named(&spans, "upstream_token.fetch")[0];
    assert_eq!(fetch["parent_span_id"], srv["span_id"]);
    assert_eq!(
        idp_parent(&idp, "/token", &trace4),
        [fetch["span_id"].as_str().unwrap()]
    );
    assert_eq!(attrs(fetch)["tollgate.upstream"], "cc-up");
    assert_eq!(attrs(srv)["tollgate.route"], "cc");

    // Protobuf over HTTP, to the traces path.
    let reqs = receiver.recorded("requests").await;
    assert!(reqs
        .iter()
        .all(|r| r["path"] == "/v1/traces" && r["content_type"] == "application/x-protobuf"));

    // No token or secret anywhere in what was exported.
    let raw = receiver.raw().await;
    assert!(
        raw.contains("tollgate.route"),
        "the dump is the decoded spans"
    );
    let bearer = upstream_token.trim_start_matches("Bearer ").to_owned();
    for secret in [
        jwt.as_str(),
        weak.as_str(),
        opaque,
        INTROSPECT_SECRET,
        UPSTREAM_SECRET,
        bearer.as_str(),
    ] {
        assert!(!raw.contains(secret), "{secret} was exported:\n{raw}");
    }
    // Nor a token's signature or payload part on its own.
    for part in jwt.split('.').skip(1) {
        assert!(!raw.contains(part));
    }
    let exported = metric_eventually(
        &gw.admin_url(""),
        "tollgate_trace_spans_exported_total",
        |v| v >= 9.0,
    )
    .await;
    assert!(exported >= 9.0);
}

/// The `traceparent` the identity provider received on `path` in trace `trace`: its
/// parent id (the span that timed the call).
fn idp_parent(idp: &Idp, path: &str, trace: &str) -> Vec<String> {
    idp.traceparents
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, tp)| fields(tp))
        .filter(|(t, _, flags)| t == trace && flags == "01")
        .map(|(_, parent, _)| parent)
        .collect()
}

// Behaviour: the X-CSRF-Token fetch of a `csrf` upstream is a child span of the
// request's (`upstream.csrf_fetch`, with the upstream and the fetch path), and the fetch
// carries the request's trace context, as the request itself does.
#[tokio::test]
async fn the_csrf_fetch_is_a_child_span() {
    let receiver = Receiver::start();
    let sap = crate::sap::spawn_sap().await;
    let yaml = GatewayConfig::new()
        .set(
            "tracing",
            json!({"otlp_endpoint": receiver.base, "service_name": "tollgate-it", "sample_ratio": 1.0}),
        )
        .upstream_with(
            "s4",
            &format!("{}/sap/opu/odata/sap/API_X", sap.url()),
            json!({"csrf": {"fetch_path": "/"}, "auth": {"type": "basic", "username": "GW_USER", "password": "s3cret"}}),
        )
        .open_route("odata", "/odata", "s4")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let trace = "55555555555555555555555555555555";
    let r = client()
        .post(gw.url("/odata/A_Items"))
        .header("content-type", "application/json")
        .header("traceparent", traceparent(trace, CLIENT_SPAN, "01"))
        .header("tracestate", "vendor=opaque-1")
        .body(r#"{"Item":"1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let spans = receiver
        .trace(trace, |s| {
            !named(s, "upstream.csrf_fetch").is_empty() && !named(s, "upstream").is_empty()
        })
        .await;
    let srv = server(&spans);
    let fetch = named(&spans, "upstream.csrf_fetch")[0];
    assert_eq!(fetch["parent_span_id"], srv["span_id"]);
    assert_eq!(fetch["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(attrs(fetch)["tollgate.upstream"], "s4");
    assert!(attrs(fetch)["url.path"].as_str().unwrap().ends_with('/'));
    let seen = sap.seen();
    assert_eq!(seen[0].csrf.as_deref(), Some("Fetch"), "{seen:#?}");
    let (t, parent, _) = fields(seen[0].traceparent.as_deref().expect("traceparent"));
    assert_eq!(t, trace);
    assert_eq!(parent, srv["span_id"].as_str().unwrap());
    // The vendors' trace state travels with it, as on the forwarded request.
    assert_eq!(seen[0].tracestate.as_deref(), Some("vendor=opaque-1"));
    gw.stop().await;
}

// Behaviour: the sign-in callback's code exchange at the identity provider (a real
// OpenID provider) is a child span `login.token` of the callback's span, with the grant
// and the token endpoint and nothing of the code or the tokens.
#[tokio::test]
async fn the_sign_in_code_exchange_is_a_child_span() {
    use crate::login::{at_idp, login_config, start_sign_in, AtIdp, Client, COOKIE_SECRET};
    let receiver = Receiver::start();
    let op = crate::oidc_e2e::OidcProvider::spawn_with(&[]);
    let up = spawn_upstream().await;
    let yaml = login_config(&op, &up, Client::Web, COOKIE_SECRET)
        .set(
            "tracing",
            json!({"otlp_endpoint": receiver.base, "service_name": "tollgate-it", "sample_ratio": 1.0}),
        )
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let started = start_sign_in(&gw, "/dash/home").await;
    let callback = at_idp(&started.auth_url, AtIdp::SignIn("alice")).await;
    let code = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");
    let trace = "66666666666666666666666666666666";
    let r = crate::login::http()
        .get(&callback)
        .header("cookie", started.state.pair())
        .header("accept", "text/html")
        .header("traceparent", traceparent(trace, CLIENT_SPAN, "01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.headers());
    let spans = receiver
        .trace(trace, |s| {
            !named(s, "login.token").is_empty() && s.iter().any(|x| x["kind"] == "SPAN_KIND_SERVER")
        })
        .await;
    let srv = server(&spans);
    let exchange = named(&spans, "login.token")[0];
    assert_eq!(exchange["parent_span_id"], srv["span_id"]);
    assert_eq!(exchange["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(attrs(exchange)["oauth.grant_type"], "authorization_code");
    assert!(attrs(exchange)["url.full"]
        .as_str()
        .unwrap()
        .starts_with(&op.issuer));
    let raw = receiver.raw().await;
    assert!(!raw.contains(&code), "the code was exported");
    gw.stop().await;
}

// Behaviour: sample_ratio 0 leaves new traces unsampled (flag 00, nothing exported)
// while a caller's sampled trace is still recorded; and a changed `tracing:` block takes
// effect on reload (a new endpoint, a new service name).
#[tokio::test]
async fn sampling_and_reload() {
    let receiver = Receiver::start();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&traced(&idp, &up, &receiver.base, 0.0).yaml()).await;
    let c = client();
    let r = c.get(gw.url("/cc/unsampled")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (unsampled, _, flags) = fields(up.last().header("traceparent").unwrap());
    assert_eq!(flags, "00");
    let trace = "44444444444444444444444444444444";
    let r = c
        .get(gw.url("/cc/sampled"))
        .header("traceparent", traceparent(trace, CLIENT_SPAN, "01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    receiver
        .trace(trace, |s| s.iter().any(|x| x["kind"] == "SPAN_KIND_SERVER"))
        .await;
    // The sampled trace was exported after the unsampled request: had that one been
    // recorded, its spans would have been in the same or an earlier batch.
    assert!(receiver
        .spans()
        .await
        .iter()
        .all(|s| s["trace_id"] != unsampled.as_str()));

    // Reload: another receiver, another service name, ratio 1.
    let second = Receiver::start();
    let yaml = traced(&idp, &up, &second.base, 1.0)
        .merge("tracing", json!({"service_name": "tollgate-reloaded"}))
        .yaml();
    std::fs::write(gw.config_path(), yaml).unwrap();
    gw.gateway().reload("test").await.unwrap();
    let r = c.get(gw.url("/cc/after-reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (after, _, flags) = fields(up.last().header("traceparent").unwrap());
    assert_eq!(flags, "01", "the new ratio applies");
    let spans = second
        .trace(&after, |s| {
            s.iter().any(|x| x["kind"] == "SPAN_KIND_SERVER")
        })
        .await;
    assert_eq!(
        server(&spans)["resource"]["service.name"],
        "tollgate-reloaded"
    );
    assert!(receiver
        .spans()
        .await
        .iter()
        .all(|s| s["trace_id"] != after.as_str()));
}

// Behaviour: with the collector down, requests are answered as usual (each within the
// client's bound) and the spans are dropped and counted.
#[tokio::test]
async fn collector_down_never_fails_requests_and_drops_are_counted() {
    let up = spawn_upstream().await;
    let dead = format!("http://{}", dead_addr());
    let gw = spawn_gateway(
        &plain(&up)
            .set("tracing", json!({"otlp_endpoint": dead}))
            .yaml(),
    )
    .await;
    let admin = gw.admin_url("");
    // Its own rustls provider: run alone, no other test has installed one.
    tollgate::tls::install_default_provider();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for i in 0..40 {
        let r = c.get(gw.url(&format!("/api/{i}"))).send().await.unwrap();
        *statuses.entry(r.status().as_u16()).or_default() += 1;
    }
    assert_eq!(statuses, HashMap::from([(200, 40)]));
    // 40 server spans and 40 upstream spans, all dropped.
    let dropped =
        metric_eventually(&admin, "tollgate_trace_spans_dropped_total", |v| v >= 80.0).await;
    assert!(dropped >= 80.0);
    // With span export on, an error body names the trace tollgate started.
    let r = c.get(gw.url("/no-such-route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    let trace = body["trace_id"].as_str().unwrap_or_default();
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{body}"
    );
    let text = admin_metrics(&admin).await;
    assert_eq!(
        series_value(&text, "tollgate_trace_spans_exported_total"),
        Some(0.0)
    );
}

// Behaviour: a rate-limit decision made in Redis is a child span of the request's server
// span, named by the limit (never by its key).
#[tokio::test]
async fn redis_rate_limit_calls_are_child_spans() {
    let receiver = Receiver::start();
    let redis = crate::redis_server::RedisServer::start();
    let up = spawn_upstream().await;
    let yaml = GatewayConfig::new()
        .set("tracing", json!({"otlp_endpoint": receiver.base}))
        .redis(&redis.url(), "2s")
        .rate_limit(json!({
            "name": "per-ip", "key": "ip", "limit": 100, "per": "1m",
            "store": "redis", "on_error": "deny",
        }))
        .upstream("bi", &up.url())
        .route(json!({
            "name": "api", "path_prefix": "/api", "upstream": "bi", "auth": "none",
            "rate_limits": ["per-ip"],
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let trace = "55555555555555555555555555555555";
    let r = client()
        .get(gw.url("/api/limited"))
        .header("traceparent", traceparent(trace, CLIENT_SPAN, "01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = receiver
        .trace(trace, |s| {
            !named(s, "ratelimit.redis").is_empty() && !named(s, "upstream").is_empty()
        })
        .await;
    let srv = server(&spans);
    let rl = named(&spans, "ratelimit.redis")[0];
    assert_eq!(rl["parent_span_id"], srv["span_id"]);
    assert_eq!(attrs(rl)["tollgate.limit"], "per-ip");
    assert_eq!(attrs(rl)["db.system.name"], "redis");
    assert_eq!(attrs(rl)["tollgate.limit_allowed"], true);
}
