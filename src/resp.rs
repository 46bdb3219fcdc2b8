//! RESP2, the Redis/Valkey wire protocol, as pure functions over bytes: commands are encoded
//! into a caller's buffer, replies are parsed from whatever bytes have arrived.
//!
//! Owns: the encoding of a command (an array of bulk strings, the only form a client sends)
//! and the parser of the five reply types. It does no I/O: the shared-limits thread
//! (`limitstore`) writes and reads the socket. RESP2, not RESP3, because every server since
//! Redis 2 speaks it without a `HELLO`. A reply larger than this client could ever need is an
//! error, not an allocation: a hostile or broken server cannot make the process buffer
//! gigabytes.

use std::fmt;

/// Longest bulk string accepted (script SHA, error texts, our own replies: all tiny).
const MAX_BULK: usize = 1 << 20;
/// Most elements of one array (one reply per configured key, and a few more).
const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 8;
/// Longest simple string, error or number line.
const MAX_LINE: usize = 64 * 1024;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`: the server refused the command (the text, kind first: `NOSCRIPT …`).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nabc` (None: the null bulk `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n…` (None: the null array `*-1`).
    Array(Option<Vec<Reply>>),
}

/// Bytes that cannot be a reply (or one larger than the limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid reply: {}", self.0)
    }
}

/// Appends a command (`*N` then one bulk string per argument) to `out`.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    array_header(args.len(), out);
    for arg in args {
        bulk(arg, out);
    }
}

/// Appends `*N`: a command of `n` arguments follows (written with [`bulk`], [`bulk_u64`]),
/// for a long command built without a list of arguments.
pub fn array_header(n: usize, out: &mut Vec<u8>) {
    out.push(b'*');
    push_u64(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// Appends one argument as a bulk string.
pub fn bulk(arg: &[u8], out: &mut Vec<u8>) {
    out.push(b'$');
    push_u64(out, arg.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends a number as a bulk string argument (its decimal digits), without allocating.
pub fn bulk_u64(n: u64, out: &mut Vec<u8>) {
    let digits = n.checked_ilog10().map_or(1, |d| d + 1);
    out.push(b'$');
    push_u64(out, u64::from(digits));
    out.extend_from_slice(b"\r\n");
    push_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    crate::h1::put_u64(out, n);
}

/// Parses the first reply in `buf`: `Ok(Some((reply, bytes used)))`, `Ok(None)` when more
/// bytes are needed, `Err` when the bytes cannot be a reply.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut at = 0;
    match reply(buf, &mut at, 0)? {
        Some(r) => Ok(Some((r, at))),
        None => Ok(None),
    }
}

/// One reply starting at `*at`; advances `*at` past it when complete.
fn reply(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Reply>, ProtocolError> {
    let Some(&kind) = buf.get(*at) else {
        return Ok(None);
    };
    let mut pos = *at + 1;
    let Some(line) = line(buf, &mut pos)? else {
        return Ok(None);
    };
    let text = || {
        std::str::from_utf8(line)
            .map(str::to_owned)
            .map_err(|_| ProtocolError("a status line that is not UTF-8"))
    };
    let out = match kind {
        b'+' => Reply::Simple(text()?),
        b'-' => Reply::Error(text()?),
        b':' => Reply::Int(number(line)?),
        b'$' => match length(line, MAX_BULK, "a bulk length out of range")? {
            None => Reply::Bulk(None),
            Some(len) => {
                let end = pos + len;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError("a bulk string without its CRLF"));
                }
                let bytes = buf[pos..end].to_vec();
                pos = end + 2;
                Reply::Bulk(Some(bytes))
            }
        },
        b'*' => match length(line, MAX_ARRAY, "an array length out of range")? {
            None => Reply::Array(None),
            Some(len) => {
                if depth >= MAX_DEPTH {
                    return Err(ProtocolError("arrays nested too deep"));
                }
                // Not `with_capacity(len)`: the length is the server's word, the elements
                // are what actually arrived.
                let mut items = Vec::new();
                for _ in 0..len {
                    match reply(buf, &mut pos, depth + 1)? {
                        Some(item) => items.push(item),
                        None => return Ok(None),
                    }
                }
                Reply::Array(Some(items))
            }
        },
        _ => return Err(ProtocolError("an unknown reply type")),
    };
    *at = pos;
    Ok(Some(out))
}

/// The bytes up to the next CRLF from `*pos` (moved past it), or None when it has not come.
fn line<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, ProtocolError> {
    let rest = buf.get(*pos..).unwrap_or_default();
    match memchr::memchr(b'\n', rest) {
        Some(nl) => {
            if nl == 0 || rest[nl - 1] != b'\r' {
                return Err(ProtocolError("a line without CRLF"));
            }
            if nl > MAX_LINE {
                return Err(ProtocolError("a line too long"));
            }
            *pos += nl + 1;
            Ok(Some(&rest[..nl - 1]))
        }
        None if rest.len() > MAX_LINE => Err(ProtocolError("a line too long")),
        None => Ok(None),
    }
}

/// The length of a bulk string or an array: None for the null one (`-1`), else at most
/// `max` (`out_of_range` otherwise: negative, or more than this client takes).
fn length(
    line: &[u8],
    max: usize,
    out_of_range: &'static str,
) -> Result<Option<usize>, ProtocolError> {
    match number(line)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .ok()
            .filter(|&len| len <= max)
            .map(Some)
            .ok_or(ProtocolError(out_of_range)),
    }
}

fn number(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or(ProtocolError("a malformed number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Reply {
        let (r, used) = parse(bytes).expect("valid").expect("complete");
        assert_eq!(used, bytes.len());
        r
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b"a b\r\n"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na b\r\n\r\n");
        out.clear();
        encode(&[b"PING", b""], &mut out);
        assert_eq!(out, b"*2\r\n$4\r\nPING\r\n$0\r\n\r\n");
    }

    #[test]
    fn a_command_built_piece_by_piece_is_the_same_bytes() {
        let mut whole = Vec::new();
        encode(
            &[b"EVALSHA", b"abc", b"0", b"18446744073709551615"],
            &mut whole,
        );
        let mut pieces = Vec::new();
        array_header(4, &mut pieces);
        bulk(b"EVALSHA", &mut pieces);
        bulk(b"abc", &mut pieces);
        bulk_u64(0, &mut pieces);
        bulk_u64(u64::MAX, &mut pieces);
        assert_eq!(pieces, whole);
    }

    #[test]
    fn every_reply_type_parses() {
        assert_eq!(whole(b"+OK\r\n"), Reply::Simple("OK".into()));
        assert_eq!(
            whole(b"-NOSCRIPT No matching script\r\n"),
            Reply::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(whole(b":-42\r\n"), Reply::Int(-42));
        assert_eq!(
            whole(b"$5\r\na\r\nbc\r\n"),
            Reply::Bulk(Some(b"a\r\nbc".to_vec()))
        );
        assert_eq!(whole(b"$0\r\n\r\n"), Reply::Bulk(Some(Vec::new())));
        assert_eq!(whole(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(whole(b"*-1\r\n"), Reply::Array(None));
        assert_eq!(
            whole(b"*3\r\n:1\r\n*1\r\n$1\r\nx\r\n+y\r\n"),
            Reply::Array(Some(vec![
                Reply::Int(1),
                Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec()))])),
                Reply::Simple("y".into()),
            ]))
        );
    }

    #[test]
    fn a_reply_split_anywhere_needs_more_then_parses_the_same() {
        let bytes: &[u8] = b"*4\r\n:12\r\n$3\r\nabc\r\n*2\r\n+OK\r\n$-1\r\n-ERR x\r\n";
        let want = whole(bytes);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        // A pipelined second reply is left for the next call.
        let mut two = bytes.to_vec();
        two.extend_from_slice(b"+NEXT\r\n");
        let (r, used) = parse(&two).expect("valid").expect("complete");
        assert_eq!((r, used), (want, bytes.len()));
    }

    #[test]
    fn broken_or_oversized_replies_are_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b":+1\r\n",
            b"+OK\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"*-5\r\n",
            b"$99999999999\r\n",
            b"*99999999999\r\n",
            b"+\xff\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).is_err());
        let long = vec![b'+'; MAX_LINE + 2];
        assert!(parse(&long).is_err());
    }
}
