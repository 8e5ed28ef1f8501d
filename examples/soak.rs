//! Soak test driver (issue 8): runs mixed traffic against the real `tollgate` binary for
//! a bounded time, on 127.0.0.1 only, and reports requests, outcomes by class, latency,
//! RSS and open file descriptors at the start (after warm-up) and at the end.
//!
//! Started by `scripts/soak.sh [minutes]`; by hand:
//!
//! ```sh
//! cargo build --release --bin tollgate --example soak
//! ./target/release/examples/soak --tollgate target/release/tollgate --duration 3m
//! ```
//!
//! In-process it serves an upstream that records and judges every request it receives
//! against the policy model, and an identity provider (JWKS + a client_credentials token
//! endpoint for `upstreams[].auth`) whose ES256 key mints valid, expired, wrong-audience,
//! wrongly scoped and forged tokens. It writes a soak `gateway.yaml` into a temp dir,
//! starts the binary as a child (RUST_LOG and TOKIO_WORKER_THREADS as inherited), waits
//! for `/readyz`, then sends every request class at a bounded rate while reloading every
//! few seconds (alternately a real change written to the file and `POST /admin/reload`).
//! Exit status: 0 when every criterion holds, 1 when one fails, 2 when the run could not
//! be completed.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tollgate::token_service::keys::SigningKey;

const AUD: &str = "https://api.soak.test";
const LOCAL_ISS: &str = "https://tollgate.soak.test";
const ORIGIN: &str = "https://app.soak.test";
const FOREIGN_ORIGIN: &str = "https://evil.example.net";
const HOT_TOKENS: usize = 8;
/// Hot tokens live this long and are re-minted every `ROTATE` (clients refreshing).
const TOKEN_LIFETIME: i64 = 120;
const ROTATE: Duration = Duration::from_secs(30);
/// `valid_fresh` tokens (a cache miss each) live this long.
const FRESH_LIFETIME: i64 = 60;
const EXT_LEEWAY: i64 = 30;
const LOCAL_LEEWAY: i64 = 5;
const UPSTREAM_TOKEN_TTL: u64 = 120;

// ---------------------------------------------------------------------------------------
// command line
// ---------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(about = "Soak test: bounded mixed traffic against the tollgate binary on 127.0.0.1")]
struct Args {
    /// The tollgate binary to start (the release build).
    #[arg(long)]
    tollgate: PathBuf,
    /// How long to send traffic: `30m`, `180s`, `1h`, or minutes as a number.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Excluded from growth figures; default max(60 s, 10% of the run), at most a third.
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Target request rate over all workers (requests per second).
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Workers on HTTP/1.1 keep-alive connections (about one connection each).
    #[arg(long, default_value_t = 32)]
    keepalive: usize,
    /// Workers sharing one h2c (prior knowledge) connection.
    #[arg(long, default_value_t = 4)]
    h2: usize,
    /// Workers opening a new connection for every request.
    #[arg(long, default_value_t = 4)]
    fresh: usize,
    /// A reload every this often (file rewrite and POST /admin/reload alternate).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    reload_every: Duration,
    /// RSS / fd / metrics sample interval.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Change a class's share (requests per thousand), e.g. `--weight token_service_argon2=0`;
    /// repeatable. The classes are listed in the report.
    #[arg(long, value_name = "CLASS=N")]
    weight: Vec<String>,
    /// The markdown report (overwritten).
    #[arg(long, default_value = "bench/SOAK.md")]
    report: PathBuf,
    /// Write tollgate's PID here (scripts/soak.sh stops it by PID if we die).
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Shown in the report (scripts/soak.sh passes `git describe`).
    #[arg(long, default_value = "")]
    commit: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(m) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(m * 60.0));
    }
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return Err(format!("{s:?}: expected e.g. 30m, 180s, 1h"));
    };
    num.trim()
        .parse::<f64>()
        .map(|n| Duration::from_secs_f64(n * mult))
        .map_err(|_| format!("{s:?}: expected e.g. 30m, 180s, 1h"))
}

// ---------------------------------------------------------------------------------------
// request classes: what is sent and what must come back
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum K {
    ValidGet,
    ValidItem,
    ValidPost,
    ValidFresh,
    ValidLocal,
    ValidAdmin,
    CorsGet,
    Open,
    Partner,
    Preflight,
    PreflightForeign,
    NoToken,
    Expired,
    Forged,
    ForgedKid,
    Tampered,
    WrongAud,
    WrongIss,
    AlgNone,
    MissingScope,
    EndpointScope,
    ClientDenied,
    EndpointDenied,
    MethodDenied,
    PathSlash,
    PathCase,
    PathEncoded,
    PartnerDenied,
    NotFound,
    TokenBasic,
    TokenPost,
    TokenBadSecret,
    TokenBadScope,
    TokenHashed,
    UpstreamDown,
    UpstreamTimeout,
    ClientAbort,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A valid, authorised API call through the auth gates (the "valid" latency figure).
    Valid,
    /// Answered without the upstream's help by policy; must never reach it.
    Denied,
    /// Other expected answers (open route, preflights, token service, 404).
    Other,
    /// Fault injection: dead upstream, upstream timeout, client abort. Their 5xx are
    /// expected and they are left out of the latency figures.
    Fault,
}

struct Class {
    k: K,
    name: &'static str,
    /// Requests per thousand.
    weight: u32,
    /// Accepted statuses; empty: the client gives up first (abort).
    expect: &'static [u16],
    /// The `error` code an error body must carry.
    error: Option<&'static str>,
    /// May this request reach the upstream?
    upstream: bool,
    kind: Kind,
}

macro_rules! class {
    ($k:ident, $name:literal, $w:expr, $expect:expr, $err:expr, $up:expr, $kind:ident) => {
        Class {
            k: K::$k,
            name: $name,
            weight: $w,
            expect: $expect,
            error: $err,
            upstream: $up,
            kind: Kind::$kind,
        }
    };
}

const T: Option<&str> = Some("invalid_token");
const SCOPE: Option<&str> = Some("insufficient_scope");
const DENY: Option<&str> = Some("access_denied");

#[rustfmt::skip]
static CLASSES: &[Class] = &[
    class!(ValidGet,        "valid_get",         250, &[200], None, true, Valid),
    class!(ValidItem,       "valid_item",         60, &[200], None, true, Valid),
    class!(ValidPost,       "valid_post",         40, &[200], None, true, Valid),
    class!(ValidFresh,      "valid_fresh_token",  15, &[200], None, true, Valid),
    class!(ValidLocal,      "valid_local_token",  40, &[200], None, true, Valid),
    class!(ValidAdmin,      "valid_admin_scope",  20, &[200], None, true, Valid),
    class!(CorsGet,         "cors_get",           30, &[200], None, true, Valid),
    class!(Partner,         "partner_upstream_auth", 40, &[200], None, true, Valid),
    class!(Open,            "open_route",         30, &[200], None, true, Other),
    class!(Preflight,       "cors_preflight",     50, &[200, 204], None, false, Other),
    class!(PreflightForeign,"cors_preflight_foreign_origin", 10, &[200, 204], None, false, Other),
    class!(NoToken,         "no_token",           40, &[401], T, false, Denied),
    class!(Expired,         "expired_token",      30, &[401], T, false, Denied),
    class!(Forged,          "forged_signature",   20, &[401], T, false, Denied),
    class!(ForgedKid,       "forged_unknown_kid",  5, &[401], T, false, Denied),
    class!(Tampered,        "tampered_payload",   10, &[401], T, false, Denied),
    class!(WrongAud,        "wrong_audience",     20, &[401], T, false, Denied),
    class!(WrongIss,        "wrong_issuer",       10, &[401], T, false, Denied),
    class!(AlgNone,         "alg_none",            5, &[401], T, false, Denied),
    class!(MissingScope,    "missing_route_scope", 25, &[403], SCOPE, false, Denied),
    class!(EndpointScope,   "missing_endpoint_scope", 15, &[403], SCOPE, false, Denied),
    class!(ClientDenied,    "client_not_allowed", 15, &[403], DENY, false, Denied),
    class!(EndpointDenied,  "endpoint_denied",    20, &[403], DENY, false, Denied),
    class!(MethodDenied,    "method_denied",      20, &[403], DENY, false, Denied),
    class!(PathSlash,       "path_double_slash",  10, &[403], DENY, false, Denied),
    class!(PathCase,        "path_case_variant",   5, &[403], DENY, false, Denied),
    class!(PathEncoded,     "path_encoded_slash",  5, &[400], Some("invalid_request"), false, Denied),
    class!(PartnerDenied,   "partner_missing_scope", 10, &[403], SCOPE, false, Denied),
    class!(NotFound,        "no_route",           10, &[404], Some("not_found"), false, Denied),
    class!(TokenBasic,      "token_service_basic", 15, &[200], None, false, Other),
    class!(TokenPost,       "token_service_post",  8, &[200], None, false, Other),
    class!(TokenBadSecret,  "token_service_bad_secret", 8, &[401], Some("invalid_client"), false, Other),
    class!(TokenBadScope,   "token_service_bad_scope", 4, &[400], Some("invalid_scope"), false, Other),
    class!(TokenHashed,     "token_service_argon2", 2, &[200], None, false, Other),
    class!(UpstreamDown,    "fault_upstream_down", 3, &[502], Some("bad_gateway"), false, Fault),
    class!(UpstreamTimeout, "fault_upstream_timeout", 3, &[504], Some("gateway_timeout"), true, Fault),
    class!(ClientAbort,     "fault_client_abort",  2, &[], None, true, Fault),
];

/// The class weights with `--weight CLASS=N` applied.
fn weights(overrides: &[String]) -> Result<Vec<u32>, String> {
    let mut w: Vec<u32> = CLASSES.iter().map(|c| c.weight).collect();
    for o in overrides {
        let (name, n) = o
            .split_once('=')
            .ok_or_else(|| format!("--weight {o}: expected CLASS=N"))?;
        let i = class_index(name).ok_or_else(|| {
            let names: Vec<&str> = CLASSES.iter().map(|c| c.name).collect();
            format!(
                "--weight {o}: no class {name:?}; classes: {}",
                names.join(", ")
            )
        })?;
        w[i] = n
            .parse()
            .map_err(|_| format!("--weight {o}: N must be a whole number"))?;
    }
    if w.iter().sum::<u32>() == 0 {
        return Err("every class weight is 0".into());
    }
    Ok(w)
}

fn class_index(name: &str) -> Option<usize> {
    CLASSES.iter().position(|c| c.name == name)
}

// ---------------------------------------------------------------------------------------
// tokens
// ---------------------------------------------------------------------------------------

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

struct Minter {
    iss: String,
    key: SigningKey,
    /// Not in the JWKS: its signatures must never be accepted.
    forger: SigningKey,
}

impl Minter {
    fn claims(
        &self,
        client: &str,
        scope: &str,
        exp_in: i64,
        rng: &mut StdRng,
    ) -> serde_json::Value {
        let n = now();
        serde_json::json!({
            "iss": self.iss,
            "aud": AUD,
            "sub": format!("user-{}", rng.gen_range(0..1000)),
            "client_id": client,
            "scope": scope,
            "iat": n,
            "exp": n + exp_in,
            "jti": format!("{:016x}", rng.gen::<u64>()),
        })
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        self.key.sign("JWT", claims).expect("signing a token")
    }

    /// A token the policy must refuse: marked `soak_deny` so that the upstream can tell.
    fn deny(mut claims: serde_json::Value) -> serde_json::Value {
        claims["soak_deny"] = serde_json::Value::Bool(true);
        claims
    }
}

/// The tokens workers use, re-minted every `ROTATE` (clients refreshing theirs).
#[derive(Default, Clone)]
struct Book {
    valid: Vec<String>,
    admin: String,
    partner: String,
    local: String,
    expired: String,
    forged: String,
    forged_kid: String,
    tampered: String,
    wrong_aud: String,
    wrong_iss: String,
    alg_none: String,
    missing_scope: String,
    client_denied: String,
    partner_denied: String,
}

fn mint_book(m: &Minter, rng: &mut StdRng, local: String) -> Book {
    let life = TOKEN_LIFETIME;
    let valid = (0..HOT_TOKENS)
        .map(|i| {
            let client = if i % 2 == 0 {
                "soak-app"
            } else {
                "soak-reader"
            };
            m.sign(&m.claims(client, "api.read", life, rng))
        })
        .collect();
    let split = |t: &str| -> Vec<String> { t.split('.').map(str::to_owned).collect() };
    let denied =
        |scope: &str, rng: &mut StdRng| Minter::deny(m.claims("soak-app", scope, life, rng));

    // Expired well beyond the issuer's 30 s leeway.
    let mut c = denied("api.read", rng);
    c["exp"] = (now() - 300).into();
    c["iat"] = (now() - 600).into();
    let expired = m.sign(&c);

    // The real key's header (kid) over a payload signed by another key.
    let real = split(&m.sign(&denied("api.read", rng)));
    let fake = split(
        &m.forger
            .sign("JWT", &denied("api.read api.admin", rng))
            .unwrap(),
    );
    let forged = format!("{}.{}.{}", real[0], fake[1], fake[2]);
    // Another key entirely: its kid is unknown (a JWKS refetch, at most once per 10 s).
    let forged_kid = m.forger.sign("JWT", &denied("api.read", rng)).unwrap();
    // A genuine token whose payload was raised to admin afterwards.
    let good = split(&m.sign(&m.claims("soak-app", "api.read", life, rng)));
    let raised = denied("api.read api.admin", rng).to_string();
    let tampered = format!("{}.{}.{}", good[0], b64(&raised), good[2]);

    let mut c = denied("api.read", rng);
    c["aud"] = "https://other-api.example".into();
    let wrong_aud = m.sign(&c);
    let mut c = denied("api.read", rng);
    c["iss"] = "https://idp.evil.example".into();
    let wrong_iss = m.sign(&c);
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&denied("api.read api.admin", rng).to_string())
    );
    let missing_scope = m.sign(&denied("reports.read", rng));
    let mut c = denied("api.read", rng);
    c["client_id"] = "intruder".into();
    let client_denied = m.sign(&c);
    let mut c = denied("api.read", rng);
    c["client_id"] = "partner-app".into();
    let partner_denied = m.sign(&c);

    Book {
        valid,
        admin: m.sign(&m.claims("soak-app", "api.read api.admin", life, rng)),
        partner: m.sign(&m.claims("partner-app", "partner.use", life, rng)),
        local,
        expired,
        forged,
        forged_kid,
        tampered,
        wrong_aud,
        wrong_iss,
        alg_none,
        missing_scope,
        client_denied,
        partner_denied,
    }
}

fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

// ---------------------------------------------------------------------------------------
// the in-process upstream and identity provider
// ---------------------------------------------------------------------------------------

type Resp = Response<Full<Bytes>>;

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json_resp(status: u16, v: serde_json::Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("response")
}

/// What the upstream and the identity provider observed.
#[derive(Default)]
struct Observed {
    /// Requests the upstream received, per class.
    hits: Vec<AtomicU64>,
    violations: AtomicU64,
    violation_log: Mutex<Vec<String>>,
    /// Not policy, but wrong: a truncated body, a stale or unknown upstream token.
    anomalies: AtomicU64,
    anomaly_log: Mutex<Vec<String>>,
    jwks_hits: AtomicU64,
    token_hits: AtomicU64,
    /// Upstream tokens the identity provider issued: number -> expiry (unix seconds).
    issued: Mutex<HashMap<u64, i64>>,
}

fn note(count: &AtomicU64, log: &Mutex<Vec<String>>, msg: String) {
    count.fetch_add(1, Ordering::Relaxed);
    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
    if l.len() < 25 {
        l.push(msg);
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn scopes(h: &HeaderMap) -> Vec<&str> {
    header(h, "x-auth-scopes")
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .collect()
}

/// The policy model, judged independently of what tollgate answered: a request the
/// policy denies must never arrive here. Returns the first violation found.
fn judge(
    ext_iss: &str,
    obs: &Observed,
    method: &Method,
    path: &str,
    h: &HeaderMap,
) -> Option<String> {
    let name = header(h, "x-soak-class");
    let Some(ci) = class_index(name) else {
        return Some(format!(
            "{method} {path}: request without a known soak class ({name:?})"
        ));
    };
    let c = &CLASSES[ci];
    if !c.upstream {
        return Some(format!(
            "{method} {path}: class {} (expected {:?}) reached the upstream",
            c.name, c.expect
        ));
    }
    if path == "/api" || path.starts_with("/api/") {
        if method == Method::OPTIONS {
            return Some(format!("{method} {path}: a preflight was forwarded"));
        }
        let seg = path.strip_prefix("/api/items/");
        let endpoint_ok = match (method.as_str(), path) {
            ("GET" | "POST", "/api/items") | ("GET", "/api/admin") => true,
            ("GET", _) => seg.is_some_and(|s| !s.is_empty() && !s.contains('/')),
            _ => false,
        };
        if !endpoint_ok {
            return Some(format!(
                "{method} {path}: endpoint/method not permitted ({name})"
            ));
        }
        let client = header(h, "x-auth-client-id");
        if !matches!(client, "soak-app" | "soak-reader") {
            return Some(format!(
                "{method} {path}: client {client:?} not allowed ({name})"
            ));
        }
        let sc = scopes(h);
        if !sc.contains(&"api.read") || (path == "/api/admin" && !sc.contains(&"api.admin")) {
            return Some(format!(
                "{method} {path}: scopes {sc:?} insufficient ({name})"
            ));
        }
        let auth = header(h, "authorization");
        let Some(claims) = auth.strip_prefix("Bearer ").and_then(jwt_claims) else {
            return Some(format!("{method} {path}: no JWT passed on ({name})"));
        };
        if claims.get("soak_deny").is_some() {
            return Some(format!(
                "{method} {path}: a token minted to be refused passed ({name})"
            ));
        }
        let iss = claims["iss"].as_str().unwrap_or("");
        let leeway = match iss {
            i if i == ext_iss => EXT_LEEWAY,
            LOCAL_ISS => LOCAL_LEEWAY,
            _ => return Some(format!("{method} {path}: issuer {iss:?} accepted ({name})")),
        };
        if claims["aud"].as_str() != Some(AUD) {
            return Some(format!(
                "{method} {path}: audience {} accepted ({name})",
                claims["aud"]
            ));
        }
        let exp = claims["exp"].as_i64().unwrap_or(0);
        // 2 s for the trip through tollgate.
        if exp + leeway + 2 < now() {
            return Some(format!(
                "{method} {path}: token expired {}s ago accepted ({name})",
                now() - exp
            ));
        }
        return None;
    }
    if path == "/partner" || path.starts_with("/partner/") {
        if !scopes(h).contains(&"partner.use") {
            return Some(format!(
                "{method} {path}: scope partner.use missing ({name})"
            ));
        }
        let auth = header(h, "authorization");
        let Some(n) = auth
            .strip_prefix("Bearer up-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return Some(format!(
                "{method} {path}: the upstream credential was not tollgate's (client token passed on?) ({name})"
            ));
        };
        let exp = obs
            .issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&n)
            .copied();
        match exp {
            None => note(
                &obs.anomalies,
                &obs.anomaly_log,
                format!("{path}: unknown upstream token up-{n}"),
            ),
            Some(e) if e < now() - 1 => note(
                &obs.anomalies,
                &obs.anomaly_log,
                format!(
                    "{path}: upstream token up-{n} used {}s after it expired",
                    now() - e
                ),
            ),
            Some(_) => {}
        }
        return None;
    }
    if path.starts_with("/open/") || path.starts_with("/faults/slow/") {
        return None;
    }
    Some(format!(
        "{method} {path}: a path no class sends to the upstream ({name})"
    ))
}

async fn upstream(ext_iss: Arc<str>, obs: Arc<Observed>, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(usize::MAX);
    let path = parts.uri.path();
    let name = header(&parts.headers, "x-soak-class").to_owned();
    if let Some(ci) = class_index(&name) {
        obs.hits[ci].fetch_add(1, Ordering::Relaxed);
    }
    if let Some(v) = judge(&ext_iss, &obs, &parts.method, path, &parts.headers) {
        note(&obs.violations, &obs.violation_log, v);
    }
    let want = header(&parts.headers, "x-soak-len");
    if !want.is_empty() && want != len.to_string() {
        note(
            &obs.anomalies,
            &obs.anomaly_log,
            format!("{path}: body of {len} bytes arrived, {want} sent"),
        );
    }
    if let Some(ms) = path
        .strip_prefix("/faults/slow/")
        .and_then(|m| m.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    json_resp(200, serde_json::json!({"ok": true, "class": name}))
}

async fn idp(jwks: Arc<serde_json::Value>, obs: Arc<Observed>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let auth = header(req.headers(), "authorization").to_owned();
    let _ = req.into_body().collect().await;
    match path.as_str() {
        "/jwks" => {
            obs.jwks_hits.fetch_add(1, Ordering::Relaxed);
            json_resp(200, (*jwks).clone())
        }
        "/token" => {
            let n = obs.token_hits.fetch_add(1, Ordering::Relaxed) + 1;
            let want = format!("Basic {}", STANDARD.encode("partner-gw:partner-secret"));
            if auth != want {
                return json_resp(401, serde_json::json!({"error": "invalid_client"}));
            }
            obs.issued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n, now() + UPSTREAM_TOKEN_TTL as i64);
            json_resp(
                200,
                serde_json::json!({
                    "access_token": format!("up-{n}"),
                    "token_type": "Bearer",
                    "expires_in": UPSTREAM_TOKEN_TTL,
                }),
            )
        }
        _ => json_resp(404, serde_json::json!({"error": "not_found"})),
    }
}

// ---------------------------------------------------------------------------------------
// the soak gateway.yaml
// ---------------------------------------------------------------------------------------

struct Setup {
    dir: PathBuf,
    ext_iss: String,
    upstream: String,
    dead_port: u16,
    signing_key: PathBuf,
    hashed_secret: String,
}

/// Two variants that differ in harmless ways (token TTL, CORS max_age, an upstream
/// timeout, a route no traffic uses), so every rewrite is a real change while every
/// class keeps its expected answer.
fn config(s: &Setup, variant: bool) -> String {
    let (ttl, max_age, timeout) = if variant {
        ("3m", "5m", "20s")
    } else {
        ("2m", "10m", "30s")
    };
    let mut y = format!(
        r#"# Written by examples/soak.rs (variant {v}); rewritten during the soak.
server:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
  limits:
    header_read_timeout: 10s
    request_timeout: 10s

token_service:
  path: /oauth2/token
  issuer: "{LOCAL_ISS}"
  audience: "{AUD}"
  signing_key: "{key}"
  token_ttl: {ttl}
  clients:
    - id: soak-app
      secret: app-secret
      scopes: [api.read, api.admin]
    - id: soak-reader
      secret: reader-secret
      scopes: [api.read]
    - id: soak-hashed
      secret_hash: "{hash}"
      scopes: [api.read]

issuers:
  - name: ext
    issuer: "{iss}"
    jwks_uri: "{iss}/jwks"
    audiences: ["{AUD}"]
    algorithms: [ES256]
    jwks_refresh: 30s

upstreams:
  - name: plain
    url: "{up}"
    timeout: {timeout}
  - name: partner
    url: "{up}"
    auth:
      type: oauth2_client_credentials
      token_url: "{iss}/token"
      client_id: partner-gw
      client_secret: partner-secret
      scope: partner.api
  - name: slowpoke
    url: "{up}"
    timeout: 250ms
  - name: dead
    url: "http://127.0.0.1:{dead}"
    connect_timeout: 1s

routes:
  - name: api
    path_prefix: /api
    upstream: plain
    auth:
      issuers: [ext, local]
      scopes: [api.read]
      clients: [soak-app, soak-reader]
    permissions:
      - path: /api/items
        methods: [GET, POST]
      - path: /api/items/*
        methods: [GET]
      - path: /api/admin
        methods: [GET]
        scopes: [api.admin]
    cors:
      allow_origins: ["{ORIGIN}"]
      allow_methods: [GET, POST]
      allow_headers: [Authorization, Content-Type]
      expose_headers: [X-Request-Id]
      max_age: {max_age}
  - name: partner
    path_prefix: /partner
    upstream: partner
    auth:
      issuers: [ext]
      scopes: [partner.use]
  - name: open
    path_prefix: /open
    upstream: plain
    auth: none
  - name: faults
    path_prefix: /faults
    upstream: slowpoke
    auth: none
  - name: down
    path_prefix: /down
    upstream: dead
    auth: none
"#,
        v = if variant { "B" } else { "A" },
        key = s.signing_key.display(),
        hash = s.hashed_secret,
        iss = s.ext_iss,
        up = s.upstream,
        dead = s.dead_port,
    );
    if variant {
        y.push_str(
            "  - name: reload-marker\n    path_prefix: /reload-marker\n    upstream: plain\n    auth: none\n",
        );
    }
    y
}

/// Atomic replacement (write a sibling, rename), as editors and ConfigMaps do.
fn write_config(s: &Setup, variant: bool) -> std::io::Result<()> {
    let tmp = s.dir.join(".gateway.yaml.tmp");
    std::fs::write(&tmp, config(s, variant))?;
    std::fs::rename(tmp, s.dir.join("gateway.yaml"))
}

// ---------------------------------------------------------------------------------------
// tollgate, the child process
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct LogStats {
    /// (level, target) -> lines
    counts: BTreeMap<(String, String), u64>,
    /// WARN/ERROR lines the fault and negative classes do not explain: count, first ones.
    unexplained: u64,
    notable: Vec<String>,
    /// The last lines of any kind (why it did not start).
    tail: std::collections::VecDeque<String>,
    startup: Option<(String, String)>,
}

/// Warnings the request classes call for: per-request denials, the bad-secret client,
/// the dead and the slow upstream.
fn explained(target: &str, line: &str) -> bool {
    matches!(target, "tollgate::access" | "tollgate::auth")
        || (target == "tollgate::token" && line.contains("client authentication failed"))
        || line.contains("upstream=dead")
        || line.contains("upstream=slowpoke")
}

fn spawn_tollgate(bin: &Path, config: &Path) -> Result<(Child, Arc<Mutex<LogStats>>), String> {
    let mut child = Command::new(bin)
        .env_remove("TOLLGATE_CONFIG")
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let logs: Arc<Mutex<LogStats>> = Arc::default();
    let sink = logs.clone();
    // Drained for the whole run: tollgate's log writer must never wait on us.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut w = line.split_whitespace();
            let level = w.nth(1).unwrap_or("?").to_owned();
            let target = w.next().unwrap_or("?").trim_end_matches(':').to_owned();
            let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
            if l.startup.is_none() {
                if let Some(p) = line.find("public=") {
                    let word =
                        |i: usize| line[i..].split_whitespace().next().unwrap_or("").to_owned();
                    let admin = line.find("admin=").map(|a| word(a + 6)).unwrap_or_default();
                    l.startup = Some((word(p + 7), admin));
                }
            }
            *l.counts.entry((level.clone(), target.clone())).or_default() += 1;
            if l.startup.is_none() {
                l.tail.push_back(line.clone());
                if l.tail.len() > 20 {
                    l.tail.pop_front();
                }
            }
            if matches!(level.as_str(), "WARN" | "ERROR") && !explained(&target, &line) {
                l.unexplained += 1;
                if l.notable.len() < 15 {
                    l.notable.push(line);
                }
            }
        }
    });
    Ok((child, logs))
}

fn stop_tollgate(child: &mut Child) -> (String, Duration) {
    let t = Instant::now();
    // SIGTERM by PID (graceful drain); std only offers SIGKILL.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    while t.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(st)) = child.try_wait() {
            return (st.to_string(), t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    ("killed after 20 s without exiting".into(), t.elapsed())
}

// ---------------------------------------------------------------------------------------
// process figures: RSS, file descriptors by kind, metrics
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default, Debug)]
struct Fds {
    total: u64,
    /// Not TCP connections: listeners, other sockets, epoll, eventfd, pipes, inotify, files.
    base: u64,
    /// Connections from clients (to the public or admin listener).
    client: u64,
    /// Connections to the upstream and identity provider.
    upstream: u64,
    /// TCP connections with anything else (there should be none).
    other: u64,
    close_wait: u64,
}

#[derive(Clone, Default)]
struct Sample {
    t: f64,
    rss_kib: u64,
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
    fds: Fds,
    open_connections: f64,
    caches: Vec<(String, f64)>,
    checkpoint: Option<&'static str>,
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.get(s.rfind(')')? + 2..)?.chars().next())
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s[s.rfind(')')? + 2..]
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            Some(f.get(11)? + f.get(12)?)
        })
        .unwrap_or(0)
}

/// inode -> (local port, remote port, state) for every TCP socket.
fn tcp_table() -> HashMap<u64, (u16, u16, u8)> {
    let mut m = HashMap::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(s) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in s.lines().skip(1) {
            let c: Vec<&str> = line.split_whitespace().collect();
            if c.len() < 10 {
                continue;
            }
            let port = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            let st = u8::from_str_radix(c[3], 16).unwrap_or(0);
            if let Ok(inode) = c[9].parse::<u64>() {
                m.insert(inode, (port(c[1]), port(c[2]), st));
            }
        }
    }
    m
}

fn fds(pid: u32, own_ports: &[u16], backend_ports: &[u16]) -> Fds {
    let mut f = Fds::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return f;
    };
    let tcp = tcp_table();
    for e in dir.flatten() {
        f.total += 1;
        let link = std::fs::read_link(e.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            f.base += 1;
            continue;
        };
        match tcp.get(&inode) {
            Some(&(_, _, 0x0A)) => f.base += 1, // listening
            Some(&(local, remote, st)) => {
                if st == 0x08 {
                    f.close_wait += 1;
                }
                if own_ports.contains(&local) {
                    f.client += 1;
                } else if backend_ports.contains(&remote) {
                    f.upstream += 1;
                } else {
                    f.other += 1;
                }
            }
            // Unix, UDP, netlink sockets.
            None => f.base += 1,
        }
    }
    f
}

/// `name{labels} value` lines of the Prometheus text format.
fn metric_lines(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// the driver
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Conn {
    KeepAlive(usize),
    H2,
    Fresh,
}

struct Clients {
    /// One per keep-alive worker (so about one connection each), kept until the end
    /// checkpoint so that the connections at start and end compare.
    keep: Vec<reqwest::Client>,
    h2: reqwest::Client,
    fresh: reqwest::Client,
    admin: reqwest::Client,
}

fn builder() -> reqwest::ClientBuilder {
    tollgate::tls::install_default_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        // Below tollgate's idle keep-alive timeout (header_read_timeout, 10 s): a client
        // that reuses a connection just as the server closes it for idleness gets an
        // error (the keep-alive race); well-behaved clients drop idle ones first.
        .pool_idle_timeout(Duration::from_secs(5))
}

fn clients(keepalive: usize) -> Clients {
    let b = builder;
    Clients {
        keep: (0..keepalive)
            .map(|_| {
                b().http1_only()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client")
            })
            .collect(),
        h2: b().http2_prior_knowledge().build().expect("client"),
        fresh: b()
            .http1_only()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client"),
        admin: b().http1_only().build().expect("client"),
    }
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Outcome {
    Status(u16),
    Aborted,
    Transport(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::Aborted => f.write_str("aborted"),
            Outcome::Transport(k) => write!(f, "transport:{k}"),
        }
    }
}

#[derive(Default)]
struct Live {
    sent: AtomicU64,
    unexpected: AtomicU64,
    unexpected_5xx: AtomicU64,
    fault_5xx: AtomicU64,
    transport: AtomicU64,
}

struct Ctx {
    base: String,
    admin: String,
    minter: Minter,
    book: RwLock<Book>,
    clients: Clients,
    stop: AtomicBool,
    /// The same, for tasks waiting on a timer.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Workers and the reloader hold it shared; a checkpoint takes it exclusively so that
    /// RSS and fds are measured with nothing in flight.
    gate: tokio::sync::RwLock<()>,
    live: Live,
    unexpected_log: Mutex<Vec<String>>,
    t0: Instant,
    cum_weights: Vec<u32>,
}

impl Ctx {
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stopped.send_replace(true);
    }

    /// `f`'s output, or None when the run stops first.
    async fn until_stopped<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        let mut rx = self.stopped.subscribe();
        if *rx.borrow_and_update() {
            return None;
        }
        tokio::select! {
            v = f => Some(v),
            _ = rx.wait_for(|s| *s) => None,
        }
    }
}

struct Spec {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
    abort_after: Option<Duration>,
}

fn spec(ctx: &Ctx, k: K, rng: &mut StdRng) -> Spec {
    let book = ctx.book.read().unwrap_or_else(|e| e.into_inner());
    let hot = book.valid[rng.gen_range(0..book.valid.len())].clone();
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let basic = |id: &str, secret: &str| {
        (
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        )
    };
    let form = (
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    );
    let s = |m: Method, p: &str, h: Vec<(&'static str, String)>| Spec {
        method: m,
        path: p.to_owned(),
        headers: h,
        body: None,
        abort_after: None,
    };
    let token = |h: Vec<(&'static str, String)>, body: &str| Spec {
        body: Some(body.to_owned()),
        ..s(Method::POST, "/oauth2/token", h)
    };
    let grant = "grant_type=client_credentials";
    match k {
        K::ValidGet => s(Method::GET, "/api/items", vec![bearer(&hot)]),
        K::ValidItem => {
            let p = format!("/api/items/{}", rng.gen_range(1..100_000));
            s(Method::GET, &p, vec![bearer(&hot)])
        }
        K::ValidPost => {
            let body = format!(
                "{{\"item\":\"{}\",\"pad\":\"{}\"}}",
                rng.gen::<u32>(),
                "x".repeat(rng.gen_range(16..2048))
            );
            Spec {
                body: Some(body.clone()),
                ..s(
                    Method::POST,
                    "/api/items",
                    vec![
                        bearer(&hot),
                        ("content-type", "application/json".into()),
                        ("x-soak-len", body.len().to_string()),
                    ],
                )
            }
        }
        K::ValidFresh => {
            drop(book);
            let t =
                ctx.minter.sign(
                    &ctx.minter
                        .claims("soak-reader", "api.read", FRESH_LIFETIME, rng),
                );
            s(Method::GET, "/api/items", vec![bearer(&t)])
        }
        K::ValidLocal => s(Method::GET, "/api/items", vec![bearer(&book.local)]),
        K::ValidAdmin => s(Method::GET, "/api/admin", vec![bearer(&book.admin)]),
        K::CorsGet => s(
            Method::GET,
            "/api/items",
            vec![bearer(&hot), ("origin", ORIGIN.into())],
        ),
        K::Open => s(Method::GET, "/open/ping", vec![]),
        K::Partner => s(Method::GET, "/partner/orders", vec![bearer(&book.partner)]),
        K::Preflight => s(
            Method::OPTIONS,
            "/api/items",
            vec![
                ("origin", ORIGIN.into()),
                ("access-control-request-method", "POST".into()),
                (
                    "access-control-request-headers",
                    "authorization, content-type".into(),
                ),
            ],
        ),
        K::PreflightForeign => s(
            Method::OPTIONS,
            "/api/items",
            vec![
                ("origin", FOREIGN_ORIGIN.into()),
                ("access-control-request-method", "GET".into()),
            ],
        ),
        K::NoToken => s(Method::GET, "/api/items", vec![]),
        K::Expired => s(Method::GET, "/api/items", vec![bearer(&book.expired)]),
        K::Forged => s(Method::GET, "/api/items", vec![bearer(&book.forged)]),
        K::ForgedKid => s(Method::GET, "/api/items", vec![bearer(&book.forged_kid)]),
        K::Tampered => s(Method::GET, "/api/admin", vec![bearer(&book.tampered)]),
        K::WrongAud => s(Method::GET, "/api/items", vec![bearer(&book.wrong_aud)]),
        K::WrongIss => s(Method::GET, "/api/items", vec![bearer(&book.wrong_iss)]),
        K::AlgNone => s(Method::GET, "/api/admin", vec![bearer(&book.alg_none)]),
        K::MissingScope => s(Method::GET, "/api/items", vec![bearer(&book.missing_scope)]),
        K::EndpointScope => s(Method::GET, "/api/admin", vec![bearer(&hot)]),
        K::ClientDenied => s(Method::GET, "/api/items", vec![bearer(&book.client_denied)]),
        K::EndpointDenied => s(Method::GET, "/api/secret", vec![bearer(&hot)]),
        K::MethodDenied => s(Method::DELETE, "/api/items", vec![bearer(&hot)]),
        K::PathSlash => s(Method::GET, "/api//secret", vec![bearer(&hot)]),
        K::PathCase => s(Method::GET, "/api/ITEMS", vec![bearer(&hot)]),
        K::PathEncoded => s(Method::GET, "/api/items%2F..%2Fsecret", vec![bearer(&hot)]),
        K::PartnerDenied => s(
            Method::GET,
            "/partner/orders",
            vec![bearer(&book.partner_denied)],
        ),
        K::NotFound => s(Method::GET, "/nowhere/x", vec![bearer(&hot)]),
        K::TokenBasic => token(vec![basic("soak-app", "app-secret"), form], grant),
        K::TokenPost => token(
            vec![form],
            &format!("{grant}&client_id=soak-reader&client_secret=reader-secret"),
        ),
        K::TokenBadSecret => token(vec![basic("soak-app", "not-the-secret"), form], grant),
        K::TokenBadScope => token(
            vec![basic("soak-reader", "reader-secret"), form],
            &format!("{grant}&scope=api.admin"),
        ),
        K::TokenHashed => token(vec![basic("soak-hashed", "hashed-secret"), form], grant),
        K::UpstreamDown => s(Method::GET, "/down/x", vec![]),
        K::UpstreamTimeout => s(Method::GET, "/faults/slow/1000", vec![]),
        K::ClientAbort => Spec {
            abort_after: Some(Duration::from_millis(80)),
            ..s(Method::GET, "/faults/slow/400", vec![])
        },
    }
}

/// Everything but the status (checked first): error codes, CORS headers, bodies.
fn check(c: &Class, h: &HeaderMap, body: &[u8]) -> Result<(), String> {
    if h.get("x-request-id").is_none() {
        return Err("no X-Request-Id".into());
    }
    let json = || serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
    if let Some(code) = c.error {
        let got = json()["error"].as_str().unwrap_or("").to_owned();
        if got != code {
            return Err(format!("error {got:?}, expected {code:?}"));
        }
    }
    let acao = h
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok());
    match c.k {
        K::Preflight | K::CorsGet if acao != Some(ORIGIN) => {
            Err(format!("Access-Control-Allow-Origin {acao:?}"))
        }
        K::Preflight if !body.is_empty() => Err("preflight answer with a body".into()),
        K::PreflightForeign if acao.is_some() => Err(format!("foreign origin granted: {acao:?}")),
        K::TokenBasic | K::TokenPost | K::TokenHashed
            if json()["access_token"].as_str().is_none() =>
        {
            Err("no access_token".into())
        }
        _ if c.upstream && c.kind != Kind::Fault && json()["class"].as_str() != Some(c.name) => {
            Err("answer did not come from the upstream".into())
        }
        _ => Ok(()),
    }
}

fn transport_kind(e: &reqwest::Error) -> String {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    let mut last = String::new();
    while let Some(s) = src {
        last = s.to_string();
        src = s.source();
    }
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    };
    let mut last: String = last.chars().take(60).collect();
    last.retain(|c| c != '\n');
    format!("{kind} ({last})")
}

/// One latency sample: milliseconds since start, class, microseconds.
type Lat = (u32, u8, u32);

#[derive(Default)]
struct WorkerOut {
    outcomes: HashMap<(usize, Outcome), u64>,
    /// Unexpected answers per class (status, error code, headers, transport).
    problems: HashMap<usize, u64>,
    lat: Vec<Lat>,
}

async fn worker(ctx: Arc<Ctx>, conn: Conn, period: Duration, seed: u64) -> WorkerOut {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = WorkerOut::default();
    let total = *ctx.cum_weights.last().unwrap_or(&1);
    let client = match conn {
        Conn::KeepAlive(i) => &ctx.clients.keep[i],
        Conn::H2 => &ctx.clients.h2,
        Conn::Fresh => &ctx.clients.fresh,
    };
    let _ = ctx
        .until_stopped(tokio::time::sleep(period.mul_f64(rng.gen::<f64>())))
        .await;
    let mut iv = tokio::time::interval(period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if ctx.until_stopped(iv.tick()).await.is_none() {
            break;
        }
        let _g = ctx.gate.read().await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let r = rng.gen_range(0..total);
        let ci = ctx.cum_weights.partition_point(|&w| w <= r);
        let c = &CLASSES[ci];
        let sp = spec(&ctx, c.k, &mut rng);
        let mut rb = client
            .request(sp.method.clone(), format!("{}{}", ctx.base, sp.path))
            .header("x-soak-class", c.name);
        for (k, v) in &sp.headers {
            rb = rb.header(*k, v);
        }
        if let Some(b) = sp.body {
            rb = rb.body(b);
        }
        let started = Instant::now();
        let exchange = async {
            let resp = rb.send().await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        let result = match sp.abort_after {
            Some(d) => tokio::time::timeout(d, exchange).await.ok(),
            None => Some(exchange.await),
        };
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        ctx.live.sent.fetch_add(1, Ordering::Relaxed);
        let (outcome, problem) = match result {
            None if c.expect.is_empty() => (Outcome::Aborted, None),
            None => (Outcome::Aborted, Some("client gave up".to_owned())),
            Some(Err(e)) => {
                ctx.live.transport.fetch_add(1, Ordering::Relaxed);
                let k = transport_kind(&e);
                (Outcome::Transport(k.clone()), Some(k))
            }
            Some(Ok((status, headers, body))) => {
                let t_ms = ctx.t0.elapsed().as_millis().min(u32::MAX as u128) as u32;
                out.lat.push((t_ms, ci as u8, us));
                let problem = if !c.expect.contains(&status) {
                    Some(format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(160)])
                    ))
                } else {
                    check(c, &headers, &body).err()
                };
                if status >= 500 {
                    if c.kind == Kind::Fault && c.expect.contains(&status) {
                        ctx.live.fault_5xx.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ctx.live.unexpected_5xx.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (Outcome::Status(status), problem)
            }
        };
        if let Some(p) = problem {
            *out.problems.entry(ci).or_default() += 1;
            ctx.live.unexpected.fetch_add(1, Ordering::Relaxed);
            let mut l = ctx.unexpected_log.lock().unwrap_or_else(|e| e.into_inner());
            if l.len() < 30 {
                l.push(format!(
                    "t={:.1}s {} {} {}: {p}",
                    ctx.t0.elapsed().as_secs_f64(),
                    c.name,
                    sp.method,
                    sp.path
                ));
            }
        }
        *out.outcomes.entry((ci, outcome)).or_default() += 1;
    }
    out
}

async fn fetch_local_token(ctx: &Ctx) -> Option<String> {
    let r = ctx
        .clients
        .admin
        .post(format!("{}/oauth2/token", ctx.base))
        .basic_auth("soak-app", Some("app-secret"))
        .header("x-soak-class", "token_service_basic")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["access_token"].as_str().map(str::to_owned)
}

async fn rotator(ctx: Arc<Ctx>, errors: Arc<AtomicU64>) {
    let mut rng = StdRng::from_entropy();
    loop {
        if ctx
            .until_stopped(tokio::time::sleep(ROTATE))
            .await
            .is_none()
        {
            return;
        }
        let local = match fetch_local_token(&ctx).await {
            Some(t) => t,
            None => {
                errors.fetch_add(1, Ordering::Relaxed);
                ctx.book
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .local
                    .clone()
            }
        };
        let b = mint_book(&ctx.minter, &mut rng, local);
        *ctx.book.write().unwrap_or_else(|e| e.into_inner()) = b;
    }
}

async fn status_version(ctx: &Ctx) -> Option<u64> {
    let v: serde_json::Value = ctx
        .clients
        .admin
        .get(format!("{}/admin/status", ctx.admin))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["config_version"].as_u64()
}

#[derive(Default)]
struct Reloads {
    file_ok: u64,
    file_missed: u64,
    file_latency: Vec<f64>,
    admin_ok: u64,
    admin_failed: u64,
    /// Version bumps nobody asked for (e.g. one file write reloaded twice).
    unrequested: u64,
    errors: Vec<String>,
}

async fn reloader(ctx: Arc<Ctx>, setup: Arc<Setup>, every: Duration) -> Reloads {
    let mut r = Reloads::default();
    let mut variant = false;
    let mut last = status_version(&ctx).await.unwrap_or(0);
    let mut i = 0u64;
    let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        if ctx.until_stopped(iv.tick()).await.is_none() {
            break;
        }
        let _g = ctx.gate.read().await;
        let before = match status_version(&ctx).await {
            Some(v) => Some(v),
            None => status_version(&ctx).await, // one retry: see `builder`
        };
        let Some(before) = before else {
            r.errors.push("GET /admin/status failed".into());
            continue;
        };
        r.unrequested += before.saturating_sub(last);
        i += 1;
        if i % 2 == 1 {
            variant = !variant;
            let t = Instant::now();
            if let Err(e) = write_config(&setup, variant) {
                r.errors.push(format!("writing the config: {e}"));
                continue;
            }
            // SPEC: a change is applied within 2 s; allow 5 before calling it missed.
            let mut applied = None;
            while t.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(v) = status_version(&ctx).await.filter(|v| *v > before) {
                    applied = Some(v);
                    break;
                }
            }
            match applied {
                Some(v) => {
                    r.file_ok += 1;
                    r.file_latency.push(t.elapsed().as_secs_f64());
                    last = v;
                }
                None => {
                    r.file_missed += 1;
                    last = before;
                    if r.errors.len() < 10 {
                        r.errors
                            .push(format!("file rewrite #{i} not applied within 5 s"));
                    }
                }
            }
        } else {
            let res = ctx
                .clients
                .admin
                .post(format!("{}/admin/reload", ctx.admin))
                .send()
                .await;
            match res {
                Ok(resp) if resp.status() == 200 => {
                    let v: serde_json::Value = resp.json().await.unwrap_or_default();
                    r.admin_ok += 1;
                    last = v["config_version"].as_u64().unwrap_or(before + 1);
                }
                Ok(resp) => {
                    r.admin_failed += 1;
                    let st = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    if r.errors.len() < 10 {
                        r.errors.push(format!("POST /admin/reload: {st} {body}"));
                    }
                    last = before;
                }
                Err(e) => {
                    r.admin_failed += 1;
                    if r.errors.len() < 10 {
                        r.errors.push(format!("POST /admin/reload: {e}"));
                    }
                    last = before;
                }
            }
        }
    }
    r
}

struct Probe {
    pid: u32,
    own_ports: Vec<u16>,
    backend_ports: Vec<u16>,
}

async fn take_sample(ctx: &Ctx, p: &Probe, checkpoint: Option<&'static str>) -> Sample {
    let metrics = match ctx
        .clients
        .admin
        .get(format!("{}/metrics", ctx.admin))
        .send()
        .await
    {
        Ok(r) => metric_lines(&r.text().await.unwrap_or_default()),
        Err(_) => Vec::new(),
    };
    let get = |name: &str| {
        metrics
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .unwrap_or(f64::NAN)
    };
    let caches = metrics
        .iter()
        .filter_map(|(k, v)| {
            let label = k.strip_prefix("tollgate_cache_entries{cache=\"")?;
            Some((label.trim_end_matches("\"}").to_owned(), *v))
        })
        .collect();
    // /proc reads off the runtime: they must not delay the workers' requests.
    let (pid, own, backend) = (p.pid, p.own_ports.clone(), p.backend_ports.clone());
    let (rss_kib, cpu_ticks, fds) = tokio::task::spawn_blocking(move || {
        (rss_kib(pid), cpu_ticks(pid), fds(pid, &own, &backend))
    })
    .await
    .unwrap_or_default();
    Sample {
        t: ctx.t0.elapsed().as_secs_f64(),
        rss_kib,
        cpu_ticks,
        fds,
        open_connections: get("tollgate_open_connections"),
        caches,
        checkpoint,
    }
}

/// Pauses traffic and reloads, lets tollgate settle, and samples.
async fn checkpoint(ctx: &Ctx, p: &Probe, name: &'static str) -> Sample {
    let _w = ctx.gate.write().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    take_sample(ctx, p, Some(name)).await
}

// ---------------------------------------------------------------------------------------
// figures and the report
// ---------------------------------------------------------------------------------------

fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

struct LatFig {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn lat_fig(lat: &[Lat], keep: impl Fn(&Lat) -> bool) -> LatFig {
    let mut v: Vec<u32> = lat.iter().filter(|l| keep(l)).map(|l| l.2).collect();
    v.sort_unstable();
    LatFig {
        n: v.len(),
        p50: pct(&v, 0.50),
        p99: pct(&v, 0.99),
        max: v.last().map(|m| *m as f64 / 1000.0).unwrap_or(f64::NAN),
    }
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}")
    }
}

fn dur(d: f64) -> String {
    let s = d.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn utc_now() -> String {
    // "2026-11-21T00:10:00Z" -> "2026-11-21 00:10 UTC"
    let t = tollgate::encoding::rfc3339(std::time::SystemTime::now());
    format!("{} {} UTC", &t[..10], &t[11..16])
}

struct Criterion {
    name: &'static str,
    target: String,
    measured: String,
    ok: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

/// The exit status: 0 pass, 1 a criterion failed, 2 incomplete.
async fn run(args: Args) -> Result<u8, String> {
    let duration = args.duration;
    let warmup = args
        .warmup
        .unwrap_or_else(|| Duration::from_secs(60).max(duration / 10).min(duration / 3));
    let workers = args.keepalive + args.h2 + args.fresh;
    if workers == 0 || args.rate <= 0.0 {
        return Err("need at least one worker and a positive rate".into());
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let dir = tmp.path().to_path_buf();

    let signing_key = dir.join("signing.pem");
    std::fs::write(&signing_key, SigningKey::generate_es256_pem()?)
        .map_err(|e| format!("signing key: {e}"))?;

    // The identity provider and the upstream, on 127.0.0.1:0.
    let obs = Arc::new(Observed {
        hits: CLASSES.iter().map(|_| AtomicU64::new(0)).collect(),
        ..Default::default()
    });
    let bind = || async {
        TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))
    };
    let idp_l = bind().await?;
    let up_l = bind().await?;
    let idp_addr: SocketAddr = idp_l.local_addr().map_err(|e| e.to_string())?;
    let up_addr: SocketAddr = up_l.local_addr().map_err(|e| e.to_string())?;
    let dead_port = {
        let l = bind().await?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let ext_iss = format!("http://{idp_addr}");
    // Keys: the external issuer's and a forger's (tollgate's token-service key is above).
    let minter = Minter {
        iss: ext_iss.clone(),
        key: SigningKey::generate_es256()?,
        forger: SigningKey::generate_es256()?,
    };
    let jwks = Arc::new(minter.key.jwks());
    let o = obs.clone();
    tokio::spawn(serve(idp_l, move |req| idp(jwks.clone(), o.clone(), req)));
    let o = obs.clone();
    let iss: Arc<str> = ext_iss.clone().into();
    tokio::spawn(serve(up_l, move |req| {
        upstream(iss.clone(), o.clone(), req)
    }));

    // An argon2id hash from the binary itself.
    let hashed_secret = {
        let mut c = Command::new(&args.tollgate)
            .arg("hash-secret")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", args.tollgate.display()))?;
        c.stdin
            .take()
            .ok_or("stdin")?
            .write_all(b"hashed-secret\n")
            .map_err(|e| e.to_string())?;
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let setup = Arc::new(Setup {
        dir: dir.clone(),
        ext_iss: ext_iss.clone(),
        upstream: format!("http://{up_addr}"),
        dead_port,
        signing_key,
        hashed_secret,
    });
    write_config(&setup, false).map_err(|e| format!("writing the config: {e}"))?;
    let config_path = dir.join("gateway.yaml");
    let v = Command::new(&args.tollgate)
        .args(["validate", "--config"])
        .arg(&config_path)
        .output()
        .map_err(|e| e.to_string())?;
    if !v.status.success() {
        return Err(format!(
            "the soak config does not validate:\n{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        ));
    }

    let (mut child, logs) = spawn_tollgate(&args.tollgate, &config_path)?;
    let pid = child.id();
    if let Some(p) = &args.pidfile {
        let _ = std::fs::write(p, format!("{pid}\n"));
    }
    let result = drive(&args, duration, warmup, &setup, minter, obs, pid, &logs).await;
    let (exit, stop_time) = stop_tollgate(&mut child);
    if let Some(p) = &args.pidfile {
        let _ = std::fs::remove_file(p);
    }
    let mut d = result?;
    if d.died_at.is_some() {
        d.shutdown = format!("had already exited: {exit}");
    } else {
        d.shutdown = format!("{exit} after SIGTERM, in {:.2} s", stop_time.as_secs_f64());
        d.shutdown_ok = exit.contains("exit status: 0");
    }
    let code = report(&args, duration, warmup, workers, &d, &logs)?;
    drop(tmp);
    Ok(code)
}

struct Driven {
    samples: Vec<Sample>,
    outcomes: HashMap<(usize, Outcome), u64>,
    problems: HashMap<usize, u64>,
    lat: Vec<Lat>,
    reloads: Reloads,
    rotate_errors: u64,
    obs: Arc<Observed>,
    unexpected: Vec<String>,
    unexpected_total: u64,
    unexpected_5xx: u64,
    fault_5xx: u64,
    transport: u64,
    sent: u64,
    elapsed: f64,
    warmup_at: f64,
    interrupted: bool,
    load_start: String,
    load_end: String,
    /// When tollgate exited by itself, seconds into the run.
    died_at: Option<f64>,
    client_bound: u64,
    upstream_bound: u64,
    tollgate_5xx: f64,
    shutdown: String,
    shutdown_ok: bool,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &Args,
    duration: Duration,
    warmup: Duration,
    setup: &Arc<Setup>,
    minter: Minter,
    obs: Arc<Observed>,
    pid: u32,
    logs: &Arc<Mutex<LogStats>>,
) -> Result<Driven, String> {
    // The listening addresses, from tollgate's startup line.
    let t = Instant::now();
    let (public, admin) = loop {
        if let Some(s) = logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .startup
            .clone()
        {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) || !Path::new(&format!("/proc/{pid}")).exists() {
            let l = logs.lock().unwrap_or_else(|e| e.into_inner());
            return Err(format!(
                "tollgate did not start (no startup line); it said:\n{}",
                l.tail.iter().cloned().collect::<Vec<_>>().join("\n")
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let port = |a: &str| {
        a.rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(0)
    };
    let probe = Probe {
        pid,
        own_ports: vec![port(&public), port(&admin)],
        backend_ports: vec![port(&setup.upstream), port(&setup.ext_iss)],
    };
    let mut total = 0;
    let cum_weights = weights(&args.weight)?
        .into_iter()
        .map(|w| {
            total += w;
            total
        })
        .collect();
    let ctx = Arc::new(Ctx {
        base: format!("http://{public}"),
        admin: format!("http://{admin}"),
        minter,
        book: RwLock::new(Book::default()),
        clients: clients(args.keepalive),
        stop: AtomicBool::new(false),
        stopped: tokio::sync::watch::Sender::new(false),
        gate: tokio::sync::RwLock::new(()),
        live: Live::default(),
        unexpected_log: Mutex::default(),
        t0: Instant::now(),
        cum_weights,
    });
    // Ready?
    let t = Instant::now();
    loop {
        let r = ctx
            .clients
            .admin
            .get(format!("{}/readyz", ctx.admin))
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err("tollgate not ready (/readyz) within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let local = fetch_local_token(&ctx)
        .await
        .ok_or("the token service did not issue a token")?;
    {
        let mut rng = StdRng::from_entropy();
        *ctx.book.write().unwrap_or_else(|e| e.into_inner()) =
            mint_book(&ctx.minter, &mut rng, local);
    }
    println!(
        "soak: tollgate pid {pid} on {public} (admin {admin}); {} for {} (warm-up {}), {:.0} req/s over {} keep-alive + {} h2c + {} new-connection workers, reload every {}",
        ctx.base,
        dur(duration.as_secs_f64()),
        dur(warmup.as_secs_f64()),
        args.rate,
        args.keepalive,
        args.h2,
        args.fresh,
        dur(args.reload_every.as_secs_f64()),
    );

    let load_start = loadavg();
    let t0 = Instant::now();
    let workers = args.keepalive + args.h2 + args.fresh;
    let period = Duration::from_secs_f64(workers as f64 / args.rate);
    let mut handles = Vec::new();
    let mut seed = rand::random::<u64>();
    let conns = (0..args.keepalive)
        .map(Conn::KeepAlive)
        .chain((0..args.h2).map(|_| Conn::H2))
        .chain((0..args.fresh).map(|_| Conn::Fresh));
    for conn in conns {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        handles.push(tokio::spawn(worker(ctx.clone(), conn, period, seed)));
    }
    let rotate_errors = Arc::new(AtomicU64::new(0));
    tokio::spawn(rotator(ctx.clone(), rotate_errors.clone()));
    let reload_task = tokio::spawn(reloader(ctx.clone(), setup.clone(), args.reload_every));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let probe = Arc::new(probe);
    let sampler = {
        let (ctx, probe, samples, every) = (
            ctx.clone(),
            probe.clone(),
            samples.clone(),
            args.sample_every,
        );
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            while ctx.until_stopped(iv.tick()).await.is_some() {
                // Not while a checkpoint has traffic paused: windows are under load.
                let Ok(_g) = ctx.gate.try_read() else {
                    continue;
                };
                let s = take_sample(&ctx, &probe, None).await;
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            }
        })
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut interrupted = false;
    let mut died_at = None;
    let progress_every =
        Duration::from_secs_f64((duration.as_secs_f64() / 20.0).clamp(10.0, 120.0));
    let end = t0 + duration;
    let warm_end = t0 + warmup;
    let mut warm_done = false;
    let mut next = t0 + progress_every;
    let mut last_sent = 0u64;
    let mut last_t = Instant::now();
    while Instant::now() < end {
        let until = next.min(end).min(if warm_done { end } else { warm_end });
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = tokio::signal::ctrl_c() => interrupted = true,
            _ = term.recv() => interrupted = true,
        }
        if interrupted {
            break;
        }
        if !alive(pid) {
            died_at = Some(t0.elapsed().as_secs_f64());
            eprintln!("soak: tollgate exited during the run; stopping");
            break;
        }
        if !warm_done && Instant::now() >= warm_end {
            let s = checkpoint(&ctx, &probe, "start").await;
            println!(
                "soak: warm-up over at {}: RSS {}, fds {} ({} base, {} client, {} upstream)",
                dur(t0.elapsed().as_secs_f64()),
                mib(s.rss_kib),
                s.fds.total,
                s.fds.base,
                s.fds.client,
                s.fds.upstream
            );
            samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            warm_done = true;
        }
        if Instant::now() >= next {
            next += progress_every;
            let sent = ctx.live.sent.load(Ordering::Relaxed);
            let rate = (sent - last_sent) as f64 / last_t.elapsed().as_secs_f64();
            last_sent = sent;
            last_t = Instant::now();
            let last = samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last()
                .cloned()
                .unwrap_or_default();
            println!(
                "[soak {:>7}] {sent} requests ({rate:.0}/s), unexpected {}, unexpected 5xx {}, violations {}, RSS {}, fds {}",
                dur(t0.elapsed().as_secs_f64()),
                ctx.live.unexpected.load(Ordering::Relaxed),
                ctx.live.unexpected_5xx.load(Ordering::Relaxed),
                obs.violations.load(Ordering::Relaxed),
                mib(last.rss_kib),
                last.fds.total,
            );
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    ctx.stop();
    let mut outcomes: HashMap<(usize, Outcome), u64> = HashMap::new();
    let mut problems: HashMap<usize, u64> = HashMap::new();
    let mut lat = Vec::new();
    for h in handles {
        if let Ok(w) = h.await {
            for (k, v) in w.outcomes {
                *outcomes.entry(k).or_default() += v;
            }
            for (k, v) in w.problems {
                *problems.entry(k).or_default() += v;
            }
            lat.extend(w.lat);
        }
    }
    let reloads = reload_task.await.unwrap_or_default();
    let _ = sampler.await;
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    if warm_done {
        let s = checkpoint(&ctx, &probe, "end").await;
        println!(
            "soak: traffic stopped at {}: RSS {}, fds {} ({} base, {} client, {} upstream)",
            dur(elapsed),
            mib(s.rss_kib),
            s.fds.total,
            s.fds.base,
            s.fds.client,
            s.fds.upstream
        );
        samples.push(s);
    }
    let tollgate_5xx = match ctx
        .clients
        .admin
        .get(format!("{}/metrics", ctx.admin))
        .send()
        .await
    {
        Ok(r) => metric_lines(&r.text().await.unwrap_or_default())
            .iter()
            .filter(|(k, _)| k.starts_with("tollgate_requests_total{") && k.contains("status=\"5"))
            .map(|(_, v)| v)
            .sum(),
        Err(_) => f64::NAN,
    };
    let unexpected =
        std::mem::take(&mut *ctx.unexpected_log.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Driven {
        samples,
        outcomes,
        problems,
        lat,
        reloads,
        rotate_errors: rotate_errors.load(Ordering::Relaxed),
        obs,
        unexpected,
        unexpected_total: ctx.live.unexpected.load(Ordering::Relaxed),
        unexpected_5xx: ctx.live.unexpected_5xx.load(Ordering::Relaxed),
        fault_5xx: ctx.live.fault_5xx.load(Ordering::Relaxed),
        transport: ctx.live.transport.load(Ordering::Relaxed),
        sent: ctx.live.sent.load(Ordering::Relaxed),
        elapsed,
        warmup_at: warmup.as_secs_f64(),
        interrupted,
        load_start,
        load_end: loadavg(),
        died_at,
        // Live connections a quiescent tollgate may legitimately hold: one per
        // keep-alive worker, the h2c connection, one per new-connection worker,
        // the driver's admin client (to the admin and the public listener); towards
        // the backends one per worker that can be in flight at once, plus the JWKS /
        // token fetches. A leak grows past these over a long run.
        client_bound: (args.keepalive + usize::from(args.h2 > 0) + args.fresh + 2) as u64,
        upstream_bound: (workers + 2) as u64,
        tollgate_5xx,
        shutdown: String::new(),
        shutdown_ok: false,
    })
}

fn report(
    args: &Args,
    duration: Duration,
    warmup: Duration,
    workers: usize,
    d: &Driven,
    logs: &Arc<Mutex<LogStats>>,
) -> Result<u8, String> {
    let start = d.samples.iter().find(|s| s.checkpoint == Some("start"));
    let end = d.samples.iter().find(|s| s.checkpoint == Some("end"));
    let after: Vec<&Sample> = d
        .samples
        .iter()
        .filter(|s| s.t >= d.warmup_at && s.checkpoint.is_none())
        .collect();
    let rss_max = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    // Under load, right after the warm-up and at the end: 10% of the run, at least a
    // minute, at most half of what follows the warm-up.
    let window = (duration.as_secs_f64() / 10.0)
        .max(60.0)
        .min((d.elapsed - d.warmup_at).max(0.0) / 2.0);
    let rss_in = |from: f64, to: f64| {
        let mut v: Vec<u64> = after
            .iter()
            .filter(|s| s.t >= from && s.t < to)
            .map(|s| s.rss_kib)
            .collect();
        v.sort_unstable();
        (v.first().copied(), v.get(v.len() / 2).copied())
    };
    let (floor_start, median_start) = rss_in(d.warmup_at, d.warmup_at + window);
    let (floor_end, median_end) = rss_in(d.elapsed - window, f64::INFINITY);
    let cpu = match (start, end) {
        (Some(s), Some(e)) if e.t > s.t => {
            let tck = Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(100.0);
            (e.cpu_ticks - s.cpu_ticks) as f64 / tck / (e.t - s.t) * 100.0
        }
        _ => f64::NAN,
    };
    let fds_max = after.iter().map(|s| s.fds.total).max().unwrap_or(0);
    // Least-squares slope of RSS after warm-up, KiB per minute.
    let slope = {
        let n = after.len() as f64;
        if n >= 3.0 {
            let mx = after.iter().map(|s| s.t).sum::<f64>() / n;
            let my = after.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
            let sxy: f64 = after
                .iter()
                .map(|s| (s.t - mx) * (s.rss_kib as f64 - my))
                .sum();
            let sxx: f64 = after.iter().map(|s| (s.t - mx).powi(2)).sum();
            if sxx > 0.0 {
                sxy / sxx * 60.0
            } else {
                0.0
            }
        } else {
            f64::NAN
        }
    };
    let violations = d.obs.violations.load(Ordering::Relaxed);
    let anomalies = d.obs.anomalies.load(Ordering::Relaxed);
    let other_unexpected = d.unexpected_total - d.unexpected_5xx;

    let mut crit = Vec::new();
    match (start, end, floor_start, floor_end) {
        (Some(s), Some(e), Some(fs), Some(fe)) => {
            let growth = (fe as f64 - fs as f64) / fs.max(1) as f64 * 100.0;
            crit.push(Criterion {
                name: "RSS growth after warm-up (floor under load, first vs last window)",
                target: "≤ 10%".into(),
                measured: format!(
                    "{growth:+.1}% ({} → {}; medians {} → {}; max {}; trend {slope:+.0} KiB/min)",
                    mib(fs),
                    mib(fe),
                    mib(median_start.unwrap_or(0)),
                    mib(median_end.unwrap_or(0)),
                    mib(rss_max)
                ),
                ok: growth <= 10.0,
            });
            let base_growth = e.fds.base as i64 - s.fds.base as i64;
            crit.push(Criterion {
                name: "fd growth (everything but live TCP connections)",
                target: "0".into(),
                measured: format!(
                    "{base_growth:+} ({} → {}; all fds {} → {}, max {fds_max})",
                    s.fds.base, e.fds.base, s.fds.total, e.fds.total
                ),
                ok: base_growth <= 0,
            });
            crit.push(Criterion {
                name: "live connections at the end (quiescent)",
                target: format!(
                    "≤ {} client, ≤ {} backend, 0 CLOSE_WAIT",
                    d.client_bound, d.upstream_bound
                ),
                measured: format!(
                    "{} client ({} at start), {} backend ({} at start), {} CLOSE_WAIT, {} other sockets",
                    e.fds.client, s.fds.client, e.fds.upstream, s.fds.upstream, e.fds.close_wait, e.fds.other
                ),
                ok: e.fds.client <= d.client_bound
                    && e.fds.upstream <= d.upstream_bound
                    && e.fds.close_wait == 0
                    && e.fds.other <= s.fds.other,
            });
        }
        _ => crit.push(Criterion {
            name: "RSS / fd growth",
            target: "measured".into(),
            measured: "the run ended before the warm-up did".into(),
            ok: false,
        }),
    }
    crit.push(Criterion {
        name: "unexpected 5xx",
        target: "0".into(),
        measured: format!(
            "{} ({} expected from fault classes; tollgate's own count of 5xx: {})",
            d.unexpected_5xx, d.fault_5xx, d.tollgate_5xx
        ),
        ok: d.unexpected_5xx == 0,
    });
    crit.push(Criterion {
        name: "policy violations at the upstream",
        target: "0".into(),
        measured: violations.to_string(),
        ok: violations == 0,
    });
    crit.push(Criterion {
        name: "other unexpected answers (status, error code, headers, transport)",
        target: "0".into(),
        measured: format!("{other_unexpected} ({} transport errors)", d.transport),
        ok: other_unexpected == 0,
    });
    crit.push(Criterion {
        name: "upstream anomalies (truncated bodies, stale upstream tokens)",
        target: "0".into(),
        measured: anomalies.to_string(),
        ok: anomalies == 0,
    });
    let r = &d.reloads;
    crit.push(Criterion {
        name: "reloads applied",
        target: "all; a file change within 2 s (SPEC)".into(),
        measured: format!(
            "{}/{} file rewrites (applied in p50 {:.2} s, max {:.2} s), {}/{} POST /admin/reload",
            r.file_ok,
            r.file_ok + r.file_missed,
            {
                let mut v = r.file_latency.clone();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            },
            r.file_latency.iter().copied().fold(f64::NAN, f64::max),
            r.admin_ok,
            r.admin_ok + r.admin_failed
        ),
        ok: r.file_missed == 0
            && r.file_latency.iter().all(|l| *l <= 2.0)
            && r.admin_failed == 0
            && r.errors.is_empty()
            && r.file_ok + r.admin_ok > 0,
    });
    crit.push(Criterion {
        name: "tollgate stayed up",
        target: "until stopped".into(),
        measured: match d.died_at {
            Some(t) => format!("exited by itself at {}", dur(t)),
            None => "yes".into(),
        },
        ok: d.died_at.is_none(),
    });
    crit.push(Criterion {
        name: "graceful shutdown",
        target: "exit 0 on SIGTERM".into(),
        measured: d.shutdown.clone(),
        ok: d.shutdown_ok,
    });
    let complete = !d.interrupted && (start.is_some() || d.died_at.is_some());
    let pass = complete && crit.iter().all(|c| c.ok);

    // Per-class table.
    let mut per_class: Vec<(usize, u64, BTreeMap<String, u64>)> = Vec::new();
    for (ci, c) in CLASSES.iter().enumerate() {
        let mut m = BTreeMap::new();
        let mut n = 0;
        for ((i, o), v) in &d.outcomes {
            if *i == ci {
                *m.entry(o.to_string()).or_default() += v;
                n += v;
            }
        }
        let _ = c;
        per_class.push((ci, n, m));
    }
    let valid = lat_fig(&d.lat, |l| CLASSES[l.1 as usize].kind == Kind::Valid);
    let overall = lat_fig(&d.lat, |l| CLASSES[l.1 as usize].kind != Kind::Fault);
    let window = window * 1000.0;
    let w_ms = d.warmup_at * 1000.0;
    let e_ms = d.elapsed * 1000.0;
    let first = lat_fig(&d.lat, |l| {
        CLASSES[l.1 as usize].kind != Kind::Fault
            && (l.0 as f64) >= w_ms
            && (l.0 as f64) < w_ms + window
    });
    let last = lat_fig(&d.lat, |l| {
        CLASSES[l.1 as usize].kind != Kind::Fault && (l.0 as f64) >= e_ms - window
    });
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for ((_, o), v) in &d.outcomes {
        let key = match o {
            Outcome::Status(s) => format!("{}xx", s / 100),
            other => other.to_string(),
        };
        *by_status.entry(key).or_default() += v;
    }

    let logs = logs.lock().unwrap_or_else(|e| e.into_inner());
    let mut md = String::new();
    let _ = writeln!(md, "# Soak test — latest run\n");
    let _ = writeln!(
        md,
        "Written by `scripts/soak.sh` (driver: `examples/soak.rs`); every run overwrites this file.\n"
    );
    let _ = writeln!(
        md,
        "- **Verdict: {}**",
        if pass {
            "PASS".to_owned()
        } else if !complete {
            "INCOMPLETE (interrupted or shorter than the warm-up)".to_owned()
        } else {
            format!(
                "FAIL ({})",
                crit.iter()
                    .filter(|c| !c.ok)
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        md,
        "- Date: {} · commit `{}` · {} cores, Linux {} · tollgate: `TOKIO_WORKER_THREADS` {}, `RUST_LOG` {}",
        utc_now(),
        if args.commit.is_empty() { "?" } else { &args.commit },
        cores,
        kernel.trim(),
        std::env::var("TOKIO_WORKER_THREADS").unwrap_or_else(|_| "default".into()),
        std::env::var("RUST_LOG").unwrap_or_else(|_| "default (info)".into()),
    );
    let _ = writeln!(
        md,
        "- Duration: {} of traffic{} (warm-up {} excluded from growth figures) · target {:.0} req/s, achieved {:.0} req/s ({} requests) over {} workers: {} HTTP/1.1 keep-alive, {} sharing one h2c connection, {} opening a connection per request",
        dur(d.elapsed),
        if d.interrupted { " (interrupted)" } else { "" },
        dur(warmup.as_secs_f64()),
        args.rate,
        d.sent as f64 / d.elapsed.max(1.0),
        d.sent,
        workers,
        args.keepalive,
        args.h2,
        args.fresh
    );
    let _ = writeln!(
        md,
        "- tollgate used {cpu:.0}% of one core on average between the checkpoints; the driver runs on the same machine; load average {} at the start, {} at the end.\n- Reloads every {} alternating a real config change written to the file and `POST /admin/reload`; RSS, fds and `/metrics` sampled every {}; start and end figures are taken with traffic paused for 2 s.\n",
        d.load_start,
        d.load_end,
        dur(args.reload_every.as_secs_f64()),
        dur(args.sample_every.as_secs_f64())
    );
    let _ = writeln!(md, "## Criteria (issue 8)\n");
    let _ = writeln!(md, "| criterion | target | measured | |\n|---|---|---|---|");
    for c in &crit {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.name,
            c.target,
            c.measured,
            if c.ok { "PASS" } else { "**FAIL**" }
        );
    }
    let _ = writeln!(md, "\n## Requests\n");
    let _ = writeln!(
        md,
        "By outcome: {}\n",
        by_status
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    let _ = writeln!(
        md,
        "| latency (ms) | requests | p50 | p99 | max |\n|---|---|---|---|---|"
    );
    for (name, f) in [
        ("all but fault classes", &overall),
        ("valid, authorised API calls", &valid),
        ("first window after warm-up", &first),
        ("last window", &last),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} |",
            f.n,
            ms(f.p50),
            ms(f.p99),
            ms(f.max)
        );
    }
    let _ = writeln!(
        md,
        "\n(windows: {} each; latency is request sent → whole body read, on the client)\n",
        dur(window / 1000.0)
    );
    let _ = writeln!(
        md,
        "| class | expected | sent | outcomes | unexpected | reached upstream | p99 ms |\n|---|---|---|---|---|---|---|"
    );
    for (ci, n, m) in &per_class {
        let c = &CLASSES[*ci];
        let unexpected = d.problems.get(ci).copied().unwrap_or(0);
        let p99 = ms(lat_fig(&d.lat, |l| l.1 as usize == *ci).p99);
        let _ = writeln!(
            md,
            "| {} | {} | {n} | {} | {unexpected} | {} | {} |",
            c.name,
            if c.expect.is_empty() {
                "abort (80 ms)".to_owned()
            } else {
                c.expect
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            },
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            d.obs.hits[*ci].load(Ordering::Relaxed),
            p99
        );
    }
    let _ = writeln!(
        md,
        "\n\"unexpected\": a wrong status, error code, CORS header or body, or a transport error; the upstream's own count is in \"reached upstream\". Identity provider: {} JWKS fetches, {} upstream-token fetches; token rotations that could not get a token-service token: {}.\n",
        d.obs.jwks_hits.load(Ordering::Relaxed),
        d.obs.token_hits.load(Ordering::Relaxed),
        d.rotate_errors
    );

    let _ = writeln!(md, "## tollgate process over time\n");
    let cache_names: Vec<String> = d
        .samples
        .first()
        .map(|s| s.caches.iter().map(|c| c.0.clone()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "| t | RSS | fds | base fds | client conns | backend conns | open_connections | {} |\n|---|---|---|---|---|---|---|{}",
        cache_names.iter().map(|c| format!("cache {c}")).collect::<Vec<_>>().join(" | "),
        "---|".repeat(cache_names.len())
    );
    let step = (d.samples.len() / 12).max(1);
    for (i, s) in d.samples.iter().enumerate() {
        if s.checkpoint.is_none() && i % step != 0 && i + 1 != d.samples.len() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} |",
            dur(s.t),
            s.checkpoint.map(|c| format!(" ({c})")).unwrap_or_default(),
            mib(s.rss_kib),
            s.fds.total,
            s.fds.base,
            s.fds.client,
            s.fds.upstream,
            s.open_connections,
            cache_names
                .iter()
                .map(|n| s
                    .caches
                    .iter()
                    .find(|c| &c.0 == n)
                    .map(|c| c.1.to_string())
                    .unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(md, "\n## Notes\n");
    if let (Some(s), Some(e)) = (start, end) {
        let minutes = ((e.t - s.t) / 60.0).max(1.0 / 60.0);
        for (name, v) in &e.caches {
            let before = s.caches.iter().find(|c| &c.0 == name).map_or(0.0, |c| c.1);
            let _ = writeln!(
                md,
                "- Cache `{name}`: {before} → {v} entries between the checkpoints ({:+.0}/min).",
                (v - before) / minutes
            );
        }
    }
    let _ = writeln!(
        md,
        "- Reloads: {} file rewrites applied, {} missed, {} admin reloads, {} failed, {} reloads nobody asked for.",
        r.file_ok, r.file_missed, r.admin_ok, r.admin_failed, r.unrequested
    );
    for e in &r.errors {
        let _ = writeln!(md, "  - {e}");
    }
    let _ = writeln!(
        md,
        "- tollgate's log lines by level and target ({} WARN/ERROR lines that no request class or fault explains):",
        logs.unexplained
    );
    for ((level, target), n) in &logs.counts {
        let _ = writeln!(md, "  - {level} {target}: {n}");
    }
    if !logs.notable.is_empty() {
        let _ = writeln!(md, "- Unexplained WARN/ERROR lines, first 15:\n\n```");
        for l in &logs.notable {
            let _ = writeln!(md, "{l}");
        }
        let _ = writeln!(md, "```");
    }
    for (title, list) in [
        ("Unexpected answers (first 30)", &d.unexpected),
        (
            "Policy violations (first 25)",
            &*d.obs
                .violation_log
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        ),
        (
            "Upstream anomalies (first 25)",
            &*d.obs.anomaly_log.lock().unwrap_or_else(|e| e.into_inner()),
        ),
    ] {
        if !list.is_empty() {
            let _ = writeln!(md, "- {title}:\n\n```");
            for l in list {
                let _ = writeln!(md, "{l}");
            }
            let _ = writeln!(md, "```");
        }
    }
    let _ = writeln!(
        md,
        "\nHow the criteria are measured: RSS is sampled every {} under load; the criterion compares its floor (minimum) in the first window after the warm-up with its floor in the last window ({} each). The floor, because token-service calls for the argon2id client allocate 19 MiB each (m=19456 KiB), which comes and goes within a second, so single samples swing by that much; a leak raises the floor. File descriptors are compared between two quiescent checkpoints (traffic and reloads paused for 2 s), right after the warm-up and after the last request. \"Base\" fds are every descriptor that is not a TCP connection (listeners, other sockets, epoll, eventfd, pipes, inotify, files): they must not grow at all. Live TCP connections may differ, but only up to what the driver can hold open (one per keep-alive worker, the h2c connection, one per new-connection worker, the admin client's two; towards the backends one per worker that can be in flight, plus key and token fetches), none in CLOSE_WAIT: a connection leak grows past that over a long run.",
        dur(args.sample_every.as_secs_f64()),
        dur(window / 1000.0)
    );

    if let Some(dir) = args.report.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    std::fs::write(&args.report, &md).map_err(|e| format!("{}: {e}", args.report.display()))?;

    // The human summary.
    println!(
        "\n==== soak summary ({}) ====",
        if pass {
            "PASS"
        } else if complete {
            "FAIL"
        } else {
            "INCOMPLETE"
        }
    );
    println!(
        "{} requests in {} ({:.0}/s); {}",
        d.sent,
        dur(d.elapsed),
        d.sent as f64 / d.elapsed.max(1.0),
        by_status
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "latency ms: all p50 {:.2} p99 {:.2} max {:.1}; valid p50 {:.2} p99 {:.2} max {:.1}; p99 first window {:.2}, last {:.2}",
        overall.p50, overall.p99, overall.max, valid.p50, valid.p99, valid.max, first.p99, last.p99
    );
    for c in &crit {
        println!(
            "  [{}] {}: {} (target {})",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.measured,
            c.target
        );
    }
    for (ci, n, m) in &per_class {
        let c = &CLASSES[*ci];
        println!(
            "  {:<32} {:>7}  {}",
            c.name,
            n,
            m.iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    for l in d.unexpected.iter().take(10) {
        println!("  unexpected: {l}");
    }
    for l in d
        .obs
        .violation_log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .take(10)
    {
        println!("  VIOLATION: {l}");
    }
    if let (Some(s), Some(e)) = (start, end) {
        println!(
            "  caches (entries, start → end): {}",
            e.caches
                .iter()
                .map(|(n, v)| {
                    let before = s.caches.iter().find(|c| &c.0 == n).map(|c| c.1);
                    format!("{n} {} → {v}", before.unwrap_or(f64::NAN))
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "  tollgate CPU {cpu:.0}% of one core; {} WARN/ERROR log lines no class explains",
        logs.unexplained
    );
    for l in logs.notable.iter().take(5) {
        println!("  log: {l}");
    }
    println!("report written to {}", args.report.display());
    Ok(if pass {
        0
    } else if complete {
        1
    } else {
        2
    })
}
