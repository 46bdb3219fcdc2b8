//! Defends issue 16: token counts of compressed answers are read from a copy inflated on the
//! side (`usage::Inflater`), fed upstream bytes split anywhere. Whatever the bytes, it must
//! never panic or loop, and its verdict must not depend on where the reads split them
//! (except where the decompression-bomb guard cuts a stream off); nor must its output, except
//! that corrupt data may end it sooner or later. A stream made by a real compressor (raw
//! deflate, zlib, or a gzip member around raw deflate) from arbitrary data must inflate back
//! to exactly that data, however it is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::usage::{InflateError, Inflater};

/// Inflates `input` in pieces ending at `cuts`; the output and whether it ended in an error.
fn inflate(raw_allowed: bool, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Result<(), InflateError>) {
    let mut inflater = Inflater::new(raw_allowed);
    let mut out = Vec::new();
    let mut start = 0;
    let ends = cuts.iter().copied().chain(std::iter::once(input.len()));
    for end in ends {
        let end = end.clamp(start, input.len());
        if let Err(e) = inflater.feed(&input[start..end], &mut |d| out.extend_from_slice(d)) {
            return (out, Err(e));
        }
        start = end;
    }
    (out, Ok(()))
}

/// Two inflations of the same bytes agree. On corrupt data they agree on the verdict, and
/// the output of each is a prefix of the other's: miniz_oxide drops what one call inflated
/// before it found the error, so how much came out first depends on where the reads split.
fn same_result(
    a: &(Vec<u8>, Result<(), InflateError>),
    b: &(Vec<u8>, Result<(), InflateError>),
    what: &str,
) {
    if a.1 == Err(InflateError::Corrupt) && b.1 == a.1 {
        let n = a.0.len().min(b.0.len());
        assert_eq!(a.0[..n], b.0[..n], "{what} (before the corruption)");
    } else {
        assert_eq!(a, b, "{what}");
    }
}

/// Cut points from the input's own bytes: deterministic for a given input.
fn cuts(input: &[u8], seed: u8) -> Vec<usize> {
    let mut at = 0usize;
    let mut out = Vec::new();
    for (i, b) in input.iter().enumerate().take(64) {
        at += usize::from(b.wrapping_add(seed).wrapping_mul(i as u8 | 1) % 97) + 1;
        out.push(at);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let raw_allowed = selector & 1 == 1;
    // Arbitrary bytes as a compressed answer: the same result however they are split.
    let whole = inflate(raw_allowed, rest, &[]);
    let split = inflate(raw_allowed, rest, &cuts(rest, selector));
    let bytewise: Vec<usize> = (1..rest.len().min(300)).collect();
    let bytes = inflate(raw_allowed, rest, &bytewise);
    // Where a decompression bomb is cut off (the ratio guard counts the compressed bytes
    // given so far) may depend on the splits; whether data inflates does not.
    let bomb = [&whole, &split, &bytes]
        .iter()
        .any(|r| r.1 == Err(InflateError::TooLarge));
    if !bomb {
        same_result(&whole, &split, "split changed the result");
        if rest.len() < 300 {
            same_result(&whole, &bytes, "byte-by-byte changed the result");
        }
    }

    // Arbitrary bytes compressed for real: they come back exactly.
    let level = selector >> 4 & 0x0f;
    let raw = miniz_oxide::deflate::compress_to_vec(rest, level.min(10));
    let zlib = miniz_oxide::deflate::compress_to_vec_zlib(rest, level.min(10));
    let mut gzip = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gzip.extend_from_slice(&raw);
    gzip.extend_from_slice(&[0; 8]);
    let plain = Ok(());
    assert_eq!(
        inflate(true, &raw, &cuts(&raw, selector)),
        (rest.to_vec(), plain)
    );
    for stream in [&zlib, &gzip] {
        for raw_allowed in [false, true] {
            let got = inflate(raw_allowed, stream, &cuts(stream, selector));
            assert_eq!(got, (rest.to_vec(), plain), "raw_allowed {raw_allowed}");
        }
    }
});
