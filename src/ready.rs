//! `modelgate wait-ready URL`: polls an HTTP endpoint with `GET` until it answers 2xx.
//!
//! Made for systemd's `ExecStartPost=` (the NixOS module's inference workers): a unit counts
//! as started only when its `ExecStartPost=` exits 0, so the units ordered after a worker
//! (modelgate, the next worker) wait until the worker answers, and nothing else is needed in
//! the closure (it replaced a curl loop). Not `Type=notify` with `READY=1`: that would need
//! this process to wrap the worker as its main process (forwarding signals, exit codes),
//! while `ExecStartPost=` holds the unit in "activating" just the same.
//!
//! The request and the status line are pure functions below; the connection is
//! [`prober::fetch`], the one discovery uses.

use std::time::{Duration, Instant};

use crate::config::Upstream;
use crate::h1::{self, Method, Parse};
use crate::prober;

/// Far more than a response head needs; a longer one is not a health answer.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What to poll and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitReady {
    /// `http://…` or `unix://…` (no TLS).
    pub upstream: Upstream,
    /// The request target: `/health`, `/v1/models?x=1`, or `/`.
    pub target: String,
    /// Pause between two attempts.
    pub interval: Duration,
    /// Give up after this long; `None`: poll until stopped (systemd's `TimeoutStartSec=`).
    pub timeout: Option<Duration>,
}

/// `GET target` with `Connection: close`, so the answer ends at EOF at the latest.
pub fn request(up: &Upstream, target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: modelgate-wait-ready\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        up.authority
    )
    .into_bytes()
}

/// The status once the response head is complete; `Ok(None)` while it is not.
pub fn status(answer: &[u8]) -> Result<Option<u16>, String> {
    match h1::parse_response(answer, Method::Get) {
        Ok(Parse::Complete(head)) => Ok(Some(head.status)),
        Ok(Parse::Partial) => Ok(None),
        Err(e) => Err(format!("not an HTTP response ({e:?})")),
    }
}

/// Reading may stop at a complete head, or at one that cannot become a response.
fn head_done(answer: &[u8]) -> bool {
    !matches!(status(answer), Ok(None))
}

/// Whether the status means ready.
pub fn is_ready(status: u16) -> bool {
    (200..300).contains(&status)
}

/// One attempt on a fresh connection: the status, or why there is none.
pub fn attempt(up: &Upstream, request: &[u8]) -> Result<u16, String> {
    let answer = prober::fetch(up, request, head_done, MAX_HEAD_BYTES)?;
    status(&answer)?.ok_or_else(|| "the connection closed before a response head".into())
}

/// Polls until a 2xx (`Ok` with the time it took) or the timeout (`Err` with the last
/// reason). `log` hears each new reason for not being ready, once, not every attempt.
pub fn wait(spec: &WaitReady, mut log: impl FnMut(&str)) -> Result<Duration, String> {
    let started = Instant::now();
    let request = request(&spec.upstream, &spec.target);
    let mut last_reason = String::new();
    loop {
        let reason = match attempt(&spec.upstream, &request) {
            Ok(code) if is_ready(code) => return Ok(started.elapsed()),
            Ok(code) => format!("answered {code}"),
            Err(why) => why,
        };
        if let Some(limit) = spec.timeout {
            if started.elapsed() + spec.interval > limit {
                return Err(format!(
                    "not ready after {:.1} s: {reason}",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        if reason != last_reason {
            log(&format!(
                "not ready yet: {reason}; trying again every {:.1} s",
                spec.interval.as_secs_f64()
            ));
            last_reason = reason;
        }
        std::thread::sleep(spec.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream_url;

    #[test]
    fn request_names_the_target_and_host_and_closes() {
        let up = parse_upstream_url("http://127.0.0.1:8101").unwrap();
        assert_eq!(
            request(&up, "/health"),
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:8101\r\nUser-Agent: modelgate-wait-ready\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let unix = parse_upstream_url("unix:///run/w/http.sock").unwrap();
        assert!(String::from_utf8_lossy(&request(&unix, "/")).contains("\r\nHost: localhost\r\n"));
    }

    #[test]
    fn status_waits_for_the_whole_head() {
        assert_eq!(status(b""), Ok(None));
        assert_eq!(status(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert_eq!(
            status(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Ok(Some(503))
        );
        assert_eq!(
            status(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}"),
            Ok(Some(200))
        );
    }

    #[test]
    fn garbage_is_an_error_and_ends_the_read() {
        assert!(status(b"SSH-2.0-OpenSSH_9.2\r\n").is_err());
        assert!(head_done(b"SSH-2.0-OpenSSH_9.2\r\n"));
        assert!(!head_done(b"HTTP/1.1 200"));
    }

    #[test]
    fn only_2xx_is_ready() {
        assert!(is_ready(200) && is_ready(204) && is_ready(299));
        assert!(!is_ready(199) && !is_ready(301) && !is_ready(503));
    }
}
