//! Graceful shutdown of open connections: when the accept loop stops, every connection
//! is asked to finish what it is serving and close (hyper's `graceful_shutdown`: an idle
//! keep-alive connection closes at once, a busy HTTP/1 one after its response, HTTP/2
//! sends GOAWAY), and the loop waits until all of them have.
//!
//! tollgate's own rather than hyper-util's `GracefulShutdown`, which does the same with
//! a `tokio::sync::watch` receiver whose `changed()` future it polls on every poll of
//! every connection (a lock of the channel's waiter list and a co-operative budget tick
//! each time; measured in bench/ANALYSIS.md, "Session 16"). Here a connection's poll
//! costs one atomic load and an `AtomicWaker` registration, which does not clone the
//! waker when the task's is unchanged; the shared list is touched once when a
//! connection opens and once when it ends.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;

/// The accept loop's side: hands out a [`Conn`] per accepted connection, and at the end
/// tells them all to close and waits for them ([`Drain::shutdown`]).
#[derive(Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    closing: AtomicBool,
    /// The connections now open, by id: each one's task waker.
    open: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    next_id: AtomicU64,
    /// Signalled when the last connection ends after closing began.
    all_closed: Notify,
}

impl Shared {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicWaker>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection's membership, taken when it is accepted (so that shutdown also
    /// waits for connections still in their TLS handshake) and held until it ends.
    pub fn conn(&self) -> Conn {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.shared.open().insert(id, waker.clone());
        Conn {
            shared: self.shared.clone(),
            id,
            waker,
        }
    }

    /// Connections now open (accepted and not yet ended).
    pub fn count(&self) -> usize {
        self.shared.open().len()
    }

    /// Asks every open connection to close gracefully, then waits until none is open.
    /// Connections accepted after this call are asked as they start.
    pub async fn shutdown(self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        for w in self.shared.open().values() {
            w.wake();
        }
        loop {
            if self.shared.open().is_empty() {
                return;
            }
            // `notify_one` keeps a permit: an end between the check and this wait
            // is not missed.
            self.shared.all_closed.notified().await;
        }
    }
}

/// One connection's membership in the [`Drain`]; ends it when dropped.
pub struct Conn {
    shared: Arc<Shared>,
    id: u64,
    waker: Arc<AtomicWaker>,
}

impl Conn {
    /// Serves `conn` until it ends, asking it to close gracefully once the drain
    /// begins.
    pub fn watch<C: GracefulConnection>(self, conn: C) -> Watched<C> {
        Watched {
            conn,
            member: self,
            asked: false,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut open = self.shared.open();
        open.remove(&self.id);
        if open.is_empty() && self.shared.closing.load(Ordering::SeqCst) {
            self.shared.all_closed.notify_one();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection served under a [`Drain`].
    pub struct Watched<C> {
        #[pin]
        conn: C,
        member: Conn,
        asked: bool,
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.asked {
            // Register first, then look: a shutdown that starts in between wakes
            // this task through the registered waker.
            this.member.waker.register(cx.waker());
            if this.member.shared.closing.load(Ordering::SeqCst) {
                *this.asked = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A server of one route: `/hold` answers when `release` is notified, anything
    /// else at once. Returns its address and the drain of its connections.
    async fn server(
        drain: Arc<Mutex<Option<Drain>>>,
        release: Arc<Notify>,
        held: Arc<AtomicU64>,
    ) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let member = match drain.lock().unwrap().as_ref() {
                    Some(d) => d.conn(),
                    None => return,
                };
                let (release, held) = (release.clone(), held.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (release, held) = (release.clone(), held.clone());
                        async move {
                            if req.uri().path() == "/hold" {
                                held.fetch_add(1, Ordering::SeqCst);
                                release.notified().await;
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                Empty::<Bytes>::new(),
                            ))
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let _ = member.watch(conn.into_owned()).await;
                });
            }
        });
        addr
    }

    async fn get(stream: &mut TcpStream, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    async fn eof(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    // Behaviour: an idle keep-alive connection is closed at once by shutdown, a busy
    // one finishes its response (announcing `connection: close`) and then closes, and
    // shutdown returns only when both are gone.
    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_waits_for_busy_ones() {
        let drain = Arc::new(Mutex::new(Some(Drain::new())));
        let release = Arc::new(Notify::new());
        let held = Arc::new(AtomicU64::new(0));
        let addr = server(drain.clone(), release.clone(), held.clone()).await;

        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut idle, "/").await.starts_with("HTTP/1.1 200"));
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while held.load(Ordering::SeqCst) < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the request is held"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let d = drain.lock().unwrap().take().unwrap();
        assert_eq!(d.count(), 2);
        let mut shutdown = tokio::spawn(d.shutdown());

        assert!(eof(&mut idle).await, "the idle connection is closed");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut shutdown)
                .await
                .is_err(),
            "shutdown waits for the busy connection"
        );
        release.notify_one();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, busy.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(
            eof(&mut busy).await,
            "the busy connection closes after its answer"
        );
        tokio::time::timeout(PATIENCE, shutdown)
            .await
            .expect("shutdown returns once no connection is open")
            .unwrap();
    }

    // Behaviour: shutdown also waits for a connection that has not started serving
    // (a TLS handshake in progress holds its membership), and returns at once when
    // no connection is open.
    #[tokio::test]
    async fn shutdown_waits_for_every_member() {
        tokio::time::timeout(PATIENCE, Drain::new().shutdown())
            .await
            .expect("nothing open: shutdown returns at once");
        let drain = Drain::new();
        let first = drain.conn();
        let second = drain.conn();
        assert_eq!(drain.count(), 2);
        let mut shutdown = tokio::spawn(drain.shutdown());
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut shutdown)
                .await
                .is_err(),
            "one member is still open"
        );
        drop(second);
        tokio::time::timeout(PATIENCE, shutdown)
            .await
            .expect("shutdown returns when the last member ends")
            .unwrap();
    }
}
