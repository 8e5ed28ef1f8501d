//! What every layer of the request path shares: the [`Outcome`] a layer returns and the
//! response futures most layers use, so that the stack composed in `stack.rs` is made of
//! concrete types. A layer that can decide without waiting (a cached token, a route
//! lookup) stays on the inline path; only a layer that must wait first (a key fetch, a
//! body read, an upstream token fetch) boxes its future, and only on that request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::Body;
use crate::error::Rejection;

/// What a layer below the rescue layer answers: a response, or a refusal carrying what
/// the layers it passed through learnt (route, identity, CORS headers).
pub type Outcome = Result<Response<Body>, Rejection>;

/// A layer's slow path: it waited for something before calling (or instead of calling)
/// the service below it.
pub type BoxOutcome = Pin<Box<dyn Future<Output = Outcome> + Send>>;

pin_project! {
    /// A layer's answer in the making.
    #[project = StepProj]
    pub enum Step<F> {
        /// The service below is answering.
        Inner { #[pin] fut: F },
        /// This layer answered (or refused) on its own. Boxed: every layer's future
        /// holds the one below it, and a response is ~130 bytes that the forwarding
        /// path (which never answers here) would otherwise carry and copy at each level.
        Done { out: Option<Box<Outcome>> },
        /// This layer had to wait first (slow path).
        Boxed { fut: BoxOutcome },
    }
}

impl<F> Step<F> {
    pub fn inner(fut: F) -> Self {
        Step::Inner { fut }
    }

    pub fn done(out: Outcome) -> Self {
        Step::Done {
            out: Some(Box::new(out)),
        }
    }

    pub fn reject(e: impl Into<Rejection>) -> Self {
        Step::done(Err(e.into()))
    }

    pub fn boxed(fut: impl Future<Output = Outcome> + Send + 'static) -> Self {
        Step::Boxed { fut: Box::pin(fut) }
    }

    /// The size of the boxed future, for the tests that keep it small.
    #[cfg(test)]
    pub fn boxed_size(&self) -> Option<usize> {
        match self {
            Step::Boxed { fut } => Some(std::mem::size_of_val(&**fut)),
            _ => None,
        }
    }
}

impl<F: Future<Output = Outcome>> Future for Step<F> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self.project() {
            StepProj::Inner { fut } => fut.poll(cx),
            StepProj::Done { out } => Poll::Ready(*out.take().expect("polled after completion")),
            StepProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// What a layer does with the outcome on its way out (adds a header, records a fact).
pub trait OnOutcome {
    fn on_outcome(self, out: Outcome) -> Outcome;
}

/// Nothing to do on the way out.
impl OnOutcome for () {
    fn on_outcome(self, out: Outcome) -> Outcome {
        out
    }
}

pin_project! {
    /// A [`Step`] followed by the layer's work on the way out.
    pub struct Then<F, P> {
        #[pin]
        step: Step<F>,
        post: Option<P>,
    }
}

impl<F, P> Then<F, P> {
    pub fn new(step: Step<F>, post: P) -> Self {
        Then {
            step,
            post: Some(post),
        }
    }
}

impl<F, P> Future for Then<F, P>
where
    F: Future<Output = Outcome>,
    P: OnOutcome,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.project();
        let out = std::task::ready!(this.step.poll(cx));
        let post = this.post.take().expect("polled after completion");
        Poll::Ready(post.on_outcome(out))
    }
}

/// Adds a fact to the outcome on the way out: to the response's extensions, or to the
/// refusal's facts (the rescue layer moves those onto the error response).
pub fn record<T: Clone + Send + Sync + 'static>(out: Outcome, fact: T) -> Outcome {
    match out {
        Ok(mut resp) => {
            resp.extensions_mut().insert(fact);
            Ok(resp)
        }
        Err(rej) => Err(rej.with(fact)),
    }
}

/// Polls a deadline after its work returned `Pending`, as `tokio::time::Timeout` does:
/// when that poll of the work used up the task's co-operative budget (`had_budget`: there
/// was budget left before it), the deadline is polled outside the budget — else work that
/// is always ready (a fast upload to an upstream that never answers) would find the
/// deadline `Pending` on every poll and keep it from ever firing. For deadlines kept
/// beside their work instead of moving the work into a `Timeout` (test:
/// `limits::tests::request_timeout_fires_under_work_that_is_always_ready`).
pub fn poll_deadline(
    deadline: Pin<&mut tokio::time::Sleep>,
    cx: &mut Context<'_>,
    had_budget: bool,
) -> Poll<()> {
    if had_budget && !tokio::task::coop::has_budget_remaining() {
        Pin::new(&mut tokio::task::coop::unconstrained(deadline)).poll(cx)
    } else {
        deadline.poll(cx)
    }
}

/// The request's end-to-end deadline (`request_timeout`), lent to the timer that waits
/// for the upstream below it, so that a forwarded request arms one timer instead of two.
///
/// A tokio timer costs ~1,000 instructions per request (made, registered in the wheel,
/// taken out again: `bench/ANALYSIS.md`, "One timer per forwarded request"). While a
/// forwarded request waits for its upstream, the upstream's timer can stand for the
/// request's: it is set to whichever deadline comes first ([`current`](crate::service::request_deadline::current)) and says
/// so ([`cover`](crate::service::request_deadline::cover)) each time it goes to sleep. The request's own timer
/// ([`crate::limits::RequestTimeout`]) is made and polled only on a poll that nothing
/// below covered (a key fetch, a body read, a connection being made): whatever the
/// request waits for, something wakes it by its deadline.
///
/// The scope lives in a thread-local for exactly the length of one poll of the work
/// below the request timer (a task is polled on one thread, and nothing else runs on
/// that thread meanwhile); only the proxy's own exchange takes part (`client::Wait`),
/// never a fetch that other requests share.
pub mod request_deadline {
    use std::cell::Cell;
    use std::time::Instant;

    thread_local! {
        static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
        static COVERED: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `poll` (one poll of the work below the request timer) with `deadline` as the
    /// request's deadline; returns its result and whether a timer below covered the
    /// deadline during it.
    pub fn scope<T>(deadline: Instant, poll: impl FnOnce() -> T) -> (T, bool) {
        /// Puts the outer scope back, also when `poll` panics.
        struct Restore(Option<Instant>, bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                DEADLINE.set(self.0);
                COVERED.set(self.1);
            }
        }
        let restore = Restore(DEADLINE.replace(Some(deadline)), COVERED.replace(false));
        let out = poll();
        let covered = COVERED.get();
        drop(restore);
        (out, covered)
    }

    /// The deadline of the request being polled, inside a [`scope`].
    pub fn current() -> Option<Instant> {
        DEADLINE.get()
    }

    /// Says that a timer at or before [`current`] was just polled and is pending (so it
    /// wakes the task by the request's deadline).
    pub fn cover() {
        COVERED.set(true);
    }
}

/// The service to move into a slow-path future: the one `poll_ready` was called on,
/// leaving a fresh clone in its place (tower's contract for services that are called
/// after an await).
pub fn take_ready<S: Clone>(slot: &mut S) -> S {
    let fresh = slot.clone();
    std::mem::replace(slot, fresh)
}
