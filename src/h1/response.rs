//! Response heads from upstreams: [`parse_response`] learns the status, the framing and
//! whether the upstream connection may be reused. Same limits as requests.

use super::fields::{list_elements, trim_ows, ConnectionTokens, ContentLength, TransferEncoding};
use super::request::httparse_reason;
use super::{
    BodyShape, ContentCoding, HeadError, Method, Parse, ResponseFraming, ResponseHead, Version,
    MAX_HEADERS, MAX_HEAD_BYTES,
};

/// Parses a response head at the start of `buf`; `request_method` decides bodiless HEAD.
///
/// Errors: `TooLarge`/`TooManyHeaders` as for requests; `Malformed` for what httparse
/// refuses; `BadFraming` for framing we must not guess at (see [`response_framing`]). The
/// engine answers all of them with 502 and drops the upstream connection.
pub fn parse_response(
    buf: &[u8],
    request_method: Method,
) -> Result<Parse<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
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
    let version = match resp.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HeadError::Malformed("unsupported HTTP version")),
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(HeadError::Malformed("invalid status code"));
    }

    let mut te = TransferEncoding::default();
    let mut cl = ContentLength::default();
    let mut connection = ConnectionTokens::default();
    let mut codings = Codings::default();
    let mut shape = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te.add(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl.add(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        } else if h.name.eq_ignore_ascii_case("content-encoding") {
            codings.add(h.value);
        } else if h.name.eq_ignore_ascii_case("content-type") && shape.is_none() {
            shape = Some(body_shape(h.value));
        }
    }
    if te.has_other_coding() {
        // `gzip, chunked`: the payload under the chunks is encoded too.
        codings.stacked = true;
    }

    let framing = response_framing(status, request_method, &te, &cl)?;
    let http11 = version == Version::Http11;
    let keep_alive = connection.persistent(http11)
        && framing != ResponseFraming::UntilClose
        // RFC 9112 §6.1: TE on HTTP/1.0 means faulty framing; close after the message.
        && !(version == Version::Http10 && te.is_present())
        && status != 101;

    Ok(Parse::Complete(ResponseHead {
        status,
        version,
        head_len,
        framing,
        keep_alive,
        coding: codings.get(),
        shape: shape.unwrap_or_default(),
    }))
}

/// The codings of `Content-Encoding` lines, folded into one list.
#[derive(Debug, Default)]
struct Codings {
    first: Option<ContentCoding>,
    stacked: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        for coding in list_elements(value) {
            if coding.is_empty() || coding.eq_ignore_ascii_case(b"identity") {
                continue;
            }
            let coding =
                if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                    ContentCoding::Gzip
                } else if coding.eq_ignore_ascii_case(b"deflate") {
                    ContentCoding::Deflate
                } else if coding.eq_ignore_ascii_case(b"br") {
                    ContentCoding::Br
                } else if coding.eq_ignore_ascii_case(b"zstd") {
                    ContentCoding::Zstd
                } else {
                    ContentCoding::Other
                };
            if self.first.is_some() {
                self.stacked = true;
            }
            self.first = Some(coding);
        }
    }

    fn get(&self) -> ContentCoding {
        match self.first {
            _ if self.stacked => ContentCoding::Other,
            Some(coding) => coding,
            None => ContentCoding::Identity,
        }
    }
}

/// The shape of a body from its `Content-Type` value (media type only, case-insensitive).
pub fn body_shape(content_type: &[u8]) -> BodyShape {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    let media = trim_ows(media);
    if media.eq_ignore_ascii_case(b"text/event-stream") {
        BodyShape::Sse
    } else if [
        &b"application/x-ndjson"[..],
        b"application/ndjson",
        b"application/jsonl",
        b"application/x-jsonlines",
        b"application/jsonlines",
    ]
    .iter()
    .any(|t| media.eq_ignore_ascii_case(t))
    {
        BodyShape::JsonLines
    } else {
        BodyShape::Document
    }
}

/// Response framing, RFC 9112 §6.3 in hyper's `Client::decoder` order:
/// 1. `101 Switching Protocols` → until close (the engine tunnels it after a WebSocket handshake
///    and refuses it otherwise; the framing is not used either way).
/// 2. Any other 1xx → no body; `Transfer-Encoding` on a 1xx is invalid (nginx#1427) → error.
/// 3. A 2xx to `CONNECT` → until close: the connection is a tunnel from the empty line on
///    (§6.3 rule 2), which this parser does not model. `parse_request` refuses `CONNECT`, so
///    no such answer is ever awaited; if one were, the upstream would never be pooled.
/// 4. `204`, `304`, and any answer to `HEAD` → no body, whatever the headers say.
/// 5. `Transfer-Encoding` and `Content-Length` together → error (nginx answers 502 too): an
///    intermediary would have to drop the `Content-Length`, and we forward headers as sent.
/// 6. `Transfer-Encoding`: `chunked` twice → error; `chunked` last → chunked; otherwise →
///    until close (§6.3 rule 4 for responses). Other codings (`gzip, chunked`) are fine:
///    the body is forwarded as is and only the chunked layer is observed.
/// 7. `Content-Length`: strict digits, identical repeats → length; else error.
/// 8. Neither → until close.
fn response_framing(
    status: u16,
    method: Method,
    te: &TransferEncoding,
    cl: &ContentLength,
) -> Result<ResponseFraming, HeadError> {
    if status == 101 {
        return Ok(ResponseFraming::UntilClose);
    }
    if (100..200).contains(&status) {
        if te.is_present() {
            return Err(HeadError::BadFraming("Transfer-Encoding on a 1xx response"));
        }
        return Ok(ResponseFraming::Empty);
    }
    if method == Method::Connect && (200..300).contains(&status) {
        return Ok(ResponseFraming::UntilClose);
    }
    if status == 204 || status == 304 || method == Method::Head {
        return Ok(ResponseFraming::Empty);
    }
    if te.is_present() {
        if cl.is_present() {
            return Err(HeadError::BadFraming(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if te.chunked_twice() {
            return Err(HeadError::BadFraming("chunked applied more than once"));
        }
        return Ok(if te.last_is_chunked() {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        });
    }
    match cl.get() {
        Err(reason) => Err(HeadError::BadFraming(reason)),
        Ok(Some(n)) => Ok(ResponseFraming::Length(n)),
        Ok(None) => Ok(ResponseFraming::UntilClose),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_for(raw: &[u8], method: Method) -> ResponseHead {
        match parse_response(raw, method) {
            Ok(Parse::Complete(h)) => h,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn head(raw: &[u8]) -> ResponseHead {
        head_for(raw, Method::Post)
    }

    fn err(raw: &[u8]) -> HeadError {
        match parse_response(raw, Method::Post) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_2xx_to_connect_is_a_tunnel_never_reused() {
        let raw = b"HTTP/1.1 200 Connection established\r\nContent-Length: 0\r\n\r\n";
        let h = head_for(raw, Method::Connect);
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);
        // A refusal of the tunnel is an ordinary framed answer.
        let raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(
            head_for(raw, Method::Connect).framing,
            ResponseFraming::Length(2)
        );
    }

    #[test]
    fn content_length_response_is_length_and_reusable() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world!";
        let h = head(raw);
        assert_eq!(h.status, 200);
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.head_len, raw.len() - 12);
        assert_eq!(h.framing, ResponseFraming::Length(12));
        assert!(h.keep_alive);
    }

    fn coding_of(headers: &str) -> ContentCoding {
        let raw = format!("HTTP/1.1 200 OK\r\n{headers}Content-Length: 0\r\n\r\n");
        head(raw.as_bytes()).coding
    }

    #[test]
    fn content_encoding_names_the_coding_case_insensitively() {
        assert_eq!(coding_of(""), ContentCoding::Identity);
        assert_eq!(
            coding_of("Content-Encoding: identity\r\n"),
            ContentCoding::Identity
        );
        assert_eq!(coding_of("Content-Encoding: GZip\r\n"), ContentCoding::Gzip);
        assert_eq!(
            coding_of("content-encoding: x-gzip\r\n"),
            ContentCoding::Gzip
        );
        assert_eq!(
            coding_of("Content-Encoding: deflate\r\n"),
            ContentCoding::Deflate
        );
        assert_eq!(coding_of("Content-Encoding: br\r\n"), ContentCoding::Br);
        assert_eq!(coding_of("Content-Encoding: zstd\r\n"), ContentCoding::Zstd);
        assert_eq!(
            coding_of("Content-Encoding: compress\r\n"),
            ContentCoding::Other
        );
        assert_eq!(
            coding_of("Content-Encoding: identity, , gzip\r\n"),
            ContentCoding::Gzip
        );
    }

    #[test]
    fn stacked_codings_are_other() {
        assert_eq!(
            coding_of("Content-Encoding: deflate, gzip\r\n"),
            ContentCoding::Other
        );
        assert_eq!(
            coding_of("Content-Encoding: gzip\r\nContent-Encoding: br\r\n"),
            ContentCoding::Other
        );
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(head(raw).coding, ContentCoding::Other);
    }

    #[test]
    fn content_type_gives_the_body_shape() {
        assert_eq!(body_shape(b"text/event-stream"), BodyShape::Sse);
        assert_eq!(
            body_shape(b"Text/Event-Stream; charset=utf-8"),
            BodyShape::Sse
        );
        assert_eq!(body_shape(b"application/x-ndjson"), BodyShape::JsonLines);
        assert_eq!(body_shape(b"application/jsonl"), BodyShape::JsonLines);
        assert_eq!(body_shape(b"application/json"), BodyShape::Document);
        assert_eq!(body_shape(b""), BodyShape::Document);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Type: x/y\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            head(raw).shape,
            BodyShape::Sse,
            "the first Content-Type counts"
        );
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(head(raw).shape, BodyShape::Document);
    }

    #[test]
    fn incomplete_response_is_partial() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-", Method::Get),
            Ok(Parse::Partial)
        );
    }

    #[test]
    fn chunked_response_is_chunked() {
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(h.keep_alive);
    }

    #[test]
    fn gzip_then_chunked_response_is_chunked() {
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Chunked);
    }

    #[test]
    fn te_not_ending_in_chunked_reads_until_close() {
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);
    }

    #[test]
    fn te_and_cl_together_is_bad_framing() {
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn chunked_twice_response_is_bad_framing() {
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn no_framing_headers_reads_until_close() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);
    }

    #[test]
    fn differing_content_lengths_are_bad_framing() {
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn signed_content_length_is_bad_framing() {
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n"),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn identical_content_lengths_are_one_length() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Length(3));
    }

    #[test]
    fn head_request_response_is_empty_despite_content_length() {
        let h = head_for(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            Method::Head,
        );
        assert_eq!(h.framing, ResponseFraming::Empty);
        assert!(h.keep_alive);
    }

    #[test]
    fn head_request_response_is_empty_despite_chunked() {
        let h = head_for(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::Head,
        );
        assert_eq!(h.framing, ResponseFraming::Empty);
    }

    #[test]
    fn no_content_is_empty() {
        let h = head(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Empty);
        assert!(h.keep_alive);
    }

    #[test]
    fn not_modified_is_empty() {
        let h = head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Empty);
        assert!(h.keep_alive);
    }

    #[test]
    fn continue_is_informational_and_empty() {
        let h = head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n");
        assert_eq!(h.framing, ResponseFraming::Empty);
        assert!(h.is_informational());
        assert_eq!(h.head_len, 25);
    }

    #[test]
    fn early_hints_is_informational() {
        let h = head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n");
        assert!(h.is_informational());
        assert_eq!(h.framing, ResponseFraming::Empty);
    }

    #[test]
    fn informational_with_te_is_bad_framing() {
        assert!(matches!(
            err(b"HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::BadFraming(_)
        ));
    }

    #[test]
    fn switching_protocols_is_until_close_and_not_reusable() {
        let h = head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
        assert!(!h.is_informational());
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);
    }

    #[test]
    fn connection_close_response_is_not_reusable() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Length(0));
        assert!(!h.keep_alive);
    }

    #[test]
    fn http10_response_is_not_reusable_by_default() {
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(h.version, Version::Http10);
        assert!(!h.keep_alive);
    }

    #[test]
    fn http10_keep_alive_response_is_reusable() {
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok");
        assert!(h.keep_alive);
    }

    #[test]
    fn http10_response_with_te_is_chunked_but_not_reusable() {
        let h = head(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.keep_alive);
    }

    #[test]
    fn http10_close_delimited_response_reads_until_close() {
        let h = head(b"HTTP/1.0 200 OK\r\n\r\nbody until EOF");
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);
    }

    #[test]
    fn response_without_reason_phrase_parses() {
        assert_eq!(
            head(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").status,
            200
        );
    }

    #[test]
    fn garbage_status_line_is_malformed() {
        assert!(matches!(
            err(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            HeadError::Malformed(_)
        ));
        assert!(matches!(
            err(b"SSH-2.0-OpenSSH\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn response_with_101_headers_is_too_many() {
        let mut raw = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..101 {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(err(raw.as_bytes()), HeadError::TooManyHeaders);
    }

    #[test]
    fn response_head_over_64k_is_too_large() {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(err(raw.as_bytes()), HeadError::TooLarge);
        let partial = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(err(partial.as_bytes()), HeadError::TooLarge);
    }

    #[test]
    fn obs_fold_in_response_is_malformed() {
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }
}
