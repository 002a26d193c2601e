//! `set: { name: template, … }`: computed values.

use super::Compiler;
use crate::recipe::config::StepFile;
use crate::template::ValueTemplate;
use crate::yaml::escape;

/// Named values computed from the run context; the step's output is the
/// mapping, so later steps read `steps.<id>.<name>`.
#[derive(Debug)]
pub struct SetStep {
    /// In file order; each rendered over the context before the step.
    pub values: Vec<(String, ValueTemplate)>,
}

pub(super) fn compile(cx: &mut Compiler<'_>, s: &StepFile, ptr: &str) -> Option<SetStep> {
    let given = s.set.as_ref()?;
    if given.is_empty() {
        cx.error(
            &format!("{ptr}/set"),
            "`set:` needs at least one `name: value`",
        );
    }
    let mut values = Vec::new();
    for (k, v) in given {
        let p = format!("{ptr}/set/{}", escape(k));
        if let Some(t) = cx.value_template(v, &p) {
            values.push((k.clone(), t));
        }
    }
    Some(SetStep { values })
}
