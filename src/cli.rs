//! Command line (SPEC.md §1). CONTRACT STUB: the config helper replaces the bodies.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run { config: PathBuf },
    Check { config: PathBuf },
    Version,
    Help,
}

pub const HELP: &str = "modelgate [--config PATH] [--check] [--version] [--help]\n";

/// Parses the arguments after the program name.
pub fn parse_args(_args: Vec<OsString>) -> Result<Command, String> {
    Ok(Command::Run {
        config: PathBuf::from("config.json"),
    })
}
