//! Upstream credentials: `basic` replaces the inbound Authorization, and
//! `oauth2_client_credentials` tokens are fetched (client_auth basic or body, form or
//! JSON), cached per upstream, refreshed before expiry, fetched once under concurrency,
//! dropped on an upstream 401 or a flush, backed off on failure, counted and redacted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::{client_credentials, merge, GatewayConfig};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The client secret used by the oauth2 upstreams: reserved characters on purpose.
const SECRET: &str = "p@ss:w/rd";
/// A client id with a space, which RFC 6749 §2.3.1 form-encodes as `+`.
const CLIENT_ID: &str = "gw client";

/// An `oauth2_client_credentials` block with [`CLIENT_ID`], [`SECRET`] and scope
/// analytics.read, `extra` keys merged in.
fn oauth(token_url: &str, extra: Value) -> Value {
    let mut v = json!({
        "type": "oauth2_client_credentials",
        "token_url": token_url,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "scope": "analytics.read",
    });
    merge(&mut v, extra);
    v
}

/// A gateway with one oauth2 upstream `name` (extra keys of its `auth` block in
/// `auth_extra`) behind route `/api` with `auth: none`.
fn oauth_yaml(up: &Upstream, name: &str, token_url: &str, auth_extra: Value) -> String {
    GatewayConfig::new()
        .upstream_with(
            name,
            &up.url(),
            json!({"auth": oauth(token_url, auth_extra)}),
        )
        .open_route("api", "/api", name)
        .yaml()
}

pub(crate) fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

fn form_fields(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], k: &str) -> Option<&'a str> {
    let mut it = fields.iter().filter(|(n, _)| n == k);
    let v = it.next().map(|(_, v)| v.as_str());
    assert!(it.next().is_none(), "field {k} sent more than once");
    v
}

fn token_requests(idp: &Idp) -> Vec<TokenRequest> {
    idp.token_requests.lock().unwrap().clone()
}

async fn metrics_text(gw: &Gw) -> String {
    let r = client().get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn flush(gw: &Gw) -> serde_json::Value {
    let r = client()
        .post(gw.admin_url("/admin/caches/flush"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    json_of(r).await
}

/// A token endpoint that answers after `delay`, counting hits:
/// `{"access_token": "slow-token-N", ...}`.
async fn spawn_slow_token_endpoint(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = serve(move |_req| {
        let h = h.clone();
        async move {
            let n = h.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(delay).await;
            json_resp(
                200,
                json!({"access_token": format!("slow-token-{n}"), "token_type": "Bearer", "expires_in": 3600}),
            )
        }
    })
    .await;
    (addr, hits)
}

// ---------------------------------------------------------------------------
// Upstream credentials: basic
// ---------------------------------------------------------------------------

// Behaviour: `auth: {type: basic}` sends `Authorization: Basic base64(user:pass)` (RFC 7617,
// not form-encoded) upstream and replaces the inbound Authorization; an upstream without
// `auth` gets the inbound Authorization passed on.
#[tokio::test]
async fn basic_upstream_auth_replaces_inbound_authorization() {
    let up = spawn_upstream().await;
    let plain = spawn_upstream().await;
    let yaml = GatewayConfig::public_only()
        .upstream_with(
            "reports",
            &up.url(),
            json!({"auth": {"type": "basic", "username": "report-user", "password": "pa:ss w/rd"}}),
        )
        .upstream("plain", &plain.url())
        .open_route("reports", "/reports", "reports")
        .open_route("plain", "/plain", "plain")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let expected = format!("Basic {}", STANDARD.encode("report-user:pa:ss w/rd"));

    // Without an inbound Authorization.
    let r = client().get(gw.url("/reports/q")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header("authorization"), Some(expected.as_str()));

    // With one: replaced, never passed on, and only one Authorization goes upstream.
    let r = client()
        .get(gw.url("/reports/q"))
        .header("authorization", "Bearer inbound-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(
        seen.headers.get("authorization"),
        Some(&vec![expected.clone()])
    );
    assert!(!format!("{:?}", seen.headers).contains("inbound-token-xyz"));
    assert_eq!(up.count(), 2);

    // Contrast: no upstream `auth` -> the inbound Authorization is passed on.
    let r = client()
        .get(gw.url("/plain/q"))
        .header("authorization", "Bearer inbound-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        plain.last().header("authorization"),
        Some("Bearer inbound-token-xyz")
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Upstream credentials: oauth2 client_credentials
// ---------------------------------------------------------------------------

// Behaviour: on a route that verifies the caller's JWT, the upstream gets the token
// tollgate fetched (`Bearer upstream-token-N`), never the caller's; the token is cached.
#[tokio::test]
async fn oauth2_token_replaces_inbound_bearer() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let mut auth = client_credentials(&idp, "gw", SECRET);
    auth["scope"] = json!("analytics.read");
    let yaml = GatewayConfig::public_only()
        .issuer(&idp, "corp")
        .upstream_with("bi", &up.url(), json!({"auth": auth}))
        .route(json!({
            "name": "api", "path_prefix": "/api", "upstream": "bi",
            "auth": {"issuers": ["corp"], "scopes": ["analytics.read"]},
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let inbound = idp.token(json!({}));
    for i in 0..3 {
        let r = client()
            .get(gw.url("/api/data"))
            .bearer_auth(&inbound)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let seen = up.last();
        assert_eq!(
            seen.headers.get("authorization"),
            Some(&vec!["Bearer upstream-token-1".to_owned()]),
            "request {i}"
        );
        assert!(
            !format!("{:?}", seen.headers).contains(&inbound),
            "the caller's token reached the upstream"
        );
        // The verified identity still goes along.
        assert_eq!(seen.header("x-auth-client-id"), Some("sap-cx-dashboard"));
    }
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 1, "token is cached");
    gw.stop().await;
}

// Behaviour: `client_auth: basic` (the default) authenticates with
// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1) and a form body with
// grant_type and scope only; the upstream's inbound Authorization is replaced.
#[tokio::test]
async fn oauth2_client_auth_basic_form() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&oauth_yaml(
        &up,
        "bi",
        &idp.url("/token"),
        json!({"client_auth": "basic"}),
    ))
    .await;
    let r = client()
        .get(gw.url("/api/x"))
        .header("authorization", "Basic aW5ib3VuZDpzZWNyZXQ=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().headers.get("authorization"),
        Some(&vec!["Bearer upstream-token-1".to_owned()])
    );

    let reqs = token_requests(&idp);
    assert_eq!(reqs.len(), 1);
    let (auth, ctype, body) = &reqs[0];
    let expected = format!("Basic {}", STANDARD.encode("gw+client:p%40ss%3Aw%2Frd"));
    assert_eq!(auth.as_deref(), Some(expected.as_str()));
    assert_eq!(ctype.as_deref(), Some("application/x-www-form-urlencoded"));
    let f = form_fields(body);
    assert_eq!(field(&f, "grant_type"), Some("client_credentials"));
    assert_eq!(field(&f, "scope"), Some("analytics.read"));
    assert_eq!(field(&f, "client_id"), None);
    assert_eq!(field(&f, "client_secret"), None);
    assert!(!body.contains("p@ss") && !body.contains("p%40ss"));
    gw.stop().await;
}

// Behaviour: `client_auth: body` sends client_id/client_secret as form fields and no
// Authorization header at all.
#[tokio::test]
async fn oauth2_client_auth_body_form() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&oauth_yaml(
        &up,
        "bi",
        &idp.url("/token"),
        json!({"client_auth": "body"}),
    ))
    .await;
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-1")
    );
    let reqs = token_requests(&idp);
    assert_eq!(reqs.len(), 1);
    let (auth, ctype, body) = &reqs[0];
    assert_eq!(auth, &None, "client_auth: body must not send Authorization");
    assert_eq!(ctype.as_deref(), Some("application/x-www-form-urlencoded"));
    let f = form_fields(body);
    assert_eq!(field(&f, "grant_type"), Some("client_credentials"));
    assert_eq!(field(&f, "scope"), Some("analytics.read"));
    assert_eq!(field(&f, "client_id"), Some(CLIENT_ID));
    assert_eq!(field(&f, "client_secret"), Some(SECRET));
    gw.stop().await;
}

// Behaviour: `request_format: json` sends a JSON object with grant_type, scope and the
// `extra_params`; with `client_auth: body` the credentials are JSON fields too.
#[tokio::test]
async fn oauth2_json_request_format_with_extra_params() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let tok = idp.url("/token");
    let yaml = GatewayConfig::public_only()
        .upstream_with(
            "learning",
            &up.url(),
            json!({"auth": oauth(&tok, json!({
                "request_format": "json",
                "extra_params": {"resource_type": "learning_public_api", "tenant": "acme"},
            }))}),
        )
        .upstream_with(
            "learning-body",
            &up.url(),
            json!({"auth": {
                "type": "oauth2_client_credentials",
                "token_url": tok,
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
                "client_auth": "body",
                "request_format": "json",
                "extra_params": {"resource_type": "learning_public_api"},
            }}),
        )
        .open_route("basic-json", "/a", "learning")
        .open_route("body-json", "/b", "learning-body")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let r = client().get(gw.url("/a/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-1")
    );
    let r = client().get(gw.url("/b/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-2")
    );

    let reqs = token_requests(&idp);
    assert_eq!(reqs.len(), 2);

    let (auth, ctype, body) = &reqs[0];
    let expected = format!("Basic {}", STANDARD.encode("gw+client:p%40ss%3Aw%2Frd"));
    assert_eq!(auth.as_deref(), Some(expected.as_str()));
    assert_eq!(ctype.as_deref(), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(body).expect("token request body is JSON");
    assert_eq!(
        v,
        json!({
            "grant_type": "client_credentials",
            "scope": "analytics.read",
            "resource_type": "learning_public_api",
            "tenant": "acme",
        })
    );

    let (auth, ctype, body) = &reqs[1];
    assert_eq!(auth, &None);
    assert_eq!(ctype.as_deref(), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(body).expect("token request body is JSON");
    assert_eq!(
        v,
        json!({
            "grant_type": "client_credentials",
            "resource_type": "learning_public_api",
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
        })
    );
    gw.stop().await;
}

// Behaviour: two upstreams with the same token URL, client and scope do not share a
// cached token (cache keys include the upstream).
#[tokio::test]
async fn oauth2_tokens_are_not_shared_across_upstreams() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let mut auth = client_credentials(&idp, "gw", "s");
    auth["scope"] = json!("analytics.read");
    let yaml = GatewayConfig::public_only()
        .upstream_with("one", &up.url(), json!({"auth": auth}))
        .upstream_with("two", &up.url(), json!({"auth": auth}))
        .open_route("one", "/one", "one")
        .open_route("two", "/two", "two")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    for (path, token) in [
        ("/one/x", "Bearer upstream-token-1"),
        ("/two/x", "Bearer upstream-token-2"),
        ("/one/y", "Bearer upstream-token-1"),
        ("/two/y", "Bearer upstream-token-2"),
    ] {
        let r = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(up.last().header("authorization"), Some(token), "{path}");
    }
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

// Behaviour: 40 concurrent requests while the token endpoint is slow cause exactly one
// token fetch; every request waits for it and goes upstream with that token.
#[tokio::test]
async fn oauth2_single_flight_under_concurrency() {
    let up = spawn_upstream().await;
    let (addr, hits) = spawn_slow_token_endpoint(Duration::from_millis(300)).await;
    let gw = spawn_gateway(&oauth_yaml(
        &up,
        "bi",
        &format!("http://{addr}/token"),
        json!({}),
    ))
    .await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let url = gw.url(&format!("/api/req/{i}"));
        set.spawn(async move { client().get(url).send().await.unwrap().status() });
    }
    let mut n = 0;
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
        n += 1;
    }
    assert_eq!(n, 40);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "exactly one token fetch");
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40);
    for s in &seen {
        assert_eq!(s.header("authorization"), Some("Bearer slow-token-1"));
    }
    gw.stop().await;
}

// Behaviour: a token is refreshed when less than min(60 s, half its lifetime) remains:
// with expires_in 8 s it is reused in its first 4 s, and replaced after that — while the
// old one would still be valid.
#[tokio::test]
async fn oauth2_refresh_before_expiry() {
    const LIFETIME: Duration = Duration::from_secs(8);
    let idp = spawn_idp().await;
    idp.token_expires_in
        .store(LIFETIME.as_secs(), Ordering::SeqCst);
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&oauth_yaml(&up, "bi", &idp.url("/token"), json!({}))).await;
    // The token is fetched (and its lifetime starts) between t0 and t1.
    let t0 = Instant::now();
    let r = client().get(gw.url("/api/1")).send().await.unwrap();
    let t1 = Instant::now();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-1")
    );
    let r = client().get(gw.url("/api/2")).send().await.unwrap();
    // Sent before the refresh point (at least t0 + 4 s): the token must be reused. A
    // machine too slow for that (3.5 s for two local requests) cannot judge the window.
    assert!(
        t0.elapsed() < LIFETIME / 2,
        "second request at {:?}: too slow to judge the refresh window",
        t0.elapsed()
    );
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-1"),
        "a token with an 8 s lifetime is reused in its first 4 s"
    );
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 1);

    // Past the refresh point (t1 + 4.5 s >= fetch + 4.5 s), well before the old token
    // expires (fetch + 8 s >= t0 + 8 s): refreshed.
    tokio::time::sleep((LIFETIME / 2 + Duration::from_millis(500)).saturating_sub(t1.elapsed()))
        .await;
    let r = client().get(gw.url("/api/3")).send().await.unwrap();
    let sent_by = t0.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        sent_by < LIFETIME,
        "third request at {sent_by:?}: the old token had expired, so this proves nothing"
    );
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-2"),
        "refreshed with {:?} of the old token's lifetime left",
        LIFETIME.saturating_sub(sent_by)
    );
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

// Behaviour: an absurd `expires_in` from the token endpoint (u64::MAX) does not crash the
// request; the token is used and cached.
#[tokio::test]
async fn oauth2_huge_expires_in_is_survived() {
    let idp = spawn_idp().await;
    idp.token_expires_in.store(u64::MAX, Ordering::SeqCst);
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&oauth_yaml(&up, "bi", &idp.url("/token"), json!({}))).await;
    for i in 0..2 {
        let r = client().get(gw.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            up.last().header("authorization"),
            Some("Bearer upstream-token-1")
        );
    }
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 1);
    gw.stop().await;
}

// Behaviour: `POST /admin/caches/flush` drops the cached upstream token (the next request
// fetches a new one), says what it dropped, and keeps JWKS; it does not exist on the
// public listener.
#[tokio::test]
async fn oauth2_flush_drops_cached_token() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&oauth_yaml(&up, "bi", &idp.url("/token"), json!({}))).await;
    for _ in 0..2 {
        let r = client().get(gw.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 1);

    // Not on the public listener.
    let r = client()
        .post(gw.url("/admin/caches/flush"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 1);

    let body = flush(&gw).await;
    assert_eq!(body["flushed"]["upstream_tokens"], 1, "{body}");
    assert!(
        body["flushed"]["introspection_results"].is_number(),
        "{body}"
    );
    assert!(body["flushed"]["verified_tokens"].is_number(), "{body}");
    assert!(
        body["kept"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "jwks")),
        "{body}"
    );
    assert!(!body.to_string().contains("upstream-token"));

    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-2")
    );

    // A second flush right away has the new token to drop, a third nothing.
    assert_eq!(flush(&gw).await["flushed"]["upstream_tokens"], 1);
    assert_eq!(flush(&gw).await["flushed"]["upstream_tokens"], 0);
    gw.stop().await;
}

// Behaviour: a 401 from the upstream drops the cached token, so the next request fetches
// a new one; other statuses (200, 403) keep it. The 401 itself is passed to the client.
#[tokio::test]
async fn oauth2_upstream_401_invalidates_token() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&oauth_yaml(&up, "bi", &idp.url("/token"), json!({}))).await;
    let r = client().get(gw.url("/api/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw.url("/api/status/403"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        idp.token_hits.load(Ordering::SeqCst),
        1,
        "403 keeps the token"
    );

    let r = client()
        .get(gw.url("/api/status/401"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-1")
    );
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 1);

    let r = client().get(gw.url("/api/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer upstream-token-2")
    );
    let r = client().get(gw.url("/api/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        idp.token_hits.load(Ordering::SeqCst),
        2,
        "200 keeps the token"
    );
    gw.stop().await;
}

// Behaviour: a failing token endpoint gives 502 `bad_gateway` naming the upstream, the
// request never reaches the upstream, the failure is backed off (a burst does not hammer
// the endpoint), and once the endpoint recovers the next fetch after the back-off works.
#[tokio::test]
async fn oauth2_token_failure_is_502_and_backed_off() {
    let idp = spawn_idp().await;
    idp.token_fail.store(true, Ordering::SeqCst);
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&oauth_yaml(
        &up,
        "bi-warehouse",
        &idp.url("/token"),
        json!({}),
    ))
    .await;

    let t0 = Instant::now();
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let rid = header(&r, "x-request-id").unwrap().to_owned();
    let body = json_of(r).await;
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(body["request_id"], rid.as_str());
    let desc = body["error_description"].as_str().unwrap();
    assert!(desc.contains("bi-warehouse"), "{desc}");
    assert!(!desc.contains(SECRET), "{desc}");
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), 1);

    // A burst of 30 concurrent requests.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let url = gw.url("/api/burst");
        set.spawn(async move { client().get(url).send().await.unwrap().status() });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 502);
    }
    let elapsed = t0.elapsed();
    let hits = idp.token_hits.load(Ordering::SeqCst);
    // The first fetch failed at once; each failure closes the endpoint for 0.5 s, then
    // 1 s, 2 s, 4 s, 5 s (capped): by `elapsed`, at most one more fetch per window that
    // has ended. Fast machines see 1 fetch; a busy one may cross a window or two.
    let mut allowed = 1;
    let mut window_ends = Duration::ZERO;
    for backoff_ms in [500, 1000, 2000, 4000].into_iter().chain([5000; 20]) {
        window_ends += Duration::from_millis(backoff_ms);
        if window_ends > elapsed {
            break;
        }
        allowed += 1;
    }
    assert!(
        hits <= allowed,
        "burst hammered the token endpoint: {hits} fetches in {elapsed:?} (at most {allowed})"
    );
    assert_eq!(
        up.count(),
        0,
        "nothing may reach the upstream without a token"
    );

    // Recovery: after the back-off, exactly one more fetch, which succeeds.
    idp.token_fail.store(false, Ordering::SeqCst);
    let hits_before = idp.token_hits.load(Ordering::SeqCst);
    eventually(
        "recovery after the token endpoint came back",
        PATIENCE,
        async || {
            let r = client().get(gw.url("/api/x")).send().await.unwrap();
            r.status().as_u16()
        },
        |s| {
            assert!(*s == 200 || *s == 502, "{s}");
            *s == 200
        },
    )
    .await;
    assert_eq!(idp.token_hits.load(Ordering::SeqCst), hits_before + 1);
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer upstream-token-{}", hits_before + 1).as_str())
    );
    gw.stop().await;
}

// Behaviour: `tollgate_upstream_token_fetches_total{upstream,result}` is exported from
// startup and counts successes and failures per upstream.
#[tokio::test]
async fn oauth2_fetch_metrics() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&oauth_yaml(&up, "bi", &idp.url("/token"), json!({}))).await;
    let ok = r#"tollgate_upstream_token_fetches_total{upstream="bi",result="success"}"#;
    let failed = r#"tollgate_upstream_token_fetches_total{upstream="bi",result="failure"}"#;

    let text = metrics_text(&gw).await;
    assert!(
        text.contains("# TYPE tollgate_upstream_token_fetches_total counter"),
        "{text}"
    );
    assert_eq!(series_value(&text, ok).unwrap_or(0.0), 0.0);

    for _ in 0..3 {
        let r = client().get(gw.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = metrics_text(&gw).await;
    assert_eq!(series_value(&text, ok), Some(1.0), "{text}");
    assert_eq!(series_value(&text, failed).unwrap_or(0.0), 0.0, "{text}");

    idp.token_fail.store(true, Ordering::SeqCst);
    flush(&gw).await;
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let text = metrics_text(&gw).await;
    assert_eq!(series_value(&text, ok), Some(1.0), "{text}");
    assert_eq!(series_value(&text, failed), Some(1.0), "{text}");
    assert!(!text.contains("upstream-token"), "a token in /metrics");
    gw.stop().await;
}

// Behaviour: `GET /admin/config` shows the config with every secret as `[redacted]`: the
// client secret (also when it comes from `${file:...}`), a basic password, and never the
// fetched upstream token.
#[tokio::test]
async fn admin_config_redacts_upstream_secrets() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("bi-secret");
    std::fs::write(&secret_file, "file-S3CRET-mark\n").unwrap();
    let mut auth = client_credentials(
        &idp,
        "gw-visible-id",
        &format!("${{file:{}}}", secret_file.display()),
    );
    auth["client_auth"] = json!("body");
    let yaml = GatewayConfig::new()
        .upstream_with("bi", &up.url(), json!({"auth": auth}))
        .upstream_with(
            "legacy",
            &up.url(),
            json!({"auth": {"type": "basic", "username": "legacy-user", "password": "basic-PASS-mark"}}),
        )
        .open_route("api", "/api", "bi")
        .open_route("legacy", "/legacy", "legacy")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(gw.url("/legacy/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The file's secret really is the one in use (one trailing newline removed).
    let (_, _, body) = token_requests(&idp).remove(0);
    assert_eq!(
        field(&form_fields(&body), "client_secret"),
        Some("file-S3CRET-mark")
    );

    let r = client()
        .get(gw.admin_url("/admin/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("gw-visible-id"),
        "not the running config: {text}"
    );
    assert!(text.contains("legacy-user"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    for leak in [
        "S3CRET",
        "PASS-mark",
        "upstream-token",
        &STANDARD.encode("legacy-user:basic-PASS-mark"),
    ] {
        assert!(!text.contains(leak), "{leak} in /admin/config: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ups = v["config"]["upstreams"].as_array().expect("upstreams");
    assert_eq!(ups[0]["auth"]["client_secret"], "[redacted]");
    assert_eq!(ups[1]["auth"]["password"], "[redacted]");

    for path in ["/admin/status", "/metrics"] {
        let text = client()
            .get(gw.admin_url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for leak in ["S3CRET", "PASS-mark", "upstream-token"] {
            assert!(!text.contains(leak), "{leak} in {path}");
        }
    }
    gw.stop().await;
}
