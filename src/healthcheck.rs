//! `tollgate healthcheck`: not on the request path. A one-shot HTTP client that asks a
//! running tollgate's admin listener for `GET /healthz` (or `/readyz`), for a container
//! `HEALTHCHECK` in an image that has no shell and no curl. The address comes from
//! `--url`, `--admin`, or `server.admin_listen` in the config file; only that one key is
//! read (and its `${env:..}`/`${file:..}` resolved), so a config that is being edited, or
//! a secret it names that this process cannot read, does not fail the check while the
//! server keeps serving.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};

/// What to check: a full URL, or an admin listener address and a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to.
    pub authority: String,
    /// Request target, e.g. `/healthz`.
    pub path: String,
}

impl Target {
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// `http://host:port/path` (the admin listener speaks plain HTTP only).
pub fn from_url(url: &str) -> Result<Target, String> {
    let u = url::Url::parse(url).map_err(|e| format!("invalid URL \"{url}\": {e}"))?;
    if u.scheme() != "http" {
        return Err(format!(
            "unsupported URL scheme \"{}\" in \"{url}\": the admin listener speaks plain http://",
            u.scheme()
        ));
    }
    let host = u
        .host_str()
        .ok_or_else(|| format!("no host in URL \"{url}\""))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let mut path = u.path().to_owned();
    if let Some(q) = u.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(Target {
        authority: format!("{host}:{port}"),
        path,
    })
}

/// An admin listen address (`127.0.0.1:9901`, `0.0.0.0:9901`, `[::]:9901`, `:9901`,
/// `localhost:9901`) as the address to connect to: a wildcard address means "this
/// host", so the check goes to the loopback address of the same family.
pub fn from_admin(addr: &str, path: &str) -> Result<Target, String> {
    let addr = addr.trim();
    let authority = if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid admin address \"{addr}\": bad port"))?;
        format!("127.0.0.1:{port}")
    } else if let Ok(sa) = addr.parse::<SocketAddr>() {
        let ip = match sa.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, sa.port()).to_string()
    } else {
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                addr.to_owned()
            }
            _ if !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(format!(
                    "invalid admin address \"{addr}\" (a host is missing: did you mean \"127.0.0.1:{addr}\"?)"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid admin address \"{addr}\" (expected HOST:PORT, e.g. 127.0.0.1:9901)"
                ))
            }
        }
    };
    if authority.ends_with(":0") {
        return Err(format!(
            "admin address \"{addr}\" has port 0 (any free port, chosen at start): \
             pass the real one with --admin HOST:PORT"
        ));
    }
    Ok(Target {
        authority,
        path: path.to_owned(),
    })
}

/// `server.admin_listen` of the config file, `${env:..}`/`${file:..}` resolved. Only
/// that key has to be right: the rest of the file is the running gateway's business.
pub fn admin_listen_from_config(config: &Path) -> Result<String, String> {
    use crate::config::{model::ConfigModel, yaml};
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let base = config.parent().unwrap_or(Path::new("."));
    let mut cx = yaml::Cx::new(base, crate::config::model::PLACES);
    let model = yaml::read::<ConfigModel>(&text, &mut cx).map_err(|stop| {
        format!(
            "{}:{}:{}: {}",
            config.display(),
            stop.line,
            stop.column,
            stop.message
        )
    })?;
    const KEY: &str = "server.admin_listen";
    if let Some(problem) = cx.problems.errors.iter().find(|p| p.path == KEY) {
        return Err(format!("{}: {KEY}: {}", config.display(), problem.message));
    }
    match model.and_then(|m| m.server).and_then(|s| s.admin_listen) {
        Some(a) => Ok(a.0),
        None => Err(format!(
            "{} has no server.admin_listen, so there is no admin listener to check \
             (set one, or pass --admin HOST:PORT or --url URL)",
            config.display()
        )),
    }
}

/// One `GET` with `Connection: close`; the status code, or why there is none. The
/// whole exchange (connect, request, response head and body) is bounded by `timeout`.
pub async fn check(target: &Target, timeout: Duration) -> Result<u16, String> {
    match tokio::time::timeout(timeout, get(target)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from {} within {timeout:?}",
            target.url()
        )),
    }
}

async fn get(target: &Target) -> Result<u16, String> {
    fetch(target, None).await.map(|(status, _)| status)
}

/// One `GET` with `Connection: close` (and `Authorization`, if given): the status and
/// the body (at most 1 MiB). Not bounded in time: callers wrap it in a timeout.
pub async fn fetch(
    target: &Target,
    authorization: Option<&str>,
) -> Result<(u16, bytes::Bytes), String> {
    let url = target.url();
    let stream = tokio::net::TcpStream::connect(&target.authority)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut req = http::Request::get(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::CONNECTION, "close")
        .header(
            http::header::USER_AGENT,
            concat!("tollgate-healthcheck/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    if let Some(a) = authorization {
        let mut v = http::HeaderValue::from_str(a.trim())
            .map_err(|_| "the admin credentials are not a valid header value".to_owned())?;
        v.set_sensitive(true);
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    // Read the (small) body; the server also sees a complete exchange.
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    driver.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: wildcard listen addresses are checked on loopback; `:PORT` means this host.
    #[test]
    fn admin_addresses() {
        let t = |a: &str| from_admin(a, "/healthz").map(|t| t.url());
        assert_eq!(t("0.0.0.0:9901").unwrap(), "http://127.0.0.1:9901/healthz");
        assert_eq!(t("[::]:9901").unwrap(), "http://[::1]:9901/healthz");
        assert_eq!(t(":9901").unwrap(), "http://127.0.0.1:9901/healthz");
        assert_eq!(t("10.1.2.3:9901").unwrap(), "http://10.1.2.3:9901/healthz");
        assert_eq!(
            t("localhost:9901").unwrap(),
            "http://localhost:9901/healthz"
        );
        assert!(t("9901").is_err());
        assert!(t("host:notaport").is_err());
    }

    // Behaviour: only plain http URLs; the path and query are kept.
    #[test]
    fn urls() {
        let t = from_url("http://127.0.0.1:9901/readyz?x=1").unwrap();
        assert_eq!(t.authority, "127.0.0.1:9901");
        assert_eq!(t.path, "/readyz?x=1");
        assert_eq!(from_url("http://h/").unwrap().authority, "h:80");
        assert!(from_url("https://127.0.0.1:9901/healthz")
            .unwrap_err()
            .contains("plain http://"));
        assert!(from_url("not a url").is_err());
    }
}
