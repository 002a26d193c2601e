//! ARCHITECTURE.md's dependency rules, checked on the source: each rule is
//! an absence ("`engine` never imports `ingress`"), and a violation names the
//! file and line. When a rule must change, change it here and in
//! ARCHITECTURE.md ("Dependency rules") in the same commit.
//!
//! The check reads code lines (comments skipped) for paths into the crate
//! (`crate::engine`, `switchboard::engine`) and into outside crates
//! (`axum::…`, `use sled`), so it sees `use` statements and inline paths
//! alike.

use regex::Regex;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// The entry points: what serves HTTP or wires the process.
const ENTRY: &[&str] = &["ingress", "admin", "dashboard", "server", "listener"];

/// The layers below them.
const LAYERS: &[&str] = &["engine", "recipe", "connector", "store"];

/// What a module may import of this crate's modules.
enum Imports {
    /// Any module but these (and the reason).
    Never(Vec<&'static str>),
    /// None but these.
    Only(&'static [&'static str]),
}

/// `ENTRY` and `LAYERS` followed by `more`.
fn entry_layers_and(more: &[&'static str]) -> Vec<&'static str> {
    ENTRY.iter().chain(LAYERS).chain(more).copied().collect()
}

/// `ENTRY` followed by `more`.
fn entry_and(more: &[&'static str]) -> Vec<&'static str> {
    ENTRY.iter().chain(more).copied().collect()
}

/// (module, what it may import of this crate, why).
fn rules() -> Vec<(&'static str, Imports, &'static str)> {
    use Imports::{Never, Only};
    let leaf = || Never(entry_layers_and(&[]));
    vec![
        (
            "engine",
            Never(entry_and(&["error"])),
            "the engine knows nothing of HTTP serving",
        ),
        (
            "recipe",
            Never(entry_and(&["engine", "store"])),
            "recipes are compiled and checked, not run or stored",
        ),
        (
            "connector",
            Never(entry_and(&["recipe", "engine", "store"])),
            "connectors know nothing of recipes, runs or the store",
        ),
        (
            "store",
            Never(entry_layers_and(&[
                "template",
                "signature",
                "time",
                "error",
            ])),
            "records are plain serde types",
        ),
        (
            "signature",
            Only(&["secret", "duration"]),
            "a leaf below connector and ingress",
        ),
        (
            "ingress",
            Never(vec!["admin", "dashboard", "server"]),
            "sibling entry points",
        ),
        (
            "admin",
            Never(vec!["ingress", "dashboard", "server"]),
            "sibling entry points",
        ),
        (
            "dashboard",
            Never(
                LAYERS
                    .iter()
                    .chain(&[
                        "ingress",
                        "server",
                        "listener",
                        "template",
                        "signature",
                        "error",
                    ])
                    .copied()
                    .collect(),
            ),
            "the dashboard reads and acts only through the admin API's types (admin::console)",
        ),
        (
            "error",
            Never(vec!["ingress", "admin", "engine", "server"]),
            "the HTTP answer type sits below the routes",
        ),
        ("template", leaf(), "a pure building block"),
        ("jsonpath", leaf(), "a pure building block"),
        ("yaml", leaf(), "a pure building block"),
        ("secret", leaf(), "a pure building block"),
        ("duration", leaf(), "a pure building block"),
        ("crash", leaf(), "a pure building block"),
        (
            "sandbox",
            Only(&[]),
            "the vendors' stand-in knows nothing of the hub",
        ),
        ("metrics", Only(&[]), "a leaf every layer records into"),
    ]
}

/// (outside crate, the only modules that import it).
const ONLY: &[(&str, &[&str])] = &[
    ("sled", &["store"]),
    // sled's epoch collector, helped by the store's group commit.
    ("crossbeam_epoch", &["store"]),
    ("postgres", &["store"]),
    ("tokio_postgres", &["store"]),
    ("reqwest", &["connector", "bin"]),
    (
        "axum",
        &[
            "ingress",
            "admin",
            "dashboard",
            "error",
            "listener",
            "sandbox",
        ],
    ),
    ("hyper", &["listener"]),
    ("hyper_util", &["listener"]),
    ("tower", &["listener"]),
    ("prometheus_client", &["metrics"]),
    ("utoipa", &["admin", "store", "error"]),
    ("utoipa_axum", &["admin"]),
    // The file formats' JSON Schemas: derived on the config types only.
    (
        "schemars",
        &["recipe", "connector", "signature", "duration"],
    ),
];

/// An inline path into an outside crate: `axum::…` (not `store::sled::…`).
static INLINE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:^|[^\w:])([a-z_]+)::").unwrap());
/// An inline path into this crate: `crate::engine`, `switchboard::engine`.
static INTERNAL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:crate|switchboard)::([a-z_]+)").unwrap());
/// A renaming in a `use` statement: ` as name`.
static RENAMED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s+as\s+[A-Za-z_][A-Za-z0-9_]*").unwrap());
/// A `use` statement (possibly over several lines).
static USES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\buse\s+([^;]*);").unwrap());

/// Files that must do no I/O, and the paths that would mean they do.
const NO_IO: &[&str] = &[
    "src/template.rs",
    "src/recipe/condition/mod.rs",
    "src/recipe/condition/eval.rs",
    "src/recipe/condition/compare.rs",
];
const IO_PATHS: &[&str] = &["tokio", "std::fs", "std::net", "reqwest", "sled"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/engine/worker.rs` → `engine`; `src/yaml.rs` → `yaml`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The production code of a file: comment lines blanked (so offsets keep
/// their line), and nothing from its `#[cfg(test)]` on. Test files are
/// empty: tests may reach up a layer to build what they check.
fn code(file: &Path) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines().peekable();
    let mut out = String::new();
    while let Some(line) = lines.next() {
        if line.trim_start() == "#[cfg(test)]" {
            // `#[cfg(test)] mod tests;` names a file of its own: skip the
            // two lines. An inline `mod tests { … }` ends the production code.
            if !lines
                .peek()
                .is_some_and(|next| next.trim_end().ends_with(';'))
            {
                break;
            }
            lines.next();
            out.push_str("\n\n");
            continue;
        }
        if !line.trim_start().starts_with("//") {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// What one `use` statement's text (after `use `) reaches: an outside
/// crate, or modules of this crate (several in a `crate::{a, b}` group).
fn used(statement: &str) -> (Option<String>, Vec<String>) {
    let statement = RENAMED.replace_all(statement, "");
    let text: String = statement.split_whitespace().collect();
    let text = text.trim_start_matches("pub").trim_start_matches("::");
    let (first, rest) = text.split_once("::").unwrap_or((text, ""));
    match first {
        "crate" | "switchboard" => {
            let modules = match rest.strip_prefix('{') {
                None => vec![rest.split("::").next().unwrap_or("").to_string()],
                Some(group) => top_level_items(group)
                    .iter()
                    .map(|item| item.split("::").next().unwrap_or("").to_string())
                    .collect(),
            };
            (None, modules)
        }
        "self" | "super" => (None, Vec::new()),
        other => (Some(other.to_string()), Vec::new()),
    }
}

/// `a::b, c::{d, e}}` → `["a::b", "c::{d, e}"]`.
fn top_level_items(group: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut depth = 0;
    for ch in group.chars() {
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = items.last_mut() {
            last.push(ch);
        }
    }
    items.retain(|i| !i.is_empty());
    items
}

/// Every reach of `module`'s file into another module or an outside crate:
/// (line, `Some(crate)` or `None`, module of this crate or "").
fn reaches(text: &str) -> Vec<(usize, Option<String>, String)> {
    let newlines: Vec<usize> = text.match_indices('\n').map(|(i, _)| i).collect();
    let line_of = |offset: usize| newlines.partition_point(|&i| i < offset) + 1;
    let mut out = Vec::new();
    let mut rest = text.to_string();
    for c in USES.captures_iter(text) {
        let whole = c.get(0).unwrap();
        let line = line_of(whole.start());
        let (outside, modules) = used(&c[1]);
        if outside.is_some() {
            out.push((line, outside, String::new()));
        }
        out.extend(modules.into_iter().map(|m| (line, None, m)));
        // Blank the statement (keeping its newlines) for the inline pass.
        let blank: String = whole
            .as_str()
            .chars()
            .map(|ch| if ch == '\n' { '\n' } else { ' ' })
            .collect();
        rest.replace_range(whole.range(), &blank);
    }
    for c in INTERNAL.captures_iter(&rest) {
        out.push((line_of(c.get(0).unwrap().start()), None, c[1].to_string()));
    }
    for c in INLINE.captures_iter(&rest) {
        let name = &c[1];
        if !["crate", "switchboard", "self", "super", "std", "core"].contains(&name) {
            out.push((
                line_of(c.get(1).unwrap().start()),
                Some(name.to_string()),
                String::new(),
            ));
        }
    }
    out
}

fn violations() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: std::collections::BTreeSet<String> =
        files.iter().map(|f| module_of(&src, f)).collect();
    let rules = rules();
    let mut found = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        let text = code(file);
        let rule = rules.iter().find(|(m, _, _)| *m == module);
        for (n, outside, target) in reaches(&text) {
            match outside {
                None => {
                    let target = target.as_str();
                    match rule {
                        Some((_, Imports::Never(banned), why))
                            if banned.contains(&target) && target != module =>
                        {
                            found.push(format!(
                                "{shown}:{n}: `{module}` never imports `{target}` ({why})"
                            ));
                        }
                        Some((_, Imports::Only(allowed), why))
                            if modules.contains(target)
                                && target != module
                                && !allowed.contains(&target) =>
                        {
                            let only = match allowed {
                                [] => "no module of this crate".to_string(),
                                _ => format!("only {}", allowed.join(", ")),
                            };
                            found.push(format!(
                                "{shown}:{n}: `{module}` imports {only}, not `{target}` ({why})"
                            ));
                        }
                        _ => {}
                    }
                }
                Some(name) => {
                    if let Some((_, only)) = ONLY.iter().find(|(k, _)| *k == name) {
                        if !only.contains(&module.as_str()) {
                            found.push(format!(
                                "{shown}:{n}: only {} import `{name}`, not `{module}`",
                                only.join(", ")
                            ));
                        }
                    }
                }
            }
        }
        if NO_IO.contains(&shown.as_str()) {
            for io in IO_PATHS {
                if text.contains(&format!("{io}::")) {
                    found.push(format!("{shown}: does no I/O, so never uses `{io}`"));
                }
            }
        }
    }
    found
}

#[test]
fn the_dependency_rules_hold_in_the_source() {
    let found = violations();
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_what_a_file_reaches() {
    let text = "use axum::http::HeaderMap;\n\
                use switchboard::store::{self, sled::SledStore};\n\
                use crate::{engine::Engine, ingress as i};\n\
                // use sled::Db;\n\
                fn f() { let c = reqwest::Client::new(); crate::admin::x(); }\n\
                use hyper as h;\n";
    let got: Vec<(usize, Option<String>, String)> = reaches(text);
    let want = [
        (1, Some("axum"), ""),
        (2, None, "store"),
        (3, None, "engine"),
        (3, None, "ingress"),
        (6, Some("hyper"), ""),
        (5, None, "admin"),
        (5, Some("reqwest"), ""),
    ];
    let want: Vec<(usize, Option<String>, String)> = want
        .iter()
        .map(|(n, c, m)| (*n, c.map(str::to_string), m.to_string()))
        .collect();
    // Comment lines are blanked by `code`, not by `reaches`: leave line 4 out.
    let got: Vec<_> = got.into_iter().filter(|(n, _, _)| *n != 4).collect();
    assert_eq!(got, want);
}
