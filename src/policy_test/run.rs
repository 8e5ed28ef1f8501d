//! Runs the cases of a cases file through the real policy: the config is loaded like
//! the server loads it, each case becomes a request that goes through `stack::policy`
//! exactly as `tollgate explain` sends one (routing, CORS, limits, token service,
//! sessions, body credentials, the gate, rate limits) in front of a recorder instead of
//! the upstream. Nothing is sent upstream.
//!
//! Minted tokens: a case may ask for a token with given claims instead of a literal one.
//! - `issuer: local` signs with the token service's own signing key (the one the config
//!   names, or the key generated for this run): nothing about the issuer changes.
//! - An external JWT issuer listed under `mint.issuers` gets, in this run only, a
//!   generated EC P-256 key in place of its JWKS: its `issuer`, `audiences`,
//!   `algorithms` (ES256 must be allowed), leeway and claim settings stay as configured,
//!   so every check but the key source is the real one, and no JWKS is fetched.
//!   Literal tokens for such an issuer fail (`kid_unknown`): its real keys are not
//!   loaded in this run. The config file itself is never changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cases::{Case, CasesFile, IssuerInfo, TokenSpec};
use super::report::CaseResult;
use crate::auth::jwks::KeyStore;
use crate::auth::{now_secs, Issuer, IssuerKind};
use crate::config::{self, ConfigError, Registry};
use crate::explain::{decide, unwritten_key_note, Explained, Probe};
use crate::gateway::Gateway;
use crate::token_service::keys::SigningKey;

/// How a token for one issuer is minted in this run.
struct Minter {
    key: Arc<SigningKey>,
    iss: String,
    aud: Option<String>,
    typ: &'static str,
}

/// A loaded config, ready to run cases against.
pub struct Prepared {
    gw: Arc<Gateway>,
    minters: Vec<(String, Minter)>,
    /// What this run changed (issuers whose keys were replaced), for the report.
    pub notes: Vec<String>,
}

/// What each issuer of the config allows a cases file to do (for located errors).
pub fn issuer_infos(rt: &crate::runtime::Runtime) -> Vec<IssuerInfo> {
    rt.issuers
        .iter()
        .map(|i| IssuerInfo {
            name: i.name.to_string(),
            mintable: match &i.kind {
                IssuerKind::Introspection(_) => Err(
                    "uses introspection (opaque tokens): a token cannot be minted for it; give a literal token"
                        .into(),
                ),
                IssuerKind::Jwt(_) if &*i.name == "local" => Ok(()),
                IssuerKind::Jwt(_) if !i.algorithms.contains(&Algorithm::ES256) => Err(format!(
                    "does not allow ES256 (its algorithms: {:?}), the algorithm of the test key",
                    i.algorithms
                )),
                IssuerKind::Jwt(_) => Ok(()),
            },
        })
        .collect()
}

/// Loads the config, reads the cases file against it and replaces the keys of the
/// issuers it mints for. Errors: the config's problems, or the cases file's (located).
pub fn prepare(
    config_path: &std::path::Path,
    cases_text: &str,
    cases_file: &str,
) -> Result<(Prepared, CasesFile), ConfigError> {
    let registry = Registry::default();
    let mut rt = config::load(config_path, &registry)?;
    let base = std::path::Path::new(cases_file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let cases = super::cases::parse(cases_text, cases_file, base, &issuer_infos(&rt))?;
    let mut minters = Vec::new();
    let mut notes: Vec<String> = unwritten_key_note(&rt).into_iter().collect();
    if let Some(ts) = &rt.token_service {
        minters.push((
            "local".to_owned(),
            Minter {
                key: ts.key.clone(),
                iss: ts.issuer.clone(),
                aud: Some(ts.audience.clone()),
                typ: "at+jwt",
            },
        ));
    }
    for name in &cases.mint_issuers {
        let Some(pos) = rt.issuers.iter().position(|i| &*i.name == name) else {
            continue; // reported by parse
        };
        let key = SigningKey::generate_es256()
            .map_err(|e| ConfigError::at(cases_file, 1, 1, "mint", e))?;
        let key = Arc::new(key);
        let Ok(old) = Arc::try_unwrap(rt.issuers.remove(pos)) else {
            return Err(ConfigError::at(
                cases_file,
                1,
                1,
                "mint.issuers",
                format!("issuer {name}: its keys cannot be replaced"),
            ));
        };
        let store = Arc::new(KeyStore::with_static_keys(
            old.name.clone(),
            old.issuer.clone(),
            key.key_set(),
        ));
        let mut fp = Sha256::new();
        fp.update(b"tollgate test key\0");
        fp.update(old.fingerprint);
        fp.update(key.kid.as_bytes());
        // Everything but the key source stays as configured.
        let replaced = Issuer {
            kind: IssuerKind::Jwt(store),
            fingerprint: fp.finalize().into(),
            ..old
        };
        minters.push((
            name.clone(),
            Minter {
                key,
                iss: replaced.issuer.clone(),
                aud: replaced.audiences.first().cloned(),
                typ: "JWT",
            },
        ));
        rt.issuers.insert(pos, Arc::new(replaced));
        notes.push(format!(
            "issuer {name}: keys replaced by a generated test key for this run (no JWKS fetched)"
        ));
    }
    let gw = Gateway::with_runtime(PathBuf::from(config_path), registry, rt);
    Ok((Prepared { gw, minters, notes }, cases))
}

impl Prepared {
    fn mint(
        &self,
        issuer: &str,
        claims: &serde_json::Map<String, Value>,
        expires_in: i64,
    ) -> Result<String, String> {
        let (_, m) = self
            .minters
            .iter()
            .find(|(n, _)| n == issuer)
            .ok_or_else(|| format!("issuer {issuer} does not mint in this run"))?;
        let now = now_secs();
        let mut body = serde_json::Map::new();
        body.insert("iss".into(), Value::from(m.iss.clone()));
        if let Some(aud) = &m.aud {
            body.insert("aud".into(), Value::from(aud.clone()));
        }
        body.insert("iat".into(), Value::from(now));
        body.insert("exp".into(), Value::from(now + expires_in));
        // The case's claims win over the defaults (an `aud` or `iss` of its own tests
        // that gate).
        for (k, v) in claims {
            body.insert(k.clone(), v.clone());
        }
        m.key.sign(m.typ, &Value::Object(body))
    }

    /// Runs one case; the result says how the answer differed from the expectation.
    pub async fn run(&self, case: &Case) -> CaseResult {
        let started = Instant::now();
        let mut result = CaseResult {
            name: case.name.clone(),
            line: case.line,
            got: String::new(),
            mismatches: Vec::new(),
            trace: Vec::new(),
            seconds: 0.0,
        };
        let token = match self.token(case) {
            Ok(t) => t,
            Err(e) => {
                result.got = "no request".into();
                result.mismatches.push(e);
                return result;
            }
        };
        let probe = Probe {
            token: token.as_deref(),
            cookie: None,
            method: Some(&case.method),
            url_path: &case.path,
            host: case.host.as_deref(),
            origin: case.origin.as_deref(),
            access_control_request_method: None,
            headers: &case.headers,
            websocket: case.websocket,
            ..Probe::default()
        };
        let decided = decide(&self.gw, &probe).await;
        result.seconds = started.elapsed().as_secs_f64();
        result.got = describe(&decided);
        result.mismatches = compare(case, &decided);
        result.trace = decided.lines;
        result
    }

    /// The case's Bearer token: as written, or minted now.
    fn token(&self, case: &Case) -> Result<Option<String>, String> {
        let token = match &case.token {
            None => return Ok(None),
            Some(TokenSpec::Literal(t)) => t.clone(),
            Some(TokenSpec::Mint {
                issuer,
                claims,
                expires_in,
            }) => self.mint(issuer, claims, *expires_in)?,
        };
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        Ok(Some(token))
    }
}

/// `403 access_denied, reason client_not_allowed: client "x" is not allowed on this
/// route`, `200, forwarded to upstream bi`, `204, answered by tollgate`.
fn describe(d: &Explained) -> String {
    let status = d.status.as_u16();
    match &d.refused {
        Some(e) => format!(
            "{status} {}{}: {e}",
            e.code(),
            e.deny_reason()
                .map(|r| format!(", reason {}", r.as_str()))
                .unwrap_or_default()
        ),
        None if d.forwarded => format!("{status}, forwarded upstream"),
        None => format!("{status}, answered by tollgate"),
    }
}

fn compare(case: &Case, d: &Explained) -> Vec<String> {
    let mut out = Vec::new();
    let e = &case.expect;
    let status = d.status.as_u16();
    if status != e.status {
        out.push(format!("expected status {}, got {}", e.status, describe(d)));
    }
    let reason = d
        .refused
        .as_ref()
        .and_then(|r| r.deny_reason())
        .map(|r| r.as_str());
    if let Some(want) = &e.reason {
        if reason != Some(want.as_str()) {
            out.push(format!(
                "expected reason {want}, got {}",
                reason.unwrap_or("none")
            ));
        }
    }
    if let Some(want) = &e.error {
        let code = d.refused.as_ref().map(|r| r.code());
        if code != Some(want.as_str()) {
            out.push(format!(
                "expected error {want}, got {}",
                code.unwrap_or("none")
            ));
        }
    }
    for (name, want) in &e.headers {
        let got = d
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match (want, got) {
            (Some(w), Some(g)) if *w == g => {}
            (None, None) => {}
            (Some(w), Some(g)) => out.push(format!("expected header {name}: {w}, got {g}")),
            (Some(w), None) => out.push(format!("expected header {name}: {w}, got none")),
            (None, Some(g)) => out.push(format!("expected no header {name}, got {g}")),
        }
    }
    out
}
