//! A mock OpenAI-compatible upstream, std only (threads + blocking sockets).
//!
//! This one file is both the body of `cargo run --example mock-upstream` and the in-process
//! mock of the integration-test harness (`tests/kit/src/lib.rs` includes it with `#[path]`),
//! so the wire behaviour tests see is exactly what the benchmark measures.
//!
//! Endpoints:
//! - `POST /v1/chat/completions`: an OpenAI `chat.completion` echoing the request's `model`
//!   (or `--name` when the body has none), with `usage`. With `"stream": true` the answer is
//!   `text/event-stream`, chunked, one SSE event per HTTP chunk: `sse_events` chunks carrying
//!   one token each (`tok0 `, `tok1 `, ...; the first also has `role`), one chunk with an empty
//!   delta and `finish_reason: "stop"`, then, **only when `stream_options.include_usage` is
//!   true** (as OpenAI and vLLM do), a usage chunk with `choices: []`, then `data: [DONE]`.
//! - `POST /v1/completions`: the same for `text_completion` (`choices[].text`).
//! - `POST /v1/responses`: the Responses API. Not streamed: a `response` object whose output
//!   message holds the same tokens, with `usage` (`input_tokens`, `output_tokens`). With
//!   `"stream": true`: `event:`/`data:` SSE events `response.created`, one
//!   `response.output_text.delta` per token, then `response.completed` carrying the usage.
//! - `POST /v1/audio/transcriptions` and `/v1/audio/translations`: a multipart upload; answers
//!   `{"text":"mock transcription of N bytes","usage":{...}}` (N: the file part's size;
//!   `input_tokens` N/100, at least 1), or that text alone with `response_format=text`.
//! - `POST /v1/embeddings`: one 4-dimensional vector per input, with `usage`.
//! - `GET /v1/models`: a list with one model whose id is the mock's name.
//! - `GET`/`HEAD /health`: `{"status":"ok"}`.
//! - anything else: 404 with an OpenAI-shaped JSON error.
//!
//! Usage numbers are deterministic: `prompt_tokens` = request body bytes / 4 (at least 1),
//! `completion_tokens` = the number of tokens sent (`sse_events`, also for non-streamed answers).
//!
//! Compression, as LiteLLM and hosted APIs do it: a generated answer, embeddings, a
//! transcription and the model list are gzip'd when the request's `Accept-Encoding` accepts
//! gzip (else zlib `deflate` when it accepts that), with `Content-Encoding` and
//! `Vary: Accept-Encoding`; a stream is compressed as one gzip stream sync-flushed after each
//! event, so every event still arrives in its own chunk. `X-Mock-Content-Encoding: gzip |
//! deflate | deflate-raw | br | identity` forces one (`deflate-raw`: raw deflate labelled
//! `deflate`; `br`: the body as it is, labelled `br`, since the mock has no brotli encoder).
//! `/health` and errors are never compressed.
//!
//! Every response carries `X-Mock-Name: NAME`. Per-request overrides (request headers, so a
//! test can script one request through modelgate without a new mock): `X-Mock-Sse-Events: N`,
//! `X-Mock-Sse-Interval-Ms: MS`, `X-Mock-Latency-Ms: MS` (sleep before the response head),
//! `X-Mock-Status: CODE` (answer that status with an OpenAI-shaped error body).
//!
//! Pacing: `Options::default()` (what the test harness starts) sends events back to back;
//! the `mock-upstream` binary paces them 100 ms apart unless told otherwise.
//!
//! Performance: one thread per connection, keep-alive, `TCP_NODELAY`, buffers reused per
//! connection, the request body scanned (not parsed into a tree) for `model`/`stream`, and each
//! response written with a single `write` (a stream with an interval writes one chunk per event,
//! as a real model server does).

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Behaviour of one mock upstream.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    pub sse_events: usize,
    pub sse_interval: Duration,
    pub latency: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: "mock".to_string(),
            sse_events: 8,
            sse_interval: Duration::ZERO,
            latency: Duration::ZERO,
        }
    }
}

/// Counters a test can read while the mock runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted so far.
    pub connections: AtomicUsize,
    /// Connections currently open (accepted and not yet finished).
    pub open: AtomicUsize,
    /// Requests answered so far.
    pub requests: AtomicUsize,
}

// ---------------------------------------------------------------------------------------------
// Sockets: TCP or unix, behind one type.

/// A listening socket, TCP or unix.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Listener {
    /// Binds `host:port` or `unix:/path` (a stale socket file at the path is removed first).
    pub fn bind(addr: &str) -> io::Result<Listener> {
        if let Some(path) = addr.strip_prefix("unix:") {
            let path = std::path::PathBuf::from(path);
            let _ = std::fs::remove_file(&path);
            Ok(Listener::Unix(UnixListener::bind(&path)?, path))
        } else {
            Ok(Listener::Tcp(TcpListener::bind(addr)?))
        }
    }

    /// The bound address as `127.0.0.1:PORT` (real port) or `unix:/path`.
    pub fn display(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }

    /// Opens (and drops) a connection to ourselves so a blocked `accept` returns.
    pub fn wake(&self) {
        match self {
            Listener::Tcp(l) => {
                if let Ok(mut a) = l.local_addr() {
                    if a.ip().is_unspecified() {
                        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
                }
            }
            Listener::Unix(_, p) => {
                let _ = UnixStream::connect(p);
            }
        }
    }
}

/// A connected socket, TCP or unix.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
        }
    }
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Unix(s) => s.set_write_timeout(d),
        }
    }
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            Stream::Unix(_) => None,
        }
    }
    pub fn raw_fd(&self) -> std::os::unix::io::RawFd {
        use std::os::unix::io::AsRawFd;
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Request reading: a small HTTP/1.1 server-side parser (httparse for the head, hand-written
// Content-Length / chunked body framing). Shared with the scripted upstreams of the harness.

/// One request. Text fields are ranges into `head`, so a connection reuses the allocations.
#[derive(Debug, Default, Clone)]
pub struct Request {
    /// The raw head, request line through the empty line.
    pub head: Vec<u8>,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// The body with any chunked framing removed.
    pub body: Vec<u8>,
    /// The body exactly as on the wire when chunked (sizes, extensions, trailers); empty otherwise.
    pub raw_chunked: Vec<u8>,
    pub chunked: bool,
    /// Trailer fields of a chunked body, as raw lines without CRLF.
    pub trailers: Vec<Vec<u8>>,
}

impl Request {
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.head[self.method.clone()]).unwrap_or("")
    }
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.head[self.target.clone()]).unwrap_or("")
    }
    /// The path without the query string.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split('?').next().unwrap_or(t)
    }
    pub fn header_name(&self, i: usize) -> &str {
        std::str::from_utf8(&self.head[self.headers[i].0.clone()]).unwrap_or("")
    }
    pub fn header_value(&self, i: usize) -> &[u8] {
        &self.head[self.headers[i].1.clone()]
    }
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        (0..self.headers.len())
            .find(|&i| self.header_name(i).eq_ignore_ascii_case(name))
            .and_then(|i| std::str::from_utf8(self.header_value(i)).ok())
    }
    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        (0..self.headers.len())
            .filter(|&i| self.header_name(i).eq_ignore_ascii_case(name))
            .filter_map(|i| std::str::from_utf8(self.header_value(i)).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
    /// Whether the connection may be kept open after answering this request.
    pub fn keep_alive(&self) -> bool {
        if self.header_has_token("connection", "close") {
            false
        } else if self.version == 0 {
            self.header_has_token("connection", "keep-alive")
        } else {
            true
        }
    }
    /// The body as it was framed on the wire: the raw chunked bytes, or the plain body.
    pub fn raw_body(&self) -> &[u8] {
        if self.chunked {
            &self.raw_chunked
        } else {
            &self.body
        }
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed before sending any byte of a request: a normal end.
    Closed,
    /// Socket error, timeout, or EOF inside a request.
    Io(io::Error),
    /// Bytes that are not an HTTP/1.x request we understand.
    Invalid(&'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

const MAX_HEAD: usize = 256 * 1024;

/// Buffered reader of requests from one connection; leftover bytes stay for the next request
/// (pipelining).
pub struct RequestReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Answer `Expect: 100-continue` with `100 Continue` before reading the body.
    pub auto_continue: bool,
}

impl Default for RequestReader {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestReader {
    pub fn new() -> Self {
        RequestReader {
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            auto_continue: true,
        }
    }

    /// Bytes received but not yet consumed by a request.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes; `Ok(0)` at EOF.
    fn fill<S: Read>(&mut self, s: &mut S) -> io::Result<usize> {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        loop {
            match s.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Ensures at least `n` unconsumed bytes, or fails with `UnexpectedEof`.
    fn need<S: Read>(&mut self, s: &mut S, n: usize) -> io::Result<()> {
        while self.end - self.start < n {
            if self.fill(s)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Reads one line (through LF) of the chunked framing, returning its bytes with the line end.
    fn line<S: Read>(&mut self, s: &mut S, out: &mut Vec<u8>) -> Result<Range<usize>, ReadError> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.start + scanned..self.end];
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                let len = scanned + i + 1;
                let at = out.len();
                out.extend_from_slice(&self.buf[self.start..self.start + len]);
                self.start += len;
                let mut e = out.len() - 1;
                if e > at && out[e - 1] == b'\r' {
                    e -= 1;
                }
                return Ok(at..e);
            }
            scanned = self.end - self.start;
            if scanned > 64 * 1024 {
                return Err(ReadError::Invalid("chunk line too long"));
            }
            if self.fill(s)? == 0 {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads the next request into `req` (reusing its allocations).
    pub fn read_request<S: Read + Write>(
        &mut self,
        s: &mut S,
        req: &mut Request,
    ) -> Result<(), ReadError> {
        req.head.clear();
        req.headers.clear();
        req.body.clear();
        req.raw_chunked.clear();
        req.trailers.clear();
        req.chunked = false;

        // Head.
        let head_len = loop {
            if self.end > self.start {
                let mut hs = [httparse::EMPTY_HEADER; 128];
                let mut r = httparse::Request::new(&mut hs);
                match r.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(n)) => break n,
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(ReadError::Invalid("malformed request head")),
                }
                if self.end - self.start > MAX_HEAD {
                    return Err(ReadError::Invalid("request head too large"));
                }
            }
            if self.fill(s)? == 0 {
                return Err(if self.end == self.start {
                    ReadError::Closed
                } else {
                    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
        };
        req.head
            .extend_from_slice(&self.buf[self.start..self.start + head_len]);
        self.start += head_len;
        {
            let base = req.head.as_ptr() as usize;
            let off = |s: &[u8]| {
                let a = s.as_ptr() as usize - base;
                a..a + s.len()
            };
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Request::new(&mut hs);
            let _ = r.parse(&req.head);
            req.method = off(r.method.unwrap_or("").as_bytes());
            req.target = off(r.path.unwrap_or("").as_bytes());
            req.version = r.version.unwrap_or(1);
            for h in r.headers.iter() {
                req.headers.push((off(h.name.as_bytes()), off(h.value)));
            }
        }

        // Body framing.
        let mut content_length: Option<usize> = None;
        for i in 0..req.headers.len() {
            let name = req.header_name(i);
            if name.eq_ignore_ascii_case("transfer-encoding") {
                let v = String::from_utf8_lossy(req.header_value(i)).to_ascii_lowercase();
                if v.split(',').next_back().map(str::trim) == Some("chunked") {
                    req.chunked = true;
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(req.header_value(i)).unwrap_or("");
                match v.trim().parse::<usize>() {
                    Ok(n) if v.trim().bytes().all(|b| b.is_ascii_digit()) => {
                        content_length = Some(n)
                    }
                    _ => return Err(ReadError::Invalid("bad content-length")),
                }
            }
        }
        let has_body = req.chunked || content_length.unwrap_or(0) > 0;
        if has_body
            && self.auto_continue
            && self.start == self.end
            && req.header_has_token("expect", "100-continue")
        {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }

        if req.chunked {
            let mut raw = std::mem::take(&mut req.raw_chunked);
            let r = self.read_chunked(s, req, &mut raw);
            req.raw_chunked = raw;
            r?;
        } else if let Some(n) = content_length {
            self.need(s, n)?;
            req.body
                .extend_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
        }
        Ok(())
    }

    fn read_chunked<S: Read>(
        &mut self,
        s: &mut S,
        req: &mut Request,
        raw: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        loop {
            let l = self.line(s, raw)?;
            let line = &raw[l];
            let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
            let size_str = std::str::from_utf8(size_part)
                .map_err(|_| ReadError::Invalid("bad chunk size"))?
                .trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| ReadError::Invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    let l = self.line(s, raw)?;
                    if l.is_empty() {
                        return Ok(());
                    }
                    req.trailers.push(raw[l].to_vec());
                }
            }
            self.need(s, size + 2)?;
            let data = &self.buf[self.start..self.start + size];
            req.body.extend_from_slice(data);
            raw.extend_from_slice(&self.buf[self.start..self.start + size]);
            self.start += size;
            // The CRLF after the data (a bare LF is tolerated).
            let l = self.line(s, raw)?;
            if !l.is_empty() {
                return Err(ReadError::Invalid("chunk data longer than its size"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The OpenAI-shaped server.

/// Serves `listener` on a new thread, one thread per accepted connection, until `stop` is set
/// (and `Listener::wake` is called, or the next connection arrives).
pub fn spawn(
    listener: Listener,
    opts: Arc<Options>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name(format!("mock-{}", opts.name))
        .spawn(move || serve(&listener, &opts, &stats, &stop))
        .expect("spawn mock accept thread")
}

/// The accept loop (blocking).
pub fn serve(listener: &Listener, opts: &Arc<Options>, stats: &Arc<Stats>, stop: &AtomicBool) {
    loop {
        let conn = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(s) => {
                let opts = Arc::clone(opts);
                let stats = Arc::clone(stats);
                stats.connections.fetch_add(1, Ordering::SeqCst);
                stats.open.fetch_add(1, Ordering::SeqCst);
                let spawned = thread::Builder::new()
                    .name("mock-conn".into())
                    .spawn(move || {
                        let _ = serve_connection(s, &opts, &stats);
                        stats.open.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Answers requests on one connection until the peer closes or asks to close.
pub fn serve_connection(mut s: Stream, opts: &Options, stats: &Stats) -> io::Result<()> {
    let mut reader = RequestReader::new();
    let mut req = Request::default();
    let mut out = Vec::with_capacity(4096);
    let mut body = Vec::with_capacity(2048);
    loop {
        match reader.read_request(&mut s, &mut req) {
            Ok(()) => {}
            Err(ReadError::Closed) => return Ok(()),
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::Invalid(why)) => {
                out.clear();
                error_response(&mut out, &mut body, 400, why, "bad_request", opts, false);
                let _ = s.write_all(&out);
                return Ok(());
            }
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let keep_alive = req.keep_alive();
        let latency = header_ms(&req, "x-mock-latency-ms").unwrap_or(opts.latency);
        if !latency.is_zero() {
            thread::sleep(latency);
        }
        out.clear();
        body.clear();
        respond(&mut s, &req, opts, keep_alive, &mut out, &mut body)?;
        if !keep_alive {
            let _ = s.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

fn header_ms(req: &Request, name: &str) -> Option<Duration> {
    req.header(name)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

fn respond(
    s: &mut Stream,
    req: &Request,
    opts: &Options,
    keep_alive: bool,
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> io::Result<()> {
    if let Some(code) = req
        .header("x-mock-status")
        .and_then(|v| v.trim().parse::<u16>().ok())
    {
        error_response(
            out,
            body,
            code,
            "scripted status",
            "mock_status",
            opts,
            keep_alive,
        );
        return s.write_all(out);
    }
    let method = req.method();
    let path = req.path();
    let enc = Encoding::for_request(req);
    match (method, path) {
        ("POST", "/v1/chat/completions") => {
            generate(s, req, opts, keep_alive, out, body, Kind::Chat, enc)
        }
        ("POST", "/v1/completions") => {
            generate(s, req, opts, keep_alive, out, body, Kind::Completion, enc)
        }
        ("POST", "/v1/responses") => responses(s, req, opts, keep_alive, out, body, enc),
        ("POST", "/v1/audio/transcriptions" | "/v1/audio/translations") => {
            let content_type = transcription(req, body);
            encoded_response(out, 200, content_type, body, opts, keep_alive, false, enc);
            s.write_all(out)
        }
        ("POST", "/v1/embeddings") => {
            embeddings(req, opts, body);
            encoded_response(out, 200, JSON, body, opts, keep_alive, false, enc);
            s.write_all(out)
        }
        ("GET", "/v1/models") => {
            let _ = write!(
                body,
                "{{\"object\":\"list\",\"data\":[{{\"id\":{},\"object\":\"model\",\"created\":{},\"owned_by\":\"mock\"}}]}}",
                json_str(&opts.name),
                now_secs()
            );
            encoded_response(out, 200, JSON, body, opts, keep_alive, false, enc);
            s.write_all(out)
        }
        ("GET" | "HEAD", "/health") => {
            body.extend_from_slice(b"{\"status\":\"ok\"}");
            json_response(out, 200, body, opts, keep_alive, method == "HEAD");
            s.write_all(out)
        }
        _ => {
            let msg = format!("no route for {} {}", method, path);
            error_response(out, body, 404, &msg, "not_found", opts, keep_alive);
            s.write_all(out)
        }
    }
}

fn status_reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Mock",
    }
}

const JSON: &str = "application/json";

fn head(out: &mut Vec<u8>, code: u16, content_type: &str, opts: &Options, keep_alive: bool) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nX-Mock-Name: {}\r\n",
        code,
        status_reason(code),
        content_type,
        opts.name
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
}

fn json_response(
    out: &mut Vec<u8>,
    code: u16,
    body: &[u8],
    opts: &Options,
    keep_alive: bool,
    head_only: bool,
) {
    encoded_response(
        out,
        code,
        JSON,
        body,
        opts,
        keep_alive,
        head_only,
        Encoding::Identity,
    );
}

/// A complete response with `body` encoded as `enc` says (and `Content-Encoding` naming it).
#[allow(clippy::too_many_arguments)]
fn encoded_response(
    out: &mut Vec<u8>,
    code: u16,
    content_type: &str,
    body: &[u8],
    opts: &Options,
    keep_alive: bool,
    head_only: bool,
    enc: Encoding,
) {
    head(out, code, content_type, opts, keep_alive);
    enc.write_headers(out);
    let encoded;
    let body = match enc {
        Encoding::Identity | Encoding::FakeBr => body,
        _ => {
            let mut e = Encoder::new(enc);
            let mut whole = Vec::with_capacity(body.len() / 2 + 32);
            e.piece(body, &mut whole);
            e.finish(&mut whole);
            encoded = whole;
            &encoded
        }
    };
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    if !head_only {
        out.extend_from_slice(body);
    }
}

fn error_response(
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
    code: u16,
    message: &str,
    err_code: &str,
    opts: &Options,
    keep_alive: bool,
) {
    body.clear();
    let _ = write!(
        body,
        "{{\"error\":{{\"message\":{},\"type\":\"invalid_request_error\",\"param\":null,\"code\":{}}}}}",
        json_str(message),
        json_str(err_code)
    );
    json_response(out, code, body, opts, keep_alive, false);
}

/// A JSON string literal for `s`.
pub fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

// ---------------------------------------------------------------------------------------------
// Compressed answers: what `Accept-Encoding` offers, as LiteLLM and hosted APIs do.

/// How an answer's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// zlib-wrapped deflate, as RFC 9110 defines `deflate`.
    Deflate,
    /// Raw deflate labelled `deflate`, as some servers send it.
    DeflateRaw,
    /// Labelled `br` but sent as it is (the mock has no brotli encoder): for tests of what a
    /// router does with a coding it cannot read.
    FakeBr,
}

impl Encoding {
    /// `X-Mock-Content-Encoding` (`identity`, `gzip`, `deflate`, `deflate-raw`, `br`) when
    /// set, else the first of gzip and deflate that `Accept-Encoding` accepts (`q=0` refuses;
    /// `*` accepts gzip), else identity.
    pub fn for_request(req: &Request) -> Encoding {
        if let Some(forced) = req.header("x-mock-content-encoding") {
            return match forced.trim() {
                "gzip" => Encoding::Gzip,
                "deflate" => Encoding::Deflate,
                "deflate-raw" => Encoding::DeflateRaw,
                "br" => Encoding::FakeBr,
                _ => Encoding::Identity,
            };
        }
        let accepted = |coding: &str| {
            (0..req.headers.len())
                .filter(|&i| req.header_name(i).eq_ignore_ascii_case("accept-encoding"))
                .filter_map(|i| std::str::from_utf8(req.header_value(i)).ok())
                .flat_map(|v| v.split(','))
                .any(|item| {
                    let mut parts = item.split(';').map(str::trim);
                    let name = parts.next().unwrap_or("");
                    let refused = parts.any(|p| {
                        p.strip_prefix("q=")
                            .and_then(|q| q.parse::<f32>().ok())
                            .is_some_and(|q| q <= 0.0)
                    });
                    (name.eq_ignore_ascii_case(coding) || name == "*") && !refused
                })
        };
        if accepted("gzip") {
            Encoding::Gzip
        } else if accepted("deflate") {
            Encoding::Deflate
        } else {
            Encoding::Identity
        }
    }

    fn write_headers(self, out: &mut Vec<u8>) {
        let name = match self {
            Encoding::Identity => return,
            Encoding::Gzip => "gzip",
            Encoding::Deflate | Encoding::DeflateRaw => "deflate",
            Encoding::FakeBr => "br",
        };
        let _ = write!(out, "Content-Encoding: {name}\r\nVary: Accept-Encoding\r\n");
    }
}

/// A body encoder that is flushed after each SSE event, so each event reaches the client
/// as soon as it is written (as a streaming server with gzip does).
pub enum Encoder {
    Identity,
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zlib(flate2::write::ZlibEncoder<Vec<u8>>),
    Raw(flate2::write::DeflateEncoder<Vec<u8>>),
}

impl Encoder {
    pub fn new(enc: Encoding) -> Encoder {
        let level = flate2::Compression::default();
        match enc {
            Encoding::Identity | Encoding::FakeBr => Encoder::Identity,
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            Encoding::Deflate => Encoder::Zlib(flate2::write::ZlibEncoder::new(Vec::new(), level)),
            Encoding::DeflateRaw => {
                Encoder::Raw(flate2::write::DeflateEncoder::new(Vec::new(), level))
            }
        }
    }

    /// Encodes `data`, sync-flushes, and appends what is ready to `out`.
    pub fn piece(&mut self, data: &[u8], out: &mut Vec<u8>) {
        fn flushed<W: Write>(w: &mut W, data: &[u8]) {
            let _ = w.write_all(data);
            let _ = w.flush();
        }
        match self {
            Encoder::Identity => out.extend_from_slice(data),
            Encoder::Gzip(e) => {
                flushed(e, data);
                out.append(e.get_mut());
            }
            Encoder::Zlib(e) => {
                flushed(e, data);
                out.append(e.get_mut());
            }
            Encoder::Raw(e) => {
                flushed(e, data);
                out.append(e.get_mut());
            }
        }
    }

    /// Ends the stream (the gzip trailer, say), appending the last bytes to `out`.
    pub fn finish(self, out: &mut Vec<u8>) {
        let rest = match self {
            Encoder::Identity => Ok(Vec::new()),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zlib(e) => e.finish(),
            Encoder::Raw(e) => e.finish(),
        };
        out.extend_from_slice(&rest.unwrap_or_default());
    }
}

/// Writes a `text/event-stream` answer, one event per HTTP chunk, `interval` apart (the first
/// at once), each written as soon as it is made when paced.
struct SseWriter<'a> {
    s: &'a mut Stream,
    out: &'a mut Vec<u8>,
    encoder: Encoder,
    interval: Duration,
    events: usize,
    piece: Vec<u8>,
}

impl<'a> SseWriter<'a> {
    fn start(
        s: &'a mut Stream,
        out: &'a mut Vec<u8>,
        opts: &Options,
        keep_alive: bool,
        interval: Duration,
        enc: Encoding,
    ) -> SseWriter<'a> {
        head(out, 200, "text/event-stream", opts, keep_alive);
        enc.write_headers(out);
        out.extend_from_slice(b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n");
        SseWriter {
            s,
            out,
            encoder: Encoder::new(enc),
            interval,
            events: 0,
            piece: Vec::new(),
        }
    }

    /// Sends the event text in `body` (then cleared) as one chunk.
    fn event(&mut self, body: &mut Vec<u8>) -> io::Result<()> {
        self.piece.clear();
        self.encoder.piece(body, &mut self.piece);
        body.clear();
        self.chunk()?;
        if !self.interval.is_zero() {
            if self.events > 0 {
                thread::sleep(self.interval);
            }
            self.s.write_all(self.out)?;
            self.out.clear();
        }
        self.events += 1;
        Ok(())
    }

    fn chunk(&mut self) -> io::Result<()> {
        if !self.piece.is_empty() {
            let _ = write!(self.out, "{:x}\r\n", self.piece.len());
            self.out.extend_from_slice(&self.piece);
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.piece.clear();
        let encoder = std::mem::replace(&mut self.encoder, Encoder::Identity);
        encoder.finish(&mut self.piece);
        self.chunk()?;
        self.out.extend_from_slice(b"0\r\n\r\n");
        self.s.write_all(self.out)
    }
}

// ---------------------------------------------------------------------------------------------
// Generation endpoints.

/// What a generation request asks for: the model to echo, events and their pacing.
struct Ask<'a> {
    model: std::borrow::Cow<'a, str>,
    events: usize,
    interval: Duration,
    prompt_tokens: usize,
    fields: TopLevel,
}

fn ask<'a>(req: &'a Request, opts: &Options) -> Ask<'a> {
    let fields = scan_top_level(&req.body);
    let model = match &fields.model {
        // The raw bytes between the quotes are a valid JSON string body as they are.
        Some(r) => std::borrow::Cow::Borrowed(
            std::str::from_utf8(&req.body[r.clone()]).unwrap_or_default(),
        ),
        None => {
            let quoted = json_str(&opts.name);
            std::borrow::Cow::Owned(quoted[1..quoted.len() - 1].to_string())
        }
    };
    Ask {
        model,
        events: req
            .header("x-mock-sse-events")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(opts.sse_events),
        interval: header_ms(req, "x-mock-sse-interval-ms").unwrap_or(opts.sse_interval),
        prompt_tokens: (req.body.len() / 4).max(1),
        fields,
    }
}

#[allow(clippy::too_many_arguments)]
fn generate(
    s: &mut Stream,
    req: &Request,
    opts: &Options,
    keep_alive: bool,
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
    kind: Kind,
    enc: Encoding,
) -> io::Result<()> {
    let Ask {
        model,
        events,
        interval,
        prompt_tokens,
        fields,
    } = ask(req, opts);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let created = now_secs();
    let (object, prefix) = match kind {
        Kind::Chat => ("chat.completion", "chatcmpl"),
        Kind::Completion => ("text_completion", "cmpl"),
    };

    if !fields.stream {
        match kind {
            Kind::Chat => {
                let _ = write!(
                    body,
                    "{{\"id\":\"{prefix}-mock-{id}\",\"object\":\"{object}\",\"created\":{created},\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\""
                );
            }
            Kind::Completion => {
                let _ = write!(
                    body,
                    "{{\"id\":\"{prefix}-mock-{id}\",\"object\":\"{object}\",\"created\":{created},\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"text\":\""
                );
            }
        }
        for i in 0..events {
            let _ = write!(body, "tok{} ", i);
        }
        let _ = write!(body, "\"");
        if kind == Kind::Chat {
            body.push(b'}');
        }
        let _ = write!(
            body,
            ",\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{events},\"total_tokens\":{}}}}}",
            prompt_tokens + events
        );
        encoded_response(out, 200, JSON, body, opts, keep_alive, false, enc);
        return s.write_all(out);
    }

    // Streaming: one SSE event per HTTP chunk.
    let object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let mut sse = SseWriter::start(s, out, opts, keep_alive, interval, enc);
    for i in 0..events {
        let _ = write!(
            body,
            "data: {{\"id\":\"{prefix}-mock-{id}\",\"object\":\"{object}\",\"created\":{created},\"model\":\"{model}\",\"choices\":[{{\"index\":0,"
        );
        match kind {
            Kind::Chat if i == 0 => {
                let _ = write!(
                    body,
                    "\"delta\":{{\"role\":\"assistant\",\"content\":\"tok{i} \"}}"
                );
            }
            Kind::Chat => {
                let _ = write!(body, "\"delta\":{{\"content\":\"tok{i} \"}}");
            }
            Kind::Completion => {
                let _ = write!(body, "\"text\":\"tok{i} \"");
            }
        }
        body.extend_from_slice(b",\"finish_reason\":null}]}\n\n");
        sse.event(body)?;
    }
    let _ = write!(
        body,
        "data: {{\"id\":\"{prefix}-mock-{id}\",\"object\":\"{object}\",\"created\":{created},\"model\":\"{model}\",\"choices\":[{{\"index\":0,"
    );
    match kind {
        Kind::Chat => body.extend_from_slice(b"\"delta\":{}"),
        Kind::Completion => body.extend_from_slice(b"\"text\":\"\""),
    }
    body.extend_from_slice(b",\"finish_reason\":\"stop\"}]}\n\n");
    sse.event(body)?;
    if fields.include_usage {
        let _ = write!(
            body,
            "data: {{\"id\":\"{prefix}-mock-{id}\",\"object\":\"{object}\",\"created\":{created},\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\n",
            prompt_tokens + events
        );
        sse.event(body)?;
    }
    body.extend_from_slice(b"data: [DONE]\n\n");
    sse.event(body)?;
    sse.finish()
}

/// The Responses API object: `status`, the output text message (when `text` is given) and
/// `usage` (when `usage` is given).
fn response_object(
    body: &mut Vec<u8>,
    id: u64,
    model: &str,
    status: &str,
    text: Option<&str>,
    usage: Option<(usize, usize)>,
) {
    let created = now_secs();
    let _ = write!(
        body,
        "{{\"id\":\"resp_mock{id}\",\"object\":\"response\",\"created_at\":{created},\"status\":\"{status}\",\"model\":\"{model}\",\"output\":["
    );
    if let Some(text) = text {
        let _ = write!(
            body,
            "{{\"type\":\"message\",\"id\":\"msg_mock{id}\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{{\"type\":\"output_text\",\"text\":{},\"annotations\":[]}}]}}",
            json_str(text)
        );
    }
    body.extend_from_slice(
        b"],\"parallel_tool_calls\":true,\"tool_choice\":\"auto\",\"tools\":[],",
    );
    match usage {
        Some((input, output)) => {
            let _ = write!(
                body,
                "\"usage\":{{\"input_tokens\":{input},\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":{output},\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":{}}}}}",
                input + output
            );
        }
        None => body.extend_from_slice(b"\"usage\":null}"),
    }
}

/// `POST /v1/responses`: the Responses API, streamed (`response.created`, one
/// `response.output_text.delta` per token, `response.completed` with usage) or not.
fn responses(
    s: &mut Stream,
    req: &Request,
    opts: &Options,
    keep_alive: bool,
    out: &mut Vec<u8>,
    body: &mut Vec<u8>,
    enc: Encoding,
) -> io::Result<()> {
    let a = ask(req, opts);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let text: String = (0..a.events).map(|i| format!("tok{i} ")).collect();
    let usage = Some((a.prompt_tokens, a.events));
    if !a.fields.stream {
        response_object(body, id, &a.model, "completed", Some(&text), usage);
        encoded_response(out, 200, JSON, body, opts, keep_alive, false, enc);
        return s.write_all(out);
    }
    let mut sse = SseWriter::start(s, out, opts, keep_alive, a.interval, enc);
    let mut seq = 0;
    let mut object = Vec::new();
    let mut event = |sse: &mut SseWriter, body: &mut Vec<u8>, kind: &str, rest: &[u8]| {
        let _ = write!(
            body,
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{seq},"
        );
        body.extend_from_slice(rest);
        body.extend_from_slice(b"}\n\n");
        seq += 1;
        sse.event(body)
    };
    response_object(&mut object, id, &a.model, "in_progress", None, None);
    let mut rest = b"\"response\":".to_vec();
    rest.extend_from_slice(&object);
    event(&mut sse, body, "response.created", &rest)?;
    for i in 0..a.events {
        let delta = format!(
            "\"item_id\":\"msg_mock{id}\",\"output_index\":0,\"content_index\":0,\"delta\":\"tok{i} \""
        );
        event(
            &mut sse,
            body,
            "response.output_text.delta",
            delta.as_bytes(),
        )?;
    }
    object.clear();
    response_object(&mut object, id, &a.model, "completed", Some(&text), usage);
    let mut rest = b"\"response\":".to_vec();
    rest.extend_from_slice(&object);
    event(&mut sse, body, "response.completed", &rest)?;
    sse.finish()
}

/// `POST /v1/audio/transcriptions` (and translations): a multipart upload; answers
/// `{"text": "mock transcription of N bytes", "usage": …}` (N: the file part's size), or the
/// text alone for `response_format=text`. Returns the content type.
fn transcription(req: &Request, body: &mut Vec<u8>) -> &'static str {
    let mut file_bytes = 0;
    let mut text_format = false;
    let boundary = req
        .header("content-type")
        .and_then(|ct| {
            ct.split(';')
                .find_map(|p| p.trim().strip_prefix("boundary="))
        })
        .map(|b| format!("--{}", b.trim_matches('"')));
    if let Some(boundary) = boundary {
        let data = &req.body;
        let mut starts: Vec<usize> = Vec::new();
        let mut at = 0;
        while let Some(i) = find(&data[at..], boundary.as_bytes()) {
            starts.push(at + i);
            at += i + boundary.len();
        }
        for w in starts.windows(2) {
            let part = &data[w[0] + boundary.len()..w[1]];
            let Some(split) = find(part, b"\r\n\r\n") else {
                continue;
            };
            let (headers, value) = (&part[..split], &part[split + 4..]);
            let value = value.strip_suffix(b"\r\n").unwrap_or(value);
            let headers = String::from_utf8_lossy(headers);
            if headers.contains("filename=") {
                file_bytes += value.len();
            } else if headers.contains("name=\"response_format\"") {
                text_format = value == b"text";
            }
        }
    }
    let text = format!("mock transcription of {file_bytes} bytes");
    if text_format {
        body.extend_from_slice(text.as_bytes());
        return "text/plain; charset=utf-8";
    }
    let input = (file_bytes / 100).max(1);
    let output = text.split(' ').count();
    let _ = write!(
        body,
        "{{\"text\":{},\"usage\":{{\"type\":\"tokens\",\"input_tokens\":{input},\"input_token_details\":{{\"text_tokens\":0,\"audio_tokens\":{input}}},\"output_tokens\":{output},\"total_tokens\":{}}}}}",
        json_str(&text),
        input + output
    );
    JSON
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn embeddings(req: &Request, opts: &Options, body: &mut Vec<u8>) {
    let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
    let model = v
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or(&opts.name)
        .to_string();
    let inputs = match v.get("input") {
        Some(serde_json::Value::Array(a)) if a.iter().all(|x| !x.is_number()) => a.len().max(1),
        _ => 1,
    };
    let prompt_tokens = (req.body.len() / 4).max(1);
    body.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for i in 0..inputs {
        if i > 0 {
            body.push(b',');
        }
        let _ = write!(
            body,
            "{{\"object\":\"embedding\",\"index\":{i},\"embedding\":[0.0123,-0.0456,0.0789,{}]}}",
            i as f64 / 10.0
        );
    }
    let _ = write!(
        body,
        "],\"model\":{},\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"total_tokens\":{prompt_tokens}}}}}",
        json_str(&model)
    );
}

/// What the mock needs from a request body, found without building a JSON tree.
#[derive(Debug, Default, PartialEq)]
pub struct TopLevel {
    /// The raw bytes between the quotes of a top-level string `model`.
    pub model: Option<Range<usize>>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Scans a JSON object's top-level keys. Lenient: on malformed input it returns what it found.
pub fn scan_top_level(b: &[u8]) -> TopLevel {
    let mut t = TopLevel::default();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return t;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'"') => {}
            _ => return t,
        }
        let Some(key_end) = string_end(b, i) else {
            return t;
        };
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return t;
        }
        i = skip_ws(b, i + 1);
        let Some(v_end) = value_end(b, i) else {
            return t;
        };
        let value = &b[i..v_end];
        match key {
            b"model" if value.first() == Some(&b'"') => t.model = Some(i + 1..v_end - 1),
            b"stream" => t.stream = value == b"true",
            b"stream_options" => t.include_usage = include_usage(value),
            _ => {}
        }
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return t,
        }
    }
}

fn include_usage(v: &[u8]) -> bool {
    let key = b"\"include_usage\"";
    let Some(p) = v.windows(key.len()).position(|w| w == key) else {
        return false;
    };
    let mut i = skip_ws(v, p + key.len());
    if v.get(i) != Some(&b':') {
        return false;
    }
    i = skip_ws(v, i + 1);
    v[i..].starts_with(b"true")
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[i]` is `"`; returns the index after the closing quote.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Returns the index after the JSON value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(&c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            Some(j)
        }
    }
}
