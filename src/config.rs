//! The config file (SPEC.md §2): parsing, strict validation with every problem reported by key
//! path, and secret expansion.
//!
//! Owns: the JSON reader (`json`), the string forms of URLs and listen addresses (`addr`),
//! and the walk that turns a document into a [`Config`]. Everything is pure over the text and
//! a [`SecretEnv`]; the only I/O is through that trait (secret files, and checking that
//! `caFile`/TLS files are readable), so tests run without a real environment.
//!
//! Rules: every problem is collected (unknown keys and semantic errors together), each named by
//! its key path (`models.gpt.headers.Authorization`, `authTokens[0]`); no message ever carries
//! a secret's value; `null` is the same as leaving an optional key out.

mod addr;
mod json;
mod model_extras;
mod profile;
mod replicas;
mod shared;
mod tokens;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secrets::{self, Secret, SecretEnv};

pub use addr::{listen_host, parse_listen, parse_upstream_url};
use json::Json;
pub use replicas::{ReplicaSpec, Replicas};
pub use shared::SharedLimits;
pub use tokens::TokenRules;

/// A validated config with secrets expanded (or, for `--check`, left as written).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Listen>,
    /// Every bearer token: `authTokens` entries, then `api_key`, then `api_keys` values.
    pub auth_tokens: Vec<Secret>,
    /// Each token's model scope and rate limit, at the same index as in `auth_tokens`.
    pub token_rules: Vec<TokenRules>,
    /// 0 = no cap.
    pub max_body_bytes: u64,
    /// 0 = no cap.
    pub max_concurrent_requests: u64,
    /// Global byte budget of the buffer pools (key `maxBufferBytes`, default 1 GiB).
    pub max_buffer_bytes: u64,
    /// Client connections per process (key `maxConnections`, default 65536).
    pub max_connections: usize,
    pub timeouts: Timeouts,
    pub access_log: bool,
    /// 0 = one per available core.
    pub workers: usize,
    /// How long a worker that just moved bytes polls before it sleeps (key `busyPoll`, in
    /// microseconds; 0 = off). Adaptive: see `worker/spin.rs`.
    pub busy_poll: Duration,
    pub watch_config: bool,
    pub models: BTreeMap<String, Model>,
    /// Backends whose `GET /v1/models` is routed (key `discover`, plain `http://` or
    /// `unix://`), in probe order: the first one serving a name gets it.
    pub discover: Vec<Discover>,
    /// How often the `discover` backends are probed again (key `discoverInterval`).
    pub discover_interval: Duration,
    /// The store that shares keys' limits between instances (key `sharedLimits`); None:
    /// limits are per process.
    pub shared_limits: Option<SharedLimits>,
}

impl Config {
    /// Models shown by `/v1/models` and counted by `/health` (not `unlisted`).
    pub fn listed_model_count(&self) -> usize {
        self.models.values().filter(|m| !m.unlisted).count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `":8080"` means `0.0.0.0:8080`.
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// `{"address": "HOST:PORT", "tls": {"cert": PATH, "key": PATH}}`: HTTPS on TCP. The paths
    /// are resolved (`${cred:NAME}`, relative → `$CREDENTIALS_DIRECTORY`) and were readable at
    /// load time; with `--check` they are kept as written.
    TcpTls {
        addr: SocketAddr,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Listen {
    /// Loopback TCP and unix sockets are local; an open (no `authTokens`) gateway on anything
    /// else deserves a startup warning.
    pub fn is_local(&self) -> bool {
        match self {
            Listen::Tcp(a) | Listen::TcpTls { addr: a, .. } => a.ip().is_loopback(),
            Listen::Unix(_) => true,
        }
    }
}

impl fmt::Display for Listen {
    /// The form for the startup line: `127.0.0.1:8080`, `unix:/run/x.sock`,
    /// `https://0.0.0.0:8443`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::TcpTls { addr, .. } => write!(f, "https://{addr}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub connect: Duration,
    /// None = wait as long as `idle` allows (LLM queues can be long).
    pub first_byte: Option<Duration>,
    pub idle: Duration,
    /// Idle keep-alive between requests (key `keepAlive`, default 60 s).
    pub keep_alive: Duration,
    /// How long an idle connection to an upstream is kept for reuse (key
    /// `upstreamKeepAlive`, default 4 s: under the 5 s of uvicorn, which serves vLLM).
    pub upstream_keep_alive: Duration,
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            first_byte: None,
            idle: Duration::from_secs(600),
            keep_alive: Duration::from_secs(60),
            upstream_keep_alive: Duration::from_secs(4),
            shutdown: Duration::from_secs(30),
        }
    }
}

/// One `discover` backend: a URL string, or `{"url": …, "headers": {…}}`.
#[derive(Debug, Clone)]
pub struct Discover {
    pub upstream: Upstream,
    /// Sent with the probe and set on every request routed to a discovered model, like a
    /// model's `headers` (an API key, typically).
    pub headers: Vec<(String, Secret)>,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub upstream: Upstream,
    /// Applied last to the upstream request, replacing same-named headers.
    pub headers: Vec<(String, Secret)>,
    pub unlisted: bool,
    pub ca_file: Option<PathBuf>,
    /// More names that route here (`aliases`), listed alongside the model.
    pub aliases: Vec<String>,
    /// Shown in `/v1/models` (nginx-llm-proxy's `description`).
    pub description: Option<String>,
    /// This model's body cap (`maxBodyBytes`, 0 = none); None = the global one.
    pub max_body_bytes: Option<u64>,
    /// Several backends (`urls`) and how to balance over them; empty list: `upstream` alone.
    pub replicas: Replicas,
    /// Virtual model: the upstream's name and the parameter profile (empty = byte-for-byte).
    pub profile: crate::profile::Profile,
    /// Requests with image, audio or file parts go to this model instead (key `routeMedia`).
    pub route_media: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
    Unix,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    pub scheme: Scheme,
    /// Host name or IP literal without brackets; empty for unix.
    pub host: String,
    /// Explicit or scheme default (80/443); 0 for unix.
    pub port: u16,
    /// The `Host` header value: as written in the URL (`[::1]:9000`, `api.openai.com`);
    /// `localhost` for unix.
    pub authority: String,
    /// Socket path for `unix:///abs/path.sock`.
    pub unix_path: Option<PathBuf>,
    /// `""` or `/base` (no trailing slash).
    pub base_path: String,
    /// Query in the model URL without `?`, appended before the client's query.
    pub query: Option<String>,
}

impl fmt::Display for Upstream {
    /// The origin for logs and the access log's `upstream` field: `https://api.openai.com`,
    /// `http://[::1]:9000`, `unix:/run/llm.sock`. Never has a path, query or credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.scheme, &self.unix_path) {
            (Scheme::Unix, Some(p)) => write!(f, "unix:{}", p.display()),
            (Scheme::Https, _) => write!(f, "https://{}", self.authority),
            _ => write!(f, "http://{}", self.authority),
        }
    }
}

/// One problem with the config, named by its key path (`models.gpt.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Defaults of the top-level numbers (SPEC.md §2 and the extensions).
pub const DEFAULT_LISTEN: &str = ":8080";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 104_857_600;
pub const DEFAULT_MAX_BUFFER_BYTES: u64 = 1 << 30;
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
/// More threads than this is a typo, not a machine.
pub const MAX_WORKERS: u64 = 1024;
/// `busyPoll` default, in microseconds: longer than a loopback or LAN round trip through a
/// fast upstream on a VM whose idle vCPUs halt (BENCHMARKS.md, issue 19).
pub const DEFAULT_BUSY_POLL_US: u64 = 200;
/// Spinning longer than this before sleeping is never worth it.
pub const MAX_BUSY_POLL_US: u64 = 10_000;
/// Timeouts above a year are typos; they would also risk `Instant` overflow downstream.
pub const MAX_TIMEOUT_SECS: f64 = 31_536_000.0;
/// `discoverInterval`: how often discovered backends are probed again.
pub const DEFAULT_DISCOVER_INTERVAL: Duration = Duration::from_secs(5);
/// Probing more often than this would only load the backends.
pub const MIN_DISCOVER_INTERVAL: Duration = Duration::from_millis(100);

/// Headers modelgate owns on the upstream request: setting them per model would break framing
/// (request smuggling) or connection management.
pub const MANAGED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

const TOP_KEYS: &[&str] = &[
    "listen",
    "host",
    "port",
    "authTokens",
    "maxBodyBytes",
    "maxConcurrentRequests",
    "maxBufferBytes",
    "maxConnections",
    "timeouts",
    "accessLog",
    "workers",
    "busyPoll",
    "watchConfig",
    "models",
    "discover",
    "discoverInterval",
    "api_key",
    "api_keys",
    "sharedLimits",
];
const TIMEOUT_KEYS: &[&str] = &[
    "header",
    "connect",
    "firstByte",
    "idle",
    "keepAlive",
    "upstreamKeepAlive",
    "shutdown",
];
const MODEL_KEYS: &[&str] = &[
    "url",
    "headers",
    "unlisted",
    "caFile",
    "aliases",
    "description",
    "maxBodyBytes",
    "backend",
    "urls",
    "balance",
    "retries",
    "ejectOnStatus",
    "retryOnStatus",
    "ejectTime",
    "ejectTimeMax",
    "maxConcurrentRequests",
    "queue",
    "model",
    "defaults",
    "clamp",
    "deny",
    "routeMedia",
    "healthCheck",
];
const LISTEN_KEYS: &[&str] = &["address", "tls"];
const DISCOVER_KEYS: &[&str] = &["url", "headers"];
const TLS_KEYS: &[&str] = &["cert", "key"];

/// Parses and validates `text`. With `env` = None, secret references are only checked for
/// syntax and kept as written (`--check`); with Some, they are expanded.
pub fn from_str(text: &str, env: Option<&dyn SecretEnv>) -> Result<Config, Vec<Problem>> {
    let root = json::parse(text).map_err(|e| {
        vec![Problem {
            path: String::new(),
            message: e.to_string(),
        }]
    })?;
    let mut cx = Cx {
        problems: Vec::new(),
        env,
    };
    let config = cx.config(&root);
    match config {
        Some(config) if cx.problems.is_empty() => Ok(config),
        _ => Err(cx.problems),
    }
}

/// Reads the file at `path` and calls [`from_str`]; an unreadable file is one problem.
pub fn load(path: &Path, env: Option<&dyn SecretEnv>) -> Result<Config, Vec<Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }]
    })?;
    from_str(&text, env)
}

/// True for an RFC 9110 `token` (a valid header field name).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// The nearest of `known` to `key` (case-insensitive edit distance), when close enough to be
/// a plausible typo, or when one is a prefix of the other (`maxBody` → `maxBodyBytes`).
pub fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for &k in known {
        let kl = k.to_ascii_lowercase();
        let d = edit_distance(&lower, &kl);
        let close = d <= (kl.len() / 3).max(1)
            || (lower.len() >= 3 && (kl.starts_with(&lower) || lower.starts_with(&kl)));
        if close && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

/// Edit distance over chars where swapping two neighbours counts as one edit (optimal string
/// alignment): `kye` is one typo away from `key`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The members of an object, looked up by key (first occurrence; duplicates are reported).
struct Fields<'a>(&'a [(String, Json)]);

impl<'a> Fields<'a> {
    /// The value of `key`; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Json> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| !matches!(v, Json::Null))
    }
}

/// The validation walk: collects problems instead of stopping at the first.
struct Cx<'e> {
    problems: Vec<Problem>,
    env: Option<&'e dyn SecretEnv>,
}

impl Cx<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn wrong_type(&mut self, path: &str, expected: &str, found: &Json) {
        self.problem(path, format!("expected {expected}, found {}", found.kind()));
    }

    /// An object with only `known` keys, each at most once. Unknown keys and duplicates are
    /// reported, and the object is still returned so its known keys get checked too.
    fn fields<'a>(&mut self, path: &str, v: &'a Json, known: &[&str]) -> Option<Fields<'a>> {
        let Json::Object(members) = v else {
            self.wrong_type(path, "an object", v);
            return None;
        };
        self.check_keys(path, members, Some(known));
        Some(Fields(members))
    }

    /// Reports duplicate keys and, when `known` is given, unknown keys with a suggestion.
    fn check_keys(&mut self, path: &str, members: &[(String, Json)], known: Option<&[&str]>) {
        for (i, (key, _)) in members.iter().enumerate() {
            let key_path = join(path, key);
            if members[..i].iter().any(|(k, _)| k == key) {
                self.problem(&key_path, "is given twice");
                continue;
            }
            let Some(known) = known else { continue };
            if known.contains(&key.as_str()) {
                continue;
            }
            let mut message = "unknown key".to_string();
            if let Some(hint) = model_extras::nginx_llm_proxy_hint(key) {
                message.push_str(&format!(" ({hint})"));
            } else if let Some(s) = suggest(key, known) {
                message.push_str(&format!(" (did you mean \"{s}\"?)"));
            } else if known == MODEL_KEYS && looks_like_api_key(key) {
                message.push_str(
                    " (send upstream credentials as a header: \"headers\": {\"Authorization\": \"Bearer ${env:KEY}\"})",
                );
            }
            self.problem(&key_path, message);
        }
    }

    fn bool(&mut self, path: &str, v: Option<&Json>, default: bool) -> bool {
        match v {
            None => default,
            Some(Json::Bool(b)) => *b,
            Some(other) => {
                self.wrong_type(path, "true or false", other);
                default
            }
        }
    }

    fn str<'a>(&mut self, path: &str, v: &'a Json) -> Option<&'a str> {
        match v {
            Json::String(s) => Some(s),
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    /// A non-negative whole number (`1e6` is fine, `1.5` and `-1` are not).
    fn uint(&mut self, path: &str, v: &Json) -> Option<u64> {
        let Json::Number(text) = v else {
            self.wrong_type(path, "a whole number", v);
            return None;
        };
        if text.starts_with('-') && text.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
            self.problem(path, "must not be negative");
            return None;
        }
        if let Ok(n) = text.trim_start_matches('-').parse::<u64>() {
            return Some(n);
        }
        match text.parse::<f64>() {
            Ok(f) if f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&f) => {
                // Exact: whole and within f64's integer range.
                Some(f as u64)
            }
            Ok(f) if f.fract() == 0.0 => {
                self.problem(path, "is too large");
                None
            }
            _ => {
                self.problem(path, "must be a whole number");
                None
            }
        }
    }

    fn uint_in(&mut self, path: &str, v: Option<&Json>, default: u64, min: u64, max: u64) -> u64 {
        let Some(v) = v else { return default };
        match self.uint(path, v) {
            Some(n) if n < min => {
                self.problem(path, format!("must be at least {min}"));
                default
            }
            Some(n) if n > max => {
                self.problem(path, format!("must be at most {max}"));
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    /// Seconds as a JSON number (fractions allowed). `allow_zero`: 0 means "none" (None).
    fn seconds(&mut self, path: &str, v: &Json, allow_zero: bool) -> Option<Option<Duration>> {
        let Json::Number(text) = v else {
            self.wrong_type(path, "a number of seconds", v);
            return None;
        };
        let secs = text.parse::<f64>().unwrap_or(f64::NAN);
        if secs == 0.0 && allow_zero {
            return Some(None);
        }
        if secs.is_nan() || secs <= 0.0 {
            let msg = if allow_zero {
                "must be a positive number of seconds, or 0 for none"
            } else {
                "must be a positive number of seconds"
            };
            self.problem(path, msg);
            return None;
        }
        if secs > MAX_TIMEOUT_SECS {
            self.problem(
                path,
                format!("must be at most {MAX_TIMEOUT_SECS} seconds (one year)"),
            );
            return None;
        }
        match Duration::try_from_secs_f64(secs) {
            Ok(d) => Some(Some(d)),
            Err(_) => {
                self.problem(path, "is not a valid number of seconds");
                None
            }
        }
    }

    /// Expands (or, for `--check`, syntax-checks) a secret template.
    fn secret(&mut self, path: &str, template: &str) -> Option<Secret> {
        let result = match self.env {
            None => secrets::validate_syntax(template).map(|()| Secret::new(template.into())),
            Some(env) => secrets::expand(template, env),
        };
        match result {
            Ok(s) => Some(s),
            Err(e) => {
                self.problem(path, e.to_string());
                None
            }
        }
    }

    /// Checks that a file modelgate will need later can be read now, so a typo fails at
    /// startup rather than on the first request. Skipped by `--check` (it reads nothing).
    fn readable(&mut self, path: &str, what: &str, file: &Path) {
        let Some(env) = self.env else { return };
        if let Err(e) = env.read_file(file) {
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => e.to_string(),
            };
            self.problem(
                path,
                format!("cannot read {what} {}: {reason}", file.display()),
            );
        }
    }

    fn config(&mut self, root: &Json) -> Option<Config> {
        let f = self.fields("", root, TOP_KEYS)?;
        let listen = self.listen_all(&f);
        let (auth_tokens, token_rules) = self.all_tokens(&f);
        let max_body_bytes = self.uint_in(
            "maxBodyBytes",
            f.get("maxBodyBytes"),
            DEFAULT_MAX_BODY_BYTES,
            0,
            u64::MAX,
        );
        let max_concurrent_requests = self.uint_in(
            "maxConcurrentRequests",
            f.get("maxConcurrentRequests"),
            0,
            0,
            u64::MAX,
        );
        let max_buffer_bytes = self.uint_in(
            "maxBufferBytes",
            f.get("maxBufferBytes"),
            DEFAULT_MAX_BUFFER_BYTES,
            1,
            u64::MAX,
        );
        let max_connections = self.uint_in(
            "maxConnections",
            f.get("maxConnections"),
            DEFAULT_MAX_CONNECTIONS as u64,
            1,
            usize::MAX as u64,
        );
        let timeouts = self.timeouts(f.get("timeouts"));
        let access_log = self.bool("accessLog", f.get("accessLog"), true);
        let workers = self.uint_in("workers", f.get("workers"), 0, 0, MAX_WORKERS);
        let busy_poll = self.uint_in(
            "busyPoll",
            f.get("busyPoll"),
            DEFAULT_BUSY_POLL_US,
            0,
            MAX_BUSY_POLL_US,
        );
        let watch_config = self.bool("watchConfig", f.get("watchConfig"), false);
        let discover = self.discover(f.get("discover"));
        let discover_interval = match f.get("discoverInterval") {
            Some(v) => match self.seconds("discoverInterval", v, false).flatten() {
                Some(d) if d < MIN_DISCOVER_INTERVAL => {
                    self.problem("discoverInterval", "must be at least 0.1 seconds");
                    DEFAULT_DISCOVER_INTERVAL
                }
                Some(d) => d,
                None => DEFAULT_DISCOVER_INTERVAL,
            },
            None => DEFAULT_DISCOVER_INTERVAL,
        };
        let models = self.models(f.get("models"), !discover.is_empty());
        let shared_limits = self.shared_limits(f.get("sharedLimits"));
        Some(Config {
            listen,
            auth_tokens,
            token_rules,
            max_body_bytes,
            max_concurrent_requests,
            max_buffer_bytes,
            // Bounded by usize::MAX above and MAX_WORKERS below.
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            timeouts,
            access_log,
            workers: usize::try_from(workers).unwrap_or(0),
            busy_poll: Duration::from_micros(busy_poll),
            watch_config,
            models,
            discover,
            discover_interval,
            shared_limits,
        })
    }

    /// `discover`: backends whose `/v1/models` answers become routes, each a URL string or
    /// `{"url": …, "headers": {…}}`. Probes are plain HTTP from the discovery thread, so
    /// `https://` is refused here rather than failing later.
    fn discover(&mut self, v: Option<&Json>) -> Vec<Discover> {
        let Some(v) = v else { return Vec::new() };
        let Json::Array(items) = v else {
            self.wrong_type("discover", "a list of backend URLs", v);
            return Vec::new();
        };
        let mut out: Vec<Discover> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = index("discover", i);
            let (url_path, url, headers) = match item {
                Json::Object(_) => {
                    let Some(f) = self.fields(&path, item, DISCOVER_KEYS) else {
                        continue;
                    };
                    let headers = self.headers(&join(&path, "headers"), f.get("headers"));
                    let url_path = join(&path, "url");
                    let Some(url) = f.get("url") else {
                        self.problem(&url_path, "is required");
                        continue;
                    };
                    (url_path, url, headers)
                }
                _ => (path.clone(), item, Some(Vec::new())),
            };
            let Some(url) = self.str(&url_path, url) else {
                continue;
            };
            let upstream = match parse_upstream_url(url) {
                Ok(up) if up.scheme == Scheme::Https => {
                    self.problem(
                        &url_path,
                        "discovery probes plain http:// or unix:// backends; name an https:// backend under \"models\"",
                    );
                    continue;
                }
                Ok(up) if up.query.is_some() => {
                    self.problem(&url_path, "must not have a query (\"?...\")");
                    continue;
                }
                Ok(up) if out.iter().any(|d| d.upstream == up) => {
                    self.problem(&url_path, "is listed twice");
                    continue;
                }
                Ok(up) => up,
                Err(e) => {
                    self.problem(&url_path, e);
                    continue;
                }
            };
            if let Some(headers) = headers {
                out.push(Discover { upstream, headers });
            }
        }
        out
    }

    /// `listen` (string, object or list) or LLMhop's `host`/`port`; never both.
    fn listen_all(&mut self, f: &Fields<'_>) -> Vec<Listen> {
        let host = f.get("host");
        let port = f.get("port");
        if let Some(v) = f.get("listen") {
            if host.is_some() || port.is_some() {
                let key = if host.is_some() { "host" } else { "port" };
                self.problem(
                    key,
                    "cannot be used together with \"listen\" (\"host\"/\"port\" is LLMhop's other form of the same setting; keep one)",
                );
            }
            return self.listen(v);
        }
        if host.is_none() && port.is_none() {
            return match parse_listen(DEFAULT_LISTEN) {
                Ok(l) => vec![l],
                Err(e) => {
                    self.problem("listen", e);
                    Vec::new()
                }
            };
        }
        let ip = match host {
            None => Some(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            Some(h) => self.str("host", h).and_then(|h| match listen_host(h) {
                Ok(ip) => Some(ip),
                Err(e) => {
                    self.problem("host", e);
                    None
                }
            }),
        };
        let port = self.uint_in("port", port, 8080, 1, 65535);
        match ip {
            Some(ip) => vec![Listen::Tcp(SocketAddr::new(ip, port as u16))],
            None => Vec::new(),
        }
    }

    fn listen(&mut self, v: &Json) -> Vec<Listen> {
        let mut out = Vec::new();
        match v {
            Json::Array(items) => {
                if items.is_empty() {
                    self.problem("listen", "must list at least one address");
                }
                for (i, item) in items.iter().enumerate() {
                    let path = index("listen", i);
                    if let Some(l) = self.listen_one(&path, item) {
                        if out.contains(&l) {
                            self.problem(&path, "is listed twice");
                        } else {
                            out.push(l);
                        }
                    }
                }
            }
            other => out.extend(self.listen_one("listen", other)),
        }
        out
    }

    fn listen_one(&mut self, path: &str, v: &Json) -> Option<Listen> {
        match v {
            Json::String(s) => self.listen_address(path, s),
            Json::Object(_) => self.listen_object(path, v),
            other => {
                self.wrong_type(path, "an address string or {\"address\": …}", other);
                None
            }
        }
    }

    fn listen_address(&mut self, path: &str, s: &str) -> Option<Listen> {
        match parse_listen(s) {
            Ok(l) => Some(l),
            Err(e) => {
                self.problem(path, e);
                None
            }
        }
    }

    fn listen_object(&mut self, path: &str, v: &Json) -> Option<Listen> {
        let f = self.fields(path, v, LISTEN_KEYS)?;
        let addr_path = join(path, "address");
        let listen = match f.get("address") {
            None => {
                self.problem(&addr_path, "is required");
                None
            }
            Some(a) => self
                .str(&addr_path, a)
                .and_then(|s| self.listen_address(&addr_path, s)),
        };
        let Some(tls) = f.get("tls") else {
            return listen;
        };
        let tls_path = join(path, "tls");
        let tls = self.tls(&tls_path, tls);
        match (listen?, tls?) {
            (Listen::Tcp(addr), (cert, key)) => Some(Listen::TcpTls { addr, cert, key }),
            (Listen::Unix(_), _) => {
                self.problem(&tls_path, "TLS is only supported on TCP addresses");
                None
            }
            (l @ Listen::TcpTls { .. }, _) => Some(l),
        }
    }

    fn tls(&mut self, path: &str, v: &Json) -> Option<(PathBuf, PathBuf)> {
        let f = self.fields(path, v, TLS_KEYS)?;
        let cert = self.tls_file(&join(path, "cert"), f.get("cert"), "TLS certificate");
        let key = self.tls_file(&join(path, "key"), f.get("key"), "TLS key");
        Some((cert?, key?))
    }

    /// A TLS file path: a literal path, or exactly `${cred:NAME}` which stands for the path
    /// `$CREDENTIALS_DIRECTORY/NAME` (SPEC.md §10). Relative paths resolve like `${file:}`.
    fn tls_file(&mut self, path: &str, v: Option<&Json>, what: &str) -> Option<PathBuf> {
        let Some(v) = v else {
            self.problem(path, "is required");
            return None;
        };
        let s = self.str(path, v)?;
        if s.is_empty() {
            self.problem(path, "must not be empty");
            return None;
        }
        let cred = s.strip_prefix("${cred:").and_then(|r| r.strip_suffix('}'));
        if cred.is_none() && s.contains("${") {
            self.problem(
                path,
                "only a whole \"${cred:NAME}\" reference is allowed in a TLS path",
            );
            return None;
        }
        let Some(env) = self.env else {
            // `--check`: syntax only, the path is kept as written.
            return match secrets::validate_syntax(s) {
                Ok(()) => Some(PathBuf::from(s)),
                Err(e) => {
                    self.problem(path, e.to_string());
                    None
                }
            };
        };
        let resolved = match cred {
            Some(name) => secrets::credential_path(name, env),
            None => Ok(secrets::resolve_file_path(s, env)),
        };
        match resolved {
            Ok(p) => {
                self.readable(path, what, &p);
                Some(p)
            }
            Err(e) => {
                self.problem(path, e.to_string());
                None
            }
        }
    }

    fn timeouts(&mut self, v: Option<&Json>) -> Timeouts {
        let mut t = Timeouts::default();
        let Some(v) = v else { return t };
        let Some(f) = self.fields("timeouts", v, TIMEOUT_KEYS) else {
            return t;
        };
        let slots: [(&str, &mut Duration); 6] = [
            ("header", &mut t.header),
            ("connect", &mut t.connect),
            ("idle", &mut t.idle),
            ("keepAlive", &mut t.keep_alive),
            ("upstreamKeepAlive", &mut t.upstream_keep_alive),
            ("shutdown", &mut t.shutdown),
        ];
        for (key, slot) in slots {
            if let Some(v) = f.get(key) {
                if let Some(Some(d)) = self.seconds(&join("timeouts", key), v, false) {
                    *slot = d;
                }
            }
        }
        if let Some(v) = f.get("firstByte") {
            if let Some(d) = self.seconds("timeouts.firstByte", v, true) {
                t.first_byte = d;
            }
        }
        t
    }

    /// `models`; with a `discover` list it may be absent or empty (discovery fills it).
    fn models(&mut self, v: Option<&Json>, discovering: bool) -> BTreeMap<String, Model> {
        let mut out = BTreeMap::new();
        let Some(v) = v else {
            if !discovering {
                self.problem(
                    "models",
                    "is required: an object of model name → {\"url\": \"http://…\"} (or give a \"discover\" list)",
                );
            }
            return out;
        };
        let Json::Object(members) = v else {
            self.wrong_type("models", "an object of model name → {\"url\": …}", v);
            return out;
        };
        if members.is_empty() && !discovering {
            self.problem("models", "must name at least one model");
            return out;
        }
        self.check_keys("models", members, None);
        for (i, (name, m)) in members.iter().enumerate() {
            if members[..i].iter().any(|(k, _)| k == name) {
                continue; // reported by check_keys
            }
            let path = join("models", name);
            if name.is_empty() {
                self.problem("models.\"\"", "a model name must not be empty");
                continue;
            }
            if let Some(model) = self.model(&path, m) {
                out.insert(name.clone(), model);
            }
        }
        self.check_aliases(&out);
        self.media_routes(&out);
        out
    }

    fn model(&mut self, path: &str, v: &Json) -> Option<Model> {
        let f = self.fields(path, v, MODEL_KEYS)?;
        let url_path = join(path, "url");
        let has_urls = f.get("urls").is_some();
        let upstream = match f.get("url") {
            None if f.get("backend").is_some() => self.backend(path, &f),
            None if has_urls => None,
            None => {
                self.problem(&url_path, "is required");
                None
            }
            Some(u) => self
                .str(&url_path, u)
                .and_then(|u| match parse_upstream_url(u) {
                    Ok(up) => Some(up),
                    Err(e) => {
                        self.problem(&url_path, e);
                        None
                    }
                }),
        };
        let headers = self.headers(&join(path, "headers"), f.get("headers"));
        let unlisted = self.bool(&join(path, "unlisted"), f.get("unlisted"), false);
        let ca_file = self.ca_file(&join(path, "caFile"), f.get("caFile"), upstream.as_ref());
        let profile = self.profile(path, &f);
        let route_media = self.route_media(path, f.get("routeMedia"));
        if f.get("url").is_some() && f.get("backend").is_some() {
            self.backend(path, &f); // reports the clash
        }
        let extras = self.model_extras(path, &f)?;
        let replicas = self.replicas(path, &f, upstream.as_ref(), ca_file.as_ref());
        let replicas = replicas?;
        let upstream = match upstream {
            Some(up) => up,
            None if f.get("url").is_none() => replicas.list.first()?.upstream.clone(),
            None => return None,
        };
        Some(Model {
            upstream,
            headers: headers?,
            unlisted,
            ca_file: ca_file?,
            aliases: extras.aliases,
            description: extras.description,
            max_body_bytes: extras.max_body_bytes,
            replicas,
            profile: profile?,
            route_media,
        })
    }

    /// `caFile`: only meaningful for `https`; must be readable (except with `--check`).
    /// Returns Some(None) when absent, None on a problem.
    fn ca_file(
        &mut self,
        path: &str,
        v: Option<&Json>,
        upstream: Option<&Upstream>,
    ) -> Option<Option<PathBuf>> {
        let Some(v) = v else { return Some(None) };
        let s = self.str(path, v)?;
        if s.is_empty() {
            self.problem(path, "must not be empty");
            return None;
        }
        if let Some(up) = upstream {
            if up.scheme != Scheme::Https {
                self.problem(path, "is only allowed with an https:// url");
                return None;
            }
        }
        let file = PathBuf::from(s);
        self.readable(path, "CA file", &file);
        Some(Some(file))
    }

    /// Per-model headers. Returns None on a problem (so the model is not half-built).
    fn headers(&mut self, path: &str, v: Option<&Json>) -> Option<Vec<(String, Secret)>> {
        let Some(v) = v else { return Some(Vec::new()) };
        let Json::Object(members) = v else {
            self.wrong_type(path, "an object of header name → value", v);
            return None;
        };
        let before = self.problems.len();
        let mut out: Vec<(String, Secret)> = Vec::new();
        for (i, (name, value)) in members.iter().enumerate() {
            let hpath = join(path, name);
            if let Some((first, _)) = members[..i]
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                let msg = if first == name {
                    "is given twice".to_string()
                } else {
                    format!("repeats header \"{first}\" (header names are case-insensitive)")
                };
                self.problem(&hpath, msg);
                continue;
            }
            if !is_header_name(name) {
                self.problem(&hpath, "is not a valid header name");
                continue;
            }
            if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                self.problem(
                    &hpath,
                    "is managed by modelgate (message framing and connections) and cannot be set per model",
                );
                continue;
            }
            let Some(template) = self.str(&hpath, value) else {
                continue;
            };
            if has_bad_value_byte(template) {
                self.problem(&hpath, "value must not contain CR, LF or NUL");
                continue;
            }
            let Some(secret) = self.secret(&hpath, template) else {
                continue;
            };
            if has_bad_value_byte(secret.expose()) {
                self.problem(&hpath, "expanded value contains CR, LF or NUL");
                continue;
            }
            out.push((name.clone(), secret));
        }
        (self.problems.len() == before).then_some(out)
    }
}

/// CR, LF and NUL would split or truncate the header line (header injection).
fn has_bad_value_byte(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Keys people write for upstream credentials, which modelgate sends as headers.
fn looks_like_api_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace(['_', '-'], "");
    matches!(
        k.as_str(),
        "apikey" | "key" | "token" | "authorization" | "bearer"
    )
}

#[cfg(test)]
mod tests;
