//! The exchange with the upstream: its state, the pump, a streamed request body, the end.

use std::sync::Arc;
use std::time::Instant;

use crate::accesslog::Outcome;
use crate::buf::Block;
use crate::error::ApiError;
use crate::h1::{BodyTracker, Method, RequestHead};
use crate::net::Io;
use crate::router::Route;
use crate::upstream::Sock;

use super::ids::InFlight;
use super::outbox::{Flush, Outbox};
use super::replicas::{Hold, Resend};
use super::{Conn, Ctx, Flow, Phase, Want, STEPS_PER_TURN};

/// Where the response is.
pub(super) enum Resp {
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
pub(super) enum Failure {
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
pub(super) struct Exchange {
    pub(super) route: Arc<Route>,
    pub(super) method: Method,
    pub(super) client_keep_alive: bool,
    pub(super) to_upstream: Outbox,
    /// The request body still streaming from the client (`/route/` requests).
    pub(super) req_body: Option<BodyTracker>,
    pub(super) req_payload: u64,
    pub(super) max_body: u64,
    pub(super) resp: Resp,
    /// The response block, reserved before the request goes upstream: the exchange can
    /// always read its response, whatever the pool's budget does meanwhile.
    pub(super) resp_buf: Block,
    /// The request block for a body streamed from the client (`/route/`).
    pub(super) req_buf: Option<Block>,
    /// Any byte came from the upstream: no retry from here on.
    pub(super) upstream_spoke: bool,
    /// The client got the response head: errors can only truncate now.
    pub(super) head_sent: bool,
    pub(super) client_close: bool,
    /// The upstream died mid-body: close the client after what we have.
    pub(super) truncated: bool,
    pub(super) client_has_pending: bool,
    pub(super) connecting: bool,
    pub(super) reused: bool,
    pub(super) retried: bool,
    pub(super) fresh_only: bool,
    pub(super) addr_attempt: usize,
    pub(super) connect_started: Instant,
    pub(super) request_sent: Option<Instant>,
    /// The replica in use (outstanding until the exchange ends).
    pub(super) hold: Hold,
    /// Replicas this request already failed on (bit i = backend i).
    pub(super) tried: u64,
    /// The request head for another replica, when the route has several.
    pub(super) resend: Option<Resend>,
    /// Failovers so far (bounded by the route's `retries`).
    pub(super) rec_failovers: u32,
    /// Waiting in the model's queue since then (every replica at its limit).
    pub(super) queued: Option<Instant>,
    /// For a WebSocket upgrade: the client→upstream block of the tunnel a `101` opens,
    /// reserved with the exchange's other block.
    pub(super) upgrade: Option<Block>,
    /// Counts against `maxConcurrentRequests` until the upstream has sent the whole response
    /// (before its last bytes reach the client, so a client that reacts to them at once on
    /// another connection never finds the slot still taken).
    pub(super) slot: Option<InFlight>,
}

impl Exchange {
    pub(super) fn response_done(&self) -> bool {
        matches!(self.resp, Resp::Done { .. })
    }

    /// The upstream has sent the whole response: its in-flight slot is free from now on.
    pub(super) fn upstream_finished(&mut self, keep_alive: bool) {
        self.resp = Resp::Done { keep_alive };
        self.slot = None;
    }
}

impl Exchange {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
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

impl Conn {
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

    /// Moves bytes both ways until nothing is ready.
    pub(super) fn pump(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Flow {
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
    pub(super) fn stream_request_body(
        &mut self,
        ex: &mut Exchange,
        ctx: &mut Ctx<'_>,
    ) -> Result<bool, Flow> {
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

    /// Response complete and flushed: park or close the upstream, then the next request.
    pub(super) fn finish_exchange(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Flow {
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
}
