//! Facts about the client connection (step 1), put in every request's extensions by
//! the listener for the layers that need them (`X-Forwarded-For`, logs, rate-limit keys).

use std::net::SocketAddr;

use http::HeaderValue;

/// Facts about the client connection, in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// `remote`'s IP as text, formatted once per connection (`X-Forwarded-For`, logs).
    pub ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool) -> Self {
        let ip = HeaderValue::from_str(&remote.ip().to_string())
            .expect("an IP address is a valid header value");
        ConnInfo { remote, tls, ip }
    }
}
