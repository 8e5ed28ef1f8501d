//! tollgate: an OAuth2-aware reverse-proxy API gateway.
//!
//! Read `stack.rs` first: it lists the request path in order and names the module
//! for each step. [`start`] binds the listeners for a loaded [`Gateway`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_auth;
pub mod admin_ui;
pub mod auth;
pub mod authorizer;
pub mod balancer;
pub mod body;
pub mod cache;
pub mod claims;
pub mod client;
pub mod config;
pub mod conn;
pub mod cors;
pub mod credentials;
pub mod decision;
pub mod decisions;
pub mod discovery;
pub mod dns;
pub mod drain;
pub mod encoding;
pub mod error;
pub mod explain;
pub mod gate;
pub mod gateway;
pub mod grpc;
pub mod health;
pub mod healthcheck;
pub mod identity;
pub mod init;
pub mod layer;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod otel;
pub mod outbound;
pub mod parse_errors;
pub mod policy;
pub mod policy_test;
pub mod proxy;
pub mod ratelimit;
pub mod request_id;
pub mod route;
pub mod runtime;
pub mod secret;
pub mod sensitive;
pub mod service;
pub mod session;
pub mod stack;
#[cfg(test)]
mod testing;
pub mod timer;
pub mod tls;
pub mod token_service;
pub mod trace_context;
pub mod upgrade;
pub mod upstream;
pub mod upstream_session;
pub mod watch;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

pub use gateway::Gateway;

/// A started gateway: the addresses it listens on and a way to stop it.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub public: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub redirect: Option<SocketAddr>,
    /// The decision service's listener (`server.decision_listen`).
    pub decision: Option<SocketAddr>,
    shutdown: tokio_watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to `request_timeout`).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // Open admin pages' event streams end, so that they do not hold shutdown up.
        self.gateway.decisions.close();
        self.gateway.stop_background();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds every listener, starts issuer key fetches and the config watcher.
pub async fn start(gw: Arc<Gateway>) -> std::io::Result<Running> {
    let rt = gw.current();
    let (tx, rx) = tokio_watch::channel(false);
    let mut tasks = Vec::new();
    let public = listener::bind(rt.server.listen).await?;
    let public_addr = public.local_addr()?;
    let admin = match rt.server.admin_listen {
        Some(a) => Some(listener::bind(a).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    let redirect = match rt.server.redirect_listen {
        Some(a) => Some(listener::bind(a).await?),
        None => None,
    };
    let redirect_addr = redirect.as_ref().map(|l| l.local_addr()).transpose()?;
    let decision = match rt.server.decision_listen {
        Some(a) => Some(listener::bind(a).await?),
        None => None,
    };
    let decision_addr = decision.as_ref().map(|l| l.local_addr()).transpose()?;

    gw.start_background();
    tasks.push(tokio::spawn(listener::serve_public(
        gw.clone(),
        public,
        rx.clone(),
    )));
    if let Some(l) = admin {
        tasks.push(tokio::spawn(listener::serve(
            gw.clone(),
            l,
            false,
            listener::Serving::Other,
            rx.clone(),
            admin::service(gw.clone()),
        )));
    }
    if let Some(l) = redirect {
        tasks.push(tokio::spawn(listener::serve_redirect(
            gw.clone(),
            l,
            rx.clone(),
        )));
    }
    if let Some(l) = decision {
        tasks.push(tokio::spawn(listener::serve(
            gw.clone(),
            l,
            false,
            listener::Serving::Requests,
            rx.clone(),
            authorizer::service(&gw),
        )));
    }
    watch::spawn(gw.clone(), rx.clone());
    gw.listeners_up.store(true, Ordering::Release);
    tracing::info!(
        public = %public_addr,
        admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        redirect = %redirect_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        decision = %decision_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        tls = rt.server.tls.is_some(),
        routes = rt.routes.len(),
        "tollgate listening"
    );
    Ok(Running {
        gateway: gw,
        public: public_addr,
        admin: admin_addr,
        redirect: redirect_addr,
        decision: decision_addr,
        shutdown: tx,
        tasks,
    })
}
