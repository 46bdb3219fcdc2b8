//! The resolver thread: upstream host names are looked up here and only here, so a slow DNS
//! server never stalls a worker. Answers reach the workers as `Control::Resolved` through
//! their channels and wakers. Names are refreshed periodically, sooner while they fail to
//! resolve, and on request after a connect failure.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::{self, Control, Subscribers};

/// How often resolved names are looked up again.
const REFRESH: Duration = Duration::from_secs(30);
/// How often a name that did not resolve is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// The fewest seconds between two lookups of one name asked for by workers.
const MIN_GAP: Duration = Duration::from_secs(1);

pub enum Request {
    /// The names to keep resolved (`host:port`), after a reload.
    Names(Vec<Arc<str>>),
    /// A worker failed to connect to this name: look it up again soon.
    Refresh(Arc<str>),
}

struct Entry {
    addrs: Option<Vec<SocketAddr>>,
    next: Instant,
    last: Option<Instant>,
}

/// The channel workers and the server use to reach the resolver thread.
pub fn channel() -> (Sender<Request>, Receiver<Request>) {
    mpsc::channel()
}

/// Starts the thread. `initial` holds the answers the routing table was built with, so the
/// first refresh only broadcasts names whose addresses changed.
pub fn spawn(
    rx: Receiver<Request>,
    names: Vec<Arc<str>>,
    initial: HashMap<Arc<str>, Vec<SocketAddr>>,
    workers: Subscribers,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("modelgate-resolver".into())
        .spawn(move || run(rx, names, initial, workers))?;
    Ok(())
}

/// Looks up `host:port` (blocking: this runs on the resolver thread or at startup only).
pub fn lookup(name: &str) -> Option<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = name.to_socket_addrs().ok()?.collect();
    (!addrs.is_empty()).then_some(addrs)
}

fn run(
    rx: Receiver<Request>,
    names: Vec<Arc<str>>,
    initial: HashMap<Arc<str>, Vec<SocketAddr>>,
    workers: Subscribers,
) {
    let now = Instant::now();
    let mut entries: HashMap<Arc<str>, Entry> = HashMap::new();
    let track = |entries: &mut HashMap<Arc<str>, Entry>, names: Vec<Arc<str>>, now: Instant| {
        entries.retain(|k, _| names.contains(k));
        for name in names {
            entries.entry(name.clone()).or_insert_with(|| {
                let addrs = initial.get(&name).cloned().filter(|a| !a.is_empty());
                let next = now + if addrs.is_some() { REFRESH } else { RETRY };
                Entry {
                    addrs,
                    next,
                    last: None,
                }
            });
        }
    };
    track(&mut entries, names, now);
    loop {
        let now = Instant::now();
        let wake = entries
            .values()
            .map(|e| e.next)
            .min()
            .unwrap_or(now + REFRESH);
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Request::Names(names)) => track(&mut entries, names, Instant::now()),
            Ok(Request::Refresh(name)) => {
                if let Some(entry) = entries.get_mut(&name) {
                    let soonest = entry.last.map_or(now, |t| t + MIN_GAP);
                    entry.next = entry.next.min(soonest.max(now));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        for (name, entry) in entries.iter_mut().filter(|(_, e)| e.next <= now) {
            let found = lookup(name);
            entry.last = Some(now);
            entry.next = now + if found.is_some() { REFRESH } else { RETRY };
            match found {
                Some(addrs) if entry.addrs.as_ref() != Some(&addrs) => {
                    eprintln!("modelgate: upstream {name} resolves to {addrs:?}");
                    entry.addrs = Some(addrs.clone());
                    let shared: Arc<[SocketAddr]> = addrs.into();
                    control::broadcast(&workers, || Control::Resolved {
                        name: name.clone(),
                        addrs: Arc::clone(&shared),
                    });
                }
                Some(_) => {}
                None if entry.addrs.is_none() => {
                    eprintln!("modelgate: warning: upstream {name} does not resolve (retrying)");
                }
                // A name that stops resolving keeps its last answer.
                None => {}
            }
        }
    }
}
