//! Hostile input at the edge (issue 6): every case is a real socket exchange against the real
//! binary, with a defined outcome (a status then a close, or a clean close), a check that the
//! connection afterwards is closed or still correctly framed, and a check of what the upstream
//! received (usually: nothing).
//!
//! Not repeated here (already pinned elsewhere): CL+TE with CL first, `chunked, identity`, `+13`,
//! `13, 14`, 101 headers, a 70 KiB head, 401 before the body (`tests/forwarding.rs`); slow
//! readers, idle cut of a stalled client, upstream close/RST mid chunked stream, malformed
//! status line, invalid response chunking (`tests/streaming_faults.rs`).

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Read timeout: a hang fails fast.
const T: Duration = Duration::from_secs(5);
const CLOSE_WAIT: Duration = Duration::from_secs(2);
const BODY: &[u8] = br#"{"model":"m"}"#;
/// A complete, valid chat request: what a smuggler hides in a body, trailer or leftover bytes.
const SMUGGLED: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Smuggled: 1\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn start(up: &ScriptedUpstream, extra: serde_json::Value) -> Modelgate {
    let mut extra = extra;
    extra["workers"] = json!(1);
    Modelgate::start(&config_with(&[("m", &up.url())], extra))
}

/// Answers every request with 200 `ok`, keep-alive.
fn echo_upstream() -> ScriptedUpstream {
    ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            if c.respond(200, &["X-Upstream: m"], b"ok").is_err() {
                break;
            }
        }
    })
}

fn client(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    c.set_read_timeout(T);
    c
}

fn dump(r: &Response) -> String {
    String::from_utf8_lossy(&r.raw).into_owned()
}

/// Sends `bytes` on a new connection; (responses, closed by the server within `T`).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<Response>, bool) {
    let mut c = client(addr);
    let _ = c.try_send(bytes);
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    (parse_responses(&raw), eof)
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", dump(r));
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{}",
        dump(r)
    );
    assert_eq!(r.error_code().as_deref(), Some(code), "{}", dump(r));
}

/// Exactly one error response with `status`/`code`, then a close; the upstream never even
/// got a connection.
fn assert_rejected(bytes: &[u8], status: u16, code: &str) {
    let up = echo_upstream();
    let mg = start(&up, json!({}));
    let (resps, eof) = exchange(mg.addr(), bytes);
    assert_eq!(resps.len(), 1, "responses: {resps:?}");
    assert_error(&resps[0], status, code);
    assert!(
        resps[0].header_has_token("connection", "close"),
        "{}",
        dump(&resps[0])
    );
    assert!(eof, "the connection must close after the rejection");
    assert_eq!(up.connections(), 0, "the upstream must see nothing");
}

fn post_head(extra: &str) -> Vec<u8> {
    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\n{extra}\r\n").into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------
// Request smuggling and header syntax (PITFALLS 9, 19).

#[test]
fn te_then_cl_is_400_and_close() {
    // TE.CL order (forwarding.rs pins CL first). A smuggled request follows the chunked body.
    assert_rejected(
        &cat(&[
            &post_head("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"),
            b"D\r\n",
            BODY,
            b"\r\n0\r\n\r\n",
            SMUGGLED,
        ]),
        400,
        "bad_request",
    );
}

#[test]
fn duplicate_differing_content_length_lines_are_400_and_close() {
    assert_rejected(
        &cat(&[
            &post_head("Content-Length: 13\r\nContent-Length: 100\r\n"),
            BODY,
            SMUGGLED,
        ]),
        400,
        "bad_request",
    );
}

#[test]
fn duplicate_equal_content_length_lines_are_accepted_and_forwarded_once() {
    // The judgement call of PITFALLS 9, pinned: identical values agree on the framing, so the
    // request is served; the upstream sees one Content-Length and exactly the body.
    let up = echo_upstream();
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(&cat(&[
        &post_head("Content-Length: 13\r\nContent-Length: 13\r\n"),
        BODY,
        b"GET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n",
    ]));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", dump(&r));
    let r2 = c.read_response();
    assert_eq!(
        r2.status, 200,
        "the next request is framed right after the body"
    );
    assert_eq!(r2.json()["status"], "ok");
    let reqs = up.wait_requests(1, T);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header_all("content-length"), ["13"]);
    assert_eq!(reqs[0].body, BODY);
}

#[test]
fn transfer_encoding_identity_alone_is_400_and_close() {
    assert_rejected(
        &cat(&[
            &post_head("Transfer-Encoding: identity\r\n"),
            BODY,
            SMUGGLED,
        ]),
        400,
        "bad_request",
    );
}

#[test]
fn obs_fold_continuation_line_is_400_and_close() {
    assert_rejected(
        &cat(&[
            &post_head("X-A: a\r\n Content-Length: 50\r\nContent-Length: 13\r\n"),
            BODY,
        ]),
        400,
        "bad_request",
    );
}

#[test]
fn bare_cr_in_a_header_line_is_400_and_close() {
    assert_rejected(
        &cat(&[
            &post_head("X-A: a\rContent-Length: 50\r\nContent-Length: 13\r\n"),
            BODY,
        ]),
        400,
        "bad_request",
    );
}

#[test]
fn nul_in_a_header_value_is_400_and_close() {
    assert_rejected(
        &cat(&[&post_head("X-A: a\0b\r\nContent-Length: 13\r\n"), BODY]),
        400,
        "bad_request",
    );
}

#[test]
fn chunk_size_overflow_is_400_and_close() {
    // 18 hex digits: would wrap a naive `size * 16 + d` into a small size.
    assert_rejected(
        &cat(&[
            &post_head("Transfer-Encoding: chunked\r\n"),
            b"ffffffffffffffffff\r\n",
            BODY,
            b"\r\n0\r\n\r\n",
        ]),
        400,
        "bad_request",
    );
}

#[test]
fn chunk_extension_bomb_is_400_and_close() {
    let ext = vec![b'a'; 20 * 1024];
    assert_rejected(
        &cat(&[
            &post_head("Transfer-Encoding: chunked\r\n"),
            b"D;x=",
            &ext,
            b"\r\n",
            BODY,
            b"\r\n0\r\n\r\n",
        ]),
        400,
        "bad_request",
    );
}

#[test]
fn content_length_in_request_trailers_is_400_and_close() {
    assert_rejected(
        &cat(&[
            &post_head("Transfer-Encoding: chunked\r\n"),
            b"D\r\n",
            BODY,
            b"\r\n0\r\nContent-Length: 99\r\n\r\n",
            SMUGGLED,
        ]),
        400,
        "bad_request",
    );
}

#[test]
fn content_length_in_route_path_trailers_never_reaches_the_upstream() {
    // On a /route/ path the body streams to the upstream as it comes, so the head and the
    // chunk are already there when the trailer is seen. The smuggled trailer must not follow
    // them, and the upstream must not see a complete request (no terminator): it sees its
    // connection closed. The client gets a 400 and a close.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let tx = Mutex::new(tx);
    let up = ScriptedUpstream::start(move |c| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        c.set_read_timeout(Some(T));
        while let Ok(n) = c.read_raw(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let _ = tx.lock().unwrap().send(got);
    });
    let mg = start(&up, json!({}));
    let bytes = cat(&[
        b"POST /route/m/v1/x HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n",
        SMUGGLED,
    ]);
    let (resps, eof) = exchange(mg.addr(), &bytes);
    assert!(eof, "the client connection must close");
    assert!(resps.len() <= 1, "{resps:?}");
    if let Some(r) = resps.first() {
        assert_error(r, 400, "bad_request");
    }
    let got = rx.recv_timeout(Duration::from_secs(8)).unwrap_or_default();
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.to_ascii_lowercase().contains("content-length: 99"),
        "the smuggled trailer reached the upstream: {text:?}"
    );
    assert!(!text.contains("X-Smuggled"), "{text:?}");
    assert!(
        !text.contains("0\r\n\r\n"),
        "the upstream saw a complete chunked body: {text:?}"
    );
}

#[test]
fn hundred_kib_of_request_trailers_is_400_and_close() {
    let mut trailers = Vec::new();
    for i in 0..1000 {
        trailers.extend_from_slice(format!("X-T{i}: {}\r\n", "v".repeat(95)).as_bytes());
    }
    assert!(trailers.len() > 100 * 1024);
    assert_rejected(
        &cat(&[
            &post_head("Transfer-Encoding: chunked\r\n"),
            b"D\r\n",
            BODY,
            b"\r\n0\r\n",
            &trailers,
            b"\r\n",
        ]),
        400,
        "bad_request",
    );
}

// ---------------------------------------------------------------------------------------------
// Request line: methods, targets, versions.

#[test]
fn invalid_method_g_at_t_is_400_and_close() {
    assert_rejected(
        b"G@T /health HTTP/1.1\r\nHost: mg.test\r\n\r\n",
        400,
        "bad_request",
    );
}

#[test]
fn empty_method_is_400_and_close() {
    assert_rejected(
        b" /health HTTP/1.1\r\nHost: mg.test\r\n\r\n",
        400,
        "bad_request",
    );
}

#[test]
fn asterisk_target_is_400_and_close() {
    assert_rejected(
        b"OPTIONS * HTTP/1.1\r\nHost: mg.test\r\n\r\n",
        400,
        "bad_request",
    );
}

#[test]
fn connect_authority_form_is_400_and_close() {
    assert_rejected(
        b"CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\n\r\n",
        400,
        "bad_request",
    );
}

/// SPEC §11: CONNECT and PRI are refused at the edge whatever their target form (origin,
/// absolute, asterisk, a `/route/` path, a routable body), with 400 and a close: the bytes
/// after such a head (tunnel bytes, an HTTP/2 preface's frames) are never read as a request,
/// and the upstream sees nothing at all. 400, not 405: authority-form CONNECT was already 400
/// as a malformed target, a 405 must list the allowed methods in `Allow` (a router of
/// arbitrary backends cannot), and either way the connection must close.
#[test]
fn connect_and_pri_are_400_and_close_in_every_target_form() {
    let body = r#"{"model":"m","messages":[]}"#;
    for method in ["CONNECT", "PRI"] {
        for target in [
            "/v1/chat/completions",
            "/route/m/v1/chat/completions",
            "http://mg.test/v1/chat/completions",
            "*",
            "upstream.example:443",
        ] {
            let raw = format!(
                "{method} {target} HTTP/1.1\r\nHost: mg.test\r\nContent-Length: {}\r\n\r\n{body}\
                 GET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n",
                body.len()
            );
            let up = echo_upstream();
            let mg = start(&up, json!({}));
            let (resps, eof) = exchange(mg.addr(), raw.as_bytes());
            assert_eq!(resps.len(), 1, "{method} {target}: {resps:?}");
            assert_error(&resps[0], 400, "bad_request");
            let message = resps[0].json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert!(message.starts_with(method), "{method} {target}: {message}");
            assert!(resps[0].header_has_token("connection", "close"));
            assert!(eof, "{method} {target}: the connection must close");
            assert_eq!(
                up.connections(),
                0,
                "{method} {target}: the upstream saw a connection"
            );
            assert_eq!(up.request_count(), 0);
        }
    }
}

#[test]
fn absolute_form_without_path_is_routed_as_root() {
    // Pinned: `http://x` is absolute-form with an empty path, i.e. `/`, which is routed by
    // body; a GET has none, so 400 invalid_json, and the connection stays framed.
    let up = echo_upstream();
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(b"GET http://x HTTP/1.1\r\nHost: mg.test\r\n\r\nGET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n");
    let r = c.read_response();
    assert_error(&r, 400, "invalid_json");
    let r2 = c.read_response();
    assert_eq!(r2.status, 200, "{}", dump(&r2));
    assert_eq!(up.connections(), 0);
}

#[test]
fn absolute_form_post_is_routed_like_origin_form() {
    // Pinned: the authority in the target is ignored for routing and for the upstream Host
    // (the upstream gets origin-form and its own authority); X-Forwarded-Host is the client's
    // Host header (SPEC §5), not the target's authority.
    let up = echo_upstream();
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(&cat(&[
        b"POST http://evil.example/v1/chat/completions?a=1 HTTP/1.1\r\nHost: mg.test\r\nContent-Length: 13\r\n\r\n",
        BODY,
        b"GET http://evil.example/route/m/v1/models HTTP/1.1\r\nHost: mg.test\r\n\r\n",
    ]));
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.read_response().status, 200);
    let reqs = up.wait_requests(2, T);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].target, "/v1/chat/completions?a=1");
    assert_eq!(reqs[0].body, BODY);
    assert_eq!(reqs[1].target, "/v1/models");
    let authority = up.addr().to_string();
    for r in &reqs {
        assert_eq!(r.header("host"), Some(authority.as_str()));
        assert_eq!(r.header("x-forwarded-host"), Some("mg.test"));
        assert!(!r.raw_head.windows(4).any(|w| w == b"evil"), "{r:?}");
    }
}

/// HTTP/1.0 requests on one connection: a proxied one and a local one with keep-alive, then
/// two without. Returns (responses, closed).
fn http10_sequence() -> (Vec<Response>, bool, usize) {
    let up = echo_upstream();
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(&cat(&[
        b"POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 13\r\n\r\n",
        BODY,
        b"GET /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        b"GET /health HTTP/1.0\r\n\r\n",
        b"GET /health HTTP/1.0\r\n\r\n",
    ]));
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    (parse_responses(&raw), eof, up.request_count())
}

#[test]
fn http10_keep_alive_is_honoured_then_plain_http10_closes() {
    let (resps, eof, upstream_requests) = http10_sequence();
    assert_eq!(
        resps.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 200],
        "the fourth request, after a 1.0 request without keep-alive, is never answered"
    );
    assert!(eof, "closed after the HTTP/1.0 request without keep-alive");
    assert!(
        resps[2].header_has_token("connection", "close"),
        "{}",
        dump(&resps[2])
    );
    assert_eq!(upstream_requests, 1);
}

#[test]
fn http10_keep_alive_response_says_keep_alive() {
    // RFC 9112 §9.3 / RFC 2068 §19.7.1: an HTTP/1.0 client only keeps the connection when
    // the response carries `Connection: keep-alive` (nginx and Apache send it).
    let (resps, _, _) = http10_sequence();
    assert_eq!(resps.len(), 3, "{resps:?}");
    for r in &resps[..2] {
        assert!(
            r.header_has_token("connection", "keep-alive"),
            "{}",
            dump(r)
        );
    }
}

#[test]
fn http2_preface_is_400_and_close() {
    assert_rejected(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        400,
        "bad_request",
    );
}

#[test]
fn garbage_with_a_blank_line_is_400_and_close() {
    let mut bytes: Vec<u8> = (1..=255u8).filter(|b| *b != b'\r' && *b != b'\n').collect();
    bytes.extend_from_slice(b"\r\n\r\n");
    assert_rejected(&bytes, 400, "bad_request");
}

#[test]
fn garbage_without_a_line_end_is_cut_at_the_header_deadline() {
    // Pinned: the head is only parsed once its end (a blank line) arrives, so binary garbage
    // without one is not rejected at once; it is cut by the absolute header deadline with a
    // 408 and a close, like any slow head.
    let up = echo_upstream();
    let mg = start(&up, json!({"timeouts": {"header": 1}}));
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i * 7 % 256) as u8)
        .map(|b| if b == b'\n' { 0 } else { b })
        .collect();
    let t0 = Instant::now();
    let (resps, eof) = exchange(mg.addr(), &garbage);
    assert!(eof, "still open after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(resps.len(), 1, "{resps:?}");
    assert_error(&resps[0], 408, "request_timeout");
    assert_eq!(up.connections(), 0);
}

/// A GET /health head of exactly `n` bytes.
fn head_of(n: usize) -> Vec<u8> {
    let base = b"GET /health HTTP/1.1\r\nHost: mg.test\r\nX-Pad: ";
    let end = b"\r\n\r\n";
    let mut h = base.to_vec();
    h.resize(n - end.len(), b'a');
    h.extend_from_slice(end);
    assert_eq!(h.len(), n);
    h
}

#[test]
fn head_of_exactly_64_kib_is_served_and_connection_stays_framed() {
    let up = echo_upstream();
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(&cat(&[
        &head_of(64 * 1024),
        b"GET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n",
    ]));
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.read_response().status, 200);
    assert!(!c.is_closed());
}

#[test]
fn head_of_64_kib_plus_one_is_431_and_close() {
    assert_rejected(&head_of(64 * 1024 + 1), 431, "bad_request");
}

// ---------------------------------------------------------------------------------------------
// Early rejection: body bytes are never parsed as a request (PITFALLS 12).

#[test]
fn bytes_after_a_413_are_never_parsed_as_a_request() {
    // Declared length over the cap: 413 before the body; the body is itself a request.
    let up = echo_upstream();
    let mg = start(&up, json!({"maxBodyBytes": 64}));
    let mut body = SMUGGLED.to_vec();
    body.extend_from_slice(SMUGGLED);
    let bytes = cat(&[
        &post_head(&format!("Content-Length: {}\r\n", body.len())),
        &body,
        b"GET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n",
    ]);
    let (resps, eof) = exchange(mg.addr(), &bytes);
    assert_eq!(resps.len(), 1, "{resps:?}");
    assert_error(&resps[0], 413, "body_too_large");
    assert!(eof);
    assert_eq!(
        up.connections(),
        0,
        "a smuggled request reached the upstream"
    );
}

#[test]
fn bytes_after_a_chunked_413_are_never_parsed_as_a_request() {
    // The chunked body grows past the cap; the rest of the chunk holds a request.
    let up = echo_upstream();
    let mg = start(&up, json!({"maxBodyBytes": 64}));
    let mut chunk = vec![b' '; 60];
    chunk.extend_from_slice(SMUGGLED);
    let bytes = cat(&[
        &post_head("Transfer-Encoding: chunked\r\n"),
        format!("{:x}\r\n", chunk.len()).as_bytes(),
        &chunk,
        b"\r\n0\r\n\r\n",
        SMUGGLED,
    ]);
    let (resps, eof) = exchange(mg.addr(), &bytes);
    assert_eq!(resps.len(), 1, "{resps:?}");
    assert_error(&resps[0], 413, "body_too_large");
    assert!(eof);
    assert_eq!(up.connections(), 0);
}

#[test]
fn bytes_after_a_401_on_a_route_path_are_never_forwarded() {
    // Route paths stream the body; auth must still stop everything before a byte goes up.
    let up = echo_upstream();
    let mg = start(&up, json!({"authTokens": ["tok"]}));
    let bytes = cat(&[
        b"POST /route/m/v1/x HTTP/1.1\r\nHost: mg.test\r\nAuthorization: Bearer nope\r\n",
        format!("Content-Length: {}\r\n\r\n", SMUGGLED.len()).as_bytes(),
        SMUGGLED,
        b"GET /route/m/v1/models HTTP/1.1\r\nHost: mg.test\r\nAuthorization: Bearer tok\r\n\r\n",
    ]);
    let (resps, eof) = exchange(mg.addr(), &bytes);
    assert_eq!(resps.len(), 1, "{resps:?}");
    assert_error(&resps[0], 401, "invalid_api_key");
    assert!(eof);
    assert_eq!(up.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// Clients that leave or stall (SPEC §10, PITFALLS 5, 6).

#[test]
fn half_close_after_a_complete_request_closes_the_upstream_at_once() {
    let (tx, rx) = mpsc::channel::<(bool, Instant)>();
    let tx = Mutex::new(tx);
    let up = ScriptedUpstream::start(move |c| {
        if c.read_request().is_none() {
            return;
        }
        // A slow model: nothing for up to 5 s unless modelgate hangs up.
        let closed = c.wait_peer_closed(Duration::from_secs(5));
        let _ = tx.lock().unwrap().send((closed, Instant::now()));
    });
    let mg = start(&up, json!({}));
    thread::sleep(ms(100));
    let fds0 = mg.fd_count();
    let mut c = client(mg.addr());
    c.send(&cat(&[&post_head("Content-Length: 13\r\n"), BODY]));
    up.wait_requests(1, T);
    let t0 = Instant::now();
    c.shutdown_write();
    let (closed, at) = rx.recv_timeout(Duration::from_secs(7)).expect("report");
    assert!(
        closed,
        "upstream kept open 5 s after the client half-closed"
    );
    let dt = at.saturating_duration_since(t0);
    assert!(dt <= ms(200), "upstream closed {dt:?} after the half-close");
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    assert!(eof, "the client connection must be closed too");
    assert!(
        parse_responses(&raw).iter().all(|r| r.status != 200),
        "no success for an abandoned request"
    );
    assert!(
        wait_until(Duration::from_secs(3), || mg.fd_count() <= fds0),
        "fds {} > baseline {fds0}",
        mg.fd_count()
    );
}

#[test]
fn client_that_never_reads_pauses_the_upstream_with_bounded_memory() {
    const TOTAL: usize = 256 << 20;
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let (tx, rx) = mpsc::channel::<bool>();
    let tx = Mutex::new(tx);
    let up = ScriptedUpstream::start(move |c| {
        if c.read_request().is_none() {
            return;
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n");
        if c.write_all(head.as_bytes()).is_err() {
            return;
        }
        let piece = vec![b'x'; 64 << 10];
        let mut at = 0;
        while at < TOTAL {
            if c.write_all(&piece).is_err() {
                break;
            }
            at += piece.len();
            w.store(at, Ordering::SeqCst);
        }
        let _ = tx
            .lock()
            .unwrap()
            .send(c.wait_peer_closed(Duration::from_secs(5)));
    });
    let mg = start(&up, json!({}));
    thread::sleep(ms(100));
    let rss0 = mg.rss_kib();
    let mut c = Client::connect(mg.addr());
    // A tiny receive window would be nicer; the default one is a few MiB on loopback.
    c.send(b"GET /route/m/big HTTP/1.1\r\nHost: mg.test\r\n\r\n");
    let mut rss_max = rss0;
    let mut last = 0;
    let mut stable_since = Instant::now();
    let t0 = Instant::now();
    // Wait until the upstream stops making progress (paused), for at most 5 s.
    while t0.elapsed() < Duration::from_secs(5) {
        thread::sleep(ms(100));
        rss_max = rss_max.max(mg.rss_kib());
        let now = written.load(Ordering::SeqCst);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > ms(700) && now > 0 {
            break;
        }
    }
    let stalled_at = written.load(Ordering::SeqCst);
    thread::sleep(ms(500));
    rss_max = rss_max.max(mg.rss_kib());
    assert_eq!(
        written.load(Ordering::SeqCst),
        stalled_at,
        "the upstream kept writing to a client that reads nothing"
    );
    assert!(
        stalled_at < 64 << 20,
        "{stalled_at} bytes accepted from the upstream for a client that reads nothing"
    );
    let grew = rss_max.saturating_sub(rss0);
    assert!(grew < 20 * 1024, "RSS grew {grew} KiB (base {rss0} KiB)");
    // The client leaves: the stalled upstream is closed at once.
    c.close();
    drop(c);
    assert_eq!(rx.recv_timeout(Duration::from_secs(8)), Ok(true));
}

// ---------------------------------------------------------------------------------------------
// Hostile upstreams.

/// An upstream that reads a request then writes `raw`, then waits for modelgate to close.
fn raw_upstream(raw: Vec<u8>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        if c.read_request().is_none() {
            return;
        }
        let _ = c.write_all(&raw);
        c.wait_peer_closed(Duration::from_secs(5));
    })
}

/// One chat request on a fresh client; then the client connection is either closed or still
/// framed (a /health answer).
fn chat_then_health(mg: &Modelgate) -> Response {
    let mut c = client(mg.addr());
    c.send(&cat(&[&post_head("Content-Length: 13\r\n"), BODY]));
    let (_, r) = c.read_final_response();
    if !r.header_has_token("connection", "close") {
        c.send(b"GET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n");
        let h = c.read_response();
        assert_eq!(h.status, 200, "not framed after {}: {}", r.status, dump(&h));
    } else {
        assert!(c.is_closed_within(CLOSE_WAIT));
    }
    r
}

#[test]
fn upstream_garbage_instead_of_a_status_line_is_502() {
    let mut raw = b"\x00\xff\xfegarbage garbage\r\n\r\n".to_vec();
    raw.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x05]);
    let up = raw_upstream(raw);
    let mg = start(&up, json!({}));
    let r = chat_then_health(&mg);
    assert_error(&r, 502, "upstream_unavailable");
}

#[test]
fn oversized_upstream_response_head_is_502() {
    let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..700 {
        raw.extend_from_slice(format!("X-Big-{i}: {}\r\n", "h".repeat(90)).as_bytes());
    }
    assert!(raw.len() > 70 * 1024);
    raw.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    let up = raw_upstream(raw);
    let mg = start(&up, json!({}));
    let r = chat_then_health(&mg);
    assert_error(&r, 502, "upstream_unavailable");
    assert!(r.header("x-big-0").is_none());
}

#[test]
fn upstream_close_mid_head_is_502() {
    let up = ScriptedUpstream::start(|c| {
        if c.read_request().is_none() {
            return;
        }
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: appl");
        thread::sleep(ms(50));
        c.close();
    });
    let mg = start(&up, json!({}));
    let r = chat_then_health(&mg);
    assert_error(&r, 502, "upstream_unavailable");
}

#[test]
fn flood_of_1000_early_hints_never_hangs_or_bloats() {
    // Pinned: each 103 is forwarded as it comes (SPEC §5: 1xx pass through), then the final
    // response, on a connection that stays framed.
    let mut raw = Vec::new();
    for i in 0..1000 {
        raw.extend_from_slice(
            format!("HTTP/1.1 103 Early Hints\r\nLink: </s{i}.css>; rel=preload\r\n\r\n")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let up = ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            if c.write_all(&raw).is_err() {
                break;
            }
        }
    });
    let mg = start(&up, json!({}));
    thread::sleep(ms(100));
    let rss0 = mg.rss_kib();
    let mut c = client(mg.addr());
    c.send(&cat(&[&post_head("Content-Length: 13\r\n"), BODY]));
    let (infos, r) = c.read_final_response();
    assert_eq!(infos.len(), 1000);
    assert!(infos.iter().all(|i| i.status == 103));
    assert_eq!(infos[999].header("link"), Some("</s999.css>; rel=preload"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    c.send(b"GET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let grew = mg.rss_kib().saturating_sub(rss0);
    assert!(grew < 10 * 1024, "RSS grew {grew} KiB");
}

#[test]
fn upstream_reset_mid_content_length_body_truncates_the_client() {
    let up = ScriptedUpstream::start(|c| {
        if c.read_request().is_none() {
            return;
        }
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
        let _ = c.write_all(&[b'y'; 5000]);
        thread::sleep(ms(100));
        c.reset();
    });
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(b"GET /route/m/x HTTP/1.1\r\nHost: mg.test\r\n\r\n");
    let head = c.try_read_head().expect("head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("100000"));
    let (rest, eof) = c.read_to_eof_with_timeout(T);
    assert!(eof, "client kept open after the upstream reset");
    assert_eq!(rest.len(), 5000, "exactly what the upstream sent, then EOF");
}

#[test]
fn upstream_answering_before_the_route_body_is_complete() {
    // The upstream reads the head, answers 413 with Connection: close and hangs up while the
    // client is still streaming the chunked body. Pinned: the client gets that 413, then the
    // connection closes (the rest of its body can't be framed against a finished exchange);
    // nothing hangs.
    let up = ScriptedUpstream::start(|c| {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read_raw(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = c.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"e\":\"big\"}",
        );
        thread::sleep(ms(50));
        c.close();
    });
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(
        b"POST /route/m/v1/files HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    c.send(b"10\r\n0123456789abcdef\r\n");
    let t0 = Instant::now();
    let r = c.read_response();
    assert_eq!(r.status, 413, "{}", dump(&r));
    assert_eq!(r.body, b"{\"e\":\"big\"}");
    // Keep streaming a little: modelgate must not hang, and must close.
    for _ in 0..5 {
        if c.try_send(b"10\r\n0123456789abcdef\r\n").is_err() {
            break;
        }
        thread::sleep(ms(20));
    }
    assert!(
        c.is_closed_within(Duration::from_secs(3)),
        "still open {:?} after the upstream's early answer",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Afterwards: nothing leaked.

#[test]
fn hostile_burst_leaves_no_fds_behind() {
    let up = echo_upstream();
    let mg = start(&up, json!({"maxBodyBytes": 64}));
    thread::sleep(ms(100));
    let fds0 = mg.fd_count();
    let cases: Vec<Vec<u8>> = vec![
        post_head("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"),
        b"G@T / HTTP/1.1\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        head_of(64 * 1024 + 1),
        cat(&[&post_head("Content-Length: 1000\r\n"), SMUGGLED]),
        cat(&[&post_head("Content-Length: 13\r\n"), BODY]),
    ];
    for round in 0..20 {
        for (i, bytes) in cases.iter().enumerate() {
            let mut c = Client::connect(mg.addr());
            let _ = c.try_send(bytes);
            if (round + i) % 3 == 0 {
                c.close(); // leave without reading
            } else {
                let _ = c.read_available(ms(200));
            }
        }
    }
    assert!(
        wait_until(Duration::from_secs(8), || mg.fd_count() <= fds0),
        "fds {} vs baseline {fds0}",
        mg.fd_count()
    );
}

#[test]
fn half_close_mid_route_body_never_completes_the_upstream_request() {
    // The request is truncated (SPEC §10, PITFALLS 5): the upstream, which already has the
    // head and the first chunk, is closed and never sees a terminator; the client gets at
    // most a 400, then a close.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let tx = Mutex::new(tx);
    let up = ScriptedUpstream::start(move |c| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        c.set_read_timeout(Some(T));
        while let Ok(n) = c.read_raw(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let _ = tx.lock().unwrap().send(got);
    });
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(b"POST /route/m/v1/x HTTP/1.1\r\nHost: mg.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    thread::sleep(ms(100));
    let t0 = Instant::now();
    c.shutdown_write();
    let got = rx
        .recv_timeout(Duration::from_secs(7))
        .expect("upstream report");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "upstream closed {:?} after the truncation",
        t0.elapsed()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("5\r\nhello\r\n"), "{text:?}");
    assert!(
        !text.contains("0\r\n\r\n"),
        "a terminator was invented: {text:?}"
    );
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    assert!(eof);
    for r in parse_responses(&raw) {
        assert_error(&r, 400, "bad_request");
    }
}

#[test]
fn upstream_101_switching_protocols_is_not_tunnelled() {
    // PITFALLS 10: a request that did not ask to upgrade (here `Upgrade` without
    // `Connection: upgrade`: hop-by-hop, stripped) is never tunnelled; an unexpected 101 must
    // not turn the client connection into a raw pipe to the upstream; the bytes after the 101
    // never reach the client. (Real WebSocket handshakes are tunnelled: tests/websocket.rs.)
    let up = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW-TUNNEL-BYTES".to_vec(),
    );
    let mg = start(&up, json!({}));
    let mut c = client(mg.addr());
    c.send(b"GET /route/m/ws HTTP/1.1\r\nHost: mg.test\r\nUpgrade: websocket\r\n\r\n");
    // Pinned: a 502 on a connection that stays framed (the 101 never reaches the client).
    let r = c.read_response();
    assert_error(&r, 502, "upstream_unavailable");
    c.send(b"GET /health HTTP/1.1\r\nHost: mg.test\r\n\r\n");
    let h = c.read_response();
    assert_eq!(h.status, 200, "{}", dump(&h));
    let raw = [r.raw.as_slice(), &r.body, &h.raw, &h.body, c.buffered()].concat();
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("RAW-TUNNEL-BYTES"), "{text:?}");
    assert!(!text.contains(" 101 "), "{text:?}");
    let req = &up.wait_requests(1, T)[0];
    assert!(req.header("upgrade").is_none(), "Upgrade was forwarded");
}
