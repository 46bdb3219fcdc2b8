//! A fixed amount of model-scanner work, for instruction counts under callgrind (BENCHMARKS.md,
//! "Model scanner", media detection): no clock, no randomness, so two builds compare exactly.
//!
//! `valgrind --tool=callgrind --callgrind-out-file=OUT target/release/examples/scan_count [media]`
//!
//! Scans three bodies (the 11 KB chat testdata, a 100 KB chat with image parts, a 1 MB base64
//! image request) 20 times each in 16 KiB blocks; `media` turns media-part detection on.
//! Works against any version of `ModelScanner` (the media flag needs `with_media`).

use std::hint::black_box;

use modelgate::scan::ModelScanner;

const BLOCK: usize = 16 * 1024;
const ROUNDS: usize = 20;

fn main() {
    let media = std::env::args().nth(1).as_deref() == Some("media");
    let testdata = include_bytes!("../tests/data/chat-request-model-last.json").to_vec();
    let mut parts = String::from(r#"{"messages":["#);
    for i in 0..400 {
        if i > 0 {
            parts.push(',');
        }
        parts.push_str(r#"{"role":"user","content":[{"type":"text","text":"describe the picture please"},{"type":"image_url","image_url":{"url":"https://example.com/a.png","detail":"low"}}]}"#);
    }
    parts.push_str(r#"],"model":"vision"}"#);
    let mut image = String::from(
        r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,"#,
    );
    image.push_str(&"QUJD".repeat(250_000));
    image.push_str(r#""}}]}],"model":"vision"}"#);
    let bodies = [testdata, parts.into_bytes(), image.into_bytes()];
    let mut found = 0usize;
    for _ in 0..ROUNDS {
        for body in &bodies {
            found += if media {
                scan(ModelScanner::with_media(), body, |s| s.saw_media())
            } else {
                scan(ModelScanner::new(), body, |_| false)
            };
        }
    }
    println!("{found}");
}

/// Feeds `body` in 16 KiB blocks; the model's length, plus one when `saw` says so.
fn scan<const M: bool>(
    mut s: ModelScanner<M>,
    body: &[u8],
    saw: impl Fn(&ModelScanner<M>) -> bool,
) -> usize {
    for piece in body.chunks(BLOCK) {
        if s.feed(black_box(piece)).is_err() {
            break;
        }
    }
    let seen = usize::from(saw(&s));
    seen + black_box(s.finish().map(str::len).unwrap_or(0))
}
