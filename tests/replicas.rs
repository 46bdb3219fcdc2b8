//! Several backends per model (issue 9): balancing, failover before the first byte, passive
//! ejection and readmission, per-replica limits and the wait queue, active health, metrics.
//! Replicas are scripted upstreams on loopback; a dead replica is a closed port.

mod common;
use common::*;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// A replica answering every request on the connection after `delay`, naming itself.
fn replica(name: &'static str, delay: Duration) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            thread::sleep(delay);
            let body = format!(r#"{{"replica":"{name}"}}"#);
            if c.respond(200, &[&format!("X-Replica: {name}")], body.as_bytes())
                .is_err()
            {
                return;
            }
        }
    })
}

/// A free loopback port with nothing listening on it (connects are refused).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// A one-worker modelgate with model `m` over `urls` plus `extra` model keys.
fn gate(urls: &[String], extra: serde_json::Value) -> Modelgate {
    let model = with_members(serde_json::json!({ "urls": urls }), &extra);
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": { "m": model },
    });
    Modelgate::start(&cfg.to_string())
}

fn chat(gw: &Modelgate) -> Response {
    post_json(gw.addr(), "/v1/chat/completions", &chat_body("m", false))
}

fn replica_metric(gw: &Modelgate, family: &str, url: &str) -> f64 {
    gw.metric(&format!("{family}{{model=\"m\",replica=\"{url}\"}}"))
}

#[test]
fn a_slow_replica_receives_fewer_requests_under_concurrent_load() {
    let fast_a = replica("a", Duration::from_millis(5));
    let fast_b = replica("b", Duration::from_millis(5));
    let slow = replica("slow", Duration::from_millis(250));
    let gw = gate(
        &[fast_a.url(), fast_b.url(), slow.url()],
        serde_json::json!({}),
    );
    let addr = gw.addr();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..20 {
                    let r = post_json(addr, "/v1/chat/completions", &chat_body("m", false));
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let (a, b, s) = (
        fast_a.request_count(),
        fast_b.request_count(),
        slow.request_count(),
    );
    assert_eq!(a + b + s, 120);
    // Round-robin would give each 40; least-outstanding starves the slow one.
    assert!(s * 3 < a.min(b), "a={a} b={b} slow={s}");
    let total: f64 = [&fast_a, &fast_b, &slow]
        .iter()
        .map(|r| replica_metric(&gw, "modelgate_replica_requests_total", &r.url()))
        .sum();
    assert_eq!(total, 120.0);
}

#[test]
fn weights_are_respected() {
    let light = replica("light", Duration::ZERO);
    let heavy = replica("heavy", Duration::ZERO);
    let urls = [light.url(), heavy.url()];
    let weighted = serde_json::json!([{"url": urls[0]}, {"url": urls[1], "weight": 3}]);
    // Round-robin: exactly by weight.
    let gw = gate(
        &[],
        serde_json::json!({"urls": weighted, "balance": "round-robin"}),
    );
    for _ in 0..40 {
        assert_eq!(chat(&gw).status, 200);
    }
    assert_eq!((light.request_count(), heavy.request_count()), (10, 30));
    drop(gw);
    // Least-outstanding with idle replicas: the weighted draw decides.
    let gw = gate(&[], serde_json::json!({ "urls": weighted }));
    for _ in 0..200 {
        assert_eq!(chat(&gw).status, 200);
    }
    let (l, h) = (light.request_count() - 10, heavy.request_count() - 30);
    assert_eq!(l + h, 200);
    assert!((120..=185).contains(&h), "light={l} heavy={h}");
}

#[test]
fn a_dead_replica_costs_no_client_error_is_ejected_then_readmitted() {
    let alive = replica("alive", Duration::ZERO);
    let dead = closed_port();
    let dead_url = format!("http://{dead}");
    let gw = gate(
        &[alive.url(), dead_url.clone()],
        serde_json::json!({"ejectTime": 0.3, "ejectTimeMax": 0.3}),
    );
    for _ in 0..30 {
        let r = chat(&gw);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-replica"), Some("alive"));
    }
    assert_eq!(alive.request_count(), 30);
    assert!(replica_metric(&gw, "modelgate_replica_ejections_total", &dead_url) >= 1.0);
    assert!(replica_metric(&gw, "modelgate_replica_failovers_total", &dead_url) >= 1.0);
    let failed_over = wait_until(LONG, || {
        gw.json_lines()
            .into_iter()
            .any(|l| l["retries"] == 1 && l["upstream"] == alive.url().as_str())
    });
    assert!(failed_over, "an access log line with retries=1");
    // The replica comes back on the same port: a trial request readmits it.
    let back = ScriptedUpstream::start_on(&dead.to_string(), |c| {
        while c.read_request().is_some() {
            if c.respond(200, &["X-Replica: back"], b"{}").is_err() {
                return;
            }
        }
    });
    let readmitted = wait_until(LONG, || {
        let r = chat(&gw);
        assert_eq!(r.status, 200);
        back.request_count() >= 3
    });
    assert!(readmitted, "the replica that came back gets traffic again");
    assert!(replica_metric(&gw, "modelgate_replica_readmissions_total", &dead_url) >= 1.0);
}

#[test]
fn a_reset_before_the_head_fails_over_once() {
    let resets = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            c.reset();
        }
    });
    let good = replica("good", Duration::ZERO);
    // Round-robin with equal weights starts with the first replica.
    let gw = gate(
        &[resets.url(), good.url()],
        serde_json::json!({"balance": "round-robin"}),
    );
    let r = chat(&gw);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-replica"), Some("good"));
    assert_eq!(resets.request_count(), 1);
    assert_eq!(good.request_count(), 1);
    // The exact body reached the second replica.
    assert_eq!(good.requests()[0].json()["model"], "m");
}

#[test]
fn a_reset_after_the_head_truncates_and_is_never_sent_twice() {
    let cut = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n12\r\ndata: {\"n\":1}\n\n\r\n",
            );
            thread::sleep(Duration::from_millis(50));
            c.reset();
        }
    });
    let other = replica("other", Duration::ZERO);
    let gw = gate(
        &[cut.url(), other.url()],
        serde_json::json!({"balance": "round-robin"}),
    );
    let mut client = Client::connect(gw.addr());
    client.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        chat_body("m", true).as_bytes(),
    ));
    let head = client.try_read_head().expect("the head is forwarded");
    assert_eq!(head.status, 200);
    let (rest, _) = client.read_to_eof_with_timeout(LONG);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("data: {\"n\":1}"), "{text}");
    assert!(
        !text.contains("0\r\n\r\n"),
        "the framing is never completed: {text}"
    );
    thread::sleep(Duration::from_millis(200));
    assert_eq!(other.request_count(), 0, "no duplicate generation");
}

#[test]
fn an_ejecting_status_is_passed_through_and_ejects() {
    let overloaded = ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            if c.respond(503, &["Retry-After: 7", "X-Replica: busy"], b"{}")
                .is_err()
            {
                return;
            }
        }
    });
    let good = replica("good", Duration::ZERO);
    let gw = gate(
        &[overloaded.url(), good.url()],
        serde_json::json!({"balance": "round-robin", "ejectTime": 60}),
    );
    let first = chat(&gw);
    assert_eq!(first.status, 503);
    assert_eq!(first.header("retry-after"), Some("7"));
    assert_eq!(good.request_count(), 0, "a status is not retried");
    for _ in 0..10 {
        assert_eq!(chat(&gw).header("x-replica"), Some("good"));
    }
    assert_eq!(overloaded.request_count(), 1);
    let url = overloaded.url();
    assert_eq!(
        replica_metric(&gw, "modelgate_replica_ejections_total", &url),
        1.0
    );
    assert_eq!(
        replica_metric(&gw, "modelgate_replica_failures_total", &url),
        1.0
    );
}

#[test]
fn a_429_is_passed_through_without_ejecting() {
    let limited = ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            if c.respond(429, &["Retry-After: 3"], b"{}").is_err() {
                return;
            }
        }
    });
    let good = replica("good", Duration::ZERO);
    let gw = gate(
        &[limited.url(), good.url()],
        serde_json::json!({"balance": "round-robin"}),
    );
    let statuses: Vec<u16> = (0..4).map(|_| chat(&gw).status).collect();
    assert_eq!(statuses, vec![429, 200, 429, 200]);
    assert_eq!(
        replica_metric(&gw, "modelgate_replica_ejections_total", &limited.url()),
        0.0
    );
}

#[test]
fn a_plain_url_model_has_no_replica_series() {
    let up = replica("only", Duration::ZERO);
    let gw = Modelgate::start(&config_json(&[("m", &up.url())]));
    assert_eq!(chat(&gw).status, 200);
    let text = get(gw.addr(), "/metrics").text().to_string();
    assert!(!text.contains("modelgate_replica_"), "{text}");
    let mut line = None;
    wait_until(LONG, || {
        line = gw.json_lines().into_iter().find(|l| l["model"] == "m");
        line.is_some()
    });
    let line = line.expect("an access log line");
    assert!(line.get("retries").is_none() && line.get("ejections").is_none());
}

/// A replica that holds every answer until `open` is set.
fn gated_replica(name: &'static str, open: Arc<AtomicBool>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            while !open.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            if c.respond(200, &[&format!("X-Replica: {name}")], b"{}")
                .is_err()
            {
                return;
            }
        }
    })
}

/// Sends `body` on its own thread; the response arrives on the channel.
fn send_async(addr: SocketAddr, body: String, tx: &mpsc::Sender<Response>) {
    let tx = tx.clone();
    thread::spawn(move || {
        let _ = tx.send(post_json(addr, "/v1/chat/completions", &body));
    });
}

fn assert_overloaded(r: &Response) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("overloaded"));
    assert!(r.header("retry-after").is_some(), "Retry-After on 503");
}

#[test]
fn full_replicas_queue_then_refuse_and_a_freed_slot_serves_the_waiter() {
    let open = Arc::new(AtomicBool::new(false));
    let a = gated_replica("a", open.clone());
    let b = gated_replica("b", open.clone());
    let gw = gate(
        &[a.url(), b.url()],
        serde_json::json!({"maxConcurrentRequests": 1, "queue": {"size": 1, "timeout": 30}}),
    );
    let (tx, rx) = mpsc::channel();
    for _ in 0..2 {
        send_async(gw.addr(), chat_body("m", false), &tx);
    }
    assert!(wait_until(LONG, || a.request_count() + b.request_count() == 2));
    assert_eq!((a.request_count(), b.request_count()), (1, 1), "one each");
    // Both replicas are full: one request waits, the next finds the queue full.
    send_async(gw.addr(), chat_body("m", false), &tx);
    send_async(gw.addr(), chat_body("m", false), &tx);
    let refused = rx.recv_timeout(LONG).expect("an answer");
    assert_overloaded(&refused);
    assert_eq!(
        a.request_count() + b.request_count(),
        2,
        "the waiter still waits"
    );
    for r in [&a, &b] {
        let outstanding = replica_metric(&gw, "modelgate_replica_outstanding_requests", &r.url());
        assert_eq!(outstanding, 1.0);
    }
    open.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let r = rx.recv_timeout(LONG).expect("an answer");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(a.request_count() + b.request_count(), 3);
}

#[test]
fn a_waiter_gets_503_after_the_queue_timeout_even_on_a_plain_url_model() {
    let open = Arc::new(AtomicBool::new(false));
    let only = gated_replica("only", open.clone());
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {"m": {"url": only.url(), "maxConcurrentRequests": 1,
                         "queue": {"size": 4, "timeout": 0.3}}},
    });
    let gw = Modelgate::start(&cfg.to_string());
    let (tx, rx) = mpsc::channel();
    send_async(gw.addr(), chat_body("m", false), &tx);
    assert!(wait_until(LONG, || only.request_count() == 1));
    send_async(gw.addr(), chat_body("m", false), &tx);
    assert_overloaded(&rx.recv_timeout(LONG).expect("the waiter's answer"));
    open.store(true, Ordering::SeqCst);
    assert_eq!(rx.recv_timeout(LONG).expect("an answer").status, 200);
    assert_eq!(only.request_count(), 1);
}

#[test]
fn waiters_are_served_in_arrival_order() {
    let open = Arc::new(AtomicBool::new(false));
    let only = gated_replica("only", open.clone());
    let gw = gate(
        &[only.url()],
        serde_json::json!({"maxConcurrentRequests": 1, "queue": {"size": 10, "timeout": 30}}),
    );
    let (tx, rx) = mpsc::channel();
    send_async(gw.addr(), r#"{"model":"m","n":0}"#.to_string(), &tx);
    assert!(wait_until(LONG, || only.request_count() == 1));
    for n in 1..5 {
        send_async(gw.addr(), format!(r#"{{"model":"m","n":{n}}}"#), &tx);
        // Spaced out so they reach modelgate in this order.
        thread::sleep(Duration::from_millis(150));
    }
    open.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(rx.recv_timeout(LONG).expect("an answer").status, 200);
    }
    let order: Vec<i64> = only
        .requests()
        .iter()
        .map(|r| r.json()["n"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
}

/// A replica whose `/health` answers 200 while `healthy` is set, else 503.
fn checked_replica(name: &'static str, healthy: Arc<AtomicBool>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while let Some(req) = c.read_request() {
            let sent = if req.path() == "/health" {
                let status = if healthy.load(Ordering::SeqCst) {
                    200
                } else {
                    503
                };
                c.respond(status, &[], b"")
            } else {
                c.respond(200, &[&format!("X-Replica: {name}")], b"{}")
            };
            if sent.is_err() {
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

#[test]
fn active_health_marks_a_replica_down_and_up() {
    let a_ok = Arc::new(AtomicBool::new(true));
    let a = checked_replica("a", a_ok.clone());
    let b = checked_replica("b", Arc::new(AtomicBool::new(true)));
    let gw = gate(
        &[a.url(), b.url()],
        serde_json::json!({"healthCheck": {"path": "/health", "interval": 0.1, "timeout": 2}}),
    );
    let counts = |gw: &Modelgate| get(gw.addr(), "/health").json()["replicas"]["m"].clone();
    assert!(wait_until(LONG, || a.request_count() > 0), "a is checked");
    assert_eq!(counts(&gw)["total"], 2);
    a_ok.store(false, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || counts(&gw)["healthy"] == 1),
        "a is down: {}",
        counts(&gw)
    );
    assert_eq!(replica_metric(&gw, "modelgate_replica_up", &a.url()), 0.0);
    let before = work_requests(&a);
    for _ in 0..20 {
        assert_eq!(chat(&gw).header("x-replica"), Some("b"));
    }
    assert_eq!(
        work_requests(&a),
        before,
        "nothing goes to a replica marked down"
    );
    a_ok.store(true, Ordering::SeqCst);
    assert!(
        wait_until(LONG, || counts(&gw)["healthy"] == 2),
        "a is up again"
    );
    assert_eq!(replica_metric(&gw, "modelgate_replica_up", &a.url()), 1.0);
    assert!(wait_until(LONG, || {
        chat(&gw);
        work_requests(&a) > before
    }));
}

#[test]
fn health_of_a_plain_config_is_unchanged() {
    let up = replica("only", Duration::ZERO);
    let gw = Modelgate::start(&config_json(&[("m", &up.url())]));
    assert_eq!(
        get(gw.addr(), "/health").text(),
        r#"{"status":"ok","models":1}"#
    );
}

#[test]
fn a_configured_status_fails_over_before_any_byte_reaches_the_client() {
    let limited = ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            if c.respond(429, &["Retry-After: 3"], b"{}").is_err() {
                return;
            }
        }
    });
    let good = replica("good", Duration::ZERO);
    let gw = gate(
        &[limited.url(), good.url()],
        serde_json::json!({"balance": "round-robin", "retryOnStatus": [429]}),
    );
    for _ in 0..4 {
        let r = chat(&gw);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-replica"), Some("good"));
    }
    assert!(
        limited.request_count() >= 1,
        "the first request went to the limited replica"
    );
    assert_eq!(good.request_count(), 4);
    assert_eq!(
        replica_metric(&gw, "modelgate_replica_ejections_total", &limited.url()),
        0.0,
        "429 is not an ejecting status"
    );
}

#[test]
fn a_streaming_request_fails_over_like_any_other() {
    let resets = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            c.reset();
        }
    });
    let streamer = MockUpstream::openai("streamer");
    let gw = gate(
        &[resets.url(), streamer.url()],
        serde_json::json!({"balance": "round-robin"}),
    );
    let r = post_json(gw.addr(), "/v1/chat/completions", &chat_body("m", true));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("streamer"));
    let events = r.sse_data();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert_eq!(resets.request_count(), 1);
}

/// A client connection with a chat request `body` written and nothing read.
fn open_request(addr: SocketAddr, body: &str) -> Client {
    let mut c = Client::connect(addr);
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        body.as_bytes(),
    ));
    c
}

/// Which of modelgate's event loops (its epoll fd) holds the other end of `client`, read
/// from `/proc`: the socket's inode from the process's TCP table, its fd, then the epoll
/// instance listing that fd. Each worker owns one epoll instance.
fn worker_holding(gw: &Modelgate, client: &mut Client) -> Option<u32> {
    let common::server::Stream::Tcp(stream) = client.stream() else {
        return None;
    };
    let client_port = stream.local_addr().ok()?.port();
    let pid = gw.pid();
    let gw_port = gw.addr().port();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (f.get(1)?, f.get(2)?, f.get(9)?);
        (port_of(local) == Some(gw_port) && port_of(remote) == Some(client_port))
            .then(|| inode.to_string())
    })?;
    let mut socket_fd = None;
    let mut epolls = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().to_string();
        let fd: u32 = entry.file_name().to_string_lossy().parse().ok()?;
        if target == format!("socket:[{inode}]") {
            socket_fd = Some(fd);
        } else if target == "anon_inode:[eventpoll]" {
            epolls.push(fd);
        }
    }
    let socket_fd = socket_fd?;
    epolls.into_iter().find(|epfd| {
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")).is_ok_and(|info| {
            info.lines().any(|l| {
                l.strip_prefix("tfd:")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<u32>().ok())
                    == Some(socket_fd)
            })
        })
    })
}

/// An upstream that holds every request until the test hands out a permit, counting the
/// requests it has at once and the most it ever had.
struct Counting {
    upstream: ScriptedUpstream,
    permits: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
}

fn counting_upstream() -> Counting {
    use std::sync::atomic::AtomicUsize;
    let permits = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let (permits, now, peak) = (permits.clone(), now.clone(), peak.clone());
        ScriptedUpstream::start(move |c| {
            while let Some(req) = c.read_request() {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(at_once, Ordering::SeqCst);
                // Wait for a permit (the test hands them out one at a time).
                loop {
                    let p = permits.load(Ordering::SeqCst);
                    if p > 0
                        && permits
                            .compare_exchange(p, p - 1, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    {
                        break;
                    }
                    if c.peer_closed() {
                        now.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                // Counted out before the answer leaves: modelgate may reuse the slot as soon
                // as it has the answer.
                now.fetch_sub(1, Ordering::SeqCst);
                if c.respond(200, &[], req.body_str().as_bytes()).is_err() {
                    return;
                }
            }
        })
    };
    Counting {
        upstream,
        permits,
        peak,
    }
}

#[test]
fn a_limit_holds_across_workers_and_waiters_on_either_worker_are_served_in_arrival_order() {
    let up = counting_upstream();
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 2,
        "models": {"m": {"url": up.upstream.url(), "maxConcurrentRequests": 2,
                         "queue": {"size": 32, "timeout": 120}}},
    });
    let gw = Modelgate::start(&cfg.to_string());
    let queued = |gw: &Modelgate| gw.metric("modelgate_queued_requests{model=\"m\"}") as usize;
    let request = |n: usize| open_request(gw.addr(), &format!(r#"{{"model":"m","n":{n}}}"#));
    // Two requests take both slots; each worker's own count would allow two more.
    let mut clients: Vec<Client> = (0..2).map(request).collect();
    assert!(up.upstream.wait_requests(2, LONG).len() == 2);
    // Waiters, one at a time so their order of arrival is known, until both workers hold
    // some (which worker accepts a connection is the kernel's choice).
    let mut holders = Vec::new();
    for n in 2..26 {
        let mut c = request(n);
        assert!(
            wait_until(LONG, || queued(&gw) == n - 1),
            "waiter {n} is not queued"
        );
        holders.push(worker_holding(&gw, &mut c));
        clients.push(c);
        let distinct: std::collections::HashSet<_> = holders.iter().flatten().collect();
        if holders.len() >= 6 && distinct.len() == 2 {
            break;
        }
    }
    let distinct: std::collections::HashSet<_> = holders.iter().flatten().collect();
    assert_eq!(
        distinct.len(),
        2,
        "every waiter landed on one worker: {holders:?}"
    );
    let waiters = holders.len();
    assert_eq!(up.upstream.request_count(), 2, "nothing passed the limit");
    // One answer at a time: each frees one slot, which goes to the oldest waiter, on
    // whichever worker it waits.
    for served in 0..waiters {
        up.permits.fetch_add(1, Ordering::SeqCst);
        assert!(
            wait_until(LONG, || up.upstream.request_count() == 3 + served),
            "a freed slot did not reach the next waiter ({} requests)",
            up.upstream.request_count()
        );
    }
    up.permits.fetch_add(2, Ordering::SeqCst);
    for c in clients.iter_mut() {
        assert_eq!(c.read_response().status, 200);
    }
    assert_eq!(
        up.peak.load(Ordering::SeqCst),
        2,
        "the upstream had more than 2 at once"
    );
    let order: Vec<i64> = up
        .upstream
        .requests()
        .iter()
        .map(|r| r.json()["n"].as_i64().unwrap_or(-1))
        .collect();
    let expected: Vec<i64> = (2..2 + waiters as i64).collect();
    assert_eq!(
        order[2..],
        expected[..],
        "waiters served out of order: {holders:?}"
    );
    assert_eq!(queued(&gw), 0);
}

#[test]
fn an_ejection_by_one_worker_keeps_every_worker_away() {
    let bad = ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            if c.respond(503, &[], b"{}").is_err() {
                return;
            }
        }
    });
    let good = replica("good", Duration::ZERO);
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 2,
        "models": {"m": {"urls": [bad.url(), good.url()], "ejectTime": 60}},
    });
    let gw = Modelgate::start(&cfg.to_string());
    let mut holders = std::collections::HashSet::new();
    for _ in 0..60 {
        let mut c = open_request(gw.addr(), &chat_body("m", false));
        let r = c.read_response();
        assert!(r.status == 200 || r.status == 503, "{}", r.text());
        holders.extend(worker_holding(&gw, &mut c));
        if bad.request_count() > 0 && holders.len() == 2 && good.request_count() >= 20 {
            break;
        }
    }
    assert_eq!(holders.len(), 2, "both workers served requests");
    assert_eq!(
        bad.request_count(),
        1,
        "a replica ejected by one worker got requests from another"
    );
}
