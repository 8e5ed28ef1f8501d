//! Not on the request path itself: the memory of its refusals. On the way out
//! (`observe`), every request tollgate refused or failed (any answer that is one of
//! SPEC's JSON errors: 401, 403, 404, 429, 502, 504, ...) leaves a [`DecisionRecord`]
//! here — request id, time, route, method, path, client, status, reason and the
//! explain-style steps — in a bounded ring, so that an admin can paste the
//! `X-Request-Id` of a user's 403 into `GET /admin/decisions/{id}`, `tollgate explain
//! --request-id`, or the admin page, and see which gate said no.
//!
//! What is kept, and why: forwarded (allowed) requests are not recorded at all. The
//! step-by-step trace of a request is only collected when someone asks for it (a
//! `decision::Trace`): collecting it for every request would add a string format per
//! gate to every request (several per cent of the ~16 µs of CPU a proxied request
//! costs, bench/RESULTS.md). A refusal's steps are rebuilt on the refusal path only,
//! from the facts the layers recorded on the response (route, auth rule, identity,
//! permission, the refusing error), so an allowed request pays nothing and a refusal
//! pays a few small strings. The complete live trace for a token is what the admin
//! page's explain form and `tollgate explain` produce.
//!
//! Never a token, secret or cookie value: the records are built from the route, the
//! verified identity (issuer, client id, subject, scopes) and the error text that the
//! client already received; request headers are never read. Bounded: at most
//! [`CAPACITY`] records, each at most [`MAX_RECORD_BYTES`] of text (longer fields and
//! step lists are cut), so the ring holds at most a few MiB whatever the traffic.
//! Recording takes one short mutex and a non-blocking broadcast send; a slow live
//! subscriber (the admin page's event stream) is dropped, never waited for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

/// Records kept (the oldest goes first).
pub const CAPACITY: usize = 1000;
/// Text budget of one record (path, description and steps together).
pub const MAX_RECORD_BYTES: usize = 4096;
/// One field or step line at most.
const MAX_FIELD_BYTES: usize = 512;
/// Live subscribers at once (admin page tabs); more get 503.
pub const MAX_SUBSCRIBERS: usize = 32;
/// Records a live subscriber may fall behind by before it is dropped.
const LIVE_BACKLOG: usize = 256;

/// One refused or failed request.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// Increasing per process: the SSE event id (`Last-Event-ID` on reconnect).
    pub seq: u64,
    pub request_id: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub route: String,
    pub method: String,
    pub path: String,
    /// The verified client id, `-` when none.
    pub client: String,
    /// The peer address, `-` when unknown.
    pub remote: String,
    pub status: u16,
    /// SPEC's error code (`invalid_token`, `insufficient_scope`, `bad_gateway`, ...).
    pub error: String,
    /// The denial reason code (`token_expired`, `scope_missing`, ...), when a gate
    /// refused; `None` for other failures (no route, upstream errors).
    pub reason: Option<String>,
    /// The step that refused: `token`, `scopes`, `client`, `permission`, `rate limit`,
    /// `session`, `route`, `limits`, `upstream`, ...
    pub gate: String,
    /// The error description the client received.
    pub description: String,
    /// The explain-style steps, the last one the result.
    pub steps: Vec<String>,
}

/// What the way out knows about a refused request (see [`Decisions::record`]).
pub struct Refusal<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub client: &'a str,
    pub remote: &'a str,
    pub status: u16,
    pub error: &'a str,
    pub reason: Option<&'a str>,
    pub gate: &'a str,
    pub description: &'a str,
    pub steps: Vec<String>,
}

/// The ring of recent refusals and its live subscribers.
pub struct Decisions {
    ring: Mutex<VecDeque<Arc<DecisionRecord>>>,
    capacity: usize,
    next_seq: AtomicU64,
    live: tokio::sync::broadcast::Sender<Arc<DecisionRecord>>,
    subscribers: Arc<AtomicU64>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Decisions {
    fn default() -> Self {
        Decisions::with_capacity(CAPACITY)
    }
}

/// `s` cut to at most `max` bytes, on a character boundary, marked with `…`.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A live subscription: dropped (its stream ends) when it falls behind or when the
/// gateway shuts down.
pub struct Subscription {
    pub records: tokio::sync::broadcast::Receiver<Arc<DecisionRecord>>,
    pub closing: tokio::sync::watch::Receiver<bool>,
    count: Arc<AtomicU64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Decisions {
    pub fn with_capacity(capacity: usize) -> Decisions {
        Decisions {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(CAPACITY))),
            capacity: capacity.max(1),
            next_seq: AtomicU64::new(1),
            live: tokio::sync::broadcast::channel(LIVE_BACKLOG).0,
            subscribers: Arc::default(),
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps a refusal (the oldest is forgotten beyond the capacity) and tells the live
    /// subscribers. Never waits for a subscriber.
    pub fn record(&self, r: Refusal<'_>) -> Arc<DecisionRecord> {
        let now = SystemTime::now();
        let mut budget = MAX_RECORD_BYTES;
        let field = |s: &str, budget: &mut usize| {
            let v = cut(s, MAX_FIELD_BYTES.min((*budget).max(16)));
            *budget = budget.saturating_sub(v.len());
            v
        };
        let request_id = field(r.request_id, &mut budget);
        let route = field(r.route, &mut budget);
        let method = field(r.method, &mut budget);
        let path = field(r.path, &mut budget);
        let client = field(r.client, &mut budget);
        let remote = field(r.remote, &mut budget);
        let error = field(r.error, &mut budget);
        let reason = r.reason.map(|x| field(x, &mut budget));
        let gate = field(r.gate, &mut budget);
        let description = field(r.description, &mut budget);
        let mut steps = Vec::with_capacity(r.steps.len());
        let n = r.steps.len();
        let mut left_out = 0;
        for (i, s) in r.steps.into_iter().enumerate() {
            // The last step is the result: always kept.
            if budget < 64 + MAX_FIELD_BYTES && i + 1 < n {
                left_out += 1;
                continue;
            }
            steps.push(field(&s, &mut budget));
        }
        if left_out > 0 {
            let last = steps.pop();
            steps.push(format!("({left_out} step(s) left out: record too long)"));
            steps.extend(last);
        }
        let rec = Arc::new(DecisionRecord {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            request_id,
            time: crate::encoding::rfc3339(now),
            time_ms: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            route,
            method,
            path,
            client,
            remote,
            status: r.status,
            error,
            reason,
            gate,
            description,
            steps,
        });
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            while ring.len() >= self.capacity {
                ring.pop_front();
            }
            ring.push_back(rec.clone());
        }
        // No subscriber: an error, and nothing to do.
        let _ = self.live.send(rec.clone());
        rec
    }

    /// The most recent record for `request_id` (a client may reuse an id).
    pub fn get(&self, request_id: &str) -> Option<Arc<DecisionRecord>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .rev()
            .find(|r| r.request_id == request_id)
            .cloned()
    }

    /// Up to `limit` records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<DecisionRecord>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().take(limit).cloned().collect()
    }

    /// Records with `seq > after`, oldest first, at most `limit` (the newest ones).
    pub fn since(&self, after: u64, limit: usize) -> Vec<Arc<DecisionRecord>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = ring
            .iter()
            .rev()
            .take_while(|r| r.seq > after)
            .take(limit)
            .cloned()
            .collect();
        v.reverse();
        v
    }

    pub fn len(&self) -> usize {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A live subscription, unless [`MAX_SUBSCRIBERS`] are open already. Subscribe
    /// before reading the backlog with [`Decisions::since`], and skip what the backlog
    /// covered (by `seq`), so that nothing falls between the two.
    pub fn subscribe(&self) -> Option<Subscription> {
        let n = self.subscribers.fetch_add(1, Ordering::AcqRel);
        let sub = Subscription {
            records: self.live.subscribe(),
            closing: self.closing.subscribe(),
            count: self.subscribers.clone(),
        };
        if n as usize >= MAX_SUBSCRIBERS {
            return None; // `sub` is dropped: the count goes back down
        }
        Some(sub)
    }

    /// Ends every live subscription (on shutdown, so that open admin pages do not hold
    /// the admin listener's graceful shutdown up).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(id: &str) -> Refusal<'_> {
        Refusal {
            request_id: id,
            route: "api",
            method: "GET",
            path: "/api/x",
            client: "-",
            remote: "127.0.0.1",
            status: 401,
            error: "invalid_token",
            reason: Some("token_missing"),
            gate: "token",
            description: "no token",
            steps: vec!["route: api".into(), "result: DENY".into()],
        }
    }

    // Behaviour: the ring keeps the newest `capacity` records; lookups find the newest
    // record of an id; `since` returns what came after a sequence number, oldest first.
    #[test]
    fn ring_is_bounded() {
        let d = Decisions::with_capacity(3);
        for i in 0..5 {
            d.record(refusal(&format!("id-{i}")));
        }
        assert_eq!(d.len(), 3);
        assert!(d.get("id-0").is_none());
        assert!(d.get("id-1").is_none());
        assert_eq!(d.get("id-4").unwrap().seq, 5);
        let recent: Vec<_> = d.recent(10).iter().map(|r| r.request_id.clone()).collect();
        assert_eq!(recent, ["id-4", "id-3", "id-2"]);
        let since: Vec<_> = d.since(3, 10).iter().map(|r| r.seq).collect();
        assert_eq!(since, [4, 5]);
    }

    // Behaviour: a record stays within its text budget however long its input, and
    // keeps its result line.
    #[test]
    fn records_are_bounded() {
        let d = Decisions::default();
        let long = "x".repeat(10_000);
        let mut r = refusal(&long);
        r.path = &long;
        r.steps = (0..100)
            .map(|i| format!("step {i} {}", "y".repeat(300)))
            .collect();
        r.steps.push("result: DENY 401".into());
        let rec = d.record(r);
        let size: usize = rec.request_id.len()
            + rec.path.len()
            + rec.description.len()
            + rec.steps.iter().map(String::len).sum::<usize>();
        assert!(size <= MAX_RECORD_BYTES + 200, "{size}");
        assert_eq!(rec.steps.last().unwrap(), "result: DENY 401");
        assert!(rec.steps.iter().any(|s| s.contains("left out")));
    }

    // Behaviour: a subscriber that falls behind is told so (and dropped by the stream),
    // recording never waits for it; the subscriber count is bounded.
    #[test]
    fn slow_subscribers_never_block() {
        let d = Decisions::default();
        let mut sub = d.subscribe().unwrap();
        for i in 0..(LIVE_BACKLOG + 10) {
            d.record(refusal(&format!("{i}")));
        }
        assert!(matches!(
            sub.records.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
        ));
        let subs: Vec<_> = (0..MAX_SUBSCRIBERS + 5).map(|_| d.subscribe()).collect();
        assert_eq!(
            subs.iter().filter(|s| s.is_some()).count(),
            MAX_SUBSCRIBERS - 1
        );
        drop(subs);
        drop(sub);
        assert!(d.subscribe().is_some());
    }
}
