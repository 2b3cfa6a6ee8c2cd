//! Checks that read the library's sources. The library's layers read one way: a module may use modules of its own layer or of the
//! layers below it, never one above (docs/architecture.md). This test reads the sources and
//! fails naming the file, the line and the rule broken; it needs no root and no tool.
//!
//! Only code counts: comment lines (doc links included) and test code (a file's part after
//! `#[cfg(test)]`, files under a `tests/` directory or named `tests.rs`) may reach anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/lib.rs` with its layer: higher numbers sit higher.
const LAYERS: &[(&str, u8, &str)] = &[
    ("sys", 0, "every system call that needs `unsafe`"),
    ("clock", 0, "time stamps"),
    ("hex", 0, "hexadecimal text"),
    ("text", 0, "job-side text made safe for logs"),
    ("config", 1, "the site's TOML, validated"),
    ("job", 2, "the job as the runner describes it"),
    ("protocol", 3, "the pipes across the privilege boundary"),
    ("supervisor", 3, "signals, timeouts, sweeping"),
    ("fs", 3, "the job's directories and scripts"),
    ("authz", 4, "who may run the job"),
    ("privdrop", 4, "becoming the job's user"),
    ("jobenv", 4, "the job's environment"),
    ("audit", 4, "the audit log and what errors may say"),
    ("shell", 4, "the shell executor"),
    ("batch", 4, "the batch executors"),
    ("container", 4, "a job's image: podman (charliecloud later)"),
    ("stages", 5, "the runner's stages, both sides"),
];

/// Modules of lib.rs that are not part of the layering (test helpers).
const OUTSIDE: &[&str] = &["test_support"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn layer_of(name: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, l, _)| *l)
}

/// The top-level modules lib.rs declares.
fn declared_modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read src/lib.rs");
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_string())
        })
        .collect()
}

/// Every `.rs` file of a module (a file `src/m.rs` or a directory `src/m/`), test files left out.
fn files_of(module: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut stack = vec![src().join(module)];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if path.is_dir() {
                if name != "tests" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A file's code: everything before its inline test module (`#[cfg(test)]` then `mod x {`);
/// a `#[cfg(test)] mod tests;` line further up only declares a test file, left out anyway.
fn code_of(text: &str) -> &str {
    let mut at = 0;
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        let next = lines.peek().map(|l| l.trim_end()).unwrap_or_default();
        if line.trim() == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{') {
            return &text[..at];
        }
        at += line.len();
    }
    text
}

/// The top-level module names a line of code reaches through `crate::`, grouped imports
/// (`use crate::{a, b::c}`) included.
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    out.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        rest = after;
    }
    out
}

/// A grouped import that spans lines: `use crate::{\n    a,\n    b::c,\n};` joined into one.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some((at, mut acc)) = open.take() {
            acc.push_str(line.trim());
            if line.contains('}') {
                out.push((at, acc));
            } else {
                open = Some((at, acc));
            }
            continue;
        }
        if line.contains("crate::{") && !line.contains('}') {
            open = Some((i + 1, line.to_string()));
        } else {
            out.push((i + 1, line.to_string()));
        }
    }
    if let Some(o) = open {
        out.push(o);
    }
    out
}

#[test]
fn every_module_of_lib_rs_has_a_layer() {
    let unknown: Vec<String> = declared_modules()
        .into_iter()
        .filter(|m| layer_of(m).is_none() && !OUTSIDE.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "modules of src/lib.rs without a layer in tests/layers.rs (add them, and to docs/architecture.md): {unknown:?}"
    );
}

#[test]
fn no_module_uses_a_module_of_a_higher_layer() {
    let mut broken: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (module, layer, _) in LAYERS {
        for file in files_of(module) {
            let text = std::fs::read_to_string(&file).expect("read source");
            for (n, line) in logical_lines(code_of(&text)) {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for used in crate_paths(&line) {
                    let Some(used_layer) = layer_of(&used) else {
                        continue;
                    };
                    if used_layer > *layer {
                        broken.entry(module.to_string()).or_default().push(format!(
                            "{}:{n}: {module} (layer {layer}) uses {used} (layer {used_layer})",
                            file.strip_prefix(src()).unwrap_or(&file).display()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "upward uses (a module may use its own layer and those below):\n{}",
        broken
            .values()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_layer_reader_finds_grouped_and_plain_paths() {
    assert_eq!(
        crate_paths("use crate::{config, fs::JobPaths, self};"),
        vec!["config", "fs"]
    );
    assert_eq!(
        crate_paths("let x = crate::stages::run(crate::job::X);"),
        vec!["stages", "job"]
    );
    let joined = logical_lines("use crate::{\n    a,\n    b::c,\n};\nfn f() {}");
    assert_eq!(crate_paths(&joined[0].1), vec!["a", "b"]);
}

/// A module's code: every file's part before its inline test module, comment lines left out.
fn module_code(module: &str) -> String {
    let mut code = String::new();
    for file in files_of(module) {
        let text = std::fs::read_to_string(&file).expect("read source");
        for line in code_of(&text)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
        {
            code.push_str(line);
            code.push('\n');
        }
    }
    code
}

fn has_word(code: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(word)
        .any(|(at, _)| !code[..at].ends_with(ident) && !code[at + word.len()..].starts_with(ident))
}

/// "Used by" in docs/configuration.md is true: the module named reads the key's field (a
/// stale name after a module moved fails here), and a key no module acts on is read by none
/// and says why in its rule.
#[test]
fn every_key_is_read_by_the_module_it_names() {
    use jacamar::config::schema::{KEYS, NO_EFFECT};
    for k in KEYS {
        let field = k.key.replace('-', "_");
        if k.used_by == NO_EFFECT {
            assert!(
                !k.rule.is_empty(),
                "{}.{}: a key without effect says why",
                k.table,
                k.key
            );
            for (m, _, _) in LAYERS.iter().filter(|(m, _, _)| *m != "config") {
                assert!(
                    !has_word(&module_code(m), &format!(".{field}")),
                    "{}.{}: marked without effect, but {m} reads it",
                    k.table,
                    k.key
                );
            }
            continue;
        }
        assert!(
            layer_of(k.used_by).is_some(),
            "{}.{}: used by {:?}, which is not a module of src/",
            k.table,
            k.key,
            k.used_by
        );
        assert!(
            has_word(&module_code(k.used_by), &field),
            "{}.{}: used by {}, whose code never names {field}",
            k.table,
            k.key,
            k.used_by
        );
    }
}
