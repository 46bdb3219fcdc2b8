//! modelgate through the official `openai` Python SDK (tests/sdk/openai_sdk_test.py), and the
//! SDK through every config modelgate ships (tests/sdk/openai_configs_test.py).
//! Needs `MODELGATE_SDK_PYTHON` (a python with `openai` installed; scripts/test.sh makes one).

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `script` with `python` and `env`; returns (success, stdout, stderr). Proxies are
/// switched off: the SDK must talk to loopback directly.
fn run_python(python: &str, script: &str, env: &[(&str, String)]) -> (bool, String, String) {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
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
    (
        status.success(),
        out_t.join().unwrap(),
        err_t.join().unwrap(),
    )
}

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
    let (ok, stdout, stderr) = run_python(
        &python,
        script,
        &[
            ("MODELGATE_URL", format!("{}/v1", mg.url())),
            // Byte order: uppercase sorts first.
            (
                "MODELGATE_MODELS",
                "Qwen/Qwen3-Embedding-0.6B,qwen3-8b".into(),
            ),
            ("MODELGATE_CHAT_MODEL", "qwen3-8b".into()),
            ("MODELGATE_EMBED_MODEL", "Qwen/Qwen3-Embedding-0.6B".into()),
            ("MODELGATE_HIDDEN_MODEL", "hidden-model".into()),
            ("MODELGATE_SSE_EVENTS", "8".into()),
        ],
    );
    println!("{stdout}");
    assert!(
        ok,
        "SDK test failed:\n{stdout}\n--- stderr ---\n{stderr}\n--- modelgate stderr ---\n{}",
        mg.stderr_lines().join("\n")
    );
    // Chat, streamed chat, raw SSE, embedding and the unlisted model reach the mock; the
    // model list, retrieve and the unknown model are answered by modelgate itself.
    assert_eq!(mock.requests(), 5, "requests that reached the mock");
}

// ---------------------------------------------------------------------------------------------
// Every shipped config, with its model URLs pointed at a mock.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every config modelgate ships: examples/*.json, each ```json block of the README that is a
/// whole config (it has `models` or `discover`), and the Kubernetes ConfigMap's config.json.
fn shipped_configs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut examples: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    examples.sort();
    for path in examples {
        let text = std::fs::read_to_string(&path).expect("readable example");
        let name = format!("examples/{}", path.file_name().unwrap().to_string_lossy());
        out.push((name, serde_json::from_str(&text).expect("example parses")));
    }
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README");
    for (i, block) in readme.split("```json\n").skip(1).enumerate() {
        let block = block.split("```").next().unwrap_or("");
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(block) {
            if v.get("models").is_some() || v.get("discover").is_some() {
                out.push((format!("README.md json block {}", i + 1), v));
            }
        }
    }
    let cm = std::fs::read_to_string(Path::new(ROOT).join("deploy/kubernetes/configmap.yaml"))
        .expect("configmap.yaml");
    let json: String = cm
        .split("config.json: |\n")
        .nth(1)
        .expect("config.json in the ConfigMap")
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    out.push((
        "deploy/kubernetes/configmap.yaml".into(),
        serde_json::from_str(&json).expect("the ConfigMap's config parses"),
    ));
    out
}

/// `url` with its scheme and authority (or unix socket) replaced by `origin`; the base path
/// and query stay as written.
fn repoint(url: &str, origin: &str) -> String {
    if url.starts_with("unix:") {
        return origin.to_string();
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let tail = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
    format!("{origin}{tail}")
}

/// The config made runnable here: listening on a free loopback port, every upstream (`url`,
/// `urls`, `backend`, `discover`) pointed at `origin`, no `caFile` (the mock is plain HTTP).
/// Everything else (tokens, secrets, profiles, aliases, base paths) is kept.
fn runnable(mut config: Value, origin: &str) -> Value {
    let obj = config.as_object_mut().expect("a config is an object");
    for key in ["listen", "host", "port"] {
        obj.remove(key);
    }
    obj.insert("listen".into(), "127.0.0.1:0".into());
    if let Some(Value::Array(list)) = obj.get_mut("discover") {
        // Every backend is the one mock now: once is enough (twice is a config error).
        list.truncate(1);
        for entry in list {
            match entry {
                Value::String(u) => *u = repoint(u, origin),
                Value::Object(o) => {
                    if let Some(Value::String(u)) = o.get_mut("url") {
                        *u = repoint(u, origin);
                    }
                }
                _ => {}
            }
        }
    }
    let host_port = origin.trim_start_matches("http://").to_string();
    if let Some(Value::Object(models)) = obj.get_mut("models") {
        for model in models.values_mut() {
            let Some(m) = model.as_object_mut() else {
                continue;
            };
            m.remove("caFile");
            if let Some(Value::String(u)) = m.get_mut("url") {
                *u = repoint(u, origin);
            }
            if m.contains_key("backend") {
                m.insert("backend".into(), host_port.clone().into());
            }
            if let Some(Value::Array(urls)) = m.get_mut("urls") {
                for entry in urls {
                    match entry {
                        Value::String(u) => *u = repoint(u, origin),
                        Value::Object(o) => {
                            o.remove("caFile");
                            if let Some(Value::String(u)) = o.get_mut("url") {
                                *u = repoint(u, origin);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    config
}

/// Every secret reference in `text` (`${env:X}`, `${X}`, `$X`, `${file:P}`, `${cred:N}`) as
/// (kind, name).
fn secret_refs(text: &str) -> BTreeSet<(String, String)> {
    let mut refs = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        if b.get(i + 1) == Some(&b'{') {
            if let Some(end) = text[i + 2..].find('}') {
                let inner = &text[i + 2..i + 2 + end];
                let (kind, name) = inner.split_once(':').unwrap_or(("env", inner));
                refs.insert((kind.to_string(), name.to_string()));
                i += 3 + end;
                continue;
            }
        }
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            refs.insert(("env".to_string(), name.clone()));
        }
        i += 1 + name.len();
    }
    refs
}

/// The value this test gives a secret: `test-secret-NAME` (the file name for files).
fn secret_value(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    format!("test-secret-{base}")
}

/// `s` with every secret reference replaced by its test value.
fn expand(s: &str) -> String {
    let mut out = s.to_string();
    for (kind, name) in secret_refs(s) {
        for form in [
            format!("${{{kind}:{name}}}"),
            format!("${{{name}}}"),
            format!("${name}"),
        ] {
            out = out.replace(&form, &secret_value(&name));
        }
    }
    out
}

/// A token the config accepts for every model (its first unscoped one), or None when open.
fn client_token(config: &Value) -> Option<String> {
    let unscoped = |e: &Value| match e {
        Value::String(t) => Some(t.clone()),
        Value::Object(o) if o.get("models").is_none() => {
            o.get("token").and_then(Value::as_str).map(str::to_string)
        }
        _ => None,
    };
    let from_tokens = config
        .get("authTokens")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find_map(unscoped));
    let from_nginx = config
        .get("api_key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .or_else(|| {
            config
                .get("api_keys")
                .and_then(Value::as_object)
                .and_then(|m| m.values().find_map(|v| v.as_str().map(str::to_string)))
        });
    from_tokens.or(from_nginx).map(|t| expand(&t))
}

/// The names to call: every model of the config and the mock's discovered one.
fn model_names(config: &Value, mock_name: &str) -> Vec<String> {
    let mut names: Vec<String> = config
        .get("models")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if config.get("discover").is_some() {
        names.push(mock_name.to_string());
    }
    names
}

#[test]
fn the_openai_sdk_works_through_every_shipped_config() {
    let Ok(python) = std::env::var("MODELGATE_SDK_PYTHON") else {
        println!("SKIPPED: set MODELGATE_SDK_PYTHON (scripts/test.sh does)");
        return;
    };
    let configs = shipped_configs();
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "examples/config.json",
        "examples/llmhop-config.json",
        "deploy/kubernetes/configmap.yaml",
    ] {
        assert!(names.contains(&want), "{want} not among {names:?}");
    }
    assert!(
        names.iter().filter(|n| n.starts_with("README")).count() >= 3,
        "the README's configs: {names:?}"
    );
    let mock = MockUpstream::openai("discovered-model");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/openai_configs_test.py"
    );
    for (name, config) in configs {
        let config = runnable(config, &mock.url());
        let text = config.to_string();
        let dir = TempDir::new();
        let mut env: Vec<(String, String)> = Vec::new();
        for (kind, secret) in secret_refs(&text) {
            match kind.as_str() {
                "env" => env.push((secret.clone(), secret_value(&secret))),
                _ => {
                    let file = secret.rsplit('/').next().unwrap_or(&secret).to_string();
                    dir.write(&file, secret_value(&secret));
                }
            }
        }
        let creds = dir.path().to_path_buf();
        let mg = Modelgate::start_in(dir, &text, |cmd| {
            cmd.env("CREDENTIALS_DIRECTORY", &creds);
            for (k, v) in &env {
                cmd.env(k, v);
            }
        });
        let models = model_names(&config, mock.name());
        let (ok, stdout, stderr) = run_python(
            &python,
            script,
            &[
                ("MODELGATE_URL", format!("{}/v1", mg.url())),
                (
                    "MODELGATE_API_KEY",
                    client_token(&config).unwrap_or_default(),
                ),
                ("MODELGATE_MODELS", models.join(",")),
                ("MODELGATE_CONFIG", name.clone()),
            ],
        );
        println!("{stdout}");
        assert!(
            ok,
            "the SDK through {name} failed:\n{stdout}\n--- stderr ---\n{stderr}\n--- config ---\n{text}\n--- modelgate stderr ---\n{}",
            mg.stderr_lines().join("\n")
        );
    }
}

#[test]
fn repoint_keeps_base_path_and_query() {
    let o = "http://127.0.0.1:9";
    assert_eq!(
        repoint("https://api.openai.com/v1", o),
        "http://127.0.0.1:9/v1"
    );
    assert_eq!(repoint("http://h:8000", o), "http://127.0.0.1:9");
    assert_eq!(
        repoint("https://x/openai?api-version=1", o),
        "http://127.0.0.1:9/openai?api-version=1"
    );
    assert_eq!(repoint("unix:///run/llama.sock", o), o);
}
