//! Process level: listeners, worker threads, and the startup line. Name resolution for
//! upstreams happens here, at startup, never on a worker.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use mio::Poll;

use crate::buf::Budget;
use crate::config::{self, Config, Listen};
use crate::net::{self, systemd, Listener};
use crate::router::Routes;
use crate::secrets::ProcessEnv;
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
        Listen::TcpTls { addr, .. } => Err(format!(
            "cannot listen on https://{addr}: TLS listeners are not supported by this build yet"
        )),
    }
}

/// Binds, starts the workers, and serves until a SIGTERM/SIGINT drain completes.
/// `config_path` is re-read on SIGHUP.
pub fn run(config_path: &Path, config: Config) -> Result<(), String> {
    net::raise_fd_limit();
    // Workers inherit this mask: only this thread takes the signals, in `sigwait`.
    let signals = signals::block()?;
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
    if config.auth_tokens.is_empty() && config.listen.iter().any(|l| !l.is_local()) {
        eprintln!(
            "modelgate: warning: no authTokens and listening beyond loopback: anyone can call"
        );
    }
    drop(listeners);
    systemd::notify("READY=1");
    let mut shutdown_timeout = config.timeouts.shutdown;
    while let signals::Signal::Reload = signals::wait(&signals) {
        systemd::notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            systemd::monotonic_usec()
        ));
        match reload(config_path) {
            Ok(next) => {
                shutdown_timeout = next.timeouts.shutdown;
                let routes = Arc::new(Routes::build(&next, &resolve));
                eprintln!(
                    "modelgate: reloaded {}, routing {} models ({} listed)",
                    config_path.display(),
                    routes.models.len(),
                    routes.listed.len()
                );
                for (tx, waker) in &controls {
                    let _ = tx.send(Control::Routes(Arc::clone(&routes)));
                    let _ = waker.wake();
                }
            }
            Err(problems) => {
                for problem in problems {
                    eprintln!("modelgate: reload refused: {problem}");
                }
                eprintln!("modelgate: still serving the previous config");
            }
        }
        systemd::notify("READY=1");
    }
    systemd::notify("STOPPING=1");
    eprintln!("modelgate: shutting down: draining in-flight requests");
    let deadline = Instant::now() + shutdown_timeout;
    for (tx, waker) in &controls {
        let _ = tx.send(Control::Shutdown { deadline });
        let _ = waker.wake();
    }
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

/// Parses, validates and expands the config again (off the workers).
fn reload(path: &Path) -> Result<Config, Vec<config::Problem>> {
    config::load(path, Some(&ProcessEnv))
}

/// SIGHUP/SIGTERM/SIGINT taken synchronously by the server thread.
mod signals {
    pub enum Signal {
        Reload,
        Stop,
    }

    pub fn block() -> Result<libc::sigset_t, String> {
        // SAFETY: plain libc calls on a sigset we own; pthread_sigmask affects this thread and
        // the threads it spawns afterwards.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err("cannot block signals".into());
            }
            // A broken client pipe must be an EPIPE error, not a dead process.
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            Ok(set)
        }
    }

    pub fn wait(set: &libc::sigset_t) -> Signal {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait on a valid set with an out-parameter on our stack.
            let rc = unsafe { libc::sigwait(set, &mut sig) };
            if rc != 0 {
                continue;
            }
            match sig {
                libc::SIGHUP => return Signal::Reload,
                libc::SIGTERM | libc::SIGINT => return Signal::Stop,
                _ => continue,
            }
        }
    }
}
