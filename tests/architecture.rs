//! The layering the README describes, kept true: the core — `graph` (Meta's API),
//! `circuit` (the model and table) and `policy` (decisions and the exchange) — knows nothing
//! of I/O. It imports no engine (`relay`, `proxy`), no listener (`server`, `admin`), no
//! `upstream`, `store`, `signals` or `notify`, and not the configuration (each core
//! component takes its own settings section, built from `Config` at start-up). Within the
//! core, layers point down: `graph` imports neither `circuit` nor `policy`; `circuit`
//! does not import `policy`.
//!
//! The test reads `src/` and fails naming the file, the line and the import.

use std::path::{Path, PathBuf};

/// Modules of the crate a core file may name, by layer.
fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        "graph" => &["graph"],
        "circuit" => &["graph", "circuit", "metrics"],
        // `common::error` (boxed errors and their log line) is plain data; the rest of
        // `common` (the hyper body) is not.
        "policy" => &["graph", "circuit", "policy", "metrics", "common::error"],
        _ => unreachable!(),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` path in `text` (in `use` items, brace lists and expressions), as
/// (line number, `a` or `a::b`).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let first: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let tail = &after[first.len()..];
            let second: String = tail
                .strip_prefix("::")
                .map(|t| {
                    t.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect()
                })
                .unwrap_or_default();
            if !first.is_empty() {
                found.push((n + 1, format!("{first}::{second}")));
            }
            rest = after;
        }
    }
    // `use crate::{a, b::c}` lists.
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if let Some(list) = code.trim_start().strip_prefix("use crate::{") {
            for item in list.trim_end_matches(['}', ';']).split(',') {
                let item = item.trim();
                if !item.is_empty() {
                    found.push((n + 1, item.replace('{', "")));
                }
            }
        }
    }
    found
}

fn permitted(path: &str, allowed: &[&str]) -> bool {
    allowed.iter().any(|a| {
        if a.contains("::") {
            path == *a || path.starts_with(&format!("{a}::"))
        } else {
            path.split("::").next() == Some(a)
        }
    })
}

#[test]
fn the_core_imports_no_io_module_and_no_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut checked = 0;
    for layer in ["graph", "circuit", "policy"] {
        let mut files = Vec::new();
        rust_files(&root.join(layer), &mut files);
        assert!(!files.is_empty(), "no files under src/{layer}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            checked += 1;
            for (line, path) in crate_paths(&text) {
                if !permitted(&path, allowed(layer)) {
                    violations.push(format!(
                        "{}:{line}: the {layer} layer imports crate::{path}",
                        f.strip_prefix(&root).unwrap_or(&f).display()
                    ));
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} core files found");
    assert!(
        violations.is_empty(),
        "the core must not import I/O modules, the configuration or a layer above it:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_every_import_shape() {
    let text = "use crate::relay::h1;\nuse crate::{graph, proxy::Body};\nlet x = crate::store::start(); // crate::admin\n";
    let found: Vec<String> = crate_paths(text).into_iter().map(|(_, p)| p).collect();
    for p in ["relay::h1", "proxy::Body", "store::start", "graph"] {
        assert!(found.iter().any(|f| f == p), "{p} not found in {found:?}");
    }
    assert!(
        !found.iter().any(|f| f.starts_with("admin")),
        "comments are not imports"
    );
    assert!(!permitted("common::body", allowed("policy")));
    assert!(permitted("common::error", allowed("policy")));
    assert!(!permitted("policy::Reply", allowed("circuit")));
}
