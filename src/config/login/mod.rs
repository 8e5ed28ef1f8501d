//! The `login:` section of `gateway.yaml` (browser sign-in) and `auth: {login: true}` on
//! routes: the model as written ([`model`]), and its compile step into the runtime
//! [`Login`], reporting everything that could not work (an issuer without
//! `discovery:`, a short `cookie_secret`, a callback path a route or the token service
//! already answers, `login: true` without a `login:` section, ...).

pub mod model;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use self::model::LoginModel;
use super::model::{ConfigModel, RouteAuthModel};
use super::validate::{self as v, Problems};
use crate::auth::jwks::KeySource;
use crate::auth::{Issuer, IssuerKind};
use crate::config::yaml::List;
use crate::route::normalize_path;
use crate::runtime::Route;
use crate::secret::Secret;
use crate::session::{same_origin, Login, LoginSettings};
use crate::token_service::TokenService;

pub const DEFAULT_CALLBACK_PATH: &str = "/oauth2/callback";
pub const DEFAULT_LOGOUT_PATH: &str = "/oauth2/logout";
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
pub const MIN_COOKIE_SECRET_BYTES: usize = 32;
/// Parameters of the authorization request that tollgate sets itself.
const OWN_PARAMS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

/// The `login:` section, compiled; also checks `login: true` on routes and the admin API.
pub fn compile(
    m: &ConfigModel,
    issuers: &[Arc<Issuer>],
    routes: &[Arc<Route>],
    token_service: Option<&TokenService>,
    p: &mut Problems,
) -> Option<Arc<Login>> {
    let wants_login = |a: Option<&RouteAuthModel>| matches!(a, Some(RouteAuthModel::Block(b)) if b.login == Some(true));
    if m.login.is_none() {
        for (i, r) in m.routes.iter() {
            if wants_login(r.auth.as_ref()) {
                p.add(
                    format!("routes[{i}].auth.login"),
                    "login: true needs a top-level `login:` section (the identity provider browsers sign in with)",
                );
            }
        }
    }
    if m.server
        .as_ref()
        .and_then(|s| s.admin_auth.as_ref())
        .is_some_and(|b| b.login == Some(true))
    {
        p.add(
            "server.admin_auth.login",
            "browser sign-in does not apply to the admin API: it takes Bearer tokens, or Basic credentials with `type: basic`",
        );
    }
    let l = m.login.as_ref()?;
    let before = p.errors.len();
    for (key, given) in [
        ("issuer", l.issuer.is_some()),
        ("client_id", l.client_id.is_some()),
        ("cookie_secret", l.cookie_secret.is_some()),
    ] {
        if !given {
            p.missing("login", key, "");
        }
    }
    let id_tokens = id_token_issuer(l, m, issuers, p);
    let client_id = l.client_id.clone().unwrap_or_default();
    if l.client_id.is_some()
        && (client_id.trim().is_empty() || client_id.chars().any(char::is_whitespace))
    {
        p.add(
            "login.client_id",
            "must be a non-empty client id without spaces",
        );
    }
    if l.client_secret.as_ref().is_some_and(Secret::is_empty) {
        p.add(
            "login.client_secret",
            "must not be empty (leave the key out for a public client)",
        );
    }
    let scopes = l
        .scopes
        .as_ref()
        .map_or_else(|| vec!["openid".into()], List::to_vec);
    if let Some(list) = &l.scopes {
        for (j, s) in list.iter() {
            v::token_word(p, format!("login.scopes[{j}]"), s, "scope");
        }
    }
    if !scopes.iter().any(|s| s == "openid") {
        p.add(
            "login.scopes",
            "must include openid (sign-in needs an ID token)",
        );
    }
    let callback_path = own_path(
        p,
        "callback_path",
        l.callback_path.as_deref(),
        DEFAULT_CALLBACK_PATH,
    );
    let logout_path = own_path(
        p,
        "logout_path",
        l.logout_path.as_deref(),
        DEFAULT_LOGOUT_PATH,
    );
    if callback_path == logout_path {
        p.add("login.logout_path", "must differ from callback_path");
    }
    for (key, path) in [
        ("callback_path", &callback_path),
        ("logout_path", &logout_path),
    ] {
        if token_service.is_some_and(|ts| ts.serves(path)) {
            p.add(
                format!("login.{key}"),
                format!("{path} is a path of the token service"),
            );
        }
        if let Some(r) = routes
            .iter()
            .find(|r| r.path_prefix.trim_end_matches('/') == path.trim_end_matches('/'))
        {
            p.add(
                format!("login.{key}"),
                format!(
                    "route \"{}\" has the same path; tollgate answers {path} itself, so that route could never be reached there",
                    r.name
                ),
            );
        }
    }
    let cookie_secret = l.cookie_secret.clone().unwrap_or_default();
    let secret_len = cookie_secret.expose().len();
    if l.cookie_secret.is_some() && secret_len < MIN_COOKIE_SECRET_BYTES {
        p.add(
            "login.cookie_secret",
            format!(
                "must be at least {MIN_COOKIE_SECRET_BYTES} bytes (it has {secret_len}); e.g. `head -c 48 /dev/urandom | base64` into a file, then cookie_secret: \"${{file:/path/to/it}}\""
            ),
        );
    }
    let session_ttl = v::duration(
        p,
        "login.session_ttl",
        l.session_ttl.as_ref(),
        DEFAULT_SESSION_TTL,
    );
    if let Some(uri) = &l.post_logout_redirect_uri {
        if !uri.starts_with('/') {
            v::http_url(p, "login.post_logout_redirect_uri", uri);
        } else if same_origin(uri).is_none() {
            p.add(
                "login.post_logout_redirect_uri",
                "must be an absolute http(s) URL or a path starting with a single /",
            );
        }
    }
    let mut extra_params = Vec::new();
    for (k, val) in l.extra_params.iter().flatten() {
        if OWN_PARAMS.contains(&k.as_str()) {
            p.add(
                format!("login.extra_params.{k}"),
                format!("\"{k}\" is set by tollgate"),
            );
        }
        extra_params.push((k.clone(), val.clone()));
    }
    let cookie_secure = l.cookie_secure.unwrap_or(true);
    if p.errors.len() != before {
        return None;
    }
    if !cookie_secure {
        p.warn(
            "login.cookie_secure",
            "false: session cookies go over plain HTTP; use it only for local development",
        );
    }
    Some(Arc::new(Login::new(LoginSettings {
        id_tokens: id_tokens?,
        client_id,
        client_secret: l.client_secret.clone(),
        scopes,
        callback_path,
        logout_path,
        cookie_secret,
        cookie_secure,
        session_ttl,
        post_logout_redirect_uri: l.post_logout_redirect_uri.clone(),
        extra_params,
    })))
}

/// A path tollgate serves itself: absolute and normalised.
fn own_path(p: &mut Problems, key: &str, given: Option<&str>, default: &str) -> String {
    let path = given.unwrap_or(default).to_owned();
    if !path.starts_with('/') || normalize_path(&path).ok().as_deref() != Some(path.as_str()) {
        p.add(
            format!("login.{key}"),
            format!("\"{path}\" must be a normalised absolute path like {default}"),
        );
    }
    path
}

/// The issuer that verifies ID tokens: the named issuer's keys and `iss`, with the
/// client id as the audience.
fn id_token_issuer(
    l: &LoginModel,
    m: &ConfigModel,
    issuers: &[Arc<Issuer>],
    p: &mut Problems,
) -> Option<Issuer> {
    let name = l.issuer.as_deref()?;
    let Some(model) = m.issuers.values().find(|i| i.name.as_deref() == Some(name)) else {
        // An issuers entry that could not be read may be this one (its problem says why).
        if m.issuers.has_holes() {
            return None;
        }
        let known: Vec<&str> = m
            .issuers
            .values()
            .filter_map(|i| i.name.as_deref())
            .collect();
        let hint = v::suggest(name, &known)
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default();
        p.add("login.issuer", format!("unknown issuer \"{name}\"{hint}"));
        return None;
    };
    if model.discovery.is_none() {
        p.add(
            "login.issuer",
            format!(
                "issuer \"{name}\" has no `discovery:`; sign-in takes the authorization, token and end-session endpoints from the discovery document"
            ),
        );
        return None;
    }
    // An issuer with problems of its own is not compiled (they are reported already).
    let issuer = issuers.iter().find(|i| *i.name == *name)?;
    let IssuerKind::Jwt(store) = &issuer.kind else {
        return None;
    };
    if !matches!(store.source, KeySource::Discovery(_)) {
        return None;
    }
    let client_id = l.client_id.clone().unwrap_or_default();
    let fingerprint = Sha256::digest(format!("id-token\n{}\n{}", issuer.issuer, client_id)).into();
    Some(Issuer {
        name: issuer.name.clone(),
        issuer: issuer.issuer.clone(),
        kind: IssuerKind::Jwt(store.clone()),
        audiences: vec![client_id],
        skip_audience_check: false,
        algorithms: issuer.algorithms.clone(),
        leeway: issuer.leeway,
        scope_claims: issuer.scope_claims.clone(),
        client_claims: issuer.client_claims.clone(),
        sender_constraint: Default::default(),
        dpop: Default::default(),
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{load_str, Registry};

    const BASE: &str = r#"server:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
issuers:
  - name: corp
    issuer: "https://idp.example"
    discovery: "http://127.0.0.1:1/.well-known/openid-configuration"
    audiences: [api]
  - name: keys-only
    issuer: "https://other.example"
    jwks_uri: "http://127.0.0.1:1/jwks"
    audiences: [api]
token_service:
  issuer: "https://gw.example"
  audience: api
upstreams:
  - name: u
    url: "http://127.0.0.1:9"
routes:
  - name: dash
    path_prefix: /dash
    upstream: u
    auth: {login: true}
"#;

    fn problems(yaml: &str) -> String {
        match load_str(yaml, "g.yaml", Path::new("."), &Registry::default()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    // Behaviour: a complete `login:` section compiles; its paths are served by tollgate.
    #[test]
    fn a_login_section_compiles() {
        let yaml = format!(
            "{BASE}login:\n  issuer: corp\n  client_id: web\n  cookie_secret: \"{}\"\n",
            "s".repeat(32)
        );
        let rt = load_str(&yaml, "g.yaml", Path::new("."), &Registry::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let l = rt.login.as_ref().expect("login");
        assert!(l.serves("/oauth2/callback") && l.serves("/oauth2/logout"));
        assert!(!l.serves("/dash"));
        assert!(l.cookie_secure);
        assert_eq!(l.scope, "openid");
        assert_eq!(l.session_ttl, super::DEFAULT_SESSION_TTL);
        assert!(rt.routes[0].login);
        // The secret never shows in GET /admin/config.
        let shown = rt.redacted.json().to_string();
        assert!(!shown.contains(&"s".repeat(32)), "{shown}");
    }

    // Behaviour: everything that cannot work is a located validation error: login: true
    // without a login section, login on the admin API, an unknown issuer (with a hint),
    // an issuer without discovery, a short cookie_secret (its value never shown), scopes
    // without openid, paths that collide with a route or the token service or each other,
    // parameters tollgate sets itself, a foreign post-logout address.
    #[test]
    fn what_cannot_work_is_refused() {
        let text = problems(&BASE.replace(
            "  admin_listen: \"127.0.0.1:0\"\n",
            "  admin_listen: \"127.0.0.1:0\"\n  admin_auth: {login: true}\n",
        ));
        assert!(
            text.contains("routes[0].auth.login: login: true needs a top-level `login:` section"),
            "{text}"
        );
        assert!(
            text.contains(
                "server.admin_auth.login: browser sign-in does not apply to the admin API"
            ),
            "{text}"
        );

        let text = problems(&format!(
            "{BASE}login:\n  issuer: corpp\n  client_id: web\n  cookie_secret: \"{}\"\n",
            "s".repeat(32)
        ));
        assert!(
            text.contains("login.issuer: unknown issuer \"corpp\" (did you mean \"corp\"?)"),
            "{text}"
        );

        let text = problems(&format!(
            "{BASE}login:\n  issuer: keys-only\n  client_id: web\n  cookie_secret: \"{}\"\n",
            "s".repeat(32)
        ));
        assert!(
            text.contains("login.issuer: issuer \"keys-only\" has no `discovery:`"),
            "{text}"
        );

        let text = problems(&format!(
            "{BASE}  - name: cb\n    path_prefix: /sso/callback\n    upstream: u\n    auth: none\nlogin:\n  issuer: corp\n  client_id: \"web app\"\n  client_secret: \"\"\n  scopes: [profile]\n  callback_path: /sso/callback\n  logout_path: /oauth2/token\n  cookie_secret: \"short-secret-31-bytes-long-xxxx\"\n  extra_params: {{nonce: x, resource: \"https://api\"}}\n  post_logout_redirect_uri: \"//evil.example\"\n  session_ttl: 0s\n"
        ));
        for expected in [
            "login.client_id: must be a non-empty client id without spaces",
            "login.client_secret: must not be empty (leave the key out for a public client)",
            "login.scopes: must include openid",
            "login.callback_path: route \"cb\" has the same path",
            "login.logout_path: /oauth2/token is a path of the token service",
            "login.cookie_secret: must be at least 32 bytes (it has 31)",
            "login.extra_params.nonce: \"nonce\" is set by tollgate",
            "login.post_logout_redirect_uri: must be an absolute http(s) URL or a path",
            "login.session_ttl: duration must be greater than zero",
        ] {
            assert!(text.contains(expected), "{expected}\n{text}");
        }
        assert!(
            !text.contains("short-secret"),
            "the secret is shown: {text}"
        );
        assert!(text.contains("g.yaml:"), "located: {text}");

        let text = problems(&format!(
            "{BASE}login:\n  issuer: corp\n  client_id: web\n  cookie_secret: \"{}\"\n  callback_path: /same\n  logout_path: /same\n",
            "s".repeat(32)
        ));
        assert!(
            text.contains("login.logout_path: must differ from callback_path"),
            "{text}"
        );
        let text = problems(&format!(
            "{BASE}login:\n  issuer: corp\n  client_id: web\n  cookie_secret: \"{}\"\n  callback_path: oauth2/cb\n",
            "s".repeat(32)
        ));
        assert!(
            text.contains("login.callback_path: \"oauth2/cb\" must be a normalised absolute path"),
            "{text}"
        );
        let text = problems(&format!(
            "{BASE}login:\n  issuer: corp\n  client_id: web\n  cookie_secret: \"{}\"\n  cookie_secrett: x\n",
            "s".repeat(32)
        ));
        assert!(
            text.contains("unknown key \"cookie_secrett\" (did you mean \"cookie_secret\"?)"),
            "{text}"
        );
    }
}
