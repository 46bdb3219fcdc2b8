//! The command line: parse arguments, load the config, run (or check) it. Formats errors for
//! humans; everything else lives in the library.

use std::process::ExitCode;

use modelgate::cli::{self, Command};
use modelgate::config;
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
        Command::Run { config } => {
            let loaded = match config::load(&config, Some(&ProcessEnv)) {
                Ok(loaded) => loaded,
                Err(problems) => {
                    for problem in problems {
                        eprintln!("modelgate: {}: {problem}", config.display());
                    }
                    return ExitCode::FAILURE;
                }
            };
            match server::run(&config, loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("modelgate: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
