//! `state:` — apply a recipe state operation (get, set, set_if_absent,
//! delete, incr) through the host, which writes the change **in one atomic
//! batch with the step's record** (worker) or applies it to the dry run's
//! in-memory state. A recorded instance is replayed from its output: a
//! resumed run never counts twice.

use super::{Flow, Host, Outcome, Walker};
use crate::recipe::steps::{StateAction, StateStep};
use crate::recipe::Step;
use crate::store::state::{StateKey, StateOp, StateOutput};
use crate::store::{self, RunStatus, StepRecord, StepStatus};
use serde_json::{json, Value};
use std::time::Duration;

fn ms(d: &Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

pub(super) async fn execute<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    st: &StateStep,
    path: &str,
) -> Flow {
    let namespace = st
        .namespace
        .clone()
        .unwrap_or_else(|| w.recipe.name.clone());
    let key = match render_key(w, &st.key, &namespace) {
        Ok(k) => k,
        Err((input, error)) => return w.fail(path, &step.kind, input, error),
    };
    let mut input = json!({
        "op": st.action.name(),
        "namespace": key.namespace,
        "key": key.key,
    });
    let op = match &st.action {
        StateAction::Get => StateOp::Get(key),
        StateAction::Delete => StateOp::Delete(key),
        StateAction::Set { value, ttl } | StateAction::SetIfAbsent { value, ttl } => {
            let value = match w.catalog.templates.render_value(value, &w.ctx) {
                Ok(v) => v,
                Err(e) => {
                    let error = format!("`value` of recipe `{}`: {e}", w.recipe.name);
                    return w.fail(path, &step.kind, input, error);
                }
            };
            input["value"] = value.clone();
            let ttl_ms = ttl.as_ref().map(ms);
            if matches!(st.action, StateAction::Set { .. }) {
                StateOp::Set { key, value, ttl_ms }
            } else {
                StateOp::SetIfAbsent { key, value, ttl_ms }
            }
        }
        StateAction::Incr { by, window, ttl } => {
            input["by"] = json!(by);
            if let Some(wdw) = window {
                input["window_ms"] = json!(ms(wdw));
            }
            StateOp::Incr {
                key,
                by: *by,
                window_ms: window.as_ref().map(ms),
                ttl_ms: ttl.as_ref().map(ms),
            }
        }
    };
    apply(w, step, path, op, input, StateOutput::to_json).await
}

/// Render a state key template; an empty key (or one the store cannot hold)
/// is a clear failure naming the template.
pub(super) fn render_key<H: Host>(
    w: &Walker<'_, H>,
    t: &crate::template::Template,
    namespace: &str,
) -> Result<StateKey, (Value, String)> {
    let rendered = w
        .catalog
        .templates
        .render_string(t, &w.ctx)
        .map_err(|e| (Value::Null, format!("the state key did not render: {e}")))?;
    StateKey::new(namespace, &rendered).map_err(|e| {
        let source = match t {
            crate::template::Template::Literal(s) => s.as_str(),
            crate::template::Template::Text { source, .. }
            | crate::template::Template::Typed { source, .. } => source.as_str(),
        };
        (
            json!({"namespace": namespace, "key": rendered}),
            format!("{e} (the key `{source}` rendered {rendered:?})"),
        )
    })
}

/// Apply `op` through the host, which records the step in the same write;
/// `output` makes the step's output from the operation's.
pub(super) async fn apply<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    path: &str,
    op: StateOp,
    input: Value,
    output: impl FnOnce(&StateOutput) -> Value + Send,
) -> Flow {
    let label = step.kind.label();
    let started_at = store::now_ms();
    let make = |out: &StateOutput| {
        let (status, error) = match out {
            StateOutput::Failed { reason } => (StepStatus::Failed, Some(reason.clone())),
            _ => (StepStatus::Succeeded, None),
        };
        let output = if error.is_some() {
            Value::Null
        } else {
            output(out)
        };
        StepRecord {
            input,
            output,
            error,
            attempts: 1,
            ..StepRecord::new(path, label.clone(), status, started_at)
        }
    };
    let Some((out, record)) = w.host.state(op, make).await else {
        // The store could not write: the run stays leased and resumes by replay.
        return Flow::Halt(Outcome::Suspended);
    };
    let value = record.output.clone();
    w.push_record(record);
    if let StateOutput::Failed { reason } = out {
        return Flow::Halt(Outcome::Failed {
            status: RunStatus::Failed,
            error: format!("step `{path}` ({label}) failed: {reason}"),
        });
    }
    w.set_output(step, value);
    Flow::Next
}
