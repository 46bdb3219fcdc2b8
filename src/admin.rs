//! Local endpoints answered by modelgate itself (SPEC.md §3): `/health`, `/v1/models`,
//! `/v1/models/{id}`. Pure functions from the routing table to a JSON body.

use serde_json::Value;

use crate::error::ApiError;
use crate::h1::Method;
use crate::router::Routes;

/// `{"status":"ok","models":N}` with N the listed models.
pub fn health(routes: &Routes) -> Vec<u8> {
    status_ok(routes.listed.len())
}

/// The answer to a successful `/admin/reload`: `{"status":"ok","models":N}` (listed models).
pub fn reloaded(listed: usize) -> Vec<u8> {
    status_ok(listed)
}

fn status_ok(models: usize) -> Vec<u8> {
    format!("{{\"status\":\"ok\",\"models\":{models}}}").into_bytes()
}

/// Keys in OpenAI's order: `id`, `object`, `created`, `owned_by`.
fn write_model_object(routes: &Routes, id: &str, out: &mut String) {
    out.push_str("{\"id\":");
    out.push_str(&Value::from(id).to_string());
    out.push_str(",\"object\":\"model\",\"created\":");
    out.push_str(&routes.created.to_string());
    out.push_str(",\"owned_by\":\"modelgate\"}");
}

/// The OpenAI model list: listed models in byte order.
pub fn list_models(routes: &Routes) -> Vec<u8> {
    let mut out = String::with_capacity(64 + routes.listed.len() * 96);
    out.push_str("{\"object\":\"list\",\"data\":[");
    for (i, id) in routes.listed.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_model_object(routes, id, &mut out);
    }
    out.push_str("]}");
    out.into_bytes()
}

/// One model object; unlisted models are routable but not shown (404 like unknown ones).
pub fn get_model(routes: &Routes, id: &str) -> Result<Vec<u8>, ApiError> {
    match routes.get(id) {
        Some(route) if !route.unlisted => {
            let mut out = String::with_capacity(128);
            write_model_object(routes, id, &mut out);
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
                },
            );
        }
        let config = Config {
            listen: vec![Listen::Tcp("127.0.0.1:0".parse().expect("addr"))],
            auth_tokens: vec![],
            max_body_bytes: 0,
            max_concurrent_requests: 0,
            max_buffer_bytes: 1 << 30,
            max_connections: 100,
            timeouts: Timeouts::default(),
            access_log: false,
            workers: 1,
            watch_config: false,
            models: map,
            discover: vec![],
            discover_interval: crate::config::DEFAULT_DISCOVER_INTERVAL,
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
        let list = String::from_utf8(list_models(&r)).expect("utf8");
        assert!(list
            .starts_with(r#"{"object":"list","data":[{"id":"a\"b","object":"model","created":"#));
    }

    #[test]
    fn health_counts_listed_models_only() {
        let r = routes(&[("a", false), ("b", true)]);
        assert_eq!(parse(&health(&r)), json!({"status":"ok","models":1}));
    }

    #[test]
    fn list_is_sorted_by_bytes_and_hides_unlisted() {
        let r = routes(&[("b", false), ("B", false), ("a", false), ("hidden", true)]);
        let v = parse(&list_models(&r));
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

    #[test]
    fn get_model_finds_listed_and_hides_unlisted() {
        let r = routes(&[("Qwen/Qwen3-8B", false), ("hidden", true)]);
        assert_eq!(
            parse(&get_model(&r, "Qwen/Qwen3-8B").expect("found"))["id"],
            "Qwen/Qwen3-8B"
        );
        assert!(get_model(&r, "hidden").is_err());
        assert!(get_model(&r, "nope").is_err());
    }
}
