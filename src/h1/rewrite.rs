use super::{RequestHead, ResponseHead, UpstreamRequest};
pub fn write_upstream_request_head(
    _raw: &[u8],
    _head: &RequestHead,
    _req: &UpstreamRequest<'_>,
    _out: &mut Vec<u8>,
) {
}
pub fn write_client_response_head(
    _raw: &[u8],
    _head: &ResponseHead,
    _request_id: &[u8],
    _close: bool,
    _out: &mut Vec<u8>,
) {
}
