//! `server.admin_auth`: its model and compile step (model + problems -> the runtime
//! [`AdminAuth`]). Not on the request path; the admin listener checks it before its
//! handlers (see `crate::admin_auth`).
//!
//! ```yaml
//! admin_auth: {type: bearer, issuers: [corp], scopes: [tollgate.admin]}   # `type` optional
//! admin_auth: {type: basic, username: ops, password_hash: "$argon2id$..."}  # tollgate hash-secret
//! ```
//!
//! A block without `type` is a Bearer rule, checked like a route's `auth` block (the
//! shared `auth.rs`), so configs written before `type: basic` existed mean what they
//! meant. The password hash is a [`Secret`]: no problem report, log line or
//! `GET /admin/config` ever shows it.

use super::auth::{self, AuthBlockModel};
use super::ratelimit::FailedAuthLimitModel;
use super::refs::Refs;
use super::validate::{At, Problems};
use super::yaml::{section, List};
use crate::admin_auth::{AdminAuth, BasicAuth};
use crate::secret::Secret;

section! {
    /// `server.admin_auth`: one flat block for both types, so that a key of the other
    /// type is reported by name rather than as unknown.
    pub struct AdminAuthModel {
        /// `bearer` (the default: a token like a route's) or `basic` (username and password hash).
        "type" => pub kind: Option<String> as choice(&["bearer", "basic"]),
        "issuers" => pub issuers: Option<List<String>> as restricting(),
        "scopes" => pub scopes: Option<List<String>> as restricting(),
        "clients" => pub clients: Option<List<String>> as restricting(),
        /// Not supported: browser sign-in is not for the admin API.
        "login" => pub login: Option<bool>,
        "username" => pub username: Option<String>,
        /// An argon2 hash of the password, made with `tollgate hash-secret`.
        "password_hash" => pub password_hash: Option<Secret>,
        /// Failed sign-ins allowed per client address before it is refused 429 without
        /// a password check (default `{limit: 10, per: 5m}`).
        "failed_auth_limit" => pub failed_auth_limit: Option<FailedAuthLimitModel>,
    }
}

const AT: &str = "server.admin_auth";

/// The keys each type takes (for "is for `type: ...`" messages).
const BEARER_KEYS: &[&str] = &["issuers", "scopes", "clients"];
const BASIC_KEYS: &[&str] = &["username", "password_hash", "failed_auth_limit"];

pub fn compile(m: &AdminAuthModel, refs: &Refs, p: &mut Problems) -> Option<AdminAuth> {
    match m.kind.as_deref().map(str::trim).unwrap_or("bearer") {
        "bearer" => {
            other_type_keys(m, BASIC_KEYS, "basic", "issuers, scopes and clients", p);
            let block = AuthBlockModel {
                issuers: m.issuers.clone(),
                scopes: m.scopes.clone(),
                clients: m.clients.clone(),
                login: None,
                claims: None,
            };
            Some(AdminAuth::Bearer(auth::compile(
                &block,
                refs,
                At::Path(AT),
                p,
            )))
        }
        "basic" => {
            other_type_keys(
                m,
                BEARER_KEYS,
                "bearer",
                "username, password_hash and failed_auth_limit",
                p,
            );
            let username = basic_username(m.username.as_deref(), p);
            let hash = password_hash(m.password_hash.as_ref(), p);
            let failed = super::ratelimit::admin_failed_auth_limit(
                m.failed_auth_limit.as_ref(),
                refs.limits,
                p,
            );
            Some(AdminAuth::Basic(Box::new(BasicAuth::new(
                username?, hash?, failed?,
            ))))
        }
        other => {
            let hint = super::validate::suggest(other, &["bearer", "basic"])
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            p.add(
                format!("{AT}.type"),
                format!("unknown admin_auth type \"{other}\"{hint}: use `bearer` or `basic`"),
            );
            None
        }
    }
}

/// Keys given that belong to the other type: each is reported where it is written.
fn other_type_keys(
    m: &AdminAuthModel,
    keys: &[&str],
    their_type: &str,
    ours: &str,
    p: &mut Problems,
) {
    let this_type = if their_type == "basic" {
        "Bearer"
    } else {
        "Basic"
    };
    for &k in keys {
        let given = match k {
            "issuers" => m.issuers.is_some(),
            "scopes" => m.scopes.is_some(),
            "clients" => m.clients.is_some(),
            "username" => m.username.is_some(),
            "password_hash" => m.password_hash.is_some(),
            "failed_auth_limit" => m.failed_auth_limit.is_some(),
            _ => false,
        };
        if given {
            p.add(
                format!("{AT}.{k}"),
                format!("{k} is for `type: {their_type}`; a {this_type} admin_auth takes {ours}"),
            );
        }
    }
}

fn basic_username(u: Option<&str>, p: &mut Problems) -> Option<String> {
    match u.map(str::trim) {
        Some(u) if !u.is_empty() && !u.contains(':') => Some(u.to_owned()),
        Some(_) => {
            p.add(
                format!("{AT}.username"),
                "a non-empty user name without `:` is required",
            );
            None
        }
        None => {
            p.missing(AT, "username", " (required for `type: basic`)");
            None
        }
    }
}

/// An argon2 PHC string; never the password itself, and never shown in a message.
fn password_hash(h: Option<&Secret>, p: &mut Problems) -> Option<Secret> {
    let key = format!("{AT}.password_hash");
    match h {
        Some(h) => match argon2::password_hash::PasswordHash::new(h.expose()) {
            Ok(ph) if ph.algorithm.as_str().starts_with("argon2") => Some(h.clone()),
            _ => {
                p.add(
                    key,
                    "not an argon2 PHC string (make one with `tollgate hash-secret`; never write the password itself)",
                );
                None
            }
        },
        // Present but unreadable (e.g. an unset `${env:..}`): `missing` leaves it to
        // the problem already reported there.
        None => {
            p.missing(
                AT,
                "password_hash",
                " (required for `type: basic`: an argon2 hash from `tollgate hash-secret`)",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{load_str, Registry};

    /// Every problem line (`g.yaml:4:15 server.admin_auth.type: ...`), or none.
    fn problems(yaml: &str) -> Vec<String> {
        match load_str(yaml, "g.yaml", Path::new("."), &Registry::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.lines(),
        }
    }

    fn server(admin_auth: &str) -> String {
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:0\"\n  admin_auth: {admin_auth}\n"
        )
    }

    // Behaviour: a Basic block with a real hash loads; a block without `type` stays a
    // Bearer rule (configs from before `type: basic` keep their meaning).
    #[test]
    fn basic_and_untyped_blocks_load() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$Nt6mpn2Hb/a/MmYXfN1GGi5V5u2QqB6mnEcbpQ4vMAY";
        let yaml = server(&format!(
            "{{type: basic, username: ops, password_hash: \"{hash}\"}}"
        ));
        assert!(problems(&yaml).is_empty(), "{:?}", problems(&yaml));
        let yaml = format!(
            "{}issuers:\n  - name: corp\n    issuer: https://idp.example\n    jwks_uri: https://idp.example/jwks\n    audiences: [api]\n",
            server("{scopes: [tollgate.admin]}")
        );
        assert!(problems(&yaml).is_empty(), "{:?}", problems(&yaml));
    }

    // Behaviour: every problem of the block is reported at once, each located at its
    // key, and no message shows the password hash (or what stood in its place).
    #[test]
    fn problems_are_located_and_never_echo_the_hash() {
        let found = problems(&server(
            "{type: basic, username: \"a:b\", password_hash: hunter2-not-a-hash, scopes: [x]}",
        ));
        let text = found.join("\n");
        assert!(
            text.contains("server.admin_auth.username: a non-empty user name"),
            "{text}"
        );
        assert!(
            text.contains("server.admin_auth.password_hash: not an argon2 PHC string"),
            "{text}"
        );
        assert!(
            text.contains("server.admin_auth.scopes: scopes is for `type: bearer`"),
            "{text}"
        );
        assert!(
            !text.contains("hunter2"),
            "the hash is never echoed: {text}"
        );
        let found = problems(&server("{type: basic, password_hash: 12345}")).join("\n");
        assert!(!found.contains("12345"), "{found}");
        assert!(
            found.contains("server.admin_auth: missing required key \"username\""),
            "{found}"
        );
        let found = problems(&server("{type: basci}")).join("\n");
        assert!(
            found.contains("server.admin_auth.type: unknown admin_auth type \"basci\" (did you mean \"basic\"?)"),
            "{found}"
        );
        let found = problems(&server("{type: basic, username: ops, passwrod_hash: x}")).join("\n");
        assert!(
            found.contains("server.admin_auth.passwrod_hash: unknown key \"passwrod_hash\" (did you mean \"password_hash\"?)"),
            "{found}"
        );
        // The misspelling is the one root cause: no second "missing" line for it.
        assert_eq!(found.lines().count(), 1, "{found}");
    }

    // Behaviour: `failed_auth_limit` is checked like the token service's (located
    // problems), belongs to `type: basic`, and its name prefix is reserved.
    #[test]
    fn failed_auth_limit_is_checked() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$Nt6mpn2Hb/a/MmYXfN1GGi5V5u2QqB6mnEcbpQ4vMAY";
        let ok = server(&format!(
            "{{type: basic, username: ops, password_hash: \"{hash}\", failed_auth_limit: {{limit: 3, per: 10m}}}}"
        ));
        assert!(problems(&ok).is_empty(), "{:?}", problems(&ok));
        let found = problems(&server(&format!(
            "{{type: basic, username: ops, password_hash: \"{hash}\", failed_auth_limit: {{limit: 0, per: 2h30s, store: shared}}}}"
        )))
        .join("\n");
        for want in [
            "server.admin_auth.failed_auth_limit.limit: limit must be between 1 and",
            "server.admin_auth.failed_auth_limit.store: unknown store \"shared\"",
        ] {
            assert!(found.contains(want), "{want} in {found}");
        }
        let found = problems(&server("{scopes: [x], failed_auth_limit: {limit: 3}}")).join("\n");
        assert!(
            found.contains(
                "server.admin_auth.failed_auth_limit: failed_auth_limit is for `type: basic`"
            ),
            "{found}"
        );
        let found =
            problems(&format!(
            "{}rate_limits:\n  - name: admin_auth.mine\n    key: ip\n    limit: 1\n    per: 1m\n",
            server(&format!("{{type: basic, username: ops, password_hash: \"{hash}\"}}"))
        ))
            .join("\n");
        assert!(
            found.contains("rate_limits[0].name: names starting with \"admin_auth.\" are reserved"),
            "{found}"
        );
    }
}
