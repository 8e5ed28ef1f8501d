//! Active health checks of an upstream's endpoints (`upstreams[].health_check`): not on
//! the request path, beside it. One background task per endpoint sends `GET {path}` every
//! `interval` (on the endpoint's own pooled connections, with its `Host`); a 2xx answer
//! within `timeout` passes. `balancer.rs` turns runs of passes and failures into the
//! endpoint's verdict, which the balancer reads on every pick.
//!
//! The tasks belong to the config that started them: [`start`] runs when a config
//! begins to serve, and a reload stops the old config's tasks (`Endpoints::stop`, also
//! run when the config is dropped), so no task outlives its config. An endpoint that
//! joins later (an address of a name, `discovery.rs`) gets its check from
//! [`start_endpoint`]; one that leaves has its check stopped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, Request, Uri, Version};
use http_body_util::BodyExt;

use crate::balancer::{Endpoint, HealthCheck};
use crate::body::empty;
use crate::client::{send_h2, send_pooled, HttpClient, Wait};
use crate::upstream::{Protocol, Upstream};

/// Largest health answer read (to give the connection back); a longer one is cut off.
const MAX_BODY: usize = 64 * 1024;

/// Starts `up`'s health checks, once (a config that is already checking is left be).
pub fn start(up: &Upstream) {
    let Some(eps) = &up.endpoints else {
        return;
    };
    if eps.health_check.is_none() || eps.started.swap(true, Ordering::AcqRel) {
        return;
    }
    for ep in eps.list().iter() {
        start_endpoint(up, ep);
    }
}

/// Starts the health check of endpoint `ep` of `up`, unless it has one (or `up` has
/// none configured).
pub fn start_endpoint(up: &Upstream, ep: &Arc<Endpoint>) {
    let Some(hc) = up.endpoints.as_ref().and_then(|e| e.health_check.as_ref()) else {
        return;
    };
    let mut slot = ep.check.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_some() {
        return;
    }
    let task = tokio::spawn(run(
        up.name.clone(),
        ep.clone(),
        hc.clone(),
        up.client.clone(),
        up.protocol,
    ));
    *slot = Some(task.abort_handle());
}

/// Checks one endpoint every `interval` until aborted.
async fn run(
    upstream: Arc<str>,
    ep: Arc<Endpoint>,
    hc: Arc<HealthCheck>,
    client: HttpClient,
    protocol: Protocol,
) {
    let mut tick = tokio::time::interval(hc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = check(&ep, &hc, &client, protocol).await;
        if ep.state.check_result(result.is_ok(), &hc) {
            match &result {
                Ok(()) => tracing::info!(upstream = %upstream, endpoint = %ep.label,
                    "upstream endpoint passes its health check again"),
                Err(why) => tracing::warn!(upstream = %upstream, endpoint = %ep.label,
                    reason = %why, "upstream endpoint fails its health check"),
            }
        } else if let Err(why) = &result {
            tracing::debug!(upstream = %upstream, endpoint = %ep.label, reason = %why,
                "health check failed");
        }
    }
}

/// One check: `Ok` for a 2xx answer (its body read) within `timeout`.
async fn check(
    ep: &Endpoint,
    hc: &HealthCheck,
    client: &HttpClient,
    protocol: Protocol,
) -> Result<(), String> {
    let work = async {
        let status = match protocol {
            Protocol::Http1 => {
                let mut req = Request::get(Uri::from(hc.path.clone()))
                    .version(Version::HTTP_11)
                    .body(empty())
                    .map_err(|e| e.to_string())?;
                req.headers_mut().insert(header::HOST, ep.host.clone());
                let resp = send_pooled(ep.pool(client), req, Wait::upstream(hc.timeout))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = resp.status();
                drain(resp.into_body()).await;
                status
            }
            Protocol::H2 | Protocol::H2c => {
                let uri = Uri::builder()
                    .scheme(ep.scheme.clone())
                    .authority(ep.authority.clone())
                    .path_and_query(hc.path.clone())
                    .build()
                    .map_err(|e| e.to_string())?;
                let req = Request::get(uri)
                    .version(Version::HTTP_2)
                    .body(empty())
                    .map_err(|e| e.to_string())?;
                let resp = send_h2(ep.h2(client), req, Wait::upstream(hc.timeout))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = resp.status();
                drain(resp.into_body()).await;
                status
            }
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(hc.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
    }
}

/// Reads a small answer to its end (so an HTTP/1.1 connection goes back to the pool).
async fn drain<B>(body: B)
where
    B: http_body::Body,
    B::Error: Into<crate::body::BoxError>,
{
    let _ = http_body_util::Limited::new(body, MAX_BODY).collect().await;
}
