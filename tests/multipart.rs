//! Multipart uploads routed by their `model` form field (issue 11): `POST
//! /v1/audio/transcriptions` and friends, over real sockets, byte for byte.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const BOUNDARY: &str = "----modelgate-test-7MA4YWxkTrZu0gW";

/// An upstream that answers every request with `{"text":"<name>"}` and records it.
fn transcriber(name: &'static str) -> ScriptedUpstream {
    ScriptedUpstream::start(move |conn| {
        while conn.read_request().is_some() {
            let body = json!({ "text": name }).to_string();
            if conn.respond_json(200, &body).is_err() {
                return;
            }
        }
    })
}

/// A multipart body: the file part first, then the text fields in order.
fn form(file: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(file.len() + 512);
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"speech.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A file that holds CRLF and `--` sequences (and a boundary prefix) all over.
fn noisy_file(len: usize) -> Vec<u8> {
    let pattern = format!("RIFF\r\n--{}\r\n\r\n--\r", &BOUNDARY[..20]);
    let mut v = Vec::with_capacity(len);
    let mut i: u32 = 0;
    while v.len() < len {
        if i % 7 == 0 {
            v.extend_from_slice(pattern.as_bytes());
        }
        v.push((i.wrapping_mul(2_654_435_761) >> 24) as u8);
        i += 1;
    }
    v.truncate(len);
    v
}

/// A transcription request head with a chunked body.
fn chunked_head(content_type: &str) -> Vec<u8> {
    format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: modelgate.test\r\n{content_type}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes()
}

fn content_type() -> String {
    format!("Content-Type: multipart/form-data; boundary={BOUNDARY}")
}

fn two_models() -> (ScriptedUpstream, ScriptedUpstream, Modelgate) {
    let whisper = transcriber("whisper");
    let other = transcriber("other");
    let config = json!({
        "listen": "127.0.0.1:0",
        "models": {
            "whisper-1": {"url": whisper.url()},
            "other": {"url": other.url()},
        },
    });
    let mg = Modelgate::start(&config.to_string());
    (whisper, other, mg)
}

#[test]
fn a_5_mb_upload_with_the_model_last_is_routed_and_arrives_byte_identical() {
    let (whisper, other, mg) = two_models();
    let body = form(
        &noisy_file(5 * 1024 * 1024),
        &[("language", "en"), ("model", "whisper-1")],
    );
    let ct = content_type();
    let mut c = Client::connect(mg.addr());
    c.set_read_timeout(T);
    c.send(&request_bytes(
        "POST",
        "/v1/audio/transcriptions",
        &[&ct, "Authorization: Bearer sk-x"],
        &body,
    ));
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["text"], "whisper");
    let got = whisper.wait_requests(1, T);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path(), "/v1/audio/transcriptions");
    assert_eq!(
        got[0].header("content-type"),
        Some(&ct["Content-Type: ".len()..])
    );
    assert_eq!(got[0].raw_body.len(), body.len());
    assert!(got[0].raw_body == body, "the upload changed on the way");
    assert_eq!(other.request_count(), 0);

    // The same connection goes on: a translation routed to the other model, model first.
    let body = form(&noisy_file(70_000), &[]);
    let mut with_model_first =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=model\r\n\r\nother\r\n")
            .into_bytes();
    with_model_first.extend_from_slice(&body);
    c.send(&request_bytes(
        "POST",
        "/v1/audio/translations",
        &[&ct],
        &with_model_first,
    ));
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["text"], "other");
    let got = other.wait_requests(1, T);
    assert!(got[0].raw_body == with_model_first);
}

#[test]
fn a_chunked_upload_is_routed_and_its_payload_arrives_intact() {
    let (whisper, _other, mg) = two_models();
    let body = form(&noisy_file(300_000), &[("model", "whisper-1")]);
    let mut chunked = Vec::new();
    for piece in body.chunks(10_007) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let ct = content_type();
    let mut c = Client::connect(mg.addr());
    c.set_read_timeout(T);
    c.send(&chunked_head(&ct));
    c.send(&chunked);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = whisper.wait_requests(1, T);
    assert!(got[0].body == body);
}

fn post_form(mg: &Modelgate, content_type: &str, body: &[u8]) -> Response {
    let mut c = Client::connect(mg.addr());
    c.set_read_timeout(T);
    c.send(&request_bytes(
        "POST",
        "/v1/audio/transcriptions",
        &[content_type, "Connection: close"],
        body,
    ));
    c.read_response()
}

#[test]
fn malformed_multipart_is_a_400_with_an_openai_error() {
    let (whisper, other, mg) = two_models();
    let ct = content_type();
    let good = form(b"abc", &[("model", "whisper-1")]);
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "invalid_multipart",
            "Content-Type: multipart/form-data".into(),
            good.clone(),
        ),
        (
            "invalid_multipart",
            "Content-Type: multipart/form-data; boundary=\"bad{boundary}\"".into(),
            good.clone(),
        ),
        (
            "invalid_multipart",
            ct.clone(),
            good[..good.len() - 4].to_vec(),
        ),
        (
            "invalid_multipart",
            ct.clone(),
            format!("--{BOUNDARY}\r\nContent-Disposition form-data\r\n\r\nx\r\n--{BOUNDARY}--")
                .into_bytes(),
        ),
        (
            "invalid_multipart",
            ct.clone(),
            b"{\"model\":\"whisper-1\"}".to_vec(),
        ),
        (
            "missing_model",
            ct.clone(),
            form(b"abc", &[("language", "en")]),
        ),
        (
            "duplicate_model",
            ct.clone(),
            form(b"abc", &[("model", "whisper-1"), ("model", "other")]),
        ),
    ];
    for (code, content_type, body) in cases {
        let resp = post_form(&mg, &content_type, &body);
        assert_eq!(resp.status, 400, "{code}: {}", resp.text());
        let v = resp.json();
        assert_eq!(v["error"]["code"], code, "{}", resp.text());
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].is_string());
    }
    let resp = post_form(&mg, &ct, &form(b"abc", &[("model", "nope")]));
    assert_eq!(resp.status, 404);
    assert_eq!(resp.error_code().as_deref(), Some("model_not_found"));
    assert_eq!(whisper.request_count() + other.request_count(), 0);
}

#[test]
fn a_multipart_body_over_max_body_bytes_is_413() {
    let up = transcriber("whisper");
    let config = json!({
        "listen": "127.0.0.1:0",
        "maxBodyBytes": 1_000_000,
        "models": {"whisper-1": {"url": up.url()}},
    });
    let mg = Modelgate::start(&config.to_string());
    let body = form(&noisy_file(1_200_000), &[("model", "whisper-1")]);
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut c = Client::connect(mg.addr());
    c.set_read_timeout(T);
    c.send(&chunked_head(&content_type()));
    let _ = c.try_send(&chunked);
    let resp = c.read_response();
    assert_eq!(resp.status, 413);
    assert_eq!(up.request_count(), 0);
}

/// Checks one upload as the SDK sends it: the multipart `file` part holds exactly the
/// generated audio and the `model` field names `model`. Returns the answer text or why not.
fn check_upload(req: &RecordedRequest, model: &str, size: usize) -> Result<String, String> {
    let ct = req.header("content-type").unwrap_or_default();
    let boundary = ct
        .split("boundary=")
        .nth(1)
        .map(|b| b.trim_matches('"').to_owned())
        .ok_or(format!("no boundary in {ct:?}"))?;
    let body = &req.body;
    let find = |needle: &[u8], from: usize| {
        body.get(from..)
            .and_then(|hay| hay.windows(needle.len()).position(|w| w == needle))
            .map(|i| i + from)
    };
    let file_head = find(b"filename=", 0).ok_or("no file part")?;
    let start = find(b"\r\n\r\n", file_head).ok_or("no end of the file part headers")? + 4;
    let audio: Vec<u8> = (0..size).map(|i| ((i * 7 + 3) % 256) as u8).collect();
    if body.get(start..start + size) != Some(&audio[..]) {
        return Err("the file part is not the uploaded audio".into());
    }
    let after = format!("\r\n--{boundary}");
    if body.get(start + size..start + size + after.len()) != Some(after.as_bytes()) {
        return Err("the file part does not end where the audio ends".into());
    }
    let field = format!("name=\"model\"\r\n\r\n{model}\r\n--{boundary}");
    find(field.as_bytes(), 0).ok_or("no model field")?;
    Ok(format!("ok {size}"))
}

#[test]
fn openai_python_sdk_audio_uploads_work_through_modelgate() {
    let Ok(python) = std::env::var("MODELGATE_SDK_PYTHON") else {
        println!("SKIPPED: set MODELGATE_SDK_PYTHON (scripts/test.sh does)");
        return;
    };
    const SIZE: usize = 300_000;
    let up = ScriptedUpstream::start(|conn| {
        while let Some(req) = conn.read_request() {
            let sent = match check_upload(&req, "whisper-1", SIZE) {
                Ok(text) => conn.respond_json(200, &json!({ "text": text }).to_string()),
                Err(why) => conn.respond_json(400, &json!({ "error": why }).to_string()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let config = json!({
        "listen": "127.0.0.1:0",
        "models": {"whisper-1": {"url": up.url()}},
    });
    let mg = Modelgate::start(&config.to_string());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/openai_audio_test.py"
    );
    let out = std::process::Command::new(&python)
        .arg(script)
        .env("MODELGATE_URL", format!("{}/v1", mg.url()))
        .env("MODELGATE_AUDIO_MODEL", "whisper-1")
        .env("MODELGATE_AUDIO_BYTES", SIZE.to_string())
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {python} {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "SDK audio test failed ({}):\n{stdout}\n--- stderr ---\n{}\n--- modelgate stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        mg.stderr_lines().join("\n")
    );
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3, "uploads that reached the mock");
    assert_eq!(reqs[2].path(), "/v1/audio/translations");
}

#[test]
fn an_upload_with_expect_100_continue_gets_its_continue_first() {
    // curl sends `Expect: 100-continue` before large `-F file=@…` uploads.
    let (whisper, _other, mg) = two_models();
    let body = form(&noisy_file(2_000_000), &[("model", "whisper-1")]);
    let mut c = Client::connect(mg.addr());
    c.set_read_timeout(T);
    c.send(
        format!(
            "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: modelgate.test\r\n{}\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            content_type(),
            body.len()
        )
        .as_bytes(),
    );
    let cont = c.read_response_no_body();
    assert_eq!(cont.status, 100);
    c.send(&body);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = whisper.wait_requests(1, T);
    assert!(got[0].raw_body == body);
    assert!(got[0].header("expect").is_none());
}
