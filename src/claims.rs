//! Step 8 of the request path, the claims gate: `claims:` on a route's `auth` block and
//! on `permissions` entries require values of the verified token's claims (groups,
//! roles, tenant, ...). Decided on the [`Identity`](crate::identity::Identity)'s claims,
//! which come from the JWT payload, the introspection response or a browser session's
//! access token alike.
//!
//! The rule: every listed claim must match (all-of across claims); a claim matches when
//! the token's value is a string equal to one of the listed values, or an array with at
//! least one such string (any-of within a claim). Nothing is split: a space-separated
//! string is one value (scopes have their own gate, `scopes:`). A name is looked up as
//! written first (`https://example.com/groups` is one claim), then as a dotted path into
//! nested objects (`realm_access.roles`). Numbers, booleans and objects never match.
//!
//! A refusal names the claim, never its values (`claim_mismatch`); the values are shown
//! only by `tollgate explain` / `tollgate test` traces.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// One required claim: its name (or dotted path) and the values of which the token must
/// carry one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub name: Arc<str>,
    pub values: Vec<String>,
}

/// The verified token's claims, kept with the identity for the claims gate. `Debug`
/// prints the claim names only.
#[derive(Clone, Default)]
pub struct TokenClaims(pub Arc<Map<String, Value>>);

impl fmt::Debug for TokenClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Why a claim did not match (names only: safe for bodies and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Missing(Arc<str>),
    Value(Arc<str>),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing(n) => write!(f, "token has no claim \"{n}\" required here"),
            Mismatch::Value(n) => write!(f, "claim \"{n}\" does not have a value allowed here"),
        }
    }
}

/// A claim by name as written, else by dotted path through nested objects.
pub fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn matches(v: &Value, wanted: &[String]) -> bool {
    let one = |v: &Value| v.as_str().is_some_and(|s| wanted.iter().any(|w| w == s));
    match v {
        Value::Array(items) => items.iter().any(one),
        v => one(v),
    }
}

/// The first rule `claims` does not satisfy, if any.
pub fn check(rules: &[ClaimRule], claims: &Map<String, Value>) -> Result<(), Mismatch> {
    for r in rules {
        match lookup(claims, &r.name) {
            None => return Err(Mismatch::Missing(r.name.clone())),
            Some(v) if !matches(v, &r.values) => return Err(Mismatch::Value(r.name.clone())),
            Some(_) => {}
        }
    }
    Ok(())
}

/// One trace line per rule, with the values (for `explain` only): `claim groups: one of
/// [bi-admins] required, token has ["analysts"] -> mismatch`.
pub fn describe(rules: &[ClaimRule], claims: &Map<String, Value>) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            let (has, verdict) = match lookup(claims, &r.name) {
                None => ("nothing".to_owned(), "missing"),
                Some(v) if matches(v, &r.values) => (v.to_string(), "ok"),
                Some(v) => (v.to_string(), "mismatch"),
            };
            let mut has = has;
            if has.len() > 200 {
                let cut = (0..=200)
                    .rev()
                    .find(|i| has.is_char_boundary(*i))
                    .unwrap_or(0);
                has.truncate(cut);
                has.push('…');
            }
            format!(
                "claim {}: one of [{}] required, token has {has} -> {verdict}",
                r.name,
                r.values.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, values: &[&str]) -> ClaimRule {
        ClaimRule {
            name: name.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    // Behaviour: any-of within a claim, all-of across claims; strings and arrays; dotted
    // paths; names with dots are taken as written first; other types never match.
    #[test]
    fn claim_rules() {
        let c = claims(serde_json::json!({
            "groups": ["analysts", "bi-admins"],
            "tenant": "acme",
            "realm_access": {"roles": ["analyst"]},
            "https://ex.com/team": "red",
            "scope": "a b",
            "level": 3,
            "admin": true
        }));
        assert_eq!(check(&[rule("groups", &["bi-admins", "x"])], &c), Ok(()));
        assert_eq!(check(&[rule("tenant", &["acme"])], &c), Ok(()));
        assert_eq!(
            check(&[rule("realm_access.roles", &["analyst"])], &c),
            Ok(())
        );
        assert_eq!(check(&[rule("https://ex.com/team", &["red"])], &c), Ok(()));
        assert_eq!(
            check(
                &[rule("groups", &["bi-admins"]), rule("tenant", &["other"])],
                &c
            ),
            Err(Mismatch::Value("tenant".into()))
        );
        assert_eq!(
            check(&[rule("roles", &["x"])], &c),
            Err(Mismatch::Missing("roles".into()))
        );
        assert_eq!(
            check(&[rule("realm_access.groups", &["x"])], &c),
            Err(Mismatch::Missing("realm_access.groups".into()))
        );
        // Not split: "a b" is one value.
        assert!(check(&[rule("scope", &["a"])], &c).is_err());
        assert!(check(&[rule("level", &["3"])], &c).is_err());
        assert!(check(&[rule("admin", &["true"])], &c).is_err());
        assert!(check(&[rule("realm_access", &["analyst"])], &c).is_err());
        // Substrings never match.
        assert!(check(&[rule("tenant", &["acm"])], &c).is_err());
    }

    // Behaviour: the refusal text names the claim, never a value; describe shows values.
    #[test]
    fn refusal_names_only() {
        let c = claims(serde_json::json!({"groups": ["secret-group"]}));
        let e = check(&[rule("groups", &["bi-admins"])], &c).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("\"groups\""), "{text}");
        assert!(
            !text.contains("secret-group") && !text.contains("bi-admins"),
            "{text}"
        );
        let lines = describe(&[rule("groups", &["bi-admins"])], &c);
        assert_eq!(
            lines,
            vec!["claim groups: one of [bi-admins] required, token has [\"secret-group\"] -> mismatch"]
        );
        let d = format!("{:?}", TokenClaims(Arc::new(c)));
        assert!(!d.contains("secret-group"), "{d}");
    }
}
