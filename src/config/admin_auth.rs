//! `server.admin_auth`: its model and compile step (model + problems -> the runtime
//! [`AdminAuth`]). Not on the request path; the admin listener checks it (see
//! `crate::admin_auth`).
//!
//! ```yaml
//! admin_auth: {type: bearer, issuers: [corp], scopes: [tollgate.admin]}   # `type` optional
//! admin_auth: {type: basic, username: ops, password_hash: "$argon2id$..."}  # tollgate hash-secret
//! ```

use serde::{Deserialize, Serialize};

use super::validate::Problems;
use crate::admin_auth::{AdminAuth, BasicAuth};
use crate::policy::AuthRule;
use crate::secret::Secret;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AdminAuthModel {
    /// `bearer` (the default) or `basic`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub issuers: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub clients: Option<Vec<String>>,
    /// Refused with a clear message (browser sign-in is not for the admin API).
    pub login: Option<bool>,
    pub username: Option<String>,
    pub password_hash: Option<Secret>,
}

/// `bearer_rule` compiles the Bearer rule (issuers, scopes, clients) the way a route's
/// `auth` block is compiled (`compile.rs` owns that, and passes it in).
pub fn compile(
    m: &AdminAuthModel,
    p: &mut Problems,
    bearer_rule: impl FnOnce(&mut Problems) -> AuthRule,
) -> Option<AdminAuth> {
    const AT: &str = "server.admin_auth";
    match m.kind.as_deref().unwrap_or("bearer") {
        "bearer" => {
            for (k, set) in [
                ("username", m.username.is_some()),
                ("password_hash", m.password_hash.is_some()),
            ] {
                if set {
                    p.add(
                        format!("{AT}.{k}"),
                        format!("{k} is for `type: basic`; a Bearer admin_auth takes issuers, scopes and clients"),
                    );
                }
            }
            Some(AdminAuth::Bearer(bearer_rule(p)))
        }
        "basic" => {
            for (k, set) in [
                ("issuers", m.issuers.is_some()),
                ("scopes", m.scopes.is_some()),
                ("clients", m.clients.is_some()),
            ] {
                if set {
                    p.add(
                        format!("{AT}.{k}"),
                        format!("{k} is for `type: bearer`; a Basic admin_auth takes username and password_hash"),
                    );
                }
            }
            let username = match m.username.as_deref().map(str::trim) {
                Some(u) if !u.is_empty() && !u.contains(':') => Some(u.to_owned()),
                Some(_) => {
                    p.add(
                        format!("{AT}.username"),
                        "a non-empty user name without `:` is required",
                    );
                    None
                }
                None => {
                    p.add(format!("{AT}.username"), "required for `type: basic`");
                    None
                }
            };
            let hash = match &m.password_hash {
                Some(h) => match argon2::password_hash::PasswordHash::new(h.expose()) {
                    Ok(ph) if ph.algorithm.as_str().starts_with("argon2") => Some(h.clone()),
                    _ => {
                        p.add(
                            format!("{AT}.password_hash"),
                            "not an argon2 PHC string (make one with `tollgate hash-secret`)",
                        );
                        None
                    }
                },
                None => {
                    p.add(
                        format!("{AT}.password_hash"),
                        "required for `type: basic` (an argon2 hash from `tollgate hash-secret`; never the password itself)",
                    );
                    None
                }
            };
            Some(AdminAuth::Basic(BasicAuth::new(username?, hash?)))
        }
        other => {
            p.add(
                format!("{AT}.type"),
                format!("unknown admin_auth type \"{other}\": use `bearer` or `basic`"),
            );
            None
        }
    }
}
