//! Every error a client can see, as one enum, and the one place that turns it into an
//! OpenAI-shaped JSON response (SPEC.md §6). CONTRACT STUB: the h1 helper replaces bodies.

use crate::h1::{ChunkedError, HeadError};
use crate::scan::ScanError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed HTTP, bad framing (400 `bad_request`).
    BadRequest(&'static str),
    /// Head over 64 KiB or over 100 headers (431 `bad_request`).
    HeadTooLarge,
    /// Unknown transfer coding (501).
    NotImplemented(&'static str),
    /// Request head not complete within the header timeout (408).
    RequestTimeout,
    /// A body with Content-Encoding cannot be scanned for `model` (415).
    UnsupportedMediaType,
    /// 401 `invalid_api_key`, with `WWW-Authenticate: Bearer`.
    InvalidApiKey,
    /// 403 (e.g. /admin from a non-local peer).
    Forbidden(&'static str),
    /// Unknown model (404 `model_not_found`), naming it.
    ModelNotFound(String),
    /// A local path with nothing there (404 `not_found`).
    NotFound,
    /// 405 on a local endpoint with a wrong method.
    MethodNotAllowed,
    /// 400 `invalid_json` / `missing_model` / `invalid_model` / `duplicate_model`.
    Scan(ScanError),
    /// 413 `body_too_large`.
    BodyTooLarge,
    /// 503 `overloaded` (concurrency cap or buffer budget).
    Overloaded,
    /// 502 `upstream_unavailable`.
    UpstreamUnavailable,
    /// 504 `upstream_timeout`.
    UpstreamTimeout,
    /// 500 with a message (e.g. reload problems).
    Internal(String),
}

impl From<HeadError> for ApiError {
    fn from(_e: HeadError) -> ApiError {
        ApiError::BadRequest("malformed request")
    }
}

impl From<ChunkedError> for ApiError {
    fn from(_e: ChunkedError) -> ApiError {
        ApiError::BadRequest("invalid chunked body")
    }
}

impl From<ScanError> for ApiError {
    fn from(e: ScanError) -> ApiError {
        ApiError::Scan(e)
    }
}

impl ApiError {
    pub fn status(&self) -> u16 {
        500
    }
}

/// Writes the full error response (head and JSON body) into `out`. `close` adds
/// `Connection: close`; `head_only` (a HEAD request) omits the body but keeps its length.
pub fn write_error_response(_err: &ApiError, _close: bool, _head_only: bool, _out: &mut Vec<u8>) {}

/// Writes a `200`-style JSON response (status, body) for local endpoints.
pub fn write_json_response(
    _status: u16,
    _body: &[u8],
    _close: bool,
    _head_only: bool,
    _out: &mut Vec<u8>,
) {
}
