//! The virtual-model keys of a model entry: `model` (the upstream's name), the profile
//! (`defaults`, `clamp`, `deny`) and `routeMedia`. See `crate::profile` for what they do.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use super::json::Json;
use super::{index, join, Cx, Fields, Model};
use crate::profile::{Pointer, Profile};

impl Cx<'_> {
    /// The profile of the model at `path`. Returns None on a problem.
    pub(super) fn profile(&mut self, path: &str, f: &Fields<'_>) -> Option<Profile> {
        let before = self.problems.len();
        let upstream_model = match f.get("model") {
            None => None,
            Some(v) => {
                let key = join(path, "model");
                match self.str(&key, v) {
                    Some("") => {
                        self.problem(&key, "must not be empty (it is the name sent upstream)");
                        None
                    }
                    Some(s) => Some(s.to_owned()),
                    None => None,
                }
            }
        };
        let defaults = self.settings(&join(path, "defaults"), f.get("defaults"));
        let clamp = self.settings(&join(path, "clamp"), f.get("clamp"));
        let deny = self.deny(&join(path, "deny"), f.get("deny"));
        // Problems name the keys as written (`temperature` and `/temperature` are one place).
        for (p, _, written) in &defaults {
            if clamp.iter().any(|(c, _, _)| c == p) {
                self.problem(
                    &join(&join(path, "defaults"), written),
                    "is also clamped (\"clamp\" always wins: drop one of them)",
                );
            }
        }
        for (i, (p, written)) in deny.iter().enumerate() {
            if defaults.iter().chain(clamp.iter()).any(|(s, _, _)| s == p) {
                self.problem(
                    &index(&join(path, "deny"), i),
                    format!(
                        "\"{written}\" is also set by \"defaults\" or \"clamp\" (a denied key cannot be set)"
                    ),
                );
            }
        }
        let strip = |list: Vec<(Pointer, Value, String)>| {
            list.into_iter().map(|(p, v, _)| (p, v)).collect::<Vec<_>>()
        };
        (self.problems.len() == before).then(|| Profile {
            upstream_model,
            defaults: strip(defaults),
            clamp: strip(clamp),
            deny: deny.into_iter().map(|(p, _)| p).collect(),
        })
    }

    /// `routeMedia`: the name of another model (checked by [`Cx::media_routes`]).
    pub(super) fn route_media(&mut self, path: &str, v: Option<&Json>) -> Option<String> {
        let key = join(path, "routeMedia");
        self.str(&key, v?).map(str::to_owned)
    }

    /// Every `routeMedia` names another model that has no `routeMedia` of its own (one hop).
    pub(super) fn media_routes(&mut self, models: &BTreeMap<String, Model>) {
        for (name, model) in models {
            let Some(target) = &model.route_media else {
                continue;
            };
            let key = join(&join("models", name), "routeMedia");
            match models.get(target) {
                _ if target == name => self.problem(&key, "must name another model"),
                None => {
                    let msg = format!("names \"{target}\", which is not a model in \"models\"");
                    self.problem(&key, msg);
                }
                Some(t) if t.route_media.is_some() => self.problem(
                    &key,
                    format!(
                        "names \"{target}\", which has a \"routeMedia\" of its own (one hop only)"
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    /// `defaults` / `clamp`: an object of key or JSON pointer → value.
    fn settings(&mut self, path: &str, v: Option<&Json>) -> Vec<(Pointer, Value, String)> {
        let Some(v) = v else { return Vec::new() };
        let Json::Object(members) = v else {
            self.wrong_type(path, "an object of key or \"/json/pointer\" → value", v);
            return Vec::new();
        };
        self.check_keys(path, members, None);
        let mut out: Vec<(Pointer, Value, String)> = Vec::new();
        for (i, (key, value)) in members.iter().enumerate() {
            if members[..i].iter().any(|(k, _)| k == key) {
                continue; // reported by check_keys
            }
            let key_path = join(path, key);
            let Some(pointer) = self.pointer(&key_path, key) else {
                continue;
            };
            if out.iter().any(|(p, _, _)| *p == pointer) {
                self.problem(&key_path, "names the same place as an earlier key");
                continue;
            }
            if let Some(value) = self.value(&key_path, value) {
                out.push((pointer, value, key.clone()));
            }
        }
        out
    }

    /// The denied places, with each item as written.
    fn deny(&mut self, path: &str, v: Option<&Json>) -> Vec<(Pointer, String)> {
        let Some(v) = v else { return Vec::new() };
        let Json::Array(items) = v else {
            self.wrong_type(path, "a list of keys or \"/json/pointers\"", v);
            return Vec::new();
        };
        let mut out: Vec<(Pointer, String)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = index(path, i);
            let Some(key) = self.str(&item_path, item) else {
                continue;
            };
            if let Some(p) = self.pointer(&item_path, key) {
                if out.iter().any(|(q, _)| *q == p) {
                    self.problem(&item_path, "is listed twice");
                } else {
                    out.push((p, key.to_owned()));
                }
            }
        }
        out
    }

    fn pointer(&mut self, path: &str, key: &str) -> Option<Pointer> {
        match Pointer::parse(key) {
            Ok(p) if p.first() == "model" => {
                self.problem(
                    path,
                    "cannot change \"model\" (set the name sent upstream with the model's \"model\" key)",
                );
                None
            }
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(path, e);
                None
            }
        }
    }

    /// A config value as a body value. Numbers keep their text; ones that overflow `f64` are
    /// refused (an upstream's parser would refuse the rewritten body); repeated keys too.
    fn value(&mut self, path: &str, v: &Json) -> Option<Value> {
        Some(match v {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::String(s) => Value::String(s.clone()),
            Json::Number(text) => {
                let n = match (serde_json::from_str::<f64>(text), text.parse::<Number>()) {
                    (Ok(_), Ok(n)) => n,
                    _ => {
                        self.problem(path, "number out of range");
                        return None;
                    }
                };
                Value::Number(n)
            }
            Json::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.value(&index(path, i), item)?);
                }
                Value::Array(out)
            }
            Json::Object(members) => {
                let before = self.problems.len();
                self.check_keys(path, members, None);
                if self.problems.len() > before {
                    return None;
                }
                let mut map = Map::new();
                for (k, item) in members {
                    map.insert(k.clone(), self.value(&join(path, k), item)?);
                }
                Value::Object(map)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::from_str;
    use serde_json::json;

    fn problems(model: &str) -> Vec<String> {
        let text = format!(r#"{{"models":{{"m":{model}}}}}"#);
        match from_str(&text, None) {
            Ok(_) => Vec::new(),
            Err(ps) => ps.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_full_profile_loads_in_written_order() {
        let text = r#"{"models":{"coder":{"url":"http://h:1","model":"Qwen/Qwen3-32B",
            "defaults":{"temperature":0.20,"/chat_template_kwargs/enable_thinking":true},
            "clamp":{"max_tokens":1e3,"stop":["a",{"b":null}]},"deny":["logit_bias","/a/b"]}}}"#;
        let c = from_str(text, None).unwrap();
        let p = &c.models["coder"].profile;
        assert_eq!(p.upstream_model.as_deref(), Some("Qwen/Qwen3-32B"));
        let keys: Vec<String> = p.defaults.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(
            keys,
            ["/temperature", "/chat_template_kwargs/enable_thinking"]
        );
        assert_eq!(serde_json::to_string(&p.defaults[0].1).unwrap(), "0.20");
        assert_eq!(serde_json::to_string(&p.clamp[0].1).unwrap(), "1e+3");
        assert_eq!(p.clamp[1].1, json!(["a", {"b": null}]));
        assert_eq!(p.deny.len(), 2);
        assert!(p.rewrites());
        assert_eq!(c.models["coder"].route_media, None);
    }

    #[test]
    fn no_profile_keys_means_no_rewrite() {
        let c = from_str(r#"{"models":{"m":{"url":"http://h:1"}}}"#, None).unwrap();
        assert!(!c.models["m"].profile.rewrites());
    }

    #[test]
    fn wrong_types_and_values_are_reported() {
        let ps = problems(
            r#"{"url":"http://h:1","model":"","defaults":[],"clamp":{"x":1e400,"y":{"a":1,"a":2}},"deny":"x"}"#,
        );
        for want in [
            "models.m.model: must not be empty",
            "models.m.defaults: expected an object",
            "models.m.clamp.x: number out of range",
            "models.m.clamp.y.a: is given twice",
            "models.m.deny: expected a list",
        ] {
            assert!(ps.iter().any(|p| p.starts_with(want)), "{want}: {ps:?}");
        }
    }

    #[test]
    fn pointer_problems_are_reported() {
        let ps = problems(
            r#"{"url":"http://h:1","defaults":{"":1,"/model":"x","a":1,"/a":2},"deny":["b","b",3]}"#,
        );
        for want in [
            "models.m.defaults.: an empty key",
            "models.m.defaults./model: cannot change \"model\"",
            "models.m.defaults./a: names the same place as an earlier key",
            "models.m.deny[1]: is listed twice",
            "models.m.deny[2]: expected a string",
        ] {
            assert!(ps.iter().any(|p| p.starts_with(want)), "{want}: {ps:?}");
        }
    }

    #[test]
    fn route_media_must_name_another_plain_model() {
        assert!(problems(r#"{"url":"http://h:1","routeMedia":1}"#)
            .iter()
            .any(|p| p.starts_with("models.m.routeMedia: expected a string")));
        let ok =
            r#"{"models":{"a":{"url":"http://h:1","routeMedia":"v"},"v":{"url":"http://h:2"}}}"#;
        let c = from_str(ok, None).unwrap();
        assert_eq!(c.models["a"].route_media.as_deref(), Some("v"));
    }
}
