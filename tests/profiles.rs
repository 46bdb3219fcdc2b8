//! Virtual models: parameter profiles (`model`, `defaults`, `clamp`, `deny`) and
//! content-aware routing (`routeMedia`), end to end over loopback sockets.

mod common;

use common::*;
use serde_json::json;

/// An upstream that records every request and answers `{"ok":true}` (keep-alive).
fn recorder() -> ScriptedUpstream {
    ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            if c.respond_json(200, r#"{"ok":true}"#).is_err() {
                break;
            }
        }
    })
}

/// A config with `models` as given (each gets `url`), listening on a free port.
fn start(models: serde_json::Value) -> Modelgate {
    let cfg = json!({ "listen": "127.0.0.1:0", "models": models });
    Modelgate::start(&cfg.to_string())
}

/// The README example: one Qwen deployment as `coder` and `creative`.
fn qwen_models(url: &str) -> serde_json::Value {
    json!({
        "coder": {
            "url": url,
            "model": "Qwen/Qwen3-32B",
            "defaults": { "temperature": 0.2, "top_p": 0.9 },
            "clamp": { "/chat_template_kwargs/enable_thinking": true },
            "deny": ["logit_bias"]
        },
        "creative": {
            "url": url,
            "model": "Qwen/Qwen3-32B",
            "defaults": { "temperature": 1.1 },
            "clamp": { "/chat_template_kwargs/enable_thinking": false, "max_tokens": 512 }
        },
        "plain": { "url": url }
    })
}

/// Posts `body` and returns what the upstream received (exactly one new request).
fn relay(mg: &Modelgate, up: &ScriptedUpstream, body: &str) -> RecordedRequest {
    let before = up.requests().len();
    let r = post_json(mg.addr(), "/v1/chat/completions", body);
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = up.requests();
    assert_eq!(reqs.len(), before + 1);
    reqs.last().cloned().unwrap()
}

#[test]
fn defaults_fill_absent_keys_and_the_caller_wins_over_them() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    let got = relay(&mg, &up, r#"{"model":"coder","messages":[]}"#).json();
    assert_eq!(got["temperature"], json!(0.2));
    assert_eq!(got["top_p"], json!(0.9));

    let got = relay(
        &mg,
        &up,
        r#"{"model":"coder","temperature":0.7,"top_p":null,"messages":[]}"#,
    )
    .json();
    assert_eq!(
        got["temperature"],
        json!(0.7),
        "the caller wins over defaults"
    );
    assert_eq!(got["top_p"], json!(0.9), "null counts as not set");
}

#[test]
fn clamp_wins_over_the_caller_and_deny_removes() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    let got = relay(
        &mg,
        &up,
        r#"{"model":"creative","max_tokens":99999,"logit_bias":{"1":5},"messages":[]}"#,
    )
    .json();
    assert_eq!(got["max_tokens"], json!(512), "clamp wins");
    assert_eq!(
        got["logit_bias"],
        json!({"1": 5}),
        "creative denies nothing"
    );

    let got = relay(
        &mg,
        &up,
        r#"{"model":"coder","logit_bias":{"1":5},"messages":[]}"#,
    )
    .json();
    assert!(got.get("logit_bias").is_none(), "denied: {got}");
}

#[test]
fn nested_pointers_create_and_override() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    // Missing parent: created.
    let got = relay(&mg, &up, r#"{"model":"coder","messages":[]}"#).json();
    assert_eq!(
        got["chat_template_kwargs"],
        json!({"enable_thinking": true})
    );
    // Present parent: the clamped key is overridden, its siblings kept.
    let got = relay(
        &mg,
        &up,
        r#"{"model":"creative","chat_template_kwargs":{"enable_thinking":true,"x":1},"messages":[]}"#,
    )
    .json();
    assert_eq!(
        got["chat_template_kwargs"],
        json!({"enable_thinking": false, "x": 1})
    );
}

#[test]
fn upstream_gets_the_real_name_with_key_order_and_numbers_kept() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    let got = relay(
        &mg,
        &up,
        r#"{"messages":[{"role":"user","content":"hi"}], "model" : "creative", "seed": 123456789012345678901234567890, "temperature": 0.50}"#,
    );
    assert_eq!(
        got.body_str(),
        r#"{"messages":[{"role":"user","content":"hi"}],"model":"Qwen/Qwen3-32B","seed":123456789012345678901234567890,"temperature":0.50,"chat_template_kwargs":{"enable_thinking":false},"max_tokens":512}"#
    );
}

#[test]
fn an_unprofiled_model_is_forwarded_byte_for_byte() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    let body =
        "{ \"model\":\"plain\" ,\n \"temperature\": 1E0, \"s\": \"\\u00e9\\/\", \"a\":1, \"a\":2 }";
    let got = relay(&mg, &up, body);
    assert_eq!(got.body, body.as_bytes());
    assert_eq!(got.header("Content-Length"), Some(&*body.len().to_string()));
}

#[test]
fn content_length_matches_the_rewritten_body() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    let got = relay(&mg, &up, r#"{"model":"coder","messages":[]}"#);
    assert!(!got.chunked);
    assert_eq!(
        got.header_all("Content-Length"),
        vec![got.body.len().to_string()]
    );
    assert!(got.body.len() > r#"{"model":"coder","messages":[]}"#.len());

    // A chunked request becomes a Content-Length one after the rewrite.
    let body = br#"{"model":"coder","messages":[]}"#;
    let mut chunked = Vec::new();
    for piece in body.chunks(7) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = post_chunked(&mg, &chunked);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.requests().last().cloned().unwrap();
    assert!(!got.chunked, "re-framed by Content-Length");
    assert!(got.header("Transfer-Encoding").is_none());
    assert_eq!(
        got.header_all("Content-Length"),
        vec![got.body.len().to_string()]
    );
    assert_eq!(got.json()["model"], json!("Qwen/Qwen3-32B"));

    // An unprofiled chunked request stays chunked, byte for byte.
    let plain = chunked_body(br#"{"model":"plain"}"#);
    let r = post_chunked(&mg, &plain);
    assert_eq!(r.status, 200);
    let got = up.requests().last().cloned().unwrap();
    assert!(got.chunked);
    assert_eq!(got.raw_body, plain);
}

/// Sends `chunked` (a chunked body, framing included) on a fresh connection.
fn post_chunked(mg: &Modelgate, chunked: &[u8]) -> Response {
    let mut bytes = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    bytes.extend_from_slice(chunked);
    let mut c = Client::connect(mg.addr());
    c.send(&bytes);
    c.read_response()
}

fn chunked_body(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

#[test]
fn keep_alive_and_pipelining_survive_a_rewrite() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    let a = br#"{"model":"coder","messages":[]}"#;
    let b = br#"{"model":"plain","messages":[]}"#;
    let mut bytes = request_bytes("POST", "/v1/chat/completions", &[], a);
    bytes.extend(request_bytes("POST", "/v1/chat/completions", &[], b));
    let mut c = Client::connect(mg.addr());
    c.send(&bytes);
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.read_response().status, 200);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].json()["model"], json!("Qwen/Qwen3-32B"));
    assert_eq!(reqs[1].body, b);
}

#[test]
fn streaming_works_through_a_profile() {
    let up = MockUpstream::openai("qwen");
    let mg = start(json!({
        "coder": {
            "url": up.url(),
            "model": "Qwen/Qwen3-32B",
            "clamp": { "temperature": 0.1 }
        }
    }));
    let r = post_json(mg.addr(), "/v1/chat/completions", &chat_body("coder", true));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/event-stream")));
    let events = r.sse_data();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let first = json(&events[0]);
    assert_eq!(
        first["model"],
        json!("Qwen/Qwen3-32B"),
        "the upstream saw the real name"
    );
    assert_eq!(up.requests(), 1);
}

#[test]
fn models_list_shows_virtual_names_only() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    let list = get(mg.addr(), "/v1/models").json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["coder", "creative", "plain"]);
    assert_eq!(get(mg.addr(), "/v1/models/coder").status, 200);
    assert_eq!(get(mg.addr(), "/v1/models/Qwen%2FQwen3-32B").status, 404);
    // The real name is not routable unless it is listed itself.
    let r = post_json(
        mg.addr(),
        "/v1/chat/completions",
        r#"{"model":"Qwen/Qwen3-32B"}"#,
    );
    assert_eq!(r.status, 404);
}

fn media_config(chat: &str, vision: &str) -> serde_json::Value {
    json!({
        "assistant": { "url": chat, "routeMedia": "vision" },
        "vision": { "url": vision, "model": "Qwen/Qwen2.5-VL-7B" }
    })
}

#[test]
fn a_request_with_an_image_part_goes_to_the_media_route() {
    let chat = recorder();
    let vision = recorder();
    let mg = start(media_config(&chat.url(), &vision.url()));
    let image = r#"{"model":"assistant","messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}"#;
    let r = post_json(mg.addr(), "/v1/chat/completions", image);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(vision.requests().len(), 1);
    assert!(chat.requests().is_empty());
    // The media route's own profile applies: its real name.
    assert_eq!(
        vision.requests()[0].json()["model"],
        json!("Qwen/Qwen2.5-VL-7B")
    );

    // The access log names the route that served it.
    assert!(wait_until(std::time::Duration::from_secs(10), || mg
        .json_lines()
        .iter()
        .any(|l| l["model"] == json!("vision"))));
}

#[test]
fn a_request_without_media_stays_byte_for_byte_on_its_route() {
    let chat = recorder();
    let vision = recorder();
    let mg = start(media_config(&chat.url(), &vision.url()));
    for body in [
        r#"{"model":"assistant","messages":[{"role":"user","content":"an image_url, in words"}]}"#,
        r#"{"model":"assistant","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"tools":[{"type":"file"}]}"#,
    ] {
        let r = post_json(mg.addr(), "/v1/chat/completions", body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(chat.requests().last().unwrap().body, body.as_bytes());
    }
    assert_eq!(chat.requests().len(), 2);
    assert!(vision.requests().is_empty());
    // Input audio (Responses-style `input`) goes to the media route too.
    let audio = r#"{"model":"assistant","input":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}]}]}"#;
    assert_eq!(post_json(mg.addr(), "/v1/responses", audio).status, 200);
    assert_eq!(vision.requests().len(), 1);
}

#[test]
fn profile_config_problems_are_reported_by_key_path() {
    let cfg = json!({
        "models": {
            "a": {
                "url": "http://127.0.0.1:9",
                "defaults": { "/x~2": 1, "temperature": 0.5 },
                "clamp": { "temperature": 0.1, "model": "x" },
                "deny": ["temperature"]
            }
        }
    });
    let (status, stdout, stderr) = run_with_config(&cfg.to_string(), &["--check"], |_| {});
    let text = format!("{stdout}{stderr}");
    assert!(!status.success(), "{text}");
    for needle in [
        "models.a.defaults./x~2:",
        "models.a.clamp.model: cannot change \"model\"",
        "models.a.defaults.temperature: is also clamped",
        "models.a.deny[0]: \"temperature\" is also set",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let cfg = json!({
        "models": {
            "a": { "url": "http://127.0.0.1:9", "routeMedia": "nowhere" },
            "b": { "url": "http://127.0.0.1:9", "routeMedia": "b" },
            "c": { "url": "http://127.0.0.1:9", "routeMedia": "a" }
        }
    });
    let (status, stdout, stderr) = run_with_config(&cfg.to_string(), &["--check"], |_| {});
    let text = format!("{stdout}{stderr}");
    assert!(!status.success(), "{text}");
    for needle in [
        "models.a.routeMedia: names \"nowhere\", which is not a model",
        "models.b.routeMedia: must name another model",
        "models.c.routeMedia: names \"a\", which has a \"routeMedia\" of its own",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn path_routes_to_a_profiled_model_are_rewritten_too() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    // No `model` in the body: the path names the route, the profile sets the real name.
    let r = post_json(
        mg.addr(),
        "/route/coder/v1/chat/completions?x=1",
        r#"{"messages":[],"temperature":0.9}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.requests().last().cloned().unwrap();
    assert_eq!(got.target, "/v1/chat/completions?x=1");
    assert_eq!(
        got.body_str(),
        r#"{"messages":[],"temperature":0.9,"top_p":0.9,"chat_template_kwargs":{"enable_thinking":true},"model":"Qwen/Qwen3-32B"}"#
    );
    assert_eq!(
        got.header_all("Content-Length"),
        vec![got.body.len().to_string()]
    );
    // A body that is not a JSON object cannot be rewritten: 400, nothing sent.
    let before = up.requests().len();
    let r = post_json(mg.addr(), "/route/coder/v1/chat/completions", "[1]");
    assert_eq!(r.status, 400);
    assert_eq!(up.requests().len(), before);
    // Without a body there is nothing to rewrite: forwarded as is.
    let r = get(mg.addr(), "/route/coder/v1/models");
    assert_eq!(r.status, 200);
    assert_eq!(up.requests().last().unwrap().target, "/v1/models");
    // An unprofiled model's path route still streams the body untouched.
    let r = post_json(mg.addr(), "/route/plain/v1/x", "not json at all");
    assert_eq!(r.status, 200);
    assert_eq!(up.requests().last().unwrap().body, b"not json at all");
}

#[test]
fn failover_to_another_replica_resends_the_rewritten_body() {
    let up = recorder();
    // A port nothing listens on: connecting fails, the request fails over.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mg = start(json!({
        "coder": {
            "urls": [dead, up.url()],
            "balance": "round-robin",
            "model": "Qwen/Qwen3-32B",
            "clamp": { "temperature": 0.1 }
        }
    }));
    for _ in 0..4 {
        let got = relay(&mg, &up, r#"{"model":"coder","temperature":2}"#);
        assert_eq!(
            got.body_str(),
            r#"{"model":"Qwen/Qwen3-32B","temperature":0.1}"#
        );
        assert_eq!(got.header_all("Content-Length"), vec!["44".to_string()]);
    }
}

#[test]
fn the_readme_example_reaches_the_upstream_as_documented() {
    let up = recorder();
    let mg = start(qwen_models(&up.url()));
    let got = relay(
        &mg,
        &up,
        r#"{"model":"coder","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(
        got.body_str(),
        r#"{"model":"Qwen/Qwen3-32B","messages":[{"role":"user","content":"hi"}],"temperature":0.2,"top_p":0.9,"chat_template_kwargs":{"enable_thinking":true}}"#
    );
    let got = relay(
        &mg,
        &up,
        r#"{"model":"creative","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(
        got.body_str(),
        r#"{"model":"Qwen/Qwen3-32B","messages":[{"role":"user","content":"hi"}],"temperature":1.1,"chat_template_kwargs":{"enable_thinking":false},"max_tokens":512}"#
    );
}

#[test]
fn a_scoped_token_for_the_named_model_may_take_the_media_detour() {
    let chat = recorder();
    let vision = recorder();
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "authTokens": [{"token": "t-assistant", "models": ["assistant"]}],
        "models": media_config(&chat.url(), &vision.url())
    });
    let mg = Modelgate::start(&cfg.to_string());
    let image = r#"{"model":"assistant","messages":[{"role":"user","content":[{"type":"input_image","image_url":"data:image/png;base64,AAAA"}]}]}"#;
    let send = |body: &str| {
        request(
            mg.addr(),
            "POST",
            "/v1/chat/completions",
            &["Authorization: Bearer t-assistant"],
            body.as_bytes(),
        )
    };
    assert_eq!(send(image).status, 200);
    assert_eq!(vision.requests().len(), 1);
    // Naming the media model itself is outside the token's scope.
    let direct = r#"{"model":"vision","messages":[]}"#;
    assert_eq!(send(direct).status, 403);
    assert_eq!(vision.requests().len(), 1);
    assert!(chat.requests().is_empty());
}
