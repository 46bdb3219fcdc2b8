//! Per-replica series of models with several backends (issue 9): which replica requests went
//! to, failures, ejections and readmissions, failovers, and outstanding requests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{escape_label, family, nanos, process_epoch};

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
    /// Its tier (`priority`) in the current routing table.
    tier: AtomicU32,
    /// Requests it took as a fallback: it is not in its model's first tier (issue 18).
    fallbacks: AtomicU64,
    /// When the latest ejection ends, in nanoseconds since [`process_epoch`]; 0 when none is
    /// pending: the view for `/status` and `modelgate_replica_ejected` (the ejection itself
    /// is decided in the model's `balance::Slots`).
    ejected_until: AtomicU64,
}

impl ReplicaStats {
    /// A request was sent to this replica (it is outstanding until [`Self::ended`]).
    pub fn started(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.outstanding.fetch_add(1, Relaxed);
    }

    /// Its tier in the table being built (requests are counted by tier at scrape).
    pub fn set_tier(&self, tier: u32) {
        self.tier.store(tier, Relaxed);
    }

    /// A request came to it as a fallback (the tiers before its own could not take it, or
    /// failed it before its first response byte).
    pub fn fell_back(&self) {
        self.fallbacks.fetch_add(1, Relaxed);
    }

    pub fn ended(&self) {
        self.outstanding.fetch_sub(1, Relaxed);
    }

    /// A connect failure, a reset before the head, or an ejecting status.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// It was ejected until `until` (the latest end is kept).
    pub fn ejected(&self, until: Instant) {
        self.ejections.fetch_add(1, Relaxed);
        let until = nanos(until.saturating_duration_since(process_epoch())).max(1);
        self.ejected_until.fetch_max(until, Relaxed);
    }

    /// A trial request succeeded: the replica is back.
    pub fn readmitted(&self) {
        self.readmissions.fetch_add(1, Relaxed);
        self.ejected_until.store(0, Relaxed);
    }

    /// A request that failed here was sent to another replica.
    pub fn failed_over(&self) {
        self.failovers.fetch_add(1, Relaxed);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Relaxed);
    }

    /// The active health check last found it down.
    pub fn is_down(&self) -> bool {
        self.down.load(Relaxed)
    }

    /// How long it stays ejected after `now` (None: not ejected).
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        let until = self.ejected_until.load(Relaxed);
        let now = nanos(now.saturating_duration_since(process_epoch()));
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Requests in progress on it (only counted for replicas that are balanced or limited).
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Relaxed).max(0) as u64
    }

    /// Requests sent to it so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Failures (connect, reset before the head, ejecting status) so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }
}

/// Renders every family for `(model, replica label, stats)` rows (nothing when empty);
/// `now` decides which ejections are still running.
pub(super) fn render(
    rows: &[(String, String, std::sync::Arc<ReplicaStats>)],
    now: Instant,
    out: &mut String,
) {
    if rows.is_empty() {
        return;
    }
    type Get = fn(&ReplicaStats, Instant) -> i64;
    let families: [(&str, &str, &str, Get); 8] = [
        (
            "modelgate_replica_requests_total",
            "counter",
            "Requests sent to each replica of a model.",
            |s, _| s.requests.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_failures_total",
            "counter",
            "Connect failures, resets before the response head and ejecting statuses, by replica.",
            |s, _| s.failures.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_ejections_total",
            "counter",
            "Times a replica was ejected by passive health checking.",
            |s, _| s.ejections.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_readmissions_total",
            "counter",
            "Times an ejected replica was readmitted after a successful trial request.",
            |s, _| s.readmissions.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_failovers_total",
            "counter",
            "Requests that failed on a replica before any response byte and were sent to another.",
            |s, _| s.failovers.load(Relaxed) as i64,
        ),
        (
            "modelgate_replica_outstanding_requests",
            "gauge",
            "Requests in progress on each replica (streams count until they end).",
            |s, _| s.outstanding.load(Relaxed).max(0),
        ),
        (
            "modelgate_replica_up",
            "gauge",
            "0 when the active health check last found the replica down, else 1.",
            |s, _| i64::from(!s.down.load(Relaxed)),
        ),
        (
            "modelgate_replica_ejected",
            "gauge",
            "1 while the replica is ejected by passive health checking, else 0.",
            |s, now| i64::from(s.ejected_for(now).is_some()),
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
            let _ = writeln!(out, "\"}} {}", get(stats, now));
        }
    }
    render_tiers(rows, out);
}

/// Requests and fallbacks by tier (issue 18), summed over each tier's replicas.
fn render_tiers(rows: &[(String, String, std::sync::Arc<ReplicaStats>)], out: &mut String) {
    let mut tiers: BTreeMap<(&str, u32), (u64, u64)> = BTreeMap::new();
    for (model, _, stats) in rows {
        let sums = tiers
            .entry((model.as_str(), stats.tier.load(Relaxed)))
            .or_default();
        sums.0 += stats.requests.load(Relaxed);
        sums.1 += stats.fallbacks.load(Relaxed);
    }
    type Sum = fn(&(u64, u64)) -> u64;
    let families: [(&str, &str, Sum); 2] = [
        (
            "modelgate_tier_requests_total",
            "Requests sent to the replicas of each tier (priority) of a model.",
            |s| s.0,
        ),
        (
            "modelgate_tier_fallbacks_total",
            "Requests a later tier took because the tiers before it could not (down, ejected, full, or failed the request before its first byte).",
            |s| s.1,
        ),
    ];
    for (name, help, get) in families {
        family(out, name, "counter", help);
        for ((model, tier), sums) in &tiers {
            out.push_str(name);
            out.push_str("{model=\"");
            escape_label(out, model);
            let _ = writeln!(out, "\",tier=\"{tier}\"}} {}", get(sums));
        }
    }
}
