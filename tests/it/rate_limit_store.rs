//! Rate limits against a real `redis-server` on loopback: several stores sharing one
//! Redis (replicas) enforce one limit exactly, windows follow Redis time, keys expire
//! and hold no request material, and every failure mode (killed, wedged, silent
//! connection, TLS, password) ends in a bounded, typed outcome and recovers by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::ratelimit::{
    KeyInput, KeySpec, Limit, LimitSpec, Limiter, LocalStore, OnError, Outcome, RateKey,
    RedisConfig, RedisStore, Source, StoreError, StoreKind, Window,
};
use tollgate::secret::Secret;

use crate::common::fixture;
use crate::redis_server::{RedisOptions, RedisServer};

const DAY_MS: u64 = 86_400_000;

/// A `store: redis` limit counted per client, `on_error: deny`.
fn limit(name: &str, n: u64, per_s: u64, window: Window) -> Limit {
    limit_with(name, n, per_s, window, OnError::Deny, KeySpec::Client)
}

fn limit_with(
    name: &str,
    n: u64,
    per_s: u64,
    window: Window,
    on_error: OnError,
    key: KeySpec,
) -> Limit {
    Limit::new(LimitSpec {
        name: name.into(),
        key,
        limit: n,
        per: Duration::from_secs(per_s),
        window,
        store: StoreKind::Redis,
        on_error,
    })
    .unwrap()
}

fn store_cfg(cfg: RedisConfig) -> Arc<RedisStore> {
    Arc::new(RedisStore::new(cfg).unwrap())
}

fn store(url: &str, timeout: Duration) -> Arc<RedisStore> {
    store_cfg(RedisConfig::new(Secret::new(url), timeout))
}

fn limiter(store: &Arc<RedisStore>) -> Limiter {
    Limiter::new(Arc::new(LocalStore::default()), Some(store.clone()))
}

fn client_key(id: &str) -> RateKey {
    let headers = HeaderMap::new();
    KeySpec::Client.key(&KeyInput {
        client_ip: "127.0.0.1".parse().unwrap(),
        headers: &headers,
        client_id: Some(id),
        subject: None,
        ip_key: None,
    })
}

/// The Redis server's clock, in Unix milliseconds.
async fn server_ms(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1000 + us / 1000
}

async fn all_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// A `per` for a fixed window whose current window has at least 10 minutes left on
/// the Redis clock, so a test never straddles a boundary.
fn fixed_per_far_from_boundary(now_ms: u64) -> u64 {
    [366, 365, 364]
        .into_iter()
        .find(|d| {
            let per = d * DAY_MS;
            now_ms % per + 600_000 < per
        })
        .unwrap()
        * 86_400
}

// Decisions made at the same time go to Redis together: 201 concurrent decisions on
// distinct counters take a handful of EVALSHAs (a batch holds up to 64), yet each is
// decided and counted on its own, and a counter that is not the script's (a string where
// a hash belongs) fails alone while its neighbours in the batch are decided as usual.
#[tokio::test(flavor = "current_thread")]
async fn decisions_made_together_share_evalshas_and_fail_alone() {
    let redis = RedisServer::start();
    let store = store(&redis.url(), Duration::from_secs(5));
    let mut conn = redis.conn().await;
    let l = Arc::new(limit("batched", 3, 3600, Window::Sliding));
    // Connects and loads the script, so that the burst below is batches only.
    store.check(&l, &client_key("warm-up")).await.unwrap();
    let broken = client_key("broken");
    let _: () = redis::cmd("SET")
        .arg(l.redis_key(&broken))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..201)
        .map(|i| {
            let (s, l) = (store.clone(), l.clone());
            let k = if i == 100 {
                broken
            } else {
                client_key(&format!("client-{i}"))
            };
            tokio::spawn(async move { s.check(&l, &k).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(d) if i != 100 => {
                assert!(d.allowed, "client-{i}");
                assert_eq!(d.remaining, 2, "client-{i}");
            }
            Err(StoreError::Counter) if i == 100 => {}
            other => panic!("decision {i}: {other:?}"),
        }
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no EVALSHA in INFO commandstats:\n{stats}"));
    assert!(calls <= 201 / 16, "{calls} EVALSHAs for 201 decisions");
    // Each counter holds one request: the next one sees two left.
    for i in [0, 99, 101, 200] {
        let d = store
            .peek(&l, &client_key(&format!("client-{i}")))
            .await
            .unwrap();
        assert_eq!(d.remaining, 2, "client-{i}");
    }
    assert_eq!(store.errors(), 1);
}

// Two stores sharing one Redis are two replicas: 400 concurrent requests split
// between them get exactly `limit` admissions, each unit of the budget handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    let replicas = [
        limiter(&store(&redis.url(), Duration::from_secs(5))),
        limiter(&store(&redis.url(), Duration::from_secs(5))),
    ];
    let mut conn = redis.conn().await;
    let now = server_ms(&mut conn).await;
    for (name, window, per) in [
        ("shared-sliding", Window::Sliding, 3600),
        (
            "shared-fixed",
            Window::Fixed,
            fixed_per_far_from_boundary(now),
        ),
    ] {
        let l = Arc::new(limit(name, 50, per, window));
        let k = client_key("bi-tool");
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let (r, l) = (replicas[i % 2].clone(), l.clone());
                tokio::spawn(async move { r.decide(&l, &k).await })
            })
            .collect();
        let mut remaining = Vec::new();
        let mut limited = 0;
        for t in tasks {
            match t.await.unwrap() {
                Outcome::Allowed(d) => {
                    assert_eq!(d.source, Source::Redis);
                    remaining.push(d.remaining);
                }
                Outcome::Limited(d) => {
                    assert_eq!(d.source, Source::Redis);
                    assert!(d.retry_after_secs().unwrap() >= 1);
                    limited += 1;
                }
                Outcome::Unavailable(u) => panic!("{name}: store failed: {}", u.error),
            }
        }
        remaining.sort_unstable();
        assert_eq!(remaining, (0..50).collect::<Vec<u64>>(), "{name}");
        assert_eq!(limited, 350, "{name}");
    }
    for r in &replicas {
        assert_eq!(r.redis().unwrap().errors(), 0);
    }
}

// Fixed windows follow the epoch on the Redis clock: a daily quota ends at 00:00 UTC
// (its key expires then), and a per-second limit admits `limit` from each second on.
#[tokio::test]
async fn fixed_windows_are_aligned_to_the_epoch_on_the_redis_clock() {
    let redis = RedisServer::start();
    let st = store(&redis.url(), Duration::from_secs(5));
    let mut conn = redis.conn().await;

    let daily = limit("daily", 3, 86_400, Window::Fixed);
    let k = client_key("quota-user");
    let redis_key = daily.redis_key(&k);
    let mut checked = false;
    for _ in 0..5 {
        let _: () = redis::cmd("DEL")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let t0 = server_ms(&mut conn).await;
        let first = st.check(&daily, &k).await.unwrap();
        let pttl: u64 = redis::cmd("PTTL")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let more = [
            st.check(&daily, &k).await.unwrap(),
            st.check(&daily, &k).await.unwrap(),
        ];
        let refused = st.check(&daily, &k).await.unwrap();
        let t1 = server_ms(&mut conn).await;
        let midnight = (t0 / DAY_MS + 1) * DAY_MS;
        if t1 >= midnight {
            continue; // straddled midnight: try again in the new day
        }
        let until = (midnight - t1)..=(midnight - t0);
        assert!(first.allowed && more.iter().all(|d| d.allowed));
        assert_eq!(first.remaining, 2);
        assert!(
            until.contains(&(first.reset.as_millis() as u64)),
            "{first:?} vs {until:?}"
        );
        assert!(
            until.contains(&pttl),
            "the key expires at 00:00 UTC: {pttl} vs {until:?}"
        );
        assert!(!refused.allowed);
        assert!(until.contains(&(refused.retry_after.as_millis() as u64)));
        let secs = refused.retry_after_secs().unwrap();
        assert_eq!(secs, refused.retry_after.as_millis().div_ceil(1000) as u64);
        checked = true;
        break;
    }
    assert!(checked, "five attempts all straddled midnight");

    let per_second = limit("per-second", 2, 1, Window::Fixed);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut windows = 0;
    while windows < 3 {
        assert!(
            Instant::now() < deadline,
            "saw only {windows} clean windows"
        );
        // Start right after a second boundary on the Redis clock.
        let start = server_ms(&mut conn).await / 1000;
        while server_ms(&mut conn).await / 1000 == start {
            assert!(Instant::now() < deadline);
        }
        let t0 = server_ms(&mut conn).await;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(st.check(&per_second, &k).await.unwrap());
        }
        let t1 = server_ms(&mut conn).await;
        if t0 / 1000 != t1 / 1000 {
            continue;
        }
        let allowed: Vec<bool> = got.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, false, false], "window {}", t0 / 1000);
        let end = (t0 / 1000 + 1) * 1000;
        let wait = got[2].retry_after.as_millis() as u64;
        assert!(
            (end - t1..=end - t0).contains(&wait),
            "{wait} vs {t0}..{t1}"
        );
        assert_eq!(got[2].retry_after_secs(), Some(1));
        windows += 1;
    }
}

// Sliding windows in Redis: capacity comes back exactly when the bucket holding the
// admitted requests stops counting (`per` after the latest of them), never before, and
// the wait is never more than `per`.
#[tokio::test]
async fn sliding_window_capacity_returns_when_the_bucket_stops_counting() {
    let redis = RedisServer::start();
    let st = store(&redis.url(), Duration::from_secs(5));
    let mut conn = redis.conn().await;
    let l = limit("sliding", 3, 4, Window::Sliding); // g = 200 ms
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        assert!(Instant::now() < deadline);
        let k = client_key(&format!("s{attempt}"));
        let t0 = server_ms(&mut conn).await;
        let mut ok = Vec::new();
        for _ in 0..3 {
            ok.push(st.check(&l, &k).await.unwrap());
        }
        let t1 = server_ms(&mut conn).await;
        if t0 / 200 != t1 / 200 {
            continue; // the three did not land in one bucket
        }
        assert!(ok.iter().all(|d| d.allowed));
        assert_eq!(
            ok.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 1, 0]
        );
        // The latest of the three arrived between t0 and t1: the bucket stops counting
        // `per` after it.
        let (earliest, latest) = (t0 + 4000, t1 + 4000);
        let refused = st.check(&l, &k).await.unwrap();
        let t2 = server_ms(&mut conn).await;
        assert!(!refused.allowed);
        let wait = refused.retry_after.as_millis() as u64;
        assert!(
            (earliest - t2..=latest - t1).contains(&wait),
            "{wait}: stops between {earliest} and {latest}, asked at {t1}..{t2}"
        );
        assert!(refused.reset <= Duration::from_secs(4) && wait <= 4000);
        // 4 unless the machine stalled for a second between the burst and the refusal.
        assert!(
            matches!(refused.retry_after_secs(), Some(3..=4)),
            "{refused:?}"
        );
        assert_eq!(refused.remaining, 0);
        // Ask (without counting) until admitted: refused strictly before the latest
        // request's time + per, admitted from then on.
        loop {
            assert!(Instant::now() < deadline);
            let before = server_ms(&mut conn).await;
            let d = st.peek(&l, &k).await.unwrap();
            let after = server_ms(&mut conn).await;
            if d.allowed {
                assert!(after >= earliest, "admitted at {after}, before {earliest}");
                assert_eq!(d.remaining, 3, "a peek counts nothing");
                break;
            }
            assert!(before < latest, "refused at {before}, after {latest}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return;
    }
}

// Every key carries an expiry, holds no token material whatever the header carried,
// stays short, and is gone once its window has passed.
#[tokio::test]
async fn keys_expire_and_hold_no_token() {
    use rand::{Rng, SeedableRng};
    let redis = RedisServer::start();
    let st = store(&redis.url(), Duration::from_secs(5));
    let mut conn = redis.conn().await;
    let now = server_ms(&mut conn).await;
    let by_auth = KeySpec::Header(AUTHORIZATION);
    let far = fixed_per_far_from_boundary(now);
    let by_header = |name: &str, per: u64, window: Window| {
        limit_with(name, 2, per, window, OnError::Deny, by_auth.clone())
    };
    let sliding = by_header("by-auth-s", 60, Window::Sliding);
    let fixed = by_header("by-auth-f", far, Window::Fixed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut tokens: Vec<String> = (0..20)
        .map(|_| {
            let body: String = (0..120)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
                .collect();
            format!("eyJhbGciOiJSUzI1NiJ9.{body}")
        })
        .collect();
    tokens.push(format!("eyJ{}", "Q".repeat(8000)));
    let key_of = |t: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        by_auth.key(&KeyInput {
            client_ip: "127.0.0.1".parse().unwrap(),
            headers: &headers,
            client_id: None,
            subject: None,
            ip_key: None,
        })
    };
    for t in &tokens {
        assert!(st.check(&sliding, &key_of(t)).await.unwrap().allowed);
        assert!(st.check(&fixed, &key_of(t)).await.unwrap().allowed);
    }
    let keys = all_keys(&mut conn).await;
    assert_eq!(
        keys.len(),
        2 * tokens.len(),
        "one key per value and limit: {keys:?}"
    );
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let max = if key.starts_with("tollgate:rl:by-auth-s:s60:") {
            63_000 // per + one bucket
        } else {
            assert!(
                key.starts_with(&format!("tollgate:rl:by-auth-f:f{far}:")),
                "{key}"
            );
            far as i64 * 1000
        };
        assert!(pttl > 0 && pttl <= max, "{key} PTTL {pttl}");
        assert!(key.len() <= 130, "{key}");
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let stored = format!("{key} {}", fields.join(" "));
        assert!(
            !stored.contains("Bearer") && !stored.contains("eyJ"),
            "{stored}"
        );
        for t in &tokens {
            for i in 0..t.len().saturating_sub(12) {
                assert!(
                    !stored.contains(&t[i..i + 12]),
                    "{stored} holds part of a token"
                );
            }
        }
    }

    // Keys of a short window are gone once it has passed.
    let short_s = by_header("short-s", 2, Window::Sliding);
    let short_f = by_header("short-f", 2, Window::Fixed);
    for t in &tokens[..5] {
        let k = key_of(t);
        st.check(&short_s, &k).await.unwrap();
        st.check(&short_f, &k).await.unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(short_s.redis_key(&k))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(pttl > 0 && pttl <= 2100, "PTTL {pttl}"); // per + one 100 ms bucket
    }
    let short = |keys: Vec<String>| {
        keys.into_iter()
            .filter(|k| k.starts_with("tollgate:rl:short-"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while short(all_keys(&mut conn).await) > 0 {
        assert!(Instant::now() < deadline, "keys outlived their window");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(all_keys(&mut conn).await.len(), 2 * tokens.len());
}

// A peek neither counts nor creates a key; a refused request is not counted.
#[tokio::test]
async fn peeks_and_refusals_are_not_counted_in_redis() {
    let redis = RedisServer::start();
    let st = store(&redis.url(), Duration::from_secs(5));
    let mut conn = redis.conn().await;
    let now = server_ms(&mut conn).await;
    let l = limit(
        "failed-auth",
        2,
        fixed_per_far_from_boundary(now),
        Window::Fixed,
    );
    let k = client_key("guesser");
    for _ in 0..3 {
        assert!(st.peek(&l, &k).await.unwrap().allowed);
    }
    assert!(all_keys(&mut conn).await.is_empty());
    assert!(st.check(&l, &k).await.unwrap().allowed);
    assert!(st.check(&l, &k).await.unwrap().allowed);
    for _ in 0..3 {
        assert!(!st.check(&l, &k).await.unwrap().allowed);
    }
    assert!(!st.peek(&l, &k).await.unwrap().allowed);
    let n: u64 = redis::cmd("HGET")
        .arg(l.redis_key(&k))
        .arg("n")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

/// The previous release's decision script (tests/fixtures/ratelimit-script-v1.lua) run
/// as an old replica would: `{allowed, counted, reset ms, retry ms}` and the Redis time
/// (ms) just before and just after it ran.
async fn v1_decide(
    conn: &mut redis::aio::MultiplexedConnection,
    l: &Limit,
    k: &RateKey,
    commit: bool,
) -> ([i64; 4], u64, u64) {
    let script = std::fs::read_to_string(fixture("ratelimit-script-v1.lua")).unwrap();
    let per_ms = l.per().as_millis() as u64;
    let before = server_ms(conn).await;
    let r: Vec<i64> = redis::cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg(l.redis_key(k))
        .arg(l.limit())
        .arg(per_ms)
        .arg(per_ms.div_ceil(20))
        .arg(match l.window() {
            Window::Fixed => "f",
            Window::Sliding => "s",
        })
        .arg(if commit { "1" } else { "0" })
        .query_async(conn)
        .await
        .unwrap();
    let after = server_ms(conn).await;
    (r.try_into().unwrap(), before, after)
}

// A rolling deploy: replicas still running the previous script and replicas running
// this one share one Redis and count into the same keys. Taking turns, they admit
// exactly `limit` between them (each sees the other's counts), and when a lower limit
// must wait for several of the oldest buckets to stop counting, both name the same
// moment (Retry-After) and the same reset.
#[tokio::test]
async fn old_and_new_scripts_count_together_during_a_rolling_deploy() {
    let redis = RedisServer::start();
    let st = store(&redis.url(), Duration::from_secs(5));
    let mut conn = redis.conn().await;
    let now = server_ms(&mut conn).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (window, per) in [
        (Window::Sliding, 10), // buckets of 500 ms
        (Window::Fixed, fixed_per_far_from_boundary(now)),
    ] {
        'attempt: for attempt in 0.. {
            assert!(Instant::now() < deadline, "{window:?}: no clean attempt");
            let l = limit("rolling", 12, per, window);
            // The same key under a lower budget (a reload that lowered the limit).
            let lower = limit("rolling", 6, per, window);
            let k = client_key(&format!("rolling-{window:?}-{attempt}"));
            let start = server_ms(&mut conn).await;
            let mut counted = Vec::new();
            for i in 0..12 {
                if i % 2 == 0 {
                    let d = st.check(&l, &k).await.unwrap();
                    assert!(d.allowed, "{window:?} request {i}: {d:?}");
                    counted.push(12 - d.remaining as i64);
                } else {
                    let (r, _, _) = v1_decide(&mut conn, &l, &k, true).await;
                    assert_eq!(r[0], 1, "{window:?} request {i}: {r:?}");
                    counted.push(r[1]);
                }
                if window == Window::Sliding {
                    // spread the requests over several buckets
                    tokio::time::sleep(Duration::from_millis(120)).await;
                }
            }
            if server_ms(&mut conn).await - start > 8_000 {
                continue 'attempt; // a stalled machine: the first ones may have stopped counting
            }
            assert_eq!(counted, (1..=12).collect::<Vec<i64>>(), "{window:?}");
            // Both refuse the 13th, and a peek of either counts nothing.
            let before = server_ms(&mut conn).await;
            let new = st.check(&lower, &k).await.unwrap();
            let after = server_ms(&mut conn).await;
            let (old, old_before, old_after) = v1_decide(&mut conn, &lower, &k, true).await;
            assert!(!new.allowed && !st.check(&l, &k).await.unwrap().allowed);
            assert_eq!(old[0], 0, "{old:?}");
            assert_eq!(old[1], 12, "{old:?}: refusals are not counted");
            assert!(!st.peek(&l, &k).await.unwrap().allowed);
            assert_eq!(v1_decide(&mut conn, &l, &k, false).await.0[..2], [0, 12]);
            // Each answer is `moment - now` for one moment on the Redis clock: the ranges
            // the two put that moment in overlap.
            let moment = |wait: u64, from: u64, to: u64| (from + wait)..=(to + wait);
            let new_retry = moment(new.retry_after.as_millis() as u64, before, after);
            let old_retry = moment(old[3] as u64, old_before, old_after);
            let new_reset = moment(new.reset.as_millis() as u64, before, after);
            let old_reset = moment(old[2] as u64, old_before, old_after);
            for (what, a, b) in [
                ("retry", &new_retry, &old_retry),
                ("reset", &new_reset, &old_reset),
            ] {
                assert!(
                    a.start() <= b.end() && b.start() <= a.end(),
                    "{window:?} {what}: new {a:?}, old {b:?}"
                );
            }
            if window == Window::Sliding {
                // 7 of the 12 must stop counting for the lower limit, and at most 5 (one
                // per 120 ms) arrived in the oldest bucket: both wait for a later bucket
                // than the oldest, whole buckets (500 ms) after it.
                let new_gap = new.retry_after.as_millis() as i64 - new.reset.as_millis() as i64;
                let old_gap = old[3] - old[2];
                for gap in [new_gap, old_gap] {
                    assert!(gap > 0 && gap % 500 == 0, "{new:?} {old:?}");
                }
            }
            break;
        }
    }
}

/// Decides once, never waiting much longer than the store's timeout (the bound here
/// only catches a hang; the typed errors show which mechanism answered).
async fn decide(l: &Limiter, limit: &Limit, k: &RateKey) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), l.decide(limit, k))
        .await
        .expect("a decision hung")
}

// Redis killed mid-test with on_error: allow: the local limiter decides (same limit,
// this replica alone), each failure is counted, and Redis is used again once it is back
// on the same port, without restarting anything.
#[tokio::test]
async fn killed_redis_falls_back_to_the_local_limiter_and_recovers() {
    let mut redis = RedisServer::start();
    let st = store(&redis.url(), Duration::from_millis(200));
    let lim = limiter(&st);
    let l = limit_with(
        "fallback",
        5,
        3600,
        Window::Sliding,
        OnError::Allow,
        KeySpec::Client,
    );
    let k = client_key("c1");
    for left in [4, 3] {
        match decide(&lim, &l, &k).await {
            Outcome::Allowed(d) => {
                assert_eq!((d.source, d.remaining), (Source::Redis, left));
            }
            o => panic!("{o:?}"),
        }
    }
    redis.kill();
    let mut allowed = 0;
    for _ in 0..20 {
        match decide(&lim, &l, &k).await {
            Outcome::Allowed(d) => {
                assert_eq!(d.source, Source::LocalFallback);
                allowed += 1;
            }
            Outcome::Limited(d) => assert_eq!(d.source, Source::LocalFallback),
            Outcome::Unavailable(u) => panic!("on_error allow gave 503: {}", u.error),
        }
    }
    assert_eq!(allowed, 5, "the local limiter enforces the same limit");
    assert!(
        st.errors() >= 20,
        "every failed decision is counted: {}",
        st.errors()
    );
    // The raw check says why, typed.
    let e = st.check(&l, &k).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::FailingFast | StoreError::Timeout(_) | StoreError::Connection(_)
        ),
        "{e:?}"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "never used Redis again");
        if let Outcome::Allowed(d) = decide(&lim, &l, &k).await {
            if d.source == Source::Redis {
                // The decision is the new server's count (a probe that timed out on this
                // side may have been counted there too).
                let mut conn = redis.conn().await;
                let fields: Vec<(String, u64)> = redis::cmd("HGETALL")
                    .arg(l.redis_key(&k))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                // Bucket counts, not the `t<bucket>` times beside them.
                let counted: u64 = fields
                    .iter()
                    .filter(|(f, _)| f.parse::<u64>().is_ok())
                    .map(|(_, n)| n)
                    .sum();
                assert_eq!(d.remaining, 5 - counted);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Redis killed with on_error: deny: every decision is the 503 case, with Retry-After,
// until Redis is back.
#[tokio::test]
async fn killed_redis_with_deny_is_unavailable_until_it_returns() {
    let mut redis = RedisServer::start();
    let st = store(&redis.url(), Duration::from_millis(200));
    let lim = limiter(&st);
    let l = limit("strict", 100, 3600, Window::Sliding);
    let k = client_key("c2");
    assert!(matches!(decide(&lim, &l, &k).await, Outcome::Allowed(_)));
    redis.kill();
    for _ in 0..10 {
        match decide(&lim, &l, &k).await {
            Outcome::Unavailable(u) => {
                assert_eq!(&*u.limit, "strict");
                assert_eq!(u.retry_after_header(), "1");
            }
            o => panic!("on_error deny admitted or limited: {o:?}"),
        }
    }
    assert!(lim.local().is_empty(), "deny never counts locally");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "never used Redis again");
        match decide(&lim, &l, &k).await {
            Outcome::Allowed(d) => {
                assert_eq!(d.source, Source::Redis);
                break;
            }
            Outcome::Unavailable(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            o => panic!("{o:?}"),
        }
    }
}

// A wedged Redis (SIGSTOP: connected, silent) costs a decision the timeout and no
// more, then fails fast; it is used again once it answers.
#[tokio::test]
async fn wedged_redis_times_out_then_fails_fast() {
    let redis = RedisServer::start();
    let st = store(&redis.url(), Duration::from_millis(100));
    let l = limit("wedged", 100, 3600, Window::Sliding);
    let k = client_key("c3");
    st.check(&l, &k).await.unwrap();
    redis.pause();
    let mut kinds = Vec::new();
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(10), st.check(&l, &k))
            .await
            .expect("a decision hung");
        kinds.push(r.unwrap_err().kind());
    }
    assert_eq!(kinds[..3], ["timeout"; 3], "{kinds:?}");
    assert_eq!(kinds[3..], ["failing_fast"; 2], "{kinds:?}");
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while st.check(&l, &k).await.is_err() {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay that can turn every connection it holds into a black hole (bytes
/// dropped both ways, sockets left open), as a dropped conntrack entry does.
struct Relay {
    port: u16,
    accepted: Arc<AtomicU64>,
    cutoff: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let cutoff = Arc::new(AtomicU64::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (a, c, t) = (accepted.clone(), cutoff.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let mut held = t.lock().unwrap();
                held.push(tokio::spawn(pipe(cr, sw, id, c.clone())));
                held.push(tokio::spawn(pipe(sr, cw, id, c.clone())));
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay {
            port,
            accepted,
            cutoff,
            tasks,
        }
    }

    /// Every connection accepted so far goes silent; new ones are relayed.
    fn black_hole_existing(&self) {
        self.cutoff
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    cutoff: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id < cutoff.load(Ordering::SeqCst) {
            continue; // black hole
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// A connection that silently stops answering (no RST, no FIN) is replaced after
// stale_after, so the store recovers without waiting for TCP to give up.
#[tokio::test]
async fn a_silent_connection_is_replaced() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port).await;
    let mut cfg = RedisConfig::new(
        Secret::new(format!("redis://127.0.0.1:{}/0", relay.port)),
        Duration::from_millis(100),
    );
    cfg.stale_after = Some(Duration::from_millis(500));
    let st = store_cfg(cfg);
    let l = limit("silent", 100, 3600, Window::Sliding);
    let k = client_key("c4");
    st.check(&l, &k).await.unwrap();
    let before = relay.accepted.load(Ordering::SeqCst);
    relay.black_hole_existing();
    assert!(matches!(
        st.check(&l, &k).await,
        Err(StoreError::Timeout(_))
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the silent connection was never replaced"
        );
        match st.check(&l, &k).await {
            Ok(d) => {
                assert_eq!(d.source, Source::Redis);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(
        relay.accepted.load(Ordering::SeqCst) > before,
        "a new connection was made"
    );
}

// rediss:// with rustls: the test CA verifies the server; without it (system roots) or
// over plain redis:// there is no decision. With tls-auth-clients, the client
// certificate is presented.
#[tokio::test]
async fn rediss_works_with_rustls_and_verifies_the_server() {
    let ca = std::fs::read(fixture("ca.pem")).unwrap();
    let redis = RedisServer::start_with(RedisOptions {
        tls: true,
        ..Default::default()
    });
    let l = limit("tls", 2, 3600, Window::Sliding);
    let k = client_key("c5");
    let mut cfg = RedisConfig::new(Secret::new(redis.url()), Duration::from_secs(5));
    cfg.ca_pem = Some(ca.clone());
    let st = store_cfg(cfg);
    assert!(st.check(&l, &k).await.unwrap().allowed);
    assert!(st.check(&l, &k).await.unwrap().allowed);
    assert!(!st.check(&l, &k).await.unwrap().allowed, "counted over TLS");

    let untrusted = store(&redis.url(), Duration::from_secs(2));
    assert!(
        untrusted.check(&l, &k).await.is_err(),
        "the test CA is not a system root"
    );
    let plain = store(
        &format!("redis://127.0.0.1:{}/0", redis.port),
        Duration::from_secs(2),
    );
    assert!(plain.check(&l, &k).await.is_err());

    let mtls = RedisServer::start_with(RedisOptions {
        tls: true,
        tls_client_auth: true,
        ..Default::default()
    });
    let mut cfg = RedisConfig::new(Secret::new(mtls.url()), Duration::from_secs(5));
    cfg.ca_pem = Some(ca.clone());
    cfg.client_cert_pem = Some(std::fs::read(fixture("client.pem")).unwrap());
    cfg.client_key_pem = Some(Secret::new(
        std::fs::read_to_string(fixture("client-key.pem")).unwrap(),
    ));
    assert!(store_cfg(cfg).check(&l, &k).await.unwrap().allowed);
    let mut cfg = RedisConfig::new(Secret::new(mtls.url()), Duration::from_secs(2));
    cfg.ca_pem = Some(ca);
    assert!(
        store_cfg(cfg).check(&l, &k).await.is_err(),
        "no client certificate"
    );
}

// A password in the URL authenticates; a wrong one fails without being echoed.
#[tokio::test]
async fn redis_password_authenticates_and_is_never_echoed() {
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("s3cret-Pa55".into()),
        ..Default::default()
    });
    let l = limit("auth", 2, 3600, Window::Sliding);
    let k = client_key("c6");
    let st = store(&redis.url(), Duration::from_secs(5));
    assert!(st.check(&l, &k).await.unwrap().allowed);
    let wrong = store(
        &format!("redis://:wr0ng-Pa55@127.0.0.1:{}/0", redis.port),
        Duration::from_secs(2),
    );
    let e = wrong.check(&l, &k).await.unwrap_err();
    let shown = format!("{e} {e:?} {wrong:?}");
    assert_eq!(e.kind(), "auth", "{e}");
    assert!(
        !shown.contains("wr0ng-Pa55") && !shown.contains("s3cret"),
        "{shown}"
    );
    let none = store(
        &format!("redis://127.0.0.1:{}/0", redis.port),
        Duration::from_secs(2),
    );
    let e = none.check(&l, &k).await.unwrap_err();
    assert_eq!(e.kind(), "auth", "{e}");
}

// The script's arithmetic to the millisecond: with Redis's clock replaced by a given one
// (the same script text, `TIME` read from the arguments instead), the script answers
// exactly what the local store answers, decision by decision, over random arrivals and
// bursts, sliding and fixed (the local store's own tests check those answers against a
// brute-force count). Catches a `<` for a `<=`, or a release one millisecond early.
#[tokio::test]
async fn the_script_decides_exactly_like_the_local_store() {
    use rand::{Rng, SeedableRng};
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let script = tollgate::ratelimit::redis::SCRIPT.replacen(
        "local t = redis.call('TIME')",
        "local t = {ARGV[#ARGV - 1], ARGV[#ARGV]}",
        1,
    );
    assert_ne!(
        script,
        tollgate::ratelimit::redis::SCRIPT,
        "the clock line moved"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    const T0: u64 = 19_676 * DAY_MS;
    let mut decisions = 0;
    for (n, per_s, window) in [
        (1, 1, Window::Sliding),
        (5, 2, Window::Sliding),
        (10, 60, Window::Sliding),
        (7, 3, Window::Sliding),
        (3, 2, Window::Fixed),
    ] {
        let l = limit("exact", n, per_s, window);
        let local = LocalStore::new(1000);
        let k = client_key(&format!("exact-{n}-{per_s}-{window:?}"));
        let per = per_s * 1000;
        let mut now = T0 + rng.gen_range(0..per);
        let mut wait: Option<u64> = None;
        for i in 0..600 {
            // Mostly spread out, sometimes a burst in the same millisecond; after a
            // refusal, often exactly at the promised moment or a millisecond before it.
            match wait.take() {
                Some(w) if i % 3 == 0 => now += w,
                Some(w) if i % 3 == 1 => now += w - 1,
                _ if i % 7 == 0 => {}
                _ => now += rng.gen_range(0..per / 5 + 1),
            }
            let want = local.check_at(&l, &k, now, true, Source::Local);
            let answer: String = redis::cmd("EVAL")
                .arg(&script)
                .arg(1)
                .arg(l.redis_key(&k))
                .arg(n)
                .arg(per)
                .arg(per.div_ceil(20))
                .arg(match window {
                    Window::Fixed => "f",
                    Window::Sliding => "s",
                })
                .arg("1")
                .arg(now / 1000)
                .arg((now % 1000) * 1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            let got: Vec<u64> = answer.split(' ').map(|x| x.parse().unwrap()).collect();
            let [allowed, counted, reset, retry] = got[..] else {
                panic!("{answer}")
            };
            if !want.allowed {
                wait = Some(want.retry_after.as_millis() as u64);
            }
            let remaining = if allowed == 1 {
                n.saturating_sub(counted)
            } else {
                0
            };
            let retry = if allowed == 1 { 0 } else { retry.max(1) };
            assert_eq!(
                (allowed == 1, remaining, reset, retry),
                (
                    want.allowed,
                    want.remaining,
                    want.reset.as_millis() as u64,
                    want.retry_after.as_millis() as u64
                ),
                "{window:?} {n} per {per_s}s, decision {i} at T0 + {} ms",
                now - T0
            );
            decisions += 1;
        }
    }
    assert_eq!(decisions, 3000);
}
