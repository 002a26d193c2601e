//! `for_each`: record the list, then walk the steps once per item.

use super::{Flow, Host, Walker};
use crate::recipe::steps::{for_each::describe, ForEachStep, MAX_FOR_EACH_ITEMS};
use crate::recipe::Step;
use crate::store::StepStatus;
use serde_json::Value;

pub(super) async fn execute<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    each: &ForEachStep,
    path: &str,
    recorded: Option<usize>,
) -> Flow {
    // The list: recorded (so a replay iterates what the run iterated), or
    // rendered now and recorded before any item runs.
    let (index, items) = match recorded {
        Some(i) => (
            i,
            w.recorded(i).input.as_array().cloned().unwrap_or_default(),
        ),
        None => {
            let items = match w.catalog.templates.render_value(&each.items, &w.ctx) {
                Ok(Value::Array(items)) => items,
                Ok(other) => {
                    let error = format!("`for_each` needs a list, got {}", describe(&other));
                    return w.fail(path, &step.kind, other, error);
                }
                Err(e) => {
                    let error = format!("list of recipe `{}`: {e}", w.recipe.name);
                    return w.fail(path, &step.kind, Value::Null, error);
                }
            };
            if items.len() > MAX_FOR_EACH_ITEMS {
                let error = format!(
                    "`for_each` over {} items, more than the maximum of {MAX_FOR_EACH_ITEMS}",
                    items.len()
                );
                return w.fail(path, &step.kind, Value::Null, error);
            }
            let input = Value::Array(items.clone());
            let i = w.push(path, &step.kind, StepStatus::Succeeded, input, Value::Null);
            (i, items)
        }
    };
    let index_name = each.index_name();
    let mut outputs = Vec::with_capacity(items.len());
    for (n, item) in items.into_iter().enumerate() {
        w.ctx[&each.as_name] = item;
        w.ctx[&index_name] = Value::from(n);
        let prefix = format!("{path}[{n}].");
        let flow = w.steps(&each.steps, &prefix).await;
        if let Flow::Halt(o) = flow {
            unbind(w, each, &index_name);
            return Flow::Halt(o);
        }
        // The iteration's result: its last step's output.
        let last = each
            .steps
            .last()
            .and_then(|s| w.ctx["steps"].get(&s.id).cloned())
            .unwrap_or(Value::Null);
        outputs.push(last);
    }
    unbind(w, each, &index_name);
    let out = Value::Array(outputs);
    if let Some(r) = w.host.records_mut().get_mut(index) {
        r.output = out.clone();
    }
    w.set_output(step, out);
    Flow::Next
}

fn unbind<H: Host>(w: &mut Walker<'_, H>, each: &ForEachStep, index_name: &str) {
    if let Some(ctx) = w.ctx.as_object_mut() {
        ctx.remove(&each.as_name);
        ctx.remove(index_name);
    }
}
