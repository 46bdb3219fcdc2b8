//! Defends the profile rewrite of virtual models (`modelgate::profile`): whatever the body and
//! whatever the profile, the merge never panics and always yields valid JSON, and the rules
//! hold. Input: a profile spec, a NUL byte, then the body. The spec is JSON
//! `{"model": .., "defaults": {..}, "clamp": {..}, "deny": [..]}` (keys are plain keys or
//! JSON pointers, as in the config); when it is not, a fixed profile with nested pointers is
//! used, so every body is merged. Properties on every input:
//! 1. `rewrite` never panics; on a body serde_json accepts it succeeds and its output parses;
//! 2. the output is the merged value, re-encoded (parse → merge == parse(rewrite));
//! 3. a clamp place not overlapped by another clamp holds its value; a deny place that no
//!    default or clamp touches is absent; the upstream name, when given, is the top-level
//!    `model` of an object body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::profile::{Pointer, Profile};
use serde_json::{json, Value};

fn pointers(v: Option<&Value>) -> Vec<(Pointer, Value)> {
    let Some(Value::Object(map)) = v else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(k, v)| Pointer::parse(k).ok().map(|p| (p, v.clone())))
        .filter(|(p, _)| p.first() != "model")
        .collect()
}

fn profile_from(spec: &[u8]) -> Profile {
    let Ok(Value::Object(spec)) = serde_json::from_slice::<Value>(spec) else {
        return Profile {
            upstream_model: Some("real".into()),
            defaults: vec![
                (Pointer::parse("/a/b").unwrap(), json!(1)),
                (Pointer::parse("temperature").unwrap(), json!(0.5)),
            ],
            clamp: vec![(Pointer::parse("/kw/think").unwrap(), json!(true))],
            deny: vec![Pointer::parse("/messages").unwrap()],
        };
    };
    let deny = match spec.get("deny") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|k| Pointer::parse(k).ok())
            .filter(|p| p.first() != "model")
            .collect(),
        _ => Vec::new(),
    };
    Profile {
        upstream_model: spec.get("model").and_then(Value::as_str).map(str::to_owned),
        defaults: pointers(spec.get("defaults")),
        clamp: pointers(spec.get("clamp")),
        deny,
    }
}

/// One is a prefix of the other (they touch the same subtree).
fn related(a: &Pointer, b: &Pointer) -> bool {
    let n = a.tokens().len().min(b.tokens().len());
    a.tokens()[..n] == b.tokens()[..n]
}

fn lookup<'a>(v: &'a Value, p: &Pointer) -> Option<&'a Value> {
    p.tokens().iter().try_fold(v, |at, t| at.as_object()?.get(t))
}

fuzz_target!(|data: &[u8]| {
    let (spec, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let profile = profile_from(spec);
    let out = profile.rewrite(body);
    let Ok(mut merged) = serde_json::from_slice::<Value>(body) else {
        assert!(out.is_err(), "rewrote a body serde_json refuses");
        return;
    };
    // 1. Valid JSON out.
    let out = out.expect("a body serde_json accepts is rewritten");
    let reparsed: Value = serde_json::from_slice(&out).expect("the rewrite is valid JSON");
    // 2. It is the merge, re-encoded.
    profile.merge(&mut merged);
    assert_eq!(reparsed, merged);
    // 3. The rules.
    if !merged.is_object() {
        return;
    }
    for (i, (p, v)) in profile.clamp.iter().enumerate() {
        let overlapped = profile
            .clamp
            .iter()
            .enumerate()
            .any(|(j, (q, _))| j != i && related(p, q));
        if !overlapped {
            assert_eq!(lookup(&merged, p), Some(v), "clamp {p}");
        }
    }
    for p in &profile.deny {
        let touched = profile
            .defaults
            .iter()
            .chain(profile.clamp.iter())
            .any(|(q, _)| related(p, q));
        if !touched {
            assert!(lookup(&merged, p).is_none(), "deny {p}");
        }
    }
    if let Some(name) = &profile.upstream_model {
        assert_eq!(merged.get("model"), Some(&Value::String(name.clone())));
    }
});
