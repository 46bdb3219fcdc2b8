//! Soak load client for `bench/soak.sh` (issue 6): mixed traffic against a running modelgate
//! for a fixed time, every response checked, modelgate's fds and RSS sampled, and a verdict.
//!
//! Env: `SOAK_ADDR` (modelgate, host:port), `SOAK_PID` (modelgate's pid, for /proc),
//! `SOAK_MODELS` (`model=mockname,...`: the `X-Mock-Name` each model must be answered by),
//! `SOAK_SECONDS` (600), `SOAK_THREADS` (8), `SOAK_WARMUP` (seconds before the RSS reference,
//! default min(60, SOAK_SECONDS/5)), `SOAK_RSS_GROWTH_KIB` (10240), `SOAK_FD_WAIT` (15 s to
//! get back to the fd baseline; the upstream pool expires idle connections after 4 s),
//! `SOAK_KINDS` (a comma list of kinds to run, uniformly, instead of the weighted mix: to find
//! which traffic a memory trend comes from).
//!
//! Traffic, chosen per iteration by a per-thread PRNG, all on loopback:
//! - `chat`: non-streamed chat completion on a keep-alive connection; 200, `X-Mock-Name` and
//!   the body's `model` match the routed model;
//! - `sse`: streamed completion (8 events, 1 ms apart), read to the terminating chunk; every
//!   event names the model and the stream ends with `data: [DONE]`;
//! - `abort`: streamed completion (200 events, 10 ms apart) on a fresh connection, closed by
//!   the client after the head and a first chunk (modelgate must close the upstream);
//! - `error`: unknown model (404 `model_not_found`) or bad JSON (400 `invalid_json`); the
//!   connection must stay usable;
//! - `pipelined`: two chats for two different models in one write; two answers, in order,
//!   each from its own upstream.
//!
//! Exit status 0 only if: no unexpected error, no wrong route, fds back to the baseline, and
//! RSS growth after warm-up under the bound.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const KINDS: [&str; 5] = ["chat", "sse", "abort", "error", "pipelined"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Stats {
    /// Latency samples (µs) per kind.
    lat: BTreeMap<&'static str, Vec<u32>>,
    errors: BTreeMap<&'static str, u64>,
    wrong_routes: u64,
    first_errors: Vec<String>,
}

impl Stats {
    fn error(&mut self, kind: &'static str, msg: String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.first_errors.len() < 20 {
            self.first_errors.push(format!("{kind}: {msg}"));
        }
    }
}

enum Fail {
    /// A response from the wrong upstream (or naming the wrong model).
    WrongRoute(String),
    Other(String),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Other(format!("io: {e}"))
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive client connection with a read buffer.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(16384),
        })
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut tmp = [0u8; 16384];
        let n = self.s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF"));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    fn head(&mut self) -> Result<Resp, Fail> {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let resp = Resp {
                        status: r.code.unwrap_or(0),
                        headers: r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    self.buf.drain(..n);
                    return Ok(resp);
                }
                Ok(httparse::Status::Partial) => self.fill()?,
                Err(e) => return Err(Fail::Other(format!("bad response head: {e}"))),
            }
        }
    }

    /// Reads one chunk's data (`None` at the terminator, after the trailers).
    fn chunk(&mut self) -> Result<Option<Vec<u8>>, Fail> {
        let line_end = loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            self.fill()?;
        };
        let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| Fail::Other(format!("bad chunk line {line:?}")))?;
        self.buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let i = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    self.fill()?;
                };
                self.buf.drain(..i + 2);
                if i == 0 {
                    return Ok(None);
                }
            }
        }
        while self.buf.len() < size + 2 {
            self.fill()?;
        }
        let data = self.buf[..size].to_vec();
        if &self.buf[size..size + 2] != b"\r\n" {
            return Err(Fail::Other("chunk not followed by CRLF".into()));
        }
        self.buf.drain(..size + 2);
        Ok(Some(data))
    }

    fn response(&mut self) -> Result<Resp, Fail> {
        let mut r = self.head()?;
        if let Some(cl) = r.header("content-length") {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| Fail::Other(format!("bad Content-Length {cl:?}")))?;
            while self.buf.len() < n {
                self.fill()?;
            }
            r.body = self.buf.drain(..n).collect();
        } else if r
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            while let Some(d) = self.chunk()? {
                r.body.extend_from_slice(&d);
            }
        } else {
            return Err(Fail::Other("response without framing".into()));
        }
        Ok(r)
    }
}

fn chat_request(model: &str, stream: bool, extra: &str) -> Vec<u8> {
    let body = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"soak\"}}],\"model\":\"{model}\",\"stream\":{stream}}}"
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The response came from `mock` and names `model` (JSON `model` field, or each SSE event).
fn check_route(r: &Resp, model: &str, mock: &str, stream: bool) -> Result<(), Fail> {
    if r.status != 200 {
        return Err(Fail::Other(format!(
            "status {} for {model}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )));
    }
    let got = r.header("x-mock-name").unwrap_or("");
    if got != mock {
        return Err(Fail::WrongRoute(format!(
            "{model} answered by {got:?}, expected {mock:?}"
        )));
    }
    let needle = format!("\"model\":\"{model}\"");
    let text = String::from_utf8_lossy(&r.body);
    if stream {
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| e.starts_with("data: "))
            .collect();
        if events.last() != Some(&"data: [DONE]") {
            return Err(Fail::Other(format!("stream without [DONE]: {text:?}")));
        }
        if let Some(bad) = events[..events.len() - 1]
            .iter()
            .find(|e| !e.contains(&needle))
        {
            return Err(Fail::WrongRoute(format!("event for another model: {bad}")));
        }
    } else if !text.contains(&needle) {
        return Err(Fail::WrongRoute(format!("body for another model: {text}")));
    }
    Ok(())
}

fn check_error(r: &Resp, status: u16, code: &str) -> Result<(), Fail> {
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| Fail::Other(format!("error body not JSON ({e})")))?;
    if r.status != status || v["error"]["code"] != code {
        return Err(Fail::Other(format!(
            "expected {status} {code}, got {} {v}",
            r.status
        )));
    }
    if r.header("x-mock-name").is_some() {
        return Err(Fail::WrongRoute("a local error reached an upstream".into()));
    }
    Ok(())
}

struct Worker {
    addr: SocketAddr,
    models: Vec<(String, String)>,
    conn: Option<Conn>,
    rng: u64,
}

impl Worker {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn conn(&mut self) -> io::Result<&mut Conn> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(self.addr)?);
        }
        Ok(self.conn.as_mut().unwrap())
    }

    fn model(&mut self) -> (String, String) {
        let i = self.next() as usize % self.models.len();
        self.models[i].clone()
    }

    fn run(&mut self, kind: &'static str) -> Result<(), Fail> {
        match kind {
            "chat" | "sse" => {
                let stream = kind == "sse";
                let (model, mock) = self.model();
                let extra = if stream {
                    "X-Mock-Sse-Events: 8\r\nX-Mock-Sse-Interval-Ms: 1\r\n"
                } else {
                    ""
                };
                let c = self.conn()?;
                c.s.write_all(&chat_request(&model, stream, extra))?;
                let r = c.response()?;
                check_route(&r, &model, &mock, stream)
            }
            "abort" => {
                let (model, mock) = self.model();
                let mut c = Conn::open(self.addr)?;
                c.s.write_all(&chat_request(
                    &model,
                    true,
                    "X-Mock-Sse-Events: 200\r\nX-Mock-Sse-Interval-Ms: 10\r\n",
                ))?;
                let r = c.head()?;
                if r.status != 200 || r.header("x-mock-name") != Some(mock.as_str()) {
                    return Err(Fail::WrongRoute(format!(
                        "abort: {model} got {} from {:?}",
                        r.status,
                        r.header("x-mock-name")
                    )));
                }
                c.chunk()?;
                Ok(()) // dropped: the client goes away mid-stream
            }
            "error" => {
                let bad_json = self.next() % 2 == 0;
                let req = if bad_json {
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Length: 12\r\n\r\n{\"model\":\"a\"".to_vec()
                } else {
                    chat_request("no-such-model", false, "")
                };
                let c = self.conn()?;
                c.s.write_all(&req)?;
                let r = c.response()?;
                if bad_json {
                    check_error(&r, 400, "invalid_json")
                } else {
                    check_error(&r, 404, "model_not_found")
                }
            }
            "pipelined" => {
                let (m1, k1) = self.models[0].clone();
                let (m2, k2) = self.models[1 % self.models.len()].clone();
                let mut req = chat_request(&m1, false, "");
                req.extend(chat_request(&m2, false, ""));
                let c = self.conn()?;
                c.s.write_all(&req)?;
                let r1 = c.response()?;
                let r2 = c.response()?;
                check_route(&r1, &m1, &k1, false)?;
                check_route(&r2, &m2, &k2, false)
            }
            _ => unreachable!(),
        }
    }
}

fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn proc_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let addr: SocketAddr = std::env::var("SOAK_ADDR")
        .expect("SOAK_ADDR")
        .parse()
        .expect("SOAK_ADDR host:port");
    let pid: u32 = env_or("SOAK_PID", 0);
    let models: Vec<(String, String)> = std::env::var("SOAK_MODELS")
        .expect("SOAK_MODELS")
        .split(',')
        .map(|p| {
            let (m, k) = p.split_once('=').expect("model=mockname");
            (m.to_string(), k.to_string())
        })
        .collect();
    let seconds: u64 = env_or("SOAK_SECONDS", 600);
    let threads: usize = env_or("SOAK_THREADS", 8);
    let warmup: u64 = env_or("SOAK_WARMUP", (seconds / 5).min(60));
    let growth_bound: u64 = env_or("SOAK_RSS_GROWTH_KIB", 10240);
    let fd_wait: u64 = env_or("SOAK_FD_WAIT", 15);
    let only: Vec<&'static str> = std::env::var("SOAK_KINDS")
        .map(|v| {
            v.split(',')
                .map(|k| {
                    *KINDS
                        .iter()
                        .find(|known| **known == k.trim())
                        .unwrap_or_else(|| panic!("unknown kind {k:?}, known: {KINDS:?}"))
                })
                .collect()
        })
        .unwrap_or_default();

    let fd_base = proc_fds(pid);
    let rss_base = proc_rss_kib(pid);
    eprintln!(
        "soak: {seconds}s, {threads} threads, warm-up {warmup}s; baseline {fd_base} fds, {rss_base} KiB"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (stop, stats, total, models, only) = (
            stop.clone(),
            stats.clone(),
            total.clone(),
            models.clone(),
            only.clone(),
        );
        handles.push(thread::spawn(move || {
            let mut w = Worker {
                addr,
                models,
                conn: None,
                rng: 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9ABC),
            };
            let mut local = Stats::default();
            while !stop.load(Ordering::Relaxed) {
                // Weights: chat 40, sse 25, abort 10, error 15, pipelined 10.
                let kind = if !only.is_empty() {
                    only[w.next() as usize % only.len()]
                } else {
                    match w.next() % 100 {
                        0..=39 => KINDS[0],
                        40..=64 => KINDS[1],
                        65..=74 => KINDS[2],
                        75..=89 => KINDS[3],
                        _ => KINDS[4],
                    }
                };
                let t0 = Instant::now();
                match w.run(kind) {
                    Ok(()) => local
                        .lat
                        .entry(kind)
                        .or_default()
                        .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(Fail::WrongRoute(m)) => {
                        local.wrong_routes += 1;
                        local.error(kind, format!("WRONG ROUTE {m}"));
                        w.conn = None;
                    }
                    Err(Fail::Other(m)) => {
                        local.error(kind, m);
                        w.conn = None; // never reuse a connection in an unknown state
                    }
                }
                total.fetch_add(1, Ordering::Relaxed);
            }
            let mut s = stats.lock().unwrap();
            for (k, v) in local.lat {
                s.lat.entry(k).or_default().extend(v);
            }
            for (k, v) in local.errors {
                *s.errors.entry(k).or_default() += v;
            }
            s.wrong_routes += local.wrong_routes;
            for e in local.first_errors {
                if s.first_errors.len() < 20 {
                    s.first_errors.push(e);
                }
            }
        }));
    }

    // Sampler: every 5 s, fds and RSS (the main thread).
    let mut samples: Vec<(u64, usize, u64)> = Vec::new();
    let end = start + Duration::from_secs(seconds);
    let mut next = start;
    let mut last_total = 0;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next {
            let t = now.duration_since(start).as_secs();
            let (fds, rss) = (proc_fds(pid), proc_rss_kib(pid));
            let n = total.load(Ordering::Relaxed);
            eprintln!(
                "t={t:>4}s fds={fds:>4} rss={rss:>6} KiB requests={n} (+{}/5s)",
                n - last_total
            );
            last_total = n;
            samples.push((t, fds, rss));
            next += Duration::from_secs(5);
        }
        thread::sleep(Duration::from_millis(100).min(end.saturating_duration_since(now)));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let elapsed = start.elapsed().as_secs_f64();

    // fds back to baseline once the pooled upstream connections expire (4 s idle).
    let fd_deadline = Instant::now() + Duration::from_secs(fd_wait);
    let mut fd_end = proc_fds(pid);
    while fd_end > fd_base && Instant::now() < fd_deadline {
        thread::sleep(Duration::from_millis(250));
        fd_end = proc_fds(pid);
    }
    let rss_end = proc_rss_kib(pid);

    let s = stats.lock().unwrap();
    let after: Vec<&(u64, usize, u64)> = samples.iter().filter(|x| x.0 >= warmup).collect();
    let rss_ref = after.first().map(|x| x.2).unwrap_or(rss_base);
    let rss_max_after = after.iter().map(|x| x.2).max().unwrap_or(rss_ref);
    let rss_min = samples.iter().map(|x| x.2).min().unwrap_or(0);
    let rss_max = samples.iter().map(|x| x.2).max().unwrap_or(0);
    let fd_max = samples.iter().map(|x| x.1).max().unwrap_or(0);
    let growth = rss_max_after.saturating_sub(rss_ref);

    println!("\n## Soak summary ({elapsed:.0} s, {threads} client threads)\n");
    println!("| kind | ok | errors | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut ok_total = 0;
    for k in KINDS {
        let mut v = s.lat.get(k).cloned().unwrap_or_default();
        v.sort_unstable();
        ok_total += v.len();
        println!(
            "| {k} | {} | {} | {:.2} | {:.2} | {:.2} |",
            v.len(),
            s.errors.get(k).copied().unwrap_or(0),
            pct(&v, 0.5),
            pct(&v, 0.99),
            pct(&v, 1.0)
        );
    }
    let errors: u64 = s.errors.values().sum();
    println!(
        "\nrequests: {} ok ({:.0}/s; a pipelined pair counts once), {errors} errors, {} wrong routes",
        ok_total,
        ok_total as f64 / elapsed,
        s.wrong_routes
    );
    println!(
        "RSS KiB: baseline {rss_base}, min {rss_min}, max {rss_max}, at warm-up end ({warmup} s) {rss_ref}, max after warm-up {rss_max_after} (growth {growth}, bound {growth_bound}), end {rss_end}"
    );
    println!("fds: baseline {fd_base}, max sampled {fd_max}, end {fd_end}");
    for e in &s.first_errors {
        println!("error: {e}");
    }

    let mut verdict = Vec::new();
    if errors > 0 {
        verdict.push(format!("{errors} unexpected errors"));
    }
    if s.wrong_routes > 0 {
        verdict.push(format!("{} wrong routes", s.wrong_routes));
    }
    if fd_end > fd_base {
        verdict.push(format!("fds {fd_end} > baseline {fd_base}"));
    }
    if growth > growth_bound {
        verdict.push(format!("RSS grew {growth} KiB after warm-up"));
    }
    if ok_total == 0 {
        verdict.push("no request succeeded".into());
    }
    if verdict.is_empty() {
        println!("\nsoak: PASS");
    } else {
        println!("\nsoak: FAIL: {}", verdict.join("; "));
        std::process::exit(1);
    }
}
