//! The command line as a user meets it (SPEC.md §1): the real binary, its exit codes and
//! what it prints.

mod common;

use common::*;

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_example_config() {
    let (status, stdout, _) =
        run_modelgate(&["--check", "--config", &example("config.json")], |_| {});
    assert!(status.success());
    assert_eq!(stdout.trim(), "config ok");
}

#[test]
fn check_accepts_both_llmhop_forms_without_reading_secrets() {
    for file in ["llmhop-config.json", "llmhop-hostport.json"] {
        let (status, stdout, stderr) =
            run_modelgate(&["--check", "-config", &example(file)], |c| {
                c.env_remove("OPENAI_KEY");
            });
        assert!(status.success(), "{file}: {stderr}");
        assert_eq!(stdout.trim(), "config ok");
    }
}

#[test]
fn unset_secret_fails_startup_naming_the_key_path_and_no_value() {
    let (status, _, stderr) = run_modelgate(&["--config", &example("llmhop-config.json")], |c| {
        c.env_remove("OPENAI_KEY");
    });
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("models.openai-gpt-4o.headers.Authorization")
            && stderr.contains("OPENAI_KEY"),
        "{stderr}"
    );
}

#[test]
fn secret_values_never_appear_in_problems() {
    let config = r#"{"models":{"m":{"url":"ftp://x","headers":{"Authorization":"Bearer ${env:MG_TEST_SECRET}","Bad Name":"v"}}},"listen":"127.0.0.1:0","typo":1}"#;
    let (status, _, stderr) = run_with_config(config, &[], |c| {
        c.env("MG_TEST_SECRET", "sk-very-secret-value");
    });
    assert_eq!(status.code(), Some(1));
    assert!(!stderr.contains("sk-very-secret-value"), "{stderr}");
    // Every problem is reported, each with its key path.
    assert!(stderr.contains("models.m.url"), "{stderr}");
    assert!(stderr.contains("typo"), "{stderr}");
    assert!(stderr.contains("Bad Name"), "{stderr}");
}

#[test]
fn check_reports_every_problem_and_exits_one() {
    let config = r#"{"models":{"m":{"url":"http://x","heders":{}}},"timeouts":{"idel":1}}"#;
    let (status, stdout, stderr) = run_with_config(config, &["--check"], |_| {});
    assert_eq!(status.code(), Some(1));
    assert!(!stdout.contains("config ok"));
    assert!(
        stderr.contains("models.m.heders") && stderr.contains("headers"),
        "{stderr}"
    );
    assert!(
        stderr.contains("timeouts.idel") && stderr.contains("idle"),
        "{stderr}"
    );
}

#[test]
fn check_validates_key_names_and_token_budgets_by_key_path() {
    let config = r#"{"models":{"m":{"url":"http://x"}},"authTokens":[
        {"token":"${env:A}","name":"team","tokensPerMinute":1000},
        {"token":"${env:B}","name":"team"},
        {"token":"sk-c","tokensPerMinute":-5,"name":""}]}"#;
    let (status, _, stderr) = run_with_config(config, &["--check"], |_| {});
    assert_eq!(status.code(), Some(1), "{stderr}");
    for want in [
        "authTokens[1].name: \"team\" is already the name of authTokens[0]",
        "authTokens[2].tokensPerMinute: must not be negative",
        "authTokens[2].name: must not be empty",
    ] {
        assert!(stderr.contains(want), "{want} in {stderr}");
    }
    assert!(!stderr.contains("sk-c"), "{stderr}");
    let ok = r#"{"models":{"m":{"url":"http://x"}},"authTokens":[
        {"token":"${env:A}","name":"team","tokensPerMinute":1000,"requestsPerMinute":60}]}"#;
    let (status, stdout, stderr) = run_with_config(ok, &["--check"], |_| {});
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("config ok"), "{stdout}");
}

#[test]
fn check_validates_shared_limits_by_key_path_without_reading_or_showing_secrets() {
    let problems = |shared: &str| {
        let config =
            format!(r#"{{"models":{{"m":{{"url":"http://x"}}}},"sharedLimits":{shared}}}"#);
        let (status, _, stderr) = run_with_config(&config, &["--check"], |_| {});
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        stderr
    };
    let stderr = problems(r#"{"url":"redis://:hunter2@h:70000","syncInterval":60}"#);
    for want in [
        "sharedLimits.url: has an invalid port",
        "sharedLimits.syncInterval: must be between 0.01 and 10 seconds",
    ] {
        assert!(stderr.contains(want), "{want} in {stderr}");
    }
    let stderr = problems(r#"{"url":"redis://:hunter2@h","caFile":"/ca.pem"}"#);
    assert!(
        stderr.contains("sharedLimits.caFile: is only allowed with a rediss:// url"),
        "{stderr}"
    );
    // References are checked, not read: the variables need not exist.
    let ok = r#"{"models":{"m":{"url":"http://x"}},"sharedLimits":{
        "url":"rediss://${env:REDIS_USER}:${env:REDIS_PW}@redis.internal:6380/2",
        "password":"${file:/nonexistent/pw}","caFile":"/nonexistent/ca.pem"}}"#;
    let (status, stdout, stderr) = run_with_config(ok, &["--check"], |_| {});
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("config ok"), "{stdout}");
}

#[test]
fn version_and_help_print_and_exit_zero() {
    let (status, stdout, _) = run_modelgate(&["--version"], |_| {});
    assert!(status.success());
    assert!(stdout.starts_with("modelgate "), "{stdout}");
    let (status, stdout, _) = run_modelgate(&["--help"], |_| {});
    assert!(status.success());
    for flag in [
        "--config",
        "--check",
        "--version",
        "--help",
        "SIGHUP",
        "SIGTERM",
    ] {
        assert!(stdout.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn unknown_argument_is_a_usage_error() {
    let (status, _, stderr) = run_modelgate(&["--conifg", "x"], |_| {});
    assert!(!status.success());
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn missing_config_file_is_one_clear_line() {
    let (status, _, stderr) = run_modelgate(&["--config", "/nonexistent/modelgate.json"], |_| {});
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/modelgate.json"), "{stderr}");
}

#[test]
fn startup_line_names_address_and_model_counts() {
    let mg = Modelgate::start(&config_json(&[
        ("a", "http://127.0.0.1:9"),
        ("b", "http://127.0.0.1:9"),
    ]));
    let line = mg
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("listening on"))
        .expect("startup line");
    assert!(line.contains("routing 2 models (2 listed)"), "{line}");
}
