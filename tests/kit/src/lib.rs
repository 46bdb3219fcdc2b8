//! The integration-test harness. Every test file starts with `mod common;` (a shim that
//! re-exports this crate) and then `use common::*;`.
//!
//! - `Modelgate::start(config)` runs the real binary on a temp config and parses its
//!   `listening on ...` line(s); `config_json(&[(name, url)])` builds a config.
//! - `MockUpstream::openai(name)` is the OpenAI mock (the same code as
//!   `cargo run --example mock-upstream`); `ScriptedUpstream::start(|conn| ...)` is a
//!   hand-scripted upstream that records requests and counts connections.
//! - `Client` speaks raw HTTP/1.1 and parses responses one at a time (keep-alive,
//!   pipelining); `post_json`, `get`, `request`, `raw_exchange` are one-shot helpers.
//! - `fd_count(pid)`, `rss_kib(pid)`, `TempDir`, `wait_until`.

#[path = "../../../examples/mock_upstream/server.rs"]
pub mod server;

pub mod client;
pub mod observed;
pub mod process;
pub mod stores;
pub mod upstream;
pub mod websocket;

pub use client::{
    chat_body, get, parse_responses, post_json, raw_exchange, raw_exchange_timeout, request,
    request_bytes, sse_data, Client, Response, CLIENT_TIMEOUT,
};
pub use process::{
    config_json, config_with, fd_count, modelgate_bin, parse_listening, rss_kib, run_modelgate,
    run_with_config, Modelgate, TempDir, STARTUP_TIMEOUT,
};
pub use upstream::{
    wait_until, Conn, MockOptions, MockUpstream, RecordedRequest, ScriptedUpstream,
};

/// `base` (a JSON object) with the members of `extra` (an object) added or replaced.
pub fn with_members(mut base: serde_json::Value, extra: &serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// Parses JSON text (panics with the text when invalid).
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"))
}

/// Checks that events sent `sent_apart_ms` apart were forwarded one by one: batched events
/// arrive together (gap ~0). A busy machine may delay one event and shorten the next gap,
/// but not to nothing, and the typical (median) gap stays near the sending pace.
pub fn assert_paced(arrivals: &[std::time::Instant], sent_apart_ms: u128) {
    let gaps: Vec<u128> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    let mut sorted = gaps.clone();
    sorted.sort_unstable();
    let median = sorted
        .get(sorted.len() / 2)
        .copied()
        .unwrap_or(sent_apart_ms);
    let typical = sent_apart_ms * 2 / 3..=sent_apart_ms * 2;
    assert!(
        gaps.iter().all(|g| *g >= 20) && typical.contains(&median),
        "events sent {sent_apart_ms} ms apart arrived with gaps {gaps:?} ms (batched or delayed)"
    );
}
