//! A model's replicas as the whole process sees them (issue 17): outstanding requests,
//! passive-health ejections and active-health verdicts, in atomics every worker reads and
//! moves. No lock: a slot under `maxConcurrentRequests` is taken with a compare-exchange on
//! the replica's outstanding count, an ejection with a compare-exchange on its end, and the
//! one trial request after an ejection with a compare-exchange on its `probing` flag.
//!
//! Times are nanoseconds since the [`Registry`]'s epoch in one `AtomicU64` (0: not ejected),
//! so "ejected until" is a single word every worker agrees on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::queue::{QueueGauge, WaitQueue};
use super::{BalanceConfig, Handoff, Policy, ReplicaLimits};

/// Outstanding counts and the waiter count are read and moved with `SeqCst`: a request that
/// finds every replica full and joins the queue, and a request that frees a slot and looks
/// for waiters, must never both miss each other (one of them always sees the other).
const ORDER: Ordering = Ordering::SeqCst;
const RELAXED: Ordering = Ordering::Relaxed;

/// One replica's process-wide state.
#[derive(Debug)]
pub(super) struct ReplicaSlot {
    pub(super) limits: ReplicaLimits,
    outstanding: AtomicU32,
    /// Consecutive failures (sets the next ejection's length).
    failures: AtomicU32,
    /// When the current ejection ends, in nanoseconds since the epoch; 0: not ejected.
    ejected_until: AtomicU64,
    /// The trial request after an ejection is in flight (one for the whole process).
    probing: AtomicBool,
    /// Marked down by the active health check.
    down: AtomicBool,
}

impl ReplicaSlot {
    fn new(limits: ReplicaLimits) -> ReplicaSlot {
        ReplicaSlot {
            limits: ReplicaLimits {
                weight: limits.weight.max(1),
                ..limits
            },
            outstanding: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            down: AtomicBool::new(false),
        }
    }

    pub(super) fn outstanding(&self) -> u32 {
        self.outstanding.load(ORDER)
    }

    pub(super) fn full(&self) -> bool {
        let max = self.limits.max_outstanding;
        max > 0 && self.outstanding() >= max
    }

    /// Counts one more request unless that would pass the limit.
    fn try_acquire(&self) -> bool {
        let max = self.limits.max_outstanding;
        if max == 0 {
            self.outstanding.fetch_add(1, ORDER);
            return true;
        }
        let mut current = self.outstanding.load(ORDER);
        loop {
            if current >= max {
                return false;
            }
            match self
                .outstanding
                .compare_exchange_weak(current, current + 1, ORDER, ORDER)
            {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn release(&self) {
        self.outstanding.fetch_sub(1, ORDER);
    }

    /// Takes new requests at `now`: not down, not ejected, and no trial in flight.
    pub(super) fn healthy(&self, now: u64) -> bool {
        if self.down.load(RELAXED) {
            return false;
        }
        match self.ejected_until.load(RELAXED) {
            0 => true,
            until => until <= now && !self.probing.load(RELAXED),
        }
    }

    /// Down first, then the ejection that ends soonest (the order of an all-unhealthy pick).
    pub(super) fn return_order(&self) -> (bool, u64) {
        (self.down.load(RELAXED), self.ejected_until.load(RELAXED))
    }

    /// The ejection is over at `now`: the next request is the trial.
    fn trial_due(&self, now: u64) -> bool {
        let until = self.ejected_until.load(RELAXED);
        until != 0 && until <= now
    }
}

/// One model's replicas for the whole process, shared by every worker's choices, every
/// request's [`Lease`] and the model's wait queue.
#[derive(Debug)]
pub struct Slots {
    pub(super) replicas: Box<[ReplicaSlot]>,
    /// The replicas' distinct priorities, first tier first.
    pub(super) tiers: Box<[u32]>,
    pub(super) policy: Policy,
    epoch: Instant,
    /// Ejection lengths in nanoseconds (a reload that keeps the replicas may change them).
    eject_time: AtomicU64,
    eject_time_max: AtomicU64,
    /// The latest `now` a caller passed in: the clock of a slot freed by a dropped lease,
    /// which has none of its own (an L0 module never reads the clock).
    last_now: AtomicU64,
    pub(super) queue: WaitQueue,
}

impl Slots {
    /// Fresh state for `replicas` (every one idle and healthy); `handoff` is where grants to
    /// waiters go once the workers exist.
    pub fn new(
        replicas: &[ReplicaLimits],
        config: &BalanceConfig,
        epoch: Instant,
        handoff: Arc<OnceLock<Arc<dyn Handoff>>>,
        gauge: Option<Arc<dyn QueueGauge>>,
    ) -> Slots {
        let mut tiers: Vec<u32> = replicas.iter().map(|l| l.priority).collect();
        tiers.sort_unstable();
        tiers.dedup();
        let slots = Slots {
            replicas: replicas.iter().map(|&l| ReplicaSlot::new(l)).collect(),
            tiers: tiers.into(),
            policy: config.policy,
            epoch,
            eject_time: AtomicU64::new(0),
            eject_time_max: AtomicU64::new(0),
            last_now: AtomicU64::new(0),
            queue: WaitQueue::new(config.queue_size, handoff, gauge),
        };
        slots.configure(config);
        slots
    }

    /// Takes the settings a reload may change without a fresh state.
    fn configure(&self, config: &BalanceConfig) {
        self.eject_time.store(nanos(config.eject_time), RELAXED);
        let max = config.eject_time_max.max(config.eject_time);
        self.eject_time_max.store(nanos(max), RELAXED);
        self.queue.set_size(config.queue_size);
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Same replicas with the same weights, limits and tiers: a reload may keep this state.
    pub fn same_shape(&self, replicas: &[ReplicaLimits]) -> bool {
        self.replicas.len() == replicas.len()
            && self.replicas.iter().zip(replicas).all(|(r, l)| {
                r.limits.weight == l.weight.max(1)
                    && r.limits.max_outstanding == l.max_outstanding
                    && r.limits.priority == l.priority
            })
    }

    /// The first tier's priority (requests served by a later tier are fallbacks).
    pub fn first_tier(&self) -> u32 {
        self.tiers.first().copied().unwrap_or(0)
    }

    /// Replica `i`'s tier.
    pub fn priority(&self, i: usize) -> u32 {
        self.replicas.get(i).map_or(0, |r| r.limits.priority)
    }

    /// `now` as nanoseconds since the epoch (and remembered as the latest clock reading).
    pub(super) fn tick(&self, now: Instant) -> u64 {
        let t = nanos(now.saturating_duration_since(self.epoch));
        self.last_now.fetch_max(t, RELAXED);
        t
    }

    /// The latest `now` any caller passed.
    pub(super) fn last_now(&self) -> u64 {
        self.last_now.load(RELAXED)
    }

    pub(super) fn replica(&self, i: usize) -> Option<&ReplicaSlot> {
        self.replicas.get(i)
    }

    /// Takes a slot on replica `i` for a new request. `trial`: the replica's ejection is over
    /// and this request is its one trial, unless another worker's already is (false then).
    pub(super) fn begin(&self, i: usize, now: u64, trial: bool) -> bool {
        let Some(r) = self.replicas.get(i) else {
            return false;
        };
        let probe = trial && r.trial_due(now);
        if probe
            && r.probing
                .compare_exchange(false, true, RELAXED, RELAXED)
                .is_err()
        {
            return false;
        }
        if r.try_acquire() {
            return true;
        }
        if probe {
            r.probing.store(false, RELAXED);
        }
        false
    }

    /// A request on replica `i` ended. The slot goes to the oldest waiter, if any.
    pub(super) fn end(self: &Arc<Self>, i: usize) {
        if let Some(r) = self.replicas.get(i) {
            r.release();
        }
        if self.queue.has_waiters() {
            self.dispatch_at(self.last_now());
        }
    }

    /// Gives back a slot taken for a waiter that turned out to be gone, without looking
    /// for another waiter (the caller does).
    pub(super) fn end_quietly(&self, i: usize) {
        if let Some(r) = self.replicas.get(i) {
            r.release();
        }
    }

    /// Replica `i` failed a request at `now`: eject it (true) unless it already is. Only one
    /// worker's failure ejects; the others' requests were already on their way.
    pub fn failed(&self, i: usize, now: Instant) -> bool {
        let now = self.tick(now);
        let Some(r) = self.replicas.get(i) else {
            return false;
        };
        let current = r.ejected_until.load(RELAXED);
        if current > now {
            return false;
        }
        let failures = r.failures.load(RELAXED).saturating_add(1);
        let doublings = failures.saturating_sub(1).min(20);
        let base = self.eject_time.load(RELAXED);
        let length = base
            .saturating_mul(1u64 << doublings)
            .min(self.eject_time_max.load(RELAXED));
        let until = now.saturating_add(length).max(1);
        if r.ejected_until
            .compare_exchange(current, until, RELAXED, RELAXED)
            .is_err()
        {
            return false;
        }
        r.failures.store(failures, RELAXED);
        r.probing.store(false, RELAXED);
        true
    }

    /// Replica `i` answered: clears its failures; true when that readmits an ejected one.
    /// (Two loads when it was healthy: this runs for every answer.)
    pub fn succeeded(&self, i: usize) -> bool {
        let Some(r) = self.replicas.get(i) else {
            return false;
        };
        if r.ejected_until.load(RELAXED) == 0 && r.failures.load(RELAXED) == 0 {
            return false;
        }
        r.failures.store(0, RELAXED);
        let readmitted = r.ejected_until.swap(0, RELAXED) != 0;
        r.probing.store(false, RELAXED);
        readmitted
    }

    /// When replica `i`'s ejection ends (None: not ejected).
    pub fn ejected_until(&self, i: usize) -> Option<Instant> {
        match self.replicas.get(i)?.ejected_until.load(RELAXED) {
            0 => None,
            until => Some(self.epoch + Duration::from_nanos(until)),
        }
    }

    /// The active health check's verdict on replica `i`.
    pub fn set_down(&self, i: usize, down: bool) {
        if let Some(r) = self.replicas.get(i) {
            r.down.store(down, RELAXED);
        }
    }

    /// Forgets every active-health verdict (the model no longer has `healthCheck`: nothing
    /// would ever mark its down replicas up again).
    pub fn clear_down(&self) {
        for r in self.replicas.iter() {
            r.down.store(false, RELAXED);
        }
    }

    /// Replicas taking new requests at `now`.
    pub fn healthy_count(&self, now: Instant) -> usize {
        let now = nanos(now.saturating_duration_since(self.epoch));
        self.replicas
            .iter()
            .filter(|r| {
                !r.down.load(RELAXED) && {
                    let until = r.ejected_until.load(RELAXED);
                    until == 0 || until <= now
                }
            })
            .count()
    }

    /// Requests outstanding on replica `i`, across every worker.
    pub fn outstanding(&self, i: usize) -> u32 {
        self.replicas.get(i).map_or(0, ReplicaSlot::outstanding)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One request's hold on a replica slot: outstanding (process-wide) until dropped. `Send`:
/// a slot granted to a waiter travels to the waiter's worker inside its [`super::Grant`].
#[derive(Debug)]
pub struct Lease {
    /// None once the slot was taken back without ending it (`into_slot`).
    slots: Option<Arc<Slots>>,
    replica: usize,
}

impl Lease {
    pub(super) fn new(slots: &Arc<Slots>, replica: usize) -> Lease {
        Lease {
            slots: Some(Arc::clone(slots)),
            replica,
        }
    }

    pub fn replica(&self) -> usize {
        self.replica
    }

    /// The process-wide state this lease counts in.
    pub fn slots(&self) -> Option<&Arc<Slots>> {
        self.slots.as_ref()
    }

    /// See [`Slots::failed`].
    pub fn failed(&self, now: Instant) -> bool {
        self.slots
            .as_ref()
            .is_some_and(|s| s.failed(self.replica, now))
    }

    /// See [`Slots::succeeded`].
    pub fn succeeded(&self) -> bool {
        self.slots
            .as_ref()
            .is_some_and(|s| s.succeeded(self.replica))
    }

    /// When this lease's replica's ejection ends (None: not ejected).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.slots
            .as_ref()
            .and_then(|s| s.ejected_until(self.replica))
    }

    /// The slot, still counted, without the lease that would give it back on drop.
    pub(super) fn into_slot(mut self) -> usize {
        self.slots = None;
        self.replica
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.end(self.replica);
        }
    }
}

/// The process's [`Slots`] by model name, kept across reloads while a model's replicas keep
/// their shape (so in-flight requests, ejections and waiters carry over), and the
/// [`Handoff`] every model's queue grants through once the workers exist.
#[derive(Default)]
pub struct Registry {
    handoff: Arc<OnceLock<Arc<dyn Handoff>>>,
    models: Mutex<HashMap<String, Arc<Slots>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// A poisoned registry is still a valid registry (it only holds `Arc`s).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    /// Where grants to waiting requests go (the workers' channels); set once, by the server
    /// when the workers exist.
    pub fn set_handoff(&self, handoff: Arc<dyn Handoff>) {
        let _ = self.handoff.set(handoff);
    }

    /// The state of model `name` over `replicas`: the previous table's when its replicas kept
    /// their shape (with `config`'s ejection times and queue size), else a fresh one. Called
    /// while a routing table is built, never on the data path.
    pub fn slots(
        &self,
        name: &str,
        replicas: &[ReplicaLimits],
        config: &BalanceConfig,
        epoch: Instant,
        gauge: Option<Arc<dyn QueueGauge>>,
    ) -> Arc<Slots> {
        let mut models = lock(&self.models);
        if let Some(kept) = models.get(name).filter(|s| s.same_shape(replicas)) {
            kept.configure(config);
            return Arc::clone(kept);
        }
        let fresh = Arc::new(Slots::new(
            replicas,
            config,
            epoch,
            Arc::clone(&self.handoff),
            gauge,
        ));
        models.insert(name.to_owned(), Arc::clone(&fresh));
        fresh
    }

    /// Forgets the models `keep` rejects (a table without them was built). Their state lives
    /// on in the requests and waiters still using it.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.models).retain(|name, _| keep(name));
    }
}
