//! Local endpoints answered by modelgate itself (SPEC.md §3): `/health`, `/v1/models`,
//! `/v1/models/{id}`, and the status page (`status`). Pure functions from the routing table
//! (and the metrics) to a body.

use serde_json::Value;

use crate::error::ApiError;
use crate::h1::Method;
use crate::router::{Route, Routes};

pub mod status;

/// `{"status":"ok","models":N}` with N the listed models (and the shared-limits state when
/// `sharedLimits` is set, see [`health_with_replicas`]).
pub fn health(routes: &Routes) -> Vec<u8> {
    health_with_replicas(routes, &[])
}

/// `/health` with per-model replica counts (`{"status":"ok","models":N,"replicas":{NAME:
/// {"healthy":H,"total":T}}}`) for models with several replicas; `counts` in name order.
/// With `sharedLimits`, `"sharedLimits":{"store":…,"state":"synced"|"local"}` says whether
/// keys' limits are shared right now or local while the store is unreachable: still 200,
/// the instance serves either way (a balancer must not take it out for that).
pub fn health_with_replicas(routes: &Routes, counts: &[(&str, usize, usize)]) -> Vec<u8> {
    let mut out = format!("{{\"status\":\"ok\",\"models\":{}", routes.listed.len());
    if !counts.is_empty() {
        out.push_str(",\"replicas\":{");
        for (i, (name, healthy, total)) in counts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::from(*name).to_string());
            out.push_str(&format!(":{{\"healthy\":{healthy},\"total\":{total}}}"));
        }
        out.push('}');
    }
    if let Some(store) = &routes.shared_store {
        let mode = routes.shared_limits.mode();
        out.push_str(",\"sharedLimits\":{\"store\":");
        out.push_str(&Value::from(&**store).to_string());
        out.push_str(&format!(",\"state\":\"{mode}\"}}"));
    }
    out.push('}');
    out.into_bytes()
}

/// The answer to a successful `/admin/reload`: `{"status":"ok","models":N}` (listed models).
pub fn reloaded(listed: usize) -> Vec<u8> {
    status_ok(listed)
}

fn status_ok(models: usize) -> Vec<u8> {
    format!("{{\"status\":\"ok\",\"models\":{models}}}").into_bytes()
}

/// Keys in OpenAI's order: `id`, `object`, `created`, `owned_by`; then the model's
/// `description` when it has one.
fn write_model_object(routes: &Routes, id: &str, route: &Route, out: &mut String) {
    out.push_str("{\"id\":");
    out.push_str(&Value::from(id).to_string());
    out.push_str(",\"object\":\"model\",\"created\":");
    out.push_str(&routes.created.to_string());
    out.push_str(",\"owned_by\":\"modelgate\"");
    if let Some(d) = &route.description {
        out.push_str(",\"description\":");
        out.push_str(&Value::from(&**d).to_string());
    }
    out.push('}');
}

/// The OpenAI model list: listed models and their aliases in byte order, only those the
/// request's token may use (`token`: its index, None when auth is off).
pub fn list_models(routes: &Routes, token: Option<usize>) -> Vec<u8> {
    let mut out = String::with_capacity(64 + routes.catalog.len() * 96);
    out.push_str("{\"object\":\"list\",\"data\":[");
    let visible = routes
        .catalog
        .iter()
        .filter(|(_, route)| routes.token_allows(token, route));
    for (i, (id, route)) in visible.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_model_object(routes, id, route, &mut out);
    }
    out.push_str("]}");
    out.into_bytes()
}

/// One model object (by name or alias); unlisted models are routable but not shown (404
/// like unknown ones). A listed model outside the token's scope is 403 `model_not_allowed`,
/// the same answer a request to it gets.
pub fn get_model(routes: &Routes, id: &str, token: Option<usize>) -> Result<Vec<u8>, ApiError> {
    match routes.get(id) {
        Some(route) if !route.unlisted => {
            if !routes.token_allows(token, route) {
                return Err(ApiError::ModelNotAllowed(id.to_owned()));
            }
            let mut out = String::with_capacity(128);
            write_model_object(routes, id, route, &mut out);
            Ok(out.into_bytes())
        }
        _ => Err(ApiError::ModelNotFound(id.to_owned())),
    }
}

/// Local endpoints accept GET and HEAD only.
pub fn method_allowed(method: Method) -> bool {
    matches!(method, Method::Get | Method::Head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Listen, Model, Scheme, Timeouts, Upstream};
    use std::collections::BTreeMap;

    fn routes(models: &[(&str, bool)]) -> Routes {
        let mut map = BTreeMap::new();
        for (name, unlisted) in models {
            map.insert(
                name.to_string(),
                Model {
                    upstream: Upstream {
                        scheme: Scheme::Http,
                        host: "127.0.0.1".into(),
                        port: 9,
                        authority: "127.0.0.1:9".into(),
                        unix_path: None,
                        base_path: String::new(),
                        query: None,
                    },
                    headers: vec![],
                    unlisted: *unlisted,
                    ca_file: None,
                    aliases: vec![],
                    description: None,
                    max_body_bytes: None,
                    replicas: Default::default(),
                    profile: Default::default(),
                    route_media: None,
                },
            );
        }
        let config = Config {
            listen: vec![Listen::Tcp("127.0.0.1:0".parse().expect("addr"))],
            auth_tokens: vec![],
            token_rules: vec![],
            max_body_bytes: 0,
            max_concurrent_requests: 0,
            max_buffer_bytes: 1 << 30,
            max_connections: 100,
            timeouts: Timeouts::default(),
            access_log: false,
            workers: 1,
            busy_poll: std::time::Duration::ZERO,
            watch_config: false,
            models: map,
            discover: vec![],
            discover_interval: crate::config::DEFAULT_DISCOVER_INTERVAL,
            shared_limits: None,
        };
        let metrics = crate::metrics::Metrics::new();
        let no_tls = &mut |_: Option<&std::path::Path>| Err("no TLS in tests".into());
        Routes::build(&config, &|_, _| vec![], no_tls, &metrics).expect("routes")
    }

    use serde_json::json;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("valid JSON")
    }

    #[test]
    fn bodies_keep_the_documented_key_order() {
        let r = routes(&[("a\"b", false)]);
        assert_eq!(health(&r), br#"{"status":"ok","models":1}"#);
        let list = String::from_utf8(list_models(&r, None)).expect("utf8");
        assert!(list
            .starts_with(r#"{"object":"list","data":[{"id":"a\"b","object":"model","created":"#));
    }

    #[test]
    fn health_says_whether_limits_are_shared_right_now() {
        let r = routes_from(
            r#"{"sharedLimits": {"url": "redis://:pw@10.0.0.9:6380/1"},
                "models": {"m": {"url": "http://127.0.0.1:1"}}}"#,
        );
        let local = parse(&health(&r));
        assert_eq!(
            local["sharedLimits"],
            json!({"store": "redis://10.0.0.9:6380/1", "state": "off"})
        );
        r.shared_limits
            .set_mode(crate::ratelimit::shared::Mode::Local);
        assert_eq!(parse(&health(&r))["sharedLimits"]["state"], "local");
        r.shared_limits
            .set_mode(crate::ratelimit::shared::Mode::Synced);
        let v = parse(&health_with_replicas(&r, &[("m", 1, 2)]));
        assert_eq!(v["sharedLimits"]["state"], "synced");
        assert_eq!(v["replicas"]["m"], json!({"healthy": 1, "total": 2}));
        assert!(!String::from_utf8_lossy(&health(&r)).contains("pw"));
    }

    #[test]
    fn health_counts_listed_models_only() {
        let r = routes(&[("a", false), ("b", true)]);
        assert_eq!(parse(&health(&r)), json!({"status":"ok","models":1}));
    }

    #[test]
    fn list_is_sorted_by_bytes_and_hides_unlisted() {
        let r = routes(&[("b", false), ("B", false), ("a", false), ("hidden", true)]);
        let v = parse(&list_models(&r, None));
        let ids: Vec<&str> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["B", "a", "b"]);
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["object"], "model");
        assert_eq!(v["data"][0]["owned_by"], "modelgate");
    }

    fn routes_from(text: &str) -> Routes {
        let env = crate::secrets::tests::FakeEnv::new();
        let config = crate::config::from_str(text, Some(&env)).expect("valid config");
        let metrics = crate::metrics::Metrics::new();
        let no_tls = &mut |_: Option<&std::path::Path>| Err("no TLS in tests".into());
        Routes::build(&config, &|_, _| vec![], no_tls, &metrics).expect("routes")
    }

    fn ids(body: &[u8]) -> Vec<String> {
        parse(body)["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect()
    }

    #[test]
    fn list_shows_aliases_descriptions_and_only_what_the_token_may_use() {
        let r = routes_from(
            r#"{"authTokens": ["all", {"token": "t", "models": ["chat"]}], "models": {
                "chat": {"url": "http://127.0.0.1:1", "aliases": ["gpt4"], "description": "Chat \"v2\""},
                "vision": {"url": "http://127.0.0.1:2"}
            }}"#,
        );
        assert_eq!(ids(&list_models(&r, None)), ["chat", "gpt4", "vision"]);
        assert_eq!(ids(&list_models(&r, Some(0))), ["chat", "gpt4", "vision"]);
        assert_eq!(ids(&list_models(&r, Some(1))), ["chat", "gpt4"]);
        let v = parse(&list_models(&r, None));
        assert_eq!(v["data"][0]["description"], "Chat \"v2\"");
        assert_eq!(v["data"][1]["description"], "Chat \"v2\"");
        assert!(v["data"][2].get("description").is_none());
        let one = parse(&get_model(&r, "gpt4", Some(1)).expect("in scope"));
        assert_eq!(one["id"], "gpt4");
        assert_eq!(one["description"], "Chat \"v2\"");
        assert_eq!(
            get_model(&r, "vision", Some(1)),
            Err(ApiError::ModelNotAllowed("vision".into()))
        );
        assert!(get_model(&r, "vision", Some(0)).is_ok());
    }

    #[test]
    fn get_model_finds_listed_and_hides_unlisted() {
        let r = routes(&[("Qwen/Qwen3-8B", false), ("hidden", true)]);
        assert_eq!(
            parse(&get_model(&r, "Qwen/Qwen3-8B", None).expect("found"))["id"],
            "Qwen/Qwen3-8B"
        );
        assert!(get_model(&r, "hidden", None).is_err());
        assert!(get_model(&r, "nope", None).is_err());
    }
}
