//! Where every log line goes on its way to stderr: one buffer, emptied by a writer
//! thread with one `write(2)` per batch of lines.
//!
//! Hand-written instead of `tracing-appender`'s `NonBlocking` (measured, bench/ANALYSIS.md
//! "Session 15: log lines in batches"): that queue hands each line to its thread as a
//! message of its own, so under load the thread woke, wrote and went back to waiting
//! (spinning and `sched_yield`ing first) for nearly every request's access line — 1.6 to
//! 3.9 µs of CPU per request on a second core, 5-12 % of what tollgate spent on the
//! request itself, plus a futex wake on the worker's side whenever the thread slept.
//! Here a line is one `memcpy` into the shared buffer under a short lock; only the line
//! that finds the buffer empty wakes the thread, which lets lines gather for
//! [`GATHER`] and writes them all at once. An idle gateway's thread sleeps (no timer).
//!
//! Lossless, as before: when [`CAP`] bytes are waiting (stderr is not being read), a
//! line waits for room instead of being dropped. Lines keep the order they were
//! written in, tracing's events and access lines alike.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

/// How long the thread lets lines gather once the first of a batch arrived: the most a
/// line waits before its write begins.
pub const GATHER: Duration = Duration::from_millis(2);

/// Bytes that may wait for the writer before a new line waits for room.
pub const CAP: usize = 4 << 20;

struct Queue {
    buf: Vec<u8>,
    /// Lines waiting for room (so that the thread only signals when someone waits).
    waiting: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    room: Condvar,
    thread: OnceLock<Thread>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves at worst a partly copied line; keep
        // logging.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle that writes whole lines to the queue; cheap to clone. As an
/// [`std::io::Write`], every `write` call is taken as it is, so write one line per call
/// (tracing's formatter does).
#[derive(Clone)]
pub struct Lines {
    shared: Arc<Shared>,
}

/// Keep it until the process ends: dropping it writes what is queued and stops the
/// thread — waiting at most [`SHUTDOWN_WAIT`] for it, so that a stderr nobody reads
/// cannot keep the process from exiting.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the thread has ended.
    ended: std::sync::mpsc::Receiver<()>,
}

/// How long dropping the [`LogGuard`] waits for queued lines to be written.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// A queue drained into `out` by a thread of its own.
pub fn spawn<W: Write + Send + 'static>(out: W) -> (Lines, LogGuard) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            buf: Vec::with_capacity(64 * 1024),
            waiting: 0,
            closed: false,
        }),
        room: Condvar::new(),
        thread: OnceLock::new(),
    });
    let s = shared.clone();
    let (alive, ended) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tollgate-log".into())
        .spawn(move || {
            let _alive = alive;
            drain(&s, out);
        })
        .expect("the log writer thread starts");
    let _ = shared.thread.set(thread.thread().clone());
    (
        Lines {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
            ended,
        },
    )
}

impl Lines {
    /// Queues `line` (whole lines: nothing is added or split).
    pub fn write_line(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut q = shared.lock();
        while q.buf.len() >= CAP && !q.closed {
            q.waiting += 1;
            q = shared.room.wait(q).unwrap_or_else(|e| e.into_inner());
            q.waiting -= 1;
        }
        let first = q.buf.is_empty();
        q.buf.extend_from_slice(line);
        drop(q);
        if first {
            // Only the first line of a batch wakes the thread (an unpark of a thread
            // that is not parked is one atomic operation, no system call).
            if let Some(t) = shared.thread.get() {
                t.unpark();
            }
        }
    }
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_line(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

/// The thread: sleeps while nothing is queued; otherwise lets lines gather, takes them
/// all and writes them with one `write_all`.
fn drain<W: Write>(shared: &Shared, mut out: W) {
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        {
            let q = shared.lock();
            if q.buf.is_empty() {
                if q.closed {
                    return;
                }
                drop(q);
                std::thread::park();
                continue;
            }
            if !q.closed {
                drop(q);
                std::thread::sleep(GATHER);
            }
        }
        let mut q = shared.lock();
        std::mem::swap(&mut q.buf, &mut spare);
        let wake = q.waiting > 0;
        drop(q);
        if wake {
            shared.room.notify_all();
        }
        // A closed or failing stderr must never take the gateway down: lines that
        // cannot be written are dropped, the queue keeps moving.
        let _ = out.write_all(&spare);
        let _ = out.flush();
        spare.clear();
        // One burst (a line far longer than usual) does not pin its memory.
        if spare.capacity() > 2 * CAP {
            spare = Vec::with_capacity(64 * 1024);
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.room.notify_all();
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // Joined once it has ended; left behind if stderr blocks it past the wait.
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                self.ended.recv_timeout(SHUTDOWN_WAIT)
            {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An `out` that records what it was given and how many writes it took.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
        /// While set, a write waits (a stderr nobody reads).
        stall: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.stall.lock().unwrap();
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    // Behaviour: lines from several threads all arrive, whole and in each thread's
    // order, and many lines written together take far fewer writes than lines.
    #[test]
    fn lines_arrive_whole_in_order_and_in_batches() {
        let sink = Sink::default();
        let (lines, guard) = spawn(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l = lines.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        l.write_line(
                            format!("thread {t} line {i:05} {}\n", "x".repeat(t * 7)).as_bytes(),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard); // writes what is left
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let t: usize = parts[1].parse().unwrap();
            assert_eq!(parts[3].parse::<usize>().unwrap(), next[t], "{line}");
            assert_eq!(parts.get(4).copied().unwrap_or(""), "x".repeat(t * 7));
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
        let writes = sink.writes.load(Ordering::SeqCst);
        assert!(writes < 20_000 / 10, "{writes} writes for 20,000 lines");
    }

    // Behaviour: a line written to an idle queue is written without another line
    // coming after it.
    #[test]
    fn a_lone_line_is_written() {
        let sink = Sink::default();
        let (lines, _guard) = spawn(sink.clone());
        lines.clone().write_all(b"only line\n").unwrap();
        wait_for("the line", || {
            sink.bytes.lock().unwrap().as_slice() == b"only line\n"
        });
        lines.write_line(b"second\n");
        wait_for("the second line", || {
            sink.bytes.lock().unwrap().ends_with(b"second\n")
        });
    }

    // Behaviour: nothing is dropped when stderr is not read: past CAP a writer waits
    // for room, and every line arrives once the reader is back.
    #[test]
    fn a_full_queue_waits_instead_of_dropping() {
        let sink = Sink::default();
        let stalled = sink.stall.lock().unwrap();
        let (lines, guard) = spawn(sink.clone());
        let line = vec![b'y'; 1023];
        let n = 3 * CAP / 1024;
        let writer = {
            let l = lines.clone();
            let mut line = line.clone();
            line.push(b'\n');
            std::thread::spawn(move || {
                for _ in 0..n {
                    l.write_line(&line);
                }
            })
        };
        // The writer gets stuck: the thread holds one batch in a write that cannot
        // finish and the queue fills to CAP.
        wait_for("the queue to fill", || lines.shared.lock().waiting == 1);
        assert!(!writer.is_finished());
        drop(stalled);
        writer.join().unwrap();
        drop(guard);
        let out = sink.bytes.lock().unwrap();
        assert_eq!(out.len(), n * 1024);
        assert!(out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .all(|l| l == line.as_slice()));
    }

    // Behaviour: a stderr that blocks for good does not keep the guard's drop (the
    // process's exit) waiting much longer than SHUTDOWN_WAIT.
    #[test]
    fn a_blocked_stderr_does_not_hold_up_the_exit() {
        let stuck = Sink::default();
        let stalled = stuck.stall.lock().unwrap();
        let (lines, guard) = spawn(stuck.clone());
        lines.write_line(b"never written\n");
        wait_for("the thread to take the line into its write", || {
            lines.shared.lock().buf.is_empty()
        });
        let t = std::time::Instant::now();
        drop(guard);
        assert!(t.elapsed() < SHUTDOWN_WAIT * 5, "{:?}", t.elapsed());
        assert!(t.elapsed() >= SHUTDOWN_WAIT, "{:?}", t.elapsed());
        drop(stalled);
    }
}
