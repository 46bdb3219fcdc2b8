//! A live modelgate in every state an operator watches (issue 20), for the tests of the
//! status page, the Grafana dashboard and the alert rules: a model with three replicas (one
//! healthy, one ejected after a 502, one marked down by the active health check), a plain
//! model with a limit (so it has a queue), and traffic that touched every series: plain and
//! streamed answers with usage, a 502, an unknown model, and, with auth, a rate-limited token
//! and a `sharedLimits` store that cannot be reached (limits fall back to local).

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bearer token of the fixture when it runs with auth.
pub const ADMIN_TOKEN: &str = "observed-admin";
/// A token allowed one request per minute (the second one gets 429 `rate_limited`).
pub const LIMITED_TOKEN: &str = "observed-limited";

const LONG: Duration = Duration::from_secs(20);

pub struct Observed {
    pub gw: Modelgate,
    pub healthy: MockUpstream,
    /// Answers `/health` 200 and every other request 502: ejected after its first request.
    pub failing: ScriptedUpstream,
    /// Answers `/health` 503 (until [`Observed::heal_down`]): marked down by the active
    /// health check.
    pub down: ScriptedUpstream,
    down_healthy: Arc<AtomicBool>,
    /// Whether requests need [`ADMIN_TOKEN`].
    pub auth: bool,
}

/// Work requests a scripted replica received (health checks excluded).
fn work_requests(up: &ScriptedUpstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.path() != "/health")
        .count()
}

impl Observed {
    /// Starts the upstreams and modelgate, and sends the traffic (see the module docs).
    pub fn start(auth: bool) -> Observed {
        let healthy = MockUpstream::openai("healthy");
        let failing = ScriptedUpstream::start(|c| {
            while let Some(req) = c.read_request() {
                let sent = if req.path() == "/health" {
                    c.respond(200, &[], b"")
                } else {
                    c.respond_json(502, r#"{"error":{"message":"backend exploded"}}"#)
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        let down_healthy = Arc::new(AtomicBool::new(false));
        let healthy_now = Arc::clone(&down_healthy);
        let down = ScriptedUpstream::start(move |c| {
            while let Some(req) = c.read_request() {
                let sick = req.path() == "/health" && !healthy_now.load(Ordering::SeqCst);
                let status = if sick { 503 } else { 200 };
                if c.respond_json(status, "{}").is_err() {
                    return;
                }
            }
        });
        let mut config = serde_json::json!({
            "listen": "127.0.0.1:0",
            "workers": 1,
            "accessLog": false,
            "models": {
                "chat": {
                    "urls": [healthy.url(), failing.url(), down.url()],
                    "balance": "round-robin",
                    "ejectTime": 600,
                    "ejectTimeMax": 600,
                    "healthCheck": {"path": "/health", "interval": 0.2, "timeout": 2},
                    "description": "three replicas",
                },
                "embed": {
                    "url": healthy.url(),
                    "maxConcurrentRequests": 4,
                    "queue": {"size": 8, "timeout": 5},
                },
            },
        });
        if auth {
            config["authTokens"] = serde_json::json!([
                ADMIN_TOKEN,
                {"token": LIMITED_TOKEN, "name": "limited", "requestsPerMinute": 1, "burst": 1},
            ]);
            // A store that never answers: the shared-limit series, in their fallback state.
            config["sharedLimits"] =
                serde_json::json!({"url": "redis://127.0.0.1:1", "timeout": 0.2});
        }
        let gw = Modelgate::start(&config.to_string());
        let observed = Observed {
            gw,
            healthy,
            failing,
            down,
            down_healthy,
            auth,
        };
        observed.send_traffic();
        observed
    }

    /// The replica marked down starts passing its health check (it comes back up).
    pub fn heal_down(&self) {
        self.down_healthy.store(true, Ordering::SeqCst);
    }

    fn auth_header(&self) -> Vec<String> {
        if self.auth {
            vec![format!("Authorization: Bearer {ADMIN_TOKEN}")]
        } else {
            vec![]
        }
    }

    /// `GET path` with the admin token when auth is on.
    pub fn get(&self, path: &str) -> Response {
        let h = self.auth_header();
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        request(self.gw.addr(), "GET", path, &h, b"")
    }

    /// `POST path` with a JSON body (and the admin token when auth is on).
    pub fn post(&self, path: &str, body: &str) -> Response {
        self.post_with(path, body, &[])
    }

    /// [`Observed::post`] with more header lines.
    pub fn post_with(&self, path: &str, body: &str, extra: &[&str]) -> Response {
        let mut h = self.auth_header();
        h.push("Content-Type: application/json".into());
        h.extend(extra.iter().map(|e| e.to_string()));
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        request(self.gw.addr(), "POST", path, &h, body.as_bytes())
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text().to_string()
    }

    /// The value of the one sample line starting with `prefix` (labels included).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    fn send_traffic(&self) {
        let replica = |up: &str| format!("{{model=\"chat\",replica=\"{up}\"}}");
        let down_up = format!("modelgate_replica_up{}", replica(&self.down.url()));
        assert!(
            wait_until(LONG, || self.metric(&down_up) == Some(0.0)),
            "the health check marks {} down",
            self.down.url()
        );
        // Round-robin over the two replicas left: within a few requests one reaches the
        // failing replica, whose 502 is passed through and ejects it.
        let mut statuses = Vec::new();
        while work_requests(&self.failing) == 0 && statuses.len() < 10 {
            statuses.push(
                self.post("/v1/chat/completions", &chat_body("chat", false))
                    .status,
            );
        }
        assert_eq!(work_requests(&self.failing), 1, "statuses {statuses:?}");
        assert!(statuses.contains(&502), "{statuses:?}");
        let ejected = format!("modelgate_replica_ejected{}", replica(&self.failing.url()));
        assert_eq!(self.metric(&ejected), Some(1.0), "the 502 ejected it");
        for stream in [false, true, false, true] {
            let r = self.post("/v1/chat/completions", &chat_body("chat", stream));
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let r = self.post("/v1/embeddings", r#"{"model":"embed","input":"hello"}"#);
        assert_eq!(r.status, 200, "{}", r.text());
        let r = self.post("/v1/chat/completions", &chat_body("nope", false));
        assert_eq!(r.status, 404, "{}", r.text());
        if self.auth {
            let limited = format!("Authorization: Bearer {LIMITED_TOKEN}");
            let statuses: Vec<u16> = (0..2)
                .map(|_| request(self.gw.addr(), "GET", "/v1/models", &[&limited], b"").status)
                .collect();
            assert_eq!(statuses, [200, 429]);
        }
        assert_eq!(
            work_requests(&self.down),
            0,
            "nothing went to the replica marked down"
        );
        assert_eq!(
            work_requests(&self.failing),
            1,
            "nothing more to the ejected one"
        );
    }
}
