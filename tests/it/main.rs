//! Integration tests: real sockets on 127.0.0.1:0, real upstreams and identity
//! providers, real HTTP clients. One test binary (faster to link).

mod admin_ui;
mod auth;
mod browser_admin;
mod browser_cors;
mod browser_login;
mod cli;
mod common;
mod deploy;
mod embed;
mod faults;
mod hostile;
mod login;
mod oidc_e2e;
mod ops;
mod overload;
mod props;
mod proxy;
mod rate_limits;
mod ratelimit;
mod redis_server;
mod reload_perf;
mod sap;
mod token_service;
mod upstream_cors;
