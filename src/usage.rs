//! Token counts read from a response body as it streams past (SPEC.md §9).
//!
//! Owns: finding the prompt and completion token counts in an upstream response body without
//! buffering, copying or changing it. The caller feeds the de-chunked payload bytes exactly as
//! they are forwarded, split anywhere; the scanner keeps only a few bytes of state.
//!
//! # What counts
//! The last integer value seen of a prompt key (`"prompt_tokens"`, `"input_tokens"`,
//! `"prompt_eval_count"`) is the prompt count, and the last of a completion key
//! (`"completion_tokens"`, `"output_tokens"`, `"eval_count"`) the completion count. "Last"
//! covers every backend style at once:
//! - OpenAI: `usage` in the JSON body, or in the last SSE chunk before `[DONE]`;
//! - Anthropic: `message_start.message.usage`, then `message_delta.usage`, which is
//!   cumulative, so the later value replaces the earlier one (SPEC.md §10);
//! - Ollama: `prompt_eval_count` / `eval_count` on the last NDJSON line.
//!
//! A key is a JSON string outside any other string, compared whole (so
//! `"cache_creation_input_tokens"` is not `input_tokens`) and byte for byte (a key spelled with
//! escapes is not recognised; no backend writes one), followed by optional JSON whitespace,
//! `:`, optional whitespace and an unsigned integer. A `null`, negative, fractional or
//! exponent value, and an integer that does not fit in `u64`, are ignored; a number counts once
//! a byte after it shows it is complete (every JSON document ends with `}` or `]`).
//!
//! # Why a string tracker
//! A model's output is a JSON string, and it can contain `"prompt_tokens": 99` (escaped on the
//! wire as `\"prompt_tokens\": 99`). Looking only at the byte before a quote is not enough
//! (`\\"` is an escaped backslash followed by a real quote), so the scanner tracks whether it
//! is inside a string, escapes included, and looks for keys only outside strings. The tracker
//! runs across the whole stream, which is right for a JSON body, SSE `data:` lines and NDJSON
//! alike, as each carries well-formed JSON documents. A raw line feed cannot occur inside a
//! JSON string, so one ends any string: a stray quote on a non-JSON line (an SSE comment, a
//! truncated event) cannot hide the rest of the stream.
//!
//! # Speed
//! Outside strings the scanner jumps from quote to quote with `memchr` (embedding vectors are
//! long runs of numbers with no quotes); inside strings it jumps with `memchr3` to the next
//! `"`, `\` or line feed. Only the few bytes after a recognised key are looked at one by one.
//! Nothing allocates.
//!
//! # Compressed answers and timing
//! [`AnswerUsage`] (`usage/answer.rs`) is what a connection holds per answer: it feeds this
//! scanner the body as it is or, for gzip and deflate, through an [`Inflater`]
//! (`usage/inflate.rs`) on the side; it names why counts could not be read ([`Unread`]), and
//! times a streamed answer's events for the generation rate.

mod answer;
mod inflate;

pub use answer::{AnswerUsage, Unread};
pub use inflate::{InflateError, Inflater, MAX_RATIO, RATIO_HEADROOM};

use memchr::{memchr, memchr3};

/// The longest key we look for (`completion_tokens`, `prompt_eval_count`).
const MAX_KEY: usize = 17;

/// `key_len` once the current string can no longer be a key we want (too long, or escaped).
const NOT_A_KEY: u8 = u8::MAX;

const PROMPT_KEYS: [&[u8]; 3] = [b"prompt_tokens", b"input_tokens", b"prompt_eval_count"];
const COMPLETION_KEYS: [&[u8]; 3] = [b"completion_tokens", b"output_tokens", b"eval_count"];

/// Which count a recognised key sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Prompt,
    Completion,
}

/// Where the scanner is; each state holds what it needs to resume at any byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between JSON tokens (or in non-JSON text such as `data: `): looking for `"`.
    Outside,
    /// Inside a string; `escaped` after a `\` whose escaped byte has not arrived yet. The
    /// string's first bytes are collected in `UsageScanner::key`.
    InString { escaped: bool },
    /// A string that is one of our keys just closed: whitespace, then `:` makes it a key.
    AfterKey(Kind),
    /// After the `:`: whitespace, then the digits of the value.
    BeforeValue(Kind),
    /// In the digits of the value; `overflow` once it no longer fits in `u64`.
    Digits {
        kind: Kind,
        value: u64,
        overflow: bool,
    },
}

/// Incremental token-count finder for one response body. See the module docs.
#[derive(Debug, Clone)]
pub struct UsageScanner {
    state: State,
    /// The first bytes of the current string, while it can still be one of our keys.
    key: [u8; MAX_KEY],
    /// How many bytes of `key` are used, or [`NOT_A_KEY`].
    key_len: u8,
    prompt: Option<u64>,
    completion: Option<u64>,
}

/// The state after a string that closed: waiting for `:` if it is one of our keys.
fn key_state(key: &[u8]) -> State {
    if PROMPT_KEYS.contains(&key) {
        State::AfterKey(Kind::Prompt)
    } else if COMPLETION_KEYS.contains(&key) {
        State::AfterKey(Kind::Completion)
    } else {
        State::Outside
    }
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageScanner {
    pub fn new() -> UsageScanner {
        UsageScanner {
            state: State::Outside,
            key: [0; MAX_KEY],
            key_len: 0,
            prompt: None,
            completion: None,
        }
    }

    /// Feeds the next payload bytes (already de-chunked) of a response body, split anywhere.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = match self.state {
                State::Outside => self.outside(rest),
                State::InString { escaped } => self.in_string(rest, escaped),
                State::AfterKey(kind) => self.after_key(rest[0], kind),
                State::BeforeValue(kind) => self.before_value(rest[0], kind),
                State::Digits {
                    kind,
                    value,
                    overflow,
                } => self.digits(rest[0], kind, value, overflow),
            };
            rest = &rest[used..];
        }
    }

    /// The last prompt (input) token count seen, if any.
    pub fn prompt_tokens(&self) -> Option<u64> {
        self.prompt
    }

    /// The last completion (output) token count seen, if any.
    pub fn completion_tokens(&self) -> Option<u64> {
        self.completion
    }

    /// Skips to the next opening quote. Returns the bytes consumed.
    fn outside(&mut self, rest: &[u8]) -> usize {
        match memchr(b'"', rest) {
            Some(i) => {
                self.key_len = 0;
                self.state = State::InString { escaped: false };
                i + 1
            }
            None => rest.len(),
        }
    }

    /// Skips string bytes, collecting the first few in case the string is a key.
    fn in_string(&mut self, rest: &[u8], escaped: bool) -> usize {
        if escaped {
            // Whatever was escaped, a key we want has no escapes. `\u` hex digits that follow
            // are plain string bytes; only a raw line feed (invalid JSON) matters here.
            self.key_len = NOT_A_KEY;
            self.state = if rest[0] == b'\n' {
                State::Outside
            } else {
                State::InString { escaped: false }
            };
            return 1;
        }
        match memchr3(b'"', b'\\', b'\n', rest) {
            Some(i) => {
                let part = &rest[..i];
                self.state = match rest[i] {
                    // The whole string is in view: compare it where it is, no copy.
                    b'"' if self.key_len == 0 => key_state(part),
                    b'"' => {
                        self.collect(part);
                        if self.key_len == NOT_A_KEY {
                            State::Outside
                        } else {
                            key_state(&self.key[..usize::from(self.key_len)])
                        }
                    }
                    // An escaped string is not a key we want (see `in_string`'s start).
                    b'\\' => State::InString { escaped: true },
                    _ => State::Outside,
                };
                i + 1
            }
            None => {
                self.collect(rest);
                rest.len()
            }
        }
    }

    /// Appends string bytes to the key candidate while it can still be a key.
    fn collect(&mut self, part: &[u8]) {
        if self.key_len == NOT_A_KEY {
            return;
        }
        let at = usize::from(self.key_len);
        match self.key.get_mut(at..at + part.len()) {
            Some(dst) => {
                dst.copy_from_slice(part);
                // at + len <= MAX_KEY < NOT_A_KEY, so the cast is exact.
                self.key_len = (at + part.len()) as u8;
            }
            None => self.key_len = NOT_A_KEY,
        }
    }

    fn after_key(&mut self, b: u8, kind: Kind) -> usize {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => 1,
            b':' => {
                self.state = State::BeforeValue(kind);
                1
            }
            // Not a key after all (a string value in an array, say): look at `b` afresh.
            _ => {
                self.state = State::Outside;
                0
            }
        }
    }

    fn before_value(&mut self, b: u8, kind: Kind) -> usize {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => 1,
            b'0'..=b'9' => {
                self.state = State::Digits {
                    kind,
                    value: u64::from(b - b'0'),
                    overflow: false,
                };
                1
            }
            // `null`, a negative number, a string or an object: not a count. Look at `b`
            // afresh, as it may open a string.
            _ => {
                self.state = State::Outside;
                0
            }
        }
    }

    fn digits(&mut self, b: u8, kind: Kind, value: u64, overflow: bool) -> usize {
        if b.is_ascii_digit() {
            let next = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')));
            self.state = State::Digits {
                kind,
                value: next.unwrap_or(0),
                overflow: overflow || next.is_none(),
            };
            return 1;
        }
        self.state = State::Outside;
        if matches!(b, b'.' | b'e' | b'E') {
            // A fraction or exponent: not a token count.
            return 1;
        }
        if !overflow {
            match kind {
                Kind::Prompt => self.prompt = Some(value),
                Kind::Completion => self.completion = Some(value),
            }
        }
        // The terminator (`,`, `}`, whitespace...) is looked at afresh.
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI_CHAT: &[u8] = include_bytes!("../tests/data/openai-chat.json");
    const OPENAI_STREAM: &[u8] = include_bytes!("../tests/data/openai-chat-stream.sse");
    const ANTHROPIC_STREAM: &[u8] = include_bytes!("../tests/data/anthropic-messages-stream.sse");
    const OLLAMA: &[u8] = include_bytes!("../tests/data/ollama-chat.ndjson");
    const EMBEDDINGS: &[u8] = include_bytes!("../tests/data/openai-embeddings.json");

    /// A sample's name, bytes, and the prompt and completion counts written in it.
    type Sample = (&'static str, &'static [u8], Option<u64>, Option<u64>);

    /// Each sample with the counts written in it (see tests/data).
    const SAMPLES: [Sample; 5] = [
        ("openai-chat.json", OPENAI_CHAT, Some(21), Some(7)),
        ("openai-chat-stream.sse", OPENAI_STREAM, Some(21), Some(3)),
        (
            "anthropic-messages-stream.sse",
            ANTHROPIC_STREAM,
            Some(25),
            Some(12),
        ),
        ("ollama-chat.ndjson", OLLAMA, Some(26), Some(3)),
        ("openai-embeddings.json", EMBEDDINGS, Some(5), None),
    ];

    fn counts(pieces: &[&[u8]]) -> (Option<u64>, Option<u64>) {
        let mut s = UsageScanner::new();
        for p in pieces {
            s.feed(p);
        }
        (s.prompt_tokens(), s.completion_tokens())
    }

    fn whole(body: &[u8]) -> (Option<u64>, Option<u64>) {
        counts(&[body])
    }

    fn crlf(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() * 2);
        for &b in body {
            if b == b'\n' {
                out.push(b'\r');
            }
            out.push(b);
        }
        out
    }

    #[test]
    fn samples_fed_whole_give_their_counts() {
        for (name, body, prompt, completion) in SAMPLES {
            assert_eq!(whole(body), (prompt, completion), "{name}");
        }
    }

    #[test]
    fn samples_fed_byte_by_byte_give_their_counts() {
        for (name, body, prompt, completion) in SAMPLES {
            let mut s = UsageScanner::new();
            for b in body.chunks(1) {
                s.feed(b);
            }
            assert_eq!(
                (s.prompt_tokens(), s.completion_tokens()),
                (prompt, completion),
                "{name}"
            );
        }
    }

    #[test]
    fn samples_split_in_two_anywhere_give_their_counts() {
        for (name, body, prompt, completion) in SAMPLES {
            for at in 0..=body.len() {
                let (a, b) = body.split_at(at);
                assert_eq!(
                    counts(&[a, b]),
                    (prompt, completion),
                    "{name} split at {at}"
                );
            }
        }
    }

    #[test]
    fn samples_in_random_splits_give_their_counts() {
        // A tiny xorshift keeps the test deterministic without a dependency.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for (name, body, prompt, completion) in SAMPLES {
            for _ in 0..200 {
                let mut s = UsageScanner::new();
                let mut rest = body;
                while !rest.is_empty() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let n = (seed % 9) as usize + 1;
                    let (a, b) = rest.split_at(n.min(rest.len()));
                    s.feed(a);
                    rest = b;
                }
                assert_eq!(
                    (s.prompt_tokens(), s.completion_tokens()),
                    (prompt, completion),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn crlf_line_endings_give_the_same_counts() {
        for (name, body, prompt, completion) in SAMPLES {
            let body = crlf(body);
            assert_eq!(whole(&body), (prompt, completion), "{name}");
            for at in 0..=body.len() {
                let (a, b) = body.split_at(at);
                assert_eq!(counts(&[a, b]), (prompt, completion), "{name} at {at}");
            }
        }
    }

    #[test]
    fn anthropic_cumulative_delta_replaces_the_start_value() {
        // message_start says output_tokens 1, message_delta says 12: the last one wins.
        assert_eq!(whole(ANTHROPIC_STREAM).1, Some(12));
    }

    #[test]
    fn a_body_without_usage_has_no_counts() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}]}"#;
        assert_eq!(whole(body), (None, None));
    }

    #[test]
    fn generated_text_spelling_a_key_does_not_count() {
        let body = br#"{"choices":[{"message":{"content":"{\"prompt_tokens\": 99, \"completion_tokens\": 98}"}}],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#;
        assert_eq!(whole(body), (Some(4), Some(2)));
        let only_text = br#"{"content":"\"prompt_tokens\": 99"}"#;
        assert_eq!(whole(only_text), (None, None));
    }

    #[test]
    fn escaped_backslash_before_a_quote_ends_the_string() {
        // The value is `C:\` and the quote after `\\` closes it; the key after is real.
        let body = br#"{"path":"C:\\","prompt_tokens":7}"#;
        assert_eq!(whole(body), (Some(7), None));
    }

    #[test]
    fn escaped_quote_after_escaped_backslash_stays_in_the_string() {
        // `\\\"` is a backslash then an escaped quote: still inside the string.
        let body = br#"{"text":"a\\\"prompt_tokens\":5","eval_count":1}"#;
        assert_eq!(whole(body), (None, Some(1)));
    }

    #[test]
    fn longer_keys_containing_a_key_name_do_not_count() {
        let body = br#"{"usage":{"cache_creation_input_tokens":50,"cache_read_input_tokens":60,"input_tokens":3,"output_tokens_x":9,"x_eval_count":8}}"#;
        assert_eq!(whole(body), (Some(3), None));
    }

    #[test]
    fn a_key_name_as_a_string_value_does_not_count() {
        let body = br#"{"a":"prompt_tokens","b":["eval_count",5],"c":"input_tokens" }"#;
        assert_eq!(whole(body), (None, None));
    }

    #[test]
    fn escaped_key_spelling_is_not_recognised() {
        let body = br#"{"prompt\u005ftokens":5}"#;
        assert_eq!(whole(body), (None, None));
    }

    #[test]
    fn whitespace_around_the_colon_is_allowed() {
        let body = b"{\"prompt_tokens\" \t\r\n: \n 12 ,\n \"completion_tokens\"\n:\n34\n}";
        assert_eq!(whole(body), (Some(12), Some(34)));
    }

    #[test]
    fn null_and_non_integer_values_are_ignored() {
        let body = br#"{"prompt_tokens":null,"completion_tokens":-3,"input_tokens":1.5,"output_tokens":2e3,"eval_count":"4"}"#;
        assert_eq!(whole(body), (None, None));
    }

    #[test]
    fn an_ignored_value_keeps_the_earlier_count() {
        let body = br#"{"prompt_tokens":8}{"prompt_tokens":null}"#;
        assert_eq!(whole(body), (Some(8), None));
    }

    #[test]
    fn a_string_value_after_a_key_is_still_scanned_as_a_string() {
        // The quote that ends BeforeValue opens a string that must be tracked, so the key
        // spelled inside it does not count.
        let body = br#"{"prompt_tokens":"x\"eval_count\":3","eval_count":4}"#;
        assert_eq!(whole(body), (None, Some(4)));
    }

    #[test]
    fn the_largest_u64_counts_and_overflow_is_ignored() {
        let max = br#"{"prompt_tokens":18446744073709551615}"#;
        assert_eq!(whole(max), (Some(u64::MAX), None));
        let over = br#"{"prompt_tokens":3}{"prompt_tokens":18446744073709551616}"#;
        assert_eq!(whole(over), (Some(3), None));
    }

    #[test]
    fn a_number_split_across_feeds_is_read_whole() {
        let body = br#"{"completion_tokens":12345}"#;
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            assert_eq!(counts(&[a, b]), (None, Some(12345)), "at {at}");
        }
    }

    #[test]
    fn a_number_not_yet_terminated_does_not_count() {
        // More digits may follow in the next feed.
        assert_eq!(whole(br#"{"eval_count":12"#), (None, None));
        assert_eq!(counts(&[br#"{"eval_count":12"#, b"3}"]), (None, Some(123)));
    }

    #[test]
    fn a_line_feed_ends_an_unterminated_string() {
        // An SSE comment with a stray quote must not hide the usage event after it.
        let body = b": keep \"alive\n\ndata: {\"usage\":{\"prompt_tokens\":6}}\n\n";
        assert_eq!(whole(body), (Some(6), None));
    }

    #[test]
    fn done_marker_after_usage_changes_nothing() {
        let body =
            b"data: {\"usage\":{\"prompt_tokens\":6,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        assert_eq!(whole(body), (Some(6), Some(2)));
    }

    #[test]
    fn a_long_string_before_the_usage_is_skipped() {
        let mut body = b"{\"data\":\"".to_vec();
        body.extend(std::iter::repeat_n(b'A', 100_000));
        body.extend_from_slice(b"\",\"usage\":{\"prompt_tokens\":9}}");
        assert_eq!(whole(&body), (Some(9), None));
        let mut s = UsageScanner::new();
        for piece in body.chunks(4096) {
            s.feed(piece);
        }
        assert_eq!(s.prompt_tokens(), Some(9));
    }

    #[test]
    fn a_new_scanner_has_no_counts() {
        let s = UsageScanner::new();
        assert_eq!((s.prompt_tokens(), s.completion_tokens()), (None, None));
    }
}
