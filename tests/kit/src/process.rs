//! The real modelgate binary as a child process, plus temp dirs and /proc helpers.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `Modelgate::start` waits for the startup line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of the modelgate binary under test: `MODELGATE_BIN` when set, else the
/// `modelgate` that cargo built next to the test executable (`target/<profile>/deps/…`).
pub fn modelgate_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("MODELGATE_BIN") {
            return bin;
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test executable under target/<profile>/deps");
        let bin = profile_dir.join("modelgate");
        assert!(
            bin.exists(),
            "{} not found: run the tests with cargo test, or set MODELGATE_BIN",
            bin.display()
        );
        bin.to_string_lossy().into_owned()
    })
}

/// A unique directory under the system temp dir, removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "modelgate-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            nanos
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// `self.path().join(name)`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
    /// Writes `contents` to `name` inside the dir and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[derive(Default)]
struct Output {
    stderr: Vec<String>,
    stdout: Vec<String>,
    stderr_eof: bool,
}

type SharedOutput = Arc<(Mutex<Output>, Condvar)>;

fn capture<R: Read + Send + 'static>(r: R, out: SharedOutput, is_stderr: bool) {
    thread::Builder::new()
        .name(if is_stderr { "mg-stderr" } else { "mg-stdout" }.into())
        .spawn(move || {
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = r.read_until(b'\n', &mut line).unwrap_or(0);
                let (lock, cv) = &*out;
                let mut o = lock.lock().unwrap();
                if n == 0 {
                    if is_stderr {
                        o.stderr_eof = true;
                    }
                    cv.notify_all();
                    return;
                }
                let s = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if is_stderr {
                    o.stderr.push(s);
                } else {
                    o.stdout.push(s);
                }
                cv.notify_all();
            }
        })
        .expect("spawn output capture");
}

/// Addresses named by every `listening on ...` line: the text after `listening on ` up to
/// `, routing` (or the end / a closing quote), split on commas. `unix:` entries become paths.
pub fn parse_listening(lines: &[String]) -> (Vec<SocketAddr>, Vec<PathBuf>) {
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    for line in lines {
        let Some(i) = line.find("listening on ") else {
            continue;
        };
        let rest = &line[i + "listening on ".len()..];
        let rest = rest.split(", routing").next().unwrap_or(rest);
        let rest = rest.split(['"', '\'']).next().unwrap_or(rest);
        for item in rest.split(',') {
            let item = item.trim().trim_end_matches(['.', ';']);
            let item = ["http://", "https://", "tcp://", "tls://"]
                .iter()
                .fold(item, |s, p| s.strip_prefix(p).unwrap_or(s));
            let item = item.split(' ').next().unwrap_or(item);
            if let Some(p) = item.strip_prefix("unix:") {
                let p = p.strip_prefix("//").unwrap_or(p);
                unix.push(PathBuf::from(p));
            } else if let Ok(mut a) = item.parse::<SocketAddr>() {
                // A wildcard bind is reached over loopback.
                if a.ip().is_unspecified() {
                    a.set_ip(match a.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                tcp.push(a);
            }
        }
    }
    (tcp, unix)
}

/// How many listeners a config asks for (`listen` string → 1, list → its length, absent → 1).
fn expected_listeners(config_json: &str) -> usize {
    match serde_json::from_str::<serde_json::Value>(config_json) {
        Ok(v) => match v.get("listen") {
            Some(serde_json::Value::Array(a)) => a.len().max(1),
            _ => 1,
        },
        Err(_) => 1,
    }
}

/// A running modelgate child process. Killed (SIGKILL) on drop.
pub struct Modelgate {
    child: Child,
    dir: TempDir,
    config_path: PathBuf,
    out: SharedOutput,
    tcp: Vec<SocketAddr>,
    unix: Vec<PathBuf>,
    exited: Option<ExitStatus>,
}

impl Modelgate {
    /// Writes `config_json` to a temp dir, runs `modelgate --config PATH`, and waits (10 s)
    /// for every listener's startup line. Use `"listen": "127.0.0.1:0"` in the config.
    pub fn start(config_json: &str) -> Modelgate {
        Self::start_with(config_json, |_| {})
    }

    /// `start`, letting `customize` add env vars, args or a working dir to the command
    /// (it already has `--config PATH`). When the config refers to files, prepare them in a
    /// `TempDir` and use `start_in`.
    pub fn start_with(config_json: &str, customize: impl FnOnce(&mut Command)) -> Modelgate {
        Self::start_in(TempDir::new(), config_json, customize)
    }

    /// `start_with` using an existing temp dir (e.g. one already holding secret files or
    /// certificates the config names). The config is written to `dir/config.json`.
    pub fn start_in(
        dir: TempDir,
        config_json: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Modelgate {
        let config_path = dir.write("config.json", config_json);
        let mut cmd = Command::new(modelgate_bin());
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        customize(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn modelgate: {e}"));
        let out: SharedOutput = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        capture(child.stderr.take().unwrap(), out.clone(), true);
        capture(child.stdout.take().unwrap(), out.clone(), false);
        let mut mg = Modelgate {
            child,
            dir,
            config_path,
            out,
            tcp: Vec::new(),
            unix: Vec::new(),
            exited: None,
        };
        mg.wait_ready(expected_listeners(config_json));
        mg
    }

    fn wait_ready(&mut self, expected: usize) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let (lock, cv) = &*self.out.clone();
        let mut o = lock.lock().unwrap();
        loop {
            let (tcp, unix) = parse_listening(&o.stderr);
            if tcp.len() + unix.len() >= expected {
                self.tcp = tcp;
                self.unix = unix;
                return;
            }
            let now = Instant::now();
            let exited = if o.stderr_eof {
                drop(o);
                let st = self.wait_exit(Duration::from_secs(2));
                o = lock.lock().unwrap();
                st
            } else {
                None
            };
            if now >= deadline || exited.is_some() || o.stderr_eof {
                let why = match exited {
                    Some(st) => format!("modelgate exited ({st}) before it was ready"),
                    None if o.stderr_eof => {
                        "modelgate closed its stderr before it was ready".into()
                    }
                    None => format!("modelgate not ready within {STARTUP_TIMEOUT:?}"),
                };
                let msg = format!(
                    "{why}: expected {expected} `listening on ADDR, routing N models (M listed)` \
                     line(s) on stderr.\n--- stderr ---\n{}\n--- stdout ---\n{}\n--- config ({}) ---\n{}",
                    o.stderr.join("\n"),
                    o.stdout.join("\n"),
                    self.config_path.display(),
                    std::fs::read_to_string(&self.config_path).unwrap_or_default()
                );
                drop(o);
                let _ = self.child.kill();
                panic!("{msg}");
            }
            o = cv.wait_timeout(o, deadline - now).unwrap().0;
        }
    }

    /// The first TCP listener (a wildcard address is mapped to loopback).
    pub fn addr(&self) -> SocketAddr {
        *self.tcp.first().unwrap_or_else(|| {
            panic!(
                "modelgate has no TCP listener; stderr:\n{}",
                self.stderr_lines().join("\n")
            )
        })
    }
    /// Every TCP listener, in printed order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }
    /// `http://ADDR` of the first TCP listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }
    /// The first unix-socket listener, if any.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.first().map(PathBuf::as_path)
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// The temp dir holding the config (removed when `self` drops).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    /// Replaces the config file atomically (write a sibling, then rename over it).
    pub fn rewrite_config(&self, config_json: &str) {
        let tmp = self.dir.join("config.json.tmp");
        std::fs::write(&tmp, config_json).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }
    /// Every stderr line printed so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.out.0.lock().unwrap().stderr.clone()
    }
    /// Every stdout line printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.out.0.lock().unwrap().stdout.clone()
    }
    /// Waits until a stderr line (at index >= `from`) satisfies `pred`; returns it.
    pub fn wait_stderr_from(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut o = lock.lock().unwrap();
        loop {
            if let Some(l) = o.stderr.iter().skip(from).find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline || o.stderr_eof {
                return None;
            }
            o = cv.wait_timeout(o, deadline - now).unwrap().0;
        }
    }
    /// Waits until some stderr line contains `needle`; returns it.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_stderr_from(0, timeout, |l| l.contains(needle))
    }
    /// Stderr lines that parse as JSON objects (access log lines and the like).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stderr_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }
    /// Sends a signal (`libc::SIGHUP`, `libc::SIGTERM`, ...).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.child.id());
    }
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(st) = self.child.wait() {
            self.exited = Some(st);
        }
    }
    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    /// Open file descriptors of the process.
    /// The value of the first `/metrics` sample line starting with `sample` (labels
    /// included); panics with the whole text when there is none.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = super::client::get(self.addr(), "/metrics")
            .text()
            .to_string();
        text.lines()
            .find(|l| l.starts_with(sample))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    pub fn fd_count(&self) -> usize {
        fd_count(self.pid())
    }
    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Modelgate {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs modelgate to completion with `args` (e.g. `["--check", "--config", path]`), stdin
/// closed; returns (exit status, stdout, stderr). Panics if it runs longer than 10 s.
pub fn run_modelgate(
    args: &[&str],
    customize: impl FnOnce(&mut Command),
) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(modelgate_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    customize(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn modelgate: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "modelgate {args:?} still running after 10 s; stderr:\n{}",
                t2.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    (status, t1.join().unwrap(), t2.join().unwrap())
}

/// Writes `config_json` to a temp file and runs `modelgate --config PATH [extra args]` to
/// exit (for startup-error and `--check` tests).
pub fn run_with_config(
    config_json: &str,
    extra_args: &[&str],
    customize: impl FnOnce(&mut Command),
) -> (ExitStatus, String, String) {
    let dir = TempDir::new();
    let p = dir.write("config.json", config_json);
    let p = p.to_str().unwrap().to_string();
    let mut args = vec!["--config", p.as_str()];
    args.extend_from_slice(extra_args);
    run_modelgate(&args, customize)
}

/// Number of open file descriptors of `pid` (entries of /proc/PID/fd).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `VmRSS` of `pid` in KiB (0 if unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A config with `"listen": "127.0.0.1:0"`, access log on, and `models` name → url.
pub fn config_json(models: &[(&str, &str)]) -> String {
    config_with(models, serde_json::json!({}))
}

/// `config_json` merged with `extra` top-level keys (e.g. `{"authTokens": ["t"]}`);
/// keys in `extra` win.
pub fn config_with(models: &[(&str, &str)], extra: serde_json::Value) -> String {
    let mut m = serde_json::Map::new();
    for (name, url) in models {
        m.insert(name.to_string(), serde_json::json!({ "url": url }));
    }
    let mut cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "models": m,
    });
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_string_pretty(&cfg).unwrap()
}
