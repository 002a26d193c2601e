//! `stop`: end the run with a reason, as succeeded or skipped, or fail it
//! with the reason as its error.

use super::{Flow, Host, Outcome, Walker};
use crate::recipe::steps::{StopStatus, StopStep};
use crate::recipe::Step;
use crate::store::{RunStatus, StepStatus};
use serde_json::{json, Value};

pub(super) fn execute<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    stop: &StopStep,
    path: &str,
    recorded: Option<usize>,
) -> Flow {
    let (status, reason) = match recorded {
        // The recorded reason, not a new rendering: replay follows the run's past.
        Some(i) => {
            let input = &w.recorded(i).input;
            let status = match input["status"].as_str() {
                Some("skipped") => StopStatus::Skipped,
                Some("failed") => StopStatus::Failed,
                _ => StopStatus::Succeeded,
            };
            (
                status,
                input["reason"].as_str().unwrap_or_default().to_string(),
            )
        }
        None => {
            let reason = match w.catalog.templates.render_string(&stop.reason, &w.ctx) {
                Ok(r) => r,
                Err(e) => {
                    let error = format!("reason of recipe `{}`: {e}", w.recipe.name);
                    return w.fail(path, &step.kind, Value::Null, error);
                }
            };
            if stop.warn {
                tracing::warn!(recipe = %w.recipe.name, run = %w.ctx["run"]["id"], reason = %reason, "loop breaker tripped: run skipped");
            }
            let input = json!({"reason": reason, "status": stop.status.as_str()});
            if stop.status == StopStatus::Failed {
                return w.fail(path, &step.kind, input, reason);
            }
            w.push(path, &step.kind, StepStatus::Succeeded, input, Value::Null);
            (stop.status, reason)
        }
    };
    w.set_output(step, Value::Null);
    Flow::Halt(Outcome::Stopped {
        status: match status {
            StopStatus::Succeeded => RunStatus::Succeeded,
            StopStatus::Skipped => RunStatus::Skipped,
            StopStatus::Failed => RunStatus::Failed,
        },
        reason,
    })
}
