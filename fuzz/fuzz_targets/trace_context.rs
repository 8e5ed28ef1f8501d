//! W3C Trace Context (`trace_context`, the top of the request path): the client's
//! `traceparent`, as `otel::layer` reads it, and the value tollgate writes upstream.
//!
//! Input: lines; each line is one `traceparent` header value (the first line also as
//! the only header, all lines together as repeated headers). Properties:
//! - no panic; `parse` equals a reference parser written from the specification
//!   (version 00: exactly 55 bytes; other versions: at least 55 and a `-` at 55 when
//!   longer; `ff` invalid; lowercase hex only; neither id all zeros);
//! - an accepted version-00 value is printed back byte for byte by `format`, and what
//!   `format` prints for any ids parses back to the same ids and flags;
//! - `incoming` takes exactly one header: two or more are as good as none;
//! - `trace_id_text` of a written header is the trace id in lowercase hex;
//! - `sample` is monotonic in the ratio (a trace sampled at r is sampled at every r' > r)
//!   and honours 0 and 1.
#![no_main]

use http::header::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tollgate::trace_context::{self, TraceParent, TRACEPARENT};

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_field(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks(2)
        .map(|p| Some(hexval(p[0])? * 16 + hexval(p[1])?))
        .collect()
}

/// The specification's grammar, field by field.
fn reference(v: &[u8]) -> Option<TraceParent> {
    let fields: Vec<&[u8]> = v.splitn(5, |b| *b == b'-').collect();
    if fields.len() < 4 {
        return None;
    }
    let version = hex_field(fields[0]).filter(|x| x.len() == 1)?[0];
    if version == 0xff {
        return None;
    }
    let trace = hex_field(fields[1]).filter(|x| x.len() == 16)?;
    let parent = hex_field(fields[2]).filter(|x| x.len() == 8)?;
    // The flags field is the first two bytes after the third dash; version 00 allows
    // nothing after it, later versions allow more fields after a dash.
    let rest: Vec<u8> = v[53..].to_vec();
    if rest.len() < 2 {
        return None;
    }
    let flags = hex_field(&rest[..2])?[0];
    if version == 0 && rest.len() != 2 {
        return None;
    }
    if rest.len() > 2 && rest[2] != b'-' {
        return None;
    }
    if trace.iter().all(|b| *b == 0) || parent.iter().all(|b| *b == 0) {
        return None;
    }
    Some(TraceParent {
        version,
        trace_id: trace.try_into().ok()?,
        parent_id: parent.try_into().ok()?,
        flags,
    })
}

fn check_one(v: &[u8]) {
    let got = trace_context::parse(v);
    // The fields must sit at their fixed offsets for the reference to slice at 53.
    let want = if v.len() >= 55 && v[2] == b'-' && v[35] == b'-' && v[52] == b'-' {
        reference(v)
    } else {
        None
    };
    assert_eq!(got, want, "parse disagrees with the reference on {v:?}");
    if let Some(tp) = got {
        assert!(v.len() >= 55);
        let printed = trace_context::format(&tp.trace_id, &tp.parent_id, tp.flags);
        if tp.version == 0 {
            assert_eq!(&printed[..], v, "a version-00 value prints back as it came");
        } else {
            assert_eq!(&printed[2..], &v[2..55], "the four fields print back");
        }
        assert_eq!(tp.sampled(), tp.flags & 1 == 1);
    }
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').take(16).collect();
    for l in &lines {
        check_one(l);
    }

    // Exactly one header counts; repeated headers are as good as none.
    let values: Vec<HeaderValue> = lines
        .iter()
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect();
    if let Some(first) = values.first() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, first.clone());
        assert_eq!(
            trace_context::incoming(&h),
            trace_context::parse(first.as_bytes())
        );
        for v in &values[1..] {
            h.append(&TRACEPARENT, v.clone());
        }
        if values.len() > 1 {
            assert_eq!(
                trace_context::incoming(&h),
                None,
                "two headers count as none"
            );
        }
    }

    // Any ids print to a value that parses back to them.
    if data.len() >= 25 {
        let trace: [u8; 16] = data[..16].try_into().unwrap();
        let span: [u8; 8] = data[16..24].try_into().unwrap();
        let flags = data[24];
        let hv = trace_context::header(&trace, &span, flags);
        let back = trace_context::parse(hv.as_bytes());
        if trace == [0; 16] || span == [0; 8] {
            assert_eq!(back, None, "an all-zero id is invalid");
        } else {
            assert_eq!(
                back,
                Some(TraceParent {
                    version: 0,
                    trace_id: trace,
                    parent_id: span,
                    flags
                })
            );
        }
        let text = trace_context::trace_id_text(&hv).expect("a written header has a trace id");
        let hex: String = trace.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&text[..], hex.as_bytes());

        // Sampling: monotonic in the ratio, 0 and 1 are absolute.
        assert!(trace_context::sample(&trace, 1.0));
        assert!(!trace_context::sample(&trace, 0.0));
        assert!(!trace_context::sample(&trace, f64::NAN));
        let r1 = f64::from(data[24]) / 255.0;
        let r2 = f64::from(data.get(25).copied().unwrap_or(0)) / 255.0;
        let (lo, hi) = if r1 <= r2 { (r1, r2) } else { (r2, r1) };
        if trace_context::sample(&trace, lo) {
            assert!(
                trace_context::sample(&trace, hi),
                "sampled at {lo} but not at {hi}"
            );
        }
    }
});
