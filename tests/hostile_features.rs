//! Hostile input on the features beyond plain forwarding (upgrades, multipart, profiles, scoped
//! tokens, discovery): every case is a real socket exchange against the real binary, and ends
//! with a check that the process still answers `/health` and logged no panic. The rule under
//! test: a request reaches only the upstream the router chose for it, bytes are tunnelled
//! only after an upstream `101` to a real handshake, and nothing crashes or hangs.

mod common;

use common::websocket::{handshake, read_head};
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

/// Read timeout: a hang fails instead of blocking the suite.
const T: Duration = Duration::from_secs(10);

/// Answers every request with 200 naming itself, keep-alive.
fn named_upstream(name: &'static str) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            let header = format!("X-Upstream: {name}");
            if c.respond(200, &[&header], name.as_bytes()).is_err() {
                break;
            }
        }
    })
}

/// Two models on two upstreams, so that a request reaching the wrong one shows.
fn two_models(extra: serde_json::Value) -> (ScriptedUpstream, ScriptedUpstream, Modelgate) {
    let a = named_upstream("a");
    let b = named_upstream("b");
    let mut extra = extra;
    extra["workers"] = json!(1);
    let mg = Modelgate::start(&config_with(&[("a", &a.url()), ("b", &b.url())], extra));
    (a, b, mg)
}

/// The process still serves and never panicked.
fn assert_alive(mg: &Modelgate) {
    let health = get(mg.addr(), "/health");
    assert_eq!(health.status, 200, "{}", health.text());
    let panics: Vec<String> = mg
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("panicked") || l.contains("overflow"))
        .collect();
    assert!(panics.is_empty(), "{panics:?}");
}

/// Sends `bytes` on a new connection and reads everything until EOF (requests built by
/// [`closing`] ask for the close).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<Response> {
    let mut c = Client::connect(addr);
    c.set_read_timeout(T);
    let _ = c.try_send(bytes);
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    assert!(
        eof,
        "the server neither answered nor closed: {}",
        String::from_utf8_lossy(&raw)
    );
    parse_responses(&raw)
}

/// A request that ends its connection: `request_bytes` with `Connection: close`.
fn closing(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut h = headers.to_vec();
    h.push("Connection: close");
    request_bytes(method, path, &h, body)
}

fn dump(r: &Response) -> String {
    String::from_utf8_lossy(&r.raw).into_owned()
}

// ---------------------------------------------------------------------------------------------
// 1. Upgrades

/// An upstream that answers `101` to anything, then sends bytes that look like a response.
fn switching_upstream() -> ScriptedUpstream {
    ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!",
            );
            let mut sink = [0u8; 4096];
            while matches!(c.read_raw(&mut sink), Ok(n) if n > 0) {}
        }
    })
}

#[test]
fn a_post_with_upgrade_headers_is_an_ordinary_request_and_a_101_to_it_is_a_502() {
    let up = switching_upstream();
    let mg = Modelgate::start(&config_with(&[("a", &up.url())], json!({"workers": 1})));
    let body = br#"{"model":"a"}"#;
    let req = closing(
        "POST",
        "/v1/chat/completions",
        &[
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Content-Type: application/json",
        ],
        body,
    );
    let rs = exchange(mg.addr(), &req);
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert_eq!(rs[0].status, 502, "{}", dump(&rs[0]));
    assert!(!rs[0].raw.windows(5).any(|w| w == b"evil!"));
    let got = up.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("upgrade"), None, "Upgrade is hop by hop");
    assert_alive(&mg);
}

#[test]
fn an_upgrade_with_a_body_is_refused_before_any_upstream_sees_it() {
    let (a, b, mg) = two_models(json!({}));
    for framing in [
        "Content-Length: 5\r\n\r\nhello".to_string(),
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(),
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string(),
    ] {
        let mut req = handshake("/v1/realtime?model=a", &[]);
        req.truncate(req.len() - 2);
        req.extend_from_slice(framing.as_bytes());
        let rs = exchange(mg.addr(), &req);
        assert_eq!(rs.len(), 1, "{framing}: {rs:?}");
        assert_eq!(rs[0].status, 400, "{framing}: {}", dump(&rs[0]));
    }
    assert_eq!(a.request_count() + b.request_count(), 0);
    assert_alive(&mg);
}

/// A non-101 answer to a handshake: the request pipelined behind it is a new request, routed
/// by its own body (to `b`), never tunnelled to `a`.
#[test]
fn after_a_refused_upgrade_the_next_request_is_routed_not_tunnelled() {
    let (a, b, mg) = two_models(json!({}));
    for connection in ["Upgrade", "UPGRADE", "keep-alive ,  upgrade"] {
        let mut req = format!(
            "GET /v1/realtime?model=a HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\
             Upgrade: WebSocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        req.extend(closing(
            "POST",
            "/v1/chat/completions",
            &["Content-Type: application/json"],
            br#"{"model":"b"}"#,
        ));
        let before_a = a.request_count();
        let rs = exchange(mg.addr(), &req);
        assert_eq!(rs.len(), 2, "{connection}: {rs:?}");
        assert_eq!(rs[0].header("x-upstream"), Some("a"), "{}", dump(&rs[0]));
        assert_eq!(rs[1].header("x-upstream"), Some("b"), "{}", dump(&rs[1]));
        let got_a = a.requests();
        assert_eq!(got_a.len(), before_a + 1);
        let last = got_a.last().expect("a request");
        assert_eq!(last.method, "GET");
        assert!(last.body.is_empty());
        assert_eq!(
            last.header("upgrade").map(str::to_ascii_lowercase),
            Some("websocket".into()),
            "{connection}: a real handshake keeps its Upgrade"
        );
    }
    assert_eq!(b.request_count(), 3);
    assert_alive(&mg);
}

/// Bytes sent before the `101` arrive are tunnel bytes for the upstream the handshake went
/// to; a `101` followed by garbage is passed through as tunnel bytes.
#[test]
fn bytes_pipelined_behind_a_handshake_go_only_to_its_upstream() {
    let tunnel_bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = tunnel_bytes.clone();
    let ws = ScriptedUpstream::start(move |c| {
        if c.read_request().is_some() {
            let _ = c.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x00garbage\xff",
            );
            let mut got = c.buffered().to_vec();
            let mut block = [0u8; 4096];
            while let Ok(n) = c.read_raw(&mut block) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&block[..n]);
            }
            seen.lock().expect("lock").extend(got);
        }
    });
    let b = named_upstream("b");
    let mg = Modelgate::start(&config_with(
        &[("a", &ws.url()), ("b", &b.url())],
        json!({"workers": 1}),
    ));
    let smuggled = closing(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        br#"{"model":"b"}"#,
    );
    let mut req = handshake("/v1/realtime?model=a", &[]);
    req.extend_from_slice(&smuggled);
    let mut s = TcpStream::connect(mg.addr()).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(&req).expect("send");
    let (status, _) = read_head(&mut s).expect("head");
    assert_eq!(status, 101);
    let mut garbage = [0u8; 9];
    s.read_exact(&mut garbage).expect("tunnel bytes");
    assert_eq!(&garbage, b"\x00garbage\xff");
    s.shutdown(std::net::Shutdown::Write).expect("fin");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(wait_until(T, || !tunnel_bytes
        .lock()
        .expect("lock")
        .is_empty()));
    assert_eq!(*tunnel_bytes.lock().expect("lock"), smuggled);
    assert_eq!(
        b.request_count(),
        0,
        "the tunnelled request never reached b"
    );
    assert_alive(&mg);
}

#[test]
fn an_http10_handshake_is_not_an_upgrade() {
    let up = switching_upstream();
    let mg = Modelgate::start(&config_with(&[("a", &up.url())], json!({"workers": 1})));
    let req =
        b"GET /v1/realtime?model=a HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    let rs = exchange(mg.addr(), req);
    assert_eq!(rs.len(), 1, "{rs:?}");
    assert!(rs[0].status >= 400, "{}", dump(&rs[0]));
    assert!(!rs[0].raw.windows(5).any(|w| w == b"evil!"));
    assert_alive(&mg);
}

#[test]
fn an_upgrade_with_content_length_zero_tunnels() {
    let up = switching_upstream();
    let mg = Modelgate::start(&config_with(&[("a", &up.url())], json!({"workers": 1})));
    let mut req = handshake("/v1/realtime?model=a", &["Content-Length: 0"]);
    req.extend_from_slice(b"ping");
    let mut s = TcpStream::connect(mg.addr()).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(&req).expect("send");
    let (status, _) = read_head(&mut s).expect("head");
    assert_eq!(status, 101);
    let mut tail = [0u8; 43];
    s.read_exact(&mut tail).expect("the bytes after the 101");
    assert!(
        tail.ends_with(b"evil!"),
        "{}",
        String::from_utf8_lossy(&tail)
    );
    drop(s);
    assert_alive(&mg);
}

/// Tunnels opened and dropped from the client side leave no descriptor behind.
#[test]
fn tunnel_churn_leaks_no_descriptors() {
    let up = switching_upstream();
    let mg = Modelgate::start(&config_with(&[("a", &up.url())], json!({"workers": 1})));
    let open_and_drop = |n: usize| {
        for i in 0..n {
            let mut s = TcpStream::connect(mg.addr()).expect("connect");
            s.set_read_timeout(Some(T)).expect("timeout");
            s.write_all(&handshake("/v1/realtime?model=a", &[]))
                .expect("send");
            let (status, _) = read_head(&mut s).expect("head");
            assert_eq!(status, 101);
            if i % 2 == 0 {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        }
    };
    open_and_drop(4);
    assert!(wait_until(T, || up.open_connections() == 0));
    let baseline = mg.fd_count();
    open_and_drop(40);
    assert!(
        wait_until(T, || up.open_connections() == 0),
        "upstream sides of dropped tunnels stay open: {}",
        up.open_connections()
    );
    assert!(
        wait_until(T, || mg.fd_count() <= baseline),
        "fds {} > {baseline}",
        mg.fd_count()
    );
    assert_alive(&mg);
}

// ---------------------------------------------------------------------------------------------
// 2. Multipart

fn form_request(content_type: &str, body: &[u8]) -> Vec<u8> {
    let ct = format!("Content-Type: {content_type}");
    closing("POST", "/v1/audio/transcriptions", &[&ct], body)
}

/// Status and upstream of one multipart request.
fn send_form(mg: &Modelgate, content_type: &str, body: &[u8]) -> (u16, Option<String>) {
    let rs = exchange(mg.addr(), &form_request(content_type, body));
    assert!(!rs.is_empty(), "no answer");
    (rs[0].status, rs[0].header("x-upstream").map(str::to_owned))
}

#[test]
fn multipart_boundary_tricks_route_right_or_fail_with_400() {
    let (_a, _b, mg) = two_models(json!({}));
    let ct = "multipart/form-data; boundary=XyZ";
    let model =
        |v: &str| format!("--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{v}\r\n");
    // The file part holds a fake model part behind a look-alike delimiter.
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n\
        --XyZx\r\n--XyZ \r\nxx\r\n-XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n"
        .to_vec();
    body.extend(model("a").as_bytes());
    body.extend_from_slice(b"--XyZ--\r\n");
    let (status, up) = send_form(&mg, ct, &body);
    // `--XyZ \r\n` inside the file is a real delimiter (padding is allowed), so the part
    // after it is a headerless part: the model must be a (or a 400), never b.
    assert!(
        status == 400 || up.as_deref() == Some("a"),
        "{status} {up:?}"
    );

    // LF-only line ends: a malformed body, not a guess.
    let lf = b"--XyZ\nContent-Disposition: form-data; name=\"model\"\n\na\n--XyZ--\n";
    assert_eq!(send_form(&mg, ct, lf).0, 400);

    // Boundary too long, empty, quoted with spaces.
    let long = "x".repeat(71);
    let long_body =
        format!("--{long}\r\nContent-Disposition: form-data; name=model\r\n\r\na\r\n--{long}--");
    assert_eq!(
        send_form(
            &mg,
            &format!("multipart/form-data; boundary={long}"),
            long_body.as_bytes()
        )
        .0,
        400
    );
    assert_eq!(
        send_form(&mg, "multipart/form-data; boundary=", b"x").0,
        400
    );
    assert_eq!(send_form(&mg, "multipart/form-data", b"x").0, 400);
    let quoted = b"--a b\r\nContent-Disposition: form-data; name=model\r\n\r\nb\r\n--a b--";
    let (status, up) = send_form(&mg, "multipart/form-data; boundary=\"a b\"", quoted);
    assert!(
        status == 400 || up.as_deref() == Some("b"),
        "{status} {up:?}"
    );

    // Preamble and epilogue.
    let mut body = b"preamble --XyZ model=b\r\n".to_vec();
    body.extend(model("a").as_bytes());
    body.extend_from_slice(
        b"--XyZ--\r\nepilogue\r\n--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nb\r\n",
    );
    assert_eq!(send_form(&mg, ct, &body), (200, Some("a".into())));

    // Duplicate model fields, and name= variants.
    let mut dup = model("a").into_bytes();
    dup.extend(model("b").as_bytes());
    dup.extend_from_slice(b"--XyZ--");
    assert_eq!(send_form(&mg, ct, &dup).0, 400);
    let bare = b"--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nb\r\n--XyZ--";
    assert_eq!(send_form(&mg, ct, bare), (200, Some("b".into())));
    let two_names =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"; name=\"model\"\r\n\r\nb\r\n--XyZ--";
    assert_eq!(send_form(&mg, ct, two_names).0, 400);
    let two_dispositions = b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n--XyZ--";
    let (status, up) = send_form(&mg, ct, two_dispositions);
    assert!(
        status == 400 || up.as_deref() == Some("b"),
        "{status} {up:?}"
    );

    // Nested multipart: the inner model field is data of the outer part.
    let nested = b"--XyZ\r\nContent-Type: multipart/mixed; boundary=In\r\n\r\n--In\r\nContent-Disposition: form-data; name=model\r\n\r\nb\r\n--In--\r\n--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\na\r\n--XyZ--";
    assert_eq!(send_form(&mg, ct, nested), (200, Some("a".into())));

    // Huge part headers.
    let mut huge = b"--XyZ\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'p', 64 * 1024));
    huge.extend_from_slice(b"\r\nContent-Disposition: form-data; name=model\r\n\r\na\r\n--XyZ--");
    assert_eq!(send_form(&mg, ct, &huge).0, 400);

    // No close delimiter.
    assert_eq!(send_form(&mg, ct, model("a").as_bytes()).0, 400);
    assert_alive(&mg);
}

/// The model field split across TCP writes (and chunks), then a request pipelined behind
/// the multipart body.
#[test]
fn a_split_chunked_multipart_body_then_a_pipelined_request() {
    let (a, b, mg) = two_models(json!({}));
    let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.wav\"\r\n\r\nRIFF\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--XyZ--\r\n";
    let mut c = Client::connect(mg.addr());
    c.set_read_timeout(T);
    c.send(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in body.chunks(7) {
        c.send(format!("{:x}\r\n", piece.len()).as_bytes());
        c.send(piece);
        c.send(b"\r\n");
        thread::sleep(Duration::from_millis(2));
    }
    let mut tail = b"0\r\n\r\n".to_vec();
    tail.extend(closing(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        br#"{"model":"b"}"#,
    ));
    c.send(&tail);
    let (raw, eof) = c.read_to_eof_with_timeout(T);
    assert!(eof);
    let rs = parse_responses(&raw);
    assert_eq!(rs.len(), 2, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(rs[0].header("x-upstream"), Some("a"));
    assert_eq!(rs[1].header("x-upstream"), Some("b"));
    assert_eq!(a.requests()[0].body, body.to_vec());
    assert_eq!(b.request_count(), 1);
    assert_alive(&mg);
}

#[test]
fn multipart_over_max_body_bytes_is_413() {
    let (a, b, mg) = two_models(json!({"maxBodyBytes": 1024}));
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'z', 4096));
    body.extend_from_slice(b"\r\n--XyZ--");
    let (status, _) = send_form(&mg, "multipart/form-data; boundary=XyZ", &body);
    assert_eq!(status, 413);
    // Chunked: the cap holds without a Content-Length.
    let mut req = b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend(format!("{:x}\r\n", body.len()).as_bytes());
    req.extend_from_slice(&body);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let rs = exchange(mg.addr(), &req);
    assert_eq!(rs[0].status, 413, "{}", dump(&rs[0]));
    assert_eq!(a.request_count() + b.request_count(), 0);
    assert_alive(&mg);
}

// ---------------------------------------------------------------------------------------------
// 3. Profiles

fn profiled() -> (ScriptedUpstream, Modelgate) {
    let up = named_upstream("p");
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {
            "coder": {"url": up.url(), "model": "real", "defaults": {"temperature": 0.2}},
            "vision": {"url": up.url(), "routeMedia": "coder"},
        },
    });
    let mg = Modelgate::start(&cfg.to_string());
    (up, mg)
}

fn post(mg: &Modelgate, path: &str, headers: &[&str], body: &[u8]) -> Response {
    let mut h = vec!["Content-Type: application/json"];
    h.extend_from_slice(headers);
    let rs = exchange(mg.addr(), &closing("POST", path, &h, body));
    rs.into_iter().next().expect("a response")
}

#[test]
fn deep_nesting_to_a_profiled_model_is_400_not_a_crash() {
    let (up, mg) = profiled();
    for depth in [126usize, 127, 128, 129, 10_000, 100_000] {
        let mut body = br#"{"model":"coder","x":"#.to_vec();
        body.extend(std::iter::repeat_n(b'[', depth));
        body.extend(std::iter::repeat_n(b']', depth));
        body.push(b'}');
        let r = post(&mg, "/v1/chat/completions", &[], &body);
        assert!(r.status == 200 || r.status == 400, "{depth}: {}", dump(&r));
        if depth >= 128 {
            assert_eq!(r.status, 400, "{depth}");
        }
        // Path-routed: the body is not scanned first, the profile parses it.
        let mut body = b"{\"x\":".to_vec();
        body.extend(std::iter::repeat_n(b'{', 1));
        body.truncate(5);
        body.extend(std::iter::repeat_n(b'[', depth));
        body.extend(std::iter::repeat_n(b']', depth));
        body.push(b'}');
        let r = post(&mg, "/route/coder/v1/chat/completions", &[], &body);
        assert!(r.status == 200 || r.status == 400, "{depth}: {}", dump(&r));
        if depth >= 128 {
            assert_eq!(r.status, 400, "route {depth}");
        }
        assert_alive(&mg);
    }
    assert!(up.request_count() > 0);
}

#[test]
fn odd_bodies_to_a_profiled_model_are_defined() {
    let (up, mg) = profiled();
    let cases: &[(&[u8], &[u16])] = &[
        (br#"{"model":"coder","n":1e400}"#, &[400]),
        (
            br#"{"model":"coder","n":123456789012345678901234567890}"#,
            &[200],
        ),
        (br#"{"model":"coder","model":"coder"}"#, &[400]),
        (br#"{"model":["coder"]}"#, &[400]),
        (br#"{"model":7}"#, &[400]),
        (b"\xef\xbb\xbf{\"model\":\"coder\"}", &[400]),
        (b"[1,2]", &[400]),
        (b"\"coder\"", &[400]),
        (b"", &[400]),
    ];
    for (body, want) in cases {
        let r = post(&mg, "/v1/chat/completions", &[], body);
        assert!(
            want.contains(&r.status),
            "{}: {}",
            String::from_utf8_lossy(body),
            dump(&r)
        );
        let r = post(&mg, "/route/coder/v1/chat/completions", &[], body);
        assert!(
            r.status == 200 || r.status == 400,
            "route {}: {}",
            String::from_utf8_lossy(body),
            dump(&r)
        );
    }
    // A huge integer keeps its digits through the rewrite (arbitrary_precision).
    let before = up.request_count();
    let r = post(
        &mg,
        "/v1/chat/completions",
        &[],
        br#"{"model":"coder","seed":123456789012345678901234567890}"#,
    );
    assert_eq!(r.status, 200);
    let got = up.requests();
    assert_eq!(got.len(), before + 1);
    assert!(got[before]
        .body_str()
        .contains("123456789012345678901234567890"));
    assert_alive(&mg);
}

#[test]
fn media_detour_content_type_tricks_stay_defined() {
    let (up, mg) = profiled();
    let body = br#"{"model":"vision","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:x"}}]}]}"#;
    for ct in [
        "Content-Type: text/plain",
        "Content-Type: multipart/form-data",
        "Content-Type: multipart/form-data; boundary=x",
        "Content-Type: application/json; charset=utf-16",
    ] {
        let rs = exchange(
            mg.addr(),
            &closing("POST", "/v1/chat/completions", &[ct], body),
        );
        assert!(!rs.is_empty(), "{ct}");
        assert!(
            rs[0].status == 200 || rs[0].status == 400,
            "{ct}: {}",
            dump(&rs[0])
        );
    }
    assert!(up.request_count() <= 4);
    assert_alive(&mg);
}

// ---------------------------------------------------------------------------------------------
// 4. Tokens

fn chat_as(mg: &Modelgate, auth: &[&str], model: &str) -> Response {
    let body = format!(r#"{{"model":"{model}"}}"#);
    post(mg, "/v1/chat/completions", auth, body.as_bytes())
}

#[test]
fn scoped_tokens_hold_across_aliases_encodings_and_header_variants() {
    let a = named_upstream("a");
    let b = named_upstream("b");
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {
            "chat-a": {"url": a.url()},
            "other": {"url": b.url(), "aliases": ["other-alias"]},
        },
        "authTokens": [{"token": "tok-a", "models": ["chat-*"]}, "full"],
    });
    let mg = Modelgate::start(&cfg.to_string());
    assert_eq!(
        chat_as(&mg, &["Authorization: Bearer tok-a"], "chat-a").status,
        200
    );
    assert_eq!(
        chat_as(&mg, &["Authorization: Bearer tok-a"], "other-alias").status,
        403
    );
    assert_eq!(
        chat_as(&mg, &["Authorization: Bearer tok-a"], "other").status,
        403
    );
    // `/route/` with percent-encoding: the decoded name is what the scope sees.
    for target in [
        "/route/other/v1/chat/completions",
        "/route/%6fther/v1/chat/completions",
        "/route/chat-%2A/v1/chat/completions",
        "/route/chat-a%2F..%2Fother/v1/chat/completions",
    ] {
        let rs = exchange(
            mg.addr(),
            &closing(
                "POST",
                target,
                &[
                    "Authorization: Bearer tok-a",
                    "Content-Type: application/json",
                ],
                b"{}",
            ),
        );
        assert_ne!(rs[0].status, 200, "{target}: {}", dump(&rs[0]));
        assert_ne!(rs[0].header("x-upstream"), Some("b"), "{target}");
    }
    // Header variants: lowercase scheme, extra spaces, two Authorization headers.
    let lower = chat_as(&mg, &["Authorization: bearer tok-a"], "chat-a").status;
    assert!(lower == 200 || lower == 401, "{lower}");
    let spaces = chat_as(&mg, &["Authorization: Bearer   tok-a  "], "chat-a").status;
    assert!(spaces == 200 || spaces == 401, "{spaces}");
    let two = chat_as(
        &mg,
        &["Authorization: Bearer tok-a", "Authorization: Bearer full"],
        "other",
    );
    assert!(
        two.status == 401 || two.status == 403 || two.status == 400,
        "{}",
        dump(&two)
    );
    let two = chat_as(
        &mg,
        &["Authorization: Bearer full", "Authorization: Bearer tok-a"],
        "other",
    );
    assert!(
        two.status != 200 || two.header("x-upstream") == Some("b"),
        "{}",
        dump(&two)
    );
    assert_eq!(b.request_count(), usize::from(two.status == 200));
    assert_alive(&mg);
}

#[test]
fn a_burst_of_concurrent_requests_never_admits_more_than_burst() {
    let a = named_upstream("a");
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 2,
        "models": {"a": {"url": a.url()}},
        "authTokens": [{"token": "lim", "requestsPerMinute": 1, "burst": 3}],
    });
    let mg = Modelgate::start(&cfg.to_string());
    let addr = mg.addr();
    let handles: Vec<_> = (0..24)
        .map(|_| {
            thread::spawn(move || {
                let rs = exchange(
                    addr,
                    &closing(
                        "POST",
                        "/v1/chat/completions",
                        &[
                            "Authorization: Bearer lim",
                            "Content-Type: application/json",
                        ],
                        br#"{"model":"a"}"#,
                    ),
                );
                rs.first().map(|r| r.status)
            })
        })
        .collect();
    let statuses: Vec<Option<u16>> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    let ok = statuses.iter().filter(|s| **s == Some(200)).count();
    assert!(ok <= 3, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, Some(200 | 429))),
        "{statuses:?}"
    );
    assert_eq!(a.request_count(), ok);
    assert_alive(&mg);
}

// ---------------------------------------------------------------------------------------------
// 5. Discovery

/// A backend answering `GET /v1/models` with `answer`; `/health` of modelgate must stay up.
fn discover_against(
    answer: impl Fn(&mut Conn) + Send + Sync + 'static,
) -> (ScriptedUpstream, Modelgate) {
    let backend = ScriptedUpstream::start(answer);
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "discover": [backend.url()],
        "discoverInterval": 0.2,
        "models": {},
    });
    let mg = Modelgate::start(&cfg.to_string());
    (backend, mg)
}

fn models_json(ids: impl Iterator<Item = String>) -> String {
    let data: Vec<serde_json::Value> = ids.map(|id| json!({"id": id})).collect();
    json!({"object": "list", "data": data}).to_string()
}

#[test]
fn a_hostile_model_list_keeps_the_server_bounded_and_up() {
    // Huge body (over the cap), slowloris, invalid JSON, deep JSON.
    let (_b, mg) = discover_against(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n");
            let block = vec![b' '; 64 * 1024];
            for _ in 0..200 {
                if c.write_all(&block).is_err() {
                    break;
                }
            }
        }
    });
    assert!(
        mg.wait_stderr("too large", T).is_some(),
        "{:?}",
        mg.stderr_lines()
    );
    assert_alive(&mg);

    let (_b, mg) = discover_against(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{");
            for _ in 0..40 {
                thread::sleep(Duration::from_millis(100));
                if c.write_all(b" ").is_err() {
                    break;
                }
            }
        }
    });
    assert!(
        mg.wait_stderr("timed out", T).is_some(),
        "{:?}",
        mg.stderr_lines()
    );
    assert_alive(&mg);

    for body in [
        "{not json",
        &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    ] {
        let body = body.to_owned();
        let (_b, mg) = discover_against(move |c| {
            while c.read_request().is_some() {
                let _ = c.respond(200, &["Content-Type: application/json"], body.as_bytes());
            }
        });
        assert!(
            mg.wait_stderr("not JSON", T).is_some(),
            "{:?}",
            mg.stderr_lines()
        );
        assert_alive(&mg);
    }
}

#[test]
fn thousands_of_odd_model_ids_are_served_or_skipped_without_a_crash() {
    let mut ids: Vec<String> = (0..3000).map(|i| format!("m{i}")).collect();
    ids.extend(
        [
            "a/b",
            "../../etc",
            "ctl\u{1}x",
            "nl\nx",
            "*",
            "%2F",
            "sp ace",
            "\u{202e}rtl",
        ]
        .map(String::from),
    );
    ids.push("x".repeat(100_000));
    let body = models_json(ids.into_iter());
    let (_b, mg) = discover_against(move |c| {
        while let Some(r) = c.read_request() {
            if r.path() == "/v1/models" {
                let _ = c.respond(200, &["Content-Type: application/json"], body.as_bytes());
            } else {
                let _ = c.respond(200, &["X-Upstream: d"], b"d");
            }
        }
    });
    assert!(
        wait_until(T, || get(mg.addr(), "/health").json()["models"]
            .as_u64()
            .unwrap_or(0)
            >= 3000),
        "{:?}",
        get(mg.addr(), "/health").text()
    );
    for model in ["m2999", "a/b", "*"] {
        let body = json!({"model": model}).to_string();
        let r = post(&mg, "/v1/chat/completions", &[], body.as_bytes());
        assert_eq!(r.header("x-upstream"), Some("d"), "{model}: {}", dump(&r));
    }
    let r = chat_as(&mg, &[], "no-such");
    assert_eq!(r.status, 404);
    let models = get(mg.addr(), "/v1/models");
    assert_eq!(models.status, 200);
    assert!(!models.text().contains("ctl\\u0001x"));
    assert_alive(&mg);
}

/// One backend serving two models (the usual discovery or multi-LoRA setup): a token scoped
/// to `cheap` names `cheap` in the path and `expensive` in the body; the backend would serve
/// `expensive`, so the body's model must be in scope too.
#[test]
fn a_scoped_token_cannot_reach_another_model_of_a_shared_backend_via_route() {
    let backend = named_upstream("shared");
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {
            "cheap": {"url": backend.url(), "aliases": ["cheap-alias"]},
            "expensive": {"url": backend.url()},
            "also": {"url": backend.url()},
        },
        "authTokens": [{"token": "tok-cheap", "models": ["cheap", "also"]}, "full"],
    });
    let mg = Modelgate::start(&cfg.to_string());
    let scoped = "Authorization: Bearer tok-cheap";
    let path = "/route/cheap/v1/chat/completions";
    assert_eq!(chat_as(&mg, &[scoped], "expensive").status, 403);
    for body in [
        &br#"{"model":"expensive"}"#[..],
        br#"{"model":"unknown-to-modelgate"}"#,
    ] {
        let r = post(&mg, path, &[scoped], body);
        assert_eq!(r.status, 403, "{}", dump(&r));
        assert_eq!(r.error_code().as_deref(), Some("model_not_allowed"));
    }
    for body in [
        &br#"{"model":"cheap","model":"expensive"}"#[..],
        br#"{"model":["expensive"]}"#,
        br#"{"model":"expensive","x":NaN}"#,
    ] {
        let r = post(&mg, path, &[scoped], body);
        assert_eq!(r.status, 400, "{}", dump(&r));
    }
    let form = b"--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nexpensive\r\n--XyZ--";
    let rs = exchange(
        mg.addr(),
        &closing(
            "POST",
            "/route/cheap/v1/audio/transcriptions",
            &[scoped, "Content-Type: multipart/form-data; boundary=XyZ"],
            form,
        ),
    );
    assert_eq!(rs[0].status, 403, "{}", dump(&rs[0]));
    assert_eq!(backend.request_count(), 0);

    // In scope: the path's names, another allowed model, no model at all, an empty body.
    for body in [
        &br#"{"model":"cheap"}"#[..],
        br#"{"model":"cheap-alias"}"#,
        br#"{"model":"also"}"#,
        br#"{"input":"x"}"#,
    ] {
        let r = post(&mg, path, &[scoped], body);
        assert_eq!(r.status, 200, "{}", dump(&r));
    }
    let r = post(&mg, path, &[scoped], b"");
    assert_eq!(r.status, 200, "{}", dump(&r));
    // An unscoped token's /route/ body is still streamed, not read.
    let r = post(&mg, path, &["Authorization: Bearer full"], b"\x00binary");
    assert_eq!(r.status, 200, "{}", dump(&r));
    assert_eq!(backend.request_count(), 6);
    assert_alive(&mg);
}

/// 20 MB of `0,` parsed into a `serde_json::Value` took 1.1 GB peak before the rewrite
/// counted values: a few such requests would get the process killed for memory.
#[test]
fn a_profiled_body_of_tiny_values_is_refused_before_it_is_parsed() {
    let (up, mg) = profiled();
    let mut body = br#"{"model":"coder","x":["#.to_vec();
    for _ in 0..(20 << 20) / 2 {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]}");
    let r = post(&mg, "/v1/chat/completions", &[], &body);
    assert_eq!(r.status, 400, "{}", dump(&r));
    assert!(r.text().contains("values"), "{}", r.text());
    let status = std::fs::read_to_string(format!("/proc/{}/status", mg.pid())).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak_kib < 300 * 1024, "peak RSS {peak_kib} KiB");
    assert_eq!(up.request_count(), 0);
    assert_alive(&mg);
}

/// 200,000 ids fit in the 4 MB answer cap: deduplicating them was quadratic (startup waited
/// minutes for the first round) and routing them all took 1.6 GB. The first 4096 are kept.
#[test]
fn a_backend_listing_200k_models_is_capped_and_fast() {
    let body = models_json((0..200_000).map(|i| format!("m{i}")));
    let (_b, mg) = discover_against(move |c| {
        while let Some(r) = c.read_request() {
            if r.path() == "/v1/models" {
                let _ = c.respond(200, &["Content-Type: application/json"], body.as_bytes());
            } else {
                let _ = c.respond(200, &["X-Upstream: d"], b"d");
            }
        }
    });
    assert_eq!(get(mg.addr(), "/health").json()["models"], 4096);
    let r = chat_as(&mg, &[], "m4095");
    assert_eq!(r.header("x-upstream"), Some("d"), "{}", dump(&r));
    assert_eq!(chat_as(&mg, &[], "m4096").status, 404);
    assert!(mg.rss_kib() < 300 * 1024, "rss {} KiB", mg.rss_kib());
    assert_alive(&mg);
}

/// A handshake waiting in the queue behind a live tunnel, abandoned by its client: the queue
/// place and every descriptor are given back, and the next handshake gets the replica.
#[test]
fn an_abandoned_queued_handshake_frees_its_place() {
    let up = switching_upstream();
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {"a": {"url": up.url(), "maxConcurrentRequests": 1,
                         "queue": {"size": 2, "timeout": 30}}},
    });
    let mg = Modelgate::start(&cfg.to_string());
    let open = || {
        let mut s = TcpStream::connect(mg.addr()).expect("connect");
        s.set_read_timeout(Some(T)).expect("timeout");
        s.write_all(&handshake("/v1/realtime?model=a", &[]))
            .expect("send");
        s
    };
    let mut first = open();
    assert_eq!(read_head(&mut first).expect("head").0, 101);
    let baseline = mg.fd_count();
    for _ in 0..10 {
        let queued = open();
        thread::sleep(Duration::from_millis(20));
        drop(queued);
    }
    assert!(
        wait_until(T, || mg.fd_count() <= baseline),
        "fds {} > {baseline}",
        mg.fd_count()
    );
    let mut waiting = open();
    drop(first);
    assert_eq!(read_head(&mut waiting).expect("head").0, 101);
    assert_eq!(
        up.connections(),
        2,
        "abandoned handshakes never reached the upstream"
    );
    drop(waiting);
    assert!(wait_until(T, || up.open_connections() == 0));
    assert_alive(&mg);
}

/// The same bypass through the query: a realtime backend follows `?model=`, so every `model`
/// in the query of a scoped token's `/route/` or WebSocket request must be in scope.
#[test]
fn a_scoped_token_cannot_name_another_model_in_the_query() {
    let up = switching_upstream();
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {"cheap": {"url": up.url()}, "expensive": {"url": up.url()}},
        "authTokens": [{"token": "tok-cheap", "models": ["cheap"]}, "full"],
    });
    let mg = Modelgate::start(&cfg.to_string());
    let status = |target: &str, token: &str| {
        let auth = format!("Authorization: Bearer {token}");
        let mut s = TcpStream::connect(mg.addr()).expect("connect");
        s.set_read_timeout(Some(T)).expect("timeout");
        s.write_all(&handshake(target, &[&auth])).expect("send");
        read_head(&mut s).expect("head").0
    };
    for target in [
        "/route/cheap/v1/realtime?model=expensive",
        "/v1/realtime?model=cheap&model=expensive",
        "/v1/realtime?model=cheap&mod%65l=expensive",
        "/route/cheap/v1/realtime?x=1&model=%65xpensive",
    ] {
        assert_eq!(status(target, "tok-cheap"), 403, "{target}");
    }
    assert_eq!(
        status("/route/cheap/v1/realtime?mod%ffl=x", "tok-cheap"),
        400
    );
    assert_eq!(up.connections(), 0);
    assert_eq!(
        status("/route/cheap/v1/realtime?model=cheap", "tok-cheap"),
        101
    );
    assert_eq!(status("/v1/realtime?model=cheap", "tok-cheap"), 101);
    assert_eq!(
        status("/route/cheap/v1/realtime?model=expensive", "full"),
        101
    );
    assert_alive(&mg);
}

/// A chunked body with trailers to a profiled model, `Expect: 100-continue`, then a request
/// pipelined behind it: the rewrite re-frames the first, the second is routed on its own.
#[test]
fn a_rewritten_chunked_body_then_a_pipelined_request() {
    let up = named_upstream("p");
    let b = named_upstream("b");
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {
            "coder": {"url": up.url(), "model": "real", "defaults": {"temperature": 0.2}},
            "b": {"url": b.url()},
        },
    });
    let mg = Modelgate::start(&cfg.to_string());
    let mut req =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
        Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\n{\"mod\r\n3;ext=1\r\nel\"\r\n9\r\n:\"coder\"}\r\n0\r\nX-Trailer: 1\r\n\r\n"
            .to_vec();
    req.extend(closing(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        br#"{"model":"b"}"#,
    ));
    let rs = exchange(mg.addr(), &req);
    let finals: Vec<&Response> = rs.iter().filter(|r| r.status >= 200).collect();
    assert_eq!(finals.len(), 2, "{rs:?}");
    assert_eq!(
        finals[0].header("x-upstream"),
        Some("p"),
        "{}",
        dump(finals[0])
    );
    assert_eq!(
        finals[1].header("x-upstream"),
        Some("b"),
        "{}",
        dump(finals[1])
    );
    let got = up.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].json(),
        json!({"model": "real", "temperature": 0.2}),
        "{}",
        got[0].body_str()
    );
    assert!(!got[0].chunked);
    assert_alive(&mg);
}

/// Requests pipelined on one connection each count against the bucket.
#[test]
fn pipelined_requests_each_count_against_the_rate_limit() {
    let a = named_upstream("a");
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {"a": {"url": a.url()}},
        "authTokens": [{"token": "lim", "requestsPerMinute": 1, "burst": 3}],
    });
    let mg = Modelgate::start(&cfg.to_string());
    let one = request_bytes(
        "POST",
        "/v1/chat/completions",
        &[
            "Authorization: Bearer lim",
            "Content-Type: application/json",
        ],
        br#"{"model":"a"}"#,
    );
    let mut req = Vec::new();
    for _ in 0..9 {
        req.extend_from_slice(&one);
    }
    req.extend(closing(
        "POST",
        "/v1/chat/completions",
        &[
            "Authorization: Bearer lim",
            "Content-Type: application/json",
        ],
        br#"{"model":"a"}"#,
    ));
    let rs = exchange(mg.addr(), &req);
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(a.request_count(), 3);
    assert_alive(&mg);
}
