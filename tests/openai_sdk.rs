//! modelgate through the official `openai` Python SDK (tests/sdk/openai_sdk_test.py).
//! Needs `MODELGATE_SDK_PYTHON` (a python with `openai` installed; scripts/test.sh makes one).

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn openai_python_sdk_works_through_modelgate() {
    let Ok(python) = std::env::var("MODELGATE_SDK_PYTHON") else {
        println!("SKIPPED: set MODELGATE_SDK_PYTHON (scripts/test.sh does)");
        return;
    };
    let mock = MockUpstream::openai("sdk-mock");
    let url = mock.url();
    let config = serde_json::json!({
        "listen": "127.0.0.1:0",
        "models": {
            "qwen3-8b": {"url": url},
            "Qwen/Qwen3-Embedding-0.6B": {"url": url},
            "hidden-model": {"url": url, "unlisted": true},
        },
    });
    let mg = Modelgate::start(&config.to_string());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk_test.py");
    let mut child = Command::new(&python)
        .arg(script)
        .env("MODELGATE_URL", format!("{}/v1", mg.url()))
        // Byte order: uppercase sorts first.
        .env("MODELGATE_MODELS", "Qwen/Qwen3-Embedding-0.6B,qwen3-8b")
        .env("MODELGATE_CHAT_MODEL", "qwen3-8b")
        .env("MODELGATE_EMBED_MODEL", "Qwen/Qwen3-Embedding-0.6B")
        .env("MODELGATE_HIDDEN_MODEL", "hidden-model")
        .env("MODELGATE_SSE_EVENTS", "8")
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {python} {script}: {e}"));
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out_t = drain(Box::new(child.stdout.take().unwrap()));
    let err_t = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the SDK script ran over 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    println!("{stdout}");
    assert!(
        status.success(),
        "SDK test failed ({status}):\n{stdout}\n--- stderr ---\n{stderr}\n--- modelgate stderr ---\n{}",
        mg.stderr_lines().join("\n")
    );
    // Chat, streamed chat, raw SSE, embedding and the unlisted model reach the mock; the
    // model list, retrieve and the unknown model are answered by modelgate itself.
    assert_eq!(mock.requests(), 5, "requests that reached the mock");
}
