//! The replica side of an exchange (issues 9 and 17): which backend of the route it uses,
//! the worker's choosers over the model's process-wide slots, and what a failover needs to
//! rebuild the request head for another replica.
//!
//! A plain `url` model without `maxConcurrentRequests` has no slots at all: its requests
//! take backend 0 with no lookup, exactly as before replicas existed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{Chooser, Lease, Pick, Slots};
use crate::h1::RequestHead;
use crate::metrics::ReplicaStats;
use crate::profile::Profile;
use crate::router::{Backend, Route, Routes};

use super::outbox::Chunk;

/// A worker's choosers, one per route with slots, keyed by the route's address (the `Arc`
/// is kept so the address cannot be reused while the entry exists). What they choose from
/// is the route's process-wide [`Slots`]; a chooser only holds this worker's random draws
/// and round-robin scores.
pub struct Balancers {
    map: HashMap<usize, (Arc<Route>, Chooser)>,
    seed: u64,
    /// The current table's models with a wait queue, offered freed slots after each batch.
    queued: Vec<Arc<Slots>>,
}

impl Balancers {
    pub fn new(seed: u64, routes: &Routes) -> Balancers {
        let mut balancers = Balancers {
            map: HashMap::new(),
            seed: seed | 1,
            queued: Vec::new(),
        };
        balancers.reload(routes);
        balancers
    }

    /// The chooser and slots of `route` (None when it has no slots), made on first use.
    pub fn get<'a>(
        &'a mut self,
        route: &'a Arc<Route>,
    ) -> Option<(&'a mut Chooser, &'a Arc<Slots>)> {
        let slots = route.slots.as_ref()?;
        let key = Arc::as_ptr(route) as usize;
        let seed = &mut self.seed;
        let (_, chooser) = self.map.entry(key).or_insert_with(|| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (Arc::clone(route), Chooser::new(slots, *seed))
        });
        Some((chooser, slots))
    }

    /// A new routing table: the choosers of the old one go (their state is only random
    /// draws and round-robin scores; outstanding counts, ejections and waiters live in the
    /// slots, which the table keeps while a model's replicas keep their shape).
    pub fn reload(&mut self, routes: &Routes) {
        self.map.clear();
        self.queued = routes
            .models
            .values()
            .filter_map(|r| r.slots.clone())
            .filter(|s| s.queue_size() > 0)
            .collect();
    }

    /// The current table's models that have a wait queue.
    pub fn queued(&self) -> &[Arc<Slots>] {
        &self.queued
    }
}

/// The replica an exchange holds: outstanding (in the model's process-wide slots and the
/// replica's gauge) until dropped.
pub struct Hold {
    pub index: usize,
    lease: Option<Lease>,
    stats: Option<Arc<ReplicaStats>>,
}

impl Hold {
    /// Backend 0 without slots (plain models).
    pub fn only() -> Hold {
        Hold {
            index: 0,
            lease: None,
            stats: None,
        }
    }

    /// Takes a slot on a replica of `route` not in `tried` (`spill`: see `Chooser::take`).
    pub fn take(
        route: &Route,
        (chooser, slots): (&mut Chooser, &Arc<Slots>),
        now: Instant,
        tried: u64,
        spill: bool,
    ) -> Result<Hold, Pick> {
        chooser
            .take(slots, now, tried, spill)
            .map(|lease| Hold::leased(route, lease))
    }

    /// Holds a slot already taken (for a waiter, by whichever worker freed it).
    pub fn leased(route: &Route, lease: Lease) -> Hold {
        let index = lease.replica();
        let stats = route.backends.get(index).map(|b| Arc::clone(&b.stats));
        if let Some(s) = &stats {
            s.started();
            if lease
                .slots()
                .is_some_and(|slots| slots.priority(index) > slots.first_tier())
            {
                s.fell_back();
            }
        }
        Hold {
            index,
            lease: Some(lease),
            stats,
        }
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

/// What rebuilding the request for another replica needs: the client's raw head, its parse
/// (with the client's framing), the target to forward (the `/route/` rest, or the head's own
/// target), and which version of the body the outbox holds.
pub struct Resend {
    pub raw: Chunk,
    pub head: RequestHead,
    pub target: Option<Vec<u8>>,
    pub strip_authorization: bool,
    /// None: the outbox holds the client's own body bytes. Some: a replica's rewrite of them
    /// (and the client's bytes are parked here for a replica that needs them again).
    pub fitted: Option<Fitted>,
}

/// The body as one replica's profile rewrote it, with the client's bytes kept aside.
pub struct Fitted {
    pub profile: Arc<Profile>,
    /// The client's body chunks, as received.
    pub parked: Vec<Chunk>,
    /// The rewritten body's length (its `Content-Length`).
    pub len: u64,
}
