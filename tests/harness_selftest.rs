//! Tests of the test harness itself, against the mock upstreams directly (no modelgate).

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn openai_mock_answers_chat_with_usage_and_echoes_model() {
    let mock = MockUpstream::openai("alpha");
    let r = post_json(
        mock.addr(),
        "/v1/chat/completions",
        &chat_body("qwen3-8b", false),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock-name"), Some("alpha"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "qwen3-8b");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(mock.requests(), 1);
}

#[test]
fn openai_mock_finds_model_after_a_long_messages_array() {
    let mock = MockUpstream::openai("alpha");
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/chat-request-model-last.json"
    ))
    .unwrap_or_else(|_| {
        format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"last"}}"#,
            "x".repeat(5000)
        )
    });
    let want = json(&body)["model"].as_str().unwrap().to_string();
    let r = post_json(mock.addr(), "/v1/chat/completions", &body);
    assert_eq!(r.json()["model"], want.as_str());
}

#[test]
fn openai_mock_streams_n_events_usage_and_done() {
    let mock = MockUpstream::start(
        "127.0.0.1:0",
        MockOptions {
            name: "s".into(),
            sse_events: 5,
            ..MockOptions::default()
        },
    );
    let r = post_json(mock.addr(), "/v1/chat/completions", &chat_body("m", true));
    assert_eq!(r.status, 200);
    assert!(r.chunked);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data = r.sse_data();
    // 5 tokens, the finish chunk, the usage chunk, [DONE].
    assert_eq!(data.len(), 8, "{data:?}");
    assert_eq!(data.last().unwrap(), "[DONE]");
    let tokens: Vec<String> = data[..data.len() - 1]
        .iter()
        .map(|d| json(d))
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(tokens, ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 "]);
    let usage = json(&data[data.len() - 2]);
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(json(&data[5])["choices"][0]["finish_reason"], "stop");
}

#[test]
fn openai_mock_omits_usage_chunk_without_include_usage() {
    let mock = MockUpstream::openai("s");
    let r = post_json(
        mock.addr(),
        "/v1/chat/completions",
        r#"{"model":"m","stream":true,"messages":[]}"#,
    );
    let data = r.sse_data();
    assert_eq!(data.len(), 8 + 2, "{data:?}");
    assert!(data.iter().all(|d| !d.contains("usage")));
}

#[test]
fn openai_mock_streams_one_chunk_per_event_at_the_interval() {
    let mock = MockUpstream::openai("s");
    let mut c = Client::connect(mock.addr());
    let body = chat_body("m", true);
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &["X-Mock-Sse-Events: 3", "X-Mock-Sse-Interval-Ms: 100"],
        body.as_bytes(),
    ));
    let mut head = c.try_read_head().unwrap();
    assert_eq!(head.status, 200);
    let start = Instant::now();
    let mut arrivals = Vec::new();
    while let Some(chunk) = c.try_next_chunk(&mut head).unwrap() {
        assert!(chunk.starts_with(b"data: ") && chunk.ends_with(b"\n\n"));
        arrivals.push(start.elapsed());
    }
    // 3 tokens + finish + usage + [DONE], 100 ms apart after the first.
    assert_eq!(arrivals.len(), 6);
    let total = arrivals.last().unwrap().as_millis();
    assert!((450..1500).contains(&total), "{arrivals:?}");
}

#[test]
fn openai_mock_completions_embeddings_models_health_404() {
    let mock = MockUpstream::openai("beta");
    let r = post_json(
        mock.addr(),
        "/v1/completions",
        r#"{"model":"c","prompt":"hi"}"#,
    );
    assert_eq!(r.json()["object"], "text_completion");
    assert_eq!(
        r.json()["choices"][0]["text"],
        "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
    );

    let r = post_json(
        mock.addr(),
        "/v1/embeddings",
        r#"{"model":"e","input":["a","b"]}"#,
    );
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "e");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let v = get(mock.addr(), "/v1/models").json();
    assert_eq!(v["data"][0]["id"], "beta");

    let r = get(mock.addr(), "/health");
    assert_eq!(r.json()["status"], "ok");
    let r = request(mock.addr(), "HEAD", "/health", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    let r = get(mock.addr(), "/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code().as_deref(), Some("not_found"));
    let r = request(mock.addr(), "POST", "/x", &["X-Mock-Status: 503"], b"{}");
    assert_eq!(r.status, 503);
}

#[test]
fn openai_mock_accepts_chunked_request_bodies() {
    let mock = MockUpstream::openai("c");
    let req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
5\r\n{\"mod\r\nA;ext=1\r\nel\":\"chu\"}\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let raw = raw_exchange(mock.addr(), req);
    let mut c = parse_responses(&raw);
    assert_eq!(c.len(), 1);
    assert_eq!(c.remove(0).json()["model"], "chu");
}

#[test]
fn client_keeps_alive_and_parses_pipelined_responses_in_order() {
    let mock = MockUpstream::openai("p");
    let mut c = Client::connect(mock.addr());
    let mut two = request_bytes("GET", "/v1/models", &[], b"");
    two.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        chat_body("second", true).as_bytes(),
    ));
    two.extend(request_bytes(
        "POST",
        "/v1/embeddings",
        &[],
        br#"{"model":"third","input":"x"}"#,
    ));
    c.send(&two);
    let a = c.read_response();
    let b = c.read_response();
    let d = c.read_response();
    assert_eq!(a.json()["object"], "list");
    assert!(b.chunked);
    assert!(b.raw.ends_with(b"0\r\n\r\n"));
    assert_eq!(b.sse_data().last().unwrap(), "[DONE]");
    assert_eq!(d.json()["model"], "third");
    assert!(c.buffered().is_empty());
    assert!(!c.is_closed());
    // Still usable: one connection served all of it.
    c.send(&request_bytes("GET", "/health", &[], b""));
    assert_eq!(c.read_response().status, 200);
    assert_eq!(mock.connections(), 1);
    assert_eq!(mock.requests(), 4);
}

#[test]
fn client_sees_connection_close_and_close_delimited_bodies() {
    let up = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof");
        }
    });
    let mut c = Client::connect(up.addr());
    c.send(&request_bytes("GET", "/", &[], b""));
    let r = c.read_response();
    assert_eq!(r.body, b"until-eof");
    assert!(c.is_closed_within(Duration::from_secs(2)));
}

#[test]
fn client_reports_truncated_chunked_body_as_error() {
    let up = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nab",
            );
        }
    });
    let mut c = Client::connect(up.addr());
    c.send(&request_bytes("GET", "/", &[], b""));
    let e = c.try_read_response().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[test]
fn client_parses_trailers_and_1xx() {
    let up = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
3\r\nabc\r\n0\r\nX-Usage: 7\r\n\r\n",
            );
        }
    });
    let mut c = Client::connect(up.addr());
    c.send(&request_bytes(
        "POST",
        "/",
        &["Expect: 100-continue"],
        b"{}",
    ));
    let (infos, r) = c.read_final_response();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].status, 100);
    assert_eq!(r.body, b"abc");
    assert_eq!(r.trailers, ["X-Usage: 7"]);
}

#[test]
fn scripted_upstream_records_requests_and_counts_connections() {
    let up = ScriptedUpstream::start(|c| {
        while let Some(req) = c.read_request() {
            let body = format!("{{\"got\":{}}}", req.body.len());
            if c.respond_json(200, &body).is_err() {
                return;
            }
        }
    });
    let mut c = Client::connect(up.addr());
    c.send(
        b"POST /v1/x?q=1 HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nx-one: 2\r\nContent-Length: 4\r\n\r\nabcd\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nT: v\r\n\r\n",
    );
    assert_eq!(c.read_response().json()["got"], 4);
    assert_eq!(c.read_response().json()["got"], 2);
    let reqs = up.wait_requests(2, Duration::from_secs(2));
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].target, "/v1/x?q=1");
    assert_eq!(reqs[0].path(), "/v1/x");
    assert_eq!(reqs[0].header_all("x-one"), ["1", "2"]);
    assert_eq!(reqs[0].body, b"abcd");
    assert!(reqs[0].raw_head.starts_with(b"POST /v1/x?q=1 HTTP/1.1\r\n"));
    assert!(reqs[0].raw_head.ends_with(b"\r\n\r\n"));
    assert!(reqs[1].chunked);
    assert_eq!(reqs[1].body, b"hi");
    assert_eq!(reqs[1].raw_body, b"2\r\nhi\r\n0\r\nT: v\r\n\r\n");
    assert_eq!(reqs[1].trailers, ["T: v"]);
    assert_eq!(up.connections(), 1);
    assert_eq!(up.open_connections(), 1);
    drop(c);
    assert!(up.wait_open_connections(0, Duration::from_millis(500)));
}

#[test]
fn scripted_upstream_sees_client_abort_while_busy() {
    // The handler is "generating" (blind sleep, not looking at the socket) when the client
    // goes away: the open count drops anyway, long before the handler returns.
    let up = ScriptedUpstream::start(|c| {
        if c.read_request().is_some() {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    let mut c = Client::connect(up.addr());
    c.send(&request_bytes("POST", "/", &[], b"{}"));
    let _ = c.try_read_head().unwrap();
    assert!(up.wait_open_connections(1, Duration::from_secs(1)));
    drop(c);
    let t = Instant::now();
    assert!(up.wait_open_connections(0, Duration::from_secs(2)));
    // Generous for loaded CI machines; typically ~10 ms.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(up.connections(), 1);
}

#[test]
fn unix_socket_mocks_work() {
    let dir = TempDir::new();
    let mock = MockUpstream::openai_unix(dir.join("m.sock"), "u");
    assert!(mock.url().starts_with("unix:///"));
    let mut c = Client::connect_unix(dir.join("m.sock"));
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        chat_body("um", false).as_bytes(),
    ));
    let r = c.read_response();
    assert_eq!(r.json()["model"], "um");
    assert_eq!(r.header("x-mock-name"), Some("u"));

    let up = ScriptedUpstream::start_unix(dir.join("s.sock"), |c| {
        if c.read_request().is_some() {
            let _ = c.respond_json(200, "{}");
        }
    });
    let mut c = Client::connect_unix(up.unix_path().unwrap());
    c.send(&request_bytes("GET", "/p", &[], b""));
    assert_eq!(c.read_response().status, 200);
    assert_eq!(up.requests()[0].target, "/p");
}

#[test]
fn raw_exchange_reads_until_close() {
    let mock = MockUpstream::openai("r");
    let out = raw_exchange(
        mock.addr(),
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{out:?}");
    assert!(out.ends_with(b"{\"status\":\"ok\"}"));
}

#[test]
fn mock_answers_bad_requests_with_400_and_close() {
    let mock = MockUpstream::openai("b");
    let out = raw_exchange(mock.addr(), b"NOT HTTP AT ALL\r\n\r\n");
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn startup_line_parser_accepts_one_or_many_listeners() {
    let lines = vec![
        "some warning".to_string(),
        "listening on 127.0.0.1:4000, routing 2 models (1 listed)".to_string(),
    ];
    let (tcp, unix) = parse_listening(&lines);
    assert_eq!(tcp, ["127.0.0.1:4000".parse().unwrap()]);
    assert!(unix.is_empty());
    let lines = vec![
        "modelgate listening on 0.0.0.0:1, [::1]:2, unix:/tmp/x.sock, routing 3 models (3 listed)"
            .to_string(),
    ];
    let (tcp, unix) = parse_listening(&lines);
    assert_eq!(
        tcp,
        ["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()]
    );
    assert_eq!(unix, [std::path::PathBuf::from("/tmp/x.sock")]);
    let lines = vec![
        "listening on https://127.0.0.1:5, routing 1 models (1 listed)".to_string(),
        "listening on unix:/run/m.sock, routing 1 models (1 listed)".to_string(),
    ];
    let (tcp, unix) = parse_listening(&lines);
    assert_eq!(tcp.len(), 1);
    assert_eq!(unix.len(), 1);
}

#[test]
fn config_helpers_build_valid_json() {
    let c = config_with(
        &[("a", "http://127.0.0.1:1"), ("b/c", "unix:///x.sock")],
        serde_json::json!({"authTokens": ["t"], "accessLog": false}),
    );
    let v = json(&c);
    assert_eq!(v["listen"], "127.0.0.1:0");
    assert_eq!(v["models"]["b/c"]["url"], "unix:///x.sock");
    assert_eq!(v["authTokens"][0], "t");
}

#[test]
fn fd_count_and_rss_of_self() {
    let me = std::process::id();
    assert!(fd_count(me) >= 3);
    assert!(rss_kib(me) > 0);
}

#[test]
#[should_panic(expected = "before it was ready")]
fn modelgate_start_panics_clearly_when_the_binary_exits() {
    // A config without models is a startup error for the real engine (and the skeleton's
    // stub exits at once): either way `start` must fail fast with the reason, not hang.
    let _ = Modelgate::start(r#"{"listen":"127.0.0.1:0","models":{}}"#);
}
