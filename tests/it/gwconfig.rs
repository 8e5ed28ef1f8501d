//! One config builder for the integration tests: the parts nearly every test repeats
//! (listeners on 127.0.0.1:0, the test IdP as an issuer, upstreams, routes) built as
//! JSON values and written out as YAML (a JSON document is YAML, and tollgate reads
//! it with the same reader, `${env:...}` included). A test states only what it is
//! about:
//!
//! ```ignore
//! let yaml = GatewayConfig::new()
//!     .issuer(&idp, "corp")
//!     .upstream("bi", &up.url())
//!     .route(json!({"name": "r", "path_prefix": "/r", "upstream": "bi",
//!                   "auth": {"scopes": ["analytics.read"]}}))
//!     .yaml();
//! ```
//!
//! Tests of the reader itself (located problems, `file:line:col`) keep their YAML text:
//! the layout of the text is what they test.

use serde_json::{json, Map, Value};

use crate::common::{Idp, INTROSPECT_ID};

/// The audience the test IdP's tokens carry (see `Idp::token`).
pub const AUDIENCE: &str = "https://bi-api.company.com";

/// A gateway.yaml under construction.
#[derive(Debug, Clone)]
pub struct GatewayConfig(Map<String, Value>);

impl GatewayConfig {
    /// Public and admin listeners on free loopback ports.
    pub fn new() -> Self {
        Self::bare().set(
            "server",
            json!({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}),
        )
    }

    /// A public listener on a free loopback port, no admin listener.
    pub fn public_only() -> Self {
        Self::bare().set("server", json!({"listen": "127.0.0.1:0"}))
    }

    /// No section at all (a test that writes its own `server`).
    pub fn bare() -> Self {
        GatewayConfig(Map::new())
    }

    /// The test IdP as issuer `name`: its issuer id, JWKS and the tests' audience.
    pub fn issuer(self, idp: &Idp, name: &str) -> Self {
        self.issuer_with(idp, name, json!({}))
    }

    /// Like [`Self::issuer`], with more keys (or overrides) merged in.
    pub fn issuer_with(self, idp: &Idp, name: &str, extra: Value) -> Self {
        let mut v = json!({
            "name": name,
            "issuer": idp.issuer,
            "jwks_uri": idp.url("/jwks"),
            "audiences": [AUDIENCE],
        });
        merge(&mut v, extra);
        self.push("issuers", v)
    }

    /// Any issuer block, as written.
    pub fn issuer_block(self, v: Value) -> Self {
        self.push("issuers", v)
    }

    /// An upstream `name` at `url`.
    pub fn upstream(self, name: &str, url: &str) -> Self {
        self.upstream_with(name, url, json!({}))
    }

    /// Like [`Self::upstream`], with more keys merged in.
    pub fn upstream_with(self, name: &str, url: &str, extra: Value) -> Self {
        let mut v = json!({"name": name, "url": url});
        merge(&mut v, extra);
        self.push("upstreams", v)
    }

    /// An upstream `name` with several endpoints (`urls`), more keys merged in.
    pub fn upstream_urls(self, name: &str, urls: &[&str], extra: Value) -> Self {
        let mut v = json!({"name": name, "urls": urls});
        merge(&mut v, extra);
        self.push("upstreams", v)
    }

    /// One route, as written.
    pub fn route(self, v: Value) -> Self {
        self.push("routes", v)
    }

    /// A route `name` on `path_prefix` to `upstream` with `auth: none`.
    pub fn open_route(self, name: &str, path_prefix: &str, upstream: &str) -> Self {
        self.route(json!({
            "name": name, "path_prefix": path_prefix, "upstream": upstream, "auth": "none",
        }))
    }

    /// `token_service` issuing as `issuer` for `audience` to `clients` (id, secret,
    /// scopes); more keys with `.merge("token_service", ...)`.
    pub fn token_service(
        self,
        issuer: &str,
        audience: &str,
        clients: &[(&str, &str, &[&str])],
    ) -> Self {
        let clients: Vec<Value> = clients
            .iter()
            .map(|(id, secret, scopes)| json!({"id": id, "secret": secret, "scopes": scopes}))
            .collect();
        self.set(
            "token_service",
            json!({"issuer": issuer, "audience": audience, "clients": clients}),
        )
    }

    /// One more `token_service.clients` entry, as written (for keys the
    /// `(id, secret, scopes)` triples of [`Self::token_service`] do not carry).
    pub fn token_service_client(mut self, v: Value) -> Self {
        let ts = self.0.entry("token_service").or_insert_with(|| json!({}));
        match ts
            .as_object_mut()
            .expect("token_service is a map")
            .entry("clients")
            .or_insert_with(|| json!([]))
        {
            Value::Array(a) => a.push(v),
            other => panic!("token_service.clients is not a list: {other}"),
        }
        self
    }

    /// One `rate_limits` entry, as written.
    pub fn rate_limit(self, v: Value) -> Self {
        self.push("rate_limits", v)
    }

    /// `stores.redis` at `url` with the client's `timeout` (e.g. "2s").
    pub fn redis(self, url: &str, timeout: &str) -> Self {
        self.merge("stores", json!({"redis": {"url": url, "timeout": timeout}}))
    }

    /// A whole top-level section (replaces it).
    pub fn set(mut self, section: &str, v: Value) -> Self {
        self.0.insert(section.to_owned(), v);
        self
    }

    /// Merges `v` into a top-level section (maps merge key by key, anything else
    /// replaces): `.merge("server", json!({"limits": {"max_connections": 2}}))`.
    pub fn merge(mut self, section: &str, v: Value) -> Self {
        let slot = self.0.entry(section).or_insert_with(|| json!({}));
        merge(slot, v);
        self
    }

    /// The document, as YAML text.
    pub fn yaml(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.0).unwrap();
        s.push('\n');
        s
    }

    fn push(mut self, list: &str, v: Value) -> Self {
        match self.0.entry(list).or_insert_with(|| json!([])) {
            Value::Array(a) => a.push(v),
            other => panic!("{list} is not a list: {other}"),
        }
        self
    }
}

/// An upstream `auth` block: OAuth2 client credentials at the test IdP's token endpoint.
pub fn client_credentials(idp: &Idp, client_id: &str, client_secret: &str) -> Value {
    json!({
        "type": "oauth2_client_credentials",
        "token_url": idp.url("/token"),
        "client_id": client_id,
        "client_secret": client_secret,
    })
}

/// Loads `yaml` as a gateway.yaml in a fresh directory: the loader's error text, or a
/// panic showing the config when it was accepted.
pub fn load_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    match tollgate::Gateway::load(path) {
        Ok(_) => panic!("config accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

/// An issuer's `introspection` block: the test IdP's RFC 7662 endpoint, as client
/// `INTROSPECT_ID` with `client_secret` (a value or a `${env:...}` reference).
pub fn idp_introspection(idp: &Idp, client_secret: &str) -> Value {
    json!({
        "url": idp.url("/introspect"),
        "client_id": INTROSPECT_ID,
        "client_secret": client_secret,
    })
}

/// Merges `extra` into `base`: maps key by key (recursively), anything else replaces.
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (base, extra) => *base = extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: the builder's document is one tollgate accepts, with the pieces where
    // a test expects them.
    #[test]
    fn builds_a_config_tollgate_accepts() {
        let yaml = GatewayConfig::new()
            .merge("server", json!({"limits": {"max_connections": 7}}))
            .upstream_with("bi", "http://127.0.0.1:9", json!({"connect_timeout": "1s"}))
            .route(json!({"name": "r", "path_prefix": "/r", "upstream": "bi", "auth": "none"}))
            .yaml();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gateway.yaml");
        std::fs::write(&p, &yaml).unwrap();
        let gw = tollgate::Gateway::load(p).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        drop(gw);
        let v: Value = serde_json::from_str(&yaml).unwrap();
        assert_eq!(v["server"]["listen"], "127.0.0.1:0");
        assert_eq!(v["server"]["limits"]["max_connections"], 7);
        assert_eq!(v["upstreams"][0]["connect_timeout"], "1s");
    }
}
