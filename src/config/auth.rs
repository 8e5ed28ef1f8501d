//! The Bearer rule block shared by `routes[].auth` and `server.admin_auth`: which
//! issuers, scopes, clients and claims a token must match (model, checks, compile to
//! [`AuthRule`], which `policy.rs` applies to every request of the route).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use super::claims::{self, ClaimsModel};
use super::refs::Refs;
use super::validate::{self as v, At, Problems};
use super::yaml::{read_section, section, Cx, List, Node, Schema};
use crate::policy::AuthRule;

section! {
    /// `issuers`, `scopes`, `clients` a token must match.
    pub struct AuthBlockModel {
        /// The `issuers[].name`s (or `local`) whose tokens are accepted.
        "issuers" => pub issuers: Option<List<String>> as restricting(),
        /// Scopes a token needs (all of them).
        "scopes" => pub scopes: Option<List<String>> as restricting(),
        /// Client ids accepted (default any).
        "clients" => pub clients: Option<List<String>> as restricting(),
        /// Accept a browser session (`login:`) as well as a Bearer token (routes only).
        "login" => pub login: Option<bool>,
        /// Claim values the token must carry: claim name (or dotted path) -> value or list
        /// of values.
        "claims" => pub claims: Option<ClaimsModel> as restricting(),
    }
}

/// A route's `auth`: `none`, or a block.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RouteAuthModel {
    Keyword(String),
    Block(AuthBlockModel),
}

const AUTH_EXPECTED: &str = "`none` or a block with issuers / scopes / clients";

impl Schema for RouteAuthModel {
    fn schema() -> serde_json::Value {
        serde_json::json!({
            "anyOf": [
                {"enum": ["none"], "description": "A public route: no token is checked."},
                AuthBlockModel::schema(),
            ],
            "description": "`none` for a public route, or the issuers, scopes, clients and claims a Bearer token must match.",
        })
    }
}

impl Node for RouteAuthModel {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(AuthVisitor(cx))
    }
}

struct AuthVisitor<'c, 'a>(&'c mut Cx<'a>);

impl AuthVisitor<'_, '_> {
    fn wrong(self, found: &str) -> Option<RouteAuthModel> {
        self.0.wrong(AUTH_EXPECTED, found);
        None
    }
}

impl<'de> Visitor<'de> for AuthVisitor<'_, '_> {
    type Value = Option<RouteAuthModel>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(AUTH_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .text(s.into())
            .map(|(s, _)| RouteAuthModel::Keyword(s.into_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let block =
            read_section::<AuthBlockModel, _>(de::value::MapAccessDeserializer::new(map), self.0)?;
        Ok(block.map(RouteAuthModel::Block))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(self.wrong(&format!("{b}")))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(self.wrong(&format!("the number {n}")))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(self.wrong(&format!("the number {n}")))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(self.wrong(&format!("the number {n}")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.wrong("a list"))
    }
}

/// A block -> the rule `policy.rs` applies. `path` is where the block is.
pub fn compile(b: &AuthBlockModel, refs: &Refs, path: At, p: &mut Problems) -> AuthRule {
    let issuers = match &b.issuers {
        None => {
            if refs.issuer_names.is_empty() && refs.issuers_complete && !refs.has_token_service {
                p.add(path.to_string(), "no issuers are configured, so no token could ever pass: add an `issuers` entry or use `auth: none`");
            }
            (0..refs.issuers.len()).collect()
        }
        Some(list) => issuer_indexes(list, refs, path, p),
    };
    let scopes = b.scopes.as_ref().map(List::to_vec).unwrap_or_default();
    let spath = path.key("scopes");
    for (j, s) in scopes.iter().enumerate() {
        v::token_word(p, spath.index(j), s, "scope");
    }
    let clients = b.clients.as_ref().map(|c| {
        let cpath = path.key("clients");
        if c.is_empty() {
            p.add(
                cpath.to_string(),
                "empty clients list would deny everyone: leave the key out to allow any client",
            );
        }
        for (j, s) in c.iter() {
            v::token_word(p, cpath.index(j), s, "client id");
        }
        c.to_vec()
    });
    let claims = claims::compile(b.claims.as_ref(), path.key("claims"), p);
    AuthRule {
        issuers,
        scopes,
        clients,
        claims,
    }
}

/// The issuers a block names, as indexes into the runtime's issuer list. A name the
/// file declares but that has a problem of its own is not "unknown" (that problem is
/// the one to fix).
fn issuer_indexes(list: &List<String>, refs: &Refs, path: At, p: &mut Problems) -> Vec<usize> {
    let ipath = path.key("issuers");
    if list.is_empty() {
        p.add(
            ipath.to_string(),
            "empty issuers list: leave the key out to accept every issuer",
        );
    }
    let mut idx = Vec::with_capacity(list.len());
    for (j, name) in list.iter() {
        if let Some(k) = refs.issuers.iter().position(|i| &*i.name == name.as_str()) {
            idx.push(k);
        } else if !refs.issuer_declared(name) {
            p.add(ipath.index(j).to_string(), unknown_issuer(name, refs));
        }
    }
    idx
}

fn unknown_issuer(name: &str, refs: &Refs) -> String {
    let mut known: Vec<&str> = refs.issuer_names.clone();
    if refs.has_token_service {
        known.push("local");
    }
    let hint = v::suggest(name, &known)
        .map(|s| format!(" (did you mean \"{s}\"?)"))
        .unwrap_or_default();
    let extra = if name == "local" {
        " (`local` needs a token_service block)"
    } else {
        ""
    };
    format!("unknown issuer \"{name}\"{hint}{extra}")
}
