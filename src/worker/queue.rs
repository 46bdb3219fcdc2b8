//! The replica wait queue on the worker side: a connection whose model has every replica at
//! its limit takes a ticket in that model's process-wide FIFO, and slots freed on any worker
//! reach the oldest ticket as a `Control::Granted` (see `balance::queue`).

use std::time::Instant;

use crate::balance::Grant;

use super::{conn_of, Worker};

impl Worker {
    /// Puts a connection whose replicas are all full in its model's queue; a full queue is
    /// 503 at once.
    pub(super) fn enqueue(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let generation = conn.generation;
        let place = conn
            .queued_route()
            .and_then(|route| route.slots.clone())
            .and_then(|slots| slots.enqueue(self.id, key, generation, now));
        if let Some(place) = place {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.wait_in_queue(place);
            }
            self.arm_timer(key);
            return;
        }
        if let Some(conn) = self.conns.get_mut(key) {
            let mut ctx = self.env.ctx(now);
            let want = conn.queue_refused(&mut ctx);
            self.after_drive(key, want, now);
        }
    }

    /// After each event batch: offers free slots of this table's models to their oldest
    /// waiters (a replica whose ejection ended frees no slot, yet may take one), then takes
    /// the grants meant for this worker's own waiters (sent to its own channel without
    /// ringing its waker).
    pub(super) fn dispatch_waiters(&mut self, now: Instant) {
        for slots in self.env.balancers.queued() {
            if slots.has_waiters() {
                slots.dispatch(now);
            }
        }
        // Grants to this worker's own waiters rang no waker; other mail did (and was read
        // when its event came). No mail, no channel read: the common turn costs nothing.
        if crate::control::take_own_mail() {
            self.handle_control(now);
        }
    }

    /// A slot granted to a request waiting on this worker. A grant that finds its request
    /// gone is dropped, which hands the slot to the next waiter.
    pub(super) fn take_grant(&mut self, grant: Grant, now: Instant) {
        let key = grant.ticket.key;
        let Some(conn) = conn_of(&mut self.conns, key, grant.ticket.generation) else {
            return;
        };
        let mut ctx = self.env.ctx(now);
        if let Ok(want) = conn.granted(grant, &mut ctx) {
            if !self.after_drive(key, want, now) {
                self.drive(key, now);
            }
        }
    }
}
