//! What the templates and conditions of one place in a recipe may read, and
//! the checks of their references against it.
//!
//! A template or condition names variables (`steps.contact.id`,
//! `vars.team`, `$.event.ticket.id`); each is checked here when the recipe
//! loads, so a typo is a `check` error with its position, never an undefined
//! value on the first webhook. Pure.

use super::condition::Condition;
use crate::template::{Template, Templates, ValueTemplate};
use crate::time::Calendars;
use crate::yaml::{LoadError, SourceMap};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Step id → what its call answers, for the call steps seen so far.
pub(crate) type Outputs = BTreeMap<String, Output>;

/// What a call step's output is made of.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// The fields its action's `output:` declares.
    Fields(Vec<String>),
    /// The whole response of an action (`connector.action`) without
    /// `output:`, whose fields cannot be known at load.
    Whole(String),
}

/// No step outputs (a place before any step).
pub(crate) static NO_OUTPUTS: Outputs = BTreeMap::new();

/// The names visible at one place of a recipe.
pub(crate) struct Scope<'a> {
    /// Step ids declared before this place (document order, nested steps included).
    pub steps: &'a [String],
    /// The output fields of those steps, where the action declares them.
    pub outputs: &'a Outputs,
    /// The recipe's `vars:` names.
    pub vars: &'a BTreeSet<String>,
    /// Names bound by enclosing `for_each` steps (`item`, `item_index`).
    pub locals: &'a [String],
    /// For `within_business_hours` conditions and calendar functions.
    pub calendars: &'a Calendars,
}

impl Scope<'_> {
    /// Check one dotted variable (`steps.contact.id`) a template reads.
    pub fn check_var(&self, var: &str) -> Result<(), String> {
        let mut parts = var.split('.');
        let root = parts.next().unwrap_or("");
        let second = parts.next();
        match (root, second) {
            ("event", _) | ("run", _) => Ok(()),
            ("steps", Some(id)) => {
                self.check_step(id)?;
                match parts.next() {
                    Some(field) => self.check_output(id, field),
                    None => Ok(()),
                }
            }
            ("steps", None) => Ok(()),
            ("vars", Some(v)) if self.vars.contains(v) => Ok(()),
            ("vars", Some(v)) if self.vars.is_empty() => Err(format!(
                "unknown variable `vars.{v}`: the recipe declares no `vars:` (nor does `_shared.yaml`)"
            )),
            ("vars", Some(v)) => Err(format!(
                "unknown variable `vars.{v}`, expected one of the recipe's `vars:` ({}){}",
                list(self.vars.iter()),
                hint(v, self.vars.iter().map(String::as_str))
            )),
            ("vars", None) => Ok(()),
            (local, _) if self.locals.iter().any(|l| l == local) => Ok(()),
            (other, _) => Err(format!(
                "unknown template variable `{other}`, expected `event`, `steps`, `vars` or `run`{}",
                if self.locals.is_empty() {
                    String::new()
                } else {
                    format!(" (or a loop variable: {})", list(self.locals.iter()))
                }
            )),
        }
    }

    fn check_step(&self, id: &str) -> Result<(), String> {
        if self.steps.iter().any(|s| s == id) {
            Ok(())
        } else {
            Err(format!(
                "unknown step id `{id}`, expected an earlier step: {}",
                list(self.steps.iter())
            ))
        }
    }

    /// `steps.<id>.<field>`: when the step's action declares `output:`,
    /// `field` must be one of them (a typo would otherwise never match).
    fn check_output(&self, id: &str, field: &str) -> Result<(), String> {
        let Some(Output::Fields(fields)) = self.outputs.get(id) else {
            return Ok(());
        };
        if fields.iter().any(|f| f == field) {
            return Ok(());
        }
        Err(format!(
            "step `{id}` has no output `{field}`, expected one of its action's `output:` fields: {}{}",
            list(fields.iter()),
            hint(field, fields.iter().map(String::as_str))
        ))
    }

    /// When `var` (`steps.contact.plan`) reads a field of a step whose
    /// action has no `output:`, so that [`Scope::check_var`] could not check
    /// the field: the note saying so, as `(step id, message)`.
    pub fn unchecked_field(&self, var: &str) -> Option<(String, String)> {
        let mut parts = var.split('.');
        let (Some("steps"), Some(id), Some(field)) = (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let Some(Output::Whole(action)) = self.outputs.get(id) else {
            return None;
        };
        Some((
            id.to_string(),
            format!(
                "note: `steps.{id}.{field}` is not checked: step `{id}` calls `{action}`, whose action declares no `output:`, so the step's output is the whole response (declare `output:` fields on the action to have every field a recipe reads checked)"
            ),
        ))
    }

    /// [`Scope::unchecked_field`] for a condition's JSONPath (`$.steps.contact.plan`).
    pub fn unchecked_path(&self, path: &str) -> Option<(String, String)> {
        let rest = path.strip_prefix('$').unwrap_or(path);
        self.unchecked_field(&leading_names(rest, 3).join("."))
    }

    /// Check a JSONPath of a condition: its root must be `$.event`,
    /// `$.steps`, `$.vars`, `$.run` or a loop variable, `$.steps.<id>` an
    /// earlier step (and `$.steps.<id>.<field>` one of its outputs),
    /// `$.vars.<name>` a var.
    pub fn check_path(&self, path: &str) -> Result<(), String> {
        let rest = path.strip_prefix('$').unwrap_or(path);
        let segs = leading_names(rest, 3);
        let Some(root) = segs.first() else {
            return Ok(());
        };
        let roots = ["event", "steps", "vars", "run"];
        if !roots.contains(&root.as_str()) && !self.locals.iter().any(|l| l == root) {
            let all = roots
                .iter()
                .copied()
                .chain(self.locals.iter().map(String::as_str));
            return Err(format!(
                "unknown JSONPath root `$.{root}`, expected `$.event`, `$.steps`, `$.vars` or `$.run`{}{}",
                if self.locals.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (or a loop variable: {})",
                        self.locals.iter().map(|l| format!("`$.{l}`")).collect::<Vec<_>>().join(", ")
                    )
                },
                crate::yaml::did_you_mean(root, all)
                    .map(|m| format!("; did you mean `$.{m}`?"))
                    .unwrap_or_default()
            ));
        }
        self.check_var(&segs.join("."))
    }

    /// Compile a condition (`if:`, `when:`) at `ptr` and check its paths.
    pub fn condition(
        &self,
        value: &Value,
        ptr: &str,
        map: &SourceMap,
        templates: &mut Templates,
        errors: &mut Vec<LoadError>,
    ) -> Option<Condition> {
        // A JSONPath is a mapping key: point at it, not at its operators.
        let at = |p: &str, msg: String| {
            if p.rsplit('/')
                .next()
                .is_some_and(|last| last.starts_with('$'))
            {
                map.error_at_key(p, msg)
            } else {
                map.error(p, msg)
            }
        };
        match Condition::compile(value) {
            // A list stops at its first bad item: compile each item on its
            // own, so every item's mistakes (and references) are reported.
            Err(_) if value.as_array().is_some_and(|items| items.len() > 1) => {
                for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                    self.condition(item, &format!("{ptr}/{i}"), map, templates, errors);
                }
                None
            }
            Err(e) => {
                errors.push(at(&format!("{ptr}{}", e.pointer), e.message));
                None
            }
            Ok(mut c) => {
                for (p, msg) in c.bind_calendars(self.calendars) {
                    errors.push(map.error(&format!("{ptr}{p}"), msg));
                }
                // Templated operands (`gte: "{{ vars.min }}"`): compiled
                // here as every template is, their variables checked like
                // any template's.
                c.bind_templates(|source, p| {
                    templates.compile_at(source, map, &format!("{ptr}{p}"), errors)
                });
                for (p, t) in c.templates() {
                    check_templates(
                        &ValueTemplate::String(t),
                        &format!("{ptr}{p}"),
                        self,
                        templates,
                        map,
                        errors,
                    );
                }
                for (p, path) in c.paths() {
                    if let Err(msg) = self.check_path(&path) {
                        errors.push(at(&format!("{ptr}{p}"), msg));
                    }
                }
                Some(c)
            }
        }
    }
}

/// Check every variable the string leaves of `t` read against `scope`
/// (the names it uses were checked when it compiled,
/// [`Templates::compile_at`]).
pub(crate) fn check_templates(
    t: &ValueTemplate,
    ptr: &str,
    scope: &Scope<'_>,
    templates: &Templates,
    map: &SourceMap,
    errors: &mut Vec<LoadError>,
) {
    let mut leaves: Vec<(String, &Template)> = Vec::new();
    templates.leaves(t, ptr.to_string(), &mut leaves);
    for (p, leaf) in leaves {
        for var in templates.variables(leaf) {
            if let Err(msg) = scope.check_var(&var) {
                errors.push(map.error(&p, msg));
            }
        }
        for name in templates.unknown_calendars(leaf) {
            errors.push(map.error(&p, crate::time::calendar::unknown(&name, scope.calendars).0));
        }
    }
}

/// `; did you mean `x`?` when a candidate is near `word`, else nothing.
fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    crate::yaml::did_you_mean(word, candidates)
        .map(|m| format!("; did you mean `{m}`?"))
        .unwrap_or_default()
}

/// The first `n` plain member names of a JSONPath after `$` (`.a.b` / `['a']['b']`).
fn leading_names(mut rest: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(r.len());
            if end == 0 {
                break;
            }
            out.push(r[..end].to_string());
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['").or_else(|| rest.strip_prefix("[\"")) {
            let Some(end) = r.find(['\'', '"']) else {
                break;
            };
            out.push(r[..end].to_string());
            rest = r[end + 1..].strip_prefix(']').unwrap_or("");
        } else {
            break;
        }
    }
    out
}

/// `` `a`, `b` `` — or "(none are defined)".
pub(crate) fn list<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<String> = items.map(|s| format!("`{s}`")).collect();
    if v.is_empty() {
        "(none are defined)".into()
    } else {
        v.join(", ")
    }
}

pub(crate) fn sorted<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = keys.cloned().collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_names_of_paths() {
        assert_eq!(
            leading_names(".steps.contact.id", 2),
            vec!["steps", "contact"]
        );
        assert_eq!(leading_names("['steps']['a b']", 2), vec!["steps", "a b"]);
        assert_eq!(leading_names(".event", 2), vec!["event"]);
        assert!(leading_names("[0]", 2).is_empty());
    }
}
