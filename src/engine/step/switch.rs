//! `switch`: record which case holds, then walk its steps.

use super::{Flow, Host, Walker};
use crate::recipe::steps::SwitchStep;
use crate::recipe::Step;
use crate::store::StepStatus;
use serde_json::{json, Value};

pub(super) async fn execute<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    switch: &SwitchStep,
    path: &str,
    recorded: Option<usize>,
) -> Flow {
    // The decision: recorded, or taken now and recorded before its steps run.
    let branch = match recorded {
        Some(i) => w.recorded(i).output["branch"].as_u64().map(|b| b as usize),
        None => {
            let branch = switch.cases.iter().position(|c| {
                c.when
                    .as_ref()
                    .is_none_or(|cond| cond.eval_with(&w.ctx, &w.catalog.templates))
            });
            let out = json!({ "branch": branch });
            w.push(path, &step.kind, StepStatus::Succeeded, Value::Null, out);
            branch
        }
    };
    w.set_output(step, json!({ "branch": branch }));
    let Some(case) = branch.and_then(|b| switch.cases.get(b).map(|c| (b, c))) else {
        return Flow::Next;
    };
    let prefix = format!("{path}.{}.", case.1.segment(case.0));
    w.steps(&case.1.steps, &prefix).await
}
