//! Keeps the layer map of docs/ARCHITECTURE.md honest: a module may use modules of its own
//! layer or below, never above (L0 pure < L1 transport < L2 protocol < L3 runtime).

use std::fs;
use std::path::Path;

fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "buf" | "balance" | "slab" | "timer" | "config" | "secrets" | "auth" | "scan"
        | "router" | "h1" | "error" | "usage" | "metrics" | "accesslog" | "discovery"
        | "multipart" | "ratelimit" | "profile" => 0,
        "net" => 1,
        "conn" | "upstream" | "admin" => 2,
        "cli" | "server" | "worker" | "resolver" | "health" | "prober" | "ready" | "main" => 3,
        _ => return None,
    })
}

/// The top-level module a file under src/ belongs to.
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Every `crate::NAME` mentioned in the source (uses and paths alike).
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    // `use crate::{a, b}` groups.
    let mut rest = text;
    while let Some(i) = rest.find("crate::{") {
        rest = &rest[i + "crate::{".len()..];
        let end = rest.find('}').unwrap_or(rest.len());
        for part in rest[..end].split(',') {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let module = module_of(&file, &src);
        if module == "lib" {
            continue;
        }
        let Some(own) = layer(&module) else {
            violations.push(format!(
                "{}: module `{module}` has no layer in tests/layering.rs",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(&file).expect("readable file");
        for used in crate_refs(&text) {
            if let Some(theirs) = layer(&used) {
                if theirs > own {
                    violations.push(format!(
                        "{}: `{module}` (L{own}) uses `{used}` (L{theirs})",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_uses() {
    let refs = crate_refs("use crate::{net::Io, buf};\nlet x = crate::worker::Control;");
    assert!(refs.contains(&"net".to_string()));
    assert!(refs.contains(&"buf".to_string()));
    assert!(refs.contains(&"worker".to_string()));
}
