//! The `tollgate` command: run | validate | explain | hash-secret.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: glibc's malloc/free were ~13% of the proxy's CPU
/// profile (bench/ANALYSIS.md), and mimalloc returns freed memory to the OS. Built
/// with `no_thp`: mimalloc otherwise asks for transparent huge pages, which kept
/// sparse 2 MiB pages resident and cost ~8 KiB of RSS per idle keep-alive connection
/// (30 vs 22 KiB, `bench/` idle workload).
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
    Explain {
        /// The Bearer token to check.
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Host header, for routes with `hosts`.
        #[arg(long)]
        host: Option<String>,
        /// The request path, e.g. /v2/analytics/data
        url_path: String,
    },
    /// Read a client secret on stdin, print an argon2id hash for `secret_hash`.
    HashSecret,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config, cli.log_format),
        Command::Validate { format } => validate(&cli.config, format),
        Command::Explain {
            token,
            method,
            host,
            url_path,
        } => explain(&cli.config, token, &method, host, &url_path),
        Command::HashSecret => hash_secret(),
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
    let _log_guard = logging::init(format);
    let gw = match Gateway::load(config) {
        Ok(g) => g,
        Err(e) if e.unreadable => {
            eprintln!("tollgate: {}", unreadable(&e));
            return ExitCode::from(1);
        }
        Err(e) => {
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
        let running = match tollgate::start(gw.clone()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tollgate: {e}");
                return ExitCode::from(1);
            }
        };
        wait_for_signals(&gw).await;
        tracing::info!("shutting down: no new connections, waiting for requests in flight");
        running.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

#[cfg(unix)]
async fn wait_for_signals(gw: &std::sync::Arc<Gateway>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
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

#[cfg(not(unix))]
async fn wait_for_signals(_gw: &std::sync::Arc<Gateway>) {
    let _ = tokio::signal::ctrl_c().await;
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
    for line in checked.warning_lines() {
        println!("{line}");
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
            println!(
                "{}: OK — {} route(s), {} upstream(s), {} issuer(s), token service {}, listen {tls}://{}{warnings}",
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
    token: Option<String>,
    method: &str,
    host: Option<String>,
    path: &str,
) -> ExitCode {
    let _log_guard = logging::init(LogFormat::Text);
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        eprintln!("tollgate: invalid method {method}");
        return ExitCode::from(2);
    };
    let res = runtime().block_on(tollgate::explain::explain(
        config,
        token.as_deref(),
        &method,
        path,
        host.as_deref(),
    ));
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
