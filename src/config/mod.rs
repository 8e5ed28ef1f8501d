//! `gateway.yaml` -> the runtime model, before the first request and on every reload.
//!
//! Three stages: [`yaml`] reads the text straight into the model (one pass, every
//! problem of kind and key collected; [`subst`] resolves `${env:..}` / `${file:..}`),
//! the section files (`server.rs`, `issuers.rs`, `token_service.rs`, `upstreams.rs`
//! with `upstream_auth.rs` and `upstream_session.rs`, `routes.rs`, `ratelimit.rs`,
//! `login/`, with the shared `auth.rs` and `cors.rs` blocks) check their values and
//! [`compile`] them into [`Runtime`], and [`source`] turns key paths into
//! `file:line:col` when there is something to report. [`load`] runs the three;
//! [`check`] also hands back the warnings (`tollgate validate`).
//!
//! Loading never writes a file: a signing key to create is left to `tollgate run`
//! ([`Runtime::create_key_file`]).

mod admin_auth;
mod auth;
mod claims;
pub mod compile;
mod cors;
mod decision;
mod issuers;
mod items;
pub mod login;
pub mod model;
pub mod ratelimit;
mod refs;
mod registry;
mod routes;
mod server;
pub mod source;
pub mod subst;
mod token_service;
pub mod tracing;
pub mod upstream_auth;
mod upstream_endpoints;
pub mod upstream_session;
mod upstreams;
pub mod validate;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use model::{AuthBlockModel, ConfigModel, CorsModel, RouteAuthModel};
pub use registry::Registry;
use source::PosIndex;
use validate::{Problem, Problems};

use crate::encoding::hex;
use crate::runtime::Runtime;

/// Every problem found in a config file, each with its location.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    /// (line, col, path, message), in file order.
    pub problems: Vec<Located>,
    /// The file could not be read at all (missing, unreadable, not UTF-8); the one
    /// problem says why.
    pub unreadable: bool,
}

/// A problem or warning, located: `41:9 routes[2].upstream: unknown upstream "x"`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(
                f,
                "{}:{} {}: {}",
                self.line, self.column, self.path, self.message
            )
        }
    }
}

impl ConfigError {
    /// One problem at a known place.
    pub fn at(file: &str, line: usize, column: usize, path: &str, message: String) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            problems: vec![Located {
                line,
                column,
                path: path.to_owned(),
                message,
            }],
            unreadable: false,
        }
    }

    /// One problem at the key path `path` of the config file `file` (read again to
    /// find where the key is): for problems found after loading, e.g. when `tollgate
    /// run` cannot create the signing key file.
    pub fn at_key_of(file: &Path, path: &str, message: String) -> ConfigError {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let index = PosIndex::build(&text);
        let problem = Problem {
            path: path.to_owned(),
            message,
            at_key: false,
        };
        ConfigError {
            file: file.display().to_string(),
            problems: locate(&index, vec![problem]),
            unreadable: false,
        }
    }

    /// One line per problem: `gateway.yaml:41:9 routes[2].upstream: unknown upstream "x"`.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("{}:{}", self.file, p))
            .collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// What checking a config found: the runtime model or every error, and the warnings
/// either way (they never refuse a file).
pub struct Checked {
    pub file: String,
    pub result: Result<Runtime, ConfigError>,
    pub warnings: Vec<Located>,
}

impl Checked {
    /// `gateway.yaml:12:5 issuers[0].skip_audience_check: warning: ...`
    pub fn warning_lines(&self) -> Vec<String> {
        self.warnings
            .iter()
            .map(|w| {
                let sep = if w.path.is_empty() { "" } else { " " };
                format!(
                    "{}:{}:{}{sep}{}: warning: {}",
                    self.file, w.line, w.column, w.path, w.message
                )
            })
            .collect()
    }

    /// The result, with each warning logged.
    fn logged(self) -> Result<Runtime, ConfigError> {
        for w in self.warning_lines() {
            ::tracing::warn!("{w}");
        }
        self.result
    }
}

/// Reads, checks and compiles a config file, logging its warnings. Relative paths
/// inside it are relative to its folder.
pub fn load(path: &Path, reg: &Registry) -> Result<Runtime, ConfigError> {
    check(path, reg).logged()
}

/// [`load`], with the warnings handed back instead of logged (`tollgate validate`).
pub fn check(path: &Path, reg: &Registry) -> Checked {
    let mut timings = LoadTimings::default();
    let started = Instant::now();
    let bytes = std::fs::read(path);
    timings.read = started.elapsed();
    check_bytes(path, bytes, reg, &mut timings)
}

/// How long each stage of a load took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadTimings {
    /// Reading the file.
    pub read: Duration,
    /// YAML text -> the config model: syntax, kinds of values, unknown keys, `${...}`.
    pub parse: Duration,
    /// Every check on the values and the runtime model built from them (one pass:
    /// validation happens while compiling).
    pub compile: Duration,
}

/// [`load`] with the file already read (`bytes` is what reading it gave), so that a
/// caller that needs the bytes too (the reload's change detection) reads it once.
pub fn load_bytes(
    path: &Path,
    bytes: std::io::Result<Vec<u8>>,
    reg: &Registry,
    timings: &mut LoadTimings,
) -> Result<Runtime, ConfigError> {
    check_bytes(path, bytes, reg, timings).logged()
}

fn check_bytes(
    path: &Path,
    bytes: std::io::Result<Vec<u8>>,
    reg: &Registry,
    timings: &mut LoadTimings,
) -> Checked {
    let file = path.display().to_string();
    let text = bytes.and_then(|b| {
        // The same words as `read_to_string`'s error.
        String::from_utf8(b).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    });
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            let mut err = ConfigError::at(&file, 1, 1, "", format!("cannot read config file: {e}"));
            err.unreadable = true;
            return Checked {
                file,
                result: Err(err),
                warnings: Vec::new(),
            };
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut checked = check_str(&text, &file, base, reg, timings);
    if let Ok(rt) = &mut checked.result {
        rt.hash = hex(&Sha256::digest(text.as_bytes()));
        rt.path = path.to_path_buf();
    }
    checked
}

/// Identity of everything a config was built from: the config text's hash and the
/// content of every file it refers to (missing files count too).
pub fn inputs_hash(config_hash: &str, files: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    h.update(config_hash.as_bytes());
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(b) => h.update(Sha256::digest(&b)),
            Err(_) => h.update(b"missing"),
        }
    }
    hex(&h.finalize())
}

/// [`load`] of a text: `file` names it in problems, `base` is the folder relative
/// paths start from.
pub fn load_str(
    text: &str,
    file: &str,
    base: &Path,
    reg: &Registry,
) -> Result<Runtime, ConfigError> {
    check_str(text, file, base, reg, &mut LoadTimings::default()).logged()
}

fn check_str(
    text: &str,
    file: &str,
    base: &Path,
    reg: &Registry,
    timings: &mut LoadTimings,
) -> Checked {
    let started = Instant::now();
    let base_dir: PathBuf = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base.to_path_buf()
    };
    let mut cx = yaml::Cx::new(&base_dir, model::PLACES);
    let refused = |message: String, line, column| Checked {
        file: file.to_owned(),
        result: Err(ConfigError::at(file, line, column, "", message)),
        warnings: Vec::new(),
    };
    let by_items = items::read(text, &base_dir);
    #[cfg(debug_assertions)]
    if let Some(read) = &by_items {
        items::check_same(text, &base_dir, read);
    }
    let model = match by_items {
        Some(read) => {
            cx.files = read.files;
            read.model
        }
        None => match yaml::read::<ConfigModel>(text, &mut cx) {
            Ok(Some(m)) => m,
            Ok(None) => return refused("config file is empty".into(), 1, 1),
            Err(stop) => return refused(stop.message, stop.line, stop.column),
        },
    };
    timings.parse = started.elapsed();
    let started = Instant::now();
    let mut files = std::mem::take(&mut cx.files);
    let mut p: Problems = cx.problems;
    // Compiled even when reading found problems: one run reports everything.
    let rt = compile::compile(&model, &base_dir, reg, &mut p);
    // Positions are only needed to report something.
    let index = (!p.errors.is_empty() || !p.warnings.is_empty()).then(|| PosIndex::build(text));
    let index = index.unwrap_or_default();
    let warnings = locate(&index, p.warnings);
    let result = match rt {
        Some(mut rt) if p.errors.is_empty() => {
            files.append(&mut rt.files);
            files.sort();
            files.dedup();
            rt.files = files;
            rt.redacted = redacted(model);
            Ok(rt)
        }
        _ => Err(ConfigError {
            file: file.to_owned(),
            problems: locate(&index, p.errors),
            unreadable: false,
        }),
    };
    timings.compile = started.elapsed();
    Checked {
        file: file.to_owned(),
        result,
        warnings,
    }
}

/// The `GET /admin/config` view of a model: built on first use (secrets print
/// `[redacted]`, see [`crate::secret::Secret`]).
fn redacted(model: ConfigModel) -> crate::runtime::RedactedConfig {
    crate::runtime::RedactedConfig::new(move || serde_json::to_value(&model).unwrap_or_default())
}

/// Problems in file order, each once.
pub(crate) fn locate(index: &PosIndex, problems: Vec<Problem>) -> Vec<Located> {
    let mut out: Vec<Located> = problems
        .into_iter()
        .map(|p| {
            let pos = if p.at_key {
                index.key_pos(&p.path)
            } else {
                index.value_pos(&p.path)
            };
            let pos = pos.unwrap_or(source::Pos { line: 1, col: 1 });
            Located {
                line: pos.line,
                column: pos.col,
                path: p.path,
                message: p.message,
            }
        })
        .collect();
    out.sort_by_key(|p| (p.line, p.column));
    out.dedup_by(|a, b| a.path == b.path && a.message == b.message);
    out
}

#[cfg(test)]
mod tests;
