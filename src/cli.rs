//! Command line (SPEC.md §1): `modelgate [--config PATH] [--check] [--version] [--help]`,
//! and `modelgate wait-ready URL [--path PATH] [--interval S] [--timeout S]` (see `ready`).
//!
//! Owns: turning arguments into a [`Command`]. It prints nothing and exits nothing; `main`
//! does that. Go-style single-dash long options (`-config PATH`, `-check`) are accepted
//! because LLMhop (a Go program) is started that way and its unit files must keep working.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{parse_upstream_url, Scheme};
use crate::ready::WaitReady;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `explicit`: `--config` was given. Without it a missing `./config.json` means the
    /// embedded default (discovery of local backends), not an error.
    Run {
        config: PathBuf,
        explicit: bool,
    },
    Check {
        config: PathBuf,
    },
    Version,
    Help,
    /// `modelgate wait-ready URL`: poll until the endpoint answers 2xx.
    WaitReady(WaitReady),
}

/// `wait-ready`'s pause between attempts when `--interval` is not given.
pub const DEFAULT_READY_INTERVAL: Duration = Duration::from_secs(2);

/// The config file used when `--config` is not given (relative to the working directory).
pub const DEFAULT_CONFIG: &str = "config.json";

/// What `--version` prints.
pub const VERSION_LINE: &str = concat!("modelgate ", env!("CARGO_PKG_VERSION"));

pub const HELP: &str = "\
modelgate - a tiny, fast, stateless HTTP router for OpenAI-compatible LLM APIs

Usage: modelgate [--config PATH] [--check] [--version] [--help]
       modelgate wait-ready URL [--path PATH] [--interval SECONDS] [--timeout SECONDS]

Options:
  --config PATH   The JSON config file [default: ./config.json].
                  Also accepted: --config=PATH, -config PATH, -config=PATH.
                  Without --config and without ./config.json, modelgate runs the
                  embedded default: it listens on 127.0.0.1:4000 and discovers local
                  OpenAI-compatible backends on their well-known ports (llama.cpp 8080,
                  vLLM 8000, sglang 30000, Ollama 11434, LM Studio 1234) by asking
                  each for GET /v1/models every 5 s, and routes every model found.
                  MODELGATE_LISTEN=ADDR and MODELGATE_DISCOVER=URL,URL replace its
                  address and probe list.
  --check         Validate the config (JSON syntax, types, unknown keys, URLs, header
                  names, secret-reference syntax) without reading any secret, then exit:
                  prints \"config ok\" and exits 0, or prints every problem and exits 1.
  -V, --version   Print the version and exit.
  -h, --help      Print this help and exit.

wait-ready URL:
  Polls URL with GET until it answers 2xx, then exits 0; refused connections, timeouts
  and other statuses are retried every --interval (default 2 s), and each new reason is
  printed once. With --timeout it gives up after that many seconds and exits 1. URL is
  http://HOST:PORT/PATH or unix:///SOCKET (then the path is --path PATH; default /).
  Made for systemd ExecStartPost= lines: the unit counts as started only once the
  endpoint answers, without curl. https:// is not supported.

modelgate accepts OpenAI-compatible HTTP requests and forwards each one, streamed and
byte for byte, to the upstream configured for its model: the top-level \"model\" of the
JSON body, the \"model\" field of a multipart form, the ?model= of a WebSocket handshake,
or the {model} of a /route/{model}/... path. A model may have several replicas (balanced,
with failover before the first response byte; their maxConcurrentRequests, wait queue and
ejections hold for the whole process, across all workers; replicas in a later priority tier,
such as a hosted provider under its own model name and key, take a request only when the
tiers before them cannot), a parameter profile (the only case where a body is rewritten),
and backends found by discovery. It serves GET /health and
GET /v1/models itself, can require bearer tokens (authTokens, optionally named, scoped to
models, rate-limited and given a token budget, with metrics and log lines per key; limits
can be shared by several instances through Redis or Valkey, sharedLimits), and adds
per-model headers such as upstream API keys, read from the
environment or from files when it starts (${env:NAME}, ${file:PATH}, ${cred:NAME}).
Problems in the config are reported one per line with their key path, never with a
secret's value, and modelgate exits 1.

Signals:
  SIGHUP           Reload the config; in-flight requests finish on the old one, and a
                   bad config is logged while the old one stays in service.
  SIGTERM, SIGINT  Stop accepting, let in-flight requests and streams finish (up to
                   timeouts.shutdown, 30 s by default), then exit 0.

Config reference: docs/CONFIG.md
";

const OPTIONS: &[&str] = &["--config", "--check", "--version", "--help"];

/// Parses the arguments after the program name.
pub fn parse_args(args: Vec<OsString>) -> Result<Command, String> {
    if args.first().is_some_and(|a| a == "wait-ready") {
        return parse_wait_ready(args.into_iter().skip(1).collect());
    }
    let mut args = pico_args::Arguments::from_vec(args.into_iter().map(go_style).collect());

    if args.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    let version = args.contains(["-V", "--version"]);
    let check = args.contains("--check");
    let config = config_path(&mut args)?;

    if let Some(extra) = args.finish().first() {
        return Err(unexpected(extra));
    }
    if version {
        return Ok(Command::Version);
    }
    let explicit = config.is_some();
    let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    Ok(if check {
        Command::Check { config }
    } else {
        Command::Run { config, explicit }
    })
}

/// `wait-ready URL [--path PATH] [--interval SECONDS] [--timeout SECONDS]`.
fn parse_wait_ready(args: Vec<OsString>) -> Result<Command, String> {
    let mut args = pico_args::Arguments::from_vec(args);
    if args.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    let path: Option<String> = args
        .opt_value_from_str("--path")
        .map_err(|_| "wait-ready: --path needs a path, like --path /health".to_string())?;
    let interval = args
        .opt_value_from_fn("--interval", seconds)
        .map_err(|e| seconds_error("--interval", e))?
        .unwrap_or(DEFAULT_READY_INTERVAL);
    let timeout = args
        .opt_value_from_fn("--timeout", seconds)
        .map_err(|e| seconds_error("--timeout", e))?;
    let rest = args.finish();
    if let Some(option) = rest.iter().find(|a| a.to_string_lossy().starts_with('-')) {
        return Err(format!(
            "wait-ready: unknown option '{}'; see modelgate --help",
            option.to_string_lossy()
        ));
    }
    let url =
        match rest.as_slice() {
            [url] => url.to_str().ok_or("wait-ready: the URL must be UTF-8")?,
            [] => return Err(
                "wait-ready needs a URL, like: modelgate wait-ready http://127.0.0.1:8080/health"
                    .into(),
            ),
            _ => return Err("wait-ready takes one URL".into()),
        };
    let upstream = parse_upstream_url(url).map_err(|e| format!("wait-ready: the URL {e}"))?;
    if upstream.scheme == Scheme::Https {
        return Err("wait-ready speaks plain HTTP: use http:// or unix://".into());
    }
    let in_url = match &upstream.query {
        Some(q) => format!("{}?{q}", upstream.base_path),
        None => upstream.base_path.clone(),
    };
    let target = match path {
        Some(_) if !in_url.is_empty() => {
            return Err("wait-ready: give the path in the URL or with --path, not both".into())
        }
        Some(p) if !p.starts_with('/') => {
            return Err("wait-ready: --path must start with '/', like --path /health".into())
        }
        Some(p) => p,
        None if in_url.is_empty() => "/".to_string(),
        None => in_url,
    };
    Ok(Command::WaitReady(WaitReady {
        upstream,
        target,
        interval,
        timeout,
    }))
}

/// A positive number of seconds, fractions allowed (`2`, `0.5`), at most a day.
fn seconds(value: &str) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "'{value}' is not a number of seconds between 0 and 86400"
        )),
    }
}

fn seconds_error(option: &str, e: pico_args::Error) -> String {
    match e {
        pico_args::Error::Utf8ArgumentParsingFailed { cause, .. } => {
            format!("wait-ready: {option}: {cause}")
        }
        _ => format!("wait-ready: {option} needs a number of seconds, like {option} 2"),
    }
}

/// `-config`, `-check`, `-version`, `-help` (with or without `=VALUE`) → the `--` forms.
fn go_style(arg: OsString) -> OsString {
    let Some(s) = arg.to_str() else { return arg };
    let Some(rest) = s.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
        return arg;
    };
    let name = rest.split('=').next().unwrap_or(rest);
    if matches!(name, "config" | "check" | "version" | "help") {
        OsString::from(format!("-{s}"))
    } else {
        arg
    }
}

/// The `--config` value in any of its forms; given twice is an error (which one would win
/// is a guess we should not make).
fn config_path(args: &mut pico_args::Arguments) -> Result<Option<PathBuf>, String> {
    let mut found = Vec::new();
    // `--config PATH` (the path may be any bytes), then `--config=PATH` (UTF-8).
    while let Some(p) = args
        .opt_value_from_os_str("--config", path_value)
        .map_err(config_error)?
    {
        found.push(p);
    }
    while let Some(p) = args
        .opt_value_from_fn("--config", |s: &str| path_value(OsStr::new(s)))
        .map_err(config_error)?
    {
        found.push(p);
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err("--config is given more than once (see modelgate --help)".into()),
    }
}

fn path_value(value: &OsStr) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("empty path".into());
    }
    if value.to_str().is_some_and(|s| s.starts_with("--")) {
        return Err("a path, not an option".into());
    }
    Ok(PathBuf::from(value))
}

fn config_error(e: pico_args::Error) -> String {
    match e {
        pico_args::Error::NonUtf8Argument => {
            "--config=PATH needs a UTF-8 path; use --config PATH instead".into()
        }
        _ => "--config needs a path, like --config /etc/modelgate/config.json".into(),
    }
}

fn unexpected(arg: &OsStr) -> String {
    let shown = arg.to_string_lossy();
    if shown.starts_with('-') {
        let name = shown.split('=').next().unwrap_or(&shown);
        let mut msg = format!("unknown option '{name}'");
        let dashed = format!("--{}", name.trim_start_matches('-'));
        if let Some(s) = crate::config::suggest(&dashed, OPTIONS) {
            msg.push_str(&format!(" (did you mean '{s}'?)"));
        }
        msg.push_str("; see modelgate --help");
        msg
    } else {
        format!(
            "unexpected argument '{shown}' (give the config file as --config PATH; see modelgate --help)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(OsString::from).collect())
    }

    fn run(path: &str) -> Command {
        Command::Run {
            config: PathBuf::from(path),
            explicit: true,
        }
    }

    #[test]
    fn no_arguments_runs_with_default_config() {
        assert_eq!(
            parse(&[]),
            Ok(Command::Run {
                config: PathBuf::from("config.json"),
                explicit: false
            })
        );
    }

    #[test]
    fn config_with_space_separated_path() {
        assert_eq!(parse(&["--config", "/etc/m.json"]), Ok(run("/etc/m.json")));
    }

    #[test]
    fn config_with_equals() {
        assert_eq!(parse(&["--config=/etc/m.json"]), Ok(run("/etc/m.json")));
    }

    #[test]
    fn single_dash_config_like_llmhop() {
        assert_eq!(parse(&["-config", "/etc/m.json"]), Ok(run("/etc/m.json")));
        assert_eq!(parse(&["-config=/etc/m.json"]), Ok(run("/etc/m.json")));
    }

    #[test]
    fn check_uses_the_given_config() {
        assert_eq!(
            parse(&["--check", "--config", "c.json"]),
            Ok(Command::Check {
                config: PathBuf::from("c.json")
            })
        );
    }

    #[test]
    fn check_after_config_works_too() {
        assert_eq!(
            parse(&["--config", "c.json", "--check"]),
            Ok(Command::Check {
                config: PathBuf::from("c.json")
            })
        );
    }

    #[test]
    fn check_alone_uses_default_config() {
        assert_eq!(
            parse(&["--check"]),
            Ok(Command::Check {
                config: PathBuf::from("config.json")
            })
        );
    }

    #[test]
    fn single_dash_check_like_llmhop() {
        assert!(matches!(parse(&["-check"]), Ok(Command::Check { .. })));
    }

    #[test]
    fn help_short_and_long() {
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
    }

    #[test]
    fn help_wins_over_everything() {
        assert_eq!(parse(&["--check", "--bogus", "--help"]), Ok(Command::Help));
    }

    #[test]
    fn version_short_and_long() {
        assert_eq!(parse(&["-V"]), Ok(Command::Version));
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
    }

    #[test]
    fn unknown_option_is_error_with_suggestion() {
        let e = parse(&["--chek"]).unwrap_err();
        assert_eq!(
            e,
            "unknown option '--chek' (did you mean '--check'?); see modelgate --help"
        );
    }

    #[test]
    fn unknown_option_with_value_names_only_the_option() {
        let e = parse(&["--listen=:9000"]).unwrap_err();
        assert!(e.starts_with("unknown option '--listen'"), "{e}");
    }

    #[test]
    fn positional_argument_is_error_pointing_to_config() {
        let e = parse(&["config.json"]).unwrap_err();
        assert!(e.contains("--config PATH"), "{e}");
    }

    #[test]
    fn config_without_value_is_error() {
        assert!(parse(&["--config"]).unwrap_err().contains("needs a path"));
    }

    #[test]
    fn config_with_empty_value_is_error() {
        assert!(parse(&["--config="]).unwrap_err().contains("needs a path"));
        assert!(parse(&["--config", ""])
            .unwrap_err()
            .contains("needs a path"));
    }

    #[test]
    fn config_followed_by_option_is_error() {
        assert!(parse(&["--config", "--check"])
            .unwrap_err()
            .contains("needs a path"));
    }

    #[test]
    fn config_given_twice_is_error() {
        let e = parse(&["--config", "a", "--config=b"]).unwrap_err();
        assert!(e.contains("more than once"), "{e}");
    }

    #[test]
    fn short_c_is_not_an_alias() {
        assert!(parse(&["-c", "x.json"]).is_err());
    }

    #[test]
    fn help_text_mentions_every_flag_signals_and_reference() {
        for needle in [
            "--config PATH",
            "--check",
            "--version",
            "--help",
            "SIGHUP",
            "SIGTERM",
            "docs/CONFIG.md",
            "./config.json",
            "127.0.0.1:4000",
            "MODELGATE_DISCOVER",
        ] {
            assert!(HELP.contains(needle), "{needle}");
        }
    }

    fn ready(args: &[&str]) -> WaitReady {
        match parse(args) {
            Ok(Command::WaitReady(w)) => w,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn wait_ready_takes_the_target_from_the_url() {
        let w = ready(&["wait-ready", "http://127.0.0.1:8101/health"]);
        assert_eq!(w.upstream.authority, "127.0.0.1:8101");
        assert_eq!(w.target, "/health");
        assert_eq!(w.interval, DEFAULT_READY_INTERVAL);
        assert_eq!(w.timeout, None);
        assert_eq!(ready(&["wait-ready", "http://[::1]:9"]).target, "/");
        assert_eq!(
            ready(&["wait-ready", "http://h:1/v1/models?x=1"]).target,
            "/v1/models?x=1"
        );
    }

    #[test]
    fn wait_ready_on_a_unix_socket_takes_path() {
        let w = ready(&["wait-ready", "unix:///run/w/http.sock", "--path", "/health"]);
        assert_eq!(
            w.upstream.unix_path.as_deref(),
            Some(std::path::Path::new("/run/w/http.sock"))
        );
        assert_eq!(w.target, "/health");
        assert_eq!(ready(&["wait-ready", "unix:///run/w.sock"]).target, "/");
    }

    #[test]
    fn wait_ready_interval_and_timeout_in_seconds() {
        let w = ready(&[
            "wait-ready",
            "--interval",
            "0.25",
            "http://127.0.0.1:1/h",
            "--timeout=90",
        ]);
        assert_eq!(w.interval, Duration::from_millis(250));
        assert_eq!(w.timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn wait_ready_rejects_what_it_cannot_do() {
        for (args, needle) in [
            (&["wait-ready"][..], "needs a URL"),
            (&["wait-ready", "a", "b"], "one URL"),
            (&["wait-ready", "https://h/x"], "plain HTTP"),
            (&["wait-ready", "127.0.0.1:80/health"], "http://"),
            (&["wait-ready", "http://h/x", "--path", "/y"], "not both"),
            (
                &["wait-ready", "unix:///s", "--path", "health"],
                "start with '/'",
            ),
            (
                &["wait-ready", "http://h/x", "--interval", "0"],
                "--interval",
            ),
            (
                &["wait-ready", "http://h/x", "--timeout", "soon"],
                "--timeout",
            ),
            (
                &["wait-ready", "http://h/x", "--bogus"],
                "unknown option '--bogus'",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn wait_ready_help_is_the_help() {
        assert_eq!(parse(&["wait-ready", "--help"]), Ok(Command::Help));
        assert!(HELP.contains("wait-ready URL"));
    }

    #[test]
    fn version_line_names_the_crate_version() {
        assert_eq!(
            VERSION_LINE,
            format!("modelgate {}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    #[cfg(unix)]
    fn non_utf8_config_path_is_accepted_in_two_argument_form() {
        use std::os::unix::ffi::OsStringExt;
        let raw = OsString::from_vec(vec![b'c', 0xff, b'.', b'j']);
        let got = parse_args(vec![OsString::from("--config"), raw.clone()]);
        assert_eq!(
            got,
            Ok(Command::Run {
                config: PathBuf::from(raw),
                explicit: true
            })
        );
    }
}
