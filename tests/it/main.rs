//! Integration tests: real sockets on 127.0.0.1:0, real upstreams and identity
//! providers, real HTTP clients. One test binary (faster to link).

mod admin_api;
mod admin_ui;
mod auth;
mod browser_admin;
mod browser_cors;
mod browser_login;
mod claims;
mod cli;
mod common;
mod cors;
mod deploy;
mod embed;
mod faults;
mod hostile;
mod login;
mod metrics;
mod oidc_e2e;
mod overload;
mod policy_tests;
mod props;
mod proxy;
mod rate_limit_store;
mod rate_limits;
mod redis_server;
mod reload;
mod reload_perf;
mod routing;
mod sap;
mod tls;
mod token_service;
mod traces;
mod upstream_credentials;
