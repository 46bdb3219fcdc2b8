//! Real third-party servers a test starts itself: `redis-server` (the shared-limits store)
//! and `haproxy` (the balancer in front of several modelgate instances), Debian packages
//! that `scripts/test.sh` installs when they are missing and it runs as root.
//!
//! When one is missing a test calls [`tool`], which says so and lets the test skip, unless
//! `MODELGATE_REQUIRE_STORES=1` (set by `scripts/test.sh` once it has installed them): then
//! a missing tool fails the test instead of skipping it silently.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::process::TempDir;

/// The path of `name` (`redis-server`, `haproxy`), from `$PATH`, `/usr/sbin` or `/usr/bin`;
/// None (after saying why on stderr) when it is not installed and not required.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = format!(
            "{name} is not installed (Debian: apt-get install redis-server haproxy; \
             scripts/test.sh installs them when run as root)"
        );
        if std::env::var("MODELGATE_REQUIRE_STORES").is_ok_and(|v| v == "1") {
            panic!("MODELGATE_REQUIRE_STORES=1 but {why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

/// A free loopback port (bound, then released: the caller binds it right away).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Waits until `addr` accepts a connection.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process killed (SIGKILL, by its pid) when dropped.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    /// Its working directory (config, certificates, logs).
    pub dir: TempDir,
    log: PathBuf,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it now (SIGKILL: the store dies mid-run, no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(mut cmd: Command, port: u16, dir: TempDir, what: &str) -> Server {
        let log = dir.join(&format!("{what}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Server {
            child: Some(child),
            port,
            dir,
            log,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` on a free loopback port: no persistence, `args` appended (a password,
/// TLS…). With TLS (`--port 0 --tls-port P`), pass the TLS port as `port`.
pub fn redis(bin: &Path, port: u16, dir: TempDir, args: &[&str]) -> Server {
    let mut cmd = Command::new(bin);
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    cmd.args(["--dir", &dir.path().display().to_string()]);
    if !args.contains(&"--tls-port") {
        cmd.args(["--port", &port.to_string()]);
    }
    cmd.args(args);
    let server = Server::spawn(cmd, port, dir, "redis");
    assert!(
        wait_listening(server.addr(), Duration::from_secs(10)),
        "redis-server did not listen on {}:\n{}",
        server.addr(),
        server.log()
    );
    server
}

/// Sends inline commands (CRLF-separated) to a plain redis and returns what it answered
/// within a moment.
pub fn redis_command(addr: SocketAddr, commands: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect redis");
    s.set_read_timeout(Some(Duration::from_millis(300))).ok();
    s.write_all(format!("{commands}\r\n").as_bytes())
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `haproxy` in TCP mode on a free port in front of `servers`, round-robin (each new
/// connection to the next instance), with `/health` checks, connect retries and redispatch:
/// the setup of docs/SCALING.md.
pub fn haproxy(bin: &Path, servers: &[SocketAddr]) -> Server {
    let dir = TempDir::new();
    let port = free_port();
    let mut cfg = format!(
        "global\n    maxconn 2000\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
         timeout server 60s\n    retries 3\n    option redispatch 1\n\
         listen modelgate\n    bind 127.0.0.1:{port}\n    balance roundrobin\n    \
         option httpchk\n    http-check send meth GET uri /health ver HTTP/1.1 hdr Host modelgate\n    \
         http-check expect status 200\n    default-server inter 500ms fall 3 rise 1\n"
    );
    for (i, s) in servers.iter().enumerate() {
        cfg.push_str(&format!("    server mg{i} {s} check\n"));
    }
    let path = dir.write("haproxy.cfg", cfg);
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(path);
    let server = Server::spawn(cmd, port, dir, "haproxy");
    assert!(
        wait_listening(server.addr(), Duration::from_secs(10)),
        "haproxy did not listen on {}:\n{}",
        server.addr(),
        server.log()
    );
    server
}
