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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumPart {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    ExpMark,
    ExpSign,
    Exp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    True,
    False,
    Null,
}

impl Word {
    fn bytes(self) -> &'static [u8] {
        match self {
            Word::True => b"true",
            Word::False => b"false",
            Word::Null => b"null",
        }
    }
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

/// serde_json's view of a number being read, enough to tell whether it overflows `f64`.
#[derive(Debug, Clone, Copy, Default)]
struct Number {
    start: u64,
    /// Decimal significand, as far as it fits in a `u64` (serde_json drops later digits).
    sig: u64,
    /// Power of ten applied to `sig` by digits dropped or after the point.
    exp: i32,
    int_full: bool,
    frac_full: bool,
    has_exp: bool,
    exp_neg: bool,
    exp_val: i32,
    exp_overflow: bool,
}

/// `1e289 ..= 1e308`: below 1e289 no `u64` significand can overflow `f64`.
const POW10_HIGH: [f64; 20] = [
    1e289, 1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299, 1e300, 1e301,
    1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
];

/// serde_json's `overflow!(a * 10 + b, MAX)`.
fn u64_overflows(a: u64, digit: u64) -> bool {
    a >= u64::MAX / 10 && (a > u64::MAX / 10 || digit > u64::MAX % 10)
}

fn i32_overflows(a: i32, digit: i32) -> bool {
    a >= i32::MAX / 10 && (a > i32::MAX / 10 || digit > i32::MAX % 10)
}

impl Number {
    fn int_digit(&mut self, d: u64) {
        if self.int_full {
            self.exp = self.exp.saturating_add(1);
        } else if u64_overflows(self.sig, d) {
            // serde_json switches to `parse_long_integer`: this and later integer digits only
            // scale the value.
            self.int_full = true;
            self.exp = self.exp.saturating_add(1);
        } else {
            self.sig = self.sig * 10 + d;
        }
    }

    fn frac_digit(&mut self, d: u64) {
        if self.frac_full {
            return;
        }
        if u64_overflows(self.sig, d) {
            self.frac_full = true;
        } else {
            self.sig = self.sig * 10 + d;
            self.exp = self.exp.saturating_sub(1);
        }
    }

    fn exp_digit(&mut self, d: i32) {
        if self.exp_overflow {
            return;
        }
        if i32_overflows(self.exp_val, d) {
            self.exp_overflow = true;
        } else {
            self.exp_val = self.exp_val * 10 + d;
        }
    }

    /// serde_json's `f64_from_parts` (without `float_roundtrip`) and `parse_exponent_overflow`:
    /// false where they fail with "number out of range".
    fn in_range(&self) -> bool {
        if self.sig == 0 {
            return true;
        }
        if self.exp_overflow {
            return self.exp_neg;
        }
        let e = match (self.has_exp, self.exp_neg) {
            (false, _) => self.exp,
            (true, false) => self.exp.saturating_add(self.exp_val),
            (true, true) => self.exp.saturating_sub(self.exp_val),
        };
        if e < 289 {
            return true;
        }
        match usize::try_from(e - 289)
            .ok()
            .and_then(|i| POW10_HIGH.get(i))
        {
            Some(&pow) => (self.sig as f64 * pow).is_finite(),
            None => false,
        }
    }
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

/// Longest key or `type` value the media probe keeps; longer ones match nothing.
const PROBE_BYTES: usize = 16;

/// Top-level keys whose arrays hold messages with content parts (Chat Completions, Responses).
const MESSAGE_LISTS: &[&[u8]] = &[b"messages", b"input"];

/// `type` values of content parts that carry an image, audio, video or file (OpenAI Chat
/// Completions and Responses, vLLM's `video_url`/`audio_url`, Anthropic's `image`/`document`).
pub const MEDIA_PART_TYPES: &[&str] = &[
    "image_url",
    "input_image",
    "image",
    "input_audio",
    "audio_url",
    "video_url",
    "file",
    "input_file",
    "document",
];

/// Opt-in detection of media content parts (`messages[].content[].type`, also under the
/// top-level `input`), found in the same pass. Off (`ModelScanner<false>`), it costs nothing.
#[derive(Debug, Default)]
struct Media {
    found: bool,
    /// How much of the path the open containers match: 1 = the messages array is open (at
    /// depth 2), 2 = a message object (depth 3), 3 = its content array (depth 4), 4 = a part
    /// object (depth 5). Level L is always the container at depth L + 1 or below.
    level: u32,
    /// The key just read continues the path: the value decides.
    next: bool,
    /// The current string is captured into `probe`.
    capturing: bool,
    /// The captured string is a part's `type` value.
    type_value: bool,
    probe: [u8; PROBE_BYTES],
    /// Bytes in `probe`; more than `PROBE_BYTES` means too long to match.
    probe_len: usize,
}

impl Media {
    fn capture(&mut self, bytes: &[u8]) {
        let end = self.probe_len + bytes.len();
        if let Some(dst) = self.probe.get_mut(self.probe_len..end) {
            dst.copy_from_slice(bytes);
        }
        self.probe_len = end;
    }

    fn probed(&self) -> &[u8] {
        self.probe.get(..self.probe_len).unwrap_or(&[])
    }

    /// A key at `depth` was opened: capture it when it could continue the path.
    fn begin_key(&mut self, depth: u32) {
        self.next = false;
        self.capturing = depth == self.level + 1 && matches!(depth, 1 | 3 | 5);
        self.probe_len = 0;
    }

    /// A key ended: does it continue the path?
    fn end_key(&mut self, depth: u32) {
        if self.capturing {
            let key = self.probed();
            self.next = match depth {
                1 => MESSAGE_LISTS.contains(&key),
                3 => key == b"content",
                _ => key == b"type",
            };
            self.capturing = false;
        }
    }

    /// A value starting with `b` begins in the container at `depth`. Returns true when it is
    /// a part's `type` string, to be captured.
    fn begin_value(&mut self, b: u8, depth: u32) -> bool {
        let after_key = std::mem::take(&mut self.next);
        let on_path = depth == self.level + 1;
        match (b, self.level) {
            (b'[', 0 | 2) if after_key => self.level += 1,
            (b'{', 1 | 3) if on_path => self.level += 1,
            (b'"', 4) if after_key => {
                self.capturing = true;
                self.type_value = true;
                self.probe_len = 0;
                return true;
            }
            _ => {}
        }
        false
    }

    fn end_value(&mut self) {
        if self.type_value {
            let t = self.probed();
            self.found |= MEDIA_PART_TYPES.iter().any(|m| m.as_bytes() == t);
            self.type_value = false;
            self.capturing = false;
        }
    }
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

    fn number_byte(&mut self, part: NumPart, b: u8, pos: u64) -> Result<(), ScanError> {
        let digit = b.is_ascii_digit();
        let d = b.wrapping_sub(b'0');
        let next = match (part, b) {
            (NumPart::Minus, b'0') => NumPart::Zero,
            (NumPart::Minus, _) if digit => {
                self.num.sig = u64::from(d);
                NumPart::Int
            }
            (NumPart::Zero, _) if digit => return Err(invalid(pos, "leading zero in number")),
            (NumPart::Int, _) if digit => {
                self.num.int_digit(u64::from(d));
                NumPart::Int
            }
            (NumPart::Zero | NumPart::Int, b'.') => NumPart::Dot,
            (NumPart::Dot | NumPart::Frac, _) if digit => {
                self.num.frac_digit(u64::from(d));
                NumPart::Frac
            }
            (NumPart::Zero | NumPart::Int | NumPart::Frac, b'e' | b'E') => {
                self.num.has_exp = true;
                NumPart::ExpMark
            }
            (NumPart::ExpMark, b'+') => NumPart::ExpSign,
            (NumPart::ExpMark, b'-') => {
                self.num.exp_neg = true;
                NumPart::ExpSign
            }
            (NumPart::ExpMark | NumPart::ExpSign | NumPart::Exp, _) if digit => {
                self.num.exp_digit(i32::from(d));
                NumPart::Exp
            }
            (NumPart::Zero | NumPart::Int | NumPart::Frac | NumPart::Exp, _) => {
                // The number ended before `b`, which belongs to what follows.
                if !self.num.in_range() {
                    return Err(invalid(self.num.start, "number out of range"));
                }
                self.state = State::AfterValue;
                return self.step(b, pos);
            }
            (NumPart::Minus | NumPart::Dot | NumPart::ExpMark | NumPart::ExpSign, _) => {
                return Err(invalid(pos, "invalid number"))
            }
        };
        self.state = State::Num(next);
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
mod tests {
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

    const CHAT: &[u8] = include_bytes!("../tests/data/chat-request-model-last.json");

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
        let body = b" \t\r\n{ \t\r\n\"model\" \t\r\n: \t\r\n\"a\" \t\r\n, \"x\" : [ 1 , { } ] \t\r\n} \t\r\n";
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
        b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b' ', 0, 0x1f, 0x7f, 0x80, 0xc3, 0xe2,
        0xed, 0xf0, 0xff, b'u', b'n', b'0', b'-', b'.', b'e', b'+', b'd', b'8',
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
}
