//! Upstream failures, failover to another replica, and the wait queue of a full model.

use std::sync::Arc;

use crate::balance::{Grant, Waiting};
use crate::error::ApiError;
use crate::h1::RequestHead;
use crate::router::{Backend, Route};

use super::exchange::{Exchange, Failover, Failure, Link, Resp};
use super::outbox::{Chunk, Outbox};
use super::replicas::{Hold, Resend};
use super::rewrite;
use super::start::build_upstream_head;
use super::{Conn, Ctx, Flow, Phase, Want, MAX_ADDRESSES};

impl Conn {
    /// The route whose queue this connection waits in.
    pub fn queued_route(&self) -> Option<&Arc<Route>> {
        match &self.phase {
            Phase::Proxy(ex) if matches!(ex.link, Link::Queued { .. }) => Some(&ex.route),
            _ => None,
        }
    }

    /// The worker placed this waiting request in its model's queue.
    pub fn wait_in_queue(&mut self, waiting: Waiting) {
        if let Phase::Proxy(ex) = &mut self.phase {
            if let Link::Queued { place, .. } = &mut ex.link {
                *place = Some(waiting);
            }
        }
    }

    /// A slot was granted to this connection's place in the queue (by whichever worker
    /// freed it): build the request head for that replica and connect. None when the grant
    /// is not for the request waiting here (it left, or was answered): dropping it hands the
    /// slot to the next waiter.
    pub fn granted(&mut self, grant: Grant, ctx: &mut Ctx<'_>) -> Result<Want, Grant> {
        let waiting_here = match &self.phase {
            Phase::Proxy(ex) => matches!(&ex.link,
                Link::Queued { place: Some(p), .. } if p.seq() == grant.ticket.seq),
            _ => false,
        };
        if !waiting_here {
            return Err(grant);
        }
        let flow = self.with_exchange(ctx, |conn, ex, ctx| {
            if let Link::Queued { place, .. } = &mut ex.link {
                if let Some(place) = place.take() {
                    place.served();
                }
            }
            let hold = Hold::leased(&ex.route, grant.lease);
            conn.dequeued(ex, hold, ctx)
        });
        Ok(self.finish_turn(flow, ctx))
    }

    /// The model's queue is full: 503 `overloaded` with `Retry-After`.
    pub fn queue_refused(&mut self, ctx: &mut Ctx<'_>) -> Want {
        let flow = self.with_exchange(ctx, |conn, ex, _| {
            conn.to_client = Outbox::default();
            conn.reject(ApiError::Overloaded, ex.close_on_error())
        });
        match flow {
            Flow::Again => self.drive(ctx),
            other => self.finish_turn(other, ctx),
        }
    }

    /// The upstream request head for `backend`, from the copy kept for sending again, framed
    /// as `head` says (the client's framing, or `Content-Length` of a rewritten body).
    pub(super) fn resend_head(
        &self,
        resend: &Resend,
        head: &RequestHead,
        backend: &Backend,
        ctx: &mut Ctx<'_>,
    ) -> Chunk {
        let raw = resend.raw.bytes();
        let target = match &resend.target {
            Some(t) => &t[..],
            None => raw.get(resend.head.target.clone()).unwrap_or(b"/"),
        };
        build_upstream_head(
            raw,
            head,
            backend,
            target,
            (self.peer, self.secure),
            self.rec.request_id.get(),
            resend.strip_authorization,
            ctx,
        )
    }

    /// Out of the queue with a replica: give the outbox that replica's version of the body,
    /// put the head for it in front, and connect.
    pub(super) fn dequeued(&mut self, ex: &mut Exchange, hold: Hold, ctx: &mut Ctx<'_>) -> Flow {
        let route = Arc::clone(&ex.route);
        let (Failover::Ready { resend, .. }, Some(backend)) =
            (&mut ex.failover, hold.backend(&route))
        else {
            return self.reject(ApiError::UpstreamUnavailable, ex.close_on_error());
        };
        let fitted = rewrite::fit_body(
            &backend.profile,
            &resend.head,
            &mut resend.fitted,
            &mut ex.to_upstream,
            0,
        );
        let head = match fitted {
            Ok(head) => head,
            Err(err) => return self.reject(err, ex.close_on_error()),
        };
        let head_chunk = self.resend_head(resend, &head, backend, ctx);
        ex.to_upstream.prepend(head_chunk);
        self.rec.replica = hold.index;
        ex.hold = hold;
        ex.link = Link::Wanted {
            attempt: 0,
            fresh_only: false,
        };
        ex.connect_started = ctx.now;
        Flow::Upstream
    }

    /// The upstream failed: retry, answer 502/504, or cut the client off.
    pub(super) fn upstream_failed(
        &mut self,
        ex: &mut Exchange,
        failure: Failure,
        ctx: &mut Ctx<'_>,
    ) -> Flow {
        if let Some(up) = self.upstream.take() {
            self.dead.push(up);
        }
        if ex.head_sent() {
            ex.resp = Resp::Truncated;
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
        let (attempt, fresh_only) = match ex.link {
            Link::Wanted {
                attempt,
                fresh_only,
            }
            | Link::Connecting {
                attempt,
                fresh_only,
            } => (attempt, fresh_only),
            _ => (0, false),
        };
        // One count per failed attempt: an address that refused, or a name with no address
        // at all (running out after failed attempts was already counted).
        if failure == Failure::Connect || (failure == Failure::NoAddress && attempt == 0) {
            ex.route.stats.connect_error();
        }
        if !matches!(ex.link, Link::Answered) {
            if failure == Failure::Connect && attempt < MAX_ADDRESSES {
                ex.link = Link::Wanted {
                    attempt: attempt + 1,
                    fresh_only,
                };
                ex.to_upstream.rewind();
                return Flow::Upstream;
            }
            // A pooled connection that failed before any answer may just have gone stale:
            // send once more on a fresh one (which is never `reused`, so never again).
            let stale = matches!(ex.link, Link::Sent { reused: true });
            if stale && failure == Failure::Broken && ex.to_upstream.is_retaining() {
                ex.route.stats.retry();
                ex.link = Link::Wanted {
                    attempt: 0,
                    fresh_only: true,
                };
                ex.to_upstream.rewind();
                ex.request_sent = None;
                return Flow::Upstream;
            }
            let was_connecting = matches!(ex.link, Link::Connecting { .. });
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
        // The request is complete unless its body was still streaming.
        let close = ex.close_on_error() || self.draining;
        self.to_client = Outbox::default();
        self.reject(err, close)
    }

    /// Moves the request to a replica it has not tried yet (its version of the body, and
    /// the head rebuilt for it); false when none is left, retries are spent, or the body is
    /// not buffered. A replica whose rewrite refuses the body counts as tried.
    pub(super) fn fail_over(&mut self, ex: &mut Exchange, ctx: &mut Ctx<'_>) -> bool {
        let Failover::Ready {
            resend,
            tried,
            done,
        } = &mut ex.failover
        else {
            return false;
        };
        if !ex.to_upstream.is_retaining() || *done >= ex.route.balance.retries {
            return false;
        }
        let route = Arc::clone(&ex.route);
        *tried |= replica_bit(ex.hold.index);
        let (next, head) = loop {
            let Some(choosing) = ctx.balancers.get(&route) else {
                return false;
            };
            // A request under way cannot wait in the queue: a full tier spills to the next.
            let Ok(next) = Hold::take(&route, choosing, ctx.now, *tried, true) else {
                return false;
            };
            let Some(backend) = next.backend(&route) else {
                return false;
            };
            // The outbox holds the head, then the body.
            match rewrite::fit_body(
                &backend.profile,
                &resend.head,
                &mut resend.fitted,
                &mut ex.to_upstream,
                1,
            ) {
                Ok(head) => break (next, head),
                Err(_) => *tried |= replica_bit(next.index),
            }
        };
        let Some(backend) = next.backend(&route) else {
            return false;
        };
        let head_chunk = self.resend_head(resend, &head, backend, ctx);
        *done += 1;
        ex.hold.failed_over();
        ex.route.stats.retry();
        ex.to_upstream.replace_first(head_chunk);
        ex.to_upstream.rewind();
        self.rec.retries += 1;
        self.rec.replica = next.index;
        ex.hold = next;
        ex.link = Link::Wanted {
            attempt: 0,
            fresh_only: false,
        };
        ex.request_sent = None;
        true
    }
}

/// Bit `i` of a replica mask (none past the mask's width).
pub(super) fn replica_bit(i: usize) -> u64 {
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}
