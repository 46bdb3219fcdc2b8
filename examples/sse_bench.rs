//! SSE load generator for `bench/run.sh` (scenario 3): N concurrent streamed chat completions,
//! every event's arrival time measured in the client.
//!
//! ```text
//! sse_bench --addr 127.0.0.1:PORT [--streams 512] [--events 64] [--interval-ms 10]
//!           [--model bench-model] [--raw FILE] [--header]
//! ```
//! Each stream is one thread with a blocking socket (`TCP_NODELAY`). All streams connect first,
//! wait on a barrier, then each sends one `POST /v1/chat/completions` with `"stream": true` and
//! the mock upstream's per-request headers `X-Mock-Sse-Events: EVENTS-1` (the mock adds one
//! `finish_reason` event, so EVENTS `data:` events arrive, then `data: [DONE]`) and
//! `X-Mock-Sse-Interval-Ms`. The client reads with one `read` call per wakeup (64 KiB buffer),
//! timestamps every read (a "burst"), and counts the SSE events (`\n\n` terminators; event
//! payloads hold no raw newlines) completed in it. Per stream:
//! - TTFE: first complete event minus the moment the request was written;
//! - max gap: the largest time between two consecutive events (including `[DONE]`);
//! - lost: EVENTS + 1 (the `[DONE]`) minus events seen (also when the stream failed);
//! - batched: some read delivered two or more complete events at once.
//!
//! Prints one TSV line (with `--header`, the column names first):
//! `streams ok errors events_lost ttfe_p50_us ttfe_p99_us ttfe_max_us gap_p50_us gap_p99_us
//! gap_max_us batched_streams batched_reads wall_ms` (gap_* are percentiles over streams of the
//! per-stream max gap). `--raw FILE` writes one row per stream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct StreamResult {
    ok: bool,
    error: String,
    events: usize,
    ttfe_us: f64,
    max_gap_us: f64,
    batched_reads: usize,
    reads: usize,
}

fn main() {
    let mut addr = String::new();
    let mut streams = 512usize;
    let mut events = 64usize;
    let mut interval_ms = 10u64;
    let mut model = "bench-model".to_string();
    let mut raw: Option<String> = None;
    let mut header = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--addr" => addr = val(),
            "--streams" => streams = val().parse().unwrap_or_else(|_| die("--streams")),
            "--events" => events = val().parse().unwrap_or_else(|_| die("--events")),
            "--interval-ms" => interval_ms = val().parse().unwrap_or_else(|_| die("--interval-ms")),
            "--model" => model = val(),
            "--raw" => raw = Some(val()),
            "--header" => header = true,
            _ => die(&format!("unknown option {a}")),
        }
    }
    if addr.is_empty() || events == 0 {
        die("usage: sse_bench --addr HOST:PORT [--streams N] [--events N] [--interval-ms MS] [--model M] [--raw FILE] [--header]");
    }
    let body = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"stream me some tokens\"}}],\"stream\":true,\"model\":\"{model}\"}}"
    );
    let request = Arc::new(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
Accept: text/event-stream\r\nX-Mock-Sse-Events: {}\r\nX-Mock-Sse-Interval-Ms: {interval_ms}\r\n\
Content-Length: {}\r\n\r\n{body}",
        events - 1,
        body.len()
    ));
    let barrier = Arc::new(Barrier::new(streams + 1));
    let mut handles = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (addr, request, barrier) = (addr.clone(), request.clone(), barrier.clone());
        let h = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || one_stream(&addr, request.as_bytes(), &barrier, events))
            .unwrap_or_else(|e| die(&format!("spawn: {e}")));
        handles.push(h);
    }
    barrier.wait();
    let start = Instant::now();
    let results: Vec<StreamResult> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;

    let expected = events + 1;
    let ok: Vec<&StreamResult> = results.iter().filter(|r| r.ok).collect();
    let errors = results.len() - ok.len();
    let lost: usize = results
        .iter()
        .map(|r| expected.saturating_sub(r.events))
        .sum();
    let mut ttfe: Vec<f64> = ok.iter().map(|r| r.ttfe_us).collect();
    let mut gaps: Vec<f64> = ok.iter().map(|r| r.max_gap_us).collect();
    ttfe.sort_by(|a, b| a.total_cmp(b));
    gaps.sort_by(|a, b| a.total_cmp(b));
    let batched_streams = results.iter().filter(|r| r.batched_reads > 0).count();
    let batched_reads: usize = results.iter().map(|r| r.batched_reads).sum();
    if let Some(path) = raw {
        let mut s =
            String::from("stream\tok\tevents\tttfe_us\tmax_gap_us\treads\tbatched_reads\terror\n");
        for (i, r) in results.iter().enumerate() {
            s.push_str(&format!(
                "{i}\t{}\t{}\t{:.0}\t{:.0}\t{}\t{}\t{}\n",
                r.ok as u8, r.events, r.ttfe_us, r.max_gap_us, r.reads, r.batched_reads, r.error
            ));
        }
        std::fs::write(&path, s).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    }
    if let Some(r) = results.iter().find(|r| !r.ok) {
        eprintln!("sse_bench: {errors} stream(s) failed, e.g.: {}", r.error);
    }
    if header {
        println!("streams\tok\terrors\tevents_lost\tttfe_p50_us\tttfe_p99_us\tttfe_max_us\tgap_p50_us\tgap_p99_us\tgap_max_us\tbatched_streams\tbatched_reads\twall_ms");
    }
    println!(
        "{}\t{}\t{}\t{}\t{:.0}\t{:.0}\t{:.0}\t{:.0}\t{:.0}\t{:.0}\t{}\t{}\t{:.0}",
        results.len(),
        ok.len(),
        errors,
        lost,
        pct(&ttfe, 50.0),
        pct(&ttfe, 99.0),
        ttfe.last().copied().unwrap_or(0.0),
        pct(&gaps, 50.0),
        pct(&gaps, 99.0),
        gaps.last().copied().unwrap_or(0.0),
        batched_streams,
        batched_reads,
        wall_ms
    );
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn one_stream(addr: &str, request: &[u8], barrier: &Barrier, events: usize) -> StreamResult {
    let mut r = StreamResult {
        ok: false,
        error: String::new(),
        events: 0,
        ttfe_us: 0.0,
        max_gap_us: 0.0,
        batched_reads: 0,
        reads: 0,
    };
    let conn = TcpStream::connect(addr);
    barrier.wait(); // every thread reaches the barrier, connected or not
    let mut s = match conn {
        Ok(s) => s,
        Err(e) => {
            r.error = format!("connect: {e}");
            return r;
        }
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let sent = Instant::now();
    if let Err(e) = s.write_all(request) {
        r.error = format!("write: {e}");
        return r;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut acc: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut body_start: Option<usize> = None;
    let mut scan = 0usize; // next index of acc to look for "\n\n" at
    let mut last: Option<Instant> = None;
    let mut done = false;
    while !done {
        let n = match s.read(&mut buf) {
            Ok(0) => {
                r.error = "eof before [DONE]".into();
                break;
            }
            Ok(n) => n,
            Err(e) => {
                r.error = format!("read: {e}");
                break;
            }
        };
        let now = Instant::now();
        r.reads += 1;
        acc.extend_from_slice(&buf[..n]);
        if body_start.is_none() {
            match find(&acc, b"\r\n\r\n") {
                Some(i) => {
                    if !acc.starts_with(b"HTTP/1.1 200") {
                        let line = acc.split(|&b| b == b'\r').next().unwrap_or_default();
                        r.error = format!("status: {}", String::from_utf8_lossy(line));
                        break;
                    }
                    body_start = Some(i + 4);
                    scan = i + 4;
                }
                None => continue,
            }
        }
        let mut in_this_read = 0;
        while let Some(off) = find(&acc[scan..], b"\n\n") {
            let end = scan + off; // index of the first '\n'
            in_this_read += 1;
            r.events += 1;
            match last {
                None => r.ttfe_us = (now - sent).as_secs_f64() * 1e6,
                Some(prev) => {
                    let gap = (now - prev).as_secs_f64() * 1e6;
                    if gap > r.max_gap_us {
                        r.max_gap_us = gap;
                    }
                }
            }
            last = Some(now);
            if acc[..end].ends_with(b"data: [DONE]") {
                done = true;
            }
            scan = end + 2;
        }
        if in_this_read > 1 {
            r.batched_reads += 1;
        }
        // Keep the buffer small: drop what was scanned (keep a byte for a split "\n\n").
        if scan > 1 && scan == acc.len() {
            acc.clear();
            scan = 0;
        }
    }
    r.ok = done && r.events == events + 1 && r.error.is_empty();
    if done && r.events != events + 1 {
        r.error = format!("{} events, expected {}", r.events, events + 1);
    }
    r
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn die(msg: &str) -> ! {
    eprintln!("sse_bench: {msg}");
    std::process::exit(2);
}
