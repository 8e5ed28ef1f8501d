//! The adversarial pass (issue 19 item 5): attacks on the public request path as a
//! hostile client would make them, each one a finding that was fixed. Every test here
//! failed before its fix (docs/ADVERSARIAL.md lists the attacks, held or not).

use serde_json::json;

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// One upstream behind two routes: `/admin` needs a token with `admin`, `/` is public.
async fn public_beside_admin() -> (Idp, Upstream, Gw) {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = GatewayConfig::new()
        .merge("server", json!({"decision_listen": "127.0.0.1:0"}))
        .issuer(&idp, "corp")
        .upstream("app", &up.url())
        .route(json!({
            "name": "admin", "path_prefix": "/admin", "upstream": "app",
            "auth": {"scopes": ["admin"]},
        }))
        .open_route("public", "/", "app")
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    (idp, up, gw)
}

// Finding: a `;` parameter on a route's prefix segment (`/admin;x/users`) chose the
// public `/` route, and the upstream received `/admin;x/users`, which Tomcat, Jetty and
// Spring read as `/admin/users`. A path is now routed by its segments' names (what
// such a backend reads), so it meets the `/admin` route's gate.
#[tokio::test]
async fn path_parameters_do_not_move_a_request_to_another_route() {
    let (_idp, up, gw) = public_beside_admin().await;
    for path in ["/admin;x/users", "/admin;jsessionid=1", "/admin%3Bx/users"] {
        let r = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} must meet the /admin route's gate");
    }
    assert_eq!(up.count(), 0, "no request reached the upstream");
    // The public route still serves its own paths, parameters and all.
    let r = client().get(gw.url("/page;v=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri, "/page;v=1");
}

// Finding: only headers spelt `x-auth-*` were removed before forwarding. A client's
// `X_Auth_Subject` (underscores) went through, and backends that map headers to CGI
// variables (Rack, PHP, WSGI: HTTP_X_AUTH_SUBJECT) read it as the identity header —
// for a token without `sub` (client credentials), tollgate sets none of its own.
#[tokio::test]
async fn identity_headers_spelt_with_underscores_are_not_forwarded() {
    let (idp, up, gw) = public_beside_admin().await;
    let token = idp.token(json!({"sub": null, "client_id": "reporting", "scope": "admin"}));
    let r = client()
        .get(gw.url("/admin/users"))
        .bearer_auth(&token)
        .header("X_Auth_Subject", "root")
        .header("x-auth_client-id", "root-client")
        .header("X-AUTH-SCOPES", "everything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    let forged: Vec<(&String, &Vec<String>)> = seen
        .headers
        .iter()
        .filter(|(k, _)| k.replace('_', "-").starts_with("x-auth-"))
        .filter(|(k, _)| k.as_str() != "x-auth-client-id" && k.as_str() != "x-auth-scopes")
        .collect();
    assert!(
        forged.is_empty(),
        "forged identity headers reached the upstream: {forged:?}"
    );
    assert_eq!(seen.header("x-auth-client-id"), Some("reporting"));
    assert_eq!(seen.header("x-auth-scopes"), Some("admin"));
    // And on a public route, where tollgate sets no identity at all.
    let r = client()
        .get(gw.url("/page"))
        .header("X_Auth_Subject", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert!(
        !seen
            .headers
            .keys()
            .any(|k| k.replace('_', "-").starts_with("x-auth-")),
        "{:?}",
        seen.headers.keys().collect::<Vec<_>>()
    );
}

// Finding (same attack, decision service): for Envoy's `ext_authz`, tollgate names the
// identity headers Envoy must remove before forwarding; a client's `X_Auth_Subject` was
// not among them, and Envoy passes underscore headers by default.
#[tokio::test]
async fn decision_service_has_envoy_remove_underscore_identity_headers() {
    let (idp, _up, gw) = public_beside_admin().await;
    let decision = gw
        .running
        .as_ref()
        .unwrap()
        .decision
        .expect("decision listener");
    let token = idp.token(json!({"sub": null, "client_id": "reporting", "scope": "admin"}));
    let r = client()
        .get(format!("http://{decision}/ext-authz/admin/users"))
        .bearer_auth(&token)
        .header("X_Auth_Subject", "root")
        .header("X-HTTP-Method-Override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let remove = r
        .headers()
        .get("x-envoy-auth-headers-to-remove")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let names: Vec<&str> = remove.split(',').map(str::trim).collect();
    assert!(names.contains(&"x_auth_subject"), "{remove:?}");
    assert!(names.contains(&"x-auth-subject"), "{remove:?}");
    // Finding 7 behind Envoy: the method override is removed too.
    assert!(names.contains(&"x-http-method-override"), "{remove:?}");
}

// Finding: a key that restricts access, written with no value (`scopes:`, a YAML null,
// often what is left after commenting out its items), was read as "not given" and so
// silently lifted the restriction: `permissions:` allowed every endpoint, `clients:` and
// `scopes:` every token, `admin_auth:` left the admin API open. Each is now a located
// validation error, and tollgate does not start.
#[tokio::test]
async fn a_restricting_key_left_empty_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // Literal YAML: empty keys (YAML nulls) and their line:col are what is tested.
    let text = r#"server:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
  admin_auth:
issuers:
  - name: corp
    issuer: "https://idp.example.com"
    jwks_uri: "https://idp.example.com/jwks"
    audiences:
    sender_constraint:
upstreams:
  - name: bi
    url: "http://127.0.0.1:9000"
routes:
  - name: analytics
    path_prefix: /v2/analytics
    hosts:
    upstream: bi
    auth:
      issuers:
      scopes:
      clients:
      claims:
    permissions:
  - name: reports
    path_prefix: /v2/reports
    upstream: bi
    rate_limits:
    auth:
      issuers: [corp]
    permissions:
      - path: /v2/reports/x
        methods: [GET]
        scopes:
        claims:
"#;
    let p = dir.path().join("gateway.yaml");
    std::fs::write(&p, text).unwrap();
    let out = output_within(
        "tollgate validate",
        crate::cli::bin().args(["validate", "--config"]).arg(&p),
        PATIENCE,
    );
    let f = p.display().to_string();
    let expect = [
        format!("{f}:4:13 server.admin_auth: "),
        format!("{f}:9:14 issuers[0].audiences: "),
        format!("{f}:10:22 issuers[0].sender_constraint: "),
        format!("{f}:17:10 routes[0].hosts: "),
        format!("{f}:20:14 routes[0].auth.issuers: "),
        format!("{f}:21:13 routes[0].auth.scopes: "),
        format!("{f}:22:14 routes[0].auth.clients: "),
        format!("{f}:23:13 routes[0].auth.claims: "),
        format!("{f}:24:16 routes[0].permissions: "),
        format!("{f}:28:16 routes[1].rate_limits: "),
        format!("{f}:34:15 routes[1].permissions[0].scopes: "),
        format!("{f}:35:15 routes[1].permissions[0].claims: "),
    ];
    for e in &expect {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(e.as_str()) && l.contains("no value")),
            "missing {e:?}... no value in:\n{}",
            out.stdout
        );
    }
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
}

// Finding: the SAP session tollgate keeps for a `csrf` upstream was keyed by the
// credential the upstream sees only. With the upstream's own credentials (the usual
// technical user), every caller shared one SAP session: its cookies (and whatever the
// upstream keeps in it, such as draft and lock state) set on alice's request went with
// bob's. A session is now also per verified caller (issuer, client, subject).
#[tokio::test]
async fn callers_never_share_an_upstream_session() {
    use crate::sap::spawn_sap;
    let idp = spawn_idp().await;
    let sap = spawn_sap().await;
    let yaml = GatewayConfig::new()
        .issuer(&idp, "corp")
        .upstream_with(
            "s4",
            &format!("{}/sap/opu/odata/sap/API_X", sap.url()),
            json!({
                "auth": {"type": "basic", "username": "GW_USER", "password": "s3cret"},
                "csrf": {"fetch_path": "/"},
            }),
        )
        .route(json!({
            "name": "odata", "path_prefix": "/odata", "upstream": "s4",
            "auth": {"scopes": ["analytics.read"]},
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let alice = idp.token(json!({"sub": "alice"}));
    let bob = idp.token(json!({"sub": "bob"}));
    for (who, token) in [("alice", &alice), ("bob", &bob), ("alice", &alice)] {
        let r = client()
            .post(gw.url("/odata/A_Items"))
            .bearer_auth(token)
            .body(who)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{who}");
    }
    let sessions: Vec<(String, String)> = sap
        .modifying()
        .into_iter()
        .map(|s| {
            (
                String::from_utf8_lossy(&s.body).into_owned(),
                s.session.unwrap(),
            )
        })
        .collect();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(
        sessions[0].1, sessions[2].1,
        "alice keeps her session: {sessions:?}"
    );
    assert_ne!(
        sessions[0].1, sessions[1].1,
        "bob was served in alice's session: {sessions:?}"
    );
    gw.stop().await;
}

// Finding: asked by an ingress about a CORS preflight from an origin the route does not
// allow, the decision service answered 204 (tollgate's own answer to such a preflight,
// without `Access-Control-*` headers). To nginx `auth_request` and Traefik
// `forwardAuth` any 2xx means "forward it", so an unauthenticated `OPTIONS` from any
// origin reached the upstream. A preflight the route's CORS does not grant is now
// refused (403 `access_denied`); a granted one still gets its 204 with the headers.
#[tokio::test]
async fn decision_service_refuses_a_preflight_it_does_not_grant() {
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let yaml = GatewayConfig::public_only()
        .merge("server", json!({"decision_listen": "127.0.0.1:0"}))
        .issuer(&idp, "corp")
        .upstream("app", &up.url())
        .route(json!({
            "name": "admin", "path_prefix": "/admin", "upstream": "app",
            "auth": {"scopes": ["admin"]},
            "cors": {
                "allow_origins": ["https://app.example"],
                "allow_methods": ["GET", "DELETE"],
            },
        }))
        .yaml();
    let gw = spawn_gateway(&yaml).await;
    let decision = gw
        .running
        .as_ref()
        .unwrap()
        .decision
        .expect("decision listener");
    let ask = |origin: &'static str, endpoint: &'static str| {
        let mut r = client()
            .get(format!("http://{decision}{endpoint}"))
            .header("origin", origin)
            .header("access-control-request-method", "DELETE");
        r = match endpoint {
            "/forward-auth" => r
                .header("x-forwarded-method", "OPTIONS")
                .header("x-forwarded-uri", "/admin/users/1"),
            _ => r
                .header("x-original-method", "OPTIONS")
                .header("x-original-uri", "/admin/users/1"),
        };
        r.send()
    };
    for endpoint in ["/forward-auth", "/auth-request"] {
        let r = ask("https://evil.example", endpoint).await.unwrap();
        assert_eq!(r.status(), 403, "{endpoint}: a foreign origin's preflight");
        assert!(r.headers().get("access-control-allow-origin").is_none());
        let r = ask("https://app.example", endpoint).await.unwrap();
        assert_eq!(r.status(), 204, "{endpoint}: an allowed origin's preflight");
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example"
        );
    }
    assert_eq!(up.count(), 0);
}

// Finding: headers with which frameworks override what tollgate checked went through.
// `X-HTTP-Method-Override: DELETE` on a `GET` that permissions allow (Express
// method-override, ASP.NET, many REST stacks execute the DELETE); `X-Original-URL` /
// `X-Rewrite-URL` (IIS URL Rewrite, Symfony, Zend route by them: a check of `/public`,
// a request for `/admin`); `Forwarded: host=...;proto=...` (RFC 7239), `X-Forwarded-Port`
// and `X-Forwarded-Prefix` (Spring, ASP.NET build links and redirects from them), and
// `X-Real-IP`, while tollgate sets (and overwrites) only `X-Forwarded-*`. They are now
// removed before forwarding.
#[tokio::test]
async fn headers_that_override_what_was_checked_are_not_forwarded() {
    let (idp, up, gw) = public_beside_admin().await;
    let token = idp.token(json!({"scope": "admin"}));
    let r = client()
        .get(gw.url("/page"))
        .header("X-HTTP-Method-Override", "DELETE")
        .header("X-HTTP-Method", "DELETE")
        .header("X-Method-Override", "DELETE")
        .header("X-Original-URL", "/admin/users")
        .header("X-Rewrite-URL", "/admin/users")
        .header("Forwarded", "for=10.0.0.1;host=admin.internal;proto=https")
        .header("X-Forwarded-Port", "443")
        .header("X-Forwarded-Prefix", "/evil")
        .header("X-Real-IP", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    let passed: Vec<&String> = seen
        .headers
        .keys()
        .filter(|k| {
            matches!(
                k.as_str(),
                "x-http-method-override"
                    | "x-http-method"
                    | "x-method-override"
                    | "x-original-url"
                    | "x-rewrite-url"
                    | "forwarded"
                    | "x-forwarded-port"
                    | "x-forwarded-prefix"
                    | "x-real-ip"
            )
        })
        .collect();
    assert!(passed.is_empty(), "reached the upstream: {passed:?}");
    assert_eq!(seen.method, "GET");
    // The same on an authenticated route.
    let r = client()
        .get(gw.url("/admin/report"))
        .bearer_auth(&token)
        .header("X-HTTP-Method-Override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(up.last().header("x-http-method-override").is_none());
}
