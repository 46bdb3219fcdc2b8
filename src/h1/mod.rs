//! Sans-IO HTTP/1.1: head parsing with limits, framing (RFC 9112 §6), the chunked observer,
//! head rewriting. CONTRACT STUB: the h1 helper replaces the bodies, keeping the public API.
//! Everything here works on byte slices and offsets; nothing allocates per byte.

use std::net::IpAddr;
use std::ops::Range;

use crate::secrets::Secret;

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
    Other,
}

/// A complete parse, or "need more bytes" (never an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    Complete(T),
    Partial,
}

/// How the request body is delimited.
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
    /// the path part of it (`/` when empty).
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
}

/// Parses a request head at the start of `buf`.
pub fn parse_request(_buf: &[u8]) -> Result<Parse<RequestHead>, HeadError> {
    Ok(Parse::Partial)
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
}

impl ResponseHead {
    /// A 1xx other than 101: forward it and keep waiting for the final response.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses a response head at the start of `buf`; `request_method` decides bodiless HEAD.
pub fn parse_response(
    _buf: &[u8],
    _request_method: Method,
) -> Result<Parse<ResponseHead>, HeadError> {
    Ok(Parse::Partial)
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

/// Writes the upstream request head for `head` (parsed from `raw`) into `out`: request line
/// with joined path and query, hop-by-hop and `Expect` dropped, `Host`/`X-Forwarded-*`/
/// `X-Request-Id` set, `Transfer-Encoding: chunked` re-added when chunked, extra headers last.
pub fn write_upstream_request_head(
    _raw: &[u8],
    _head: &RequestHead,
    _req: &UpstreamRequest<'_>,
    _out: &mut Vec<u8>,
) {
}

/// Writes the client response head for `head` (parsed from `raw`) into `out`: status line as
/// received, hop-by-hop headers dropped (framing headers kept as sent), `X-Request-Id` added
/// when the upstream did not send one, and `Connection: close` when `close`.
pub fn write_client_response_head(
    _raw: &[u8],
    _head: &ResponseHead,
    _request_id: &[u8],
    _close: bool,
    _out: &mut Vec<u8>,
) {
}

/// Why a chunked body is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    BadSize,
    SizeOverflow,
    BadLineEnding,
    ExtensionTooLong,
    TrailersTooLarge,
    ForbiddenTrailer,
}

/// Finds where a body ends without copying it; `on_data` sees the payload bytes.
#[derive(Debug, Clone)]
pub enum BodyTracker {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl BodyTracker {
    pub fn for_request(_framing: RequestFraming) -> BodyTracker {
        BodyTracker::Done
    }
    pub fn for_response(_framing: ResponseFraming) -> BodyTracker {
        BodyTracker::Done
    }
    /// Observes `input`; returns how many bytes belong to the body. Less than `input.len()`
    /// only when the body ended inside `input`.
    pub fn feed(
        &mut self,
        input: &[u8],
        _on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, ChunkedError> {
        Ok(input.len())
    }
    pub fn is_done(&self) -> bool {
        matches!(self, BodyTracker::Done)
    }
}

/// A byte-resumable chunked-coding observer (RFC 9112 §7.1).
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {}

/// Where the head ends (index after the empty line), searching from `from - 3` so a caller
/// re-parses only when the end has arrived.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    memchr::memmem::find(&buf[start.min(buf.len())..], b"\r\n\r\n").map(|i| start + i + 4)
}
