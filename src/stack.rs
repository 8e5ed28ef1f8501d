//! The request path, in order. This is the one place the steps are composed; each
//! step lives in its own module and says where it sits.
//!
//!  1. accept, TLS, header size and read timeout ........ `listener`
//!  2. request id, access-log record, duration timer,
//!     load shedding (`max_concurrent_requests`) ......... here
//!  3. normalise the path, match the route (400 / 404) ... `route`
//!  4. CORS: answer preflights, remember the origin ...... `cors`
//!  5. endpoints tollgate serves itself .................. `token_service`
//!  6. `body_credentials` rewrite ........................ `credentials::body`
//!  7. authenticate the Bearer token ..................... `auth`
//!  8. authorise: clients, scopes, permissions ........... `policy`
//!  9. upstream credentials .............................. `credentials`
//! 10. forward, streaming ................................ `proxy`
//! 11. on the way out: error -> JSON, CORS headers, metrics, one access-log line
//!
//! The runtime model is loaded once (step 3) and carried along, so a reload never
//! changes the rules under a request in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::Rng;

use crate::auth::{self, Trace};
use crate::body::Body;
use crate::cors::{Cors, CorsGrant};
use crate::credentials::{self, UpstreamAuth};
use crate::error::{DenyReason, GatewayError};
use crate::gateway::Gateway;
use crate::policy::{self, Identity, RouteAuth};
use crate::proxy::{self, ForwardContext, X_REQUEST_ID};
use crate::route::{normalize_host, normalize_path};
use crate::runtime::{Route, Runtime};

/// Facts about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// `remote`'s IP as text, formatted once per connection (`X-Forwarded-For`, logs).
    pub ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> Self {
        let ip = HeaderValue::from_str(&remote.ip().to_string())
            .expect("an IP address is a valid header value");
        ConnInfo { remote, tls, ip }
    }
}

/// What the way out needs to know about the exchange.
#[derive(Default)]
struct Exchange {
    route: Option<Arc<Route>>,
    cors: Option<CorsGrant>,
    identity: Option<Arc<Identity>>,
    permission: Option<String>,
}

/// `X-Request-Id` kept when sane (1-128 of `[A-Za-z0-9._:-]`), else generated.
pub fn request_id<B>(req: &Request<B>) -> HeaderValue {
    if let Some(v) = req.headers().get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        {
            return v.clone();
        }
    }
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill(&mut bytes);
    HeaderValue::from_str(&crate::config::hex(&bytes)).unwrap_or(HeaderValue::from_static("0"))
}

/// 431 for heads over `max_header_bytes`, 413 for a declared body over `max_body_bytes`.
fn check_limits<B>(req: &Request<B>, limits: &crate::runtime::Limits) -> Result<(), GatewayError> {
    if head_size(req) > limits.max_header_bytes {
        return Err(GatewayError::HeaderTooLarge);
    }
    if let Some(cl) = req.headers().get(header::CONTENT_LENGTH) {
        match cl.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > limits.max_body_bytes => {
                return Err(GatewayError::PayloadTooLarge(limits.max_body_bytes))
            }
            Some(_) => {}
            None => return Err(GatewayError::BadRequest("invalid Content-Length".into())),
        }
    }
    Ok(())
}

fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    req.method().as_str().len()
        + uri
        + 12
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// One request counted against `max_concurrent_requests` while it is handled.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// Counts the request in; `None` (and not counted) when `limit` are in flight
    /// already: shed it rather than queue it.
    fn enter(count: &'a AtomicUsize, limit: usize) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(count))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Steps 2-11 for one request.
pub async fn handle(gw: Arc<Gateway>, conn: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let rt = gw.current();
    let rid = request_id(&req);
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let mut ex = Exchange::default();
    let timeout = rt.server.limits.request_timeout;
    let limit = rt.server.limits.max_concurrent_requests;
    let in_flight = InFlight::enter(&gw.metrics.in_flight, limit);
    if in_flight.is_none() {
        gw.metrics.shed_total.fetch_add(1, Ordering::Relaxed);
    }
    let shed = in_flight.is_none().then_some(limit);
    let result =
        match tokio::time::timeout(timeout, serve(&gw, &rt, &conn, req, &rid, &mut ex, shed)).await
        {
            Ok(r) => r,
            Err(_) => Err(GatewayError::GatewayTimeout(format!(
                "request did not complete within {timeout:?}"
            ))),
        };
    let rid_str = rid.to_str().unwrap_or("");
    let route_name: Arc<str> = ex
        .route
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| Arc::from("none"));
    drop(in_flight);
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(reason) = e.deny_reason() {
                gw.metrics.denied(&route_name, reason);
                tracing::info!(
                    target: "tollgate::auth",
                    request_id = rid_str,
                    route = &*route_name,
                    method = %method,
                    path = %raw_path,
                    permission = ex.permission.as_deref().unwrap_or("-"),
                    client = ex.identity.as_ref().and_then(|i| i.client_id.as_deref()).unwrap_or("-"),
                    reason = reason.as_str(),
                    status = e.status().as_u16(),
                    "denied: {e}"
                );
            }
            e.to_response(rid_str)
        }
    };
    // Step 11: on the way out.
    if let Some(cors) = ex.route.as_ref().and_then(|r| r.cors.as_ref()) {
        cors.apply(resp.headers_mut(), ex.cors.as_ref());
    }
    resp.headers_mut().insert(X_REQUEST_ID.clone(), rid.clone());
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    gw.metrics.request(&route_name, status, elapsed);
    crate::logging::access(&crate::logging::Access {
        request_id: rid_str,
        route: &route_name,
        method: method.as_str(),
        path: &raw_path,
        status,
        duration: elapsed,
        upstream: ex
            .route
            .as_ref()
            .and_then(|r| r.upstream.as_ref())
            .map(|u| &*u.name)
            .unwrap_or("-"),
        client: ex
            .identity
            .as_ref()
            .and_then(|i| i.client_id.as_deref())
            .unwrap_or("-"),
        remote: conn.ip.to_str().unwrap_or("-"),
    });
    resp
}

async fn serve(
    gw: &Arc<Gateway>,
    rt: &Arc<Runtime>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    rid: &HeaderValue,
    ex: &mut Exchange,
    shed: Option<usize>,
) -> Result<Response<Body>, GatewayError> {
    let limits = &rt.server.limits;
    // Step 1 leftovers that hyper cannot express: smuggling guards here; SPEC's JSON
    // 431/413 once the route is known, so that they carry CORS headers.
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding present".into(),
        ));
    }
    if h.get_all(header::HOST).iter().count() > 1 {
        return Err(GatewayError::BadRequest("more than one Host header".into()));
    }

    // Step 3: normalise, then route.
    let path = normalize_path(req.uri().path())
        .map_err(|e| GatewayError::BadRequest(format!("invalid path: {}", e.0)))?;

    // Step 5: endpoints tollgate serves itself.
    if let Some(ts) = &rt.token_service {
        if ts.serves(&path) {
            if let Some(limit) = shed {
                return Err(GatewayError::Overloaded(limit));
            }
            check_limits(&req, limits)?;
            return ts.handle(req, &path, &gw.metrics).await;
        }
    }

    let host_value = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let host = host_value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(normalize_host)
        .unwrap_or_default();
    let Some(route_id) = rt.table.lookup(&host, &path) else {
        return Err(GatewayError::NotFound);
    };
    let route = rt.routes[route_id].clone();
    ex.route = Some(route.clone());

    // Step 4: CORS.
    if let Some(cors) = &route.cors {
        ex.cors = cors.check(&req);
        if Cors::is_preflight(&req) {
            return Ok(cors.preflight(&req, ex.cors.as_ref()));
        }
    }
    // Shed once the route is known, so that the 503 carries CORS headers.
    if let Some(limit) = shed {
        return Err(GatewayError::Overloaded(limit));
    }
    check_limits(&req, limits)?;

    // Step 6: body credentials -> Authorization: Basic (bounded read).
    let mut query = req.uri().query().map(str::to_owned);
    let req: Request<Body> = match route.body_credentials {
        None => req.map(|b| {
            b.map_err(|e| Box::new(e) as crate::body::BoxError)
                .boxed_unsync()
        }),
        Some(bc) => {
            let (mut parts, body) = req.into_parts();
            let bytes = http_body_util::Limited::new(body, limits.max_body_bytes as usize)
                .collect()
                .await
                .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => GatewayError::PayloadTooLarge(limits.max_body_bytes),
                    Err(_) => GatewayError::BadRequest("could not read the request body".into()),
                })?
                .to_bytes();
            let bytes =
                match credentials::body::rewrite(&parts.headers, &bytes, bc.grant_type_to_query)? {
                    None => bytes,
                    Some((rest, auth, grant)) => {
                        credentials::body::apply_headers(&mut parts.headers, auth, rest.len());
                        if let Some(g) = grant {
                            let pair = form_urlencoded::Serializer::new(String::new())
                                .append_pair("grant_type", &g)
                                .finish();
                            query = Some(match query.take() {
                                Some(q) if !q.is_empty() => format!("{q}&{pair}"),
                                _ => pair,
                            });
                        }
                        rest
                    }
                };
            Request::from_parts(parts, crate::body::full(bytes))
        }
    };

    // Steps 7-8: authenticate and authorise.
    if let RouteAuth::Bearer(rule) = &route.auth {
        let Some(token) = auth::bearer(req.headers()) else {
            return Err(GatewayError::Unauthorized {
                reason: DenyReason::TokenMissing,
                description: "no Bearer token in the Authorization header".into(),
            });
        };
        let issuers: Vec<&Arc<auth::Issuer>> = rule
            .issuers
            .iter()
            .filter_map(|i| rt.issuers.get(*i))
            .collect();
        let id =
            auth::authenticate(&issuers, &gw.auth_caches, token, &mut Trace::default()).await?;
        ex.identity = Some(id.clone());
        let verdict = policy::authorize(rule, route.permissions.as_ref(), req.method(), &path, &id);
        ex.permission = verdict.permission.map(|p| p.path.clone());
        verdict.result?;
    }

    let Some(upstream) = route.upstream.clone() else {
        return Err(GatewayError::NotFound);
    };

    // Step 9: upstream credentials.
    let authorization = match &upstream.auth {
        None => None,
        Some(UpstreamAuth::Basic(v)) => Some(v.clone()),
        Some(UpstreamAuth::OAuth2(src)) => match gw.tokens.authorization(src, &gw.metrics).await {
            Ok(v) => Some(v),
            Err(_) => {
                return Err(GatewayError::BadGateway(format!(
                    "could not get a token for upstream {} from its token endpoint",
                    upstream.name
                )))
            }
        },
    };

    // Step 10: forward.
    let used_authorization = authorization.clone();
    let cx = ForwardContext {
        path: &path,
        query: query.as_deref(),
        client_ip: &conn.ip,
        tls: conn.tls,
        original_host: host_value,
        request_id: rid,
        identity: ex.identity.as_deref(),
        authorization,
        body_exceeded: Arc::new(AtomicBool::new(false)),
        max_body: limits.max_body_bytes,
    };
    let resp = proxy::forward(&upstream, req, cx).await?;
    if resp.status() == http::StatusCode::UNAUTHORIZED {
        if let Some(UpstreamAuth::OAuth2(src)) = &upstream.auth {
            tracing::info!(upstream = %upstream.name, "upstream answered 401; dropping its cached token");
            if let Some(used) = &used_authorization {
                gw.tokens.invalidate_if_current(src, used);
            }
        }
    }
    Ok(resp)
}
