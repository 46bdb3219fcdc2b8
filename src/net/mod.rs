//! Transport: sockets as the event loop sees them. This is the only module that looks at
//! `io::ErrorKind`; above it, I/O outcomes are the [`Io`] enum (DESIGN.md rule 2).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;

use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

pub mod fds;
pub mod systemd;
pub mod tls;

pub use tls::TlsStream;

/// The outcome of one non-blocking read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// `n > 0` bytes moved.
    Done(usize),
    /// Nothing to do until the next readiness edge.
    WouldBlock,
    /// The peer closed its write side (read) or the write side is gone (write).
    Eof,
    /// Reset, refused, or another failure: the socket is finished.
    Failed(FailKind),
}

/// Why a socket failed, as far as callers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    Reset,
    Refused,
    /// A TLS handshake or record error (certificate, protocol); logged where it happened.
    Tls,
    /// No descriptor for a new socket (`EMFILE`/`ENFILE`, the errno inside): the process's
    /// shortage, not the peer's failure.
    NoDescriptors(i32),
    Other,
}

/// A failed socket creation or connect, as callers care: a descriptor shortage named apart.
fn connect_error(e: &io::Error) -> FailKind {
    match e.raw_os_error() {
        Some(code @ (libc::EMFILE | libc::ENFILE)) => FailKind::NoDescriptors(code),
        _ => match classify(e) {
            Io::Failed(kind) => kind,
            _ => FailKind::Other,
        },
    }
}

fn classify(err: &io::Error) -> Io {
    match err.kind() {
        io::ErrorKind::WouldBlock => Io::WouldBlock,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Io::Failed(FailKind::Reset),
        io::ErrorKind::ConnectionRefused => Io::Failed(FailKind::Refused),
        _ => Io::Failed(FailKind::Other),
    }
}

/// Where a client came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

/// A connected socket: client or upstream, TCP or unix.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Reads once, retrying `Interrupted`.
    pub fn read(&mut self, buf: &mut [u8]) -> Io {
        if buf.is_empty() {
            return Io::Done(0);
        }
        loop {
            let result = match self {
                Stream::Tcp(s) => s.read(buf),
                Stream::Unix(s) => s.read(buf),
                Stream::Tls(s) => return s.read(buf),
            };
            return match result {
                Ok(0) => Io::Eof,
                Ok(n) => Io::Done(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => classify(&e),
            };
        }
    }

    /// Reads once into several buffers in order (`readv`): a big body fills a few blocks per
    /// syscall. TLS plaintext goes into the first non-empty buffer only.
    pub fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Io {
        if bufs.iter().all(|b| b.is_empty()) {
            return Io::Done(0);
        }
        loop {
            let result = match self {
                Stream::Tcp(s) => s.read_vectored(bufs),
                Stream::Unix(s) => s.read_vectored(bufs),
                Stream::Tls(s) => {
                    return match bufs.iter_mut().find(|b| !b.is_empty()) {
                        Some(first) => s.read(first),
                        None => Io::Done(0),
                    }
                }
            };
            return match result {
                Ok(0) => Io::Eof,
                Ok(n) => Io::Done(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => classify(&e),
            };
        }
    }

    /// Writes once from several slices. `Ok(0)` is a failure, never "try again" (PITFALLS 6).
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Io {
        loop {
            let result = match self {
                Stream::Tcp(s) => s.write_vectored(bufs),
                Stream::Unix(s) => s.write_vectored(bufs),
                Stream::Tls(s) => return s.write_vectored(bufs),
            };
            return match result {
                Ok(0) => Io::Failed(FailKind::Other),
                Ok(n) => Io::Done(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => classify(&e),
            };
        }
    }

    /// After a writable edge on a connecting socket: Ok(true) connected, Ok(false) still
    /// connecting, Err(kind) failed (PITFALLS 2: take_error, then peer_addr).
    pub fn connect_result(&self) -> Result<bool, FailKind> {
        let (err, peer) = match self {
            Stream::Tcp(s) => (s.take_error(), s.peer_addr().map(|_| ())),
            Stream::Unix(s) => (s.take_error(), s.peer_addr().map(|_| ())),
            Stream::Tls(s) => (s.tcp.take_error(), s.tcp.peer_addr().map(|_| ())),
        };
        match err {
            Ok(Some(e)) | Err(e) => {
                return Err(match classify(&e) {
                    Io::Failed(kind) => kind,
                    _ => FailKind::Other,
                })
            }
            Ok(None) => {}
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(match classify(&e) {
                Io::Failed(kind) => kind,
                _ => FailKind::Other,
            }),
        }
    }

    /// Looks at the next byte without taking it: `Done(_)` means data waits (a pipelined
    /// request), `Eof` that the peer closed. Used to notice a client leaving mid-response
    /// without buffering what it may have pipelined.
    pub fn peek(&self) -> Io {
        let mut byte = [0u8; 1];
        loop {
            // SAFETY: recv into a 1-byte stack buffer we own, on a valid descriptor.
            let n = unsafe {
                libc::recv(
                    self.raw_fd(),
                    byte.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                return Io::Done(n as usize);
            }
            if n == 0 {
                return Io::Eof;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return classify(&err);
        }
    }

    /// Sends FIN after the last byte, so a client sees the response before the close.
    pub fn shutdown_write(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Tls(s) => {
                s.close();
                Ok(())
            }
        };
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// TLS ciphertext is waiting for a writable socket.
    pub fn wants_write(&self) -> bool {
        matches!(self, Stream::Tls(s) if s.wants_write())
    }

    /// Writes pending TLS ciphertext (`Done(0)` when none is left).
    pub fn flush(&mut self) -> Io {
        match self {
            Stream::Tls(s) => s.flush(),
            _ => Io::Done(0),
        }
    }

    /// A TLS handshake is still under way (it counts toward the connect timeout).
    pub fn is_handshaking(&self) -> bool {
        matches!(self, Stream::Tls(s) if s.is_handshaking())
    }

    /// Streams must not wait for Nagle: every SSE event goes out at once (PITFALLS 17).
    pub fn set_nodelay(&self) {
        match self {
            Stream::Tcp(s) => {
                let _ = s.set_nodelay(true);
            }
            Stream::Tls(s) => {
                let _ = s.tcp.set_nodelay(true);
            }
            Stream::Unix(_) => {}
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self {
            Stream::Tcp(s) => s.register(registry, token, interest),
            Stream::Unix(s) => s.register(registry, token, interest),
            Stream::Tls(s) => s.tcp.register(registry, token, interest),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
            Stream::Tls(s) => s.tcp.deregister(registry),
        };
    }

    /// Bytes written to this socket that the peer has not taken yet (the kernel's send queue,
    /// `SIOCOUTQ`: unacknowledged TCP bytes, or unread ones on a unix socket). None when the
    /// kernel will not say. A TLS stream's ciphertext not yet written is not included.
    pub fn unsent(&self) -> Option<usize> {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer; the fd is ours.
        let rc = unsafe { libc::ioctl(self.raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc == 0 {
            usize::try_from(queued).ok()
        } else {
            None
        }
    }

    pub fn raw_fd(&self) -> i32 {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.tcp.as_raw_fd(),
        }
    }

    /// Wraps a connected (or connecting) TCP stream in a TLS client session.
    pub fn into_tls_client(
        self,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Stream, FailKind> {
        match self {
            Stream::Tcp(tcp) => Ok(Stream::Tls(Box::new(TlsStream::client(tcp, config, name)?))),
            _ => Err(FailKind::Other),
        }
    }

    /// Wraps an accepted TCP stream in a TLS server session.
    pub fn into_tls_server(
        self,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> Result<Stream, FailKind> {
        match self {
            Stream::Tcp(tcp) => Ok(Stream::Tls(Box::new(TlsStream::server(tcp, config)?))),
            _ => Err(FailKind::Other),
        }
    }
}

/// Starts a non-blocking TCP connect; completion shows up as a writable edge.
pub fn connect_tcp(addr: SocketAddr) -> Result<Stream, FailKind> {
    TcpStream::connect(addr)
        .map(Stream::Tcp)
        .map_err(|e| connect_error(&e))
}

/// Connects to a unix socket (completes at once or fails; EAGAIN means the backlog is full).
pub fn connect_unix(path: &Path) -> Result<Stream, FailKind> {
    UnixStream::connect(path)
        .map(Stream::Unix)
        .map_err(|e| connect_error(&e))
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// One `accept` outcome.
pub enum Accepted {
    Conn(Stream, Peer),
    WouldBlock,
    /// Out of file descriptors (the errno inside): back off instead of spinning (PITFALLS 3).
    Exhausted(i32),
    /// The connection died before we took it; try the next one.
    Skip,
}

impl Listener {
    pub fn accept(&self) -> Accepted {
        loop {
            let result = match self {
                Listener::Tcp(l) => l
                    .accept()
                    .map(|(s, addr)| (Stream::Tcp(s), Peer::Tcp(addr))),
                Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), Peer::Unix)),
            };
            return match result {
                Ok((stream, peer)) => Accepted::Conn(stream, peer),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => Accepted::WouldBlock,
                    io::ErrorKind::Interrupted => continue,
                    _ => match e.raw_os_error() {
                        Some(
                            code @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM),
                        ) => Accepted::Exhausted(code),
                        _ => Accepted::Skip,
                    },
                },
            };
        }
    }

    /// A second handle on the same socket, for another worker's `Poll`.
    pub fn try_clone(&self) -> io::Result<Listener> {
        match self {
            Listener::Tcp(l) => {
                let std = dup_fd(l.as_raw_fd())?;
                // SAFETY: `dup_fd` returned a fresh descriptor that nothing else owns.
                let std =
                    unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(std) };
                Ok(Listener::Tcp(TcpListener::from_std(std)))
            }
            Listener::Unix(l) => {
                let std = dup_fd(l.as_raw_fd())?;
                // SAFETY: as above.
                let std = unsafe {
                    <std::os::unix::net::UnixListener as std::os::fd::FromRawFd>::from_raw_fd(std)
                };
                Ok(Listener::Unix(UnixListener::from_std(std)))
            }
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(registry, token, Interest::READABLE),
            Listener::Unix(l) => l.register(registry, token, Interest::READABLE),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Listener::Tcp(l) => l.deregister(registry),
            Listener::Unix(l) => l.deregister(registry),
        };
    }

    /// A printable address (with the real port when bound to port 0).
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp:?".into()),
            Listener::Unix(l) => match l.local_addr() {
                Ok(addr) => match addr.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:?".into(),
                },
                Err(_) => "unix:?".into(),
            },
        }
    }
}

fn dup_fd(fd: i32) -> io::Result<i32> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid open descriptor has no memory effects.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(new)
    }
}

/// Binds a TCP listener with SO_REUSEADDR (mio sets it) and a deep backlog.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<Listener> {
    let listener = std::net::TcpListener::bind(addr)?;
    // A deeper backlog than std's 128 absorbs connection bursts.
    // SAFETY: listen(2) on a bound socket we own.
    unsafe {
        libc::listen(listener.as_raw_fd(), 4096);
    }
    listener.set_nonblocking(true)?;
    Ok(Listener::Tcp(TcpListener::from_std(listener)))
}

/// Binds a unix listener, replacing a stale socket file.
pub fn bind_unix(path: &Path) -> io::Result<Listener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(Listener::Unix(UnixListener::from_std(listener)))
}

/// Raises RLIMIT_NOFILE to its hard limit: every client and upstream is a descriptor.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
