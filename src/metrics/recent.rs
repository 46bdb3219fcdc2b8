//! The last errors, for `/status`: a fixed ring of [`RECENT_ERRORS`] entries that request
//! completion writes to only when a request failed ([`is_listed`]).
//!
//! # Lock-free, one word per entry
//! Each entry is packed into one `AtomicU64` (when, model id, status, outcome), so a writer
//! is one `fetch_add` on the ring's cursor and one store, and a reader can never see half an
//! entry. A lock would be taken only on the error path too, but errors come in bursts on
//! every worker at once (an upstream dying turns every request into a 502), which is exactly
//! when workers must not queue on a shared mutex. No bodies, headers or tokens are stored:
//! only the status, the outcome, the model's registry id and the time.
//!
//! Two writers racing for the same slot (more than [`RECENT_ERRORS`] errors between two
//! reads) simply overwrite each other. The reader walks back from the cursor; an entry
//! whose writer has taken its slot but not stored yet is read as the older entry it
//! replaces (one out-of-order line in a page that polls every 2 s; no sort is worth that).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::accesslog::Outcome;

use super::process_epoch;

/// Entries kept.
pub const RECENT_ERRORS: usize = 32;

/// Time is stored in units of 10 ms since the process epoch: 35 bits hold 10.9 years.
const TICK_NANOS: u64 = 10_000_000;
const TIME_BITS: u32 = 35;
const MODEL_BITS: u32 = 16;
const STATUS_BITS: u32 = 10;
const OUTCOME_BITS: u32 = 3;
const _: () = assert!(TIME_BITS + MODEL_BITS + STATUS_BITS + OUTCOME_BITS == 64);

/// The model id written for a model whose id does not fit (more than 65,534 models).
pub const UNKNOWN_MODEL: u16 = u16::MAX;

/// True for the requests `/status` lists: server-side failures (5xx), refusals for load or
/// rate (429), and upstream failures that happened after a 2xx head (a cut stream). Client
/// mistakes (4xx) and client aborts are not failures of the service and would flood it.
pub fn is_listed(status: u16, outcome: Outcome) -> bool {
    status >= 500 || status == 429 || outcome == Outcome::UpstreamError
}

/// One listed error, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentError {
    /// Time since the process epoch (10 ms resolution).
    pub at: Duration,
    /// The model's registry id (0: no model, [`UNKNOWN_MODEL`]: id did not fit).
    pub model: u16,
    /// The status code (1023 for anything above).
    pub status: u16,
    pub outcome: Outcome,
}

/// The ring itself; see the module docs.
#[derive(Debug)]
pub struct RecentErrors {
    cursor: AtomicU64,
    slots: [AtomicU64; RECENT_ERRORS],
}

impl Default for RecentErrors {
    fn default() -> Self {
        RecentErrors {
            cursor: AtomicU64::new(0),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RecentErrors {
    /// Records one error that ended at `now`.
    pub fn push(&self, model: u16, status: u16, outcome: Outcome, now: Instant) {
        let packed = pack(RecentError {
            at: now.saturating_duration_since(process_epoch()),
            model,
            status,
            outcome,
        });
        let i = self.cursor.fetch_add(1, Relaxed) as usize % RECENT_ERRORS;
        self.slots[i].store(packed, Relaxed);
    }

    /// Errors listed since the process started.
    pub fn total(&self) -> u64 {
        self.cursor.load(Relaxed)
    }

    /// The entries held now, newest first: backwards from the cursor. A writer that took
    /// its slot but has not stored yet leaves the older entry there for this read.
    pub fn snapshot(&self) -> Vec<RecentError> {
        let cursor = self.cursor.load(Relaxed) as usize;
        (1..=RECENT_ERRORS)
            .map(|back| self.slots[(cursor + RECENT_ERRORS - back) % RECENT_ERRORS].load(Relaxed))
            .filter(|&w| w != 0)
            .map(unpack)
            .collect()
    }
}

fn outcome_code(o: Outcome) -> u64 {
    match o {
        Outcome::Ok => 0,
        Outcome::ClientAbort => 1,
        Outcome::UpstreamError => 2,
        Outcome::Timeout => 3,
        Outcome::Rejected => 4,
    }
}

fn outcome_of(code: u64) -> Outcome {
    match code {
        1 => Outcome::ClientAbort,
        2 => Outcome::UpstreamError,
        3 => Outcome::Timeout,
        4 => Outcome::Rejected,
        _ => Outcome::Ok,
    }
}

/// `[time:35][model:16][status:10][outcome:3]`, high bits first. Never 0 for a listed error
/// (its status is at least 429, or its outcome is not `Ok`).
fn pack(e: RecentError) -> u64 {
    let ticks = (e.at.as_nanos() / u128::from(TICK_NANOS)).min((1 << TIME_BITS) - 1) as u64;
    let status = u64::from(e.status.min((1 << STATUS_BITS) - 1));
    (ticks << (MODEL_BITS + STATUS_BITS + OUTCOME_BITS))
        | (u64::from(e.model) << (STATUS_BITS + OUTCOME_BITS))
        | (status << OUTCOME_BITS)
        | outcome_code(e.outcome)
}

fn unpack(w: u64) -> RecentError {
    let field = |shift: u32, bits: u32| (w >> shift) & ((1 << bits) - 1);
    RecentError {
        at: Duration::from_nanos(
            field(MODEL_BITS + STATUS_BITS + OUTCOME_BITS, TIME_BITS) * TICK_NANOS,
        ),
        model: field(STATUS_BITS + OUTCOME_BITS, MODEL_BITS) as u16,
        status: field(OUTCOME_BITS, STATUS_BITS) as u16,
        outcome: outcome_of(field(0, OUTCOME_BITS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_the_service_are_listed() {
        assert!(is_listed(502, Outcome::UpstreamError));
        assert!(is_listed(503, Outcome::Rejected));
        assert!(is_listed(504, Outcome::Timeout));
        assert!(is_listed(500, Outcome::Ok), "an upstream's own 500");
        assert!(is_listed(429, Outcome::Rejected));
        assert!(
            is_listed(200, Outcome::UpstreamError),
            "a stream cut after its head"
        );
        assert!(!is_listed(200, Outcome::Ok));
        assert!(!is_listed(404, Outcome::Rejected));
        assert!(!is_listed(401, Outcome::Rejected));
        assert!(!is_listed(499, Outcome::ClientAbort));
        assert!(!is_listed(408, Outcome::Timeout));
    }

    #[test]
    fn an_entry_survives_packing() {
        let e = RecentError {
            at: Duration::from_millis(123_450),
            model: 7,
            status: 503,
            outcome: Outcome::Rejected,
        };
        assert_eq!(unpack(pack(e)), e);
        let big = RecentError {
            at: Duration::from_secs(10 * 365 * 86_400),
            model: UNKNOWN_MODEL,
            status: 1023,
            outcome: Outcome::Timeout,
        };
        assert_eq!(unpack(pack(big)), big);
    }

    #[test]
    fn out_of_range_fields_saturate_instead_of_spilling() {
        let e = RecentError {
            at: Duration::from_secs(100 * 365 * 86_400),
            model: 1,
            status: u16::MAX,
            outcome: Outcome::UpstreamError,
        };
        let back = unpack(pack(e));
        assert_eq!(back.model, 1);
        assert_eq!(back.status, 1023);
        assert_eq!(back.outcome, Outcome::UpstreamError);
        assert_eq!(
            back.at,
            Duration::from_nanos(((1 << TIME_BITS) - 1) * TICK_NANOS)
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_entries_newest_first() {
        let ring = RecentErrors::default();
        let t0 = process_epoch();
        assert!(ring.snapshot().is_empty());
        for i in 0..(RECENT_ERRORS as u64 + 5) {
            ring.push(
                1,
                500 + (i % 5) as u16,
                Outcome::Ok,
                t0 + Duration::from_secs(i),
            );
        }
        let got = ring.snapshot();
        assert_eq!(got.len(), RECENT_ERRORS);
        assert_eq!(ring.total(), RECENT_ERRORS as u64 + 5);
        assert_eq!(got[0].at, Duration::from_secs(RECENT_ERRORS as u64 + 4));
        assert_eq!(got[RECENT_ERRORS - 1].at, Duration::from_secs(5));
        assert!(got.windows(2).all(|w| w[0].at > w[1].at));
    }

    #[test]
    fn concurrent_writers_never_tear_an_entry() {
        let ring = std::sync::Arc::new(RecentErrors::default());
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let ring = std::sync::Arc::clone(&ring);
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let now = process_epoch() + Duration::from_millis(i * 10);
                        ring.push(100 + t, 500 + t, Outcome::UpstreamError, now);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        assert_eq!(ring.total(), 8000);
        for e in ring.snapshot() {
            assert_eq!(
                e.model - 100,
                e.status - 500,
                "model and status of one writer"
            );
            assert_eq!(e.outcome, Outcome::UpstreamError);
        }
    }
}
