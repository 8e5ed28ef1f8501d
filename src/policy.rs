//! Step 8 of the request path: authorisation.
//!
//! Given a verified [`Identity`], a route's `auth` rule and its optional `permissions`,
//! decide allow or deny — and say which gate said no, with SPEC's reason code. The
//! gates run in a fixed order: trusted client, route scopes, route claims, endpoint,
//! method, endpoint scopes, endpoint claims ([`crate::claims`]). Everything is matched on the normalised path; whatever no permission entry
//! allows is denied.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::claims::{self, ClaimRule};
use crate::error::{DenyReason, GatewayError};
pub use crate::identity::Identity;

/// Fact on the way out (response or refusal): who the gate found the caller to be, and
/// the `permissions` entry that allowed (or came closest to allowing) the request, for
/// the access and denial log lines. One fact for both: each costs an allocation.
#[derive(Debug, Clone, Default)]
pub struct GateFacts {
    pub identity: Option<Arc<Identity>>,
    pub permission: Option<Arc<str>>,
}

/// A route's `auth:` block, compiled.
#[derive(Debug, Clone)]
pub struct AuthRule {
    /// Indexes into `Runtime::issuers` (all of them when the block names none).
    pub issuers: Vec<usize>,
    pub scopes: Vec<String>,
    pub clients: Option<Vec<String>>,
    /// `claims`: every one required (empty: none).
    pub claims: Vec<ClaimRule>,
}

#[derive(Debug, Clone)]
pub enum RouteAuth {
    /// `auth: none`
    None,
    Bearer(AuthRule),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    One,
}

/// One `permissions` entry.
#[derive(Debug, Clone)]
pub struct Permission {
    pub path: Arc<str>,
    segs: Vec<Seg>,
    rest: bool,
    /// None: any method (`methods: ["*"]`).
    pub methods: Option<Vec<Method>>,
    pub scopes: Vec<String>,
    /// `claims` this endpoint requires besides the route's.
    pub claims: Vec<ClaimRule>,
}

/// A literal permission segment in the form request paths are compared in. Made only
/// of unreserved characters (the usual case) it is that already; anything else is
/// normalised like a request path. `.` and `..` are refused: such a permission could
/// never match a normalised request path.
fn literal_segment(s: &str) -> Result<String, String> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if s != "." && s != ".." && s.bytes().all(unreserved) {
        return Ok(s.to_owned());
    }
    let n = crate::route::normalize_path(&format!("/{s}")).map_err(|e| e.0.to_string())?;
    let n = n.trim_start_matches('/');
    if n.is_empty() {
        return Err(format!(
            "`{s}` segments are not allowed; write the path the way requests are normalised"
        ));
    }
    Ok(n.to_owned())
}

impl Permission {
    /// `path`: exact segments, `*` for one segment, a trailing `/**` for any rest.
    pub fn new(
        path: &str,
        methods: Option<Vec<Method>>,
        scopes: Vec<String>,
    ) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("permission path \"{path}\" must start with /"));
        }
        let trimmed = path.trim_end_matches('/');
        let (body, rest) = match trimmed.strip_suffix("/**") {
            Some(b) => (b, true),
            None if trimmed == "/**" || trimmed == "**" => ("", true),
            None => (trimmed, false),
        };
        let mut segs = Vec::new();
        for s in body.split('/').filter(|s| !s.is_empty()) {
            segs.push(match s {
                "*" => Seg::One,
                "**" => {
                    return Err(format!(
                        "permission path \"{path}\": `**` is only allowed at the end"
                    ))
                }
                s if s.contains('*') => {
                    return Err(format!(
                        "permission path \"{path}\": `*` must be a whole segment"
                    ))
                }
                s => Seg::Lit(
                    literal_segment(s).map_err(|e| format!("permission path \"{path}\": {e}"))?,
                ),
            });
        }
        Ok(Permission {
            path: Arc::from(path),
            segs,
            rest,
            methods,
            scopes,
            claims: Vec::new(),
        })
    }

    /// This entry with `claims` required.
    pub fn with_claims(mut self, claims: Vec<ClaimRule>) -> Self {
        self.claims = claims;
        self
    }

    fn matches(&self, segs: &[&str]) -> bool {
        if segs.len() < self.segs.len() || (!self.rest && segs.len() != self.segs.len()) {
            return false;
        }
        self.segs.iter().zip(segs).all(|(p, s)| match p {
            Seg::One => true,
            Seg::Lit(l) => l == s,
        })
    }

    fn allows_method(&self, m: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(m))
    }

    fn is_exact(&self) -> bool {
        !self.rest && self.segs.iter().all(|s| matches!(s, Seg::Lit(_)))
    }

    fn exact_key(&self) -> String {
        let mut k = String::new();
        for s in &self.segs {
            if let Seg::Lit(l) = s {
                k.push('/');
                k.push_str(l);
            }
        }
        if k.is_empty() {
            k.push('/');
        }
        k
    }
}

/// A route's `permissions`, indexed: exact paths by hash, patterns scanned.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    entries: Vec<Permission>,
    exact: HashMap<String, Vec<usize>>,
    patterns: Vec<usize>,
    /// The route's `case_sensitive: false`: literal segments and request paths are
    /// compared in ASCII lower case.
    any_case: bool,
}

impl Permissions {
    pub fn new(entries: Vec<Permission>) -> Permissions {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut patterns = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.is_exact() {
                exact.entry(e.exact_key()).or_default().push(i);
            } else {
                patterns.push(i);
            }
        }
        Permissions {
            entries,
            exact,
            patterns,
            any_case: false,
        }
    }

    /// These entries matched ignoring ASCII case (a route's `case_sensitive: false`):
    /// `/Admin/Users` is the entry `/admin/users` for a backend that ignores case.
    pub fn ignoring_case(mut self) -> Permissions {
        for e in &mut self.entries {
            for s in &mut e.segs {
                if let Seg::Lit(l) = s {
                    l.make_ascii_lowercase();
                }
            }
        }
        let entries = std::mem::take(&mut self.entries);
        Permissions {
            any_case: true,
            ..Permissions::new(entries)
        }
    }

    /// Whether entries are matched ignoring ASCII case.
    pub fn ignores_case(&self) -> bool {
        self.any_case
    }

    /// The entry written with this `path` (for `explain`).
    pub fn entry(&self, path: &str) -> Option<&Permission> {
        self.entries.iter().find(|e| &*e.path == path)
    }

    /// Entries whose path matches (a trailing `/` on the request is ignored).
    fn matching<'a>(&'a self, path: &str) -> impl Iterator<Item = &'a Permission> + 'a {
        let lower;
        let path = if self.any_case {
            lower = path.to_ascii_lowercase();
            lower.as_str()
        } else {
            path
        };
        let key = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        let segs: Vec<&str> = key.split('/').filter(|s| !s.is_empty()).collect();
        let exact = self.exact.get(key).into_iter().flatten().copied();
        let pats: Vec<usize> = self
            .patterns
            .iter()
            .copied()
            .filter(|i| self.entries[*i].matches(&segs))
            .collect();
        exact.chain(pats).map(move |i| &self.entries[i])
    }
}

/// The outcome of the authorisation gates, for the error path, logs and `explain`.
#[derive(Debug)]
pub struct Verdict<'a> {
    /// The permission entry that allowed (or was closest to allowing) the request.
    pub permission: Option<&'a Permission>,
    pub result: Result<(), GatewayError>,
}

pub fn authorize<'a>(
    rule: &AuthRule,
    permissions: Option<&'a Permissions>,
    method: &Method,
    path: &str,
    id: &Identity,
) -> Verdict<'a> {
    // Gate 1: trusted client registration.
    if let Some(clients) = &rule.clients {
        let ok = id
            .client_id
            .as_deref()
            .is_some_and(|c| clients.iter().any(|x| x == c));
        if !ok {
            let description = match &id.client_id {
                Some(c) => format!("client \"{c}\" is not allowed on this route"),
                None => "token names no client; this route only allows listed clients".to_owned(),
            };
            return Verdict {
                permission: None,
                result: Err(GatewayError::AccessDenied {
                    reason: DenyReason::ClientNotAllowed,
                    description,
                }),
            };
        }
    }
    // Gate 2: the route's scopes, every one required.
    if let Some(err) = missing_scopes(&rule.scopes, &[], id) {
        return Verdict {
            permission: None,
            result: Err(err),
        };
    }
    // Gate 3: the route's claims, every one required.
    if let Some(err) = claim_mismatch(&rule.claims, id) {
        return Verdict {
            permission: None,
            result: Err(err),
        };
    }
    let Some(perms) = permissions else {
        return Verdict {
            permission: None,
            result: Ok(()),
        };
    };
    // Gates 4-7: endpoint, method, endpoint scopes, endpoint claims. The first entry
    // that allows the request decides; otherwise the first that came close explains.
    let mut path_matched: Option<&Permission> = None;
    let mut scope_short: Option<(&Permission, GatewayError)> = None;
    for p in perms.matching(path) {
        path_matched.get_or_insert(p);
        if !p.allows_method(method) {
            continue;
        }
        let short =
            missing_scopes(&rule.scopes, &p.scopes, id).or_else(|| claim_mismatch(&p.claims, id));
        match short {
            None => {
                return Verdict {
                    permission: Some(p),
                    result: Ok(()),
                }
            }
            Some(e) => {
                scope_short.get_or_insert((p, e));
            }
        }
    }
    if let Some((p, e)) = scope_short {
        return Verdict {
            permission: Some(p),
            result: Err(e),
        };
    }
    match path_matched {
        Some(p) => Verdict {
            permission: Some(p),
            result: Err(GatewayError::AccessDenied {
                reason: DenyReason::MethodNotAllowed,
                description: format!("method {method} is not permitted on {path}"),
            }),
        },
        None => Verdict {
            permission: None,
            result: Err(GatewayError::AccessDenied {
                reason: DenyReason::EndpointNotAllowed,
                description: format!("endpoint {method} {path} is not permitted on this route"),
            }),
        },
    }
}

/// `claim_mismatch` naming the claim (never its values), if `rules` are not met.
fn claim_mismatch(rules: &[ClaimRule], id: &Identity) -> Option<GatewayError> {
    if rules.is_empty() {
        return None;
    }
    claims::check(rules, &id.claims.0)
        .err()
        .map(|m| GatewayError::AccessDenied {
            reason: DenyReason::ClaimMismatch,
            description: m.to_string(),
        })
}

fn missing_scopes(route: &[String], extra: &[String], id: &Identity) -> Option<GatewayError> {
    let missing: Vec<&str> = route
        .iter()
        .chain(extra)
        .filter(|s| !id.has_scope(s))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return None;
    }
    let required: Vec<&str> = route.iter().chain(extra).map(String::as_str).collect();
    let noun = if missing.len() == 1 {
        "scope"
    } else {
        "scopes"
    };
    Some(GatewayError::InsufficientScope {
        scope: required.join(" "),
        description: format!("{noun} {} required", missing.join(" ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client: &str, scopes: &[&str]) -> Identity {
        Identity {
            issuer: "corp".into(),
            subject: Some("s".into()),
            client_id: Some(client.into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: 0,
            ..Identity::default()
        }
    }

    fn rule(scopes: &[&str], clients: Option<&[&str]>) -> AuthRule {
        AuthRule {
            issuers: vec![0],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            clients: clients.map(|c| c.iter().map(|s| s.to_string()).collect()),
            claims: Vec::new(),
        }
    }

    fn perms() -> Permissions {
        Permissions::new(vec![
            Permission::new(
                "/v2/analytics/data",
                Some(vec![Method::GET, Method::POST]),
                vec!["bi.x".into()],
            )
            .unwrap(),
            Permission::new("/v2/analytics/metadata", Some(vec![Method::GET]), vec![]).unwrap(),
            Permission::new(
                "/v2/analytics/reports/*/rows",
                Some(vec![Method::GET]),
                vec![],
            )
            .unwrap(),
            Permission::new("/v2/analytics/public/**", None, vec![]).unwrap(),
        ])
    }

    fn reason(v: &Verdict) -> Option<DenyReason> {
        v.result.as_ref().err().and_then(|e| e.deny_reason())
    }

    // Behaviour: each gate denies with its own reason code.
    #[test]
    fn gates_in_order() {
        let r = rule(&["analytics.read"], Some(&["dash"]));
        let p = perms();
        let ok = id("dash", &["analytics.read", "bi.x"]);
        assert!(
            authorize(&r, Some(&p), &Method::GET, "/v2/analytics/data", &ok)
                .result
                .is_ok()
        );
        assert!(
            authorize(&r, Some(&p), &Method::GET, "/v2/analytics/data/", &ok)
                .result
                .is_ok()
        );
        let v = authorize(
            &r,
            Some(&p),
            &Method::GET,
            "/v2/analytics/data",
            &id("other", &["analytics.read"]),
        );
        assert_eq!(reason(&v), Some(DenyReason::ClientNotAllowed));
        let v = authorize(
            &r,
            Some(&p),
            &Method::GET,
            "/v2/analytics/data",
            &id("dash", &[]),
        );
        assert_eq!(reason(&v), Some(DenyReason::ScopeMissing));
        let v = authorize(
            &r,
            Some(&p),
            &Method::GET,
            "/v2/analytics/data",
            &id("dash", &["analytics.read"]),
        );
        assert_eq!(reason(&v), Some(DenyReason::ScopeMissing));
        match v.result {
            Err(GatewayError::InsufficientScope { scope, description }) => {
                assert_eq!(scope, "analytics.read bi.x");
                assert_eq!(description, "scope bi.x required");
            }
            other => panic!("{other:?}"),
        }
        let v = authorize(&r, Some(&p), &Method::DELETE, "/v2/analytics/data", &ok);
        assert_eq!(reason(&v), Some(DenyReason::MethodNotAllowed));
        let v = authorize(&r, Some(&p), &Method::GET, "/v2/analytics/admin", &ok);
        assert_eq!(reason(&v), Some(DenyReason::EndpointNotAllowed));
    }

    // Behaviour: `*` is one segment, `/**` any rest, case and prefix tricks do not match.
    #[test]
    fn wildcards_and_tricks() {
        let r = rule(&[], None);
        let p = perms();
        let ok = id("c", &[]);
        let allow = |m: Method, path: &str| authorize(&r, Some(&p), &m, path, &ok).result.is_ok();
        assert!(allow(Method::GET, "/v2/analytics/reports/7/rows"));
        assert!(!allow(Method::GET, "/v2/analytics/reports/7/8/rows"));
        assert!(!allow(Method::GET, "/v2/analytics/reports/rows"));
        assert!(allow(Method::DELETE, "/v2/analytics/public/a/b/c"));
        assert!(allow(Method::GET, "/v2/analytics/public"));
        assert!(!allow(Method::GET, "/v2/analytics/publicx"));
        assert!(!allow(Method::GET, "/v2/analytics/METADATA"));
        assert!(!allow(Method::GET, "/v2/analytics/metadata.json"));
        assert!(!allow(Method::POST, "/v2/analytics/metadata"));
    }

    // Behaviour: scopes are whole words, never substrings.
    #[test]
    fn whole_word_scopes() {
        let r = rule(&["analytics.read"], None);
        let v = authorize(
            &r,
            None,
            &Method::GET,
            "/",
            &id("c", &["analytics.read.all", "analytics"]),
        );
        assert_eq!(reason(&v), Some(DenyReason::ScopeMissing));
    }

    // Behaviour: route claims are checked after the route's scopes; a permission's
    // claims after its scopes; a miss is claim_mismatch naming the claim only.
    #[test]
    fn claims_gates() {
        let claim = |n: &str, v: &str| ClaimRule {
            name: n.into(),
            values: vec![v.into()],
        };
        let mut r = rule(&["analytics.read"], None);
        r.claims = vec![claim("groups", "bi-admins")];
        let p = Permissions::new(vec![Permission::new("/x", None, vec![])
            .unwrap()
            .with_claims(vec![claim("dept", "finance")])]);
        let with = |scopes: &[&str], c: serde_json::Value| Identity {
            claims: crate::claims::TokenClaims(std::sync::Arc::new(c.as_object().unwrap().clone())),
            ..id("c", scopes)
        };
        let ok = with(
            &["analytics.read"],
            serde_json::json!({"groups": ["bi-admins"], "dept": "finance"}),
        );
        assert!(authorize(&r, Some(&p), &Method::GET, "/x", &ok)
            .result
            .is_ok());
        let no_scope = with(&[], serde_json::json!({}));
        let v = authorize(&r, Some(&p), &Method::GET, "/x", &no_scope);
        assert_eq!(reason(&v), Some(DenyReason::ScopeMissing));
        let v = authorize(
            &r,
            Some(&p),
            &Method::GET,
            "/x",
            &with(
                &["analytics.read"],
                serde_json::json!({"groups": ["other"]}),
            ),
        );
        assert_eq!(reason(&v), Some(DenyReason::ClaimMismatch));
        assert!(v.permission.is_none());
        let v = authorize(
            &r,
            Some(&p),
            &Method::GET,
            "/x",
            &with(
                &["analytics.read"],
                serde_json::json!({"groups": "bi-admins", "dept": "sales"}),
            ),
        );
        assert_eq!(reason(&v), Some(DenyReason::ClaimMismatch));
        assert_eq!(v.permission.map(|p| &*p.path), Some("/x"));
        let text = v.result.unwrap_err().to_string();
        assert!(
            text.contains("\"dept\"") && !text.contains("sales"),
            "{text}"
        );
    }

    #[test]
    fn bad_patterns() {
        assert!(Permission::new("/a/**/b", None, vec![]).is_err());
        assert!(Permission::new("/a/b*", None, vec![]).is_err());
        assert!(Permission::new("a", None, vec![]).is_err());
        // A dot segment could never match a normalised request path: refused, with why.
        for p in ["/a/./b", "/./x", "/x/."] {
            let e = Permission::new(p, None, vec![]).unwrap_err();
            assert!(e.contains("segments are not allowed"), "{p}: {e}");
        }
        for p in ["/a/../b", "/a/%2e/b", "/a/%2E%2E/b"] {
            assert!(Permission::new(p, None, vec![]).is_err(), "{p}");
        }
    }
}
