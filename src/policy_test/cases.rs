//! The cases file of `tollgate test`: what each request is and what the policy must
//! answer. Read by the same collecting reader as `gateway.yaml` (`config::yaml`: unknown
//! keys are errors with "did you mean", strings may use `${env:..}` / `${file:..}`, every
//! problem is reported with `file:line:col key.path`), checked completely before any
//! case runs.
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
//!     websocket: true        # optional: a WebSocket handshake (Upgrade: websocket,
//!                            # Connection: upgrade); the route must accept it
//!     expect: {status: 200}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use crate::config::source::PosIndex;
use crate::config::validate::{parse_duration, suggest, Problems};
use crate::config::yaml::{self, read_section, section, Cx, List, Node, Places, Schema, Section};
use crate::config::{locate, ConfigError};
use crate::error::DenyReason;

/// Statuses of auth denials, which carry a reason code: a case expecting one names the
/// reason (or, for an answer without one such as the token service's `invalid_client`,
/// the error code).
const REASON_REQUIRED: [u16; 3] = [401, 403, 429];

section! {
    /// The whole cases file.
    pub struct FileModel {
        "mint" => pub mint: Option<MintModel>,
        "cases" => pub cases: Option<List<CaseModel>>,
    }
}

section! {
    pub struct MintModel {
        "issuers" => pub issuers: List<String>,
    }
}

section! {
    pub struct CaseModel {
        "name" => pub name: Option<String>,
        "token" => pub token: Option<TokenModel>,
        "method" => pub method: Option<String>,
        "path" => pub path: Option<String>,
        "host" => pub host: Option<String>,
        "origin" => pub origin: Option<String>,
        "headers" => pub headers: BTreeMap<String, String>,
        "websocket" => pub websocket: bool,
        "expect" => pub expect: Option<ExpectModel>,
    }
}

section! {
    /// `token: {issuer, claims, expires_in}`: a token to mint.
    pub struct MintTokenModel {
        "issuer" => pub issuer: Option<String>,
        "claims" => pub claims: Option<JsonObject>,
        "expires_in" => pub expires_in: Option<String>,
    }
}

section! {
    pub struct ExpectModel {
        "status" => pub status: Option<u64>,
        "reason" => pub reason: Option<String>,
        "error" => pub error: Option<String>,
        /// Header name -> value, or null: must be absent.
        "headers" => pub headers: BTreeMap<String, Option<String>>,
    }
}

/// Every block of a cases file, for "is a key of" hints on unknown keys.
const PLACES: Places = &[
    ("the top level", FileModel::KEYS),
    ("mint", MintModel::KEYS),
    ("cases[]", CaseModel::KEYS),
    ("cases[].token", MintTokenModel::KEYS),
    ("cases[].expect", ExpectModel::KEYS),
];

/// A case's `token`: the token itself, or what to mint one from.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TokenModel {
    Literal(String),
    Mint(MintTokenModel),
}

const TOKEN_EXPECTED: &str = "a token (text), or {issuer, claims, expires_in} to mint one";

impl Schema for TokenModel {
    fn schema() -> serde_json::Value {
        serde_json::json!({"anyOf": [{"type": "string"}, MintTokenModel::schema()]})
    }
}

impl Node for TokenModel {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(TokenVisitor(cx))
    }
}

struct TokenVisitor<'c, 'a>(&'c mut Cx<'a>);

impl TokenVisitor<'_, '_> {
    fn wrong(self, found: &str) -> Option<TokenModel> {
        self.0.wrong(TOKEN_EXPECTED, found);
        None
    }
}

impl<'de> Visitor<'de> for TokenVisitor<'_, '_> {
    type Value = Option<TokenModel>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(TOKEN_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .text(s.into())
            .map(|(s, _)| TokenModel::Literal(s.into_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let m =
            read_section::<MintTokenModel, _>(de::value::MapAccessDeserializer::new(map), self.0)?;
        Ok(m.map(TokenModel::Mint))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    // A token is never shown: it may be a real one.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.wrong("true or false"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(self.wrong("a number"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(self.wrong("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(self.wrong("a number"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.wrong("a list"))
    }
}

/// The claims of a token to mint: any YAML mapping, as JSON.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct JsonObject(pub serde_json::Map<String, serde_json::Value>);

impl Schema for JsonObject {
    fn schema() -> serde_json::Value {
        serde_json::json!({"type": "object"})
    }
}

impl Node for JsonObject {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Object(m) => Ok(Some(JsonObject(m))),
            serde_json::Value::Null => Ok(None),
            other => {
                let found = match other {
                    serde_json::Value::Array(_) => "a list",
                    serde_json::Value::String(_) => "text",
                    serde_json::Value::Bool(_) => "true or false",
                    _ => "a number",
                };
                cx.wrong("a mapping of claims (name: value lines)", found);
                Ok(None)
            }
        }
    }
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
    /// A WebSocket handshake (`websocket: true`).
    pub websocket: bool,
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
/// `file` names it in problems; `${file:..}` paths are relative to `base`.
pub fn parse(
    text: &str,
    file: &str,
    base: &Path,
    issuers: &[IssuerInfo],
) -> Result<CasesFile, ConfigError> {
    let mut cx = Cx::new(base, PLACES);
    let model = match yaml::read::<FileModel>(text, &mut cx) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Err(ConfigError::at(
                file,
                1,
                1,
                "",
                "cases file is empty".into(),
            ))
        }
        Err(stop) => {
            return Err(ConfigError::at(
                file,
                stop.line,
                stop.column,
                "",
                stop.message,
            ))
        }
    };
    let mut problems = cx.problems;
    let index = PosIndex::build(text);
    let mint_issuers = model.mint.map(|m| m.issuers.to_vec()).unwrap_or_default();
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
    let list = match model.cases {
        Some(list) => list,
        None => {
            problems.missing("", "cases", " (a list of cases)");
            List::default()
        }
    };
    if list.is_empty() && !problems.has("cases") {
        problems.add("cases", "no cases");
    }
    // A `-` with nothing after it (say, a case commented out below its dash) is not a
    // case: left alone, a file of such items would pass with nothing tested.
    let read: Vec<usize> = list.iter().map(|(i, _)| i).collect();
    for i in (0..list.len()).filter(|i| !read.contains(i)) {
        let at = format!("cases[{i}]");
        if !problems.has(&at) {
            problems.add(
                at,
                "empty case: give it name, path and expect, or remove the \"-\"",
            );
        }
    }
    let mut cases = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in list.iter() {
        let at = format!("cases[{i}]");
        if let Some(name) = &c.name {
            if let Some(first) = seen.insert(name.clone(), i) {
                problems.add(
                    format!("{at}.name"),
                    format!("name \"{name}\" is also the name of cases[{first}]"),
                );
            }
        }
        if let Some(case) = check_case(c, &at, &mint_issuers, issuers, &mut problems) {
            let line = index.key_pos(&at).map(|p| p.line).unwrap_or(1);
            cases.push(Case { line, ..case });
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError {
            file: file.to_owned(),
            problems: locate(&index, problems.errors),
            unreadable: false,
        });
    }
    Ok(CasesFile {
        mint_issuers,
        cases,
    })
}

fn check_case(
    c: &CaseModel,
    at: &str,
    minted: &[String],
    issuers: &[IssuerInfo],
    p: &mut Problems,
) -> Option<Case> {
    let before = p.errors.len();
    match c.name.as_deref() {
        None => p.missing(at, "name", ""),
        Some(n) if n.trim().is_empty() => p.add(format!("{at}.name"), "must not be empty"),
        Some(_) => {}
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
    match c.path.as_deref() {
        None => p.missing(at, "path", " (the request path, e.g. /v2/analytics/data)"),
        Some(path) if !path.starts_with('/') || path.parse::<http::Uri>().is_err() => p.add(
            format!("{at}.path"),
            format!("\"{path}\" is not a request path like /v2/analytics/data"),
        ),
        Some(_) => {}
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
                    p.at_key(path, "give the Bearer token as `token:`, not as a header");
                } else {
                    headers.push((n, v));
                }
            }
            (Err(_), _) => p.at_key(path, format!("invalid header name \"{k}\"")),
            (_, Err(_)) => p.add(path, "not a valid header value"),
        }
    }
    let token = c
        .token
        .as_ref()
        .and_then(|t| token_spec(t, &format!("{at}.token"), minted, issuers, p));
    let expect = match &c.expect {
        Some(e) => check_expect(e, &format!("{at}.expect"), p),
        None => {
            p.missing(
                at,
                "expect",
                " (what the policy must answer, e.g. {status: 200})",
            );
            None
        }
    };
    let (Some(expect), true) = (expect, p.errors.len() == before) else {
        return None;
    };
    Some(Case {
        name: c.name.clone().unwrap_or_default(),
        at: at.to_owned(),
        line: 1,
        token,
        method,
        path: c.path.clone().unwrap_or_default(),
        host: c.host.clone(),
        origin: c.origin.clone(),
        headers,
        websocket: c.websocket,
        expect,
    })
}

fn token_spec(
    t: &TokenModel,
    at: &str,
    minted: &[String],
    issuers: &[IssuerInfo],
    p: &mut Problems,
) -> Option<TokenSpec> {
    let m = match t {
        TokenModel::Literal(s) => {
            if s.trim().is_empty() || HeaderValue::from_str(&format!("Bearer {s}")).is_err() {
                p.add(
                    at,
                    "not a token (leave `token` out for a request without one)",
                );
                return None;
            }
            return Some(TokenSpec::Literal(s.trim().to_owned()));
        }
        TokenModel::Mint(m) => m,
    };
    let Some(issuer) = m.issuer.as_deref() else {
        p.missing(
            at,
            "issuer",
            " (the issuer to mint the token for, e.g. local)",
        );
        return None;
    };
    if !issuers.iter().any(|i| i.name == issuer) {
        let names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
        let mut msg = unknown_issuer(issuer, &names);
        if issuer == "local" {
            msg.push_str(" (`local` needs a token_service block)");
        }
        p.add(format!("{at}.issuer"), msg);
    } else if issuer != "local" && !minted.iter().any(|m| m == issuer) {
        p.add(
            format!("{at}.issuer"),
            format!(
                "issuer \"{issuer}\" does not mint in this run: list it under mint.issuers (its keys are then replaced by a test key for this run), or use `local`"
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
    Some(TokenSpec::Mint {
        issuer: issuer.to_owned(),
        claims: m.claims.clone().map(|c| c.0).unwrap_or_default(),
        expires_in,
    })
}

fn check_expect(e: &ExpectModel, at: &str, p: &mut Problems) -> Option<Expect> {
    let status = match e.status {
        None => {
            p.missing(
                at,
                "status",
                " (the HTTP status the policy must answer with)",
            );
            None
        }
        Some(s) => match u16::try_from(s) {
            Ok(s) if (100..=599).contains(&s) => Some(s),
            _ => {
                p.add(format!("{at}.status"), "not an HTTP status (100-599)");
                None
            }
        },
    };
    match (&e.reason, status) {
        (Some(r), _) if !DenyReason::ALL.iter().any(|x| x.as_str() == r) => {
            let codes: Vec<&str> = DenyReason::ALL.iter().map(|x| x.as_str()).collect();
            let hint = suggest(r, &codes)
                .map(|h| format!(" (did you mean \"{h}\"?)"))
                .unwrap_or_default();
            p.add(
                format!("{at}.reason"),
                format!("unknown reason code \"{r}\"{hint}"),
            );
        }
        (None, Some(status)) if REASON_REQUIRED.contains(&status) && e.error.is_none() => p.add(
            format!("{at}.reason"),
            format!(
                "a {status} case must name the reason code it expects (e.g. scope_missing), or the error code of an answer without one"
            ),
        ),
        _ => {}
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
    for (k, v) in &e.headers {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => headers.push((n, v.clone())),
            Err(_) => p.at_key(
                format!("{at}.headers.{k}"),
                format!("invalid header name \"{k}\""),
            ),
        }
    }
    Some(Expect {
        status: status?,
        reason: e.reason.clone(),
        error: e.error.clone(),
        headers,
    })
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
        parse(text, "c.yaml", Path::new("."), &issuers())
            .unwrap_err()
            .lines()
    }

    // Behaviour: a good file parses; defaults (GET, 300 s expiry) apply.
    #[test]
    fn parses_cases() {
        let f = parse(
            "mint: {issuers: [corp]}\ncases:\n  - name: a\n    path: /x\n    token: {issuer: corp, claims: {sub: u, groups: [a, b]}}\n    expect: {status: 200}\n  - name: b\n    method: POST\n    path: /y?q=1\n    token: abc.def.ghi\n    expect: {status: 403, reason: scope_missing, headers: {vary: Origin, x-gone: null}}\n",
            "c.yaml",
            Path::new("."),
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

    // Behaviour: one run reports every problem of the file, however many cases have
    // them: missing keys, values of the wrong kind (a token is never echoed), unknown
    // keys with the place they belong to.
    #[test]
    fn every_problem_in_one_run() {
        let text = problems(
            "cases:\n  - name: a\n    expect: {status: 200}\n  - name: b\n    path: /x\n    token: 123456789\n    expect: {status: 200, issuer: local}\n  - name: c\n    path: /x\n    token: {issuer: local, claims: [a]}\n    expect: {reason: scope_missing}\n  - name: d\n    path: /x\n    expect: {status: 200, headers: {x-a: 5}}\n  - 7\n",
        )
        .join("\n");
        for want in [
            "c.yaml:2:5 cases[0]: missing required key \"path\"",
            "c.yaml:6:12 cases[1].token: expected a token (text), or {issuer, claims, expires_in} to mint one, found a number",
            "c.yaml:7:27 cases[1].expect.issuer: unknown key \"issuer\" here (\"issuer\" is a key of cases[].token)",
            "c.yaml:10:36 cases[2].token.claims: expected a mapping of claims (name: value lines), found a list",
            "cases[2].expect: missing required key \"status\"",
            "c.yaml:14:42 cases[3].expect.headers.x-a: expected text, found the number 5",
            "c.yaml:15:5 cases[4]: expected a mapping (key: value lines), found the number 7",
        ] {
            assert!(text.contains(want), "{want}\n---\n{text}");
        }
        assert!(!text.contains("123456789"), "{text}");
    }

    // Behaviour: a list item with nothing in it is a located problem, not a case
    // silently skipped; a file of only such items is refused, not a run of no cases
    // (fuzz target `cases`).
    #[test]
    fn empty_items_are_problems() {
        let p = problems("cases:\r  -\r    # a case commented out\n").join("\n");
        assert!(p.contains("c.yaml:"), "{p}");
        assert!(p.contains("cases[0]: empty case"), "{p}");
        let p =
            problems("cases:\n  -\n  - name: a\n    path: /x\n    expect: {status: 200}\n  - ~\n")
                .join("\n");
        assert!(
            p.contains("c.yaml:2:") && p.contains("cases[0]: empty case"),
            "{p}"
        );
        assert!(p.contains("cases[2]: empty case"), "{p}");
        assert!(!p.contains("cases[1]"), "{p}");
    }

    // Behaviour: strings may name environment variables, as in gateway.yaml (a literal
    // token kept out of the cases file).
    #[test]
    fn environment_references() {
        let text = "cases:\n  - name: a\n    path: /x\n    token: \"${env:TOLLGATE_CASES_TEST_TOKEN}\"\n    expect: {status: 200}\n";
        let p = problems(text).join("\n");
        assert!(
            p.contains("cases[0].token: environment variable TOLLGATE_CASES_TEST_TOKEN is not set"),
            "{p}"
        );
    }
}
