//! Where replicas, the wait queue, reload and drain meet (audit of issues 9-11): every way a
//! waiting or proxied request can end must give back its replica slot, its queue place and
//! its sockets. Real sockets, scripted upstreams, leaks seen through `/proc` and `/metrics`.

mod common;
use common::*;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

/// A replica that answers each request once `open` is set.
fn gated_replica(open: Arc<AtomicBool>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            while !open.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            if c.respond(200, &[], b"{}").is_err() {
                return;
            }
        }
    })
}

/// Model `m` on `urls`, one worker, `max` requests per replica, a long wait queue.
fn limited_config(urls: &[String], max: u32, extra: serde_json::Value) -> String {
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {"m": {"urls": urls, "maxConcurrentRequests": max,
                         "queue": {"size": 1, "timeout": 60}}},
    });
    with_members(cfg, &extra).to_string()
}

fn send_async(addr: SocketAddr, tx: &mpsc::Sender<Response>) {
    let tx = tx.clone();
    thread::spawn(move || {
        let _ = tx.send(post_json(
            addr,
            "/v1/chat/completions",
            &chat_body("m", false),
        ));
    });
}

/// `modelgate_replica_outstanding_requests` summed over the replicas of `m`.
fn outstanding(gw: &Modelgate, ups: &[&ScriptedUpstream]) -> f64 {
    ups.iter()
        .map(|u| {
            let sample = format!(
                "modelgate_replica_outstanding_requests{{model=\"m\",replica=\"{}\"}}",
                u.url()
            );
            gw.metric(&sample)
        })
        .sum()
}

/// A client connection with one chat request written and nothing read.
fn pending_request(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    let body = chat_body("m", false);
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body.as_bytes(),
    ));
    c
}

#[test]
fn a_waiter_whose_client_leaves_gives_up_its_place_and_its_socket() {
    let open = Arc::new(AtomicBool::new(false));
    let up = gated_replica(open.clone());
    let gw = Modelgate::start(&limited_config(&[up.url()], 1, serde_json::json!({})));
    let (tx, rx) = mpsc::channel();
    send_async(gw.addr(), &tx);
    assert!(wait_until(LONG, || up.request_count() == 1));
    assert!(wait_until(LONG, || gw.fd_count() > 0));
    let baseline = gw.fd_count();
    // The second request takes the only queue place, then its client goes away.
    let mut leaver = pending_request(gw.addr());
    assert!(wait_until(LONG, || gw.fd_count() == baseline + 1));
    thread::sleep(Duration::from_millis(200));
    leaver.close();
    assert!(
        wait_until(LONG, || gw.fd_count() == baseline),
        "the departed waiter's socket is still open ({} fds, baseline {baseline})",
        gw.fd_count()
    );
    // Its place is free: the next request waits rather than being refused.
    send_async(gw.addr(), &tx);
    thread::sleep(Duration::from_millis(300));
    open.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let r = rx.recv_timeout(LONG).expect("an answer");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        up.request_count(),
        2,
        "nothing sent for the departed client"
    );
}

#[test]
fn a_reload_that_changes_the_limit_still_serves_the_waiters_of_the_old_table() {
    let open = Arc::new(AtomicBool::new(false));
    let up = gated_replica(open.clone());
    let gw = Modelgate::start(&limited_config(&[up.url()], 1, serde_json::json!({})));
    let (tx, rx) = mpsc::channel();
    send_async(gw.addr(), &tx);
    assert!(wait_until(LONG, || up.request_count() == 1));
    send_async(gw.addr(), &tx);
    thread::sleep(Duration::from_millis(300));
    // A new limit: the model's balancer starts afresh, its waiter stays on the old one.
    let from = gw.stderr_lines().len();
    gw.rewrite_config(&limited_config(&[up.url()], 3, serde_json::json!({})));
    gw.signal(libc::SIGHUP);
    assert!(gw
        .wait_stderr_from(from, Duration::from_secs(10), |l| l.contains("reloaded"))
        .is_some());
    open.store(true, Ordering::SeqCst);
    // The queue timeout is 60 s: an answer well before it means the freed slot was handed on.
    for _ in 0..2 {
        let r = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the waiter was stranded in the old table's queue");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.request_count(), 2);
}

#[test]
fn sigterm_with_a_waiter_answers_or_closes_it_and_exits_within_the_drain_time() {
    let open = Arc::new(AtomicBool::new(false));
    let up = gated_replica(open.clone());
    let mut gw = Modelgate::start(&limited_config(
        &[up.url()],
        1,
        serde_json::json!({"timeouts": {"shutdown": 2}}),
    ));
    let (tx, _rx) = mpsc::channel();
    send_async(gw.addr(), &tx);
    assert!(wait_until(LONG, || up.request_count() == 1));
    let mut waiter = pending_request(gw.addr());
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("no exit after SIGTERM with a waiter queued");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exit took {:?} with a 2 s drain",
        signalled.elapsed()
    );
    assert!(status.success(), "exit status {status}");
    // The waiter is not left hanging: an answer or EOF.
    waiter.set_read_timeout(Duration::from_secs(5));
    let mut rest = Vec::new();
    let _ = waiter.stream().read_to_end(&mut rest);
    open.store(true, Ordering::SeqCst);
}

/// An SSE upstream: a head and one event, then it waits for `release` and ends the stream.
fn stalled_stream(release: Arc<AtomicBool>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            let event = b"data: {\"x\":1}\n\n";
            let chunk = format!("{:x}\r\n", event.len());
            if c.write_all(head.as_bytes()).is_err()
                || c.write_all(chunk.as_bytes()).is_err()
                || c.write_all(event).is_err()
                || c.write_all(b"\r\n").is_err()
            {
                return;
            }
            while !release.load(Ordering::SeqCst) {
                if c.peer_closed() {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            if c.write_all(b"0\r\n\r\n").is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_client_leaving_a_stream_gives_back_the_slot_the_gauge_and_its_sockets() {
    let release = Arc::new(AtomicBool::new(false));
    let a = stalled_stream(release.clone());
    let b = stalled_stream(release.clone());
    let gw = Modelgate::start(&limited_config(
        &[a.url(), b.url()],
        1,
        serde_json::json!({}),
    ));
    assert_eq!(outstanding(&gw, &[&a, &b]), 0.0);
    assert!(wait_until(LONG, || gw.fd_count() > 0));
    let baseline = gw.fd_count();
    for _ in 0..3 {
        let mut c = pending_request(gw.addr());
        let head = c.try_read_head().expect("stream head");
        assert_eq!(head.status, 200);
        assert_eq!(outstanding(&gw, &[&a, &b]), 1.0);
        c.close();
        assert!(
            wait_until(LONG, || outstanding(&gw, &[&a, &b]) == 0.0),
            "outstanding stays up after the client left"
        );
    }
    assert!(
        wait_until(LONG, || gw.fd_count() <= baseline),
        "fds {} vs baseline {baseline}",
        gw.fd_count()
    );
    // The slot is free again: a whole stream goes through at once.
    release.store(true, Ordering::SeqCst);
    let r = post_json(gw.addr(), "/v1/chat/completions", &chat_body("m", true));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn an_upstream_reset_before_the_head_gives_back_the_slot() {
    let resetting = || {
        ScriptedUpstream::start(|c| {
            if c.read_request().is_some() {
                c.reset();
            }
        })
    };
    let (a, b) = (resetting(), resetting());
    let gw = Modelgate::start(&limited_config(
        &[a.url(), b.url()],
        1,
        serde_json::json!({}),
    ));
    for _ in 0..3 {
        let r = post_json(gw.addr(), "/v1/chat/completions", &chat_body("m", false));
        assert_eq!(r.status, 502, "{}", r.text());
    }
    assert!(wait_until(LONG, || outstanding(&gw, &[&a, &b]) == 0.0));
}

/// A replica whose `/health` answers 200 while `healthy` is set, else 503; work gets `{}`.
fn checked_replica(healthy: Arc<AtomicBool>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while let Some(req) = c.read_request() {
            let status = if req.path() != "/health" || healthy.load(Ordering::SeqCst) {
                200
            } else {
                503
            };
            if c.respond(status, &[], b"{}").is_err() {
                return;
            }
        }
    })
}

fn work_requests(r: &ScriptedUpstream) -> usize {
    r.requests()
        .iter()
        .filter(|q| q.path() != "/health")
        .count()
}

fn checked_config(urls: &[String], health: Option<serde_json::Value>) -> String {
    let mut model = serde_json::json!({ "urls": urls });
    if let (Some(m), Some(h)) = (model.as_object_mut(), health) {
        m.insert("healthCheck".into(), h);
    }
    serde_json::json!({"listen": "127.0.0.1:0", "workers": 2, "models": {"m": model}}).to_string()
}

#[test]
fn a_reload_that_drops_the_health_check_brings_a_down_replica_back() {
    let a = checked_replica(Arc::new(AtomicBool::new(false)));
    let b = checked_replica(Arc::new(AtomicBool::new(true)));
    let urls = [a.url(), b.url()];
    let check = serde_json::json!({"path": "/health", "interval": 0.1, "timeout": 2});
    let gw = Modelgate::start(&checked_config(&urls, Some(check)));
    let up_gauge = format!(
        "modelgate_replica_up{{model=\"m\",replica=\"{}\"}}",
        a.url()
    );
    assert!(wait_until(LONG, || gw.metric(&up_gauge) == 0.0));
    // Both workers have heard the verdict once /health says so.
    assert!(wait_until(LONG, || {
        get(gw.addr(), "/health").json()["replicas"]["m"]["healthy"] == 1
    }));
    let from = gw.stderr_lines().len();
    gw.rewrite_config(&checked_config(&urls, None));
    gw.signal(libc::SIGHUP);
    assert!(gw
        .wait_stderr_from(from, Duration::from_secs(10), |l| l.contains("reloaded"))
        .is_some());
    // Nothing checks `a` any more: the verdict must not outlive the check.
    assert!(
        wait_until(Duration::from_secs(5), || gw.metric(&up_gauge) == 1.0),
        "modelgate_replica_up stays 0 after healthCheck was removed"
    );
    let before = work_requests(&a);
    assert!(
        wait_until(LONG, || {
            let r = post_json(gw.addr(), "/v1/chat/completions", &chat_body("m", false));
            assert_eq!(r.status, 200);
            work_requests(&a) > before
        }),
        "the replica once marked down never gets traffic again"
    );
}

#[test]
fn a_replica_hanging_its_health_probe_neither_blocks_requests_nor_shutdown() {
    // `a` accepts and never answers (its probe times out); `b` is healthy.
    let a = ScriptedUpstream::start(|c| {
        let _ = c.read_request();
        thread::sleep(Duration::from_secs(30));
    });
    let b = checked_replica(Arc::new(AtomicBool::new(true)));
    let check = serde_json::json!({"path": "/health", "interval": 0.2, "timeout": 1});
    let mut cfg: serde_json::Value =
        serde_json::from_str(&checked_config(&[a.url(), b.url()], Some(check))).expect("json");
    cfg["timeouts"] = serde_json::json!({"shutdown": 3});
    let mut gw = Modelgate::start(&cfg.to_string());
    let up_gauge = format!(
        "modelgate_replica_up{{model=\"m\",replica=\"{}\"}}",
        a.url()
    );
    assert!(wait_until(LONG, || gw.metric(&up_gauge) == 0.0));
    // Workers keep serving while the health thread waits on `a`.
    for _ in 0..10 {
        let r = post_json(gw.addr(), "/v1/chat/completions", &chat_body("m", false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("no exit while a health probe hangs");
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
}

fn ws_gate(ws: &common::websocket::WsUpstream) -> Modelgate {
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {"rt": {"url": ws.url()}},
    });
    Modelgate::start(&cfg.to_string())
}

/// An open tunnel to the echo upstream, its greeting read.
fn open_tunnel(addr: SocketAddr) -> std::net::TcpStream {
    use common::websocket::{handshake, read_frame, read_head};
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    s.write_all(&handshake("/v1/realtime?model=rt", &[]))
        .expect("handshake");
    let (status, headers) = read_head(&mut s).expect("101 head");
    assert_eq!(status, 101, "{headers:?}");
    assert_eq!(
        read_frame(&mut s).expect("greeting").text(),
        "hello from upstream"
    );
    s
}

fn in_flight(gw: &Modelgate) -> f64 {
    gw.metric("modelgate_in_flight_requests ")
}

#[test]
fn a_thousand_sequential_tunnels_leave_no_fds_slots_or_memory_behind() {
    use common::websocket::{read_frame, write_frame, OP_TEXT};
    let ws = common::websocket::WsUpstream::start();
    let gw = ws_gate(&ws);
    let tunnel = |i: usize| {
        let mut s = open_tunnel(gw.addr());
        write_frame(&mut s, OP_TEXT, format!("n{i}").as_bytes(), true).expect("send");
        assert_eq!(read_frame(&mut s).expect("echo").text(), format!("n{i}"));
        // Half of them end from each side: the client's FIN, or an abrupt close.
        if i % 2 == 0 {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    };
    for i in 0..100 {
        tunnel(i);
    }
    assert!(
        wait_until(LONG, || in_flight(&gw) == 0.0),
        "in flight after 100 tunnels: {}, fds {}, upstream open {}",
        in_flight(&gw),
        gw.fd_count(),
        ws.up.open_connections()
    );
    let (fds, rss) = (gw.fd_count(), gw.rss_kib());
    for i in 100..1100 {
        tunnel(i);
    }
    assert!(
        wait_until(LONG, || in_flight(&gw) == 0.0),
        "tunnels still counted in flight: {}",
        in_flight(&gw)
    );
    assert!(
        wait_until(LONG, || gw.fd_count() <= fds),
        "fds {} after 1000 tunnels, {fds} before",
        gw.fd_count()
    );
    let grown = gw.rss_kib().saturating_sub(rss);
    assert!(
        grown < 16 * 1024,
        "RSS grew {grown} KiB over 1000 tunnels (from {rss} KiB)"
    );
}

#[test]
fn a_tunnel_outlives_the_reload_that_removes_its_model() {
    use common::websocket::{read_frame, write_frame, OP_TEXT};
    let ws = common::websocket::WsUpstream::start();
    let other = MockUpstream::openai("other");
    let gw = ws_gate(&ws);
    let mut s = open_tunnel(gw.addr());
    let from = gw.stderr_lines().len();
    gw.rewrite_config(&config_json(&[("other", &other.url())]));
    gw.signal(libc::SIGHUP);
    assert!(gw
        .wait_stderr_from(from, Duration::from_secs(10), |l| l.contains("reloaded"))
        .is_some());
    assert!(wait_until(LONG, || post_json(
        gw.addr(),
        "/v1/chat/completions",
        &chat_body("other", false)
    )
    .status
        == 200));
    // The open tunnel still carries bytes; a new handshake for the removed model is 404.
    write_frame(&mut s, OP_TEXT, b"still here", true).expect("send");
    assert_eq!(read_frame(&mut s).expect("echo").text(), "still here");
    let mut c = Client::connect(gw.addr());
    c.send(&common::websocket::handshake("/v1/realtime?model=rt", &[]));
    assert_eq!(c.read_response().status, 404);
    assert_eq!(in_flight(&gw), 1.0, "the tunnel counts while it lives");
    drop(s);
    assert!(wait_until(LONG, || in_flight(&gw) == 0.0));
}

/// An upstream that reads whole requests, keeps nothing but the count of bodies that carry
/// `needle`, and answers `{"ok":true}` (keep-alive).
fn discarding_upstream(needle: &'static [u8]) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let counter = counter.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = &buf[head_end..head_end + len];
                    if memchr::memmem::find(body, needle).is_some() {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    buf.drain(..head_end + len);
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                   Content-Length: 11\r\n\r\n{\"ok\":true}";
                    if s.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn a_thousand_profiled_rewrites_of_a_megabyte_body_keep_memory_and_fds_bounded() {
    let (up, rewritten) = discarding_upstream(b"\"temperature\":0.25");
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {"coder": {"url": format!("http://{up}"), "model": "base",
                             "defaults": {"temperature": 0.25}}},
    });
    let gw = Modelgate::start(&cfg.to_string());
    let filler = "x".repeat(1024 * 1024);
    let body =
        format!(r#"{{"model":"coder","messages":[{{"role":"user","content":"{filler}"}}]}}"#);
    let request = request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body.as_bytes(),
    );
    let mut c = Client::connect(gw.addr());
    let mut send = |n: usize| {
        for _ in 0..n {
            c.send(&request);
            let r = c.read_response();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    send(100);
    let (fds, rss) = (gw.fd_count(), gw.rss_kib());
    send(1000);
    assert_eq!(
        rewritten.load(Ordering::SeqCst),
        1100,
        "every body was rewritten"
    );
    drop(c);
    assert!(
        wait_until(LONG, || gw.fd_count() <= fds),
        "fds {} after 1000 rewrites, {fds} before",
        gw.fd_count()
    );
    let grown = gw.rss_kib().saturating_sub(rss);
    assert!(
        grown < 64 * 1024,
        "RSS grew {grown} KiB over 1000 rewrites of 1 MiB (from {rss} KiB)"
    );
}

/// A replica that reads requests and never answers them.
fn silent_replica() -> ScriptedUpstream {
    ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            if c.wait_peer_closed(Duration::from_secs(30)) {
                return;
            }
        }
    })
}

#[test]
fn a_first_byte_timeout_gives_back_the_slots_of_every_replica_tried() {
    let (a, b) = (silent_replica(), silent_replica());
    let gw = Modelgate::start(&limited_config(
        &[a.url(), b.url()],
        1,
        serde_json::json!({"timeouts": {"firstByte": 0.3}}),
    ));
    for _ in 0..3 {
        let r = post_json(gw.addr(), "/v1/chat/completions", &chat_body("m", false));
        assert_eq!(r.status, 504, "{}", r.text());
    }
    assert!(
        wait_until(LONG, || outstanding(&gw, &[&a, &b]) == 0.0),
        "outstanding {} after first-byte timeouts",
        outstanding(&gw, &[&a, &b])
    );
    assert!(wait_until(LONG, || in_flight(&gw) == 0.0));
}

#[test]
fn a_streamed_body_over_the_cap_after_routing_gives_back_its_slot() {
    let (a, b) = (silent_replica(), silent_replica());
    let gw = Modelgate::start(&limited_config(
        &[a.url(), b.url()],
        1,
        serde_json::json!({"maxBodyBytes": 1000}),
    ));
    for _ in 0..3 {
        let mut c = Client::connect(gw.addr());
        c.send(
            b"POST /route/m/v1/chat/completions HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let piece = vec![b'a'; 600];
        for _ in 0..4 {
            let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(&piece);
            chunk.extend_from_slice(b"\r\n");
            if c.try_send(&chunk).is_err() {
                break;
            }
        }
        assert!(c.is_closed_within(LONG), "the over-cap request is cut");
    }
    assert!(
        wait_until(LONG, || outstanding(&gw, &[&a, &b]) == 0.0),
        "outstanding {} after over-cap bodies",
        outstanding(&gw, &[&a, &b])
    );
    assert!(wait_until(LONG, || in_flight(&gw) == 0.0));
}

fn chat_as(gw: &Modelgate, token: &str, model: &str) -> Response {
    let auth = format!("Authorization: Bearer {token}");
    request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[&auth, "Content-Type: application/json"],
        chat_body(model, false).as_bytes(),
    )
}

#[test]
fn rate_limit_buckets_follow_the_token_across_reordering_and_removal() {
    let up = MockUpstream::openai("m");
    let config = |tokens: serde_json::Value, models: &[&str]| {
        let mut m = serde_json::Map::new();
        for name in models {
            m.insert(name.to_string(), serde_json::json!({"url": up.url()}));
        }
        serde_json::json!({"listen": "127.0.0.1:0", "models": m, "authTokens": tokens}).to_string()
    };
    let limited = serde_json::json!({"token": "limited", "requestsPerMinute": 1, "burst": 1});
    let other = serde_json::json!({"token": "other", "requestsPerMinute": 1, "burst": 1});
    let gw = Modelgate::start(&config(
        serde_json::json!([limited.clone(), other.clone(), "probe"]),
        &["m"],
    ));
    assert_eq!(chat_as(&gw, "limited", "m").status, 200);
    assert_eq!(chat_as(&gw, "limited", "m").status, 429);
    let reload = |tokens: serde_json::Value, model: &str| {
        gw.rewrite_config(&config(tokens, &["m", model]));
        gw.signal(libc::SIGHUP);
        assert!(
            wait_until(LONG, || chat_as(&gw, "probe", model).status == 200),
            "the reload adding {model} did not take"
        );
    };
    // Reordered: each token keeps its own bucket (the drained one stays drained, the
    // untouched one stays full).
    reload(
        serde_json::json!(["probe", other.clone(), limited.clone()]),
        "m2",
    );
    assert_eq!(chat_as(&gw, "limited", "m").status, 429);
    assert_eq!(chat_as(&gw, "other", "m").status, 200);
    // Removed: the token no longer authenticates.
    reload(serde_json::json!(["probe", other]), "m3");
    assert_eq!(chat_as(&gw, "limited", "m").status, 401);
    assert_eq!(chat_as(&gw, "other", "m").status, 429);
}

/// A discoverable backend listing `model`; a chat request gets an SSE head and one event,
/// then the rest once `release` is set.
fn discoverable_stream(model: &'static str, release: Arc<AtomicBool>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while let Some(req) = c.read_request() {
            if req.path() == "/v1/models" {
                let list = format!(r#"{{"object":"list","data":[{{"id":"{model}"}}]}}"#);
                if c.respond_json(200, &list).is_err() {
                    return;
                }
                continue;
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            let event = |n: u32| {
                let e = format!("data: {{\"n\":{n}}}\n\n");
                format!("{:x}\r\n{e}\r\n", e.len())
            };
            if c.write_all(head.as_bytes()).is_err() || c.write_all(event(1).as_bytes()).is_err() {
                return;
            }
            while !release.load(Ordering::SeqCst) {
                if c.peer_closed() {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            let tail = format!("{}0\r\n\r\n", event(2));
            if c.write_all(tail.as_bytes()).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_stream_continues_across_discovery_swaps_and_ends_cleanly() {
    let release = Arc::new(AtomicBool::new(false));
    let a = discoverable_stream("a", release.clone());
    let late_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let late_url = format!("http://127.0.0.1:{late_port}");
    let gw = Modelgate::start(&config_with(
        &[],
        serde_json::json!({"discover": [a.url(), late_url], "discoverInterval": 0.2}),
    ));
    assert!(wait_until(LONG, || get(gw.addr(), "/v1/models")
        .text()
        .contains("\"a\"")));
    let mut c = Client::connect(gw.addr());
    let body = chat_body("a", true);
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body.as_bytes(),
    ));
    let mut head = c.try_read_head().expect("stream head");
    assert_eq!(head.status, 200);
    let first = c.try_next_chunk(&mut head).expect("first event");
    assert!(first.is_some());
    // A backend appears (one swap), then goes away (another).
    let late = ScriptedUpstream::start_on(&format!("127.0.0.1:{late_port}"), |conn| {
        while conn.read_request().is_some() {
            let list = r#"{"object":"list","data":[{"id":"late"}]}"#;
            if conn.respond_json(200, list).is_err() {
                return;
            }
        }
    });
    assert!(wait_until(LONG, || get(gw.addr(), "/v1/models")
        .text()
        .contains("\"late\"")));
    drop(late);
    assert!(wait_until(LONG, || !get(gw.addr(), "/v1/models")
        .text()
        .contains("\"late\"")));
    release.store(true, Ordering::SeqCst);
    let mut events = Vec::new();
    while let Some(chunk) = c.try_next_chunk(&mut head).expect("the stream was cut") {
        events.extend(sse_data(&chunk));
    }
    assert_eq!(events, vec![r#"{"n":2}"#.to_string()]);
    assert!(wait_until(LONG, || in_flight(&gw) == 0.0));
}

#[test]
fn an_upstream_reset_mid_stream_gives_back_the_slot_and_cuts_the_client() {
    let reset_after_head = || {
        ScriptedUpstream::start(|c| {
            if c.read_request().is_some() {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                            Transfer-Encoding: chunked\r\n\r\nf\r\ndata: {\"n\":1}\n\n\r\n";
                let _ = c.write_all(head.as_bytes());
                thread::sleep(Duration::from_millis(100));
                c.reset();
            }
        })
    };
    let (a, b) = (reset_after_head(), reset_after_head());
    let gw = Modelgate::start(&limited_config(
        &[a.url(), b.url()],
        1,
        serde_json::json!({}),
    ));
    assert!(wait_until(LONG, || gw.fd_count() > 0));
    let fds = gw.fd_count();
    for _ in 0..3 {
        let mut c = pending_request(gw.addr());
        let head = c.try_read_head().expect("head");
        assert_eq!(head.status, 200);
        assert!(c.is_closed_within(LONG), "the cut stream is closed");
    }
    assert!(wait_until(LONG, || outstanding(&gw, &[&a, &b]) == 0.0));
    assert!(wait_until(LONG, || in_flight(&gw) == 0.0));
    assert!(wait_until(LONG, || gw.fd_count() <= fds));
}

#[test]
fn an_idle_tunnel_timed_out_gives_back_its_slot_and_sockets() {
    let ws = common::websocket::WsUpstream::start();
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "timeouts": {"idle": 0.5},
        "models": {"rt": {"url": ws.url()}},
    });
    let gw = Modelgate::start(&cfg.to_string());
    assert!(wait_until(LONG, || gw.fd_count() > 0));
    let fds = gw.fd_count();
    let mut s = open_tunnel(gw.addr());
    assert_eq!(in_flight(&gw), 1.0);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(wait_until(LONG, || in_flight(&gw) == 0.0));
    assert!(wait_until(LONG, || gw.fd_count() <= fds));
    assert!(wait_until(LONG, || ws.up.open_connections() == 0));
}

#[test]
fn a_refused_reload_does_not_refill_the_buckets_of_the_table_still_serving() {
    let up = MockUpstream::openai("m");
    let limited = serde_json::json!({"token": "limited", "requestsPerMinute": 1, "burst": 1});
    let good = |model: &str| {
        serde_json::json!({
            "listen": "127.0.0.1:0",
            "models": {"m": {"url": up.url()}, model: {"url": up.url()}},
            "authTokens": [limited.clone(), "probe"],
        })
        .to_string()
    };
    let gw = Modelgate::start(&good("m"));
    assert_eq!(chat_as(&gw, "limited", "m").status, 200);
    assert_eq!(chat_as(&gw, "limited", "m").status, 429);
    // Refused late (its listener certificate is not PEM), after its routes were built
    // without the limited token.
    let dir = TempDir::new();
    let cert = dir.write("cert.pem", "not a certificate");
    let key = dir.write("key.pem", "not a key");
    let refused = serde_json::json!({
        "listen": [{"address": "127.0.0.1:0", "tls": {"cert": cert, "key": key}}],
        "models": {"m": {"url": up.url()}},
        "authTokens": ["probe"],
    });
    let from = gw.stderr_lines().len();
    gw.rewrite_config(&refused.to_string());
    gw.signal(libc::SIGHUP);
    assert!(gw
        .wait_stderr_from(from, LONG, |l| l
            .contains("still serving the previous config"))
        .is_some());
    assert_eq!(chat_as(&gw, "limited", "m").status, 429);
    // The next good table (same token, same limit) must find the drained bucket.
    gw.rewrite_config(&good("m2"));
    gw.signal(libc::SIGHUP);
    assert!(wait_until(LONG, || chat_as(&gw, "probe", "m2").status == 200));
    assert_eq!(
        chat_as(&gw, "limited", "m").status,
        429,
        "the refused reload dropped the bucket: the token got a fresh burst"
    );
}
