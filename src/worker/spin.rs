//! Busy polling: a worker that just moved bytes may poll without sleeping for a short
//! window before it blocks (`busyPoll`, microseconds; 0 turns it off).
//!
//! Why (issue 19; BENCHMARKS.md has the measurements): a worker that blocks in
//! `epoll_wait` lets its vCPU halt, and the next event then costs a halted-vCPU wakeup
//! (the host must run the vCPU again, and the thread runs on cold caches). At one connection a
//! proxied request waits twice (for the upstream's answer, for the client's next request);
//! which of those waits cross vCPUs depends on where the scheduler put the client, the
//! upstream and the worker at start, which is why the added latency of a proxy varied from
//! run to run. A worker that keeps polling through the wait is running when the bytes come:
//! no wakeup, and no cross-vCPU hop into it, in every run.
//!
//! It only pays when the next event comes soon, so it is adaptive: a wait that ended within
//! the window (spun or blocked) counts for spinning, one that did not counts more against
//! it, and the worker spins only while the balance is not negative. Ping-pong traffic (a
//! fast upstream, one client after another) spins; sparse traffic and answers that take
//! milliseconds, as a model's generation does, stop it after a few misses, so an idle or
//! lightly loaded router costs what it did. An idle worker (no socket event in its last turn)
//! never spins, nor does one while more than [`MAX_IN_FLIGHT`] requests are in flight. Each round of the spin yields the CPU: with 512 SSE streams on 2 vCPUs, a
//! bare spin took the CPU the upstream and the clients needed, and the streams' first events
//! came later than without it (BENCHMARKS.md, issue 19).

use mio::{Events, Poll};
use std::io;
use std::time::{Duration, Instant};

/// How much a wait that outlasted the window counts against spinning, against 1 for one
/// that ended within it: the worker spins while at least two of three recent waits paid.
const MISS_WEIGHT: i32 = 2;
/// The balance is kept within ±`CAP`, so a change of traffic turns it within a few waits.
const CAP: i32 = 8;
/// With more requests than this in flight (in the whole process) a worker does not spin:
/// their events come on their own, and the CPU is better left to the upstream and clients
/// that may share the machine (32 SSE streams opened at once on 2 vCPUs, 8 rounds: first
/// events came at a median 1,330 µs with a spin that ignored this, 960 µs without a spin).
/// It also keeps a router carrying many concurrent streams from spinning between their
/// events.
pub const MAX_IN_FLIGHT: u64 = 4;

/// A worker's busy-poll policy, and the wait that follows it.
#[derive(Debug, Clone)]
pub struct Spin {
    window: Duration,
    balance: i32,
}

impl Spin {
    /// `window` zero: never spin.
    pub fn new(window: Duration) -> Spin {
        Spin { window, balance: 0 }
    }

    /// How long to poll without sleeping before blocking, after a turn that handled a
    /// socket event (`active`) or not, with `in_flight` requests in the process; zero means
    /// block at once.
    fn budget(&self, active: bool, in_flight: u64) -> Duration {
        if active && in_flight <= MAX_IN_FLIGHT && self.balance >= 0 {
            self.window
        } else {
            Duration::ZERO
        }
    }

    /// Whether the policy can ever spin (the caller skips measuring waits otherwise).
    fn is_on(&self) -> bool {
        !self.window.is_zero()
    }

    /// A wait ended after `waited`: it would have paid to spin through it when that is
    /// within the window.
    fn waited(&mut self, waited: Duration) {
        if self.window.is_zero() {
            return;
        }
        self.balance = if waited <= self.window {
            (self.balance + 1).min(CAP)
        } else {
            (self.balance - MISS_WEIGHT).max(-CAP)
        };
    }

    /// Waits for events up to `timeout`: polling without sleeping first for as long as the
    /// policy says, then blocking for the rest; `now` is when the wait began.
    pub fn wait(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        timeout: Duration,
        now: Instant,
        (active, in_flight): (bool, u64),
    ) -> io::Result<()> {
        let spin = self.budget(active, in_flight).min(timeout);
        let mut left = timeout;
        if !spin.is_zero() {
            let until = now + spin;
            loop {
                poll_once(poll, events, Duration::ZERO)?;
                if !events.is_empty() {
                    self.waited(now.elapsed());
                    return Ok(());
                }
                let at = Instant::now();
                if at >= until {
                    left = timeout.saturating_sub(at - now);
                    break;
                }
                // Not a bare spin: a thread that needs this CPU (an upstream, a client on
                // the same machine) runs first.
                std::thread::yield_now();
            }
        }
        poll_once(poll, events, left)?;
        if self.is_on() && !timeout.is_zero() {
            self.waited(now.elapsed());
        }
        Ok(())
    }
}

/// One `epoll_wait`; an interrupted one returns no events.
fn poll_once(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_micros(100);

    #[test]
    fn off_never_spins() {
        let mut spin = Spin::new(Duration::ZERO);
        for _ in 0..10 {
            spin.waited(Duration::from_micros(10));
        }
        assert_eq!(spin.budget(true, 1), Duration::ZERO);
    }

    #[test]
    fn an_idle_worker_never_spins() {
        let spin = Spin::new(W);
        assert_eq!(spin.budget(false, 1), Duration::ZERO);
        assert_eq!(spin.budget(true, 1), W);
    }

    #[test]
    fn a_worker_does_not_spin_with_many_requests_in_flight() {
        let spin = Spin::new(W);
        assert_eq!(spin.budget(true, MAX_IN_FLIGHT), W);
        assert_eq!(spin.budget(true, MAX_IN_FLIGHT + 1), Duration::ZERO);
    }

    #[test]
    fn short_waits_keep_it_spinning_and_long_ones_stop_it_within_a_few_waits() {
        let mut spin = Spin::new(W);
        for _ in 0..100 {
            spin.waited(Duration::from_micros(60));
        }
        assert_eq!(spin.budget(true, 1), W);
        // Answers that take milliseconds: at most 5 wasted windows after a long run of hits.
        let mut wasted = 0;
        while spin.budget(true, 1) > Duration::ZERO {
            spin.waited(Duration::from_millis(20));
            wasted += 1;
        }
        assert!(wasted <= 5, "{wasted}");
        // Back to quick waits (seen while blocking): spinning resumes.
        let mut waits = 0;
        while spin.budget(true, 1) == Duration::ZERO {
            spin.waited(Duration::from_micros(50));
            waits += 1;
        }
        assert!(waits <= 2 * CAP as usize, "{waits}");
    }

    #[test]
    fn it_spins_only_while_two_of_three_waits_pay() {
        let mut spin = Spin::new(W);
        // One miss in three: balance stays.
        for _ in 0..30 {
            spin.waited(Duration::from_micros(10));
            spin.waited(Duration::from_micros(10));
            spin.waited(Duration::from_millis(1));
        }
        assert_eq!(spin.budget(true, 1), W);
        // One miss in two: it stops.
        for _ in 0..30 {
            spin.waited(Duration::from_micros(10));
            spin.waited(Duration::from_millis(1));
        }
        assert_eq!(spin.budget(true, 1), Duration::ZERO);
    }
}
