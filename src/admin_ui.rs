//! Not on the request path: the admin listener's page and its data. `GET /admin/ui` is
//! a server-rendered HTML page (routes, issuers with key-set age and last fetch, last
//! reload, links to /metrics) with one small embedded script and style sheet (no build
//! chain: `include_str!`), served under a strict Content-Security-Policy (`'self'`
//! only, no inline script or style, no inline event handlers). Its live list of
//! refusals is fed by `GET /admin/events` (Server-Sent Events from the
//! [`crate::decisions`] ring); a click shows `GET /admin/decisions/{request_id}`; its
//! explain form posts to `POST /admin/explain`, which runs `stack::policy` on the
//! running gateway like `tollgate explain` (src/explain.rs).
//!
//! Everything the page prints is HTML-escaped here or set as text by the script; the
//! token pasted into the explain form is used for that one decision and never stored,
//! logged or echoed.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use crate::auth::IssuerKind;
use crate::body::{full, Body, BoxError};
use crate::decisions::{DecisionRecord, CAPACITY};
use crate::encoding::rfc3339;
use crate::gateway::Gateway;

const PAGE_CSS: &str = include_str!("../assets/admin/page.css");
const PAGE_JS: &str = include_str!("../assets/admin/page.js");
const ICON_SVG: &str = include_str!("../assets/admin/icon.svg");

/// The page's Content-Security-Policy: its own script, style and API only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Bodies the explain form may post.
const MAX_EXPLAIN_BODY: usize = 64 * 1024;
/// Records sent when a live stream starts (the page's initial list).
const INITIAL_BACKLOG: usize = 50;
/// A comment every so often keeps proxies from closing an idle stream and finds
/// clients that went away.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn not_found(request_id: &str, what: String) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "not_found", "error_description": what, "request_id": request_id}),
    )
}

/// `GET /admin/decisions/{request_id}`.
pub fn decision(gw: &Gateway, id: &str, rid: &str) -> Response<Body> {
    match gw.decisions.get(id) {
        Some(r) => json_response(StatusCode::OK, &json!(*r)),
        None => not_found(
            rid,
            format!(
                "no decision recorded for request id {id:?}: only refused or failed requests \
                 are kept, the last {}",
                gw.decisions.capacity()
            ),
        ),
    }
}

/// `GET /admin/decisions?limit=N` (newest first; default 50, at most the capacity).
pub fn decisions(gw: &Gateway, query: Option<&str>) -> Response<Body> {
    let limit = query
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "limit")
                .map(|(_, v)| v.into_owned())
        })
        .map(|v| v.parse::<usize>());
    let limit = match limit {
        None => 50,
        Some(Ok(n)) => n.min(CAPACITY),
        Some(Err(_)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": "limit must be a whole number"}),
            )
        }
    };
    let recent = gw.decisions.recent(limit);
    json_response(
        StatusCode::OK,
        &json!({
            "capacity": gw.decisions.capacity(),
            "kept": gw.decisions.len(),
            "decisions": recent.iter().map(|r| json!(**r)).collect::<Vec<_>>(),
        }),
    )
}

/// The explain form's request.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainAsk {
    #[serde(default)]
    token: Option<crate::secret::Secret>,
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    origin: Option<String>,
    /// A CORS preflight instead: `OPTIONS` with `Access-Control-Request-Method: this`
    /// (needs `origin`).
    #[serde(default)]
    preflight: Option<String>,
    /// A DPoP proof (the `DPoP` header) for a DPoP-bound token: the token is sent as
    /// `Authorization: DPoP`. Checked like the server does, but its `jti` is only
    /// looked up, never recorded (explain does not use the proof up).
    #[serde(default)]
    dpop: Option<crate::secret::Secret>,
    /// A WebSocket handshake (`Upgrade: websocket`, `Connection: upgrade`): the trace
    /// says whether the route accepts it.
    #[serde(default)]
    websocket: bool,
}

/// `POST /admin/explain` `{token, method, path, host, origin, preflight, dpop, websocket}` (JSON only: a form
/// post from another site cannot send it without a preflight, which gets no CORS
/// headers here).
pub async fn explain(gw: &Arc<Gateway>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let bad = |why: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid_request", "error_description": why}),
        )
    };
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == "application/json");
    if !is_json {
        return bad("Content-Type must be application/json".into());
    }
    let body = match Limited::new(req.into_body(), MAX_EXPLAIN_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad(format!("body unreadable or over {MAX_EXPLAIN_BODY} bytes")),
    };
    let ask: ExplainAsk = match serde_json::from_slice(&body) {
        Ok(a) => a,
        // serde's message names the field, never echoes a value of ours.
        Err(e) => return bad(format!("invalid JSON: {e}")),
    };
    let method = ask.method.as_deref().unwrap_or("GET").trim();
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return bad("invalid method".into());
    };
    if !ask.path.starts_with('/') {
        return bad("path must start with /".into());
    }
    let nonempty = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let origin = nonempty(&ask.origin);
    let preflight = nonempty(&ask.preflight);
    if preflight.is_some() && origin.is_none() {
        return bad("preflight needs origin".into());
    }
    let method = if preflight.is_some() {
        Method::OPTIONS
    } else {
        method
    };
    let host = nonempty(&ask.host);
    let version = gw.current().version;
    let mut x = crate::explain::decide(
        gw,
        &crate::explain::Probe {
            token: ask.token.as_ref().map(|t| t.expose()),
            cookie: None,
            method: Some(&method),
            url_path: &ask.path,
            host: host.as_deref(),
            origin: origin.as_deref(),
            access_control_request_method: preflight.as_deref(),
            headers: &[],
            dpop: ask
                .dpop
                .as_ref()
                .map(|d| d.expose().trim())
                .filter(|d| !d.is_empty()),
            websocket: ask.websocket,
            ..Default::default()
        },
    )
    .await;
    if let Some(first) = x.lines.first_mut() {
        first.push_str(&format!(" (config version {version})"));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "allowed": x.allowed,
            "status": x.status.as_u16(),
            "gate": x.gate,
            "reason": x.reason,
            "steps": x.lines,
        }),
    )
}

/// A response body fed by a channel (the event stream).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn event(r: &DecisionRecord) -> Bytes {
    let data = serde_json::to_string(r).unwrap_or_default();
    Bytes::from(format!("id: {}\nevent: decision\ndata: {data}\n\n", r.seq))
}

/// `GET /admin/events`: Server-Sent Events, one `decision` event per refused or failed
/// request. A new stream starts with the most recent records (or, with
/// `Last-Event-ID`, those after it), then follows live. A client that reads too slowly
/// falls behind the ring's broadcast and is dropped (its browser reconnects with
/// `Last-Event-ID`); recording never waits for it.
pub fn events(gw: &Gateway, last_event_id: Option<u64>, rid: &str) -> Response<Body> {
    let Some(mut sub) = gw.decisions.subscribe() else {
        let mut r = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "service_unavailable", "error_description": "too many open event streams", "request_id": rid}),
        );
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    // Subscribed first, then the backlog: nothing falls in between (duplicates are
    // skipped by sequence number).
    let backlog = match last_event_id {
        Some(after) => gw.decisions.since(after, CAPACITY),
        None => gw.decisions.since(0, INITIAL_BACKLOG),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        let mut last = last_event_id.unwrap_or(0);
        if tx
            .send(Bytes::from_static(b"retry: 2000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        for r in backlog {
            last = last.max(r.seq);
            if tx.send(event(&r)).await.is_err() {
                return;
            }
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let frame = tokio::select! {
                r = sub.records.recv() => match r {
                    Ok(r) if r.seq <= last => continue,
                    Ok(r) => {
                        last = r.seq;
                        event(&r)
                    }
                    // Too slow: dropped. The browser reconnects with Last-Event-ID.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                _ = sub.closing.wait_for(|c| *c) => return,
                _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
            };
            // The client's socket is full: wait, bounded by the ring's backlog (then
            // `Lagged` above drops it).
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed_unsync());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// HTML-escapes `s` (text and attribute values).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn page_headers(r: &mut Response<Body>, content_type: &'static str) {
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `GET /admin/ui/page.js` and `/admin/ui/page.css`.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, ct) = match path {
        "/admin/ui/page.js" => (PAGE_JS, "text/javascript; charset=utf-8"),
        "/admin/ui/page.css" => (PAGE_CSS, "text/css; charset=utf-8"),
        "/admin/ui/icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => return None,
    };
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    page_headers(&mut r, ct);
    Some(r)
}

/// A config value (from the redacted config) as short text: strings bare, lists
/// joined, maps as `key: value`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}: {}", text(v)))
            .collect::<Vec<_>>()
            .join("; "),
        v => v.to_string(),
    }
}

fn age(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// `GET /admin/ui`.
pub fn page(gw: &Gateway) -> Response<Body> {
    let rt = gw.current();
    let status = gw.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let cfg = rt.redacted.json();
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>tollgate admin</title><link rel=\"stylesheet\" href=\"/admin/ui/page.css\">\
         <link rel=\"icon\" href=\"/admin/ui/icon.svg\" type=\"image/svg+xml\">\
         <script src=\"/admin/ui/page.js\" defer></script></head><body>\
         <header><h1>tollgate</h1><span class=\"meta\">config version {} · {} · {} route(s)</span>\
         <nav><a href=\"/metrics\">/metrics</a> <a href=\"/admin/status\">/admin/status</a> \
         <a href=\"/admin/config\">/admin/config</a> <a href=\"/admin/decisions\">/admin/decisions</a></nav></header><main>",
        rt.version,
        if gw.ready() { "ready" } else { "not ready" },
        rt.routes.len()
    );

    // Last reload.
    h.push_str("<section id=\"reload\"><h2>Last reload</h2>");
    match status.last_reload_ok {
        None => {
            let _ = write!(
                h,
                "<p>No reload yet; config loaded {}.</p>",
                esc(status.loaded_at.as_deref().unwrap_or("-"))
            );
        }
        Some(ok) => {
            let _ = write!(
                h,
                "<p class=\"{}\">{} at {} (trigger {}); config loaded {}.</p>",
                if ok { "ok" } else { "fail" },
                if ok {
                    "Succeeded"
                } else {
                    "Failed; the previous config keeps serving"
                },
                esc(status.last_reload_at.as_deref().unwrap_or("-")),
                esc(status.last_reload_trigger.as_deref().unwrap_or("-")),
                esc(status.loaded_at.as_deref().unwrap_or("-"))
            );
            if !status.last_reload_errors.is_empty() {
                h.push_str("<ul class=\"errors\">");
                for e in &status.last_reload_errors {
                    let _ = write!(h, "<li><code>{}</code></li>", esc(e));
                }
                h.push_str("</ul>");
            }
        }
    }
    h.push_str("</section>");

    // Live refusals.
    h.push_str(
        "<section id=\"live\"><h2>Recent refusals <span id=\"stream-state\" class=\"meta\">connecting…</span></h2>\
         <p class=\"meta\">Refused and failed requests, newest first (live). Click one for its decision trace.</p>\
         <table id=\"denials\"><thead><tr><th>time</th><th>status</th><th>gate</th><th>reason</th>\
         <th>route</th><th>method</th><th>path</th><th>client</th><th>remote</th><th>request id</th></tr></thead>\
         <tbody></tbody></table>\
         <div id=\"trace\" class=\"trace\" hidden><h3>Decision <code id=\"trace-id\"></code></h3>\
         <p id=\"trace-summary\"></p><ol id=\"trace-steps\"></ol></div></section>",
    );

    // Explain form.
    h.push_str(
        "<section id=\"explain\"><h2>Explain a request</h2>\
         <p class=\"meta\">Runs the running gateway's policy (routing, CORS, limits, the gate) on this request, \
         step by step. Nothing is sent upstream, no rate limit is counted, the token is not stored.</p>\
         <form id=\"explain-form\" autocomplete=\"off\">\
         <label>Token <textarea id=\"ex-token\" rows=\"3\" spellcheck=\"false\" placeholder=\"eyJ… (without Bearer)\"></textarea></label>\
         <div class=\"row\"><label>Method <input id=\"ex-method\" value=\"GET\" size=\"8\"></label>\
         <label>Path <input id=\"ex-path\" value=\"/\" size=\"40\" required></label>\
         <label>Host <input id=\"ex-host\" size=\"24\"></label>\
         <label>Origin <input id=\"ex-origin\" size=\"28\"></label>\
         <button type=\"submit\" id=\"ex-run\">Explain</button></div></form>\
         <div id=\"explain-result\" class=\"trace\" hidden><p id=\"explain-summary\"></p><ol id=\"explain-steps\"></ol></div></section>",
    );

    // Routes.
    let upstream_url = |name: &str| -> String {
        cfg.get("upstreams")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|u| u.get("name").and_then(Value::as_str) == Some(name))
            })
            .and_then(|u| u.get("url"))
            .map(text)
            .unwrap_or_default()
    };
    h.push_str(
        "<section id=\"routes\"><h2>Routes</h2><table><thead><tr><th>name</th><th>hosts</th><th>path prefix</th>\
         <th>auth</th><th>permissions</th><th>rate limits</th><th>upstream</th></tr></thead><tbody>",
    );
    let models = cfg.get("routes").and_then(Value::as_array);
    for (i, r) in rt.routes.iter().enumerate() {
        let m = models.and_then(|a| a.get(i));
        let field = |k: &str| {
            m.and_then(|m| m.get(k))
                .map(text)
                .unwrap_or_else(|| "-".into())
        };
        let perms = m
            .and_then(|m| m.get("permissions"))
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .map(|p| format!("<li>{}</li>", esc(&text(p))))
                    .collect::<String>()
            })
            .map(|li| format!("<ul>{li}</ul>"))
            .unwrap_or_else(|| "-".into());
        let up = r.upstream.as_ref().map(|u| {
            format!(
                "{} <span class=\"meta\">{}</span>",
                esc(&u.name),
                esc(&upstream_url(&u.name))
            )
        });
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{perms}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(&field("hosts")),
            esc(&r.path_prefix),
            esc(&field("auth")),
            esc(&field("rate_limits")),
            up.unwrap_or_else(|| "-".into())
        );
    }
    h.push_str("</tbody></table></section>");

    // Issuers.
    h.push_str(
        "<section id=\"issuers\"><h2>Issuers</h2><table><thead><tr><th>name</th><th>issuer</th><th>kind</th>\
         <th>keys</th><th>key set age</th><th>last fetch</th></tr></thead><tbody>",
    );
    for i in &rt.issuers {
        let (kind, keys, set_age, last) = match &i.kind {
            IssuerKind::Jwt(s) => {
                let kind = match &s.source {
                    crate::auth::jwks::KeySource::Jwks(u) => format!("JWKS {u}"),
                    crate::auth::jwks::KeySource::Discovery(u) => format!("discovery {u}"),
                    crate::auth::jwks::KeySource::Static => "tollgate's own keys".into(),
                };
                let last = match s.last_fetch() {
                    None if matches!(s.source, crate::auth::jwks::KeySource::Static) => {
                        ("ok", "in process".to_owned())
                    }
                    None => ("fail", "not yet".to_owned()),
                    Some(f) => match f.result {
                        Ok(n) => (
                            "ok",
                            format!("ok, {n} key(s), {} ago ({})", age(f.at), rfc3339(f.at)),
                        ),
                        Err(e) => (
                            "fail",
                            format!("failed {} ago ({}): {e}", age(f.at), rfc3339(f.at)),
                        ),
                    },
                };
                (
                    kind,
                    s.keys().all.len().to_string(),
                    s.keys_fetched_at().map(age).unwrap_or_else(|| "-".into()),
                    last,
                )
            }
            IssuerKind::Introspection(x) => (
                format!("introspection {}", x.url),
                "-".into(),
                "-".into(),
                ("ok", "no keys (each token is introspected)".into()),
            ),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&i.name),
            esc(&i.issuer),
            esc(&kind),
            esc(&keys),
            esc(&set_age),
            last.0,
            esc(&last.1)
        );
    }
    h.push_str("</tbody></table></section>");
    h.push_str(
        "</main><footer class=\"meta\">The admin listener must never be exposed publicly: \
         keep it on loopback or a private network, and set <code>server.admin_auth</code>.</footer></body></html>\n",
    );
    let mut r = Response::new(full(h));
    page_headers(&mut r, "text/html; charset=utf-8");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: everything printed into the page is escaped.
    #[test]
    fn escapes() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    // Behaviour: the page loads nothing inline and nothing from elsewhere.
    #[test]
    fn strict_csp() {
        assert!(CSP.contains("default-src 'none'"));
        assert!(CSP.contains("script-src 'self'"));
        assert!(!CSP.contains("unsafe"));
        assert!(!PAGE_JS.contains("innerHTML"));
    }
}
