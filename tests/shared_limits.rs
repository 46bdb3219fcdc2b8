//! Limits shared across instances through a real `redis-server` (issue 17), end to end:
//! several real modelgate processes, the OpenAI mock, and (for the scale-out test) a real
//! HAProxy in front, all started here. redis-server and haproxy are Debian packages
//! (`scripts/test.sh` installs them as root); without them these tests say so and skip.
//!
//! Timing is never asserted tightly: the bounds below are the documented ones (docs/
//! SCALING.md), widened by what refills while the test runs, however slow the machine.

mod common;

use common::stores::{self, free_port, tool, Server};
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// These tests start several processes each: one at a time on a 2-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// One request with `token` on a fresh connection; the status (0: no answer at all).
fn chat(addr: SocketAddr, token: &str) -> (u16, Option<Value>) {
    let auth = format!("Authorization: Bearer {token}");
    let mut c = Client::connect(addr);
    c.set_read_timeout(Duration::from_secs(10));
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json", &auth, "Connection: close"],
        chat_body("m", false).as_bytes(),
    ));
    match c.try_read_response() {
        Ok(r) => {
            let body = serde_json::from_slice(&r.body).ok();
            (r.status, body)
        }
        Err(_) => (0, None),
    }
}

fn health(addr: SocketAddr) -> Value {
    json(get(addr, "/health").text())
}

fn shared_state(addr: SocketAddr) -> String {
    health(addr)["sharedLimits"]["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// The value of the sample line starting with `prefix`, from a scrape with `token`.
fn metric(addr: SocketAddr, token: &str, prefix: &str) -> Option<f64> {
    let auth = format!("Authorization: Bearer {token}");
    let text = request(addr, "GET", "/metrics", &[&auth], b"")
        .text()
        .to_string();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn config(store_url: &str, mock: &MockUpstream, tokens: Value, extra: Value) -> String {
    let mut shared = json!({"url": store_url, "syncInterval": 0.1, "timeout": 0.5});
    for (k, v) in extra.as_object().into_iter().flatten() {
        shared[k] = v.clone();
    }
    json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "accessLog": false,
        "sharedLimits": shared,
        "authTokens": tokens,
        "models": {"m": {"url": mock.url()}},
    })
    .to_string()
}

fn wait_state(gw: &Modelgate, state: &str) {
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = shared_state(gw.addr());
            last == state
        }),
        "sharedLimits state {last:?}, not {state:?}; stderr:\n{}",
        gw.stderr_lines().join("\n")
    );
}

#[test]
fn three_instances_behind_haproxy_share_a_key_and_keep_serving_when_redis_dies() {
    let (Some(redis_bin), Some(haproxy_bin)) = (tool("redis-server"), tool("haproxy")) else {
        return;
    };
    let _one_at_a_time = serial();
    let mut store = stores::redis(&redis_bin, free_port(), TempDir::new(), &[]);
    let mock = MockUpstream::openai("m");
    let cfg = config(
        &format!("redis://127.0.0.1:{}", store.port),
        &mock,
        json!([
            {"token": "sk-team", "name": "team", "requestsPerMinute": 60},
            {"token": "sk-load", "name": "load"},
        ]),
        json!({}),
    );
    let gates: Vec<Modelgate> = (0..3).map(|_| Modelgate::start(&cfg)).collect();
    for g in &gates {
        wait_state(g, "synced");
    }
    let addrs: Vec<SocketAddr> = gates.iter().map(Modelgate::addr).collect();
    let lb = stores::haproxy(&haproxy_bin, &addrs);
    // Each instance has seen the three of them in the store.
    for a in &addrs {
        assert!(
            wait_until(Duration::from_secs(10), || metric(
                *a,
                "sk-load",
                "modelgate_shared_limits_instances "
            ) == Some(3.0)),
            "instances seen by {a}"
        );
    }

    // 60 requests a minute (burst 60) for "team", sent through HAProxy by four clients at
    // once, each request on a new connection: round-robin spreads them over the three.
    let started = Instant::now();
    let statuses: Vec<u16> = thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..45)
                        .map(|_| chat(lb.addr(), "sk-team").0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("client"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "only answers and refusals: {statuses:?}"
    );
    // The bound of docs/SCALING.md: the limit, what refilled meanwhile (one per second),
    // and the overshoot of one sync interval: (N - 1) × ⌈burst / N⌉ = 2 × 20.
    let refilled = elapsed.ceil() as usize + 1;
    let bound = 60 + refilled + 2 * 20;
    eprintln!(
        "scale-out: {admitted} of {} admitted in {elapsed:.1} s (bound {bound})",
        statuses.len()
    );
    assert!(
        admitted <= bound,
        "{admitted} admitted in {elapsed:.1} s: more than 60 + {refilled} + 40"
    );
    // Without sharing the three would admit 3 × 60; with it, most of one burst gets through.
    assert!(admitted >= 40, "only {admitted} admitted in {elapsed:.1} s");
    let per_instance: Vec<f64> = addrs
        .iter()
        .map(|a| {
            metric(
                *a,
                "sk-load",
                "modelgate_requests_total{model=\"m\",code=\"200\",key=\"team\"} ",
            )
            .unwrap_or(0.0)
        })
        .collect();
    assert!(
        per_instance.iter().all(|&n| n >= 1.0),
        "every instance served the key: {per_instance:?}"
    );

    // Now kill the store while other traffic flows through HAProxy.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, served, lb) =
            (stop.clone(), failures.clone(), served.clone(), lb.addr());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match chat(lb, "sk-load").0 {
                    200 => served.fetch_add(1, Ordering::SeqCst),
                    _ => failures.fetch_add(1, Ordering::SeqCst),
                };
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    store.kill();
    // Every instance falls back to local limits and says so: /health, the log, a metric.
    for g in &gates {
        wait_state(g, "local");
        assert!(
            g.wait_stderr(
                "using local limits until it answers",
                Duration::from_secs(5)
            )
            .is_some(),
            "{}",
            g.stderr_lines().join("\n")
        );
        assert_eq!(
            metric(g.addr(), "sk-load", "modelgate_shared_limits_synced "),
            Some(0.0)
        );
        let failed = metric(
            g.addr(),
            "sk-load",
            "modelgate_shared_limits_syncs_total{result=\"failed\"} ",
        );
        assert!(failed.is_some_and(|n| n >= 1.0), "{failed:?}");
        assert_eq!(
            get(g.addr(), "/health").status,
            200,
            "still healthy for HAProxy"
        );
    }
    // ...and keeps serving the limited key on its own local bucket, which still limits.
    for a in &addrs {
        let mut statuses = Vec::new();
        for _ in 0..70 {
            statuses.push(chat(*a, "sk-team").0);
        }
        assert!(
            statuses.iter().all(|&s| s == 200 || s == 429),
            "{statuses:?}"
        );
        assert!(
            statuses.contains(&200),
            "{a} serves the key locally: {statuses:?}"
        );
        assert!(
            statuses.contains(&429),
            "{a} still limits it locally: {statuses:?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    load.join().expect("load");
    let (served, failed) = (
        served.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst),
    );
    assert!(served > 0, "the load went through");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed while the store died",
        served + failed
    );
    drop(lb);
}

/// A test CA with a server certificate for 127.0.0.1 and a client certificate, as PEM files
/// in `dir`: (ca, server cert, server key, client cert, client key).
fn pki(dir: &TempDir) -> [std::path::PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "shared-limits test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed");
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, usage| {
        let mut p = CertificateParams::new(names).expect("params");
        p.distinguished_name.push(DnType::CommonName, "leaf");
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(
        vec!["modelgate".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    [
        dir.write("ca.pem", ca_cert.pem()),
        dir.write("server.pem", server),
        dir.write("server.key", server_key),
        dir.write("client.pem", client),
        dir.write("client.key", client_key),
    ]
}

#[test]
fn a_token_budget_is_shared_over_tls_with_an_acl_user_and_a_client_certificate() {
    let Some(redis_bin) = tool("redis-server") else {
        return;
    };
    let _one_at_a_time = serial();
    let dir = TempDir::new();
    let [ca, cert, key, client_cert, client_key] = pki(&dir);
    let port = free_port();
    let (cert, key, ca_s) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    );
    // TLS only, client certificates required, the default user off, and one ACL user held
    // to its keys and the commands modelgate and its script use (docs/CONFIG.md).
    let tls_port = port.to_string();
    let mut args = vec![
        "--port",
        "0",
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_s,
        "--tls-auth-clients",
        "yes",
        "--user",
        "default",
        "off",
        "--user",
        "limits",
        "on",
        ">s3cret-pw",
    ];
    args.extend(
        "~{modelgate}:* -@all +evalsha +script|load +client|setname +select +time +zadd \
         +zremrangebyscore +zcard +hget +hset +pexpire"
            .split_whitespace(),
    );
    let _store = stores::redis(&redis_bin, port, dir, &args);
    let mock = MockUpstream::openai("m");
    let cfg = config(
        &format!("rediss://limits@127.0.0.1:{port}/0"),
        &mock,
        json!([{"token": "sk-budget", "name": "team", "tokensPerMinute": 600}]),
        json!({
            "password": "${env:STORE_PASSWORD}",
            "caFile": ca,
            "certFile": client_cert,
            "keyFile": client_key,
        }),
    );
    let start = || {
        Modelgate::start_with(&cfg, |c| {
            c.env("STORE_PASSWORD", "s3cret-pw");
        })
    };
    let (a, b) = (start(), start());
    wait_state(&a, "synced");
    wait_state(&b, "synced");
    // Spend the budget through both instances until both refuse for a while.
    let started = Instant::now();
    let (mut spent, mut per_answer, mut refused_rounds) = (0u64, 0u64, 0);
    while refused_rounds < 4 && started.elapsed() < Duration::from_secs(30) {
        let mut refused = 0;
        for g in [&a, &b] {
            match chat(g.addr(), "sk-budget") {
                (200, Some(v)) => {
                    let used = v["usage"]["total_tokens"].as_u64().expect("usage");
                    per_answer = per_answer.max(used);
                    spent += used;
                }
                (429, Some(v)) => {
                    assert_eq!(v["error"]["type"], "tokens", "{v}");
                    refused += 1;
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
        refused_rounds = if refused == 2 { refused_rounds + 1 } else { 0 };
        thread::sleep(Duration::from_millis(150));
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        refused_rounds, 4,
        "never refused by both ({spent} tokens spent)"
    );
    // One 600-token minute for both (two separate budgets would allow 1200): the budget,
    // what refilled (10/s), and each instance's answer in flight plus its share overshoot.
    let bound = 600 + (elapsed * 10.0).ceil() as u64 + 4 * per_answer;
    eprintln!("tls: {spent} tokens spent through two instances in {elapsed:.1} s (bound {bound})");
    assert!(spent >= 600, "refused after only {spent} tokens");
    assert!(
        spent <= bound,
        "{spent} tokens for one 600-token budget in {elapsed:.1} s"
    );
    for g in [&a, &b] {
        assert_eq!(
            metric(g.addr(), "sk-budget", "modelgate_shared_limits_instances "),
            Some(2.0)
        );
        let log = g.stderr_lines().join("\n");
        assert!(!log.contains("s3cret-pw"), "{log}");
        assert!(log.contains("synced with rediss://127.0.0.1:"), "{log}");
    }
}

#[test]
fn a_store_that_refuses_the_password_leaves_local_limits_and_says_why() {
    let Some(redis_bin) = tool("redis-server") else {
        return;
    };
    let _one_at_a_time = serial();
    let store = stores::redis(
        &redis_bin,
        free_port(),
        TempDir::new(),
        &["--requirepass", "right"],
    );
    let mock = MockUpstream::openai("m");
    let cfg = config(
        &format!("redis://:wrong-pw@127.0.0.1:{}/0", store.port),
        &mock,
        json!([{"token": "sk-t", "requestsPerMinute": 60, "burst": 3}]),
        json!({}),
    );
    let g = Modelgate::start(&cfg);
    wait_state(&g, "local");
    let line = g
        .wait_stderr("using local limits", Duration::from_secs(5))
        .expect("a log line");
    assert!(
        line.contains("WRONGPASS") || line.contains("AUTH"),
        "{line}"
    );
    let log = g.stderr_lines().join("\n");
    assert!(!log.contains("wrong-pw"), "{log}");
    let h = health(g.addr());
    assert_eq!(
        h["sharedLimits"]["store"],
        format!("redis://127.0.0.1:{}/0", store.port)
    );
    // Local limits still hold: burst 3, then 429.
    let statuses: Vec<u16> = (0..5).map(|_| chat(g.addr(), "sk-t").0).collect();
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|&s| s == 429), "{statuses:?}");
    assert_eq!(
        stores::redis_command(store.addr(), "AUTH right\r\nKEYS *"),
        "+OK\r\n*0\r\n"
    );
    drop::<Server>(store);
}

#[test]
fn a_key_added_by_a_reload_is_synced_and_served_at_once() {
    let Some(redis_bin) = tool("redis-server") else {
        return;
    };
    let _one_at_a_time = serial();
    let store = stores::redis(&redis_bin, free_port(), TempDir::new(), &[]);
    let mock = MockUpstream::openai("m");
    let url = format!("redis://127.0.0.1:{}", store.port);
    let old = json!([{"token": "sk-old", "name": "old", "requestsPerMinute": 60}]);
    let g = Modelgate::start(&config(&url, &mock, old, json!({})));
    wait_state(&g, "synced");
    let new = json!([
        {"token": "sk-old", "name": "old", "requestsPerMinute": 60},
        {"token": "sk-new", "name": "new", "requestsPerMinute": 60},
    ]);
    g.rewrite_config(&config(&url, &mock, new, json!({})));
    g.signal(libc::SIGHUP);
    assert!(g.wait_stderr("reloaded", Duration::from_secs(10)).is_some());
    // Synced as soon as the table arrived: no wait for the next interval.
    let mut last = 0;
    assert!(
        wait_until(Duration::from_secs(2), || {
            last = chat(g.addr(), "sk-new").0;
            last == 200
        }),
        "the new key got {last}"
    );
    assert!(
        stores::redis_command(store.addr(), "EXISTS {modelgate}:key:new").contains(":1"),
        "the new key is in the store"
    );
    assert_eq!(chat(g.addr(), "sk-old").0, 200);
}
