//! Per-token limits: a lock-free bucket per token and per kind (requests, answer tokens),
//! per process.
//!
//! Owns: the bucket math. The bucket is GCRA (generic cell rate algorithm), the token bucket
//! written as one number: the theoretical arrival time (TAT) of the next unit, in
//! nanoseconds since the bucket's epoch, kept in an `AtomicU64` and advanced with
//! `compare_exchange`. Every worker thread of the process shares the same bucket, so the
//! limit holds per process without a lock on the data path. [`Buckets`] keeps a token's
//! bucket across routing tables (reloads, discovery swaps) while its token and limit stay.
//!
//! Two uses of the same bucket:
//! - `requestsPerMinute`: [`Bucket::try_acquire`] takes one unit when a request is admitted.
//! - `tokensPerMinute`: the cost (prompt + completion tokens) is only known when the answer
//!   ends, so admission only looks ([`Bucket::check`]: is at least one token of budget
//!   left?) and [`Bucket::debit`] charges the answer's tokens afterwards, which may push the
//!   bucket into debt: the key is then refused until the debt is refilled.
//!
//! With `sharedLimits`, each bucket also holds its part of the state shared with other
//! instances through a store ([`shared`]): the same three operations then also take from
//! this instance's allowance and note what to report, still without a lock or a wait.
//!
//! The clock is passed in (`Instant`); the epoch is the first `Instant` the bucket sees.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod shared;

use shared::{Slot, Status};

const NANOS_PER_MINUTE: u64 = 60_000_000_000;

/// A configured limit: `per_minute` units sustained, `burst` at once from a full bucket
/// (`requestsPerMinute`/`burst`; `tokensPerMinute`, whose burst is one minute's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub per_minute: u64,
    pub burst: u64,
}

/// What a bucket counts; part of its identity in [`Buckets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Requests,
    Tokens,
}

/// One token's bucket of one kind. Shared by every worker through the routing table.
#[derive(Debug)]
pub struct Bucket {
    /// Nanoseconds between two units at the sustained rate (at least 1).
    interval: u64,
    /// How far the TAT may run ahead of now and still admit: `(burst - 1)` intervals, so a
    /// full bucket admits `burst` requests at once (or has `burst` tokens of budget).
    tolerance: u64,
    /// The TAT in nanoseconds since `epoch`; 0 = full bucket.
    tat: AtomicU64,
    epoch: OnceLock<Instant>,
    kind: Kind,
    /// This bucket's part of the limits shared through a store.
    shared: Slot,
    /// Whether they are shared right now (the process's one status).
    status: Arc<Status>,
}

impl Bucket {
    /// A full bucket, never shared.
    pub fn new(kind: Kind, limit: RateLimit) -> Bucket {
        Bucket::with_status(kind, limit, Arc::default())
    }

    fn with_status(kind: Kind, limit: RateLimit, status: Arc<Status>) -> Bucket {
        let interval = (NANOS_PER_MINUTE / limit.per_minute.max(1)).max(1);
        let tolerance = interval.saturating_mul(limit.burst.max(1) - 1);
        Bucket {
            interval,
            tolerance,
            tat: AtomicU64::new(0),
            epoch: OnceLock::new(),
            kind,
            shared: Slot::default(),
            status,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Nanoseconds between two units (the store's bucket uses the same).
    pub fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// This bucket's shared state, for the sync thread.
    pub fn slot(&self) -> &Slot {
        &self.shared
    }

    /// A sync said the store's bucket is `ahead` nanoseconds ahead of now, among
    /// `instances`: this instance's allowance until the next one.
    pub fn grant(&self, ahead: i64, instances: u64, now: Instant) -> i64 {
        self.shared.grant(
            self.kind,
            self.interval,
            self.tolerance,
            ahead,
            instances,
            now,
        )
    }

    /// `now` in nanoseconds since the bucket's epoch (set by the first caller).
    fn elapsed(&self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| now);
        // Another worker may have set the epoch from a slightly later `now`.
        u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// `Err(wait)` when a unit at TAT `tat` would not conform at `now`.
    fn conforms(&self, tat: u64, now: u64) -> Result<u64, Duration> {
        let start = tat.max(now);
        if start - now > self.tolerance {
            return Err(Duration::from_nanos(start - now - self.tolerance));
        }
        Ok(start)
    }

    /// Takes one request's worth from the bucket at `now`. `Err(wait)` when the bucket is
    /// empty: `wait` is how long until the next request would be admitted (nothing is
    /// taken then, so a client retrying too early does not push its own wait further out).
    /// While limits are shared, the request also needs this instance's allowance, and is
    /// noted for the next sync.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        if !self.status.synced() {
            return self.take_local(now);
        }
        self.shared.take_one(now)?;
        if let Err(wait) = self.take_local(now) {
            self.shared.give_back();
            return Err(wait);
        }
        self.shared.taken(1, false);
        Ok(())
    }

    fn take_local(&self, now: Instant) -> Result<(), Duration> {
        let now = self.elapsed(now);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = self.conforms(tat, now)?;
            let next = start.saturating_add(self.interval);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Whether the bucket is not spent at `now` (some budget left, however little),
    /// taking nothing: a token budget admits a request while it is not spent.
    /// `Err(wait)`: how long until it is not.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        if self.status.synced() {
            self.shared.has_some(now)?;
        }
        let now = self.elapsed(now);
        let ahead = self.tat.load(Ordering::Relaxed).saturating_sub(now);
        // A full bucket's worth: `burst` units.
        let capacity = self.tolerance.saturating_add(self.interval);
        match ahead.checked_sub(capacity) {
            Some(debt) => Err(Duration::from_nanos(debt)),
            None => Ok(()),
        }
    }

    /// Charges `units` at `now` whatever the balance (an answer's tokens are spent once it
    /// ended): the bucket may go into debt, which [`Bucket::check`] then refuses until it
    /// is refilled.
    pub fn debit(&self, units: u64, now: Instant) {
        if units == 0 {
            return;
        }
        if self.status.synced() {
            self.shared.taken(units, true);
        }
        let now = self.elapsed(now);
        let cost = units.saturating_mul(self.interval);
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }
}

/// The buckets of the tokens in use, kept across routing tables: a reload or a discovery
/// swap builds a new table, and a token whose value and limit did not change must keep its
/// bucket (else every reload would refill it). Used when a table is built, never on the
/// data path. Entries are keyed by a hash of the token under a per-process random key, so
/// no token value is stored here.
#[derive(Debug, Default)]
pub struct Buckets {
    hasher: RandomState,
    map: Mutex<HashMap<(u64, Kind, RateLimit), Arc<Bucket>>>,
    /// Whether the buckets are shared through a store right now (one for the process).
    status: Arc<Status>,
}

impl Buckets {
    /// The `kind` bucket of `token` under `limit`: the one a previous table used, or a full
    /// one.
    pub fn get(&self, token: &[u8], kind: Kind, limit: RateLimit) -> Arc<Bucket> {
        let key = (self.hasher.hash_one(token), kind, limit);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(key).or_insert_with(|| {
            Arc::new(Bucket::with_status(kind, limit, Arc::clone(&self.status)))
        }))
    }

    /// The shared-limits status every bucket of this registry follows.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Forgets the buckets no table built since `keep` was taken uses (tables still
    /// serving requests hold their own `Arc`s).
    pub fn retain(&self, keep: &[Arc<Bucket>]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, b| keep.iter().any(|k| Arc::ptr_eq(k, b)));
    }
}

/// `Retry-After` in whole seconds: rounded up, and at least 1 (a 0 would invite a retry
/// that is refused again).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rpm: u64, burst: u64) -> Bucket {
        Bucket::new(
            Kind::Requests,
            RateLimit {
                per_minute: rpm,
                burst,
            },
        )
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_refuses() {
        let b = bucket(60, 3);
        let t0 = Instant::now();
        assert!(b.try_acquire(t0).is_ok());
        assert!(b.try_acquire(t0).is_ok());
        assert!(b.try_acquire(t0).is_ok());
        let wait = b.try_acquire(t0).expect_err("bucket is empty");
        // One request per second at 60/min: the next one is a second away.
        assert_eq!(wait, Duration::from_secs(1));
    }

    #[test]
    fn the_bucket_refills_at_the_sustained_rate() {
        let b = bucket(60, 1);
        let t0 = Instant::now();
        assert!(b.try_acquire(t0).is_ok());
        assert!(b.try_acquire(t0 + Duration::from_millis(500)).is_err());
        assert!(b.try_acquire(t0 + Duration::from_millis(1000)).is_ok());
        assert!(b.try_acquire(t0 + Duration::from_millis(1999)).is_err());
        assert!(b.try_acquire(t0 + Duration::from_millis(2000)).is_ok());
    }

    #[test]
    fn a_refused_request_takes_nothing() {
        let b = bucket(60, 1);
        let t0 = Instant::now();
        assert!(b.try_acquire(t0).is_ok());
        for ms in [100, 200, 300, 900] {
            assert!(b.try_acquire(t0 + Duration::from_millis(ms)).is_err());
        }
        assert!(b.try_acquire(t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn idle_time_refills_up_to_the_burst_only() {
        let b = bucket(60, 2);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_acquire(t0).is_ok());
        assert!(b.try_acquire(later).is_ok());
        assert!(b.try_acquire(later).is_ok());
        assert!(b.try_acquire(later).is_err());
    }

    #[test]
    fn wait_counts_down_as_time_passes() {
        let b = bucket(6, 1); // one per 10 s
        let t0 = Instant::now();
        assert!(b.try_acquire(t0).is_ok());
        assert_eq!(b.try_acquire(t0), Err(Duration::from_secs(10)));
        assert_eq!(
            b.try_acquire(t0 + Duration::from_millis(2500)),
            Err(Duration::from_millis(7500))
        );
    }

    #[test]
    fn an_instant_before_the_epoch_counts_as_the_epoch() {
        let b = bucket(60, 1);
        let t0 = Instant::now() + Duration::from_secs(5);
        assert!(b.try_acquire(t0).is_ok());
        // A worker whose `now` was taken a moment earlier.
        assert_eq!(
            b.try_acquire(t0 - Duration::from_millis(10)),
            Err(Duration::from_secs(1))
        );
    }

    #[test]
    fn extreme_rates_do_not_overflow() {
        let b = bucket(u64::MAX, u64::MAX);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(b.try_acquire(t0).is_ok());
        }
        let slow = bucket(1, 1);
        assert!(slow.try_acquire(t0).is_ok());
        assert_eq!(slow.try_acquire(t0), Err(Duration::from_secs(60)));
    }

    #[test]
    fn concurrent_takers_never_exceed_the_burst() {
        let b = std::sync::Arc::new(bucket(1, 100));
        let t0 = Instant::now();
        let admitted = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, admitted) = (b.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        if b.try_acquire(t0).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn buckets_outlive_a_table_while_token_and_limit_stay() {
        let reg = Buckets::default();
        let limit = RateLimit {
            per_minute: 60,
            burst: 1,
        };
        let a = reg.get(b"tok", Kind::Requests, limit);
        let t0 = Instant::now();
        assert!(a.try_acquire(t0).is_ok());
        // The next table gets the same, already drained bucket.
        let again = reg.get(b"tok", Kind::Requests, limit);
        assert!(Arc::ptr_eq(&a, &again));
        assert!(again.try_acquire(t0).is_err());
        // Another token, another kind, or a changed limit: a fresh bucket.
        assert!(!Arc::ptr_eq(&a, &reg.get(b"other", Kind::Requests, limit)));
        assert!(!Arc::ptr_eq(&a, &reg.get(b"tok", Kind::Tokens, limit)));
        let faster = RateLimit {
            per_minute: 120,
            burst: 1,
        };
        let changed = reg.get(b"tok", Kind::Requests, faster);
        assert!(!Arc::ptr_eq(&a, &changed));
        // Only what the latest table uses is kept.
        reg.retain(std::slice::from_ref(&changed));
        assert!(!Arc::ptr_eq(&a, &reg.get(b"tok", Kind::Requests, limit)));
        assert!(Arc::ptr_eq(
            &changed,
            &reg.get(b"tok", Kind::Requests, faster)
        ));
        assert_eq!(a.kind(), Kind::Requests);
    }

    #[test]
    fn a_token_budget_admits_while_not_spent_and_debits_after() {
        // 600 tokens per minute: 10 per second, one minute's worth of budget.
        let b = bucket(600, 600);
        let t0 = Instant::now();
        assert!(b.check(t0).is_ok());
        b.debit(599, t0);
        assert!(b.check(t0).is_ok(), "one token left");
        // An answer bigger than what is left is charged in full: 100 tokens of debt.
        b.debit(101, t0);
        assert_eq!(b.check(t0), Err(Duration::from_secs(10)));
        // Checking takes nothing.
        assert_eq!(b.check(t0), Err(Duration::from_secs(10)));
        assert_eq!(
            b.check(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        // Exactly repaid is still spent; a moment later some budget is back.
        assert_eq!(b.check(t0 + Duration::from_secs(10)), Err(Duration::ZERO));
        assert!(b.check(t0 + Duration::from_millis(10_001)).is_ok());
    }

    #[test]
    fn a_debit_of_nothing_changes_nothing_and_idle_time_refills_the_budget() {
        let b = bucket(60, 60);
        let t0 = Instant::now();
        b.debit(0, t0);
        b.debit(60, t0);
        assert!(b.check(t0).is_err());
        // After an hour the budget is full again, not 60 × 60 tokens.
        let later = t0 + Duration::from_secs(3600);
        b.debit(59, later);
        assert!(b.check(later).is_ok());
        b.debit(1, later);
        assert!(b.check(later).is_err());
        // Huge answers saturate instead of wrapping.
        b.debit(u64::MAX, later);
        assert!(b.check(later + Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn while_synced_a_request_needs_the_allowance_and_is_reported() {
        let reg = Buckets::default();
        let limit = RateLimit {
            per_minute: 60,
            burst: 60,
        };
        let b = reg.get(b"t", Kind::Requests, limit);
        let t0 = Instant::now();
        reg.status().set_mode(shared::Mode::Synced);
        // Not granted anything yet: refused, whatever the local bucket holds.
        assert!(b.try_acquire(t0).is_err());
        // A full store bucket among three instances: a third of the burst here.
        assert_eq!(b.grant(0, 3, t0), 20);
        for _ in 0..20 {
            assert!(b.try_acquire(t0).is_ok());
        }
        assert!(b.try_acquire(t0).is_err());
        assert_eq!(b.slot().take_pending(), 20);
        // The store down: local limits alone, from this instance's real use (40 left of
        // the local burst), and nothing to report.
        reg.status().set_mode(shared::Mode::Local);
        for _ in 0..40 {
            assert!(b.try_acquire(t0).is_ok());
        }
        assert!(b.try_acquire(t0).is_err());
        assert_eq!(b.slot().take_pending(), 0);
        // Synced again with a big allowance: the local bucket still refuses (this instance
        // alone used the whole limit), and the allowance taken is given back.
        reg.status().set_mode(shared::Mode::Synced);
        assert_eq!(b.grant(-1, 1, t0), 60);
        assert!(b.try_acquire(t0).is_err());
        assert_eq!(b.slot().take_pending(), 0);
        assert!(b.try_acquire(t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(b.slot().take_pending(), 1);
    }

    #[test]
    fn while_synced_a_token_budget_needs_its_share_and_reports_charges() {
        let reg = Buckets::default();
        let limit = RateLimit {
            per_minute: 600,
            burst: 600,
        };
        let b = reg.get(b"t", Kind::Tokens, limit);
        let t0 = Instant::now();
        reg.status().set_mode(shared::Mode::Synced);
        assert_eq!(b.grant(0, 2, t0), 300);
        assert!(b.check(t0).is_ok());
        b.debit(299, t0);
        assert!(b.check(t0).is_ok());
        b.debit(2, t0);
        assert!(b.check(t0).is_err(), "this instance's share is spent");
        assert_eq!(b.slot().take_pending(), 301);
        // Locally, 301 of 600 are spent: the fallback still admits.
        reg.status().set_mode(shared::Mode::Local);
        assert!(b.check(t0).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }
}
