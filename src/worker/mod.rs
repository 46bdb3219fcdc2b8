//! One event-loop thread: the only owner of a `mio::Poll` and its registry (DESIGN.md rule 1).
//!
//! It turns readiness into user-space flags on sockets, drives connections, attaches upstream
//! sockets (pooled or freshly connected) when a connection asks, runs deadlines, and closes
//! what connections give up. Everything a connection decides lives in `conn`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

mod accept;
mod attach;
mod inbox;
mod queue;
mod spin;

use crate::buf::{Budget, Pool};
use crate::conn::{Balancers, Conn, Ctx, Obs, RequestIds, Spares, Want};
use crate::control::{Control, ListenerTls, ReloadRequest, ToServer};
use crate::metrics::Metrics;
use crate::net::Listener;
use crate::resolver;
use crate::router::Routes;
use crate::slab::Slab;
use crate::timer::Timers;
use crate::upstream::{Sock, UpstreamPool};
use spin::Spin;

pub const WAKER: Token = Token(0);
const LISTENER_BASE: usize = 1;
const SOCKET_BASE: usize = 1 << 20;
/// How often idle pooled upstream connections are swept.
const SWEEP: Duration = Duration::from_secs(1);
/// Back-off after running out of file descriptors (PITFALLS 3).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the workers share: counters and the buffer budget. No locks on the data path.
pub struct Shared {
    /// Where `/admin/reload` requests go.
    pub reload: Option<Sender<ToServer>>,
    pub in_flight: Arc<AtomicU64>,
    pub budget: Arc<Budget>,
    /// Where workers ask for a fresh lookup after a connect failure.
    pub resolver: Option<Sender<resolver::Request>>,
    pub metrics: Arc<Metrics>,
    /// The access log writer thread (None: lines are dropped).
    pub log: Option<SyncSender<Vec<u8>>>,
}

/// Who owns a registered socket (the token is the key in the owner slab).
#[derive(Clone, Copy)]
enum Owner {
    Client(usize),
    Upstream(usize),
    Idle,
    /// Closed during this batch; the key is freed after it (PITFALLS 4).
    Closed,
}

/// What connections borrow while they are driven (everything but the connections
/// themselves), so a `Ctx` can be lent next to a `&mut Conn`.
struct Env {
    pool: Pool,
    /// The current routing table.
    routes: Arc<Routes>,
    in_flight: Arc<AtomicU64>,
    ids: RequestIds,
    scratch: Vec<u8>,
    obs: Obs,
    balancers: Balancers,
    spares: Spares,
}

impl Env {
    fn ctx(&mut self, now: Instant) -> Ctx<'_> {
        Ctx {
            now,
            pool: &self.pool,
            routes: &self.routes,
            in_flight: &self.in_flight,
            ids: &mut self.ids,
            scratch: &mut self.scratch,
            obs: &mut self.obs,
            balancers: &mut self.balancers,
            spares: &mut self.spares,
        }
    }
}

pub struct Worker {
    poll: Poll,
    listeners: Vec<Listener>,
    listener_tls: ListenerTls,
    control: Receiver<Control>,
    conns: Slab<Conn>,
    owners: Slab<Owner>,
    to_free: Vec<usize>,
    upstreams: UpstreamPool,
    timers: Timers,
    /// The resolver's latest answers, preferred over the routing table's startup ones.
    resolved: HashMap<Arc<str>, Arc<[SocketAddr]>>,
    resolver: Option<Sender<resolver::Request>>,
    reload: Option<Sender<ToServer>>,
    id: usize,
    env: Env,
    log: Option<SyncSender<Vec<u8>>>,
    max_conns: usize,
    next_generation: u64,
    accept_paused: bool,
    accept_after: Option<Instant>,
    shutdown: Option<Instant>,
    yielded: Vec<usize>,
    /// Rate limit of the descriptor-shortage log line.
    fd_log: accept::ShortageLog,
    /// Whether to poll a little longer before sleeping (`busyPoll`).
    spin: Spin,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        poll: Poll,
        listeners: Vec<Listener>,
        listener_tls: ListenerTls,
        control: Receiver<Control>,
        routes: Arc<Routes>,
        shared: &Shared,
        max_conns: usize,
        busy_poll: Duration,
    ) -> io::Result<Worker> {
        let resolver = shared.resolver.clone();
        let reload = shared.reload.clone();
        let mut listeners = listeners;
        for (i, listener) in listeners.iter_mut().enumerate() {
            listener.register(poll.registry(), Token(LISTENER_BASE + i))?;
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 32)
            ^ (id as u64).rotate_left(56);
        Ok(Worker {
            poll,
            listeners,
            listener_tls,
            control,
            conns: Slab::default(),
            owners: Slab::default(),
            to_free: Vec::new(),
            upstreams: UpstreamPool::default(),
            timers: Timers::default(),
            resolved: HashMap::new(),
            resolver,
            reload,
            id,
            env: Env {
                pool: Pool::new(Arc::clone(&shared.budget)),
                routes: Arc::clone(&routes),
                in_flight: Arc::clone(&shared.in_flight),
                ids: RequestIds::new(seed),
                balancers: Balancers::new(seed.rotate_left(17), &routes),
                spares: Spares::default(),
                scratch: Vec::with_capacity(4096),
                obs: Obs {
                    metrics: Arc::clone(&shared.metrics),
                    counters: shared.metrics.worker(),
                    log: Vec::new(),
                },
            },
            log: shared.log.clone(),
            max_conns: max_conns.max(1),
            next_generation: 0,
            accept_paused: false,
            accept_after: None,
            shutdown: None,
            yielded: Vec::new(),
            fd_log: accept::ShortageLog::default(),
            spin: Spin::new(busy_poll),
        })
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        // Grants to this worker's own waiters need not ring its waker (see `dispatch_waiters`).
        crate::control::on_worker(self.id);
        let mut events = Events::with_capacity(1024);
        let mut dirty: Vec<usize> = Vec::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        // The last turn handled a socket event: a worker that just moved bytes may spin.
        let mut active = false;
        loop {
            let now = Instant::now();
            let mut wake = next_sweep;
            if let Some(t) = self.timers.next() {
                wake = wake.min(t);
            }
            if let Some(t) = self.accept_after {
                wake = wake.min(t);
            }
            let timeout = if self.yielded.is_empty() {
                wake.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            let in_flight = self.env.in_flight.load(Ordering::Relaxed);
            if let Err(e) = self.spin.wait(
                &mut self.poll,
                &mut events,
                timeout,
                now,
                (active, in_flight),
            ) {
                eprintln!("modelgate: poll failed: {e}");
                return;
            }
            let now = Instant::now();
            dirty.clear();
            dirty.append(&mut self.yielded);
            let mut accept = false;
            active = false;
            for event in events.iter() {
                let token = event.token().0;
                active |= token != WAKER.0;
                if token == WAKER.0 {
                    self.handle_control(now);
                } else if token < SOCKET_BASE {
                    accept = true;
                } else {
                    let closed = event.is_read_closed() || event.is_error();
                    let readable = event.is_readable() || closed;
                    let writable =
                        event.is_writable() || event.is_write_closed() || event.is_error();
                    self.mark(token - SOCKET_BASE, readable, writable, closed, &mut dirty);
                }
            }
            if self.accept_after.is_some_and(|t| t <= now) {
                self.accept_after = None;
                accept = true;
            }
            if accept || (self.accept_paused && self.conns.len() < self.max_conns) {
                self.accept_all(now);
            }
            for &key in dirty.iter() {
                self.drive(key, now);
            }
            self.run_timers(now);
            self.dispatch_waiters(now);
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                let keep = self.env.routes.timeouts.upstream_keep_alive;
                for sock in self.upstreams.expire(now, keep) {
                    self.close_sock(sock);
                }
                if self.env.pool.trim(now) {
                    crate::buf::release_allocator_memory();
                }
            }
            for key in self.to_free.drain(..) {
                self.owners.remove(key);
            }
            self.flush_log();
            self.env
                .obs
                .counters
                .set_pool(self.upstreams.len() as u64, self.conns.len() as u64);
            if let Some(deadline) = self.shutdown {
                let busy = self
                    .conns
                    .keys()
                    .any(|k| self.conns.get(k).is_some_and(|c| !c.is_finishing(now)));
                if !busy || now >= deadline {
                    return;
                }
            }
        }
    }

    /// Hands this turn's access log lines to the writer thread in one message; when it is
    /// behind, lines are dropped rather than blocking the event loop.
    fn flush_log(&mut self) {
        if self.env.obs.log.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.env.obs.log);
        let sent = match &self.log {
            Some(tx) => tx.try_send(lines),
            None => return,
        };
        // The lines are dropped, never waited for; the count says how many.
        if let Err(TrySendError::Full(lines) | TrySendError::Disconnected(lines)) = sent {
            let dropped = lines.iter().filter(|&&b| b == b'\n').count() as u64;
            self.env.obs.counters.add_log_dropped(dropped);
        }
    }

    /// Records readiness on the socket behind `key` and queues its connection.
    fn mark(
        &mut self,
        key: usize,
        readable: bool,
        writable: bool,
        closed: bool,
        dirty: &mut Vec<usize>,
    ) {
        match self.owners.get(key).copied() {
            Some(Owner::Client(c)) => {
                if let Some(conn) = self.conns.get_mut(c) {
                    conn.client.readable |= readable;
                    conn.client.writable |= writable;
                    conn.client.read_closed |= closed;
                    dirty.push(c);
                }
            }
            Some(Owner::Upstream(c)) => {
                if let Some(conn) = self.conns.get_mut(c) {
                    if let Some(up) = conn.upstream.as_mut().filter(|u| u.token == key) {
                        up.readable |= readable;
                        up.writable |= writable;
                        up.read_closed |= closed;
                        dirty.push(c);
                    }
                }
            }
            Some(Owner::Idle) => {
                // An idle pooled connection spoke (EOF or stray bytes): it is done for.
                if readable {
                    if let Some(sock) = self.upstreams.remove_token(key) {
                        self.close_sock(sock);
                    }
                }
            }
            Some(Owner::Closed) | None => {}
        }
    }

    /// Drives one connection until it waits, attaching upstream sockets as it asks.
    fn drive(&mut self, key: usize, now: Instant) {
        for _ in 0..8 {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let mut ctx = self.env.ctx(now);
            let want = conn.drive(&mut ctx);
            if self.after_drive(key, want, now) {
                return;
            }
        }
        self.yielded.push(key);
    }

    /// Acts on what a connection wants; true when it needs nothing more this turn.
    fn after_drive(&mut self, key: usize, want: Want, now: Instant) -> bool {
        self.collect_sockets(key, now);
        match want {
            Want::Wait => {
                self.arm_timer(key);
                true
            }
            Want::Yield => {
                self.arm_timer(key);
                self.yielded.push(key);
                true
            }
            Want::Close => {
                self.close_conn(key);
                true
            }
            Want::Upstream => {
                self.attach_upstream(key, now);
                false
            }
            Want::Queue => {
                self.enqueue(key, now);
                true
            }
            Want::Reload => {
                let generation = self.conns.get(key).map_or(0, |c| c.generation);
                let sent = self.reload.as_ref().is_some_and(|tx| {
                    tx.send(ToServer::Reload(Some(ReloadRequest {
                        worker: self.id,
                        conn: key,
                        generation,
                    })))
                    .is_ok()
                });
                if !sent {
                    self.finish_reload(
                        key,
                        generation,
                        Err(vec!["reload is unavailable".into()]),
                        now,
                    );
                }
                self.arm_timer(key);
                true
            }
        }
    }

    fn arm_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = conn.deadline(&self.env.routes.timeouts);
        if conn.timer_at.is_none_or(|t| deadline < t) {
            conn.timer_at = Some(deadline);
            self.timers.push(deadline, key, conn.generation);
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some((key, generation)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            conn.timer_at = None;
            let deadline = conn.deadline(&self.env.routes.timeouts);
            if deadline > now {
                conn.timer_at = Some(deadline);
                self.timers.push(deadline, key, generation);
                continue;
            }
            let mut ctx = self.env.ctx(now);
            let want = conn.on_timeout(&mut ctx);
            if !self.after_drive(key, want, now) {
                self.drive(key, now);
            }
        }
    }

    fn close_conn(&mut self, key: usize) {
        let Some(mut conn) = self.conns.remove(key) else {
            return;
        };
        let dead: Vec<Sock> = conn.dead.drain(..).collect();
        for sock in dead {
            self.close_sock(sock);
        }
        if let Some(up) = conn.upstream.take() {
            self.close_sock(up);
        }
        if let Some((_, sock)) = conn.released.take() {
            self.close_sock(sock);
        }
        self.retire_token(conn.client.token);
        crate::net::fds::client_closed();
        // Dropping `conn` closes the client socket (and leaves epoll with it).
    }

    /// Closes a socket; its token is freed at the end of the event batch. A TLS session
    /// says close_notify first.
    fn close_sock(&mut self, mut sock: Sock) {
        self.retire_token(sock.token);
        if sock.stream.is_tls() {
            sock.stream.shutdown_write();
        }
        drop(sock);
    }

    fn retire_token(&mut self, token: usize) {
        if let Some(owner) = self.owners.get_mut(token) {
            *owner = Owner::Closed;
            self.to_free.push(token);
        }
    }

    /// For tests and metrics: connections and idle upstreams held.
    pub fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.upstreams.len())
    }
}

/// The connection at `key`, if it is still the one of `generation` (a message about an
/// earlier connection in the same slot is stale).
fn conn_of(conns: &mut Slab<Conn>, key: usize, generation: u64) -> Option<&mut Conn> {
    conns.get_mut(key).filter(|c| c.generation == generation)
}

/// Makes the waker a worker's control channel rings.
pub fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKER)
}

/// Requests in flight across all workers.
pub fn in_flight(shared: &Shared) -> u64 {
    shared.in_flight.load(Ordering::Relaxed)
}
