//! `tollgate explain`: the decision trace a request would get — route, issuer,
//! signature, claims, client, scopes granted vs required, permission, final status.
//! It fetches issuer keys like the server does, and runs the same code.

use std::sync::Arc;

use http::Method;

use crate::auth::{self, IssuerKind, Trace};
use crate::config::{self, Registry};
use crate::error::GatewayError;
use crate::policy::{self, RouteAuth};
use crate::route::{normalize_host, normalize_path};

pub struct Explained {
    pub lines: Vec<String>,
    pub allowed: bool,
}

pub async fn explain(
    config_path: &std::path::Path,
    token: Option<&str>,
    method: &Method,
    url_path: &str,
    host: Option<&str>,
) -> Result<Explained, config::ConfigError> {
    let reg = Registry::default();
    let rt = config::load(config_path, &reg)?;
    let mut out = Vec::new();
    let deny = |out: &mut Vec<String>, e: &GatewayError| {
        out.push(format!(
            "result: DENY {} {}{}: {}",
            e.status().as_u16(),
            e.code(),
            e.deny_reason()
                .map(|r| format!(" (reason {})", r.as_str()))
                .unwrap_or_default(),
            e
        ));
        Explained {
            lines: std::mem::take(out),
            allowed: false,
        }
    };
    let raw = url_path.split('?').next().unwrap_or(url_path);
    out.push(format!(
        "request: {method} {url_path}{}",
        host.map(|h| format!(" (Host {h})")).unwrap_or_default()
    ));
    let path = match normalize_path(raw) {
        Ok(p) => p,
        Err(e) => {
            return Ok(deny(
                &mut out,
                &GatewayError::BadRequest(format!("invalid path: {}", e.0)),
            ))
        }
    };
    if path != raw {
        out.push(format!("normalised path: {path}"));
    }
    let host = host.map(normalize_host).unwrap_or_default();
    let Some(id) = rt.table.lookup(&host, &path) else {
        out.push("route: none matches".into());
        return Ok(deny(&mut out, &GatewayError::NotFound));
    };
    let route = rt.routes[id].clone();
    out.push(format!(
        "route: {} (path_prefix {}, upstream {})",
        route.name,
        route.path_prefix,
        route.upstream.as_ref().map(|u| &*u.name).unwrap_or("-")
    ));
    let RouteAuth::Bearer(rule) = &route.auth else {
        out.push("auth: none (public route)".into());
        out.push("result: ALLOW".into());
        return Ok(Explained {
            lines: out,
            allowed: true,
        });
    };
    let issuers: Vec<&Arc<auth::Issuer>> = rule
        .issuers
        .iter()
        .filter_map(|i| rt.issuers.get(*i))
        .collect();
    out.push(format!(
        "auth: issuers [{}], scopes required [{}], clients {}",
        issuers
            .iter()
            .map(|i| &*i.name)
            .collect::<Vec<_>>()
            .join(", "),
        rule.scopes.join(" "),
        rule.clients
            .as_ref()
            .map(|c| format!("[{}]", c.join(", ")))
            .unwrap_or_else(|| "any".into())
    ));
    let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(deny(
            &mut out,
            &GatewayError::Unauthorized {
                reason: crate::error::DenyReason::TokenMissing,
                description: "no Bearer token".into(),
            },
        ));
    };
    for i in &issuers {
        if let IssuerKind::Jwt(store) = &i.kind {
            store.refresh().await;
            out.push(format!(
                "issuer {}: {} key(s) loaded",
                i.name,
                store.keys().all.len()
            ));
            let generated = reg
                .generated_key
                .lock()
                .map(|g| g.is_some())
                .unwrap_or(false);
            if &*i.name == "local" && generated {
                out.push("note: token_service has no signing_key, so this run generated its own key; tokens from a running tollgate only verify here when signing_key is set".into());
            }
        }
    }
    let caches = auth::AuthCaches::default();
    let mut trace = Trace {
        enabled: true,
        lines: Vec::new(),
    };
    let result = auth::authenticate(&issuers, &caches, token, &mut trace).await;
    out.append(&mut trace.lines);
    let identity = match result {
        Ok(id) => id,
        Err(e) => return Ok(deny(&mut out, &e)),
    };
    out.push(format!(
        "identity: issuer {}, client {}, subject {}",
        identity.issuer,
        identity.client_id.as_deref().unwrap_or("-"),
        identity.subject.as_deref().unwrap_or("-")
    ));
    out.push(format!("scopes granted: [{}]", identity.scopes.join(" ")));
    let verdict = policy::authorize(rule, route.permissions.as_ref(), method, &path, &identity);
    match (&route.permissions, verdict.permission) {
        (None, _) => out.push("permissions: none on this route (route scopes decide)".into()),
        (Some(_), Some(p)) => out.push(format!(
            "permission: {} methods [{}] extra scopes [{}]",
            p.path,
            p.methods
                .as_ref()
                .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "*".into()),
            p.scopes.join(" ")
        )),
        (Some(_), None) => out.push("permission: no entry matches this path".into()),
    }
    match verdict.result {
        Ok(()) => {
            out.push("result: ALLOW".into());
            Ok(Explained {
                lines: out,
                allowed: true,
            })
        }
        Err(e) => Ok(deny(&mut out, &e)),
    }
}
