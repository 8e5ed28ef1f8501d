//! `claims:` on a route's `auth` block and on `permissions` entries: the model as
//! written (a map from claim name or dotted path to a value or a list of values) and its
//! compile step into [`ClaimRule`]s, every problem located.
//!
//! ```yaml
//! auth:
//!   claims: {groups: [bi-admins], "realm_access.roles": [analyst], tenant: "${env:TENANT}"}
//! ```

use serde_yaml::{Mapping, Value};

use super::validate::Problems;
use crate::claims::ClaimRule;

/// The `claims` key as written.
pub type ClaimsModel = Mapping;

/// `claims` at `path` (e.g. `routes[0].auth.claims`) -> rules; problems added to `p`.
pub fn compile(m: Option<&ClaimsModel>, path: &str, p: &mut Problems) -> Vec<ClaimRule> {
    let Some(m) = m else {
        return Vec::new();
    };
    if m.is_empty() {
        p.add(
            path,
            "empty claims map: leave the key out to require no claims",
        );
    }
    let mut rules = Vec::new();
    for (k, v) in m {
        let Some(name) = k.as_str() else {
            p.add(path, "claim names must be strings");
            continue;
        };
        let at = format!("{path}.{name}");
        if let Err(e) = check_name(name) {
            p.add(&at, e);
            continue;
        }
        let values: Vec<String> = match v {
            Value::String(s) => vec![s.clone()],
            Value::Sequence(items) => {
                if items.is_empty() {
                    p.add(
                        &at,
                        "empty list would deny everyone: list at least one value",
                    );
                }
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) => out.push(s.to_owned()),
                        None => p.add(format!("{at}[{i}]"), not_a_string(item)),
                    }
                }
                out
            }
            other => {
                p.add(&at, not_a_string(other));
                continue;
            }
        };
        for (i, s) in values.iter().enumerate() {
            if s.is_empty() {
                let at = match v {
                    Value::Sequence(_) => format!("{at}[{i}]"),
                    _ => at.clone(),
                };
                p.add(at, "empty value");
            }
        }
        rules.push(ClaimRule {
            name: name.into(),
            values,
        });
    }
    rules
}

fn not_a_string(v: &Value) -> String {
    let kind = match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
        Value::String(_) => "a string",
    };
    format!("claim values are strings (or a list of strings), not {kind}; quote it, e.g. \"42\" (a token's claim matches only a string value)")
}

/// A claim name, or a dotted path of names: no empty segment, no spaces or controls.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty claim name".into());
    }
    if name.len() > 256 {
        return Err("claim name longer than 256 characters".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "claim name \"{}\" contains spaces or control characters",
            name.escape_debug()
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Err(format!(
            "claim path \"{name}\" has an empty segment: write names joined by single dots, like realm_access.roles"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> (Vec<ClaimRule>, Vec<String>) {
        let m: Mapping = serde_yaml::from_str(yaml).unwrap();
        let mut p = Problems::default();
        let r = compile(Some(&m), "routes[0].auth.claims", &mut p);
        (
            r,
            p.0.into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect(),
        )
    }

    // Behaviour: strings and lists of strings compile; everything else is a problem at
    // the claim's key path.
    #[test]
    fn compiles_and_validates() {
        let (r, p) = run("{groups: [a, b], \"realm_access.roles\": analyst}");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(r.len(), 2);
        assert_eq!(&*r[1].name, "realm_access.roles");
        assert_eq!(r[1].values, vec!["analyst"]);
        let (_, p) = run(
            "{groups: [], level: 3, admin: [true, x], \"a..b\": x, \"\": y, t: \"\", o: {a: b}}",
        );
        let text = p.join("\n");
        assert!(
            text.contains("routes[0].auth.claims.groups: empty list"),
            "{text}"
        );
        assert!(text.contains("routes[0].auth.claims.level: claim values are strings (or a list of strings), not a number"), "{text}");
        assert!(
            text.contains("routes[0].auth.claims.admin[0]: claim values are strings"),
            "{text}"
        );
        assert!(
            text.contains("routes[0].auth.claims.a..b: claim path \"a..b\" has an empty segment"),
            "{text}"
        );
        assert!(
            text.contains("routes[0].auth.claims.: empty claim name"),
            "{text}"
        );
        assert!(
            text.contains("routes[0].auth.claims.t: empty value"),
            "{text}"
        );
        assert!(text.contains("routes[0].auth.claims.o: claim values are strings (or a list of strings), not a map"), "{text}");
        let (_, p) = run("{}");
        assert_eq!(
            p,
            vec!["routes[0].auth.claims: empty claims map: leave the key out to require no claims"]
        );
    }
}
