//! The routing table and request-target classification (SPEC.md §3, §4, §10).
//!
//! `Routes` is the immutable snapshot every worker shares through an `Arc`; a reload builds
//! a new one and swaps it whole, so in-flight requests keep the table they started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Config, Scheme, Timeouts, Upstream};
use crate::metrics::{Metrics, ModelStats};
use crate::secrets::Secret;

/// Where one model's requests go.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub upstream: Upstream,
    /// Addresses to try in order, as resolved when the table was built (TCP upstreams; empty
    /// for unix). Workers prefer fresher answers from the resolver thread, keyed by
    /// `resolve_key`.
    pub addrs: Vec<SocketAddr>,
    /// `host:port` for TCP upstreams whose host is a name (not an IP literal); else None.
    pub resolve_key: Option<Arc<str>>,
    pub headers: Vec<(String, Secret)>,
    pub unlisted: bool,
    /// Upstream connections are pooled per (scheme, authority or socket path, CA file).
    pub pool_key: Arc<str>,
    /// For `https://` upstreams: the client config (webpki roots or the model's CA file)
    /// and the name verified and sent as SNI.
    pub tls: Option<UpstreamTls>,
    /// Request counters and histograms, kept across reloads by model name.
    pub stats: Arc<ModelStats>,
    /// `scheme://authority` (or `unix:path`) for the access log.
    pub upstream_label: Box<str>,
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
    pub models: HashMap<String, Arc<Route>>,
    /// Listed model names in byte order (`/v1/models`).
    pub listed: Vec<String>,
    pub auth_tokens: Vec<Secret>,
    pub max_body_bytes: u64,
    pub max_concurrent_requests: u64,
    pub timeouts: Timeouts,
    pub access_log: bool,
    /// Unix seconds reported as `created` in `/v1/models`.
    pub created: u64,
    /// Stats of requests that never reached a model.
    pub unrouted: Arc<ModelStats>,
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
        let mut tls_configs: HashMap<Option<&Path>, Arc<rustls::ClientConfig>> = HashMap::new();
        let mut models = HashMap::with_capacity(config.models.len());
        let mut listed = Vec::new();
        let mut resolved: HashMap<(String, u16), Vec<SocketAddr>> = HashMap::new();
        for (name, model) in &config.models {
            let up = &model.upstream;
            let addrs = match up.scheme {
                Scheme::Unix => Vec::new(),
                _ => resolved
                    .entry((up.host.clone(), up.port))
                    .or_insert_with(|| resolve(&up.host, up.port))
                    .clone(),
            };
            let resolve_key: Option<Arc<str>> = match up.scheme {
                Scheme::Unix => None,
                _ if up.host.parse::<std::net::IpAddr>().is_ok() => None,
                _ => Some(format!("{}:{}", up.host, up.port).into()),
            };
            let pool_key: Arc<str> = match (&up.unix_path, &model.ca_file) {
                (Some(path), _) => format!("unix:{}", path.display()).into(),
                (None, Some(ca)) => {
                    format!("{:?}://{}#{}", up.scheme, up.authority, ca.display()).into()
                }
                (None, None) => format!("{:?}://{}", up.scheme, up.authority).into(),
            };
            if !model.unlisted {
                listed.push(name.clone());
            }
            let tls = match up.scheme {
                Scheme::Https => {
                    let ca = model.ca_file.as_deref();
                    let client = match tls_configs.get(&ca) {
                        Some(c) => Arc::clone(c),
                        None => {
                            let key = if ca.is_some() { ".caFile" } else { "" };
                            let c = tls(ca).map_err(|e| format!("models.{name}{key}: {e}"))?;
                            tls_configs.insert(ca, Arc::clone(&c));
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
            let route = Route {
                name: name.clone(),
                upstream: up.clone(),
                addrs,
                resolve_key,
                headers: model.headers.clone(),
                unlisted: model.unlisted,
                pool_key,
                tls,
                stats: metrics.model(name),
                upstream_label: up.to_string().into_boxed_str(),
            };
            models.insert(name.clone(), Arc::new(route));
        }
        listed.sort();
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Routes {
            models,
            listed,
            auth_tokens: config.auth_tokens.clone(),
            max_body_bytes: config.max_body_bytes,
            max_concurrent_requests: config.max_concurrent_requests,
            timeouts: config.timeouts.clone(),
            access_log: config.access_log,
            created,
            unrouted: metrics.unrouted(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.models.get(name)
    }

    /// Every upstream host name to keep resolved (`host:port`, without duplicates).
    pub fn names_to_resolve(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self
            .models
            .values()
            .filter_map(|r| r.resolve_key.clone())
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
    fn bad_percent_encoding_is_reported() {
        assert_eq!(classify(b"/v1/models/%zz"), Target::BadEncoding);
        assert_eq!(classify(b"/route/%ff/x"), Target::BadEncoding);
        assert_eq!(percent_decode(b"a%2"), None);
    }
}
