//! `sharedLimits`: the Redis or Valkey store through which instances share their keys'
//! request limits and token budgets (`ratelimit::shared`, the `limitstore` thread).
//!
//! ```json
//! "sharedLimits": {"url": "rediss://modelgate:${env:REDIS_PASSWORD}@redis.internal:6380/0",
//!                  "syncInterval": 0.1, "timeout": 0.5, "keyPrefix": "modelgate",
//!                  "caFile": "/etc/ssl/redis-ca.pem"}
//! ```
//!
//! The URL is `redis://` (plain) or `rediss://` (TLS; `valkey://`/`valkeys://` are the same),
//! `[user[:password]@]host[:port][/db]`, percent-encoded where needed. It may hold secret
//! references (expanded before it is parsed), and `password` may instead be given on its
//! own, raw. Problems never quote the URL: it may hold a password.

use std::path::PathBuf;
use std::time::Duration;

use super::json::Json;
use super::{join, Cx};
use crate::secrets::{self, Secret, SecretEnv};

/// The default time between two syncs with the store.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// The default wait for the store before falling back to local limits.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(10);
const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_PORT: u16 = 6379;
const MAX_PREFIX: usize = 64;

const KEYS: &[&str] = &[
    "url",
    "password",
    "syncInterval",
    "timeout",
    "keyPrefix",
    "caFile",
    "certFile",
    "keyFile",
];

/// A validated `sharedLimits` (credentials expanded; with `--check`, as written).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedLimits {
    pub host: String,
    pub port: u16,
    /// `rediss://`: TLS (webpki roots, or `caFile`).
    pub tls: bool,
    /// The database `SELECT`ed after connecting (the URL's path).
    pub db: u32,
    /// The ACL user (`AUTH user password`); None: `AUTH password` (the `default` user).
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for servers that ask for one
    /// (`tls-auth-clients yes`, Redis's default with TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub sync_interval: Duration,
    pub timeout: Duration,
    /// Every store key starts with `{prefix}` (a hash tag: one Cluster slot).
    pub key_prefix: String,
}

impl SharedLimits {
    /// The store as logs, metrics and `/health` may show it: no user, no password.
    pub fn label(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/{}", self.port, self.db)
    }
}

/// Stands in for every secret during `--check`, so a URL with references can still be
/// parsed without reading anything.
struct Placeholders;

impl SecretEnv for Placeholders {
    fn var(&self, _: &str) -> Option<String> {
        Some("x".into())
    }
    fn read_file(&self, _: &std::path::Path) -> std::io::Result<Vec<u8>> {
        Ok(b"x".to_vec())
    }
}

/// What a store URL says.
#[derive(Debug, PartialEq)]
struct StoreUrl {
    tls: bool,
    host: String,
    port: u16,
    db: u32,
    username: Option<String>,
    password: Option<String>,
}

fn parse_url(url: &str) -> Result<StoreUrl, &'static str> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("must start with redis:// or rediss://")?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "redis" | "valkey" => false,
        "rediss" | "valkeys" => true,
        _ => return Err("must start with redis:// or rediss:// (valkey:// and valkeys:// too)"),
    };
    if rest.contains(['?', '#']) {
        return Err("must not have a query or a fragment");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("has an unclosed '[' in its host")?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&n| n > 0 && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("has an invalid port")?,
    };
    let db = match path {
        "" => 0,
        p => p
            .parse::<u32>()
            .ok()
            .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("must have a database number as its path (/0), or none")?,
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, pass) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let user = decode(user)?;
            let pass = pass.map(decode).transpose()?;
            // As RFC 3986 and redis-py read it: a lone user info is the user name (its
            // password may come from `password`); `:pw@` is the default user's password.
            match (user.is_empty(), pass) {
                (true, pass) => (None, pass),
                (false, pass) => (Some(user), pass),
            }
        }
    };
    Ok(StoreUrl {
        tls,
        host: host.to_owned(),
        port,
        db,
        username,
        password: password.filter(|p| !p.is_empty()),
    })
}

/// Percent-decodes the user info (`%40` is `@`); the result must be UTF-8.
fn decode(s: &str) -> Result<String, &'static str> {
    const BAD: &str = "has a bad percent-encoding in its user info";
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BAD)?;
            let hex = std::str::from_utf8(hex).map_err(|_| BAD)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| BAD)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BAD)
}

impl Cx<'_> {
    /// `sharedLimits` (absent: None, limits stay per process).
    pub(super) fn shared_limits(&mut self, v: Option<&Json>) -> Option<SharedLimits> {
        let v = v?;
        let path = "sharedLimits";
        let f = self.fields(path, v, KEYS)?;
        let before = self.problems.len();
        let url_path = join(path, "url");
        let url = match f.get("url") {
            None => {
                self.problem(&url_path, "is required (redis://host:6379 or rediss://…)");
                None
            }
            Some(v) => self
                .str(&url_path, v)
                .and_then(|t| self.store_url(&url_path, t)),
        };
        let password_path = join(path, "password");
        let password = f.get("password").and_then(|v| {
            let t = self.str(&password_path, v)?;
            self.secret(&password_path, t)
        });
        let seconds = |cx: &mut Cx<'_>, key: &str, default, min, max: Duration| {
            let key_path = join(path, key);
            match f
                .get(key)
                .map(|v| cx.seconds(&key_path, v, false).flatten())
            {
                None => default,
                Some(None) => default,
                Some(Some(d)) if d < min || d > max => {
                    cx.problem(
                        &key_path,
                        format!(
                            "must be between {} and {} seconds",
                            min.as_secs_f64(),
                            max.as_secs_f64()
                        ),
                    );
                    default
                }
                Some(Some(d)) => d,
            }
        };
        let sync_interval = seconds(
            self,
            "syncInterval",
            DEFAULT_SYNC_INTERVAL,
            MIN_SYNC_INTERVAL,
            MAX_SYNC_INTERVAL,
        );
        let timeout = seconds(
            self,
            "timeout",
            DEFAULT_TIMEOUT,
            MIN_SYNC_INTERVAL,
            MAX_TIMEOUT,
        );
        let prefix_path = join(path, "keyPrefix");
        let key_prefix = match f.get("keyPrefix") {
            None => "modelgate".to_owned(),
            Some(v) => match self.str(&prefix_path, v) {
                Some(p)
                    if !p.is_empty()
                        && p.len() <= MAX_PREFIX
                        && !p.contains(['{', '}'])
                        && !p.chars().any(char::is_control) =>
                {
                    p.to_owned()
                }
                Some(_) => {
                    self.problem(
                        &prefix_path,
                        format!(
                            "must be 1 to {MAX_PREFIX} characters without braces or control characters"
                        ),
                    );
                    String::new()
                }
                None => String::new(),
            },
        };
        let tls = url.as_ref().is_some_and(|u| u.tls);
        let file = |cx: &mut Cx<'_>, key: &str, what: &str| -> Option<PathBuf> {
            let key_path = join(path, key);
            let s = cx.str(&key_path, f.get(key)?)?;
            if s.is_empty() {
                cx.problem(&key_path, "must not be empty");
                return None;
            }
            if url.is_some() && !tls {
                cx.problem(&key_path, "is only allowed with a rediss:// url");
                return None;
            }
            let file = PathBuf::from(s);
            cx.readable(&key_path, what, &file);
            Some(file)
        };
        let ca_file = file(self, "caFile", "CA file");
        let cert = file(self, "certFile", "certificate");
        let key = file(self, "keyFile", "private key");
        let client_cert = match (cert, key, f.get("certFile"), f.get("keyFile")) {
            (Some(c), Some(k), _, _) => Some((c, k)),
            (_, _, Some(_), None) => {
                self.problem(&join(path, "keyFile"), "is required with \"certFile\"");
                None
            }
            (_, _, None, Some(_)) => {
                self.problem(&join(path, "certFile"), "is required with \"keyFile\"");
                None
            }
            _ => None,
        };
        if self.problems.len() != before {
            return None;
        }
        let url = url?;
        Some(SharedLimits {
            host: url.host,
            port: url.port,
            tls: url.tls,
            db: url.db,
            username: url.username,
            password: password.or(url.password.map(Secret::new)),
            ca_file,
            client_cert,
            sync_interval,
            timeout,
            key_prefix,
        })
    }

    /// The URL with its secret references expanded (placeholders for `--check`), parsed.
    fn store_url(&mut self, path: &str, template: &str) -> Option<StoreUrl> {
        let expanded = match self.env {
            Some(env) => secrets::expand(template, env),
            None => secrets::validate_syntax(template)
                .and_then(|()| secrets::expand(template, &Placeholders)),
        };
        let url = match expanded {
            Ok(url) => url,
            Err(e) => {
                self.problem(path, e.to_string());
                return None;
            }
        };
        match parse_url(url.expose()) {
            Ok(u) => Some(u),
            Err(why) => {
                self.problem(path, why);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::*;
    use crate::secrets::tests::FakeEnv;

    fn load(shared: &str, env: Option<&FakeEnv>) -> Result<SharedLimits, Vec<String>> {
        let text = format!(
            r#"{{"sharedLimits": {shared}, "models": {{"m": {{"url": "http://127.0.0.1:9"}}}}}}"#
        );
        let env = env.map(|e| e as &dyn SecretEnv);
        from_str(&text, env)
            .map(|c| c.shared_limits.expect("sharedLimits"))
            .map_err(|p| p.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn urls_say_scheme_credentials_host_port_and_database() {
        let u = parse_url("redis://10.0.0.9").expect("valid");
        assert_eq!(
            u,
            StoreUrl {
                tls: false,
                host: "10.0.0.9".into(),
                port: 6379,
                db: 0,
                username: None,
                password: None
            }
        );
        let u = parse_url("rediss://app:p%40ss:w@redis.internal:6380/3").expect("valid");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db),
            (true, "redis.internal", 6380, 3)
        );
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("app"), Some("p@ss:w"))
        );
        let u = parse_url("valkey://:secret@[::1]:7000/").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.username, u.password.as_deref()),
            ("::1", 7000, None, Some("secret"))
        );
        assert_eq!(
            parse_url("redis://app@h").map(|u| (u.username, u.password)),
            Ok((Some("app".into()), None))
        );
        for bad in [
            "http://h",
            "h:6379",
            "redis://",
            "redis://h:0",
            "redis://h:+1",
            "redis://h:x",
            "redis://h/db1",
            "redis://h?x=1",
            "redis://[::1",
            "redis://u:%zz@h",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_every_key() {
        let s = load(r#"{"url": "redis://h"}"#, Some(&FakeEnv::new())).expect("valid");
        assert_eq!(
            (s.sync_interval, s.timeout, s.key_prefix.as_str()),
            (DEFAULT_SYNC_INTERVAL, DEFAULT_TIMEOUT, "modelgate")
        );
        assert_eq!(s.label(), "redis://h:6379/0");
        let env = FakeEnv::new()
            .var("PW", "from-env")
            .file("/ca.pem", b"x")
            .file("/c.pem", b"x")
            .file("/k.pem", b"x");
        let s = load(
            r#"{"url": "rediss://mg@[::1]:6380/2", "password": "${env:PW}", "syncInterval": 0.05,
                "timeout": 2, "keyPrefix": "prod", "caFile": "/ca.pem", "certFile": "/c.pem",
                "keyFile": "/k.pem"}"#,
            Some(&env),
        )
        .expect("valid");
        assert_eq!(s.label(), "rediss://[::1]:6380/2");
        assert_eq!(s.username.as_deref(), Some("mg"));
        assert_eq!(s.password.as_ref().map(|p| p.expose()), Some("from-env"));
        assert_eq!(
            (s.sync_interval, s.timeout),
            (Duration::from_millis(50), Duration::from_secs(2))
        );
        assert_eq!(s.key_prefix, "prod");
        assert!(s.client_cert.is_some() && s.ca_file.is_some());
    }

    #[test]
    fn references_in_the_url_are_expanded_first_and_only_checked_by_check() {
        let env = FakeEnv::new().var("REDIS_URL_PW", "s3cret");
        let s = load(
            r#"{"url": "redis://:${env:REDIS_URL_PW}@h:1/0"}"#,
            Some(&env),
        )
        .expect("valid");
        assert_eq!(
            s.password.map(|p| p.expose().to_owned()),
            Some("s3cret".into())
        );
        // `--check` reads nothing, and still checks the URL's shape.
        assert!(load(r#"{"url": "redis://${env:U}:${env:P}@h"}"#, None).is_ok());
        let p = load(r#"{"url": "redis://:${env:P}@h:99999"}"#, None).expect_err("bad port");
        assert_eq!(p, ["sharedLimits.url: has an invalid port"]);
    }

    #[test]
    fn problems_are_named_by_key_path_and_never_quote_the_url() {
        let p = load(
            r#"{"url": "http://user:hunter2@h", "syncInterval": 0, "timeout": 100,
                "keyPrefix": "{x}", "certFile": "/c.pem", "bogus": 1}"#,
            None,
        )
        .expect_err("problems");
        let want = [
            "sharedLimits.bogus: unknown key",
            "sharedLimits.url: must start with redis://",
            "sharedLimits.syncInterval: must be a positive number of seconds",
            "sharedLimits.timeout: must be between 0.01 and 60 seconds",
            "sharedLimits.keyPrefix: must be 1 to 64 characters",
            "sharedLimits.keyFile: is required with \"certFile\"",
        ];
        assert_eq!(p.len(), want.len(), "{p:#?}");
        for (got, want) in p.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
            assert!(!got.contains("hunter2"), "{got}");
        }
        let p = load(r#"{"url": "redis://h", "caFile": "/ca.pem"}"#, None).expect_err("plain");
        assert_eq!(
            p,
            ["sharedLimits.caFile: is only allowed with a rediss:// url"]
        );
        let p = load(r#"{"syncInterval": 1}"#, None).expect_err("no url");
        assert_eq!(
            p,
            ["sharedLimits.url: is required (redis://host:6379 or rediss://…)"]
        );
    }
}
