//! A worker's pool of idle keep-alive upstream connections (PITFALLS 14, 15).
//!
//! Idle sockets stay registered with the worker's `Poll`: any readable event on one (EOF or
//! unexpected bytes) means the upstream gave up on it, and the worker discards it. Reuse is
//! LIFO (the most recently used socket is the least likely to have timed out upstream), and
//! sockets idle for `timeouts.upstreamKeepAlive` are closed (default 4 s: shorter than the
//! 5 s keep-alive of uvicorn, which serves vLLM and sglang).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hash::ConfigMap;
use crate::net::{Io, Stream};

/// Idle connections kept per upstream per worker; more are closed.
pub const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// A socket with user-space readiness (edge-triggered, PITFALLS 1).
///
/// `readable` is cleared on `WouldBlock`, and also after a short read of a plain socket when
/// the peer has not sent FIN: a stream read returns everything queued up to the buffer size,
/// so a short read drained the queue, and any later arrival raises a new edge. That saves
/// the `EAGAIN` read per request that strict drain-until-`WouldBlock` would cost. (A TLS
/// stream may hold decrypted bytes, so there only `WouldBlock` counts.)
#[derive(Debug)]
pub struct Sock {
    pub stream: Stream,
    /// The socket's mio token (index in the worker's owner slab).
    pub token: usize,
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN (or an error) was reported: keep reading until EOF shows up.
    pub read_closed: bool,
}

impl Drop for Sock {
    fn drop(&mut self) {
        crate::net::fds::closed();
    }
}

impl Sock {
    /// A socket the worker holds, counted against the descriptor limit until dropped.
    pub fn new(stream: Stream, token: usize) -> Sock {
        crate::net::fds::opened();
        Sock {
            stream,
            token,
            readable: false,
            writable: false,
            read_closed: false,
        }
    }

    /// Reads once and keeps the readiness flag honest.
    pub fn read(&mut self, buf: &mut [u8]) -> Io {
        let room = buf.len();
        let outcome = self.stream.read(buf);
        self.note_read(room, outcome)
    }

    /// `read` into several buffers at once (see `Stream::read_vectored`).
    pub fn read_vectored(&mut self, bufs: &mut [std::io::IoSliceMut<'_>]) -> Io {
        let room = bufs.iter().map(|b| b.len()).sum();
        let outcome = self.stream.read_vectored(bufs);
        self.note_read(room, outcome)
    }

    /// A short read of a plain socket whose peer has not sent FIN drained the kernel buffer:
    /// the next arrival is a new edge, so the socket is not readable until then.
    fn note_read(&mut self, room: usize, outcome: Io) -> Io {
        match outcome {
            Io::WouldBlock => self.readable = false,
            Io::Done(n) if n < room && !self.read_closed && !self.stream.is_tls() => {
                self.readable = false;
            }
            _ => {}
        }
        outcome
    }
}

struct Idle {
    sock: Sock,
    since: Instant,
}

#[derive(Default)]
pub struct UpstreamPool {
    /// Keyed by the backend's pool key, from the config.
    idle: ConfigMap<Arc<str>, Vec<Idle>>,
    count: usize,
}

impl UpstreamPool {
    /// The most recently parked connection for `key` idle for less than `keep`, if any, and
    /// the older ones passed over.
    pub fn checkout(
        &mut self,
        key: &str,
        now: Instant,
        keep: Duration,
    ) -> (Option<Sock>, Vec<Sock>) {
        let mut expired = Vec::new();
        let Some(list) = self.idle.get_mut(key) else {
            return (None, expired);
        };
        while let Some(entry) = list.pop() {
            self.count -= 1;
            if now.duration_since(entry.since) < keep {
                return (Some(entry.sock), expired);
            }
            expired.push(entry.sock);
        }
        (None, expired)
    }

    /// Parks a connection; returns it back when the pool for `key` is full.
    pub fn checkin(&mut self, key: Arc<str>, sock: Sock, now: Instant) -> Option<Sock> {
        let list = self.idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_UPSTREAM {
            return Some(sock);
        }
        list.push(Idle { sock, since: now });
        self.count += 1;
        None
    }

    /// Takes out the idle connection with `token` (it became readable: discard it).
    pub fn remove_token(&mut self, token: usize) -> Option<Sock> {
        for list in self.idle.values_mut() {
            if let Some(i) = list.iter().position(|e| e.sock.token == token) {
                self.count -= 1;
                return Some(list.swap_remove(i).sock);
            }
        }
        None
    }

    /// Takes out every connection idle for `keep` or longer.
    pub fn expire(&mut self, now: Instant, keep: Duration) -> Vec<Sock> {
        let mut out = Vec::new();
        for list in self.idle.values_mut() {
            let mut i = 0;
            while i < list.len() {
                if now.duration_since(list[i].since) >= keep {
                    out.push(list.swap_remove(i).sock);
                } else {
                    i += 1;
                }
            }
        }
        self.count -= out.len();
        self.idle.retain(|_, list| !list.is_empty());
        out
    }

    /// Takes out everything (shutdown).
    pub fn drain(&mut self) -> Vec<Sock> {
        self.count = 0;
        self.idle
            .drain()
            .flat_map(|(_, list)| list.into_iter().map(|e| e.sock))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(4);

    fn sock(token: usize) -> Sock {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        Sock::new(Stream::Unix(mio::net::UnixStream::from_std(a)), token)
    }

    #[test]
    fn checkout_is_lifo() {
        let now = Instant::now();
        let mut pool = UpstreamPool::default();
        let key: Arc<str> = "http://a".into();
        assert!(pool.checkin(key.clone(), sock(1), now).is_none());
        assert!(pool.checkin(key.clone(), sock(2), now).is_none());
        let (got, _) = pool.checkout("http://a", now, KEEP);
        assert_eq!(got.map(|s| s.token), Some(2));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn expired_connections_are_not_handed_out() {
        let now = Instant::now();
        let mut pool = UpstreamPool::default();
        pool.checkin("k".into(), sock(1), now);
        let (got, expired) = pool.checkout("k", now + KEEP, KEEP);
        assert!(got.is_none());
        assert_eq!(expired.len(), 1);
        assert!(pool.is_empty());
    }

    #[test]
    fn remove_token_finds_the_socket() {
        let now = Instant::now();
        let mut pool = UpstreamPool::default();
        pool.checkin("k".into(), sock(7), now);
        pool.checkin("j".into(), sock(8), now);
        assert_eq!(pool.remove_token(7).map(|s| s.token), Some(7));
        assert!(pool.remove_token(7).is_none());
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn expire_removes_only_old_entries() {
        let now = Instant::now();
        let mut pool = UpstreamPool::default();
        pool.checkin("k".into(), sock(1), now);
        pool.checkin("k".into(), sock(2), now + Duration::from_secs(3));
        let gone = pool.expire(now + KEEP, KEEP);
        assert_eq!(gone.len(), 1);
        assert_eq!(pool.len(), 1);
    }
}
