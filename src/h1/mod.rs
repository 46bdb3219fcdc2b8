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
pub use request::{head_end, parse_request};
pub use response::parse_response;
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
