//! The routing table and request-target classification (SPEC.md §3, §4, §10).
//!
//! `Routes` is the immutable snapshot every worker shares through an `Arc`; a reload builds
//! a new one and swaps it whole, so in-flight requests keep the table they started with.

use std::collections::HashMap;

use crate::hash::{config_map, ConfigMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::auth::Scope;
use crate::balance::{BalanceConfig, QueueGauge, ReplicaLimits, Slots};
use crate::config::{Config, Scheme, Timeouts, Upstream};
use crate::error::{ApiError, Limit};
use crate::metrics::{process_epoch, KeyCounts, Metrics, ModelStats, RateLimited, ReplicaStats};
use crate::profile::Profile;
use crate::ratelimit::shared::Status;
use crate::ratelimit::{self, Bucket, Kind};
use crate::secrets::Secret;

/// Where one model's requests go.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// The model's replicas (one for a plain `url` model); see `balance`.
    pub backends: Vec<Backend>,
    pub balance: BalanceConfig,
    pub unlisted: bool,
    /// Request counters and histograms, kept across reloads by model name.
    pub stats: Arc<ModelStats>,
    /// The body rewrite of a virtual model (`crate::profile`); empty = byte-for-byte. Each
    /// backend carries the one it applies (`Backend::profile`: this one, or the replica's
    /// own identity over it).
    pub profile: Profile,
    /// The model that requests with image, audio or file parts go to (`routeMedia`).
    pub route_media: Option<String>,
    /// Other names that route here; requests are counted under `name`.
    pub aliases: Vec<String>,
    /// Shown in `/v1/models`.
    pub description: Option<Box<str>>,
    /// The body cap once this route is known: the model's `maxBodyBytes`, else the global
    /// one (0 = none).
    pub max_body_bytes: u64,
    /// This model's counts of each key, by token index: Some for the keys whose scope
    /// allows the model (the others' requests are counted as unrouted).
    pub key_stats: Box<[Option<Arc<KeyCounts>>]>,
    /// The replicas' process-wide slots, ejections and wait queue: only for a model with
    /// several replicas or a limit (a plain model takes backend 0 with no bookkeeping).
    pub slots: Option<Arc<Slots>>,
}

impl Route {
    /// The route's name and its aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// Some replica rewrites bodies (a virtual model, or a replica with its own upstream
    /// identity): bodies of this route are read whole before they go upstream.
    pub fn rewrites_any(&self) -> bool {
        self.backends.iter().any(|b| b.profile.rewrites())
    }

    /// True when requests need a choice or a limit: several replicas, or a
    /// `maxConcurrentRequests`. Only then has the model process-wide slots (`Route::slots`,
    /// counting its replicas' outstanding requests) and each worker a chooser for it; a plain
    /// `url` model takes backend 0 with no lookup.
    pub fn needs_balancer(&self) -> bool {
        needs_slots(&self.backends)
    }

    /// The balancer's view of the replicas (weights and limits), in backend order.
    pub fn limits(&self) -> Vec<ReplicaLimits> {
        limits_of(&self.backends)
    }
}

/// Requests need a choice or a limit: several replicas, or a `maxConcurrentRequests`.
fn needs_slots(backends: &[Backend]) -> bool {
    backends.len() > 1 || backends.iter().any(|b| b.max_concurrent > 0)
}

fn limits_of(backends: &[Backend]) -> Vec<ReplicaLimits> {
    backends
        .iter()
        .map(|b| ReplicaLimits {
            weight: b.weight,
            max_outstanding: b.max_concurrent,
            priority: b.priority,
        })
        .collect()
}

/// One upstream a model's requests may go to.
#[derive(Debug)]
pub struct Backend {
    pub upstream: Upstream,
    /// Addresses to try in order, as resolved when the table was built (TCP upstreams; empty
    /// for unix). Workers prefer fresher answers from the resolver thread, keyed by
    /// `resolve_key`.
    pub addrs: Vec<SocketAddr>,
    /// `host:port` for TCP upstreams whose host is a name (not an IP literal); else None.
    pub resolve_key: Option<Arc<str>>,
    /// The model's headers, then the replica's own.
    pub headers: Vec<(String, Secret)>,
    /// Upstream connections are pooled per (scheme, authority or socket path, CA file).
    pub pool_key: Arc<str>,
    /// For `https://` upstreams: the client config (webpki roots or the model's CA file)
    /// and the name verified and sent as SNI.
    pub tls: Option<UpstreamTls>,
    /// `scheme://authority` (or `unix:path`) for the access log.
    pub upstream_label: Box<str>,
    pub weight: u32,
    /// Outstanding requests for the whole process; 0: no limit.
    pub max_concurrent: u32,
    /// Per-replica counters (requests, failures, ejections), kept across reloads.
    pub stats: Arc<ReplicaStats>,
    /// Its tier (`priority`, 0 first; issue 18).
    pub priority: u32,
    /// The body rewrite this replica applies: its model's profile, with the replica's own
    /// identity (`model`, `defaults`, `clamp`, `deny`) over it. Empty: byte-for-byte.
    pub profile: Arc<Profile>,
}

/// What a backend is built from (a config replica, or code such as discovery).
pub struct BackendSpec<'a> {
    pub upstream: &'a Upstream,
    pub model_headers: &'a [(String, Secret)],
    pub headers: &'a [(String, Secret)],
    pub ca_file: Option<&'a Path>,
    pub weight: u32,
    pub max_concurrent: u32,
    pub priority: u32,
    pub profile: Arc<Profile>,
}

/// Shared while one table is built: one lookup per host and one TLS config per CA file.
pub struct BackendBuilder<'a, 'f> {
    resolve: &'a dyn Fn(&str, u16) -> Vec<SocketAddr>,
    tls: &'a mut TlsFactory<'f>,
    tls_configs: HashMap<Option<std::path::PathBuf>, Arc<rustls::ClientConfig>>,
    resolved: HashMap<(String, u16), Vec<SocketAddr>>,
}

impl<'a, 'f> BackendBuilder<'a, 'f> {
    pub fn new(
        resolve: &'a dyn Fn(&str, u16) -> Vec<SocketAddr>,
        tls: &'a mut TlsFactory<'f>,
    ) -> BackendBuilder<'a, 'f> {
        BackendBuilder {
            resolve,
            tls,
            tls_configs: HashMap::new(),
            resolved: HashMap::new(),
        }
    }

    /// One backend of model `name`; errors name the config key. With `metrics`, its
    /// per-replica series are registered (else its counters go nowhere).
    pub fn build(
        &mut self,
        name: &str,
        spec: &BackendSpec<'_>,
        metrics: Option<&Metrics>,
    ) -> Result<Backend, String> {
        let up = spec.upstream;
        let addrs = match up.scheme {
            Scheme::Unix => Vec::new(),
            _ => {
                let resolve = self.resolve;
                self.resolved
                    .entry((up.host.clone(), up.port))
                    .or_insert_with(|| resolve(&up.host, up.port))
                    .clone()
            }
        };
        let resolve_key: Option<Arc<str>> = match up.scheme {
            Scheme::Unix => None,
            _ if up.host.parse::<std::net::IpAddr>().is_ok() => None,
            _ => Some(format!("{}:{}", up.host, up.port).into()),
        };
        let pool_key: Arc<str> = match (&up.unix_path, spec.ca_file) {
            (Some(path), _) => format!("unix:{}", path.display()).into(),
            (None, Some(ca)) => {
                format!("{:?}://{}#{}", up.scheme, up.authority, ca.display()).into()
            }
            (None, None) => format!("{:?}://{}", up.scheme, up.authority).into(),
        };
        let tls = match up.scheme {
            Scheme::Https => {
                let ca = spec.ca_file.map(Path::to_path_buf);
                let client = match self.tls_configs.get(&ca) {
                    Some(c) => Arc::clone(c),
                    None => {
                        let key = if ca.is_some() { ".caFile" } else { "" };
                        let c = (self.tls)(ca.as_deref())
                            .map_err(|e| format!("models.{name}{key}: {e}"))?;
                        self.tls_configs.insert(ca, Arc::clone(&c));
                        c
                    }
                };
                let server_name = rustls::pki_types::ServerName::try_from(up.host.clone())
                    .map_err(|_| format!("models.{name}.url: invalid TLS server name"))?;
                Some(UpstreamTls {
                    config: client,
                    server_name,
                })
            }
            _ => None,
        };
        let mut headers = spec.model_headers.to_vec();
        for (k, v) in spec.headers {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
            headers.push((k.clone(), v.clone()));
        }
        let upstream_label: Box<str> = up.to_string().into_boxed_str();
        let stats: Arc<ReplicaStats> =
            metrics.map_or_else(Default::default, |m| m.replica(name, &upstream_label));
        stats.set_tier(spec.priority);
        Ok(Backend {
            upstream: up.clone(),
            addrs,
            resolve_key,
            headers,
            pool_key,
            tls,
            stats,
            upstream_label,
            weight: spec.weight.max(1),
            max_concurrent: spec.max_concurrent,
            priority: spec.priority,
            profile: Arc::clone(&spec.profile),
        })
    }
}

/// What one bearer token may do (index-aligned with `Routes::auth_tokens`). A request keeps
/// its key's policy (`conn::Record`) until it ends, to count and charge it in the table it
/// started with.
#[derive(Debug)]
pub struct TokenPolicy {
    pub scope: Scope,
    /// The key's name: the `key` label and the access log's `key` field.
    pub name: Box<str>,
    /// The token's index in `Routes::auth_tokens` (and in each `Route::key_stats`).
    pub index: usize,
    /// The `requestsPerMinute` bucket, shared by every worker (and by later tables while
    /// the token and its limit stay); None = unlimited.
    pub requests: Option<Arc<Bucket>>,
    /// The `tokensPerMinute` budget, charged when answers end; None = unlimited.
    pub tokens: Option<Arc<Bucket>>,
    /// This key's counts of requests that reached no model (or one outside its scope).
    pub unrouted: Arc<KeyCounts>,
}

impl TokenPolicy {
    /// Whether this key's requests to `route` are counted under it (the route is in the
    /// key's scope); else under the unrouted series.
    pub fn counts_on(&self, route: &Route) -> bool {
        route.key_stats.get(self.index).is_some_and(Option::is_some)
    }

    /// Where a request of this key to `route` is counted.
    pub fn counts<'a>(&'a self, route: Option<&'a Route>) -> &'a KeyCounts {
        route
            .and_then(|r| r.key_stats.get(self.index))
            .and_then(Option::as_deref)
            .unwrap_or(&self.unrouted)
    }

    /// Charges an answer's tokens to the key's budget (nothing without one).
    pub fn charge_tokens(&self, tokens: u64, now: Instant) {
        if let Some(budget) = &self.tokens {
            budget.debit(tokens, now);
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

/// Builds the TLS client config for an optional CA file (webpki roots when None).
pub type TlsFactory<'a> =
    dyn FnMut(Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> + 'a;

/// Everything a worker needs to answer requests, swapped whole on reload.
#[derive(Debug)]
pub struct Routes {
    pub models: ConfigMap<String, Arc<Route>>,
    /// Listed model names in byte order (`/v1/models`).
    pub listed: Vec<String>,
    pub auth_tokens: Vec<Secret>,
    /// Name, scope and limits of each token in `auth_tokens`.
    pub token_policies: Vec<Arc<TokenPolicy>>,
    /// Alias → route (the route's own name is in `models`).
    pub aliases: ConfigMap<String, Arc<Route>>,
    /// Every name `/v1/models` may show (listed routes' names and aliases), in byte order.
    pub catalog: Vec<(String, Arc<Route>)>,
    /// The global `maxBodyBytes` (0 = none).
    pub max_body_bytes: u64,
    /// How much body is read while the model is not yet known: the largest cap of any route
    /// (0 = none), so a model allowed more than the global cap can still be read; the
    /// route's own cap is applied once the model is known.
    pub read_body_limit: u64,
    pub max_concurrent_requests: u64,
    pub timeouts: Timeouts,
    pub access_log: bool,
    /// Unix seconds reported as `created` in `/v1/models`.
    pub created: u64,
    /// Stats of requests that never reached a model.
    pub unrouted: Arc<ModelStats>,
    /// Some model has `routeMedia`: the body scanner also looks for media parts.
    pub media_routing: bool,
    /// `modelgate_rate_limited_total`, shared with the metrics (and every later table).
    pub rate_limited: Arc<RateLimited>,
    /// Whether keys' limits are shared through the store right now (the process's one
    /// status; `/health` shows it).
    pub shared_limits: Arc<Status>,
    /// The store's label (no credentials) when `sharedLimits` is set.
    pub shared_store: Option<Box<str>>,
}

impl Routes {
    /// Builds the table; `resolve` turns a host and port into addresses (called once per
    /// TCP upstream, off the workers); `tls` makes client configs, once per CA file.
    pub fn build(
        config: &Config,
        resolve: &dyn Fn(&str, u16) -> Vec<SocketAddr>,
        tls: &mut TlsFactory<'_>,
        metrics: &Metrics,
    ) -> Result<Routes, String> {
        let mut builder = BackendBuilder::new(resolve, tls);
        let mut models = config_map(config.models.len());
        let mut listed = Vec::new();
        for (name, model) in &config.models {
            let replicas = &model.replicas;
            // One profile shared by every replica that speaks as its model does.
            let model_profile = Arc::new(model.profile.clone());
            let backends = if replicas.list.is_empty() {
                let spec = BackendSpec {
                    upstream: &model.upstream,
                    model_headers: &model.headers,
                    headers: &[],
                    ca_file: model.ca_file.as_deref(),
                    weight: 1,
                    max_concurrent: replicas.max_concurrent,
                    priority: 0,
                    profile: Arc::clone(&model_profile),
                };
                vec![builder.build(name, &spec, None)?]
            } else {
                let mut out = Vec::with_capacity(replicas.list.len());
                for r in &replicas.list {
                    let spec = BackendSpec {
                        upstream: &r.upstream,
                        model_headers: &model.headers,
                        headers: &r.headers,
                        ca_file: r.ca_file.as_deref(),
                        weight: r.weight,
                        max_concurrent: r.max_concurrent,
                        priority: r.priority,
                        profile: if r.overrides.is_empty() {
                            Arc::clone(&model_profile)
                        } else {
                            Arc::new(model.profile.overridden(&r.overrides))
                        },
                    };
                    // Series per replica only where there is a choice to watch.
                    let register = (replicas.list.len() > 1).then_some(metrics);
                    out.push(builder.build(name, &spec, register)?);
                }
                out
            };
            if !model.unlisted {
                listed.push(name.clone());
            }
            let stats = metrics.model(name);
            let names =
                || std::iter::once(name.as_str()).chain(model.aliases.iter().map(String::as_str));
            let key_stats = config
                .token_rules
                .iter()
                .map(|rule| rule.scope.allows(names()).then(|| stats.key(&rule.name)))
                .collect();
            let slots = needs_slots(&backends).then(|| {
                let limits = limits_of(&backends);
                let gauge: Arc<dyn QueueGauge> = Arc::clone(&stats) as Arc<dyn QueueGauge>;
                let slots = metrics.replica_slots().slots(
                    name,
                    &limits,
                    &replicas.balance,
                    process_epoch(),
                    Some(gauge),
                );
                if replicas.balance.health_check.is_none() {
                    // A reload that drops `healthCheck` must not leave replicas marked down.
                    slots.clear_down();
                    for backend in &backends {
                        backend.stats.set_down(false);
                    }
                }
                slots
            });
            let route = Route {
                aliases: model.aliases.clone(),
                description: model.description.as_deref().map(Box::from),
                max_body_bytes: model.max_body_bytes.unwrap_or(config.max_body_bytes),
                name: name.clone(),
                backends,
                balance: replicas.balance.clone(),
                unlisted: model.unlisted,
                stats,
                slots,
                profile: model.profile.clone(),
                route_media: model.route_media.clone(),
                key_stats,
            };
            models.insert(name.clone(), Arc::new(route));
        }
        listed.sort();
        metrics
            .replica_slots()
            .retain(|name| models.get(name).is_some_and(|r| r.slots.is_some()));
        let mut aliases = config_map(0);
        let mut catalog = Vec::new();
        for route in models.values() {
            for alias in &route.aliases {
                aliases.insert(alias.clone(), Arc::clone(route));
            }
            if !route.unlisted {
                catalog.extend(route.names().map(|n| (n.to_owned(), Arc::clone(route))));
            }
        }
        catalog.sort_by(|a, b| a.0.cmp(&b.0));
        let caps = models.values().map(|r| r.max_body_bytes);
        let read_body_limit = if caps.clone().any(|c| c == 0) || config.max_body_bytes == 0 {
            0
        } else {
            caps.fold(config.max_body_bytes, u64::max)
        };
        let unrouted = metrics.unrouted();
        let token_policies: Vec<Arc<TokenPolicy>> = config
            .token_rules
            .iter()
            .zip(&config.auth_tokens)
            .enumerate()
            .map(|(index, (r, token))| {
                let bucket = |kind, limit| {
                    metrics
                        .rate_buckets()
                        .get(token.expose().as_bytes(), kind, limit)
                };
                Arc::new(TokenPolicy {
                    scope: r.scope.clone(),
                    name: r.name.as_str().into(),
                    index,
                    requests: r.rate.map(|limit| bucket(Kind::Requests, limit)),
                    tokens: r.tokens.map(|limit| bucket(Kind::Tokens, limit)),
                    unrouted: unrouted.key(&r.name),
                })
            })
            .collect();
        let in_use: Vec<Arc<Bucket>> = token_policies
            .iter()
            .flat_map(|p| p.requests.iter().chain(&p.tokens).cloned())
            .collect();
        metrics.rate_buckets().retain(&in_use);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Routes {
            models,
            listed,
            auth_tokens: config.auth_tokens.clone(),
            token_policies,
            aliases,
            catalog,
            max_body_bytes: config.max_body_bytes,
            read_body_limit,
            max_concurrent_requests: config.max_concurrent_requests,
            timeouts: config.timeouts.clone(),
            access_log: config.access_log,
            created,
            unrouted,
            media_routing: config.models.values().any(|m| m.route_media.is_some()),
            rate_limited: metrics.rate_limited_counter(),
            shared_limits: Arc::clone(metrics.rate_buckets().status()),
            shared_store: config.shared_limits.as_ref().map(|s| s.label().into()),
        })
    }

    /// The route for a model name or alias.
    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.models.get(name).or_else(|| self.aliases.get(name))
    }

    /// True when the request's token (the index from `auth::find_token`; None when auth is
    /// off) may use `route`: by any of the route's names.
    pub fn token_allows(&self, token: Option<usize>, route: &Route) -> bool {
        match token.and_then(|i| self.token_policies.get(i)) {
            Some(policy) => policy.scope.allows(route.names()),
            None => true,
        }
    }

    /// True when the token may use only some models: a `/route/` body it sends is then read,
    /// since a backend serving several models follows the body's `model`, not the path.
    pub fn token_is_scoped(&self, token: Option<usize>) -> bool {
        token
            .and_then(|i| self.token_policies.get(i))
            .is_some_and(|p| p.scope != Scope::All)
    }

    /// Whether a body naming `model`, sent to `route` by path, stays in the token's scope:
    /// the model is one of the route's own names, or a model the token may use.
    pub fn token_allows_body_model(
        &self,
        token: Option<usize>,
        route: &Route,
        model: &str,
    ) -> bool {
        route.names().any(|n| n == model)
            || self
                .get(model)
                .is_some_and(|named| self.token_allows(token, named))
    }

    /// For a scoped token: every `model` in the query of `target` (a `/route/` or WebSocket
    /// request), which a backend serving several models may follow, is in scope too.
    pub fn token_allows_query_models(
        &self,
        token: Option<usize>,
        route: &Route,
        target: &[u8],
    ) -> Result<(), ApiError> {
        if !self.token_is_scoped(token) {
            return Ok(());
        }
        for model in query_values(target, "model") {
            match model {
                None => {
                    return Err(ApiError::BadRequest(
                        "invalid percent-encoding in the query",
                    ))
                }
                Some(m) if !self.token_allows_body_model(token, route, &m) => {
                    return Err(ApiError::ModelNotAllowed(m));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Admits one request of the token at `now`: a proxied request needs some of the
    /// key's token budget left (local endpoints spend no tokens), and every request takes
    /// one from the key's request bucket. A refused request takes nothing from either.
    pub fn admit(&self, token: Option<usize>, now: Instant, proxied: bool) -> Result<(), ApiError> {
        let Some(policy) = token.and_then(|i| self.token_policies.get(i)) else {
            return Ok(());
        };
        let refused = |limit, wait| {
            let counter = match limit {
                Limit::Requests => &self.rate_limited.requests,
                Limit::Tokens => &self.rate_limited.tokens,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            ApiError::RateLimited {
                retry_after_secs: ratelimit::retry_after_secs(wait),
                limit,
            }
        };
        if let (true, Some(budget)) = (proxied, &policy.tokens) {
            budget
                .check(now)
                .map_err(|wait| refused(Limit::Tokens, wait))?;
        }
        if let Some(bucket) = &policy.requests {
            bucket
                .try_acquire(now)
                .map_err(|wait| refused(Limit::Requests, wait))?;
        }
        Ok(())
    }

    /// Every upstream host name to keep resolved (`host:port`, without duplicates).
    pub fn names_to_resolve(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self
            .models
            .values()
            .flat_map(|r| r.backends.iter().filter_map(|b| b.resolve_key.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// What a request target asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Health,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/status`: the status page (HTML).
    Status,
    /// `/status.json`: what the status page draws.
    StatusJson,
    /// `/admin/reload`: the same reload as SIGHUP.
    AdminReload,
    ListModels,
    /// `/v1/models/{id}`: the rest of the path, percent-decoded.
    GetModel(String),
    /// `/route/{model}/{rest}`: the decoded model and the target to forward (`/rest?query`).
    ByPath {
        model: String,
        forward: PathForward<'a>,
    },
    /// Routed by the body's top-level `model`.
    ByBody,
    /// A percent-encoding that does not decode to UTF-8 where a name was expected.
    BadEncoding,
}

/// The target forwarded for `/route/` requests: `/` + rest, then the raw query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathForward<'a> {
    /// The path after the model segment, starting with `/` unless empty.
    pub rest: &'a [u8],
    /// The raw query including `?`, or empty.
    pub query: &'a [u8],
}

impl PathForward<'_> {
    /// `/rest?query` (with `/` when rest is empty) written into `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if self.rest.is_empty() {
            out.push(b'/');
        } else {
            out.extend_from_slice(self.rest);
        }
        out.extend_from_slice(self.query);
    }
}

/// Classifies a request target (origin form: path and optional query).
pub fn classify(target: &[u8]) -> Target<'_> {
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, &b""[..]),
    };
    match path {
        b"/health" => return Target::Health,
        b"/metrics" => return Target::Metrics,
        b"/status" => return Target::Status,
        b"/status.json" => return Target::StatusJson,
        b"/admin/reload" => return Target::AdminReload,
        _ => {}
    }
    if path == b"/v1/models" || path == b"/v1/models/" {
        return Target::ListModels;
    }
    if let Some(id) = path.strip_prefix(b"/v1/models/") {
        return match percent_decode(id) {
            Some(id) => Target::GetModel(id),
            None => Target::BadEncoding,
        };
    }
    if let Some(after) = path.strip_prefix(b"/route/") {
        let (segment, rest) = match memchr::memchr(b'/', after) {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, &b""[..]),
        };
        return match percent_decode(segment) {
            Some(model) => Target::ByPath {
                model,
                forward: PathForward { rest, query },
            },
            None => Target::BadEncoding,
        };
    }
    Target::ByBody
}

/// The percent-decoded value of the first query parameter `name` in a request target
/// (`/v1/realtime?model=x`): None when absent, `Some(None)` when it does not decode to UTF-8.
/// `+` is kept as is (model names are not form-encoded text).
pub fn query_param(target: &[u8], name: &[u8]) -> Option<Option<String>> {
    let query = target.get(memchr::memchr(b'?', target)? + 1..)?;
    query.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match memchr::memchr(b'=', pair) {
            Some(i) => (pair.get(..i)?, pair.get(i + 1..)?),
            None => (pair, &b""[..]),
        };
        (key == name).then(|| percent_decode(value))
    })
}

/// Every value of the query parameter `name` in `target`, keys and values percent-decoded as
/// an upstream would (None for a value, or a key, that does not decode).
pub fn query_values<'a>(
    target: &'a [u8],
    name: &'a str,
) -> impl Iterator<Item = Option<String>> + 'a {
    let query = memchr::memchr(b'?', target)
        .and_then(|i| target.get(i + 1..))
        .unwrap_or_default();
    query.split(|&b| b == b'&').filter_map(move |pair| {
        let (key, value) = match memchr::memchr(b'=', pair) {
            Some(i) => (pair.get(..i)?, pair.get(i + 1..)?),
            None => (pair, &b""[..]),
        };
        match percent_decode(key) {
            Some(key) if key == name => Some(percent_decode(value)),
            Some(_) => None,
            None => Some(None),
        }
    })
}

/// Decodes `%XX` escapes; None when an escape is malformed or the result is not UTF-8.
pub fn percent_decode(input: &[u8]) -> Option<String> {
    if !input.contains(&b'%') {
        return std::str::from_utf8(input).ok().map(str::to_owned);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            let hi = hex_value(*input.get(i + 1)?)?;
            let lo = hex_value(*input.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes_from(text: &str) -> Routes {
        let env = crate::secrets::tests::FakeEnv::new();
        let config = crate::config::from_str(text, Some(&env)).expect("valid config");
        let no_tls = &mut |_: Option<&Path>| Err("no TLS in tests".into());
        Routes::build(&config, &|_, _| vec![], no_tls, &Metrics::new()).expect("routes")
    }

    #[test]
    fn aliases_reach_the_same_route_and_are_catalogued_unless_unlisted() {
        let r = routes_from(
            r#"{"models": {
                "chat": {"url": "http://127.0.0.1:1", "aliases": ["gpt-4o", "gpt4"]},
                "hidden": {"url": "http://127.0.0.1:2", "unlisted": true, "aliases": ["h2"]}
            }}"#,
        );
        let chat = r.get("chat").expect("chat");
        assert!(Arc::ptr_eq(chat, r.get("gpt-4o").expect("alias")));
        assert!(Arc::ptr_eq(chat, r.get("gpt4").expect("alias")));
        assert_eq!(r.get("h2").expect("unlisted alias routes").name, "hidden");
        let names: Vec<&str> = r.catalog.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["chat", "gpt-4o", "gpt4"]);
        // Counts stay per model.
        assert_eq!((r.models.len(), r.listed.len()), (2, 1));
    }

    #[test]
    fn read_body_limit_is_the_largest_cap() {
        let caps = |global: &str, a: &str, b: &str| {
            let r = routes_from(&format!(
                r#"{{"maxBodyBytes": {global}, "models": {{
                    "a": {{"url": "http://127.0.0.1:1"{a}}},
                    "b": {{"url": "http://127.0.0.1:2"{b}}}
                }}}}"#
            ));
            let ra = r.get("a").expect("a").max_body_bytes;
            let rb = r.get("b").expect("b").max_body_bytes;
            (r.read_body_limit, ra, rb)
        };
        assert_eq!(caps("100", "", ""), (100, 100, 100));
        assert_eq!(
            caps("100", r#","maxBodyBytes":5000"#, ""),
            (5000, 5000, 100)
        );
        assert_eq!(caps("100", r#","maxBodyBytes":10"#, ""), (100, 10, 100));
        assert_eq!(caps("100", r#","maxBodyBytes":0"#, ""), (0, 0, 100));
        assert_eq!(caps("0", r#","maxBodyBytes":10"#, ""), (0, 10, 0));
    }

    #[test]
    fn token_scope_and_rate_come_from_the_token_index() {
        let r = routes_from(
            r#"{"authTokens": ["all", {"token": "scoped", "models": ["gpt*"], "requestsPerMinute": 60, "burst": 1}],
                "models": {
                "chat": {"url": "http://127.0.0.1:1", "aliases": ["gpt-4o"]},
                "embed": {"url": "http://127.0.0.1:2"}
            }}"#,
        );
        let chat = r.get("chat").expect("chat");
        let embed = r.get("embed").expect("embed");
        assert!(r.token_allows(None, embed));
        assert!(r.token_allows(Some(0), embed));
        // Allowed by its alias: scope grants routes, by any of their names.
        assert!(r.token_allows(Some(1), chat));
        assert!(!r.token_allows(Some(1), embed));
        let now = Instant::now();
        assert!(r.admit(Some(0), now, true).is_ok());
        assert!(r.admit(Some(0), now, true).is_ok());
        assert!(r.admit(Some(1), now, true).is_ok());
        assert_eq!(
            r.admit(Some(1), now, true),
            Err(ApiError::RateLimited {
                retry_after_secs: 1,
                limit: Limit::Requests,
            })
        );
        assert!(r.admit(None, now, true).is_ok());
        assert_eq!(r.rate_limited.requests.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_spent_token_budget_refuses_proxied_requests_only_and_takes_nothing() {
        let r = routes_from(
            r#"{"authTokens": [{"token": "t", "name": "team", "tokensPerMinute": 60,
                                "requestsPerMinute": 60, "burst": 2}],
                "models": {"chat": {"url": "http://127.0.0.1:1"}}}"#,
        );
        let now = Instant::now();
        let policy = Arc::clone(&r.token_policies[0]);
        assert_eq!(&*policy.name, "team");
        assert!(r.admit(Some(0), now, true).is_ok());
        // The answer used 70 tokens of a 60-token minute: 10 tokens (10 s) of debt.
        policy.charge_tokens(70, now);
        assert_eq!(
            r.admit(Some(0), now, true),
            Err(ApiError::RateLimited {
                retry_after_secs: 10,
                limit: Limit::Tokens,
            })
        );
        assert_eq!(r.rate_limited.tokens.load(Ordering::Relaxed), 1);
        // The refusal took nothing from the request bucket (burst 2): one local request
        // still fits, then the bucket is empty.
        assert!(r.admit(Some(0), now, false).is_ok());
        assert!(matches!(
            r.admit(Some(0), now, false),
            Err(ApiError::RateLimited {
                limit: Limit::Requests,
                ..
            })
        ));
        // Ten seconds later the budget has a token again (and the bucket a request).
        let later = now + std::time::Duration::from_millis(10_500);
        assert!(r.admit(Some(0), later, true).is_ok());
    }

    #[test]
    fn keys_are_counted_per_model_in_scope_and_unrouted_otherwise() {
        let r = routes_from(
            r#"{"authTokens": ["all", {"token": "s", "name": "chat-only", "models": ["chat"]}],
                "models": {"chat": {"url": "http://127.0.0.1:1"}, "embed": {"url": "http://127.0.0.1:2"}}}"#,
        );
        let chat = r.get("chat").expect("chat");
        let embed = r.get("embed").expect("embed");
        let (all, scoped) = (&r.token_policies[0], &r.token_policies[1]);
        assert_eq!(&*all.name, "authTokens[0]");
        assert_eq!(all.counts(Some(chat)).key(), "authTokens[0]");
        assert!(!std::ptr::eq(
            all.counts(Some(chat)),
            all.counts(Some(embed))
        ));
        assert!(std::ptr::eq(scoped.counts(Some(embed)), &*scoped.unrouted));
        assert!(std::ptr::eq(scoped.counts(None), &*scoped.unrouted));
        assert!(!std::ptr::eq(scoped.counts(Some(chat)), &*scoped.unrouted));
        assert!(scoped.counts_on(chat) && !scoped.counts_on(embed) && all.counts_on(embed));
    }

    #[test]
    fn health_ignores_the_query() {
        assert_eq!(classify(b"/health?probe=1"), Target::Health);
    }

    #[test]
    fn models_list_with_and_without_slash() {
        assert_eq!(classify(b"/v1/models"), Target::ListModels);
        assert_eq!(classify(b"/v1/models/"), Target::ListModels);
    }

    #[test]
    fn model_id_is_the_decoded_rest_of_the_path() {
        assert_eq!(
            classify(b"/v1/models/Qwen%2FQwen3-8B"),
            Target::GetModel("Qwen/Qwen3-8B".into())
        );
        assert_eq!(
            classify(b"/v1/models/Qwen/Qwen3-8B"),
            Target::GetModel("Qwen/Qwen3-8B".into())
        );
    }

    #[test]
    fn route_prefix_splits_model_and_rest() {
        let Target::ByPath { model, forward } = classify(b"/route/my%20model/v1/chat?x=1") else {
            panic!("not a path route");
        };
        assert_eq!(model, "my model");
        let mut out = Vec::new();
        forward.write_to(&mut out);
        assert_eq!(out, b"/v1/chat?x=1");
    }

    #[test]
    fn route_with_nothing_after_forwards_slash() {
        let Target::ByPath { model, forward } = classify(b"/route/m") else {
            panic!("not a path route");
        };
        assert_eq!(model, "m");
        let mut out = Vec::new();
        forward.write_to(&mut out);
        assert_eq!(out, b"/");
        let Target::ByPath { forward, .. } = classify(b"/route/m?a=b") else {
            panic!("not a path route");
        };
        let mut out = Vec::new();
        forward.write_to(&mut out);
        assert_eq!(out, b"/?a=b");
    }

    #[test]
    fn metrics_and_admin_reload_are_local() {
        assert_eq!(classify(b"/metrics"), Target::Metrics);
        assert_eq!(classify(b"/status"), Target::Status);
        assert_eq!(classify(b"/status.json?t=1"), Target::StatusJson);
        assert_eq!(classify(b"/status/"), Target::ByBody);
        assert_eq!(classify(b"/admin/reload?x"), Target::AdminReload);
        assert_eq!(classify(b"/admin/reload/x"), Target::ByBody);
    }

    #[test]
    fn other_paths_route_by_body() {
        assert_eq!(classify(b"/v1/chat/completions"), Target::ByBody);
        assert_eq!(classify(b"/api/chat"), Target::ByBody);
        assert_eq!(classify(b"/healthz"), Target::ByBody);
    }

    #[test]
    fn every_query_value_is_found_with_decoded_keys() {
        let all = |t: &[u8]| query_values(t, "model").collect::<Vec<_>>();
        assert_eq!(
            all(b"/x?model=a&mod%65l=%62&models=c&model"),
            vec![Some("a".into()), Some("b".into()), Some(String::new())]
        );
        assert_eq!(all(b"/x?%ff=1&model=%ff"), vec![None, None]);
        assert!(all(b"/x").is_empty());
    }

    #[test]
    fn query_parameters_are_found_and_decoded() {
        let t = b"/v1/realtime?intent=x&model=gpt%2Frt&model=second";
        assert_eq!(query_param(t, b"model"), Some(Some("gpt/rt".into())));
        assert_eq!(query_param(t, b"intent"), Some(Some("x".into())));
        assert_eq!(query_param(b"/v1/realtime?models=x", b"model"), None);
        assert_eq!(query_param(b"/v1/realtime", b"model"), None);
        assert_eq!(
            query_param(b"/x?model", b"model"),
            Some(Some(String::new()))
        );
        assert_eq!(query_param(b"/x?model=%ff", b"model"), Some(None));
    }

    #[test]
    fn bad_percent_encoding_is_reported() {
        assert_eq!(classify(b"/v1/models/%zz"), Target::BadEncoding);
        assert_eq!(classify(b"/route/%ff/x"), Target::BadEncoding);
        assert_eq!(percent_decode(b"a%2"), None);
    }
}
