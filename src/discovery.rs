//! Discovery of local OpenAI-compatible backends, the pure part: the embedded default config,
//! the probe request, reading a backend's `GET /v1/models` answer, and turning what the
//! probes found into models next to the static ones (and log lines when that changes).
//!
//! The probing itself (blocking sockets, timeouts) is the `prober` thread's; the server
//! builds a new `Routes` snapshot from [`with_discovered`] whenever [`Found::serving`]
//! changes. Rules: a static model (or alias) always wins over a discovered one of the same
//! name, and a name served by several backends becomes one model with those backends as
//! replicas (in probe order), balanced like a model's `urls`.

use std::collections::{BTreeMap, HashSet};

use crate::balance::MAX_REPLICAS;
use crate::config::{Config, Discover, Model, ReplicaSpec, Replicas, Upstream};
use crate::h1::{self, ChunkedDecoder, Method, Parse, ResponseFraming};

/// Where modelgate listens when it starts without any config file.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";

/// The well-known ports of local inference servers, probed on loopback by the embedded
/// default, in this (probe) order.
pub const WELL_KNOWN: &[(&str, u16)] = &[
    ("llama.cpp", 8080),
    ("vLLM", 8000),
    ("sglang", 30000),
    ("Ollama", 11434),
    ("LM Studio", 1234),
];

/// Environment variable replacing the embedded default's listen address (tests, or a port
/// clash with 4000). Read only when there is no config file.
pub const ENV_LISTEN: &str = "MODELGATE_LISTEN";
/// Environment variable replacing the embedded default's probe list (comma-separated URLs).
pub const ENV_DISCOVER: &str = "MODELGATE_DISCOVER";

/// The largest `/v1/models` answer read from a backend.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The embedded default's probe list: `http://127.0.0.1:PORT` for every [`WELL_KNOWN`] port.
pub fn well_known_urls() -> Vec<String> {
    WELL_KNOWN
        .iter()
        .map(|(_, port)| format!("http://127.0.0.1:{port}"))
        .collect()
}

/// The config used when modelgate starts with no `--config` and no `./config.json`:
/// [`DEFAULT_LISTEN`] and the well-known local ports, unless `listen`/`discover` (the values
/// of [`ENV_LISTEN`]/[`ENV_DISCOVER`]) replace them. It goes through the normal validation,
/// so a bad override is reported like a bad config key.
pub fn embedded_config_json(listen: Option<&str>, discover: Option<&str>) -> String {
    let urls: Vec<String> = match discover {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
        None => well_known_urls(),
    };
    let doc = serde_json::json!({
        "listen": listen.unwrap_or(DEFAULT_LISTEN),
        "discover": urls,
    });
    doc.to_string()
}

/// The probe: `GET {base}/v1/models` with the backend's headers and `Connection: close`,
/// so the answer ends at EOF at the latest. A configured header replaces the default of the
/// same name (`Host`, `Accept`, `User-Agent`).
pub fn probe_request(backend: &Discover) -> Vec<u8> {
    let up = &backend.upstream;
    let mut out = format!("GET {}/v1/models HTTP/1.1\r\n", up.base_path).into_bytes();
    let defaults = [
        ("Host", up.authority.as_str()),
        ("Accept", "application/json"),
        ("User-Agent", "modelgate-discovery"),
    ];
    let configured = |name: &str| {
        backend
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    for (name, value) in defaults.iter().filter(|(n, _)| !configured(n)) {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    for (name, value) in &backend.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.expose().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// The origin probed, for logs: `http://127.0.0.1:8080`, `unix:/run/llm.sock` (plus the
/// base path when there is one).
pub fn label(up: &Upstream) -> String {
    format!("{up}{}", up.base_path)
}

/// Whether `answer` (everything read so far, the connection still open) holds a complete
/// response, so the prober may stop reading before EOF.
pub fn answer_complete(answer: &[u8]) -> bool {
    matches!(split_answer(answer), Ok(Some(_)))
}

/// The model ids of a complete `/v1/models` answer (status line to end of body). Ids are
/// kept in the backend's order, without duplicates or empty names.
pub fn parse_answer(answer: &[u8]) -> Result<Vec<String>, String> {
    let (status, body) = split_answer(answer)?.ok_or("incomplete answer")?;
    if status != 200 {
        return Err(format!("GET /v1/models answered {status}"));
    }
    model_ids(&body)
}

/// The status and de-chunked body once the response is complete (Ok(None) while not).
/// An until-close body counts as complete: callers pass it after EOF.
fn split_answer(answer: &[u8]) -> Result<Option<(u16, Vec<u8>)>, String> {
    let head = match h1::parse_response(answer, Method::Get) {
        Ok(Parse::Complete(head)) => head,
        Ok(Parse::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP response ({e:?})")),
    };
    if head.is_informational() {
        // A 100 Continue before the real answer is not worth following for a probe.
        return Err(format!("unexpected {} response", head.status));
    }
    let rest = answer.get(head.head_len..).unwrap_or_default();
    let body = match head.framing {
        ResponseFraming::Empty => Vec::new(),
        ResponseFraming::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            match rest.get(..n) {
                Some(body) => body.to_vec(),
                None => return Ok(None),
            }
        }
        ResponseFraming::UntilClose => rest.to_vec(),
        ResponseFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            decoder
                .feed(rest, &mut |data| body.extend_from_slice(data))
                .map_err(|e| format!("bad chunked body ({e:?})"))?;
            if !decoder.is_done() {
                return Ok(None);
            }
            body
        }
    };
    Ok(Some((head.status, body)))
}

/// `{"data": [{"id": "…"}, …]}` (OpenAI, vLLM, sglang, llama.cpp, Ollama, LM Studio) → ids.
pub fn model_ids(body: &[u8]) -> Result<Vec<String>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the model list is not JSON".to_string())?;
    let data = doc
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or("the model list has no \"data\" array")?;
    let mut ids: Vec<String> = Vec::new();
    // Duplicates are found by a set: a list of thousands of ids must not cost n² compares.
    let mut seen: HashSet<&str> = HashSet::new();
    for id in data.iter().filter_map(|m| m.get("id")?.as_str()) {
        if ids.len() == MAX_MODELS_PER_BACKEND {
            break;
        }
        if usable_id(id) && seen.insert(id) {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// The server a well-known local port usually belongs to (`http://127.0.0.1:8000` → vLLM),
/// for the startup log.
pub fn well_known_name(up: &Upstream) -> Option<&'static str> {
    if !matches!(up.host.as_str(), "127.0.0.1" | "localhost" | "::1") || !up.base_path.is_empty() {
        return None;
    }
    WELL_KNOWN
        .iter()
        .find(|(_, port)| *port == up.port)
        .map(|(name, _)| *name)
}

/// Most models taken from one backend (the first ones it lists). Each becomes a route with
/// its own stats (about 8 KB): 200,000 ids, which fit in [`MAX_ANSWER_BYTES`], took 1.6 GB.
pub const MAX_MODELS_PER_BACKEND: usize = 4096;

/// The longest model id taken from a backend.
pub const MAX_ID_BYTES: usize = 512;

/// Ids a client could send: not empty, not huge, no control characters (they would only
/// clutter logs and metrics).
fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control)
}

/// What one round of probes found, in probe order: each backend's model ids, or why it did
/// not answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub backends: Vec<(Upstream, Result<Vec<String>, String>)>,
}

impl Found {
    /// The backends that answered, with their models: what routing depends on. Two rounds
    /// with the same `serving` give the same routes (error texts do not matter).
    pub fn serving(&self) -> Vec<(&Upstream, &[String])> {
        self.backends
            .iter()
            .filter_map(|(up, r)| r.as_ref().ok().map(|m| (up, m.as_slice())))
            .collect()
    }

    fn models_of(&self, up: &Upstream) -> Option<&[String]> {
        self.serving()
            .into_iter()
            .find(|(u, _)| *u == up)
            .map(|(_, m)| m)
    }
}

/// `config` with every discovered model added under `models`. A name served by one backend
/// routes to it with that backend's headers; a name served by several becomes replicas, in
/// `config.discover` order, each with its own headers. Static names (models and aliases)
/// are never replaced. Results for backends no longer in `config.discover` are ignored.
pub fn with_discovered(config: &Config, found: &Found) -> Config {
    let mut next = config.clone();
    for (name, backends) in discovered_names(config, found) {
        let Some(first) = backends.first() else {
            continue;
        };
        let (headers, replicas) = if backends.len() == 1 {
            (first.headers.clone(), Replicas::default())
        } else {
            let list = backends
                .iter()
                .take(MAX_REPLICAS)
                .map(|b| ReplicaSpec {
                    upstream: b.upstream.clone(),
                    weight: 1,
                    headers: b.headers.clone(),
                    ca_file: None,
                    max_concurrent: 0,
                    priority: 0,
                    overrides: Default::default(),
                })
                .collect();
            let replicas = Replicas {
                list,
                ..Replicas::default()
            };
            (Vec::new(), replicas)
        };
        next.models.insert(
            name.to_owned(),
            Model {
                upstream: first.upstream.clone(),
                headers,
                unlisted: false,
                ca_file: None,
                aliases: Vec::new(),
                description: None,
                max_body_bytes: None,
                replicas,
                profile: Default::default(),
                route_media: None,
            },
        );
    }
    next
}

/// True when `name` is a model or an alias of the config itself.
fn is_static(config: &Config, name: &str) -> bool {
    config.models.contains_key(name)
        || config
            .models
            .values()
            .any(|m| m.aliases.iter().any(|a| a == name))
}

/// Every discovered name that is not static, with the backends serving it in probe order.
fn discovered_names<'c>(
    config: &'c Config,
    found: &'c Found,
) -> BTreeMap<&'c str, Vec<&'c Discover>> {
    let mut names: BTreeMap<&str, Vec<&Discover>> = BTreeMap::new();
    for backend in &config.discover {
        let Some(models) = found.models_of(&backend.upstream) else {
            continue;
        };
        for name in models.iter().filter(|n| !is_static(config, n)) {
            names.entry(name.as_str()).or_default().push(backend);
        }
    }
    names
}

/// Log lines for going from `before` to `after` (both in probe order): backends that
/// appeared, changed their list or went away, and names that are not routed to their
/// backend because the config or an earlier backend has them. `before` = None: the first
/// round, where every backend probed is reported.
pub fn describe(config: &Config, before: Option<&Found>, after: &Found) -> Vec<String> {
    let mut lines = Vec::new();
    for (up, result) in &after.backends {
        let was = before.map(|b| b.models_of(up));
        let label = label(up);
        match (result, was) {
            (Ok(models), None) => lines.push(serves(&label, models)),
            (Err(why), None) => lines.push(format!("{label}: nothing found ({why})")),
            (Ok(models), Some(None)) => {
                lines.push(format!("{} (new)", serves(&label, models)));
            }
            (Ok(models), Some(Some(old))) if old != models.as_slice() => {
                lines.push(format!("{} (changed)", serves(&label, models)));
            }
            (Err(why), Some(Some(old))) => lines.push(format!(
                "{label} stopped answering ({why}): dropped {}",
                names(old)
            )),
            _ => {}
        }
    }
    if let Some(before) = before {
        for (up, old) in before.serving() {
            if !after.backends.iter().any(|(u, _)| u == up) {
                lines.push(format!(
                    "{} is no longer probed: dropped {}",
                    label(up),
                    names(old)
                ));
            }
        }
    }
    // Said when the routing changes, not on every unchanged round.
    if before.is_none_or(|b| b.serving() != after.serving()) {
        lines.extend(shadowed(config, after));
    }
    lines
}

fn serves(label: &str, models: &[String]) -> String {
    match models.len() {
        0 => format!("{label} answers but serves no model"),
        n => format!(
            "{label} serves {n} model{}: {}",
            if n == 1 { "" } else { "s" },
            names(models)
        ),
    }
}

fn names(models: &[String]) -> String {
    models.join(", ")
}

/// Discovered names routed other than to their one backend: shadowed by a static name, or
/// served by several backends (replicas).
fn shadowed(config: &Config, found: &Found) -> Vec<String> {
    let mut lines = Vec::new();
    for up in config.discover.iter().map(|d| &d.upstream) {
        let Some(models) = found.models_of(up) else {
            continue;
        };
        for name in models.iter().filter(|n| is_static(config, n)) {
            lines.push(format!(
                "model {name:?} of {} is also a static name in the config, which wins",
                label(up)
            ));
        }
    }
    for (name, backends) in discovered_names(config, found) {
        if backends.len() > 1 {
            let labels: Vec<String> = backends.iter().map(|b| label(&b.upstream)).collect();
            lines.push(format!(
                "model {name:?} is served by {}: balanced over them as replicas",
                labels.join(" and ")
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Scheme};

    fn up(url: &str) -> Upstream {
        config::parse_upstream_url(url).expect("url")
    }

    fn config(json: &str) -> Config {
        config::from_str(json, None).expect("config")
    }

    fn found(rounds: &[(&str, Result<&[&str], &str>)]) -> Found {
        Found {
            backends: rounds
                .iter()
                .map(|(url, r)| {
                    let r = r
                        .map(|m| m.iter().map(|s| s.to_string()).collect())
                        .map_err(str::to_owned);
                    (up(url), r)
                })
                .collect(),
        }
    }

    #[test]
    fn embedded_default_listens_on_4000_and_probes_the_well_known_ports() {
        let c = config(&embedded_config_json(None, None));
        assert_eq!(c.listen.len(), 1);
        assert_eq!(c.listen[0].to_string(), "127.0.0.1:4000");
        let ports: Vec<u16> = c.discover.iter().map(|d| d.upstream.port).collect();
        assert_eq!(ports, [8080, 8000, 30000, 11434, 1234]);
        assert!(c.discover.iter().all(|d| d.upstream.host == "127.0.0.1"));
        assert!(c.models.is_empty());
        assert_eq!(c.discover_interval, config::DEFAULT_DISCOVER_INTERVAL);
    }

    #[test]
    fn embedded_default_overrides_replace_listen_and_probe_list() {
        let json = embedded_config_json(
            Some("127.0.0.1:0"),
            Some("http://127.0.0.1:1, unix:///run/x.sock,"),
        );
        let c = config(&json);
        assert_eq!(c.listen[0].to_string(), "127.0.0.1:0");
        assert_eq!(c.discover.len(), 2);
        assert_eq!(c.discover[1].upstream.scheme, Scheme::Unix);
    }

    #[test]
    fn probe_request_asks_for_the_model_list_and_closes() {
        let plain = Discover {
            upstream: up("http://gpu1:8000/base"),
            headers: Vec::new(),
        };
        let req = String::from_utf8(probe_request(&plain)).expect("utf8");
        assert!(req.starts_with("GET /base/v1/models HTTP/1.1\r\nHost: gpu1:8000\r\n"));
        assert!(req.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn probe_request_carries_the_backend_headers() {
        let c = config(
            r#"{"discover": [{"url": "http://gpu1:8000", "headers": {"Authorization": "Bearer k", "host": "h"}}]}"#,
        );
        let req = String::from_utf8(probe_request(&c.discover[0])).expect("utf8");
        assert!(req.contains("\r\nAuthorization: Bearer k\r\n"), "{req}");
        assert!(
            req.contains("\r\nhost: h\r\n") && !req.contains("Host: gpu1"),
            "{req}"
        );
    }

    const LIST: &str = r#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"},{"id":"a"},{"id":""},{"x":1}]}"#;

    #[test]
    fn content_length_answer_gives_ids_in_order_without_duplicates() {
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{LIST}",
            LIST.len()
        );
        assert!(answer_complete(answer.as_bytes()));
        assert_eq!(
            parse_answer(answer.as_bytes()),
            Ok(vec!["a".into(), "b".into()])
        );
        // Cut short: not complete yet.
        let cut = &answer.as_bytes()[..answer.len() - 3];
        assert!(!answer_complete(cut));
        assert!(parse_answer(cut).is_err());
    }

    #[test]
    fn chunked_and_until_close_answers_are_read() {
        let (first, second) = LIST.split_at(10);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        );
        assert!(answer_complete(chunked.as_bytes()));
        assert_eq!(parse_answer(chunked.as_bytes()).map(|m| m.len()), Ok(2));
        let close = format!("HTTP/1.0 200 OK\r\n\r\n{LIST}");
        assert_eq!(parse_answer(close.as_bytes()).map(|m| m.len()), Ok(2));
    }

    #[test]
    fn errors_and_garbage_are_not_model_lists() {
        assert!(
            parse_answer(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                .unwrap_err()
                .contains("401")
        );
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(model_ids(b"{\"models\":[]}").is_err());
        assert!(model_ids(b"<html>").is_err());
        assert_eq!(model_ids(br#"{"data":[]}"#), Ok(vec![]));
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let odd =
            format!(r#"{{"data":[{{"id":"{long}"}},{{"id":"a\nb"}},{{"id":"ok/model:7b"}}]}}"#);
        assert_eq!(
            model_ids(odd.as_bytes()),
            Ok(vec!["ok/model:7b".to_string()])
        );
    }

    #[test]
    fn ids_are_deduplicated_and_capped() {
        let data: Vec<String> = (0..MAX_MODELS_PER_BACKEND + 10)
            .flat_map(|i| [format!(r#"{{"id":"m{i}"}}"#), r#"{"id":"m0"}"#.to_string()])
            .collect();
        let body = format!(r#"{{"data":[{}]}}"#, data.join(","));
        let ids = model_ids(body.as_bytes()).expect("ids");
        assert_eq!(ids.len(), MAX_MODELS_PER_BACKEND);
        assert_eq!(ids.first().map(String::as_str), Some("m0"));
        assert_eq!(ids.last().map(String::as_str), Some("m4095"));
    }

    #[test]
    fn static_models_win_and_a_shared_name_gets_replicas() {
        let c = config(
            r#"{"discover":["http://127.0.0.1:1",{"url":"http://127.0.0.1:2","headers":{"X-Key":"k2"}}],
                "models":{"s":{"url":"http://10.0.0.1:9"}}}"#,
        );
        let f = found(&[
            ("http://127.0.0.1:1", Ok(&["s", "x"])),
            ("http://127.0.0.1:2", Ok(&["x", "y"])),
        ]);
        let merged = with_discovered(&c, &f);
        let port = |name: &str| merged.models.get(name).map(|m| m.upstream.port);
        assert_eq!(port("s"), Some(9));
        assert_eq!(port("y"), Some(2));
        assert_eq!(merged.models["y"].headers.len(), 1);
        assert!(merged.models["y"].replicas.list.is_empty());
        let x = &merged.models["x"];
        let ports: Vec<u16> = x.replicas.list.iter().map(|r| r.upstream.port).collect();
        assert_eq!(ports, [1, 2]);
        // Each replica carries its own backend's headers, none at the model level.
        assert!(x.headers.is_empty());
        assert!(x.replicas.list[0].headers.is_empty());
        assert_eq!(x.replicas.list[1].headers.len(), 1);
        let lines = describe(&c, None, &f);
        assert!(lines
            .iter()
            .any(|l| l.contains("\"s\"") && l.contains("static")));
        assert!(
            lines.iter().any(|l| l.contains(
                "\"x\" is served by http://127.0.0.1:1 and http://127.0.0.1:2: balanced"
            )),
            "{lines:?}"
        );
    }

    #[test]
    fn backends_not_in_the_config_any_more_are_ignored() {
        let c = config(r#"{"discover":["http://127.0.0.1:2"]}"#);
        let f = found(&[("http://127.0.0.1:1", Ok(&["x"]))]);
        assert!(with_discovered(&c, &f).models.is_empty());
    }

    #[test]
    fn serving_ignores_error_texts() {
        let a = found(&[
            ("http://127.0.0.1:1", Err("refused")),
            ("http://127.0.0.1:2", Ok(&["m"])),
        ]);
        let b = found(&[
            ("http://127.0.0.1:1", Err("timed out")),
            ("http://127.0.0.1:2", Ok(&["m"])),
        ]);
        assert_eq!(a.serving(), b.serving());
        let c = found(&[
            ("http://127.0.0.1:1", Ok(&["m"])),
            ("http://127.0.0.1:2", Ok(&["m"])),
        ]);
        assert_ne!(a.serving(), c.serving());
    }

    #[test]
    fn describe_reports_probes_then_only_changes() {
        let c = config(r#"{"discover":["http://127.0.0.1:1","http://127.0.0.1:2"]}"#);
        let first = found(&[
            ("http://127.0.0.1:1", Err("connection refused")),
            ("http://127.0.0.1:2", Ok(&["m"])),
        ]);
        let lines = describe(&c, None, &first);
        assert_eq!(
            lines,
            [
                "http://127.0.0.1:1: nothing found (connection refused)",
                "http://127.0.0.1:2 serves 1 model: m"
            ]
        );
        assert!(describe(&c, Some(&first), &first).is_empty());
        let second = found(&[
            ("http://127.0.0.1:1", Ok(&["n", "o"])),
            ("http://127.0.0.1:2", Err("connection refused")),
        ]);
        assert_eq!(
            describe(&c, Some(&first), &second),
            [
                "http://127.0.0.1:1 serves 2 models: n, o (new)",
                "http://127.0.0.1:2 stopped answering (connection refused): dropped m"
            ]
        );
    }

    fn problems(json: &str) -> Vec<String> {
        match config::from_str(json, None) {
            Ok(_) => panic!("expected problems"),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn config_discover_list_replaces_the_need_for_models() {
        let c = config(
            r#"{"discover": ["http://gpu1:8000", "unix:///run/llm.sock"], "discoverInterval": 0.5}"#,
        );
        assert_eq!(c.discover.len(), 2);
        assert_eq!(c.discover[0].upstream.host, "gpu1");
        assert_eq!(c.discover_interval, std::time::Duration::from_millis(500));
        assert!(c.models.is_empty());
        let c = config(r#"{"discover": ["http://gpu1:8000"], "models": {}}"#);
        assert!(c.models.is_empty());
        // Without discovery, models are still required.
        assert!(problems(r#"{"discover": []}"#)[0].starts_with("models: is required"));
    }

    #[test]
    fn config_discover_problems_are_named_by_index() {
        let p = problems(
            r#"{"discover": ["https://api.openai.com", "ftp://x", 3, "http://a:1", "http://a:1", "http://b?x=1"], "discoverInterval": 0}"#,
        );
        let has =
            |prefix: &str, word: &str| p.iter().any(|l| l.starts_with(prefix) && l.contains(word));
        assert!(has("discover[0]", "http://"), "{p:?}");
        assert!(has("discover[1]", "scheme"), "{p:?}");
        assert!(has("discover[2]", "string"), "{p:?}");
        assert!(has("discover[4]", "twice"), "{p:?}");
        assert!(has("discover[5]", "query"), "{p:?}");
        assert!(has("discoverInterval", "positive"), "{p:?}");
        assert!(
            problems(r#"{"discover": ["http://a:1"], "discoverInterval": 0.01}"#)[0]
                .contains("at least 0.1")
        );
        assert!(
            problems(r#"{"discover": "http://a:1"}"#)[0].starts_with("discover: expected a list")
        );
    }

    #[test]
    fn well_known_names_label_local_ports_only() {
        assert_eq!(
            well_known_name(&up("http://127.0.0.1:11434")),
            Some("Ollama")
        );
        assert_eq!(well_known_name(&up("http://gpu1:8000")), None);
        assert_eq!(well_known_name(&up("http://127.0.0.1:9")), None);
    }
}
