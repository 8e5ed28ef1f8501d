//! Live reload: a file edit, a ConfigMap symlink swap, SIGHUP and `POST /admin/reload`
//! apply a new config (or refuse an invalid one while the old keeps serving), requests in
//! flight finish on the config they started with, and `${file:}` references reload.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use serde_json::json;

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// A config with one route `name` on `prefix` to `upstream_url`, auth none. Literal
/// YAML: the reload tests expect a bad `upstream:` here at line 10, column 15.
pub(crate) fn route_yaml(upstream_url: &str, name: &str, prefix: &str) -> String {
    format!(
        r#"server:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
upstreams:
  - name: bi
    url: "{upstream_url}"
routes:
  - name: {name}
    path_prefix: {prefix}
    upstream: bi
    auth: none
"#
    )
}

/// (success, failure) of `tollgate_config_reloads_total`.
pub(crate) async fn reloads_at(admin: &str) -> (f64, f64) {
    let m = admin_metrics(admin).await;
    (
        series_value(&m, "tollgate_config_reloads_total{result=\"success\"}").expect(&m),
        series_value(&m, "tollgate_config_reloads_total{result=\"failure\"}").expect(&m),
    )
}

/// How long a config change (file edit, ConfigMap swap, rotated certificate) may take to
/// be applied before a test fails. SPEC promises 2 s; a busy machine needs more.
pub(crate) const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

/// How long a test watches for something that must NOT happen (the watcher applying the
/// same content twice, reporting an invalid file again): several times the watcher's
/// longest path from a change to a reload (a 1 s poll, then 2 x 150 ms of settling).
pub(crate) const NOTHING_MORE_FOR: Duration = Duration::from_millis(2500);

/// Polls `GET url` until it answers `want` (at most [`RELOAD_DEADLINE`]); panics otherwise.
pub(crate) async fn wait_status(what: &str, url: &str, want: u16) {
    let _ = eventually(
        what,
        RELOAD_DEADLINE,
        async || {
            client()
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        },
        |r| r.as_ref().is_ok_and(|s| *s == want),
    )
    .await;
}

/// Polls `/admin/status` until `pred` holds (at most [`RELOAD_DEADLINE`]); returns it.
pub(crate) async fn wait_for_status(
    admin: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(
        "/admin/status matches",
        RELOAD_DEADLINE,
        async || admin_status_at(admin).await,
        |s| pred(s),
    )
    .await
}

/// Writes a file the way an editor's "save" does when it writes in place.
pub(crate) fn edit(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Writes a file the way kubelet and most tools replace one: a new file beside it,
/// renamed over it, so that no reader ever sees it half written.
pub(crate) fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// Behaviour: editing the watched file applies a changed route/upstream within 2 s;
// /admin/status shows the new version, success and the trigger; the success counter
// goes up by exactly one.
#[tokio::test]
async fn file_edit_is_applied_live() {
    let a = spawn_upstream().await;
    let b = spawn_upstream().await;
    let gw = spawn_gateway(&route_yaml(&a.url(), "v1", "/api")).await;
    let admin = gw.admin_url("");
    let st = admin_status_at(&admin).await;
    assert_eq!(st["config_version"], 1);
    let (ok0, fail0) = reloads_at(&admin).await;
    assert_eq!((ok0, fail0), (0.0, 0.0));
    assert_eq!(
        client()
            .get(gw.url("/api/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(a.count(), 1);

    edit(&gw.config_path(), &route_yaml(&b.url(), "v2", "/v2"));
    wait_status("the edited route is applied", &gw.url("/v2/x"), 200).await;
    assert_eq!(
        b.last().uri,
        "/v2/x",
        "the new upstream serves the new route"
    );
    assert_eq!(
        client()
            .get(gw.url("/api/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "the old route is gone"
    );
    assert_eq!(a.count(), 1);

    let st = admin_status_at(&admin).await;
    assert_eq!(st["config_version"], 2, "{st:#}");
    assert_eq!(st["last_reload"]["success"], true, "{st:#}");
    assert_eq!(st["last_reload"]["trigger"], "file", "{st:#}");
    assert_eq!(st["last_reload"]["errors"], json!([]), "{st:#}");
    assert!(st["last_reload"]["at"].is_string(), "{st:#}");
    // The watcher must not apply the same content twice.
    tokio::time::sleep(NOTHING_MORE_FOR).await;
    assert_eq!(reloads_at(&admin).await, (ok0 + 1.0, fail0));
    assert_eq!(admin_status_at(&admin).await["config_version"], 2);
    let m = admin_metrics(&admin).await;
    assert_eq!(
        series_value(&m, "tollgate_config_version"),
        Some(2.0),
        "{m}"
    );
    gw.stop().await;
}

// Behaviour: an invalid edit is rejected: the old config keeps serving, /admin/status
// shows the failure with file:line:col errors, the failure counter goes up; fixing
// the file (here: restoring the original text) recovers.
#[tokio::test]
async fn invalid_edit_is_rejected_then_recovers() {
    let a = spawn_upstream().await;
    let good = route_yaml(&a.url(), "api", "/api");
    let gw = spawn_gateway(&good).await;
    let admin = gw.admin_url("");
    let path = gw.config_path();

    // Line 10 is `    upstream: bi`; the value starts at column 15.
    let bad = good.replace("    upstream: bi\n", "    upstream: nope\n");
    assert_ne!(bad, good);
    edit(&path, &bad);
    let st = wait_for_status(&admin, |s| s["last_reload"]["success"] == false).await;
    let errors: Vec<String> = st["last_reload"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    let want = format!(
        "{}:10:15 routes[0].upstream: unknown upstream \"nope\"",
        path.display()
    );
    assert!(
        errors.iter().any(|e| e.starts_with(&want)),
        "missing {want:?} in {errors:#?}"
    );
    assert_eq!(
        st["config_version"], 1,
        "the old config is still the one serving"
    );
    assert_eq!(st["last_reload"]["trigger"], "file");
    assert_eq!(reloads_at(&admin).await, (0.0, 1.0));
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the old config keeps serving");
    assert_eq!(a.count(), 1);

    // An invalid file is reported once, not once per poll.
    tokio::time::sleep(NOTHING_MORE_FOR).await;
    assert_eq!(reloads_at(&admin).await, (0.0, 1.0));

    // Fixing it by putting the original text back recovers, although that text is
    // what is already serving.
    edit(&path, &good);
    let st = wait_for_status(&admin, |s| s["last_reload"]["success"] == true).await;
    assert_eq!(st["last_reload"]["errors"], json!([]), "{st:#}");
    assert_eq!(st["config_version"], 2, "{st:#}");
    assert_eq!(reloads_at(&admin).await, (1.0, 1.0));

    // And a real fix with a change is applied too.
    edit(&path, &route_yaml(&a.url(), "api", "/other"));
    wait_status(
        "the fixed and changed route is applied",
        &gw.url("/other/x"),
        200,
    )
    .await;
    let st = admin_status_at(&admin).await;
    assert_eq!(st["config_version"], 3, "{st:#}");
    assert_eq!(reloads_at(&admin).await, (2.0, 1.0));
    gw.stop().await;
}

// Behaviour: the Kubernetes ConfigMap layout — `gateway.yaml -> ..data/gateway.yaml`,
// `..data -> ..<timestamp>/` — is followed when `..data` is swapped atomically.
#[tokio::test]
async fn configmap_symlink_swap_is_applied() {
    use std::os::unix::fs::symlink;
    let a = spawn_upstream().await;
    let b = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v1 = d.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("gateway.yaml"), route_yaml(&a.url(), "v1", "/api")).unwrap();
    symlink("..2026_01_01_00_00_00.000000001", d.join("..data")).unwrap();
    symlink("..data/gateway.yaml", d.join("gateway.yaml")).unwrap();

    let gw = tollgate::Gateway::load(d.join("gateway.yaml")).unwrap();
    let running = tollgate::start(gw).await.unwrap();
    let public = format!("http://{}", running.public);
    let admin = format!("http://{}", running.admin.unwrap());
    let r = client()
        .get(format!("{public}/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(a.count(), 1);

    // What the kubelet does: write a new folder, point `..data_tmp` at it, rename
    // it over `..data`, remove the old folder.
    let v2 = d.join("..2026_01_01_00_05_00.000000002");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("gateway.yaml"), route_yaml(&b.url(), "v2", "/v2")).unwrap();
    symlink("..2026_01_01_00_05_00.000000002", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();

    wait_status(
        "the swapped ConfigMap is applied",
        &format!("{public}/v2/x"),
        200,
    )
    .await;
    assert_eq!(b.count(), 1);
    assert_eq!(
        client()
            .get(format!("{public}/api/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let st = admin_status_at(&admin).await;
    assert_eq!(st["config_version"], 2, "{st:#}");
    assert_eq!(st["last_reload"]["success"], true, "{st:#}");
    assert_eq!(reloads_at(&admin).await, (1.0, 0.0));

    // A second swap works as well (the watch survives the first one).
    let v3 = d.join("..2026_01_01_00_10_00.000000003");
    std::fs::create_dir(&v3).unwrap();
    std::fs::write(v3.join("gateway.yaml"), route_yaml(&a.url(), "v3", "/v3")).unwrap();
    symlink("..2026_01_01_00_10_00.000000003", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(&v2).unwrap();
    wait_status(
        "the second ConfigMap swap is applied",
        &format!("{public}/v3/x"),
        200,
    )
    .await;
    assert_eq!(admin_status_at(&admin).await["config_version"], 3);
    running.shutdown().await;
}

// Behaviour: SIGHUP reloads (also when nothing changed) and is counted; a SIGHUP on
// an invalid file is counted as a failure and the old config keeps serving.
#[tokio::test]
async fn sighup_reloads_the_binary() {
    let a = spawn_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let good = route_yaml(&a.url(), "api", "/api");
    std::fs::write(&path, &good).unwrap();
    let mut bin = spawn_binary(&path, &["run"]);
    let admin = format!("http://{}", bin.admin.clone().expect("admin listener"));
    let public = format!("http://{}", bin.public);
    assert_eq!(reloads_at(&admin).await, (0.0, 0.0));

    // Unchanged file: SIGHUP still reloads.
    bin.process.signal("HUP");
    let st = wait_for_status(&admin, |s| s["config_version"] == 2).await;
    assert_eq!(st["last_reload"]["trigger"], "SIGHUP", "{st:#}");
    assert_eq!(st["last_reload"]["success"], true, "{st:#}");
    assert_eq!(reloads_at(&admin).await, (1.0, 0.0));
    bin.process.signal("HUP");
    wait_for_status(&admin, |s| s["config_version"] == 3).await;
    assert_eq!(reloads_at(&admin).await, (2.0, 0.0));

    // Invalid file: the watcher reports it once; SIGHUP tries (and fails) again.
    // Written beside and renamed over: the binary's watcher runs in another process,
    // and must not catch the file truncated but not yet written (a second failure).
    replace_file(&path, &good.replace("upstream: bi\n", "upstream: nope\n"));
    wait_for_status(&admin, |s| s["last_reload"]["success"] == false).await;
    assert_eq!(reloads_at(&admin).await, (2.0, 1.0));
    bin.process.signal("HUP");
    let st = wait_for_status(&admin, |s| s["last_reload"]["trigger"] == "SIGHUP").await;
    assert_eq!(st["last_reload"]["success"], false, "{st:#}");
    assert_eq!(st["config_version"], 3, "{st:#}");
    assert_eq!(reloads_at(&admin).await, (2.0, 2.0));
    let r = client()
        .get(format!("{public}/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the old config keeps serving");

    // The process is still healthy and stops cleanly.
    assert!(bin.terminate().await.success());
}

// Behaviour: POST /admin/reload answers when done: 200 with the new version (also when
// nothing changed); 422 with located errors for an invalid file, the old config
// keeps serving; both counted. Other methods -> 405.
#[tokio::test]
async fn admin_reload_endpoint() {
    let a = spawn_upstream().await;
    let good = route_yaml(&a.url(), "api", "/api");
    let gw = spawn_gateway(&good).await;
    let admin = gw.admin_url("");
    let reload = gw.admin_url("/admin/reload");

    for want in [2, 3] {
        let r = client().post(&reload).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = json_of(r).await;
        assert_eq!(body["result"], "success", "{body:#}");
        assert_eq!(body["config_version"], want, "{body:#}");
        let st = admin_status_at(&admin).await;
        assert_eq!(st["config_version"], want);
        assert_eq!(st["last_reload"]["trigger"], "admin");
    }
    assert_eq!(reloads_at(&admin).await, (2.0, 0.0));

    // A changed file is applied by the time the answer arrives.
    std::fs::write(gw.config_path(), route_yaml(&a.url(), "api", "/moved")).unwrap();
    let r = client().post(&reload).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v = json_of(r).await["config_version"].as_u64().unwrap();
    assert!(v >= 4, "{v}");
    assert_eq!(
        client()
            .get(gw.url("/moved/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Let the watcher see the same change (it must not reload it again).
    tokio::time::sleep(NOTHING_MORE_FOR).await;
    let (ok, fail) = reloads_at(&admin).await;
    assert_eq!(fail, 0.0);
    // Three by hand, plus at most one by the watcher if it saw the change first.
    assert!(ok == 3.0 || ok == 4.0, "{ok}");
    assert_eq!(admin_status_at(&admin).await["config_version"], ok + 1.0);

    // Invalid: wait until the watcher has rejected it, then ask explicitly.
    let bad = route_yaml(&a.url(), "api", "/moved").replace("upstream: bi\n", "upstream: nope\n");
    std::fs::write(gw.config_path(), &bad).unwrap();
    wait_for_status(&admin, |s| s["last_reload"]["success"] == false).await;
    assert_eq!(reloads_at(&admin).await, (ok, 1.0));
    let r = client().post(&reload).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = json_of(r).await;
    assert_eq!(body["result"], "failure", "{body:#}");
    assert_eq!(body["config_version"], ok + 1.0, "{body:#}");
    let want = format!(
        "{}:10:15 routes[0].upstream: unknown upstream \"nope\"",
        gw.config_path().display()
    );
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().starts_with(&want)),
        "missing {want:?} in {body:#}"
    );
    assert_eq!(reloads_at(&admin).await, (ok, 2.0));
    let st = admin_status_at(&admin).await;
    assert_eq!(st["last_reload"]["trigger"], "admin");
    assert_eq!(st["last_reload"]["success"], false);
    assert_eq!(
        client()
            .get(gw.url("/moved/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the old config keeps serving"
    );

    for m in [reqwest::Method::GET, reqwest::Method::PUT] {
        let r = client().request(m, &reload).send().await.unwrap();
        assert_eq!(r.status(), 405);
    }
    assert_eq!(reloads_at(&admin).await, (ok, 2.0));
    gw.stop().await;
}

pub(crate) type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

pub(crate) async fn h1_get(tx: &mut H1, path: &str) -> (u16, serde_json::Value) {
    let req = hyper::Request::get(path)
        .header("host", "gw.test")
        .body(Empty::new())
        .unwrap();
    let resp = tx.send_request(req).await.expect("connection dropped");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

// Behaviour: a request in flight across a reload completes on the config it started
// with (its upstream, its route name in the metrics); the same keep-alive connection
// (HTTP/1.1) and the same h2 connection stay open and serve the next requests on
// the new config.
#[tokio::test]
async fn in_flight_requests_survive_a_reload() {
    let a = spawn_upstream().await;
    let b = spawn_upstream().await;
    let gw = spawn_gateway(&route_yaml(&a.url(), "old-route", "/api")).await;
    let admin = gw.admin_url("");

    // HTTP/1.1 keep-alive connection.
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    let h1_conn = tokio::spawn(conn);
    assert_eq!(h1_get(&mut h1, "/api/first").await.0, 200);

    // h2c connection (prior knowledge).
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    let h2_conn = tokio::spawn(conn);

    // Held at upstream A until released: in flight for as long as the test needs.
    let slow_h1 = tokio::spawn(async move {
        let r = h1_get(&mut h1, "/api/hold/h1").await;
        (r, h1)
    });
    let mut h2c = h2.clone();
    let slow_h2 = tokio::spawn(async move {
        let req = hyper::Request::get("http://gw.test/api/hold/h2")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = h2c.send_request(req).await.expect("h2 stream failed");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    });
    // Both held requests have reached upstream A.
    eventually(
        "the held requests reach upstream A",
        PATIENCE,
        async || a.count(),
        |n| *n >= 3,
    )
    .await;
    assert_eq!(a.count(), 3);

    std::fs::write(gw.config_path(), route_yaml(&b.url(), "new-route", "/api")).unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // New requests use the new config while the old ones are still in flight.
    assert_eq!(
        client()
            .get(gw.url("/api/new"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(b.count(), 1);
    assert!(!slow_h1.is_finished() && !slow_h2.is_finished());

    a.release();
    let ((status, body), mut h1) = slow_h1.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["uri"], "/api/hold/h1");
    let (status, body) = slow_h2.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["uri"], "/api/hold/h2");
    assert_eq!(
        a.count(),
        3,
        "old requests were answered by the old upstream"
    );

    // Same connections, next requests: new config.
    assert_eq!(h1_get(&mut h1, "/api/after").await.0, 200);
    assert_eq!(b.last().uri, "/api/after");
    let mut h2c = h2.clone();
    let resp = h2c
        .send_request(
            hyper::Request::get("http://gw.test/api/after-h2")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .expect("h2 connection dropped by the reload");
    assert_eq!(resp.status(), 200);
    assert_eq!(b.last().uri, "/api/after-h2");
    assert!(!h1_conn.is_finished() && !h2_conn.is_finished());

    let m = admin_metrics(&admin).await;
    assert_eq!(
        series_value(
            &m,
            "tollgate_requests_total{route=\"old-route\",status=\"200\"}"
        ),
        Some(3.0),
        "requests that started before the reload are counted on their route:\n{m}"
    );
    assert_eq!(
        series_value(
            &m,
            "tollgate_requests_total{route=\"new-route\",status=\"200\"}"
        ),
        Some(3.0),
        "{m}"
    );
    drop(h1);
    drop(h2);
    gw.stop().await;
}

// Behaviour: request limits reload with the config (a smaller max_header_bytes
// applies to the next request).
#[tokio::test]
async fn reloaded_limits_apply() {
    let up = spawn_upstream().await;
    let base = GatewayConfig::new()
        .upstream("bi", &up.url())
        .open_route("api", "/api", "bi");
    let gw = spawn_gateway(&base.yaml()).await;
    let big = "v".repeat(3000);
    let r = client()
        .get(gw.url("/api/x"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    std::fs::write(
        gw.config_path(),
        base.merge("server", json!({"limits": {"max_header_bytes": 1024}}))
            .yaml(),
    )
    .unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw.url("/api/x"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(json_of(r).await["error"], "request_header_too_large");
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}
