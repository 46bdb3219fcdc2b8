//! Token counts do not depend on `Content-Encoding` (SPEC §11): gzip and deflate answers
//! (JSON, SSE and NDJSON, framed by length or chunked, split at random points) are counted
//! exactly from a copy inflated on the side while the client gets the upstream's bytes
//! unchanged; answers that cannot be read are counted by reason; the generation rate is fed
//! by streamed answers only.

mod common;

use common::*;
use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::Compression;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

const OPENAI_CHAT: &[u8] = include_bytes!("data/openai-chat.json");
const OPENAI_STREAM: &[u8] = include_bytes!("data/openai-chat-stream.sse");
const ANTHROPIC_STREAM: &[u8] = include_bytes!("data/anthropic-messages-stream.sse");
const OLLAMA: &[u8] = include_bytes!("data/ollama-chat.ndjson");

const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Format {
    Gzip,
    Zlib,
    RawDeflate,
}

fn compress(format: Format, data: &[u8]) -> Vec<u8> {
    let level = Compression::default();
    match format {
        Format::Gzip => {
            let mut e = GzEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Format::Zlib => {
            let mut e = ZlibEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Format::RawDeflate => {
            let mut e = DeflateEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }
}

/// One scripted answer: the exact bytes the upstream writes, in the pieces it writes them.
struct Answer {
    pieces: Vec<Vec<u8>>,
    /// The body as the client must receive it (de-chunked).
    body: Vec<u8>,
    prompt: u64,
    completion: u64,
}

/// A tiny deterministic generator for split points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Splits `bytes` at random points into pieces of 1..=max bytes.
fn split(bytes: &[u8], max: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (rng.below(max) + 1).min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// The response `plain` compressed as `format`, labelled `coding`, chunked at random points
/// (or sent with a length, written in random pieces).
#[allow(clippy::too_many_arguments)]
fn answer(
    plain: &[u8],
    format: Format,
    coding: &str,
    content_type: &str,
    chunked: bool,
    counts: (u64, u64),
    rng: &mut Rng,
) -> Answer {
    let body = compress(format, plain);
    let mut wire = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Encoding: {coding}\r\n"
    )
    .into_bytes();
    if chunked {
        wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in split(&body, 64, rng) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(&chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
    } else {
        wire.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        wire.extend_from_slice(&body);
    }
    Answer {
        pieces: split(&wire, 97, rng),
        body,
        prompt: counts.0,
        completion: counts.1,
    }
}

/// An upstream answering `GET /answer/N` with answer N, piece by piece, 1 ms apart.
fn scripted(answers: Arc<Vec<Answer>>) -> ScriptedUpstream {
    ScriptedUpstream::start(move |c| {
        while let Some(req) = c.read_request() {
            let n: usize = req
                .path()
                .rsplit('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            for piece in &answers[n].pieces {
                if c.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
}

/// The value of the sample whose line starts with `prefix`, 0 when absent.
fn sample(mg: &Modelgate, prefix: &str) -> f64 {
    let text = get(mg.addr(), "/metrics").text().to_string();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn tokens(mg: &Modelgate, kind: &str) -> f64 {
    sample(
        mg,
        &format!("modelgate_tokens_total{{model=\"m\",kind=\"{kind}\"}}"),
    )
}

fn wait_tokens(mg: &Modelgate, prompt: u64, completion: u64) {
    let ok = wait_until(WAIT, || {
        tokens(mg, "prompt") == prompt as f64 && tokens(mg, "completion") == completion as f64
    });
    assert!(
        ok,
        "tokens: prompt {} (want {prompt}), completion {} (want {completion})",
        tokens(mg, "prompt"),
        tokens(mg, "completion")
    );
}

fn unread(mg: &Modelgate, reason: &str) -> f64 {
    sample(
        mg,
        &format!("modelgate_usage_unread_total{{model=\"m\",reason=\"{reason}\"}}"),
    )
}

#[test]
fn gzip_and_deflate_answers_split_anywhere_are_counted_exactly_and_forwarded_unchanged() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let samples: [(&[u8], &str, (u64, u64)); 4] = [
        (OPENAI_CHAT, "application/json", (21, 7)),
        (OPENAI_STREAM, "text/event-stream", (21, 3)),
        (ANTHROPIC_STREAM, "text/event-stream", (25, 12)),
        (OLLAMA, "application/x-ndjson", (26, 3)),
    ];
    let mut answers = Vec::new();
    for (plain, content_type, counts) in samples {
        for (format, coding) in [
            (Format::Gzip, "gzip"),
            (Format::Zlib, "deflate"),
            (Format::RawDeflate, "deflate"),
            (Format::Gzip, "x-gzip"),
        ] {
            for chunked in [false, true] {
                answers.push(answer(
                    plain,
                    format,
                    coding,
                    content_type,
                    chunked,
                    counts,
                    &mut rng,
                ));
            }
        }
    }
    let answers = Arc::new(answers);
    let up = scripted(Arc::clone(&answers));
    let mg = Modelgate::start(&config_json(&[("m", &up.url())]));
    let (mut prompt, mut completion) = (0, 0);
    let mut c = Client::connect(mg.addr());
    for (i, a) in answers.iter().enumerate() {
        c.send(
            format!(
                "GET /route/m/answer/{i} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate\r\n\r\n"
            )
            .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body, a.body,
            "answer {i}: the client gets the upstream's bytes"
        );
        // The framing too: the response as written, head rewritten, body as sent.
        let wire: Vec<u8> = a.pieces.concat();
        let body_at = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(
            r.raw.ends_with(&wire[body_at..]),
            "answer {i}: framing forwarded"
        );
        prompt += a.prompt;
        completion += a.completion;
        wait_tokens(&mg, prompt, completion);
    }
    for reason in [
        "br",
        "zstd",
        "other_encoding",
        "corrupt",
        "too_large",
        "no_buffer",
    ] {
        assert_eq!(unread(&mg, reason), 0.0, "{reason}");
    }
}

#[test]
fn the_mock_gzips_when_asked_and_every_answer_is_counted() {
    let mock = MockUpstream::openai("m");
    let mg = Modelgate::start(&config_json(&[("m", &mock.url())]));
    let (mut prompt, mut completion) = (0u64, 0u64);
    for (path, stream, encoding) in [
        ("/v1/chat/completions", false, "gzip, deflate"),
        ("/v1/chat/completions", true, "gzip, deflate"),
        ("/v1/completions", true, "deflate"),
        ("/v1/responses", false, "gzip"),
        ("/v1/responses", true, "gzip;q=1.0, deflate;q=0.5"),
    ] {
        let body = json!({
            "model": "m",
            "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hello"}],
        })
        .to_string();
        let ae = format!("Accept-Encoding: {encoding}");
        let r = request(
            mg.addr(),
            "POST",
            path,
            &[
                "Content-Type: application/json",
                &ae,
                "X-Mock-Sse-Events: 5",
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{path}");
        let want = if encoding.starts_with("deflate") {
            "deflate"
        } else {
            "gzip"
        };
        assert_eq!(r.header("content-encoding"), Some(want), "{path} {stream}");
        // The mock's counts: body bytes / 4 prompt tokens, 5 completion tokens.
        prompt += (body.len() / 4) as u64;
        completion += 5;
        wait_tokens(&mg, prompt, completion);
    }
}

#[test]
fn answers_whose_usage_cannot_be_read_are_counted_by_reason() {
    let mock = MockUpstream::openai("m");
    let mg = Modelgate::start(&config_json(&[("m", &mock.url())]));
    let chat = |extra: &str| {
        let r = request(
            mg.addr(),
            "POST",
            "/v1/chat/completions",
            &["Content-Type: application/json", extra],
            chat_body("m", false).as_bytes(),
        );
        assert_eq!(r.status, 200);
        r
    };
    // Labelled br (the mock sends the JSON as it is): not decoded, not guessed at.
    let r = chat("X-Mock-Content-Encoding: br");
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert!(wait_until(WAIT, || unread(&mg, "br") == 1.0));
    assert_eq!(tokens(&mg, "completion"), 0.0);
    // Labelled gzip but sent plain: corrupt, and the client still gets exactly those bytes.
    let corrupt = ScriptedUpstream::start(|c| {
        while c.read_request().is_some() {
            let body = br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
            let _ = c.respond(200, &["Content-Encoding: gzip"], body);
        }
    });
    let mg2 = Modelgate::start(&config_json(&[("m", &corrupt.url())]));
    let r = post_json(mg2.addr(), "/v1/chat/completions", &chat_body("m", false));
    assert_eq!(
        r.body,
        br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#
    );
    assert!(wait_until(WAIT, || unread(&mg2, "corrupt") == 1.0));
    assert_eq!(tokens(&mg2, "prompt"), 0.0);
    // A plain answer afterwards is counted as ever.
    let _ = chat("X-Mock-Sse-Events: 2");
    assert!(wait_until(WAIT, || tokens(&mg, "completion") == 2.0));
    assert_eq!(unread(&mg, "corrupt"), 0.0);
}

#[test]
fn generation_speed_comes_from_paced_streams_only() {
    let mock = MockUpstream::openai("m");
    let mg = Modelgate::start(&config_json(&[("m", &mock.url())]));
    let count = |mg: &Modelgate| {
        sample(
            mg,
            "modelgate_generation_tokens_per_second_count{model=\"m\"}",
        )
    };
    let rate_sum = |mg: &Modelgate| {
        sample(
            mg,
            "modelgate_generation_tokens_per_second_sum{model=\"m\"}",
        )
    };
    // Non-streamed answers (plain and gzip'd, the head and body arriving apart) never feed it.
    for ae in ["Accept-Encoding: identity", "Accept-Encoding: gzip"] {
        let r = request(
            mg.addr(),
            "POST",
            "/v1/chat/completions",
            &[ae, "X-Mock-Latency-Ms: 20"],
            chat_body("m", false).as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    assert!(wait_until(WAIT, || tokens(&mg, "completion") == 16.0));
    assert_eq!(count(&mg), 0.0, "non-streamed answers show no generation");
    // A stream sent in one go has no window either.
    let stream_body = json!({
        "model": "m", "stream": true, "stream_options": {"include_usage": true}, "messages": [],
    })
    .to_string();
    let r = request(
        mg.addr(),
        "POST",
        "/v1/chat/completions",
        &["X-Mock-Sse-Events: 10"],
        stream_body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(wait_until(WAIT, || tokens(&mg, "completion") == 26.0));
    // (Usually one read; when the kernel splits it, the window is still tiny: either way
    // what is recorded is not a paced stream's rate, so only the paced ones are checked.)
    let before = count(&mg);
    let sum_before = rate_sum(&mg);
    // Paced streams, plain and gzip'd: 10 tokens, one event every 30 ms.
    for ae in ["Accept-Encoding: identity", "Accept-Encoding: gzip"] {
        let r = request(
            mg.addr(),
            "POST",
            "/v1/chat/completions",
            &[ae, "X-Mock-Sse-Events: 10", "X-Mock-Sse-Interval-Ms: 30"],
            stream_body.as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    assert!(wait_until(WAIT, || count(&mg) == before + 2.0));
    // 10 tokens over the 12 events' first-to-last span (11 gaps of at least 30 ms): at most
    // 10 / 0.33 s ≈ 30 tokens/s each; far below what a transfer-based rate would say.
    let mean = (rate_sum(&mg) - sum_before) / 2.0;
    assert!(mean > 0.5 && mean < 31.0, "mean rate {mean} tokens/s");
}

#[test]
fn the_mock_transcribes_uploads_and_its_gzip_answer_is_counted() {
    let mock = MockUpstream::openai("whisper-1");
    let mg = Modelgate::start(&config_json(&[("whisper-1", &mock.url())]));
    let boundary = "mgtestboundary";
    let audio = vec![0x52u8; 1234];
    let mut body = Vec::new();
    for (name, value) in [("model", "whisper-1"), ("response_format", "json")] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&audio);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("Content-Type: multipart/form-data; boundary={boundary}");
    let r = request(
        mg.addr(),
        "POST",
        "/v1/audio/transcriptions",
        &[&ct, "Accept-Encoding: gzip"],
        &body,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut text)
        .expect("gzip");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["text"], "mock transcription of 1234 bytes");
    // input_tokens = file bytes / 100, output_tokens = the words of the text.
    let ok = wait_until(WAIT, || {
        let t = |kind: &str| {
            sample(
                &mg,
                &format!("modelgate_tokens_total{{model=\"whisper-1\",kind=\"{kind}\"}}"),
            )
        };
        t("prompt") == 12.0 && t("completion") == 5.0
    });
    assert!(ok, "the transcription's usage was counted");
}
