//! The `tollgate` command: run | validate | explain | test | hash-secret | healthcheck |
//! init | schema | completions | man.
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

/// mimalloc instead of glibc malloc: glibc's malloc/free were ~13% of the proxy's CPU
/// profile (bench/ANALYSIS.md), and mimalloc returns freed memory to the OS. Built
/// with `no_thp`: mimalloc otherwise asks for transparent huge pages, which kept
/// sparse 2 MiB pages resident and cost ~8 KiB of RSS per idle keep-alive connection
/// (30 vs 22 KiB, `bench/` idle workload). Built as mimalloc 2 (`v2`): the `mimalloc`
/// crate asks for every allocation through `mi_malloc_aligned`, and mimalloc 3 sends
/// each one over 1 KiB whose size is not a power of two down its over-allocating
/// aligned path (~70 instructions more each, ~10 per proxied request) where mimalloc
/// 2 knows that an alignment of 16 or less is always met; ~800 instructions per
/// request fewer, idle connections the same (bench/ANALYSIS.md, "Session 14").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tollgate::logging::{self, LogFormat};
use tollgate::Gateway;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "OAuth2-aware reverse-proxy API gateway"
)]
struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_CONFIG",
        default_value = "gateway.yaml"
    )]
    config: PathBuf,
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Check the config without starting anything (writes nothing); exit 0 with a
    /// summary (and any warnings), or 1 with every problem.
    Validate {
        /// `text`: one line per problem; `json`: one JSON document for CI pipelines.
        #[arg(long, value_enum, default_value = "text")]
        format: ValidateFormat,
    },
    /// Print the decision trace a request would get; exit 0 allowed, 1 denied.
    Explain(Box<ExplainArgs>),
    /// Run policy test cases through the config's policy (nothing is sent upstream);
    /// exit 0 when every case passes, 1 on any mismatch, 2 when the cases file or the
    /// config has problems.
    Test {
        /// The cases file, e.g. tests/policy/gateway.cases.yaml (README "Policy tests").
        cases: PathBuf,
        /// What to print on stdout.
        #[arg(long, value_enum, default_value = "text")]
        format: TestFormat,
        /// Also write the results as JUnit XML to this file (for CI test reports).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Read a client secret on stdin, print an argon2id hash for `secret_hash`.
    HashSecret,
    /// GET /healthz on a running tollgate's admin listener; exit 0 on a 2xx answer, 1
    /// otherwise. For a container HEALTHCHECK (the image has no shell or curl).
    Healthcheck {
        /// The URL to GET instead (plain http), e.g. http://127.0.0.1:9901/readyz
        #[arg(long, conflicts_with_all = ["admin", "ready"])]
        url: Option<String>,
        /// The admin listener [default: server.admin_listen from the config file; a
        /// wildcard address such as 0.0.0.0 is checked on loopback]
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
        /// Check /readyz (ready for traffic) instead of /healthz (the process serves).
        #[arg(long)]
        ready: bool,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = tollgate::config::validate::parse_duration)]
        timeout: Duration,
    },
    /// Write a commented starter config that passes `tollgate validate`.
    Init {
        /// Where to write it; `-` prints it [default: the --config path]
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the JSON Schema of the config file (what gateway.schema.json holds) for
    /// editors: a first line `# yaml-language-server: $schema=./gateway.schema.json` in
    /// gateway.yaml gives completion, descriptions and checks as you type.
    Schema,
    /// Print a shell completion script, e.g. `source <(tollgate completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `tollgate man | man -l -`; with --out-dir, write
    /// tollgate.1 and one tollgate-COMMAND.1 per command there instead.
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TestFormat {
    /// One line per case; failures with the decision trace.
    Text,
    /// JUnit XML.
    Junit,
}

/// `tollgate explain`'s arguments (boxed in [`Command`]: the largest variant by far).
#[derive(clap::Args)]
struct ExplainArgs {
    /// The Bearer token to check (visible in the shell history and `ps`: prefer
    /// --token-file).
    #[arg(long)]
    token: Option<String>,
    /// Read the Bearer token from this file; `-` reads it from stdin. One trailing
    /// newline is ignored.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// A browser's Cookie header, e.g. 'tollgate_session=...', for a `login: true`
    /// route (a session is a credential: prefer --cookie-file).
    #[arg(long)]
    cookie: Option<String>,
    /// Read the Cookie header from this file; `-` reads it from stdin.
    #[arg(long, value_name = "FILE", conflicts_with = "cookie")]
    cookie_file: Option<PathBuf>,
    /// A DPoP proof JWT (RFC 9449) for a DPoP-bound token: the token is sent as
    /// `Authorization: DPoP` with this `DPoP` header. Its htu must name the URL as the
    /// server would see it (`http(s)://HOST/PATH`, HOST from --host).
    #[arg(long, value_name = "PROOF")]
    dpop: Option<String>,
    /// Read the DPoP proof from this file; `-` reads it from stdin.
    #[arg(long, value_name = "FILE", conflicts_with = "dpop")]
    dpop_file: Option<PathBuf>,
    /// A WebSocket handshake: adds `Upgrade: websocket` and `Connection: upgrade` (a
    /// GET); the trace says whether the route accepts the upgrade, and why not.
    #[arg(long)]
    websocket: bool,
    /// The TLS client certificate (PEM) the request would come with, for tokens bound
    /// to a certificate (`cnf.x5t#S256`); without it that binding is not checked.
    #[arg(long, value_name = "PEM")]
    client_cert: Option<PathBuf>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// Host header, for routes with `hosts`.
    #[arg(long)]
    host: Option<String>,
    /// Origin header: a browser's cross-origin call (the route's CORS is decided too).
    #[arg(long)]
    origin: Option<String>,
    /// A CORS preflight instead: OPTIONS with `Access-Control-Request-Method: METHOD`
    /// (needs --origin).
    #[arg(long, value_name = "METHOD", requires = "origin")]
    preflight: Option<String>,
    /// Instead of a request: look up the decision a running tollgate recorded for
    /// this X-Request-Id (a refused or failed request, among the last 1000).
    #[arg(long, value_name = "ID", conflicts_with_all = ["token", "token_file", "cookie", "cookie_file", "host", "origin", "preflight"])]
    request_id: Option<String>,
    /// With --request-id: the admin listener's URL, e.g. http://127.0.0.1:9901
    /// [default: server.admin_listen from the config file]
    #[arg(long, value_name = "URL", requires = "request_id")]
    admin: Option<String>,
    /// With --request-id: a file holding the Authorization header value for
    /// `server.admin_auth` (`Bearer eyJ...` or `Basic dXNlcjpwYXNz`); `-` reads stdin.
    #[arg(long, value_name = "FILE", requires = "request_id")]
    admin_auth_file: Option<PathBuf>,
    /// The request path, e.g. /v2/analytics/data
    #[arg(required_unless_present = "request_id")]
    url_path: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config, cli.log_format),
        Command::Validate { format } => validate(&cli.config, format),
        Command::Explain(args) => {
            let ExplainArgs {
                token,
                token_file,
                cookie,
                cookie_file,
                dpop,
                dpop_file,
                websocket,
                client_cert,
                method,
                host,
                origin,
                preflight,
                request_id,
                admin,
                admin_auth_file,
                url_path,
            } = *args;
            if let Some(id) = request_id {
                return explain_request_id(&cli.config, &id, admin, admin_auth_file);
            }
            let url_path = url_path.unwrap_or_default();
            let read = |f: Option<PathBuf>, given: Option<String>, what| match f {
                Some(f) => read_token_file(&f, what).map(Some),
                None => Ok(given),
            };
            let (token, cookie, dpop) = match (
                read(token_file, token, "token"),
                read(cookie_file, cookie, "cookie"),
                read(dpop_file, dpop, "DPoP proof"),
            ) {
                (Ok(t), Ok(c), Ok(d)) => (t, c, d),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    eprintln!("tollgate: {e}");
                    return ExitCode::from(2);
                }
            };
            let client_cert = match client_cert.map(|f| tollgate::tls::load_certs(&f)) {
                None => None,
                Some(Ok(certs)) if !certs.is_empty() => Some(certs[0].to_vec()),
                Some(Ok(_)) => {
                    eprintln!("tollgate: --client-cert: no certificate in the file");
                    return ExitCode::from(2);
                }
                Some(Err(e)) => {
                    eprintln!("tollgate: --client-cert: {e}");
                    return ExitCode::from(2);
                }
            };
            let method = if preflight.is_some() {
                "OPTIONS".to_owned()
            } else {
                method
            };
            let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
                eprintln!("tollgate: invalid method {method}");
                return ExitCode::from(2);
            };
            let probe = tollgate::explain::Probe {
                token: token.as_deref(),
                cookie: cookie.as_deref(),
                method: Some(&method),
                url_path: &url_path,
                host: host.as_deref(),
                origin: origin.as_deref(),
                access_control_request_method: preflight.as_deref(),
                headers: &[],
                dpop: dpop.as_deref(),
                websocket,
                client_cert: client_cert.as_deref(),
            };
            explain(&cli.config, &probe, cli.log_format)
        }
        Command::Test {
            cases,
            format,
            junit,
        } => policy_test(
            &cli.config,
            &cases,
            format,
            junit.as_deref(),
            cli.log_format,
        ),
        Command::HashSecret => hash_secret(),
        Command::Healthcheck {
            url,
            admin,
            ready,
            timeout,
        } => healthcheck(&cli.config, url, admin, ready, timeout),
        Command::Init { output, force } => init(output.as_deref().unwrap_or(&cli.config), force),
        Command::Schema => schema(),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tollgate",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { out_dir } => man(out_dir.as_deref()),
    }
}

/// One worker per core by default; `TOKIO_WORKER_THREADS` sets the count. With one
/// worker the single-threaded scheduler is used: the same behaviour without the
/// work-stealing machinery (queues, atomics, cross-thread wake-ups) that only pays off
/// with several workers.
fn runtime() -> tokio::runtime::Runtime {
    let workers: Option<usize> = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all();
    if let Some(n) = workers.filter(|n| *n > 1) {
        b.worker_threads(n);
    }
    b.build().expect("tokio runtime")
}

fn run(config: PathBuf, format: LogFormat) -> ExitCode {
    // Dropped (the queued log lines written) before a start-up error is printed, so
    // that the error comes after the warnings that led to it.
    let log_guard = logging::init(format);
    let gw = match Gateway::load(config) {
        Ok(g) => g,
        Err(e) if e.unreadable => {
            drop(log_guard);
            eprintln!("tollgate: {}", unreadable(&e));
            return ExitCode::from(1);
        }
        Err(e) => {
            drop(log_guard);
            eprintln!(
                "tollgate: refusing to start, the config has {} problem(s):",
                e.problems.len()
            );
            for line in e.lines() {
                eprintln!("{line}");
            }
            return ExitCode::from(1);
        }
    };
    runtime().block_on(async move {
        // Before the listeners (and the "listening" line): a SIGTERM or SIGHUP that comes
        // as soon as tollgate says it listens must drain or reload, not kill it.
        let signals = Signals::install();
        let running = match tollgate::start(gw.clone()).await {
            Ok(r) => r,
            Err(e) => {
                drop(log_guard);
                eprintln!("tollgate: {e}");
                return ExitCode::from(1);
            }
        };
        signals.wait(&gw).await;
        tracing::info!("shutting down: no new connections, waiting for requests in flight");
        running.shutdown().await;
        tracing::info!("stopped");
        drop(log_guard);
        ExitCode::SUCCESS
    })
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload), caught from [`Signals::install`] on:
/// one that arrives before [`Signals::wait`] is kept for it.
#[cfg(unix)]
struct Signals(Option<[tokio::signal::unix::Signal; 3]>);

#[cfg(unix)]
impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Signals(Some([term, int, hup])),
            _ => Signals(None),
        }
    }

    /// Returns on SIGTERM or SIGINT; reloads on SIGHUP.
    async fn wait(self, gw: &std::sync::Arc<Gateway>) {
        let Some([mut term, mut int, mut hup]) = self.0 else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    let _ = gw.reload("SIGHUP").await;
                }
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Signals {
        Signals
    }

    async fn wait(self, _gw: &std::sync::Arc<Gateway>) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ValidateFormat {
    Text,
    Json,
}

/// "cannot read the config file gateway.yaml: No such file or directory (os error 2)"
fn unreadable(e: &tollgate::config::ConfigError) -> String {
    let why = e.problems.first().map(|p| p.message.as_str()).unwrap_or("");
    let why = why.strip_prefix("cannot read config file: ").unwrap_or(why);
    format!(
        "cannot read the config file {}: {why} (name it with --config FILE or TOLLGATE_CONFIG)",
        e.file
    )
}

fn validate(config: &std::path::Path, format: ValidateFormat) -> ExitCode {
    let reg = tollgate::config::Registry::default();
    let checked = tollgate::config::check(config, &reg);
    if let ValidateFormat::Json = format {
        return validate_json(&checked);
    }
    // Warnings go to stderr, located like errors: stdout is the one-line summary.
    for line in checked.warning_lines() {
        eprintln!("{line}");
    }
    let warnings = match checked.warnings.len() {
        0 => String::new(),
        n => format!(" ({n} warning(s))"),
    };
    match &checked.result {
        Ok(rt) => {
            let tls = if rt.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let login = rt
                .login
                .as_ref()
                .map(|l| format!(", browser sign-in with issuer {}", l.issuer_name()))
                .unwrap_or_default();
            println!(
                "{}: OK — {} route(s), {} upstream(s), {} issuer(s), token service {}{login}, listen {tls}://{}{warnings}",
                config.display(),
                rt.routes.len(),
                rt.upstreams.len(),
                rt.issuers.len(),
                if rt.token_service.is_some() { "on" } else { "off" },
                rt.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.unreadable => {
            eprintln!("tollgate: {}", unreadable(e));
            ExitCode::from(1)
        }
        Err(e) => {
            for line in e.lines() {
                println!("{line}");
            }
            eprintln!(
                "{}: {} problem(s){warnings}",
                config.display(),
                e.problems.len()
            );
            ExitCode::from(1)
        }
    }
}

/// `{"file", "valid", "errors": [{file, line, column, path, message}], "warnings": [..]}`
fn validate_json(checked: &tollgate::config::Checked) -> ExitCode {
    let entry = |l: &tollgate::config::Located| {
        serde_json::json!({
            "file": checked.file,
            "line": l.line,
            "column": l.column,
            "path": l.path,
            "message": l.message,
        })
    };
    let errors: Vec<_> = match &checked.result {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(entry).collect(),
    };
    let doc = serde_json::json!({
        "file": checked.file,
        "valid": checked.result.is_ok(),
        "errors": errors,
        "warnings": checked.warnings.iter().map(entry).collect::<Vec<_>>(),
    });
    println!("{doc:#}");
    if checked.result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn explain(
    config: &std::path::Path,
    probe: &tollgate::explain::Probe<'_>,
    log_format: LogFormat,
) -> ExitCode {
    let _log_guard = logging::init(log_format);
    let res = runtime().block_on(tollgate::explain::explain_probe(config, probe));
    match res {
        Ok(x) => {
            for l in &x.lines {
                println!("{l}");
            }
            if x.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tollgate: the config has problems:");
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::from(2)
        }
    }
}

fn policy_test(
    config: &Path,
    cases: &Path,
    format: TestFormat,
    junit_file: Option<&Path>,
    log_format: LogFormat,
) -> ExitCode {
    use tollgate::policy_test::{report, run};
    let _log_guard = logging::init(log_format);
    let file = cases.display().to_string();
    let text = match std::fs::read_to_string(cases) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}:1:1: cannot read cases file: {e}");
            return ExitCode::from(2);
        }
    };
    let (prepared, cases) = match run::prepare(config, &text, &file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "tollgate test: {} has {} problem(s):",
                e.file,
                e.problems.len()
            );
            for line in e.lines() {
                eprintln!("{line}");
            }
            return ExitCode::from(2);
        }
    };
    for n in &prepared.notes {
        eprintln!("note: {n}");
    }
    let results = runtime().block_on(async {
        let mut out = Vec::with_capacity(cases.cases.len());
        for c in &cases.cases {
            out.push(prepared.run(c).await);
        }
        out
    });
    let xml = match (format, junit_file) {
        (TestFormat::Text, None) => None,
        _ => match report::junit(&file, &results) {
            Ok(x) => Some(x),
            Err(e) => {
                eprintln!("tollgate test: cannot write JUnit XML: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match format {
        TestFormat::Text => print!("{}", report::text(&file, &results)),
        TestFormat::Junit => {
            print!("{}", xml.as_deref().unwrap_or_default());
            let failed = results.iter().filter(|r| !r.passed()).count();
            eprintln!("{file}: {} passed, {failed} failed", results.len() - failed);
        }
    }
    if let (Some(path), Some(xml)) = (junit_file, &xml) {
        if let Err(e) = std::fs::write(path, xml) {
            eprintln!("tollgate test: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if results.iter().all(|r| r.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `tollgate explain --request-id ID`: the decision a running tollgate recorded, printed
/// like `explain` prints a trace; exit 1 (it was refused or failed), 2 when there is no
/// such record or the admin API cannot be asked.
fn explain_request_id(
    config: &Path,
    id: &str,
    admin: Option<String>,
    auth_file: Option<PathBuf>,
) -> ExitCode {
    use tollgate::healthcheck;
    let authorization = match auth_file {
        Some(f) => match read_token_file(&f, "admin credentials") {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("tollgate: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let path = format!("/admin/decisions/{encoded}");
    let target = match admin {
        Some(u) => healthcheck::from_url(&u).map(|mut t| {
            t.path = format!("{}{path}", t.path.trim_end_matches('/'));
            t
        }),
        None => healthcheck::admin_listen_from_config(config)
            .and_then(|a| healthcheck::from_admin(&a, &path)),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    let res = runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            healthcheck::fetch(&target, authorization.as_deref()),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {} within 10s", target.url())))
    });
    let (status, body) = match res {
        Ok(x) => x,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != 200 {
        eprintln!(
            "tollgate: {} answered {status}: {}",
            target.url(),
            v["error_description"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("(no JSON error)")
        );
        return ExitCode::from(2);
    }
    println!(
        "decision {} at {}: {} {} -> {} (route {}, client {}, remote {})",
        v["request_id"].as_str().unwrap_or(id),
        v["time"].as_str().unwrap_or("-"),
        v["method"].as_str().unwrap_or("-"),
        v["path"].as_str().unwrap_or("-"),
        v["status"],
        v["route"].as_str().unwrap_or("-"),
        v["client"].as_str().unwrap_or("-"),
        v["remote"].as_str().unwrap_or("-"),
    );
    println!("refused by: {}", v["gate"].as_str().unwrap_or("-"));
    for l in v["steps"].as_array().into_iter().flatten() {
        println!("{}", l.as_str().unwrap_or_default());
    }
    ExitCode::from(1)
}

fn hash_secret() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        eprintln!("tollgate: cannot read stdin");
        return ExitCode::from(1);
    }
    let secret = line
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&line);
    if secret.is_empty() {
        eprintln!("tollgate: empty secret");
        return ExitCode::from(1);
    }
    match tollgate::token_service::hash_secret(secret) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::from(1)
        }
    }
}

/// The token (or cookie) in `path` (`-`: stdin), one trailing newline removed; it is one line.
fn read_token_file(path: &Path, what: &str) -> Result<String, String> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("tollgate: reading the {what} from stdin (paste it, then Ctrl-D)");
        }
        stdin
            .lock()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read the {what} from stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?
    };
    let token = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    let from = if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    if token.trim().is_empty() {
        return Err(format!("no {what} in {from}"));
    }
    if token.contains(['\n', '\r']) {
        return Err(format!(
            "{from} has more than one line; a {what} is one line"
        ));
    }
    Ok(token.to_owned())
}

fn healthcheck(
    config: &Path,
    url: Option<String>,
    admin: Option<String>,
    ready: bool,
    timeout: Duration,
) -> ExitCode {
    use tollgate::healthcheck as hc;
    let path = if ready { "/readyz" } else { "/healthz" };
    let target = match (url, admin) {
        (Some(u), _) => hc::from_url(&u),
        (None, Some(a)) => hc::from_admin(&a, path),
        (None, None) => hc::admin_listen_from_config(config).and_then(|a| hc::from_admin(&a, path)),
    };
    // Exit 1 for every failure: Docker reserves exit code 2 of a HEALTHCHECK command.
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tollgate healthcheck: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate healthcheck: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(hc::check(&target, timeout)) {
        Ok(status) if (200..300).contains(&status) => {
            println!("{}: {status}", target.url());
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("tollgate healthcheck: {} answered {status}", target.url());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("tollgate healthcheck: {e}");
            ExitCode::from(1)
        }
    }
}

fn init(output: &Path, force: bool) -> ExitCode {
    if output == Path::new("-") {
        print!("{}", tollgate::init::STARTER);
        return ExitCode::SUCCESS;
    }
    match tollgate::init::write(output, force) {
        Ok(schema) => {
            eprintln!(
                "tollgate: wrote {0}; check it with: tollgate validate --config {0}",
                output.display()
            );
            match schema {
                tollgate::init::SchemaFile::Written(p) => eprintln!(
                    "tollgate: wrote {} (editors complete and check the config with it)",
                    p.display()
                ),
                tollgate::init::SchemaFile::Kept(p) => eprintln!(
                    "tollgate: {} exists and differs from this version's schema; it was not \
                     changed (--force replaces it, or: tollgate schema > {})",
                    p.display(),
                    p.display()
                ),
                tollgate::init::SchemaFile::Current => {}
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate init: {e}");
            ExitCode::from(1)
        }
    }
}

/// The config file's JSON Schema on stdout.
fn schema() -> ExitCode {
    println!("{}", tollgate::init::schema_text().trim_end());
    ExitCode::SUCCESS
}

/// The man page of `tollgate` on stdout, or of it and every subcommand into `dir`.
fn man(dir: Option<&Path>) -> ExitCode {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate man: {e}");
                ExitCode::from(1)
            }
        };
    };
    let mut cmd = cmd;
    cmd.build(); // sets each subcommand's bin name: "tollgate healthcheck"
    let mut pages = vec![("tollgate".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let page = sub.clone().version(env!("CARGO_PKG_VERSION"));
        pages.push((format!("tollgate-{}", sub.get_name()), page));
    }
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        for (name, page) in pages {
            let mut out = Vec::new();
            clap_mangen::Man::new(page).title(&name).render(&mut out)?;
            std::fs::write(dir.join(format!("{name}.1")), out)?;
        }
        Ok(())
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate man: {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}
