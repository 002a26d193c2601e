//! `set`: render named values; the mapping is the step's output.

use super::{Flow, Host, Walker};
use crate::recipe::steps::SetStep;
use crate::recipe::Step;
use serde_json::{Map, Value};

pub(super) fn execute<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    set: &SetStep,
    path: &str,
) -> Flow {
    let mut out = Map::new();
    for (name, t) in &set.values {
        match w.catalog.templates.render_value(t, &w.ctx) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(e) => {
                let error = format!("value `{name}`: {e}");
                return w.fail(path, &step.kind, Value::Null, error);
            }
        }
    }
    w.succeed(step, path, Value::Null, Value::Object(out))
}
