//! Criterion micro-benchmarks for tollgate's per-request hot path.
//!
//! `cargo bench --bench hot_path` (bench/run.sh runs it once with short times and puts
//! the figures in bench/RESULTS.md). What is measured:
//! - token verify: `auth::authenticate` with the verified-token cache hit, and with the
//!   cache emptied before every call (parse + signature + claims), for RS256, ES256 and
//!   EdDSA tokens of the token service (issuer `local`, fixture keys);
//! - signature only: `jwks::Key::verify` (the aws-lc-rs key parsed from the JWK) for the
//!   same three tokens, the part of an uncached verify that is cryptography;
//! - route + permission match: `RouteTable::lookup` + `policy::authorize` with 10 and
//!   10,000 routes, each with permissions (compiled by `config::load_str`);
//! - compiling the 10,000-route config (what a reload costs, minus file I/O);
//! - `route::normalize_path`;
//! - header rewriting: `proxy::prepare_headers` and `proxy::strip_hop_by_hop`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use tollgate::auth::{authenticate, AuthCaches, Trace};
use tollgate::config::{load_str, Registry};
use tollgate::policy::{authorize, Identity, RouteAuth};
use tollgate::proxy::{prepare_headers, strip_hop_by_hop, ForwardContext};
use tollgate::route::normalize_path;
use tollgate::runtime::Runtime;
use tollgate::token_service::keys::SigningKey;

const ISSUER: &str = "https://gateway.bench.local";
const AUDIENCE: &str = "https://api.bench.local";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A config whose token service (issuer `local`) signs with `key`, and `routes` routes
/// with permissions, all accepting issuer `local` with scope `analytics.read`.
fn config_yaml(key: &str, routes: usize) -> String {
    let mut y = format!(
        r#"server:
  listen: "127.0.0.1:0"
token_service:
  issuer: "{ISSUER}"
  audience: "{AUDIENCE}"
  signing_key: "{key}"
upstreams:
  - name: up
    url: "http://127.0.0.1:9"
routes:
"#,
        key = fixture(key)
    );
    for i in 0..routes {
        y.push_str(&format!(
            r#"  - name: r{i}
    path_prefix: /svc{i}
    upstream: up
    auth:
      issuers: [local]
      scopes: [analytics.read]
    permissions:
      - path: /svc{i}/data
        methods: [GET]
      - path: /svc{i}/items/*
        methods: [GET, POST]
        scopes: [svc{i}.write]
      - path: /svc{i}/admin/**
        methods: ["*"]
        scopes: [admin]
"#
        ));
    }
    y
}

fn load(key: &str, routes: usize) -> Runtime {
    let text = config_yaml(key, routes);
    load_str(&text, "bench.yaml", Path::new("."), &Registry::default())
        .unwrap_or_else(|e| panic!("bench config invalid: {:?}", e.lines()))
}

fn mint(key: &SigningKey, n: usize) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    key.sign(
        "at+jwt",
        &serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{n}"),
            "client_id": "bench-client", "scope": "analytics.read dashboard.access",
            "iat": now, "exp": now + 3600, "jti": format!("jti-{n}"),
        }),
    )
    .expect("sign")
}

fn token_verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("token_verify");
    for (alg, key_file) in [
        ("RS256", "rsa-a.pem"),
        ("ES256", "ec256.pem"),
        ("EdDSA", "ed25519.pem"),
    ] {
        let runtime = load(key_file, 1);
        let issuer = runtime.issuer("local").expect("local issuer").clone();
        let issuers = [&issuer];
        let key = SigningKey::from_pem(&std::fs::read(fixture(key_file)).unwrap()).unwrap();
        let token = mint(&key, 1);
        let caches = AuthCaches::default();
        // Sanity: the token verifies.
        rt.block_on(authenticate(
            &issuers,
            &caches,
            &token,
            &mut Trace::default(),
        ))
        .unwrap_or_else(|e| panic!("{alg}: {e}"));
        g.bench_function(format!("{alg}/cached"), |b| {
            b.iter(|| {
                rt.block_on(authenticate(
                    &issuers,
                    &caches,
                    black_box(&token),
                    &mut Trace::default(),
                ))
                .unwrap()
            })
        });
        g.bench_function(format!("{alg}/uncached"), |b| {
            b.iter(|| {
                caches.verified.clear();
                rt.block_on(authenticate(
                    &issuers,
                    &caches,
                    black_box(&token),
                    &mut Trace::default(),
                ))
                .unwrap()
            })
        });
    }
    g.finish();
}

fn signature_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("signature_verify");
    for (alg, key_file) in [
        ("RS256", "rsa-a.pem"),
        ("ES256", "ec256.pem"),
        ("EdDSA", "ed25519.pem"),
    ] {
        let key = SigningKey::from_pem(&std::fs::read(fixture(key_file)).unwrap()).unwrap();
        let token = mint(&key, 1);
        let set = key.key_set();
        let parsed = set.by_kid.get(&key.kid).expect("kid in set").clone();
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        assert!(parsed.verify(key.alg, input.as_bytes(), sig), "{alg}");
        g.bench_function(alg, |b| {
            b.iter(|| parsed.verify(key.alg, black_box(input.as_bytes()), black_box(sig)))
        });
    }
    g.finish();
}

fn identity() -> Identity {
    Identity {
        issuer: "local".into(),
        subject: Some("user-1".into()),
        client_id: Some("bench-client".into()),
        scopes: vec!["analytics.read".into(), "dashboard.access".into()],
        expires_at: 0,
        ..Identity::default()
    }
}

fn route_and_permissions(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_and_permission");
    let id = identity();
    for n in [10usize, 10_000] {
        let runtime = load("ec256.pem", n);
        let target = n / 2;
        let path = format!("/svc{target}/data");
        let item = format!("/svc{target}/items/42");
        // Sanity: routed to the right route, allowed / denied as configured.
        let rid = runtime.table.lookup("", &path).expect("route");
        assert_eq!(&*runtime.routes[rid].name, format!("r{target}"));
        let check = |p: &str, m: &Method| {
            let rid = runtime.table.lookup("", p).expect("route");
            let route = &runtime.routes[rid];
            let RouteAuth::Bearer(rule) = &route.auth else {
                panic!("route without auth")
            };
            authorize(rule, route.permissions.as_ref(), m, p, &id)
                .result
                .is_ok()
        };
        assert!(check(&path, &Method::GET));
        assert!(!check(&item, &Method::POST), "extra scope required");
        g.bench_function(format!("{n}_routes/allow_exact"), |b| {
            b.iter(|| check(black_box(&path), &Method::GET))
        });
        g.bench_function(format!("{n}_routes/pattern_get"), |b| {
            b.iter(|| check(black_box(&item), &Method::GET))
        });
        g.bench_function(format!("{n}_routes/lookup_only"), |b| {
            b.iter(|| runtime.table.lookup("", black_box(&path)))
        });
    }
    g.finish();
}

fn compile_config(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_compile");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for n in [10usize, 10_000] {
        let text = config_yaml("ec256.pem", n);
        g.bench_function(format!("{n}_routes"), |b| {
            b.iter(|| {
                load_str(
                    black_box(&text),
                    "bench.yaml",
                    Path::new("."),
                    &Registry::default(),
                )
                .is_ok()
            })
        });
    }
    g.finish();
}

fn normalise(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize_path");
    for (name, p) in [
        ("short", "/api/data"),
        ("typical", "/v2/analytics/reports/2024/q3/items/12345"),
        (
            "escapes_dots",
            "/v2/analytics/%7Euser/./reports//2024/../2025/a%20b",
        ),
    ] {
        assert!(normalize_path(p).is_ok());
        g.bench_function(name, |b| b.iter(|| normalize_path(black_box(p))));
    }
    g.finish();
}

fn headers(c: &mut Criterion) {
    let runtime = load("ec256.pem", 1);
    let up = runtime.upstreams[0].clone();
    let mut template = HeaderMap::new();
    for (k, v) in [
        ("host", "api.bench.local"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        (
            "authorization",
            "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        ),
        ("connection", "keep-alive, x-drop-me"),
        ("x-drop-me", "1"),
        ("keep-alive", "timeout=5"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-auth-subject", "spoofed"),
        ("content-type", "application/json"),
    ] {
        template.append(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let id = identity();
    let client_ip = HeaderValue::from_static("127.0.0.1");
    let cx = ForwardContext {
        client_ip: &client_ip,
        tls: false,
        original_host: Some(HeaderValue::from_static("api.bench.local")),
        identity: Some(&id),
    };
    let mut g = c.benchmark_group("headers");
    g.bench_function("clone_only_baseline", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| black_box(h.len()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched_ref(|| template.clone(), strip_hop_by_hop, BatchSize::SmallInput)
    });
    g.bench_function("prepare_headers", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| prepare_headers(h, &up, &cx),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    token_verify,
    signature_verify,
    route_and_permissions,
    normalise,
    headers,
    compile_config
);
criterion_main!(benches);
