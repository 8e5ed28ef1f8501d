//! The `routes:` section: path prefix (and hosts) -> upstream, with the route's auth
//! rule, endpoint/method permissions, CORS, body-credentials, cookie and rate-limit
//! settings. Compiles to
//! [`Route`]s and the [`RouteTable`] that matches each request to one of them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::claims::ClaimsModel;
use super::refs::Refs;
use super::validate::{self as v, At, Problems};
use super::yaml::{section, DurationText, List};
use super::{auth, cors, ratelimit, upstream_session, AuthBlockModel, CorsModel, RouteAuthModel};
use crate::credentials::UpstreamAuth;
use crate::policy::{Permission, Permissions, RouteAuth};
use crate::route::{normalize_path, HostPattern, RouteTable};
use crate::runtime::{BodyCredentials, Route, WebSocket};
use crate::upstream::Upstream;

section! {
    pub struct RouteModel {
        /// The route's name (in logs, metrics and explain).
        "name" => pub name: Option<String> as required(),
        /// The path this route serves, on a segment boundary: /api matches /api/x, not /apix.
        "path_prefix" => pub path_prefix: Option<String> as required(),
        /// `false`: the prefix and the route's permissions match ignoring ASCII case, so
        /// that every spelling of the path meets this route's gates (Envoy's
        /// `case_sensitive`). For backends that ignore case (IIS, SAP ICF): without it,
        /// `/ADMIN/x` is not this route's. Default true.
        "case_sensitive" => pub case_sensitive: Option<bool>,
        /// Only for these Host names (default any).
        "hosts" => pub hosts: Option<List<String>> as restricting(),
        /// The `upstreams[].name` requests are forwarded to (not used when tollgate is
        /// embedded in an application).
        "upstream" => pub upstream: Option<String> as required(),
        "auth" => pub auth: Option<RouteAuthModel> as required(),
        /// Per endpoint and method: the scopes (and claims) a token needs; a request that
        /// no entry matches is denied.
        "permissions" => pub permissions: Option<List<PermissionModel>> as restricting(),
        /// Cross-origin requests from browsers (answered by tollgate).
        "cors" => pub cors: Option<CorsModel>,
        /// `basic`: client credentials in the form body are moved to an Authorization header.
        "body_credentials" => pub body_credentials: Option<String> as choice(&["basic"]),
        /// With body_credentials: move `grant_type` from the body to the query string
        /// (SAP Cloud Integration's token URL wants it there).
        "grant_type_to_query" => pub grant_type_to_query: Option<bool>,
        /// Whether the client's `Cookie` header is withheld from the upstream (default: on
        /// for routes with a Bearer `auth` block, off for `auth: none` and `login` routes).
        "strip_cookies" => pub strip_cookies: Option<bool>,
        /// Names of `rate_limits` entries that count this route's requests.
        "rate_limits" => pub rate_limits: Option<List<String>> as restricting(),
        /// WebSocket upgrades are forwarded after the route's gates said yes
        /// (`websocket: {}` for the defaults).
        "websocket" => pub websocket: Option<WebSocketModel>,
    }
}

section! {
    /// A route's `websocket:` block: the upgrade is passed to the upstream after the
    /// route's auth and permissions said yes, then bytes flow both ways.
    pub struct WebSocketModel {
        /// Closed after this long with no data either way (default 5m).
        "idle_timeout" => pub idle_timeout: Option<DurationText>,
        /// Closed after this long whatever the traffic (default 24h).
        "max_duration" => pub max_duration: Option<DurationText>,
    }
}

section! {
    pub struct PermissionModel {
        /// The endpoint, under the route's path_prefix.
        "path" => pub path: Option<String> as required(),
        /// The methods this entry covers, or ["*"] for any.
        "methods" => pub methods: Option<List<String>> as required().schema(v::methods_schema()),
        /// The scopes a token needs (all of them).
        "scopes" => pub scopes: List<String> as restricting(),
        /// Claim values this endpoint requires besides the route's.
        "claims" => pub claims: Option<ClaimsModel> as restricting(),
    }
}

pub fn compile(
    ms: &List<RouteModel>,
    refs: &Refs,
    p: &mut Problems,
) -> (Vec<Arc<Route>>, RouteTable) {
    let mut routes = Vec::with_capacity(ms.len());
    let mut table = RouteTable::default();
    let mut names: HashSet<&str> = HashSet::with_capacity(ms.len());
    let all = At::Path("routes");
    for (i, m) in ms.iter() {
        // Key paths are written out only when a problem is reported.
        let path = all.index(i);
        match m.name.as_deref() {
            None => p.missing(path, "name", ""),
            Some(n) if n.trim().is_empty() => {
                p.add(path.key("name").to_string(), "route name must not be empty")
            }
            Some(n) if !names.insert(n) => p.add(
                path.key("name").to_string(),
                format!("duplicate route name \"{n}\""),
            ),
            Some(_) => {}
        }
        let Some((route, hosts)) = compile_one(m, path, refs, p) else {
            continue;
        };
        if !table.insert_with_case(
            &hosts,
            &route.path_prefix,
            routes.len(),
            route.case_sensitive,
        ) {
            p.add(
                path.key("path_prefix").to_string(),
                format!(
                    "another route already has path_prefix \"{}\" for the same hosts{}",
                    m.path_prefix.as_deref().unwrap_or_default(),
                    if route.case_sensitive {
                        ""
                    } else {
                        " (compared ignoring case: this route has case_sensitive: false)"
                    }
                ),
            );
        }
        routes.push(Arc::new(route));
    }
    case_warnings(ms, &routes, p);
    (routes, table)
}

/// A route with `case_sensitive: false` says its upstream ignores case. Another route to
/// the same upstream that is case-sensitive can then be reached in another spelling
/// through a shorter route's prefix (`/ADMIN/x` through `/`): warned where both are seen.
///
/// Linear in the number of routes (milliseconds for 10,000 of them): the
/// routes are indexed by name and by (upstream, prefix), and only the shorter prefixes
/// of each case-sensitive route's own are looked up.
fn case_warnings(ms: &List<RouteModel>, routes: &[Arc<Route>], p: &mut Problems) {
    // The first route per upstream that ignores case: the warning's witness.
    let mut ignoring: HashMap<&str, &Arc<Route>> = HashMap::new();
    for r in routes.iter().filter(|r| !r.case_sensitive) {
        if let Some(u) = &r.upstream {
            ignoring.entry(&*u.name).or_insert(r);
        }
    }
    if ignoring.is_empty() {
        return;
    }
    let mut by_name: HashMap<&str, &Arc<Route>> = HashMap::with_capacity(routes.len());
    // (upstream, prefix without its trailing `/`) -> the first route with it.
    let mut by_prefix: HashMap<(&str, &str), usize> = HashMap::with_capacity(routes.len());
    for (n, r) in routes.iter().enumerate() {
        by_name.entry(&*r.name).or_insert(r);
        if let Some(u) = &r.upstream {
            by_prefix
                .entry((&*u.name, r.path_prefix.trim_end_matches('/')))
                .or_insert(n);
        }
    }
    for (i, m) in ms.iter() {
        let Some(r) = m
            .name
            .as_deref()
            .and_then(|n| by_name.get(n))
            .filter(|r| r.case_sensitive)
        else {
            continue;
        };
        let Some(up) = r.upstream.as_ref().map(|u| &*u.name) else {
            continue;
        };
        let Some(witness) = ignoring.get(up) else {
            continue;
        };
        // A shorter route (any case rule) whose prefix covers this one's, to the same
        // upstream, is where another spelling of this prefix would go: the first such
        // route in the file.
        let inner = r.path_prefix.trim_end_matches('/');
        let covered_by = inner
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'/')
            .filter_map(|(j, _)| by_prefix.get(&(up, &inner[..j])).copied())
            .min();
        let Some(covered_by) = covered_by.map(|n| &routes[n]) else {
            continue;
        };
        p.warn(
            format!("routes[{i}].path_prefix"),
            format!(
                "route \"{}\" is case-sensitive, but route \"{}\" says upstream \"{up}\" ignores case (case_sensitive: false): another spelling of \"{}\" would go to it through route \"{}\"; set case_sensitive: false here too",
                r.name, witness.name, r.path_prefix, covered_by.name
            ),
        );
    }
}

fn compile_one(
    m: &RouteModel,
    path: At,
    refs: &Refs,
    p: &mut Problems,
) -> Option<(Route, Vec<HostPattern>)> {
    // A missing or invalid prefix is reported, and the rest of the route is still
    // checked (as if it were `/`), so that one run of `validate` shows every problem.
    let checked = prefix(m.path_prefix.as_deref(), path, p);
    let usable = checked.is_some();
    let prefix = checked.unwrap_or_else(|| "/".to_owned());
    let case_sensitive = m.case_sensitive.unwrap_or(true);
    let upstream = upstream(m.upstream.as_deref(), path, refs, p);
    let auth = route_auth(m.auth.as_ref(), path, refs, p);
    let permissions = m.permissions.as_ref().map(|list| {
        if matches!(auth, RouteAuth::None) && m.auth.is_some() {
            p.add(
                path.key("permissions").to_string(),
                "permissions need an auth block (they are checked against the token)",
            );
        }
        let written = m.path_prefix.as_deref().unwrap_or_default();
        let perms = permissions(list, (&prefix, written), path.key("permissions"), refs, p);
        if case_sensitive {
            perms
        } else {
            perms.ignoring_case()
        }
    });
    let cors = m
        .cors
        .as_ref()
        .and_then(|c| cors::compile(c, path.key("cors"), refs.extension_methods, p));
    let body_credentials = body_credentials(m, path, p);
    let hosts = hosts(m.hosts.as_ref(), path.key("hosts"), p);
    if let (RouteAuth::None, Some(u)) = (&auth, &upstream) {
        if matches!(u.auth, Some(UpstreamAuth::OnBehalf(_))) && m.auth.is_some() {
            p.add(
                path.key("auth").to_string(),
                format!("upstream \"{}\" passes on the caller's identity (token_exchange / jwt_bearer): the route needs an auth block, not `auth: none`", u.name),
            );
        }
    }
    let login = matches!(&m.auth, Some(RouteAuthModel::Block(b)) if b.login == Some(true));
    let strip_cookies = upstream_session::strip_cookies(
        m.strip_cookies,
        matches!(auth, RouteAuth::Bearer(_)),
        login,
    );
    let rate_limits = ratelimit::route_limits(
        refs.limits,
        m.rate_limits.as_ref(),
        matches!(auth, RouteAuth::None),
        path,
        p,
    );
    let websocket = m
        .websocket
        .as_ref()
        .map(|w| websocket(w, path.key("websocket"), p));
    let route = Route {
        name: m.name.as_deref().unwrap_or_default().into(),
        path_prefix: prefix,
        case_sensitive,
        upstream,
        auth,
        permissions,
        cors,
        body_credentials,
        strip_cookies,
        rate_limits,
        login,
        websocket,
        series: Default::default(),
    };
    usable.then_some((route, hosts))
}

/// The normalised prefix (`None` when there is none to match on).
fn prefix(prefix: Option<&str>, path: At, p: &mut Problems) -> Option<String> {
    let Some(written) = prefix else {
        p.missing(path, "path_prefix", " (e.g. path_prefix: /api)");
        return None;
    };
    let at = || path.key("path_prefix").to_string();
    match normalize_path(written) {
        Ok(n) if n.trim_end_matches('/') == written.trim_end_matches('/') => Some(n),
        Ok(n) => {
            p.add(
                at(),
                format!(
                    "path_prefix is not normalised; write \"{}\"",
                    n.trim_end_matches('/')
                ),
            );
            Some(n)
        }
        Err(e) => {
            p.add(at(), format!("invalid path_prefix \"{written}\": {}", e.0));
            None
        }
    }
}

/// The route's upstream. An upstream the file declares that has problems of its own
/// is not reported again here.
fn upstream(name: Option<&str>, path: At, refs: &Refs, p: &mut Problems) -> Option<Arc<Upstream>> {
    let Some(name) = name else {
        // Embedded in an application (`tollgate::layer`): the application is the upstream.
        if !refs.embedded {
            p.missing(path, "upstream", "");
        }
        return None;
    };
    if let Some(u) = refs.upstreams.get(name) {
        return Some(Arc::clone(u));
    }
    if !refs.upstream_declared(name) {
        let hint = v::suggest(name, &refs.upstream_names)
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default();
        p.add(
            path.key("upstream").to_string(),
            format!("unknown upstream \"{name}\"{hint}"),
        );
    }
    None
}

fn route_auth(a: Option<&RouteAuthModel>, path: At, refs: &Refs, p: &mut Problems) -> RouteAuth {
    match a {
        None => {
            p.missing(
                path,
                "auth",
                ": give an auth block, or `auth: none` for a public route",
            );
            RouteAuth::None
        }
        Some(RouteAuthModel::Keyword(k)) if k == "none" => RouteAuth::None,
        Some(RouteAuthModel::Keyword(k)) => {
            p.add(
                path.key("auth").to_string(),
                format!("auth must be `none` or a block, got \"{k}\""),
            );
            RouteAuth::None
        }
        Some(RouteAuthModel::Block(b)) => block(b, path, refs, p),
    }
}

fn block(b: &AuthBlockModel, path: At, refs: &Refs, p: &mut Problems) -> RouteAuth {
    RouteAuth::Bearer(auth::compile(b, refs, path.key("auth"), p))
}

/// `prefix`: the route's path prefix (normalised, as written).
fn permissions(
    list: &List<PermissionModel>,
    (prefix, written): (&str, &str),
    all: At,
    refs: &Refs,
    p: &mut Problems,
) -> Permissions {
    let under = prefix.trim_end_matches('/');
    let mut entries = Vec::with_capacity(list.len());
    for (j, pm) in list.iter() {
        let ppath = all.index(j);
        let Some(ppath_s) = pm.path.as_deref() else {
            p.missing(ppath, "path", "");
            continue;
        };
        let methods = permission_methods(pm.methods.as_ref(), ppath, refs, p);
        let spath = ppath.key("scopes");
        for (k, s) in pm.scopes.iter() {
            v::token_word(p, spath.index(k), s, "scope");
        }
        let inside = ppath_s == under
            || ppath_s
                .strip_prefix(under)
                .is_some_and(|rest| rest.starts_with('/'))
            || under.is_empty();
        if !inside {
            p.add(
                ppath.key("path").to_string(),
                format!(
                    "\"{ppath_s}\" is outside the route's path_prefix \"{written}\" and can never match"
                ),
            );
        }
        let claims = super::claims::compile(pm.claims.as_ref(), ppath.key("claims"), p);
        match Permission::new(ppath_s, methods, pm.scopes.to_vec()) {
            Ok(e) => entries.push(e.with_claims(claims)),
            Err(e) => p.add(ppath.key("path").to_string(), e),
        }
    }
    Permissions::new(entries)
}

/// `None` for `["*"]` (any method).
fn permission_methods(
    methods: Option<&List<String>>,
    ppath: At,
    refs: &Refs,
    p: &mut Problems,
) -> Option<Vec<http::Method>> {
    let mpath = ppath.key("methods");
    let Some(methods) = methods else {
        p.missing(ppath, "methods", " (a list of methods, or [\"*\"] for any)");
        return Some(Vec::new());
    };
    if methods.values().any(|x| x == "*") {
        return None;
    }
    if methods.is_empty() {
        p.add(mpath.to_string(), "list at least one method (or \"*\")");
    }
    Some(
        methods
            .iter()
            .filter_map(|(k, s)| v::method(p, mpath.index(k), s, refs.extension_methods))
            .collect(),
    )
}

fn websocket(w: &WebSocketModel, path: At, p: &mut Problems) -> WebSocket {
    let idle = v::duration(
        p,
        path.key("idle_timeout"),
        w.idle_timeout.as_ref(),
        WebSocket::DEFAULT_IDLE,
    );
    let max = v::duration(
        p,
        path.key("max_duration"),
        w.max_duration.as_ref(),
        WebSocket::DEFAULT_MAX,
    );
    if idle > max {
        p.add(
            path.key("idle_timeout").to_string(),
            "idle_timeout is longer than max_duration and could never apply",
        );
    }
    WebSocket {
        idle_timeout: idle,
        max_duration: max,
    }
}

fn body_credentials(m: &RouteModel, path: At, p: &mut Problems) -> Option<BodyCredentials> {
    let out = match m.body_credentials.as_deref() {
        None => None,
        Some("basic") => Some(BodyCredentials {
            grant_type_to_query: m.grant_type_to_query.unwrap_or(false),
        }),
        Some(o) => {
            p.add(
                path.key("body_credentials").to_string(),
                format!("unknown body_credentials \"{o}\": the only value is basic"),
            );
            None
        }
    };
    if m.grant_type_to_query.is_some() && m.body_credentials.is_none() {
        p.add(
            path.key("grant_type_to_query").to_string(),
            "only applies together with body_credentials: basic",
        );
    }
    out
}

fn hosts(list: Option<&List<String>>, hpath: At, p: &mut Problems) -> Vec<HostPattern> {
    let Some(list) = list else {
        return Vec::new();
    };
    if list.is_empty() {
        p.add(
            hpath.to_string(),
            "empty hosts list: leave the key out to match every host",
        );
    }
    list.iter()
        .filter_map(|(j, h)| {
            let ok = !h.is_empty()
                && (h.strip_prefix("*.").unwrap_or(h))
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                p.add(
                    hpath.index(j).to_string(),
                    format!("invalid host \"{h}\": use \"api.company.com\" or \"*.company.com\""),
                );
                return None;
            }
            Some(HostPattern::parse(h))
        })
        .collect()
}
