//! Config behaviours, one per test. Secrets come from a fake environment, never the process.

use super::*;
use crate::secrets::tests::FakeEnv;

const MIN: &str = r#"{"models": {"chat": {"url": "http://127.0.0.1:9001"}}}"#;

fn load_with(text: &str, env: &FakeEnv) -> Result<Config, Vec<Problem>> {
    from_str(text, Some(env))
}

fn ok(text: &str) -> Config {
    match load_with(text, &FakeEnv::new()) {
        Ok(c) => c,
        Err(p) => panic!("unexpected problems: {p:?}"),
    }
}

fn problems(text: &str) -> Vec<String> {
    problems_with(text, &FakeEnv::new())
}

fn problems_with(text: &str, env: &FakeEnv) -> Vec<String> {
    match load_with(text, env) {
        Ok(_) => panic!("expected problems"),
        Err(p) => p.iter().map(|p| p.to_string()).collect(),
    }
}

/// The config with `extra` top-level members added to a valid minimal one.
fn with_top(extra: &str) -> String {
    format!(r#"{{{extra}, "models": {{"chat": {{"url": "http://127.0.0.1:9001"}}}}}}"#)
}

/// A config whose model `m` has the given members.
fn with_model(members: &str) -> String {
    format!(r#"{{"models": {{"m": {{{members}}}}}}}"#)
}

fn one(text: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    p[0].clone()
}

// ---- defaults and happy paths ----

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = ok(MIN);
    assert_eq!(c.listen, vec![Listen::Tcp("0.0.0.0:8080".parse().unwrap())]);
    assert!(c.auth_tokens.is_empty());
    assert_eq!(c.max_body_bytes, 104_857_600);
    assert_eq!(c.max_concurrent_requests, 0);
    assert_eq!(c.max_buffer_bytes, 1_073_741_824);
    assert_eq!(c.max_connections, 65_536);
    assert_eq!(c.timeouts, Timeouts::default());
    assert!(c.access_log);
    assert_eq!(c.workers, 0);
    assert!(!c.watch_config);
    let m = &c.models["chat"];
    assert_eq!(m.upstream.authority, "127.0.0.1:9001");
    assert!(m.headers.is_empty() && !m.unlisted && m.ca_file.is_none());
}

#[test]
fn every_top_level_key_is_read() {
    let c = ok(r#"{
        "listen": "127.0.0.1:8081",
        "authTokens": ["t1"],
        "maxBodyBytes": 0,
        "maxConcurrentRequests": 7,
        "maxBufferBytes": 1048576,
        "maxConnections": 100,
        "timeouts": {"header": 1, "connect": 2, "firstByte": 3, "idle": 4, "keepAlive": 5, "upstreamKeepAlive": 7, "shutdown": 6},
        "accessLog": false,
        "workers": 3,
        "watchConfig": true,
        "models": {"chat": {"url": "http://127.0.0.1:9001", "unlisted": true}}
    }"#);
    assert_eq!(
        c.listen,
        vec![Listen::Tcp("127.0.0.1:8081".parse().unwrap())]
    );
    assert_eq!(c.auth_tokens, vec![Secret::new("t1".into())]);
    assert_eq!(c.max_body_bytes, 0);
    assert_eq!(c.max_concurrent_requests, 7);
    assert_eq!(c.max_buffer_bytes, 1_048_576);
    assert_eq!(c.max_connections, 100);
    let s = Duration::from_secs;
    assert_eq!(
        c.timeouts,
        Timeouts {
            header: s(1),
            connect: s(2),
            first_byte: Some(s(3)),
            idle: s(4),
            keep_alive: s(5),
            upstream_keep_alive: s(7),
            shutdown: s(6),
        }
    );
    assert!(!c.access_log);
    assert_eq!(c.workers, 3);
    assert!(c.watch_config);
    assert!(c.models["chat"].unlisted);
}

#[test]
fn null_is_the_same_as_absent() {
    let c = ok(&with_top(
        r#""listen": null, "authTokens": null, "accessLog": null, "timeouts": null"#,
    ));
    assert_eq!(c.listen, vec![Listen::Tcp("0.0.0.0:8080".parse().unwrap())]);
    assert!(c.access_log);
}

#[test]
fn listed_model_count_skips_unlisted() {
    let c =
        ok(r#"{"models": {"a": {"url": "http://h"}, "b": {"url": "http://h", "unlisted": true}}}"#);
    assert_eq!(c.listed_model_count(), 1);
}

#[test]
fn byte_order_mark_is_accepted() {
    ok(&format!("\u{feff}{MIN}"));
}

// ---- JSON syntax ----

#[test]
fn json_syntax_error_is_one_problem_with_line_and_column() {
    let p = problems("{\n  \"models\": {,}\n}");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("invalid JSON at line 2, column 14"),
        "{}",
        p[0]
    );
}

#[test]
fn top_level_must_be_an_object() {
    assert_eq!(one("[]"), "expected an object, found a list");
}

#[test]
fn duplicate_top_level_key_is_error() {
    let p = problems(
        r#"{"accessLog": true, "accessLog": false, "models": {"m": {"url": "http://h"}}}"#,
    );
    assert_eq!(p, vec!["accessLog: is given twice"]);
}

// ---- unknown keys ----

#[test]
fn unknown_top_level_key_suggests_nearest() {
    assert_eq!(
        one(&with_top(r#""maxBodyByte": 1"#)),
        "maxBodyByte: unknown key (did you mean \"maxBodyBytes\"?)"
    );
}

#[test]
fn unknown_key_with_wrong_case_suggests_right_case() {
    assert_eq!(
        one(&with_top(r#""authtokens": []"#)),
        "authtokens: unknown key (did you mean \"authTokens\"?)"
    );
}

#[test]
fn unknown_key_in_timeouts_names_full_path() {
    assert_eq!(
        one(&with_top(r#""timeouts": {"firstbyte": 1}"#)),
        "timeouts.firstbyte: unknown key (did you mean \"firstByte\"?)"
    );
}

#[test]
fn unknown_key_in_model_names_full_path() {
    assert_eq!(
        one(r#"{"models": {"gpt": {"url": "http://h", "heders": {}}}}"#),
        "models.gpt.heders: unknown key (did you mean \"headers\"?)"
    );
}

#[test]
fn unknown_key_far_from_everything_has_no_suggestion() {
    assert_eq!(one(&with_top(r#""zzzzzz": 1"#)), "zzzzzz: unknown key");
}

#[test]
fn api_key_in_model_points_to_headers() {
    let p = one(&with_model(r#""url": "http://h", "api_key": "x""#));
    assert!(p.starts_with("models.m.api_key: unknown key (send upstream credentials as a header"));
}

#[test]
fn unknown_key_in_listen_object_and_tls() {
    let p = problems(&with_top(
        r#""listen": [{"adress": ":1"}, {"address": ":2", "tls": {"cert": "/c", "kye": "/k"}}]"#,
    ));
    assert!(p.contains(&"listen[0].adress: unknown key (did you mean \"address\"?)".to_string()));
    assert!(p.contains(&"listen[1].tls.kye: unknown key (did you mean \"key\"?)".to_string()));
}

#[test]
fn suggest_handles_prefixes_and_typos() {
    assert_eq!(suggest("maxBody", TOP_KEYS), Some("maxBodyBytes"));
    assert_eq!(suggest("timeout", TOP_KEYS), Some("timeouts"));
    assert_eq!(suggest("modles", TOP_KEYS), Some("models"));
    assert_eq!(suggest("q", TOP_KEYS), None);
}

// ---- wrong types and numbers ----

#[test]
fn wrong_type_names_path_and_types() {
    assert_eq!(
        one(&with_top(r#""maxBodyBytes": "10MB""#)),
        "maxBodyBytes: expected a whole number, found a string"
    );
    assert_eq!(
        one(&with_top(r#""accessLog": "yes""#)),
        "accessLog: expected true or false, found a string"
    );
    assert_eq!(
        one(&with_top(r#""timeouts": 5"#)),
        "timeouts: expected an object, found a number"
    );
}

#[test]
fn negative_integer_is_error() {
    assert_eq!(
        one(&with_top(r#""workers": -1"#)),
        "workers: must not be negative"
    );
}

#[test]
fn fractional_integer_is_error() {
    assert_eq!(
        one(&with_top(r#""maxBodyBytes": 1.5"#)),
        "maxBodyBytes: must be a whole number"
    );
}

#[test]
fn exponent_integer_is_accepted() {
    assert_eq!(
        ok(&with_top(r#""maxBodyBytes": 1e6"#)).max_body_bytes,
        1_000_000
    );
}

#[test]
fn integer_too_large_is_error() {
    assert_eq!(
        one(&with_top(r#""maxBodyBytes": 1e30"#)),
        "maxBodyBytes: is too large"
    );
}

#[test]
fn too_many_workers_is_error() {
    assert_eq!(
        one(&with_top(r#""workers": 5000"#)),
        "workers: must be at most 1024"
    );
}

#[test]
fn busy_poll_is_microseconds_with_a_default_and_a_bound() {
    assert_eq!(
        ok(&with_top(r#""maxConnections": 10"#)).busy_poll,
        Duration::from_micros(DEFAULT_BUSY_POLL_US)
    );
    assert_eq!(ok(&with_top(r#""busyPoll": 0"#)).busy_poll, Duration::ZERO);
    assert_eq!(
        ok(&with_top(r#""busyPoll": 50"#)).busy_poll,
        Duration::from_micros(50)
    );
    assert_eq!(
        one(&with_top(r#""busyPoll": 20000"#)),
        "busyPoll: must be at most 10000"
    );
}

#[test]
fn zero_max_connections_is_error() {
    assert_eq!(
        one(&with_top(r#""maxConnections": 0"#)),
        "maxConnections: must be at least 1"
    );
}

#[test]
fn zero_max_buffer_bytes_is_error() {
    assert_eq!(
        one(&with_top(r#""maxBufferBytes": 0"#)),
        "maxBufferBytes: must be at least 1"
    );
}

// ---- timeouts ----

#[test]
fn fractional_timeout_seconds_are_allowed() {
    let c = ok(&with_top(r#""timeouts": {"connect": 0.5}"#));
    assert_eq!(c.timeouts.connect, Duration::from_millis(500));
}

#[test]
fn zero_timeout_is_error() {
    assert_eq!(
        one(&with_top(r#""timeouts": {"idle": 0}"#)),
        "timeouts.idle: must be a positive number of seconds"
    );
}

#[test]
fn negative_timeout_is_error() {
    assert_eq!(
        one(&with_top(r#""timeouts": {"header": -1}"#)),
        "timeouts.header: must be a positive number of seconds"
    );
}

#[test]
fn first_byte_zero_means_none() {
    let c = ok(&with_top(r#""timeouts": {"firstByte": 0}"#));
    assert_eq!(c.timeouts.first_byte, None);
}

#[test]
fn first_byte_null_means_none() {
    let c = ok(&with_top(r#""timeouts": {"firstByte": null}"#));
    assert_eq!(c.timeouts.first_byte, None);
}

#[test]
fn first_byte_negative_is_error() {
    assert_eq!(
        one(&with_top(r#""timeouts": {"firstByte": -2}"#)),
        "timeouts.firstByte: must be a positive number of seconds, or 0 for none"
    );
}

#[test]
fn timeout_over_a_year_is_error() {
    assert!(one(&with_top(r#""timeouts": {"shutdown": 1e12}"#))
        .starts_with("timeouts.shutdown: must be at most"));
}

#[test]
fn timeout_as_string_is_error() {
    assert_eq!(
        one(&with_top(r#""timeouts": {"connect": "10s"}"#)),
        "timeouts.connect: expected a number of seconds, found a string"
    );
}

// ---- listen ----

#[test]
fn listen_list_of_strings() {
    let c = ok(&with_top(r#""listen": [":8080", "unix:/run/x.sock"]"#));
    assert_eq!(
        c.listen,
        vec![
            Listen::Tcp("0.0.0.0:8080".parse().unwrap()),
            Listen::Unix(PathBuf::from("/run/x.sock"))
        ]
    );
}

#[test]
fn listen_empty_list_is_error() {
    assert_eq!(
        one(&with_top(r#""listen": []"#)),
        "listen: must list at least one address"
    );
}

#[test]
fn listen_duplicate_address_is_error() {
    assert_eq!(
        one(&with_top(r#""listen": [":8080", "0.0.0.0:8080"]"#)),
        "listen[1]: is listed twice"
    );
}

#[test]
fn listen_bad_address_names_index() {
    assert!(one(&with_top(r#""listen": [":1", "example.com:80"]"#)).starts_with("listen[1]: host"));
}

#[test]
fn listen_wrong_type_is_error() {
    assert!(one(&with_top(r#""listen": 8080"#)).starts_with("listen: expected an address string"));
}

#[test]
fn listen_object_without_tls_is_plain_tcp() {
    let c = ok(&with_top(r#""listen": {"address": "127.0.0.1:1"}"#));
    assert_eq!(c.listen, vec![Listen::Tcp("127.0.0.1:1".parse().unwrap())]);
}

#[test]
fn listen_tls_object_resolves_and_checks_files() {
    let env = FakeEnv::new()
        .file("/etc/c.pem", b"C")
        .file("/etc/k.pem", b"K");
    let text = with_top(
        r#""listen": [{"address": ":8443", "tls": {"cert": "/etc/c.pem", "key": "/etc/k.pem"}}]"#,
    );
    let c = load_with(&text, &env).unwrap();
    assert_eq!(
        c.listen,
        vec![Listen::TcpTls {
            addr: "0.0.0.0:8443".parse().unwrap(),
            cert: PathBuf::from("/etc/c.pem"),
            key: PathBuf::from("/etc/k.pem"),
        }]
    );
}

#[test]
fn listen_tls_cred_reference_is_a_path_in_credentials_directory() {
    let env = FakeEnv::new()
        .var("CREDENTIALS_DIRECTORY", "/run/creds")
        .file("/run/creds/tls.crt", b"C")
        .file("/run/creds/tls.key", b"K");
    let text = with_top(
        r#""listen": {"address": ":8443", "tls": {"cert": "${cred:tls.crt}", "key": "tls.key"}}"#,
    );
    let c = load_with(&text, &env).unwrap();
    let Listen::TcpTls { cert, key, .. } = &c.listen[0] else {
        panic!("not TLS: {:?}", c.listen);
    };
    assert_eq!(cert, &PathBuf::from("/run/creds/tls.crt"));
    assert_eq!(key, &PathBuf::from("/run/creds/tls.key"));
}

#[test]
fn listen_tls_unreadable_file_is_error() {
    let text = with_top(
        r#""listen": {"address": ":8443", "tls": {"cert": "/nope.pem", "key": "/nope.key"}}"#,
    );
    assert_eq!(
        problems(&text),
        vec![
            "listen.tls.cert: cannot read TLS certificate /nope.pem: no such file",
            "listen.tls.key: cannot read TLS key /nope.key: no such file",
        ]
    );
}

#[test]
fn listen_tls_missing_key_is_error() {
    let env = FakeEnv::new().file("/c", b"C");
    let text = with_top(r#""listen": {"address": ":8443", "tls": {"cert": "/c"}}"#);
    assert_eq!(
        problems_with(&text, &env),
        vec!["listen.tls.key: is required"]
    );
}

#[test]
fn listen_tls_on_unix_socket_is_error() {
    let env = FakeEnv::new().file("/c", b"C").file("/k", b"K");
    let text =
        with_top(r#""listen": {"address": "unix:/x.sock", "tls": {"cert": "/c", "key": "/k"}}"#);
    assert_eq!(
        problems_with(&text, &env),
        vec!["listen.tls: TLS is only supported on TCP addresses"]
    );
}

#[test]
fn listen_tls_path_with_other_reference_is_error() {
    let env = FakeEnv::new().file("/k", b"K");
    let text =
        with_top(r#""listen": {"address": ":1", "tls": {"cert": "${env:CERT}", "key": "/k"}}"#);
    assert!(problems_with(&text, &env)[0].starts_with("listen.tls.cert: only a whole"));
}

#[test]
fn listen_object_without_address_is_error() {
    assert_eq!(
        one(&with_top(r#""listen": {"tls": null}"#)),
        "listen.address: is required"
    );
}

#[test]
fn check_mode_keeps_tls_paths_as_written_and_reads_nothing() {
    let text = with_top(
        r#""listen": {"address": ":8443", "tls": {"cert": "${cred:tls.crt}", "key": "k.pem"}}"#,
    );
    let c = from_str(&text, None).unwrap();
    assert_eq!(
        c.listen,
        vec![Listen::TcpTls {
            addr: "0.0.0.0:8443".parse().unwrap(),
            cert: PathBuf::from("${cred:tls.crt}"),
            key: PathBuf::from("k.pem"),
        }]
    );
}

// ---- host/port (LLMhop's newer form) ----

#[test]
fn host_and_port_form_loads() {
    let c = ok(&with_top(r#""host": "127.0.0.1", "port": 9000"#));
    assert_eq!(
        c.listen,
        vec![Listen::Tcp("127.0.0.1:9000".parse().unwrap())]
    );
}

#[test]
fn port_alone_listens_on_all_interfaces() {
    let c = ok(&with_top(r#""port": 9000"#));
    assert_eq!(c.listen, vec![Listen::Tcp("0.0.0.0:9000".parse().unwrap())]);
}

#[test]
fn host_alone_uses_port_8080() {
    let c = ok(&with_top(r#""host": "localhost""#));
    assert_eq!(
        c.listen,
        vec![Listen::Tcp("127.0.0.1:8080".parse().unwrap())]
    );
}

#[test]
fn host_ipv6_without_brackets_is_accepted() {
    let c = ok(&with_top(r#""host": "::1", "port": 1"#));
    assert_eq!(c.listen, vec![Listen::Tcp("[::1]:1".parse().unwrap())]);
}

#[test]
fn host_with_listen_is_error() {
    assert!(one(&with_top(r#""listen": ":1", "host": "0.0.0.0""#))
        .starts_with("host: cannot be used together with \"listen\""));
}

#[test]
fn port_with_listen_is_error() {
    assert!(one(&with_top(r#""listen": ":1", "port": 2"#))
        .starts_with("port: cannot be used together with \"listen\""));
}

#[test]
fn port_out_of_range_is_error() {
    assert_eq!(one(&with_top(r#""port": 0"#)), "port: must be at least 1");
    assert_eq!(
        one(&with_top(r#""port": 70000"#)),
        "port: must be at most 65535"
    );
}

#[test]
fn port_as_string_is_error() {
    assert_eq!(
        one(&with_top(r#""port": "8080""#)),
        "port: expected a whole number, found a string"
    );
}

#[test]
fn host_name_is_error() {
    assert!(one(&with_top(r#""host": "example.com""#))
        .starts_with("host: host \"example.com\" must be an IP address"));
}

// ---- models ----

#[test]
fn missing_models_is_error() {
    assert!(one("{}").starts_with("models: is required"));
}

#[test]
fn empty_models_is_error() {
    assert_eq!(
        one(r#"{"models": {}}"#),
        "models: must name at least one model"
    );
}

#[test]
fn models_as_list_is_error() {
    assert!(one(r#"{"models": []}"#).starts_with("models: expected an object"));
}

#[test]
fn empty_model_name_is_error() {
    assert_eq!(
        one(r#"{"models": {"": {"url": "http://h"}}}"#),
        "models.\"\": a model name must not be empty"
    );
}

#[test]
fn duplicate_model_name_is_error() {
    assert_eq!(
        one(r#"{"models": {"a": {"url": "http://h"}, "a": {"url": "http://g"}}}"#),
        "models.a: is given twice"
    );
}

#[test]
fn model_names_are_case_sensitive_and_distinct() {
    let c = ok(r#"{"models": {"A": {"url": "http://h"}, "a": {"url": "http://g"}}}"#);
    assert_eq!(c.models.len(), 2);
}

#[test]
fn model_as_string_is_error() {
    assert_eq!(
        one(r#"{"models": {"m": "http://h"}}"#),
        "models.m: expected an object, found a string"
    );
}

#[test]
fn model_without_url_is_error() {
    assert_eq!(
        one(&with_model(r#""unlisted": true"#)),
        "models.m.url: is required"
    );
}

#[test]
fn model_url_wrong_type_is_error() {
    assert_eq!(
        one(&with_model(r#""url": 9001"#)),
        "models.m.url: expected a string, found a number"
    );
}

#[test]
fn bad_model_urls_are_errors_naming_the_path() {
    let cases = [
        ("ftp://h", "unsupported scheme"),
        ("http://u:p@h", "user info"),
        ("http://h/#x", "fragment"),
        ("http://h:0", "invalid port"),
        ("http://::1:80", "brackets"),
        ("unix://rel.sock", "absolute"),
        ("127.0.0.1:9001", "did you mean"),
    ];
    for (url, want) in cases {
        let p = one(&with_model(&format!(r#""url": "{url}""#)));
        assert!(
            p.starts_with("models.m.url: ") && p.contains(want),
            "{url}: {p}"
        );
    }
}

#[test]
fn userinfo_secret_never_appears_in_error() {
    let p = one(&with_model(
        r#""url": "https://me:sk-TOPSECRET@api.example.com""#,
    ));
    assert!(!p.contains("sk-TOPSECRET"), "{p}");
}

#[test]
fn unlisted_wrong_type_is_error() {
    assert_eq!(
        one(&with_model(r#""url": "http://h", "unlisted": "yes""#)),
        "models.m.unlisted: expected true or false, found a string"
    );
}

// ---- caFile ----

#[test]
fn ca_file_on_https_is_checked_and_kept() {
    let env = FakeEnv::new().file("/etc/ca.pem", b"PEM");
    let c = load_with(
        &with_model(r#""url": "https://h", "caFile": "/etc/ca.pem""#),
        &env,
    )
    .unwrap();
    assert_eq!(c.models["m"].ca_file, Some(PathBuf::from("/etc/ca.pem")));
}

#[test]
fn ca_file_on_http_is_error() {
    let env = FakeEnv::new().file("/ca", b"PEM");
    assert_eq!(
        problems_with(&with_model(r#""url": "http://h", "caFile": "/ca""#), &env),
        vec!["models.m.caFile: is only allowed with an https:// url"]
    );
}

#[test]
fn unreadable_ca_file_is_error() {
    assert_eq!(
        one(&with_model(
            r#""url": "https://h", "caFile": "/missing.pem""#
        )),
        "models.m.caFile: cannot read CA file /missing.pem: no such file"
    );
}

#[test]
fn check_mode_does_not_read_ca_file() {
    let c = from_str(
        &with_model(r#""url": "https://h", "caFile": "/missing.pem""#),
        None,
    )
    .unwrap();
    assert_eq!(c.models["m"].ca_file, Some(PathBuf::from("/missing.pem")));
}

// ---- headers ----

#[test]
fn headers_expand_secrets_in_written_order() {
    let env = FakeEnv::new().var("KEY", "sk-1");
    let c = load_with(
        &with_model(r#""url": "http://h", "headers": {"X-B": "b", "Authorization": "Bearer ${env:KEY}", "Host": "api"}"#),
        &env,
    )
    .unwrap();
    let h: Vec<(&str, &str)> = c.models["m"]
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.expose()))
        .collect();
    assert_eq!(
        h,
        vec![
            ("X-B", "b"),
            ("Authorization", "Bearer sk-1"),
            ("Host", "api")
        ]
    );
}

#[test]
fn header_secret_error_names_path_and_variable() {
    assert_eq!(
        one(
            r#"{"models": {"openai-gpt-4o": {"url": "https://api.openai.com", "headers": {"Authorization": "Bearer ${env:OPENAI_KEY}"}}}}"#
        ),
        "models.openai-gpt-4o.headers.Authorization: env var OPENAI_KEY is not set"
    );
}

#[test]
fn header_secret_syntax_error_is_reported() {
    assert_eq!(
        one(&with_model(
            r#""url": "http://h", "headers": {"X": "${vault:k}"}"#
        )),
        "models.m.headers.X: unknown reference scheme \"vault\" (known: env, file, cred)"
    );
}

#[test]
fn check_mode_keeps_header_templates_and_reads_nothing() {
    let c = from_str(
        &with_model(
            r#""url": "http://h", "headers": {"Authorization": "Bearer ${env:UNSET_IN_TEST}"}"#,
        ),
        None,
    )
    .unwrap();
    assert_eq!(
        c.models["m"].headers[0].1.expose(),
        "Bearer ${env:UNSET_IN_TEST}"
    );
}

#[test]
fn check_mode_still_reports_reference_syntax() {
    let p = from_str(
        &with_model(r#""url": "http://h", "headers": {"X": "${env:"}"#),
        None,
    )
    .unwrap_err();
    assert_eq!(p.len(), 1);
    assert!(p[0].to_string().starts_with("models.m.headers.X: unclosed"));
}

#[test]
fn invalid_header_name_is_error() {
    assert_eq!(
        one(&with_model(
            r#""url": "http://h", "headers": {"X Bad": "v"}"#
        )),
        "models.m.headers.X Bad: is not a valid header name"
    );
    assert_eq!(
        one(&with_model(r#""url": "http://h", "headers": {"X:Y": "v"}"#)),
        "models.m.headers.X:Y: is not a valid header name"
    );
}

#[test]
fn empty_header_name_is_error() {
    assert_eq!(
        one(&with_model(r#""url": "http://h", "headers": {"": "v"}"#)),
        "models.m.headers.: is not a valid header name"
    );
}

#[test]
fn header_value_with_crlf_is_error() {
    assert_eq!(
        one(&with_model(
            r#""url": "http://h", "headers": {"X": "a\r\nEvil: 1"}"#
        )),
        "models.m.headers.X: value must not contain CR, LF or NUL"
    );
}

#[test]
fn header_value_with_nul_is_error() {
    assert_eq!(
        one(&with_model(
            r#""url": "http://h", "headers": {"X": "a\u0000b"}"#
        )),
        "models.m.headers.X: value must not contain CR, LF or NUL"
    );
}

#[test]
fn expanded_header_value_with_newline_is_error_without_value() {
    let env = FakeEnv::new().var("K", "sk-SECRET\nEvil: 1");
    let p = problems_with(
        &with_model(r#""url": "http://h", "headers": {"X": "$K"}"#),
        &env,
    );
    assert_eq!(
        p,
        vec!["models.m.headers.X: expanded value contains CR, LF or NUL"]
    );
}

#[test]
fn headers_differing_only_in_case_are_error() {
    assert_eq!(
        one(&with_model(r#""url": "http://h", "headers": {"Authorization": "a", "authorization": "b"}"#)),
        "models.m.headers.authorization: repeats header \"Authorization\" (header names are case-insensitive)"
    );
}

#[test]
fn exact_duplicate_header_is_error() {
    assert_eq!(
        one(&with_model(
            r#""url": "http://h", "headers": {"X": "a", "X": "b"}"#
        )),
        "models.m.headers.X: is given twice"
    );
}

#[test]
fn framing_headers_cannot_be_set() {
    for name in [
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "Upgrade",
    ] {
        let p = one(&with_model(&format!(
            r#""url": "http://h", "headers": {{"{name}": "x"}}"#
        )));
        assert!(p.contains("is managed by modelgate"), "{p}");
    }
}

#[test]
fn header_value_wrong_type_is_error() {
    assert_eq!(
        one(&with_model(r#""url": "http://h", "headers": {"X": 1}"#)),
        "models.m.headers.X: expected a string, found a number"
    );
}

#[test]
fn headers_wrong_type_is_error() {
    assert!(
        one(&with_model(r#""url": "http://h", "headers": ["X: y"]"#))
            .starts_with("models.m.headers: expected an object")
    );
}

#[test]
fn empty_header_value_is_allowed() {
    let c = ok(&with_model(
        r#""url": "http://h", "headers": {"X-Empty": ""}"#,
    ));
    assert_eq!(c.models["m"].headers[0].1.expose(), "");
}

// ---- authTokens ----

#[test]
fn auth_tokens_expand_every_form() {
    let env = FakeEnv::new()
        .var("A", "ta")
        .var("CREDENTIALS_DIRECTORY", "/run/c")
        .file("/run/c/tok", b"tc\n");
    let c = load_with(
        &with_top(r#""authTokens": ["lit", "$A", "${cred:tok}"]"#),
        &env,
    )
    .unwrap();
    let t: Vec<&str> = c.auth_tokens.iter().map(|s| s.expose()).collect();
    assert_eq!(t, vec!["lit", "ta", "tc"]);
}

#[test]
fn empty_literal_token_is_error() {
    assert!(one(&with_top(r#""authTokens": ["ok", ""]"#)).starts_with("authTokens[1]: is empty"));
}

#[test]
fn token_expanding_to_empty_is_error() {
    let env = FakeEnv::new().var("T", "");
    assert_eq!(
        problems_with(&with_top(r#""authTokens": ["${env:T}"]"#), &env),
        vec!["authTokens[0]: expands to an empty token"]
    );
}

#[test]
fn token_with_whitespace_is_error_without_value() {
    let env = FakeEnv::new().var("T", "sk-abc def");
    let p = problems_with(&with_top(r#""authTokens": ["$T"]"#), &env);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("authTokens[0]: contains whitespace"));
    assert!(!p[0].contains("sk-abc"));
}

#[test]
fn unset_token_variable_names_index() {
    assert_eq!(
        one(&with_top(r#""authTokens": ["a", "${env:GATE_TOKEN}"]"#)),
        "authTokens[1]: env var GATE_TOKEN is not set"
    );
}

#[test]
fn auth_tokens_as_string_is_error() {
    assert_eq!(
        one(&with_top(r#""authTokens": "tok""#)),
        "authTokens: expected a list of tokens (strings or {\"token\": …} objects), found a string"
    );
}

#[test]
fn auth_token_not_a_string_is_error() {
    assert_eq!(
        one(&with_top(r#""authTokens": [1]"#)),
        "authTokens[0]: expected a string or {\"token\": …}, found a number"
    );
}

#[test]
fn check_mode_keeps_token_templates() {
    let c = from_str(&with_top(r#""authTokens": ["${file:/run/tok}"]"#), None).unwrap();
    assert_eq!(c.auth_tokens[0].expose(), "${file:/run/tok}");
}

#[test]
fn empty_token_list_means_open() {
    assert!(ok(&with_top(r#""authTokens": []"#)).auth_tokens.is_empty());
}

// ---- all problems together, and no secret leaks ----

#[test]
fn every_problem_is_reported_together() {
    let p = problems(
        r#"{
        "listn": ":8080",
        "timeouts": {"idle": 0},
        "authTokens": ["$NOPE"],
        "models": {
            "a": {"url": "ftp://h", "heders": {}},
            "b": {"url": "http://h", "headers": {"Bad Name": "x"}}
        }
    }"#,
    );
    assert_eq!(
        p,
        vec![
            "listn: unknown key (did you mean \"listen\"?)",
            "authTokens[0]: env var NOPE is not set",
            "timeouts.idle: must be a positive number of seconds",
            "models.a.heders: unknown key (did you mean \"headers\"?)",
            "models.a.url: unsupported scheme \"ftp\" (use http://, https:// or unix://)",
            "models.b.headers.Bad Name: is not a valid header name",
        ]
    );
}

#[test]
fn check_mode_reports_unknown_keys_and_semantic_errors_together() {
    let p = from_str(
        r#"{"wokers": 2, "models": {"m": {"url": "http://h:99999"}}}"#,
        None,
    )
    .unwrap_err();
    assert_eq!(p.len(), 2, "{p:?}");
}

#[test]
fn debug_of_config_contains_no_secret() {
    let env = FakeEnv::new()
        .var("UP", "sk-UPSTREAM-SECRET")
        .var("GATE", "gate-SECRET");
    let c = load_with(
        r#"{"authTokens": ["${env:GATE}", "literal-SECRET"],
            "models": {"m": {"url": "http://h", "headers": {"Authorization": "Bearer $UP"}}}}"#,
        &env,
    )
    .unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("SECRET"), "{dbg}");
    assert!(dbg.contains("Authorization"));
}

#[test]
fn file_secret_errors_name_path_not_contents() {
    let env = FakeEnv::new().file("/bad", &[b's', b'k', 0xff]);
    let p = problems_with(&with_top(r#""authTokens": ["${file:/bad}"]"#), &env);
    assert_eq!(
        p,
        vec!["authTokens[0]: secret file /bad is not valid UTF-8"]
    );
}

// ---- display helpers ----

#[test]
fn listen_display_forms() {
    assert_eq!(
        Listen::Tcp("127.0.0.1:1".parse().unwrap()).to_string(),
        "127.0.0.1:1"
    );
    assert_eq!(
        Listen::Unix(PathBuf::from("/x.sock")).to_string(),
        "unix:/x.sock"
    );
}

#[test]
fn listen_locality() {
    assert!(Listen::Tcp("127.0.0.1:1".parse().unwrap()).is_local());
    assert!(Listen::Unix(PathBuf::from("/x")).is_local());
    assert!(!Listen::Tcp("0.0.0.0:1".parse().unwrap()).is_local());
}

#[test]
fn upstream_display_is_origin_only() {
    let u = parse_upstream_url("https://api.openai.com/v1?k=1").unwrap();
    assert_eq!(u.to_string(), "https://api.openai.com");
    let u = parse_upstream_url("unix:///run/llm.sock").unwrap();
    assert_eq!(u.to_string(), "unix:/run/llm.sock");
}

#[test]
fn header_name_token_rules() {
    assert!(is_header_name("X-Api-Key"));
    assert!(is_header_name("x!#$%&'*+-.^_`|~9"));
    assert!(!is_header_name("X(Y)"));
    assert!(!is_header_name("Ключ"));
}

// ---- the shipped examples ----

#[test]
fn example_config_loads() {
    let c = ok(include_str!("../../examples/config.json"));
    assert!(c.models.contains_key("chat"));
    assert!(c.models.values().any(|m| m.unlisted));
    assert!(c.models.values().any(|m| !m.headers.is_empty()));
}

#[test]
fn llmhop_listen_form_loads() {
    let env = FakeEnv::new().var("OPENAI_KEY", "sk-test");
    let c = load_with(include_str!("../../examples/llmhop-config.json"), &env).unwrap();
    assert_eq!(c.listen, vec![Listen::Tcp("0.0.0.0:8080".parse().unwrap())]);
    let m = &c.models["openai-gpt-4o"];
    assert_eq!(m.upstream.authority, "api.openai.com");
    assert_eq!(m.headers[0].1.expose(), "Bearer sk-test");
}

#[test]
fn llmhop_host_port_form_loads() {
    let env = FakeEnv::new().var("OPENAI_KEY", "sk-test");
    let c = load_with(include_str!("../../examples/llmhop-hostport.json"), &env).unwrap();
    assert_eq!(c.listen.len(), 1);
    assert!(c.models.contains_key("openai-gpt-4o"));
}

#[test]
fn llmhop_config_without_key_names_variable() {
    assert_eq!(
        problems(include_str!("../../examples/llmhop-config.json")),
        vec!["models.openai-gpt-4o.headers.Authorization: env var OPENAI_KEY is not set"]
    );
}

#[test]
fn edit_distance_counts_swaps_as_one() {
    assert_eq!(edit_distance("kye", "key"), 1);
    assert_eq!(edit_distance("heders", "headers"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
}

// ---- replicas (issue 9) ----

#[test]
fn urls_list_replicas_with_url_first_and_defaults() {
    let c = ok(&with_model(
        r#""url": "http://127.0.0.1:1", "urls": ["http://127.0.0.1:2", {"url": "http://127.0.0.1:3", "weight": 3, "maxConcurrentRequests": 4, "headers": {"X-R": "3"}}], "maxConcurrentRequests": 2"#,
    ));
    let m = &c.models["m"];
    assert_eq!(m.upstream.port, 1);
    let r = &m.replicas;
    let ports: Vec<u16> = r.list.iter().map(|s| s.upstream.port).collect();
    assert_eq!(ports, vec![1, 2, 3]);
    assert_eq!(r.list[2].weight, 3);
    assert_eq!(r.list[2].max_concurrent, 4);
    assert_eq!(r.list[1].max_concurrent, 2);
    assert_eq!(r.list[2].headers[0].0, "X-R");
    assert_eq!(r.balance, crate::balance::BalanceConfig::default());
}

#[test]
fn urls_alone_make_the_first_the_upstream() {
    let c = ok(&with_model(
        r#""urls": ["http://127.0.0.1:7", "http://127.0.0.1:8"]"#,
    ));
    assert_eq!(c.models["m"].upstream.port, 7);
    assert_eq!(c.models["m"].replicas.list.len(), 2);
}

#[test]
fn a_plain_url_model_has_no_replica_list() {
    let c = ok(MIN);
    assert!(c.models["chat"].replicas.list.is_empty());
}

#[test]
fn balancing_keys_are_read() {
    let c = ok(&with_model(
        r#""urls": ["http://127.0.0.1:7"], "balance": "round-robin", "retries": 1, "ejectOnStatus": [503], "ejectTime": 0.5, "ejectTimeMax": 4"#,
    ));
    let b = &c.models["m"].replicas.balance;
    assert_eq!(b.policy, crate::balance::Policy::RoundRobin);
    assert_eq!(b.retries, 1);
    assert_eq!(b.eject_on_status, vec![503]);
    assert!(b.retry_on_status.is_empty());
    let r = ok(&with_model(
        r#""url": "http://127.0.0.1:7", "retryOnStatus": [429, 503]"#,
    ));
    assert_eq!(
        r.models["m"].replicas.balance.retry_on_status,
        vec![429, 503]
    );
    assert_eq!(b.eject_time, Duration::from_millis(500));
    assert_eq!(b.eject_time_max, Duration::from_secs(4));
    let q = ok(&with_model(
        r#""url": "http://127.0.0.1:7", "queue": {"size": 10, "timeout": 2}"#,
    ));
    let b = &q.models["m"].replicas.balance;
    assert_eq!(b.queue_size, 10);
    assert_eq!(b.queue_timeout, Duration::from_secs(2));
    let h = ok(&with_model(
        r#""url": "http://127.0.0.1:7", "healthCheck": {"path": "/ready", "interval": 1}"#,
    ));
    let h = h.models["m"]
        .replicas
        .balance
        .health_check
        .clone()
        .expect("check");
    assert_eq!(h.path, "/ready");
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, crate::balance::DEFAULT_HEALTH_TIMEOUT);
    assert!(one(&with_model(
        r#""url": "http://127.0.0.1:7", "healthCheck": {"path": "health"}"#
    ))
    .starts_with("models.m.healthCheck.path: must start with /"));
    assert!(one(&with_model(
        r#""url": "http://127.0.0.1:7", "queue": {"sise": 1}"#
    ))
    .starts_with("models.m.queue.sise: unknown key"));
}

#[test]
fn replica_problems_are_named_by_path() {
    let p = problems(&with_model(
        r#""urls": ["ftp://x", {"weight": 0}, 5], "balance": "random""#,
    ));
    let text = p.join("\n");
    for needle in [
        "models.m.urls[0]",
        "models.m.urls[1].url: is required",
        "models.m.urls[1].weight: must be at least 1",
        "models.m.urls[2]: expected a URL string",
        "models.m.balance: must be",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    assert!(one(&with_model(r#""urls": []"#)).contains("models.m.urls: must list at least one"));
}

// ---- fallbacks across providers (issue 18) ----

#[test]
fn a_replica_carries_its_tier_and_its_own_upstream_identity() {
    let c = ok(&with_model(
        r#""model": "local-name", "defaults": {"temperature": 0.2}, "urls": ["http://127.0.0.1:1", {"url": "https://api.example.com/v1", "priority": 1, "model": "gpt-4o-mini", "deny": ["top_k"], "headers": {"Authorization": "Bearer x"}}]"#,
    ));
    let list = &c.models["m"].replicas.list;
    assert_eq!((list[0].priority, list[1].priority), (0, 1));
    assert!(list[0].overrides.is_empty());
    let own = &list[1].overrides;
    assert_eq!(own.upstream_model.as_deref(), Some("gpt-4o-mini"));
    assert!(
        own.defaults.is_none(),
        "not given: the model's defaults stay"
    );
    assert_eq!(own.deny.as_ref().map(Vec::len), Some(1));
    let effective = c.models["m"].profile.overridden(own);
    assert_eq!(effective.upstream_model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(effective.defaults.len(), 1);
}

#[test]
fn fallback_keys_are_checked_with_their_key_paths() {
    let p = problems(&with_model(
        r#""urls": ["http://127.0.0.1:1", {"url": "http://127.0.0.1:2", "priority": -1, "model": "", "defaults": "hot"}, {"url": "http://127.0.0.1:3", "priority": 101}, {"url": "http://127.0.0.1:4", "priorty": 1}]"#,
    ));
    let has = |needle: &str| p.iter().any(|l| l.contains(needle));
    assert!(has("models.m.urls[1].priority"), "{p:?}");
    assert!(has("models.m.urls[1].model: must not be empty"), "{p:?}");
    assert!(has("models.m.urls[1].defaults"), "{p:?}");
    assert!(
        has("models.m.urls[2].priority: must be at most 100"),
        "{p:?}"
    );
    assert!(
        has("models.m.urls[3].priorty") && has("priority"),
        "an unknown key suggests the nearest: {p:?}"
    );
}
