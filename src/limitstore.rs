//! The shared-limits thread: once per `sharedLimits.syncInterval` it reports what this
//! instance admitted and charged for every limited key to the Redis/Valkey store, and hands
//! each bucket its allowance until the next sync (`ratelimit::shared` has the model, the
//! script and the overshoot bound). Workers never wait on it: they admit from the
//! allowances, or from local limits while the store is down or slow.
//!
//! Blocking std sockets (rustls `StreamOwned` for `rediss://`) and the RESP codec of
//! `resp`; one connection, one `EVALSHA` per sync for all keys, `AUTH`/`SELECT`/`SCRIPT LOAD`
//! when it (re)connects. Every failure (connect, TLS, auth, a timeout, an error reply, a
//! malformed reply) drops the connection and puts the process on local limits, logged once
//! per change, counted in the metrics and shown by `/health`; it tries again every second.

use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SharedLimits;
use crate::net::tls;
use crate::ratelimit::shared::{self, Mode, Status};
use crate::ratelimit::Bucket;
use crate::resolver;
use crate::resp::{self, Reply};
use crate::router::Routes;

/// How often a store that failed is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What the server tells the thread.
pub enum Request {
    /// A reload: the store settings (None: no sharing any more).
    Config(Option<SharedLimits>),
    /// A new routing table: its keys are the ones to sync.
    Routes(Arc<Routes>),
}

pub fn channel() -> (Sender<Request>, Receiver<Request>) {
    mpsc::channel()
}

/// The thread's state, made (and synced once) on the server thread before it listens.
pub struct Syncer {
    config: Option<SharedLimits>,
    routes: Arc<Routes>,
    status: Arc<Status>,
    conn: Option<Conn>,
    /// This process in the store's set of live instances.
    instance: String,
    /// The last failure logged (a new reason is logged again).
    last_error: Option<String>,
    /// What a sync sends that only changes with the table or the settings.
    plan: Option<Plan>,
    /// Reused per sync: the pending units taken, and the command.
    pending: Vec<[u64; 2]>,
    command: Vec<u8>,
}

/// The limited keys of one routing table, with their store keys and script arguments made
/// once (a sync then writes only counts).
struct Plan {
    routes: Arc<Routes>,
    instances_key: Vec<u8>,
    ttl_ms: Vec<u8>,
    keys: Vec<PlanKey>,
}

struct PlanKey {
    store_key: Vec<u8>,
    /// The request bucket and the token budget (either may be absent).
    buckets: [Option<Arc<Bucket>>; 2],
    /// Their intervals as the script takes them (`0`: absent).
    intervals: [Vec<u8>; 2],
}

impl Plan {
    fn new(routes: &Arc<Routes>, config: &SharedLimits) -> Plan {
        let keys = routes
            .token_policies
            .iter()
            .filter(|p| p.requests.is_some() || p.tokens.is_some())
            .map(|p| {
                let buckets = [p.requests.clone(), p.tokens.clone()];
                let intervals = buckets.clone().map(|b| match b {
                    Some(b) => shared::interval_arg(b.interval_nanos()).into_bytes(),
                    None => b"0".to_vec(),
                });
                PlanKey {
                    store_key: shared::store_key(&config.key_prefix, &p.name),
                    buckets,
                    intervals,
                }
            })
            .collect();
        Plan {
            routes: Arc::clone(routes),
            instances_key: shared::instances_key(&config.key_prefix),
            ttl_ms: (config.sync_interval.as_millis() * 5)
                .max(2000)
                .to_string()
                .into_bytes(),
            keys,
        }
    }
}

impl Syncer {
    pub fn new(config: Option<SharedLimits>, routes: Arc<Routes>, status: Arc<Status>) -> Syncer {
        let seed = std::collections::hash_map::RandomState::new()
            .hash_one((std::process::id(), Instant::now()));
        let mut syncer = Syncer {
            config: None,
            routes,
            status,
            conn: None,
            instance: format!("{seed:016x}"),
            last_error: None,
            plan: None,
            pending: Vec::new(),
            command: Vec::new(),
        };
        syncer.configure(config);
        syncer
    }

    fn configure(&mut self, config: Option<SharedLimits>) {
        if config == self.config {
            return;
        }
        self.conn = None;
        self.last_error = None;
        self.plan = None;
        match &config {
            Some(c) => {
                eprintln!(
                    "modelgate: shared limits: {} every {:?} (timeout {:?}); local limits until the first sync",
                    c.label(),
                    c.sync_interval,
                    c.timeout
                );
                self.status.set_mode(Mode::Local);
            }
            None => {
                if self.status.set_mode(Mode::Off) != Mode::Off {
                    eprintln!("modelgate: shared limits: off, limits are per process again");
                }
            }
        }
        self.config = config;
    }

    /// One sync (connecting first if needed). Returns when the next one is due.
    pub fn tick(&mut self) -> Duration {
        let Some(config) = self.config.clone() else {
            return Duration::from_secs(3600);
        };
        let started = Instant::now();
        match self.sync(&config, started) {
            Ok(instances) => {
                self.status.synced_once(instances, started.elapsed());
                if self.status.set_mode(Mode::Synced) != Mode::Synced {
                    eprintln!(
                        "modelgate: shared limits: synced with {} ({instances} instance{} live)",
                        config.label(),
                        if instances == 1 { "" } else { "s" }
                    );
                }
                self.last_error = None;
                config.sync_interval
            }
            Err(why) => {
                self.conn = None;
                self.status.failed_once();
                let was = self.status.set_mode(Mode::Local);
                if was == Mode::Synced || self.last_error.as_deref() != Some(why.as_str()) {
                    eprintln!(
                        "modelgate: shared limits: store {} failed: {why}; using local limits until it answers",
                        config.label()
                    );
                }
                self.last_error = Some(why);
                RETRY.max(config.sync_interval)
            }
        }
    }

    /// Serves until the server goes away.
    pub fn run(mut self, rx: Receiver<Request>) {
        let mut next = Instant::now() + self.config.as_ref().map_or(RETRY, |c| c.sync_interval);
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Request::Routes(routes)) => {
                    // A new key has no allowance until it is synced: do it now.
                    self.routes = routes;
                    next = Instant::now();
                }
                Ok(Request::Config(config)) => {
                    self.configure(config);
                    next = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => next = Instant::now() + self.tick(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Reports and charges every limited key's pending units, and grants the allowances.
    fn sync(&mut self, config: &SharedLimits, started: Instant) -> Result<u64, String> {
        let deadline = started + config.timeout;
        if self.conn.is_none() {
            self.conn = Some(Conn::open(config, &self.instance, deadline)?);
        }
        if !self
            .plan
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(&p.routes, &self.routes))
        {
            self.plan = Some(Plan::new(&self.routes, config));
        }
        let (Some(plan), Some(conn)) = (self.plan.as_ref(), self.conn.as_mut()) else {
            return Err("not connected".into());
        };
        // What to report, taken now and given back if the sync fails.
        self.pending.clear();
        self.pending.extend(plan.keys.iter().map(|k| {
            k.buckets
                .each_ref()
                .map(|b| b.as_ref().map_or(0, |b| b.slot().take_pending()))
        }));
        let cmd = &mut self.command;
        cmd.clear();
        let keys = plan.keys.len();
        resp::array_header(3 + (1 + keys) + 2 + 4 * keys, cmd);
        resp::bulk(b"EVALSHA", cmd);
        resp::bulk(&conn.sha, cmd);
        resp::bulk_u64(1 + keys as u64, cmd);
        resp::bulk(&plan.instances_key, cmd);
        for k in &plan.keys {
            resp::bulk(&k.store_key, cmd);
        }
        resp::bulk(self.instance.as_bytes(), cmd);
        resp::bulk(&plan.ttl_ms, cmd);
        for (k, pending) in plan.keys.iter().zip(&self.pending) {
            for (interval, units) in k.intervals.iter().zip(pending) {
                resp::bulk(interval, cmd);
                resp::bulk_u64(*units, cmd);
            }
        }
        let reply = match conn.eval(cmd, deadline) {
            Ok(reply) => reply,
            Err(why) => {
                for (k, pending) in plan.keys.iter().zip(&self.pending) {
                    for (bucket, units) in k.buckets.iter().zip(pending) {
                        if let Some(b) = bucket {
                            b.slot().restore_pending(*units);
                        }
                    }
                }
                return Err(why);
            }
        };
        let numbers = integers(&reply, 1 + keys * 2)?;
        let instances = u64::try_from(numbers[0]).unwrap_or(1).max(1);
        let now = Instant::now();
        for (k, ahead) in plan.keys.iter().zip(numbers[1..].chunks(2)) {
            for (bucket, ahead_micros) in k.buckets.iter().zip(ahead) {
                if let Some(b) = bucket {
                    b.grant(ahead_micros.saturating_mul(1000), instances, now);
                }
            }
        }
        Ok(instances)
    }
}

/// Starts the thread with a syncer made (and synced once) on the server thread.
pub fn spawn(syncer: Syncer, rx: Receiver<Request>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("modelgate-limits".into())
        .spawn(move || syncer.run(rx))
        .map(|_| ())
}

/// The script's answer: `want` integers.
fn integers(reply: &Reply, want: usize) -> Result<Vec<i64>, String> {
    let Reply::Array(Some(items)) = reply else {
        return Err(format!(
            "unexpected reply to the sync script: {}",
            describe(reply)
        ));
    };
    let numbers: Vec<i64> = items
        .iter()
        .filter_map(|i| match i {
            Reply::Int(n) => Some(*n),
            _ => None,
        })
        .collect();
    if numbers.len() != want || items.len() != want {
        return Err(format!(
            "the sync script answered {} values for {want}",
            items.len()
        ));
    }
    Ok(numbers)
}

/// A reply, short, for an error message.
fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Error(e) => e.chars().take(200).collect(),
        Reply::Simple(s) => format!("+{}", s.chars().take(200).collect::<String>()),
        Reply::Int(n) => format!(":{n}"),
        Reply::Bulk(_) => "a bulk string".into(),
        Reply::Array(_) => "an array".into(),
    }
}

/// A plain or TLS connection to the store.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.as_mut(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One connection: the socket, the loaded script's SHA, and unread reply bytes.
struct Conn {
    stream: Stream,
    sha: Vec<u8>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Conn {
    /// Connects, authenticates, selects the database and loads the script.
    fn open(config: &SharedLimits, instance: &str, deadline: Instant) -> Result<Conn, String> {
        let tcp = connect(&config.host, config.port, deadline)?;
        let stream = if config.tls {
            let client = tls::store_client_config(
                config.ca_file.as_deref(),
                config
                    .client_cert
                    .as_ref()
                    .map(|(c, k)| (c.as_path(), k.as_path())),
            )?;
            let name = tls::server_name(&config.host)?;
            let session = rustls::ClientConnection::new(client, name)
                .map_err(|e| format!("TLS setup failed: {e}"))?;
            Stream::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
        } else {
            Stream::Plain(tcp)
        };
        let mut conn = Conn {
            stream,
            sha: Vec::new(),
            buf: Vec::new(),
            out: Vec::new(),
        };
        if let Some(password) = &config.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &config.username {
                args.push(user.as_bytes());
            }
            args.push(password.expose().as_bytes());
            // The error names the server's reason (WRONGPASS …), never the password.
            conn.expect_ok(&args, "AUTH", deadline)?;
        }
        if config.db != 0 {
            let db = config.db.to_string();
            conn.expect_ok(&[b"SELECT", db.as_bytes()], "SELECT", deadline)?;
        }
        // Shows up in CLIENT LIST; a server that refuses it is still usable.
        let name = format!("modelgate-{instance}");
        let _ = conn.call(&[b"CLIENT", b"SETNAME", name.as_bytes()], deadline)?;
        conn.load_script(deadline)?;
        Ok(conn)
    }

    fn load_script(&mut self, deadline: Instant) -> Result<(), String> {
        match self.call(&[b"SCRIPT", b"LOAD", shared::SCRIPT.as_bytes()], deadline)? {
            Reply::Bulk(Some(sha)) => {
                self.sha = sha;
                Ok(())
            }
            other => Err(format!("SCRIPT LOAD: {}", describe(&other))),
        }
    }

    fn expect_ok(&mut self, args: &[&[u8]], what: &str, deadline: Instant) -> Result<(), String> {
        match self.call(args, deadline)? {
            Reply::Simple(_) => Ok(()),
            other => Err(format!("{what}: {}", describe(&other))),
        }
    }

    /// Runs the sync script (the encoded `EVALSHA` command); loads the script again once if
    /// the server lost it (a restart, `SCRIPT FLUSH`): its SHA, in the command, stays the
    /// same.
    fn eval(&mut self, command: &[u8], deadline: Instant) -> Result<Reply, String> {
        for attempt in 0..2 {
            match self.send(command, deadline)? {
                Reply::Error(e) if e.starts_with("NOSCRIPT") && attempt == 0 => {
                    self.load_script(deadline)?;
                }
                Reply::Error(e) => {
                    return Err(format!("sync script: {}", describe(&Reply::Error(e))))
                }
                reply => return Ok(reply),
            }
        }
        Err("sync script: not loaded".into())
    }

    /// Sends one command and reads its reply, by `deadline`.
    fn call(&mut self, args: &[&[u8]], deadline: Instant) -> Result<Reply, String> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        resp::encode(args, &mut out);
        let reply = self.send(&out, deadline);
        self.out = out;
        reply
    }

    /// Sends an encoded command and reads its reply, by `deadline`.
    fn send(&mut self, command: &[u8], deadline: Instant) -> Result<Reply, String> {
        self.set_timeout(deadline)?;
        let io = self.stream.io();
        io.write_all(command)
            .and_then(|()| io.flush())
            .map_err(|e| reason("write", &e, deadline))?;
        loop {
            if let Some((reply, used)) = resp::parse(&self.buf).map_err(|e| e.to_string())? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            self.set_timeout(deadline)?;
            let mut chunk = [0u8; 4096];
            match self.stream.io().read(&mut chunk) {
                Ok(0) => return Err("the store closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(reason("read", &e, deadline)),
            }
        }
    }

    /// The socket timeouts: what is left until `deadline` (a slow drip cannot stretch it).
    fn set_timeout(&mut self, deadline: Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        let tcp = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        };
        tcp.set_read_timeout(Some(left))
            .and_then(|()| tcp.set_write_timeout(Some(left)))
            .map_err(|e| reason("socket", &e, deadline))
    }
}

/// Connects to the first address of `host:port` that answers, by `deadline`.
fn connect(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolver::lookup(&format!("{host}:{port}"))
            .ok_or_else(|| format!("{host} does not resolve"))?,
    };
    let mut last = format!("{host} has no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("connect timed out".into());
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = reason("connect", &e, deadline),
        }
    }
    Err(last)
}

/// An I/O error for the log, without the errno suffix (`connect: Connection refused`);
/// past the deadline, whatever the socket said, it timed out.
fn reason(what: &str, e: &std::io::Error, deadline: Instant) -> String {
    if Instant::now() >= deadline {
        return format!("{what} timed out");
    }
    let text = e.to_string();
    match text.split_once(" (os error") {
        Some((why, _)) => format!("{what}: {why}"),
        None => format!("{what}: {text}"),
    }
}
