//! Secret references (`${env:X}`, `$X`, `${file:P}`, `${cred:N}`, `$$`) and the redacted
//! `Secret` type. CONTRACT STUB: the config helper replaces the bodies, keeping the API.

use std::fmt;
use std::path::Path;

/// Bytes that must never reach logs: `Debug` and `Display` print `Secret(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    /// The only way to the value; grep for `expose` to audit where secrets go.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where secret references are resolved from; a trait so tests need no real environment.
pub trait SecretEnv {
    fn var(&self, name: &str) -> Option<String>;
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// The real process environment and file system.
pub struct ProcessEnv;

impl SecretEnv for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// Why a reference could not be expanded. Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    Unclosed,
    EmptyName,
    UnknownScheme(String),
    EnvUnset(String),
    NoCredentialsDirectory,
    BadCredentialName(String),
    FileUnreadable { path: String, reason: String },
    NotUtf8(String),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Checks reference syntax only (used by `--check`, which must not read secrets).
pub fn validate_syntax(_template: &str) -> Result<(), SecretError> {
    Ok(())
}

/// Expands every reference in `template`.
pub fn expand(template: &str, _env: &dyn SecretEnv) -> Result<Secret, SecretError> {
    Ok(Secret(template.to_string()))
}
