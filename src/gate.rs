//! Steps 7 and 8 of the request path as one gate: authenticate the caller's Bearer
//! (or DPoP) token against the route's issuers (`auth`), hold a sender-constrained token
//! to its binding (DPoP proof or client certificate, `auth::sender`), then authorise it
//! (trusted clients, scopes, endpoint and method `permissions`), with SPEC's reason code
//! for whichever gate says no.
//!
//! The same [`Gate`] serves the proxy ([`GateLayer`] in `stack.rs`), `tollgate explain`
//! (the same layer, with a decision trace in the request), the admin API's
//! `admin_auth`, and the embeddable policy layer (`tollgate::layer`). A token verified
//! before costs one hash and one map lookup, decided inline; only a token not seen
//! before boxes a future (key fetch, signature check or introspection).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};

use crate::auth::replay::{self, Fresh, Mode};
use crate::auth::sender::{self, Presented, Scheme};
use crate::auth::{self, AuthCaches, Issuer};
use crate::body::Body;
use crate::conn::{ClientCert, ConnInfo};
use crate::decision;
use crate::error::{DenyReason, GatewayError, Rejection};
use crate::identity::Identity;
use crate::policy::{self, AuthRule, GateFacts, Permissions, RouteAuth};
use crate::route::layer::{routed, NormalPath, Routed};
use crate::runtime::Route;
use crate::service::{record, take_ready, OnOutcome, Outcome, Step, Then};

/// One Bearer rule, ready to decide requests.
pub struct Gate<'a> {
    /// Every issuer of the config; the rule names the ones it accepts by index.
    pub issuers: &'a [Arc<Issuer>],
    pub rule: &'a AuthRule,
    pub permissions: Option<&'a Permissions>,
    pub caches: &'a AuthCaches,
}

/// What the gate decided, with what it learnt on the way (for logs and `explain`).
pub struct Decision {
    pub identity: Option<Arc<Identity>>,
    pub permission: Option<Arc<str>>,
    pub result: Result<(), GatewayError>,
}

impl<'a> Gate<'a> {
    /// The gate of a route with a Bearer `auth` rule (`None` for `auth: none`).
    pub fn of(
        route: &'a Route,
        issuers: &'a [Arc<Issuer>],
        caches: &'a AuthCaches,
    ) -> Option<Self> {
        match &route.auth {
            RouteAuth::Bearer(rule) => Some(Gate {
                issuers,
                rule,
                permissions: route.permissions.as_ref(),
                caches,
            }),
            RouteAuth::None => None,
        }
    }

    fn accepted(&self) -> impl Iterator<Item = &Arc<Issuer>> + '_ {
        self.rule
            .issuers
            .iter()
            .filter_map(|i| self.issuers.get(*i))
    }

    /// The fast path: the identity of a token one of this rule's issuers verified
    /// before (and that has not expired), without waiting for anything.
    pub fn cached(&self, token: &str) -> Option<Arc<Identity>> {
        auth::cached(self.accepted(), self.caches, token)
    }

    /// Authenticates the token (cache, signature and claims, or introspection).
    pub async fn authenticate(
        &self,
        token: &str,
        trace: &mut auth::Trace,
    ) -> Result<Arc<Identity>, GatewayError> {
        let issuers: Vec<&Arc<Issuer>> = self.accepted().collect();
        auth::authenticate(&issuers, self.caches, token, trace).await
    }

    /// Checks the token's sender constraint (DPoP proof, client certificate) against
    /// what the request presented; `note` gets each step for `explain`. A DPoP proof
    /// that passed comes back as [`Fresh`], still to be checked for a replay
    /// ([`replay::check`] / [`replay::check_local`]).
    pub fn sender_check(
        &self,
        id: &Identity,
        presented: &Presented<'_>,
        note: &mut dyn FnMut(String),
    ) -> Result<Option<Fresh>, GatewayError> {
        let Some(issuer) = self.accepted().find(|i| i.name == id.issuer) else {
            return Ok(None);
        };
        let rule = sender::Rule {
            issuer: &issuer.name,
            iss: &issuer.issuer,
            leeway: issuer.leeway,
            constraint: issuer.sender_constraint,
            dpop: &issuer.dpop,
        };
        sender::check(rule, &id.claims.0, presented, auth::now_secs(), note)
    }

    /// Whether `id`'s token, presented with `scheme`, has no sender constraint to check
    /// ([`sender::nothing_to_check`], the same test [`sender_check`](Self::sender_check)
    /// starts with), so that what a check would look at need not be gathered.
    pub fn nothing_to_check(&self, id: &Identity, scheme: Scheme) -> bool {
        self.accepted()
            .find(|i| i.name == id.issuer)
            .is_none_or(|i| {
                sender::nothing_to_check(i.sender_constraint, &sender::cnf(&id.claims.0), scheme)
            })
    }

    /// Authorises a verified identity for `method` on the normalised `path`.
    pub fn authorize(&self, method: &Method, path: &str, id: Arc<Identity>) -> Decision {
        let verdict = policy::authorize(self.rule, self.permissions, method, path, &id);
        Decision {
            permission: verdict.permission.map(|p| p.path.clone()),
            identity: Some(id),
            result: verdict.result,
        }
    }

    /// Both steps, for callers outside the stack (the admin API): the whole decision.
    pub async fn check(&self, token: Option<&str>, method: &Method, path: &str) -> Decision {
        let Some(token) = token else {
            return Decision {
                identity: None,
                permission: None,
                result: Err(token_missing()),
            };
        };
        let id = match self.cached(token) {
            Some(id) => id,
            None => match self.authenticate(token, &mut auth::Trace::default()).await {
                Ok(id) => id,
                Err(e) => {
                    return Decision {
                        identity: None,
                        permission: None,
                        result: Err(e),
                    }
                }
            },
        };
        // No request here (the admin API): nothing can prove possession, so a
        // sender-constrained token is refused.
        let nothing = Presented {
            scheme: Scheme::Bearer,
            token,
            method: method.as_str(),
            htu: None,
            proof: Ok(None),
            client_cert: &ClientCert::None,
        };
        if let Err(e) = self.sender_check(&id, &nothing, &mut |_| {}).map(|_| ()) {
            return Decision {
                identity: Some(id),
                permission: None,
                result: Err(e),
            };
        }
        self.authorize(method, path, id)
    }
}

/// Checks the sender constraint of `id`'s token for `req`, noting each step; a DPoP
/// proof's replay check is left to the caller ([`Fresh`]).
fn sender_check<B>(
    req: &Request<B>,
    gate: &Gate<'_>,
    scheme: Scheme,
    token: &str,
    id: &Identity,
) -> Result<Option<Fresh>, GatewayError> {
    // The common case first (a Bearer token of an issuer without a sender constraint,
    // bound to nothing): answered before the request's DPoP header, URI and connection
    // are gathered.
    if gate.nothing_to_check(id, scheme) {
        return Ok(None);
    }
    let conn = req.extensions().get::<Arc<ConnInfo>>();
    let htu = match scheme {
        Scheme::Dpop => sender::target_uri(req.headers(), req.uri(), conn.is_some_and(|c| c.tls)),
        Scheme::Bearer => None,
    };
    let presented = Presented {
        scheme,
        token,
        method: req.method().as_str(),
        htu: htu.as_deref(),
        proof: sender::proof_header(req.headers()),
        client_cert: conn.map_or(&ClientCert::None, |c| &c.client_cert),
    };
    let trace = decision::of(req);
    gate.sender_check(id, &presented, &mut |line| {
        if let Some(t) = &trace {
            t.push(line)
        }
    })
}

/// Explain looks at a proof without using it up: a traced request's replay check is dry.
fn replay_mode<B>(req: &Request<B>) -> Mode {
    if decision::of(req).is_some() {
        Mode::Dry
    } else {
        Mode::Record
    }
}

/// The replay check of `fresh` for `req`, on this replica's set alone (no waiting).
fn replay_local<B>(
    req: &Request<B>,
    caches: &AuthCaches,
    fresh: &Fresh,
) -> Result<(), GatewayError> {
    let trace = decision::of(req);
    replay::check_local(
        &caches.dpop_replay,
        fresh,
        auth::now_secs(),
        replay_mode(req),
        &mut |line| {
            if let Some(t) = &trace {
                t.push(line)
            }
        },
    )
}

/// The replay check of `fresh`, Redis included when the issuer uses it (`trace` and
/// `mode` taken from the request before waiting).
async fn replay_shared(
    trace: Option<decision::Trace>,
    mode: Mode,
    caches: &AuthCaches,
    fresh: &Fresh,
) -> Result<(), GatewayError> {
    replay::check(
        &caches.dpop_replay,
        fresh,
        auth::now_secs(),
        mode,
        &mut |line| {
            if let Some(t) = &trace {
                t.push(line)
            }
        },
    )
    .await
}

/// The `DPoP` header is a credential for tollgate alone: once the gate has looked at
/// it, it is not forwarded (a proof names tollgate's URL and is good for one request).
fn strip_proof<B>(req: &mut Request<B>) {
    req.headers_mut().remove("dpop");
}

pub fn token_missing() -> GatewayError {
    GatewayError::Unauthorized {
        reason: DenyReason::TokenMissing,
        description: "no Bearer token in the Authorization header".into(),
    }
}

/// Runs the [`Gate`] of the matched route's `auth` rule; passes `auth: none` routes.
/// The verified [`Identity`] goes into the request's extensions for the layers below
/// (identity headers, rate-limit keys) and into the response's for the logs.
#[derive(Clone)]
pub struct GateLayer {
    caches: Arc<AuthCaches>,
}

impl GateLayer {
    /// `caches` outlive reloads (verified tokens, introspection results).
    pub fn new(caches: Arc<AuthCaches>) -> Self {
        GateLayer { caches }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = GateService<S>;
    fn layer(&self, inner: S) -> GateService<S> {
        GateService {
            inner,
            caches: self.caches.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GateService<S> {
    inner: S,
    caches: Arc<AuthCaches>,
}

/// On the way out: who the caller was and which permission entry applied.
pub struct RecordDecision {
    identity: Option<Arc<Identity>>,
    permission: Option<Arc<str>>,
}

impl OnOutcome for RecordDecision {
    fn on_outcome(self, out: Outcome) -> Outcome {
        if self.identity.is_none() && self.permission.is_none() {
            return out;
        }
        record(
            out,
            GateFacts {
                identity: self.identity,
                permission: self.permission,
            },
        )
    }
}

impl<S, B> tower::Service<Request<B>> for GateService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Then<S::Future, RecordDecision>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let nothing = || RecordDecision {
            identity: None,
            permission: None,
        };
        let (route, snapshot) = match routed(&req) {
            Some(Routed {
                route: Some(r),
                snapshot,
                ..
            }) if matches!(r.auth, RouteAuth::Bearer(_)) => (r.clone(), snapshot.clone()),
            Some(Routed { route: Some(_), .. }) => {
                decision::note(&req, || "auth: none (public route)".into());
                return Then::new(Step::inner(self.inner.call(req)), nothing());
            }
            _ => return Then::new(Step::inner(self.inner.call(req)), nothing()),
        };
        let Some(gate) = Gate::of(&route, &snapshot.issuers, &self.caches) else {
            unreachable!("a Bearer route, matched above")
        };
        decision::note(&req, || describe_rule(&gate));
        if sender::several_credentials(req.headers()) {
            decision::note(&req, || "token: more than one Authorization header".into());
            return Then::new(
                Step::reject(sender::several_credentials_refused()),
                nothing(),
            );
        }
        let Some((scheme, token)) = sender::presented_token(req.headers()) else {
            decision::note(&req, || "token: none".into());
            return Then::new(Step::reject(token_missing()), nothing());
        };
        let path = routed(&req).map_or(req.uri().path(), |r| r.path.as_str());
        // A cached token whose proof must still be checked in Redis (`Some`) goes on
        // to the boxed path below with what the fast path found.
        let mut known: Option<(Arc<Identity>, Fresh)> = None;
        if let Some(id) = gate.cached(token) {
            decision::note(&req, || {
                format!("verified-token cache: hit (issuer {})", id.issuer)
            });
            let fresh = match sender_check(&req, &gate, scheme, token, &id) {
                Ok(f) => f,
                Err(e) => {
                    let post = RecordDecision {
                        identity: Some(id),
                        permission: None,
                    };
                    return Then::new(Step::reject(e), post);
                }
            };
            match fresh {
                // The proof is checked against every replica's: wait for Redis.
                Some(fresh) if fresh.needs_redis() => known = Some((id, fresh)),
                fresh => {
                    if let Some(fresh) = fresh {
                        if let Err(e) = replay_local(&req, &self.caches, &fresh) {
                            let post = RecordDecision {
                                identity: Some(id),
                                permission: None,
                            };
                            return Then::new(Step::reject(e), post);
                        }
                    }
                    let d = gate.authorize(req.method(), path, id);
                    note_decision(&req, &gate, &d);
                    let post = RecordDecision {
                        identity: d.identity.clone(),
                        permission: d.permission.clone(),
                    };
                    return match d.result {
                        Ok(()) => {
                            if let Some(id) = d.identity {
                                req.extensions_mut().insert(id);
                            }
                            strip_proof(&mut req);
                            Then::new(Step::inner(self.inner.call(req)), post)
                        }
                        Err(e) => Then::new(Step::reject(e), post),
                    };
                }
            }
        }
        // The slow path: verify the token first (or, for a cached token, wait for the
        // shared replay check).
        let token = token.to_owned();
        let mut inner = take_ready(&mut self.inner);
        let caches = self.caches.clone();
        Then::new(
            Step::boxed(async move {
                let Some(gate) = Gate::of(&route, &snapshot.issuers, &caches) else {
                    unreachable!("a Bearer route, matched above")
                };
                let (id, checked) = match known {
                    Some((id, fresh)) => {
                        let (trace, mode) = (decision::of(&req), replay_mode(&req));
                        let checked = replay_shared(trace, mode, &caches, &fresh).await;
                        (id, checked)
                    }
                    None => {
                        let trace = decision::of(&req);
                        let mut lines = auth::Trace {
                            enabled: trace.is_some(),
                            lines: Vec::new(),
                        };
                        let verified = gate.authenticate(&token, &mut lines).await;
                        if let Some(t) = &trace {
                            lines.lines.into_iter().for_each(|l| t.push(l));
                        }
                        let id = verified?;
                        let checked = match sender_check(&req, &gate, scheme, &token, &id) {
                            Ok(Some(fresh)) => {
                                let (trace, mode) = (decision::of(&req), replay_mode(&req));
                                replay_shared(trace, mode, &caches, &fresh).await
                            }
                            Ok(None) => Ok(()),
                            Err(e) => Err(e),
                        };
                        (id, checked)
                    }
                };
                if let Err(e) = checked {
                    return RecordDecision {
                        identity: Some(id),
                        permission: None,
                    }
                    .on_outcome(Err(e.into()));
                }
                // Cloned, not borrowed (the request moves on below): for a path that
                // normalising left alone this shares the request's, without a copy.
                let path = routed(&req)
                    .map_or_else(|| NormalPath::from(req.uri().path()), |r| r.path.clone());
                let d = gate.authorize(req.method(), &path, id);
                note_decision(&req, &gate, &d);
                let out = match d.result {
                    Ok(()) => {
                        if let Some(id) = &d.identity {
                            req.extensions_mut().insert(id.clone());
                        }
                        strip_proof(&mut req);
                        inner.call(req).await
                    }
                    Err(e) => Err(e.into()),
                };
                RecordDecision {
                    identity: d.identity,
                    permission: d.permission,
                }
                .on_outcome(out)
            }),
            nothing(),
        )
    }
}

/// The explain line of a route's Bearer rule (claim names only, never values).
pub fn describe_rule(gate: &Gate<'_>) -> String {
    let claims = if gate.rule.claims.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = gate.rule.claims.iter().map(|c| &*c.name).collect();
        format!(", claims required [{}]", names.join(", "))
    };
    format!(
        "auth: issuers [{}], scopes required [{}], clients {}{claims}",
        gate.accepted()
            .map(|i| &*i.name)
            .collect::<Vec<_>>()
            .join(", "),
        gate.rule.scopes.join(" "),
        gate.rule
            .clients
            .as_ref()
            .map(|c| format!("[{}]", c.join(", ")))
            .unwrap_or_else(|| "any".into())
    )
}

fn note_decision<B>(req: &Request<B>, gate: &Gate<'_>, d: &Decision) {
    let Some(trace) = decision::of(req) else {
        return;
    };
    let mut lines = decision_lines(
        gate,
        d.identity.as_deref(),
        d.permission.as_deref(),
        d.result.as_ref().err(),
    );
    // The claims gates with the values (explain and test traces only; refusals, their
    // records and logs name the claim alone): the route's after the scopes granted, the
    // permission's after the permission line.
    if let Some(id) = &d.identity {
        let route_claims = crate::claims::describe(&gate.rule.claims, &id.claims.0);
        let at = lines.len().min(2);
        lines.splice(
            at..at,
            route_claims.into_iter().map(|l| format!("route {l}")),
        );
        let entry = d
            .permission
            .as_deref()
            .and_then(|p| gate.permissions.and_then(|ps| ps.entry(p)));
        if let Some(p) = entry {
            for line in crate::claims::describe(&p.claims, &id.claims.0) {
                lines.push(format!("permission {line}"));
            }
        }
    }
    for line in lines {
        trace.push(line);
    }
}

/// The explain lines of the gate's decision: who the token says the caller is, and the
/// permission entry that applied (for a trace, and for a refusal's record in
/// `decisions`, which rebuilds them on the refusal path only).
pub fn decision_lines(
    gate: &Gate<'_>,
    identity: Option<&Identity>,
    permission: Option<&str>,
    refused: Option<&GatewayError>,
) -> Vec<String> {
    let mut out = Vec::with_capacity(3);
    if let Some(id) = identity {
        out.push(format!(
            "identity: issuer {}, client {}, subject {}",
            id.issuer,
            id.client_id.as_deref().unwrap_or("-"),
            id.subject.as_deref().unwrap_or("-")
        ));
        out.push(format!("scopes granted: [{}]", id.scopes.join(" ")));
    }
    let entry = permission.and_then(|p| gate.permissions.and_then(|ps| ps.entry(p)));
    out.push(match (gate.permissions, entry) {
        (None, _) => "permissions: none on this route (route scopes decide)".into(),
        (Some(_), Some(p)) => format!(
            "permission: {} methods [{}] extra scopes [{}]",
            p.path,
            p.methods
                .as_ref()
                .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "*".into()),
            p.scopes.join(" ")
        ),
        // Refused by the route's own gates (client, scopes, claims) or before them: the
        // permissions were not looked at.
        (Some(_), None)
            if refused.is_some_and(|e| e.deny_reason() != Some(DenyReason::EndpointNotAllowed)) =>
        {
            "permission: not checked (refused before the endpoint permissions)".into()
        }
        (Some(_), None) => "permission: no entry matches this path".into(),
    });
    out
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::error::GatewayError;
    use crate::route::layer::RouteLayer;
    use crate::testing::{gateway, get, Reached, Stub, CONFIG};

    fn token(gw: &crate::gateway::Gateway, scope: &str) -> String {
        let rt = gw.current();
        let ts = rt.token_service.as_ref().unwrap();
        let now = crate::auth::now_secs();
        ts.key
            .sign(
                "at+jwt",
                &serde_json::json!({"iss": ts.issuer, "aud": ts.audience, "sub": "dash",
                    "client_id": "dash", "scope": scope, "iat": now, "exp": now + 300}),
            )
            .unwrap()
    }

    fn with_token(uri: &str, t: &str) -> Request<http_body_util::Empty<bytes::Bytes>> {
        let mut r = get(uri);
        r.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
        r
    }

    // Behaviour: no token -> 401 token_missing; `auth: none` routes pass untouched.
    #[tokio::test]
    async fn token_missing_and_public_routes() {
        let (gw, _dir) = gateway(CONFIG);
        let reached = Reached::default();
        let svc = || {
            RouteLayer::new(gw.clone())
                .layer(GateLayer::new(gw.auth_caches.clone()).layer(Stub(reached.clone())))
        };
        let e = svc()
            .oneshot(get("/v2/analytics/metadata"))
            .await
            .unwrap_err();
        assert_eq!(e.error.deny_reason(), Some(DenyReason::TokenMissing));
        assert!(svc().oneshot(get("/open/x")).await.is_ok());
        assert_eq!(reached.count(), 1);
        assert!(reached.last().extensions().get::<Arc<Identity>>().is_none());
    }

    // Behaviour: a verified caller reaches the inner service with its identity, first on
    // the slow path, then from the cache; each refusal names its gate and permission.
    #[tokio::test]
    async fn verified_identity_and_refusals() {
        let (gw, _dir) = gateway(CONFIG);
        let reached = Reached::default();
        let svc = || {
            RouteLayer::new(gw.clone())
                .layer(GateLayer::new(gw.auth_caches.clone()).layer(Stub(reached.clone())))
        };
        let t = token(&gw, "analytics.read");
        for _ in 0..2 {
            let resp = svc()
                .oneshot(with_token("/v2/analytics/metadata", &t))
                .await
                .unwrap();
            assert_eq!(
                resp.extensions()
                    .get::<GateFacts>()
                    .and_then(|f| f.permission.clone())
                    .unwrap()
                    .as_ref(),
                "/v2/analytics/metadata"
            );
            let id = reached
                .last()
                .extensions()
                .get::<Arc<Identity>>()
                .cloned()
                .unwrap();
            assert_eq!(id.client_id.as_deref(), Some("dash"));
        }
        assert_eq!(
            gw.auth_caches.verified.len(),
            1,
            "verified once, then cached"
        );
        let e = svc()
            .oneshot(with_token("/v2/analytics/data", &t))
            .await
            .unwrap_err();
        assert!(matches!(e.error, GatewayError::InsufficientScope { .. }));
        assert!(e
            .facts
            .get::<GateFacts>()
            .is_some_and(|f| f.identity.is_some()));
        let e = svc()
            .oneshot(with_token("/v2/analytics/admin", &t))
            .await
            .unwrap_err();
        assert_eq!(e.error.deny_reason(), Some(DenyReason::EndpointNotAllowed));
        let e = svc()
            .oneshot(with_token("/v2/analytics/metadata", "not-a-jwt"))
            .await
            .unwrap_err();
        assert_eq!(e.error.deny_reason(), Some(DenyReason::TokenMalformed));
        assert_eq!(reached.count(), 2);
    }
}
