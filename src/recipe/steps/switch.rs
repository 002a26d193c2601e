//! `switch:` — branches: the first case whose `when` holds runs its steps.

use super::{Compiler, Step};
use crate::recipe::condition::Condition;
use crate::recipe::config::StepFile;

/// Cases in file order; an `else` case (no condition) can only be last.
#[derive(Debug)]
pub struct SwitchStep {
    pub cases: Vec<Case>,
}

#[derive(Debug)]
pub struct Case {
    /// `None`: the `else` case.
    pub when: Option<Condition>,
    pub steps: Vec<Step>,
}

impl Case {
    /// The path segment of this case's steps: `case<N>` or `else`.
    pub fn segment(&self, index: usize) -> String {
        match self.when {
            Some(_) => format!("case{index}"),
            None => "else".into(),
        }
    }
}

pub(super) fn compile(
    cx: &mut Compiler<'_>,
    s: &StepFile,
    id: &str,
    ptr: &str,
) -> Option<SwitchStep> {
    let files = s.switch.as_ref()?;
    if files.is_empty() {
        cx.error(
            &format!("{ptr}/switch"),
            "`switch:` needs at least one case: `- when: [conditions]` with `steps:`",
        );
    }
    let mut cases = Vec::new();
    for (i, c) in files.iter().enumerate() {
        let p = format!("{ptr}/switch/{i}");
        let (when, steps): (Option<Condition>, &[StepFile]) = match (
            &c.when,
            &c.steps,
            &c.otherwise,
        ) {
            (Some(w), Some(steps), None) => (cx.condition(w, &format!("{p}/when")), steps),
            (None, None, Some(steps)) => {
                if i + 1 != files.len() {
                    cx.error(
                        &format!("{p}/else"),
                        "`else:` must be the last case of a `switch`",
                    );
                }
                (None, steps)
            }
            _ => {
                cx.error(
                    &p,
                    "a case is `when:` (conditions) with `steps:`, or `else:` (steps) alone as the last case",
                );
                continue;
            }
        };
        let (seg, parent) = match c.otherwise {
            Some(_) => ("else", format!("{id}_else")),
            None => ("steps", format!("{id}_case{i}")),
        };
        if steps.is_empty() {
            cx.error(&format!("{p}/{seg}"), "a case needs at least one step");
        }
        let steps = cx.steps(steps, &format!("{p}/{seg}"), Some(&parent));
        if c.when.is_some() && when.is_none() {
            continue;
        }
        cases.push(Case { when, steps });
    }
    Some(SwitchStep { cases })
}
