//! Defends PITFALLS.md 21: the model scanner must read a body exactly as the upstream's JSON
//! parser does. Two properties on every input:
//! 1. split invariance: the verdict (model, error kind, error offset) is the same whatever
//!    block boundaries the body arrives in (the first input bytes choose the splits); the
//!    media-detecting scanner gives the same verdict, and whether it saw a media part does
//!    not depend on the splits either;
//! 2. the serde_json oracle: the body is rejected as InvalidJson exactly when
//!    `serde_json::from_slice::<Value>` of a default build rejects it (or its root is not an
//!    object; see `numbers_in_range` for `arbitrary_precision`); otherwise
//!    the model, DuplicateModel, InvalidModel and MissingModel match what serde_json sees
//!    (duplicate top-level `model` keys counted with a visitor, since serde_json's Map keeps
//!    only the last).
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use modelgate::scan::{ModelScanner, ScanError, MAX_MODEL_NAME_BYTES};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

fn scan(pieces: &[&[u8]]) -> Result<String, ScanError> {
    let mut s = ModelScanner::new();
    for p in pieces {
        s.feed(p)?;
    }
    s.finish().map(str::to_owned)
}

fn scan_blocks(body: &[u8], block: usize) -> Result<String, ScanError> {
    let pieces: Vec<&[u8]> = body.chunks(block.max(1)).collect();
    scan(&pieces)
}

/// Every top-level `model` value, in order, parsed with exactly `Value`'s rules.
struct TopLevelModels(Vec<Value>);

impl<'de> Deserialize<'de> for TopLevelModels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevelModels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevelModels, A::Error> {
                let mut models = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<Value>()?;
                    if key == "model" {
                        models.push(value);
                    }
                }
                Ok(TopLevelModels(models))
            }
        }
        d.deserialize_map(V)
    }
}

/// modelgate enables serde_json's `arbitrary_precision` (profile rewrites keep numbers as
/// written), under which `Value` no longer rejects numbers that overflow `f64`; a default
/// build does. Every number token is therefore also read as an `f64` (serde_json's default
/// algorithm still runs for that).
fn numbers_in_range(doc: &[u8]) -> bool {
    let is_num = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let (mut i, mut in_str) = (0, false);
    while i < doc.len() {
        let b = doc[i];
        if in_str {
            match b {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
            i += 1;
        } else if b == b'"' {
            in_str = true;
            i += 1;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < doc.len() && is_num(doc[i]) {
                i += 1;
            }
            let token = std::str::from_utf8(&doc[start..i]).unwrap_or("x");
            if serde_json::from_str::<f64>(token).is_err() {
                return false;
            }
        } else {
            i += 1;
        }
    }
    true
}

fn expected(body: &[u8]) -> Option<Result<String, ScanError>> {
    let top = serde_json::from_slice::<TopLevelModels>(body).ok()?;
    if !numbers_in_range(body) {
        return None;
    }
    Some(match top.0.as_slice() {
        [] | [Value::Null] => Err(ScanError::MissingModel),
        [Value::String(s)] if s.len() > MAX_MODEL_NAME_BYTES => Err(ScanError::InvalidModel),
        [Value::String(s)] => Ok(s.clone()),
        [_] => Err(ScanError::InvalidModel),
        _ => Err(ScanError::DuplicateModel),
    })
}

fuzz_target!(|data: &[u8]| {
    let (ctl, body) = data.split_at(data.len().min(3));
    let whole = scan(&[body]);

    // 1. Split invariance.
    let c = |i: usize| ctl.get(i).copied().unwrap_or(0) as usize;
    let a = c(0) % (body.len() + 1);
    let b = a + c(1) % (body.len() - a + 1);
    let three = scan(&[&body[..a], &body[a..b], &body[b..]]);
    assert_eq!(three, whole, "split at {a} and {b}");
    assert_eq!(
        scan_blocks(body, c(2) % 17 + 1),
        whole,
        "blocks of {}",
        c(2) % 17 + 1
    );
    assert_eq!(scan_blocks(body, 1), whole, "byte by byte");

    // 1b. The media detector (`routeMedia`) never changes the verdict, and what it sees does
    // not depend on block boundaries either.
    let media = |pieces: &[&[u8]]| {
        let mut s = ModelScanner::with_media();
        for p in pieces {
            if s.feed(p).is_err() {
                break;
            }
        }
        let seen = s.saw_media();
        (seen, s.finish().map(str::to_owned))
    };
    let media_whole = media(&[body]);
    assert_eq!(media_whole.1, whole, "the media scanner's verdict");
    assert_eq!(media(&[&body[..a], &body[a..b], &body[b..]]), media_whole, "media split");
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(media(&bytes), media_whole, "media byte by byte");

    // 2. The serde_json oracle.
    let value = serde_json::from_slice::<Value>(body);
    match expected(body) {
        None => {
            assert!(
                matches!(whole, Err(ScanError::InvalidJson { .. })),
                "serde_json rejects (or not an object: {}), scanner said {whole:?}",
                matches!(value, Ok(ref v) if !v.is_object()),
            );
        }
        Some(want) => {
            assert!(value.is_ok(), "visitor and Value disagree");
            assert_eq!(whole, want);
        }
    }
});
