//! The incremental `multipart/form-data` `model` scanner (RFC 7578, RFC 2046 §5.1).
//!
//! Owns: deciding, from a multipart body fed block by block, whether the body follows the
//! multipart grammar for the boundary named in `Content-Type`, and what its `model` form
//! field says. Like [`crate::scan`], it never copies or changes the body: the caller forwards
//! the blocks byte for byte. File parts are skipped with `memmem` (a delimiter split across
//! blocks is carried as a count of matched bytes, never as bytes); only part headers (at most
//! [`MAX_PART_HEAD_BYTES`]) and the `model` field's value are kept.
//!
//! # Grammar accepted
//! - the body is seen as if it began with CRLF, so a delimiter is `CRLF--boundary` and the
//!   first one may open the body; bytes before it (the preamble) are ignored;
//! - after a delimiter: `--` closes the body (the epilogue after it is ignored), or optional
//!   spaces/tabs and CRLF open a part; anything else is an error (a boundary that is only a
//!   prefix of longer text would be read differently by different parsers);
//! - part headers: `name: value` lines ending in CRLF, up to an empty line; no folding, no bare
//!   CR or LF. `Content-Disposition: form-data; name="model"` (the name is a token or a
//!   quoted string) marks the model field;
//! - a body that ends before its close delimiter is an error.
//!
//! # Results
//! [`MultipartScanner::feed`] returns early only for malformed bodies; [`finish`] gives the
//! verdict: `Malformed` > `DuplicateModel` (two `model` fields) > `InvalidModel` (not UTF-8,
//! or longer than [`MAX_MODEL_NAME_BYTES`]) > `MissingModel`.
//!
//! [`finish`]: MultipartScanner::finish

use memchr::memmem;

pub use crate::scan::MAX_MODEL_NAME_BYTES;

/// Longest boundary RFC 2046 allows.
pub const MAX_BOUNDARY: usize = 70;
/// Longest header section of one part (real ones are under 300 bytes).
pub const MAX_PART_HEAD_BYTES: usize = 8 * 1024;

/// `CRLF--` + boundary.
const MAX_DELIMITER: usize = 4 + MAX_BOUNDARY;

/// Why a multipart body carries no usable model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultipartError {
    /// `Content-Type` has no usable `boundary` parameter.
    BadBoundary(&'static str),
    /// The body does not follow the multipart grammar; `offset` is where that was seen.
    Malformed { offset: u64, reason: &'static str },
    /// No `model` field.
    MissingModel,
    /// The `model` field is not UTF-8 or is too long.
    InvalidModel,
    /// More than one `model` field.
    DuplicateModel,
}

/// Whether a `Content-Type` value names `multipart/form-data` (parameters aside).
pub fn is_form_data(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .map(trim_ows)
        .unwrap_or_default();
    media.eq_ignore_ascii_case(b"multipart/form-data")
}

/// The `boundary` parameter of a `multipart/form-data` `Content-Type` value, unquoted and
/// checked against RFC 2046's `bchars` (1 to 70 of them, not ending in a space).
pub fn boundary(content_type: &[u8]) -> Result<&[u8], MultipartError> {
    let bad = MultipartError::BadBoundary;
    let mut rest = match memchr::memchr(b';', content_type) {
        Some(i) => content_type.get(i..).unwrap_or_default(),
        None => return Err(bad("multipart/form-data without a boundary parameter")),
    };
    let mut found: Option<&[u8]> = None;
    loop {
        rest = trim_start(rest);
        match rest.split_first() {
            None => break,
            Some((b';', after)) => rest = trim_start(after),
            Some(_) => return Err(bad("malformed Content-Type parameters")),
        }
        if rest.is_empty() {
            break;
        }
        let eq = memchr::memchr(b'=', rest).ok_or(bad("malformed Content-Type parameters"))?;
        let name = trim_ows(rest.get(..eq).unwrap_or_default());
        let after = rest.get(eq + 1..).unwrap_or_default();
        let (value, next) = param_value(trim_start(after))
            .ok_or(bad("unterminated quoted string in Content-Type"))?;
        rest = next;
        if name.eq_ignore_ascii_case(b"boundary") {
            if found.is_some() {
                return Err(bad("more than one boundary parameter"));
            }
            found = Some(value);
        }
    }
    let b = found.ok_or(bad("multipart/form-data without a boundary parameter"))?;
    let valid = !b.is_empty()
        && b.len() <= MAX_BOUNDARY
        && b.last() != Some(&b' ')
        && b.iter().all(|&c| is_bchar(c));
    if valid {
        Ok(b)
    } else {
        Err(bad("invalid multipart boundary"))
    }
}

/// RFC 2046 `bchars`.
fn is_bchar(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'\''
                | b'('
                | b')'
                | b'+'
                | b'_'
                | b','
                | b'-'
                | b'.'
                | b'/'
                | b':'
                | b'='
                | b'?'
                | b' '
        )
}

/// A parameter value (token or quoted string) at the start of `s`, and what follows it. The
/// value of a quoted string is returned without its quotes (escapes left in place: callers
/// that compare it use [`quoted_eq`]). None for an unterminated quoted string.
fn param_value(s: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(inner) = s.strip_prefix(b"\"") {
        let mut i = 0;
        while let Some(&c) = inner.get(i) {
            match c {
                b'\\' => i += 2,
                b'"' => return Some((inner.get(..i)?, inner.get(i + 1..)?)),
                _ => i += 1,
            }
        }
        return None;
    }
    let end = memchr::memchr(b';', s).unwrap_or(s.len());
    let (value, rest) = s.split_at(end);
    Some((trim_ows(value), rest))
}

/// Whether a quoted string's content (escapes in place) unescapes to `want`.
fn quoted_eq(raw: &[u8], want: &[u8]) -> bool {
    let mut want = want.iter();
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        let c = if c == b'\\' {
            i += 1;
            match raw.get(i) {
                Some(&escaped) => escaped,
                None => return false,
            }
        } else {
            c
        };
        if want.next() != Some(&c) {
            return false;
        }
        i += 1;
    }
    want.next().is_none()
}

fn trim_start(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    v
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let mut v = trim_start(v);
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the next delimiter; its first `matched` bytes end the input seen so far.
    Seek { matched: u8 },
    /// Right after a delimiter.
    AfterDelimiter,
    /// After a delimiter and one `-`.
    CloseDash,
    /// Transport padding after a delimiter.
    Padding,
    /// The CR that ends a delimiter line.
    PaddingCr,
    /// Reading a part's header section.
    Head,
    /// After the close delimiter: everything is ignored.
    Epilogue,
}

/// Push scanner: feed the body block by block, then `finish`.
#[derive(Debug)]
pub struct MultipartScanner {
    delimiter: [u8; MAX_DELIMITER],
    delimiter_len: usize,
    state: State,
    /// Bytes fed by earlier calls (for error offsets).
    consumed: u64,
    error: Option<MultipartError>,
    /// A delimiter was seen (tells "not multipart at all" from "cut short").
    any_delimiter: bool,
    /// The current part is the first `model` field: its bytes are kept.
    in_model: bool,
    /// The header section being read, after a virtual CRLF (so an empty one is `CRLF CRLF`).
    head: Vec<u8>,
    model_fields: u32,
    model: Vec<u8>,
    model_too_long: bool,
}

impl MultipartScanner {
    /// A scanner for the body of a request with this `Content-Type` value.
    pub fn new(content_type: &[u8]) -> Result<MultipartScanner, MultipartError> {
        let b = boundary(content_type)?;
        let mut delimiter = [0u8; MAX_DELIMITER];
        let len = 4 + b.len();
        if let Some(dst) = delimiter.get_mut(..len) {
            dst[..4].copy_from_slice(b"\r\n--");
            dst[4..].copy_from_slice(b);
        }
        Ok(MultipartScanner {
            delimiter,
            delimiter_len: len,
            // The body counts as preceded by CRLF: a delimiter may open it.
            state: State::Seek { matched: 2 },
            consumed: 0,
            error: None,
            any_delimiter: false,
            in_model: false,
            head: Vec::new(),
            model_fields: 0,
            model: Vec::new(),
            model_too_long: false,
        })
    }

    /// Feeds the next bytes of the body. An error is final (later calls repeat it).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), MultipartError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.run(chunk) {
            Ok(()) => {
                self.consumed += chunk.len() as u64;
                Ok(())
            }
            Err((at, reason)) => {
                let e = MultipartError::Malformed {
                    offset: self.consumed + at as u64,
                    reason,
                };
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Ends the body: the `model` field's value, or why there is none.
    pub fn finish(&mut self) -> Result<&str, MultipartError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.state != State::Epilogue {
            let reason = if self.any_delimiter {
                "the body ends before its closing boundary"
            } else {
                "the body has no part delimited by the boundary"
            };
            let e = MultipartError::Malformed {
                offset: self.consumed,
                reason,
            };
            self.error = Some(e.clone());
            return Err(e);
        }
        match self.model_fields {
            0 => Err(MultipartError::MissingModel),
            1 if self.model_too_long => Err(MultipartError::InvalidModel),
            1 => std::str::from_utf8(&self.model).map_err(|_| MultipartError::InvalidModel),
            _ => Err(MultipartError::DuplicateModel),
        }
    }

    fn run(&mut self, chunk: &[u8]) -> Result<(), (usize, &'static str)> {
        let mut i = 0;
        while let Some(&byte) = chunk.get(i) {
            match self.state {
                State::Seek { matched } => {
                    i = self.seek(chunk, i, usize::from(matched));
                    continue;
                }
                State::Head => {
                    i = self.read_head(chunk, i)?;
                    continue;
                }
                State::Epilogue => return Ok(()),
                State::AfterDelimiter => {
                    self.state = match byte {
                        b'-' => State::CloseDash,
                        b' ' | b'\t' => State::Padding,
                        b'\r' => State::PaddingCr,
                        _ => return Err((i, "a boundary is followed by other text")),
                    }
                }
                State::CloseDash => {
                    if byte != b'-' {
                        return Err((i, "a boundary is followed by other text"));
                    }
                    self.state = State::Epilogue;
                    return Ok(());
                }
                State::Padding => {
                    self.state = match byte {
                        b' ' | b'\t' => State::Padding,
                        b'\r' => State::PaddingCr,
                        _ => return Err((i, "a boundary is followed by other text")),
                    }
                }
                State::PaddingCr => {
                    if byte != b'\n' {
                        return Err((i, "a boundary line does not end in CRLF"));
                    }
                    self.head.clear();
                    self.head.extend_from_slice(b"\r\n");
                    self.state = State::Head;
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Skips (or keeps, for the model field) part bytes up to the next delimiter, from
    /// `start`, with `matched` delimiter bytes carried from the previous block. Returns where
    /// scanning goes on.
    fn seek(&mut self, chunk: &[u8], start: usize, matched: usize) -> usize {
        let delimiter = self.delimiter;
        let delimiter = delimiter.get(..self.delimiter_len).unwrap_or_default();
        let rest = chunk.get(start..).unwrap_or_default();
        if matched > 0 {
            let need = delimiter.get(matched..).unwrap_or_default();
            let n = need.len().min(rest.len());
            if rest.get(..n) == need.get(..n) {
                if n == need.len() {
                    self.delimiter_found();
                    return start + n;
                }
                self.state = State::Seek {
                    matched: (matched + n) as u8,
                };
                return chunk.len();
            }
            // Not a delimiter after all: the carried bytes were part data. (The delimiter has
            // one CR, at its start, so no later carried byte can begin another.)
            self.data(delimiter.get(..matched).unwrap_or_default());
        }
        match memmem::find(rest, delimiter) {
            Some(p) => {
                self.data(rest.get(..p).unwrap_or_default());
                self.delimiter_found();
                start + p + delimiter.len()
            }
            None => {
                // Carry the tail that may begin a delimiter: it starts at the last CR.
                let from = rest.len().saturating_sub(delimiter.len() - 1);
                let tail = rest.get(from..).unwrap_or_default();
                let keep = match memchr::memrchr(b'\r', tail) {
                    Some(r) if delimiter.starts_with(tail.get(r..).unwrap_or_default()) => {
                        tail.len() - r
                    }
                    _ => 0,
                };
                self.data(rest.get(..rest.len() - keep).unwrap_or_default());
                self.state = State::Seek {
                    matched: keep as u8,
                };
                chunk.len()
            }
        }
    }

    /// Bytes of the current part (or the preamble).
    fn data(&mut self, bytes: &[u8]) {
        if !self.in_model || self.model_too_long {
            return;
        }
        if self.model.len() + bytes.len() > MAX_MODEL_NAME_BYTES {
            self.model_too_long = true;
            self.model = Vec::new();
        } else {
            self.model.extend_from_slice(bytes);
        }
    }

    fn delimiter_found(&mut self) {
        self.any_delimiter = true;
        self.in_model = false;
        self.state = State::AfterDelimiter;
    }

    /// Collects the header section from `start`; returns where scanning goes on.
    fn read_head(&mut self, chunk: &[u8], start: usize) -> Result<usize, (usize, &'static str)> {
        let before = self.head.len();
        let room = (MAX_PART_HEAD_BYTES + 2).saturating_sub(before);
        let rest = chunk.get(start..).unwrap_or_default();
        let take = room.min(rest.len());
        self.head
            .extend_from_slice(rest.get(..take).unwrap_or_default());
        let from = before.saturating_sub(3);
        let searched = self.head.get(from..).unwrap_or_default();
        let Some(p) = memmem::find(searched, b"\r\n\r\n") else {
            if self.head.len() >= MAX_PART_HEAD_BYTES + 2 {
                return Err((start + take, "part headers too long"));
            }
            return Ok(start + take);
        };
        let end = from + p;
        let used = (end + 4).saturating_sub(before);
        let head = std::mem::take(&mut self.head);
        let fields = head.get(2..end).unwrap_or_default();
        let is_model = part_is_model(fields).map_err(|reason| (start + used, reason))?;
        self.head = head;
        self.head.clear();
        if is_model {
            self.model_fields = self.model_fields.saturating_add(1);
        }
        self.in_model = is_model && self.model_fields == 1;
        self.state = State::Seek { matched: 0 };
        Ok(start + used)
    }
}

/// Reads a part's header fields (CRLF-separated, without the final empty line): whether its
/// `Content-Disposition` names the field `model`.
fn part_is_model(fields: &[u8]) -> Result<bool, &'static str> {
    if fields.is_empty() {
        return Ok(false);
    }
    let mut disposition: Option<&[u8]> = None;
    let mut at = 0;
    loop {
        let rest = fields.get(at..).unwrap_or_default();
        let (line, next) = match memmem::find(rest, b"\r\n") {
            Some(i) => (rest.get(..i).unwrap_or_default(), Some(at + i + 2)),
            None => (rest, None),
        };
        if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err("bare CR, LF or NUL in part headers");
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err("folded part header");
        }
        let colon = memchr::memchr(b':', line).ok_or("part header without a colon")?;
        let name = line.get(..colon).unwrap_or_default();
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err("invalid part header name");
        }
        if name.eq_ignore_ascii_case(b"content-disposition") {
            if disposition.is_some() {
                return Err("more than one Content-Disposition in a part");
            }
            disposition = Some(trim_ows(line.get(colon + 1..).unwrap_or_default()));
        }
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    match disposition {
        Some(value) => disposition_names_model(value),
        None => Ok(false),
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `form-data; name="model"`: whether the `name` parameter is `model`.
fn disposition_names_model(value: &[u8]) -> Result<bool, &'static str> {
    let mut rest = match memchr::memchr(b';', value) {
        Some(i) => value.get(i..).unwrap_or_default(),
        None => return Ok(false),
    };
    let mut name: Option<bool> = None;
    loop {
        rest = trim_start(rest);
        match rest.split_first() {
            None => break,
            Some((b';', after)) => rest = trim_start(after),
            Some(_) => return Err("malformed Content-Disposition"),
        }
        if rest.is_empty() {
            break;
        }
        let eq = memchr::memchr(b'=', rest).ok_or("malformed Content-Disposition")?;
        let param = trim_ows(rest.get(..eq).unwrap_or_default());
        let after = trim_start(rest.get(eq + 1..).unwrap_or_default());
        let quoted = after.first() == Some(&b'"');
        let (v, next) = param_value(after).ok_or("unterminated quoted string in a part header")?;
        rest = next;
        if param.eq_ignore_ascii_case(b"name") {
            if name.is_some() {
                return Err("more than one name in a Content-Disposition");
            }
            name = Some(if quoted {
                quoted_eq(v, b"model")
            } else {
                v == b"model"
            });
        }
    }
    Ok(name.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &[u8] = b"multipart/form-data; boundary=XyZ";

    fn scan(pieces: &[&[u8]]) -> Result<String, MultipartError> {
        let mut s = MultipartScanner::new(CT)?;
        for p in pieces {
            s.feed(p)?;
        }
        s.finish().map(str::to_owned)
    }

    fn scan_split(body: &[u8], block: usize) -> Result<String, MultipartError> {
        let pieces: Vec<&[u8]> = body.chunks(block.max(1)).collect();
        scan(&pieces)
    }

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, value) in parts {
            v.extend_from_slice(b"--XyZ\r\n");
            if *name == "file" {
                v.extend_from_slice(
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
                      Content-Type: audio/wav\r\n\r\n",
                );
            } else {
                v.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                );
            }
            v.extend_from_slice(value);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"--XyZ--\r\n");
        v
    }

    fn malformed(r: Result<String, MultipartError>) -> &'static str {
        match r {
            Err(MultipartError::Malformed { reason, .. }) => reason,
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(boundary(CT), Ok(&b"XyZ"[..]));
        assert_eq!(
            boundary(b"Multipart/Form-Data ; charset=utf-8; BOUNDARY=\"a b'c\""),
            Ok(&b"a b'c"[..])
        );
        assert_eq!(
            boundary(b"multipart/form-data; x=\"q;\\\"\"; boundary=----abc"),
            Ok(&b"----abc"[..])
        );
        for bad in [
            &b"multipart/form-data"[..],
            b"multipart/form-data; boundary=",
            b"multipart/form-data; boundary=\"\"",
            b"multipart/form-data; boundary=\"abc",
            b"multipart/form-data; boundary=a{b",
            b"multipart/form-data; boundary=\"ab \"",
            b"multipart/form-data; boundary=a; boundary=b",
            b"multipart/form-data; garbage",
        ] {
            assert!(
                matches!(boundary(bad), Err(MultipartError::BadBoundary(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        assert!(boundary(long.as_bytes()).is_err());
        let max = format!("multipart/form-data; boundary={}", "a".repeat(70));
        assert!(boundary(max.as_bytes()).is_ok());
    }

    #[test]
    fn form_data_media_type() {
        assert!(is_form_data(b"multipart/form-data; boundary=x"));
        assert!(is_form_data(b" MULTIPART/FORM-DATA"));
        assert!(!is_form_data(b"multipart/mixed; boundary=x"));
        assert!(!is_form_data(b"application/json"));
    }

    #[test]
    fn model_after_a_file_part_in_any_split() {
        let file: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let body = form(&[
            ("file", &file),
            ("model", b"whisper-1"),
            ("language", b"en"),
        ]);
        for block in [1, 2, 3, 5, 7, 16, 64, 1000, body.len()] {
            assert_eq!(scan_split(&body, block), Ok("whisper-1".into()), "{block}");
        }
    }

    #[test]
    fn delimiter_look_alikes_inside_data_are_data() {
        // CR, CRLF, CRLF-- and a boundary prefix inside the value, across every split.
        let value = b"a\r\r\n\r\n-\r\n--X\r\n--Xy-z\r";
        let body = form(&[("model", value)]);
        for block in 1..body.len() {
            assert_eq!(
                scan_split(&body, block).map(String::into_bytes),
                Ok(value.to_vec()),
                "{block}"
            );
        }
    }

    #[test]
    fn preamble_epilogue_and_padding_are_ignored() {
        let body = b"preamble\r\n--XyZ \t\r\nContent-Disposition: form-data; name=model\r\n\r\nm1\r\n--XyZ--\r\nepilogue --XyZ junk";
        assert_eq!(scan_split(body, 4), Ok("m1".into()));
    }

    #[test]
    fn quoted_and_escaped_names() {
        let body = b"--XyZ\r\ncontent-disposition: form-data; filename=\"m;x\"; name=\"mo\\del\"\r\n\r\nm2\r\n--XyZ--";
        assert_eq!(scan(&[body]), Ok("m2".into()));
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"models\"\r\n\r\nm2\r\n--XyZ--";
        assert_eq!(scan(&[body]), Err(MultipartError::MissingModel));
    }

    #[test]
    fn model_verdicts() {
        assert_eq!(
            scan(&[&form(&[("file", b"x")])]),
            Err(MultipartError::MissingModel)
        );
        assert_eq!(
            scan(&[&form(&[("model", b"a"), ("model", b"b")])]),
            Err(MultipartError::DuplicateModel)
        );
        assert_eq!(
            scan(&[&form(&[("model", b"\xff")])]),
            Err(MultipartError::InvalidModel)
        );
        let long = vec![b'a'; MAX_MODEL_NAME_BYTES + 1];
        assert_eq!(
            scan(&[&form(&[("model", &long)])]),
            Err(MultipartError::InvalidModel)
        );
        assert_eq!(scan(&[&form(&[("model", b"")])]), Ok(String::new()));
        assert_eq!(scan(&[b"--XyZ--"]), Err(MultipartError::MissingModel));
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(
            malformed(scan(&[b""])),
            "the body has no part delimited by the boundary"
        );
        assert_eq!(
            malformed(scan(&[b"{\"model\":\"x\"}"])),
            "the body has no part delimited by the boundary"
        );
        let body = form(&[("model", b"m")]);
        let cut = &body[..body.len() - 4];
        assert_eq!(
            malformed(scan(&[cut])),
            "the body ends before its closing boundary"
        );
        assert_eq!(
            malformed(scan(&[b"--XyZx\r\n"])),
            "a boundary is followed by other text"
        );
        assert_eq!(
            malformed(scan(&[b"--XyZ-x"])),
            "a boundary is followed by other text"
        );
        assert_eq!(
            malformed(scan(&[b"--XyZ\rx"])),
            "a boundary line does not end in CRLF"
        );
        for head in [
            &b"Content-Disposition form-data"[..],
            b" folded: x",
            b"Bad Name: x",
            b"A: b\nC: d",
            b"Content-Disposition: form-data; name=\"model",
            b"Content-Disposition: form-data; name=a; name=b",
            b"Content-Disposition: a\r\nContent-Disposition: b",
            b"Content-Disposition: form-data; junk",
        ] {
            let mut body = b"--XyZ\r\n".to_vec();
            body.extend_from_slice(head);
            body.extend_from_slice(b"\r\n\r\nv\r\n--XyZ--");
            assert!(
                matches!(scan(&[&body]), Err(MultipartError::Malformed { .. })),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let mut big = b"--XyZ\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_PART_HEAD_BYTES));
        assert_eq!(malformed(scan(&[&big])), "part headers too long");
    }

    #[test]
    fn a_part_without_headers_is_skipped() {
        let body = b"--XyZ\r\n\r\nraw\r\n--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nm\r\n--XyZ--";
        assert_eq!(scan_split(body, 3), Ok("m".into()));
    }

    #[test]
    fn errors_are_final_and_offsets_do_not_depend_on_splits() {
        let body = b"--XyZ\r\nA: b\r\n\r\nv\r\n--XyZ?";
        let whole = scan(&[body]);
        assert!(matches!(
            whole,
            Err(MultipartError::Malformed { offset: 23, .. })
        ));
        for block in 1..body.len() {
            assert_eq!(scan_split(body, block), whole, "{block}");
        }
        let mut s = MultipartScanner::new(CT).expect("scanner");
        assert!(s.feed(body).is_err());
        assert!(s.feed(b"--XyZ--").is_err());
        assert!(s.finish().is_err());
    }

    use crate::h1::tests::Rng;

    #[test]
    fn mutated_bodies_never_panic_and_splits_agree() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let seed = form(&[("file", b"RIFF\r\n--X"), ("model", b"w-1")]);
        const NOISE: &[u8] = b"\r\n-XyZ;=\" \t:modelname";
        for _ in 0..5_000 {
            let mut v = seed.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(v.len() + 1);
                let b = NOISE[rng.below(NOISE.len())];
                match rng.below(3) {
                    0 if at < v.len() => v[at] = b,
                    1 if at < v.len() => {
                        v.remove(at);
                    }
                    _ => v.insert(at, b),
                }
            }
            let whole = scan(&[&v]);
            let a = rng.below(v.len() + 1);
            let b = a + rng.below(v.len() - a + 1);
            assert_eq!(scan(&[&v[..a], &v[a..b], &v[b..]]), whole);
            assert_eq!(scan_split(&v, 1), whole);
        }
    }
}
