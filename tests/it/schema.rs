//! `switchboard schema recipe|shared|connector`: the JSON Schemas editors
//! read, generated from the serde types that parse the files. Every shipped
//! file must be valid against its schema (so an editor never flags a file
//! the hub accepts), and the schema must refuse what the loader refuses.

use crate::utils::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The schema `switchboard schema KIND` prints, compiled by boon.
struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Validator {
    fn new(kind: &str) -> Validator {
        // `output`, not `output_within`: the schema is longer than a pipe's buffer.
        let out = command(&["schema", kind]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let schema: Value = serde_json::from_str(&stdout(&out)).expect("the schema is JSON");
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{schema}"
        );
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        let loc = format!("https://switchboard.invalid/{kind}.json");
        compiler.add_resource(&loc, schema).unwrap();
        let index = compiler
            .compile(&loc, &mut schemas)
            .unwrap_or_else(|e| panic!("the {kind} schema compiles: {e:#}"));
        Validator { schemas, index }
    }

    /// The file as the hub reads it (YAML 1.2 core, through our loader), validated.
    fn check(&self, file: &Path, text: &str) -> Result<(), String> {
        let (value, _) = switchboard::yaml::load_value(file, text).map_err(|e| e.to_string())?;
        self.schemas
            .validate(&value, self.index)
            .map_err(|e| format!("{}: {e:#}", file.display()))
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
}

#[test]
fn every_shipped_recipe_and_connector_is_valid_against_its_schema() {
    let recipe = Validator::new("recipe");
    let shared = Validator::new("shared");
    let connector = Validator::new("connector");
    let mut files = Vec::new();
    yaml_files(&repo().join("recipes"), &mut files);
    let (mut recipes, mut shareds) = (0, 0);
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let is_shared = f.file_name().is_some_and(|n| n == "_shared.yaml");
        let v = if is_shared { &shared } else { &recipe };
        if is_shared {
            shareds += 1;
        } else {
            recipes += 1;
        }
        if let Err(e) = v.check(f, &text) {
            problems.push(e);
        }
    }
    let mut connectors = Vec::new();
    yaml_files(&repo().join("connectors"), &mut connectors);
    for f in &connectors {
        let text = std::fs::read_to_string(f).unwrap();
        if let Err(e) = connector.check(f, &text) {
            problems.push(e);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // recipes/ and recipes/support/ were both read.
    assert!(
        recipes >= 10 && shareds >= 1,
        "{recipes} recipes, {shareds} shared"
    );
    assert!(connectors.len() >= 10, "{connectors:?}");
}

#[test]
fn the_schemas_refuse_what_the_loader_refuses() {
    let recipe = Validator::new("recipe");
    let connector = Validator::new("connector");
    let ok_recipe = "name: r\non: { connector: zendesk, event: ticket.created }\nsteps:\n  - id: tag\n    call: zendesk.add_tags\n    with: { ticket_id: 1, tags: [a] }\n";
    let f = Path::new("recipes/r.yaml");
    recipe.check(f, ok_recipe).unwrap();
    for (bad, what) in [
        (ok_recipe.replace("steps:", "stpes:"), "stpes"),
        (ok_recipe.replace("with:", "wiht:"), "wiht"),
        (ok_recipe.replace("name: r\n", ""), "name"),
        (
            ok_recipe.replace(
                "event: ticket.created",
                "event: ticket.created, missed: never",
            ),
            "/on/missed",
        ),
    ] {
        let e = recipe.check(f, &bad).expect_err(&bad);
        assert!(e.contains(what), "{e}");
    }

    let ok_connector = "name: c\nbase_url: https://api.example.com\nwebhook:\n  signature: { scheme: stripe, secret: s, tolerance: 5m }\n  event_type: { path: $.type }\nlimits: { rate: 10/1s }\nactions:\n  get:\n    method: post\n    path: /x\n    timeout: 30\n";
    let f = Path::new("connectors/c.yaml");
    connector.check(f, ok_connector).unwrap();
    for bad in [
        ok_connector.replace("method: post", "method: GETT"),
        ok_connector.replace("rate: 10/1s", "rate: fast"),
        // A field of another scheme.
        ok_connector.replace("tolerance: 5m", "prefix: v1="),
        ok_connector.replace("{ path: $.type }", "{ pth: $.type }"),
        ok_connector.replace("timeout: 30", "timeout: [30]"),
    ] {
        assert!(connector.check(f, &bad).is_err(), "{bad}");
    }
}

/// README's generated parts — the File reference, the condition operators,
/// the template filters, tests and functions — are what `switchboard docs`
/// prints (from the types' doc comments and the code's own lists), each
/// between its markers. `SWITCHBOARD_UPDATE_DOCS=1 cargo test --test it
/// schema::` rewrites them.
#[test]
fn the_readme_reference_parts_are_generated_from_the_code() {
    let out = command(&["docs"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let generated = stdout(&out);
    let part = |text: &str, name: &str| -> Option<(usize, usize)> {
        let start = format!("<!-- {name}:start -->\n");
        let from = text.find(&start)? + start.len();
        let to = text[from..].find(&format!("<!-- {name}:end -->"))? + from;
        Some((from, to))
    };
    let names = ["operators", "template-names", "time-functions", "reference"];
    let path = repo().join("README.md");
    let mut readme = std::fs::read_to_string(&path).unwrap();
    let mut differ = Vec::new();
    for name in names {
        let (f, t) = part(&generated, name).unwrap_or_else(|| panic!("docs prints `{name}`"));
        let want = &generated[f..t];
        assert!(want.lines().count() > 10, "{name}: {want}");
        let (from, to) =
            part(&readme, name).unwrap_or_else(|| panic!("README has the markers of `{name}`"));
        if readme[from..to] != *want {
            differ.push(name);
            readme = format!("{}{want}{}", &readme[..from], &readme[to..]);
        }
    }
    assert!(generated.contains("#### `StepFile`") && generated.contains("#### `ActionFile`"));
    assert!(
        generated.contains("| `starts_with` |") && generated.contains("`x \\| default('there')`")
    );
    if std::env::var_os("SWITCHBOARD_UPDATE_DOCS").is_some() {
        std::fs::write(&path, readme).unwrap();
        return;
    }
    assert!(
        differ.is_empty(),
        "README.md's {differ:?} differ from `switchboard docs`: run SWITCHBOARD_UPDATE_DOCS=1 cargo test --test it schema::"
    );
}
