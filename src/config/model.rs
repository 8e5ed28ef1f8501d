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
pub use super::issuers::{DpopModel, IntrospectionModel, IssuerModel};
pub use super::login::model::LoginModel;
pub use super::ratelimit::{FailedAuthLimitModel, RateLimitModel, RedisStoreModel, StoresModel};
pub use super::routes::{PermissionModel, RouteModel};
pub use super::server::{LimitsModel, ServerModel, SniModel, TlsModel};
pub use super::token_service::{ClientModel, TokenServiceModel};
pub use super::tracing::TracingModel;
pub use super::upstream_auth::UpstreamAuthModel;
pub use super::upstream_session::CsrfModel;
pub use super::upstreams::UpstreamModel;
pub use super::yaml::{DurationText, ListenAddr};

section! {
    /// The whole file.
    pub struct ConfigModel {
        "server" => pub server: Option<ServerModel>,
        "issuers" => pub issuers: List<IssuerModel>,
        "token_service" => pub token_service: Option<TokenServiceModel>,
        "upstreams" => pub upstreams: List<UpstreamModel>,
        "routes" => pub routes: List<RouteModel>,
        "stores" => pub stores: Option<StoresModel>,
        "rate_limits" => pub rate_limits: List<RateLimitModel>,
        /// Browser sign-in (`login/`).
        "login" => pub login: Option<LoginModel>,
        /// Span export and trace sampling (`tracing.rs`).
        "tracing" => pub tracing: Option<TracingModel>,
    }
}

/// Every block of the file and its keys: an unknown key that no block nearby can
/// explain is looked up here ("\"timeout\" is a key of upstreams[]").
pub const PLACES: &[(&str, &[&str])] = &[
    ("the top level", ConfigModel::KEYS),
    ("server", ServerModel::KEYS),
    ("server.tls", TlsModel::KEYS),
    ("server.tls.sni[]", SniModel::KEYS),
    ("server.limits", LimitsModel::KEYS),
    ("server.admin_auth", AdminAuthModel::KEYS),
    ("issuers[]", IssuerModel::KEYS),
    ("issuers[].introspection", IntrospectionModel::KEYS),
    ("issuers[].dpop", DpopModel::KEYS),
    ("token_service", TokenServiceModel::KEYS),
    ("token_service.clients[]", ClientModel::KEYS),
    (
        "token_service.failed_auth_limit",
        FailedAuthLimitModel::KEYS,
    ),
    ("upstreams[]", UpstreamModel::KEYS),
    ("upstreams[].auth", UpstreamAuthModel::KEYS),
    ("upstreams[].csrf", CsrfModel::KEYS),
    ("routes[]", RouteModel::KEYS),
    ("routes[].auth", AuthBlockModel::KEYS),
    ("routes[].permissions[]", PermissionModel::KEYS),
    ("routes[].cors", CorsModel::KEYS),
    ("stores", StoresModel::KEYS),
    ("stores.redis", RedisStoreModel::KEYS),
    ("rate_limits[]", RateLimitModel::KEYS),
    ("login", LoginModel::KEYS),
    ("tracing", TracingModel::KEYS),
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
        assert_eq!(places_with_key("timeout"), ["upstreams[]", "stores.redis"]);
        assert!(places_with_key("nope").is_empty());
    }
}
