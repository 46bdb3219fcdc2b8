//! Parameter profiles of virtual models: the body rewrite one model entry asks for.
//!
//! Owns: JSON pointers into a request body ([`Pointer`]), the merge of a profile into a parsed
//! body ([`Profile::merge`]) and the parse → merge → re-encode step ([`Profile::rewrite`]).
//! Pure: bytes and values in, bytes out; no I/O, no clock.
//!
//! # Merge rules (README "Virtual models and profiles" says the same)
//! Precedence is `defaults` < caller < `clamp`; `deny` removes. On a body that is a JSON
//! object, in this order:
//! 1. `deny`: each listed place is removed from the caller's body (nothing happens when it is
//!    absent). Removing keeps the order of the other keys.
//! 2. `defaults`: each value is set where the caller did not set one. A key the caller set to
//!    `null` counts as not set. Missing parent objects are created; when a parent the caller
//!    sent is not an object (a string, a number, an array...), the caller's value stands and
//!    the default is skipped (the caller wins over defaults).
//! 3. `clamp`: each value is set whatever the caller sent. A missing, `null` or non-object
//!    parent is replaced by an object (the clamp wins over the caller).
//! 4. The upstream model name, when the entry gives one, replaces the top-level `model`.
//!
//! Entries apply in the order written. Existing keys keep their place; new keys are appended
//! to their object. A plain key (`temperature`) names one top-level key and is set or removed
//! whole; a key starting with `/` is a JSON pointer (RFC 6901, `~0` = `~`, `~1` = `/`) that
//! walks nested objects by key (`/chat_template_kwargs/enable_thinking`). A pointer never
//! indexes arrays: a numeric token is an object key like any other.
//!
//! # Encoding
//! serde_json is built with `preserve_order` (objects keep the caller's key order) and
//! `arbitrary_precision` (numbers keep their text: `1.0`, `0.10`, `-0`, a 30-digit seed). What
//! it cannot keep: insignificant whitespace (the output is compact), the spelling of an
//! exponent (`1E5` becomes `1e+5`), the spelling of string escapes (`\u00e9` becomes `é`,
//! `\/` becomes `/`), and duplicate keys (the last value wins, at the first key's place). Bodies reach the rewrite only after the model scanner accepted
//! them, so numbers that overflow `f64` (which `arbitrary_precision` would let through) never
//! get here from a client; config values are checked at load time.

use std::fmt;

use serde_json::{Map, Value};

/// Most tokens in one pointer: deeper is a typo, and it bounds what the merge can create.
pub const MAX_POINTER_TOKENS: usize = 32;

/// A place in a request body: one top-level key, or a JSON pointer into nested objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// Unescaped object keys from the root; never empty.
    tokens: Vec<String>,
}

impl Pointer {
    /// Reads a config key: `/a/b` is a JSON pointer (RFC 6901), anything else one top-level key.
    pub fn parse(key: &str) -> Result<Pointer, String> {
        let Some(rest) = key.strip_prefix('/') else {
            if key.is_empty() {
                return Err("an empty key names nothing (write \"/\" for the key \"\")".into());
            }
            return Ok(Pointer {
                tokens: vec![key.to_owned()],
            });
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            tokens.push(unescape_token(raw)?);
        }
        if tokens.len() > MAX_POINTER_TOKENS {
            return Err(format!(
                "a pointer may have at most {MAX_POINTER_TOKENS} parts"
            ));
        }
        Ok(Pointer { tokens })
    }

    /// The unescaped keys from the root (at least one).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The top-level key this pointer starts with.
    pub fn first(&self) -> &str {
        self.tokens.first().map(String::as_str).unwrap_or("")
    }
}

impl fmt::Display for Pointer {
    /// Always the pointer form: `temperature` shows as `/temperature`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tokens {
            f.write_str("/")?;
            f.write_str(&t.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

fn unescape_token(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => {
                return Err(
                    "\"~\" in a pointer must be written \"~0\" (and \"/\" as \"~1\")".into(),
                )
            }
        }
    }
    Ok(out)
}

/// What one model entry does to request bodies. Empty (the default) means byte-for-byte.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// The upstream's own name for the model, written into the top-level `model`.
    pub upstream_model: Option<String>,
    pub defaults: Vec<(Pointer, Value)>,
    pub clamp: Vec<(Pointer, Value)>,
    pub deny: Vec<Pointer>,
}

/// The parts of a profile one replica sets for itself (issue 18): each one given replaces
/// the model's (a fallback provider's own model name, its own defaults...); the rest is the
/// model's. Empty: the replica speaks exactly as its model does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub upstream_model: Option<String>,
    pub defaults: Option<Vec<(Pointer, Value)>>,
    pub clamp: Option<Vec<(Pointer, Value)>>,
    pub deny: Option<Vec<Pointer>>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self == &Overrides::default()
    }
}

/// Why a body could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteError {
    /// serde_json refused the body (the scanner accepted it, so this is rare: a limit).
    Parse,
    /// The body holds more than [`MAX_REWRITE_VALUES`] JSON values.
    TooManyValues,
}

/// Most JSON values a body may hold to be rewritten. A parsed value costs tens of bytes of
/// heap whatever its text (`0,` is 2 bytes), so the byte cap alone lets a body of small
/// numbers take ~50 times its size while it is parsed (1.1 GB for 20 MB); a million values
/// keeps one rewrite near 100 MB and is far above real requests (a 128k-token id prompt).
pub const MAX_REWRITE_VALUES: usize = 1 << 20;

/// Whether `body` holds at most `limit` JSON values, counted roughly (each `,` `:` `[` `{`
/// outside strings) in one pass before anything is allocated.
fn values_within(body: &[u8], limit: usize) -> bool {
    let mut count = 0usize;
    let mut rest = body;
    loop {
        let quote = memchr::memchr(b'"', rest);
        let outside = quote.and_then(|i| rest.get(..i)).unwrap_or(rest);
        count += outside
            .iter()
            .filter(|&&b| matches!(b, b',' | b':' | b'[' | b'{'))
            .count();
        if count > limit {
            return false;
        }
        let Some(start) = quote else {
            return true;
        };
        // Skip the string: up to the next quote that no backslash escapes.
        rest = rest.get(start + 1..).unwrap_or_default();
        loop {
            match memchr::memchr2(b'"', b'\\', rest) {
                None => return true,
                Some(i) if rest.get(i) == Some(&b'\\') => {
                    rest = rest.get(i + 2..).unwrap_or_default();
                }
                Some(i) => {
                    rest = rest.get(i + 1..).unwrap_or_default();
                    break;
                }
            }
        }
    }
}

impl Profile {
    /// True when bodies must be re-encoded (some rewrite is configured).
    pub fn rewrites(&self) -> bool {
        self.upstream_model.is_some()
            || !self.defaults.is_empty()
            || !self.clamp.is_empty()
            || !self.deny.is_empty()
    }

    /// This profile with `overrides` replacing the parts they set.
    pub fn overridden(&self, overrides: &Overrides) -> Profile {
        Profile {
            upstream_model: overrides
                .upstream_model
                .clone()
                .or_else(|| self.upstream_model.clone()),
            defaults: overrides
                .defaults
                .clone()
                .unwrap_or_else(|| self.defaults.clone()),
            clamp: overrides
                .clamp
                .clone()
                .unwrap_or_else(|| self.clamp.clone()),
            deny: overrides.deny.clone().unwrap_or_else(|| self.deny.clone()),
        }
    }

    /// Parses `body`, merges, and encodes the result compactly (see the module docs for what
    /// survives the round trip).
    pub fn rewrite(&self, body: &[u8]) -> Result<Vec<u8>, RewriteError> {
        if !values_within(body, MAX_REWRITE_VALUES) {
            return Err(RewriteError::TooManyValues);
        }
        let mut value: Value = serde_json::from_slice(body).map_err(|_| RewriteError::Parse)?;
        self.merge(&mut value);
        serde_json::to_vec(&value).map_err(|_| RewriteError::Parse)
    }

    /// Applies deny, defaults, clamp and the upstream name to `body`, in that order.
    pub fn merge(&self, body: &mut Value) {
        for p in &self.deny {
            remove(body, p.tokens());
        }
        for (p, v) in &self.defaults {
            set_default(body, p.tokens(), v);
        }
        for (p, v) in &self.clamp {
            set_clamped(body, p.tokens(), v);
        }
        if let (Some(name), Value::Object(map)) = (&self.upstream_model, &mut *body) {
            set_key(map, "model", Value::String(name.clone()));
        }
    }
}

/// Sets `key` in place when present (its position kept), else appends it.
fn set_key(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get_mut(key) {
        Some(slot) => *slot = value,
        None => {
            map.insert(key.to_owned(), value);
        }
    }
}

fn remove(body: &mut Value, tokens: &[String]) {
    let Some((last, parents)) = tokens.split_last() else {
        return;
    };
    let mut at = body;
    for t in parents {
        match at {
            Value::Object(map) => match map.get_mut(t.as_str()) {
                Some(next) => at = next,
                None => return,
            },
            _ => return,
        }
    }
    if let Value::Object(map) = at {
        // `shift_remove` keeps the order of the remaining keys.
        map.shift_remove(last.as_str());
    }
}

fn set_default(body: &mut Value, tokens: &[String], value: &Value) {
    let Some((last, parents)) = tokens.split_last() else {
        return;
    };
    let mut at = body;
    for t in parents {
        let Value::Object(map) = at else {
            // The caller put something else here: the caller wins over defaults.
            return;
        };
        let slot = map
            .entry(t.as_str())
            .or_insert_with(|| Value::Object(Map::new()));
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        at = slot;
    }
    let Value::Object(map) = at else {
        return;
    };
    match map.get_mut(last.as_str()) {
        Some(slot) if slot.is_null() => *slot = value.clone(),
        Some(_) => {}
        None => {
            map.insert(last.clone(), value.clone());
        }
    }
}

fn set_clamped(body: &mut Value, tokens: &[String], value: &Value) {
    let Some((last, parents)) = tokens.split_last() else {
        return;
    };
    let mut at = body;
    for t in parents {
        if !at.is_object() {
            // The clamp wins over whatever the caller put here.
            *at = Value::Object(Map::new());
        }
        let Value::Object(map) = at else {
            return;
        };
        at = map
            .entry(t.as_str())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !at.is_object() {
        *at = Value::Object(Map::new());
    }
    if let Value::Object(map) = at {
        set_key(map, last, value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert!(values_within(br#"{"a":[1,2]}"#, 4));
        assert!(!values_within(br#"{"a":[1,2]}"#, 3));
        assert!(values_within(br#"{"a,:[{":"x\",[{,"}"#, 2));
        assert!(!values_within(br#"{"a\\":[1,"#, 2));
        assert!(values_within(b"", 0));
        assert!(values_within(br#""unterminated \"#, 0));
        let many = format!("[{}0]", "0,".repeat(MAX_REWRITE_VALUES));
        let profile = Profile {
            upstream_model: Some("m".into()),
            ..Profile::default()
        };
        assert_eq!(
            profile.rewrite(many.as_bytes()),
            Err(RewriteError::TooManyValues)
        );
    }

    fn p(s: &str) -> Pointer {
        Pointer::parse(s).unwrap()
    }

    fn profile() -> Profile {
        Profile::default()
    }

    fn rewrite(profile: &Profile, body: &str) -> String {
        String::from_utf8(profile.rewrite(body.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn plain_key_and_pointer_forms() {
        assert_eq!(p("temperature").tokens(), ["temperature"]);
        assert_eq!(
            p("/chat_template_kwargs/enable_thinking").tokens(),
            ["chat_template_kwargs", "enable_thinking"]
        );
        assert_eq!(p("/a~1b/c~0d").tokens(), ["a/b", "c~d"]);
        assert_eq!(p("/").tokens(), [""]);
        assert_eq!(p("/a~1b/c~0d").to_string(), "/a~1b/c~0d");
        assert_eq!(p("x").to_string(), "/x");
        assert!(Pointer::parse("").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
        assert!(Pointer::parse(&"/a".repeat(MAX_POINTER_TOKENS + 1)).is_err());
    }

    #[test]
    fn defaults_fill_absent_and_null_keys_only() {
        let mut pr = profile();
        pr.defaults = vec![
            (p("temperature"), json!(0.2)),
            (p("top_p"), json!(0.9)),
            (p("max_tokens"), json!(64)),
        ];
        assert_eq!(
            rewrite(
                &pr,
                r#"{"model":"m","temperature":1.5,"top_p":null,"messages":[]}"#
            ),
            r#"{"model":"m","temperature":1.5,"top_p":0.9,"messages":[],"max_tokens":64}"#
        );
    }

    #[test]
    fn clamp_overrides_the_caller_in_place() {
        let mut pr = profile();
        pr.clamp = vec![(p("temperature"), json!(0.1)), (p("seed"), json!(7))];
        assert_eq!(
            rewrite(&pr, r#"{"temperature":1.9,"model":"m"}"#),
            r#"{"temperature":0.1,"model":"m","seed":7}"#
        );
    }

    #[test]
    fn clamp_wins_over_defaults_and_caller() {
        let mut pr = profile();
        pr.defaults = vec![(p("temperature"), json!(0.5))];
        pr.clamp = vec![(p("temperature"), json!(0.1))];
        assert_eq!(
            rewrite(&pr, r#"{"model":"m"}"#),
            r#"{"model":"m","temperature":0.1}"#
        );
    }

    #[test]
    fn deny_removes_and_keeps_order() {
        let mut pr = profile();
        pr.deny = vec![p("logit_bias"), p("/a/b"), p("/missing/x")];
        assert_eq!(
            rewrite(
                &pr,
                r#"{"x":1,"logit_bias":{"1":2},"y":2,"a":{"b":1,"c":2},"z":3}"#
            ),
            r#"{"x":1,"y":2,"a":{"c":2},"z":3}"#
        );
    }

    #[test]
    fn pointers_create_missing_parents() {
        let mut pr = profile();
        pr.defaults = vec![(p("/chat_template_kwargs/enable_thinking"), json!(true))];
        assert_eq!(
            rewrite(&pr, r#"{"model":"m"}"#),
            r#"{"model":"m","chat_template_kwargs":{"enable_thinking":true}}"#
        );
        // The caller's nested value wins over the default; siblings are kept.
        assert_eq!(
            rewrite(
                &pr,
                r#"{"chat_template_kwargs":{"x":1,"enable_thinking":false}}"#
            ),
            r#"{"chat_template_kwargs":{"x":1,"enable_thinking":false}}"#
        );
        let mut clamp = profile();
        clamp.clamp = vec![(p("/a/b/c"), json!(1))];
        assert_eq!(
            rewrite(&clamp, r#"{"a":{"k":0}}"#),
            r#"{"a":{"k":0,"b":{"c":1}}}"#
        );
    }

    #[test]
    fn pointer_through_a_non_object() {
        let mut d = profile();
        d.defaults = vec![(p("/kw/think"), json!(true))];
        // Defaults: the caller's non-object stands.
        assert_eq!(rewrite(&d, r#"{"kw":"x"}"#), r#"{"kw":"x"}"#);
        assert_eq!(rewrite(&d, r#"{"kw":[1]}"#), r#"{"kw":[1]}"#);
        // ... but a null parent counts as not set.
        assert_eq!(rewrite(&d, r#"{"kw":null}"#), r#"{"kw":{"think":true}}"#);
        // Clamp: replaced by an object.
        let mut c = profile();
        c.clamp = vec![(p("/kw/think"), json!(false))];
        assert_eq!(
            rewrite(&c, r#"{"kw":[1],"z":0}"#),
            r#"{"kw":{"think":false},"z":0}"#
        );
        // Deny: nothing to remove.
        let mut n = profile();
        n.deny = vec![p("/kw/think")];
        assert_eq!(rewrite(&n, r#"{"kw":7}"#), r#"{"kw":7}"#);
    }

    #[test]
    fn upstream_name_replaces_model_in_place() {
        let pr = Profile {
            upstream_model: Some("Qwen/Qwen3-32B".into()),
            ..Profile::default()
        };
        assert!(pr.rewrites());
        assert_eq!(
            rewrite(&pr, r#"{"messages":[],"model":"coder","stream":true}"#),
            r#"{"messages":[],"model":"Qwen/Qwen3-32B","stream":true}"#
        );
    }

    #[test]
    fn numbers_and_key_order_survive() {
        let mut pr = profile();
        pr.defaults = vec![(p("n"), json!(1))];
        let body = r#"{"z":1.0,"a":1.5e5,"m":12345678901234567890123456789,"b":-0,"c":0.10}"#;
        assert_eq!(
            rewrite(&pr, body),
            r#"{"z":1.0,"a":1.5e+5,"m":12345678901234567890123456789,"b":-0,"c":0.10,"n":1}"#
        );
        // The one change serde_json makes to number text: exponents get a sign and a small e.
        assert_eq!(
            rewrite(&pr, r#"{"a":2E3,"b":1e-7}"#),
            r#"{"a":2e+3,"b":1e-7,"n":1}"#
        );
    }

    #[test]
    fn whitespace_goes_and_escapes_are_normalized() {
        let mut pr = profile();
        pr.deny = vec![p("x")];
        assert_eq!(
            rewrite(&pr, "{ \"s\" : \"\\u00e9\\/\\n\" ,\n \"x\": 1 }"),
            "{\"s\":\"é/\\n\"}"
        );
    }

    #[test]
    fn overrides_replace_only_the_parts_they_set() {
        let model = Profile {
            upstream_model: Some("qwen".into()),
            defaults: vec![(p("temperature"), serde_json::json!(0.7))],
            ..Profile::default()
        };
        let named = model.overridden(&Overrides {
            upstream_model: Some("gpt-4o-mini".into()),
            ..Overrides::default()
        });
        assert_eq!(named.upstream_model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(named.defaults, model.defaults);
        let plain = model.overridden(&Overrides {
            defaults: Some(Vec::new()),
            ..Overrides::default()
        });
        assert_eq!(plain.upstream_model.as_deref(), Some("qwen"));
        assert!(plain.defaults.is_empty());
        assert_eq!(model.overridden(&Overrides::default()), model);
        assert!(Overrides::default().is_empty());
    }

    #[test]
    fn empty_profile_does_not_rewrite() {
        assert!(!profile().rewrites());
    }

    #[test]
    fn invalid_body_is_an_error_not_a_panic() {
        let mut pr = profile();
        pr.deny = vec![p("x")];
        assert_eq!(pr.rewrite(b"{"), Err(RewriteError::Parse));
        assert_eq!(pr.rewrite(b""), Err(RewriteError::Parse));
    }

    #[test]
    fn non_object_bodies_stay_valid() {
        let mut pr = profile();
        pr.defaults = vec![(p("a"), json!(1))];
        pr.deny = vec![p("b")];
        assert_eq!(rewrite(&pr, "[1,2]"), "[1,2]");
        pr.clamp = vec![(p("/c/d"), json!(2))];
        assert_eq!(rewrite(&pr, "3"), r#"{"c":{"d":2}}"#);
    }
}
