//! A gzip / deflate body inflated on the side, block by block, for the usage scanner only.
//!
//! Owns: undoing `Content-Encoding: gzip` or `deflate` on a copy, with fixed memory (the
//! 32 KiB deflate window, miniz_oxide's tables and an 8 KiB output block: about 51 KiB,
//! whatever the answer's size), fed the de-chunked payload split anywhere. The bytes the
//! client gets are never touched; a stream that cannot be inflated is reported, not guessed
//! at.
//!
//! # Leniency (what curl accepts)
//! The format is sniffed from the first bytes: `1f 8b` is a gzip member (RFC 1952), a valid
//! zlib header (RFC 1950: method 8, window ≤ 32 KiB, check bits, no preset dictionary) is
//! zlib, whichever of the two the header named. Anything else is raw deflate (RFC 1951, what
//! some servers send as `deflate`) for `deflate`, and corrupt for `gzip`. Checksums (gzip's CRC-32, zlib's Adler-32) are not verified: the counts are
//! read as the bytes inflate, and the client verifies what it receives. Concatenated gzip
//! members are inflated one after the other; bytes after the last member are ignored.

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// Inflated bytes are handed on in pieces of at most this size.
const OUT_BYTES: usize = 8 * 1024;

/// The gzip member header's flag bits (RFC 1952 §2.3.1).
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// Why inflating stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// A broken header or deflate data.
    Corrupt,
    /// The stream inflates to more than [`MAX_RATIO`] times its compressed size (past the
    /// first [`RATIO_HEADROOM`] bytes): a decompression bomb is not scanned, so one small
    /// read can never cost the worker more than a bounded amount of work.
    TooLarge,
}

/// Inflated bytes allowed per compressed byte (real JSON and SSE inflate 3–30×).
pub const MAX_RATIO: u64 = 200;

/// Inflated bytes always allowed, whatever the ratio (small, repetitive answers).
pub const RATIO_HEADROOM: u64 = 1 << 20;

/// Where in the compressed stream the next byte belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The first two bytes decide the format; `first` holds the first one once it came.
    Sniff {
        first: Option<u8>,
    },
    /// A gzip member header after its magic bytes.
    Gzip(GzipHeader),
    /// Deflate data.
    Deflate {
        gzip: bool,
    },
    /// After the deflate data: `left` trailer bytes to skip (gzip 8, zlib 4).
    Trailer {
        left: u8,
        gzip: bool,
    },
    /// After a gzip member: another one may follow (`1f 8b`); `seen` of its magic bytes.
    NextMember {
        seen: u8,
    },
    /// The stream ended; later bytes are ignored.
    Ended,
    Failed(InflateError),
}

/// The parts of a gzip member header after `1f 8b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GzipHeader {
    /// CM, FLG, MTIME, XFL, OS: `left` of those 8 bytes to come; `flags` once FLG came.
    Fixed {
        left: u8,
        flags: u8,
    },
    /// The two-byte little-endian length of the extra field; `low` once its first came.
    ExtraLen {
        flags: u8,
        low: Option<u8>,
    },
    Extra {
        flags: u8,
        left: u16,
    },
    /// A zero-terminated file name.
    Name {
        flags: u8,
    },
    /// A zero-terminated comment.
    Comment {
        flags: u8,
    },
    /// The header's CRC-16: `left` bytes.
    Crc {
        left: u8,
    },
}

/// Streaming gzip / zlib / raw deflate inflater. Boxed by its owner: it is large, and only
/// compressed answers need one.
pub struct Inflater {
    state: Box<InflateState>,
    out: Box<[u8; OUT_BYTES]>,
    stage: Stage,
    /// Bytes without a gzip or zlib header are raw deflate (`Content-Encoding: deflate`).
    raw_allowed: bool,
    /// Compressed bytes fed so far, and inflated bytes handed on (for [`MAX_RATIO`]).
    taken: u64,
    given: u64,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inflater({:?})", self.stage)
    }
}

impl Inflater {
    /// Heap bytes one inflater holds (for the buffer budget).
    pub const HEAP_BYTES: usize = std::mem::size_of::<InflateState>() + OUT_BYTES;

    /// An inflater for `gzip` (`raw_allowed` false: gzip or zlib data) or `deflate` (true:
    /// zlib, gzip, or raw deflate).
    pub fn new(raw_allowed: bool) -> Inflater {
        Inflater {
            state: InflateState::new_boxed(DataFormat::Raw),
            out: Box::new([0; OUT_BYTES]),
            stage: Stage::Sniff { first: None },
            raw_allowed,
            taken: 0,
            given: 0,
        }
    }

    /// Whether the compressed stream is complete (later bytes are ignored).
    pub fn is_ended(&self) -> bool {
        self.stage == Stage::Ended
    }

    /// Inflates the next compressed bytes (split anywhere) and hands every inflated piece to
    /// `sink`, in order. After an error every later call fails too.
    pub fn feed(&mut self, bytes: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<(), InflateError> {
        self.taken = self.taken.saturating_add(bytes.len() as u64);
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = match self.stage {
                Stage::Sniff { first } => self.sniff(rest, first, sink)?,
                Stage::Gzip(header) => self.gzip_header(rest, header)?,
                Stage::Deflate { gzip } => self.deflate(rest, gzip, sink)?,
                Stage::Trailer { left, gzip } => {
                    let n = rest.len().min(usize::from(left));
                    // n <= left, a u8.
                    let left = left - n as u8;
                    self.stage = match (left, gzip) {
                        (0, true) => Stage::NextMember { seen: 0 },
                        (0, false) => Stage::Ended,
                        _ => Stage::Trailer { left, gzip },
                    };
                    n
                }
                Stage::NextMember { seen } => self.next_member(rest[0], seen),
                Stage::Ended => rest.len(),
                Stage::Failed(e) => return Err(e),
            };
            rest = &rest[used..];
        }
        if let Stage::Failed(e) = self.stage {
            return Err(e);
        }
        Ok(())
    }

    /// The first two bytes: gzip magic, a zlib header, or the start of raw deflate.
    fn sniff(
        &mut self,
        rest: &[u8],
        first: Option<u8>,
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<usize, InflateError> {
        let Some(a) = first else {
            self.stage = Stage::Sniff {
                first: Some(rest[0]),
            };
            return Ok(1);
        };
        let b = rest[0];
        if a == 0x1f && b == 0x8b {
            self.stage = Stage::Gzip(GzipHeader::Fixed { left: 8, flags: 0 });
            return Ok(1);
        }
        if is_zlib_header(a, b) {
            self.stage = Stage::Deflate { gzip: false };
            return Ok(1);
        }
        if !self.raw_allowed {
            return self.corrupt();
        }
        // Raw deflate: the held byte is deflate data too.
        self.stage = Stage::Deflate { gzip: false };
        self.deflate(&[a], false, sink)?;
        Ok(0)
    }

    fn gzip_header(&mut self, rest: &[u8], header: GzipHeader) -> Result<usize, InflateError> {
        let b = rest[0];
        let next = match header {
            GzipHeader::Fixed { left, flags } => {
                let flags = match left {
                    // CM: only deflate exists.
                    8 if b != 8 => return self.corrupt(),
                    7 => b,
                    _ => flags,
                };
                if left > 1 {
                    Stage::Gzip(GzipHeader::Fixed {
                        left: left - 1,
                        flags,
                    })
                } else {
                    after_fixed(flags)
                }
            }
            GzipHeader::ExtraLen { flags, low: None } => Stage::Gzip(GzipHeader::ExtraLen {
                flags,
                low: Some(b),
            }),
            GzipHeader::ExtraLen {
                flags,
                low: Some(low),
            } => {
                let len = u16::from_le_bytes([low, b]);
                if len == 0 {
                    after_extra(flags)
                } else {
                    Stage::Gzip(GzipHeader::Extra { flags, left: len })
                }
            }
            GzipHeader::Extra { flags, left } => {
                let n = rest.len().min(usize::from(left));
                // n <= left, a u16.
                let left = left - n as u16;
                self.stage = if left == 0 {
                    after_extra(flags)
                } else {
                    Stage::Gzip(GzipHeader::Extra { flags, left })
                };
                return Ok(n);
            }
            GzipHeader::Name { flags } => {
                return Ok(self.zero_terminated(rest, after_name(flags)));
            }
            GzipHeader::Comment { flags } => {
                return Ok(self.zero_terminated(rest, after_comment(flags)));
            }
            GzipHeader::Crc { left: 2 } => Stage::Gzip(GzipHeader::Crc { left: 1 }),
            GzipHeader::Crc { .. } => Stage::Deflate { gzip: true },
        };
        self.stage = next;
        Ok(1)
    }

    /// Skips through the next zero byte, then moves to `then`.
    fn zero_terminated(&mut self, rest: &[u8], then: Stage) -> usize {
        match memchr::memchr(0, rest) {
            Some(i) => {
                self.stage = then;
                i + 1
            }
            None => rest.len(),
        }
    }

    fn deflate(
        &mut self,
        rest: &[u8],
        gzip: bool,
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<usize, InflateError> {
        let mut used = 0;
        loop {
            let input = &rest[used..];
            let r = inflate(&mut self.state, input, &mut self.out[..], MZFlush::None);
            used += r.bytes_consumed;
            if let Some(out) = self.out.get(..r.bytes_written).filter(|o| !o.is_empty()) {
                self.given = self.given.saturating_add(out.len() as u64);
                if self.given > self.taken.saturating_mul(MAX_RATIO) + RATIO_HEADROOM {
                    self.stage = Stage::Failed(InflateError::TooLarge);
                    return Err(InflateError::TooLarge);
                }
                sink(out);
            }
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    self.stage = Stage::Trailer {
                        left: if gzip { 8 } else { 4 },
                        gzip,
                    };
                    return Ok(used);
                }
                // Everything given was taken, and the output block was not filled, so nothing
                // is waiting in the window: the next bytes are needed.
                Ok(_) if used == rest.len() && r.bytes_written < OUT_BYTES => return Ok(used),
                // Called with no input after a full output block, and nothing was left.
                Err(MZError::Buf) if used == rest.len() => return Ok(used),
                Ok(_) if r.bytes_consumed > 0 || r.bytes_written > 0 => {}
                // Data errors, and (never expected) a call that moved nothing: give up
                // rather than spin.
                _ => return self.corrupt(),
            }
        }
    }

    /// After a gzip member: `1f 8b` starts another; anything else ends the stream.
    fn next_member(&mut self, b: u8, seen: u8) -> usize {
        self.stage = match (seen, b) {
            (0, 0x1f) => Stage::NextMember { seen: 1 },
            (1, 0x8b) => {
                self.state.reset(DataFormat::Raw);
                Stage::Gzip(GzipHeader::Fixed { left: 8, flags: 0 })
            }
            _ => Stage::Ended,
        };
        1
    }

    fn corrupt<T>(&mut self) -> Result<T, InflateError> {
        self.stage = Stage::Failed(InflateError::Corrupt);
        Err(InflateError::Corrupt)
    }
}

/// RFC 1950 §2.2: deflate, a window of at most 32 KiB, the check bits, no preset dictionary.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
        && flg & 0x20 == 0
}

fn after_fixed(flags: u8) -> Stage {
    if flags & FEXTRA != 0 {
        Stage::Gzip(GzipHeader::ExtraLen { flags, low: None })
    } else {
        after_extra(flags)
    }
}

fn after_extra(flags: u8) -> Stage {
    if flags & FNAME != 0 {
        Stage::Gzip(GzipHeader::Name { flags })
    } else {
        after_name(flags)
    }
}

fn after_name(flags: u8) -> Stage {
    if flags & FCOMMENT != 0 {
        Stage::Gzip(GzipHeader::Comment { flags })
    } else {
        after_comment(flags)
    }
}

fn after_comment(flags: u8) -> Stage {
    if flags & FHCRC != 0 {
        Stage::Gzip(GzipHeader::Crc { left: 2 })
    } else {
        Stage::Deflate { gzip: true }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::InflateError::Corrupt;
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::{Compression, GzBuilder};
    use std::io::Write;

    const TEXT: &[u8] = include_bytes!("../../tests/data/openai-chat-stream.sse");

    pub(in crate::usage) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    pub(in crate::usage) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("zlib");
        e.finish().expect("zlib")
    }

    pub(in crate::usage) fn raw(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("deflate");
        e.finish().expect("deflate")
    }

    fn inflate_pieces(pieces: &[&[u8]]) -> Result<Vec<u8>, InflateError> {
        let mut inflater = Inflater::new(true);
        let mut out = Vec::new();
        for p in pieces {
            inflater.feed(p, &mut |d| out.extend_from_slice(d))?;
        }
        Ok(out)
    }

    fn inflate_all(data: &[u8]) -> Result<Vec<u8>, InflateError> {
        inflate_pieces(&[data])
    }

    #[test]
    fn gzip_zlib_and_raw_deflate_all_inflate() {
        for (name, data) in [
            ("gzip", gzip(TEXT)),
            ("zlib", zlib(TEXT)),
            ("raw", raw(TEXT)),
        ] {
            assert_eq!(inflate_all(&data).as_deref(), Ok(TEXT), "{name}");
        }
    }

    #[test]
    fn every_split_in_two_gives_the_same_bytes() {
        for data in [gzip(TEXT), zlib(TEXT), raw(TEXT)] {
            for at in 0..=data.len() {
                let (a, b) = data.split_at(at);
                assert_eq!(inflate_pieces(&[a, b]).as_deref(), Ok(TEXT), "at {at}");
            }
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_bytes() {
        for data in [gzip(TEXT), zlib(TEXT), raw(TEXT)] {
            let pieces: Vec<&[u8]> = data.chunks(1).collect();
            assert_eq!(inflate_pieces(&pieces).as_deref(), Ok(TEXT));
        }
    }

    #[test]
    fn an_answer_larger_than_the_window_and_the_output_block_inflates() {
        let mut big = Vec::new();
        let mut seed = 7u32;
        while big.len() < 300_000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            big.extend_from_slice(format!("{} ", seed >> 16).as_bytes());
        }
        for data in [gzip(&big), zlib(&big), raw(&big)] {
            let pieces: Vec<&[u8]> = data.chunks(1000).collect();
            assert_eq!(inflate_pieces(&pieces), Ok(big.clone()));
        }
    }

    #[test]
    fn gzip_header_fields_are_skipped() {
        let mut e = GzBuilder::new()
            .filename("answer.json")
            .comment("a comment")
            .extra(vec![1, 2, 3, 4, 5])
            .write(Vec::new(), Compression::fast());
        e.write_all(TEXT).expect("gzip");
        let mut data = e.finish().expect("gzip");
        assert_eq!(inflate_all(&data).as_deref(), Ok(TEXT));
        // The same with a header CRC (FHCRC): two more bytes after the comment.
        // 10 fixed bytes, the extra field (2 + 5), the name and the comment with their zeros.
        let comment_end = 10 + 2 + 5 + "answer.json".len() + 1 + "a comment".len() + 1;
        data[3] |= FHCRC;
        data.splice(comment_end..comment_end, [0xab, 0xcd]);
        for at in 0..40 {
            let (a, b) = data.split_at(at);
            assert_eq!(inflate_pieces(&[a, b]).as_deref(), Ok(TEXT), "at {at}");
        }
    }

    #[test]
    fn concatenated_gzip_members_inflate_one_after_the_other() {
        let mut data = gzip(b"first ");
        data.extend(gzip(b"second"));
        assert_eq!(inflate_all(&data).as_deref(), Ok(&b"first second"[..]));
    }

    #[test]
    fn bytes_after_the_stream_are_ignored() {
        let mut data = zlib(TEXT);
        data.extend_from_slice(b"trailing junk");
        let mut inflater = Inflater::new(true);
        let mut out = Vec::new();
        assert_eq!(
            inflater.feed(&data, &mut |d| out.extend_from_slice(d)),
            Ok(())
        );
        assert_eq!(out, TEXT);
        assert!(inflater.is_ended());
        let mut data = gzip(TEXT);
        data.extend_from_slice(b"\n\n");
        assert_eq!(inflate_all(&data).as_deref(), Ok(TEXT));
    }

    #[test]
    fn corrupt_data_is_reported_and_stays_reported() {
        let mut inflater = Inflater::new(true);
        // A gzip magic with compression method 7.
        assert_eq!(
            inflater.feed(&[0x1f, 0x8b, 7, 0], &mut |_| {}),
            Err(Corrupt)
        );
        assert_eq!(inflater.feed(b"more", &mut |_| {}), Err(Corrupt));
        // Raw deflate with the reserved block type 3.
        assert_eq!(inflate_all(&[0x07, 0x00, 0x00]), Err(Corrupt));
    }

    #[test]
    fn a_truncated_stream_gives_what_it_had() {
        let data = gzip(TEXT);
        let cut = &data[..data.len() / 2];
        let mut inflater = Inflater::new(true);
        let mut out = Vec::new();
        assert_eq!(
            inflater.feed(cut, &mut |d| out.extend_from_slice(d)),
            Ok(())
        );
        assert!(!inflater.is_ended());
        assert!(TEXT.starts_with(&out) && !out.is_empty());
    }

    #[test]
    fn sync_flushed_pieces_come_out_as_soon_as_they_arrive() {
        // A streaming server flushes after each event: each flush's bytes inflate whole.
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        let mut inflater = Inflater::new(true);
        for event in [&b"data: {\"a\":1}\n\n"[..], b"data: {\"b\":2}\n\n"] {
            e.write_all(event).expect("write");
            e.flush().expect("flush");
            let piece = std::mem::take(e.get_mut());
            let mut out = Vec::new();
            inflater
                .feed(&piece, &mut |d| out.extend_from_slice(d))
                .expect("inflates");
            assert_eq!(out, event);
        }
    }

    #[test]
    fn gzip_accepts_zlib_but_not_raw_deflate() {
        let mut gzip_only = Inflater::new(false);
        let mut out = Vec::new();
        assert_eq!(
            gzip_only.feed(&zlib(TEXT), &mut |d| out.extend_from_slice(d)),
            Ok(())
        );
        assert_eq!(out, TEXT);
        let mut gzip_only = Inflater::new(false);
        assert_eq!(gzip_only.feed(&raw(TEXT), &mut |_| {}), Err(Corrupt));
        let mut gzip_only = Inflater::new(false);
        assert_eq!(
            gzip_only.feed(b"{\"plain\": true}", &mut |_| {}),
            Err(Corrupt)
        );
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_ratio() {
        // 8 MiB of zeros deflate to ~8 KiB: far past 200× once the first MiB is out.
        let zeros = vec![0u8; 8 << 20];
        let bomb = gzip(&zeros);
        let mut inflater = Inflater::new(false);
        let mut out = 0u64;
        let r = inflater.feed(&bomb, &mut |d| out += d.len() as u64);
        assert_eq!(r, Err(InflateError::TooLarge));
        let cap = bomb.len() as u64 * MAX_RATIO + RATIO_HEADROOM;
        assert!(out <= cap, "{out} > {cap}");
        assert_eq!(
            inflater.feed(b"x", &mut |_| {}),
            Err(InflateError::TooLarge)
        );
        // Real text stays far below it.
        let mut big = Vec::new();
        while big.len() < 2 << 20 {
            big.extend_from_slice(TEXT);
        }
        assert_eq!(inflate_all(&gzip(&big)), Ok(big));
    }

    #[test]
    fn the_zlib_header_check_accepts_real_headers_only() {
        assert!(is_zlib_header(0x78, 0x9c));
        assert!(is_zlib_header(0x78, 0x01));
        assert!(is_zlib_header(0x78, 0xda));
        assert!(!is_zlib_header(0x78, 0x9d), "check bits");
        assert!(!is_zlib_header(0x79, 0x9c), "method");
        assert!(!is_zlib_header(b'{', b'"'));
    }
}
