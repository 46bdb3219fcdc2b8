//! The replica wait queue on the worker side: a connection whose model has every replica at
//! its limit waits in that model's FIFO, and freed slots go to the oldest waiter first.

use std::time::Instant;

use super::Worker;

impl Worker {
    /// Puts a connection whose replicas are all full in its model's FIFO; a full queue is
    /// 503 at once. Entries of connections that left or timed out are dropped first.
    pub(super) fn enqueue(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let generation = conn.generation;
        let Some(route) = conn.queued_route().cloned() else {
            return;
        };
        let queued = match self.env.balancers.get(&route) {
            Some(balancer) => {
                let conns = &self.conns;
                let mut b = match balancer.try_borrow_mut() {
                    Ok(b) => b,
                    Err(_) => return,
                };
                b.retain_waiters(|k, g| {
                    conns
                        .get(k)
                        .is_some_and(|c| c.generation == g && c.queued_route().is_some())
                });
                b.enqueue(key, generation)
            }
            None => false,
        };
        if queued {
            self.arm_timer(key);
            return;
        }
        if let Some(conn) = self.conns.get_mut(key) {
            let mut ctx = self.env.ctx(now);
            let want = conn.queue_refused(&mut ctx);
            self.after_drive(key, want, now);
        }
    }

    /// Hands freed replica slots to waiting requests, oldest first, per model.
    pub(super) fn dispatch_waiters(&mut self, now: Instant) {
        let waiting: Vec<_> = self
            .env
            .balancers
            .iter()
            .filter(|(_, b)| b.try_borrow().is_ok_and(|b| b.has_waiters()))
            .map(|(_, b)| std::rc::Rc::clone(b))
            .collect();
        for balancer in waiting {
            loop {
                let first = balancer.try_borrow().ok().and_then(|b| b.first_waiter());
                let Some((key, generation)) = first else {
                    break;
                };
                let Some(conn) = self
                    .conns
                    .get_mut(key)
                    .filter(|c| c.generation == generation && c.queued_route().is_some())
                else {
                    if let Ok(mut b) = balancer.try_borrow_mut() {
                        b.pop_waiter();
                    }
                    continue;
                };
                let mut ctx = self.env.ctx(now);
                let Some(want) = conn.try_dequeue(&mut ctx) else {
                    break;
                };
                if let Ok(mut b) = balancer.try_borrow_mut() {
                    b.pop_waiter();
                }
                if !self.after_drive(key, want, now) {
                    self.drive(key, now);
                }
            }
        }
    }
}
