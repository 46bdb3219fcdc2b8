//! The replica side of an exchange (issue 9): which backend of the route it uses, the
//! per-worker balancers it leases from, and what a failover needs to rebuild the request
//! head for another replica.
//!
//! A plain `url` model without `maxConcurrentRequests` has no balancer at all: its requests
//! take backend 0 with no lookup, exactly as before replicas existed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{self, Balancer, Lease, Pick};
use crate::h1::RequestHead;
use crate::metrics::ReplicaStats;
use crate::router::{Backend, Route, Routes};

use super::outbox::Chunk;

/// A worker's balancers, one per route that needs one, keyed by the route's address (the
/// `Arc` is kept so the address cannot be reused while the entry exists).
pub struct Balancers {
    map: HashMap<usize, (Arc<Route>, balance::Shared)>,
    seed: u64,
}

impl Balancers {
    pub fn new(seed: u64) -> Balancers {
        Balancers {
            map: HashMap::new(),
            seed: seed | 1,
        }
    }

    fn make(&mut self, route: &Route) -> balance::Shared {
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let b = Balancer::new(&route.limits(), &route.balance, self.seed)
            .with_queue_gauge(Arc::clone(&route.stats));
        std::rc::Rc::new(std::cell::RefCell::new(b))
    }

    /// The balancer of `route` (None when it needs none), created on first use.
    pub fn get(&mut self, route: &Arc<Route>) -> Option<balance::Shared> {
        if !route.needs_balancer() {
            return None;
        }
        let key = Arc::as_ptr(route) as usize;
        if let Some((_, b)) = self.map.get(&key) {
            return Some(std::rc::Rc::clone(b));
        }
        // A request still on the previous table shares the balancer of its model when the
        // replicas kept their shape, so limits hold across a reload.
        let limits = route.limits();
        let same = self
            .map
            .values()
            .find(|(r, b)| {
                r.name == route.name && b.try_borrow().is_ok_and(|b| b.same_shape(&limits))
            })
            .map(|(_, b)| std::rc::Rc::clone(b));
        let b = match same {
            Some(b) => b,
            None => self.make(route),
        };
        self.map
            .insert(key, (Arc::clone(route), std::rc::Rc::clone(&b)));
        Some(b)
    }

    /// A new routing table: models whose replicas kept their shape keep their state
    /// (outstanding counts, ejections); the others start afresh. Balancers of the old table
    /// live on in the leases of requests still using them; one with waiters stays listed
    /// (under its old route) so the worker still hands its freed slots to them.
    pub fn reload(&mut self, routes: &Routes) {
        let previous: Vec<(usize, Arc<Route>, balance::Shared)> = self
            .map
            .drain()
            .map(|(key, (route, b))| (key, route, b))
            .collect();
        let old: HashMap<String, balance::Shared> = previous
            .iter()
            .map(|(_, route, b)| (route.name.clone(), std::rc::Rc::clone(b)))
            .collect();
        for route in routes.models.values() {
            if route.balance.health_check.is_none() {
                // A reload that drops `healthCheck` must not leave replicas marked down.
                for backend in &route.backends {
                    backend.stats.set_down(false);
                }
            }
            if !route.needs_balancer() {
                continue;
            }
            let kept = old
                .get(&route.name)
                .filter(|b| b.try_borrow().is_ok_and(|b| b.same_shape(&route.limits())))
                .cloned();
            let b = match kept {
                Some(b) => b,
                None => self.make(route),
            };
            if route.balance.health_check.is_none() {
                if let Ok(mut b) = b.try_borrow_mut() {
                    b.clear_down();
                }
            }
            self.map
                .insert(Arc::as_ptr(route) as usize, (Arc::clone(route), b));
        }
        for (key, route, b) in previous {
            let kept = self.map.values().any(|(_, n)| std::rc::Rc::ptr_eq(n, &b));
            if !kept && b.try_borrow().is_ok_and(|b| b.has_waiters()) {
                self.map.entry(key).or_insert((route, b));
            }
        }
    }

    /// Every route with a balancer.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<Route>, &balance::Shared)> {
        self.map.values().map(|(r, b)| (r, b))
    }

    /// Healthy replicas of the model `name` as this worker sees them, with the total.
    pub fn healthy(&self, name: &str, now: Instant) -> Option<(usize, usize)> {
        self.map
            .values()
            .find(|(r, _)| r.name == name)
            .and_then(|(r, b)| {
                let b = b.try_borrow().ok()?;
                Some((b.healthy_count(now), r.backends.len()))
            })
    }
}

/// The replica an exchange holds: outstanding (in this worker's balancer and the replica's
/// gauge) until dropped.
pub struct Hold {
    pub index: usize,
    lease: Option<Lease>,
    stats: Option<Arc<ReplicaStats>>,
}

impl Hold {
    /// Backend 0 without a balancer (plain models).
    pub fn only() -> Hold {
        Hold {
            index: 0,
            lease: None,
            stats: None,
        }
    }

    /// Leases a replica of `route` not in `tried`.
    pub fn take(
        route: &Route,
        balancer: &balance::Shared,
        now: Instant,
        tried: u64,
    ) -> Result<Hold, Pick> {
        let lease = Lease::take(balancer, now, tried)?;
        let index = lease.replica();
        let stats = route.backends.get(index).map(|b| Arc::clone(&b.stats));
        if let Some(s) = &stats {
            s.started();
        }
        Ok(Hold {
            index,
            lease: Some(lease),
            stats,
        })
    }

    /// The replica failed this request (connect, reset before head, ejecting status);
    /// true when that ejected it.
    pub fn failed(&self, now: Instant) -> bool {
        let Some(lease) = &self.lease else {
            return false;
        };
        if let Some(s) = &self.stats {
            s.failed();
        }
        let ejected = lease.failed(now);
        if let (true, Some(s)) = (ejected, &self.stats) {
            s.ejected(lease.ejected_until().unwrap_or(now));
        }
        ejected
    }

    /// The replica answered.
    pub fn succeeded(&self) {
        let Some(lease) = &self.lease else { return };
        if lease.succeeded() {
            if let Some(s) = &self.stats {
                s.readmitted();
            }
        }
    }

    pub fn failed_over(&self) {
        if let Some(s) = &self.stats {
            s.failed_over();
        }
    }

    pub fn backend<'r>(&self, route: &'r Route) -> Option<&'r Backend> {
        route.backends.get(self.index)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(s) = &self.stats {
            s.ended();
        }
    }
}

/// What rebuilding the request head for another replica needs: the client's raw head, its
/// parse, and the target to forward (the `/route/` rest, or the head's own target).
pub struct Resend {
    pub raw: Chunk,
    pub head: RequestHead,
    pub target: Option<Vec<u8>>,
    pub strip_authorization: bool,
}
