//! Defends PITFALLS.md 8 and 13: the chunked observer decides where a request body ends (and
//! so where the next pipelined request starts). It must give the same answer (bytes consumed,
//! done, error) however the bytes are split across reads, and a well-formed chunked stream
//! built from arbitrary chunk sizes must end exactly after its terminator, not before, not
//! after. Chunk sizes past `u64::MAX` (more than 16 significant hex digits) are rejected as
//! `SizeOverflow`, never wrapped into a small size that would misplace the body end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::h1::{BodyTracker, ChunkedError, RequestFraming};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    consumed: usize,
    done: bool,
    error: Option<ChunkedError>,
    payload: Vec<u8>,
}

/// Feeds `input` in pieces ending at `cuts`, stopping where the body ends or fails.
fn track(input: &[u8], cuts: &[usize]) -> Outcome {
    let mut t = BodyTracker::for_request(RequestFraming::Chunked);
    let mut payload = Vec::new();
    let mut consumed = 0;
    let mut error = None;
    let mut start = 0;
    let ends = cuts.iter().copied().chain(std::iter::once(input.len()));
    for end in ends {
        let end = end.clamp(start, input.len());
        let piece = &input[start..end];
        match t.feed(piece, &mut |d: &[u8]| payload.extend_from_slice(d)) {
            Ok(n) => {
                assert!(n <= piece.len(), "claimed more than it was given");
                consumed += n;
                if n < piece.len() {
                    assert!(t.is_done(), "stopped early without being done");
                    break;
                }
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        if t.is_done() {
            break;
        }
        start = end;
    }
    // An error ends the stream; how many bytes were counted before it may depend on splits.
    if error.is_some() {
        consumed = 0;
    }
    Outcome {
        consumed,
        done: t.is_done(),
        error,
        payload,
    }
}

fuzz_target!(|data: &[u8]| {
    let (ctl, input) = data.split_at(data.len().min(2));

    // 1. Whole vs split, on arbitrary bytes.
    let whole = track(input, &[]);
    let a = ctl.first().copied().unwrap_or(0) as usize % (input.len() + 1);
    let step = ctl.get(1).copied().unwrap_or(1) as usize % 7 + 1;
    assert_eq!(track(input, &[a]), whole, "split at {a}");
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    assert_eq!(track(input, &cuts), whole, "pieces of {step}");

    // 2. A well-formed stream from the input's bytes as chunk sizes, then a next request.
    let mut stream = Vec::new();
    let mut payload = Vec::new();
    for (i, &size) in input.iter().take(64).enumerate() {
        if size == 0 {
            continue;
        }
        let size = usize::from(size);
        if i % 3 == 0 {
            stream.extend_from_slice(format!("{size:X};ext=1\r\n").as_bytes());
        } else {
            stream.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        }
        let chunk: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
        stream.extend_from_slice(&chunk);
        stream.extend_from_slice(b"\r\n");
        payload.extend_from_slice(&chunk);
    }
    stream.extend_from_slice(b"0\r\n\r\n");
    let body_len = stream.len();
    stream.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    for cuts in [
        vec![],
        vec![a % (body_len + 1)],
        (step..stream.len()).step_by(step).collect(),
    ] {
        let got = track(&stream, &cuts);
        assert_eq!(got.error, None, "valid stream rejected (cuts {cuts:?})");
        assert!(got.done, "valid stream not done (cuts {cuts:?})");
        assert_eq!(got.consumed, body_len, "body end misplaced (cuts {cuts:?})");
        assert_eq!(got.payload, payload, "payload differs (cuts {cuts:?})");
    }

    // 3. Sizes near and past u64::MAX: 16 hex digits are at most u64::MAX (accepted as a size,
    // the body then simply never ends here); 17 or more digits overflow and must be refused,
    // whatever digits and splits (a wrapped size would let a client choose the body end).
    let digits: Vec<u8> = input
        .iter()
        .take(24)
        .map(|b| b"0123456789abcdefABCDEF"[usize::from(*b) % 22])
        .collect();
    let mut line = b"1".to_vec(); // a leading non-zero digit: length = significance
    line.extend_from_slice(&digits);
    line.extend_from_slice(b"\r\n");
    let sig = 1 + digits.len();
    for cuts in [vec![], (step..line.len()).step_by(step).collect()] {
        let got = track(&line, &cuts);
        if sig > 16 {
            assert_eq!(
                got.error,
                Some(ChunkedError::SizeOverflow),
                "{sig}-digit size not refused (cuts {cuts:?})"
            );
        } else {
            assert_eq!(got.error, None, "{sig}-digit size refused (cuts {cuts:?})");
            assert!(!got.done, "a huge chunk cannot end the body");
        }
    }
});
