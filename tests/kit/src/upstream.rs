//! Upstreams a test starts in-process: the OpenAI mock (`MockUpstream`, the same code as
//! `cargo run --example mock-upstream`) and scriptable ones (`ScriptedUpstream`).

use super::server::{self, Listener, ReadError, Request, RequestReader, Stream};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use super::server::Options as MockOptions;

/// Polls `f` every 5 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------

/// The OpenAI-compatible mock, served in-process on its own threads. Stops accepting on drop.
pub struct MockUpstream {
    listener: Arc<Listener>,
    stats: Arc<server::Stats>,
    stop: Arc<AtomicBool>,
    name: String,
}

impl MockUpstream {
    /// The OpenAI mock with default options on `127.0.0.1:0`; `name` is in `X-Mock-Name`.
    pub fn openai(name: &str) -> MockUpstream {
        Self::start(
            "127.0.0.1:0",
            MockOptions {
                name: name.to_string(),
                ..MockOptions::default()
            },
        )
    }

    /// The OpenAI mock listening on a unix socket at `path`.
    pub fn openai_unix(path: impl AsRef<Path>, name: &str) -> MockUpstream {
        Self::start(
            &format!("unix:{}", path.as_ref().display()),
            MockOptions {
                name: name.to_string(),
                ..MockOptions::default()
            },
        )
    }

    /// The mock with explicit options on `listen` (`host:port` or `unix:/path`).
    pub fn start(listen: &str, opts: MockOptions) -> MockUpstream {
        let listener =
            Arc::new(Listener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}")));
        let stats = Arc::new(server::Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let name = opts.name.clone();
        let opts = Arc::new(opts);
        {
            let (l, s, st) = (listener.clone(), stats.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("mock-{name}"))
                .spawn(move || server::serve(&l, &opts, &s, &st))
                .expect("spawn mock");
        }
        MockUpstream {
            listener,
            stats,
            stop,
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The TCP address (panics for a unix-socket mock).
    pub fn addr(&self) -> SocketAddr {
        self.listener.tcp_addr().expect("mock is not on TCP")
    }
    /// `http://127.0.0.1:PORT` or `unix:///path`: what a model's `url` in the config takes.
    pub fn url(&self) -> String {
        match &*self.listener {
            Listener::Tcp(_) => format!("http://{}", self.addr()),
            Listener::Unix(_, p) => format!("unix://{}", p.display()),
        }
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }
    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.stats.open.load(Ordering::SeqCst)
    }
    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.listener.wake();
        if let Listener::Unix(_, p) = &*self.listener {
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// One request as a scripted upstream received it.
#[derive(Debug, Clone, Default)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Header names and values as sent (values lossily decoded as UTF-8), in order.
    pub headers: Vec<(String, String)>,
    /// The body with chunked framing removed.
    pub body: Vec<u8>,
    /// The raw head, request line through the empty line.
    pub raw_head: Vec<u8>,
    /// The body exactly as on the wire (chunked framing included when chunked).
    pub raw_body: Vec<u8>,
    pub chunked: bool,
    /// Trailer lines of a chunked body, as sent, without CRLF.
    pub trailers: Vec<String>,
    /// Which accepted connection (1-based, in accept order) carried it.
    pub connection: usize,
}

impl RecordedRequest {
    fn from_request(r: &Request, connection: usize) -> Self {
        RecordedRequest {
            method: r.method().to_string(),
            target: r.target().to_string(),
            version: r.version,
            headers: (0..r.headers.len())
                .map(|i| {
                    (
                        r.header_name(i).to_string(),
                        String::from_utf8_lossy(r.header_value(i)).into_owned(),
                    )
                })
                .collect(),
            body: r.body.clone(),
            raw_head: r.head.clone(),
            raw_body: r.raw_body().to_vec(),
            chunked: r.chunked,
            trailers: r
                .trailers
                .iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect(),
            connection,
        }
    }
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
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("body is not UTF-8")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is not JSON")
    }
}

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    connections: AtomicUsize,
    open: AtomicUsize,
}

/// One accepted connection of a `ScriptedUpstream`, handed to the handler.
pub struct Conn {
    stream: Stream,
    reader: RequestReader,
    req: Request,
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    /// 1-based accept order.
    pub index: usize,
}

/// Tracks whether the connection still counts as open; decremented exactly once.
struct ConnState {
    counted: AtomicBool,
    we_closed: AtomicBool,
}

impl ConnState {
    fn release(&self, shared: &Shared) {
        if self.counted.swap(false, Ordering::SeqCst) {
            shared.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Conn {
    /// Reads the next request (handles Content-Length and chunked bodies, pipelining), records
    /// it, and returns it. `None` when the peer closed, the read failed or timed out (30 s),
    /// or the bytes are not HTTP. `Expect: 100-continue` is NOT answered automatically.
    pub fn read_request(&mut self) -> Option<RecordedRequest> {
        match self.reader.read_request(&mut self.stream, &mut self.req) {
            Ok(()) => {
                let r = RecordedRequest::from_request(&self.req, self.index);
                self.shared.requests.lock().unwrap().push(r.clone());
                Some(r)
            }
            Err(ReadError::Closed) | Err(ReadError::Io(_)) | Err(ReadError::Invalid(_)) => None,
        }
    }
    /// Like `read_request`, telling why it failed.
    pub fn try_read_request(&mut self) -> Result<RecordedRequest, String> {
        match self.reader.read_request(&mut self.stream, &mut self.req) {
            Ok(()) => {
                let r = RecordedRequest::from_request(&self.req, self.index);
                self.shared.requests.lock().unwrap().push(r.clone());
                Ok(r)
            }
            Err(ReadError::Closed) => Err("closed".into()),
            Err(ReadError::Io(e)) => Err(format!("io: {e}")),
            Err(ReadError::Invalid(w)) => Err(format!("invalid: {w}")),
        }
    }
    /// Bytes received after the last parsed request (pipelined or stray bytes).
    pub fn buffered(&self) -> &[u8] {
        self.reader.buffered()
    }
    /// Writes all of `bytes` (errors are returned, e.g. when the peer has gone).
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }
    /// Writes a complete response with `Content-Length` (plus any extra header lines,
    /// each without CRLF).
    pub fn respond(&mut self, status: u16, extra_headers: &[&str], body: &[u8]) -> io::Result<()> {
        let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for h in extra_headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        self.write_all(&bytes)
    }
    /// `respond` with `Content-Type: application/json`.
    pub fn respond_json(&mut self, status: u16, body: &str) -> io::Result<()> {
        self.respond(status, &["Content-Type: application/json"], body.as_bytes())
    }
    /// Reads raw bytes (after any buffered ones); `Ok(0)` at EOF.
    pub fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
    /// Closes both directions now.
    pub fn close(&mut self) {
        self.state.we_closed.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.state.release(&self.shared);
    }
    /// Sends FIN (no more writes) but keeps reading.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
    /// Closes with a TCP RST (SO_LINGER 0) instead of a FIN.
    pub fn reset(&mut self) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a valid fd with a properly sized linger struct.
        unsafe {
            libc::setsockopt(
                self.stream.raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        self.close();
    }
    /// Sets the read timeout of the socket (default 30 s).
    pub fn set_read_timeout(&mut self, d: Option<Duration>) {
        let _ = self.stream.set_read_timeout(d);
    }
    /// Whether the peer has closed (FIN or RST), without consuming data.
    pub fn peer_closed(&self) -> bool {
        peer_hung_up(self.stream.raw_fd(), 0)
    }
    /// Waits up to `timeout` for the peer to close; true if it did.
    pub fn wait_peer_closed(&self, timeout: Duration) -> bool {
        peer_hung_up(self.stream.raw_fd(), timeout.as_millis() as i32)
    }
    /// The underlying socket, for anything the helpers don't cover.
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }
}

/// `poll` for POLLRDHUP/POLLHUP/POLLERR only (not POLLIN), so pending data is not mistaken
/// for a close and nothing is consumed.
fn peer_hung_up(fd: i32, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// A scriptable upstream: `handler` runs on its own thread for every accepted connection.
/// Every request read through `Conn::read_request` is recorded. Stops accepting on drop.
pub struct ScriptedUpstream {
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl ScriptedUpstream {
    /// Listens on `127.0.0.1:0`.
    pub fn start(handler: impl Fn(&mut Conn) + Send + Sync + 'static) -> ScriptedUpstream {
        Self::start_on("127.0.0.1:0", handler)
    }
    /// Listens on a unix socket at `path`.
    pub fn start_unix(
        path: impl AsRef<Path>,
        handler: impl Fn(&mut Conn) + Send + Sync + 'static,
    ) -> ScriptedUpstream {
        Self::start_on(&format!("unix:{}", path.as_ref().display()), handler)
    }
    /// Listens on `host:port` or `unix:/path`.
    pub fn start_on(
        listen: &str,
        handler: impl Fn(&mut Conn) + Send + Sync + 'static,
    ) -> ScriptedUpstream {
        let listener =
            Arc::new(Listener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}")));
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        {
            let (l, sh, st) = (listener.clone(), shared.clone(), stop.clone());
            thread::Builder::new()
                .name("scripted-accept".into())
                .spawn(move || loop {
                    let accepted = l.accept();
                    if st.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = accepted else {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let index = sh.connections.fetch_add(1, Ordering::SeqCst) + 1;
                    sh.open.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let state = Arc::new(ConnState {
                        counted: AtomicBool::new(true),
                        we_closed: AtomicBool::new(false),
                    });
                    spawn_close_watcher(&stream, state.clone(), sh.clone());
                    let mut conn = Conn {
                        stream,
                        reader: {
                            let mut r = RequestReader::new();
                            r.auto_continue = false;
                            r
                        },
                        req: Request::default(),
                        shared: sh.clone(),
                        state,
                        index,
                    };
                    let h = handler.clone();
                    thread::Builder::new()
                        .name(format!("scripted-conn-{index}"))
                        .spawn(move || {
                            h(&mut conn);
                            conn.close();
                        })
                        .expect("spawn scripted connection");
                })
                .expect("spawn scripted accept");
        }
        ScriptedUpstream {
            listener,
            shared,
            stop,
        }
    }

    /// The TCP address (panics for a unix-socket upstream).
    pub fn addr(&self) -> SocketAddr {
        self.listener.tcp_addr().expect("upstream is not on TCP")
    }
    /// `http://127.0.0.1:PORT` or `unix:///path`.
    pub fn url(&self) -> String {
        match &*self.listener {
            Listener::Tcp(_) => format!("http://{}", self.addr()),
            Listener::Unix(_, p) => format!("unix://{}", p.display()),
        }
    }
    pub fn unix_path(&self) -> Option<PathBuf> {
        match &*self.listener {
            Listener::Unix(_, p) => Some(p.clone()),
            Listener::Tcp(_) => None,
        }
    }
    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
    /// How many requests were recorded.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
    /// Waits until at least `n` requests were recorded; panics after `timeout`.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        if !wait_until(timeout, || self.request_count() >= n) {
            panic!(
                "expected {n} upstream requests within {timeout:?}, got {}",
                self.request_count()
            );
        }
        self.requests()
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
    /// Connections open now: accepted, and neither closed by the peer nor by the handler.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
    /// Waits until `open_connections() == n`; true if reached within `timeout`.
    pub fn wait_open_connections(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.open_connections() == n)
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.listener.wake();
        if let Listener::Unix(_, p) = &*self.listener {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Watches one connection for the peer's FIN/RST without reading from it, so the open count
/// drops as soon as the peer goes away even while the handler is busy (sleeping, streaming).
fn spawn_close_watcher(stream: &Stream, state: Arc<ConnState>, shared: Arc<Shared>) {
    let Ok(dup) = stream.try_clone() else { return };
    let _ = thread::Builder::new()
        .name("scripted-watch".into())
        .spawn(move || {
            let fd = dup.raw_fd();
            while state.counted.load(Ordering::SeqCst) && !state.we_closed.load(Ordering::SeqCst) {
                if peer_hung_up(fd, 10) {
                    state.release(&shared);
                    return;
                }
            }
        });
}
