//! Outbound proxies (issue 21): tollgate's calls to identity providers (JWKS, OIDC
//! discovery) and upstreams with `proxy:` go through a real HTTP CONNECT proxy, chosen
//! by HTTPS_PROXY/HTTP_PROXY/NO_PROXY on a spawned tollgate or by `proxy:` keys; the
//! IdP is served over TLS so that the tunnel carries end-to-end TLS.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::common::*;
use crate::connect_proxy::{tls_front, Answer, ConnectProxy};
use crate::gwconfig::{merge, GatewayConfig, AUDIENCE};

/// An issuer `name` taking keys from `jwks` (more keys in `extra`).
fn issuer(idp: &Idp, name: &str, jwks: &str, extra: Value) -> Value {
    let mut v = json!({
        "name": name, "issuer": idp.issuer, "jwks_uri": jwks, "audiences": [AUDIENCE],
    });
    merge(&mut v, extra);
    v
}

/// `issuers`, upstream `bi` (more keys in `upstream_extra`), a scoped route
/// /v2/analytics and an open route /open.
fn config(issuers: &[Value], up: &Upstream, upstream_extra: Value) -> String {
    let mut c = GatewayConfig::new();
    for i in issuers {
        c = c.issuer_block(i.clone());
    }
    c.upstream_with("bi", &up.url(), upstream_extra)
        .route(json!({
            "name": "analytics", "path_prefix": "/v2/analytics", "upstream": "bi",
            "auth": {"scopes": ["analytics.read"]},
            "permissions": [{"path": "/v2/analytics/**", "methods": ["GET"]}],
        }))
        .open_route("open", "/open", "bi")
        .yaml()
}

/// Starts tollgate on `yaml` with `env` (plus the fixtures' CA as the trust store, so
/// that the TLS front is trusted); keeps the config directory alive with it.
fn start(yaml: &str, env: &[(&str, &str)]) -> (Binary, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let ca = fixture("ca.pem");
    let mut env = env.to_vec();
    env.push(("SSL_CERT_FILE", ca.to_str().unwrap()));
    (spawn_binary_env(&cfg, &["run"], &env), dir)
}

async fn admin_json(bin: &Binary, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("http://{}{path}", bin.admin.as_ref().unwrap()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `/admin/status` once every issuer's key fetch has an outcome.
async fn status_after_fetches(bin: &Binary) -> Value {
    eventually(
        "every issuer has a key fetch outcome in /admin/status",
        PATIENCE,
        async || admin_json(bin, "/admin/status").await.1,
        |s| {
            s["issuers"]
                .as_array()
                .is_some_and(|a| a.iter().all(|i| !i["last_key_fetch"].is_null()))
        },
    )
    .await
}

async fn get(bin: &Binary, path: &str, token: Option<&str>) -> u16 {
    let mut r = client().get(format!("http://{}{path}", bin.public));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().status().as_u16()
}

fn at(addr: SocketAddr) -> String {
    addr.to_string()
}

// Behaviour: HTTPS_PROXY on the process sends the JWKS fetch of an https:// IdP through
// a CONNECT tunnel (TLS end to end: the proxy sees only 127.0.0.1:port), tokens verify
// with the keys it brought; HTTP_PROXY does not redirect forwarded API traffic to an
// upstream without `proxy:`.
#[tokio::test]
async fn env_https_proxy_tunnels_jwks_and_leaves_forwarded_traffic_direct() {
    let idp = spawn_idp().await;
    let front = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(None).await;
    let jwks = format!("https://127.0.0.1:{}/jwks", front.port());
    let (bin, _dir) = start(
        &config(&[issuer(&idp, "corp", &jwks, json!({}))], &up, json!({})),
        &[("HTTPS_PROXY", &proxy.url()), ("http_proxy", &proxy.url())],
    );
    let s = status_after_fetches(&bin).await;
    assert_eq!(s["issuers"][0]["last_key_fetch"]["ok"], json!(true), "{s}");
    assert_eq!(s["issuers"][0]["proxy"], json!("environment"), "{s}");
    assert_eq!(s["upstreams"][0]["proxy"], json!("direct"), "{s}");
    assert_eq!(
        get(&bin, "/v2/analytics/data", Some(&idp.token(json!({})))).await,
        200
    );
    assert!(idp.jwks_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let tunnels = proxy.tunnels();
    assert!(tunnels.contains(&at(front)), "{:?}", proxy.carried());
    assert_eq!(up.count(), 1);
    // Neither tunnelled nor sent in absolute form: the upstream was reached directly.
    let upstream_addr = up.url().trim_start_matches("http://").to_owned();
    assert!(
        proxy
            .carried()
            .iter()
            .all(|c| !c.target.contains(&upstream_addr)),
        "{:?}",
        proxy.carried()
    );
    // The startup line names the environment's proxy.
    bin.log_line("the environment's proxy is logged", |l| {
        l.contains("go through the proxy from the environment") && l.contains(&proxy.url())
    })
    .await;
}

// Behaviour: a per-issuer `proxy:` carries the OIDC discovery document (https, tunnel
// with TLS inside) and the JWKS it points to (http://, tunnelled too: tollgate uses
// CONNECT for http targets as well) without any proxy variable set.
#[tokio::test]
async fn per_issuer_proxy_carries_discovery_and_jwks() {
    let idp = spawn_idp().await;
    let front = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(None).await;
    let issuers = [json!({
        "name": "corp",
        "issuer": idp.issuer,
        "discovery": format!(
            "https://localhost:{}/.well-known/openid-configuration",
            front.port()
        ),
        "audiences": [AUDIENCE],
        "proxy": proxy.url(),
    })];
    let (bin, _dir) = start(&config(&issuers, &up, json!({})), &[]);
    let s = status_after_fetches(&bin).await;
    assert_eq!(s["issuers"][0]["last_key_fetch"]["ok"], json!(true), "{s}");
    assert_eq!(s["issuers"][0]["proxy"], json!(proxy.url()), "{s}");
    assert_eq!(
        get(&bin, "/v2/analytics/data", Some(&idp.token(json!({})))).await,
        200
    );
    let tunnels = proxy.tunnels();
    assert!(
        tunnels.contains(&format!("localhost:{}", front.port())),
        "{tunnels:?}"
    );
    assert!(tunnels.contains(&at(idp.addr)), "{tunnels:?}");
    assert!(proxy.carried().iter().all(|c| c.method == "CONNECT"));
}

// Behaviour: NO_PROXY (a `host:port` entry) and `proxy: direct` bypass HTTPS_PROXY; an
// issuer neither exempts still goes through it (the proxy records only that one).
#[tokio::test]
async fn no_proxy_and_direct_bypass_the_environment_proxy() {
    let idp = spawn_idp().await;
    let front_a = tls_front(idp.addr).await;
    let front_b = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(None).await;
    let issuers = [
        issuer(
            &idp,
            "exempt",
            &format!("https://127.0.0.1:{}/jwks", front_a.port()),
            json!({}),
        ),
        issuer(
            &idp,
            "direct",
            &format!("https://127.0.0.1:{}/jwks", front_b.port()),
            json!({"proxy": "direct"}),
        ),
        issuer(
            &idp,
            "proxied",
            &format!("https://localhost:{}/jwks", front_b.port()),
            json!({}),
        ),
    ];
    let no_proxy = format!("example.org, 127.0.0.1:{}", front_a.port());
    let (bin, _dir) = start(
        &config(&issuers, &up, json!({})),
        &[("https_proxy", &proxy.url()), ("NO_PROXY", &no_proxy)],
    );
    let s = status_after_fetches(&bin).await;
    for i in 0..3 {
        assert_eq!(s["issuers"][i]["last_key_fetch"]["ok"], json!(true), "{s}");
    }
    assert_eq!(s["issuers"][1]["proxy"], json!("direct"), "{s}");
    let targets: Vec<String> = proxy.carried().into_iter().map(|c| c.target).collect();
    assert!(!targets.is_empty(), "the proxied issuer used the proxy");
    assert!(
        targets
            .iter()
            .all(|t| *t == format!("localhost:{}", front_b.port())),
        "{targets:?}"
    );
}

// Behaviour: credentials in a proxy URL (environment or `proxy:`) are sent as
// `Proxy-Authorization: Basic`, and appear nowhere in logs, /admin/status or
// /admin/config (the URL shows as http://[redacted]@host:port).
#[tokio::test]
async fn proxy_credentials_are_sent_and_never_shown() {
    const PASSWORD: &str = "S3cr3t-pr0xy-pw";
    let idp = spawn_idp().await;
    let front = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(Some(&format!("svc:{PASSWORD}"))).await;
    let with_creds = format!("http://svc:{PASSWORD}@{}", proxy.addr);
    let issuers = [
        issuer(
            &idp,
            "env",
            &format!("https://127.0.0.1:{}/jwks", front.port()),
            json!({}),
        ),
        issuer(
            &idp,
            "own",
            &format!("https://localhost:{}/jwks", front.port()),
            json!({ "proxy": with_creds }),
        ),
    ];
    let (bin, _dir) = start(
        &config(&issuers, &up, json!({ "proxy": with_creds })),
        &[("HTTPS_PROXY", &with_creds)],
    );
    let s = status_after_fetches(&bin).await;
    for i in 0..2 {
        assert_eq!(s["issuers"][i]["last_key_fetch"]["ok"], json!(true), "{s}");
    }
    assert_eq!(get(&bin, "/open/x", None).await, 200);
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("svc:{PASSWORD}"))
    );
    let carried = proxy.carried();
    let tunnelled: Vec<_> = carried.iter().filter(|c| c.answered == 200).collect();
    assert_eq!(tunnelled.len(), 3, "{carried:?}");
    assert!(tunnelled
        .iter()
        .all(|c| c.proxy_authorization.as_deref() == Some(basic.as_str())));
    let shown = format!("http://[redacted]@{}", proxy.addr);
    assert_eq!(s["issuers"][1]["proxy"], json!(shown), "{s}");
    assert_eq!(s["upstreams"][0]["proxy"], json!(shown), "{s}");
    let (_, config) = admin_json(&bin, "/admin/config").await;
    for text in [s.to_string(), config.to_string(), bin.log_text()] {
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(!text.contains(&basic[6..]), "{text}");
    }
    assert!(bin.log_text().contains(&shown), "{}", bin.log_text());
}

// Behaviour: a proxy that is down, refuses CONNECT (403, 502) or wants credentials
// (407) is named (credentials redacted) with what went wrong in /readyz,
// /admin/status and the log, not a generic connect failure.
#[tokio::test]
async fn proxy_failures_are_named_in_readiness_and_logs() {
    let idp = spawn_idp().await;
    let front = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let forbidden = ConnectProxy::start(None).await;
    forbidden.answer(Answer::Refuse(403));
    let bad_gateway = ConnectProxy::start(None).await;
    bad_gateway.answer(Answer::Refuse(502));
    let wants_auth = ConnectProxy::start(Some("svc:pw")).await;
    let wrong_auth = ConnectProxy::start(Some("svc:pw")).await;
    let dead = format!("http://{}", dead_addr());
    let jwks = format!("https://127.0.0.1:{}/jwks", front.port());
    let proxied = |name: &str, url: &str| issuer(&idp, name, &jwks, json!({ "proxy": url }));
    let wrong = format!("http://svc:nope@{}", wrong_auth.addr);
    let issuers = [
        proxied("down", &dead),
        proxied("forbidden", &forbidden.url()),
        proxied("bad-gateway", &bad_gateway.url()),
        proxied("wants-auth", &wants_auth.url()),
        proxied("wrong-auth", &wrong),
    ];
    let (bin, _dir) = start(&config(&issuers, &up, json!({})), &[]);
    // Readiness keeps SPEC's meaning (first fetches finished); the errors say why. An
    // issuer records its failure a moment before it marks its first fetch finished, so
    // the five errors can show while /readyz still says 503: wait for both.
    let (code, ready) = eventually(
        "/readyz ready (200) and listing the five failing issuers",
        PATIENCE,
        async || admin_json(&bin, "/readyz").await,
        |(c, r)| *c == 200 && r["issuer_errors"].as_array().is_some_and(|a| a.len() == 5),
    )
    .await;
    assert_eq!(code, 200, "{ready}");
    let error_of = |name: &str| {
        ready["issuer_errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["issuer"] == json!(name))
            .map(|e| e["error"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let target = format!("CONNECT 127.0.0.1:{}", front.port());
    let e = error_of("down");
    assert!(
        e.contains(&format!("outbound proxy {dead} is unreachable")),
        "{e}"
    );
    let e = error_of("forbidden");
    assert!(
        e.contains(&format!(
            "outbound proxy {} refused {target}: 403",
            forbidden.url()
        )),
        "{e}"
    );
    let e = error_of("bad-gateway");
    assert!(
        e.contains(&format!("{} refused {target}: 502", bad_gateway.url())),
        "{e}"
    );
    let e = error_of("wants-auth");
    assert!(
        e.contains(&format!(
            "{} requires authentication (407)",
            wants_auth.url()
        )),
        "{e}"
    );
    let e = error_of("wrong-auth");
    assert!(
        e.contains(&format!(
            "http://[redacted]@{} rejected the proxy credentials (407)",
            wrong_auth.addr
        )),
        "{e}"
    );
    assert!(!ready.to_string().contains("nope"), "{ready}");
    let s = status_after_fetches(&bin).await;
    assert_eq!(s["issuers"][1]["last_key_fetch"]["ok"], json!(false), "{s}");
    assert!(s["issuers"][1]["last_key_fetch"]["error"]
        .as_str()
        .unwrap()
        .contains("403"));
    bin.log_line("the refused tunnel is logged", |l| {
        l.contains("issuer key fetch failed") && l.contains("refused CONNECT") && l.contains("403")
    })
    .await;
    assert!(!bin.log_text().contains("svc:nope"));
}

// Behaviour: an upstream's `proxy:` carries its forwarded API traffic through a CONNECT
// tunnel; the upstream sees the request as usual.
#[tokio::test]
async fn upstream_proxy_carries_forwarded_traffic() {
    let idp = spawn_idp().await;
    let front = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(None).await;
    let jwks = format!("https://127.0.0.1:{}/jwks", front.port());
    let (bin, _dir) = start(
        &config(
            &[issuer(&idp, "corp", &jwks, json!({"proxy": "direct"}))],
            &up,
            json!({"proxy": proxy.url()}),
        ),
        &[],
    );
    status_after_fetches(&bin).await;
    assert_eq!(get(&bin, "/open/one", None).await, 200);
    assert_eq!(
        get(&bin, "/v2/analytics/two", Some(&idp.token(json!({})))).await,
        200
    );
    assert_eq!(up.count(), 2);
    assert_eq!(up.last().uri, "/v2/analytics/two");
    let upstream_addr = up.url().trim_start_matches("http://").to_owned();
    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty());
    assert!(tunnels.iter().all(|t| *t == upstream_addr), "{tunnels:?}");
}

// Behaviour: an upstream whose proxy refuses the tunnel answers 502; the API client is
// told the proxy refused (with its status) but not where the proxy is; the log names it.
#[tokio::test]
async fn upstream_proxy_refusal_is_a_502_without_the_proxy_address() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(None).await;
    proxy.answer(Answer::Refuse(403));
    let (bin, _dir) = start(
        &config(
            &[issuer(&idp, "corp", &idp.url("/jwks"), json!({}))],
            &up,
            json!({"proxy": proxy.url()}),
        ),
        &[],
    );
    status_after_fetches(&bin).await;
    let r = client()
        .get(format!("http://{}/open/x", bin.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    let d = body["error_description"].as_str().unwrap();
    assert!(
        d.contains("the outbound proxy refused the tunnel (403)"),
        "{d}"
    );
    assert!(!d.contains(&proxy.addr.port().to_string()), "{d}");
    assert_eq!(up.count(), 0);
    assert_eq!(proxy.carried().len(), 1);
    bin.log_line("the refusal is logged with the proxy", |l| {
        l.contains("upstream connect failed")
            && l.contains(&format!("outbound proxy {} refused CONNECT", proxy.url()))
    })
    .await;
}

// Behaviour: an upstream without `proxy:` gets its `auth` token from an https token
// endpoint through HTTPS_PROXY (a CONNECT tunnel), while the forwarded request itself
// goes directly to the upstream; /admin/status says which is which.
#[tokio::test]
async fn upstream_token_requests_follow_the_environment_forwarded_traffic_does_not() {
    let idp = spawn_idp().await;
    let front = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(None).await;
    let auth = json!({"auth": {
        "type": "oauth2_client_credentials",
        "token_url": format!("https://localhost:{}/token", front.port()),
        "client_id": "gw",
        "client_secret": "gw-s3cret",
    }});
    let (bin, _dir) = start(
        &config(
            &[issuer(
                &idp,
                "corp",
                &idp.url("/jwks"),
                json!({"proxy": "direct"}),
            )],
            &up,
            auth,
        ),
        &[("HTTPS_PROXY", &proxy.url()), ("HTTP_PROXY", &proxy.url())],
    );
    let s = status_after_fetches(&bin).await;
    assert_eq!(s["upstreams"][0]["proxy"], json!("direct"), "{s}");
    assert_eq!(
        s["upstreams"][0]["token_proxy"],
        json!("environment"),
        "{s}"
    );
    assert_eq!(get(&bin, "/open/x", None).await, 200);
    assert_eq!(idp.token_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(up
        .last()
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ")));
    assert_eq!(
        proxy.tunnels(),
        vec![format!("localhost:{}", front.port())],
        "only the token request was tunnelled"
    );
}

// Behaviour: an https:// proxy URL means TLS to the proxy (verified like any endpoint),
// with the CONNECT tunnel and the IdP's own TLS inside it.
#[tokio::test]
async fn https_proxy_url_speaks_tls_to_the_proxy() {
    let idp = spawn_idp().await;
    let front = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(None).await;
    let proxy_tls = tls_front(proxy.addr).await;
    let jwks = format!("https://127.0.0.1:{}/jwks", front.port());
    let (bin, _dir) = start(
        &config(&[issuer(&idp, "corp", &jwks, json!({}))], &up, json!({})),
        &[(
            "HTTPS_PROXY",
            &format!("https://localhost:{}", proxy_tls.port()),
        )],
    );
    let s = status_after_fetches(&bin).await;
    assert_eq!(s["issuers"][0]["last_key_fetch"]["ok"], json!(true), "{s}");
    assert_eq!(
        get(&bin, "/v2/analytics/data", Some(&idp.token(json!({})))).await,
        200
    );
    assert_eq!(proxy.tunnels(), vec![at(front)]);
}

// Behaviour: under CGI (REQUEST_METHOD set) the proxy variables are not trusted
// (httpoxy: HTTP_PROXY may come from a request's `Proxy:` header); calls go directly.
#[tokio::test]
async fn proxy_variables_are_ignored_under_cgi() {
    let idp = spawn_idp().await;
    let front = tls_front(idp.addr).await;
    let up = spawn_upstream().await;
    let proxy = ConnectProxy::start(None).await;
    let jwks = format!("https://127.0.0.1:{}/jwks", front.port());
    let (bin, _dir) = start(
        &config(&[issuer(&idp, "corp", &jwks, json!({}))], &up, json!({})),
        &[("HTTPS_PROXY", &proxy.url()), ("REQUEST_METHOD", "GET")],
    );
    let s = status_after_fetches(&bin).await;
    assert_eq!(s["issuers"][0]["last_key_fetch"]["ok"], json!(true), "{s}");
    assert!(proxy.carried().is_empty(), "{:?}", proxy.carried());
}
