//! SPEC's JSON errors for requests the HTTP layer itself refuses.
//!
//! hyper answers a request head it cannot parse (400), one larger than its read buffer
//! (431) or a URI too long (414) on its own, before any service sees a request: a bare
//! status line with `content-length: 0`, no JSON body and no request id. SPEC wants
//! every error as JSON with a request id, and hyper has no hook for those answers, so
//! the connection's I/O is wrapped and that answer replaced by the same status with
//! SPEC's body; hyper closes the connection after it, and the replacement is written
//! out before it does.
//!
//! Only while **no request has reached the stack on this connection** (the listener's
//! `served` flag) is a write looked at at all: until then the only thing hyper can
//! write is such an answer. Afterwards every byte passes untouched — a response body or
//! a WebSocket tunnel that happens to contain `HTTP/1.1 400 ...` must never be
//! rewritten (that would desynchronise the client's framing). So a malformed request
//! that follows others on a keep-alive connection still gets hyper's bare answer.
//! Within that window a write is replaced only if it is a 4xx head alone (no body),
//! `content-length: 0` and no `x-request-id`; the replacement's status line is made
//! from the status code, and nothing of the matched bytes is copied but a well-formed
//! `date` line.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::GatewayError;

/// A connection's stream whose hyper-made 4xx answers are rewritten (module docs).
pub struct JsonParseErrors<T> {
    inner: T,
    remote: SocketAddr,
    /// Set (by the listener) once a request has reached the stack.
    served: Arc<AtomicBool>,
    /// `served` seen set: nothing is looked at any more.
    done: bool,
    /// The replacement being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
    /// Where a replaced answer is counted (`tollgate_requests_total{route="none"}`).
    counted_in: Option<Arc<crate::gateway::Gateway>>,
}

impl<T> JsonParseErrors<T> {
    /// `served` is set by the connection's service when hyper hands it a request.
    pub fn new(inner: T, remote: SocketAddr, served: Arc<AtomicBool>) -> Self {
        JsonParseErrors {
            inner,
            remote,
            served,
            done: false,
            pending: None,
            counted_in: None,
        }
    }

    /// Counts each replaced answer in `gw`'s request metrics (when given), as any other
    /// answer is.
    pub fn counted_in(mut self, gw: Option<Arc<crate::gateway::Gateway>>) -> Self {
        self.counted_in = gw;
        self
    }
}

/// The replacement for a write of `head` alone if it is one of hyper's own error
/// answers: a 4xx head and nothing else (no body), `content-length: 0`, no request id.
fn replacement(head: &[u8]) -> Option<Replacement> {
    if !head.starts_with(b"HTTP/1.1 4") || head.len() < 12 {
        return None;
    }
    let end = find(head, b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let head = &head[..end + 2];
    if find_ignore_case(head, b"\r\nx-request-id:").is_some()
        || find_ignore_case(head, b"\r\ncontent-length: 0\r\n").is_none()
    {
        return None;
    }
    let (code, status_line, error): (u16, &[u8], _) = match &head[9..12] {
        b"400" => (
            400,
            &b"HTTP/1.1 400 Bad Request"[..],
            GatewayError::BadRequest("malformed HTTP request".into()),
        ),
        b"431" => (
            431,
            &b"HTTP/1.1 431 Request Header Fields Too Large"[..],
            GatewayError::HeaderTooLarge,
        ),
        // The request line is part of the head SPEC's 431 is about.
        b"414" => (
            414,
            &b"HTTP/1.1 414 URI Too Long"[..],
            GatewayError::HeaderTooLarge,
        ),
        _ => return None,
    };
    // hyper's `date: Mon, 07 Dec 2026 17:00:00 GMT`, kept only if it is one.
    let date = find_ignore_case(head, b"\r\ndate: ").and_then(|i| {
        let line = &head[i + 2..];
        let line = &line[..find(line, b"\r\n")?];
        let ok = line.len() == 35
            && line[6..]
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b' ' || b == b',' || b == b':');
        ok.then_some(line)
    });
    let rid = crate::request_id::generate();
    let body = error.body_json(rid.to_str().unwrap_or(""), None);
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(status_line);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\nx-request-id: ");
    out.extend_from_slice(rid.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    if let Some(d) = date {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(d);
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(Replacement {
        bytes: out,
        status: code,
        request_id: rid,
    })
}

/// SPEC's answer in place of hyper's: the bytes to write, and what the access line says.
struct Replacement {
    bytes: Vec<u8>,
    status: u16,
    request_id: http::HeaderValue,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_ignore_case(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

impl<T: AsyncWrite + Unpin> JsonParseErrors<T> {
    /// Writes out what is left of a replacement; `Ready` once nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((out, at)) = &mut self.pending {
            if *at == out.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &out[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes a write of `first` alone (`len` bytes in all) as hyper's own error answer
    /// if it is one and no request has reached the stack yet: `Some(len)` then, as if
    /// all of it had been written.
    fn intercept(&mut self, first: &[u8], len: usize) -> Option<usize> {
        if self.done {
            return None;
        }
        if self.served.load(Ordering::Relaxed) {
            self.done = true;
            return None;
        }
        if first.len() != len {
            return None;
        }
        let r = replacement(first)?;
        let remote = self.remote.ip().to_canonical().to_string();
        crate::logging::access(&crate::logging::Access {
            request_id: r.request_id.to_str().unwrap_or(""),
            route: "-",
            method: "-",
            path: "-",
            status: r.status,
            duration: std::time::Duration::ZERO,
            upstream: "-",
            client: "-",
            remote: &remote,
            trace_id: "-",
        });
        if let Some(gw) = &self.counted_in {
            gw.metrics.request(
                &crate::observe::NO_ROUTE,
                None,
                r.status,
                std::time::Duration::ZERO,
            );
        }
        self.pending = Some((r.bytes, 0));
        Some(len)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(n) = self.intercept(buf, buf.len()) {
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            let len = bufs.iter().map(|b| b.len()).sum();
            if let Some(n) = self.intercept(first, len) {
                return Poll::Ready(Ok(n));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> SocketAddr {
        "192.0.2.1:5000".parse().unwrap()
    }

    // Behaviour: hyper's bare answers become SPEC's JSON with a request id; the stack's
    // own answers (they carry x-request-id) and non-4xx heads pass untouched.
    #[test]
    fn only_hypers_own_answers_are_replaced() {
        let bare = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 17:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(replacement(bare).unwrap().bytes).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains("\r\nconnection: close\r\n"));
        assert!(head.contains("\r\ndate: Mon, 07 Dec 2026 17:00:00 GMT"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "invalid_request");
        let rid = v["request_id"].as_str().unwrap();
        assert!(head.contains(&format!("\r\nx-request-id: {rid}\r\n")));

        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let out = String::from_utf8(replacement(big).unwrap().bytes).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(
            out.contains("\"error\":\"request_header_too_large\""),
            "{out}"
        );

        for keep in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nx-request-id: abc\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\nX-Request-Id: abc\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-len",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nand a body",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"{\"error\":\"x\"}",
        ] {
            assert!(replacement(keep).is_none(), "{}", String::from_utf8_lossy(keep));
        }
    }

    // Behaviour: the replacement goes out whole even through a stream that takes a few
    // bytes per write, before flush and shutdown complete.
    #[tokio::test]
    async fn the_replacement_is_written_whole_before_shutdown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(7);
        let mut w = JsonParseErrors::new(server, remote(), Arc::default());
        let reader = tokio::spawn(async move {
            let mut c = client;
            let mut all = Vec::new();
            c.read_to_end(&mut all).await.unwrap();
            all
        });
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(w.write(bare).await.unwrap(), bare.len());
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let got = String::from_utf8(reader.await.unwrap()).unwrap();
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        assert!(got.ends_with('}'), "{got}");
        assert!(got.contains("\"error\":\"invalid_request\""));
    }

    // Behaviour: once a request has reached the stack, nothing is rewritten — not even
    // a body chunk or tunnel bytes that read exactly like hyper's bare answer.
    #[tokio::test]
    async fn nothing_is_rewritten_once_a_request_was_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(4096);
        let served = Arc::new(AtomicBool::new(false));
        let mut w = JsonParseErrors::new(server, remote(), served.clone());
        served.store(true, Ordering::Relaxed);
        let look_alike = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        w.write_all(look_alike).await.unwrap();
        w.write_all(look_alike).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let mut c = client;
        let mut all = Vec::new();
        c.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, [&look_alike[..], &look_alike[..]].concat());
    }

    // Behaviour: the replacement's status line comes from the code, and a `date` line
    // is kept only when it is a date.
    #[test]
    fn nothing_but_a_date_is_copied() {
        let odd = b"HTTP/1.1 400 Bad\nInjected\r\ncontent-length: 0\r\ndate: x\ny\r\n\r\n";
        let out = String::from_utf8(replacement(odd).unwrap().bytes).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(!out.contains("Injected") && !out.contains("date:"), "{out}");
    }
}
