//! Limits shared across instances through a Redis/Valkey store, without the data path ever
//! waiting on it: the pure half (state, the script, what a sync reply means).
//!
//! # How it works
//! The store holds one GCRA bucket per key and kind (a TAT in the store's own clock, `TIME`),
//! advanced only by a Lua script the sync thread (`limitstore`) runs once per `syncInterval`
//! for every key at once. Each instance keeps, per bucket, a [`Slot`]:
//! - `pending`: what it admitted (requests) or charged (answer tokens) since its last sync,
//!   reported and charged to the store's bucket at the next sync;
//! - `allowance`: what it may still admit before the next sync. The script answers how far
//!   the store's bucket is ahead of now after charging; [`Slot::grant`] turns that into the
//!   units the bucket would still admit (A) and gives this instance ⌈A / N⌉ of them, N being
//!   the instances that synced within the last few intervals (counted by the same script);
//! - `retry_at`: when the store said the next unit would be admitted (for `Retry-After`).
//!
//! Workers admit from the allowance and the local bucket (atomics only); they never see the
//! store. While synced, a request needs both: the local bucket keeps counting, so falling
//! back to local limits when the store is down or slow starts from this instance's real
//! recent use.
//!
//! # The overshoot bound
//! An instance's admissions are conforming for the store's bucket as it knew it at its last
//! sync; what it cannot know is what the other instances admitted since their own last
//! syncs, at most one allowance each. So at any moment the requests admitted beyond the
//! key's limit are at most the other instances' allowances of one sync interval:
//! (N − 1) × ⌈A / N⌉ ≤ (N − 1) × ⌈burst / N⌉ requests per key per sync interval, which is
//! less than one burst; and it does not add up over intervals, because the store charges
//! every admission and refuses until the excess is repaid. The sustained rate is exact.
//! Token budgets work the same way with tokens: each instance gets ⌈left / N⌉ of the budget
//! left, and the overshoot is the answers in flight plus the other instances' shares.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::Kind;

/// The instant shared-limit times (`retry_at`) are counted from, as nanoseconds: an hour
/// before the first use, so an `Instant` a caller took a moment before that is still after
/// it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

fn nanos_since_epoch(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// One bucket's share of the shared state (see the module docs). Zero-initialised: a bucket
/// that was never synced has no allowance, which only matters while [`Mode::Synced`].
#[derive(Debug, Default)]
pub struct Slot {
    pending: AtomicU64,
    allowance: AtomicI64,
    retry_at: AtomicU64,
}

impl Slot {
    /// Takes one unit of the allowance (a request), or says how long until the store is
    /// expected to admit one (until the next sync at least: never less than nothing).
    pub fn take_one(&self, now: Instant) -> Result<(), Duration> {
        match self
            .allowance
            .fetch_update(Relaxed, Relaxed, |a| (a > 0).then(|| a - 1))
        {
            Ok(_) => Ok(()),
            Err(_) => Err(self.wait(now)),
        }
    }

    /// Gives back a unit [`Slot::take_one`] took (the local bucket refused the request).
    pub fn give_back(&self) {
        self.allowance.fetch_add(1, Relaxed);
    }

    /// Whether some allowance is left (a token budget: not spent).
    pub fn has_some(&self, now: Instant) -> Result<(), Duration> {
        if self.allowance.load(Relaxed) > 0 {
            Ok(())
        } else {
            Err(self.wait(now))
        }
    }

    /// Units taken here, reported at the next sync; a token charge also comes off the
    /// allowance.
    pub fn taken(&self, units: u64, from_allowance: bool) {
        self.pending.fetch_add(units, Relaxed);
        if from_allowance {
            let units = i64::try_from(units).unwrap_or(i64::MAX);
            let _ = self
                .allowance
                .fetch_update(Relaxed, Relaxed, |a| Some(a.saturating_sub(units)));
        }
    }

    fn wait(&self, now: Instant) -> Duration {
        let at = self.retry_at.load(Relaxed);
        Duration::from_nanos(at.saturating_sub(nanos_since_epoch(now)))
    }

    /// What to report at this sync (and forget here).
    pub fn take_pending(&self) -> u64 {
        self.pending.swap(0, Relaxed)
    }

    /// A sync failed: what it was to report is reported with the next one.
    pub fn restore_pending(&self, units: u64) {
        self.pending.fetch_add(units, Relaxed);
    }

    /// A sync succeeded: the store's bucket of `interval`/`tolerance` nanoseconds (see
    /// `Bucket`) is `ahead` nanoseconds ahead of now (negative: full). Gives this instance
    /// its share of what it would admit among `instances`, and the retry time.
    pub fn grant(
        &self,
        kind: Kind,
        interval: u64,
        tolerance: u64,
        ahead: i64,
        instances: u64,
        now: Instant,
    ) -> i64 {
        let (units, wait) = available(kind, interval, tolerance, ahead);
        let instances = instances.max(1);
        let share = units.div_ceil(instances);
        let share = i64::try_from(share).unwrap_or(i64::MAX);
        // What was taken while this sync was under way is not in the store's answer yet: it
        // comes off the new share, so what this instance took since its last report never
        // exceeds one allowance.
        let taken_since = i64::try_from(self.pending.load(Relaxed)).unwrap_or(i64::MAX);
        let share = share.saturating_sub(taken_since);
        self.allowance.store(share, Relaxed);
        self.retry_at
            .store(nanos_since_epoch(now).saturating_add(wait), Relaxed);
        share
    }
}

/// What a bucket `ahead` ns ahead of now still has: (units, ns until one more if none). For
/// requests, the requests it would admit at once; for tokens, the budget left (a part of a
/// token counts as one: a budget is not spent while anything is left).
pub fn available(kind: Kind, interval: u64, tolerance: u64, ahead: i64) -> (u64, u64) {
    let interval = interval.max(1);
    let ahead = u64::try_from(ahead).unwrap_or(0);
    match kind {
        Kind::Requests => match tolerance.checked_sub(ahead) {
            Some(room) => (room / interval + 1, 0),
            None => (0, ahead - tolerance),
        },
        Kind::Tokens => {
            let capacity = tolerance.saturating_add(interval);
            match capacity.checked_sub(ahead) {
                Some(0) | None => (0, ahead - capacity.min(ahead)),
                Some(left) => (left.div_ceil(interval), 0),
            }
        }
    }
}

/// Whether limits are shared right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No `sharedLimits` in the config: local limits, nothing to say.
    Off,
    /// The last sync succeeded: admit from the allowances.
    Synced,
    /// The store is down, slow or refusing: local limits until a sync succeeds again.
    Local,
}

/// The process's shared-limits state, read by workers (one relaxed load per request), the
/// metrics and `/health`; written by the sync thread.
#[derive(Debug, Default)]
pub struct Status {
    mode: AtomicU8,
    instances: AtomicU64,
    syncs: AtomicU64,
    failures: AtomicU64,
    /// The last sync's round trip, in microseconds.
    last_sync_micros: AtomicU64,
    /// The store as logs may show it (`redis://host:port/db`, never credentials).
    store: OnceLock<String>,
}

impl Status {
    pub fn mode(&self) -> Mode {
        match self.mode.load(Relaxed) {
            1 => Mode::Synced,
            2 => Mode::Local,
            _ => Mode::Off,
        }
    }

    /// True while workers admit from the shared allowances.
    pub fn synced(&self) -> bool {
        self.mode() == Mode::Synced
    }

    /// The store's label, once one is configured.
    pub fn store(&self) -> Option<&str> {
        self.store.get().map(String::as_str)
    }

    /// Sets the store label (first configuration only; a later one is logged by its thread).
    pub fn set_store(&self, label: &str) {
        let _ = self.store.set(label.to_owned());
    }

    /// Moves to `mode`; returns the previous one (the sync thread logs transitions).
    pub fn set_mode(&self, mode: Mode) -> Mode {
        let code = match mode {
            Mode::Off => 0,
            Mode::Synced => 1,
            Mode::Local => 2,
        };
        match self.mode.swap(code, Relaxed) {
            1 => Mode::Synced,
            2 => Mode::Local,
            _ => Mode::Off,
        }
    }

    /// A sync succeeded in `took`, seeing `instances` live instances.
    pub fn synced_once(&self, instances: u64, took: Duration) {
        self.syncs.fetch_add(1, Relaxed);
        self.instances.store(instances, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.last_sync_micros.store(micros, Relaxed);
    }

    /// A sync (or connection) failed.
    pub fn failed_once(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// (syncs, failures, instances seen, last round trip) for the metrics.
    pub fn counters(&self) -> (u64, u64, u64, Duration) {
        (
            self.syncs.load(Relaxed),
            self.failures.load(Relaxed),
            self.instances.load(Relaxed),
            Duration::from_micros(self.last_sync_micros.load(Relaxed)),
        )
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Synced => "synced",
            Mode::Local => "local",
        })
    }
}

/// The sync script. KEYS[1] is the set of live instances, KEYS[2..] one hash per key (fields
/// `r` and `t`: the TAT of its request bucket and token budget, in microseconds of the
/// store's clock). ARGV: this instance's id, how long an instance counts as live (ms), then
/// per key: the request interval (µs, `0` = no request limit), the requests to charge, the
/// token interval, the tokens to charge. Returns the live instances, then per key how far
/// each bucket is ahead of now after charging (µs; ≤ 0 = full). Every key shares one hash
/// tag (`{prefix}`), so it also runs on a Redis Cluster shard.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl * 1000)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
local out = { redis.call('ZCARD', KEYS[1]) }
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 4
  local longest = 0
  for j = 0, 1 do
    local interval = tonumber(ARGV[a + j * 2])
    local ahead = 0
    if interval > 0 then
      local field = (j == 0) and 'r' or 't'
      local tat = tonumber(redis.call('HGET', KEYS[i], field) or '0') or 0
      if tat < now then tat = now end
      tat = tat + tonumber(ARGV[a + j * 2 + 1]) * interval
      redis.call('HSET', KEYS[i], field, string.format('%.0f', tat))
      ahead = tat - now
      if ahead > longest then longest = ahead end
    end
    out[#out + 1] = math.floor(ahead)
  end
  redis.call('PEXPIRE', KEYS[i], math.floor(longest / 1000) + 60000)
end
return out
"#;

/// The script argument of a bucket's interval: microseconds, as the script's Lua doubles
/// take them (sub-microsecond intervals of huge token budgets included).
pub fn interval_arg(interval_nanos: u64) -> String {
    let micros = interval_nanos as f64 / 1000.0;
    format!("{micros}")
}

/// The store's key of a key name (hash tag `{prefix}`: one slot for the whole script).
pub fn store_key(prefix: &str, name: &str) -> Vec<u8> {
    let mut k = format!("{{{prefix}}}:key:").into_bytes();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The store's set of live instances.
pub fn instances_key(prefix: &str) -> Vec<u8> {
    format!("{{{prefix}}}:instances").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn requests_available_are_what_the_bucket_admits_at_once() {
        // 60/min with burst 60: interval 1 s, tolerance 59 s.
        let (i, tol) = (SEC, 59 * SEC);
        assert_eq!(available(Kind::Requests, i, tol, -5), (60, 0));
        assert_eq!(available(Kind::Requests, i, tol, 0), (60, 0));
        assert_eq!(available(Kind::Requests, i, tol, (59 * SEC) as i64), (1, 0));
        assert_eq!(
            available(Kind::Requests, i, tol, (59 * SEC + 1) as i64),
            (0, 1)
        );
        assert_eq!(
            available(Kind::Requests, i, tol, (70 * SEC) as i64),
            (0, 11 * SEC)
        );
    }

    #[test]
    fn a_token_budget_is_available_while_anything_is_left() {
        // 600 tokens/min: interval 0.1 s, capacity 60 s.
        let (i, tol) = (SEC / 10, 60 * SEC - SEC / 10);
        assert_eq!(available(Kind::Tokens, i, tol, 0), (600, 0));
        assert_eq!(
            available(Kind::Tokens, i, tol, (60 * SEC - 1) as i64),
            (1, 0)
        );
        assert_eq!(available(Kind::Tokens, i, tol, (60 * SEC) as i64), (0, 0));
        assert_eq!(
            available(Kind::Tokens, i, tol, (62 * SEC) as i64),
            (0, 2 * SEC)
        );
    }

    #[test]
    fn each_instance_gets_its_share_rounded_up() {
        let slot = Slot::default();
        let now = Instant::now();
        let (i, tol) = (SEC, 59 * SEC);
        assert_eq!(slot.grant(Kind::Requests, i, tol, 0, 3, now), 20);
        assert_eq!(
            slot.grant(Kind::Requests, i, tol, (58 * SEC) as i64, 3, now),
            1
        );
        assert_eq!(
            slot.grant(Kind::Requests, i, tol, 0, 0, now),
            60,
            "at least one"
        );
        // Nothing left: no allowance, and the retry time is the store's.
        assert_eq!(
            slot.grant(Kind::Requests, i, tol, (62 * SEC) as i64, 3, now),
            0
        );
        assert_eq!(slot.take_one(now), Err(Duration::from_secs(3)));
        assert_eq!(
            slot.take_one(now + Duration::from_secs(1)),
            Err(Duration::from_secs(2))
        );
    }

    #[test]
    fn what_was_taken_during_the_sync_comes_off_the_new_share() {
        let slot = Slot::default();
        let now = Instant::now();
        // Reported at the start of the sync...
        slot.taken(5, false);
        assert_eq!(slot.take_pending(), 5);
        // ...then 4 more taken while the store answered: not in its answer.
        slot.taken(4, false);
        assert_eq!(slot.grant(Kind::Requests, SEC, 59 * SEC, 0, 3, now), 16);
        assert_eq!(slot.take_pending(), 4, "still reported at the next sync");
    }

    #[test]
    fn the_allowance_is_taken_given_back_and_reported() {
        let slot = Slot::default();
        let now = Instant::now();
        slot.grant(Kind::Requests, SEC, SEC, 0, 1, now);
        assert!(slot.take_one(now).is_ok());
        assert!(slot.take_one(now).is_ok());
        assert_eq!(slot.take_one(now), Err(Duration::ZERO));
        slot.give_back();
        assert!(slot.take_one(now).is_ok());
        slot.taken(1, false);
        slot.taken(2, false);
        assert_eq!(slot.take_pending(), 3);
        assert_eq!(slot.take_pending(), 0);
        slot.restore_pending(4);
        assert_eq!(slot.take_pending(), 4);
    }

    #[test]
    fn token_charges_come_off_the_allowance_into_debt() {
        let slot = Slot::default();
        let now = Instant::now();
        slot.grant(Kind::Tokens, SEC / 10, 60 * SEC - SEC / 10, 0, 2, now);
        assert!(slot.has_some(now).is_ok());
        slot.taken(299, true);
        assert!(slot.has_some(now).is_ok());
        slot.taken(50, true);
        assert!(slot.has_some(now).is_err());
        assert_eq!(slot.take_pending(), 349);
    }

    #[test]
    fn the_status_moves_between_modes() {
        let s = Status::default();
        assert_eq!(s.mode(), Mode::Off);
        assert!(!s.synced());
        assert_eq!(s.set_mode(Mode::Synced), Mode::Off);
        assert!(s.synced());
        assert_eq!(s.set_mode(Mode::Local), Mode::Synced);
        assert_eq!(s.mode().to_string(), "local");
        s.synced_once(3, Duration::from_micros(250));
        s.failed_once();
        assert_eq!(s.counters(), (1, 1, 3, Duration::from_micros(250)));
        s.set_store("redis://h:6379/0");
        s.set_store("other");
        assert_eq!(s.store(), Some("redis://h:6379/0"));
    }

    #[test]
    fn store_keys_share_one_hash_tag() {
        assert_eq!(store_key("mg", "team a"), b"{mg}:key:team a");
        assert_eq!(instances_key("mg"), b"{mg}:instances");
        assert_eq!(interval_arg(1_000_000_000), "1000000");
        assert_eq!(interval_arg(600), "0.6");
    }
}
