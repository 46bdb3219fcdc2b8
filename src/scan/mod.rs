//! The incremental top-level `model` scanner (SPEC.md §4, PITFALLS.md 21).
//!
//! Owns: deciding, from the raw request body fed block by block, whether the body is one valid
//! JSON object and what its top-level `model` is. It never copies or changes the body (the
//! caller forwards the blocks byte for byte) and touches nothing but the bytes it is given.
//!
//! # Agreement with the upstream's parser
//! The scanner accepts exactly what `serde_json::from_slice::<serde_json::Value>` accepts
//! (RFC 8259 plus serde_json's limits), so that modelgate never routes a body that an upstream
//! would read differently:
//! - the root must be an object; JSON whitespace (space, tab, LF, CR) around it; nothing after;
//! - strings: valid UTF-8, no raw control characters (< 0x20), escapes `\" \\ \/ \b \f \n \r
//!   \t \uHHHH`, and `\u` surrogates only as a high/low pair (lone ones are rejected, as
//!   serde_json does when it builds a `String`);
//! - numbers per the JSON grammar, and rejected like serde_json when their value overflows
//!   `f64` (`1e400`, a 400-digit integer): serde_json's default (non-`float_roundtrip`)
//!   algorithm is replicated exactly in [`Number::in_range`];
//! - nesting deeper than [`MAX_DEPTH`] containers is rejected, as serde_json's recursion limit
//!   (128) does.
//!
//! Only depth-1 keys of the root object are looked at; they are compared against `model` after
//! unescaping (`"m\u006fdel"` is `model`), incrementally and without allocating.
//!
//! # Results
//! [`ModelScanner::feed`] returns early only for [`ScanError::InvalidJson`]: a syntax error can
//! follow a duplicate `model`, and invalid JSON must win. [`ModelScanner::finish`] gives the
//! final answer with this precedence: `InvalidJson` (syntax, trailing data, invalid UTF-8,
//! empty body, not an object, truncated body) > `DuplicateModel` (the top-level key twice,
//! whatever the values, `null` included) > `InvalidModel` (not a string, or a string longer
//! than [`MAX_MODEL_NAME_BYTES`]) > `MissingModel` (absent or `null`).
//!
//! `InvalidJson::offset` is the offset in the whole body of the first offending byte; for
//! invalid UTF-8 it is the first byte of the ill-formed sequence, for a lone surrogate the `\`
//! of its escape, for an out-of-range number its first byte, and for a truncated body the
//! body's length. Offsets do not depend on how the body was split into blocks.
//!
//! # Speed
//! String bodies (base64 images are most of a large body) are skipped with `memchr2` for `"`
//! and `\`; the skipped span is then checked in one vectorizable min/max pass, and only spans
//! with non-ASCII bytes go through `str::from_utf8`. An incomplete UTF-8 sequence at the end of
//! a block (at most 3 bytes) is carried to the next. Model names up to [`INLINE_NAME_BYTES`]
//! bytes live inline: the common path never allocates.

use memchr::memchr2;

mod media;
mod number;

use media::Media;
pub use media::MEDIA_PART_TYPES;
use number::{NumPart, Number, Word};

/// Most containers open at once. serde_json's recursion limit starts at 128 and fails when it
/// reaches 0, so it accepts 127 nested containers (the root object included) and rejects 128.
pub const MAX_DEPTH: u32 = 127;

/// Longest unescaped top-level model name kept; a longer one is `InvalidModel`. Real names are
/// well under 200 bytes; the cap bounds what one request can make the scanner allocate.
pub const MAX_MODEL_NAME_BYTES: usize = 64 * 1024;

/// Model names up to this many bytes are stored without allocating.
pub const INLINE_NAME_BYTES: usize = 64;

const MODEL: &[u8] = b"model";
const KEY_MISMATCH: u8 = u8::MAX;

/// Why a body carries no usable model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// Not one valid JSON object (syntax, trailing data, invalid UTF-8, empty body).
    InvalidJson { offset: u64, reason: &'static str },
    /// No top-level `model`, or `null`.
    MissingModel,
    /// Top-level `model` is not a string.
    InvalidModel,
    /// Top-level `model` given twice.
    DuplicateModel,
}

/// Where the grammar is. String and number sub-states carry what they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the root value.
    Start,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `:` or `,` in an array: a value.
    Value,
    /// After a value: `,` or the closing bracket of the current container.
    AfterValue,
    /// After the root object: whitespace only.
    Trailing,
    Str(Esc),
    Num(NumPart),
    Lit {
        word: Word,
        at: u8,
    },
}

/// Inside a string: where in an escape sequence we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    /// Plain string bytes (the fast path).
    None,
    /// After `\`.
    Backslash,
    /// In the hex digits of `\u`; `high` is the pending high surrogate (0 when none).
    Hex { high: u16, left: u8, acc: u16 },
    /// After a high surrogate escape: a `\` must follow.
    AfterHigh { high: u16 },
    /// After a high surrogate and `\`: a `u` must follow.
    AfterHighBackslash { high: u16 },
}

/// What the bytes of the current string are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Validate only.
    Skip,
    /// A top-level key: compare against `model`.
    Key,
    /// The first top-level `model` value: store it.
    Model,
    /// A key or value on the media path (`messages[].content[].type`): captured.
    Probe,
}

/// The first top-level `model` value, as far as its first byte (and length) tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelKind {
    Unseen,
    Str,
    Null,
    NotString,
    TooLong,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn hex_value(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Length of the UTF-8 sequence a (valid) lead byte starts.
fn utf8_len(lead: u8) -> u8 {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Smallest and largest byte: one pass the compiler turns into `pminub`/`pmaxub`.
fn min_max(s: &[u8]) -> (u8, u8) {
    let mut lo = u8::MAX;
    let mut hi = 0u8;
    for &b in s {
        lo = lo.min(b);
        hi = hi.max(b);
    }
    (lo, hi)
}

/// Largest string span searched and checked at once (fits in L1/L2 with room to spare).
const SPAN_WINDOW: usize = 16 * 1024;

/// How many bytes `plain_prefix` looks at before leaving the rest to `memchr2`.
const SHORT_STRING: usize = 32;

/// Length of the leading run of printable ASCII other than `"` and `\` (bytes that need no
/// check at all), looking at no more than `SHORT_STRING` bytes.
fn plain_prefix(s: &[u8]) -> usize {
    let head = s.get(..SHORT_STRING).unwrap_or(s);
    head.iter()
        .position(|&b| !(0x20..0x80).contains(&b) || b == b'"' || b == b'\\')
        .unwrap_or(head.len())
}

fn invalid(offset: u64, reason: &'static str) -> ScanError {
    ScanError::InvalidJson { offset, reason }
}

/// Push scanner: feed the body block by block, then `finish`.
///
/// `MEDIA` turns on media-part detection ([`ModelScanner::with_media`]). It is a type
/// parameter, not a flag, so the plain scanner (`ModelScanner`, i.e. `MEDIA = false`) compiles
/// to the same code as before the detector existed: every hook is `if MEDIA`, folded away.
#[derive(Debug)]
pub struct ModelScanner<const MEDIA: bool = false> {
    state: State,
    /// Bytes fed by earlier calls: the body offset of the current block's first byte.
    consumed: u64,
    /// Open containers; bit `i` set when container `i` (0 = root) is an object.
    kinds: u128,
    depth: u32,
    /// The first error; every later call repeats it.
    error: Option<ScanError>,

    role: Role,
    str_is_key: bool,
    /// Bytes of `model` the current top-level key matched so far, or `KEY_MISMATCH`.
    key_match: u8,
    /// Offset of the `\` of the current escape, and of the pending high surrogate's escape.
    esc_start: u64,
    high_start: u64,
    /// An incomplete UTF-8 sequence at the end of the previous block.
    utf8_pending: [u8; 4],
    utf8_have: u8,
    utf8_need: u8,
    utf8_start: u64,

    num: Number,

    /// Top-level `model` keys seen (saturating).
    model_keys: u8,
    /// The next value is the first top-level `model` value.
    model_pending: bool,
    model: ModelKind,
    name_len: usize,
    name_inline: [u8; INLINE_NAME_BYTES],
    /// Used instead of `name_inline` once the name outgrows it.
    name_heap: Vec<u8>,
    name_spilled: bool,

    media: Media,
}

impl Default for ModelScanner {
    fn default() -> ModelScanner {
        ModelScanner::new()
    }
}

impl ModelScanner {
    pub fn new() -> ModelScanner {
        ModelScanner::blank()
    }
}

impl ModelScanner<true> {
    /// A scanner that also notes whether the body has a media content part: a
    /// `messages[].content[]` (or `input[].content[]`) object whose `type` is one of
    /// [`MEDIA_PART_TYPES`]. Answered by [`ModelScanner::saw_media`].
    pub fn with_media() -> ModelScanner<true> {
        ModelScanner::blank()
    }
}

impl<const MEDIA: bool> ModelScanner<MEDIA> {
    fn blank() -> ModelScanner<MEDIA> {
        ModelScanner {
            state: State::Start,
            consumed: 0,
            kinds: 0,
            depth: 0,
            error: None,
            role: Role::Skip,
            str_is_key: false,
            key_match: 0,
            esc_start: 0,
            high_start: 0,
            utf8_pending: [0; 4],
            utf8_have: 0,
            utf8_need: 0,
            utf8_start: 0,
            num: Number::default(),
            model_keys: 0,
            model_pending: false,
            model: ModelKind::Unseen,
            name_len: 0,
            name_inline: [0; INLINE_NAME_BYTES],
            name_heap: Vec::new(),
            name_spilled: false,
            media: Media::default(),
        }
    }

    /// A media content part was seen so far (always false without [`ModelScanner::with_media`]).
    pub fn saw_media(&self) -> bool {
        self.media.found
    }

    /// Feeds the next bytes of the body. An error is final (later calls repeat it). Only
    /// `InvalidJson` is returned here; the model verdict comes from [`ModelScanner::finish`].
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ScanError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.run(chunk) {
            Ok(()) => {
                self.consumed += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Ends the body: the unescaped top-level model, or why there is none.
    pub fn finish(&mut self) -> Result<&str, ScanError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.state {
            State::Trailing => {}
            State::Start => return Err(self.fail(invalid(self.consumed, "empty body"))),
            _ => return Err(self.fail(invalid(self.consumed, "unexpected end of body"))),
        }
        if self.model_keys > 1 {
            return Err(ScanError::DuplicateModel);
        }
        match self.model {
            ModelKind::Unseen | ModelKind::Null => Err(ScanError::MissingModel),
            ModelKind::NotString | ModelKind::TooLong => Err(ScanError::InvalidModel),
            ModelKind::Str => {
                let bytes = if self.name_spilled {
                    self.name_heap.as_slice()
                } else {
                    self.name_inline.get(..self.name_len).unwrap_or(&[])
                };
                // Every byte stored was validated as part of a valid string.
                std::str::from_utf8(bytes).map_err(|_| invalid(self.consumed, "invalid UTF-8"))
            }
        }
    }

    fn fail(&mut self, e: ScanError) -> ScanError {
        self.error = Some(e.clone());
        e
    }

    fn run(&mut self, chunk: &[u8]) -> Result<(), ScanError> {
        let mut i = 0usize;
        while let Some(rest) = chunk.get(i..) {
            let Some(&b) = rest.first() else { break };
            let at = self.consumed + i as u64;
            if self.state == State::Str(Esc::None) {
                // Most strings (keys, roles, short texts) end within a few bytes: a plain loop
                // finds their end before memchr's setup would pay off.
                let p = plain_prefix(rest);
                if self.utf8_have == 0 {
                    if let (Some(&end), Some(span)) = (rest.get(p), rest.get(..p)) {
                        if end == b'"' || end == b'\\' {
                            self.push_role(span);
                            if end == b'"' {
                                self.end_string();
                            } else {
                                self.esc_start = at + p as u64;
                                self.state = State::Str(Esc::Backslash);
                            }
                            i += p + 1;
                            continue;
                        }
                    }
                }
                // Long spans are searched and checked a cache-sized window at a time, so the
                // check pass reads what the search pass just brought into cache.
                let window = rest.get(..SPAN_WINDOW).unwrap_or(rest);
                match memchr2(b'"', b'\\', window) {
                    Some(n) => {
                        let (span, tail) = rest.split_at(n);
                        self.string_span(span, at, true)?;
                        let pos = at + n as u64;
                        if tail.first() == Some(&b'"') {
                            self.end_string();
                        } else {
                            self.esc_start = pos;
                            self.state = State::Str(Esc::Backslash);
                        }
                        i += n + 1;
                    }
                    None => {
                        self.string_span(window, at, false)?;
                        i += window.len();
                    }
                }
                continue;
            }
            self.step(b, at)?;
            i += 1;
        }
        Ok(())
    }

    /// One byte outside the string fast path.
    fn step(&mut self, b: u8, pos: u64) -> Result<(), ScanError> {
        match self.state {
            State::Start => match b {
                _ if is_ws(b) => {}
                b'{' => self.open(true, pos)?,
                _ => return Err(invalid(pos, "not an object")),
            },
            State::ObjectFirst => match b {
                _ if is_ws(b) => {}
                b'"' => self.begin_key(),
                b'}' => self.close(true, pos)?,
                _ => return Err(invalid(pos, "expected a key or '}'")),
            },
            State::Key => match b {
                _ if is_ws(b) => {}
                b'"' => self.begin_key(),
                _ => return Err(invalid(pos, "expected a key")),
            },
            State::Colon => match b {
                _ if is_ws(b) => {}
                b':' => self.state = State::Value,
                _ => return Err(invalid(pos, "expected ':'")),
            },
            State::ArrayFirst => match b {
                _ if is_ws(b) => {}
                b']' => self.close(false, pos)?,
                _ => self.begin_value(b, pos)?,
            },
            State::Value => match b {
                _ if is_ws(b) => {}
                _ => self.begin_value(b, pos)?,
            },
            State::AfterValue => match b {
                _ if is_ws(b) => {}
                b',' => {
                    self.state = if self.top_is_object() {
                        State::Key
                    } else {
                        State::Value
                    }
                }
                b'}' => self.close(true, pos)?,
                b']' => self.close(false, pos)?,
                _ => return Err(invalid(pos, "expected ',' or a closing bracket")),
            },
            State::Trailing => {
                if !is_ws(b) {
                    return Err(invalid(pos, "trailing data"));
                }
            }
            State::Str(esc) => self.escape_byte(esc, b, pos)?,
            State::Num(part) => self.number_byte(part, b, pos)?,
            State::Lit { word, at } => {
                let want = word.bytes();
                if want.get(usize::from(at)) != Some(&b) {
                    return Err(invalid(pos, "invalid literal"));
                }
                let at = at + 1;
                self.state = if usize::from(at) == want.len() {
                    State::AfterValue
                } else {
                    State::Lit { word, at }
                };
            }
        }
        Ok(())
    }

    fn top_is_object(&self) -> bool {
        self.depth > 0 && (self.kinds >> (self.depth - 1)) & 1 == 1
    }

    fn open(&mut self, object: bool, pos: u64) -> Result<(), ScanError> {
        if self.depth >= MAX_DEPTH {
            return Err(invalid(pos, "nesting too deep"));
        }
        let bit = 1u128 << self.depth;
        if object {
            self.kinds |= bit;
        } else {
            self.kinds &= !bit;
        }
        self.depth += 1;
        self.state = if object {
            State::ObjectFirst
        } else {
            State::ArrayFirst
        };
        Ok(())
    }

    fn close(&mut self, object: bool, pos: u64) -> Result<(), ScanError> {
        if self.depth == 0 || self.top_is_object() != object {
            return Err(invalid(pos, "mismatched closing bracket"));
        }
        self.depth -= 1;
        if MEDIA {
            self.media.level = self.media.level.min(self.depth.saturating_sub(1));
        }
        self.state = if self.depth == 0 {
            State::Trailing
        } else {
            State::AfterValue
        };
        Ok(())
    }

    fn begin_key(&mut self) {
        self.state = State::Str(Esc::None);
        self.str_is_key = true;
        if self.depth == 1 {
            self.role = Role::Key;
            self.key_match = 0;
        } else {
            self.role = Role::Skip;
        }
        if MEDIA {
            self.media.begin_key(self.depth);
            if self.media.capturing && self.depth > 1 {
                self.role = Role::Probe;
            }
        }
    }

    fn begin_value(&mut self, b: u8, pos: u64) -> Result<(), ScanError> {
        self.role = Role::Skip;
        if MEDIA && self.media.begin_value(b, self.depth) {
            self.role = Role::Probe;
        }
        if self.model_pending {
            // The first byte decides the kind; if the value turns out malformed, the
            // InvalidJson error wins anyway.
            self.model_pending = false;
            self.model = match b {
                b'"' => {
                    self.role = Role::Model;
                    ModelKind::Str
                }
                b'n' => ModelKind::Null,
                _ => ModelKind::NotString,
            };
        }
        match b {
            b'{' => self.open(true, pos)?,
            b'[' => self.open(false, pos)?,
            b'"' => {
                self.state = State::Str(Esc::None);
                self.str_is_key = false;
            }
            b'-' | b'0'..=b'9' => {
                self.num = Number {
                    start: pos,
                    ..Number::default()
                };
                self.state = State::Num(match b {
                    b'-' => NumPart::Minus,
                    b'0' => NumPart::Zero,
                    _ => {
                        self.num.sig = u64::from(b - b'0');
                        NumPart::Int
                    }
                });
            }
            b't' => {
                self.state = State::Lit {
                    word: Word::True,
                    at: 1,
                }
            }
            b'f' => {
                self.state = State::Lit {
                    word: Word::False,
                    at: 1,
                }
            }
            b'n' => {
                self.state = State::Lit {
                    word: Word::Null,
                    at: 1,
                }
            }
            _ => return Err(invalid(pos, "expected a value")),
        }
        Ok(())
    }

    fn end_string(&mut self) {
        if self.str_is_key {
            if self.role == Role::Key && usize::from(self.key_match) == MODEL.len() {
                self.model_keys = self.model_keys.saturating_add(1);
                self.model_pending = self.model_keys == 1;
            }
            if MEDIA {
                self.media.end_key(self.depth);
            }
            self.state = State::Colon;
        } else {
            if MEDIA {
                self.media.end_value();
            }
            self.state = State::AfterValue;
        }
        self.role = Role::Skip;
    }

    /// Raw string bytes up to (not including) a `"` or `\`, or to the end of the block
    /// (`terminated` false): control characters and UTF-8 checked, then handed to the role.
    fn string_span(&mut self, span: &[u8], at: u64, terminated: bool) -> Result<(), ScanError> {
        let mut rest = span;
        let mut rest_at = at;
        if self.utf8_have > 0 {
            let taken = self.continue_utf8(rest)?;
            rest = rest.get(taken..).unwrap_or(&[]);
            rest_at += taken as u64;
        }
        let (lo, hi) = min_max(rest);
        if lo < 0x20 || hi >= 0x80 {
            self.check_span(rest, rest_at, terminated)?;
        }
        if terminated && self.utf8_have > 0 {
            return Err(invalid(self.utf8_start, "invalid UTF-8"));
        }
        self.push_role(span);
        Ok(())
    }

    /// Completes the UTF-8 sequence carried from the previous block with the first bytes of
    /// `span`; returns how many bytes it took.
    fn continue_utf8(&mut self, span: &[u8]) -> Result<usize, ScanError> {
        let have = usize::from(self.utf8_have);
        let need = usize::from(self.utf8_need);
        let take = need.saturating_sub(have).min(span.len());
        let total = have + take;
        match (self.utf8_pending.get_mut(have..total), span.get(..take)) {
            (Some(dst), Some(src)) => dst.copy_from_slice(src),
            _ => return Err(invalid(self.utf8_start, "invalid UTF-8")),
        }
        let seq = self.utf8_pending.get(..total).unwrap_or(&[]);
        match std::str::from_utf8(seq) {
            Ok(_) => self.utf8_have = 0,
            Err(e) if e.error_len().is_none() => self.utf8_have = total as u8,
            Err(_) => return Err(invalid(self.utf8_start, "invalid UTF-8")),
        }
        Ok(take)
    }

    /// The slow path of `string_span`: finds the first control character or ill-formed
    /// UTF-8, and keeps an incomplete sequence at the end of an unterminated span.
    fn check_span(&mut self, span: &[u8], at: u64, terminated: bool) -> Result<(), ScanError> {
        let ctrl = span.iter().position(|&b| b < 0x20);
        let utf8 = match std::str::from_utf8(span) {
            Ok(_) => None,
            Err(e) => Some((e.valid_up_to(), e.error_len().is_none())),
        };
        match (ctrl, utf8) {
            (Some(c), Some((u, _))) if u < c => Err(invalid(at + u as u64, "invalid UTF-8")),
            (Some(c), _) => Err(invalid(at + c as u64, "control character in string")),
            (None, None) => Ok(()),
            (None, Some((u, incomplete))) => {
                let tail = span.get(u..).unwrap_or(&[]);
                if !incomplete || terminated || tail.len() > 3 {
                    return Err(invalid(at + u as u64, "invalid UTF-8"));
                }
                let lead = tail.first().copied().unwrap_or(0);
                match self.utf8_pending.get_mut(..tail.len()) {
                    Some(dst) => dst.copy_from_slice(tail),
                    None => return Err(invalid(at + u as u64, "invalid UTF-8")),
                }
                self.utf8_have = tail.len() as u8;
                self.utf8_need = utf8_len(lead);
                self.utf8_start = at + u as u64;
                Ok(())
            }
        }
    }

    fn escape_byte(&mut self, esc: Esc, b: u8, pos: u64) -> Result<(), ScanError> {
        match esc {
            // Normally handled by `run`'s fast path; kept for completeness.
            Esc::None => match b {
                b'"' => {
                    self.string_span(&[], pos, true)?;
                    self.end_string();
                }
                b'\\' => {
                    self.string_span(&[], pos, true)?;
                    self.esc_start = pos;
                    self.state = State::Str(Esc::Backslash);
                }
                _ => self.string_span(&[b], pos, false)?,
            },
            Esc::Backslash => {
                let unescaped = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.state = State::Str(Esc::Hex {
                            high: 0,
                            left: 4,
                            acc: 0,
                        });
                        return Ok(());
                    }
                    _ => return Err(invalid(pos, "invalid escape")),
                };
                self.push_role(&[unescaped]);
                self.state = State::Str(Esc::None);
            }
            Esc::Hex { high, left, acc } => {
                let d = hex_value(b).ok_or(invalid(pos, "invalid \\u escape"))?;
                let acc = (acc << 4) | d;
                if left > 1 {
                    self.state = State::Str(Esc::Hex {
                        high,
                        left: left - 1,
                        acc,
                    });
                } else {
                    self.code_unit(high, acc)?;
                }
            }
            Esc::AfterHigh { high } => {
                if b != b'\\' {
                    return Err(invalid(self.high_start, "lone surrogate"));
                }
                self.esc_start = pos;
                self.state = State::Str(Esc::AfterHighBackslash { high });
            }
            Esc::AfterHighBackslash { high } => {
                if b != b'u' {
                    return Err(invalid(self.high_start, "lone surrogate"));
                }
                self.state = State::Str(Esc::Hex {
                    high,
                    left: 4,
                    acc: 0,
                });
            }
        }
        Ok(())
    }

    /// A complete `\uHHHH`; `high` is the high surrogate before it (0 when none).
    fn code_unit(&mut self, high: u16, unit: u16) -> Result<(), ScanError> {
        let is_low = (0xDC00..=0xDFFF).contains(&unit);
        let is_high = (0xD800..=0xDBFF).contains(&unit);
        let code = if high != 0 {
            if !is_low {
                return Err(invalid(self.high_start, "lone surrogate"));
            }
            0x10000 + ((u32::from(high - 0xD800) << 10) | u32::from(unit - 0xDC00))
        } else if is_low {
            return Err(invalid(self.esc_start, "lone surrogate"));
        } else if is_high {
            self.high_start = self.esc_start;
            self.state = State::Str(Esc::AfterHigh { high: unit });
            return Ok(());
        } else {
            u32::from(unit)
        };
        if let Some(c) = char::from_u32(code) {
            let mut buf = [0u8; 4];
            self.push_role(c.encode_utf8(&mut buf).as_bytes());
        }
        self.state = State::Str(Esc::None);
        Ok(())
    }

    /// Unescaped string bytes for the current role.
    fn push_role(&mut self, bytes: &[u8]) {
        match self.role {
            Role::Skip => {}
            Role::Key => {
                self.push_key(bytes);
                if MEDIA && self.media.capturing {
                    self.media.capture(bytes);
                }
            }
            Role::Model => self.push_name(bytes),
            Role::Probe => self.media.capture(bytes),
        }
    }

    fn push_key(&mut self, bytes: &[u8]) {
        if self.key_match == KEY_MISMATCH {
            return;
        }
        let k = usize::from(self.key_match);
        match MODEL.get(k..k + bytes.len()) {
            Some(want) if want == bytes => self.key_match += bytes.len() as u8,
            _ => self.key_match = KEY_MISMATCH,
        }
    }

    fn push_name(&mut self, bytes: &[u8]) {
        if self.model == ModelKind::TooLong || bytes.is_empty() {
            return;
        }
        let len = self.name_len + bytes.len();
        if len > MAX_MODEL_NAME_BYTES {
            self.model = ModelKind::TooLong;
            self.name_heap = Vec::new();
            return;
        }
        if !self.name_spilled {
            if let Some(dst) = self.name_inline.get_mut(self.name_len..len) {
                dst.copy_from_slice(bytes);
                self.name_len = len;
                return;
            }
            self.name_heap
                .extend_from_slice(self.name_inline.get(..self.name_len).unwrap_or(&[]));
            self.name_spilled = true;
        }
        self.name_heap.extend_from_slice(bytes);
        self.name_len = len;
    }
}

#[cfg(test)]
mod tests;
