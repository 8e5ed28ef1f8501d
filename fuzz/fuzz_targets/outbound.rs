//! The outbound proxy (`issuers[].proxy`, `upstreams[].proxy`, `HTTPS_PROXY`): the proxy
//! URL with its credentials, and the proxy's answer to CONNECT.
//!
//! Input: the first byte picks the mode.
//! - `0`: the rest (UTF-8, lossy) is a proxy URL for `outbound::ProxyServer::parse`. No
//!   panic. An accepted URL's `uri` is `http(s)://host:port/`, it shows (`Display`,
//!   `Debug`) as `scheme://host:port`, or `scheme://[redacted]@host:port` exactly when
//!   it has credentials, whose header is then sensitive. **Neither the shown form nor a
//!   refusal ever carries the password** (the password as the url crate reads it, raw
//!   and decoded, when it has 4 bytes or more and is not part of the message's own
//!   words and host).
//! - `1`: the rest is what a proxy sends after CONNECT, then tunnel bytes.
//!   `outbound::read_connect_answer` reads up to the end of the head (`\r\n\r\n` or
//!   `\n\n`) and **never further** (the tunnel's first bytes stay unread), gives up
//!   beyond `MAX_CONNECT_ANSWER` bytes, and answers a status only for a complete head
//!   that httparse reads, with that status.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tollgate::outbound::{read_connect_answer, Answer, ProxyServer, MAX_CONNECT_ANSWER};

fn url_check(text: &str) {
    let parsed = ProxyServer::parse(text);
    // The password as the url crate reads it (what parse itself reads).
    let with_scheme = if text.trim().contains("://") {
        text.trim().to_owned()
    } else {
        format!("http://{}", text.trim())
    };
    let password: Vec<String> = url::Url::parse(&with_scheme)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .map(|raw| {
            let decoded = percent_decode(&raw);
            vec![raw, decoded]
        })
        .unwrap_or_default();
    let leaks = |shown: &str, own_words: &str| {
        password
            .iter()
            .filter(|p| p.len() >= 4 && !own_words.contains(p.as_str()))
            .any(|p| shown.contains(p.as_str()))
    };
    match parsed {
        Ok(server) => {
            let uri = server.uri();
            let scheme = uri.scheme_str().unwrap();
            assert!(scheme == "http" || scheme == "https");
            assert_eq!(uri.path(), "/");
            let hostport = uri.authority().unwrap().as_str();
            assert!(uri.port_u16().is_some(), "{uri}");
            let shown = format!("{server}");
            assert_eq!(shown, format!("{server:?}"));
            match server.credentials() {
                Some(v) => {
                    assert!(v.is_sensitive());
                    assert_eq!(shown, format!("{scheme}://[redacted]@{hostport}"));
                }
                None => assert_eq!(shown, format!("{scheme}://{hostport}")),
            }
            assert!(
                !leaks(&shown, &format!("{scheme}://[redacted]@{hostport}")),
                "the shown proxy URL carries the password: {shown}"
            );
        }
        Err(msg) => {
            // The message's own words: every fixed text parse can answer, and the
            // scheme it may quote (a password of the same spelling is no leak).
            let scheme = with_scheme.split("://").next().unwrap_or_default();
            let own = format!(
                "not a proxy URL: SOCKS proxies are not supported; use an HTTP proxy \
                 (http://host:port) unsupported proxy scheme \"{scheme}\"; use http://host:port \
                 or https://host:port the proxy URL has no host a proxy URL is \
                 scheme://host:port, without a path or query the proxy URL's host is not \
                 valid the proxy credentials cannot be sent in a header {}",
                url_error_words()
            );
            assert!(!leaks(&msg, &own), "a refusal carries the password: {msg}");
        }
    }
}

/// Every message the url crate's parse errors print.
fn url_error_words() -> &'static str {
    "empty host invalid international domain name invalid port number invalid IPv4 \
     address invalid IPv6 address invalid domain character relative URL without a base \
     relative URL with a cannot-be-a-base base a cannot-be-a-base URL doesn’t have a host \
     to set URLs more than 4 GB are not supported"
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer_check(bytes: &[u8]) {
    let mut rest: &[u8] = bytes;
    let result = {
        let fut = pin!(read_connect_answer(&mut rest));
        // A byte slice never waits: the reader finishes in one poll.
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("reading from a byte slice waited"),
        }
    };
    let read = bytes.len() - rest.len();
    // Where the head ends, by the same rule, or none within the limit.
    let end = (1..=bytes.len().min(MAX_CONNECT_ANSWER + 1))
        .find(|&n| bytes[..n].ends_with(b"\r\n\r\n") || bytes[..n].ends_with(b"\n\n"));
    match end {
        Some(n) => {
            assert_eq!(read, n, "read past (or short of) the end of the head");
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let want = match resp.parse(&bytes[..n]) {
                Ok(httparse::Status::Complete(_)) => resp.code,
                _ => None,
            };
            match (&result, want) {
                (Ok(status), Some(code)) => assert_eq!(status.as_u16(), code),
                (Err(Answer::Bad(_)), None) => {}
                (Err(Answer::Bad(_)), Some(code)) => {
                    assert!(
                        http::StatusCode::from_u16(code).is_err(),
                        "status {code} refused"
                    )
                }
                (other, want) => panic!("{other:?} for a head httparse reads as {want:?}"),
            }
        }
        None => {
            assert!(
                matches!(result, Err(Answer::Bad(_))),
                "{result:?} without a head end"
            );
            assert!(
                read <= MAX_CONNECT_ANSWER + 1,
                "read {read} bytes of an endless head"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 2 {
        0 => url_check(&String::from_utf8_lossy(rest)),
        _ => answer_check(rest),
    }
});
