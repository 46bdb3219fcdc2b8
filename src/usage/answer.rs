//! Everything read from one answer's body on its way to the client: token counts (through an
//! inflater when the body is compressed), the timing of its events, and, when the counts could
//! not be read, why.
//!
//! Owns: choosing how the body reaches the [`UsageScanner`] from the response head
//! (`Content-Encoding`, `Content-Type`), and the definition of the generation window that
//! `modelgate_generation_tokens_per_second` divides by. It never changes the bytes the client
//! gets and never buffers them: plain bodies are scanned in place, compressed ones inflated
//! into a fixed block on the side.
//!
//! # The generation window
//! An answer *shows generation* when it is streamed (`text/event-stream`, or NDJSON as Ollama
//! sends) and at least two of its events arrived at different times. An event is an SSE
//! `data:` line (comments such as OpenRouter's `: OPENROUTER PROCESSING`, `event:`/`id:`/
//! `retry:` lines and blank lines are not), or a non-blank NDJSON line. The window runs from
//! the arrival of the first event to the arrival of the last one; the rate is the completion
//! tokens the answer reported divided by it. A non-streamed answer has no window: its head
//! and body arrive in a few reads whose spacing says nothing about the model's speed.

use std::time::{Duration, Instant};

use crate::buf::{Charge, Pool};
use crate::h1::{BodyShape, ContentCoding};

use super::inflate::{InflateError, Inflater};
use super::UsageScanner;

/// Why an answer's token counts could not be read (the `reason` label of
/// `modelgate_usage_unread_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// `Content-Encoding: br`: not decoded.
    Br,
    /// `Content-Encoding: zstd`: not decoded.
    Zstd,
    /// Another coding, or several stacked.
    OtherEncoding,
    /// gzip / deflate data that does not inflate.
    Corrupt,
    /// gzip / deflate data that inflates to more than `MAX_RATIO` times its size (a bomb).
    TooLarge,
    /// No room in `maxBufferBytes` for an inflater when the answer began.
    NoBuffer,
}

impl Unread {
    /// Every reason, in the order metrics render them.
    pub const ALL: [Unread; 6] = [
        Unread::Br,
        Unread::Zstd,
        Unread::OtherEncoding,
        Unread::Corrupt,
        Unread::TooLarge,
        Unread::NoBuffer,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Unread::Br => "br",
            Unread::Zstd => "zstd",
            Unread::OtherEncoding => "other_encoding",
            Unread::Corrupt => "corrupt",
            Unread::TooLarge => "too_large",
            Unread::NoBuffer => "no_buffer",
        }
    }

    /// Index into [`Unread::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How body bytes reach the scanner.
#[derive(Debug)]
enum Decode {
    /// As they are.
    Plain,
    /// Inflated on the side.
    Inflate(Box<Inflating>),
    /// Not at all; counted under the reason once a body byte arrives.
    Unread(Unread),
}

/// An inflater and the share of the buffer budget it holds.
#[derive(Debug)]
struct Inflating {
    inflater: Inflater,
    _charge: Charge,
}

/// Where the event tracker is in the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line; for SSE, `matched` bytes of `data:` seen so far.
    Start { matched: u8 },
    /// The rest of a line whose kind is decided: skipped to the next line feed.
    Rest,
}

const DATA_FIELD: &[u8] = b"data:";

/// The arrival times of a streamed answer's events.
#[derive(Debug, Clone, Copy)]
struct Events {
    shape: BodyShape,
    line: Line,
    count: u32,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Events {
    fn new(shape: BodyShape) -> Events {
        Events {
            shape,
            line: Line::Start { matched: 0 },
            count: 0,
            first: None,
            last: None,
        }
    }

    fn feed(&mut self, bytes: &[u8], now: Instant) {
        if self.shape == BodyShape::Document {
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.line {
                Line::Rest => match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.line = Line::Start { matched: 0 };
                        rest = &rest[i + 1..];
                    }
                    None => return,
                },
                Line::Start { matched } => {
                    let b = rest[0];
                    if b == b'\n' {
                        // A blank line (or a line too short to be an event).
                        self.line = Line::Start { matched: 0 };
                        rest = &rest[1..];
                        continue;
                    }
                    match self.shape {
                        BodyShape::Sse => {
                            if DATA_FIELD.get(usize::from(matched)) == Some(&b) {
                                rest = &rest[1..];
                                if usize::from(matched) + 1 == DATA_FIELD.len() {
                                    self.event(now);
                                    self.line = Line::Rest;
                                } else {
                                    self.line = Line::Start {
                                        matched: matched + 1,
                                    };
                                }
                            } else {
                                self.line = Line::Rest;
                            }
                        }
                        _ => {
                            if matches!(b, b' ' | b'\t' | b'\r') {
                                rest = &rest[1..];
                            } else {
                                self.event(now);
                                self.line = Line::Rest;
                            }
                        }
                    }
                }
            }
        }
    }

    fn event(&mut self, now: Instant) {
        self.count = self.count.saturating_add(1);
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// From the first event to the last, when there were two or more at different times.
    fn window(&self) -> Option<Duration> {
        match (self.first, self.last) {
            (Some(first), Some(last)) if self.count >= 2 && last > first => Some(last - first),
            _ => None,
        }
    }
}

/// The reading of one answer's body. See the module docs.
#[derive(Debug)]
pub struct AnswerUsage {
    scanner: UsageScanner,
    decode: Decode,
    events: Events,
    /// A body byte arrived (an empty body cannot be "unread").
    any_body: bool,
}

impl Default for AnswerUsage {
    fn default() -> Self {
        Self::new()
    }
}

impl AnswerUsage {
    /// Nothing read yet; a plain document until [`AnswerUsage::begin`] says otherwise.
    pub fn new() -> AnswerUsage {
        AnswerUsage {
            scanner: UsageScanner::new(),
            decode: Decode::Plain,
            events: Events::new(BodyShape::Document),
            any_body: false,
        }
    }

    /// The final response head arrived: how its body is encoded and shaped. An inflater is
    /// made (and charged to `pool`'s budget) only for gzip and deflate.
    pub fn begin(&mut self, coding: ContentCoding, shape: BodyShape, pool: &Pool) {
        *self = AnswerUsage::new();
        self.events = Events::new(shape);
        self.decode = match coding {
            ContentCoding::Identity => Decode::Plain,
            ContentCoding::Gzip | ContentCoding::Deflate => {
                match pool.charge(Inflater::HEAP_BYTES) {
                    Some(charge) => Decode::Inflate(Box::new(Inflating {
                        inflater: Inflater::new(coding == ContentCoding::Deflate),
                        _charge: charge,
                    })),
                    None => Decode::Unread(Unread::NoBuffer),
                }
            }
            ContentCoding::Br => Decode::Unread(Unread::Br),
            ContentCoding::Zstd => Decode::Unread(Unread::Zstd),
            ContentCoding::Other => Decode::Unread(Unread::OtherEncoding),
        };
    }

    /// The next de-chunked body bytes exactly as they go to the client, split anywhere;
    /// `now` is when they arrived.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        self.any_body = true;
        let scanner = &mut self.scanner;
        let events = &mut self.events;
        match &mut self.decode {
            Decode::Plain => {
                scanner.feed(bytes);
                events.feed(bytes, now);
            }
            Decode::Inflate(inflating) => {
                let fed = inflating.inflater.feed(bytes, &mut |plain| {
                    scanner.feed(plain);
                    events.feed(plain, now);
                });
                if let Err(e) = fed {
                    // What inflated before still counts.
                    self.decode = Decode::Unread(match e {
                        InflateError::Corrupt => Unread::Corrupt,
                        InflateError::TooLarge => Unread::TooLarge,
                    });
                }
            }
            Decode::Unread(_) => {}
        }
    }

    /// The last prompt (input) token count seen, if any.
    pub fn prompt_tokens(&self) -> Option<u64> {
        self.scanner.prompt_tokens()
    }

    /// The last completion (output) token count seen, if any.
    pub fn completion_tokens(&self) -> Option<u64> {
        self.scanner.completion_tokens()
    }

    /// The generation window (module docs), when the answer showed generation.
    pub fn generation(&self) -> Option<Duration> {
        self.events.window()
    }

    /// Why the counts could not be read, when a body arrived that could not be read.
    pub fn unread(&self) -> Option<Unread> {
        match self.decode {
            Decode::Unread(reason) if self.any_body => Some(reason),
            _ => None,
        }
    }

    /// Gives the inflater (and its budget) back early, when the body is complete.
    pub fn release(&mut self) {
        if let Decode::Inflate(..) = self.decode {
            self.decode = Decode::Plain;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::{Budget, BLOCK_SIZE};
    use crate::usage::inflate::tests::{gzip, raw, zlib};
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    const OPENAI_CHAT: &[u8] = include_bytes!("../../tests/data/openai-chat.json");
    const OPENAI_STREAM: &[u8] = include_bytes!("../../tests/data/openai-chat-stream.sse");
    const ANTHROPIC_STREAM: &[u8] =
        include_bytes!("../../tests/data/anthropic-messages-stream.sse");
    const OLLAMA: &[u8] = include_bytes!("../../tests/data/ollama-chat.ndjson");

    fn pool() -> Pool {
        Pool::new(Budget::new(usize::MAX))
    }

    fn read(coding: ContentCoding, shape: BodyShape, pieces: &[&[u8]]) -> AnswerUsage {
        let mut u = AnswerUsage::new();
        u.begin(coding, shape, &pool());
        let t0 = Instant::now();
        for (i, p) in pieces.iter().enumerate() {
            u.feed(p, t0 + Duration::from_millis(10 * i as u64));
        }
        u
    }

    fn counts(u: &AnswerUsage) -> (Option<u64>, Option<u64>) {
        (u.prompt_tokens(), u.completion_tokens())
    }

    #[test]
    fn compressed_bodies_give_the_counts_of_the_plain_ones() {
        let samples = [
            (OPENAI_CHAT, BodyShape::Document, (Some(21), Some(7))),
            (OPENAI_STREAM, BodyShape::Sse, (Some(21), Some(3))),
            (ANTHROPIC_STREAM, BodyShape::Sse, (Some(25), Some(12))),
            (OLLAMA, BodyShape::JsonLines, (Some(26), Some(3))),
        ];
        for (body, shape, want) in samples {
            for (coding, data) in [
                (ContentCoding::Identity, body.to_vec()),
                (ContentCoding::Gzip, gzip(body)),
                (ContentCoding::Deflate, zlib(body)),
                (ContentCoding::Deflate, raw(body)),
                // Mislabelled: the format is sniffed.
                (ContentCoding::Gzip, zlib(body)),
            ] {
                let u = read(coding, shape, &[&data]);
                assert_eq!(counts(&u), want, "{coding:?}");
                assert_eq!(u.unread(), None);
            }
        }
    }

    #[test]
    fn compressed_bodies_split_at_random_points_give_the_same_counts() {
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        for body in [OPENAI_CHAT, OPENAI_STREAM, ANTHROPIC_STREAM] {
            let want = counts(&read(ContentCoding::Identity, BodyShape::Sse, &[body]));
            for data in [gzip(body), zlib(body), raw(body)] {
                for _ in 0..100 {
                    let mut pieces = Vec::new();
                    let mut rest = &data[..];
                    while !rest.is_empty() {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let n = (seed % 40) as usize + 1;
                        let (a, b) = rest.split_at(n.min(rest.len()));
                        pieces.push(a);
                        rest = b;
                    }
                    let u = read(ContentCoding::Deflate, BodyShape::Sse, &pieces);
                    assert_eq!(counts(&u), want);
                }
            }
        }
    }

    #[test]
    fn undecoded_codings_are_unread_by_reason_once_a_byte_arrives() {
        for (coding, reason) in [
            (ContentCoding::Br, Unread::Br),
            (ContentCoding::Zstd, Unread::Zstd),
            (ContentCoding::Other, Unread::OtherEncoding),
        ] {
            let u = read(coding, BodyShape::Document, &[]);
            assert_eq!(u.unread(), None, "no body, nothing unread");
            let u = read(coding, BodyShape::Document, &[OPENAI_CHAT]);
            assert_eq!(u.unread(), Some(reason));
            assert_eq!(counts(&u), (None, None), "the bytes are not guessed at");
        }
    }

    #[test]
    fn corrupt_compressed_data_is_unread_and_keeps_what_came_before() {
        // A good member, then one whose deflate data uses the reserved block type 3.
        let mut data = gzip(b"{\"usage\":{\"prompt_tokens\":5}}\n");
        data.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0x07, 0, 0]);
        let u = read(ContentCoding::Gzip, BodyShape::Document, &[&data]);
        assert_eq!(u.unread(), Some(Unread::Corrupt));
        assert_eq!(counts(&u), (Some(5), None));
        let u = read(
            ContentCoding::Gzip,
            BodyShape::Document,
            &[b"{\"plain\": true}"],
        );
        assert_eq!(u.unread(), Some(Unread::Corrupt));
    }

    #[test]
    fn a_decompression_bomb_is_unread_too_large() {
        let mut bomb = gzip(br#"{"usage":{"prompt_tokens":5}}"#);
        bomb.extend(gzip(&vec![b' '; 16 << 20]));
        let u = read(ContentCoding::Gzip, BodyShape::Document, &[&bomb]);
        assert_eq!(u.unread(), Some(Unread::TooLarge));
        assert_eq!(counts(&u), (Some(5), None));
    }

    #[test]
    fn the_inflater_is_charged_to_the_budget_and_refused_when_it_is_spent() {
        let budget = Budget::new(BLOCK_SIZE);
        let pool = Pool::new(budget.clone());
        let mut u = AnswerUsage::new();
        u.begin(ContentCoding::Gzip, BodyShape::Document, &pool);
        u.feed(&gzip(OPENAI_CHAT), Instant::now());
        assert_eq!(u.unread(), Some(Unread::NoBuffer));
        assert_eq!(budget.used(), 0);

        let budget = Budget::new(usize::MAX);
        let pool = Pool::new(budget.clone());
        u.begin(ContentCoding::Deflate, BodyShape::Document, &pool);
        assert_eq!(budget.used(), Inflater::HEAP_BYTES);
        u.feed(&zlib(OPENAI_CHAT), Instant::now());
        u.release();
        assert_eq!(budget.used(), 0);
        assert_eq!(
            counts(&u),
            (Some(21), Some(7)),
            "counts outlive the inflater"
        );
        u.begin(ContentCoding::Identity, BodyShape::Document, &pool);
        assert_eq!(budget.used(), 0, "plain answers take nothing");
    }

    #[test]
    fn inflater_memory_is_fixed_and_small() {
        const { assert!(Inflater::HEAP_BYTES < 64 * 1024) };
        // It lives inline in every connection's record.
        let size = std::mem::size_of::<AnswerUsage>();
        assert!(size <= 144, "{size}");
    }

    fn window(shape: BodyShape, pieces: &[&[u8]]) -> Option<Duration> {
        read(ContentCoding::Identity, shape, pieces).generation()
    }

    #[test]
    fn the_window_runs_from_the_first_event_to_the_last() {
        let events: Vec<&[u8]> = vec![
            b"data: {\"a\":1}\n\n",
            b"data: {\"a\":2}\n\n",
            b"data: {\"a\":3}\n\ndata: [DONE]\n\n",
        ];
        // Fed 10 ms apart: 20 ms from the first to the last.
        assert_eq!(
            window(BodyShape::Sse, &events),
            Some(Duration::from_millis(20))
        );
        let ollama: Vec<&[u8]> = OLLAMA.split_inclusive(|&b| b == b'\n').collect();
        let want = Duration::from_millis(10 * (ollama.len() as u64 - 1));
        assert_eq!(window(BodyShape::JsonLines, &ollama), Some(want));
    }

    #[test]
    fn comments_and_other_fields_are_not_events() {
        let pieces: Vec<&[u8]> = vec![
            b": OPENROUTER PROCESSING\n\n",
            b"event: message_start\n",
            b"data: {\"a\":1}\n\n",
            b"data: {\"a\":2}\n\n",
            b": keep-alive\n\nid: 4\nretry: 10\n\n",
        ];
        // Events at 20 and 30 ms only.
        assert_eq!(
            window(BodyShape::Sse, &pieces),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn a_data_prefix_split_across_reads_is_one_event() {
        let pieces: Vec<&[u8]> = vec![b"da", b"ta: {}\n\nd", b"ata: {}\r\n\r\n"];
        // The first event completes at 10 ms, the second at 20 ms.
        assert_eq!(
            window(BodyShape::Sse, &pieces),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn no_window_without_two_events_at_different_times() {
        assert_eq!(window(BodyShape::Sse, &[OPENAI_STREAM]), None, "one read");
        assert_eq!(
            window(BodyShape::Sse, &[b"data: {}\n\n", b": ping\n\n"]),
            None
        );
        // A document that arrives in pieces is no stream.
        let pieces: Vec<&[u8]> = OPENAI_CHAT.chunks(16).collect();
        assert_eq!(window(BodyShape::Document, &pieces), None);
        // SSE bytes labelled as JSON: no events either.
        let pieces: Vec<&[u8]> = OPENAI_STREAM.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(window(BodyShape::Document, &pieces), None);
    }

    #[test]
    fn compressed_streams_are_timed_on_the_inflated_events() {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        let mut u = AnswerUsage::new();
        u.begin(ContentCoding::Gzip, BodyShape::Sse, &pool());
        let t0 = Instant::now();
        for (i, event) in OPENAI_STREAM.split_inclusive(|&b| b == b'\n').enumerate() {
            e.write_all(event).expect("write");
            e.flush().expect("flush");
            let piece = std::mem::take(e.get_mut());
            u.feed(&piece, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(counts(&u), (Some(21), Some(3)));
        assert!(u.generation().is_some_and(|w| w > Duration::ZERO));
    }
}
