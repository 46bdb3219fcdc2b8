//! Accepting clients: every listener is drained until `WouldBlock`, up to the worker's
//! connection cap (accepting resumes when a connection closes), with a back-off after the
//! process runs out of file descriptors (PITFALLS 3).

use std::time::Instant;

use mio::Token;

use crate::conn::Conn;
use crate::net::Accepted;
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
                let (stream, peer) = match self.listeners[i].accept() {
                    Accepted::Conn(stream, peer) => (stream, peer),
                    Accepted::WouldBlock => break,
                    Accepted::Skip => continue,
                    Accepted::Exhausted => {
                        self.accept_after = Some(now + ACCEPT_BACKOFF);
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
}
