//! Raw HTTP/1.1 client helpers: bytes in, parsed responses out, nothing hidden.

use super::server::Stream;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Default read timeout of clients.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed HTTP response.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Names and values as received (values lossily decoded), in order.
    pub headers: Vec<(String, String)>,
    /// The body with chunked framing removed.
    pub body: Vec<u8>,
    /// Trailer lines of a chunked body, without CRLF.
    pub trailers: Vec<String>,
    /// The response exactly as received: head and framed body.
    pub raw: Vec<u8>,
    pub chunked: bool,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every value of that header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("response body is not UTF-8")
    }
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    /// `error.code` of an OpenAI-shaped error body.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .pointer("/error/code")?
            .as_str()
            .map(str::to_string)
    }
    /// The payloads of the body's SSE `data:` lines, in order (`[DONE]` included).
    pub fn sse_data(&self) -> Vec<String> {
        sse_data(&self.body)
    }
}

/// The payloads of `data:` lines in an SSE body (lines may end in `\n` or `\r\n`).
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d).to_string())
        .collect()
}

/// A client connection that keeps unconsumed bytes buffered between responses, for
/// keep-alive and pipelining tests.
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    /// Connects over TCP (TCP_NODELAY on; read timeout `CLIENT_TIMEOUT`).
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_nodelay(true).unwrap();
        Self::from_stream(Stream::Tcp(s))
    }
    /// Connects to a unix socket.
    pub fn connect_unix(path: impl AsRef<Path>) -> Client {
        let p = path.as_ref();
        let s = UnixStream::connect(p).unwrap_or_else(|e| panic!("connect {}: {e}", p.display()));
        Self::from_stream(Stream::Unix(s))
    }
    pub fn from_stream(stream: Stream) -> Client {
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }
    pub fn set_read_timeout(&mut self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }
    /// Writes all of `bytes` (panics on error; see `try_send`).
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("client send: {e}"));
    }
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }
    /// Sends FIN (half-close).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
    /// Closes the socket both ways (the `Client` stays usable only for `buffered`).
    pub fn close(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
    /// Bytes received but not consumed by a parsed response.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
    /// The socket, for anything else.
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Reads once into the buffer; `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let mut tmp = [0u8; 16384];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A reset after the peer's last bytes counts as the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Parses the head of the next response. `Err(UnexpectedEof)` when the connection ends
    /// first (`buffered()` then holds what came).
    pub fn try_read_head(&mut self) -> io::Result<Response> {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let resp = Response {
                        status: r.code.unwrap_or(0),
                        reason: r.reason.unwrap_or("").to_string(),
                        version: r.version.unwrap_or(1),
                        headers: r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        raw: self.buf[..n].to_vec(),
                        ..Response::default()
                    };
                    self.buf.drain(..n);
                    return Ok(resp);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "bad response head ({e}): {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ),
                    ))
                }
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Reads one whole response (Content-Length, chunked or close-delimited). 1xx responses
    /// are returned on their own (call again for the final one). A response to HEAD has no
    /// body: use `read_response_no_body`.
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        self.read_response_inner(false)
    }

    /// `try_read_response`, panicking with context on failure.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("read_response: {e}"))
    }

    /// Reads a response that has no body whatever its headers say (HEAD, 204, 304).
    pub fn read_response_no_body(&mut self) -> Response {
        self.read_response_inner(true)
            .unwrap_or_else(|e| panic!("read_response_no_body: {e}"))
    }

    /// Reads the final response, skipping (but returning) any 1xx before it.
    pub fn read_final_response(&mut self) -> (Vec<Response>, Response) {
        let mut infos = Vec::new();
        loop {
            let r = self.read_response();
            if (100..200).contains(&r.status) && r.status != 101 {
                infos.push(r);
            } else {
                return (infos, r);
            }
        }
    }

    fn read_response_inner(&mut self, no_body: bool) -> io::Result<Response> {
        let mut resp = self.try_read_head()?;
        let bodyless = no_body
            || (100..200).contains(&resp.status)
            || resp.status == 204
            || resp.status == 304;
        if bodyless {
            return Ok(resp);
        }
        let te_chunked = resp
            .header_all("transfer-encoding")
            .last()
            .map(|v| {
                v.split(',')
                    .next_back()
                    .map(|t| t.trim().eq_ignore_ascii_case("chunked"))
                    == Some(true)
            })
            .unwrap_or(false);
        if te_chunked {
            resp.chunked = true;
            loop {
                match self.try_next_chunk(&mut resp)? {
                    Some(data) => resp.body.extend_from_slice(&data),
                    None => return Ok(resp),
                }
            }
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad content-length {cl}"),
                )
            })?;
            while self.buf.len() < n {
                if self.fill()? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("body truncated: {} of {n} bytes", self.buf.len()),
                    ));
                }
            }
            resp.body = self.buf.drain(..n).collect();
            resp.raw.extend_from_slice(&resp.body);
            Ok(resp)
        } else {
            while self.fill()? > 0 {}
            resp.body = std::mem::take(&mut self.buf);
            resp.raw.extend_from_slice(&resp.body);
            Ok(resp)
        }
    }

    /// Reads one line (through LF) from the buffer, appending it to `raw`.
    fn take_line(&mut self, raw: &mut Vec<u8>) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                raw.extend_from_slice(&line);
                let s = String::from_utf8_lossy(&line);
                return Ok(s.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside chunked framing",
                ));
            }
        }
    }

    /// After `try_read_head` of a chunked response: the data of the next chunk, or `None`
    /// after the last chunk (trailers are stored in `resp.trailers`). Lets a test time each
    /// chunk (one SSE event per chunk from the mock). `Err(UnexpectedEof)` on a truncation.
    pub fn try_next_chunk(&mut self, resp: &mut Response) -> io::Result<Option<Vec<u8>>> {
        let line = self.take_line(&mut resp.raw)?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size line {line:?}"),
            )
        })?;
        if size == 0 {
            loop {
                let t = self.take_line(&mut resp.raw)?;
                if t.is_empty() {
                    return Ok(None);
                }
                resp.trailers.push(t);
            }
        }
        while self.buf.len() < size + 2 {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a chunk",
                ));
            }
        }
        let data: Vec<u8> = self.buf.drain(..size).collect();
        resp.raw.extend_from_slice(&data);
        let end = self.take_line(&mut resp.raw)?;
        if !end.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk data longer than its size",
            ));
        }
        Ok(Some(data))
    }

    /// Reads everything until EOF or until `timeout` passes without the peer closing.
    /// Returns the bytes (buffered ones first) and whether EOF was reached.
    pub fn read_to_eof_with_timeout(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = self.stream.set_read_timeout(Some(CLIENT_TIMEOUT));
        (std::mem::take(&mut self.buf), self.eof)
    }

    /// Reads whatever arrives within `timeout` (at least one read attempt); returns the bytes
    /// (buffered ones first). Empty at EOF or when nothing came.
    pub fn read_available(&mut self, timeout: Duration) -> Vec<u8> {
        if self.buf.is_empty() {
            let _ = self
                .stream
                .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
            let _ = self.fill();
            let _ = self.stream.set_read_timeout(Some(CLIENT_TIMEOUT));
        }
        std::mem::take(&mut self.buf)
    }

    /// Whether the peer has closed the connection (EOF or reset) — checked without waiting
    /// and without consuming data (pending data means "not closed").
    pub fn is_closed(&mut self) -> bool {
        self.is_closed_within(Duration::ZERO)
    }

    /// Waits up to `timeout` for the peer to close; pending data is read into the buffer.
    pub fn is_closed_within(&mut self, timeout: Duration) -> bool {
        if self.eof {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.stream.set_nonblocking(true);
            let r = self.fill();
            let _ = self.stream.set_nonblocking(false);
            match r {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Connects, writes `bytes`, and reads until EOF or 5 s. Send `Connection: close` unless you
/// want to wait for the timeout.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    raw_exchange_timeout(addr, bytes, Duration::from_secs(5))
}

/// `raw_exchange` with an explicit timeout.
pub fn raw_exchange_timeout(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut c = Client::connect(addr);
    // The peer may answer and close before reading everything: a write error is not fatal.
    let _ = c.try_send(bytes);
    c.read_to_eof_with_timeout(timeout).0
}

/// Parses every complete response in `raw` (e.g. the output of `raw_exchange`), in order;
/// trailing bytes that are not a complete response are ignored. Responses to HEAD can't be
/// told apart here: parse those with a `Client`.
pub fn parse_responses(raw: &[u8]) -> Vec<Response> {
    let (a, b) = UnixStream::pair().expect("socketpair");
    let bytes = raw.to_vec();
    let writer = std::thread::spawn(move || {
        let mut a = a;
        let _ = a.write_all(&bytes);
    });
    let mut c = Client::from_stream(Stream::Unix(b));
    let mut out = Vec::new();
    while let Ok(r) = c.try_read_response() {
        out.push(r);
    }
    let _ = writer.join();
    out
}

/// A request in bytes: `METHOD path HTTP/1.1`, `Host`, the extra header lines, and
/// `Content-Length` when `body` is non-empty or the method is POST/PUT/PATCH.
pub fn request_bytes(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: modelgate.test\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request on a new connection (with `Connection: close`); returns the final response
/// (1xx skipped).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Response {
    let mut h: Vec<&str> = headers.to_vec();
    h.push("Connection: close");
    let mut c = Client::connect(addr);
    c.send(&request_bytes(method, path, &h, body));
    if method == "HEAD" {
        return c.read_response_no_body();
    }
    c.read_final_response().1
}

/// `POST path` with a JSON body on a new connection.
pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> Response {
    request(
        addr,
        "POST",
        path,
        &["Content-Type: application/json"],
        body.as_bytes(),
    )
}

/// `GET path` on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

/// A minimal chat request body for `model` (streamed ones ask for the usage chunk).
pub fn chat_body(model: &str, stream: bool) -> String {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
    });
    if stream {
        v["stream"] = true.into();
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    v.to_string()
}
