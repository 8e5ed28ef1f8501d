//! TLS listeners: the certificate picked by SNI, the plain-HTTP redirect listener,
//! certificates reloaded with the config, and a reload that cannot switch TLS on or off.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::json;

use crate::common::*;
use crate::gwconfig::GatewayConfig;
use crate::reload::RELOAD_DEADLINE;

/// A TLS client trusting the test CA, every listed name resolved to `addr`.
pub(crate) fn ca_client(addr: SocketAddr, names: &[&str]) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.pem")).unwrap()).unwrap();
    tollgate::tls::install_default_provider();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .add_root_certificate(ca)
        .use_rustls_tls();
    for n in names {
        b = b.resolve(n, addr);
    }
    b.build().unwrap()
}

/// A TLS client that accepts any certificate but reports the one served.
pub(crate) fn peek_client(addr: SocketAddr, names: &[&str]) -> reqwest::Client {
    tollgate::tls::install_default_provider();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .use_rustls_tls();
    for n in names {
        b = b.resolve(n, addr);
    }
    b.build().unwrap()
}

/// The DER of the leaf certificate served for `host` (SNI) on `addr`.
pub(crate) async fn served_cert(addr: SocketAddr, host: &str) -> Vec<u8> {
    let r = peek_client(addr, &[host])
        .get(format!("https://{host}:{}/nothing-here", addr.port()))
        .send()
        .await
        .unwrap();
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("no peer certificate")
        .to_vec()
}

pub(crate) fn der_of(pem: &Path) -> Vec<u8> {
    tollgate::tls::load_certs(pem).unwrap()[0].to_vec()
}

pub(crate) fn f(name: &str) -> String {
    fixture(name).display().to_string()
}

/// HTTPS on the public listener with `cert` and `key`, one open route on /api.
pub(crate) fn tls_config(up: &Upstream, cert: &str, key: &str) -> GatewayConfig {
    GatewayConfig::new()
        .merge("server", json!({"tls": {"cert": cert, "key": key}}))
        .upstream("bi", &up.url())
        .open_route("api", "/api", "bi")
}

pub(crate) fn tls_yaml(up: &Upstream, cert: &str, key: &str) -> String {
    tls_config(up, cert, key).yaml()
}

// Behaviour: `server.tls.sni` serves the certificate chosen by the client's SNI
// (exact and `*.` wildcard of one label), the default one otherwise.
#[tokio::test]
async fn sni_picks_the_certificate() {
    let up = spawn_upstream().await;
    let sni = json!({"tls": {"sni": [{
        "hosts": ["partner.company.com", "*.partner.company.com"],
        "cert": f("sni.pem"),
        "key": f("sni-key.pem"),
    }]}});
    let gw = spawn_gateway(
        &tls_config(&up, &f("server.pem"), &f("server-key.pem"))
            .merge("server", sni)
            .yaml(),
    )
    .await;
    let port = gw.addr.port();
    let names = ["partner.company.com", "api.company.com"];
    for host in names {
        let r = ca_client(gw.addr, &names)
            .get(format!("https://{host}:{port}/api/x"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
    }
    assert_eq!(
        served_cert(gw.addr, "partner.company.com").await,
        der_of(&fixture("sni.pem"))
    );
    assert_eq!(
        served_cert(gw.addr, "PARTNER.company.com").await,
        der_of(&fixture("sni.pem"))
    );
    assert_eq!(
        served_cert(gw.addr, "eu.partner.company.com").await,
        der_of(&fixture("sni.pem"))
    );
    assert_eq!(
        served_cert(gw.addr, "api.company.com").await,
        der_of(&fixture("server.pem"))
    );
    assert_eq!(
        served_cert(gw.addr, "xpartner.company.com").await,
        der_of(&fixture("server.pem"))
    );
    // A wildcard covers one label, as the certificate's would.
    assert_eq!(
        served_cert(gw.addr, "a.eu.partner.company.com").await,
        der_of(&fixture("server.pem"))
    );
    gw.stop().await;

    // Control: without `sni`, partner.company.com gets the default certificate, which
    // a verifying client refuses.
    let gw = spawn_gateway(&tls_yaml(&up, &f("server.pem"), &f("server-key.pem"))).await;
    let res = ca_client(gw.addr, &["partner.company.com"])
        .get(format!(
            "https://partner.company.com:{}/api/x",
            gw.addr.port()
        ))
        .send()
        .await;
    assert!(res.is_err(), "{res:?}");
    gw.stop().await;
}

// Behaviour: `redirect_listen` answers 308 to https://{host}{path} (SPEC: no port, the
// clients' HTTPS port is 443 behind a load balancer), query kept; `redirect_https_port`
// adds a port; following it reaches the route.
#[tokio::test]
async fn redirect_listener_answers_308() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(
        &tls_config(&up, &f("server.pem"), &f("server-key.pem"))
            .merge("server", json!({"redirect_listen": "127.0.0.1:0"}))
            .yaml(),
    )
    .await;
    let redirect = gw
        .running
        .as_ref()
        .unwrap()
        .redirect
        .expect("redirect listener");
    tollgate::tls::install_default_provider();
    let no_follow = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(format!("http://{redirect}/api/items?x=1&y=2"))
        .header("host", "API.company.com:8081")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["x-request-id"].len(),
        32,
        "every response carries a request id"
    );
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(loc, "https://api.company.com/api/items?x=1&y=2");
    assert_eq!(up.count(), 0, "the redirect listener never proxies");
    let r = no_follow
        .post(format!("http://{redirect}/other"))
        .header("host", "api.company.com")
        .header("x-request-id", "lb-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["x-request-id"], "lb-42", "a sane id is kept");
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .ends_with("/other"));

    // Following the Location (on the TLS listener's real port) reaches the route.
    let loc = loc.replacen(
        "api.company.com",
        &format!("api.company.com:{}", gw.addr.port()),
        1,
    );
    let r = ca_client(gw.addr, &["api.company.com"])
        .get(&loc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().uri, "/api/items?x=1&y=2");
    gw.stop().await;
}

// Behaviour: certificates reload with the config: after the cert file is replaced
// and the config reloaded, new connections get the new certificate; a broken cert
// file is rejected and the old certificate keeps serving.
#[tokio::test]
async fn certificates_reload_with_the_config() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.pem");
    let key = dir.path().join("tls-key.pem");
    std::fs::copy(fixture("server.pem"), &cert).unwrap();
    std::fs::copy(fixture("server-key.pem"), &key).unwrap();
    // Relative paths: resolved against the config file's folder.
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, tls_yaml(&up, "tls.pem", "tls-key.pem")).unwrap();
    let loaded = tollgate::Gateway::load(cfg.clone()).unwrap();
    let running = tollgate::start(loaded).await.unwrap();
    let addr = running.public;
    let admin = format!("http://{}", running.admin.unwrap());
    let port = addr.port();
    let names = ["api.company.com", "partner.company.com"];

    let get = |host: &'static str| {
        let c = ca_client(addr, &names);
        async move {
            c.get(format!("https://{host}:{port}/api/x"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(get("api.company.com").await.unwrap(), 200);
    assert!(get("partner.company.com").await.is_err());
    assert_eq!(
        served_cert(addr, "api.company.com").await,
        der_of(&fixture("server.pem"))
    );

    std::fs::copy(fixture("sni.pem"), &cert).unwrap();
    std::fs::copy(fixture("sni-key.pem"), &key).unwrap();
    let r = client()
        .post(format!("{admin}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get("partner.company.com").await.unwrap(), 200);
    assert!(get("api.company.com").await.is_err());
    assert_eq!(
        served_cert(addr, "api.company.com").await,
        der_of(&fixture("sni.pem"))
    );

    // A broken certificate is rejected; the previous one keeps serving.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let r = client()
        .post(format!("{admin}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body = json_of(r).await;
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("server.tls.cert")),
        "{body:#}"
    );
    assert_eq!(get("partner.company.com").await.unwrap(), 200);
    assert_eq!(
        served_cert(addr, "partner.company.com").await,
        der_of(&fixture("sni.pem"))
    );
    running.shutdown().await;
}

// Behaviour: turning TLS off (or on) cannot be applied to a bound listener: the reload
// is rejected with a located `server.tls` error and HTTPS keeps serving.
#[tokio::test]
async fn reload_cannot_toggle_tls() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&tls_yaml(&up, &f("server.pem"), &f("server-key.pem"))).await;
    let plain = GatewayConfig::new()
        .upstream("bi", &up.url())
        .open_route("api", "/api", "bi")
        .yaml();
    std::fs::write(gw.config_path(), &plain).unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body = json_of(r).await;
    let want = format!("{}:", gw.config_path().display());
    assert!(
        body["errors"].as_array().unwrap().iter().any(|e| {
            let e = e.as_str().unwrap();
            e.starts_with(&want) && e.contains(" server.tls: ")
        }),
        "{body:#}"
    );
    let r = ca_client(gw.addr, &["api.company.com"])
        .get(format!("https://api.company.com:{}/api/x", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "HTTPS keeps serving");
    gw.stop().await;

    // And the other way round.
    let gw = spawn_gateway(&plain).await;
    std::fs::write(
        gw.config_path(),
        tls_yaml(&up, &f("server.pem"), &f("server-key.pem")),
    )
    .unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "plain HTTP keeps serving");
    gw.stop().await;
}

// Behaviour: a certificate rotated underneath (cert-manager renewing the Secret, in a
// folder other than the config's) is picked up without any reload command; the same
// for a `${file:}` secret.
#[tokio::test]
async fn rotated_files_reload_by_themselves() {
    let up = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(fixture("server.pem"), certs.join("tls.pem")).unwrap();
    std::fs::copy(fixture("server-key.pem"), certs.join("tls-key.pem")).unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, tls_yaml(&up, "certs/tls.pem", "certs/tls-key.pem")).unwrap();
    let running = tollgate::start(tollgate::Gateway::load(cfg.clone()).unwrap())
        .await
        .unwrap();
    let addr = running.public;
    assert_eq!(
        served_cert(addr, "api.company.com").await,
        der_of(&fixture("server.pem"))
    );
    // Rotate: write the new pair via temp files + rename, as kubelet does.
    std::fs::copy(fixture("sni-key.pem"), certs.join("k.tmp")).unwrap();
    std::fs::copy(fixture("sni.pem"), certs.join("c.tmp")).unwrap();
    std::fs::rename(certs.join("k.tmp"), certs.join("tls-key.pem")).unwrap();
    std::fs::rename(certs.join("c.tmp"), certs.join("tls.pem")).unwrap();
    let want = der_of(&fixture("sni.pem"));
    eventually(
        "the rotated certificate is served",
        RELOAD_DEADLINE,
        async || served_cert(addr, "api.company.com").await == want,
        |rotated| *rotated,
    )
    .await;
    let status: serde_json::Value = client()
        .get(format!("http://{}/admin/status", running.admin.unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["last_reload"]["trigger"], "file");
    assert_eq!(status["last_reload"]["success"], true);
    running.shutdown().await;
}
