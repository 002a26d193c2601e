//! `switchboard docs`: README.md's generated parts, as Markdown tables —
//! the field reference of the file formats, rendered from the JSON Schemas
//! that `switchboard schema` prints (so from the serde types that parse the
//! files and their doc comments), the condition operators from the list the
//! condition compiler accepts, and the template filters, tests and
//! functions from the list the template registry is checked against. Each
//! part is in README.md between its markers (a test compares them;
//! `SWITCHBOARD_UPDATE_DOCS=1` rewrites them).

use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use switchboard::template::reference::{Group, Kind, REFERENCE};

/// Every generated part of README.md, each between its markers
/// (`<!-- NAME:start -->` … `<!-- NAME:end -->`): the condition operators,
/// the template filters, tests and functions (general, then time), and the
/// file reference. A test holds the README's parts equal to these.
pub fn all() -> String {
    let mut out = String::new();
    for (name, text) in [
        ("operators", operators()),
        ("template-names", template_names(Group::General)),
        ("time-functions", template_names(Group::Time)),
        ("reference", reference()),
    ] {
        let _ = write!(out, "<!-- {name}:start -->\n{text}<!-- {name}:end -->\n");
    }
    out
}

/// The condition operators, from the list the compiler accepts.
fn operators() -> String {
    let mut out = String::from("| operator | operand | holds when the value… |\n|---|---|---|\n");
    for op in switchboard::recipe::condition::OPERATORS {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            op.name,
            cell(op.operand),
            cell(op.holds)
        );
    }
    out
}

/// The filters, tests and functions of one group, from the list the
/// template registry is checked against.
fn template_names(group: Group) -> String {
    let rows = REFERENCE.iter().filter(|e| e.group == group);
    let mut out = String::new();
    if group == Group::Time {
        out.push_str("| function / filter | gives |\n|---|---|\n");
        for e in rows {
            let _ = writeln!(out, "| `{}` | {} |", cell(e.usage), cell(e.gives));
        }
        return out;
    }
    out.push_str("| written | kind | gives |\n|---|---|---|\n");
    for e in rows {
        let kind = match e.kind {
            Kind::Filter => "filter",
            Kind::Test => "test",
            Kind::Function => "function",
        };
        let also = if e.aliases.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = e.aliases.iter().map(|a| format!("`{a}`")).collect();
            format!(" (also {})", names.join(", "))
        };
        let _ = writeln!(
            out,
            "| `{}` | {kind}{also} | {} |",
            cell(e.usage),
            cell(e.gives)
        );
    }
    out
}

/// The reference: one section per file format, one table per type.
pub fn reference() -> String {
    let mut out = String::new();
    for (title, schema) in [
        (
            "Recipe files (`recipes/NAME.yaml`)",
            switchboard::recipe::config::schema(),
        ),
        (
            "Shared definitions (`recipes/_shared.yaml`)",
            switchboard::recipe::shared::schema(),
        ),
        (
            "Connector files (`connectors/NAME.yaml`)",
            switchboard::connector::config::schema(),
        ),
    ] {
        let _ = writeln!(out, "### {title}\n");
        section(&schema, &mut out);
    }
    out
}

/// The root type and every type it reaches, breadth first, each once.
fn section(schema: &Value, out: &mut String) {
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let root = schema["title"].as_str().unwrap_or("File").to_string();
    let mut queue = vec![(root, schema.clone())];
    let mut seen = BTreeSet::new();
    let mut i = 0;
    while i < queue.len() {
        let (name, s) = queue[i].clone();
        i += 1;
        if !seen.insert(name.clone()) {
            continue;
        }
        let mut refs = Vec::new();
        refs_in(&s, &mut refs);
        for r in refs {
            if let Some(d) = defs.get(&r) {
                queue.push((r, d.clone()));
            }
        }
        render_type(&name, &s, out);
    }
}

/// The `$defs` names a schema refers to, in order.
fn refs_in(s: &Value, out: &mut Vec<String>) {
    match s {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.trim_start_matches("#/$defs/").to_string());
            }
            for (k, v) in m {
                if k != "$defs" {
                    refs_in(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

fn render_type(name: &str, s: &Value, out: &mut String) {
    let _ = writeln!(out, "#### `{name}`\n");
    if let Some(d) = s.get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "{}\n", d.trim());
    }
    if s.get("properties").is_some() {
        table(s, out);
        return;
    }
    let alternatives = s.get("oneOf").or_else(|| s.get("anyOf"));
    match alternatives.and_then(Value::as_array) {
        Some(alts) => {
            let _ = writeln!(out, "One of:\n");
            for a in alts {
                let _ = write!(out, "- {}", type_of(a));
                if let Some(d) = a.get("description").and_then(Value::as_str) {
                    let _ = write!(out, ": {}", cell(d));
                }
                let _ = writeln!(out);
                if a.get("properties").is_some() {
                    // A blank line first: Markdown starts a table only after one.
                    let _ = writeln!(out);
                    let mut sub = String::new();
                    table(a, &mut sub);
                    for line in sub.lines().filter(|l| !l.is_empty()) {
                        let _ = writeln!(out, "  {line}");
                    }
                    let _ = writeln!(out);
                }
            }
            let _ = writeln!(out);
        }
        None => {
            let _ = writeln!(out, "{}\n", type_of(s));
        }
    }
}

/// `| field | type | required | meaning |`, one row per property.
fn table(s: &Value, out: &mut String) {
    let required: Vec<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "| field | type | required | meaning |\n|---|---|---|---|"
    );
    for (field, p) in s["properties"].as_object().into_iter().flatten() {
        let meaning = p
            .get("description")
            .and_then(Value::as_str)
            .map(cell)
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{field}` | {} | {} | {meaning} |",
            type_of(p),
            if required.contains(&field.as_str()) {
                "yes"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out);
}

/// Text fit for one table cell.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A short name for a schema's type: `string`, `list of StepFile`, …
fn type_of(s: &Value) -> String {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return format!("`{}`", r.trim_start_matches("#/$defs/"));
    }
    if let Some(c) = s.get("const") {
        return format!("`{}`", text(c));
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| format!("`{}`", text(v)))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(alts) = s
        .get("anyOf")
        .or_else(|| s.get("oneOf"))
        .and_then(Value::as_array)
    {
        let parts: Vec<String> = alts
            .iter()
            .filter(|a| a.get("type") != Some(&Value::from("null")))
            .map(type_of)
            .collect();
        return parts.join(" or ");
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        // An inline mapping (a tagged variant): its tag and fields.
        let fields: Vec<String> = props
            .iter()
            .map(|(k, v)| match v.get("const") {
                Some(c) => format!("`{k}: {}`", text(c)),
                None => format!("`{k}`"),
            })
            .collect();
        return format!("mapping ({})", fields.join(", "));
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    match types.as_slice() {
        ["array"] => match s.get("items") {
            Some(items) => format!("list of {}", type_of(items)),
            None => "list".into(),
        },
        ["object"] => match s.get("additionalProperties") {
            Some(v @ Value::Object(_)) => format!("mapping of name → {}", type_of(v)),
            _ => "mapping".into(),
        },
        [] => "any".into(),
        ts => ts.join(" or "),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
