//! Every error a client can see, as one enum, and the one place that turns it into an
//! OpenAI-shaped JSON response (SPEC.md §6):
//! `{"error":{"message":"…","type":"…","param":null,"code":"…"}}` with
//! `Content-Type: application/json` and an exact `Content-Length`.
//!
//! Types follow OpenAI: client mistakes are `invalid_request_error` (a bad API key too, as
//! OpenAI answers it), modelgate's own failures are `server_error`, and failures of the
//! backend behind it are `upstream_error`. Error responses are rare, so they may allocate.

use crate::h1::{put_u64 as push_u64, ChunkedError, HeadError};
use crate::multipart::MultipartError;
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
    /// 401 `invalid_api_key` on the status page, which also challenges `Basic` so a browser
    /// asks for the token (as the password).
    StatusPageAuth,
    /// 403 (e.g. /admin from a non-local peer).
    Forbidden(&'static str),
    /// Unknown model (404 `model_not_found`), naming it.
    ModelNotFound(String),
    /// A scoped token used for a model outside its scope (403 `model_not_allowed`).
    ModelNotAllowed(String),
    /// The token's request limit or token budget is spent (429 `rate_limited`,
    /// `Retry-After` in whole seconds).
    RateLimited { retry_after_secs: u64, limit: Limit },
    /// A local path with nothing there (404 `not_found`).
    NotFound,
    /// 405 on a local endpoint with a wrong method; `allow` is the `Allow` header's value
    /// (RFC 9110 §15.5.6: a 405 names the methods the endpoint takes).
    MethodNotAllowed { allow: &'static str },
    /// 400 `invalid_json` / `missing_model` / `invalid_model` / `duplicate_model`.
    Scan(ScanError),
    /// A multipart body that cannot be routed (400 `invalid_multipart` / `missing_model` /
    /// `invalid_model` / `duplicate_model`).
    Multipart(MultipartError),
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

/// Which of a key's limits refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `requestsPerMinute`.
    Requests,
    /// `tokensPerMinute`.
    Tokens,
}

impl From<HeadError> for ApiError {
    fn from(e: HeadError) -> ApiError {
        match e {
            HeadError::TooLarge | HeadError::TooManyHeaders => ApiError::HeadTooLarge,
            HeadError::UnsupportedCoding => {
                ApiError::NotImplemented("Unsupported Transfer-Encoding: only chunked is accepted")
            }
            // The h1 reasons are short specific phrases ("invalid header value",
            // "both Transfer-Encoding and Content-Length"): they are the message.
            HeadError::Malformed(why) | HeadError::BadFraming(why) => ApiError::BadRequest(why),
            HeadError::BadHost => {
                ApiError::BadRequest("HTTP/1.1 requests need exactly one Host header")
            }
        }
    }
}

impl From<ChunkedError> for ApiError {
    fn from(e: ChunkedError) -> ApiError {
        ApiError::BadRequest(match e {
            ChunkedError::BadSize => "Invalid chunked body: bad chunk size",
            ChunkedError::SizeOverflow => "Invalid chunked body: chunk size too large",
            ChunkedError::BadLineEnding => "Invalid chunked body: lines must end in CRLF",
            ChunkedError::ExtensionTooLong => "Invalid chunked body: chunk extensions too long",
            ChunkedError::TrailersTooLarge => "Invalid chunked body: trailers too large",
            ChunkedError::ForbiddenTrailer => {
                "Invalid chunked body: Content-Length, Transfer-Encoding or Host in trailers"
            }
            ChunkedError::BadTrailer => "Invalid chunked body: malformed trailer field",
        })
    }
}

impl From<ScanError> for ApiError {
    fn from(e: ScanError) -> ApiError {
        ApiError::Scan(e)
    }
}

impl From<MultipartError> for ApiError {
    fn from(e: MultipartError) -> ApiError {
        ApiError::Multipart(e)
    }
}

impl ApiError {
    /// The 401 for a missing or wrong token (`status_page`: also challenge `Basic`).
    pub fn unauthorized(status_page: bool) -> ApiError {
        match status_page {
            true => ApiError::StatusPageAuth,
            false => ApiError::InvalidApiKey,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::Scan(_) | ApiError::Multipart(_) => 400,
            ApiError::InvalidApiKey | ApiError::StatusPageAuth => 401,
            ApiError::Forbidden(_) | ApiError::ModelNotAllowed(_) => 403,
            ApiError::ModelNotFound(_) | ApiError::NotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::RequestTimeout => 408,
            ApiError::BodyTooLarge => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::RateLimited { .. } => 429,
            ApiError::HeadTooLarge => 431,
            ApiError::Internal(_) => 500,
            ApiError::NotImplemented(_) => 501,
            ApiError::UpstreamUnavailable => 502,
            ApiError::Overloaded => 503,
            ApiError::UpstreamTimeout => 504,
        }
    }

    /// The `error.code` of the JSON body (also handy for logs and metrics).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::HeadTooLarge => "bad_request",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::InvalidApiKey | ApiError::StatusPageAuth => "invalid_api_key",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::ModelNotAllowed(_) => "model_not_allowed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Scan(ScanError::InvalidJson { .. }) => "invalid_json",
            ApiError::Scan(ScanError::MissingModel) => "missing_model",
            ApiError::Scan(ScanError::InvalidModel) => "invalid_model",
            ApiError::Scan(ScanError::DuplicateModel) => "duplicate_model",
            ApiError::Multipart(MultipartError::BadBoundary(_))
            | ApiError::Multipart(MultipartError::Malformed { .. }) => "invalid_multipart",
            ApiError::Multipart(MultipartError::MissingModel) => "missing_model",
            ApiError::Multipart(MultipartError::InvalidModel) => "invalid_model",
            ApiError::Multipart(MultipartError::DuplicateModel) => "duplicate_model",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::Overloaded => "overloaded",
            ApiError::UpstreamUnavailable => "upstream_unavailable",
            ApiError::UpstreamTimeout => "upstream_timeout",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The `error.type` of the JSON body.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::UpstreamUnavailable | ApiError::UpstreamTimeout => "upstream_error",
            ApiError::Overloaded | ApiError::Internal(_) => "server_error",
            // OpenAI's types for its own 429s: request and token limits.
            ApiError::RateLimited {
                limit: Limit::Requests,
                ..
            } => "requests",
            ApiError::RateLimited {
                limit: Limit::Tokens,
                ..
            } => "tokens",
            _ => "invalid_request_error",
        }
    }

    /// The human-readable `error.message`.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(why) => (*why).to_owned(),
            ApiError::HeadTooLarge => {
                "Request header section too large (limits: 64 KiB, 100 header fields)".to_owned()
            }
            ApiError::NotImplemented(why) => (*why).to_owned(),
            ApiError::RequestTimeout => "Timed out waiting for the request headers".to_owned(),
            ApiError::UnsupportedMediaType => {
                "Request bodies with a Content-Encoding cannot be routed; send the body \
                 uncompressed"
                    .to_owned()
            }
            ApiError::InvalidApiKey => "Invalid or missing API key. Send it as \
                 'Authorization: Bearer <key>'."
                .to_owned(),
            ApiError::StatusPageAuth => "Invalid or missing API key. Send it as \
                 'Authorization: Bearer <key>', or as the password of HTTP Basic \
                 authentication (any user name)."
                .to_owned(),
            ApiError::Forbidden(why) => (*why).to_owned(),
            ApiError::ModelNotFound(model) => format!(
                "The model '{model}' does not exist. GET /v1/models lists the available models."
            ),
            ApiError::ModelNotAllowed(model) => {
                format!("This API key is not allowed to use the model '{model}'.")
            }
            ApiError::RateLimited {
                retry_after_secs,
                limit: Limit::Requests,
            } => {
                format!("Rate limit reached for this API key; retry in {retry_after_secs} s.")
            }
            ApiError::RateLimited {
                retry_after_secs,
                limit: Limit::Tokens,
            } => format!(
                "This API key has used its token budget (tokensPerMinute); retry in \
                 {retry_after_secs} s."
            ),
            ApiError::NotFound => "Not found".to_owned(),
            ApiError::MethodNotAllowed { allow } => {
                format!("Method not allowed on this endpoint (it takes {allow})")
            }
            ApiError::Scan(ScanError::InvalidJson { offset, reason }) => {
                format!("The request body is not valid JSON: {reason} at byte {offset}")
            }
            ApiError::Scan(ScanError::MissingModel) => {
                "The request body has no top-level 'model' field".to_owned()
            }
            ApiError::Scan(ScanError::InvalidModel) => {
                "The top-level 'model' field must be a string".to_owned()
            }
            ApiError::Scan(ScanError::DuplicateModel) => {
                "The top-level 'model' field appears more than once".to_owned()
            }
            ApiError::Multipart(MultipartError::BadBoundary(why)) => {
                format!("Invalid multipart Content-Type: {why}")
            }
            ApiError::Multipart(MultipartError::Malformed { offset, reason }) => {
                format!("The multipart body is malformed: {reason} at byte {offset}")
            }
            ApiError::Multipart(MultipartError::MissingModel) => {
                "The multipart form has no 'model' field".to_owned()
            }
            ApiError::Multipart(MultipartError::InvalidModel) => {
                "The multipart 'model' field must be UTF-8 text of at most 64 KiB".to_owned()
            }
            ApiError::Multipart(MultipartError::DuplicateModel) => {
                "The multipart 'model' field appears more than once".to_owned()
            }
            ApiError::BodyTooLarge => {
                "The request body is larger than this server accepts (maxBodyBytes)".to_owned()
            }
            ApiError::Overloaded => {
                "The server is at capacity; retry the request shortly".to_owned()
            }
            ApiError::UpstreamUnavailable => {
                "The upstream server for this model could not be reached".to_owned()
            }
            ApiError::UpstreamTimeout => {
                "The upstream server for this model did not answer in time".to_owned()
            }
            ApiError::Internal(why) => why.clone(),
        }
    }

    /// The JSON body: `{"error":{"message":…,"type":…,"param":null,"code":…}}`, keys in the
    /// order OpenAI sends them.
    pub fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(160);
        body.extend_from_slice(b"{\"error\":{\"message\":");
        push_json_string(&mut body, &self.message());
        body.extend_from_slice(b",\"type\":\"");
        body.extend_from_slice(self.error_type().as_bytes());
        body.extend_from_slice(b"\",\"param\":null,\"code\":\"");
        body.extend_from_slice(self.code().as_bytes());
        body.extend_from_slice(b"\"}}");
        body
    }
}

/// Appends `s` as a JSON string literal (quotes and escapes included).
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaper: `"`, `\`, controls, and nothing else (UTF-8 stays as is).
    if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing a &str into a Vec cannot fail; keep the body valid JSON regardless.
        out.extend_from_slice(b"\"\"");
    }
}

/// Writes the full error response (head and JSON body) into `out`. `close` adds
/// `Connection: close`; `head_only` (a HEAD request) omits the body but keeps its length.
pub fn write_error_response(err: &ApiError, close: bool, head_only: bool, out: &mut Vec<u8>) {
    write_error_response_with_id(err, b"", close, head_only, out);
}

/// [`write_error_response`] plus `X-Request-Id: {request_id}` when `request_id` is non-empty
/// (so a client can quote the id found in the access log).
pub fn write_error_response_with_id(
    err: &ApiError,
    request_id: &[u8],
    close: bool,
    head_only: bool,
    out: &mut Vec<u8>,
) {
    let body = err.body();
    let status = err.status();
    write_status_and_common(status, body.len(), out);
    match (status, err) {
        (401, ApiError::StatusPageAuth) => out.extend_from_slice(
            b"WWW-Authenticate: Bearer\r\nWWW-Authenticate: Basic realm=\"modelgate\", charset=\"UTF-8\"\r\n",
        ),
        (401, _) => out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n"),
        (503, _) => out.extend_from_slice(b"Retry-After: 1\r\n"),
        (_, ApiError::MethodNotAllowed { allow }) => {
            out.extend_from_slice(b"Allow: ");
            out.extend_from_slice(allow.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (
            _,
            ApiError::RateLimited {
                retry_after_secs, ..
            },
        ) => {
            out.extend_from_slice(b"Retry-After: ");
            push_u64(out, *retry_after_secs);
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    if !request_id.is_empty() {
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(request_id);
        out.extend_from_slice(b"\r\n");
    }
    finish(&body, close, head_only, out);
}

/// Writes a `200`-style JSON response (status, body) for local endpoints.
pub fn write_json_response(
    status: u16,
    body: &[u8],
    close: bool,
    head_only: bool,
    out: &mut Vec<u8>,
) {
    write_response(status, "application/json", body, close, head_only, out);
}

/// Writes a complete local response with any content type (`/metrics` is text).
pub fn write_response(
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
    head_only: bool,
    out: &mut Vec<u8>,
) {
    write_status_line_and_type(status, content_type, body.len(), out);
    finish(body, close, head_only, out);
}

fn write_status_and_common(status: u16, body_len: usize, out: &mut Vec<u8>) {
    write_status_line_and_type(status, "application/json", body_len, out);
}

fn write_status_line_and_type(status: u16, content_type: &str, body_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_u64(out, body_len as u64);
    out.extend_from_slice(b"\r\n");
}

fn finish(body: &[u8], close: bool, head_only: bool, out: &mut Vec<u8>) {
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// The reason phrase for a status line; a class name for codes without a registered one.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Splits a written response into (status, headers, body) with httparse.
    fn parse(out: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("bad head: {other:?}"),
        };
        let hs = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (resp.code.unwrap(), hs, out[n..].to_vec())
    }

    fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
        hs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn respond(err: &ApiError) -> (u16, Vec<(String, String)>, Value) {
        let mut out = Vec::new();
        write_error_response(err, false, false, &mut out);
        let (status, hs, body) = parse(&out);
        assert_eq!(
            header(&hs, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(header(&hs, "content-type"), Some("application/json"));
        (status, hs, serde_json::from_slice(&body).unwrap())
    }

    fn all_errors() -> Vec<ApiError> {
        vec![
            ApiError::BadRequest("bad"),
            ApiError::HeadTooLarge,
            ApiError::NotImplemented("no"),
            ApiError::RequestTimeout,
            ApiError::UnsupportedMediaType,
            ApiError::InvalidApiKey,
            ApiError::Forbidden("local only"),
            ApiError::ModelNotFound("gpt-x".into()),
            ApiError::NotFound,
            ApiError::MethodNotAllowed { allow: "GET, HEAD" },
            ApiError::Scan(ScanError::InvalidJson {
                offset: 7,
                reason: "expected value",
            }),
            ApiError::Scan(ScanError::MissingModel),
            ApiError::Scan(ScanError::InvalidModel),
            ApiError::Scan(ScanError::DuplicateModel),
            ApiError::BodyTooLarge,
            ApiError::Overloaded,
            ApiError::UpstreamUnavailable,
            ApiError::UpstreamTimeout,
            ApiError::Internal("reload failed".into()),
            ApiError::ModelNotAllowed("gpt-x".into()),
            ApiError::RateLimited {
                retry_after_secs: 3,
                limit: Limit::Requests,
            },
            ApiError::RateLimited {
                retry_after_secs: 3,
                limit: Limit::Tokens,
            },
        ]
    }

    #[test]
    fn multipart_errors_are_400_with_their_own_codes() {
        use crate::multipart::MultipartError as M;
        let want = [
            (M::BadBoundary("x"), "invalid_multipart"),
            (
                M::Malformed {
                    offset: 7,
                    reason: "r",
                },
                "invalid_multipart",
            ),
            (M::MissingModel, "missing_model"),
            (M::InvalidModel, "invalid_model"),
            (M::DuplicateModel, "duplicate_model"),
        ];
        for (e, code) in want {
            let err = ApiError::from(e);
            assert_eq!((err.status(), err.code()), (400, code), "{err:?}");
            assert_eq!(err.error_type(), "invalid_request_error");
        }
    }

    #[test]
    fn statuses_and_codes_follow_the_spec() {
        let want = [
            (400, "bad_request"),
            (431, "bad_request"),
            (501, "not_implemented"),
            (408, "request_timeout"),
            (415, "unsupported_media_type"),
            (401, "invalid_api_key"),
            (403, "forbidden"),
            (404, "model_not_found"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (400, "invalid_json"),
            (400, "missing_model"),
            (400, "invalid_model"),
            (400, "duplicate_model"),
            (413, "body_too_large"),
            (503, "overloaded"),
            (502, "upstream_unavailable"),
            (504, "upstream_timeout"),
            (500, "internal_error"),
            (403, "model_not_allowed"),
            (429, "rate_limited"),
        ];
        for (err, (status, code)) in all_errors().iter().zip(want) {
            assert_eq!((err.status(), err.code()), (status, code), "{err:?}");
        }
    }

    #[test]
    fn every_error_body_is_openai_shaped_json() {
        for err in all_errors() {
            let (status, _, v) = respond(&err);
            assert_eq!(status, err.status());
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 1);
            let e = v["error"].as_object().unwrap();
            assert_eq!(e.len(), 4, "{err:?}");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(e["type"], err.error_type());
            assert!(e["param"].is_null());
            assert_eq!(e["code"], err.code());
        }
    }

    #[test]
    fn body_keys_are_in_openai_order() {
        let body = ApiError::NotFound.body();
        assert_eq!(
            body,
            br#"{"error":{"message":"Not found","type":"invalid_request_error","param":null,"code":"not_found"}}"#
        );
    }

    #[test]
    fn invalid_api_key_has_openai_type_and_bearer_challenge() {
        let (status, hs, v) = respond(&ApiError::InvalidApiKey);
        assert_eq!(status, 401);
        assert_eq!(header(&hs, "www-authenticate"), Some("Bearer"));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }

    #[test]
    fn overloaded_asks_to_retry_after_one_second() {
        let (status, hs, v) = respond(&ApiError::Overloaded);
        assert_eq!(status, 503);
        assert_eq!(header(&hs, "retry-after"), Some("1"));
        assert_eq!(v["error"]["type"], "server_error");
    }

    #[test]
    fn rate_limited_says_when_to_retry() {
        let (status, hs, v) = respond(&ApiError::RateLimited {
            retry_after_secs: 42,
            limit: Limit::Requests,
        });
        assert_eq!(status, 429);
        assert_eq!(header(&hs, "retry-after"), Some("42"));
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["type"], "requests");
    }

    #[test]
    fn a_spent_token_budget_is_the_same_429_with_the_tokens_type() {
        let (status, hs, v) = respond(&ApiError::RateLimited {
            retry_after_secs: 7,
            limit: Limit::Tokens,
        });
        assert_eq!(status, 429);
        assert_eq!(header(&hs, "retry-after"), Some("7"));
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["type"], "tokens");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tokensPerMinute") && m.contains("7 s")));
    }

    #[test]
    fn model_not_allowed_is_403_naming_the_model() {
        let (status, hs, v) = respond(&ApiError::ModelNotAllowed("vision".into()));
        assert_eq!(status, 403);
        assert_eq!(header(&hs, "retry-after"), None);
        assert_eq!(v["error"]["code"], "model_not_allowed");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'vision'")));
    }

    #[test]
    fn upstream_errors_have_upstream_type() {
        assert_eq!(
            respond(&ApiError::UpstreamUnavailable).2["error"]["type"],
            "upstream_error"
        );
        assert_eq!(
            respond(&ApiError::UpstreamTimeout).2["error"]["type"],
            "upstream_error"
        );
    }

    #[test]
    fn model_not_found_names_the_model_escaped() {
        let name = "we\"ird\\model\n\u{1}ü";
        let (_, _, v) = respond(&ApiError::ModelNotFound(name.into()));
        assert_eq!(
            v["error"]["message"],
            format!(
                "The model '{name}' does not exist. GET /v1/models lists the available models."
            )
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn invalid_json_message_has_offset_and_reason() {
        let (_, _, v) = respond(&ApiError::Scan(ScanError::InvalidJson {
            offset: 1234,
            reason: "trailing data",
        }));
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains("1234") && m.contains("trailing data"), "{m}");
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let mut out = Vec::new();
        let err = ApiError::MethodNotAllowed { allow: "POST" };
        write_error_response(&err, false, false, &mut out);
        let (status, hs, _) = parse(&out);
        assert_eq!(status, 405);
        assert_eq!(header(&hs, "allow"), Some("POST"));
        let (_, _, v) = respond(&err);
        assert_eq!(v["error"]["code"], "method_not_allowed");
    }

    #[test]
    fn close_adds_connection_close() {
        let mut out = Vec::new();
        write_error_response(&ApiError::BodyTooLarge, true, false, &mut out);
        let (_, hs, _) = parse(&out);
        assert_eq!(header(&hs, "connection"), Some("close"));
    }

    #[test]
    fn no_close_means_no_connection_header() {
        let mut out = Vec::new();
        write_error_response(&ApiError::NotFound, false, false, &mut out);
        let (_, hs, _) = parse(&out);
        assert_eq!(header(&hs, "connection"), None);
    }

    #[test]
    fn head_only_keeps_length_but_omits_body() {
        let mut full = Vec::new();
        write_error_response(&ApiError::NotFound, false, false, &mut full);
        let mut head = Vec::new();
        write_error_response(&ApiError::NotFound, false, true, &mut head);
        assert!(full.starts_with(&head));
        let (_, hs, body) = parse(&head);
        assert!(body.is_empty());
        let declared: usize = header(&hs, "content-length").unwrap().parse().unwrap();
        assert_eq!(declared, full.len() - head.len());
    }

    #[test]
    fn request_id_variant_adds_the_header() {
        let mut out = Vec::new();
        write_error_response_with_id(&ApiError::NotFound, b"req-1", false, false, &mut out);
        let (_, hs, _) = parse(&out);
        assert_eq!(header(&hs, "x-request-id"), Some("req-1"));
    }

    #[test]
    fn status_line_has_the_reason_phrase() {
        let mut out = Vec::new();
        write_error_response(&ApiError::HeadTooLarge, true, false, &mut out);
        assert!(out.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }

    #[test]
    fn json_response_has_the_same_conventions() {
        let mut out = Vec::new();
        write_json_response(200, br#"{"status":"ok","models":2}"#, true, false, &mut out);
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let (status, hs, body) = parse(&out);
        assert_eq!(status, 200);
        assert_eq!(header(&hs, "content-type"), Some("application/json"));
        assert_eq!(header(&hs, "content-length"), Some("26"));
        assert_eq!(header(&hs, "connection"), Some("close"));
        assert_eq!(body, br#"{"status":"ok","models":2}"#);
    }

    #[test]
    fn json_response_head_only_has_no_body() {
        let mut out = Vec::new();
        write_json_response(200, b"{}", false, true, &mut out);
        assert!(out.ends_with(b"Content-Length: 2\r\n\r\n"));
    }

    #[test]
    fn head_errors_map_to_statuses() {
        assert_eq!(ApiError::from(HeadError::TooLarge).status(), 431);
        assert_eq!(ApiError::from(HeadError::TooManyHeaders).status(), 431);
        assert_eq!(ApiError::from(HeadError::UnsupportedCoding).status(), 501);
        assert_eq!(ApiError::from(HeadError::BadHost).status(), 400);
        assert_eq!(
            ApiError::from(HeadError::BadFraming(
                "both Transfer-Encoding and Content-Length"
            )),
            ApiError::BadRequest("both Transfer-Encoding and Content-Length")
        );
        assert_eq!(
            ApiError::from(HeadError::Malformed("x")).code(),
            "bad_request"
        );
    }

    #[test]
    fn chunked_errors_are_bad_requests_with_specific_messages() {
        let all = [
            ChunkedError::BadSize,
            ChunkedError::SizeOverflow,
            ChunkedError::BadLineEnding,
            ChunkedError::ExtensionTooLong,
            ChunkedError::TrailersTooLarge,
            ChunkedError::ForbiddenTrailer,
            ChunkedError::BadTrailer,
        ];
        let mut messages: Vec<String> = all
            .iter()
            .map(|&e| {
                let api = ApiError::from(e);
                assert_eq!(api.status(), 400);
                api.message()
            })
            .collect();
        messages.sort();
        messages.dedup();
        assert_eq!(messages.len(), all.len());
    }

    #[test]
    fn reason_phrases_cover_known_and_unknown_codes() {
        assert_eq!(reason_phrase(404), "Not Found");
        assert_eq!(reason_phrase(299), "Success");
        assert_eq!(reason_phrase(599), "Server Error");
    }
}
