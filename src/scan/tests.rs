use super::*;
use serde_json::Value;

/// serde_json's default verdict on a document. The crate enables `arbitrary_precision`
/// (for the profile rewrite), under which `Value` keeps numbers as text and no longer
/// rejects ones that overflow `f64`; a default build does. So every number token of an
/// accepted document (values of duplicate keys too, which `Value` drops) is also read as an
/// `f64`, which still goes through serde_json's default algorithm.
fn serde_value(doc: &[u8]) -> Result<Value, String> {
    let v = serde_json::from_slice::<Value>(doc).map_err(|e| e.to_string())?;
    if number_tokens(doc)
        .iter()
        .all(|n| serde_json::from_str::<f64>(n).is_ok())
    {
        Ok(v)
    } else {
        Err("number out of range".into())
    }
}

/// The number tokens of a valid JSON document: runs of number characters outside strings
/// that start with `-` or a digit (the `e` of `true` starts no run).
fn number_tokens(doc: &[u8]) -> Vec<&str> {
    let is_num = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let mut out = Vec::new();
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
            out.extend(std::str::from_utf8(&doc[start..i]));
        } else {
            i += 1;
        }
    }
    out
}

const CHAT: &[u8] = include_bytes!("../../tests/data/chat-request-model-last.json");

fn scan(body: &[u8]) -> Result<String, ScanError> {
    let mut s = ModelScanner::new();
    s.feed(body)?;
    s.finish().map(str::to_owned)
}

fn scan_in(body: &[u8], block: usize) -> Result<String, ScanError> {
    let mut s = ModelScanner::new();
    for piece in body.chunks(block.max(1)) {
        s.feed(piece)?;
    }
    s.finish().map(str::to_owned)
}

fn scan_split(body: &[u8], at: usize) -> Result<String, ScanError> {
    let (a, b) = body.split_at(at);
    let mut s = ModelScanner::new();
    s.feed(a)?;
    s.feed(b)?;
    s.finish().map(str::to_owned)
}

fn found(name: &str) -> Result<String, ScanError> {
    Ok(name.to_owned())
}

fn invalid_at(body: &[u8]) -> (u64, &'static str) {
    match scan(body) {
        Err(ScanError::InvalidJson { offset, reason }) => (offset, reason),
        other => panic!("expected InvalidJson for {:?}, got {other:?}", lossy(body)),
    }
}

fn is_invalid(r: &Result<String, ScanError>) -> bool {
    matches!(r, Err(ScanError::InvalidJson { .. }))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

// ---- where `model` is and is not ----

#[test]
fn finds_model_last_after_messages() {
    assert_eq!(scan(CHAT), found("qwen3-8b"));
}

#[test]
fn finds_model_first() {
    assert_eq!(scan(br#"{"model":"gpt-4","messages":[]}"#), found("gpt-4"));
}

#[test]
fn nested_model_in_messages_is_ignored() {
    let body = br#"{"messages":[{"role":"user","model":"evil"}],"model":"good"}"#;
    assert_eq!(scan(body), found("good"));
}

#[test]
fn nested_model_in_tools_is_ignored() {
    let body = br#"{"tools":[{"function":{"parameters":{"model":{"type":"string"}}}}]}"#;
    assert_eq!(scan(body), Err(ScanError::MissingModel));
}

#[test]
fn nested_model_object_value_is_ignored() {
    let body = br#"{"options":{"model":"x","model":"y"},"model":"z"}"#;
    assert_eq!(scan(body), found("z"));
}

#[test]
fn model_as_a_value_is_not_a_key() {
    assert_eq!(scan(br#"{"name":"model"}"#), Err(ScanError::MissingModel));
}

#[test]
fn escaped_key_is_model() {
    assert_eq!(scan(br#"{"m\u006fdel":"a"}"#), found("a"));
    assert_eq!(
        scan(br#"{"\u006d\u006F\u0064\u0065\u006c":"b"}"#),
        found("b")
    );
}

#[test]
fn keys_close_to_model_are_not_model() {
    for key in [
        "mode",
        "models",
        "Model",
        "model ",
        " model",
        "mod\\u0000el",
        "m",
    ] {
        let body = format!(r#"{{"{key}":"x"}}"#);
        assert_eq!(scan(body.as_bytes()), Err(ScanError::MissingModel), "{key}");
    }
}

#[test]
fn model_after_1mb_messages_array() {
    let mut body = b"{\"messages\":[".to_vec();
    while body.len() < 1 << 20 {
        body.extend_from_slice(
            br#"{"role":"user","content":"hello \"there\" \u00e9 caf\u00e9 "},"#,
        );
    }
    body.extend_from_slice(br#"{"role":"user","content":"end"}],"model":"late"}"#);
    assert_eq!(scan(&body), found("late"));
    assert_eq!(scan_in(&body, 16 * 1024), found("late"));
    assert_eq!(scan_in(&body, 7), found("late"));
}

// ---- duplicates ----

#[test]
fn duplicate_with_same_value() {
    let body = br#"{"model":"a","model":"a"}"#;
    assert_eq!(scan(body), Err(ScanError::DuplicateModel));
}

#[test]
fn duplicate_with_different_values() {
    let body = br#"{"model":"a","x":1,"model":"b"}"#;
    assert_eq!(scan(body), Err(ScanError::DuplicateModel));
}

#[test]
fn duplicate_null_then_string() {
    let body = br#"{"model":null,"model":"b"}"#;
    assert_eq!(scan(body), Err(ScanError::DuplicateModel));
}

#[test]
fn duplicate_spelled_with_escape() {
    let body = br#"{"model":"a","m\u006fdel":"b"}"#;
    assert_eq!(scan(body), Err(ScanError::DuplicateModel));
}

#[test]
fn duplicate_wins_over_invalid_model() {
    let body = br#"{"model":1,"model":"b"}"#;
    assert_eq!(scan(body), Err(ScanError::DuplicateModel));
}

#[test]
fn invalid_json_after_duplicate_wins() {
    let body = br#"{"model":"a","model":"b",}"#;
    assert_eq!(invalid_at(body), (25, "expected a key"));
}

#[test]
fn feed_returns_no_early_semantic_error() {
    let mut s = ModelScanner::new();
    assert_eq!(s.feed(br#"{"model":"a","model":"b""#), Ok(()));
    assert_eq!(s.feed(b"}"), Ok(()));
    assert_eq!(s.finish(), Err(ScanError::DuplicateModel));
}

// ---- model values ----

#[test]
fn model_number_is_invalid_model() {
    assert_eq!(scan(br#"{"model":42}"#), Err(ScanError::InvalidModel));
    assert_eq!(scan(br#"{"model":-1.5e3}"#), Err(ScanError::InvalidModel));
}

#[test]
fn model_object_is_invalid_model() {
    let body = br#"{"model":{"model":"x"}}"#;
    assert_eq!(scan(body), Err(ScanError::InvalidModel));
}

#[test]
fn model_array_is_invalid_model() {
    assert_eq!(scan(br#"{"model":["x"]}"#), Err(ScanError::InvalidModel));
}

#[test]
fn model_bool_is_invalid_model() {
    assert_eq!(scan(br#"{"model":true}"#), Err(ScanError::InvalidModel));
    assert_eq!(scan(br#"{"model":false}"#), Err(ScanError::InvalidModel));
}

#[test]
fn model_null_is_missing() {
    assert_eq!(scan(br#"{"model":null}"#), Err(ScanError::MissingModel));
}

#[test]
fn model_absent_is_missing() {
    assert_eq!(scan(br#"{"messages":[]}"#), Err(ScanError::MissingModel));
    assert_eq!(scan(b"{}"), Err(ScanError::MissingModel));
}

#[test]
fn model_empty_string_is_found() {
    assert_eq!(scan(br#"{"model":""}"#), found(""));
}

#[test]
fn escaped_model_value_is_unescaped() {
    assert_eq!(scan(br#"{"model":"gpt\u002d4"}"#), found("gpt-4"));
    assert_eq!(
        scan(br#"{"model":"Qwen\/Qwen3-8B"}"#),
        found("Qwen/Qwen3-8B")
    );
    assert_eq!(scan(br#"{"model":"a\"b\\c\n"}"#), found("a\"b\\c\n"));
    assert_eq!(
        scan(br#"{"model":"caf\u00e9 \ud83d\ude00"}"#),
        found("café 😀")
    );
}

#[test]
fn raw_utf8_model_value_is_kept() {
    assert_eq!(
        scan("{\"model\":\"モデル😀\"}".as_bytes()),
        found("モデル😀")
    );
}

#[test]
fn long_model_name_spills_to_heap() {
    let name = "n".repeat(INLINE_NAME_BYTES * 3 + 1);
    let body = format!(r#"{{"model":"{name}"}}"#);
    assert_eq!(scan(body.as_bytes()), found(&name));
    assert_eq!(scan_in(body.as_bytes(), 5), found(&name));
}

#[test]
fn model_name_over_cap_is_invalid_model() {
    let name = "n".repeat(MAX_MODEL_NAME_BYTES + 1);
    let body = format!(r#"{{"model":"{name}"}}"#);
    assert_eq!(scan(body.as_bytes()), Err(ScanError::InvalidModel));
    let name = "n".repeat(MAX_MODEL_NAME_BYTES);
    let body = format!(r#"{{"model":"{name}"}}"#);
    assert_eq!(scan(body.as_bytes()), found(&name));
}

// ---- not one valid JSON object ----

#[test]
fn empty_body_is_invalid() {
    assert_eq!(invalid_at(b""), (0, "empty body"));
    assert_eq!(invalid_at(b" \r\n\t"), (4, "empty body"));
}

#[test]
fn trailing_data_is_invalid() {
    assert_eq!(invalid_at(br#"{"model":"a"} x"#), (14, "trailing data"));
    assert_eq!(invalid_at(br#"{"model":"a"}{}"#), (13, "trailing data"));
    assert_eq!(invalid_at(b"{}\0"), (2, "trailing data"));
}

#[test]
fn not_an_object_is_invalid() {
    for body in [&b"[]"[..], b"\"model\"", b"1", b"null", b"true", b"x"] {
        assert_eq!(invalid_at(body), (0, "not an object"), "{}", lossy(body));
    }
    assert_eq!(invalid_at(b"  [{\"model\":\"a\"}]"), (2, "not an object"));
}

#[test]
fn truncated_body_is_invalid() {
    let body = br#"{"model":"a""#;
    assert_eq!(invalid_at(body), (12, "unexpected end of body"));
    assert_eq!(
        invalid_at(br#"{"model":"a"#),
        (11, "unexpected end of body")
    );
    assert_eq!(invalid_at(br#"{"a":1"#), (6, "unexpected end of body"));
}

#[test]
fn invalid_utf8_in_value_is_invalid() {
    assert_eq!(invalid_at(b"{\"a\":\"x\xffy\"}"), (7, "invalid UTF-8"));
    // Overlong encoding of '/'.
    assert_eq!(invalid_at(b"{\"a\":\"\xc0\xaf\"}"), (6, "invalid UTF-8"));
    // Encoded surrogate.
    assert_eq!(
        invalid_at(b"{\"a\":\"\xed\xa0\x80\"}"),
        (6, "invalid UTF-8")
    );
}

#[test]
fn invalid_utf8_in_key_is_invalid() {
    assert_eq!(invalid_at(b"{\"mod\xe9l\":\"a\"}"), (5, "invalid UTF-8"));
}

#[test]
fn truncated_utf8_before_quote_is_invalid() {
    assert_eq!(invalid_at(b"{\"a\":\"x\xe2\x82\"}"), (7, "invalid UTF-8"));
    assert_eq!(
        scan_split(b"{\"a\":\"x\xe2\x82\"}", 8),
        scan(b"{\"a\":\"x\xe2\x82\"}")
    );
}

#[test]
fn truncated_utf8_before_escape_is_invalid() {
    assert_eq!(invalid_at(b"{\"a\":\"x\xe2\\n\"}"), (7, "invalid UTF-8"));
}

#[test]
fn utf8_split_across_blocks_is_valid() {
    let body = "{\"model\":\"é日😀\"}".as_bytes();
    for at in 0..=body.len() {
        assert_eq!(scan_split(body, at), found("é日😀"), "split at {at}");
    }
}

#[test]
fn control_character_in_string_is_invalid() {
    assert_eq!(
        invalid_at(b"{\"a\":\"x\ny\"}"),
        (7, "control character in string")
    );
    assert_eq!(
        invalid_at(b"{\"a\x1f\":1}"),
        (3, "control character in string")
    );
    assert_eq!(scan(b"{\"a\":\"\x7f\"}"), Err(ScanError::MissingModel));
}

#[test]
fn lone_high_surrogate_is_invalid() {
    assert_eq!(invalid_at(br#"{"a":"x\ud800"}"#), (7, "lone surrogate"));
    assert_eq!(invalid_at(br#"{"a":"\ud800\n"}"#), (6, "lone surrogate"));
    assert_eq!(
        invalid_at(br#"{"a":"\ud800\u0041"}"#),
        (6, "lone surrogate")
    );
    assert_eq!(
        invalid_at(br#"{"a":"\ud800\ud800"}"#),
        (6, "lone surrogate")
    );
}

#[test]
fn lone_low_surrogate_is_invalid() {
    assert_eq!(invalid_at(br#"{"a":"\udc00"}"#), (6, "lone surrogate"));
    assert_eq!(invalid_at(br#"{"\udfff":1}"#), (2, "lone surrogate"));
}

#[test]
fn bad_escapes_are_invalid() {
    assert_eq!(invalid_at(br#"{"a":"\x"}"#), (7, "invalid escape"));
    assert_eq!(invalid_at(br#"{"a":"\u12g4"}"#), (10, "invalid \\u escape"));
    assert_eq!(invalid_at(br#"{"a":"\'"}"#), (7, "invalid escape"));
}

#[test]
fn whitespace_variants_are_accepted() {
    let body =
        b" \t\r\n{ \t\r\n\"model\" \t\r\n: \t\r\n\"a\" \t\r\n, \"x\" : [ 1 , { } ] \t\r\n} \t\r\n";
    assert_eq!(scan(body), found("a"));
}

#[test]
fn non_json_whitespace_is_invalid() {
    assert_eq!(invalid_at(b"\x0c{}"), (0, "not an object"));
    assert_eq!(invalid_at(b"{\x0b}"), (1, "expected a key or '}'"));
    assert_eq!(invalid_at("{}\u{a0}".as_bytes()), (2, "trailing data"));
}

#[test]
fn literals_must_be_exact() {
    assert_eq!(invalid_at(br#"{"a":nul}"#), (8, "invalid literal"));
    assert_eq!(invalid_at(br#"{"a":True}"#), (5, "expected a value"));
    assert_eq!(
        invalid_at(br#"{"a":falsey}"#),
        (10, "expected ',' or a closing bracket")
    );
    assert_eq!(
        scan(br#"{"a":[true,false,null]}"#),
        Err(ScanError::MissingModel)
    );
}

#[test]
fn number_grammar_is_enforced() {
    for ok in [
        "0", "-0", "1", "-12", "3.14", "1e5", "1E+5", "2e-3", "0.0e0", "-0.5E-01",
    ] {
        let body = format!(r#"{{"a":{ok}}}"#);
        assert_eq!(scan(body.as_bytes()), Err(ScanError::MissingModel), "{ok}");
    }
    for bad in [
        "01", "+1", "-", "1.", ".5", "1e", "1e+", "-a", "1.e5", "0x1", "--1", "1ee5",
    ] {
        let body = format!(r#"{{"a":{bad}}}"#);
        assert!(is_invalid(&scan(body.as_bytes())), "{bad}");
    }
}

#[test]
fn numbers_overflowing_f64_are_invalid_like_serde_json() {
    for (n, ok) in [
        ("1e308", true),
        ("1.7976931348623157e308", true),
        ("1e309", false),
        ("-1e400", false),
        ("1e-400", true),
        ("0e999999999999", true),
        ("1e999999999999", false),
        ("1e-999999999999", true),
        ("18446744073709551615", true),
        ("18446744073709551616", true),
    ] {
        let body = format!(r#"{{"a":{n}}}"#);
        assert_eq!(serde_value(body.as_bytes()).is_ok(), ok, "serde on {n}");
        assert_eq!(!is_invalid(&scan(body.as_bytes())), ok, "{n}");
    }
    let huge = format!(r#"{{"a":1{}}}"#, "0".repeat(400));
    assert!(serde_value(huge.as_bytes()).is_err());
    assert_eq!(invalid_at(huge.as_bytes()), (5, "number out of range"));
}

#[test]
fn structure_errors_are_invalid() {
    assert_eq!(invalid_at(br#"{"a":1,}"#), (7, "expected a key"));
    assert_eq!(invalid_at(br#"{"a":[1,]}"#), (8, "expected a value"));
    assert_eq!(
        invalid_at(br#"{"a":[1}"#),
        (7, "mismatched closing bracket")
    );
    assert_eq!(invalid_at(br#"{"a" 1}"#), (5, "expected ':'"));
    assert_eq!(invalid_at(br#"{a:1}"#), (1, "expected a key or '}'"));
    assert_eq!(
        invalid_at(br#"{"a":1 "b":2}"#),
        (7, "expected ',' or a closing bracket")
    );
}

#[test]
fn depth_limit_matches_serde_json() {
    let nest = |n: usize| {
        let mut s = "{\"a\":".to_string();
        s.push_str(&"[".repeat(n - 1));
        s.push_str(&"]".repeat(n - 1));
        s.push('}');
        s
    };
    let ok = nest(MAX_DEPTH as usize);
    assert!(serde_value(ok.as_bytes()).is_ok());
    assert_eq!(scan(ok.as_bytes()), Err(ScanError::MissingModel));
    let deep = nest(MAX_DEPTH as usize + 1);
    assert!(serde_value(deep.as_bytes()).is_err());
    assert_eq!(invalid_at(deep.as_bytes()), (5 + 126, "nesting too deep"));
}

#[test]
fn error_is_final_and_repeated() {
    let mut s = ModelScanner::new();
    let e = s.feed(b"{x").unwrap_err();
    assert_eq!(s.feed(b"\"model\":\"a\"}"), Err(e.clone()));
    assert_eq!(s.finish(), Err(e));
}

#[test]
fn error_offset_counts_earlier_blocks() {
    let mut s = ModelScanner::new();
    s.feed(b"{\"a\":").unwrap();
    s.feed(b"  ").unwrap();
    assert_eq!(s.feed(b"?"), Err(invalid(7, "expected a value")));
}

// ---- split invariance ----

fn split_cases() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        &br#"{"model":"gpt\u002d4","x":[1,2.5e-3,{"model":"n"}],"y":null}"#[..],
        br#"{"m\u006fdel":"caf\u00e9 \ud83d\ude00 \/ \\ \"","t":true,"f":false}"#,
        "{\"model\":\"モデル😀\",\"é\":\"日本\"}".as_bytes(),
        br#"{"model":"a","model":"b"}"#,
        br#"{"model":null,"z":-0.0E+00}"#,
        br#"{"model":12345678901234567890123}"#,
        br#"{"a":1e400,"model":"x"}"#,
        b"{\"a\":\"x\xe2\x82\"}",
        b"{\"a\":\"\xf0\x9f\x98\"}",
        br#"{"a":"\ud83d"}"#,
        br#"{"a":"\ud83d\u0041"}"#,
        br#"{"a":[1,]}"#,
        b" {\"model\":\"x\"} \n",
        b"{\"model\":\"x\"} x",
        b"{\"a\":\"\x01\"}",
        b"",
        b"[]",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    v.push(CHAT.to_vec());
    v
}

#[test]
fn two_piece_splits_agree_with_whole() {
    for body in split_cases() {
        let whole = scan(&body);
        for at in 0..=body.len() {
            assert_eq!(
                scan_split(&body, at),
                whole,
                "{} split at {at}",
                lossy(&body)
            );
        }
    }
}

#[test]
fn byte_by_byte_agrees_with_whole() {
    for body in split_cases() {
        assert_eq!(scan_in(&body, 1), scan(&body), "{}", lossy(&body));
    }
}

// ---- differential property test against serde_json ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const KEYS: &[&str] = &[
    "model",
    "m\\u006fdel",
    "\\u006d\\u006f\\u0064\\u0065\\u006c",
    "mod\\u0065l",
    "messages",
    "mode",
    "models",
    "Model",
    "",
    "モデル",
    "model\\u0000",
    "tools",
];
const MODEL_SPELLINGS: usize = 4;

const STRING_PIECES: &[&str] = &[
    "a",
    "gpt-4",
    " ",
    "\\n",
    "\\\"",
    "\\\\",
    "\\/",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\u002d",
    "é",
    "日本",
    "😀",
    "\\t",
    "\\u0000",
    "qwen3-8b",
    "\\uD834\\uDD1E",
];

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-12",
    "3.14",
    "1e10",
    "1E+2",
    "2e-3",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e309",
    "1.8e308",
    "-1e400",
    "0e999999999999",
    "123456789012345678901234567890",
    "0.0000001e-400",
    "17976931348623157e292",
    "17976931348623159e292",
    "1844674407370955161.6e290",
];

const WS: &[&str] = &["", "", "", " ", "\n", "\t", "\r\n  "];

fn gen_string(rng: &mut Rng, out: &mut String) {
    out.push('"');
    for _ in 0..rng.below(5) {
        out.push_str(rng.pick(STRING_PIECES));
    }
    out.push('"');
}

fn gen_value(rng: &mut Rng, depth: usize, out: &mut String) {
    let kind = if depth > 4 {
        rng.below(4)
    } else {
        rng.below(6)
    };
    match kind {
        0 => gen_string(rng, out),
        1 => out.push_str(rng.pick(NUMBERS)),
        2 => out.push_str(rng.pick(&["true", "false", "null"])),
        3 => gen_string(rng, out),
        4 => {
            out.push('[');
            for i in 0..rng.below(4) {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(rng.pick(WS));
                gen_value(rng, depth + 1, out);
                out.push_str(rng.pick(WS));
            }
            out.push(']');
        }
        _ => {
            gen_object(rng, depth + 1, out);
        }
    }
}

/// Writes an object; returns how many keys spell `model`.
fn gen_object(rng: &mut Rng, depth: usize, out: &mut String) -> usize {
    let mut models = 0;
    out.push('{');
    for i in 0..rng.below(5) {
        if i > 0 {
            out.push(',');
        }
        out.push_str(rng.pick(WS));
        let k = rng.below(KEYS.len());
        if k < MODEL_SPELLINGS {
            models += 1;
        }
        out.push('"');
        out.push_str(KEYS[k]);
        out.push('"');
        out.push_str(rng.pick(WS));
        out.push(':');
        out.push_str(rng.pick(WS));
        if k < MODEL_SPELLINGS && rng.chance(70) {
            gen_string(rng, out);
        } else {
            gen_value(rng, depth, out);
        }
        out.push_str(rng.pick(WS));
    }
    out.push('}');
    models
}

const MUTATION_BYTES: &[u8] = &[
    b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b' ', 0, 0x1f, 0x7f, 0x80, 0xc3, 0xe2, 0xed,
    0xf0, 0xff, b'u', b'n', b'0', b'-', b'.', b'e', b'+', b'd', b'8',
];

fn mutate(rng: &mut Rng, doc: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(doc.len() + 1);
        match rng.below(5) {
            0 if at < doc.len() => doc[at] = rng.pick(MUTATION_BYTES),
            1 => doc.insert(at, rng.pick(MUTATION_BYTES)),
            2 if at < doc.len() => {
                doc.remove(at);
            }
            3 => doc.truncate(at),
            _ => {
                let end = (at + rng.below(8)).min(doc.len());
                let piece = doc[at..end].to_vec();
                let to = rng.below(doc.len() + 1);
                doc.splice(to..to, piece);
            }
        }
    }
}

/// serde_json's verdict: None when it rejects the body or the root is not an object; else
/// whether the key is there, and the model of its (last) value.
fn oracle(doc: &[u8]) -> Option<(bool, Result<String, ScanError>)> {
    match serde_value(doc) {
        Ok(Value::Object(map)) => Some((
            map.contains_key("model"),
            match map.get("model") {
                None | Some(Value::Null) => Err(ScanError::MissingModel),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(ScanError::InvalidModel),
            },
        )),
        _ => None,
    }
}

fn check_against_oracle(doc: &[u8], model_keys: Option<usize>) {
    let got = scan(doc);
    let pieces = {
        let mut s = ModelScanner::new();
        let mut r = Ok(());
        for p in doc.chunks(3) {
            r = s.feed(p);
            if r.is_err() {
                break;
            }
        }
        r.and_then(|()| s.finish().map(str::to_owned))
    };
    assert_eq!(pieces, got, "split changed the result for {}", lossy(doc));
    match oracle(doc) {
        None => assert!(
            is_invalid(&got),
            "serde rejects, we said {got:?}: {}",
            lossy(doc)
        ),
        Some((has_key, want)) => match model_keys {
            Some(n) if n >= 2 => {
                assert_eq!(got, Err(ScanError::DuplicateModel), "{}", lossy(doc))
            }
            Some(_) => assert_eq!(got, want, "{}", lossy(doc)),
            // A mutated document: its keys are not counted here (serde_json's map keeps
            // the last duplicate; the fuzz target counts them exactly). The key must exist.
            None if got == Err(ScanError::DuplicateModel) => assert!(has_key, "{}", lossy(doc)),
            None => assert_eq!(got, want, "{}", lossy(doc)),
        },
    }
}

#[test]
fn agrees_with_serde_json_on_generated_documents() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut outcomes = [0usize; 4];
    for _ in 0..3000 {
        let mut text = String::new();
        text.push_str(rng.pick(WS));
        let models = gen_object(&mut rng, 1, &mut text);
        text.push_str(rng.pick(WS));
        check_against_oracle(text.as_bytes(), Some(models));
        match scan(text.as_bytes()) {
            Ok(_) => outcomes[0] += 1,
            Err(ScanError::DuplicateModel) => outcomes[1] += 1,
            Err(ScanError::InvalidJson { .. }) => outcomes[2] += 1,
            Err(_) => outcomes[3] += 1,
        }
    }
    // Every outcome must be exercised (found, duplicate, invalid, missing/invalid model).
    assert!(outcomes.iter().all(|&n| n > 200), "{outcomes:?}");
}

#[test]
fn agrees_with_serde_json_on_mutated_documents() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut invalid_seen = 0;
    for _ in 0..6000 {
        let mut text = String::new();
        gen_object(&mut rng, 1, &mut text);
        let mut doc = text.into_bytes();
        mutate(&mut rng, &mut doc);
        if is_invalid(&scan(&doc)) {
            invalid_seen += 1;
        }
        check_against_oracle(&doc, None);
    }
    // The mutations must exercise both sides.
    assert!(invalid_seen > 1000 && invalid_seen < 5900, "{invalid_seen}");
}

// ---- media content parts ----

fn media_in(body: &[u8], block: usize) -> (bool, Result<String, ScanError>) {
    let mut s = ModelScanner::with_media();
    for piece in body.chunks(block.max(1)) {
        if s.feed(piece).is_err() {
            break;
        }
    }
    let seen = s.saw_media();
    (seen, s.finish().map(str::to_owned))
}

/// The verdict for a body, checked to be the same whole and byte by byte.
fn media(body: &str) -> bool {
    let whole = media_in(body.as_bytes(), usize::MAX);
    assert_eq!(media_in(body.as_bytes(), 1), whole, "{body}");
    assert_eq!(
        whole.1,
        scan(body.as_bytes()),
        "the model verdict is unchanged"
    );
    whole.0
}

#[test]
fn media_parts_are_found() {
    for t in MEDIA_PART_TYPES {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"text","text":"hi"}},{{"type":"{t}","x":{{}}}}]}}]}}"#
        );
        assert!(media(&body), "{t}");
    }
    // The Responses API: `input[].content[]`; `type` before or after other keys, escaped.
    assert!(media(
        r#"{"input":[{"role":"user","content":[{"image_url":"data:...","type":"input_image"}]}],"model":"m"}"#
    ));
    assert!(media(
        r#"{"messages":[{"content":"a"},{"content":[{"type":"image\u005furl"}]}],"model":"m"}"#
    ));
}

#[test]
fn text_only_and_lookalikes_are_not_media() {
    for body in [
        r#"{"model":"m","messages":[{"role":"user","content":"an image_url"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"image_url"}]}]}"#,
        // `type` elsewhere: a tool, the response format, a message's own type, nested deeper.
        r#"{"model":"m","tools":[{"type":"file"}],"messages":[]}"#,
        r#"{"model":"m","response_format":{"type":"image"},"messages":[]}"#,
        r#"{"model":"m","messages":[{"type":"image_url","content":[]}]}"#,
        r#"{"model":"m","messages":[{"content":[{"x":{"type":"image_url"}}]}]}"#,
        r#"{"model":"m","messages":[{"content":[[{"type":"image_url"}]]}]}"#,
        r#"{"model":"m","messages":[{"tool_calls":[{"type":"file"}]}]}"#,
        r#"{"model":"m","other":[{"content":[{"type":"image_url"}]}]}"#,
        r#"{"model":"m","messages":[{"content":[{"type":"image_url_x"}]}]}"#,
        r#"{"model":"m","messages":[{"content":[{"type":["image_url"]}]}]}"#,
        r#"{"model":"m","messages":[{"content":[{"kind":"image_url"}]}]}"#,
    ] {
        assert!(!media(body), "{body}");
    }
}

#[test]
fn media_path_is_left_when_containers_close() {
    // After the messages array closes, a later top-level array is not on the path.
    assert!(!media(
        r#"{"messages":[{"content":[]}],"x":[{"content":[{"type":"file"}]}],"model":"m"}"#
    ));
    assert!(media(
        r#"{"messages":[{"content":[{"type":"text"}]},{"role":"u","content":[{"a":[1,{"b":2}],"type":"file"}]}],"model":"m"}"#
    ));
}

#[test]
fn media_off_by_default() {
    let body = br#"{"model":"m","messages":[{"content":[{"type":"image_url"}]}]}"#;
    let mut s = ModelScanner::new();
    s.feed(body).unwrap();
    assert!(!s.saw_media());
    assert_eq!(s.finish(), Ok("m"));
}

#[test]
fn media_scan_agrees_on_generated_documents() {
    // The media flag never changes the model verdict and is split-invariant.
    for body in split_cases() {
        let whole = media_in(&body, usize::MAX);
        assert_eq!(whole.1, scan(&body), "{}", lossy(&body));
        assert_eq!(media_in(&body, 1), whole, "{}", lossy(&body));
        assert_eq!(media_in(&body, 7), whole, "{}", lossy(&body));
    }
}
