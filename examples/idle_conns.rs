//! Idle keep-alive connection holder for `bench/run.sh` (scenario 4).
//!
//! ```text
//! idle_conns --addr 127.0.0.1:PORT [--conns 10000] [--threads 8] [--model bench-model]
//!            [--hold-secs 120]
//! ```
//! Opens CONNS client connections (spread over THREADS threads), sends one small
//! `POST /v1/chat/completions` (keep-alive, `model` after `messages`) on each and reads the
//! whole `Content-Length` answer, then keeps every socket open and idle. When all are
//! established it prints `held OK FAILED` on stdout (flushed) and sleeps HOLD-SECS; the bench
//! measures the proxy's RSS meanwhile and stops this process by PID. Needs an fd limit above CONNS (`ulimit -n`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn main() {
    let mut addr = String::new();
    let mut conns = 10_000usize;
    let mut threads = 8usize;
    let mut model = "bench-model".to_string();
    let mut hold = 120u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--addr" => addr = val(),
            "--conns" => conns = val().parse().unwrap_or_else(|_| die("--conns")),
            "--threads" => threads = val().parse().unwrap_or_else(|_| die("--threads")),
            "--model" => model = val(),
            "--hold-secs" => hold = val().parse().unwrap_or_else(|_| die("--hold-secs")),
            _ => die(&format!("unknown option {a}")),
        }
    }
    if addr.is_empty() || threads == 0 {
        die("usage: idle_conns --addr HOST:PORT [--conns N] [--threads N] [--model M] [--hold-secs S]");
    }
    let body = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}],\"max_tokens\":4,\"model\":\"{model}\"}}"
    );
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = conns / threads + usize::from(t < conns % threads);
        let (addr, request) = (addr.clone(), request.clone());
        handles.push(std::thread::spawn(move || {
            let mut held = Vec::with_capacity(n);
            let mut failed = 0usize;
            let mut first_err = String::new();
            for _ in 0..n {
                match one(&addr, request.as_bytes()) {
                    Ok(s) => held.push(s),
                    Err(e) => {
                        failed += 1;
                        if first_err.is_empty() {
                            first_err = e;
                        }
                    }
                }
            }
            (held, failed, first_err)
        }));
    }
    let mut all = Vec::with_capacity(conns);
    let mut failed = 0;
    for h in handles {
        let (held, f, e) = h.join().unwrap();
        all.extend(held);
        failed += f;
        if !e.is_empty() {
            eprintln!("idle_conns: e.g. {e}");
        }
    }
    println!("held {} {}", all.len(), failed);
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(hold));
    drop(all);
}

fn one(addr: &str, request: &[u8]) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut acc = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("eof before the answer ended".into());
        }
        acc.extend_from_slice(&buf[..n]);
        if let Some(h) = acc.windows(4).position(|w| w == b"\r\n\r\n") {
            if !acc.starts_with(b"HTTP/1.1 200") {
                let line = acc.split(|&b| b == b'\r').next().unwrap_or_default();
                return Err(format!("status: {}", String::from_utf8_lossy(line)));
            }
            let head = String::from_utf8_lossy(&acc[..h]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or("answer without Content-Length")?;
            if acc.len() >= h + 4 + len {
                return Ok(s);
            }
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("idle_conns: {msg}");
    std::process::exit(2);
}
