//! Reading and scanning a body to route it, and the handoff to the exchange.

use std::io::IoSliceMut;
use std::sync::Arc;

use crate::buf::{Block, BLOCK_SIZE};
use crate::error::ApiError;
use crate::h1::{BodyTracker, RequestFraming, RequestHead};
use crate::net::Io;
use crate::router::{Route, Routes};
use crate::scan::ScanError;

use super::exchange::{Exchange, Failover};
use super::ids::InFlight;
use super::outbox::{copy_chunk, Chunk, Flush, Outbox};
use super::replicas::{Fitted, Resend};
use super::scanner::BodyScanner;
use super::start::{build_upstream_head, choose_replica};
use super::{rewrite, Conn, Ctx, Flow, Phase, CONTINUE};

/// A body being buffered and scanned for `model`.
pub(super) struct BodyRead {
    pub(super) head: RequestHead,
    /// The raw head at `[0, head_len)`, then bytes read with it.
    pub(super) head_block: Block,
    /// Body bytes after the head that were read with it.
    pub(super) initial: usize,
    pub(super) body: Vec<Block>,
    pub(super) tracker: BodyTracker,
    pub(super) scanner: BodyScanner,
    pub(super) payload: u64,
    pub(super) routes: Arc<Routes>,
    /// Blocks offered to the next read (1 up to `READ_AHEAD`).
    pub(super) read_ahead: usize,
    /// A `/route/{model}/…` request to a model whose profile rewrites bodies: its route and
    /// the target to forward (the body is read whole to be rewritten).
    pub(super) path_route: Option<(Arc<Route>, Vec<u8>)>,
}

/// The most blocks one body read fills: 256 KiB per syscall, as much as one `writev` sends on.
pub(super) const READ_AHEAD: usize = 16;

impl Conn {
    /// Routed by body: check what can be checked from the head, then read the body.
    pub(super) fn start_body(
        &mut self,
        head: RequestHead,
        routes: Arc<Routes>,
        ctx: &mut Ctx<'_>,
    ) -> Flow {
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
        let mut body = ctx.spares.bodies.boxed(BodyRead {
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

    pub(super) fn read_body(&mut self, ctx: &mut Ctx<'_>) -> Flow {
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
    pub(super) fn finish_body(&mut self, overshoot: &[u8], ctx: &mut Ctx<'_>) -> Flow {
        let Phase::Body(body) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return Flow::Close;
        };
        let mut body = ctx.spares.bodies.unbox(body);
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
            // The chosen replica's version of the body: re-encoded when its profile (a
            // virtual model, or the replica's own upstream identity) rewrites bodies. A
            // request that waits for a replica gets its version once it has one.
            let profile = hold
                .as_ref()
                .and_then(|h| h.backend(&route))
                .filter(|b| b.profile.rewrites())
                .map(|b| Arc::clone(&b.profile));
            let rewritten = match profile {
                Some(profile) => {
                    let start = body.head.head_len;
                    let mut pieces = vec![raw.get(start..start + body.initial).unwrap_or(&[])];
                    pieces.extend(body.body.iter().map(Block::filled));
                    let (new_body, head) = rewrite::rewrite_body(&profile, &body.head, &pieces)?;
                    Some((new_body, head, profile))
                }
                None => None,
            };
            let head = rewritten.as_ref().map_or(&body.head, |(_, h, _)| h);
            let target = match &path_route {
                Some((_, path)) => path.as_slice(),
                None => raw.get(body.head.target.clone()).unwrap_or(b"/"),
            };
            let strip = !body.routes.auth_tokens.is_empty();
            let resend = (hold.is_none() || route.backends.len() > 1).then(|| Resend {
                raw: copy_chunk(raw.get(..body.head.head_len).unwrap_or(&[]), ctx.pool),
                head: body.head.clone(),
                target: path_route.as_ref().map(|(_, path)| path.clone()),
                strip_authorization: strip,
                fitted: None,
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
            let body_out = rewritten.map(|(b, _, profile)| (b, profile));
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
            Ok((route, slot, resp_buf, head_chunk, hold, mut resend, rewritten)) => {
                let mut to_upstream = Outbox::reusing(true, ctx.spares.chunk_list());
                to_upstream.extend(head_chunk);
                match (rewritten, resend.as_mut()) {
                    // Another replica may want the client's bytes: they stay parked.
                    (Some((new_body, profile)), Some(resend)) => {
                        let len = new_body.len() as u64;
                        to_upstream.push(Chunk::Owned(new_body));
                        let mut parked = Vec::with_capacity(1 + body.body.len());
                        parked.push(Chunk::Block(first));
                        parked.extend(body.body.drain(..).map(Chunk::Block));
                        resend.fitted = Some(Fitted {
                            profile,
                            parked,
                            len,
                        });
                    }
                    // The raw blocks go back to the pool when `first` and `body` drop.
                    (Some((new_body, _)), None) => to_upstream.push(Chunk::Owned(new_body)),
                    (None, _) => {
                        to_upstream.push(Chunk::Block(first));
                        for block in body.body.drain(..) {
                            to_upstream.push(Chunk::Block(block));
                        }
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
                ex.failover = Failover::with(resend);
                self.enter_proxy(ex, hold, ctx)
            }
        }
    }
}

/// Feeds body bytes to the framing tracker and the payload to the scanner. Returns how
/// many bytes belong to this body, and the first error (bad framing, over the cap, or
/// invalid JSON or multipart: all final).
pub(super) fn observe_body(
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
