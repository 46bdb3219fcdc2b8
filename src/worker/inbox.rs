//! Messages from other threads (a new routing table, listener certificates, resolver
//! answers, health verdicts, replica slots granted to waiters, shutdown) and the answer to an `/admin/reload`.

use std::sync::Arc;
use std::time::Instant;

use crate::control::Control;

use super::{conn_of, Worker};

impl Worker {
    pub(super) fn handle_control(&mut self, now: Instant) {
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                Control::Routes(routes) => {
                    self.env.balancers.reload(&routes);
                    self.env.routes = routes;
                }
                Control::ReplicaHealth { route, replica, up } => {
                    // A verdict probed on an older table is stale (a reload may have
                    // dropped the check); the next round speaks for the current one.
                    let current = self
                        .env
                        .routes
                        .models
                        .get(&route.name)
                        .is_some_and(|r| Arc::ptr_eq(r, &route));
                    if !current {
                        continue;
                    }
                    // The verdict is process-wide (every worker sets the same flag); a replica
                    // that came up may take a waiter, which `dispatch_waiters` offers it.
                    if let Some(slots) = &route.slots {
                        slots.set_down(replica, !up);
                    }
                }
                Control::Granted(grant) => self.take_grant(grant, now),
                Control::Resolved { name, addrs } => {
                    self.resolved.insert(name, addrs);
                }
                Control::ReloadDone {
                    conn,
                    generation,
                    result,
                } => self.finish_reload(conn, generation, result, now),
                Control::ListenerTls(tls) => {
                    if tls.len() == self.listener_tls.len() {
                        self.listener_tls = tls;
                    }
                }
                Control::Shutdown { deadline } => {
                    self.shutdown = Some(deadline);
                    // Connections the kernel already completed are clients too: take them
                    // (they are served and closed) rather than reset them with the listener.
                    self.accept_all(now);
                    for listener in self.listeners.iter_mut() {
                        listener.deregister(self.poll.registry());
                    }
                    self.listeners.clear();
                    for sock in self.upstreams.drain() {
                        self.close_sock(sock);
                    }
                    let keys: Vec<usize> = self.conns.keys().collect();
                    for key in keys {
                        let idle = self.conns.get(key).is_some_and(|c| c.is_idle(now));
                        if idle {
                            self.close_conn(key);
                        } else if let Some(conn) = self.conns.get_mut(key) {
                            conn.draining = true;
                        }
                    }
                    let _ = now;
                }
            }
        }
    }

    pub(super) fn finish_reload(
        &mut self,
        key: usize,
        generation: u64,
        result: Result<usize, Vec<String>>,
        now: Instant,
    ) {
        let Some(conn) = conn_of(&mut self.conns, key, generation) else {
            return;
        };
        let mut ctx = self.env.ctx(now);
        let want = conn.reload_done(result, &mut ctx);
        if !self.after_drive(key, want, now) {
            self.drive(key, now);
        }
    }
}
