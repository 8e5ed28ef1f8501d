//! Decision-service mode: tollgate as the external authoriser of a real Envoy
//! (`ext_authz`, HTTP service) and a real nginx (`auth_request`), each in front of a
//! real upstream; and Traefik's `forwardAuth` convention, asked directly with a real
//! HTTP client (Traefik cannot be installed here: no registry ships it). The client
//! talks to the ingress only; the upstream must see allowed requests with the identity
//! headers, and never a denied one.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::common::*;
use crate::gwconfig::GatewayConfig;
use crate::ingress::{start_envoy, start_nginx};

/// One route with a scope, per-endpoint permissions (an extra scope on `/admin`) and
/// CORS; the decision listener beside the public and admin ones. `upstream_extra` is
/// merged into the upstream.
fn gateway_config(idp: &Idp, upstream: &Upstream, upstream_extra: Value) -> GatewayConfig {
    GatewayConfig::new()
        .merge("server", json!({"decision_listen": "127.0.0.1:0"}))
        .issuer(idp, "corp")
        .upstream_with("bi", &upstream.url(), upstream_extra)
        .route(json!({
            "name": "analytics",
            "path_prefix": "/v2/analytics",
            "upstream": "bi",
            "auth": {"scopes": ["analytics.read"]},
            "permissions": [
                {"path": "/v2/analytics/data", "methods": ["GET", "POST"]},
                {"path": "/v2/analytics/admin", "methods": ["GET"],
                 "scopes": ["analytics.admin"]},
            ],
            "cors": {
                "allow_origins": ["https://cx.company.com"],
                "allow_methods": ["GET", "POST"],
                "allow_headers": ["Authorization"],
            },
        }))
}

fn gateway_yaml(idp: &Idp, upstream: &Upstream) -> String {
    gateway_config(idp, upstream, json!({})).yaml()
}

fn decision_addr(gw: &Gw) -> SocketAddr {
    gw.running
        .as_ref()
        .unwrap()
        .decision
        .expect("decision listener")
}

/// Envoy in front of `upstream`, asking tollgate's `/ext-authz` (the README's config).
fn envoy_yaml(decision: SocketAddr, upstream: &Upstream) -> String {
    let up = upstream.addr.unwrap();
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              # CORS preflights: tollgate decides (and writes the Access-Control-*
              # headers), Envoy answers; they never reach the upstream.
              - match:
                  prefix: /
                  headers:
                  - {{name: ":method", string_match: {{exact: OPTIONS}}}}
                  - {{name: origin, present_match: true}}
                  - {{name: access-control-request-method, present_match: true}}
                direct_response: {{status: 204}}
              - match: {{prefix: /}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              http_service:
                server_uri: {{uri: "http://{decision}", cluster: tollgate, timeout: 5s}}
                path_prefix: /ext-authz
                authorization_request:
                  allowed_headers:
                    patterns:
                    - {{exact: origin}}
                    - {{exact: access-control-request-method}}
                    - {{exact: access-control-request-headers}}
                    - {{exact: cookie}}
                    - {{exact: x-request-id}}
                    - {{exact: x-forwarded-for}}
                    - {{exact: x-forwarded-proto}}
                authorization_response:
                  allowed_upstream_headers:
                    patterns:
                    - {{prefix: x-auth-}}
                    - {{exact: x-request-id}}
                  allowed_client_headers_on_success:
                    patterns:
                    - {{prefix: access-control-}}
                    - {{exact: vary}}
                    - {{prefix: ratelimit}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
  - name: tollgate
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: tollgate
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
"#,
        up.port(),
        decision.port()
    )
}

/// nginx's `http {}` body in front of `upstream`, asking tollgate's `/auth-request`
/// (the README's config).
fn nginx_http(port: u16, decision: SocketAddr, upstream: &Upstream) -> String {
    let up = upstream.addr.unwrap();
    format!(
        r#"  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_tollgate;
      auth_request_set $tollgate_client $upstream_http_x_auth_client_id;
      auth_request_set $tollgate_subject $upstream_http_x_auth_subject;
      auth_request_set $tollgate_scopes $upstream_http_x_auth_scopes;
      auth_request_set $tollgate_request_id $upstream_http_x_request_id;
      auth_request_set $tollgate_error $upstream_http_x_tollgate_error_body;
      auth_request_set $tollgate_challenge $upstream_http_www_authenticate;
      # nginx keeps only the status of a refused auth_request (and copies a 401's
      # WWW-Authenticate itself): the SPEC body comes from X-Tollgate-Error-Body.
      error_page 401 = @tollgate_401;
      error_page 403 = @tollgate_403;
      proxy_set_header X-Auth-Client-Id $tollgate_client;
      proxy_set_header X-Auth-Subject $tollgate_subject;
      proxy_set_header X-Auth-Scopes $tollgate_scopes;
      proxy_set_header X-Request-Id $tollgate_request_id;
      proxy_pass http://{up};
    }}
    location = /_tollgate {{
      internal;
      proxy_pass http://{decision}/auth-request;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
    location @tollgate_401 {{
      internal;
      default_type application/json;
      add_header X-Request-Id $tollgate_request_id always;
      add_header Cache-Control no-store always;
      return 401 $tollgate_error;
    }}
    location @tollgate_403 {{
      internal;
      default_type application/json;
      add_header WWW-Authenticate $tollgate_challenge always;
      add_header X-Request-Id $tollgate_request_id always;
      add_header Cache-Control no-store always;
      return 403 $tollgate_error;
    }}
  }}"#
    )
}

/// A refusal as the client sees it through the ingress: SPEC's status, JSON body and
/// challenge, the body's request id the response's.
async fn assert_spec_error(
    r: reqwest::Response,
    status: u16,
    code: &str,
    challenge: &str,
) -> String {
    assert_eq!(r.status(), status, "{r:?}");
    let h = r.headers().clone();
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with(challenge),
        "{h:?}"
    );
    assert_eq!(h.get_all("www-authenticate").iter().count(), 1, "{h:?}");
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{h:?}"
    );
    let rid = h["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["request_id"], rid.as_str(), "{body}");
    assert!(body["error_description"].as_str().is_some(), "{body}");
    rid
}

// Behaviour: behind a real Envoy (ext_authz, HTTP service), an allowed request reaches
// the upstream with tollgate's identity headers (a client's own X-Auth-* never does);
// no token is SPEC's 401 and too few scopes SPEC's 403 insufficient_scope, body and
// challenge as tollgate writes them; a CORS preflight gets tollgate's answer; a denied
// request never reaches the upstream; denials are counted, logged and kept by request id.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_ext_authz_asks_tollgate() {
    let idp = spawn_idp().await;
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &upstream)).await;
    let envoy = start_envoy(&envoy_yaml(decision_addr(&gw), &upstream));
    let url = |p: &str| format!("http://{}{p}", envoy.addr);
    let c = client();

    let token = idp.token(serde_json::json!({}));
    let r = c
        .get(url("/v2/analytics/data?x=1"))
        .bearer_auth(&token)
        .header("x-auth-client-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/v2/analytics/data?x=1");
    assert_eq!(seen.header("x-auth-client-id"), Some("sap-cx-dashboard"));
    assert_eq!(seen.header("x-auth-subject"), Some("user-1"));
    assert_eq!(seen.header("x-auth-scopes"), Some("analytics.read"));
    assert_eq!(seen.headers["x-auth-client-id"].len(), 1, "{seen:?}");

    // A token without `sub`: the client's own X-Auth-Subject is removed, not passed on.
    let no_sub = idp.token(serde_json::json!({"sub": null}));
    let r = c
        .get(url("/v2/analytics/data"))
        .bearer_auth(&no_sub)
        .header("x-auth-subject", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.last().header("x-auth-subject"), None);
    let reached = upstream.count();

    // No token: SPEC's 401, as tollgate writes it.
    let r = c.get(url("/v2/analytics/data")).send().await.unwrap();
    let rid = assert_spec_error(r, 401, "invalid_token", "Bearer realm=\"tollgate\"").await;
    // Too few scopes: SPEC's 403 insufficient_scope.
    let r = c
        .get(url("/v2/analytics/admin"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let rid403 = assert_spec_error(r, 403, "insufficient_scope", "Bearer").await;
    // A method the permissions do not allow: decided on the client's method.
    let r = c
        .delete(url("/v2/analytics/data"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json_of(r).await["error"], "access_denied");
    // A preflight: tollgate's answer (its CORS headers), the upstream not involved.
    let r = c
        .request(reqwest::Method::OPTIONS, url("/v2/analytics/data"))
        .header("origin", "https://cx.company.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://cx.company.com"
    );
    assert!(r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    // A refusal to a browser carries the CORS headers too.
    let r = c
        .get(url("/v2/analytics/data"))
        .header("origin", "https://cx.company.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://cx.company.com"
    );
    assert_eq!(
        upstream.count(),
        reached,
        "a denied request reached the upstream"
    );

    // Like any request: counted with its reason, kept by request id.
    let admin = gw.admin_url("");
    metric_eventually(
        &admin,
        r#"tollgate_auth_denied_total{route="analytics",reason="token_missing"}"#,
        |v| v >= 2.0,
    )
    .await;
    metric_eventually(
        &admin,
        r#"tollgate_auth_denied_total{route="analytics",reason="scope_missing"}"#,
        |v| v >= 1.0,
    )
    .await;
    for (id, reason) in [(&rid, "token_missing"), (&rid403, "scope_missing")] {
        let rec = json_of(
            c.get(gw.admin_url(&format!("/admin/decisions/{id}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(rec["route"], "analytics", "{rec}");
        assert_eq!(rec["reason"], reason, "{rec}");
    }
    gw.stop().await;
}

// Behaviour: behind a real nginx (auth_request), an allowed request reaches the
// upstream with the identity headers; no token is SPEC's 401 with SPEC's JSON body
// (repeated by tollgate in X-Tollgate-Error-Body, since nginx drops an auth
// subrequest's body) and challenge; too few scopes SPEC's 403 insufficient_scope; the
// upstream never sees a denied request; the decision is made on the client's method.
#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_asks_tollgate() {
    let idp = spawn_idp().await;
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &upstream)).await;
    let decision = decision_addr(&gw);
    let nginx = start_nginx(|port| nginx_http(port, decision, &upstream));
    let url = |p: &str| format!("http://{}{p}", nginx.addr);
    let c = client();

    let token = idp.token(serde_json::json!({}));
    let r = c
        .post(url("/v2/analytics/data?x=1"))
        .bearer_auth(&token)
        .header("x-auth-subject", "forged")
        .body("rows")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = upstream.last();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/v2/analytics/data?x=1")
    );
    assert_eq!(&seen.body[..], b"rows");
    assert_eq!(seen.header("x-auth-client-id"), Some("sap-cx-dashboard"));
    assert_eq!(seen.header("x-auth-subject"), Some("user-1"));
    assert_eq!(seen.header("x-auth-scopes"), Some("analytics.read"));
    assert!(seen.header("x-request-id").is_some_and(|v| !v.is_empty()));
    let reached = upstream.count();

    let r = c.get(url("/v2/analytics/data")).send().await.unwrap();
    let rid = assert_spec_error(r, 401, "invalid_token", "Bearer realm=\"tollgate\"").await;
    let r = c
        .get(url("/v2/analytics/admin"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_spec_error(r, 403, "insufficient_scope", "Bearer").await;
    let r = c
        .delete(url("/v2/analytics/data"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json_of(r).await["error"], "access_denied");
    assert_eq!(
        upstream.count(),
        reached,
        "a denied request reached the upstream"
    );

    let rec = json_of(
        c.get(gw.admin_url(&format!("/admin/decisions/{rid}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rec["reason"], "token_missing", "{rec}");
    assert_eq!(rec["path"], "/v2/analytics/data", "{rec}");
    gw.stop().await;
}

// Behaviour: Traefik's forwardAuth convention (a GET carrying X-Forwarded-Method,
// -Proto, -Host, -Uri, -For), asked directly with a real HTTP client: 200 with the
// identity headers, or SPEC's error; the method and path decided on are the
// forwarded ones; a request that does not say its method is refused, not guessed.
#[tokio::test]
async fn traefik_forward_auth_convention() {
    let idp = spawn_idp().await;
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(&gateway_yaml(&idp, &upstream)).await;
    let base = format!("http://{}/forward-auth", decision_addr(&gw));
    let c = client();
    let token = idp.token(serde_json::json!({}));
    let ask = |method: &str, uri: &str| {
        c.get(&base)
            .header("x-forwarded-method", method)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "bi-api.company.com")
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-for", "192.0.2.10")
    };

    let r = ask("POST", "/v2/analytics/data?x=1")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-client-id"], "sap-cx-dashboard");
    assert_eq!(r.headers()["x-auth-subject"], "user-1");
    assert_eq!(r.headers()["x-auth-scopes"], "analytics.read");
    assert!(r.headers().get("authorization").is_none());
    assert!(r.headers().get("x-request-id").is_some());
    assert!(r.text().await.unwrap().is_empty());

    let r = ask("GET", "/v2/analytics/data").send().await.unwrap();
    assert_spec_error(r, 401, "invalid_token", "Bearer realm=\"tollgate\"").await;
    let r = ask("GET", "/v2/analytics/admin")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_spec_error(r, 403, "insufficient_scope", "Bearer").await;
    // The forwarded method decides (the decision request itself is a GET).
    let r = ask("DELETE", "/v2/analytics/data")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // No X-Forwarded-Method: 400, never decided as a GET.
    let r = c
        .get(&base)
        .header("x-forwarded-uri", "/v2/analytics/data")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(json_of(r).await["error_description"]
        .as_str()
        .unwrap()
        .contains("x-forwarded-method"));
    // The path is normalised before it is decided on, as the proxy does.
    let r = ask("GET", "/v2/analytics/x/../admin")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "normalised to /v2/analytics/admin");
    // A request head over max_header_bytes (16384 by default) is refused as the public
    // listener would refuse it: 431.
    let r = ask("GET", "/v2/analytics/data")
        .bearer_auth(&token)
        .header("x-big", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(json_of(r).await["error"], "request_header_too_large");
    assert_eq!(upstream.count(), 0, "the decision service forwards nothing");
    gw.stop().await;
}

// Behaviour: the route's upstream credentials are in an "allow" only when
// `decision.upstream_credentials` asks for them (they are a secret); then they replace
// the client's token for the ingress to send upstream. A `decision:` block needs the
// decision listener.
#[tokio::test]
async fn upstream_credentials_only_when_asked() {
    let idp = spawn_idp().await;
    let upstream = spawn_upstream().await;
    let with_basic = gateway_config(
        &idp,
        &upstream,
        json!({"auth": {"type": "basic", "username": "svc", "password": "s3cret"}}),
    );
    let token = idp.token(serde_json::json!({}));
    let c = client();
    for (decision, expected) in [
        (None, None),
        (
            Some(json!({"upstream_credentials": true})),
            Some("Basic c3ZjOnMzY3JldA=="),
        ),
    ] {
        let config = match &decision {
            Some(d) => with_basic.clone().set("decision", d.clone()),
            None => with_basic.clone(),
        };
        let gw = spawn_gateway(&config.yaml()).await;
        let r = c
            .get(format!("http://{}/forward-auth", decision_addr(&gw)))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/v2/analytics/data")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap()),
            expected,
            "{decision:?}"
        );
        assert_eq!(r.headers()["x-auth-client-id"], "sap-cx-dashboard");
        gw.stop().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        with_basic
            .set("decision", json!({"upstream_credentials": true}))
            .set(
                "server",
                json!({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}),
            )
            .yaml(),
    )
    .unwrap();
    let e = tollgate::Gateway::load(path)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("needs server.decision_listen"), "{e}");
}
