//! Defends PITFALLS.md 9, 18, 19: the request head parser never panics and never claims more
//! bytes than it was given, and the head modelgate writes upstream is one well-formed HTTP/1.1
//! head with the client's method and the same body framing (Content-Length vs chunked): a
//! rewrite that changed framing would let a client smuggle a second request to the backend.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use modelgate::h1::{
    parse_request, write_upstream_request_head, Method, Parse, RequestFraming, UpstreamRequest,
};
use modelgate::secrets::Secret;

fn method_name(m: Method) -> Option<&'static str> {
    Some(match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Patch => "PATCH",
        Method::Options => "OPTIONS",
        // SPEC §11: CONNECT is refused at the edge, whatever its target form.
        Method::Connect => unreachable!("parse_request accepted CONNECT"),
        Method::Other => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let head = match parse_request(data) {
        Ok(Parse::Complete(head)) => head,
        Ok(Parse::Partial) | Err(_) => return,
    };
    assert!(head.head_len <= data.len(), "consumed more than the input");
    assert!(head.target.end <= head.head_len, "target outside the head");

    let extra = [("X-Api-Key".to_string(), Secret::new("k-123".to_string()))];
    let req = UpstreamRequest {
        authority: "backend.internal:8000",
        base_path: "/base",
        base_query: Some("api-version=1"),
        target: data.get(head.target.clone()).unwrap_or(b"/"),
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
        proto: "http",
        strip_authorization: true,
        request_id: b"req-0001",
        extra_headers: &extra,
    };
    let mut out = Vec::new();
    write_upstream_request_head(data, &head, &req, &mut out);

    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut headers);
    let status = parsed.parse(&out);
    assert!(
        matches!(status, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "upstream head does not parse as one complete head: {status:?}\n{}",
        String::from_utf8_lossy(&out)
    );
    if let Some(name) = method_name(head.method) {
        assert_eq!(parsed.method, Some(name));
    }

    let mut lengths = Vec::new();
    let mut chunked = 0;
    let mut te = 0;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te += 1;
            if h.value.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            }
        }
    }
    match head.framing {
        RequestFraming::Chunked => {
            assert!(lengths.is_empty(), "Content-Length next to chunked");
            assert_eq!(
                (te, chunked),
                (1, 1),
                "chunked must be re-added exactly once"
            );
        }
        RequestFraming::Length(n) => {
            assert_eq!(te, 0, "Transfer-Encoding on a Content-Length body");
            assert_eq!(lengths, vec![n.to_string().into_bytes()]);
        }
        RequestFraming::Empty => {
            assert_eq!(te, 0, "Transfer-Encoding on an empty body");
            assert!(lengths.is_empty() || lengths == vec![b"0".to_vec()]);
        }
    }
});
