//! `for_each:` with `steps:` — run steps once per item of a list.

use super::{Compiler, Step};
use crate::recipe::config::StepFile;
use crate::template::{Template, ValueTemplate};
use serde_json::Value;

/// Most items one `for_each` iterates; a longer list fails the step (the
/// run's record grows with every item's steps, so the bound keeps a run
/// record small enough to rewrite at every checkpoint).
pub const MAX_FOR_EACH_ITEMS: usize = 100;

/// Names a loop may not take: the context's own roots.
const RESERVED: &[&str] = &["event", "steps", "vars", "run", "shared"];

#[derive(Debug)]
pub struct ForEachStep {
    /// A list literal or a template rendering to a list.
    pub items: ValueTemplate,
    /// The item's name in templates (default `item`); its index is `<as>_index`.
    pub as_name: String,
    pub steps: Vec<Step>,
}

impl ForEachStep {
    pub fn index_name(&self) -> String {
        format!("{}_index", self.as_name)
    }
}

pub(super) fn compile(
    cx: &mut Compiler<'_>,
    s: &StepFile,
    id: &str,
    ptr: &str,
) -> Option<ForEachStep> {
    let source = s.for_each.as_ref()?;
    let p = format!("{ptr}/for_each");
    let as_name = s.as_name.clone().unwrap_or_else(|| "item".into());
    if !super::valid_id(&as_name) || RESERVED.contains(&as_name.as_str()) {
        cx.error(
            &format!("{ptr}/as"),
            format!(
                "invalid loop name `{as_name}`, expected letters, digits and `_`, and not one of {}",
                RESERVED.join(", ")
            ),
        );
    } else if cx.locals.contains(&as_name) {
        cx.error(
            &format!("{ptr}/as"),
            format!("loop name `{as_name}` is already used by an enclosing `for_each`: give this one another `as:`"),
        );
    }
    let items = cx.value_template(source, &p);
    if let Some(items) = &items {
        if let Some(known) = known_value(items, cx.var_values) {
            match known {
                Value::Array(a) if a.len() > MAX_FOR_EACH_ITEMS => cx.error(
                    &p,
                    format!(
                        "`for_each` over {} items, more than the maximum of {MAX_FOR_EACH_ITEMS}",
                        a.len()
                    ),
                ),
                Value::Array(_) => {}
                other => cx.error(
                    &p,
                    format!("`for_each` needs a list, this is {}", describe(&other)),
                ),
            }
        }
    }
    let Some(files) = &s.steps else {
        cx.error(ptr, "a `for_each` needs `steps:` to run for each item");
        return None;
    };
    let index = format!("{as_name}_index");
    cx.locals.push(as_name.clone());
    cx.locals.push(index);
    let steps = cx.steps(files, &format!("{ptr}/steps"), Some(id));
    cx.locals.truncate(cx.locals.len() - 2);
    if files.is_empty() {
        cx.error(
            &format!("{ptr}/steps"),
            "a `for_each` needs at least one step",
        );
    }
    Some(ForEachStep {
        items: items?,
        as_name,
        steps,
    })
}

/// The value `items` has whatever the event: a literal, or exactly
/// `{{ vars.NAME }}` of a declared var.
fn known_value(items: &ValueTemplate, vars: &Value) -> Option<Value> {
    match items {
        ValueTemplate::Literal(v) => Some(v.clone()),
        ValueTemplate::Array(a) => Some(Value::Array(vec![Value::Null; a.len()])),
        ValueTemplate::Object(_) => Some(Value::Object(Default::default())),
        ValueTemplate::String(Template::Literal(s)) => Some(Value::String(s.clone())),
        ValueTemplate::String(Template::Typed { source, .. }) => {
            let expr = source.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
            let name = expr.strip_prefix("vars.")?;
            if !super::valid_id(name) {
                return None;
            }
            vars.get(name).cloned()
        }
        ValueTemplate::String(Template::Text { .. }) => Some(Value::String(String::new())),
    }
}

/// "a string", "a mapping", … for error messages.
pub fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
