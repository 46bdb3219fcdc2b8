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
use crate::balance::Waiting;

/// The upstream side of the exchange, from waiting for a replica to the first response byte.
pub(super) enum Link {
    /// Every replica is at its limit: waiting in the model's process-wide queue since then.
    /// `place` is the request's ticket there (None until the worker has queued it); dropping
    /// it leaves the queue.
    Queued {
        since: Instant,
        place: Option<Waiting>,
    },
    /// The worker is asked for a socket to address `attempt` of the held replica: a pooled
    /// one if it has one, unless `fresh_only` (after a stale pooled connection).
    Wanted { attempt: usize, fresh_only: bool },
    /// A fresh socket's non-blocking connect to address `attempt` is under way.
    Connecting { attempt: usize, fresh_only: bool },
    /// Connected; the request goes out and nothing came back yet. `reused`: the socket came
    /// from the pool, so a failure now may only mean it had gone stale.
    Sent { reused: bool },
    /// The upstream sent a byte: the request is never sent again from here on.
    Answered,
}

/// Where the response is.
pub(super) enum Resp {
    /// Waiting for (the rest of) the final response head.
    Head,
    /// The head went to the client and the body streams through. `reusable`: the upstream
    /// connection may be pooled after it; `close_client`: the client connection closes
    /// after it (decided with the head, which said so).
    Body {
        tracker: BodyTracker,
        reusable: bool,
        close_client: bool,
    },
    /// The upstream sent the whole response; the client may still be taking the last bytes.
    Done { reusable: bool, close_client: bool },
    /// The upstream broke off mid-body: the client gets what arrived, then a close, never
    /// the end of the framing.
    Truncated,
    /// A `101` to an upgrade was forwarded: the exchange becomes a tunnel.
    Switched,
}

/// The client's side while the exchange runs.
pub(super) enum Client {
    /// The request body still streams from the client (`/route/`): `payload` bytes so far,
    /// against the route's `cap` (0: none).
    Streaming {
        tracker: BodyTracker,
        payload: u64,
        cap: u64,
    },
    /// The request is complete. A readable client now means it left (EOF) or sent its next
    /// request, so it is peeked at while the response is unfinished.
    Waiting,
    /// The client already sent its next request: it is read after this response.
    Pipelined,
}

/// A request's second chance on another replica (before any response byte, with the whole
/// body still retained).
// Inline rather than boxed: the exchange itself is boxed in its phase, and a boxed `Resend`
// would cost every request of a multi-replica model an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Failover {
    /// Another replica may take the request: the client's head is kept to rebuild the
    /// upstream head for it. `tried`: replicas that failed it (bit i = backend i);
    /// `done`: failovers so far, bounded by the route's `retries`.
    Ready {
        resend: Resend,
        tried: u64,
        done: u32,
    },
    /// No second chance: one backend only, the body streamed, or the upstream answered.
    Off,
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

/// One request/response exchange with an upstream. Its state is four small enums, each
/// moved by its own events, as hyper's h1 connection keeps reading and writing apart: the
/// upstream [`Link`], the [`Resp`]onse, the [`Client`] side and the [`Failover`].
pub(super) struct Exchange {
    pub(super) route: Arc<Route>,
    pub(super) method: Method,
    /// The client asked to keep its connection (and there is room to keep its next
    /// request): the response head says so.
    pub(super) client_keep_alive: bool,
    pub(super) link: Link,
    pub(super) resp: Resp,
    pub(super) client: Client,
    pub(super) failover: Failover,
    pub(super) to_upstream: Outbox,
    /// The response block, reserved before the request goes upstream: the exchange can
    /// always read its response, whatever the pool's budget does meanwhile.
    pub(super) resp_buf: Block,
    /// The request block for a body streamed from the client (`/route/`).
    pub(super) req_buf: Option<Block>,
    /// When the current socket was asked for (the connect and TLS handshake deadline).
    pub(super) connect_started: Instant,
    /// When the whole request had gone out (the first-byte deadline).
    pub(super) request_sent: Option<Instant>,
    /// The replica in use (outstanding until the exchange ends).
    pub(super) hold: Hold,
    /// For a WebSocket upgrade: the client→upstream block of the tunnel a `101` opens,
    /// reserved with the exchange's other block.
    pub(super) upgrade: Option<Block>,
    /// Counts against `maxConcurrentRequests` until the upstream has sent the whole response
    /// (before its last bytes reach the client, so a client that reacts to them at once on
    /// another connection never finds the slot still taken).
    pub(super) slot: Option<InFlight>,
}

impl Failover {
    /// A second chance when the client's head was kept for one.
    pub(super) fn with(resend: Option<Resend>) -> Failover {
        match resend {
            Some(resend) => Failover::Ready {
                resend,
                tried: 0,
                done: 0,
            },
            None => Failover::Off,
        }
    }
}

impl Exchange {
    /// An exchange about to ask for its first socket; `stream` is the request body still to
    /// come from the client and its block (`/route/` requests), `max_body` its cap.
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
        let (client, req_buf) = match stream {
            Some((tracker, block)) => (
                Client::Streaming {
                    tracker,
                    payload: 0,
                    cap: max_body,
                },
                Some(block),
            ),
            None => (Client::Waiting, None),
        };
        Exchange {
            route,
            method: head.method,
            client_keep_alive: head.keep_alive,
            link: Link::Wanted {
                attempt: 0,
                fresh_only: false,
            },
            resp: Resp::Head,
            client,
            failover: Failover::Off,
            to_upstream,
            resp_buf,
            req_buf,
            connect_started: now,
            request_sent: None,
            hold: Hold::only(),
            upgrade: None,
            slot: Some(slot),
        }
    }

    /// The response head reached the client: errors can only truncate from here on.
    pub(super) fn head_sent(&self) -> bool {
        !matches!(self.resp, Resp::Head)
    }

    pub(super) fn response_done(&self) -> bool {
        matches!(self.resp, Resp::Done { .. })
    }

    /// The request body is still streaming from the client.
    pub(super) fn body_streaming(&self) -> bool {
        matches!(self.client, Client::Streaming { .. })
    }

    /// An error answer must close the client: the rest of a streaming body can't be framed,
    /// or the client did not ask to keep the connection.
    pub(super) fn close_on_error(&self) -> bool {
        self.body_streaming() || !self.client_keep_alive
    }

    /// The upstream has sent the whole response: its in-flight slot is free from now on.
    pub(super) fn upstream_finished(&mut self, reusable: bool, close_client: bool) {
        self.resp = Resp::Done {
            reusable,
            close_client,
        };
        self.slot = None;
    }
}

impl Conn {
    /// The route, backend index, attempt and whether a pooled connection may be used, when the connection
    /// waits for an upstream socket.
    pub fn upstream_wanted(&self) -> Option<(&Arc<Route>, usize, usize, bool)> {
        match &self.phase {
            Phase::Proxy(ex) if self.upstream.is_none() => match ex.link {
                Link::Wanted {
                    attempt,
                    fresh_only,
                } => Some((&ex.route, ex.hold.index, attempt, fresh_only)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Hands the connection its upstream socket (`reused` from the pool, else connecting).
    /// (`TCP_NODELAY` was set when the pooled connection was first connected.)
    pub fn attach_upstream(&mut self, sock: Sock, reused: bool, now: Instant) {
        if let Phase::Proxy(ex) = &mut self.phase {
            ex.link = match ex.link {
                _ if reused => Link::Sent { reused: true },
                Link::Wanted {
                    attempt,
                    fresh_only,
                } => Link::Connecting {
                    attempt,
                    fresh_only,
                },
                _ => Link::Connecting {
                    attempt: 0,
                    fresh_only: false,
                },
            };
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
        let flow = self.with_exchange(ctx, |conn, ex, ctx| conn.upstream_failed(ex, failure, ctx));
        self.finish_turn(flow, ctx)
    }

    /// No descriptor was left for the upstream socket (`EMFILE`/`ENFILE`): the process is
    /// short, not the upstream, so the request gets 503 `overloaded` with `Retry-After` and
    /// the replica is not marked failed.
    pub fn shed_no_descriptors(&mut self, ctx: &mut Ctx<'_>) -> Want {
        let flow = self.with_exchange(ctx, |conn, ex, _| {
            let close = ex.close_on_error() || conn.draining;
            conn.reject(ApiError::Overloaded, close)
        });
        self.finish_turn(flow, ctx)
    }

    /// Moves bytes both ways until nothing is ready.
    pub(super) fn pump(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Flow {
        if matches!(ex.link, Link::Queued { .. }) {
            // Nothing moves until a replica has room (or the queue timeout answers 503). A
            // client that leaves meanwhile must not keep its place: it would take a replica
            // slot for an answer nobody reads.
            return self.watch_client(ex).err().unwrap_or(Flow::Wait);
        }
        for _ in 0..STEPS_PER_TURN {
            let mut progress = false;
            // A truncated response has no upstream left: only the client is flushed.
            if !matches!(ex.resp, Resp::Truncated) {
                match self.pump_upstream(ex, ctx) {
                    Ok(moved) => progress |= moved,
                    Err(flow) => return flow,
                }
            }
            let relaying = ex.head_sent();
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
            if matches!(ex.resp, Resp::Truncated) && flushed {
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
            if let Err(flow) = self.watch_client(ex) {
                return flow;
            }
            if !progress {
                return Flow::Wait;
            }
        }
        Flow::Yield
    }

    /// The upstream half of a pump turn: finish connecting, send the request (and the
    /// streamed body), and read the response when the client took the last bytes. Err: the
    /// flow the turn ends with.
    fn pump_upstream(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Result<bool, Flow> {
        let mut progress = false;
        let Some(up) = self.upstream.as_mut() else {
            return Err(Flow::Upstream);
        };
        if matches!(ex.link, Link::Connecting { .. }) {
            if !up.writable && !up.readable {
                return Err(Flow::Wait);
            }
            match up.stream.connect_result() {
                Ok(true) => {
                    ex.link = Link::Sent { reused: false };
                    up.stream.set_nodelay();
                    progress = true;
                }
                Ok(false) => {
                    up.writable = false;
                    up.readable = false;
                    return Err(Flow::Wait);
                }
                Err(_) => return Err(self.upstream_failed(ex, Failure::Connect, ctx)),
            }
        }
        // Request bytes to the upstream: the queued head (and buffered body), then the
        // streamed body block.
        if !ex.to_upstream.drained(up, ex.req_buf.as_ref()) {
            match ex.to_upstream.flush(up, ex.req_buf.as_mut()) {
                Flush::Failed => return Err(self.upstream_failed(ex, Failure::Broken, ctx)),
                Flush::Wrote { moved, .. } => {
                    if moved {
                        progress = true;
                        self.last_activity = ctx.now;
                    }
                }
            }
            if ex.request_sent.is_none()
                && !ex.body_streaming()
                && ex.to_upstream.drained(up, ex.req_buf.as_ref())
            {
                ex.request_sent = Some(ctx.now);
            }
        }
        // A streamed request body from the client, one block at a time.
        if ex.body_streaming() && ex.req_buf.as_ref().is_some_and(|b| b.is_empty()) {
            progress |= self.stream_request_body(ex, ctx)?;
        }
        // Response bytes from the upstream, only when the client took the last ones.
        let reading = matches!(ex.resp, Resp::Head | Resp::Body { .. });
        let tail = ex.head_sent().then_some(&ex.resp_buf);
        if reading && self.to_client.drained(&self.client, tail) {
            progress |= self.read_upstream(ex, ctx)?;
            if matches!(ex.resp, Resp::Switched) {
                // `with_exchange` turns the exchange into a tunnel.
                return Err(Flow::Again);
            }
        }
        Ok(progress)
    }

    /// Notices a client that left while its request waits or its response is unfinished:
    /// a readable client with nothing buffered either closed (Err: close) or sent its next
    /// request (it is read after this response).
    fn watch_client(&mut self, ex: &mut Exchange) -> Result<(), Flow> {
        if matches!(ex.client, Client::Waiting)
            && self.client.readable
            && self.inbuf.as_ref().is_none_or(|b| b.is_empty())
        {
            match self.client.stream.peek() {
                Io::Done(_) => ex.client = Client::Pipelined,
                Io::WouldBlock => self.client.readable = false,
                Io::Eof | Io::Failed(_) => return Err(Flow::Close),
            }
        }
        Ok(())
    }

    /// Fills the exchange's request block from the client (buffered leftovers first) and
    /// observes where the body ends; what follows it is the next request.
    pub(super) fn stream_request_body(
        &mut self,
        ex: &mut Exchange,
        ctx: &mut Ctx<'_>,
    ) -> Result<bool, Flow> {
        let head_sent = ex.head_sent();
        let (
            Client::Streaming {
                tracker,
                payload,
                cap,
            },
            Some(buf),
        ) = (&mut ex.client, ex.req_buf.as_mut())
        else {
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
        let mut seen = 0u64;
        let consumed = match tracker.feed(buf.filled(), &mut |d| seen += d.len() as u64) {
            Ok(n) => n,
            // The upstream already has part of the body: closing is the only safe answer.
            Err(_) => return Err(Flow::Close),
        };
        *payload += seen;
        self.rec.bytes_in += consumed as u64;
        if *cap > 0 && *payload > *cap {
            // The bytes over the cap never go upstream. While the client has had no response
            // byte it gets the 413 every other path gives (SPEC §4); the upstream, which has
            // part of the body, is dropped with the exchange.
            if head_sent {
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
                    None => ex.client_keep_alive = false,
                },
            }
            buf.truncate(consumed);
        }
        if tracker.is_done() {
            ex.client = Client::Waiting;
        }
        Ok(true)
    }

    /// Response complete and flushed: park or close the upstream, then the next request.
    pub(super) fn finish_exchange(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> Flow {
        self.end_request(Outcome::Ok, ctx);
        let (reusable, close_client) = match ex.resp {
            Resp::Done {
                reusable,
                close_client,
            } => (reusable, close_client),
            _ => (false, true),
        };
        let reusable = reusable
            && self
                .upstream
                .as_ref()
                .is_some_and(|up| ex.to_upstream.drained(up, ex.req_buf.as_ref()))
            && !ex.body_streaming();
        if let Some(up) = self.upstream.take() {
            let pool_key = ex.hold.backend(&ex.route).map(|b| Arc::clone(&b.pool_key));
            if let (true, Some(pool_key)) = (reusable, pool_key) {
                self.released = Some((pool_key, up));
            } else {
                self.dead.push(up);
            }
        }
        if close_client || self.draining {
            return self.start_linger(ctx);
        }
        self.phase = Phase::Idle;
        Flow::Again
    }
}
