//! The choice, the process-wide slots and the wait queue, with several choosers standing in
//! for several workers (and real threads where the atomics are what is tested).

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

fn limits(weights: &[u32], max: u32) -> Vec<ReplicaLimits> {
    weights
        .iter()
        .map(|&weight| ReplicaLimits {
            weight,
            max_outstanding: max,
            priority: 0,
        })
        .collect()
}

fn config(policy: Policy, queue_size: usize) -> BalanceConfig {
    BalanceConfig {
        policy,
        queue_size,
        ..BalanceConfig::default()
    }
}

/// (Times in these tests are taken after the slots are made: the epoch comes first, as the
/// process epoch does.)
fn shared(lim: &[ReplicaLimits], config: &BalanceConfig) -> Arc<Slots> {
    Arc::new(Slots::new(
        lim,
        config,
        Instant::now(),
        Arc::new(OnceLock::new()),
        None,
    ))
}

fn slots(weights: &[u32], policy: Policy) -> Arc<Slots> {
    shared(&limits(weights, 0), &config(policy, 0))
}

fn take(c: &mut Chooser, s: &Arc<Slots>, now: Instant, tried: u64) -> Lease {
    match c.take(s, now, tried, false) {
        Ok(lease) => lease,
        Err(other) => panic!("expected a replica, got {other:?}"),
    }
}

#[test]
fn least_outstanding_avoids_the_busy_replica() {
    let now = Instant::now();
    let s = slots(&[1, 1, 1], Policy::LeastOutstanding);
    // Replica 0 is stuck with many requests (from another worker: the counts are shared).
    let stuck: Vec<Lease> = (0..10)
        .map(|_| {
            assert!(s.begin(0, 0, false));
            Lease::new(&s, 0)
        })
        .collect();
    let mut c = Chooser::new(&s, 42);
    let mut counts = [0u32; 3];
    for _ in 0..300 {
        counts[take(&mut c, &s, now, 0).replica()] += 1;
    }
    assert_eq!(counts[0], 0, "{counts:?}");
    assert!(counts[1] > 100 && counts[2] > 100, "{counts:?}");
    drop(stuck);
    assert_eq!(s.outstanding(0), 0);
}

#[test]
fn weights_set_the_share_when_idle() {
    let now = Instant::now();
    for policy in [Policy::LeastOutstanding, Policy::RoundRobin] {
        let s = slots(&[1, 3], policy);
        let mut c = Chooser::new(&s, 42);
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            counts[take(&mut c, &s, now, 0).replica()] += 1;
        }
        assert!((2700..=3300).contains(&counts[1]), "{policy:?}: {counts:?}");
    }
}

#[test]
fn weights_set_the_share_under_load() {
    let now = Instant::now();
    let s = slots(&[1, 2], Policy::LeastOutstanding);
    let mut c = Chooser::new(&s, 42);
    // Requests never end: outstanding per weight stays level, so shares follow weight.
    let mut held = Vec::new();
    let mut counts = [0u32; 2];
    for _ in 0..300 {
        let lease = take(&mut c, &s, now, 0);
        counts[lease.replica()] += 1;
        held.push(lease);
    }
    assert!((190..=210).contains(&counts[1]), "{counts:?}");
}

#[test]
fn round_robin_cycles_evenly() {
    let now = Instant::now();
    let s = slots(&[1, 1, 1], Policy::RoundRobin);
    let mut c = Chooser::new(&s, 42);
    let seq: Vec<usize> = (0..6).map(|_| take(&mut c, &s, now, 0).replica()).collect();
    let mut sorted = seq[..3].to_vec();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2]);
    assert_eq!(seq[..3], seq[3..]);
}

#[test]
fn tried_replicas_are_skipped_then_exhausted() {
    let now = Instant::now();
    let s = slots(&[1, 1], Policy::LeastOutstanding);
    let mut c = Chooser::new(&s, 42);
    assert_eq!(take(&mut c, &s, now, 0b01).replica(), 1);
    assert_eq!(take(&mut c, &s, now, 0b10).replica(), 0);
    assert_eq!(c.take(&s, now, 0b11, false).err(), Some(Pick::Exhausted));
    let one = slots(&[1], Policy::LeastOutstanding);
    let mut c = Chooser::new(&one, 42);
    assert_eq!(c.take(&one, now, 0b1, false).err(), Some(Pick::Exhausted));
}

#[test]
fn an_ejection_by_one_worker_applies_to_all_and_one_trial_readmits() {
    let s = slots(&[1, 1], Policy::LeastOutstanding);
    let t0 = Instant::now();
    let (mut a, mut b) = (Chooser::new(&s, 1), Chooser::new(&s, 2));
    assert!(s.failed(0, t0));
    // A second failure from a request already in flight does not extend it.
    assert!(!s.failed(0, t0));
    assert_eq!(s.healthy_count(t0), 1);
    for _ in 0..50 {
        assert_eq!(take(&mut a, &s, t0, 0).replica(), 1);
        assert_eq!(take(&mut b, &s, t0, 0).replica(), 1);
    }
    // After the ejection: one trial in the whole process, nothing else meanwhile.
    let t1 = t0 + DEFAULT_EJECT_TIME;
    let mut probe = None;
    for _ in 0..50 {
        for c in [&mut a, &mut b] {
            let lease = take(c, &s, t1, 0);
            if lease.replica() == 0 {
                assert!(probe.is_none(), "only one trial at a time, across workers");
                probe = Some(lease);
            }
        }
    }
    let probe = probe.expect("a trial request");
    // The trial fails: ejected for twice as long.
    assert!(probe.failed(t1));
    drop(probe);
    assert_eq!(s.healthy_count(t1 + DEFAULT_EJECT_TIME), 1);
    let t3 = t1 + DEFAULT_EJECT_TIME * 2;
    assert_eq!(s.healthy_count(t3), 2);
    // A successful trial readmits it fully.
    assert!(s.succeeded(0));
    assert!(!s.succeeded(0));
    assert!(s.failed(0, t3));
    assert_eq!(s.healthy_count(t3 + DEFAULT_EJECT_TIME), 2);
}

#[test]
fn ejection_length_is_capped() {
    let s = slots(&[1, 1], Policy::LeastOutstanding);
    let mut now = Instant::now();
    for _ in 0..40 {
        assert!(s.failed(0, now));
        now += DEFAULT_EJECT_TIME_MAX;
    }
    assert_eq!(s.healthy_count(now), 2);
}

#[test]
fn all_unhealthy_still_tries_the_one_back_soonest() {
    let s = slots(&[1, 1], Policy::LeastOutstanding);
    let t0 = Instant::now();
    let mut c = Chooser::new(&s, 42);
    s.failed(0, t0);
    s.failed(1, t0 + Duration::from_millis(10));
    let later = t0 + Duration::from_millis(20);
    assert_eq!(take(&mut c, &s, later, 0).replica(), 0);
    s.set_down(0, true);
    assert_eq!(take(&mut c, &s, later, 0).replica(), 1);
}

#[test]
fn down_replicas_get_nothing_until_up_and_clearing_brings_all_back() {
    let now = Instant::now();
    let s = slots(&[1, 1, 1], Policy::LeastOutstanding);
    let mut c = Chooser::new(&s, 42);
    s.set_down(2, true);
    assert_eq!(s.healthy_count(now), 2);
    for _ in 0..100 {
        assert_ne!(take(&mut c, &s, now, 0).replica(), 2);
    }
    s.set_down(2, false);
    assert_eq!(s.healthy_count(now), 3);
    s.set_down(0, true);
    s.set_down(1, true);
    s.clear_down();
    assert_eq!(s.healthy_count(now), 3);
}

#[test]
fn an_ejection_says_when_it_ends() {
    let s = slots(&[1, 1], Policy::RoundRobin);
    let t0 = Instant::now();
    assert_eq!(s.ejected_until(0), None);
    assert!(s.failed(0, t0));
    let until = s.ejected_until(0).expect("ejected");
    let expected = t0 + BalanceConfig::default().eject_time;
    assert!(until.max(expected) - until.min(expected) < Duration::from_micros(1));
    assert!(s.succeeded(0));
    assert_eq!(s.ejected_until(0), None);
}

#[test]
fn a_limit_holds_for_every_worker_together() {
    let now = Instant::now();
    let s = shared(&limits(&[1, 1], 1), &config(Policy::LeastOutstanding, 0));
    let (mut a, mut b) = (Chooser::new(&s, 1), Chooser::new(&s, 2));
    let first = take(&mut a, &s, now, 0);
    let second = take(&mut b, &s, now, 0);
    assert_ne!(first.replica(), second.replica());
    assert_eq!(a.take(&s, now, 0, false).err(), Some(Pick::Full));
    assert_eq!(b.take(&s, now, 0, false).err(), Some(Pick::Full));
    let freed = first.replica();
    drop(first);
    assert_eq!(take(&mut b, &s, now, 0).replica(), freed);
    // A single full replica is Full too, not Exhausted.
    let one = shared(&limits(&[1], 1), &config(Policy::LeastOutstanding, 0));
    let mut c = Chooser::new(&one, 7);
    let _held = take(&mut c, &one, now, 0);
    assert_eq!(c.take(&one, now, 0, false).err(), Some(Pick::Full));
}

#[test]
fn threads_racing_for_slots_never_pass_the_limit() {
    let s = shared(&limits(&[1, 2, 1], 2), &config(Policy::LeastOutstanding, 0));
    let peak = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..4)
        .map(|seed| {
            let (s, peak) = (Arc::clone(&s), Arc::clone(&peak));
            std::thread::spawn(move || {
                let mut c = Chooser::new(&s, seed + 1);
                let now = Instant::now();
                for _ in 0..20_000 {
                    if let Ok(lease) = c.take(&s, now, 0, false) {
                        let i = lease.replica();
                        peak.fetch_max(s.outstanding(i), Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "{}",
        peak.load(Ordering::SeqCst)
    );
    assert!((0..3).all(|i| s.outstanding(i) == 0));
}

/// Grants as workers would receive them; workers listed in `gone` have exited.
#[derive(Default)]
struct Mailboxes {
    got: Mutex<Vec<Grant>>,
    gone: Vec<usize>,
}

impl Handoff for Mailboxes {
    fn grant(&self, grant: Grant) -> Result<(), Grant> {
        if self.gone.contains(&grant.ticket.worker) {
            return Err(grant);
        }
        self.got.lock().expect("lock").push(grant);
        Ok(())
    }
}

impl Mailboxes {
    fn take(&self) -> Vec<Grant> {
        std::mem::take(&mut *self.got.lock().expect("lock"))
    }
}

struct Gauge(std::sync::atomic::AtomicI64);

impl QueueGauge for Gauge {
    fn queued_changed(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::SeqCst);
    }
}

fn queued(max: u32, queue: usize, mail: Arc<Mailboxes>, gauge: Arc<Gauge>) -> Arc<Slots> {
    let handoff: Arc<OnceLock<Arc<dyn Handoff>>> = Arc::new(OnceLock::new());
    let _ = handoff.set(mail);
    Arc::new(Slots::new(
        &limits(&[1], max),
        &config(Policy::LeastOutstanding, queue),
        Instant::now(),
        handoff,
        Some(gauge),
    ))
}

#[test]
fn freed_slots_go_to_waiters_first_come_first_served_on_any_worker() {
    let now = Instant::now();
    let mail = Arc::new(Mailboxes::default());
    let gauge = Arc::new(Gauge(Default::default()));
    let s = queued(1, 3, Arc::clone(&mail), Arc::clone(&gauge));
    let mut c = Chooser::new(&s, 1);
    let busy = take(&mut c, &s, now, 0);
    // Three waiters on two workers, then the queue is full.
    let w1 = s.enqueue(0, 10, 1, now).expect("queued");
    let w2 = s.enqueue(1, 20, 1, now).expect("queued");
    let w3 = s.enqueue(0, 30, 1, now).expect("queued");
    assert!(s.enqueue(1, 40, 1, now).is_none(), "the queue is bounded");
    assert_eq!(gauge.0.load(Ordering::SeqCst), 3);
    assert!(mail.take().is_empty(), "nothing is free yet");
    // The freed slot goes to the oldest waiter (worker 0), already counted for it.
    drop(busy);
    let grants = mail.take();
    assert_eq!(grants.len(), 1);
    assert_eq!(
        (grants[0].ticket.worker, grants[0].ticket.seq),
        (0, w1.seq())
    );
    assert_eq!(s.outstanding(0), 1, "the slot travels with the grant");
    assert_eq!(c.take(&s, now, 0, false).err(), Some(Pick::Full));
    w1.served();
    // Its request ends: the next waiter, on worker 1.
    drop(grants);
    let grants = mail.take();
    assert_eq!((grants[0].ticket.worker, grants[0].ticket.key), (1, 20));
    w2.served();
    // The third leaves (timeout): the freed slot finds no waiter and stays free.
    drop(w3);
    assert_eq!(gauge.0.load(Ordering::SeqCst), 0);
    drop(grants);
    assert!(mail.take().is_empty());
    assert_eq!(s.outstanding(0), 0);
    assert!(!s.has_waiters());
}

#[test]
fn a_grant_for_a_worker_that_is_gone_passes_to_the_next_waiter() {
    let now = Instant::now();
    let mail = Arc::new(Mailboxes {
        gone: vec![1],
        ..Mailboxes::default()
    });
    let gauge = Arc::new(Gauge(Default::default()));
    let s = queued(1, 4, Arc::clone(&mail), gauge);
    let busy = take(&mut Chooser::new(&s, 1), &s, now, 0);
    let _lost = s.enqueue(1, 1, 1, now).expect("queued");
    let next = s.enqueue(0, 2, 1, now).expect("queued");
    drop(busy);
    let grants = mail.take();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].ticket.seq, next.seq());
    assert_eq!(s.outstanding(0), 1);
}

#[test]
fn a_waiter_that_joins_while_a_slot_is_free_is_granted_at_once() {
    let now = Instant::now();
    let mail = Arc::new(Mailboxes::default());
    let s = queued(2, 4, Arc::clone(&mail), Arc::new(Gauge(Default::default())));
    // (A newcomer found the replica full, and a slot freed before it joined the queue.)
    let w = s.enqueue(0, 5, 1, now).expect("queued");
    let grants = mail.take();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].ticket.seq, w.seq());
}

/// Two local replicas (tier 0, limit 1) and a provider (tier 1).
fn tiered() -> Arc<Slots> {
    let mut lim = limits(&[1, 1, 1], 1);
    lim[2].priority = 1;
    lim[2].max_outstanding = 0;
    shared(&lim, &config(Policy::LeastOutstanding, 0))
}

#[test]
fn the_next_tier_is_used_only_when_the_first_cannot_take_the_request() {
    let s = tiered();
    let now = Instant::now();
    let mut c = Chooser::new(&s, 3);
    // Both local replicas free: never the provider.
    for _ in 0..50 {
        assert_ne!(take(&mut c, &s, now, 0).replica(), 2);
    }
    // Tried (failed this request) locally: the provider.
    assert_eq!(take(&mut c, &s, now, 0b011).replica(), 2);
    // One local replica ejected: the other one, still not the provider.
    assert!(s.failed(0, now));
    for _ in 0..20 {
        assert_eq!(take(&mut c, &s, now, 0).replica(), 1);
    }
    // Both ejected: the provider.
    assert!(s.failed(1, now));
    assert_eq!(take(&mut c, &s, now, 0).replica(), 2);
    assert!(s.succeeded(0) && s.succeeded(1));
    // Both at their limit: a request that may wait waits; one that cannot goes on.
    let _a = take(&mut c, &s, now, 0);
    let _b = take(&mut c, &s, now, 0);
    assert_eq!(c.take(&s, now, 0, false).err(), Some(Pick::Full));
    assert_eq!(c.take(&s, now, 0, true).map(|l| l.replica()).ok(), Some(2));
    assert_eq!(s.first_tier(), 0);
    assert_eq!(s.priority(2), 1);
}

#[test]
fn when_every_tier_is_out_the_first_tier_is_tried_first() {
    let s = tiered();
    let now = Instant::now();
    let mut c = Chooser::new(&s, 3);
    for i in 0..3 {
        s.set_down(i, true);
    }
    assert_eq!(take(&mut c, &s, now, 0).replica(), 0);
    assert_eq!(take(&mut c, &s, now, 0b001).replica(), 1);
}

#[test]
fn same_shape_compares_limits_and_the_registry_keeps_state_across_tables() {
    let s = slots(&[1, 2], Policy::LeastOutstanding);
    assert!(s.same_shape(&limits(&[1, 2], 0)));
    assert!(!s.same_shape(&limits(&[1, 3], 0)));
    assert!(!s.same_shape(&limits(&[1], 0)));
    let mut tiers = limits(&[1, 2], 0);
    tiers[1].priority = 1;
    assert!(!s.same_shape(&tiers), "a new tier starts afresh");
    let registry = Registry::default();
    let cfg = config(Policy::LeastOutstanding, 0);
    let epoch = Instant::now();
    let a = registry.slots("m", &limits(&[1, 1], 2), &cfg, epoch, None);
    let b = registry.slots("m", &limits(&[1, 1], 2), &cfg, epoch, None);
    assert!(Arc::ptr_eq(&a, &b), "same replicas: same state");
    let c = registry.slots("m", &limits(&[1, 1], 3), &cfg, epoch, None);
    assert!(!Arc::ptr_eq(&a, &c), "a new limit starts afresh");
    registry.retain(|_| false);
    let d = registry.slots("m", &limits(&[1, 1], 3), &cfg, epoch, None);
    assert!(!Arc::ptr_eq(&c, &d));
}
