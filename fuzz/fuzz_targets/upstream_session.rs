//! The upstream session of `upstreams[].csrf` (`upstream_session`, between upstream
//! credentials and forwarding): the request body kept for the one replay after
//! `403` + `X-CSRF-Token: Required`, and what of the upstream's answer reaches the client.
//!
//! The first byte picks a mode:
//! - `0`, the replay body (`upstream_session::replay`): the input describes a client
//!   body (data frames of any size, maybe trailers), a keep limit, how many frames the
//!   first send reads before the upstream answers, and whether the answer asks for a
//!   replay. Properties: the first send reads the client's frames unchanged; a replay
//!   is offered exactly when the first send read at most `limit` data bytes; **the
//!   replay sends the client's whole body, byte for byte, then its trailers**; once
//!   replayed the first send can read nothing more; a released recording lets the first
//!   send read on to the end; `is_end_stream` never claims an end before the last frame
//!   and an exact `size_hint` is the number of bytes still to come.
//! - `1`, an upstream's answer (`Session::absorb`, `token_required`, `needs_token`):
//!   header lines `name: value` of a response (status from the second byte). After
//!   `absorb` **no `Set-Cookie` and no `X-CSRF-Token` reaches the client**, every other
//!   header does; the jar sends back only cookies `absorb` reported as stored;
//!   `token_required` is exactly `403` with a first `X-CSRF-Token` of `Required` (any
//!   case); `needs_token` is every method but GET, HEAD, OPTIONS, TRACE.
#![no_main]

use std::collections::HashSet;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{HeaderMap, HeaderName, HeaderValue, SET_COOKIE};
use http::{Method, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};
use libfuzzer_sys::fuzz_target;
use tollgate::body::BoxError;
use tollgate::upstream_session::replay::{record, ReplayBody};
use tollgate::upstream_session::{needs_token, token_required, Sessions, X_CSRF_TOKEN};

type Client =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// One frame, now (every body here is ready at once).
fn next(b: &mut ReplayBody<Client>) -> Result<Step, BoxError> {
    let f = b
        .frame()
        .now_or_never()
        .expect("a ready body is never pending");
    match f {
        None => Ok(Step::End),
        Some(Err(e)) => Err(e),
        Some(Ok(f)) => match f.into_data() {
            Ok(d) => Ok(Step::Data(d)),
            Err(f) => Ok(Step::Trailers(f.into_trailers().expect("data or trailers"))),
        },
    }
}

/// Reads to the end, checking `is_end_stream` and `size_hint` before every frame.
fn read_rest(b: &mut ReplayBody<Client>, data: &mut Vec<u8>) -> Option<HeaderMap> {
    let mut trailers = None;
    loop {
        let claims_end = b.is_end_stream();
        let exact = b.size_hint().exact();
        match next(b).expect("no error from the client's body") {
            Step::Data(d) => {
                assert!(!claims_end, "is_end_stream before a data frame");
                if let Some(n) = exact {
                    assert!(
                        n >= d.len() as u64,
                        "size_hint {n} < {} still to come",
                        d.len()
                    );
                }
                data.extend_from_slice(&d);
            }
            Step::Trailers(t) => {
                assert!(!claims_end, "is_end_stream before the trailers");
                assert!(trailers.replace(t).is_none(), "trailers twice");
            }
            Step::End => return trailers,
        }
    }
}

fn mode_replay(input: &[u8]) {
    if input.len() < 4 {
        return;
    }
    let limit = u64::from(u16::from_le_bytes([input[0], input[1]])) % 2048;
    let first_reads = usize::from(input[2] % 16);
    let action = input[3] % 3; // 0: replay, 1: release, 2: replay without reading more
                               // The client's body: a tag byte per frame.
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = Vec::new();
    let mut all = Vec::new();
    let mut trailers = None;
    let mut rest = &input[4..];
    while let Some((&tag, more)) = rest.split_first() {
        if frames.len() >= 12 {
            break;
        }
        if tag % 8 == 7 {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from(u16::from(tag)));
            trailers = Some(t.clone());
            frames.push(Ok(Frame::trailers(t)));
            break;
        }
        let len = usize::from(tag / 8) * 13 % 600;
        let len = len.min(more.len().max(1));
        let chunk: Vec<u8> = if more.is_empty() {
            vec![b'x'; len]
        } else {
            more.iter().cycle().take(len).copied().collect()
        };
        all.extend_from_slice(&chunk);
        frames.push(Ok(Frame::data(Bytes::from(chunk))));
        rest = &more[len.min(more.len())..];
    }
    let client: Client = StreamBody::new(futures_util::stream::iter(frames));
    let (mut first, rec) = record(client, limit);

    // The first send reads some frames, as the upstream takes them.
    let mut read = Vec::new();
    let mut read_trailers = None;
    let mut ended = false;
    for _ in 0..first_reads {
        match next(&mut first).expect("no error") {
            Step::Data(d) => read.extend_from_slice(&d),
            Step::Trailers(t) => read_trailers = Some(t),
            Step::End => {
                ended = true;
                break;
            }
        }
    }
    assert!(
        all.starts_with(&read),
        "the first send reads the client's bytes"
    );

    if action == 1 {
        rec.release();
        let t = read_rest(&mut first, &mut read);
        assert_eq!(read, all, "after release the first send reads on");
        assert_eq!(t.or(read_trailers), trailers);
        return;
    }
    match rec.replay() {
        None => assert!(
            read.len() as u64 > limit,
            "no replay after {} bytes with a limit of {limit}",
            read.len()
        ),
        Some(mut again) => {
            assert!(
                read.len() as u64 <= limit,
                "kept {} bytes over {limit}",
                read.len()
            );
            if !ended {
                assert!(
                    next(&mut first).is_err(),
                    "the first send reads on after the replay started"
                );
            }
            let mut replayed = Vec::new();
            let t = read_rest(&mut again, &mut replayed);
            assert_eq!(replayed, all, "the replay sends the whole body");
            assert_eq!(t, trailers, "the replay sends the client's trailers");
        }
    }
}

fn mode_answer(input: &[u8]) {
    let Some((&status, lines)) = input.split_first() else {
        return;
    };
    let status = match status % 4 {
        0 => StatusCode::FORBIDDEN,
        1 => StatusCode::OK,
        2 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::from_u16(200 + u16::from(status)).unwrap_or(StatusCode::IM_A_TEAPOT),
    };
    let mut h = HeaderMap::new();
    let mut method = None;
    for line in lines.split(|b| *b == b'\n').take(40) {
        let Some(i) = line.iter().position(|b| *b == b':') else {
            method = Method::from_bytes(line).ok().or(method);
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) else {
            continue;
        };
        h.append(n, v);
    }
    let want_required = status == StatusCode::FORBIDDEN
        && h.get(&X_CSRF_TOKEN)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"required"));
    assert_eq!(token_required(status, &h), want_required);
    if let Some(m) = &method {
        let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(m);
        assert_eq!(needs_token(m), !safe, "{m}");
    }

    let sessions = Sessions::default();
    let s = sessions.get_or_create([7; 32]);
    let url = url::Url::parse("https://s4.corp.example.com/sap/opu/odata/sap/API/Items").unwrap();
    let before = h.clone();
    let kept = s.absorb(&mut h, &url, "s4");
    assert!(h.get(SET_COOKIE).is_none(), "Set-Cookie reached the client");
    assert!(
        h.get(&X_CSRF_TOKEN).is_none(),
        "X-CSRF-Token reached the client"
    );
    for (n, v) in &before {
        if n != SET_COOKIE && n != X_CSRF_TOKEN {
            assert!(h.get_all(n).iter().any(|x| x == v), "{n} was removed");
        }
    }
    assert_eq!(
        h.len(),
        before.len()
            - before.get_all(SET_COOKIE).iter().count()
            - before.get_all(&X_CSRF_TOKEN).iter().count()
    );
    let kept: HashSet<&str> = kept.iter().map(String::as_str).collect();
    if let Some(c) = s.cookie_header(&url) {
        assert!(c.is_sensitive());
        for pair in String::from_utf8_lossy(c.as_bytes()).split("; ") {
            let name = pair.split_once('=').map_or(pair, |(k, _)| k);
            assert!(kept.contains(name), "{name:?} sent but never stored");
        }
    }
    // Nothing was fetched: there is no token to use.
    assert!(s.current().is_none());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        mode_replay(rest)
    } else {
        mode_answer(rest)
    }
});
