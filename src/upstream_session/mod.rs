//! Between step 9 (upstream credentials) and step 10 (forwarding): the upstream's own
//! session, for upstreams that need one — SAP's X-CSRF-Token protocol
//! (`upstreams[].csrf`) — and the route's `strip_cookies`.
//!
//! An SAP OData service or Cloud Integration endpoint refuses a modifying request with
//! `403` + `X-CSRF-Token: Required` unless it carries a token fetched earlier
//! (`GET` with `X-CSRF-Token: Fetch`) *and* the session cookies that came with that
//! token. tollgate does this for its clients: one [`Session`] per upstream, credential
//! (the `Authorization` value sent upstream, hashed: never the token itself in a key)
//! and verified caller, holding the token and a cookie [`jar::Jar`]; one fetch in flight per
//! session; the token and the upstream's cookies stay inside tollgate. The request
//! orchestration (attach, send, replay once) is in [`layer`]; the body kept for the
//! replay in [`replay`].

pub mod jar;
pub mod layer;
pub mod replay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use opentelemetry::trace::SpanKind;
use sha2::{Digest, Sha256};

use crate::body::{empty, full, Body};
use crate::client::{send_pooled, UpstreamFailure, Wait};
use crate::error::{BadGateway, GatewayError, Timeout};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::request_id::X_REQUEST_ID;
use crate::trace_context::{TRACEPARENT, TRACESTATE};
use crate::upstream::{Csrf, Upstream};
use jar::{Jar, Stored};

pub static X_CSRF_TOKEN: HeaderName = HeaderName::from_static("x-csrf-token");

/// Sessions kept at most; past it, idle ones go first.
const MAX_SESSIONS: usize = 10_000;
/// A session unused this long is dropped (SAP's own session timeouts are shorter: its
/// cookies would be stale anyway).
const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Bytes of a fetch response (or a refused request's answer) read before it is dropped.
const MAX_FETCH_BODY: usize = 64 * 1024;

/// The methods that need a token (SAP: every method that is not "safe").
pub fn needs_token(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// `403` + `X-CSRF-Token: Required`: the upstream wants a (new) token.
pub fn token_required(status: StatusCode, h: &HeaderMap) -> bool {
    status == StatusCode::FORBIDDEN
        && h.get(&X_CSRF_TOKEN)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"required"))
}

/// The session of `up` for requests sent with `authorization` by the verified caller
/// `caller`: upstream name, origin, a hash of the credential and the caller's issuer,
/// client and subject. Two credentials never share a session, and neither do two
/// callers sent with the same upstream credentials (a technical user): what the
/// upstream keeps in a session for one caller's requests never serves another's.
pub fn session_key(
    up: &Upstream,
    authorization: Option<&HeaderValue>,
    caller: Option<&Identity>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        up.name.as_bytes(),
        up.scheme.as_str().as_bytes(),
        up.authority.as_str().as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    match authorization {
        Some(a) => {
            h.update([1]);
            h.update(a.as_bytes());
        }
        None => h.update([0]),
    }
    if let Some(id) = caller {
        h.update([1]);
        for part in [
            Some(&*id.issuer),
            id.client_id.as_deref(),
            id.subject.as_deref(),
        ] {
            match part {
                Some(p) => {
                    h.update([1]);
                    h.update((p.len() as u64).to_le_bytes());
                    h.update(p.as_bytes());
                }
                None => h.update([0]),
            }
        }
    }
    h.finalize().into()
}

/// The jar's view of a request target: origin + path.
pub fn target_url(origin: &url::Url, path: &str) -> url::Url {
    let mut u = origin.clone();
    u.set_path(path);
    u
}

/// Every upstream session; outlives reloads, dropped by `POST /admin/caches/flush`.
pub struct Sessions {
    map: DashMap<[u8; 32], Arc<Session>>,
    born: Instant,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            map: DashMap::new(),
            born: Instant::now(),
        }
    }
}

impl Sessions {
    fn now(&self) -> u64 {
        self.born.elapsed().as_secs()
    }

    /// The session for `key`, if there is one.
    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<Session>> {
        let s = self.map.get(key)?.clone();
        s.last_used.store(self.now(), Ordering::Relaxed);
        Some(s)
    }

    /// The session for `key`, made when there is none.
    pub fn get_or_create(&self, key: [u8; 32]) -> Arc<Session> {
        if let Some(s) = self.get(&key) {
            return s;
        }
        if self.map.len() >= MAX_SESSIONS {
            self.evict();
        }
        let now = self.now();
        self.map
            .entry(key)
            .or_insert_with(|| Arc::new(Session::new(now)))
            .clone()
    }

    /// Drops idle sessions; if that is not enough, the least recently used eighth.
    fn evict(&self) {
        let now = self.now();
        self.map.retain(|_, s| {
            now.saturating_sub(s.last_used.load(Ordering::Relaxed)) < SESSION_IDLE.as_secs()
        });
        if self.map.len() < MAX_SESSIONS {
            return;
        }
        let mut ages: Vec<u64> = self
            .map
            .iter()
            .map(|s| s.last_used.load(Ordering::Relaxed))
            .collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 8];
        self.map
            .retain(|_, s| s.last_used.load(Ordering::Relaxed) > cut);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops every session; returns how many there were.
    pub fn clear(&self) -> usize {
        let n = self.map.len();
        self.map.clear();
        n
    }
}

/// One upstream session: the CSRF token and the cookies it is bound to.
pub struct Session {
    state: Mutex<State>,
    /// One token fetch in flight per session.
    flight: tokio::sync::Mutex<()>,
    last_used: AtomicU64,
}

#[derive(Default)]
struct State {
    jar: Jar,
    fetched: Option<Fetched>,
    /// Bumped on every fetch, so that a refusal only invalidates the token it was for.
    generation: u64,
}

struct Fetched {
    /// `None`: the upstream answered the fetch without a token (it does not ask for one).
    token: Option<HeaderValue>,
    /// Cookies the fetch response set: the token is bound to them and is stale once any
    /// of them has expired.
    bound: Vec<String>,
}

/// A token ready to be sent, and the fetch it came from.
#[derive(Clone)]
pub struct Token {
    pub value: Option<HeaderValue>,
    pub generation: u64,
}

/// What a token fetch came to, when it is not a token.
pub enum FetchFailure {
    /// The upstream refused the credentials (401 or 403 without `Required`): its answer
    /// is passed on, like the answer to the request would have been.
    Refused(Response<Body>),
    Failed(GatewayError),
}

impl Session {
    fn new(now: u64) -> Self {
        Session {
            state: Mutex::new(State::default()),
            flight: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(now),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `Cookie` header for a request to `url`, from the session's jar.
    pub fn cookie_header(&self, url: &url::Url) -> Option<HeaderValue> {
        self.state().jar.header(url)
    }

    /// Takes the upstream's `Set-Cookie`s into the jar and removes them, and any
    /// `X-CSRF-Token`, from a response on its way to the client. Returns the names of
    /// the cookies stored.
    pub fn absorb(&self, h: &mut HeaderMap, url: &url::Url, upstream: &str) -> Vec<String> {
        let mut kept = Vec::new();
        if h.contains_key(header::SET_COOKIE) {
            let mut st = self.state();
            for v in h.get_all(header::SET_COOKIE) {
                match st.jar.store(v.as_bytes(), url) {
                    Stored::Kept(name) => kept.push(name),
                    Stored::Deleted(_) => {}
                    Stored::Refused(why) => {
                        tracing::debug!(upstream, why, "upstream cookie not stored")
                    }
                }
            }
            drop(st);
            h.remove(header::SET_COOKIE);
        }
        h.remove(&X_CSRF_TOKEN);
        kept
    }

    /// The current token, when there is one that is still usable.
    pub fn current(&self) -> Option<Token> {
        let st = self.state();
        let f = st.fetched.as_ref()?;
        if f.bound.iter().all(|c| st.jar.has(c)) {
            Some(Token {
                value: f.token.clone(),
                generation: st.generation,
            })
        } else {
            None
        }
    }

    /// The upstream said the token of `generation` is no good: forget it and the
    /// cookies of its session (the next fetch starts a fresh session). A newer token,
    /// fetched meanwhile by another request, is kept.
    pub fn invalidate(&self, generation: u64) {
        let mut st = self.state();
        if st.generation == generation && st.fetched.is_some() {
            st.fetched = None;
            st.jar.clear();
        }
    }

    /// A usable token, fetching one when needed (one fetch in flight per session:
    /// concurrent requests wait for it and use its result).
    pub async fn token(
        &self,
        up: &Upstream,
        csrf: &Csrf,
        authorization: Option<&HeaderValue>,
        head: &HeaderMap,
        metrics: &Metrics,
    ) -> Result<Token, FetchFailure> {
        if let Some(t) = self.current() {
            return Ok(t);
        }
        let _flight = self.flight.lock().await;
        if let Some(t) = self.current() {
            return Ok(t);
        }
        // A child span of the request's (tracing exports it): the upstream, the fetch
        // path and the answer's status — never the token or a cookie.
        let mut span = crate::otel::child("upstream.csrf_fetch", SpanKind::Client);
        if span.recording() {
            span.attr("tollgate.upstream", up.name.to_string())
                .attr("url.path", csrf.fetch_path.path().to_owned());
        }
        let r = self.fetch(up, csrf, authorization, head).await;
        if let Err(e) = &r {
            span.fail(match e {
                FetchFailure::Refused(resp) => format!("HTTP {}", resp.status().as_u16()),
                FetchFailure::Failed(e) => e.to_string(),
            });
        }
        drop(span);
        metrics.csrf_fetch(&up.name, r.is_ok());
        let (token, bound) = r?;
        let mut st = self.state();
        st.generation += 1;
        st.fetched = Some(Fetched {
            token: token.clone(),
            bound,
        });
        Ok(Token {
            value: token,
            generation: st.generation,
        })
    }

    /// `GET {fetch_path}` with `X-CSRF-Token: Fetch`, the credentials and the session's
    /// cookies, and the request's id, `traceparent` and `tracestate` (from `head`); keeps the cookies
    /// it sets.
    async fn fetch(
        &self,
        up: &Upstream,
        csrf: &Csrf,
        authorization: Option<&HeaderValue>,
        head: &HeaderMap,
    ) -> Result<(Option<HeaderValue>, Vec<String>), FetchFailure> {
        let url = target_url(&csrf.origin, csrf.fetch_path.path());
        let mut req = Request::get(Uri::from(csrf.fetch_path.clone()))
            .body(empty())
            .map_err(|_| failed(up, "the fetch path cannot be requested".into()))?;
        let h = req.headers_mut();
        h.insert(header::HOST, up.host.clone());
        h.insert(X_CSRF_TOKEN.clone(), HeaderValue::from_static("Fetch"));
        if let Some(a) = authorization {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        if let Some(c) = self.cookie_header(&url) {
            h.insert(header::COOKIE, c);
        }
        for name in [&X_REQUEST_ID, &TRACEPARENT, &TRACESTATE] {
            if let Some(v) = head.get(name) {
                h.insert(name.clone(), v.clone());
            }
        }
        let resp = send_pooled(up.pool(), req, Wait::upstream(up.timeout))
            .await
            .map_err(|f| FetchFailure::Failed(upstream_failure(up, f)))?;
        let (mut parts, body) = resp.into_parts();
        let token = parts
            .headers
            .get(&X_CSRF_TOKEN)
            .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"required") && !v.is_empty())
            .cloned()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let bound = self.absorb(&mut parts.headers, &url, &up.name);
        let status = parts.status;
        // Read (a bounded part of) the body so that the connection can be reused.
        let bytes = read_bounded(body, up.timeout).await;
        if status.is_success() {
            if token.is_none() {
                tracing::info!(upstream = %up.name, fetch_path = %csrf.fetch_path,
                    "the upstream answered the X-CSRF-Token fetch without a token; sending requests without one");
            }
            return Ok((token, bound));
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            && !token_required(status, &parts.headers)
        {
            tracing::warn!(upstream = %up.name, status = status.as_u16(),
                "the upstream refused the credentials of the X-CSRF-Token fetch");
            // The upstream's answer, with what the client needs of its head.
            let mut refused = Response::new(match bytes {
                Some(b) => full(b),
                None => empty(),
            });
            *refused.status_mut() = status;
            for name in [header::CONTENT_TYPE, header::WWW_AUTHENTICATE] {
                for v in parts.headers.get_all(&name) {
                    refused.headers_mut().append(name.clone(), v.clone());
                }
            }
            return Err(FetchFailure::Refused(refused));
        }
        tracing::warn!(upstream = %up.name, status = status.as_u16(), fetch_path = %csrf.fetch_path,
            "X-CSRF-Token fetch failed");
        Err(failed(
            up,
            format!(
                "GET {} answered {}",
                csrf.fetch_path.path(),
                status.as_u16()
            ),
        ))
    }
}

fn failed(up: &Upstream, reason: String) -> FetchFailure {
    FetchFailure::Failed(
        BadGateway::CsrfFetch {
            upstream: up.name.clone(),
            reason,
        }
        .into(),
    )
}

/// The same answers as a forwarded request's failure: 502 or 504.
fn upstream_failure(up: &Upstream, f: UpstreamFailure) -> GatewayError {
    match f {
        UpstreamFailure::Timeout => Timeout::Upstream {
            upstream: up.name.clone(),
            after: up.timeout,
        }
        .into(),
        UpstreamFailure::Connect(cause) => {
            tracing::warn!(upstream = %up.name, error = %cause, "X-CSRF-Token fetch: connect failed");
            BadGateway::Unreachable {
                upstream: up.name.clone(),
                cause,
            }
            .into()
        }
        UpstreamFailure::Broken(cause) => {
            tracing::warn!(upstream = %up.name, error = %cause, "X-CSRF-Token fetch failed");
            BadGateway::Reset {
                upstream: up.name.clone(),
                cause,
            }
            .into()
        }
    }
}

/// Reads and drops (a bounded part of) a response body that will not reach the client,
/// so that its connection can be reused.
pub async fn drain(body: Body, within: Duration) {
    read_bounded(body, within).await;
}

/// The whole body if it has at most `MAX_FETCH_BODY` bytes and arrives `within`.
async fn read_bounded<B>(mut body: B, within: Duration) -> Option<bytes::Bytes>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    let work = async {
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame.ok()?.into_data() {
                if out.len() + d.len() > MAX_FETCH_BODY {
                    return None;
                }
                out.extend_from_slice(&d);
            }
        }
        Some(out.freeze())
    };
    tokio::time::timeout(within, work).await.ok().flatten()
}
