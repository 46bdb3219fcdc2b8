//! Bearer tokens in the config: `authTokens` entries (plain strings, or objects with a name,
//! a model scope, a request rate limit and a token budget), and nginx-llm-proxy's `api_key` /
//! `api_keys`.
//!
//! Every token, whatever key it came from, ends up in `Config::auth_tokens`; its rules sit at
//! the same index in `Config::token_rules`. Every token has a name, the `key` label of its
//! metrics and access log lines: its `name`, the client name of an `api_keys` entry, or else
//! where it was found (`authTokens[2]`, `api_key`). The position, not a hash of the token: a
//! short hash of a weak token can be brute-forced from a scrape, a position says nothing
//! about the secret and points straight at the config line.

use super::json::Json;
use super::{index, join, Cx, Fields};
use crate::auth::Scope;
use crate::ratelimit::RateLimit;
use crate::secrets::{self, Secret};

/// What a token may do; index-aligned with `Config::auth_tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenRules {
    /// Which models the token may use (`models` globs; a plain string entry: all).
    pub scope: Scope,
    /// `requestsPerMinute` / `burst`; None = unlimited.
    pub rate: Option<RateLimit>,
    /// `tokensPerMinute` (prompt + completion tokens read from the answers; the budget holds
    /// one minute's worth); None = unlimited.
    pub tokens: Option<RateLimit>,
    /// The `key` label: `name`, the `api_keys` client name, or the token's key path.
    pub name: String,
}

const TOKEN_KEYS: &[&str] = &[
    "token",
    "name",
    "models",
    "requestsPerMinute",
    "burst",
    "tokensPerMinute",
];
/// One unit per nanosecond is the finest rate the bucket can represent.
const MAX_PER_MINUTE: u64 = 60_000_000_000;
/// Key names are metric label values and log fields: short, printable.
const MAX_NAME_CHARS: usize = 64;

impl Cx<'_> {
    /// `authTokens`, then `api_key`, then the values of `api_keys`. Where a token was found is
    /// its key path in every problem; a repeated token is a problem (its rules would be
    /// ambiguous).
    pub(super) fn all_tokens(&mut self, f: &Fields<'_>) -> (Vec<Secret>, Vec<TokenRules>) {
        let mut tokens: Vec<(String, Secret, TokenRules)> = Vec::new();
        if let Some(v) = f.get("authTokens") {
            self.auth_token_list(v, &mut tokens);
        }
        if let Some(v) = f.get("api_key") {
            // nginx-llm-proxy: an empty `api_key` means "no authentication".
            if let Some(template) = self.str("api_key", v).filter(|t| !t.is_empty()) {
                if let Some(token) = self.token_secret("api_key", template) {
                    tokens.push(("api_key".into(), token, TokenRules::default()));
                }
            }
        }
        if let Some(v) = f.get("api_keys") {
            self.api_keys(v, &mut tokens);
        }
        // Unnamed tokens are named by where they were found.
        for (path, _, rules) in &mut tokens {
            if rules.name.is_empty() {
                rules.name.clone_from(path);
            }
        }
        let mut secrets_out = Vec::with_capacity(tokens.len());
        let mut rules_out = Vec::with_capacity(tokens.len());
        for (i, (path, token, rules)) in tokens.iter().enumerate() {
            if let Some((first, _, _)) = tokens[..i]
                .iter()
                .find(|(_, t, _)| t.expose() == token.expose())
            {
                self.problem(path, format!("is the same token as {first}"));
                continue;
            }
            if let Some((first, _, _)) = tokens[..i].iter().find(|(_, _, r)| r.name == rules.name) {
                // Two series under one `key` label would merge two keys' usage.
                let name_path = if path.starts_with("authTokens") && rules.name != *path {
                    join(path, "name")
                } else {
                    path.clone()
                };
                self.problem(
                    &name_path,
                    format!("\"{}\" is already the name of {first}", rules.name),
                );
                continue;
            }
            secrets_out.push(token.clone());
            rules_out.push(rules.clone());
        }
        (secrets_out, rules_out)
    }

    fn auth_token_list(&mut self, v: &Json, out: &mut Vec<(String, Secret, TokenRules)>) {
        let Json::Array(items) = v else {
            self.wrong_type(
                "authTokens",
                "a list of tokens (strings or {\"token\": …} objects)",
                v,
            );
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let path = index("authTokens", i);
            let entry = match item {
                Json::String(template) => self
                    .token_secret(&path, template)
                    .map(|t| (t, TokenRules::default())),
                Json::Object(_) => self.token_object(&path, item),
                other => {
                    self.wrong_type(&path, "a string or {\"token\": …}", other);
                    None
                }
            };
            if let Some((token, rules)) = entry {
                out.push((path, token, rules));
            }
        }
    }

    /// `{"token": "...", "name": "team-a", "models": ["a", "b*"], "requestsPerMinute": N,
    /// "burst": M, "tokensPerMinute": T}`.
    fn token_object(&mut self, path: &str, v: &Json) -> Option<(Secret, TokenRules)> {
        let f = self.fields(path, v, TOKEN_KEYS)?;
        let token_path = join(path, "token");
        let token = match f.get("token") {
            None => {
                self.problem(&token_path, "is required");
                None
            }
            Some(t) => self
                .str(&token_path, t)
                .and_then(|t| self.token_secret(&token_path, t)),
        };
        let name = self.token_name(&join(path, "name"), f.get("name"));
        let scope = self.token_scope(&join(path, "models"), f.get("models"));
        let rate = self.token_rate(path, &f);
        let tpm_path = join(path, "tokensPerMinute");
        let before = self.problems.len();
        let tokens = f.get("tokensPerMinute").map(|v| {
            let per_minute = self.uint_in(&tpm_path, Some(v), 1, 1, MAX_PER_MINUTE);
            RateLimit {
                per_minute,
                burst: per_minute,
            }
        });
        let tokens_ok = self.problems.len() == before;
        Some((
            token?,
            TokenRules {
                scope: scope?,
                rate: rate?,
                tokens: tokens.filter(|_| tokens_ok),
                name: name?,
            },
        ))
    }

    /// `name`: the key's label in metrics and the access log. Absent: empty (named later by
    /// its key path).
    fn token_name(&mut self, path: &str, v: Option<&Json>) -> Option<String> {
        let Some(v) = v else {
            return Some(String::new());
        };
        let name = self.str(path, v)?;
        if name.is_empty() {
            self.problem(
                path,
                "must not be empty (leave it out to name the key by its place)",
            );
            return None;
        }
        if name.chars().count() > MAX_NAME_CHARS {
            self.problem(path, format!("is longer than {MAX_NAME_CHARS} characters"));
            return None;
        }
        if name.chars().any(char::is_control) {
            self.problem(path, "must not contain control characters");
            return None;
        }
        Some(name.to_owned())
    }

    /// `models`: a non-empty list of name globs. Absent = every model.
    fn token_scope(&mut self, path: &str, v: Option<&Json>) -> Option<Scope> {
        let Some(v) = v else { return Some(Scope::All) };
        let Json::Array(items) = v else {
            self.wrong_type(path, "a list of model names or globs (\"qwen-*\")", v);
            return None;
        };
        if items.is_empty() {
            self.problem(
                path,
                "must name at least one model (remove the entry to revoke the token)",
            );
            return None;
        }
        let before = self.problems.len();
        let mut globs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = index(path, i);
            match self.str(&item_path, item) {
                Some("") => self.problem(&item_path, "must not be empty"),
                Some(g) => globs.push(g.to_owned()),
                None => {}
            }
        }
        (self.problems.len() == before).then_some(Scope::Models(globs))
    }

    /// `requestsPerMinute` and `burst` (default: one minute's worth). Some(None) = unlimited.
    fn token_rate(&mut self, path: &str, f: &Fields<'_>) -> Option<Option<RateLimit>> {
        let rpm_path = join(path, "requestsPerMinute");
        let burst_path = join(path, "burst");
        let before = self.problems.len();
        let rpm = f
            .get("requestsPerMinute")
            .map(|v| self.uint_in(&rpm_path, Some(v), 1, 1, MAX_PER_MINUTE));
        let burst = f
            .get("burst")
            .map(|v| self.uint_in(&burst_path, Some(v), 1, 1, MAX_PER_MINUTE));
        if self.problems.len() != before {
            return None;
        }
        match (rpm, burst) {
            (None, None) => Some(None),
            (None, Some(_)) => {
                self.problem(&burst_path, "needs \"requestsPerMinute\" next to it");
                None
            }
            (Some(rpm), burst) => Some(Some(RateLimit {
                per_minute: rpm,
                burst: burst.unwrap_or(rpm),
            })),
        }
    }

    /// nginx-llm-proxy's `api_keys`: an object of client name → token; the client name is
    /// the key's name.
    fn api_keys(&mut self, v: &Json, out: &mut Vec<(String, Secret, TokenRules)>) {
        let Json::Object(members) = v else {
            self.wrong_type("api_keys", "an object of client name → token", v);
            return;
        };
        self.check_keys("api_keys", members, None);
        for (i, (name, value)) in members.iter().enumerate() {
            if members[..i].iter().any(|(k, _)| k == name) {
                continue; // reported by check_keys
            }
            let path = join("api_keys", name);
            if let Some(token) = self
                .str(&path, value)
                .and_then(|t| self.token_secret(&path, t))
            {
                let rules = TokenRules {
                    name: name.clone(),
                    ..TokenRules::default()
                };
                out.push((path, token, rules));
            }
        }
    }

    /// A token template, expanded (or syntax-checked for `--check`) and checked for what a
    /// bearer token cannot hold. Messages never carry the value.
    fn token_secret(&mut self, path: &str, template: &str) -> Option<Secret> {
        if template.is_empty() {
            self.problem(path, "is empty (an empty bearer token would match nothing)");
            return None;
        }
        let expanded = self.env.is_some() || !secrets::has_references(template);
        let token = self.secret(path, template)?;
        if expanded {
            if token.expose().is_empty() {
                self.problem(path, "expands to an empty token");
                return None;
            }
            if token.expose().bytes().any(|b| b <= b' ' || b == 0x7f) {
                self.problem(
                    path,
                    "contains whitespace or a control character, which a bearer token cannot",
                );
                return None;
            }
        }
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{from_str, Config};
    use super::*;
    use crate::secrets::tests::FakeEnv;

    fn load(top: &str, env: &FakeEnv) -> Result<Config, Vec<String>> {
        let text =
            format!(r#"{{{top}, "models": {{"chat": {{"url": "http://127.0.0.1:9001"}}}}}}"#);
        from_str(&text, Some(env)).map_err(|p| p.iter().map(|p| p.to_string()).collect())
    }

    fn ok(top: &str) -> Config {
        load(top, &FakeEnv::new()).expect("valid config")
    }

    fn problems(top: &str) -> Vec<String> {
        load(top, &FakeEnv::new()).expect_err("expected problems")
    }

    fn exposed(c: &Config) -> Vec<&str> {
        c.auth_tokens.iter().map(|t| t.expose()).collect()
    }

    #[test]
    fn strings_and_objects_mix_and_keep_their_order() {
        let c = ok(r#""authTokens": ["plain", {"token": "scoped", "models": ["chat", "qwen-*"]}]"#);
        assert_eq!(exposed(&c), ["plain", "scoped"]);
        assert_eq!(
            c.token_rules[0],
            TokenRules {
                name: "authTokens[0]".into(),
                ..TokenRules::default()
            }
        );
        assert_eq!(
            c.token_rules[1].scope,
            Scope::Models(vec!["chat".into(), "qwen-*".into()])
        );
        assert_eq!(c.token_rules[1].rate, None);
    }

    #[test]
    fn object_without_models_has_full_access() {
        let c = ok(r#""authTokens": [{"token": "t", "requestsPerMinute": 30}]"#);
        assert_eq!(c.token_rules[0].scope, Scope::All);
        assert_eq!(
            c.token_rules[0].rate,
            Some(RateLimit {
                per_minute: 30,
                burst: 30
            })
        );
    }

    #[test]
    fn burst_is_read() {
        let c = ok(r#""authTokens": [{"token": "t", "requestsPerMinute": 60, "burst": 5}]"#);
        assert_eq!(
            c.token_rules[0].rate,
            Some(RateLimit {
                per_minute: 60,
                burst: 5
            })
        );
    }

    #[test]
    fn token_budget_is_one_minute_of_tokens_next_to_the_request_limit() {
        let c = ok(
            r#""authTokens": [{"token": "t", "requestsPerMinute": 60, "tokensPerMinute": 100000}, "u"]"#,
        );
        assert_eq!(
            c.token_rules[0].tokens,
            Some(RateLimit {
                per_minute: 100_000,
                burst: 100_000
            })
        );
        assert_eq!(c.token_rules[0].rate.map(|r| r.per_minute), Some(60));
        assert_eq!(c.token_rules[1].tokens, None);
        let c = ok(r#""authTokens": [{"token": "t", "tokensPerMinute": 5}]"#);
        assert_eq!(
            (
                c.token_rules[0].rate,
                c.token_rules[0].tokens.map(|t| t.per_minute)
            ),
            (None, Some(5))
        );
    }

    #[test]
    fn keys_are_named_by_name_client_name_or_key_path() {
        let c = ok(
            r#""authTokens": ["a", {"token": "b", "name": "team-b"}, {"token": "c"}],
               "api_key": "d", "api_keys": {"ci bot": "e"}"#,
        );
        let names: Vec<&str> = c.token_rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "authTokens[0]",
                "team-b",
                "authTokens[2]",
                "api_key",
                "ci bot"
            ]
        );
    }

    #[test]
    fn names_are_checked_and_unique_and_problems_never_carry_the_token() {
        let p = problems(
            r#""authTokens": [
                {"token": "sk-1", "name": ""},
                {"token": "sk-2", "name": 5},
                {"token": "sk-3", "name": "a\u0001b"},
                {"token": "sk-4", "name": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
                {"token": "sk-5", "name": "same"},
                {"token": "sk-6", "name": "same"},
                {"token": "sk-7", "name": "authTokens[7]"},
                "sk-8",
                {"token": "sk-9", "tokensPerMinute": 0}
            ]"#,
        );
        let want = [
            "authTokens[0].name: must not be empty",
            "authTokens[1].name: expected a string, found a number",
            "authTokens[2].name: must not contain control characters",
            "authTokens[3].name: is longer than 64 characters",
            "authTokens[8].tokensPerMinute: must be at least 1",
            "authTokens[5].name: \"same\" is already the name of authTokens[4]",
            "authTokens[7]: \"authTokens[7]\" is already the name of authTokens[6]",
        ];
        assert_eq!(p.len(), want.len(), "{p:#?}");
        for (got, want) in p.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
            assert!(!got.contains("sk-"), "{got}");
        }
        assert_eq!(
            problems(r#""authTokens": [{"token": "x", "name": "api_key"}], "api_key": "y""#),
            ["api_key: \"api_key\" is already the name of authTokens[0]"]
        );
    }

    #[test]
    fn object_token_expands_secrets() {
        let env = FakeEnv::new()
            .var("A", "ta")
            .file("/run/tok", b"tf\n")
            .var("CREDENTIALS_DIRECTORY", "/run/c")
            .file("/run/c/k", b"tc\n");
        let c = load(
            r#""authTokens": [{"token": "${env:A}"}, {"token": "${file:/run/tok}"}, {"token": "${cred:k}", "models": ["chat"]}]"#,
            &env,
        )
        .expect("valid");
        assert_eq!(exposed(&c), ["ta", "tf", "tc"]);
    }

    #[test]
    fn problems_are_named_by_key_path() {
        let p = problems(
            r#""authTokens": [
                {"models": ["a"]},
                {"token": "t1", "models": []},
                {"token": "t2", "models": "a"},
                {"token": "t3", "models": ["ok", ""]},
                {"token": "t4", "requestsPerMinute": 0},
                {"token": "t5", "burst": 3},
                {"token": "t6", "modles": ["a"]},
                {"token": ""},
                7
            ]"#,
        );
        let want = [
            "authTokens[0].token: is required",
            "authTokens[1].models: must name at least one model",
            "authTokens[2].models: expected a list of model names or globs",
            "authTokens[3].models[1]: must not be empty",
            "authTokens[4].requestsPerMinute: must be at least 1",
            "authTokens[5].burst: needs \"requestsPerMinute\"",
            "authTokens[6].modles: unknown key (did you mean \"models\"?)",
            "authTokens[7].token: is empty",
            "authTokens[8]: expected a string or {\"token\": …}, found a number",
        ];
        assert_eq!(p.len(), want.len(), "{p:#?}");
        for (got, want) in p.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn repeated_token_is_a_problem_without_its_value() {
        let p = problems(r#""authTokens": ["sk-same", {"token": "sk-same", "models": ["chat"]}]"#);
        assert_eq!(p, ["authTokens[1]: is the same token as authTokens[0]"]);
        let env = FakeEnv::new().var("A", "sk-x");
        let p =
            load(r#""authTokens": ["sk-x"], "api_key": "${env:A}""#, &env).expect_err("duplicate");
        assert_eq!(p, ["api_key: is the same token as authTokens[0]"]);
    }

    #[test]
    fn token_object_value_never_leaks_into_problems() {
        let env = FakeEnv::new().var("T", "sk-abc def");
        let p = load(r#""authTokens": [{"token": "$T"}]"#, &env).expect_err("whitespace");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("authTokens[0].token: contains whitespace"));
        assert!(!p[0].contains("sk-abc"));
    }

    #[test]
    fn api_key_is_one_more_token_and_empty_means_none() {
        let c = ok(r#""api_key": "sk-one""#);
        assert_eq!(exposed(&c), ["sk-one"]);
        assert_eq!(
            c.token_rules,
            [TokenRules {
                name: "api_key".into(),
                ..TokenRules::default()
            }]
        );
        assert!(ok(r#""api_key": """#).auth_tokens.is_empty());
        let c = ok(r#""authTokens": ["a"], "api_key": "b""#);
        assert_eq!(exposed(&c), ["a", "b"]);
    }

    #[test]
    fn api_keys_object_values_are_tokens() {
        let c = ok(r#""api_keys": {"app": "sk-app", "cli": "sk-cli"}"#);
        assert_eq!(exposed(&c), ["sk-app", "sk-cli"]);
        assert_eq!(
            problems(r#""api_keys": {"app": ""}"#),
            ["api_keys.app: is empty (an empty bearer token would match nothing)"]
        );
        assert_eq!(
            problems(r#""api_keys": ["sk"]"#),
            ["api_keys: expected an object of client name → token, found a list"]
        );
        assert_eq!(
            problems(r#""api_key": 5"#),
            ["api_key: expected a string, found a number"]
        );
    }
}
