//! The active health-check thread (issue 9): for models with `healthCheck`, every replica is
//! asked `GET path` every `interval` here, never on a worker (the calls block, with the
//! configured timeout). A 2xx answer is up; anything else (refused, timeout, other status)
//! is down. Every verdict reaches every worker as `Control::ReplicaHealth` through its
//! channel and waker (the same path as the resolver's answers), each round, so a worker that
//! built its balancer later, or a reload, converges within one interval.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Scheme;
use crate::control::{self, Control, Subscribers};
use crate::resolver;
use crate::router::{Backend, Route, Routes};

/// Longest status line read from a health answer.
const MAX_STATUS_LINE: usize = 1024;

/// Starts the thread; new routing tables (reloads) arrive on `rx`.
pub fn spawn(
    rx: Receiver<Arc<Routes>>,
    routes: Arc<Routes>,
    workers: Subscribers,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("modelgate-health".into())
        .spawn(move || run(rx, routes, workers))?;
    Ok(())
}

/// The channel the server sends new tables on.
pub fn channel() -> (Sender<Arc<Routes>>, Receiver<Arc<Routes>>) {
    std::sync::mpsc::channel()
}

/// One checked replica and when it is due.
struct Target {
    route: Arc<Route>,
    replica: usize,
    next: Instant,
}

fn targets(routes: &Routes, now: Instant) -> Vec<Target> {
    let mut out = Vec::new();
    for route in routes.models.values() {
        if route.balance.health_check.is_none() {
            continue;
        }
        for replica in 0..route.backends.len() {
            out.push(Target {
                route: Arc::clone(route),
                replica,
                next: now,
            });
        }
    }
    out
}

fn run(rx: Receiver<Arc<Routes>>, routes: Arc<Routes>, workers: Subscribers) {
    let mut list = targets(&routes, Instant::now());
    loop {
        let now = Instant::now();
        let mut reloaded = None;
        for t in list.iter_mut().filter(|t| t.next <= now) {
            let (Some(check), Some(backend)) = (
                t.route.balance.health_check.as_ref(),
                t.route.backends.get(t.replica),
            ) else {
                continue;
            };
            let up = probe(backend, &check.path, check.timeout);
            // A table that arrived during the probe wins: it may have dropped this check.
            if let Ok(routes) = rx.try_recv() {
                reloaded = Some(routes);
                break;
            }
            backend.stats.set_down(!up);
            control::broadcast(&workers, || Control::ReplicaHealth {
                route: Arc::clone(&t.route),
                replica: t.replica,
                up,
            });
            t.next = Instant::now() + check.interval;
        }
        if let Some(routes) = reloaded {
            list = targets(&routes, Instant::now());
            continue;
        }
        let wait = list
            .iter()
            .map(|t| t.next)
            .min()
            .map_or(Duration::from_secs(3600), |n| {
                n.saturating_duration_since(Instant::now())
            });
        match rx.recv_timeout(wait) {
            Ok(routes) => list = targets(&routes, Instant::now()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// `GET path` on one replica: true for a 2xx status within `timeout`.
fn probe(backend: &Backend, path: &str, timeout: Duration) -> bool {
    let up = &backend.upstream;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: modelgate-health\r\nConnection: close\r\n",
        up.authority
    );
    for (name, value) in &backend.headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value.expose());
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let deadline = Instant::now() + timeout;
    match (&up.unix_path, up.scheme) {
        (Some(path), _) => {
            let Ok(mut s) = std::os::unix::net::UnixStream::connect(path) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            exchange(&mut s, request.as_bytes(), deadline)
        }
        (None, scheme) => {
            let addrs: Vec<SocketAddr> = match &backend.resolve_key {
                Some(name) => resolver::lookup(name).unwrap_or_default(),
                None => backend.addrs.clone(),
            };
            let Some(addr) = addrs.first() else {
                return false;
            };
            let Ok(tcp) = TcpStream::connect_timeout(addr, timeout) else {
                return false;
            };
            let _ = tcp.set_read_timeout(Some(timeout));
            let _ = tcp.set_write_timeout(Some(timeout));
            let _ = tcp.set_nodelay(true);
            match (scheme, &backend.tls) {
                (Scheme::Https, Some(tls)) => {
                    let Ok(conn) = rustls::ClientConnection::new(
                        Arc::clone(&tls.config),
                        tls.server_name.clone(),
                    ) else {
                        return false;
                    };
                    let mut s = rustls::StreamOwned::new(conn, tcp);
                    exchange(&mut s, request.as_bytes(), deadline)
                }
                _ => {
                    let mut s = tcp;
                    exchange(&mut s, request.as_bytes(), deadline)
                }
            }
        }
    }
}

/// Writes the request and reads the status line: 2xx is up.
fn exchange(s: &mut impl ReadWrite, request: &[u8], deadline: Instant) -> bool {
    if s.write_all(request).is_err() || s.flush().is_err() {
        return false;
    }
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    while len < buf.len() && Instant::now() < deadline {
        let Some(spare) = buf.get_mut(len..) else {
            break;
        };
        match s.read(spare) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf.get(..len).is_some_and(|b| b.contains(&b'\n')) {
            break;
        }
    }
    status_is_success(buf.get(..len).unwrap_or(&[]))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// `HTTP/1.x 2xx …` at the start of `bytes`.
fn status_is_success(bytes: &[u8]) -> bool {
    let mut parts = bytes.split(|&b| b == b' ');
    let version = parts.next().unwrap_or(&[]);
    let code = parts.next().unwrap_or(&[]);
    version.starts_with(b"HTTP/1.") && code.len() == 3 && code.first() == Some(&b'2')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_status_lines_are_up() {
        assert!(status_is_success(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_is_success(b"HTTP/1.0 204 No Content\r\n"));
        assert!(!status_is_success(b"HTTP/1.1 503 Busy\r\n"));
        assert!(!status_is_success(b"HTTP/1.1 2000 X\r\n"));
        assert!(!status_is_success(b"SSH-2.0 200\r\n"));
        assert!(!status_is_success(b""));
    }
}
