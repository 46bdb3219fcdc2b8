//! The config file (SPEC.md §2): parsing, strict validation with every problem reported by key
//! path, and secret expansion. CONTRACT STUB: the config helper replaces the bodies, keeping
//! the public API (types, fields and functions below).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secrets::{Secret, SecretEnv};

/// A validated config with secrets expanded (or, for `--check`, left as written).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Listen>,
    pub auth_tokens: Vec<Secret>,
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
    pub watch_config: bool,
    pub models: BTreeMap<String, Model>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `":8080"` means `0.0.0.0:8080`.
    Tcp(SocketAddr),
    Unix(PathBuf),
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
            shutdown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    pub upstream: Upstream,
    /// Applied last to the upstream request, replacing same-named headers.
    pub headers: Vec<(String, Secret)>,
    pub unlisted: bool,
    pub ca_file: Option<PathBuf>,
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

/// Parses and validates `text`. With `env` = None, secret references are only checked for
/// syntax and kept as written (`--check`); with Some, they are expanded.
pub fn from_str(_text: &str, _env: Option<&dyn SecretEnv>) -> Result<Config, Vec<Problem>> {
    Err(vec![])
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
