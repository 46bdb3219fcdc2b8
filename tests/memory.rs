//! Memory bounds (issue 23, SPEC §11): during a burst of big bodies the process stays within
//! `maxBufferBytes` plus the documented fixed overhead, and the burst's memory goes back to
//! the kernel within seconds after it. RSS is read from `/proc/PID/status` of the modelgate
//! the test started; bounds are generous for a loaded 2-core machine, but the build before
//! issue 23 broke both (1.6× the budget during a second burst, and all of it kept for good).

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const MIB: u64 = 1024;
/// `maxBufferBytes` of the test, in KiB.
const BUDGET_KIB: u64 = 64 * MIB;
/// Block memory a worker may hold beyond the budget (`buf::OVERHEAD_PER_WORKER`: its 1 MiB
/// cache plus one 512 KiB batch), two workers.
const OVERHEAD_KIB: u64 = 2 * 1536;
/// Everything else a burst may add on a loaded machine: 24 connections' state, the chains
/// of block handles of 8 MiB bodies, malloc's arenas. Generous, and still far below what a
/// pool that kept its blocks would show.
const SLACK_KIB: u64 = 12 * MIB;

/// A chat body of about `mib` MiB whose `model` comes last, so it is read and scanned whole.
fn big_body(model: &str, mib: usize) -> Vec<u8> {
    let mut body = br#"{"messages":[{"role":"user","content":""#.to_vec();
    body.resize(body.len() + mib * 1024 * 1024, b'A');
    body.extend_from_slice(format!(r#""}}],"model":"{model}"}}"#).as_bytes());
    body
}

/// POSTs `body` and returns the response status, or None when the exchange broke (a 503
/// sent before the body was read closes the connection while the client is still writing).
fn post(addr: SocketAddr, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    for piece in body.chunks(256 * 1024) {
        if s.write_all(piece).is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let line = answer.split(|&b| b == b'\r').next()?;
    std::str::from_utf8(line.get(9..12)?).ok()?.parse().ok()
}

/// One burst of `clients` concurrent `body` POSTs; returns (statuses, peak RSS in KiB).
fn burst(mg: &Modelgate, clients: usize, body: &Arc<Vec<u8>>) -> (Vec<Option<u16>>, u64) {
    let start = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, body, start) = (mg.addr(), Arc::clone(body), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                post(addr, &body)
            })
        })
        .collect();
    start.wait();
    let mut peak = 0;
    while handles.iter().any(|h| !h.is_finished()) {
        peak = peak.max(mg.rss_kib());
        thread::sleep(Duration::from_millis(10));
    }
    peak = peak.max(mg.rss_kib());
    let statuses = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (statuses, peak)
}

#[test]
fn a_burst_of_big_bodies_stays_within_the_budget_and_its_memory_comes_back() {
    let up = MockUpstream::openai("up");
    let cfg = config_with(
        &[("m", &up.url())],
        serde_json::json!({
            "workers": 2,
            "accessLog": false,
            "maxBufferBytes": BUDGET_KIB * 1024,
            "maxBodyBytes": 16 << 20,
        }),
    );
    let mg = Modelgate::start(&cfg);
    let warm = post(mg.addr(), &big_body("m", 0));
    assert_eq!(warm, Some(200));
    thread::sleep(Duration::from_millis(300));
    let idle = mg.rss_kib();
    assert!(idle > 0, "no VmRSS for pid {}", mg.pid());
    let bound = idle + BUDGET_KIB + OVERHEAD_KIB + SLACK_KIB;

    // 24 × 8 MiB = 192 MiB asked of a 64 MiB budget, twice: the second burst finds the first
    // one's memory on whichever worker freed it.
    let body = Arc::new(big_body("m", 8));
    for round in 1..=2 {
        let (statuses, peak) = burst(&mg, 24, &body);
        let ok = statuses.iter().filter(|s| **s == Some(200)).count();
        assert!(ok > 0, "round {round}: no body got through: {statuses:?}");
        assert!(
            statuses.iter().all(|s| matches!(s, Some(200 | 503) | None)),
            "round {round}: {statuses:?}"
        );
        assert!(
            peak <= bound,
            "round {round}: peak RSS {peak} KiB over the bound {bound} KiB (idle {idle} KiB, \
             budget {BUDGET_KIB} KiB)"
        );
        // Back near idle within seconds: two trim windows (2 s each) plus a sweep, polled.
        let back = idle + OVERHEAD_KIB + 6 * MIB;
        let t0 = Instant::now();
        let came_back = wait_until(Duration::from_secs(15), || mg.rss_kib() <= back);
        assert!(
            came_back,
            "round {round}: RSS {} KiB after 15 s, idle was {idle} KiB (peak {peak} KiB)",
            mg.rss_kib()
        );
        eprintln!(
            "round {round}: {ok} of 24 got 200; idle {idle} KiB, peak {peak} KiB, back under \
             {back} KiB after {:?}",
            t0.elapsed()
        );
    }
    // Still serving.
    assert_eq!(post(mg.addr(), &big_body("m", 1)), Some(200));
}
