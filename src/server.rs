//! Process level: listeners, worker threads, and the startup line. Name resolution for
//! upstreams happens here, at startup, never on a worker.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;

use mio::Poll;

use crate::buf::Budget;
use crate::config::{Config, Listen};
use crate::net::{self, Listener};
use crate::router::Routes;
use crate::worker::{self, Control, Shared, Worker};

/// Resolves an upstream host at startup; failures are a warning (the backend may come later).
fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            eprintln!("modelgate: warning: cannot resolve upstream host {host}: {e}");
            Vec::new()
        }
    }
}

fn bind(listen: &Listen) -> Result<Listener, String> {
    match listen {
        Listen::Tcp(addr) => {
            net::bind_tcp(*addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
        }
        Listen::Unix(path) => net::bind_unix(path)
            .map_err(|e| format!("cannot listen on unix:{}: {e}", path.display())),
    }
}

/// Binds, starts the workers, and serves until they stop.
pub fn run(config: Config) -> Result<(), String> {
    net::raise_fd_limit();
    let routes = Arc::new(Routes::build(&config, &resolve));
    let listeners: Vec<Listener> = config.listen.iter().map(bind).collect::<Result<_, _>>()?;
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let shared = Shared {
        in_flight: Arc::new(AtomicU64::new(0)),
        budget: Budget::new(usize::try_from(config.max_buffer_bytes).unwrap_or(usize::MAX)),
    };
    let per_worker = (config.max_connections / workers).max(1);
    let mut handles = Vec::with_capacity(workers);
    let mut controls = Vec::with_capacity(workers);
    for id in 0..workers {
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let waker = worker::waker(&poll).map_err(|e| format!("cannot create waker: {e}"))?;
        let mine = listeners
            .iter()
            .map(Listener::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot share listener: {e}"))?;
        let (tx, rx) = mpsc::channel::<Control>();
        controls.push((tx, waker));
        let routes = Arc::clone(&routes);
        let shared = Shared {
            in_flight: Arc::clone(&shared.in_flight),
            budget: Arc::clone(&shared.budget),
        };
        // The worker is built on its own thread: what it owns (pool, slabs) is not `Send`.
        let spawned = std::thread::Builder::new()
            .name(format!("modelgate-{id}"))
            .spawn(
                move || match Worker::new(id, poll, mine, rx, routes, &shared, per_worker) {
                    Ok(worker) => worker.run(),
                    Err(e) => eprintln!("modelgate: cannot start worker {id}: {e}"),
                },
            )
            .map_err(|e| format!("cannot spawn worker: {e}"))?;
        handles.push(spawned);
    }
    let listed = routes.listed.len();
    for listener in &listeners {
        eprintln!(
            "modelgate: listening on {}, routing {} models ({} listed)",
            listener.describe(),
            routes.models.len(),
            listed
        );
    }
    if config.auth_tokens.is_empty() && config.listen.iter().any(|l| !is_loopback(l)) {
        eprintln!(
            "modelgate: warning: no authTokens and listening beyond loopback: anyone can call"
        );
    }
    drop(listeners);
    for handle in handles {
        let _ = handle.join();
    }
    drop(controls);
    Ok(())
}

fn is_loopback(listen: &Listen) -> bool {
    match listen {
        Listen::Tcp(addr) => addr.ip().is_loopback(),
        Listen::Unix(_) => true,
    }
}
