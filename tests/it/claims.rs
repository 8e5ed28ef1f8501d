//! `claims:` on routes and permissions over real sockets: tokens minted by the test IdP
//! (JWT via JWKS, and opaque via introspection), the real binary for the denial log and
//! the metric, and the 403 body that names the claim but never a value.

use serde_json::{json, Value};

use crate::cli::bin;
use crate::common::*;
use crate::gwconfig::{GatewayConfig, AUDIENCE};

fn config(idp: &Idp, up: &Upstream, extra_issuers: &[Value]) -> String {
    let mut cfg = GatewayConfig::new().issuer(idp, "corp");
    for v in extra_issuers {
        cfg = cfg.issuer_block(v.clone());
    }
    cfg.upstream("bi", &up.url())
        .route(json!({
            "name": "admin", "path_prefix": "/admin-api", "upstream": "bi",
            "auth": {
                "scopes": ["analytics.read"],
                "claims": {
                    "groups": ["bi-admins", "bi-owners"],
                    "realm_access.roles": ["analyst"],
                    "tenant": "${env:TOLLGATE_TEST_CLAIMS_TENANT}",
                },
            },
        }))
        .route(json!({
            "name": "reports", "path_prefix": "/reports", "upstream": "bi",
            "auth": {"scopes": ["analytics.read"]},
            "permissions": [
                {"path": "/reports/public", "methods": ["GET"]},
                {"path": "/reports/finance", "methods": ["GET"], "claims": {"department": "finance"}},
            ],
        }))
        .yaml()
}

const SECRET_VALUE: &str = "zz-private-group-4711";

// Behaviour: every listed claim must match (all-of), one listed value per claim is
// enough (any-of), array and string claims both work, dotted paths reach nested
// objects; a refusal is 403 access_denied with reason claim_mismatch, naming the claim
// but never a value, in the body, the denial log line and the metric.
#[tokio::test]
async fn route_and_permission_claims() {
    std::env::set_var("TOLLGATE_TEST_CLAIMS_TENANT", "acme");
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, config(&idp, &up, &[])).unwrap();
    let mut bin = spawn_binary(&cfg, &["run"]);
    let base = format!("http://{}", bin.public);
    let good = json!({
        "groups": [SECRET_VALUE, "bi-owners"],
        "realm_access": {"roles": ["viewer", "analyst"]},
        "tenant": "acme",
    });
    let with = |patch: serde_json::Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        idp.token(c)
    };
    let get = |path: &str, token: String, id: &str| {
        client()
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .header("x-request-id", id)
            .send()
    };
    // Allowed: array claim with one listed value, nested path, string claim.
    let r = get("/admin-api/x", with(json!({})), "claims-ok")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A string claim equal to a listed value works like a one-element array.
    let r = get(
        "/admin-api/x",
        with(json!({"groups": "bi-admins"})),
        "claims-str",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    let cases = [
        ("claims-missing", json!({"groups": null}), "groups"),
        ("claims-wrong", json!({"groups": [SECRET_VALUE]}), "groups"),
        (
            "claims-nested",
            json!({"realm_access": {"roles": [SECRET_VALUE]}}),
            "realm_access.roles",
        ),
        ("claims-tenant", json!({"tenant": SECRET_VALUE}), "tenant"),
        // Not split: a space-separated string is one value.
        (
            "claims-spaced",
            json!({"groups": format!("{SECRET_VALUE} bi-admins")}),
            "groups",
        ),
    ];
    for (id, patch, claim) in &cases {
        let r = get("/admin-api/x", with(patch.clone()), id).await.unwrap();
        assert_eq!(r.status(), 403, "{id}");
        let body = r.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "access_denied", "{id}: {body}");
        let d = v["error_description"].as_str().unwrap();
        assert!(d.contains(&format!("\"{claim}\"")), "{id}: {d}");
        for value in [SECRET_VALUE, "bi-admins", "bi-owners", "analyst", "acme"] {
            assert!(
                !body.contains(value),
                "{id}: a claim value in the body: {body}"
            );
        }
    }
    // Permission-level claims, on top of the route's gates.
    let r = get("/reports/public", with(json!({})), "perm-public")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get(
        "/reports/finance",
        with(json!({"department": "finance"})),
        "perm-ok",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = get(
        "/reports/finance",
        with(json!({"department": SECRET_VALUE})),
        "perm-no",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let v = json_of(r).await;
    assert_eq!(v["error"], "access_denied");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("\"department\""),
        "{v}"
    );

    let admin = format!("http://{}", bin.admin.clone().unwrap());
    let metrics = admin_metrics(&admin).await;
    assert_eq!(
        series_value(
            &metrics,
            "tollgate_auth_denied_total{route=\"admin\",reason=\"claim_mismatch\"}"
        ),
        Some(cases.len() as f64),
        "{metrics}"
    );
    assert_eq!(
        series_value(
            &metrics,
            "tollgate_auth_denied_total{route=\"reports\",reason=\"claim_mismatch\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(bin.terminate().await.success());
    let logs = bin.log_text();
    for (id, _, claim) in &cases {
        let line = logs
            .lines()
            .find(|l| l.contains("denied") && l.contains(id))
            .unwrap_or_else(|| panic!("no denial line for {id}:\n{logs}"));
        assert!(line.contains("reason=\"claim_mismatch\""), "{line}");
        assert!(line.contains(claim), "{line}");
    }
    for value in [SECRET_VALUE, "bi-owners", "acme"] {
        assert!(!logs.contains(value), "a claim value in the logs:\n{logs}");
    }
}

// Behaviour: claims of an introspected (opaque) token are checked the same way.
#[tokio::test]
async fn introspected_token_claims() {
    std::env::set_var("TOLLGATE_TEST_CLAIMS_TENANT", "acme");
    std::env::set_var("TOLLGATE_TEST_INTROSPECT_SECRET", INTROSPECT_SECRET);
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let opaque = json!({
        "name": "opaque",
        "issuer": idp.issuer,
        "introspection": {
            "url": idp.url("/introspect"),
            "client_id": INTROSPECT_ID,
            "client_secret": "${env:TOLLGATE_TEST_INTROSPECT_SECRET}",
        },
        "audiences": [AUDIENCE],
    });
    let gw = spawn_gateway(&config(&idp, &up, &[opaque])).await;
    let active = |extra: serde_json::Value| {
        let mut v = json!({"active": true, "iss": idp.issuer, "aud": "https://bi-api.company.com",
            "client_id": "partner", "sub": "svc", "scope": "analytics.read", "exp": now() + 300,
            "groups": ["bi-admins"], "realm_access": {"roles": ["analyst"]}, "tenant": "acme"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    idp.opaque
        .lock()
        .unwrap()
        .insert("opaque-claims-ok".into(), active(json!({})));
    idp.opaque.lock().unwrap().insert(
        "opaque-claims-no".into(),
        active(json!({"realm_access": {"roles": ["viewer"]}})),
    );
    let r = client()
        .get(gw.url("/admin-api/x"))
        .bearer_auth("opaque-claims-ok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw.url("/admin-api/x"))
        .bearer_auth("opaque-claims-no")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v = json_of(r).await;
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("\"realm_access.roles\""),
        "{v}"
    );
    gw.stop().await;
}

// Behaviour: `tollgate explain` shows the claims gate with the values (the required
// ones and the token's), and `tollgate test` cases can expect claim_mismatch.
#[tokio::test]
async fn explain_and_policy_tests_show_claims() {
    std::env::set_var("TOLLGATE_TEST_CLAIMS_TENANT", "acme");
    let idp = spawn_idp().await;
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, config(&idp, &up, &[])).unwrap();
    let token = idp.token(
        json!({"groups": [SECRET_VALUE], "realm_access": {"roles": ["analyst"]}, "tenant": "acme"}),
    );
    let out = tokio::task::spawn_blocking(move || {
        output_within(
            "tollgate explain",
            bin()
                .args(["explain", "--config"])
                .arg(&cfg)
                .args(["--token", &token, "/admin-api/x"]),
            PATIENCE,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "route claim groups: one of [bi-admins, bi-owners] required, token has [\"{SECRET_VALUE}\"] -> mismatch"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("route claim realm_access.roles: one of [analyst] required, token has [\"analyst\"] -> ok"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("reason claim_mismatch"),
        "{}",
        out.stdout
    );

    // Policy tests with minted tokens (the issuer's JWKS replaced for the run).
    let cfg = dir.path().join("gateway.yaml");
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "mint: {issuers: [corp]}\ncases:\n  - name: admins pass\n    token: {issuer: corp, claims: {scope: analytics.read, groups: [bi-admins], realm_access: {roles: [analyst]}, tenant: acme}}\n    path: /admin-api/x\n    expect: {status: 200}\n  - name: other tenant refused\n    token: {issuer: corp, claims: {scope: analytics.read, groups: [bi-admins], realm_access: {roles: [analyst]}, tenant: globex}}\n    path: /admin-api/x\n    expect: {status: 403, reason: claim_mismatch}\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        output_within(
            "tollgate test",
            bin().args(["test", "--config"]).arg(&cfg).arg(&cases),
            PATIENCE,
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("2 passed, 0 failed"), "{}", out.stdout);
}

// Behaviour: bad claims config is refused with located problems. (Literal YAML: the
// line and column numbers are what this tests.)
#[test]
fn bad_claims_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.yaml");
    std::fs::write(
        &p,
        "server:\n  listen: \"127.0.0.1:0\"\nissuers:\n  - name: corp\n    issuer: \"https://idp\"\n    jwks_uri: \"http://127.0.0.1:9/jwks\"\n    audiences: [a]\nupstreams:\n  - name: bi\n    url: \"http://127.0.0.1:9\"\nroutes:\n  - name: r\n    path_prefix: /r\n    upstream: bi\n    auth:\n      claims: {groups: [], level: 3, \"a..b\": x}\n    permissions:\n      - path: /r/x\n        methods: [GET]\n        claims: {roles: [true]}\n",
    )
    .unwrap();
    let out = output_within(
        "tollgate validate",
        bin().args(["validate", "--config"]).arg(&p),
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(1));
    let f = p.display().to_string();
    for needle in [
        format!("{f}:16:24 routes[0].auth.claims.groups: empty list"),
        format!("{f}:16:35 routes[0].auth.claims.level: claim values are strings"),
        // A bad name points at the name (the key), not at its value.
        format!("{f}:16:38 routes[0].auth.claims.a..b: claim path \"a..b\" has an empty segment"),
        format!("{f}:20:26 routes[0].permissions[0].claims.roles[0]: claim values are strings"),
    ] {
        assert!(out.stdout.contains(&needle), "{needle}\n{}", out.stdout);
    }
}
