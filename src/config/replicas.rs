//! A model's replicas (`urls`) and balancing keys (issue 9). A model with only `url` keeps
//! an empty replica list and behaves exactly as before.

use std::path::PathBuf;
use std::time::Duration;

use super::json::Json;
use super::{index, join, parse_upstream_url, Cx, Fields, Scheme, Upstream};
use crate::balance::{
    BalanceConfig, HealthCheck, Policy, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_PATH,
    DEFAULT_HEALTH_TIMEOUT, MAX_REPLICAS,
};
use crate::profile::Overrides;
use crate::secrets::Secret;

/// One backend of a model.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub upstream: Upstream,
    /// Relative share (default 1).
    pub weight: u32,
    /// Added after the model's headers, replacing same-named ones.
    pub headers: Vec<(String, Secret)>,
    /// Its own CA file, else the model's (https only).
    pub ca_file: Option<PathBuf>,
    /// Outstanding requests for the whole process; 0: no limit.
    pub max_concurrent: u32,
    /// Its tier (`priority`, 0 first): a higher one is used only when every replica of the
    /// tiers before it cannot take the request (issue 18).
    pub priority: u32,
    /// Its own upstream identity: `model`, `defaults`, `clamp`, `deny` replacing the model's.
    pub overrides: Overrides,
}

/// A model's replicas and balancing settings.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    /// Every backend, `url` first when both `url` and `urls` are given. Empty: the model's
    /// `upstream` alone (a plain `url` model, or one built in code).
    pub list: Vec<ReplicaSpec>,
    pub balance: BalanceConfig,
    /// The model-level `maxConcurrentRequests`: the default limit of each replica.
    pub max_concurrent: u32,
}

const REPLICA_KEYS: &[&str] = &[
    "url",
    "weight",
    "headers",
    "caFile",
    "maxConcurrentRequests",
    "priority",
    "model",
    "defaults",
    "clamp",
    "deny",
];
/// Highest `priority`: tiers are few in practice (local, then one or two providers).
const MAX_PRIORITY: u64 = 100;
const QUEUE_KEYS: &[&str] = &["size", "timeout"];
const HEALTH_KEYS: &[&str] = &["path", "interval", "timeout"];
const MAX_WEIGHT: u64 = 1_000_000;

impl Cx<'_> {
    /// The replica list and balancing keys of the model at `path`. None on a problem.
    pub(super) fn replicas(
        &mut self,
        path: &str,
        f: &Fields<'_>,
        url: Option<&Upstream>,
        model_ca: Option<&Option<PathBuf>>,
    ) -> Option<Replicas> {
        let before = self.problems.len();
        let model_ca = model_ca.cloned().flatten();
        let mut balance = BalanceConfig::default();
        if let Some(v) = f.get("balance") {
            let p = join(path, "balance");
            match self.str(&p, v) {
                Some("least-outstanding") => balance.policy = Policy::LeastOutstanding,
                Some("round-robin") => balance.policy = Policy::RoundRobin,
                Some(_) => self.problem(&p, "must be \"least-outstanding\" or \"round-robin\""),
                None => {}
            }
        }
        let retries = self.uint_in(&join(path, "retries"), f.get("retries"), 2, 0, 63);
        balance.retries = u32::try_from(retries).unwrap_or(2);
        if let Some(v) = f.get("ejectOnStatus") {
            balance.eject_on_status = self.statuses(&join(path, "ejectOnStatus"), v);
        }
        if let Some(v) = f.get("retryOnStatus") {
            balance.retry_on_status = self.statuses(&join(path, "retryOnStatus"), v);
        }
        if let Some(v) = f.get("ejectTime") {
            if let Some(Some(d)) = self.seconds(&join(path, "ejectTime"), v, false) {
                balance.eject_time = d;
            }
        }
        if let Some(v) = f.get("ejectTimeMax") {
            if let Some(Some(d)) = self.seconds(&join(path, "ejectTimeMax"), v, false) {
                balance.eject_time_max = d;
            }
        }
        if let Some(v) = f.get("queue") {
            let qp = join(path, "queue");
            if let Some(q) = self.fields(&qp, v, QUEUE_KEYS) {
                let size = self.uint_in(&join(&qp, "size"), q.get("size"), 0, 0, 1_000_000);
                balance.queue_size = usize::try_from(size).unwrap_or(0);
                if let Some(t) = q.get("timeout") {
                    if let Some(Some(d)) = self.seconds(&join(&qp, "timeout"), t, false) {
                        balance.queue_timeout = d;
                    }
                }
            }
        }
        if let Some(v) = f.get("healthCheck") {
            balance.health_check = self.health_check(&join(path, "healthCheck"), v);
        }
        let max_concurrent = self.max_concurrent(&join(path, "maxConcurrentRequests"), f);
        let mut list = Vec::new();
        if let Some(v) = f.get("urls") {
            let up = join(path, "urls");
            let Json::Array(items) = v else {
                self.wrong_type(&up, "a list of URLs or {\"url\": …} objects", v);
                return None;
            };
            if items.is_empty() {
                self.problem(&up, "must list at least one URL");
            }
            if let Some(url) = url {
                list.push(ReplicaSpec {
                    upstream: url.clone(),
                    weight: 1,
                    headers: Vec::new(),
                    ca_file: model_ca.clone(),
                    max_concurrent,
                    priority: 0,
                    overrides: Overrides::default(),
                });
            }
            for (i, item) in items.iter().enumerate() {
                let ip = index(&up, i);
                if let Some(r) = self.replica(&ip, item, &model_ca, max_concurrent) {
                    list.push(r);
                }
            }
            if list.len() > MAX_REPLICAS {
                self.problem(&up, format!("lists more than {MAX_REPLICAS} replicas"));
            }
        }
        (self.problems.len() == before).then_some(Replicas {
            list,
            balance,
            max_concurrent,
        })
    }

    fn max_concurrent(&mut self, path: &str, f: &Fields<'_>) -> u32 {
        let n = self.uint_in(
            path,
            f.get("maxConcurrentRequests"),
            0,
            0,
            u64::from(u32::MAX),
        );
        u32::try_from(n).unwrap_or(0)
    }

    fn replica(
        &mut self,
        path: &str,
        v: &Json,
        model_ca: &Option<PathBuf>,
        default_max: u32,
    ) -> Option<ReplicaSpec> {
        let url_of = |cx: &mut Self, p: &str, s: &str| match parse_upstream_url(s) {
            Ok(up) => Some(up),
            Err(e) => {
                cx.problem(p, e);
                None
            }
        };
        let https_ca = |up: &Upstream| {
            if up.scheme == Scheme::Https {
                model_ca.clone()
            } else {
                None
            }
        };
        match v {
            Json::String(s) => {
                let upstream = url_of(self, path, s)?;
                Some(ReplicaSpec {
                    ca_file: https_ca(&upstream),
                    upstream,
                    weight: 1,
                    headers: Vec::new(),
                    max_concurrent: default_max,
                    priority: 0,
                    overrides: Overrides::default(),
                })
            }
            Json::Object(_) => {
                let f = self.fields(path, v, REPLICA_KEYS)?;
                let up_path = join(path, "url");
                let upstream = match f.get("url") {
                    None => {
                        self.problem(&up_path, "is required");
                        None
                    }
                    Some(u) => self
                        .str(&up_path, u)
                        .and_then(|s| url_of(self, &up_path, s)),
                };
                let weight = self.uint_in(&join(path, "weight"), f.get("weight"), 1, 1, MAX_WEIGHT);
                let headers = self.headers(&join(path, "headers"), f.get("headers"));
                let own_ca =
                    self.ca_file(&join(path, "caFile"), f.get("caFile"), upstream.as_ref());
                let max = match f.get("maxConcurrentRequests") {
                    Some(_) => self.max_concurrent(&join(path, "maxConcurrentRequests"), &f),
                    None => default_max,
                };
                let priority = self.uint_in(
                    &join(path, "priority"),
                    f.get("priority"),
                    0,
                    0,
                    MAX_PRIORITY,
                );
                // The replica's identity keys are read like a model's (same key paths).
                let own = self.profile(path, &f);
                let upstream = upstream?;
                let own = own?;
                let overrides = Overrides {
                    upstream_model: own.upstream_model,
                    defaults: f.get("defaults").map(|_| own.defaults),
                    clamp: f.get("clamp").map(|_| own.clamp),
                    deny: f.get("deny").map(|_| own.deny),
                };
                let ca_file = match own_ca? {
                    Some(ca) => Some(ca),
                    None => https_ca(&upstream),
                };
                Some(ReplicaSpec {
                    upstream,
                    weight: u32::try_from(weight).unwrap_or(1),
                    headers: headers?,
                    ca_file,
                    max_concurrent: max,
                    priority: u32::try_from(priority).unwrap_or(0),
                    overrides,
                })
            }
            other => {
                self.wrong_type(path, "a URL string or {\"url\": …}", other);
                None
            }
        }
    }

    fn statuses(&mut self, path: &str, v: &Json) -> Vec<u16> {
        let Json::Array(items) = v else {
            self.wrong_type(path, "a list of status codes", v);
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let n = self.uint_in(&index(path, i), Some(item), 0, 100, 599);
            if n > 0 {
                out.push(n as u16);
            }
        }
        out
    }

    fn health_check(&mut self, path: &str, v: &Json) -> Option<HealthCheck> {
        let f = self.fields(path, v, HEALTH_KEYS)?;
        let mut check = HealthCheck {
            path: DEFAULT_HEALTH_PATH.to_string(),
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
        };
        if let Some(p) = f.get("path") {
            let pp = join(path, "path");
            if let Some(s) = self.str(&pp, p) {
                if !s.starts_with('/') || s.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    self.problem(&pp, "must start with / and contain no spaces or controls");
                } else {
                    check.path = s.to_string();
                }
            }
        }
        let slots: [(&str, &mut Duration); 2] = [
            ("interval", &mut check.interval),
            ("timeout", &mut check.timeout),
        ];
        for (key, slot) in slots {
            if let Some(v) = f.get(key) {
                if let Some(Some(d)) = self.seconds(&join(path, key), v, false) {
                    *slot = d;
                }
            }
        }
        Some(check)
    }
}
