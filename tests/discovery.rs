//! Discovery of OpenAI-compatible backends (issue 11): models found by `GET /v1/models` on the
//! `discover` backends are routed to the backend serving them; a backend that starts later is
//! picked up and one that stops is dropped; static models win; without any config file the
//! embedded default runs (its listen address and probe list overridden by environment here,
//! since the well-known ports cannot be used safely in tests).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// A config discovering `urls` every 0.2 s, with `static_models` (name, url) besides.
fn discover_config(urls: &[String], static_models: &[(&str, &str)]) -> String {
    config_with(
        static_models,
        serde_json::json!({"discover": urls, "discoverInterval": 0.2}),
    )
}

/// The model ids `/v1/models` lists.
fn listed(addr: SocketAddr) -> Vec<String> {
    let resp = get(addr, "/v1/models");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut ids: Vec<String> = resp.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Which mock answered a chat request for `model` (its `X-Mock-Name`), or the error code.
fn routed_to(addr: SocketAddr, model: &str) -> Result<String, String> {
    let resp = post_json(addr, "/v1/chat/completions", &chat_body(model, false));
    match resp.header("x-mock-name") {
        Some(name) if resp.status == 200 => Ok(name.to_owned()),
        _ => Err(resp.error_code().unwrap_or_else(|| resp.status.to_string())),
    }
}

/// A loopback port that was free a moment ago (for a backend the test starts later).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn mock_on(port: u16, name: &str) -> MockUpstream {
    MockUpstream::start(
        &format!("127.0.0.1:{port}"),
        MockOptions {
            name: name.into(),
            ..MockOptions::default()
        },
    )
}

#[test]
fn models_of_two_backends_are_routed_to_each() {
    let alpha = MockUpstream::openai("alpha");
    let beta = MockUpstream::openai("beta");
    let mg = Modelgate::start(&discover_config(&[alpha.url(), beta.url()], &[]));
    assert_eq!(listed(mg.addr()), ["alpha", "beta"]);
    assert_eq!(routed_to(mg.addr(), "alpha"), Ok("alpha".into()));
    assert_eq!(routed_to(mg.addr(), "beta"), Ok("beta".into()));
    assert_eq!(routed_to(mg.addr(), "gamma"), Err("model_not_found".into()));
    // The startup log says what was probed and what each backend serves.
    let log = mg.stderr_lines().join("\n");
    assert!(log.contains("discovery: probing GET /v1/models"), "{log}");
    assert!(
        log.contains(&format!("{} serves 1 model: alpha", alpha.url())),
        "{log}"
    );
    assert!(
        log.contains(&format!("{} serves 1 model: beta", beta.url())),
        "{log}"
    );
    let startup = mg.wait_stderr("listening on", WAIT).expect("startup line");
    assert!(startup.contains("routing 2 models (2 listed)"), "{startup}");
}

#[test]
fn a_unix_socket_backend_is_discovered() {
    let dir = TempDir::new();
    let sock = MockUpstream::openai_unix(dir.join("llm.sock"), "local");
    let mg = Modelgate::start(&discover_config(&[sock.url()], &[]));
    assert_eq!(listed(mg.addr()), ["local"]);
    assert_eq!(routed_to(mg.addr(), "local"), Ok("local".into()));
}

#[test]
fn a_backend_that_starts_later_is_picked_up_and_one_that_stops_is_dropped() {
    let alpha = MockUpstream::openai("alpha");
    let late_port = free_port();
    let late_url = format!("http://127.0.0.1:{late_port}");
    let mg = Modelgate::start(&discover_config(&[alpha.url(), late_url.clone()], &[]));
    assert_eq!(listed(mg.addr()), ["alpha"]);
    assert_eq!(routed_to(mg.addr(), "late"), Err("model_not_found".into()));
    let log = mg.stderr_lines().join("\n");
    assert!(log.contains(&format!("{late_url}: nothing found")), "{log}");

    let late = mock_on(late_port, "late");
    assert!(
        wait_until(WAIT, || listed(mg.addr()) == ["alpha", "late"]),
        "late backend not picked up: {:?}\n{}",
        listed(mg.addr()),
        mg.stderr_lines().join("\n")
    );
    assert_eq!(routed_to(mg.addr(), "late"), Ok("late".into()));
    assert!(mg
        .wait_stderr(&format!("{late_url} serves 1 model: late (new)"), WAIT)
        .is_some());

    drop(alpha);
    assert!(
        wait_until(WAIT, || listed(mg.addr()) == ["late"]),
        "stopped backend not dropped: {:?}",
        listed(mg.addr())
    );
    assert_eq!(routed_to(mg.addr(), "alpha"), Err("model_not_found".into()));
    assert!(mg.wait_stderr("stopped answering", WAIT).is_some());
    assert_eq!(routed_to(mg.addr(), "late"), Ok("late".into()));
    drop(late);
}

#[test]
fn per_model_stats_survive_a_discovery_swap() {
    let alpha = MockUpstream::openai("alpha");
    let late_port = free_port();
    let mg = Modelgate::start(&discover_config(
        &[alpha.url(), format!("http://127.0.0.1:{late_port}")],
        &[],
    ));
    assert_eq!(routed_to(mg.addr(), "alpha"), Ok("alpha".into()));
    let _late = mock_on(late_port, "late");
    assert!(wait_until(WAIT, || listed(mg.addr()).len() == 2));
    let metrics = get(mg.addr(), "/metrics").text().to_owned();
    assert!(
        metrics.contains("modelgate_requests_total{model=\"alpha\",code=\"200\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_reload_applies_a_new_discover_list() {
    let alpha = MockUpstream::openai("alpha");
    let beta = MockUpstream::openai("beta");
    let mg = Modelgate::start(&discover_config(&[alpha.url()], &[]));
    assert_eq!(listed(mg.addr()), ["alpha"]);
    mg.rewrite_config(&discover_config(&[beta.url()], &[]));
    mg.signal(libc::SIGHUP);
    assert!(
        wait_until(WAIT, || listed(mg.addr()) == ["beta"]),
        "{:?}\n{}",
        listed(mg.addr()),
        mg.stderr_lines().join("\n")
    );
    assert_eq!(routed_to(mg.addr(), "beta"), Ok("beta".into()));
}

#[test]
fn static_models_win_over_discovered_names() {
    let pinned = MockUpstream::openai("pinned");
    let alpha = MockUpstream::openai("alpha");
    let pinned_url = pinned.url();
    let mg = Modelgate::start(&discover_config(
        &[alpha.url()],
        &[("alpha", pinned_url.as_str())],
    ));
    assert_eq!(routed_to(mg.addr(), "alpha"), Ok("pinned".into()));
    let log = mg.stderr_lines().join("\n");
    assert!(
        log.contains("model \"alpha\"") && log.contains("static name in the config, which wins"),
        "{log}"
    );
}

/// A backend whose `/v1/models` lists `model`, answering everything else with `X-Who: who`.
fn lister(model: &'static str, who: &'static str) -> ScriptedUpstream {
    ScriptedUpstream::start(move |conn| {
        while let Some(req) = conn.read_request() {
            let list = format!(r#"{{"object":"list","data":[{{"id":"{model}"}}]}}"#);
            let result = if req.path() == "/v1/models" {
                conn.respond_json(200, &list)
            } else {
                conn.respond(
                    200,
                    &["Content-Type: application/json", &format!("X-Who: {who}")],
                    b"{}",
                )
            };
            if result.is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_name_on_two_backends_is_balanced_over_both_as_replicas() {
    let first = lister("shared", "first");
    let second = lister("shared", "second");
    let mg = Modelgate::start(&discover_config(&[first.url(), second.url()], &[]));
    assert_eq!(listed(mg.addr()), ["shared"]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let resp = post_json(
            mg.addr(),
            "/v1/chat/completions",
            &chat_body("shared", false),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        seen.insert(resp.header("x-who").unwrap_or_default().to_owned());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["first", "second"]);
    let log = mg.stderr_lines().join("\n");
    assert!(log.contains("balanced over them as replicas"), "{log}");
}

#[test]
fn backend_headers_go_with_the_probe_and_the_routed_requests() {
    // Like vLLM started with --api-key: everything, /v1/models included, needs the key.
    let guarded = ScriptedUpstream::start(|conn| {
        while let Some(req) = conn.read_request() {
            let result = match (req.header("authorization"), req.path()) {
                (Some("Bearer sk-backend"), "/v1/models") => {
                    conn.respond_json(200, r#"{"data":[{"id":"guarded"}]}"#)
                }
                (Some("Bearer sk-backend"), _) => conn.respond(200, &["X-Who: guarded"], b"{}"),
                _ => conn.respond_json(401, r#"{"error":"no key"}"#),
            };
            if result.is_err() {
                return;
            }
        }
    });
    let config = config_with(
        &[],
        serde_json::json!({"discover": [{
            "url": guarded.url(),
            "headers": {"Authorization": "Bearer ${env:MG_DISCOVER_KEY}"}
        }]}),
    );
    let mg = Modelgate::start_with(&config, |c| {
        c.env("MG_DISCOVER_KEY", "sk-backend");
    });
    let resp = post_json(
        mg.addr(),
        "/v1/chat/completions",
        &chat_body("guarded", false),
    );
    assert_eq!(resp.header("x-who"), Some("guarded"), "{}", resp.text());
    let log = mg.stderr_lines().join("\n");
    assert!(!log.contains("sk-backend"), "{log}");
}

/// modelgate run with no arguments in an empty working directory, its stderr collected.
struct Bare {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    _cwd: TempDir,
}

impl Bare {
    fn start(env: &[(&str, &str)]) -> Bare {
        let cwd = TempDir::new();
        let mut cmd = Command::new(modelgate_bin());
        cmd.current_dir(cwd.path())
            .env_remove("MODELGATE_LISTEN")
            .env_remove("MODELGATE_DISCOVER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn modelgate");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Bare {
            child,
            lines,
            _cwd: cwd,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The address of the `listening on` line, once printed.
    fn addr(&self) -> SocketAddr {
        let mut found = None;
        let ready = wait_until(WAIT, || {
            found = parse_listening(&self.lines()).0.first().copied();
            found.is_some()
        });
        assert!(ready, "no startup line:\n{}", self.lines().join("\n"));
        found.expect("address")
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn without_a_config_the_embedded_default_discovers_and_routes() {
    let alpha = MockUpstream::openai("alpha");
    let beta = MockUpstream::openai("beta");
    let probes = format!("{},{}", alpha.url(), beta.url());
    let mg = Bare::start(&[
        ("MODELGATE_LISTEN", "127.0.0.1:0"),
        ("MODELGATE_DISCOVER", &probes),
    ]);
    let addr = mg.addr();
    assert_eq!(listed(addr), ["alpha", "beta"]);
    assert_eq!(routed_to(addr, "beta"), Ok("beta".into()));
    let log = mg.lines().join("\n");
    assert!(log.contains("running the embedded default"), "{log}");
}

#[test]
fn the_embedded_default_probes_the_well_known_local_ports() {
    // Only the listen address is overridden: the log must list the default probes (whatever
    // runs on this machine may answer them; nothing here depends on that).
    let mg = Bare::start(&[("MODELGATE_LISTEN", "127.0.0.1:0")]);
    mg.addr();
    let log = mg.lines().join("\n");
    let probing = mg
        .lines()
        .into_iter()
        .find(|l| l.contains("probing GET /v1/models"))
        .unwrap_or_else(|| panic!("no probe line:\n{log}"));
    for probe in [
        "http://127.0.0.1:8080 (llama.cpp)",
        "http://127.0.0.1:8000 (vLLM)",
        "http://127.0.0.1:30000 (sglang)",
        "http://127.0.0.1:11434 (Ollama)",
        "http://127.0.0.1:1234 (LM Studio)",
    ] {
        assert!(probing.contains(probe), "{probe} missing: {probing}");
    }
    assert!(probing.contains("every 5s"), "{probing}");
}

#[test]
fn a_bad_override_of_the_embedded_default_is_reported() {
    let cwd = TempDir::new();
    let (status, _, stderr) = run_modelgate(&[], |c| {
        c.current_dir(cwd.path())
            .env("MODELGATE_LISTEN", "127.0.0.1:0")
            .env("MODELGATE_DISCOVER", "ftp://x");
    });
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("MODELGATE_DISCOVER") && stderr.contains("discover[0]"),
        "{stderr}"
    );
}

#[test]
fn an_explicit_missing_config_is_still_an_error() {
    let cwd = TempDir::new();
    let (status, _, stderr) = run_modelgate(&["--config", "config.json"], |c| {
        c.current_dir(cwd.path());
    });
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("config.json"), "{stderr}");
}
