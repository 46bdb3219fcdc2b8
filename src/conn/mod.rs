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

use std::io::IoSliceMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod ids;
mod outbox;
mod record;
mod replicas;
mod rewrite;
mod scanner;
mod tunnel;

use ids::RequestId;
pub use ids::{InFlight, RequestIds};
use outbox::{copy_chunk, Chunk, Flush, Outbox};

pub use record::Obs;
use record::{outcome_of, Record};
pub use replicas::{needs_balancer, Balancers};
use replicas::{Hold, Resend};
use scanner::BodyScanner;
use tunnel::Tunnel;

use crate::accesslog::Outcome;
use crate::admin;
use crate::auth;
use crate::balance::Pick;
use crate::buf::{Block, Pool, BLOCK_SIZE};
use crate::config::Timeouts;
use crate::error::{self, ApiError};
use crate::h1::{
    self, BodyTracker, Method, Parse, RequestFraming, RequestHead, ResponseFraming,
    UpstreamRequest, MAX_HEAD_BYTES,
};
use crate::net::{Io, Peer};
use crate::router::{self, Backend, Route, Routes, Target};
use crate::scan::ScanError;
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
    /// ([`Conn::queued_route`]); [`Conn::try_dequeue`] takes it out.
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
    /// This worker's replica balancers.
    pub balancers: &'a mut Balancers,
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

/// A body being buffered and scanned for `model`.
struct BodyRead {
    head: RequestHead,
    /// The raw head at `[0, head_len)`, then bytes read with it.
    head_block: Block,
    /// Body bytes after the head that were read with it.
    initial: usize,
    body: Vec<Block>,
    tracker: BodyTracker,
    scanner: BodyScanner,
    payload: u64,
    routes: Arc<Routes>,
    /// Blocks offered to the next read (1 up to `READ_AHEAD`).
    read_ahead: usize,
    /// A `/route/{model}/…` request to a model whose profile rewrites bodies: its route and
    /// the target to forward (the body is read whole to be rewritten).
    path_route: Option<(Arc<Route>, Vec<u8>)>,
}

/// The most blocks one body read fills: 256 KiB per syscall, as much as one `writev` sends on.
const READ_AHEAD: usize = 16;

/// Where the response is.
enum Resp {
    Head,
    Body {
        tracker: BodyTracker,
        keep_alive: bool,
    },
    Done {
        keep_alive: bool,
    },
    /// A `101` to an upgrade was forwarded: the exchange becomes a tunnel.
    Switched,
}

/// Why the upstream side failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// This address refused or timed out: the worker tries the next one.
    Connect,
    /// No address (left) to try.
    NoAddress,
    /// EOF, reset or a failed write before a complete response head.
    Broken,
    Timeout,
    /// The response head was not HTTP we can forward.
    BadResponse,
}

/// One request/response exchange with an upstream.
struct Exchange {
    route: Arc<Route>,
    method: Method,
    client_keep_alive: bool,
    to_upstream: Outbox,
    /// The request body still streaming from the client (`/route/` requests).
    req_body: Option<BodyTracker>,
    req_payload: u64,
    max_body: u64,
    resp: Resp,
    /// The response block, reserved before the request goes upstream: the exchange can
    /// always read its response, whatever the pool's budget does meanwhile.
    resp_buf: Block,
    /// The request block for a body streamed from the client (`/route/`).
    req_buf: Option<Block>,
    /// Any byte came from the upstream: no retry from here on.
    upstream_spoke: bool,
    /// The client got the response head: errors can only truncate now.
    head_sent: bool,
    client_close: bool,
    /// The upstream died mid-body: close the client after what we have.
    truncated: bool,
    client_has_pending: bool,
    connecting: bool,
    reused: bool,
    retried: bool,
    fresh_only: bool,
    addr_attempt: usize,
    connect_started: Instant,
    request_sent: Option<Instant>,
    /// The replica in use (outstanding until the exchange ends).
    hold: Hold,
    /// Replicas this request already failed on (bit i = backend i).
    tried: u64,
    /// The request head for another replica, when the route has several.
    resend: Option<Resend>,
    /// Failovers so far (bounded by the route's `retries`).
    rec_failovers: u32,
    /// Waiting in the model's queue since then (every replica at its limit).
    queued: Option<Instant>,
    /// For a WebSocket upgrade: the client→upstream block of the tunnel a `101` opens,
    /// reserved with the exchange's other block.
    upgrade: Option<Block>,
    /// Counts against `maxConcurrentRequests` until the upstream has sent the whole response
    /// (before its last bytes reach the client, so a client that reacts to them at once on
    /// another connection never finds the slot still taken).
    slot: Option<InFlight>,
}

impl Exchange {
    fn response_done(&self) -> bool {
        matches!(self.resp, Resp::Done { .. })
    }

    /// The upstream has sent the whole response: its in-flight slot is free from now on.
    fn upstream_finished(&mut self, keep_alive: bool) {
        self.resp = Resp::Done { keep_alive };
        self.slot = None;
    }
}

/// One client connection.
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
}

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

    /// The server thread finished an `/admin/reload`: the listed model count, or every
    /// problem with the new config.
    pub fn reload_done(&mut self, result: Result<usize, Vec<String>>, ctx: &mut Ctx<'_>) -> Want {
        let Phase::Reloading { close } = self.phase else {
            return Want::Wait;
        };
        match result {
            Ok(models) => {
                self.rec.status = 200;
                let body = admin::reloaded(models);
                let mut out = Vec::with_capacity(body.len() + 160);
                error::write_json_response(200, &body, close, false, &mut out);
                self.announce_keep_alive(close, &mut out);
                self.to_client.push(Chunk::Owned(out));
                self.phase = Phase::Respond { close };
            }
            Err(problems) => {
                let _ = self.reject(ApiError::Internal(problems.join("; ")), close);
            }
        }
        self.drive(ctx)
    }

    /// The route, backend index, attempt and whether a pooled connection may be used, when the connection
    /// waits for an upstream socket.
    pub fn upstream_wanted(&self) -> Option<(&Arc<Route>, usize, usize, bool)> {
        match &self.phase {
            Phase::Proxy(ex) if self.upstream.is_none() => {
                Some((&ex.route, ex.hold.index, ex.addr_attempt, ex.fresh_only))
            }
            _ => None,
        }
    }

    /// The route whose queue this connection waits in.
    pub fn queued_route(&self) -> Option<&Arc<Route>> {
        match &self.phase {
            Phase::Proxy(ex) if ex.queued.is_some() => Some(&ex.route),
            _ => None,
        }
    }

    /// A waiting request tries for a replica again: None while every replica is still
    /// full, else what to do next (connect, or the 503 answer).
    pub fn try_dequeue(&mut self, ctx: &mut Ctx<'_>) -> Option<Want> {
        let Phase::Proxy(ex) = &self.phase else {
            return Some(Want::Wait);
        };
        ex.queued?;
        let route = Arc::clone(&ex.route);
        let balancer = ctx.balancers.get(&route)?;
        let hold = match Hold::take(&route, &balancer, ctx.now, 0) {
            Ok(hold) => hold,
            Err(Pick::Full) => return None,
            Err(_) => {
                let flow = self.with_exchange(|conn, ex| {
                    let close = ex.req_body.is_some() || !ex.client_keep_alive;
                    conn.reject(ApiError::UpstreamUnavailable, close)
                });
                return Some(self.finish_turn(flow, ctx));
            }
        };
        let flow = self.with_exchange(|conn, ex| conn.dequeued(ex, hold, ctx));
        Some(self.finish_turn(flow, ctx))
    }

    /// The model's queue is full: 503 `overloaded` with `Retry-After`.
    pub fn queue_refused(&mut self, ctx: &mut Ctx<'_>) -> Want {
        let flow = self.with_exchange(|conn, ex| {
            let close = ex.req_body.is_some() || !ex.client_keep_alive;
            conn.to_client = Outbox::default();
            conn.reject(ApiError::Overloaded, close)
        });
        match flow {
            Flow::Again => self.drive(ctx),
            other => self.finish_turn(other, ctx),
        }
    }

    /// The upstream request head for `backend`, from the copy kept for sending again.
    fn resend_head(&self, resend: &Resend, backend: &Backend, ctx: &mut Ctx<'_>) -> Chunk {
        let raw = resend.raw.bytes();
        let target = match &resend.target {
            Some(t) => &t[..],
            None => raw.get(resend.head.target.clone()).unwrap_or(b"/"),
        };
        build_upstream_head(
            raw,
            &resend.head,
            backend,
            target,
            (self.peer, self.secure),
            self.rec.request_id.get(),
            resend.strip_authorization,
            ctx,
        )
    }

    /// Out of the queue with a replica: build the request head for it and connect.
    fn dequeued(&mut self, ex: &mut Exchange, hold: Hold, ctx: &mut Ctx<'_>) -> Flow {
        let (Some(resend), Some(backend)) = (ex.resend.as_ref(), hold.backend(&ex.route)) else {
            let close = ex.req_body.is_some() || !ex.client_keep_alive;
            return self.reject(ApiError::UpstreamUnavailable, close);
        };
        let head_chunk = self.resend_head(resend, backend, ctx);
        ex.to_upstream.prepend(head_chunk);
        self.rec.replica = hold.index;
        ex.hold = hold;
        ex.queued = None;
        ex.connect_started = ctx.now;
        Flow::Upstream
    }

    /// Hands the connection its upstream socket (`reused` from the pool, else connecting).
    /// (`TCP_NODELAY` was set when the pooled connection was first connected.)
    pub fn attach_upstream(&mut self, sock: Sock, reused: bool, now: Instant) {
        if let Phase::Proxy(ex) = &mut self.phase {
            ex.reused = reused;
            ex.connecting = !reused;
            ex.connect_started = now;
        }
        self.upstream = Some(sock);
    }

    /// The worker could not start a connect to the current address (`exhausted`: there is
    /// no such address).
    pub fn connect_failed(&mut self, exhausted: bool, ctx: &mut Ctx<'_>) -> Want {
        let failure = if exhausted {
            Failure::NoAddress
        } else {
            Failure::Connect
        };
        let flow = self.with_exchange(|conn, ex| conn.upstream_failed(ex, failure, ctx));
        self.finish_turn(flow, ctx)
    }

    /// Drives the connection as far as readiness allows.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Want {
        for _ in 0..STEPS_PER_TURN {
            let flow = match self.phase {
                Phase::Idle | Phase::Head { .. } => self.read_head(ctx),
                Phase::Body(_) => self.read_body(ctx),
                Phase::Proxy(_) => self.with_exchange(|conn, ex| conn.pump(ex, ctx)),
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

    /// A deadline passed: decide what it means in the current phase.
    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>) -> Want {
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
            Phase::Proxy(_) => self.with_exchange(|conn, ex| {
                if ex.queued.is_some() {
                    // Waited the model's queue timeout for a free replica.
                    let close = ex.req_body.is_some() || !ex.client_keep_alive || conn.draining;
                    conn.to_client = Outbox::default();
                    conn.reject(ApiError::Overloaded, close)
                } else if ex.head_sent {
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
            Phase::Body(_) | Phase::Respond { .. } | Phase::Reloading { .. } | Phase::Closed => {
                self.last_activity + t.idle
            }
            Phase::Linger { until, .. } => *until,
            Phase::Proxy(ex) if ex.queued.is_some() => {
                let since = ex.queued.unwrap_or(self.last_activity);
                since + ex.route.balance.queue_timeout
            }
            Phase::Tunnel(_) => self.last_activity + t.idle,
            Phase::Proxy(ex) => {
                let handshaking = self
                    .upstream
                    .as_ref()
                    .is_some_and(|up| up.stream.is_handshaking());
                if ex.connecting || handshaking {
                    ex.connect_started + t.connect
                } else {
                    let idle = self.last_activity + t.idle;
                    match (&ex.resp, t.first_byte, ex.request_sent) {
                        (Resp::Head, Some(limit), Some(sent)) => idle.min(sent + limit),
                        _ => idle,
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

    /// Runs `f` with the exchange taken out of the phase (so `f` may borrow `self`).
    fn with_exchange(&mut self, f: impl FnOnce(&mut Conn, &mut Exchange) -> Flow) -> Flow {
        let Phase::Proxy(mut ex) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return Flow::Close;
        };
        let flow = f(self, &mut ex);
        if matches!(self.phase, Phase::Closed) && !matches!(flow, Flow::Close) {
            self.phase = match (&ex.resp, ex.upgrade.take()) {
                (Resp::Switched, Some(up_buf)) => Phase::Tunnel(Tunnel::from_exchange(ex, up_buf)),
                (_, upgrade) => {
                    ex.upgrade = upgrade;
                    Phase::Proxy(ex)
                }
            };
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

    // ----- reading a request head -------------------------------------------------------

    fn read_head(&mut self, ctx: &mut Ctx<'_>) -> Flow {
        loop {
            if let Some(buf) = self.inbuf.as_ref().filter(|b| !b.is_empty()) {
                let (started, scanned) = match self.phase {
                    Phase::Head { started, scanned } => (started, scanned),
                    _ => (ctx.now, 0),
                };
                let bytes = buf.filled();
                if h1::head_end(bytes, scanned).is_some() {
                    match h1::parse_request(bytes) {
                        Ok(Parse::Complete(head)) => return self.start_request(head, ctx),
                        Ok(Parse::Partial) => {}
                        Err(e) => return self.reject(ApiError::from(e), true),
                    }
                }
                if bytes.len() > MAX_HEAD_BYTES {
                    return self.reject(ApiError::HeadTooLarge, true);
                }
                self.phase = Phase::Head {
                    started,
                    scanned: bytes.len(),
                };
            }
            if !self.client.readable {
                if self.inbuf.as_ref().is_some_and(|b| b.is_empty()) {
                    self.inbuf = None;
                }
                return Flow::Wait;
            }
            if self.inbuf.is_none() {
                match ctx.pool.take() {
                    Some(block) => self.inbuf = Some(block),
                    None => return self.reject(ApiError::Overloaded, true),
                }
            }
            let Some(buf) = self.inbuf.as_mut() else {
                return Flow::Close;
            };
            if buf.spare().is_empty() && !buf.grow(MAX_HEAD_BYTES + 1) {
                return self.reject(ApiError::Overloaded, true);
            }
            match self.client.read(buf.spare()) {
                Io::Done(n) => {
                    buf.commit(n);
                    self.last_activity = ctx.now;
                    ctx.obs.counters.add_received(n as u64);
                }
                Io::WouldBlock => self.client.readable = false,
                Io::Eof | Io::Failed(_) => return Flow::Close,
            }
        }
    }

    /// A complete head: authenticate, answer locally, or start a proxied exchange.
    fn start_request(&mut self, head: RequestHead, ctx: &mut Ctx<'_>) -> Flow {
        let routes = Arc::clone(ctx.routes);
        let Some(buf) = self.inbuf.as_ref() else {
            return Flow::Close;
        };
        let raw = buf.filled();
        self.pending_head = head.head_len;
        self.http10 = head.version == h1::Version::Http10;
        self.rec
            .begin(ctx.now, raw, &head, routes.access_log, ctx.ids);
        self.close_outcome = Outcome::ClientAbort;
        let has_body = head.framing != RequestFraming::Empty;
        // Errors before the body is read leave it on the wire: close (PITFALLS 12).
        let close_on_error = has_body || !head.keep_alive;
        let target = raw.get(head.target.clone()).unwrap_or(b"/");
        let decision = match router::classify(target) {
            Target::Health => Decision::Local(Local::Health),
            Target::Metrics => Decision::Local(Local::Metrics),
            Target::AdminReload => Decision::AdminReload,
            Target::ListModels => Decision::Local(Local::List),
            Target::GetModel(id) => Decision::Local(Local::Get(id)),
            Target::BadEncoding => {
                Decision::Reject(ApiError::BadRequest("invalid percent-encoding in the path"))
            }
            Target::ByPath { model, forward } => {
                let mut path = Vec::with_capacity(forward.rest.len() + forward.query.len() + 1);
                forward.write_to(&mut path);
                Decision::ByPath(model, path)
            }
            Target::ByBody => Decision::ByBody,
        };
        // Only `GET`/`HEAD /health` is open (SPEC §11): a wrong method anywhere needs the
        // token before it may learn the endpoint's methods.
        let open_health = matches!(decision, Decision::Local(Local::Health))
            && admin::method_allowed(head.method);
        let needs_auth = !routes.auth_tokens.is_empty() && !open_health;
        self.token = None;
        if needs_auth {
            let presented = head
                .authorization
                .clone()
                .and_then(|r| raw.get(r))
                .and_then(auth::bearer_token);
            self.token = presented.and_then(|t| auth::find_token(t, &routes.auth_tokens));
            if self.token.is_none() {
                return self.reject(ApiError::InvalidApiKey, close_on_error);
            }
            // Every authenticated request counts against the token's rate limit.
            if let Err(err) = routes.admit(self.token, ctx.now) {
                return self.reject(err, close_on_error);
            }
        }
        match decision {
            Decision::Reject(err) => self.reject(err, close_on_error),
            Decision::Local(local) => {
                if !admin::method_allowed(head.method) {
                    let allow = "GET, HEAD";
                    return self.reject(ApiError::MethodNotAllowed { allow }, close_on_error);
                }
                let json = "application/json";
                let body = match local {
                    Local::Health => {
                        let counts = replica_counts(&routes, ctx);
                        let counts: Vec<(&str, usize, usize)> = counts
                            .iter()
                            .map(|(n, h, t)| (n.as_str(), *h, *t))
                            .collect();
                        Ok((json, admin::health_with_replicas(&routes, &counts)))
                    }
                    Local::List => Ok((json, admin::list_models(&routes, self.token))),
                    Local::Get(id) => admin::get_model(&routes, &id, self.token).map(|b| (json, b)),
                    Local::Metrics => {
                        let in_flight = ctx.in_flight.load(Ordering::Relaxed);
                        let text = ctx.obs.metrics.render(in_flight).into_bytes();
                        Ok(("text/plain; version=0.0.4; charset=utf-8", text))
                    }
                };
                match body {
                    Ok((content_type, body)) => {
                        let mut out = Vec::with_capacity(body.len() + 160);
                        self.rec.status = 200;
                        error::write_response(
                            200,
                            content_type,
                            &body,
                            close_on_error,
                            head.method == Method::Head,
                            &mut out,
                        );
                        self.announce_keep_alive(close_on_error, &mut out);
                        self.consume_head(head.head_len);
                        self.to_client.push(Chunk::Owned(out));
                        self.phase = Phase::Respond {
                            close: close_on_error,
                        };
                        Flow::Again
                    }
                    Err(err) => self.reject(err, close_on_error),
                }
            }
            Decision::ByPath(model, path) => {
                self.start_path_route(head, &model, &path, routes, ctx)
            }
            Decision::ByBody if head.upgrade => self.start_upgrade(head, routes, ctx),
            Decision::ByBody => self.start_body(head, routes),
            Decision::AdminReload => {
                if head.method != Method::Post {
                    let allow = "POST";
                    return self.reject(ApiError::MethodNotAllowed { allow }, close_on_error);
                }
                // Never reachable from afar, whatever token the caller holds.
                let peer_ip = match self.peer {
                    Peer::Tcp(addr) => Some(addr.ip()),
                    Peer::Unix => None,
                };
                if !crate::accesslog::is_local_peer(peer_ip) {
                    return self.reject(
                        ApiError::Forbidden("/admin/reload is only served to local clients"),
                        close_on_error,
                    );
                }
                self.consume_head(head.head_len);
                self.phase = Phase::Reloading {
                    close: close_on_error,
                };
                Flow::Reload
            }
        }
    }

    fn consume_head(&mut self, head_len: usize) {
        if let Some(buf) = self.inbuf.as_mut() {
            buf.consume(head_len);
        }
        self.pending_head = 0;
    }

    /// `/route/{model}/…`: the route is known from the path, so the body streams through.
    fn start_path_route(
        &mut self,
        head: RequestHead,
        model: &str,
        path: &[u8],
        routes: Arc<Routes>,
        ctx: &mut Ctx<'_>,
    ) -> Flow {
        let close_on_error = head.framing != RequestFraming::Empty || !head.keep_alive;
        let Some(route) = routes.get(model).cloned() else {
            return self.reject(ApiError::ModelNotFound(model.to_owned()), close_on_error);
        };
        self.rec.route = Some(Arc::clone(&route));
        if !routes.token_allows(self.token, &route) {
            return self.reject(ApiError::ModelNotAllowed(model.to_owned()), close_on_error);
        }
        if let Err(err) = routes.token_allows_query_models(self.token, &route, path) {
            return self.reject(err, close_on_error);
        }
        if let RequestFraming::Length(n) = head.framing {
            if route.max_body_bytes > 0 && n > route.max_body_bytes {
                return self.reject(ApiError::BodyTooLarge, true);
            }
        }
        if head.upgrade
            && !matches!(
                head.framing,
                RequestFraming::Empty | RequestFraming::Length(0)
            )
        {
            return self.reject(
                ApiError::BadRequest("a WebSocket upgrade has no body"),
                true,
            );
        }
        // A scoped token's body is read too: a backend serving several models would follow
        // its `model`, which must stay in scope (an upstream name set by the profile wins).
        let scoped_body = routes.token_is_scoped(self.token)
            && route.profile.upstream_model.is_none()
            && !matches!(
                head.framing,
                RequestFraming::Empty | RequestFraming::Length(0)
            );
        if (route.profile.rewrites() && head.framing != RequestFraming::Empty) || scoped_body {
            // The profile rewrites the body: read it whole first, as for a body-routed request.
            let flow = self.start_body(head, routes);
            if let Phase::Body(body) = &mut self.phase {
                body.path_route = Some((route, path.to_vec()));
            }
            return flow;
        }
        let Some(slot) = InFlight::acquire(ctx.in_flight, routes.max_concurrent_requests) else {
            return self.reject(ApiError::Overloaded, close_on_error);
        };
        // A tunnel's client→upstream block is reserved with the response block.
        let upgrade = if head.upgrade {
            match ctx.pool.take() {
                Some(block) => Some(block),
                None => return self.reject(ApiError::Overloaded, close_on_error),
            }
        } else {
            None
        };
        // One block per direction, reserved before anything reaches the upstream.
        let streaming = head.framing != RequestFraming::Empty;
        let Some(resp_buf) = ctx.pool.take() else {
            return self.reject(ApiError::Overloaded, close_on_error);
        };
        let stream = if streaming {
            match ctx.pool.take() {
                Some(block) => Some((BodyTracker::for_request(head.framing), block)),
                None => return self.reject(ApiError::Overloaded, close_on_error),
            }
        } else {
            None
        };
        // None: every replica is at its limit and the request waits in the queue.
        let hold = match choose_replica(&route, ctx) {
            Ok(hold) => hold,
            Err(err) => return self.reject(err, close_on_error),
        };
        let Some(buf) = self.inbuf.as_ref() else {
            return Flow::Close;
        };
        let strip = !routes.auth_tokens.is_empty();
        let keep_head = hold.is_none() || (route.backends.len() > 1 && !streaming);
        let resend = keep_head.then(|| Resend {
            raw: copy_chunk(buf.filled().get(..head.head_len).unwrap_or(&[]), ctx.pool),
            head: head.clone(),
            target: Some(path.to_vec()),
            strip_authorization: strip,
        });
        let head_chunk = match &hold {
            None => None,
            Some(hold) => {
                let Some(backend) = hold.backend(&route) else {
                    return self.reject(ApiError::UpstreamUnavailable, close_on_error);
                };
                self.rec.replica = hold.index;
                Some(build_upstream_head(
                    buf.filled(),
                    &head,
                    backend,
                    path,
                    (self.peer, self.secure),
                    self.rec.request_id.get(),
                    strip,
                    ctx,
                ))
            }
        };
        if head.expect_continue {
            self.to_client.push(Chunk::Static(CONTINUE));
        }
        self.consume_head(head.head_len);
        let mut to_upstream = Outbox::retaining(!streaming);
        to_upstream.extend(head_chunk);
        let max_body = route.max_body_bytes;
        let mut ex = Exchange::new(
            route,
            &head,
            to_upstream,
            stream,
            resp_buf,
            max_body,
            slot,
            ctx.now,
        );
        ex.resend = resend;
        ex.upgrade = upgrade;
        self.enter_proxy(ex, hold, ctx.now)
    }

    /// The exchange begins: with a replica it connects, without one it waits in the queue.
    fn enter_proxy(&mut self, mut ex: Exchange, hold: Option<Hold>, now: Instant) -> Flow {
        let flow = match hold {
            Some(hold) => {
                ex.hold = hold;
                Flow::Upstream
            }
            None => {
                ex.queued = Some(now);
                Flow::Queue
            }
        };
        self.phase = Phase::Proxy(Box::new(ex));
        flow
    }

    /// Routed by body: check what can be checked from the head, then read the body.
    fn start_body(&mut self, head: RequestHead, routes: Arc<Routes>) -> Flow {
        let close_on_error = head.framing != RequestFraming::Empty || !head.keep_alive;
        if head.content_encoded {
            return self.reject(ApiError::UnsupportedMediaType, close_on_error);
        }
        // JSON, or multipart form data (routed by its `model` field).
        let content_type = head
            .content_type
            .clone()
            .and_then(|r| self.inbuf.as_ref()?.filled().get(r));
        let mut scanner = match BodyScanner::for_content_type(content_type) {
            Ok(scanner) => scanner,
            Err(err) => return self.reject(err, close_on_error),
        };
        match head.framing {
            RequestFraming::Empty => {
                self.consume_head(head.head_len);
                let err = match scanner.finish() {
                    Err(err) => err,
                    Ok(_) => ApiError::BadRequest("empty body"),
                };
                return self.reject(err, !head.keep_alive);
            }
            RequestFraming::Length(n)
                if routes.read_body_limit > 0 && n > routes.read_body_limit =>
            {
                return self.reject(ApiError::BodyTooLarge, true);
            }
            _ => {}
        }
        if head.expect_continue {
            self.to_client.push(Chunk::Static(CONTINUE));
        }
        let Some(head_block) = self.inbuf.take() else {
            return Flow::Close;
        };
        // The head travels with its block now.
        self.pending_head = 0;
        let mut body = Box::new(BodyRead {
            tracker: BodyTracker::for_request(head.framing),
            head,
            head_block,
            initial: 0,
            body: Vec::new(),
            scanner: if routes.media_routing {
                scanner.with_media()
            } else {
                scanner
            },
            payload: 0,
            routes,
            read_ahead: 1,
            path_route: None,
        });
        // Body bytes that came with the head stay where they are (usually the whole body):
        // the head block itself becomes the first body chunk when the request goes upstream.
        let start = body.head.head_len;
        let bytes = body.head_block.filled().get(start..).unwrap_or(&[]);
        let (consumed, result) = observe_body(
            &mut body.tracker,
            &mut body.scanner,
            &mut body.payload,
            body.routes.read_body_limit,
            bytes,
        );
        body.initial = consumed;
        self.rec.bytes_in += consumed as u64;
        match result {
            Err(ApiError::Scan(_) | ApiError::Multipart(_)) if body.tracker.is_done() => {}
            Err(err) => return self.reject(err, true),
            Ok(()) => {}
        }
        self.phase = Phase::Body(body);
        Flow::Again
    }

    // ----- reading a body to route it ---------------------------------------------------

    fn read_body(&mut self, ctx: &mut Ctx<'_>) -> Flow {
        match self.to_client.flush(&mut self.client, None) {
            Flush::Failed => return Flow::Close,
            Flush::Wrote { bytes, .. } => self.sent(bytes, ctx),
        }
        let Phase::Body(body) = &mut self.phase else {
            return Flow::Close;
        };
        loop {
            if body.tracker.is_done() {
                return self.finish_body(&[], ctx);
            }
            if !self.client.readable {
                return Flow::Wait;
            }
            // Room for one read: what is left of the last block, then fresh blocks while
            // reads keep filling all they are offered, so a big body costs one syscall per
            // READ_AHEAD blocks. A sized body is never read past its end (the next request
            // must stay in the socket); a chunked one, whose end shows only when seen, is read
            // a block at a time.
            let (mut limit, ahead) = match body.head.framing {
                RequestFraming::Length(n) => (
                    usize::try_from(n.saturating_sub(body.payload)).unwrap_or(usize::MAX),
                    body.read_ahead,
                ),
                _ => (usize::MAX, 1),
            };
            let open = body
                .body
                .iter()
                .position(Block::has_room)
                .unwrap_or(body.body.len());
            while body.body.len() < open + ahead
                && body.body.len() - open < limit.div_ceil(BLOCK_SIZE)
            {
                match ctx.pool.take() {
                    Some(block) => body.body.push(block),
                    None if body.body.len() > open => break,
                    None => return self.reject(ApiError::Overloaded, true),
                }
            }
            let mut room = body.body.get_mut(open..).unwrap_or_default().iter_mut();
            let mut bufs: [IoSliceMut<'_>; READ_AHEAD] = std::array::from_fn(|_| {
                let spare = room.next().map_or(&mut [][..], Block::spare);
                let len = spare.len().min(limit);
                limit -= len;
                IoSliceMut::new(&mut spare[..len])
            });
            let offered: usize = bufs.iter().map(|b| b.len()).sum();
            match self.client.read_vectored(&mut bufs) {
                Io::Done(n) => {
                    self.last_activity = ctx.now;
                    ctx.obs.counters.add_received(n as u64);
                    body.read_ahead = if n == offered {
                        (body.read_ahead * 2).min(READ_AHEAD)
                    } else {
                        1
                    };
                    let mut left = n;
                    let mut index = open;
                    while left > 0 {
                        let Some(block) = body.body.get_mut(index) else {
                            return Flow::Close;
                        };
                        let start = block.len();
                        let got = left.min(block.spare().len());
                        block.commit(got);
                        left -= got;
                        index += 1;
                        let (consumed, result) = observe_body(
                            &mut body.tracker,
                            &mut body.scanner,
                            &mut body.payload,
                            body.routes.read_body_limit,
                            &block.filled()[start..],
                        );
                        self.rec.bytes_in += consumed as u64;
                        match result {
                            // Invalid JSON in a body that ended here: answer like any other
                            // routing error, keeping the connection when the framing allows.
                            Err(ApiError::Scan(_) | ApiError::Multipart(_))
                                if body.tracker.is_done() => {}
                            Err(err) => return self.reject(err, true),
                            Ok(()) => {}
                        }
                        if consumed < got {
                            // The next pipelined request began in this read.
                            let mut overshoot = block.filled()[start + consumed..].to_vec();
                            block.truncate(start + consumed);
                            for later in body.body.get(index..).unwrap_or_default() {
                                overshoot.extend_from_slice(later.filled());
                            }
                            body.body.truncate(index);
                            return self.finish_body(&overshoot, ctx);
                        }
                    }
                }
                Io::WouldBlock => {
                    self.client.readable = false;
                    return Flow::Wait;
                }
                // A truncated request: nothing sensible to answer.
                Io::Eof | Io::Failed(_) => return Flow::Close,
            }
        }
    }

    /// The whole body is here: route it by its model.
    fn finish_body(&mut self, overshoot: &[u8], ctx: &mut Ctx<'_>) -> Flow {
        let Phase::Body(mut body) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return Flow::Close;
        };
        // Blocks offered to a read that ended the body early go back before anything else
        // is reserved.
        body.body.retain(|block| !block.is_empty());
        let keep_alive = body.head.keep_alive;
        let saw_media = body.scanner.saw_media();
        let path_route = body.path_route.take();
        let verdict = body.scanner.finish();
        let verdict = match &path_route {
            Some((route, _))
                if body.routes.token_is_scoped(self.token)
                    && route.profile.upstream_model.is_none() =>
            {
                rewrite::scoped_path_verdict(verdict, route, &body.routes, self.token)
            }
            _ => verdict,
        };
        let routed = match (&path_route, verdict) {
            // The path named the route (scope already checked): the body only has to be one
            // JSON object, within the route's cap.
            (
                Some((route, _)),
                Ok(_)
                | Err(ApiError::Scan(
                    ScanError::MissingModel | ScanError::InvalidModel | ScanError::DuplicateModel,
                )),
            ) => {
                if route.max_body_bytes > 0 && body.payload > route.max_body_bytes {
                    Err(ApiError::BodyTooLarge)
                } else {
                    Ok(Arc::clone(route))
                }
            }
            (_, Ok(model)) => match body.routes.get(model) {
                Some(route) => {
                    // The token's scope is checked on the name the client asked for; a
                    // media detour then picks the route that serves it, and its body cap.
                    self.rec.route = Some(Arc::clone(route));
                    if !body.routes.token_allows(self.token, route) {
                        Err(ApiError::ModelNotAllowed(model.to_owned()))
                    } else {
                        let route =
                            rewrite::media_detour(&body.routes, Arc::clone(route), saw_media);
                        self.rec.route = Some(Arc::clone(&route));
                        if route.max_body_bytes > 0 && body.payload > route.max_body_bytes {
                            // The body was read under the largest cap; this model's is smaller.
                            Err(ApiError::BodyTooLarge)
                        } else {
                            Ok(route)
                        }
                    }
                }
                None => Err(ApiError::ModelNotFound(model.to_owned())),
            },
            (_, Err(e)) => Err(e),
        };
        let slot = routed.and_then(|route| {
            let slot = InFlight::acquire(ctx.in_flight, body.routes.max_concurrent_requests)
                .ok_or(ApiError::Overloaded)?;
            // The response block is reserved before anything reaches the upstream.
            let resp_buf = ctx.pool.take().ok_or(ApiError::Overloaded)?;
            let hold = choose_replica(&route, ctx)?;
            Ok((route, slot, resp_buf, hold))
        });
        let prepared = slot.and_then(|(route, slot, resp_buf, hold)| {
            let raw = body.head_block.filled();
            // A virtual model with a profile: the whole body is here; re-encode it.
            let rewritten = if route.profile.rewrites() {
                let start = body.head.head_len;
                let first = raw.get(start..start + body.initial).unwrap_or(&[]);
                Some(rewrite::rewrite_body(
                    &route.profile,
                    &body.head,
                    first,
                    &body.body,
                )?)
            } else {
                None
            };
            let head = rewritten.as_ref().map_or(&body.head, |(_, h)| h);
            let target = match &path_route {
                Some((_, path)) => path.as_slice(),
                None => raw.get(body.head.target.clone()).unwrap_or(b"/"),
            };
            let strip = !body.routes.auth_tokens.is_empty();
            let resend = (hold.is_none() || route.backends.len() > 1).then(|| Resend {
                raw: copy_chunk(raw.get(..body.head.head_len).unwrap_or(&[]), ctx.pool),
                head: head.clone(),
                target: path_route.as_ref().map(|(_, path)| path.clone()),
                strip_authorization: strip,
            });
            let head_chunk = match &hold {
                None => None,
                Some(hold) => {
                    let backend = hold.backend(&route).ok_or(ApiError::UpstreamUnavailable)?;
                    self.rec.replica = hold.index;
                    Some(build_upstream_head(
                        raw,
                        head,
                        backend,
                        target,
                        (self.peer, self.secure),
                        self.rec.request_id.get(),
                        strip,
                        ctx,
                    ))
                }
            };
            let body_out = rewritten.map(|(b, _)| b);
            Ok((route, slot, resp_buf, head_chunk, hold, resend, body_out))
        });
        // What follows the body is the next request: it becomes the read buffer again.
        let mut first = body.head_block;
        first.consume(body.head.head_len);
        let pipelined = first.filled().get(body.initial..).unwrap_or(&[]);
        let mut keep_alive = keep_alive;
        if pipelined.is_empty() && overshoot.is_empty() {
            self.inbuf = None;
        } else {
            match ctx.pool.take() {
                Some(mut next) => {
                    next.extend(pipelined);
                    next.extend(overshoot);
                    self.inbuf = Some(next);
                }
                // No room to keep the next request: answer this one, then close, so the
                // client learns it must send it again.
                None => keep_alive = false,
            }
        }
        first.truncate(body.initial);
        body.head.keep_alive = keep_alive;
        match prepared {
            Err(err) => self.reject(err, !keep_alive),
            Ok((route, slot, resp_buf, head_chunk, hold, resend, rewritten)) => {
                let mut to_upstream = Outbox::retaining(true);
                to_upstream.extend(head_chunk);
                if let Some(new_body) = rewritten {
                    // The raw blocks go back to the pool when `first` and `body` drop.
                    to_upstream.push(Chunk::Owned(new_body));
                } else {
                    to_upstream.push(Chunk::Block(first));
                    for block in body.body.drain(..) {
                        to_upstream.push(Chunk::Block(block));
                    }
                }
                let mut ex = Exchange::new(
                    route,
                    &body.head,
                    to_upstream,
                    None,
                    resp_buf,
                    body.routes.max_body_bytes,
                    slot,
                    ctx.now,
                );
                ex.resend = resend;
                self.enter_proxy(ex, hold, ctx.now)
            }
        }
    }

    // ----- the exchange -----------------------------------------------------------------

    /// Moves bytes both ways until nothing is ready.
    fn pump(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Flow {
        if ex.queued.is_some() {
            // Nothing moves until a replica has room (or the queue timeout answers 503). A
            // client that leaves meanwhile must not keep its place: it would take a replica
            // slot for an answer nobody reads.
            if ex.req_body.is_none()
                && !ex.client_has_pending
                && self.client.readable
                && self.inbuf.as_ref().is_none_or(|b| b.is_empty())
            {
                match self.client.stream.peek() {
                    Io::Done(_) => ex.client_has_pending = true,
                    Io::WouldBlock => self.client.readable = false,
                    Io::Eof | Io::Failed(_) => return Flow::Close,
                }
            }
            return Flow::Wait;
        }
        for _ in 0..STEPS_PER_TURN {
            let mut progress = false;
            let Some(up) = self.upstream.as_mut() else {
                return Flow::Upstream;
            };
            if ex.connecting {
                if !up.writable && !up.readable {
                    return Flow::Wait;
                }
                match up.stream.connect_result() {
                    Ok(true) => {
                        ex.connecting = false;
                        up.stream.set_nodelay();
                        progress = true;
                    }
                    Ok(false) => {
                        up.writable = false;
                        up.readable = false;
                        return Flow::Wait;
                    }
                    Err(_) => return self.upstream_failed(ex, Failure::Connect, ctx),
                }
            }
            // Request bytes to the upstream: the queued head (and buffered body), then the
            // streamed body block.
            if !ex.to_upstream.drained(up, ex.req_buf.as_ref()) {
                match ex.to_upstream.flush(up, ex.req_buf.as_mut()) {
                    Flush::Failed => return self.upstream_failed(ex, Failure::Broken, ctx),
                    Flush::Wrote { moved, .. } => {
                        if moved {
                            progress = true;
                            self.last_activity = ctx.now;
                        }
                    }
                }
                if ex.request_sent.is_none()
                    && ex.req_body.is_none()
                    && ex.to_upstream.drained(up, ex.req_buf.as_ref())
                {
                    ex.request_sent = Some(ctx.now);
                }
            }
            // A streamed request body from the client, one block at a time.
            if ex.req_body.is_some() && ex.req_buf.as_ref().is_some_and(|b| b.is_empty()) {
                match self.stream_request_body(ex, ctx) {
                    Ok(moved) => progress |= moved,
                    Err(flow) => return flow,
                }
            }
            // Response bytes from the upstream, only when the client took the last ones.
            let relaying = !matches!(ex.resp, Resp::Head);
            let tail = relaying.then_some(&ex.resp_buf);
            if !ex.response_done() && !ex.truncated && self.to_client.drained(&self.client, tail) {
                match self.read_upstream(ex, ctx) {
                    Ok(moved) => progress |= moved,
                    Err(flow) => return flow,
                }
                if matches!(ex.resp, Resp::Switched) {
                    // `with_exchange` turns the exchange into a tunnel.
                    return Flow::Again;
                }
            }
            let relaying = !matches!(ex.resp, Resp::Head);
            if !self
                .to_client
                .drained(&self.client, relaying.then_some(&ex.resp_buf))
            {
                match self
                    .to_client
                    .flush(&mut self.client, relaying.then_some(&mut ex.resp_buf))
                {
                    Flush::Failed => return Flow::Close,
                    Flush::Wrote { bytes: n, moved } => {
                        if moved {
                            progress = true;
                            self.last_activity = ctx.now;
                            self.sent(n, ctx);
                        }
                    }
                }
            }
            let flushed = self
                .to_client
                .drained(&self.client, relaying.then_some(&ex.resp_buf));
            if ex.truncated && flushed {
                // Never complete the framing of a stream the upstream cut short.
                self.close_outcome = Outcome::UpstreamError;
                return Flow::Close;
            }
            if ex.response_done() && flushed {
                return self.finish_exchange(ex, ctx);
            }
            // Notice a client that leaves mid-response (SPEC §10: it went away). Only while
            // the response is unfinished: a client that closes right after the last byte
            // did nothing wrong, and the upstream connection stays reusable.
            if ex.req_body.is_none()
                && !ex.client_has_pending
                && self.client.readable
                && self.inbuf.as_ref().is_none_or(|b| b.is_empty())
            {
                match self.client.stream.peek() {
                    Io::Done(_) => ex.client_has_pending = true,
                    Io::WouldBlock => self.client.readable = false,
                    Io::Eof | Io::Failed(_) => return Flow::Close,
                }
            }
            if !progress {
                return Flow::Wait;
            }
        }
        Flow::Yield
    }

    /// Fills the exchange's request block from the client (buffered leftovers first) and
    /// observes where the body ends; what follows it is the next request.
    fn stream_request_body(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Result<bool, Flow> {
        let (Some(tracker), Some(buf)) = (ex.req_body.as_mut(), ex.req_buf.as_mut()) else {
            return Ok(false);
        };
        match self.inbuf.as_mut().filter(|b| !b.is_empty()) {
            // Bytes read with the head: swap blocks instead of copying.
            Some(inbuf) => std::mem::swap(inbuf, buf),
            None => {
                if !self.client.readable {
                    return Ok(false);
                }
                match self.client.read(buf.spare()) {
                    Io::Done(n) => {
                        buf.commit(n);
                        self.last_activity = ctx.now;
                        ctx.obs.counters.add_received(n as u64);
                    }
                    Io::WouldBlock => {
                        self.client.readable = false;
                        return Ok(false);
                    }
                    Io::Eof | Io::Failed(_) => return Err(Flow::Close),
                }
            }
        }
        let mut payload = 0u64;
        let consumed = match tracker.feed(buf.filled(), &mut |d| payload += d.len() as u64) {
            Ok(n) => n,
            // The upstream already has part of the body: closing is the only safe answer.
            Err(_) => return Err(Flow::Close),
        };
        ex.req_payload += payload;
        self.rec.bytes_in += consumed as u64;
        if ex.max_body > 0 && ex.req_payload > ex.max_body {
            // The bytes over the cap never go upstream. While the client has had no response
            // byte it gets the 413 every other path gives (SPEC §4); the upstream, which has
            // part of the body, is dropped with the exchange.
            if ex.head_sent {
                return Err(Flow::Close);
            }
            return Err(self.reject(ApiError::BodyTooLarge, true));
        }
        if consumed < buf.len() {
            // A pipelined request follows the body: keep it for after this exchange, or, when
            // no block is left for it, close after the response rather than lose it.
            let rest = &buf.filled()[consumed..];
            match self.inbuf.as_mut() {
                Some(inbuf) if inbuf.is_empty() => {
                    inbuf.extend(rest);
                }
                _ => match ctx.pool.take() {
                    Some(mut next) => {
                        next.extend(rest);
                        self.inbuf = Some(next);
                    }
                    None => ex.client_close = true,
                },
            }
            buf.truncate(consumed);
        }
        if tracker.is_done() {
            ex.req_body = None;
        }
        Ok(true)
    }

    /// One read from the upstream into the exchange's response block: the response head,
    /// or body bytes for the client. Called only when the block is empty or holds a partial
    /// head, so one block per direction is all an exchange ever holds (backpressure).
    fn read_upstream(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Result<bool, Flow> {
        let Some(up) = self.upstream.as_mut() else {
            return Ok(false);
        };
        if !up.readable {
            return Ok(false);
        }
        let buf = &mut ex.resp_buf;
        if buf.spare().is_empty() && !buf.grow(MAX_HEAD_BYTES + 1) {
            return Err(self.upstream_failed(ex, Failure::BadResponse, ctx));
        }
        match up.read(buf.spare()) {
            Io::Done(n) => {
                buf.commit(n);
                self.last_activity = ctx.now;
                if !ex.upstream_spoke {
                    ex.upstream_spoke = true;
                    // A status in `retryOnStatus` may still send the request elsewhere: keep
                    // it until the final head is judged.
                    if ex.route.balance.retry_on_status.is_empty() || ex.resend.is_none() {
                        ex.to_upstream.release_written();
                        // No failover from here on: give the head copy's block back.
                        ex.resend = None;
                    }
                }
                match &mut ex.resp {
                    Resp::Head => self.parse_response(ex, ctx).map(|()| true),
                    Resp::Body {
                        tracker,
                        keep_alive,
                    } => {
                        let start = buf.len() - n;
                        let (usage, now) = (&mut self.rec.usage, ctx.now);
                        match tracker.feed(&buf.filled()[start..], &mut |d| usage.feed(d, now)) {
                            Ok(consumed) if consumed < n => {
                                // Bytes past the framed end: never forwarded, never reused.
                                *keep_alive = false;
                                buf.truncate(start + consumed);
                            }
                            Ok(_) => {}
                            Err(_) => {
                                // Invalid chunking from the upstream: cut the stream.
                                buf.truncate(start);
                                ex.truncated = true;
                                return Ok(true);
                            }
                        }
                        if tracker.is_done() {
                            let keep_alive = *keep_alive;
                            ex.upstream_finished(keep_alive);
                        }
                        Ok(true)
                    }
                    Resp::Done { .. } | Resp::Switched => Ok(false),
                }
            }
            Io::WouldBlock => {
                up.readable = false;
                Ok(false)
            }
            Io::Eof | Io::Failed(_) => {
                if let Resp::Body { tracker, .. } = &ex.resp {
                    if tracker.is_until_close() {
                        ex.upstream_finished(false);
                        ex.client_close = true;
                    } else {
                        ex.truncated = true;
                    }
                    return Ok(true);
                }
                Err(self.upstream_failed(ex, Failure::Broken, ctx))
            }
        }
    }

    /// Parses the response head in the response block, forwarding 1xx, and queues the final
    /// head; body bytes read with it stay in the block.
    fn parse_response(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Result<(), Flow> {
        loop {
            let buf = &mut ex.resp_buf;
            let head = match h1::parse_response(buf.filled(), ex.method) {
                Ok(Parse::Complete(head)) => head,
                Ok(Parse::Partial) => {
                    if buf.len() > MAX_HEAD_BYTES {
                        return Err(self.upstream_failed(ex, Failure::BadResponse, ctx));
                    }
                    return Ok(());
                }
                Err(_) => return Err(self.upstream_failed(ex, Failure::BadResponse, ctx)),
            };
            if head.is_informational() {
                // 1xx passes through; the final response follows (PITFALLS 10). A byte has
                // reached the client: no status failover any more.
                ex.resend = None;
                self.to_client
                    .push(Chunk::Owned(buf.filled()[..head.head_len].to_vec()));
                buf.consume(head.head_len);
                continue;
            }
            if head.status == 101 {
                if ex.upgrade.is_none() {
                    return Err(self.upstream_failed(ex, Failure::BadResponse, ctx));
                }
                // The upgrade was accepted: the head goes to the client as is (with its
                // upgrade headers), and what follows it is tunnel bytes.
                ctx.scratch.clear();
                h1::write_client_response_head(
                    buf.filled(),
                    &head,
                    self.rec.request_id.get(),
                    false,
                    ctx.scratch,
                );
                self.to_client.push(copy_chunk(ctx.scratch, ctx.pool));
                ex.head_sent = true;
                self.rec.status = 101;
                self.rec.head_at = Some(ctx.now);
                buf.consume(head.head_len);
                ex.resp = Resp::Switched;
                return Ok(());
            }
            let retry_status = ex.route.balance.retry_on_status.contains(&head.status);
            let mut failure_counted = false;
            if retry_status && ex.resend.is_some() {
                // Configured to try another replica on this status (e.g. 429): nothing has
                // reached the client, and the whole request is still retained.
                if ex.route.balance.eject_on_status.contains(&head.status) {
                    self.rec.ejections += u32::from(ex.hold.failed(ctx.now));
                    failure_counted = true;
                }
                if self.fail_over(ex, ctx) {
                    if let Some(up) = self.upstream.take() {
                        self.dead.push(up);
                    }
                    ex.resp_buf.clear();
                    ex.upstream_spoke = false;
                    ex.connecting = false;
                    return Err(Flow::Upstream);
                }
            }
            if ex.to_upstream.is_retaining() && ex.upstream_spoke {
                ex.to_upstream.release_written();
            }
            ex.resend = None;
            let buf = &mut ex.resp_buf;
            ex.client_close = ex.client_close
                || !ex.client_keep_alive
                || head.framing == ResponseFraming::UntilClose
                || ex.req_body.is_some()
                || self.draining;
            ctx.scratch.clear();
            h1::write_client_response_head(
                buf.filled(),
                &head,
                self.rec.request_id.get(),
                ex.client_close,
                ctx.scratch,
            );
            self.announce_keep_alive(ex.client_close, ctx.scratch);
            self.to_client.push(copy_chunk(ctx.scratch, ctx.pool));
            ex.head_sent = true;
            if ex.route.balance.eject_on_status.contains(&head.status) {
                // (Unless already counted when the status was considered for a retry.)
                if !failure_counted {
                    self.rec.ejections += u32::from(ex.hold.failed(ctx.now));
                }
            } else {
                ex.hold.succeeded();
            }
            self.rec.status = head.status;
            self.rec.head_at = Some(ctx.now);
            buf.consume(head.head_len);
            let mut tracker = BodyTracker::for_response(head.framing);
            let mut keep_alive = head.keep_alive;
            let available = buf.len();
            let (usage, now) = (&mut self.rec.usage, ctx.now);
            usage.begin(head.coding, head.shape, ctx.pool);
            match tracker.feed(buf.filled(), &mut |d| usage.feed(d, now)) {
                Ok(consumed) if consumed < available => {
                    keep_alive = false;
                    buf.truncate(consumed);
                }
                Ok(_) => {}
                Err(_) => {
                    buf.clear();
                    ex.truncated = true;
                }
            }
            if tracker.is_done() {
                ex.upstream_finished(keep_alive);
            } else {
                ex.resp = Resp::Body {
                    tracker,
                    keep_alive,
                };
            }
            return Ok(());
        }
    }

    /// The upstream failed: retry, answer 502/504, or cut the client off.
    fn upstream_failed(&mut self, ex: &mut Exchange, failure: Failure, ctx: &mut Ctx<'_>) -> Flow {
        if let Some(up) = self.upstream.take() {
            self.dead.push(up);
        }
        let was_connecting = ex.connecting;
        ex.connecting = false;
        if ex.head_sent {
            ex.truncated = true;
            let tail = Some(&ex.resp_buf);
            return Flow::Again.or_close_if(self.to_client.drained(&self.client, tail));
        }
        if failure == Failure::Connect || failure == Failure::NoAddress {
            // The name may have moved: ask for a fresh lookup.
            self.refresh_name = ex
                .hold
                .backend(&ex.route)
                .and_then(|b| b.resolve_key.clone());
        }
        // One count per failed attempt: an address that refused, or a name with no address
        // at all (running out after failed attempts was already counted).
        if failure == Failure::Connect || (failure == Failure::NoAddress && ex.addr_attempt == 0) {
            ex.route.stats.connect_error();
        }
        if !ex.upstream_spoke {
            if failure == Failure::Connect && ex.addr_attempt < MAX_ADDRESSES {
                ex.addr_attempt += 1;
                ex.to_upstream.rewind();
                return Flow::Upstream;
            }
            let retryable = ex.reused && !ex.retried && ex.to_upstream.is_retaining();
            if retryable && failure == Failure::Broken {
                ex.route.stats.retry();
                ex.retried = true;
                ex.fresh_only = true;
                ex.addr_attempt = 0;
                ex.to_upstream.rewind();
                ex.request_sent = None;
                return Flow::Upstream;
            }
            // This replica failed the request before answering: note it (passive health),
            // then send the request to another one while nothing has reached the client.
            let replica_failed = match failure {
                Failure::NoAddress | Failure::Broken => true,
                Failure::Timeout => was_connecting,
                Failure::Connect | Failure::BadResponse => false,
            };
            if replica_failed {
                self.rec.ejections += u32::from(ex.hold.failed(ctx.now));
                if self.fail_over(ex, ctx) {
                    return Flow::Upstream;
                }
            }
        }
        let err = match failure {
            Failure::Timeout => ApiError::UpstreamTimeout,
            _ => ApiError::UpstreamUnavailable,
        };
        let _ = ctx;
        // The request is complete unless its body was still streaming.
        let close = ex.req_body.is_some() || !ex.client_keep_alive || self.draining;
        self.to_client = Outbox::default();
        self.reject(err, close)
    }

    /// Moves the request to a replica it has not tried yet (rebuilding its head for that
    /// backend); false when none is left, retries are spent, or the body is not buffered.
    fn fail_over(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> bool {
        let Some(resend) = ex.resend.as_ref() else {
            return false;
        };
        if !ex.to_upstream.is_retaining() || ex.rec_failovers >= ex.route.balance.retries {
            return false;
        }
        let Some(balancer) = ctx.balancers.get(&ex.route) else {
            return false;
        };
        let tried = ex.tried | replica_bit(ex.hold.index);
        let Ok(next) = Hold::take(&ex.route, &balancer, ctx.now, tried) else {
            return false;
        };
        let Some(backend) = next.backend(&ex.route) else {
            return false;
        };
        let head_chunk = self.resend_head(resend, backend, ctx);
        ex.hold.failed_over();
        ex.route.stats.retry();
        ex.to_upstream.replace_first(head_chunk);
        ex.to_upstream.rewind();
        ex.tried = tried;
        ex.rec_failovers += 1;
        self.rec.retries += 1;
        self.rec.replica = next.index;
        ex.hold = next;
        ex.addr_attempt = 0;
        ex.reused = false;
        ex.retried = false;
        ex.fresh_only = false;
        ex.request_sent = None;
        true
    }

    /// Response complete and flushed: park or close the upstream, then the next request.
    fn finish_exchange(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Flow {
        self.end_request(Outcome::Ok, ctx);
        let reusable = matches!(ex.resp, Resp::Done { keep_alive: true })
            && self
                .upstream
                .as_ref()
                .is_some_and(|up| ex.to_upstream.drained(up, ex.req_buf.as_ref()))
            && ex.req_body.is_none();
        if let Some(up) = self.upstream.take() {
            let pool_key = ex.hold.backend(&ex.route).map(|b| Arc::clone(&b.pool_key));
            if let (true, Some(pool_key)) = (reusable, pool_key) {
                self.released = Some((pool_key, up));
            } else {
                self.dead.push(up);
            }
        }
        if ex.client_close || self.draining {
            return self.start_linger(ctx);
        }
        self.phase = Phase::Idle;
        Flow::Again
    }

    // ----- local responses and closing --------------------------------------------------

    /// Queues an error response; `close` ends the connection after it.
    fn reject(&mut self, err: ApiError, close: bool) -> Flow {
        // The answered request's head must not be parsed again.
        if self.pending_head > 0 {
            self.consume_head(self.pending_head);
        }
        // Give buffers back before the answer goes out: a client that reads it and retries
        // at once must find the budget as we left it.
        if close || self.inbuf.as_ref().is_some_and(|b| b.is_empty()) {
            self.inbuf = None;
        }
        let mut out = Vec::with_capacity(256);
        let id = if self.rec.is_active() {
            self.rec.status = err.status();
            self.rec.request_id.get()
        } else {
            &[]
        };
        error::write_error_response_with_id(&err, id, close, false, &mut out);
        self.announce_keep_alive(close, &mut out);
        self.to_client.push(Chunk::Owned(out));
        if let Some(up) = self.upstream.take() {
            self.dead.push(up);
        }
        self.phase = Phase::Respond { close };
        Flow::Again
    }

    fn respond(&mut self, close: bool, ctx: &mut Ctx<'_>) -> Flow {
        match self.to_client.flush(&mut self.client, None) {
            Flush::Failed => return Flow::Close,
            Flush::Wrote { bytes: n, moved } => {
                if moved {
                    self.last_activity = ctx.now;
                }
                self.sent(n, ctx);
            }
        }
        if !self.to_client.drained(&self.client, None) {
            return Flow::Wait;
        }
        let status = self.rec.status;
        self.end_request(outcome_of(status), ctx);
        if close || self.draining {
            return self.start_linger(ctx);
        }
        self.phase = Phase::Idle;
        Flow::Again
    }

    fn start_linger(&mut self, ctx: &mut Ctx<'_>) -> Flow {
        self.client.stream.shutdown_write();
        self.inbuf = None;
        self.phase = Phase::Linger {
            until: ctx.now + LINGER,
            discarded: 0,
        };
        Flow::Again
    }

    fn linger(&mut self, _ctx: &mut Ctx<'_>) -> Flow {
        let Phase::Linger { discarded, .. } = &mut self.phase else {
            return Flow::Close;
        };
        let mut sink = [0u8; 4096];
        loop {
            if !self.client.readable {
                return Flow::Wait;
            }
            match self.client.read(&mut sink) {
                Io::Done(n) => {
                    *discarded += n;
                    if *discarded > LINGER_BYTES {
                        return Flow::Close;
                    }
                }
                Io::WouldBlock => self.client.readable = false,
                Io::Eof | Io::Failed(_) => return Flow::Close,
            }
        }
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

impl Exchange {
    #[allow(clippy::too_many_arguments)]
    fn new(
        route: Arc<Route>,
        head: &RequestHead,
        to_upstream: Outbox,
        stream: Option<(BodyTracker, Block)>,
        resp_buf: Block,
        max_body: u64,
        slot: InFlight,
        now: Instant,
    ) -> Exchange {
        let (req_body, req_buf) = match stream {
            Some((tracker, block)) => (Some(tracker), Some(block)),
            None => (None, None),
        };
        Exchange {
            route,
            method: head.method,
            req_buf,
            client_keep_alive: head.keep_alive,
            to_upstream,
            req_body,
            req_payload: 0,
            max_body,
            resp: Resp::Head,
            resp_buf,
            upstream_spoke: false,
            head_sent: false,
            client_close: false,
            truncated: false,
            client_has_pending: false,
            connecting: false,
            reused: false,
            retried: false,
            fresh_only: false,
            addr_attempt: 0,
            connect_started: now,
            request_sent: None,
            hold: Hold::only(),
            tried: 0,
            resend: None,
            rec_failovers: 0,
            queued: None,
            upgrade: None,
            slot: Some(slot),
        }
    }
}

/// What a request head asks for, with everything borrowed from the buffer copied out.
enum Decision {
    Local(Local),
    AdminReload,
    Reject(ApiError),
    ByPath(String, Vec<u8>),
    ByBody,
}

enum Local {
    Health,
    List,
    Get(String),
    Metrics,
}

/// Feeds body bytes to the framing tracker and the payload to the scanner. Returns how
/// many bytes belong to this body, and the first error (bad framing, over the cap, or
/// invalid JSON or multipart: all final).
fn observe_body(
    tracker: &mut BodyTracker,
    scanner: &mut BodyScanner,
    payload: &mut u64,
    max_body: u64,
    bytes: &[u8],
) -> (usize, Result<(), ApiError>) {
    let mut scan_error = None;
    let mut seen = 0u64;
    let fed = tracker.feed(bytes, &mut |data| {
        seen += data.len() as u64;
        if scan_error.is_none() {
            if let Err(e) = scanner.feed(data) {
                scan_error = Some(e);
            }
        }
    });
    *payload += seen;
    let consumed = match fed {
        Ok(n) => n,
        Err(e) => return (bytes.len(), Err(ApiError::from(e))),
    };
    if max_body > 0 && *payload > max_body {
        return (consumed, Err(ApiError::BodyTooLarge));
    }
    match scan_error {
        Some(e) => (consumed, Err(e)),
        None => (consumed, Ok(())),
    }
}

/// Writes the upstream request head for `route` into a pooled block (or an owned buffer
/// when it does not fit one).
#[allow(clippy::too_many_arguments)]
fn build_upstream_head(
    raw: &[u8],
    head: &RequestHead,
    backend: &Backend,
    target: &[u8],
    (peer, secure): (Peer, bool),
    request_id: &[u8],
    strip_authorization: bool,
    ctx: &mut Ctx<'_>,
) -> Chunk {
    let request = UpstreamRequest {
        authority: &backend.upstream.authority,
        base_path: &backend.upstream.base_path,
        base_query: backend.upstream.query.as_deref(),
        target,
        client_ip: match peer {
            Peer::Tcp(addr) => Some(addr.ip()),
            Peer::Unix => None,
        },
        proto: if secure { "https" } else { "http" },
        strip_authorization,
        request_id,
        extra_headers: &backend.headers,
    };
    ctx.scratch.clear();
    h1::write_upstream_request_head(raw, head, &request, ctx.scratch);
    copy_chunk(ctx.scratch, ctx.pool)
}

/// Bit `i` of a replica mask (none past the mask's width).
fn replica_bit(i: usize) -> u64 {
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

/// The replica a new request of `route` goes to: backend 0 for plain models, else a lease
/// from this worker's balancer.
/// Healthy and total replicas of each model with several, as this worker sees them (passive
/// ejections and the health thread's verdicts), in name order.
fn replica_counts(routes: &Routes, ctx: &mut Ctx<'_>) -> Vec<(String, usize, usize)> {
    let mut out: Vec<(String, usize, usize)> = routes
        .models
        .values()
        .filter(|r| r.backends.len() > 1)
        .map(|r| {
            let total = r.backends.len();
            let healthy = ctx
                .balancers
                .get(r)
                .and_then(|b| b.try_borrow().ok().map(|b| b.healthy_count(ctx.now)))
                .unwrap_or(total);
            (r.name.clone(), healthy, total)
        })
        .collect();
    out.sort();
    out
}

/// None: every replica is at its limit and the model has a wait queue (or others already
/// wait there: FIFO, a newcomer never overtakes them).
fn choose_replica(route: &Arc<Route>, ctx: &mut Ctx<'_>) -> Result<Option<Hold>, ApiError> {
    let Some(balancer) = ctx.balancers.get(route) else {
        return Ok(Some(Hold::only()));
    };
    let queue = route.balance.queue_size > 0;
    if queue && balancer.try_borrow().is_ok_and(|b| b.has_waiters()) {
        return Ok(None);
    }
    match Hold::take(route, &balancer, ctx.now, 0) {
        Ok(hold) => Ok(Some(hold)),
        Err(Pick::Full) if queue => Ok(None),
        Err(Pick::Full) => Err(ApiError::Overloaded),
        Err(Pick::Exhausted | Pick::Replica(_)) => Err(ApiError::UpstreamUnavailable),
    }
}
