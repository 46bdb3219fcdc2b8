//! Upstream sockets on the worker side: a connection's released and dead sockets are parked
//! in the pool or closed, and a connection that asks for an upstream gets a pooled socket or
//! a fresh non-blocking connect, registered with the worker's `Poll`.

use std::sync::Arc;
use std::time::Instant;

use mio::Token;

use crate::config::Scheme;
use crate::net;
use crate::resolver;
use crate::upstream::Sock;

use super::{Owner, Worker, SOCKET_BASE};

impl Worker {
    /// Parks released upstream sockets in the pool and closes dead ones.
    pub(super) fn collect_sockets(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let released = conn.released.take();
        if let Some(name) = conn.refresh_name.take() {
            if let Some(tx) = &self.resolver {
                let _ = tx.send(resolver::Request::Refresh(name));
            }
        }
        let dead: Vec<Sock> = conn.dead.drain(..).collect();
        for sock in dead {
            self.close_sock(sock);
        }
        if let Some((pool_key, mut sock)) = released {
            // A socket that may hold unread input (a TLS peer's close_notify and FIN can
            // arrive with the last record) is probed once: anything but WouldBlock means the
            // upstream is done with it, and no later edge would say so.
            if sock.readable || sock.read_closed {
                let mut probe = [0u8; 1];
                if !matches!(sock.read(&mut probe), net::Io::WouldBlock) {
                    self.close_sock(sock);
                    return;
                }
            }
            let token = sock.token;
            match self.upstreams.checkin(pool_key, sock, now) {
                None => {
                    if let Some(owner) = self.owners.get_mut(token) {
                        *owner = Owner::Idle;
                    }
                }
                Some(sock) => self.close_sock(sock),
            }
        }
    }

    pub(super) fn attach_upstream(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let Some((route, replica, attempt, fresh_only)) = conn.upstream_wanted() else {
            return;
        };
        let route = Arc::clone(route);
        let Some(backend) = route.backends.get(replica) else {
            return;
        };
        let addr = backend
            .resolve_key
            .as_ref()
            .and_then(|name| self.resolved.get(name))
            .map_or(&backend.addrs[..], |fresh| &fresh[..])
            .get(attempt)
            .copied();
        if !fresh_only {
            let (sock, expired) = self.upstreams.checkout(
                &backend.pool_key,
                now,
                self.env.routes.timeouts.upstream_keep_alive,
            );
            for old in expired {
                self.close_sock(old);
            }
            if let Some(sock) = sock {
                if let Some(owner) = self.owners.get_mut(sock.token) {
                    *owner = Owner::Upstream(key);
                }
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.attach_upstream(sock, true, now);
                }
                return;
            }
        }
        let unix = backend.upstream.scheme == Scheme::Unix;
        // A unix socket has one "address"; a TCP upstream has the resolved list.
        let exhausted = if unix { attempt > 0 } else { addr.is_none() };
        let stream = match (&backend.upstream.unix_path, addr, &backend.tls) {
            _ if exhausted => Err(net::FailKind::Other),
            (Some(path), _, _) => net::connect_unix(path),
            (None, Some(addr), None) => net::connect_tcp(addr),
            (None, Some(addr), Some(tls)) => net::connect_tcp(addr).and_then(|tcp| {
                tcp.into_tls_client(Arc::clone(&tls.config), tls.server_name.clone())
            }),
            (None, None, _) => Err(net::FailKind::Other),
        };
        let registered = stream.and_then(|mut stream| {
            let token = self.owners.insert(Owner::Upstream(key));
            match stream.register(self.poll.registry(), Token(SOCKET_BASE + token)) {
                Ok(()) => Ok(Sock::new(stream, token)),
                Err(_) => {
                    self.retire_token(token);
                    Err(net::FailKind::Other)
                }
            }
        });
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match registered {
            Ok(mut sock) => {
                // A connect to a loopback or unix upstream has usually completed by the time
                // connect() returns: look at once (two syscalls) rather than one event-loop
                // turn later, when the writable edge would say so. Not connected yet: the
                // flag is cleared and the edge still comes.
                sock.writable = true;
                conn.attach_upstream(sock, false, now)
            }
            Err(net::FailKind::NoDescriptors(code)) => {
                // Our shortage, not the upstream's failure: 503, and the replica stays up.
                let mut ctx = self.env.ctx(now);
                let want = conn.shed_no_descriptors(&mut ctx);
                self.env.obs.counters.add_fd_exhausted();
                self.log_shortage(now, Some(code));
                self.after_drive(key, want, now);
            }
            Err(_) => {
                if exhausted || unix {
                    eprintln!(
                        "modelgate: cannot connect to upstream {} of model {} ({} address(es) tried)",
                        backend.upstream.authority, route.name, attempt
                    );
                }
                let mut ctx = self.env.ctx(now);
                let want = conn.connect_failed(exhausted || unix, &mut ctx);
                self.after_drive(key, want, now);
            }
        }
    }
}
