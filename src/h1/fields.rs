//! Header value helpers shared by the request and response parsers and the rewriters:
//! comma-separated token lists, strict `Content-Length`, `Transfer-Encoding` summaries, and
//! ranges of httparse's borrowed slices. Pure, allocation-free, panic-free on any input.

use std::ops::Range;

/// The range of `part` inside `buf`. `part` must be a sub-slice of `buf` (httparse hands out
/// sub-slices of the buffer it parsed); anything else yields an empty range instead of a panic.
pub(crate) fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let base = buf.as_ptr() as usize;
    let start = (part.as_ptr() as usize).wrapping_sub(base);
    match start.checked_add(part.len()) {
        Some(end) if end <= buf.len() => start..end,
        _ => 0..0,
    }
}

/// Strips optional whitespace (SP / HTAB) from both ends.
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The elements of a comma-separated list value, trimmed; empty elements are yielded too
/// (callers decide: RFC 9110 §5.6.1 says to ignore a reasonable number of them).
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

/// Whether the list `value` contains `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_elements(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// Parses one `Content-Length` field value strictly: one or more comma-separated elements,
/// each 1*DIGIT (no sign, no spaces inside, no hex), all equal. `u64` overflow is an error.
/// `FromStr for u64` is not used because it accepts a leading `+` (hyper `headers.rs`).
pub(crate) fn content_length_value(value: &[u8]) -> Result<u64, &'static str> {
    let mut seen: Option<u64> = None;
    for element in list_elements(value) {
        let n = digits(element)?;
        match seen {
            Some(prev) if prev != n => return Err("differing Content-Length values"),
            _ => seen = Some(n),
        }
    }
    seen.ok_or("empty Content-Length")
}

fn digits(element: &[u8]) -> Result<u64, &'static str> {
    if element.is_empty() {
        return Err("empty Content-Length");
    }
    let mut n: u64 = 0;
    for &b in element {
        if !b.is_ascii_digit() {
            return Err("Content-Length is not a decimal number");
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or("Content-Length overflows")?;
    }
    Ok(n)
}

/// Folds `Content-Length` field values (several lines count as one list).
#[derive(Debug, Default)]
pub(crate) struct ContentLength {
    value: Option<u64>,
    error: Option<&'static str>,
}

impl ContentLength {
    pub(crate) fn add(&mut self, value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        match content_length_value(value) {
            Err(e) => self.error = Some(e),
            Ok(n) => match self.value {
                Some(prev) if prev != n => self.error = Some("differing Content-Length values"),
                _ => self.value = Some(n),
            },
        }
    }

    pub(crate) fn is_present(&self) -> bool {
        self.value.is_some() || self.error.is_some()
    }

    /// `Ok(None)` when absent.
    pub(crate) fn get(&self) -> Result<Option<u64>, &'static str> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.value),
        }
    }
}

/// What the `Transfer-Encoding` lines of a head say, all lines folded into one list.
/// Empty list elements are ignored (RFC 9110 §5.6.1); an all-empty value has no codings.
#[derive(Debug, Default)]
pub(crate) struct TransferEncoding {
    present: bool,
    chunked_count: u32,
    /// A coding other than `chunked` appears somewhere.
    other: bool,
    last_is_chunked: bool,
}

impl TransferEncoding {
    pub(crate) fn add(&mut self, value: &[u8]) {
        self.present = true;
        for coding in list_elements(value).filter(|c| !c.is_empty()) {
            // `chunked;ext` is not `chunked` (the coding takes no parameters): it counts as an
            // unknown coding, so a list ending in it is "last coding not chunked".
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            if chunked {
                self.chunked_count = self.chunked_count.saturating_add(1);
            } else {
                self.other = true;
            }
            self.last_is_chunked = chunked;
        }
    }

    pub(crate) fn is_present(&self) -> bool {
        self.present
    }

    pub(crate) fn last_is_chunked(&self) -> bool {
        self.last_is_chunked
    }

    pub(crate) fn chunked_twice(&self) -> bool {
        self.chunked_count > 1
    }

    pub(crate) fn has_other_coding(&self) -> bool {
        self.other
    }
}

/// `Connection` tokens that decide persistence.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTokens {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    /// `upgrade`: the request asks to switch protocols (with an `Upgrade` header).
    pub(crate) upgrade: bool,
}

impl ConnectionTokens {
    pub(crate) fn add(&mut self, value: &[u8]) {
        for t in list_elements(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
        }
    }

    /// HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive` (RFC 9112 §9.3).
    pub(crate) fn persistent(&self, http11: bool) -> bool {
        if self.close {
            false
        } else {
            http11 || self.keep_alive
        }
    }
}

/// Appends the decimal form of `n` (no `format!` on the hot path).
pub(crate) fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_ows_strips_spaces_and_tabs_on_both_ends() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
    }

    #[test]
    fn has_token_is_case_insensitive_and_trims() {
        assert!(has_token(b"keep-alive,  Upgrade ", b"upgrade"));
        assert!(!has_token(b"xupgrade", b"upgrade"));
    }

    #[test]
    fn content_length_accepts_digits_and_identical_lists() {
        assert_eq!(content_length_value(b"0"), Ok(0));
        assert_eq!(content_length_value(b"005"), Ok(5));
        assert_eq!(content_length_value(b"5, 5"), Ok(5));
    }

    #[test]
    fn content_length_refuses_signs_hex_spaces_and_overflow() {
        for bad in [
            &b"+5"[..],
            b"-1",
            b"0x5",
            b"5 5",
            b"5,6",
            b"",
            b",",
            b"5,",
            b"18446744073709551616",
        ] {
            assert!(content_length_value(bad).is_err(), "{:?}", bad);
        }
        assert_eq!(content_length_value(b"18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn put_u64_writes_decimal() {
        let mut out = Vec::new();
        put_u64(&mut out, 0);
        out.push(b' ');
        put_u64(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
    }

    #[test]
    fn range_in_of_foreign_slice_is_empty() {
        let a = [1u8, 2, 3];
        let b = [4u8];
        assert_eq!(range_in(&a, &a[1..]), 1..3);
        assert_eq!(range_in(&a, &b), 0..0);
    }
}
