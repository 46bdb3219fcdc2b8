//! The messages between threads: what the server, resolver and health threads tell the
//! workers ([`Control`], through a channel and a `mio::Waker`), and what workers, signals and
//! the discovery thread ask of the server ([`ToServer`]). They belong to no one thread, so
//! every thread imports them from here and none imports another.

use std::cell::Cell;
use std::sync::mpsc::{SendError, Sender};
use std::sync::Arc;
use std::time::Instant;

use mio::Waker;

use crate::balance::{Grant, Handoff};
use crate::router::{Route, Routes};

/// TLS server configs per listener, in listener order (None: plain HTTP).
pub type ListenerTls = Vec<Option<Arc<rustls::ServerConfig>>>;

/// Messages from the server thread.
pub enum Control {
    /// A new routing table (reload): new requests use it, in-flight ones keep theirs.
    Routes(Arc<Routes>),
    /// Re-read listener certificates (reload): new connections use them.
    ListenerTls(ListenerTls),
    /// The answer to an `/admin/reload` a connection of this worker asked for.
    ReloadDone {
        conn: usize,
        generation: u64,
        result: Result<usize, Vec<String>>,
    },
    /// Fresh addresses for an upstream name (`host:port`) from the resolver thread.
    Resolved {
        name: Arc<str>,
        addrs: Arc<[std::net::SocketAddr]>,
    },
    /// The health thread's verdict on replica `replica` of `route`.
    ReplicaHealth {
        route: Arc<Route>,
        replica: usize,
        up: bool,
    },
    /// A replica slot freed on some worker, taken for the oldest waiter of its model, which
    /// waits on this one (`balance::queue`).
    Granted(Grant),
    /// Stop accepting, close idle connections, finish the rest until the deadline.
    Shutdown { deadline: Instant },
}

/// A connection asks the server thread for a reload (`/admin/reload`).
pub struct ReloadRequest {
    pub worker: usize,
    pub conn: usize,
    pub generation: u64,
}

/// What the server thread is asked to do (by signals or by workers).
pub enum ToServer {
    /// Reload the config: SIGHUP (None) or `/admin/reload` (Some: answer that connection).
    Reload(Option<ReloadRequest>),
    /// SIGTERM/SIGINT: drain and exit.
    Stop,
    /// The discovery thread's latest round, when what the backends serve changed.
    Discovered(crate::discovery::Found),
}

/// Where worker-bound messages go: each worker's control channel and waker.
pub type Subscribers = Vec<(Sender<Control>, Arc<Waker>)>;

/// Sends `make()` to every worker and wakes it (a worker that exited is skipped).
pub fn broadcast(workers: &Subscribers, make: impl Fn() -> Control) {
    for (tx, waker) in workers {
        if tx.send(make()).is_ok() {
            let _ = waker.wake();
        }
    }
}

thread_local! {
    /// The worker this thread runs, if it runs one.
    static CURRENT_WORKER: Cell<Option<usize>> = const { Cell::new(None) };
    /// This worker sent itself a grant since it last read its channel.
    static OWN_MAIL: Cell<bool> = const { Cell::new(false) };
}

/// True once after this worker granted a slot to one of its own waiters: its channel has
/// mail that rang no waker.
pub fn take_own_mail() -> bool {
    OWN_MAIL.with(|m| m.replace(false))
}

/// Marks this thread as worker `id` (its own grants then skip the waker).
pub fn on_worker(id: usize) {
    CURRENT_WORKER.with(|c| c.set(Some(id)));
}

/// The workers' channels as the replica queues' [`Handoff`]: a grant goes to its waiter's
/// worker and wakes it. A worker granting to itself (a slot freed by one of its own
/// requests) skips the waker and notes it ([`take_own_mail`]): it reads its channel after
/// the event batch.
pub struct Mailboxes(pub Subscribers);

impl Handoff for Mailboxes {
    fn grant(&self, grant: Grant) -> Result<(), Grant> {
        let worker = grant.ticket.worker;
        let Some((tx, waker)) = self.0.get(worker) else {
            return Err(grant);
        };
        match tx.send(Control::Granted(grant)) {
            Ok(()) => {
                if CURRENT_WORKER.with(Cell::get) != Some(worker) {
                    let _ = waker.wake();
                } else {
                    OWN_MAIL.with(|m| m.set(true));
                }
                Ok(())
            }
            Err(SendError(Control::Granted(grant))) => Err(grant),
            Err(SendError(_)) => Ok(()),
        }
    }
}
