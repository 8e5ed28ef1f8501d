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
#[command(
    about = "Soak test: bounded mixed traffic against the tollgate binary on 127.0.0.1",
    args_override_self = true
)]
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
    /// tollgate replicas to start, all watching the same config file; the workers are
    /// spread over them (worker i talks to replica i mod N).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Start a real `redis-server` on a free loopback port (owned by the driver) and add
    /// the rate-limited client classes, whose limits use `store: redis` (shared by every
    /// replica); Redis is restarted every `--redis-restart-every`.
    #[arg(long)]
    redis: bool,
    /// The Redis server binary (Debian: redis-server).
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Kill Redis (by PID) and start it again on the same port this often; default 5m,
    /// or a third of the run when that is shorter than 15 minutes (so a short run sees
    /// two outages). `0s`: never.
    #[arg(long, value_parser = parse_duration)]
    redis_restart_every: Option<Duration>,
    /// How long Redis stays down at each restart (the outage the probes observe).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    redis_down: Duration,
    /// Over-limit clients per rate-limited class (each sends `--rl-rate` requests per
    /// second, alternating between the replicas).
    #[arg(long, default_value_t = 2)]
    rl_clients: usize,
    /// Free text for the report's header (what else was running on the machine).
    #[arg(long, default_value = "")]
    note: String,
    /// Requests per second of each rate-limited client: 5/s is 50 per 10 s window
    /// against a limit of 20.
    #[arg(long, default_value_t = 5.0)]
    rl_rate: f64,
    /// Signed-in browser clients (0: none). Each signs in at the driver's OpenID
    /// provider (authorization code + PKCE through tollgate's `login`), calls a
    /// `login: true` route with its sealed session cookie at `--session-rate`, spread over
    /// every replica under one shared Host (as behind a Kubernetes Service), sends a
    /// tampered cookie now and then, and after `--session-calls` calls logs out and signs
    /// in again.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Calls per second of each signed-in client.
    #[arg(long, default_value_t = 2.0)]
    session_rate: f64,
    /// Calls per session before it logs out (at 2/s, 60 calls take 30 s: every session
    /// refreshes its 70-second access token once).
    #[arg(long, default_value_t = 60)]
    session_calls: usize,
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
    /// Rate-limited clients (`--redis`): sent by their own tasks, not by the workers.
    RlFixed,
    RlSliding,
    RlDeny,
    /// The Redis restarter's probes (a fresh client key each, never over a limit).
    RlProbeAllow,
    RlProbeDeny,
    /// Browser sign-in clients (`--sessions`): sent by their own tasks.
    SessionSignIn,
    SessionApi,
    SessionTampered,
    SessionLogout,
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
    // Weight 0: sent by the rate-limited clients and the Redis restarter (`--redis`),
    // judged afterwards against the windows and the Redis outages (`rl_judge`).
    class!(RlFixed,         "rl_fixed_over_limit", 0, &[200, 429], None, true, Other),
    class!(RlSliding,       "rl_sliding_over_limit", 0, &[200, 429], None, true, Other),
    class!(RlDeny,          "rl_deny_over_limit", 0, &[200, 429], None, true, Other),
    class!(RlProbeAllow,    "redis_probe_on_error_allow", 0, &[200], None, true, Other),
    class!(RlProbeDeny,     "redis_probe_on_error_deny", 0, &[200, 503], None, true, Other),
    // Weight 0: sent by the sign-in clients (`--sessions`, `session_client`). A sign-in is
    // the navigation, the provider's answer and the callback (counted once, by the
    // callback's status); the calls carry the sealed session cookie.
    class!(SessionSignIn,   "session_sign_in",    0, &[302], None, false, Other),
    class!(SessionApi,      "session_api",        0, &[200], None, true, Valid),
    class!(SessionTampered, "session_tampered_cookie", 0, &[401], T, false, Denied),
    class!(SessionLogout,   "session_logout",     0, &[302], None, false, Other),
];

/// The rate-limited routes (`--redis`): route path, limit name, window, on_error.
const RL_LIMIT: u64 = 20;
const RL_PER_S: u64 = 10;
struct RlRoute {
    k: K,
    path: &'static str,
    limit: &'static str,
    fixed: bool,
    deny: bool,
}
static RL_ROUTES: &[RlRoute] = &[
    RlRoute {
        k: K::RlFixed,
        path: "/limited/fixed",
        limit: "rl-fixed",
        fixed: true,
        deny: false,
    },
    RlRoute {
        k: K::RlSliding,
        path: "/limited/sliding",
        limit: "rl-sliding",
        fixed: false,
        deny: false,
    },
    RlRoute {
        k: K::RlDeny,
        path: "/limited/deny",
        limit: "rl-deny",
        fixed: true,
        deny: true,
    },
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
        if CLASSES[i].weight == 0 && w[i] != 0 {
            return Err(format!(
                "--weight {o}: {name} is sent by its own clients (--redis, --rl-clients, --rl-rate, --sessions)"
            ));
        }
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
    /// The sign-in provider (`--sessions`): codes exchanged, refreshes, refusals.
    sso_sign_ins: AtomicU64,
    sso_refreshes: AtomicU64,
    sso_refused: AtomicU64,
    sso_refused_log: Mutex<Vec<String>>,
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
    if path == "/dash" || path.starts_with("/dash/") {
        return judge_session(ext_iss, method, path, h, name);
    }
    if path.starts_with("/open/") || path.starts_with("/faults/slow/") {
        return None;
    }
    if path.starts_with("/limited/") {
        // Counted per client key; 429s must never arrive (the upstream's count per class
        // is compared with the 200s the clients got).
        if header(h, "x-soak-rl-client").is_empty() {
            return Some(format!(
                "{method} {path}: no rate-limit client key ({name})"
            ));
        }
        return None;
    }
    Some(format!(
        "{method} {path}: a path no class sends to the upstream ({name})"
    ))
}

/// A call of a signed-in person (`--sessions`): it must arrive as that person, with an
/// access token the sign-in provider issued to them that has not expired, and without
/// tollgate's own cookies.
fn judge_session(
    ext_iss: &str,
    method: &Method,
    path: &str,
    h: &HeaderMap,
    name: &str,
) -> Option<String> {
    let user = header(h, "x-soak-user");
    if user.is_empty() {
        return Some(format!(
            "{method} {path}: a session call without its person ({name})"
        ));
    }
    let subject = header(h, "x-auth-subject");
    if subject != user {
        return Some(format!(
            "{method} {path}: {user}'s call arrived as subject {subject:?} ({name})"
        ));
    }
    let cookies: Vec<&str> = h
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    if cookies.iter().any(|v| v.contains("tollgate_")) {
        return Some(format!(
            "{method} {path}: tollgate's session cookies reached the upstream ({name})"
        ));
    }
    if !cookies.iter().any(|v| v.contains("dash_pref=dark")) {
        return Some(format!(
            "{method} {path}: the person's own cookie did not reach the upstream ({name})"
        ));
    }
    let auth = header(h, "authorization");
    let Some(claims) = auth.strip_prefix("Bearer ").and_then(jwt_claims) else {
        return Some(format!(
            "{method} {path}: no access token passed on ({name})"
        ));
    };
    let sso_iss = format!("{ext_iss}/sso");
    if claims["iss"].as_str() != Some(sso_iss.as_str())
        || claims["sub"].as_str() != Some(user)
        || claims["aud"].as_str() != Some(AUD)
    {
        return Some(format!(
            "{method} {path}: {user}'s call carried another token (iss {}, sub {}) ({name})",
            claims["iss"], claims["sub"]
        ));
    }
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if exp + EXT_LEEWAY + 2 < now() {
        return Some(format!(
            "{method} {path}: a session's access token expired {}s ago was used ({name})",
            now() - exp
        ));
    }
    None
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

/// The sign-in client tollgate is registered as at the driver's provider (`--sessions`).
const SSO_CLIENT: &str = "soak-web";
const SSO_SECRET: &str = "web-secret";
/// The sign-in access tokens' lifetime: tollgate refreshes a session's token when less
/// than a minute is left, so a session refreshes after about 10 s of use.
const SSO_ACCESS_TTL: i64 = 70;

/// The driver's OpenID provider for browser sign-in (`--sessions`), at `{ext_iss}/sso`:
/// discovery, an authorization endpoint that signs in the person the client names in
/// `x-soak-user` (standing in for the provider's login page, as oidc-provider's
/// devInteractions accept any name), and a token endpoint for `authorization_code` (the
/// client's secret, the redirect URI and the PKCE S256 verifier checked; a code works
/// once, for a minute) and `refresh_token`. Every refusal is counted and reported.
struct Sso {
    iss: String,
    key: SigningKey,
    codes: Mutex<HashMap<String, CodeGrant>>,
    /// Refresh token -> subject.
    refresh: Mutex<HashMap<String, String>>,
}

struct CodeGrant {
    sub: String,
    nonce: String,
    challenge: String,
    redirect_uri: String,
    issued: Instant,
}

impl Sso {
    fn new(ext_iss: &str) -> Result<Sso, String> {
        Ok(Sso {
            iss: format!("{ext_iss}/sso"),
            key: SigningKey::generate_es256()?,
            codes: Mutex::default(),
            refresh: Mutex::default(),
        })
    }

    fn refuse(obs: &Observed, status: u16, error: &str, why: String) -> Resp {
        note(&obs.sso_refused, &obs.sso_refused_log, why);
        json_resp(status, serde_json::json!({"error": error}))
    }

    fn tokens(&self, sub: &str, id_token_nonce: Option<&str>, refresh: &str) -> Resp {
        let n = now();
        let access = serde_json::json!({
            "iss": self.iss, "aud": AUD, "sub": sub, "client_id": SSO_CLIENT,
            "scope": "api.read", "iat": n, "exp": n + SSO_ACCESS_TTL,
            "jti": format!("{:032x}", rand::random::<u128>()),
        });
        let mut body = serde_json::json!({
            "access_token": self.key.sign("JWT", &access).expect("signing"),
            "token_type": "Bearer",
            "expires_in": SSO_ACCESS_TTL,
            "refresh_token": refresh,
            "scope": "openid api.read",
        });
        if let Some(nonce) = id_token_nonce {
            let id = serde_json::json!({
                "iss": self.iss, "aud": SSO_CLIENT, "sub": sub, "nonce": nonce,
                "iat": n, "exp": n + 300,
            });
            body["id_token"] = self.key.sign("JWT", &id).expect("signing").into();
        }
        json_resp(200, body)
    }

    /// The token endpoint: the answer, or a refusal (status, `error`, why, for the report).
    fn token(
        &self,
        obs: &Observed,
        auth: &str,
        body: &[u8],
    ) -> Result<Resp, (u16, &'static str, String)> {
        let want = format!(
            "Basic {}",
            STANDARD.encode(format!("{SSO_CLIENT}:{SSO_SECRET}"))
        );
        if auth != want {
            return Err((401, "invalid_client", "token: wrong client".into()));
        }
        let bad = |why: &str| (400, "invalid_grant", format!("token: {why}"));
        let f: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        match get("grant_type") {
            "authorization_code" => {
                let grant = self
                    .codes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(get("code"));
                let g = grant.ok_or_else(|| bad("unknown or reused code"))?;
                use sha2::Digest as _;
                let verifier = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(get("code_verifier")));
                if verifier != g.challenge {
                    return Err(bad("PKCE verifier does not match"));
                }
                if get("redirect_uri") != g.redirect_uri {
                    return Err(bad("another redirect_uri"));
                }
                if g.issued.elapsed() > Duration::from_secs(60) {
                    return Err(bad("code older than 60 s"));
                }
                obs.sso_sign_ins.fetch_add(1, Ordering::Relaxed);
                let rt = format!("rt-{:032x}", rand::random::<u128>());
                self.refresh
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(rt.clone(), g.sub.clone());
                Ok(self.tokens(&g.sub, Some(&g.nonce), &rt))
            }
            "refresh_token" => {
                let rt = get("refresh_token");
                let sub = self
                    .refresh
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(rt)
                    .cloned()
                    .ok_or_else(|| bad("unknown refresh token"))?;
                obs.sso_refreshes.fetch_add(1, Ordering::Relaxed);
                Ok(self.tokens(&sub, None, rt))
            }
            g => Err((400, "unsupported_grant_type", format!("token: grant {g:?}"))),
        }
    }

    fn serve(
        &self,
        obs: &Observed,
        path: &str,
        query: &str,
        auth: &str,
        user: &str,
        body: &[u8],
    ) -> Resp {
        match path {
            "/sso/.well-known/openid-configuration" => json_resp(
                200,
                serde_json::json!({
                    "issuer": self.iss,
                    "authorization_endpoint": format!("{}/authorize", self.iss),
                    "token_endpoint": format!("{}/token", self.iss),
                    "jwks_uri": format!("{}/jwks", self.iss),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                    "code_challenge_methods_supported": ["S256"],
                }),
            ),
            "/sso/jwks" => json_resp(200, self.key.jwks()),
            "/sso/authorize" => {
                let q: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect();
                let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
                if get("response_type") != "code"
                    || get("client_id") != SSO_CLIENT
                    || get("code_challenge_method") != "S256"
                    || get("code_challenge").is_empty()
                    || get("state").is_empty()
                    || get("nonce").is_empty()
                    || !get("redirect_uri").ends_with("/oauth2/callback")
                    || user.is_empty()
                {
                    return Sso::refuse(
                        obs,
                        400,
                        "invalid_request",
                        "authorize: an incomplete request (parameters not shown: state, nonce and challenge are a sign-in's secrets)".into(),
                    );
                }
                let code = format!("{:032x}", rand::random::<u128>());
                let mut location = url::Url::parse(get("redirect_uri")).expect("checked URL");
                location
                    .query_pairs_mut()
                    .append_pair("code", &code)
                    .append_pair("state", get("state"));
                self.codes.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    code,
                    CodeGrant {
                        sub: user.to_owned(),
                        nonce: get("nonce").to_owned(),
                        challenge: get("code_challenge").to_owned(),
                        redirect_uri: get("redirect_uri").to_owned(),
                        issued: Instant::now(),
                    },
                );
                Response::builder()
                    .status(302)
                    .header("location", location.as_str())
                    .body(Full::new(Bytes::new()))
                    .expect("response")
            }
            "/sso/token" => match self.token(obs, auth, body) {
                Ok(resp) => resp,
                Err((status, error, why)) => Sso::refuse(obs, status, error, why),
            },
            _ => json_resp(404, serde_json::json!({"error": "not_found"})),
        }
    }
}

async fn idp(
    jwks: Arc<serde_json::Value>,
    obs: Arc<Observed>,
    sso: Arc<Sso>,
    req: Request<Incoming>,
) -> Resp {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let auth = header(req.headers(), "authorization").to_owned();
    let user = header(req.headers(), "x-soak-user").to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path.starts_with("/sso/") {
        return sso.serve(&obs, &path, &query, &auth, &user, &body);
    }
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
    /// `--redis`: the port of the driver's redis-server (the rate-limited routes).
    redis_port: Option<u16>,
    /// `--sessions`: browser sign-in at the driver's provider (`{ext_iss}/sso`), with
    /// this cookie secret (the same for every replica: they read one file).
    cookie_secret: Option<String>,
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
  # The bad-secret class sends ~3 failures a second on purpose; the default (10 per
  # minute per client id and IP) would turn the good classes of that client into 429s.
  failed_auth_limit: {{limit: 1000000, per: 1m}}
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
{sso_issuer}
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
        sso_issuer = if s.cookie_secret.is_some() {
            format!(
                "  - name: sso\n    issuer: \"{iss}/sso\"\n    discovery: \"{iss}/sso/.well-known/openid-configuration\"\n    audiences: [\"{AUD}\"]\n    algorithms: [ES256]\n",
                iss = s.ext_iss
            )
        } else {
            String::new()
        },
    );
    if variant {
        y.push_str(
            "  - name: reload-marker\n    path_prefix: /reload-marker\n    upstream: plain\n    auth: none\n",
        );
    }
    if s.cookie_secret.is_some() {
        y.push_str(
            "  - name: dash\n    path_prefix: /dash\n    upstream: plain\n    auth:\n      login: true\n      issuers: [sso]\n      scopes: [api.read]\n",
        );
    }
    if let Some(port) = s.redis_port {
        for r in RL_ROUTES {
            let _ = write!(
                y,
                "  - name: {l}\n    path_prefix: {p}\n    upstream: plain\n    auth: none\n    rate_limits: [{l}]\n",
                l = r.limit,
                p = r.path
            );
        }
        // 250 ms per operation rather than the 50 ms default: the machine is shared and
        // loaded; an operation slower than that is a store error (counted and reported).
        let _ = write!(
            y,
            "\nstores:\n  redis:\n    url: \"redis://127.0.0.1:{port}/0\"\n    timeout: 250ms\n\nrate_limits:\n"
        );
        for r in RL_ROUTES {
            let _ = write!(
                y,
                "  - name: {}\n    key: header:x-soak-rl-client\n    limit: {RL_LIMIT}\n    per: {RL_PER_S}s\n    window: {}\n    store: redis\n    on_error: {}\n",
                r.limit,
                if r.fixed { "fixed" } else { "sliding" },
                if r.deny { "deny" } else { "allow" }
            );
        }
    }
    if let Some(secret) = &s.cookie_secret {
        // Plain HTTP on loopback: cookie_secure must be off (warned at every load).
        let _ = write!(
            y,
            "\nlogin:\n  issuer: sso\n  client_id: {SSO_CLIENT}\n  client_secret: {SSO_SECRET}\n  scopes: [openid, api.read]\n  cookie_secret: \"{secret}\"\n  cookie_secure: false\n"
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
        // The driver's Redis restarts (`--redis`); store errors outside them are
        // counted from tollgate_store_errors_total and reported.
        || line.contains("rate-limit store unavailable")
        // `--sessions` signs in over plain HTTP on loopback: warned at every load.
        || line.contains("login.cookie_secure")
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
    /// The replica (index in start order).
    rep: usize,
    t: f64,
    rss_kib: u64,
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
    fds: Fds,
    open_connections: f64,
    caches: Vec<(String, f64)>,
    checkpoint: Option<&'static str>,
    /// The machine's 1-minute load average.
    load: f64,
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

/// One tollgate replica's listeners.
struct Rep {
    base: String,
    admin: String,
}

struct Ctx {
    /// The replicas, in start order; worker i talks to replica i mod N.
    reps: Vec<Rep>,
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
    /// Status reads that needed their retry on a new connection.
    status_retries: AtomicU64,
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
        // Sent by their own tasks (`rl_client`, `rl_probe`, `session_client`); `weights`
        // keeps them at 0.
        K::RlFixed
        | K::RlSliding
        | K::RlDeny
        | K::RlProbeAllow
        | K::RlProbeDeny
        | K::SessionSignIn
        | K::SessionApi
        | K::SessionTampered
        | K::SessionLogout => s(Method::GET, "/nowhere/x", vec![]),
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

async fn worker(ctx: Arc<Ctx>, conn: Conn, rep: usize, period: Duration, seed: u64) -> WorkerOut {
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
            .request(
                sp.method.clone(),
                format!("{}{}", ctx.reps[rep].base, sp.path),
            )
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
                answered(&ctx, &mut out, ci, us, status, &headers, &body)
            }
        };
        let what = format!("{} {}", sp.method, sp.path);
        book(&ctx, &mut out, ci, rep, &what, outcome, problem);
    }
    out
}

/// An answer of class `ci`: its latency, whether it is one the class expects (status,
/// then [`check`]), and the 5xx counts.
fn answered(
    ctx: &Ctx,
    out: &mut WorkerOut,
    ci: usize,
    us: u32,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> (Outcome, Option<String>) {
    let c = &CLASSES[ci];
    let t_ms = ctx.t0.elapsed().as_millis().min(u32::MAX as u128) as u32;
    out.lat.push((t_ms, ci as u8, us));
    let problem = if !c.expect.contains(&status) {
        Some(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(160)])
        ))
    } else {
        check(c, headers, body).err()
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

/// Counts an outcome of class `ci`, and a problem as unexpected (the first 30 logged).
fn book(
    ctx: &Ctx,
    out: &mut WorkerOut,
    ci: usize,
    rep: usize,
    what: &str,
    outcome: Outcome,
    problem: Option<String>,
) {
    if let Some(p) = problem {
        *out.problems.entry(ci).or_default() += 1;
        ctx.live.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut l = ctx.unexpected_log.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() < 30 {
            l.push(format!(
                "t={:.1}s replica {rep} {} {what}: {p}",
                ctx.t0.elapsed().as_secs_f64(),
                CLASSES[ci].name
            ));
        }
    }
    *out.outcomes.entry((ci, outcome)).or_default() += 1;
}

// ---------------------------------------------------------------------------------------
// Redis (`--redis`): a real redis-server owned by the driver, restarted during the run
// ---------------------------------------------------------------------------------------

/// Unix time in milliseconds (the clock Redis `TIME` and tollgate's windows use).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The PIDs scripts/soak.sh must stop if the driver dies without cleaning up: one line
/// per process, rewritten whenever one changes (Redis gets a new PID at every restart).
#[derive(Default)]
struct PidBook {
    file: Option<PathBuf>,
    tollgate: Vec<u32>,
    redis: Option<u32>,
}

impl PidBook {
    fn write(&self) {
        let Some(f) = &self.file else { return };
        let mut s = String::new();
        for p in self.tollgate.iter().chain(self.redis.iter()) {
            let _ = writeln!(s, "{p}");
        }
        let tmp = f.with_extension("tmp");
        if std::fs::write(&tmp, s).is_ok() {
            let _ = std::fs::rename(tmp, f);
        }
    }
}

/// The driver's redis-server. Killed by PID (SIGKILL) when stopped and when dropped,
/// so a panic or an early return never leaves it running.
struct RedisProc {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    pids: Arc<Mutex<PidBook>>,
}

impl RedisProc {
    fn start(&mut self) -> Result<(), String> {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let mut p = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        p.redis = Some(child.id());
        p.write();
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL by PID and reap it: an abrupt outage, as a crashed or evicted Redis.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let mut p = self.pids.lock().unwrap_or_else(|e| e.into_inner());
            p.redis = None;
            p.write();
        }
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Does Redis on `port` answer PING?
async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

/// Polls PING until Redis answers or `within` has passed.
async fn wait_redis(port: u16, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if redis_ping(port).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One Redis restart as the driver saw it (unix ms).
#[derive(Clone, Default)]
struct Outage {
    killed: u64,
    started: u64,
    /// Redis answered PING again.
    answered: Option<u64>,
    /// Per replica: the first `on_error: deny` probe admitted again after the restart.
    recovered: Vec<Option<u64>>,
    /// Probes while Redis was down, per replica: (allow answered 200, deny answered 503).
    during: Vec<(u64, u64)>,
    /// Probes answered otherwise (while down or after recovery).
    wrong: Vec<String>,
    /// tollgate_store_errors_total{store="redis"} summed over replicas, before and after.
    errors_before: f64,
    errors_after: f64,
}

impl Outage {
    /// From the kill until every replica decided with Redis again (+1 s for requests
    /// already in flight); an unrecovered outage lasts 30 s past the restart.
    fn end(&self) -> u64 {
        let rec = self.recovered.iter().map(|r| r.unwrap_or(u64::MAX)).max();
        match rec {
            Some(u64::MAX) | None => self.started + 30_000,
            Some(r) => r + 1_000,
        }
    }
}

/// A rate-limited request as its client saw it.
struct RlRec {
    ci: usize,
    client: usize,
    rep: usize,
    sent: u64,
    recv: u64,
    /// 0: transport error.
    status: u16,
    problem: Option<String>,
}

/// `"name";r=N;t=T` -> (name, r, t).
fn parse_ratelimit(v: &str) -> Option<(&str, u64, u64)> {
    let mut it = v.split(';');
    let name = it.next()?.trim().trim_matches('"');
    let (mut r, mut t) = (None, None);
    for p in it {
        match p.trim().split_once('=') {
            Some(("r", n)) => r = n.parse().ok(),
            Some(("t", n)) => t = n.parse().ok(),
            _ => {}
        }
    }
    Some((name, r?, t?))
}

/// The headers and body SPEC "Rate limits and quotas" asks for, for one answer of a
/// limited route. 503 is checked for its form here; whether it was expected (a Redis
/// outage) is judged afterwards.
fn rl_check(r: &RlRoute, status: u16, h: &HeaderMap, body: &[u8], sent: u64) -> Result<(), String> {
    if h.get("x-request-id").is_none() {
        return Err("no X-Request-Id".into());
    }
    let json = || serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
    let policy = format!("\"{}\";q={RL_LIMIT};w={RL_PER_S}", r.limit);
    let rl_headers = |want_zero: bool| -> Result<(), String> {
        let got = header(h, "ratelimit-policy");
        if got != policy {
            return Err(format!("RateLimit-Policy {got:?}, expected {policy:?}"));
        }
        let v = header(h, "ratelimit");
        let Some((name, rem, t)) = parse_ratelimit(v) else {
            return Err(format!("RateLimit {v:?} unreadable"));
        };
        if name != r.limit || rem >= RL_LIMIT || (want_zero && rem != 0) || t > RL_PER_S + 1 {
            return Err(format!("RateLimit {v:?}"));
        }
        Ok(())
    };
    match status {
        200 => {
            rl_headers(false)?;
            let c = json();
            if c["class"].as_str().is_none() {
                return Err("answer did not come from the upstream".into());
            }
            Ok(())
        }
        429 => {
            let e = json()["error"].as_str().unwrap_or("").to_owned();
            if e != "rate_limited" {
                return Err(format!("429 with error {e:?}"));
            }
            rl_headers(true)?;
            let ra = header(h, "retry-after");
            let Ok(secs) = ra.parse::<u64>() else {
                return Err(format!("429 with Retry-After {ra:?}"));
            };
            if !(1..=RL_PER_S + 1).contains(&secs) {
                return Err(format!("429 with Retry-After {secs}"));
            }
            if r.fixed {
                // The wait is to the end of the window the request was decided in (its
                // sending time's: a serial client's first request in a window is admitted).
                let per = RL_PER_S * 1000;
                let end = (sent / per + 1) * per;
                let most = (end - sent).div_ceil(1000).max(1);
                if secs > most + 1 {
                    return Err(format!(
                        "429 with Retry-After {secs}, the window ends in at most {most} s"
                    ));
                }
            }
            Ok(())
        }
        503 if r.deny => {
            let e = json()["error"].as_str().unwrap_or("").to_owned();
            if e != "service_unavailable" {
                return Err(format!("503 with error {e:?}"));
            }
            if header(h, "retry-after").parse::<u64>().is_err() {
                return Err("503 without a Retry-After".into());
            }
            Ok(())
        }
        s => Err(format!(
            "status {s}: {}",
            String::from_utf8_lossy(&body[..body.len().min(160)])
        )),
    }
}

fn k_index(k: K) -> usize {
    CLASSES.iter().position(|c| c.k == k).unwrap_or(0)
}

/// One over-limit client: `rate` requests a second on one limited route, alternating
/// between the replicas, one at a time (so its order is the order of the decisions).
async fn rl_client(
    ctx: Arc<Ctx>,
    route: usize,
    client_no: usize,
    rate: f64,
) -> (Vec<RlRec>, Vec<Lat>) {
    let r = &RL_ROUTES[route];
    let ci = k_index(r.k);
    let client = builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let key = format!("{}-{client_no}", r.limit);
    let period = Duration::from_secs_f64(1.0 / rate);
    let (mut recs, mut lat) = (Vec::new(), Vec::new());
    let mut i = client_no;
    let _ = ctx
        .until_stopped(tokio::time::sleep(period.mul_f64(rand::random::<f64>())))
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
        let rep = i % ctx.reps.len();
        i += 1;
        let started = Instant::now();
        let sent = unix_ms();
        let res = async {
            let resp = client
                .get(format!("{}{}/x", ctx.reps[rep].base, r.path))
                .header("x-soak-class", CLASSES[ci].name)
                .header("x-soak-rl-client", &key)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        }
        .await;
        let recv = unix_ms();
        ctx.live.sent.fetch_add(1, Ordering::Relaxed);
        let (status, problem) = match res {
            Ok((status, h, body)) => {
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                let t_ms = ctx.t0.elapsed().as_millis().min(u32::MAX as u128) as u32;
                lat.push((t_ms, ci as u8, us));
                (status, rl_check(r, status, &h, &body, sent).err())
            }
            Err(e) => {
                ctx.live.transport.fetch_add(1, Ordering::Relaxed);
                (0, Some(transport_kind(&e)))
            }
        };
        recs.push(RlRec {
            ci,
            client: client_no,
            rep,
            sent,
            recv,
            status,
            problem,
        });
    }
    (recs, lat)
}

// ---------------------------------------------------------------------------------------
// Browser sign-in (`--sessions`): people signing in and calling with their session cookie
// ---------------------------------------------------------------------------------------

/// The Host every signed-in client sends, whichever replica it reaches (one Service name
/// in front of all of them): the redirect URI tollgate derives from it is the same on
/// each, and a session sealed by one replica must open on the others.
const SESSION_HOST: &str = "dash.soak.test";

/// A browser's cookies for tollgate's host: name -> (value, path).
#[derive(Default)]
struct Jar(BTreeMap<String, (String, String)>);

impl Jar {
    /// Takes in the `Set-Cookie`s of an answer (a removal is an empty value, a
    /// `Max-Age` of 0 or less, or an `Expires` in 1970).
    fn absorb(&mut self, h: &HeaderMap) {
        for v in h.get_all("set-cookie") {
            let Ok(v) = v.to_str() else { continue };
            let mut attrs = v.split(';');
            let Some((name, value)) = attrs.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            let mut path = "/".to_owned();
            let mut gone = value.is_empty();
            for a in attrs {
                let (k, val) = a.split_once('=').unwrap_or((a, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "path" => path = val.trim().to_owned(),
                    "max-age" => gone |= val.trim().parse::<i64>().is_ok_and(|n| n <= 0),
                    "expires" => gone |= val.contains("1970"),
                    _ => {}
                }
            }
            if gone {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), (value.to_owned(), path));
            }
        }
    }

    /// The `Cookie` header a browser sends to `path`.
    fn header(&self, path: &str) -> String {
        let v: Vec<String> = self
            .0
            .iter()
            .filter(|(_, (_, p))| path.starts_with(p.as_str()))
            .map(|(n, (v, _))| format!("{n}={v}"))
            .collect();
        v.join("; ")
    }

    fn has_session(&self) -> bool {
        self.0.keys().any(|n| n.starts_with("tollgate_session"))
    }
}

/// The same cookies with one character of the session cookie's sealed value changed.
fn tamper(cookie: &str) -> String {
    cookie
        .split("; ")
        .map(|c| match c.split_once('=') {
            Some((n, v)) if n.starts_with("tollgate_session") && v.len() > 8 => {
                let mut b = v.as_bytes().to_vec();
                let i = b.len() / 2;
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                format!("{n}={}", String::from_utf8_lossy(&b))
            }
            _ => c.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What one step of a sign-in client got.
enum Got {
    /// The answer the class is judged by.
    Answer(u16, HeaderMap, Bytes),
    /// An earlier step of the flow answered wrong: its status and what was wrong.
    Flow(u16, String),
    Transport(String),
}

async fn fetch(rb: reqwest::RequestBuilder) -> Got {
    let res = async {
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, body))
    }
    .await;
    match res {
        Ok((s, h, b)) => Got::Answer(s, h, b),
        Err(e) => Got::Transport(transport_kind(&e)),
    }
}

fn location(h: &HeaderMap) -> &str {
    header(h, "location")
}

/// One sign-in, as a browser does it: the navigation on replica `first` (302 to the
/// provider, a state cookie), the provider (302 back with a code), the callback on
/// replica `second` (302 to the page, the session cookie). Judged by the callback.
async fn sign_in(
    ctx: &Ctx,
    client: &reqwest::Client,
    jar: &mut Jar,
    user: &str,
    first: usize,
    second: usize,
) -> Got {
    let class = CLASSES[k_index(K::SessionSignIn)].name;
    let page = "/dash/home?tab=sales";
    let nav = fetch(
        client
            .get(format!("{}{page}", ctx.reps[first].base))
            .header("host", SESSION_HOST)
            .header("accept", "text/html,application/xhtml+xml")
            .header("cookie", jar.header(page))
            .header("x-soak-class", class),
    )
    .await;
    let Got::Answer(status, h, _) = nav else {
        return nav;
    };
    let authorize = format!("{}/sso/authorize?", ctx.minter.iss);
    if status != 302 || !location(&h).starts_with(&authorize) {
        return Got::Flow(
            status,
            format!("navigation: {status}, Location {:?}", location(&h)),
        );
    }
    jar.absorb(&h);
    let at_idp = fetch(client.get(location(&h)).header("x-soak-user", user)).await;
    let Got::Answer(status, h, _) = at_idp else {
        return at_idp;
    };
    let back = format!("http://{SESSION_HOST}/oauth2/callback?");
    let Some(query) = location(&h).strip_prefix(&back) else {
        return Got::Flow(
            status,
            format!("provider: {status}, Location {:?}", location(&h)),
        );
    };
    let callback = format!("/oauth2/callback?{query}");
    let cb = fetch(
        client
            .get(format!("{}{callback}", ctx.reps[second].base))
            .header("host", SESSION_HOST)
            .header("accept", "text/html")
            .header("cookie", jar.header(&callback))
            .header("x-soak-class", class),
    )
    .await;
    let Got::Answer(status, h, body) = cb else {
        return cb;
    };
    jar.absorb(&h);
    if status == 302 && (location(&h) != page || !jar.has_session()) {
        return Got::Flow(
            status,
            format!(
                "callback: Location {:?}, session cookie {}",
                location(&h),
                if jar.has_session() { "set" } else { "missing" }
            ),
        );
    }
    Got::Answer(status, h, body)
}

/// Books one step of a sign-in client as the workers book a request; true when it went
/// as expected.
fn tally(
    ctx: &Ctx,
    out: &mut WorkerOut,
    k: K,
    rep: usize,
    what: &str,
    started: Instant,
    got: Got,
) -> bool {
    let ci = k_index(k);
    ctx.live.sent.fetch_add(1, Ordering::Relaxed);
    let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
    let (outcome, problem) = match got {
        Got::Transport(e) => {
            ctx.live.transport.fetch_add(1, Ordering::Relaxed);
            (Outcome::Transport(e.clone()), Some(e))
        }
        Got::Flow(status, p) => {
            if status >= 500 {
                ctx.live.unexpected_5xx.fetch_add(1, Ordering::Relaxed);
            }
            (Outcome::Status(status), Some(p))
        }
        Got::Answer(status, headers, body) => answered(ctx, out, ci, us, status, &headers, &body),
    };
    let ok = problem.is_none();
    book(ctx, out, ci, rep, what, outcome, problem);
    ok
}

/// One person at a browser (`--sessions`): signs in, makes `calls` calls with the session
/// cookie (every 15th with the cookie tampered with), logs out, and starts again; each
/// request goes to the next replica, all under [`SESSION_HOST`]. The person keeps a
/// cookie of their own (`dash_pref`), which must reach the upstream while tollgate's
/// never do (judged there).
async fn session_client(ctx: Arc<Ctx>, no: usize, rate: f64, calls: usize) -> WorkerOut {
    let client = builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let user = format!("person-{no}");
    let n = ctx.reps.len();
    let mut turn = no;
    let mut next_rep = || {
        turn += 1;
        turn % n
    };
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut out = WorkerOut::default();
    let _ = ctx
        .until_stopped(tokio::time::sleep(period.mul_f64(rand::random::<f64>())))
        .await;
    let mut iv = tokio::time::interval(period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'sessions: loop {
        let mut jar = Jar::default();
        jar.0
            .insert("dash_pref".into(), ("dark".into(), "/".into()));
        if ctx.until_stopped(iv.tick()).await.is_none() {
            break;
        }
        {
            let _g = ctx.gate.read().await;
            if ctx.stop.load(Ordering::Relaxed) {
                break;
            }
            let (first, second) = (next_rep(), next_rep());
            let started = Instant::now();
            let got = sign_in(&ctx, &client, &mut jar, &user, first, second).await;
            let what = format!("sign-in (navigation on replica {first}, callback on {second})");
            if !tally(
                &ctx,
                &mut out,
                K::SessionSignIn,
                second,
                &what,
                started,
                got,
            ) {
                continue;
            }
        }
        for j in 0..calls {
            if ctx.until_stopped(iv.tick()).await.is_none() {
                break 'sessions;
            }
            let _g = ctx.gate.read().await;
            if ctx.stop.load(Ordering::Relaxed) {
                break 'sessions;
            }
            let rep = next_rep();
            let tampered = j % 15 == 7;
            let k = if tampered {
                K::SessionTampered
            } else {
                K::SessionApi
            };
            let path = format!("/dash/items/{j}");
            let cookie = if tampered {
                tamper(&jar.header(&path))
            } else {
                jar.header(&path)
            };
            let started = Instant::now();
            let got = fetch(
                client
                    .get(format!("{}{path}", ctx.reps[rep].base))
                    .header("host", SESSION_HOST)
                    .header("accept", "application/json")
                    .header("cookie", cookie)
                    .header("x-soak-user", &user)
                    .header("x-soak-class", CLASSES[k_index(k)].name),
            )
            .await;
            if let (Got::Answer(_, h, _), false) = (&got, tampered) {
                jar.absorb(h);
            }
            tally(&ctx, &mut out, k, rep, &format!("GET {path}"), started, got);
        }
        if ctx.until_stopped(iv.tick()).await.is_none() {
            break;
        }
        let _g = ctx.gate.read().await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let rep = next_rep();
        let started = Instant::now();
        let mut got = fetch(
            client
                .get(format!("{}/oauth2/logout", ctx.reps[rep].base))
                .header("host", SESSION_HOST)
                .header("accept", "text/html")
                .header("cookie", jar.header("/oauth2/logout"))
                .header("x-soak-class", CLASSES[k_index(K::SessionLogout)].name),
        )
        .await;
        if let Got::Answer(status, h, _) = &got {
            jar.absorb(h);
            if *status == 302 && jar.has_session() {
                got = Got::Flow(302, "logout left the session cookie in place".into());
            }
        }
        tally(
            &ctx,
            &mut out,
            K::SessionLogout,
            rep,
            "GET /oauth2/logout",
            started,
            got,
        );
    }
    out
}

/// The store errors of every replica (`tollgate_store_errors_total{store="redis"}`).
async fn store_errors(ctx: &Ctx) -> f64 {
    let mut sum = 0.0;
    for rep in &ctx.reps {
        if let Ok(r) = ctx
            .clients
            .admin
            .get(format!("{}/metrics", rep.admin))
            .send()
            .await
        {
            sum += metric_lines(&r.text().await.unwrap_or_default())
                .iter()
                .filter(|(k, _)| k.starts_with("tollgate_store_errors_total{"))
                .map(|(_, v)| v)
                .sum::<f64>();
        }
    }
    sum
}

/// A probe of one limited route on one replica with a key of its own (never over the
/// limit): the status and whether the answer has the form its status calls for.
async fn rl_probe(ctx: &Ctx, rep: usize, k: K, key: &str) -> (u16, Result<(), String>) {
    let r = RL_ROUTES.iter().find(|r| r.k == k).expect("route");
    let class = if r.deny {
        K::RlProbeDeny
    } else {
        K::RlProbeAllow
    };
    let sent = unix_ms();
    let res = async {
        let resp = ctx
            .clients
            .admin
            .get(format!("{}{}/probe", ctx.reps[rep].base, r.path))
            .header("x-soak-class", CLASSES[k_index(class)].name)
            .header("x-soak-rl-client", key)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, h, body))
    }
    .await;
    ctx.live.sent.fetch_add(1, Ordering::Relaxed);
    match res {
        Ok((s, h, b)) => (s, rl_check(r, s, &h, &b, sent)),
        Err(e) => (0, Err(transport_kind(&e))),
    }
}

/// Counts one probe answer in the per-class table (and as wrong when it is).
fn probe_note(
    out: &mut RestartOut,
    o: &mut Outage,
    k: K,
    s: u16,
    res: &Result<(), String>,
    what: &str,
) {
    let ci = k_index(if k == K::RlDeny {
        K::RlProbeDeny
    } else {
        K::RlProbeAllow
    });
    let outcome = if s == 0 {
        Outcome::Transport("probe".into())
    } else {
        Outcome::Status(s)
    };
    *out.outcomes.entry((ci, outcome)).or_default() += 1;
    if let Err(e) = res {
        *out.problems.entry(ci).or_default() += 1;
        if o.wrong.len() < 10 {
            o.wrong
                .push(format!("{what}: {} {s}: {e}", CLASSES[ci].name));
        }
    }
}

#[derive(Default)]
struct RestartOut {
    outages: Vec<Outage>,
    /// Probe outcomes for the per-class table: (class, status) -> count.
    outcomes: HashMap<(usize, Outcome), u64>,
    problems: HashMap<usize, u64>,
    errors: Vec<String>,
}

/// Every `every`: kill Redis by PID, probe both routes on every replica while it is down
/// (`on_error: allow` must keep answering 200 from the local limiter, `deny` must answer
/// 503 service_unavailable with Retry-After), start it again on the same port, poll
/// PING, then probe until every replica decides with Redis again (recovery).
async fn redis_restarter(
    ctx: Arc<Ctx>,
    redis: Arc<Mutex<RedisProc>>,
    every: Duration,
    down: Duration,
) -> RestartOut {
    let mut out = RestartOut::default();
    let port = redis.lock().unwrap_or_else(|e| e.into_inner()).port;
    let n = ctx.reps.len();
    let mut seq = 0u64;
    let mut key = |tag: &str| {
        seq += 1;
        format!("probe-{tag}-{seq}")
    };
    let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        if ctx.until_stopped(iv.tick()).await.is_none() {
            break;
        }
        // Held through the outage: a checkpoint waits for it to end.
        let _g = ctx.gate.read().await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let mut o = Outage {
            errors_before: store_errors(&ctx).await,
            recovered: vec![None; n],
            during: vec![(0, 0); n],
            ..Default::default()
        };
        o.killed = unix_ms();
        redis.lock().unwrap_or_else(|e| e.into_inner()).stop();
        let t = Instant::now();
        while t.elapsed() < down {
            for rep in 0..n {
                let (s, res) = rl_probe(&ctx, rep, K::RlFixed, &key("allow")).await;
                let res = res.and_then(|()| {
                    if s == 200 {
                        Ok(())
                    } else {
                        Err("expected 200 (local limiter)".into())
                    }
                });
                if res.is_ok() {
                    o.during[rep].0 += 1;
                }
                probe_note(
                    &mut out,
                    &mut o,
                    K::RlFixed,
                    s,
                    &res,
                    &format!("Redis down, replica {rep}"),
                );
                let (s, res) = rl_probe(&ctx, rep, K::RlDeny, &key("deny")).await;
                let res = res.and_then(|()| {
                    if s == 503 {
                        Ok(())
                    } else {
                        Err("expected 503".into())
                    }
                });
                if res.is_ok() {
                    o.during[rep].1 += 1;
                }
                probe_note(
                    &mut out,
                    &mut o,
                    K::RlDeny,
                    s,
                    &res,
                    &format!("Redis down, replica {rep}"),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        o.started = unix_ms();
        if let Err(e) = redis.lock().unwrap_or_else(|e| e.into_inner()).start() {
            out.errors.push(e);
        }
        if wait_redis(port, Duration::from_secs(10)).await {
            o.answered = Some(unix_ms());
        } else {
            out.errors.push(format!(
                "Redis did not answer PING within 10 s of restart #{}",
                out.outages.len() + 1
            ));
        }
        // Recovery: every replica admits an `on_error: deny` request again.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) && o.recovered.iter().any(Option::is_none) {
            for rep in 0..n {
                if o.recovered[rep].is_some() {
                    continue;
                }
                let (s, res) = rl_probe(&ctx, rep, K::RlDeny, &key("recover")).await;
                let res = res.and_then(|()| {
                    if matches!(s, 200 | 503) {
                        Ok(())
                    } else {
                        Err("expected 200 or 503".into())
                    }
                });
                probe_note(
                    &mut out,
                    &mut o,
                    K::RlDeny,
                    s,
                    &res,
                    &format!("recovering, replica {rep}"),
                );
                if s == 200 {
                    o.recovered[rep] = Some(unix_ms());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        o.errors_after = store_errors(&ctx).await;
        out.outages.push(o);
    }
    out
}

/// Judged after the run, against the outages: outcomes and problems per class, the
/// 5xx the outages explain and those they do not, and limit exactness per window.
#[derive(Default)]
struct RlJudged {
    outcomes: HashMap<(usize, Outcome), u64>,
    problems: HashMap<usize, u64>,
    unexpected: Vec<String>,
    unexpected_total: u64,
    unexpected_5xx: u64,
    outage_5xx: u64,
    /// Per route: a line for the report and whether it holds.
    exact: Vec<(String, bool)>,
    /// Per class: 200s the clients got (to compare with the upstream's count).
    admitted: HashMap<usize, u64>,
    transport: HashMap<usize, u64>,
}

fn rl_judge(recs: &[RlRec], outages: &[Outage], t0_ms: u64) -> RlJudged {
    let mut j = RlJudged::default();
    let in_outage = |a: u64, b: u64| outages.iter().any(|o| a < o.end() && b >= o.killed);
    for x in recs {
        let c = &CLASSES[x.ci];
        let outcome = if x.status == 0 {
            *j.transport.entry(x.ci).or_default() += 1;
            Outcome::Transport(x.problem.clone().unwrap_or_default())
        } else {
            Outcome::Status(x.status)
        };
        *j.outcomes.entry((x.ci, outcome)).or_default() += 1;
        if x.status == 200 {
            *j.admitted.entry(x.ci).or_default() += 1;
        }
        let mut problem = x.problem.clone();
        if x.status == 503 && problem.is_none() {
            if in_outage(x.sent, x.recv) {
                j.outage_5xx += 1;
            } else {
                problem = Some("503 outside a Redis outage".into());
            }
        }
        if let Some(p) = problem {
            *j.problems.entry(x.ci).or_default() += 1;
            j.unexpected_total += 1;
            if x.status >= 500 {
                j.unexpected_5xx += 1;
            }
            if j.unexpected.len() < 30 {
                j.unexpected.push(format!(
                    "t={:.1}s {} client {} replica {}: {p}",
                    x.sent.saturating_sub(t0_ms) as f64 / 1000.0,
                    c.name,
                    x.client,
                    x.rep
                ));
            }
        }
    }
    let per = RL_PER_S * 1000;
    for r in RL_ROUTES {
        let ci = k_index(r.k);
        let mut clients: BTreeMap<usize, Vec<&RlRec>> = BTreeMap::new();
        for x in recs.iter().filter(|x| x.ci == ci) {
            clients.entry(x.client).or_default().push(x);
        }
        let (mut exact, mut over, mut under, mut underfed, mut excluded) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let (mut sets, mut violations, mut tightest) = (0u64, 0u64, u64::MAX);
        let mut per_rep: BTreeMap<usize, u64> = BTreeMap::new();
        let mut notes: Vec<String> = Vec::new();
        for (client, xs) in &clients {
            let (Some(first), Some(last)) = (xs.first(), xs.last()) else {
                continue;
            };
            for x in xs.iter().filter(|x| x.status == 200) {
                *per_rep.entry(x.rep).or_default() += 1;
            }
            if r.fixed {
                // Whole windows inside this client's traffic, attributed by arrival: a
                // 200 is decided before it arrives, and a window is exhausted long before
                // it ends, so a 200 arriving in window k was decided in window k.
                let mut k = first.sent.div_ceil(per);
                while (k + 1) * per <= last.sent {
                    let (a, b) = (k * per, (k + 1) * per);
                    k += 1;
                    if outages.iter().any(|o| a < o.end() && b > o.killed) {
                        excluded += 1;
                        continue;
                    }
                    let admitted = xs
                        .iter()
                        .filter(|x| x.status == 200 && x.recv >= a && x.recv < b)
                        .count() as u64;
                    let demand = xs.iter().filter(|x| x.sent >= a && x.sent < b).count() as u64;
                    if admitted > RL_LIMIT {
                        over += 1;
                        if notes.len() < 5 {
                            notes.push(format!(
                                "client {client}: {admitted} admitted in the window at t={:.0}s",
                                a.saturating_sub(t0_ms) as f64 / 1000.0
                            ));
                        }
                    } else if demand <= RL_LIMIT + 1 {
                        underfed += 1;
                    } else if admitted < RL_LIMIT {
                        under += 1;
                        if notes.len() < 5 {
                            notes.push(format!("client {client}: {admitted} admitted of {demand} sent in the window at t={:.0}s", a.saturating_sub(t0_ms) as f64 / 1000.0));
                        }
                    } else {
                        exact += 1;
                    }
                }
            } else {
                // Sliding: no LIMIT+1 admitted requests may fit in one `per`. Proven when
                // the last one's arrival minus the first one's sending is shorter.
                let ok: Vec<&&RlRec> = xs.iter().filter(|x| x.status == 200).collect();
                for w in ok.windows(RL_LIMIT as usize + 1) {
                    let lo = w[0].sent;
                    let hi = w.iter().map(|x| x.recv).max().unwrap_or(lo);
                    if outages
                        .iter()
                        .any(|o| lo < o.end() + per && hi + per > o.killed)
                    {
                        continue;
                    }
                    sets += 1;
                    let span = hi - lo;
                    tightest = tightest.min(span);
                    if span < per {
                        violations += 1;
                        if notes.len() < 5 {
                            notes.push(format!(
                                "client {client}: {} admitted within {span} ms at t={:.0}s",
                                RL_LIMIT + 1,
                                lo.saturating_sub(t0_ms) as f64 / 1000.0
                            ));
                        }
                    }
                }
            }
        }
        let reps = per_rep
            .iter()
            .map(|(r, n)| format!("replica {r}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (line, ok) = if r.fixed {
            (
                format!(
                    "`{}` (fixed, {RL_LIMIT} per {RL_PER_S} s, on_error {}): {exact} windows exactly {RL_LIMIT}, {over} above, {under} below; {underfed} with too little demand, {excluded} overlapping a Redis outage left out; admitted by {reps}{}",
                    r.limit,
                    if r.deny { "deny" } else { "allow" },
                    if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
                ),
                over == 0 && under == 0 && exact > 0,
            )
        } else {
            (
                format!(
                    "`{}` (sliding, {RL_LIMIT} per {RL_PER_S} s): {violations} of {sets} runs of {} admitted requests fit in {RL_PER_S} s (tightest {:.2} s); admitted by {reps}{}",
                    r.limit,
                    RL_LIMIT + 1,
                    if tightest == u64::MAX { f64::NAN } else { tightest as f64 / 1000.0 },
                    if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
                ),
                violations == 0 && sets > 0,
            )
        };
        j.exact.push((line, ok));
    }
    j
}

async fn fetch_local_token(ctx: &Ctx) -> Option<String> {
    let r = ctx
        .clients
        .admin
        .post(format!("{}/oauth2/token", ctx.reps[0].base))
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

/// A replica's `config_version`, or why it could not be read.
async fn status_version_once(c: &reqwest::Client, admin: &str) -> Result<u64, String> {
    let resp = c
        .get(format!("{admin}/admin/status"))
        .send()
        .await
        .map_err(|e| transport_kind(&e))?;
    let st = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(|e| transport_kind(&e))?;
    v["config_version"]
        .as_u64()
        .ok_or_else(|| format!("status {st}, no config_version"))
}

/// The same, retried once on a new connection: a pooled keep-alive connection the
/// server closes just as it is reused fails without tollgate being at fault (the
/// keep-alive race, see `builder`); a read that fails on a fresh connection too is
/// tollgate's and is reported with its cause.
async fn status_version(ctx: &Ctx, rep: usize) -> Result<u64, String> {
    let admin = &ctx.reps[rep].admin;
    match status_version_once(&ctx.clients.admin, admin).await {
        Ok(v) => Ok(v),
        Err(first) => {
            ctx.status_retries.fetch_add(1, Ordering::Relaxed);
            status_version_once(&ctx.clients.fresh, admin)
                .await
                .map_err(|e| format!("replica {rep}: {first}; on a new connection: {e}"))
        }
    }
}

#[derive(Default)]
struct Reloads {
    /// File rewrites applied by every replica (latency: the slowest replica's).
    file_ok: u64,
    file_missed: u64,
    file_latency: Vec<f64>,
    /// POST /admin/reload, counted per replica.
    admin_ok: u64,
    admin_failed: u64,
    /// Version bumps nobody asked for (e.g. one file write reloaded twice).
    unrequested: u64,
    /// Reload failures (a rewrite not applied, a refused admin reload, a write error).
    errors: Vec<String>,
    /// `GET /admin/status` reads that failed on a fresh connection too (the tick is
    /// skipped: nothing was reloaded); not a reload failure, reported on its own.
    status_failed: u64,
    status_errors: Vec<String>,
}

async fn reloader(ctx: Arc<Ctx>, setup: Arc<Setup>, every: Duration) -> Reloads {
    let mut r = Reloads::default();
    let n = ctx.reps.len();
    let mut variant = false;
    let mut last = Vec::new();
    for rep in 0..n {
        last.push(status_version(&ctx, rep).await.unwrap_or(0));
    }
    let mut i = 0u64;
    let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    'tick: loop {
        if ctx.until_stopped(iv.tick()).await.is_none() {
            break;
        }
        let _g = ctx.gate.read().await;
        let mut before = Vec::new();
        for rep in 0..n {
            match status_version(&ctx, rep).await {
                Ok(v) => before.push(v),
                Err(e) => {
                    r.status_failed += 1;
                    if r.status_errors.len() < 10 {
                        r.status_errors.push(format!(
                            "t={:.1}s GET /admin/status: {e}",
                            ctx.t0.elapsed().as_secs_f64()
                        ));
                    }
                    continue 'tick;
                }
            }
        }
        for rep in 0..n {
            r.unrequested += before[rep].saturating_sub(last[rep]);
        }
        i += 1;
        if i % 2 == 1 {
            variant = !variant;
            let t = Instant::now();
            if let Err(e) = write_config(&setup, variant) {
                r.errors.push(format!("writing the config: {e}"));
                continue;
            }
            // SPEC: a change is applied within 2 s; allow 5 before calling it missed.
            // Every replica watches the same file.
            let mut applied: Vec<Option<u64>> = vec![None; n];
            while t.elapsed() < Duration::from_secs(5) && applied.iter().any(Option::is_none) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                for rep in 0..n {
                    if applied[rep].is_none() {
                        if let Ok(v) =
                            status_version_once(&ctx.clients.admin, &ctx.reps[rep].admin).await
                        {
                            if v > before[rep] {
                                applied[rep] = Some(v);
                            }
                        }
                    }
                }
            }
            if applied.iter().all(Option::is_some) {
                r.file_ok += 1;
                r.file_latency.push(t.elapsed().as_secs_f64());
            } else {
                r.file_missed += 1;
                if r.errors.len() < 10 {
                    let missing: Vec<String> = (0..n)
                        .filter(|rep| applied[*rep].is_none())
                        .map(|rep| rep.to_string())
                        .collect();
                    r.errors.push(format!(
                        "file rewrite #{i} not applied within 5 s by replica {}",
                        missing.join(", ")
                    ));
                }
            }
            for rep in 0..n {
                last[rep] = applied[rep].unwrap_or(before[rep]);
            }
        } else {
            for rep in 0..n {
                let res = ctx
                    .clients
                    .admin
                    .post(format!("{}/admin/reload", ctx.reps[rep].admin))
                    .send()
                    .await;
                match res {
                    Ok(resp) if resp.status() == 200 => {
                        let v: serde_json::Value = resp.json().await.unwrap_or_default();
                        r.admin_ok += 1;
                        last[rep] = v["config_version"].as_u64().unwrap_or(before[rep] + 1);
                    }
                    Ok(resp) => {
                        r.admin_failed += 1;
                        let st = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        if r.errors.len() < 10 {
                            r.errors
                                .push(format!("replica {rep}: POST /admin/reload: {st} {body}"));
                        }
                        last[rep] = before[rep];
                    }
                    Err(e) => {
                        r.admin_failed += 1;
                        if r.errors.len() < 10 {
                            r.errors.push(format!(
                                "replica {rep}: POST /admin/reload: {}",
                                transport_kind(&e)
                            ));
                        }
                        last[rep] = before[rep];
                    }
                }
            }
        }
    }
    r
}

struct Probe {
    rep: usize,
    pid: u32,
    own_ports: Vec<u16>,
    backend_ports: Vec<u16>,
}

async fn take_sample(ctx: &Ctx, p: &Probe, checkpoint: Option<&'static str>) -> Sample {
    let metrics = match ctx
        .clients
        .admin
        .get(format!("{}/metrics", ctx.reps[p.rep].admin))
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
        rep: p.rep,
        t: ctx.t0.elapsed().as_secs_f64(),
        rss_kib,
        cpu_ticks,
        fds,
        open_connections: get("tollgate_open_connections"),
        caches,
        checkpoint,
        load: loadavg().parse().unwrap_or(f64::NAN),
    }
}

/// Pauses traffic and reloads, lets the replicas settle, and samples each.
async fn checkpoint(ctx: &Ctx, probes: &[Probe], name: &'static str) -> Vec<Sample> {
    let _w = ctx.gate.write().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut v = Vec::new();
    for p in probes {
        v.push(take_sample(ctx, p, Some(name)).await);
    }
    v
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
    name: String,
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
    if args.replicas == 0 {
        return Err("--replicas must be at least 1".into());
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let dir = tmp.path().to_path_buf();
    let pids = Arc::new(Mutex::new(PidBook {
        file: args.pidfile.clone(),
        ..Default::default()
    }));

    // `--redis`: a real redis-server on a free loopback port, owned by us (killed by PID
    // when dropped: at the end, on an error return and on a panic).
    let redis = if args.redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port for Redis: {e}"))?
            .port();
        let rdir = dir.join("redis");
        std::fs::create_dir_all(&rdir).map_err(|e| e.to_string())?;
        let mut r = RedisProc {
            bin: args.redis_server.clone(),
            port,
            dir: rdir,
            child: None,
            pids: pids.clone(),
        };
        r.start()?;
        if !wait_redis(port, Duration::from_secs(10)).await {
            return Err(format!(
                "{} did not answer PING on 127.0.0.1:{port} within 10 s",
                args.redis_server.display()
            ));
        }
        Some(Arc::new(Mutex::new(r)))
    } else {
        None
    };

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
    let sso = Arc::new(Sso::new(&ext_iss)?);
    let sso_idp = sso.clone();
    tokio::spawn(serve(idp_l, move |req| {
        idp(jwks.clone(), o.clone(), sso_idp.clone(), req)
    }));
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
        redis_port: redis
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).port),
        cookie_secret: (args.sessions > 0)
            .then(|| URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())),
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

    let mut replicas = Vec::new();
    for _ in 0..args.replicas {
        let (child, logs) = spawn_tollgate(&args.tollgate, &config_path)?;
        {
            let mut p = pids.lock().unwrap_or_else(|e| e.into_inner());
            p.tollgate.push(child.id());
            p.write();
        }
        replicas.push(Replica { child, logs });
    }
    let result = drive(
        &args,
        duration,
        warmup,
        &setup,
        minter,
        obs,
        &replicas,
        redis.clone(),
    )
    .await;
    let mut stops = Vec::new();
    for r in &mut replicas {
        stops.push(stop_tollgate(&mut r.child));
    }
    // Redis last: the replicas must not see an outage while they drain.
    if let Some(r) = &redis {
        r.lock().unwrap_or_else(|e| e.into_inner()).stop();
    }
    if let Some(p) = &args.pidfile {
        let _ = std::fs::remove_file(p);
    }
    let mut d = result?;
    for (i, (exit, stop_time)) in stops.into_iter().enumerate() {
        if d.died_at.is_some_and(|(r, _)| r == i) {
            d.shutdown.push(format!("had already exited: {exit}"));
            d.shutdown_ok.push(false);
        } else {
            d.shutdown.push(format!(
                "{exit} after SIGTERM, in {:.2} s",
                stop_time.as_secs_f64()
            ));
            d.shutdown_ok.push(exit.contains("exit status: 0"));
        }
    }
    let logs: Vec<Arc<Mutex<LogStats>>> = replicas.iter().map(|r| r.logs.clone()).collect();
    let code = report(&args, duration, warmup, workers, &d, &logs)?;
    drop(tmp);
    Ok(code)
}

/// A tollgate replica, killed (by PID) if still running when dropped: a driver that
/// panics or returns early leaves no replica behind.
struct Replica {
    child: Child,
    logs: Arc<Mutex<LogStats>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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
    /// When a replica exited by itself: which, and seconds into the run.
    died_at: Option<(usize, f64)>,
    /// Per replica.
    client_bound: Vec<u64>,
    upstream_bound: Vec<u64>,
    /// tollgate's own count of 5xx, and of requests, per replica.
    tollgate_5xx: Vec<f64>,
    tollgate_requests: Vec<f64>,
    shutdown: Vec<String>,
    shutdown_ok: Vec<bool>,
    addrs: Vec<(u32, String, String)>,
    /// Unix ms when traffic started (t=0 of the report).
    t0_ms: u64,
    status_retries: u64,
    /// `--redis`: the restarts and the rate-limited clients, judged.
    restarts: Option<RestartOut>,
    rl: Option<RlJudged>,
    store_errors_end: f64,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &Args,
    duration: Duration,
    warmup: Duration,
    setup: &Arc<Setup>,
    minter: Minter,
    obs: Arc<Observed>,
    replicas: &[Replica],
    redis: Option<Arc<Mutex<RedisProc>>>,
) -> Result<Driven, String> {
    let n = replicas.len();
    // The listening addresses, from each replica's startup line.
    let mut addrs = Vec::new();
    for r in replicas {
        let pid = r.child.id();
        let t = Instant::now();
        let (public, admin) = loop {
            if let Some(s) = r
                .logs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .startup
                .clone()
            {
                break s;
            }
            if t.elapsed() > Duration::from_secs(30) || !Path::new(&format!("/proc/{pid}")).exists()
            {
                let l = r.logs.lock().unwrap_or_else(|e| e.into_inner());
                return Err(format!(
                    "tollgate did not start (no startup line); it said:\n{}",
                    l.tail.iter().cloned().collect::<Vec<_>>().join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        addrs.push((pid, public, admin));
    }
    let port = |a: &str| {
        a.rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(0)
    };
    let redis_port = setup.redis_port;
    let probes: Vec<Probe> = addrs
        .iter()
        .enumerate()
        .map(|(i, (pid, public, admin))| Probe {
            rep: i,
            pid: *pid,
            own_ports: vec![port(public), port(admin)],
            backend_ports: [port(&setup.upstream), port(&setup.ext_iss)]
                .into_iter()
                .chain(redis_port)
                .collect(),
        })
        .collect();
    let mut total = 0;
    let cum_weights = weights(&args.weight)?
        .into_iter()
        .map(|w| {
            total += w;
            total
        })
        .collect();
    let ctx = Arc::new(Ctx {
        reps: addrs
            .iter()
            .map(|(_, public, admin)| Rep {
                base: format!("http://{public}"),
                admin: format!("http://{admin}"),
            })
            .collect(),
        minter,
        book: RwLock::new(Book::default()),
        clients: clients(args.keepalive),
        stop: AtomicBool::new(false),
        stopped: tokio::sync::watch::Sender::new(false),
        gate: tokio::sync::RwLock::new(()),
        live: Live::default(),
        unexpected_log: Mutex::default(),
        status_retries: AtomicU64::new(0),
        t0: Instant::now(),
        cum_weights,
    });
    // Ready?
    for rep in &ctx.reps {
        let t = Instant::now();
        loop {
            let r = ctx
                .clients
                .admin
                .get(format!("{}/readyz", rep.admin))
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status() == 200) {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "tollgate {} not ready (/readyz) within 30 s",
                    rep.admin
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let local = fetch_local_token(&ctx)
        .await
        .ok_or("the token service did not issue a token")?;
    {
        let mut rng = StdRng::from_entropy();
        *ctx.book.write().unwrap_or_else(|e| e.into_inner()) =
            mint_book(&ctx.minter, &mut rng, local);
    }
    for (i, (pid, public, admin)) in addrs.iter().enumerate() {
        println!("soak: replica {i}: tollgate pid {pid} on {public} (admin {admin})");
    }
    let restart_every =
        args.redis_restart_every
            .unwrap_or(if duration < Duration::from_secs(15 * 60) {
                duration / 3
            } else {
                Duration::from_secs(300)
            });
    println!(
        "soak: {} for {} (warm-up {}), {:.0} req/s over {} keep-alive + {} h2c + {} new-connection workers spread over {n} replica(s), reload every {}{}",
        ctx.reps[0].base,
        dur(duration.as_secs_f64()),
        dur(warmup.as_secs_f64()),
        args.rate,
        args.keepalive,
        args.h2,
        args.fresh,
        dur(args.reload_every.as_secs_f64()),
        match redis_port {
            Some(p) => format!(
                "; Redis on 127.0.0.1:{p}, restarted every {} (down {}), {} over-limit clients per limited route at {:.1}/s",
                dur(restart_every.as_secs_f64()),
                dur(args.redis_down.as_secs_f64()),
                args.rl_clients,
                args.rl_rate
            ),
            None => String::new(),
        }
    );

    let load_start = loadavg();
    let t0 = Instant::now();
    let t0_ms = unix_ms();
    let workers = args.keepalive + args.h2 + args.fresh;
    let period = Duration::from_secs_f64(workers as f64 / args.rate);
    let mut handles = Vec::new();
    let mut seed = rand::random::<u64>();
    let conns = (0..args.keepalive)
        .map(Conn::KeepAlive)
        .chain((0..args.h2).map(|_| Conn::H2))
        .chain((0..args.fresh).map(|_| Conn::Fresh));
    // Live connections a quiescent replica may legitimately hold (see the report).
    let mut client_bound = vec![2u64; n];
    let mut upstream_bound = vec![2u64; n];
    let mut h2_on = vec![false; n];
    for (i, conn) in conns.enumerate() {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let rep = i % n;
        upstream_bound[rep] += 1;
        match conn {
            Conn::H2 => h2_on[rep] = true,
            _ => client_bound[rep] += 1,
        }
        handles.push(tokio::spawn(worker(ctx.clone(), conn, rep, period, seed)));
    }
    for rep in 0..n {
        client_bound[rep] += u64::from(h2_on[rep]);
    }
    let mut rl_handles = Vec::new();
    let mut restarter = None;
    if let Some(redis) = &redis {
        for (route, _) in RL_ROUTES.iter().enumerate() {
            for c in 0..args.rl_clients {
                rl_handles.push(tokio::spawn(rl_client(ctx.clone(), route, c, args.rl_rate)));
            }
        }
        // Each over-limit client keeps one connection to every replica; the probes
        // share the admin client.
        let rl = (RL_ROUTES.len() * args.rl_clients) as u64;
        for rep in 0..n {
            client_bound[rep] += rl;
            // ...and towards the backends one per over-limit client, the probes, and
            // tollgate's own Redis connection.
            upstream_bound[rep] += rl + 2;
        }
        if !restart_every.is_zero() {
            restarter = Some(tokio::spawn(redis_restarter(
                ctx.clone(),
                redis.clone(),
                restart_every,
                args.redis_down,
            )));
        }
    }
    for no in 0..args.sessions {
        handles.push(tokio::spawn(session_client(
            ctx.clone(),
            no,
            args.session_rate,
            args.session_calls,
        )));
    }
    for rep in 0..n {
        // A connection to every replica per signed-in client; towards the backends one
        // per client and tollgate's to the provider (code exchanges, refreshes).
        client_bound[rep] += args.sessions as u64;
        upstream_bound[rep] += args.sessions as u64 + u64::from(args.sessions > 0);
    }
    let rotate_errors = Arc::new(AtomicU64::new(0));
    tokio::spawn(rotator(ctx.clone(), rotate_errors.clone()));
    let reload_task = tokio::spawn(reloader(ctx.clone(), setup.clone(), args.reload_every));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let probes = Arc::new(probes);
    let sampler = {
        let (ctx, probes, samples, every) = (
            ctx.clone(),
            probes.clone(),
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
                for p in probes.iter() {
                    let s = take_sample(&ctx, p, None).await;
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                }
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
        if let Some(i) = probes.iter().position(|p| !alive(p.pid)) {
            died_at = Some((i, t0.elapsed().as_secs_f64()));
            eprintln!("soak: tollgate replica {i} exited during the run; stopping");
            break;
        }
        if !warm_done && Instant::now() >= warm_end {
            let v = checkpoint(&ctx, &probes, "start").await;
            for s in &v {
                println!(
                    "soak: warm-up over at {}: replica {}: RSS {}, fds {} ({} base, {} client, {} upstream)",
                    dur(t0.elapsed().as_secs_f64()),
                    s.rep,
                    mib(s.rss_kib),
                    s.fds.total,
                    s.fds.base,
                    s.fds.client,
                    s.fds.upstream
                );
            }
            samples.lock().unwrap_or_else(|e| e.into_inner()).extend(v);
            warm_done = true;
        }
        if Instant::now() >= next {
            next += progress_every;
            let sent = ctx.live.sent.load(Ordering::Relaxed);
            let rate = (sent - last_sent) as f64 / last_t.elapsed().as_secs_f64();
            last_sent = sent;
            last_t = Instant::now();
            let last: Vec<Sample> = {
                let l = samples.lock().unwrap_or_else(|e| e.into_inner());
                (0..n)
                    .map(|r| {
                        l.iter()
                            .rev()
                            .find(|s| s.rep == r)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect()
            };
            println!(
                "[soak {:>7}] {sent} requests ({rate:.0}/s), unexpected {}, unexpected 5xx {}, violations {}, {}",
                dur(t0.elapsed().as_secs_f64()),
                ctx.live.unexpected.load(Ordering::Relaxed),
                ctx.live.unexpected_5xx.load(Ordering::Relaxed),
                obs.violations.load(Ordering::Relaxed),
                last.iter()
                    .map(|s| format!("replica {}: RSS {}, fds {}", s.rep, mib(s.rss_kib), s.fds.total))
                    .collect::<Vec<_>>()
                    .join("; "),
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
    let mut rl_recs = Vec::new();
    for h in rl_handles {
        if let Ok((recs, l)) = h.await {
            rl_recs.extend(recs);
            lat.extend(l);
        }
    }
    let restarts = match restarter {
        Some(h) => Some(h.await.unwrap_or_default()),
        None => redis.as_ref().map(|_| RestartOut::default()),
    };
    let reloads = reload_task.await.unwrap_or_default();
    let _ = sampler.await;
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    if warm_done {
        let v = checkpoint(&ctx, &probes, "end").await;
        for s in &v {
            println!(
                "soak: traffic stopped at {}: replica {}: RSS {}, fds {} ({} base, {} client, {} upstream)",
                dur(elapsed),
                s.rep,
                mib(s.rss_kib),
                s.fds.total,
                s.fds.base,
                s.fds.client,
                s.fds.upstream
            );
        }
        samples.extend(v);
    }
    let mut tollgate_5xx = Vec::new();
    let mut tollgate_requests = Vec::new();
    for rep in &ctx.reps {
        let m = match ctx
            .clients
            .admin
            .get(format!("{}/metrics", rep.admin))
            .send()
            .await
        {
            Ok(r) => metric_lines(&r.text().await.unwrap_or_default()),
            Err(_) => Vec::new(),
        };
        let sum = |f: &dyn Fn(&str) -> bool| -> f64 {
            if m.is_empty() {
                return f64::NAN;
            }
            m.iter()
                .filter(|(k, _)| f(k.as_str()))
                .map(|(_, v)| v)
                .sum()
        };
        tollgate_5xx.push(sum(&|k| {
            k.starts_with("tollgate_requests_total{") && k.contains("status=\"5")
        }));
        tollgate_requests.push(sum(&|k| k.starts_with("tollgate_requests_total{")));
    }
    let store_errors_end = if redis.is_some() {
        store_errors(&ctx).await
    } else {
        0.0
    };
    let rl = restarts
        .as_ref()
        .map(|r| rl_judge(&rl_recs, &r.outages, t0_ms));
    let mut unexpected =
        std::mem::take(&mut *ctx.unexpected_log.lock().unwrap_or_else(|e| e.into_inner()));
    let mut unexpected_total = ctx.live.unexpected.load(Ordering::Relaxed);
    let mut unexpected_5xx = ctx.live.unexpected_5xx.load(Ordering::Relaxed);
    if let Some(j) = &rl {
        for (k, v) in &j.outcomes {
            *outcomes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &j.problems {
            *problems.entry(*k).or_default() += v;
        }
        unexpected.extend(
            j.unexpected
                .iter()
                .take(30usize.saturating_sub(unexpected.len()))
                .cloned(),
        );
        unexpected_total += j.unexpected_total;
        unexpected_5xx += j.unexpected_5xx;
    }
    if let Some(r) = &restarts {
        for (k, v) in &r.outcomes {
            *outcomes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.problems {
            *problems.entry(*k).or_default() += v;
            unexpected_total += v;
        }
        for o in &r.outages {
            unexpected.extend(o.wrong.iter().cloned());
        }
    }
    Ok(Driven {
        samples,
        outcomes,
        problems,
        lat,
        reloads,
        rotate_errors: rotate_errors.load(Ordering::Relaxed),
        obs,
        unexpected,
        unexpected_total,
        unexpected_5xx,
        fault_5xx: ctx.live.fault_5xx.load(Ordering::Relaxed),
        transport: ctx.live.transport.load(Ordering::Relaxed),
        sent: ctx.live.sent.load(Ordering::Relaxed),
        elapsed,
        warmup_at: warmup.as_secs_f64(),
        interrupted,
        load_start,
        load_end: loadavg(),
        died_at,
        client_bound,
        upstream_bound,
        tollgate_5xx,
        tollgate_requests,
        shutdown: Vec::new(),
        shutdown_ok: Vec::new(),
        addrs,
        t0_ms,
        status_retries: ctx.status_retries.load(Ordering::Relaxed),
        restarts,
        rl,
        store_errors_end,
    })
}

fn report(
    args: &Args,
    duration: Duration,
    warmup: Duration,
    workers: usize,
    d: &Driven,
    logs: &[Arc<Mutex<LogStats>>],
) -> Result<u8, String> {
    let n = d.addrs.len();
    let window = (duration.as_secs_f64() / 10.0)
        .max(60.0)
        .min((d.elapsed - d.warmup_at).max(0.0) / 2.0);
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
    let violations = d.obs.violations.load(Ordering::Relaxed);
    let anomalies = d.obs.anomalies.load(Ordering::Relaxed);
    let other_unexpected = d.unexpected_total - d.unexpected_5xx;

    let mut crit: Vec<Criterion> = Vec::new();
    let mut cpus = Vec::new();
    let mut complete_warm = true;
    for rep in 0..n {
        let mine: Vec<&Sample> = d.samples.iter().filter(|s| s.rep == rep).collect();
        let start = mine.iter().find(|s| s.checkpoint == Some("start")).copied();
        let end = mine.iter().find(|s| s.checkpoint == Some("end")).copied();
        let after: Vec<&Sample> = mine
            .iter()
            .filter(|s| s.t >= d.warmup_at && s.checkpoint.is_none())
            .copied()
            .collect();
        let rss_max = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
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
        cpus.push(match (start, end) {
            (Some(s), Some(e)) if e.t > s.t => {
                (e.cpu_ticks - s.cpu_ticks) as f64 / tck / (e.t - s.t) * 100.0
            }
            _ => f64::NAN,
        });
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
        let who = if n > 1 {
            format!("replica {rep}: ")
        } else {
            String::new()
        };
        match (start, end, floor_start, floor_end) {
            (Some(s), Some(e), Some(fs), Some(fe)) => {
                let growth = (fe as f64 - fs as f64) / fs.max(1) as f64 * 100.0;
                crit.push(Criterion {
                    name: format!("{who}RSS growth after warm-up (floor under load, first vs last window)"),
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
                    name: format!("{who}fd growth (everything but live TCP connections)"),
                    target: "0".into(),
                    measured: format!(
                        "{base_growth:+} ({} → {}; all fds {} → {}, max {fds_max})",
                        s.fds.base, e.fds.base, s.fds.total, e.fds.total
                    ),
                    ok: base_growth <= 0,
                });
                crit.push(Criterion {
                    name: format!("{who}live connections at the end (quiescent)"),
                    target: format!(
                        "≤ {} client, ≤ {} backend, 0 CLOSE_WAIT",
                        d.client_bound[rep], d.upstream_bound[rep]
                    ),
                    measured: format!(
                        "{} client ({} at start), {} backend ({} at start), {} CLOSE_WAIT, {} other sockets",
                        e.fds.client, s.fds.client, e.fds.upstream, s.fds.upstream, e.fds.close_wait, e.fds.other
                    ),
                    ok: e.fds.client <= d.client_bound[rep]
                        && e.fds.upstream <= d.upstream_bound[rep]
                        && e.fds.close_wait == 0
                        && e.fds.other <= s.fds.other,
                });
            }
            _ => {
                complete_warm = false;
                crit.push(Criterion {
                    name: format!("{who}RSS / fd growth"),
                    target: "measured".into(),
                    measured: "the run ended before the warm-up did".into(),
                    ok: false,
                })
            }
        }
    }
    let outage_5xx = d.rl.as_ref().map_or(0, |j| j.outage_5xx)
        + d.restarts.as_ref().map_or(0, |r| {
            r.outcomes
                .iter()
                .filter(|((_, o), _)| *o == Outcome::Status(503))
                .map(|(_, v)| v)
                .sum::<u64>()
        });
    crit.push(Criterion {
        name: "unexpected 5xx".into(),
        target: "0".into(),
        measured: format!(
            "{} ({} expected from fault classes{}; tollgate's own count of 5xx: {})",
            d.unexpected_5xx,
            d.fault_5xx,
            if d.restarts.is_some() {
                format!(", {outage_5xx} from `on_error: deny` during Redis outages")
            } else {
                String::new()
            },
            d.tollgate_5xx
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        ok: d.unexpected_5xx == 0,
    });
    crit.push(Criterion {
        name: "policy violations at the upstream".into(),
        target: "0".into(),
        measured: violations.to_string(),
        ok: violations == 0,
    });
    crit.push(Criterion {
        name: "other unexpected answers (status, error code, headers, transport)".into(),
        target: "0".into(),
        measured: format!("{other_unexpected} ({} transport errors)", d.transport),
        ok: other_unexpected == 0,
    });
    crit.push(Criterion {
        name: "upstream anomalies (truncated bodies, stale upstream tokens)".into(),
        target: "0".into(),
        measured: anomalies.to_string(),
        ok: anomalies == 0,
    });
    if let (Some(j), Some(rs)) = (&d.rl, &d.restarts) {
        for (line, ok) in &j.exact {
            crit.push(Criterion {
                name: "limit exactness, both replicas together (allowed per window)".into(),
                target: format!(
                    "fixed: = {RL_LIMIT} per window; sliding: never > {RL_LIMIT} in {RL_PER_S} s"
                ),
                measured: line.clone(),
                ok: *ok,
            });
        }
        // 429s never reach the upstream: what it received equals the 200s answered.
        let mut lines = Vec::new();
        let mut ok = true;
        for r in RL_ROUTES {
            let ci = k_index(r.k);
            let hits = d.obs.hits[ci].load(Ordering::Relaxed);
            let admitted = j.admitted.get(&ci).copied().unwrap_or(0);
            let lost = j.transport.get(&ci).copied().unwrap_or(0);
            ok &= hits >= admitted && hits <= admitted + lost;
            lines.push(format!("{} {hits} / {admitted}", CLASSES[ci].name));
        }
        crit.push(Criterion {
            name: "rate-limited requests reaching the upstream".into(),
            target: "= the 200s (no 429 forwarded)".into(),
            measured: lines.join(", "),
            ok,
        });
        let (mut all_ok, mut parts) = (!rs.outages.is_empty() || d.elapsed < 1.0, Vec::new());
        let mut rec_max = 0.0f64;
        for (i, o) in rs.outages.iter().enumerate() {
            let down_ok = o.during.iter().all(|(a, dn)| *a > 0 && *dn > 0);
            let rec: Vec<Option<f64>> = o
                .recovered
                .iter()
                .map(|r| {
                    r.map(|r| r.saturating_sub(o.answered.unwrap_or(o.started)) as f64 / 1000.0)
                })
                .collect();
            let rec_ok = o.answered.is_some() && rec.iter().all(|r| r.is_some_and(|s| s <= 10.0));
            for s in rec.iter().flatten() {
                rec_max = rec_max.max(*s);
            }
            all_ok &= down_ok && rec_ok && o.wrong.is_empty();
            parts.push(format!(
                "#{}: down {:.1} s; while down allow 200 / deny 503 per replica {}; recovered {} after PING{}",
                i + 1,
                (o.started - o.killed) as f64 / 1000.0,
                o.during
                    .iter()
                    .map(|(a, dn)| format!("{a}/{dn}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                rec.iter()
                    .map(|r| r.map_or("never".to_owned(), |s| format!("{s:.2} s")))
                    .collect::<Vec<_>>()
                    .join(", "),
                if o.wrong.is_empty() {
                    String::new()
                } else {
                    format!(", {} wrong answers", o.wrong.len())
                }
            ));
        }
        all_ok &= rs.errors.is_empty();
        crit.push(Criterion {
            name: "Redis restarts: on_error honoured, recovery".into(),
            target: "while down: allow → 200 (local limiter), deny → 503 service_unavailable + Retry-After, on every replica; every replica back on Redis ≤ 10 s after it answers".into(),
            measured: if rs.outages.is_empty() {
                "no restart happened (run too short)".into()
            } else {
                format!(
                    "{} restarts (slowest recovery {rec_max:.2} s): {}{}",
                    rs.outages.len(),
                    parts.join("; "),
                    if rs.errors.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", rs.errors.join("; "))
                    }
                )
            },
            ok: all_ok,
        });
    }
    let r = &d.reloads;
    crit.push(Criterion {
        name: "reloads applied".into(),
        target: format!(
            "all{}; a file change within 2 s (SPEC)",
            if n > 1 { ", on every replica" } else { "" }
        ),
        measured: format!(
            "{}/{} file rewrites{} (applied in p50 {:.2} s, max {:.2} s), {}/{} POST /admin/reload",
            r.file_ok,
            r.file_ok + r.file_missed,
            if n > 1 { " on every replica" } else { "" },
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
        name: "admin status reads (GET /admin/status)".into(),
        target: "0 failures on a new connection".into(),
        measured: format!(
            "{} failed; {} needed their retry on a new connection (a pooled connection closed under it)",
            r.status_failed, d.status_retries
        ),
        ok: r.status_failed == 0,
    });
    if args.sessions > 0 {
        let count = |k: K| {
            let ci = k_index(k);
            let total: u64 = d
                .outcomes
                .iter()
                .filter(|((c, _), _)| *c == ci)
                .map(|(_, v)| v)
                .sum();
            let bad = d.problems.get(&ci).copied().unwrap_or(0);
            (total - bad.min(total), total, bad)
        };
        let (si_ok, si, si_bad) = count(K::SessionSignIn);
        let (api_ok, api, api_bad) = count(K::SessionApi);
        let (t_ok, t, t_bad) = count(K::SessionTampered);
        let (lo_ok, lo, lo_bad) = count(K::SessionLogout);
        let exchanged = d.obs.sso_sign_ins.load(Ordering::Relaxed);
        let refreshes = d.obs.sso_refreshes.load(Ordering::Relaxed);
        let refused = d.obs.sso_refused.load(Ordering::Relaxed);
        let refused_log = d
            .obs
            .sso_refused_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("; ");
        crit.push(Criterion {
            name: "browser sign-in sessions (`--sessions`)".into(),
            target: "every sign-in completes (navigation on one replica, callback on another); every session call reaches the upstream as its person, with an unexpired token and without tollgate's cookies (judged there); tampered cookies 401; access tokens refreshed; logout drops the cookie; the provider refuses nothing".into(),
            measured: format!(
                "{} clients: {si_ok}/{si} sign-ins ({exchanged} codes exchanged at the provider), {api_ok}/{api} calls 200, {t_ok}/{t} tampered cookies 401 `invalid_token`, {lo_ok}/{lo} logouts; {refreshes} refreshes at the provider; {refused} provider refusals{}",
                args.sessions,
                if refused_log.is_empty() { String::new() } else { format!(" ({refused_log})") }
            ),
            ok: si_bad + api_bad + t_bad + lo_bad == 0
                && si_ok > 0
                && api_ok > 0
                && refused == 0
                && (refreshes > 0 || d.elapsed < 90.0),
        });
    }
    crit.push(Criterion {
        name: "tollgate stayed up".into(),
        target: "until stopped".into(),
        measured: match d.died_at {
            Some((rep, t)) => format!("replica {rep} exited by itself at {}", dur(t)),
            None => "yes".into(),
        },
        ok: d.died_at.is_none(),
    });
    crit.push(Criterion {
        name: "graceful shutdown".into(),
        target: "exit 0 on SIGTERM".into(),
        measured: d.shutdown.join("; "),
        ok: !d.shutdown_ok.is_empty() && d.shutdown_ok.iter().all(|o| *o),
    });
    let complete = !d.interrupted && (complete_warm || d.died_at.is_some());
    let pass = complete && crit.iter().all(|c| c.ok);
    let cpu = cpus
        .iter()
        .map(|c| format!("{c:.0}%"))
        .collect::<Vec<_>>()
        .join(" / ");
    let sessions_note = if args.sessions > 0 {
        format!(
            "- Browser sign-in: {} people at browsers (`--sessions`), {:.1} calls/s each. Each signs in through tollgate's `login` (authorization code + PKCE S256) at the driver's OpenID provider (discovery, an authorization endpoint that signs in the person the client names, a token endpoint checking the client secret, redirect URI and PKCE verifier; access tokens live {SSO_ACCESS_TTL} s, so tollgate refreshes them), with the navigation on one replica and the callback on the next, all under one Host (`{SESSION_HOST}`, as behind a Service); then {} calls of a `login: true` route with the sealed session cookie, each on the next replica (every 15th with the cookie tampered with), then logout, and again. The person's own cookie must reach the upstream, tollgate's never.",
            args.sessions, args.session_rate, args.session_calls
        )
    } else {
        "- Not covered: browser sign-in sessions (`--sessions 0`).".to_owned()
    };
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

    let logs: Vec<std::sync::MutexGuard<LogStats>> = logs
        .iter()
        .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let unexplained: u64 = logs.iter().map(|l| l.unexplained).sum();
    let loads: Vec<f64> = d
        .samples
        .iter()
        .filter(|s| s.rep == 0 && s.load.is_finite())
        .map(|s| s.load)
        .collect();
    let load_mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    let load_max = loads.iter().copied().fold(f64::NAN, f64::max);
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
                    .map(|c| c.name.as_str())
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
        "- {n} tollgate replica(s){}, watching one config file; worker i talks to replica i mod {n}{}.",
        if n > 1 { " started from the same binary" } else { "" },
        match (&d.restarts, args.redis) {
            (Some(r), true) => format!(
                "; a real `redis-server` ({}) on a loopback port owned by the driver holds the rate-limit counters (`store: redis`), killed by PID and started again on the same port {} times ({} down each); {} over-limit clients per limited route, {:.1} req/s each, alternating between the replicas",
                args.redis_server.display(),
                r.outages.len(),
                dur(args.redis_down.as_secs_f64()),
                args.rl_clients,
                args.rl_rate
            ),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        md,
        "- tollgate used {cpu} of one core on average between the checkpoints (per replica); the driver runs on the same machine; load average (1 min) {} at the start, {} at the end, mean {load_mean:.2} and max {load_max:.2} over the run.{}\n- Reloads every {} alternating a real config change written to the file and `POST /admin/reload` (to every replica); RSS, fds and `/metrics` sampled every {}; start and end figures are taken with traffic paused for 2 s.\n{sessions_note}\n",
        d.load_start,
        d.load_end,
        if args.note.is_empty() { String::new() } else { format!(" {}", args.note) },
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

    let cache_names: Vec<String> = d
        .samples
        .first()
        .map(|s| s.caches.iter().map(|c| c.0.clone()).collect())
        .unwrap_or_default();
    for rep in 0..n {
        let (pid, public, admin) = &d.addrs[rep];
        let _ = writeln!(
            md,
            "## tollgate process over time{}\n",
            if n > 1 {
                format!(" — replica {rep} (pid {pid}, {public}, admin {admin}; {} requests by its own count)", d.tollgate_requests[rep])
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            md,
            "| t | RSS | fds | base fds | client conns | backend conns | open_connections | {} |\n|---|---|---|---|---|---|---|{}",
            cache_names.iter().map(|c| format!("cache {c}")).collect::<Vec<_>>().join(" | "),
            "---|".repeat(cache_names.len())
        );
        let mine: Vec<&Sample> = d.samples.iter().filter(|s| s.rep == rep).collect();
        let step = (mine.len() / 12).max(1);
        for (i, s) in mine.iter().enumerate() {
            if s.checkpoint.is_none() && i % step != 0 && i + 1 != mine.len() {
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
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Notes\n");
    for rep in 0..n {
        let mine: Vec<&Sample> = d.samples.iter().filter(|s| s.rep == rep).collect();
        let start = mine.iter().find(|s| s.checkpoint == Some("start"));
        let end = mine.iter().find(|s| s.checkpoint == Some("end"));
        if let (Some(s), Some(e)) = (start, end) {
            let minutes = ((e.t - s.t) / 60.0).max(1.0 / 60.0);
            for (name, v) in &e.caches {
                let before = s.caches.iter().find(|c| &c.0 == name).map_or(0.0, |c| c.1);
                let _ = writeln!(
                    md,
                    "- {}Cache `{name}`: {before} → {v} entries between the checkpoints ({:+.0}/min).",
                    if n > 1 { format!("Replica {rep}: ") } else { String::new() },
                    (v - before) / minutes
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "- Reloads: {} file rewrites applied{}, {} missed, {} admin reloads, {} failed, {} reloads nobody asked for; {} status reads failed, {} needed their retry on a new connection.",
        r.file_ok,
        if n > 1 { " by every replica" } else { "" },
        r.file_missed,
        r.admin_ok,
        r.admin_failed,
        r.unrequested,
        r.status_failed,
        d.status_retries
    );
    for e in r.errors.iter().chain(&r.status_errors) {
        let _ = writeln!(md, "  - {e}");
    }
    if let Some(rs) = &d.restarts {
        let mut during = 0.0;
        for (i, o) in rs.outages.iter().enumerate() {
            during += o.errors_after - o.errors_before;
            let _ = writeln!(
                md,
                "- Redis restart #{}: killed at t={:.1}s, started again {:.1} s later, answered PING after {}; store errors counted by the replicas meanwhile: {}.",
                i + 1,
                o.killed.saturating_sub(d.t0_ms) as f64 / 1000.0,
                (o.started - o.killed) as f64 / 1000.0,
                o.answered
                    .map_or("never".to_owned(), |a| format!("{:.2} s", (a - o.started) as f64 / 1000.0)),
                o.errors_after - o.errors_before
            );
            for w in &o.wrong {
                let _ = writeln!(md, "  - {w}");
            }
        }
        let _ = writeln!(
            md,
            "- `tollgate_store_errors_total{{store=\"redis\"}}` at the end, all replicas: {} ({} during the restarts, {} outside them: operations slower than the store's 250 ms timeout or failing otherwise; with `on_error: deny` such a failure is a 503, counted above).",
            d.store_errors_end,
            during,
            d.store_errors_end - during
        );
    }
    for (rep, l) in logs.iter().enumerate() {
        let _ = writeln!(
            md,
            "- {}tollgate's log lines by level and target ({} WARN/ERROR lines that no request class or fault explains):",
            if n > 1 { format!("Replica {rep}: ") } else { String::new() },
            l.unexplained
        );
        for ((level, target), n) in &l.counts {
            let _ = writeln!(md, "  - {level} {target}: {n}");
        }
        if !l.notable.is_empty() {
            let _ = writeln!(md, "- Unexplained WARN/ERROR lines, first 15:\n\n```");
            for x in &l.notable {
                let _ = writeln!(md, "{x}");
            }
            let _ = writeln!(md, "```");
        }
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
        "\nHow the criteria are measured: RSS is sampled every {} under load; the criterion compares its floor (minimum) in the first window after the warm-up with its floor in the last window ({} each). The floor, because token-service calls for the argon2id client allocate 19 MiB each (m=19456 KiB), which comes and goes within a second, so single samples swing by that much; a leak raises the floor. File descriptors are compared between two quiescent checkpoints (traffic and reloads paused for 2 s), right after the warm-up and after the last request. \"Base\" fds are every descriptor that is not a TCP connection (listeners, other sockets, epoll, eventfd, pipes, inotify, files): they must not grow at all. Live TCP connections may differ, but only up to what the driver can hold open (one per keep-alive worker, the h2c connection, one per new-connection worker, the admin client's two; towards the backends one per worker that can be in flight, plus key and token fetches), none in CLOSE_WAIT: a connection leak grows past that over a long run. With several replicas every figure is per replica, and each replica's bound counts only the workers that talk to it (plus, with `--redis`, one connection per over-limit client and the probes). Limit exactness (`--redis`): each over-limit client sends one request at a time, alternating between the replicas, and records when it sent it and when the answer arrived (Unix ms, the clock Redis `TIME` gives the replicas); a fixed window counts the 200s that arrived in it (a 200 is decided before it arrives, and the window is exhausted long before its end, so none belongs to the previous one) and must hold exactly the limit when the client sent more than the limit in it; for the sliding window, any run of limit+1 admitted requests whose first was sent and last answered within one `per` is a proven excess. Windows that overlap a Redis outage (from the kill until every replica decided with Redis again, plus `per` for the sliding window) are left out: while Redis is down each replica counts alone (`on_error: allow`) and a restarted Redis has lost its counters.",
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
    println!(
        "  tollgate CPU {cpu} of one core; {unexplained} WARN/ERROR log lines no class explains; load average mean {load_mean:.2}, max {load_max:.2}"
    );
    for l in logs.iter().flat_map(|l| l.notable.iter()).take(5) {
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
