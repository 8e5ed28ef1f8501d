//! Deadlines on the request path, kept by one thread of their own instead of tokio's
//! timer wheel.
//!
//! Every forwarded request waits under two deadlines that almost never pass: hyper's
//! `header_read_timeout` for the next request head on a keep-alive connection, and the
//! upstream's `timeout` (which also stands for `request_timeout`:
//! [`crate::service::request_deadline`]). A tokio timer costs ~1,000 instructions per
//! request — made, registered in the wheel (a lock, atomics, the wheel's levels), taken
//! out again — about 2 % of a proxied request each (measured with `bench/callgrind.sh`:
//! bench/ANALYSIS.md, "Deadlines without tokio's timer"). Here a deadline is a slot in a
//! sharded table: registering it is a lock, a store and a waker clone; dropping it a lock
//! and a store. One thread sleeps until the earliest deadline and wakes whatever is due.
//! Hand-written because the measurement says so; the slow paths (key fetches, TLS
//! handshakes, WebSocket tunnels, `request_timeout`'s own timer) keep tokio's.
//!
//! A deadline never fires early (the thread compares the clock); it fires when the
//! thread wakes after it: microseconds late on an idle machine, a scheduling slice on a
//! busy one. The thread is started on the first deadline and lives as long as the
//! process; it sleeps without a timeout while nothing waits.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Tables, so that worker threads registering deadlines at once rarely share a lock.
const SHARDS: usize = 16;

/// The least time between two looks of the timer thread (see [`Timers::run`]).
const MIN_LOOK_GAP: Duration = Duration::from_millis(2);

/// A future that is ready once its deadline has passed (see the module docs).
#[derive(Debug)]
pub struct Sleep {
    at: Instant,
    /// The table and slot holding this deadline, once it has been polled and waits.
    slot: Option<(u8, u32)>,
}

impl Sleep {
    /// Ready at `at`.
    pub fn until(at: Instant) -> Sleep {
        Sleep { at, slot: None }
    }

    /// Ready once `after` has passed (an `after` past what `Instant` can hold: never).
    pub fn after(after: Duration) -> Sleep {
        let now = Instant::now();
        Sleep::until(
            now.checked_add(after)
                .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400)),
        )
    }

    /// When it is ready.
    pub fn deadline(&self) -> Instant {
        self.at
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let timers = timers();
        match self.slot {
            None => {
                // No clock read here (one per deadline, on every request): a deadline
                // already past is registered like any other, before the thread's next
                // look, so the thread is woken to fire it at once.
                let shard = this_threads_shard();
                let waker = cx.waker().clone();
                let idx = timers.table(shard).insert(self.at, waker);
                self.slot = Some((shard as u8, idx));
                timers.look_again_if_before(self.at);
                Poll::Pending
            }
            Some((shard, idx)) => {
                let mut table = timers.table(shard as usize);
                let old = match &mut table.slots[idx as usize] {
                    Slot::Waiting { waker, .. } if waker.will_wake(cx.waker()) => None,
                    Slot::Waiting { waker, .. } => {
                        Some(std::mem::replace(waker, cx.waker().clone()))
                    }
                    Slot::Fired | Slot::Free => return Poll::Ready(()),
                };
                // A replaced waker is dropped after the lock is released.
                drop(table);
                drop(old);
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((shard, idx)) = self.slot {
            // The waker is dropped after the lock is released.
            let slot = timers().table(shard as usize).remove(idx);
            drop(slot);
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

/// hyper's timer for HTTP/1 connections (its `header_read_timeout`), on [`Sleep`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperTimer;

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, after: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::after(after))
    }

    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(at))
    }
}

enum Slot {
    Free,
    Waiting { at: Instant, waker: Waker },
    Fired,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl Table {
    fn insert(&mut self, at: Instant, waker: Waker) -> u32 {
        let slot = Slot::Waiting { at, waker };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 deadlines")
            }
        }
    }

    fn remove(&mut self, idx: u32) -> Slot {
        let slot = std::mem::replace(&mut self.slots[idx as usize], Slot::Free);
        self.free.push(idx);
        slot
    }

    /// Takes the wakers of the deadlines at or before `now` into `due`; returns the
    /// earliest deadline still waiting.
    fn fire(&mut self, now: Instant, due: &mut Vec<Waker>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for slot in &mut self.slots {
            if let Slot::Waiting { at, .. } = slot {
                if *at <= now {
                    if let Slot::Waiting { waker, .. } = std::mem::replace(slot, Slot::Fired) {
                        due.push(waker);
                    }
                } else {
                    next = Some(next.map_or(*at, |n| n.min(*at)));
                }
            }
        }
        // Free slots at the end go, so that a table shrinks again after a burst (the
        // slots in use keep their places: their `Sleep`s hold the indices).
        let live = self
            .slots
            .iter()
            .rposition(|s| !matches!(s, Slot::Free))
            .map_or(0, |i| i + 1);
        if live < self.slots.len() {
            self.slots.truncate(live);
            self.free.retain(|&i| (i as usize) < live);
            if self.slots.capacity() > 64 && self.slots.len() * 4 < self.slots.capacity() {
                self.slots.shrink_to(self.slots.len() * 2);
                self.free.shrink_to(self.slots.len());
            }
        }
        next
    }
}

struct Timers {
    tables: [Mutex<Table>; SHARDS],
    /// The instant `target` counts from.
    base: Instant,
    /// When the thread looks next, in ns after `base`: the earliest deadline it knows
    /// of, lowered (`fetch_min`) by every deadline registered before it; `u64::MAX`
    /// while it is looking, so that what is registered meanwhile lowers it again.
    target: AtomicU64,
    /// Held while the thread decides how long to sleep; `wake` wakes it early.
    sleeping: Mutex<()>,
    wake: Condvar,
    /// Passes over the tables so far.
    looks: AtomicU64,
}

fn timers() -> &'static Timers {
    static TIMERS: OnceLock<Timers> = OnceLock::new();
    TIMERS.get_or_init(|| {
        // Started by the first deadline; it waits until the tables exist.
        std::thread::Builder::new()
            .name("tollgate-timer".into())
            .spawn(|| {
                // Every deadline of the process hangs on this thread: a panic (a waker
                // that panics) must not leave them silently unfired.
                let run = std::panic::catch_unwind(|| TIMERS.wait().run());
                if run.is_err() {
                    eprintln!("tollgate: the timer thread panicked; aborting");
                    std::process::abort();
                }
            })
            .expect("could not start the timer thread");
        Timers {
            tables: std::array::from_fn(|_| Mutex::default()),
            base: Instant::now(),
            target: AtomicU64::new(u64::MAX),
            sleeping: Mutex::new(()),
            looks: AtomicU64::new(0),
            wake: Condvar::new(),
        }
    })
}

/// The table this thread registers its deadlines in (threads take turns).
fn this_threads_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        s.get()
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can leave a table half-changed: a poisoned lock is still sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Timers {
    fn table(&self, shard: usize) -> MutexGuard<'_, Table> {
        lock(&self.tables[shard])
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Called after registering `at`: wakes the thread when it would look only later.
    fn look_again_if_before(&self, at: Instant) {
        let at = self.nanos(at);
        if at < self.target.fetch_min(at, Ordering::SeqCst) {
            let _sleeping = lock(&self.sleeping);
            self.wake.notify_one();
        }
    }

    /// The timer thread: fire what is due, sleep until the next deadline (or until one
    /// earlier than that is registered), again. Looks are at least [`MIN_LOOK_GAP`]
    /// apart, so a look's cost (a pass over the tables) is paid at most a few hundred
    /// times a second however many deadlines there are; a deadline fires at most that
    /// much after its time.
    fn run(&self) -> ! {
        let mut due = Vec::new();
        loop {
            // A deadline registered from here on lowers `target` from `u64::MAX`; one
            // registered in a table before the pass reaches that table is seen by it.
            self.target.store(u64::MAX, Ordering::SeqCst);
            let looked = Instant::now();
            self.looks.fetch_add(1, Ordering::Relaxed);
            let mut next = u64::MAX;
            for shard in 0..SHARDS {
                if let Some(at) = self.table(shard).fire(looked, &mut due) {
                    next = next.min(self.nanos(at));
                }
            }
            self.target.fetch_min(next, Ordering::SeqCst);
            // Woken after `target` is set: a woken task's next deadline needs no notify.
            for waker in due.drain(..) {
                waker.wake();
            }
            let earliest = self.nanos(looked + MIN_LOOK_GAP);
            let mut sleeping = lock(&self.sleeping);
            loop {
                let target = self.target.load(Ordering::SeqCst);
                let now = self.nanos(Instant::now());
                let until = target.max(earliest);
                if until <= now {
                    break;
                }
                sleeping = if target == u64::MAX {
                    self.wake
                        .wait(sleeping)
                        .unwrap_or_else(PoisonError::into_inner)
                } else {
                    let wait = Duration::from_nanos(until - now);
                    self.wake
                        .wait_timeout(sleeping, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: deadlines fire, never before their time, in any order of registration,
    // from many tasks on several threads at once; and a dropped deadline leaves nothing
    // behind in the tables.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlines_fire_never_early() {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..400u64 {
            set.spawn(async move {
                // 1..=80 ms, not in registration order.
                let after = Duration::from_millis(1 + (i * 37) % 80);
                let start = Instant::now();
                let sleep = Sleep::after(after);
                let at = sleep.deadline();
                sleep.await;
                assert!(Instant::now() >= at, "fired before its deadline");
                start.elapsed()
            });
        }
        let all = tokio::time::timeout(Duration::from_secs(60), async {
            let mut n = 0;
            while let Some(r) = set.join_next().await {
                r.unwrap();
                n += 1;
            }
            n
        })
        .await
        .expect("a deadline never fired");
        assert_eq!(all, 400);
    }

    // Behaviour: however many deadlines come and go (here 8 tasks making and dropping
    // them as fast as they can, each polled once so that it is registered), the timer
    // thread looks at most once per MIN_LOOK_GAP: it never spins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_deadlines_does_not_make_the_thread_spin() {
        let start = Instant::now();
        let before = timers().looks.load(Ordering::Relaxed);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..8u64 {
            set.spawn(async move {
                let mut n = 0u64;
                let until = Instant::now() + Duration::from_millis(300);
                while Instant::now() < until && n < 2_000_000 {
                    // Near and far, so that many would be earlier than the next look.
                    let mut s = Sleep::after(Duration::from_micros(100 + (n * 7 + i) % 5000));
                    let _ = Pin::new(&mut s).poll(&mut Context::from_waker(Waker::noop()));
                    n += 1;
                    if n.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                n
            });
        }
        let mut made = 0;
        while let Some(n) = set.join_next().await {
            made += n.unwrap();
        }
        let looks = timers().looks.load(Ordering::Relaxed) - before;
        let bound = start.elapsed().as_nanos() / MIN_LOOK_GAP.as_nanos() + 2;
        assert!(made > 1000, "only {made} deadlines made");
        assert!(
            u128::from(looks) <= bound,
            "{looks} looks for {made} deadlines in {:?} (at most {bound})",
            start.elapsed()
        );
    }

    // Behaviour: a deadline already past fires at once; one far away stays pending
    // and, dropped, frees its slot; the latest waker is the one woken.
    #[tokio::test]
    async fn past_far_and_rewoken_deadlines() {
        let past = Sleep::until(Instant::now() - Duration::from_millis(5));
        tokio::time::timeout(Duration::from_secs(30), past)
            .await
            .expect("a past deadline never fired");
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);

        let mut far = Sleep::after(Duration::from_secs(3600));
        assert!(Pin::new(&mut far).poll(&mut cx).is_pending());
        let (shard, idx) = far.slot.expect("registered");
        assert!(matches!(
            timers().table(shard as usize).slots[idx as usize],
            Slot::Waiting { .. }
        ));
        drop(far);
        assert!(matches!(
            timers().table(shard as usize).slots[idx as usize],
            Slot::Free
        ));

        // Polled first with a waker that does nothing, then awaited: the task is woken.
        let mut soon = Sleep::after(Duration::from_millis(20));
        assert!(Pin::new(&mut soon).poll(&mut cx).is_pending());
        tokio::time::timeout(Duration::from_secs(30), soon)
            .await
            .expect("the second waker was not woken");
    }
}
