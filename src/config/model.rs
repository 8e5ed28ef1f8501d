//! The model of `gateway.yaml` as written, top level: which sections there are.
//!
//! Each section's model lives in its own file with its checks and its compile step
//! (`server.rs`, `issuers.rs`, `token_service.rs`, `upstreams.rs` with
//! `upstream_auth.rs` and `upstream_session.rs`, `routes.rs`, `ratelimit.rs`, `login/`;
//! the shared `auth.rs` and `cors.rs` blocks). Nothing in a model is interpreted yet:
//! durations, addresses and URLs are still text, references by name are unchecked.
//!
//! A new section is one more file with its model (a [`section!`] struct), its checks
//! and its `compile`, plus one line in [`ConfigModel`], one in [`PLACES`] and one call
//! in `compile.rs`.

use super::yaml::{section, List, Section};

pub use super::admin_auth::AdminAuthModel;
pub use super::auth::{AuthBlockModel, RouteAuthModel};
pub use super::cors::CorsModel;
pub use super::decision::DecisionModel;
pub use super::issuers::{DpopModel, DpopReplayModel, IntrospectionModel, IssuerModel};
pub use super::login::model::LoginModel;
pub use super::ratelimit::{FailedAuthLimitModel, RateLimitModel, RedisStoreModel, StoresModel};
pub use super::routes::{PermissionModel, RouteModel, WebSocketModel};
pub use super::server::{DnsModel as ServerDnsModel, LimitsModel, ServerModel, SniModel, TlsModel};
pub use super::token_service::{ClientModel, TokenServiceModel};
pub use super::tracing::TracingModel;
pub use super::upstream_auth::UpstreamAuthModel;
pub use super::upstream_endpoints::{DnsModel, HealthCheckModel, PassiveModel, RetriesModel};
pub use super::upstream_session::CsrfModel;
pub use super::upstreams::UpstreamModel;
pub use super::yaml::{DurationText, ListenAddr};

section! {
    /// The whole file.
    pub struct ConfigModel {
        /// The listeners, TLS, request limits and the admin API.
        "server" => pub server: Option<ServerModel> as required(),
        /// Who may sign the Bearer tokens routes accept: JWT issuers (JWKS or OIDC
        /// discovery) and opaque-token issuers (RFC 7662 introspection).
        "issuers" => pub issuers: List<IssuerModel>,
        /// tollgate's own OAuth2 token endpoint (client credentials grant): tokens for
        /// the clients listed here, checked by routes as issuer `local`.
        "token_service" => pub token_service: Option<TokenServiceModel>,
        /// The backends tollgate forwards to.
        "upstreams" => pub upstreams: List<UpstreamModel>,
        /// Which requests go to which upstream, and what they must present. The longest
        /// matching `path_prefix` wins.
        "routes" => pub routes: List<RouteModel>,
        /// Shared state for rate limits (Redis), so every replica counts together.
        "stores" => pub stores: Option<StoresModel>,
        /// Named request limits that routes refer to by name.
        "rate_limits" => pub rate_limits: List<RateLimitModel>,
        /// Browser sign-in (OpenID Connect authorization code + PKCE) for routes with
        /// `auth: {login: true}`.
        "login" => pub login: Option<LoginModel>,
        /// Span export (OTLP/HTTP) and trace sampling.
        "tracing" => pub tracing: Option<TracingModel>,
        /// What the decision service (server.decision_listen) answers with.
        "decision" => pub decision: Option<DecisionModel>,
    }
}

/// The JSON Schema of `gateway.yaml` (`tollgate schema`, `gateway.schema.json`): not on
/// the request path.
pub fn schema() -> serde_json::Value {
    super::yaml::schema::document::<ConfigModel>(
        "tollgate gateway.yaml",
        "tollgate's config file. Unknown keys are errors; any text value may use \
         ${env:NAME} or ${file:PATH} (keep secrets out of the file). Check it with \
         `tollgate validate`; `tollgate schema` prints this schema.",
    )
}

/// Every block of the file and its keys: an unknown key that no block nearby can
/// explain is looked up here ("\"timeout\" is a key of upstreams[]").
pub const PLACES: &[(&str, &[&str])] = &[
    ("the top level", ConfigModel::KEYS),
    ("server", ServerModel::KEYS),
    ("server.tls", TlsModel::KEYS),
    ("server.tls.sni[]", SniModel::KEYS),
    ("server.limits", LimitsModel::KEYS),
    ("server.dns", ServerDnsModel::KEYS),
    ("server.admin_auth", AdminAuthModel::KEYS),
    (
        "server.admin_auth.failed_auth_limit",
        FailedAuthLimitModel::KEYS,
    ),
    ("issuers[]", IssuerModel::KEYS),
    ("issuers[].introspection", IntrospectionModel::KEYS),
    ("issuers[].dpop", DpopModel::KEYS),
    ("issuers[].dpop.replay", DpopReplayModel::KEYS),
    ("token_service", TokenServiceModel::KEYS),
    ("token_service.clients[]", ClientModel::KEYS),
    (
        "token_service.failed_auth_limit",
        FailedAuthLimitModel::KEYS,
    ),
    ("upstreams[]", UpstreamModel::KEYS),
    ("upstreams[].auth", UpstreamAuthModel::KEYS),
    ("upstreams[].csrf", CsrfModel::KEYS),
    ("upstreams[].passive", PassiveModel::KEYS),
    ("upstreams[].health_check", HealthCheckModel::KEYS),
    ("upstreams[].retries", RetriesModel::KEYS),
    ("upstreams[].dns", DnsModel::KEYS),
    ("routes[]", RouteModel::KEYS),
    ("routes[].auth", AuthBlockModel::KEYS),
    ("routes[].permissions[]", PermissionModel::KEYS),
    ("routes[].cors", CorsModel::KEYS),
    ("routes[].websocket", WebSocketModel::KEYS),
    ("stores", StoresModel::KEYS),
    ("stores.redis", RedisStoreModel::KEYS),
    ("rate_limits[]", RateLimitModel::KEYS),
    ("login", LoginModel::KEYS),
    ("tracing", TracingModel::KEYS),
    ("decision", DecisionModel::KEYS),
];

/// The places (at most three) that have a key named `key`.
pub fn places_with_key(key: &str) -> Vec<&'static str> {
    super::yaml::places_with_key(PLACES, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: every block of the model is listed in PLACES (a new section that
    // forgets its line would lose "is a key of" hints).
    #[test]
    fn every_key_has_a_place() {
        for key in ["timeout", "path_prefix", "cert", "client_secret", "max_age"] {
            assert!(!places_with_key(key).is_empty(), "{key}");
        }
        assert_eq!(
            places_with_key("timeout"),
            ["upstreams[]", "upstreams[].health_check", "stores.redis"]
        );
        assert!(places_with_key("nope").is_empty());
    }

    /// The object schema in `v` (itself, or the object branch of an `anyOf`).
    fn object(v: &serde_json::Value) -> &serde_json::Value {
        if v.get("properties").is_some() {
            return v;
        }
        let branches = v["anyOf"].as_array().expect("an object or anyOf");
        branches
            .iter()
            .find(|b| b.get("properties").is_some())
            .expect("an object branch")
    }

    // Behaviour: every block `tollgate validate` reads is in the schema at its place,
    // with exactly the keys the reader accepts (in the same order), and no other key
    // (`additionalProperties: false`); so the schema can neither miss a key nor offer one
    // that validate refuses.
    #[test]
    fn schema_has_every_key_of_every_place() {
        let doc = schema();
        assert_eq!(doc["$schema"], "http://json-schema.org/draft-07/schema#");
        for (place, keys) in PLACES {
            let mut node = &doc;
            if *place != "the top level" {
                for seg in place.split('.') {
                    let name = seg.trim_end_matches("[]");
                    node = &object(node)["properties"][name];
                    assert!(!node.is_null(), "{place}: no property {name}");
                    if seg.ends_with("[]") {
                        assert_eq!(node["type"], "array", "{place}");
                        node = &node["items"];
                    }
                }
            }
            let node = object(node);
            let found: Vec<&str> = node["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(found, *keys, "{place}");
            assert_eq!(node["additionalProperties"], false, "{place}");
        }
        // Keys the compile step requires are required in the schema.
        let routes = &doc["properties"]["routes"]["items"];
        let required: Vec<&str> = routes["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, ["name", "path_prefix", "upstream", "auth"]);
        assert_eq!(doc["required"], serde_json::json!(["server"]));
    }
}
