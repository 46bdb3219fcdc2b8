//! Deadlines for one worker: a min-heap of (deadline, key, generation) with lazy cancellation.
//!
//! Connections do not cancel timers. They store their current deadline; when a heap entry
//! fires, the worker compares it with the connection's deadline and generation and either
//! fires the timeout or re-arms at the later deadline. Moving a deadline later (every byte of
//! an idle timeout) therefore costs nothing (PITFALLS 16).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, key: usize, generation: u64) {
        self.heap.push(Reverse((at, key, generation)));
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pops one entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self
                .heap
                .pop()
                .map(|Reverse((_, key, generation))| (key, generation)),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_pop_in_deadline_order_only_when_due() {
        let now = Instant::now();
        let mut timers = Timers::default();
        timers.push(now + Duration::from_secs(2), 2, 0);
        timers.push(now + Duration::from_secs(1), 1, 0);
        assert_eq!(timers.pop_due(now), None);
        assert_eq!(timers.next(), Some(now + Duration::from_secs(1)));
        let later = now + Duration::from_secs(3);
        assert_eq!(timers.pop_due(later), Some((1, 0)));
        assert_eq!(timers.pop_due(later), Some((2, 0)));
        assert!(timers.is_empty());
    }
}
