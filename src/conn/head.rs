//! Reading a request head, and deciding what it asks for.

use std::sync::Arc;

use crate::accesslog::Outcome;
use crate::admin;
use crate::auth;
use crate::error::ApiError;
use crate::h1::{self, Parse, RequestFraming, RequestHead, MAX_HEAD_BYTES};
use crate::net::Io;
use crate::router::{self, Target};

use super::{Conn, Ctx, Flow, Phase};

impl Conn {
    pub(super) fn read_head(&mut self, ctx: &mut Ctx<'_>) -> Flow {
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
    pub(super) fn start_request(&mut self, head: RequestHead, ctx: &mut Ctx<'_>) -> Flow {
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
            Target::Status => Decision::Local(Local::Status),
            Target::StatusJson => Decision::Local(Local::StatusJson),
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
            // A browser on the status page answers a Basic prompt with the token as password.
            let status_page =
                matches!(decision, Decision::Local(Local::Status | Local::StatusJson));
            let value = head.authorization.clone().and_then(|r| raw.get(r));
            let presented = auth::presented_token(value, status_page);
            self.token = presented.and_then(|t| auth::find_token(&t, &routes.auth_tokens));
            if self.token.is_none() {
                return self.reject(ApiError::unauthorized(status_page), close_on_error);
            }
            // Counted and charged under its key from here on, refusals included.
            self.rec.key = self
                .token
                .and_then(|i| routes.token_policies.get(i))
                .cloned();
            // Every authenticated request counts against the token's rate limit; a proxied
            // one also needs some of its token budget left.
            let proxied = matches!(decision, Decision::ByPath(..) | Decision::ByBody);
            if let Err(err) = routes.admit(self.token, ctx.now, proxied) {
                return self.reject(err, close_on_error);
            }
        }
        match decision {
            Decision::Reject(err) => self.reject(err, close_on_error),
            Decision::Local(local) => self.answer_local(local, &head, close_on_error, &routes, ctx),
            Decision::ByPath(model, path) => {
                self.start_path_route(head, &model, &path, routes, ctx)
            }
            Decision::ByBody if head.upgrade => self.start_upgrade(head, routes, ctx),
            Decision::ByBody => self.start_body(head, routes, ctx),
            Decision::AdminReload => self.start_reload(&head, close_on_error),
        }
    }

    pub(super) fn consume_head(&mut self, head_len: usize) {
        if let Some(buf) = self.inbuf.as_mut() {
            buf.consume(head_len);
        }
        self.pending_head = 0;
    }
}

/// What a request head asks for, with everything borrowed from the buffer copied out.
pub(super) enum Decision {
    Local(Local),
    AdminReload,
    Reject(ApiError),
    ByPath(String, Vec<u8>),
    ByBody,
}

pub(super) enum Local {
    Health,
    List,
    Get(String),
    Metrics,
    Status,
    StatusJson,
}
