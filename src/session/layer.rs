//! Browser sign-in in the request path, as a layer: after the token service's endpoints,
//! before `body_credentials` and the gate.
//!
//! - Without a `login:` section: nothing (one extension lookup).
//! - `{callback_path}` and `{logout_path}` are answered here (like the token service's
//!   paths, on any host, without a route).
//! - Any other route: tollgate's own cookies are removed from what goes upstream.
//! - A `login: true` route without a Bearer token: a valid `tollgate_session` cookie's
//!   access token is set as `Authorization: Bearer` for the gate (refreshed first when
//!   less than a minute is left, one refresh in flight per session); no session and a
//!   browser navigation: 302 to the identity provider; anything else goes on to the
//!   gate, which answers 401. A session that cannot be opened, has expired or could not
//!   be refreshed is `session_invalid`: a navigation signs in again, an API call gets
//!   401. Either way the browser is told to drop the cookie.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, LOCATION, SET_COOKIE,
};
use http::{Method, Request, Response, StatusCode};

use super::flow::{self, Endpoints, FlowError};
use super::{
    cookie, same_origin, state_cookie, Login, Session, SignIn, REFRESHED_KEPT, REFRESH_BEFORE,
    SIGN_IN_TIMEOUT,
};
use crate::auth::{self, now_secs};
use crate::body::{empty, Body};
use crate::conn::ConnInfo;
use crate::decision::{self, Trace};
use crate::error::{Denied, DenyReason, GatewayError, Rejection};
use crate::gateway::Gateway;
use crate::route::layer::{request_host, routed, Routed};
use crate::secret::constant_time_eq;
use crate::service::{take_ready, OnOutcome, Outcome, Step, Then};

/// Sessions for `login: true` routes; the sign-in callback and logout.
#[derive(Clone)]
pub struct SessionLayer {
    gw: Arc<Gateway>,
}

impl SessionLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        SessionLayer { gw }
    }
}

impl<S> tower::Layer<S> for SessionLayer {
    type Service = Sessions<S>;
    fn layer(&self, inner: S) -> Sessions<S> {
        Sessions {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Sessions<S> {
    inner: S,
    gw: Arc<Gateway>,
}

/// On the way out: cookies to set (a refreshed session) or to clear (an invalid one),
/// on any answer, refusals included.
#[derive(Default)]
pub struct SetCookies(Vec<HeaderValue>);

impl OnOutcome for SetCookies {
    fn on_outcome(self, out: Outcome) -> Outcome {
        if self.0.is_empty() {
            return out;
        }
        match out {
            Ok(mut resp) => {
                for v in self.0 {
                    resp.headers_mut().append(SET_COOKIE, v);
                }
                Ok(resp)
            }
            Err(rej) => Err(rej.with_headers(|h| {
                for v in self.0 {
                    h.append(SET_COOKIE, v);
                }
            })),
        }
    }
}

fn with_cookies(out: Outcome, cookies: Vec<HeaderValue>) -> Outcome {
    SetCookies(cookies).on_outcome(out)
}

fn pass<F>(fut: F) -> Then<F, SetCookies> {
    Then::new(Step::inner(fut), SetCookies::default())
}

/// What the answer needs from the request once it has moved on.
struct Asked {
    /// GET or HEAD with `Accept` containing `text/html`.
    navigation: bool,
    /// `{scheme}://{host}` as the browser sees this gateway.
    origin: Option<String>,
    /// The page asked for, as a path on this host.
    return_to: String,
    /// Session cookie parts the browser sent (to clear them).
    sent_parts: usize,
    trace: Option<Trace>,
}

impl Asked {
    fn of<B>(req: &Request<B>, sent_parts: usize) -> Asked {
        Asked {
            navigation: is_navigation(req),
            origin: origin(req),
            return_to: return_to(req),
            sent_parts,
            trace: decision::of(req),
        }
    }

    fn note(&self, line: impl FnOnce() -> String) {
        if let Some(t) = &self.trace {
            t.push(line());
        }
    }
}

/// A browser loading a page (SPEC): `GET`/`HEAD` with `Accept` containing `text/html`.
fn is_navigation<B>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && req.headers().get_all(ACCEPT).iter().any(|v| {
            v.as_bytes()
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"text/html"))
        })
}

/// `{scheme}://{host}`: https on a TLS listener or behind a proxy that says
/// `X-Forwarded-Proto: https`; the host as the client named it.
fn origin<B>(req: &Request<B>) -> Option<String> {
    let tls = req
        .extensions()
        .get::<Arc<ConnInfo>>()
        .is_some_and(|c| c.tls);
    let forwarded_https = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let scheme = if tls || forwarded_https {
        "https"
    } else {
        "http"
    };
    let host = request_host(req)?;
    let authority: http::uri::Authority = host.to_str().ok()?.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    Some(format!(
        "{scheme}://{}",
        authority.as_str().to_ascii_lowercase()
    ))
}

/// The page asked for, to come back to after sign-in: the normalised path (never `//`)
/// and the query, as a path on this host.
fn return_to<B>(req: &Request<B>) -> String {
    let path = routed(req).map_or("/", |r| r.path.as_str());
    let full = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    if same_origin(&full).is_some() {
        return full;
    }
    same_origin(path).unwrap_or("/").to_owned()
}

fn session_invalid(description: String) -> GatewayError {
    GatewayError::Unauthorized {
        reason: DenyReason::SessionInvalid,
        description,
    }
}

/// A 302 to `location`, never cached.
fn redirect(location: &str) -> Result<Response<Body>, GatewayError> {
    let mut loc = HeaderValue::from_str(location)
        .map_err(|_| GatewayError::BadRequest("cannot redirect to that address".into()))?;
    // It may carry an id_token_hint.
    loc.set_sensitive(true);
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::FOUND;
    r.headers_mut().insert(LOCATION, loc);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The sign-in redirect: a fresh `state`, `nonce` and PKCE verifier sealed into a
/// short-lived cookie sent only to the callback path, and a 302 to the authorization
/// endpoint. `invalid`: why the session the browser had was refused (recorded as a
/// `session_invalid` denial).
fn redirect_to_sign_in(
    login: &Login,
    ep: &Endpoints,
    asked: &Asked,
    clear: Vec<HeaderValue>,
    invalid: Option<String>,
) -> Outcome {
    let Some(origin) = &asked.origin else {
        let e = GatewayError::BadRequest(
            "no usable Host header: cannot build the sign-in redirect URI".into(),
        );
        return with_cookies(Err(e.into()), clear);
    };
    let s = SignIn::start(
        asked.return_to.clone(),
        format!("{origin}{}", login.callback_path),
        now_secs(),
    );
    let state = login.seal_state(&s).and_then(|sealed| {
        cookie::set(
            &state_cookie(&s.state),
            &sealed,
            cookie::Attrs {
                path: &login.callback_path,
                secure: login.cookie_secure,
                max_age_secs: SIGN_IN_TIMEOUT.as_secs(),
            },
        )
    });
    let Some(state) = state else {
        return Err(GatewayError::ServiceUnavailable("cannot seal the sign-in state").into());
    };
    let mut resp = redirect(&flow::authorization_url(login, ep, &s))?;
    resp.headers_mut().append(SET_COOKIE, state);
    if let Some(description) = invalid {
        resp.extensions_mut().insert(Denied {
            reason: DenyReason::SessionInvalid,
            status: StatusCode::FOUND,
            description: description.into(),
        });
    }
    with_cookies(Ok(resp), clear)
}

/// The sign-in redirect, inline when the identity provider's endpoints are known.
fn sign_in<F>(
    login: Arc<Login>,
    asked: Asked,
    clear: Vec<HeaderValue>,
    invalid: Option<String>,
) -> Step<F> {
    if let Some(ep) = flow::endpoints_now(&login) {
        return Step::done(redirect_to_sign_in(&login, &ep, &asked, clear, invalid));
    }
    Step::boxed(async move {
        match flow::endpoints(&login).await {
            Ok(ep) => redirect_to_sign_in(&login, &ep, &asked, clear, invalid),
            Err(e) => with_cookies(Err(e.into()), clear),
        }
    })
}

/// A session refused: the browser drops it; a navigation signs in again, anything else
/// gets 401 `session_invalid`.
fn refuse<F>(login: Arc<Login>, asked: Asked, why: String) -> Then<F, SetCookies> {
    asked.note(|| format!("session: invalid: {why}"));
    let clear = cookie::clear_session(asked.sent_parts, login.cookie_secure);
    if asked.navigation {
        asked.note(|| "session: a browser navigation: signs in again".into());
        return Then::new(
            sign_in(login, asked, clear, Some(why)),
            SetCookies::default(),
        );
    }
    Then::new(Step::reject(session_invalid(why)), SetCookies(clear))
}

/// [`refuse`], from a slow path.
async fn refused(login: Arc<Login>, asked: Asked, why: String) -> Outcome {
    let clear = cookie::clear_session(asked.sent_parts, login.cookie_secure);
    if !asked.navigation {
        return with_cookies(Err(session_invalid(why).into()), clear);
    }
    match flow::endpoints(&login).await {
        Ok(ep) => redirect_to_sign_in(&login, &ep, &asked, clear, Some(why)),
        Err(e) => with_cookies(Err(e.into()), clear),
    }
}

/// Presents the session's access token to the gate as a Bearer token.
fn present<B>(req: &mut Request<B>, token: &str) -> bool {
    match HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(mut v) => {
            v.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, v);
            true
        }
        Err(_) => false,
    }
}

/// How long a refresh's result is handed to other requests with the same refresh token
/// (`remaining`: seconds the new access token lives; 0 or less: unknown): at most
/// [`REFRESHED_KEPT`], and never once the new token is itself due for a refresh — for
/// tokens that live under a minute, just long enough for requests sent together.
fn keep_refreshed(remaining: i64) -> Duration {
    let due_in = remaining - REFRESH_BEFORE.as_secs() as i64;
    let secs = if remaining <= 0 {
        REFRESHED_KEPT.as_secs() as i64
    } else if due_in >= 1 {
        due_in.min(REFRESHED_KEPT.as_secs() as i64)
    } else {
        (remaining / 2).clamp(1, 5)
    };
    Duration::from_secs(secs as u64)
}

/// One refresh at the identity provider, counted and logged, with how long its result is
/// shared with the session's other requests.
async fn refresh_at_idp(
    gw: &Gateway,
    login: &Login,
    refresh_token: &str,
    subject: &str,
) -> (Result<Arc<flow::Tokens>, FlowError>, Duration) {
    let r = match flow::endpoints(login).await {
        Ok(ep) => flow::refresh(login, &ep, refresh_token).await.map(Arc::new),
        Err(e) => Err(FlowError::Unreachable(e.to_string())),
    };
    gw.metrics.session_refresh(r.is_ok());
    let issuer = login.issuer_name();
    match &r {
        Ok(_) => tracing::info!(target: "tollgate::login", issuer, subject, "session refreshed"),
        Err(e) => {
            tracing::warn!(target: "tollgate::login", issuer, subject, "session refresh failed: {e}")
        }
    }
    let ttl = match &r {
        Ok(t) => keep_refreshed(t.access_expires(now_secs()) - now_secs()),
        // Requests waiting for this refresh share its failure.
        Err(_) => Duration::from_secs(5),
    };
    (r, ttl)
}

/// Whether an opened session may still be used (the refresh comes later).
fn usable(session: &Session, now: i64) -> Result<(), &'static str> {
    if session.session_expires <= now {
        return Err("the session has expired (login.session_ttl)");
    }
    if session.access_expired(now) && session.refresh_token.is_none() {
        return Err("the session's access token has expired and the session has no refresh token");
    }
    Ok(())
}

fn human(secs: i64) -> String {
    if secs < 0 {
        return format!("{} ago", auth::jwt::ago(-secs));
    }
    format!("in {}", auth::jwt::ago(secs))
}

impl<S, B> tower::Service<Request<B>> for Sessions<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Then<S::Future, SetCookies>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(routed) = routed(&req) else {
            return pass(self.inner.call(req));
        };
        let Some(login) = routed.snapshot.login.clone() else {
            return pass(self.inner.call(req));
        };
        match routed.route.as_ref().map(|r| r.login) {
            Some(true) => self.login_route(req, login),
            Some(false) => {
                cookie::strip_own(req.headers_mut());
                pass(self.inner.call(req))
            }
            // The callback and logout paths (and the token service's) have no route.
            None => {
                if login.serves(&routed.path) {
                    return self.endpoint(req, login);
                }
                cookie::strip_own(req.headers_mut());
                pass(self.inner.call(req))
            }
        }
    }
}

impl<S> Sessions<S> {
    /// A `login: true` route: the Bearer token, else the session, else a sign-in (for
    /// a navigation) or on to the gate (which answers 401).
    fn login_route<B, F>(&mut self, mut req: Request<B>, login: Arc<Login>) -> Then<F, SetCookies>
    where
        S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection, Future = F>
            + Clone
            + Send
            + 'static,
        F: std::future::Future<Output = Outcome> + Send,
        B: Send + 'static,
    {
        if crate::auth::sender::presented_token(req.headers()).is_some() {
            decision::note(&req, || {
                "session: a Bearer token is present; a session cookie would not be used".into()
            });
            cookie::strip_own(req.headers_mut());
            return pass(self.inner.call(req));
        }
        let sent = cookie::session_value(req.headers());
        cookie::strip_own(req.headers_mut());
        let asked = Asked::of(&req, sent.as_ref().map_or(0, |s| s.1));
        let Some((sealed, _)) = sent else {
            if asked.navigation {
                asked.note(|| {
                    format!(
                        "session: none; a browser navigation: redirected to sign in at issuer {}",
                        login.issuer_name()
                    )
                });
                return Then::new(
                    sign_in(login, asked, Vec::new(), None),
                    SetCookies::default(),
                );
            }
            asked.note(|| {
                "session: none (a browser navigation, GET/HEAD with Accept: text/html, would be sent to sign in; other requests get 401)".into()
            });
            return pass(self.inner.call(req));
        };
        let session = match login.open_session(&sealed) {
            Ok(s) => s,
            Err(e) => return refuse(login, asked, format!("session cookie refused: {e}")),
        };
        let now = now_secs();
        if let Err(why) = usable(&session, now) {
            return refuse(login, asked, why.into());
        }
        asked.note(|| {
            format!(
                "session: cookie opened (subject {}, access token expires {}, session ends {})",
                session.subject.as_deref().unwrap_or("-"),
                if session.access_expires == 0 {
                    "at a time not known".to_owned()
                } else {
                    human(session.access_expires - now)
                },
                human(session.session_expires - now)
            )
        });
        if session.needs_refresh(now) {
            if let Some(rt) = session.refresh_token.clone() {
                if asked.trace.is_none() {
                    return self.refresh(req, login, asked, session, rt);
                }
                asked.note(|| {
                    "session: less than 60s left: the server would refresh the access token now (explain does not: a refresh token may be usable only once)".into()
                });
            }
        }
        if !present(&mut req, &session.access_token) {
            return refuse(
                login,
                asked,
                "the session's access token is not a valid header value".into(),
            );
        }
        asked.note(|| "session: its access token goes to the gate as a Bearer token".into());
        pass(self.inner.call(req))
    }

    /// The callback and logout paths.
    fn endpoint<B, F>(&mut self, req: Request<B>, login: Arc<Login>) -> Then<F, SetCookies> {
        let (parts, _body) = req.into_parts();
        let callback = parts
            .extensions
            .get::<Routed>()
            .is_some_and(|r| r.path == login.callback_path);
        let trace = parts.extensions.get::<Trace>().cloned();
        let allowed = if callback {
            matches!(parts.method, Method::GET)
        } else {
            matches!(parts.method, Method::GET | Method::POST)
        };
        if let Some(t) = &trace {
            t.push(format!(
                "sign-in: {} answered by tollgate itself",
                if callback { "callback" } else { "logout" }
            ));
        }
        if !allowed {
            let e = GatewayError::MethodNotAllowed {
                description: format!(
                    "{} answers {}",
                    if callback {
                        "the sign-in callback"
                    } else {
                        "logout"
                    },
                    if callback { "GET" } else { "GET and POST" }
                ),
                allow: if callback { "GET" } else { "GET, POST" },
            };
            return Then::new(Step::reject(e), SetCookies::default());
        }
        let gw = self.gw.clone();
        let origin = origin(&Request::from_parts(parts.clone(), ()));
        Then::new(
            Step::boxed(async move {
                if callback {
                    callback_answer(&login, &gw, &parts).await
                } else {
                    logout_answer(&login, &parts.headers, origin.as_deref()).await
                }
            }),
            SetCookies::default(),
        )
    }

    /// Refreshes the session's access token (one refresh per session in flight), then
    /// serves the request with the new one and sets the new cookie.
    fn refresh<B, F>(
        &mut self,
        mut req: Request<B>,
        login: Arc<Login>,
        asked: Asked,
        session: Session,
        refresh_token: String,
    ) -> Then<F, SetCookies>
    where
        S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection, Future = F>
            + Clone
            + Send
            + 'static,
        F: std::future::Future<Output = Outcome> + Send,
        B: Send + 'static,
    {
        let mut inner = take_ready(&mut self.inner);
        let gw = self.gw.clone();
        Then::new(
            Step::boxed(async move {
                let key = login.refresh_key(&refresh_token);
                let result = gw
                    .login_sessions
                    .refreshes
                    .get_or_fetch(&key, || {
                        let subject = session.subject.as_deref().unwrap_or("-");
                        refresh_at_idp(&gw, &login, &refresh_token, subject)
                    })
                    .await;
                let tokens = match result {
                    Ok(t) => t,
                    Err(e) => {
                        let why = format!("the session could not be refreshed: {e}");
                        return refused(login, asked, why).await;
                    }
                };
                let now = now_secs();
                let renewed = Session {
                    access_token: tokens.access_token.clone(),
                    access_expires: tokens.access_expires(now),
                    refresh_token: tokens
                        .refresh_token
                        .clone()
                        .or(session.refresh_token.clone()),
                    id_token: session
                        .id_token
                        .as_ref()
                        .map(|old| tokens.id_token.clone().unwrap_or_else(|| old.clone())),
                    ..session
                };
                let cookies = login.seal_session(&renewed).and_then(|sealed| {
                    cookie::session_cookies(
                        &sealed,
                        asked.sent_parts,
                        login.session_attrs(renewed.max_age(now)),
                    )
                });
                let Some(cookies) = cookies else {
                    let why = "the refreshed session is too large for its cookies".into();
                    return refused(login, asked, why).await;
                };
                if !present(&mut req, &renewed.access_token) {
                    let why = "the refreshed access token is not a valid header value".into();
                    return refused(login, asked, why).await;
                }
                let out = inner.call(req).await;
                with_cookies(out, cookies)
            }),
            SetCookies::default(),
        )
    }
}

/// A sign-in that did not complete: 400 `invalid_request` saying which step failed,
/// counted and logged; the state cookie is dropped.
fn sign_in_failed(
    gw: &Gateway,
    login: &Login,
    result: &'static str,
    why: String,
    clear: Vec<HeaderValue>,
) -> Outcome {
    gw.metrics.sign_in(result);
    tracing::info!(target: "tollgate::login", issuer = login.issuer_name(), result, "sign-in failed: {why}");
    with_cookies(Err(GatewayError::BadRequest(why).into()), clear)
}

/// Why a sign-in did not complete: the `tollgate_sign_ins_total` result, and the reason.
type Failed = (&'static str, String);

/// `GET {callback_path}?code=..&state=..`: checks the state against this browser's
/// state cookie, exchanges the code (with the PKCE verifier), verifies the ID token,
/// sets the session cookie and sends the browser back to the page it first asked for.
async fn callback_answer(login: &Login, gw: &Gateway, parts: &http::request::Parts) -> Outcome {
    let mut q: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        q.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    let Some(state) = q.get("state").filter(|s| !s.is_empty()) else {
        let why = "the sign-in callback has no state parameter".into();
        return sign_in_failed(gw, login, "state_invalid", why, Vec::new());
    };
    let name = state_cookie(state);
    let clear: Vec<HeaderValue> = cookie::clear(&name, &login.callback_path, login.cookie_secure)
        .into_iter()
        .collect();
    let now = now_secs();
    let checked = callback_checks(login, &q, state, cookie::get(&parts.headers, &name), now);
    let (s, code) = match checked {
        Ok(x) => x,
        Err((result, why)) => return sign_in_failed(gw, login, result, why, clear),
    };
    let session = match complete(login, &s, code, now).await {
        Ok(x) => x,
        Err((result, why)) => return sign_in_failed(gw, login, result, why, clear),
    };
    let sent = cookie::session_value(&parts.headers).map_or(0, |s| s.1);
    let cookies = login.seal_session(&session).and_then(|sealed| {
        cookie::session_cookies(&sealed, sent, login.session_attrs(session.max_age(now)))
    });
    let Some(cookies) = cookies else {
        let why = "the identity provider's tokens are too large for the session cookies".into();
        return sign_in_failed(gw, login, "exchange_failed", why, clear);
    };
    gw.metrics.sign_in("success");
    let subject = session.subject.as_deref().unwrap_or("-");
    tracing::info!(target: "tollgate::login", issuer = login.issuer_name(), subject, "signed in");
    let back = same_origin(&s.return_to).unwrap_or("/");
    let mut all = clear;
    all.extend(cookies);
    with_cookies(redirect(back).map_err(Into::into), all)
}

/// The callback's parameters against this browser's sign-in (its state cookie's
/// `sealed` value): the sign-in and the authorization code.
fn callback_checks<'q>(
    login: &Login,
    q: &'q HashMap<String, String>,
    state: &str,
    sealed: Option<&str>,
    now: i64,
) -> Result<(SignIn, &'q str), Failed> {
    if let Some(error) = q.get("error") {
        let why = format!(
            "the identity provider did not sign the user in: {}{}",
            flow::clean(error),
            q.get("error_description")
                .map(|d| format!(" ({})", flow::clean(d)))
                .unwrap_or_default()
        );
        return Err(("idp_error", why));
    }
    let Some(sealed) = sealed else {
        let why = "state does not match a sign-in started in this browser (its cookie is missing or has expired): open the page again to sign in";
        return Err(("state_invalid", why.into()));
    };
    let s = login.open_state(sealed).map_err(|e| {
        let why = format!("the sign-in state cookie was refused: {e}");
        ("state_invalid", why)
    })?;
    if !constant_time_eq(s.state.as_bytes(), state.as_bytes()) {
        return Err((
            "state_invalid",
            "state does not match this browser's sign-in".into(),
        ));
    }
    if now - s.created > SIGN_IN_TIMEOUT.as_secs() as i64 {
        let why = "the sign-in took longer than 10 minutes: open the page again";
        return Err(("state_invalid", why.into()));
    }
    // RFC 9207: a provider that names itself must be the one this sign-in went to.
    if let Some(iss) = q.get("iss") {
        if *iss != login.id_tokens.issuer {
            let why = format!(
                "the callback's iss \"{}\" is not the login issuer",
                flow::clean(iss)
            );
            return Err(("idp_error", why));
        }
    }
    match q.get("code").filter(|c| !c.is_empty()) {
        Some(code) => Ok((s, code.as_str())),
        None => Err((
            "idp_error",
            "the sign-in callback has neither a code nor an error".into(),
        )),
    }
}

/// The code for tokens, the ID token verified: the new session.
async fn complete(login: &Login, s: &SignIn, code: &str, now: i64) -> Result<Session, Failed> {
    let failed =
        |e: &dyn std::fmt::Display| ("exchange_failed", format!("the code exchange failed: {e}"));
    let ep = flow::endpoints(login).await.map_err(|e| failed(&e))?;
    let tokens = flow::exchange_code(login, &ep, code, s)
        .await
        .map_err(|e| failed(&e))?;
    let Some(id_token) = tokens.id_token.as_deref() else {
        let why = "the token endpoint returned no id_token (login.scopes must include openid)";
        return Err(("id_token_invalid", why.into()));
    };
    let id = flow::verify_id_token(login, id_token, &s.nonce)
        .await
        .map_err(|e| ("id_token_invalid", format!("the ID token was refused: {e}")))?;
    Ok(Session {
        access_token: tokens.access_token.clone(),
        refresh_token: tokens.refresh_token.clone(),
        // Kept only where it is needed: the logout's id_token_hint.
        id_token: ep.end_session.as_ref().map(|_| id_token.to_owned()),
        access_expires: tokens.access_expires(now),
        session_expires: now.saturating_add(login.session_ttl.as_secs() as i64),
        subject: Some(id.subject),
    })
}

/// `GET {logout_path}`: drops the session cookie(s) and sends the browser to the
/// identity provider's end-session endpoint (with `id_token_hint`) when it has one,
/// else to `post_logout_redirect_uri` or `/`.
async fn logout_answer(login: &Login, headers: &HeaderMap, origin: Option<&str>) -> Outcome {
    let sent = cookie::session_value(headers);
    let session = sent.as_ref().and_then(|(v, _)| login.open_session(v).ok());
    let clear = cookie::clear_session(sent.as_ref().map_or(1, |s| s.1), login.cookie_secure);
    let after = login.post_logout_redirect_uri.as_deref().and_then(|u| {
        if u.starts_with('/') {
            origin.map(|o| format!("{o}{u}"))
        } else {
            Some(u.to_owned())
        }
    });
    let ep = match flow::endpoints_now(login) {
        Some(ep) => Some(ep),
        None => flow::endpoints(login).await.ok(),
    };
    let location = match ep.as_ref().and_then(|e| e.end_session.as_ref()) {
        Some(end) => flow::end_session_url(
            login,
            end,
            session.as_ref().and_then(|s| s.id_token.as_deref()),
            after.as_deref(),
        ),
        None => login
            .post_logout_redirect_uri
            .clone()
            .unwrap_or_else(|| "/".into()),
    };
    tracing::info!(target: "tollgate::login", issuer = login.issuer_name(),
        subject = session.as_ref().and_then(|s| s.subject.as_deref()).unwrap_or("-"), "signed out");
    with_cookies(redirect(&location).map_err(Into::into), clear)
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::error::ResponseHeaders;
    use crate::route::layer::RouteLayer;
    use crate::testing::{gateway, get, Reached, Stub, CONFIG};

    const LOGIN: &str = r#"
server:
  listen: "127.0.0.1:0"
issuers:
  - name: corp
    issuer: "https://idp.example"
    discovery: "http://127.0.0.1:1/.well-known/openid-configuration"
    audiences: [api]
    fetch_timeout: 1s
login:
  issuer: corp
  client_id: web
  cookie_secret: "0123456789abcdef0123456789abcdef"
upstreams:
  - name: u
    url: "http://127.0.0.1:9"
routes:
  - name: dash
    path_prefix: /dash
    upstream: u
    auth: {login: true}
  - name: api
    path_prefix: /api
    upstream: u
    auth: {issuers: [corp]}
"#;

    fn with(uri: &str, headers: &[(&str, &str)]) -> Request<http_body_util::Empty<bytes::Bytes>> {
        let mut r = get(uri);
        for (k, v) in headers {
            r.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    fn sealed(gw: &Gateway, access_expires: i64, session_expires: i64) -> String {
        let rt = gw.current();
        let login = rt.login.as_ref().unwrap();
        let s = Session {
            access_token: "the-access-token".into(),
            refresh_token: None,
            id_token: None,
            access_expires,
            session_expires,
            subject: Some("alice".into()),
        };
        format!("tollgate_session={}", login.seal_session(&s).unwrap())
    }

    async fn call(
        gw: &Arc<Gateway>,
        req: Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> (Outcome, Reached) {
        let reached = Reached::default();
        let svc = RouteLayer::new(gw.clone())
            .layer(SessionLayer::new(gw.clone()).layer(Stub(reached.clone())));
        (svc.oneshot(req).await, reached)
    }

    // Behaviour: a valid session's access token reaches the next layer as a Bearer token;
    // tollgate's cookies never go on, other cookies do.
    #[tokio::test]
    async fn a_session_becomes_a_bearer_token() {
        let (gw, _dir) = gateway(LOGIN);
        let now = now_secs();
        let cookie = format!("a=1; {}; b=2", sealed(&gw, now + 300, now + 3600));
        let (out, reached) = call(&gw, with("/dash/x", &[("cookie", &cookie)])).await;
        out.expect("passed");
        let req = reached.last();
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer the-access-token");
        assert_eq!(req.headers()[http::header::COOKIE], "a=1; b=2");
    }

    // Behaviour: an expired session is refused as session_invalid (401 for an API call)
    // and the browser is told to drop it; nothing reaches the next layer.
    #[tokio::test]
    async fn an_expired_session_is_session_invalid() {
        let (gw, _dir) = gateway(LOGIN);
        let now = now_secs();
        let cookie = sealed(&gw, now + 300, now - 1);
        let (out, reached) = call(&gw, with("/dash/x", &[("cookie", &cookie)])).await;
        let rej = out.unwrap_err();
        assert_eq!(rej.error.deny_reason(), Some(DenyReason::SessionInvalid));
        assert_eq!(rej.error.status(), 401);
        assert!(
            rej.error.to_string().contains("session_ttl"),
            "{}",
            rej.error
        );
        let h = &rej
            .facts
            .get::<ResponseHeaders>()
            .expect("cookies to clear")
            .0;
        let clear = h[SET_COOKIE].to_str().unwrap();
        assert!(
            clear.starts_with("tollgate_session=;") && clear.contains("Max-Age=0"),
            "{clear}"
        );
        // An expired access token without a refresh token ends the session too.
        let cookie = sealed(&gw, now - 1, now + 3600);
        let (out, _) = call(&gw, with("/dash/x", &[("cookie", &cookie)])).await;
        assert!(out
            .unwrap_err()
            .error
            .to_string()
            .contains("no refresh token"));
        assert_eq!(reached.count(), 0);
    }

    // Behaviour: routes without login: true never take a session and never forward
    // tollgate's cookies; a Bearer token wins over a session; an API call without either
    // goes on to the gate (which answers 401); a browser navigation while the identity
    // provider cannot be reached is 502 naming the issuer.
    #[tokio::test]
    async fn other_routes_bearer_tokens_and_unknown_endpoints() {
        let (gw, _dir) = gateway(LOGIN);
        let now = now_secs();
        let cookie = format!("{}; keep=1", sealed(&gw, now + 300, now + 3600));
        let (out, reached) = call(&gw, with("/api/x", &[("cookie", &cookie)])).await;
        out.expect("passed");
        let req = reached.last();
        assert!(req.headers().get(AUTHORIZATION).is_none());
        assert_eq!(req.headers()[http::header::COOKIE], "keep=1");

        let headers = [
            ("cookie", cookie.as_str()),
            ("authorization", "Bearer mine"),
        ];
        let (out, reached) = call(&gw, with("/dash/x", &headers)).await;
        out.expect("passed");
        assert_eq!(reached.last().headers()[AUTHORIZATION], "Bearer mine");
        assert_eq!(reached.last().headers()[http::header::COOKIE], "keep=1");

        let (out, reached) = call(&gw, with("/dash/x", &[("accept", "application/json")])).await;
        out.expect("passed on to the gate");
        assert!(reached.last().headers().get(AUTHORIZATION).is_none());

        let nav = [("accept", "text/html"), ("host", "gw.example")];
        let (out, reached) = call(&gw, with("/dash/x", &nav)).await;
        let e = out.unwrap_err().error;
        assert_eq!(e.status(), 502, "{e}");
        assert!(e.to_string().contains("issuer corp"), "{e}");
        assert_eq!(reached.count(), 0);
    }

    // Behaviour: without a login section the layer touches nothing (cookies included).
    #[tokio::test]
    async fn without_login_nothing_changes() {
        let (gw, _dir) = gateway(CONFIG);
        let (out, reached) = call(
            &gw,
            with("/open/x", &[("cookie", "tollgate_session=x; a=1")]),
        )
        .await;
        out.expect("passed");
        assert_eq!(
            reached.last().headers()[http::header::COOKIE],
            "tollgate_session=x; a=1"
        );
    }

    // Behaviour: a refreshed token set is shared for at most a minute and never after
    // the new access token is itself due for a refresh; short-lived tokens are shared
    // only briefly (requests sent together), never past half their life.
    #[test]
    fn refreshed_tokens_are_kept_until_due() {
        assert_eq!(keep_refreshed(0), REFRESHED_KEPT);
        assert_eq!(keep_refreshed(3600), REFRESHED_KEPT);
        assert_eq!(keep_refreshed(90), Duration::from_secs(30));
        assert_eq!(keep_refreshed(61), Duration::from_secs(1));
        assert_eq!(keep_refreshed(60), Duration::from_secs(5));
        assert_eq!(keep_refreshed(8), Duration::from_secs(4));
        assert_eq!(keep_refreshed(1), Duration::from_secs(1));
    }
}
