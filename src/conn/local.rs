//! Locally made responses: local endpoints, errors, the reload answer, and lingering closes.

use std::sync::atomic::Ordering;

use crate::admin;
use crate::error::{self, ApiError};
use crate::h1::{Method, RequestHead};
use crate::net::{Io, Peer};
use crate::router::Routes;

use super::head::Local;
use super::outbox::{Chunk, Flush};
use super::record::outcome_of;
use super::{Conn, Ctx, Flow, Phase, Want, LINGER, LINGER_BYTES};

impl Conn {
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

    /// A local endpoint (`/health`, `/v1/models[/id]`, `/metrics`, `/status[.json]`) answers
    /// from this process.
    pub(super) fn answer_local(
        &mut self,
        local: Local,
        head: &RequestHead,
        close_on_error: bool,
        routes: &Routes,
        ctx: &mut Ctx<'_>,
    ) -> Flow {
        if !admin::method_allowed(head.method) {
            let allow = "GET, HEAD";
            return self.reject(ApiError::MethodNotAllowed { allow }, close_on_error);
        }
        let json = "application/json";
        let body = match local {
            Local::Health => {
                let counts = replica_counts(routes, ctx);
                let counts: Vec<(&str, usize, usize)> = counts
                    .iter()
                    .map(|(n, h, t)| (n.as_str(), *h, *t))
                    .collect();
                Ok((json, admin::health_with_replicas(routes, &counts)))
            }
            Local::List => Ok((json, admin::list_models(routes, self.token))),
            Local::Get(id) => admin::get_model(routes, &id, self.token).map(|b| (json, b)),
            Local::Metrics => {
                let in_flight = ctx.in_flight.load(Ordering::Relaxed);
                let text = ctx.obs.metrics.render(in_flight, ctx.now).into_bytes();
                Ok(("text/plain; version=0.0.4; charset=utf-8", text))
            }
            Local::Status => Ok(("text/html; charset=utf-8", admin::status::PAGE.into())),
            Local::StatusJson => {
                let in_flight = ctx.in_flight.load(Ordering::Relaxed);
                let metrics = &ctx.obs.metrics;
                let body = admin::status::status_json(routes, metrics, in_flight, ctx.now);
                Ok((json, body))
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

    /// `POST /admin/reload` from a local peer: the server thread reloads and answers
    /// through [`Conn::reload_done`].
    pub(super) fn start_reload(&mut self, head: &RequestHead, close_on_error: bool) -> Flow {
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

    /// Queues an error response; `close` ends the connection after it.
    pub(super) fn reject(&mut self, err: ApiError, close: bool) -> Flow {
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

    pub(super) fn respond(&mut self, close: bool, ctx: &mut Ctx<'_>) -> Flow {
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

    pub(super) fn start_linger(&mut self, ctx: &mut Ctx<'_>) -> Flow {
        self.client.stream.shutdown_write();
        self.inbuf = None;
        self.phase = Phase::Linger {
            until: ctx.now + LINGER,
            discarded: 0,
        };
        Flow::Again
    }

    pub(super) fn linger(&mut self, _ctx: &mut Ctx<'_>) -> Flow {
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

/// Healthy and total replicas of each model with several (passive ejections and the health
/// thread's verdicts, process-wide), in name order.
pub(super) fn replica_counts(routes: &Routes, ctx: &mut Ctx<'_>) -> Vec<(String, usize, usize)> {
    let mut out: Vec<(String, usize, usize)> = routes
        .models
        .values()
        .filter(|r| r.backends.len() > 1)
        .map(|r| {
            let total = r.backends.len();
            let healthy = r.slots.as_ref().map_or(total, |s| s.healthy_count(ctx.now));
            (r.name.clone(), healthy, total)
        })
        .collect();
    out.sort();
    out
}
