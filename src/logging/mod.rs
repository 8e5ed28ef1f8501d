//! Logging setup: `RUST_LOG` filtering (default `info`), text or JSON lines on stderr.
//!
//! Lines are handed to a writer thread ([`writer`]), so the request path never waits on
//! the stderr write itself; the queue is lossless (it applies back-pressure rather than
//! dropping access or denial lines when it fills up). It writes lines in batches:
//! whatever gathered in a couple of milliseconds goes out with one `write(2)`.

pub mod writer;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tracing_subscriber::EnvFilter;

use writer::Lines;
pub use writer::LogGuard;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the subscriber. Keep the guard until the process ends: dropping it flushes.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = writer::spawn(std::io::stderr());
    let _ = ACCESS_SINK.set((writer.clone(), format));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // A closed stderr must never take the gateway down.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
    guard
}

/// Where access lines go when `init` ran (the `tollgate` binary): the same
/// non-blocking writer the subscriber uses, and the format.
static ACCESS_SINK: OnceLock<(Lines, LogFormat)> = OnceLock::new();

/// One access-log record (SPEC: request id, route, method, path, status, duration).
pub struct Access<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub upstream: &'a str,
    pub client: &'a str,
    /// The client's IP address, as text.
    pub remote: &'a str,
    /// The W3C trace id (32 hex digits) the request was handled under, `-` if none.
    pub trace_id: &'a str,
}

/// Writes the access line for one request (target `tollgate::access`, level info,
/// filtered by `RUST_LOG` like every other line).
///
/// Hand-formatted: through `tracing-subscriber`'s formatter this line cost about a
/// quarter of the CPU instructions of a whole proxied request (bench/callgrind.sh). The
/// line has the same shape as the subscriber's text or JSON lines. Without `init`
/// (tollgate used as a library, tests) it goes through `tracing` as usual.
pub fn access(a: &Access<'_>) {
    if !tracing::enabled!(target: "tollgate::access", tracing::Level::INFO) {
        return;
    }
    let Some((writer, format)) = ACCESS_SINK.get() else {
        tracing::info!(
            target: "tollgate::access",
            request_id = a.request_id,
            route = a.route,
            method = a.method,
            path = a.path,
            status = a.status,
            duration_ms = a.duration.as_secs_f64() * 1000.0,
            upstream = a.upstream,
            client = a.client,
            remote = %a.remote,
            trace_id = a.trace_id,
            "access"
        );
        return;
    };
    // The line is formatted into a buffer the thread keeps (the writer copies it into
    // its queue anyway): no allocation per request, and no regrowth for long paths
    // after the first.
    thread_local! {
        static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    LINE.with(|line| {
        let mut fresh = String::new();
        let mut kept = line.try_borrow_mut();
        let line = match kept.as_deref_mut() {
            Ok(l) => l,
            Err(_) => &mut fresh,
        };
        line.clear();
        match format {
            LogFormat::Text => access_text(line, a, SystemTime::now()),
            LogFormat::Json => access_json(line, a, SystemTime::now()),
        }
        writer.write_line(line.as_bytes());
        // A line far longer than usual (a huge path) does not pin its memory.
        if line.capacity() > 16 * 1024 {
            *line = String::new();
        }
    });
}

fn access_text(o: &mut String, a: &Access<'_>, now: SystemTime) {
    timestamp(o, now);
    o.push_str("  INFO tollgate::access: access request_id=");
    quoted(o, a.request_id, false);
    o.push_str(" route=");
    quoted(o, a.route, false);
    o.push_str(" method=");
    o.push_str(a.method);
    o.push_str(" path=");
    o.push_str(a.path);
    o.push_str(" status=");
    push_u64(o, u64::from(a.status));
    o.push_str(" duration_ms=");
    millis(o, a.duration);
    o.push_str(" upstream=");
    quoted(o, a.upstream, false);
    o.push_str(" client=");
    quoted(o, a.client, false);
    o.push_str(" remote=");
    o.push_str(a.remote);
    o.push_str(" trace_id=");
    quoted(o, a.trace_id, false);
    o.push('\n');
}

fn access_json(o: &mut String, a: &Access<'_>, now: SystemTime) {
    o.push_str("{\"timestamp\":\"");
    timestamp(o, now);
    o.push_str("\",\"level\":\"INFO\",\"message\":\"access\",\"request_id\":");
    quoted(o, a.request_id, true);
    o.push_str(",\"route\":");
    quoted(o, a.route, true);
    o.push_str(",\"method\":");
    quoted(o, a.method, true);
    o.push_str(",\"path\":");
    quoted(o, a.path, true);
    o.push_str(",\"status\":");
    push_u64(o, u64::from(a.status));
    o.push_str(",\"duration_ms\":");
    millis(o, a.duration);
    o.push_str(",\"upstream\":");
    quoted(o, a.upstream, true);
    o.push_str(",\"client\":");
    quoted(o, a.client, true);
    o.push_str(",\"remote\":\"");
    o.push_str(a.remote);
    o.push_str("\",\"trace_id\":");
    quoted(o, a.trace_id, true);
    o.push_str(",\"target\":\"tollgate::access\"}\n");
}

/// A double-quoted string with `"`, `\` and control characters escaped (JSON escapes
/// for JSON lines), so that no value can break a line or forge a field.
fn quoted(o: &mut String, s: &str, json: bool) {
    o.push('"');
    // Fast path: printable ASCII without `"` or `\` is copied as it is (the request id,
    // route, upstream and client of almost every line); char-by-char costs ~500
    // instructions per value (callgrind, bench/ANALYSIS.md).
    if is_plain(s) {
        o.push_str(s);
        o.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if c.is_control() => {
                let _ = if json {
                    write!(o, "\\u{:04x}", c as u32)
                } else {
                    write!(o, "\\u{{{:x}}}", c as u32)
                };
            }
            c => o.push(c),
        }
    }
    o.push('"');
}

/// Whether `s` is printable ASCII without `"` or `\` (nothing to escape). A fold
/// without an early exit, so that it compiles to a vector loop rather than a branch per
/// byte: the five quoted values of an access line cost ~500 instructions checked byte
/// by byte (bench/ANALYSIS.md "Session 14").
fn is_plain(s: &str) -> bool {
    s.bytes().fold(true, |ok, b| {
        ok & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    })
}

fn push_u64(o: &mut String, n: u64) {
    o.push_str(itoa::Buffer::new().format(n));
}

/// `n` in exactly `N` digits, zero-padded (`n` < 10^N).
fn push_padded<const N: usize>(o: &mut String, mut n: u32) {
    let mut buf = [b'0'; N];
    for d in buf.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    o.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// Milliseconds with three decimals (microsecond resolution).
fn millis(o: &mut String, d: Duration) {
    let us = d.as_micros() as u64;
    push_u64(o, us / 1000);
    o.push('.');
    push_padded::<3>(o, (us % 1000) as u32);
}

/// RFC 3339 UTC with microseconds, as the subscriber writes it.
fn timestamp(o: &mut String, now: SystemTime) {
    let d = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    // The date and time to the second is formatted once per second per thread.
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let full = crate::encoding::rfc3339(now);
            c.1 = full.trim_end_matches('Z').to_owned();
            c.0 = secs;
        }
        o.push_str(&c.1);
    });
    o.push('.');
    push_padded::<6>(o, d.subsec_micros());
    o.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Access<'static> {
        Access {
            request_id: "abc-1",
            route: "api",
            method: "GET",
            path: "/v2/data",
            status: 200,
            duration: Duration::from_micros(1_234_567),
            upstream: "bi",
            client: "evil\"\nclient",
            remote: "127.0.0.1",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        }
    }

    // Behaviour: the text access line has the subscriber's shape, and a client id with a
    // quote and a newline cannot break the line or forge a field.
    #[test]
    fn text_line() {
        let mut o = String::new();
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_230_973_000_042);
        access_text(&mut o, &record(), t);
        assert_eq!(
            o,
            "2026-11-21T03:16:13.000042Z  INFO tollgate::access: access request_id=\"abc-1\" \
             route=\"api\" method=GET path=/v2/data status=200 duration_ms=1234.567 \
             upstream=\"bi\" client=\"evil\\\"\\nclient\" remote=127.0.0.1 \
             trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"\n"
        );
    }

    // Behaviour: the fast check agrees with the escaping rule byte for byte, and short
    // numbers are padded to their width.
    #[test]
    fn plain_values_and_padding() {
        for b in 0u8..=127 {
            let s = format!("abcdefghijklmnopqrstuvwxyz0123456789{}", b as char);
            let plain = (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
            assert_eq!(is_plain(&s), plain, "byte {b}");
        }
        assert!(is_plain(""));
        assert!(!is_plain("caf\u{e9}"));
        let mut o = String::new();
        millis(&mut o, Duration::from_micros(7));
        o.push(' ');
        millis(&mut o, Duration::from_micros(12_340));
        o.push(' ');
        push_padded::<6>(&mut o, 0);
        o.push(' ');
        push_u64(&mut o, u64::MAX);
        assert_eq!(o, "0.007 12.340 000000 18446744073709551615");
    }

    // Behaviour: the JSON access line is one valid JSON object with typed fields.
    #[test]
    fn json_line() {
        let mut o = String::new();
        let mut r = record();
        r.duration = Duration::from_micros(5);
        r.client = "a\u{1}b";
        access_json(&mut o, &r, SystemTime::now());
        assert!(o.ends_with('\n') && o.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&o).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "tollgate::access");
        assert_eq!(v["message"], "access");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 0.005);
        assert_eq!(v["client"], "a\u{1}b");
        assert_eq!(v["remote"], "127.0.0.1");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
