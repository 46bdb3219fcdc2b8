//! Process level: listeners, worker threads, the startup line, signals and reload. Config
//! parsing, secret expansion, TLS setup and name resolution happen here, never on a worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use mio::{Poll, Waker};

use crate::buf::Budget;
use crate::config::{self, Config, Listen};
use crate::control::{Control, ListenerTls, Mailboxes, ToServer};
use crate::discovery::{self, Found};
use crate::metrics::Metrics;
use crate::net::{self, systemd, tls, Listener};
use crate::prober;
use crate::router::Routes;
use crate::secrets::ProcessEnv;
use crate::worker::{self, Shared, Worker};
use crate::{health, limitstore, resolver};

/// Resolves an upstream host while a routing table is built (startup and reload, on the
/// server thread); failures are a warning: the resolver thread keeps trying.
fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    resolver::lookup(&format!("{host}:{port}")).unwrap_or_else(|| {
        eprintln!("modelgate: warning: upstream {host}:{port} does not resolve (retrying)");
        Vec::new()
    })
}

/// The startup answers of the routing table, for the resolver thread to start from.
fn resolved_names(routes: &Routes) -> HashMap<Arc<str>, Vec<SocketAddr>> {
    routes
        .models
        .values()
        .flat_map(|r| &r.backends)
        .filter_map(|b| b.resolve_key.clone().map(|k| (k, b.addrs.clone())))
        .collect()
}

/// The routing table for `config`, with TLS client configs for its `https://` upstreams.
fn build_routes(config: &Config, metrics: &Metrics) -> Result<Routes, String> {
    Routes::build(config, &resolve, &mut |ca| tls::client_config(ca), metrics)
}

/// TLS server configs for the listeners, in `listen` order (None for plain ones).
fn listener_tls(config: &Config) -> Result<ListenerTls, String> {
    config
        .listen
        .iter()
        .map(|listen| match listen {
            Listen::TcpTls { addr, cert, key } => tls::server_config(cert, key)
                .map(Some)
                .map_err(|e| format!("listener https://{addr}: {e}")),
            _ => Ok(None),
        })
        .collect()
}

fn bind(listen: &Listen) -> Result<Listener, String> {
    match listen {
        Listen::Tcp(addr) | Listen::TcpTls { addr, .. } => {
            net::bind_tcp(*addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
        }
        Listen::Unix(path) => net::bind_unix(path)
            .map_err(|e| format!("cannot listen on unix:{}: {e}", path.display())),
    }
}

/// Batches of access log lines waiting for the writer (each batch is one worker turn).
const LOG_QUEUE: usize = 1024;

/// The access log writer: workers hand it whole batches of lines, and only this thread
/// ever blocks on stderr.
fn spawn_log_writer() -> Result<mpsc::SyncSender<Vec<u8>>, String> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(LOG_QUEUE);
    std::thread::Builder::new()
        .name("modelgate-log".into())
        .spawn(move || {
            use std::io::Write;
            let stderr = std::io::stderr();
            for batch in rx {
                let _ = stderr.lock().write_all(&batch);
            }
        })
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
    Ok(tx)
}

/// The workers' control channels.
struct Workers {
    controls: Vec<(mpsc::Sender<Control>, Arc<Waker>)>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn send(&self, make: impl Fn() -> Control) {
        for (tx, waker) in &self.controls {
            let _ = tx.send(make());
            let _ = waker.wake();
        }
    }
}

/// Binds, starts the workers, and serves until a SIGTERM/SIGINT drain completes.
/// `config_path` is re-read on SIGHUP; None is the embedded default (no config file), whose
/// reload only probes the `discover` backends again.
pub fn run(config_path: Option<&Path>, config: Config) -> Result<(), String> {
    net::raise_fd_limit();
    // Workers inherit this mask: only this thread takes the signals, in `sigwait`.
    let signals = signals::block()?;
    let metrics = Metrics::new();
    // The first discovery round runs before the table is built: discovered models are
    // routable from the first request.
    let mut found = first_discovery(&config);
    let routes = Arc::new(build_routes(
        &discovery::with_discovered(&config, &found),
        &metrics,
    )?);
    // Shared limits: the first sync runs before modelgate listens (bounded by the store's
    // timeout), so the first requests are already counted in the store when it answers.
    let (limits_tx, limits_rx) = limitstore::channel();
    let mut syncer = limitstore::Syncer::new(
        config.shared_limits.clone(),
        Arc::clone(&routes),
        Arc::clone(metrics.rate_buckets().status()),
    );
    if config.shared_limits.is_some() {
        syncer.tick();
    }
    limitstore::spawn(syncer, limits_rx)
        .map_err(|e| format!("cannot start the shared-limits thread: {e}"))?;
    // Socket activation: serve what systemd passed and bind nothing (SPEC §8). Passed
    // sockets are plain HTTP.
    let (listeners, tls): (Vec<Listener>, ListenerTls) = match systemd::listen_fds() {
        Some(passed) => {
            let passed = passed?;
            let plain = vec![None; passed.len()];
            (passed, plain)
        }
        None => (
            config.listen.iter().map(bind).collect::<Result<_, _>>()?,
            listener_tls(&config)?,
        ),
    };
    let worker_count = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // The descriptor reserve: what is open now (listeners, stdio) plus each worker's epoll,
    // waker and copy of every listener (net::fds).
    net::fds::init(worker_count, 2 + listeners.len());
    let (resolver_tx, resolver_rx) = resolver::channel();
    let (events_tx, events) = mpsc::channel::<ToServer>();
    signals::forward(signals, events_tx.clone())?;
    if let (true, Some(path)) = (config.watch_config, config_path) {
        watch::spawn(path.to_path_buf(), events_tx.clone())?;
    }
    let (prober_tx, prober_rx) = prober::channel();
    prober::spawn(
        prober_rx,
        config.discover.clone(),
        config.discover_interval,
        found.clone(),
        events_tx.clone(),
    )
    .map_err(|e| format!("cannot start the discovery thread: {e}"))?;
    let shared = Shared {
        reload: Some(events_tx),
        in_flight: Arc::new(AtomicU64::new(0)),
        budget: Budget::new(usize::try_from(config.max_buffer_bytes).unwrap_or(usize::MAX)),
        resolver: Some(resolver_tx.clone()),
        metrics: Arc::clone(&metrics),
        log: Some(spawn_log_writer()?),
    };
    metrics.set_budget(Arc::clone(&shared.budget));
    let per_worker = (config.max_connections / worker_count).max(1);
    let mut workers = Workers {
        controls: Vec::with_capacity(worker_count),
        handles: Vec::with_capacity(worker_count),
    };
    // Every worker's channel and waker exist before any worker runs: a model's wait queue
    // may hand a freed slot to a waiter on any worker from the first request on.
    let mut inboxes = Vec::with_capacity(worker_count);
    for _ in 0..worker_count {
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let waker =
            Arc::new(worker::waker(&poll).map_err(|e| format!("cannot create waker: {e}"))?);
        let (tx, rx) = mpsc::channel::<Control>();
        workers.controls.push((tx, waker));
        inboxes.push((poll, rx));
    }
    metrics
        .replica_slots()
        .set_handoff(Arc::new(Mailboxes(workers.controls.clone())));
    for (id, (poll, rx)) in inboxes.into_iter().enumerate() {
        let mine = listeners
            .iter()
            .map(Listener::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot share listener: {e}"))?;
        let routes = Arc::clone(&routes);
        let tls = tls.clone();
        let shared = Shared {
            reload: shared.reload.clone(),
            in_flight: Arc::clone(&shared.in_flight),
            budget: Arc::clone(&shared.budget),
            resolver: shared.resolver.clone(),
            metrics: Arc::clone(&shared.metrics),
            log: shared.log.clone(),
        };
        // The worker is built on its own thread: what it owns (pool, slabs) is not `Send`.
        let spawned = std::thread::Builder::new()
            .name(format!("modelgate-{id}"))
            .spawn(move || {
                match Worker::new(
                    id,
                    poll,
                    mine,
                    tls,
                    rx,
                    routes,
                    &shared,
                    per_worker,
                    config.busy_poll,
                ) {
                    Ok(worker) => worker.run(),
                    Err(e) => eprintln!("modelgate: cannot start worker {id}: {e}"),
                }
            })
            .map_err(|e| format!("cannot spawn worker: {e}"))?;
        workers.handles.push(spawned);
    }
    let (health_tx, health_rx) = health::channel();
    health::spawn(health_rx, Arc::clone(&routes), workers.controls.clone())
        .map_err(|e| format!("cannot start the health checks: {e}"))?;
    resolver::spawn(
        resolver_rx,
        routes.names_to_resolve(),
        resolved_names(&routes),
        workers.controls.clone(),
    )
    .map_err(|e| format!("cannot start the resolver: {e}"))?;
    for (listener, tls) in listeners.iter().zip(&tls) {
        eprintln!(
            "modelgate: listening on {}{}, routing {} models ({} listed)",
            if tls.is_some() { "https://" } else { "" },
            listener.describe(),
            routes.models.len(),
            routes.listed.len()
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
    drop(shared);
    let mut current = config;
    loop {
        let asker = match events.recv() {
            Ok(ToServer::Reload(asker)) => asker,
            Ok(ToServer::Discovered(next)) => {
                let routes = rediscovered(&current, &mut found, next, &metrics);
                if let Some(routes) = routes {
                    let _ = resolver_tx.send(resolver::Request::Names(routes.names_to_resolve()));
                    workers.send(|| Control::Routes(Arc::clone(&routes)));
                    // After the workers: they ignore verdicts on a table they do not have yet.
                    let _ = health_tx.send(Arc::clone(&routes));
                    let _ = limits_tx.send(limitstore::Request::Routes(Arc::clone(&routes)));
                }
                continue;
            }
            Ok(ToServer::Stop) | Err(_) => break,
        };
        systemd::notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            systemd::monotonic_usec()
        ));
        let outcome = match reload(config_path, &current, &found, &metrics) {
            Ok((next, routes, tls)) => {
                shutdown_timeout = next.timeouts.shutdown;
                let _ = prober_tx.send(prober::Request::Backends {
                    list: next.discover.clone(),
                    interval: next.discover_interval,
                });
                let _ = limits_tx.send(limitstore::Request::Config(next.shared_limits.clone()));
                current = next;
                let (total, listed) = (routes.models.len(), routes.listed.len());
                let routes = Arc::new(routes);
                let _ = resolver_tx.send(resolver::Request::Names(routes.names_to_resolve()));
                workers.send(|| Control::Routes(Arc::clone(&routes)));
                let _ = health_tx.send(Arc::clone(&routes));
                let _ = limits_tx.send(limitstore::Request::Routes(Arc::clone(&routes)));
                workers.send(|| Control::ListenerTls(tls.clone()));
                // Said once every worker has been handed the new table.
                eprintln!(
                    "modelgate: reloaded {}, routing {total} models ({listed} listed)",
                    config_path.map_or("the embedded default".into(), |p| p.display().to_string())
                );
                Ok(listed)
            }
            Err(problems) => {
                for problem in &problems {
                    eprintln!("modelgate: reload refused: {problem}");
                }
                eprintln!("modelgate: still serving the previous config");
                Err(problems)
            }
        };
        systemd::notify("READY=1");
        if let Some(req) = asker {
            if let Some((tx, waker)) = workers.controls.get(req.worker) {
                let _ = tx.send(Control::ReloadDone {
                    conn: req.conn,
                    generation: req.generation,
                    result: outcome,
                });
                let _ = waker.wake();
            }
        }
    }
    systemd::notify("STOPPING=1");
    eprintln!("modelgate: shutting down: draining in-flight requests");
    let deadline = Instant::now() + shutdown_timeout;
    workers.send(|| Control::Shutdown { deadline });
    for handle in workers.handles.drain(..) {
        let _ = handle.join();
    }
    Ok(())
}

/// Parses, validates and expands the config again, builds its routes (with the models
/// discovered so far) and re-reads the listeners' certificates: all off the workers. Listen
/// addresses are not re-bound. Without a file (the embedded default) the config stays.
fn reload(
    path: Option<&Path>,
    current: &Config,
    found: &Found,
    metrics: &Metrics,
) -> Result<(Config, Routes, ListenerTls), Vec<String>> {
    let next = match path {
        Some(path) => config::load(path, Some(&ProcessEnv))
            .map_err(|problems| problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())?,
        None => current.clone(),
    };
    // Certificates first: building the routes settles which rate-limit buckets live on, so
    // it must be the last step that can refuse the reload.
    let tls = listener_tls(&next).map_err(|e| vec![e])?;
    let routes =
        build_routes(&discovery::with_discovered(&next, found), metrics).map_err(|e| vec![e])?;
    Ok((next, routes, tls))
}

/// Probes the `discover` backends once, before the workers start, and logs what it probed
/// and found.
fn first_discovery(config: &Config) -> Found {
    if config.discover.is_empty() {
        return Found::default();
    }
    let probed: Vec<String> = config
        .discover
        .iter()
        .map(|d| &d.upstream)
        .map(|up| match discovery::well_known_name(up) {
            Some(name) => format!("{} ({name})", discovery::label(up)),
            None => discovery::label(up),
        })
        .collect();
    eprintln!(
        "modelgate: discovery: probing GET /v1/models every {:?} on {}",
        config.discover_interval,
        probed.join(", ")
    );
    let found = prober::probe_all(&config.discover);
    for line in discovery::describe(config, None, &found) {
        eprintln!("modelgate: discovery: {line}");
    }
    found
}

/// A discovery round arrived: log what changed and, when the served models did, build the
/// next routing table (stats are kept by model name, as on reload).
fn rediscovered(
    config: &Config,
    found: &mut Found,
    next: Found,
    metrics: &Metrics,
) -> Option<Arc<Routes>> {
    for line in discovery::describe(config, Some(found), &next) {
        eprintln!("modelgate: discovery: {line}");
    }
    let changed = next.serving() != found.serving();
    *found = next;
    if !changed {
        return None;
    }
    match build_routes(&discovery::with_discovered(config, found), metrics) {
        Ok(routes) => {
            eprintln!(
                "modelgate: discovery: routing {} models ({} listed)",
                routes.models.len(),
                routes.listed.len()
            );
            Some(Arc::new(routes))
        }
        Err(e) => {
            eprintln!("modelgate: discovery: cannot build the routing table: {e}");
            None
        }
    }
}

/// `watchConfig`: poll the config file (following symlinks, so a Kubernetes ConfigMap swap
/// counts) and ask for the same reload as SIGHUP when it changes. Off the workers; a stat
/// per second is all it costs.
mod watch {
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
    use std::sync::mpsc::Sender;
    use std::time::Duration;

    use crate::control::ToServer;

    const POLL: Duration = Duration::from_secs(1);

    /// What identifies a version of the file: the target inode, size and mtime.
    fn stamp(path: &PathBuf) -> Option<(u64, u64, u64, i64, i64)> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    }

    pub fn spawn(path: PathBuf, tx: Sender<ToServer>) -> Result<(), String> {
        // Stamped here, before the startup line: taken on the new thread, a busy machine
        // could let a change land first, and that version would count as the original.
        let mut last = stamp(&path);
        std::thread::Builder::new()
            .name("modelgate-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(POLL);
                    let now = stamp(&path);
                    // A file that vanished for a moment (mid-swap) is not a change yet.
                    if now.is_some() && now != last {
                        last = now;
                        eprintln!("modelgate: {} changed, reloading", path.display());
                        if tx.send(ToServer::Reload(None)).is_err() {
                            return;
                        }
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start the config watcher: {e}"))
    }
}

/// SIGHUP/SIGTERM/SIGINT taken synchronously by the server thread.
mod signals {
    use std::sync::mpsc::Sender;

    use crate::control::ToServer;

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
            Ok(set)
        }
    }

    /// Turns signals into server events on a thread of their own.
    pub fn forward(set: libc::sigset_t, tx: Sender<ToServer>) -> Result<(), String> {
        std::thread::Builder::new()
            .name("modelgate-signals".into())
            .spawn(move || loop {
                let event = match wait(&set) {
                    Signal::Reload => ToServer::Reload(None),
                    Signal::Stop => ToServer::Stop,
                };
                if tx.send(event).is_err() {
                    return;
                }
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start the signal thread: {e}"))
    }

    fn wait(set: &libc::sigset_t) -> Signal {
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
