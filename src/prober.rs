//! The discovery thread: asks every `discover` backend for `GET /v1/models` with blocking
//! std sockets and short timeouts, every `discoverInterval`, and tells the server thread
//! (`ToServer::Discovered`) when what the backends serve changed. It is never a worker: a
//! slow or silent backend costs this thread a timeout and nothing else. The server turns the
//! answer into a new `Routes` snapshot (see `discovery`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::config::{Discover, Scheme, Upstream};
use crate::control::ToServer;
use crate::discovery::{self, Found};
use crate::resolver;

/// How long a probe may wait for the TCP connection (per address).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a probe may take from connected to the whole answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(2000);

/// What the server tells the thread after a reload.
pub enum Request {
    /// Probe these backends from now on, every `interval`; probe them at once.
    Backends {
        list: Vec<Discover>,
        interval: Duration,
    },
}

/// The channel the server uses to reach the thread.
pub fn channel() -> (Sender<Request>, Receiver<Request>) {
    mpsc::channel()
}

/// Probes every backend once, in order (blocking: the discovery thread, or the server
/// thread before the workers start).
pub fn probe_all(list: &[Discover]) -> Found {
    Found {
        backends: list
            .iter()
            .map(|backend| (backend.upstream.clone(), probe(backend)))
            .collect(),
    }
}

/// Starts the thread. `last` is the round the server started with: only differences from it
/// are reported.
pub fn spawn(
    rx: Receiver<Request>,
    list: Vec<Discover>,
    interval: Duration,
    last: Found,
    server: Sender<ToServer>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("modelgate-discovery".into())
        .spawn(move || run(rx, list, interval, last, server))?;
    Ok(())
}

fn run(
    rx: Receiver<Request>,
    mut list: Vec<Discover>,
    mut interval: Duration,
    mut last: Found,
    server: Sender<ToServer>,
) {
    let mut next = Instant::now() + interval;
    loop {
        let asked = match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Request::Backends {
                list: l,
                interval: i,
            }) => {
                list = l;
                interval = i;
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if list.is_empty() && !asked {
            next = Instant::now() + interval;
            continue;
        }
        let found = probe_all(&list);
        next = Instant::now() + interval;
        // After a reload the server hears back even when nothing changed, so it can report
        // the probes of a new list.
        let report = asked || found.serving() != last.serving();
        if report && server.send(ToServer::Discovered(found.clone())).is_err() {
            return;
        }
        last = found;
    }
}

/// One `GET /v1/models` on a fresh connection: the model ids, or why there are none.
pub fn probe(backend: &Discover) -> Result<Vec<String>, String> {
    let request = discovery::probe_request(backend);
    let answer = fetch(
        &backend.upstream,
        &request,
        discovery::answer_complete,
        discovery::MAX_ANSWER_BYTES,
    )?;
    discovery::parse_answer(&answer)
}

/// Sends `request` on a fresh connection to `up` (`http://` or `unix://`) and reads the
/// answer until `complete` says it is whole, EOF, `max_bytes` or [`ANSWER_TIMEOUT`]. Used by
/// discovery and by `modelgate wait-ready`.
pub fn fetch(
    up: &Upstream,
    request: &[u8],
    complete: fn(&[u8]) -> bool,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    match (up.scheme, &up.unix_path) {
        (Scheme::Unix, Some(path)) => {
            let stream = UnixStream::connect(path).map_err(|e| reason(&e))?;
            stream
                .set_write_timeout(Some(ANSWER_TIMEOUT))
                .map_err(|e| reason(&e))?;
            exchange(stream, request, complete, max_bytes, |s, t| {
                s.set_read_timeout(t)
            })
        }
        (Scheme::Http, _) => {
            let stream = connect_tcp(up)?;
            let _ = stream.set_nodelay(true);
            stream
                .set_write_timeout(Some(ANSWER_TIMEOUT))
                .map_err(|e| reason(&e))?;
            exchange(stream, request, complete, max_bytes, |s, t| {
                s.set_read_timeout(t)
            })
        }
        _ => Err("only http:// and unix:// backends can be probed".into()),
    }
}

/// Connects to the first address of `up` that accepts within [`CONNECT_TIMEOUT`].
fn connect_tcp(up: &Upstream) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match up.host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, up.port)],
        Err(_) => resolver::lookup(&format!("{}:{}", up.host, up.port))
            .ok_or_else(|| format!("{} does not resolve", up.host))?,
    };
    let mut why = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => why = reason(&e),
        }
    }
    Err(why)
}

/// Writes the request and reads until the answer is complete, EOF, the size cap or
/// [`ANSWER_TIMEOUT`].
fn exchange<S: Read + Write>(
    mut stream: S,
    request: &[u8],
    complete: fn(&[u8]) -> bool,
    max_bytes: usize,
    set_read_timeout: impl Fn(&S, Option<Duration>) -> std::io::Result<()>,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    stream.write_all(request).map_err(|e| reason(&e))?;
    let mut answer = Vec::new();
    let mut block = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        set_read_timeout(&stream, Some(left)).map_err(|e| reason(&e))?;
        let n = stream.read(&mut block).map_err(|e| {
            if Instant::now() >= deadline {
                "timed out".to_string()
            } else {
                reason(&e)
            }
        })?;
        let Some(read) = block.get(..n) else {
            return Err("read error".into());
        };
        if read.is_empty() {
            return Ok(answer);
        }
        answer.extend_from_slice(read);
        if answer.len() > max_bytes {
            return Err("the answer is too large".into());
        }
        if complete(&answer) {
            return Ok(answer);
        }
    }
}

/// An I/O error for the log, without the errno suffix: `Connection refused`.
fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.split_once(" (os error") {
        Some((what, _)) => what.to_owned(),
        None => text,
    }
}
