//! Reading the upstream's response: its head (1xx, 101, status failover), then its body.

use crate::h1::{self, BodyTracker, Parse, ResponseFraming, MAX_HEAD_BYTES};
use crate::net::Io;

use super::exchange::{Exchange, Failover, Failure, Link, Resp};
use super::outbox::{copy_chunk, Chunk};
use super::{Conn, Ctx, Flow};

impl Conn {
    /// One read from the upstream into the exchange's response block: the response head,
    /// or body bytes for the client. Called only when the block is empty or holds a partial
    /// head, so one block per direction is all an exchange ever holds (backpressure).
    pub(super) fn read_upstream(
        &mut self,
        ex: &mut Exchange,
        ctx: &mut Ctx<'_>,
    ) -> Result<bool, Flow> {
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
                if !matches!(ex.link, Link::Answered) {
                    ex.link = Link::Answered;
                    // A status in `retryOnStatus` may still send the request elsewhere: keep
                    // it until the final head is judged.
                    let failover = matches!(ex.failover, Failover::Ready { .. });
                    if ex.route.balance.retry_on_status.is_empty() || !failover {
                        ex.to_upstream.release_written();
                        // No failover from here on: give the head copy's block back.
                        ex.failover = Failover::Off;
                    }
                }
                match &mut ex.resp {
                    Resp::Head => self.parse_response(ex, ctx).map(|()| true),
                    Resp::Body {
                        tracker,
                        reusable,
                        close_client,
                    } => {
                        let start = buf.len() - n;
                        let (usage, now) = (&mut self.rec.usage, ctx.now);
                        match tracker.feed(&buf.filled()[start..], &mut |d| usage.feed(d, now)) {
                            Ok(consumed) if consumed < n => {
                                // Bytes past the framed end: never forwarded, never reused.
                                *reusable = false;
                                buf.truncate(start + consumed);
                            }
                            Ok(_) => {}
                            Err(_) => {
                                // Invalid chunking from the upstream: cut the stream.
                                buf.truncate(start);
                                ex.resp = Resp::Truncated;
                                return Ok(true);
                            }
                        }
                        if tracker.is_done() {
                            let (reusable, close_client) = (*reusable, *close_client);
                            ex.upstream_finished(reusable, close_client);
                            self.rec.charge_tokens(now);
                        }
                        Ok(true)
                    }
                    Resp::Done { .. } | Resp::Truncated | Resp::Switched => Ok(false),
                }
            }
            Io::WouldBlock => {
                up.readable = false;
                Ok(false)
            }
            Io::Eof | Io::Failed(_) => {
                if let Resp::Body { tracker, .. } = &ex.resp {
                    if tracker.is_until_close() {
                        // The close is the end of this body: a complete response.
                        ex.upstream_finished(false, true);
                        self.rec.charge_tokens(ctx.now);
                    } else {
                        ex.resp = Resp::Truncated;
                    }
                    return Ok(true);
                }
                Err(self.upstream_failed(ex, Failure::Broken, ctx))
            }
        }
    }

    /// Parses the response head in the response block, forwarding 1xx, and queues the final
    /// head; body bytes read with it stay in the block.
    pub(super) fn parse_response(
        &mut self,
        ex: &mut Exchange,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Flow> {
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
                ex.failover = Failover::Off;
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
                self.rec.status = 101;
                self.rec.head_at = Some(ctx.now);
                buf.consume(head.head_len);
                ex.resp = Resp::Switched;
                return Ok(());
            }
            let retry_status = ex.route.balance.retry_on_status.contains(&head.status);
            let mut failure_counted = false;
            if retry_status && matches!(ex.failover, Failover::Ready { .. }) {
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
                    return Err(Flow::Upstream);
                }
            }
            if ex.to_upstream.is_retaining() && matches!(ex.link, Link::Answered) {
                ex.to_upstream.release_written();
            }
            ex.failover = Failover::Off;
            let close_client = !ex.client_keep_alive
                || head.framing == ResponseFraming::UntilClose
                || ex.body_streaming()
                || self.draining;
            let buf = &mut ex.resp_buf;
            ctx.scratch.clear();
            h1::write_client_response_head(
                buf.filled(),
                &head,
                self.rec.request_id.get(),
                close_client,
                ctx.scratch,
            );
            self.announce_keep_alive(close_client, ctx.scratch);
            self.to_client.push(copy_chunk(ctx.scratch, ctx.pool));
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
            let mut reusable = head.keep_alive;
            let available = buf.len();
            let (usage, now) = (&mut self.rec.usage, ctx.now);
            if head.framing != ResponseFraming::Empty {
                // (A bodiless answer needs no inflater, whatever it is labelled.)
                usage.begin(head.coding, head.shape, ctx.pool);
            }
            match tracker.feed(buf.filled(), &mut |d| usage.feed(d, now)) {
                Ok(consumed) if consumed < available => {
                    reusable = false;
                    buf.truncate(consumed);
                }
                Ok(_) => {}
                Err(_) => {
                    buf.clear();
                    ex.resp = Resp::Truncated;
                    return Ok(());
                }
            }
            if tracker.is_done() {
                ex.upstream_finished(reusable, close_client);
                self.rec.charge_tokens(now);
            } else {
                ex.resp = Resp::Body {
                    tracker,
                    reusable,
                    close_client,
                };
            }
            return Ok(());
        }
    }
}
