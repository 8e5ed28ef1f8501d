//! The cases file of `tollgate test`: what each request is and what the policy must
//! answer. Read like `gateway.yaml` (unknown keys are errors, every problem is
//! reported with `file:line:col key.path`), checked completely before any case runs.
//!
//! ```yaml
//! mint:
//!   issuers: [corp]          # external JWT issuers whose keys this run replaces with a
//!                            # generated test key (`local`, the token service, always
//!                            # mints with its own signing key)
//! cases:
//!   - name: dashboard reads data
//!     token: {issuer: local, claims: {client_id: sap-cx-dashboard, scope: "analytics.read"}}
//!     method: GET            # default GET
//!     path: /v2/analytics/metadata
//!     host: bi-api.company.com      # optional Host header
//!     origin: https://cx.company.com  # optional Origin header
//!     headers: {Access-Control-Request-Method: POST}   # optional, any other headers
//!     expect: {status: 200}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::config::source::PosIndex;
use crate::config::validate::{parse_duration, suggest, Problem, Problems};
use crate::config::{ConfigError, Located};
use crate::error::DenyReason;

/// Statuses of auth denials, which carry a reason code: a case expecting one names the
/// reason (or, for an answer without one such as the token service's `invalid_client`,
/// the error code).
const REASON_REQUIRED: [u16; 3] = [401, 403, 429];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    #[serde(default)]
    mint: Option<MintModel>,
    cases: Vec<CaseModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintModel {
    #[serde(default)]
    issuers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseModel {
    name: String,
    #[serde(default)]
    token: Option<serde_yaml::Value>,
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect: ExpectModel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintTokenModel {
    issuer: String,
    #[serde(default)]
    claims: serde_yaml::Mapping,
    #[serde(default)]
    expires_in: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectModel {
    status: u16,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
}

/// A checked cases file.
#[derive(Debug, Clone)]
pub struct CasesFile {
    /// External issuers whose keys are replaced by a generated test key in this run.
    pub mint_issuers: Vec<String>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// `cases[i]`, and the line it starts on (for reports).
    pub at: String,
    pub line: usize,
    pub token: Option<TokenSpec>,
    pub method: Method,
    /// Path and query, as sent.
    pub path: String,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub expect: Expect,
}

#[derive(Debug, Clone)]
pub enum TokenSpec {
    /// Sent as written.
    Literal(String),
    /// Signed in this run with the issuer's test key (`local`: the token service's key).
    Mint {
        issuer: String,
        claims: serde_json::Map<String, serde_json::Value>,
        /// Seconds from now to `exp` (negative: already expired). Default 300.
        expires_in: i64,
    },
}

#[derive(Debug, Clone)]
pub struct Expect {
    pub status: u16,
    pub reason: Option<String>,
    pub error: Option<String>,
    /// Header name -> value it must have (`None`: it must be absent).
    pub headers: Vec<(HeaderName, Option<String>)>,
}

/// SPEC's `error` codes, for "did you mean" on `expect.error`.
const ERROR_CODES: &[&str] = &[
    "not_found",
    "invalid_request",
    "invalid_token",
    "insufficient_scope",
    "access_denied",
    "request_header_too_large",
    "payload_too_large",
    "bad_gateway",
    "gateway_timeout",
    "rate_limited",
    "service_unavailable",
    "invalid_client",
    "invalid_scope",
    "unsupported_grant_type",
    "method_not_allowed",
];

/// An issuer of the config, as far as a cases file is concerned.
#[derive(Debug, Clone)]
pub struct IssuerInfo {
    pub name: String,
    /// Whether tokens can be minted for it (else why not).
    pub mintable: Result<(), String>,
}

/// Reads and checks a cases file against the config's issuers; every problem located.
pub fn parse(text: &str, file: &str, issuers: &[IssuerInfo]) -> Result<CasesFile, ConfigError> {
    let single = |line: usize, column: usize, message: String| ConfigError {
        file: file.to_owned(),
        problems: vec![Located {
            line,
            column,
            path: String::new(),
            message,
        }],
    };
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let (l, c) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        single(l, c, format!("YAML syntax error: {e}"))
    })?;
    if value.is_null() {
        return Err(single(1, 1, "cases file is empty".into()));
    }
    let index = PosIndex::build(text);
    let mut problems = Problems::default();
    let model: Result<FileModel, _> = serde_path_to_error::deserialize(value);
    let model = match model {
        Ok(m) => m,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            serde_problem(&mut problems, &path, &e.inner().to_string());
            return Err(locate(file, &index, problems));
        }
    };
    let mint_issuers = model.mint.map(|m| m.issuers).unwrap_or_default();
    let names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
    for (i, name) in mint_issuers.iter().enumerate() {
        let at = format!("mint.issuers[{i}]");
        match issuers.iter().find(|x| x.name == *name) {
            _ if name == "local" => problems.add(
                at,
                "`local` (the token service) always mints with its own signing key; do not list it",
            ),
            None => problems.add(at, unknown_issuer(name, &names)),
            Some(IssuerInfo {
                mintable: Err(why), ..
            }) => problems.add(at, format!("issuer {name} {why}")),
            Some(_) => {}
        }
    }
    if model.cases.is_empty() {
        problems.add("cases", "no cases");
    }
    let mut cases = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in model.cases.into_iter().enumerate() {
        let at = format!("cases[{i}]");
        if let Some(first) = names.insert(c.name.clone(), i) {
            problems.add(
                format!("{at}.name"),
                format!("name \"{}\" is also the name of cases[{first}]", c.name),
            );
        }
        if let Some(case) = check_case(c, &at, &mint_issuers, issuers, &mut problems) {
            let line = index.key_pos(&at).map(|p| p.line).unwrap_or(1);
            cases.push(Case { line, ..case });
        }
    }
    if !problems.is_empty() {
        return Err(locate(file, &index, problems));
    }
    Ok(CasesFile {
        mint_issuers,
        cases,
    })
}

fn check_case(
    c: CaseModel,
    at: &str,
    minted: &[String],
    issuers: &[IssuerInfo],
    p: &mut Problems,
) -> Option<Case> {
    let before = p.0.len();
    if c.name.trim().is_empty() {
        p.add(format!("{at}.name"), "must not be empty");
    }
    let method = match c.method.as_deref() {
        None => Method::GET,
        Some(m) => match Method::from_bytes(m.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                p.add(format!("{at}.method"), format!("invalid method \"{m}\""));
                Method::GET
            }
        },
    };
    if !c.path.starts_with('/') || c.path.parse::<http::Uri>().is_err() {
        p.add(
            format!("{at}.path"),
            format!(
                "\"{}\" is not a request path like /v2/analytics/data",
                c.path
            ),
        );
    }
    for (what, v) in [("host", &c.host), ("origin", &c.origin)] {
        if let Some(v) = v {
            if HeaderValue::from_str(v).is_err() || v.is_empty() {
                p.add(format!("{at}.{what}"), "not a valid header value");
            }
        }
    }
    let mut headers = Vec::new();
    for (k, v) in &c.headers {
        let path = format!("{at}.headers.{k}");
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => {
                if n == http::header::AUTHORIZATION {
                    p.add(path, "give the Bearer token as `token:`, not as a header");
                } else {
                    headers.push((n, v));
                }
            }
            (Err(_), _) => p.add(path, format!("invalid header name \"{k}\"")),
            (_, Err(_)) => p.add(path, "not a valid header value"),
        }
    }
    let token = c
        .token
        .as_ref()
        .and_then(|t| token_spec(t, &format!("{at}.token"), minted, issuers, p));
    let expect = check_expect(c.expect, &format!("{at}.expect"), p);
    (p.0.len() == before).then(|| Case {
        name: c.name,
        at: at.to_owned(),
        line: 1,
        token,
        method,
        path: c.path,
        host: c.host,
        origin: c.origin,
        headers,
        expect,
    })
}

fn token_spec(
    v: &serde_yaml::Value,
    at: &str,
    minted: &[String],
    issuers: &[IssuerInfo],
    p: &mut Problems,
) -> Option<TokenSpec> {
    if let Some(s) = v.as_str() {
        if s.trim().is_empty() || HeaderValue::from_str(&format!("Bearer {s}")).is_err() {
            p.add(
                at,
                "not a token (leave `token` out for a request without one)",
            );
            return None;
        }
        return Some(TokenSpec::Literal(s.trim().to_owned()));
    }
    let m: MintTokenModel = match serde_path_to_error::deserialize(v.clone()) {
        Ok(m) => m,
        Err(e) => {
            let sub = e.path().to_string();
            let path = if sub == "." {
                at.to_owned()
            } else {
                format!("{at}.{sub}")
            };
            let msg = e.inner().to_string();
            if msg.starts_with("unknown field") {
                serde_problem(p, &path, &msg);
            } else {
                let msg = msg.split(" at line ").next().unwrap_or(&msg);
                p.add(
                    path,
                    format!("{msg} (a token is a string, or {{issuer, claims, expires_in}} to mint one)"),
                );
            }
            return None;
        }
    };
    if !issuers.iter().any(|i| i.name == m.issuer) {
        let names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
        let mut msg = unknown_issuer(&m.issuer, &names);
        if m.issuer == "local" {
            msg.push_str(" (`local` needs a token_service block)");
        }
        p.add(format!("{at}.issuer"), msg);
    } else if m.issuer != "local" && !minted.contains(&m.issuer) {
        p.add(
            format!("{at}.issuer"),
            format!(
                "issuer \"{}\" does not mint in this run: list it under mint.issuers (its keys are then replaced by a test key for this run), or use `local`",
                m.issuer
            ),
        );
    }
    let expires_in = match m.expires_in.as_deref() {
        None => 300,
        Some(s) => {
            let (neg, d) = match s.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, s),
            };
            match parse_duration(d) {
                Ok(d) => {
                    let secs = d.min(Duration::from_secs(10 * 365 * 86_400)).as_secs() as i64;
                    if neg {
                        -secs
                    } else {
                        secs
                    }
                }
                Err(e) => {
                    p.add(format!("{at}.expires_in"), e);
                    300
                }
            }
        }
    };
    let mut claims = serde_json::Map::new();
    for (k, v) in &m.claims {
        let Some(k) = k.as_str() else {
            p.add(format!("{at}.claims"), "claim names must be strings");
            continue;
        };
        match serde_json::to_value(v) {
            Ok(v) => {
                claims.insert(k.to_owned(), v);
            }
            Err(e) => p.add(format!("{at}.claims.{k}"), e.to_string()),
        }
    }
    Some(TokenSpec::Mint {
        issuer: m.issuer,
        claims,
        expires_in,
    })
}

fn check_expect(e: ExpectModel, at: &str, p: &mut Problems) -> Expect {
    if !(100..=599).contains(&e.status) {
        p.add(format!("{at}.status"), "not an HTTP status");
    }
    match &e.reason {
        Some(r) if !DenyReason::ALL.iter().any(|x| x.as_str() == r) => {
            let codes: Vec<&str> = DenyReason::ALL.iter().map(|x| x.as_str()).collect();
            let hint = suggest(r, &codes)
                .map(|h| format!(" (did you mean \"{h}\"?)"))
                .unwrap_or_default();
            p.add(
                format!("{at}.reason"),
                format!("unknown reason code \"{r}\"{hint}"),
            );
        }
        Some(_) => {}
        None if REASON_REQUIRED.contains(&e.status) && e.error.is_none() => p.add(
            format!("{at}.reason"),
            format!(
                "a {} case must name the reason code it expects (e.g. scope_missing), or the error code of an answer without one",
                e.status
            ),
        ),
        None => {}
    }
    if let Some(code) = &e.error {
        if !ERROR_CODES.contains(&code.as_str()) {
            let hint = suggest(code, ERROR_CODES)
                .map(|h| format!(" (did you mean \"{h}\"?)"))
                .unwrap_or_default();
            p.add(
                format!("{at}.error"),
                format!("unknown error code \"{code}\"{hint}"),
            );
        }
    }
    let mut headers = Vec::new();
    for (k, v) in e.headers {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => headers.push((n, v)),
            Err(_) => p.add(
                format!("{at}.headers.{k}"),
                format!("invalid header name \"{k}\""),
            ),
        }
    }
    Expect {
        status: e.status,
        reason: e.reason,
        error: e.error,
        headers,
    }
}

/// A serde error as a problem: an unknown key is reported at the key, with "did you
/// mean" from the keys serde expected; anything else at the value.
fn serde_problem(p: &mut Problems, path: &str, msg: &str) {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        // serde_path_to_error's path already ends at the unknown key.
        let full = if path.is_empty() {
            key.to_owned()
        } else if path == key || path.ends_with(&format!(".{key}")) {
            path.to_owned()
        } else {
            format!("{path}.{key}")
        };
        p.unknown_key(full, suggest(key, &candidates));
        return;
    }
    p.add(path, msg);
}

fn unknown_issuer(name: &str, known: &[&str]) -> String {
    let hint = suggest(name, known)
        .map(|h| format!(" (did you mean \"{h}\"?)"))
        .unwrap_or_default();
    format!(
        "unknown issuer \"{name}\"{hint}; the config has: {}",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )
}

/// Problems at key paths -> `file:line:col key.path: message`, in file order.
fn locate(file: &str, index: &PosIndex, problems: Problems) -> ConfigError {
    let mut out: Vec<Located> = problems
        .0
        .into_iter()
        .map(
            |Problem {
                 path,
                 message,
                 at_key,
             }| {
                let pos = if at_key {
                    index.key_pos(&path)
                } else {
                    index.value_pos(&path)
                };
                Located {
                    line: pos.map_or(1, |p| p.line),
                    column: pos.map_or(1, |p| p.col),
                    path,
                    message,
                }
            },
        )
        .collect();
    out.sort_by_key(|p| (p.line, p.column));
    ConfigError {
        file: file.to_owned(),
        problems: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuers() -> Vec<IssuerInfo> {
        vec![
            IssuerInfo {
                name: "local".into(),
                mintable: Ok(()),
            },
            IssuerInfo {
                name: "corp".into(),
                mintable: Ok(()),
            },
            IssuerInfo {
                name: "opaque".into(),
                mintable: Err("uses introspection".into()),
            },
        ]
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text, "c.yaml", &issuers()).unwrap_err().lines()
    }

    // Behaviour: a good file parses; defaults (GET, 300 s expiry) apply.
    #[test]
    fn parses_cases() {
        let f = parse(
            "mint: {issuers: [corp]}\ncases:\n  - name: a\n    path: /x\n    token: {issuer: corp, claims: {sub: u, groups: [a, b]}}\n    expect: {status: 200}\n  - name: b\n    method: POST\n    path: /y?q=1\n    token: abc.def.ghi\n    expect: {status: 403, reason: scope_missing, headers: {vary: Origin, x-gone: null}}\n",
            "c.yaml",
            &issuers(),
        )
        .unwrap();
        assert_eq!(f.mint_issuers, vec!["corp"]);
        assert_eq!(f.cases.len(), 2);
        assert_eq!(f.cases[0].method, Method::GET);
        assert_eq!(f.cases[0].line, 3);
        match &f.cases[0].token {
            Some(TokenSpec::Mint {
                issuer,
                claims,
                expires_in,
            }) => {
                assert_eq!(issuer, "corp");
                assert_eq!(claims["groups"], serde_json::json!(["a", "b"]));
                assert_eq!(*expires_in, 300);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&f.cases[1].token, Some(TokenSpec::Literal(t)) if t == "abc.def.ghi"));
        assert_eq!(f.cases[1].expect.headers.len(), 2);
        assert_eq!(f.cases[1].expect.headers[1].1, None);
    }

    // Behaviour: every problem is reported with line, column and key path.
    #[test]
    fn problems_are_located() {
        let p = problems(
            "cases:\n  - name: a\n    path: /x\n    expect: {status: 403, reason: scope_mising}\n  - name: a\n    method: \"G T\"\n    path: nope\n    token: {issuer: corp}\n    expect: {status: 401}\n",
        );
        let text = p.join("\n");
        assert!(
            text.contains("c.yaml:4:35 cases[0].expect.reason: unknown reason code \"scope_mising\" (did you mean \"scope_missing\"?)"),
            "{text}"
        );
        assert!(
            text.contains("c.yaml:5:11 cases[1].name: name \"a\" is also the name of cases[0]"),
            "{text}"
        );
        assert!(
            text.contains("c.yaml:6:13 cases[1].method: invalid method"),
            "{text}"
        );
        assert!(text.contains("c.yaml:7:11 cases[1].path:"), "{text}");
        assert!(
            text.contains("cases[1].token.issuer: issuer \"corp\" does not mint"),
            "{text}"
        );
        assert!(
            text.contains("cases[1].expect.reason: a 401 case must name"),
            "{text}"
        );
    }

    // Behaviour: unknown keys and wrong types are located errors, not ignored.
    #[test]
    fn unknown_keys_and_types() {
        let text =
            problems("cases:\n  - name: a\n    path: /x\n    expct: {status: 200}\n").join("\n");
        assert!(
            text.contains(
                "c.yaml:4:5 cases[0].expct: unknown key \"expct\" (did you mean \"expect\"?)"
            ),
            "{text}"
        );
        let text =
            problems("cases:\n  - name: a\n    path: /x\n    expect: {status: high}\n").join("\n");
        assert!(
            text.contains("c.yaml:4:22 cases[0].expect.status"),
            "{text}"
        );
        let text = problems("cases: [\n").join("\n");
        assert!(text.contains("YAML syntax error"), "{text}");
        let text = problems("mint: {issuers: [opaque, crop]}\ncases:\n  - name: a\n    path: /x\n    expect: {status: 200}\n").join("\n");
        assert!(
            text.contains("mint.issuers[0]: issuer opaque uses introspection"),
            "{text}"
        );
        assert!(
            text.contains("mint.issuers[1]: unknown issuer \"crop\" (did you mean \"corp\"?)"),
            "{text}"
        );
        let text = problems("mint: {issuers: [local]}\ncases:\n  - name: a\n    path: /x\n    token: {issuer: local, claims: {a: 1}, expires_in: soon}\n    expect: {status: 200}\n").join("\n");
        assert!(text.contains("c.yaml:1:18 mint.issuers[0]"), "{text}");
        assert!(text.contains("cases[0].token.expires_in"), "{text}");
    }
}
