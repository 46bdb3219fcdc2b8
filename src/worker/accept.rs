//! Accepting clients: every listener is drained until `WouldBlock`, up to the worker's
//! connection cap (accepting resumes when a connection closes), and only while the process
//! keeps descriptors in reserve for what it accepted (`net::fds`): past that, clients wait in
//! the kernel's accept queue. A kernel that still says `EMFILE`/`ENFILE` is backed off
//! (PITFALLS 3), logged by name and counted.

use std::time::{Duration, Instant};

use mio::Token;

use crate::conn::Conn;
use crate::net::{fds, Accepted};
use crate::upstream::Sock;

use super::{Owner, Worker, ACCEPT_BACKOFF, SOCKET_BASE};

impl Worker {
    pub(super) fn accept_all(&mut self, now: Instant) {
        self.accept_paused = false;
        for i in 0..self.listeners.len() {
            loop {
                if self.conns.len() >= self.max_conns {
                    self.accept_paused = true;
                    return;
                }
                if !fds::may_accept() {
                    // Another worker's close may be what frees descriptors: look again soon.
                    self.accept_paused = true;
                    self.accept_after = Some(now + ACCEPT_BACKOFF);
                    self.env.obs.counters.add_accept_paused();
                    self.log_shortage(now, None);
                    return;
                }
                let (stream, peer) = match self.listeners[i].accept() {
                    Accepted::Conn(stream, peer) => (stream, peer),
                    Accepted::WouldBlock => break,
                    Accepted::Skip => continue,
                    Accepted::Exhausted(code) => {
                        self.accept_after = Some(now + ACCEPT_BACKOFF);
                        self.env.obs.counters.add_fd_exhausted();
                        self.log_shortage(now, Some(code));
                        return;
                    }
                };
                stream.set_nodelay();
                let tls = self.listener_tls.get(i).cloned().flatten();
                let secure = tls.is_some();
                let stream = match tls {
                    Some(config) => match stream.into_tls_server(config) {
                        Ok(stream) => stream,
                        Err(_) => continue,
                    },
                    None => stream,
                };
                let token = self.owners.insert(Owner::Closed);
                let mut sock = Sock::new(stream, token);
                if sock
                    .stream
                    .register(self.poll.registry(), Token(SOCKET_BASE + token))
                    .is_err()
                {
                    self.to_free.push(token);
                    continue;
                }
                fds::client_accepted();
                self.next_generation += 1;
                let key =
                    self.conns
                        .insert(Conn::new(sock, peer, secure, self.next_generation, now));
                if let Some(owner) = self.owners.get_mut(token) {
                    *owner = Owner::Client(key);
                }
                self.arm_timer(key);
            }
        }
    }

    /// Logs a descriptor shortage, at most once per `SHORTAGE_LOG_EVERY` per worker: the
    /// errno by name when the kernel refused (`code`), else that accepting paused to keep
    /// descriptors for accepted clients.
    pub(super) fn log_shortage(&mut self, now: Instant, code: Option<i32>) {
        let log = &mut self.fd_log;
        if log.last.is_some_and(|t| now < t + SHORTAGE_LOG_EVERY) {
            log.suppressed += 1;
            return;
        }
        let more = std::mem::take(&mut log.suppressed);
        log.last = Some(now);
        let (limit, reserve) = fds::limits().unwrap_or((fds::soft_limit(), 0));
        let what = match code {
            Some(code) => format!(
                "{}: out of file descriptors; new connections wait, new upstream connections get 503",
                fds::errno_name(code)
            ),
            None => "descriptor reserve reached: not accepting until connections close".into(),
        };
        eprintln!(
            "modelgate: worker {}: {what} ({} counted in use, soft limit {limit}, {reserve} kept \
             in reserve; {more} more since the last message)",
            self.id,
            fds::in_use(),
        );
    }
}

/// How often a worker may log a descriptor shortage.
const SHORTAGE_LOG_EVERY: Duration = Duration::from_secs(5);

/// When a worker last logged a descriptor shortage, and how many it did not log since.
#[derive(Default)]
pub(super) struct ShortageLog {
    last: Option<Instant>,
    suppressed: u64,
}
