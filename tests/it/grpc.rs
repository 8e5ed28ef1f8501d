//! gRPC through the gateway: a real tonic server (the standard grpc.health.v1 service)
//! behind `protocol: h2c`, a real tonic client in front; unary calls with trailers,
//! server streaming, and tollgate's refusals seen by the gRPC client as statuses.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;

use crate::common::*;
use crate::gwconfig::GatewayConfig;

/// A tonic server with the health service on 127.0.0.1:0 (h2c), stopped on drop.
struct GrpcUpstream {
    addr: SocketAddr,
    reporter: HealthReporter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn spawn_grpc() -> GrpcUpstream {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("bi.Live", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    GrpcUpstream {
        addr,
        reporter,
        stop: Some(stop),
    }
}

fn yaml(idp: &Idp, grpc: SocketAddr) -> String {
    GatewayConfig::new()
        .issuer(idp, "corp")
        .upstream_with(
            "live",
            &format!("http://{grpc}"),
            json!({"protocol": "h2c", "timeout": "5s"}),
        )
        .upstream_with(
            "gone",
            &format!("http://{}", dead_addr()),
            json!({"protocol": "h2c", "connect_timeout": "2s"}),
        )
        .route(json!({
            "name": "health", "path_prefix": "/grpc.health.v1.Health", "upstream": "live",
            "auth": {"scopes": ["analytics.read"]},
            "permissions": [
                {"path": "/grpc.health.v1.Health/Check", "methods": ["POST"]},
                {"path": "/grpc.health.v1.Health/Watch", "methods": ["POST"], "scopes": ["live.watch"]},
            ],
        }))
        .open_route("gone", "/gone.Service", "gone")
        .yaml()
}

async fn channel(gw: &Gw) -> Channel {
    Endpoint::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

// Behaviour: a unary gRPC call passes the route's gates and reaches the HTTP/2
// upstream; the answer, whose status travels in trailers, comes back to the client
// (NOT_FOUND for an unknown service is the upstream's own status, passed through).
#[tokio::test]
async fn unary_grpc_calls_reach_an_h2c_upstream() {
    let idp = spawn_idp().await;
    let up = spawn_grpc().await;
    let gw = spawn_gateway(&yaml(&idp, up.addr)).await;
    let token = idp.token(json!({}));
    let mut client = HealthClient::new(channel(&gw).await);
    for _ in 0..3 {
        let resp = client
            .check(with_token(check("bi.Live"), Some(&token)))
            .await
            .expect("check answered");
        assert_eq!(resp.get_ref().status(), ServingStatus::Serving);
        assert!(resp.metadata().get("x-request-id").is_some());
    }
    let status = client
        .check(with_token(check("no.such.Service"), Some(&token)))
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

// Behaviour: server streaming flows through: the first Watch message arrives, and a
// later change on the upstream arrives on the same stream.
#[tokio::test]
async fn server_streaming_flows_through() {
    let idp = spawn_idp().await;
    let up = spawn_grpc().await;
    let gw = spawn_gateway(&yaml(&idp, up.addr)).await;
    let token = idp.token(json!({"scope": "analytics.read live.watch"}));
    let mut client = HealthClient::new(channel(&gw).await);
    let mut stream = client
        .watch(with_token(check("bi.Live"), Some(&token)))
        .await
        .expect("watch accepted")
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("first message in time")
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    up.reporter
        .set_service_status("bi.Live", tonic_health::ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the change arrives in time")
        .unwrap()
        .unwrap();
    assert_eq!(second.status(), ServingStatus::NotServing);
}

// Behaviour: tollgate's refusals reach a gRPC client as gRPC statuses it can act on —
// no token UNAUTHENTICATED (16), missing scope PERMISSION_DENIED (7), an unreachable
// upstream UNAVAILABLE (14) — with the error description as the message; metrics and
// the denial counter keep the HTTP status and the reason.
#[tokio::test]
async fn refusals_are_grpc_statuses() {
    let idp = spawn_idp().await;
    let up = spawn_grpc().await;
    let gw = spawn_gateway(&yaml(&idp, up.addr)).await;
    let mut client = HealthClient::new(channel(&gw).await);
    let s = client
        .check(with_token(check("bi.Live"), None))
        .await
        .expect_err("no token");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.metadata().get("www-authenticate").is_some());
    assert!(s.metadata().get("x-request-id").is_some());
    let token = idp.token(json!({}));
    let s = client
        .watch(with_token(check("bi.Live"), Some(&token)))
        .await
        .expect_err("missing scope");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("live.watch"), "{s:?}");
    // The `gone` route forwards to a closed port: the client sees UNAVAILABLE.
    let mut raw = tonic::client::Grpc::new(channel(&gw).await);
    raw.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/gone.Service/Call");
    let s = raw
        .unary::<HealthCheckRequest, tonic_health::pb::HealthCheckResponse, _>(
            tonic::Request::new(check("x")),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("unreachable upstream");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let metrics = admin_metrics(&gw.admin_url("")).await;
    assert!(
        metrics.contains(r#"tollgate_requests_total{route="health",status="401"}"#),
        "the HTTP status is what the metrics count"
    );
    assert!(metrics.contains(r#"reason="scope_missing""#));
}

// Behaviour: both directions stream at once through an h2c upstream (the shape of
// gRPC client and bidirectional streaming): each request frame is echoed before the
// next is sent, and the upstream's trailers reach the client.
#[tokio::test]
async fn bidirectional_streams_flow_both_ways() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // An h2c upstream that echoes every data frame as it arrives, then sends trailers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let (tx, rx) = tokio::sync::mpsc::channel::<
                            Result<Frame<Bytes>, std::convert::Infallible>,
                        >(4);
                        tokio::spawn(async move {
                            let mut body = req.into_body();
                            while let Some(Ok(f)) = body.frame().await {
                                if let Ok(d) = f.into_data() {
                                    let _ = tx.send(Ok(Frame::data(d))).await;
                                }
                            }
                            let mut t = http::HeaderMap::new();
                            t.insert("grpc-status", "0".parse().unwrap());
                            let _ = tx.send(Ok(Frame::trailers(t))).await;
                        });
                        let stream = tokio_stream_of(rx);
                        Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(
                            stream,
                        )))
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let idp = spawn_idp().await;
    let gw = spawn_gateway(
        &GatewayConfig::public_only()
            .issuer(&idp, "corp")
            .upstream_with(
                "echo",
                &format!("http://{echo}"),
                json!({"protocol": "h2c"}),
            )
            .route(json!({
                "name": "echo", "path_prefix": "/echo.Echo", "upstream": "echo",
                "auth": {"scopes": ["analytics.read"]},
            }))
            .yaml(),
    )
    .await;
    let token = idp.token(json!({}));
    let io = TokioIo::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let req = http::Request::post(format!("http://{}/echo.Echo/Chat", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(StreamBody::new(tokio_stream_of(rx)))
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
        .await
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("response head in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut next = async || {
        tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .unwrap()
    };
    assert_eq!(next().await.into_data().unwrap(), "one");
    // The second frame is sent only after the first came back: both ways at once.
    tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
        .await
        .unwrap();
    assert_eq!(next().await.into_data().unwrap(), "two");
    drop(tx);
    let trailers = next().await.into_trailers().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
}

/// An mpsc receiver as a stream of body frames.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
