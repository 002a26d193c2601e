//! Recipes: what to do when an event arrives, written by support ops in
//! `recipes/NAME.yaml`.
//!
//! A recipe file is compiled here, once, against the loaded connectors: its
//! trigger, conditions ([`condition`]), and steps ([`steps`]: one compile
//! function per step kind) with their templated inputs. Every reference is
//! checked at load time (connector, action, inputs, step ids, template
//! variables, [`scope`]) so a typo fails `switchboard check` with its
//! location, never the first webhook. A recipe's `tests:` are compiled and
//! checked here too ([`testing`]); `engine::dry_run` runs them. Pure: no I/O
//! besides reading the files.

pub mod condition;
pub mod config;
pub mod reply;
pub(crate) mod scope;
pub mod shared;
pub mod steps;
mod testing;
pub mod trigger;

use crate::connector::Connectors;
use crate::template::{Template, Templates, ValueTemplate};
use crate::yaml::{LoadError, SourceMap};
use condition::Condition;
use config::RecipeFile;
pub use config::TestStatus;
use scope::{check_templates, Scope};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
pub use steps::{Step, StepKind};

/// A compiled recipe.
#[derive(Debug)]
pub struct Recipe {
    pub name: String,
    /// What this recipe was compiled from: the first 12 hex digits of the
    /// SHA-256 of its file and of `_shared.yaml` ([`version_of`]). A run
    /// stores it and keeps executing this version's steps after a reload.
    pub version: String,
    /// Its loop breaker: declared, on by default, off, or none (with
    /// `Declared` and `Default` its first two steps are the breaker's).
    pub loop_breaker: LoopBreaker,
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
    /// `cancel_on:` — events that cancel this recipe's waiting runs.
    pub cancel_on: Vec<steps::Awaited>,
    pub steps: Vec<Step>,
    /// `reply:` — the webhook's answer to its sender.
    pub reply: Option<reply::Reply>,
    /// The file's `tests:`, run by `switchboard test`; the engine never reads them.
    pub tests: Vec<RecipeTest>,
}

impl Recipe {
    /// Every connector this recipe needs: its trigger's, each call's
    /// (scenario calls included), each `wait_for`'s and `cancel_on`'s.
    pub fn connectors_used(&self) -> BTreeSet<&str> {
        let mut all = Vec::new();
        for s in &self.steps {
            s.walk(&mut all);
        }
        let mut used = BTreeSet::new();
        used.insert(self.connector.as_str());
        used.extend(self.cancel_on.iter().map(|a| a.connector.as_str()));
        for s in all {
            match &s.kind {
                StepKind::Call(c) => {
                    used.insert(c.connector.name.as_str());
                }
                StepKind::WaitFor(w) => {
                    used.insert(w.awaited.connector.as_str());
                }
                _ => {}
            }
        }
        used
    }
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
    /// `connector.action`, or a step id (which wins), → what the call answers.
    pub mocks: BTreeMap<String, Mock>,
    pub expect_calls: Vec<String>,
    /// Step id → input name → the exact rendered value.
    pub expect_inputs: BTreeMap<String, BTreeMap<String, Value>>,
    pub expect_status: TestStatus,
    /// The virtual clock at the event (ms); `None`: the real time.
    pub now: Option<i64>,
    /// Recipe state before the event: `(namespace or the recipe's, key, seed)`.
    pub state: Vec<(Option<String>, String, StateSeed)>,
    /// The story after the event (`then:`), on the virtual clock.
    pub then: Vec<Story>,
}

/// One step of a test's story (see [`config::ThenFile`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Story {
    /// Move the virtual clock forward (ms).
    Advance(i64),
    /// Deliver another event.
    Event {
        connector: String,
        event_type: Option<String>,
        body: Value,
    },
}

/// What a test's `state:` entry puts in the dry run's state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateSeed {
    Value(Value),
    /// `count` events at the test's clock in a window counter.
    Count {
        count: i64,
        window_ms: i64,
    },
}

/// What a mocked action answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mock {
    /// The step's output, as the action's `output:` fields would give it.
    Output(Value),
    /// The call fails with this HTTP status; `body` is the answer's text.
    Error { status: u16, body: String },
    /// `{ sequence: [a, b, …] }`: the first call gets `a`, the second `b`, …;
    /// a call after the last answer fails (each item an output or an error).
    Sequence(Vec<Mock>),
}

/// Load every recipe in `dir`, checking it against `connectors`. Notes that
/// are not errors (a field read `check` could not check) go to `warnings`.
pub fn load_dir(
    dir: &Path,
    connectors: &Connectors,
    templates: &mut Templates,
    errors: &mut Vec<LoadError>,
    warnings: &mut Vec<LoadError>,
) -> Vec<Recipe> {
    // Names taken so far: a set, since 10,000 recipes made the scan of
    // `out` per file 50 million comparisons.
    let mut names = std::collections::HashSet::new();
    let shared = shared::load(dir, connectors, errors);
    templates.set_calendars(shared.calendars.clone());
    let files = crate::yaml::read_dir(dir, errors);
    // Room for every file at once: grown by `push`, 10,000 recipes of 936
    // bytes had room for 16,384 (6 MiB more at the load's peak).
    let mut out: Vec<Recipe> = Vec::with_capacity(files.len());
    let shared_text = files
        .iter()
        .find(|(p, _)| p.file_name().is_some_and(|n| n == shared::FILE))
        .map_or(String::new(), |(_, t)| t.clone());
    // By value: each file's text is freed once its recipe is compiled.
    for (path, text) in files {
        let (path, text) = (&path, &text);
        // `_shared.yaml` and other `_` files hold definitions, not recipes.
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('_'))
        {
            continue;
        }
        match crate::yaml::load::<RecipeFile>(path, text) {
            Err(e) => errors.push(e),
            Ok((file, map)) => {
                if names.contains(&file.name) {
                    errors
                        .push(map.error("/name", format!("duplicate recipe name `{}`", file.name)));
                    continue;
                }
                let found = (connectors, &shared, &mut *templates);
                if let Some(mut r) = compile(file, path, &map, found, errors, warnings) {
                    r.version = version_of(text, &shared_text);
                    names.insert(r.name.clone());
                    out.push(r);
                }
            }
        }
    }
    // Files that were not recipes, or did not compile.
    out.shrink_to_fit();
    out
}

/// A recipe's version: the first 12 hex digits of the SHA-256 of its
/// file's text and `_shared.yaml`'s (whose vars and scenarios it compiles
/// in). Connectors are not part of it: a run keeps its recipe's steps, and
/// calls them through the connectors loaded now.
pub fn version_of(recipe_text: &str, shared_text: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((recipe_text.len() as u64).to_be_bytes());
    h.update(recipe_text.as_bytes());
    h.update(shared_text.as_bytes());
    hex::encode(h.finalize())[..12].to_string()
}

fn compile(
    file: RecipeFile,
    path: &Path,
    map: &SourceMap,
    (connectors, shared, templates): (&Connectors, &shared::Shared, &mut Templates),
    errors: &mut Vec<LoadError>,
    warnings: &mut Vec<LoadError>,
) -> Option<Recipe> {
    let calendars = &shared.calendars;
    let before = errors.len();
    let on = trigger::compile(&file.name, &file.on, map, connectors, errors);
    if !file.vars.is_null() && !file.vars.is_object() {
        errors.push(map.error("/vars", "`vars:` must be a mapping of names to values"));
    }
    // The shared `vars:` of `_shared.yaml`, with this recipe's own over them.
    let mut all_vars = shared.vars.clone();
    if let Some(own) = file.vars.as_object() {
        all_vars.extend(own.clone());
    }
    let all_vars = Value::Object(all_vars);
    let vars: BTreeSet<String> = all_vars
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    // The trigger's scope: no steps yet.
    let trigger = Scope {
        steps: &[],
        outputs: &scope::NO_OUTPUTS,
        vars: &vars,
        locals: &[],
        calendars,
    };

    let condition = match &file.condition {
        None => Condition::always(),
        Some(v) => trigger
            .condition(v, "/if", map, templates, errors)
            .unwrap_or_else(Condition::always),
    };

    let concurrency = file.concurrency.as_ref().and_then(|c| {
        if c.limit == Some(0) {
            errors.push(map.error("/concurrency/limit", "`limit` must be at least 1"));
        }
        let t = templates.compile_at(&c.key, map, "/concurrency/key", errors)?;
        let key = ValueTemplate::String(t.clone());
        check_templates(&key, "/concurrency/key", &trigger, templates, map, errors);
        Some((t, c.limit.unwrap_or(1)))
    });

    let debounce = file.debounce.as_ref().and_then(|d| {
        let scope = Scope {
            steps: &[],
            outputs: &scope::NO_OUTPUTS,
            vars: &vars,
            locals: &[],
            calendars,
        };
        let key = templates.compile_at(&d.key, map, "/debounce/key", errors);
        if let Some(t) = &key {
            let t = ValueTemplate::String(t.clone());
            check_templates(&t, "/debounce/key", &scope, templates, map, errors);
        }
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

    if file.reply.is_some() && file.on.schedule.is_some() {
        errors.push(map.error_at_key(
            "/reply",
            "a schedule has no sender to reply to: `reply:` needs a webhook trigger",
        ));
    }
    let reply = file
        .reply
        .as_ref()
        .and_then(|r| reply::compile(r, &trigger, map, templates, errors));

    let tests = testing::compile_tests(&file, map, connectors, shared, templates, errors);

    let mut cx = steps::Compiler {
        map,
        connectors,
        templates,
        errors,
        vars: &vars,
        var_values: &all_vars,
        calendars,
        shared,
        seen: Vec::new(),
        outputs: Default::default(),
        locals: Vec::new(),
        trigger_connector: file.on.connector.as_deref(),
        notes: Vec::new(),
    };
    // `loop_breaker:` is two steps before the recipe's own: count this
    // run for its key (a window counter, like `state: { incr }`), and stop
    // `skipped` past `max` — recorded, replayed and tested like any step.
    // A declared breaker comes first, so the recipe's steps may read it; the
    // default one is compiled after them, once they show the recipe can loop.
    let object_key = file
        .on
        .connector
        .as_deref()
        .and_then(|c| connectors.get(c))
        .and_then(|c| c.webhook.as_ref())
        .and_then(|w| w.object_key.clone());
    let mut steps = match &file.loop_breaker {
        Some(config::LoopBreakerSetting::On(b)) => {
            let key = b.key.clone().or_else(|| object_key.clone());
            match key {
                Some(key) => loop_breaker_steps(&mut cx, &key, b.max, b.within.as_deref(), false),
                None => {
                    cx.error(
                        "/loop_breaker",
                        format!(
                            "`loop_breaker` needs a `key`: connector `{}` declares no `webhook.object_key` to default to",
                            file.on.connector.as_deref().unwrap_or_default()
                        ),
                    );
                    Vec::new()
                }
            }
        }
        _ => Vec::new(),
    };
    steps.extend(cx.steps(&file.steps, "/steps", None));
    let loops = match (&file.on.connector, &file.on.event) {
        (Some(c), Some(e)) => can_loop(&steps, c, e),
        _ => false,
    };
    let loop_breaker = match &file.loop_breaker {
        Some(config::LoopBreakerSetting::On(_)) => LoopBreaker::Declared,
        Some(config::LoopBreakerSetting::Off) => LoopBreaker::Off,
        None if !loops => LoopBreaker::None,
        None => match &object_key {
            Some(key) => {
                let mut breaker = loop_breaker_steps(&mut cx, key, None, None, true);
                breaker.append(&mut steps);
                steps = breaker;
                LoopBreaker::Default
            }
            None => LoopBreaker::None,
        },
    };
    // `cancel_on` keys render on a waiting run: every step may have run.
    let cancel_on: Vec<_> = file
        .cancel_on
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let pattern = steps::wait::Pattern {
                event: &c.event,
                connector: c.connector.as_deref(),
                key: &c.key,
                matcher: c.matcher.as_deref(),
                condition: c.condition.as_ref(),
            };
            steps::wait::awaited(&mut cx, pattern, &format!("/cancel_on/{i}"))
        })
        .collect();
    warnings.extend(cx.notes.drain(..).map(|(_, note)| note));
    if file.steps.is_empty() {
        errors.push(map.error("/steps", "a recipe needs at least one step"));
    }
    if errors.len() > before {
        return None;
    }
    let on = on?;
    // `extend` into the empty breaker list left room for four steps (a
    // step is 432 bytes): 1.3 KiB unused in a one-step recipe.
    steps.shrink_to_fit();
    Some(Recipe {
        name: file.name,
        // Set by `load_dir`, which has the file's text.
        version: String::new(),
        loop_breaker,
        file: path.to_path_buf(),
        connector: on.connector,
        event: on.event,
        schedule: on.schedule,
        condition,
        vars: all_vars,
        concurrency,
        debounce,
        cancel_on,
        steps,
        reply,
        tests,
    })
}

/// A recipe's protection against firing for one object again and again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopBreaker {
    /// `loop_breaker: { … }` in the file.
    Declared,
    /// None in the file, but the recipe can retrigger itself (a call causes
    /// its trigger event) and its connector has a `webhook.object_key`:
    /// [`LOOP_BREAKER_MAX`] runs per key within [`LOOP_BREAKER_WITHIN`].
    Default,
    /// `loop_breaker: off`.
    Off,
    /// The recipe cannot retrigger itself, or there is no key to count by.
    None,
}

/// The ids of the steps a `loop_breaker:` adds before the recipe's own.
pub const LOOP_BREAKER_STEPS: [&str; 2] = ["loop_breaker", "loop_breaker_tripped"];
/// Runs per key a loop breaker allows within its window, unless set.
pub const LOOP_BREAKER_MAX: u32 = 5;
/// A loop breaker's window, unless set.
pub const LOOP_BREAKER_WITHIN: &str = "10m";

/// Can a run of a recipe on `connector` `event` make the app send that event
/// again? A call anywhere in its steps (any branch, any `if:`) to an action
/// of that connector whose `causes:` names the event.
fn can_loop(steps: &[Step], connector: &str, event: &str) -> bool {
    let mut all = Vec::new();
    for s in steps {
        s.walk(&mut all);
    }
    all.iter().any(|s| {
        matches!(&s.kind, StepKind::Call(c)
            if c.connector.name == connector && c.action.causes.iter().any(|e| e == event))
    })
}

/// Compile a loop breaker into its two steps (errors point at `/loop_breaker`).
fn loop_breaker_steps(
    cx: &mut steps::Compiler<'_>,
    key: &str,
    max: Option<u32>,
    within: Option<&str>,
    default: bool,
) -> Vec<steps::Step> {
    let max = max.unwrap_or(LOOP_BREAKER_MAX);
    let within = within.unwrap_or(LOOP_BREAKER_WITHIN).to_string();
    if max == 0 {
        cx.error("/loop_breaker/max", "`max` must be at least 1");
    }
    let how = if default {
        " (the default loop breaker: set `loop_breaker:` to change it, or `loop_breaker: off`)"
    } else {
        ""
    };
    let files = serde_json::json!([
        { "id": LOOP_BREAKER_STEPS[0], "state": { "incr": format!("loop:{key}"), "window": within } },
        {
            "id": LOOP_BREAKER_STEPS[1],
            "if": [ { "$.steps.loop_breaker.count": { "gt": max } } ],
            "stop": {
                "status": "skipped",
                "reason": format!("loop breaker: run no. {{{{ steps.loop_breaker.count }}}} for key `{key}` within {within} (max {max}); this recipe is paused for the key until the window has passed{how}"),
            },
        },
    ]);
    let files: Vec<config::StepFile> = match serde_json::from_value(files) {
        Ok(f) => f,
        Err(e) => {
            cx.error("/loop_breaker", format!("loop_breaker: {e}"));
            return Vec::new();
        }
    };
    let mut out = cx.steps(&files, "/loop_breaker", None);
    for s in &mut out {
        if let steps::StepKind::Stop(stop) = &mut s.kind {
            stop.warn = true;
        }
    }
    out
}
