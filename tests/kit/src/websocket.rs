//! WebSocket by hand for the tunnel tests: frames (RFC 6455 §5), the handshake's
//! `Sec-WebSocket-Accept` (SHA-1 and base64, written out here: no dependency), and
//! `WsUpstream`, a small echo upstream on a `ScriptedUpstream`.
//!
//! The upstream answers a handshake with `101` and a greeting text frame, then per frame:
//! - text `flood N`: sends one binary frame of N pattern bytes (see [`pattern`]), counting
//!   the bytes written in `written` (so a test can see the writer stall);
//! - text `close-first`: sends a Close frame and FIN, then waits for the peer's Close and EOF;
//! - a binary frame over 1 MiB: answers `ok N` when it is the pattern, else `bad N`;
//! - Close: answers Close, sends FIN, reads to EOF;
//! - anything else: echoed (same opcode, unmasked).
//!
//! On EOF without a Close it sends a text frame `bye after eof` (the half-close test) and
//! closes. What happened is appended to `events`. A handshake to a path containing `/reject`
//! gets an ordinary `403` JSON response; one missing the upgrade headers gets `400`. Until
//! `hold` is cleared, the upstream reads nothing after the handshake.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::server::Stream;
use super::upstream::{wait_until, ScriptedUpstream};

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;

/// The byte at offset `i` of every big payload.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

/// One frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A frame header (FIN set) for `len` payload bytes, masked with `mask` when given.
pub fn frame_header(opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        h.push(m | len as u8);
    } else if len <= u64::from(u16::MAX) {
        h.push(m | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(m | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        h.extend_from_slice(&k);
    }
    h
}

/// Writes one whole frame; a client frame (`masked`) is masked with a fixed key.
pub fn write_frame(w: &mut impl Write, opcode: u8, payload: &[u8], masked: bool) -> io::Result<()> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mask = masked.then_some(key);
    let mut out = frame_header(opcode, payload.len() as u64, mask);
    if masked {
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    w.write_all(&out)
}

/// Reads one whole frame (masked or not).
pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    if masked {
        r.read_exact(&mut key)?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(Frame { opcode, payload })
}

/// A handshake request for `target` (the key is RFC 6455's sample nonce).
pub fn handshake(target: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!(
        "GET {target} HTTP/1.1\r\nHost: modelgate.test\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Reads a response head byte by byte (so no frame byte after it is consumed): the status
/// and the header lines.
pub fn read_head(r: &mut impl Read) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        r.read_exact(&mut b)?;
        head.push(b[0]);
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("head too long"));
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + the RFC 6455 GUID)).
pub fn accept_key(key: &str) -> String {
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&input))
}

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 with padding (also the status page test's Basic credentials).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The echo upstream (see the module docs).
pub struct WsUpstream {
    pub up: ScriptedUpstream,
    /// While set, the upstream reads nothing after the handshake.
    pub hold: Arc<AtomicBool>,
    /// Payload bytes of the current `flood` written so far.
    pub written: Arc<AtomicU64>,
    pub events: Arc<Mutex<Vec<String>>>,
}

impl WsUpstream {
    pub fn start() -> WsUpstream {
        let hold = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (h, w, ev) = (hold.clone(), written.clone(), events.clone());
        let up = ScriptedUpstream::start(move |conn| {
            while let Some(req) = conn.read_request() {
                let has = |name: &str, token: &str| {
                    req.header_all(name)
                        .iter()
                        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                };
                if req.target.contains("/reject") {
                    if conn.respond_json(403, "{\"error\":\"rejected\"}").is_err() {
                        return;
                    }
                    continue;
                }
                let key = req.header("sec-websocket-key").map(str::to_owned);
                let ok = has("connection", "upgrade")
                    && has("upgrade", "websocket")
                    && req.header("sec-websocket-version") == Some("13");
                let Some(key) = key.filter(|_| ok) else {
                    let _ = conn.respond_json(400, "{\"error\":\"bad handshake\"}");
                    return;
                };
                let mut out = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(&key)
                )
                .into_bytes();
                out.extend(frame_header(OP_TEXT, 19, None));
                out.extend_from_slice(b"hello from upstream");
                if conn.write_all(&out).is_err() {
                    return;
                }
                let pre = conn.buffered().to_vec();
                let Ok(reader) = conn.stream().try_clone() else {
                    return;
                };
                let _ = reader.set_read_timeout(Some(Duration::from_secs(60)));
                wait_until(Duration::from_secs(60), || !h.load(Ordering::SeqCst));
                let writer = conn.stream();
                let mut reader = io::Cursor::new(pre).chain(reader);
                echo(&mut reader, writer, &w, &ev);
                return;
            }
        });
        WsUpstream {
            up,
            hold,
            written,
            events,
        }
    }

    pub fn url(&self) -> String {
        self.up.url()
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `event` was recorded.
    pub fn wait_event(&self, event: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.events().iter().any(|e| e == event))
    }
}

fn echo(
    reader: &mut impl Read,
    writer: &mut Stream,
    written: &AtomicU64,
    events: &Mutex<Vec<String>>,
) {
    let note = |e: &str| events.lock().unwrap().push(e.to_owned());
    loop {
        let frame = match read_frame(reader) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                note("eof");
                let _ = write_frame(writer, OP_TEXT, b"bye after eof", false);
                return;
            }
            Err(e) => {
                note(&format!("read error: {e}"));
                return;
            }
        };
        match frame.opcode {
            OP_CLOSE => {
                note("close");
                let _ = write_frame(writer, OP_CLOSE, &frame.payload, false);
                let _ = writer.shutdown(Shutdown::Write);
                let mut rest = Vec::new();
                match reader.read_to_end(&mut rest) {
                    Ok(_) => note("eof"),
                    Err(e) => note(&format!("read error: {e}")),
                }
                return;
            }
            OP_TEXT if frame.text().starts_with("flood ") => {
                let n: u64 = frame.text()["flood ".len()..].parse().unwrap_or(0);
                written.store(0, Ordering::SeqCst);
                if writer.write_all(&frame_header(OP_BINARY, n, None)).is_err() {
                    return;
                }
                let mut sent = 0u64;
                while sent < n {
                    let piece: Vec<u8> = (sent..n.min(sent + 65536)).map(pattern).collect();
                    if writer.write_all(&piece).is_err() {
                        note("flood write failed");
                        return;
                    }
                    sent += piece.len() as u64;
                    written.store(sent, Ordering::SeqCst);
                }
                note("flood done");
            }
            OP_TEXT if frame.text() == "close-first" => {
                let _ = write_frame(writer, OP_CLOSE, b"\x03\xe8", false);
                let _ = writer.shutdown(Shutdown::Write);
                note("sent close");
                match read_frame(reader) {
                    Ok(f) if f.opcode == OP_CLOSE => note("peer close"),
                    other => note(&format!("expected a close, got {other:?}")),
                }
                let mut rest = Vec::new();
                match reader.read_to_end(&mut rest) {
                    Ok(_) => note("eof"),
                    Err(e) => note(&format!("read error: {e}")),
                }
                return;
            }
            OP_BINARY if frame.payload.len() > 1 << 20 => {
                let intact = frame
                    .payload
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == pattern(i as u64));
                let verdict = if intact { "ok" } else { "bad" };
                let answer = format!("{verdict} {}", frame.payload.len());
                if write_frame(writer, OP_TEXT, answer.as_bytes(), false).is_err() {
                    return;
                }
            }
            op => {
                if write_frame(writer, op, &frame.payload, false).is_err() {
                    return;
                }
            }
        }
    }
}
