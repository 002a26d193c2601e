//! Compiled steps: the closed set of step kinds, and their compilation.
//!
//! A step in a recipe file is `id`, `if` and exactly one kind key
//! ([`config::KIND_KEYS`]). [`Compiler::steps`] checks that, then hands the
//! step to its kind's compile function (one file per kind in this folder),
//! which returns the [`StepKind`] variant owning that kind's fields. Steps
//! nest (`switch` cases and `for_each` bodies hold steps), and step ids are
//! unique in the whole recipe, so `steps.<id>` is never ambiguous.
//!
//! Adding a kind: an optional field in [`config::StepFile`] (and its key in
//! [`config::StepFile::kinds`]), a variant here, a `compile` function in a
//! file of this folder, and an `execute` function in `engine::step`.

pub mod assign;
pub(crate) mod call;
pub mod for_each;
mod set;
pub mod state;
mod stop;
mod switch;
pub mod wait;

pub use assign::{AssignStep, AssignStrategy, LoadSource, AGENT, MAX_AGENTS};
pub use call::CallStep;
pub use for_each::{ForEachStep, MAX_FOR_EACH_ITEMS};
pub use set::SetStep;
pub use state::{StateAction, StateStep};
pub use stop::{StopStatus, StopStep};
pub use switch::{Case, SwitchStep};
pub use wait::{Awaited, WaitForStep, WaitStep, WaitUntilStep};

use super::condition::Condition;
use super::config::{self, StepFile};
use super::scope::{check_templates, Output, Scope};
use crate::connector::Connectors;
use crate::template::{Template, Templates, ValueTemplate};
use crate::time::Calendars;
use crate::yaml::{LoadError, SourceMap};
use serde_json::Value;
use std::collections::BTreeSet;

/// One compiled step.
#[derive(Debug)]
pub struct Step {
    /// Unique in the recipe; later steps read `steps.<id>`. Defaults to
    /// `step<N>` (N: 1-based position among its siblings; nested defaults
    /// are prefixed with their parent's id).
    pub id: String,
    /// The step's `if`; when it does not hold the step is skipped (output `null`).
    pub condition: Option<Condition>,
    pub kind: StepKind,
    /// Where the step is in its file (for load-time warnings about it).
    pub at: crate::yaml::Pos,
}

/// What a step does. Closed: each variant owns its kind's fields.
#[derive(Debug)]
pub enum StepKind {
    /// Call a connector's action.
    Call(CallStep),
    /// Compute named values.
    Set(SetStep),
    /// Read or change recipe state (values, counters).
    State(StateStep),
    /// Pick an agent from a list.
    Assign(AssignStep),
    /// End the run here.
    Stop(StopStep),
    /// Run the steps of the first case that holds.
    Switch(SwitchStep),
    /// Run steps once per item of a list.
    ForEach(ForEachStep),
    /// Park the run for a duration.
    Wait(WaitStep),
    /// Park the run until a time.
    WaitUntil(WaitUntilStep),
    /// Park the run until a correlated event, or a timeout.
    WaitFor(WaitForStep),
}

impl StepKind {
    /// What a step record's `call` field says: `connector.action` for a call,
    /// the kind key otherwise.
    pub fn label(&self) -> String {
        match self {
            StepKind::Call(c) => c.name(),
            StepKind::Set(_) => "set".into(),
            StepKind::State(s) => format!("state.{}", s.action.name()),
            StepKind::Assign(_) => "assign".into(),
            StepKind::Stop(_) => "stop".into(),
            StepKind::Switch(_) => "switch".into(),
            StepKind::ForEach(_) => "for_each".into(),
            StepKind::Wait(_) => "wait".into(),
            StepKind::WaitUntil(_) => "wait_until".into(),
            StepKind::WaitFor(_) => "wait_for".into(),
        }
    }

    /// The steps nested in this one, in document order.
    pub fn children(&self) -> Vec<&Step> {
        match self {
            StepKind::Switch(s) => s.cases.iter().flat_map(|c| &c.steps).collect(),
            StepKind::ForEach(f) => f.steps.iter().collect(),
            _ => Vec::new(),
        }
    }
}

impl Step {
    /// This step and every step nested in it, depth first.
    pub fn walk<'a>(&'a self, out: &mut Vec<&'a Step>) {
        out.push(self);
        for c in self.kind.children() {
            c.walk(out);
        }
    }
}

/// Everything compiling a recipe's steps needs, passed as one value.
pub(crate) struct Compiler<'a> {
    pub map: &'a SourceMap,
    pub connectors: &'a Connectors,
    pub templates: &'a mut Templates,
    pub errors: &'a mut Vec<LoadError>,
    /// The recipe's `vars:` names.
    pub vars: &'a BTreeSet<String>,
    /// The recipe's `vars:` values, for checks knowable at load (a `for_each` over a var).
    pub var_values: &'a Value,
    /// Business-hours calendars of `recipes/_shared.yaml`.
    pub calendars: &'a Calendars,
    /// The definitions of `recipes/_shared.yaml` (scenarios).
    pub shared: &'a super::shared::Shared,
    /// Every step id declared so far, in document order.
    pub seen: Vec<String>,
    /// The `output:` fields of the call steps seen so far (by step id).
    pub outputs: super::scope::Outputs,
    /// Names bound by enclosing `for_each` steps.
    pub locals: Vec<String>,
    /// The recipe's trigger connector (none for a schedule): the default
    /// connector of `wait_for` and `cancel_on`.
    pub trigger_connector: Option<&'a str>,
    /// Notes for `check` (not errors): a field read of a step whose action
    /// has no `output:`, once per step (its id, the note at the first read).
    pub notes: Vec<(String, LoadError)>,
}

impl Compiler<'_> {
    pub fn error(&mut self, ptr: &str, msg: impl Into<String>) {
        let e = self.map.error(ptr, msg);
        self.errors.push(e);
    }

    /// Compile a condition at `ptr`, checking its references.
    pub fn condition(&mut self, v: &Value, ptr: &str) -> Option<Condition> {
        let scope = Scope {
            steps: &self.seen,
            outputs: &self.outputs,
            vars: self.vars,
            locals: &self.locals,
            calendars: self.calendars,
        };
        let mut c = scope.condition(v, ptr, self.map, self.templates, self.errors)?;
        let mut unchecked = Vec::new();
        for (p, path) in c.paths() {
            if let Some(n) = scope.unchecked_path(&path) {
                unchecked.push((n, self.map.error_at_key(&format!("{ptr}{p}"), "")));
            }
        }
        for (p, t) in c.templates() {
            for var in self.templates.variables(&t) {
                if let Some(n) = scope.unchecked_field(&var) {
                    unchecked.push((n, self.map.error(&format!("{ptr}{p}"), "")));
                }
            }
        }
        for ((id, message), at) in unchecked {
            self.note(id, LoadError { message, ..at });
        }
        Some(c)
    }

    /// Keep `note` about step `id` unless one was kept already: `check`
    /// says it once per step.
    fn note(&mut self, id: String, note: LoadError) {
        if !self.notes.iter().any(|(n, _)| *n == id) {
            self.notes.push((id, note));
        }
    }

    /// Compile a template string at `ptr`, checking its references.
    pub fn template(&mut self, source: &str, ptr: &str) -> Option<Template> {
        let t = self
            .templates
            .compile_at(source, self.map, ptr, self.errors)?;
        self.check(&ValueTemplate::String(t.clone()), ptr);
        Some(t)
    }

    /// Compile every string leaf of `v` at `ptr`, checking their references.
    pub fn value_template(&mut self, v: &Value, ptr: &str) -> Option<ValueTemplate> {
        let t = self
            .templates
            .compile_value_at(v, self.map, ptr, self.errors)?;
        self.check(&t, ptr);
        Some(t)
    }

    fn check(&mut self, t: &ValueTemplate, ptr: &str) {
        let scope = Scope {
            steps: &self.seen,
            outputs: &self.outputs,
            vars: self.vars,
            locals: &self.locals,
            calendars: self.calendars,
        };
        check_templates(t, ptr, &scope, self.templates, self.map, self.errors);
        let mut leaves = Vec::new();
        self.templates.leaves(t, ptr.to_string(), &mut leaves);
        let mut unchecked = Vec::new();
        for (p, leaf) in leaves {
            for var in self.templates.variables(leaf) {
                if let Some((id, message)) = scope.unchecked_field(&var) {
                    unchecked.push((id, self.map.error(&p, message)));
                }
            }
        }
        for (id, note) in unchecked {
            self.note(id, note);
        }
    }

    /// Compile a list of sibling steps at `ptr` (`/steps`, `/steps/2/steps`).
    /// `parent` names the enclosing step, for default ids.
    pub fn steps(&mut self, files: &[StepFile], ptr: &str, parent: Option<&str>) -> Vec<Step> {
        // Exact: a Vec grown by `push` has room for four 432-byte steps,
        // 1.3 KiB unused in a one-step recipe (×10,000 recipes).
        let mut out = Vec::with_capacity(files.len());
        for (i, s) in files.iter().enumerate() {
            let p = format!("{ptr}/{i}");
            let id = s.id.clone().unwrap_or_else(|| match parent {
                Some(parent) => format!("{parent}_step{}", i + 1),
                None => format!("step{}", i + 1),
            });
            if let Some(step) = self.step(s, id.clone(), &p) {
                if let StepKind::Call(c) = &step.kind {
                    if !self.outputs.contains_key(&id) {
                        let output = if c.action.output.is_empty() {
                            Output::Whole(c.name())
                        } else {
                            Output::Fields(c.action.output.iter().map(|(k, _)| k.clone()).collect())
                        };
                        self.outputs.insert(id.clone(), output);
                    }
                }
                out.push(step);
            }
            // Later steps are checked against it even when it has an error.
            if !self.seen.contains(&id) {
                self.seen.push(id);
            }
        }
        out
    }

    fn step(&mut self, s: &StepFile, id: String, ptr: &str) -> Option<Step> {
        let before = self.errors.len();
        if !valid_id(&id) {
            self.error(
                &format!("{ptr}/id"),
                format!("invalid step id `{id}`, expected letters, digits and `_`, not starting with a digit"),
            );
        } else if self.seen.contains(&id) {
            self.error(&format!("{ptr}/id"), format!("duplicate step id `{id}`"));
        }
        let condition = s
            .condition
            .as_ref()
            .and_then(|v| self.condition(v, &format!("{ptr}/if")));
        let kinds = s.kinds();
        let expected = config::KIND_KEYS.join(", ");
        let kind = match kinds.as_slice() {
            [] => {
                self.error(
                    ptr,
                    format!("a step needs a kind: expected exactly one of {expected}"),
                );
                None
            }
            [_, second, ..] => {
                let e = self.map.error_at_key(
                    &format!("{ptr}/{second}"),
                    format!(
                        "a step has exactly one kind, this one gives {}: expected exactly one of {expected}",
                        kinds.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" and ")
                    ),
                );
                self.errors.push(e);
                None
            }
            [kind] => {
                self.misplaced(s, kind, ptr);
                match *kind {
                    "call" => call::compile(self, s, ptr).map(StepKind::Call),
                    "scenario" => call::compile_scenario(self, s, ptr).map(StepKind::Call),
                    "set" => set::compile(self, s, ptr).map(StepKind::Set),
                    "state" => state::compile(self, s, ptr).map(StepKind::State),
                    "assign" => assign::compile(self, s, ptr).map(StepKind::Assign),
                    "stop" => stop::compile(self, s, ptr).map(StepKind::Stop),
                    "switch" => switch::compile(self, s, &id, ptr).map(StepKind::Switch),
                    "for_each" => for_each::compile(self, s, &id, ptr).map(StepKind::ForEach),
                    "wait" => s
                        .wait
                        .as_deref()
                        .and_then(|w| wait::compile_wait(self, w, ptr))
                        .map(StepKind::Wait),
                    "wait_until" => s
                        .wait_until
                        .as_deref()
                        .and_then(|w| wait::compile_wait_until(self, w, ptr))
                        .map(StepKind::WaitUntil),
                    "wait_for" => s
                        .wait_for
                        .as_ref()
                        .and_then(|w| wait::compile_wait_for(self, w, ptr))
                        .map(StepKind::WaitFor),
                    _ => None,
                }
            }
        };
        if self.errors.len() > before {
            return None;
        }
        Some(Step {
            id,
            condition,
            kind: kind?,
            at: self.map.locate(ptr),
        })
    }

    /// Keys that belong to another kind than the step's (`with:` on a `set`).
    fn misplaced(&mut self, s: &StepFile, kind: &str, ptr: &str) {
        let owned: [(&str, bool, &str); 3] = [
            ("with", s.with.is_some() && kind != "scenario", "call"),
            ("steps", s.steps.is_some(), "for_each"),
            ("as", s.as_name.is_some(), "for_each"),
        ];
        for (key, given, owner) in owned {
            if given && kind != owner {
                self.error(
                    &format!("{ptr}/{key}"),
                    format!("`{key}:` belongs to a `{owner}` step, not to a `{kind}` step"),
                );
            }
        }
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
pub(crate) mod tests;
