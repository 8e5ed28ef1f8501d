//! Rate limits and quotas end to end (SPEC "Rate limits and quotas"): real tollgates
//! on 127.0.0.1:0 (two replicas sharing one real `redis-server` where the store is
//! Redis), a real upstream and issuer, real HTTP clients. What a client sees (429 body
//! and headers, RateLimit headers, CORS on the refusal), what is counted and what is
//! not (preflights, denied requests, explain), what Redis holds, and what happens when
//! Redis dies and comes back.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::cli::bin;
use crate::common::*;
use crate::gwconfig::GatewayConfig;
use crate::redis_server::RedisServer;
use crate::upstream_credentials::header;

const ORIGIN: &str = "https://dash.example";

/// A config with the test issuer `corp` and one upstream `u`; a test adds its limits
/// and routes.
fn config(idp: &Idp, up: &Upstream) -> GatewayConfig {
    GatewayConfig::new()
        .issuer(idp, "corp")
        .upstream("u", &up.url())
}

/// Route `name` on `/name` to upstream `u`, counted against `limits`.
fn limited(name: &str, auth: Value, limits: &[&str]) -> Value {
    json!({
        "name": name, "path_prefix": format!("/{name}"), "upstream": "u", "auth": auth,
        "rate_limits": limits,
    })
}

/// A rate limit counted in memory.
fn limit(name: &str, key: &str, limit: u32, per: &str) -> Value {
    json!({"name": name, "key": key, "limit": limit, "per": per})
}

/// A rate limit counted in Redis, `on_error` as given.
fn redis_limit(name: &str, key: &str, n: u32, per: &str, on_error: &str) -> Value {
    let mut v = limit(name, key, n, per);
    v["store"] = json!("redis");
    v["on_error"] = json!(on_error);
    v
}

fn metric(text: &str, series: &str) -> f64 {
    series_value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Every `tollgate:rl:*` key in Redis with its remaining time to live (ms).
async fn redis_keys(redis: &RedisServer) -> Vec<(String, i64)> {
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:rl:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((k, ttl));
    }
    out.sort();
    out
}

// Two replicas sharing one Redis enforce one limit exactly: 120 concurrent requests
// split between them are admitted exactly `limit` times; the refusals are counted per
// route and limit; Redis holds one expiring key per limit and client, made of digests
// (neither the token nor the client id appears in any key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_sharing_redis_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&idp, &up)
        .redis(&redis.url(), "2s")
        .rate_limit(redis_limit("per-client", "client", 25, "1h", "deny"))
        .rate_limit(redis_limit(
            "per-token",
            "header:Authorization",
            1000,
            "1h",
            "deny",
        ))
        .route(limited(
            "api",
            json!({"issuers": ["corp"]}),
            &["per-token", "per-client"],
        ))
        .yaml();
    let (a, b) = (spawn_gateway(&yaml).await, spawn_gateway(&yaml).await);
    let token = idp.token(json!({}));
    let c = client();
    let sends = (0..120).map(|i| {
        let url = if i % 2 == 0 {
            a.url("/api/x")
        } else {
            b.url("/api/x")
        };
        let req = c.get(url).bearer_auth(&token);
        async move { req.send().await.unwrap() }
    });
    let answers = join_all(sends).await;
    let mut ok = 0;
    let mut refused = 0;
    for r in &answers {
        match r.status().as_u16() {
            200 => {
                ok += 1;
                // The limit closest to exhaustion supplies the headers.
                assert_eq!(
                    header(r, "ratelimit-policy"),
                    Some("\"per-client\";q=25;w=3600")
                );
                assert!(header(r, "ratelimit")
                    .unwrap()
                    .starts_with("\"per-client\";r="));
            }
            429 => {
                refused += 1;
                assert_eq!(
                    header(r, "ratelimit-policy"),
                    Some("\"per-client\";q=25;w=3600")
                );
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, refused), (25, 95));
    assert_eq!(up.count(), 25);
    // Each replica counted its own refusals; together they are all of them.
    let (ma, mb) = (
        admin_metrics(&a.admin_url("")).await,
        admin_metrics(&b.admin_url("")).await,
    );
    for series in [
        "tollgate_rate_limited_total{route=\"api\",limit=\"per-client\"}",
        "tollgate_auth_denied_total{route=\"api\",reason=\"rate_limited\"}",
    ] {
        assert_eq!(metric(&ma, series) + metric(&mb, series), 95.0, "{series}");
    }
    assert_eq!(
        metric(&ma, "tollgate_store_errors_total{store=\"redis\"}"),
        0.0
    );
    // What Redis holds: one key per limit and client, expiring, no request material.
    let keys = redis_keys(&redis).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    for (k, ttl) in &keys {
        assert!(
            k.starts_with("tollgate:rl:per-client:s3600:")
                || k.starts_with("tollgate:rl:per-token:s3600:"),
            "{k}"
        );
        assert!(!k.contains(&token) && !k.contains("eyJ") && !k.contains("sap-cx-dashboard"));
        assert!(*ttl > 3_600_000 && *ttl <= 3_780_000, "{k} ttl {ttl}");
    }
    a.stop().await;
    b.stop().await;
}

// A refusal is exactly what SPEC says: 429, JSON body naming the limit, Retry-After in
// whole seconds, RateLimit-Policy and RateLimit, the route's CORS headers; admitted
// responses carry the RateLimit headers too. Preflights and denied requests (no token,
// missing scope) are never counted; every metric family is exported from startup.
#[tokio::test]
async fn refusals_follow_spec_and_only_authorised_requests_count() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let mut api = limited(
        "api",
        json!({"issuers": ["corp"], "scopes": ["analytics.read"]}),
        &["per-client"],
    );
    api["cors"] = json!({
        "allow_origins": [ORIGIN],
        "allow_headers": ["Authorization"],
        "expose_headers": ["Retry-After", "RateLimit", "RateLimit-Policy"],
    });
    let yaml = config(&idp, &up)
        .rate_limit(limit("per-client", "client", 2, "1h"))
        .route(api)
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let c = client();
    let m = admin_metrics(&gw.admin_url("")).await;
    for family in [
        "# TYPE tollgate_rate_limited_total counter",
        "# TYPE tollgate_store_errors_total counter",
    ] {
        assert!(m.contains(family), "{family} not exported at startup:\n{m}");
    }
    assert_eq!(
        metric(&m, "tollgate_store_errors_total{store=\"redis\"}"),
        0.0
    );
    // Neither preflights nor denials count.
    for _ in 0..4 {
        let r = c
            .request(reqwest::Method::OPTIONS, gw.url("/api/x"))
            .header("origin", ORIGIN)
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap();
        assert!(r.status() == 200 || r.status() == 204, "{}", r.status());
        assert!(header(&r, "ratelimit").is_none());
    }
    for _ in 0..3 {
        let r = c.get(gw.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let weak = idp.token(json!({"scope": "other"}));
        let r = c
            .get(gw.url("/api/x"))
            .bearer_auth(weak)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    let token = idp.token(json!({}));
    let send = || {
        c.get(gw.url("/api/x"))
            .bearer_auth(&token)
            .header("origin", ORIGIN)
            .send()
    };
    for left in [1, 0] {
        let r = send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"per-client\";q=2;w=3600")
        );
        let state = header(&r, "ratelimit").unwrap();
        let (name_r, t) = state.rsplit_once(";t=").unwrap();
        assert_eq!(name_r, format!("\"per-client\";r={left}"));
        // Sliding: capacity returns one `per` after the oldest bucket's latest request
        // (just now, unless the two straddled a bucket boundary): never more than `w`.
        let t: u64 = t.parse().unwrap();
        assert!((3590..=3600).contains(&t), "{state}");
        assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
    }
    let r = send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
    assert!(header(&r, "vary").unwrap().contains("Origin"));
    assert_eq!(
        header(&r, "access-control-expose-headers").map(str::to_ascii_lowercase),
        Some("retry-after, ratelimit, ratelimit-policy".into())
    );
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"per-client\";q=2;w=3600")
    );
    assert_eq!(
        header(&r, "ratelimit"),
        Some(format!("\"per-client\";r=0;t={retry}").as_str())
    );
    let rid = header(&r, "x-request-id").unwrap().to_owned();
    let body = json_of(r).await;
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["request_id"], rid.as_str());
    let desc = body["error_description"].as_str().unwrap();
    assert!(
        desc.starts_with(
            "rate limit \"per-client\" exceeded (at most 2 requests per 3600s); retry in"
        ),
        "{desc}"
    );
    assert_eq!(up.count(), 2);
    let m = admin_metrics(&gw.admin_url("")).await;
    assert_eq!(
        metric(
            &m,
            "tollgate_rate_limited_total{route=\"api\",limit=\"per-client\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_auth_denied_total{route=\"api\",reason=\"rate_limited\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "tollgate_requests_total{route=\"api\",status=\"429\"}"),
        1.0
    );
    gw.stop().await;
}

// header:NAME counts per header value; requests without the header (or with an empty
// one) share one key, so leaving it out never escapes the limit. `key: ip` counts per
// client address (127.0.0.1 and 127.0.0.2 are two clients); `key: subject` per token
// subject, whichever client the token was issued to.
#[tokio::test]
async fn header_ip_and_subject_keys() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&idp, &up)
        .rate_limit(limit("per-key", "header:X-Api-Key", 2, "1h"))
        .rate_limit(limit("per-ip", "ip", 3, "1h"))
        .rate_limit(limit("per-user", "subject", 1, "1h"))
        .route(limited("partner", json!("none"), &["per-key"]))
        .route(limited("partner2", json!("none"), &["per-key"]))
        .route(limited("public", json!("none"), &["per-ip"]))
        .route(limited("me", json!({"issuers": ["corp"]}), &["per-user"]))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let c = client();
    let status = |key: Option<&'static str>| {
        let mut r = c.get(gw.url("/partner/x"));
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        [status(Some("a")).await, status(Some("a")).await],
        [200, 200]
    );
    assert_eq!(status(Some("a")).await, 429);
    // One named limit is one budget on every route that lists it.
    let r = c
        .get(gw.url("/partner2/x"))
        .header("x-api-key", "a")
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 429);
    assert_eq!(status(Some("b")).await, 200);
    // No header, an empty one and a blank one are the same (shared) key.
    assert_eq!([status(None).await, status(Some("")).await], [200, 200]);
    assert_eq!(status(Some("  ")).await, 429);
    assert_eq!(status(None).await, 429);
    // Per IP: another loopback address is another client.
    let from = |ip: &str| {
        tollgate::tls::install_default_provider();
        reqwest::Client::builder()
            .no_proxy()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let (one, two) = (from("127.0.0.1"), from("127.0.0.2"));
    for _ in 0..3 {
        let r = one.get(gw.url("/public/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = one.get(gw.url("/public/x")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let r = two.get(gw.url("/public/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "ratelimit")
        .unwrap()
        .starts_with("\"per-ip\";r=2;t="));
    // Per subject: the same user through two clients is one budget; another user has his own.
    let me = |claims: serde_json::Value| {
        let t = idp.token(claims);
        let r = c.get(gw.url("/me/x")).bearer_auth(t);
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(me(json!({"sub": "alice", "client_id": "app-1"})).await, 200);
    assert_eq!(me(json!({"sub": "alice", "client_id": "app-2"})).await, 429);
    assert_eq!(me(json!({"sub": "bob", "client_id": "app-1"})).await, 200);
    gw.stop().await;
}

/// The Redis server's clock, in Unix milliseconds.
async fn redis_now_ms(redis: &RedisServer) -> u64 {
    let mut conn = redis.conn().await;
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    s * 1000 + us / 1000
}

const DAY_MS: u64 = 86_400_000;

// A daily quota (window: fixed, per: 1d) ends at 00:00 UTC on the Redis clock: once it
// is used up, Retry-After and the counter's expiry both point at the next midnight. The
// key of a short sliding limit is gone from Redis once its window has passed.
#[tokio::test]
async fn a_daily_quota_ends_at_midnight_utc_and_idle_keys_expire() {
    let redis = RedisServer::start();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let mut daily = limit("daily", "client", 3, "1d");
    daily["window"] = json!("fixed");
    daily["store"] = json!("redis");
    let mut burst = limit("burst", "client", 100, "2s");
    burst["store"] = json!("redis");
    let yaml = config(&idp, &up)
        .redis(&redis.url(), "2s")
        .rate_limit(daily)
        .rate_limit(burst)
        .route(limited(
            "api",
            json!({"issuers": ["corp"]}),
            &["burst", "daily"],
        ))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    // Not within 30 s of midnight UTC, or the quota would end during the test.
    eventually(
        "30 s away from midnight UTC",
        Duration::from_secs(40),
        async || DAY_MS - redis_now_ms(&redis).await % DAY_MS > 30_000,
        |ok| *ok,
    )
    .await;
    let token = idp.token(json!({}));
    let c = client();
    for left in [2, 1, 0] {
        let r = c
            .get(gw.url("/api/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"daily\";q=3;w=86400")
        );
        assert!(header(&r, "ratelimit")
            .unwrap()
            .starts_with(&format!("\"daily\";r={left};t=")));
    }
    let before = DAY_MS - redis_now_ms(&redis).await % DAY_MS;
    let r = c
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let after = DAY_MS - redis_now_ms(&redis).await % DAY_MS;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!(
        (after / 1000..=before.div_ceil(1000)).contains(&retry),
        "Retry-After {retry}s, midnight in {after}..{before} ms"
    );
    let desc = json_of(r).await["error_description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(desc.contains("\"daily\""), "{desc}");
    let keys = redis_keys(&redis).await;
    let daily = keys
        .iter()
        .find(|(k, _)| k.starts_with("tollgate:rl:daily:f86400:"))
        .unwrap_or_else(|| panic!("{keys:?}"));
    assert!(daily.1 > 0 && daily.1 as u64 <= before, "{daily:?}");
    assert!(keys
        .iter()
        .any(|(k, ttl)| k.starts_with("tollgate:rl:burst:s2:") && *ttl <= 2_100));
    // The sliding limit's key expires with its window; the quota's stays.
    eventually(
        "the burst key expires",
        Duration::from_secs(15),
        async || redis_keys(&redis).await,
        |keys| keys.len() == 1 && keys[0].0.starts_with("tollgate:rl:daily:"),
    )
    .await;
    gw.stop().await;
}

// Redis killed mid-test: a limit with on_error: deny answers 503 service_unavailable
// with Retry-After at once (connection refused, then fail-fast; never a hang), one with
// on_error: allow is decided by this replica's own counters; every failure is counted;
// once Redis is back on the same port, both use it again without a restart.
#[tokio::test]
async fn redis_killed_deny_refuses_allow_falls_back_and_both_recover() {
    let mut redis = RedisServer::start();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&idp, &up)
        .redis(&redis.url(), "1s")
        .rate_limit(redis_limit("strict", "ip", 1000, "1h", "deny"))
        .rate_limit(redis_limit("lenient", "ip", 3, "1h", "allow"))
        .route(limited("strict", json!("none"), &["strict"]))
        .route(limited("lenient", json!("none"), &["lenient"]))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let c = client();
    // Bounded: a request that hangs fails the test (this is no speed measurement).
    let get = |path: &'static str| {
        let r = c.get(gw.url(path));
        async move {
            tokio::time::timeout(Duration::from_secs(10), r.send())
                .await
                .unwrap_or_else(|_| panic!("GET {path} hung"))
                .unwrap()
        }
    };
    assert_eq!(get("/strict/x").await.status(), 200);
    assert_eq!(get("/lenient/x").await.status(), 200);
    assert_eq!(redis_keys(&redis).await.len(), 2);

    redis.kill();
    for _ in 0..6 {
        let r = get("/strict/x").await;
        assert_eq!(r.status(), 503);
        assert_eq!(header(&r, "retry-after"), Some("1"));
        let body = json_of(r).await;
        assert_eq!(body["error"], "service_unavailable");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("\"strict\""),
            "{body}"
        );
    }
    // The local fallback counts from zero (it never saw the request Redis counted).
    for _ in 0..3 {
        let r = get("/lenient/x").await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"lenient\";q=3;w=3600")
        );
    }
    assert_eq!(get("/lenient/x").await.status(), 429);
    let m = admin_metrics(&gw.admin_url("")).await;
    assert!(
        metric(&m, "tollgate_store_errors_total{store=\"redis\"}") >= 10.0,
        "{m}"
    );

    redis.restart();
    eventually(
        "strict admits again",
        Duration::from_secs(20),
        async || get("/strict/x").await.status(),
        |s| *s == 200,
    )
    .await;
    // Redis came back empty: the lenient limit counts there again, from zero.
    for _ in 0..3 {
        assert_eq!(get("/lenient/x").await.status(), 200);
    }
    assert_eq!(get("/lenient/x").await.status(), 429);
    assert_eq!(redis_keys(&redis).await.len(), 2);
    gw.stop().await;
}

// token_service.failed_auth_limit: failed client authentications count per client id
// and per client IP. Over the limit the token endpoint answers 429 rate_limited even for
// the right secret — without checking it (no further failure is recorded) — until the
// window has passed. Another client from another address is not affected; the same
// client from another address is, and so is another client from the same address.
#[tokio::test]
async fn failed_auth_limit_refuses_even_the_right_secret_until_the_window_passes() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&idp, &up)
        .token_service(
            "https://gw.test",
            "https://api.test",
            &[
                ("dash", "right-secret-1", &["a"]),
                ("other", "other-secret-1", &["a"]),
            ],
        )
        .merge(
            "token_service",
            json!({"failed_auth_limit": {"limit": 3, "per": "3s"}}),
        )
        .open_route("api", "/api", "u")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let from = |ip: &str| {
        tollgate::tls::install_default_provider();
        reqwest::Client::builder()
            .no_proxy()
            .local_address(ip.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let (one, two) = (from("127.0.0.1"), from("127.0.0.2"));
    let token = |c: &reqwest::Client, id: &str, secret: &str| {
        c.post(gw.url("/oauth2/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    for _ in 0..3 {
        let r = token(&one, "dash", "wrong").await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let failures = |m: &str| {
        metric(
            m,
            "tollgate_client_auth_failures_total{reason=\"bad_secret\"}",
        )
    };
    assert_eq!(failures(&admin_metrics(&gw.admin_url("")).await), 3.0);
    let r = token(&one, "dash", "right-secret-1").await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "{retry}: never more than per");
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"failed_auth_limit.client\";q=3;w=3")
    );
    assert!(header(&r, "ratelimit")
        .unwrap()
        .starts_with("\"failed_auth_limit.client\";r=0;t="));
    let body = json_of(r).await;
    assert_eq!(body["error"], "rate_limited");
    let desc = body["error_description"].as_str().unwrap();
    assert!(
        desc.starts_with(
            "too many failed client authentications for client dash (at most 3 per 3s); retry in"
        ),
        "{desc}"
    );
    // Refused before the secret is looked at: a wrong one is not even counted.
    assert_eq!(token(&one, "dash", "wrong").await.unwrap().status(), 429);
    assert_eq!(failures(&admin_metrics(&gw.admin_url("")).await), 3.0);
    // Another client from another address is fine; the same client is not, anywhere;
    // another client from the same address is not either (per IP).
    assert_eq!(
        token(&two, "other", "other-secret-1")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        token(&two, "dash", "right-secret-1")
            .await
            .unwrap()
            .status(),
        429
    );
    let r = token(&one, "other", "other-secret-1").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"failed_auth_limit.ip\";q=3;w=3")
    );
    let m = admin_metrics(&gw.admin_url("")).await;
    assert!(
        metric(
            &m,
            "tollgate_rate_limited_total{route=\"none\",limit=\"failed_auth_limit.client\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &m,
            "tollgate_auth_denied_total{route=\"none\",reason=\"rate_limited\"}"
        ) >= 4.0
    );
    // Once the window has passed, the right secret works again.
    eventually(
        "the right secret is accepted again",
        Duration::from_secs(20),
        async || {
            token(&one, "dash", "right-secret-1")
                .await
                .unwrap()
                .status()
        },
        |s| *s == 200,
    )
    .await;
    gw.stop().await;
}

// A reload keeps every counter: the same limit (name, window, per) goes on counting,
// even with a new budget, and a changed config elsewhere resets nothing.
#[tokio::test]
async fn a_reload_keeps_the_counters() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = |n: u32| {
        config(&idp, &up)
            .rate_limit(limit("per-ip", "ip", n, "1h"))
            .route(limited("open", json!("none"), &["per-ip"]))
            .yaml()
    };
    let gw = spawn_gateway(&yaml(2)).await;
    let c = client();
    let status = || async {
        c.get(gw.url("/open/x"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        [status().await, status().await, status().await],
        [200, 200, 429]
    );
    std::fs::write(gw.config_path(), yaml(3)).unwrap();
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!([status().await, status().await], [200, 429]);
    gw.stop().await;
}

// `tollgate explain` lists the limits a request would be counted against and what is
// left of each, without counting: a Redis limit shows the shared count (and nothing is
// written to Redis); once a replica has used it up, explain shows the 429 it would get.
#[tokio::test]
async fn explain_lists_the_limits_without_counting() {
    let redis = RedisServer::start();
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = config(&idp, &up)
        .redis(&redis.url(), "2s")
        .rate_limit(limit("per-client", "client", 5, "1m"))
        .rate_limit(redis_limit("shared", "client", 2, "1h", "deny"))
        .route(limited(
            "api",
            json!({"issuers": ["corp"]}),
            &["per-client", "shared"],
        ))
        .yaml();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let token = idp.token(json!({}));
    let explain = || {
        let (cfg, token) = (cfg.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            let out = bin()
                .args(["explain", "--config"])
                .arg(&cfg)
                .args(["--token", &token, "/api/x"])
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
    };
    for _ in 0..2 {
        let (code, out) = explain().await.unwrap();
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("rate limit per-client: 5 per 60s (sliding) by client, store local, on_error allow: 5 of 5 left (counted by each replica alone; this run's counters start empty)"), "{out}");
        assert!(out.contains("rate limit shared: 2 per 3600s (sliding) by client, store redis, on_error deny: 2 of 2 left\n"), "{out}");
        assert!(out.contains("result: ALLOW"), "{out}");
        assert!(
            redis_keys(&redis).await.is_empty(),
            "explain wrote to Redis"
        );
    }
    let gw = spawn_gateway(&yaml).await;
    for _ in 0..2 {
        let r = client()
            .get(gw.url("/api/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (code, out) = explain().await.unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rate limit shared: 2 per 3600s (sliding) by client, store redis, on_error deny: exhausted, next request allowed in "), "{out}");
    assert!(
        out.contains(
            "result: DENY 429 rate_limited (reason rate_limited): rate limit \"shared\" exceeded"
        ),
        "{out}"
    );
    // Explain did not count: the replica's next request is the first refusal.
    let m = admin_metrics(&gw.admin_url("")).await;
    assert!(series_value(
        &m,
        "tollgate_rate_limited_total{route=\"api\",limit=\"shared\"}"
    )
    .is_none());
    gw.stop().await;
}

// `tollgate validate` reports what cannot work with file, line, column and key path.
// (Literal YAML: the line and column numbers are what this tests.)
#[test]
fn validate_locates_rate_limit_problems() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        "server:\n  listen: \"127.0.0.1:0\"\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:9\"\nrate_limits:\n  - name: per-client\n    key: client\n    limit: 100\n    per: 1m\n    store: redis\nroutes:\n  - name: open\n    path_prefix: /open\n    upstream: u\n    auth: none\n    rate_limits: [per-client, per-clien]\n",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let f = cfg.display();
    for want in [
        format!("{f}:11:12 rate_limits[0].store: store: redis needs stores.redis (the Redis URL the replicas share)"),
        format!("{f}:17:19 routes[0].rate_limits[0]: rate limit \"per-client\" counts by client, which a route with auth: none does not know (no token is checked there); use key: ip or header:NAME"),
        format!("{f}:17:31 routes[0].rate_limits[1]: unknown rate limit \"per-clien\" (did you mean \"per-client\"?)"),
    ] {
        assert!(text.lines().any(|l| l == want), "missing {want:?} in:\n{text}");
    }
}
