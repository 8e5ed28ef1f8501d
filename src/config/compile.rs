//! Stage 3 of 3: the model -> the runtime model, section by section in dependency
//! order (issuers and upstreams before the routes that name them), checking as it goes.
//!
//! Every check records a problem with its key path and carries on, so one run reports
//! everything wrong with the file; only when no error was recorded is the result used.
//! Compiling has no side effects: it reads the files a config names but never writes
//! one (a signing key to create is handed to `tollgate run` in
//! [`Runtime::create_key_file`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::model::ConfigModel;
use super::refs::Refs;
use super::registry::Registry;
use super::subst::resolve_path;
use super::validate::Problems;
use super::{admin_auth, issuers, login, ratelimit, routes, server, token_service, upstreams};
use crate::runtime::Runtime;

pub fn compile(m: &ConfigModel, base: &Path, reg: &Registry, p: &mut Problems) -> Option<Runtime> {
    let server_model = m.server.as_ref();
    let server = server::compile(server_model, base, p);
    let extension_methods = server::extension_methods(server_model, p);
    let limits = ratelimit::compile(m.stores.as_ref(), &m.rate_limits, &reg.rate_limit_stores, p);
    let mut issuers = issuers::compile(&m.issuers, m.token_service.is_some(), &limits, reg, p);
    let token_service = m
        .token_service
        .as_ref()
        .and_then(|t| token_service::compile(t, base, reg, &limits, p));
    if let Some((ts, _)) = &token_service {
        issuers.push(token_service::local_issuer(ts, &limits));
    }
    let upstreams = upstreams::compile(&m.upstreams, base, reg, p);
    let refs = Refs {
        issuers: &issuers,
        issuer_names: m
            .issuers
            .values()
            .filter_map(|i| i.name.as_deref())
            .collect(),
        issuers_complete: !m.issuers.has_holes() && !p.has("issuers"),
        has_token_service: m.token_service.is_some(),
        upstreams: upstreams.iter().map(|u| (&*u.name, u)).rev().collect(),
        upstream_names: m
            .upstreams
            .values()
            .filter_map(|u| u.name.as_deref())
            .collect(),
        upstreams_complete: !m.upstreams.has_holes() && !p.has("upstreams"),
        extension_methods: &extension_methods,
        embedded: reg.embedded,
        limits: &limits,
    };
    let (routes, table) = routes::compile(&m.routes, &refs, p);
    if let Some((ts, _)) = &token_service {
        token_service::check_path_is_free(ts, &routes, &table, p);
    }
    let login = login::compile(
        m,
        &issuers,
        &routes,
        token_service.as_ref().map(|(ts, _)| &**ts),
        p,
    );
    let admin_auth = server_model
        .and_then(|s| s.admin_auth.as_ref())
        .map(|b| admin_auth::compile(b, &refs, p));
    let tracing = super::tracing::compile(m.tracing.as_ref(), p);
    let decision = super::decision::compile(
        m.decision.as_ref(),
        server.as_ref().is_some_and(|s| s.decision_listen.is_some()),
        p,
    );
    let mut server = server?;
    if admin_auth.is_some() && server.admin_listen.is_none() {
        p.add("server.admin_auth", "admin_auth needs admin_listen");
    }
    server.admin_auth = admin_auth.flatten().map(Arc::new);
    if !p.is_empty() {
        return None;
    }
    let (token_service, create_key_file) = match token_service {
        Some((ts, new_key)) => (Some(ts), new_key),
        None => (None, None),
    };
    Some(Runtime {
        version: 0,
        hash: String::new(),
        loaded_at: std::time::SystemTime::now(),
        path: Default::default(),
        server,
        routes,
        table,
        issuers,
        upstreams,
        token_service,
        login,
        files: model_files(m, base),
        tracing,
        decision,
        redacted: Default::default(),
        create_key_file,
    })
}

/// Files named by the model (TLS material, CAs, the signing key): a change to any of
/// them reloads the config.
fn model_files(m: &ConfigModel, base: &Path) -> Vec<PathBuf> {
    let mut f: Vec<&str> = Vec::new();
    if let Some(t) = m.server.as_ref().and_then(|s| s.tls.as_ref()) {
        f.extend(t.cert.as_deref());
        f.extend(t.key.as_deref());
        f.extend(t.client_ca.as_deref());
        for s in t.sni.values() {
            f.extend(s.cert.as_deref());
            f.extend(s.key.as_deref());
        }
    }
    f.extend(m.upstreams.values().filter_map(|u| u.ca.as_deref()));
    f.extend(
        m.token_service
            .as_ref()
            .and_then(|t| t.signing_key.as_deref()),
    );
    f.into_iter().map(|p| resolve_path(base, p)).collect()
}
