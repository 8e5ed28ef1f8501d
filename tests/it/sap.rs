//! SAP-grade upstreams — the X-CSRF-Token protocol with upstream session
//! cookies (`upstreams[].csrf`), `strip_cookies`, Cloud Foundry service keys, and
//! identity propagation (token exchange, JWT bearer).
//!
//! The fake SAP upstream enforces what an SAP Gateway / Cloud Integration endpoint
//! does: a modifying request needs the token fetched with `X-CSRF-Token: Fetch` *and*
//! the session cookie that fetch set (the token is bound to that session, the session
//! to the user who opened it); missing, stale or mismatched -> `403` with
//! `X-CSRF-Token: Required`. Sessions can be expired from the test (a server-side
//! session timeout).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::{load_error, merge, GatewayConfig};

struct SapSession {
    token: String,
    /// The `Authorization` that opened the session: a session belongs to one user.
    credential: String,
}

/// One request as the fake SAP saw it.
#[derive(Debug, Clone)]
pub struct SapSeen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub csrf: Option<String>,
    pub cookie: Option<String>,
    pub body: Bytes,
    pub status: u16,
    /// The SAP session the request was served in (when it had a valid one).
    pub session: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

#[derive(Clone, Default)]
pub struct FakeSap {
    pub addr: Option<std::net::SocketAddr>,
    sessions: Arc<Mutex<HashMap<String, SapSession>>>,
    next: Arc<AtomicU64>,
    pub seen: Arc<Mutex<Vec<SapSeen>>>,
    /// Requests whose session cookie belonged to another credential.
    pub mixed: Arc<AtomicUsize>,
    /// Answer every modifying request 403 Required (a token that never works).
    pub always_refuse: Arc<AtomicBool>,
    /// `Max-Age` of the session cookie (0: a browser-session cookie, no expiry).
    pub cookie_max_age: Arc<AtomicU64>,
    /// Credentials refused with 401.
    pub refuse_credential: Arc<Mutex<Option<String>>>,
}

impl FakeSap {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    /// The server-side session timeout: every session is gone.
    pub fn expire_sessions(&self) {
        self.sessions.lock().unwrap().clear();
    }

    pub fn seen(&self) -> Vec<SapSeen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn fetches(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.csrf.as_deref() == Some("Fetch"))
            .count()
    }

    pub fn modifying(&self) -> Vec<SapSeen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != "GET" && s.method != "HEAD")
            .collect()
    }
}

fn cookie_value(cookie: Option<&str>, name: &str) -> Option<String> {
    cookie?.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

fn sap_resp(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub async fn spawn_sap() -> FakeSap {
    let mut sap = FakeSap::default();
    let s = sap.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let s = s.clone();
        async move {
            let (parts, body) = req.into_parts();
            let header = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let authorization = header("authorization");
            let csrf = header("x-csrf-token");
            let cookie = header("cookie");
            // Like SAP's ICM, the whole request is read before it is answered.
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let method = parts.method.to_string();
            let mut seen = SapSeen {
                method: method.clone(),
                path: parts.uri.path().to_owned(),
                authorization: authorization.clone(),
                csrf: csrf.clone(),
                cookie: cookie.clone(),
                body: body.clone(),
                status: 0,
                session: None,
                traceparent: header("traceparent"),
                tracestate: header("tracestate"),
            };
            let record = |mut seen: SapSeen, resp: Response<Full<Bytes>>| {
                seen.status = resp.status().as_u16();
                s.seen.lock().unwrap().push(seen);
                resp
            };
            let Some(cred) = authorization else {
                return record(seen, sap_resp(401, r#"{"error":"no credentials"}"#));
            };
            if s.refuse_credential.lock().unwrap().as_deref() == Some(cred.as_str()) {
                let mut r = sap_resp(401, r#"{"error":"logon failed"}"#);
                r.headers_mut()
                    .insert("www-authenticate", "Basic realm=\"SAP\"".parse().unwrap());
                return record(seen, r);
            }
            // The session the cookie names, if it is alive and this user's.
            let sid = cookie_value(cookie.as_deref(), "SAP_SESSIONID");
            let session = {
                let sessions = s.sessions.lock().unwrap();
                match sid
                    .as_ref()
                    .and_then(|id| sessions.get(id).map(|x| (id, x)))
                {
                    Some((id, x)) if x.credential == cred => Some((id.clone(), x.token.clone())),
                    Some(_) => {
                        s.mixed.fetch_add(1, Ordering::SeqCst);
                        None
                    }
                    None => None,
                }
            };
            let required = || {
                let mut r = sap_resp(403, "CSRF token validation failed");
                r.headers_mut()
                    .insert("x-csrf-token", "Required".parse().unwrap());
                r
            };
            if method == "GET" || method == "HEAD" {
                if csrf
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case("fetch"))
                {
                    let (id, token, new) = match session {
                        Some((id, token)) => (id, token, false),
                        None => {
                            let n = s.next.fetch_add(1, Ordering::SeqCst) + 1;
                            let id = format!("sess-{n}");
                            let token = format!("tok-{n}==");
                            s.sessions.lock().unwrap().insert(
                                id.clone(),
                                SapSession {
                                    token: token.clone(),
                                    credential: cred.clone(),
                                },
                            );
                            (id, token, true)
                        }
                    };
                    seen.session = Some(id.clone());
                    let mut r = sap_resp(200, r#"{"d":{"EntitySets":["A_Items"]}}"#);
                    r.headers_mut()
                        .insert("x-csrf-token", token.parse().unwrap());
                    if new {
                        let age = s.cookie_max_age.load(Ordering::SeqCst);
                        let max_age = if age > 0 {
                            format!("; Max-Age={age}")
                        } else {
                            String::new()
                        };
                        r.headers_mut().append(
                            "set-cookie",
                            format!("SAP_SESSIONID={id}; path=/; HttpOnly{max_age}")
                                .parse()
                                .unwrap(),
                        );
                        r.headers_mut().append(
                            "set-cookie",
                            "sap-usercontext=sap-client=100; path=/".parse().unwrap(),
                        );
                    }
                    return record(seen, r);
                }
                seen.session = session.as_ref().map(|x| x.0.clone());
                return record(seen, sap_resp(200, r#"{"d":{"results":[]}}"#));
            }
            // A modifying request: token and session cookie, and they must belong together.
            let Some((id, token)) = session else {
                return record(seen, required());
            };
            if s.always_refuse.load(Ordering::SeqCst) || csrf.as_deref() != Some(token.as_str()) {
                return record(seen, required());
            }
            seen.session = Some(id.clone());
            let r = sap_resp(
                201,
                &json!({"session": id, "body_len": body.len()}).to_string(),
            );
            record(seen, r)
        }
    })
    .await;
    sap.addr = Some(addr);
    sap
}

/// The upstream credentials the SAP tests use unless a test says otherwise.
fn gw_basic() -> Option<Value> {
    Some(json!({"type": "basic", "username": "GW_USER", "password": "s3cret"}))
}

/// A gateway in front of `sap` as upstream `s4` with `auth` (none: the caller's
/// Authorization goes through), on route `/odata` (`auth: none`), with `csrf_extra`
/// merged into its `csrf:` block.
fn sap_yaml(sap: &FakeSap, auth: Option<Value>, csrf_extra: Value) -> String {
    let mut s4 = json!({"csrf": {"fetch_path": "/"}});
    if let Some(auth) = auth {
        s4["auth"] = auth;
    }
    merge(&mut s4["csrf"], csrf_extra);
    GatewayConfig::new()
        .upstream_with("s4", &format!("{}/sap/opu/odata/sap/API_X", sap.url()), s4)
        .open_route("odata", "/odata", "s4")
        .yaml()
}

fn basic(user: &str, pw: &str) -> String {
    tollgate::credentials::basic_header(user, pw)
        .to_str()
        .unwrap()
        .to_owned()
}

// Behaviour (SPEC "Upstream session protocols"): a POST to a CSRF-protected upstream
// succeeds on the first try: tollgate fetched the token (GET fetch_path, X-CSRF-Token:
// Fetch, the upstream credentials) and sent it with the session cookies; the token and
// the upstream's cookies never reach the client; a second POST reuses the session.
#[tokio::test]
async fn post_succeeds_on_the_first_try() {
    let sap = spawn_sap().await;
    let gw = spawn_gateway(&sap_yaml(&sap, gw_basic(), json!({}))).await;
    let r = client()
        .post(gw.url("/odata/A_Items"))
        .header("content-type", "application/json")
        .body(r#"{"Item":"1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
    assert!(
        r.headers().get("x-csrf-token").is_none(),
        "{:?}",
        r.headers()
    );
    let body = r.text().await.unwrap();
    assert!(body.contains("\"body_len\":12"), "{body}");
    let seen = sap.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let fetch = &seen[0];
    assert_eq!(fetch.method, "GET");
    assert_eq!(fetch.path, "/sap/opu/odata/sap/API_X/");
    assert_eq!(fetch.csrf.as_deref(), Some("Fetch"));
    assert_eq!(
        fetch.authorization.as_deref(),
        Some(basic("GW_USER", "s3cret").as_str())
    );
    let post = &seen[1];
    assert_eq!(post.path, "/sap/opu/odata/sap/API_X/odata/A_Items");
    assert_eq!(post.status, 201);
    assert_eq!(post.csrf.as_deref(), Some("tok-1=="));
    let cookie = post.cookie.clone().unwrap();
    assert!(cookie.contains("SAP_SESSIONID=sess-1"), "{cookie}");
    assert!(
        cookie.contains("sap-usercontext=sap-client=100"),
        "{cookie}"
    );

    // The session is kept: no second fetch.
    let r = client()
        .delete(gw.url("/odata/A_Items('1')"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(sap.fetches(), 1);
    // A GET goes without a fetch and without a token, but with the session's cookies.
    let r = client().get(gw.url("/odata/A_Items")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let get = sap.seen().last().cloned().unwrap();
    assert_eq!(get.csrf, None);
    assert_eq!(get.session.as_deref(), Some("sess-1"));
    assert_eq!(sap.fetches(), 1);
    let metrics = admin_metrics(&format!("http://{}", gw.admin.unwrap())).await;
    assert_eq!(
        series_value(
            &metrics,
            "tollgate_upstream_csrf_fetches_total{upstream=\"s4\",result=\"success\"}"
        ),
        Some(1.0)
    );
    gw.stop().await;
}

// Behaviour: after the upstream session expired, a POST still succeeds, with exactly
// one replay: the stale token gets 403 Required, tollgate fetches a new one (in a new
// session) and sends the same body once more.
#[tokio::test]
async fn after_the_session_expires_exactly_one_replay() {
    let sap = spawn_sap().await;
    let gw = spawn_gateway(&sap_yaml(&sap, gw_basic(), json!({}))).await;
    let c = client();
    let r = c
        .post(gw.url("/odata/A_Items"))
        .body("first")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    sap.expire_sessions();
    let body = "x".repeat(5000);
    let r = c
        .post(gw.url("/odata/A_Items"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.headers().get("x-csrf-token").is_none());
    let m = sap.modifying();
    assert_eq!(m.len(), 3, "{m:#?}");
    assert_eq!(m[1].status, 403);
    assert_eq!(m[2].status, 201);
    assert_eq!(m[2].body, Bytes::from(body));
    assert_eq!(m[2].csrf.as_deref(), Some("tok-2=="));
    assert!(m[2]
        .cookie
        .as_deref()
        .unwrap()
        .contains("SAP_SESSIONID=sess-2"));
    // The stale session's cookie is not sent along with the new one.
    assert!(!m[2].cookie.as_deref().unwrap().contains("sess-1"));
    assert_eq!(sap.fetches(), 2);
    let metrics = admin_metrics(&format!("http://{}", gw.admin.unwrap())).await;
    assert_eq!(
        series_value(
            &metrics,
            "tollgate_upstream_csrf_replays_total{upstream=\"s4\"}"
        ),
        Some(1.0)
    );

    // A token the upstream never accepts: one replay, then its 403 is passed on.
    sap.always_refuse.store(true, Ordering::SeqCst);
    let before = sap.modifying().len();
    let r = c
        .post(gw.url("/odata/A_Items"))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-csrf-token").is_none());
    assert_eq!(sap.modifying().len(), before + 2);
    gw.stop().await;
}

// Behaviour: a streamed body larger than what is kept for a replay is not replayed:
// the upstream's 403 is passed on (without its X-CSRF-Token), and the upstream saw the
// request once.
#[tokio::test]
async fn a_large_streamed_body_is_not_replayed() {
    let sap = spawn_sap().await;
    let gw = spawn_gateway(&sap_yaml(
        &sap,
        gw_basic(),
        json!({"replay_max_bytes": 1024}),
    ))
    .await;
    let c = client();
    assert_eq!(
        c.post(gw.url("/odata/A_Items"))
            .body("a")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    sap.expire_sessions();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|_| Ok(vec![b'z'; 1024])).collect();
    let r = c
        .post(gw.url("/odata/A_Items"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-csrf-token").is_none());
    let m = sap.modifying();
    assert_eq!(m.len(), 2, "{m:#?}");
    assert_eq!(m[1].body.len(), 64 * 1024);
    // The session was dropped: the next request starts a fresh one and succeeds.
    let r = c
        .post(gw.url("/odata/A_Items"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(sap.fetches(), 2);
    assert_eq!(sap.modifying().len(), 3);
    gw.stop().await;
}

// Behaviour: two credentials never share a session: each caller's Authorization (passed
// on to an upstream without `auth`) gets its own fetch, token and cookies, also when
// their requests interleave and run at once.
#[tokio::test]
async fn two_credentials_never_share_a_session() {
    let sap = spawn_sap().await;
    let gw = spawn_gateway(&sap_yaml(&sap, None, json!({}))).await;
    let c = client();
    let (alice, bob) = (basic("alice", "a"), basic("bob", "b"));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (c, url) = (c.clone(), gw.url("/odata/A_Items"));
        let who = if i % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .header("authorization", who)
                .body(format!("{i}"))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    assert_eq!(sap.mixed.load(Ordering::SeqCst), 0);
    // One fetch per credential: the fetch is single-flight per session.
    assert_eq!(sap.fetches(), 2, "{:#?}", sap.seen());
    let mut by_cred: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for s in sap.modifying() {
        assert_eq!(s.status, 201);
        by_cred
            .entry(s.authorization.clone().unwrap())
            .or_default()
            .insert(s.session.clone().unwrap());
    }
    assert_eq!(by_cred.len(), 2);
    assert_eq!(by_cred[&alice].len(), 1);
    assert_eq!(by_cred[&bob].len(), 1);
    assert!(by_cred[&alice].is_disjoint(&by_cred[&bob]));
    gw.stop().await;
}

// Behaviour: a client's own X-CSRF-Token and cookies are not passed on to a csrf
// upstream (the request goes with tollgate's session), on modifying and safe requests.
#[tokio::test]
async fn client_token_and_cookies_are_dropped() {
    let sap = spawn_sap().await;
    let gw = spawn_gateway(&sap_yaml(&sap, gw_basic(), json!({}))).await;
    let c = client();
    // Before tollgate has a session (nothing of its own to send) ...
    let r = c
        .get(gw.url("/odata/A_Items"))
        .header("cookie", "SAP_SESSIONID=stolen; theme=dark")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sap.seen()[0].cookie, None);
    // ... and with one.
    let r = c
        .post(gw.url("/odata/A_Items"))
        .header("x-csrf-token", "forged-by-client")
        .header("cookie", "SAP_SESSIONID=stolen; theme=dark")
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(gw.url("/odata/A_Items"))
        .header("x-csrf-token", "Fetch")
        .header("cookie", "SAP_SESSIONID=stolen")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The client's "Fetch" did not make the upstream hand it a token.
    assert!(r.headers().get("x-csrf-token").is_none());
    for s in sap.seen() {
        assert_ne!(s.csrf.as_deref(), Some("forged-by-client"));
        let cookie = s.cookie.unwrap_or_default();
        assert!(
            !cookie.contains("stolen") && !cookie.contains("theme"),
            "{cookie}"
        );
    }
    assert_eq!(sap.fetches(), 1, "only tollgate's own fetch");
    gw.stop().await;
}

// Behaviour: a session cookie with Max-Age is honoured: once it has expired, tollgate
// fetches a new token before sending (no 403 round trip).
#[tokio::test]
async fn an_expired_session_cookie_means_a_new_fetch_first() {
    let sap = spawn_sap().await;
    sap.cookie_max_age.store(1, Ordering::SeqCst);
    let gw = spawn_gateway(&sap_yaml(&sap, gw_basic(), json!({}))).await;
    let c = client();
    assert_eq!(
        c.post(gw.url("/odata/A_Items"))
            .body("1")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    // Max-Age=1 is a time span: it has to pass.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        c.post(gw.url("/odata/A_Items"))
            .body("2")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(sap.fetches(), 2);
    assert!(
        sap.modifying().iter().all(|s| s.status == 201),
        "{:#?}",
        sap.modifying()
    );
    gw.stop().await;
}

// Behaviour: the upstream refusing the credentials of the token fetch (401) is passed
// on to the client as the upstream's 401, not turned into a 502.
#[tokio::test]
async fn refused_credentials_on_the_fetch_are_passed_on() {
    let sap = spawn_sap().await;
    *sap.refuse_credential.lock().unwrap() = Some(basic("GW_USER", "s3cret"));
    let gw = spawn_gateway(&sap_yaml(&sap, gw_basic(), json!({}))).await;
    let r = client()
        .post(gw.url("/odata/A_Items"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers().get("www-authenticate").unwrap(),
        "Basic realm=\"SAP\""
    );
    assert!(sap.modifying().is_empty());
    gw.stop().await;
}

// Behaviour: POST /admin/caches/flush drops the upstream sessions: the next POST
// fetches a new token.
#[tokio::test]
async fn flushing_caches_drops_upstream_sessions() {
    let sap = spawn_sap().await;
    let gw = spawn_gateway(&sap_yaml(&sap, gw_basic(), json!({}))).await;
    let c = client();
    assert_eq!(
        c.post(gw.url("/odata/x"))
            .body("1")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let r = c
        .post(gw.admin_url("/admin/caches/flush"))
        .send()
        .await
        .unwrap();
    let v = json_of(r).await;
    assert_eq!(v["flushed"]["upstream_sessions"], 1, "{v}");
    assert_eq!(
        c.post(gw.url("/odata/x"))
            .body("2")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(sap.fetches(), 2);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------
// A token endpoint for identity propagation: RFC 8693 (token exchange) and RFC 7523
// (JWT bearer), plus client credentials. It authenticates its client (Basic or body),
// verifies the subject token / assertion against the test IdP's key (signature, iss,
// exp), and issues a token naming the subject.

/// One token request as the endpoint read it.
#[derive(Debug, Clone)]
pub struct StsRequest {
    pub client_id: String,
    pub fields: HashMap<String, String>,
}

#[derive(Clone)]
pub struct Sts {
    pub addr: std::net::SocketAddr,
    pub requests: Arc<Mutex<Vec<StsRequest>>>,
    /// `expires_in` of issued tokens.
    pub expires_in: Arc<AtomicU64>,
}

impl Sts {
    pub fn url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }
    pub fn requests(&self) -> Vec<StsRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// Clients the endpoint knows: (id, secret).
const STS_CLIENTS: [(&str, &str); 3] = [
    ("gw-exchanger", "ex-s3cret"),
    ("sb-s4-principal!t7", "xsuaa-s3cret"),
    ("sb-rotated!t7", "rotated-s3cret"),
];

fn verify_subject(idp_issuer: &str, jwk: &serde_json::Value, token: &str) -> Option<String> {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).ok()?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()?;
    let header = jsonwebtoken::decode_header(token).ok()?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_issuer(&[idp_issuer]);
    v.validate_aud = false;
    v.leeway = 60;
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).ok()?;
    data.claims["sub"].as_str().map(str::to_owned)
}

pub async fn spawn_sts(idp: &Idp) -> Sts {
    let requests: Arc<Mutex<Vec<StsRequest>>> = Arc::default();
    let expires_in = Arc::new(AtomicU64::new(3600));
    let issued = Arc::new(AtomicU64::new(0));
    let (iss, jwk) = (idp.issuer.clone(), idp.key(0).jwk.clone());
    let (reqs, exp) = (requests.clone(), expires_in.clone());
    let addr = serve(move |req: Request<Incoming>| {
        let (reqs, exp, issued, iss, jwk) = (
            reqs.clone(),
            exp.clone(),
            issued.clone(),
            iss.clone(),
            jwk.clone(),
        );
        async move {
            let basic = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .map(str::to_owned);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let fields: HashMap<String, String> = form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            use base64::Engine;
            let (id, secret) = match basic {
                Some(b) => {
                    let raw = base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default();
                    let raw = String::from_utf8(raw).unwrap_or_default();
                    let (i, s) = raw.split_once(':').unwrap_or(("", ""));
                    let dec = |x: &str| form_urlencoded::parse(format!("a={x}").as_bytes()).next().unwrap().1.into_owned();
                    (dec(i), dec(s))
                }
                None => (
                    fields.get("client_id").cloned().unwrap_or_default(),
                    fields.get("client_secret").cloned().unwrap_or_default(),
                ),
            };
            reqs.lock().unwrap().push(StsRequest {
                client_id: id.clone(),
                fields: fields.clone(),
            });
            if !STS_CLIENTS.contains(&(id.as_str(), secret.as_str())) {
                return json_resp(401, json!({"error": "invalid_client"}));
            }
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            let expires_in = exp.load(Ordering::SeqCst);
            let grant = fields.get("grant_type").map(String::as_str).unwrap_or("");
            let invalid_grant = || json_resp(400, json!({"error": "invalid_grant"}));
            match grant {
                "client_credentials" => json_resp(
                    200,
                    json!({"access_token": format!("cc:{id}:{n}"), "token_type": "bearer", "expires_in": expires_in}),
                ),
                "urn:ietf:params:oauth:grant-type:token-exchange" => {
                    let (Some(subject), Some(tt)) =
                        (fields.get("subject_token"), fields.get("subject_token_type"))
                    else {
                        return json_resp(400, json!({"error": "invalid_request"}));
                    };
                    if tt != "urn:ietf:params:oauth:token-type:access_token" {
                        return json_resp(400, json!({"error": "invalid_request"}));
                    }
                    let Some(sub) = verify_subject(&iss, &jwk, subject) else {
                        return invalid_grant();
                    };
                    let requested = fields
                        .get("requested_token_type")
                        .cloned()
                        .unwrap_or("urn:ietf:params:oauth:token-type:access_token".into());
                    json_resp(
                        200,
                        json!({
                            "access_token": format!("exchanged:{sub}:{n}"),
                            "issued_token_type": requested,
                            "token_type": if requested.ends_with(":jwt") { "N_A" } else { "Bearer" },
                            "expires_in": expires_in,
                        }),
                    )
                }
                "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                    let Some(sub) = fields
                        .get("assertion")
                        .and_then(|a| verify_subject(&iss, &jwk, a))
                    else {
                        return invalid_grant();
                    };
                    json_resp(
                        200,
                        json!({"access_token": format!("principal:{sub}:{n}"), "token_type": "bearer", "expires_in": expires_in}),
                    )
                }
                _ => json_resp(400, json!({"error": "unsupported_grant_type"})),
            }
        }
    })
    .await;
    Sts {
        addr,
        requests,
        expires_in,
    }
}

/// A gateway with issuer `corp` (the test IdP), a Bearer route `/api` to `backend`
/// whose `auth:` block is `upstream_auth`, and `more` keys merged into the upstream.
fn propagation_yaml(idp: &Idp, backend_url: &str, upstream_auth: Value, more: Value) -> String {
    let mut backend = json!({"auth": upstream_auth});
    merge(&mut backend, more);
    GatewayConfig::new()
        .issuer(idp, "corp")
        .upstream_with("backend", backend_url, backend)
        .route(json!({
            "name": "api", "path_prefix": "/api", "upstream": "backend",
            "auth": {"issuers": ["corp"]},
        }))
        .yaml()
}

// Behaviour: with `token_exchange`, the caller's verified token is exchanged (RFC 8693)
// at the upstream's token endpoint, and the backend receives the exchanged token for
// that caller; exchanged tokens are cached per subject token: the same caller token is
// exchanged once, another caller's token (or another token of the same caller) again.
#[tokio::test]
async fn caller_identity_reaches_the_backend_as_an_exchanged_token() {
    let idp = spawn_idp().await;
    let sts = spawn_sts(&idp).await;
    let backend = spawn_upstream().await;
    let auth = json!({
        "type": "token_exchange",
        "token_url": sts.url(),
        "client_id": "gw-exchanger",
        "client_secret": "ex-s3cret",
        "audience": "https://backend.company.com",
        "resource": "https://backend.company.com/api",
        "scope": "backend.read",
    });
    let gw = spawn_gateway(&propagation_yaml(&idp, &backend.url(), auth, json!({}))).await;
    let c = client();
    let alice = idp.token(json!({"sub": "alice"}));
    let bob = idp.token(json!({"sub": "bob"}));
    for _ in 0..3 {
        let r = c
            .get(gw.url("/api/orders"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            backend.last().header("authorization"),
            Some("Bearer exchanged:alice:1")
        );
    }
    let r = c
        .get(gw.url("/api/orders"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        backend.last().header("authorization"),
        Some("Bearer exchanged:bob:2")
    );
    // The caller's identity headers still go along.
    assert_eq!(backend.last().header("x-auth-subject"), Some("bob"));
    let reqs = sts.requests();
    assert_eq!(reqs.len(), 2, "one exchange per subject token: {reqs:#?}");
    let f = &reqs[0].fields;
    assert_eq!(reqs[0].client_id, "gw-exchanger");
    assert_eq!(
        f["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(f["subject_token"], alice);
    assert_eq!(
        f["subject_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(f["audience"], "https://backend.company.com");
    assert_eq!(f["resource"], "https://backend.company.com/api");
    assert_eq!(f["scope"], "backend.read");
    assert!(
        !f.contains_key("client_secret"),
        "client_secret_basic by default"
    );
    // A second token of the same user is a different subject token.
    let alice2 = idp.token(json!({"sub": "alice", "jti": "second"}));
    let r = c
        .get(gw.url("/api/orders"))
        .bearer_auth(&alice2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sts.requests().len(), 3);
    let metrics = admin_metrics(&format!("http://{}", gw.admin.unwrap())).await;
    assert_eq!(
        series_value(
            &metrics,
            "tollgate_upstream_token_fetches_total{upstream=\"backend\",result=\"success\"}"
        ),
        Some(3.0)
    );
    // POST /admin/caches/flush drops exchanged tokens too.
    c.post(gw.admin_url("/admin/caches/flush"))
        .send()
        .await
        .unwrap();
    let r = c
        .get(gw.url("/api/orders"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sts.requests().len(), 4);
    gw.stop().await;
}

// Behaviour: an exchanged token is never cached beyond the subject token's own expiry,
// even when the issued token lives longer.
#[tokio::test]
async fn an_exchanged_token_does_not_outlive_the_subject_token() {
    let idp = spawn_idp().await;
    let sts = spawn_sts(&idp).await;
    // The issued token would live two hours.
    sts.expires_in.store(7200, Ordering::SeqCst);
    let backend = spawn_upstream().await;
    let auth = json!({
        "type": "token_exchange",
        "token_url": sts.url(),
        "client_id": "gw-exchanger",
        "client_secret": "ex-s3cret",
        "client_auth": "body",
        "requested_token_type": "jwt",
    });
    let gw = spawn_gateway(&propagation_yaml(&idp, &backend.url(), auth, json!({}))).await;
    let c = client();
    // Expires in 2 s (the issuer's 30 s leeway still lets the gate accept it after).
    let short = idp.token(json!({"sub": "carol", "exp": now() + 2}));
    let r = c
        .get(gw.url("/api/x"))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        backend.last().header("authorization"),
        Some("Bearer exchanged:carol:1")
    );
    let r = c
        .get(gw.url("/api/x"))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sts.requests().len(), 1);
    let f = &sts.requests()[0].fields;
    assert_eq!(
        f["requested_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(f["client_id"], "gw-exchanger");
    // The subject token's exp is a point in time: it has to pass.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = c
        .get(gw.url("/api/x"))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        sts.requests().len(),
        2,
        "the cached exchange ended with the subject token"
    );
    gw.stop().await;
}

// Behaviour: SAP principal propagation: `jwt_bearer` (RFC 7523) with the caller's token
// as assertion, the client from an XSUAA service key; together with `csrf`, each user
// gets their own SAP session (the session belongs to the propagated principal).
#[tokio::test]
async fn principal_propagation_with_jwt_bearer_and_csrf() {
    let idp = spawn_idp().await;
    let sts = spawn_sts(&idp).await;
    let sap = spawn_sap().await;
    let key = json!({
        "clientid": "sb-s4-principal!t7",
        "clientsecret": "xsuaa-s3cret",
        "url": format!("http://{}", sts.addr),
        "uaadomain": "authentication.eu10.hana.ondemand.com",
    });
    std::env::set_var("TOLLGATE_TEST_XSUAA_KEY", key.to_string());
    let auth = json!({"type": "jwt_bearer", "service_key": "${env:TOLLGATE_TEST_XSUAA_KEY}"});
    let yaml = propagation_yaml(
        &idp,
        &sap.url(),
        auth,
        json!({"csrf": {"fetch_path": "/sap/opu/odata/sap/API_X/"}}),
    );
    let gw = spawn_gateway(&yaml).await;
    let c = client();
    let tokens = [
        ("alice", idp.token(json!({"sub": "alice"}))),
        ("bob", idp.token(json!({"sub": "bob"}))),
        ("alice", idp.token(json!({"sub": "alice"}))),
        ("alice", idp.token(json!({"sub": "alice", "jti": "2nd"}))),
    ];
    for (user, t) in &tokens {
        let r = c
            .post(gw.url("/api/A_Items"))
            .bearer_auth(t)
            .body(format!("{{\"by\":\"{user}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let reqs = sts.requests();
    assert!(reqs.iter().all(|r| r.fields["grant_type"]
        == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        && r.client_id == "sb-s4-principal!t7"));
    // One assertion per caller token: alice's same token again is served from the cache,
    // her second token is another assertion.
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    assert_eq!(sap.mixed.load(Ordering::SeqCst), 0);
    let m = sap.modifying();
    assert_eq!(m.len(), 4, "no 403 round trips: {m:#?}");
    assert!(m[0]
        .authorization
        .as_deref()
        .unwrap()
        .starts_with("Bearer principal:alice:"));
    assert!(m[1]
        .authorization
        .as_deref()
        .unwrap()
        .starts_with("Bearer principal:bob:"));
    assert_eq!(
        m[2].session, m[0].session,
        "the same credential keeps its session"
    );
    // Three credentials, three SAP sessions.
    assert_eq!(sap.fetches(), 3);
    let sessions: std::collections::HashSet<_> = m.iter().map(|s| s.session.clone()).collect();
    assert_eq!(sessions.len(), 3);
    gw.stop().await;
}

// Behaviour: a service key file is all the upstream credentials config needs; the key
// is redacted in /admin/config; a changed key file is picked up by the reload.
#[tokio::test]
async fn a_service_key_file_is_all_the_credentials_config_needs() {
    let idp = spawn_idp().await;
    let sts = spawn_sts(&idp).await;
    let backend = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("s4-service-key.json");
    let write_key = |id: &str, secret: &str| {
        // The shape of a real XSUAA service key (pretty-printed, trailing newline).
        let key = json!({
            "apiurl": "https://api.authentication.eu10.hana.ondemand.com",
            "clientid": id,
            "clientsecret": secret,
            "credential-type": "binding-secret",
            "identityzone": "sub",
            "tenantmode": "dedicated",
            "uaadomain": "authentication.eu10.hana.ondemand.com",
            "url": format!("http://{}", sts.addr),
            "xsappname": "s4-odata!t7",
        });
        let tmp = key_path.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!("{}\n", serde_json::to_string_pretty(&key).unwrap()),
        )
        .unwrap();
        std::fs::rename(&tmp, &key_path).unwrap();
    };
    write_key("sb-s4-principal!t7", "xsuaa-s3cret");
    let yaml = GatewayConfig::new()
        .upstream_with(
            "s4",
            &backend.url(),
            json!({"auth": {
                "type": "oauth2_client_credentials",
                "service_key": format!("${{file:{}}}", key_path.display()),
            }}),
        )
        .open_route("odata", "/odata", "s4")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let c = client();
    let r = c.get(gw.url("/odata/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        backend.last().header("authorization"),
        Some("Bearer cc:sb-s4-principal!t7:1")
    );
    assert_eq!(sts.requests()[0].fields["grant_type"], "client_credentials");
    let cfg = c
        .get(gw.admin_url("/admin/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(cfg.contains("\"service_key\":\"[redacted]\""), "{cfg}");
    assert!(
        !cfg.contains("xsuaa-s3cret") && !cfg.contains("sb-s4-principal"),
        "{cfg}"
    );

    // Rotate the key: the file change reloads the config, and the new client is used.
    write_key("sb-rotated!t7", "rotated-s3cret");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.get(gw.url("/odata/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        if backend
            .last()
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer cc:sb-rotated!t7:"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated service key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.stop().await;
}

// Behaviour: validation names the service key's missing field (never a value), refuses
// service_key together with token_url/client_id/client_secret, and refuses a route with
// `auth: none` in front of an upstream that passes on the caller's identity.
#[tokio::test]
async fn validation_of_service_keys_and_identity_propagation() {
    std::env::set_var(
        "TOLLGATE_TEST_BAD_KEY",
        r#"{"clientid":"sb-x","url":"https://sub.authentication.eu10.hana.ondemand.com","verificationkey":"hunter2-not-shown"}"#,
    );
    let base = |auth: Value, route_auth: &str| {
        GatewayConfig::public_only()
            .upstream_with("s4", "http://127.0.0.1:9", json!({"auth": auth}))
            .route(json!({"name": "r", "path_prefix": "/", "upstream": "s4", "auth": route_auth}))
            .yaml()
    };
    let e = load_error(&base(
        json!({"type": "oauth2_client_credentials", "service_key": "${env:TOLLGATE_TEST_BAD_KEY}"}),
        "none",
    ));
    assert!(
        e.contains("upstreams[0].auth.service_key: the service key has no \"clientsecret\""),
        "{e}"
    );
    assert!(!e.contains("hunter2") && !e.contains("sb-x"), "{e}");
    let e = load_error(&base(
        json!({
            "type": "oauth2_client_credentials",
            "service_key": r#"{"clientid":"c","clientsecret":"hunter2","url":"https://uaa"}"#,
            "token_url": "https://x/oauth/token",
        }),
        "none",
    ));
    assert!(
        e.contains("upstreams[0].auth.token_url: give either service_key or token_url"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = load_error(&base(
        json!({
            "type": "token_exchange", "token_url": "https://x/oauth/token",
            "client_id": "c", "client_secret": "s",
        }),
        "none",
    ));
    assert!(
        e.contains("routes[0].auth: upstream \"s4\" passes on the caller's identity"),
        "{e}"
    );
    let e = load_error(&base(
        json!({
            "type": "jwt_bearer", "token_url": "https://x/oauth/token",
            "client_id": "c", "client_secret": "s", "subject_token_type": "jwt",
        }),
        "none",
    ));
    assert!(e.contains("upstreams[0].auth.subject_token_type: key \"subject_token_type\" does not apply to auth type \"jwt_bearer\""), "{e}");
    let e = load_error(&base(
        json!({"type": "oauth2_client_credentials", "service_key": [1, 2]}),
        "none",
    ));
    assert!(e.contains("upstreams[0].auth.service_key"), "{e}");
}

// Behaviour: strip_cookies defaults to on for routes with a Bearer `auth` block (browser
// cookies for the gateway's domain do not reach a token-authenticated backend), to off
// for `auth: none`, and can be set either way.
#[tokio::test]
async fn strip_cookies_defaults_and_overrides() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let bearer = json!({"issuers": ["corp"]});
    let yaml = GatewayConfig::public_only()
        .issuer(&idp, "corp")
        .upstream("u", &up.url())
        .route(json!({"name": "bearer", "path_prefix": "/bearer", "upstream": "u", "auth": bearer}))
        .route(json!({
            "name": "bearer-keeps", "path_prefix": "/keeps", "upstream": "u", "auth": bearer,
            "strip_cookies": false,
        }))
        .open_route("public", "/public", "u")
        .route(json!({
            "name": "public-strips", "path_prefix": "/strips", "upstream": "u", "auth": "none",
            "strip_cookies": true,
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let c = client();
    let t = idp.token(json!({}));
    for (path, forwarded) in [
        ("/bearer/x", false),
        ("/keeps/x", true),
        ("/public/x", true),
        ("/strips/x", false),
    ] {
        let r = c
            .get(gw.url(path))
            .bearer_auth(&t)
            .header("cookie", "portal_session=abc; theme=dark")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            up.last().header("cookie").is_some(),
            forwarded,
            "{path}: {:?}",
            up.last().header("cookie")
        );
    }
    gw.stop().await;
}
