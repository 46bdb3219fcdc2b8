//! Prometheus metrics (SPEC.md §9, names in §10): atomics written on the data path, summed
//! and rendered on scrape.
//!
//! Owns: the counters, gauges and histograms of the process and their text exposition (format
//! 0.0.4). It does no I/O; the engine calls the recording methods and serves [`Metrics::render`].
//!
//! # No locks on the data path
//! Everything a worker touches per request is a relaxed atomic: [`ModelStats`] (one per model,
//! looked up by name when a routing table is built, so a reload keeps the counts) and
//! [`WorkerCounters`] (one per worker, so bytes counted on every read do not bounce a cache
//! line between cores). Locks guard only the registries of models and workers, which change
//! when a routing table is built or a worker starts, and are read on scrape.
//!
//! # What is rendered
//! - Every model ever looked up, sorted by name, and the unrouted series (`model=""`, requests
//!   that never reached a model) first. A model keeps its series after a reload removes it:
//!   counters must never go backwards.
//! - `modelgate_requests_total` only for the status codes seen (there are 500 possible ones).
//! - Histograms, token counters, connect errors and retries for every model, zero included,
//!   so a dashboard sees a model before its first request.
//! - Status codes 0..=599 are counted exactly (0 for "no status", if the engine uses it);
//!   anything above is counted as `code="other"`.
//!
//! # Buckets
//! Durations (request and time to first byte) go from 5 ms (a cached or local answer) to
//! 10 min (a long generation; streams can legitimately last that long). Generation speed goes
//! from 1 token/s (a CPU model under load) to 2000 tokens/s (small models on fast GPUs).
//!
//! Histogram buckets are stored per bucket (not cumulative) and `_count` is their sum taken
//! during rendering, so `_count` always equals the `+Inf` bucket even while requests are being
//! recorded concurrently.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::accesslog::Outcome;
use crate::buf::Budget;
use crate::ratelimit::shared::Mode as SharedMode;

mod keys;
mod recent;
use crate::usage::Unread;

mod replicas;
pub use keys::{KeyCounts, KeyTotals};
pub use recent::{RecentError, RecentErrors, RECENT_ERRORS, UNKNOWN_MODEL};
pub use replicas::ReplicaStats;

/// The version `modelgate_build_info` and `/status` report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The instant process-wide timestamps (ejection ends, the error ring) are counted from,
/// so they fit in one atomic word. Fixed the first time anything asks.
pub fn process_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Status codes below this are counted exactly; the rest under `code="other"`.
const CODES: usize = 600;

const NANOS_PER_SEC: f64 = 1e9;

/// Generation speed is stored in thousandths of a token per second, so the sum stays an
/// integer atomic while keeping sub-token precision.
const RATE_SCALE: f64 = 1e3;

/// Upper bounds of a histogram: the `le` label as written, and the bound in stored units.
type Bounds = [(&'static str, u64); 16];

/// Request duration and time to first byte, in nanoseconds.
const DURATION_BOUNDS: Bounds = [
    ("0.005", 5_000_000),
    ("0.01", 10_000_000),
    ("0.025", 25_000_000),
    ("0.05", 50_000_000),
    ("0.1", 100_000_000),
    ("0.25", 250_000_000),
    ("0.5", 500_000_000),
    ("1", 1_000_000_000),
    ("2.5", 2_500_000_000),
    ("5", 5_000_000_000),
    ("10", 10_000_000_000),
    ("30", 30_000_000_000),
    ("60", 60_000_000_000),
    ("120", 120_000_000_000),
    ("300", 300_000_000_000),
    ("600", 600_000_000_000),
];

/// Completion tokens per second of generation, in thousandths (see [`RATE_SCALE`]).
const RATE_BOUNDS: Bounds = [
    ("1", 1_000),
    ("2.5", 2_500),
    ("5", 5_000),
    ("10", 10_000),
    ("20", 20_000),
    ("30", 30_000),
    ("50", 50_000),
    ("75", 75_000),
    ("100", 100_000),
    ("150", 150_000),
    ("200", 200_000),
    ("300", 300_000),
    ("500", 500_000),
    ("750", 750_000),
    ("1000", 1_000_000),
    ("2000", 2_000_000),
];

/// A lock-free histogram over integer observations (nanoseconds, milli-tokens/s).
#[derive(Debug)]
struct Histogram {
    bounds: &'static Bounds,
    /// Observations per bucket, not cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; 17],
    /// Sum of the observations in stored units.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static Bounds) -> Histogram {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        // `le` is inclusive: a value equal to a bound goes in that bound's bucket.
        let i = self.bounds.partition_point(|&(_, bound)| bound < value);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    fn snapshot(&self, scale: f64) -> HistogramSnapshot {
        let mut cumulative = [0u64; 17];
        let mut total = 0u64;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            total += bucket.load(Relaxed);
            *slot = total;
        }
        HistogramSnapshot {
            cumulative,
            sum: self.sum.load(Relaxed) as f64 / scale,
        }
    }

    /// Writes `_bucket`, `_sum` and `_count` lines; `scale` converts stored units to the
    /// exposed unit.
    fn render(&self, out: &mut String, name: &str, model: &str, scale: f64) {
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = self.bounds.get(i).map_or("+Inf", |&(le, _)| le);
            out.push_str(name);
            out.push_str("_bucket{model=\"");
            escape_label(out, model);
            let _ = writeln!(out, "\",le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum.load(Relaxed) as f64 / scale;
        sample(out, name, "_sum", model, "");
        let _ = writeln!(out, "{sum}");
        sample(out, name, "_count", model, "");
        let _ = writeln!(out, "{cumulative}");
    }
}

/// The stats of one model (or of the unrouted requests), shared by every worker.
#[derive(Debug)]
pub struct ModelStats {
    name: String,
    /// Registry id, written in the error ring instead of the name (0: unrouted).
    id: u16,
    /// Requests by status code 0..=599.
    codes: [AtomicU64; CODES],
    /// Requests with a status code of 600 or above.
    other_codes: AtomicU64,
    duration: Histogram,
    ttfb: Histogram,
    generation_rate: Histogram,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    connect_errors: AtomicU64,
    retries: AtomicU64,
    /// Requests waiting in this model's queues (all workers).
    queued: AtomicI64,
    /// Answers whose usage could not be read, by [`Unread::index`].
    usage_unread: [AtomicU64; Unread::ALL.len()],
    /// Counts of requests made with a key (`codes` and the token counters above hold the
    /// requests without one), sorted by key name; added when a routing table is built.
    keys: Mutex<Vec<Arc<KeyCounts>>>,
}

impl ModelStats {
    fn new(name: &str, id: u16) -> ModelStats {
        ModelStats {
            name: name.to_owned(),
            id,
            codes: std::array::from_fn(|_| AtomicU64::new(0)),
            other_codes: AtomicU64::new(0),
            duration: Histogram::new(&DURATION_BOUNDS),
            ttfb: Histogram::new(&DURATION_BOUNDS),
            generation_rate: Histogram::new(&RATE_BOUNDS),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            usage_unread: std::array::from_fn(|_| AtomicU64::new(0)),
            keys: Mutex::new(Vec::new()),
        }
    }

    /// The counts of key `name` on this model, made on first use and kept for the process's
    /// life (like the model's own). Called when a routing table is built, never on the data
    /// path.
    pub fn key(&self, name: &str) -> Arc<KeyCounts> {
        let mut keys = lock(&self.keys);
        match keys.binary_search_by(|k| k.key().cmp(name)) {
            Ok(i) => Arc::clone(&keys[i]),
            Err(i) => {
                let counts = Arc::new(KeyCounts::new(name));
                keys.insert(i, Arc::clone(&counts));
                counts
            }
        }
    }

    fn key_counts(&self) -> Vec<Arc<KeyCounts>> {
        lock(&self.keys).clone()
    }

    /// The model name these stats are labelled with (`""` for unrouted requests).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One finished request: its status, total duration, time to the response head (None
    /// when no response came from upstream), and tokens when the response carried usage.
    /// `generation` is the generation window of a streamed answer (`usage::AnswerUsage`: from
    /// its first event to its last; None when the answer showed no generation); with the
    /// completion count it feeds the tokens-per-second histogram, and is ignored when either
    /// is missing or the duration is zero. A request made with a key has its status and
    /// tokens counted in `key` (this model's counts of that key) instead of the model's own.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        status: u16,
        duration: Duration,
        ttfb: Option<Duration>,
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        generation: Option<Duration>,
        key: Option<&KeyCounts>,
    ) {
        match key {
            Some(key) => key.record(status, prompt_tokens, completion_tokens),
            None => {
                match self.codes.get(usize::from(status)) {
                    Some(count) => count.fetch_add(1, Relaxed),
                    None => self.other_codes.fetch_add(1, Relaxed),
                };
                if let Some(n) = prompt_tokens {
                    self.prompt_tokens.fetch_add(n, Relaxed);
                }
                if let Some(n) = completion_tokens {
                    self.completion_tokens.fetch_add(n, Relaxed);
                }
            }
        }
        self.duration.observe(nanos(duration));
        if let Some(ttfb) = ttfb {
            self.ttfb.observe(nanos(ttfb));
        }
        if let (Some(n), Some(generation)) = (completion_tokens, generation) {
            let secs = generation.as_secs_f64();
            if secs > 0.0 {
                // `as` saturates: an absurd rate lands in `+Inf` instead of wrapping.
                self.generation_rate
                    .observe((n as f64 / secs * RATE_SCALE) as u64);
            }
        }
    }

    /// An answer whose token counts could not be read, and why.
    pub fn usage_unread(&self, reason: Unread) {
        if let Some(count) = self.usage_unread.get(reason.index()) {
            count.fetch_add(1, Relaxed);
        }
    }

    /// A failed connection attempt to this model's upstream.
    pub fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Relaxed);
    }

    /// A request sent again on a fresh upstream connection.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// Requests joined (`delta` > 0) or left (< 0) one of this model's wait queues.
    pub fn queued_changed(&self, delta: i64) {
        self.queued.fetch_add(delta, Relaxed);
    }

    /// What `/status` shows of this model: totals since the process started, every key's
    /// requests included.
    pub fn summary(&self) -> ModelSummary {
        let count = |codes: &[AtomicU64]| codes.iter().map(|c| c.load(Relaxed)).sum::<u64>();
        let other = self.other_codes.load(Relaxed);
        let mut keyed = KeyTotals::default();
        for k in self.key_counts() {
            let t = k.totals();
            keyed.requests += t.requests;
            keyed.client_errors += t.client_errors;
            keyed.errors += t.errors;
            keyed.prompt_tokens += t.prompt_tokens;
            keyed.completion_tokens += t.completion_tokens;
        }
        ModelSummary {
            requests: count(&self.codes) + other + keyed.requests,
            client_errors: count(&self.codes[400..500]) + keyed.client_errors,
            errors: count(&self.codes[500..CODES]) + other + keyed.errors,
            prompt_tokens: self.prompt_tokens.load(Relaxed) + keyed.prompt_tokens,
            completion_tokens: self.completion_tokens.load(Relaxed) + keyed.completion_tokens,
            ttfb: self.ttfb.snapshot(NANOS_PER_SEC),
            queued: self.queued.load(Relaxed).max(0) as u64,
        }
    }
}

impl crate::balance::QueueGauge for ModelStats {
    fn queued_changed(&self, delta: i64) {
        ModelStats::queued_changed(self, delta);
    }
}

/// A model's totals for `/status` (see [`ModelStats::summary`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub requests: u64,
    /// Answers with a 4xx status.
    pub client_errors: u64,
    /// Answers with a 5xx status (or a code above 599).
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub ttfb: HistogramSnapshot,
    pub queued: u64,
}

/// A histogram read at one instant: cumulative counts per upper bound ([`bucket_bounds`]),
/// the last one `+Inf` (so it is the count), and the sum in the exposed unit.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: [u64; 17],
    pub sum: f64,
}

/// The upper bounds (seconds) of the duration histograms, `+Inf` excluded.
pub fn duration_bounds() -> [f64; 16] {
    std::array::from_fn(|i| DURATION_BOUNDS[i].1 as f64 / NANOS_PER_SEC)
}

/// Duration in nanoseconds, saturating (584 years fit in a `u64`).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Counters owned by one worker, summed on scrape. Aligned to a cache line so that workers
/// updating their own counters never contend.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerCounters {
    received: AtomicU64,
    sent: AtomicU64,
    log_dropped: AtomicU64,
    idle_upstreams: AtomicU64,
    connections: AtomicU64,
    fd_exhausted: AtomicU64,
    accept_paused: AtomicU64,
}

impl WorkerCounters {
    /// An accept or upstream connect the kernel refused for lack of descriptors.
    pub fn add_fd_exhausted(&self) {
        self.fd_exhausted.fetch_add(1, Relaxed);
    }

    /// Accepting paused to keep descriptors in reserve for accepted clients.
    pub fn add_accept_paused(&self) {
        self.accept_paused.fetch_add(1, Relaxed);
    }

    /// Access log lines dropped because the writer thread fell behind.
    pub fn add_log_dropped(&self, lines: u64) {
        self.log_dropped.fetch_add(lines, Relaxed);
    }

    /// Bytes read from clients.
    pub fn add_received(&self, bytes: u64) {
        self.received.fetch_add(bytes, Relaxed);
    }

    /// Bytes written to clients.
    pub fn add_sent(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Relaxed);
    }

    /// The worker's pool gauges: idle upstream connections and client connections open now.
    /// A worker that stops should set both to zero: its counters stay registered (the byte
    /// totals must not go backwards).
    pub fn set_pool(&self, idle_upstreams: u64, connections: u64) {
        self.idle_upstreams.store(idle_upstreams, Relaxed);
        self.connections.store(connections, Relaxed);
    }
}

/// Requests refused with 429 `rate_limited`, by the limit that refused them.
#[derive(Debug, Default)]
pub struct RateLimited {
    /// A key's `requestsPerMinute` bucket was empty.
    pub requests: AtomicU64,
    /// A key's `tokensPerMinute` budget was spent.
    pub tokens: AtomicU64,
}

/// The process-wide metrics, shared as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    models: Mutex<BTreeMap<String, Arc<ModelStats>>>,
    unrouted: Arc<ModelStats>,
    workers: Mutex<Vec<Arc<WorkerCounters>>>,
    /// Replicas of models with several backends, by (model, replica label).
    replicas: Mutex<BTreeMap<(String, String), Arc<ReplicaStats>>>,
    /// Per-token rate-limit buckets, kept across reloads like the model stats.
    rate_buckets: crate::ratelimit::Buckets,
    /// Each model's process-wide replica slots and wait queue, kept across reloads.
    replica_slots: crate::balance::Registry,
    /// Requests refused with 429 `rate_limited` (shared with every routing table).
    rate_limited: Arc<RateLimited>,
    /// The buffer pools' byte budget, once the server has made it.
    budget: OnceLock<Arc<Budget>>,
    /// The last errors, for `/status`.
    recent: RecentErrors,
    started: Instant,
    started_wall: SystemTime,
}

/// A poisoned registry is still a valid registry (its values are only `Arc`s), so a panic
/// elsewhere must not take metrics down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// Made once at startup: the only place metrics read the clock (the start, which also
    /// fixes [`process_epoch`]); everything later gets `now` from its caller.
    pub fn new() -> Arc<Metrics> {
        process_epoch();
        Arc::new(Metrics {
            models: Mutex::new(BTreeMap::new()),
            unrouted: Arc::new(ModelStats::new("", 0)),
            workers: Mutex::new(Vec::new()),
            replicas: Mutex::new(BTreeMap::new()),
            rate_buckets: crate::ratelimit::Buckets::default(),
            replica_slots: crate::balance::Registry::default(),
            rate_limited: Arc::new(RateLimited::default()),
            budget: OnceLock::new(),
            recent: RecentErrors::default(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
        })
    }

    /// The buffer budget, rendered as `modelgate_buffer_bytes_{in_use,limit}`. Set once by
    /// the server; later calls are ignored.
    pub fn set_budget(&self, budget: Arc<Budget>) {
        let _ = self.budget.set(budget);
    }

    /// The buffer budget: (bytes in use, limit), when set.
    pub fn buffer(&self) -> Option<(u64, u64)> {
        self.budget
            .get()
            .map(|b| (b.used() as u64, b.limit() as u64))
    }

    /// The counters of 429 `rate_limited` refusals (the routing table increments them).
    pub fn rate_limited_counter(&self) -> Arc<RateLimited> {
        Arc::clone(&self.rate_limited)
    }

    /// Requests refused with 429 `rate_limited` so far, by either limit.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.requests.load(Relaxed) + self.rate_limited.tokens.load(Relaxed)
    }

    /// Time since these metrics were made (the process start).
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Wall-clock time of the start.
    pub fn started_wall(&self) -> SystemTime {
        self.started_wall
    }

    /// A request ended: listed in the error ring when it failed (`recent::is_listed`).
    /// Called once per request; costs one compare unless it failed.
    pub fn finished(&self, model: &ModelStats, status: u16, outcome: Outcome, now: Instant) {
        if recent::is_listed(status, outcome) {
            self.recent.push(model.id, status, outcome, now);
        }
    }

    /// Client connections open now, over every worker.
    pub fn client_connections(&self) -> u64 {
        lock(&self.workers)
            .iter()
            .map(|w| w.connections.load(Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Errors listed since the start.
    pub fn recent_total(&self) -> u64 {
        self.recent.total()
    }

    /// The last errors, newest first, with the model name (None for unrouted requests or
    /// an id that did not fit).
    pub fn recent_errors(&self) -> Vec<(RecentError, Option<String>)> {
        let entries = self.recent.snapshot();
        let names: Vec<(u16, String)> = lock(&self.models)
            .values()
            .filter(|m| entries.iter().any(|e| e.model == m.id))
            .map(|m| (m.id, m.name.clone()))
            .collect();
        entries
            .into_iter()
            .map(|e| {
                let name = match e.model {
                    0 | UNKNOWN_MODEL => None,
                    id => names.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone()),
                };
                (e, name)
            })
            .collect()
    }

    /// The stats of one model, created on first use and kept across reloads (a config
    /// reload builds new routes that look their stats up again by name). Called when a
    /// routing table is built, never on the data path. May lock internally.
    pub fn model(&self, name: &str) -> Arc<ModelStats> {
        let mut models = lock(&self.models);
        if let Some(stats) = models.get(name) {
            return Arc::clone(stats);
        }
        // Ids are never reused: a model keeps its stats (and id) for the process's life.
        let id = u16::try_from(models.len() + 1).unwrap_or(UNKNOWN_MODEL);
        let stats = Arc::new(ModelStats::new(name, id));
        models.insert(name.to_owned(), Arc::clone(&stats));
        stats
    }

    /// The stats of one replica of a model with several backends, kept across reloads like
    /// [`Metrics::model`]. Called when a routing table is built.
    pub fn replica(&self, model: &str, replica: &str) -> Arc<ReplicaStats> {
        let mut replicas = lock(&self.replicas);
        Arc::clone(
            replicas
                .entry((model.to_owned(), replica.to_owned()))
                .or_default(),
        )
    }

    /// The replica slots and wait queues that survive reloads (see `balance::Registry`).
    pub fn replica_slots(&self) -> &crate::balance::Registry {
        &self.replica_slots
    }

    /// The rate-limit buckets that survive reloads (see `ratelimit::Buckets`).
    pub fn rate_buckets(&self) -> &crate::ratelimit::Buckets {
        &self.rate_buckets
    }

    /// Requests that never reached a model (bad request, unknown model, auth...): the
    /// `model=""` series.
    pub fn unrouted(&self) -> Arc<ModelStats> {
        Arc::clone(&self.unrouted)
    }

    /// Counters owned by one worker (bytes in/out, pool gauges), summed on scrape. Each call
    /// registers a new set: call it once per worker.
    pub fn worker(&self) -> Arc<WorkerCounters> {
        let counters = Arc::new(WorkerCounters::default());
        lock(&self.workers).push(Arc::clone(&counters));
        counters
    }

    /// The Prometheus text exposition (format 0.0.4) of everything, with `in_flight` from
    /// the engine's counter; `now` decides which replica ejections are still running.
    pub fn render(&self, in_flight: u64, now: Instant) -> String {
        // Snapshot the registries so no lock is held while formatting.
        let mut models: Vec<Arc<ModelStats>> = vec![Arc::clone(&self.unrouted)];
        models.extend(lock(&self.models).values().cloned());
        let workers: Vec<Arc<WorkerCounters>> = lock(&self.workers).clone();
        let total = |f: fn(&WorkerCounters) -> &AtomicU64| -> u64 {
            workers
                .iter()
                .map(|w| f(w).load(Relaxed))
                .fold(0, u64::wrapping_add)
        };

        let mut out = String::with_capacity(4096 + models.len() * 6144);

        family(
            &mut out,
            "modelgate_requests_total",
            "counter",
            "Requests answered, by model, HTTP status code and key (the name of the bearer \
             token; absent for requests without one).",
        );
        for m in &models {
            for (code, count) in m.codes.iter().enumerate() {
                let count = count.load(Relaxed);
                if count > 0 {
                    requests_line(&mut out, &m.name, &code.to_string(), count);
                }
            }
            let other = m.other_codes.load(Relaxed);
            if other > 0 {
                requests_line(&mut out, &m.name, "other", other);
            }
            for k in m.key_counts() {
                keys::render_requests(&mut out, &m.name, &k);
            }
        }

        family(
            &mut out,
            "modelgate_request_duration_seconds",
            "histogram",
            "Time from the request's first byte to the end of its response.",
        );
        for m in &models {
            m.duration.render(
                &mut out,
                "modelgate_request_duration_seconds",
                &m.name,
                NANOS_PER_SEC,
            );
        }

        family(
            &mut out,
            "modelgate_time_to_first_byte_seconds",
            "histogram",
            "Time from the request's first byte to the upstream response head.",
        );
        for m in &models {
            m.ttfb.render(
                &mut out,
                "modelgate_time_to_first_byte_seconds",
                &m.name,
                NANOS_PER_SEC,
            );
        }

        family(
            &mut out,
            "modelgate_generation_tokens_per_second",
            "histogram",
            "Completion tokens of a streamed answer divided by the time from its first event \
             to its last (answers with usage and at least two events at different times).",
        );
        for m in &models {
            m.generation_rate.render(
                &mut out,
                "modelgate_generation_tokens_per_second",
                &m.name,
                RATE_SCALE,
            );
        }

        family(
            &mut out,
            "modelgate_tokens_total",
            "counter",
            "Tokens reported in upstream responses' usage, by model, kind and key (absent for \
             requests without a bearer token).",
        );
        for m in &models {
            for (kind, count) in [
                ("prompt", &m.prompt_tokens),
                ("completion", &m.completion_tokens),
            ] {
                sample(&mut out, "modelgate_tokens_total", "", &m.name, kind);
                let _ = writeln!(out, "{}", count.load(Relaxed));
            }
            for k in m.key_counts().iter().filter(|k| k.seen()) {
                keys::render_tokens(&mut out, &m.name, k);
            }
        }

        family(
            &mut out,
            "modelgate_usage_unread_total",
            "counter",
            "Answers whose token usage could not be read (br/zstd/other encodings not \
             decoded, corrupt compressed data, a decompression bomb, no buffer budget), by \
             model and reason.",
        );
        for m in &models {
            for (reason, count) in Unread::ALL.iter().zip(&m.usage_unread) {
                out.push_str("modelgate_usage_unread_total{model=\"");
                escape_label(&mut out, &m.name);
                let (reason, count) = (reason.label(), count.load(Relaxed));
                let _ = writeln!(out, "\",reason=\"{reason}\"}} {count}");
            }
        }

        family(
            &mut out,
            "modelgate_upstream_connect_errors_total",
            "counter",
            "Failed connection attempts to upstreams, by model.",
        );
        for m in &models {
            sample(
                &mut out,
                "modelgate_upstream_connect_errors_total",
                "",
                &m.name,
                "",
            );
            let _ = writeln!(out, "{}", m.connect_errors.load(Relaxed));
        }

        family(
            &mut out,
            "modelgate_upstream_retries_total",
            "counter",
            "Requests sent again on a fresh upstream connection, by model.",
        );
        for m in &models {
            sample(
                &mut out,
                "modelgate_upstream_retries_total",
                "",
                &m.name,
                "",
            );
            let _ = writeln!(out, "{}", m.retries.load(Relaxed));
        }

        family(
            &mut out,
            "modelgate_queued_requests",
            "gauge",
            "Requests waiting in a model's queues for a free replica slot.",
        );
        for m in &models {
            sample(&mut out, "modelgate_queued_requests", "", &m.name, "");
            let _ = writeln!(out, "{}", m.queued.load(Relaxed).max(0));
        }

        family(
            &mut out,
            "modelgate_rate_limited_total",
            "counter",
            "Requests refused with 429 rate_limited, by the key's limit that refused them \
             (requestsPerMinute: requests, tokensPerMinute: tokens).",
        );
        for (limit, counter) in [
            ("requests", &self.rate_limited.requests),
            ("tokens", &self.rate_limited.tokens),
        ] {
            let n = counter.load(Relaxed);
            let _ = writeln!(out, "modelgate_rate_limited_total{{limit=\"{limit}\"}} {n}");
        }
        self.render_shared_limits(&mut out);
        let globals: [(&str, &str, &str, u64); 8] = [
            (
                "modelgate_in_flight_requests",
                "gauge",
                "Proxied requests in progress.",
                in_flight,
            ),
            (
                "modelgate_received_bytes_total",
                "counter",
                "Bytes received from clients.",
                total(|w| &w.received),
            ),
            (
                "modelgate_sent_bytes_total",
                "counter",
                "Bytes sent to clients.",
                total(|w| &w.sent),
            ),
            (
                "modelgate_access_log_dropped_total",
                "counter",
                "Access log lines dropped because stderr was slower than the traffic.",
                total(|w| &w.log_dropped),
            ),
            (
                "modelgate_upstream_idle_connections",
                "gauge",
                "Idle upstream connections kept in the pools.",
                total(|w| &w.idle_upstreams),
            ),
            (
                "modelgate_client_connections",
                "gauge",
                "Client connections open.",
                total(|w| &w.connections),
            ),
            (
                "modelgate_fd_exhausted_total",
                "counter",
                "Accepts and upstream connects the kernel refused for lack of file descriptors (EMFILE/ENFILE); such requests get 503.",
                total(|w| &w.fd_exhausted),
            ),
            (
                "modelgate_accept_paused_total",
                "counter",
                "Times a worker stopped accepting to keep file descriptors for the clients it accepted.",
                total(|w| &w.accept_paused),
            ),
        ];
        for (name, kind, help, value) in globals {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        if let Some((used, limit)) = self.buffer() {
            for (name, help, value) in [
                (
                    "modelgate_buffer_bytes_in_use",
                    "Bytes of buffer blocks checked out of the maxBufferBytes budget.",
                    used,
                ),
                (
                    "modelgate_buffer_bytes_limit",
                    "The buffer byte budget (maxBufferBytes); new work gets 503 when it is spent.",
                    limit,
                ),
            ] {
                family(&mut out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        family(
            &mut out,
            "modelgate_build_info",
            "gauge",
            "Always 1; the version label says which modelgate is running.",
        );
        let _ = writeln!(out, "modelgate_build_info{{version=\"{VERSION}\"}} 1");
        family(
            &mut out,
            "modelgate_start_time_seconds",
            "gauge",
            "Unix time the process started, in seconds.",
        );
        let start = self
            .started_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(out, "modelgate_start_time_seconds {start:.3}");
        let replica_rows: Vec<(String, String, Arc<ReplicaStats>)> = lock(&self.replicas)
            .iter()
            .map(|((m, r), s)| (m.clone(), r.clone(), Arc::clone(s)))
            .collect();
        replicas::render(&replica_rows, now, &mut out);
        out
    }
}

impl Metrics {
    /// The `sharedLimits` families, when a store is configured.
    fn render_shared_limits(&self, out: &mut String) {
        let status = self.rate_buckets.status();
        let mode = status.mode();
        if mode == SharedMode::Off {
            return;
        }
        let (syncs, failures, instances, last) = status.counters();
        let gauges = [
            (
                "modelgate_shared_limits_synced",
                "1 while keys' limits are shared through the sharedLimits store; 0 while the \
                 store is down, slow or refusing and the process uses local limits.",
                u64::from(mode == SharedMode::Synced).to_string(),
            ),
            (
                "modelgate_shared_limits_instances",
                "Instances that synced with the store recently, as of the last sync (each \
                 gets its share of every key's limit).",
                instances.to_string(),
            ),
            (
                "modelgate_shared_limits_sync_duration_seconds",
                "Round trip of the last successful sync with the store.",
                last.as_secs_f64().to_string(),
            ),
        ];
        for (name, help, value) in gauges {
            family(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        family(
            out,
            "modelgate_shared_limits_syncs_total",
            "counter",
            "Syncs with the sharedLimits store, by result (failed: connect, TLS, auth, timeout \
             or an error reply; the process then uses local limits).",
        );
        for (result, n) in [("ok", syncs), ("failed", failures)] {
            let _ = writeln!(
                out,
                "modelgate_shared_limits_syncs_total{{result=\"{result}\"}} {n}"
            );
        }
    }
}

/// `# HELP` and `# TYPE` lines of one family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `name{suffix}{model="…"[,kind="…"]} ` (up to the value).
fn sample(out: &mut String, name: &str, suffix: &str, model: &str, kind: &str) {
    out.push_str(name);
    out.push_str(suffix);
    out.push_str("{model=\"");
    escape_label(out, model);
    if !kind.is_empty() {
        out.push_str("\",kind=\"");
        out.push_str(kind);
    }
    out.push_str("\"} ");
}

fn requests_line(out: &mut String, model: &str, code: &str, count: u64) {
    out.push_str("modelgate_requests_total{model=\"");
    escape_label(out, model);
    let _ = writeln!(out, "\",code=\"{code}\"}} {count}");
}

/// A label value as the text format wants it: `\`, `"` and line feed escaped.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// One sample line: metric name, labels, value.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    impl Sample {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A strict little parser of the text format: `# HELP`/`# TYPE` comments, and sample
    /// lines `name{k="v",...} value` with escaped label values. Panics on anything else.
    fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        assert!(text.ends_with('\n'), "text ends with a line feed");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type line");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{name} typed twice"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment {line}");
            let name_end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .expect("name then more");
            let name = &line[..name_end];
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                loop {
                    if let Some(r) = rest.strip_prefix('}') {
                        rest = r;
                        break;
                    }
                    let eq = rest.find("=\"").expect("label =\"");
                    let key = rest[..eq].to_owned();
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    let mut value = String::new();
                    let mut chars = rest[eq + 2..].char_indices();
                    let end = loop {
                        let (i, c) = chars.next().expect("closing quote");
                        match c {
                            '"' => break i,
                            '\\' => match chars.next().expect("escape").1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                other => panic!("bad escape {other}"),
                            },
                            '\n' => panic!("raw line feed"),
                            c => value.push(c),
                        }
                    };
                    rest = &rest[eq + 2 + end + 1..];
                    labels.push((key, value));
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
            }
            let value = rest.strip_prefix(' ').expect("space before value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().expect("numeric value"),
            };
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        (samples, types)
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
        samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect()
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = find(samples, name, labels);
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every histogram family: buckets cumulative and ending at `+Inf`, `_count` = `+Inf`.
    fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) {
        for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
            let bucket_name = format!("{family}_bucket");
            let mut by_model: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
            for s in samples.iter().filter(|s| s.name == bucket_name) {
                by_model
                    .entry(s.label("model").expect("model").to_owned())
                    .or_default()
                    .push(s);
            }
            assert!(!by_model.is_empty(), "{family} has buckets");
            for (model, buckets) in by_model {
                let mut last_le = f64::NEG_INFINITY;
                let mut last = 0.0;
                for b in &buckets {
                    let le = b.label("le").expect("le");
                    let le: f64 = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().expect("le")
                    };
                    assert!(le > last_le, "{family} {model} le increasing");
                    assert!(b.value >= last, "{family} {model} cumulative");
                    last_le = le;
                    last = b.value;
                }
                assert_eq!(last_le, f64::INFINITY, "{family} ends at +Inf");
                let count = value(samples, &format!("{family}_count"), &[("model", &model)]);
                assert_eq!(count, last, "{family} {model} _count equals +Inf");
                value(samples, &format!("{family}_sum"), &[("model", &model)]);
            }
        }
    }

    #[test]
    fn rendered_text_parses_with_help_and_type_for_every_family() {
        let metrics = Metrics::new();
        metrics.model("m").record(
            200,
            ms(10),
            Some(ms(2)),
            Some(3),
            Some(4),
            Some(ms(100)),
            None,
        );
        let text = metrics.render(0, Instant::now());
        let (samples, types) = parse(&text);
        for s in &samples {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| {
                    s.name
                        .strip_suffix(suf)
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(&s.name);
            assert!(types.contains_key(family), "{} has a TYPE", s.name);
            assert!(text.contains(&format!("# HELP {family} ")), "{family} HELP");
        }
        for name in [
            "modelgate_requests_total",
            "modelgate_request_duration_seconds",
            "modelgate_time_to_first_byte_seconds",
            "modelgate_in_flight_requests",
            "modelgate_upstream_connect_errors_total",
            "modelgate_upstream_retries_total",
            "modelgate_received_bytes_total",
            "modelgate_sent_bytes_total",
            "modelgate_access_log_dropped_total",
            "modelgate_tokens_total",
            "modelgate_generation_tokens_per_second",
            "modelgate_upstream_idle_connections",
            "modelgate_client_connections",
            "modelgate_queued_requests",
            "modelgate_rate_limited_total",
            "modelgate_build_info",
            "modelgate_start_time_seconds",
        ] {
            assert!(types.contains_key(name), "{name} rendered");
        }
    }

    #[test]
    fn build_info_start_time_rate_limits_and_the_buffer_budget_are_rendered() {
        let metrics = Metrics::new();
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        assert!(find(&samples, "modelgate_buffer_bytes_in_use", &[]).is_empty());
        metrics.set_budget(crate::buf::Budget::new(1 << 20));
        metrics
            .rate_limited_counter()
            .requests
            .fetch_add(3, Relaxed);
        metrics.rate_limited_counter().tokens.fetch_add(2, Relaxed);
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        assert_eq!(
            value(&samples, "modelgate_build_info", &[("version", VERSION)]),
            1.0
        );
        let start = value(&samples, "modelgate_start_time_seconds", &[]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        let limited = |limit| {
            value(
                &samples,
                "modelgate_rate_limited_total",
                &[("limit", limit)],
            )
        };
        assert_eq!((limited("requests"), limited("tokens")), (3.0, 2.0));
        assert_eq!(metrics.rate_limited(), 5);
        assert_eq!(value(&samples, "modelgate_buffer_bytes_in_use", &[]), 0.0);
        assert_eq!(
            value(&samples, "modelgate_buffer_bytes_limit", &[]),
            f64::from(1u32 << 20)
        );
        assert_eq!(metrics.buffer(), Some((0, 1 << 20)));
    }

    #[test]
    fn the_queue_gauge_follows_its_changes_and_never_shows_negative() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        m.queued_changed(3);
        m.queued_changed(-1);
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let q = "modelgate_queued_requests";
        assert_eq!(value(&samples, q, &[("model", "m")]), 2.0);
        assert_eq!(value(&samples, q, &[("model", "")]), 0.0);
        m.queued_changed(-5);
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        assert_eq!(value(&samples, q, &[("model", "m")]), 0.0);
        assert_eq!(m.summary().queued, 0);
    }

    #[test]
    fn a_replica_is_ejected_until_its_time_passes_or_it_is_readmitted() {
        let metrics = Metrics::new();
        let r = metrics.replica("m", "http://a");
        let _ = metrics.replica("m", "http://b");
        let now = Instant::now();
        r.ejected(now + Duration::from_secs(60));
        let ejected = |metrics: &Metrics, replica: &str| {
            let (samples, _) = parse(&metrics.render(0, now));
            value(
                &samples,
                "modelgate_replica_ejected",
                &[("model", "m"), ("replica", replica)],
            )
        };
        assert_eq!(ejected(&metrics, "http://a"), 1.0);
        assert_eq!(ejected(&metrics, "http://b"), 0.0);
        let left = r.ejected_for(now).expect("ejected");
        assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
        // A shorter ejection by another worker does not shorten the view.
        r.ejected(now + Duration::from_secs(1));
        assert!(r.ejected_for(now).expect("still") > Duration::from_secs(59));
        assert_eq!(r.ejected_for(now + Duration::from_secs(61)), None);
        r.readmitted();
        assert_eq!(ejected(&metrics, "http://a"), 0.0);
        // An ejection already over when it is read counts as none.
        r.ejected(now);
        assert_eq!(r.ejected_for(now + Duration::from_millis(1)), None);
    }

    #[test]
    fn a_summary_counts_requests_by_class_and_reads_the_ttfb_histogram() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        for code in [200, 200, 404, 429, 502, 503, 700] {
            m.record(code, ms(5), Some(ms(30)), Some(2), Some(5), None, None);
        }
        m.record(200, ms(5), Some(ms(2_000)), None, None, None, None);
        let s = m.summary();
        assert_eq!(s.requests, 8);
        assert_eq!(s.client_errors, 2);
        assert_eq!(s.errors, 3, "5xx and codes above 599");
        assert_eq!((s.prompt_tokens, s.completion_tokens), (14, 35));
        let bounds = duration_bounds();
        assert_eq!(bounds[0], 0.005);
        assert_eq!(bounds[15], 600.0);
        let at = |le: f64| s.ttfb.cumulative[bounds.iter().position(|&b| b == le).expect("bound")];
        assert_eq!(at(0.025), 0);
        assert_eq!(at(0.05), 7);
        assert_eq!(at(2.5), 8);
        assert_eq!(s.ttfb.cumulative[16], 8);
        assert!((s.ttfb.sum - 2.21).abs() < 1e-9, "{}", s.ttfb.sum);
    }

    #[test]
    fn failed_requests_are_listed_with_their_model_name() {
        let metrics = Metrics::new();
        let a = metrics.model("a");
        let b = metrics.model("b");
        let t = Instant::now();
        metrics.finished(&a, 200, Outcome::Ok, t);
        metrics.finished(&a, 404, Outcome::Rejected, t);
        metrics.finished(&a, 502, Outcome::UpstreamError, t + ms(10));
        metrics.finished(&b, 429, Outcome::Rejected, t + ms(20));
        metrics.finished(&metrics.unrouted(), 503, Outcome::Rejected, t + ms(30));
        let got: Vec<(u16, Option<String>)> = metrics
            .recent_errors()
            .into_iter()
            .map(|(e, name)| (e.status, name))
            .collect();
        assert_eq!(
            got,
            [
                (503, None),
                (429, Some("b".to_owned())),
                (502, Some("a".to_owned()))
            ]
        );
        assert_eq!(metrics.recent_total(), 3);
    }

    #[test]
    fn recorded_requests_are_counted_by_model_and_code() {
        let metrics = Metrics::new();
        let a = metrics.model("a");
        a.record(200, ms(1), None, None, None, None, None);
        a.record(200, ms(1), None, None, None, None, None);
        a.record(502, ms(1), None, None, None, None, None);
        metrics
            .unrouted()
            .record(404, ms(1), None, None, None, None, None);
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let req = "modelgate_requests_total";
        assert_eq!(
            value(&samples, req, &[("model", "a"), ("code", "200")]),
            2.0
        );
        assert_eq!(
            value(&samples, req, &[("model", "a"), ("code", "502")]),
            1.0
        );
        assert_eq!(value(&samples, req, &[("model", ""), ("code", "404")]), 1.0);
        assert_eq!(
            find(&samples, req, &[]).len(),
            3,
            "codes never seen are omitted"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_count_what_was_recorded() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        for (d, t) in [(3, 1), (40, 20), (1_500, 700), (700_000, 1_000)] {
            m.record(
                200,
                ms(d),
                Some(ms(t)),
                Some(1),
                Some(50),
                Some(ms(d)),
                None,
            );
        }
        m.record(504, ms(30_000), None, None, None, None, None);
        let (samples, types) = parse(&metrics.render(0, Instant::now()));
        check_histograms(&samples, &types);
        let dur = "modelgate_request_duration_seconds";
        let m_ = ("model", "m");
        assert_eq!(value(&samples, &format!("{dur}_count"), &[m_]), 5.0);
        let sum = value(&samples, &format!("{dur}_sum"), &[m_]);
        assert!((sum - 731.543).abs() < 1e-9, "{sum}");
        let b = |le: &str| value(&samples, &format!("{dur}_bucket"), &[m_, ("le", le)]);
        assert_eq!(b("0.005"), 1.0);
        assert_eq!(b("0.05"), 2.0);
        assert_eq!(b("2.5"), 3.0);
        assert_eq!(b("30"), 4.0, "a value equal to a bound is in that bucket");
        assert_eq!(b("600"), 4.0);
        assert_eq!(b("+Inf"), 5.0);
        let ttfb = "modelgate_time_to_first_byte_seconds";
        assert_eq!(value(&samples, &format!("{ttfb}_count"), &[m_]), 4.0);
    }

    #[test]
    fn tokens_are_summed_by_kind() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        m.record(200, ms(5), Some(ms(1)), Some(21), Some(7), None, None);
        m.record(200, ms(5), Some(ms(1)), Some(5), None, None, None);
        m.record(200, ms(5), Some(ms(1)), None, None, None, None);
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let tok = "modelgate_tokens_total";
        assert_eq!(
            value(&samples, tok, &[("model", "m"), ("kind", "prompt")]),
            26.0
        );
        assert_eq!(
            value(&samples, tok, &[("model", "m"), ("kind", "completion")]),
            7.0
        );
    }

    #[test]
    fn shared_limit_families_appear_once_a_store_is_configured() {
        let metrics = Metrics::new();
        let (_, types) = parse(&metrics.render(0, Instant::now()));
        assert!(!types.contains_key("modelgate_shared_limits_synced"));
        let status = metrics.rate_buckets().status();
        status.set_mode(SharedMode::Local);
        status.failed_once();
        let (samples, types) = parse(&metrics.render(0, Instant::now()));
        assert_eq!(types["modelgate_shared_limits_syncs_total"], "counter");
        assert_eq!(value(&samples, "modelgate_shared_limits_synced", &[]), 0.0);
        let syncs = "modelgate_shared_limits_syncs_total";
        assert_eq!(value(&samples, syncs, &[("result", "failed")]), 1.0);
        status.set_mode(SharedMode::Synced);
        status.synced_once(3, Duration::from_millis(2));
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        assert_eq!(value(&samples, "modelgate_shared_limits_synced", &[]), 1.0);
        assert_eq!(
            value(&samples, "modelgate_shared_limits_instances", &[]),
            3.0
        );
        assert_eq!(value(&samples, syncs, &[("result", "ok")]), 1.0);
        assert_eq!(
            value(
                &samples,
                "modelgate_shared_limits_sync_duration_seconds",
                &[]
            ),
            0.002
        );
    }

    #[test]
    fn keyed_requests_and_tokens_carry_the_key_label_and_sum_to_the_model() {
        let metrics = Metrics::new();
        let m = metrics.model("chat");
        let alice = m.key("alice");
        assert!(Arc::ptr_eq(&alice, &m.key("alice")), "kept by name");
        let idle = m.key("idle");
        m.record(200, ms(5), None, Some(10), Some(20), None, Some(&alice));
        m.record(429, ms(1), None, None, None, None, Some(&alice));
        m.record(200, ms(5), None, Some(1), Some(2), None, None);
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let req = "modelgate_requests_total";
        let chat = ("model", "chat");
        assert_eq!(
            value(&samples, req, &[chat, ("code", "200"), ("key", "alice")]),
            1.0
        );
        assert_eq!(
            value(&samples, req, &[chat, ("code", "429"), ("key", "alice")]),
            1.0
        );
        // Requests without a key carry no key label, and are counted once.
        let plain: Vec<_> = find(&samples, req, &[chat])
            .into_iter()
            .filter(|s| s.label("key").is_none())
            .collect();
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].value, 1.0);
        let tok = "modelgate_tokens_total";
        assert_eq!(
            value(
                &samples,
                tok,
                &[chat, ("kind", "completion"), ("key", "alice")]
            ),
            20.0
        );
        // A key that never called is not rendered.
        assert!(find(&samples, tok, &[("key", idle.key())]).is_empty());
        assert!(find(&samples, req, &[("key", "idle")]).is_empty());
        let s = m.summary();
        assert_eq!(
            (
                s.requests,
                s.client_errors,
                s.prompt_tokens,
                s.completion_tokens
            ),
            (3, 1, 11, 22)
        );
    }

    #[test]
    fn generation_rate_is_completion_tokens_over_generation_time() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        // 100 tokens in 2 s: 50 tok/s.
        m.record(
            200,
            ms(2100),
            Some(ms(100)),
            Some(9),
            Some(100),
            Some(ms(2000)),
            None,
        );
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let rate = "modelgate_generation_tokens_per_second";
        let m_ = ("model", "m");
        assert_eq!(value(&samples, &format!("{rate}_sum"), &[m_]), 50.0);
        assert_eq!(
            value(&samples, &format!("{rate}_bucket"), &[m_, ("le", "30")]),
            0.0
        );
        assert_eq!(
            value(&samples, &format!("{rate}_bucket"), &[m_, ("le", "50")]),
            1.0
        );
    }

    #[test]
    fn generation_rate_needs_tokens_and_a_positive_duration() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        m.record(200, ms(5), None, None, Some(10), Some(ms(1)), None);
        m.record(200, ms(5), None, Some(3), Some(10), None, None);
        m.record(
            200,
            ms(5),
            None,
            Some(3),
            Some(10),
            Some(Duration::ZERO),
            None,
        );
        m.record(200, ms(5), None, Some(3), None, Some(ms(1)), None);
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let count = value(
            &samples,
            "modelgate_generation_tokens_per_second_count",
            &[("model", "m")],
        );
        assert_eq!(count, 1.0);
    }

    #[test]
    fn unread_usage_is_counted_by_model_and_reason() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        m.usage_unread(Unread::Br);
        m.usage_unread(Unread::Br);
        m.usage_unread(Unread::Corrupt);
        let (samples, types) = parse(&metrics.render(0, Instant::now()));
        let name = "modelgate_usage_unread_total";
        assert_eq!(types.get(name).map(String::as_str), Some("counter"));
        let m_ = ("model", "m");
        assert_eq!(value(&samples, name, &[m_, ("reason", "br")]), 2.0);
        assert_eq!(value(&samples, name, &[m_, ("reason", "corrupt")]), 1.0);
        for reason in ["zstd", "other_encoding", "too_large", "no_buffer"] {
            assert_eq!(value(&samples, name, &[m_, ("reason", reason)]), 0.0);
        }
        assert_eq!(
            value(&samples, name, &[("model", ""), ("reason", "br")]),
            0.0
        );
    }

    #[test]
    fn a_model_without_requests_renders_zero_series() {
        let metrics = Metrics::new();
        let _ = metrics.model("idle");
        let (samples, types) = parse(&metrics.render(0, Instant::now()));
        check_histograms(&samples, &types);
        let m_ = ("model", "idle");
        for name in [
            "modelgate_request_duration_seconds_count",
            "modelgate_time_to_first_byte_seconds_count",
            "modelgate_generation_tokens_per_second_count",
            "modelgate_upstream_connect_errors_total",
            "modelgate_upstream_retries_total",
        ] {
            assert_eq!(value(&samples, name, &[m_]), 0.0, "{name}");
        }
        assert_eq!(
            value(
                &samples,
                "modelgate_tokens_total",
                &[m_, ("kind", "prompt")]
            ),
            0.0
        );
    }

    #[test]
    fn models_render_sorted_with_unrouted_first() {
        let metrics = Metrics::new();
        for name in ["zeta", "alpha", "Mid"] {
            let _ = metrics.model(name);
        }
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let order: Vec<&str> = find(&samples, "modelgate_upstream_retries_total", &[])
            .iter()
            .map(|s| s.label("model").expect("model"))
            .collect();
        assert_eq!(order, ["", "Mid", "alpha", "zeta"]);
    }

    #[test]
    fn codes_render_in_numeric_order() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        for code in [503, 200, 404, 200, 99] {
            m.record(code, ms(1), None, None, None, None, None);
        }
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let codes: Vec<&str> = find(&samples, "modelgate_requests_total", &[])
            .iter()
            .map(|s| s.label("code").expect("code"))
            .collect();
        assert_eq!(codes, ["99", "200", "404", "503"]);
    }

    #[test]
    fn codes_above_599_are_counted_as_other() {
        let metrics = Metrics::new();
        let m = metrics.model("m");
        m.record(600, ms(1), None, None, None, None, None);
        m.record(u16::MAX, ms(1), None, None, None, None, None);
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let other = value(
            &samples,
            "modelgate_requests_total",
            &[("model", "m"), ("code", "other")],
        );
        assert_eq!(other, 2.0);
    }

    #[test]
    fn the_same_name_gives_the_same_stats_across_lookups() {
        let metrics = Metrics::new();
        metrics.model("m").connect_error();
        // A reload looks the model up again: the count carries over.
        metrics.model("m").connect_error();
        metrics.model("m").retry();
        assert!(Arc::ptr_eq(&metrics.model("m"), &metrics.model("m")));
        let (samples, _) = parse(&metrics.render(0, Instant::now()));
        let m_ = ("model", "m");
        assert_eq!(
            value(&samples, "modelgate_upstream_connect_errors_total", &[m_]),
            2.0
        );
        assert_eq!(
            value(&samples, "modelgate_upstream_retries_total", &[m_]),
            1.0
        );
    }

    #[test]
    fn worker_counters_are_summed_and_in_flight_is_passed_through() {
        let metrics = Metrics::new();
        let w1 = metrics.worker();
        let w2 = metrics.worker();
        w1.add_received(100);
        w2.add_received(50);
        w1.add_sent(7);
        w2.add_sent(3);
        w1.set_pool(2, 10);
        w2.set_pool(1, 5);
        w2.set_pool(4, 6);
        w1.add_log_dropped(2);
        w2.add_log_dropped(1);
        let (samples, _) = parse(&metrics.render(17, Instant::now()));
        assert_eq!(
            value(&samples, "modelgate_access_log_dropped_total", &[]),
            3.0
        );
        assert_eq!(
            value(&samples, "modelgate_received_bytes_total", &[]),
            150.0
        );
        assert_eq!(value(&samples, "modelgate_sent_bytes_total", &[]), 10.0);
        assert_eq!(
            value(&samples, "modelgate_upstream_idle_connections", &[]),
            6.0
        );
        assert_eq!(value(&samples, "modelgate_client_connections", &[]), 16.0);
        assert_eq!(value(&samples, "modelgate_in_flight_requests", &[]), 17.0);
    }

    #[test]
    fn concurrent_records_from_several_threads_sum_exactly() {
        let metrics = Metrics::new();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let m = metrics.model(if t % 2 == 0 { "even" } else { "odd" });
                let w = metrics.worker();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        let code = if i % 10 == 0 { 500 } else { 200 };
                        m.record(code, ms(i % 50), Some(ms(1)), Some(2), Some(3), None, None);
                        w.add_received(1);
                        w.add_sent(2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let (samples, types) = parse(&metrics.render(0, Instant::now()));
        check_histograms(&samples, &types);
        for model in ["even", "odd"] {
            let m_ = ("model", model);
            let req = "modelgate_requests_total";
            assert_eq!(value(&samples, req, &[m_, ("code", "200")]), 3600.0);
            assert_eq!(value(&samples, req, &[m_, ("code", "500")]), 400.0);
            let count = "modelgate_request_duration_seconds_count";
            assert_eq!(value(&samples, count, &[m_]), 4000.0);
            let tok = "modelgate_tokens_total";
            assert_eq!(value(&samples, tok, &[m_, ("kind", "prompt")]), 8000.0);
            assert_eq!(value(&samples, tok, &[m_, ("kind", "completion")]), 12000.0);
        }
        assert_eq!(
            value(&samples, "modelgate_received_bytes_total", &[]),
            8000.0
        );
        assert_eq!(value(&samples, "modelgate_sent_bytes_total", &[]), 16000.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        let name = "we\"ird\\na\nme";
        metrics
            .model(name)
            .record(200, ms(1), None, None, None, None, None);
        let text = metrics.render(0, Instant::now());
        assert!(text.contains(r#"model="we\"ird\\na\nme""#), "{text}");
        let (samples, _) = parse(&text);
        let req = find(&samples, "modelgate_requests_total", &[("model", name)]);
        assert_eq!(req.len(), 1);
    }
}
