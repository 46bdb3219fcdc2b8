//! Model keys beyond the upstream: `aliases`, `description`, a per-model `maxBodyBytes`,
//! and nginx-llm-proxy's `backend` (`"host:port"`, an alternative to `url`).

use std::collections::BTreeMap;

use super::json::Json;
use super::{index, join, parse_upstream_url, Cx, Fields, Model, Upstream};

/// What [`Cx::model_extras`] reads from a model entry.
pub(super) struct ModelExtras {
    pub aliases: Vec<String>,
    pub description: Option<String>,
    pub max_body_bytes: Option<u64>,
}

impl Cx<'_> {
    pub(super) fn model_extras(&mut self, path: &str, f: &Fields<'_>) -> Option<ModelExtras> {
        let before = self.problems.len();
        let aliases = self.aliases(&join(path, "aliases"), f.get("aliases"));
        let description = f
            .get("description")
            .and_then(|v| self.str(&join(path, "description"), v))
            .map(str::to_owned);
        let max_path = join(path, "maxBodyBytes");
        let max_body_bytes = f
            .get("maxBodyBytes")
            .map(|v| self.uint_in(&max_path, Some(v), 0, 0, u64::MAX));
        (self.problems.len() == before).then_some(ModelExtras {
            aliases,
            description,
            max_body_bytes,
        })
    }

    fn aliases(&mut self, path: &str, v: Option<&Json>) -> Vec<String> {
        let Some(v) = v else { return Vec::new() };
        let Json::Array(items) = v else {
            self.wrong_type(path, "a list of model names", v);
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = index(path, i);
            match self.str(&item_path, item) {
                Some("") => self.problem(&item_path, "an alias must not be empty"),
                Some(a) if out.iter().any(|o| o == a) => {
                    self.problem(&item_path, "is listed twice")
                }
                Some(a) => out.push(a.to_owned()),
                None => {}
            }
        }
        out
    }

    /// nginx-llm-proxy's `backend`: `"host:port"` means `http://host:port`; a value with a
    /// scheme is taken as a `url`. Never together with `url`.
    pub(super) fn backend(&mut self, path: &str, f: &Fields<'_>) -> Option<Upstream> {
        let backend_path = join(path, "backend");
        let v = f.get("backend")?;
        if f.get("url").is_some() {
            self.problem(
                &backend_path,
                "cannot be used together with \"url\" (\"backend\" is nginx-llm-proxy's form of the same setting; keep one)",
            );
            return None;
        }
        let b = self.str(&backend_path, v)?;
        let url = if b.contains("://") {
            b.to_owned()
        } else {
            format!("http://{b}")
        };
        match parse_upstream_url(&url) {
            Ok(up) => Some(up),
            Err(e) => {
                self.problem(&backend_path, e);
                None
            }
        }
    }

    /// Every name routes to one model: an alias may not repeat a model name or another alias.
    pub(super) fn check_aliases(&mut self, models: &BTreeMap<String, Model>) {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, model) in models {
            for (i, alias) in model.aliases.iter().enumerate() {
                let path = index(&join(&join("models", name), "aliases"), i);
                if alias == name {
                    self.problem(&path, "is the model's own name");
                } else if models.contains_key(alias) {
                    self.problem(&path, format!("is already the name of model \"{alias}\""));
                } else if let Some(other) = seen.get(alias.as_str()) {
                    self.problem(&path, format!("is already an alias of model \"{other}\""));
                } else {
                    seen.insert(alias, name);
                }
            }
        }
    }
}

/// Why a key of nginx-llm-proxy's later config format is not accepted, and what to do.
pub(super) fn nginx_llm_proxy_hint(key: &str) -> Option<&'static str> {
    Some(match key {
        "admin_password" => {
            "nginx-llm-proxy's admin UI password; modelgate has no admin UI (POST /admin/reload is served to local clients only): remove it"
        }
        "health_check_interval" | "sticky_ttl" | "default_max_concurrent" => {
            "an nginx-llm-proxy backend-pool setting modelgate does not have: remove it"
        }
        "backends" => {
            "nginx-llm-proxy's multi-backend form is not supported: give one \"backend\" or \"url\""
        }
        "backend_model" => "nginx-llm-proxy's upstream model rename is not supported",
        "strip_v1" => "nginx-llm-proxy's /v1 stripping is not supported",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{from_str, Config, Scheme};
    use crate::secrets::tests::FakeEnv;

    fn load(text: &str) -> Result<Config, Vec<String>> {
        from_str(text, Some(&FakeEnv::new())).map_err(|p| p.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn aliases_description_and_max_body_bytes_are_read() {
        let c = load(
            r#"{"maxBodyBytes": 1000, "models": {
                "chat": {"url": "http://h:1", "aliases": ["gpt-4o", "gpt4"], "description": "Chat model"},
                "vision": {"url": "http://h:2", "maxBodyBytes": 50000000},
                "open": {"url": "http://h:3", "maxBodyBytes": 0}
            }}"#,
        )
        .expect("valid");
        let chat = &c.models["chat"];
        assert_eq!(chat.aliases, ["gpt-4o", "gpt4"]);
        assert_eq!(chat.description.as_deref(), Some("Chat model"));
        assert_eq!(chat.max_body_bytes, None);
        assert_eq!(c.models["vision"].max_body_bytes, Some(50_000_000));
        assert_eq!(c.models["open"].max_body_bytes, Some(0));
        assert!(c.models["vision"].aliases.is_empty());
    }

    #[test]
    fn alias_conflicts_are_named_by_key_path() {
        let p = load(
            r#"{"models": {
                "a": {"url": "http://h:1", "aliases": ["x", "b", "a"]},
                "b": {"url": "http://h:2"},
                "c": {"url": "http://h:3", "aliases": ["y", ""]},
                "d": {"url": "http://h:4", "aliases": ["z", "z"]}
            }}"#,
        )
        .expect_err("conflicts");
        assert_eq!(
            p,
            [
                "models.c.aliases[1]: an alias must not be empty",
                "models.d.aliases[1]: is listed twice",
                "models.a.aliases[1]: is already the name of model \"b\"",
                "models.a.aliases[2]: is the model's own name",
            ]
        );
        let p = load(
            r#"{"models": {"a": {"url": "http://h:1", "aliases": ["x"]}, "b": {"url": "http://h:2", "aliases": ["x"]}}}"#,
        )
        .expect_err("shared alias");
        assert_eq!(
            p,
            ["models.b.aliases[0]: is already an alias of model \"a\""]
        );
    }

    #[test]
    fn wrong_types_are_reported() {
        let p = load(
            r#"{"models": {"a": {"url": "http://h:1", "aliases": "x", "description": 1, "maxBodyBytes": -1}}}"#,
        )
        .expect_err("types");
        assert_eq!(
            p,
            [
                "models.a.aliases: expected a list of model names, found a string",
                "models.a.description: expected a string, found a number",
                "models.a.maxBodyBytes: must not be negative",
            ]
        );
    }

    #[test]
    fn later_nginx_llm_proxy_keys_say_why_they_are_refused() {
        let p = load(
            r#"{"admin_password": "x", "sticky_ttl": 600, "models": {"m": {"backends": [], "backend_model": "q", "url": "http://h:1"}}}"#,
        )
        .expect_err("unsupported keys");
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].starts_with("admin_password: unknown key (nginx-llm-proxy's admin UI"));
        assert!(p[1].starts_with("sticky_ttl: unknown key (an nginx-llm-proxy backend-pool"));
        assert!(p[2].starts_with("models.m.backends: unknown key (nginx-llm-proxy's multi-backend"));
        assert!(p[3].starts_with("models.m.backend_model: unknown key (nginx-llm-proxy's upstream"));
    }

    #[test]
    fn backend_host_port_means_http() {
        let c = load(r#"{"models": {"m": {"backend": "127.0.0.1:8080", "description": "d"}}}"#)
            .expect("valid");
        let up = &c.models["m"].upstream;
        assert_eq!(up.scheme, Scheme::Http);
        assert_eq!(up.authority, "127.0.0.1:8080");
        assert_eq!(up.port, 8080);
        let c =
            load(r#"{"models": {"m": {"backend": "https://api.example.com"}}}"#).expect("valid");
        assert_eq!(c.models["m"].upstream.scheme, Scheme::Https);
    }

    #[test]
    fn backend_problems_are_reported() {
        let p = load(r#"{"models": {"m": {"backend": "h:1", "url": "http://h:1"}}}"#)
            .expect_err("both");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("models.m.backend: cannot be used together with \"url\""));
        let p = load(r#"{"models": {"m": {"backend": "h:notaport"}}}"#).expect_err("port");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("models.m.backend: "), "{p:?}");
        let p = load(r#"{"models": {"m": {"description": "no upstream"}}}"#).expect_err("none");
        assert_eq!(p, ["models.m.url: is required"]);
    }
}
