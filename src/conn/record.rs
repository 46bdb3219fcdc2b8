//! What one request leaves behind: an access log line and its metrics. The record lives
//! inline in the connection (no allocation per request) and is finished exactly once, when
//! the answer is complete or the connection gives up on it.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::accesslog::{self, Entry, Outcome};
use crate::h1::RequestHead;
use crate::metrics::{Metrics, WorkerCounters};
use crate::net::Peer;
use crate::router::{Route, Routes, TokenPolicy};
use crate::usage::AnswerUsage;

use super::{RequestId, RequestIds};

/// Status logged for a request whose client left before any answer (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

/// A worker's observability sinks, lent to connections while they are driven.
pub struct Obs {
    pub metrics: Arc<Metrics>,
    pub counters: Arc<WorkerCounters>,
    /// Access log lines not yet handed to the log writer.
    pub log: Vec<u8>,
}

const METHOD_BYTES: usize = 16;

pub(super) struct Record {
    active: bool,
    started: Instant,
    wall: SystemTime,
    method: [u8; METHOD_BYTES],
    method_len: usize,
    /// The path without the query (kept only when the access log is on).
    path: Vec<u8>,
    pub request_id: RequestId,
    pub route: Option<Arc<Route>>,
    /// The key the request authenticated with (None: auth off, or no valid token): its
    /// counts, its token budget and its name in the log, from the table it started with.
    pub key: Option<Arc<TokenPolicy>>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// When the response head came from the upstream.
    pub head_at: Option<Instant>,
    /// Token counts and event timing read from the answer (compressed or not).
    pub usage: AnswerUsage,
    /// The backend of `route` the request went to (last one after a failover).
    pub replica: usize,
    /// Failovers to another replica.
    pub retries: u32,
    /// Replicas this request ejected.
    pub ejections: u32,
    /// The answer's tokens were charged to the key's budget.
    charged: bool,
}

impl Record {
    pub fn new(now: Instant) -> Record {
        Record {
            active: false,
            started: now,
            wall: SystemTime::UNIX_EPOCH,
            method: [0; METHOD_BYTES],
            method_len: 0,
            path: Vec::new(),
            request_id: RequestId::EMPTY,
            route: None,
            key: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            head_at: None,
            usage: AnswerUsage::new(),
            replica: 0,
            retries: 0,
            ejections: 0,
            charged: false,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// A request head was parsed: start its record and choose its request id.
    pub fn begin(
        &mut self,
        now: Instant,
        raw: &[u8],
        head: &RequestHead,
        keep_path: bool,
        ids: &mut RequestIds,
    ) {
        self.active = true;
        self.started = now;
        self.wall = SystemTime::now();
        let method = raw
            .iter()
            .position(|&b| b == b' ')
            .map_or(&raw[..0], |end| &raw[..end]);
        self.method_len = method.len().min(METHOD_BYTES);
        self.method[..self.method_len].copy_from_slice(&method[..self.method_len]);
        self.path.clear();
        if keep_path {
            let target = raw.get(head.target.clone()).unwrap_or(b"/");
            let end = memchr::memchr(b'?', target).unwrap_or(target.len());
            self.path.extend_from_slice(&target[..end]);
        }
        self.request_id = RequestId::choose(raw, head, ids);
        self.route = None;
        self.key = None;
        self.status = 0;
        self.bytes_in = head.head_len as u64;
        self.bytes_out = 0;
        self.head_at = None;
        self.usage = AnswerUsage::new();
        self.replica = 0;
        self.retries = 0;
        self.ejections = 0;
        self.charged = false;
    }

    /// Charges the answer's tokens (prompt + completion, as read so far) to the key's
    /// budget, once. Called as soon as the upstream has sent the whole answer, before its
    /// last bytes reach the client (a client that sends its next request at once must find
    /// the budget already charged), and by [`Record::finish`] for answers that ended
    /// otherwise.
    pub fn charge_tokens(&mut self, now: Instant) {
        if self.charged {
            return;
        }
        self.charged = true;
        if let Some(key) = &self.key {
            let (prompt, completion) = (self.usage.prompt_tokens(), self.usage.completion_tokens());
            let tokens = prompt.unwrap_or(0).saturating_add(completion.unwrap_or(0));
            key.charge_tokens(tokens, now);
        }
    }

    /// The request is over: one access log line (when enabled) and its metrics.
    pub fn finish(
        &mut self,
        outcome: Outcome,
        now: Instant,
        peer: Peer,
        routes: &Routes,
        obs: &mut Obs,
    ) {
        if !self.active {
            return;
        }
        self.active = false;
        if self.status == 0 {
            self.status = CLIENT_CLOSED;
        }
        let duration = now.saturating_duration_since(self.started);
        let ttfb = self
            .head_at
            .map(|t| t.saturating_duration_since(self.started));
        // An answer that ended otherwise (cut, client gone) is charged what it reported.
        self.charge_tokens(now);
        let (prompt, completion) = (self.usage.prompt_tokens(), self.usage.completion_tokens());
        let key = self.key.as_deref();
        let route = self.route.as_deref();
        // A key's request to a model outside its scope (403) never reached that model: it
        // is counted with the unrouted ones, where the key has its series.
        let stats = match (route, key) {
            (Some(r), Some(k)) if !k.counts_on(r) => &routes.unrouted,
            (Some(r), _) => &r.stats,
            (None, _) => &routes.unrouted,
        };
        stats.record(
            self.status,
            duration,
            ttfb,
            prompt,
            completion,
            self.usage.generation(),
            key.map(|k| k.counts(route)),
        );
        obs.metrics.finished(stats, self.status, outcome, now);
        if let Some(reason) = self.usage.unread() {
            stats.usage_unread(reason);
        }
        // An idle keep-alive connection must not hold an inflater (or its budget).
        self.usage.release();
        if routes.access_log {
            let entry = Entry {
                ts: self.wall,
                request_id: self.request_id.get(),
                client: match peer {
                    Peer::Tcp(addr) => Some(addr.ip()),
                    Peer::Unix => None,
                },
                method: &self.method[..self.method_len],
                path: &self.path,
                model: self.route.as_ref().map(|r| r.name.as_str()),
                upstream: self
                    .route
                    .as_ref()
                    .and_then(|r| r.backends.get(self.replica))
                    .map(|b| &*b.upstream_label),
                status: self.status,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                ttfb,
                duration,
                outcome,
            };
            accesslog::write_line(&entry, &mut obs.log);
            // Replica fields only when something happened (plain lines stay as they were).
            for (key, n) in [("retries", self.retries), ("ejections", self.ejections)] {
                if n > 0 {
                    accesslog::append_field(&mut obs.log, key, u64::from(n));
                }
            }
            // With auth on, every line names its key (null: no valid token); never the
            // token itself.
            if !routes.auth_tokens.is_empty() {
                let name = self.key.as_ref().map(|k| &*k.name);
                accesslog::append_str_field(&mut obs.log, "key", name);
            }
            // The identity the request went upstream under, when its replica has its own
            // (a fallback provider's model name, its tier).
            let backend = self
                .route
                .as_ref()
                .and_then(|r| r.backends.get(self.replica));
            if let Some(b) = backend {
                if let Some(name) = &b.profile.upstream_model {
                    accesslog::append_str_field(&mut obs.log, "upstream_model", Some(name));
                }
                if b.priority > 0 {
                    accesslog::append_field(&mut obs.log, "tier", u64::from(b.priority));
                }
            }
        }
        self.route = None;
        self.key = None;
    }
}

/// The outcome of a request answered locally with `status`.
pub fn outcome_of(status: u16) -> Outcome {
    match status {
        408 | 504 => Outcome::Timeout,
        502 => Outcome::UpstreamError,
        s if s >= 400 => Outcome::Rejected,
        _ => Outcome::Ok,
    }
}
