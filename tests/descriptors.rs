//! Running out of file descriptors (issue 23, SPEC §11): shed at the edge (clients wait in
//! the accept queue, or get 503 `overloaded`), never a 502 that blames the upstream, and the
//! process recovers fully once descriptors free. modelgate runs under a lowered limit (soft
//! and hard, set in the child before exec, so raising the soft limit to the hard one at start
//! does not undo it).

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

/// Descriptors modelgate may use (soft and hard `RLIMIT_NOFILE`).
const LIMIT: u64 = 128;

fn limited_modelgate(cfg: &str) -> Modelgate {
    Modelgate::start_with(cfg, |cmd| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

/// One chat request on its own connection: the status, or None when the connection closed
/// without an answer.
fn chat(addr: SocketAddr) -> Option<(u16, bool)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: mg.test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text.contains("\r\nretry-after:")))
}

#[test]
fn running_out_of_descriptors_is_shed_never_blamed_on_the_upstream_and_recovers() {
    // An upstream that takes 300 ms per answer, so many requests are in flight at once.
    let up = ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            thread::sleep(Duration::from_millis(300));
            if c.respond(200, &[], br#"{"ok":true}"#).is_err() {
                return;
            }
        }
    });
    let cfg = config_with(
        &[("m", &up.url())],
        serde_json::json!({"workers": 2, "accessLog": false}),
    );
    let mg = limited_modelgate(&cfg);

    // 150 clients at once: far more than 128 descriptors can hold with their upstreams.
    const CLIENTS: usize = 150;
    let start = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, start) = (mg.addr(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                chat(addr)
            })
        })
        .collect();
    let results: Vec<Option<(u16, bool)>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let count = |code: u16| {
        results
            .iter()
            .filter(|r| matches!(r, Some((c, _)) if *c == code))
            .count()
    };
    let (ok, shed) = (count(200), count(503));
    assert_eq!(
        ok + shed,
        CLIENTS,
        "every client gets 200 or 503 (none 502, none cut): {results:?}\n{}",
        mg.stderr_lines().join("\n")
    );
    assert!(
        results.iter().all(|r| !matches!(r, Some((503, false)))),
        "a 503 without Retry-After: {results:?}"
    );
    assert!(ok > 0, "nothing got through: {results:?}");

    // The reserve did its work: accepting paused (or the kernel said EMFILE and we shed).
    let metrics = get(mg.addr(), "/metrics").text().to_string();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let paused = value("modelgate_accept_paused_total");
    let exhausted = value("modelgate_fd_exhausted_total");
    assert!(
        paused + exhausted > 0.0,
        "the limit was never approached: the test proves nothing\n{metrics}"
    );
    assert_eq!(
        value("modelgate_upstream_connect_errors_total"),
        0.0,
        "a descriptor shortage was counted as the upstream's failure"
    );

    // Recovered: sequential requests all succeed, and the log named the shortage.
    for _ in 0..20 {
        assert_eq!(chat(mg.addr()).map(|r| r.0), Some(200));
    }
    let log = mg.stderr_lines().join("\n");
    assert!(
        log.contains("descriptor reserve reached") || log.contains("EMFILE"),
        "no log line about the shortage:\n{log}"
    );
    eprintln!(
        "{ok} got 200, {shed} got 503; accept paused {paused} times, EMFILE/ENFILE {exhausted}"
    );
}
