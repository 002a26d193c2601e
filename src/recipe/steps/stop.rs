//! `stop: { reason, status }`: end the run early.

use super::Compiler;
use crate::recipe::config::StepFile;
use crate::template::Template;

/// How a `stop` ends its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStatus {
    Succeeded,
    Skipped,
    /// The run fails at this step with the reason as its error: for input
    /// the recipe cannot work with (a form without the expected fields).
    Failed,
}

impl StopStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StopStatus::Succeeded => "succeeded",
            StopStatus::Skipped => "skipped",
            StopStatus::Failed => "failed",
        }
    }
}

#[derive(Debug)]
pub struct StopStep {
    /// Why; a template over the run context, shown on the run.
    pub reason: Template,
    pub status: StopStatus,
    /// Log the stop as a warning (the loop breaker's).
    pub warn: bool,
}

pub(super) fn compile(cx: &mut Compiler<'_>, s: &StepFile, ptr: &str) -> Option<StopStep> {
    let stop = s.stop.as_ref()?;
    let status = match stop.status.as_deref() {
        None | Some("succeeded") => Some(StopStatus::Succeeded),
        Some("skipped") => Some(StopStatus::Skipped),
        Some("failed") => Some(StopStatus::Failed),
        Some(other) => {
            cx.error(
                &format!("{ptr}/stop/status"),
                format!(
                    "unknown stop status `{other}`, expected `succeeded`, `skipped` or `failed`"
                ),
            );
            None
        }
    };
    let reason = cx.template(&stop.reason, &format!("{ptr}/stop/reason"));
    Some(StopStep {
        reason: reason?,
        status: status?,
        warn: false,
    })
}
