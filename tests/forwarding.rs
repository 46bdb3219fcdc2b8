//! End-to-end forwarding tests (issue 3): the real binary between real sockets.
//!
//! Covers SPEC.md §3–§6 and §10: routing (by body and by path), error bodies, byte-exact
//! forwarding, header rules, auth, local endpoints, the body cap, `Expect: 100-continue`,
//! keep-alive on both sides, pipelining, bodiless responses, passthrough of big and chunked
//! responses, unix sockets, and framing attacks at the edge (PITFALLS 9–14, 19–21).
//!
//! Every socket read has a timeout (`T`, or the harness's `CLIENT_TIMEOUT` / 30 s upstream
//! read timeout), so a misbehaving engine fails a test instead of hanging it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Read timeout of every client in this file: a hang fails fast.
const T: Duration = Duration::from_secs(5);
/// How long to wait for a close that should happen at once.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Private helpers.

/// A client with the short read timeout.
fn client(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    c.set_read_timeout(T);
    c
}

/// A config from a `models` object (name → model object) plus extra top-level keys.
fn cfg(models: Value, extra: Value) -> String {
    let mut c = json!({ "listen": "127.0.0.1:0", "models": models });
    for (k, v) in extra.as_object().expect("extra is an object") {
        c[k] = v.clone();
    }
    serde_json::to_string_pretty(&c).unwrap()
}

/// modelgate routing `name → url` for each pair.
fn start(models: &[(&str, &str)]) -> Modelgate {
    Modelgate::start(&config_json(models))
}

/// An upstream answering every request with 200 `ok` and `X-Upstream: name`, keep-alive.
fn echo_upstream(name: &'static str) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            let h = format!("X-Upstream: {name}");
            if c.respond(200, &[&h], b"ok").is_err() {
                break;
            }
        }
    })
}

/// An upstream writing `raw` (a complete response) for every request, keep-alive.
fn raw_upstream(raw: &'static [u8]) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            if c.write_all(raw).is_err() {
                break;
            }
        }
    })
}

/// One request (`Connection: close` added) on a fresh connection; the final response.
fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Response {
    let mut h = headers.to_vec();
    h.push("Connection: close");
    let mut c = client(addr);
    c.send(&request_bytes(method, path, &h, body));
    if method == "HEAD" {
        return c.read_response_no_body();
    }
    c.read_final_response().1
}

/// `POST /v1/chat/completions` with a JSON body.
fn post(addr: std::net::SocketAddr, body: &str) -> Response {
    send(
        addr,
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body.as_bytes(),
    )
}

fn dump(r: &Response) -> String {
    String::from_utf8_lossy(&r.raw).into_owned()
}

/// The error body is exactly `{"error":{"message","type","param":null,"code"}}` with
/// `Content-Type: application/json`, and the status and code are the expected ones.
fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "response: {}", dump(r));
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?}: {}",
        dump(r)
    );
    let v = r.json();
    let top = v.as_object().expect("error body is an object");
    assert_eq!(top.keys().collect::<Vec<_>>(), ["error"], "{v}");
    let e = v["error"].as_object().expect("error is an object");
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
    assert_eq!(v["error"]["param"], Value::Null, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        !v["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{v}"
    );
    assert!(!v["error"]["type"].as_str().unwrap_or("").is_empty(), "{v}");
}

/// A 400 from body routing: code and `invalid_request_error` type; the upstream saw nothing.
fn assert_body_400(body: &[u8], code: &str) {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body,
    );
    assert_error(&r, 400, code);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(up.request_count(), 0, "the upstream must see nothing");
}

/// Sends `bytes` on a new connection and returns (responses, closed by the server).
fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<Response>, bool) {
    let mut c = client(addr);
    let _ = c.try_send(bytes);
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    (parse_responses(&raw), eof)
}

/// The single request the upstream saw (waits for it).
fn only_request(up: &ScriptedUpstream) -> RecordedRequest {
    let reqs = up.wait_requests(1, T);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    reqs.into_iter().next().unwrap()
}

/// A deterministic, non-repeating-looking byte pattern.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Routing by body (SPEC §4).

#[test]
fn body_model_routes_to_its_upstream() {
    let a = MockUpstream::openai("alpha");
    let b = MockUpstream::openai("beta");
    let mg = start(&[("model-a", &a.url()), ("model-b", &b.url())]);
    let r = post(mg.addr(), &chat_body("model-b", false));
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.header("x-mock-name"), Some("beta"));
    assert_eq!(r.json()["model"], "model-b");
    let r = post(mg.addr(), &chat_body("model-a", false));
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.header("x-mock-name"), Some("alpha"));
    assert_eq!((a.requests(), b.requests()), (1, 1));
}

#[test]
fn body_model_after_large_messages_array_is_found() {
    let a = MockUpstream::openai("alpha");
    let b = MockUpstream::openai("beta");
    let mg = start(&[("model-a", &a.url()), ("model-b", &b.url())]);
    let messages: Vec<Value> = (0..400)
        .map(|i| json!({"role": "user", "content": format!("{i} {}", "x".repeat(1000))}))
        .collect();
    let body = format!(
        r#"{{"messages":{},"model":"model-b"}}"#,
        serde_json::to_string(&messages).unwrap()
    );
    assert!(body.len() > 400_000);
    let r = post(mg.addr(), &body);
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.header("x-mock-name"), Some("beta"));
    assert_eq!(a.requests(), 0);
}

#[test]
fn body_model_key_with_unicode_escape_routes() {
    let a = MockUpstream::openai("alpha");
    let b = MockUpstream::openai("beta");
    let mg = start(&[("model-a", &a.url()), ("model-b", &b.url())]);
    let r = post(
        mg.addr(),
        r#"{"m\u006fdel":"model-b","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.header("x-mock-name"), Some("beta"));
}

#[test]
fn body_model_value_with_escapes_is_unescaped() {
    let up = echo_upstream("m");
    let mg = start(&[("a/b", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"a\/b"}"#);
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(up.request_count(), 1);
}

#[test]
fn nested_model_key_is_ignored() {
    let a = MockUpstream::openai("alpha");
    let b = MockUpstream::openai("beta");
    let mg = start(&[("model-a", &a.url()), ("model-b", &b.url())]);
    let r = post(
        mg.addr(),
        r#"{"messages":[{"role":"user","content":"hi","model":"model-a"}],"tools":{"model":"model-a"},"model":"model-b"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.header("x-mock-name"), Some("beta"));
    assert_eq!(a.requests(), 0);
}

#[test]
fn only_nested_model_is_missing_model() {
    assert_body_400(
        br#"{"messages":[{"role":"user","model":"m"}]}"#,
        "missing_model",
    );
}

#[test]
fn model_lookup_is_case_sensitive() {
    let up = echo_upstream("m");
    let mg = start(&[("Model", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"model"}"#);
    assert_error(&r, 404, "model_not_found");
    assert_eq!(up.request_count(), 0);
}

#[test]
fn unknown_model_is_404_model_not_found_with_exact_error_shape() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"no-such-model","messages":[]}"#);
    assert_error(&r, 404, "model_not_found");
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-model"),
        "the message names the model: {v}"
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn unknown_model_in_route_path_is_404() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(mg.addr(), "GET", "/route/nope/v1/models", &[], b"");
    assert_error(&r, 404, "model_not_found");
    assert_eq!(up.request_count(), 0);
}

#[test]
fn json_syntax_error_is_invalid_json() {
    assert_body_400(br#"{"model":"m",}"#, "invalid_json");
}

#[test]
fn json_trailing_data_is_invalid_json() {
    assert_body_400(br#"{"model":"m"}{"model":"m"}"#, "invalid_json");
}

#[test]
fn empty_body_is_invalid_json() {
    assert_body_400(b"", "invalid_json");
}

#[test]
fn invalid_utf8_body_is_invalid_json() {
    assert_body_400(b"{\"model\":\"m\",\"x\":\"\xff\xfe\"}", "invalid_json");
}

#[test]
fn non_object_body_is_invalid_json() {
    assert_body_400(br#"["model","m"]"#, "invalid_json");
}

#[test]
fn absent_model_is_missing_model() {
    assert_body_400(br#"{"messages":[]}"#, "missing_model");
}

#[test]
fn null_model_is_missing_model() {
    assert_body_400(br#"{"model":null}"#, "missing_model");
}

#[test]
fn non_string_model_is_invalid_model() {
    assert_body_400(br#"{"model":42}"#, "invalid_model");
    assert_body_400(br#"{"model":{"id":"m"}}"#, "invalid_model");
}

#[test]
fn duplicate_model_is_rejected_even_with_same_value() {
    assert_body_400(br#"{"model":"m","x":1,"model":"m"}"#, "duplicate_model");
    assert_body_400(br#"{"model":"m","m\u006fdel":"m"}"#, "duplicate_model");
}

// ---------------------------------------------------------------------------------------------
// Routing by path (SPEC §3, §10).

#[test]
fn route_path_forwards_rest_and_query_and_does_not_parse_body() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let body = b"this is not json at all \x00\xff";
    let r = send(
        mg.addr(),
        "POST",
        "/route/m/v1/audio/speech?x=1&y=%20z&&w",
        &["Content-Type: application/octet-stream"],
        body,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/v1/audio/speech?x=1&y=%20z&&w");
    assert_eq!(req.body, body);
}

#[test]
fn route_path_model_is_percent_decoded() {
    let up = echo_upstream("m");
    let mg = start(&[("Qwen/Qwen3-8B", &up.url())]);
    let r = send(
        mg.addr(),
        "GET",
        "/route/Qwen%2FQwen3-8B/v1/models",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).target, "/v1/models");
}

#[test]
fn route_without_rest_forwards_root() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(mg.addr(), "GET", "/route/m", &[], b"");
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).target, "/");
}

#[test]
fn route_without_rest_keeps_query() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(mg.addr(), "GET", "/route/m?q=1", &[], b"");
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).target, "/?q=1");
}

// ---------------------------------------------------------------------------------------------
// Forwarding: body, framing, path, query (SPEC §5).

#[test]
fn body_is_forwarded_byte_for_byte() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let body = "  {\r\n\t\"messages\" : [ {\"content\":\"h\\u00e9llo \u{1F600} \\\"q\\\" é\"} ] ,\n  \"model\"\t:\t\"m\" , \"n\": 1.50e+2 }\n\n ";
    let r = post(mg.addr(), body);
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    assert!(!req.chunked);
    assert_eq!(req.raw_body, body.as_bytes());
    assert_eq!(
        req.header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[test]
fn chunked_request_is_forwarded_chunked_with_the_same_chunk_bytes() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let chunked =
        b"5\r\n{\"mod\r\nA\r\nel\": \"m\", \r\n3;ext=1\r\n\"x\"\r\n2\r\n:1\r\n1\r\n}\r\n0\r\n\r\n";
    let mut req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(chunked);
    let mut c = client(mg.addr());
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    let got = only_request(&up);
    assert!(got.chunked, "forwarded chunked: {:?}", got.headers);
    assert_eq!(got.header("content-length"), None);
    assert_eq!(got.header_all("transfer-encoding"), ["chunked"]);
    assert_eq!(
        String::from_utf8_lossy(&got.raw_body),
        String::from_utf8_lossy(chunked)
    );
    assert_eq!(got.body, br#"{"model": "m", "x":1}"#);
}

#[test]
fn chunked_request_trailers_are_forwarded() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let chunked = b"D\r\n{\"model\":\"m\"}\r\n0\r\nX-Checksum: abc\r\n\r\n";
    let mut req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(chunked);
    let mut c = client(mg.addr());
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    let got = only_request(&up);
    assert_eq!(got.trailers, ["X-Checksum: abc"]);
    assert_eq!(got.raw_body, chunked);
}

#[test]
fn route_path_chunked_body_is_forwarded_with_same_chunks() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let chunked = b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
    let mut req = b"PUT /route/m/upload HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(chunked);
    let mut c = client(mg.addr());
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    let got = only_request(&up);
    assert_eq!(got.target, "/upload");
    assert!(got.chunked);
    assert_eq!(got.raw_body, chunked);
}

#[test]
fn query_string_is_forwarded_verbatim() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let q = "/v1/chat/completions?a=1&b=%2F%20&c&d=x+y&e=%E2%9C%93";
    let r = send(mg.addr(), "POST", q, &[], br#"{"model":"m"}"#);
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).target, q);
}

#[test]
fn query_is_appended_to_model_url_query() {
    let up = echo_upstream("m");
    let url = format!("{}/openai?api-version=2024-06-01", up.url());
    let mg = start(&[("m", &url)]);
    let r = send(
        mg.addr(),
        "POST",
        "/chat/completions?x=1",
        &[],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(
        only_request(&up).target,
        "/openai/chat/completions?api-version=2024-06-01&x=1"
    );
}

#[test]
fn model_url_query_is_kept_without_request_query() {
    let up = echo_upstream("m");
    let url = format!("{}/openai?api-version=2024-06-01", up.url());
    let mg = start(&[("m", &url)]);
    let r = send(
        mg.addr(),
        "POST",
        "/chat/completions",
        &[],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(
        only_request(&up).target,
        "/openai/chat/completions?api-version=2024-06-01"
    );
}

#[test]
fn base_path_is_joined_with_exactly_one_slash() {
    for base in ["/v1", "/v1/"] {
        let up = echo_upstream("m");
        let url = format!("{}{base}", up.url());
        let mg = start(&[("m", &url)]);
        let r = send(
            mg.addr(),
            "POST",
            "/chat/completions",
            &[],
            br#"{"model":"m"}"#,
        );
        assert_eq!(r.status, 200, "{}", dump(&r));
        assert_eq!(
            only_request(&up).target,
            "/v1/chat/completions",
            "base {base}"
        );
    }
}

#[test]
fn a_v1_base_url_does_not_double_v1_for_sdk_paths() {
    // Base URLs as providers document them, and the paths SDK clients send (SPEC §5).
    let cases: [(&str, &str, &str, &str); 8] = [
        (
            "/v1",
            "POST",
            "/v1/chat/completions",
            "/v1/chat/completions",
        ),
        (
            "/v1/",
            "POST",
            "/v1/chat/completions?x=1",
            "/v1/chat/completions?x=1",
        ),
        (
            "/api/v1",
            "POST",
            "/v1/chat/completions",
            "/api/v1/chat/completions",
        ),
        ("", "POST", "/v1/chat/completions", "/v1/chat/completions"),
        ("/v1", "GET", "/route/m/v1/models", "/v1/models"),
        ("/v1", "GET", "/route/m/v1", "/v1"),
        // Only a whole `/v1` segment is not doubled; every other join is as before.
        ("/v1", "GET", "/route/m/v10/x", "/v1/v10/x"),
        (
            "/openai/v1",
            "GET",
            "/route/m/api/v1/x",
            "/openai/v1/api/v1/x",
        ),
    ];
    for (base, method, path, want) in cases {
        let up = echo_upstream("m");
        let mg = start(&[("m", &format!("{}{base}", up.url()))]);
        let r = send(mg.addr(), method, path, &[], br#"{"model":"m"}"#);
        assert_eq!(r.status, 200, "{}", dump(&r));
        assert_eq!(
            only_request(&up).target,
            want,
            "base {base:?}, {method} {path}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Header rules at the upstream (SPEC §5).

#[test]
fn hop_by_hop_request_headers_are_dropped() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &[
            "Connection: keep-alive, X-Hop-One , x-hop-two",
            "X-Hop-One: 1",
            "X-Hop-Two: 2",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: gzip",
            "Upgrade: websocket",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "X-Keep: yes",
        ],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    for h in [
        "connection",
        "x-hop-one",
        "x-hop-two",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        // modelgate may add its own `Connection: keep-alive` for the upstream leg, but never
        // the client's tokens.
        if h == "connection" {
            for v in req.header_all(h) {
                let v = v.to_ascii_lowercase();
                assert!(
                    !v.contains("x-hop") && !v.contains("close"),
                    "Connection: {v}"
                );
            }
            continue;
        }
        assert_eq!(
            req.header(h),
            None,
            "{h} reached the upstream: {:?}",
            req.headers
        );
    }
    assert_eq!(req.header("x-keep"), Some("yes"));
}

#[test]
fn te_trailers_is_kept() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["TE: trailers"],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).header("te"), Some("trailers"));
}

#[test]
fn host_becomes_upstream_authority() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"m"}"#);
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    assert_eq!(req.header_all("host"), [up.addr().to_string().as_str()]);
}

#[test]
fn configured_host_header_wins() {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&cfg(
        json!({"m": {"url": up.url(), "headers": {"Host": "api.example.com"}}}),
        json!({}),
    ));
    let r = post(mg.addr(), r#"{"model":"m"}"#);
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).header_all("host"), ["api.example.com"]);
}

#[test]
fn x_forwarded_for_is_replaced_by_client_ip() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &[
            "X-Forwarded-For: 6.6.6.6, 10.0.0.1",
            "x-forwarded-for: 7.7.7.7",
        ],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(
        only_request(&up).header_all("x-forwarded-for"),
        ["127.0.0.1"]
    );
}

#[test]
fn x_forwarded_proto_and_host_are_set() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["X-Forwarded-Proto: https", "X-Forwarded-Host: evil.example"],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    assert_eq!(req.header_all("x-forwarded-proto"), ["http"]);
    // request_bytes sends `Host: modelgate.test`.
    assert_eq!(req.header_all("x-forwarded-host"), ["modelgate.test"]);
}

#[test]
fn x_request_id_is_kept_when_sent() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["X-Request-Id: my-trace-42"],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(
        only_request(&up).header_all("x-request-id"),
        ["my-trace-42"]
    );
}

#[test]
fn x_request_id_is_generated_when_absent() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    post(mg.addr(), r#"{"model":"m"}"#);
    post(mg.addr(), r#"{"model":"m"}"#);
    let reqs = up.wait_requests(2, T);
    let ids: Vec<&str> = reqs
        .iter()
        .map(|r| {
            let all = r.header_all("x-request-id");
            assert_eq!(all.len(), 1, "{:?}", r.headers);
            all[0]
        })
        .collect();
    assert!(!ids[0].trim().is_empty());
    assert_ne!(ids[0], ids[1], "request ids are unique");
}

#[test]
fn x_request_id_is_returned_to_the_client() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"m"}"#);
    assert_eq!(r.status, 200, "{}", dump(&r));
    let sent = only_request(&up);
    let id = sent.header("x-request-id").expect("upstream got an id");
    assert_eq!(r.header_all("x-request-id"), [id], "{}", dump(&r));
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["X-Request-Id: mine-1"],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.header_all("x-request-id"), ["mine-1"], "{}", dump(&r));
}

#[test]
fn model_headers_replace_client_headers_case_insensitively() {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&cfg(
        json!({"m": {"url": up.url(), "headers": {
            "Authorization": "Bearer upstream-key",
            "X-Custom": "from-config",
        }}}),
        json!({}),
    ));
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &[
            "authorization: Bearer client-key",
            "x-custom: from-client",
            "X-CUSTOM: again",
        ],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    assert_eq!(req.header_all("authorization"), ["Bearer upstream-key"]);
    assert_eq!(req.header_all("x-custom"), ["from-config"]);
}

#[test]
fn authorization_is_stripped_when_auth_tokens_set() {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&config_with(
        &[("m", &up.url())],
        json!({"authTokens": ["tok-1"]}),
    ));
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["Authorization: Bearer tok-1"],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).header("authorization"), None);
}

#[test]
fn authorization_is_kept_without_auth_tokens() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["Authorization: Bearer client-key"],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(
        only_request(&up).header_all("authorization"),
        ["Bearer client-key"]
    );
}

#[test]
fn upstream_key_from_model_headers_replaces_checked_client_token() {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&cfg(
        json!({"m": {"url": up.url(), "headers": {"Authorization": "Bearer sk-up"}}}),
        json!({"authTokens": ["tok-1"]}),
    ));
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["Authorization: Bearer tok-1"],
        br#"{"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(
        only_request(&up).header_all("authorization"),
        ["Bearer sk-up"]
    );
}

// ---------------------------------------------------------------------------------------------
// Auth (SPEC §3).

fn auth_gate() -> (ScriptedUpstream, Modelgate) {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&config_with(
        &[("m", &up.url())],
        json!({"authTokens": ["tok-1", "tok-2"]}),
    ));
    (up, mg)
}

fn assert_401(r: &Response) {
    assert_error(r, 401, "invalid_api_key");
    let w = r.header("www-authenticate").unwrap_or("");
    assert!(
        w.to_ascii_lowercase().starts_with("bearer"),
        "WWW-Authenticate: {w:?}"
    );
}

#[test]
fn missing_token_is_401_with_www_authenticate() {
    let (up, mg) = auth_gate();
    assert_401(&post(mg.addr(), r#"{"model":"m"}"#));
    assert_401(&send(mg.addr(), "GET", "/v1/models", &[], b""));
    assert_eq!(up.request_count(), 0);
}

#[test]
fn wrong_token_is_401() {
    let (up, mg) = auth_gate();
    for h in [
        "Authorization: Bearer tok-3",
        "Authorization: Bearer tok-1x",
        "Authorization: Bearer tok-",
        "Authorization: Basic dG9rLTE6",
        "Authorization: tok-1",
        "Authorization: Bearer",
    ] {
        let r = send(
            mg.addr(),
            "POST",
            "/v1/chat/completions",
            &[h],
            br#"{"model":"m"}"#,
        );
        assert_401(&r);
    }
    assert_eq!(up.request_count(), 0);
}

#[test]
fn bearer_scheme_is_case_insensitive_and_every_token_works() {
    let (up, mg) = auth_gate();
    for h in [
        "Authorization: Bearer tok-1",
        "Authorization: bearer tok-2",
        "authorization: BEARER tok-1",
    ] {
        let r = send(
            mg.addr(),
            "POST",
            "/v1/chat/completions",
            &[h],
            br#"{"model":"m"}"#,
        );
        assert_eq!(r.status, 200, "{h}: {}", dump(&r));
    }
    assert_eq!(up.request_count(), 3);
}

#[test]
fn health_needs_no_auth() {
    let (_up, mg) = auth_gate();
    let r = send(mg.addr(), "GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{}", dump(&r));
    let r = send(mg.addr(), "HEAD", "/health", &[], b"");
    assert_eq!(r.status, 200, "{}", dump(&r));
}

#[test]
fn auth_applies_to_local_model_endpoints_and_route_paths() {
    let (up, mg) = auth_gate();
    assert_401(&send(mg.addr(), "GET", "/v1/models/m", &[], b""));
    assert_401(&send(mg.addr(), "GET", "/route/m/x", &[], b""));
    let r = send(
        mg.addr(),
        "GET",
        "/v1/models",
        &["Authorization: Bearer tok-2"],
        b"",
    );
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_wrong_method_on_health_needs_the_token_first() {
    let (up, mg) = auth_gate();
    // Only GET and HEAD /health are open.
    assert_eq!(send(mg.addr(), "GET", "/health", &[], b"").status, 200);
    assert_eq!(send(mg.addr(), "HEAD", "/health", &[], b"").status, 200);
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        assert_401(&send(mg.addr(), method, "/health", &[], b"{}"));
        assert_401(&send(
            mg.addr(),
            method,
            "/health",
            &["Authorization: Bearer wrong"],
            b"",
        ));
    }
    // With the token, the wrong method gets 405 naming the methods the endpoint takes.
    let auth = "Authorization: Bearer tok-2";
    for path in ["/health", "/v1/models", "/v1/models/m", "/metrics"] {
        let r = send(mg.addr(), "POST", path, &[auth], b"{}");
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{path}");
        assert_401(&send(mg.addr(), "POST", path, &[], b"{}"));
    }
    assert_eq!(up.request_count(), 0);
}

#[test]
fn rejected_post_body_is_never_parsed_as_a_request() {
    // PITFALLS 12: the 401 comes before the body is read; the body bytes (themselves a
    // valid request) must not be answered, and neither must the GET after them.
    let (up, mg) = auth_gate();
    let smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut bytes = request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Authorization: Bearer wrong"],
        smuggled,
    );
    bytes.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n");
    let (resps, eof) = exchange(mg.addr(), &bytes);
    assert_eq!(
        resps.iter().map(|r| r.status).collect::<Vec<_>>(),
        [401],
        "exactly one 401"
    );
    assert!(eof, "the connection closes after the early 401");
    assert_eq!(up.request_count(), 0);
}

#[test]
fn early_401_says_connection_close() {
    let (_up, mg) = auth_gate();
    let mut c = client(mg.addr());
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"m"}"#,
    ));
    let r = c.read_response();
    assert_401(&r);
    assert!(r.header_has_token("connection", "close"), "{}", dump(&r));
    assert!(c.is_closed_within(CLOSE_WAIT));
}

// ---------------------------------------------------------------------------------------------
// Local endpoints (SPEC §3, §10).

fn listing_gate() -> Modelgate {
    let m = json!({"url": "http://127.0.0.1:9"});
    let hidden = json!({"url": "http://127.0.0.1:9", "unlisted": true});
    Modelgate::start(&cfg(
        json!({
            "b": m, "B": m, "a": m, "Qwen/Qwen3-8B": m, "_z": m, "hidden": hidden,
        }),
        json!({}),
    ))
}

#[test]
fn health_get_reports_listed_model_count() {
    let mg = listing_gate();
    let r = send(mg.addr(), "GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    assert_eq!(r.json(), json!({"status": "ok", "models": 5}));
}

#[test]
fn health_head_has_no_body_and_connection_stays_usable() {
    let mg = listing_gate();
    let mut c = client(mg.addr());
    c.send(&request_bytes("HEAD", "/health", &[], b""));
    let r = c.read_response_no_body();
    assert_eq!(r.status, 200, "{}", dump(&r));
    c.send(&request_bytes("GET", "/health", &[], b""));
    let r = c.read_response();
    assert_eq!(r.status, 200, "body bytes leaked after HEAD? {}", dump(&r));
    assert_eq!(r.json()["models"], 5);
    if let Some(cl) = r.header("content-length") {
        assert_eq!(cl, r.body.len().to_string());
    }
}

#[test]
fn models_list_is_sorted_by_bytes_with_unlisted_hidden_and_exact_shape() {
    let mg = listing_gate();
    let r = send(mg.addr(), "GET", "/v1/models", &[], b"");
    assert_eq!(r.status, 200, "{}", dump(&r));
    let v = r.json();
    let mut top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    top.sort_unstable();
    assert_eq!(top, ["data", "object"], "{v}");
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["B", "Qwen/Qwen3-8B", "_z", "a", "b"]);
    for m in data {
        let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["created", "id", "object", "owned_by"], "{m}");
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "modelgate");
        assert!(m["created"].is_u64(), "{m}");
    }
}

#[test]
fn model_by_id_accepts_encoded_and_raw_slash() {
    let mg = listing_gate();
    for path in ["/v1/models/Qwen%2FQwen3-8B", "/v1/models/Qwen/Qwen3-8B"] {
        let r = send(mg.addr(), "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}: {}", dump(&r));
        let v = r.json();
        assert_eq!(v["id"], "Qwen/Qwen3-8B", "{v}");
        assert_eq!(v["object"], "model");
        assert_eq!(v["owned_by"], "modelgate");
        assert!(v["created"].is_u64(), "{v}");
    }
}

#[test]
fn unknown_model_id_is_404() {
    let mg = listing_gate();
    let r = send(mg.addr(), "GET", "/v1/models/nope", &[], b"");
    assert_eq!(r.status, 404, "{}", dump(&r));
    assert_error(&r, 404, "model_not_found");
}

// ---------------------------------------------------------------------------------------------
// Body cap (SPEC §4).

fn capped(cap: usize) -> (ScriptedUpstream, Modelgate) {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&config_with(
        &[("m", &up.url())],
        json!({"maxBodyBytes": cap}),
    ));
    (up, mg)
}

/// `{"model":"m","p":"xxx…"}` of exactly `n` bytes.
fn body_of_len(n: usize) -> Vec<u8> {
    let base = r#"{"model":"m","p":""}"#.len();
    format!(r#"{{"model":"m","p":"{}"}}"#, "x".repeat(n - base)).into_bytes()
}

#[test]
fn declared_length_over_cap_is_413_before_the_body_then_close() {
    let (up, mg) = capped(100);
    let mut c = client(mg.addr());
    // The head only: the 413 must come without waiting for the body.
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 101\r\n\r\n");
    let r = c.read_response();
    assert_error(&r, 413, "body_too_large");
    assert!(c.is_closed_within(CLOSE_WAIT), "closed after 413");
    assert_eq!(up.request_count(), 0);
}

#[test]
fn chunked_body_growing_past_cap_is_413_then_close() {
    let (up, mg) = capped(100);
    let mut c = client(mg.addr());
    let mut req =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    req.extend_from_slice(b"3C\r\n");
    req.extend_from_slice(&[b' '; 60]);
    req.extend_from_slice(b"\r\n3C\r\n");
    req.extend_from_slice(&[b' '; 60]);
    req.extend_from_slice(b"\r\n");
    // No terminating chunk: the 413 must not wait for it.
    c.send(&req);
    let r = c.read_response();
    assert_error(&r, 413, "body_too_large");
    assert!(c.is_closed_within(CLOSE_WAIT), "closed after 413");
    assert_eq!(up.request_count(), 0);
}

#[test]
fn body_of_exactly_the_cap_is_accepted() {
    let (up, mg) = capped(100);
    let body = body_of_len(100);
    assert_eq!(body.len(), 100);
    let r = send(mg.addr(), "POST", "/v1/chat/completions", &[], &body);
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).raw_body, body);
}

#[test]
fn chunked_body_of_exactly_the_cap_is_accepted() {
    let (up, mg) = capped(100);
    let body = body_of_len(100);
    let mut req =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    req.extend_from_slice(b"32\r\n");
    req.extend_from_slice(&body[..50]);
    req.extend_from_slice(b"\r\n32\r\n");
    req.extend_from_slice(&body[50..]);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut c = client(mg.addr());
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).body, body);
}

// ---------------------------------------------------------------------------------------------
// Expect: 100-continue (SPEC §4, PITFALLS 11).

#[test]
fn expect_continue_gets_one_100_then_the_final_response_and_no_expect_upstream() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let body = chat_body("m", false);
    let mut c = client(mg.addr());
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let cont = c.read_response();
    assert_eq!(cont.status, 100, "{}", dump(&cont));
    c.send(body.as_bytes());
    let (infos, r) = c.read_final_response();
    assert!(infos.is_empty(), "a second 1xx: {infos:?}");
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    assert_eq!(req.header("expect"), None, "{:?}", req.headers);
    assert_eq!(req.body, body.as_bytes());
}

#[test]
fn expect_continue_over_cap_is_413_without_100() {
    let (up, mg) = capped(100);
    let mut c = client(mg.addr());
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 500\r\nExpect: 100-continue\r\n\r\n");
    let r = c.read_response();
    assert_error(&r, 413, "body_too_large");
    assert!(c.is_closed_within(CLOSE_WAIT));
    assert_eq!(up.request_count(), 0);
}

#[test]
fn expect_continue_with_bad_token_is_401_without_100() {
    let (up, mg) = auth_gate();
    let mut c = client(mg.addr());
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 13\r\nExpect: 100-continue\r\n\r\n");
    let r = c.read_response();
    assert_401(&r);
    assert!(c.is_closed_within(CLOSE_WAIT));
    assert_eq!(up.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Keep-alive (SPEC §5, PITFALLS 14).

#[test]
fn twenty_sequential_requests_on_one_client_connection() {
    let a = MockUpstream::openai("alpha");
    let mg = start(&[("m", &a.url())]);
    let mut c = client(mg.addr());
    for i in 0..20 {
        c.send(&request_bytes(
            "POST",
            "/v1/chat/completions",
            &[],
            chat_body("m", i % 2 == 0).as_bytes(),
        ));
        let r = c.read_response();
        assert_eq!(r.status, 200, "request {i}: {}", dump(&r));
    }
    assert!(!c.is_closed(), "still open after 20 requests");
    assert_eq!(a.requests(), 20);
}

/// A keep-alive `POST` of `{"model":"m"}` on `c`; asserts a 200.
fn post_on(c: &mut Client) {
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"m"}"#,
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
}

#[test]
fn upstream_connection_is_reused_for_sequential_requests_on_one_client() {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&config_with(&[("m", &up.url())], json!({"workers": 1})));
    let mut c = client(mg.addr());
    for _ in 0..20 {
        post_on(&mut c);
    }
    up.wait_requests(20, T);
    assert_eq!(
        up.connections(),
        1,
        "one upstream connection for 20 requests"
    );
    assert!(!c.is_closed());
}

/// utime + stime of process `pid`, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The command name may hold spaces; the fields after its closing paren do not.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn a_busy_polling_worker_stops_spinning_when_traffic_stops() {
    // Ping-pong on one connection is what makes a worker spin (busyPoll, worker/spin.rs);
    // once the client goes quiet the worker must sleep, whatever the window.
    for window in [json!(null), json!(10_000), json!(0)] {
        let up = echo_upstream("m");
        let extra = json!({"workers": 1, "busyPoll": window});
        let mg = Modelgate::start(&config_with(&[("m", &up.url())], extra));
        let mut c = client(mg.addr());
        for _ in 0..200 {
            post_on(&mut c);
        }
        std::thread::sleep(Duration::from_millis(100));
        let before = cpu_ticks(mg.pid());
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_ticks(mg.pid()) - before;
        // A worker still spinning would use most of that second (~100 ticks at 100 Hz).
        assert!(
            used < 15,
            "busyPoll {window}: {used} ticks of CPU in an idle second"
        );
        assert!(!c.is_closed());
    }
}

#[test]
fn idle_upstream_connections_are_kept_for_upstream_keep_alive_and_no_longer() {
    for (keep, reused) in [(0.2, false), (30.0, true)] {
        let up = echo_upstream("m");
        let extra = json!({"workers": 1, "timeouts": {"upstreamKeepAlive": keep}});
        let mg = Modelgate::start(&config_with(&[("m", &up.url())], extra));
        let mut c = client(mg.addr());
        post_on(&mut c);
        std::thread::sleep(Duration::from_millis(600));
        post_on(&mut c);
        up.wait_requests(2, T);
        let want = if reused { 1 } else { 2 };
        assert_eq!(up.connections(), want, "upstreamKeepAlive {keep}");
        if !reused {
            // The sweep closes the idle one too, without a request asking for it.
            assert!(
                wait_until(T, || up.open_connections() == 0),
                "the idle connection was closed after {keep} s"
            );
        }
    }
}

#[test]
fn upstream_connection_is_reused_across_client_connections() {
    // Each client asks for `Connection: close` and waits for modelgate to close, so the
    // exchange is finished before the client goes away.
    let up = echo_upstream("m");
    let mg = Modelgate::start(&config_with(&[("m", &up.url())], json!({"workers": 1})));
    for _ in 0..10 {
        let mut c = client(mg.addr());
        c.send(&request_bytes(
            "POST",
            "/v1/chat/completions",
            &["Connection: close"],
            br#"{"model":"m"}"#,
        ));
        assert_eq!(c.read_response().status, 200);
        assert!(c.is_closed_within(CLOSE_WAIT));
    }
    up.wait_requests(10, T);
    assert_eq!(
        up.connections(),
        1,
        "one upstream connection for 10 clients"
    );
}

#[test]
fn upstream_connection_survives_clients_that_close_right_after_the_response() {
    // A client that has its whole response may close at once (keep-alive or not); the
    // exchange is complete, so the upstream connection must go back to the pool.
    let up = echo_upstream("m");
    let mg = Modelgate::start(&config_with(&[("m", &up.url())], json!({"workers": 1})));
    for _ in 0..100 {
        let mut c = client(mg.addr());
        post_on(&mut c);
        drop(c);
    }
    up.wait_requests(100, T);
    assert_eq!(
        up.connections(),
        1,
        "one upstream connection for 100 sequential clients"
    );
}

#[test]
fn client_connection_close_closes_after_response() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let mut c = client(mg.addr());
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Connection: close"],
        br#"{"model":"m"}"#,
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert!(
        c.is_closed_within(CLOSE_WAIT),
        "closed after Connection: close"
    );
}

#[test]
fn http10_without_keep_alive_closes() {
    let mg = listing_gate();
    let mut c = client(mg.addr());
    c.send(b"GET /health HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert!(c.is_closed_within(CLOSE_WAIT), "HTTP/1.0 closes by default");
}

#[test]
fn http10_proxied_without_keep_alive_closes() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let mut c = client(mg.addr());
    c.send(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.body, b"ok");
    assert!(c.is_closed_within(CLOSE_WAIT), "HTTP/1.0 closes by default");
}

// ---------------------------------------------------------------------------------------------
// Pipelining (PITFALLS 13).

#[test]
fn two_pipelined_requests_are_answered_in_order() {
    let a = echo_upstream("a");
    let b = echo_upstream("b");
    let mg = start(&[("ma", &a.url()), ("mb", &b.url())]);
    let mut bytes = request_bytes("POST", "/v1/chat/completions", &[], br#"{"model":"ma"}"#);
    bytes.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Connection: close"],
        br#"{"model":"mb"}"#,
    ));
    let (resps, _) = exchange(mg.addr(), &bytes);
    let who: Vec<_> = resps.iter().map(|r| r.header("x-upstream")).collect();
    assert_eq!(who, [Some("a"), Some("b")]);
}

#[test]
fn three_pipelined_requests_mixing_local_and_proxied_are_in_order() {
    let a = echo_upstream("a");
    let b = echo_upstream("b");
    let mg = start(&[("ma", &a.url()), ("mb", &b.url())]);
    let mut bytes = request_bytes("POST", "/v1/chat/completions", &[], br#"{"model":"mb"}"#);
    bytes.extend(request_bytes("GET", "/health", &[], b""));
    bytes.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Connection: close"],
        br#"{"model":"ma"}"#,
    ));
    let (resps, eof) = exchange(mg.addr(), &bytes);
    assert_eq!(resps.len(), 3, "{resps:?}");
    assert_eq!(resps[0].header("x-upstream"), Some("b"));
    assert_eq!(resps[1].json()["status"], "ok");
    assert_eq!(resps[2].header("x-upstream"), Some("a"));
    assert!(eof);
}

#[test]
fn pipelined_requests_split_mid_head_are_answered() {
    let a = echo_upstream("a");
    let mg = start(&[("ma", &a.url())]);
    let one = request_bytes("POST", "/v1/chat/completions", &[], br#"{"model":"ma"}"#);
    let mut all = one.clone();
    all.extend_from_slice(&one);
    let split = one.len() + 10;
    let mut c = client(mg.addr());
    c.send(&all[..split]);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    c.send(&all[split..]);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
}

// ---------------------------------------------------------------------------------------------
// Bodiless responses: HEAD, 1xx, 204, 304 (PITFALLS 10).

#[test]
fn head_with_content_length_then_get_on_same_connections() {
    let up = ScriptedUpstream::start(|c| {
        while let Some(r) = c.read_request() {
            let res = if r.method == "HEAD" {
                c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            } else {
                c.respond(200, &[], b"0123456789")
            };
            if res.is_err() {
                break;
            }
        }
    });
    let mg = Modelgate::start(&config_with(&[("m", &up.url())], json!({"workers": 1})));
    let mut c = client(mg.addr());
    c.send(&request_bytes("HEAD", "/route/m/file", &[], b""));
    let h = c.read_response_no_body();
    assert_eq!(h.status, 200, "{}", dump(&h));
    assert_eq!(h.header("content-length"), Some("10"));
    c.send(&request_bytes("GET", "/route/m/file", &[], b""));
    let g = c.read_response();
    assert_eq!(g.status, 200, "{}", dump(&g));
    assert_eq!(g.body, b"0123456789");
    assert!(c.buffered().is_empty(), "stray bytes: {:?}", c.buffered());
    assert_eq!(up.request_count(), 2);
    assert_eq!(up.connections(), 1, "the upstream connection is reused");
}

#[test]
fn early_hints_103_pass_through_before_final_response() {
    let up = raw_upstream(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let mg = start(&[("m", &up.url())]);
    let mut c = client(mg.addr());
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"m"}"#,
    ));
    let (infos, r) = c.read_final_response();
    assert_eq!(infos.len(), 1, "{infos:?}");
    assert_eq!(infos[0].status, 103);
    assert_eq!(infos[0].header("link"), Some("</style.css>; rel=preload"));
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.body, b"ok");
    // And the connection still frames correctly afterwards.
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"m"}"#,
    ));
    let (_, r) = c.read_final_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
}

#[test]
fn status_204_has_no_body_and_connections_stay_usable() {
    let up = raw_upstream(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n");
    let mg = Modelgate::start(&config_with(&[("m", &up.url())], json!({"workers": 1})));
    let mut c = client(mg.addr());
    for _ in 0..2 {
        c.send(&request_bytes(
            "POST",
            "/v1/chat/completions",
            &[],
            br#"{"model":"m"}"#,
        ));
        let r = c.read_response_no_body();
        assert_eq!(r.status, 204, "{}", dump(&r));
        assert_eq!(r.header("x-a"), Some("1"));
    }
    assert!(c.read_available(Duration::from_millis(50)).is_empty());
    assert_eq!(up.connections(), 1);
}

#[test]
fn status_304_with_content_length_has_no_body() {
    let up =
        raw_upstream(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\n");
    let mg = Modelgate::start(&config_with(&[("m", &up.url())], json!({"workers": 1})));
    let mut c = client(mg.addr());
    for _ in 0..2 {
        c.send(&request_bytes(
            "GET",
            "/route/m/x",
            &["If-None-Match: \"v1\""],
            b"",
        ));
        let r = c.read_response_no_body();
        assert_eq!(r.status, 304, "{}", dump(&r));
        assert_eq!(r.header("etag"), Some("\"v1\""));
    }
    assert!(c.read_available(Duration::from_millis(50)).is_empty());
    assert_eq!(up.connections(), 1);
}

// ---------------------------------------------------------------------------------------------
// Response passthrough (SPEC §5).

#[test]
fn response_status_headers_and_body_pass_through() {
    let up = raw_upstream(
        b"HTTP/1.1 418 I'm a teapot\r\nContent-Type: text/x-tea\r\nx-MiXeD-Case: Value  With  Spaces\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: X-Hop-Resp\r\nX-Hop-Resp: gone\r\nKeep-Alive: timeout=5\r\nContent-Length: 8\r\n\r\n\x00tea\xffpot",
    );
    let mg = start(&[("m", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"m"}"#);
    assert_eq!(r.status, 418, "{}", dump(&r));
    let raw = dump(&r);
    assert!(
        raw.contains("\r\nx-MiXeD-Case: Value  With  Spaces\r\n"),
        "{raw}"
    );
    assert_eq!(r.header("content-type"), Some("text/x-tea"));
    assert_eq!(r.header_all("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(r.header("x-hop-resp"), None, "{raw}");
    assert_eq!(r.header("keep-alive"), None, "{raw}");
    for v in r.header_all("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-hop"), "{raw}");
    }
    assert_eq!(r.body, b"\x00tea\xffpot");
}

#[test]
fn upstream_error_statuses_pass_through() {
    let a = MockUpstream::openai("alpha");
    let mg = start(&[("m", &a.url())]);
    let r = send(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["X-Mock-Status: 429"],
        chat_body("m", false).as_bytes(),
    );
    assert_eq!(r.status, 429, "{}", dump(&r));
    assert_eq!(r.header("x-mock-name"), Some("alpha"));
    assert_eq!(r.error_code().as_deref(), Some("mock_status"));
}

#[test]
fn chunked_response_with_trailers_passes_through_byte_for_byte() {
    const BODY: &[u8] =
        b"5\r\nhello\r\nA;ext=1\r\n, world! !\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n";
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Other\r\n\r\n5\r\nhello\r\nA;ext=1\r\n, world! !\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
    );
    let mg = start(&[("m", &up.url())]);
    let mut c = client(mg.addr());
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["TE: trailers"],
        br#"{"model":"m"}"#,
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert!(r.chunked);
    assert_eq!(r.body, b"hello, world! !");
    assert_eq!(r.trailers, ["X-Checksum: abc", "X-Other: 1"]);
    assert!(r.raw.ends_with(BODY), "{}", dump(&r));
}

#[test]
fn sse_stream_passes_through_complete() {
    let a = MockUpstream::openai("alpha");
    let mg = start(&[("m", &a.url())]);
    let r = post(mg.addr(), &chat_body("m", true));
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(data.len(), 8 + 3);
}

fn big_upstream(chunked: bool, payload: &'static [u8]) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            let res = if chunked {
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for piece in payload.chunks(65_521) {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                c.write_all(&out)
            } else {
                c.respond(200, &["Content-Type: application/octet-stream"], payload)
            };
            if res.is_err() {
                break;
            }
        }
    })
}

fn big_payload() -> &'static [u8] {
    static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    P.get_or_init(|| pattern(20 * 1024 * 1024))
}

#[test]
fn twenty_mb_content_length_response_arrives_intact() {
    let up = big_upstream(false, big_payload());
    let mg = start(&[("m", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"m"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big_payload().len());
    assert!(r.body == big_payload(), "20 MB body differs");
}

#[test]
fn twenty_mb_chunked_response_arrives_intact() {
    let up = big_upstream(true, big_payload());
    let mg = start(&[("m", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"m"}"#);
    assert_eq!(r.status, 200);
    assert!(r.chunked);
    assert_eq!(r.body.len(), big_payload().len());
    assert!(r.body == big_payload(), "20 MB chunked body differs");
}

#[test]
fn large_request_body_arrives_intact() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let filler: String = pattern(3 * 1024 * 1024)
        .iter()
        .map(|b| (b'a' + b % 26) as char)
        .collect();
    let body = format!(r#"{{"messages":[{{"content":"{filler}"}}],"model":"m"}}"#);
    let r = post(mg.addr(), &body);
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert!(only_request(&up).raw_body == body.as_bytes());
}

#[test]
fn pipelined_big_bodies_arrive_intact_and_in_order() {
    // Big bodies are read several blocks per syscall: the second request begins inside a read
    // that also holds the end of the first.
    let a = echo_upstream("a");
    let b = echo_upstream("b");
    let mg = start(&[("ma", &a.url()), ("mb", &b.url())]);
    let body = |model: &str, n: usize| {
        let filler: String = pattern(n).iter().map(|b| (b'a' + b % 26) as char).collect();
        format!(r#"{{"messages":[{{"content":"{filler}"}}],"model":"{model}"}}"#)
    };
    let first = body("ma", 1_000_003);
    let second = body("mb", 1_500_007);
    let mut bytes = request_bytes("POST", "/v1/chat/completions", &[], first.as_bytes());
    bytes.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Connection: close"],
        second.as_bytes(),
    ));
    let (resps, eof) = exchange(mg.addr(), &bytes);
    let who: Vec<_> = resps.iter().map(|r| r.header("x-upstream")).collect();
    assert_eq!(who, [Some("a"), Some("b")]);
    assert!(eof);
    assert!(only_request(&a).raw_body == first.as_bytes());
    assert!(only_request(&b).raw_body == second.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Unix sockets (SPEC §2, §5).

#[test]
fn unix_listener_serves_local_and_proxied_requests() {
    let a = MockUpstream::openai("alpha");
    let dir = TempDir::new();
    let sock = dir.join("mg.sock");
    let mg = Modelgate::start(&cfg(
        json!({"m": {"url": a.url()}}),
        json!({"listen": ["127.0.0.1:0", format!("unix:{}", sock.display())]}),
    ));
    assert_eq!(mg.unix_path(), Some(sock.as_path()));
    let mut c = Client::connect_unix(&sock);
    c.set_read_timeout(T);
    c.send(&request_bytes("GET", "/health", &[], b""));
    assert_eq!(c.read_response().json()["status"], "ok");
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        chat_body("m", false).as_bytes(),
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.header("x-mock-name"), Some("alpha"));
    // The TCP listener works too.
    assert_eq!(post(mg.addr(), &chat_body("m", false)).status, 200);
}

#[test]
fn unix_listener_client_gets_no_x_forwarded_for() {
    let up = echo_upstream("m");
    let dir = TempDir::new();
    let sock = dir.join("mg.sock");
    let mg = Modelgate::start(&cfg(
        json!({"m": {"url": up.url()}}),
        json!({"listen": [format!("unix:{}", sock.display())]}),
    ));
    let _ = &mg;
    let mut c = Client::connect_unix(&sock);
    c.set_read_timeout(T);
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["X-Forwarded-For: 6.6.6.6"],
        br#"{"model":"m"}"#,
    ));
    assert_eq!(c.read_response().status, 200);
    assert_eq!(only_request(&up).header("x-forwarded-for"), None);
}

#[test]
fn unix_upstream_is_reached_end_to_end() {
    let dir = TempDir::new();
    let a = MockUpstream::openai_unix(dir.join("up.sock"), "unixy");
    let mg = start(&[("m", &a.url())]);
    let r = post(mg.addr(), &chat_body("m", false));
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(r.header("x-mock-name"), Some("unixy"));
    let r = post(mg.addr(), &chat_body("m", true));
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn unix_upstream_gets_host_localhost() {
    let dir = TempDir::new();
    let up = ScriptedUpstream::start_unix(dir.join("up.sock"), |c| {
        while c.read_request().is_some() {
            if c.respond(200, &[], b"ok").is_err() {
                break;
            }
        }
    });
    let mg = start(&[("m", &up.url())]);
    let r = post(mg.addr(), r#"{"model":"m"}"#);
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    assert_eq!(req.header_all("host"), ["localhost"]);
    assert_eq!(req.target, "/v1/chat/completions");
}

// ---------------------------------------------------------------------------------------------
// Framing and limits at the edge (SPEC §6, §10; PITFALLS 9, 18, 19).

/// Sends `bytes` and expects exactly one error response with `status`/`code`, then a close,
/// and nothing at the upstream.
fn assert_rejected(bytes: &[u8], status: u16, code: &str) {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let (resps, eof) = exchange(mg.addr(), bytes);
    assert_eq!(resps.len(), 1, "responses: {resps:?}");
    assert_error(&resps[0], status, code);
    assert!(eof, "the connection closes");
    assert_eq!(up.connections(), 0, "the upstream must see nothing");
}

#[test]
fn content_length_with_transfer_encoding_is_400_and_close() {
    assert_rejected(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\nD\r\n{\"model\":\"m\"}\r\n0\r\n\r\n",
        400,
        "bad_request",
    );
}

#[test]
fn content_length_with_plus_sign_is_400() {
    assert_rejected(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Length: +13\r\n\r\n{\"model\":\"m\"}",
        400,
        "bad_request",
    );
}

#[test]
fn content_length_list_of_different_values_is_400() {
    assert_rejected(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 13, 14\r\n\r\n{\"model\":\"m\"}",
        400,
        "bad_request",
    );
}

#[test]
fn transfer_encoding_not_ending_in_chunked_is_400() {
    assert_rejected(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    );
}

#[test]
fn missing_host_on_http11_is_400() {
    assert_rejected(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}",
        400,
        "bad_request",
    );
}

#[test]
fn repeated_host_on_http11_is_400() {
    assert_rejected(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}",
        400,
        "bad_request",
    );
}

fn head_with_headers(n: usize) -> Vec<u8> {
    let mut h = String::from("GET /health HTTP/1.1\r\nHost: mg.test\r\n");
    for i in 1..n {
        h.push_str(&format!("X-H-{i}: v\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

#[test]
fn head_with_101_headers_is_431() {
    assert_rejected(&head_with_headers(101), 431, "bad_request");
}

#[test]
fn head_with_100_headers_is_accepted() {
    let mg = listing_gate();
    let mut c = client(mg.addr());
    c.send(&head_with_headers(100));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
}

#[test]
fn head_of_70_kib_is_431() {
    let big = "a".repeat(70 * 1024);
    let head = format!("GET /health HTTP/1.1\r\nHost: mg.test\r\nX-Big: {big}\r\n\r\n");
    assert_rejected(head.as_bytes(), 431, "bad_request");
}

// ---------------------------------------------------------------------------------------------
// More edges: connection reuse after fully read errors, close-delimited responses, framing.

#[test]
fn connection_stays_usable_after_model_not_found() {
    // The body was read whole, so the 404 need not close: the next request is served.
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let mut bytes = request_bytes("POST", "/v1/chat/completions", &[], br#"{"model":"zz"}"#);
    bytes.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Connection: close"],
        br#"{"model":"m"}"#,
    ));
    let (resps, eof) = exchange(mg.addr(), &bytes);
    let codes: Vec<_> = resps.iter().map(|r| r.status).collect();
    assert_eq!(codes, [404, 200], "{resps:?}");
    assert!(eof);
}

#[test]
fn connection_stays_usable_after_invalid_json_with_framed_body() {
    // SPEC §6: close only "when the rest of the request can't be framed safely". Here the
    // whole body is framed by Content-Length and already sent; `missing_model` (found at
    // the end) keeps the connection, `invalid_json` (found mid-body) closes it.
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let mut bytes = request_bytes("POST", "/v1/chat/completions", &[], b"{not json}");
    bytes.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Connection: close"],
        br#"{"model":"m"}"#,
    ));
    let (resps, eof) = exchange(mg.addr(), &bytes);
    let codes: Vec<_> = resps.iter().map(|r| r.status).collect();
    assert_eq!(codes, [400, 200], "{resps:?}");
    assert!(eof);
}

#[test]
fn connection_stays_usable_after_missing_model() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let mut bytes = request_bytes("POST", "/v1/chat/completions", &[], br#"{"x":1}"#);
    bytes.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Connection: close"],
        br#"{"model":"m"}"#,
    ));
    let (resps, _) = exchange(mg.addr(), &bytes);
    let codes: Vec<_> = resps.iter().map(|r| r.status).collect();
    assert_eq!(codes, [400, 200], "{resps:?}");
}

#[test]
fn close_delimited_upstream_response_reaches_client_then_close() {
    let up = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close body");
            c.close();
        }
    });
    let mg = start(&[("m", &up.url())]);
    let mut c = client(mg.addr());
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"m"}"#,
    ));
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    assert!(eof, "a close-delimited response ends with a close");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nuntil-close body"), "{text}");
}

#[test]
fn http10_upstream_response_without_length_is_close_delimited() {
    let up = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nold style");
            c.close();
        }
    });
    let mg = start(&[("m", &up.url())]);
    let mut c = client(mg.addr());
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"m"}"#,
    ));
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    assert!(eof);
    assert!(String::from_utf8_lossy(&raw).ends_with("\r\n\r\nold style"));
}

#[test]
fn transfer_encoding_on_http10_is_400() {
    assert_rejected(
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\n\r\nD\r\n{\"model\":\"m\"}\r\n0\r\n\r\n",
        400,
        "bad_request",
    );
}

#[test]
fn negative_and_hex_content_length_are_400() {
    for cl in ["-1", "0x5", "1 3", ""] {
        assert_rejected(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Length: {cl}\r\n\r\n{{\"model\":\"m\"}}"
            )
            .as_bytes(),
            400,
            "bad_request",
        );
    }
}

#[test]
fn bad_chunk_size_is_400_and_close() {
    assert_rejected(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{\"model\":\"m\"}\r\n0\r\n\r\n",
        400,
        "bad_request",
    );
}

#[test]
fn route_path_with_cl_and_te_is_400_and_upstream_gets_nothing() {
    // The streamed (path-routed) body path must validate framing before connecting.
    assert_rejected(
        b"POST /route/m/x HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    );
}

#[test]
fn expect_continue_with_chunked_body_gets_one_100() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let mut c = client(mg.addr());
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
    let cont = c.read_response();
    assert_eq!(cont.status, 100, "{}", dump(&cont));
    c.send(b"D\r\n{\"model\":\"m\"}\r\n0\r\n\r\n");
    let (infos, r) = c.read_final_response();
    assert!(infos.is_empty(), "{infos:?}");
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(only_request(&up).header("expect"), None);
}

#[test]
fn expect_continue_on_route_path_is_answered_locally() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let mut c = client(mg.addr());
    c.send(b"PUT /route/m/up HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    let cont = c.read_response();
    assert_eq!(cont.status, 100, "{}", dump(&cont));
    c.send(b"abc");
    let (infos, r) = c.read_final_response();
    assert!(infos.is_empty(), "{infos:?}");
    assert_eq!(r.status, 200, "{}", dump(&r));
    let req = only_request(&up);
    assert_eq!(req.header("expect"), None);
    assert_eq!(req.body, b"abc");
}

#[test]
fn route_path_body_over_cap_is_413() {
    let (up, mg) = capped(100);
    let mut c = client(mg.addr());
    c.send(b"POST /route/m/x HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 101\r\n\r\n");
    let r = c.read_response();
    assert_error(&r, 413, "body_too_large");
    assert!(c.is_closed_within(CLOSE_WAIT));
    assert_eq!(up.request_count(), 0);
}

/// Sends a `/route/` request with a chunked body of `pieces` × 600 bytes and returns the
/// client (the body is cut short if modelgate answers first).
fn route_chunked(mg: &Modelgate, model: &str, pieces: usize) -> Client {
    let mut c = client(mg.addr());
    c.send(
        format!(
            "POST /route/{model}/v1/files HTTP/1.1\r\nHost: mg.test\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    );
    for _ in 0..pieces {
        let mut chunk = b"258\r\n".to_vec();
        chunk.extend_from_slice(&[b'a'; 600]);
        chunk.extend_from_slice(b"\r\n");
        if c.try_send(&chunk).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    c
}

/// The access log line of the request answered `status`, waited for.
fn log_line_with_status(mg: &Modelgate, status: u64) -> serde_json::Value {
    let mut found = None;
    assert!(
        wait_until(CLOSE_WAIT, || {
            found = mg
                .json_lines()
                .into_iter()
                .find(|l| l["status"].as_u64() == Some(status));
            found.is_some()
        }),
        "no access log line with status {status}: {:?}",
        mg.stderr_lines()
    );
    found.unwrap_or_default()
}

#[test]
fn route_path_chunked_body_past_the_global_cap_is_413_logged_rejected() {
    // Only the global cap is set; the body's length is known only by reading it.
    let (up, mg) = capped(1000);
    let mut c = route_chunked(&mg, "m", 4);
    let r = c.read_response();
    assert_error(&r, 413, "body_too_large");
    assert!(c.is_closed_within(CLOSE_WAIT));
    let line = log_line_with_status(&mg, 413);
    assert_eq!(line["outcome"], "rejected", "{line}");
    assert_eq!(line["model"], "m", "{line}");
    // The upstream had the head and the first piece: it never got an answer to give, and the
    // next request on a fresh connection is served normally.
    assert_eq!(
        up.request_count(),
        0,
        "no complete request reached the upstream"
    );
    let ok = post_json(mg.addr(), "/route/m/v1/files", "{}");
    assert_eq!(ok.status, 200, "{}", dump(&ok));
}

#[test]
fn route_path_chunked_body_past_a_model_cap_is_413() {
    let up = echo_upstream("m");
    let mg = Modelgate::start(
        &json!({
            "listen": "127.0.0.1:0",
            "maxBodyBytes": 0,
            "models": {"m": {"url": up.url(), "maxBodyBytes": 1000}},
        })
        .to_string(),
    );
    let mut c = route_chunked(&mg, "m", 4);
    assert_error(&c.read_response(), 413, "body_too_large");
    assert!(c.is_closed_within(CLOSE_WAIT));
    assert_eq!(log_line_with_status(&mg, 413)["outcome"], "rejected");
    // Within the cap the same request streams through.
    let mut c = route_chunked(&mg, "m", 1);
    c.send(b"0\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn large_route_path_chunked_body_streams_intact() {
    let up = echo_upstream("m");
    let mg = start(&[("m", &up.url())]);
    let payload = pattern(2 * 1024 * 1024 + 17);
    let mut framed = Vec::new();
    for piece in payload.chunks(10_007) {
        framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        framed.extend_from_slice(piece);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    let mut req = b"POST /route/m/blob HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(&framed);
    let mut c = client(mg.addr());
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    let got = only_request(&up);
    assert!(got.raw_body == framed, "chunk bytes differ");
    assert!(got.body == payload);
}
