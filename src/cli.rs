//! Command line (SPEC.md §1): `modelgate [--config PATH] [--check] [--version] [--help]`.
//!
//! Owns: turning arguments into a [`Command`]. It prints nothing and exits nothing; `main`
//! does that. Go-style single-dash long options (`-config PATH`, `-check`) are accepted
//! because LLMhop (a Go program) is started that way and its unit files must keep working.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

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
}

/// The config file used when `--config` is not given (relative to the working directory).
pub const DEFAULT_CONFIG: &str = "config.json";

/// What `--version` prints.
pub const VERSION_LINE: &str = concat!("modelgate ", env!("CARGO_PKG_VERSION"));

pub const HELP: &str = "\
modelgate - a tiny, fast, stateless HTTP router for OpenAI-compatible LLM APIs

Usage: modelgate [--config PATH] [--check] [--version] [--help]

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

modelgate accepts OpenAI-compatible HTTP requests and forwards each one, streamed and
byte for byte, to the upstream configured for its model: the top-level \"model\" of the
JSON body, the \"model\" field of a multipart form, the ?model= of a WebSocket handshake,
or the {model} of a /route/{model}/... path. A model may have several replicas (balanced,
with failover before the first response byte), a parameter profile (the only case where a
body is rewritten), and backends found by discovery. It serves GET /health and
GET /v1/models itself, can require bearer tokens (authTokens, optionally scoped to models
and rate-limited), and adds per-model headers such as upstream API keys, read from the
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
