//! A model's wait queue for the whole process (issue 17): when every replica is at its
//! `maxConcurrentRequests`, requests from any worker wait in one FIFO of tickets, and a slot
//! freed on any worker goes to the oldest ticket, on whatever worker it waits.
//!
//! Why a mutex here and nowhere else: the queue is only touched when every replica is full
//! (joining it), when a waiter leaves it (timeout, client gone), and when a slot is freed
//! while tickets wait. A request that finds a free slot reads one atomic (the waiter count)
//! and never locks. The critical sections are a push, a pop or a short scan of a bounded
//! deque, never a syscall: the grant itself is sent after the lock is released. A lock-free
//! ticket scheme would save nothing on the path that matters and make leaving the queue (a
//! waiter in the middle gives up) much harder to get right.
//!
//! A grant carries a slot already taken for the waiter ([`Grant`] holds its [`Lease`]), so
//! no newcomer can take it on the way; the waiter's worker receives it through its control
//! channel and waker ([`Handoff`]). A grant that finds its waiter gone is dropped, and the
//! dropped lease hands the slot to the next ticket. Lost wake-ups cannot happen: a request
//! joins the queue and then looks for a free slot again, a request that frees a slot then
//! looks for waiters, both in `SeqCst` order, so at least one of them sees the other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use super::slots::{Lease, Slots};
use super::Chooser;

const ORDER: Ordering = Ordering::SeqCst;

/// Where a gauge of waiting requests lives (the model's `modelgate_queued_requests`).
pub trait QueueGauge: Send + Sync {
    fn queued_changed(&self, delta: i64);
}

/// Delivers a slot granted to a waiting request to the worker it waits on.
pub trait Handoff: Send + Sync {
    /// Err gives the grant back: that worker is gone.
    fn grant(&self, grant: Grant) -> Result<(), Grant>;
}

/// A waiting request: the worker it waits on, its connection there (slab key and
/// generation), and its place in the model's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub worker: usize,
    pub key: usize,
    pub generation: u64,
    pub seq: u64,
}

/// A slot taken for the oldest waiter, on its way to the waiter's worker.
#[derive(Debug)]
pub struct Grant {
    pub ticket: Ticket,
    pub lease: Lease,
}

#[derive(Debug)]
pub(super) struct WaitQueue {
    /// Tickets in the deque, readable without the lock.
    waiting: AtomicUsize,
    size: AtomicUsize,
    next_seq: AtomicU64,
    tickets: Mutex<VecDeque<Ticket>>,
    gauge: Option<Arc<dyn QueueGauge>>,
    handoff: Arc<OnceLock<Arc<dyn Handoff>>>,
}

impl std::fmt::Debug for dyn QueueGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueGauge")
    }
}

impl std::fmt::Debug for dyn Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handoff")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WaitQueue {
    pub(super) fn new(
        size: usize,
        handoff: Arc<OnceLock<Arc<dyn Handoff>>>,
        gauge: Option<Arc<dyn QueueGauge>>,
    ) -> WaitQueue {
        WaitQueue {
            waiting: AtomicUsize::new(0),
            size: AtomicUsize::new(size),
            next_seq: AtomicU64::new(0),
            tickets: Mutex::new(VecDeque::new()),
            gauge,
            handoff,
        }
    }

    pub(super) fn set_size(&self, size: usize) {
        self.size.store(size, ORDER);
    }

    pub(super) fn has_waiters(&self) -> bool {
        self.waiting.load(ORDER) > 0
    }

    fn moved(&self, tickets: &VecDeque<Ticket>, delta: i64) {
        self.waiting.store(tickets.len(), ORDER);
        if let Some(g) = &self.gauge {
            g.queued_changed(delta);
        }
    }
}

/// A request's place in its model's queue: leaving the queue (timeout, client gone, close)
/// is dropping it.
#[derive(Debug)]
pub struct Waiting {
    /// None once served: the ticket already left the queue with its grant.
    slots: Option<Arc<Slots>>,
    seq: u64,
}

impl Waiting {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The grant for this place arrived: nothing to take out of the queue any more.
    pub fn served(mut self) {
        self.slots = None;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            let queue = &slots.queue;
            let mut tickets = lock(&queue.tickets);
            let before = tickets.len();
            tickets.retain(|t| t.seq != self.seq);
            if tickets.len() < before {
                queue.moved(&tickets, -1);
            }
        }
    }
}

impl Slots {
    /// The model has waiting requests: a newcomer queues behind them (it never overtakes).
    pub fn has_waiters(&self) -> bool {
        self.queue.has_waiters()
    }

    /// Requests in this model's queue, across every worker.
    pub fn waiting(&self) -> usize {
        self.queue.waiting.load(ORDER)
    }

    /// The most requests the queue holds (0: no queue).
    pub fn queue_size(&self) -> usize {
        self.queue.size.load(ORDER)
    }

    /// Joins the queue (None when it is full), then looks for a free slot once more, so a
    /// slot freed meanwhile is not missed. The grant may go out before this returns: it is
    /// matched by `seq`.
    pub fn enqueue(
        self: &Arc<Self>,
        worker: usize,
        key: usize,
        generation: u64,
        now: Instant,
    ) -> Option<Waiting> {
        let seq = self.queue.next_seq.fetch_add(1, ORDER);
        {
            let mut tickets = lock(&self.queue.tickets);
            if tickets.len() >= self.queue_size() {
                return None;
            }
            tickets.push_back(Ticket {
                worker,
                key,
                generation,
                seq,
            });
            self.queue.moved(&tickets, 1);
        }
        let waiting = Waiting {
            slots: Some(Arc::clone(self)),
            seq,
        };
        self.dispatch(now);
        Some(waiting)
    }

    /// Grants free slots to the oldest waiters, each through its worker's [`Handoff`]. Any
    /// thread may call it; each worker does after every event batch (a replica whose
    /// ejection ended frees no slot, yet may take a waiter).
    pub fn dispatch(self: &Arc<Self>, now: Instant) {
        let now = self.tick(now);
        self.dispatch_at(now);
    }

    pub(super) fn dispatch_at(self: &Arc<Self>, now: u64) {
        let Some(handoff) = self.queue.handoff.get() else {
            return;
        };
        loop {
            // A slot taken for a waiter and not granted yet.
            let mut held: Option<usize> = None;
            while self.queue.has_waiters() {
                let replica = match held.take() {
                    Some(replica) => replica,
                    None => {
                        let seed = self.queue.next_seq.load(ORDER) ^ now;
                        // A waiter waits for its tier: no spill to the next one.
                        match Chooser::transient(seed).reserve(self, now, 0, false) {
                            Ok(replica) => replica,
                            Err(_) => break,
                        }
                    }
                };
                let ticket = {
                    let mut tickets = lock(&self.queue.tickets);
                    let first = tickets.pop_front();
                    if first.is_some() {
                        self.queue.moved(&tickets, -1);
                    }
                    first
                };
                let Some(ticket) = ticket else {
                    held = Some(replica);
                    break;
                };
                let grant = Grant {
                    ticket,
                    lease: Lease::new(self, replica),
                };
                if let Err(back) = handoff.grant(grant) {
                    // That worker is gone (and its waiters with it): the next ticket gets it.
                    held = Some(back.lease.into_slot());
                }
            }
            let Some(replica) = held else {
                return;
            };
            self.end_quietly(replica);
            // A ticket that joined while this one looked, and found the slot still taken, is
            // served by looking once more.
            if !self.queue.has_waiters() {
                return;
            }
        }
    }
}
