//! `upstreams[].auth` beyond the basics: `service_key` (a Cloud Foundry service key as
//! the source of `oauth2_client_credentials`' client and token endpoint) and the
//! identity-propagating types `token_exchange` (RFC 8693) and `jwt_bearer` (RFC 7523).
//! Compiled into `credentials::OAuth2Source` / `credentials::Grant`, which step 9 of the
//! request path uses.

use serde::{Deserialize, Deserializer};

use super::model::UpstreamAuthModel;
use super::validate::{self as v, Problems};
use crate::credentials::{service_key, Grant};
use crate::secret::Secret;

/// The auth types that fetch a token from a token endpoint.
pub const TOKEN_TYPES: [&str; 3] = ["oauth2_client_credentials", "token_exchange", "jwt_bearer"];

/// Keys that apply to `kind` besides the client's.
pub fn extra_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "token_exchange" => &["subject_token_type", "requested_token_type", "resource"],
        _ => &[],
    }
}

/// `service_key`: the key's JSON as text (what `${file:..}` / `${env:..}` give), or
/// written inline as a mapping. Kept as a [`Secret`]: `/admin/config` shows it as
/// `[redacted]`, and a wrongly typed value is never echoed.
pub fn deserialize_service_key<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Secret>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(Secret::new(s))),
        o @ serde_json::Value::Object(_) => Ok(Some(Secret::new(o.to_string()))),
        _ => Err(serde::de::Error::custom(
            "service_key must be the service key's JSON (e.g. \"${file:/etc/tollgate/key.json}\") or a mapping",
        )),
    }
}

/// The token endpoint and client: from `service_key`, or from `token_url`, `client_id`
/// and `client_secret` (never both).
pub fn client(
    a: &UpstreamAuthModel,
    path: &str,
    p: &mut Problems,
) -> (Option<url::Url>, String, Secret) {
    if let Some(key) = &a.service_key {
        for (k, given) in [
            ("token_url", a.token_url.is_some()),
            ("client_id", a.client_id.is_some()),
            ("client_secret", a.client_secret.is_some()),
        ] {
            if given {
                p.add(
                    format!("{path}.{k}"),
                    format!("give either service_key or {k} (the service key has it), not both"),
                );
            }
        }
        return match service_key::parse(key.expose()) {
            Ok(k) => {
                let url = v::http_url(p, &format!("{path}.service_key"), &k.token_url);
                (url, k.client_id, k.client_secret)
            }
            Err(e) => {
                p.add(format!("{path}.service_key"), e);
                (None, String::new(), Secret::default())
            }
        };
    }
    let url = match &a.token_url {
        Some(u) => v::http_url(p, &format!("{path}.token_url"), u),
        None => {
            p.add(
                path,
                "missing required key \"token_url\" (or a service_key that has it)",
            );
            None
        }
    };
    let client_id = a.client_id.clone().unwrap_or_default();
    if client_id.trim().is_empty() {
        p.add(format!("{path}.client_id"), "missing or empty client_id");
    }
    let secret = a.client_secret.clone().unwrap_or_default();
    if secret.is_empty() {
        p.add(
            format!("{path}.client_secret"),
            "missing or empty client_secret",
        );
    }
    (url, client_id, secret)
}

/// `urn:ietf:params:oauth:token-type:access_token`, also written `access_token`.
fn token_type(p: &mut Problems, path: String, t: &str) -> String {
    if t.contains(':') {
        return t.to_owned();
    }
    const SHORT: [&str; 6] = [
        "access_token",
        "refresh_token",
        "id_token",
        "jwt",
        "saml1",
        "saml2",
    ];
    if !SHORT.contains(&t) {
        p.add(
            path,
            format!("unknown token type \"{t}\": use a URI, or one of access_token, refresh_token, id_token, jwt, saml1, saml2 (RFC 8693 §3)"),
        );
    }
    format!("urn:ietf:params:oauth:token-type:{t}")
}

/// The grant of a token-fetching auth type.
pub fn grant(a: &UpstreamAuthModel, path: &str, p: &mut Problems) -> Grant {
    match a.kind.as_str() {
        "token_exchange" => {
            let resource = a.resource.clone();
            if let Some(r) = &resource {
                // RFC 8693 §2.1: an absolute URI, without a fragment.
                if url::Url::parse(r).map_or(true, |u| u.fragment().is_some()) {
                    p.add(
                        format!("{path}.resource"),
                        format!("resource \"{r}\" must be an absolute URI without a fragment"),
                    );
                }
            }
            Grant::TokenExchange {
                subject_token_type: token_type(
                    p,
                    format!("{path}.subject_token_type"),
                    a.subject_token_type.as_deref().unwrap_or("access_token"),
                ),
                requested_token_type: a
                    .requested_token_type
                    .as_deref()
                    .map(|t| token_type(p, format!("{path}.requested_token_type"), t)),
                resource,
            }
        }
        "jwt_bearer" => Grant::JwtBearer,
        _ => Grant::ClientCredentials,
    }
}

/// Fields tollgate sets itself in a token request of this grant.
pub fn reserved_params(g: &Grant) -> &'static [&'static str] {
    match g {
        Grant::ClientCredentials => &["grant_type", "client_id", "client_secret"],
        Grant::TokenExchange { .. } => &[
            "grant_type",
            "client_id",
            "client_secret",
            "subject_token",
            "subject_token_type",
            "requested_token_type",
            "resource",
        ],
        Grant::JwtBearer => &["grant_type", "client_id", "client_secret", "assertion"],
    }
}
