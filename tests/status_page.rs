//! The status page (issue 20): `/status` and `/status.json` over real sockets (auth like
//! `/metrics`, Basic for browsers), and the page itself in headless Chromium against a live
//! modelgate whose replicas are up, ejected and health-checked down: the page draws that,
//! then the test changes the state (the down replica heals, a new error happens) and waits
//! for the page's own polling to show it.
//!
//! Chromium is driven over the DevTools protocol (a WebSocket to the page target, written
//! by hand with the tunnel tests' frame helpers). It is found as `$MODELGATE_CHROMIUM`,
//! `chromium`, `chromium-browser` or `google-chrome`; scripts/test.sh installs Debian's
//! `chromium` when it can. Without one the browser test says it skips and why, except
//! under CI (`CI` set), where it fails.
//!
//! `MODELGATE_STATUS_SCREENSHOT=/tmp/s.png cargo test --test status_page chromium` also
//! writes a screenshot of the page in that state (440 px wide, with some traffic); the
//! README's `docs/status-page.png` is that, through `pngquant --quality=60-85`.

mod common;
use common::observed::{Observed, ADMIN_TOKEN};
use common::websocket::{base64, read_frame, read_head, write_frame, OP_CLOSE, OP_TEXT};
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

// ----- the endpoints ---------------------------------------------------------------------

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!("Authorization: Basic {}", base64(raw.as_bytes()))
}

fn base64_decode(text: &str) -> Vec<u8> {
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    } as u32;
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for group in text.chunks(4) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | sextet(c) << (18 - 6 * i));
        out.extend_from_slice(&bits.to_be_bytes()[1..group.len()]);
    }
    out
}

#[test]
fn the_page_is_html_and_the_json_describes_models_replicas_and_errors() {
    let o = Observed::start(false);
    let page = get(o.gw.addr(), "/status");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("status.json"));
    let head = request(o.gw.addr(), "HEAD", "/status", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), page.header("content-length"));
    let post = request(o.gw.addr(), "POST", "/status", &[], b"{}");
    assert_eq!(post.status, 405);

    let r = get(o.gw.addr(), "/status.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].as_f64().expect("uptime") > 0.0);
    assert_eq!(v["buffer"]["limit_bytes"], 1u64 << 30, "the default budget");
    let chat = &v["models"][0];
    assert_eq!(chat["name"], "chat");
    let states: Vec<(&str, &str)> = chat["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| {
            (
                r["url"].as_str().expect("url"),
                r["state"].as_str().expect("state"),
            )
        })
        .collect();
    let (healthy, failing, down) = (o.healthy.url(), o.failing.url(), o.down.url());
    assert_eq!(
        states,
        [
            (healthy.as_str(), "up"),
            (failing.as_str(), "ejected"),
            (down.as_str(), "down")
        ]
    );
    let ejected_for = chat["replicas"][1]["ejected_for_seconds"]
        .as_f64()
        .expect("ejected_for_seconds");
    assert!(ejected_for > 500.0 && ejected_for <= 600.0, "{ejected_for}");
    assert!(chat["requests"].as_u64().expect("requests") >= 6);
    assert_eq!(chat["errors"], 1);
    assert!(chat["tokens"]["completion"].as_u64().expect("tokens") > 0);
    assert!(chat["ttfb"]["count"].as_u64().expect("ttfb count") >= 6);
    let embed = &v["models"][1];
    assert_eq!(embed["name"], "embed");
    assert_eq!(embed["replicas"][0]["state"], "up");
    assert_eq!(
        embed["replicas"][0]["outstanding"], 0,
        "a limited model is counted"
    );
    assert_eq!(embed["queued"], 0);
    let errors = v["recent_errors"]["entries"].as_array().expect("entries");
    assert_eq!(v["recent_errors"]["total"], 1, "{errors:?}");
    assert_eq!(errors[0]["model"], "chat");
    assert_eq!(errors[0]["status"], 502);
    assert_eq!(
        errors[0]["outcome"], "ok",
        "the upstream's own 502, forwarded whole"
    );
    // The error entry holds no body, header or token: exactly these fields.
    let keys: Vec<&String> = errors[0].as_object().expect("entry").keys().collect();
    assert_eq!(keys, ["at", "seconds_ago", "model", "status", "outcome"]);
    assert!(!r.text().contains("backend exploded"));
}

#[test]
fn with_auth_the_status_page_takes_the_token_as_bearer_or_as_a_basic_password() {
    let o = Observed::start(true);
    let addr = o.gw.addr();
    let bare = get(addr, "/status");
    assert_eq!(bare.status, 401);
    assert_eq!(bare.error_code().as_deref(), Some("invalid_api_key"));
    let challenges = bare.header_all("www-authenticate");
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=")),
        "a browser is asked for the token: {challenges:?}"
    );
    assert_eq!(get(addr, "/status.json").status, 401);
    let good = basic("anyone", ADMIN_TOKEN);
    assert_eq!(request(addr, "GET", "/status", &[&good], b"").status, 200);
    let json = request(addr, "GET", "/status.json", &[&good], b"");
    assert_eq!(json.status, 200);
    assert_eq!(
        json.json()["rate_limited"],
        1,
        "the fixture's second limited request"
    );
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}");
    assert_eq!(
        request(addr, "GET", "/status.json", &[&bearer], b"").status,
        200
    );
    let wrong = basic("anyone", "not-the-token");
    assert_eq!(request(addr, "GET", "/status", &[&wrong], b"").status, 401);
    // Basic is for the status page only: everything else wants the bearer token.
    let metrics = request(addr, "GET", "/metrics", &[&good], b"");
    assert_eq!(metrics.status, 401);
    assert_eq!(
        metrics.header_all("www-authenticate"),
        ["Bearer"],
        "no Basic prompt elsewhere"
    );
    let chat = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[&good, "Content-Type: application/json"],
        chat_body("chat", false).as_bytes(),
    );
    assert_eq!(chat.status, 401);
}

// ----- Chromium over the DevTools protocol -----------------------------------------------

/// The Chromium binary, or why there is none.
fn find_chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MODELGATE_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(
        "no chromium, chromium-browser or google-chrome on PATH and MODELGATE_CHROMIUM unset \
         (scripts/test.sh installs Debian's chromium when run as root)"
            .into(),
    )
}

/// A headless Chromium with the DevTools protocol on a loopback port; killed on drop.
struct Browser {
    child: Child,
    port: u16,
    _profile: TempDir,
}

impl Browser {
    fn launch(bin: &Path) -> Browser {
        let profile = TempDir::new();
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1000,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // Chromium writes the port it chose into the profile.
        let active = profile.join("DevToolsActivePort");
        let mut port = None;
        wait_until(LONG, || {
            port = std::fs::read_to_string(&active)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
            port.is_some()
        });
        let mut browser = Browser {
            child,
            port: 0,
            _profile: profile,
        };
        browser.port = port.unwrap_or_else(|| {
            let _ = browser.child.kill();
            panic!(
                "{} did not open its DevTools port within {LONG:?}",
                bin.display()
            )
        });
        browser
    }

    /// A plain HTTP GET to the DevTools server (it insists on an IP or localhost `Host`).
    fn http_get(&self, path: &str) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("devtools http");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        s.write_all(req.as_bytes()).expect("send");
        // It keeps the connection open whatever we ask: read exactly Content-Length.
        let (status, headers) = read_head(&mut s).expect("devtools answer");
        assert_eq!(status, 200, "devtools {path}");
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .expect("content-length");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("devtools body");
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("devtools {path}: {e}"))
    }

    /// The first page target, driven over its WebSocket.
    fn page(&self) -> Page {
        let mut url = None;
        wait_until(LONG, || {
            url = self.http_get("/json/list").as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            url.is_some()
        });
        let url = url.expect("a page target");
        let path = url
            .split_once("127.0.0.1:")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, p)| format!("/{p}"))
            .unwrap_or_else(|| panic!("unexpected debugger url {url}"));
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("devtools ws");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        let handshake = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.port,
            common::websocket::SAMPLE_KEY
        );
        s.write_all(handshake.as_bytes()).expect("handshake");
        let (status, _) = read_head(&mut s).expect("handshake answer");
        assert_eq!(status, 101, "devtools websocket");
        Page { ws: s, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Page {
    ws: TcpStream,
    next_id: u64,
}

impl Page {
    /// One DevTools command and its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        write_frame(&mut self.ws, OP_TEXT, msg.as_bytes(), true).expect("send command");
        loop {
            let frame = read_frame(&mut self.ws).expect("devtools answer");
            assert_ne!(frame.opcode, OP_CLOSE, "devtools closed the websocket");
            let v: Value = serde_json::from_slice(&frame.payload).expect("devtools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value (JSON-serialisable).
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// What the page shows now: polls, header, the tiles, each replica row as
    /// (model, url, state), each error row as (model, status), and all the visible text.
    fn view(&mut self) -> View {
        let v = self.eval(
            r##"JSON.stringify({
                polls: +(document.getElementById("polls") || {dataset: {}}).dataset.polls || 0,
                version: (document.getElementById("version") || {}).textContent,
                rps: (document.getElementById("t-rps") || {}).textContent,
                window: (document.getElementById("window") || {}).textContent,
                replicas: [...document.querySelectorAll("section[data-model] tr[data-state]")]
                    .map(tr => [tr.closest("section").dataset.model, tr.cells[0].textContent, tr.dataset.state]),
                errors: [...document.querySelectorAll("#errors tr[data-status]")]
                    .map(tr => [tr.cells[1].textContent, tr.dataset.status]),
                text: document.body ? document.body.innerText : ""
            })"##,
        );
        let v: Value = serde_json::from_str(v.as_str().unwrap_or("{}")).expect("view JSON");
        let rows = |key: &str| -> Vec<Vec<String>> {
            v[key]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|row| {
                    row.as_array()
                        .map_or(&[][..], Vec::as_slice)
                        .iter()
                        .map(|c| c.as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .collect()
        };
        let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
        View {
            polls: v["polls"].as_u64().unwrap_or(0),
            version: text("version"),
            rps: text("rps"),
            window: text("window"),
            replicas: rows("replicas"),
            errors: rows("errors"),
            text: text("text"),
        }
    }

    /// Polls the page's view until `done` holds; panics with the last view after `LONG`.
    fn wait_for(&mut self, what: &str, done: impl Fn(&View) -> bool) -> View {
        let deadline = Instant::now() + LONG;
        loop {
            let view = self.view();
            if done(&view) {
                return view;
            }
            if Instant::now() > deadline {
                panic!("the page never showed {what} within {LONG:?}; it shows:\n{view:#?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[derive(Debug)]
struct View {
    polls: u64,
    version: String,
    rps: String,
    window: String,
    /// (model, replica url, state) per replica row.
    replicas: Vec<Vec<String>>,
    /// (model, status) per error row.
    errors: Vec<Vec<String>>,
    text: String,
}

impl View {
    fn state(&self, model: &str, url: &str) -> Option<&str> {
        self.replicas
            .iter()
            .find(|r| r[0] == model && r[1] == url)
            .map(|r| r[2].as_str())
    }

    fn has_error(&self, model: &str, status: u16) -> bool {
        self.errors
            .iter()
            .any(|e| e[0] == model && e[1] == status.to_string())
    }
}

/// The browser, or why the test skips (never under CI).
fn chromium_or_skip() -> Option<PathBuf> {
    match find_chromium() {
        Ok(p) => Some(p),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI must run the status page in Chromium: {why}")
        }
        Err(why) => {
            // Past the test harness's capture (which only takes `print!`s): a skip is seen.
            let line = format!("\nSKIP status page in Chromium: {why}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

#[test]
fn chromium_draws_the_status_page_and_follows_live_changes() {
    let Some(bin) = chromium_or_skip() else {
        return;
    };
    let o = Observed::start(false);
    let browser = Browser::launch(&bin);
    let mut page = browser.page();
    let url = format!("http://{}/status", o.gw.addr());
    page.call("Page.navigate", json!({"url": url}));
    let (healthy, failing, down) = (o.healthy.url(), o.failing.url(), o.down.url());

    // What the fixture did: one replica up, one ejected by its 502, one failing its checks.
    let first = page.wait_for("the three replica states and the 502", |v| {
        v.state("chat", &healthy) == Some("up")
            && v.state("chat", &failing) == Some("ejected")
            && v.state("chat", &down) == Some("down")
            && v.has_error("chat", 502)
    });
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(first.state("embed", &healthy), Some("up"));
    assert!(first.text.contains("1/3 up"), "{}", first.text);
    assert!(first.text.contains("Last errors"), "{}", first.text);

    if let Some(path) = std::env::var_os("MODELGATE_STATUS_SCREENSHOT") {
        // Some traffic over a few polls, so the rates have something to show.
        for i in 0..30 {
            o.post("/v1/chat/completions", &chat_body("chat", i % 2 == 0));
            std::thread::sleep(Duration::from_millis(100));
        }
        screenshot(&mut page, Path::new(&path));
    }

    // Live: the down replica heals and a new error happens; the page's own polling shows
    // both, and by then it has computed rates from two polls.
    let before = first.polls;
    o.heal_down();
    let failed = o.post_with(
        "/v1/embeddings",
        r#"{"model":"embed","input":"x"}"#,
        &["X-Mock-Status: 500"],
    );
    assert_eq!(failed.status, 500);
    let later = page.wait_for("the healed replica and the new 500", |v| {
        v.state("chat", &down) == Some("up") && v.has_error("embed", 500)
    });
    assert!(
        later.polls > before,
        "{} polls, then {}",
        before,
        later.polls
    );
    assert!(later.text.contains("2/3 up"), "{}", later.text);
    assert_eq!(later.state("chat", &failing), Some("ejected"));
    assert!(
        later.window.starts_with("(rates over the last"),
        "{}",
        later.window
    );
    assert_ne!(later.rps, "–", "requests/s is drawn once two polls exist");
    assert!(later.errors.len() >= 2, "{:?}", later.errors);
}

/// A PNG of the page at a phone-like width (what the README shows).
fn screenshot(page: &mut Page, path: &Path) {
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 440, "height": 1000, "deviceScaleFactor": 1, "mobile": true}),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let height = page
        .eval("document.documentElement.scrollHeight")
        .as_f64()
        .unwrap_or(1000.0);
    let shot = page.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true,
               "clip": {"x": 0, "y": 0, "width": 440, "height": height, "scale": 1}}),
    );
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}
