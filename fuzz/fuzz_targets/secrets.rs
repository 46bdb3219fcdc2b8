//! Defends PITFALLS.md 20 and SPEC.md §2 "Secrets never appear in logs, errors or --check":
//! secret expansion and config parsing never panic on any input, and no error (nor the
//! redacted `Debug` of a parsed config) ever contains a secret value. The fake environment
//! answers every variable and file with `S3CR3T-VALUE`, except `CREDENTIALS_DIRECTORY`, which
//! is a directory path (not a secret) that error messages may legitimately name.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelgate::secrets::{expand, validate_syntax, SecretEnv};

const SECRET: &str = "S3CR3T-VALUE";

struct FakeEnv;

impl SecretEnv for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        if name == "CREDENTIALS_DIRECTORY" {
            Some("/run/credentials/modelgate.service".to_string())
        } else {
            Some(SECRET.to_string())
        }
    }
    fn read_file(&self, _path: &Path) -> std::io::Result<Vec<u8>> {
        Ok(format!("{SECRET}\n").into_bytes())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Messages may quote the input; then the value is the attacker's own text, not a secret.
    if text.contains(SECRET) {
        return;
    }
    let _ = validate_syntax(text);
    match expand(text, &FakeEnv) {
        Ok(s) => {
            assert!(!format!("{s:?}").contains(SECRET), "Debug shows the secret");
            assert!(!format!("{s}").contains(SECRET), "Display shows the secret");
        }
        Err(e) => assert!(
            !e.to_string().contains(SECRET),
            "error shows the secret: {e}"
        ),
    }
    for env in [None, Some(&FakeEnv as &dyn SecretEnv)] {
        match modelgate::config::from_str(text, env) {
            Ok(cfg) => assert!(!format!("{cfg:?}").contains(SECRET), "config Debug leaks"),
            Err(problems) => {
                for p in problems {
                    assert!(
                        !p.to_string().contains(SECRET),
                        "problem shows the secret: {p}"
                    );
                }
            }
        }
    }
});
