//! Choosing a replica of a model, and the passive-health state machine (issues 9 and 17).
//!
//! What a replica has in flight, whether it is ejected or down, and who waits for a slot is
//! process-wide: one [`Slots`] per model (`slots.rs`, atomics) and its wait queue
//! (`queue.rs`), shared by every worker. A `maxConcurrentRequests` of 4 means 4 for the
//! process, however many workers there are. The choice itself is per worker: a [`Chooser`]
//! holds its random draws and round-robin scores and reads the shared counts. Each exchange
//! holds a [`Lease`] on the replica it uses; the lease counts the request as outstanding
//! until the exchange ends (a long SSE stream stays outstanding for its whole life),
//! whatever way it ends.
//!
//! Why least-outstanding with two random choices (P2C) rather than round-robin: LLM requests
//! differ in cost by orders of magnitude (a 10-token answer vs. a 4k-token stream), so equal
//! request counts are not equal load. The number of requests a replica is still working on is
//! the cheapest honest signal of its queue: a slow or overloaded replica keeps its requests
//! longer and so receives fewer new ones. Sampling two candidates (weighted) and taking the
//! less loaded avoids the herd that "always the global minimum" causes when several workers
//! decide on stale views, at O(1) expected work. Round-robin stays available
//! (`"balance": "round-robin"`, smooth weighted) for comparison.
//!
//! Passive health: a connect failure, a reset before the response head, or a configured
//! status (502/503/504 by default) ejects the replica for `ejectTime`, doubling with each
//! consecutive failure up to `ejectTimeMax`, for every worker at once. When the time is up
//! the replica gets one trial request in the whole process (the probe); success readmits it,
//! failure ejects it again for longer. Active health (`healthCheck`) marks replicas down/up
//! from the health thread's results.
//!
//! A model whose replicas are all unavailable still tries one (the one returning soonest):
//! refusing outright would turn a wrong health view into an outage, and a one-replica model
//! must behave exactly as before replicas existed.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod queue;
mod slots;

pub use queue::{Grant, Handoff, QueueGauge, Ticket, Waiting};
pub use slots::{Lease, Registry, Slots};

/// Most replicas one model may list (the failover mask is a `u64`).
pub const MAX_REPLICAS: usize = 64;

/// How a model spreads requests over its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Power-of-two-choices on outstanding requests per unit of weight.
    #[default]
    LeastOutstanding,
    /// Smooth weighted round-robin.
    RoundRobin,
}

/// Active health checking of a model's replicas (`healthCheck`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path requested with `GET` (default `/health`).
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A model's balancing settings (all optional in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceConfig {
    pub policy: Policy,
    /// Other replicas a failed request may be sent to (`retries`, default 2).
    pub retries: u32,
    /// Response statuses that eject the replica (the response is still forwarded).
    pub eject_on_status: Vec<u16>,
    /// Response statuses that send the request to another replica instead of the client
    /// (`retryOnStatus`, default none: 429 and `Retry-After` pass through).
    pub retry_on_status: Vec<u16>,
    /// First ejection; doubles per consecutive failure.
    pub eject_time: Duration,
    pub eject_time_max: Duration,
    /// Requests that may wait (in the whole process) when every replica is at its limit;
    /// 0: none.
    pub queue_size: usize,
    /// Longest wait in that queue before 503 `overloaded`.
    pub queue_timeout: Duration,
    pub health_check: Option<HealthCheck>,
}

pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_EJECT_STATUS: [u16; 3] = [502, 503, 504];
pub const DEFAULT_EJECT_TIME: Duration = Duration::from_secs(1);
pub const DEFAULT_EJECT_TIME_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for BalanceConfig {
    fn default() -> BalanceConfig {
        BalanceConfig {
            policy: Policy::LeastOutstanding,
            retries: DEFAULT_RETRIES,
            eject_on_status: DEFAULT_EJECT_STATUS.to_vec(),
            retry_on_status: Vec::new(),
            eject_time: DEFAULT_EJECT_TIME,
            eject_time_max: DEFAULT_EJECT_TIME_MAX,
            queue_size: 0,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            health_check: None,
        }
    }
}

/// What the balancer needs to know about one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLimits {
    /// Relative share of requests (at least 1).
    pub weight: u32,
    /// Outstanding requests the whole process sends it at most; 0: no limit.
    pub max_outstanding: u32,
    /// Its tier (0 first): see [`Chooser::take`].
    pub priority: u32,
}

/// Why no replica was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Every replica not yet tried is at its limit: wait in the queue or refuse.
    Full,
    /// Every replica was tried already.
    Exhausted,
}

/// Bit `i` of a replica mask (none past the mask's width).
fn bit(i: usize) -> u64 {
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

/// One worker's way of choosing among one model's replicas: its random draws and its
/// round-robin scores. What it chooses from (outstanding counts, health) is the process-wide
/// [`Slots`]; no two workers share a `Chooser`, so it needs no synchronisation.
#[derive(Debug)]
pub struct Chooser {
    rng: u64,
    /// Smooth weighted round-robin's running score per replica (empty: least-outstanding).
    rr: Vec<i64>,
}

impl Chooser {
    pub fn new(slots: &Slots, seed: u64) -> Chooser {
        Chooser {
            // xorshift must not start at zero.
            rng: seed | 1,
            rr: match slots.policy {
                Policy::RoundRobin => vec![0; slots.len()],
                Policy::LeastOutstanding => Vec::new(),
            },
        }
    }

    /// A least-outstanding chooser for one decision (a slot handed to a waiter).
    pub(crate) fn transient(seed: u64) -> Chooser {
        Chooser {
            rng: seed | 1,
            rr: Vec::new(),
        }
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Chooses a replica not in `tried` (bit i = replica i) and holds a slot on it.
    ///
    /// Tiers (issue 18): the replicas of the first tier (lowest `priority`) are balanced as
    /// usual; the next tier is used only when no replica of the tiers before it can take the
    /// request: each is tried (`tried`), ejected or down, or at its limit. At its limit
    /// counts only with `spill` (the request cannot wait: no queue, a full queue, or a
    /// failover of a request already under way); without it, a full tier means `Full` and
    /// the request waits for that tier.
    pub fn take(
        &mut self,
        slots: &Arc<Slots>,
        now: Instant,
        tried: u64,
        spill: bool,
    ) -> Result<Lease, Pick> {
        let now = slots.tick(now);
        self.reserve(slots, now, tried, spill)
            .map(|replica| Lease::new(slots, replica))
    }

    /// Chooses and counts a replica (the caller owns the slot). Another worker may fill a
    /// replica between the choice and the compare-exchange that takes the slot: the choice
    /// is then made again without it, at most once per replica.
    pub(crate) fn reserve(
        &mut self,
        slots: &Slots,
        now: u64,
        tried: u64,
        spill: bool,
    ) -> Result<usize, Pick> {
        let mut raced = 0u64;
        for _ in 0..=slots.len() {
            match self.choose(slots, now, tried | raced, spill) {
                Choice::Replica { index, trial } => {
                    if slots.begin(index, now, trial) {
                        return Ok(index);
                    }
                    raced |= bit(index);
                }
                Choice::Full => return Err(Pick::Full),
                Choice::Exhausted if raced != 0 => return Err(Pick::Full),
                Choice::Exhausted => return Err(Pick::Exhausted),
            }
        }
        Err(Pick::Full)
    }

    /// The replica to try: healthy ones with room first (by policy, in the first tier that
    /// has one), else a sign to wait (healthy ones are full), else the unhealthy one that
    /// returns soonest.
    fn choose(&mut self, slots: &Slots, now: u64, excluded: u64, spill: bool) -> Choice {
        let untried = |i: usize| i >= 64 || excluded & bit(i) == 0;
        // One replica: no choice to make (and no health to judge).
        if slots.len() == 1 {
            return match slots.replica(0) {
                Some(_) if !untried(0) => Choice::Exhausted,
                Some(r) if r.full() => Choice::Full,
                Some(_) => Choice::Replica {
                    index: 0,
                    trial: false,
                },
                None => Choice::Exhausted,
            };
        }
        let mut waited = false;
        for &tier in slots.tiers.iter() {
            let eligible = |i: usize| {
                untried(i)
                    && slots
                        .replica(i)
                        .is_some_and(|r| r.limits.priority == tier && !r.full() && r.healthy(now))
            };
            let mut total: u64 = 0;
            let mut count = 0usize;
            for (i, r) in slots.replicas.iter().enumerate() {
                if eligible(i) {
                    total += u64::from(r.limits.weight);
                    count += 1;
                }
            }
            if count > 0 {
                let index = if self.rr.len() == slots.len() {
                    self.round_robin(slots, &eligible, total)
                } else {
                    self.two_choices(slots, &eligible, total, count)
                };
                return Choice::Replica { index, trial: true };
            }
            // Nothing healthy with room in this tier. Healthy but full: wait for a slot,
            // unless the request cannot wait (then the next tier).
            let healthy_full = slots.replicas.iter().enumerate().any(|(i, r)| {
                r.limits.priority == tier && untried(i) && r.healthy(now) && r.full()
            });
            if healthy_full {
                if !spill {
                    return Choice::Full;
                }
                waited = true;
            }
        }
        if waited {
            return Choice::Full;
        }
        // Only unhealthy ones left: try the one that returns soonest rather than refuse
        // (the first tier's first).
        let fallback = slots
            .replicas
            .iter()
            .enumerate()
            .filter(|&(i, r)| untried(i) && !r.full())
            .min_by_key(|&(_, r)| (r.limits.priority, r.return_order()))
            .map(|(i, _)| i);
        match fallback {
            Some(index) => Choice::Replica {
                index,
                trial: false,
            },
            None if (0..slots.len()).any(untried) => Choice::Full,
            None => Choice::Exhausted,
        }
    }

    /// Two weighted random candidates; the one with fewer outstanding requests per weight
    /// (the process-wide counts).
    fn two_choices(
        &mut self,
        slots: &Slots,
        eligible: &dyn Fn(usize) -> bool,
        total: u64,
        count: usize,
    ) -> usize {
        let first_draw = self.random() % total.max(1);
        let a = weighted_nth(slots, first_draw, None, eligible);
        if count == 1 {
            return a;
        }
        let wa = slots.replica(a).map_or(1, |r| u64::from(r.limits.weight));
        let second_draw = self.random() % (total - wa).max(1);
        let b = weighted_nth(slots, second_draw, Some(a), eligible);
        let (Some(ra), Some(rb)) = (slots.replica(a), slots.replica(b)) else {
            return a;
        };
        // outstanding_a / weight_a vs outstanding_b / weight_b, without division.
        let la = u64::from(ra.outstanding()) * u64::from(rb.limits.weight);
        let lb = u64::from(rb.outstanding()) * u64::from(ra.limits.weight);
        if lb < la {
            b
        } else {
            a
        }
    }

    /// Smooth weighted round-robin (each eligible replica gains its weight, the leader pays
    /// the total): weights are honoured evenly interleaved.
    fn round_robin(
        &mut self,
        slots: &Slots,
        eligible: &dyn Fn(usize) -> bool,
        total: u64,
    ) -> usize {
        let mut best: Option<(usize, i64)> = None;
        for (i, (score, r)) in self.rr.iter_mut().zip(slots.replicas.iter()).enumerate() {
            if !eligible(i) {
                continue;
            }
            *score += i64::from(r.limits.weight);
            if best.is_none_or(|(_, s)| *score > s) {
                best = Some((i, *score));
            }
        }
        let chosen = best.map_or(0, |(i, _)| i);
        if let Some(score) = self.rr.get_mut(chosen) {
            *score -= i64::try_from(total).unwrap_or(i64::MAX);
        }
        chosen
    }
}

/// What [`Chooser::choose`] settled on.
enum Choice {
    /// `trial`: if its ejection is over, this request is the replica's one trial.
    Replica {
        index: usize,
        trial: bool,
    },
    Full,
    Exhausted,
}

/// The eligible replica where the cumulative weight passes `draw` (skipping `skip`).
fn weighted_nth(
    slots: &Slots,
    mut draw: u64,
    skip: Option<usize>,
    eligible: &dyn Fn(usize) -> bool,
) -> usize {
    let mut last = 0;
    for (i, r) in slots.replicas.iter().enumerate() {
        if Some(i) == skip || !eligible(i) {
            continue;
        }
        last = i;
        let w = u64::from(r.limits.weight);
        if draw < w {
            return i;
        }
        draw -= w;
    }
    last
}

#[cfg(test)]
mod tests;
