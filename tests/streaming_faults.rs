//! The proxy engine (issue 3) under streaming, faults and load, over real sockets.
//!
//! Every test starts its own modelgate and its own upstreams, checks one behaviour, and is
//! bounded in time (every read has a timeout; every wait has a deadline). Tests that fail
//! because of an engine bug stay strict and are marked `#[ignore = "engine bug: ..."]`.

mod common;

use common::*;
use serde_json::json;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Private helpers.

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A chat completion request for `model` with extra header lines.
fn chat_request(model: &str, stream: bool, headers: &[&str]) -> Vec<u8> {
    let mut h = vec!["Content-Type: application/json"];
    h.extend_from_slice(headers);
    request_bytes(
        "POST",
        "/v1/chat/completions",
        &h,
        chat_body(model, stream).as_bytes(),
    )
}

/// A chat body whose length is unique per `id`: the mock answers `prompt_tokens = len / 4`,
/// so the usage in the answer tells exactly which request it belongs to.
fn tagged_chat_body(model: &str, id: usize) -> String {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "x".repeat(4 * id)}],
    })
    .to_string()
}

/// Checks that `resp` is the mock's answer to `body` (routed to `upstream`): no misdelivery.
fn check_tagged(resp: &Response, model: &str, upstream: &str, body: &str) -> Result<(), String> {
    if resp.status != 200 {
        return Err(format!(
            "status {} body {:?}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        ));
    }
    if resp.header("x-mock-name") != Some(upstream) {
        return Err(format!(
            "model {model} answered by {:?}, want {upstream}",
            resp.header("x-mock-name")
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("bad JSON ({e}): {:?}", String::from_utf8_lossy(&resp.body)))?;
    if v["model"] != model {
        return Err(format!("model {} in answer, want {model}", v["model"]));
    }
    let want = (body.len() / 4) as u64;
    if v["usage"]["prompt_tokens"].as_u64() != Some(want) {
        return Err(format!(
            "prompt_tokens {} in answer, want {want}: another request's response",
            v["usage"]["prompt_tokens"]
        ));
    }
    Ok(())
}

/// An OpenAI-shaped JSON error with this status and code.
fn assert_error(resp: &Response, status: u16, code: &str) {
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert_eq!(resp.status, status, "status; body {body:?}");
    assert!(
        resp.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "content-type {:?}",
        resp.header("content-type")
    );
    let v = resp.json();
    assert_eq!(v["error"]["code"], code, "error code; body {body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(v["error"]["type"].is_string(), "{body}");
    assert!(v["error"]["param"].is_null(), "{body}");
}

fn start(models: &[(&str, &str)], extra: serde_json::Value) -> Modelgate {
    Modelgate::start(&config_with(models, extra))
}

/// An address on loopback where nothing listens (bound, then released).
fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}")
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";

/// One SSE event framed as one chunk, with an upper-case hex size (to show framing is
/// forwarded as is, not re-chunked).
fn sse_chunk(i: usize) -> Vec<u8> {
    let event =
        format!("data: {{\"i\":{i},\"choices\":[{{\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n");
    let mut c = format!("{:X}\r\n", event.len()).into_bytes();
    c.extend_from_slice(event.as_bytes());
    c.extend_from_slice(b"\r\n");
    c
}

/// A byte of a deterministic, non-periodic pattern (detects lost, duplicated or moved bytes).
fn pattern(i: usize) -> u8 {
    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

type Report<T> = Mutex<mpsc::Sender<T>>;

fn report<T>(tx: &Report<T>, v: T) {
    let _ = tx.lock().unwrap().send(v);
}

// ---------------------------------------------------------------------------------------------
// Streaming.

#[test]
fn sse_events_arrive_spaced_as_sent_and_byte_identical() {
    const EVENTS: usize = 6;
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_none() {
            return;
        }
        if conn.write_all(SSE_HEAD).is_err() {
            return;
        }
        for i in 0..EVENTS {
            if i > 0 {
                thread::sleep(ms(200));
            }
            if conn.write_all(&sse_chunk(i)).is_err() {
                return;
            }
        }
        let _ = conn.write_all(b"0\r\n\r\n");
        let _ = conn.read_request();
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", true, &[]));
    let mut resp = c.try_read_head().expect("response head");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let head_len = resp.raw.len();
    let mut arrivals = Vec::new();
    while let Some(_data) = c.try_next_chunk(&mut resp).expect("chunk") {
        arrivals.push(Instant::now());
    }
    assert_eq!(arrivals.len(), EVENTS, "one chunk per event");
    assert_paced(&arrivals, 200);
    let mut want = Vec::new();
    for i in 0..EVENTS {
        want.extend_from_slice(&sse_chunk(i));
    }
    want.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(
        String::from_utf8_lossy(&resp.raw[head_len..]),
        String::from_utf8_lossy(&want),
        "chunk framing must be forwarded byte for byte"
    );
}

#[test]
fn mock_sse_stream_with_usage_chunk_and_done_passes_intact() {
    let mock = MockUpstream::openai("alpha");
    let mg = start(&[("gpt-x", &mock.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("gpt-x", true, &[]));
    let mut resp = c.try_read_head().expect("response head");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-mock-name"), Some("alpha"));
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut events = Vec::new();
    while let Some(data) = c
        .try_next_chunk(&mut resp)
        .expect("chunk (truncated stream?)")
    {
        events.push(String::from_utf8(data).expect("UTF-8 event"));
    }
    // 8 token events, the finish event, the usage chunk, [DONE]: one event per chunk.
    assert_eq!(events.len(), 11, "{events:#?}");
    for e in &events {
        assert!(
            e.starts_with("data: ") && e.ends_with("\n\n"),
            "one whole event per chunk: {e:?}"
        );
    }
    assert_eq!(events[10], "data: [DONE]\n\n");
    let usage = json(events[9].trim_start_matches("data: ").trim_end());
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 8);
    assert_eq!(usage["model"], "gpt-x");
    let first = json(events[0].trim_start_matches("data: ").trim_end());
    for (i, e) in events[..10].iter().enumerate() {
        let v = json(e.trim_start_matches("data: ").trim_end());
        assert_eq!(v["id"], first["id"], "event {i} belongs to another stream");
        if i < 8 {
            assert_eq!(v["choices"][0]["delta"]["content"], format!("tok{i} "));
        }
    }
    assert_eq!(events[8].matches("\"finish_reason\":\"stop\"").count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Client aborts.

#[test]
fn client_abort_while_upstream_holds_response_closes_upstream_within_100ms() {
    let (tx, rx) = mpsc::channel::<(bool, Instant)>();
    let tx: Report<_> = Mutex::new(tx);
    let up = ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_none() {
            return;
        }
        let closed = conn.wait_peer_closed(Duration::from_secs(5));
        report(&tx, (closed, Instant::now()));
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", false, &[]));
    up.wait_requests(1, Duration::from_secs(5));
    thread::sleep(ms(50));
    let t0 = Instant::now();
    c.close();
    drop(c);
    let (closed, at) = rx.recv_timeout(Duration::from_secs(7)).expect("report");
    assert!(closed, "upstream still open 5 s after the client left");
    let dt = at.saturating_duration_since(t0);
    assert!(
        dt <= ms(100),
        "upstream closed {dt:?} after the client left"
    );
}

#[test]
fn client_abort_mid_stream_closes_upstream_within_100ms() {
    let (tx, rx) = mpsc::channel::<(bool, Instant)>();
    let tx: Report<_> = Mutex::new(tx);
    let up = ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_none() {
            return;
        }
        if conn.write_all(SSE_HEAD).is_err() {
            return;
        }
        for i in 0..200 {
            if conn.write_all(&sse_chunk(i)).is_err() || conn.wait_peer_closed(ms(25)) {
                report(&tx, (true, Instant::now()));
                return;
            }
        }
        report(&tx, (false, Instant::now()));
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", true, &[]));
    let mut resp = c.try_read_head().expect("head");
    assert_eq!(resp.status, 200);
    for _ in 0..3 {
        c.try_next_chunk(&mut resp)
            .expect("chunk")
            .expect("stream ended early");
    }
    let t0 = Instant::now();
    c.close();
    drop(c);
    let (closed, at) = rx.recv_timeout(Duration::from_secs(10)).expect("report");
    assert!(closed, "upstream kept streaming 5 s after the client left");
    let dt = at.saturating_duration_since(t0);
    assert!(
        dt <= ms(100),
        "upstream closed {dt:?} after the client left mid-stream"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream dies mid-response.

/// An upstream that sends the SSE head and three events, then dies (FIN or RST).
fn dying_stream_upstream(reset: bool) -> ScriptedUpstream {
    ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_none() {
            return;
        }
        let _ = conn.write_all(SSE_HEAD);
        for i in 0..3 {
            let _ = conn.write_all(&sse_chunk(i));
            thread::sleep(ms(30));
        }
        thread::sleep(ms(100));
        if reset {
            conn.reset();
        } else {
            conn.close();
        }
    })
}

fn assert_stream_truncated(up: &ScriptedUpstream) {
    let mg = start(&[("m", &up.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", true, &[]));
    let resp = c.try_read_head().expect("head");
    assert_eq!(resp.status, 200);
    let (rest, eof) = c.read_to_eof_with_timeout(Duration::from_secs(5));
    assert!(eof, "client still open 5 s after the upstream died");
    let mut want = Vec::new();
    for i in 0..3 {
        want.extend_from_slice(&sse_chunk(i));
    }
    assert!(
        !rest.windows(5).any(|w| w == b"0\r\n\r\n"),
        "a truncated stream must never look complete: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&want),
        "the bytes the upstream sent, then EOF"
    );
}

#[test]
fn upstream_close_mid_chunked_stream_ends_client_without_terminator() {
    assert_stream_truncated(&dying_stream_upstream(false));
}

#[test]
fn upstream_reset_mid_chunked_stream_ends_client_without_terminator() {
    assert_stream_truncated(&dying_stream_upstream(true));
}

#[test]
fn upstream_close_mid_content_length_body_ends_client_short() {
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_none() {
            return;
        }
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                .to_vec();
        out.extend_from_slice(&[b'x'; 400]);
        let _ = conn.write_all(&out);
        thread::sleep(ms(100));
        conn.close();
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", false, &[]));
    let resp = c.try_read_head().expect("head");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("1000"));
    let (rest, eof) = c.read_to_eof_with_timeout(Duration::from_secs(5));
    assert!(eof, "client still open 5 s after the upstream died");
    assert_eq!(rest, vec![b'x'; 400], "the 400 bytes sent, then EOF");
}

// ---------------------------------------------------------------------------------------------
// Upstream fails before the response.

#[test]
fn connect_refused_gives_502_upstream_unavailable_quickly() {
    let url = closed_port_url();
    let mg = start(&[("m", &url)], json!({}));
    for _ in 0..2 {
        let t0 = Instant::now();
        let resp = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
        let dt = t0.elapsed();
        assert_error(&resp, 502, "upstream_unavailable");
        assert!(dt < Duration::from_secs(1), "502 took {dt:?}");
    }
}

#[test]
fn upstream_closing_a_fresh_connection_without_answer_gives_502() {
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_some() {
            conn.close();
        }
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let resp = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
    assert_error(&resp, 502, "upstream_unavailable");
    thread::sleep(ms(200));
    // A fresh connection that failed is not retried: the POST reached the upstream once.
    assert_eq!(
        up.request_count(),
        1,
        "a POST on a fresh connection was retried"
    );
}

#[test]
fn malformed_upstream_response_head_gives_502() {
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_none() {
            return;
        }
        let _ = conn.write_all(b"HTTP/1.1 2x0 Broken\r\nthis is not a header\r\n\r\n{}");
        conn.wait_peer_closed(Duration::from_secs(5));
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let resp = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
    assert_eq!(
        resp.status,
        502,
        "body {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let code = resp.error_code().expect("an OpenAI-shaped error body");
    assert_error(&resp, 502, &code);
}

// ---------------------------------------------------------------------------------------------
// Stale pooled connections.

#[test]
fn upstream_closing_idle_connections_after_50ms_causes_no_client_error() {
    let up = ScriptedUpstream::start(|conn| {
        conn.set_read_timeout(Some(Duration::from_secs(2)));
        loop {
            if conn.read_request().is_none() {
                return;
            }
            if conn.respond_json(200, "{\"ok\":true}").is_err() {
                return;
            }
            // Idle for 50 ms: the read times out and the connection is closed.
            conn.set_read_timeout(Some(ms(50)));
        }
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let mut errors = Vec::new();
    for i in 0..20 {
        let resp = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
        if resp.status != 200 {
            errors.push((
                i,
                resp.status,
                String::from_utf8_lossy(&resp.body).into_owned(),
            ));
        }
        thread::sleep(ms(100));
    }
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert_eq!(up.request_count(), 20, "no request was sent twice");
    assert!(up.connections() > 1, "the upstream closed idle connections");
}

#[test]
fn pooled_connection_dying_on_reuse_is_retried_on_a_fresh_connection() {
    // Each upstream connection answers one request, then dies when the next one starts
    // arriving (before any response byte): the "closed while we picked it" race, made
    // deterministic. modelgate must retry once on a fresh connection.
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_none() {
            return;
        }
        if conn.respond_json(200, "{\"ok\":true}").is_err() {
            return;
        }
        let mut b = [0u8; 1];
        if conn.read_raw(&mut b).is_ok() {
            conn.close();
        }
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    for i in 0..5 {
        c.send(&chat_request("m", false, &[]));
        let resp = c.read_response();
        assert_eq!(
            resp.status,
            200,
            "request {i}: {:?}",
            String::from_utf8_lossy(&resp.body)
        );
    }
    assert_eq!(up.request_count(), 5);
    assert_eq!(up.connections(), 5, "one fresh connection per retry");
}

// ---------------------------------------------------------------------------------------------
// Timeouts.

#[test]
fn first_byte_timeout_gives_504_upstream_timeout() {
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_some() {
            conn.wait_peer_closed(Duration::from_secs(5));
        }
    });
    let mg = start(&[("m", &up.url())], json!({"timeouts": {"firstByte": 0.5}}));
    let t0 = Instant::now();
    let resp = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
    let dt = t0.elapsed();
    assert_error(&resp, 504, "upstream_timeout");
    assert!(
        dt >= ms(450) && dt <= ms(1200),
        "504 after {dt:?}, want about 0.5 s"
    );
}

#[test]
fn slowloris_head_is_cut_at_header_deadline_while_others_are_served() {
    let mock = MockUpstream::openai("alpha");
    let mg = start(&[("m", &mock.url())], json!({"timeouts": {"header": 1}}));
    let addr = mg.addr();
    let dripper = thread::spawn(move || {
        let mut c = Client::connect(addr);
        let req = chat_request("m", false, &[]);
        let t0 = Instant::now();
        let mut closed = false;
        for &b in &req {
            if c.try_send(&[b]).is_err() || c.is_closed_within(ms(100)) {
                closed = true;
                break;
            }
            if t0.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        (closed, t0.elapsed(), c.buffered().to_vec())
    });
    for _ in 0..3 {
        thread::sleep(ms(250));
        let t = Instant::now();
        let resp = post_json(addr, "/v1/chat/completions", &chat_body("m", false));
        assert_eq!(resp.status, 200, "another client during the drip");
        assert!(t.elapsed() < ms(500), "served in {:?}", t.elapsed());
    }
    let (closed, at, got) = dripper.join().unwrap();
    assert!(closed, "dripping client still open after {at:?}");
    assert!(
        at >= ms(900) && at <= ms(1700),
        "dripping client cut after {at:?}, want about 1 s"
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "only a 408 or nothing: {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_after_keep_alive_timeout() {
    let mock = MockUpstream::openai("alpha");
    let mg = start(
        &[("m", &mock.url())],
        json!({"timeouts": {"keepAlive": 0.5}}),
    );
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", false, &[]));
    assert_eq!(c.read_response().status, 200);
    let t0 = Instant::now();
    assert!(
        c.is_closed_within(Duration::from_secs(3)),
        "idle connection still open after 3 s"
    );
    let dt = t0.elapsed();
    assert!(
        dt >= ms(400) && dt <= ms(1500),
        "idle connection closed after {dt:?}, want about 0.5 s"
    );
    assert!(c.buffered().is_empty(), "nothing is sent on an idle close");
}

// ---------------------------------------------------------------------------------------------
// Backpressure and memory.

#[test]
fn slow_reader_gets_large_response_intact_with_upstream_paused_and_rss_bounded() {
    const TOTAL: usize = 64 << 20;
    const PIECE: usize = 64 << 10;
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let up = ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_none() {
            return;
        }
        // The head and 3× the 16 KiB buffer in one burst, then the rest as fast as it goes.
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {TOTAL}\r\n\r\n"
        )
        .into_bytes();
        let burst = 3 * 16 * 1024;
        out.extend((0..burst).map(pattern));
        if conn.write_all(&out).is_err() {
            return;
        }
        w.store(burst, Ordering::SeqCst);
        let mut at = burst;
        let mut piece = vec![0u8; PIECE];
        while at < TOTAL {
            let n = PIECE.min(TOTAL - at);
            for (k, b) in piece[..n].iter_mut().enumerate() {
                *b = pattern(at + k);
            }
            if conn.write_all(&piece[..n]).is_err() {
                return;
            }
            at += n;
            w.store(at, Ordering::SeqCst);
        }
        let _ = conn.read_request();
    });
    let mg = start(&[("m", &up.url())], json!({}));
    thread::sleep(ms(100));
    let rss_base = mg.rss_kib();
    let mut c = Client::connect(mg.addr());
    c.send(&request_bytes("GET", "/route/m/big", &[], b""));
    let resp = c.try_read_head().expect("head");
    assert_eq!(resp.status, 200);
    let mut got = 0usize;
    let check = |bytes: &[u8], got: &mut usize| {
        for (k, &b) in bytes.iter().enumerate() {
            assert_eq!(b, pattern(*got + k), "byte {} differs", *got + k);
        }
        *got += bytes.len();
    };
    let early = c.buffered().to_vec();
    check(&early, &mut got);
    c.set_read_timeout(Duration::from_secs(10));
    // Slow phase: 64 bytes every 10 ms for 1.5 s.
    let mut rss_max = rss_base;
    let mut small = [0u8; 64];
    let slow_end = Instant::now() + ms(1500);
    while Instant::now() < slow_end {
        let n = c.stream().read(&mut small).expect("slow read");
        assert!(n > 0, "EOF during the slow read");
        check(&small[..n], &mut got);
        rss_max = rss_max.max(mg.rss_kib());
        thread::sleep(ms(10));
    }
    let written_slow = written.load(Ordering::SeqCst);
    // Fast phase, watching for stalls.
    let mut big = vec![0u8; 1 << 20];
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    while got < TOTAL {
        let n = c.stream().read(&mut big).expect("fast read");
        assert!(n > 0, "EOF after {got} of {TOTAL} bytes");
        let now = Instant::now();
        max_gap = max_gap.max(now - last);
        last = now;
        check(&big[..n], &mut got);
    }
    assert_eq!(got, TOTAL);
    assert!(
        written_slow < TOTAL / 2,
        "the upstream wrote {written_slow} of {TOTAL} bytes while the client read slowly: not paused"
    );
    let grew = rss_max.saturating_sub(rss_base);
    assert!(
        grew < 20 * 1024,
        "RSS grew by {grew} KiB during the slow read (base {rss_base} KiB)"
    );
    assert!(
        max_gap < Duration::from_secs(1),
        "a {max_gap:?} stall while the client read fast"
    );
}

/// SPEC §11: `timeouts.idle` cuts a connection where nothing moves, and a client still taking
/// bytes is not idle. The client here reads a long SSE stream at 160 KB/s: far slower than
/// the upstream writes, so modelgate's socket buffers stay full and modelgate gets no
/// writable edge (no write of its own) for longer than `idle` (1 s), while the client steadily
/// drains them. It must get the whole stream; before issue 23 it was cut at exactly `idle`.
#[test]
fn a_slow_but_steady_reader_of_a_long_stream_is_not_cut_by_the_idle_timeout() {
    const TOTAL: usize = 24 << 20;
    let up = ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_none() {
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {TOTAL}\r\n\r\n"
        );
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        // 1 KiB events, as fast as the socket takes them.
        let mut event = b"data: ".to_vec();
        event.resize(1022, b'x');
        event.extend_from_slice(b"\n\n");
        let mut at = 0;
        while at < TOTAL {
            let n = event.len().min(TOTAL - at);
            if conn.write_all(&event[..n]).is_err() {
                return;
            }
            at += n;
        }
        let _ = conn.read_request();
    });
    let mg = start(
        &[("m", &up.url())],
        json!({"timeouts": {"idle": 1}, "workers": 1}),
    );
    let mut c = Client::connect(mg.addr());
    c.send(&request_bytes("GET", "/route/m/events", &[], b""));
    let resp = c.try_read_head().expect("head");
    assert_eq!(resp.status, 200);
    let mut got = c.buffered().len();
    c.set_read_timeout(Duration::from_secs(10));
    // Slow phase: 16 KiB every 100 ms for 6 s (six idle periods).
    let mut piece = vec![0u8; 16 * 1024];
    let slow_end = Instant::now() + ms(6000);
    while Instant::now() < slow_end {
        let n = c.stream().read(&mut piece).unwrap_or(0);
        assert!(
            n > 0,
            "cut after {got} bytes, {:?} before the slow phase ended",
            slow_end.saturating_duration_since(Instant::now())
        );
        got += n;
        thread::sleep(ms(100));
    }
    assert!(
        got < TOTAL / 2,
        "the stream ended while reading slowly: test too small"
    );
    let mut big = vec![0u8; 1 << 20];
    while got < TOTAL {
        let n = c.stream().read(&mut big).unwrap_or(0);
        assert!(n > 0, "EOF after {got} of {TOTAL} bytes");
        got += n;
    }
    assert_eq!(got, TOTAL);
}

// ---------------------------------------------------------------------------------------------
// Admission control.

#[test]
fn max_concurrent_requests_rejects_at_once_with_503_then_recovers() {
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let up = ScriptedUpstream::start(move |conn| {
        while let Some(req) = conn.read_request() {
            if req.header("x-hold").is_some() {
                wait_until(Duration::from_secs(10), || r.load(Ordering::SeqCst));
            }
            if conn.respond_json(200, "{\"ok\":true}").is_err() {
                return;
            }
        }
    });
    let mg = start(&[("m", &up.url())], json!({"maxConcurrentRequests": 1}));
    let addr = mg.addr();
    let held = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(&chat_request("m", false, &["X-Hold: 1"]));
        c.read_response()
    });
    up.wait_requests(1, Duration::from_secs(5));
    let t0 = Instant::now();
    let resp = post_json(addr, "/v1/chat/completions", &chat_body("m", false));
    let dt = t0.elapsed();
    assert_error(&resp, 503, "overloaded");
    // At once, not after waiting for the held request (which holds for up to 10 s).
    assert!(dt < Duration::from_secs(3), "503 took {dt:?}");
    assert_eq!(
        get(addr, "/health").status,
        200,
        "local endpoints never count"
    );
    assert_eq!(
        up.request_count(),
        1,
        "the rejected request reached the upstream"
    );
    release.store(true, Ordering::SeqCst);
    assert_eq!(held.join().unwrap().status, 200);
    // The slot is free before the held response's last byte reaches its client: the next
    // request, even on another worker, is served at once.
    for _ in 0..3 {
        let resp = post_json(addr, "/v1/chat/completions", &chat_body("m", false));
        assert_eq!(
            resp.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&resp.body)
        );
    }
}

#[test]
fn max_connections_gates_accept_and_serves_queued_connections_after_close() {
    let mg = start(
        &[("m", &closed_port_url())],
        json!({"maxConnections": 2, "workers": 1}),
    );
    let health = request_bytes("GET", "/health", &[], b"");
    let mut clients: Vec<Client> = (0..5).map(|_| Client::connect(mg.addr())).collect();
    for c in &mut clients {
        c.send(&health);
    }
    for (i, c) in clients.iter_mut().take(2).enumerate() {
        assert_eq!(c.read_response().status, 200, "client {i}");
    }
    for (i, c) in clients.iter_mut().enumerate().skip(2) {
        let got = c.read_available(ms(300));
        assert!(
            got.is_empty(),
            "client {i} served over maxConnections: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let mut rest = clients.split_off(2);
    for c in &mut clients {
        c.close();
    }
    drop(clients);
    // Two slots free: clients 2 and 3 are served; closing them lets client 4 in.
    for (i, c) in rest.iter_mut().enumerate() {
        c.set_read_timeout(Duration::from_secs(3));
        let resp = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("queued client {} never served: {e}", i + 2));
        assert_eq!(resp.status, 200);
        c.close();
    }
}

#[test]
fn exhausted_buffer_budget_gives_503_overloaded_then_recovers() {
    let mock = MockUpstream::openai("alpha");
    let mg = start(&[("m", &mock.url())], json!({"maxBufferBytes": 65536}));
    let addr = mg.addr();
    // 8 KiB bodies with `model` last: each must be buffered whole for routing, and one alone
    // fits the budget easily.
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"m"}}"#,
        "y".repeat(8 * 1024)
    );
    let req = request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body.as_bytes(),
    );
    let split = req.len() - 1000;
    const N: usize = 8;
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let (req, barrier) = (req.clone(), barrier.clone());
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let _ = c.try_send(&req[..split]);
                barrier.wait();
                thread::sleep(ms(300));
                let _ = c.try_send(&req[split..]);
                c.try_read_response()
                    .map(|r| (r.status, r.error_code()))
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut overloaded = 0;
    for r in &results {
        match r {
            Ok((200, _)) => {}
            Ok((503, Some(code))) if code == "overloaded" => overloaded += 1,
            other => panic!("want 200 or 503 overloaded, got {other:?} (all: {results:?})"),
        }
    }
    assert!(
        overloaded > 0,
        "8 concurrent 8 KiB bodies held open fit a 64 KiB budget? {results:?}"
    );
    // Load gone: the budget is whole again. An exchange on the other worker may still be
    // handing its blocks back for a moment after its client read the last byte, so allow
    // up to a second for the first success, then demand it every time.
    let recovered = wait_until(Duration::from_secs(1), || {
        post_json(addr, "/v1/chat/completions", &chat_body("m", false)).status == 200
    });
    assert!(recovered, "the budget never came back after the burst");
    for i in 0..5 {
        let resp = post_json(addr, "/v1/chat/completions", &chat_body("m", false));
        assert_eq!(resp.status, 200, "small request {i} after the burst");
    }
    let resp = post_json(addr, "/v1/chat/completions", &body);
    assert_eq!(resp.status, 200, "an 8 KiB body alone after the burst");
}

/// A chat request whose body is `kib` KiB with `model` last (buffered whole for routing).
fn big_chat_request(model: &str, kib: usize) -> Vec<u8> {
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"{model}"}}"#,
        "y".repeat(kib * 1024)
    );
    request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body.as_bytes(),
    )
}

#[test]
fn request_whose_buffered_body_fills_the_budget_is_answered_not_hung() {
    let mock = MockUpstream::openai("alpha");
    let mg = start(&[("m", &mock.url())], json!({"maxBufferBytes": 65536}));
    // A 24 KiB body alone in a 64 KiB budget: either it is served, or it is refused with 503
    // before it reaches the upstream. Never sent upstream and then left unanswered.
    let mut c = Client::connect(mg.addr());
    c.set_read_timeout(Duration::from_secs(3));
    c.send(&big_chat_request("m", 24));
    match c.try_read_response() {
        Ok(r) if r.status == 200 => {}
        Ok(r) if r.status == 503 => {
            assert_eq!(r.error_code().as_deref(), Some("overloaded"));
            assert_eq!(mock.requests(), 0, "refused after the upstream answered it");
        }
        Ok(r) => panic!("status {} {:?}", r.status, String::from_utf8_lossy(&r.body)),
        Err(e) => panic!(
            "no answer within 3 s ({e}); the upstream got {} request(s) and answered",
            mock.requests()
        ),
    }
}

#[test]
fn connection_waiting_for_a_buffer_resumes_when_another_frees_it() {
    let mock = MockUpstream::openai("alpha");
    let mg = start(
        &[("m", &mock.url())],
        json!({"maxBufferBytes": 65536, "workers": 1}),
    );
    // A holds part of the budget with a body it has not finished sending.
    let mut a = Client::connect(mg.addr());
    a.send(&big_chat_request("m", 60)[..4 * 1024]);
    thread::sleep(ms(200));
    // B is small; whatever the budget lets it do, it must end with an answer.
    let mut b = Client::connect(mg.addr());
    b.set_read_timeout(Duration::from_secs(3));
    b.send(&chat_request("m", false, &[]));
    thread::sleep(ms(300));
    // A leaves: its blocks return to the pool.
    a.close();
    drop(a);
    match b.try_read_response() {
        Ok(r) if r.status == 200 => {}
        Ok(r) if r.status == 503 => {
            assert_eq!(r.error_code().as_deref(), Some("overloaded"));
            assert_eq!(mock.requests(), 0, "refused after the upstream answered it");
        }
        Ok(r) => panic!("status {} {:?}", r.status, String::from_utf8_lossy(&r.body)),
        Err(e) => panic!(
            "B unanswered 3 s after A freed its buffers ({e}); the upstream got {} request(s)",
            mock.requests()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Load and resource hygiene.

#[test]
fn thousand_concurrent_connections_are_each_routed_correctly() {
    let alpha = MockUpstream::openai("alpha");
    let beta = MockUpstream::openai("beta");
    let mg = start(
        &[("m-alpha", &alpha.url()), ("m-beta", &beta.url())],
        json!({"accessLog": false}),
    );
    let addr = mg.addr();
    const THREADS: usize = 10;
    const PER: usize = 100;
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut conns: Vec<Client> = (0..PER).map(|_| Client::connect(addr)).collect();
                // All 1000 connections are open at once before any request is sent.
                barrier.wait();
                let mut bodies = Vec::new();
                for (k, c) in conns.iter_mut().enumerate() {
                    let id = t * PER + k;
                    let model = if id % 2 == 0 { "m-alpha" } else { "m-beta" };
                    let body = tagged_chat_body(model, id);
                    c.send(&request_bytes(
                        "POST",
                        "/v1/chat/completions",
                        &["Content-Type: application/json"],
                        body.as_bytes(),
                    ));
                    bodies.push((model, body));
                }
                let mut errors = Vec::new();
                for (c, (model, body)) in conns.iter_mut().zip(&bodies) {
                    let upstream = if *model == "m-alpha" { "alpha" } else { "beta" };
                    match c.try_read_response() {
                        Ok(r) => {
                            if let Err(e) = check_tagged(&r, model, upstream, body) {
                                errors.push(e);
                            }
                        }
                        Err(e) => errors.push(format!("read: {e}")),
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        errors.is_empty(),
        "{} of 1000 failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

#[test]
fn churn_of_short_pipelined_connections_never_misdelivers() {
    let alpha = MockUpstream::openai("alpha");
    let beta = MockUpstream::openai("beta");
    let mg = start(
        &[("m-alpha", &alpha.url()), ("m-beta", &beta.url())],
        json!({"accessLog": false}),
    );
    let addr = mg.addr();
    const THREADS: usize = 4;
    const PER: usize = 250;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut errors = Vec::new();
                for k in 0..PER {
                    let conn_id = t * PER + k;
                    let (m1, m2) = if conn_id % 2 == 0 {
                        ("m-alpha", "m-beta")
                    } else {
                        ("m-beta", "m-alpha")
                    };
                    let (b1, b2) = (
                        tagged_chat_body(m1, 2 * conn_id),
                        tagged_chat_body(m2, 2 * conn_id + 1),
                    );
                    let mut bytes = request_bytes(
                        "POST",
                        "/v1/chat/completions",
                        &["Content-Type: application/json"],
                        b1.as_bytes(),
                    );
                    bytes.extend(request_bytes(
                        "POST",
                        "/v1/chat/completions",
                        &["Content-Type: application/json", "Connection: close"],
                        b2.as_bytes(),
                    ));
                    let mut c = Client::connect(addr);
                    c.send(&bytes);
                    for (m, b) in [(m1, &b1), (m2, &b2)] {
                        let up = if m == "m-alpha" { "alpha" } else { "beta" };
                        match c.try_read_response() {
                            Ok(r) => {
                                if let Err(e) = check_tagged(&r, m, up, b) {
                                    errors.push(format!("conn {conn_id}: {e}"));
                                }
                            }
                            Err(e) => errors.push(format!("conn {conn_id}: read: {e}")),
                        }
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        errors.is_empty(),
        "{} of 2000 failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

/// The targets of the process's open fds, for a leak report.
fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn fd_count_returns_to_baseline_after_a_mixed_burst() {
    let mock = MockUpstream::openai("alpha");
    let dead = closed_port_url();
    let mg = start(
        &[("ok", &mock.url()), ("dead", &dead)],
        json!({"accessLog": false}),
    );
    let addr = mg.addr();
    thread::sleep(ms(100));
    let baseline = mg.fd_count();
    let base_targets = fd_targets(mg.pid());
    let threads: Vec<_> = (0..5)
        .map(|t| {
            thread::spawn(move || {
                for k in 0..100 {
                    match (t * 100 + k) % 5 {
                        0 => {
                            let r =
                                post_json(addr, "/v1/chat/completions", &chat_body("ok", false));
                            assert_eq!(r.status, 200);
                        }
                        1 => {
                            let r =
                                post_json(addr, "/v1/chat/completions", &chat_body("nope", false));
                            assert_eq!(r.status, 404);
                        }
                        2 => {
                            // Aborted while the upstream is still "generating".
                            let mut c = Client::connect(addr);
                            c.send(&chat_request("ok", false, &["X-Mock-Latency-Ms: 200"]));
                            thread::sleep(ms(20));
                            c.close();
                        }
                        3 => {
                            let r =
                                post_json(addr, "/v1/chat/completions", &chat_body("dead", false));
                            assert_eq!(r.status, 502);
                        }
                        _ => {
                            let raw = raw_exchange(addr, b"GARBAGE\r\n\r\n");
                            assert!(raw.starts_with(b"HTTP/1.1 400"), "{raw:?}");
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Pooled idle upstream connections live up to 4 s (POOL_IDLE), checked by a 1 s sweep:
    // rather than allowing slack for them, wait until they have expired too.
    let back = wait_until(Duration::from_secs(10), || mg.fd_count() == baseline);
    assert!(
        back,
        "fd count {} after the burst, baseline {baseline}\nnow: {:?}\nbaseline: {:?}",
        mg.fd_count(),
        fd_targets(mg.pid()),
        base_targets
    );
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown.

#[test]
fn sigterm_lets_a_running_stream_finish_refuses_new_connections_and_exits_zero() {
    let mock = MockUpstream::openai("alpha");
    let mut mg = start(&[("m", &mock.url())], json!({"timeouts": {"shutdown": 5}}));
    let addr: SocketAddr = mg.addr();
    let mut c = Client::connect(addr);
    // 10 token events 200 ms apart (plus finish, usage, [DONE]): about 2.4 s.
    c.send(&chat_request(
        "m",
        true,
        &["X-Mock-Sse-Events: 10", "X-Mock-Sse-Interval-Ms: 200"],
    ));
    let mut resp = c.try_read_head().expect("head");
    assert_eq!(resp.status, 200);
    c.try_next_chunk(&mut resp)
        .expect("first event")
        .expect("stream ended at once");
    let t_sig = Instant::now();
    mg.signal(libc::SIGTERM);
    let refused = wait_until(Duration::from_secs(1), || {
        matches!(
            TcpStream::connect_timeout(&addr, ms(200)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
        )
    });
    assert!(refused, "new connections still accepted 1 s after SIGTERM");
    let mut events = 1;
    let mut last = Vec::new();
    while let Some(data) = c
        .try_next_chunk(&mut resp)
        .expect("the stream was cut by SIGTERM")
    {
        events += 1;
        last = data;
    }
    assert_eq!(events, 13, "every event arrived");
    assert_eq!(last, b"data: [DONE]\n\n");
    let st = mg
        .wait_exit(Duration::from_secs(6).saturating_sub(t_sig.elapsed()))
        .expect("modelgate still running after the drain deadline");
    assert!(st.success(), "exit status {st}");
}

// ---------------------------------------------------------------------------------------------
// More edges of the same machinery.

#[test]
fn stream_with_gaps_under_the_idle_timeout_outlives_it() {
    // `idle` bounds the gap between bytes, not the whole exchange: events every 400 ms with a
    // 1 s idle timeout stream for 3 s.
    const EVENTS: usize = 8;
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_none() {
            return;
        }
        let _ = conn.write_all(SSE_HEAD);
        for i in 0..EVENTS {
            thread::sleep(ms(400));
            if conn.write_all(&sse_chunk(i)).is_err() {
                return;
            }
        }
        let _ = conn.write_all(b"0\r\n\r\n");
        let _ = conn.read_request();
    });
    let mg = start(&[("m", &up.url())], json!({"timeouts": {"idle": 1}}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", true, &[]));
    let mut resp = c.try_read_head().expect("head");
    assert_eq!(resp.status, 200);
    let mut n = 0;
    while let Some(_d) = c
        .try_next_chunk(&mut resp)
        .expect("stream cut while bytes kept flowing")
    {
        n += 1;
    }
    assert_eq!(n, EVENTS);
}

#[test]
fn first_byte_timeout_closes_the_upstream_connection() {
    // After a 504 the upstream connection must not be reused: its late answer would go to
    // the next request.
    let (tx, rx) = mpsc::channel::<bool>();
    let tx: Report<_> = Mutex::new(tx);
    let up = ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_some() {
            report(&tx, conn.wait_peer_closed(Duration::from_secs(3)));
        }
    });
    let mg = start(&[("m", &up.url())], json!({"timeouts": {"firstByte": 0.3}}));
    let resp = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
    assert_error(&resp, 504, "upstream_timeout");
    let t = Instant::now();
    let closed = rx.recv_timeout(Duration::from_secs(5)).expect("report");
    assert!(closed, "upstream connection kept open 3 s after the 504");
    assert!(
        t.elapsed() < ms(500),
        "closed {:?} after the 504",
        t.elapsed()
    );
}

#[test]
fn pipelined_request_behind_a_stream_is_answered_after_it_in_order() {
    let mock = MockUpstream::openai("alpha");
    let mg = start(&[("m", &mock.url())], json!({}));
    let mut bytes = chat_request(
        "m",
        true,
        &["X-Mock-Sse-Events: 5", "X-Mock-Sse-Interval-Ms: 50"],
    );
    let second = tagged_chat_body("m", 7);
    bytes.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        second.as_bytes(),
    ));
    let mut c = Client::connect(mg.addr());
    c.send(&bytes);
    let first = c.read_response();
    assert_eq!(first.status, 200);
    let data = first.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let resp = c.read_response();
    check_tagged(&resp, "m", "alpha", &second).unwrap();
}

#[test]
fn close_delimited_upstream_response_reaches_the_client_whole_then_eof() {
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_none() {
            return;
        }
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ");
        thread::sleep(ms(50));
        let _ = conn.write_all(b"world");
        conn.close();
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", false, &[]));
    let head = c.try_read_head().expect("head");
    assert_eq!(head.status, 200);
    let (body, eof) = c.read_to_eof_with_timeout(Duration::from_secs(5));
    assert!(eof, "a close-delimited body ends with a close");
    assert_eq!(body, b"hello world");
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_and_exits_at_once() {
    let mock = MockUpstream::openai("alpha");
    let mut mg = start(&[("m", &mock.url())], json!({"timeouts": {"shutdown": 10}}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", false, &[]));
    assert_eq!(c.read_response().status, 200);
    let t = Instant::now();
    mg.signal(libc::SIGTERM);
    assert!(
        c.is_closed_within(Duration::from_secs(2)),
        "idle keep-alive connection still open 2 s after SIGTERM"
    );
    let st = mg
        .wait_exit(Duration::from_secs(2))
        .expect("modelgate still running 2 s after SIGTERM with nothing in flight");
    assert!(st.success(), "exit status {st}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn client_that_stops_reading_is_cut_at_idle_timeout_and_upstream_closed() {
    let (tx, rx) = mpsc::channel::<bool>();
    let tx: Report<_> = Mutex::new(tx);
    let up = ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_none() {
            return;
        }
        let total = 32 << 20;
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").into_bytes();
        out.resize(out.len() + total, b'z');
        // Blocks once every buffer is full; fails when modelgate gives up.
        let _ = conn.write_all(&out);
        report(&tx, conn.wait_peer_closed(Duration::from_secs(5)));
    });
    let mg = start(&[("m", &up.url())], json!({"timeouts": {"idle": 1}}));
    let mut c = Client::connect(mg.addr());
    c.send(&request_bytes("GET", "/route/m/big", &[], b""));
    let t = Instant::now();
    // Read nothing. The exchange stalls; after `idle` both sides are closed.
    let closed = rx.recv_timeout(Duration::from_secs(8)).expect("report");
    assert!(closed, "upstream still open with a stalled client");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "stalled exchange closed after {:?}, idle timeout 1 s",
        t.elapsed()
    );
}

#[test]
fn in_flight_slot_is_released_after_abort_502_and_504() {
    let up = ScriptedUpstream::start(|conn| {
        while let Some(req) = conn.read_request() {
            match req.header("x-do") {
                Some("hang") => {
                    conn.wait_peer_closed(Duration::from_secs(5));
                    return;
                }
                Some("die") => return,
                _ => {
                    if conn.respond_json(200, "{\"ok\":true}").is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mg = start(
        &[("m", &up.url()), ("dead", &closed_port_url())],
        // firstByte leaves a loaded machine time to run the mock before the 502 cases.
        json!({"maxConcurrentRequests": 1, "timeouts": {"firstByte": 2}}),
    );
    let addr = mg.addr();
    // The slot is released by the worker that held it, right after its last write: a
    // request on a new connection may reach another worker a moment before that.
    let ok = |what: &str| {
        let mut last = None;
        let served = wait_until(Duration::from_secs(5), || {
            let r = post_json(addr, "/v1/chat/completions", &chat_body("m", false));
            let done = r.status == 200;
            last = Some(r);
            done
        });
        assert!(served, "after {what}: {:?}", last.map(|r| r.status));
    };
    ok("nothing");
    // Client abort while the upstream holds the request.
    let mut c = Client::connect(addr);
    c.send(&chat_request("m", false, &["X-Do: hang"]));
    thread::sleep(ms(100));
    c.close();
    drop(c);
    thread::sleep(ms(100));
    ok("a client abort");
    let r = post_json(addr, "/v1/chat/completions", &chat_body("dead", false));
    assert_eq!(r.status, 502);
    ok("a connect failure");
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &["X-Do: die"],
        chat_body("m", false).as_bytes(),
    );
    assert_eq!(r.status, 502);
    ok("an upstream dying before the response");
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &["X-Do: hang"],
        chat_body("m", false).as_bytes(),
    );
    assert_eq!(r.status, 504);
    ok("a first-byte timeout");
}

#[test]
fn invalid_chunking_from_upstream_is_cut_not_completed() {
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_none() {
            return;
        }
        let mut out = SSE_HEAD.to_vec();
        out.extend(sse_chunk(0));
        let _ = conn.write_all(&out);
        thread::sleep(ms(50));
        let _ = conn.write_all(b"ZZ\r\nnot a chunk\r\n0\r\n\r\n");
        conn.wait_peer_closed(Duration::from_secs(5));
    });
    let mg = start(&[("m", &up.url())], json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", true, &[]));
    let head = c.try_read_head().expect("head");
    assert_eq!(head.status, 200);
    let (rest, eof) = c.read_to_eof_with_timeout(Duration::from_secs(5));
    assert!(eof, "client kept open after the upstream broke the framing");
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&sse_chunk(0)),
        "the valid chunk, then EOF (nothing of the bad framing, no terminator)"
    );
}
