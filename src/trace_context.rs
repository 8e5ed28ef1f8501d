//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): parsing the client's
//! `traceparent`, making ids, and writing the `traceparent` tollgate sends upstream.
//! Used at the top of the request path by `otel::layer` (before the timer and the access
//! log, which reads the trace id back from the header written here).
//!
//! Parsing is strict for version `00` (exactly 55 characters, lowercase hex, neither id
//! all zeros) and lenient for later versions as the specification asks (the first four
//! fields are read, anything after a `-` at position 55 is ignored); version `ff` is
//! invalid. Everything here works on stack arrays: the only allocation is the header
//! value written.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// In a request's extensions when its trace can be looked up somewhere — the client
/// sent a `traceparent` (its own tracing system has the trace) or tollgate exports
/// spans (`tracing:`) — so that error bodies name the trace id (`trace_id`). Without
/// either, nobody records the trace and error bodies keep SPEC's three fields.
#[derive(Debug, Clone, Copy)]
pub struct TraceRecorded;
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` bit of `trace-flags`.
pub const SAMPLED: u8 = 0x01;

/// A valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// One lowercase hex digit; uppercase is invalid in `traceparent`.
fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_into(src: &[u8], dst: &mut [u8]) -> Option<()> {
    if src.len() != dst.len() * 2 {
        return None;
    }
    for (d, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(())
}

/// Parses one `traceparent` value; `None` when it is invalid.
pub fn parse(value: &[u8]) -> Option<TraceParent> {
    // version "-" trace-id "-" parent-id "-" trace-flags: 2+1+32+1+16+1+2 = 55.
    if value.len() < 55 {
        return None;
    }
    let mut version = [0u8; 1];
    hex_into(&value[0..2], &mut version)?;
    let version = version[0];
    if version == 0xff {
        return None;
    }
    if version == 0 {
        if value.len() != 55 {
            return None;
        }
    } else if value.len() > 55 && value[55] != b'-' {
        // A later version may append fields, each after a dash.
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    hex_into(&value[3..35], &mut trace_id)?;
    let mut parent_id = [0u8; 8];
    hex_into(&value[36..52], &mut parent_id)?;
    let mut flags = [0u8; 1];
    hex_into(&value[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        version,
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

/// The request's `traceparent`, if there is exactly one and it is valid (two headers
/// are as good as none: the specification lets a receiver treat them as invalid).
pub fn incoming(headers: &HeaderMap) -> Option<TraceParent> {
    let mut all = headers.get_all(&TRACEPARENT).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    parse(first.as_bytes())
}

/// A new random trace id (never all zeros).
pub fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    let mut rng = rand::thread_rng();
    while id == [0; 16] {
        rng.fill_bytes(&mut id);
    }
    id
}

/// A new random span id (never all zeros).
pub fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    let mut rng = rand::thread_rng();
    while id == [0; 8] {
        rng.fill_bytes(&mut id);
    }
    id
}

/// Whether a new trace is sampled at `ratio`: decided from the trace id's last 8 bytes
/// like OpenTelemetry's `TraceIdRatioBased` sampler, so every hop that samples by the
/// same ratio decides the same for the same trace.
pub fn sample(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 || ratio.is_nan() {
        return false;
    }
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(tail) >> 1;
    x < (ratio * (1u64 << 63) as f64) as u64
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(dst: &mut [u8], src: &[u8]) {
    for (pair, b) in dst.chunks_exact_mut(2).zip(src) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// `00-<trace-id>-<span-id>-<flags>` as text.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    push_hex(&mut out[3..35], trace_id);
    push_hex(&mut out[36..52], span_id);
    push_hex(&mut out[53..55], &[flags]);
    out
}

/// [`format`] as a header value.
pub fn header(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    HeaderValue::from_bytes(&format(trace_id, span_id, flags)).expect("hex and dashes")
}

/// The trace id (32 hex digits) of a `traceparent` tollgate wrote, for the access log.
pub fn trace_id_text(value: &HeaderValue) -> Option<[u8; 32]> {
    let b = value.as_bytes();
    let mut out = [0u8; 32];
    out.copy_from_slice(b.get(3..35)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // Behaviour: the specification's example parses to its ids and flags.
    #[test]
    fn parses_the_specification_example() {
        let tp = parse(OK.as_bytes()).unwrap();
        assert_eq!(tp.version, 0);
        assert_eq!(
            crate::encoding::hex(&tp.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(crate::encoding::hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(
            &format(&tp.trace_id, &tp.parent_id, tp.flags)[..],
            OK.as_bytes()
        );
    }

    // Behaviour: every kind of malformed value is refused: uppercase, wrong lengths,
    // all-zero ids, version ff, missing dashes, non-hex, extra data on version 00.
    #[test]
    fn refuses_invalid_values() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?} must be refused");
        }
    }

    // Behaviour: a later version is read leniently: its first four fields count, fields
    // it appends after a dash are ignored.
    #[test]
    fn reads_future_versions_leniently() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let tp = parse(v.as_bytes()).unwrap();
        assert_eq!(tp.version, 0xcc);
        assert!(tp.sampled());
        let exact = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse(exact.as_bytes()).unwrap().sampled());
    }

    // Behaviour: two traceparent headers count as none.
    #[test]
    fn two_headers_are_invalid() {
        let mut h = HeaderMap::new();
        h.append(&TRACEPARENT, HeaderValue::from_static(OK));
        assert!(incoming(&h).is_some());
        h.append(&TRACEPARENT, HeaderValue::from_static(OK));
        assert!(incoming(&h).is_none());
    }

    // Behaviour: new ids are never zero and differ; sampling honours the edges and is
    // roughly the ratio over many ids.
    #[test]
    fn ids_and_sampling() {
        assert_ne!(new_trace_id(), new_trace_id());
        assert_ne!(new_span_id(), [0; 8]);
        let ids: Vec<[u8; 16]> = (0..4000).map(|_| new_trace_id()).collect();
        assert!(ids.iter().all(|i| sample(i, 1.0)));
        assert!(ids.iter().all(|i| !sample(i, 0.0)));
        let n = ids.iter().filter(|i| sample(i, 0.25)).count();
        assert!((700..1300).contains(&n), "{n} of 4000 sampled at 0.25");
    }
}
