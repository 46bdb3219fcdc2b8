//! Request heads: [`parse_request`] (httparse plus our limits and framing rules) and the cheap
//! completion check [`head_end`] that keeps re-parsing a growing buffer linear (PITFALLS 18).

use std::ops::Range;

use super::fields::{range_in, trim_ows, ConnectionTokens, ContentLength, TransferEncoding};
use super::{
    HeadError, Method, Parse, RequestFraming, RequestHead, Version, MAX_HEADERS, MAX_HEAD_BYTES,
};

/// Where the head in `buf` ends (the index just past its empty line), searching only from
/// `from - 3` on: pass the length already searched, so each byte is looked at about once.
/// Accepts `\r\n\r\n`, `\n\n`, `\r\n\n` and `\n\r\n`, the line ends httparse accepts.
///
/// `None` means "not yet": call [`parse_request`] when this finds an end, or when the buffer
/// reached [`MAX_HEAD_BYTES`] (it then answers `TooLarge`). A `Some` can be early (empty
/// lines before a request line, which httparse skips); `parse_request` then says `Partial`.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3).min(buf.len());
    let tail = buf.get(start..)?;
    for i in memchr::memchr_iter(b'\n', tail) {
        match (tail.get(i + 1), tail.get(i + 2)) {
            (Some(b'\n'), _) => return Some(start + i + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(start + i + 3),
            _ => {}
        }
    }
    None
}

/// Parses a request head at the start of `buf`.
///
/// Limits: more than [`MAX_HEADERS`] fields → `TooManyHeaders`; a head longer than
/// [`MAX_HEAD_BYTES`], or an incomplete one in a buffer that already holds that many bytes →
/// `TooLarge`. httparse's defaults stay on: no obs-fold, no space before the colon, no NUL,
/// bare CR or other controls in values, one SP between request-line parts.
pub fn parse_request(buf: &[u8]) -> Result<Parse<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else {
                Ok(Parse::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(httparse_reason(e))),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HeadError::Malformed("unsupported HTTP version")),
    };
    let method = method_of(req.method.unwrap_or(""));
    if let Some(why) = not_proxied(req.method.unwrap_or("")) {
        return Err(HeadError::Malformed(why));
    }
    let target = target_range(buf, req.path.unwrap_or(""))?;

    let mut fields = Fields::default();
    for h in req.headers.iter() {
        fields.add(buf, h.name, h.value);
    }

    let http11 = version == Version::Http11;
    let hosts_ok = if http11 {
        fields.host_count == 1
    } else {
        fields.host_count <= 1
    };
    if !hosts_ok || fields.bad_host {
        return Err(HeadError::BadHost);
    }

    let framing = request_framing(version, &fields.te, &fields.cl)?;
    let has_body = match framing {
        RequestFraming::Empty | RequestFraming::Length(0) => false,
        RequestFraming::Length(_) | RequestFraming::Chunked => true,
    };

    Ok(Parse::Complete(RequestHead {
        method,
        target,
        version,
        head_len,
        framing,
        keep_alive: fields.connection.persistent(http11),
        // Ignored on HTTP/1.0 and for empty bodies (RFC 9110 §10.1.1; hyper conn.rs).
        expect_continue: http11 && has_body && fields.expect_continue,
        authorization: fields.authorization,
        host: fields.host,
        content_encoded: fields.content_encoded,
        request_id: fields.request_id,
        content_type: fields.content_type,
        upgrade: http11
            && method == Method::Get
            && fields.connection.upgrade
            && fields.upgrade_websocket,
    }))
}

/// Request framing, RFC 9112 §6.3 as it applies to requests (hyper `role.rs` Server::decoder):
/// 1. `Transfer-Encoding` on HTTP/1.0 → 400 (§6.1: the framing is faulty).
/// 2. `Transfer-Encoding` together with `Content-Length` → 400 (§6.1 allows processing by TE
///    and closing; rejecting is simpler and is what nginx ≥ 1.21.1 does).
/// 3. `Transfer-Encoding` (every line folded into one list, case-insensitive):
///    - the last coding is not `chunked` → 400 (§6.3 rule 4: a request body's length
///      cannot be determined);
///    - `chunked` more than once → 400 (§7.1: MUST NOT apply chunked more than once);
///    - any other coding before `chunked` (`gzip`, `deflate`, `compress`, or unknown) → 501:
///      we decode no transfer coding but chunked, so we could neither scan the body for
///      `model` nor tell the upstream what the body is (we re-send only `chunked`);
///    - otherwise → chunked.
/// 4. `Content-Length`: 1*DIGIT only; repeated values (lines or `5, 5`) must be identical
///    (accepted then, as hyper does); differing, signed, hex, empty or overflowing → 400.
/// 5. Neither → no body.
fn request_framing(
    version: Version,
    te: &TransferEncoding,
    cl: &ContentLength,
) -> Result<RequestFraming, HeadError> {
    if te.is_present() {
        if version == Version::Http10 {
            return Err(HeadError::BadFraming("Transfer-Encoding on HTTP/1.0"));
        }
        if cl.is_present() {
            return Err(HeadError::BadFraming(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if !te.last_is_chunked() {
            return Err(HeadError::BadFraming(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        if te.chunked_twice() {
            return Err(HeadError::BadFraming("chunked applied more than once"));
        }
        if te.has_other_coding() {
            return Err(HeadError::UnsupportedCoding);
        }
        return Ok(RequestFraming::Chunked);
    }
    match cl.get() {
        Err(reason) => Err(HeadError::BadFraming(reason)),
        Ok(Some(n)) => Ok(RequestFraming::Length(n)),
        Ok(None) => Ok(RequestFraming::Empty),
    }
}

/// What one pass over the header fields collects.
#[derive(Default)]
struct Fields {
    host_count: u32,
    /// A `Host` value that is a list (`a, b`): as ambiguous as two `Host` lines.
    bad_host: bool,
    host: Option<Range<usize>>,
    te: TransferEncoding,
    cl: ContentLength,
    connection: ConnectionTokens,
    expect_continue: bool,
    authorization: Option<Range<usize>>,
    content_encoded: bool,
    request_id: Option<Range<usize>>,
    content_type: Option<Range<usize>>,
    /// An `Upgrade` field lists `websocket`.
    upgrade_websocket: bool,
}

impl Fields {
    fn add(&mut self, buf: &[u8], name: &str, value: &[u8]) {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            self.host_count = self.host_count.saturating_add(1);
            self.bad_host |= value.contains(&b',');
            self.host = Some(range_in(buf, value));
        } else if is("content-length") {
            self.cl.add(value);
        } else if is("transfer-encoding") {
            self.te.add(value);
        } else if is("connection") {
            self.connection.add(value);
        } else if is("expect") {
            self.expect_continue |= trim_ows(value).eq_ignore_ascii_case(b"100-continue");
        } else if is("authorization") {
            // The first one counts; auth strips every `Authorization` it checked.
            if self.authorization.is_none() {
                self.authorization = Some(range_in(buf, value));
            }
        } else if is("content-encoding") {
            // `identity` (or an empty value) leaves the body readable.
            let v = trim_ows(value);
            self.content_encoded |= !v.is_empty() && !v.eq_ignore_ascii_case(b"identity");
        } else if is("x-request-id") && self.request_id.is_none() {
            self.request_id = Some(range_in(buf, value));
        } else if is("content-type") && self.content_type.is_none() {
            self.content_type = Some(range_in(buf, value));
        } else if is("upgrade") {
            self.upgrade_websocket |= super::fields::has_token(value, b"websocket");
        }
    }
}

/// Methods modelgate refuses in any target form (SPEC §11), before the target is looked at:
/// `CONNECT` asks for a tunnel (RFC 9110 §9.3.6), which a router to HTTP backends never
/// opens, and whose 2xx answer an upstream would follow with raw bytes; `PRI` is the HTTP/2
/// connection preface (RFC 9113 §3.4), which this HTTP/1.1 server does not speak. Both are
/// 400 and close: the bytes after such a head are not HTTP/1.1 requests.
fn not_proxied(method: &str) -> Option<&'static str> {
    match method {
        "CONNECT" => Some("CONNECT is not supported: modelgate is not a forward proxy"),
        "PRI" => Some("PRI (the HTTP/2 preface) is not supported: modelgate speaks HTTP/1.1"),
        _ => None,
    }
}

/// Methods are case-sensitive (RFC 9110 §9.1): `get` is `Other`.
fn method_of(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        "CONNECT" => Method::Connect,
        _ => Method::Other,
    }
}

/// The origin-form part of the request target, as a range of `buf`.
///
/// - origin-form `/path?q` → as is;
/// - absolute-form `http(s)://authority/path?q` → `/path?q` (the authority is ignored: `Host`
///   is still required on HTTP/1.1 and is what we report);
/// - absolute-form with an empty path and no query (`http://host`) → `/`, as a range over the
///   last `/` of `://` (a range cannot hold a synthesized byte, but that one is a `/`);
/// - absolute-form with an empty path and a query (`http://host?q`) → Malformed: `/?q` is not
///   contiguous in the buffer, and no client sends it to an origin;
/// - asterisk-form (`*`), authority-form (`host:443`), other schemes → Malformed.
fn target_range(buf: &[u8], target: &str) -> Result<Range<usize>, HeadError> {
    let t = target.as_bytes();
    let whole = range_in(buf, t);
    if t.first() == Some(&b'/') {
        return Ok(whole);
    }
    let scheme_len = if starts_with_ignore_case(t, b"http://") {
        7
    } else if starts_with_ignore_case(t, b"https://") {
        8
    } else {
        return Err(HeadError::Malformed(
            "request target is not origin-form or absolute-form",
        ));
    };
    let rest = t.get(scheme_len..).unwrap_or_default();
    let authority_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    if authority_len == 0 {
        return Err(HeadError::Malformed("absolute-form target without a host"));
    }
    let path_start = whole.start + scheme_len + authority_len;
    match rest.get(authority_len) {
        Some(b'/') => Ok(path_start..whole.end),
        None => {
            // The `/` just before the authority.
            let slash = whole.start + scheme_len - 1;
            Ok(slash..slash + 1)
        }
        Some(_) => Err(HeadError::Malformed(
            "absolute-form target with a query but no path",
        )),
    }
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

pub(crate) fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid request line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Parse<RequestHead>, HeadError> {
        parse_request(raw)
    }

    #[test]
    fn a_websocket_upgrade_is_an_http11_get_with_both_headers() {
        let upgrade = |raw: &[u8]| head(raw).upgrade;
        assert!(upgrade(
            b"GET /rt HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n"
        ));
        assert!(!upgrade(
            b"GET /rt HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!upgrade(
            b"GET /rt HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        ));
        assert!(!upgrade(
            b"POST /rt HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!upgrade(
            b"GET /rt HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        let raw =
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=b\r\n\
            Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n";
        let h = head(raw);
        assert_eq!(
            raw.get(h.content_type.unwrap()),
            Some(&b"multipart/form-data; boundary=b"[..])
        );
    }

    fn head(raw: &[u8]) -> RequestHead {
        match parse(raw) {
            Ok(Parse::Complete(h)) => h,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn err(raw: &[u8]) -> HeadError {
        match parse(raw) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn post(extra: &str) -> Vec<u8> {
        format!("POST /v1/chat HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes()
    }

    // ---- basics ----

    #[test]
    fn simple_get_parses_every_field() {
        let raw = b"GET /v1/models?x=1 HTTP/1.1\r\nHost: example\r\nAuthorization: Bearer k\r\nX-Request-Id: abc\r\n\r\nNEXT";
        let h = head(raw);
        assert_eq!(h.method, Method::Get);
        assert_eq!(&raw[h.target.clone()], b"/v1/models?x=1");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.head_len, raw.len() - 4);
        assert_eq!(h.framing, RequestFraming::Empty);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(&raw[h.authorization.unwrap()], b"Bearer k");
        assert_eq!(&raw[h.host.unwrap()], b"example");
        assert_eq!(&raw[h.request_id.unwrap()], b"abc");
        assert!(!h.content_encoded);
    }

    #[test]
    fn incomplete_head_is_partial() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(Parse::Partial));
        assert_eq!(parse(b""), Ok(Parse::Partial));
    }

    #[test]
    fn methods_map_case_sensitively() {
        for (m, want) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("PATCH", Method::Patch),
            ("OPTIONS", Method::Options),
            ("PROPFIND", Method::Other),
            ("get", Method::Other),
        ] {
            let raw = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(head(raw.as_bytes()).method, want, "{m}");
        }
    }

    #[test]
    fn http2_version_is_malformed() {
        assert!(matches!(
            err(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let raw = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head(raw).head_len, raw.len());
    }

    #[test]
    fn lf_only_head_is_accepted_like_httparse() {
        let raw = b"GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(head(raw).head_len, raw.len());
    }

    // ---- httparse strictness we keep ----

    #[test]
    fn obs_fold_is_rejected() {
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn space_before_colon_is_rejected() {
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn nul_in_header_value_is_rejected() {
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn bare_cr_in_header_value_is_rejected() {
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn del_in_header_value_is_rejected() {
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn double_space_in_request_line_is_rejected() {
        assert!(matches!(
            err(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    // ---- limits ----

    #[test]
    fn one_hundred_headers_are_accepted() {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..99 {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        head(raw.as_bytes());
    }

    #[test]
    fn one_hundred_and_one_headers_are_too_many() {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..100 {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(err(raw.as_bytes()), HeadError::TooManyHeaders);
    }

    #[test]
    fn complete_head_over_64k_is_too_large() {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(err(raw.as_bytes()), HeadError::TooLarge);
    }

    #[test]
    fn incomplete_head_filling_64k_is_too_large() {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(err(raw.as_bytes()), HeadError::TooLarge);
    }

    #[test]
    fn head_of_exactly_64k_is_accepted() {
        let prefix = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ";
        let fill = MAX_HEAD_BYTES - prefix.len() - 4;
        let raw = format!("{prefix}{}\r\n\r\n", "a".repeat(fill));
        assert_eq!(raw.len(), MAX_HEAD_BYTES);
        assert_eq!(head(raw.as_bytes()).head_len, MAX_HEAD_BYTES);
    }

    #[test]
    fn small_head_followed_by_a_big_body_is_fine() {
        let mut raw = post("Content-Length: 70000\r\n");
        raw.extend(vec![b'x'; 70000]);
        assert_eq!(head(&raw).framing, RequestFraming::Length(70000));
    }

    // ---- head_end ----

    #[test]
    fn head_end_finds_crlfcrlf() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(head_end(raw, 0), Some(raw.len() - 4));
    }

    #[test]
    fn head_end_accepts_lf_only_and_mixed_endings() {
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(head_end(b"a\r\n\nb", 0), Some(4));
        assert_eq!(head_end(b"a\n\r\nb", 0), Some(4));
    }

    #[test]
    fn head_end_is_none_until_the_end_arrives() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"ab", 10), None);
    }

    #[test]
    fn head_end_sees_a_terminator_split_across_reads() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 0..raw.len() {
            // The caller searched raw[..split] before; now the rest arrived.
            assert_eq!(head_end(&raw[..split], 0), None, "split {split}");
            assert_eq!(head_end(raw, split), Some(raw.len()), "split {split}");
        }
    }

    #[test]
    fn head_end_then_parse_agree_byte_by_byte() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let mut searched = 0;
        let mut found = None;
        for n in 1..=raw.len() {
            if let Some(end) = head_end(&raw[..n], searched) {
                found = Some((n, end));
                break;
            }
            searched = n;
        }
        let (n, end) = found.unwrap();
        assert_eq!(n, raw.len() - 2);
        assert_eq!(head(&raw[..n]).head_len, end);
    }

    // ---- Host ----

    #[test]
    fn http11_without_host_is_bad_host() {
        assert_eq!(err(b"GET / HTTP/1.1\r\n\r\n"), HeadError::BadHost);
    }

    #[test]
    fn http11_with_two_hosts_is_bad_host() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            HeadError::BadHost
        );
    }

    #[test]
    fn host_list_value_is_bad_host() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"),
            HeadError::BadHost
        );
    }

    #[test]
    fn http10_without_host_is_fine() {
        assert_eq!(head(b"GET / HTTP/1.0\r\n\r\n").host, None);
    }

    #[test]
    fn http10_with_two_hosts_is_bad_host() {
        assert_eq!(
            err(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            HeadError::BadHost
        );
    }

    #[test]
    fn empty_host_is_accepted() {
        let raw = b"GET / HTTP/1.1\r\nHost:\r\n\r\n";
        assert_eq!(&raw[head(raw).host.unwrap()], b"");
    }

    // ---- keep-alive ----

    #[test]
    fn http11_keeps_alive_by_default() {
        assert!(head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
    }

    #[test]
    fn http11_connection_close_closes() {
        assert!(!head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive);
    }

    #[test]
    fn connection_close_found_in_a_token_list_on_a_second_line() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: te , CLOSE\r\n\r\n";
        assert!(!head(raw).keep_alive);
    }

    #[test]
    fn http10_closes_by_default() {
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    }

    #[test]
    fn http10_keep_alive_token_keeps_alive() {
        assert!(head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn close_wins_over_keep_alive() {
        assert!(!head(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn connection_token_substring_does_not_count() {
        assert!(head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n").keep_alive);
    }

    // ---- Expect ----

    #[test]
    fn expect_continue_with_a_body_is_flagged() {
        let h = head(&post("Content-Length: 5\r\nExpect: 100-Continue\r\n"));
        assert!(h.expect_continue);
    }

    #[test]
    fn expect_continue_with_chunked_body_is_flagged() {
        let h = head(&post(
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n",
        ));
        assert!(h.expect_continue);
    }

    #[test]
    fn expect_continue_without_a_body_is_ignored() {
        assert!(!head(&post("Expect: 100-continue\r\n")).expect_continue);
        assert!(!head(&post("Content-Length: 0\r\nExpect: 100-continue\r\n")).expect_continue);
    }

    #[test]
    fn expect_continue_on_http10_is_ignored() {
        let raw = b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        assert!(!head(raw).expect_continue);
    }

    #[test]
    fn other_expectations_are_not_continue() {
        assert!(!head(&post("Content-Length: 5\r\nExpect: 100-continuex\r\n")).expect_continue);
    }

    // ---- framing: Content-Length ----

    #[test]
    fn content_length_gives_length_framing() {
        assert_eq!(
            head(&post("Content-Length: 42\r\n")).framing,
            RequestFraming::Length(42)
        );
    }

    #[test]
    fn content_length_zero_is_length_zero() {
        assert_eq!(
            head(&post("Content-Length: 0\r\n")).framing,
            RequestFraming::Length(0)
        );
    }

    #[test]
    fn no_framing_headers_means_no_body() {
        assert_eq!(head(&post("")).framing, RequestFraming::Empty);
    }

    #[test]
    fn content_length_plus_sign_is_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length: +5\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn content_length_negative_is_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length: -1\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn content_length_hex_is_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length: 0x5\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn content_length_with_inner_space_is_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length: 1 2\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn content_length_empty_is_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length:\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn content_length_differing_list_is_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length: 5, 6\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn content_length_differing_lines_are_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length: 5\r\nContent-Length: 6\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    /// The judgement call (PITFALLS 9): identical repeated values are one length, as in hyper.
    #[test]
    fn content_length_identical_list_is_accepted() {
        assert_eq!(
            head(&post("Content-Length: 5, 5\r\n")).framing,
            RequestFraming::Length(5)
        );
    }

    #[test]
    fn content_length_identical_lines_are_accepted() {
        assert_eq!(
            head(&post("Content-Length: 5\r\ncontent-length: 5\r\n")).framing,
            RequestFraming::Length(5)
        );
    }

    #[test]
    fn content_length_overflow_is_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length: 99999999999999999999\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn content_length_max_u64_is_accepted() {
        assert_eq!(
            head(&post("Content-Length: 18446744073709551615\r\n")).framing,
            RequestFraming::Length(u64::MAX)
        );
    }

    // ---- framing: Transfer-Encoding ----

    #[test]
    fn chunked_gives_chunked_framing() {
        assert_eq!(
            head(&post("Transfer-Encoding: chunked\r\n")).framing,
            RequestFraming::Chunked
        );
    }

    #[test]
    fn chunked_is_case_insensitive() {
        assert_eq!(
            head(&post("Transfer-Encoding: ChUnKeD\r\n")).framing,
            RequestFraming::Chunked
        );
    }

    #[test]
    fn cl_then_te_is_bad_framing() {
        assert!(matches!(
            err(&post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn te_then_cl_is_bad_framing() {
        assert!(matches!(
            err(&post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn te_with_invalid_cl_is_still_bad_framing() {
        assert!(matches!(
            err(&post(
                "Transfer-Encoding: chunked\r\nContent-Length: +5\r\n"
            )),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn te_on_http10_is_bad_framing() {
        let raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(err(raw), HeadError::BadFraming(_)));
    }

    #[test]
    fn xchunked_is_bad_framing() {
        assert!(matches!(
            err(&post("Transfer-Encoding: xchunked\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn chunked_then_identity_is_bad_framing() {
        assert!(matches!(
            err(&post("Transfer-Encoding: chunked, identity\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn te_not_ending_in_chunked_across_lines_is_bad_framing() {
        assert!(matches!(
            err(&post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"
            )),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn te_ending_in_chunked_across_lines_is_checked_as_one_list() {
        assert_eq!(
            err(&post(
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
            )),
            HeadError::UnsupportedCoding
        );
    }

    #[test]
    fn chunked_twice_is_bad_framing() {
        assert!(matches!(
            err(&post("Transfer-Encoding: chunked, chunked\r\n")),
            HeadError::BadFraming(_)
        ));
        assert!(matches!(
            err(&post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
            )),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn unknown_coding_before_chunked_is_unsupported() {
        assert_eq!(
            err(&post("Transfer-Encoding: foo, chunked\r\n")),
            HeadError::UnsupportedCoding
        );
    }

    #[test]
    fn gzip_before_chunked_is_unsupported() {
        assert_eq!(
            err(&post("Transfer-Encoding: gzip, chunked\r\n")),
            HeadError::UnsupportedCoding
        );
    }

    #[test]
    fn chunked_with_parameters_is_not_chunked() {
        assert!(matches!(
            err(&post("Transfer-Encoding: chunked;q=1\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn empty_te_is_bad_framing() {
        assert!(matches!(
            err(&post("Transfer-Encoding:\r\n")),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn empty_list_elements_in_te_are_ignored() {
        assert_eq!(
            head(&post("Transfer-Encoding: , chunked ,\r\n")).framing,
            RequestFraming::Chunked
        );
    }

    // ---- Content-Encoding ----

    #[test]
    fn content_encoding_marks_the_body_encoded() {
        assert!(head(&post("Content-Length: 3\r\nContent-Encoding: gzip\r\n")).content_encoded);
    }

    #[test]
    fn content_encoding_identity_is_not_encoded() {
        assert!(
            !head(&post("Content-Length: 3\r\nContent-Encoding: identity\r\n")).content_encoded
        );
    }

    // ---- targets ----

    #[test]
    fn absolute_form_target_becomes_its_path_and_query() {
        let raw =
            b"GET http://example.com:8080/v1/models?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(&raw[head(raw).target], b"/v1/models?x=1");
    }

    #[test]
    fn absolute_form_https_scheme_is_case_insensitive() {
        let raw = b"GET HTTPS://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(&raw[head(raw).target], b"/x");
    }

    #[test]
    fn absolute_form_without_path_becomes_slash() {
        let raw = b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert_eq!(&raw[head(raw).target], b"/");
    }

    #[test]
    fn absolute_form_with_query_but_no_path_is_malformed() {
        let raw = b"GET http://example.com?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert!(matches!(err(raw), HeadError::Malformed(_)));
    }

    #[test]
    fn absolute_form_without_host_is_malformed() {
        let raw = b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(err(raw), HeadError::Malformed(_)));
    }

    #[test]
    fn other_scheme_is_malformed() {
        let raw = b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(err(raw), HeadError::Malformed(_)));
    }

    #[test]
    fn asterisk_form_is_malformed() {
        let raw = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(err(raw), HeadError::Malformed(_)));
    }

    #[test]
    fn connect_and_pri_are_refused_in_every_target_form() {
        for raw in [
            &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
            b"CONNECT /v1/chat/completions HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT http://a/v1/x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT /x HTTP/1.0\r\n\r\n",
            b"PRI /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
            b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PRI http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let got = parse(raw);
            assert!(
                matches!(got, Err(HeadError::Malformed(why)) if why.starts_with("CONNECT") || why.starts_with("PRI")),
                "{:?}: {got:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // The HTTP/2 preface itself never gets that far: its version is refused.
        assert!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_err());
        // Methods are case-sensitive: `connect` is an unknown method, forwarded as such.
        assert!(matches!(
            parse(b"connect /x HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Parse::Complete(_))
        ));
    }

    #[test]
    fn authority_form_is_malformed() {
        let raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n";
        assert!(matches!(err(raw), HeadError::Malformed(_)));
    }

    #[test]
    fn first_authorization_and_request_id_win() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: one\r\nAuthorization: two\r\nX-Request-Id: r1\r\nx-request-id: r2\r\n\r\n";
        let h = head(raw);
        assert_eq!(&raw[h.authorization.unwrap()], b"one");
        assert_eq!(&raw[h.request_id.unwrap()], b"r1");
    }

    #[test]
    fn header_values_are_trimmed() {
        let raw = b"GET / HTTP/1.1\r\nHost:   a.b  \r\n\r\n";
        assert_eq!(&raw[head(raw).host.unwrap()], b"a.b");
    }
}
