//! Scoped and rate-limited tokens, aliases, per-model `maxBodyBytes`, and nginx-llm-proxy's
//! config format (issue 10), end to end: the real binary between real loopback sockets and
//! scripted upstreams started here.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// Read timeout of every client in this file: a hang fails fast.
const T: Duration = Duration::from_secs(5);

/// An upstream answering every request with 200 `{"upstream": name}`, keep-alive.
fn echo_upstream(name: &'static str) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while c.read_request().is_some() {
            let body = format!(r#"{{"upstream":"{name}"}}"#);
            if c.respond_json(200, &body).is_err() {
                break;
            }
        }
    })
}

/// A config from a `models` object plus extra top-level keys.
fn cfg(models: Value, extra: Value) -> String {
    let mut c = json!({ "listen": "127.0.0.1:0", "models": models });
    for (k, v) in extra.as_object().expect("extra is an object") {
        c[k] = v.clone();
    }
    serde_json::to_string_pretty(&c).expect("json")
}

/// One request on a fresh connection (`Connection: close`), with a bearer token if given.
fn send(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Response {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut h: Vec<&str> = vec!["Content-Type: application/json", "Connection: close"];
    if let Some(a) = &auth {
        h.push(a);
    }
    let mut c = Client::connect(addr);
    c.set_read_timeout(T);
    c.send(&request_bytes(method, path, &h, body));
    c.read_final_response().1
}

fn chat(addr: SocketAddr, token: Option<&str>, model: &str) -> Response {
    send(
        addr,
        "POST",
        "/v1/chat/completions",
        token,
        chat_body(model, false).as_bytes(),
    )
}

fn model_ids(r: &Response) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some(code), "{}", r.text());
    let v = r.json();
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

// ---------------------------------------------------------------------------------------------
// Scoped tokens.

fn scoped_gate() -> (ScriptedUpstream, ScriptedUpstream, Modelgate) {
    let chat_up = echo_upstream("chat");
    let vision_up = echo_upstream("vision");
    let mg = Modelgate::start(&cfg(
        json!({
            "chat": {"url": chat_up.url(), "aliases": ["gpt-4o"]},
            "chat-mini": {"url": chat_up.url()},
            "vision": {"url": vision_up.url()},
        }),
        json!({"authTokens": [
            "full-access",
            {"token": "chat-only", "models": ["chat*"]},
            {"token": "vision-only", "models": ["vision"]},
        ]}),
    ));
    (chat_up, vision_up, mg)
}

#[test]
fn scoped_token_uses_models_in_scope_and_gets_403_outside() {
    let (chat_up, vision_up, mg) = scoped_gate();
    let a = mg.addr();
    let r = chat(a, Some("chat-only"), "chat");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], "chat");
    assert_eq!(chat(a, Some("chat-only"), "chat-mini").status, 200);
    // The alias of an in-scope model is in scope: scope grants routes by any of their names.
    assert_eq!(chat(a, Some("chat-only"), "gpt-4o").status, 200);
    let r = chat(a, Some("chat-only"), "vision");
    assert_error(&r, 403, "model_not_allowed");
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("'vision'")));
    assert_eq!(
        vision_up.request_count(),
        0,
        "a refused request never goes upstream"
    );
    // Unknown models stay 404 for scoped tokens too.
    assert_error(&chat(a, Some("chat-only"), "nope"), 404, "model_not_found");

    assert_eq!(chat(a, Some("vision-only"), "vision").status, 200);
    assert_error(
        &chat(a, Some("vision-only"), "chat"),
        403,
        "model_not_allowed",
    );
    assert_error(
        &chat(a, Some("vision-only"), "gpt-4o"),
        403,
        "model_not_allowed",
    );

    // A plain string token keeps full access.
    for m in ["chat", "chat-mini", "gpt-4o", "vision"] {
        assert_eq!(chat(a, Some("full-access"), m).status, 200, "{m}");
    }
    // A wrong token is still 401.
    assert_error(&chat(a, Some("chat-onlyX"), "chat"), 401, "invalid_api_key");
    assert_eq!(chat_up.request_count(), 2 + 1 + 3);
}

#[test]
fn scoped_token_is_checked_on_route_paths_too() {
    let (_chat_up, vision_up, mg) = scoped_gate();
    let body = br#"{"input":"x"}"#;
    let r = send(
        mg.addr(),
        "POST",
        "/route/vision/v1/embeddings",
        Some("chat-only"),
        body,
    );
    assert_error(&r, 403, "model_not_allowed");
    let r = send(
        mg.addr(),
        "POST",
        "/route/chat/v1/embeddings",
        Some("chat-only"),
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        mg.addr(),
        "POST",
        "/route/vision/v1/embeddings",
        Some("vision-only"),
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(vision_up.request_count(), 1);
}

#[test]
fn models_list_is_filtered_per_token() {
    let (_c, _v, mg) = scoped_gate();
    let a = mg.addr();
    let all = ["chat", "chat-mini", "gpt-4o", "vision"];
    assert_eq!(
        model_ids(&send(a, "GET", "/v1/models", Some("full-access"), b"")),
        all
    );
    assert_eq!(
        model_ids(&send(a, "GET", "/v1/models", Some("chat-only"), b"")),
        ["chat", "chat-mini", "gpt-4o"]
    );
    assert_eq!(
        model_ids(&send(a, "GET", "/v1/models", Some("vision-only"), b"")),
        ["vision"]
    );
    // One model: in scope answers, out of scope is 403 like a request to it, unknown is 404.
    let r = send(a, "GET", "/v1/models/gpt-4o", Some("chat-only"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "gpt-4o");
    let r = send(a, "GET", "/v1/models/vision", Some("chat-only"), b"");
    assert_error(&r, 403, "model_not_allowed");
    let r = send(a, "GET", "/v1/models/nope", Some("chat-only"), b"");
    assert_error(&r, 404, "model_not_found");
}

#[test]
fn scoped_token_from_env_and_file_secrets() {
    let up = echo_upstream("m");
    let dir = TempDir::new();
    let tok_file = dir.write("tok", "file-token\n");
    let config = cfg(
        json!({"m": {"url": up.url()}, "other": {"url": up.url()}}),
        json!({"authTokens": [
            {"token": "${env:SCOPED_TOKEN_TEST}", "models": ["m"]},
            {"token": format!("${{file:{}}}", tok_file.display()), "models": ["other"]},
        ]}),
    );
    let mg = Modelgate::start_with(&config, |cmd| {
        cmd.env("SCOPED_TOKEN_TEST", "env-token");
    });
    assert_eq!(chat(mg.addr(), Some("env-token"), "m").status, 200);
    assert_error(
        &chat(mg.addr(), Some("env-token"), "other"),
        403,
        "model_not_allowed",
    );
    assert_eq!(chat(mg.addr(), Some("file-token"), "other").status, 200);
    assert_error(
        &chat(mg.addr(), Some("file-token"), "m"),
        403,
        "model_not_allowed",
    );
    assert_error(
        &chat(mg.addr(), Some("${env:SCOPED_TOKEN_TEST}"), "m"),
        401,
        "invalid_api_key",
    );
}

// ---------------------------------------------------------------------------------------------
// Aliases.

#[test]
fn aliases_route_to_the_same_upstream_byte_for_byte() {
    let up = echo_upstream("chat");
    let other = echo_upstream("other");
    let mg = Modelgate::start(&cfg(
        json!({
            "chat": {"url": up.url(), "aliases": ["gpt-4o", "gpt4"], "description": "Chat"},
            "other": {"url": other.url()},
        }),
        json!({}),
    ));
    let mut sent = Vec::new();
    for name in ["chat", "gpt-4o", "gpt4"] {
        // Odd spacing and key order: the body must arrive exactly as written.
        let body = format!(r#"{{ "messages" : [ ],"model":  "{name}" , "temperature":0.70 }}"#);
        let r = send(
            mg.addr(),
            "POST",
            "/v1/chat/completions",
            None,
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["upstream"], "chat", "{name}");
        sent.push(body);
    }
    let got = up.wait_requests(3, T);
    assert_eq!(got.len(), 3);
    for (req, body) in got.iter().zip(&sent) {
        assert_eq!(
            req.raw_body,
            body.as_bytes(),
            "the model name in the body is unchanged"
        );
    }
    assert_eq!(other.request_count(), 0);
    // By path as well.
    let r = send(mg.addr(), "POST", "/route/gpt4/v1/embeddings", None, b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.wait_requests(4, T).len(), 4);

    // Listed next to the model, with its description; one model object per name.
    let r = send(mg.addr(), "GET", "/v1/models", None, b"");
    assert_eq!(model_ids(&r), ["chat", "gpt-4o", "gpt4", "other"]);
    assert_eq!(r.json()["data"][1]["description"], "Chat");
    let r = send(mg.addr(), "GET", "/v1/models/gpt4", None, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "gpt4");
}

#[test]
fn aliases_of_unlisted_models_route_but_are_not_listed() {
    let up = echo_upstream("hidden");
    let mg = Modelgate::start(&cfg(
        json!({"hidden": {"url": up.url(), "unlisted": true, "aliases": ["h"]}}),
        json!({}),
    ));
    assert_eq!(chat(mg.addr(), None, "h").status, 200);
    assert!(model_ids(&send(mg.addr(), "GET", "/v1/models", None, b"")).is_empty());
    assert_error(
        &send(mg.addr(), "GET", "/v1/models/h", None, b""),
        404,
        "model_not_found",
    );
}

#[test]
fn alias_clash_is_a_config_error_naming_the_key() {
    let (status, _out, err) = run_with_config(
        &cfg(
            json!({
                "a": {"url": "http://127.0.0.1:9", "aliases": ["b"]},
                "b": {"url": "http://127.0.0.1:9"},
            }),
            json!({}),
        ),
        &["--check"],
        |_| {},
    );
    assert!(!status.success());
    assert!(
        err.contains("models.a.aliases[0]: is already the name of model \"b\""),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rate limits.

#[test]
fn token_over_its_rate_gets_429_with_retry_after_and_recovers() {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&cfg(
        json!({"m": {"url": up.url()}}),
        json!({"authTokens": [
            {"token": "limited", "requestsPerMinute": 60, "burst": 2},
            "unlimited",
        ]}),
    ));
    let a = mg.addr();
    assert_eq!(chat(a, Some("limited"), "m").status, 200);
    assert_eq!(chat(a, Some("limited"), "m").status, 200);
    let r = chat(a, Some("limited"), "m");
    assert_error(&r, 429, "rate_limited");
    // 60/min: a token comes back within a second; Retry-After is whole seconds.
    assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
    assert_eq!(
        up.request_count(),
        2,
        "a limited request never goes upstream"
    );
    // Other tokens have their own buckets (or none).
    for _ in 0..5 {
        assert_eq!(chat(a, Some("unlimited"), "m").status, 200);
    }
    // Recovers: a refused request takes nothing, so polling does not push recovery out.
    let mut last = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = chat(a, Some("limited"), "m").status;
            if last != 200 {
                std::thread::sleep(Duration::from_millis(100));
            }
            last == 200
        }),
        "still {last} after 10 s"
    );
}

#[test]
fn every_authenticated_request_counts_against_the_rate() {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&cfg(
        json!({"m": {"url": up.url()}}),
        json!({"authTokens": [{"token": "t", "requestsPerMinute": 1, "burst": 1}]}),
    ));
    let a = mg.addr();
    assert_eq!(send(a, "GET", "/v1/models", Some("t"), b"").status, 200);
    let r = chat(a, Some("t"), "m");
    assert_error(&r, 429, "rate_limited");
    // One per minute: the wait is most of a minute.
    let secs: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((50..=60).contains(&secs), "Retry-After: {secs}");
    assert_error(
        &send(a, "GET", "/v1/models", Some("t"), b""),
        429,
        "rate_limited",
    );
    // /health needs no token and is never limited.
    assert_eq!(send(a, "GET", "/health", None, b"").status, 200);
    assert_eq!(up.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Per-model maxBodyBytes.

/// A chat body of exactly `len` bytes for `model`.
fn body_of(model: &str, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"model":"{model}","pad":""#);
    let tail = r#""}"#;
    let pad = len - head.len() - tail.len();
    let mut b = head.into_bytes();
    b.extend(std::iter::repeat_n(b'x', pad));
    b.extend_from_slice(tail.as_bytes());
    assert_eq!(b.len(), len);
    b
}

fn caps_gate() -> (ScriptedUpstream, Modelgate) {
    let up = echo_upstream("m");
    let mg = Modelgate::start(&cfg(
        json!({
            "chat": {"url": up.url()},
            "vision": {"url": up.url(), "maxBodyBytes": 200_000},
            "tiny": {"url": up.url(), "maxBodyBytes": 100},
        }),
        json!({"maxBodyBytes": 50_000}),
    ));
    (up, mg)
}

#[test]
fn per_model_max_body_bytes_applies_once_the_model_is_known() {
    let (up, mg) = caps_gate();
    let a = mg.addr();
    let post = |body: &[u8]| send(a, "POST", "/v1/chat/completions", None, body);
    // 100 kB: over the global cap, under vision's.
    let r = post(&body_of("vision", 100_000));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_error(&post(&body_of("chat", 100_000)), 413, "body_too_large");
    // 1 kB: fine for chat, over tiny's cap.
    assert_eq!(post(&body_of("chat", 1_000)).status, 200);
    assert_error(&post(&body_of("tiny", 1_000)), 413, "body_too_large");
    assert_eq!(post(&body_of("tiny", 100)).status, 200);
    // Over every cap: refused from the Content-Length alone.
    assert_error(&post(&body_of("vision", 200_001)), 413, "body_too_large");
    assert_eq!(up.request_count(), 3);
}

#[test]
fn per_model_max_body_bytes_on_route_paths_and_chunked_bodies() {
    let (up, mg) = caps_gate();
    let a = mg.addr();
    let big = vec![b'x'; 100_000];
    let r = send(a, "POST", "/route/vision/v1/files", None, &big);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_error(
        &send(a, "POST", "/route/chat/v1/files", None, &big),
        413,
        "body_too_large",
    );
    // Chunked: the length is only known by reading; the model's cap still decides.
    let chunked = |body: &[u8]| {
        let mut raw = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut c = Client::connect(a);
        c.set_read_timeout(T);
        c.send(&raw);
        c.read_final_response().1
    };
    assert_eq!(chunked(&body_of("vision", 100_000)).status, 200);
    assert_error(&chunked(&body_of("chat", 100_000)), 413, "body_too_large");
    assert_eq!(up.request_count(), 2);
}

// ---------------------------------------------------------------------------------------------
// nginx-llm-proxy's config.json.

const NGINX_SAMPLE: &str = include_str!("data/nginx-llm-proxy.json");

#[test]
fn nginx_llm_proxy_config_passes_check_unchanged() {
    let (status, _out, err) = run_with_config(NGINX_SAMPLE, &["--check"], |_| {});
    assert!(status.success(), "{err}");
}

#[test]
fn nginx_llm_proxy_config_loads_and_routes() {
    let coder = echo_upstream("coder");
    let embed = echo_upstream("embed");
    // Only the backend addresses (the mocks' ports) and a free listen port differ from the
    // sample; every other byte is as in tests/data/nginx-llm-proxy.json.
    let text = NGINX_SAMPLE
        .replace("127.0.0.1:8081", &coder.addr().to_string())
        .replace("127.0.0.1:8082", &embed.addr().to_string())
        .replacen('{', "{\n  \"listen\": \"127.0.0.1:0\",", 1);
    let mg = Modelgate::start(&text);
    let a = mg.addr();
    let key = Some("sk-sample-gateway-key");
    let r = chat(a, key, "coder-30b");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], "coder");
    let body = br#"{"model": "embed-small", "input": "some text"}"#;
    let r = send(a, "POST", "/v1/embeddings", key, body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], "embed");
    assert_eq!(embed.wait_requests(1, T)[0].raw_body, body);
    assert_error(&chat(a, None, "coder-30b"), 401, "invalid_api_key");

    let r = send(a, "GET", "/v1/models", key, b"");
    assert_eq!(model_ids(&r), ["coder-30b", "embed-small"]);
    let v = r.json();
    assert_eq!(
        v["data"][0]["description"],
        "Coder 30B, 4-bit, for code completion"
    );
    assert_eq!(v["data"][1]["description"], "Small text embedding model");
    assert_eq!(send(a, "GET", "/health", None, b"").json()["models"], 2);
}

#[test]
fn nginx_llm_proxy_empty_api_key_means_open_and_api_keys_map_works() {
    let up = echo_upstream("m");
    let open = format!(
        r#"{{"listen": "127.0.0.1:0", "api_key": "", "models": {{"m": {{"backend": "{}"}}}}}}"#,
        up.addr()
    );
    let mg = Modelgate::start(&open);
    assert_eq!(chat(mg.addr(), None, "m").status, 200);
    drop(mg);
    let keyed = format!(
        r#"{{"listen": "127.0.0.1:0", "api_keys": {{"app": "sk-app", "cli": "sk-cli"}}, "models": {{"m": {{"backend": "{}"}}}}}}"#,
        up.addr()
    );
    let mg = Modelgate::start(&keyed);
    assert_eq!(chat(mg.addr(), Some("sk-app"), "m").status, 200);
    assert_eq!(chat(mg.addr(), Some("sk-cli"), "m").status, 200);
    assert_error(&chat(mg.addr(), None, "m"), 401, "invalid_api_key");
}

#[test]
fn a_reload_keeps_a_drained_bucket_unless_the_limit_changes() {
    let up = echo_upstream("m");
    let config = |limit: u64, models: &[&str]| {
        let mut m = serde_json::Map::new();
        for name in models {
            m.insert(name.to_string(), json!({"url": up.url()}));
        }
        cfg(
            Value::Object(m),
            json!({"authTokens": [
                {"token": "limited", "requestsPerMinute": limit, "burst": 1},
                "probe",
            ]}),
        )
    };
    let mg = Modelgate::start(&config(1, &["m"]));
    let a = mg.addr();
    assert_eq!(chat(a, Some("limited"), "m").status, 200);
    assert_error(&chat(a, Some("limited"), "m"), 429, "rate_limited");
    // Same token, same limit: the new table keeps the drained bucket.
    mg.rewrite_config(&config(1, &["m", "m2"]));
    mg.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || chat(a, Some("probe"), "m2")
            .status
            == 200),
        "the reload did not take"
    );
    assert_error(&chat(a, Some("limited"), "m"), 429, "rate_limited");
    // A changed limit starts a fresh bucket.
    mg.rewrite_config(&config(2, &["m", "m2", "m3"]));
    mg.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || chat(a, Some("probe"), "m3")
            .status
            == 200),
        "the second reload did not take"
    );
    assert_eq!(chat(a, Some("limited"), "m").status, 200);
}

#[test]
fn an_alias_of_a_model_with_several_backends_uses_them_all() {
    let one = echo_upstream("one");
    let two = echo_upstream("two");
    let mg = Modelgate::start(&cfg(
        json!({"pool": {"urls": [one.url(), two.url()], "aliases": ["p"]}}),
        json!({"authTokens": [{"token": "t", "models": ["p"]}]}),
    ));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = chat(mg.addr(), Some("t"), "p");
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(r.json()["upstream"].as_str().expect("upstream").to_owned());
    }
    assert_eq!(seen.len(), 2, "both replicas serve the alias: {seen:?}");
    // Scoped by the alias only: the model's own name is the same route, so it is in scope.
    assert_eq!(chat(mg.addr(), Some("t"), "pool").status, 200);
}
