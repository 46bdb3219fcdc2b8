//! WebSocket upgrades through modelgate (issue 11): the handshake routed by `?model=` or
//! `/route/{model}/…`, then a raw byte tunnel with backpressure, half-close and idle timeout.
//! The test speaks the handshake and the frames itself (tests/kit/src/websocket.rs).

mod common;

use common::websocket::*;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
/// Big enough to overflow every socket buffer between the two ends.
const BIG: u64 = 64 * 1024 * 1024;

fn start_with(extra: serde_json::Value) -> (WsUpstream, Modelgate) {
    let ws = WsUpstream::start();
    let mut config = json!({
        "listen": "127.0.0.1:0",
        "models": {"rt": {"url": ws.url()}},
    });
    for (k, v) in extra.as_object().expect("object") {
        config[k] = v.clone();
    }
    let mg = Modelgate::start(&config.to_string());
    (ws, mg)
}

fn start() -> (WsUpstream, Modelgate) {
    start_with(json!({}))
}

/// Sends a handshake for `target`; the status and headers of the answer.
fn handshake_on(mg: &Modelgate, target: &str) -> (TcpStream, u16, Vec<(String, String)>) {
    let mut s = TcpStream::connect(mg.addr()).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(&handshake(target, &[]))
        .expect("send handshake");
    let (status, headers) = read_head(&mut s).expect("response head");
    (s, status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// An open tunnel to the echo upstream, its greeting read.
fn open(mg: &Modelgate, target: &str) -> TcpStream {
    let (mut s, status, headers) = handshake_on(mg, target);
    assert_eq!(status, 101, "{headers:?}");
    assert_eq!(
        header(&headers, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the accept key of RFC 6455's sample nonce"
    );
    assert_eq!(
        header(&headers, "upgrade").map(str::to_ascii_lowercase),
        Some("websocket".into())
    );
    assert_eq!(
        header(&headers, "connection").map(str::to_ascii_lowercase),
        Some("upgrade".into())
    );
    let greeting = read_frame(&mut s).expect("greeting");
    assert_eq!(greeting.text(), "hello from upstream");
    s
}

/// Reads until EOF; true when it came (rather than a timeout or an error).
fn reads_eof(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).is_ok() && rest.is_empty()
}

/// Waits until `counter` stops moving (three equal samples 300 ms apart) or reaches
/// `total`; returns its value then.
fn wait_stalled(counter: &AtomicU64, total: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut same) = (u64::MAX, 0);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(300));
        let v = counter.load(Ordering::SeqCst);
        if v >= total {
            return v;
        }
        if v == last {
            same += 1;
            if same >= 3 {
                return v;
            }
        } else {
            (last, same) = (v, 0);
        }
    }
    counter.load(Ordering::SeqCst)
}

#[test]
fn echo_both_ways_then_a_close_started_by_the_client() {
    let (ws, mg) = start();
    let mut s = open(&mg, "/v1/realtime?model=rt");
    let reqs = ws.up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].target, "/v1/realtime?model=rt");
    assert_eq!(reqs[0].header("sec-websocket-key"), Some(SAMPLE_KEY));
    assert!(reqs[0].header("x-request-id").is_some());

    write_frame(&mut s, OP_TEXT, b"hi there", true).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().text(), "hi there");
    let blob: Vec<u8> = (0..200_000u64).map(pattern).collect();
    write_frame(&mut s, OP_BINARY, &blob, true).unwrap();
    let echoed = read_frame(&mut s).unwrap();
    assert_eq!(echoed.opcode, OP_BINARY);
    assert!(echoed.payload == blob);

    // Close handshake: our Close, its Close and FIN, our FIN, then both sides are gone.
    write_frame(&mut s, OP_CLOSE, b"\x03\xe8", true).unwrap();
    let close = read_frame(&mut s).unwrap();
    assert_eq!(close.opcode, OP_CLOSE);
    assert!(reads_eof(&mut s), "the upstream's FIN reaches the client");
    s.shutdown(Shutdown::Write).unwrap();
    assert!(ws.wait_event("eof", T), "{:?}", ws.events());
    assert!(wait_until(T, || ws.up.open_connections() == 0));
    assert!(
        wait_until(T, || mg.json_lines().iter().any(|l| l["status"] == 101)),
        "the tunnel is logged as one request with status 101"
    );
}

#[test]
fn a_close_started_by_the_upstream_reaches_the_client() {
    let (ws, mg) = start();
    let mut s = open(&mg, "/route/rt/v1/realtime");
    assert_eq!(ws.up.requests()[0].target, "/v1/realtime");
    write_frame(&mut s, OP_TEXT, b"close-first", true).unwrap();
    let close = read_frame(&mut s).unwrap();
    assert_eq!(close.opcode, OP_CLOSE);
    assert!(reads_eof(&mut s), "the upstream's FIN reaches the client");
    // The client can still answer after the upstream's FIN (half-close).
    write_frame(&mut s, OP_CLOSE, b"\x03\xe8", true).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(ws.wait_event("eof", T), "{:?}", ws.events());
    assert!(ws.events().contains(&"peer close".to_owned()));
}

#[test]
fn a_client_fin_is_passed_on_and_the_upstream_can_still_answer() {
    let (ws, mg) = start();
    let mut s = open(&mg, "/v1/realtime?model=rt");
    write_frame(&mut s, OP_TEXT, b"one", true).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().text(), "one");
    s.shutdown(Shutdown::Write).unwrap();
    assert!(ws.wait_event("eof", T), "{:?}", ws.events());
    assert_eq!(read_frame(&mut s).unwrap().text(), "bye after eof");
    assert!(reads_eof(&mut s));
}

#[test]
fn a_client_that_sends_while_the_upstream_does_not_read_is_held_back() {
    let (ws, mg) = start();
    ws.hold.store(true, Ordering::SeqCst);
    let mut s = open(&mg, "/v1/realtime?model=rt");
    let progress = Arc::new(AtomicU64::new(0));
    let mut w = s.try_clone().unwrap();
    let p = progress.clone();
    let writer = thread::spawn(move || {
        w.write_all(&frame_header(OP_BINARY, BIG, Some([0; 4])))
            .unwrap();
        let mut sent = 0u64;
        while sent < BIG {
            let piece: Vec<u8> = (sent..BIG.min(sent + 65536)).map(pattern).collect();
            w.write_all(&piece).unwrap();
            sent += piece.len() as u64;
            p.store(sent, Ordering::SeqCst);
        }
    });
    let stalled_at = wait_stalled(&progress, BIG);
    println!("the client's writer stalled after {stalled_at} bytes");
    assert!(
        stalled_at < BIG,
        "all {BIG} bytes were taken while the upstream read nothing: no backpressure"
    );
    ws.hold.store(false, Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(read_frame(&mut s).unwrap().text(), format!("ok {BIG}"));
}

#[test]
fn an_upstream_that_sends_while_the_client_does_not_read_is_held_back() {
    let (ws, mg) = start();
    let mut s = open(&mg, "/v1/realtime?model=rt");
    write_frame(&mut s, OP_TEXT, format!("flood {BIG}").as_bytes(), true).unwrap();
    let stalled_at = wait_stalled(&ws.written, BIG);
    println!("the upstream's writer stalled after {stalled_at} bytes");
    assert!(
        stalled_at < BIG,
        "all {BIG} bytes were taken while the client read nothing: no backpressure"
    );
    let mut header = [0u8; 10];
    s.read_exact(&mut header).unwrap();
    assert_eq!(header[0], 0x80 | OP_BINARY);
    assert_eq!(u64::from_be_bytes(header[2..10].try_into().unwrap()), BIG);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < BIG {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {at} bytes");
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, pattern(at + i as u64), "byte {}", at + i as u64);
        }
        at += n as u64;
    }
    assert!(ws.wait_event("flood done", T));
}

#[test]
fn handshake_routing_errors_and_ordinary_answers() {
    let (ws, mg) = start();
    let (_s, status, _) = handshake_on(&mg, "/v1/realtime?model=nope");
    assert_eq!(status, 404);
    let (_s, status, _) = handshake_on(&mg, "/v1/realtime");
    assert_eq!(status, 400, "a handshake without a model");
    let (_s, status, _) = handshake_on(&mg, "/v1/realtime?model=%ff");
    assert_eq!(status, 400);
    assert_eq!(ws.up.request_count(), 0);

    // A non-101 answer is an ordinary response, and the connection goes on.
    let (mut s, status, headers) = handshake_on(&mg, "/reject?model=rt");
    assert_eq!(status, 403);
    let len: usize = header(&headers, "content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    assert_eq!(body, b"{\"error\":\"rejected\"}");
    s.write_all(&handshake("/v1/realtime?model=rt", &[]))
        .unwrap();
    let (status, _) = read_head(&mut s).unwrap();
    assert_eq!(status, 101);
    assert_eq!(read_frame(&mut s).unwrap().text(), "hello from upstream");
    write_frame(&mut s, OP_TEXT, b"again", true).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().text(), "again");
}

#[test]
fn an_open_tunnel_holds_two_pool_blocks() {
    // Seven 16 KiB blocks: a handshake needs three (its read block, the response block and
    // the upgrade block) and an open tunnel keeps two, so a third tunnel fits only when the
    // earlier ones gave their read blocks back.
    let (_ws, mg) = start_with(json!({"workers": 1, "maxBufferBytes": 7 * 16384}));
    let tunnels: Vec<TcpStream> = (0..3).map(|_| open(&mg, "/v1/realtime?model=rt")).collect();
    let (_, status, _) = handshake_on(&mg, "/v1/realtime?model=rt");
    assert_eq!(status, 503, "the budget is spent by three tunnels");
    drop(tunnels);
}

#[test]
fn an_idle_tunnel_is_closed_after_timeouts_idle() {
    let (ws, mg) = start_with(json!({"timeouts": {"idle": 1}}));
    let mut s = open(&mg, "/v1/realtime?model=rt");
    write_frame(&mut s, OP_TEXT, b"still here", true).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().text(), "still here");
    let t0 = Instant::now();
    assert!(reads_eof(&mut s), "the idle tunnel was not closed");
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(wait_until(T, || ws.up.open_connections() == 0));
}

#[test]
fn rfc_6455_accept_key() {
    assert_eq!(accept_key(SAMPLE_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn a_101_to_a_request_that_did_not_ask_to_upgrade_is_a_502() {
    let up = ScriptedUpstream::start(|conn| {
        if conn.read_request().is_some() {
            let _ = conn.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            );
            thread::sleep(Duration::from_millis(200));
        }
    });
    let mg = Modelgate::start(&config_json(&[("m", &up.url())]));
    let resp = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
    assert_eq!(resp.status, 502);
    assert_eq!(resp.error_code().as_deref(), Some("upstream_unavailable"));
}

#[test]
fn a_tunnel_through_a_tls_listener_closes_with_close_notify() {
    use rustls::pki_types::ServerName;
    let ws = WsUpstream::start();
    let dir = TempDir::new();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert_path = dir.write("cert.pem", cert.pem());
    let key_path = dir.write("key.pem", signing_key.serialize_pem());
    let config = json!({
        "listen": {"address": "127.0.0.1:0", "tls": {"cert": cert_path, "key": key_path}},
        "models": {"rt": {"url": ws.url()}},
    });
    let mg = Modelgate::start(&config.to_string());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let session = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
    let tcp = TcpStream::connect(mg.addr()).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    let mut s = rustls::StreamOwned::new(session, tcp);

    s.write_all(&handshake("/v1/realtime?model=rt", &[]))
        .unwrap();
    let (status, _) = read_head(&mut s).unwrap();
    assert_eq!(status, 101);
    assert_eq!(read_frame(&mut s).unwrap().text(), "hello from upstream");
    let blob: Vec<u8> = (0..100_000u64).map(pattern).collect();
    write_frame(&mut s, OP_BINARY, &blob, true).unwrap();
    assert!(read_frame(&mut s).unwrap().payload == blob);

    write_frame(&mut s, OP_CLOSE, b"\x03\xe8", true).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().opcode, OP_CLOSE);
    // The upstream's FIN arrives as a TLS close_notify (read_to_end fails on a bare FIN).
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("a clean TLS close");
    assert!(rest.is_empty());
    s.conn.send_close_notify();
    s.flush().unwrap();
    assert!(ws.wait_event("eof", T), "{:?}", ws.events());
}
