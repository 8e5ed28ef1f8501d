//! The decision trace: what each step of the request path decided, in order, recorded
//! only when someone asks for it (`tollgate explain` puts a [`Trace`] in the request's
//! extensions; without one, recording costs one extension lookup). Lines never contain
//! a token or a secret.

use std::sync::{Arc, Mutex};

use http::Request;

/// Collects the decision lines of one request.
#[derive(Debug, Clone, Default)]
pub struct Trace(Arc<Mutex<Vec<String>>>);

impl Trace {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Records a decision line for `req`, when its decisions are being traced.
pub fn note<B>(req: &Request<B>, line: impl FnOnce() -> String) {
    if let Some(t) = req.extensions().get::<Trace>() {
        t.push(line());
    }
}

/// The trace of `req`, if its decisions are being traced (for slow paths that record
/// after the request has moved on).
pub fn of<B>(req: &Request<B>) -> Option<Trace> {
    req.extensions().get::<Trace>().cloned()
}
