//! One client connection's whole life, as one enum of phases ([`Phase`]).
//!
//! ```text
//!   Idle ──first byte──▶ Head ──local endpoint / error──▶ Respond ──▶ Idle | Linger ──▶ closed
//!                         │
//!                         ├─ /route/{model}/… ─────────────────────▶ Proxy (body streamed)
//!                         └─ routed by body ──▶ Body (read + scan) ──▶ Proxy (body buffered)
//!   Proxy ──response complete──▶ Idle (keep-alive; pipelined bytes parsed at once) | Linger
//!   Proxy (WebSocket upgrade) ──101──▶ Tunnel (raw bytes both ways) ──both FINs / idle──▶ closed
//! ```
//!
//! A connection moves bytes and drives the pure core (`h1`, `scan`, `router`, `admin`,
//! `error`); it never touches the `Poll`. When it needs an upstream socket it returns
//! [`Want::Upstream`] and the worker attaches one; sockets it is done with are left in
//! `released` (reusable) or `dead` (to close) for the worker to collect.
//!
//! This file keeps the phases, the turn loop and the deadlines; each phase has its own file:
//! `head` (reading a head, deciding what it asks for), `body` (reading and scanning a body
//! to route it), `start` (`/route/` requests, choosing a replica, the upstream head),
//! `exchange` (the exchange's states and pump), `response` (the upstream's answer),
//! `failover` (upstream failures, failover, the wait queue), `local` (local answers, errors,
//! linger) and `tunnel` (WebSocket).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod body;
mod exchange;
mod failover;
mod head;
mod ids;
mod local;
mod outbox;
mod record;
mod replicas;
mod response;
mod rewrite;
mod scanner;
mod spares;
mod start;
mod tunnel;

use ids::RequestId;
pub use ids::{InFlight, RequestIds};
use outbox::Outbox;

use body::BodyRead;
use exchange::{Exchange, Failure, Link, Resp};
pub use record::Obs;
use record::Record;
pub use replicas::Balancers;
pub use spares::Spares;
use tunnel::Tunnel;

use crate::accesslog::Outcome;
use crate::buf::{Block, Pool};
use crate::config::Timeouts;
use crate::error::ApiError;
use crate::net::Peer;
use crate::router::Routes;
use crate::upstream::Sock;

/// Iterations of one connection's loop per turn before yielding to the others (PITFALLS 1).
const STEPS_PER_TURN: usize = 32;
/// How long a closing connection waits for the client's FIN after our last byte.
const LINGER: Duration = Duration::from_secs(2);
/// Input discarded while lingering before we stop being polite.
const LINGER_BYTES: usize = 64 * 1024;
/// Longest client `X-Request-Id` we forward; longer ones are replaced by a generated id.
const MAX_REQUEST_ID: usize = 128;
/// How long a just-accepted silent connection is waited for at shutdown.
const FRESH: Duration = Duration::from_secs(1);
/// Addresses of one upstream tried before giving up with 502.
const MAX_ADDRESSES: usize = 16;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the worker must do after driving a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Nothing until the next event or deadline.
    Wait,
    /// Work is left but the turn's budget is spent: drive again before polling.
    Yield,
    /// Attach an upstream socket ([`Conn::upstream_wanted`] says for what), then drive.
    Upstream,
    /// Ask the server thread for a config reload; [`Conn::reload_done`] brings the answer.
    Reload,
    /// Every replica is at its limit: put the connection in its model's wait queue
    /// ([`Conn::queued_route`], then [`Conn::wait_in_queue`]); [`Conn::granted`] takes it
    /// out.
    Queue,
    /// Close the connection (and any upstream it holds).
    Close,
}

/// What a connection may use from its worker while being driven.
pub struct Ctx<'a> {
    pub now: Instant,
    pub pool: &'a Pool,
    /// The current routing table (a request keeps the one it started with).
    pub routes: &'a Arc<Routes>,
    pub in_flight: &'a Arc<AtomicU64>,
    pub ids: &'a mut RequestIds,
    /// Reused buffer for writing heads.
    pub scratch: &'a mut Vec<u8>,
    /// Metrics and the access log.
    pub obs: &'a mut Obs,
    /// This worker's replica choosers (over the models' process-wide slots).
    pub balancers: &'a mut Balancers,
    /// Boxes and lists kept from finished requests for the next ones.
    pub spares: &'a mut Spares,
}

/// The phases of a client connection.
enum Phase {
    /// Between requests; holds no buffer unless pipelined bytes are waiting.
    Idle,
    /// Reading a request head; the deadline is absolute from `started` (slowloris).
    Head { started: Instant, scanned: usize },
    /// Reading and scanning a body before it can be routed.
    Body(Box<BodyRead>),
    /// Exchanging with an upstream.
    Proxy(Box<Exchange>),
    /// After a `101` to a WebSocket upgrade: raw bytes both ways (`conn/tunnel.rs`).
    Tunnel(Box<Tunnel>),
    /// Writing a locally made response; then the next request, or close.
    Respond { close: bool },
    /// Waiting for the server thread to finish an `/admin/reload`.
    Reloading { close: bool },
    /// Our last byte is out and FIN sent; discarding input until the client's FIN, so
    /// unread input does not turn our close into a reset that eats the response.
    Linger { until: Instant, discarded: usize },
    /// Finished; the worker removes it.
    Closed,
}

pub struct Conn {
    pub client: Sock,
    pub peer: Peer,
    pub upstream: Option<Sock>,
    /// A reusable upstream connection to park in the pool.
    pub released: Option<(Arc<str>, Sock)>,
    /// Upstream sockets to close.
    pub dead: Vec<Sock>,
    /// Earliest deadline already in the worker's timer heap (lazy timers).
    pub timer_at: Option<Instant>,
    /// Tells timer entries of a previous connection in the same slot apart.
    pub generation: u64,
    /// Finish the current exchange, then close (graceful shutdown).
    pub draining: bool,
    /// The client came in over TLS (`X-Forwarded-Proto: https`).
    pub secure: bool,
    /// An upstream name to look up again (set after a connect failure).
    pub refresh_name: Option<Arc<str>>,
    phase: Phase,
    inbuf: Option<Block>,
    to_client: Outbox,
    last_activity: Instant,
    /// The current request's access log line and metrics.
    rec: Record,
    /// How to log a request cut short by a close.
    close_outcome: Outcome,
    /// Bytes of a parsed request head still at the front of `inbuf` (consumed once the
    /// request is answered or forwarded, so an answer can never loop over it).
    pending_head: usize,
    /// The current request is HTTP/1.0: a persistent connection must be announced.
    http10: bool,
    /// The current request's bearer token (its index in the routes the request started
    /// with; None when auth is off): its model scope is checked once the model is known.
    token: Option<usize>,
    /// The client's send queue as last sampled by the idle timer, and when: a client that
    /// drains it is still reading, however slowly (SPEC §11).
    send_probe: Option<(usize, Instant)>,
}

/// How long the idle timer watches a client's send queue, once it fires with bytes still
/// queued there, before deciding the client stopped taking them.
const SEND_PROBE: Duration = Duration::from_secs(1);

enum Flow {
    Again,
    Wait,
    Yield,
    Upstream,
    Reload,
    Queue,
    Close,
}

impl Conn {
    pub fn new(client: Sock, peer: Peer, secure: bool, generation: u64, now: Instant) -> Conn {
        Conn {
            client,
            peer,
            secure,
            refresh_name: None,
            upstream: None,
            released: None,
            dead: Vec::new(),
            timer_at: None,
            generation,
            draining: false,
            phase: Phase::Head {
                started: now,
                scanned: 0,
            },
            inbuf: None,
            to_client: Outbox::default(),
            last_activity: now,
            rec: Record::new(now),
            close_outcome: Outcome::ClientAbort,
            pending_head: 0,
            http10: false,
            token: None,
            send_probe: None,
        }
    }

    /// Idle between requests with nothing buffered: safe to close at shutdown. A connection
    /// accepted less than [`FRESH`] ago that has sent nothing yet is not idle: its request
    /// is most likely on the way.
    pub fn is_idle(&self, now: Instant) -> bool {
        let nothing_buffered = self.inbuf.as_ref().is_none_or(|b| b.is_empty());
        match self.phase {
            Phase::Idle => nothing_buffered,
            Phase::Head { started, .. } => {
                nothing_buffered && now.saturating_duration_since(started) >= FRESH
            }
            _ => false,
        }
    }

    /// Nothing left to wait for at shutdown but a lingering close (or a silent client).
    pub fn is_finishing(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Linger { .. } | Phase::Closed) || self.is_idle(now)
    }

    /// Drives the connection as far as readiness allows.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Want {
        for _ in 0..STEPS_PER_TURN {
            let flow = match self.phase {
                Phase::Idle | Phase::Head { .. } => self.read_head(ctx),
                Phase::Body(_) => self.read_body(ctx),
                Phase::Proxy(_) => self.with_exchange(ctx, |conn, ex, ctx| conn.pump(ex, ctx)),
                Phase::Tunnel(_) => self.with_tunnel(ctx),
                Phase::Respond { close } => self.respond(close, ctx),
                Phase::Reloading { .. } => Flow::Wait,
                Phase::Linger { .. } => self.linger(ctx),
                Phase::Closed => Flow::Close,
            };
            match flow {
                Flow::Again => continue,
                other => return self.finish_turn(other, ctx),
            }
        }
        Want::Yield
    }

    /// The idle timer of a phase that writes to the client fired: is the client still taking
    /// bytes out of its send queue? Bytes moving only inside the kernel (a slow reader of a
    /// long stream drains megabytes of socket buffers long after our last write) produce no
    /// event, so the queue is sampled here: a first sample starts a probe of `SEND_PROBE`; a
    /// later one that shows the queue shrank counts as activity. A client that took nothing
    /// is cut at most `SEND_PROBE` after `timeouts.idle`.
    fn client_still_reading(&mut self, now: Instant) -> bool {
        let queued = match self.client.stream.unsent() {
            Some(n) if n > 0 => n,
            _ => {
                self.send_probe = None;
                return false;
            }
        };
        match self.send_probe {
            // A sample taken since the last byte we moved: compare.
            Some((before, at)) if at >= self.last_activity => {
                if queued < before {
                    self.last_activity = now;
                    self.send_probe = Some((queued, now));
                    true
                } else {
                    false
                }
            }
            // None yet, or one older than our last write: start a probe.
            _ => {
                self.send_probe = Some((queued, now));
                true
            }
        }
    }

    /// `last_activity + idle`, or the end of a running send-queue probe.
    fn idle_deadline(&self, t: &Timeouts) -> Instant {
        match self.send_probe {
            Some((_, at)) if at > self.last_activity => at + SEND_PROBE.min(t.idle),
            _ => self.last_activity + t.idle,
        }
    }

    /// A deadline passed: decide what it means in the current phase.
    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>) -> Want {
        let writes_to_client = match &self.phase {
            Phase::Tunnel(_) | Phase::Respond { .. } => true,
            Phase::Proxy(ex) => ex.head_sent(),
            _ => false,
        };
        if writes_to_client && self.client_still_reading(ctx.now) {
            return Want::Wait;
        }
        self.close_outcome = Outcome::Timeout;
        let flow = match &self.phase {
            Phase::Idle
            | Phase::Linger { .. }
            | Phase::Closed
            | Phase::Respond { .. }
            | Phase::Reloading { .. }
            // An idle tunnel: no byte moved either way for `timeouts.idle`.
            | Phase::Tunnel(_) => Flow::Close,
            Phase::Head { .. } => {
                if self.inbuf.as_ref().is_some_and(|b| !b.is_empty()) {
                    self.reject(ApiError::RequestTimeout, true)
                } else {
                    Flow::Close
                }
            }
            Phase::Body(_) => self.reject(ApiError::RequestTimeout, true),
            Phase::Proxy(_) => self.with_exchange(ctx, |conn, ex, ctx| {
                if matches!(ex.link, Link::Queued { .. }) {
                    // Waited the model's queue timeout for a free replica.
                    let close = ex.close_on_error() || conn.draining;
                    conn.to_client = Outbox::default();
                    conn.reject(ApiError::Overloaded, close)
                } else if ex.head_sent() {
                    // Idle mid-stream: the only honest signal left is a close.
                    Flow::Close
                } else {
                    conn.upstream_failed(ex, Failure::Timeout, ctx)
                }
            }),
        };
        match flow {
            Flow::Again => self.drive(ctx),
            other => self.finish_turn(other, ctx),
        }
    }

    /// When this connection next needs attention if no event comes.
    pub fn deadline(&self, t: &Timeouts) -> Instant {
        match &self.phase {
            Phase::Idle => self.last_activity + t.keep_alive,
            Phase::Head { started, .. } => *started + t.header,
            Phase::Body(_) | Phase::Reloading { .. } | Phase::Closed => self.last_activity + t.idle,
            Phase::Linger { until, .. } => *until,
            Phase::Tunnel(_) | Phase::Respond { .. } => self.idle_deadline(t),
            Phase::Proxy(ex) => {
                let handshaking = self
                    .upstream
                    .as_ref()
                    .is_some_and(|up| up.stream.is_handshaking());
                match ex.link {
                    Link::Queued { since, .. } => since + ex.route.balance.queue_timeout,
                    Link::Connecting { .. } => ex.connect_started + t.connect,
                    _ if handshaking => ex.connect_started + t.connect,
                    _ => {
                        let idle = self.idle_deadline(t);
                        match (&ex.resp, t.first_byte, ex.request_sent) {
                            (Resp::Head, Some(limit), Some(sent)) => idle.min(sent + limit),
                            _ => idle,
                        }
                    }
                }
            }
        }
    }

    fn finish_turn(&mut self, flow: Flow, ctx: &mut Ctx<'_>) -> Want {
        match flow {
            Flow::Again | Flow::Yield => Want::Yield,
            Flow::Wait => Want::Wait,
            Flow::Upstream => Want::Upstream,
            Flow::Reload => Want::Reload,
            Flow::Queue => Want::Queue,
            Flow::Close => {
                // A request cut short still gets its log line.
                self.end_request(self.close_outcome, ctx);
                self.phase = Phase::Closed;
                if let Some(up) = self.upstream.take() {
                    self.dead.push(up);
                }
                Want::Close
            }
        }
    }

    /// HTTP/1.0 connections close after each response unless the response says otherwise:
    /// when we keep one open, say so (`out` holds a complete head, maybe with a body).
    fn announce_keep_alive(&self, close: bool, out: &mut Vec<u8>) {
        if !self.http10 || close {
            return;
        }
        if let Some(end) = memchr::memmem::find(out, b"\r\n\r\n") {
            let at = end + 2;
            out.splice(at..at, b"Connection: keep-alive\r\n".iter().copied());
        }
    }

    /// Counts bytes written to the client.
    fn sent(&mut self, n: usize, ctx: &mut Ctx<'_>) {
        if n > 0 {
            self.rec.bytes_out += n as u64;
            ctx.obs.counters.add_sent(n as u64);
        }
    }

    /// Finishes the current request's record (log line and metrics), once.
    fn end_request(&mut self, outcome: Outcome, ctx: &mut Ctx<'_>) {
        if self.rec.is_active() {
            self.rec
                .finish(outcome, ctx.now, self.peer, ctx.routes, ctx.obs);
        }
    }

    /// Runs `f` with the exchange taken out of the phase (so `f` may borrow `self`). An
    /// exchange that ended goes back to the worker's spares.
    fn with_exchange(
        &mut self,
        ctx: &mut Ctx<'_>,
        f: impl FnOnce(&mut Conn, &mut Exchange, &mut Ctx<'_>) -> Flow,
    ) -> Flow {
        let Phase::Proxy(mut ex) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return Flow::Close;
        };
        let flow = f(self, &mut ex, ctx);
        if matches!(self.phase, Phase::Closed) && !matches!(flow, Flow::Close) {
            self.phase = match (&ex.resp, ex.upgrade.take()) {
                (Resp::Switched, Some(up_buf)) => Phase::Tunnel(Tunnel::from_exchange(ex, up_buf)),
                (_, upgrade) => {
                    ex.upgrade = upgrade;
                    Phase::Proxy(ex)
                }
            };
        } else {
            ctx.spares.retire_exchange(ex);
        }
        flow
    }

    /// Runs the tunnel pump with the tunnel taken out of the phase.
    fn with_tunnel(&mut self, ctx: &mut Ctx<'_>) -> Flow {
        let Phase::Tunnel(mut t) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return Flow::Close;
        };
        let flow = self.pump_tunnel(&mut t, ctx);
        if matches!(self.phase, Phase::Closed) && !matches!(flow, Flow::Close) {
            self.phase = Phase::Tunnel(t);
        }
        flow
    }
}

impl Flow {
    fn or_close_if(self, close: bool) -> Flow {
        if close {
            Flow::Close
        } else {
            self
        }
    }
}
