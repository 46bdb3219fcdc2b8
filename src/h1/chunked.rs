//! Finding where a body ends without copying it: [`BodyTracker`] for every framing, and
//! [`ChunkedDecoder`], a byte-resumable observer of the chunked coding (RFC 9112 §7.1) shaped
//! like hyper's `ChunkedState`. The bytes themselves are forwarded unchanged by the engine;
//! these types only track position, hand payload slices to `on_data`, and refuse bad framing.
//!
//! Policy (a proxy must not be more lenient than the parsers behind it):
//! - every line ends in CRLF: a bare LF anywhere (size line, extension, after data, trailers,
//!   final line) is `BadLineEnding`;
//! - sizes are hex (either case), leading zeros allowed, at most 16 digits, no `u64` overflow;
//! - `SP`/`HTAB` may follow the size (BWS before `;`), extensions are skipped unparsed up to
//!   16 KiB per size line;
//! - trailers are parsed as `name: value` fields (no obs-fold, no space before the colon, no
//!   control bytes), at most 16 KiB and 100 fields in all; `Content-Length`,
//!   `Transfer-Encoding` and `Host` there are refused: they must never reach a parser that
//!   merges trailers into the head.

use super::{ChunkedError, RequestFraming, ResponseFraming};

/// Most chunk-extension bytes on one size line.
pub const MAX_CHUNK_EXTENSION_BYTES: u32 = 16 * 1024;
/// Most bytes in the trailer section (fields and the final CRLF).
pub const MAX_TRAILER_BYTES: u32 = 16 * 1024;
/// Most fields in the trailer section.
pub const MAX_TRAILER_FIELDS: u32 = 100;
/// Most hex digits in a chunk size, leading zeros included (httparse allows 15).
const MAX_SIZE_DIGITS: u8 = 16;
/// Longest trailer name we must recognise (`transfer-encoding`).
const NAME_CAP: usize = 17;

/// Finds where a body ends without copying it; `on_data` sees the payload bytes.
#[derive(Debug, Clone)]
pub enum BodyTracker {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl BodyTracker {
    pub fn for_request(framing: RequestFraming) -> BodyTracker {
        match framing {
            RequestFraming::Empty | RequestFraming::Length(0) => BodyTracker::Done,
            RequestFraming::Length(n) => BodyTracker::Length { remaining: n },
            RequestFraming::Chunked => BodyTracker::Chunked(ChunkedDecoder::new()),
        }
    }

    pub fn for_response(framing: ResponseFraming) -> BodyTracker {
        match framing {
            ResponseFraming::Empty | ResponseFraming::Length(0) => BodyTracker::Done,
            ResponseFraming::Length(n) => BodyTracker::Length { remaining: n },
            ResponseFraming::Chunked => BodyTracker::Chunked(ChunkedDecoder::new()),
            ResponseFraming::UntilClose => BodyTracker::UntilClose,
        }
    }

    /// Observes `input`; returns how many bytes belong to the body. Less than `input.len()`
    /// only when the body ended inside `input` (the rest is the next message, or overread).
    /// `UntilClose` takes everything and never ends: the engine ends it at EOF. After `Done`,
    /// every call returns `Ok(0)`. A chunked error is final: later calls repeat it.
    pub fn feed(
        &mut self,
        input: &[u8],
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, ChunkedError> {
        match self {
            BodyTracker::Done => Ok(0),
            BodyTracker::UntilClose => {
                if !input.is_empty() {
                    on_data(input);
                }
                Ok(input.len())
            }
            BodyTracker::Length { remaining } => {
                let n = clamp(*remaining, input.len());
                if let Some(data) = input.get(..n) {
                    if !data.is_empty() {
                        on_data(data);
                    }
                }
                *remaining -= n as u64;
                if *remaining == 0 {
                    *self = BodyTracker::Done;
                }
                Ok(n)
            }
            BodyTracker::Chunked(decoder) => {
                let n = decoder.feed(input, on_data)?;
                if decoder.is_done() {
                    *self = BodyTracker::Done;
                }
                Ok(n)
            }
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyTracker::Done)
    }

    /// A close-delimited body: only EOF ends it, and the connection cannot be reused.
    pub fn is_until_close(&self) -> bool {
        matches!(self, BodyTracker::UntilClose)
    }
}

/// `min(remaining, len)` as a `usize`, without a lossy cast.
fn clamp(remaining: u64, len: usize) -> usize {
    usize::try_from(remaining).map_or(len, |r| r.min(len))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Expecting the first hex digit of a size line.
    #[default]
    SizeStart,
    /// More hex digits, or what follows them.
    Size,
    /// Whitespace after the digits (BWS before `;`).
    SizeLws,
    /// Inside `;ext...`, until CR.
    Extension,
    /// CR of the size line seen.
    SizeLf,
    /// `remaining` payload bytes left in this chunk.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
    Failed(ChunkedError),
}

/// A byte-resumable chunked-coding observer (RFC 9112 §7.1).
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: State,
    /// The size being read (in `Size*`), then the payload bytes left (in `Data*`).
    remaining: u64,
    digits: u8,
    ext_bytes: u32,
    trailer_bytes: u32,
    trailer_fields: u32,
    /// The current trailer name, when it is at most `NAME_CAP` bytes long.
    name: [u8; NAME_CAP],
    name_len: usize,
    name_too_long: bool,
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder::default()
    }

    /// The terminating empty line after the last chunk (and trailers) was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Observes `input`; returns how many bytes belong to the body (less than `input.len()`
    /// only when the body ended inside it). Payload slices go to `on_data`; sizes, CRLFs,
    /// extensions and trailers do not.
    pub fn feed(
        &mut self,
        input: &[u8],
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, ChunkedError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Done => return Ok(pos),
                State::Failed(e) => return Err(e),
                State::Data => {
                    let rest = input.get(pos..).unwrap_or_default();
                    let n = clamp(self.remaining, rest.len());
                    if let Some(data) = rest.get(..n) {
                        on_data(data);
                    }
                    self.remaining -= n as u64;
                    pos += n;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                _ => {
                    let b = input.get(pos).copied().unwrap_or_default();
                    pos += 1;
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                }
            }
        }
        match self.state {
            State::Failed(e) => Err(e),
            _ => Ok(pos),
        }
    }

    /// One byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::SizeStart => {
                self.remaining = 0;
                self.digits = 0;
                self.ext_bytes = 0;
                self.push_digit(b).ok_or(ChunkedError::BadSize)??;
                State::Size
            }
            State::Size => match self.push_digit(b) {
                Some(r) => {
                    r?;
                    State::Size
                }
                None => self.after_size(b)?,
            },
            State::SizeLws => self.after_size(b)?,
            State::Extension => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkedError::BadLineEnding),
                _ => {
                    self.ext_bytes += 1;
                    if self.ext_bytes > MAX_CHUNK_EXTENSION_BYTES {
                        return Err(ChunkedError::ExtensionTooLong);
                    }
                    State::Extension
                }
            },
            State::SizeLf => match b {
                b'\n' if self.remaining == 0 => State::TrailerStart,
                b'\n' => State::Data,
                _ => return Err(ChunkedError::BadLineEnding),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkedError::BadLineEnding),
            },
            State::DataLf => match b {
                b'\n' => State::SizeStart,
                _ => return Err(ChunkedError::BadLineEnding),
            },
            State::TrailerStart => {
                self.count_trailer_byte()?;
                match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(ChunkedError::BadLineEnding),
                    _ if is_tchar(b) => {
                        self.trailer_fields += 1;
                        if self.trailer_fields > MAX_TRAILER_FIELDS {
                            return Err(ChunkedError::TrailersTooLarge);
                        }
                        self.name_len = 0;
                        self.name_too_long = false;
                        self.push_name(b);
                        State::TrailerName
                    }
                    // Obs-fold, whitespace before a name, or a non-token byte.
                    _ => return Err(ChunkedError::BadTrailer),
                }
            }
            State::TrailerName => {
                self.count_trailer_byte()?;
                match b {
                    b':' if self.name_is_forbidden() => return Err(ChunkedError::ForbiddenTrailer),
                    b':' => State::TrailerValue,
                    _ if is_tchar(b) => {
                        self.push_name(b);
                        State::TrailerName
                    }
                    _ => return Err(ChunkedError::BadTrailer),
                }
            }
            State::TrailerValue => {
                self.count_trailer_byte()?;
                match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkedError::BadLineEnding),
                    b'\t' | b' '..=b'~' | 0x80..=0xff => State::TrailerValue,
                    _ => return Err(ChunkedError::BadTrailer),
                }
            }
            State::TrailerLf => {
                self.count_trailer_byte()?;
                match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkedError::BadLineEnding),
                }
            }
            State::EndLf => {
                self.count_trailer_byte()?;
                match b {
                    b'\n' => State::Done,
                    _ => return Err(ChunkedError::BadLineEnding),
                }
            }
            // `feed` handles these without calling `step`.
            State::Data | State::Done | State::Failed(_) => self.state,
        };
        Ok(())
    }

    /// Adds a hex digit to the size: `None` if `b` is not one, `Some(Err)` on overflow.
    fn push_digit(&mut self, b: u8) -> Option<Result<(), ChunkedError>> {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        self.digits += 1;
        if self.digits > MAX_SIZE_DIGITS {
            return Some(Err(ChunkedError::SizeOverflow));
        }
        Some(
            self.remaining
                .checked_mul(16)
                .and_then(|n| n.checked_add(u64::from(d)))
                .map(|n| self.remaining = n)
                .ok_or(ChunkedError::SizeOverflow),
        )
    }

    /// A byte after the size digits: whitespace, `;` starting extensions, or CR.
    fn after_size(&mut self, b: u8) -> Result<State, ChunkedError> {
        match b {
            b' ' | b'\t' => Ok(State::SizeLws),
            b';' => {
                self.ext_bytes = 1;
                Ok(State::Extension)
            }
            b'\r' => Ok(State::SizeLf),
            b'\n' => Err(ChunkedError::BadLineEnding),
            _ => Err(ChunkedError::BadSize),
        }
    }

    fn count_trailer_byte(&mut self) -> Result<(), ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            Err(ChunkedError::TrailersTooLarge)
        } else {
            Ok(())
        }
    }

    fn push_name(&mut self, b: u8) {
        match self.name.get_mut(self.name_len) {
            Some(slot) => {
                *slot = b;
                self.name_len += 1;
            }
            None => self.name_too_long = true,
        }
    }

    fn name_is_forbidden(&self) -> bool {
        if self.name_too_long {
            return false;
        }
        let name = self.name.get(..self.name_len).unwrap_or_default();
        [&b"content-length"[..], b"transfer-encoding", b"host"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f))
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What feeding a whole body yields: payload, bytes consumed, done.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        payload: Vec<u8>,
        consumed: usize,
        done: bool,
    }

    /// Feeds `input` cut at `cuts` (increasing offsets) into a fresh tracker.
    fn run_tracker(
        mut tracker: BodyTracker,
        input: &[u8],
        cuts: &[usize],
    ) -> Result<Outcome, ChunkedError> {
        let mut payload = Vec::new();
        let mut consumed = 0;
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            let piece = &input[start..end];
            start = end;
            let n = tracker.feed(piece, &mut |d| payload.extend_from_slice(d))?;
            assert!(n <= piece.len());
            consumed += n;
            if n < piece.len() {
                assert!(tracker.is_done(), "short consume while not done");
                break;
            }
        }
        Ok(Outcome {
            payload,
            consumed,
            done: tracker.is_done(),
        })
    }

    fn chunked() -> BodyTracker {
        BodyTracker::for_request(RequestFraming::Chunked)
    }

    /// The same result whole, in every 2-way split, and byte by byte.
    fn run_all_splits(input: &[u8]) -> Result<Outcome, ChunkedError> {
        let whole = run_tracker(chunked(), input, &[]);
        for cut in 0..=input.len() {
            assert_eq!(
                run_tracker(chunked(), input, &[cut]),
                whole,
                "split at {cut} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            run_tracker(chunked(), input, &bytes),
            whole,
            "byte by byte of {:?}",
            String::from_utf8_lossy(input)
        );
        whole
    }

    fn ok(payload: &[u8], consumed: usize) -> Result<Outcome, ChunkedError> {
        Ok(Outcome {
            payload: payload.to_vec(),
            consumed,
            done: true,
        })
    }

    fn assert_body(input: &[u8], payload: &[u8]) {
        assert_eq!(run_all_splits(input), ok(payload, input.len()));
    }

    fn assert_error(input: &[u8], e: ChunkedError) {
        assert_eq!(run_all_splits(input), Err(e));
    }

    // ---- valid bodies ----

    #[test]
    fn simple_body() {
        assert_body(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world");
    }

    #[test]
    fn empty_body_is_just_the_last_chunk() {
        assert_body(b"0\r\n\r\n", b"");
    }

    #[test]
    fn uppercase_and_lowercase_hex() {
        assert_body(
            b"A\r\n0123456789\r\nb\r\nabcdefghijk\r\n0\r\n\r\n",
            b"0123456789abcdefghijk",
        );
    }

    #[test]
    fn leading_zeros_and_zero_run_last_chunk() {
        assert_body(b"0003\r\nabc\r\n0000\r\n\r\n", b"abc");
    }

    #[test]
    fn extensions_are_skipped() {
        assert_body(
            b"3;name=value\r\nabc\r\n2 ; a=\"q;x\"\r\nde\r\n0;last\r\n\r\n",
            b"abcde",
        );
    }

    #[test]
    fn whitespace_after_size_is_allowed() {
        assert_body(b"3 \t\r\nabc\r\n0\r\n\r\n", b"abc");
    }

    #[test]
    fn trailers_are_consumed_but_not_payload() {
        assert_body(
            b"3\r\nabc\r\n0\r\nX-Checksum: 123\r\nX-Other:\r\nServer-Timing: a;dur=1\r\n\r\n",
            b"abc",
        );
    }

    #[test]
    fn chunk_data_may_contain_a_fake_terminator() {
        assert_body(b"7\r\n0\r\n\r\nab\r\n0\r\n\r\n", b"0\r\n\r\nab");
    }

    #[test]
    fn bytes_after_the_body_are_not_consumed() {
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(run_all_splits(input), ok(b"abc", 13));
    }

    #[test]
    fn done_decoder_consumes_nothing_more() {
        let mut t = chunked();
        assert_eq!(t.feed(b"0\r\n\r\n", &mut |_| {}), Ok(5));
        assert!(t.is_done());
        assert_eq!(t.feed(b"more", &mut |_| panic!("no data")), Ok(0));
    }

    #[test]
    fn incomplete_body_is_not_done() {
        assert_eq!(
            run_all_splits(b"5\r\nhel"),
            Ok(Outcome {
                payload: b"hel".to_vec(),
                consumed: 6,
                done: false
            })
        );
        assert_eq!(
            run_all_splits(b"0\r\nX-A: b\r\n"),
            Ok(Outcome {
                payload: Vec::new(),
                consumed: 11,
                done: false
            })
        );
    }

    #[test]
    fn sixteen_hex_digits_fit() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"FFFFFFFFFFFFFFFF\r\nab", &mut |_| {}), Ok(20));
        assert!(!d.is_done());
    }

    #[test]
    fn extension_of_exactly_16k_is_accepted() {
        let mut input = b"1;".to_vec();
        input.extend(vec![b'x'; MAX_CHUNK_EXTENSION_BYTES as usize - 1]);
        input.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(run_tracker(chunked(), &input, &[]), ok(b"a", input.len()));
    }

    #[test]
    fn one_hundred_trailers_are_accepted() {
        let mut input = b"0\r\n".to_vec();
        for i in 0..100 {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(run_tracker(chunked(), &input, &[]), ok(b"", input.len()));
    }

    // ---- invalid bodies ----

    #[test]
    fn size_overflow_is_refused() {
        assert_error(b"10000000000000000\r\n", ChunkedError::SizeOverflow);
    }

    #[test]
    fn seventeen_digits_with_leading_zeros_are_refused() {
        assert_error(b"00000000000000001\r\na\r\n", ChunkedError::SizeOverflow);
    }

    #[test]
    fn non_hex_size_is_bad_size() {
        assert_error(b"g\r\n", ChunkedError::BadSize);
        assert_error(b"5x\r\n", ChunkedError::BadSize);
        assert_error(b"\r\n", ChunkedError::BadSize);
        assert_error(b";ext\r\n", ChunkedError::BadSize);
        assert_error(b"-1\r\n", ChunkedError::BadSize);
        assert_error(b"0x5\r\n", ChunkedError::BadSize);
    }

    #[test]
    fn space_inside_size_is_bad_size() {
        assert_error(b"1 0\r\n", ChunkedError::BadSize);
    }

    #[test]
    fn leading_space_before_size_is_bad_size() {
        assert_error(b" 5\r\nhello\r\n0\r\n\r\n", ChunkedError::BadSize);
    }

    #[test]
    fn lf_only_size_line_is_refused() {
        assert_error(b"5\nhello\r\n0\r\n\r\n", ChunkedError::BadLineEnding);
    }

    #[test]
    fn lf_only_after_data_is_refused() {
        assert_error(b"5\r\nhello\n0\r\n\r\n", ChunkedError::BadLineEnding);
    }

    #[test]
    fn lf_only_last_line_is_refused() {
        assert_error(b"0\r\n\n", ChunkedError::BadLineEnding);
    }

    #[test]
    fn lf_only_trailer_is_refused() {
        assert_error(b"0\r\nX-A: b\n\r\n", ChunkedError::BadLineEnding);
    }

    #[test]
    fn data_longer_than_its_size_is_refused() {
        assert_error(b"3\r\nabcd\r\n0\r\n\r\n", ChunkedError::BadLineEnding);
    }

    #[test]
    fn cr_without_lf_is_refused() {
        assert_error(b"3\rabc", ChunkedError::BadLineEnding);
        assert_error(b"3\r\nabc\rX", ChunkedError::BadLineEnding);
    }

    #[test]
    fn bare_lf_in_extension_is_refused() {
        assert_error(b"3;a=b\nabc\r\n0\r\n\r\n", ChunkedError::BadLineEnding);
    }

    #[test]
    fn extension_over_16k_is_refused() {
        let mut input = b"1;".to_vec();
        input.extend(vec![b'x'; MAX_CHUNK_EXTENSION_BYTES as usize]);
        input.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(
            run_tracker(chunked(), &input, &[]),
            Err(ChunkedError::ExtensionTooLong)
        );
    }

    #[test]
    fn content_length_trailer_is_forbidden() {
        assert_error(
            b"0\r\nContent-Length: 5\r\n\r\n",
            ChunkedError::ForbiddenTrailer,
        );
    }

    #[test]
    fn transfer_encoding_trailer_is_forbidden() {
        assert_error(
            b"0\r\nX-A: b\r\ntransfer-ENCODING: chunked\r\n\r\n",
            ChunkedError::ForbiddenTrailer,
        );
    }

    #[test]
    fn host_trailer_is_forbidden() {
        assert_error(b"0\r\nHost: evil\r\n\r\n", ChunkedError::ForbiddenTrailer);
    }

    #[test]
    fn names_that_merely_contain_forbidden_ones_are_fine() {
        assert_body(b"0\r\nX-Host: a\r\nContent-Lengths: 1\r\n\r\n", b"");
    }

    #[test]
    fn obs_fold_in_trailers_is_refused() {
        assert_error(b"0\r\nX-A: b\r\n c\r\n\r\n", ChunkedError::BadTrailer);
    }

    #[test]
    fn space_before_colon_in_trailer_is_refused() {
        assert_error(b"0\r\nX-A : b\r\n\r\n", ChunkedError::BadTrailer);
    }

    #[test]
    fn trailer_without_colon_is_refused() {
        assert_error(b"0\r\nX-A\r\n\r\n", ChunkedError::BadTrailer);
    }

    #[test]
    fn nul_in_trailer_value_is_refused() {
        assert_error(b"0\r\nX-A: b\0\r\n\r\n", ChunkedError::BadTrailer);
    }

    #[test]
    fn more_than_100_trailers_are_too_large() {
        let mut input = b"0\r\n".to_vec();
        for i in 0..101 {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            run_tracker(chunked(), &input, &[]),
            Err(ChunkedError::TrailersTooLarge)
        );
    }

    #[test]
    fn trailers_over_16k_are_too_large() {
        let mut input = b"0\r\nX-Big: ".to_vec();
        input.extend(vec![b'v'; MAX_TRAILER_BYTES as usize]);
        input.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            run_tracker(chunked(), &input, &[]),
            Err(ChunkedError::TrailersTooLarge)
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"z", &mut |_| {}), Err(ChunkedError::BadSize));
        assert_eq!(
            d.feed(b"0\r\n\r\n", &mut |_| {}),
            Err(ChunkedError::BadSize)
        );
    }

    // ---- BodyTracker ----

    #[test]
    fn empty_and_zero_length_are_done_at_once() {
        assert!(BodyTracker::for_request(RequestFraming::Empty).is_done());
        assert!(BodyTracker::for_request(RequestFraming::Length(0)).is_done());
        assert!(BodyTracker::for_response(ResponseFraming::Empty).is_done());
        assert!(BodyTracker::for_response(ResponseFraming::Length(0)).is_done());
    }

    #[test]
    fn length_tracker_stops_at_the_length() {
        let t = BodyTracker::for_request(RequestFraming::Length(5));
        let input = b"helloGET";
        for cut in 0..=input.len() {
            assert_eq!(
                run_tracker(t.clone(), input, &[cut]),
                ok(b"hello", 5),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn length_tracker_waits_for_more() {
        let mut t = BodyTracker::for_response(ResponseFraming::Length(10));
        let mut seen = Vec::new();
        assert_eq!(t.feed(b"abc", &mut |d| seen.extend_from_slice(d)), Ok(3));
        assert!(!t.is_done());
        assert!(matches!(t, BodyTracker::Length { remaining: 7 }));
        assert_eq!(seen, b"abc");
    }

    #[test]
    fn until_close_takes_everything_and_never_ends() {
        let mut t = BodyTracker::for_response(ResponseFraming::UntilClose);
        assert!(t.is_until_close());
        let mut seen = Vec::new();
        assert_eq!(t.feed(b"abc", &mut |d| seen.extend_from_slice(d)), Ok(3));
        assert_eq!(
            t.feed(b"0\r\n\r\n", &mut |d| seen.extend_from_slice(d)),
            Ok(5)
        );
        assert!(!t.is_done());
        assert_eq!(seen, b"abc0\r\n\r\n");
    }

    #[test]
    fn chunked_tracker_becomes_done() {
        let mut t = BodyTracker::for_response(ResponseFraming::Chunked);
        assert_eq!(t.feed(b"1\r\na\r\n0\r\n\r\nx", &mut |_| {}), Ok(11));
        assert!(t.is_done());
    }
}
