//! The access log line (SPEC.md §9, fields in §10) and the local-peer rule of `/admin/reload`.
//!
//! Owns: turning one finished request into one JSON object on one line, appended to a buffer
//! the caller owns and writes out (stderr). It does no I/O and never allocates beyond growing
//! that buffer, so a worker can keep one buffer and log every request without an allocation
//! storm: numbers are written by hand, not through `format!`.
//!
//! The line is always valid JSON whatever the client sent: request ids, methods and paths are
//! raw bytes, so quotes and backslashes are escaped, control characters (and DEL) become
//! `\u00XX`, and each byte that is not part of valid UTF-8 becomes `\u00XX` too (its Latin-1
//! reading: lossless for an operator reading hex, and never an invalid line).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a request ended, from the operator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response was sent in full.
    Ok,
    /// The client went away before the response was complete.
    ClientAbort,
    /// The upstream failed (connect error, reset, invalid or truncated response).
    UpstreamError,
    /// A deadline expired.
    Timeout,
    /// Answered locally with an error (bad request, unknown model, auth, limits).
    Rejected,
}

impl Outcome {
    /// The value written in the `outcome` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientAbort => "client_abort",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One finished request, borrowed from the connection that served it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// When the request started.
    pub ts: SystemTime,
    pub request_id: &'a [u8],
    /// None for unix-socket clients, logged as `"unix"`.
    pub client: Option<IpAddr>,
    pub method: &'a [u8],
    /// Without the query string (stripped here too if a `?` is present: queries may carry
    /// keys or personal data).
    pub path: &'a [u8],
    pub model: Option<&'a str>,
    /// The upstream origin, e.g. `http://127.0.0.1:9001`.
    pub upstream: Option<&'a str>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub ttfb: Option<Duration>,
    pub duration: Duration,
    pub outcome: Outcome,
}

/// Adds `"key":n` to the line [`write_line`] just wrote at the end of `out` (extra fields
/// after the SPEC ones, e.g. a replica failover's `retries`).
pub fn append_field(out: &mut Vec<u8>, key: &str, n: u64) {
    append_with(out, key, |out| write_u64(n, out));
}

/// Adds `"key":"value"` (escaped), or `"key":null`, to the line [`write_line`] just wrote at
/// the end of `out`.
pub fn append_str_field(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    append_with(out, key, |out| json_opt_str(value, out));
}

/// Reopens the line at the end of `out`, writes `,"key":` and the value, and closes it
/// again; nothing when `out` does not end with a line.
fn append_with(out: &mut Vec<u8>, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
    if !out.ends_with(b"}\n") {
        return;
    }
    out.truncate(out.len() - 2);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    value(out);
    out.extend_from_slice(b"}\n");
}

/// Appends one JSON object and `\n` to `out`: keys in SPEC order `ts`, `request_id`, `client`,
/// `method`, `path`, `model`, `upstream`, `status`, `bytes_in`, `bytes_out`, `ttfb_ms`,
/// `duration_ms`, `outcome`; `ts` RFC 3339 UTC with milliseconds; durations in milliseconds
/// with up to 3 decimals; `null` for an absent model, upstream or ttfb.
pub fn write_line(entry: &Entry<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":\"");
    rfc3339_millis(entry.ts, out);
    out.extend_from_slice(b"\",\"request_id\":");
    json_bytes(entry.request_id, out);
    out.extend_from_slice(b",\"client\":\"");
    match entry.client {
        // The same form as `X-Forwarded-For`: an IPv4 client on a dual-stack listener is
        // logged as IPv4, not `::ffff:a.b.c.d`.
        Some(ip) => {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{}", ip.to_canonical());
        }
        None => out.extend_from_slice(b"unix"),
    }
    out.extend_from_slice(b"\",\"method\":");
    json_bytes(entry.method, out);
    out.extend_from_slice(b",\"path\":");
    let path = match memchr::memchr(b'?', entry.path) {
        Some(q) => &entry.path[..q],
        None => entry.path,
    };
    json_bytes(path, out);
    out.extend_from_slice(b",\"model\":");
    json_opt_str(entry.model, out);
    out.extend_from_slice(b",\"upstream\":");
    json_opt_str(entry.upstream, out);
    out.extend_from_slice(b",\"status\":");
    write_u64(u64::from(entry.status), out);
    out.extend_from_slice(b",\"bytes_in\":");
    write_u64(entry.bytes_in, out);
    out.extend_from_slice(b",\"bytes_out\":");
    write_u64(entry.bytes_out, out);
    out.extend_from_slice(b",\"ttfb_ms\":");
    match entry.ttfb {
        Some(d) => write_millis(d, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"duration_ms\":");
    write_millis(entry.duration, out);
    out.extend_from_slice(b",\"outcome\":\"");
    out.extend_from_slice(entry.outcome.as_str().as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// RFC 3339 UTC with milliseconds (`2026-11-22T05:04:03.123Z`), without chrono: the date
/// comes from Howard Hinnant's `civil_from_days`. Times before 1970 work too (floor division).
pub fn rfc3339_millis(t: SystemTime, out: &mut Vec<u8>) {
    let millis: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    };
    // SystemTime spans far less than i64 milliseconds on every platform.
    let millis = i64::try_from(millis).unwrap_or(0);
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if year < 0 {
        out.push(b'-');
    }
    write_padded(year.unsigned_abs(), 4, out);
    out.push(b'-');
    write_padded(month, 2, out);
    out.push(b'-');
    write_padded(day, 2, out);
    out.push(b'T');
    write_padded((sod / 3600) as u64, 2, out);
    out.push(b':');
    write_padded((sod / 60 % 60) as u64, 2, out);
    out.push(b':');
    write_padded((sod % 60) as u64, 2, out);
    out.push(b'.');
    write_padded(ms as u64, 3, out);
    out.push(b'Z');
}

/// True when a peer may call /admin/reload: loopback IPv4/IPv6 (incl. IPv4-mapped
/// ::ffff:127.x) or a unix-socket client (None). A dual-stack listener sees IPv4 loopback
/// clients as mapped addresses, so those must count; IPv4-compatible (`::127.0.0.1`,
/// deprecated) addresses do not.
pub fn is_local_peer(peer: Option<IpAddr>) -> bool {
    match peer {
        None => true,
        Some(IpAddr::V4(v4)) => v4.is_loopback(),
        Some(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u64, day as u64)
}

/// A duration in milliseconds with up to 3 decimals (microsecond precision), trailing zeros
/// dropped: `12`, `12.5`, `0.042`.
fn write_millis(d: Duration, out: &mut Vec<u8>) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    write_u64(micros / 1000, out);
    let mut frac = micros % 1000;
    if frac == 0 {
        return;
    }
    let mut digits = 3;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    out.push(b'.');
    write_padded(frac, digits, out);
}

fn write_u64(n: u64, out: &mut Vec<u8>) {
    write_padded(n, 1, out);
}

/// `n` in decimal, left-padded with zeros to at least `width` digits.
fn write_padded(mut n: u64, width: usize, out: &mut Vec<u8>) {
    let mut buf = [b'0'; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = at.min(buf.len().saturating_sub(width));
    out.extend_from_slice(&buf[start..]);
}

fn json_opt_str(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => json_bytes(s.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of arbitrary bytes: valid UTF-8 is kept (escaping `"`, `\` and control
/// characters); every byte of an invalid sequence becomes `\u00XX`.
fn json_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(_) => {
                escape_valid(rest, out);
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                escape_valid(valid, out);
                let bad = e.error_len().unwrap_or(after.len());
                for &b in &after[..bad] {
                    escape_byte(b, out);
                }
                rest = &after[bad..];
            }
        }
    }
    out.push(b'"');
}

/// Escapes valid UTF-8 for a JSON string, copying runs that need no escape at once.
fn escape_valid(s: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f {
            out.extend_from_slice(&s[start..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                _ => escape_byte(b, out),
            }
            start = i + 1;
        }
    }
    out.extend_from_slice(&s[start..]);
}

/// `\u00XX`.
fn escape_byte(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u00");
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0xf)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    fn ts(t: SystemTime) -> String {
        let mut out = Vec::new();
        rfc3339_millis(t, &mut out);
        String::from_utf8(out).expect("ascii")
    }

    fn entry() -> Entry<'static> {
        Entry {
            ts: at(1_795_323_843, 123),
            request_id: b"req-1",
            client: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
            method: b"POST",
            path: b"/v1/chat/completions",
            model: Some("qwen3-8b"),
            upstream: Some("http://127.0.0.1:9001"),
            status: 200,
            bytes_in: 512,
            bytes_out: 2048,
            ttfb: Some(Duration::from_micros(12_345)),
            duration: Duration::from_micros(1_500_000),
            outcome: Outcome::Ok,
        }
    }

    fn line(e: &Entry<'_>) -> Value {
        let mut out = Vec::new();
        write_line(e, &mut out);
        assert_eq!(out.last(), Some(&b'\n'), "ends with a line feed");
        assert_eq!(
            out.iter().filter(|&&b| b == b'\n').count(),
            1,
            "one line only"
        );
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn a_line_carries_every_field_in_spec_order() {
        let mut out = Vec::new();
        write_line(&entry(), &mut out);
        let text = std::str::from_utf8(&out).expect("utf8");
        assert_eq!(
            text,
            "{\"ts\":\"2026-11-22T05:04:03.123Z\",\"request_id\":\"req-1\",\"client\":\"10.1.2.3\",\
             \"method\":\"POST\",\"path\":\"/v1/chat/completions\",\"model\":\"qwen3-8b\",\
             \"upstream\":\"http://127.0.0.1:9001\",\"status\":200,\"bytes_in\":512,\
             \"bytes_out\":2048,\"ttfb_ms\":12.345,\"duration_ms\":1500,\"outcome\":\"ok\"}\n"
        );
    }

    #[test]
    fn a_line_parses_as_json_with_every_field() {
        let v = line(&entry());
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut expected = [
            "ts",
            "request_id",
            "client",
            "method",
            "path",
            "model",
            "upstream",
            "status",
            "bytes_in",
            "bytes_out",
            "ttfb_ms",
            "duration_ms",
            "outcome",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(v["status"], 200);
        assert_eq!(v["ttfb_ms"].as_f64(), Some(12.345));
        assert_eq!(v["duration_ms"].as_f64(), Some(1500.0));
    }

    #[test]
    fn extra_fields_are_appended_to_the_line_escaped() {
        let mut out = Vec::new();
        write_line(&entry(), &mut out);
        append_field(&mut out, "retries", 2);
        append_str_field(&mut out, "key", Some("team \"a\""));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(
            (v["retries"].as_u64(), v["key"].as_str()),
            (Some(2), Some("team \"a\""))
        );
        assert!(out.ends_with(b"}\n") && out.iter().filter(|&&b| b == b'\n').count() == 1);
        let mut out = Vec::new();
        write_line(&entry(), &mut out);
        append_str_field(&mut out, "key", None);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert!(v["key"].is_null() && v.get("key").is_some());
        // Nothing to append to: nothing happens.
        let mut empty = Vec::new();
        append_str_field(&mut empty, "key", Some("x"));
        assert!(empty.is_empty());
    }

    #[test]
    fn absent_model_upstream_and_ttfb_are_null() {
        let e = Entry {
            model: None,
            upstream: None,
            ttfb: None,
            status: 404,
            outcome: Outcome::Rejected,
            ..entry()
        };
        let v = line(&e);
        assert!(v["model"].is_null());
        assert!(v["upstream"].is_null());
        assert!(v["ttfb_ms"].is_null());
        assert_eq!(v["outcome"], "rejected");
    }

    #[test]
    fn a_unix_socket_client_is_logged_as_unix() {
        let v = line(&Entry {
            client: None,
            ..entry()
        });
        assert_eq!(v["client"], "unix");
    }

    #[test]
    fn ipv6_and_mapped_clients_are_logged_canonically() {
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(
            line(&Entry {
                client: Some(v6),
                ..entry()
            })["client"],
            "2001:db8::1"
        );
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(
            line(&Entry {
                client: Some(mapped),
                ..entry()
            })["client"],
            "192.0.2.7"
        );
    }

    #[test]
    fn every_outcome_has_its_spec_name() {
        for (outcome, name) in [
            (Outcome::Ok, "ok"),
            (Outcome::ClientAbort, "client_abort"),
            (Outcome::UpstreamError, "upstream_error"),
            (Outcome::Timeout, "timeout"),
            (Outcome::Rejected, "rejected"),
        ] {
            assert_eq!(line(&Entry { outcome, ..entry() })["outcome"], name);
        }
    }

    #[test]
    fn the_query_string_is_stripped_from_the_path() {
        let v = line(&Entry {
            path: b"/v1/models?key=secret",
            ..entry()
        });
        assert_eq!(v["path"], "/v1/models");
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        let v = line(&Entry {
            request_id: br#"a"b\c"#,
            path: br#"/x"\"#,
            ..entry()
        });
        assert_eq!(v["request_id"], r#"a"b\c"#);
        assert_eq!(v["path"], r#"/x"\"#);
    }

    #[test]
    fn control_bytes_are_escaped_and_stay_on_one_line() {
        let mut out = Vec::new();
        write_line(
            &Entry {
                request_id: b"a\nb\r\x00\x1f\x7f",
                method: b"G\tT",
                ..entry()
            },
            &mut out,
        );
        let text = std::str::from_utf8(&out).expect("utf8");
        assert!(
            text.contains(r#""request_id":"a\u000ab\u000d\u0000\u001f\u007f""#),
            "{text}"
        );
        let v = line(&Entry {
            request_id: b"a\nb",
            method: b"G\tT",
            ..entry()
        });
        assert_eq!(v["request_id"], "a\nb");
        assert_eq!(v["method"], "G\tT");
    }

    #[test]
    fn invalid_utf8_bytes_are_escaped_and_valid_utf8_is_kept() {
        let mut out = Vec::new();
        write_line(
            &Entry {
                path: b"/caf\xc3\xa9/\xff\xfe/\xe2\x82",
                request_id: b"\x80id",
                ..entry()
            },
            &mut out,
        );
        let text = std::str::from_utf8(&out).expect("the line is UTF-8");
        assert!(
            text.contains(r#""path":"/café/\u00ff\u00fe/\u00e2\u0082""#),
            "{text}"
        );
        assert!(text.contains(r#""request_id":"\u0080id""#), "{text}");
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["path"], "/café/\u{ff}\u{fe}/\u{e2}\u{82}");
    }

    #[test]
    fn model_and_upstream_are_escaped() {
        let v = line(&Entry {
            model: Some("a\"b\n"),
            upstream: Some("unix:/run/x\\y"),
            ..entry()
        });
        assert_eq!(v["model"], "a\"b\n");
        assert_eq!(v["upstream"], "unix:/run/x\\y");
    }

    #[test]
    fn milliseconds_have_at_most_three_decimals_without_trailing_zeros() {
        let ms = |d: Duration| {
            let mut out = Vec::new();
            write_millis(d, &mut out);
            String::from_utf8(out).expect("ascii")
        };
        assert_eq!(ms(Duration::ZERO), "0");
        assert_eq!(ms(Duration::from_micros(42)), "0.042");
        assert_eq!(ms(Duration::from_micros(12_500)), "12.5");
        assert_eq!(ms(Duration::from_micros(1_230)), "1.23");
        assert_eq!(ms(Duration::from_nanos(999)), "0", "below a microsecond");
        assert_eq!(ms(Duration::from_secs(600)), "600000");
    }

    #[test]
    fn big_counts_are_written_in_full() {
        let v = line(&Entry {
            bytes_in: u64::MAX,
            bytes_out: 0,
            status: 599,
            ..entry()
        });
        assert_eq!(v["bytes_in"].as_u64(), Some(u64::MAX));
        assert_eq!(v["bytes_out"], 0);
        assert_eq!(v["status"], 599);
    }

    #[test]
    fn rfc3339_of_the_epoch() {
        assert_eq!(ts(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_of_a_leap_day() {
        // 2000-02-29T12:34:56.789Z: 2000 is a leap year although divisible by 100.
        assert_eq!(ts(at(951_827_696, 789)), "2000-02-29T12:34:56.789Z");
        assert_eq!(ts(at(951_868_800, 0)), "2000-03-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_of_a_recent_instant() {
        assert_eq!(ts(at(1_795_323_843, 123)), "2026-11-22T05:04:03.123Z");
    }

    #[test]
    fn rfc3339_at_year_ends_and_non_leap_centuries() {
        assert_eq!(ts(at(946_684_799, 999)), "1999-12-31T23:59:59.999Z");
        assert_eq!(ts(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
        assert_eq!(ts(at(4_107_542_399, 0)), "2100-02-28T23:59:59.000Z");
    }

    #[test]
    fn rfc3339_truncates_to_the_millisecond() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_999_999_999);
        assert_eq!(ts(t), "1970-01-01T00:00:01.999Z");
    }

    #[test]
    fn rfc3339_before_the_epoch_floors() {
        let t = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(ts(t), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn loopback_and_unix_peers_are_local() {
        for peer in [
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))),
            Some(IpAddr::V4(Ipv4Addr::new(127, 2, 3, 4))),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            Some(IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped())),
            None,
        ] {
            assert!(is_local_peer(peer), "{peer:?}");
        }
    }

    #[test]
    fn other_peers_are_not_local() {
        for peer in [
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            // IPv4-compatible (deprecated) is not the mapped form.
            IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0x7f00, 1)),
        ] {
            assert!(!is_local_peer(Some(peer)), "{peer}");
        }
    }
}
