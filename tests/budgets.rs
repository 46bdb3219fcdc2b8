//! Token budgets and usage per key (issue 17), end to end: the real binary between real
//! loopback sockets and the OpenAI mock, whose answers carry known usage (prompt tokens =
//! request body bytes / 4, completion tokens = 8).

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The mock's completion tokens per answer (its default `sse_events`).
const COMPLETION: u64 = 8;

fn cfg(mock: &MockUpstream, tokens: Value) -> String {
    json!({
        "listen": "127.0.0.1:0",
        "authTokens": tokens,
        "models": {
            "chat": {"url": mock.url()},
            "embed": {"url": mock.url()},
        },
    })
    .to_string()
}

fn call(addr: SocketAddr, token: Option<&str>, method: &str, path: &str, body: &str) -> Response {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut h = vec!["Content-Type: application/json"];
    if let Some(a) = &auth {
        h.push(a);
    }
    let mut c = Client::connect(addr);
    c.set_read_timeout(Duration::from_secs(10));
    h.push("Connection: close");
    c.send(&request_bytes(method, path, &h, body.as_bytes()));
    c.read_final_response().1
}

fn chat(addr: SocketAddr, token: &str, model: &str) -> Response {
    call(
        addr,
        Some(token),
        "POST",
        "/v1/chat/completions",
        &chat_body(model, false),
    )
}

/// prompt + completion tokens of a 200 answer, from its `usage`.
fn used(r: &Response) -> u64 {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["usage"]["total_tokens"]
        .as_u64()
        .expect("usage.total_tokens")
}

/// The sample value of the one line starting with `prefix` (labels included, so the label
/// order is part of what is checked).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_key_over_its_token_budget_is_refused_until_the_budget_refills() {
    let mock = MockUpstream::openai("m");
    // 600 tokens a minute: 10 tokens come back every second.
    let mg = Modelgate::start(&cfg(
        &mock,
        json!([
            {"token": "sk-budget", "name": "team-a", "tokensPerMinute": 600},
            {"token": "sk-free", "name": "free"},
        ]),
    ));
    let a = mg.addr();
    let per_answer = used(&chat(a, "sk-budget", "chat"));
    assert!(per_answer > COMPLETION, "{per_answer}");
    let mut spent = per_answer;
    let started = Instant::now();
    // Answers are charged when they end; the key is admitted while its budget is not spent.
    let refusal = loop {
        let r = chat(a, "sk-budget", "chat");
        if r.status != 200 {
            break r;
        }
        spent += used(&r);
        assert!(spent < 10 * 600, "never refused after {spent} tokens");
    };
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(refusal.status, 429, "{}", refusal.text());
    assert_eq!(refusal.error_code().as_deref(), Some("rate_limited"));
    assert_eq!(
        refusal.json()["error"]["type"],
        "tokens",
        "{}",
        refusal.text()
    );
    // Refused only once the answers had spent the minute's budget (plus what refilled while
    // they ran), never before.
    let refilled = (elapsed * 10.0).ceil() as u64 + 1;
    assert!(spent >= 600, "refused after only {spent} tokens");
    assert!(
        spent <= 600 + refilled + per_answer,
        "{spent} tokens spent for a 600 budget ({elapsed:.1} s)"
    );
    // Retry-After: the debt (at most one answer) refills at 10 tokens/s.
    let retry: u64 = refusal
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(
        (1..=per_answer.div_ceil(10) + 1).contains(&retry),
        "Retry-After {retry}"
    );
    let answered = mock.requests();
    // A refused request never reaches the upstream; the other key is not limited, and
    // local endpoints spend no tokens, so they stay open to the spent key.
    assert_eq!(chat(a, "sk-free", "embed").status, 200);
    assert_eq!(
        call(a, Some("sk-budget"), "GET", "/v1/models", "").status,
        200
    );
    assert_eq!(mock.requests(), answered + 1);
    // Admitted again once the window allows.
    let mut last = 429;
    assert!(
        wait_until(Duration::from_secs(retry + 10), || {
            let r = chat(a, "sk-budget", "chat");
            last = r.status;
            if last != 200 {
                assert_eq!(last, 429, "{}", r.text());
                std::thread::sleep(Duration::from_millis(200));
            }
            last == 200
        }),
        "still {last} after Retry-After {retry} s + 10 s"
    );
    let m = call(a, Some("sk-free"), "GET", "/metrics", "")
        .text()
        .to_string();
    assert!(
        metric(&m, "modelgate_rate_limited_total{limit=\"tokens\"}").is_some_and(|n| n >= 1.0),
        "{m}"
    );
}

#[test]
fn streamed_answers_are_charged_too() {
    let mock = MockUpstream::openai("m");
    // A budget one streamed answer spends at once (its prompt alone is over 10 tokens).
    let mg = Modelgate::start(&cfg(
        &mock,
        json!([{"token": "sk-s", "tokensPerMinute": 10}]),
    ));
    let a = mg.addr();
    let r = call(
        a,
        Some("sk-s"),
        "POST",
        "/v1/chat/completions",
        &chat_body("chat", true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"usage\""), "{}", r.text());
    // Charged before the answer's last byte reached us: the very next request is refused.
    let r = chat(a, "sk-s", "chat");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "tokens");
}

#[test]
fn usage_per_key_carries_names_and_never_the_secret() {
    let mock = MockUpstream::openai("m");
    let mg = Modelgate::start(
        &json!({
            "listen": "127.0.0.1:0",
            "authTokens": [
                {"token": "sk-alice-SECRET", "name": "alice"},
                "sk-unnamed-SECRET",
                {"token": "sk-scoped-SECRET", "name": "embed only", "models": ["embed"]},
            ],
            "api_keys": {"ci-bot": "sk-bot-SECRET"},
            "models": {"chat": {"url": mock.url()}, "embed": {"url": mock.url()}},
        })
        .to_string(),
    );
    let a = mg.addr();
    let mut alice = 0;
    for _ in 0..2 {
        alice += used(&chat(a, "sk-alice-SECRET", "chat"));
    }
    let unnamed = used(&chat(a, "sk-unnamed-SECRET", "chat"));
    let bot = used(&chat(a, "sk-bot-SECRET", "embed"));
    assert_eq!(chat(a, "sk-alice-SECRET", "nope").status, 404);
    assert_eq!(chat(a, "sk-scoped-SECRET", "chat").status, 403);
    assert_eq!(chat(a, "sk-wrong-SECRET", "chat").status, 401);

    // A record is finished just after its answer's last byte went out, by whichever worker
    // served it (a busy machine may preempt it right there): poll until all seven are in
    // (the scrapes themselves count as unrouted 200s).
    let mut m = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            m = call(a, Some("sk-alice-SECRET"), "GET", "/metrics", "")
                .text()
                .to_string();
            let recorded: f64 = m
                .lines()
                .filter(|l| l.starts_with("modelgate_requests_total{"))
                .filter(|l| !l.starts_with(r#"modelgate_requests_total{model="",code="200""#))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            recorded == 7.0
        }),
        "{m}"
    );
    let req = |labels: &str| metric(&m, &format!("modelgate_requests_total{{{labels}}} "));
    let tok = |labels: &str| metric(&m, &format!("modelgate_tokens_total{{{labels}}} "));
    assert_eq!(
        req(r#"model="chat",code="200",key="alice""#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        req(r#"model="chat",code="200",key="authTokens[1]""#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        req(r#"model="embed",code="200",key="ci-bot""#),
        Some(1.0),
        "{m}"
    );
    // Requests that reached no model, or one outside the key's scope, are unrouted; a
    // request without a valid token has no key.
    assert_eq!(req(r#"model="",code="404",key="alice""#), Some(1.0), "{m}");
    assert_eq!(
        req(r#"model="",code="403",key="embed only""#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(req(r#"model="",code="401""#), Some(1.0), "{m}");
    // Tokens per key add up to what the answers reported.
    let spend = |key: &str, model: &str| {
        tok(&format!(r#"model="{model}",kind="prompt",key="{key}""#)).unwrap_or(-1.0)
            + tok(&format!(r#"model="{model}",kind="completion",key="{key}""#)).unwrap_or(-1.0)
    };
    assert_eq!(spend("alice", "chat"), alice as f64, "{m}");
    assert_eq!(spend("authTokens[1]", "chat"), unnamed as f64, "{m}");
    assert_eq!(spend("ci-bot", "embed"), bot as f64, "{m}");
    // Requests without a key keep their unlabelled series (zero here).
    assert_eq!(tok(r#"model="chat",kind="prompt""#), Some(0.0), "{m}");
    // The alice series of a model she never used is not rendered.
    assert!(
        !m.contains(r#"model="embed",kind="prompt",key="alice""#),
        "{m}"
    );
    assert!(!m.contains("SECRET"), "a secret in /metrics:\n{m}");

    // The access log names the same keys, and null for a request without a valid token
    // (lines of different workers may come in either order).
    let mut seen: Vec<(Value, u64)> = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        seen = mg
            .json_lines()
            .iter()
            .filter(|l| l["path"] == "/v1/chat/completions")
            .map(|l| (l["key"].clone(), l["status"].as_u64().unwrap_or(0)))
            .collect();
        seen.len() >= 7
    }));
    seen.sort_by_key(|(k, s)| (k.to_string(), *s));
    let mut want = vec![
        (json!("alice"), 200),
        (json!("alice"), 200),
        (json!("authTokens[1]"), 200),
        (json!("ci-bot"), 200),
        (json!("alice"), 404),
        (json!("embed only"), 403),
        (Value::Null, 401),
    ];
    want.sort_by_key(|(k, s)| (k.to_string(), *s));
    assert_eq!(seen, want);
    let stderr = mg.stderr_lines().join("\n");
    assert!(!stderr.contains("SECRET"), "a secret on stderr:\n{stderr}");
}

#[test]
fn without_auth_lines_and_series_stay_as_they_were() {
    let mock = MockUpstream::openai("m");
    let mg = Modelgate::start(&config_json(&[("chat", &mock.url())]));
    let r = post_json(mg.addr(), "/v1/chat/completions", &chat_body("chat", false));
    assert_eq!(r.status, 200);
    // The record is finished just after the answer's last byte went out: poll.
    let mut m = String::new();
    let line = "modelgate_requests_total{model=\"chat\",code=\"200\"} ";
    assert!(
        wait_until(Duration::from_secs(5), || {
            m = get(mg.addr(), "/metrics").text().to_string();
            metric(&m, line) == Some(1.0)
        }),
        "{m}"
    );
    assert!(!m.contains("key=\""), "{m}");
    assert!(wait_until(Duration::from_secs(5), || !mg
        .json_lines()
        .is_empty()));
    assert!(mg.json_lines().iter().all(|l| l.get("key").is_none()));
}
