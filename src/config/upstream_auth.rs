//! `upstreams[].auth`: the credentials tollgate adds to forwarded requests — Basic, or
//! an OAuth2 token from a token endpoint, whose client may come from `service_key` (a Cloud Foundry service key as
//! the source of `oauth2_client_credentials`' client and token endpoint) and the
//! identity-propagating types `token_exchange` (RFC 8693) and `jwt_bearer` (RFC 7523).
//! Compiled into `credentials::OAuth2Source` / `credentials::Grant`, which step 9 of the
//! request path uses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use serde::{Deserialize, Deserializer, Serialize};

use super::issuers::DEFAULT_FETCH_TIMEOUT;
use super::refs::fingerprint;
use super::registry::Registry;
use super::validate::{self as v, Problems};
use super::yaml::{section, Cx, Node, Schema};
use crate::credentials::{
    service_key, ClientAuth, Grant, OAuth2Source, RequestFormat, UpstreamAuth,
};
use crate::secret::Secret;

section! {
    /// One block for every `type`, so that every key is read; [`compile_auth`] says
    /// which keys belong to which type.
    pub struct UpstreamAuthModel {
        /// How credentials are made: `basic` (username/password), `oauth2_client_credentials`,
        /// `token_exchange` (RFC 8693, on behalf of the caller) or `jwt_bearer` (RFC 7523).
        "type" => pub kind: Option<String> as required().schema(one_of(&["basic", "oauth2_client_credentials", "token_exchange", "jwt_bearer"])),
        /// The token endpoint.
        "token_url" => pub token_url: Option<String>,
        "client_id" => pub client_id: Option<String>,
        "client_secret" => pub client_secret: Option<Secret>,
        "scope" => pub scope: Option<String>,
        "audience" => pub audience: Option<String>,
        /// How the client authenticates at the token endpoint (default basic).
        "client_auth" => pub client_auth: Option<String> as choice(&["basic", "body"]),
        /// The token request's body (default form).
        "request_format" => pub request_format: Option<String> as choice(&["form", "json"]),
        /// More parameters for the token request.
        "extra_params" => pub extra_params: Option<BTreeMap<String, Secret>>,
        "username" => pub username: Option<String>,
        "password" => pub password: Option<Secret>,
        /// A Cloud Foundry service key instead of token_url / client_id / client_secret.
        "service_key" => pub service_key: Option<ServiceKey>,
        /// token_exchange (RFC 8693).
        "subject_token_type" => pub subject_token_type: Option<String>,
        "requested_token_type" => pub requested_token_type: Option<String>,
        "resource" => pub resource: Option<String>,
    }
}

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
/// written inline as a mapping (its text values substituted too). Kept as a [`Secret`]:
/// `/admin/config` shows it as `[redacted]`, and a wrongly typed value is never echoed.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct ServiceKey(pub Secret);

const SERVICE_KEY_EXPECTED: &str = "service_key must be the service key's JSON (e.g. \"${file:/etc/tollgate/key.json}\") or a mapping";

impl Schema for ServiceKey {
    fn schema() -> serde_json::Value {
        serde_json::json!({
            "anyOf": [{"type": "string"}, {"type": "object"}],
            "description": "A Cloud Foundry (SAP BTP) service key: its JSON as text, e.g. \"${file:/etc/tollgate/key.json}\", or written inline as a mapping.",
        })
    }
}

impl Node for ServiceKey {
    fn read<'de, D: Deserializer<'de>>(d: D, cx: &mut Cx) -> Result<Option<Self>, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let json = match value {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::String(s) => {
                return Ok(cx
                    .text(s.into())
                    .map(|(s, _)| ServiceKey(Secret::new(s.into_owned()))));
            }
            mut o @ serde_json::Value::Object(_) => {
                if !substitute(&mut o, cx) {
                    return Ok(None);
                }
                o
            }
            _ => {
                cx.error(SERVICE_KEY_EXPECTED);
                return Ok(None);
            }
        };
        Ok(Some(ServiceKey(Secret::new(json.to_string()))))
    }
}

/// `${env:..}` / `${file:..}` in the text values of an inline service key; false when one
/// cannot be resolved (recorded).
fn substitute(v: &mut serde_json::Value, cx: &mut Cx) -> bool {
    match v {
        serde_json::Value::String(s) => match cx.text(std::mem::take(s).into()) {
            Some((t, _)) => {
                *s = t.into_owned();
                true
            }
            None => false,
        },
        serde_json::Value::Array(a) => a.iter_mut().all(|x| substitute(x, cx)),
        serde_json::Value::Object(o) => o.values_mut().all(|x| substitute(x, cx)),
        _ => true,
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
        return match service_key::parse(key.0.expose()) {
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
            p.missing(path, "token_url", " (or a service_key that has it)");
            None
        }
    };
    // A value that could not be read has its own problem already.
    let client_id = a.client_id.clone().unwrap_or_default();
    if client_id.trim().is_empty() && !p.has(&format!("{path}.client_id")) {
        p.add(format!("{path}.client_id"), "missing or empty client_id");
    }
    let secret = a.client_secret.clone().unwrap_or_default();
    if secret.is_empty() && !p.has(&format!("{path}.client_secret")) {
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
    match a.kind.as_deref().unwrap_or_default() {
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

/// `upstreams[i].auth` of the upstream named `upstream`, at `path`.
pub fn compile(
    a: &UpstreamAuthModel,
    upstream: &str,
    path: &str,
    outbound: &crate::outbound::Outbound,
    reg: &Registry,
    p: &mut Problems,
) -> Option<UpstreamAuth> {
    match a.kind.as_deref() {
        Some("basic") => {
            only_keys(a, &["username", "password"], path, p);
            basic(a, path, p)
        }
        Some(kind) if TOKEN_TYPES.contains(&kind) => {
            let mut allowed = OAUTH2_KEYS.to_vec();
            allowed.extend_from_slice(extra_keys(kind));
            only_keys(a, &allowed, path, p);
            oauth2(a, upstream, path, outbound, reg, p)
        }
        Some(other) => {
            let hint = v::suggest(other, &ALL_TYPES)
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            p.add(
                format!("{path}.type"),
                format!("unknown auth type \"{other}\": use basic, oauth2_client_credentials, token_exchange or jwt_bearer{hint}"),
            );
            None
        }
        None => {
            p.missing(
                path,
                "type",
                ": basic, oauth2_client_credentials, token_exchange or jwt_bearer",
            );
            None
        }
    }
}

const ALL_TYPES: [&str; 4] = [
    "basic",
    "oauth2_client_credentials",
    "token_exchange",
    "jwt_bearer",
];

/// The keys every token-fetching type has.
const OAUTH2_KEYS: [&str; 9] = [
    "token_url",
    "client_id",
    "client_secret",
    "service_key",
    "scope",
    "audience",
    "client_auth",
    "request_format",
    "extra_params",
];

/// Keys given that the auth `type` does not use are problems at the key.
fn only_keys(a: &UpstreamAuthModel, allowed: &[&str], path: &str, p: &mut Problems) {
    let present: [(&str, bool); 14] = [
        ("token_url", a.token_url.is_some()),
        ("client_id", a.client_id.is_some()),
        ("client_secret", a.client_secret.is_some()),
        ("scope", a.scope.is_some()),
        ("audience", a.audience.is_some()),
        ("client_auth", a.client_auth.is_some()),
        ("request_format", a.request_format.is_some()),
        ("extra_params", a.extra_params.is_some()),
        ("username", a.username.is_some()),
        ("password", a.password.is_some()),
        ("service_key", a.service_key.is_some()),
        ("subject_token_type", a.subject_token_type.is_some()),
        ("requested_token_type", a.requested_token_type.is_some()),
        ("resource", a.resource.is_some()),
    ];
    let kind = a.kind.as_deref().unwrap_or_default();
    for (k, is) in present {
        if is && !allowed.contains(&k) {
            p.at_key(
                format!("{path}.{k}"),
                format!("key \"{k}\" does not apply to auth type \"{kind}\""),
            );
        }
    }
}

/// Plain Basic (RFC 7617): not form-encoded, unlike OAuth2 client auth.
fn basic(a: &UpstreamAuthModel, path: &str, p: &mut Problems) -> Option<UpstreamAuth> {
    let (Some(u), Some(pw)) = (&a.username, &a.password) else {
        if !p.has(&format!("{path}.username")) && !p.has(&format!("{path}.password")) {
            p.add(path, "auth type basic needs username and password");
        }
        return None;
    };
    if u.contains(':') {
        p.add(
            format!("{path}.username"),
            "a Basic username cannot contain ':'",
        );
    }
    use base64::Engine;
    let raw = format!("{u}:{}", pw.expose());
    let mut h = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .ok()?;
    h.set_sensitive(true);
    Some(UpstreamAuth::Basic(h))
}

fn oauth2(
    a: &UpstreamAuthModel,
    upstream: &str,
    path: &str,
    outbound: &crate::outbound::Outbound,
    reg: &Registry,
    p: &mut Problems,
) -> Option<UpstreamAuth> {
    let (url, client_id, secret) = client(a, path, p);
    let grant = grant(a, path, p);
    let (client_auth, format) = client_auth_and_format(a, path, p);
    let scope = a.scope.clone().filter(|s| !s.trim().is_empty());
    let extra = a.extra_params.clone().unwrap_or_default();
    for k in extra.keys() {
        if reserved_params(&grant).contains(&k.as_str()) {
            p.add(
                format!("{path}.extra_params.{k}"),
                format!("\"{k}\" is set by tollgate"),
            );
        }
    }
    let client = reg.client(p, path, None, DEFAULT_FETCH_TIMEOUT, outbound)?;
    let url = url?.to_string();
    let cache_key = OAuth2Source::cache_key_for(
        upstream,
        &url,
        &client_id,
        scope.as_deref(),
        a.audience.as_deref(),
        &extra,
    );
    let on_behalf = grant != Grant::ClientCredentials;
    // Tokens of another grant (or other exchange parameters) are never shared.
    let cache_key = if on_behalf {
        fingerprint(&[&crate::encoding::hex(&cache_key), &format!("{grant:?}")])
    } else {
        cache_key
    };
    let src = Arc::new(OAuth2Source {
        upstream: upstream.into(),
        token_url: url,
        client_id,
        client_secret: secret,
        scope,
        audience: a.audience.clone(),
        client_auth,
        format,
        extra_params: extra,
        grant,
        client,
        timeout: Duration::from_secs(10),
        cache_key,
    });
    Some(if on_behalf {
        UpstreamAuth::OnBehalf(src)
    } else {
        UpstreamAuth::OAuth2(src)
    })
}

fn client_auth_and_format(
    a: &UpstreamAuthModel,
    path: &str,
    p: &mut Problems,
) -> (ClientAuth, RequestFormat) {
    let client_auth = match a.client_auth.as_deref() {
        None | Some("basic") => ClientAuth::Basic,
        Some("body") => ClientAuth::Body,
        Some(o) => {
            p.add(
                format!("{path}.client_auth"),
                format!("unknown client_auth \"{o}\": use basic or body"),
            );
            ClientAuth::Basic
        }
    };
    let format = match a.request_format.as_deref() {
        None | Some("form") => RequestFormat::Form,
        Some("json") => RequestFormat::Json,
        Some(o) => {
            p.add(
                format!("{path}.request_format"),
                format!("unknown request_format \"{o}\": use form or json"),
            );
            RequestFormat::Form
        }
    };
    (client_auth, format)
}
