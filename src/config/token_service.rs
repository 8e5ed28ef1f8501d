//! The `token_service:` section: tollgate as an OAuth2 client-credentials issuer
//! (path, issuer, audience, signing key, registered clients). Compiles to
//! [`TokenService`] (served by `token_service/`) and to the issuer `local` that routes
//! use to accept its tokens in-process.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::issuers::parse_sender_constraint;
use super::ratelimit::{self as rl, FailedAuthLimitModel};
use super::refs::fingerprint;
use super::registry::Registry;
use super::subst::resolve_path;
use super::validate::{self as v, Problems};
use super::yaml::{section, DurationText, List};
use crate::auth::jwks::KeyStore;
use crate::auth::{Issuer, IssuerKind};
use crate::route::{normalize_path, RouteTable};
use crate::runtime::Route;
use crate::secret::Secret;
use crate::token_service::keys::{NewKeyFile, SigningKey};
use crate::token_service::{Client, ClientSecret, TokenService, LOCAL_LEEWAY};

section! {
    pub struct TokenServiceModel {
        /// Where the token endpoint is served (default /oauth2/token).
        "path" => pub path: Option<String>,
        /// The `iss` of the tokens it signs.
        "issuer" => pub issuer: Option<String> as required(),
        /// The `aud` of the tokens it signs.
        "audience" => pub audience: Option<String> as required(),
        /// The signing key (PEM file: EC P-256, recommended, or P-384, RSA of 2048+ bits,
        /// or Ed25519; PKCS#8, or PKCS#1 / SEC1), shared by every replica; without it a
        /// key is made at start.
        "signing_key" => pub signing_key: Option<String>,
        /// Create `signing_key` when the file does not exist yet (`tollgate run` only).
        "create_signing_key" => pub create_signing_key: bool,
        /// Lifetime of the tokens it signs.
        "token_ttl" => pub token_ttl: Option<DurationText>,
        /// The clients that may ask for tokens.
        "clients" => pub clients: List<ClientModel>,
        /// Failed client authentications allowed per client id and IP.
        "failed_auth_limit" => pub failed_auth_limit: Option<FailedAuthLimitModel>,
        /// `none` (default) | `dpop` | `mtls`: what a client must prove when it asks for
        /// a token, and what routes require of the issuer `local`'s tokens.
        "sender_constraint" => pub sender_constraint: Option<String> as restricting(),
    }
}

section! {
    pub struct ClientModel {
        /// The client id.
        "id" => pub id: Option<String> as required(),
        /// The client secret (use ${env:..} or ${file:..}); prefer `secret_hash`.
        "secret" => pub secret: Option<Secret>,
        /// An argon2id hash of the secret, made with `tollgate hash-secret`.
        "secret_hash" => pub secret_hash: Option<Secret>,
        /// The scopes the client may be given.
        "scopes" => pub scopes: List<String>,
        /// Overrides `token_service.sender_constraint` for this client's token requests.
        "sender_constraint" => pub sender_constraint: Option<String> as restricting(),
    }
}

const AT: &str = "token_service";

/// The token service, and the key file `tollgate run` must create for it (if any).
pub fn compile(
    t: &TokenServiceModel,
    base: &Path,
    reg: &Registry,
    limits: &rl::Compiled,
    p: &mut Problems,
) -> Option<(Arc<TokenService>, Option<NewKeyFile>)> {
    let path = t.path.clone().unwrap_or_else(|| "/oauth2/token".to_owned());
    if !path.starts_with('/') || normalize_path(&path).ok().as_deref() != Some(path.as_str()) {
        p.add(
            "token_service.path",
            format!("path \"{path}\" must be a normalised absolute path like /oauth2/token"),
        );
    }
    let mut required = |key: &str, v: &Option<String>| match v {
        Some(s) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            p.add(format!("{AT}.{key}"), "must not be empty");
            String::new()
        }
        None => {
            p.missing(AT, key, "");
            String::new()
        }
    };
    let issuer = required("issuer", &t.issuer);
    let audience = required("audience", &t.audience);
    let ttl = v::duration(
        p,
        "token_service.token_ttl",
        t.token_ttl.as_ref(),
        Duration::from_secs(3600),
    );
    let (key, new_file) = signing_key(t, base, reg, p);
    let clients = clients(&t.clients, p);
    // Unknown client ids are checked against a dummy hash made like the first
    // `secret_hash` of the file (once per compile: one argon2 hash).
    let unknown_client_hash = t
        .clients
        .values()
        .filter_map(|c| c.id.as_ref())
        .find_map(|id| match clients.get(id).map(|c| &c.secret) {
            Some(ClientSecret::Hash(h)) => Some(h),
            _ => None,
        })
        .and_then(crate::token_service::dummy_hash_like);
    let sender_constraint = parse_sender_constraint(
        t.sender_constraint.as_deref(),
        format!("{AT}.sender_constraint"),
        p,
    );
    let failed_auth = rl::failed_auth_limit(t.failed_auth_limit.as_ref(), limits, p);
    let ts = TokenService {
        path,
        issuer,
        audience,
        ttl,
        key: key?,
        clients,
        unknown_client_hash,
        failed_auth: failed_auth?,
        sender_constraint,
        replay: crate::auth::replay::ReplayStore {
            redis: limits.limiter().redis().cloned(),
            on_error: Default::default(),
        },
    };
    Some((Arc::new(ts), new_file))
}

/// The key tokens are signed with: read from `signing_key`; generated in memory when
/// the file is to be created (written by `tollgate run` only) or when no file is named.
fn signing_key(
    t: &TokenServiceModel,
    base: &Path,
    reg: &Registry,
    p: &mut Problems,
) -> (Option<Arc<SigningKey>>, Option<NewKeyFile>) {
    let at = "token_service.signing_key";
    let Some(file) = &t.signing_key else {
        if t.create_signing_key {
            p.add(
                "token_service.create_signing_key",
                "needs signing_key: the file to create",
            );
        }
        return (generated_key(reg, p), None);
    };
    let f = resolve_path(base, file);
    if t.create_signing_key && !f.exists() {
        return match NewKeyFile::generate(&f) {
            Ok((key, new_file)) => {
                p.warn(
                    at,
                    format!(
                        "{} does not exist yet: `tollgate run` creates it (a new EC P-256 key, readable by the owner only)",
                        f.display()
                    ),
                );
                (Some(Arc::new(key)), Some(new_file))
            }
            Err(e) => {
                p.add(at, e);
                (None, None)
            }
        };
    }
    let key = std::fs::read(&f)
        .map_err(|e| format!("cannot read {}: {e}", f.display()))
        .and_then(|d| SigningKey::from_pem(&d));
    match key {
        Ok(k) => (Some(Arc::new(k)), None),
        Err(e) => {
            p.add(at, e);
            (None, None)
        }
    }
}

/// No `signing_key`: one key per process, kept across reloads in the registry.
fn generated_key(reg: &Registry, p: &mut Problems) -> Option<Arc<SigningKey>> {
    let mut g = reg.generated_key.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        match SigningKey::generate_es256() {
            Ok(k) => *g = Some(Arc::new(k)),
            Err(e) => p.add("token_service", e),
        }
    }
    p.warn(
        "token_service",
        "signing_key is not set: tokens are signed with a key generated at start, so they stop being valid at a restart and replicas do not accept each other's tokens",
    );
    g.clone()
}

fn clients(ms: &List<ClientModel>, p: &mut Problems) -> HashMap<String, Client> {
    let mut clients = HashMap::new();
    for (i, c) in ms.iter() {
        let cp = format!("token_service.clients[{i}]");
        let Some(id) = &c.id else {
            p.missing(&cp, "id", "");
            continue;
        };
        if !v::token_word(p, format!("{cp}.id"), id, "client id") {
            continue;
        }
        if c.scopes.is_empty() {
            p.add(
                format!("{cp}.scopes"),
                "register at least one scope for the client",
            );
        }
        for (j, s) in c.scopes.iter() {
            v::token_word(p, format!("{cp}.scopes[{j}]"), s, "scope");
        }
        let Some(secret) = client_secret(c, &cp, p) else {
            continue;
        };
        let sender_constraint = c
            .sender_constraint
            .as_deref()
            .map(|s| parse_sender_constraint(Some(s), format!("{cp}.sender_constraint"), p));
        let client = Client {
            id: id.clone(),
            secret,
            scopes: c.scopes.to_vec(),
            sender_constraint,
        };
        if clients.insert(id.clone(), client).is_some() {
            p.add(format!("{cp}.id"), format!("duplicate client id \"{id}\""));
        }
    }
    clients
}

fn client_secret(c: &ClientModel, cp: &str, p: &mut Problems) -> Option<ClientSecret> {
    match (&c.secret, &c.secret_hash) {
        (Some(s), None) if !s.is_empty() => Some(ClientSecret::Plain(s.clone())),
        (None, Some(h)) => match argon2::password_hash::PasswordHash::new(h.expose()) {
            Ok(ph) if ph.algorithm.as_str().starts_with("argon2") => {
                Some(ClientSecret::Hash(h.clone()))
            }
            _ => {
                p.add(
                    format!("{cp}.secret_hash"),
                    "not an argon2 PHC string (make one with `tollgate hash-secret`)",
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            p.add(cp, "give either secret or secret_hash, not both");
            None
        }
        _ => {
            if !p.has(&format!("{cp}.secret")) && !p.has(&format!("{cp}.secret_hash")) {
                p.add(cp, "a client needs a non-empty secret or secret_hash");
            }
            None
        }
    }
}

/// The token service as the issuer `local`: verified in-process, no HTTP round trip.
/// With `stores.redis`, the DPoP proofs sent with its tokens are marked there
/// (fail-closed), like every other issuer's by default.
pub fn local_issuer(ts: &TokenService, limits: &super::ratelimit::Compiled) -> Arc<Issuer> {
    let store = Arc::new(KeyStore::with_static_keys(
        "local".into(),
        ts.issuer.clone(),
        ts.key.key_set(),
    ));
    Arc::new(Issuer {
        name: "local".into(),
        issuer: ts.issuer.clone(),
        kind: IssuerKind::Jwt(store),
        audiences: vec![ts.audience.clone()],
        skip_audience_check: false,
        algorithms: vec![ts.key.alg],
        leeway: LOCAL_LEEWAY,
        scope_claims: vec!["scope".into()],
        client_claims: vec!["client_id".into()],
        sender_constraint: ts.sender_constraint,
        dpop: crate::auth::sender::DpopSettings {
            replay: crate::auth::replay::ReplayStore {
                redis: limits.limiter().redis().cloned(),
                on_error: Default::default(),
            },
            ..Default::default()
        },
        fingerprint: fingerprint(&["local", &ts.issuer, &ts.audience, &ts.key.kid]),
    })
}

/// A route with exactly the token service's path would never be reached.
pub fn check_path_is_free(
    ts: &TokenService,
    routes: &[Arc<Route>],
    table: &RouteTable,
    p: &mut Problems,
) {
    let Some(id) = table.lookup("", &ts.path) else {
        return;
    };
    let r = &routes[id];
    if r.path_prefix.trim_end_matches('/') == ts.path.trim_end_matches('/') {
        p.add(
            "token_service.path",
            format!(
                "route \"{}\" has the same path; the token service answers it first",
                r.name
            ),
        );
    }
}
