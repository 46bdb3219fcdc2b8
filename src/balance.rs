//! Choosing a replica of a model, and the passive-health state machine (issue 9).
//!
//! One [`Balancer`] per model per worker: no locks, no atomics on the choice. The worker
//! owns it behind an `Rc`, and each exchange holds a [`Lease`] on the replica it uses; the
//! lease counts the request as outstanding until the exchange ends (a long SSE stream stays
//! outstanding for its whole life), whatever way it ends.
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
//! consecutive failure up to `ejectTimeMax`. When the time is up the replica gets one trial
//! request (the probe); success readmits it, failure ejects it again for longer. Active
//! health (`healthCheck`) marks replicas down/up from the health thread's results.
//!
//! A model whose replicas are all unavailable still tries one (the one returning soonest):
//! refusing outright would turn a wrong health view into an outage, and a one-replica model
//! must behave exactly as before replicas existed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::ModelStats;

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
    /// Requests that may wait (per worker) when every replica is at its limit; 0: none.
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
    /// Outstanding requests this worker sends it at most; 0: no limit.
    pub max_outstanding: u32,
}

#[derive(Debug, Clone)]
struct Replica {
    limits: ReplicaLimits,
    outstanding: u32,
    /// Consecutive failures (sets the next ejection's length).
    failures: u32,
    ejected_until: Option<Instant>,
    /// The trial request after an ejection is in flight.
    probing: bool,
    /// Marked down by the active health check.
    down: bool,
    /// Smooth weighted round-robin's running score.
    rr_current: i64,
}

impl Replica {
    fn full(&self) -> bool {
        self.limits.max_outstanding > 0 && self.outstanding >= self.limits.max_outstanding
    }

    /// Takes new requests: not down, not ejected, and not waiting for its probe's answer.
    fn healthy(&self, now: Instant) -> bool {
        if self.down {
            return false;
        }
        match self.ejected_until {
            None => true,
            Some(t) => t <= now && !self.probing,
        }
    }
}

/// The outcome of a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Replica(usize),
    /// Every replica not yet tried is at its limit: wait in the queue or refuse.
    Full,
    /// Every replica was tried already.
    Exhausted,
}

/// One model's replicas as one worker sees them.
#[derive(Debug)]
pub struct Balancer {
    replicas: Vec<Replica>,
    policy: Policy,
    eject_time: Duration,
    eject_time_max: Duration,
    rng: u64,
    queue_size: usize,
    /// Waiting requests (connection key, generation), oldest first.
    waiters: VecDeque<(usize, u64)>,
    /// The model's `modelgate_queued_requests` gauge, kept equal to the sum of `waiters`
    /// over every worker's balancer (this one's share leaves with it on drop).
    queue_gauge: Option<Arc<ModelStats>>,
}

impl Balancer {
    pub fn new(replicas: &[ReplicaLimits], config: &BalanceConfig, seed: u64) -> Balancer {
        Balancer {
            replicas: replicas
                .iter()
                .map(|&limits| Replica {
                    limits: ReplicaLimits {
                        weight: limits.weight.max(1),
                        ..limits
                    },
                    outstanding: 0,
                    failures: 0,
                    ejected_until: None,
                    probing: false,
                    down: false,
                    rr_current: 0,
                })
                .collect(),
            policy: config.policy,
            eject_time: config.eject_time,
            eject_time_max: config.eject_time_max.max(config.eject_time),
            // xorshift must not start at zero.
            rng: seed | 1,
            queue_size: config.queue_size,
            waiters: VecDeque::new(),
            queue_gauge: None,
        }
    }

    /// Counts this balancer's waiters in `stats`' queue gauge.
    pub fn with_queue_gauge(mut self, stats: Arc<ModelStats>) -> Balancer {
        self.queue_gauge = Some(stats);
        self
    }

    /// Moves the queue gauge by the change from `before` waiters to now.
    fn waiters_changed(&self, before: usize) {
        if let Some(g) = &self.queue_gauge {
            g.queued_changed(self.waiters.len() as i64 - before as i64);
        }
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Same replicas with the same limits: a reload may keep this state.
    pub fn same_shape(&self, replicas: &[ReplicaLimits]) -> bool {
        self.replicas.len() == replicas.len()
            && self.replicas.iter().zip(replicas).all(|(r, l)| {
                r.limits.weight == l.weight.max(1) && r.limits.max_outstanding == l.max_outstanding
            })
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Chooses a replica not in `tried` (bit i = replica i) and counts it outstanding.
    pub fn pick(&mut self, now: Instant, tried: u64) -> Pick {
        let untried = |i: usize| i >= 64 || tried & (1u64 << i) == 0;
        // One replica: no choice to make (and no health to judge).
        if self.replicas.len() == 1 {
            return match self.replicas.first() {
                Some(_) if !untried(0) => Pick::Exhausted,
                Some(r) if r.full() => Pick::Full,
                Some(_) => self.begin(0, now),
                None => Pick::Exhausted,
            };
        }
        let eligible = |r: &Replica, i: usize| untried(i) && !r.full() && r.healthy(now);
        let mut total: u64 = 0;
        let mut count = 0usize;
        for (i, r) in self.replicas.iter().enumerate() {
            if eligible(r, i) {
                total += u64::from(r.limits.weight);
                count += 1;
            }
        }
        if count > 0 {
            let chosen = match self.policy {
                Policy::LeastOutstanding => self.two_choices(now, tried, total, count),
                Policy::RoundRobin => self.round_robin(now, tried, total),
            };
            return self.begin(chosen, now);
        }
        // Nothing healthy with room. Healthy but full: wait for a slot.
        let healthy_full = self
            .replicas
            .iter()
            .enumerate()
            .any(|(i, r)| untried(i) && r.healthy(now) && r.full());
        if healthy_full {
            return Pick::Full;
        }
        // Only unhealthy ones left: try the one that returns soonest rather than refuse.
        let fallback = self
            .replicas
            .iter()
            .enumerate()
            .filter(|&(i, r)| untried(i) && !r.full())
            .min_by_key(|&(_, r)| (r.down, r.ejected_until))
            .map(|(i, _)| i);
        match fallback {
            Some(i) => self.begin(i, now),
            None if (0..self.replicas.len()).any(untried) => Pick::Full,
            None => Pick::Exhausted,
        }
    }

    /// Two weighted random candidates; the one with fewer outstanding requests per weight.
    fn two_choices(&mut self, now: Instant, tried: u64, total: u64, count: usize) -> usize {
        let eligible = |r: &Replica, i: usize| {
            (i >= 64 || tried & (1u64 << i) == 0) && !r.full() && r.healthy(now)
        };
        let first_draw = self.random() % total.max(1);
        let a = self.weighted_nth(first_draw, None, &eligible);
        if count == 1 {
            return a;
        }
        let wa = self
            .replicas
            .get(a)
            .map_or(1, |r| u64::from(r.limits.weight));
        let second_draw = self.random() % (total - wa).max(1);
        let b = self.weighted_nth(second_draw, Some(a), &eligible);
        let (Some(ra), Some(rb)) = (self.replicas.get(a), self.replicas.get(b)) else {
            return a;
        };
        // outstanding_a / weight_a vs outstanding_b / weight_b, without division.
        let la = u64::from(ra.outstanding) * u64::from(rb.limits.weight);
        let lb = u64::from(rb.outstanding) * u64::from(ra.limits.weight);
        if lb < la {
            b
        } else {
            a
        }
    }

    /// The eligible replica where the cumulative weight passes `draw` (skipping `skip`).
    fn weighted_nth(
        &self,
        mut draw: u64,
        skip: Option<usize>,
        eligible: &dyn Fn(&Replica, usize) -> bool,
    ) -> usize {
        let mut last = 0;
        for (i, r) in self.replicas.iter().enumerate() {
            if Some(i) == skip || !eligible(r, i) {
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

    /// Smooth weighted round-robin (each eligible replica gains its weight, the leader pays
    /// the total): weights are honoured evenly interleaved.
    fn round_robin(&mut self, now: Instant, tried: u64, total: u64) -> usize {
        let mut best: Option<(usize, i64)> = None;
        for (i, r) in self.replicas.iter_mut().enumerate() {
            let untried = i >= 64 || tried & (1u64 << i) == 0;
            if !(untried && !r.full() && r.healthy(now)) {
                continue;
            }
            r.rr_current += i64::from(r.limits.weight);
            if best.is_none_or(|(_, score)| r.rr_current > score) {
                best = Some((i, r.rr_current));
            }
        }
        let chosen = best.map_or(0, |(i, _)| i);
        if let Some(r) = self.replicas.get_mut(chosen) {
            r.rr_current -= i64::try_from(total).unwrap_or(i64::MAX);
        }
        chosen
    }

    fn begin(&mut self, i: usize, now: Instant) -> Pick {
        let Some(r) = self.replicas.get_mut(i) else {
            return Pick::Exhausted;
        };
        r.outstanding = r.outstanding.saturating_add(1);
        if r.ejected_until.is_some_and(|t| t <= now) {
            r.probing = true;
        }
        Pick::Replica(i)
    }

    /// A request on replica `i` ended (however it ended).
    pub fn end(&mut self, i: usize) {
        if let Some(r) = self.replicas.get_mut(i) {
            r.outstanding = r.outstanding.saturating_sub(1);
        }
    }

    /// Replica `i` failed a request: eject it (true) unless it already is.
    pub fn failed(&mut self, i: usize, now: Instant) -> bool {
        let (base, max) = (self.eject_time, self.eject_time_max);
        let Some(r) = self.replicas.get_mut(i) else {
            return false;
        };
        if r.ejected_until.is_some_and(|t| t > now) {
            // Requests that were already on their way when it was ejected.
            return false;
        }
        r.failures = r.failures.saturating_add(1);
        let doublings = r.failures.saturating_sub(1).min(20);
        let length = base.saturating_mul(1u32 << doublings).min(max);
        r.ejected_until = Some(now + length);
        r.probing = false;
        true
    }

    /// Replica `i` answered: clears its failures; true when that readmits an ejected one.
    pub fn succeeded(&mut self, i: usize) -> bool {
        let Some(r) = self.replicas.get_mut(i) else {
            return false;
        };
        let readmitted = r.ejected_until.is_some();
        r.failures = 0;
        r.ejected_until = None;
        r.probing = false;
        readmitted
    }

    /// The active health check's verdict on replica `i`.
    pub fn set_down(&mut self, i: usize, down: bool) {
        if let Some(r) = self.replicas.get_mut(i) {
            r.down = down;
        }
    }

    /// Forgets every active-health verdict (the model no longer has `healthCheck`: nothing
    /// would ever mark its down replicas up again).
    pub fn clear_down(&mut self) {
        for r in self.replicas.iter_mut() {
            r.down = false;
        }
    }

    /// Replicas taking new requests now.
    pub fn healthy_count(&self, now: Instant) -> usize {
        self.replicas
            .iter()
            .filter(|r| !r.down && r.ejected_until.is_none_or(|t| t <= now))
            .count()
    }

    pub fn outstanding(&self, i: usize) -> u32 {
        self.replicas.get(i).map_or(0, |r| r.outstanding)
    }

    /// Queues a waiting request; false when the queue is full.
    pub fn enqueue(&mut self, key: usize, generation: u64) -> bool {
        if self.waiters.len() >= self.queue_size {
            return false;
        }
        self.waiters.push_back((key, generation));
        self.waiters_changed(self.waiters.len() - 1);
        true
    }

    /// The oldest waiting request.
    pub fn first_waiter(&self) -> Option<(usize, u64)> {
        self.waiters.front().copied()
    }

    pub fn pop_waiter(&mut self) -> Option<(usize, u64)> {
        let before = self.waiters.len();
        let first = self.waiters.pop_front();
        self.waiters_changed(before);
        first
    }

    /// A waiting request gave up (timeout or client gone).
    pub fn remove_waiter(&mut self, key: usize, generation: u64) {
        let before = self.waiters.len();
        self.waiters.retain(|&w| w != (key, generation));
        self.waiters_changed(before);
    }

    /// Keeps only the waiters `keep` says are still waiting.
    pub fn retain_waiters(&mut self, mut keep: impl FnMut(usize, u64) -> bool) {
        let before = self.waiters.len();
        self.waiters.retain(|&(k, g)| keep(k, g));
        self.waiters_changed(before);
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// When replica `i`'s ejection ends (None: not ejected).
    pub fn ejected_until(&self, i: usize) -> Option<Instant> {
        self.replicas.get(i).and_then(|r| r.ejected_until)
    }
}

impl Drop for Balancer {
    /// Waiters of a dropped balancer are gone with it (their connections were closed).
    fn drop(&mut self) {
        if let Some(g) = &self.queue_gauge {
            g.queued_changed(-(self.waiters.len() as i64));
        }
    }
}

/// A worker's balancer, shared by the worker and the leases of its exchanges.
pub type Shared = Rc<RefCell<Balancer>>;

/// One request's hold on a replica: outstanding until dropped.
#[derive(Debug)]
pub struct Lease {
    balancer: Shared,
    replica: usize,
}

impl Lease {
    /// Picks a replica not in `tried` and holds it.
    pub fn take(balancer: &Shared, now: Instant, tried: u64) -> Result<Lease, Pick> {
        let pick = match balancer.try_borrow_mut() {
            Ok(mut b) => b.pick(now, tried),
            Err(_) => Pick::Exhausted,
        };
        match pick {
            Pick::Replica(replica) => Ok(Lease {
                balancer: Rc::clone(balancer),
                replica,
            }),
            other => Err(other),
        }
    }

    pub fn replica(&self) -> usize {
        self.replica
    }

    /// See [`Balancer::failed`].
    pub fn failed(&self, now: Instant) -> bool {
        self.balancer
            .try_borrow_mut()
            .is_ok_and(|mut b| b.failed(self.replica, now))
    }

    /// When this lease's replica's ejection ends (None: not ejected).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.balancer
            .try_borrow()
            .ok()
            .and_then(|b| b.ejected_until(self.replica))
    }

    /// See [`Balancer::succeeded`].
    pub fn succeeded(&self) -> bool {
        self.balancer
            .try_borrow_mut()
            .is_ok_and(|mut b| b.succeeded(self.replica))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut b) = self.balancer.try_borrow_mut() {
            b.end(self.replica);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(weights: &[u32]) -> Vec<ReplicaLimits> {
        weights
            .iter()
            .map(|&weight| ReplicaLimits {
                weight,
                max_outstanding: 0,
            })
            .collect()
    }

    fn balancer(weights: &[u32], policy: Policy) -> Balancer {
        let config = BalanceConfig {
            policy,
            ..BalanceConfig::default()
        };
        Balancer::new(&limits(weights), &config, 42)
    }

    fn pick(b: &mut Balancer, now: Instant, tried: u64) -> usize {
        match b.pick(now, tried) {
            Pick::Replica(i) => i,
            other => panic!("expected a replica, got {other:?}"),
        }
    }

    #[test]
    fn least_outstanding_avoids_the_busy_replica() {
        let now = Instant::now();
        let mut b = balancer(&[1, 1, 1], Policy::LeastOutstanding);
        // Replica 0 is stuck with many requests.
        for _ in 0..10 {
            b.begin(0, now);
        }
        let mut counts = [0u32; 3];
        for _ in 0..300 {
            let i = pick(&mut b, now, 0);
            counts[i] += 1;
            b.end(i);
        }
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 100 && counts[2] > 100, "{counts:?}");
    }

    #[test]
    fn weights_set_the_share_when_idle() {
        let now = Instant::now();
        for policy in [Policy::LeastOutstanding, Policy::RoundRobin] {
            let mut b = balancer(&[1, 3], policy);
            let mut counts = [0u32; 2];
            for _ in 0..4000 {
                let i = pick(&mut b, now, 0);
                counts[i] += 1;
                b.end(i);
            }
            assert!((2700..=3300).contains(&counts[1]), "{policy:?}: {counts:?}");
        }
    }

    #[test]
    fn weights_set_the_share_under_load() {
        let now = Instant::now();
        let mut b = balancer(&[1, 2], Policy::LeastOutstanding);
        // Requests never end: outstanding per weight stays level, so shares follow weight.
        let mut counts = [0u32; 2];
        for _ in 0..300 {
            counts[pick(&mut b, now, 0)] += 1;
        }
        assert!((190..=210).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn round_robin_cycles_evenly() {
        let now = Instant::now();
        let mut b = balancer(&[1, 1, 1], Policy::RoundRobin);
        let seq: Vec<usize> = (0..6).map(|_| pick(&mut b, now, 0)).collect();
        let mut sorted = seq[..3].to_vec();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
        assert_eq!(seq[..3], seq[3..]);
    }

    #[test]
    fn tried_replicas_are_skipped_then_exhausted() {
        let now = Instant::now();
        let mut b = balancer(&[1, 1], Policy::LeastOutstanding);
        assert_eq!(b.pick(now, 0b01), Pick::Replica(1));
        assert_eq!(b.pick(now, 0b10), Pick::Replica(0));
        assert_eq!(b.pick(now, 0b11), Pick::Exhausted);
        let mut one = balancer(&[1], Policy::LeastOutstanding);
        assert_eq!(one.pick(now, 0b1), Pick::Exhausted);
    }

    #[test]
    fn ejection_backs_off_and_a_probe_readmits() {
        let t0 = Instant::now();
        let mut b = balancer(&[1, 1], Policy::LeastOutstanding);
        assert!(b.failed(0, t0));
        // A second failure from a request already in flight does not extend it.
        assert!(!b.failed(0, t0));
        assert_eq!(b.healthy_count(t0), 1);
        for _ in 0..50 {
            let i = pick(&mut b, t0, 0);
            assert_eq!(i, 1);
            b.end(i);
        }
        // After the ejection: one probe, and nothing else meanwhile.
        let t1 = t0 + DEFAULT_EJECT_TIME;
        let mut probe = None;
        for _ in 0..50 {
            let i = pick(&mut b, t1, 0);
            if i == 0 {
                assert!(probe.is_none(), "only one probe at a time");
                probe = Some(i);
            } else {
                b.end(i);
            }
        }
        assert_eq!(probe, Some(0));
        // The probe fails: ejected for twice as long.
        assert!(b.failed(0, t1));
        let t2 = t1 + DEFAULT_EJECT_TIME;
        assert_eq!(b.healthy_count(t2), 1);
        let t3 = t1 + DEFAULT_EJECT_TIME * 2;
        assert_eq!(b.healthy_count(t3), 2);
        // A successful probe readmits it fully.
        assert!(b.succeeded(0));
        assert!(!b.succeeded(0));
        assert!(b.failed(0, t3));
        assert_eq!(b.healthy_count(t3 + DEFAULT_EJECT_TIME), 2);
    }

    #[test]
    fn ejection_length_is_capped() {
        let mut now = Instant::now();
        let mut b = balancer(&[1, 1], Policy::LeastOutstanding);
        for _ in 0..40 {
            assert!(b.failed(0, now));
            now += DEFAULT_EJECT_TIME_MAX;
        }
        assert_eq!(b.healthy_count(now), 2);
    }

    #[test]
    fn all_unhealthy_still_tries_the_one_back_soonest() {
        let t0 = Instant::now();
        let mut b = balancer(&[1, 1], Policy::LeastOutstanding);
        b.failed(0, t0);
        b.failed(1, t0 + Duration::from_millis(10));
        assert_eq!(b.pick(t0 + Duration::from_millis(20), 0), Pick::Replica(0));
        b.set_down(0, true);
        assert_eq!(b.pick(t0 + Duration::from_millis(20), 0), Pick::Replica(1));
    }

    #[test]
    fn down_replicas_get_nothing() {
        let now = Instant::now();
        let mut b = balancer(&[1, 1, 1], Policy::LeastOutstanding);
        b.set_down(2, true);
        assert_eq!(b.healthy_count(now), 2);
        for _ in 0..100 {
            let i = pick(&mut b, now, 0);
            assert_ne!(i, 2);
            b.end(i);
        }
        b.set_down(2, false);
        assert_eq!(b.healthy_count(now), 3);
    }

    #[test]
    fn clearing_the_health_verdicts_brings_every_replica_back() {
        let now = Instant::now();
        let mut b = balancer(&[1, 1], Policy::LeastOutstanding);
        b.set_down(0, true);
        b.set_down(1, true);
        b.clear_down();
        assert_eq!(b.healthy_count(now), 2);
    }

    #[test]
    fn the_queue_gauge_counts_waiters_of_every_balancer_until_they_leave() {
        let metrics = crate::metrics::Metrics::new();
        let stats = metrics.model("m");
        let config = BalanceConfig {
            queue_size: 4,
            ..BalanceConfig::default()
        };
        let lim = limits(&[1]);
        let mut a = Balancer::new(&lim, &config, 1).with_queue_gauge(Arc::clone(&stats));
        let mut b = Balancer::new(&lim, &config, 2).with_queue_gauge(Arc::clone(&stats));
        for key in 0..3 {
            assert!(a.enqueue(key, 0));
        }
        assert!(b.enqueue(9, 0));
        assert_eq!(stats.summary().queued, 4);
        assert_eq!(a.pop_waiter(), Some((0, 0)));
        a.remove_waiter(1, 0);
        a.remove_waiter(1, 0);
        assert_eq!(stats.summary().queued, 2);
        b.retain_waiters(|_, _| false);
        assert_eq!(stats.summary().queued, 1);
        drop(a);
        assert_eq!(
            stats.summary().queued,
            0,
            "a dropped balancer's waiters are gone"
        );
        assert_eq!(b.pop_waiter(), None);
        assert_eq!(stats.summary().queued, 0);
    }

    #[test]
    fn an_ejection_says_when_it_ends() {
        let t0 = Instant::now();
        let mut b = balancer(&[1, 1], Policy::RoundRobin);
        assert_eq!(b.ejected_until(0), None);
        assert!(b.failed(0, t0));
        assert_eq!(
            b.ejected_until(0),
            Some(t0 + BalanceConfig::default().eject_time)
        );
        assert!(b.succeeded(0));
        assert_eq!(b.ejected_until(0), None);
    }

    #[test]
    fn limits_make_full_and_the_queue_is_fifo_and_bounded() {
        let now = Instant::now();
        let config = BalanceConfig {
            queue_size: 2,
            ..BalanceConfig::default()
        };
        let lim = ReplicaLimits {
            weight: 1,
            max_outstanding: 1,
        };
        let mut b = Balancer::new(&[lim, lim], &config, 7);
        let a = pick(&mut b, now, 0);
        let c = pick(&mut b, now, 0);
        assert_ne!(a, c);
        assert_eq!(b.pick(now, 0), Pick::Full);
        assert!(b.enqueue(1, 1));
        assert!(b.enqueue(2, 1));
        assert!(!b.enqueue(3, 1));
        b.remove_waiter(1, 1);
        assert!(b.enqueue(3, 1));
        assert_eq!(b.pop_waiter(), Some((2, 1)));
        assert_eq!(b.first_waiter(), Some((3, 1)));
        b.end(a);
        assert_eq!(b.pick(now, 0), Pick::Replica(a));
        // A single full replica is Full too, not Exhausted.
        let mut one = Balancer::new(&[lim], &config, 7);
        assert_eq!(one.pick(now, 0), Pick::Replica(0));
        assert_eq!(one.pick(now, 0), Pick::Full);
    }

    #[test]
    fn a_lease_counts_until_dropped() {
        let now = Instant::now();
        let shared: Shared = Rc::new(RefCell::new(balancer(&[1, 1], Policy::RoundRobin)));
        let lease = Lease::take(&shared, now, 0).expect("a replica");
        let i = lease.replica();
        assert_eq!(shared.borrow().outstanding(i), 1);
        assert!(lease.failed(now));
        drop(lease);
        assert_eq!(shared.borrow().outstanding(i), 0);
        assert_eq!(shared.borrow().healthy_count(now), 1);
    }

    #[test]
    fn same_shape_compares_limits() {
        let b = balancer(&[1, 2], Policy::LeastOutstanding);
        assert!(b.same_shape(&limits(&[1, 2])));
        assert!(!b.same_shape(&limits(&[1, 3])));
        assert!(!b.same_shape(&limits(&[1])));
    }
}
