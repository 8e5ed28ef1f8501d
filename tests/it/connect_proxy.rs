//! Test helpers for outbound proxies: a real HTTP proxy on 127.0.0.1:0 that opens
//! CONNECT tunnels and records what it carried (and can refuse with 407 or any status),
//! and a TLS front that serves any plain-HTTP test server as https:// with the
//! fixtures' certificate (CA tests/fixtures/ca.pem; names localhost and 127.0.0.1).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::fixture;

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Carried {
    /// `CONNECT`, or the method of an absolute-form request.
    pub method: String,
    /// The CONNECT target (`host:port`) or the absolute URI.
    pub target: String,
    /// The `Proxy-Authorization` header as received.
    pub proxy_authorization: Option<String>,
    /// The proxy's answer status.
    pub answered: u16,
}

/// How the proxy answers CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Opens the tunnel (after checking credentials when some are required).
    Tunnel,
    /// Refuses with this status.
    Refuse(u16),
}

/// A real HTTP CONNECT proxy on 127.0.0.1:0 (stops when the test's runtime ends).
pub struct ConnectProxy {
    pub addr: SocketAddr,
    carried: Arc<Mutex<Vec<Carried>>>,
    answer: Arc<Mutex<Answer>>,
}

impl ConnectProxy {
    /// A proxy that opens every tunnel; `credentials` (`user:password`) make it answer
    /// 407 to a CONNECT without the matching `Proxy-Authorization: Basic`.
    pub async fn start(credentials: Option<&str>) -> ConnectProxy {
        use base64::Engine;
        let expected = credentials.map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let carried: Arc<Mutex<Vec<Carried>>> = Arc::default();
        let answer = Arc::new(Mutex::new(Answer::Tunnel));
        let (log, mode) = (carried.clone(), answer.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, mode, expected) = (log.clone(), mode.clone(), expected.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, log, mode, expected).await;
                });
            }
        });
        ConnectProxy {
            addr,
            carried,
            answer,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    /// Everything carried so far.
    pub fn carried(&self) -> Vec<Carried> {
        self.carried.lock().unwrap().clone()
    }

    /// The CONNECT targets that were tunnelled (answered 200).
    pub fn tunnels(&self) -> Vec<String> {
        self.carried()
            .into_iter()
            .filter(|c| c.method == "CONNECT" && c.answered == 200)
            .map(|c| c.target)
            .collect()
    }
}

async fn serve_one(
    mut client: TcpStream,
    log: Arc<Mutex<Vec<Carried>>>,
    mode: Arc<Mutex<Answer>>,
    expected: Option<String>,
) -> std::io::Result<()> {
    // The request head, byte by byte so that nothing of the tunnel is read.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Ok(());
        }
        head.push(client.read_u8().await?);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(&head).is_err() {
        return Ok(());
    }
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default().to_owned();
    let proxy_authorization = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    let answered = if method != "CONNECT" {
        // Absolute-form requests are recorded, not served (tollgate tunnels).
        501
    } else {
        match *mode.lock().unwrap() {
            Answer::Refuse(s) => s,
            Answer::Tunnel if expected.is_some() && proxy_authorization != expected => 407,
            Answer::Tunnel => 200,
        }
    };
    log.lock().unwrap().push(Carried {
        method,
        target: target.clone(),
        proxy_authorization,
        answered,
    });
    if answered != 200 {
        let extra = if answered == 407 {
            "Proxy-Authenticate: Basic realm=\"corp\"\r\n"
        } else {
            ""
        };
        client
            .write_all(
                format!("HTTP/1.1 {answered} Refused\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        return Ok(());
    }
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

/// Serves `backend` (plain HTTP) as https:// on 127.0.0.1:0 with the fixtures'
/// server certificate; returns the TLS address.
pub async fn tls_front(backend: SocketAddr) -> SocketAddr {
    tollgate::tls::install_default_provider();
    let certs = tollgate::tls::load_certs(&fixture("server.pem")).unwrap();
    let key = tollgate::tls::load_key(&fixture("server-key.pem")).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}
