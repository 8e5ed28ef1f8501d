//! Browser sign-in (SPEC "Browser sign-in (authorization code + PKCE)") on real sockets:
//! tollgate, the certified OpenID provider (panva/oidc-provider, tests/e2e/oidc: its
//! login and consent pages are filled in over HTTP here, as a browser would), an echo
//! upstream, and reqwest with redirects off and cookies handled by hand, so that every
//! redirect, cookie and attribute is seen. The journey in a real browser is
//! `browser_login.rs`.
//!
//! Needs Node 20+ and `npm ci --prefix tests/e2e/oidc` (as `oidc_e2e.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::header::{ACCEPT, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::GatewayConfig;
use crate::oidc_e2e::{OidcProvider, TOLLGATE_WEB_SECRET};

/// The provider's resource server for sign-in (JWT access tokens, RS256).
pub const DASHBOARD_API: &str = "https://dashboard-api.company.com";
pub const COOKIE_SECRET: &str = "test-only-cookie-secret-0123456789abcdef";

/// reqwest without redirects (each hop is looked at) or cookies (handled by hand).
pub fn http() -> reqwest::Client {
    tollgate::tls::install_default_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Which of the provider's sign-in clients tollgate is.
#[derive(Clone, Copy)]
pub enum Client {
    /// `tollgate-web`: confidential, client_secret_basic.
    Web,
    /// `tollgate-spa`: public (PKCE only); the provider rotates its refresh tokens.
    Spa,
}

/// A gateway with `login:` against the provider: `/dash` (login: true, analytics.read),
/// `/reports` (login: true, a scope nobody has), `/api` (Bearer only), `/signed-out`
/// (public); a test adds more routes with `.route(...)`.
pub fn login_config(
    op: &OidcProvider,
    up: &Upstream,
    client: Client,
    cookie_secret: &str,
) -> GatewayConfig {
    let iss = &op.issuer;
    let mut login = json!({
        "issuer": "corp",
        "scopes": ["openid", "analytics.read"],
        "cookie_secret": cookie_secret,
        "post_logout_redirect_uri": "/signed-out",
        "extra_params": {"resource": DASHBOARD_API},
    });
    match client {
        Client::Web => {
            login["client_id"] = json!("tollgate-web");
            login["client_secret"] = json!(TOLLGATE_WEB_SECRET);
        }
        Client::Spa => login["client_id"] = json!("tollgate-spa"),
    }
    GatewayConfig::new()
        .issuer_block(json!({
            "name": "corp",
            "issuer": iss,
            "discovery": format!("{iss}/.well-known/openid-configuration"),
            "audiences": [DASHBOARD_API],
        }))
        .set("login", login)
        .upstream("bi", &up.url())
        .route(json!({
            "name": "dashboard", "path_prefix": "/dash", "upstream": "bi",
            "auth": {"login": true, "issuers": ["corp"], "scopes": ["analytics.read"]},
        }))
        .route(json!({
            "name": "reports", "path_prefix": "/reports", "upstream": "bi",
            "auth": {"login": true, "scopes": ["analytics.admin"]},
        }))
        .route(json!({
            "name": "api", "path_prefix": "/api", "upstream": "bi",
            "auth": {"issuers": ["corp"], "scopes": ["analytics.read"]},
        }))
        .open_route("public", "/signed-out", "bi")
}

/// [`login_config`] as YAML text.
pub fn login_yaml(op: &OidcProvider, up: &Upstream, client: Client, cookie_secret: &str) -> String {
    login_config(op, up, client, cookie_secret).yaml()
}

/// One `Set-Cookie` of a response.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    /// Attributes, lower-cased (`httponly`, `path=/`, `max-age=0`, ...).
    pub attrs: Vec<String>,
}

impl SetCookie {
    pub fn has(&self, attr: &str) -> bool {
        self.attrs.iter().any(|a| a == &attr.to_ascii_lowercase())
    }
    pub fn pair(&self) -> String {
        format!("{}={}", self.name, self.value)
    }
    pub fn clears(&self) -> bool {
        self.value.is_empty() && self.has("max-age=0")
    }
}

pub fn set_cookies(r: &reqwest::Response) -> Vec<SetCookie> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| {
            let s = v.to_str().unwrap();
            let mut parts = s.split(';');
            let (name, value) = parts.next().unwrap().split_once('=').unwrap();
            SetCookie {
                name: name.trim().to_owned(),
                value: value.trim().to_owned(),
                attrs: parts.map(|a| a.trim().to_ascii_lowercase()).collect(),
            }
        })
        .collect()
}

/// The session a response set, as a `Cookie` header value (every part, in order).
pub fn session_of(r: &reqwest::Response) -> String {
    let parts: Vec<String> = set_cookies(r)
        .into_iter()
        .filter(|c| c.name.starts_with("tollgate_session") && !c.clears())
        .map(|c| c.pair())
        .collect();
    assert!(
        !parts.is_empty(),
        "no session cookie set: {:?}",
        r.headers()
    );
    parts.join("; ")
}

pub fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location ({}): {:?}", r.status(), r.headers()))
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// A browser navigation (GET, Accept: text/html) to tollgate.
pub async fn navigate(gw: &Gw, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut rb = http()
        .get(gw.url(path))
        .header(ACCEPT, "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8");
    if let Some(c) = cookie {
        rb = rb.header(COOKIE, c);
    }
    rb.send().await.unwrap()
}

/// An API call (fetch from a page: Accept JSON).
pub async fn api_call(gw: &Gw, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut rb = http().get(gw.url(path)).header(ACCEPT, "application/json");
    if let Some(c) = cookie {
        rb = rb.header(COOKIE, c);
    }
    rb.send().await.unwrap()
}

/// A sign-in tollgate started: where it sent the browser, and the state cookie it set.
pub struct Started {
    pub auth_url: String,
    pub state: SetCookie,
}

pub async fn start_sign_in(gw: &Gw, path: &str) -> Started {
    let r = navigate(gw, path, None).await;
    assert_eq!(r.status(), 302, "navigation to {path}: {:?}", r.headers());
    let state = set_cookies(&r)
        .into_iter()
        .find(|c| c.name.starts_with("tollgate_state."))
        .expect("a sign-in state cookie");
    Started {
        auth_url: location(&r),
        state,
    }
}

/// The identity provider's cookies, by name (one origin; paths ignored).
#[derive(Default)]
struct IdpJar(HashMap<String, String>);

impl IdpJar {
    fn absorb(&mut self, r: &reqwest::Response) {
        for c in set_cookies(r) {
            if c.value.is_empty() {
                self.0.remove(&c.name);
            } else {
                self.0.insert(c.name, c.value);
            }
        }
    }
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn resolve(base: &str, loc: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(loc)
        .unwrap()
        .to_string()
}

/// What the person does on the identity provider's pages.
#[derive(Clone, Copy, PartialEq)]
pub enum AtIdp<'a> {
    /// Signs in as this user (and consents).
    SignIn(&'a str),
    /// Clicks "Cancel".
    Cancel,
}

/// Follows the identity provider's pages from `auth_url` (devInteractions: login, then
/// consent) until it redirects back to tollgate; returns that URL (the callback).
pub async fn at_idp(auth_url: &str, what: AtIdp<'_>) -> String {
    let http = http();
    let idp = url::Url::parse(auth_url)
        .unwrap()
        .origin()
        .ascii_serialization();
    let mut jar = IdpJar::default();
    let mut url = auth_url.to_owned();
    for _ in 0..16 {
        let r = http
            .get(&url)
            .header(COOKIE, jar.header())
            .send()
            .await
            .unwrap();
        jar.absorb(&r);
        if r.status().is_redirection() {
            let next = resolve(&url, &location(&r));
            if !next.starts_with(&idp) {
                return next;
            }
            url = next;
            continue;
        }
        let status = r.status();
        let page = r.text().await.unwrap();
        assert_eq!(status, 200, "{url}: {page}");
        let form: Vec<(&str, &str)> = match what {
            AtIdp::Cancel => {
                url = format!("{url}/abort");
                continue;
            }
            AtIdp::SignIn(user) if page.contains(r#"name="prompt" value="login""#) => {
                vec![("prompt", "login"), ("login", user), ("password", "any")]
            }
            AtIdp::SignIn(_) if page.contains(r#"name="prompt" value="consent""#) => {
                vec![("prompt", "consent")]
            }
            AtIdp::SignIn(_) => {
                panic!("an identity provider page with no known form at {url}:\n{page}")
            }
        };
        let r = http
            .post(&url)
            .header(COOKIE, jar.header())
            .form(&form)
            .send()
            .await
            .unwrap();
        jar.absorb(&r);
        assert!(r.status().is_redirection(), "{url}: {}", r.status());
        url = resolve(&url, &location(&r));
        if !url.starts_with(&idp) {
            return url;
        }
    }
    panic!("the identity provider never sent the browser back (last at {url})");
}

/// The callback, delivered with `cookie` (the browser's state cookie).
pub async fn callback(callback_url: &str, cookie: &str) -> reqwest::Response {
    http()
        .get(callback_url)
        .header(COOKIE, cookie)
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap()
}

/// A whole sign-in as `user`, starting at `path`: the session cookie and the callback's
/// answer.
pub async fn sign_in(gw: &Gw, path: &str, user: &str) -> (String, reqwest::Response) {
    let s = start_sign_in(gw, path).await;
    let cb = at_idp(&s.auth_url, AtIdp::SignIn(user)).await;
    let r = callback(&cb, &s.state.pair()).await;
    assert_eq!(r.status(), 302, "callback: {:?}", r.headers());
    (session_of(&r), r)
}

/// Status, error code and description of a JSON error.
pub async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["error"].as_str().unwrap_or("").to_owned(),
        v["error_description"].as_str().unwrap_or("").to_owned(),
    )
}

/// The claims of a JWT (not verified: for looking at what the upstream got).
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The Bearer token the upstream saw last.
fn upstream_token(up: &Upstream) -> String {
    up.last()
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("a Bearer token upstream")
        .to_owned()
}

pub async fn metric(gw: &Gw, series: &str) -> f64 {
    let text = admin_metrics(&format!("http://{}", gw.admin.unwrap())).await;
    series_value(&text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

async fn start(
    client: Client,
    provider_args: &[&str],
    routes: &[Value],
) -> (OidcProvider, Upstream, Gw) {
    let op = OidcProvider::spawn_with(provider_args);
    let up = spawn_upstream().await;
    let mut cfg = login_config(&op, &up, client, COOKIE_SECRET);
    for r in routes {
        cfg = cfg.route(r.clone());
    }
    let gw = spawn_gateway(&cfg.yaml()).await;
    (op, up, gw)
}

// Behaviour: without a token or a session, a browser navigation (GET or HEAD with Accept
// text/html) is sent to the provider's authorization endpoint with response_type=code,
// PKCE S256, state, nonce and the redirect URI {scheme}://{host}{callback_path}, and gets
// a short-lived, HttpOnly, SameSite=Lax, Secure state cookie scoped to the callback path;
// anything else (an API call, a POST) gets 401 invalid_token and never a redirect.
#[tokio::test]
async fn login_navigation_redirects_api_calls_get_401() {
    let (op, up, gw) = start(Client::Web, &[], &[]).await;
    let meta: Value = client()
        .get(format!("{}/.well-known/openid-configuration", op.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let s = start_sign_in(&gw, "/dash/page?tab=1").await;
    let auth = meta["authorization_endpoint"].as_str().unwrap();
    assert!(
        s.auth_url.starts_with(&format!("{auth}?")),
        "{}",
        s.auth_url
    );
    let q = query(&s.auth_url);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "tollgate-web");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43, "{q:?}");
    assert_eq!(q["redirect_uri"], gw.url("/oauth2/callback"));
    assert_eq!(q["scope"], "openid analytics.read");
    assert_eq!(q["resource"], DASHBOARD_API);
    assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32, "{q:?}");
    assert_ne!(q["state"], q["nonce"]);
    for attr in [
        "httponly",
        "samesite=lax",
        "secure",
        "path=/oauth2/callback",
        "max-age=600",
    ] {
        assert!(
            s.state.has(attr),
            "state cookie lacks {attr}: {:?}",
            s.state
        );
    }
    assert!(
        !s.state.value.contains(&q["state"]),
        "the state cookie is sealed"
    );
    let again = start_sign_in(&gw, "/dash/page").await;
    assert_ne!(
        query(&again.auth_url)["state"],
        q["state"],
        "a fresh state per sign-in"
    );
    assert_ne!(
        again.state.name, s.state.name,
        "one cookie per sign-in in progress"
    );

    let head = http()
        .head(gw.url("/dash/page"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 302);

    for r in [
        api_call(&gw, "/dash/data", None).await,
        http().get(gw.url("/dash/data")).send().await.unwrap(),
        http()
            .post(gw.url("/dash/data"))
            .header(ACCEPT, "text/html")
            .send()
            .await
            .unwrap(),
    ] {
        assert!(r.headers().get(LOCATION).is_none(), "{:?}", r.headers());
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
        let (status, code, _) = error_of(r).await;
        assert_eq!((status, code.as_str()), (401, "invalid_token"));
    }
    // A Bearer-only route never redirects either.
    let r = navigate(&gw, "/api/data", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(up.count(), 0);
    assert_eq!(
        metric(
            &gw,
            "tollgate_auth_denied_total{route=\"dashboard\",reason=\"token_missing\"}"
        )
        .await,
        3.0
    );
}

// Behaviour: the whole sign-in on the socket level. The callback exchanges the code,
// sets tollgate_session (HttpOnly, Secure, SameSite=Lax, Path=/), drops the state cookie
// and sends the browser back to the page first asked for. The session's access token
// then goes through the gate like a Bearer token: the upstream gets it as
// `Authorization: Bearer` with X-Auth-Subject/-Client-Id/-Scopes, never tollgate's own
// cookies (other cookies stay); a scope the token lacks is 403 insufficient_scope; a
// Bearer-only route does not take the session. `tollgate explain --cookie` shows the
// session step. Logout clears the cookie and goes to the provider's end_session_endpoint
// with id_token_hint, client_id and post_logout_redirect_uri.
#[tokio::test]
async fn login_sign_in_session_and_logout() {
    let (op, up, gw) = start(Client::Web, &[], &[]).await;
    let (session, r) = sign_in(&gw, "/dash/page?tab=1&x=%2F", "alice").await;
    assert_eq!(location(&r), "/dash/page?tab=1&x=%2F");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let set = set_cookies(&r);
    let main = set
        .iter()
        .find(|c| c.name == "tollgate_session")
        .expect("tollgate_session");
    for attr in ["httponly", "secure", "samesite=lax", "path=/"] {
        assert!(main.has(attr), "tollgate_session lacks {attr}: {main:?}");
    }
    let max_age: u64 = main
        .attrs
        .iter()
        .find_map(|a| a.strip_prefix("max-age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!((8 * 3600 - 60..=8 * 3600).contains(&max_age), "{max_age}");
    assert!(
        set.iter()
            .any(|c| c.name.starts_with("tollgate_state.") && c.clears()),
        "the state cookie is dropped: {set:?}"
    );
    assert_eq!(up.count(), 0, "nothing went upstream during sign-in");

    let cookie = format!("theme=dark; {session}; lang=de");
    let r = api_call(&gw, "/dash/data?q=1", Some(&cookie)).await;
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/dash/data?q=1");
    assert_eq!(seen.header("x-auth-subject"), Some("alice"));
    assert_eq!(seen.header("x-auth-client-id"), Some("tollgate-web"));
    assert_eq!(seen.header("x-auth-scopes"), Some("analytics.read"));
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=de"));
    let token = upstream_token(&up);
    let c = claims(&token);
    assert_eq!(c["aud"], DASHBOARD_API, "{c}");
    assert_eq!(c["iss"], op.issuer.as_str());
    assert_eq!(c["sub"], "alice");
    // A navigation with a session is served too (no redirect).
    let r = navigate(&gw, "/dash/page", Some(&session)).await;
    assert_eq!(r.status(), 200);
    assert!(
        up.last().header("cookie").is_none(),
        "no cookie left to forward"
    );

    // Same gates as a Bearer token: scopes...
    let r = api_call(&gw, "/reports/q", Some(&session)).await;
    let (status, code, description) = error_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (403, "insufficient_scope"),
        "{description}"
    );
    // ...and a route without login: true does not take a session.
    let r = api_call(&gw, "/api/x", Some(&session)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(up.count(), 2);
    // Sent as a Bearer token, the session's token works on the Bearer route.
    let r = http()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // explain shows the session step and decides like the server.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .env_remove("TOLLGATE_CONFIG")
        .args(["explain", "--config"])
        .arg(gw.config_path())
        .args(["--cookie", &session, "/dash/data"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("session: cookie opened (subject alice"),
        "{text}"
    );
    assert!(text.contains("result: ALLOW"), "{text}");
    assert!(!text.contains(&token), "explain printed the access token");
    let mut tampered = session.clone().into_bytes();
    let i = "tollgate_session=".len() + 30;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .env_remove("TOLLGATE_CONFIG")
        .args(["explain", "--config"])
        .arg(gw.config_path())
        .args([
            "--cookie",
            std::str::from_utf8(&tampered).unwrap(),
            "/dash/data",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("(reason session_invalid)"), "{text}");

    // Logout: cookie cleared, RP-initiated logout at the provider.
    let meta: Value = client()
        .get(format!("{}/.well-known/openid-configuration", op.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = navigate(&gw, "/oauth2/logout", Some(&session)).await;
    assert_eq!(r.status(), 302);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.name == "tollgate_session" && c.clears() && c.has("path=/")),
        "{:?}",
        r.headers()
    );
    let to = location(&r);
    let end = meta["end_session_endpoint"].as_str().unwrap();
    assert!(to.starts_with(&format!("{end}?")), "{to}");
    let q = query(&to);
    assert_eq!(q["client_id"], "tollgate-web");
    assert_eq!(q["post_logout_redirect_uri"], gw.url("/signed-out"));
    let hint = claims(&q["id_token_hint"]);
    assert_eq!(hint["sub"], "alice");
    assert_eq!(hint["aud"], "tollgate-web");
    // The provider accepts that logout request (it shows its confirmation page).
    let r = http().get(&to).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Sign-in and logout lines never carry a token; the callback's code is not logged
    // either (the access log has the path only).
    assert_eq!(
        metric(&gw, "tollgate_sign_ins_total{result=\"success\"}").await,
        1.0
    );
}

// Behaviour: the callback refuses, with 400 invalid_request saying why and without
// exchanging the code, a state that does not match this browser's sign-in: no state
// cookie, a state cookie of another sign-in, a forged cookie, a state parameter that
// was changed. The untouched code then still completes the sign-in.
#[tokio::test]
async fn login_state_mismatch() {
    let (_op, up, gw) = start(Client::Web, &[], &[]).await;
    let a = start_sign_in(&gw, "/dash/a").await;
    let b = start_sign_in(&gw, "/dash/b").await;
    let cb = at_idp(&a.auth_url, AtIdp::SignIn("alice")).await;
    let state_a = query(&cb)["state"].clone();

    let mut other_state = cb.replace(&state_a, &query(&b.auth_url)["state"]);
    let cases: Vec<(String, String, &str)> = vec![
        (cb.clone(), String::new(), "its cookie is missing"),
        (cb.clone(), b.state.pair(), "its cookie is missing"),
        (
            cb.clone(),
            format!("{}={}", a.state.name, b.state.value),
            "state does not match this browser's sign-in",
        ),
        (
            cb.clone(),
            format!(
                "{}=AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywt",
                a.state.name
            ),
            "sign-in state cookie was refused",
        ),
        (
            cb.replace(&state_a, "forged-state"),
            a.state.pair(),
            "its cookie is missing",
        ),
    ];
    for (url, cookie, says) in &cases {
        let r = callback(url, cookie).await;
        assert!(
            !set_cookies(&r).iter().any(|c| c.name == "tollgate_session"),
            "{url}"
        );
        let (status, code, description) = error_of(r).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_request"),
            "{description}"
        );
        assert!(description.contains(says), "{says}: {description}");
        assert!(description.contains("state"), "{description}");
    }
    // b's state with a's cookie: a mismatch, even though both are genuine.
    other_state.push_str("&x=1");
    let r = callback(&other_state, &a.state.pair()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        metric(&gw, "tollgate_sign_ins_total{result=\"state_invalid\"}").await,
        (cases.len() + 1) as f64
    );
    // The right pairing still works: nothing above used the code.
    let r = callback(&cb, &a.state.pair()).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/dash/a");
    assert_eq!(up.count(), 0);
}

// Behaviour: a code can be exchanged once: replaying the callback (with the state cookie
// kept) is refused by the provider, and tollgate answers 400 saying the exchange failed.
#[tokio::test]
async fn login_replayed_code_is_refused() {
    let (_op, _up, gw) = start(Client::Web, &[], &[]).await;
    let s = start_sign_in(&gw, "/dash").await;
    let cb = at_idp(&s.auth_url, AtIdp::SignIn("alice")).await;
    let first = callback(&cb, &s.state.pair()).await;
    assert_eq!(first.status(), 302);
    let replay = callback(&cb, &s.state.pair()).await;
    assert!(!set_cookies(&replay)
        .iter()
        .any(|c| c.name == "tollgate_session"));
    let (status, code, description) = error_of(replay).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    assert!(
        description.contains("code exchange failed"),
        "{description}"
    );
    assert!(description.contains("invalid_grant"), "{description}");
    assert_eq!(
        metric(&gw, "tollgate_sign_ins_total{result=\"exchange_failed\"}").await,
        1.0
    );
}

// Behaviour: an ID token whose nonce is not the one this sign-in sent (the authorization
// request was altered on its way to the provider) is refused: 400, no session.
#[tokio::test]
async fn login_wrong_nonce_is_refused() {
    let (_op, _up, gw) = start(Client::Web, &[], &[]).await;
    let s = start_sign_in(&gw, "/dash").await;
    let nonce = query(&s.auth_url)["nonce"].clone();
    let altered = s.auth_url.replace(&nonce, "a-nonce-of-the-attacker");
    assert_ne!(altered, s.auth_url);
    let cb = at_idp(&altered, AtIdp::SignIn("alice")).await;
    let r = callback(&cb, &s.state.pair()).await;
    assert!(!set_cookies(&r).iter().any(|c| c.name == "tollgate_session"));
    let (status, code, description) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    assert!(
        description.contains("ID token was refused"),
        "{description}"
    );
    assert!(description.contains("nonce"), "{description}");
    assert_eq!(
        metric(&gw, "tollgate_sign_ins_total{result=\"id_token_invalid\"}").await,
        1.0
    );
}

// Behaviour: an error from the provider (the person pressed Cancel: access_denied) is a
// 400 invalid_request naming the provider's error; the state cookie is dropped.
#[tokio::test]
async fn login_idp_error_is_reported() {
    let (_op, _up, gw) = start(Client::Web, &[], &[]).await;
    let s = start_sign_in(&gw, "/dash").await;
    let cb = at_idp(&s.auth_url, AtIdp::Cancel).await;
    assert_eq!(query(&cb)["error"], "access_denied", "{cb}");
    let r = callback(&cb, &s.state.pair()).await;
    let set = set_cookies(&r);
    assert!(
        set.iter().any(|c| c.name == s.state.name && c.clears()),
        "{set:?}"
    );
    let (status, code, description) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    assert!(
        description.contains("identity provider did not sign the user in: access_denied"),
        "{description}"
    );
    assert_eq!(
        metric(&gw, "tollgate_sign_ins_total{result=\"idp_error\"}").await,
        1.0
    );
}

// Behaviour: after sign-in the browser only ever goes back to a path on this host,
// however the page was asked for: `//evil.example/x` (a protocol-relative URL), an
// absolute-form request target naming another host, a backslash that browsers read as
// `/`. A path whose query holds a URL stays a path.
#[tokio::test]
async fn login_return_urls_stay_on_this_host() {
    let catch_all = json!({
        "name": "everything", "path_prefix": "/", "upstream": "bi",
        "auth": {"login": true, "issuers": ["corp"]},
    });
    let (_op, _up, gw) = start(Client::Web, &[], &[catch_all]).await;
    let host = gw.addr.to_string();
    let cases = [
        (
            format!("GET //evil.example/x HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"),
            "/evil.example/x",
        ),
        (
            format!("GET http://evil.example/dash/x?y=1 HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"),
            "/dash/x?y=1",
        ),
        (
            format!("GET /dash/x?next=//evil.example HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"),
            "/dash/x?next=//evil.example",
        ),
    ];
    for (request, back_to) in cases {
        let answer = raw(gw.addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 302"), "{request}\n{answer}");
        let header = |name: &str| -> Vec<String> {
            answer
                .lines()
                .filter_map(|l| l.split_once(": "))
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
                .collect()
        };
        let auth_url = header("location").remove(0);
        let state = header("set-cookie")
            .into_iter()
            .find(|c| c.starts_with("tollgate_state."))
            .unwrap();
        let state_pair = state.split(';').next().unwrap().to_owned();
        let cb = at_idp(&auth_url, AtIdp::SignIn("alice")).await;
        assert!(cb.starts_with(&gw.url("/oauth2/callback?")), "{cb}");
        let r = callback(&cb, &state_pair).await;
        assert_eq!(r.status(), 302, "{request}");
        assert_eq!(location(&r), back_to, "{request}");
    }
    // A backslash trick never becomes the Location (it is refused or made a plain path).
    let answer = raw(
        gw.addr,
        format!("GET /\\evil.example HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 302"),
        "{answer}"
    );
    assert!(
        !answer.to_ascii_lowercase().contains("location: /\\"),
        "{answer}"
    );
}

// Behaviour: a cookie that does not open (one character changed) is session_invalid: an
// API call gets 401 invalid_token (never a redirect) and a navigation is sent to sign in
// again; both tell the browser to drop the cookie and both count as session_invalid.
#[tokio::test]
async fn login_tampered_cookie_is_session_invalid() {
    let (_op, up, gw) = start(Client::Web, &[], &[]).await;
    let (session, _) = sign_in(&gw, "/dash", "alice").await;
    let mut bytes = session.into_bytes();
    let i = "tollgate_session=".len() + 40;
    bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(bytes).unwrap();

    let r = api_call(&gw, "/dash/data", Some(&tampered)).await;
    assert!(r.headers().get(LOCATION).is_none());
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.name == "tollgate_session" && c.clears()),
        "{:?}",
        r.headers()
    );
    let www = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    let (status, code, description) = error_of(r).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"));
    assert!(
        description.contains("session cookie refused"),
        "{description}"
    );
    assert!(
        !description.contains(&tampered[17..60]),
        "no cookie value in errors"
    );

    let r = navigate(&gw, "/dash/page", Some(&tampered)).await;
    assert_eq!(r.status(), 302);
    assert!(query(&location(&r)).contains_key("code_challenge"));
    let set = set_cookies(&r);
    assert!(set
        .iter()
        .any(|c| c.name == "tollgate_session" && c.clears()));
    assert!(set.iter().any(|c| c.name.starts_with("tollgate_state.")));
    assert_eq!(up.count(), 0);
    assert_eq!(
        metric(
            &gw,
            "tollgate_auth_denied_total{route=\"dashboard\",reason=\"session_invalid\"}"
        )
        .await,
        2.0
    );
}

/// Waits (polling the clock) until a token expiring at `exp` has less than a minute left.
async fn until_refresh_due(exp: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while now() < exp - 60 {
        assert!(
            Instant::now() < deadline,
            "clock never reached {}",
            exp - 60
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One more second: tollgate refreshes when *less* than 60 s remain.
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

// Behaviour: with less than 60 s left on the access token the session is refreshed with
// its refresh token — once for many concurrent requests (single flight) — and each
// answer carries the new cookie; the old cookie keeps working for a while (the provider
// rotated the refresh token, the result is kept). A replica that has not seen that
// refresh and uses the old, rotated refresh token is refused by the provider, and an
// unreachable provider fails the refresh too: both are session_invalid (401 for an API
// call, a new sign-in for a navigation). The public client (no secret) signs in with
// PKCE alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refresh_single_flight_and_failures() {
    let (op, up, gw) = start(Client::Spa, &["--login-access-token-ttl", "62"], &[]).await;
    let (s0, _) = sign_in(&gw, "/dash", "bob").await;
    let r = api_call(&gw, "/dash/0", Some(&s0)).await;
    assert_eq!(r.status(), 200);
    assert!(
        !set_cookies(&r).iter().any(|c| c.name == "tollgate_session"),
        "fresh token: no refresh"
    );
    let t0 = upstream_token(&up);
    let exp0 = claims(&t0)["exp"].as_i64().unwrap();
    until_refresh_due(exp0).await;

    let before = up.count();
    let mut calls = Vec::new();
    for i in 0..8 {
        let (gw_url, s0) = (gw.url(&format!("/dash/{i}")), s0.clone());
        calls.push(tokio::spawn(async move {
            http()
                .get(gw_url)
                .header(ACCEPT, "application/json")
                .header(COOKIE, s0)
                .send()
                .await
                .unwrap()
        }));
    }
    let mut s1 = String::new();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status(), 200);
        s1 = session_of(&r);
    }
    assert_eq!(
        metric(&gw, "tollgate_session_refreshes_total{result=\"success\"}").await,
        1.0,
        "one refresh for eight concurrent requests"
    );
    let seen: Vec<String> = up.seen.lock().unwrap()[before..]
        .iter()
        .map(|s| s.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 8);
    assert!(
        seen.iter().all(|a| *a == seen[0]),
        "all got the refreshed token"
    );
    let t1 = seen[0].strip_prefix("Bearer ").unwrap().to_owned();
    assert_ne!(t1, t0);
    assert!(claims(&t1)["exp"].as_i64().unwrap() > exp0);
    assert_eq!(claims(&t1)["sub"], "bob");
    // The old cookie, sent before the browser stored the new one, still works.
    let r = api_call(&gw, "/dash/late", Some(&s0)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(upstream_token(&up), t1);

    // Another replica (same cookie_secret, its own caches) refreshes with the rotated
    // refresh token: the provider refuses it.
    let other = spawn_gateway(&login_yaml(&op, &up, Client::Spa, COOKIE_SECRET)).await;
    let r = api_call(&other, "/dash/x", Some(&s0)).await;
    assert!(set_cookies(&r)
        .iter()
        .any(|c| c.name == "tollgate_session" && c.clears()));
    let (status, code, description) = error_of(r).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"));
    assert!(
        description.contains("could not be refreshed"),
        "{description}"
    );
    assert!(description.contains("invalid_grant"), "{description}");
    assert_eq!(
        metric(
            &other,
            "tollgate_session_refreshes_total{result=\"failure\"}"
        )
        .await,
        1.0
    );

    // The provider goes away: the next refresh fails; a navigation signs in again.
    let exp1 = claims(&t1)["exp"].as_i64().unwrap();
    drop(op);
    until_refresh_due(exp1).await;
    let r = navigate(&gw, "/dash/page", Some(&s1)).await;
    assert_eq!(r.status(), 302, "{:?}", r.headers());
    assert!(set_cookies(&r)
        .iter()
        .any(|c| c.name == "tollgate_session" && c.clears()));
    let r = api_call(&gw, "/dash/data", Some(&s1)).await;
    let (status, _, description) = error_of(r).await;
    assert_eq!(status, 401);
    assert!(description.contains("unreachable"), "{description}");
    assert_eq!(
        metric(
            &gw,
            "tollgate_auth_denied_total{route=\"dashboard\",reason=\"session_invalid\"}"
        )
        .await,
        2.0
    );
}

// Behaviour: sessions are stateless: two tollgate processes with the same cookie_secret
// serve one session (signed in at one, used and logged out at the other); a process
// with another cookie_secret refuses it (session_invalid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_two_processes_share_one_session() {
    let op = OidcProvider::spawn_with(&[]);
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, login_yaml(&op, &up, Client::Web, COOKIE_SECRET)).unwrap();
    let a = spawn_binary(&config, &["run"]);
    let b = spawn_binary(&config, &["run"]);
    assert_ne!(a.public, b.public);
    let as_gw = |public: &str| Gw {
        running: None,
        addr: public.parse().unwrap(),
        admin: None,
        dir: tempfile::tempdir().unwrap(),
    };
    let (gw_a, gw_b) = (as_gw(&a.public), as_gw(&b.public));
    // Wait until both have fetched the provider's discovery document and keys.
    for gw in [&gw_a, &gw_b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = navigate(gw, "/dash", None).await;
            if r.status() == 302 {
                break;
            }
            assert!(Instant::now() < deadline, "{:?}", r.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (session, _) = sign_in(&gw_a, "/dash", "carol").await;
    let r = api_call(&gw_b, "/dash/data", Some(&session)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header("x-auth-subject"), Some("carol"));
    let r = api_call(&gw_a, "/dash/data", Some(&session)).await;
    assert_eq!(r.status(), 200);
    let r = navigate(&gw_b, "/oauth2/logout", Some(&session)).await;
    assert_eq!(r.status(), 302);
    assert!(query(&location(&r)).contains_key("id_token_hint"));

    let other_secret = spawn_gateway(&login_yaml(
        &op,
        &up,
        Client::Web,
        "another-cookie-secret-0123456789abcdefgh",
    ))
    .await;
    let r = api_call(&other_secret, "/dash/data", Some(&session)).await;
    let (status, _, description) = error_of(r).await;
    assert_eq!(status, 401);
    assert!(
        description.contains("session cookie refused"),
        "{description}"
    );
    // No log line of either process holds the session cookie or a token.
    let value = session.split_once('=').unwrap().1;
    for (p, says) in [(&a, "signed in"), (&b, "signed out")] {
        // The line is read from the process's stderr by another thread: wait for it.
        let logs = eventually(
            &format!("a \"{says}\" line naming carol"),
            Duration::from_secs(20),
            async || p.logs.lock().unwrap().join("\n"),
            |logs: &String| logs.contains(says) && logs.contains("carol"),
        )
        .await;
        assert!(
            !logs.contains(&value[..40]),
            "a log line holds the session cookie"
        );
        assert!(!logs.contains("eyJ"), "a log line holds a JWT:\n{logs}");
        assert!(
            !logs.contains("code="),
            "a log line holds the callback's code:\n{logs}"
        );
    }
}

// Behaviour: `tollgate validate` accepts a login section with cookie_secure: false but
// says in its summary that this is for local development only; cookie_secret may come
// from a file (the Kubernetes Secret-volume way). Literal YAML: `validate` on a given
// text is what this tests.
#[test]
fn login_validate_warns_about_plain_http_cookies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cookie-secret"),
        format!("{}\n", "k".repeat(48)),
    )
    .unwrap();
    let yaml = |secure: &str| {
        format!(
            r#"server:
  listen: "127.0.0.1:0"
issuers:
  - name: corp
    issuer: "https://idp.example"
    discovery: "https://idp.example/.well-known/openid-configuration"
    audiences: [api]
login:
  issuer: corp
  client_id: web
  cookie_secret: "${{file:cookie-secret}}"
{secure}upstreams:
  - name: u
    url: "http://127.0.0.1:9"
routes:
  - name: dash
    path_prefix: /dash
    upstream: u
    auth: {{login: true}}
"#
        )
    };
    let validate = |text: String| {
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .env_remove("TOLLGATE_CONFIG")
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // stdout: the one-line summary, naming the sign-in; stderr: the warning, located.
    let (code, text, warnings) = validate(yaml("  cookie_secure: false\n"));
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("OK"), "{text}");
    assert!(
        text.contains(", browser sign-in with issuer corp,"),
        "{text}"
    );
    assert!(text.ends_with("(1 warning(s))\n"), "{text}");
    assert!(
        warnings.contains("login.cookie_secure: warning: "),
        "{warnings}"
    );
    let (code, text, warnings) = validate(yaml(""));
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("browser sign-in with issuer corp"), "{text}");
    assert!(!text.contains("warning"), "{text}");
    assert!(warnings.is_empty(), "{warnings}");
}
