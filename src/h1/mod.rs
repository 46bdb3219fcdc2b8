//! Sans-IO HTTP/1.1: head parsing with limits, framing (RFC 9112 §6), the chunked observer,
//! head rewriting. Everything here works on byte slices and offsets; nothing allocates per
//! byte and nothing here touches a socket, a clock or the config.
//!
//! - [`request`]: [`parse_request`], [`head_end`] and the request framing rules.
//! - [`response`]: [`parse_response`] and the response framing rules.
//! - [`rewrite`]: the upstream request head and the client response head.
//! - [`chunked`]: [`BodyTracker`] and the byte-resumable [`ChunkedDecoder`].
//! - `fields`: header token lists, `Content-Length`/`Transfer-Encoding` values (private).
//!
//! The types shared by the engine live in this file; the functions are re-exported here.

use std::net::IpAddr;
use std::ops::Range;

use crate::secrets::Secret;

pub mod chunked;
mod fields;
pub mod request;
pub mod response;
pub mod rewrite;

pub use chunked::{BodyTracker, ChunkedDecoder};
pub(crate) use fields::put_u64;
pub use request::{head_end, parse_request};
pub use response::{body_shape, parse_response};
pub use rewrite::{write_client_response_head, write_upstream_request_head};

/// Largest request or response head (431 above it).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a head (431 above it).
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    /// Refused by `parse_request`; known so that a 2xx answer to it is framed as the tunnel it
    /// would be (never pooled).
    Connect,
    Other,
}

/// A complete parse, or "need more bytes" (never an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    Complete(T),
    Partial,
}

/// How the request body is delimited. `Length(0)` (an explicit `Content-Length: 0`) is kept
/// apart from `Empty` (no framing header) so the rewrite can send the header on; both mean
/// no body bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Why a head was refused; `error::ApiError::from` maps it to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over MAX_HEAD_BYTES (431).
    TooLarge,
    /// Over MAX_HEADERS (431).
    TooManyHeaders,
    /// httparse refused it, bad target, bad version... (400).
    Malformed(&'static str),
    /// CL+TE, bad or differing Content-Length, TE on HTTP/1.0, TE not ending in chunked (400).
    BadFraming(&'static str),
    /// A transfer coding we do not know (501).
    UnsupportedCoding,
    /// HTTP/1.1 without exactly one Host (400).
    BadHost,
}

/// A parsed request head. Ranges index the buffer given to [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The request target in origin form (path plus `?query`); for an absolute-form target,
    /// the path part of it (`/` when empty: then a one-byte range over the last `/` of
    /// `://`; `http://host?q` is refused as Malformed, see `request::target_range`).
    pub target: Range<usize>,
    pub version: Version,
    /// Bytes of the head including the final empty line.
    pub head_len: usize,
    pub framing: RequestFraming,
    /// Persistent connection after this exchange, from version and `Connection`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1 with a non-empty body.
    pub expect_continue: bool,
    /// Value of `Authorization`, if present.
    pub authorization: Option<Range<usize>>,
    /// Value of `Host`, if present.
    pub host: Option<Range<usize>>,
    /// `Content-Encoding` present (the body cannot be scanned).
    pub content_encoded: bool,
    /// Value of `X-Request-Id`, if present.
    pub request_id: Option<Range<usize>>,
    /// Value of the first `Content-Type`, if present (multipart bodies are routed by it).
    pub content_type: Option<Range<usize>>,
    /// A WebSocket handshake: an HTTP/1.1 `GET` with `Connection: upgrade` and
    /// `Upgrade: websocket`. Only then are the upgrade headers forwarded and a `101` answer
    /// turned into a tunnel.
    pub upgrade: bool,
}

/// A parsed response head. Ranges index the buffer given to [`parse_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: Version,
    pub head_len: usize,
    /// Already `Empty` for HEAD requests, 1xx, 204 and 304.
    pub framing: ResponseFraming,
    /// The upstream connection may be reused after this response, as far as its head says.
    pub keep_alive: bool,
    /// How the body is encoded (`Content-Encoding`), for reading its token counts.
    pub coding: ContentCoding,
    /// Whether the body is a stream of events (`Content-Type`), for generation timing.
    pub shape: BodyShape,
}

/// The content coding of a response body, as far as reading its token counts goes: the
/// `Content-Encoding` list with `identity` and empty elements left out (RFC 9110 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentCoding {
    #[default]
    Identity,
    /// `gzip` (or its old alias `x-gzip`).
    Gzip,
    /// `deflate`: zlib-wrapped by the RFC, raw deflate from some servers.
    Deflate,
    Br,
    Zstd,
    /// Any other coding, several codings stacked, or a transfer coding besides `chunked`.
    Other,
}

/// What a response body holds, from its `Content-Type` media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyShape {
    /// One document (JSON, text, anything not below).
    #[default]
    Document,
    /// `text/event-stream`: server-sent events.
    Sse,
    /// NDJSON / JSON Lines (`application/x-ndjson`, Ollama's streams): one document a line.
    JsonLines,
}

impl ResponseHead {
    /// A 1xx other than 101: forward it and keep waiting for the final response.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// What the upstream request head needs besides the client's head.
pub struct UpstreamRequest<'a> {
    /// `Host` value (the upstream's authority; `localhost` for unix).
    pub authority: &'a str,
    /// Model URL base path (`""` or `/base`).
    pub base_path: &'a str,
    /// Model URL query (without `?`).
    pub base_query: Option<&'a str>,
    /// Path and query to forward (the client's target, or `/{rest}?q` for `/route/`).
    pub target: &'a [u8],
    /// The client's IP for `X-Forwarded-For` (None on unix listeners).
    pub client_ip: Option<IpAddr>,
    /// `X-Forwarded-Proto`: `http` or `https`.
    pub proto: &'static str,
    /// Drop `Authorization` (modelgate checked it).
    pub strip_authorization: bool,
    /// `X-Request-Id` to send (the client's or a generated one).
    pub request_id: &'a [u8],
    /// Per-model headers, applied last, replacing same-named ones.
    pub extra_headers: &'a [(String, Secret)],
}

/// Why a chunked body is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// A chunk-size line that is not hex digits (optionally followed by `;ext` or spaces).
    BadSize,
    /// A chunk size over `u64` (or more than 16 hex digits, leading zeros included).
    SizeOverflow,
    /// Anything but CRLF where a line ends (LF-only lines are refused: see `chunked`).
    BadLineEnding,
    /// A chunk-size line whose extensions exceed 16 KiB.
    ExtensionTooLong,
    /// Trailer section over 16 KiB or over 100 fields.
    TrailersTooLarge,
    /// `Content-Length`, `Transfer-Encoding` or `Host` in the trailer section.
    ForbiddenTrailer,
    /// A trailer line that is not a valid `name: value` field (added by the h1 module).
    BadTrailer,
}

#[cfg(test)]
pub(crate) mod tests {
    //! Cross-module properties: no input makes the parsers panic, and every prefix of a
    //! valid head is `Partial`.

    use super::*;

    /// xorshift64*: deterministic, dependency-free noise (the multipart tests use it too).
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const SEEDS: [&[u8]; 4] = [
        b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: x, close\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        b"GET http://h/p HTTP/1.0\r\nContent-Length: 5, 5\r\nExpect: 100-continue\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nTrailer: X\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.0 101 Switching\r\nContent-Length: 3\r\nUpgrade: x\r\n\r\nabc",
    ];
    const NOISE: &[u8] = b"\r\n :;,\t\0\x7f\xffchunkedCONTENT-LENGTH0123456789abcdefHTTP/1.";

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(v.len() + 1);
            let b = NOISE[rng.below(NOISE.len())];
            match rng.below(3) {
                0 if at < v.len() => v[at] = b,
                1 if at < v.len() => {
                    v.remove(at);
                }
                _ => v.insert(at, b),
            }
        }
        v
    }

    #[test]
    fn mutated_messages_never_panic_any_parser() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000 {
            let input = mutate(&mut rng, SEEDS[i % SEEDS.len()]);
            let _ = head_end(&input, rng.below(input.len() + 1));
            if let Ok(Parse::Complete(h)) = parse_request(&input) {
                let body = &input[h.head_len..];
                let _ = BodyTracker::for_request(h.framing).feed(body, &mut |_| {});
                let extra = [("X-E".to_owned(), Secret::new("v".to_owned()))];
                let req = UpstreamRequest {
                    authority: "u",
                    base_path: "/b",
                    base_query: Some("q=1"),
                    target: &input[h.target.clone()],
                    client_ip: None,
                    proto: "https",
                    strip_authorization: true,
                    request_id: b"id",
                    extra_headers: &extra,
                };
                let mut out = Vec::new();
                write_upstream_request_head(&input, &h, &req, &mut out);
                let mut hs = [httparse::EMPTY_HEADER; 128];
                let parsed = httparse::Request::new(&mut hs).parse(&out);
                assert_eq!(parsed, Ok(httparse::Status::Complete(out.len())), "{out:?}");
            }
            for method in [Method::Get, Method::Head] {
                if let Ok(Parse::Complete(h)) = parse_response(&input, method) {
                    let body = &input[h.head_len..];
                    let _ = BodyTracker::for_response(h.framing).feed(body, &mut |_| {});
                    let mut out = Vec::new();
                    write_client_response_head(&input, &h, b"id", true, &mut out);
                    let mut hs = [httparse::EMPTY_HEADER; 128];
                    let parsed = httparse::Response::new(&mut hs).parse(&out);
                    assert_eq!(parsed, Ok(httparse::Status::Complete(out.len())), "{out:?}");
                }
            }
            let _ = ChunkedDecoder::new().feed(&input, &mut |_| {});
        }
    }

    #[test]
    fn every_prefix_of_a_valid_head_is_partial() {
        let raw = SEEDS[0];
        let head_len = match parse_request(raw) {
            Ok(Parse::Complete(h)) => h.head_len,
            other => panic!("{other:?}"),
        };
        for n in 0..head_len {
            assert_eq!(parse_request(&raw[..n]), Ok(Parse::Partial), "prefix {n}");
        }
        let resp = SEEDS[2];
        let head_len = match parse_response(resp, Method::Get) {
            Ok(Parse::Complete(h)) => h.head_len,
            other => panic!("{other:?}"),
        };
        for n in 0..head_len {
            assert_eq!(
                parse_response(&resp[..n], Method::Get),
                Ok(Parse::Partial),
                "prefix {n}"
            );
        }
    }
}
