//! A fixed amount of usage-counting work, for instruction counts under callgrind
//! (BENCHMARKS.md, "Counting tokens of compressed answers"): no clock, no randomness, so runs
//! and builds compare exactly.
//!
//! `valgrind --tool=callgrind --callgrind-out-file=OUT target/release/examples/usage_count MODE [json|sse]`
//!
//! The second argument counts only that answer (both by default). MODE is `setup` (build and compress the answers, count nothing), `plain` (count the
//! uncompressed answers), `gzip` or `deflate` (count the compressed ones). Every mode builds
//! the same answers, so `MODE − setup` is the counting alone. The answers: a non-streamed chat
//! completion (4.7 KB, one read) and an SSE stream of 400 chunks with its usage event
//! (~110 KB, one read per event; compressed as one stream sync-flushed after every event, as
//! a streaming server does), each counted 50 times through `usage::AnswerUsage`, the reader a
//! connection holds.

use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use modelgate::buf::{Budget, Pool};
use modelgate::h1::{BodyShape, ContentCoding};
use modelgate::usage::AnswerUsage;

const ROUNDS: usize = 50;

/// Deterministic text that compresses like prose (not like one repeated word).
fn words(n: usize, seed: &mut u32) -> String {
    const WORDS: [&str; 16] = [
        "the",
        "model",
        "router",
        "answers",
        "token",
        "stream",
        "of",
        "a",
        "quickly",
        "upstream",
        "with",
        "every",
        "request",
        "and",
        "compressed",
        "bytes",
    ];
    let mut out = String::new();
    for _ in 0..n {
        *seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        out.push_str(WORDS[(*seed >> 16) as usize % WORDS.len()]);
        out.push(' ');
    }
    out
}

/// The answer as pieces (one per upstream read).
struct Answer {
    shape: BodyShape,
    plain: Vec<Vec<u8>>,
    gzip: Vec<Vec<u8>>,
    deflate: Vec<Vec<u8>>,
}

/// `plain` compressed as one stream, sync-flushed after every piece (as a streaming server
/// does), the trailer appended to the last piece; or, for a document, as one piece.
fn compress<W: Write>(
    mut w: W,
    plain: &[Vec<u8>],
    take: impl Fn(&mut W) -> Vec<u8>,
    finish: impl FnOnce(W) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in plain {
        w.write_all(p).expect("encode");
        w.flush().expect("flush");
        out.push(take(&mut w));
    }
    let rest = finish(w);
    match out.last_mut() {
        Some(last) => last.extend_from_slice(&rest),
        None => out.push(rest),
    }
    out
}

fn answer(shape: BodyShape, plain: Vec<Vec<u8>>) -> Answer {
    let level = Compression::default();
    let gzip = compress(
        GzEncoder::new(Vec::new(), level),
        &plain,
        |e| std::mem::take(e.get_mut()),
        |e| e.finish().expect("gzip"),
    );
    let deflate = compress(
        ZlibEncoder::new(Vec::new(), level),
        &plain,
        |e| std::mem::take(e.get_mut()),
        |e| e.finish().expect("zlib"),
    );
    Answer {
        shape,
        plain,
        gzip,
        deflate,
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "plain".into());
    let only = std::env::args().nth(2);
    let mut seed = 7;
    let json = format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":812,"completion_tokens":700,"total_tokens":1512}}}}"#,
        words(700, &mut seed)
    );
    let mut events = Vec::new();
    for _ in 0..400 {
        events.push(
            format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}]}}\n\n",
                words(2, &mut seed)
            )
            .into_bytes(),
        );
    }
    events.push(b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":812,\"completion_tokens\":800,\"total_tokens\":1612}}\n\ndata: [DONE]\n\n".to_vec());
    let answers = [
        answer(BodyShape::Document, vec![json.into_bytes()]),
        answer(BodyShape::Sse, events),
    ];
    let pool = Pool::new(Budget::new(usize::MAX));
    let now = Instant::now();
    let mut counted = 0u64;
    for _ in 0..ROUNDS {
        for a in &answers {
            let wanted = match only.as_deref() {
                Some("json") => a.shape == BodyShape::Document,
                Some("sse") => a.shape == BodyShape::Sse,
                _ => true,
            };
            if !wanted {
                continue;
            }
            let (coding, pieces) = match mode.as_str() {
                "setup" => continue,
                "gzip" => (ContentCoding::Gzip, &a.gzip),
                "deflate" => (ContentCoding::Deflate, &a.deflate),
                _ => (ContentCoding::Identity, &a.plain),
            };
            let mut usage = AnswerUsage::new();
            usage.begin(coding, a.shape, &pool);
            for p in pieces {
                usage.feed(black_box(p), now);
            }
            counted += usage.completion_tokens().unwrap_or(0);
            assert!(usage.unread().is_none());
        }
    }
    let sizes: Vec<String> = answers
        .iter()
        .map(|a| {
            let len = |p: &Vec<Vec<u8>>| p.iter().map(Vec::len).sum::<usize>();
            format!(
                "{:?} {} pieces: {} plain bytes, {} gzip, {} deflate",
                a.shape,
                a.plain.len(),
                len(&a.plain),
                len(&a.gzip),
                len(&a.deflate)
            )
        })
        .collect();
    println!(
        "{mode}: {counted} completion tokens counted; {}",
        sizes.join("; ")
    );
}
