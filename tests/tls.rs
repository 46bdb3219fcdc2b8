//! HTTPS upstreams, TLS termination on a listener, and the resolver thread (issue 4).
//!
//! Everything runs over real sockets against the real binary. Certificates are generated
//! per test with rcgen (no committed key material). Two helpers carry the TLS side:
//!
//! - `TlsFront`: a TLS-terminating relay in front of a plain scripted upstream. It records
//!   every ClientHello (SNI, offered ALPN), the negotiated ALPN, TCP connections, completed
//!   handshakes and handshake errors, and, when the backend closes, either sends
//!   close_notify before its FIN or just FINs (`CloseNotify::No`), so the tests can script
//!   clean and unclean TLS endings with ordinary `ScriptedUpstream` handlers.
//! - `tls_client`: a TLS client to modelgate's TLS listener, bridged to a unix socket pair so
//!   the harness `Client` (keep-alive, chunk-by-chunk reads, EOF detection) works unchanged.
//!
//! Both pump bytes with poll(2) over non-blocking sockets, draining rustls' plaintext before
//! reading more ciphertext.

mod common;

use common::*;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};
use serde_json::json;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// Test PKI

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
struct Leaf {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: Issuer::new(p, key),
        }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `names` (DNS names or IP literals).
    fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    fn leaf_with(&self, names: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        tweak(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Leaf {
    fn certified_key(&self) -> Arc<CertifiedKey> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let signing = provider().key_provider.load_private_key(key).unwrap();
        Arc::new(CertifiedKey::new(vec![self.cert_der.clone()], signing))
    }
}

// ---------------------------------------------------------------------------------------------
// Non-blocking rustls pumping over poll(2)

fn poll_fds(fds: &mut [libc::pollfd], timeout: Duration) {
    for f in fds.iter_mut() {
        if f.events == 0 {
            f.fd = -1;
        }
    }
    let t = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll(2) on a valid, properly sized array of pollfd.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, t);
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits until `fd` is ready for `events` or `deadline` passes; false on timeout.
fn wait_fd(fd: RawFd, events: libc::c_short, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    let mut f = [pollfd(fd, events)];
    poll_fds(&mut f, left);
    f[0].revents != 0
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Drives a handshake on a non-blocking socket to completion (and flushes what it leaves).
fn handshake(conn: &mut Connection, tcp: &mut TcpStream, deadline: Instant) -> Result<(), String> {
    loop {
        while conn.wants_write() {
            match conn.write_tls(tcp) {
                Ok(_) => {}
                Err(e) if would_block(&e) => {
                    if !wait_fd(tcp.as_raw_fd(), libc::POLLOUT, deadline) {
                        return Err("handshake timed out (writing)".into());
                    }
                }
                Err(e) => return Err(format!("handshake write: {e}")),
            }
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        match conn.read_tls(tcp) {
            Ok(0) => return Err("peer closed during the handshake".into()),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // Last gasp: send the alert.
                    let _ = conn.write_tls(tcp);
                    return Err(e.to_string());
                }
            }
            Err(e) if would_block(&e) => {
                if !wait_fd(tcp.as_raw_fd(), libc::POLLIN, deadline) {
                    return Err("handshake timed out".into());
                }
            }
            Err(e) => return Err(format!("handshake read: {e}")),
        }
    }
}

/// How the TLS side of a pump ended.
#[derive(Debug, Clone, PartialEq)]
enum TlsEnd {
    /// close_notify received.
    CloseNotify,
    /// TCP FIN without close_notify.
    Unclean,
    Error(String),
}

/// The plaintext side of a pump.
trait Plain: Read + Write + AsRawFd {
    fn shut_write(&self);
}
impl Plain for TcpStream {
    fn shut_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}
impl Plain for UnixStream {
    fn shut_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Relays plaintext between `plain` and the (handshaken) TLS session `conn` on `tls` until
/// both directions ended. When `plain` ends, the TLS side gets close_notify (if
/// `close_notify`) and then a FIN. When the TLS side ends, `plain` gets a FIN.
fn pump(
    conn: &mut Connection,
    tls: &mut TcpStream,
    plain: &mut impl Plain,
    close_notify: bool,
    ended: &Mutex<Option<TlsEnd>>,
) -> TlsEnd {
    let mut buf = vec![0u8; 16384];
    let mut to_plain: Vec<u8> = Vec::new();
    let mut tls_in: Option<TlsEnd> = None;
    let mut tcp_eof = false;
    let mut plain_eof = false;
    let mut plain_shut = false;
    let mut tls_shut = false;
    loop {
        let mut progress = false;
        // Decrypted bytes first: they may be there without a new readiness event.
        while tls_in.is_none() && to_plain.len() < 65536 {
            match conn.reader().read(&mut buf) {
                Ok(0) => tls_in = Some(TlsEnd::CloseNotify),
                Ok(n) => {
                    to_plain.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    tls_in = Some(TlsEnd::Unclean)
                }
                Err(e) => tls_in = Some(TlsEnd::Error(e.to_string())),
            }
        }
        if let Some(end) = &tls_in {
            ended.lock().unwrap().get_or_insert_with(|| end.clone());
            if let TlsEnd::Error(e) = end {
                return TlsEnd::Error(e.clone());
            }
        }
        while !to_plain.is_empty() {
            match plain.write(&to_plain) {
                Ok(0) => return TlsEnd::Error("plain side write returned 0".into()),
                Ok(n) => {
                    to_plain.drain(..n);
                    progress = true;
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return TlsEnd::Error(format!("plain side write: {e}")),
            }
        }
        if to_plain.is_empty() && tls_in.is_some() && !plain_shut {
            plain.shut_write();
            plain_shut = true;
            progress = true;
        }
        if !plain_eof && !conn.wants_write() {
            match plain.read(&mut buf) {
                Ok(0) => {
                    plain_eof = true;
                    progress = true;
                    if close_notify {
                        conn.send_close_notify();
                    }
                }
                Ok(n) => {
                    if let Err(e) = conn.writer().write_all(&buf[..n]) {
                        return TlsEnd::Error(format!("rustls writer: {e}"));
                    }
                    progress = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    plain_eof = true;
                    progress = true;
                }
            }
        }
        while conn.wants_write() {
            match conn.write_tls(tls) {
                Ok(_) => progress = true,
                Err(e) if would_block(&e) => break,
                Err(e) => return TlsEnd::Error(format!("TLS socket write: {e}")),
            }
        }
        if plain_eof && !conn.wants_write() && !tls_shut {
            let _ = tls.shutdown(Shutdown::Write);
            tls_shut = true;
            progress = true;
        }
        if !tcp_eof && tls_in.is_none() && to_plain.is_empty() {
            match conn.read_tls(tls) {
                Ok(0) => {
                    tcp_eof = true;
                    progress = true;
                }
                Ok(_) => {
                    progress = true;
                    if let Err(e) = conn.process_new_packets() {
                        let _ = conn.write_tls(tls);
                        return TlsEnd::Error(e.to_string());
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => {
                    let end = TlsEnd::Error(format!("TLS socket read: {e}"));
                    ended.lock().unwrap().get_or_insert_with(|| end.clone());
                    return end;
                }
            }
        }
        if let Some(end) = &tls_in {
            if plain_shut && plain_eof && tls_shut {
                return end.clone();
            }
        }
        if !progress {
            let mut tls_ev = 0;
            if !tcp_eof && tls_in.is_none() && to_plain.is_empty() {
                tls_ev |= libc::POLLIN;
            }
            if conn.wants_write() {
                tls_ev |= libc::POLLOUT;
            }
            let mut plain_ev = 0;
            if !plain_eof && !conn.wants_write() {
                plain_ev |= libc::POLLIN;
            }
            if !to_plain.is_empty() {
                plain_ev |= libc::POLLOUT;
            }
            let mut fds = [
                pollfd(tls.as_raw_fd(), tls_ev),
                pollfd(plain.as_raw_fd(), plain_ev),
            ];
            poll_fds(&mut fds, ms(50));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS mock upstream: a TLS-terminating relay in front of a plain scripted upstream

/// One ClientHello as the upstream saw it.
#[derive(Debug, Clone)]
struct Hello {
    sni: Option<String>,
    alpn: Vec<String>,
}

#[derive(Debug, Default)]
struct FrontStats {
    tcp: AtomicUsize,
    handshakes: AtomicUsize,
    hellos: Mutex<Vec<Hello>>,
    negotiated_alpn: Mutex<Vec<Option<String>>>,
    sni_after_handshake: Mutex<Vec<Option<String>>>,
    errors: Mutex<Vec<String>>,
    ends: Mutex<Vec<TlsEnd>>,
}

/// Serves one certificate and records every ClientHello.
#[derive(Debug)]
struct RecordingResolver {
    key: Arc<CertifiedKey>,
    stats: Arc<FrontStats>,
}

impl ResolvesServerCert for RecordingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let h = Hello {
            sni: hello.server_name().map(str::to_string),
            alpn: hello
                .alpn()
                .map(|it| {
                    it.map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect()
                })
                .unwrap_or_default(),
        };
        self.stats.hellos.lock().unwrap().push(h);
        Some(self.key.clone())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum CloseNotify {
    Yes,
    No,
}

struct TlsFront {
    addr: SocketAddr,
    stats: Arc<FrontStats>,
    stop: Arc<AtomicBool>,
}

impl TlsFront {
    /// Terminates TLS with `leaf` on 127.0.0.1:0 and relays each connection to a fresh TCP
    /// connection to `backend`. Offers ALPN `h2` before `http/1.1`, so a client that offered
    /// h2 would get it.
    fn start(leaf: &Leaf, backend: SocketAddr, close_notify: CloseNotify) -> TlsFront {
        let stats = Arc::new(FrontStats::default());
        let resolver = RecordingResolver {
            key: leaf.certified_key(),
            stats: stats.clone(),
        };
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (stats, stop) = (stats.clone(), stop.clone());
            thread::spawn(move || {
                for s in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(s) = s else { continue };
                    stats.tcp.fetch_add(1, Ordering::SeqCst);
                    let (cfg, stats) = (cfg.clone(), stats.clone());
                    thread::spawn(move || {
                        front_conn(s, cfg, backend, close_notify == CloseNotify::Yes, &stats)
                    });
                }
            });
        }
        TlsFront { addr, stats, stop }
    }

    /// `https://localhost:PORT`.
    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
    fn tcp_connections(&self) -> usize {
        self.stats.tcp.load(Ordering::SeqCst)
    }
    fn handshakes(&self) -> usize {
        self.stats.handshakes.load(Ordering::SeqCst)
    }
    fn hellos(&self) -> Vec<Hello> {
        self.stats.hellos.lock().unwrap().clone()
    }
    fn errors(&self) -> Vec<String> {
        self.stats.errors.lock().unwrap().clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, ms(200));
    }
}

fn front_conn(
    mut s: TcpStream,
    cfg: Arc<ServerConfig>,
    backend: SocketAddr,
    close_notify: bool,
    stats: &FrontStats,
) {
    let _ = s.set_nodelay(true);
    s.set_nonblocking(true).unwrap();
    let mut conn = Connection::Server(ServerConnection::new(cfg).unwrap());
    if let Err(e) = handshake(&mut conn, &mut s, Instant::now() + Duration::from_secs(5)) {
        stats.errors.lock().unwrap().push(e);
        return;
    }
    stats.handshakes.fetch_add(1, Ordering::SeqCst);
    stats.negotiated_alpn.lock().unwrap().push(
        conn.alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    );
    if let Connection::Server(sc) = &conn {
        stats
            .sni_after_handshake
            .lock()
            .unwrap()
            .push(sc.server_name().map(str::to_string));
    }
    let Ok(mut b) = TcpStream::connect(backend) else {
        return;
    };
    let _ = b.set_nodelay(true);
    b.set_nonblocking(true).unwrap();
    let ended = Mutex::new(None);
    pump(&mut conn, &mut s, &mut b, close_notify, &ended);
    if let Some(end) = ended.into_inner().unwrap() {
        stats.ends.lock().unwrap().push(end);
    }
}

// ---------------------------------------------------------------------------------------------
// TLS client to modelgate's TLS listener, bridged to the harness `Client`

fn client_config(ca: &Ca) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Connects to `addr`, completes a TLS handshake for `localhost` trusting `ca`, and returns
/// a harness `Client` speaking plaintext through a relay thread, plus the negotiated ALPN.
/// How modelgate ended the TLS session of a `try_tls_client` (None while it is open).
type Ended = Arc<Mutex<Option<TlsEnd>>>;

fn try_tls_client(addr: SocketAddr, ca: &Ca) -> Result<(Client, Option<String>, Ended), String> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = Connection::Client(ClientConnection::new(client_config(ca), name).unwrap());
    handshake(&mut conn, &mut tcp, Instant::now() + Duration::from_secs(5))?;
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let (mine, theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let ended: Ended = Arc::default();
    let ended2 = ended.clone();
    thread::spawn(move || {
        let mut theirs = theirs;
        pump(&mut conn, &mut tcp, &mut theirs, true, &ended2)
    });
    Ok((
        Client::from_stream(common::server::Stream::Unix(mine)),
        alpn,
        ended,
    ))
}

fn tls_client(addr: SocketAddr, ca: &Ca) -> Client {
    try_tls_client(addr, ca)
        .unwrap_or_else(|e| panic!("TLS handshake with modelgate at {addr}: {e}"))
        .0
}

// ---------------------------------------------------------------------------------------------
// Backends, configs, requests

fn chat_request(model: &str, stream: bool) -> Vec<u8> {
    request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json"],
        chat_body(model, stream).as_bytes(),
    )
}

fn chat_request_close(model: &str) -> Vec<u8> {
    request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json", "Connection: close"],
        chat_body(model, false).as_bytes(),
    )
}

/// The JSON body the backend answers request number `n` (1-based) with.
fn answer(n: usize) -> String {
    format!(
        r#"{{"id":"chatcmpl-{n}","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"hello {n}"}},"finish_reason":"stop"}}]}}"#
    )
}

/// A keep-alive backend answering every request with `answer(n)`.
fn json_backend() -> ScriptedUpstream {
    let n = Arc::new(AtomicUsize::new(0));
    ScriptedUpstream::start(move |conn| {
        while conn.read_request().is_some() {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            if conn.respond_json(200, &answer(i)).is_err() {
                return;
            }
        }
    })
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";

/// One SSE event as one chunk (upper-case hex size: forwarded as is, not re-chunked).
fn sse_chunk(i: usize) -> Vec<u8> {
    let event =
        format!("data: {{\"i\":{i},\"choices\":[{{\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n");
    let mut c = format!("{:X}\r\n", event.len()).into_bytes();
    c.extend_from_slice(event.as_bytes());
    c.extend_from_slice(b"\r\n");
    c
}

/// A backend streaming `events` SSE chunks `gap` apart (then `[DONE]` and the terminator).
fn sse_backend(events: usize, gap: Duration) -> ScriptedUpstream {
    ScriptedUpstream::start(move |conn| {
        while conn.read_request().is_some() {
            if conn.write_all(SSE_HEAD).is_err() {
                return;
            }
            for i in 0..events {
                if i > 0 {
                    thread::sleep(gap);
                }
                if conn.write_all(&sse_chunk(i)).is_err() {
                    return;
                }
            }
            let done = b"data: [DONE]\n\n";
            let mut last = format!("{:X}\r\n", done.len()).into_bytes();
            last.extend_from_slice(done);
            last.extend_from_slice(b"\r\n0\r\n\r\n");
            if conn.write_all(&last).is_err() {
                return;
            }
        }
    })
}

/// The SSE body `sse_backend(events, _)` sends, de-chunked.
fn sse_body(events: usize) -> Vec<u8> {
    let mut want = Vec::new();
    for i in 0..events {
        want.extend_from_slice(
            format!(
                "data: {{\"i\":{i},\"choices\":[{{\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    want.extend_from_slice(b"data: [DONE]\n\n");
    want
}

/// A temp dir holding `ca.pem` (the CA modelgate should trust).
fn dir_with_ca(ca: &Ca) -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let p = dir.write("ca.pem", ca.pem());
    (dir, p)
}

/// `{"url": url, "caFile": ca}`.
fn https_model(url: &str, ca: &std::path::Path) -> serde_json::Value {
    json!({ "url": url, "caFile": ca })
}

fn start_cfg(dir: TempDir, cfg: serde_json::Value) -> Modelgate {
    Modelgate::start_in(dir, &serde_json::to_string_pretty(&cfg).unwrap(), |_| {})
}

/// modelgate with one model `m` behind `front`, trusting `ca`, plus extra top-level keys.
fn start_https(front: &TlsFront, ca_for_modelgate: &Ca, extra: serde_json::Value) -> Modelgate {
    let (dir, ca_path) = dir_with_ca(ca_for_modelgate);
    let mut cfg = json!({
        "listen": "127.0.0.1:0",
        "models": { "m": https_model(&front.url(), &ca_path) },
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    start_cfg(dir, cfg)
}

/// Pseudo-random bytes (xorshift), so a misplaced block can't go unnoticed.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Sets SO_LINGER 0 so that dropping `s` sends a RST.
fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid fd with a properly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A TCP listener that accepts, reads a few bytes of the ClientHello, and then resets
/// (`rst`) or closes the connection. Counts accepted connections.
fn handshake_killer(rst: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            n2.fetch_add(1, Ordering::SeqCst);
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
            if rst {
                set_linger_zero(&s);
            }
            drop(s);
        }
    });
    (addr, n)
}

fn stderr_dump(mg: &Modelgate) -> String {
    mg.stderr_lines().join("\n")
}

/// Sends one request to modelgate on a fresh connection and times the final response.
fn timed_chat(mg: &Modelgate, model: &str) -> (Response, Duration) {
    let t = Instant::now();
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request_close(model));
    let r = c.read_final_response().1;
    (r, t.elapsed())
}

// =============================================================================================
// HTTPS upstreams

#[test]
fn https_upstream_with_ca_file_answers_chat_request_with_the_body() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", false));
    let r = c.read_response();
    assert_eq!(r.status, 200, "stderr:\n{}", stderr_dump(&mg));
    assert_eq!(r.text(), answer(1));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(front.handshakes(), 1, "errors: {:?}", front.errors());
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path(), "/v1/chat/completions");
    assert_eq!(reqs[0].json(), json(&chat_body("m", false)));
}

#[test]
fn https_upstream_sees_sni_alpn_and_host_of_the_url() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, &ca, json!({}));
    let r = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
    assert_eq!(r.status, 200, "stderr:\n{}", stderr_dump(&mg));
    let hellos = front.hellos();
    assert_eq!(hellos.len(), 1, "{hellos:?}");
    assert_eq!(
        hellos[0].sni.as_deref(),
        Some("localhost"),
        "SNI = URL host"
    );
    assert_eq!(
        hellos[0].alpn,
        vec!["http/1.1".to_string()],
        "modelgate must offer exactly ALPN http/1.1"
    );
    assert_eq!(
        *front.stats.negotiated_alpn.lock().unwrap(),
        vec![Some("http/1.1".to_string())]
    );
    assert_eq!(
        *front.stats.sni_after_handshake.lock().unwrap(),
        vec![Some("localhost".to_string())]
    );
    let reqs = backend.requests();
    assert_eq!(
        reqs[0].header_all("host"),
        vec![format!("localhost:{}", front.addr.port()).as_str()],
        "Host = the URL's authority"
    );
    assert_eq!(reqs[0].header("x-forwarded-proto"), Some("http"));
}

#[test]
fn https_upstream_sse_events_arrive_spaced_as_sent_and_intact() {
    const EVENTS: usize = 6;
    let ca = Ca::new("test CA");
    let backend = sse_backend(EVENTS, ms(150));
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", true));
    let mut resp = c.try_read_head().expect("response head");
    assert_eq!(resp.status, 200, "stderr:\n{}", stderr_dump(&mg));
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let head_len = resp.raw.len();
    let mut arrivals = Vec::new();
    let mut body = Vec::new();
    while let Some(data) = c.try_next_chunk(&mut resp).expect("chunk") {
        arrivals.push(Instant::now());
        body.extend_from_slice(&data);
    }
    assert_eq!(
        arrivals.len(),
        EVENTS + 1,
        "one chunk per event, then [DONE]"
    );
    assert_paced(&arrivals[..EVENTS], 150);
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&sse_body(EVENTS))
    );
    let mut want = Vec::new();
    for i in 0..EVENTS {
        want.extend_from_slice(&sse_chunk(i));
    }
    assert!(
        resp.raw[head_len..].starts_with(&want),
        "chunk framing must be forwarded byte for byte"
    );
    assert!(resp.raw.ends_with(b"0\r\n\r\n"));
}

#[test]
fn https_upstream_keep_alive_reuses_one_tls_connection_for_20_requests() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    for i in 1..=20 {
        c.send(&chat_request("m", false));
        let r = c.read_response();
        assert_eq!(r.status, 200, "request {i}; stderr:\n{}", stderr_dump(&mg));
        assert_eq!(r.text(), answer(i));
    }
    assert_eq!(
        front.tcp_connections(),
        1,
        "TCP connections at the upstream"
    );
    assert_eq!(front.handshakes(), 1, "TLS handshakes at the upstream");
    assert_eq!(backend.connections(), 1);
}

#[test]
fn https_upstream_pool_is_shared_across_client_connections() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, &ca, json!({"workers": 1}));
    for i in 1..=5 {
        let (r, _) = timed_chat(&mg, "m");
        assert_eq!(r.status, 200, "request {i}; stderr:\n{}", stderr_dump(&mg));
        assert_eq!(r.text(), answer(i));
    }
    assert_eq!(
        front.handshakes(),
        1,
        "sequential clients on one worker reuse the pooled TLS connection"
    );
}

/// Asserts a 502 `upstream_unavailable` well within `connect_s`, and a stderr line that
/// contains `needle` (case-insensitive) and mentions the certificate.
fn assert_cert_rejected(leaf: Leaf, trusted: &Ca, needle: &str) {
    let backend = json_backend();
    let front = TlsFront::start(&leaf, backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, trusted, json!({"timeouts": {"connect": 3}}));
    let (r, took) = timed_chat(&mg, "m");
    assert_eq!(r.status, 502, "body {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code().as_deref(), Some("upstream_unavailable"));
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} (connect timeout 3 s)"
    );
    let line = mg.wait_stderr_from(0, Duration::from_secs(2), |l| {
        let l = l.to_ascii_lowercase();
        l.contains("certificate") && l.contains(needle)
    });
    assert!(
        line.is_some(),
        "no stderr line says why ({needle}); stderr:\n{}",
        stderr_dump(&mg)
    );
    assert_eq!(backend.request_count(), 0, "nothing may reach the backend");
    let (r2, _) = timed_chat(&mg, "m");
    assert_eq!(r2.status, 502, "a second try is rejected the same way");
}

#[test]
fn https_upstream_signed_by_another_ca_is_502_with_unknown_issuer_logged() {
    let real = Ca::new("real CA");
    let other = Ca::new("other CA");
    assert_cert_rejected(real.leaf(&["localhost"]), &other, "unknownissuer");
}

#[test]
fn https_upstream_certificate_for_another_name_is_502_with_name_mismatch_logged() {
    let ca = Ca::new("test CA");
    assert_cert_rejected(ca.leaf(&["other.example"]), &ca, "not valid for name");
}

#[test]
fn https_upstream_expired_certificate_is_502_with_expiry_logged() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf_with(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    assert_cert_rejected(leaf, &ca, "expired");
}

#[test]
fn https_upstream_resetting_mid_handshake_is_502_quickly() {
    let (addr, accepted) = handshake_killer(true);
    let ca = Ca::new("test CA");
    let (dir, ca_path) = dir_with_ca(&ca);
    let url = format!("https://localhost:{}", addr.port());
    let mg = start_cfg(
        dir,
        json!({"listen": "127.0.0.1:0", "models": {"m": https_model(&url, &ca_path)}}),
    );
    let (r, took) = timed_chat(&mg, "m");
    assert_eq!(r.status, 502, "body {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code().as_deref(), Some("upstream_unavailable"));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}

#[test]
fn https_upstream_closing_mid_handshake_is_502_quickly() {
    let (addr, accepted) = handshake_killer(false);
    let ca = Ca::new("test CA");
    let (dir, ca_path) = dir_with_ca(&ca);
    let url = format!("https://localhost:{}", addr.port());
    let mg = start_cfg(
        dir,
        json!({"listen": "127.0.0.1:0", "models": {"m": https_model(&url, &ca_path)}}),
    );
    let (r, took) = timed_chat(&mg, "m");
    assert_eq!(r.status, 502, "body {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code().as_deref(), Some("upstream_unavailable"));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}

#[test]
fn https_upstream_handshake_that_stalls_is_cut_at_the_connect_timeout() {
    // Accepts TCP and never answers the ClientHello.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                held.lock().unwrap().push(s);
            }
        });
    }
    let ca = Ca::new("test CA");
    let (dir, ca_path) = dir_with_ca(&ca);
    let url = format!("https://localhost:{}", addr.port());
    let mg = start_cfg(
        dir,
        json!({
            "listen": "127.0.0.1:0",
            "timeouts": {"connect": 1},
            "models": {"m": https_model(&url, &ca_path)},
        }),
    );
    let (r, took) = timed_chat(&mg, "m");
    // A connect that times out: 504 upstream_timeout or 502 upstream_unavailable; what this
    // pins is that the handshake is inside the connect deadline.
    assert!(
        matches!(
            (r.status, r.error_code().as_deref()),
            (504, Some("upstream_timeout")) | (502, Some("upstream_unavailable"))
        ),
        "status {} body {:?}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        took >= ms(900) && took < ms(2500),
        "a handshake stalled from the start must be cut at the 1 s connect timeout, took {took:?}"
    );
}

/// A backend answering with a 20 MB body, Content-Length or chunked (64 KiB chunks).
fn big_backend(body: Arc<Vec<u8>>, chunked: bool) -> ScriptedUpstream {
    ScriptedUpstream::start(move |conn| {
        while conn.read_request().is_some() {
            let ok = if chunked {
                let mut ok = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                          Transfer-Encoding: chunked\r\n\r\n",
                    )
                    .is_ok();
                for part in body.chunks(65536) {
                    if !ok {
                        break;
                    }
                    let mut c = format!("{:x}\r\n", part.len()).into_bytes();
                    c.extend_from_slice(part);
                    c.extend_from_slice(b"\r\n");
                    ok = conn.write_all(&c).is_ok();
                }
                ok && conn.write_all(b"0\r\n\r\n").is_ok()
            } else {
                conn.respond(200, &["Content-Type: application/octet-stream"], &body)
                    .is_ok()
            };
            if !ok {
                return;
            }
        }
    })
}

fn big_response_intact(chunked: bool) {
    const LEN: usize = 20 * 1024 * 1024;
    let body = Arc::new(pattern(LEN));
    let want = fnv1a(&body);
    let ca = Ca::new("test CA");
    let backend = big_backend(body.clone(), chunked);
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    c.set_read_timeout(Duration::from_secs(20));
    c.send(&chat_request("m", false));
    let t = Instant::now();
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("20 MB response: {e}; stderr:\n{}", stderr_dump(&mg)));
    assert_eq!(r.status, 200);
    assert_eq!(r.chunked, chunked);
    if !chunked {
        assert_eq!(r.header("content-length"), Some(LEN.to_string().as_str()));
    }
    assert_eq!(r.body.len(), LEN, "length after {:?}", t.elapsed());
    assert!(fnv1a(&r.body) == want, "20 MB body corrupted in transit");
    // The connection is still usable afterwards.
    c.send(&chat_request("m", false));
    let r2 = c.read_response();
    assert_eq!(r2.status, 200);
    assert_eq!(r2.body.len(), LEN);
}

#[test]
fn https_upstream_20mb_content_length_response_arrives_intact() {
    big_response_intact(false);
}

#[test]
fn https_upstream_20mb_chunked_response_arrives_intact() {
    big_response_intact(true);
}

/// A backend answering every request with `response` and then closing its connection.
fn one_shot_backend(response: &'static [u8]) -> ScriptedUpstream {
    ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_some() {
            let _ = conn.write_all(response);
        }
        conn.close();
    })
}

fn framed_then_close(response: &'static [u8], close_notify: CloseNotify, want_body: &[u8]) {
    let ca = Ca::new("test CA");
    let backend = one_shot_backend(response);
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), close_notify);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    for i in 1..=2 {
        c.send(&chat_request("m", false));
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("request {i}: {e}; stderr:\n{}", stderr_dump(&mg)));
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, want_body, "request {i}");
    }
    assert!(
        !c.is_closed_within(ms(200)),
        "the client connection stays open after complete responses"
    );
    let want_end = if close_notify == CloseNotify::Yes {
        "close_notify"
    } else {
        "FIN only"
    };
    assert_eq!(
        front.handshakes(),
        2,
        "one upstream connection per request ({want_end})"
    );
}

const CL_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
const CHUNKED_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Transfer-Encoding: chunked\r\n\r\n5\r\n{\"ok\"\r\n6\r\n:true}\r\n0\r\n\r\n";

#[test]
fn https_upstream_framed_response_then_fin_without_close_notify_succeeds() {
    framed_then_close(CL_CLOSE, CloseNotify::No, b"{\"ok\":true}");
}

#[test]
fn https_upstream_chunked_response_then_fin_without_close_notify_succeeds() {
    framed_then_close(CHUNKED_CLOSE, CloseNotify::No, b"{\"ok\":true}");
}

#[test]
fn https_upstream_response_then_close_notify_succeeds() {
    framed_then_close(CL_CLOSE, CloseNotify::Yes, b"{\"ok\":true}");
}

#[test]
fn https_upstream_connection_ended_by_upstream_is_closed_with_close_notify() {
    let ca = Ca::new("test CA");
    let backend = one_shot_backend(CL_CLOSE);
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", false));
    assert_eq!(c.read_response().status, 200);
    // The upstream sent close_notify and FIN; modelgate should answer in kind (PITFALLS 7E).
    let ends = || front.stats.ends.lock().unwrap().clone();
    assert!(
        wait_until(Duration::from_secs(2), || !ends().is_empty()),
        "modelgate kept the ended upstream connection open"
    );
    assert_eq!(
        ends(),
        vec![TlsEnd::CloseNotify],
        "how modelgate closed its side"
    );
}

#[test]
fn https_upstream_half_chunked_body_then_fin_reaches_client_as_truncation() {
    let ca = Ca::new("test CA");
    let backend = one_shot_backend(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Transfer-Encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n8\r\ndata: 2\n\r\n",
    );
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::No);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", true));
    let mut resp = c.try_read_head().expect("response head");
    assert_eq!(resp.status, 200);
    assert!(resp.header_has_token("transfer-encoding", "chunked"));
    let mut got = Vec::new();
    let end = loop {
        match c.try_next_chunk(&mut resp) {
            Ok(Some(d)) => got.extend_from_slice(&d),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert_eq!(got, b"data: 1\ndata: 2\n", "the data that was sent arrives");
    let e = end.expect_err("a truncated stream must not end with 0\\r\\n\\r\\n");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    assert!(
        !String::from_utf8_lossy(&resp.raw).contains("\r\n0\r\n"),
        "no terminating chunk: {:?}",
        String::from_utf8_lossy(&resp.raw)
    );
}

#[test]
fn https_upstream_half_content_length_body_then_fin_reaches_client_as_truncation() {
    let ca = Ca::new("test CA");
    let backend = one_shot_backend(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":",
    );
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::No);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(&chat_request("m", false));
    let head = c.try_read_head().expect("response head");
    assert_eq!(head.status, 200);
    let (rest, eof) = c.read_to_eof_with_timeout(Duration::from_secs(3));
    assert!(
        eof,
        "the client connection must be closed after a truncated body"
    );
    assert_eq!(rest, b"{\"partial\":");
}

// =============================================================================================
// Resolver

#[test]
fn plain_upstream_named_localhost_is_resolved() {
    let backend = json_backend();
    let url = format!("http://localhost:{}", backend.addr().port());
    let mg = Modelgate::start(&config_json(&[("m", &url)]));
    let r = post_json(mg.addr(), "/v1/chat/completions", &chat_body("m", false));
    assert_eq!(r.status, 200, "stderr:\n{}", stderr_dump(&mg));
    assert_eq!(r.text(), answer(1));
    assert_eq!(
        backend.requests()[0].header("host"),
        Some(format!("localhost:{}", backend.addr().port()).as_str())
    );
}

#[test]
fn unresolvable_host_warns_at_startup_and_gets_502_while_other_model_answers() {
    let backend = json_backend();
    let cfg = config_with(
        &[
            ("ghost", "https://nonexistent.invalid:8443"),
            ("m", &backend.url()),
        ],
        json!({"workers": 1, "timeouts": {"connect": 5}}),
    );
    let mg = Modelgate::start(&cfg);
    let warn = mg.wait_stderr_from(0, Duration::from_secs(3), |l| {
        l.contains("nonexistent.invalid") && l.to_ascii_lowercase().contains("warn")
    });
    assert!(warn.is_some(), "no warning; stderr:\n{}", stderr_dump(&mg));
    // Requests to the unresolvable model and to the good one interleave on the one worker.
    let mut ghost_times = Vec::new();
    for i in 0..3 {
        let (r, took) = timed_chat(&mg, "ghost");
        assert_eq!(
            r.status,
            502,
            "ghost {i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code().as_deref(), Some("upstream_unavailable"));
        ghost_times.push(took);
        let (r, took) = timed_chat(&mg, "m");
        assert_eq!(r.status, 200);
        assert!(took < Duration::from_secs(1), "good model took {took:?}");
    }
    assert!(
        ghost_times.iter().all(|t| *t < Duration::from_secs(2)),
        "502 must come quickly: {ghost_times:?}"
    );
    // And concurrently: a ghost request in flight does not hold up the good model.
    let addr = mg.addr();
    let t = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(&chat_request_close("ghost"));
        c.read_final_response().1.status
    });
    let (r, took) = timed_chat(&mg, "m");
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_secs(1), "good model took {took:?}");
    assert_eq!(t.join().unwrap(), 502);
}

// =============================================================================================
// TLS listener

/// modelgate with a TLS listener (cert for localhost from `ca`) routing `m` to `url`.
fn start_tls_listener(ca: &Ca, url: &str, extra: serde_json::Value) -> Modelgate {
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let dir = TempDir::new();
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.write("key.pem", &leaf.key_pem);
    let mut cfg = json!({
        "listen": [{"address": "127.0.0.1:0", "tls": {"cert": cert, "key": key}}],
        "models": {"m": {"url": url}},
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    start_cfg(dir, cfg)
}

#[test]
fn tls_listener_startup_line_says_https_and_negotiates_http11() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let mg = start_tls_listener(&ca, &backend.url(), json!({}));
    let line = mg.wait_stderr("listening on ", ms(100)).unwrap();
    assert!(
        line.contains(&format!("listening on https://{}", mg.addr())),
        "{line}"
    );
    let (_c, alpn, _) = try_tls_client(mg.addr(), &ca).unwrap();
    assert_eq!(
        alpn.as_deref(),
        Some("http/1.1"),
        "client offered h2 and http/1.1"
    );
}

#[test]
fn tls_listener_serves_chat_request_and_sets_x_forwarded_proto_https() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let mg = start_tls_listener(&ca, &backend.url(), json!({}));
    let (mut c, _, ended) = try_tls_client(mg.addr(), &ca).unwrap();
    c.send(&chat_request_close("m"));
    let r = c.read_response();
    assert_eq!(r.status, 200, "stderr:\n{}", stderr_dump(&mg));
    assert_eq!(r.text(), answer(1));
    assert!(
        c.is_closed_within(Duration::from_secs(2)),
        "Connection: close honoured"
    );
    assert_eq!(
        *ended.lock().unwrap(),
        Some(TlsEnd::CloseNotify),
        "modelgate ends a TLS client connection with close_notify"
    );
    let reqs = backend.requests();
    assert_eq!(reqs[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(reqs[0].header("x-forwarded-host"), Some("modelgate.test"));
}

#[test]
fn tls_listener_streams_sse_event_by_event() {
    const EVENTS: usize = 5;
    let ca = Ca::new("test CA");
    let backend = sse_backend(EVENTS, ms(150));
    let mg = start_tls_listener(&ca, &backend.url(), json!({}));
    let mut c = tls_client(mg.addr(), &ca);
    c.send(&chat_request("m", true));
    let mut resp = c.try_read_head().expect("response head");
    assert_eq!(resp.status, 200);
    let mut arrivals = Vec::new();
    let mut body = Vec::new();
    while let Some(d) = c.try_next_chunk(&mut resp).expect("chunk") {
        arrivals.push(Instant::now());
        body.extend_from_slice(&d);
    }
    assert_eq!(body, sse_body(EVENTS));
    assert_paced(&arrivals[..EVENTS], 150);
    assert_eq!(
        backend.requests()[0].header("x-forwarded-proto"),
        Some("https")
    );
}

#[test]
fn tls_listener_keep_alive_serves_several_requests_on_one_connection() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let mg = start_tls_listener(&ca, &backend.url(), json!({}));
    let mut c = tls_client(mg.addr(), &ca);
    for i in 1..=5 {
        c.send(&chat_request("m", false));
        let r = c.read_response();
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.text(), answer(i));
    }
    let h = request_bytes("GET", "/health", &[], b"");
    c.send(&h);
    assert_eq!(c.read_response().status, 200);
    assert!(!c.is_closed_within(ms(100)));
}

#[test]
fn tls_listener_plaintext_request_is_closed_within_2s() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let mg = start_tls_listener(&ca, &backend.url(), json!({}));
    let mut c = Client::connect(mg.addr());
    c.send(b"GET /health HTTP/1.1\r\nHost: modelgate.test\r\n\r\n");
    let t = Instant::now();
    let (bytes, eof) = c.read_to_eof_with_timeout(Duration::from_secs(2));
    assert!(
        eof,
        "plaintext on the TLS port must end the connection, got {:?} after {:?}",
        String::from_utf8_lossy(&bytes),
        t.elapsed()
    );
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "no plaintext HTTP answer on a TLS port"
    );
    // The listener still serves TLS clients.
    let mut c = tls_client(mg.addr(), &ca);
    c.send(&request_bytes("GET", "/health", &[], b""));
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn tls_listener_stalled_handshake_is_cut_at_header_deadline_while_others_are_served() {
    let ca = Ca::new("test CA");
    let backend = json_backend();
    let mg = start_tls_listener(
        &ca,
        &backend.url(),
        json!({"workers": 1, "timeouts": {"header": 1}}),
    );
    let t = Instant::now();
    let mut stalled = Client::connect(mg.addr());
    thread::sleep(ms(200));
    let mut c = tls_client(mg.addr(), &ca);
    c.send(&chat_request("m", false));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < ms(900),
        "the other client was served only after {:?}",
        t.elapsed()
    );
    assert!(!stalled.is_closed(), "cut too early ({:?})", t.elapsed());
    let cut = stalled.is_closed_within(Duration::from_secs(3));
    let at = t.elapsed();
    assert!(
        cut,
        "a client that never sends a ClientHello is not cut off"
    );
    assert!(
        at >= ms(900) && at < ms(2500),
        "cut after {at:?}, header timeout is 1 s"
    );
    assert!(stalled.buffered().is_empty() || !stalled.buffered().starts_with(b"HTTP/"));
    // The served client's connection is still alive.
    c.send(&chat_request("m", false));
    assert_eq!(c.read_response().status, 200);
}

// =============================================================================================
// The other direction (PITFALLS 7D: one test per direction with identical scenarios)

/// A backend answering each request with `{"len": N, "hash": "H"}` of the body it got.
fn hashing_backend() -> ScriptedUpstream {
    ScriptedUpstream::start(|conn| {
        while let Some(req) = conn.read_request() {
            let body = format!(
                r#"{{"len":{},"hash":"{:016x}"}}"#,
                req.body.len(),
                fnv1a(&req.body)
            );
            if conn.respond_json(200, &body).is_err() {
                return;
            }
        }
    })
}

/// Uploads 20 MB on `c` through `/route/m/v1/upload` and checks what the backend got.
fn upload_20mb(c: &mut Client) {
    const LEN: usize = 20 * 1024 * 1024;
    let body = pattern(LEN);
    c.set_read_timeout(Duration::from_secs(20));
    c.send(&request_bytes(
        "POST",
        "/route/m/v1/upload",
        &["Content-Type: application/octet-stream"],
        &body,
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "body {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"len": LEN, "hash": format!("{:016x}", fnv1a(&body))}),
        "20 MB request body corrupted in transit"
    );
}

#[test]
fn https_upstream_20mb_request_body_arrives_intact() {
    let ca = Ca::new("test CA");
    let backend = hashing_backend();
    let front = TlsFront::start(&ca.leaf(&["localhost"]), backend.addr(), CloseNotify::Yes);
    let mg = start_https(&front, &ca, json!({}));
    let mut c = Client::connect(mg.addr());
    upload_20mb(&mut c);
    assert_eq!(front.handshakes(), 1);
}

#[test]
fn tls_listener_20mb_request_body_arrives_intact() {
    let ca = Ca::new("test CA");
    let backend = hashing_backend();
    let mg = start_tls_listener(&ca, &backend.url(), json!({}));
    let mut c = tls_client(mg.addr(), &ca);
    upload_20mb(&mut c);
}

#[test]
fn tls_listener_20mb_response_arrives_intact() {
    const LEN: usize = 20 * 1024 * 1024;
    let body = Arc::new(pattern(LEN));
    let ca = Ca::new("test CA");
    let backend = big_backend(body.clone(), true);
    let mg = start_tls_listener(&ca, &backend.url(), json!({}));
    let mut c = tls_client(mg.addr(), &ca);
    c.set_read_timeout(Duration::from_secs(20));
    c.send(&chat_request("m", false));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), LEN);
    assert!(
        fnv1a(&r.body) == fnv1a(&body),
        "20 MB body corrupted in transit"
    );
    c.send(&chat_request("m", false));
    assert_eq!(c.read_response().body.len(), LEN, "keep-alive after 20 MB");
}

// =============================================================================================
// Startup validation of TLS files

fn startup_fails_naming(cfg: serde_json::Value, dir: &TempDir, needle: &str) {
    let p = dir.write("config.json", serde_json::to_string_pretty(&cfg).unwrap());
    let (st, _out, err) = run_modelgate(&["--config", p.to_str().unwrap()], |_| {});
    assert_eq!(st.code(), Some(1), "stderr:\n{err}");
    assert!(err.contains(needle), "stderr must name {needle}:\n{err}");
}

#[test]
fn ca_file_that_does_not_exist_is_a_startup_error() {
    let dir = TempDir::new();
    let missing = dir.join("nope.pem");
    startup_fails_naming(
        json!({"listen": "127.0.0.1:0",
               "models": {"m": https_model("https://localhost:1", &missing)}}),
        &dir,
        "models.m.caFile",
    );
}

#[test]
fn ca_file_without_a_certificate_is_a_startup_error() {
    let dir = TempDir::new();
    let junk = dir.write("junk.pem", "not a certificate\n");
    startup_fails_naming(
        json!({"listen": "127.0.0.1:0",
               "models": {"m": https_model("https://localhost:1", &junk)}}),
        &dir,
        "models.m.caFile",
    );
}

#[test]
fn tls_listener_with_missing_key_is_a_startup_error() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["localhost"]);
    let dir = TempDir::new();
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.join("missing-key.pem");
    startup_fails_naming(
        json!({"listen": [{"address": "127.0.0.1:0", "tls": {"cert": cert, "key": key}}],
               "models": {"m": {"url": "http://127.0.0.1:1"}}}),
        &dir,
        "missing-key.pem",
    );
}

/// The same stall as `tls_listener_20mb_response_arrives_intact`, without this file's relay:
/// a plain blocking rustls client that pauses 20 ms after each read in the first 64 KiB of
/// every MiB.
#[test]
fn tls_listener_20mb_response_to_a_pausing_blocking_client_arrives_intact() {
    const LEN: usize = 20 * 1024 * 1024;
    let body = Arc::new(pattern(LEN));
    let ca = Ca::new("test CA");
    let backend = big_backend(body.clone(), true);
    let mg = start_tls_listener(&ca, &backend.url(), json!({}));
    let tcp = TcpStream::connect(mg.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(client_config(&ca), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(&chat_request_close("m")).unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16384];
    let t = Instant::now();
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() % (1 << 20) < 65536 {
                    thread::sleep(ms(20));
                }
            }
            Err(e) => break Err(e),
        }
    };
    assert!(
        end.is_ok(),
        "{:?} after {} bytes in {:?}",
        end,
        raw.len(),
        t.elapsed()
    );
    let r = parse_responses(&raw);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].body.len(), LEN);
    assert!(
        fnv1a(&r[0].body) == fnv1a(&body),
        "20 MB body corrupted in transit"
    );
}
