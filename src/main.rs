//! The command line: parse arguments, load the config, run (or check) it. Formats errors for
//! humans; everything else lives in the library.

use std::process::ExitCode;

use modelgate::cli::{self, Command};
use modelgate::config;
use modelgate::discovery;
use modelgate::ready;
use modelgate::secrets::ProcessEnv;
use modelgate::server;

fn main() -> ExitCode {
    let command = match cli::parse_args(std::env::args_os().skip(1).collect()) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("modelgate: {message}\n\n{}", cli::HELP);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("modelgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match config::load(&config, None) {
            Ok(_) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for problem in problems {
                    eprintln!("{problem}");
                }
                ExitCode::FAILURE
            }
        },
        Command::WaitReady(spec) => {
            let name = format!("{}{}", spec.upstream, spec.target);
            match ready::wait(&spec, |line| {
                eprintln!("modelgate wait-ready: {name}: {line}")
            }) {
                Ok(took) => {
                    eprintln!(
                        "modelgate wait-ready: {name}: ready after {:.1} s",
                        took.as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("modelgate wait-ready: {name}: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, explicit } if !explicit && absent(&config) => run_embedded(),
        Command::Run { config, .. } => {
            let loaded = match config::load(&config, Some(&ProcessEnv)) {
                Ok(loaded) => loaded,
                Err(problems) => {
                    for problem in problems {
                        eprintln!("modelgate: {}: {problem}", config.display());
                    }
                    return ExitCode::FAILURE;
                }
            };
            match server::run(Some(&config), loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("modelgate: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// True when nothing at all is at `path` (not even a broken symlink): an unreadable or
/// dangling `./config.json` is still reported as a config problem.
fn absent(path: &std::path::Path) -> bool {
    matches!(path.try_exists(), Ok(false)) && path.symlink_metadata().is_err()
}

/// No `--config` and no `./config.json`: listen on 127.0.0.1:4000 and route whatever the
/// local backends on their well-known ports serve (`MODELGATE_LISTEN`/`MODELGATE_DISCOVER`
/// replace those).
fn run_embedded() -> ExitCode {
    let listen = std::env::var(discovery::ENV_LISTEN).ok();
    let discover = std::env::var(discovery::ENV_DISCOVER).ok();
    let text = discovery::embedded_config_json(listen.as_deref(), discover.as_deref());
    let loaded = match config::from_str(&text, Some(&ProcessEnv)) {
        Ok(loaded) => loaded,
        Err(problems) => {
            for problem in problems {
                eprintln!(
                    "modelgate: the embedded default (${} / ${}): {problem}",
                    discovery::ENV_LISTEN,
                    discovery::ENV_DISCOVER
                );
            }
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "modelgate: no --config and no ./config.json: running the embedded default (discovery of local backends; see modelgate --help)"
    );
    match server::run(None, loaded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("modelgate: {message}");
            ExitCode::FAILURE
        }
    }
}
