//! `modelgate wait-ready URL` (the NixOS module's worker readiness check) as systemd runs it:
//! the real binary against endpoints on loopback and unix sockets that come up late, answer
//! 503 first, or never become ready. Every run has a --timeout, so no test can hang.

mod common;

use common::*;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Answers 503 to the first `not_ready` requests, then 200.
fn warming_up(not_ready: usize) -> ScriptedUpstream {
    let seen = Arc::new(AtomicUsize::new(0));
    ScriptedUpstream::start(move |conn| {
        if conn.read_request().is_none() {
            return;
        }
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let status = if n < not_ready { 503 } else { 200 };
        let _ = conn.respond(status, &[], b"{\"status\":\"loading model\"}");
    })
}

#[test]
fn waits_through_503_until_2xx_and_exits_zero() {
    let worker = warming_up(2);
    let url = format!("{}/health", worker.url());
    let (status, _, stderr) = run_modelgate(
        &["wait-ready", &url, "--interval", "0.05", "--timeout", "60"],
        |_| {},
    );
    assert!(status.success(), "{stderr}");
    let requests = worker.requests();
    assert_eq!(requests.len(), 3, "{stderr}");
    assert!(requests.iter().all(|r| r.path() == "/health"));
    assert_eq!(
        requests[0].header("user-agent"),
        Some("modelgate-wait-ready")
    );
    // The reason is told once, not at every attempt.
    assert_eq!(stderr.matches("answered 503").count(), 1, "{stderr}");
    assert!(stderr.contains("ready after"), "{stderr}");
}

#[test]
fn retries_a_refused_port_until_the_worker_listens() {
    // A port that nothing listens on yet.
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/health");
    let mut child = Command::new(modelgate_bin())
        .args(["wait-ready", &url, "--interval", "0.05", "--timeout", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn modelgate wait-ready");
    thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "wait-ready must keep waiting while the port is closed"
    );
    let worker = ScriptedUpstream::start_on(&format!("127.0.0.1:{port}"), |conn| {
        if conn.read_request().is_some() {
            let _ = conn.respond(200, &[], b"ok");
        }
    });
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert_eq!(worker.request_count(), 1);
}

#[test]
fn polls_a_unix_socket_worker_with_path() {
    let dir = TempDir::new();
    let socket = dir.join("http.sock");
    let worker = ScriptedUpstream::start_unix(&socket, |conn| {
        if conn.read_request().is_some() {
            let _ = conn.respond(204, &[], b"");
        }
    });
    let url = format!("unix://{}", socket.display());
    let (status, _, stderr) = run_modelgate(
        &["wait-ready", &url, "--path", "/health", "--timeout", "60"],
        |_| {},
    );
    assert!(status.success(), "{stderr}");
    let requests = worker.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path(), "/health");
    assert_eq!(requests[0].header("host"), Some("localhost"));
}

#[test]
fn gives_up_after_the_timeout_with_the_last_reason() {
    let worker = warming_up(usize::MAX);
    let url = format!("{}/health", worker.url());
    let (status, _, stderr) = run_modelgate(
        &["wait-ready", &url, "--interval", "0.1", "--timeout", "0.5"],
        |_| {},
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not ready after") && stderr.contains("answered 503"),
        "{stderr}"
    );
    assert!(worker.request_count() >= 2, "{stderr}");
}

#[test]
fn a_bad_url_is_a_usage_error() {
    let (status, _, stderr) = run_modelgate(&["wait-ready", "https://127.0.0.1:1/health"], |_| {});
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plain HTTP"), "{stderr}");
}
