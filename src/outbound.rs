//! Outbound HTTP proxies for tollgate's own connections: where a connection to an
//! identity provider, a token endpoint or (when the upstream asks for it) an upstream
//! is dialled through a corporate proxy. It sits under `client.rs`: every HTTP client
//! tollgate builds dials through a [`Dialer`], which connects directly or opens an
//! HTTP CONNECT tunnel through the proxy chosen by [`Outbound`] (`proxy:` of an issuer
//! or upstream, else the process's `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`).
//!
//! Both https and http targets go through a CONNECT tunnel: TLS to an https target is
//! end to end (the proxy sees only `CONNECT host:port`), and proxy credentials travel
//! only in the CONNECT request, never to the target. Which proxy applies and whether
//! `NO_PROXY` exempts a host are hyper-util's `Matcher` (curl's rules); `host:port`
//! entries of `NO_PROXY` are matched here, as hyper-util ignores ports.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::uri::Scheme;
use http::{HeaderValue, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::body::BoxError;

/// How one HTTP client reaches its targets.
#[derive(Clone, Default)]
pub enum Outbound {
    /// Through the proxy the environment names for the target (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY`, lowercase forms), unless `NO_PROXY` exempts it.
    #[default]
    Env,
    /// Always directly (`proxy: direct`).
    Direct,
    /// Always through this proxy (`proxy: "http://proxy:3128"`).
    Via(Arc<ProxyServer>),
}

impl Outbound {
    /// A stable key for sharing clients (holds credentials: never show it).
    pub fn key(&self) -> String {
        match self {
            Outbound::Env => "env".into(),
            Outbound::Direct => "direct".into(),
            Outbound::Via(p) => {
                use sha2::Digest;
                let auth = p.auth.as_ref().map(|a| a.as_bytes()).unwrap_or_default();
                format!(
                    "via:{}:{}",
                    p.uri,
                    crate::encoding::hex(&sha2::Sha256::digest(auth))
                )
            }
        }
    }

    /// The proxy for `dst`, `Ok(None)` for a direct connection.
    fn route(&self, dst: &Uri) -> Result<Option<Arc<ProxyServer>>, ProxyError> {
        match self {
            Outbound::Direct => Ok(None),
            Outbound::Via(p) => Ok(Some(p.clone())),
            Outbound::Env => env().route(dst),
        }
    }
}

/// What `/admin/status` shows: `direct`, `environment` or the proxy (credentials
/// redacted).
impl fmt::Display for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outbound::Env => f.write_str("environment"),
            Outbound::Direct => f.write_str("direct"),
            Outbound::Via(p) => write!(f, "{p}"),
        }
    }
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One HTTP proxy: where it listens and the credentials sent to it. Shown (Debug,
/// Display) as `scheme://[redacted]@host:port` when it has credentials.
pub struct ProxyServer {
    /// `http://host:port/` or `https://host:port/`, without credentials.
    uri: Uri,
    /// `Basic base64(user:password)`, marked sensitive.
    auth: Option<HeaderValue>,
    shown: String,
}

impl ProxyServer {
    /// The `Proxy-Authorization` value sent to the proxy, if the URL had credentials
    /// (marked sensitive).
    pub fn credentials(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }

    /// Where the proxy listens: `http://host:port/` or `https://host:port/`.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

impl fmt::Display for ProxyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl ProxyServer {
    /// Reads a proxy URL: `http://host:port` or `https://host:port` (TLS to the proxy),
    /// optionally with `user:password@` (percent-encoded); a URL without a scheme is
    /// `http://`. The port defaults to the scheme's. Errors never repeat the input (it
    /// may hold a password).
    pub fn parse(s: &str) -> Result<ProxyServer, String> {
        let s = s.trim();
        let with_scheme = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| format!("not a proxy URL: {e}"))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            "socks4" | "socks4a" | "socks5" | "socks5h" => {
                return Err(
                    "SOCKS proxies are not supported; use an HTTP proxy (http://host:port)".into(),
                )
            }
            other => {
                return Err(format!(
                "unsupported proxy scheme \"{other}\"; use http://host:port or https://host:port"
            ))
            }
        };
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err("the proxy URL has no host".into());
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("a proxy URL is scheme://host:port, without a path or query".into());
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let scheme = if https { "https" } else { "http" };
        let hostport = format!("{host}:{port}");
        let uri: Uri = format!("{scheme}://{hostport}/")
            .parse()
            .map_err(|_| "the proxy URL's host is not valid".to_string())?;
        let decode = |v: &str| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = decode(url.username());
        let auth = if user.is_empty() && url.password().is_none() {
            None
        } else {
            let pass = url.password().map(decode).unwrap_or_default();
            let mut v = HeaderValue::try_from(basic_value(&user, &pass))
                .map_err(|_| "the proxy credentials cannot be sent in a header".to_string())?;
            v.set_sensitive(true);
            Some(v)
        };
        let shown = match auth {
            Some(_) => format!("{scheme}://[redacted]@{hostport}"),
            None => format!("{scheme}://{hostport}"),
        };
        Ok(ProxyServer { uri, auth, shown })
    }
}

/// `Basic base64(user:password)` (RFC 7617; proxies take the raw user and password).
fn basic_value(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// The process's proxy variables, read once.
struct EnvProxies {
    matcher: Matcher,
    http: Option<Result<Arc<ProxyServer>, String>>,
    https: Option<Result<Arc<ProxyServer>, String>>,
    /// `NO_PROXY` entries with a port: (host suffix, port).
    no_ports: Vec<(String, u16)>,
}

fn first_env(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| {
        std::env::var(n)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (n.to_string(), v))
    })
}

fn env() -> &'static EnvProxies {
    static ENV: OnceLock<EnvProxies> = OnceLock::new();
    ENV.get_or_init(|| {
        // Under CGI, HTTP_PROXY may come from a request's `Proxy:` header (httpoxy):
        // no variable is trusted then (as hyper-util's and curl's readers do).
        let cgi = std::env::var_os("REQUEST_METHOD").is_some();
        let first_env = |names: &[&str]| if cgi { None } else { first_env(names) };
        let all = first_env(&["ALL_PROXY", "all_proxy"]);
        let https = first_env(&["HTTPS_PROXY", "https_proxy"]).or_else(|| all.clone());
        let http = first_env(&["HTTP_PROXY", "http_proxy"]).or(all);
        let no = first_env(&["NO_PROXY", "no_proxy"])
            .map(|(_, v)| v)
            .unwrap_or_default();
        let (no_hosts, no_ports) = split_no_proxy(&no);
        let parse = |v: &Option<(String, String)>| {
            v.as_ref().map(|(name, value)| {
                ProxyServer::parse(value)
                    .map(Arc::new)
                    .map_err(|e| format!("{name} is not a usable proxy URL: {e}"))
            })
        };
        let e = EnvProxies {
            // hyper-util decides whether a target is proxied (curl's rules for
            // NO_PROXY without ports); the proxies are ours.
            matcher: Matcher::builder()
                .http(http.as_ref().map(|_| "http://proxy.invalid").unwrap_or(""))
                .https(https.as_ref().map(|_| "http://proxy.invalid").unwrap_or(""))
                .no(no_hosts)
                .build(),
            http: parse(&http),
            https: parse(&https),
            no_ports,
        };
        for (scheme, p) in [("http", &e.http), ("https", &e.https)] {
            match p {
                Some(Ok(p)) => tracing::info!(
                    target: "tollgate::outbound",
                    proxy = %p, no_proxy = %no, "{scheme}:// IdP and token endpoint calls go through the proxy from the environment"
                ),
                Some(Err(why)) => tracing::error!(
                    target: "tollgate::outbound",
                    "{why}; {scheme}:// calls that would use it fail"
                ),
                None => {}
            }
        }
        e
    })
}

/// `NO_PROXY` split into what hyper-util matches (no port) and `host:port` entries.
fn split_no_proxy(no: &str) -> (String, Vec<(String, u16)>) {
    let mut plain = Vec::new();
    let mut ports = Vec::new();
    for entry in no.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry.parse::<std::net::IpAddr>().is_ok() || entry.parse::<ipnet_like::Net>().is_ok() {
            plain.push(entry.to_owned());
            continue;
        }
        let with_port = entry.rsplit_once(':').and_then(|(h, p)| {
            let port = p.parse::<u16>().ok()?;
            let h = h.trim_start_matches('[').trim_end_matches(']');
            Some((h.trim_start_matches('.').to_ascii_lowercase(), port))
        });
        match with_port {
            Some(hp) => ports.push(hp),
            None => plain.push(entry.to_owned()),
        }
    }
    (plain.join(","), ports)
}

/// Just enough CIDR recognition to leave `10.0.0.0/8` and `fd00::/8` to hyper-util.
mod ipnet_like {
    pub struct Net;
    impl std::str::FromStr for Net {
        type Err = ();
        fn from_str(s: &str) -> Result<Net, ()> {
            let (ip, bits) = s.split_once('/').ok_or(())?;
            ip.parse::<std::net::IpAddr>().map_err(|_| ())?;
            bits.parse::<u8>().map_err(|_| ())?;
            Ok(Net)
        }
    }
}

impl EnvProxies {
    fn route(&self, dst: &Uri) -> Result<Option<Arc<ProxyServer>>, ProxyError> {
        let https = dst.scheme() == Some(&Scheme::HTTPS);
        let host = dst
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = dst.port_u16().unwrap_or(if https { 443 } else { 80 });
        let exempt = self.no_ports.iter().any(|(h, p)| {
            *p == port
                && (h == "*"
                    || host == *h
                    || (host.len() > h.len()
                        && host.ends_with(h.as_str())
                        && host.as_bytes()[host.len() - h.len() - 1] == b'.'))
        });
        if exempt || self.matcher.intercept(dst).is_none() {
            return Ok(None);
        }
        let chosen = if https { &self.https } else { &self.http };
        match chosen {
            None => Ok(None),
            Some(Ok(p)) => Ok(Some(p.clone())),
            Some(Err(why)) => Err(ProxyError::Unusable { why: why.clone() }),
        }
    }
}

/// Why a connection through an outbound proxy could not be made. Names the proxy
/// (credentials redacted) and never carries a lower-level source, so that the whole
/// message is what logs and `/admin/status` show.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("outbound proxy {proxy} is unreachable: {why}")]
    Unreachable { proxy: String, why: String },
    #[error("outbound proxy {proxy} requires authentication (407) for CONNECT {target}; give the credentials in the proxy URL (http://user:password@host:port)")]
    AuthRequired { proxy: String, target: String },
    #[error("outbound proxy {proxy} rejected the proxy credentials (407) for CONNECT {target}")]
    AuthRejected { proxy: String, target: String },
    #[error("outbound proxy {proxy} refused CONNECT {target}: {status}")]
    Refused {
        proxy: String,
        target: String,
        status: StatusCode,
    },
    #[error(
        "outbound proxy {proxy} answered CONNECT {target} with something that is not HTTP: {why}"
    )]
    BadAnswer {
        proxy: String,
        target: String,
        why: String,
    },
    #[error("TLS with {target} through outbound proxy {proxy} failed: {why}")]
    Tls {
        proxy: String,
        target: String,
        why: String,
    },
    #[error("{why}")]
    Unusable { why: String },
}

impl ProxyError {
    /// The proxy error somewhere in `e`'s cause chain.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ProxyError> {
        let mut cur = Some(e);
        while let Some(c) = cur {
            if let Some(p) = c.downcast_ref::<ProxyError>() {
                return Some(p);
            }
            cur = c.source();
        }
        None
    }

    /// What an API client may be told: what went wrong, without the proxy's address.
    pub fn public(&self) -> String {
        match self {
            ProxyError::Unreachable { .. } => "the outbound proxy is unreachable".into(),
            ProxyError::AuthRequired { .. } | ProxyError::AuthRejected { .. } => {
                "the outbound proxy refused the tunnel (407)".into()
            }
            ProxyError::Refused { status, .. } => format!(
                "the outbound proxy refused the tunnel ({})",
                status.as_u16()
            ),
            ProxyError::BadAnswer { .. } => "the outbound proxy answered CONNECT badly".into(),
            ProxyError::Tls { .. } => "TLS through the outbound proxy failed".into(),
            ProxyError::Unusable { .. } => "the outbound proxy setting is not usable".into(),
        }
    }
}

/// Only [`ProxyError::public`]'s text (for error bodies).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublicProxyError(pub String);

/// A connection made by a [`Dialer`]: direct (TCP, TLS for https), or a boxed stream: a
/// CONNECT tunnel through a proxy (with TLS to the target inside it for https), or a
/// connection to a pinned address (TLS naming the target).
// The direct variant is what every connection was before proxies (kept inline: the
// common case costs nothing more); tunnels are rare and boxed.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    Direct(MaybeHttpsStream<TokioIo<TcpStream>>),
    Tunnel { io: TokioIo<Box<dyn Io>>, h2: bool },
}

/// A byte stream a tunnel runs on.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Direct(c) => c.connected(),
            Conn::Tunnel { h2: true, .. } => Connected::new().negotiated_h2(),
            Conn::Tunnel { .. } => Connected::new(),
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Direct(c) => Pin::new(c).poll_read(cx, buf),
            Conn::Tunnel { io, .. } => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Direct(c) => Pin::new(c).poll_write(cx, buf),
            Conn::Tunnel { io, .. } => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Direct(c) => Pin::new(c).poll_flush(cx),
            Conn::Tunnel { io, .. } => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Direct(c) => Pin::new(c).poll_shutdown(cx),
            Conn::Tunnel { io, .. } => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Direct(c) => c.is_write_vectored(),
            Conn::Tunnel { io, .. } => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Direct(c) => Pin::new(c).poll_write_vectored(cx, bufs),
            Conn::Tunnel { io, .. } => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }
}

/// Dials a target URI: directly, or through the proxy its [`Outbound`] picks.
#[derive(Clone)]
pub struct Dialer {
    /// TCP + TLS (ALPN as the client wants) straight to the target.
    pub(crate) direct: HttpsConnector<HttpConnector>,
    /// TCP (+ TLS for an https:// proxy, ALPN http/1.1) to the proxy.
    pub(crate) to_proxy: HttpsConnector<HttpConnector>,
    /// TLS to the target inside a tunnel (the same roots and ALPN as `direct`).
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) outbound: Outbound,
    /// Connect to this address, whatever the target's name resolves to (one address
    /// of a name, `upstreams[].dns: per_address`); always direct.
    pub(crate) pin: Option<std::net::IpAddr>,
}

impl tower::Service<Uri> for Dialer {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.direct, cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if let Some(addr) = self.pin {
            let tls = self.tls.clone();
            return Box::pin(async move { pinned(addr, &dst, tls).await });
        }
        match self.outbound.route(&dst) {
            Ok(None) => {
                let connecting = tower::Service::call(&mut self.direct, dst);
                Box::pin(async move { connecting.await.map(Conn::Direct) })
            }
            Ok(Some(proxy)) => {
                let to_proxy = self.to_proxy.clone();
                let tls = self.tls.clone();
                Box::pin(async move {
                    tunnel(to_proxy, &proxy, &dst, tls)
                        .await
                        .map_err(|e| Box::new(e) as BoxError)
                })
            }
            Err(e) => Box::pin(std::future::ready(Err(Box::new(e) as BoxError))),
        }
    }
}

/// A direct connection to `addr` for `dst`: TCP to `addr` and `dst`'s port, and for
/// https TLS with `dst`'s host as the server name (SNI, certificate verification).
async fn pinned(
    addr: std::net::IpAddr,
    dst: &Uri,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Conn, BoxError> {
    let https = dst.scheme() == Some(&Scheme::HTTPS);
    let port = dst.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((addr, port)).await?;
    tcp.set_nodelay(true)?;
    if !https {
        return Ok(Conn::Tunnel {
            io: TokioIo::new(Box::new(tcp)),
            h2: false,
        });
    }
    let host = dst.host().unwrap_or_default();
    let name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok(Conn::Tunnel {
        io: TokioIo::new(Box::new(stream)),
        h2,
    })
}

/// Longest CONNECT answer head read from a proxy.
/// The longest answer head to CONNECT tollgate reads before giving up.
pub const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// Opens a CONNECT tunnel to `dst` through `proxy`, and TLS inside it for https.
async fn tunnel(
    to_proxy: HttpsConnector<HttpConnector>,
    proxy: &ProxyServer,
    dst: &Uri,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Conn, ProxyError> {
    let shown = || proxy.shown.clone();
    let https = dst.scheme() == Some(&Scheme::HTTPS);
    let host = dst.host().unwrap_or_default();
    let port = dst.port_u16().unwrap_or(if https { 443 } else { 80 });
    let target = format!("{host}:{port}");
    let leg = to_proxy
        .oneshot(proxy.uri.clone())
        .await
        .map_err(|e| ProxyError::Unreachable {
            proxy: shown(),
            why: deepest(&*e),
        })?;
    let mut io = TokioIo::new(leg);
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = &proxy.auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let io_err = |e: std::io::Error| ProxyError::Unreachable {
        proxy: shown(),
        why: format!("the connection broke during CONNECT {target}: {e}"),
    };
    io.write_all(&head).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let status = read_connect_answer(&mut io)
        .await
        .map_err(|why| match why {
            Answer::Io(e) => io_err(e),
            Answer::Bad(why) => ProxyError::BadAnswer {
                proxy: shown(),
                target: target.clone(),
                why,
            },
        })?;
    match status {
        s if s.is_success() => {}
        StatusCode::PROXY_AUTHENTICATION_REQUIRED if proxy.auth.is_some() => {
            return Err(ProxyError::AuthRejected {
                proxy: shown(),
                target,
            })
        }
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
            return Err(ProxyError::AuthRequired {
                proxy: shown(),
                target,
            })
        }
        status => {
            return Err(ProxyError::Refused {
                proxy: shown(),
                target,
                status,
            })
        }
    }
    if !https {
        return Ok(Conn::Tunnel {
            io: TokioIo::new(Box::new(io)),
            h2: false,
        });
    }
    let name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| ProxyError::Tls {
        proxy: shown(),
        target: target.clone(),
        why: e.to_string(),
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, io)
        .await
        .map_err(|e| ProxyError::Tls {
            proxy: shown(),
            target: target.clone(),
            why: e.to_string(),
        })?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok(Conn::Tunnel {
        io: TokioIo::new(Box::new(stream)),
        h2,
    })
}

/// Why a proxy's answer to CONNECT could not be read.
#[derive(Debug)]
pub enum Answer {
    /// The connection failed.
    Io(std::io::Error),
    /// The answer is not an HTTP response head (what was wrong, never its bytes).
    Bad(String),
}

/// Reads the proxy's answer head to CONNECT, byte by byte so that nothing of the
/// tunnel's first bytes is consumed, and returns its status.
/// Public for the `outbound` fuzz target.
pub async fn read_connect_answer<T: AsyncRead + Unpin>(io: &mut T) -> Result<StatusCode, Answer> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let b = io.read_u8().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Answer::Bad("the proxy closed the connection without an answer".into())
            } else {
                Answer::Io(e)
            }
        })?;
        buf.push(b);
        if buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") {
            break;
        }
        if buf.len() > MAX_CONNECT_ANSWER {
            return Err(Answer::Bad("the answer head is too long".into()));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => resp
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| Answer::Bad("no status".into())),
        Ok(httparse::Status::Partial) => Err(Answer::Bad("incomplete answer head".into())),
        Err(e) => Err(Answer::Bad(e.to_string())),
    }
}

/// The innermost message of an error chain (hyper-util's outer ones say little).
fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: a proxy URL with credentials shows them redacted everywhere, and they
    // become a sensitive Basic header.
    #[test]
    fn credentials_are_redacted_and_encoded() {
        let p = ProxyServer::parse("http://us%40er:p%3Ass@proxy.corp:3128").unwrap();
        assert_eq!(p.to_string(), "http://[redacted]@proxy.corp:3128");
        assert_eq!(format!("{p:?}"), "http://[redacted]@proxy.corp:3128");
        let a = p.auth.as_ref().unwrap();
        assert!(a.is_sensitive());
        assert_eq!(a.to_str().unwrap(), basic_value("us@er", "p:ss"));
        assert_eq!(p.uri.to_string(), "http://proxy.corp:3128/");
        let o = Outbound::Via(Arc::new(p));
        assert!(!format!("{o} {o:?}").contains("p:ss"));
    }

    // Behaviour: no scheme means http, ports default to the scheme's, SOCKS and paths
    // are refused without echoing the URL.
    #[test]
    fn proxy_urls() {
        assert_eq!(
            ProxyServer::parse("proxy:3128").unwrap().to_string(),
            "http://proxy:3128"
        );
        assert_eq!(
            ProxyServer::parse("https://proxy").unwrap().to_string(),
            "https://proxy:443"
        );
        let e = ProxyServer::parse("socks5://u:secret@proxy:1080").unwrap_err();
        assert!(e.contains("SOCKS") && !e.contains("secret"), "{e}");
        assert!(ProxyServer::parse("http://proxy:3128/path").is_err());
        assert!(ProxyServer::parse("ftp://proxy").is_err());
    }

    // Behaviour: NO_PROXY entries with a port are kept apart (hyper-util ignores ports);
    // IPs and CIDRs stay with hyper-util.
    #[test]
    fn no_proxy_ports() {
        let (plain, ports) =
            split_no_proxy(" .corp.local, idp.corp:8443,10.0.0.0/8, ::1, [fd00::1]:443,*");
        assert_eq!(plain, ".corp.local,10.0.0.0/8,::1,*");
        assert_eq!(
            ports,
            vec![("idp.corp".to_string(), 8443), ("fd00::1".to_string(), 443)]
        );
    }

    // Behaviour: the CONNECT answer's status is read, and nothing after its head.
    #[tokio::test]
    async fn connect_answer() {
        let mut io: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\nTLS";
        assert_eq!(
            read_connect_answer(&mut io).await.ok(),
            Some(StatusCode::OK)
        );
        assert_eq!(io, b"TLS");
        let mut io: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            read_connect_answer(&mut io).await.ok(),
            Some(StatusCode::FORBIDDEN)
        );
        let mut io: &[u8] = b"SSH-2.0-OpenSSH\r\n\r\n";
        assert!(matches!(
            read_connect_answer(&mut io).await,
            Err(Answer::Bad(_))
        ));
    }
}
