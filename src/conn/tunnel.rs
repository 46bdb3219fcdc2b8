//! WebSocket upgrades: routing the handshake, and the raw byte tunnel after a `101`.
//!
//! A `GET` with `Connection: upgrade` and `Upgrade: websocket` is routed by its `model`
//! query parameter (or `/route/{model}/…`) and goes upstream as an ordinary exchange with its
//! upgrade headers kept. A non-101 answer is an ordinary response. After a `101` the
//! exchange becomes a [`Tunnel`]: bytes move both ways untouched, one block per direction
//! (a side is read only when its block has been written out, so a peer that does not read
//! stops the other from being read: backpressure without extra state), until both sides
//! have sent FIN. A FIN is passed on as `shutdown(Write)` once everything before it is
//! written; the tunnel closes when both directions are done, when either side fails, or
//! when no byte moved for `timeouts.idle`.

use std::sync::Arc;

use super::outbox::{Flush, Outbox};
use super::replicas::Hold;
use super::{Conn, Ctx, Exchange, Flow, InFlight, STEPS_PER_TURN};
use crate::accesslog::Outcome;
use crate::buf::Block;
use crate::error::ApiError;
use crate::h1::RequestHead;
use crate::net::Io;
use crate::router::{self, Route, Routes};

/// A switched connection: raw bytes both ways.
pub(super) struct Tunnel {
    /// Kept for the request's record (the route's stats) while the tunnel lives.
    _route: Arc<Route>,
    /// Never holds chunks: flushes the client→upstream block (and pending TLS output).
    to_upstream: Outbox,
    /// Client → upstream bytes.
    up_buf: Block,
    /// Upstream → client bytes (the first ones came with the `101` head).
    down_buf: Block,
    client_eof: bool,
    upstream_eof: bool,
    /// We sent FIN to the upstream / to the client.
    upstream_shut: bool,
    client_shut: bool,
    /// A tunnel counts as a request in flight for its whole life, and as outstanding on
    /// its replica.
    _slot: Option<InFlight>,
    _hold: Hold,
}

impl Tunnel {
    /// The tunnel an upgraded exchange becomes (its blocks and its in-flight slot move in).
    pub(super) fn from_exchange(ex: Box<Exchange>, up_buf: Block) -> Box<Tunnel> {
        let ex = *ex;
        Box::new(Tunnel {
            _route: ex.route,
            to_upstream: ex.to_upstream,
            up_buf,
            down_buf: ex.resp_buf,
            client_eof: false,
            upstream_eof: false,
            upstream_shut: false,
            client_shut: false,
            _slot: ex.slot,
            _hold: ex.hold,
        })
    }
}

impl Conn {
    /// A WebSocket handshake not under `/route/`: the model comes from the query.
    pub(super) fn start_upgrade(
        &mut self,
        head: RequestHead,
        routes: Arc<Routes>,
        ctx: &mut Ctx<'_>,
    ) -> Flow {
        let Some(buf) = self.inbuf.as_ref() else {
            return Flow::Close;
        };
        let target = buf.filled().get(head.target.clone()).unwrap_or(b"/");
        let close_on_error = !head.keep_alive || head.framing != crate::h1::RequestFraming::Empty;
        match router::query_param(target, b"model") {
            None => self.reject(
                ApiError::BadRequest(
                    "A WebSocket upgrade names its model in the query (?model=...) or the path \
                     (/route/{model}/...)",
                ),
                close_on_error,
            ),
            Some(None) => self.reject(
                ApiError::BadRequest("invalid percent-encoding in the model query parameter"),
                close_on_error,
            ),
            Some(Some(model)) => {
                let target = target.to_vec();
                self.start_path_route(head, &model, &target, routes, ctx)
            }
        }
    }

    /// Moves bytes both ways until nothing is ready.
    pub(super) fn pump_tunnel(&mut self, t: &mut Tunnel, ctx: &mut Ctx<'_>) -> Flow {
        // The client's read block is only needed for bytes sent with the handshake; the
        // tunnel reads into its own blocks, so an empty one goes back to the pool (a tunnel
        // holds two blocks, not three).
        if self.inbuf.as_ref().is_some_and(|b| b.is_empty()) {
            self.inbuf = None;
        }
        for _ in 0..STEPS_PER_TURN {
            let mut progress = false;
            if self.upstream.is_none() {
                return Flow::Close;
            }

            // Client → upstream: bytes read with the handshake first, then the socket, only
            // when the block is empty.
            if t.up_buf.is_empty() && !t.client_eof {
                if let Some(inbuf) = self.inbuf.take().filter(|b| !b.is_empty()) {
                    // The emptied tunnel block goes back to the pool in its place.
                    t.up_buf = inbuf;
                    self.rec.bytes_in += t.up_buf.len() as u64;
                    progress = true;
                } else if self.client.readable {
                    match self.client.read(t.up_buf.spare()) {
                        Io::Done(n) => {
                            t.up_buf.commit(n);
                            self.rec.bytes_in += n as u64;
                            ctx.obs.counters.add_received(n as u64);
                            self.last_activity = ctx.now;
                            progress = true;
                        }
                        Io::WouldBlock => {}
                        Io::Eof => {
                            t.client_eof = true;
                            progress = true;
                        }
                        Io::Failed(_) => return Flow::Close,
                    }
                }
            }
            if let Some(up) = self.upstream.as_mut() {
                if !t.to_upstream.drained(up, Some(&t.up_buf)) {
                    match t.to_upstream.flush(up, Some(&mut t.up_buf)) {
                        Flush::Failed => return Flow::Close,
                        Flush::Wrote { moved, .. } => {
                            if moved {
                                self.last_activity = ctx.now;
                                progress = true;
                            }
                        }
                    }
                }
                if t.client_eof && !t.upstream_shut && t.to_upstream.drained(up, Some(&t.up_buf)) {
                    up.stream.shutdown_write();
                    t.upstream_shut = true;
                    progress = true;
                }

                // Upstream → client, only when the client took the last bytes.
                let client_drained = self.to_client.drained(&self.client, Some(&t.down_buf));
                if client_drained && !t.upstream_eof && up.readable {
                    match up.read(t.down_buf.spare()) {
                        Io::Done(n) => {
                            t.down_buf.commit(n);
                            self.last_activity = ctx.now;
                            progress = true;
                        }
                        Io::WouldBlock => {}
                        Io::Eof => {
                            t.upstream_eof = true;
                            progress = true;
                        }
                        Io::Failed(_) => return Flow::Close,
                    }
                }
            }
            if !self.to_client.drained(&self.client, Some(&t.down_buf)) {
                match self
                    .to_client
                    .flush(&mut self.client, Some(&mut t.down_buf))
                {
                    Flush::Failed => return Flow::Close,
                    Flush::Wrote { bytes, moved } => {
                        if moved {
                            self.last_activity = ctx.now;
                            progress = true;
                        }
                        self.sent(bytes, ctx);
                    }
                }
            }
            if t.upstream_eof
                && !t.client_shut
                && self.to_client.drained(&self.client, Some(&t.down_buf))
            {
                self.client.stream.shutdown_write();
                t.client_shut = true;
                progress = true;
            }
            let upstream_drained = self
                .upstream
                .as_ref()
                .is_some_and(|up| t.to_upstream.drained(up, Some(&t.up_buf)));
            let client_drained = self.to_client.drained(&self.client, Some(&t.down_buf));
            if t.client_shut && t.upstream_shut && upstream_drained && client_drained {
                // Both directions ended cleanly (a TLS close_notify included).
                self.close_outcome = Outcome::Ok;
                return Flow::Close;
            }
            if !progress {
                return Flow::Wait;
            }
        }
        Flow::Yield
    }
}
