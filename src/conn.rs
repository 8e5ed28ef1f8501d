//! Facts about the client connection (step 1), put in every request's extensions by
//! the listener for the layers that need them (`X-Forwarded-For`, logs, rate-limit keys).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use tokio::sync::OwnedSemaphorePermit;

/// Facts about the client connection, in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// `remote`'s IP as text, formatted once per connection (`X-Forwarded-For`, logs).
    pub ip: HeaderValue,
    /// The connection's slot under `max_connections`: an upgraded connection (a
    /// WebSocket tunnel) keeps it after the HTTP exchange has ended.
    pub slot: Option<Arc<OwnedSemaphorePermit>>,
    /// The client certificate the TLS handshake presented (`server.tls.client_ca`).
    pub client_cert: ClientCert,
    /// The rate limiter's digest of `remote`'s IP (`key: ip`), computed by the first
    /// request of the connection that needs it (see `ratelimit::KeyInput::ip_key`).
    pub ip_key: OnceLock<[u8; 16]>,
    /// Set on a listener's connections: the listener measures each request's head as
    /// it arrives and marks the ones over `max_header_bytes` (`limits::HeadTooLarge`).
    /// A request built elsewhere (explain, a decision request's original) is measured
    /// by the size limit itself.
    pub heads_measured: bool,
}

/// The client's TLS certificate, as far as sender-constrained tokens look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// A plain connection, or TLS without a client certificate.
    None,
    /// SHA-256 of the DER of the leaf certificate (RFC 8705 `x5t#S256`, before base64url).
    Leaf([u8; 32]),
    /// Not known: `tollgate explain` decides without a connection.
    Offline,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> Self {
        let ip = HeaderValue::from_str(&remote.ip().to_string())
            .expect("an IP address is a valid header value");
        ConnInfo {
            remote,
            tls,
            ip,
            slot: None,
            client_cert: ClientCert::None,
            ip_key: OnceLock::new(),
            heads_measured: false,
        }
    }

    /// For a listener's connection, whose requests' heads the listener measures.
    pub fn measuring_heads(mut self) -> Self {
        self.heads_measured = true;
        self
    }

    pub fn with_slot(mut self, slot: Arc<OwnedSemaphorePermit>) -> Self {
        self.slot = Some(slot);
        self
    }

    /// With the leaf certificate (DER) the client presented.
    pub fn with_client_cert(mut self, der: Option<&[u8]>) -> Self {
        use sha2::Digest;
        self.client_cert = match der {
            Some(d) => ClientCert::Leaf(sha2::Sha256::digest(d).into()),
            None => ClientCert::None,
        };
        self
    }
}

/// Counts of WebSocket tunnels (`upgrade`), for the metrics.
#[derive(Debug, Default)]
pub struct Tunnels {
    /// Upgrades the upstream accepted, ever.
    pub opened: AtomicU64,
    /// Tunnels open now.
    pub open: AtomicU64,
}
