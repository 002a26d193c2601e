//! Recipes: what to do when an event arrives, written by support ops in
//! `recipes/NAME.yaml`.
//!
//! A recipe file is compiled here, once, against the loaded connectors: its
//! trigger, conditions ([`condition`]), and steps with their templated inputs.
//! Every reference is checked at load time (connector, action, inputs, step
//! ids, template variables) so a typo fails `switchboard check` with its
//! location, never the first webhook. A recipe's `tests:` are compiled and
//! checked here too (their mocks and expectations name real actions and
//! steps); `engine::dry_run` runs them. Pure: no I/O besides reading the files.

pub mod condition;
pub mod config;
pub mod trigger;

use crate::connector::{Action, Connectors, Field};
use crate::template::{escape, Template, Templates, ValueTemplate};
use crate::time::Calendars;
use crate::yaml::{LoadError, SourceMap};
use condition::Condition;
pub use config::TestStatus;
use config::{MockErrorFile, RecipeFile, StepFile, TestFile};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A compiled recipe.
#[derive(Debug)]
pub struct Recipe {
    pub name: String,
    pub file: PathBuf,
    /// The trigger as the index matches it; a schedule's is
    /// ([`trigger::SCHEDULE_CONNECTOR`], the recipe's name).
    pub connector: String,
    pub event: String,
    /// `on: { schedule }`: when slots come.
    pub schedule: Option<trigger::ScheduleTrigger>,
    pub condition: Condition,
    pub vars: Value,
    /// Concurrency key template and limit.
    pub concurrency: Option<(Template, u32)>,
    /// `debounce:` — one run per burst of a key.
    pub debounce: Option<Debounce>,
    pub steps: Vec<Step>,
    /// The file's `tests:`, run by `switchboard test`; the engine never reads them.
    pub tests: Vec<RecipeTest>,
}

/// A compiled `debounce:`.
#[derive(Debug, Clone)]
pub struct Debounce {
    /// Template over `{event, vars}`.
    pub key: Template,
    pub quiet_ms: i64,
    pub max_ms: i64,
}

/// One compiled `tests:` entry (see [`config::TestFile`]).
#[derive(Debug)]
pub struct RecipeTest {
    pub name: String,
    pub event: Value,
    /// The event type ingress would read for this event (`None`: it would
    /// read none, so no recipe runs).
    pub event_type: Option<String>,
    /// `connector.action` → what the call answers.
    pub mocks: BTreeMap<String, Mock>,
    pub expect_calls: Vec<String>,
    /// Step id → input name → the exact rendered value.
    pub expect_inputs: BTreeMap<String, BTreeMap<String, Value>>,
    pub expect_status: TestStatus,
    /// The virtual clock at the event (ms); `None`: the real time.
    pub now: Option<i64>,
}

/// What a mocked action answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mock {
    /// The step's output, as the action's `output:` fields would give it.
    Output(Value),
    /// The call fails with this HTTP status; `body` is the answer's text.
    Error { status: u16, body: String },
}

/// One compiled step.
#[derive(Debug)]
pub struct Step {
    /// Unique in the recipe; later steps read `steps.<id>`. Defaults to `step<N>` (1-based).
    pub id: String,
    pub connector: String,
    pub action: String,
    /// The `with:` inputs, in file order.
    pub with: Vec<(String, ValueTemplate)>,
    pub condition: Option<Condition>,
}

/// Load every recipe in `dir`, checking it against `connectors`.
pub fn load_dir(
    dir: &Path,
    connectors: &Connectors,
    templates: &mut Templates,
    errors: &mut Vec<LoadError>,
) -> Vec<Recipe> {
    let mut out: Vec<Recipe> = Vec::new();
    let calendars = load_calendars(dir, errors);
    templates.set_calendars(calendars.clone());
    for (path, text) in crate::yaml::read_dir(dir, errors) {
        // `_shared.yaml` and other `_` files hold definitions, not recipes.
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('_'))
        {
            continue;
        }
        match crate::yaml::load::<RecipeFile>(&path, &text) {
            Err(e) => errors.push(e),
            Ok((file, map)) => {
                if out.iter().any(|r| r.name == file.name) {
                    errors
                        .push(map.error("/name", format!("duplicate recipe name `{}`", file.name)));
                    continue;
                }
                if let Some(r) =
                    compile(file, &path, &map, connectors, &calendars, templates, errors)
                {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// The business-hours `calendars:` of `recipes/_shared.yaml` (none when
/// the file does not exist). Other keys of that file belong to other loaders.
pub fn load_calendars(dir: &Path, errors: &mut Vec<LoadError>) -> Calendars {
    let path = dir.join("_shared.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Calendars::new();
    };
    let (value, map) = match crate::yaml::load_value(&path, &text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(e);
            return Calendars::new();
        }
    };
    let section = value.get("calendars").cloned().unwrap_or(Value::Null);
    match crate::time::calendar::compile_all(&section) {
        Ok(c) => c,
        Err(errs) => {
            for (p, m) in errs {
                errors.push(map.error(&format!("/calendars{p}"), m));
            }
            Calendars::new()
        }
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What templates and conditions of one place in a recipe may read.
struct Scope<'a> {
    steps: &'a [String],
    vars: &'a BTreeSet<String>,
    /// For `within_business_hours` conditions.
    calendars: &'a Calendars,
}

impl Scope<'_> {
    /// Check one dotted variable (`steps.contact.id`) a template reads.
    fn check_var(&self, var: &str) -> Result<(), String> {
        let mut parts = var.split('.');
        let root = parts.next().unwrap_or("");
        let second = parts.next();
        match (root, second) {
            ("event", _) | ("run", _) => Ok(()),
            ("steps", Some(id)) => self.check_step(id),
            ("steps", None) => Ok(()),
            ("vars", Some(v)) if self.vars.contains(v) => Ok(()),
            ("vars", Some(v)) => Err(format!(
                "unknown variable `vars.{v}`, expected one of the recipe's `vars:` ({})",
                list(self.vars.iter())
            )),
            ("vars", None) => Ok(()),
            (other, _) => Err(format!(
                "unknown template variable `{other}`, expected `event`, `steps`, `vars` or `run`"
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

    /// Check a JSONPath of a condition: `$.steps.<id>` / `$.vars.<name>` must exist.
    fn check_path(&self, path: &str) -> Result<(), String> {
        let rest = path.strip_prefix('$').unwrap_or(path);
        let segs = leading_names(rest);
        match segs.as_slice() {
            [] => Ok(()),
            [root, rest @ ..] => {
                let var = std::iter::once(root.as_str())
                    .chain(rest.iter().map(String::as_str).take(1))
                    .collect::<Vec<_>>()
                    .join(".");
                self.check_var(&var)
            }
        }
    }
}

/// The leading plain member names of a JSONPath after `$` (`.a.b` / `['a']['b']`).
fn leading_names(mut rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < 2 {
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

fn list<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<String> = items.map(|s| format!("`{s}`")).collect();
    if v.is_empty() {
        "(none are defined)".into()
    } else {
        v.join(", ")
    }
}

fn compile_condition(
    value: &Value,
    ptr: &str,
    scope: &Scope<'_>,
    map: &SourceMap,
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
        Err(e) => {
            errors.push(at(&format!("{ptr}{}", e.pointer), e.message));
            None
        }
        Ok(mut c) => {
            for (p, msg) in c.bind_calendars(scope.calendars) {
                errors.push(map.error(&format!("{ptr}{p}"), msg));
            }
            for (p, path) in c.paths() {
                if let Err(msg) = scope.check_path(&path) {
                    errors.push(at(&format!("{ptr}{p}"), msg));
                }
            }
            Some(c)
        }
    }
}

fn check_templates(
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

fn compile(
    file: RecipeFile,
    path: &Path,
    map: &SourceMap,
    connectors: &Connectors,
    calendars: &Calendars,
    templates: &mut Templates,
    errors: &mut Vec<LoadError>,
) -> Option<Recipe> {
    let before = errors.len();
    let on = trigger::compile(&file.name, &file.on, map, connectors, errors);
    let vars: BTreeSet<String> = file
        .vars
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    if !file.vars.is_null() && !file.vars.is_object() {
        errors.push(map.error("/vars", "`vars:` must be a mapping of names to values"));
    }

    let mut seen: Vec<String> = Vec::new();
    let condition = match &file.condition {
        None => Condition::always(),
        Some(v) => {
            let scope = Scope {
                steps: &[],
                vars: &vars,
                calendars,
            };
            compile_condition(v, "/if", &scope, map, errors).unwrap_or_else(Condition::always)
        }
    };

    let concurrency = file.concurrency.as_ref().and_then(|c| {
        let scope = Scope {
            steps: &[],
            vars: &vars,
            calendars,
        };
        if c.limit == Some(0) {
            errors.push(map.error("/concurrency/limit", "`limit` must be at least 1"));
        }
        match templates.compile(&c.key) {
            Ok(t) => {
                check_templates(
                    &ValueTemplate::String(t.clone()),
                    "/concurrency/key",
                    &scope,
                    templates,
                    map,
                    errors,
                );
                Some((t, c.limit.unwrap_or(1)))
            }
            Err(e) => {
                errors.push(map.error("/concurrency/key", format!("template error: {e}")));
                None
            }
        }
    });

    let debounce = file.debounce.as_ref().and_then(|d| {
        let scope = Scope {
            steps: &[],
            vars: &vars,
            calendars,
        };
        let key = match templates.compile(&d.key) {
            Ok(t) => {
                check_templates(
                    &ValueTemplate::String(t.clone()),
                    "/debounce/key",
                    &scope,
                    templates,
                    map,
                    errors,
                );
                Some(t)
            }
            Err(e) => {
                errors.push(map.error("/debounce/key", format!("template error: {e}")));
                None
            }
        };
        let max = crate::time::MAX_WAIT_MS;
        let quiet = crate::time::parse_duration(&d.quiet, max)
            .map_err(|e| errors.push(map.error("/debounce/quiet", e.0)))
            .ok();
        let max_ms = match (&d.max, quiet) {
            (Some(m), _) => crate::time::parse_duration(m, max)
                .map_err(|e| errors.push(map.error("/debounce/max", e.0)))
                .ok(),
            (None, Some(q)) => Some(q.saturating_mul(10).min(max)),
            (None, None) => None,
        };
        if let (Some(q), Some(m)) = (quiet, max_ms) {
            if m < q {
                errors.push(map.error(
                    "/debounce/max",
                    format!(
                        "`max` ({}) must not be shorter than `quiet` ({})",
                        d.max.as_deref().unwrap_or_default(),
                        d.quiet
                    ),
                ));
            }
        }
        Some(Debounce {
            key: key?,
            quiet_ms: quiet?,
            max_ms: max_ms?,
        })
    });

    let tests = compile_tests(&file, map, connectors, errors);

    let mut steps = Vec::new();
    for (i, s) in file.steps.iter().enumerate() {
        let ptr = format!("/steps/{i}");
        if let Some(step) = compile_step(
            s, i, &ptr, &seen, &vars, calendars, map, connectors, templates, errors,
        ) {
            seen.push(step.id.clone());
            steps.push(step);
        } else if let Some(id) = &s.id {
            seen.push(id.clone()); // keep checking later steps against it
        }
    }
    if file.steps.is_empty() {
        errors.push(map.error("/steps", "a recipe needs at least one step"));
    }
    if errors.len() > before {
        return None;
    }
    let on = on?;
    Some(Recipe {
        name: file.name,
        file: path.to_path_buf(),
        connector: on.connector,
        event: on.event,
        schedule: on.schedule,
        condition,
        vars: file.vars,
        concurrency,
        debounce,
        steps,
        tests,
    })
}

/// The action `call` (`connector.action`) names, or what is wrong with it.
fn find_action<'a>(call: &str, connectors: &'a Connectors) -> Result<&'a Action, String> {
    let Some((cname, aname)) = call.split_once('.') else {
        return Err(format!(
            "invalid call `{call}`, expected `connector.action`"
        ));
    };
    let Some(c) = connectors.get(cname) else {
        return Err(format!(
            "unknown connector `{cname}`, expected one of {}",
            list(sorted(connectors.by_name.keys()).iter())
        ));
    };
    c.actions.get(aname).ok_or_else(|| {
        format!(
            "unknown action `{aname}` of connector `{cname}`, expected one of {}",
            list(c.actions.keys())
        )
    })
}

/// Compile and check a recipe file's `tests:`: names unique, every mock and
/// expected call a real `connector.action` (an expected call one of the
/// recipe's steps makes), every `expect_inputs` entry a step id and one of
/// its inputs, and the event type as ingress would read it.
fn compile_tests(
    file: &RecipeFile,
    map: &SourceMap,
    connectors: &Connectors,
    errors: &mut Vec<LoadError>,
) -> Vec<RecipeTest> {
    // Step ids and `with:` names from the file, so tests are checked even
    // when a step itself has an error.
    let steps: Vec<(String, &StepFile)> = file
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone().unwrap_or_else(|| format!("step{}", i + 1)), s))
        .collect();
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (i, t) in file.tests.iter().enumerate() {
        let ptr = format!("/tests/{i}");
        let before = errors.len();
        if names.contains(&t.name.as_str()) {
            errors.push(map.error(
                &format!("{ptr}/name"),
                format!("duplicate test name `{}`", t.name),
            ));
        }
        names.push(&t.name);
        let event_type = test_event_type(file, t, &ptr, map, connectors, errors);

        let mut mocks = BTreeMap::new();
        for (call, v) in &t.mock {
            let p = format!("{ptr}/mock/{}", escape(call));
            if let Err(msg) = find_action(call, connectors) {
                errors.push(map.error_at_key(&p, msg));
            }
            match compile_mock(v) {
                Ok(m) => {
                    mocks.insert(call.clone(), m);
                }
                Err((sub, msg)) => errors.push(map.error(&format!("{p}/error{sub}"), msg)),
            }
        }
        for (j, call) in t.expect_calls.iter().enumerate() {
            let p = format!("{ptr}/expect_calls/{j}");
            if let Err(msg) = find_action(call, connectors) {
                errors.push(map.error(&p, msg));
            } else if !steps.iter().any(|(_, s)| s.call == *call) {
                errors.push(map.error(
                    &p,
                    format!("no step of this recipe calls `{call}`, so it is never called"),
                ));
            }
        }
        for (id, inputs) in &t.expect_inputs {
            let p = format!("{ptr}/expect_inputs/{}", escape(id));
            let Some((_, step)) = steps.iter().find(|(sid, _)| sid == id) else {
                errors.push(map.error_at_key(
                    &p,
                    format!(
                        "unknown step id `{id}`, expected one of {}",
                        list(steps.iter().map(|(id, _)| id))
                    ),
                ));
                continue;
            };
            for name in inputs.keys() {
                if !step.with.contains_key(name) {
                    errors.push(map.error_at_key(
                        &format!("{p}/{}", escape(name)),
                        format!(
                            "step `{id}` has no input `{name}` in its `with:`, expected one of {}",
                            list(step.with.keys())
                        ),
                    ));
                }
            }
        }
        let expect_status = t.expect_status.unwrap_or(TestStatus::Succeeded);
        let now = match &t.now {
            None => None,
            Some(text) => match crate::time::parse_instant(text) {
                Ok(ts) => Some(ts.as_millisecond()),
                Err(e) => {
                    errors.push(map.error(&format!("{ptr}/now"), e.0));
                    None
                }
            },
        };
        if expect_status == TestStatus::Skipped && !t.expect_calls.is_empty() {
            errors.push(map.error(
                &format!("{ptr}/expect_calls"),
                "a skipped run calls nothing: `expect_calls` must be `[]`",
            ));
        }
        if errors.len() > before {
            continue;
        }
        out.push(RecipeTest {
            name: t.name.clone(),
            event: t.event.clone(),
            event_type,
            mocks,
            expect_calls: t.expect_calls.clone(),
            expect_inputs: t.expect_inputs.clone(),
            expect_status,
            now,
        });
    }
    out
}

/// A mock's value: `{ error: { status, body } }` is a failed call, anything
/// else the step's output. An error's pointer is relative to `error`.
fn compile_mock(v: &Value) -> Result<Mock, (&'static str, String)> {
    let error = match v.as_object() {
        Some(o) if o.len() == 1 => o.get("error").filter(|e| e.is_object()),
        _ => None,
    };
    let Some(error) = error else {
        return Ok(Mock::Output(v.clone()));
    };
    let e: MockErrorFile =
        serde_json::from_value(error.clone()).map_err(|e| ("", e.to_string()))?;
    if !(400..=599).contains(&e.status) {
        return Err((
            "/status",
            format!(
                "mocked error status {} is not an HTTP error, expected 400-599",
                e.status
            ),
        ));
    }
    let body = match e.body {
        Value::Null => String::new(),
        Value::String(s) => s,
        other => other.to_string(),
    };
    Ok(Mock::Error {
        status: e.status,
        body,
    })
}

/// The event type a test's event arrives with, read the way ingress reads it
/// from the trigger connector's `webhook.event_type`; `event_type:` is
/// needed (and only allowed) where ingress reads it from a header.
fn test_event_type(
    file: &RecipeFile,
    t: &TestFile,
    ptr: &str,
    map: &SourceMap,
    connectors: &Connectors,
    errors: &mut Vec<LoadError>,
) -> Option<String> {
    if file.on.schedule.is_some() {
        // A slot's event type is the recipe's name; a test's event is the slot's body.
        return Some(file.name.clone());
    }
    // An unknown connector or one without a webhook is reported already.
    let c = connectors.get(file.on.connector.as_deref()?)?;
    let webhook = c.webhook.as_ref()?;
    let given = t.event_type.clone();
    let read = match &webhook.event_type {
        Some(Field::Header(h)) => {
            if given.is_none() {
                errors.push(map.error(
                    ptr,
                    format!(
                        "connector `{}` reads the event type from the `{h}` header: give the test an `event_type:`",
                        c.name
                    ),
                ));
            }
            return given;
        }
        Some(f @ Field::Path(p)) => (
            f.read(|_| None, &t.event),
            format!("`{}` of the event", p.as_str()),
        ),
        Some(f @ Field::Value(_)) => (
            f.read(|_| None, &t.event),
            "its `webhook.event_type`".into(),
        ),
        // Ingress reads no type, so no event of this connector starts a run.
        None => (
            None,
            "nowhere: it has no `webhook.event_type`, so its events start no recipe".into(),
        ),
    };
    match (given, read) {
        (None, (found, _)) => found,
        (Some(g), (Some(found), _)) if g == found => Some(g),
        (Some(g), (found, from)) => {
            errors.push(map.error(
                &format!("{ptr}/event_type"),
                format!(
                    "`event_type: {g}` is not what connector `{}` reads: the type comes from {from}{}; leave `event_type` out",
                    c.name,
                    found.map(|f| format!(", which gives `{f}`")).unwrap_or_default()
                ),
            ));
            None
        }
    }
}

fn sorted<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = keys.cloned().collect();
    v.sort();
    v
}

#[allow(clippy::too_many_arguments)]
fn compile_step(
    s: &StepFile,
    i: usize,
    ptr: &str,
    earlier: &[String],
    vars: &BTreeSet<String>,
    calendars: &Calendars,
    map: &SourceMap,
    connectors: &Connectors,
    templates: &mut Templates,
    errors: &mut Vec<LoadError>,
) -> Option<Step> {
    let before = errors.len();
    let id = s.id.clone().unwrap_or_else(|| format!("step{}", i + 1));
    if !valid_id(&id) {
        errors.push(map.error(
            &format!("{ptr}/id"),
            format!("invalid step id `{id}`, expected letters, digits and `_`, not starting with a digit"),
        ));
    } else if earlier.contains(&id) {
        errors.push(map.error(&format!("{ptr}/id"), format!("duplicate step id `{id}`")));
    }
    let scope = Scope {
        steps: earlier,
        vars,
        calendars,
    };

    let call_ptr = format!("{ptr}/call");
    let Some((cname, aname)) = s.call.split_once('.') else {
        errors.push(map.error(
            &call_ptr,
            format!("invalid call `{}`, expected `connector.action`", s.call),
        ));
        return None;
    };
    let (cname, aname) = (cname.to_string(), aname.to_string());
    let action = find_action(&s.call, connectors)
        .map_err(|msg| errors.push(map.error(&call_ptr, msg)))
        .ok();

    let mut with = Vec::new();
    for (k, v) in &s.with {
        let p = format!("{ptr}/with/{}", escape(k));
        if let Some(a) = action {
            if !a.inputs.contains_key(k) {
                errors.push(map.error(
                    &p,
                    format!(
                        "action `{}` has no input `{k}`, expected one of {}",
                        s.call,
                        list(a.inputs.keys())
                    ),
                ));
            }
        }
        match templates.compile_value(v) {
            Ok(t) => {
                check_templates(&t, &p, &scope, templates, map, errors);
                with.push((k.clone(), t));
            }
            Err((sub, e)) => {
                errors.push(map.error(&format!("{p}{sub}"), format!("template error: {e}")))
            }
        }
    }
    if let Some(a) = action {
        for (input, required) in &a.inputs {
            if *required && !s.with.contains_key(input) {
                errors.push(map.error(
                    &format!("{ptr}/with"),
                    format!("missing input `{input}` required by `{}`", s.call),
                ));
            }
        }
    }
    let condition = s
        .condition
        .as_ref()
        .and_then(|v| compile_condition(v, &format!("{ptr}/if"), &scope, map, errors));
    if errors.len() > before {
        return None;
    }
    Some(Step {
        id,
        connector: cname,
        action: aname,
        with,
        condition,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_names_of_paths() {
        assert_eq!(leading_names(".steps.contact.id"), vec!["steps", "contact"]);
        assert_eq!(leading_names("['steps']['a b']"), vec!["steps", "a b"]);
        assert_eq!(leading_names(".event"), vec!["event"]);
        assert!(leading_names("[0]").is_empty());
    }

    #[test]
    fn mocks_are_outputs_unless_they_are_exactly_an_error() {
        use serde_json::json;
        let out = |v: Value| Ok(Mock::Output(v));
        assert_eq!(compile_mock(&json!({"id": "1"})), out(json!({"id": "1"})));
        assert_eq!(compile_mock(&json!({})), out(json!({})));
        // An `error` field beside others, or not a mapping, is output.
        let v = json!({"error": {"status": 500}, "id": 1});
        assert_eq!(compile_mock(&v), out(v.clone()));
        assert_eq!(
            compile_mock(&json!({"error": "x"})),
            out(json!({"error": "x"}))
        );
        assert_eq!(
            compile_mock(&json!({"error": {"status": 422, "body": {"e": 1}}})),
            Ok(Mock::Error {
                status: 422,
                body: r#"{"e":1}"#.into()
            })
        );
        assert_eq!(
            compile_mock(&json!({"error": {"status": 302}}))
                .unwrap_err()
                .0,
            "/status"
        );
        assert!(compile_mock(&json!({"error": {"code": 500}})).is_err());
    }

    #[test]
    fn step_ids() {
        assert!(valid_id("contact_1"));
        assert!(!valid_id("1x"));
        assert!(!valid_id("a-b"));
        assert!(!valid_id(""));
    }
}
