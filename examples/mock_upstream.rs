//! Mock OpenAI-compatible upstream for manual testing and benchmarks.
//!
//! ```text
//! cargo run --release --example mock-upstream -- --listen 127.0.0.1:9001 [--name NAME]
//!     [--sse-events N] [--sse-interval-ms MS | --no-pacing] [--latency-ms MS]
//! ```
//! Streamed answers are paced: one event every 100 ms by default (`--sse-interval-ms`), so a
//! streaming `curl` visibly streams; `--no-pacing` (or `--sse-interval-ms 0`) sends them back
//! to back, as the benchmarks want.
//! `--listen` takes `host:port` (port 0 picks one) or `unix:/path`. Once bound it prints
//! `mock-upstream listening on ADDR` (the real address) to stderr. The behaviour is documented
//! in `examples/mock_upstream/server.rs`, which the integration tests share.

#[path = "mock_upstream/server.rs"]
mod server;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "usage: mock-upstream [--listen ADDR] [--name NAME] [--sse-events N] \
[--sse-interval-ms MS | --no-pacing] [--latency-ms MS]\n  ADDR: host:port (default 127.0.0.1:9001) \
or unix:/path\n  --sse-interval-ms: time between SSE events (default 100); --no-pacing: 0";

/// Time between streamed events unless `--sse-interval-ms` or `--no-pacing` says otherwise.
const DEFAULT_PACING: Duration = Duration::from_millis(100);

fn main() {
    let mut listen = "127.0.0.1:9001".to_string();
    let mut opts = server::Options {
        sse_interval: DEFAULT_PACING,
        ..server::Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            return;
        }
        if flag == "--no-pacing" {
            opts.sse_interval = Duration::ZERO;
            continue;
        }
        let value = inline.or_else(|| args.next()).unwrap_or_else(|| {
            fail(&format!("{flag} needs a value"));
        });
        let number = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--listen" => listen = value,
            "--name" => opts.name = value,
            "--sse-events" => opts.sse_events = number(&value) as usize,
            "--sse-interval-ms" => opts.sse_interval = Duration::from_millis(number(&value)),
            "--latency-ms" => opts.latency = Duration::from_millis(number(&value)),
            _ => fail(&format!("unknown option {flag}")),
        }
    }
    let listener = server::Listener::bind(&listen)
        .unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    eprintln!("mock-upstream listening on {}", listener.display());
    server::serve(
        &listener,
        &Arc::new(opts),
        &Arc::new(server::Stats::default()),
        &AtomicBool::new(false),
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("mock-upstream: {msg}\n{USAGE}");
    std::process::exit(2);
}
