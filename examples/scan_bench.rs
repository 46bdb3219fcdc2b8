//! Throughput of the model scanner against serde_json (BENCHMARKS.md, "Model scanner").
//!
//! `cargo run --release --example scan_bench [-- SECONDS_PER_CASE [FILTER]]`
//! (FILTER: a substring of "body parser" to run only some cases)
//!
//! Plain `fn main` with `Instant`: each case runs in samples of several iterations for about
//! the given time (default 1.5 s), and the median sample is reported as ns per body and MB/s
//! (MB = 10^6 bytes). serde's `IgnoredAny` is not measured: serde is not a direct dependency
//! of the crate, so the example cannot name it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use modelgate::scan::ModelScanner;

const BLOCK: usize = 16 * 1024;

/// One way of parsing a body.
type Parser<'a> = &'a dyn Fn(&[u8]);

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    let budget = Duration::from_secs_f64(seconds);
    let filter = std::env::args().nth(2).unwrap_or_default();

    let testdata = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/chat-request-model-last.json"
    ))
    .unwrap_or_else(|_| chat_body(11 * 1024));
    let bodies: Vec<(String, Vec<u8>)> = vec![
        ("chat 1 KB (model last)".to_string(), chat_body(1024)),
        (
            format!("chat {} KB testdata (model last)", testdata.len() / 1024),
            testdata,
        ),
        (
            "10 MB base64 image_url + model".to_string(),
            image_body(10 * 1000 * 1000),
        ),
    ];

    println!(
        "{:<40} {:<36} {:>12} {:>8} {:>9}",
        "body", "parser", "ns/body", "MB/s", "vs Value"
    );
    for (name, body) in &bodies {
        check(body);
        let cases: [(&str, Parser); 5] = [
            ("ModelScanner, 16 KiB blocks", &|b| scan_blocks(b, BLOCK)),
            ("ModelScanner, one feed", &|b| scan_blocks(b, usize::MAX)),
            ("serde_json::from_slice::<Value>", &|b| {
                let _ = black_box(serde_json::from_slice::<serde_json::Value>(b));
            }),
            ("std::str::from_utf8 (reference)", &|b| {
                let _ = black_box(std::str::from_utf8(b).is_ok());
            }),
            ("memchr2 '\"' '\\\\' count (reference)", &|b| {
                black_box(memchr::memchr2_iter(b'"', b'\\', b).count());
            }),
        ];
        let cases: Vec<_> = cases
            .into_iter()
            .filter(|(parser, _)| format!("{name} {parser}").contains(&filter))
            .collect();
        let fns: Vec<Parser> = cases.iter().map(|(_, f)| *f).collect();
        if fns.is_empty() {
            continue;
        }
        let medians = median_ns(body, &fns, budget * fns.len() as u32);
        let serde = cases
            .iter()
            .zip(&medians)
            .find(|((p, _), _)| p.contains("Value"))
            .map(|(_, &ns)| ns);
        for ((parser, _), ns) in cases.iter().zip(medians) {
            let mbs = body.len() as f64 / ns * 1e3;
            let vs = serde.map_or(String::new(), |s| format!("{:.2}x", s / ns));
            println!("{name:<40} {parser:<36} {ns:>12.0} {mbs:>8.0} {vs:>9}");
        }
        println!();
    }
}

fn scan_blocks(body: &[u8], block: usize) {
    let mut s = ModelScanner::new();
    for piece in body.chunks(block.min(body.len()).max(1)) {
        if s.feed(black_box(piece)).is_err() {
            break;
        }
    }
    let _ = black_box(s.finish().map(|m| m.len()));
}

/// Both parsers must see the body as valid with the expected model.
fn check(body: &[u8]) {
    let mut s = ModelScanner::new();
    let ours = s.feed(body).and_then(|()| s.finish().map(str::to_owned));
    let theirs = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str().map(str::to_owned)));
    assert_eq!(
        ours.ok(),
        theirs,
        "bench body must be valid and carry a model"
    );
}

/// Median ns per call of each function. A sample is enough calls to last ~5 ms; samples are
/// taken round-robin over the functions so that noise from other work on the (shared) machine
/// hits all of them alike.
fn median_ns(body: &[u8], fns: &[Parser], budget: Duration) -> Vec<f64> {
    let reps: Vec<u32> = fns
        .iter()
        .map(|f| {
            let t = Instant::now();
            f(body);
            let once = t.elapsed().max(Duration::from_nanos(50));
            (Duration::from_millis(5).as_nanos() / once.as_nanos()).max(1) as u32
        })
        .collect();
    let mut samples = vec![Vec::new(); fns.len()];
    let start = Instant::now();
    while start.elapsed() < budget || samples[0].len() < 5 {
        for ((f, &n), out) in fns.iter().zip(&reps).zip(&mut samples) {
            let t = Instant::now();
            for _ in 0..n {
                f(black_box(body));
            }
            out.push(t.elapsed().as_nanos() as f64 / f64::from(n));
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect()
}

/// A chat request of about `size` bytes with `model` after the messages.
fn chat_body(size: usize) -> Vec<u8> {
    let mut out =
        String::from(r#"{"messages":[{"role":"system","content":"You are a helpful assistant."}"#);
    let tail = r#"],"temperature":0.7,"max_tokens":512,"stream":true,"model":"qwen3-8b"}"#;
    let turn = r#",{"role":"user","content":"Summarise this: \"caf\u00e9\" is French."}"#;
    while out.len() + turn.len() + tail.len() <= size {
        out.push_str(turn);
    }
    let pad = size.saturating_sub(out.len() + tail.len() + 40);
    out.push_str(r#",{"role":"user","content":""#);
    out.push_str(&"x".repeat(pad));
    out.push_str(r#""}"#);
    out.push_str(tail);
    out.into_bytes()
}

/// A vision request of about `size` bytes: one base64 PNG data URL, then `model`.
fn image_body(size: usize) -> Vec<u8> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let head = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,"#;
    let tail = r#""}}]}],"max_tokens":300,"model":"qwen2.5-vl-7b"}"#;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(head.as_bytes());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() + tail.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(B64[(x & 63) as usize]);
    }
    out.extend_from_slice(tail.as_bytes());
    out
}
