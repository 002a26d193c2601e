//! A step up to its call, and the run context around it: the part of running
//! a recipe that does not depend on how the call is made.
//!
//! The worker ([`super::worker`]) and the dry run of `switchboard test`
//! ([`super::dry_run`]) both go through these functions, so a recipe test
//! exercises the same conditions, templates and context as production; only
//! the call itself differs (HTTP there, a mock here). Nothing here does I/O.

use super::Catalog;
use crate::connector::{Action, Connector};
use crate::recipe::{Recipe, Step};
use serde_json::{json, Map, Value};

/// What a step does, decided before any call is made.
pub(crate) enum Prepared<'a> {
    /// The step's `if` does not hold: it is skipped and its output is `null`.
    Skipped,
    /// Call `action` of `connector` with the rendered `with:` inputs.
    Call {
        connector: &'a Connector,
        action: &'a Action,
        input: Value,
    },
    /// The step fails without a call: its action is not loaded, or an input
    /// does not render. `input` holds the inputs rendered before the failing
    /// one (not redacted; `connector` is there to redact them).
    Failed {
        connector: Option<&'a Connector>,
        input: Value,
        error: String,
    },
}

/// The run's error when `step` failed with `error`, `attempts` given when
/// retries were exhausted: the one wording of the worker and the dry run.
pub(crate) fn failure_message(step: &Step, attempts: Option<u32>, error: &str) -> String {
    let after = attempts
        .map(|n| format!(" after {n} attempts"))
        .unwrap_or_default();
    format!(
        "step `{}` ({}.{}) failed{after}: {error}",
        step.id, step.connector, step.action
    )
}

/// Evaluate the step's `if` on `ctx` and render its `with:` inputs.
pub(crate) fn prepare<'a>(
    catalog: &'a Catalog,
    recipe: &Recipe,
    step: &Step,
    ctx: &Value,
) -> Prepared<'a> {
    if let Some(cond) = &step.condition {
        if !cond.eval(ctx) {
            return Prepared::Skipped;
        }
    }
    let Some((connector, action)) = catalog
        .connectors
        .get(&step.connector)
        .and_then(|c| c.actions.get(&step.action).map(|a| (c, a)))
    else {
        return Prepared::Failed {
            connector: None,
            input: Value::Null,
            error: format!("{}.{} is not loaded", step.connector, step.action),
        };
    };
    let mut input = Map::new();
    for (k, t) in &step.with {
        match catalog.templates.render_value(t, ctx) {
            Ok(v) => {
                input.insert(k.clone(), v);
            }
            Err(e) => {
                return Prepared::Failed {
                    connector: Some(connector),
                    input: Value::Object(input),
                    error: format!("input `{k}` of recipe `{}`: {e}", recipe.name),
                };
            }
        }
    }
    Prepared::Call {
        connector,
        action,
        input: Value::Object(input),
    }
}

/// The run context templates and conditions see: `{event, steps, vars, run}`,
/// `steps` holding the outputs of the steps already done. `now` (ms, from
/// the engine's clock) is `run.now`, what `now()` and business-hours
/// conditions read.
pub(crate) fn context(
    recipe: &Recipe,
    run_id: &str,
    event_id: &str,
    steps: Map<String, Value>,
    event: Value,
    now: i64,
) -> Value {
    json!({
        "event": event,
        "steps": steps,
        "vars": recipe.vars,
        "run": { "id": run_id, "event_id": event_id, "recipe": recipe.name, "now": now },
    })
}

/// Make a finished step's output visible to later steps as `steps.<id>`.
pub(crate) fn set_output(ctx: &mut Value, step: &Step, output: Value) {
    if let Some(steps) = ctx.get_mut("steps").and_then(Value::as_object_mut) {
        steps.insert(step.id.clone(), output);
    }
}
