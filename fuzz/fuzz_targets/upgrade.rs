//! WebSocket requests (`upgrade`, above the proxy; the conversion runs in the listener):
//! an HTTP/2 extended CONNECT (RFC 8441) becomes the HTTP/1.1 handshake shape, and
//! which requests count as WebSocket handshakes.
//!
//! Input: lines. The first is the method, the second the `:protocol` pseudo-header
//! (`-` for none), the others `name: value` headers. Properties:
//! - no panic; `from_extended_connect` turns exactly a CONNECT whose `:protocol` is
//!   `websocket` (any case) into a GET marked `ExtendedConnect` with `Upgrade: websocket`
//!   and `Connection: upgrade`, which `wants_websocket` then accepts; every other header
//!   stays as it was; any other request is left exactly as it was (method, headers, no
//!   marker);
//! - `wants_websocket` equals a reference: some `Upgrade` value lists the token
//!   `websocket` and some `Connection` value lists `upgrade` (comma-separated, trimmed,
//!   any case, text values only).
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};
use http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use tollgate::upgrade::{from_extended_connect, wants_websocket, ExtendedConnect};

fn lists(h: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        std::str::from_utf8(v.as_bytes()).is_ok_and(|s| {
            v.to_str().is_ok()
                && s.split(',')
                    .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
        })
    })
}

fn reference_wants(h: &HeaderMap) -> bool {
    lists(h, &UPGRADE, "websocket") && lists(h, &CONNECTION, "upgrade")
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let Some(Ok(method)) = lines.next().map(Method::from_bytes) else {
        return;
    };
    let protocol = lines
        .next()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| p != "-");
    let mut headers = HeaderMap::new();
    for line in lines.take(24) {
        let Some(i) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    let mut req = Request::builder()
        .method(method.clone())
        .uri("/ws")
        .body(())
        .unwrap();
    *req.headers_mut() = headers.clone();
    if let Some(p) = &protocol {
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from(p.as_str()));
    }
    assert_eq!(wants_websocket(&req), reference_wants(&headers));

    from_extended_connect(&mut req);
    let converts = method == Method::CONNECT
        && protocol
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("websocket"));
    if converts {
        assert_eq!(req.method(), Method::GET);
        assert!(req.extensions().get::<ExtendedConnect>().is_some());
        assert_eq!(
            req.headers().get_all(UPGRADE).iter().collect::<Vec<_>>(),
            ["websocket"]
        );
        assert_eq!(
            req.headers().get_all(CONNECTION).iter().collect::<Vec<_>>(),
            ["upgrade"]
        );
        assert!(wants_websocket(&req));
        for (n, v) in &headers {
            if n != UPGRADE && n != CONNECTION {
                assert!(req.headers().get_all(n).iter().any(|x| x == v), "{n} lost");
            }
        }
        assert_eq!(
            req.headers().len(),
            headers.len() + 2
                - headers.get_all(UPGRADE).iter().count()
                - headers.get_all(CONNECTION).iter().count()
        );
    } else {
        assert_eq!(req.method(), method);
        assert_eq!(req.headers(), &headers);
        assert!(req.extensions().get::<ExtendedConnect>().is_none());
    }
});
