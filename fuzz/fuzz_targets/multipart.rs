//! The multipart `model` scanner (src/multipart.rs) on arbitrary bodies:
//! 1. no panic, whatever the body or the `Content-Type` value;
//! 2. split invariance: the verdict (model, error kind, error offset) is the same whatever
//!    block boundaries the body arrives in (the first input bytes choose the splits);
//! 3. errors are final: feeding more after an error repeats it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::multipart::{boundary, MultipartError, MultipartScanner};

const CONTENT_TYPE: &[u8] = b"multipart/form-data; boundary=XyZ";

fn scan(pieces: &[&[u8]]) -> Result<String, MultipartError> {
    let mut s = MultipartScanner::new(CONTENT_TYPE)?;
    for p in pieces {
        s.feed(p)?;
    }
    s.finish().map(str::to_owned)
}

fn scan_blocks(body: &[u8], block: usize) -> Result<String, MultipartError> {
    let pieces: Vec<&[u8]> = body.chunks(block.max(1)).collect();
    scan(&pieces)
}

fuzz_target!(|data: &[u8]| {
    let (ctl, body) = data.split_at(data.len().min(3));
    // The body read as a Content-Type value too: parsing it must not panic, and a boundary
    // it yields builds a scanner.
    if let Ok(b) = boundary(body) {
        assert!(!b.is_empty() && b.len() <= 70);
        assert!(MultipartScanner::new(body).is_ok());
    }

    let whole = scan(&[body]);
    let c = |i: usize| ctl.get(i).copied().unwrap_or(0) as usize;
    let a = c(0) % (body.len() + 1);
    let b = a + c(1) % (body.len() - a + 1);
    assert_eq!(scan(&[&body[..a], &body[a..b], &body[b..]]), whole, "split at {a} and {b}");
    let block = c(2) % 17 + 1;
    assert_eq!(scan_blocks(body, block), whole, "blocks of {block}");
    assert_eq!(scan_blocks(body, 1), whole, "byte by byte");

    let mut s = MultipartScanner::new(CONTENT_TYPE).expect("the fixed boundary is valid");
    if let Err(e) = s.feed(body) {
        assert_eq!(s.feed(b"\r\n--XyZ--"), Err(e.clone()));
        assert_eq!(s.finish().map(str::to_owned), Err(e));
    }
});
