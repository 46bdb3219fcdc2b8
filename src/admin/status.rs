//! The status page (issue 20): `GET /status` is one self-contained HTML document embedded
//! in the binary ([`PAGE`]); it polls `GET /status.json` ([`status_json`]) every 2 s and
//! draws it. Both need the token like `/metrics`.
//!
//! Everything here is read from process-wide state that exists for the metrics anyway: the
//! routing table (models and their replicas), each model's [`crate::metrics::ModelStats`],
//! each replica's [`crate::metrics::ReplicaStats`] (health verdict, ejection end,
//! outstanding requests), and the error ring. No worker state, no lock on the data path;
//! a status request costs what a scrape costs, off the data path of other requests.
//!
//! Counters are totals since the start. The page computes rates over the last minute from
//! successive polls (the delta of two totals over the delta of `uptime_seconds`), so the
//! server keeps no history and a `curl` of the JSON reads like a scrape.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use crate::accesslog::rfc3339_millis;
use crate::metrics::{duration_bounds, Metrics, ModelSummary, VERSION};
use crate::router::{Route, Routes};

/// The page: HTML, CSS and script in one file, no external asset.
pub const PAGE: &str = include_str!("status.html");

/// The `/status.json` body (documented in the README and in the page's source):
/// version, uptime, process gauges, every model of the routing table with its totals and
/// replicas, and the last errors. `in_flight` is the engine's counter.
pub fn status_json(routes: &Routes, metrics: &Metrics, in_flight: u64, now: Instant) -> Vec<u8> {
    status_json_at(routes, metrics, in_flight, now, SystemTime::now())
}

/// [`status_json`] with the wall clock's `now` given (errors are dated from it).
///
/// Written by hand like the other local endpoints: building `serde_json::Value`s with
/// `json!` added 17 KiB more to the release binary for the same bytes.
fn status_json_at(
    routes: &Routes,
    metrics: &Metrics,
    in_flight: u64,
    now: Instant,
    wall: SystemTime,
) -> Vec<u8> {
    // Sorted as `Vec<String>` (an instantiation the routing table already has: each new
    // sort costs the binary kilobytes).
    let mut names: Vec<String> = routes.models.keys().cloned().collect();
    names.sort();
    let routes_sorted: Vec<&Route> = names
        .iter()
        .filter_map(|n| routes.models.get(n))
        .map(|r| &**r)
        .collect();
    let mut out = String::with_capacity(1024 + routes_sorted.len() * 768);
    let mut top = Obj::open(&mut out);
    top.str("version", VERSION);
    top.str("started_at", &timestamp(metrics.started_wall()));
    top.f64("uptime_seconds", metrics.uptime(now).as_secs_f64());
    top.u64("in_flight", in_flight);
    top.u64("client_connections", metrics.client_connections());
    top.u64("rate_limited", metrics.rate_limited());
    match metrics.buffer() {
        Some((used, limit)) => {
            let mut b = Obj::open(top.key("buffer"));
            b.u64("used_bytes", used);
            b.u64("limit_bytes", limit);
            b.close();
        }
        None => top.key("buffer").push_str("null"),
    }
    let bounds = duration_bounds();
    list(top.key("ttfb_buckets"), &bounds, |out, b| number(out, *b));
    list(top.key("models"), &routes_sorted, |out, r| {
        model(out, r, now)
    });
    let unrouted = metrics.unrouted().summary();
    let mut u = Obj::open(top.key("unrouted"));
    u.u64("requests", unrouted.requests);
    u.u64("client_errors", unrouted.client_errors);
    u.u64("errors", unrouted.errors);
    u.close();
    let mut recent = Obj::open(top.key("recent_errors"));
    recent.u64("total", metrics.recent_total());
    let entries = metrics.recent_errors();
    list(recent.key("entries"), &entries, |out, (e, model)| {
        let ago = now.saturating_duration_since(crate::metrics::process_epoch() + e.at);
        let mut o = Obj::open(out);
        o.str("at", &timestamp(wall.checked_sub(ago).unwrap_or(wall)));
        o.f64("seconds_ago", ago.as_secs_f64());
        o.opt_str("model", model.as_deref());
        o.u64("status", u64::from(e.status));
        o.str("outcome", e.outcome.as_str());
        o.close();
    });
    recent.close();
    top.close();
    out.into_bytes()
}

/// One model: its totals and its replicas (`state`: `down` when the active health check
/// failed it, else `ejected` while it is ejected, else `up`). Outstanding and
/// per-replica counts are null for a model without a balancer (a plain `url` without
/// limits): nothing counts them there.
fn model(out: &mut String, route: &Route, now: Instant) {
    let ModelSummary {
        requests,
        client_errors,
        errors,
        prompt_tokens,
        completion_tokens,
        ttfb,
        queued,
    } = route.stats.summary();
    let mut m = Obj::open(out);
    m.str("name", &route.name);
    m.key("listed")
        .push_str(if route.unlisted { "false" } else { "true" });
    m.u64("requests", requests);
    m.u64("client_errors", client_errors);
    m.u64("errors", errors);
    let mut t = Obj::open(m.key("tokens"));
    t.u64("prompt", prompt_tokens);
    t.u64("completion", completion_tokens);
    t.close();
    let mut h = Obj::open(m.key("ttfb"));
    h.u64("count", ttfb.cumulative[ttfb.cumulative.len() - 1]);
    h.f64("sum_seconds", ttfb.sum);
    list(h.key("cumulative"), &ttfb.cumulative, |out, c| {
        let _ = write!(out, "{c}");
    });
    h.close();
    m.u64("queued", queued);
    let tracked = route.needs_balancer();
    list(m.key("replicas"), &route.backends, |out, b| {
        let ejected_for = b.stats.ejected_for(now);
        let state = if b.stats.is_down() {
            "down"
        } else if ejected_for.is_some() {
            "ejected"
        } else {
            "up"
        };
        let mut r = Obj::open(out);
        r.str("url", &b.upstream_label);
        r.str("state", state);
        r.opt_f64("ejected_for_seconds", ejected_for.map(|d| d.as_secs_f64()));
        let counted = |v: u64| tracked.then_some(v);
        r.opt_u64("outstanding", counted(b.stats.outstanding()));
        r.opt_u64("requests", counted(b.stats.requests()));
        r.opt_u64("failures", counted(b.stats.failures()));
        r.close();
    });
    m.close();
}

/// A JSON object being written into a `String`; keys are literals that need no escaping.
struct Obj<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut String) -> Obj<'a> {
        out.push('{');
        Obj { out, empty: true }
    }

    /// Writes `"key":` and returns the output for the value.
    fn key(&mut self, key: &str) -> &mut String {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        self.out
    }

    fn str(&mut self, key: &str, value: &str) {
        string(self.key(key), value);
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.str(key, v),
            None => self.key(key).push_str("null"),
        }
    }

    fn u64(&mut self, key: &str, value: u64) {
        let _ = write!(self.key(key), "{value}");
    }

    fn opt_u64(&mut self, key: &str, value: Option<u64>) {
        match value {
            Some(v) => self.u64(key, v),
            None => self.key(key).push_str("null"),
        }
    }

    fn f64(&mut self, key: &str, value: f64) {
        number(self.key(key), value);
    }

    fn opt_f64(&mut self, key: &str, value: Option<f64>) {
        match value {
            Some(v) => self.f64(key, v),
            None => self.key(key).push_str("null"),
        }
    }

    fn close(self) {
        self.out.push('}');
    }
}

/// `[a,b,…]` with `each` writing one element.
fn list<T>(out: &mut String, items: &[T], mut each: impl FnMut(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(']');
}

/// A JSON string: `"`, `\` and control characters escaped.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A finite number to the millisecond (plenty for a page; keeps the JSON short), else null.
fn number(out: &mut String, x: f64) {
    let rounded = (x * 1000.0).round() / 1000.0;
    if rounded.is_finite() {
        let _ = write!(out, "{rounded}");
    } else {
        out.push_str("null");
    }
}

fn timestamp(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    rfc3339_millis(t, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accesslog::Outcome;
    use serde_json::{json, Value};
    use std::time::Duration;

    fn routes(metrics: &Metrics, text: &str) -> Routes {
        let env = crate::secrets::tests::FakeEnv::new();
        let config = crate::config::from_str(text, Some(&env)).expect("valid config");
        let no_tls = &mut |_: Option<&std::path::Path>| Err("no TLS in tests".into());
        Routes::build(&config, &|_, _| vec![], no_tls, metrics).expect("routes")
    }

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("status.json is JSON")
    }

    const CONFIG: &str = r#"{"models": {
        "zeta": {"url": "http://127.0.0.1:1"},
        "chat": {"urls": ["http://127.0.0.1:2", "http://127.0.0.1:3", "http://127.0.0.1:4"]},
        "hidden": {"url": "http://127.0.0.1:5", "unlisted": true}
    }}"#;

    #[test]
    fn models_are_sorted_with_their_replicas_and_their_states() {
        let metrics = Metrics::new();
        let r = routes(&metrics, CONFIG);
        let now = Instant::now();
        let chat = r.get("chat").expect("chat");
        chat.backends[1]
            .stats
            .ejected(now + Duration::from_secs(30));
        chat.backends[2].stats.set_down(true);
        chat.backends[0].stats.started();
        let v = parse(&status_json(&r, &metrics, 3, now));
        let names: Vec<&str> = v["models"]
            .as_array()
            .expect("models")
            .iter()
            .map(|m| m["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["chat", "hidden", "zeta"]);
        assert_eq!(v["models"][1]["listed"], false);
        let replicas = &v["models"][0]["replicas"];
        assert_eq!(replicas[0]["url"], "http://127.0.0.1:2");
        assert_eq!(replicas[0]["state"], "up");
        assert_eq!(replicas[0]["outstanding"], 1);
        assert_eq!(replicas[0]["requests"], 1);
        assert_eq!(replicas[1]["state"], "ejected");
        assert_eq!(replicas[1]["ejected_for_seconds"], 30.0);
        assert_eq!(replicas[2]["state"], "down");
        assert_eq!(replicas[2]["ejected_for_seconds"], Value::Null);
        // A plain model counts nothing per replica: null, not a misleading 0.
        let zeta = &v["models"][2]["replicas"][0];
        assert_eq!(zeta["state"], "up");
        assert_eq!(zeta["outstanding"], Value::Null);
        assert_eq!(v["in_flight"], 3);
        assert_eq!(v["version"], VERSION);
        assert_eq!(v["buffer"], Value::Null, "no budget registered");
        assert_eq!(v["ttfb_buckets"].as_array().expect("bounds").len(), 16);
    }

    #[test]
    fn totals_tokens_and_ttfb_come_from_the_model_stats() {
        let metrics = Metrics::new();
        let r = routes(&metrics, CONFIG);
        let stats = &r.get("zeta").expect("zeta").stats;
        let ms = Duration::from_millis;
        stats.record(
            200,
            ms(40),
            Some(ms(30)),
            Some(10),
            Some(20),
            Some(ms(10)),
            None,
        );
        stats.record(404, ms(1), None, None, None, None, None);
        stats.record(502, ms(1), Some(ms(700)), None, None, None, None);
        metrics.set_budget(crate::buf::Budget::new(4096));
        let v = parse(&status_json(&r, &metrics, 0, Instant::now()));
        let zeta = &v["models"][2];
        assert_eq!(zeta["requests"], 3);
        assert_eq!(zeta["client_errors"], 1);
        assert_eq!(zeta["errors"], 1);
        assert_eq!(zeta["tokens"], json!({"prompt": 10, "completion": 20}));
        assert_eq!(zeta["ttfb"]["count"], 2);
        assert_eq!(zeta["ttfb"]["sum_seconds"], 0.73);
        let cumulative = zeta["ttfb"]["cumulative"].as_array().expect("cumulative");
        assert_eq!(cumulative.len(), 17);
        assert_eq!(cumulative[3], 1, "30 ms is within the 50 ms bound");
        assert_eq!(cumulative[16], 2);
        assert_eq!(v["buffer"], json!({"used_bytes": 0, "limit_bytes": 4096}));
    }

    #[test]
    fn recent_errors_say_when_which_model_and_what_but_nothing_else() {
        let metrics = Metrics::new();
        let r = routes(&metrics, CONFIG);
        // Times are kept from the process epoch on: pretend it started a minute ago.
        let now = crate::metrics::process_epoch() + Duration::from_secs(60);
        let chat = &r.get("chat").expect("chat").stats;
        metrics.finished(
            chat,
            502,
            Outcome::UpstreamError,
            now - Duration::from_secs(5),
        );
        metrics.finished(&metrics.unrouted(), 503, Outcome::Rejected, now);
        metrics.finished(chat, 400, Outcome::Rejected, now);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let v = parse(&status_json_at(&r, &metrics, 0, now, wall));
        assert_eq!(v["recent_errors"]["total"], 2);
        let entries = v["recent_errors"]["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["model"], Value::Null);
        assert_eq!(entries[0]["status"], 503);
        assert_eq!(entries[0]["outcome"], "rejected");
        assert_eq!(entries[1]["model"], "chat");
        assert_eq!(entries[1]["status"], 502);
        assert_eq!(entries[1]["outcome"], "upstream_error");
        let ago = entries[1]["seconds_ago"].as_f64().expect("seconds_ago");
        assert!((4.98..=5.02).contains(&ago), "{ago}");
        let keys: Vec<&String> = entries[1].as_object().expect("object").keys().collect();
        assert_eq!(keys, ["at", "seconds_ago", "model", "status", "outcome"]);
        assert!(
            entries[1]["at"]
                .as_str()
                .expect("at")
                .starts_with("2027-01-15T07:59:5"),
            "{}",
            entries[1]["at"]
        );
    }

    #[test]
    fn strings_and_numbers_are_valid_json() {
        for s in [
            "plain",
            "qu\"ote",
            "back\\slash",
            "line\nfeed\u{1}",
            "Qwen/Qwen3-8B ü 🦀",
        ] {
            let mut out = String::new();
            string(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).expect("JSON"), s);
        }
        for (x, text) in [
            (0.1234, "0.123"),
            (5.0, "5"),
            (f64::NAN, "null"),
            (1e300 * 1e10, "null"),
        ] {
            let mut out = String::new();
            number(&mut out, x);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn the_page_is_small_self_contained_and_polls_the_json() {
        assert!(PAGE.len() < 32 * 1024, "{} bytes", PAGE.len());
        assert!(PAGE.starts_with("<!doctype html>"));
        assert!(PAGE.contains("name=\"viewport\""), "readable on a phone");
        assert!(PAGE.contains("status.json"));
        for external in ["src=\"http", "href=\"http", "@import", "url(", "<link"] {
            assert!(!PAGE.contains(external), "external asset: {external}");
        }
    }
}
