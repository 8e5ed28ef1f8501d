//! `claims:` on a route's `auth` block and on `permissions` entries: the model as
//! written (a map from claim name or dotted path to a value or a list of values), read
//! by the collecting reader (`yaml/`), and its compile step into [`ClaimRule`]s, every
//! problem located at its key path.
//!
//! ```yaml
//! auth:
//!   claims: {groups: [bi-admins], "realm_access.roles": [analyst], tenant: "${env:TENANT}"}
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use super::validate::{At, Problems};
use super::yaml::{Cx, List, Node, Schema};
use crate::claims::ClaimRule;

/// The `claims` key as written: claim name -> value(s). Claim names are free-form, so
/// this is a plain mapping (repeated names are reported by the reader).
pub type ClaimsModel = BTreeMap<String, ClaimValuesModel>;

/// One claim's allowed values: a string, or a list of strings.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ClaimValuesModel {
    One(String),
    Many(List<ClaimText>),
}

/// One value of a list of claim values.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ClaimText(pub String);

/// What a value that is not a string is, in the problem's words.
fn not_a_string(kind: &str) -> String {
    format!("claim values are strings (or a list of strings), not {kind}; quote it, e.g. \"42\" (a token's claim matches only a string value)")
}

impl Schema for ClaimValuesModel {
    fn schema() -> serde_json::Value {
        serde_json::json!({
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "The value the claim must have, or a list of values it must have one of (a list claim: contain one of).",
        })
    }
}

impl Node for ClaimValuesModel {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(ValuesVisitor { cx, in_list: false })
    }
}

impl Node for ClaimText {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        let one = d.deserialize_any(ValuesVisitor { cx, in_list: true })?;
        Ok(one.and_then(|v| match v {
            ClaimValuesModel::One(s) => Some(ClaimText(s)),
            ClaimValuesModel::Many(_) => None, // refused in visit_seq
        }))
    }
}

/// Reads one claim's value(s): a string, or (outside a list) a list of strings. Every
/// other kind is a located problem: `groups:` with nothing after it must not quietly
/// drop the requirement, and a number or boolean would never match a token's string.
struct ValuesVisitor<'c, 'a> {
    cx: &'c mut Cx<'a>,
    /// Reading an item of a list: a nested list is refused.
    in_list: bool,
}

impl ValuesVisitor<'_, '_> {
    fn wrong(self, kind: &str) -> Option<ClaimValuesModel> {
        self.cx.error(not_a_string(kind));
        None
    }
}

impl<'de> Visitor<'de> for ValuesVisitor<'_, '_> {
    type Value = Option<ClaimValuesModel>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if self.in_list {
            "a string"
        } else {
            "a string or a list of strings"
        })
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self
            .cx
            .text(s.into())
            .map(|(s, _)| ClaimValuesModel::One(s.into_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if self.in_list {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(self.wrong("a list"));
        }
        let list = List::<ClaimText>::read(de::value::SeqAccessDeserializer::new(seq), self.cx)?;
        Ok(list.map(ClaimValuesModel::Many))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.wrong("nothing"))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.wrong("nothing"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.wrong("a boolean"))
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

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.wrong("a map"))
    }
}

/// `claims` at `path` (e.g. `routes[0].auth.claims`) -> rules; problems added to `p`.
/// Values of the wrong kind were reported while reading; this checks names and values.
pub fn compile(m: Option<&ClaimsModel>, path: At, p: &mut Problems) -> Vec<ClaimRule> {
    let Some(m) = m else {
        return Vec::new();
    };
    if m.is_empty() {
        p.add(
            path.to_string(),
            "empty claims map: leave the key out to require no claims",
        );
    }
    let mut rules = Vec::with_capacity(m.len());
    for (name, v) in m {
        let at = path.key(name);
        if let Err(e) = check_name(name) {
            p.at_key(at.to_string(), e);
            continue;
        }
        let values: Vec<String> = match v {
            ClaimValuesModel::One(s) => {
                if s.is_empty() {
                    p.add(at.to_string(), "empty value");
                }
                vec![s.clone()]
            }
            ClaimValuesModel::Many(items) => {
                if items.is_empty() {
                    p.add(
                        at.to_string(),
                        "empty list would deny everyone: list at least one value",
                    );
                }
                for (i, s) in items.iter() {
                    if s.0.is_empty() {
                        p.add(at.index(i).to_string(), "empty value");
                    }
                }
                items.values().map(|s| s.0.clone()).collect()
            }
        };
        rules.push(ClaimRule {
            name: name.as_str().into(),
            values,
        });
    }
    rules
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
    use std::path::Path;

    use crate::config::{load_str, Registry};
    use crate::runtime::Runtime;

    /// A config whose one route has `auth: {claims: <claims>}` and one permission with
    /// `claims: <perm>`.
    fn load(claims: &str, perm: &str) -> Result<Runtime, Vec<String>> {
        let yaml = format!(
            "server:\n  listen: \"127.0.0.1:0\"\ntoken_service:\n  issuer: \"https://gw.test\"\n  audience: \"https://api.test\"\n  clients:\n    - id: c\n      secret: s\n      scopes: [a]\nupstreams:\n  - name: u\n    url: \"http://127.0.0.1:9\"\nroutes:\n  - name: r\n    path_prefix: /api\n    upstream: u\n    auth:\n      claims: {claims}\n    permissions:\n      - path: /api/x\n        methods: [GET]\n        claims: {perm}\n"
        );
        load_str(&yaml, "g.yaml", Path::new("."), &Registry::default()).map_err(|e| e.lines())
    }

    // Behaviour: strings and lists of strings compile into the route's and the
    // permission's rules.
    #[test]
    fn compiles() {
        let rt = load(
            "{groups: [a, b], \"realm_access.roles\": analyst}",
            "{dept: finance}",
        )
        .unwrap();
        let route = &rt.routes[0];
        let crate::policy::RouteAuth::Bearer(rule) = &route.auth else {
            panic!("a Bearer route");
        };
        assert_eq!(rule.claims.len(), 2);
        assert_eq!(&*rule.claims[0].name, "groups");
        assert_eq!(rule.claims[0].values, vec!["a", "b"]);
        assert_eq!(&*rule.claims[1].name, "realm_access.roles");
        assert_eq!(rule.claims[1].values, vec!["analyst"]);
        let perms = route.permissions.as_ref().unwrap();
        let entry = perms.entry("/api/x").unwrap();
        assert_eq!(&*entry.claims[0].name, "dept");
    }

    // Behaviour: everything but strings and lists of strings, and bad names, are
    // problems located at the claim's key path (file:line:col), all in one run.
    #[test]
    fn problems_are_located() {
        let lines = load(
            "{groups: [], level: 3, admin: [true, x], \"a..b\": x, \"\": y, t: \"\", o: {a: b}, n: , l: [x, \"\"], groups: [c], q: [[a]]}",
            "[a]",
        )
        .err()
        .unwrap();
        let text = lines.join("\n");
        for want in [
            "g.yaml:18:24 routes[0].auth.claims.groups: empty list would deny everyone",
            "g.yaml:18:35 routes[0].auth.claims.level: claim values are strings (or a list of strings), not a number",
            "g.yaml:18:46 routes[0].auth.claims.admin[0]: claim values are strings (or a list of strings), not a boolean",
            "routes[0].auth.claims.a..b: claim path \"a..b\" has an empty segment",
            "routes[0].auth.claims.: empty claim name",
            "routes[0].auth.claims.t: empty value",
            "routes[0].auth.claims.o: claim values are strings (or a list of strings), not a map",
            "routes[0].auth.claims.n: claim values are strings (or a list of strings), not nothing",
            "routes[0].auth.claims.l[1]: empty value",
            "routes[0].auth.claims.groups: \"groups\" is given twice",
            "routes[0].auth.claims.q[0]: claim values are strings (or a list of strings), not a list",
            "g.yaml:22:17 routes[0].permissions[0].claims: expected a mapping",
        ] {
            assert!(text.contains(want), "{want}\n---\n{text}");
        }
        let lines = load("{}", "{d: x}").err().unwrap();
        assert_eq!(
            lines,
            vec!["g.yaml:18:15 routes[0].auth.claims: empty claims map: leave the key out to require no claims"]
        );
    }
}
