//! Stage 1 of 3: the serde model of `gateway.yaml`, exactly as written by the admin.
//!
//! Nothing here is interpreted: durations, addresses and URLs are still strings, and
//! cross-references (route -> upstream, route -> issuer) are unchecked. `validate.rs`
//! checks all of it and `compile.rs` turns it into the runtime model. Unknown keys are
//! collected by `serde_ignored` in `load.rs` so that *every* typo is reported at once.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConfigModel {
    pub server: Option<ServerModel>,
    #[serde(default)]
    pub issuers: Vec<IssuerModel>,
    pub token_service: Option<TokenServiceModel>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamModel>,
    #[serde(default)]
    pub routes: Vec<RouteModel>,
    pub stores: Option<super::ratelimit::StoresModel>,
    #[serde(default)]
    pub rate_limits: Vec<super::ratelimit::RateLimitModel>,
    /// Browser sign-in (`super::login`).
    pub login: Option<super::login::model::LoginModel>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ServerModel {
    pub listen: Option<String>,
    pub tls: Option<TlsModel>,
    pub redirect_listen: Option<String>,
    /// The HTTPS port clients use, when it is not 443 (added to redirects).
    pub redirect_https_port: Option<u16>,
    pub admin_listen: Option<String>,
    /// Optional Bearer protection of the admin API (all but /healthz and /readyz).
    pub admin_auth: Option<super::admin_auth::AdminAuthModel>,
    #[serde(default)]
    pub limits: LimitsModel,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TlsModel {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
    #[serde(default)]
    pub sni: Vec<SniModel>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SniModel {
    pub hosts: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct LimitsModel {
    pub max_header_bytes: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_connections: Option<u64>,
    /// Requests being handled at once; more are answered 503 at once (load shedding).
    pub max_concurrent_requests: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IssuerModel {
    pub name: String,
    pub issuer: Option<String>,
    pub jwks_uri: Option<String>,
    pub discovery: Option<String>,
    pub introspection: Option<IntrospectionModel>,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub scope_claims: Option<Vec<String>>,
    pub client_claims: Option<Vec<String>>,
    #[serde(default)]
    pub skip_audience_check: bool,
    /// How often the key set is refreshed in the background (default 5m).
    pub jwks_refresh: Option<String>,
    /// Timeout for JWKS, discovery and introspection HTTP calls (default 5s).
    pub fetch_timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IntrospectionModel {
    pub url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TokenServiceModel {
    pub path: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub signing_key: Option<String>,
    /// Create `signing_key` (EC P-256) when the file does not exist yet.
    #[serde(default)]
    pub create_signing_key: bool,
    pub token_ttl: Option<String>,
    #[serde(default)]
    pub clients: Vec<ClientModel>,
    pub failed_auth_limit: Option<super::ratelimit::FailedAuthLimitModel>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ClientModel {
    pub id: String,
    pub secret: Option<Secret>,
    pub secret_hash: Option<Secret>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UpstreamModel {
    pub name: String,
    pub url: String,
    pub ca: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub auth: Option<UpstreamAuthModel>,
    pub csrf: Option<super::upstream_session::CsrfModel>,
}

/// One flat struct for every `type`, so that unknown keys are still reported;
/// `validate.rs` says which keys belong to which type.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UpstreamAuthModel {
    #[serde(rename = "type")]
    pub kind: String,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub client_auth: Option<String>,
    pub request_format: Option<String>,
    pub extra_params: Option<BTreeMap<String, String>>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A Cloud Foundry service key instead of token_url / client_id / client_secret.
    #[serde(
        default,
        deserialize_with = "super::upstream_auth::deserialize_service_key"
    )]
    pub service_key: Option<Secret>,
    /// token_exchange (RFC 8693).
    pub subject_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub resource: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RouteModel {
    pub name: String,
    pub path_prefix: String,
    pub hosts: Option<Vec<String>>,
    pub upstream: Option<String>,
    pub auth: Option<RouteAuthModel>,
    pub permissions: Option<Vec<PermissionModel>>,
    pub cors: Option<CorsModel>,
    pub body_credentials: Option<String>,
    /// With body_credentials: move `grant_type` from the body to the query string
    /// (SAP Cloud Integration's token URL wants it there).
    pub grant_type_to_query: Option<bool>,
    /// Whether the client's `Cookie` header is withheld from the upstream (default: on
    /// for routes with a Bearer `auth` block).
    pub strip_cookies: Option<bool>,
    /// Names of `rate_limits` entries.
    pub rate_limits: Option<Vec<String>>,
}

/// `auth: none`, or a block. Written by hand (not `untagged`) so that unknown keys
/// inside the block are still seen by `serde_ignored`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RouteAuthModel {
    Keyword(String),
    Block(AuthBlockModel),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthBlockModel {
    pub issuers: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub clients: Option<Vec<String>>,
    /// Accept a browser session (`login:`) as well as a Bearer token.
    pub login: Option<bool>,
}

impl<'de> Deserialize<'de> for RouteAuthModel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RouteAuthModel;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`none` or a block with issuers / scopes / clients")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RouteAuthModel::Keyword(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                AuthBlockModel::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RouteAuthModel::Block)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PermissionModel {
    pub path: String,
    pub methods: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CorsModel {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    pub max_age: Option<String>,
}
