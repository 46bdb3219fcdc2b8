//! Fallbacks across providers (issue 18): one model name served by local replicas first
//! (tier 0), a provider under its own model name and key when they cannot (tier 1). Mock
//! upstreams on loopback record the model name and the `Authorization` header each request
//! reached them with; a dead local replica is a closed port.

mod common;
use common::*;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);
const CLIENT_KEY: &str = "Authorization: Bearer client-key";

/// An upstream answering `status` to every request, naming the model it was asked for.
fn answering(status: u16) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while let Some(req) = c.read_request() {
            let body = serde_json::json!({ "served_as": req.json()["model"] }).to_string();
            if c.respond(status, &[], body.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// A free loopback port with nothing listening on it (connects are refused).
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

/// Model `chat`: the `local` replicas (tier 0, speaking the client's name), then the
/// provider (tier 1) under `provider-model` with its own key; `extra` adds model keys.
fn gate(local: &[String], provider: &str, extra: serde_json::Value) -> Modelgate {
    let mut urls: Vec<serde_json::Value> = local.iter().map(|u| serde_json::json!(u)).collect();
    urls.push(serde_json::json!({
        "url": provider,
        "priority": 1,
        "model": "provider-model",
        "headers": {"Authorization": "Bearer provider-key"},
    }));
    let model = with_members(serde_json::json!({ "urls": urls }), &extra);
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": { "chat": model },
    });
    Modelgate::start(&cfg.to_string())
}

fn ask_with(addr: SocketAddr, body: &str) -> Response {
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &["Content-Type: application/json", CLIENT_KEY],
        body.as_bytes(),
    )
}

fn ask(gw: &Modelgate) -> Response {
    ask_with(gw.addr(), &chat_body("chat", false))
}

fn served_as(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["served_as"].as_str().unwrap_or("").to_string()
}

/// The access log lines of model `chat`, oldest first.
fn log_lines(gw: &Modelgate) -> Vec<serde_json::Value> {
    gw.json_lines()
        .into_iter()
        .filter(|l| l["model"] == "chat")
        .collect()
}

fn model_and_key(r: &RecordedRequest) -> (String, String) {
    (
        r.json()["model"].as_str().unwrap_or("").to_string(),
        r.header("authorization").unwrap_or("").to_string(),
    )
}

#[test]
fn local_replicas_down_are_served_by_the_provider_under_its_own_name_and_key() {
    let provider = answering(200);
    let gw = gate(
        &[closed_port(), closed_port()],
        &provider.url(),
        serde_json::json!({"ejectTime": 30}),
    );
    // Both local replicas refuse: the request fails over twice, into the provider's tier.
    assert_eq!(served_as(&ask(&gw)), "provider-model");
    let seen = provider.requests();
    assert_eq!(
        model_and_key(&seen[0]),
        ("provider-model".into(), "Bearer provider-key".into())
    );
    // Both are ejected now: the next request goes to the provider at once.
    assert_eq!(served_as(&ask(&gw)), "provider-model");
    assert_eq!(provider.request_count(), 2);
    let mut lines = Vec::new();
    assert!(wait_until(LONG, || {
        lines = log_lines(&gw);
        lines.len() == 2
    }));
    let first = &lines[0];
    assert_eq!(first["upstream"].as_str(), Some(provider.url().as_str()));
    assert_eq!(first["upstream_model"], "provider-model");
    assert_eq!(first["tier"], 1);
    assert_eq!(first["retries"], 2);
    assert!(lines[1].get("retries").is_none(), "{}", lines[1]);
    assert_eq!(lines[1]["upstream_model"], "provider-model");
    assert_eq!(
        gw.metric("modelgate_tier_fallbacks_total{model=\"chat\",tier=\"1\"}"),
        2.0
    );
    assert_eq!(
        gw.metric("modelgate_tier_requests_total{model=\"chat\",tier=\"0\"}"),
        2.0,
        "two attempts on the local tier, both refused"
    );
}

#[test]
fn a_local_429_falls_back_and_a_local_replica_gets_the_exact_client_bytes() {
    let local = answering(429);
    let provider = answering(200);
    let gw = gate(
        &[local.url()],
        &provider.url(),
        serde_json::json!({"retryOnStatus": [429]}),
    );
    // Spacing, key order and number text a re-encoding would change.
    let body = "{ \"model\" : \"chat\",\n \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9\"}],\n \"temperature\": 1.50 }";
    let r = ask_with(gw.addr(), body);
    assert_eq!(served_as(&r), "provider-model");
    let to_local = local.requests();
    assert_eq!(to_local.len(), 1);
    assert_eq!(
        to_local[0].raw_body,
        body.as_bytes(),
        "the client's name: byte for byte"
    );
    assert_eq!(model_and_key(&to_local[0]).1, "Bearer client-key");
    let to_provider = provider.requests();
    assert_eq!(
        model_and_key(&to_provider[0]),
        ("provider-model".into(), "Bearer provider-key".into())
    );
    let text = to_provider[0].body_str().to_string();
    assert!(text.contains("\"temperature\":1.50"), "{text}");
    assert_eq!(
        to_provider[0].header("content-length"),
        Some(text.len().to_string().as_str())
    );
}

/// An upstream that holds every answer until `open` is set.
fn gated(open: Arc<AtomicBool>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while let Some(req) = c.read_request() {
            while !open.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            let body = serde_json::json!({ "served_as": req.json()["model"] }).to_string();
            if c.respond(200, &[], body.as_bytes()).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_full_local_tier_with_its_queue_full_falls_back() {
    let open = Arc::new(AtomicBool::new(false));
    let local = gated(open.clone());
    let provider = answering(200);
    let gw = gate(
        &[local.url()],
        &provider.url(),
        serde_json::json!({"maxConcurrentRequests": 1, "queue": {"size": 1, "timeout": 60}}),
    );
    let (tx, rx) = mpsc::channel();
    let send = |tx: &mpsc::Sender<Response>| {
        let (tx, addr) = (tx.clone(), gw.addr());
        thread::spawn(move || {
            let _ = tx.send(ask_with(addr, &chat_body("chat", false)));
        });
    };
    // The local replica takes one; the next waits for it (the queue has room)...
    send(&tx);
    assert!(wait_until(LONG, || local.request_count() == 1));
    send(&tx);
    assert!(wait_until(LONG, || gw
        .metric("modelgate_queued_requests{model=\"chat\"}")
        == 1.0));
    assert_eq!(
        provider.request_count(),
        0,
        "a request that can wait, waits"
    );
    // ...and with the queue full, the next goes to the provider at once.
    assert_eq!(served_as(&ask(&gw)), "provider-model");
    open.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let r = rx.recv_timeout(LONG).expect("an answer");
        assert_eq!(served_as(&r), "chat");
    }
    assert_eq!(local.request_count(), 2);
    assert_eq!(provider.request_count(), 1);
}

#[test]
fn traffic_returns_to_the_local_replica_when_it_is_healthy_again() {
    let healthy = Arc::new(AtomicBool::new(false));
    let local = {
        let healthy = healthy.clone();
        ScriptedUpstream::start(move |c| {
            while c.read_request().is_some() {
                if !healthy.load(Ordering::SeqCst) {
                    c.reset();
                    return;
                }
                if c.respond(200, &[], br#"{"served_as":"chat"}"#).is_err() {
                    return;
                }
            }
        })
    };
    let provider = answering(200);
    let gw = gate(
        &[local.url()],
        &provider.url(),
        serde_json::json!({"ejectTime": 0.2, "ejectTimeMax": 0.2}),
    );
    for _ in 0..3 {
        assert_eq!(served_as(&ask(&gw)), "provider-model");
    }
    healthy.store(true, Ordering::SeqCst);
    // After the ejection, one trial request goes to the local replica and readmits it.
    assert!(
        wait_until(LONG, || served_as(&ask(&gw)) == "chat"),
        "traffic never came back to the local replica"
    );
    let to_provider = provider.request_count();
    for _ in 0..10 {
        assert_eq!(served_as(&ask(&gw)), "chat");
    }
    assert_eq!(provider.request_count(), to_provider);
}

/// An upstream that sends a response head and part of its body, then closes.
fn cut_after_head(stream: bool) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        if c.read_request().is_none() {
            return;
        }
        let head = if stream {
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string()
        } else {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                .to_string()
        };
        let part: &[u8] = if stream {
            b"13\r\ndata: {\"x\":\"one\"}\n\n\r\n"
        } else {
            b"{\"served_as\":"
        };
        let _ = c.write_all(head.as_bytes());
        let _ = c.write_all(part);
        thread::sleep(Duration::from_millis(100));
        c.close();
    })
}

#[test]
fn after_the_first_byte_there_is_no_fallback_for_answers_or_streams() {
    for stream in [false, true] {
        let local = cut_after_head(stream);
        let provider = answering(200);
        let gw = gate(
            &[local.url()],
            &provider.url(),
            serde_json::json!({"retryOnStatus": [429, 503]}),
        );
        let mut c = Client::connect(gw.addr());
        let body = chat_body("chat", stream);
        c.send(&request_bytes(
            "POST",
            "/v1/chat/completions",
            &["Content-Type: application/json"],
            body.as_bytes(),
        ));
        let (raw, closed) = c.read_to_eof_with_timeout(LONG);
        let text = String::from_utf8_lossy(&raw).to_string();
        assert!(closed, "the cut answer ends with a close");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        if stream {
            assert!(text.contains("data: {\"x\":\"one\"}"), "{text}");
            assert!(
                !text.contains("\r\n0\r\n\r\n"),
                "a cut stream never looks complete"
            );
        } else {
            assert!(text.ends_with("{\"served_as\":"), "{text}");
        }
        assert_eq!(
            provider.request_count(),
            0,
            "resent after its head (stream: {stream})"
        );
    }
}

/// A provider streaming two events that name the model it was asked for.
fn streaming_provider() -> ScriptedUpstream {
    ScriptedUpstream::start(|c| {
        while let Some(req) = c.read_request() {
            let model = req.json()["model"].as_str().unwrap_or("").to_string();
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            if c.write_all(head.as_bytes()).is_err() {
                return;
            }
            for event in [
                format!("data: {{\"model\":\"{model}\"}}\n\n"),
                "data: [DONE]\n\n".into(),
            ] {
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if c.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
            if c.write_all(b"0\r\n\r\n").is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_streaming_request_falls_back_before_its_first_byte() {
    let provider = streaming_provider();
    let gw = gate(&[closed_port()], &provider.url(), serde_json::json!({}));
    let r = ask_with(gw.addr(), &chat_body("chat", true));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.sse_data(),
        vec![r#"{"model":"provider-model"}"#.to_string(), "[DONE]".into()]
    );
    let seen = provider.requests();
    assert_eq!(seen[0].json()["stream"], true);
    assert_eq!(
        model_and_key(&seen[0]),
        ("provider-model".into(), "Bearer provider-key".into())
    );
}

#[test]
fn a_replicas_own_profile_applies_to_it_alone() {
    let local = answering(503);
    let provider = ScriptedUpstream::start(|c| {
        while let Some(req) = c.read_request() {
            let body = req.body_str().to_string();
            if c.respond(200, &[], body.as_bytes()).is_err() {
                return;
            }
        }
    });
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "workers": 1,
        "models": {"chat": {
            "defaults": {"max_tokens": 100},
            "retryOnStatus": [503],
            "urls": [
                local.url(),
                {"url": provider.url(), "priority": 1, "model": "provider-model",
                 "clamp": {"temperature": 0}},
            ],
        }},
    });
    let gw = Modelgate::start(&cfg.to_string());
    let r = ask_with(gw.addr(), r#"{"model":"chat","temperature":1.2}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    // The local replica speaks as its model: the model's defaults, the client's name.
    let to_local = local.requests()[0].json();
    assert_eq!(
        (to_local["model"].as_str(), to_local["max_tokens"].as_i64()),
        (Some("chat"), Some(100))
    );
    assert_eq!(to_local["temperature"], 1.2);
    // The provider's own clamp and name, over the model's defaults it did not replace.
    let to_provider = r.json();
    assert_eq!(to_provider["model"], "provider-model");
    assert_eq!(to_provider["temperature"], 0);
    assert_eq!(to_provider["max_tokens"], 100);
}
