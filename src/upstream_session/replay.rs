//! A request body that can be sent twice (step 10, `upstreams[].csrf`): the client's body
//! streams to the upstream as usual while its bytes are kept, up to a limit, so that a
//! request refused with `403` + `X-CSRF-Token: Required` can be sent once more with a
//! fresh token.
//!
//! Nothing is buffered ahead of the upstream: the first send reads the client's body
//! as the upstream takes it. The kept bytes are freed as soon as the first answer is
//! known not to need a replay. A replay sends the kept bytes, then goes on reading the
//! client's body where the first send left off (an upstream may refuse before it has
//! read everything). A body longer than the limit is not kept, and cannot be replayed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::BoxError;

struct Shared<B> {
    /// The client's body, read by whichever send is current.
    inner: Pin<Box<B>>,
    /// Data read so far, while recording.
    kept: Vec<Bytes>,
    kept_len: u64,
    limit: u64,
    /// Recording stopped: past the limit, or no replay will happen.
    released: bool,
    /// More than `limit` bytes were read: no replay.
    overflowed: bool,
    /// Trailers read from the client's body, kept for the replay.
    trailers: Option<HeaderMap>,
    /// The client's body has ended.
    ended: bool,
    /// Which send may read (0: the first, 1: the replay).
    current: u8,
}

/// One send's view of the client's body.
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    send: u8,
    /// The replay's position in `kept`.
    next: usize,
    trailers_sent: bool,
}

/// The first send was answered: a later send of this body is no longer current.
#[derive(Debug, thiserror::Error)]
#[error("the request body was handed to a newer send")]
pub struct Superseded;

/// The body for the first send, and the handle that decides about a replay.
pub fn record<B>(inner: B, limit: u64) -> (ReplayBody<B>, Recording<B>) {
    let shared = Arc::new(Mutex::new(Shared {
        inner: Box::pin(inner),
        kept: Vec::new(),
        kept_len: 0,
        limit,
        released: false,
        overflowed: false,
        trailers: None,
        ended: false,
        current: 0,
    }));
    (
        ReplayBody {
            shared: shared.clone(),
            send: 0,
            next: 0,
            trailers_sent: false,
        },
        Recording { shared },
    )
}

/// Decides, once the first answer is in, whether the body can be sent again.
pub struct Recording<B> {
    shared: Arc<Mutex<Shared<B>>>,
}

impl<B> Recording<B> {
    /// No replay will happen: the kept bytes are freed and recording stops.
    pub fn release(&self) {
        let mut s = lock(&self.shared);
        s.released = true;
        s.kept = Vec::new();
    }

    /// The body for the one replay, or `None` when the body was longer than the limit
    /// (then recording stops too). The first send's body is cut off from the client's
    /// body from now on.
    pub fn replay(self) -> Option<ReplayBody<B>> {
        let mut s = lock(&self.shared);
        if s.overflowed || s.released {
            s.released = true;
            s.kept = Vec::new();
            return None;
        }
        s.current = 1;
        // The replay itself is never replayed: what it reads is not kept.
        s.released = true;
        drop(s);
        Some(ReplayBody {
            shared: self.shared,
            send: 1,
            next: 0,
            trailers_sent: false,
        })
    }
}

fn lock<B>(m: &Mutex<Shared<B>>) -> std::sync::MutexGuard<'_, Shared<B>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B> HttpBody for ReplayBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = lock(&this.shared);
        if s.current != this.send {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if this.send == 1 {
            // What the first send read, again.
            if let Some(b) = s.kept.get(this.next) {
                let b = b.clone();
                this.next += 1;
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            // Trailers end a body: a first send that read them may not have polled on
            // to the end, but nothing comes after them.
            if s.ended || s.trailers.is_some() {
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(t) = s.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                return Poll::Ready(None);
            }
        }
        if s.ended {
            return Poll::Ready(None);
        }
        let polled = s.inner.as_mut().poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if !s.released {
                    if let Some(d) = frame.data_ref() {
                        s.kept_len += d.len() as u64;
                        if s.kept_len > s.limit {
                            s.overflowed = true;
                            s.released = true;
                            s.kept = Vec::new();
                        } else {
                            let d = d.clone();
                            s.kept.push(d);
                        }
                    } else if let Some(t) = frame.trailers_ref() {
                        s.trailers = Some(t.clone());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        if s.current != self.send {
            return false;
        }
        let replaying_kept = self.send == 1 && self.next < s.kept.len();
        let trailers_due = self.send == 1 && s.trailers.is_some() && !self.trailers_sent;
        !replaying_kept && !trailers_due && (s.ended || s.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        let inner = s.inner.size_hint();
        if self.send == 0 {
            return inner;
        }
        let kept: u64 = s.kept.iter().skip(self.next).map(|b| b.len() as u64).sum();
        let mut h = SizeHint::new();
        if s.ended {
            h.set_exact(kept);
            return h;
        }
        h.set_lower(kept + inner.lower());
        if let Some(u) = inner.upper() {
            h.set_upper(kept + u);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str]) -> impl HttpBody<Data = Bytes, Error = BoxError> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read_all<B: HttpBody<Data = Bytes>>(b: B) -> Result<Vec<u8>, B::Error> {
        Ok(b.collect().await?.to_bytes().to_vec())
    }

    // Behaviour: a body read whole is sent again, byte for byte.
    #[tokio::test]
    async fn replays_a_body_read_whole() {
        let (first, rec) = record(chunks(&["ab", "cd", "ef"]), 100);
        assert_eq!(read_all(first).await.unwrap(), b"abcdef");
        let again = rec.replay().expect("kept");
        assert_eq!(again.size_hint().exact(), Some(6));
        assert_eq!(read_all(again).await.unwrap(), b"abcdef");
    }

    // Behaviour: an upstream that refused after reading part of the body gets all of it
    // on the replay: the kept part, then the rest of the client's body; the first send
    // can no longer read.
    #[tokio::test]
    async fn replays_a_body_read_in_part() {
        let (mut first, rec) = record(chunks(&["ab", "cd", "ef"]), 100);
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let again = rec.replay().expect("kept");
        assert!(first.frame().await.unwrap().is_err());
        assert_eq!(read_all(again).await.unwrap(), b"abcdef");
    }

    // Behaviour (issue 19, found for the `upstream_session` fuzz target): a first send
    // that read the data and the trailers, but did not poll on to the end (hyper stops
    // after trailers), left a replay without the client's trailers; it sends them now.
    #[tokio::test]
    async fn replays_trailers_the_first_send_read() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(t.clone())),
        ];
        let (mut first, rec) = record(StreamBody::new(futures_util::stream::iter(frames)), 100);
        assert!(first.frame().await.unwrap().unwrap().is_data());
        assert!(first.frame().await.unwrap().unwrap().is_trailers());
        let again = rec.replay().expect("kept");
        let got = again.collect().await.unwrap();
        assert_eq!(got.trailers(), Some(&t));
        assert_eq!(got.to_bytes(), "ab");
    }

    // Behaviour: a body longer than the limit is not kept and not replayed.
    #[tokio::test]
    async fn a_body_over_the_limit_is_not_replayed() {
        let (first, rec) = record(chunks(&["abcd", "efgh"]), 5);
        assert_eq!(read_all(first).await.unwrap(), b"abcdefgh");
        assert!(rec.replay().is_none());
    }

    // Behaviour: released, nothing more is kept (and no replay happens).
    #[tokio::test]
    async fn release_stops_recording() {
        let (mut first, rec) = record(chunks(&["ab", "cd"]), 100);
        first.frame().await.unwrap().unwrap();
        rec.release();
        assert_eq!(read_all(first).await.unwrap(), b"cd");
    }
}
