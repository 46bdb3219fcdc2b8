//! Head rewriting for both directions (SPEC.md §5): the upstream request head and the client
//! response head. Both re-read the original head with httparse (a few µs, no allocation: the
//! head is already known to parse) and write the new head into `out`, growing only `out`.
//!
//! Request side, header by header in the client's order:
//! - dropped: hop-by-hop (`Connection` and every header it names, `Keep-Alive`,
//!   `Proxy-Connection`, `TE` unless exactly `trailers`, `Trailer`, `Transfer-Encoding`,
//!   `Upgrade`, `Proxy-Authorization`), `Expect` (modelgate answers it), `Host`,
//!   `X-Forwarded-For/-Proto/-Host` (never trusted from clients), `Authorization` when
//!   modelgate checked it, `X-Request-Id` when we send one, and any header an extra header
//!   replaces;
//! - `Content-Length` is written once, with the value we framed the body by, where the first
//!   one was (identical repeats such as `5, 5` collapse to `5`, so the upstream parses exactly
//!   the framing we parsed). A `Connection` header cannot remove it;
//! - added: `Host` first (and `Connection: keep-alive` on HTTP/1.0 requests, so the upstream
//!   connection can still be pooled), then after the client's headers `Transfer-Encoding: chunked` (for
//!   chunked bodies), `X-Forwarded-For` (the client IP; none on unix listeners),
//!   `X-Forwarded-Proto`, `X-Forwarded-Host` (the client's `Host`), `X-Request-Id`, and the
//!   per-model extra headers last.
//! - a WebSocket upgrade (`RequestHead::upgrade`) keeps `Upgrade` and sends
//!   `Connection: Upgrade`; `Sec-WebSocket-*` headers pass like any end-to-end header;
//! - extra headers never set framing or hop-by-hop fields (`Content-Length`,
//!   `Transfer-Encoding`, `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//!   `Upgrade`, `Expect`): config validation should refuse them; here they are skipped, as is
//!   any extra header whose name or value holds CR, LF or NUL.
//!
//! Response side: see [`write_client_response_head`].

use std::net::IpAddr;

use super::fields::{has_token, put_u64};
use super::{RequestFraming, RequestHead, ResponseHead, UpstreamRequest, Version, MAX_HEADERS};

/// Writes the upstream request head for `head` (parsed from `raw`) into `out`: request line
/// with joined path and query, hop-by-hop and `Expect` dropped, `Host`/`X-Forwarded-*`/
/// `X-Request-Id` set, `Transfer-Encoding: chunked` re-added when chunked, extra headers last.
///
/// The request line carries the client's version: an HTTP/1.0 client is forwarded as
/// HTTP/1.0, so the upstream never answers it with chunked coding it could not read.
pub fn write_upstream_request_head(
    raw: &[u8],
    head: &RequestHead,
    req: &UpstreamRequest<'_>,
    out: &mut Vec<u8>,
) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_bytes = raw.get(..head.head_len).unwrap_or(raw);
    let complete = matches!(parsed.parse(head_bytes), Ok(httparse::Status::Complete(_)));
    let method = match parsed.method {
        Some(m) if complete => m.as_bytes(),
        _ => method_bytes(head),
    };
    let fields: &[httparse::Header<'_>] = if complete { parsed.headers } else { &[] };

    // Request line.
    out.extend_from_slice(method);
    out.push(b' ');
    write_joined_target(req.base_path, req.base_query, req.target, out);
    out.extend_from_slice(match head.version {
        Version::Http10 => b" HTTP/1.0\r\n",
        Version::Http11 => b" HTTP/1.1\r\n",
    });

    let extras = || {
        req.extra_headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.expose()))
            .filter(|&(name, value)| extra_allowed(name, value))
    };
    let extra_has = |name: &str| extras().any(|(n, _)| n.eq_ignore_ascii_case(name));

    if !extra_has("host") {
        put_header(out, b"Host", req.authority.as_bytes());
    }
    if head.version == Version::Http10 {
        // HTTP/1.0 upstream requests close by default; ask to keep the pooled connection.
        put_header(out, b"Connection", b"keep-alive");
    }
    if head.upgrade {
        // A WebSocket handshake: the upgrade is asked of the upstream, hop by hop.
        put_header(out, b"Connection", b"Upgrade");
    }

    let connection_names = |name: &str| {
        fields
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| has_token(h.value, name.as_bytes()))
    };
    let mut wrote_length = false;
    let mut wrote_te = false;
    for h in fields {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            // Framing: written once with the parsed value; nothing can remove it.
            if let (false, RequestFraming::Length(n)) = (wrote_length, head.framing) {
                out.extend_from_slice(b"Content-Length: ");
                put_u64(out, n);
                out.extend_from_slice(b"\r\n");
                wrote_length = true;
            }
            continue;
        }
        if is("te") {
            // `TE: trailers` is end-to-end in practice (gRPC needs it); other values are not.
            // (`Connection: TE` naming it is what RFC 9110 §10.1.4 asks senders to do.)
            if !wrote_te && h.value.eq_ignore_ascii_case(b"trailers") {
                put_header(out, b"TE", b"trailers");
                wrote_te = true;
            }
            continue;
        }
        if head.upgrade && is("upgrade") {
            put_header(out, name.as_bytes(), h.value);
            continue;
        }
        let drop = REQUEST_DROPPED.iter().any(|d| is(d))
            || (req.strip_authorization && is("authorization"))
            || (!req.request_id.is_empty() && is("x-request-id"))
            || connection_names(name)
            || extra_has(name);
        if !drop {
            put_header(out, name.as_bytes(), h.value);
        }
    }

    if head.framing == RequestFraming::Chunked {
        put_header(out, b"Transfer-Encoding", b"chunked");
    }
    if let (false, RequestFraming::Length(n)) = (wrote_length, head.framing) {
        // A body re-framed by the caller (a profile rewrote a chunked body).
        out.extend_from_slice(b"Content-Length: ");
        put_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(ip) = req.client_ip {
        if !extra_has("x-forwarded-for") {
            out.extend_from_slice(b"X-Forwarded-For: ");
            put_ip(out, ip);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !extra_has("x-forwarded-proto") {
        put_header(out, b"X-Forwarded-Proto", req.proto.as_bytes());
    }
    if let Some(host) = head.host.clone().and_then(|r| raw.get(r)) {
        if !extra_has("x-forwarded-host") {
            put_header(out, b"X-Forwarded-Host", host);
        }
    }
    if !req.request_id.is_empty() && !extra_has("x-request-id") {
        put_header(out, b"X-Request-Id", req.request_id);
    }
    for (name, value) in extras() {
        put_header(out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Request headers never forwarded as sent (besides the conditional ones).
const REQUEST_DROPPED: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "expect",
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Names an extra header may not set: framing and hop-by-hop fields.
const EXTRA_FORBIDDEN: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

fn extra_allowed(name: &str, value: &str) -> bool {
    let bad_byte = |b: &u8| matches!(b, b'\r' | b'\n' | 0);
    !name.is_empty()
        && !name.bytes().any(|b| bad_byte(&b) || b == b':' || b == b' ')
        && !value.as_bytes().iter().any(bad_byte)
        && !EXTRA_FORBIDDEN.iter().any(|f| name.eq_ignore_ascii_case(f))
}

/// The method as the client sent it, when the head could not be re-read (it always can).
fn method_bytes(head: &RequestHead) -> &'static [u8] {
    use super::Method;
    match head.method {
        Method::Get | Method::Other => b"GET",
        Method::Head => b"HEAD",
        Method::Post => b"POST",
        Method::Put => b"PUT",
        Method::Delete => b"DELETE",
        Method::Patch => b"PATCH",
        Method::Options => b"OPTIONS",
        Method::Connect => b"CONNECT",
    }
}

/// `base_path` + the target's path, joined by exactly one `/`; then `?base_query&query`.
/// The client's query is forwarded verbatim (an empty `?` too, when there is no base query).
///
/// Base URLs as providers document them (`https://api.openai.com/v1`, `http://vllm:8000/v1`,
/// `https://openrouter.ai/api/v1`) meet SDK clients that send `/v1/...`: when the base path
/// ends in the segment `/v1` and the path is `/v1` or starts with `/v1/`, that `/v1` is not
/// doubled (SPEC §5). Every other join is unchanged.
fn write_joined_target(
    base_path: &str,
    base_query: Option<&str>,
    target: &[u8],
    out: &mut Vec<u8>,
) {
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(i) => (target.get(..i).unwrap_or_default(), target.get(i + 1..)),
        None => (target, None),
    };
    // Config strips a trailing `/` from base paths; be robust to one anyway.
    let base = base_path.strip_suffix('/').unwrap_or(base_path);
    let after_v1 = path
        .strip_prefix(b"/v1")
        .filter(|after| base.ends_with("/v1") && (after.is_empty() || after[0] == b'/'));
    out.extend_from_slice(base.as_bytes());
    let path = match after_v1 {
        // The request was `/v1` itself: the base already ends with it.
        Some([]) => {
            write_query(base_query, query, out);
            return;
        }
        Some(after) => after,
        None => path,
    };
    if path.first() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    write_query(base_query, query, out);
}

/// `?base_query&query`, as much of it as there is.
fn write_query(base_query: Option<&str>, query: Option<&[u8]>, out: &mut Vec<u8>) {
    match (base_query.filter(|q| !q.is_empty()), query) {
        (Some(b), Some(c)) if !c.is_empty() => {
            out.push(b'?');
            out.extend_from_slice(b.as_bytes());
            out.push(b'&');
            out.extend_from_slice(c);
        }
        (Some(b), _) => {
            out.push(b'?');
            out.extend_from_slice(b.as_bytes());
        }
        (None, Some(c)) => {
            out.push(b'?');
            out.extend_from_slice(c);
        }
        (None, None) => {}
    }
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// An IP as text; IPv4-mapped IPv6 (dual-stack listeners) is written as IPv4.
fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_u64(out, u64::from(*octet));
            }
        }
        IpAddr::V6(v6) => {
            // Rare enough for the formatter; it writes into `out` without a String.
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Writes the client response head for `head` (parsed from `raw`) into `out`: status line as
/// received, hop-by-hop headers dropped (framing headers kept as sent), `X-Request-Id` added
/// when the upstream did not send one, and `Connection: close` when `close`.
///
/// The status line keeps the code and reason phrase byte for byte, but its version is always
/// `HTTP/1.1`: the version is hop-by-hop (RFC 9110 §6.2), and modelgate speaks 1.1 to the
/// client. This also keeps an HTTP/1.0 upstream's `Transfer-Encoding: chunked` meaningful.
///
/// Dropped: `Connection` and the headers it names (never `Content-Length` or
/// `Transfer-Encoding`: we forward the framing as is), `Keep-Alive`, `Proxy-Connection`,
/// `TE`, `Upgrade`. Kept: `Trailer` (we pass trailers through, so its announcement stays
/// true), `Proxy-Authenticate`, `Transfer-Encoding`, `Content-Length`.
pub fn write_client_response_head(
    raw: &[u8],
    head: &ResponseHead,
    request_id: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) {
    let head_bytes = raw.get(..head.head_len).unwrap_or(raw);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let complete = matches!(parsed.parse(head_bytes), Ok(httparse::Status::Complete(_)));
    let fields: &[httparse::Header<'_>] = if complete { parsed.headers } else { &[] };

    out.extend_from_slice(b"HTTP/1.1");
    match status_line_rest(head_bytes) {
        Some(rest) => out.extend_from_slice(rest),
        None => {
            out.push(b' ');
            put_u64(out, u64::from(head.status));
        }
    }
    out.extend_from_slice(b"\r\n");

    let connection_names = |name: &str| {
        fields
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| has_token(h.value, name.as_bytes()))
    };
    // A `101` to a WebSocket handshake keeps its `Connection`/`Upgrade` headers: the client
    // switches protocols on the same connection.
    let switching = head.status == 101;
    let mut upstream_id = false;
    for h in fields {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let framing = is("content-length") || is("transfer-encoding");
        let kept = framing || (switching && (is("connection") || is("upgrade")));
        let drop = !kept && (RESPONSE_DROPPED.iter().any(|d| is(d)) || connection_names(name));
        if !drop {
            upstream_id |= is("x-request-id");
            put_header(out, name.as_bytes(), h.value);
        }
    }
    if !upstream_id && !request_id.is_empty() {
        put_header(out, b"X-Request-Id", request_id);
    }
    if close && !switching {
        put_header(out, b"Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

const RESPONSE_DROPPED: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// The status line after its `HTTP/1.x` version (` 200 OK`), skipping the empty lines httparse
/// skips, without its line ending.
fn status_line_rest(head: &[u8]) -> Option<&[u8]> {
    let start = head.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let line = head.get(start..)?;
    let end = memchr::memchr(b'\n', line)?;
    let line = line.get(..end)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.get(b"HTTP/1.1".len()..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::{parse_request, parse_response, Method, Parse};
    use crate::secrets::Secret;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn a_websocket_upgrade_keeps_its_upgrade_headers() {
        let raw =
            b"GET /v1/realtime?model=m HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\nKeep-Alive: 5\r\n\r\n";
        let extra = [];
        let r = rewrite_with(raw, &base_req(b"/v1/realtime?model=m", &extra));
        assert_eq!(r.one("connection"), Some(&b"Upgrade"[..]));
        assert_eq!(r.one("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(
            r.one("sec-websocket-key"),
            Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..])
        );
        assert_eq!(r.one("sec-websocket-version"), Some(&b"13"[..]));
        assert_eq!(r.one("keep-alive"), None);
        // Without `Connection: upgrade` it is an ordinary request: both are hop-by-hop.
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
        let r = rewrite_with(raw, &base_req(b"/x", &extra));
        assert_eq!(r.one("upgrade"), None);
        assert_eq!(r.one("connection"), None);
    }

    #[test]
    fn kept_header_lines_come_out_normalised() {
        // Lines in `Name: value` CRLF form, lines with other spacing, a bare LF, a dropped
        // header and the rewritten Content-Length in between.
        let raw = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: two\r\nC:3\r\nD:  4 \r\n\
            Keep-Alive: 5\r\nE: 5\nF: six\r\nContent-Length: 2\r\nG: 7\r\nH: \r\n\r\nhi";
        let extra = [];
        let r = rewrite_with(raw, &base_req(b"/v1/x", &extra));
        let text = String::from_utf8(r.bytes.clone()).expect("utf8");
        let start = text.find("\r\nA: ").expect("A") + 2;
        let end = text.find("X-Forwarded-For").expect("XFF");
        assert_eq!(
            &text[start..end],
            "A: 1\r\nB: two\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: six\r\nContent-Length: 2\r\nG: 7\r\nH: \r\n"
        );
        let raw = b"HTTP/1.1 200 OK\r\nA: 1\r\nConnection: close\r\nB:2\r\nC: 3\r\nD: 4\r\n\r\n";
        let head = match parse_response(raw, Method::Post) {
            Ok(Parse::Complete(h)) => h,
            other => panic!("{other:?}"),
        };
        let mut out = Vec::new();
        write_client_response_head(raw, &head, b"", false, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"
        );
    }

    #[test]
    fn a_101_keeps_connection_and_upgrade_for_the_client() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let head = match parse_response(raw, Method::Get) {
            Ok(Parse::Complete(h)) => h,
            other => panic!("{other:?}"),
        };
        let mut out = Vec::new();
        write_client_response_head(raw, &head, b"id", true, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nUpgrade: websocket\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: Upgrade\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(!text.contains("close"), "{text}");
    }

    fn request_head(raw: &[u8]) -> RequestHead {
        match parse_request(raw) {
            Ok(Parse::Complete(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    fn base_req<'a>(target: &'a [u8], extra: &'a [(String, Secret)]) -> UpstreamRequest<'a> {
        UpstreamRequest {
            authority: "upstream.example:8000",
            base_path: "",
            base_query: None,
            target,
            client_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
            proto: "http",
            strip_authorization: false,
            request_id: b"rid-1",
            extra_headers: extra,
        }
    }

    /// The rewritten head, parsed back: (request line target, version, headers).
    struct Rewritten {
        method: String,
        path: String,
        version: u8,
        headers: Vec<(String, Vec<u8>)>,
        bytes: Vec<u8>,
    }

    impl Rewritten {
        fn all(&self, name: &str) -> Vec<&[u8]> {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
                .collect()
        }
        fn one(&self, name: &str) -> Option<&[u8]> {
            let all = self.all(name);
            assert!(all.len() <= 1, "{name} appears {} times", all.len());
            all.first().copied()
        }
        fn names(&self) -> Vec<&str> {
            self.headers.iter().map(|(n, _)| n.as_str()).collect()
        }
    }

    fn rewrite_with(raw: &[u8], req: &UpstreamRequest<'_>) -> Rewritten {
        let head = request_head(raw);
        let mut out = Vec::new();
        write_upstream_request_head(raw, &head, req, &mut out);
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut p = httparse::Request::new(&mut hs);
        let n = match p.parse(&out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "rewritten head does not parse: {other:?}\n{}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(n, out.len(), "head must end exactly at CRLFCRLF");
        assert!(out.ends_with(b"\r\n\r\n"));
        Rewritten {
            method: p.method.unwrap().to_owned(),
            path: p.path.unwrap().to_owned(),
            version: p.version.unwrap(),
            headers: p
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
            bytes: out,
        }
    }

    fn rewrite(raw: &[u8]) -> Rewritten {
        let head = request_head(raw);
        rewrite_with(raw, &base_req(&raw[head.target], &[]))
    }

    fn joined(base: &str, query: Option<&str>, target: &[u8]) -> String {
        let mut out = Vec::new();
        write_joined_target(base, query, target, &mut out);
        String::from_utf8(out).unwrap()
    }

    // ---- target joins ----

    #[test]
    fn base_path_and_path_join_with_one_slash() {
        assert_eq!(
            joined("/v1", None, b"/chat/completions"),
            "/v1/chat/completions"
        );
    }

    #[test]
    fn empty_base_path_keeps_the_path() {
        assert_eq!(joined("", None, b"/x"), "/x");
    }

    #[test]
    fn root_path_under_a_base_keeps_the_slash() {
        assert_eq!(joined("/v1", None, b"/"), "/v1/");
    }

    #[test]
    fn path_without_slash_gets_one() {
        assert_eq!(joined("/v1", None, b"x"), "/v1/x");
        assert_eq!(joined("", None, b""), "/");
    }

    #[test]
    fn trailing_slash_in_base_is_not_doubled() {
        assert_eq!(joined("/v1/", None, b"/x"), "/v1/x");
    }

    #[test]
    fn a_v1_base_does_not_double_v1() {
        assert_eq!(
            joined("/v1", None, b"/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(
            joined("/api/v1", None, b"/v1/chat/completions?x=1"),
            "/api/v1/chat/completions?x=1"
        );
        assert_eq!(joined("/v1/", None, b"/v1/models"), "/v1/models");
        assert_eq!(joined("/v1", None, b"/v1"), "/v1");
        assert_eq!(joined("/v1", None, b"/v1?a=b"), "/v1?a=b");
        assert_eq!(joined("/v1", Some("k=v"), b"/v1"), "/v1?k=v");
        assert_eq!(joined("/v1", None, b"/v1/"), "/v1/");
    }

    #[test]
    fn other_joins_keep_v1_as_it_is() {
        // Only a whole `/v1` segment at both ends counts.
        assert_eq!(joined("/v1", None, b"/v10/x"), "/v1/v10/x");
        assert_eq!(joined("/v1", None, b"/v1x"), "/v1/v1x");
        assert_eq!(joined("/xv1", None, b"/v1/x"), "/xv1/v1/x");
        assert_eq!(joined("/v1/extra", None, b"/v1/x"), "/v1/extra/v1/x");
        assert_eq!(joined("/v2", None, b"/v1/x"), "/v2/v1/x");
        assert_eq!(joined("", None, b"/v1/x"), "/v1/x");
        assert_eq!(joined("/v1", None, b"/x/v1/y"), "/v1/x/v1/y");
        assert_eq!(joined("/v1", None, b"/api/v1/x"), "/v1/api/v1/x");
    }

    #[test]
    fn base_query_and_client_query_join_with_ampersand() {
        assert_eq!(joined("/v1", Some("a=1"), b"/x?b=2"), "/v1/x?a=1&b=2");
    }

    #[test]
    fn base_query_alone() {
        assert_eq!(joined("/v1", Some("a=1"), b"/x"), "/v1/x?a=1");
        assert_eq!(joined("/v1", Some("a=1"), b"/x?"), "/v1/x?a=1");
    }

    #[test]
    fn client_query_is_forwarded_verbatim() {
        assert_eq!(joined("", None, b"/x?b=%20&c=d%2F"), "/x?b=%20&c=d%2F");
        assert_eq!(joined("", Some(""), b"/x?"), "/x?");
    }

    // ---- request line ----

    #[test]
    fn request_line_has_method_joined_target_and_client_version() {
        let raw = b"POST /chat?stream=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n";
        let extra = [];
        let mut req = base_req(b"/chat?stream=1", &extra);
        req.base_path = "/v1";
        req.base_query = Some("api-version=2");
        let r = rewrite_with(raw, &req);
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/chat?api-version=2&stream=1");
        assert_eq!(r.version, 1);
    }

    #[test]
    fn http10_client_is_forwarded_as_http10() {
        let r = rewrite(b"GET /x HTTP/1.0\r\n\r\n");
        assert_eq!(r.version, 0);
        assert!(r.bytes.starts_with(b"GET /x HTTP/1.0\r\n"));
    }

    #[test]
    fn http10_upstream_request_asks_for_keep_alive() {
        let r = rewrite(b"GET /x HTTP/1.0\r\nConnection: close\r\n\r\n");
        assert_eq!(r.all("connection"), vec![&b"keep-alive"[..]]);
    }

    #[test]
    fn http11_upstream_request_has_no_connection_header() {
        let r = rewrite(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(r.all("connection").is_empty());
    }

    #[test]
    fn other_methods_are_copied_as_sent() {
        let r = rewrite(b"PROPFIND /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.method, "PROPFIND");
    }

    // ---- hop-by-hop and replaced headers ----

    #[test]
    fn every_hop_by_hop_header_is_dropped() {
        let r = rewrite(
            b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\nTE: gzip\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n\
              Proxy-Authorization: Basic eA==\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\
              Accept: */*\r\n\r\n",
        );
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "expect",
        ] {
            assert!(r.all(gone).is_empty(), "{gone} was forwarded");
        }
        assert_eq!(r.one("accept"), Some(&b"*/*"[..]));
        assert_eq!(r.one("content-length"), Some(&b"2"[..]));
    }

    #[test]
    fn headers_named_by_connection_are_dropped() {
        let r = rewrite(
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, x-other\r\nX-Secret: 1\r\nX-Other: 2\r\nX-Kept: 3\r\n\r\n",
        );
        assert!(r.all("x-secret").is_empty());
        assert!(r.all("x-other").is_empty());
        assert_eq!(r.one("x-kept"), Some(&b"3"[..]));
    }

    #[test]
    fn connection_cannot_remove_content_length() {
        let r = rewrite(
            b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(r.one("content-length"), Some(&b"5"[..]));
    }

    #[test]
    fn te_trailers_is_kept() {
        let r = rewrite(b"GET /x HTTP/1.1\r\nHost: a\r\nTE: Trailers\r\n\r\n");
        assert_eq!(r.one("te"), Some(&b"trailers"[..]));
    }

    #[test]
    fn te_trailers_named_by_connection_is_kept() {
        let r = rewrite(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: TE\r\nTE: trailers\r\n\r\n");
        assert_eq!(r.one("te"), Some(&b"trailers"[..]));
        assert!(r.all("connection").is_empty());
    }

    #[test]
    fn te_with_other_codings_is_dropped() {
        let r = rewrite(b"GET /x HTTP/1.1\r\nHost: a\r\nTE: trailers, deflate\r\n\r\n");
        assert!(r.all("te").is_empty());
    }

    #[test]
    fn chunked_body_gets_transfer_encoding_chunked_back() {
        let r = rewrite(b"POST /x HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  Chunked \r\n\r\n");
        assert_eq!(r.all("transfer-encoding"), vec![&b"chunked"[..]]);
        assert!(r.all("content-length").is_empty());
    }

    #[test]
    fn identical_content_lengths_are_sent_once() {
        let r = rewrite(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\ncontent-length: 005\r\n\r\n",
        );
        assert_eq!(r.all("content-length"), vec![&b"5"[..]]);
    }

    #[test]
    fn host_becomes_the_upstream_authority_and_forwarded_host_the_clients() {
        let r = rewrite(b"GET /x HTTP/1.1\r\nHost: public.example\r\n\r\n");
        assert_eq!(r.one("host"), Some(&b"upstream.example:8000"[..]));
        assert_eq!(r.one("x-forwarded-host"), Some(&b"public.example"[..]));
        assert_eq!(r.names()[0], "Host");
    }

    #[test]
    fn no_client_host_means_no_forwarded_host() {
        let r = rewrite(b"GET /x HTTP/1.0\r\n\r\n");
        assert!(r.all("x-forwarded-host").is_empty());
        assert_eq!(r.one("host"), Some(&b"upstream.example:8000"[..]));
    }

    #[test]
    fn client_forwarded_headers_are_replaced() {
        let r = rewrite(
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n",
        );
        assert_eq!(r.one("x-forwarded-for"), Some(&b"10.1.2.3"[..]));
        assert_eq!(r.one("x-forwarded-proto"), Some(&b"http"[..]));
        assert_eq!(r.one("x-forwarded-host"), Some(&b"a"[..]));
    }

    #[test]
    fn unix_clients_get_no_forwarded_for() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
        let mut req = base_req(b"/x", &[]);
        req.client_ip = None;
        let r = rewrite_with(raw, &req);
        assert!(r.all("x-forwarded-for").is_empty());
    }

    #[test]
    fn ipv6_and_mapped_ipv4_clients() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut req = base_req(b"/x", &[]);
        req.client_ip = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(
            rewrite_with(raw, &req).one("x-forwarded-for"),
            Some(&b"::1"[..])
        );
        req.client_ip = Some(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()));
        assert_eq!(
            rewrite_with(raw, &req).one("x-forwarded-for"),
            Some(&b"192.0.2.7"[..])
        );
    }

    #[test]
    fn authorization_is_stripped_when_checked() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer client\r\n\r\n";
        let mut req = base_req(b"/x", &[]);
        req.strip_authorization = true;
        assert!(rewrite_with(raw, &req).all("authorization").is_empty());
    }

    #[test]
    fn authorization_is_kept_when_not_checked() {
        let r = rewrite(b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer client\r\n\r\n");
        assert_eq!(r.one("authorization"), Some(&b"Bearer client"[..]));
    }

    #[test]
    fn request_id_is_replaced_when_we_send_one() {
        let r = rewrite(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: client-id\r\n\r\n");
        assert_eq!(r.one("x-request-id"), Some(&b"rid-1"[..]));
    }

    #[test]
    fn client_request_id_is_kept_when_we_send_none() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: client-id\r\n\r\n";
        let mut req = base_req(b"/x", &[]);
        req.request_id = b"";
        assert_eq!(
            rewrite_with(raw, &req).one("x-request-id"),
            Some(&b"client-id"[..])
        );
    }

    #[test]
    fn end_to_end_headers_keep_their_order_and_case() {
        let r = rewrite(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nX-B: 1\r\nx-a: 2\r\nContent-Length: 2\r\n\r\n",
        );
        let names = r.names();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("Content-Type") < pos("X-B"));
        assert!(pos("X-B") < pos("x-a"));
        assert!(pos("x-a") < pos("Content-Length"));
    }

    // ---- extra headers ----

    fn extras(pairs: &[(&str, &str)]) -> Vec<(String, Secret)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), Secret::new(v.to_string())))
            .collect()
    }

    #[test]
    fn extra_headers_win_case_insensitively_and_come_last() {
        let raw =
            b"GET /x HTTP/1.1\r\nHost: a\r\nauthorization: Bearer client\r\nX-Model-Tag: c\r\n\r\n";
        let extra = extras(&[("Authorization", "Bearer upstream"), ("x-model-tag", "m")]);
        let r = rewrite_with(raw, &base_req(b"/x", &extra));
        assert_eq!(r.all("authorization"), vec![&b"Bearer upstream"[..]]);
        assert_eq!(r.all("x-model-tag"), vec![&b"m"[..]]);
        let names = r.names();
        assert_eq!(&names[names.len() - 2..], ["Authorization", "x-model-tag"]);
    }

    #[test]
    fn extra_host_overrides_the_authority() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let extra = extras(&[("HOST", "api.provider.com")]);
        let r = rewrite_with(raw, &base_req(b"/x", &extra));
        assert_eq!(r.all("host"), vec![&b"api.provider.com"[..]]);
    }

    #[test]
    fn extra_headers_replace_generated_forwarding_headers() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let extra = extras(&[("X-Forwarded-Proto", "https"), ("X-Request-Id", "fixed")]);
        let r = rewrite_with(raw, &base_req(b"/x", &extra));
        assert_eq!(r.one("x-forwarded-proto"), Some(&b"https"[..]));
        assert_eq!(r.one("x-request-id"), Some(&b"fixed"[..]));
    }

    #[test]
    fn extra_headers_cannot_touch_framing_or_inject_lines() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n";
        let extra = extras(&[
            ("Content-Length", "99"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("X-Evil", "a\r\nInjected: 1"),
            ("X-Fine", "ok"),
        ]);
        let r = rewrite_with(raw, &base_req(b"/x", &extra));
        assert_eq!(r.all("content-length"), vec![&b"2"[..]]);
        assert!(r.all("transfer-encoding").is_empty());
        assert!(r.all("connection").is_empty());
        assert!(r.all("x-evil").is_empty());
        assert!(r.all("injected").is_empty());
        assert_eq!(r.one("x-fine"), Some(&b"ok"[..]));
    }

    #[test]
    fn route_target_differs_from_the_client_target() {
        let raw =
            b"POST /route/m/v1/embeddings?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n";
        let mut req = base_req(b"/v1/embeddings?x=1", &[]);
        req.base_path = "/base";
        assert_eq!(rewrite_with(raw, &req).path, "/base/v1/embeddings?x=1");
    }

    // ---- response heads ----

    fn response(raw: &[u8], method: Method, request_id: &[u8], close: bool) -> Vec<u8> {
        let head = match parse_response(raw, method) {
            Ok(Parse::Complete(h)) => h,
            other => panic!("{other:?}"),
        };
        let mut out = Vec::new();
        write_client_response_head(raw, &head, request_id, close, &mut out);
        out
    }

    type Fields = Vec<(String, Vec<u8>)>;

    fn parse_back(out: &[u8]) -> (u16, Fields) {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut p = httparse::Response::new(&mut hs);
        assert_eq!(p.parse(out), Ok(httparse::Status::Complete(out.len())));
        (
            p.code.unwrap(),
            p.headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect(),
        )
    }

    fn values<'a>(hs: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
        hs.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    #[test]
    fn response_status_line_is_kept_with_version_11() {
        let out = response(
            b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n",
            Method::Get,
            b"",
            false,
        );
        assert!(out.starts_with(b"HTTP/1.1 418 I'm a teapot\r\n"));
        let out = response(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            Method::Get,
            b"",
            false,
        );
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let out = response(b"HTTP/1.1 204\r\n\r\n", Method::Get, b"", false);
        assert!(out.starts_with(b"HTTP/1.1 204\r\n"));
    }

    #[test]
    fn response_hop_by_hop_headers_are_dropped() {
        let out = response(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Hop: 1\r\n\
              Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nTrailer: X-Usage\r\n\
              Proxy-Authenticate: Basic\r\n\r\n",
            Method::Post,
            b"",
            false,
        );
        let (_, hs) = parse_back(&out);
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
            "x-hop",
        ] {
            assert!(values(&hs, gone).is_empty(), "{gone} was forwarded");
        }
        assert_eq!(values(&hs, "transfer-encoding"), vec![&b"chunked"[..]]);
        assert_eq!(values(&hs, "trailer"), vec![&b"X-Usage"[..]]);
        assert_eq!(values(&hs, "proxy-authenticate"), vec![&b"Basic"[..]]);
        assert_eq!(values(&hs, "content-type"), vec![&b"text/event-stream"[..]]);
    }

    #[test]
    fn response_connection_cannot_remove_framing_headers() {
        let out = response(
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length, Transfer-Encoding\r\nContent-Length: 2\r\n\r\n",
            Method::Get,
            b"",
            false,
        );
        let (_, hs) = parse_back(&out);
        assert_eq!(values(&hs, "content-length"), vec![&b"2"[..]]);
    }

    #[test]
    fn response_gets_our_request_id_when_upstream_sent_none() {
        let out = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Method::Get,
            b"rid-9",
            false,
        );
        let (_, hs) = parse_back(&out);
        assert_eq!(values(&hs, "x-request-id"), vec![&b"rid-9"[..]]);
    }

    #[test]
    fn response_keeps_upstream_request_id() {
        let out = response(
            b"HTTP/1.1 200 OK\r\nx-request-id: up-1\r\nContent-Length: 0\r\n\r\n",
            Method::Get,
            b"rid-9",
            false,
        );
        let (_, hs) = parse_back(&out);
        assert_eq!(values(&hs, "x-request-id"), vec![&b"up-1"[..]]);
    }

    #[test]
    fn response_close_adds_connection_close() {
        let out = response(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n",
            Method::Get,
            b"",
            true,
        );
        let (_, hs) = parse_back(&out);
        assert_eq!(values(&hs, "connection"), vec![&b"close"[..]]);
    }

    #[test]
    fn response_without_close_has_no_connection_header() {
        let out = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Method::Get,
            b"",
            false,
        );
        let (_, hs) = parse_back(&out);
        assert!(values(&hs, "connection").is_empty());
    }

    #[test]
    fn response_head_excludes_body_bytes() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let out = response(raw, Method::Get, b"", false);
        assert!(out.ends_with(b"Content-Length: 5\r\n\r\n"));
    }

    #[test]
    fn informational_response_is_rewritten_too() {
        let out = response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
            Method::Post,
            b"",
            false,
        );
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}
