//! Per-replica series of models with several backends (issue 9): which replica requests went
//! to, failures, ejections and readmissions, failovers, and outstanding requests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use super::{escape_label, family};

/// One replica's counters, shared by every worker (relaxed atomics).
#[derive(Debug, Default)]
pub struct ReplicaStats {
    requests: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    readmissions: AtomicU64,
    failovers: AtomicU64,
    outstanding: AtomicI64,
    /// The active health check last saw it down.
    down: AtomicBool,
}

impl ReplicaStats {
    /// A request was sent to this replica (it is outstanding until [`Self::ended`]).
    pub fn started(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.outstanding.fetch_add(1, Relaxed);
    }

    pub fn ended(&self) {
        self.outstanding.fetch_sub(1, Relaxed);
    }

    /// A connect failure, a reset before the head, or an ejecting status.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    pub fn ejected(&self) {
        self.ejections.fetch_add(1, Relaxed);
    }

    pub fn readmitted(&self) {
        self.readmissions.fetch_add(1, Relaxed);
    }

    /// A request that failed here was sent to another replica.
    pub fn failed_over(&self) {
        self.failovers.fetch_add(1, Relaxed);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Relaxed);
    }
}

/// Renders every family for `(model, replica label, stats)` rows (nothing when empty).
pub(super) fn render(rows: &[(String, String, std::sync::Arc<ReplicaStats>)], out: &mut String) {
    if rows.is_empty() {
        return;
    }
    type Get = fn(&ReplicaStats) -> i64;
    let families: [(&str, &str, &str, Get); 7] = [
        (
            "modelgate_replica_requests_total",
            "counter",
            "Requests sent to each replica of a model.",
            |s| s.requests.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_failures_total",
            "counter",
            "Connect failures, resets before the response head and ejecting statuses, by replica.",
            |s| s.failures.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_ejections_total",
            "counter",
            "Times a replica was ejected by passive health checking (counted per worker).",
            |s| s.ejections.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_readmissions_total",
            "counter",
            "Times an ejected replica was readmitted after a successful trial request.",
            |s| s.readmissions.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_failovers_total",
            "counter",
            "Requests that failed on a replica before any response byte and were sent to another.",
            |s| s.failovers.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_outstanding_requests",
            "gauge",
            "Requests in progress on each replica (streams count until they end).",
            |s| s.outstanding.load(Relaxed).max(0),
        ),
        (
            "modelgate_replica_up",
            "gauge",
            "0 when the active health check last found the replica down, else 1.",
            |s| i64::from(!s.down.load(Relaxed)),
        ),
    ];
    for (name, kind, help, get) in families {
        family(out, name, kind, help);
        for (model, replica, stats) in rows {
            out.push_str(name);
            out.push_str("{model=\"");
            escape_label(out, model);
            out.push_str("\",replica=\"");
            escape_label(out, replica);
            let _ = writeln!(out, "\"}} {}", get(stats));
        }
    }
}
