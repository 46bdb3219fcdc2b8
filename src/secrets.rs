//! Secret references (`${env:X}`, `${X}`, `$X`, `${file:P}`, `${cred:N}`, `$$`) and the
//! redacted `Secret` type (SPEC.md §2 "Secrets", §10).
//!
//! Owns: the reference grammar, its expansion through a [`SecretEnv`], and the only type that
//! holds secret bytes. Errors name variables, files and credentials, never a value.
//!
//! Grammar, applied left to right:
//! - `$$` is a literal `$`;
//! - `$NAME` and `${NAME}` read the environment variable `NAME` (like `${env:NAME}`);
//! - `${env:NAME}`, `${file:PATH}`, `${cred:NAME}` as documented on [`Reference`];
//! - `$` followed by anything else (`$5`, `$-`, end of text) is a literal `$`;
//! - `NAME` is `[A-Za-z_][A-Za-z0-9_]*`; an unclosed `${`, an empty name and an unknown scheme
//!   are errors.

use std::fmt;
use std::path::{Path, PathBuf};

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

/// The systemd `LoadCredential=` directory variable.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Why a reference could not be expanded. Never contains a secret value: only names of
/// variables, schemes, credentials and file paths, which are config text, not secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// `${` without its `}`.
    Unclosed,
    /// `${}`, `${env:}`, `${file:}` or `${cred:}`; the scheme (`""` for `${}`).
    EmptyName(String),
    /// `${NAME}` or `${env:NAME}` where NAME is not `[A-Za-z_][A-Za-z0-9_]*`.
    /// Carries nothing: a malformed name may be a pasted value.
    BadName,
    /// `${x:…}` with a scheme other than `env`, `file`, `cred`; `None` when the scheme is not
    /// even name-shaped (it might be a pasted value, so it is not echoed).
    UnknownScheme(Option<String>),
    EnvUnset(String),
    /// `${cred:…}` while `$CREDENTIALS_DIRECTORY` is unset.
    NoCredentialsDirectory,
    /// `${cred:NAME}` with a `/` in NAME, or NAME `.`/`..`.
    BadCredentialName(String),
    FileUnreadable {
        path: String,
        reason: String,
    },
    NotUtf8(String),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Unclosed => {
                f.write_str("unclosed \"${\" (close it with \"}\", or write \"$$\" for a literal \"$\")")
            }
            SecretError::EmptyName(scheme) if scheme.is_empty() => {
                f.write_str("empty reference \"${}\" (write \"$$\" for a literal \"$\")")
            }
            SecretError::EmptyName(scheme) => write!(f, "empty name in \"${{{scheme}:}}\""),
            SecretError::BadName => f.write_str(
                "invalid variable name in \"${...}\" (names are letters, digits and \"_\", not starting with a digit)",
            ),
            SecretError::UnknownScheme(Some(s)) => write!(
                f,
                "unknown reference scheme \"{s}\" (known: env, file, cred)"
            ),
            SecretError::UnknownScheme(None) => {
                f.write_str("unknown reference scheme (known: env, file, cred)")
            }
            SecretError::EnvUnset(name) => write!(f, "env var {name} is not set"),
            SecretError::NoCredentialsDirectory => write!(
                f,
                "${{cred:...}} needs ${CREDENTIALS_DIRECTORY}, which is not set (systemd sets it with LoadCredential=)"
            ),
            SecretError::BadCredentialName(name) => write!(
                f,
                "credential name \"{name}\" must be a plain file name (no \"/\", not \".\" or \"..\")"
            ),
            SecretError::FileUnreadable { path, reason } => {
                write!(f, "cannot read secret file {path}: {reason}")
            }
            SecretError::NotUtf8(path) => write!(f, "secret file {path} is not valid UTF-8"),
        }
    }
}

impl std::error::Error for SecretError {}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference<'a> {
    /// Text copied as is (`$$` already folded to `$`).
    Literal(&'a str),
    /// `$NAME`, `${NAME}`, `${env:NAME}`: an environment variable; unset is an error.
    Env(&'a str),
    /// `${file:PATH}`: a file's UTF-8 contents minus one trailing `\n` or `\r\n`; a relative
    /// PATH resolves against `$CREDENTIALS_DIRECTORY` when set, else the working directory.
    File(&'a str),
    /// `${cred:NAME}`: the file `$CREDENTIALS_DIRECTORY/NAME`.
    Cred(&'a str),
}

/// Splits `template` into literal text and references, checking syntax only.
pub fn parse(template: &str) -> Result<Vec<Reference<'_>>, SecretError> {
    let mut parts = Vec::new();
    let bytes = template.as_bytes();
    let mut lit_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let next = bytes.get(i + 1).copied();
        match next {
            Some(b'$') => {
                // Keep the first `$` as literal text, drop the second.
                parts.push(Reference::Literal(&template[lit_start..=i]));
                i += 2;
                lit_start = i;
            }
            Some(b'{') => {
                let body_start = i + 2;
                let close = template[body_start..]
                    .find('}')
                    .ok_or(SecretError::Unclosed)?;
                let body = &template[body_start..body_start + close];
                push_literal(&mut parts, &template[lit_start..i]);
                parts.push(parse_braced(body)?);
                i = body_start + close + 1;
                lit_start = i;
            }
            Some(c) if is_name_start(c) => {
                let end = bytes[i + 1..]
                    .iter()
                    .position(|&b| !is_name_char(b))
                    .map_or(bytes.len(), |p| i + 1 + p);
                push_literal(&mut parts, &template[lit_start..i]);
                parts.push(Reference::Env(&template[i + 1..end]));
                i = end;
                lit_start = i;
            }
            // `$5`, `$-`, `$` at the end: a literal dollar, kept in the current literal run.
            _ => i += 1,
        }
    }
    push_literal(&mut parts, &template[lit_start..]);
    Ok(parts)
}

fn push_literal<'a>(parts: &mut Vec<Reference<'a>>, text: &'a str) {
    if !text.is_empty() {
        parts.push(Reference::Literal(text));
    }
}

/// The inside of `${…}`.
fn parse_braced(body: &str) -> Result<Reference<'_>, SecretError> {
    let Some((scheme, name)) = body.split_once(':') else {
        if body.is_empty() {
            return Err(SecretError::EmptyName(String::new()));
        }
        check_name(body)?;
        return Ok(Reference::Env(body));
    };
    match scheme {
        "env" | "file" | "cred" if name.is_empty() => Err(SecretError::EmptyName(scheme.into())),
        "env" => check_name(name).map(|()| Reference::Env(name)),
        "file" => Ok(Reference::File(name)),
        "cred" => check_cred_name(name).map(|()| Reference::Cred(name)),
        _ if is_name(scheme) => Err(SecretError::UnknownScheme(Some(scheme.into()))),
        _ => Err(SecretError::UnknownScheme(None)),
    }
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && is_name_start(b[0]) && b[1..].iter().all(|&c| is_name_char(c))
}

fn check_name(name: &str) -> Result<(), SecretError> {
    if is_name(name) {
        Ok(())
    } else {
        Err(SecretError::BadName)
    }
}

fn check_cred_name(name: &str) -> Result<(), SecretError> {
    if name.contains('/') || name == "." || name == ".." {
        Err(SecretError::BadCredentialName(name.into()))
    } else {
        Ok(())
    }
}

/// Checks reference syntax only (used by `--check`, which must not read secrets).
pub fn validate_syntax(template: &str) -> Result<(), SecretError> {
    parse(template).map(|_| ())
}

/// True when `template` has at least one reference (so it is not a plain literal).
pub fn has_references(template: &str) -> bool {
    parse(template).map_or(true, |parts| {
        parts.iter().any(|p| !matches!(p, Reference::Literal(_)))
    })
}

/// Expands every reference in `template`.
pub fn expand(template: &str, env: &dyn SecretEnv) -> Result<Secret, SecretError> {
    let mut out = String::with_capacity(template.len());
    for part in parse(template)? {
        match part {
            Reference::Literal(text) => out.push_str(text),
            Reference::Env(name) => {
                let value = env
                    .var(name)
                    .ok_or_else(|| SecretError::EnvUnset(name.into()))?;
                out.push_str(&value);
            }
            Reference::File(path) => {
                let path = resolve_file_path(path, env);
                out.push_str(&read_secret_file(&path, env)?);
            }
            Reference::Cred(name) => {
                let path = credential_path(name, env)?;
                out.push_str(&read_secret_file(&path, env)?);
            }
        }
    }
    Ok(Secret(out))
}

/// A relative path resolves against `$CREDENTIALS_DIRECTORY` when it is set (systemd
/// `LoadCredential=`), else it stays relative (the working directory).
pub fn resolve_file_path(path: &str, env: &dyn SecretEnv) -> PathBuf {
    let path = Path::new(path);
    if path.is_relative() {
        if let Some(dir) = credentials_directory(env) {
            return dir.join(path);
        }
    }
    path.to_path_buf()
}

/// `$CREDENTIALS_DIRECTORY/NAME`; an error when the variable is unset (or empty) or NAME is
/// not a plain file name.
pub fn credential_path(name: &str, env: &dyn SecretEnv) -> Result<PathBuf, SecretError> {
    if name.is_empty() {
        return Err(SecretError::EmptyName("cred".into()));
    }
    check_cred_name(name)?;
    let dir = credentials_directory(env).ok_or(SecretError::NoCredentialsDirectory)?;
    Ok(dir.join(name))
}

fn credentials_directory(env: &dyn SecretEnv) -> Option<PathBuf> {
    env.var(CREDENTIALS_DIRECTORY)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Reads a secret file: UTF-8 with exactly one trailing `\n` or `\r\n` removed (editors and
/// `echo` add one; a second one is kept because it was put there on purpose).
fn read_secret_file(path: &Path, env: &dyn SecretEnv) -> Result<String, SecretError> {
    let shown = path.display().to_string();
    let bytes = env
        .read_file(path)
        .map_err(|e| SecretError::FileUnreadable {
            path: shown.clone(),
            reason: io_reason(&e),
        })?;
    let mut text = String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8(shown))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(text)
}

/// The kind of an I/O error without the OS's full message (short and stable in tests).
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io;

    /// A fake environment: variables and files from maps.
    #[derive(Default)]
    pub(crate) struct FakeEnv {
        pub vars: HashMap<String, String>,
        pub files: HashMap<PathBuf, Vec<u8>>,
    }

    impl FakeEnv {
        pub(crate) fn new() -> FakeEnv {
            FakeEnv::default()
        }
        pub(crate) fn var(mut self, k: &str, v: &str) -> FakeEnv {
            self.vars.insert(k.into(), v.into());
            self
        }
        pub(crate) fn file(mut self, p: &str, contents: &[u8]) -> FakeEnv {
            self.files.insert(PathBuf::from(p), contents.to_vec());
            self
        }
    }

    impl SecretEnv for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    fn exp(template: &str, env: &FakeEnv) -> Result<String, SecretError> {
        expand(template, env).map(|s| s.expose().to_string())
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(exp("Bearer abc", &FakeEnv::new()).unwrap(), "Bearer abc");
    }

    #[test]
    fn env_scheme_reads_variable() {
        let env = FakeEnv::new().var("KEY", "s3cret");
        assert_eq!(exp("Bearer ${env:KEY}", &env).unwrap(), "Bearer s3cret");
    }

    #[test]
    fn braced_name_without_scheme_reads_variable() {
        let env = FakeEnv::new().var("KEY", "v");
        assert_eq!(exp("${KEY}x", &env).unwrap(), "vx");
    }

    #[test]
    fn dollar_name_reads_variable_up_to_first_non_name_char() {
        let env = FakeEnv::new().var("A_1", "v");
        assert_eq!(exp("x$A_1-y", &env).unwrap(), "xv-y");
    }

    #[test]
    fn double_dollar_is_literal_dollar() {
        assert_eq!(exp("a$$b$$$$", &FakeEnv::new()).unwrap(), "a$b$$");
    }

    #[test]
    fn double_dollar_before_name_is_not_a_reference() {
        assert_eq!(exp("$$HOME", &FakeEnv::new()).unwrap(), "$HOME");
    }

    #[test]
    fn dollar_before_digit_or_punctuation_or_end_is_literal() {
        assert_eq!(exp("$5 $- a$", &FakeEnv::new()).unwrap(), "$5 $- a$");
    }

    #[test]
    fn file_reference_trims_one_trailing_newline() {
        let env = FakeEnv::new().file("/run/k", b"tok\n\n");
        assert_eq!(exp("${file:/run/k}", &env).unwrap(), "tok\n");
    }

    #[test]
    fn file_reference_trims_one_trailing_crlf() {
        let env = FakeEnv::new().file("/run/k", b"tok\r\n");
        assert_eq!(exp("${file:/run/k}", &env).unwrap(), "tok");
    }

    #[test]
    fn file_reference_without_newline_is_whole_file() {
        let env = FakeEnv::new().file("/run/k", b"tok");
        assert_eq!(exp("${file:/run/k}", &env).unwrap(), "tok");
    }

    #[test]
    fn relative_file_resolves_against_credentials_directory() {
        let env = FakeEnv::new()
            .var("CREDENTIALS_DIRECTORY", "/run/creds")
            .file("/run/creds/k", b"tok");
        assert_eq!(exp("${file:k}", &env).unwrap(), "tok");
    }

    #[test]
    fn relative_file_without_credentials_directory_stays_relative() {
        let env = FakeEnv::new().file("keys/k", b"tok");
        assert_eq!(exp("${file:keys/k}", &env).unwrap(), "tok");
    }

    #[test]
    fn absolute_file_ignores_credentials_directory() {
        let env = FakeEnv::new()
            .var("CREDENTIALS_DIRECTORY", "/run/creds")
            .file("/etc/k", b"tok");
        assert_eq!(exp("${file:/etc/k}", &env).unwrap(), "tok");
    }

    #[test]
    fn cred_reference_reads_from_credentials_directory() {
        let env = FakeEnv::new()
            .var("CREDENTIALS_DIRECTORY", "/run/creds")
            .file("/run/creds/openai", b"sk-1\n");
        assert_eq!(exp("Bearer ${cred:openai}", &env).unwrap(), "Bearer sk-1");
    }

    #[test]
    fn cred_without_credentials_directory_is_error() {
        let err = exp("${cred:openai}", &FakeEnv::new()).unwrap_err();
        assert_eq!(err, SecretError::NoCredentialsDirectory);
    }

    #[test]
    fn cred_name_with_slash_is_error() {
        let err = validate_syntax("${cred:a/b}").unwrap_err();
        assert_eq!(err, SecretError::BadCredentialName("a/b".into()));
    }

    #[test]
    fn cred_name_dot_dot_is_error() {
        assert!(matches!(
            validate_syntax("${cred:..}"),
            Err(SecretError::BadCredentialName(_))
        ));
    }

    #[test]
    fn unset_env_is_error_naming_variable() {
        let err = exp("${env:OPENAI_KEY}", &FakeEnv::new()).unwrap_err();
        assert_eq!(err.to_string(), "env var OPENAI_KEY is not set");
    }

    #[test]
    fn unset_dollar_shorthand_is_error() {
        let err = exp("$OPENAI_KEY", &FakeEnv::new()).unwrap_err();
        assert_eq!(err, SecretError::EnvUnset("OPENAI_KEY".into()));
    }

    #[test]
    fn env_set_to_empty_expands_to_empty() {
        let env = FakeEnv::new().var("E", "");
        assert_eq!(exp("a${E}b", &env).unwrap(), "ab");
    }

    #[test]
    fn missing_file_is_error_naming_path() {
        let err = exp("${file:/nope}", &FakeEnv::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read secret file /nope: no such file"
        );
    }

    #[test]
    fn non_utf8_file_is_error() {
        let env = FakeEnv::new().file("/k", &[0xff, 0xfe]);
        assert_eq!(
            exp("${file:/k}", &env).unwrap_err(),
            SecretError::NotUtf8("/k".into())
        );
    }

    #[test]
    fn unclosed_brace_is_error() {
        assert_eq!(
            validate_syntax("Bearer ${env:KEY").unwrap_err(),
            SecretError::Unclosed
        );
    }

    #[test]
    fn dollar_brace_at_end_is_unclosed() {
        assert_eq!(validate_syntax("x${").unwrap_err(), SecretError::Unclosed);
    }

    #[test]
    fn empty_braces_are_error() {
        assert_eq!(
            validate_syntax("${}").unwrap_err(),
            SecretError::EmptyName(String::new())
        );
    }

    #[test]
    fn empty_env_name_is_error() {
        assert_eq!(
            validate_syntax("${env:}").unwrap_err(),
            SecretError::EmptyName("env".into())
        );
    }

    #[test]
    fn empty_file_path_is_error() {
        assert_eq!(
            validate_syntax("${file:}").unwrap_err(),
            SecretError::EmptyName("file".into())
        );
    }

    #[test]
    fn empty_cred_name_is_error() {
        assert_eq!(
            validate_syntax("${cred:}").unwrap_err(),
            SecretError::EmptyName("cred".into())
        );
    }

    #[test]
    fn unknown_scheme_is_error_naming_scheme() {
        let err = validate_syntax("${vault:x}").unwrap_err();
        assert_eq!(err, SecretError::UnknownScheme(Some("vault".into())));
        assert!(err.to_string().contains("\"vault\""));
    }

    #[test]
    fn empty_scheme_is_unknown_scheme() {
        assert_eq!(
            validate_syntax("${:x}").unwrap_err(),
            SecretError::UnknownScheme(None)
        );
    }

    #[test]
    fn invalid_braced_name_is_error_without_echoing_it() {
        let err = validate_syntax("${sk-live-123}").unwrap_err();
        assert_eq!(err, SecretError::BadName);
        assert!(!err.to_string().contains("sk-live"));
    }

    #[test]
    fn braced_name_starting_with_digit_is_error() {
        assert_eq!(validate_syntax("${1X}").unwrap_err(), SecretError::BadName);
    }

    #[test]
    fn validate_syntax_reads_nothing() {
        // Would fail to expand (unset, unreadable), but the syntax is fine.
        assert!(validate_syntax("$A ${env:B} ${file:/x} ${cred:c} $$").is_ok());
    }

    #[test]
    fn several_references_expand_in_order() {
        let env = FakeEnv::new().var("A", "1").var("B", "2");
        assert_eq!(exp("$A-${B}-${env:A}", &env).unwrap(), "1-2-1");
    }

    #[test]
    fn expanded_value_is_not_rescanned() {
        let env = FakeEnv::new().var("A", "${env:B}");
        assert_eq!(exp("$A", &env).unwrap(), "${env:B}");
    }

    #[test]
    fn secret_debug_and_display_are_redacted() {
        let s = Secret::new("sk-live".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
    }

    #[test]
    fn has_references_distinguishes_literals() {
        assert!(!has_references("Bearer abc $$ $5"));
        assert!(has_references("Bearer $KEY"));
    }

    #[test]
    fn credential_path_joins_directory_and_name() {
        let env = FakeEnv::new().var("CREDENTIALS_DIRECTORY", "/run/c");
        assert_eq!(
            credential_path("tls.crt", &env).unwrap(),
            PathBuf::from("/run/c/tls.crt")
        );
    }

    #[test]
    fn non_ascii_text_around_references_is_kept() {
        let env = FakeEnv::new().var("A", "1");
        assert_eq!(exp("é$Aü", &env).unwrap(), "é1ü");
    }
}
