//! Starting an exchange: `/route/` requests, choosing a replica, the upstream request head.

use std::sync::Arc;

use crate::balance::Pick;
use crate::error::ApiError;
use crate::h1::{self, BodyTracker, RequestFraming, RequestHead, UpstreamRequest};
use crate::net::Peer;
use crate::router::{Backend, Route, Routes};

use super::exchange::{Exchange, Failover, Link};
use super::ids::InFlight;
use super::outbox::{copy_chunk, Chunk, Outbox};
use super::replicas::{Hold, Resend};
use super::{Conn, Ctx, Flow, Phase, CONTINUE};

impl Conn {
    /// `/route/{model}/…`: the route is known from the path, so the body streams through.
    pub(super) fn start_path_route(
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
        if (route.rewrites_any() && head.framing != RequestFraming::Empty) || scoped_body {
            // A replica's profile rewrites the body: read it whole first, as for a
            // body-routed request.
            let flow = self.start_body(head, routes, ctx);
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
            fitted: None,
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
        let mut to_upstream = Outbox::reusing(!streaming, ctx.spares.chunk_list());
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
        ex.failover = Failover::with(resend);
        ex.upgrade = upgrade;
        self.enter_proxy(ex, hold, ctx)
    }

    /// The exchange begins: with a replica it connects, without one it waits in the queue.
    pub(super) fn enter_proxy(
        &mut self,
        mut ex: Exchange,
        hold: Option<Hold>,
        ctx: &mut Ctx<'_>,
    ) -> Flow {
        let flow = match hold {
            Some(hold) => {
                ex.hold = hold;
                Flow::Upstream
            }
            None => {
                ex.link = Link::Queued {
                    since: ctx.now,
                    place: None,
                };
                Flow::Queue
            }
        };
        self.phase = Phase::Proxy(ctx.spares.exchanges.boxed(ex));
        flow
    }
}

/// Writes the upstream request head for `route` into a pooled block (or an owned buffer
/// when it does not fit one).
#[allow(clippy::too_many_arguments)]
pub(super) fn build_upstream_head(
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

/// None: every replica is at its limit and the model has a wait queue (or others already
/// wait there, on any worker: FIFO, a newcomer never overtakes them).
pub(super) fn choose_replica(
    route: &Arc<Route>,
    ctx: &mut Ctx<'_>,
) -> Result<Option<Hold>, ApiError> {
    let Some((chooser, slots)) = ctx.balancers.get(route) else {
        return Ok(Some(Hold::only()));
    };
    // A request that can wait does when its tier is full; one that cannot (no queue, or a
    // full one) goes on to the next tier, if the model has one.
    let can_wait = slots.waiting() < slots.queue_size();
    if can_wait && slots.has_waiters() {
        return Ok(None);
    }
    match Hold::take(route, (chooser, slots), ctx.now, 0, !can_wait) {
        Ok(hold) => Ok(Some(hold)),
        Err(Pick::Full) if can_wait => Ok(None),
        Err(Pick::Full) => Err(ApiError::Overloaded),
        Err(Pick::Exhausted) => Err(ApiError::UpstreamUnavailable),
    }
}
