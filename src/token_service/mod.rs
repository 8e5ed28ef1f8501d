//! Step 5 of the request path: endpoints tollgate serves itself — the OAuth2
//! client_credentials token endpoint (`token_service.path`), its keys at
//! `/.well-known/jwks.json` and RFC 8414 metadata at
//! `/.well-known/oauth-authorization-server`.
//!
//! Clients authenticate with `Authorization: Basic` (client_secret_basic, id and secret
//! form-urlencoded before base64) or `client_id`/`client_secret` in a form or JSON body
//! (client_secret_post), never both. Secrets are compared in constant time, or checked
//! against argon2id hashes. Tokens are RFC 9068 JWTs (`typ: at+jwt`); the token service
//! is also the issuer `local`, verified in-process.

pub mod keys;
pub mod layer;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use rand::Rng;

use self::keys::SigningKey;
use crate::auth::dpop::{self, Expected};
use crate::auth::replay::{self, ReplayCache};
use crate::auth::sender::{self, SenderConstraint, DEFAULT_IAT_WINDOW};
use crate::body::{full, Body, BoxError};
use crate::conn::{ClientCert, ConnInfo};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::ratelimit::applied::{self, FAILED_AUTH_CLIENT};
use crate::ratelimit::{Decision, FailedAuthLimit};
use crate::secret::{constant_time_eq, Secret};

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// Leeway for tokens of the token service (same clock).
pub const LOCAL_LEEWAY: Duration = Duration::from_secs(5);
const MAX_TOKEN_REQUEST: usize = 64 * 1024;
/// The `route` label of the token endpoint's metrics: it is not a route (the access
/// log and `tollgate_requests_total` say `none` for it too).
static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("none"));

pub enum ClientSecret {
    Plain(Secret),
    /// An argon2id PHC string.
    Hash(Secret),
}

pub struct Client {
    pub id: String,
    pub secret: ClientSecret,
    pub scopes: Vec<String>,
    /// `clients[].sender_constraint`, else the token service's.
    pub sender_constraint: Option<SenderConstraint>,
}

/// argon2id checks running at once. Each costs ~19 MiB and tens of milliseconds of CPU,
/// so they run on the blocking pool (never on a request worker), a few at a time; more
/// wait their turn, bounded by `request_timeout` like any request.
static ARGON2_AT_ONCE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Checks `secret` against an argon2id PHC string off the request workers (counted in
/// `tollgate_argon2_checks_total{purpose="token_service"}`).
async fn verify_hash(hash: Secret, secret: Secret, metrics: &Metrics) -> bool {
    let Ok(_permit) = ARGON2_AT_ONCE.acquire().await else {
        return false;
    };
    metrics.argon2_check("token_service");
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(hash.expose())
            .map(|p| {
                argon2::Argon2::default()
                    .verify_password(secret.expose().as_bytes(), &p)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

pub struct TokenService {
    pub path: String,
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
    pub key: Arc<SigningKey>,
    pub clients: HashMap<String, Client>,
    /// What an unknown client id's secret is checked against: a hash of a random secret
    /// with the argon2 parameters of the first `secret_hash` client (none without one),
    /// so that an unknown id costs what a wrong secret costs and response time does not
    /// tell registered ids apart ([`dummy_hash_like`]).
    pub unknown_client_hash: Option<Secret>,
    /// `failed_auth_limit`: failed client authentications per client id and per IP.
    pub failed_auth: FailedAuthLimit,
    /// `sender_constraint`: what clients must prove to get a token (unless a client
    /// says otherwise), and what routes require of the `local` issuer's tokens.
    pub sender_constraint: SenderConstraint,
    /// Where the `jti`s of DPoP proofs sent with token requests are remembered: with
    /// `stores.redis`, in Redis too (fail-closed), so a proof used at one replica's
    /// token endpoint is refused at every other.
    pub replay: replay::ReplayStore,
}

/// What an issued token is bound to (its `cnf` claim).
#[derive(Debug, Default)]
struct Binding {
    /// RFC 9449: the DPoP proof key's thumbprint.
    jkt: Option<String>,
    /// RFC 8705: the client certificate's SHA-256, base64url.
    x5t: Option<String>,
}

/// An argon2 PHC string of a random secret, made with `like`'s algorithm, version and
/// parameters (memory, iterations, parallelism, output length): checking a secret
/// against it costs what checking one against `like` costs. `None` when `like` is not
/// an argon2 PHC string.
///
/// Made once per process for each set of parameters (an argon2 hash is tens of ms of
/// CPU, and every config load asks for one): a reload that keeps the parameters keeps
/// the dummy. It hashes 32 random bytes nobody knows, so reusing it reveals nothing.
pub fn dummy_hash_like(like: &Secret) -> Option<Secret> {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    use argon2::password_hash::{PasswordHasher, SaltString};
    use std::sync::Mutex;
    static MADE: Mutex<Vec<(String, Secret)>> = Mutex::new(Vec::new());
    let ph = PasswordHash::new(like.expose()).ok()?;
    let params = argon2::Params::try_from(&ph).ok()?;
    let kind = format!("{}${:?}${}", ph.algorithm, ph.version, ph.params);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dummy)) = made.iter().find(|(k, _)| *k == kind) {
        return Some(dummy.clone());
    }
    let salt = SaltString::generate(&mut OsRng);
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let dummy = argon2::Argon2::default()
        .hash_password_customized(&secret, Some(ph.algorithm), ph.version, params, &salt)
        .ok()
        .map(|h| Secret::new(h.to_string()))?;
    // A handful of parameter sets at most in any real deployment; bounded anyway.
    if made.len() >= 16 {
        made.remove(0);
    }
    made.push((kind, dummy.clone()));
    Some(dummy)
}

/// An argon2id PHC string for `secret_hash`.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Parameters of a token request, from a form or JSON body.
pub fn parse_params(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<(String, String)>, GatewayError> {
    let ct = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if ct == "application/json" || ct.ends_with("+json") {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|_| GatewayError::BadRequest("request body is not a JSON object".into()))?;
        v.into_iter()
            // `null` is a parameter not given (`"scope": null` asks for every
            // registered scope, as an absent scope does).
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                serde_json::Value::Number(n) => Ok((k, n.to_string())),
                _ => Err(GatewayError::BadRequest(format!(
                    "parameter {k} must be a string"
                ))),
            })
            .collect()
    } else if ct == "application/x-www-form-urlencoded" || ct.is_empty() {
        Ok(form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect())
    } else {
        Err(GatewayError::BadRequest(format!("unsupported content type {ct}: use application/x-www-form-urlencoded or application/json")))
    }
}

/// `Authorization: Basic` -> (id, secret), each form-urldecoded (RFC 6749 §2.3.1),
/// from padded or unpadded base64. `Ok(None)`: another scheme.
pub fn parse_basic(v: &HeaderValue) -> Result<Option<(String, String)>, GatewayError> {
    let malformed = || GatewayError::InvalidClient("malformed Basic credentials".into());
    let Ok(s) = v.to_str() else {
        return Err(GatewayError::BadRequest(
            "invalid Authorization header".into(),
        ));
    };
    let Some((scheme, rest)) = s.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let raw = BASIC_BASE64.decode(rest.trim()).map_err(|_| malformed())?;
    let colon = raw.iter().position(|b| *b == b':').ok_or_else(malformed)?;
    let (id, secret) = (&raw[..colon], &raw[colon + 1..]);
    Ok(Some((
        form_decode(id).ok_or_else(malformed)?,
        form_decode(secret).ok_or_else(malformed)?,
    )))
}

/// Base64 as clients send it in `Authorization: Basic`: padded or not.
const BASIC_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// One form-urlencoded value (RFC 6749 §2.3.1, Appendix B): `+` is a space, `%XX` a
/// byte; everything else, `&` and `=` included, stands for itself. `None` when the
/// result is not UTF-8.
fn form_decode(part: &[u8]) -> Option<String> {
    let spaced: Vec<u8> = part
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_encoding::percent_decode(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

impl TokenService {
    /// Whether `path` is one of the token service's own endpoints.
    pub fn serves(&self, path: &str) -> bool {
        path == self.path || path == JWKS_PATH || path.starts_with(METADATA_PATH)
    }

    pub async fn handle<B>(
        &self,
        req: Request<B>,
        path: &str,
        metrics: &Metrics,
        replays: &ReplayCache,
    ) -> Result<Response<Body>, GatewayError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let document = path == JWKS_PATH || path.starts_with(METADATA_PATH);
        if document && !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(GatewayError::MethodNotAllowed {
                description: format!("{path} is read with GET, not {}", req.method()),
                allow: "GET, HEAD",
            });
        }
        if path == JWKS_PATH {
            return Ok(json_response(StatusCode::OK, self.key.jwks()));
        }
        if path.starts_with(METADATA_PATH) {
            return Ok(json_response(StatusCode::OK, self.metadata()));
        }
        if req.method() != Method::POST {
            return Err(GatewayError::MethodNotAllowed {
                description: format!("the token endpoint takes POST, not {}", req.method()),
                allow: "POST",
            });
        }
        let conn = req.extensions().get::<Arc<ConnInfo>>().cloned();
        let ip = conn
            .as_ref()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.remote.ip());
        let (parts, body) = req.into_parts();
        let body = http_body_util::Limited::new(body, MAX_TOKEN_REQUEST)
            .collect()
            .await
            .map_err(|_| GatewayError::PayloadTooLarge(MAX_TOKEN_REQUEST as u64))?
            .to_bytes();
        let ct = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let mut params = parse_params(ct, &body)?;
        if let Some(q) = parts.uri.query() {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if k == "grant_type" {
                    params.push((k.into_owned(), v.into_owned()));
                }
            }
        }
        let mut one = HashMap::new();
        for (k, v) in &params {
            if one.insert(k.as_str(), v.as_str()).is_some() {
                return Err(GatewayError::BadRequest(format!(
                    "parameter {k} is given more than once"
                )));
            }
        }
        if sender::several_credentials(&parts.headers) {
            return Err(sender::several_credentials_refused());
        }
        let basic = match parts.headers.get(AUTHORIZATION).map(parse_basic) {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(self.failed(None, ip, e).await),
            None => None,
        };
        let body_creds = (
            one.get("client_id").copied(),
            one.get("client_secret").copied(),
        );
        let (id, secret) = match (basic, body_creds) {
            (Some(_), (_, Some(_))) => {
                return Err(GatewayError::BadRequest(
                    "client credentials in both the Authorization header and the body; use one"
                        .into(),
                ))
            }
            (Some((id, secret)), (body_id, None)) => {
                if body_id.is_some_and(|b| b != id) {
                    return Err(GatewayError::BadRequest(
                        "client_id in the body differs from the Authorization header".into(),
                    ));
                }
                (id, secret)
            }
            (None, (Some(id), Some(secret))) => (id.to_owned(), secret.to_owned()),
            (None, (Some(id), None)) => {
                metrics.client_auth_failure("no_secret");
                tracing::warn!(target: "tollgate::token", client_id = id, reason = "no_secret", "client authentication failed");
                let e = GatewayError::InvalidClient(
                    "client authentication failed: no client_secret".into(),
                );
                return Err(self.failed(Some(id), ip, e).await);
            }
            (None, (None, Some(_))) => {
                return Err(GatewayError::BadRequest(
                    "client_secret without client_id".into(),
                ))
            }
            (None, (None, None)) => {
                metrics.client_auth_failure("no_credentials");
                let e = GatewayError::InvalidClient(
                    "client authentication required (HTTP Basic or client_id/client_secret)".into(),
                );
                return Err(self.failed(None, ip, e).await);
            }
        };
        match one.get("grant_type").copied() {
            Some("client_credentials") => {}
            None => return Err(GatewayError::BadRequest("grant_type is required".into())),
            Some(g) => {
                return Err(GatewayError::OAuth {
                    code: "unsupported_grant_type",
                    description: format!("grant_type {g} is not supported; use client_credentials"),
                })
            }
        }
        // Before any secret is verified (an argon2 check costs tens of milliseconds of
        // CPU): a client id or address over failed_auth_limit is refused, whatever it sent.
        if let Some(d) = self.failed_auth.check(Some(&id), ip).await {
            return Err(self.too_many_failures(&id, &d, metrics));
        }
        let client = match self.authenticate(&id, &secret, metrics).await {
            Ok(c) => c,
            Err(e) => return Err(self.failed(Some(&id), ip, e).await),
        };
        let scopes = self.grant_scopes(client, one.get("scope").copied())?;
        let binding = self
            .binding(client, &parts, conn.as_deref(), replays)
            .await?;
        self.issue(client, &scopes, binding, metrics)
    }

    /// A failed client authentication (`e`, 401 `invalid_client`): counted against
    /// `failed_auth_limit` for the client id (when one was presented) and the address.
    async fn failed(&self, id: Option<&str>, ip: IpAddr, e: GatewayError) -> GatewayError {
        if matches!(e, GatewayError::InvalidClient(_)) {
            self.failed_auth.failed(id, ip).await;
        }
        e
    }

    /// 429 `rate_limited` for a client id or address over `failed_auth_limit`.
    fn too_many_failures(&self, id: &str, d: &Decision, metrics: &Metrics) -> GatewayError {
        metrics.rate_limited(&NO_ROUTE, &d.name);
        let who = if &*d.name == FAILED_AUTH_CLIENT {
            format!("for client {id}")
        } else {
            "from this address".to_owned()
        };
        let retry = d.retry_after_secs().unwrap_or(1);
        tracing::warn!(target: "tollgate::token", client_id = id, limit = %d.name, retry_after = retry, "token request refused: too many failed client authentications");
        applied::too_many_failures(d, &format!("failed client authentications {who}"))
    }

    async fn authenticate(
        &self,
        id: &str,
        secret: &str,
        metrics: &Metrics,
    ) -> Result<&Client, GatewayError> {
        let failed = |reason: &'static str| {
            metrics.client_auth_failure(reason);
            tracing::warn!(target: "tollgate::token", client_id = id, reason, "client authentication failed");
            GatewayError::InvalidClient("client authentication failed".into())
        };
        let Some(client) = self.clients.get(id) else {
            // Spend what a wrong secret costs, so that response time does not tell
            // unknown ids from registered ones: an argon2 check against a dummy hash
            // with the registered hashes' parameters, else a constant-time comparison.
            match &self.unknown_client_hash {
                Some(h) => {
                    let _ = verify_hash(h.clone(), Secret::new(secret), metrics).await;
                }
                None => {
                    let _ = constant_time_eq(secret.as_bytes(), b"tollgate-unknown-client-padding");
                }
            }
            return Err(failed("unknown_client"));
        };
        let ok = match &client.secret {
            ClientSecret::Plain(s) => s.matches(secret),
            ClientSecret::Hash(h) => verify_hash(h.clone(), Secret::new(secret), metrics).await,
        };
        if ok {
            Ok(client)
        } else {
            Err(failed("bad_secret"))
        }
    }

    fn grant_scopes(
        &self,
        client: &Client,
        requested: Option<&str>,
    ) -> Result<Vec<String>, GatewayError> {
        let words: Vec<&str> = requested
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        if words.is_empty() {
            return Ok(client.scopes.clone());
        }
        let mut out: Vec<String> = Vec::new();
        for w in words {
            if !client.scopes.iter().any(|s| s == w) {
                return Err(GatewayError::OAuth {
                    code: "invalid_scope",
                    description: format!(
                        "scope {w} exceeds the scopes registered for client {}",
                        client.id
                    ),
                });
            }
            if !out.iter().any(|s| s == w) {
                out.push(w.to_owned());
            }
        }
        Ok(out)
    }

    /// What the token will be bound to: the key of a valid DPoP proof sent with the
    /// request (RFC 9449 section 5), and for a client whose `sender_constraint` is
    /// `mtls`, its TLS client certificate (RFC 8705). A client that must use DPoP (or
    /// mTLS) and did not gets an error instead of a bearer token.
    async fn binding(
        &self,
        client: &Client,
        parts: &http::request::Parts,
        conn: Option<&ConnInfo>,
        replays: &ReplayCache,
    ) -> Result<Binding, GatewayError> {
        let want = client.sender_constraint.unwrap_or(self.sender_constraint);
        let bad_proof = |description: String| GatewayError::OAuth {
            code: "invalid_dpop_proof",
            description,
        };
        let mut b = Binding::default();
        match sender::proof_header(&parts.headers).map_err(|e| bad_proof(e.into()))? {
            Some(proof) => {
                let proof = dpop::parse(proof).map_err(|r| bad_proof(r.description))?;
                let htu =
                    sender::target_uri(&parts.headers, &parts.uri, conn.is_some_and(|c| c.tls))
                        .ok_or_else(|| {
                            bad_proof("the request names no host to compare htu with".into())
                        })?;
                let now = crate::auth::now_secs();
                let window = DEFAULT_IAT_WINDOW.as_secs() as i64;
                // A token request carries no access token: `ath` is not checked here.
                let want_claims = Expected {
                    method: parts.method.as_str(),
                    htu: &htu,
                    token: None,
                    now,
                    iat_window_secs: window,
                };
                proof
                    .check(&want_claims)
                    .map_err(|r| bad_proof(r.description))?;
                let fresh = replay::Fresh {
                    issuer: "local".into(),
                    iss: self.issuer.clone(),
                    jkt: proof.jkt.clone(),
                    jti: proof.jti.clone(),
                    iat: proof.iat,
                    window,
                    skew: 0,
                    store: self.replay.clone(),
                };
                replay::check(replays, &fresh, now, replay::Mode::Record, &mut |_| {})
                    .await
                    .map_err(|e| match e {
                        GatewayError::Unauthorized { .. } => {
                            bad_proof("DPoP proof replayed (its jti was used before)".into())
                        }
                        other => other,
                    })?;
                b.jkt = Some(proof.jkt);
            }
            None if want == SenderConstraint::Dpop => {
                return Err(bad_proof(format!(
                    "client {} must send a DPoP proof (the DPoP header) with its token request",
                    client.id
                )))
            }
            None => {}
        }
        if want == SenderConstraint::Mtls {
            match conn.map(|c| &c.client_cert) {
                Some(ClientCert::Leaf(sha)) => b.x5t = Some(sender::x5t_s256(sha)),
                _ => {
                    return Err(GatewayError::OAuth {
                        code: "invalid_request",
                        description: format!(
                            "client {} must present its TLS client certificate: its tokens are bound to it",
                            client.id
                        ),
                    })
                }
            }
        }
        Ok(b)
    }

    fn issue(
        &self,
        client: &Client,
        scopes: &[String],
        binding: Binding,
        metrics: &Metrics,
    ) -> Result<Response<Body>, GatewayError> {
        let now = crate::auth::now_secs();
        let mut jti = [0u8; 16];
        rand::thread_rng().fill(&mut jti);
        let scope = scopes.join(" ");
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": client.id,
            "client_id": client.id,
            "aud": self.audience,
            "scope": scope,
            "iat": now,
            "exp": now + self.ttl.as_secs() as i64,
            "jti": crate::encoding::hex(&jti),
        });
        let mut claims = claims;
        let mut cnf = serde_json::Map::new();
        if let Some(jkt) = &binding.jkt {
            cnf.insert("jkt".into(), jkt.clone().into());
        }
        if let Some(x5t) = &binding.x5t {
            cnf.insert("x5t#S256".into(), x5t.clone().into());
        }
        if !cnf.is_empty() {
            claims["cnf"] = cnf.into();
        }
        let token = self.key.sign("at+jwt", &claims).map_err(|e| {
            tracing::error!(error = %e, "signing failed");
            GatewayError::ServiceUnavailable("token signing failed")
        })?;
        metrics.tokens_issued.inc();
        tracing::info!(target: "tollgate::token", client_id = %client.id, scope = %scope, "token issued");
        let mut r = json_response(
            StatusCode::OK,
            serde_json::json!({
                "access_token": token,
                // RFC 9449 section 5: a DPoP-bound token's type is DPoP.
                "token_type": if binding.jkt.is_some() { "DPoP" } else { "Bearer" },
                "expires_in": self.ttl.as_secs(),
                "scope": scope,
            }),
        );
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r.headers_mut()
            .insert(PRAGMA, HeaderValue::from_static("no-cache"));
        Ok(r)
    }

    /// RFC 8414 authorization server metadata.
    pub fn metadata(&self) -> serde_json::Value {
        let base = self.issuer.trim_end_matches('/');
        let mut scopes: Vec<&str> = self
            .clients
            .values()
            .flat_map(|c| c.scopes.iter().map(String::as_str))
            .collect();
        scopes.sort_unstable();
        scopes.dedup();
        serde_json::json!({
            "issuer": self.issuer,
            "token_endpoint": format!("{base}{}", self.path),
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "scopes_supported": scopes,
            "access_token_signing_alg_values_supported": [format!("{:?}", self.key.alg)],
            "dpop_signing_alg_values_supported": crate::error::DPOP_ALGS.split(' ').collect::<Vec<_>>(),
            "tls_client_certificate_bound_access_tokens": self.sender_constraint == SenderConstraint::Mtls
                || self.clients.values().any(|c| c.sender_constraint == Some(SenderConstraint::Mtls)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn basic(raw: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).unwrap()
    }

    fn parsed(v: &HeaderValue) -> Option<(String, String)> {
        parse_basic(v).ok().flatten()
    }

    // Behaviour: the dummy hash unknown client ids are checked against has the
    // parameters of the hash it is made like (so it costs the same to check), is made
    // once per set of parameters (a reload does not pay another argon2 hash), and no
    // secret checks against it.
    #[test]
    fn dummy_hashes_are_made_once_per_parameter_set() {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let like = |m_cost: u32| {
            let params = argon2::Params::new(m_cost, 1, 1, None).unwrap();
            let h =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                    .hash_password(b"secret", &SaltString::generate(&mut OsRng))
                    .unwrap()
                    .to_string();
            Secret::new(h)
        };
        let (a, a2, b) = (like(1024), like(1024), like(2048));
        let da = dummy_hash_like(&a).unwrap();
        assert_eq!(
            dummy_hash_like(&a2).unwrap().expose(),
            da.expose(),
            "made once"
        );
        let db = dummy_hash_like(&b).unwrap();
        assert_ne!(db.expose(), da.expose());
        for (dummy, original) in [(&da, &a), (&db, &b)] {
            let d = PasswordHash::new(dummy.expose()).unwrap();
            let o = PasswordHash::new(original.expose()).unwrap();
            assert_eq!(
                (d.algorithm, d.version, d.params.to_string()),
                (o.algorithm, o.version, o.params.to_string())
            );
            assert!(argon2::Argon2::default()
                .verify_password(b"secret", &d)
                .is_err());
        }
        assert!(dummy_hash_like(&Secret::new("plain")).is_none());
    }

    // Behaviour: id and secret are each form-decoded (RFC 6749 §2.3.1): what
    // `basic_header` encodes comes back unchanged, whatever characters it holds.
    #[test]
    fn basic_round_trip() {
        for (id, secret) in [
            ("gw client", "p@ss:w/rd"),
            ("a+b", "x&y=z%41"),
            ("ünï", "s3cr3t ✓"),
            ("", ""),
        ] {
            let v = crate::credentials::basic_header(id, secret);
            assert_eq!(
                parsed(&v),
                Some((id.to_owned(), secret.to_owned())),
                "{id} {secret}"
            );
        }
    }

    // Behaviour: a secret that was not form-encoded keeps its `&` and `=` (they used to
    // cut it short); `+` still reads as a space, as form encoding says.
    #[test]
    fn raw_ampersand_and_equals_are_kept() {
        assert_eq!(
            parsed(&basic("client:a&b=c&d")),
            Some(("client".into(), "a&b=c&d".into()))
        );
        assert_eq!(
            parsed(&basic("client:a+b%2Bc")),
            Some(("client".into(), "a b+c".into()))
        );
        assert_eq!(
            parsed(&basic("cli:ent:with:colons")),
            Some(("cli".into(), "ent:with:colons".into()))
        );
    }

    // Behaviour: unpadded base64 is accepted; other schemes are not credentials;
    // broken credentials are an error.
    #[test]
    fn padding_schemes_and_malformed() {
        let padded = STANDARD.encode("id:secret1");
        assert!(padded.ends_with('='), "{padded}");
        let v = HeaderValue::from_str(&format!("basic {}", padded.trim_end_matches('='))).unwrap();
        assert_eq!(parsed(&v), Some(("id".into(), "secret1".into())));
        let bearer = HeaderValue::from_static("Bearer abc");
        assert!(matches!(parse_basic(&bearer), Ok(None)));
        for bad in [
            "Basic !!!",
            "Basic aWQ",
            &format!("Basic {}", STANDARD.encode("no-colon")),
        ] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert!(parse_basic(&v).is_err(), "{bad}");
        }
        let v = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(b"id:%FF"))).unwrap();
        assert!(parse_basic(&v).is_err(), "not UTF-8 once decoded");
    }
}
