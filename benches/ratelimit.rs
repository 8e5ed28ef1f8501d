//! Criterion micro-benchmarks for the rate-limit step: what one decision costs.
//!
//! `cargo bench --bench ratelimit`. What is measured:
//! - key derivation: `KeySpec::key` for a client id and for a 200-byte header value
//!   (the SHA-256 digest every decision starts with);
//! - local store: `LocalStore::check` on one hot key, and rotating over 10,000 keys
//!   (a sliding and a fixed window), uncontended;
//! - Redis store: one decision at a time (a round trip to a local `redis-server`,
//!   latency-bound), and 64 decisions in flight at once on the store's one multiplexed
//!   connection (time per decision: the cost under load). The Redis part starts its own
//!   `redis-server` on a free loopback port (killed by PID at the end) and is left out,
//!   with a note, when the binary is not installed.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tollgate::ratelimit::{
    KeyInput, KeySpec, Limit, LimitSpec, LocalStore, OnError, RateKey, RedisConfig, RedisStore,
    StoreKind, Window, MAX_LIMIT,
};
use tollgate::secret::Secret;

fn limit(window: Window, store: StoreKind) -> Limit {
    Limit::new(LimitSpec {
        name: "bench".into(),
        key: KeySpec::Client,
        limit: MAX_LIMIT,
        per: Duration::from_secs(3600),
        window,
        store,
        on_error: OnError::Deny,
    })
    .unwrap()
}

fn keys(n: usize) -> Vec<RateKey> {
    (0..n)
        .map(|i| RateKey::from_parts("client", Some(format!("client-{i}").as_bytes())))
        .collect()
}

fn key_derivation(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-api-key",
        HeaderValue::from_str(&"k".repeat(200)).unwrap(),
    );
    let input = KeyInput {
        client_ip: "192.0.2.10".parse().unwrap(),
        headers: &headers,
        client_id: Some("bi-integration-client"),
        subject: None,
        ip_key: None,
    };
    let header = KeySpec::Header(HeaderName::from_static("x-api-key"));
    let mut g = c.benchmark_group("ratelimit_key");
    g.bench_function("client_id", |b| {
        b.iter(|| KeySpec::Client.key(black_box(&input)))
    });
    g.bench_function("header_200_bytes", |b| {
        b.iter(|| header.key(black_box(&input)))
    });
    g.finish();
}

fn local_store(c: &mut Criterion) {
    let store = LocalStore::default();
    let many = keys(10_000);
    let mut g = c.benchmark_group("ratelimit_local");
    for (name, window) in [("sliding", Window::Sliding), ("fixed", Window::Fixed)] {
        let l = limit(window, StoreKind::Local);
        g.bench_function(format!("{name}_hot_key"), |b| {
            b.iter(|| store.check(&l, black_box(&many[0])))
        });
        let mut i = 0;
        g.bench_function(format!("{name}_10k_keys"), |b| {
            b.iter(|| {
                i = (i + 1) % many.len();
                store.check(&l, black_box(&many[i]))
            })
        });
    }
    g.finish();
}

/// A `redis-server` on a free loopback port, killed by PID on drop.
struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(server)
}

fn redis_store(c: &mut Criterion) {
    let Some(server) = start_redis() else {
        eprintln!("ratelimit_redis: skipped, redis-server is not installed or did not start");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(
        RedisStore::new(RedisConfig::new(
            Secret::new(format!("redis://127.0.0.1:{}/0", server.1)),
            Duration::from_secs(5),
        ))
        .unwrap(),
    );
    let many = Arc::new(keys(10_000));
    let mut g = c.benchmark_group("ratelimit_redis");
    for (name, window) in [("sliding", Window::Sliding), ("fixed", Window::Fixed)] {
        let l = Arc::new(limit(window, StoreKind::Redis));
        rt.block_on(store.check(&l, &many[0]))
            .expect("redis answers");
        g.bench_function(format!("{name}_one_at_a_time"), |b| {
            b.iter(|| rt.block_on(store.check(&l, black_box(&many[0]))).unwrap())
        });
        g.bench_function(format!("{name}_64_in_flight_per_decision"), |b| {
            b.iter_custom(|iters| {
                let (store, l, many) = (store.clone(), l.clone(), many.clone());
                rt.block_on(async move {
                    let start = Instant::now();
                    let per_task = iters.div_ceil(64);
                    let tasks: Vec<_> = (0..64)
                        .map(|t| {
                            let (store, l, many) = (store.clone(), l.clone(), many.clone());
                            tokio::spawn(async move {
                                for i in 0..per_task {
                                    let k = &many[(t * 131 + i as usize) % many.len()];
                                    store.check(&l, k).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * 64) as f64)
                })
            })
        });
    }
    g.finish();
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = key_derivation, local_store, redis_store
}
criterion_main!(benches);
